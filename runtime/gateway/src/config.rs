//! The gateway's configuration file: the ThingsBoard IoT Gateway's general
//! config (`tb_gateway.json` or `.yaml`), so that its users' files load
//! unchanged, plus an optional `tbgw` section for what only tbgw has.
//!
//! ```yaml
//! thingsboard:
//!   host: thingsboard.example.com
//!   port: 1883
//!   security: {type: accessToken, accessToken: YOUR_TOKEN}
//!   statistics: {enable: true, statsSendPeriodInSeconds: 60}
//! storage:
//!   type: fjall                 # or memory; the Python gateway's file and sqlite are refused
//!   data_folder_path: ./data/
//!   max_records_count: 1000000
//!   max_size_mb: 1024           # tbgw
//!   when_full: block            # tbgw: block | drop_oldest
//!   fsync: batch                # tbgw: batch | interval (with fsync_interval_ms)
//! connectors:
//!   - {type: mqtt, name: MQTT Broker Connector, configuration: mqtt.json}
//!   - {type: modbus, name: Modbus Connector, configuration: modbus.json}
//! tbgw:                         # optional, tbgw only
//!   workers: 2                  # converter threads
//!   cacheDir: ./data/cache      # compiled converters
//!   watchConverters: 1          # seconds between checks of .wasm files for hot swap; 0: off
//!   http: {listen: 127.0.0.1:9870}  # /metrics, /healthz, /readyz; off without it
//! ```
//!
//! Every problem is reported, each with its path
//! (`connectors[0].configuration.mapping[2].topicFilter: required`); keys of
//! the Python gateway's format that tbgw has no use for get one notice each.
//! A few environment variables override the file, as for the Python gateway:
//! `TB_GW_HOST`, `TB_GW_PORT`, `TB_GW_ACCESS_TOKEN`, `TB_GW_USERNAME`,
//! `TB_GW_PASSWORD`, `TB_GW_CLIENT_ID`, `TB_GW_CA_CERT`, `TB_GW_CERT`,
//! `TB_GW_PRIVATE_KEY`, `TB_GW_SECURITY_TYPE`.

use crate::pipeline::PipelineConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tbgw_core::config::{Diagnostics, Obj, join};
use tbgw_core::report::{self, Strategy};
use tbgw_core::setup::{ConnectorSetup, Site};
use tbgw_store::{DeadLetterFull, DeadLetterLimits, Durability, StoreLimits, WhenFull};
use tbgw_thingsboard::limits::{RateLimit, RateLimits, Scope};
use tbgw_thingsboard::{ClientConfig, Credentials, Secret, TlsFiles};

/// The whole gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file it was read from.
    pub file: PathBuf,
    pub thingsboard: ClientConfig,
    /// How often statistics go to ThingsBoard; `None`: not sent.
    pub statistics: Option<Duration>,
    pub storage: StorageConfig,
    pub connectors: Vec<ConnectorConfig>,
    pub pipeline: PipelineConfig,
    /// Where compiled converters are cached.
    pub cache_dir: Option<PathBuf>,
    /// How often converter files are checked for a new version to swap in
    /// (`tbgw.watchConverters`, seconds; zero: never).
    pub watch_converters: Duration,
    /// `thingsboard.reportStrategy`: the strategy of values whose
    /// connector, device or key sets none.
    pub report_strategy: Strategy,
    /// `thingsboard.handleDeviceRenaming` (default true): follow devices
    /// renamed in ThingsBoard (`gateway_device_renamed`).
    pub handle_device_renaming: bool,
    /// `tbgw.http`: where the HTTP listener (metrics, health) listens; `None`: off.
    pub http: Option<std::net::SocketAddr>,
    /// `tbgw.uploads`: where converters uploaded from ThingsBoard are kept
    /// ([`crate::uploads`]); `None`: uploads are refused.
    pub uploads: Option<PathBuf>,
    /// `thingsboard.remoteConfiguration` (default false): connectors managed
    /// from ThingsBoard's Gateways page ([`crate::remote_config`]).
    pub remote_configuration: bool,
    /// The document it was read from (what remote configuration shows).
    pub document: Value,
}

/// Where events wait for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub kind: StorageKind,
    pub limits: StoreLimits,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StorageKind {
    Memory,
    Fjall { path: PathBuf, durability: Durability },
}

/// A connector and its own configuration, read by its crate.
#[derive(Clone)]
pub struct ConnectorConfig {
    pub name: String,
    /// `connectors[i].configuration`, for messages.
    pub path: String,
    /// Its `type` (`mqtt`).
    pub kind: &'static str,
    pub setup: Arc<dyn ConnectorSetup>,
    /// Its remote logging threshold (a Python level, [`crate::remote_log`]):
    /// its `logLevel` (INFO when not set) when `enableRemoteLogging` is
    /// true, NONE otherwise.
    pub remote_log: u8,
    /// The file its `configuration` names (watched: an edit restarts this
    /// connector alone); `None` when the configuration is inline.
    pub file: Option<PathBuf>,
    /// Its own configuration as read: an edit that leaves it the same
    /// (reformatted, keys reordered) changes nothing.
    pub document: Value,
    /// Its `connectors[]` entry, where it is, and the directory relative
    /// paths resolve against: what [`ConnectorConfig::reread`] reads again.
    entry: Value,
    entry_path: String,
    base: PathBuf,
}

impl ConnectorConfig {
    /// This connector's configuration read again (its file as it is now),
    /// with its notices; every problem found, when it does not load.
    pub fn reread(&self) -> Result<(ConnectorConfig, Diagnostics), Diagnostics> {
        self.read(&self.entry)
    }

    /// This connector with `document` as its configuration (what
    /// ThingsBoard sent), checked as its file would be: the document is
    /// written beside the file (`<file>.new`) and read from there, so that
    /// relative paths resolve as in the file; [`Staged::commit`] renames it
    /// over the file, [`Staged::discard`] removes it. An inline
    /// configuration is checked in place and has no file to write.
    pub fn with_document(&self, document: &Value) -> Result<Staged, Diagnostics> {
        let mut entry = self.entry.clone();
        let staged = self.file.as_ref().map(|f| {
            let mut name = f.as_os_str().to_owned();
            name.push(".new");
            PathBuf::from(name)
        });
        let value = match &staged {
            Some(path) => {
                let text = serde_json::to_string_pretty(document).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text + "\n") {
                    let mut d = Diagnostics::default();
                    d.error(&self.path, format!("cannot write {}: {e}", path.display()));
                    return Err(d);
                }
                Value::String(path.display().to_string())
            }
            None => document.clone(),
        };
        if let Some(o) = entry.as_object_mut() {
            o.insert("configuration".into(), value);
        }
        match self.read(&entry) {
            Ok((mut config, _)) => {
                config.file = self.file.clone();
                config.entry = self.entry.clone();
                Ok(Staged { config, staged, file: self.file.clone() })
            }
            Err(d) => {
                if let Some(path) = &staged {
                    let _ = std::fs::remove_file(path);
                }
                Err(d)
            }
        }
    }

    fn read(&self, entry: &Value) -> Result<(ConnectorConfig, Diagnostics), Diagnostics> {
        let mut d = Diagnostics::default();
        match connector(&mut d, &self.entry_path, entry, &self.base) {
            Some(c) if d.is_ok() => Ok((c, d)),
            _ => Err(d),
        }
    }
}

impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorConfig").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// A connector configuration checked and waiting to be kept
/// ([`ConnectorConfig::with_document`]).
pub struct Staged {
    pub config: ConnectorConfig,
    staged: Option<PathBuf>,
    file: Option<PathBuf>,
}

impl Staged {
    /// The new configuration becomes the file's (one rename: the file is
    /// the old one or the new one, never a part).
    pub fn commit(&self) -> std::io::Result<()> {
        match (&self.staged, &self.file) {
            (Some(staged), Some(file)) => std::fs::rename(staged, file),
            _ => Ok(()),
        }
    }

    /// The file stays as it was.
    pub fn discard(&self) {
        if let Some(staged) = &self.staged {
            let _ = std::fs::remove_file(staged);
        }
    }
}

/// Read a config document from text (JSON, or YAML when `yaml`).
pub fn parse_text(text: &str, yaml: bool) -> Result<Value, String> {
    if yaml {
        serde_norway::from_str::<Value>(text).map_err(|e| format!("not valid YAML: {e}"))
    } else {
        serde_json::from_str::<Value>(text).map_err(|e| format!("not valid JSON: {e}"))
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Read a config file.
pub fn read_document(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_text(&text, is_yaml(path)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Load and check the gateway configuration in `path`. Returns it with the
/// notices, or every problem found.
pub fn load(path: &Path) -> Result<(GatewayConfig, Diagnostics), Diagnostics> {
    let mut d = Diagnostics::default();
    let doc = match read_document(path) {
        Ok(doc) => doc,
        Err(e) => {
            d.error("", e);
            return Err(d);
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = from_document(&doc, path, &base, &mut d);
    match config {
        Some(c) if d.is_ok() => Ok((c, d)),
        _ => Err(d),
    }
}

/// Read the configuration from a parsed document; relative paths resolve
/// against `base`.
pub fn from_document(doc: &Value, file: &Path, base: &Path, d: &mut Diagnostics) -> Option<GatewayConfig> {
    let mut root = Obj::new(d, "", doc)?;
    let (thingsboard, statistics, report_strategy) = match root.object(d, "thingsboard") {
        Some(tb) => thingsboard(tb, base, d),
        None => {
            if !root.has("thingsboard") {
                d.error("thingsboard", "required");
            }
            (None, None, Strategy::OnReceived)
        }
    };
    let storage = match root.object(d, "storage") {
        Some(s) => storage(s, base, d),
        None => Some(StorageConfig {
            kind: StorageKind::Memory,
            limits: StoreLimits {
                max_records: 100_000,
                max_bytes: 256 << 20,
                when_full: WhenFull::Block,
                dead_letters: DeadLetterLimits::default(),
            },
        }),
    };
    let mut connectors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (path, item) in root.list(d, "connectors") {
        if let Some(c) = connector(d, &path, item, base) {
            if names.insert(c.name.clone()) {
                connectors.push(c);
            } else {
                d.error(join(&path, "name"), "another connector has this name; names must be unique");
            }
        }
    }
    let mut http = None;
    let mut uploads = None;
    let (pipeline, cache_dir, watch_converters) = match root.object(d, "tbgw") {
        Some(mut t) => {
            let mut p = PipelineConfig::default();
            if let Some(w) = t.uint(d, "workers", 1..=64) {
                p.workers = w as usize;
            }
            if let Some(b) = t.uint(d, "maxBatch", 1..=10_000) {
                p.max_batch = b as usize;
            }
            if let Some(q) = t.uint(d, "queue", 1..=1_000_000) {
                p.queue = q as usize;
            }
            let cache = t.string(d, "cacheDir").map(|c| base.join(c));
            let watch = t.uint(d, "watchConverters", 0..=3600).unwrap_or(1);
            uploads = t.string(d, "uploads").map(|u| base.join(u));
            if let Some(mut h) = t.object(d, "http") {
                let listen = h.string(d, "listen").unwrap_or(crate::http::DEFAULT_LISTEN);
                match listen.parse::<std::net::SocketAddr>() {
                    Ok(addr) => http = Some(addr),
                    Err(_) => {
                        d.error(h.field("listen"), format!("`{listen}` is not an address and port like 127.0.0.1:9870"))
                    }
                }
                h.finish(d);
            }
            t.finish(d);
            (p, cache, Duration::from_secs(watch))
        }
        None => (PipelineConfig::default(), None, Duration::from_secs(1)),
    };
    root.unused(
        d,
        &[
            ("grpc", "tbgw has no gRPC connectors"),
            ("logs", "set logging with RUST_LOG"),
            ("logLevel", "set logging with RUST_LOG"),
        ],
    );
    root.finish(d);
    let flag = |d: &mut Diagnostics, key: &str, default: bool| match doc.pointer(&format!("/thingsboard/{key}")) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            d.error(format!("thingsboard.{key}"), format!("expected true or false, found {other}"));
            default
        }
    };
    let handle_device_renaming = flag(d, "handleDeviceRenaming", true);
    let remote_configuration = flag(d, "remoteConfiguration", false);
    Some(GatewayConfig {
        file: file.to_owned(),
        thingsboard: thingsboard?,
        statistics,
        storage: storage?,
        connectors,
        pipeline,
        cache_dir,
        watch_converters,
        report_strategy,
        handle_device_renaming,
        http,
        uploads,
        remote_configuration,
        document: doc.clone(),
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

fn thingsboard(mut tb: Obj, base: &Path, d: &mut Diagnostics) -> (Option<ClientConfig>, Option<Duration>, Strategy) {
    let host = env("TB_GW_HOST").or_else(|| tb.required_string(d, "host").map(str::to_owned));
    let port = match env("TB_GW_PORT") {
        Some(p) => p.parse::<u16>().ok().or_else(|| {
            d.error("TB_GW_PORT", format!("`{p}` is not a port"));
            None
        }),
        None => tb.uint(d, "port", 1..=65535).map(|p| p as u16).or(Some(1883)),
    };
    let qos = tb.uint(d, "qos", 0..=1);
    if qos == Some(0) {
        d.notice(
            tb.field("qos"),
            "tbgw always publishes with QoS 1: an event leaves its store only when ThingsBoard confirms it",
        );
    }
    let max_payload = tb.uint(d, "maxPayloadSizeBytes", 1024..=(64 << 20)).map(|n| n as usize);
    let statistics = match tb.object(d, "statistics") {
        Some(mut s) => {
            let enabled = s.bool(d, "enable").unwrap_or(true);
            let period = s.uint(d, "statsSendPeriodInSeconds", 1..=86_400).unwrap_or(60);
            s.unused(
                d,
                &[
                    ("customStatsSendPeriodInSeconds", "tbgw runs no custom statistics commands"),
                    ("configuration", "tbgw runs no custom statistics commands"),
                    ("commands", "tbgw runs no custom statistics commands"),
                ],
            );
            s.finish(d);
            enabled.then(|| Duration::from_secs(period))
        }
        None => Some(Duration::from_secs(60)),
    };
    // Read by `from_document` (`handle_device_renaming`).
    tb.allow(&["handleDeviceRenaming"]);
    let report_strategy = match tb.get("reportStrategy") {
        Some(v) => report::parse(d, &tb.field("reportStrategy"), v).unwrap_or_default(),
        None => Strategy::OnReceived,
    };
    // Read with the whole document (`GatewayConfig::remote_configuration`).
    tb.allow(&["remoteConfiguration"]);
    let credentials = security(&mut tb, base, d);
    let rate_limits = rate_limits(&mut tb, host.as_deref().unwrap_or(""), d);
    tb.unused(
        d,
        &[
            ("remoteShell", "tbgw has no remote shell"),
            ("latencyDebugMode", "not implemented"),
            ("deviceFiltering", "not implemented yet"),
            ("minPackSendDelayMS", "tbgw packs as much as each publish can hold, at once"),
            ("minPackSizeToSend", "tbgw packs as much as each publish can hold, at once"),
            ("checkConnectorsConfigurationInSeconds", "tbgw checks connector files every tbgw.watchConverters seconds"),
            ("checkingDeviceActivity", "not implemented yet"),
        ],
    );
    if tb.has("provisioning") {
        tb.get("provisioning");
        d.error(
            tb.field("provisioning"),
            "device provisioning is not supported: give the gateway's credentials in security",
        );
    }
    tb.finish(d);
    let (Some(host), Some(port), Some((credentials, client_id, tls))) = (host, port, credentials) else {
        return (None, statistics, report_strategy);
    };
    let mut c = ClientConfig::new(host, port, credentials);
    c.client_id = client_id.unwrap_or_else(|| format!("tbgw-{}", hostname()));
    c.tls = tls;
    if let Some(max) = max_payload {
        c.max_payload_bytes = max;
    }
    (c.gateway_limits, c.own_limits) = rate_limits;
    (Some(c), statistics, report_strategy)
}

/// The Python gateway's rate limit keys: which limit each sets, and the
/// environment variables that override it (the first that is set wins).
const RATE_LIMIT_KEYS: [(&str, Scope, Kind, &[&str]); 6] = [
    ("messagesRateLimits", Scope::Own, Kind::Messages, &["TB_GW_MESSAGES_RATE_LIMITS", "TB_GW_RATE_LIMITS"]),
    ("rateLimits", Scope::Own, Kind::Telemetry, &["TB_GW_RATE_LIMITS"]),
    ("dpRateLimits", Scope::Own, Kind::Datapoints, &["TB_GW_DP_RATE_LIMITS"]),
    (
        "deviceMessagesRateLimits",
        Scope::Gateway,
        Kind::Messages,
        &["TB_GW_DEVICE_MESSAGES_RATE_LIMIT", "TB_GW_RATE_LIMITS"],
    ),
    ("deviceRateLimits", Scope::Gateway, Kind::Telemetry, &["TB_GW_DEVICE_RATE_LIMITS", "TB_GW_RATE_LIMITS"]),
    ("deviceDpRateLimits", Scope::Gateway, Kind::Datapoints, &["TB_GW_DEVICE_DP_RATE_LIMITS", "TB_GW_DP_RATE_LIMITS"]),
];

#[derive(Clone, Copy)]
enum Kind {
    Messages,
    Telemetry,
    Datapoints,
}

/// The rate limits the config sets (child devices', the gateway's own), for
/// a ThingsBoard that does not announce its own. The Python gateway's keys,
/// values and environment variables: `"10:1,300:60"`, `"0:0"` or empty for
/// none, and its `DEFAULT_*` names, which mean ThingsBoard Cloud's limits on
/// its hosts and none elsewhere.
fn rate_limits(tb: &mut Obj, host: &str, d: &mut Diagnostics) -> (RateLimits, RateLimits) {
    let (mut gateway, mut own) = (RateLimits::default(), RateLimits::default());
    for (key, scope, kind, vars) in RATE_LIMIT_KEYS {
        let from_env = vars.iter().find_map(|v| env(v).map(|value| (v.to_string(), value)));
        let from_file = tb.string(d, key).map(|v| (tb.field(key), v.to_owned()));
        let Some((origin, spec)) = from_env.or(from_file) else { continue };
        let cloud = host.contains("thingsboard.cloud")
            || (host.contains("tb") && host.contains("cloud"))
            || host.contains("demo.thingsboard.io");
        let spec = match spec.trim() {
            "DEFAULT_TELEMETRY_RATE_LIMIT" | "DEFAULT_MESSAGES_RATE_LIMIT" if cloud => "10:1,60:60",
            "DEFAULT_TELEMETRY_DP_RATE_LIMIT" if cloud => "10:1,300:60",
            "DEFAULT_TELEMETRY_RATE_LIMIT" | "DEFAULT_MESSAGES_RATE_LIMIT" | "DEFAULT_TELEMETRY_DP_RATE_LIMIT" => "",
            other => other,
        };
        match RateLimit::parse(spec) {
            Ok(limit) => {
                let set = match scope {
                    Scope::Gateway => &mut gateway,
                    Scope::Own => &mut own,
                };
                match kind {
                    Kind::Messages => set.messages = limit,
                    Kind::Telemetry => set.telemetry_messages = limit,
                    Kind::Datapoints => set.telemetry_datapoints = limit,
                }
            }
            Err(e) => d.error(origin, format!("{e} (e.g. \"10:1,300:60\": 10 a second and 300 a minute)")),
        }
    }
    (gateway, own)
}

type Security = (Credentials, Option<String>, Option<TlsFiles>);

fn security(tb: &mut Obj, base: &Path, d: &mut Diagnostics) -> Option<Security> {
    let Some(mut s) = tb.object(d, "security") else {
        if !tb.has("security") {
            d.error(tb.field("security"), "required: the gateway device's credentials");
        }
        return None;
    };
    let text = |s: &mut Obj, d: &mut Diagnostics, key: &'static str, var: &str| {
        env(var).or_else(|| s.string(d, key).map(str::to_owned))
    };
    let token = text(&mut s, d, "accessToken", "TB_GW_ACCESS_TOKEN");
    let username = text(&mut s, d, "username", "TB_GW_USERNAME");
    let password = text(&mut s, d, "password", "TB_GW_PASSWORD");
    let client_id = text(&mut s, d, "clientId", "TB_GW_CLIENT_ID");
    let ca = text(&mut s, d, "caCert", "TB_GW_CA_CERT").map(|p| base.join(p));
    let cert = text(&mut s, d, "cert", "TB_GW_CERT").map(|p| base.join(p));
    let key = text(&mut s, d, "privateKey", "TB_GW_PRIVATE_KEY").map(|p| base.join(p));
    let tls_flag = s.bool(d, "tls").unwrap_or(false);
    let kind = env("TB_GW_SECURITY_TYPE")
        .or_else(|| s.string(d, "type").map(str::to_owned))
        .unwrap_or_else(|| if token.is_some() { "accessToken".into() } else { String::new() });
    let tls = |needed: bool| {
        (needed || tls_flag || ca.is_some()).then(|| TlsFiles {
            ca_cert: ca.clone(),
            client_cert: cert.clone(),
            private_key: key.clone(),
        })
    };
    let field = s.field("type");
    let result = match kind.as_str() {
        "accessToken" | "tlsAccessToken" => match token {
            Some(t) => Some((Credentials::AccessToken(Secret::new(t)), client_id, tls(kind == "tlsAccessToken"))),
            None => {
                d.error(s.field("accessToken"), "required for token security");
                None
            }
        },
        "usernamePassword" => {
            if username.is_none() && client_id.is_none() {
                d.error(s.field("username"), "usernamePassword needs a username or a clientId");
            }
            Some((Credentials::Basic { username, password: password.map(Secret::new) }, client_id, tls(false)))
        }
        "tlsPrivateKey" | "x509Certificate" | "x509" => {
            if cert.is_none() || key.is_none() {
                d.error(s.field("cert"), "X.509 security needs cert and privateKey");
            }
            Some((Credentials::None, client_id, tls(true)))
        }
        "" => {
            d.error(field, "required: accessToken, tlsAccessToken, usernamePassword or tlsPrivateKey");
            None
        }
        other => {
            d.error(field, format!("unknown security type `{other}`; expected accessToken, tlsAccessToken, usernamePassword or tlsPrivateKey"));
            None
        }
    };
    s.finish(d);
    result
}

/// `storage.dead_letters`: `{max_records_count, max_size_mb, when_full:
/// drop_oldest | drop_newest}`, the bounds of the messages kept because they
/// failed to convert.
fn dead_letter_limits(mut o: Obj, d: &mut Diagnostics) -> DeadLetterLimits {
    let default = DeadLetterLimits::default();
    let limits = DeadLetterLimits {
        max_records: o.uint(d, "max_records_count", 0..=u64::MAX).unwrap_or(default.max_records),
        max_bytes: o.uint(d, "max_size_mb", 1..=1 << 30).map_or(default.max_bytes, |m| m << 20),
        when_full: match o.string(d, "when_full") {
            None | Some("drop_oldest") => DeadLetterFull::DropOldest,
            Some("drop_newest") => DeadLetterFull::DropNewest,
            Some(other) => {
                d.error(o.field("when_full"), format!("`{other}`: expected drop_oldest or drop_newest"));
                default.when_full
            }
        },
    };
    o.finish(d);
    limits
}

fn storage(mut s: Obj, base: &Path, d: &mut Diagnostics) -> Option<StorageConfig> {
    let kind = s.string(d, "type").unwrap_or("memory").to_owned();
    let records = s.uint(d, "max_records_count", 1..=u64::MAX);
    let size_mb = s.uint(d, "max_size_mb", 1..=1 << 30);
    let when_full = match s.string(d, "when_full") {
        None | Some("block") => WhenFull::Block,
        Some("drop_oldest") => WhenFull::DropOldest,
        Some(other) => {
            d.error(s.field("when_full"), format!("`{other}`: expected block or drop_oldest"));
            WhenFull::Block
        }
    };
    let dead_letters = match s.object(d, "dead_letters") {
        Some(o) => dead_letter_limits(o, d),
        None => DeadLetterLimits::default(),
    };
    let folder = s.string(d, "data_folder_path").map(|p| base.join(p));
    let fsync = s.string(d, "fsync").unwrap_or("batch").to_owned();
    let interval = s.uint(d, "fsync_interval_ms", 1..=600_000).unwrap_or(100);
    let python_file_keys = "a key of the Python gateway's file and sqlite storage";
    s.unused(
        d,
        &[
            ("read_records_count", "tbgw reads as much as each publish can hold"),
            ("max_read_records_count", python_file_keys),
            ("max_file_count", python_file_keys),
            ("max_records_per_file", python_file_keys),
            ("data_file_path", python_file_keys),
            ("messages_ttl_check_in_hours", python_file_keys),
            ("messages_ttl_in_days", python_file_keys),
        ],
    );
    let result = match kind.as_str() {
        "memory" => {
            if s.has("data_folder_path") {
                d.notice(s.field("data_folder_path"), "not used by the memory storage");
            }
            Some(StorageConfig {
                kind: StorageKind::Memory,
                limits: StoreLimits {
                    max_records: records.unwrap_or(100_000),
                    max_bytes: size_mb.map_or(256 << 20, |m| m << 20),
                    when_full,
                    dead_letters,
                },
            })
        }
        "fjall" => {
            let durability = match fsync.as_str() {
                "batch" => Some(Durability::PerBatch),
                "interval" => Some(Durability::Interval(Duration::from_millis(interval))),
                other => {
                    d.error(s.field("fsync"), format!("`{other}`: expected batch or interval"));
                    None
                }
            };
            durability.map(|durability| StorageConfig {
                kind: StorageKind::Fjall { path: folder.unwrap_or_else(|| base.join("data")), durability },
                limits: StoreLimits {
                    max_records: records.unwrap_or(1_000_000),
                    max_bytes: size_mb.map_or(1 << 30, |m| m << 20),
                    when_full,
                    dead_letters,
                },
            })
        }
        "file" | "sqlite" => {
            d.error(
                s.field("type"),
                format!(
                    "`{kind}` storage is the Python gateway's; use `fjall` (durable, in data_folder_path) or `memory`"
                ),
            );
            None
        }
        other => {
            d.error(s.field("type"), format!("unknown storage type `{other}`; expected fjall or memory"));
            None
        }
    };
    s.finish(d);
    result
}

fn connector(d: &mut Diagnostics, path: &str, item: &Value, base: &Path) -> Option<ConnectorConfig> {
    let mut c = Obj::new(d, path, item)?;
    let kind = c.required_string(d, "type").map(str::to_ascii_lowercase);
    let name = c.required_string(d, "name").map(str::to_owned);
    let conf_path = c.field("configuration");
    let mut conf_file = None;
    let document = match c.get("configuration") {
        Some(Value::String(file)) => {
            let file = base.join(file);
            conf_file = Some(file.clone());
            match read_document(&file) {
                Ok(doc) => Some((doc, file.parent().map(Path::to_path_buf).unwrap_or_default())),
                Err(e) => {
                    d.error(&conf_path, e);
                    None
                }
            }
        }
        Some(doc @ Value::Object(_)) => Some((doc.clone(), base.to_owned())),
        Some(other) => {
            d.error(&conf_path, format!("expected a file name or an object, found {}", tbgw_core::config::kind(other)));
            None
        }
        None => {
            d.error(&conf_path, "required: a file name (relative to this file) or the configuration itself");
            None
        }
    };
    c.unused(
        d,
        &[
            ("id", "tbgw names connectors by `name`"),
            ("class", "tbgw's connectors are built in"),
            ("configurationJson", "tbgw reads `configuration`"),
        ],
    );
    let entry_logging = remote_logging(d, &mut c);
    c.finish(d);
    // Read the configuration even when the name is missing, so that its
    // own problems are reported too.
    let (kind, (document, conf_base)) = (kind?, document?);
    let mut inner = Diagnostics::default();
    let parse_name = name.clone().unwrap_or_else(|| "connector".into());
    let Some(connector) = crate::connectors::kind(&kind) else {
        d.error(
            join(path, "type"),
            format!("the `{kind}` connector is not available yet; this tbgw has: {}", crate::connectors::names()),
        );
        return None;
    };
    let setup = connector.parse(&document, &Site { name: &parse_name, base_dir: &conf_base }, &mut inner);
    // The Python gateway reads them in the connector's own configuration;
    // its remote configuration puts them beside it: either place, the
    // configuration's own first.
    let own_logging = match document.is_object().then(|| Obj::new(&mut inner, "", &document)).flatten() {
        Some(mut o) => remote_logging(&mut inner, &mut o),
        // Not an object: the connector said so.
        None => (None, None),
    };
    d.absorb(&conf_path, inner);
    let enabled = own_logging.0.or(entry_logging.0).unwrap_or(false);
    let level = own_logging.1.or(entry_logging.1).unwrap_or(crate::remote_log::INFO);
    Some(ConnectorConfig {
        name: name?,
        path: conf_path,
        kind: connector.kind(),
        setup: Arc::from(setup?),
        remote_log: if enabled { level } else { crate::remote_log::NONE },
        file: conf_file,
        document,
        entry: item.clone(),
        entry_path: path.to_owned(),
        base: base.to_owned(),
    })
}

/// A connector's `enableRemoteLogging` and `logLevel`, where given.
fn remote_logging(d: &mut Diagnostics, o: &mut Obj<'_>) -> (Option<bool>, Option<u8>) {
    let enabled = o.bool(d, "enableRemoteLogging");
    let level = o.string(d, "logLevel").and_then(|name| match crate::remote_log::parse_level(name) {
        Some(level) => Some(level),
        None => {
            d.error(
                o.field("logLevel"),
                format!("`{name}` is not a level; expected one of {}", crate::remote_log::LEVEL_NAMES),
            );
            None
        }
    });
    (enabled, level)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (Option<GatewayConfig>, Diagnostics) {
        let doc = parse_text(yaml, true).unwrap();
        let mut d = Diagnostics::default();
        let c = from_document(&doc, Path::new("/etc/tbgw/tb_gateway.yaml"), Path::new("/etc/tbgw"), &mut d);
        (c, d)
    }

    #[test]
    fn the_http_listener_is_off_by_default_and_on_loopback_when_on() {
        let base = "thingsboard: {host: tb, security: {type: accessToken, accessToken: T}}\n";
        let (c, _) = check(base);
        assert_eq!(c.expect("config").http, None);
        let (c, d) = check(&format!("{base}tbgw: {{http: {{}}}}\n"));
        assert!(d.is_ok(), "{:?}", d.errors);
        assert_eq!(c.expect("config").http, Some("127.0.0.1:9870".parse().unwrap()));
        let (_, d) = check(&format!("{base}tbgw: {{http: {{listen: \"localhost\"}}}}\n"));
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        assert_eq!(d.errors[0].path, "tbgw.http.listen");
    }

    #[test]
    fn rate_limits_of_the_config_and_their_errors() {
        let (c, d) = check(
            "thingsboard: {host: tb.example.com, security: {type: accessToken, accessToken: T}, \
             deviceRateLimits: \"100:1,3000:60\", deviceDpRateLimits: \"2000:1\", rateLimits: DEFAULT_TELEMETRY_RATE_LIMIT, \
             dpRateLimits: \"0:0\"}\n",
        );
        assert!(d.is_ok(), "{:?}", d.errors);
        let tb = c.expect("config").thingsboard;
        assert_eq!(tb.gateway_limits.largest_publish(), (Some(80), Some(1600)));
        assert!(!tb.gateway_limits.messages.is_limited());
        assert!(!tb.own_limits.is_limited(), "DEFAULT_* means none off ThingsBoard Cloud, 0:0 none");
        let (_, d) = check(
            "thingsboard: {host: tb, security: {type: accessToken, accessToken: T}, deviceDpRateLimits: \"2000/s\"}\n",
        );
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        assert_eq!(d.errors[0].path, "thingsboard.deviceDpRateLimits");
        assert!(d.errors[0].message.contains("2000/s"), "{}", d.errors[0].message);
    }

    #[test]
    fn the_python_default_file_loads_with_notices() {
        let text = include_str!("../tests/data/tb_gateway_python_default.json");
        let doc = parse_text(text, false).unwrap();
        let mut d = Diagnostics::default();
        let c = from_document(&doc, Path::new("/x/tb_gateway.json"), Path::new("/x"), &mut d).expect("config");
        assert!(d.is_ok(), "{:?}", d.errors);
        assert_eq!(c.thingsboard.host, "thingsboard.cloud");
        assert_eq!(c.thingsboard.max_payload_bytes, 8196);
        assert!(matches!(c.storage.kind, StorageKind::Memory));
        assert_eq!(c.storage.limits.max_records, 100_000);
        let noticed: Vec<&str> = d.notices.iter().map(|n| n.path.as_str()).collect();
        for key in ["thingsboard.remoteShell", "storage.max_file_count", "grpc"] {
            assert!(noticed.contains(&key), "no notice for {key}: {noticed:?}");
        }
        // Its rate limits are read: `DEFAULT_*` on thingsboard.cloud are
        // the cloud's 10:1,60:60 (at 80%: 8 a second, 48 a minute).
        assert!(!noticed.iter().any(|n| n.contains("RateLimits") || n.contains("rateLimits")), "{noticed:?}");
        let tb = &c.thingsboard;
        assert_eq!(tb.gateway_limits.telemetry_messages.smallest_capacity(), Some(8));
        assert_eq!(tb.gateway_limits.largest_publish(), (Some(8), Some(8)));
        assert_eq!(tb.own_limits.messages.smallest_capacity(), Some(8));
        // Its report strategy is read (ON_RECEIVED: every value).
        assert_eq!(c.report_strategy, Strategy::OnReceived);
        assert!(!noticed.iter().any(|n| n.starts_with("thingsboard.reportStrategy")), "{noticed:?}");
        let (c, d) = check(
            "thingsboard: {host: tb, security: {type: accessToken, accessToken: T}, \
             reportStrategy: {type: ON_CHANGE_OR_REPORT_PERIOD, reportPeriod: 30000}}\n",
        );
        assert!(d.is_ok(), "{:?}", d.errors);
        assert_eq!(c.map(|c| c.report_strategy), Some(Strategy::OnChangeOrReportPeriod(30_000)));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let (_, d) = check(
            "thingsboard: {hots: x, port: 99999, security: {type: tokn}}\n\
             storage: {type: sqlite}\n\
             connectors:\n  - {type: snmp, name: m, configuration: {}}\n  - {type: mqtt, configuration: {broker: {host: h}, mapping: []}}\n",
        );
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        for e in [
            "thingsboard.host: required",
            "thingsboard.port: expected a whole number from 1 to 65535, found 99999",
            "thingsboard.security.type: unknown security type `tokn`; expected accessToken, tlsAccessToken, usernamePassword or tlsPrivateKey",
            "thingsboard.hots: unknown key; did you mean `host`?",
            "storage.type: `sqlite` storage is the Python gateway's; use `fjall` (durable, in data_folder_path) or `memory`",
            "connectors[0].type: the `snmp` connector is not available yet; this tbgw has: mqtt, modbus, can, opcua, ble",
            "connectors[1].name: required",
            "connectors[1].configuration.mapping: no mapping: the connector would receive nothing",
        ] {
            assert!(errors.contains(&e.to_owned()), "missing `{e}` in {errors:#?}");
        }
    }

    #[test]
    fn fjall_storage_and_tls_token_security() {
        let (c, d) = check(
            "thingsboard: {host: tb, port: 8883, security: {type: tlsAccessToken, accessToken: T, caCert: ca.pem}}\n\
             storage: {type: fjall, data_folder_path: ./data/, max_size_mb: 10, when_full: drop_oldest, fsync: interval, fsync_interval_ms: 50}\n\
             tbgw: {workers: 3}\n",
        );
        assert!(d.is_ok(), "{:?}", d.errors);
        let c = c.unwrap();
        assert_eq!(
            c.storage.kind,
            StorageKind::Fjall {
                path: "/etc/tbgw/./data/".into(),
                durability: Durability::Interval(Duration::from_millis(50))
            }
        );
        assert_eq!(
            c.storage.limits,
            StoreLimits {
                max_records: 1_000_000,
                max_bytes: 10 << 20,
                when_full: WhenFull::DropOldest,
                dead_letters: DeadLetterLimits::default()
            }
        );
        assert_eq!(c.thingsboard.tls.unwrap().ca_cert, Some("/etc/tbgw/ca.pem".into()));
        assert_eq!(c.pipeline.workers, 3);
    }
}
