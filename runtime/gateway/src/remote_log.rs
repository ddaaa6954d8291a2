//! Remote logging: the gateway's log records sent to ThingsBoard as the
//! Python gateway 3.8 sends them, so that the Gateways page's logs and
//! error counts work for tbgw too.
//!
//! # What goes where
//!
//! Every record of tbgw's own code (targets `tbgw*`; the libraries under it
//! are not the gateway's to report) belongs to one source, and each source
//! has a threshold (a Python level: TRACE 5, DEBUG 10, INFO 20, WARNING 30,
//! ERROR 40, CRITICAL 50, NONE 100):
//!
//! | record | telemetry key | threshold |
//! |---|---|---|
//! | the ThingsBoard client (`tbgw_thingsboard*`) | `CONNECTION_LOGS` and `LOGS` | `RemoteLoggingLevel`, never below INFO |
//! | the store (`tbgw_store*`) | `STORAGE_LOGS` and `LOGS` | `RemoteLoggingLevel` |
//! | a converter of connector C (a `converter` field) | `C_converter_LOGS` | C's |
//! | a converter of no connector | `EXTENSION_LOGS` and `LOGS` | `RemoteLoggingLevel` |
//! | connector C (a `connector` field) | `C_LOGS` | C's |
//! | the rest | `SERVICE_LOGS` and `LOGS` | `RemoteLoggingLevel` |
//!
//! `RemoteLoggingLevel` is a shared attribute of the gateway device
//! (NONE until ThingsBoard says otherwise; the client asks for it at every
//! connection, the router applies it and its updates). A connector's
//! threshold is its `logLevel` (INFO when not set) when its
//! `enableRemoteLogging` is true, NONE otherwise. The client's own records
//! stop at INFO because sending a record makes the client log: below INFO
//! every record would make another (the Python gateway leaves its
//! connection logger out below INFO for the same reason).
//!
//! Each record is one entry of a telemetry array,
//! `{"ts": ms, "values": {"SERVICE_LOGS": text, "LOGS": text}}`, its text
//! in the Python gateway's format (`2026-12-03 10:47:33,123 -
//! |INFO|<thread> [file.rs] - module target - line - message`, local time).
//!
//! Error counts are kept whatever the thresholds: every ERROR record
//! counts for its source (`service_ERRORS_COUNT`,
//! `tb_connection_ERRORS_COUNT`, `storage_ERRORS_COUNT`,
//! `extension_ERRORS_COUNT`, `C_ERRORS_COUNT` for a connector and its
//! converters) and for `ALL_ERRORS_COUNT`; every 5 s while connected the
//! counts are sent as the gateway's telemetry when they changed, and every
//! 60 s they start again from 0, as the Python gateway does.
//!
//! # Bounds
//!
//! Logging must never hold the gateway back nor grow without end: a record
//! is queued (at most [`QUEUE`], newer ones are dropped and counted, the
//! count sent as a record of its own), at most [`MAX_RECORD`] bytes of text
//! (cut with a mark); the queue goes out while ThingsBoard is connected, at
//! most [`PER_PUBLISH`] records and the client's payload limit a publish,
//! [`PUBLISHES_PER_SECOND`] publishes a second. Records wait in the queue
//! while ThingsBoard is away, as the Python gateway's do.
//!
//! # How
//!
//! The [`layer`] is installed with the process's subscriber
//! (`cli::init_logging`), before any gateway exists, so the thresholds live
//! in one process-wide [`Hub`] ([`hub`]) that the gateway configures when it
//! starts and the router when ThingsBoard sends a level. The layer has its
//! own filter: it asks tracing only for records of `tbgw*` targets at the
//! most verbose threshold in force (and errors), and rebuilds tracing's
//! callsite cache when that changes, so that a gateway with remote logging
//! off pays nothing for the debug records it does not send.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tbgw_thingsboard::{ClientStats, Command, CommandSender};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, Layer};

/// No records at all.
pub const NONE: u8 = 100;
/// A connector's threshold when it enables remote logging without a `logLevel`.
pub const INFO: u8 = 20;
/// Records waiting for ThingsBoard.
pub const QUEUE: usize = 1000;
/// The most text of one record, in bytes.
pub const MAX_RECORD: usize = 4096;
/// The most records in one publish.
pub const PER_PUBLISH: usize = 20;
/// The most publishes of records a second.
pub const PUBLISHES_PER_SECOND: u32 = 10;
/// How often the error counts are sent (when they changed).
const ERRORS_EVERY: Duration = Duration::from_secs(5);
/// How often the error counts start again from 0.
const ERRORS_RESET: Duration = Duration::from_secs(60);
/// The most bytes of one publish of records, whatever the client allows.
const MAX_PUBLISH: usize = 64 * 1024;

/// The Python level of a name (`"debug"`, `"WARNING"`, `"NONE"`), or `None`
/// for a name Python does not have.
pub fn parse_level(name: &str) -> Option<u8> {
    Some(match name.trim().to_ascii_uppercase().as_str() {
        "TRACE" => 5,
        "DEBUG" => 10,
        "INFO" => 20,
        "WARN" | "WARNING" => 30,
        "ERROR" => 40,
        "CRITICAL" | "FATAL" => 50,
        "NONE" => NONE,
        _ => return None,
    })
}

/// The names [`parse_level`] takes, for messages.
pub const LEVEL_NAMES: &str = "TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL, NONE";

fn number(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 5,
        Level::DEBUG => 10,
        Level::INFO => 20,
        Level::WARN => 30,
        Level::ERROR => 40,
    }
}

fn python_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARNING",
        Level::ERROR => "ERROR",
    }
}

/// The verbosest tracing level a threshold takes in.
fn filter_of(threshold: u8) -> LevelFilter {
    match threshold {
        0..=5 => LevelFilter::TRACE,
        6..=10 => LevelFilter::DEBUG,
        11..=20 => LevelFilter::INFO,
        21..=30 => LevelFilter::WARN,
        // Errors always, for the counts.
        _ => LevelFilter::ERROR,
    }
}

/// Where a record belongs (the Python gateway's loggers).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Service,
    Connection,
    Storage,
    Extension,
    Connector(String),
    Converter(String),
}

impl Source {
    fn logs_key(&self) -> String {
        match self {
            Source::Service => "SERVICE_LOGS".into(),
            Source::Connection => "CONNECTION_LOGS".into(),
            Source::Storage => "STORAGE_LOGS".into(),
            Source::Extension => "EXTENSION_LOGS".into(),
            Source::Connector(c) => format!("{c}_LOGS"),
            Source::Converter(c) => format!("{c}_converter_LOGS"),
        }
    }

    fn errors_key(&self) -> String {
        match self {
            Source::Service => "service_ERRORS_COUNT".into(),
            Source::Connection => "tb_connection_ERRORS_COUNT".into(),
            Source::Storage => "storage_ERRORS_COUNT".into(),
            Source::Extension => "extension_ERRORS_COUNT".into(),
            Source::Connector(c) | Source::Converter(c) => format!("{c}_ERRORS_COUNT"),
        }
    }

    /// The gateway's own records also go under `LOGS`.
    fn also_logs(&self) -> bool {
        !matches!(self, Source::Connector(_) | Source::Converter(_))
    }
}

#[derive(Default)]
struct Levels {
    /// `RemoteLoggingLevel`.
    gateway: u8,
    /// Each connector's threshold.
    connectors: HashMap<String, u8>,
    /// Each converter's connector, by the converter's name.
    converters: HashMap<String, String>,
}

impl Levels {
    fn classify(&self, target: &str, fields: &Fields) -> Source {
        if let Some(converter) = &fields.converter {
            return match self.converters.get(converter).or(fields.connector.as_ref()) {
                Some(connector) => Source::Converter(connector.clone()),
                None => Source::Extension,
            };
        }
        if let Some(connector) = &fields.connector {
            return Source::Connector(connector.clone());
        }
        if target.starts_with("tbgw_thingsboard") {
            Source::Connection
        } else if target.starts_with("tbgw_store") {
            Source::Storage
        } else {
            Source::Service
        }
    }

    fn threshold(&self, source: &Source) -> u8 {
        match source {
            Source::Service | Source::Storage | Source::Extension => self.gateway,
            Source::Connection => self.gateway.max(INFO),
            Source::Connector(c) | Source::Converter(c) => self.connectors.get(c).copied().unwrap_or(NONE),
        }
    }

    fn verbosest(&self) -> u8 {
        self.connectors.values().copied().chain([self.gateway]).min().unwrap_or(NONE)
    }
}

#[derive(Default)]
struct Errors {
    by_key: BTreeMap<String, u64>,
    all: u64,
    /// The batch sent last.
    sent: Option<Map<String, Value>>,
}

/// The thresholds, the queue of records and the error counts, one per
/// process (see the module's docs).
pub struct Hub {
    levels: RwLock<Levels>,
    /// [`Levels::verbosest`], for the filter (read at every record).
    verbosest: AtomicU8,
    queue: Mutex<VecDeque<String>>,
    dropped: AtomicU64,
    errors: Mutex<Errors>,
    ready: tokio::sync::Notify,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            levels: RwLock::new(Levels { gateway: NONE, ..Levels::default() }),
            verbosest: AtomicU8::new(NONE),
            queue: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            errors: Mutex::default(),
            ready: tokio::sync::Notify::new(),
        }
    }
}

/// The process's hub.
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::default)
}

/// The layer that feeds `hub`, with its own filter.
pub fn layer<S>(hub: &'static Hub) -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    RemoteLayer { hub }.with_filter(RemoteFilter { hub })
}

impl Hub {
    /// `RemoteLoggingLevel`, as ThingsBoard sent it.
    pub fn set_gateway_level(&self, threshold: u8) {
        self.change(|l| l.gateway = threshold);
    }

    /// The gateway's threshold now.
    pub fn gateway_level(&self) -> u8 {
        self.levels.read().unwrap_or_else(|e| e.into_inner()).gateway
    }

    /// The connectors' thresholds and which connector each converter
    /// (by its registry name) belongs to: the gateway's, at its start.
    pub fn set_sources(&self, connectors: Vec<(String, u8)>, converters: Vec<(String, String)>) {
        self.change(|l| {
            l.connectors = connectors.into_iter().collect();
            l.converters = converters.into_iter().collect();
        });
    }

    fn change(&self, f: impl FnOnce(&mut Levels)) {
        let verbosest = {
            let mut levels = self.levels.write().unwrap_or_else(|e| e.into_inner());
            f(&mut levels);
            levels.verbosest()
        };
        if self.verbosest.swap(verbosest, Ordering::Relaxed) != verbosest {
            // Callsites cached as off for this layer are asked again.
            tracing::callsite::rebuild_interest_cache();
        }
    }

    fn wants(&self, meta: &Metadata<'_>) -> bool {
        meta.is_event()
            && meta.target().starts_with("tbgw")
            && (*meta.level() == Level::ERROR || number(meta.level()) >= self.verbosest.load(Ordering::Relaxed))
    }

    fn record(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let (source, threshold) = {
            let levels = self.levels.read().unwrap_or_else(|e| e.into_inner());
            let source = levels.classify(meta.target(), &fields);
            let threshold = levels.threshold(&source);
            (source, threshold)
        };
        if *meta.level() == Level::ERROR {
            let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
            *errors.by_key.entry(source.errors_key()).or_default() += 1;
            errors.all += 1;
        }
        if number(meta.level()) < threshold {
            return;
        }
        let ts = tbgw_core::now_ms();
        let text = format_record(ts, meta, &fields);
        self.push(ts, &source, text);
    }

    fn push(&self, ts: i64, source: &Source, text: String) {
        let mut values = Map::new();
        if source.also_logs() {
            values.insert("LOGS".into(), Value::String(text.clone()));
        }
        values.insert(source.logs_key(), Value::String(text));
        let entry = json!({"ts": ts, "values": values}).to_string();
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= QUEUE {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            queue.push_back(entry);
        }
        self.ready.notify_one();
    }

    /// The next publish of records: a JSON array of at most `most` entries
    /// and `max_bytes` bytes (one entry at least) and how many it holds, or
    /// `None` when none wait.
    fn take(&self, most: usize, max_bytes: usize) -> Option<(String, usize)> {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            // Said through the queue itself, so that it reaches ThingsBoard.
            let text = format!("{dropped} log record(s) were not sent: the queue of {QUEUE} was full");
            let ts = tbgw_core::now_ms();
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let entry = json!({"ts": ts, "values": {"SERVICE_LOGS": text, "LOGS": text}}).to_string();
            queue.push_front(entry);
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut payload = String::from("[");
        let mut n = 0;
        while n < most {
            let Some(next) = queue.front() else { break };
            if n > 0 && payload.len() + 1 + next.len() + 1 > max_bytes {
                break;
            }
            if n > 0 {
                payload.push(',');
            }
            payload.push_str(next);
            queue.pop_front();
            n += 1;
        }
        payload.push(']');
        (n > 0).then_some((payload, n))
    }

    fn waiting(&self) -> bool {
        !self.queue.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// The error counts to send, when they changed since the last sent;
    /// `reset` starts every count again from 0 first (the keys stay, at 0).
    fn error_batch(&self, reset: bool) -> Option<String> {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if reset {
            errors.by_key.values_mut().for_each(|n| *n = 0);
            errors.all = 0;
        }
        let mut batch: Map<String, Value> = errors.by_key.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
        batch.insert("ALL_ERRORS_COUNT".into(), json!(errors.all));
        let unchanged = match &errors.sent {
            Some(sent) => *sent == batch,
            // Nothing to say until something went wrong.
            None => errors.all == 0,
        };
        if unchanged {
            return None;
        }
        let text = Value::Object(batch.clone()).to_string();
        errors.sent = Some(batch);
        Some(text)
    }
}

/// Send what the hub holds to ThingsBoard while the client is connected,
/// within the bounds, until `stop`. `max_payload` is the client's payload
/// limit.
pub async fn deliver(
    hub: &'static Hub,
    client: CommandSender,
    stats: Arc<ClientStats>,
    max_payload: usize,
    stop: CancellationToken,
) {
    let max_bytes = max_payload.clamp(MAX_RECORD + 256, MAX_PUBLISH);
    let pause = Duration::from_secs(1) / PUBLISHES_PER_SECOND;
    let mut errors_every = tokio::time::interval(ERRORS_EVERY);
    errors_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reset_at = Instant::now() + ERRORS_RESET;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hub.ready.notified() => {}
            _ = errors_every.tick() => {
                let reset = Instant::now() >= reset_at;
                if reset {
                    reset_at = Instant::now() + ERRORS_RESET;
                }
                if stats.is_connected()
                    && let Some(batch) = hub.error_batch(reset)
                {
                    let _ = client.send(Command::OwnTelemetry(batch));
                }
            }
        }
        while hub.waiting() {
            if !stats.is_connected() {
                // Records wait for ThingsBoard; look again in a while.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            let Some((payload, n)) = hub.take(PER_PUBLISH, max_bytes) else { break };
            if client.send(Command::OwnTelemetry(payload)).is_err() {
                // The client's queue is full or it stopped: these are lost,
                // and said to be with the next publish.
                hub.dropped.fetch_add(n as u64, Ordering::Relaxed);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The parts of a record the hub needs.
#[derive(Default)]
struct Fields {
    message: String,
    connector: Option<String>,
    converter: Option<String>,
    /// The other fields, ` key=value` each.
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "connector" => self.connector = Some(value.to_owned()),
            "converter" => self.converter = Some(value.to_owned()),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "connector" => self.connector = Some(format!("{value:?}")),
            "converter" => self.converter = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

/// A record in the Python gateway's remote format, at most [`MAX_RECORD`] bytes.
fn format_record(ts: i64, meta: &Metadata<'_>, fields: &Fields) -> String {
    let file = meta.file().map(|f| f.rsplit('/').next().unwrap_or(f)).unwrap_or("?");
    let module = file.strip_suffix(".rs").unwrap_or(file);
    let thread = std::thread::current();
    let mut text = format!(
        "{} - |{}|<{}> [{file}] - {module} {} - {} - {}{}",
        local_time(ts),
        python_name(meta.level()),
        thread.name().unwrap_or("thread"),
        meta.target(),
        meta.line().unwrap_or(0),
        fields.message,
        fields.rest,
    );
    const MARK: &str = " …(cut)";
    if text.len() > MAX_RECORD {
        let mut cut = MAX_RECORD - MARK.len();
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(MARK);
    }
    text
}

/// `2026-12-03 10:47:33,123` in the machine's time zone (Python's `asctime`).
fn local_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000) as libc::time_t;
    // SAFETY: localtime_r only reads `secs` and writes the `tm` it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("{ms} ms");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        ms.rem_euclid(1000)
    )
}

struct RemoteLayer {
    hub: &'static Hub,
}

impl<S: Subscriber> Layer<S> for RemoteLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        self.hub.record(event);
    }
}

struct RemoteFilter {
    hub: &'static Hub,
}

impl<S> Filter<S> for RemoteFilter {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        self.hub.wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.hub.wants(meta) { Interest::always() } else { Interest::never() }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(filter_of(self.hub.verbosest.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn leaked() -> &'static Hub {
        Box::leak(Box::default())
    }

    fn with_hub(hub: &'static Hub, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(layer(hub));
        tracing::subscriber::with_default(subscriber, f);
    }

    fn entries(hub: &Hub) -> Vec<Value> {
        let mut all = Vec::new();
        while let Some((p, _)) = hub.take(PER_PUBLISH, MAX_PUBLISH) {
            let Value::Array(a) = serde_json::from_str(&p).expect("an array") else { panic!("not an array: {p}") };
            all.extend(a);
        }
        all
    }

    #[test]
    fn levels_are_pythons() {
        assert_eq!(parse_level("debug"), Some(10));
        assert_eq!(parse_level(" WARNING "), Some(30));
        assert_eq!(parse_level("WARN"), Some(30));
        assert_eq!(parse_level("NONE"), Some(NONE));
        assert_eq!(parse_level("CRITICAL"), Some(50));
        assert_eq!(parse_level("LOUD"), None);
    }

    #[test]
    fn nothing_is_sent_until_a_level_is_set_and_then_by_source_and_threshold() {
        let hub = leaked();
        with_hub(hub, || {
            tracing::info!(target: "tbgw::service", "before any level");
            hub.set_gateway_level(20);
            hub.set_sources(
                vec![("Plant".into(), 30), ("Quiet".into(), NONE)],
                vec![("Plant/json".into(), "Plant".into())],
            );
            tracing::info!(target: "tbgw::service", answer = 42, "started");
            tracing::debug!(target: "tbgw::service", "too verbose");
            tracing::info!(target: "tbgw_store::fjall_store", "opened");
            tracing::info!(target: "tbgw_connector_mqtt::connector", connector = "Plant", "below its WARNING");
            tracing::warn!(target: "tbgw_connector_mqtt::connector", connector = %"Plant", "broker away");
            tracing::error!(target: "tbgw_connector_mqtt::connector", connector = "Quiet", "not sent, counted");
            tracing::warn!(target: "tbgw_wasm::host", converter = "Plant/json", "a guest's stderr");
            tracing::warn!(target: "tbgw_wasm::host", converter = "elsewhere", "no connector");
            tracing::warn!(target: "rumqttc::state", "not ours");
        });
        let got = entries(hub);
        let keys: Vec<Vec<&str>> =
            got.iter().map(|e| e["values"].as_object().expect("values").keys().map(String::as_str).collect()).collect();
        assert_eq!(
            keys,
            vec![
                vec!["LOGS", "SERVICE_LOGS"],
                vec!["LOGS", "STORAGE_LOGS"],
                vec!["Plant_LOGS"],
                vec!["Plant_converter_LOGS"],
                vec!["LOGS", "EXTENSION_LOGS"],
            ]
        );
        let first = got[0]["values"]["SERVICE_LOGS"].as_str().expect("text");
        assert!(first.contains(" - |INFO|<"), "{first}");
        assert!(first.contains("[remote_log.rs] - remote_log tbgw::service - "), "{first}");
        assert!(first.ends_with(" - started answer=42"), "{first}");
        assert_eq!(got[0]["values"]["LOGS"], got[0]["values"]["SERVICE_LOGS"]);
        assert!(got[0]["ts"].as_i64().is_some_and(|t| t > 1_700_000_000_000));
        assert!(got[2]["values"]["Plant_LOGS"].as_str().expect("text").contains("|WARNING|"));
        // The error was counted though not sent.
        let batch: Value = serde_json::from_str(&hub.error_batch(false).expect("an error to count")).expect("json");
        assert_eq!(batch, json!({"Quiet_ERRORS_COUNT": 1, "ALL_ERRORS_COUNT": 1}));
        assert_eq!(hub.error_batch(false), None, "unchanged counts are not sent again");
        let batch: Value = serde_json::from_str(&hub.error_batch(true).expect("reset")).expect("json");
        assert_eq!(batch, json!({"Quiet_ERRORS_COUNT": 0, "ALL_ERRORS_COUNT": 0}));
    }

    #[test]
    fn the_clients_own_records_stop_at_info() {
        let hub = leaked();
        with_hub(hub, || {
            hub.set_gateway_level(5);
            tracing::debug!(target: "tbgw_thingsboard::client", "published 3 events");
            tracing::info!(target: "tbgw_thingsboard::client", "connected");
            tracing::debug!(target: "tbgw::router", "a debug record of the service");
        });
        let got = entries(hub);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0]["values"]["CONNECTION_LOGS"].as_str().expect("text").ends_with("connected"));
        assert!(got[1]["values"]["SERVICE_LOGS"].as_str().expect("text").contains("|DEBUG|"));
    }

    #[test]
    fn the_queue_is_bounded_and_says_what_it_dropped() {
        let hub = leaked();
        with_hub(hub, || {
            hub.set_gateway_level(20);
            for i in 0..QUEUE + 5 {
                tracing::info!(target: "tbgw::service", "record {i}");
            }
            tracing::info!(target: "tbgw::service", "{}", "x".repeat(3 * MAX_RECORD));
        });
        let (first, n) = hub.take(PER_PUBLISH, MAX_PUBLISH).expect("records");
        assert_eq!(n, PER_PUBLISH);
        let first: Vec<Value> = serde_json::from_str(&first).expect("json");
        assert_eq!(first.len(), PER_PUBLISH);
        assert_eq!(first[0]["values"]["LOGS"], json!("6 log record(s) were not sent: the queue of 1000 was full"));
        assert!(first[1]["values"]["LOGS"].as_str().expect("text").ends_with("record 0"));
        let rest = entries(hub);
        assert_eq!(rest.len(), QUEUE - (PER_PUBLISH - 1), "the oldest are kept, the newest dropped");
    }

    #[test]
    fn a_long_record_is_cut_and_a_publish_kept_within_its_bytes() {
        let hub = leaked();
        with_hub(hub, || {
            hub.set_gateway_level(20);
            for _ in 0..3 {
                tracing::info!(target: "tbgw::service", "{}", "é".repeat(3 * MAX_RECORD));
            }
        });
        let (one, _) = hub.take(PER_PUBLISH, 2 * MAX_RECORD + 1000).expect("records");
        let one: Vec<Value> = serde_json::from_str(&one).expect("json");
        // Each entry carries its text twice (`SERVICE_LOGS` and `LOGS`).
        assert_eq!(one.len(), 1);
        let text = one[0]["values"]["SERVICE_LOGS"].as_str().expect("text");
        assert!(text.len() <= MAX_RECORD && text.ends_with("…(cut)"), "{} bytes", text.len());
        assert_eq!(entries(hub).len(), 2);
    }
}
