//! A Modbus device simulator on tokio-modbus's own server side: holding
//! and input registers, coils and discrete inputs that a test sets and
//! reads, served over Modbus TCP or RTU framing over TCP on a free loopback
//! port. It counts the requests it answers, can refuse addresses (an
//! exception, as a real device without them), and can be stopped and
//! started again on the same port (a dead device that comes back).
//!
//! [`ModbusDevice::start_serial`] serves RTU on one end of a pair of
//! pseudo-terminals linked by `socat`, the gateway taking the other end as
//! its serial port: the serial code path without hardware; [`SerialBus`]
//! puts several units, each with its own memory, on such a line (an RS-485
//! bus), any of which can be silenced.

use std::collections::HashSet;
use std::future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

/// The device's memory.
#[derive(Debug)]
pub struct Memory {
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
    pub coils: Vec<bool>,
    pub discrete: Vec<bool>,
    /// Addresses (any table) at or above which reads and writes are refused
    /// with IllegalDataAddress.
    pub limit: u16,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            holding: vec![0; 65536],
            input: vec![0; 65536],
            coils: vec![false; 65536],
            discrete: vec![false; 65536],
            limit: u16::MAX,
        }
    }
}

#[derive(Clone)]
struct Device {
    memory: Arc<Mutex<Memory>>,
    requests: Arc<AtomicU64>,
}

fn range(addr: u16, n: u16, limit: u16) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let end = u32::from(addr) + u32::from(n);
    if end > u32::from(limit) || n == 0 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(usize::from(addr)..end as usize)
}

impl tokio_modbus::server::Service for Device {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        future::ready(self.answer(req))
    }
}

impl Device {
    fn answer(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut m = self.memory.lock().unwrap();
        let limit = m.limit;
        Ok(match req {
            Request::ReadCoils(a, n) => Response::ReadCoils(m.coils[range(a, n, limit)?].to_vec()),
            Request::ReadDiscreteInputs(a, n) => Response::ReadDiscreteInputs(m.discrete[range(a, n, limit)?].to_vec()),
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(m.holding[range(a, n, limit)?].to_vec())
            }
            Request::ReadInputRegisters(a, n) => Response::ReadInputRegisters(m.input[range(a, n, limit)?].to_vec()),
            Request::WriteSingleCoil(a, v) => {
                let r = range(a, 1, limit)?;
                m.coils[r.start] = v;
                Response::WriteSingleCoil(a, v)
            }
            Request::WriteMultipleCoils(a, v) => {
                let r = range(a, v.len() as u16, limit)?;
                m.coils[r].copy_from_slice(&v);
                Response::WriteMultipleCoils(a, v.len() as u16)
            }
            Request::WriteSingleRegister(a, v) => {
                let r = range(a, 1, limit)?;
                m.holding[r.start] = v;
                Response::WriteSingleRegister(a, v)
            }
            Request::WriteMultipleRegisters(a, v) => {
                let r = range(a, v.len() as u16, limit)?;
                m.holding[r].copy_from_slice(&v);
                Response::WriteMultipleRegisters(a, v.len() as u16)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Bind `port` without listening: connecting to it is refused, and
/// binding it fails for anyone else.
fn hold(port: u16) -> Option<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.set_reuseaddr(true).ok()?;
    socket.bind(([127, 0, 0, 1], port).into()).ok()?;
    Some(socket)
}

/// Two pseudo-terminals linked by `socat`: the gateway's end, the
/// device's end, the `socat` process and the directory of the links.
fn pty_pair() -> (PathBuf, PathBuf, std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, dev) = (dir.path().join("gateway-tty"), dir.path().join("device-tty"));
    let socat = std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", gw.display()))
        .arg(format!("pty,raw,echo=0,link={}", dev.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start socat ({e}): install it, e.g. `apt-get install socat`"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(gw.exists() && dev.exists()) {
        assert!(std::time::Instant::now() < deadline, "socat made no pty pair");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (gw, dev, socat, dir)
}

/// Serve RTU on the device's end of a pty pair.
async fn serve_serial(dev: PathBuf, service: BusService) {
    use tokio_serial::SerialPortBuilderExt;
    let Ok(port) = tokio_serial::new(dev.display().to_string(), 19200).open_native_async() else { return };
    let _ = tokio_modbus::server::rtu::Server::new(port).serve_forever(service).await;
}

/// Several units on one serial line, as an RS-485 bus: each answers its own
/// unit id from its own memory; a unit that is not there, or silenced,
/// does not answer at all (as a device that is off).
pub struct SerialBus {
    units: Arc<Vec<(u8, Device)>>,
    silent: Arc<Mutex<HashSet<u8>>>,
    gateway_end: PathBuf,
    // Dropped in order: the server, then the line.
    runtime: tokio::runtime::Runtime,
    socat: std::process::Child,
    _dir: tempfile::TempDir,
}

#[derive(Clone)]
struct BusService {
    units: Arc<Vec<(u8, Device)>>,
    silent: Arc<Mutex<HashSet<u8>>>,
    /// The first unit answers whatever unit id a request names.
    any_unit: bool,
}

impl tokio_modbus::server::Service for BusService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        if self.silent.lock().unwrap().contains(&req.slave) {
            return future::ready(Ok(None));
        }
        let answer = match self.units.iter().find(|(id, _)| self.any_unit || *id == req.slave) {
            Some((_, device)) => device.answer(req.request).map(Some),
            None => Ok(None),
        };
        future::ready(answer)
    }
}

impl SerialBus {
    /// A bus with these unit ids on a pty pair (`socat`, installed by `.ci/run`).
    pub fn start(unit_ids: &[u8]) -> SerialBus {
        let (gateway_end, dev, socat, dir) = pty_pair();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
        let units: Arc<Vec<(u8, Device)>> = Arc::new(
            unit_ids.iter().map(|id| (*id, Device { memory: Arc::default(), requests: Arc::default() })).collect(),
        );
        let silent = Arc::new(Mutex::new(HashSet::new()));
        runtime.spawn(serve_serial(dev, BusService { units: units.clone(), silent: silent.clone(), any_unit: false }));
        SerialBus { units, silent, gateway_end, runtime, socat, _dir: dir }
    }

    /// The gateway's end of the line.
    pub fn path(&self) -> &std::path::Path {
        &self.gateway_end
    }

    fn unit(&self, id: u8) -> &Device {
        &self.units.iter().find(|(u, _)| *u == id).unwrap_or_else(|| panic!("no unit {id} on the bus")).1
    }

    /// Change unit `id`'s memory.
    pub fn with<T>(&self, id: u8, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.unit(id).memory.lock().unwrap())
    }

    /// Requests unit `id` answered so far.
    pub fn requests(&self, id: u8) -> u64 {
        self.unit(id).requests.load(Ordering::Relaxed)
    }

    /// Make unit `id` stop answering (`true`) or answer again.
    pub fn silence(&self, id: u8, silent: bool) {
        let mut s = self.silent.lock().unwrap();
        if silent {
            s.insert(id);
        } else {
            s.remove(&id);
        }
    }
}

impl Drop for SerialBus {
    fn drop(&mut self) {
        let _ = &self.runtime;
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

/// How the simulator frames its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Tcp,
    RtuOverTcp,
}

/// A simulated device on 127.0.0.1:`port` (or a serial line), stopped
/// when dropped.
pub struct ModbusDevice {
    pub port: u16,
    framing: Framing,
    device: Device,
    runtime: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
    /// While stopped: the port bound but not listening, so connections are
    /// refused and no other test's server takes the port meanwhile.
    placeholder: Option<tokio::net::TcpSocket>,
    /// With a serial line: the gateway's end, and what links the two.
    serial: Option<(std::path::PathBuf, std::process::Child, tempfile::TempDir)>,
}

impl ModbusDevice {
    /// Start serving on a free port.
    pub fn start(framing: Framing) -> ModbusDevice {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
        let device = Device { memory: Arc::default(), requests: Arc::default() };
        let mut d = ModbusDevice {
            port: crate::free_port(),
            framing,
            device,
            runtime,
            server: None,
            serial: None,
            placeholder: None,
        };
        d.resume();
        d
    }

    /// Serve RTU on a serial line: a pty pair linked by `socat` (installed
    /// by `.ci/run`). The gateway opens [`ModbusDevice::serial_path`].
    pub fn start_serial() -> ModbusDevice {
        let (gw, dev, socat, dir) = pty_pair();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
        let device = Device { memory: Arc::default(), requests: Arc::default() };
        // One device answering every unit id.
        let bus = BusService { units: Arc::new(vec![(0, device.clone())]), silent: Arc::default(), any_unit: true };
        let server = runtime.spawn(serve_serial(dev, bus));
        ModbusDevice {
            port: 0,
            framing: Framing::RtuOverTcp,
            device,
            runtime,
            server: Some(server),
            serial: Some((gw, socat, dir)),
            placeholder: None,
        }
    }

    /// Serve Modbus TCP frames in UDP datagrams on `port`: a relay in
    /// front of the TCP simulator, one datagram per frame each way.
    pub fn start_udp() -> ModbusDevice {
        let mut d = ModbusDevice::start(Framing::Tcp);
        let tcp_port = d.port;
        let socket = d.runtime.block_on(tokio::net::UdpSocket::bind(("127.0.0.1", 0))).expect("bind udp");
        d.port = socket.local_addr().expect("udp address").port();
        d.runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", tcp_port)).await else { return };
            let mut buf = vec![0u8; 1024];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else { return };
                if tcp.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                // MBAP: 6 bytes, the last two the length of what follows.
                let mut header = [0u8; 6];
                if tcp.read_exact(&mut header).await.is_err() {
                    return;
                }
                let mut rest = vec![0u8; usize::from(u16::from_be_bytes([header[4], header[5]]))];
                if tcp.read_exact(&mut rest).await.is_err() {
                    return;
                }
                let _ = socket.send_to(&[&header[..], &rest].concat(), peer).await;
            }
        });
        d
    }

    /// The gateway's end of a serial device's line.
    pub fn serial_path(&self) -> Option<&std::path::Path> {
        self.serial.as_ref().map(|(p, _, _)| p.as_path())
    }

    /// Serve again on the same port (after [`ModbusDevice::stop`]).
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "already serving");
        self.placeholder = None;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let (device, framing) = (self.device.clone(), self.framing);
        let listener = self.runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(addr).expect("bind the simulator's port");
            socket.listen(64).expect("listen")
        });
        self.server = Some(self.runtime.spawn(async move {
            let on_connected = |stream, socket_addr| {
                let device = device.clone();
                async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(device.clone()))) }
            };
            let on_error = |_err| {};
            let _ = match framing {
                Framing::Tcp => Server::new(listener).serve(&on_connected, on_error).await,
                Framing::RtuOverTcp => {
                    tokio_modbus::server::rtu_over_tcp::Server::new(listener).serve(&on_connected, on_error).await
                }
            };
        }));
    }

    /// Stop serving: connections drop, the port refuses (a dead device).
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = self.runtime.block_on(s);
            if self.serial.is_none() {
                self.placeholder = hold(self.port);
            }
        }
    }

    /// Change the device's memory.
    pub fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(&mut self.device.memory.lock().unwrap())
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.device.requests.load(Ordering::Relaxed)
    }
}

impl Drop for ModbusDevice {
    fn drop(&mut self) {
        self.stop();
        if let Some((_, mut socat, _)) = self.serial.take() {
            let _ = socat.kill();
            let _ = socat.wait();
        }
    }
}
