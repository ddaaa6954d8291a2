//! The bus, whichever transport carries it: SocketCAN or socketcand. What
//! the connector's loop needs of either: open it, the next frame or error
//! frame (cancel-safe), send a frame.

use crate::config::Interface;
use crate::socketcand;
use tbgw_core::CanFrame;

/// What the bus delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Frame(CanFrame, Vec<u8>),
    /// An error frame: its class bits (`linux/can/error.h`) and, from
    /// SocketCAN, its data (the details of the class).
    Error {
        bits: u32,
        data: Vec<u8>,
    },
}

/// The class bit of an error frame that says the controller went bus-off.
const CAN_ERR_BUSOFF: u32 = 0x40;

/// An error frame in words, and whether the controller is bus-off (it
/// sends nothing until it restarts: the connector opens the bus again).
pub fn describe_error(bits: u32, data: &[u8]) -> (String, bool) {
    let bus_off = bits & CAN_ERR_BUSOFF != 0;
    #[cfg(target_os = "linux")]
    {
        let mut padded = [0u8; 8];
        let n = data.len().min(8);
        padded[..n].copy_from_slice(&data[..n]);
        if let Ok(frame) = socketcan::CanErrorFrame::new_error(bits, &padded) {
            return (frame.into_error().to_string(), bus_off);
        }
    }
    let _ = data;
    (format!("error class 0x{bits:X}"), bus_off)
}

/// An open bus.
pub enum Link {
    Socketcand(socketcand::Client),
    #[cfg(target_os = "linux")]
    SocketCan(crate::socketcan_link::Link),
}

impl Link {
    /// Open the bus; `ids`, when known, are the frames worth receiving
    /// (SocketCAN filters in the kernel).
    pub async fn open(interface: &Interface, ids: Option<Vec<(u32, bool)>>) -> Result<Link, String> {
        match interface {
            Interface::Socketcand { host, port, channel } => {
                socketcand::Client::connect(host, *port, channel).await.map(Link::Socketcand)
            }
            #[cfg(target_os = "linux")]
            Interface::SocketCan { channel, fd } => {
                crate::socketcan_link::Link::open(channel, *fd, ids).map(Link::SocketCan)
            }
            #[cfg(not(target_os = "linux"))]
            Interface::SocketCan { .. } => {
                let _ = ids;
                Err("SocketCAN is Linux's; on this system use `interface: socketcand`".to_owned())
            }
        }
    }

    /// The next frame or error frame; cancel-safe.
    pub async fn next(&mut self) -> Result<Event, String> {
        match self {
            Link::Socketcand(c) => loop {
                match c.next().await? {
                    socketcand::Message::Frame(f, data) => return Ok(Event::Frame(f, data)),
                    socketcand::Message::Error(bits) => return Ok(Event::Error { bits, data: Vec::new() }),
                    socketcand::Message::Refused(why) => tracing::warn!("socketcand: {why}"),
                    other => tracing::debug!("socketcand: {other:?}"),
                }
            },
            #[cfg(target_os = "linux")]
            Link::SocketCan(l) => l.next().await,
        }
    }

    /// Put a frame on the bus.
    pub async fn send(&mut self, frame: &CanFrame, data: &[u8]) -> Result<(), SendError> {
        match self {
            Link::Socketcand(c) => {
                let command = socketcand::send_command(frame, data).map_err(SendError::Refused)?;
                c.send_text(&command).await.map_err(SendError::Lost)
            }
            #[cfg(target_os = "linux")]
            Link::SocketCan(l) => l.send(frame, data).await,
        }
    }
}

/// Why a frame was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// This frame cannot go (too long, FD over a classic link, the
    /// transmit queue full): the bus is fine.
    Refused(String),
    /// The bus is gone.
    Lost(String),
}
