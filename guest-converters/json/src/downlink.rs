//! The `json` downlink converter: ThingsBoard's requests to device messages,
//! configured as the ThingsBoard IoT Gateway's MQTT `requestsMapping`.
//!
//! ```json
//! {
//!   "attributeUpdates": [{
//!     "deviceNameFilter": ".*", "attributeFilter": "relay",
//!     "topicExpression": "sensor/${deviceName}/relay",
//!     "valueExpression": "{\"${attributeKey}\":${attributeValue}}",
//!     "retain": false, "qos": 0
//!   }],
//!   "serverSideRpc": [{
//!     "type": "twoWay", "deviceNameFilter": ".*", "methodFilter": "getRelay",
//!     "requestTopicExpression": "sensor/${deviceName}/request/${methodName}/${requestId}",
//!     "responseTopicExpression": "sensor/${deviceName}/response/${methodName}/${requestId}",
//!     "responseTimeout": 10000, "responseTopicQoS": 1,
//!     "valueExpression": "${params}"
//!   }]
//! }
//! ```
//!
//! It also answers devices' attribute requests: an `attributeRequests`
//! entry's `topicExpression` (`${deviceName}`, `${attributeKey}`) and, for
//! one attribute, `valueExpression` (`${attributeKey}`, `${attributeValue}`
//! as JSON, `${deviceName}`), or for several a JSON object of every value,
//! as the Python gateway does; `retain` and `qos` too. Its other keys, and
//! the `connectRequests`/`disconnectRequests` sections, recognise the
//! requests ([`crate::requests`]) and are accepted here unread, so that the
//! whole `requestsMapping` is passed to both.
//!
//! The reply to an RPC ([`DownlinkConverter::reply`]): a two-way RPC's is
//! the device's response, as JSON when it is JSON and as a JSON string of
//! its text otherwise; a one-way RPC's is `{"success": true}` once sent.
//!
//! As in the Python gateway: `deviceNameFilter` and `attributeFilter` of an
//! attribute update must match from the start of the name (`re.match`);
//! `deviceNameFilter` and `methodFilter` of an RPC may match anywhere
//! (`re.search`), and the first matching RPC entry serves the request. In an
//! RPC's `valueExpression`, `${params}` and `${params.x}` are written as JSON
//! (a string parameter comes out quoted); in topics they are plain text. An
//! attribute value is plain text everywhere (`true`, `21.5`, `ON`, or JSON
//! text for an object).
//!
//! Unlike the Python gateway, a placeholder that cannot be filled fails the
//! request with a reason (which tbgw reports to ThingsBoard) instead of
//! sending the placeholder's own text to the device.

use crate::json::{Json, write_f64};
use crate::template::Template;
use crate::{Entry, Value};
use fancy_regex::Regex;
use tbgw_data::config::{self, ConfigError, Obj};
use tbgw_data::{
    AttributeResponse, DownlinkMessage, DownlinkRequest, MqttPublish, MqttResponse, RpcAnswer, RpcRequest,
};

/// A configured JSON downlink converter.
#[derive(Debug)]
pub struct DownlinkConverter {
    attribute_updates: Vec<AttributeRule>,
    rpcs: Vec<RpcRule>,
    /// The answers to `attributeRequests`, by index.
    attribute_answers: Vec<AnswerRule>,
}

#[derive(Debug)]
struct AnswerRule {
    topic: Template,
    value: Template,
    qos: u8,
    retain: bool,
}

#[derive(Debug)]
struct AttributeRule {
    device_filter: Regex,
    attribute_filter: Regex,
    topic: Template,
    value: Template,
    qos: u8,
    retain: bool,
}

#[derive(Debug)]
struct RpcRule {
    device_filter: Regex,
    method_filter: Regex,
    request_topic: Template,
    value: Template,
    response: Option<Response>,
    qos: u8,
    retain: bool,
}

#[derive(Debug)]
struct Response {
    topic: Template,
    timeout_ms: u32,
    qos: u8,
}

const ATTRIBUTE_NAMES: &[&str] = &["deviceName", "attributeKey", "attributeValue"];
const RPC_NAMES: &[&str] = &["deviceName", "methodName", "requestId", "params"];
/// What a two-way RPC waits for its answer when `responseTimeout` is absent.
const DEFAULT_RESPONSE_TIMEOUT_MS: u32 = 10_000;

impl DownlinkConverter {
    /// Build a converter from its JSON config (a `requestsMapping` object).
    pub fn new(config_text: &str) -> Result<(DownlinkConverter, Vec<String>), ConfigError> {
        let doc = config::parse_document(config_text)?;
        let mut notices = Vec::new();
        let mut root = Obj::new("", &doc)?;
        root.allow(&["connectRequests", "disconnectRequests"]);
        let mut attribute_updates = Vec::new();
        for (path, item) in config::array(&mut root, "attributeUpdates")? {
            attribute_updates.push(attribute_rule(&path, item)?);
        }
        let mut rpcs = Vec::new();
        for (path, item) in config::array(&mut root, "serverSideRpc")? {
            rpcs.push(rpc_rule(&path, item, &mut notices)?);
        }
        let mut attribute_answers = Vec::new();
        for (path, item) in config::array(&mut root, "attributeRequests")? {
            attribute_answers.push(answer_rule(&path, item)?);
        }
        root.finish()?;
        if attribute_updates.is_empty() && rpcs.is_empty() && attribute_answers.is_empty() {
            notices.push(
                "neither attributeUpdates, serverSideRpc nor attributeRequests has an entry: every request will fail"
                    .into(),
            );
        }
        Ok((DownlinkConverter { attribute_updates, rpcs, attribute_answers }, notices))
    }

    /// The messages that serve `request`, or why it cannot be served.
    pub fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        match request {
            DownlinkRequest::Rpc(RpcRequest { device, id, method, params }) => self.rpc(device, *id, method, params),
            DownlinkRequest::AttributeUpdate(u) => self.attribute_update(&u.device, &u.entries),
            DownlinkRequest::AttributeResponse(r) => self.attribute_answer(r).map(|m| vec![m]),
        }
    }

    /// ThingsBoard's reply to an RPC: the device's response (JSON, or its
    /// text as a JSON string), or `{"success": true}` for a one-way RPC.
    pub fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        Ok(answer.plain_reply())
    }

    fn attribute_answer(&self, r: &AttributeResponse) -> Result<DownlinkMessage, String> {
        let rule = r
            .context
            .strip_prefix("attributeRequests[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.attribute_answers.get(i))
            .ok_or_else(|| format!("`{}` names no attributeRequests entry of this converter", r.context))?;
        let first = r.keys.first().map_or("", String::as_str);
        let json_of = |key: &str| {
            r.values.iter().find(|e| e.key == key).map_or_else(|| "null".to_owned(), |e| value_json(&e.value))
        };
        let topic = rule.topic.render(|path, out: &mut String| {
            match path.text() {
                "deviceName" => out.push_str(&r.device),
                "attributeKey" => out.push_str(first),
                other => return Err(format!("topicExpression: `${{{other}}}` is not known here")),
            }
            Ok(())
        })?;
        let payload = if r.keys.len() == 1 {
            rule.value.render(|path, out: &mut String| {
                match path.text() {
                    "deviceName" => out.push_str(&r.device),
                    "attributeKey" => out.push_str(first),
                    "attributeValue" => out.push_str(&json_of(first)),
                    other => return Err(format!("valueExpression: `${{{other}}}` is not known here")),
                }
                Ok(())
            })?
        } else {
            let mut out = String::from("{");
            for (i, e) in r.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                crate::json::write_json_string(&e.key, &mut out);
                out.push(':');
                out.push_str(&value_json(&e.value));
            }
            out.push('}');
            out
        };
        Ok(DownlinkMessage::Mqtt(MqttPublish {
            topic,
            payload: payload.into_bytes(),
            qos: rule.qos,
            retain: rule.retain,
            response: None,
        }))
    }

    fn rpc(&self, device: &str, id: i64, method: &str, params_text: &str) -> Result<Vec<DownlinkMessage>, String> {
        let rule = self
            .rpcs
            .iter()
            .find(|r| search(&r.device_filter, device) && search(&r.method_filter, method))
            .ok_or_else(|| format!("no serverSideRpc entry matches device `{device}` and method `{method}`"))?;
        let params = if params_text.trim().is_empty() {
            Json::Null
        } else {
            Json::parse(params_text.as_bytes()).map_err(|e| format!("RPC params: {e}"))?
        };
        let ctx = RpcContext { device, id, method, params: &params };
        let topic = ctx.render(&rule.request_topic, false).map_err(|e| format!("requestTopicExpression: {e}"))?;
        let payload = ctx.render(&rule.value, true).map_err(|e| format!("valueExpression: {e}"))?;
        let response = match &rule.response {
            Some(r) => Some(MqttResponse {
                topic: ctx.render(&r.topic, false).map_err(|e| format!("responseTopicExpression: {e}"))?,
                qos: r.qos,
                timeout_ms: r.timeout_ms,
            }),
            None => None,
        };
        Ok(vec![DownlinkMessage::Mqtt(MqttPublish {
            topic,
            payload: payload.into_bytes(),
            qos: rule.qos,
            retain: rule.retain,
            response,
        })])
    }

    fn attribute_update(&self, device: &str, entries: &[Entry]) -> Result<Vec<DownlinkMessage>, String> {
        let rules: Vec<&AttributeRule> =
            self.attribute_updates.iter().filter(|r| search(&r.device_filter, device)).collect();
        if rules.is_empty() {
            return Err(format!("no attributeUpdates entry matches device `{device}`"));
        }
        let mut out = Vec::new();
        for rule in rules {
            for entry in entries.iter().filter(|e| search(&rule.attribute_filter, &e.key)) {
                let value = value_text(&entry.value);
                let render = |t: &Template| {
                    t.render(|path, out: &mut String| {
                        match path.text() {
                            "deviceName" => out.push_str(device),
                            "attributeKey" => out.push_str(&entry.key),
                            _ => out.push_str(&value),
                        }
                        Ok::<_, String>(())
                    })
                };
                out.push(DownlinkMessage::Mqtt(MqttPublish {
                    topic: render(&rule.topic)?,
                    payload: render(&rule.value)?.into_bytes(),
                    qos: rule.qos,
                    retain: rule.retain,
                    response: None,
                }));
            }
        }
        if out.is_empty() {
            let keys: Vec<String> = entries.iter().map(|e| format!("`{}`", e.key)).collect();
            return Err(format!(
                "no attributeUpdates entry for device `{device}` matches attribute {}",
                keys.join(", ")
            ));
        }
        Ok(out)
    }
}

struct RpcContext<'r, 'p> {
    device: &'r str,
    id: i64,
    method: &'r str,
    params: &'r Json<'p>,
}

impl RpcContext<'_, '_> {
    /// Fill a template; `json` writes parameters as JSON (payloads) rather
    /// than as plain text (topics).
    fn render(&self, t: &Template, json: bool) -> Result<String, String> {
        t.render(|path, out| {
            match path.first_key() {
                Some("deviceName") => out.push_str(self.device),
                Some("methodName") => out.push_str(self.method),
                Some("requestId") => out.push_str(itoa::Buffer::new().format(self.id)),
                _ => {
                    let v = path
                        .eval_tail(self.params)
                        .ok_or_else(|| format!("`${{{}}}` is not in the RPC params", path.text()))?;
                    if json { v.write_json(out) } else { v.write_text(out) }
                }
            }
            Ok(())
        })
    }
}

/// An attribute value as JSON text.
fn value_json(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Text(s) => crate::json::write_json_string(s, &mut out),
        Value::Json(s) => out.push_str(s),
        other => out.push_str(&value_text(other)),
    }
    out
}

/// An attribute value as plain text: text as it is, JSON as JSON text.
fn value_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => {
            let mut s = String::new();
            write_f64(*f, &mut s);
            s
        }
        Value::Text(s) | Value::Json(s) => s.clone(),
    }
}

fn search(re: &Regex, text: &str) -> bool {
    re.is_match(text).unwrap_or(false)
}

fn attribute_rule(path: &str, item: &serde_json::Value) -> Result<AttributeRule, ConfigError> {
    let mut obj = Obj::new(path, item)?;
    let rule = AttributeRule {
        device_filter: regex(&mut obj, "deviceNameFilter", true)?,
        attribute_filter: regex(&mut obj, "attributeFilter", true)?,
        topic: names_template(&mut obj, "topicExpression", ATTRIBUTE_NAMES, false)?,
        value: names_template(&mut obj, "valueExpression", ATTRIBUTE_NAMES, false)?,
        qos: qos(&mut obj, "qos")?.unwrap_or(0),
        retain: obj.opt_bool("retain")?.unwrap_or(false),
    };
    obj.finish()?;
    Ok(rule)
}

/// What answers an `attributeRequests` entry (its other keys recognise
/// the request: [`crate::requests`]).
fn answer_rule(path: &str, item: &serde_json::Value) -> Result<AnswerRule, ConfigError> {
    let mut obj = Obj::new(path, item)?;
    let names = ["deviceName", "attributeKey", "attributeValue"];
    let rule = AnswerRule {
        topic: names_template(&mut obj, "topicExpression", &names[..2], false)?,
        value: match obj.opt_str("valueExpression")? {
            Some(_) => names_template(&mut obj, "valueExpression", &names, false)?,
            None => {
                Template::parse("${attributeValue}").map_err(|e| ConfigError::at(obj.field("valueExpression"), e))?
            }
        },
        qos: qos(&mut obj, "qos")?.unwrap_or(0).min(1),
        retain: obj.opt_bool("retain")?.unwrap_or(false),
    };
    obj.allow(&crate::requests::RECOGNISE_KEYS);
    obj.finish()?;
    Ok(rule)
}

fn rpc_rule(path: &str, item: &serde_json::Value, notices: &mut Vec<String>) -> Result<RpcRule, ConfigError> {
    let mut obj = Obj::new(path, item)?;
    let kind = obj.opt_str("type")?;
    let device_filter = regex(&mut obj, "deviceNameFilter", false)?;
    let method_filter = regex(&mut obj, "methodFilter", false)?;
    let request_topic = names_template(&mut obj, "requestTopicExpression", RPC_NAMES, true)?;
    let value = names_template(&mut obj, "valueExpression", RPC_NAMES, true)?;
    let response_topic = match obj.opt_str("responseTopicExpression")? {
        Some(_) => Some(names_template(&mut obj, "responseTopicExpression", RPC_NAMES, true)?),
        None => None,
    };
    let timeout = obj.opt_uint("responseTimeout", 24 * 3_600_000)?.map(|t| t as u32);
    let response_qos = qos(&mut obj, "responseTopicQoS")?;
    let response = match (kind, response_topic) {
        (Some("oneWay"), Some(_)) => {
            return Err(ConfigError::at(
                obj.field("responseTopicExpression"),
                "a oneWay RPC gets no response; remove this or make the type twoWay",
            ));
        }
        (Some("twoWay"), None) => {
            return Err(ConfigError::at(obj.field("responseTopicExpression"), "required for a twoWay RPC"));
        }
        (Some(k), _) if k != "oneWay" && k != "twoWay" => {
            return Err(ConfigError::at(obj.field("type"), format!("unknown type `{k}`; expected oneWay or twoWay")));
        }
        (_, Some(topic)) => {
            let timeout_ms = timeout.unwrap_or_else(|| {
                notices.push(format!(
                    "{}: not set; waiting {DEFAULT_RESPONSE_TIMEOUT_MS} ms for responses",
                    obj.field("responseTimeout")
                ));
                DEFAULT_RESPONSE_TIMEOUT_MS
            });
            Some(Response { topic, timeout_ms, qos: response_qos.unwrap_or(1) })
        }
        (_, None) => None,
    };
    let rule = RpcRule {
        device_filter,
        method_filter,
        request_topic,
        value,
        response,
        qos: qos(&mut obj, "qos")?.unwrap_or(0),
        retain: obj.opt_bool("retain")?.unwrap_or(false),
    };
    obj.finish()?;
    Ok(rule)
}

/// A required regex; `anchored` makes it match from the start only.
fn regex(obj: &mut Obj, key: &'static str, anchored: bool) -> Result<Regex, ConfigError> {
    let text = obj.req_str(key)?;
    let pattern = if anchored { format!("^(?:{text})") } else { text.to_owned() };
    Regex::new(&pattern).map_err(|e| ConfigError::at(obj.field(key), format!("invalid regular expression: {e}")))
}

fn qos(obj: &mut Obj, key: &'static str) -> Result<Option<u8>, ConfigError> {
    Ok(obj.opt_uint(key, 2)?.map(|q| q as u8))
}

/// A required template whose placeholders are all among `names` (with a
/// path after `params` when `params_paths`).
fn names_template(
    obj: &mut Obj,
    key: &'static str,
    names: &[&str],
    params_paths: bool,
) -> Result<Template, ConfigError> {
    let field = obj.field(key);
    let text = obj.req_str(key)?;
    let t = Template::parse(text).map_err(|e| ConfigError::at(&field, e))?;
    for path in t.exprs() {
        let ok = match path.first_key() {
            Some("params") if params_paths => true,
            Some(name) => path.is_single_key() && names.contains(&name),
            None => false,
        };
        if !ok {
            let known: Vec<String> = names.iter().map(|n| format!("${{{n}}}")).collect();
            return Err(ConfigError::at(
                &field,
                format!("unknown placeholder `${{{}}}`; expected {}", path.text(), known.join(", ")),
            ));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(config: &str) -> DownlinkConverter {
        DownlinkConverter::new(config).unwrap().0
    }

    #[test]
    fn rpc_params_are_json_in_payloads_and_text_in_topics() {
        let c = conv(
            r#"{"serverSideRpc":[{"deviceNameFilter":".*","methodFilter":"set",
                "requestTopicExpression":"d/${deviceName}/${params.mode}/${requestId}",
                "valueExpression":"{\"m\":${params.mode},\"all\":${params}}"}]}"#,
        );
        let rpc =
            RpcRequest { device: "A".into(), id: 7, method: "setMode".into(), params: r#"{"mode":"eco"}"#.into() };
        let out = c.convert(&DownlinkRequest::Rpc(rpc)).unwrap();
        let [DownlinkMessage::Mqtt(p)] = &out[..] else { panic!("{out:?}") };
        assert_eq!(p.topic, "d/A/eco/7");
        assert_eq!(String::from_utf8(p.payload.clone()).unwrap(), r#"{"m":"eco","all":{"mode":"eco"}}"#);
    }

    #[test]
    fn attribute_filters_match_from_the_start() {
        let c = conv(
            r#"{"attributeUpdates":[{"deviceNameFilter":"dev","attributeFilter":"relay",
                "topicExpression":"t/${deviceName}","valueExpression":"${attributeValue}"}]}"#,
        );
        let update = |device: &str| {
            DownlinkRequest::AttributeUpdate(tbgw_data::AttributeUpdate {
                device: device.into(),
                entries: vec![Entry::new("relay", Value::Bool(true))],
            })
        };
        assert!(c.convert(&update("dev-1")).is_ok());
        let err = c.convert(&update("my-dev")).unwrap_err();
        assert_eq!(err, "no attributeUpdates entry matches device `my-dev`");
    }

    #[test]
    fn unknown_placeholders_are_config_errors() {
        let err = DownlinkConverter::new(
            r#"{"attributeUpdates":[{"deviceNameFilter":".*","attributeFilter":".*",
                "topicExpression":"t/${device}","valueExpression":"x"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("attributeUpdates[0].topicExpression"));
        assert!(err.message.contains("unknown placeholder `${device}`"), "{}", err.message);
    }

    #[test]
    fn attribute_requests_are_answered_with_their_entry() {
        let c = conv(
            r#"{"attributeRequests":[{"topicFilter":"req","deviceInfo":{"deviceNameExpressionSource":"constant","deviceNameExpression":"D"},
                "attributeNameExpressionSource":"constant","attributeNameExpression":"a",
                "topicExpression":"devices/${deviceName}/${attributeKey}","valueExpression":"{\"${attributeKey}\":${attributeValue}}"}]}"#,
        );
        let answer = |keys: &[&str]| {
            let r = AttributeResponse {
                device: "D".into(),
                keys: keys.iter().map(|k| k.to_string()).collect(),
                values: vec![Entry::new("a", Value::Text("on".into())), Entry::new("b", Value::Int(2))],
                context: "attributeRequests[0]".into(),
            };
            match c.convert(&DownlinkRequest::AttributeResponse(r)).unwrap().remove(0) {
                DownlinkMessage::Mqtt(p) => (p.topic, String::from_utf8(p.payload).unwrap()),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(answer(&["a"]), ("devices/D/a".into(), r#"{"a":"on"}"#.into()));
        assert_eq!(answer(&["a", "b"]).1, r#"{"a":"on","b":2}"#);
        let r = AttributeResponse {
            device: "D".into(),
            keys: vec![],
            values: vec![],
            context: "attributeRequests[4]".into(),
        };
        assert!(c.convert(&DownlinkRequest::AttributeResponse(r)).unwrap_err().contains("no attributeRequests entry"));
    }
}
