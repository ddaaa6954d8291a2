//! The MQTT connector's configuration: the ThingsBoard IoT Gateway's
//! `mqtt.json` (3.x), so that its users' files load unchanged.
//!
//! ```json
//! {
//!   "broker": {"host": "127.0.0.1", "port": 1883, "clientId": "tbgw", "version": 5,
//!              "cleanSession": false, "cleanStart": false, "sessionExpiryInterval": 3600,
//!              "security": {"type": "basic", "username": "u", "password": "p"}},
//!   "mapping": [{"topicFilter": "sensor/+/data", "subscriptionQos": 1,
//!                "converter": {"type": "json", "deviceInfo": {...}, "timeseries": [...]}}],
//!   "requestsMapping": {...}
//! }
//! ```

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tbgw_core::config::{Diagnostics, Obj};
use tbgw_core::report::{self, ReportPolicy, Strategy};
use tbgw_core::setup::{self, ComponentRef, ConverterDecl, LimitsDecl};
use tbgw_tls::TlsFiles;

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// 3.1.1 (`version` 3 or 4; 3.1 is served as 3.1.1).
    V311,
    V5,
}

/// How to reach and log in to the source broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub version: MqttVersion,
    /// 3.1.1: start a new session (the broker forgets what we missed).
    pub clean_session: bool,
    /// 5: start a new session.
    pub clean_start: bool,
    /// 5: how long the broker keeps the session after a disconnect (seconds).
    pub session_expiry_interval: u32,
    pub keep_alive: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsFiles>,
    /// 5: how many QoS 1 messages the broker may send before our acks.
    pub receive_maximum: u16,
}

/// One `mapping[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MappingConfig {
    pub topic_filter: String,
    pub qos: u8,
    /// A built-in converter (`"type": "json"`) configured with the
    /// mapping's `converter` object, or `"type": "custom"`.
    pub converter: ConverterDecl,
    /// Report strategies: the converter's `reportStrategy` (or
    /// `sendDataOnlyOnChange`), else the file's; its keys' own.
    pub report: ReportPolicy,
}

/// The whole connector configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub broker: BrokerConfig,
    pub mappings: Vec<MappingConfig>,
    /// `requestsMapping` (or its 2.x top-level sections): the built-in
    /// `json` converters' config, the downlink one's (`attributeUpdates`,
    /// `serverSideRpc`, answers to `attributeRequests`) and the uplink one's
    /// that recognises devices' requests (`connectRequests`,
    /// `disconnectRequests`, `attributeRequests`).
    pub requests_mapping: Option<Value>,
    /// The topic filters of the device-request sections: their messages go
    /// to the requests route.
    pub request_filters: Vec<String>,
    /// The downlink converter: tbgw's own `downlinkConverter` (a custom
    /// component, configured with its `extensionConfig`; or `type: json`
    /// with `limits`), else the built-in `json` one over `requestsMapping`
    /// when it has anything to send.
    pub downlink: Option<ConverterDecl>,
    /// What answers the attribute requests the requests route recognises
    /// when `downlink` is a custom component (which does not read
    /// `requestsMapping`): the built-in `json` downlink converter over it.
    pub attribute_answers: Option<ConverterDecl>,
}

/// Read the connector's configuration; relative paths (certificates,
/// custom converters) are resolved against `base_dir`, the directory of the
/// file it came from. Problems go to `d`, with paths relative to the
/// connector's configuration.
pub fn parse(doc: &Value, base_dir: &Path, name: &str, d: &mut Diagnostics) -> Option<MqttConfig> {
    let mut root = Obj::new(d, "", doc)?;
    let broker = match root.object(d, "broker") {
        Some(b) => broker(b, base_dir, name, d),
        None => {
            if !root.has("broker") {
                d.error("broker", "required");
            }
            None
        }
    };
    let mut mappings = Vec::new();
    let mut entries = root.list(d, "mapping");
    // 2.x files call it `dataMapping` sometimes.
    entries.extend(root.list(d, "dataMapping"));
    // The file's report strategy: the mappings' default.
    let file_report = match root.get("reportStrategy") {
        Some(v) => report::parse(d, "reportStrategy", v),
        None => (doc.pointer("/broker/sendDataOnlyOnChange") == Some(&Value::Bool(true))).then_some(Strategy::OnChange),
    };
    for (path, item) in entries {
        if let Some(mut m) = mapping(d, &path, item, base_dir) {
            m.report.route = m.report.route.or(file_report);
            mappings.push(m);
        }
    }
    if mappings.is_empty() && d.is_ok() {
        d.error("mapping", "no mapping: the connector would receive nothing");
    }
    let requests_mapping = root.get("requestsMapping").cloned();
    let sections = ["connectRequests", "disconnectRequests", "attributeRequests", "attributeUpdates", "serverSideRpc"];
    let mut legacy = serde_json::Map::new();
    for section in sections {
        if let Some(v) = root.get(section) {
            legacy.insert(section.to_owned(), v.clone());
        }
    }
    let requests_mapping = requests_mapping.or((!legacy.is_empty()).then_some(Value::Object(legacy)));
    let request_filters = match &requests_mapping {
        Some(m) => request_filters(d, "requestsMapping", m),
        None => Vec::new(),
    };
    // tbgw's own: a custom downlink converter for attributeUpdates and
    // serverSideRpc instead of the built-in `json` one, or its limits.
    let downlink = downlink_converter(d, root.get("downlinkConverter"), requests_mapping.as_ref(), base_dir);
    let custom = matches!(&downlink, Some(ConverterDecl { component: ComponentRef::File(_), .. }));
    let attribute_answers = match &requests_mapping {
        Some(mapping) if custom && has_entries(mapping, "attributeRequests") => {
            Some(json_downlink(mapping, "json (downlink, attribute requests)", LimitsDecl::default()))
        }
        _ => None,
    };
    root.unused(d, &[("id", "tbgw names connectors by `name`")]);
    root.allow(&tbgw_core::config::GATEWAY_KEYS);
    root.allow(&["reportStrategy"]);
    root.finish(d);
    Some(MqttConfig { broker: broker?, mappings, requests_mapping, request_filters, downlink, attribute_answers })
}

/// The downlink converter of `downlinkConverter` (or of `requestsMapping`
/// alone).
fn downlink_converter(
    d: &mut Diagnostics,
    entry: Option<&Value>,
    mapping: Option<&Value>,
    base_dir: &Path,
) -> Option<ConverterDecl> {
    let builtin = |limits: LimitsDecl| {
        let mapping = mapping?;
        let sends = ["attributeUpdates", "serverSideRpc", "attributeRequests"].iter().any(|k| has_entries(mapping, k));
        sends.then(|| json_downlink(mapping, "json (downlink)", limits))
    };
    let Some(entry) = entry else { return builtin(LimitsDecl::default()) };
    let decl = setup::converter(d, "downlinkConverter", entry, base_dir, "custom")?;
    match &decl.component {
        ComponentRef::File(_) => Some(decl),
        ComponentRef::Builtin(name) if name == "json" => {
            setup::only_type_and_limits(d, "downlinkConverter", entry);
            let decl = builtin(decl.limits);
            if decl.is_none() {
                d.error(
                    "downlinkConverter",
                    "the built-in json downlink converter is configured by requestsMapping, which has nothing for it",
                );
            }
            decl
        }
        ComponentRef::Builtin(other) => {
            d.error("downlinkConverter.type", format!("`{other}`: expected custom, or json (with its limits)"));
            None
        }
    }
}

/// Whether `mapping` has a non-empty list `section`.
fn has_entries(mapping: &Value, section: &str) -> bool {
    mapping.get(section).and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

/// The built-in `json` downlink converter over `requestsMapping`.
fn json_downlink(mapping: &Value, label: &str, limits: LimitsDecl) -> ConverterDecl {
    ConverterDecl {
        path: "requestsMapping".into(),
        label: label.into(),
        component: ComponentRef::Builtin("json".into()),
        config: mapping.to_string(),
        limits,
    }
}

/// The topic filters of `mapping`'s device-request sections (the rest of
/// each entry is the `json` converter's, which checks it).
fn request_filters(d: &mut Diagnostics, path: &str, mapping: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(obj) = mapping.as_object() else {
        d.error(path, "expected an object");
        return out;
    };
    for section in ["connectRequests", "disconnectRequests", "attributeRequests"] {
        let items = match obj.get(section) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(other) => {
                d.error(
                    format!("{path}.{section}"),
                    format!("expected a list, found {}", tbgw_core::config::kind(other)),
                );
                continue;
            }
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}.{section}[{i}].topicFilter");
            match item.get("topicFilter") {
                Some(Value::String(f)) => match check_filter(f) {
                    Ok(()) if !out.contains(f) => out.push(f.clone()),
                    Ok(()) => {}
                    Err(e) => d.error(at, e),
                },
                Some(other) => d.error(at, format!("expected text, found {}", tbgw_core::config::kind(other))),
                None => d.error(at, "required"),
            }
        }
    }
    out
}

fn broker(mut b: Obj, base_dir: &Path, name: &str, d: &mut Diagnostics) -> Option<BrokerConfig> {
    let host = b.required_string(d, "host").map(str::to_owned);
    let port = b.uint(d, "port", 1..=65535).map_or(1883, |p| p as u16);
    let client_id = b.string(d, "clientId").map(str::to_owned).unwrap_or_else(|| {
        let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        format!("tbgw-{clean}")
    });
    let version = match b.get("version") {
        None => MqttVersion::V5,
        Some(v) => match v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())) {
            Some(5.0) => MqttVersion::V5,
            Some(3.0) | Some(3.1) | Some(4.0) => MqttVersion::V311,
            Some(3.11) => MqttVersion::V311,
            _ => {
                d.error(b.field("version"), format!("unknown MQTT version {v}; expected 3, 4 (3.1.1) or 5"));
                MqttVersion::V5
            }
        },
    };
    let v3 =
        matches!(b.get("version").and_then(Value::as_f64), Some(v) if (v - 3.0).abs() < 0.01 || (v - 3.1).abs() < 0.01);
    if v3 {
        d.notice(b.field("version"), "MQTT 3.1 is served as 3.1.1, which every 3.1 broker of today speaks");
    }
    let clean_session = b.bool(d, "cleanSession").unwrap_or(true);
    let clean_start = b.bool(d, "cleanStart").unwrap_or(true);
    let session_expiry_interval = b.uint(d, "sessionExpiryInterval", 0..=u64::from(u32::MAX)).unwrap_or(0) as u32;
    // Each version has its own key for a persistent session; a file that sets
    // only the other version's key would silently get a clean session and
    // lose what devices publish while tbgw is down.
    match version {
        MqttVersion::V311 if !clean_start && b.get("cleanSession").is_none() => d.notice(
            b.field("cleanStart"),
            "cleanStart is MQTT 5's key; with version 4 the session is persistent only with cleanSession: false",
        ),
        MqttVersion::V5 if !clean_session && b.get("cleanStart").is_none() => d.notice(
            b.field("cleanSession"),
            "cleanSession is MQTT 3.1.1's key; with version 5 the session is persistent only with cleanStart: false",
        ),
        MqttVersion::V5 if !clean_start && session_expiry_interval == 0 => d.notice(
            b.field("sessionExpiryInterval"),
            "0: the broker ends the session when the connection closes; set it (seconds) to keep messages across a restart",
        ),
        _ => {}
    }
    let keep_alive = Duration::from_secs(b.uint(d, "keepAlive", 5..=65535).unwrap_or(60));
    let receive_maximum = b.uint(d, "receiveMaximum", 1..=65535).unwrap_or(1000) as u16;
    b.unused(
        d,
        &[
            ("maxMessageNumberPerWorker", "tbgw converts on its own worker threads, in batches"),
            ("maxNumberOfWorkers", "tbgw converts on its own worker threads, in batches"),
        ],
    );
    // Read by `parse`: the older spelling of the file's report strategy.
    b.allow(&["sendDataOnlyOnChange"]);
    let (mut username, mut password, mut tls) = (None, None, None);
    if let Some(mut s) = b.object(d, "security") {
        let kind = s.string(d, "type").unwrap_or("anonymous").to_ascii_lowercase();
        username = s.string(d, "username").map(str::to_owned);
        password = s.string(d, "password").map(str::to_owned);
        let mut file = |d: &mut Diagnostics, keys: [&'static str; 2]| {
            let mut found = None;
            for key in keys {
                if let Some(p) = s.string(d, key) {
                    found = Some(base_dir.join(p));
                }
            }
            found
        };
        let ca_cert = file(d, ["caCert", "pathToCACert"]);
        let client_cert = file(d, ["cert", "pathToClientCert"]);
        let private_key = file(d, ["privateKey", "pathToPrivateKey"]);
        if s.bool(d, "insecure") == Some(true) {
            d.error(
                s.field("insecure"),
                "not supported: tbgw always verifies the broker's certificate; name its CA with caCert",
            );
        }
        match kind.as_str() {
            "anonymous" | "basic" | "certificates" => {}
            other => d.error(
                s.field("type"),
                format!("unknown security type `{other}`; expected anonymous, basic or certificates"),
            ),
        }
        if kind == "basic" && username.is_none() {
            d.error(s.field("username"), "required for basic security");
        }
        if kind == "certificates" || ca_cert.is_some() || client_cert.is_some() {
            tls = Some(TlsFiles { ca_cert, client_cert, private_key });
        }
        s.finish(d);
    }
    b.finish(d);
    Some(BrokerConfig {
        host: host?,
        port,
        client_id,
        version,
        clean_session,
        clean_start,
        session_expiry_interval,
        keep_alive,
        username,
        password,
        tls,
        receive_maximum,
    })
}

fn mapping(d: &mut Diagnostics, path: &str, item: &Value, base_dir: &Path) -> Option<MappingConfig> {
    let mut m = Obj::new(d, path, item)?;
    let topic_filter = m.required_string(d, "topicFilter").map(str::to_owned);
    if let Some(filter) = &topic_filter
        && let Err(e) = check_filter(filter)
    {
        d.error(m.field("topicFilter"), e);
    }
    let qos = m.uint(d, "subscriptionQos", 0..=2).unwrap_or(1) as u8;
    if qos == 2 {
        d.notice(
            m.field("subscriptionQos"),
            "QoS 2 is served as QoS 1 (at least once; tbgw stores before acknowledging)",
        );
    }
    let converter_path = m.field("converter");
    let converter = match m.get("converter") {
        Some(entry) if entry.get("type").and_then(Value::as_str) == Some("bytes") => {
            d.error(
                format!("{converter_path}.type"),
                "the `bytes` converter is not available yet; use `json`, or a custom .wasm converter",
            );
            None
        }
        Some(entry) => setup::converter(d, &converter_path, entry, base_dir, "json"),
        None => {
            d.error(&converter_path, "required");
            None
        }
    };
    m.finish(d);
    let report = item.get("converter").map(|c| report_policy(d, &converter_path, c)).unwrap_or_default();
    Some(MappingConfig { topic_filter: topic_filter?, qos: qos.min(1), converter: converter?, report })
}

/// A converter's report strategies: its own `reportStrategy` (or the older
/// `sendDataOnlyOnChange`), and those of its `attributes[]`/`timeseries[]`
/// entries, by key (keys made of `${...}` expressions cannot be named ahead).
fn report_policy(d: &mut Diagnostics, path: &str, converter: &Value) -> ReportPolicy {
    let route = match converter.get("reportStrategy") {
        Some(v) => report::parse(d, &format!("{path}.reportStrategy"), v),
        None => (converter.get("sendDataOnlyOnChange") == Some(&Value::Bool(true))).then_some(Strategy::OnChange),
    };
    let mut policy = ReportPolicy { route, ..Default::default() };
    for section in ["attributes", "timeseries"] {
        let Some(Value::Array(entries)) = converter.get(section) else { continue };
        for (i, e) in entries.iter().enumerate() {
            let (Some(v), Some(key)) = (e.get("reportStrategy"), e.get("key").and_then(Value::as_str)) else {
                continue;
            };
            let at = format!("{path}.{section}[{i}].reportStrategy");
            if key.contains("${") {
                d.notice(at, "ignored: the key is made from the message, so it cannot be named ahead");
            } else if let Some(s) = report::parse(d, &at, v) {
                policy.keys.insert(key.to_owned(), s);
            }
        }
    }
    policy
}

/// A subscription filter as MQTT allows it (`$share/group/` prefixes too).
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    let f = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map(|(_, f)| f).ok_or("a `$share/` filter needs a group and a filter")?,
        None => filter,
    };
    if f.is_empty() {
        return Err("empty topic filter".into());
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(format!("`#` must be a whole level at the end, in `{filter}`"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`+` must be a whole level, in `{filter}`"));
        }
    }
    Ok(())
}

/// The filter incoming topics are matched with (`$share/group/` removed).
pub(crate) fn match_filter(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> (Option<MqttConfig>, Diagnostics) {
        let doc: Value = serde_json::from_str(text).unwrap();
        let mut d = Diagnostics::default();
        (parse(&doc, Path::new("/etc/tbgw"), "MQTT Broker", &mut d), d)
    }

    #[test]
    fn report_strategies_of_the_file_the_mapping_and_its_keys() {
        let (c, d) = parse_str(
            r#"{"broker": {"host": "h", "sendDataOnlyOnChange": true},
                "mapping": [
                  {"topicFilter": "a", "converter": {"type": "json", "reportStrategy": {"type": "ON_REPORT_PERIOD", "reportPeriod": 2000},
                    "timeseries": [{"type": "double", "key": "t", "value": "${t}", "reportStrategy": {"type": "ON_CHANGE"}},
                                   {"type": "double", "key": "${name}", "value": "${v}", "reportStrategy": {"type": "ON_CHANGE"}}]}},
                  {"topicFilter": "b", "converter": {"type": "json", "timeseries": []}}]}"#,
        );
        assert!(d.is_ok(), "{:?}", d.errors);
        assert!(
            d.notices.iter().any(|n| n.to_string().contains("timeseries[1].reportStrategy: ignored")),
            "{:?}",
            d.notices
        );
        let c = c.unwrap();
        let (a, b) = (&c.mappings[0].report, &c.mappings[1].report);
        assert_eq!(a.strategy(Strategy::OnReceived, "any", "t"), Strategy::OnChange);
        assert_eq!(a.strategy(Strategy::OnReceived, "any", "h"), Strategy::OnReportPeriod(2000));
        // The broker's older flag is the file's default.
        assert_eq!(b.strategy(Strategy::OnReceived, "any", "h"), Strategy::OnChange);
    }

    #[test]
    fn reads_the_python_gateways_default_file() {
        let (cfg, d) = parse_str(
            r#"{"broker":{"host":"127.0.0.1","port":1883,"clientId":"ThingsBoard_gateway","version":5,
                "maxMessageNumberPerWorker":10,"maxNumberOfWorkers":100,"cleanSession":true,"cleanStart":true,
                "sessionExpiryInterval":0,"security":{"type":"anonymous"}},
              "mapping":[{"topicFilter":"sensor/+/data","subscriptionQos":1,"converter":{"type":"json",
                "deviceInfo":{"deviceNameExpressionSource":"topic","deviceNameExpression":"(?<=sensor/)(.*?)(?=/data)"},
                "timeseries":[{"type":"double","key":"temperature","value":"${temp}"}]}},
                {"topicFilter":"custom/sensors/+","converter":{"type":"custom","extension":"conv/my.wasm","extensionConfig":{"k":1}}}],
              "requestsMapping":{"attributeUpdates":[]}}"#,
        );
        assert!(d.is_ok(), "{:?}", d.errors);
        let cfg = cfg.unwrap();
        assert_eq!(cfg.broker.version, MqttVersion::V5);
        assert_eq!(cfg.broker.client_id, "ThingsBoard_gateway");
        assert_eq!(cfg.mappings.len(), 2);
        let c = &cfg.mappings[0].converter;
        assert!(c.component == ComponentRef::Builtin("json".into()) && c.config.contains("deviceInfo"), "{c:?}");
        let c = &cfg.mappings[1].converter;
        assert_eq!(
            (&c.component, c.config.as_str(), c.path.as_str()),
            (&ComponentRef::File("/etc/tbgw/conv/my.wasm".into()), r#"{"k":1}"#, "mapping[1].converter")
        );
        let notices: Vec<String> = d.notices.iter().map(|n| n.path.clone()).collect();
        assert!(notices.contains(&"broker.maxNumberOfWorkers".to_owned()), "{notices:?}");
        assert!(cfg.requests_mapping.is_some());
    }

    #[test]
    fn device_request_sections_give_their_topic_filters() {
        let (cfg, d) = parse_str(
            r#"{"broker":{"host":"h"},"mapping":[{"topicFilter":"t","converter":{"type":"json"}}],
              "requestsMapping":{"connectRequests":[{"topicFilter":"sensor/+/connect"},{"topicFilter":"a/#/b"}],
                "attributeRequests":[{"topicFilter":"sensor/+/connect"},{}]}}"#,
        );
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "requestsMapping.connectRequests[1].topicFilter: `#` must be a whole level at the end, in `a/#/b`",
                "requestsMapping.attributeRequests[1].topicFilter: required"
            ]
        );
        assert_eq!(cfg.unwrap().request_filters, ["sensor/+/connect"]);
    }

    #[test]
    fn reports_every_error_by_path() {
        let (_, d) = parse_str(
            r#"{"broker":{"prot":1883,"security":{"type":"weird"}},
              "mapping":[{"topicFilter":"a/#/b","converter":{"type":"json"}},{"subscriptionQos":7},
                {"topicFilter":"c","converter":{"type":"custom","extension":"CustomMqttUplinkConverter"}}]}"#,
        );
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        for expected in [
            "broker.host: required",
            "broker.security.type: unknown security type `weird`; expected anonymous, basic or certificates",
            "broker.prot: unknown key; did you mean `port`?",
            "mapping[0].topicFilter: `#` must be a whole level at the end, in `a/#/b`",
            "mapping[1].topicFilter: required",
            "mapping[1].subscriptionQos: expected a whole number from 0 to 2, found 7",
            "mapping[1].converter: required",
            "mapping[2].converter.extension: `CustomMqttUplinkConverter` is not a .wasm file: tbgw runs converters \
             compiled to WebAssembly components, not Python classes; \
             `tbgw converter new NAME --lang python` starts one in Python (or js, rust)",
        ] {
            assert!(errors.contains(&expected.to_owned()), "missing `{expected}` in {errors:#?}");
        }
    }

    #[test]
    fn a_persistent_session_key_of_the_other_version_is_pointed_out() {
        let with = |broker: &str| {
            let (cfg, d) = parse_str(&format!(
                r#"{{"broker":{{"host":"h",{broker}}},"mapping":[{{"topicFilter":"t","converter":{{"type":"json"}}}}]}}"#
            ));
            let notices: Vec<String> = d.notices.iter().map(|n| n.path.clone()).collect();
            (cfg.unwrap().broker, notices)
        };
        let (b, notices) = with(r#""version":4,"cleanStart":false"#);
        assert!(b.clean_session, "3.1.1 reads cleanSession only");
        assert_eq!(notices, ["broker.cleanStart"]);
        let (_, notices) = with(r#""version":5,"cleanSession":false"#);
        assert_eq!(notices, ["broker.cleanSession"]);
        let (_, notices) = with(r#""version":5,"cleanStart":false"#);
        assert_eq!(notices, ["broker.sessionExpiryInterval"]);
        let (b, notices) = with(r#""version":4,"cleanSession":false"#);
        assert!(!b.clean_session && notices.is_empty(), "{notices:?}");
        let (b, notices) = with(r#""version":5,"cleanStart":false,"sessionExpiryInterval":600"#);
        assert!(!b.clean_start && b.session_expiry_interval == 600 && notices.is_empty(), "{notices:?}");
    }

    #[test]
    fn shared_subscriptions_match_the_plain_filter() {
        assert_eq!(match_filter("$share/g1/sensor/+/data"), "sensor/+/data");
        assert_eq!(match_filter("sensor/#"), "sensor/#");
        assert!(check_filter("$share/g1/sensor/#").is_ok());
        assert!(check_filter("$share/g1").is_err());
    }
}
