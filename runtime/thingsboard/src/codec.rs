//! The JSON shapes of ThingsBoard's gateway API.
//!
//! Requests ThingsBoard sends for child devices:
//! - server-side RPC on `v1/gateway/rpc`:
//!   `{"device":"A","data":{"id":1,"method":"setRelay","params":{"on":true}}}`
//! - shared attribute update on `v1/gateway/attributes`:
//!   `{"device":"A","data":{"relay":true,"setpoint":21.5}}`
//! - an answer to an attribute request on `v1/gateway/attributes/response`:
//!   `{"id":1,"device":"A","value":42}` (one key) or `"values":{...}`;
//! - an RPC to the gateway itself on `v1/devices/me/rpc/request/{id}`:
//!   `{"method":"gateway_ping","params":{}}`.
//!
//! And what the gateway sends back: RPC replies, attribute requests.

use serde_json::{Map, Value as Json};
use tbgw_core::{AttributeUpdate, DownlinkRequest, Entry, RpcRequest, Value};

/// A request that is not in ThingsBoard's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(String);

fn err(msg: impl Into<String>) -> RequestError {
    RequestError(msg.into())
}

/// Parse a request for a child device: an RPC when `data` has a `method`,
/// a shared attribute update otherwise.
pub fn parse_request(payload: &[u8]) -> Result<DownlinkRequest, RequestError> {
    let doc: Json = serde_json::from_slice(payload).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let obj = doc.as_object().ok_or_else(|| err("expected a JSON object with `device` and `data`"))?;
    let device = obj
        .get("device")
        .and_then(Json::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| err("`device` is missing or not a non-empty string"))?
        .to_owned();
    let data = obj.get("data").and_then(Json::as_object).ok_or_else(|| err("`data` is missing or not an object"))?;
    if data.contains_key("method") {
        rpc(device, data).map(DownlinkRequest::Rpc)
    } else {
        Ok(DownlinkRequest::AttributeUpdate(AttributeUpdate { device, entries: entries(data) }))
    }
}

fn rpc(device: String, data: &Map<String, Json>) -> Result<RpcRequest, RequestError> {
    let method = data.get("method").and_then(Json::as_str).ok_or_else(|| err("`data.method` is not a string"))?;
    let id = match data.get("id") {
        Some(Json::Number(n)) => n.as_i64(),
        Some(Json::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| err("`data.id` is missing or not an integer"))?;
    let params = data.get("params").cloned().unwrap_or(Json::Null).to_string();
    Ok(RpcRequest { device, id, method: method.to_owned(), params })
}

/// Each member as an entry, with the value's own JSON type.
pub fn entries(data: &Map<String, Json>) -> Vec<Entry> {
    data.iter().map(|(k, v)| Entry::new(k.clone(), value(v))).collect()
}

/// A JSON value as a ThingsBoard value: scalars keep their type, `null`,
/// objects and arrays are JSON.
pub fn value(v: &Json) -> Value {
    match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) if n.is_f64() => Value::Float(f),
            _ => Value::Json(n.to_string()),
        },
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}

/// An RPC to the gateway device: its method and parameters (JSON).
pub fn parse_own_rpc(payload: &[u8]) -> Result<(String, Json), RequestError> {
    let doc: Json = serde_json::from_slice(payload).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let method =
        doc.get("method").and_then(Json::as_str).ok_or_else(|| err("`method` is missing or not a string"))?.to_owned();
    let params = doc.get("params").cloned().unwrap_or(Json::Null);
    Ok((method, params))
}

/// ThingsBoard's answer to an attribute request.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeResponse {
    pub id: u64,
    pub device: Option<String>,
    /// `values` as it came, or `{key: value}` made of a one-key `value`
    /// answer (the key is the one asked for, which only the asker knows:
    /// `None` here).
    pub values: Option<Map<String, Json>>,
    /// A one-key answer's value.
    pub value: Option<Json>,
}

/// Parse an answer to an attribute request; both shapes are accepted.
pub fn parse_attribute_response(payload: &[u8]) -> Result<AttributeResponse, RequestError> {
    let doc: Json = serde_json::from_slice(payload).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let id = match doc.get("id") {
        Some(Json::Number(n)) => n.as_u64(),
        Some(Json::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| err("`id` is missing or not an integer"))?;
    let device = doc.get("device").and_then(Json::as_str).map(str::to_owned);
    let values = doc.get("values").and_then(Json::as_object).cloned();
    let value = doc.get("value").cloned();
    Ok(AttributeResponse { id, device, values, value })
}

/// `{"device":..,"id":..,"data":..}` for `v1/gateway/rpc`.
pub fn rpc_reply(device: &str, id: i64, data: &Json) -> Vec<u8> {
    serde_json::json!({"device": device, "id": id, "data": data}).to_string().into_bytes()
}

/// `{"id":..,"device":..,"client":..,"keys":[..]}` for
/// `v1/gateway/attributes/request`.
pub fn attribute_request(id: u64, device: &str, client: bool, keys: &[String]) -> Vec<u8> {
    serde_json::json!({"id": id, "device": device, "client": client, "keys": keys}).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_and_attribute_update() {
        let r = parse_request(br#"{"device":"A","data":{"id":7,"method":"set","params":{"on":true}}}"#).unwrap();
        assert_eq!(
            r,
            DownlinkRequest::Rpc(RpcRequest {
                device: "A".into(),
                id: 7,
                method: "set".into(),
                params: r#"{"on":true}"#.into()
            })
        );
        let a = parse_request(br#"{"device":"A","data":{"relay":true,"sp":21.5,"cfg":{"x":1}}}"#).unwrap();
        let DownlinkRequest::AttributeUpdate(a) = a else { panic!("{a:?}") };
        let keys: Vec<_> = a.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys.len(), 3);
        assert!(a.entries.contains(&Entry::new("sp", Value::Float(21.5))));
        assert!(a.entries.contains(&Entry::new("cfg", Value::Json(r#"{"x":1}"#.into()))));
    }

    #[test]
    fn rpc_without_params_has_null_params() {
        let DownlinkRequest::Rpc(r) = parse_request(br#"{"device":"A","data":{"id":"3","method":"ping"}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!((r.id, r.params.as_str()), (3, "null"));
    }

    #[test]
    fn attribute_responses_of_both_shapes() {
        let one = parse_attribute_response(br#"{"id":3,"device":"A","value":21.5}"#).unwrap();
        assert_eq!((one.id, one.value), (3, Some(serde_json::json!(21.5))));
        let many = parse_attribute_response(br#"{"id":"4","device":"A","values":{"a":1,"b":"x"}}"#).unwrap();
        assert_eq!(many.id, 4);
        assert_eq!(Json::Object(many.values.unwrap()), serde_json::json!({"a":1,"b":"x"}));
        assert!(parse_attribute_response(br#"{"device":"A"}"#).is_err());
    }

    #[test]
    fn replies_in_thingsboards_shape() {
        let r: Json = serde_json::from_slice(&rpc_reply("A", 7, &serde_json::json!({"ok":1}))).unwrap();
        assert_eq!(r, serde_json::json!({"device":"A","id":7,"data":{"ok":1}}));
        let q: Json = serde_json::from_slice(&attribute_request(2, "A", false, &["k".into()])).unwrap();
        assert_eq!(q, serde_json::json!({"id":2,"device":"A","client":false,"keys":["k"]}));
    }

    #[test]
    fn malformed_requests_say_why() {
        assert_eq!(
            parse_request(br#"{"data":{}}"#).unwrap_err().to_string(),
            "`device` is missing or not a non-empty string"
        );
        assert_eq!(
            parse_request(br#"{"device":"A","data":{"method":"m"}}"#).unwrap_err().to_string(),
            "`data.id` is missing or not an integer"
        );
        assert!(parse_request(b"nope").unwrap_err().to_string().starts_with("not valid JSON"));
    }
}
