//! SocketCAN: the kernel's CAN sockets (Linux), through the `socketcan`
//! crate's tokio sockets. A classic socket, or with `backend.fd` a CAN FD
//! socket (which receives classic frames too). The kernel filters frames
//! by the configured ids ([`filters`]), so that a busy bus does not wake
//! tbgw for frames no item reads, and passes every error frame.

use crate::link::{Event, SendError};
use socketcan::{
    CanAnyFrame, CanFdFrame, CanFilter, CanFrame as KernelFrame, EmbeddedFrame, ExtendedId, Frame, Id, SocketOptions,
    StandardId,
};
use tbgw_core::CanFrame;

/// The kernel's id word flags and masks (`linux/can.h`).
const CAN_EFF_FLAG: u32 = 0x8000_0000;
const CAN_RTR_FLAG: u32 = 0x4000_0000;
const CAN_SFF_MASK: u32 = 0x0000_07FF;
const CAN_EFF_MASK: u32 = 0x1FFF_FFFF;

/// One kernel filter (id, mask) per configured (id, extended): data frames
/// of exactly that id and kind.
pub fn filters(ids: impl Iterator<Item = (u32, bool)>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = ids
        .map(|(id, extended)| {
            if extended {
                (id | CAN_EFF_FLAG, CAN_EFF_MASK | CAN_EFF_FLAG | CAN_RTR_FLAG)
            } else {
                (id, CAN_SFF_MASK | CAN_EFF_FLAG | CAN_RTR_FLAG)
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The kernel's frame for `frame` with `data`.
pub fn build(frame: &CanFrame, data: &[u8]) -> Result<CanAnyFrame, String> {
    let id: Id = if frame.extended {
        ExtendedId::new(frame.id).map(Id::Extended).ok_or_else(|| format!("{:#X} is not an extended id", frame.id))?
    } else {
        let raw = u16::try_from(frame.id).ok().and_then(StandardId::new);
        raw.map(Id::Standard).ok_or_else(|| format!("{:#X} is not a standard id", frame.id))?
    };
    if frame.fd {
        let mut f = <CanFdFrame as EmbeddedFrame>::new(id, data)
            .ok_or_else(|| format!("{} bytes do not fit a CAN FD frame (at most 64)", data.len()))?;
        f.set_brs(frame.brs);
        return Ok(CanAnyFrame::Fd(f));
    }
    if frame.rtr {
        return KernelFrame::new_remote(id, data.len())
            .map(|f| match f {
                KernelFrame::Remote(r) => CanAnyFrame::Remote(r),
                KernelFrame::Data(d) => CanAnyFrame::Normal(d),
                KernelFrame::Error(e) => CanAnyFrame::Error(e),
            })
            .ok_or_else(|| "a remote frame asks for at most 8 bytes".to_owned());
    }
    match KernelFrame::new(id, data) {
        Some(KernelFrame::Data(d)) => Ok(CanAnyFrame::Normal(d)),
        _ => Err(format!("{} bytes do not fit a classic CAN frame (at most 8; CAN FD needs `isFd: true`)", data.len())),
    }
}

fn event(frame: CanAnyFrame) -> Event {
    let id_of = |extended: bool, raw: u32| if extended { raw & CAN_EFF_MASK } else { raw & CAN_SFF_MASK };
    match frame {
        CanAnyFrame::Normal(f) => Event::Frame(
            CanFrame { id: id_of(f.is_extended(), f.raw_id()), extended: f.is_extended(), ..CanFrame::default() },
            f.data().to_vec(),
        ),
        CanAnyFrame::Remote(f) => Event::Frame(
            CanFrame {
                id: id_of(f.is_extended(), f.raw_id()),
                extended: f.is_extended(),
                rtr: true,
                ..CanFrame::default()
            },
            Vec::new(),
        ),
        CanAnyFrame::Fd(f) => Event::Frame(
            CanFrame {
                id: id_of(f.is_extended(), f.raw_id()),
                extended: f.is_extended(),
                fd: true,
                brs: f.is_brs(),
                esi: f.is_esi(),
                ..CanFrame::default()
            },
            f.data().to_vec(),
        ),
        CanAnyFrame::Error(e) => Event::Error { bits: e.error_bits(), data: e.data().to_vec() },
    }
}

enum Socket {
    Classic(socketcan::tokio::CanSocket),
    Fd(socketcan::tokio::CanFdSocket),
}

/// An open SocketCAN interface.
pub struct Link(Socket);

impl Link {
    /// Open `channel`; with `ids`, let only their frames (and error
    /// frames) through.
    pub fn open(channel: &str, fd: bool, ids: Option<Vec<(u32, bool)>>) -> Result<Link, String> {
        let why = |e: std::io::Error| {
            // EAFNOSUPPORT: the kernel has no CAN at all.
            let hint = if e.raw_os_error() == Some(97) {
                " (this kernel has no CAN sockets: CONFIG_CAN is off; for a bus served over TCP use `interface: socketcand`)"
            } else {
                ""
            };
            format!("cannot open SocketCAN interface `{channel}`: {e}{hint}")
        };
        let socket = if fd {
            Socket::Fd(socketcan::tokio::CanFdSocket::open(channel).map_err(why)?)
        } else {
            Socket::Classic(socketcan::tokio::CanSocket::open(channel).map_err(why)?)
        };
        fn setup<S: SocketOptions>(s: &S, ids: &Option<Vec<(u32, bool)>>) -> std::io::Result<()> {
            if let Some(ids) = ids {
                let f: Vec<CanFilter> =
                    filters(ids.iter().copied()).into_iter().map(|(id, m)| CanFilter::new(id, m)).collect();
                s.set_filters(&f)?;
            }
            s.set_error_filter_accept_all()
        }
        match &socket {
            Socket::Classic(s) => setup(s, &ids),
            Socket::Fd(s) => setup(s, &ids),
        }
        .map_err(|e| format!("cannot set the filters of `{channel}`: {e}"))?;
        Ok(Link(socket))
    }

    /// The next frame or error frame. Cancel-safe.
    pub async fn next(&mut self) -> Result<Event, String> {
        let frame = match &self.0 {
            Socket::Classic(s) => s.read_frame().await.map(|f| match f {
                KernelFrame::Data(d) => CanAnyFrame::Normal(d),
                KernelFrame::Remote(r) => CanAnyFrame::Remote(r),
                KernelFrame::Error(e) => CanAnyFrame::Error(e),
            }),
            Socket::Fd(s) => s.read_frame().await,
        };
        frame.map(event).map_err(|e| format!("SocketCAN read failed: {e}"))
    }

    pub async fn send(&mut self, frame: &CanFrame, data: &[u8]) -> Result<(), SendError> {
        let f = build(frame, data).map_err(SendError::Refused)?;
        let sent = match (&self.0, f) {
            (Socket::Fd(s), f) => s.write_frame(&f).await,
            (Socket::Classic(s), CanAnyFrame::Normal(d)) => s.write_frame(KernelFrame::Data(d)).await,
            (Socket::Classic(s), CanAnyFrame::Remote(r)) => s.write_frame(KernelFrame::Remote(r)).await,
            (Socket::Classic(_), _) => {
                return Err(SendError::Refused("a CAN FD frame needs `backend.fd: true`".to_owned()));
            }
        };
        sent.map_err(|e| {
            // The interface gone is the bus lost; anything else (a full
            // transmit queue, ENOBUFS) is this frame's.
            const ENODEV: i32 = 19;
            const ENXIO: i32 = 6;
            const ENETDOWN: i32 = 100;
            match e.raw_os_error() {
                Some(ENODEV | ENXIO | ENETDOWN) => SendError::Lost(format!("SocketCAN write failed: {e}")),
                _ => SendError::Refused(format!("SocketCAN write failed: {e}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_standard_and_extended_ids_apart() {
        let f = filters([(0x7E8, false), (0x7E8, true), (0x7E8, false)].into_iter());
        assert_eq!(f, [(0x7E8, 0xC000_07FF), (0x8000_07E8, 0xDFFF_FFFF)]);
    }

    #[test]
    fn frames_are_built_with_their_flags() {
        let std = CanFrame { id: 0x123, ..CanFrame::default() };
        match build(&std, &[1, 2]) {
            Ok(CanAnyFrame::Normal(f)) => {
                assert_eq!((f.raw_id(), f.is_extended(), f.data()), (0x123, false, &[1u8, 2][..]))
            }
            other => panic!("{other:?}"),
        }
        let ext = CanFrame { id: 0x1ABC_DEF0, extended: true, ..CanFrame::default() };
        assert!(matches!(build(&ext, &[]), Ok(CanAnyFrame::Normal(f)) if f.is_extended() && f.raw_id() == 0x1ABC_DEF0));
        let fd = CanFrame { fd: true, brs: true, ..std };
        match build(&fd, &[0; 12]) {
            Ok(CanAnyFrame::Fd(f)) => assert!(f.is_brs() && f.data().len() == 12),
            other => panic!("{other:?}"),
        }
        assert!(build(&std, &[0; 9]).is_err());
        assert!(build(&CanFrame { id: 0x800, ..std }, &[]).is_err());
        // The events a socket yields, back.
        let Ok(CanAnyFrame::Fd(f)) = build(&fd, &[7; 3]) else { panic!("fd") };
        assert_eq!(
            event(CanAnyFrame::Fd(f)),
            Event::Frame(CanFrame { id: 0x123, fd: true, brs: true, ..CanFrame::default() }, vec![7; 3])
        );
    }
}
