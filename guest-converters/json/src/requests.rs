//! Devices' own requests on the devices' broker: "connect me", "disconnect
//! me", "send me my attributes", configured as the `connectRequests`,
//! `disconnectRequests` and `attributeRequests` sections of the ThingsBoard
//! gateway's MQTT `requestsMapping`. The converter's config is
//! `{"requestsMapping": {...}}` (the MQTT connector routes the sections'
//! topics to it); the other sections are the downlink converter's and are
//! accepted here unread.
//!
//! ```json
//! "connectRequests": [{"topicFilter": "sensor/+/connect",
//!   "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/connect)",
//!                  "deviceProfileExpressionSource": "constant", "deviceProfileExpression": "thermometer"}}],
//! "attributeRequests": [{"topicFilter": "v1/devices/me/attributes/request",
//!   "deviceInfo": {"deviceNameExpressionSource": "message", "deviceNameExpression": "${serialNumber}"},
//!   "attributeNameExpressionSource": "message", "attributeNameExpression": "${versionAttribute}, ${pduAttribute}",
//!   "topicExpression": "devices/${deviceName}/attrs", "valueExpression": "${attributeKey}:${attributeValue}"}]
//! ```
//!
//! A message goes to the first entry whose `topicFilter` matches its topic
//! (connect, then disconnect, then attribute requests). The device comes
//! from the topic, the message or a constant, as in a mapping's
//! `deviceInfo`. Attribute names (`attributeNameExpression`): with
//! `message`, each `${path}` names one attribute (a text, which may list
//! several separated by commas) or several (an array of texts); with
//! `constant`, a comma-separated list; with `topic`, a regular expression
//! over the topic whose last group (or whole match) is the name. An
//! attribute request's `context` is its entry (`attributeRequests[0]`): the
//! downlink converter answers it with that entry's `topicExpression` and
//! `valueExpression` ([`crate::downlink`]).

use crate::json::Json;
use crate::template::Template;
use crate::uplink::{Message, UplinkConverter};
use crate::{ConvertedMessage, DeviceRequest};
use fancy_regex::Regex;
use serde_json::Value as ConfigValue;
use tbgw_data::AttributeRequest;
use tbgw_data::config::{self, ConfigError, Obj};

/// The device-request sections, compiled.
#[derive(Debug)]
pub struct RequestConverter {
    connect: Vec<DeviceRule>,
    disconnect: Vec<DeviceRule>,
    attributes: Vec<AttributeRule>,
}

#[derive(Debug)]
struct DeviceRule {
    /// The filter incoming topics are matched against.
    filter: String,
    /// Resolves the device (its `deviceInfo`).
    device: UplinkConverter,
}

#[derive(Debug)]
struct AttributeRule {
    rule: DeviceRule,
    names: Names,
    client: bool,
    /// `attributeRequests[i]`.
    context: String,
}

#[derive(Debug)]
enum Names {
    Message(Template),
    Constant(Vec<String>),
    Topic(Regex),
}

/// The keys of an `attributeRequests` entry that its answer uses: the
/// downlink converter's.
pub(crate) const ANSWER_KEYS: [&str; 4] = ["topicExpression", "valueExpression", "retain", "qos"];
/// The keys of an `attributeRequests` entry that recognise a request: this
/// module's.
pub(crate) const RECOGNISE_KEYS: [&str; 8] = [
    "topicFilter",
    "deviceInfo",
    "deviceNameJsonExpression",
    "deviceNameTopicExpression",
    "deviceTypeJsonExpression",
    "attributeNameExpressionSource",
    "attributeNameExpression",
    "scope",
];

impl RequestConverter {
    /// Build it from `{"requestsMapping": {...}}`.
    pub fn new(config_text: &str) -> Result<RequestConverter, ConfigError> {
        let doc = config::parse_document(config_text)?;
        let mut root = Obj::new("", &doc)?;
        let mapping = root.get("requestsMapping").ok_or_else(|| root.missing("requestsMapping"))?;
        root.finish()?;
        let mut m = Obj::new("requestsMapping", mapping)?;
        m.allow(&["attributeUpdates", "serverSideRpc"]);
        let mut out = RequestConverter { connect: Vec::new(), disconnect: Vec::new(), attributes: Vec::new() };
        for (key, rules) in [("connectRequests", &mut out.connect), ("disconnectRequests", &mut out.disconnect)] {
            for (path, item) in config::array(&mut m, key)? {
                let mut o = Obj::new(&path, item)?;
                rules.push(device_rule(&path, item, &mut o)?);
                o.finish()?;
            }
        }
        for (i, (path, item)) in config::array(&mut m, "attributeRequests")?.into_iter().enumerate() {
            out.attributes.push(attribute_rule(&path, item, format!("attributeRequests[{i}]"))?);
        }
        m.finish()?;
        Ok(out)
    }

    /// What a message on one of the request topics asks for.
    pub fn convert<'c>(&'c self, msg: &Message<'_>) -> Result<ConvertedMessage, String> {
        let topic = msg.topic.ok_or("a device request is recognised by its MQTT topic; this message has none")?;
        let first = |rules: &'c [DeviceRule]| rules.iter().find(|r| topic_matches(&r.filter, topic));
        let request = if let Some(r) = first(&self.connect) {
            let (device, device_type) = r.device.device_of(msg)?;
            DeviceRequest::Connect { device, device_type }
        } else if let Some(r) = first(&self.disconnect) {
            DeviceRequest::Disconnect { device: r.device.device_of(msg)?.0 }
        } else if let Some(a) = self.attributes.iter().find(|a| topic_matches(&a.rule.filter, topic)) {
            let (device, _) = a.rule.device.device_of(msg)?;
            let keys = attribute_names(&a.names, topic, msg.payload)?;
            if keys.is_empty() {
                return Err("the request names no attribute".into());
            }
            DeviceRequest::Attributes(AttributeRequest { device, keys, client: a.client, context: a.context.clone() })
        } else {
            return Err(format!(
                "topic `{topic}` matches no connectRequests, disconnectRequests or attributeRequests entry"
            ));
        };
        Ok(ConvertedMessage { requests: vec![request], ..ConvertedMessage::default() })
    }
}

/// Whether `topic` matches the MQTT topic filter `filter` (`+` one level,
/// `#` the rest; a `$share/group/` prefix is not part of the filter).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    };
    // Wildcards do not match topics of the broker's own (`$SYS/...`).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match (f, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// A `connectRequests`/`disconnectRequests` entry, or the device part of an
/// `attributeRequests` one.
fn device_rule(path: &str, item: &ConfigValue, o: &mut Obj) -> Result<DeviceRule, ConfigError> {
    let filter = o.req_str("topicFilter")?.to_owned();
    // The device is resolved as a mapping's `deviceInfo` (or its 2.x keys).
    let mut conf = serde_json::Map::new();
    for key in ["deviceInfo", "deviceNameJsonExpression", "deviceNameTopicExpression", "deviceTypeJsonExpression"] {
        o.get(key);
        if let Some(v) = item.get(key) {
            conf.insert(key.to_owned(), v.clone());
        }
    }
    let device = UplinkConverter::new(&ConfigValue::Object(conf).to_string()).map(|(c, _)| c).map_err(|e| {
        let field = e.field.map_or_else(|| path.to_owned(), |f| format!("{path}.{f}"));
        ConfigError::at(field, e.message)
    })?;
    Ok(DeviceRule { filter, device })
}

fn attribute_rule(path: &str, item: &ConfigValue, context: String) -> Result<AttributeRule, ConfigError> {
    let mut o = Obj::new(path, item)?;
    let rule = device_rule(path, item, &mut o)?;
    let source = o.opt_str("attributeNameExpressionSource")?.unwrap_or("message");
    let expression = o.req_str("attributeNameExpression")?;
    let field = o.field("attributeNameExpression");
    let names = match source {
        "message" => match Template::parse(expression) {
            Ok(t) if t.exprs().next().is_some() => Names::Message(t),
            Ok(_) => {
                return Err(ConfigError::at(field, "has no `${...}`: use attributeNameExpressionSource constant"));
            }
            Err(e) => return Err(ConfigError::at(field, e)),
        },
        "constant" => {
            Names::Constant(expression.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect())
        }
        "topic" => Names::Topic(
            Regex::new(expression).map_err(|e| ConfigError::at(field, format!("not a regular expression: {e}")))?,
        ),
        other => {
            return Err(ConfigError::at(
                o.field("attributeNameExpressionSource"),
                format!("unknown source `{other}`; expected message, constant or topic"),
            ));
        }
    };
    let client = match o.opt_str("scope")? {
        None | Some("shared") => false,
        Some("client") => true,
        Some(other) => {
            return Err(ConfigError::at(
                o.field("scope"),
                format!("unknown scope `{other}`; expected shared or client"),
            ));
        }
    };
    o.allow(&ANSWER_KEYS);
    o.finish()?;
    Ok(AttributeRule { rule, names, client, context })
}

fn attribute_names(names: &Names, topic: &str, payload: &[u8]) -> Result<Vec<String>, String> {
    match names {
        Names::Constant(n) => Ok(n.clone()),
        Names::Topic(re) => {
            let caps = re
                .captures(topic)
                .map_err(|e| format!("attribute name: {e}"))?
                .ok_or_else(|| format!("attribute name: topic `{topic}` does not match `{}`", re.as_str()))?;
            let m = (1..caps.len()).rev().find_map(|i| caps.get(i)).or_else(|| caps.get(0));
            Ok(m.map(|m| vec![m.as_str().to_owned()]).unwrap_or_default())
        }
        Names::Message(t) => {
            let doc = Json::parse(payload)?;
            let mut out = Vec::new();
            for path in t.exprs() {
                match path.eval(&doc) {
                    Some(Json::Str(s)) => out.extend(s.split(',').map(|n| n.trim().to_owned())),
                    Some(Json::Array(items)) => {
                        for item in items {
                            match item {
                                Json::Str(s) => out.push(s.trim().to_owned()),
                                other => {
                                    return Err(format!("attribute name: {} in `${{{}}}`", other.kind(), path.text()));
                                }
                            }
                        }
                    }
                    Some(other) => {
                        return Err(format!("attribute name: `${{{}}}` is {}, not a text", path.text(), other.kind()));
                    }
                    None => return Err(format!("attribute name: `${{{}}}` is not in the message", path.text())),
                }
            }
            out.retain(|n| !n.is_empty());
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(mapping: &str) -> RequestConverter {
        RequestConverter::new(&format!(r#"{{"requestsMapping": {mapping}}}"#)).unwrap()
    }

    fn recognise(r: &RequestConverter, topic: &str, payload: &str) -> Result<DeviceRequest, String> {
        r.convert(&Message { topic: Some(topic), payload: payload.as_bytes() }).map(|mut c| c.requests.remove(0))
    }

    #[test]
    fn the_python_gateways_default_sections() {
        let r = requests(
            r#"{"connectRequests":[{"topicFilter":"sensor/connect","deviceInfo":{"deviceNameExpressionSource":"message",
                 "deviceNameExpression":"${SerialNumber}","deviceProfileExpressionSource":"constant","deviceProfileExpression":"thermometer"}},
               {"topicFilter":"sensor/+/connect","deviceInfo":{"deviceNameExpressionSource":"topic","deviceNameExpression":"(?<=sensor/)(.*?)(?=/connect)"}}],
             "disconnectRequests":[{"topicFilter":"sensor/+/disconnect","deviceInfo":{"deviceNameExpressionSource":"topic",
                 "deviceNameExpression":"(?<=sensor/)(.*?)(?=/disconnect)"}}],
             "attributeRequests":[{"retain":false,"topicFilter":"v1/devices/me/attributes/request",
                 "deviceInfo":{"deviceNameExpressionSource":"message","deviceNameExpression":"${serialNumber}"},
                 "attributeNameExpressionSource":"message","attributeNameExpression":"${versionAttribute}, ${pduAttribute}",
                 "topicExpression":"devices/${deviceName}/attrs","valueExpression":"${attributeKey}:${attributeValue}"}],
             "attributeUpdates":[],"serverSideRpc":[]}"#,
        );
        assert_eq!(
            recognise(&r, "sensor/connect", r#"{"SerialNumber":"SN-1"}"#),
            Ok(DeviceRequest::Connect { device: "SN-1".into(), device_type: Some("thermometer".into()) })
        );
        assert_eq!(
            recognise(&r, "sensor/A7/connect", ""),
            Ok(DeviceRequest::Connect { device: "A7".into(), device_type: None })
        );
        assert_eq!(recognise(&r, "sensor/A7/disconnect", "{}"), Ok(DeviceRequest::Disconnect { device: "A7".into() }));
        assert_eq!(
            recognise(
                &r,
                "v1/devices/me/attributes/request",
                r#"{"serialNumber":"SN-2","versionAttribute":"fw","pduAttribute":"pdu"}"#
            ),
            Ok(DeviceRequest::Attributes(AttributeRequest {
                device: "SN-2".into(),
                keys: vec!["fw".into(), "pdu".into()],
                client: false,
                context: "attributeRequests[0]".into()
            }))
        );
        assert!(matches!(recognise(&r, "sensor/connect", "not json"), Err(e) if e.contains("JSON")));
        assert!(matches!(recognise(&r, "sensor/A7/data", "{}"), Err(e) if e.contains("matches no")));
    }

    #[test]
    fn bad_sections_are_reported_by_path() {
        let err = |mapping: &str| RequestConverter::new(&format!(r#"{{"requestsMapping": {mapping}}}"#)).unwrap_err();
        let e = err(
            r#"{"connectRequests":[{"topicFilter":"a","deviceInfo":{"deviceNameExpressionSource":"topic","deviceNameExpression":"(("}}]}"#,
        );
        assert_eq!(e.field.as_deref(), Some("requestsMapping.connectRequests[0].deviceInfo.deviceNameExpression"));
        let e = err(
            r#"{"attributeRequests":[{"topicFilter":"r","deviceInfo":{"deviceNameExpressionSource":"constant","deviceNameExpression":"D"},
                 "attributeNameExpressionSource":"header","attributeNameExpression":"x"}]}"#,
        );
        assert_eq!(e.field.as_deref(), Some("requestsMapping.attributeRequests[0].attributeNameExpressionSource"));
        let e = err(r#"{"connectRequests":[{"topicFilter":"a","deviceInfo":{"deviceNameExpression":"D"},"topic":1}]}"#);
        assert_eq!(e.field.as_deref(), Some("requestsMapping.connectRequests[0].topic"));
    }

    #[test]
    fn mqtt_topic_filters() {
        assert!(topic_matches("sensor/+/data", "sensor/A/data"));
        assert!(!topic_matches("sensor/+/data", "sensor/A/B/data"));
        assert!(topic_matches("sensor/#", "sensor/A/B"));
        assert!(topic_matches("sensor/#", "sensor"));
        assert!(topic_matches("$share/g/sensor/+", "sensor/A"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
