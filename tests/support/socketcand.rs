//! A CAN bus for tests: a small socketcand hub on 127.0.0.1 that every
//! party joins as a socketcand client (tbgw's CAN connector, python-can's
//! `socketcand` interface as an independent device peer), and the python-can
//! peer itself ([`CanPeer`]).
//!
//! The hub speaks the server side of linux-can/socketcand's protocol
//! (`< hi >`; `< open CHANNEL >` answered `< ok >`; `< rawmode >` answered
//! `< ok >`); then each client's `< send ID LEN B.. >` goes to every other
//! joined client as `< frame ID SECS.USECS DATA >`, as frames on a bus
//! reach every other node. It holds frames for a client still joining for
//! a moment after its last `< ok >` (python-can 4.6.1's handshake breaks
//! when a frame comes in the same read as that `< ok >`). The test drives
//! the bus too: frames and error frames from nowhere ([`Hub::inject`],
//! [`Hub::inject_error`]), what was sent ([`Hub::frames`]), a restart on
//! the same port ([`Hub::stop`], [`Hub::start_on`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a joining client's frames are held after its last `< ok >`.
const JOIN_HOLD: Duration = Duration::from_millis(150);

/// A frame a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The client (numbered from 0 in order of connection).
    pub client: usize,
    pub id: u32,
    pub extended: bool,
    pub data: Vec<u8>,
    pub at: Instant,
}

struct Member {
    id: usize,
    stream: TcpStream,
    /// When frames start going to it (its last `< ok >` plus the hold).
    joined_at: Option<Instant>,
}

impl Member {
    fn joined(&self) -> bool {
        self.joined_at.is_some_and(|t| Instant::now() >= t)
    }
}

#[derive(Default)]
struct Shared {
    members: Mutex<Vec<Member>>,
    sent: Mutex<Vec<Sent>>,
    stopping: AtomicBool,
    next_client: AtomicUsize,
    /// Connections accepted, joined or not.
    accepted: AtomicUsize,
}

/// The hub; stopped when dropped.
pub struct Hub {
    pub port: u16,
    pub channel: String,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

fn timestamp() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}", t.as_secs(), t.subsec_micros())
}

fn frame_text(id: u32, extended: bool, data: &[u8]) -> String {
    let id = if extended { format!("{id:08X}") } else { format!("{id:03X}") };
    let hex: String = data.iter().map(|b| format!("{b:02X}")).collect();
    format!("< frame {id} {} {hex} >", timestamp())
}

impl Hub {
    /// A hub on a free port serving `can0`.
    pub fn start() -> Hub {
        Self::start_on(0)
    }

    /// A hub on `port` (0: a free one), e.g. again after [`Hub::stop`].
    pub fn start_on(port: u16) -> Hub {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the socketcand hub");
        let port = listener.local_addr().expect("its address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared::default());
        let channel = "can0".to_owned();
        let accept = {
            let shared = shared.clone();
            let channel = channel.clone();
            std::thread::spawn(move || {
                while !shared.stopping.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                            let shared = shared.clone();
                            let channel = channel.clone();
                            std::thread::spawn(move || serve(shared, stream, &channel));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Hub { port, channel, shared, accept: Some(accept) }
    }

    /// Close every connection and stop listening.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for m in self.shared.members.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = m.stream.shutdown(Shutdown::Both);
        }
    }

    /// Every frame clients sent, in order.
    pub fn frames(&self) -> Vec<Sent> {
        self.shared.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until `done` holds for the frames sent; panics after `timeout`.
    pub fn wait_frames(&self, timeout: Duration, what: &str, done: impl Fn(&[Sent]) -> bool) -> Vec<Sent> {
        let end = Instant::now() + timeout;
        loop {
            let frames = self.frames();
            if done(&frames) {
                return frames;
            }
            assert!(Instant::now() < end, "no {what} within {timeout:?}; frames sent: {frames:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Clients that have joined the bus.
    pub fn joined(&self) -> usize {
        self.shared.members.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|m| m.joined()).count()
    }

    /// Connections accepted since the start (joined or not).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Wait until `n` clients have joined.
    pub fn wait_joined(&self, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.joined() < n {
            assert!(Instant::now() < end, "{} of {n} clients joined the hub within {timeout:?}", self.joined());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A frame from the bus itself, to every joined client.
    pub fn inject(&self, id: u32, extended: bool, data: &[u8]) {
        broadcast(&self.shared, None, &frame_text(id, extended, data));
    }

    /// Many frames from the bus in one write per client (a bench's load).
    pub fn inject_many(&self, frames: &[(u32, bool, Vec<u8>)]) {
        self.injector().inject_many(frames);
    }

    /// A handle that puts frames on this bus from another thread.
    pub fn injector(&self) -> Injector {
        Injector(self.shared.clone())
    }

    /// An error frame of `class` (`linux/can/error.h` bits: 0x40 bus-off).
    pub fn inject_error(&self, class: u32) {
        broadcast(&self.shared, None, &format!("< error {class:03X} {} >", timestamp()));
    }
}

/// Puts frames on a hub's bus from any thread ([`Hub::injector`]).
#[derive(Clone)]
pub struct Injector(Arc<Shared>);

impl Injector {
    /// Many frames from the bus in one write per client.
    pub fn inject_many(&self, frames: &[(u32, bool, Vec<u8>)]) {
        let text: String = frames.iter().map(|(id, ext, data)| frame_text(*id, *ext, data)).collect();
        broadcast(&self.0, None, &text);
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn broadcast(shared: &Shared, from: Option<usize>, text: &str) {
    let mut members = shared.members.lock().unwrap_or_else(|e| e.into_inner());
    members.retain_mut(|m| {
        if !m.joined() || Some(m.id) == from {
            return true;
        }
        m.stream.write_all(text.as_bytes()).is_ok()
    });
}

/// Cut the next `< ... >` out of `buf`.
fn take(buf: &mut Vec<u8>) -> Option<String> {
    let start = buf.iter().position(|b| *b == b'<')?;
    let end = start + buf[start..].iter().position(|b| *b == b'>')?;
    let text = String::from_utf8_lossy(&buf[start + 1..end]).trim().to_owned();
    buf.drain(..=end);
    Some(text)
}

fn serve(shared: Arc<Shared>, mut stream: TcpStream, channel: &str) {
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    if stream.write_all(b"< hi >").is_err() {
        return;
    }
    let Ok(writer) = stream.try_clone() else { return };
    shared.members.lock().unwrap_or_else(|e| e.into_inner()).push(Member { id, stream: writer, joined_at: None });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut stage = 0; // 0: before open, 1: before rawmode, 2: raw
    while !shared.stopping.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
        while let Some(msg) = take(&mut buf) {
            let words: Vec<&str> = msg.split_whitespace().collect();
            let reply = match (stage, words.as_slice()) {
                (0, ["open", bus]) if *bus == channel => {
                    stage = 1;
                    Some("< ok >".to_owned())
                }
                (0, ["open", _]) => Some("< error could not open bus >".to_owned()),
                (1, ["rawmode"]) => {
                    stage = 2;
                    // Frames for it wait a moment; what it sends is read at once.
                    let mut members = shared.members.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(m) = members.iter_mut().find(|m| m.id == id) {
                        let _ = m.stream.write_all(b"< ok >");
                        m.joined_at = Some(Instant::now() + JOIN_HOLD);
                    }
                    None
                }
                (2, ["send", id_text, len, bytes @ ..]) => {
                    let parsed = (u32::from_str_radix(id_text, 16), len.parse::<usize>());
                    let data: Result<Vec<u8>, _> = bytes.iter().map(|b| u8::from_str_radix(b, 16)).collect();
                    match (parsed, data) {
                        ((Ok(frame_id), Ok(len)), Ok(data)) if len == data.len() && len <= 8 => {
                            let extended = id_text.len() == 8;
                            shared.sent.lock().unwrap_or_else(|e| e.into_inner()).push(Sent {
                                client: id,
                                id: frame_id,
                                extended,
                                data: data.clone(),
                                at: Instant::now(),
                            });
                            broadcast(&shared, Some(id), &frame_text(frame_id, extended, &data));
                            None
                        }
                        _ => Some("< error syntax error in send command >".to_owned()),
                    }
                }
                (_, ["echo"]) => Some("< echo >".to_owned()),
                _ => Some("< error unknown command >".to_owned()),
            };
            if let Some(reply) = reply {
                let mut members = shared.members.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = members.iter_mut().find(|m| m.id == id) {
                    let _ = m.stream.write_all(reply.as_bytes());
                }
            }
        }
    }
    shared.members.lock().unwrap_or_else(|e| e.into_inner()).retain(|m| m.id != id);
}

/// A frame the python-can peer received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFrame {
    pub id: u32,
    pub extended: bool,
    pub data: Vec<u8>,
    pub at: Instant,
}

/// The peer's script: frames it receives go to stdout, commands (JSON
/// lines) come on stdin.
const PEER: &str = r#"
import json, sys, threading, time
import can

host, port, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bus = can.Bus(interface="socketcand", host=host, port=port, channel=channel)
lock = threading.Lock()

def say(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

def reader():
    while True:
        m = bus.recv(0.2)
        if m is not None and not m.is_error_frame:
            say({"id": m.arbitration_id, "extended": m.is_extended_id, "data": m.data.hex()})

threading.Thread(target=reader, daemon=True).start()
say({"ready": True})
for line in sys.stdin:
    cmd = json.loads(line)
    if "send" in cmd:
        s = cmd["send"]
        bus.send(can.Message(arbitration_id=s["id"], is_extended_id=s["extended"], data=bytes.fromhex(s["data"])))
    elif "burst" in cmd:
        # count frames over ids, at rate per second: a device field's load.
        b = cmd["burst"]
        start, n = time.monotonic(), 0
        while n < b["count"]:
            i = n % len(b["ids"])
            bus.send(can.Message(arbitration_id=b["ids"][i], is_extended_id=False, data=n.to_bytes(4, "big") + bytes(4)))
            n += 1
            lag = start + n / b["rate"] - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        say({"burst_done": n, "secs": time.monotonic() - start})
"#;

/// python-can on the hub: an independent CAN node.
pub struct CanPeer {
    child: Child,
    stdin: ChildStdin,
    received: Arc<Mutex<Vec<PeerFrame>>>,
    notes: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl CanPeer {
    /// Join the hub on 127.0.0.1:`port` (channel `can0`).
    pub fn connect(port: u16) -> CanPeer {
        // python-can 4.6.1: its `socketcand` interface.
        let python = crate::python_venv("python-can-4.6.1", &["python-can==4.6.1"]);
        let mut child = Command::new(python)
            .args(["-c", PEER, "127.0.0.1", &port.to_string(), "can0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the python-can peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let notes = Arc::new(Mutex::new(Vec::new()));
        {
            let (received, notes) = (received.clone(), notes.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    let frame = (v["id"].as_u64(), v["extended"].as_bool(), v["data"].as_str());
                    if let (Some(id), Some(extended), Some(data)) = frame {
                        let data =
                            (0..data.len() / 2).filter_map(|i| u8::from_str_radix(&data[2 * i..2 * i + 2], 16).ok());
                        received.lock().unwrap_or_else(|e| e.into_inner()).push(PeerFrame {
                            id: id as u32,
                            extended,
                            data: data.collect(),
                            at: Instant::now(),
                        });
                    } else {
                        notes.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                    }
                }
            });
        }
        let peer = CanPeer { child, stdin, received, notes };
        peer.wait_note(Duration::from_secs(30), "the python-can peer's start", |n| n["ready"] == true);
        peer
    }

    fn command(&mut self, v: serde_json::Value) {
        writeln!(self.stdin, "{v}").and_then(|_| self.stdin.flush()).expect("a command to the python-can peer");
    }

    /// Put a frame on the bus.
    pub fn send(&mut self, id: u32, extended: bool, data: &[u8]) {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        self.command(serde_json::json!({"send": {"id": id, "extended": extended, "data": hex}}));
    }

    /// Send `count` frames over `ids` at `rate` per second; returns at once
    /// ([`CanPeer::wait_note`] for `burst_done`).
    pub fn burst(&mut self, ids: &[u32], count: u64, rate: u64) {
        self.command(serde_json::json!({"burst": {"ids": ids, "count": count, "rate": rate}}));
    }

    /// Frames received so far.
    pub fn received(&self) -> Vec<PeerFrame> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until `done` holds for the frames received; panics after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&[PeerFrame]) -> bool) -> Vec<PeerFrame> {
        let end = Instant::now() + timeout;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < end, "no {what} within {timeout:?}; the peer received {got:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for a note (a line that is not a frame) satisfying `done`.
    pub fn wait_note(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + timeout;
        loop {
            if let Some(n) = self.notes.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|n| done(n)) {
                return n.clone();
            }
            assert!(Instant::now() < end, "no {what} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CanPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
