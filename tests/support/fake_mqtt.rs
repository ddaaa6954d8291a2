//! MQTT peers that mosquitto cannot be: a ThingsBoard that enforces rate
//! limits the way ThingsBoard's transport does ([`FakeThingsBoard`]), and a
//! devices' broker that records the order of the PUBACKs it gets
//! ([`RecordingBroker`]). Both speak MQTT 3.1.1 on 127.0.0.1 through
//! rumqttc's own packet codec, run on a runtime of their own (usable from
//! plain `#[test]`s), and stop when dropped.
//!
//! The fake ThingsBoard's limits are token buckets written here, apart from
//! tbgw's: bucket4j's greedy refill, one bandwidth per `capacity:seconds`
//! pair, full at start, kept across connections (they belong to the
//! gateway, not to a connection). Costs are ThingsBoard's: each device part
//! of a `v1/gateway/telemetry` or `attributes` publish is one telemetry
//! message plus its datapoints (no regular message); a device's first
//! `v1/gateway/connect` in a connection two messages, any other publish one.
//! A refused part is dropped (the rest of the publish is kept) and the
//! connection closed: after a PUBACK as ThingsBoard 4.2.1+ does, or without
//! one as 3.7-4.2.0 do ([`Refusal`]).

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const MAX_PACKET: usize = 16 << 20;

/// How a refused publish ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// ThingsBoard 4.2.1 and later: a PUBACK (on MQTT 3.1.1 a plain one),
    /// then the connection closed.
    PubackThenClose,
    /// ThingsBoard 3.7 to 4.2.0: the connection closed, no PUBACK.
    CloseWithoutPuback,
}

/// One limit set, in ThingsBoard's `"capacity:seconds,..."` form (`""`: none).
#[derive(Debug, Clone, Default)]
pub struct LimitSpec {
    pub messages: String,
    pub telemetry_messages: String,
    pub telemetry_datapoints: String,
}

impl LimitSpec {
    pub fn new(messages: &str, telemetry_messages: &str, telemetry_datapoints: &str) -> LimitSpec {
        LimitSpec {
            messages: messages.into(),
            telemetry_messages: telemetry_messages.into(),
            telemetry_datapoints: telemetry_datapoints.into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "messages": self.messages,
            "telemetryMessages": self.telemetry_messages,
            "telemetryDataPoints": self.telemetry_datapoints,
        })
    }
}

/// What the fake ThingsBoard enforces and what it says it enforces.
#[derive(Debug, Clone)]
pub struct TbLimits {
    /// `gatewayRateLimits`: the child devices, all together.
    pub gateway: LimitSpec,
    /// `rateLimits`: the gateway's own session.
    pub own: LimitSpec,
    /// The limits `getSessionLimits` answers with; `None`: it answers with
    /// those enforced. (A ThingsBoard whose answer understates its limits
    /// is how a test makes it refuse a paced client.)
    pub announced: Option<(LimitSpec, LimitSpec)>,
    pub refusal: Refusal,
}

/// A bucket4j-style bucket: bandwidths that all must hold a consume.
#[derive(Debug)]
struct Bucket {
    /// (capacity, tokens per second, tokens, last refill).
    bands: Vec<(f64, f64, f64, Instant)>,
}

impl Bucket {
    fn new(spec: &str) -> Bucket {
        let now = Instant::now();
        let bands = spec
            .split([',', ';'])
            .filter_map(|p| {
                let (c, s) = p.trim().split_once(':')?;
                let (c, s): (f64, f64) = (c.parse().ok()?, s.parse().ok()?);
                (c > 0.0 && s > 0.0).then_some((c, c / s, c, now))
            })
            .collect();
        Bucket { bands }
    }

    fn try_consume(&mut self, n: u64) -> bool {
        let now = Instant::now();
        for b in &mut self.bands {
            b.2 = (b.2 + now.duration_since(b.3).as_secs_f64() * b.1).min(b.0);
            b.3 = now;
        }
        if self.bands.iter().all(|b| b.2 >= n as f64) {
            for b in &mut self.bands {
                b.2 -= n as f64;
            }
            true
        } else {
            false
        }
    }
}

struct Buckets {
    messages: Bucket,
    telemetry_messages: Bucket,
    datapoints: Bucket,
}

impl Buckets {
    fn new(spec: &LimitSpec) -> Buckets {
        Buckets {
            messages: Bucket::new(&spec.messages),
            telemetry_messages: Bucket::new(&spec.telemetry_messages),
            datapoints: Bucket::new(&spec.telemetry_datapoints),
        }
    }

    /// As ThingsBoard checks a telemetry message: the message, then its
    /// datapoints (a message token taken stays taken).
    fn telemetry(&mut self, datapoints: u64) -> bool {
        self.telemetry_messages.try_consume(1) && self.datapoints.try_consume(datapoints)
    }
}

/// One telemetry reading ThingsBoard accepted.
#[derive(Debug, Clone)]
pub struct Reading {
    pub device: String,
    pub ts: Option<i64>,
    pub values: serde_json::Map<String, serde_json::Value>,
    /// When ThingsBoard accepted it.
    pub at: Instant,
}

struct TbState {
    limits: TbLimits,
    gateway: Buckets,
    own: Buckets,
    readings: Vec<Reading>,
    /// Datapoints of the child devices accepted (telemetry and attributes).
    datapoints: u64,
    refused_parts: u64,
    closed_for_limits: u64,
    connections: u64,
}

/// A ThingsBoard MQTT transport for one gateway, with its rate limits.
pub struct FakeThingsBoard {
    pub port: u16,
    state: Arc<Mutex<TbState>>,
    runtime: tokio::runtime::Runtime,
    listener: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FakeThingsBoard {
    /// Listen on a free port of 127.0.0.1.
    pub fn start(limits: TbLimits) -> FakeThingsBoard {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the fake ThingsBoard");
        let state = Arc::new(Mutex::new(TbState {
            gateway: Buckets::new(&limits.gateway),
            own: Buckets::new(&limits.own),
            limits,
            readings: Vec::new(),
            datapoints: 0,
            refused_parts: 0,
            closed_for_limits: 0,
            connections: 0,
        }));
        let mut tb = FakeThingsBoard {
            port: crate::free_port(),
            state,
            runtime,
            listener: None,
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        tb.start_again();
        tb
    }

    fn state(&self) -> MutexGuard<'_, TbState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listen again on the same port (after [`FakeThingsBoard::stop`]); the
    /// buckets are as ThingsBoard kept them.
    pub fn start_again(&mut self) {
        assert!(self.listener.is_none(), "already listening");
        let listener = self.runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)).await {
                    Ok(l) => return l,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("the fake ThingsBoard cannot listen on {}: {e}", self.port),
                }
            }
        });
        let (state, conns) = (self.state.clone(), self.conns.clone());
        self.listener = Some(self.runtime.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                let task = tokio::spawn(tb_connection(socket, state.clone()));
                conns.lock().unwrap_or_else(|e| e.into_inner()).push(task);
            }
        }));
    }

    /// An outage: stop listening and drop every connection.
    pub fn stop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            c.abort();
        }
        // Let the aborted tasks drop their sockets.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Every telemetry reading accepted, in order of arrival.
    pub fn readings(&self) -> Vec<Reading> {
        self.state().readings.clone()
    }

    /// The child devices' datapoints accepted (telemetry and attributes).
    pub fn datapoints(&self) -> u64 {
        self.state().datapoints
    }

    /// Device parts refused by a limit (their data dropped).
    pub fn refused(&self) -> u64 {
        self.state().refused_parts
    }

    /// Connections closed because of a refusal.
    pub fn closed_for_limits(&self) -> u64 {
        self.state().closed_for_limits
    }

    pub fn connections(&self) -> u64 {
        self.state().connections
    }

    /// Wait until `done` holds for the readings, or panic with `what`.
    pub fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Reading]) -> bool) -> Vec<Reading> {
        let deadline = Instant::now() + timeout;
        loop {
            let readings = self.readings();
            if done(&readings) {
                return readings;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} readings, {} refused",
                readings.len(),
                self.refused()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeThingsBoard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a device part of a telemetry publish holds: its readings and their
/// datapoints.
fn telemetry_part(device: &str, value: &serde_json::Value) -> (Vec<Reading>, u64) {
    let at = Instant::now();
    let entry = |v: &serde_json::Value| -> Option<Reading> {
        let o = v.as_object()?;
        match (o.get("ts").and_then(serde_json::Value::as_i64), o.get("values").and_then(|v| v.as_object())) {
            (ts, Some(values)) => Some(Reading { device: device.into(), ts, values: values.clone(), at }),
            _ => Some(Reading { device: device.into(), ts: None, values: o.clone(), at }),
        }
    };
    let readings: Vec<Reading> = match value {
        serde_json::Value::Array(entries) => entries.iter().filter_map(entry).collect(),
        other => entry(other).into_iter().collect(),
    };
    let points = readings.iter().map(|r| r.values.len() as u64).sum();
    (readings, points)
}

async fn write(socket: &mut TcpStream, packet: Packet) -> bool {
    let mut out = BytesMut::new();
    if packet.write(&mut out, MAX_PACKET).is_err() {
        return false;
    }
    socket.write_all(&out).await.is_ok()
}

/// Read the next packet; `None` when the connection ended or is not MQTT.
async fn read(socket: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Some(p),
            Err(CodecError::InsufficientBytes(_)) => {}
            Err(_) => return None,
        }
        if socket.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn tb_connection(mut socket: TcpStream, state: Arc<Mutex<TbState>>) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = BytesMut::new();
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let Some(packet) = read(&mut socket, &mut buf).await else { return };
        let publish = match packet {
            Packet::Connect(_) => {
                lock().connections += 1;
                if !write(&mut socket, Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))).await {
                    return;
                }
                continue;
            }
            Packet::Subscribe(s) => {
                let codes = s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce)).collect();
                if !write(&mut socket, Packet::SubAck(SubAck::new(s.pkid, codes))).await {
                    return;
                }
                continue;
            }
            Packet::PingReq => {
                if !write(&mut socket, Packet::PingResp).await {
                    return;
                }
                continue;
            }
            Packet::Disconnect => return,
            Packet::Publish(p) => p,
            _ => continue,
        };
        let mut answer = None;
        let (refused, refusal) = {
            let mut st = lock();
            let refusal = st.limits.refusal;
            let topic = publish.topic.as_str();
            let mut refused = false;
            if topic == "v1/gateway/telemetry" || topic == "v1/gateway/attributes" {
                let doc: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
                for (device, value) in doc.as_object().into_iter().flatten() {
                    let (readings, points) = if topic == "v1/gateway/telemetry" {
                        telemetry_part(device, value)
                    } else {
                        (Vec::new(), value.as_object().map_or(1, |o| o.len() as u64))
                    };
                    if st.gateway.telemetry(points) {
                        st.datapoints += points;
                        st.readings.extend(readings);
                    } else {
                        st.refused_parts += 1;
                        refused = true;
                    }
                }
            } else if topic == "v1/devices/me/telemetry" || topic == "v1/devices/me/attributes" {
                let doc: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
                let points = doc.as_object().map_or(1, |o| o.len() as u64);
                refused = !st.own.telemetry(points);
            } else if let Some(id) = topic.strip_prefix("v1/devices/me/rpc/request/") {
                refused = !st.own.messages.try_consume(1);
                if !refused && String::from_utf8_lossy(&publish.payload).contains("getSessionLimits") {
                    let (gateway, own) =
                        st.limits.announced.clone().unwrap_or((st.limits.gateway.clone(), st.limits.own.clone()));
                    let body = serde_json::json!({
                        "maxPayloadSize": 65536,
                        "maxInflightMessages": 100,
                        "rateLimits": own.json(),
                        "gatewayRateLimits": gateway.json(),
                    });
                    answer = Some(Publish::new(
                        format!("v1/devices/me/rpc/response/{id}"),
                        QoS::AtMostOnce,
                        body.to_string(),
                    ));
                }
            } else if topic == "v1/gateway/connect" {
                let doc: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
                let device = doc["device"].as_str().unwrap_or_default().to_owned();
                let cost = if seen.insert(device) { 2 } else { 1 };
                refused = !st.gateway.messages.try_consume(cost);
            } else if topic.starts_with("v1/gateway/") {
                refused = !st.gateway.messages.try_consume(1);
            } else {
                refused = !st.own.messages.try_consume(1);
            }
            if refused {
                st.closed_for_limits += 1;
            }
            (refused, refusal)
        };
        let ack = publish.qos == QoS::AtLeastOnce;
        if refused {
            if refusal == Refusal::PubackThenClose && ack {
                let _ = write(&mut socket, Packet::PubAck(PubAck::new(publish.pkid))).await;
                let _ = socket.flush().await;
            }
            return;
        }
        if ack && !write(&mut socket, Packet::PubAck(PubAck::new(publish.pkid))).await {
            return;
        }
        if let Some(a) = answer
            && !write(&mut socket, Packet::Publish(a)).await
        {
            return;
        }
    }
}

struct BrokerState {
    pubacks: Vec<u16>,
    subscribed: bool,
    client: Option<mpsc::UnboundedSender<Publish>>,
    next_pkid: u16,
}

/// A devices' broker for one subscriber: the test publishes QoS 1 messages
/// to it and reads back the PUBACKs in the order they came.
pub struct RecordingBroker {
    pub port: u16,
    state: Arc<Mutex<BrokerState>>,
    _runtime: tokio::runtime::Runtime,
}

impl RecordingBroker {
    pub fn start() -> RecordingBroker {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the broker");
        let state =
            Arc::new(Mutex::new(BrokerState { pubacks: Vec::new(), subscribed: false, client: None, next_pkid: 1 }));
        let listener =
            runtime.block_on(TcpListener::bind(("127.0.0.1", 0))).expect("the recording broker listens on 127.0.0.1");
        let port = listener.local_addr().expect("its port").port();
        let st = state.clone();
        runtime.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(broker_connection(socket, st.clone()));
            }
        });
        RecordingBroker { port, state, _runtime: runtime }
    }

    fn state(&self) -> MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the client subscribed.
    pub fn wait_subscribed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.state().subscribed {
            assert!(Instant::now() < deadline, "nobody subscribed to the recording broker");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send the subscriber a QoS 1 message; its packet id.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> u16 {
        let mut st = self.state();
        let pkid = st.next_pkid;
        st.next_pkid = st.next_pkid.wrapping_add(1).max(1);
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
        p.pkid = pkid;
        st.client.as_ref().expect("a subscriber").send(p).expect("the subscriber's connection");
        pkid
    }

    /// The packet ids of the PUBACKs received, in order.
    pub fn pubacks(&self) -> Vec<u16> {
        self.state().pubacks.clone()
    }
}

async fn broker_connection(mut socket: TcpStream, state: Arc<Mutex<BrokerState>>) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    let mut buf = BytesMut::new();
    loop {
        let packet = tokio::select! {
            p = read(&mut socket, &mut buf) => p,
            Some(p) = rx.recv() => {
                if !write(&mut socket, Packet::Publish(p)).await {
                    return;
                }
                continue;
            }
        };
        let reply = match packet {
            None | Some(Packet::Disconnect) => return,
            Some(Packet::Connect(_)) => {
                lock().client = Some(tx.clone());
                Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))
            }
            Some(Packet::Subscribe(s)) => {
                lock().subscribed = true;
                let codes = s.filters.iter().map(|_| SubscribeReasonCode::Success(QoS::AtLeastOnce)).collect();
                Packet::SubAck(SubAck::new(s.pkid, codes))
            }
            Some(Packet::PingReq) => Packet::PingResp,
            Some(Packet::PubAck(a)) => {
                lock().pubacks.push(a.pkid);
                continue;
            }
            Some(_) => continue,
        };
        if !write(&mut socket, reply).await {
            return;
        }
    }
}
