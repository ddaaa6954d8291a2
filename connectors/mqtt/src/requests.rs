//! Devices' own requests on the devices' broker: "connect me", "disconnect
//! me", "send me my attributes", configured as the ThingsBoard gateway's
//! `requestsMapping` sections `connectRequests`, `disconnectRequests` and
//! `attributeRequests`:
//!
//! ```json
//! "connectRequests": [{"topicFilter": "sensor/+/connect",
//!   "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/connect)",
//!                  "deviceProfileExpressionSource": "constant", "deviceProfileExpression": "thermometer"}}],
//! "attributeRequests": [{"topicFilter": "v1/devices/me/attributes/request",
//!   "deviceInfo": {"deviceNameExpressionSource": "message", "deviceNameExpression": "${serialNumber}"},
//!   "attributeNameExpressionSource": "message", "attributeNameExpression": "${versionAttribute}, ${pduAttribute}",
//!   "topicExpression": "devices/${deviceName}/attrs", "valueExpression": "${attributeKey}:${attributeValue}",
//!   "retain": false}]
//! ```
//!
//! The device's name comes from the topic, the message or a constant, as in
//! a mapping's `deviceInfo`, resolved by the JSON converter's own mapping
//! library. These run natively in the connector, not through the converter
//! stage: they are the protocol's control messages, they carry no data to
//! store, and they need an answer from ThingsBoard in return.
//!
//! Attribute names (`attributeNameExpression`): with `message`, each
//! `${path}` names one attribute (a text) or several (an array of texts);
//! with `constant`, a comma-separated list; with `topic`, a regular
//! expression over the topic whose last group (or whole match) is the name.
//! The answer goes to `topicExpression` (`${deviceName}`, `${attributeKey}`)
//! with `valueExpression` (`${attributeKey}`, `${attributeValue}` as JSON)
//! for one attribute, and as a JSON object of every value for several, as
//! in the Python gateway.

use serde_json::Value;
use tbgw_core::config::{Diagnostics, Obj};
use tbgw_json_converter::UplinkConverter;
use tbgw_json_converter::json::Json;
use tbgw_json_converter::template::Template;
use tbgw_json_converter::uplink::Message;

/// `connectRequests` / `disconnectRequests` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRule {
    pub topic_filter: String,
    /// The `deviceInfo` as a JSON converter config: what resolves the device.
    device_info: String,
}

/// Where the names of the requested attributes come from.
#[derive(Debug, Clone, PartialEq)]
enum NameSource {
    /// A template whose expressions each give a name (or an array of names).
    Message(String),
    Constant(Vec<String>),
    /// A regular expression over the topic.
    Topic(String),
}

/// An `attributeRequests` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeRule {
    pub topic_filter: String,
    device_info: String,
    names: NameSource,
    /// Client-side attributes (`scope: client`) instead of shared ones.
    pub client: bool,
    pub topic_expression: String,
    pub value_expression: String,
    pub retain: bool,
    pub qos: u8,
}

/// The device-request sections of a `requestsMapping`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestsConfig {
    pub connect: Vec<DeviceRule>,
    pub disconnect: Vec<DeviceRule>,
    pub attributes: Vec<AttributeRule>,
}

impl RequestsConfig {
    /// Every topic filter to subscribe to.
    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.connect
            .iter()
            .chain(&self.disconnect)
            .map(|r| r.topic_filter.as_str())
            .chain(self.attributes.iter().map(|r| r.topic_filter.as_str()))
    }
}

/// Read the three sections of `mapping` (the `requestsMapping` object, at
/// `path`). The other sections belong to the downlink converter.
pub fn parse(d: &mut Diagnostics, path: &str, mapping: &Value) -> RequestsConfig {
    let mut out = RequestsConfig::default();
    let Some(obj) = mapping.as_object() else {
        d.error(path, "expected an object");
        return out;
    };
    let section = |key: &str| -> Vec<(String, &Value)> {
        match obj.get(key) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| (format!("{path}.{key}[{i}]"), v)).collect()
            }
            Some(_) => vec![(format!("{path}.{key}"), &Value::Null)],
        }
    };
    for (p, item) in section("connectRequests") {
        out.connect.extend(device_rule(d, &p, item));
    }
    for (p, item) in section("disconnectRequests") {
        out.disconnect.extend(device_rule(d, &p, item));
    }
    for (p, item) in section("attributeRequests") {
        out.attributes.extend(attribute_rule(d, &p, item));
    }
    out
}

/// The JSON converter config that resolves a device: the `deviceInfo`
/// block, or the 2.x keys.
fn device_info(d: &mut Diagnostics, o: &mut Obj, item: &Value) -> Option<String> {
    let mut conf = serde_json::Map::new();
    for key in ["deviceInfo", "deviceNameJsonExpression", "deviceNameTopicExpression", "deviceTypeJsonExpression"] {
        if let Some(v) = item.get(key) {
            conf.insert(key.to_owned(), v.clone());
        }
    }
    o.allow(&["deviceInfo", "deviceNameJsonExpression", "deviceNameTopicExpression", "deviceTypeJsonExpression"]);
    let text = Value::Object(conf).to_string();
    match UplinkConverter::new(&text) {
        Ok(_) => Some(text),
        Err(e) => {
            let field = e.field.as_deref().map_or_else(|| o.path().to_owned(), |f| o.field(f));
            d.error(field, e.message);
            None
        }
    }
}

fn topic_filter(d: &mut Diagnostics, o: &mut Obj) -> Option<String> {
    let filter = o.required_string(d, "topicFilter")?;
    if let Err(e) = crate::config::check_filter(filter) {
        d.error(o.field("topicFilter"), e);
        return None;
    }
    Some(filter.to_owned())
}

fn device_rule(d: &mut Diagnostics, path: &str, item: &Value) -> Option<DeviceRule> {
    let mut o = Obj::new(d, path, item)?;
    let topic_filter = topic_filter(d, &mut o);
    let device_info = device_info(d, &mut o, item);
    o.finish(d);
    Some(DeviceRule { topic_filter: topic_filter?, device_info: device_info? })
}

fn attribute_rule(d: &mut Diagnostics, path: &str, item: &Value) -> Option<AttributeRule> {
    let mut o = Obj::new(d, path, item)?;
    let topic_filter = topic_filter(d, &mut o);
    let device_info = device_info(d, &mut o, item);
    let source = o.string(d, "attributeNameExpressionSource").unwrap_or("message").to_owned();
    let expression = o.required_string(d, "attributeNameExpression").map(str::to_owned);
    let names = match (source.as_str(), expression) {
        (_, None) => None,
        ("message", Some(e)) => match Template::parse(&e) {
            Ok(t) if t.exprs().next().is_some() => Some(NameSource::Message(e)),
            Ok(_) => {
                d.error(
                    o.field("attributeNameExpression"),
                    "has no `${...}`: use attributeNameExpressionSource constant",
                );
                None
            }
            Err(err) => {
                d.error(o.field("attributeNameExpression"), err);
                None
            }
        },
        ("constant", Some(e)) => {
            Some(NameSource::Constant(e.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect()))
        }
        ("topic", Some(e)) => match fancy_regex::Regex::new(&e) {
            Ok(_) => Some(NameSource::Topic(e)),
            Err(err) => {
                d.error(o.field("attributeNameExpression"), format!("not a regular expression: {err}"));
                None
            }
        },
        (other, Some(_)) => {
            d.error(
                o.field("attributeNameExpressionSource"),
                format!("unknown source `{other}`; expected message, constant or topic"),
            );
            None
        }
    };
    let client = match o.string(d, "scope") {
        None | Some("shared") => false,
        Some("client") => true,
        Some(other) => {
            d.error(o.field("scope"), format!("unknown scope `{other}`; expected shared or client"));
            false
        }
    };
    let topic_expression = o.required_string(d, "topicExpression").map(str::to_owned);
    let value_expression = o.string(d, "valueExpression").unwrap_or("${attributeValue}").to_owned();
    let retain = o.bool(d, "retain").unwrap_or(false);
    let qos = o.uint(d, "qos", 0..=2).unwrap_or(0).min(1) as u8;
    o.finish(d);
    Some(AttributeRule {
        topic_filter: topic_filter?,
        device_info: device_info?,
        names: names?,
        client,
        topic_expression: topic_expression?,
        value_expression,
        retain,
        qos,
    })
}

/// What a message on a request topic asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Recognised {
    Connect {
        device: String,
        device_type: Option<String>,
    },
    Disconnect {
        device: String,
    },
    /// The rule index (in `attributes`), the device and the names asked for.
    Attributes {
        rule: usize,
        device: String,
        keys: Vec<String>,
    },
}

/// The request sections, compiled.
pub struct Requests {
    connect: Vec<(String, UplinkConverter)>,
    disconnect: Vec<(String, UplinkConverter)>,
    attributes: Vec<(String, UplinkConverter, Names)>,
    pub config: RequestsConfig,
}

enum Names {
    Message(Template),
    Constant(Vec<String>),
    Topic(fancy_regex::Regex),
}

fn compile(device_info: &str) -> UplinkConverter {
    // Checked when the config was read.
    UplinkConverter::new(device_info).map(|(c, _)| c).unwrap_or_else(|e| unreachable!("checked config: {e}"))
}

impl Requests {
    /// Compile a checked config.
    pub fn new(config: RequestsConfig) -> Requests {
        let filter = |f: &str| crate::config::match_filter(f).to_owned();
        let connect = config.connect.iter().map(|r| (filter(&r.topic_filter), compile(&r.device_info))).collect();
        let disconnect = config.disconnect.iter().map(|r| (filter(&r.topic_filter), compile(&r.device_info))).collect();
        let attributes = config
            .attributes
            .iter()
            .map(|r| {
                let names = match &r.names {
                    NameSource::Message(t) => {
                        Names::Message(Template::parse(t).unwrap_or_else(|e| unreachable!("checked: {e}")))
                    }
                    NameSource::Constant(n) => Names::Constant(n.clone()),
                    NameSource::Topic(re) => {
                        Names::Topic(fancy_regex::Regex::new(re).unwrap_or_else(|e| unreachable!("checked: {e}")))
                    }
                };
                (filter(&r.topic_filter), compile(&r.device_info), names)
            })
            .collect();
        Requests { connect, disconnect, attributes, config }
    }

    /// What a message asks, if its topic is a request topic: `None` when it
    /// is not; `Some(Err)` when it is but the request cannot be read.
    pub fn recognise(&self, topic: &str, payload: &[u8]) -> Option<Result<Recognised, String>> {
        let msg = Message { topic: Some(topic), payload };
        if let Some((_, c)) = self.connect.iter().find(|(f, _)| rumqttc::matches(topic, f)) {
            return Some(c.device_of(&msg).map(|(device, device_type)| Recognised::Connect { device, device_type }));
        }
        if let Some((_, c)) = self.disconnect.iter().find(|(f, _)| rumqttc::matches(topic, f)) {
            return Some(c.device_of(&msg).map(|(device, _)| Recognised::Disconnect { device }));
        }
        let (rule, (_, c, names)) =
            self.attributes.iter().enumerate().find(|(_, (f, _, _))| rumqttc::matches(topic, f))?;
        Some(c.device_of(&msg).and_then(|(device, _)| {
            let keys = attribute_names(names, topic, payload)?;
            if keys.is_empty() {
                return Err("the request names no attribute".into());
            }
            Ok(Recognised::Attributes { rule, device, keys })
        }))
    }
}

impl AttributeRule {
    /// The message that answers an attribute request: topic, payload, QoS,
    /// retain. `values` are what ThingsBoard had of the `keys` asked for.
    pub fn answer(
        &self,
        device: &str,
        keys: &[String],
        values: &serde_json::Map<String, Value>,
    ) -> (String, Vec<u8>, u8, bool) {
        let r = self;
        let first = keys.first().map_or("", String::as_str);
        let topic = r.topic_expression.replace("${deviceName}", device).replace("${attributeKey}", first);
        let payload = if keys.len() == 1 {
            let value = values.get(first).map_or_else(|| "null".to_owned(), Value::to_string);
            r.value_expression
                .replace("${attributeKey}", first)
                .replace("${attributeValue}", &value)
                .replace("${deviceName}", device)
        } else {
            Value::Object(values.clone()).to_string()
        };
        (topic, payload.into_bytes(), r.qos, r.retain)
    }
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

    fn requests(json: &str) -> (Requests, Diagnostics) {
        let doc: Value = serde_json::from_str(json).unwrap();
        let mut d = Diagnostics::default();
        let cfg = parse(&mut d, "requestsMapping", &doc);
        (Requests::new(cfg), d)
    }

    #[test]
    fn the_python_gateways_default_sections() {
        let (r, d) = requests(
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
        assert!(d.is_ok(), "{:?}", d.errors);
        assert_eq!(
            r.recognise("sensor/connect", br#"{"SerialNumber":"SN-1"}"#),
            Some(Ok(Recognised::Connect { device: "SN-1".into(), device_type: Some("thermometer".into()) }))
        );
        assert_eq!(
            r.recognise("sensor/A7/connect", b""),
            Some(Ok(Recognised::Connect { device: "A7".into(), device_type: None }))
        );
        assert_eq!(
            r.recognise("sensor/A7/disconnect", b"{}"),
            Some(Ok(Recognised::Disconnect { device: "A7".into() }))
        );
        assert_eq!(
            r.recognise(
                "v1/devices/me/attributes/request",
                br#"{"serialNumber":"SN-2","versionAttribute":"fw","pduAttribute":"pdu"}"#
            ),
            Some(Ok(Recognised::Attributes { rule: 0, device: "SN-2".into(), keys: vec!["fw".into(), "pdu".into()] }))
        );
        assert!(matches!(r.recognise("sensor/connect", b"not json"), Some(Err(e)) if e.contains("JSON")));
        assert_eq!(r.recognise("sensor/A7/data", b"{}"), None);
    }

    #[test]
    fn answers_one_key_with_the_value_expression_and_several_as_an_object() {
        let (r, _) = requests(
            r#"{"attributeRequests":[{"topicFilter":"req","deviceInfo":{"deviceNameExpressionSource":"constant","deviceNameExpression":"D"},
                "attributeNameExpressionSource":"constant","attributeNameExpression":"a",
                "topicExpression":"devices/${deviceName}/${attributeKey}","valueExpression":"{\"${attributeKey}\":${attributeValue}}"}]}"#,
        );
        let values: serde_json::Map<String, Value> = serde_json::from_str(r#"{"a":"on","b":2}"#).unwrap();
        let rule = &r.config.attributes[0];
        let (topic, payload, _, _) = rule.answer("D", &["a".into()], &values);
        assert_eq!((topic.as_str(), payload.as_slice()), ("devices/D/a", br#"{"a":"on"}"#.as_slice()));
        let (_, payload, _, _) = rule.answer("D", &["a".into(), "b".into()], &values);
        assert_eq!(payload, br#"{"a":"on","b":2}"#);
    }

    #[test]
    fn bad_sections_are_reported_by_path() {
        let (_, d) = requests(
            r#"{"connectRequests":[{"topicFilter":"a/#/b","deviceInfo":{"deviceNameExpressionSource":"topic","deviceNameExpression":"(("}}],
               "attributeRequests":[{"topicFilter":"r","deviceInfo":{"deviceNameExpressionSource":"constant","deviceNameExpression":"D"},
                 "attributeNameExpressionSource":"header","attributeNameExpression":"x"}]}"#,
        );
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        assert!(errors.iter().any(|e| e.starts_with("requestsMapping.connectRequests[0].topicFilter:")), "{errors:#?}");
        assert!(
            errors.iter().any(|e| e.starts_with("requestsMapping.connectRequests[0].deviceInfo.deviceNameExpression:")),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("requestsMapping.attributeRequests[0].attributeNameExpressionSource:")),
            "{errors:#?}"
        );
        assert!(
            errors.contains(&"requestsMapping.attributeRequests[0].topicExpression: required".to_owned()),
            "{errors:#?}"
        );
    }
}
