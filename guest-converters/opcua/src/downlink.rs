//! The built-in `opcua` downlink converter's logic: ThingsBoard's requests
//! to OPC-UA reads, writes and method calls, and ThingsBoard's replies made
//! from what the server answered, in the Python gateway's shapes.
//!
//! Its configuration is a mapping's downlink part of `opcua.json`, as the
//! connector hands it over:
//!
//! ```json
//! {"attributes_updates": [{"key": "relay", "type": "path", "value": "Root\\.Objects\\.MyObject\\.Relay"}],
//!  "rpc_methods": [{"method": "multiply", "arguments": [{"type": "integer", "value": 2}, {"type": "integer", "value": 4}]}]}
//! ```
//!
//! - A shared attribute update writes each key listed in
//!   `attributes_updates` to its node (the connector casts the value to the
//!   node's DataType); keys not listed are skipped, and an update with none
//!   listed is an error naming them.
//! - The reserved RPCs, any case: `get` reads a node (`"ns=2;s=Relay"`, a
//!   key of the device, or a browse path), answered
//!   `{"result": {"value": ...}}`; `set` writes one (`"ns=2;s=Relay; true"`,
//!   `"relay=true"`, `"Relay true"`, split as the Python gateway splits them,
//!   or `{"node": ..., "value": ...}` with a typed value), answered with the
//!   value written.
//! - An `rpc_methods` method calls the method of that browse name on the
//!   device's node, with the request's arguments (a JSON array) or else the
//!   configured ones; the count must match the configured arguments when
//!   there are any. Answered `{"result": {"result": ...}}`: the output, a
//!   list when the method has several.
//! - A failure the server reports (a Bad status) is answered
//!   `{"result": {"error": "BadTypeMismatch: ..."}}`; a request this
//!   converter cannot make (an unknown method, a wrong argument count) is
//!   refused with the Python gateway's words, and the gateway answers
//!   ThingsBoard with its error reply.

use serde_json::{Map, Value as Json, json};
use tbgw_data::config::{self as cfg};
use tbgw_data::{
    ConfigError, DownlinkMessage, DownlinkRequest, Entry, OpcuaRequest, RawUplink, RpcAnswer, Source, Value,
};

/// How the Python gateway splits a `set` request's node from its value, in
/// the order it tries them.
const SET_SPLITS: [&str; 4] = ["; ", ";=", "=", " "];

/// One `attributes_updates[]` entry.
#[derive(Debug, Clone)]
struct AttributeWrite {
    key: String,
    node: String,
}

/// One `rpc_methods[]` entry.
#[derive(Debug, Clone)]
struct Method {
    name: String,
    /// The configured arguments' values (`None`: the entry has no value).
    arguments: Vec<Option<Value>>,
}

/// The downlink converter.
#[derive(Debug)]
pub struct DownlinkConverter {
    writes: Vec<AttributeWrite>,
    methods: Vec<Method>,
}

impl DownlinkConverter {
    pub fn new(text: &str) -> Result<DownlinkConverter, ConfigError> {
        let doc = cfg::parse_document(text)?;
        let mut root = cfg::Obj::new("", &doc)?;
        let mut writes = Vec::new();
        for (path, entry) in cfg::array(&mut root, "attributes_updates")? {
            let mut o = cfg::Obj::new(path, entry)?;
            let key = o.req_str("key")?.to_owned();
            let node = o.req_str("value")?;
            // `${Relay}` and `Relay` name the same node.
            let node = node.strip_prefix("${").and_then(|n| n.strip_suffix('}')).unwrap_or(node).to_owned();
            o.allow(&["type"]);
            o.finish()?;
            writes.push(AttributeWrite { key, node });
        }
        let mut methods = Vec::new();
        for (path, entry) in cfg::array(&mut root, "rpc_methods")? {
            let mut o = cfg::Obj::new(path, entry)?;
            let name = o.req_str("method")?.to_owned();
            let mut arguments = Vec::new();
            for (apath, arg) in cfg::array(&mut o, "arguments")? {
                let value = match arg {
                    Json::Object(a) => match a.get("value") {
                        None | Some(Json::Null) => None,
                        Some(v) => Some(Value::from_json(v).map_err(|e| ConfigError::at(format!("{apath}.value"), e))?),
                    },
                    _ => return Err(ConfigError::at(apath, "expected {\"type\": ..., \"value\": ...}")),
                };
                arguments.push(value);
            }
            o.finish()?;
            methods.push(Method { name, arguments });
        }
        root.finish()?;
        Ok(DownlinkConverter { writes, methods })
    }

    pub fn convert(&self, request: &DownlinkRequest) -> Result<Vec<DownlinkMessage>, String> {
        let requests = match request {
            DownlinkRequest::AttributeUpdate(u) => self.attribute_update(&u.entries)?,
            DownlinkRequest::Rpc(r) => vec![self.rpc(&r.method, &r.params)?],
            // OPC-UA devices do not ask ThingsBoard for attributes.
            DownlinkRequest::AttributeResponse(_) => Vec::new(),
        };
        Ok(requests.into_iter().map(DownlinkMessage::Opcua).collect())
    }

    fn attribute_update(&self, entries: &[Entry]) -> Result<Vec<OpcuaRequest>, String> {
        let mut out = Vec::new();
        for e in entries {
            if let Some(w) = self.writes.iter().find(|w| w.key == e.key.as_str()) {
                out.push(OpcuaRequest::Write { node: w.node.clone(), value: e.value.clone() });
            }
        }
        if out.is_empty() {
            let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            return Err(format!("no attributes_updates entry for {}: nothing written", keys.join(", ")));
        }
        Ok(out)
    }

    fn rpc(&self, method: &str, params: &str) -> Result<OpcuaRequest, String> {
        let params: Json = if params.trim().is_empty() {
            Json::Null
        } else {
            serde_json::from_str(params).map_err(|e| format!("params are not JSON: {e}"))?
        };
        if method.eq_ignore_ascii_case("get") {
            return match &params {
                Json::String(s) => {
                    let node = s.trim_end_matches([' ', ';', '\t', '\n', '\r']).trim();
                    if node.is_empty() {
                        return Err("get: params name no node".to_owned());
                    }
                    Ok(OpcuaRequest::Read(node.to_owned()))
                }
                Json::Object(o) => Ok(OpcuaRequest::Read(node_of(o)?)),
                _ => Err("get: params must name the node (`\"ns=2;s=Relay\"`, a key or a browse path)".to_owned()),
            };
        }
        if method.eq_ignore_ascii_case("set") {
            return match &params {
                Json::String(s) => {
                    let (node, value) = split_set(s).ok_or_else(|| {
                        format!("set: `{s}` is not a node and a value (`ns=2;s=Relay; true`, `relay=true`)")
                    })?;
                    Ok(OpcuaRequest::Write { node, value: Value::Text(value) })
                }
                Json::Object(o) => {
                    let value = o.get("value").ok_or("set: params without a `value`")?;
                    let value = Value::from_json(value).map_err(|e| format!("set: value: {e}"))?;
                    Ok(OpcuaRequest::Write { node: node_of(o)?, value })
                }
                _ => Err("set: params must be `\"<node>; <value>\"` or {\"node\": ..., \"value\": ...}".to_owned()),
            };
        }
        let m = self
            .methods
            .iter()
            .find(|m| m.name == method)
            .ok_or_else(|| "Requested rpc method is not found in config".to_owned())?;
        let given: Option<Vec<Value>> = match &params {
            Json::Null => None,
            Json::Object(o) if o.is_empty() => None,
            Json::Array(items) if items.is_empty() => None,
            Json::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Value::from_json(v).map_err(|e| format!("params[{i}]: {e}")))
                    .collect::<Result<_, _>>()?,
            ),
            other if m.arguments.is_empty() => Some(vec![Value::from_json(other).map_err(|e| format!("params: {e}"))?]),
            _ => return Err("The arguments must be specified in the square quotes []".to_owned()),
        };
        let arguments = match given {
            Some(args) if m.arguments.is_empty() || args.len() == m.arguments.len() => args,
            Some(args) => return Err(format!("Expected {} arguments, but got {}", m.arguments.len(), args.len())),
            None => {
                let configured: Option<Vec<Value>> = m.arguments.iter().cloned().collect();
                configured.ok_or_else(|| {
                    "You must either define values for arguments in config or along with rpc request".to_owned()
                })?
            }
        };
        Ok(OpcuaRequest::Call { object: String::new(), method: m.name.clone(), arguments })
    }

    pub fn reply(&self, answer: &RpcAnswer) -> Result<String, String> {
        let method = answer.request.method.as_str();
        let first = answer.answers.first().ok_or("the connector sent no answer")?;
        if let Some(error) = failure(first) {
            return Ok(json!({"result": {"error": error}}).to_string());
        }
        let result = if method.eq_ignore_ascii_case("get") || method.eq_ignore_ascii_case("set") {
            json!({"value": plain(&first.payload)?})
        } else {
            let outputs: Vec<Json> = match serde_json::from_slice::<Json>(&first.payload) {
                Ok(Json::Array(items)) => {
                    items.iter().map(|v| plain(v.to_string().as_bytes())).collect::<Result<_, _>>()?
                }
                _ => return Err("a method's answer that is not a JSON array of Variants".to_owned()),
            };
            let result = match outputs.len() {
                0 => Json::Null,
                1 => outputs.into_iter().next().unwrap_or(Json::Null),
                _ => Json::Array(outputs),
            };
            json!({"result": result})
        };
        Ok(json!({"result": result}).to_string())
    }
}

/// `node` or `path` of an object form.
fn node_of(o: &Map<String, Json>) -> Result<String, String> {
    o.get("node")
        .or_else(|| o.get("path"))
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "params without a `node` (a NodeId, a key or a browse path)".to_owned())
}

/// A `set` request's node and value, split as the Python gateway splits
/// them: at the first of [`SET_SPLITS`] the text holds (into exactly two
/// parts); after a NodeId at the start, at the last such split, so that a
/// string NodeId may hold spaces (`ns=2;s=Boiler 2.Relay; true`; the
/// Python gateway cuts it at its first space).
fn split_set(text: &str) -> Option<(String, String)> {
    let text = text.trim();
    let tidy = |v: &str| v.trim_end_matches([';', ' ', '\t', '\n', '\r']).trim().trim_matches(';').trim().to_owned();
    if let Some(prefix) = node_id_prefix(text) {
        let body = &text[prefix..];
        let delimiter = SET_SPLITS.iter().find(|d| body.contains(**d))?;
        let at = body.rfind(*delimiter)?;
        let (id, value) = (&body[..at], tidy(&body[at + delimiter.len()..]));
        return (!id.trim().is_empty() && !value.is_empty()).then(|| (text[..prefix + at].trim().to_owned(), value));
    }
    let delimiter = SET_SPLITS.iter().find(|d| text.contains(**d))?;
    let parts: Vec<&str> = text.split(*delimiter).map(str::trim).filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [node, value] => Some(((*node).to_owned(), tidy(value))),
        _ => None,
    }
}

/// The length of `ns=<n>;<i|s|g|b>=` at the start of `text`.
fn node_id_prefix(text: &str) -> Option<usize> {
    let rest = text.strip_prefix("ns=")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let after = rest.get(digits..)?.strip_prefix(';')?;
    (digits > 0 && matches!(after.as_bytes(), [b'i' | b's' | b'g' | b'b', b'=', ..])).then_some(3 + digits + 3)
}

/// What went wrong, when the server answered with a Bad status.
fn failure(answer: &RawUplink) -> Option<String> {
    let Source::Opcua(v) = &answer.source else {
        return Some("an answer that is not an OPC-UA value".to_owned());
    };
    if v.status >> 30 != 0b10 {
        return None;
    }
    let meta = |name: &str| answer.metadata.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let status = meta("status").map_or_else(|| format!("{:#010x}", v.status), str::to_owned);
    Some(match meta("error") {
        Some(detail) => format!("{status}: {detail}"),
        None => status,
    })
}

/// A JSON Variant as a plain JSON value (as the uplink converter makes it;
/// an empty Variant is `null`).
fn plain(variant: &[u8]) -> Result<Json, String> {
    match crate::variant(variant) {
        Ok(Value::Json(text)) => serde_json::from_str(&text).map_err(|e| format!("a structure's JSON: {e}")),
        Ok(v) => Ok(v.to_json()),
        Err(_) if is_empty(variant) => Ok(Json::Null),
        Err(e) => Err(e),
    }
}

fn is_empty(variant: &[u8]) -> bool {
    match serde_json::from_slice::<Json>(variant) {
        Ok(Json::Null) => true,
        Ok(Json::Object(o)) => o.get("Body").is_none_or(Json::is_null),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbgw_data::{AttributeUpdate, Key, OpcuaValue, RpcRequest};

    fn converter() -> DownlinkConverter {
        DownlinkConverter::new(
            r#"{"attributes_updates": [{"key": "relay", "value": "Root\\.Objects\\.MyObject\\.Relay"},
                                       {"key": "setpoint", "type": "path", "value": "${SetPoint}"}],
                "rpc_methods": [{"method": "multiply", "arguments": [{"type": "integer", "value": 2}, {"type": "integer", "value": 4}]},
                                {"method": "reset", "arguments": []},
                                {"method": "half", "arguments": [{"type": "integer"}]}]}"#,
        )
        .expect("config")
    }

    fn rpc(method: &str, params: &str) -> Result<Vec<DownlinkMessage>, String> {
        let r = RpcRequest { device: "B".into(), id: 1, method: method.into(), params: params.into() };
        converter().convert(&DownlinkRequest::Rpc(r))
    }

    fn one(method: &str, params: &str) -> OpcuaRequest {
        match rpc(method, params).expect("converted").as_slice() {
            [DownlinkMessage::Opcua(r)] => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attribute_updates_write_the_listed_keys_only() {
        let update = AttributeUpdate {
            device: "B".into(),
            entries: vec![
                Entry::new(Key::new("setpoint"), Value::Int(42)),
                Entry::new(Key::new("other"), Value::Int(1)),
            ],
        };
        let out = converter().convert(&DownlinkRequest::AttributeUpdate(update)).expect("converted");
        assert_eq!(
            out,
            [DownlinkMessage::Opcua(OpcuaRequest::Write { node: "SetPoint".into(), value: Value::Int(42) })]
        );
        let update = AttributeUpdate { device: "B".into(), entries: vec![Entry::new(Key::new("x"), Value::Int(1))] };
        let err = converter().convert(&DownlinkRequest::AttributeUpdate(update)).unwrap_err();
        assert_eq!(err, "no attributes_updates entry for x: nothing written");
    }

    #[test]
    fn get_and_set_split_as_the_python_gateway_splits_them() {
        assert_eq!(one("get", r#""ns=2;s=Relay ;""#), OpcuaRequest::Read("ns=2;s=Relay".into()));
        assert_eq!(one("GET", r#""temperature""#), OpcuaRequest::Read("temperature".into()));
        let write = |node: &str, v: &str| OpcuaRequest::Write { node: node.into(), value: Value::Text(v.into()) };
        assert_eq!(one("set", r#""ns=2;s=Relay; true""#), write("ns=2;s=Relay", "true"));
        assert_eq!(one("set", r#""ns=2;i=1001 17;""#), write("ns=2;i=1001", "17"));
        assert_eq!(one("set", r#""ns=2;s=Boiler 2.Relay; false""#), write("ns=2;s=Boiler 2.Relay", "false"));
        assert_eq!(one("set", r#""ns=2;s=A=5""#), write("ns=2;s=A", "5"));
        assert_eq!(one("set", r#""relay=false""#), write("relay", "false"));
        assert_eq!(one("set", r#""Root\\.Objects\\.Pump\\.Speed 12.5""#), write(r"Root\.Objects\.Pump\.Speed", "12.5"));
        assert_eq!(
            one("set", r#"{"node": "SetPoint", "value": 7}"#),
            OpcuaRequest::Write { node: "SetPoint".into(), value: Value::Int(7) }
        );
        assert!(rpc("set", r#""relay""#).unwrap_err().contains("is not a node and a value"));
        assert!(rpc("get", "42").unwrap_err().starts_with("get: params must name the node"));
    }

    #[test]
    fn methods_take_the_requests_arguments_or_the_configured_ones() {
        let call =
            |args: Vec<Value>| OpcuaRequest::Call { object: String::new(), method: "multiply".into(), arguments: args };
        assert_eq!(one("multiply", "[3, 5]"), call(vec![Value::Int(3), Value::Int(5)]));
        assert_eq!(one("multiply", "{}"), call(vec![Value::Int(2), Value::Int(4)]));
        assert_eq!(rpc("multiply", "[1]").unwrap_err(), "Expected 2 arguments, but got 1");
        assert_eq!(rpc("multiply", "7").unwrap_err(), "The arguments must be specified in the square quotes []");
        assert_eq!(
            rpc("half", "null").unwrap_err(),
            "You must either define values for arguments in config or along with rpc request"
        );
        let OpcuaRequest::Call { arguments, .. } = one("reset", r#""now""#) else { panic!() };
        assert_eq!(arguments, [Value::Text("now".into())]);
        assert_eq!(rpc("reboot", "{}").unwrap_err(), "Requested rpc method is not found in config");
    }

    fn answer(method: &str, status: u32, payload: &str, metadata: &[(&str, &str)]) -> RpcAnswer {
        RpcAnswer {
            request: RpcRequest { device: "B".into(), id: 1, method: method.into(), params: "null".into() },
            answers: vec![RawUplink {
                source: Source::Opcua(OpcuaValue {
                    node: "ns=2;i=1".into(),
                    status,
                    source_time: None,
                    server_time: None,
                }),
                device: Some("B".into()),
                payload: payload.as_bytes().to_vec(),
                metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                received_at: 0,
            }],
        }
    }

    #[test]
    fn replies_have_the_python_gateways_shapes() {
        let c = converter();
        let reply = |a: RpcAnswer| serde_json::from_str::<Json>(&c.reply(&a).expect("a reply")).expect("json");
        assert_eq!(reply(answer("get", 0, r#"{"Type": 11, "Body": 20.5}"#, &[])), json!({"result": {"value": 20.5}}));
        assert_eq!(reply(answer("set", 0, r#"{"Type": 4, "Body": 7}"#, &[])), json!({"result": {"value": 7}}));
        let outputs = r#"[{"Type": 6, "Body": 42}]"#;
        assert_eq!(reply(answer("multiply", 0, outputs, &[])), json!({"result": {"result": 42}}));
        let outputs = r#"[{"Type": 11, "Body": -1.5}, {"Type": 11, "Body": 3}]"#;
        assert_eq!(reply(answer("minmax", 0, outputs, &[])), json!({"result": {"result": [-1.5, 3.0]}}));
        assert_eq!(reply(answer("reset", 0, "[]", &[])), json!({"result": {"result": null}}));
        let bad =
            answer("set", 0x8074_0000, "null", &[("status", "BadTypeMismatch"), ("error", "70000 is out of range")]);
        assert_eq!(reply(bad), json!({"result": {"error": "BadTypeMismatch: 70000 is out of range"}}));
    }
}
