//! The running OPC-UA connector: one task owns the session.
//!
//! On each new session (the first, and after the server lost it: a restart,
//! a session timeout) the connector builds its node table from the
//! configuration: the server's limits, each mapping's device nodes, the
//! devices' names and profiles (read once), and every key's node, all
//! resolved in bulk ([`crate::resolve`]). A node two keys or two devices
//! read is monitored (or read) once and its value sent to each. Then:
//!
//! - **subscriptions** (`enableSubscriptions`, the default): every node in
//!   subscriptions shared by all devices, publishing every
//!   `subCheckPeriodInMillis`; a subscription takes monitored items until
//!   the server says it is full (`BadTooManyMonitoredItems`), then the next
//!   one takes the rest. Items sample at the publishing interval and queue
//!   16 values (the oldest dropped first; async-opcua's default queues
//!   none), so that a publish the server delays loses nothing it sampled.
//!   The subscription callbacks run inside
//!   async-opcua's event loop: they only hand each notification, whole, to a
//!   bounded channel; a notification that does not fit (the converter
//!   stage is far behind) is dropped and counted, never waited for there.
//! - **polling** (`enableSubscriptions: false`): every node read every
//!   `pollPeriodInMillis`, in chunks of the server's read limit.
//!
//! Devices are connected in ThingsBoard once (and never deleted on a
//! reconnect, unlike the Python gateway, which deletes and creates them
//! again); constants are sent once. Every `scanPeriodInMillis` the table
//! is built again, and the subscriptions made again if it changed (a
//! device or a node appeared or went). A monitored item made again
//! reports its node's value at once: where that is the value already sent
//! (the same value, status and source time) it is not sent again, so
//! that a rescan, a subscription the server lost or a new session sends
//! no value twice.
//!
//! Session life is async-opcua's event loop, told to retry forever (its
//! default gives up after 10 attempts) and to drop a session whose
//! keep-alive fails 3 times (a frozen server, a half-open link; by default
//! it never does). A session the server still has is reactivated with its
//! subscriptions; a new session gets a new table, so that a namespace index
//! that moved on a server restart is resolved again. The first connection
//! is this task's: an unreachable server is tried again with a backoff
//! (`reconnectBackoffInitialDelay`, doubling up to a minute), not in a
//! spin.

use crate::config::{Identity, Mapping, OpcuaConfig, Section, Source};
use crate::downlink::{self, Downlink};
use crate::path::{NodeRef, Part};
use crate::resolve::{self, Limits, PathRequest, describe};
use crate::security;
use crate::structures;
use futures_util::StreamExt;
use opcua::client::{
    ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore, Session, SessionConnectMode,
    SessionPollResult,
};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    DataChangeNotification, DataValue, ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, NotificationMessage, ObjectId, StatusChangeNotification, StatusCode,
    TimestampsToReturn,
};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats, Extra, RouteId, Uplink};
use tbgw_core::downlink::ToConnector;
use tbgw_core::setup::{Devices, DownlinkDecl};
use tbgw_core::{DeviceRequest, OpcuaValue, RawUplink, Source as RawSource, now_ms};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

/// Notifications waiting for the connector task. Each is one Publish
/// response: up to the server's notifications per publish.
const NOTIFICATION_QUEUE: usize = 256;
/// The longest wait between attempts at a first connection.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The largest array (of notifications, of read results) a response may hold.
const MAX_ARRAY: usize = 1_000_000;
/// Values each monitored item queues between publishes.
const ITEM_QUEUE: u32 = 16;

/// An OPC-UA connector: the server, the mappings, and each mapping's route.
pub struct OpcuaConnector {
    name: String,
    config: OpcuaConfig,
    /// The route of each mapping.
    routes: Vec<RouteId>,
}

impl OpcuaConnector {
    /// `routes[i]` is the route id of the config's route `i`.
    pub fn new(name: impl Into<String>, config: OpcuaConfig, routes: &[RouteId]) -> OpcuaConnector {
        // The gateway gives one id per declared route, and every mapping
        // has one of them (`parse`): a miss is a bug of tbgw, not of the config.
        let routes = config
            .mapping_routes
            .iter()
            .map(|r| *routes.get(*r).expect("the gateway gives every declared route an id"))
            .collect();
        OpcuaConnector { name: name.into(), config, routes }
    }
}

impl Connector for OpcuaConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(*self, ctx))
    }
}

/// Where one node's value goes: a key of a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    device: Arc<str>,
    device_type: Profile,
    key: Arc<str>,
    section: Section,
    timestamp: &'static str,
    route: RouteId,
}

/// A node the connector reads, and every key it feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    id: NodeId,
    /// `id` as text, as the converter gets it.
    text: String,
    targets: Vec<Target>,
}

/// A device's profile; `None` is ThingsBoard's `default`.
type Profile = Option<Arc<str>>;

/// What the configuration resolved to on this server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Table {
    nodes: Vec<Node>,
    /// Every device found (name, profile, mapping), in mapping order.
    devices: Vec<(Arc<str>, Profile, usize)>,
    /// Where requests for each device go: its node, its keys' nodes.
    nodes_of: Arc<HashMap<Arc<str>, downlink::Device>>,
    constants: Vec<(Target, String)>,
}

/// What async-opcua's event loop tells the connector.
enum SessionEvent {
    /// A session again: `true` for a new one (its subscriptions are gone).
    Reconnected(bool),
    Lost(StatusCode),
    /// The event loop ended (it was closed).
    Ended,
}

/// What the subscriptions' callbacks hand over.
enum Notice {
    /// Values by client handle, of the subscriptions of a table generation
    /// (a notification still queued from before a rescan is not read
    /// against the new table's handles).
    Values(u64, Vec<(u32, DataValue)>),
    /// A subscription's state changed (it timed out on the server, say).
    Status(StatusCode),
}

/// The subscriptions' callback: hand each notification over, whole.
struct Handoff {
    tx: mpsc::Sender<Notice>,
    dropped: Arc<Extra>,
    generation: u64,
}

impl OnSubscriptionNotificationCore for Handoff {
    fn on_subscription_notification(&mut self, notification: NotificationMessage, _items: MonitoredItemMap<'_>) {
        let mut values = Vec::new();
        for obj in notification.notification_data.into_iter().flatten() {
            if let Some(change) = obj.inner_as::<DataChangeNotification>() {
                for item in change.monitored_items.iter().flatten() {
                    values.push((item.client_handle, item.value.clone()));
                }
            } else if let Some(status) = obj.inner_as::<StatusChangeNotification>() {
                let _ = self.tx.try_send(Notice::Status(status.status));
            }
        }
        if values.is_empty() {
            return;
        }
        let n = values.len() as u64;
        if self.tx.try_send(Notice::Values(self.generation, values)).is_err() {
            self.dropped.add(n);
        }
    }
}

/// The connector's own counts in the status snapshot.
struct Counts {
    devices: Arc<Extra>,
    nodes: Arc<Extra>,
    subscriptions: Arc<Extra>,
    monitored_items: Arc<Extra>,
    bad_status: Arc<Extra>,
    dropped: Arc<Extra>,
}

impl Counts {
    fn of(stats: &ConnectorStats) -> Counts {
        Counts {
            devices: stats.extra("devices", "Devices the mappings found on the server", true),
            nodes: stats.extra("nodes", "Distinct nodes read or monitored", true),
            subscriptions: stats.extra("subscriptions", "Subscriptions on the server", true),
            monitored_items: stats.extra("monitored_items", "Monitored items made (one a node)", true),
            bad_status: stats.extra(
                "bad_status_values",
                "Values with a Bad status (left out, with their status name)",
                false,
            ),
            dropped: stats.extra(
                "notifications_dropped",
                "Values dropped because the converter stage was behind the subscriptions",
                false,
            ),
        }
    }

    /// Nothing monitored (the session is gone).
    fn clear(&self) {
        for c in [&self.subscriptions, &self.monitored_items] {
            c.set(0);
        }
    }
}

/// A value as the server sampled it: what tells a value reported again
/// (the first report of a monitored item made again) from a new one.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    value: Option<opcua::types::Variant>,
    status: Option<StatusCode>,
    source: Option<opcua::types::DateTime>,
}

impl Sample {
    fn of(v: &DataValue) -> Sample {
        Sample { value: v.value.clone(), status: v.status, source: v.source_timestamp }
    }
}

/// A request while there is no session (or no table yet): answered at once.
fn refuse(ctx: &ConnectorContext, job: ToConnector, why: &str) {
    match job {
        ToConnector::Device(job) => {
            ctx.stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(why.to_owned()));
        }
        ToConnector::ConnectorRpc { reply, .. } => {
            let _ = reply.send(Err(why.to_owned()));
        }
    }
}

const NO_SESSION: &str = "the opcua connector has no session with its server now";

async fn run(conn: OpcuaConnector, mut ctx: ConnectorContext) {
    let server = &conn.config.server;
    let mut wait = server.reconnect_initial;
    let mut connected_devices: HashSet<Arc<str>> = HashSet::new();
    let mut sessions = 0u64;
    loop {
        let connecting = connect(&conn);
        tokio::pin!(connecting);
        let opened = loop {
            tokio::select! {
                r = &mut connecting => break Some(r),
                _ = ctx.stop_intake.cancelled() => break None,
                Some(job) = ctx.downlink.jobs.recv() => refuse(&ctx, job, NO_SESSION),
            }
        };
        let Some(opened) = opened else { break };
        match opened {
            Ok((session, events, event_loop)) => {
                wait = server.reconnect_initial;
                sessions += 1;
                if sessions > 1 {
                    ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(connector = %conn.name, "connecting to {}", server.url);
                let mut live = Live::new(&conn, &mut ctx, session.clone(), &mut connected_devices);
                let stopped = live.run(events).await;
                ctx.stats.connected.store(false, Ordering::Relaxed);
                // Close the session (the server frees its subscriptions),
                // without waiting long for a server that is gone.
                let _ = tokio::time::timeout(server.timeout, session.disconnect()).await;
                // A disconnect that did not get through leaves the event
                // loop trying to reconnect forever: it ends here.
                drop(event_loop);
                if stopped {
                    break;
                }
            }
            Err(why) => {
                tracing::warn!(connector = %conn.name, "cannot connect to {}: {why}; next attempt in {wait:?}", server.url)
            }
        }
        let wake = Instant::now() + wait;
        wait = (wait * 2).min(MAX_BACKOFF);
        loop {
            tokio::select! {
                _ = sleep_until(wake) => break,
                _ = ctx.stop_intake.cancelled() => break,
                Some(job) = ctx.downlink.jobs.recv() => refuse(&ctx, job, NO_SESSION),
            }
        }
        if ctx.stop_intake.is_cancelled() {
            break;
        }
    }
    ctx.stats.connected.store(false, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = ctx.finish.cancelled() => break,
            Some(job) = ctx.downlink.jobs.recv() => refuse(&ctx, job, NO_SESSION),
        }
    }
}

/// async-opcua's event loop for a session, on a task of its own: ended
/// when this is dropped.
struct EventLoop(tokio::task::JoinHandle<()>);

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session, its event loop's events, and the event loop.
async fn connect(conn: &OpcuaConnector) -> Result<(Arc<Session>, mpsc::Receiver<SessionEvent>, EventLoop), String> {
    let s = &conn.config.server;
    let channel = s.channel.as_ref();
    let prepared = channel.map(security::prepare).transpose()?;
    // Without message security no certificate is needed; the store still
    // wants a directory, which must not be the working directory.
    let pki = channel.map_or_else(|| std::env::temp_dir().join("tbgw-opcua-pki"), |c| c.pki_dir.clone());
    let uri = match (prepared.as_ref().and_then(|p| p.application_uri.clone()), &s.application_uri) {
        (Some(from_cert), Some(configured)) if from_cert != *configured => {
            tracing::warn!(
                connector = %conn.name,
                "server.uri `{configured}` is not the application URI of identity.cert (`{from_cert}`): \
                 using the certificate's, as the server checks them against each other"
            );
            from_cert
        }
        (Some(from_cert), _) => from_cert,
        (None, configured) => configured.clone().unwrap_or_else(|| "urn:tbgw:opcua".into()),
    };
    let keep_alive = (s.session_timeout / 4).clamp(Duration::from_millis(500), Duration::from_secs(10));
    let mut builder = ClientBuilder::new()
        .application_name("tbgw")
        .application_uri(uri)
        .product_uri("urn:tbgw")
        .pki_dir(pki)
        .create_sample_keypair(false);
    if let (Some(c), Some(p)) = (channel, &prepared) {
        builder = builder
            .certificate_path(&c.certificate)
            .private_key_path(&c.private_key)
            .trust_server_certs(p.trust_unknown);
    } else if let Some((cert, key)) = security::unsecured_keypair() {
        builder = builder.certificate_path(cert).private_key_path(key);
    }
    let mut client = builder
        .session_retry_limit(-1)
        .session_retry_initial(s.reconnect_initial)
        .session_retry_max(MAX_BACKOFF)
        .keep_alive_interval(keep_alive)
        .max_failed_keep_alive_count(3)
        .request_timeout(s.timeout)
        .session_timeout(u32::try_from(s.session_timeout.as_millis()).unwrap_or(u32::MAX))
        .recreate_subscriptions(false)
        // A Publish response carries every notification queued since the
        // last: thousands of values at once from a large server (the
        // default limit, 1,000 array elements, drops the connection).
        .max_array_length(MAX_ARRAY)
        .session_name(format!("tbgw {}", conn.name))
        .client()
        .map_err(|e| format!("the client's settings: {}", e.join("; ")))?;
    let identity = match (&s.identity, channel) {
        (Identity::Anonymous, _) => IdentityToken::Anonymous,
        (Identity::UserName { user, password }, _) => IdentityToken::UserName(user.clone(), password.clone().into()),
        (Identity::X509, Some(c)) => IdentityToken::new_x509_path(&c.certificate, &c.private_key)
            .map_err(|e| format!("identity.cert as the login: {e}"))?,
        (Identity::X509, None) => return Err("an x509 identity without its certificate".into()),
    };
    let (policy, mode) = channel.map_or((SecurityPolicy::None, MessageSecurityMode::None), |c| (c.policy, c.mode));
    let (session, event_loop) = tokio::time::timeout(
        s.timeout * 2,
        client.connect_to_matching_endpoint((s.url.as_str(), policy.to_str(), mode), identity),
    )
    .await
    .map_err(|_| format!("no answer in {:?}", s.timeout * 2))?
    .map_err(|e| format!("{e}{}", security::hint(e.status(), channel)))?;
    let (tx, rx) = mpsc::channel(16);
    let name = conn.name.clone();
    let channel = s.channel.clone();
    // Trust on first use trusts the first certificate only: once a
    // channel is open, the store takes no new one (a server that comes
    // back with another certificate is refused).
    let store = prepared.is_some_and(|p| p.trust_unknown).then(|| client.certificate_store().clone());
    let event_loop = tokio::spawn(async move {
        let events = event_loop.enter();
        tokio::pin!(events);
        while let Some(event) = events.next().await {
            let forward = match event {
                Ok(SessionPollResult::Reconnected(mode)) => {
                    if let Some(store) = &store {
                        store.write().set_trust_unknown_certs(false);
                    }
                    SessionEvent::Reconnected(matches!(mode, SessionConnectMode::NewSession(_)))
                }
                Ok(SessionPollResult::ConnectionLost(status)) => SessionEvent::Lost(status),
                Ok(SessionPollResult::ReconnectFailed(status)) => {
                    // A refused login or an unreachable server: the event
                    // loop waits longer before each next attempt.
                    let hint = security::hint(status, channel.as_ref());
                    tracing::warn!(connector = %name, "cannot open a session: {}{hint}", describe(status));
                    continue;
                }
                Ok(_) => continue,
                Err(status) => {
                    tracing::warn!(connector = %name, "the session ended: {}", describe(status));
                    break;
                }
            };
            if tx.send(forward).await.is_err() {
                return;
            }
        }
        let _ = tx.send(SessionEvent::Ended).await;
    });
    Ok((session, rx, EventLoop(event_loop)))
}

/// One session's work.
struct Live<'a> {
    conn: &'a OpcuaConnector,
    ctx: &'a mut ConnectorContext,
    session: Arc<Session>,
    connected_devices: &'a mut HashSet<Arc<str>>,
    limits: Limits,
    table: Table,
    /// Counts the tables made; the subscriptions are the current one's.
    generation: u64,
    subscriptions: Vec<u32>,
    notices: (mpsc::Sender<Notice>, mpsc::Receiver<Notice>),
    counts: Counts,
    dropped_logged: u64,
    /// The server's namespaces, as the last setup found them.
    namespaces: usize,
    /// What requests from ThingsBoard have learnt on this session.
    learnt: Arc<std::sync::Mutex<downlink::Cache>>,
    /// What each node of the table sent last (subscriptions only; by table
    /// index).
    sent: Vec<Option<Sample>>,
    /// What each node had sent before the subscriptions were made again,
    /// until its first value after (by table index): a value the new
    /// monitored item reports first that is the one already sent is not
    /// sent again.
    resent: Vec<Option<Sample>>,
    /// What the nodes of a table given up had sent, until the next table.
    kept: HashMap<NodeId, Sample>,
    /// The constants sent (each once, not again with each table).
    constants_sent: HashSet<(Target, String)>,
    /// Whether this session tried to load the server's structure types
    /// (`None`: not yet), and whether it could.
    structures: Option<bool>,
}

impl<'a> Live<'a> {
    fn new(
        conn: &'a OpcuaConnector,
        ctx: &'a mut ConnectorContext,
        session: Arc<Session>,
        connected_devices: &'a mut HashSet<Arc<str>>,
    ) -> Live<'a> {
        let counts = Counts::of(&ctx.stats);
        Live {
            conn,
            ctx,
            session,
            connected_devices,
            limits: Limits::default(),
            table: Table::default(),
            generation: 0,
            subscriptions: Vec::new(),
            notices: mpsc::channel(NOTIFICATION_QUEUE),
            dropped_logged: counts.dropped.get(),
            counts,
            namespaces: 1,
            learnt: Arc::default(),
            structures: None,
            sent: Vec::new(),
            resent: Vec::new(),
            kept: HashMap::new(),
            constants_sent: HashSet::new(),
        }
    }

    /// Until the connector stops (`true`) or the session is gone for good.
    async fn run(&mut self, mut events: mpsc::Receiver<SessionEvent>) -> bool {
        let server = &self.conn.config.server;
        let mut poll = tokio::time::interval(server.poll_period);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Set up now, then at each scan; a failed setup is tried again soon.
        let mut setup_at = Instant::now();
        let mut retry = server.reconnect_initial;
        // The event loop makes the session; it says when (a first
        // `Reconnected`), or why it cannot (a wrong password, say).
        let mut connected = false;
        let mut ever = false;
        loop {
            tokio::select! {
                biased;
                _ = self.ctx.stop_intake.cancelled() => return true,
                event = events.recv() => match event {
                    Some(SessionEvent::Reconnected(new)) => {
                        if ever {
                            tracing::info!(connector = %self.conn.name, "reconnected ({} session)", if new { "a new" } else { "the same" });
                        } else {
                            tracing::info!(connector = %self.conn.name, "session open on {}", server.url);
                        }
                        connected = true;
                        self.ctx.stats.connected.store(true, Ordering::Relaxed);
                        if ever {
                            self.ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever = true;
                        if new {
                            // The server has none of our subscriptions any
                            // more, and its namespaces may have moved.
                            self.subscriptions.clear();
                            self.counts.clear();
                            self.forget_table();
                            self.learnt = Arc::default();
                            self.structures = None;
                            setup_at = Instant::now();
                        }
                    }
                    Some(SessionEvent::Lost(status)) => {
                        tracing::warn!(connector = %self.conn.name, "lost the server: {}", describe(status));
                        connected = false;
                        self.ctx.stats.connected.store(false, Ordering::Relaxed);
                    }
                    Some(SessionEvent::Ended) | None => {
                        self.counts.clear();
                        return false;
                    }
                },
                Some(notice) = self.notices.1.recv() => match notice {
                    Notice::Values(generation, values) if generation == self.generation => self.emit(values).await,
                    Notice::Values(..) => {}
                    Notice::Status(status) => {
                        tracing::warn!(connector = %self.conn.name, "a subscription changed state: {}; subscribing again", describe(status));
                        self.subscriptions.clear();
                        self.forget_table();
                        setup_at = Instant::now();
                    }
                },
                _ = sleep_until(setup_at), if connected => {
                    match self.setup().await {
                        Ok(()) => {
                            retry = server.reconnect_initial;
                            setup_at = Instant::now() + server.scan_period;
                        }
                        Err(why) => {
                            tracing::warn!(connector = %self.conn.name, "setting up the nodes failed: {why}; again in {retry:?}");
                            setup_at = Instant::now() + retry;
                            retry = (retry * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                _ = poll.tick(), if connected && !server.subscriptions && !self.table.nodes.is_empty() => {
                    if let Err(why) = self.poll().await {
                        tracing::warn!(connector = %self.conn.name, "polling failed: {why}");
                    }
                }
                Some(job) = self.ctx.downlink.jobs.recv() => {
                    if !connected {
                        refuse(self.ctx, job, NO_SESSION);
                    } else if self.table.devices.is_empty() {
                        refuse(self.ctx, job, "the opcua connector has found no devices on its server yet");
                    } else {
                        self.dispatch(job);
                    }
                }
            }
            let dropped = self.counts.dropped.get();
            if dropped > self.dropped_logged {
                tracing::warn!(
                    connector = %self.conn.name,
                    "{} values dropped: the converter stage is behind the subscriptions ({dropped} in all)",
                    dropped - self.dropped_logged
                );
                self.dropped_logged = dropped;
            }
        }
    }

    /// Build the table; when it changed, connect new devices, send the
    /// constants and make the subscriptions again.
    async fn setup(&mut self) -> Result<(), String> {
        let started = std::time::Instant::now();
        let (limits, namespaces) = resolve::limits(&self.session).await?;
        self.limits = limits;
        self.namespaces = namespaces;
        let table = build(self.conn, &self.session, &limits, namespaces).await?;
        if table == self.table && (!self.conn.config.server.subscriptions || !self.subscriptions.is_empty()) {
            tracing::debug!(connector = %self.conn.name, "rescan: nothing changed");
            return Ok(());
        }
        for (device, device_type, mapping) in &table.devices {
            let downlink =
                self.conn.config.mapping_downlinks.get(*mapping).and_then(|d| self.conn.config.downlinks.get(*d));
            if let Some(DownlinkDecl { devices: Devices::Found(found), .. }) = downlink {
                found.insert(device);
            }
            if self.connected_devices.insert(device.clone()) {
                let request = DeviceRequest::Connect {
                    device: device.to_string(),
                    device_type: device_type.as_ref().map(|t| t.to_string()),
                };
                self.ctx.downlink.requests.send(request);
            }
        }
        if !self.subscriptions.is_empty() {
            let ids = std::mem::take(&mut self.subscriptions);
            if let Err(e) = self.session.delete_subscriptions(&ids).await {
                tracing::info!(connector = %self.conn.name, "deleting the old subscriptions: {e}");
            }
        }
        self.forget_table();
        self.resent = table.nodes.iter().map(|n| self.kept.remove(&n.id)).collect();
        self.kept.clear();
        self.sent = vec![None; if self.conn.config.server.subscriptions { table.nodes.len() } else { 0 }];
        self.table = table;
        self.generation += 1;
        let constants: Vec<(Target, String)> =
            self.table.constants.iter().filter(|c| !self.constants_sent.contains(*c)).cloned().collect();
        self.constants_sent.extend(constants.iter().cloned());
        for (target, value) in constants {
            let payload = serde_json::json!({"Type": 12, "Body": value}).to_string().into_bytes();
            let value = OpcuaValue { node: String::new(), status: 0, source_time: None, server_time: None };
            self.send(&target, value, payload, None).await;
        }
        if self.conn.config.server.subscriptions
            && let Err(why) = self.subscribe().await
        {
            // Half a set of subscriptions is none: the next attempt makes
            // them all again.
            let ids = std::mem::take(&mut self.subscriptions);
            let _ = self.session.delete_subscriptions(&ids).await;
            self.forget_table();
            return Err(why);
        }
        let monitored = if self.conn.config.server.subscriptions { self.table.nodes.len() } else { 0 };
        self.counts.devices.set(self.table.devices.len() as u64);
        self.counts.nodes.set(self.table.nodes.len() as u64);
        self.counts.subscriptions.set(self.subscriptions.len() as u64);
        self.counts.monitored_items.set(monitored as u64);
        tracing::info!(
            connector = %self.conn.name,
            "{} devices, {} nodes ({} monitored in {} subscriptions) set up in {:?}",
            self.table.devices.len(),
            self.table.nodes.len(),
            monitored,
            self.subscriptions.len(),
            started.elapsed()
        );
        Ok(())
    }

    /// Serve a request from ThingsBoard on a task of its own (a method
    /// that runs for seconds must not hold the values back).
    fn dispatch(&self, job: ToConnector) {
        let downlink = Downlink {
            session: self.session.clone(),
            limits: self.limits,
            namespaces: self.namespaces,
            timeout: self.conn.config.server.timeout,
            cache: self.learnt.clone(),
            devices: self.table.nodes_of.clone(),
        };
        let stats = self.ctx.stats.clone();
        match job {
            ToConnector::Device(job) => {
                let n = job.messages.len() as u64;
                tokio::spawn(async move {
                    if downlink.serve(job).await {
                        stats.sent_to_devices.fetch_add(n, Ordering::Relaxed);
                    } else {
                        stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            ToConnector::ConnectorRpc { method, params, reply } => {
                tokio::spawn(async move {
                    let _ = reply.send(downlink.connector_rpc(method, params).await);
                });
            }
        }
    }

    /// Monitor every node: subscriptions fill up to the server's cap, in
    /// chunks of its per-call limit. The cap is no OperationLimit: it is
    /// learnt from the server's `BadTooManyMonitoredItems` (a whole
    /// request refused, or its items one by one), halving the chunk until
    /// the subscription takes no more; the next subscriptions are then
    /// filled to the cap found, in as few calls as the limits allow.
    async fn subscribe(&mut self) -> Result<(), String> {
        let s = &self.conn.config.server;
        let interval_ms = s.publish_interval.as_millis().max(1) as u64;
        // A keep-alive at least every 5 s; the subscription outlives 6 of them.
        let keep_alive = u32::try_from((5000 / interval_ms).max(3)).unwrap_or(u32::MAX);
        let lifetime = keep_alive.saturating_mul(6);
        let total = self.table.nodes.len();
        let mut next = 0usize;
        let mut cap: Option<usize> = None;
        let mut refused = 0usize;
        while next < total {
            let handoff = Handoff {
                tx: self.notices.0.clone(),
                dropped: self.counts.dropped.clone(),
                generation: self.generation,
            };
            let id = self
                .session
                .create_subscription(s.publish_interval, lifetime, keep_alive, 0, 0, true, handoff)
                .await
                .map_err(|e| format!("creating a subscription: {e}"))?;
            self.subscriptions.push(id);
            let mut in_this = 0usize;
            let mut chunk = self.limits.monitored_items;
            while next < total {
                let room = cap.map_or(usize::MAX, |c| c.saturating_sub(in_this));
                if room == 0 {
                    break;
                }
                let n = chunk.min(room).min(total - next);
                let items: Vec<MonitoredItemCreateRequest> =
                    (next..next + n).map(|i| self.item(i, interval_ms)).collect();
                match self.session.create_monitored_items(id, TimestampsToReturn::Both, items).await {
                    Ok(results) => {
                        let mut full = false;
                        let mut taken = 0usize;
                        for (i, r) in (next..next + n).zip(&results) {
                            let status = r.result.status_code;
                            if status == StatusCode::BadTooManyMonitoredItems {
                                full = true;
                                break;
                            }
                            taken += 1;
                            if status.is_bad() {
                                refused += 1;
                                tracing::warn!(connector = %self.conn.name, "node {} cannot be monitored: {}", self.table.nodes[i].text, describe(status));
                            }
                        }
                        next += taken;
                        in_this += taken;
                        if full {
                            cap = Some(in_this);
                        }
                    }
                    Err(e) if e.status() == StatusCode::BadTooManyMonitoredItems && n > 1 => chunk = n / 2,
                    Err(e) if e.status() == StatusCode::BadTooManyMonitoredItems => cap = Some(in_this),
                    Err(e) => return Err(format!("creating {n} monitored items: {e}")),
                }
            }
            if in_this == 0 {
                return Err(
                    "the server takes no monitored items in a new subscription (BadTooManyMonitoredItems)".into()
                );
            }
        }
        if refused > 0 {
            self.ctx.stats.read_errors.fetch_add(refused as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The monitored item of node `i`: its handle is its place in the table
    /// + 1 (0 would mean "pick one").
    fn item(&self, i: usize, interval_ms: u64) -> MonitoredItemCreateRequest {
        MonitoredItemCreateRequest::new(
            resolve::value_of(self.table.nodes[i].id.clone()),
            MonitoringMode::Reporting,
            MonitoringParameters {
                client_handle: i as u32 + 1,
                sampling_interval: interval_ms as f64,
                filter: ExtensionObject::null(),
                queue_size: ITEM_QUEUE,
                discard_oldest: true,
            },
        )
    }

    /// Read every node once.
    async fn poll(&mut self) -> Result<(), String> {
        let ids: Vec<NodeId> = self.table.nodes.iter().map(|n| n.id.clone()).collect();
        let values = resolve::read(&self.session, &mut self.limits, &ids).await?;
        let values = values.into_iter().enumerate().map(|(i, v)| (i as u32 + 1, v)).collect();
        self.emit(values).await;
        Ok(())
    }

    /// Send values (by client handle) to every key they feed.
    async fn emit(&mut self, values: Vec<(u32, DataValue)>) {
        let received_at = now_ms();
        if self.structures.is_none() && values.iter().any(|(_, v)| v.value.as_ref().is_some_and(structures::undecoded))
        {
            self.load_structures().await;
        }
        for (handle, value) in values {
            let Some(node) = (handle as usize).checked_sub(1).and_then(|i| self.table.nodes.get(i)) else {
                // A notification of a subscription made for an older table.
                continue;
            };
            self.ctx.stats.received.fetch_add(1, Ordering::Relaxed);
            if !self.sent.is_empty() {
                let i = handle as usize - 1;
                let sample = Sample::of(&value);
                let again = self.resent.get_mut(i).and_then(Option::take).is_some_and(|s| s == sample);
                if let Some(slot) = self.sent.get_mut(i) {
                    *slot = Some(sample);
                }
                if again {
                    continue;
                }
            }
            let status = value.status.unwrap_or(StatusCode::Good);
            if status.is_bad() {
                self.counts.bad_status.add(1);
            }
            let payload = match value.value.as_ref() {
                Some(v) if self.structures == Some(true) && structures::undecoded(v) => {
                    let again = structures::decode_again(&self.session, v);
                    resolve::json(&self.session, again.as_ref().unwrap_or(v))
                }
                Some(v) => resolve::json(&self.session, v),
                None => b"null".to_vec(),
            };
            let raw = OpcuaValue {
                node: node.text.clone(),
                status: status.bits(),
                source_time: value.source_timestamp.map(|t| t.as_chrono().timestamp_millis()),
                server_time: value.server_timestamp.map(|t| t.as_chrono().timestamp_millis()),
            };
            let status_name = (!status.is_good()).then(|| status.sub_code().name().to_owned());
            // Most nodes feed one key: the value moves to the last, not copied.
            let mut value = Some((raw, payload));
            for (i, t) in node.targets.iter().enumerate() {
                let last = i + 1 == node.targets.len();
                let Some((raw, payload)) = (if last { value.take() } else { value.clone() }) else { break };
                let mut raw = uplink(t, raw, payload, status_name.clone());
                raw.received_at = received_at;
                if self.ctx.sink.send(&t.device, Uplink { route: t.route, raw, ack: None }).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Give the table up (to be made again), keeping what its nodes sent.
    fn forget_table(&mut self) {
        let table = std::mem::take(&mut self.table);
        let mut sent = std::mem::take(&mut self.sent).into_iter();
        let mut resent = std::mem::take(&mut self.resent).into_iter();
        for node in table.nodes {
            // What it sent on this table, else what it had sent before.
            let (last, before) = (sent.next().flatten(), resent.next().flatten());
            if let Some(last) = last.or(before) {
                self.kept.insert(node.id, last);
            }
        }
    }

    /// The server's structure types, once a session: a value of one of
    /// them has arrived as its raw body.
    async fn load_structures(&mut self) {
        let started = std::time::Instant::now();
        let loaded = structures::load(&self.session, self.limits.read).await;
        self.structures = Some(loaded.is_ok());
        match loaded {
            Ok(()) => {
                tracing::info!(connector = %self.conn.name, "loaded the server's structure types in {:?}", started.elapsed())
            }
            Err(why) => tracing::warn!(
                connector = %self.conn.name,
                "a structure of the server's own type arrived, but its definition cannot be loaded ({why}): \
                 such values go to the converter as their raw bodies"
            ),
        }
    }

    async fn send(&mut self, target: &Target, value: OpcuaValue, payload: Vec<u8>, status: Option<String>) {
        let raw = uplink(target, value, payload, status);
        let _ = self.ctx.sink.send(&target.device, Uplink { route: target.route, raw, ack: None }).await;
    }
}

/// The message of one value for one key.
fn uplink(t: &Target, value: OpcuaValue, payload: Vec<u8>, status: Option<String>) -> RawUplink {
    let mut metadata = vec![
        ("key".to_owned(), t.key.to_string()),
        ("section".to_owned(), t.section.as_str().to_owned()),
        ("timestamp".to_owned(), t.timestamp.to_owned()),
    ];
    if let Some(dt) = &t.device_type {
        metadata.push(("device-type".to_owned(), dt.to_string()));
    }
    if let Some(s) = status {
        metadata.push(("status".to_owned(), s));
    }
    RawUplink {
        source: RawSource::Opcua(value),
        device: Some(t.device.to_string()),
        payload,
        metadata,
        received_at: now_ms(),
    }
}

/// The devices each mapping finds on the server, and their keys' nodes.
async fn build(conn: &OpcuaConnector, session: &Session, limits: &Limits, namespaces: usize) -> Result<Table, String> {
    let mappings = &conn.config.mappings;
    let mut hint = None;
    // 1. Each mapping's device node (relative paths start at Objects).
    let objects: NodeId = ObjectId::ObjectsFolder.into();
    let requests: Vec<PathRequest> = mappings.iter().map(|m| PathRequest::of(&m.device_node, &objects)).collect();
    let device_nodes = resolve::resolve(session, limits, namespaces, &mut hint, &requests).await?;
    let mut found: Vec<(usize, NodeId)> = Vec::new();
    for (i, n) in device_nodes.into_iter().enumerate() {
        let m = &mappings[i];
        match (n, &m.device_node) {
            (Some(n), _) => found.push((i, n)),
            // Named by no node as written: a pattern over browse names,
            // matching any number of devices.
            (None, NodeRef::Path { absolute, elements }) if elements.iter().any(|e| resolve::pattern(e).is_some()) => {
                let start = if *absolute { ObjectId::RootFolder.into() } else { objects.clone() };
                let nodes = resolve::matching(session, limits, namespaces, &mut hint, start, elements).await?;
                if nodes.is_empty() {
                    tracing::warn!(connector = %conn.name, "{}: no node matches {}", m.path, m.device_node);
                }
                found.extend(nodes.into_iter().map(|n| (i, n)));
            }
            (None, _) => tracing::warn!(connector = %conn.name, "{}: no node {} on the server", m.path, m.device_node),
        }
    }
    // 2. Their names and profiles: the expressions' nodes, resolved and read.
    let mut requests = Vec::new();
    for (i, node) in &found {
        let m = &mappings[*i];
        for r in m.device_name.nodes().chain(m.device_profile.nodes()) {
            requests.push(PathRequest::of(r, node));
        }
    }
    let resolved = resolve::resolve(session, limits, namespaces, &mut hint, &requests).await?;
    let readable: Vec<NodeId> = resolved.iter().flatten().cloned().collect();
    let values = resolve::read(session, &mut { *limits }, &readable).await?;
    let mut values = values.iter();
    let mut texts: Vec<Option<String>> = Vec::with_capacity(resolved.len());
    for r in &resolved {
        texts.push(match r {
            Some(_) => values.next().and_then(resolve::text),
            None => None,
        });
    }
    let mut texts = texts.into_iter();
    // (mapping, device node, name, profile)
    let mut devices: Vec<(usize, NodeId, Arc<str>, Profile)> = Vec::new();
    for (i, node) in &found {
        let m = &mappings[*i];
        let name_parts: Vec<Option<String>> = texts.by_ref().take(m.device_name.nodes().count()).collect();
        let profile_parts: Vec<Option<String>> = texts.by_ref().take(m.device_profile.nodes().count()).collect();
        if name_parts.iter().any(Option::is_none) {
            tracing::warn!(connector = %conn.name, "{}: the device at {node} has no value for its name's nodes ({}); skipped", m.path, render_expr(m));
            continue;
        }
        let name = m.device_name.render(&name_parts.into_iter().flatten().collect::<Vec<_>>());
        let profile =
            m.device_profile.render(&profile_parts.into_iter().map(Option::unwrap_or_default).collect::<Vec<_>>());
        let profile = (!profile.is_empty() && profile != "default").then(|| Arc::from(profile.as_str()));
        devices.push((*i, node.clone(), Arc::from(name.as_str()), profile));
    }
    // 3. Every key's node, from its device's node.
    let mut requests = Vec::new();
    let mut targets = Vec::new();
    let mut constants = Vec::new();
    for (i, node, device, device_type) in &devices {
        let m = &mappings[*i];
        for k in &m.keys {
            let target = Target {
                device: device.clone(),
                device_type: device_type.clone(),
                key: Arc::from(k.key.as_str()),
                section: k.section,
                timestamp: k.timestamp,
                route: conn.routes[*i],
            };
            match &k.source {
                Source::Node(r) => {
                    requests.push(PathRequest::of(r, node));
                    targets.push((target, r));
                }
                Source::Constant(v) => constants.push((target, v.clone())),
            }
        }
    }
    let resolved = resolve::resolve(session, limits, namespaces, &mut hint, &requests).await?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: HashMap<NodeId, usize> = HashMap::new();
    let mut missing = 0usize;
    for ((target, r), id) in targets.into_iter().zip(resolved) {
        let Some(id) = id else {
            missing += 1;
            tracing::warn!(connector = %conn.name, "device {}: no node {} for key {}", target.device, r, target.key);
            continue;
        };
        let slot = *index.entry(id.clone()).or_insert_with(|| {
            nodes.push(Node { text: id.to_string(), id, targets: Vec::new() });
            nodes.len() - 1
        });
        nodes[slot].targets.push(target);
    }
    if missing > 0 {
        tracing::warn!(connector = %conn.name, "{missing} keys have no node on the server");
    }
    let mut nodes_of: HashMap<Arc<str>, downlink::Device> = devices
        .iter()
        .map(|(_, node, d, _)| (d.clone(), downlink::Device { node: node.clone(), keys: HashMap::new() }))
        .collect();
    for n in &nodes {
        for t in &n.targets {
            if let Some(d) = nodes_of.get_mut(&t.device) {
                d.keys.insert(t.key.clone(), n.id.clone());
            }
        }
    }
    let devices = devices.into_iter().map(|(i, _, d, t)| (d, t, i)).collect();
    Ok(Table { nodes, devices, nodes_of: Arc::new(nodes_of), constants })
}

fn render_expr(m: &Mapping) -> String {
    m.device_name
        .0
        .iter()
        .map(|p| match p {
            Part::Text(t) => t.clone(),
            Part::Node(n) => format!("${{{n}}}"),
        })
        .collect()
}
