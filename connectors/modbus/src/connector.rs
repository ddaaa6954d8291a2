//! The running Modbus connector: one task per line (a connection) polls
//! the slaves on it, each every `pollPeriod`, and hands each block to the
//! converter; writes and reads asked by ThingsBoard go to the line's task,
//! between polls.
//!
//! A Modbus TCP slave is a line of its own: one that does not answer never
//! delays another, and each reconnects on its own (`connectAttemptCount`
//! attempts of `connectAttemptTimeMs`, then `waitAfterFailedAttemptsMs`).
//! Slaves on one serial port (an RS-485 bus), or behind one serial device
//! server spoken to in RTU frames, share a line and take turns on it: a bus
//! carries one request at a time. A read that fails (a timeout, a closed
//! connection) is tried `retries` times; then a line of one slave is made
//! again. On a shared line only that unit counts as silent (the port is
//! fine): it is probed once a poll, `connectAttemptCount` times, then
//! every `waitAfterFailedAttemptsMs`, so that a dead unit costs the others
//! little bus time; the connection is opened again after its timeout so
//! that a late answer cannot be taken for the next request's. A Modbus
//! exception (the device answered, refusing the read) is a data-quality
//! event: the block is skipped, counted (`ReadErrors`), and logged once per
//! change of state, not per poll.

use crate::config::{Framing, ModbusConfig, SerialSettings, SlaveConfig};
use crate::planner::Read;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats, RouteId, Uplink, UplinkSink};
use tbgw_core::downlink::{DeviceJob, DeviceRequests, ToConnector};
use tbgw_core::{DeviceRequest, DownlinkMessage, ModbusRequest, RawUplink, RegisterBlock, Source, now_ms};
use tokio::sync::mpsc;
use tokio_modbus::client::{Client, Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

/// A Modbus connector: the slaves, and the route of each one's converter
/// (one built-in `modbus` converter serves many slaves: a block says its
/// slave as its `device`).
pub struct ModbusConnector {
    name: String,
    config: ModbusConfig,
    /// The route of each slave.
    routes: Vec<RouteId>,
}

impl ModbusConnector {
    /// `routes[i]` is the route id of the config's route `i`.
    pub fn new(name: impl Into<String>, config: ModbusConfig, routes: &[RouteId]) -> ModbusConnector {
        // The gateway gives one id per declared route, and every slave has
        // one of them (`parse`): a miss is a bug of tbgw, not of the config.
        let routes = (0..config.slaves.len())
            .map(|i| *routes.get(config.route_of(i)).expect("the gateway gives every declared route an id"))
            .collect();
        ModbusConnector { name: name.into(), config, routes }
    }
}

/// Counters shared by the slaves of one connector.
#[derive(Default)]
struct Shared {
    /// Lines connected now: the connector counts as connected while one is.
    connected: AtomicUsize,
}

impl Connector for ModbusConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(*self, ctx))
    }
}

async fn run(conn: ModbusConnector, mut ctx: ConnectorContext) {
    let shared = Arc::new(Shared::default());
    // Slaves sharing a line go to one task, in the order configured.
    // (its key, its slaves with their routes)
    type Slaves = Vec<(SlaveConfig, RouteId)>;
    let mut lines: Vec<(Option<String>, Slaves)> = Vec::new();
    for (slave, route) in conn.config.slaves.into_iter().zip(conn.routes) {
        let key = slave.line();
        match lines.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
            Some((_, slaves)) => slaves.push((slave, route)),
            None => lines.push((key, vec![(slave, route)])),
        }
    }
    let mut slaves: HashMap<String, mpsc::Sender<DeviceJob>> = HashMap::new();
    let mut tasks = Vec::new();
    for (_, line) in lines {
        let (tx, rx) = mpsc::channel(256);
        for (s, _) in &line {
            slaves.insert(s.device_name.clone(), tx.clone());
        }
        let line = Line {
            connector: conn.name.clone(),
            units: line.into_iter().map(|(s, route)| Unit::new(s, route)).collect(),
            requests: ctx.downlink.requests.clone(),
            sink: ctx.sink.clone(),
            stats: ctx.stats.clone(),
            shared: shared.clone(),
            stop: ctx.stop_intake.clone(),
        };
        tasks.push(tokio::spawn(line.run(rx)));
    }
    // Requests to their slave's line; the rest answered here.
    loop {
        tokio::select! {
            _ = ctx.finish.cancelled() => break,
            Some(job) = ctx.downlink.jobs.recv() => match job {
                ToConnector::Device(job) => match slaves.get(&job.device) {
                    Some(tx) => {
                        let refused = match tx.try_send(job) {
                            Ok(()) => None,
                            Err(mpsc::error::TrySendError::Full(job)) => {
                                let why = format!("too many requests wait for `{}`", job.device);
                                Some((job, why))
                            }
                            Err(mpsc::error::TrySendError::Closed(job)) => {
                                let why = format!("the line of `{}` has stopped", job.device);
                                Some((job, why))
                            }
                        };
                        if let Some((job, why)) = refused {
                            ctx.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                            let _ = job.reply.send(Err(why));
                        }
                    }
                    None => {
                        ctx.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                        let _ = job.reply.send(Err(format!("connector `{}` has no slave named `{}`", conn.name, job.device)));
                    }
                },
                ToConnector::ConnectorRpc { method, reply, .. } => {
                    let _ = reply.send(Err(format!("the modbus connector has no connector RPC `{method}`; send RPCs to its devices")));
                }
            },
        }
    }
    ctx.stop_intake.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    ctx.stats.connected.store(false, Ordering::Relaxed);
    tracing::info!(connector = %conn.name, "stopped");
}

/// Open a serial port with the slave's line settings, RTU framing.
fn open_serial(s: &SerialSettings, slave: Slave) -> Result<Context, String> {
    use tokio_serial::{DataBits, Parity, SerialPortBuilderExt, StopBits};
    let parity = match s.parity {
        'E' => Parity::Even,
        'O' => Parity::Odd,
        _ => Parity::None,
    };
    let data_bits = match s.bytesize {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let stop_bits = if s.stopbits == 2 { StopBits::Two } else { StopBits::One };
    let port = tokio_serial::new(&s.path, s.baudrate)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(|e| format!("cannot open {}: {e}", s.path))?;
    Ok(tokio_modbus::client::rtu::attach_slave(port, slave))
}

/// The device answered with a Modbus exception: the connection is fine,
/// the request was refused. (No usable answer at all, a timeout or a
/// closed connection, is an `Err(String)`: the connection is lost.)
enum Failure {
    Exception(ExceptionCode),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Failure::Exception(e) = self;
        write!(f, "the device refused it (Modbus exception: {e})")
    }
}

/// The bytes of a read as the converter contract has them: registers
/// big-endian, coils packed LSB first.
enum Data {
    Registers(Vec<u16>),
    Coils(Vec<bool>),
}

impl Data {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::Registers(r) => r.iter().flat_map(|w| w.to_be_bytes()).collect(),
            Data::Coils(c) => pack_bits(c),
        }
    }
}

use tbgw_modbus_tags::{pack_bits, unpack_bits};

/// A slave on a line, and what the line's task knows of it.
struct Unit {
    slave: SlaveConfig,
    /// Its converter's route.
    route: RouteId,
    /// When it is polled next.
    next: Instant,
    /// Blocks whose last read failed, for one log line per change.
    failing: HashMap<Read, String>,
    /// On a shared line: failed polls in a row since it went silent.
    silent: Option<u32>,
}

impl Unit {
    fn new(slave: SlaveConfig, route: RouteId) -> Unit {
        Unit { slave, route, next: Instant::now(), failing: HashMap::new(), silent: None }
    }
}

/// A connection, and when its last request ended (`delayBetweenRequestsMs`).
struct Conn {
    ctx: Context,
    last: Option<Instant>,
}

/// Why a line stopped polling on its connection.
enum Broken {
    /// The connection is lost: made again as `connectAttempt*` say.
    Lost(String),
    /// A unit of a shared line did not answer: the connection is opened
    /// again at once, so that a late answer is not read as the next one's.
    Reopen,
}

/// One connection and the slaves polled over it.
struct Line {
    connector: String,
    /// Never empty; the first slave's connection settings are the line's.
    units: Vec<Unit>,
    /// Where its devices are connected to ThingsBoard.
    requests: DeviceRequests,
    sink: UplinkSink,
    stats: Arc<ConnectorStats>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Line {
    fn first(&self) -> &SlaveConfig {
        &self.units[0].slave
    }

    fn target(&self) -> String {
        let s = self.first();
        match &s.framing {
            Framing::Serial(p) => p.path.clone(),
            _ => format!("{}:{}", s.host, s.port),
        }
    }

    /// The devices on the line, for its log lines.
    fn devices(&self) -> String {
        self.units.iter().map(|u| u.slave.device_name.as_str()).collect::<Vec<_>>().join(", ")
    }

    async fn connect(&self) -> Result<Context, String> {
        let first = self.first();
        let slave = Slave(first.unit_id);
        let addr = format!("{}:{}", first.host, first.port);
        match &first.framing {
            Framing::Serial(s) => return open_serial(s, slave),
            Framing::Udp | Framing::RtuOverUdp => {
                let udp = crate::udp::UdpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                return Ok(if first.framing == Framing::Udp {
                    tokio_modbus::client::tcp::attach_slave(udp, slave)
                } else {
                    tokio_modbus::client::rtu::attach_slave(udp, slave)
                });
            }
            Framing::Tcp | Framing::RtuOverTcp => {}
        }
        let stream = tokio::time::timeout(first.connect_timeout, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("no connection within {:?}", first.connect_timeout))?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(if first.framing == Framing::Tcp {
            tokio_modbus::client::tcp::attach_slave(stream, slave)
        } else {
            tokio_modbus::client::rtu::attach_slave(stream, slave)
        })
    }

    async fn run(mut self, mut jobs: mpsc::Receiver<DeviceJob>) {
        let (devices, target) = (self.devices(), self.target());
        let stop = self.stop.clone();
        let mut attempts = 0u32;
        let mut was_down = false;
        let mut reopening = false;
        let mut announced = false;
        'connection: while !stop.is_cancelled() {
            let ctx = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    attempts += 1;
                    if !was_down {
                        tracing::warn!(connector = %self.connector, device = %devices, "cannot connect to {target}: {e}; retrying");
                        was_down = true;
                    }
                    let first = self.first();
                    let wait = if attempts >= first.connect_attempts {
                        attempts = 0;
                        first.wait_after_failed_attempts
                    } else {
                        Duration::from_millis(500 * u64::from(attempts)).min(Duration::from_secs(10))
                    };
                    if !self.idle(wait, &mut jobs).await {
                        break;
                    }
                    continue;
                }
            };
            attempts = 0;
            if !announced {
                // As the Python gateway: a slave's device is connected to
                // ThingsBoard once its line is up, so that requests reach it
                // (and are answered) whether or not it has sent data yet.
                for u in &self.units {
                    let device_type = u.slave.device_type.clone();
                    self.requests.send(DeviceRequest::Connect { device: u.slave.device_name.clone(), device_type });
                }
                announced = true;
            }
            if was_down {
                tracing::info!(connector = %self.connector, device = %devices, "connected again to {target}");
            } else if !reopening {
                tracing::info!(connector = %self.connector, device = %devices, "connected to {target}");
            }
            (was_down, reopening) = (false, false);
            let mut conn = Conn { ctx, last: None };
            self.shared.connected.fetch_add(1, Ordering::Relaxed);
            self.stats.connected.store(true, Ordering::Relaxed);
            let broken = loop {
                let due = self.units.iter().map(|u| u.next).min().unwrap_or_else(Instant::now);
                tokio::select! {
                    _ = stop.cancelled() => break None,
                    _ = tokio::time::sleep_until(due.into()) => {
                        if let Err(b) = self.poll_due(&mut conn).await {
                            break Some(b);
                        }
                    }
                    Some(job) = jobs.recv() => {
                        if let Err(b) = self.serve(&mut conn, job).await {
                            break Some(b);
                        }
                    }
                }
            };
            if self.shared.connected.fetch_sub(1, Ordering::Relaxed) == 1 {
                self.stats.connected.store(false, Ordering::Relaxed);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.ctx.disconnect()).await;
            match broken {
                None => break 'connection,
                Some(Broken::Reopen) => reopening = true,
                Some(Broken::Lost(e)) => {
                    tracing::warn!(connector = %self.connector, device = %devices, "lost {target}: {e}; reconnecting");
                    was_down = true;
                    if !self.idle(Duration::from_millis(500), &mut jobs).await {
                        break;
                    }
                }
            }
        }
    }

    /// Wait `wait` while answering requests at once (not connected); false
    /// when stopping.
    async fn idle(&self, wait: Duration, jobs: &mut mpsc::Receiver<DeviceJob>) -> bool {
        let pause = tokio::time::sleep(wait);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => return true,
                _ = self.stop.cancelled() => return false,
                Some(job) = jobs.recv() => {
                    self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                    let why = format!("`{}` is not connected ({})", job.device, self.target());
                    let _ = job.reply.send(Err(why));
                }
            }
        }
    }

    /// Poll every unit whose time has come, and schedule its next poll.
    async fn poll_due(&mut self, conn: &mut Conn) -> Result<(), Broken> {
        let now = Instant::now();
        for i in 0..self.units.len() {
            if self.units[i].next > now {
                continue;
            }
            let result = self.poll(i, conn).await;
            let u = &mut self.units[i];
            let after = Instant::now();
            let period = match u.silent {
                // A silent unit: `connectAttemptCount` probes a poll apart, then a pause.
                Some(n) if n > 0 && n % u.slave.connect_attempts == 0 => u.slave.wait_after_failed_attempts,
                _ => u.slave.poll_period,
            };
            // A poll that overran its period starts the next one late
            // rather than polling twice in a row.
            let planned = u.next + period;
            u.next = if planned > after { planned } else { after + period };
            result?;
        }
        Ok(())
    }

    /// A unit did not answer (`why`): on a line of its own the connection
    /// is lost; on a shared line only the unit is, once.
    fn no_answer(&mut self, i: usize, why: String) -> Broken {
        if self.units.len() == 1 {
            return Broken::Lost(why);
        }
        let target = self.target();
        let u = &mut self.units[i];
        if u.silent.is_none() {
            tracing::warn!(
                connector = %self.connector, device = %u.slave.device_name,
                "unit {} on {target} does not answer: {why}; probing it once a poll",
                u.slave.unit_id
            );
        }
        u.silent = Some(u.silent.map_or(1, |n| n + 1));
        Broken::Reopen
    }

    /// A unit answered: it is not silent (any more).
    fn answered(&mut self, i: usize) {
        let u = &mut self.units[i];
        if u.silent.take().is_some() {
            tracing::info!(connector = %self.connector, device = %u.slave.device_name, "unit {} answers again", u.slave.unit_id);
        }
    }

    /// Read every planned block of unit `i` and hand it over.
    async fn poll(&mut self, i: usize, conn: &mut Conn) -> Result<(), Broken> {
        // A silent unit is probed once, not `retries` times: the bus is the others' too.
        let attempts = if self.units[i].silent.is_some() { 1 } else { self.units[i].slave.retries + 1 };
        for j in 0..self.units[i].slave.reads.len() {
            let r = self.units[i].slave.reads[j];
            let answer = read(conn, &self.units[i].slave, r, attempts).await;
            let what = || format!("fc {} at {} ({} objects)", r.function_code, r.address, r.count);
            match answer {
                Err(why) => {
                    self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(self.no_answer(i, why));
                }
                Ok(Ok(data)) => {
                    self.answered(i);
                    let u = &mut self.units[i];
                    if u.failing.remove(&r).is_some() {
                        tracing::info!(connector = %self.connector, device = %u.slave.device_name, "{}: read again", what());
                    }
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let device = &u.slave.device_name;
                    let raw = RawUplink {
                        source: Source::Registers(RegisterBlock {
                            unit_id: u.slave.unit_id,
                            function_code: r.function_code,
                            address: r.address,
                            count: r.count,
                        }),
                        device: Some(device.clone()),
                        payload: data.bytes(),
                        metadata: Vec::new(),
                        received_at: now_ms(),
                    };
                    // No source to confirm to: a poll is not redelivered.
                    let uplink = Uplink { route: u.route, raw, ack: None };
                    if self.sink.send(device, uplink).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(Err(f)) => {
                    self.answered(i);
                    self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    let why = f.to_string();
                    let u = &mut self.units[i];
                    if u.failing.get(&r) != Some(&why) {
                        tracing::warn!(connector = %self.connector, device = %u.slave.device_name, "{}: {why}", what());
                        u.failing.insert(r, why);
                    }
                }
            }
        }
        Ok(())
    }

    /// A request from ThingsBoard, answered here in every case (with what
    /// its reads read, for the converter's reply); `Err` when the device did
    /// not answer.
    async fn serve(&mut self, conn: &mut Conn, job: DeviceJob) -> Result<(), Broken> {
        let Some(i) = self.units.iter().position(|u| u.slave.device_name == job.device) else {
            self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(format!("no slave named `{}` on {}", job.device, self.target())));
            return Ok(());
        };
        let mut answers = Vec::new();
        for m in &job.messages {
            let request = match m {
                DownlinkMessage::Modbus(r) => check(r),
                other => Err(format!(
                    "the downlink converter made an {} message for `{}`: the modbus connector sends Modbus requests",
                    other.kind(),
                    job.device
                )),
            };
            let r = match request {
                Ok(r) => r,
                Err(why) => {
                    self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(why));
                    return Ok(());
                }
            };
            let slave = &self.units[i].slave;
            let attempts = slave.retries + 1;
            let outcome = if r.is_read() {
                let read_of = Read { function_code: r.function_code, address: r.address, count: r.count };
                read(conn, slave, read_of, attempts).await.map(|a| a.map(Some))
            } else {
                write(conn, slave, r, attempts).await.map(|a| a.map(|()| None))
            };
            match outcome {
                Ok(Ok(None)) => {
                    self.answered(i);
                    self.stats.sent_to_devices.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Some(data))) => {
                    self.answered(i);
                    let slave = &self.units[i].slave;
                    answers.push(RawUplink {
                        source: Source::Registers(RegisterBlock {
                            unit_id: slave.unit_id,
                            function_code: r.function_code,
                            address: r.address,
                            count: r.count,
                        }),
                        device: Some(slave.device_name.clone()),
                        payload: data.bytes(),
                        metadata: Vec::new(),
                        received_at: now_ms(),
                    });
                }
                Ok(Err(f)) => {
                    self.answered(i);
                    self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(f.to_string()));
                    return Ok(());
                }
                Err(why) => {
                    self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(format!("`{}` did not answer: {why}", job.device)));
                    return Err(self.no_answer(i, why));
                }
            }
        }
        let _ = job.reply.send(Ok(answers));
        Ok(())
    }
}

/// A request as the protocol allows it: a function code tbgw sends, a count
/// within the protocol's limits, a payload of the size the count says.
fn check(r: &ModbusRequest) -> Result<&ModbusRequest, String> {
    let what = |limit: u16, unit: &str| {
        format!(
            "function code {} at {}: count {} is out of range (1 to {limit} {unit})",
            r.function_code, r.address, r.count
        )
    };
    let (max, unit, bytes) = match r.function_code {
        1 | 2 => (2000, "coils", None),
        3 | 4 => (125, "registers", None),
        5 => (1, "coil", Some(1)),
        6 => (1, "register", Some(2)),
        15 => (1968, "coils", Some(usize::from(r.count).div_ceil(8))),
        16 => (123, "registers", Some(usize::from(r.count) * 2)),
        other => return Err(format!("function code {other} is not a Modbus read (1-4) or write (5, 6, 15, 16)")),
    };
    if r.count == 0 || r.count > max {
        return Err(what(max, unit));
    }
    match bytes {
        Some(n) if r.payload.len() != n => Err(format!(
            "function code {} at {}: {} bytes to write {} {unit}, expected {n}",
            r.function_code,
            r.address,
            r.payload.len(),
            r.count
        )),
        None if !r.payload.is_empty() => {
            Err(format!("function code {} at {} reads: it carries no payload", r.function_code, r.address))
        }
        _ => Ok(r),
    }
}

impl Conn {
    /// Address `slave` and keep its quiet time since the last request.
    async fn before(&mut self, slave: &SlaveConfig) {
        self.ctx.set_slave(Slave(slave.unit_id));
        if let Some(last) = self.last
            && !slave.delay_between_requests.is_zero()
        {
            tokio::time::sleep_until((last + slave.delay_between_requests).into()).await;
        }
    }
}

/// One read of `slave`, tried `attempts` times; `Err` when it did not answer.
async fn read(conn: &mut Conn, slave: &SlaveConfig, r: Read, attempts: u32) -> Result<Result<Data, Failure>, String> {
    let mut last = String::new();
    for _ in 0..attempts {
        conn.before(slave).await;
        let ctx = &mut conn.ctx;
        let answer = tokio::time::timeout(slave.timeout, async {
            match r.function_code {
                1 => ctx.read_coils(r.address, r.count).await.map(|a| a.map(Data::Coils)),
                2 => ctx.read_discrete_inputs(r.address, r.count).await.map(|a| a.map(Data::Coils)),
                3 => ctx.read_holding_registers(r.address, r.count).await.map(|a| a.map(Data::Registers)),
                _ => ctx.read_input_registers(r.address, r.count).await.map(|a| a.map(Data::Registers)),
            }
        })
        .await;
        conn.last = Some(Instant::now());
        match answer {
            Ok(Ok(Ok(data))) => return Ok(Ok(data)),
            Ok(Ok(Err(exception))) => return Ok(Err(Failure::Exception(exception))),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {:?}", slave.timeout),
        }
    }
    Err(last)
}

/// One write to `slave` (function code 5, 6, 15 or 16, [`check`]ed), tried
/// `attempts` times; `Err` when it did not answer.
async fn write(
    conn: &mut Conn,
    slave: &SlaveConfig,
    r: &ModbusRequest,
    attempts: u32,
) -> Result<Result<(), Failure>, String> {
    let (fc, address) = (r.function_code, r.address);
    let words: Vec<u16> = r.payload.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
    let coils = unpack_bits(&r.payload, usize::from(r.count.max(1)));
    let mut last = String::new();
    for _ in 0..attempts {
        conn.before(slave).await;
        let ctx = &mut conn.ctx;
        let answer = tokio::time::timeout(slave.timeout, async {
            match fc {
                5 => ctx.write_single_coil(address, coils.first().copied().unwrap_or(false)).await,
                6 => ctx.write_single_register(address, words.first().copied().unwrap_or(0)).await,
                15 => ctx.write_multiple_coils(address, &coils).await,
                _ => ctx.write_multiple_registers(address, &words).await,
            }
        })
        .await;
        conn.last = Some(Instant::now());
        match answer {
            Ok(Ok(Ok(()))) => return Ok(Ok(())),
            Ok(Ok(Err(exception))) => return Ok(Err(Failure::Exception(exception))),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {:?}", slave.timeout),
        }
    }
    Err(last)
}
