//! Modbus over UDP: the same frames as over TCP (MBAP header, or RTU with
//! its CRC), one frame per datagram. tokio-modbus reads and writes frames on
//! a byte stream; [`UdpStream`] is that stream over a connected UDP socket:
//! a write sends one datagram, a read takes one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;

/// A connected UDP socket as a byte stream of whole frames.
#[derive(Debug)]
pub struct UdpStream(UdpSocket);

impl UdpStream {
    /// Bind an ephemeral local port and connect it to `addr`.
    pub async fn connect(addr: &str) -> io::Result<UdpStream> {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address")))?;
        let local: std::net::SocketAddr =
            if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(target).await?;
        Ok(UdpStream(socket))
    }
}

impl AsyncRead for UdpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.poll_recv(cx, buf)
    }
}

impl AsyncWrite for UdpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.0.poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
