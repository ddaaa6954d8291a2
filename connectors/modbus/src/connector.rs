//! The running Modbus connector: one task per slave polls its planned reads
//! every `pollPeriod` and hands each block to the slave's converter; writes
//! and reads asked by ThingsBoard go to the slave's task, between polls.
//!
//! A slave that does not answer never delays another: each has its own
//! task and connection, its own reconnection (`connectAttemptCount`
//! attempts of `connectAttemptTimeMs`, then `waitAfterFailedAttemptsMs`).
//! A read that fails (a timeout, a closed connection) is tried `retries`
//! times, then the connection is dropped and made again. A Modbus exception
//! (the device answered, refusing the read) is a data-quality event: the
//! block is skipped, counted, and logged once per change of state, not per
//! poll.

use crate::config::{Framing, ModbusConfig, SerialSettings, SlaveConfig};
use crate::planner::Read;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats, RouteId, Uplink, UplinkSink};
use tbgw_core::downlink::{DeviceJob, JobKind, ToConnector};
use tbgw_core::{RawUplink, RegisterBlock, Source};
use tbgw_modbus_converter::codec;
use tokio::sync::mpsc;
use tokio_modbus::client::{Client, Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

/// A Modbus connector: the slaves, and the route of their converter (one
/// `modbus` converter serves every slave; a block says its slave in the
/// `device` metadata).
pub struct ModbusConnector {
    name: String,
    config: ModbusConfig,
    route: RouteId,
}

impl ModbusConnector {
    pub fn new(name: impl Into<String>, config: ModbusConfig, route: RouteId) -> ModbusConnector {
        ModbusConnector { name: name.into(), config, route }
    }
}

/// Counters shared by the slaves of one connector.
#[derive(Default)]
struct Shared {
    /// Slaves connected now: the connector counts as connected while one is.
    connected: AtomicUsize,
    /// Reads a device refused (Modbus exceptions) or that failed.
    failed_reads: AtomicU64,
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
    let mut slaves: HashMap<String, mpsc::Sender<DeviceJob>> = HashMap::new();
    let mut tasks = Vec::new();
    for slave in conn.config.slaves {
        let (tx, rx) = mpsc::channel(256);
        slaves.insert(slave.device_name.clone(), tx);
        let poller = Poller {
            connector: conn.name.clone(),
            slave,
            route: conn.route,
            sink: ctx.sink.clone(),
            stats: ctx.stats.clone(),
            shared: shared.clone(),
            stop: ctx.stop_intake.clone(),
        };
        tasks.push(tokio::spawn(poller.run(rx)));
    }
    // Requests to their slave's task; the rest answered here.
    loop {
        tokio::select! {
            _ = ctx.finish.cancelled() => break,
            Some(job) = ctx.downlink.jobs.recv() => match job {
                ToConnector::Device(job) => match slaves.get(&job.device) {
                    Some(tx) => {
                        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
                            tx.try_send(job)
                        {
                            ctx.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                            let _ = job.reply.send(Err(format!("too many requests wait for `{}`", job.device)));
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

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
            Data::Coils(c) => codec::pack_bits(c),
        }
    }
}

struct Poller {
    connector: String,
    slave: SlaveConfig,
    route: RouteId,
    sink: UplinkSink,
    stats: Arc<ConnectorStats>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Poller {
    fn target(&self) -> String {
        match &self.slave.framing {
            Framing::Serial(s) => format!("{} unit {}", s.path, self.slave.unit_id),
            _ => format!("{}:{} unit {}", self.slave.host, self.slave.port, self.slave.unit_id),
        }
    }

    async fn connect(&self) -> Result<Context, String> {
        let slave = Slave(self.slave.unit_id);
        let addr = format!("{}:{}", self.slave.host, self.slave.port);
        match &self.slave.framing {
            Framing::Serial(s) => return open_serial(s, slave),
            Framing::Udp | Framing::RtuOverUdp => {
                let udp = crate::udp::UdpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                return Ok(if self.slave.framing == Framing::Udp {
                    tokio_modbus::client::tcp::attach_slave(udp, slave)
                } else {
                    tokio_modbus::client::rtu::attach_slave(udp, slave)
                });
            }
            Framing::Tcp | Framing::RtuOverTcp => {}
        }
        let stream = tokio::time::timeout(self.slave.connect_timeout, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("no connection within {:?}", self.slave.connect_timeout))?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(if self.slave.framing == Framing::Tcp {
            tokio_modbus::client::tcp::attach_slave(stream, slave)
        } else {
            tokio_modbus::client::rtu::attach_slave(stream, slave)
        })
    }

    async fn run(self, mut jobs: mpsc::Receiver<DeviceJob>) {
        let (name, target) = (self.slave.device_name.clone(), self.target());
        let mut attempts = 0u32;
        let mut was_down = false;
        // Blocks whose last read failed, for one log line per change.
        let mut failing: HashMap<Read, String> = HashMap::new();
        'connection: while !self.stop.is_cancelled() {
            let mut ctx = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    attempts += 1;
                    if !was_down {
                        tracing::warn!(connector = %self.connector, device = %name, "cannot connect to {target}: {e}; retrying");
                        was_down = true;
                    }
                    let wait = if attempts >= self.slave.connect_attempts {
                        attempts = 0;
                        self.slave.wait_after_failed_attempts
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
            if was_down {
                tracing::info!(connector = %self.connector, device = %name, "connected again to {target}");
            } else {
                tracing::info!(connector = %self.connector, device = %name, "connected to {target}");
            }
            self.shared.connected.fetch_add(1, Ordering::Relaxed);
            self.stats.connected.store(true, Ordering::Relaxed);
            let mut ticker = tokio::time::interval(self.slave.poll_period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let lost = loop {
                tokio::select! {
                    _ = self.stop.cancelled() => break None,
                    _ = ticker.tick() => {
                        if let Err(e) = self.poll(&mut ctx, &mut failing).await {
                            break Some(e);
                        }
                    }
                    Some(job) = jobs.recv() => {
                        if let Err(e) = self.serve(&mut ctx, job).await {
                            break Some(e);
                        }
                    }
                }
            };
            if self.shared.connected.fetch_sub(1, Ordering::Relaxed) == 1 {
                self.stats.connected.store(false, Ordering::Relaxed);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ctx.disconnect()).await;
            match lost {
                None => break 'connection,
                Some(e) => {
                    tracing::warn!(connector = %self.connector, device = %name, "lost {target}: {e}; reconnecting");
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
                    let why = format!("`{}` is not connected ({})", self.slave.device_name, self.target());
                    let _ = job.reply.send(Err(why));
                }
            }
        }
    }

    /// One read, with its retries; `Err` only when the connection is lost.
    async fn read(&self, ctx: &mut Context, r: Read) -> Result<Result<Data, Failure>, String> {
        let mut last = String::new();
        for _ in 0..=self.slave.retries {
            let answer = tokio::time::timeout(self.slave.timeout, async {
                match r.function_code {
                    1 => ctx.read_coils(r.address, r.count).await.map(|a| a.map(Data::Coils)),
                    2 => ctx.read_discrete_inputs(r.address, r.count).await.map(|a| a.map(Data::Coils)),
                    3 => ctx.read_holding_registers(r.address, r.count).await.map(|a| a.map(Data::Registers)),
                    _ => ctx.read_input_registers(r.address, r.count).await.map(|a| a.map(Data::Registers)),
                }
            })
            .await;
            match answer {
                Ok(Ok(Ok(data))) => return Ok(Ok(data)),
                Ok(Ok(Err(exception))) => return Ok(Err(Failure::Exception(exception))),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {:?}", self.slave.timeout),
            }
        }
        Err(last)
    }

    /// Read every planned block and hand it over.
    async fn poll(&self, ctx: &mut Context, failing: &mut HashMap<Read, String>) -> Result<(), String> {
        for &r in &self.slave.reads {
            let what = format!("fc {} at {} ({} objects)", r.function_code, r.address, r.count);
            match self.read(ctx, r).await? {
                Ok(data) => {
                    if failing.remove(&r).is_some() {
                        tracing::info!(connector = %self.connector, device = %self.slave.device_name, "{what}: read again");
                    }
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let raw = RawUplink {
                        source: Source::Registers(RegisterBlock {
                            unit_id: self.slave.unit_id,
                            function_code: r.function_code,
                            address: r.address,
                            count: r.count,
                        }),
                        payload: data.bytes(),
                        metadata: vec![("device".to_owned(), self.slave.device_name.clone())],
                        received_at: now_ms(),
                    };
                    // No source to confirm to: a poll is not redelivered.
                    let uplink = Uplink { route: self.route, raw, ack: None };
                    if self.sink.send(&self.slave.device_name, uplink).await.is_err() {
                        return Ok(());
                    }
                }
                Err(f) => {
                    self.shared.failed_reads.fetch_add(1, Ordering::Relaxed);
                    let why = f.to_string();
                    if failing.get(&r) != Some(&why) {
                        tracing::warn!(connector = %self.connector, device = %self.slave.device_name, "{what}: {why}");
                        failing.insert(r, why);
                    }
                }
            }
        }
        Ok(())
    }

    /// A request from ThingsBoard; `Err` only when the connection is lost.
    async fn serve(&self, ctx: &mut Context, job: DeviceJob) -> Result<(), String> {
        let mut answers = Vec::new();
        for m in &job.messages {
            let parsed: Option<Vec<u16>> = m.target.split('/').map(|p| p.parse().ok()).collect();
            let Some([unit, fc, address, count]) = parsed.as_deref().and_then(|p| <[u16; 4]>::try_from(p).ok()) else {
                self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                let _ =
                    job.reply.send(Err(format!("`{}` is not a Modbus target (unit/function/address/count)", m.target)));
                return Ok(());
            };
            if unit != u16::from(self.slave.unit_id) {
                tracing::debug!(unit, "a request names another unit than the slave's; sent to the slave's");
            }
            let outcome = match fc {
                1..=4 => {
                    let r = Read { function_code: fc as u8, address, count };
                    match self.read(ctx, r).await? {
                        Ok(data) => Ok(Some((r, data))),
                        Err(f) => Err(f),
                    }
                }
                5 | 6 | 15 | 16 => self.write(ctx, fc as u8, address, count, &m.payload).await?.map(|()| None),
                other => {
                    self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(format!("function code {other} is not a read or a write")));
                    return Ok(());
                }
            };
            match outcome {
                Ok(None) => self.stats.sent_to_devices.fetch_add(1, Ordering::Relaxed),
                Ok(Some((r, data))) => {
                    answers.push(self.decode_answer(&job, r, &data));
                    0
                }
                Err(f) => {
                    self.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(f.to_string()));
                    return Ok(());
                }
            };
        }
        let answer = match (answers.len(), &job.kind) {
            (0, _) => r#"{"success":true}"#.to_owned(),
            (1, _) => answers.remove(0),
            (_, JobKind::Rpc { .. } | JobKind::AttributeUpdate) => format!("[{}]", answers.join(",")),
        };
        let _ = job.reply.send(Ok(answer));
        Ok(())
    }

    /// What a read RPC answers: `{"<tag>": value}`, decoded with the tag's
    /// format from the slave's `rpc[]`.
    fn decode_answer(&self, job: &DeviceJob, r: Read, data: &Data) -> String {
        let method = match &job.kind {
            JobKind::Rpc { method, .. } => method.as_str(),
            JobKind::AttributeUpdate => "",
        };
        let tag = self
            .slave
            .rpc
            .iter()
            .find(|t| t.tag == method && t.function_code == r.function_code && t.address == r.address);
        let Some(tag) = tag else {
            return serde_json::Value::String(data.bytes().iter().map(|b| format!("{b:02x}")).collect()).to_string();
        };
        let decoded = match data {
            Data::Coils(c) => codec::decode_bits(c, &tag.format),
            Data::Registers(_) => codec::decode_registers(&data.bytes(), &tag.format),
        };
        let value = match decoded {
            Ok(codec::Decoded::Bool(b)) => serde_json::json!(b),
            Ok(codec::Decoded::Int(i)) => serde_json::json!(i),
            Ok(codec::Decoded::Float(x)) => serde_json::json!(x),
            Ok(codec::Decoded::Text(s)) => serde_json::json!(s),
            Ok(codec::Decoded::Bits(b)) => serde_json::json!(b),
            Err(e) => serde_json::json!({ "error": e }),
        };
        serde_json::json!({ tag.tag.clone(): value }).to_string()
    }

    async fn write(
        &self,
        ctx: &mut Context,
        fc: u8,
        address: u16,
        count: u16,
        payload: &[u8],
    ) -> Result<Result<(), Failure>, String> {
        let words: Vec<u16> = payload.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
        let coils = codec::unpack_bits(payload, usize::from(count.max(1)));
        let mut last = String::new();
        for _ in 0..=self.slave.retries {
            let answer = tokio::time::timeout(self.slave.timeout, async {
                match fc {
                    5 => ctx.write_single_coil(address, coils.first().copied().unwrap_or(false)).await,
                    6 => ctx.write_single_register(address, words.first().copied().unwrap_or(0)).await,
                    15 => ctx.write_multiple_coils(address, &coils).await,
                    _ => ctx.write_multiple_registers(address, &words).await,
                }
            })
            .await;
            match answer {
                Ok(Ok(Ok(()))) => return Ok(Ok(())),
                Ok(Ok(Err(exception))) => return Ok(Err(Failure::Exception(exception))),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {:?}", self.slave.timeout),
            }
        }
        Err(last)
    }
}
