//! Remote configuration, as ThingsBoard's Gateways page does it with the
//! Python gateway 3.8.5 (`thingsboard.remoteConfiguration: true`; off by
//! default): the shapes of its `tb_gateway_remote_configurator.py`, the
//! decisions tbgw's own.
//!
//! - **At every connection** the gateway publishes its running
//!   configuration as client attributes: `general_configuration`,
//!   `storage_configuration`, `grpc_configuration`, `logs_configuration`
//!   (each with `ts`), `active_connectors` (names), `Version`, and one
//!   attribute per connector, named after it: `{name, type, configuration,
//!   configurationJson, logLevel, enableRemoteLogging, ts}`. Then it asks
//!   for the shared ones ([`SHARED_KEYS`] and each connector's name).
//! - **A connector's attribute** (pushed, or the answer to that request):
//!   its `configurationJson`, with `logLevel` and `enableRemoteLogging`
//!   from beside it, is compared with what the connector runs, as JSON
//!   values (keys in any order), without `ts` and the keys ThingsBoard adds
//!   (`name`, `id`, `configVersion`). The same: nothing restarts, nothing
//!   is written ([`Decision::Unchanged`]). Different: checked as its file
//!   would be ([`crate::config::ConnectorConfig::with_document`]); refused
//!   with every problem as the client attribute `<name>_CONFIG_ERROR` and
//!   in the log, the running connector and its file untouched; accepted:
//!   that connector alone restarts with it, the file is replaced in one
//!   rename, and the attribute is echoed back unchanged, so the page shows
//!   it in sync. A connector that has not connected 15 s later goes back to
//!   the configuration before, file included, and says so in
//!   `<name>_CONFIG_ERROR` ([`crate::service::PROBATION`]).
//! - **`active_connectors`**: a running connector the list leaves out
//!   stops; one stopped so that the list names again starts with the
//!   configuration it had.
//! - **`general_configuration`, `storage_configuration`, …**: never restart
//!   a connector nor reopen the store. tbgw reads them from its file at
//!   start; one pushed that differs is not applied, and the log says so.
//! - Each decision is one log line of target `tbgw::audit` (`noop`,
//!   `apply`, `reject`, `rollback`, `stop`, `start`) naming the keys that
//!   changed; values are not logged (a configuration holds passwords).
//!
//! A plain MQTT broker standing in for ThingsBoard (the tests') sends the
//! gateway its own client attributes back as if they were shared ones,
//! sometimes late (a new session's publishes wait up to 5 s for
//! ThingsBoard's limits), after newer ones. Each publish is therefore
//! recognised once when it comes back, within 30 s; an echo is sent only
//! when it differs from the last one; and `active_connectors`, which is
//! the same applied twice, is not told apart at all. ThingsBoard itself
//! sends no client attribute back.

use crate::config::{ConnectorConfig, GatewayConfig};
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;

/// The Python gateway's version whose configuration format tbgw speaks,
/// sent as `Version`: the Gateways page chooses its forms by it.
pub const PYTHON_VERSION: &str = "3.8.5";
/// The gateway's shared attributes asked for at every connection, besides
/// each connector's.
pub const SHARED_KEYS: [&str; 5] =
    ["general_configuration", "storage_configuration", "grpc_configuration", "logs_configuration", "active_connectors"];
/// The id of the attribute request made at each connection (the client's
/// own use the session numbers below it).
pub const REQUEST_ID_BASE: u64 = 1 << 32;
const AUDIT: &str = "tbgw::audit";
/// Keys ThingsBoard puts in a connector's `configurationJson` that are not
/// its configuration.
const NOT_CONFIGURATION: [&str; 6] = ["ts", "name", "id", "configVersion", "logLevel", "enableRemoteLogging"];

/// What the gateway decided about one pushed attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    Applied,
    Rejected(String),
}

/// How long a publish of the gateway's may take to come back from a plain
/// broker (the client holds a new session's publishes up to 5 s for
/// ThingsBoard's limits).
const OWN_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// What remote configuration keeps between attributes.
#[derive(Default)]
pub struct RemoteConfig {
    /// What was published last per key (an echo goes only when it differs).
    last: HashMap<String, Json>,
    /// Publishes a plain broker may still send back: each is recognised
    /// once, within [`OWN_FOR`]. ThingsBoard sends none back; a push equal
    /// to one of them (the same `ts`, or the same `active_connectors`)
    /// changes nothing anyway.
    pending: Vec<(std::time::Instant, String, Json)>,
    /// The client's session count when the configuration was last sent.
    pub sessions: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn with_ts(v: Option<&Json>, ts: u64) -> Json {
    let mut o = v.and_then(Json::as_object).cloned().unwrap_or_default();
    o.insert("ts".into(), ts.into());
    Json::Object(o)
}

/// `v` without the keys that are not configuration.
fn configuration_of(v: &Json) -> Json {
    match v {
        Json::Object(o) => Json::Object(
            o.iter()
                .filter(|(k, _)| !NOT_CONFIGURATION.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The Python level name of a remote logging threshold.
fn level_name(level: u8) -> &'static str {
    match level {
        0..=10 => "DEBUG",
        11..=20 => "INFO",
        21..=30 => "WARNING",
        31..=40 => "ERROR",
        _ => "CRITICAL",
    }
}

/// A connector as the Gateways page shows it.
pub fn connector_attribute(c: &ConnectorConfig, ts: u64) -> Json {
    let enabled = c.remote_log != crate::remote_log::NONE;
    let file = c.file.as_ref().and_then(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned());
    json!({
        "name": c.name,
        "type": c.kind,
        "configuration": file,
        "configurationJson": configuration_of(&c.document),
        "logLevel": if enabled { level_name(c.remote_log) } else { "INFO" },
        "enableRemoteLogging": enabled,
        "ts": ts,
    })
}

/// The document a pushed connector attribute gives its connector:
/// `configurationJson` with `logLevel` and `enableRemoteLogging` from
/// beside it (as the Python gateway writes its file).
pub fn pushed_document(pushed: &Json) -> Result<Json, String> {
    let Some(Json::Object(doc)) = pushed.get("configurationJson") else {
        return Err("configurationJson: required, the connector's configuration (an object)".into());
    };
    let mut doc = doc.clone();
    for key in ["logLevel", "enableRemoteLogging"] {
        if let Some(v) = pushed.get(key) {
            doc.insert(key.into(), v.clone());
        }
    }
    doc.remove("ts");
    Ok(Json::Object(doc))
}

/// Whether `document` is what `c` runs: the same configuration and the
/// same remote logging.
pub fn runs(c: &ConnectorConfig, document: &Json) -> bool {
    let enabled = document.get("enableRemoteLogging").and_then(Json::as_bool).unwrap_or(false);
    let level = document
        .get("logLevel")
        .and_then(Json::as_str)
        .and_then(crate::remote_log::parse_level)
        .unwrap_or(crate::remote_log::INFO);
    let logging = if enabled { level } else { crate::remote_log::NONE };
    configuration_of(document) == configuration_of(&c.document) && logging == c.remote_log
}

/// The top-level keys whose values differ between `a` and `b` (`ts` and
/// the keys ThingsBoard adds left out).
pub fn changed_keys(a: &Json, b: &Json) -> Vec<String> {
    let (empty_a, empty_b) = (Map::new(), Map::new());
    let (a, b) = (a.as_object().unwrap_or(&empty_a), b.as_object().unwrap_or(&empty_b));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !NOT_CONFIGURATION.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

impl RemoteConfig {
    /// The running configuration, for a new session; `running`: the names
    /// of the connectors that run.
    pub fn current(&mut self, config: &GatewayConfig, running: &[String]) -> Json {
        let ts = now_ms();
        let doc = &config.document;
        let mut out = Map::new();
        out.insert("general_configuration".into(), with_ts(doc.get("thingsboard"), ts));
        out.insert("storage_configuration".into(), with_ts(doc.get("storage"), ts));
        out.insert("grpc_configuration".into(), with_ts(doc.get("grpc"), ts));
        out.insert("logs_configuration".into(), with_ts(doc.get("logs"), ts));
        out.insert("active_connectors".into(), json!(running));
        out.insert("Version".into(), PYTHON_VERSION.into());
        out.insert("tbgwVersion".into(), env!("CARGO_PKG_VERSION").into());
        for c in &config.connectors {
            out.insert(c.name.clone(), connector_attribute(c, ts));
        }
        for (k, v) in &out {
            self.remember(k, v.clone());
        }
        Json::Object(out)
    }

    /// The attribute request of a new session: its topic and payload.
    pub fn request(config: &GatewayConfig, session: u64) -> (String, Vec<u8>) {
        let keys: Vec<&str> =
            SHARED_KEYS.iter().copied().chain(config.connectors.iter().map(|c| c.name.as_str())).collect();
        (
            format!("v1/devices/me/attributes/request/{}", REQUEST_ID_BASE + session),
            json!({"sharedKeys": keys.join(",")}).to_string().into_bytes(),
        )
    }

    /// `value` under `key`, to publish as an echo: `None` when it is what
    /// was published last (a plain broker's own echo coming back).
    pub fn echo(&mut self, key: &str, value: &Json) -> Option<Json> {
        if self.last.get(key) == Some(value) {
            return None;
        }
        self.remember(key, value.clone());
        Some(json!({ key: value }))
    }

    fn remember(&mut self, key: &str, value: Json) {
        self.pending.retain(|(at, _, _)| at.elapsed() < OWN_FOR);
        self.pending.push((std::time::Instant::now(), key.to_owned(), value.clone()));
        self.last.insert(key.to_owned(), value);
    }

    /// Whether `value` under `key` is one of the gateway's own publishes
    /// coming back (recognised once).
    pub fn is_own(&mut self, key: &str, value: &Json) -> bool {
        self.pending.retain(|(at, _, _)| at.elapsed() < OWN_FOR);
        match self.pending.iter().position(|(_, k, v)| k == key && v == value) {
            Some(i) => {
                self.pending.remove(i);
                true
            }
            None => false,
        }
    }

    /// One audit line.
    pub fn audit(key: &str, decision: &str, what: &str) {
        tracing::info!(target: AUDIT, key, decision, "remote configuration: {what}");
    }

    /// One audit line for a refusal.
    pub fn audit_reject(key: &str, why: &str) {
        tracing::warn!(target: AUDIT, key, decision = "reject", "remote configuration refused: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_document_takes_logging_from_beside_it_and_comparisons_ignore_what_thingsboard_adds() {
        let pushed = json!({"name": "A", "ts": 5, "logLevel": "DEBUG", "enableRemoteLogging": true,
                            "configurationJson": {"broker": {"port": 1}, "name": "A", "id": "x", "ts": 3}});
        let doc = pushed_document(&pushed).expect("a document");
        assert_eq!(doc["logLevel"], "DEBUG");
        assert_eq!(doc["enableRemoteLogging"], true);
        assert!(doc.get("ts").is_none());
        assert_eq!(configuration_of(&doc), json!({"broker": {"port": 1}}));
        assert!(pushed_document(&json!({"name": "A"})).is_err());
        assert_eq!(
            changed_keys(&json!({"a": 1, "b": [1], "c": 3}), &json!({"a": 1, "b": [2], "d": 4})),
            ["b", "c", "d"]
        );
    }

    #[test]
    fn an_echo_goes_once_per_value() {
        let mut r = RemoteConfig::default();
        let v = json!({"ts": 1});
        assert_eq!(r.echo("A", &v), Some(json!({"A": {"ts": 1}})));
        assert!(r.is_own("A", &v), "its own echo, back from a plain broker");
        assert!(!r.is_own("A", &v), "recognised once: the same again is a push");
        assert_eq!(r.echo("A", &v), None, "not echoed twice");
        assert!(r.echo("A", &json!({"ts": 2})).is_some(), "a newer push is echoed");
    }
}
