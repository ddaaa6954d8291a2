//! The JSON shapes of ThingsBoard's gateway API.
//!
//! Requests ThingsBoard sends for child devices:
//! - server-side RPC on `v1/gateway/rpc`:
//!   `{"device":"A","data":{"id":1,"method":"setRelay","params":{"on":true}}}`
//! - shared attribute update on `v1/gateway/attributes`:
//!   `{"device":"A","data":{"relay":true,"setpoint":21.5}}`

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
