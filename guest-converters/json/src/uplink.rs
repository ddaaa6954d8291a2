//! The `json` uplink converter: the ThingsBoard IoT Gateway's JSON converter
//! (3.x config), message by message.
//!
//! Config (the `converter` object of an MQTT mapping):
//!
//! ```json
//! {
//!   "type": "json",
//!   "deviceInfo": {
//!     "deviceNameExpressionSource": "message",      // message | topic | constant
//!     "deviceNameExpression": "${serialNumber}",
//!     "deviceProfileExpressionSource": "constant",
//!     "deviceProfileExpression": "thermometer"
//!   },
//!   "attributes": [{"type": "string", "key": "model", "value": "${sensorModel}"}],
//!   "timeseries": [{"type": "double", "key": "temperature", "value": "${temp}"}],
//!   "useReceivedTs": false
//! }
//! ```
//!
//! Where it differs from the Python gateway, on purpose:
//! - an unresolvable device name fails the message instead of creating a
//!   device literally named `${serialNumber}` (or named after the regex);
//! - a missing or null field, or a value that does not convert to its type,
//!   drops that key with a reason instead of sending `"None"` or a string;
//! - `json`/`raw` values are JSON text, `bool` reads `"false"` as false;
//! - the elements of a JSON array payload stay separate updates, never
//!   merged (merging by timestamp loses values);
//! - for `"*"` telemetry, the message's `ts` is the timestamp, not a value.

use crate::coerce::{self, DataType, TYPE_NAMES};
use crate::json::Json;
use crate::path::Path;
use crate::template::Template;
use crate::time::{self, DateOrder};
use crate::{ConvertedMessage, DeviceUpdate, Dropped, Entry, Key, Telemetry, Value};
use fancy_regex::Regex;
use serde_json::Value as ConfigValue;
use tbgw_data::config::{self, ConfigError, Obj};

/// A message to convert.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The MQTT topic, when the message has one.
    pub topic: Option<&'a str>,
    pub payload: &'a [u8],
}

impl<'a> From<&'a tbgw_data::RawUplink> for Message<'a> {
    fn from(m: &'a tbgw_data::RawUplink) -> Self {
        Message { topic: m.source.topic(), payload: &m.payload }
    }
}

/// A configured JSON uplink converter.
#[derive(Debug)]
pub struct UplinkConverter {
    device_name: NameRule,
    device_type: Option<NameRule>,
    attributes: Vec<Rule>,
    timeseries: Vec<Rule>,
    /// The distinct `tsField`s of the time series: usually every key names
    /// the same one, and it is read once per message, not once per key.
    ts_fields: Vec<(Path, DateOrder)>,
    use_received_ts: bool,
}

/// Where a device name (or profile) comes from.
#[derive(Debug)]
enum NameRule {
    /// `message` or `constant`: a template over the message.
    Template(Template),
    /// `topic`: the last group of a regex search over the topic (or the
    /// whole match when it has no group), as Python's `re.search`.
    Topic(TopicRegex),
}

#[derive(Debug)]
struct TopicRegex {
    regex: Regex,
    source: String,
}

#[derive(Debug)]
enum Rule {
    /// `"*"`: every member of the message.
    All,
    One(Box<KeyRule>),
}

#[derive(Debug)]
struct KeyRule {
    key: KeyExpr,
    value: ValueExpr,
    /// The index of its `tsField` in `UplinkConverter::ts_fields`.
    ts: Option<usize>,
}

#[derive(Debug)]
enum KeyExpr {
    Constant(Key),
    Template(Template),
    Topic(TopicRegex),
}

#[derive(Debug)]
enum ValueExpr {
    /// A constant, converted once when the converter is created.
    Constant(Value),
    /// `"${path}"`: the value keeps its JSON type until converted.
    Path(Path, DataType),
    /// Text with expressions: rendered to text, then converted.
    Template(Template, DataType),
}

impl UplinkConverter {
    /// Build a converter from its JSON config. Returns it with notices about
    /// keys that were accepted but are not used.
    pub fn new(config_text: &str) -> Result<(UplinkConverter, Vec<String>), ConfigError> {
        let doc = config::parse_document(config_text)?;
        let mut notices = Vec::new();
        let mut root = Obj::new("", &doc)?;
        if let Some(t) = root.opt_str("type")?
            && !t.eq_ignore_ascii_case("json")
        {
            return Err(ConfigError::at("type", format!("this is the `json` converter; found type `{t}`")));
        }
        if root.opt_bool("useEval")? == Some(true) {
            return Err(ConfigError::at(
                "useEval",
                "not supported: tbgw never evaluates message text as code; convert with `type` instead",
            ));
        }
        root.ignore(
            &[
                ("timeout", "conversion deadlines are set per converter in tbgw's own config"),
                ("cached", "tbgw always reuses converter instances"),
            ],
            &mut notices,
        );
        // Report strategies are the gateway's, applied after conversion.
        root.allow(&["sendDataOnlyOnChange", "reportStrategy"]);
        let use_received_ts = root.opt_bool("useReceivedTs")?.unwrap_or(false);

        // The current `deviceInfo` block, or the older top-level keys.
        let legacy_name_json = root.opt_str("deviceNameJsonExpression")?;
        let legacy_type_json = root.opt_str("deviceTypeJsonExpression")?;
        let legacy_name_topic = root.opt_str("deviceNameTopicExpression")?;
        let legacy_type_topic = root.opt_str("deviceTypeTopicExpression")?;
        let (device_name, device_type) = match root.get("deviceInfo") {
            Some(info) => {
                let mut info = Obj::new("deviceInfo", info)?;
                let name = name_rule(&mut info, "deviceNameExpressionSource", "deviceNameExpression")?
                    .ok_or_else(|| info.missing("deviceNameExpression"))?;
                let profile = name_rule(&mut info, "deviceProfileExpressionSource", "deviceProfileExpression")?;
                info.finish()?;
                (name, profile)
            }
            None => {
                let name = match (legacy_name_json, legacy_name_topic) {
                    (Some(e), _) => NameRule::Template(template("deviceNameJsonExpression", e)?),
                    (None, Some(e)) => NameRule::Topic(topic_regex("deviceNameTopicExpression", e)?),
                    (None, None) => {
                        return Err(ConfigError::at(
                            "deviceInfo",
                            "required: say where the device name comes from (deviceNameExpressionSource and deviceNameExpression)",
                        ));
                    }
                };
                let profile = match (legacy_type_json, legacy_type_topic) {
                    (Some(e), _) => Some(NameRule::Template(template("deviceTypeJsonExpression", e)?)),
                    (None, Some(e)) => Some(NameRule::Topic(topic_regex("deviceTypeTopicExpression", e)?)),
                    (None, None) => None,
                };
                (name, profile)
            }
        };

        let mut ts_fields = Vec::new();
        let attributes = rules(&mut root, "attributes", None)?;
        let timeseries = rules(&mut root, "timeseries", Some(&mut ts_fields))?;
        root.finish()?;
        let converter =
            UplinkConverter { device_name, device_type, attributes, timeseries, ts_fields, use_received_ts };
        Ok((converter, notices))
    }

    /// Convert one message. An error means nothing could be converted (the
    /// payload is not JSON, the device name cannot be resolved, ...); values
    /// left out of a converted message are listed in `dropped`.
    pub fn convert(&self, msg: &Message<'_>) -> Result<ConvertedMessage, String> {
        let doc = Json::parse(msg.payload)?;
        let mut out = ConvertedMessage::default();
        match &doc {
            Json::Object(_) => {
                if let Some(update) = self.convert_object(&doc, msg.topic, "", &mut out.dropped)? {
                    out.updates.push(update);
                }
            }
            Json::Array(items) => {
                let mut first_error = None;
                let mut failed = 0;
                for (i, item) in items.iter().enumerate() {
                    let prefix = format!("[{i}].");
                    let result = match item {
                        Json::Object(_) => self.convert_object(item, msg.topic, &prefix, &mut out.dropped),
                        other => Err(format!("{} is not an object", other.kind())),
                    };
                    match result {
                        Ok(Some(update)) => out.updates.push(update),
                        Ok(None) => {}
                        Err(reason) => {
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("[{i}]: {reason}"));
                            out.dropped.push(Dropped { key: format!("[{i}]"), reason });
                        }
                    }
                }
                if failed == items.len()
                    && let Some(e) = first_error
                {
                    return Err(format!("no element of the array converted; {e}"));
                }
            }
            other => return Err(format!("payload is {}; expected a JSON object or an array of objects", other.kind())),
        }
        Ok(out)
    }

    /// The device a message speaks for (name, profile), without its values:
    /// what a connector needs of a device's own request ("connect me",
    /// "send me my attributes"). The payload need not be JSON when the name
    /// comes from the topic or a constant (an empty `sensor/A/connect`).
    pub fn device_of(&self, msg: &Message<'_>) -> Result<(String, Option<String>), String> {
        let doc = match Json::parse(msg.payload) {
            Ok(doc) => doc,
            Err(e) if matches!(self.device_name, NameRule::Template(ref t) if t.constant().is_none()) => return Err(e),
            Err(_) => Json::Null,
        };
        let device = resolve_name(&self.device_name, &doc, msg.topic).map_err(|e| format!("device name: {e}"))?;
        if device.is_empty() {
            return Err("device name: resolves to empty text".into());
        }
        let device_type = self
            .device_type
            .as_ref()
            .and_then(|rule| resolve_name(rule, &doc, msg.topic).ok())
            .filter(|t| !t.is_empty());
        Ok((device, device_type))
    }

    fn convert_object(
        &self,
        obj: &Json,
        topic: Option<&str>,
        prefix: &str,
        dropped: &mut Vec<Dropped>,
    ) -> Result<Option<DeviceUpdate>, String> {
        let device = resolve_name(&self.device_name, obj, topic).map_err(|e| format!("device name: {e}"))?;
        if device.is_empty() {
            return Err("device name: resolves to empty text".into());
        }
        let device_type = match &self.device_type {
            None => None,
            Some(rule) => match resolve_name(rule, obj, topic) {
                Ok(t) if !t.is_empty() => Some(t),
                Ok(_) => None,
                Err(reason) => {
                    dropped.push(Dropped { key: format!("{prefix}deviceType"), reason });
                    None
                }
            },
        };

        let mut attributes: Vec<Entry> = Vec::new();
        for rule in &self.attributes {
            match rule {
                Rule::All => push_all(obj.members(), None, &mut attributes, prefix, dropped),
                Rule::One(rule) => {
                    if let Some(entry) = rule.resolve(obj, topic, prefix, dropped) {
                        upsert(&mut attributes, entry);
                    }
                }
            }
        }

        let mut telemetry: Vec<Telemetry> = Vec::new();
        let mut message_ts: Option<Option<i64>> = None;
        let mut ts_memo: Vec<Option<Result<i64, String>>> = Vec::new();
        for rule in &self.timeseries {
            match rule {
                Rule::All => {
                    // ThingsBoard's own shape {"ts": .., "values": {..}}, or
                    // every member but the timestamp.
                    let (members, skip) = match obj.get("values") {
                        Some(values @ Json::Object(_)) => (values.members(), None),
                        _ => (obj.members(), self.ts_key(obj)),
                    };
                    let ts = *message_ts.get_or_insert_with(|| self.message_ts(obj, prefix, dropped));
                    let mut values = Vec::with_capacity(members.len());
                    push_all(members, skip, &mut values, prefix, dropped);
                    group(&mut telemetry, ts).extend(values);
                }
                Rule::One(rule) => {
                    let Some(entry) = rule.resolve(obj, topic, prefix, dropped) else { continue };
                    let ts = match rule.ts {
                        Some(i) if !self.use_received_ts => {
                            if ts_memo.is_empty() {
                                ts_memo.resize(self.ts_fields.len(), None);
                            }
                            let (path, order) = &self.ts_fields[i];
                            ts_memo[i].get_or_insert_with(|| ts_field(obj, path, *order)).clone()
                        }
                        _ => Err(String::new()),
                    };
                    let ts = match ts {
                        Ok(ts) => Some(ts),
                        Err(reason) if !reason.is_empty() => {
                            dropped.push(Dropped { key: format!("{prefix}{}.ts", entry.key), reason });
                            *message_ts.get_or_insert_with(|| self.message_ts(obj, prefix, dropped))
                        }
                        Err(_) => *message_ts.get_or_insert_with(|| self.message_ts(obj, prefix, dropped)),
                    };
                    upsert(group(&mut telemetry, ts), entry);
                }
            }
        }

        if attributes.is_empty() && telemetry.iter().all(|t| t.values.is_empty()) {
            return Ok(None);
        }
        telemetry.retain(|t| !t.values.is_empty());
        Ok(Some(DeviceUpdate { device, device_type, attributes, telemetry }))
    }

    /// The key holding the message's timestamp (`ts`, else `timestamp`).
    fn ts_key(&self, obj: &Json) -> Option<&'static str> {
        if self.use_received_ts {
            return None;
        }
        ["ts", "timestamp"].into_iter().find(|k| obj.get(k).is_some())
    }

    /// The message's own timestamp, `None` to use the time of receipt.
    fn message_ts(&self, obj: &Json, prefix: &str, dropped: &mut Vec<Dropped>) -> Option<i64> {
        let key = self.ts_key(obj)?;
        let value = obj.get(key)?;
        match time::from_json(value, DateOrder::default()) {
            Ok(ts) => Some(ts),
            Err(reason) => {
                dropped.push(Dropped {
                    key: format!("{prefix}{key}"),
                    reason: format!("{reason}; using the time of receipt"),
                });
                None
            }
        }
    }
}

impl KeyRule {
    /// The entry this rule makes of `obj`, or `None` with the reason pushed
    /// to `dropped`.
    fn resolve(&self, obj: &Json, topic: Option<&str>, prefix: &str, dropped: &mut Vec<Dropped>) -> Option<Entry> {
        let key = match &self.key {
            KeyExpr::Constant(k) => k.clone(),
            KeyExpr::Template(t) => match render_text(t, obj) {
                Ok(k) => Key::from(k),
                Err(reason) => {
                    dropped.push(Dropped { key: format!("{prefix}{}", t.source()), reason: format!("key: {reason}") });
                    return None;
                }
            },
            KeyExpr::Topic(re) => match topic_match(re, topic) {
                Ok(k) => Key::from(k),
                Err(reason) => {
                    dropped.push(Dropped { key: format!("{prefix}{}", re.source), reason: format!("key: {reason}") });
                    return None;
                }
            },
        };
        let value = match &self.value {
            ValueExpr::Constant(v) => Ok(v.clone()),
            ValueExpr::Path(path, t) => match path.eval(obj) {
                Some(v) => coerce::from_json(v, *t).map_err(|e| format!("`${{{}}}` {e}", path.text())),
                None => Err(format!("`${{{}}}` is not in the message", path.text())),
            },
            ValueExpr::Template(template, t) => render_text(template, obj)
                .and_then(|text| coerce::from_text(&text, *t).map_err(|e| format!("`{}` {e}", template.source()))),
        };
        match value {
            Ok(value) => Some(Entry { key, value }),
            Err(reason) => {
                dropped.push(Dropped { key: format!("{prefix}{key}"), reason });
                None
            }
        }
    }
}

/// Every member as an entry with its own type; nulls are dropped.
fn push_all(
    members: &[(std::borrow::Cow<'_, str>, Json<'_>)],
    skip: Option<&str>,
    out: &mut Vec<Entry>,
    prefix: &str,
    dropped: &mut Vec<Dropped>,
) {
    for (k, v) in members {
        if Some(k.as_ref()) == skip {
            continue;
        }
        match coerce::natural(v) {
            Some(value) => out.push(Entry { key: Key::from(k.as_ref()), value }),
            None => dropped.push(Dropped { key: format!("{prefix}{k}"), reason: "is null".into() }),
        }
    }
}

/// Replace the entry with the same key, or append.
fn upsert(entries: &mut Vec<Entry>, entry: Entry) {
    match entries.iter_mut().find(|e| e.key == entry.key) {
        Some(existing) => existing.value = entry.value,
        None => entries.push(entry),
    }
}

/// The telemetry group for `ts`, created on first use (in order of first use).
fn group(telemetry: &mut Vec<Telemetry>, ts: Option<i64>) -> &mut Vec<Entry> {
    let idx = match telemetry.iter().position(|t| t.ts == ts) {
        Some(i) => i,
        None => {
            telemetry.push(Telemetry { ts, values: Vec::new() });
            telemetry.len() - 1
        }
    };
    &mut telemetry[idx].values
}

/// A key's own timestamp: its `tsField` path, or (as the Python gateway
/// does) the first member named like the path's last key, searched depth
/// first through nested objects.
fn ts_field(obj: &Json, path: &Path, order: DateOrder) -> Result<i64, String> {
    let found = path.eval(obj).or_else(|| path.last_key().and_then(|k| find_key(obj, k)));
    match found {
        Some(v) => time::from_json(v, order)
            .map_err(|e| format!("tsField `${{{}}}`: {e}; using the message's timestamp", path.text())),
        None => Err(format!("tsField `${{{}}}` is not in the message; using the message's timestamp", path.text())),
    }
}

fn find_key<'j, 'a>(obj: &'j Json<'a>, key: &str) -> Option<&'j Json<'a>> {
    if let Some(v) = obj.get(key) {
        return Some(v);
    }
    obj.members().iter().find_map(|(_, v)| match v {
        Json::Object(_) => find_key(v, key),
        _ => None,
    })
}

fn resolve_name(rule: &NameRule, obj: &Json, topic: Option<&str>) -> Result<String, String> {
    match rule {
        NameRule::Template(t) => render_text(t, obj),
        NameRule::Topic(re) => topic_match(re, topic),
    }
}

/// Render a template with the message's values as text; a missing or null
/// value fails the rendering.
fn render_text(t: &Template, obj: &Json) -> Result<String, String> {
    if let Some(c) = t.constant() {
        return Ok(c.to_owned());
    }
    t.render(|path, out| match path.eval(obj) {
        None => Err(format!("`${{{}}}` is not in the message", path.text())),
        Some(Json::Null) => Err(format!("`${{{}}}` is null", path.text())),
        Some(v) => {
            v.write_text(out);
            Ok(())
        }
    })
}

fn topic_match(re: &TopicRegex, topic: Option<&str>) -> Result<String, String> {
    let topic = topic.ok_or("the message has no topic to match against")?;
    let caps = match re.regex.captures(topic) {
        Ok(Some(caps)) => caps,
        Ok(None) => return Err(format!("topic `{topic}` does not match `{}`", re.source)),
        Err(e) => return Err(format!("matching `{}` against topic `{topic}` failed: {e}", re.source)),
    };
    // Python's `lastindex`: the group that closed last, i.e. the one ending
    // furthest right, the outermost on a tie.
    let last = (1..caps.len())
        .filter_map(|i| caps.get(i).map(|m| (i, m)))
        .max_by(|(ia, a), (ib, b)| a.end().cmp(&b.end()).then(b.start().cmp(&a.start())).then(ib.cmp(ia)));
    let m = match last {
        Some((_, m)) => m,
        None => caps.get(0).ok_or("the regex matched nothing")?,
    };
    Ok(m.as_str().to_owned())
}

fn template(field: &str, text: &str) -> Result<Template, ConfigError> {
    Template::parse(text).map_err(|e| ConfigError::at(field, e))
}

fn topic_regex(field: &str, text: &str) -> Result<TopicRegex, ConfigError> {
    let regex = Regex::new(text).map_err(|e| ConfigError::at(field, format!("invalid regular expression: {e}")))?;
    Ok(TopicRegex { regex, source: text.to_owned() })
}

/// Read a `...ExpressionSource` / `...Expression` pair.
fn name_rule(
    info: &mut Obj,
    source_key: &'static str,
    expr_key: &'static str,
) -> Result<Option<NameRule>, ConfigError> {
    let source = info.opt_str(source_key)?;
    let Some(expr) = info.opt_str(expr_key)? else {
        return match source {
            Some(_) => Err(ConfigError::at(info.field(expr_key), "required when a source is given")),
            None => Ok(None),
        };
    };
    let field = info.field(expr_key);
    Ok(Some(match source.unwrap_or("message") {
        "message" | "constant" => NameRule::Template(template(&field, expr)?),
        "topic" => NameRule::Topic(topic_regex(&field, expr)?),
        other => {
            return Err(ConfigError::at(
                info.field(source_key),
                format!("unknown source `{other}`; expected message, topic or constant"),
            ));
        }
    }))
}

/// Read `attributes` or `timeseries`: `"*"`, or a list of `"*"` and rules.
/// `ts_fields` collects the distinct `tsField`s (time series only).
fn rules(
    root: &mut Obj,
    key: &'static str,
    mut ts_fields: Option<&mut Vec<(Path, DateOrder)>>,
) -> Result<Vec<Rule>, ConfigError> {
    if let Some(ConfigValue::String(s)) = root.get(key) {
        return if s == "*" {
            Ok(vec![Rule::All])
        } else {
            Err(ConfigError::at(key, "expected a list of keys, or \"*\" for all"))
        };
    }
    let mut out = Vec::new();
    for (path, item) in config::array(root, key)? {
        if item.as_str() == Some("*") {
            out.push(Rule::All);
            continue;
        }
        out.push(Rule::One(Box::new(key_rule(&path, item, ts_fields.as_deref_mut())?)));
    }
    Ok(out)
}

fn key_rule(
    path: &str,
    item: &ConfigValue,
    ts_fields: Option<&mut Vec<(Path, DateOrder)>>,
) -> Result<KeyRule, ConfigError> {
    let mut obj = Obj::new(path, item)?;
    let type_name = obj.req_str("type")?;
    let dtype = DataType::parse(type_name).ok_or_else(|| {
        ConfigError::at(obj.field("type"), format!("unknown type `{type_name}`; expected one of {TYPE_NAMES}"))
    })?;
    let key_text = obj.req_str("key")?;
    let key = match obj.opt_str("keySource")?.unwrap_or("message") {
        "topic" => KeyExpr::Topic(topic_regex(&obj.field("key"), key_text)?),
        "message" | "constant" => {
            let t = template(&obj.field("key"), key_text)?;
            match t.constant() {
                Some(c) if !c.is_empty() => KeyExpr::Constant(Key::from(c)),
                Some(_) => return Err(ConfigError::at(obj.field("key"), "must not be empty")),
                None => KeyExpr::Template(t),
            }
        }
        other => {
            return Err(ConfigError::at(
                obj.field("keySource"),
                format!("unknown source `{other}`; expected message or topic"),
            ));
        }
    };
    let value_field = obj.field("value");
    let value_text = obj.req_str("value")?;
    let t = template(&value_field, value_text)?;
    let value = if let Some(c) = t.constant() {
        ValueExpr::Constant(coerce::from_text(c, dtype).map_err(|e| ConfigError::at(&value_field, e.to_string()))?)
    } else if let Some(p) = t.single_expr() {
        ValueExpr::Path(p.clone(), dtype)
    } else {
        ValueExpr::Template(t, dtype)
    };
    let ts = if let Some(ts_fields) = ts_fields {
        let ts_text = obj.opt_str("tsField")?;
        let order = DateOrder {
            dayfirst: obj.opt_bool("dayfirst")?.unwrap_or(false),
            yearfirst: obj.opt_bool("yearfirst")?.unwrap_or(false),
        };
        match ts_text {
            Some(text) => {
                let t = template(&obj.field("tsField"), text)?;
                let p = t.single_expr().ok_or_else(|| {
                    ConfigError::at(
                        obj.field("tsField"),
                        "expected one expression naming the field, e.g. \"${timestamp}\"",
                    )
                })?;
                let i = match ts_fields.iter().position(|(q, o)| q == p && *o == order) {
                    Some(i) => i,
                    None => {
                        ts_fields.push((p.clone(), order));
                        ts_fields.len() - 1
                    }
                };
                Some(i)
            }
            None => None,
        }
    } else {
        None
    };
    obj.allow(&["reportStrategy"]);
    obj.finish()?;
    Ok(KeyRule { key, value, ts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(config: &str, topic: &str, payload: &str) -> Result<ConvertedMessage, String> {
        let (c, _) = UplinkConverter::new(config).unwrap();
        c.convert(&Message { topic: Some(topic), payload: payload.as_bytes() })
    }

    #[test]
    fn last_group_follows_python() {
        let re = topic_regex("x", "(?<=sensor/)(.*?)(?=/data)").unwrap();
        assert_eq!(topic_match(&re, Some("sensor/SN-1/data")).unwrap(), "SN-1");
        let re = topic_regex("x", "((a)b)").unwrap();
        assert_eq!(topic_match(&re, Some("xab")).unwrap(), "ab");
        let re = topic_regex("x", "(a)(b)").unwrap();
        assert_eq!(topic_match(&re, Some("ab")).unwrap(), "b");
        let re = topic_regex("x", "dev-[0-9]+").unwrap();
        assert_eq!(topic_match(&re, Some("site/dev-42/x")).unwrap(), "dev-42");
    }

    #[test]
    fn constant_value_is_checked_at_creation() {
        let err = UplinkConverter::new(
            r#"{"deviceInfo":{"deviceNameExpression":"d"},"timeseries":[{"type":"int","key":"k","value":"abc"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("timeseries[0].value"));
    }

    #[test]
    fn a_broken_ts_keeps_the_value() {
        let cfg =
            r#"{"deviceInfo":{"deviceNameExpression":"d"},"timeseries":[{"type":"int","key":"k","value":"${v}"}]}"#;
        let out = convert(cfg, "t", r#"{"v":1,"ts":"soon"}"#).unwrap();
        assert_eq!(out.updates[0].telemetry[0].ts, None);
        assert_eq!(out.updates[0].telemetry[0].values[0].value, Value::Int(1));
        assert_eq!(out.dropped[0].key, "ts");
    }
}
