//! socketcand's protocol, client side (linux-can/socketcand,
//! `doc/protocol.md`): a CAN bus served over TCP by a socketcand daemon, a
//! remote CAN interface or a CAN-to-TCP bridge.
//!
//! The handshake: the server greets with `< hi >`; `< open can0 >` selects
//! the bus (`< ok >`); `< rawmode >` asks for every frame on it (`< ok >`).
//! Then the server sends `< frame ID SECS.USECS DATA >` for each frame (the
//! id in hex, eight digits for an extended one, three for a standard one;
//! the data as hex digits without spaces) and `< error CLASS SECS.USECS >`
//! for an error frame (the error class bits of `linux/can/error.h`), and
//! the client sends `< send ID LEN B0 B1 ... >`. socketcand's raw mode
//! carries classic frames only.
//!
//! Messages are read into a buffer and cut at `>`, so reading can be
//! cancelled between any two bytes without losing one (the connector
//! selects on it).

use std::time::Duration;
use tbgw_core::CanFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long each step of the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A message longer than this without its `>` is not socketcand's.
const MAX_MESSAGE: usize = 4096;

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Frame(CanFrame, Vec<u8>),
    /// An error frame's class bits.
    Error(u32),
    Ok,
    Hi,
    Echo,
    /// An error the server reports in words (`< error could not open bus >`).
    Refused(String),
    /// Anything else (statistics, another mode's messages).
    Other(String),
}

/// Parse one message's text between `<` and `>`.
pub fn parse(text: &str) -> Result<Message, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let hex_u32 = |w: &str| u32::from_str_radix(w, 16).ok();
    Ok(match words.as_slice() {
        ["hi"] => Message::Hi,
        ["ok"] => Message::Ok,
        ["echo"] => Message::Echo,
        ["frame", id, _time, data @ ..] => {
            let bad = |why: &str| format!("a frame socketcand sent is malformed ({why}): < {text} >");
            let number = hex_u32(id).ok_or_else(|| bad("the id is not hex"))?;
            let extended = id.len() == 8;
            let limit = if extended { 0x1FFF_FFFF } else { 0x7FF };
            if number > limit {
                return Err(bad("the id is too large"));
            }
            let hex: String = data.concat();
            if !hex.len().is_multiple_of(2) || hex.len() > 16 {
                return Err(bad("the data is not up to 8 bytes of hex"));
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| bad("the data is not hex"))?;
            Message::Frame(CanFrame { id: number, extended, ..CanFrame::default() }, bytes)
        }
        ["error", class, time] if hex_u32(class).is_some() && time.contains('.') => {
            Message::Error(hex_u32(class).unwrap_or(0))
        }
        ["error", ..] => Message::Refused(words[1..].join(" ")),
        _ => Message::Other(text.trim().to_owned()),
    })
}

/// The `< send ... >` command for a frame.
pub fn send_command(frame: &CanFrame, data: &[u8]) -> Result<String, String> {
    if frame.fd {
        return Err("socketcand carries classic CAN frames only; this one is CAN FD (isFd)".to_owned());
    }
    if frame.rtr {
        return Err("socketcand's raw mode sends no remote frames".to_owned());
    }
    if data.len() > 8 {
        return Err(format!("{} bytes do not fit a classic CAN frame (at most 8)", data.len()));
    }
    let id =
        if frame.extended { format!("{:08X}", frame.id & 0x1FFF_FFFF) } else { format!("{:03X}", frame.id & 0x7FF) };
    let mut out = format!("< send {id} {}", data.len());
    for b in data {
        out.push_str(&format!(" {b:02x}"));
    }
    out.push_str(" >");
    Ok(out)
}

/// How much room a read is given.
const READ_CHUNK: usize = 64 * 1024;

/// socketcand's messages cut out of a byte stream: what was read, and how
/// far it has been taken. Taking a message moves an offset; the taken
/// bytes are dropped only before the next read, so a read of many
/// messages costs one move, not one per message.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    pos: usize,
}

impl Framer {
    /// The next whole message (garbage before a `<` is dropped);
    /// `Ok(None)` when none is complete yet.
    pub fn take(&mut self) -> Result<Option<Message>, String> {
        let rest = &self.buf[self.pos..];
        let Some(start) = rest.iter().position(|b| *b == b'<') else {
            if rest.len() > MAX_MESSAGE {
                return Err("socketcand sent data that is not its protocol".to_owned());
            }
            self.consume(rest.len());
            return Ok(None);
        };
        let Some(len) = rest[start..].iter().position(|b| *b == b'>') else {
            if rest.len() - start > MAX_MESSAGE {
                return Err("socketcand sent a message without its end (`>`)".to_owned());
            }
            self.consume(start);
            return Ok(None);
        };
        let end = start + len;
        let body = &rest[start + 1..end];
        let message = match std::str::from_utf8(body) {
            Ok(text) => parse(text),
            Err(_) => parse(&String::from_utf8_lossy(body)),
        };
        self.consume(end + 1);
        message.map(Some)
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Where the next read goes: the taken bytes dropped, room reserved.
    pub fn spare(&mut self) -> &mut Vec<u8> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(READ_CHUNK);
        &mut self.buf
    }
}

/// A connection to a socketcand server, in raw mode on its bus.
pub struct Client {
    stream: TcpStream,
    framer: Framer,
}

impl Client {
    /// Connect and do the handshake for `channel`.
    pub async fn connect(host: &str, port: u16, channel: &str) -> Result<Client, String> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| format!("no connection to {host}:{port} within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        // Frames are small and each one matters now, not in 40 ms.
        let _ = stream.set_nodelay(true);
        let mut c = Client { stream, framer: Framer::default() };
        c.expect(Message::Hi, "its greeting `< hi >`").await?;
        c.write(&format!("< open {channel} >")).await?;
        c.expect(Message::Ok, &format!("`< ok >` to `< open {channel} >`")).await?;
        c.write("< rawmode >").await?;
        c.expect(Message::Ok, "`< ok >` to `< rawmode >`").await?;
        Ok(c)
    }

    async fn expect(&mut self, want: Message, what: &str) -> Result<(), String> {
        let got = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.next())
            .await
            .map_err(|_| format!("socketcand did not send {what} within {HANDSHAKE_TIMEOUT:?}"))??;
        match got {
            m if m == want => Ok(()),
            Message::Refused(why) => Err(format!("socketcand refused: {why}")),
            other => Err(format!("socketcand sent {other:?} instead of {what}")),
        }
    }

    async fn write(&mut self, text: &str) -> Result<(), String> {
        self.stream.write_all(text.as_bytes()).await.map_err(|e| format!("cannot write to socketcand: {e}"))
    }

    /// The next message. Cancel-safe: what was read stays in the buffer.
    pub async fn next(&mut self) -> Result<Message, String> {
        loop {
            if let Some(message) = self.framer.take()? {
                return Ok(message);
            }
            let n = self
                .stream
                .read_buf(self.framer.spare())
                .await
                .map_err(|e| format!("socketcand connection failed: {e}"))?;
            if n == 0 {
                return Err("socketcand closed the connection".to_owned());
            }
        }
    }

    /// Send a command made by [`send_command`].
    pub async fn send_text(&mut self, command: &str) -> Result<(), String> {
        self.write(command).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_as_socketcand_writes_them() {
        let std = CanFrame { id: 0x123, ..CanFrame::default() };
        assert_eq!(parse("frame 123 23.424242 1A220344"), Ok(Message::Frame(std, vec![0x1A, 0x22, 0x03, 0x44])));
        let ext = CanFrame { id: 0x123, extended: true, ..CanFrame::default() };
        assert_eq!(parse(" frame 00000123 1.000001 "), Ok(Message::Frame(ext, vec![])));
        assert_eq!(parse("error 040 1700000000.000100"), Ok(Message::Error(0x40)));
        assert_eq!(parse("error could not open bus"), Ok(Message::Refused("could not open bus".into())));
        assert_eq!(parse("hi"), Ok(Message::Hi));
        assert!(parse("frame 800 1.0 00").is_err(), "a standard id beyond 0x7FF");
        assert!(parse("frame 123 1.0 0").is_err(), "half a byte");
        assert!(parse("frame 123 1.0 001122334455667788").is_err(), "nine bytes");
        assert_eq!(parse("stat 1 2 3 4"), Ok(Message::Other("stat 1 2 3 4".into())));
    }

    #[test]
    fn frames_are_sent_as_socketcand_reads_them() {
        let std = CanFrame { id: 0x5, ..CanFrame::default() };
        assert_eq!(send_command(&std, &[0x00, 0xAA, 0x01]), Ok("< send 005 3 00 aa 01 >".into()));
        let ext = CanFrame { id: 0x1AAA_AAAA, extended: true, ..CanFrame::default() };
        assert_eq!(send_command(&ext, &[]), Ok("< send 1AAAAAAA 0 >".into()));
        let fd = CanFrame { fd: true, ..std };
        assert!(send_command(&fd, &[1]).expect_err("FD").contains("classic CAN frames only"));
    }

    #[test]
    fn messages_are_cut_from_the_stream_whole() {
        let mut f = Framer::default();
        f.spare().extend_from_slice(b"junk< hi >< ok >< frame 12");
        assert_eq!(f.take(), Ok(Some(Message::Hi)));
        assert_eq!(f.take(), Ok(Some(Message::Ok)));
        assert_eq!(f.take(), Ok(None));
        f.spare().extend_from_slice(b"3 1.0 AB >");
        let frame = CanFrame { id: 0x123, ..CanFrame::default() };
        assert_eq!(f.take(), Ok(Some(Message::Frame(frame, vec![0xAB]))));
        assert_eq!(f.take(), Ok(None));
        assert!(f.buf.is_empty());
        let mut long = Framer::default();
        long.spare().push(b'<');
        long.spare().extend(std::iter::repeat_n(b'x', MAX_MESSAGE + 1));
        assert!(long.take().is_err());
    }
}
