//! The delivery client: events from the store to ThingsBoard, removed from
//! the store only after ThingsBoard's PUBACK for every publish that carried
//! them.
//!
//! # Sessions
//!
//! Each connection is a *session* with its own rumqttc client and event
//! loop, started by a supervisor that reconnects with exponential backoff.
//! The event loop runs in a task of its own that only polls and forwards
//! what happens (connected, a publish got packet id N, PUBACK N, a message,
//! lost) over a channel; it ends with the connection. When a session ends,
//! everything it had in flight is forgotten and delivery rewinds to the
//! oldest event still stored: the store is the source of truth, so a lost
//! connection can only duplicate (at most the in-flight window), never lose.
//!
//! rumqttc's `publish` does not return the packet id. Within one session the
//! event loop takes publishes from its queue in order and reports
//! `Outgoing::Publish(pkid)` in that order, so the n-th report belongs to
//! the n-th publish of the session; a fresh session per connection keeps
//! that pairing from ever straddling a reconnect (rumqttc drops or re-sends
//! unacknowledged publishes across reconnects in ways a FIFO cannot follow).
//!
//! # Delivery
//!
//! Events are read from the store in chunks (in order), packed into as few
//! publishes as the payload limit allows ([`crate::pack`]), and sent with
//! QoS 1 within an in-flight window. A chunk is removed from the store once
//! all its publishes are acknowledged. Before a device's first data in a
//! session, the client publishes `v1/gateway/connect` for it; at the start of
//! every session it connects every device the store remembers, so that
//! ThingsBoard keeps sending them requests after a restart.
//!
//! On connect the client asks ThingsBoard for its session limits
//! (`getSessionLimits`) and applies them when the answer comes: payload size,
//! in-flight window and rate limits. Until the first answer (or its timeout)
//! nothing else is sent: a drain after an outage must not run into limits it
//! has not heard of yet. Every publish then waits for its cost in the
//! client's token buckets ([`crate::limits`]), which outlive sessions as
//! ThingsBoard's do, and no publish is packed larger than a bucket holds.
//!
//! # Refused publishes
//!
//! ThingsBoard refuses a publish over a rate limit by closing the connection:
//! since 4.2.1 right after its PUBACK (on MQTT 3.1.1 a PUBACK like any
//! other), before that without one. So a PUBACK is only *taken* as
//! delivery once it is confirmed: by a later PUBACK (the connection was not
//! closed after it), or by [`CONFIRM_AFTER`] with the connection still up.
//! A connection closed with a PUBACK unconfirmed, or right after a publish,
//! counts as a refusal: the events stay in the store and go again, the
//! buckets are emptied and the pace halved ([`crate::limits::Pacer`]), and
//! the log and the statistics say so.
//!
//! # Requests
//!
//! Each session subscribes to ThingsBoard's requests (`v1/gateway/rpc`,
//! `v1/gateway/attributes`, `v1/gateway/attributes/response`,
//! `v1/devices/me/rpc/request/+`) and to the gateway device's shared
//! attributes (`v1/devices/me/attributes`, and the answer to the request for
//! `RemoteLoggingLevel` it makes at every connection on
//! `v1/devices/me/attributes/response/+`), and hands every one, untouched, to the
//! gateway's router through [`ClientHandle::take_requests`]. What the router
//! answers, and what devices announce (connect, disconnect), goes out through
//! [`ClientHandle::send`]: those publishes are not stored, since a reply is
//! worthless once ThingsBoard has given up on it. The devices ThingsBoard
//! knows through this gateway are kept in a [`DeviceRegistry`] (and in the
//! store), which is what routes a request to its connector.

use crate::config::{ClientConfig, Credentials};
use crate::limits::{Cost, LimitsSource, Pacer, PacerStatus, Scope, SessionLimits};
use crate::pack::{self, ATTRIBUTES_TOPIC, PublishLimits, TELEMETRY_TOPIC};
use crate::quickack::AckAtOnce;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tbgw_core::downlink::DeviceRegistry;
use tbgw_core::{DeviceRecord, Event as StoredEvent};
use tbgw_store::{EventStore, Seq, StoreError};
use tbgw_tls::rustls;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CONNECT_TOPIC: &str = "v1/gateway/connect";
const DISCONNECT_TOPIC: &str = "v1/gateway/disconnect";
/// What ThingsBoard sends the gateway: requests for child devices, answers
/// to attribute requests, RPCs to the gateway itself, the gateway device's
/// shared attributes and the answers to its requests for them.
const REQUEST_FILTERS: [&str; 6] = [
    "v1/gateway/rpc",
    "v1/gateway/attributes",
    "v1/gateway/attributes/response",
    "v1/devices/me/rpc/request/+",
    OWN_ATTRIBUTES_TOPIC,
    "v1/devices/me/attributes/response/+",
];
/// The gateway device's shared attributes asked for at every connection
/// (the router applies them).
const OWN_SHARED_KEYS: &str = "RemoteLoggingLevel";
const OWN_ATTRIBUTES_REQUEST_PREFIX: &str = "v1/devices/me/attributes/request/";
const OWN_TELEMETRY_TOPIC: &str = "v1/devices/me/telemetry";
const OWN_ATTRIBUTES_TOPIC: &str = "v1/devices/me/attributes";
const RPC_RESPONSE_FILTER: &str = "v1/devices/me/rpc/response/+";
const RPC_RESPONSE_PREFIX: &str = "v1/devices/me/rpc/response/";
const RPC_REQUEST_PREFIX: &str = "v1/devices/me/rpc/request/";
/// How long a PUBACK must stand (the connection up, no later PUBACK) before
/// it counts as delivery: ThingsBoard closes the connection right after the
/// PUBACK of a publish it refused.
pub const CONFIRM_AFTER: Duration = Duration::from_millis(500);

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ThingsBoard TLS settings: {0}")]
    Tls(#[from] tbgw_tls::TlsError),
    #[error("the ThingsBoard client id must not be empty")]
    ClientId,
}

/// Counters of the client, for statistics.
#[derive(Debug)]
pub struct ClientStats {
    connected: AtomicBool,
    sessions: AtomicU64,
    publishes: AtomicU64,
    pubacks: AtomicU64,
    delivered: AtomicU64,
    oversized: AtomicU64,
    per_connector: Mutex<HashMap<String, u64>>,
    last_error: Mutex<Option<String>>,
    pacer: Mutex<PacerStatus>,
    /// (since, events delivered since, the smoothed rate).
    rate: Mutex<(Instant, u64, f64)>,
}

impl Default for ClientStats {
    fn default() -> Self {
        ClientStats {
            connected: AtomicBool::default(),
            sessions: AtomicU64::default(),
            publishes: AtomicU64::default(),
            pubacks: AtomicU64::default(),
            delivered: AtomicU64::default(),
            oversized: AtomicU64::default(),
            per_connector: Mutex::default(),
            last_error: Mutex::default(),
            pacer: Mutex::default(),
            rate: Mutex::new((Instant::now(), 0, 0.0)),
        }
    }
}

/// How often the delivery rate is measured.
const RATE_EVERY: Duration = Duration::from_secs(2);

impl ClientStats {
    fn count_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        r.1 += n;
        let elapsed = r.0.elapsed();
        if elapsed >= RATE_EVERY {
            let now = r.1 as f64 / elapsed.as_secs_f64();
            // Smoothed, but a first measure or one after a pause stands alone.
            r.2 = if r.2 == 0.0 || elapsed > RATE_EVERY * 3 { now } else { 0.5 * r.2 + 0.5 * now };
            *r = (Instant::now(), 0, r.2);
        }
    }

    /// Events delivered per second lately (0 when none came for a while).
    fn delivery_rate(&self) -> f64 {
        let r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if r.0.elapsed() > RATE_EVERY * 3 { 0.0 } else { r.2 }
    }
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStatsSnapshot {
    pub connected: bool,
    /// Connections made since start.
    pub sessions: u64,
    pub publishes: u64,
    pub pubacks: u64,
    /// Events acknowledged by ThingsBoard (and removed from the store).
    pub delivered: u64,
    /// Values dropped because no publish could hold them.
    pub oversized: u64,
    pub delivered_per_connector: HashMap<String, u64>,
    pub last_error: Option<String>,
    /// The rate limits in force, the pace, and the publishes ThingsBoard
    /// refused.
    pub pacer: PacerStatus,
    /// Events delivered per second lately (a drain's speed).
    pub delivery_rate: f64,
}

impl ClientStats {
    /// Whether a session is up now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> ClientStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStatsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            sessions: get(&self.sessions),
            publishes: get(&self.publishes),
            pubacks: get(&self.pubacks),
            delivered: get(&self.delivered),
            oversized: get(&self.oversized),
            delivered_per_connector: self.per_connector.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            pacer: self.pacer.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            delivery_rate: self.delivery_rate(),
        }
    }
}

/// A handle on the running client.
pub struct ClientHandle {
    stats: Arc<ClientStats>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    registry: Arc<DeviceRegistry>,
    requests: Option<mpsc::UnboundedReceiver<Incoming>>,
}

/// A message ThingsBoard sent the gateway (a request, or an answer to one
/// of the gateway's requests), as received.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Something for the client to send that does not come from the store.
#[derive(Debug)]
pub enum Command {
    /// The gateway's own telemetry (statistics).
    OwnTelemetry(String),
    /// A publish as it is: an RPC reply, an attribute request.
    Publish { topic: String, payload: Vec<u8> },
    /// A device announced itself: remember it (in the registry and the
    /// store) and publish `v1/gateway/connect`.
    Connect { device: String, device_type: Option<String>, connector: String },
    /// A device left: forget it and publish `v1/gateway/disconnect`.
    Disconnect { device: String },
    /// ThingsBoard deleted the device (`gateway_device_deleted`): forget it,
    /// so that its next data connects it again (and ThingsBoard creates it
    /// anew), as the Python gateway does.
    Forget { device: String },
    /// The registry's record of `device` changed (renamed in ThingsBoard,
    /// `gateway_device_renamed`): keep it across restarts.
    Remember { device: String },
}

/// Why [`ClientHandle::send`] did not take a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("too many messages are waiting for ThingsBoard")]
    Full,
    #[error("the ThingsBoard client has stopped")]
    Stopped,
}

impl ClientHandle {
    pub fn stats(&self) -> ClientStatsSnapshot {
        self.stats.snapshot()
    }

    /// The live counters, for a task that outlives borrows of the handle.
    pub fn shared_stats(&self) -> Arc<ClientStats> {
        self.stats.clone()
    }

    /// Publish the gateway's own telemetry (statistics). Dropped when the
    /// client is not connected or is busy: statistics are not stored.
    pub fn own_telemetry(&self, payload: String) -> bool {
        self.commands.try_send(Command::OwnTelemetry(payload)).is_ok()
    }

    /// Hand the client something to send. Commands wait while ThingsBoard
    /// is away, up to a bound; past it they are refused, not queued without
    /// end.
    pub fn send(&self, command: Command) -> Result<(), SendError> {
        send(&self.commands, command)
    }

    /// A sender of commands that outlives borrows of the handle.
    pub fn sender(&self) -> CommandSender {
        CommandSender(self.commands.clone())
    }

    /// ThingsBoard's requests, for the router (once; `None` after).
    pub fn take_requests(&mut self) -> Option<mpsc::UnboundedReceiver<Incoming>> {
        self.requests.take()
    }

    /// The devices ThingsBoard knows through this gateway.
    pub fn registry(&self) -> Arc<DeviceRegistry> {
        self.registry.clone()
    }

    /// Wait for the client to stop (after the shutdown token was cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// A clonable way to hand the client commands (see [`ClientHandle::send`]).
#[derive(Clone)]
pub struct CommandSender(mpsc::Sender<Command>);

impl CommandSender {
    /// A sender to a receiver of the caller's (a test standing in for the
    /// client).
    pub fn new(commands: mpsc::Sender<Command>) -> CommandSender {
        CommandSender(commands)
    }

    pub fn send(&self, command: Command) -> Result<(), SendError> {
        send(&self.0, command)
    }
}

fn send(commands: &mpsc::Sender<Command>, command: Command) -> Result<(), SendError> {
    commands.try_send(command).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => SendError::Full,
        mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
    })
}

/// Commands waiting for the client (replies, announcements, statistics).
const COMMAND_QUEUE: usize = 8192;

/// Start delivering from `store`. `new_data` is notified by whoever appends
/// to the store; `shutdown` stops the client after it waited for publishes
/// in flight (at most `shutdown_grace`).
pub fn spawn(
    config: ClientConfig,
    store: Arc<dyn EventStore>,
    new_data: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<ClientHandle, ClientError> {
    if config.client_id.is_empty() {
        return Err(ClientError::ClientId);
    }
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(tbgw_tls::client_config(files)?)),
        None => None,
    };
    let stats = Arc::new(ClientStats::default());
    let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
    let (requests_tx, requests) = mpsc::unbounded_channel();
    let registry = Arc::new(DeviceRegistry::default());
    let delivery = Delivery::new(store, stats.clone(), config.read_batch, registry.clone(), requests_tx);
    let task = tokio::spawn(supervise(config, tls, delivery, rx, new_data, shutdown));
    Ok(ClientHandle { stats, commands, task, registry, requests: Some(requests) })
}

/// What ended a session.
enum SessionEnd {
    Shutdown,
    Lost { connected: bool, reason: String },
}

async fn supervise(
    config: ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut delivery: Delivery,
    mut commands: mpsc::Receiver<Command>,
    new_data: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let target = format!("{}:{}", config.host, config.port);
    let mut backoff = config.reconnect_min;
    let mut failures = 0u64;
    let mut pacer = Pacer::configured(config.gateway_limits.clone(), config.own_limits.clone());
    delivery.show(&mut pacer);
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let end =
            run_session(&config, tls.clone(), &mut delivery, &mut pacer, &mut commands, &new_data, &shutdown).await;
        delivery.stats.connected.store(false, Ordering::Relaxed);
        // What was delivered leaves the store before delivery starts again
        // from the oldest stored event (or it would go twice).
        delivery.settle().await;
        delivery.rewind();
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost { connected, reason } => {
                *delivery.stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
                if connected {
                    tracing::warn!("lost the connection to ThingsBoard at {target}: {reason}; reconnecting");
                    failures = 0;
                    backoff = config.reconnect_min;
                } else {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!("cannot connect to ThingsBoard at {target}: {reason}; retrying");
                    } else {
                        tracing::debug!("connecting to ThingsBoard at {target} failed again ({failures}): {reason}");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(config.reconnect_max);
    }
    tracing::info!("ThingsBoard client stopped");
}

/// What the event loop task reports.
enum LoopEvent {
    Connected,
    Sent(u16),
    Acked(u16),
    Message(rumqttc::Publish),
    /// The connection ended: why, and whether the peer closed it (an end
    /// of stream or a reset, as ThingsBoard's close after a refused publish
    /// looks) rather than a timeout or a local error.
    Lost(String, bool),
}

/// Drive one connection's event loop; report everything, end with it.
/// After each read, ACK what came at once ([`crate::quickack`]).
async fn drive(mut eventloop: EventLoop, port: u16, tx: mpsc::UnboundedSender<LoopEvent>) {
    let mut quick = AckAtOnce::new(port);
    loop {
        let polled = eventloop.poll().await;
        if !quick.polled(&eventloop, &polled) && matches!(polled, Ok(Event::Incoming(Packet::ConnAck(_)))) {
            tracing::debug!("the connection's socket was not found: its ACKs are the kernel's delayed ones");
        }
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => LoopEvent::Connected,
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LoopEvent::Sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => LoopEvent::Acked(ack.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) => LoopEvent::Message(p),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                LoopEvent::Lost(format!("packet id {pkid} collided with an unacknowledged publish"), false)
            }
            Ok(_) => continue,
            Err(e) => LoopEvent::Lost(describe(&e), closed_by_peer(&e)),
        };
        let last = matches!(event, LoopEvent::Lost(..));
        if tx.send(event).is_err() || last {
            return;
        }
    }
}

fn closed_by_peer(e: &ConnectionError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let io = |e: &std::io::Error| matches!(e.kind(), ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe);
    match e {
        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => true,
        ConnectionError::MqttState(rumqttc::StateError::Io(e)) | ConnectionError::Io(e) => io(e),
        _ => false,
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("ThingsBoard refused the connection ({code:?}): check the credentials in thingsboard.security")
        }
        other => other.to_string(),
    }
}

fn mqtt_options(config: &ClientConfig, tls: Option<Arc<rustls::ClientConfig>>) -> MqttOptions {
    let mut opts = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    opts.set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        // Room for the window, control messages, and ThingsBoard's requests.
        .set_inflight(u16::try_from(config.max_inflight + 32).unwrap_or(u16::MAX))
        .set_max_packet_size(16 << 20, config.max_payload_bytes + 4096)
        .set_request_channel_capacity(config.max_inflight * 2 + 64);
    match &config.credentials {
        Credentials::AccessToken(token) => {
            opts.set_credentials(token.expose(), "");
        }
        Credentials::Basic { username, password } => {
            opts.set_credentials(
                username.clone().unwrap_or_default(),
                password.as_ref().map(|p| p.expose().to_owned()).unwrap_or_default(),
            );
        }
        Credentials::None => {}
    }
    if let Some(tls) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    }
    opts
}

/// One publish to make.
struct OutItem {
    topic: String,
    payload: Vec<u8>,
    tag: Tag,
    cost: Cost,
}

#[derive(Clone, Copy, Debug)]
enum Tag {
    Chunk(u64),
    Control,
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    config: &ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    delivery: &mut Delivery,
    pacer: &mut Pacer,
    commands: &mut mpsc::Receiver<Command>,
    new_data: &Notify,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(config, tls), config.max_inflight * 2 + 64);
    eventloop.network_options.set_connection_timeout(10);
    // Replies and small publishes go out at once (Nagle's algorithm would
    // hold them for the previous segment's ACK: tens of ms per RPC); the
    // event loop already writes what is queued together.
    eventloop.network_options.set_tcp_nodelay(true);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = AbortOnDrop(tokio::spawn(drive(eventloop, config.port, tx)));

    let first = tokio::select! {
        ev = rx.recv() => ev,
        _ = shutdown.cancelled() => return SessionEnd::Shutdown,
    };
    match first {
        Some(LoopEvent::Connected) => {}
        Some(LoopEvent::Lost(reason, _)) => return SessionEnd::Lost { connected: false, reason },
        None | Some(_) => {
            return SessionEnd::Lost { connected: false, reason: "the MQTT event loop ended before connecting".into() };
        }
    }
    let stats = delivery.stats.clone();
    stats.connected.store(true, Ordering::Relaxed);
    let session_no = stats.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(session = session_no, "connected to ThingsBoard at {}:{}", config.host, config.port);

    let mut s = Session {
        client,
        awaiting: VecDeque::new(),
        by_pkid: HashMap::new(),
        outbox: VecDeque::new(),
        connected_devices: HashSet::new(),
        window: config.max_inflight.max(1),
        max_payload: config.max_payload_bytes,
        limits_request: None,
        next_rpc_id: 1,
        unconfirmed: Vec::new(),
        last_puback: None,
        last_publish: None,
        closed_by_peer: false,
    };
    let filters = std::iter::once(RPC_RESPONSE_FILTER)
        .chain(REQUEST_FILTERS)
        .map(|f| rumqttc::SubscribeFilter::new(f.to_owned(), QoS::AtLeastOnce));
    if let Err(e) = s.client.subscribe_many(filters).await {
        return SessionEnd::Lost { connected: true, reason: format!("subscribing failed: {e}") };
    }
    let id = s.next_rpc_id;
    s.next_rpc_id += 1;
    s.limits_request = Some((id, Instant::now()));
    s.outbox.push_back(OutItem {
        topic: format!("{RPC_REQUEST_PREFIX}{id}"),
        payload: br#"{"method":"getSessionLimits","params":{"timeout":5000}}"#.to_vec(),
        tag: Tag::Control,
        cost: Cost::messages(Scope::Own, 1),
    });
    // The gateway's shared attributes, as the Python gateway asks for them.
    s.outbox.push_back(OutItem {
        topic: format!("{OWN_ATTRIBUTES_REQUEST_PREFIX}{session_no}"),
        payload: format!(r#"{{"sharedKeys":"{OWN_SHARED_KEYS}"}}"#).into_bytes(),
        tag: Tag::Control,
        cost: Cost::messages(Scope::Own, 1),
    });
    // Until ThingsBoard has answered once, a session waits for its limits
    // before anything else.
    let mut hold_for_limits = pacer.source() != LimitsSource::ThingsBoard;
    let mut shown = Instant::now();
    // Connect every device ThingsBoard knows through us, so that its
    // requests reach us again.
    for (name, record) in delivery.registry.snapshot() {
        s.outbox.push_back(connect_item(&name, record.device_type.as_deref()));
        s.connected_devices.insert(name);
    }

    let mut store_empty = false;
    loop {
        if let Some((_, sent)) = s.limits_request
            && sent.elapsed() > config.session_limits_timeout
        {
            tracing::info!("ThingsBoard sent no session limits; going on with the configured ones");
            s.limits_request = None;
        }
        if hold_for_limits && s.limits_request.is_none() {
            hold_for_limits = false;
            delivery.show(pacer);
        }
        // Refill from the store when there is nothing else to send.
        // Not before ThingsBoard's limits are known: they decide how large
        // a publish may be.
        if s.outbox.is_empty()
            && !store_empty
            && !hold_for_limits
            && s.inflight() < s.window
            && !shutdown.is_cancelled()
        {
            let (max_devices, max_datapoints) = pacer.largest_publish(Scope::Gateway, Instant::now());
            let limits = PublishLimits {
                max_bytes: s.max_payload,
                max_devices: max_devices.map_or(usize::MAX, |n| n as usize),
                max_datapoints: max_datapoints.map_or(usize::MAX, |n| n as usize),
            };
            match delivery.next_chunk(&mut s, limits).await {
                Ok(true) => {}
                Ok(false) => store_empty = true,
                Err(e) => {
                    tracing::error!("reading the event store failed: {e}");
                    store_empty = true;
                }
            }
        }
        let can_send = s.outbox.front().is_some_and(|item| {
            !hold_for_limits
                || (s.awaiting.is_empty() && s.by_pkid.is_empty() && item.topic.starts_with(RPC_REQUEST_PREFIX))
        }) && s.inflight() < s.window;
        let rate_wait =
            if can_send { s.outbox.front().and_then(|item| pacer.wait(&item.cost, Instant::now())) } else { None };
        let send_now = can_send && rate_wait.is_none();
        let confirm_at = s.last_puback.filter(|_| !s.unconfirmed.is_empty()).map(|t| t + CONFIRM_AFTER);
        let limits_due = s.limits_request.map(|(_, sent)| sent + config.session_limits_timeout);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                s.drain(&mut rx, delivery, pacer, config.shutdown_grace).await;
                let _ = s.client.disconnect().await;
                drop(driver);
                return SessionEnd::Shutdown;
            }
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    return SessionEnd::Lost { connected: true, reason: "the MQTT event loop ended".into() };
                };
                if let Err(reason) = s.handle(ev, delivery, pacer).await {
                    s.lost(delivery, pacer);
                    return SessionEnd::Lost { connected: true, reason };
                }
            }
            _ = tokio::time::sleep_until(confirm_at.unwrap_or_else(Instant::now).into()), if confirm_at.is_some() => {
                s.confirm(delivery);
            }
            _ = tokio::time::sleep_until(limits_due.unwrap_or_else(Instant::now).into()), if limits_due.is_some() => {}
            Some(cmd) = commands.recv() => {
                let own_points = pacer.largest_publish(Scope::Own, Instant::now()).1;
                delivery.command(cmd, &mut s, own_points).await
            }
            _ = std::future::ready(()), if send_now => {
                if let Some(item) = s.outbox.pop_front() {
                    pacer.take(&item.cost);
                    let now = Instant::now();
                    // The status's view of the buckets, once a second at most.
                    if now.duration_since(shown) >= Duration::from_secs(1) {
                        delivery.show(pacer);
                        shown = now;
                    }
                    s.last_publish = Some(now);
                    let tag = item.tag;
                    if let Err(e) = s.client.publish(item.topic, QoS::AtLeastOnce, false, item.payload).await {
                        return SessionEnd::Lost { connected: true, reason: format!("publish failed: {e}") };
                    }
                    stats.publishes.fetch_add(1, Ordering::Relaxed);
                    s.awaiting.push_back(tag);
                }
            }
            _ = tokio::time::sleep(rate_wait.unwrap_or_default()), if rate_wait.is_some() => {}
            _ = new_data.notified(), if store_empty => store_empty = false,
            _ = tokio::time::sleep(Duration::from_secs(1)), if store_empty => store_empty = false,
        }
    }
}

struct Session {
    client: AsyncClient,
    /// Publishes handed to the event loop, not yet given a packet id, in order.
    awaiting: VecDeque<Tag>,
    /// Publishes sent, waiting for their PUBACK.
    by_pkid: HashMap<u16, Tag>,
    outbox: VecDeque<OutItem>,
    connected_devices: HashSet<String>,
    window: usize,
    max_payload: usize,
    limits_request: Option<(u64, Instant)>,
    next_rpc_id: u64,
    /// Chunks whose publishes' PUBACKs came, not confirmed yet (see
    /// [`CONFIRM_AFTER`]), one entry per PUBACK.
    unconfirmed: Vec<u64>,
    last_puback: Option<Instant>,
    last_publish: Option<Instant>,
    /// The connection ended by the peer's close (see [`LoopEvent::Lost`]).
    closed_by_peer: bool,
}

impl Session {
    fn inflight(&self) -> usize {
        self.awaiting.len() + self.by_pkid.len()
    }

    async fn handle(&mut self, ev: LoopEvent, delivery: &mut Delivery, pacer: &mut Pacer) -> Result<(), String> {
        match ev {
            LoopEvent::Sent(pkid) => {
                let tag = self.awaiting.pop_front().ok_or("the event loop sent a publish the client did not make")?;
                if self.by_pkid.insert(pkid, tag).is_some() {
                    return Err(format!("packet id {pkid} reused before its PUBACK"));
                }
            }
            LoopEvent::Acked(pkid) => {
                if let Some(tag) = self.by_pkid.remove(&pkid) {
                    delivery.stats.pubacks.fetch_add(1, Ordering::Relaxed);
                    // A later PUBACK: the connection outlived the earlier ones.
                    self.confirm(delivery);
                    if let Tag::Chunk(id) = tag {
                        self.unconfirmed.push(id);
                        self.last_puback = Some(Instant::now());
                    }
                }
            }
            LoopEvent::Message(p) => self.message(p, pacer, delivery),
            LoopEvent::Lost(reason, by_peer) => {
                self.closed_by_peer = by_peer;
                return Err(reason);
            }
            LoopEvent::Connected => {}
        }
        Ok(())
    }

    /// The PUBACKs that came stand: their chunks are delivered.
    fn confirm(&mut self, delivery: &mut Delivery) {
        for id in std::mem::take(&mut self.unconfirmed) {
            delivery.published(id);
        }
    }

    /// The connection is gone. If ThingsBoard closed it right after a
    /// PUBACK or a publish, it most likely refused a publish: slow down.
    /// (A timeout or a local error is not a refusal.) What was not
    /// confirmed goes again either way (the supervisor rewinds).
    fn lost(&mut self, delivery: &Delivery, pacer: &mut Pacer) {
        let now = Instant::now();
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < CONFIRM_AFTER);
        let after_puback = !self.unconfirmed.is_empty() && recent(self.last_puback);
        let after_publish = self.inflight() > 0 && recent(self.last_publish);
        if self.closed_by_peer && (after_puback || after_publish) {
            let pace = pacer.refused(now);
            let how = match pacer.source() {
                LimitsSource::None => "no rate limits are known to slow down by: ThingsBoard announced none and \
                                       the config sets none (thingsboard.deviceRateLimits, deviceDpRateLimits)"
                    .to_owned(),
                _ => format!("now at {:.0}% of the limits", pace * 100.0),
            };
            tracing::warn!(
                unconfirmed = self.unconfirmed.len(),
                in_flight = self.inflight(),
                "ThingsBoard closed the connection right after a publish: most likely a rate limit refused it; \
                 its events stay stored and go again; {how}"
            );
            delivery.show(pacer);
        }
        self.unconfirmed.clear();
    }

    fn message(&mut self, p: rumqttc::Publish, pacer: &mut Pacer, delivery: &Delivery) {
        let id = p.topic.strip_prefix(RPC_RESPONSE_PREFIX).and_then(|id| id.parse::<u64>().ok());
        if id.is_none() || self.limits_request.map(|(r, _)| r) != id {
            if id.is_none() {
                // A request: the router's.
                let _ = delivery.incoming.send(Incoming { topic: p.topic, payload: p.payload.to_vec() });
            }
            return;
        }
        self.limits_request = None;
        match SessionLimits::parse(&p.payload) {
            Ok(limits) => {
                if let Some(max) = limits.max_payload_bytes {
                    self.max_payload = self.max_payload.min(max);
                }
                if let Some(max) = limits.max_inflight {
                    self.window = self.window.min(max).max(1);
                }
                pacer.adopt(&limits);
                delivery.show(pacer);
                tracing::info!(
                    max_payload = self.max_payload,
                    window = self.window,
                    devices = limits.gateway.is_limited(),
                    own = limits.own.is_limited(),
                    "applied ThingsBoard's session limits"
                );
            }
            Err(e) => {
                tracing::warn!("ThingsBoard's session limits are unusable ({e}); going on with the configured ones")
            }
        }
    }

    /// Shutting down: take no new work, wait for what is in flight, and
    /// for its PUBACKs to stand.
    async fn drain(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<LoopEvent>,
        delivery: &mut Delivery,
        pacer: &mut Pacer,
        grace: Duration,
    ) {
        self.outbox.clear();
        let deadline = tokio::time::Instant::now() + grace;
        let mut lost = false;
        while self.inflight() > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => {
                    if self.handle(ev, delivery, pacer).await.is_err() {
                        lost = true;
                        break;
                    }
                }
                _ => break,
            }
        }
        if lost {
            self.lost(delivery, pacer);
        } else if !self.unconfirmed.is_empty() {
            let stand = tokio::time::Instant::now() + CONFIRM_AFTER;
            loop {
                match tokio::time::timeout_at(stand, rx.recv()).await {
                    Ok(Some(ev)) => {
                        // Late PUBACKs count; a loss ends the wait.
                        if self.handle(ev, delivery, pacer).await.is_err() {
                            lost = true;
                            break;
                        }
                    }
                    Ok(None) => {
                        lost = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if lost {
                self.lost(delivery, pacer);
            } else {
                self.confirm(delivery);
            }
        }
        if self.inflight() > 0 {
            tracing::warn!(
                "stopping with {} publishes unacknowledged; their events stay stored and go again at the next start",
                self.inflight()
            );
        }
    }
}

fn connect_item(device: &str, device_type: Option<&str>) -> OutItem {
    let mut payload = format!("{{\"device\":{}", pack::json_string(device));
    if let Some(t) = device_type {
        payload.push_str(",\"type\":");
        payload.push_str(&pack::json_string(t));
    }
    payload.push('}');
    // A device's first appearance in a session costs ThingsBoard two messages.
    OutItem {
        topic: CONNECT_TOPIC.into(),
        payload: payload.into_bytes(),
        tag: Tag::Control,
        cost: Cost::messages(Scope::Gateway, 2),
    }
}

fn control(topic: impl Into<String>, payload: Vec<u8>) -> OutItem {
    let topic = topic.into();
    let scope = Scope::of(&topic);
    let telemetry = [OWN_TELEMETRY_TOPIC, OWN_ATTRIBUTES_TOPIC, TELEMETRY_TOPIC, ATTRIBUTES_TOPIC];
    let cost = if telemetry.contains(&topic.as_str()) {
        let (parts, datapoints) = telemetry_cost(&topic, &payload);
        Cost::telemetry(scope, parts, datapoints)
    } else {
        Cost::messages(scope, 1)
    };
    OutItem { topic, payload, tag: Tag::Control, cost }
}

/// A JSON object in pieces of at most `most` keys (anything else whole): a
/// publish with more datapoints than a bucket holds could never pass.
fn split_keys(payload: String, most: usize) -> Vec<String> {
    let Ok(serde_json::Value::Object(all)) = serde_json::from_str::<serde_json::Value>(&payload) else {
        return vec![payload];
    };
    if all.len() <= most.max(1) {
        return vec![payload];
    }
    let mut pieces = vec![serde_json::Map::new()];
    for (k, v) in all {
        if pieces.last().is_some_and(|p| p.len() >= most.max(1)) {
            pieces.push(serde_json::Map::new());
        }
        if let Some(p) = pieces.last_mut() {
            p.insert(k, v);
        }
    }
    pieces.into_iter().map(|p| serde_json::Value::Object(p).to_string()).collect()
}

/// Device parts and datapoints of a telemetry or attributes publish made
/// elsewhere (statistics, a router's publish), as ThingsBoard counts them.
fn telemetry_cost(topic: &str, payload: &[u8]) -> (usize, usize) {
    fn points(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(entries) => entries.iter().map(points).sum(),
            serde_json::Value::Object(o) => match o.get("values") {
                Some(serde_json::Value::Object(values)) => values.len(),
                _ => o.len(),
            },
            _ => 1,
        }
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(payload) else { return (1, 1) };
    match (topic.starts_with("v1/gateway/"), &doc) {
        (true, serde_json::Value::Object(devices)) => (devices.len().max(1), devices.values().map(points).sum()),
        _ => (1, points(&doc)),
    }
}

/// Delivery state that outlives sessions.
struct Delivery {
    store: Arc<dyn EventStore>,
    stats: Arc<ClientStats>,
    read_batch: usize,
    /// Where the next read starts; `None`: at the oldest stored event.
    next_read: Option<Seq>,
    chunks: HashMap<u64, Chunk>,
    next_chunk_id: u64,
    /// Devices ThingsBoard knows through us (mirrors the store's).
    registry: Arc<DeviceRegistry>,
    loaded_known: bool,
    /// ThingsBoard's requests, to the router.
    incoming: mpsc::UnboundedSender<Incoming>,
    removals: Arc<Removals>,
    /// The task removing delivered chunks, if one was started.
    remover: Option<JoinHandle<()>>,
}

struct Chunk {
    seqs: Range<Seq>,
    publishes_left: usize,
    per_connector: Vec<(String, u64)>,
}

impl Delivery {
    fn new(
        store: Arc<dyn EventStore>,
        stats: Arc<ClientStats>,
        read_batch: usize,
        registry: Arc<DeviceRegistry>,
        incoming: mpsc::UnboundedSender<Incoming>,
    ) -> Self {
        Delivery {
            store,
            stats,
            read_batch: read_batch.max(1),
            next_read: None,
            chunks: HashMap::new(),
            next_chunk_id: 0,
            registry,
            loaded_known: false,
            incoming,
            removals: Arc::default(),
            remover: None,
        }
    }

    /// Publish the pacer's state in the statistics.
    fn show(&self, pacer: &mut Pacer) {
        *self.stats.pacer.lock().unwrap_or_else(|e| e.into_inner()) = pacer.status(Instant::now());
    }

    /// Carry out a command of the gateway's. `own_points`: the most
    /// datapoints one publish of the gateway's own may carry.
    async fn command(&mut self, cmd: Command, s: &mut Session, own_points: Option<u64>) {
        match cmd {
            Command::OwnTelemetry(payload) => {
                let most = own_points.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
                for piece in split_keys(payload, most) {
                    s.outbox.push_back(control(OWN_TELEMETRY_TOPIC, piece.into_bytes()));
                }
            }
            Command::Publish { topic, payload } => s.outbox.push_back(control(topic, payload)),
            Command::Connect { device, device_type, connector } => {
                self.load_known(s).await;
                let record = DeviceRecord { device_type: device_type.clone(), connector, renamed: None };
                if self.registry.put(&device, record) {
                    self.persist(&device).await;
                }
                let shown = self.registry.renamed(&device).unwrap_or_else(|| device.clone());
                s.outbox.push_back(connect_item(&shown, device_type.as_deref()));
                s.connected_devices.insert(device);
            }
            Command::Disconnect { device } => {
                self.load_known(s).await;
                let shown = self.registry.renamed(&device).unwrap_or_else(|| device.clone());
                self.forget(&device, s).await;
                let payload = format!("{{\"device\":{}}}", pack::json_string(&shown));
                s.outbox.push_back(control(DISCONNECT_TOPIC, payload.into_bytes()));
            }
            Command::Forget { device } => self.forget(&device, s).await,
            Command::Remember { device } => self.persist(&device).await,
        }
    }

    /// Keep the registry's record of `device` in the store.
    async fn persist(&self, device: &str) {
        let Some(record) = self.registry.get(device) else { return };
        let name = device.to_owned();
        if let Err(e) = self.blocking(move |st| st.put_device(&name, &record)).await {
            tracing::error!(device, "remembering a device failed: {e}");
        }
    }

    /// Forget a device: the registry, the store, this session.
    async fn forget(&mut self, device: &str, s: &mut Session) {
        self.load_known(s).await;
        if self.registry.remove(device).is_some() {
            let name = device.to_owned();
            if let Err(e) = self.blocking(move |st| st.remove_device(&name)).await {
                tracing::error!(device, "forgetting a device failed: {e}");
            }
        }
        s.connected_devices.remove(device);
    }

    /// The devices the store remembers, once per process; each connected in
    /// this session.
    async fn load_known(&mut self, s: &mut Session) {
        if self.loaded_known {
            return;
        }
        match self.blocking(|st| st.devices()).await {
            Ok(devices) => {
                self.loaded_known = true;
                for (name, record) in devices {
                    if s.connected_devices.insert(name.clone()) {
                        let shown = record.renamed.as_deref().unwrap_or(&name);
                        s.outbox.push_back(connect_item(shown, record.device_type.as_deref()));
                    }
                    self.registry.put(&name, record);
                }
            }
            Err(e) => tracing::error!("reading the connected devices from the store failed: {e}"),
        }
    }

    /// After a session: everything in flight is forgotten and goes again.
    fn rewind(&mut self) {
        self.next_read = None;
        self.chunks.clear();
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn EventStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
    }

    /// Read the next chunk and queue its publishes; false when the store
    /// has nothing more.
    async fn next_chunk(&mut self, s: &mut Session, limits: PublishLimits) -> Result<bool, StoreError> {
        self.load_known(s).await;
        let from = match self.next_read {
            Some(seq) => seq,
            None => {
                let stats = self.store.stats();
                stats.first_seq.unwrap_or(stats.next_seq)
            }
        };
        let max = self.read_batch;
        // What was just stored is read on the spot (from memory, no wait for
        // the disk: a thread hop would cost more than the read); a backlog
        // off the runtime's threads.
        let waiting = self.store.stats().next_seq.saturating_sub(from);
        let mut events: Vec<(Seq, StoredEvent)> = if waiting <= INLINE_READ {
            self.store.read(from, max)?
        } else {
            self.blocking(move |st| st.read(from, max)).await?
        };
        let (Some(first), Some(last)) = (events.first().map(|e| e.0), events.last().map(|e| e.0)) else {
            return Ok(false);
        };
        self.next_read = Some(last + 1);
        tracing::debug!(from, first, last, events = events.len(), "read a chunk from the store");

        // New devices: remember them, and connect them before their data.
        let mut new_records = Vec::new();
        for (_, e) in &events {
            let u = &e.update;
            let record =
                DeviceRecord { device_type: u.device_type.clone(), connector: e.connector.clone(), renamed: None };
            if self.registry.put(&u.device, record) {
                new_records.extend(self.registry.get(&u.device).map(|r| (u.device.clone(), r)));
            }
            if s.connected_devices.insert(u.device.clone()) {
                let shown = self.registry.renamed(&u.device).unwrap_or_else(|| u.device.clone());
                s.outbox.push_back(connect_item(&shown, u.device_type.as_deref()));
            }
        }
        if !new_records.is_empty() {
            self.blocking(move |st| {
                for (name, record) in &new_records {
                    st.put_device(name, record)?;
                }
                Ok(())
            })
            .await?;
        }

        // Devices renamed in ThingsBoard: their data under the new name.
        if self.registry.any_renamed() {
            for (_, e) in &mut events {
                if let Some(shown) = self.registry.renamed(&e.update.device) {
                    e.update.device = shown;
                }
            }
        }
        let (docs, oversized) = pack::pack(events.iter().map(|(_, e)| e), limits);
        for o in &oversized {
            tracing::error!(device = %o.device, key = %o.key, "dropping a value of {} bytes: larger than any publish may be", o.bytes);
        }
        self.stats.oversized.fetch_add(oversized.len() as u64, Ordering::Relaxed);
        let mut per_connector: Vec<(String, u64)> = Vec::new();
        for (_, e) in &events {
            // A merged event counts the updates it carries.
            let n = u64::from(e.updates);
            match per_connector.iter_mut().find(|(c, _)| *c == e.connector) {
                Some((_, count)) => *count += n,
                None => per_connector.push((e.connector.clone(), n)),
            }
        }
        let id = self.next_chunk_id;
        self.next_chunk_id += 1;
        self.chunks.insert(id, Chunk { seqs: first..last + 1, publishes_left: docs.len(), per_connector });
        if docs.is_empty() {
            // Nothing to send (updates without values): done already.
            self.complete(id);
        }
        for doc in docs {
            s.outbox.push_back(OutItem {
                topic: doc.topic.into(),
                payload: doc.payload.into_bytes(),
                tag: Tag::Chunk(id),
                cost: Cost::telemetry(Scope::Gateway, doc.devices, doc.datapoints),
            });
        }
        Ok(true)
    }

    /// One publish of chunk `id` was acknowledged.
    fn published(&mut self, id: u64) {
        let done = match self.chunks.get_mut(&id) {
            Some(chunk) => {
                chunk.publishes_left = chunk.publishes_left.saturating_sub(1);
                chunk.publishes_left == 0
            }
            None => false,
        };
        if done {
            self.complete(id);
        }
    }

    /// Every publish of chunk `id` was acknowledged: its events leave the
    /// store, in the background ([`Removals`]).
    fn complete(&mut self, id: u64) {
        let Some(chunk) = self.chunks.remove(&id) else { return };
        tracing::debug!(seqs = ?chunk.seqs, "chunk delivered");
        let start = {
            let mut q = self.removals.lock();
            q.chunks.push(chunk);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let (store, stats, removals) = (self.store.clone(), self.stats.clone(), self.removals.clone());
            self.remover = Some(tokio::task::spawn_blocking(move || removals.run(&*store, &stats)));
        }
    }

    /// Wait until every delivered chunk has left the store: before reading
    /// from the oldest stored event again, and before the client ends.
    async fn settle(&mut self) {
        if let Some(remover) = self.remover.take() {
            let _ = remover.await;
        }
    }
}

/// Delivered chunks waiting to leave the store. One blocking task at a
/// time removes them, taking all that wait at once: the session never
/// waits for the store (a remove may wait for the writer's fsync), and at a
/// steady rate a remove costs one wake-up of a blocking thread, not two
/// and a wait.
#[derive(Default)]
struct Removals(Mutex<RemovalQueue>);

#[derive(Default)]
struct RemovalQueue {
    chunks: Vec<Chunk>,
    /// A task is removing (and will take what is queued before it ends).
    running: bool,
}

impl Removals {
    fn lock(&self) -> std::sync::MutexGuard<'_, RemovalQueue> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, store: &dyn EventStore, stats: &ClientStats) {
        loop {
            let chunks = {
                let mut q = self.lock();
                if q.chunks.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.chunks)
            };
            for chunk in chunks {
                if let Err(e) = store.remove(chunk.seqs.clone()) {
                    // They go again after the next restart: a duplicate, not a loss.
                    tracing::error!("removing delivered events {:?} from the store failed: {e}", chunk.seqs);
                }
                let total: u64 = chunk.per_connector.iter().map(|(_, n)| n).sum();
                stats.count_delivered(total);
                let mut per = stats.per_connector.lock().unwrap_or_else(|e| e.into_inner());
                for (connector, n) in chunk.per_connector {
                    *per.entry(connector).or_default() += n;
                }
            }
        }
    }
}

/// Reads of at most this many events are made on the client's own task.
const INLINE_READ: u64 = 256;

/// Aborts the event loop task when the session ends, whatever way it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_go_in_pieces_a_bucket_holds() {
        let stats = r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#.to_owned();
        let pieces = split_keys(stats.clone(), 2);
        assert_eq!(pieces, [r#"{"a":1,"b":2}"#, r#"{"c":3,"d":4}"#, r#"{"e":5}"#]);
        assert_eq!(split_keys(stats.clone(), usize::MAX), [stats]);
        assert_eq!(split_keys("not json".into(), 1), ["not json"]);
    }

    #[test]
    fn costs_are_counted_as_thingsboard_counts_them() {
        let own = control(OWN_TELEMETRY_TOPIC, br#"{"a":1,"b":2}"#.to_vec());
        assert_eq!(own.cost, Cost::telemetry(Scope::Own, 1, 2));
        let attrs = control(OWN_ATTRIBUTES_TOPIC, br#"{"cpuCount":2,"totalMemory":1}"#.to_vec());
        assert_eq!(attrs.cost, Cost::telemetry(Scope::Own, 1, 2));
        let devices = control(
            TELEMETRY_TOPIC,
            br#"{"A":[{"ts":1,"values":{"t":1,"h":2}}],"B":[{"ts":1,"values":{"t":1}}]}"#.to_vec(),
        );
        assert_eq!(devices.cost, Cost::telemetry(Scope::Gateway, 2, 3));
        let reply = control("v1/gateway/rpc", br#"{"device":"A","id":1,"data":{}}"#.to_vec());
        assert_eq!(reply.cost, Cost::messages(Scope::Gateway, 1));
        assert_eq!(connect_item("A", None).cost, Cost::messages(Scope::Gateway, 2));
    }

    #[test]
    fn only_the_peers_close_counts_as_a_refusal() {
        let io = |kind| ConnectionError::Io(std::io::Error::from(kind));
        assert!(closed_by_peer(&ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted)));
        assert!(closed_by_peer(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(!closed_by_peer(&ConnectionError::NetworkTimeout));
        assert!(!closed_by_peer(&io(std::io::ErrorKind::TimedOut)));
    }
}
