//! Immediate TCP ACKs on the connection to ThingsBoard.
//!
//! A broker that sends with Nagle's algorithm on (mosquitto's default,
//! `set_tcp_nodelay false`) holds a small packet while an earlier one of
//! its own is unacknowledged. Our kernel delays its ACK of a packet we do
//! not answer (a PUBACK of our publish) for up to 40 ms, hoping to carry it
//! on data of ours. So a request ThingsBoard's side sends right after a
//! PUBACK to us (the next RPC, at 100 RPCs/s) waits those 40 ms in the
//! broker: measured, a two-way RPC's p99 went from ~2 to ~50 ms.
//!
//! The client decides its own socket's ACKs: after each read it re-arms
//! Linux's `TCP_QUICKACK`, which sends an ACK that is due at once (the
//! option is not sticky: the kernel goes back to delaying by itself). It
//! costs a system call per read and an ACK segment where one is due.
//!
//! rumqttc 0.25 gives no access to its socket, so the socket is found by
//! what it is: the TCP socket to ThingsBoard's port that appeared while the
//! session connected ([`AckAtOnce::new`] before the first poll, the
//! CONNACK after; after a connection error, what is open then is the new
//! "before"). A wrong pick costs nothing but an early ACK on another
//! connection; the descriptor is only used while the event loop that owns
//! it is connected, and forgotten when it errs, so it is never a descriptor
//! reused for something else.

use rumqttc::{ConnectionError, Event, EventLoop, Packet};
use std::collections::HashSet;

/// One rumqttc connection's ACKs sent at once: made before the event
/// loop's first poll, told of every poll's result.
#[derive(Debug)]
pub struct AckAtOnce {
    port: u16,
    before: Sockets,
    quick: QuickAck,
}

impl AckAtOnce {
    /// Before the event loop connects to the broker's `port`.
    pub fn new(port: u16) -> AckAtOnce {
        AckAtOnce { port, before: Sockets::now(port), quick: QuickAck::default() }
    }

    /// After each `eventloop.poll()`, with what it returned. False when the
    /// connection's socket was not found at its CONNACK (its ACKs are then
    /// the kernel's delayed ones).
    pub fn polled(&mut self, eventloop: &EventLoop, polled: &Result<Event, ConnectionError>) -> bool {
        let packet = match polled {
            Ok(Event::Incoming(packet)) => packet,
            Ok(_) => return true,
            Err(_) => {
                // The connection is gone: its descriptor may be reused, and
                // the next connection is told from what is open now.
                self.before = Sockets::now(self.port);
                self.quick = QuickAck::default();
                return true;
            }
        };
        if matches!(packet, Packet::ConnAck(_)) {
            self.quick = Sockets::now(self.port).since(&self.before);
        }
        // The socket is open while the event loop holds it, and a read's
        // packets are handed out one by one: ACK once they all are.
        if eventloop.network.is_some() && eventloop.state.events.is_empty() {
            self.quick.arm();
        }
        !self.quick.fds.is_empty()
    }
}

/// The process's TCP sockets whose peer port is `port`: (descriptor, inode).
#[derive(Debug, Default)]
struct Sockets(HashSet<(i32, u64)>);

impl Sockets {
    #[cfg(target_os = "linux")]
    fn now(port: u16) -> Sockets {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Sockets::default() };
        let found = dir.flatten().filter_map(|entry| {
            let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(entry.path()).ok()?;
            let inode: u64 = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
            (peer_port(fd) == Some(port)).then_some((fd, inode))
        });
        Sockets(found.collect())
    }

    #[cfg(not(target_os = "linux"))]
    fn now(_port: u16) -> Sockets {
        Sockets::default()
    }

    /// The sockets here that were not in `before`.
    fn since(&self, before: &Sockets) -> QuickAck {
        QuickAck { fds: self.0.difference(&before.0).map(|&(fd, _)| fd).collect() }
    }
}

/// The socket(s) of one connection to ThingsBoard, to ACK at once.
#[derive(Debug, Default)]
struct QuickAck {
    fds: Vec<i32>,
}

impl QuickAck {
    /// Send an ACK that is due now, and the next ones at once until the
    /// kernel goes back to delaying.
    fn arm(&self) {
        #[cfg(target_os = "linux")]
        for &fd in &self.fds {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a
            // live local; on a descriptor that is not a TCP socket it
            // fails (ignored: the worst case is a late ACK).
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// The port of a TCP socket's peer; `None` for anything else.
#[cfg(target_os = "linux")]
fn peer_port(fd: i32) -> Option<u16> {
    // SAFETY: getpeername writes at most `len` bytes into the zeroed
    // storage it is given, and `len` says how many it wrote; the family
    // decides which view of the storage is read.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) != 0 {
            return None;
        }
        match i32::from(addr.ss_family) {
            libc::AF_INET => {
                let a = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(u16::from_be(a.sin_port))
            }
            libc::AF_INET6 => {
                let a = &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(u16::from_be(a.sin6_port))
            }
            _ => None,
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_socket_that_connected_is_found_and_no_other() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let before = Sockets::now(port);
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // The accepted end's peer port is the client's, not `port`.
        let (_accepted, _) = listener.accept().unwrap();
        let found = Sockets::now(port).since(&before);
        assert_eq!(found.fds, [stream.as_raw_fd()]);
        found.arm();
    }

    #[tokio::test]
    async fn a_rumqttc_connection_is_found_at_its_connack() {
        let broker = tbgw_test_support::Mosquitto::start_new();
        let (_client, mut el) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("quickack", "127.0.0.1", broker.port), 10);
        let mut quick = AckAtOnce::new(broker.port);
        loop {
            let polled = el.poll().await;
            let found = quick.polled(&el, &polled);
            if let Ok(Event::Incoming(Packet::ConnAck(_))) = polled {
                assert!(found, "the connection's socket was not found");
                break;
            }
            polled.unwrap();
        }
    }
}
