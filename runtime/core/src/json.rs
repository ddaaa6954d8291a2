//! JSON renderings of converter output, in the order a reader expects
//! (device first, keys in the converter's order), for `tbgw converter test`
//! and the logs.

use crate::{DeviceUpdate, DownlinkMessage, Entry, Value};
use std::fmt::Write;

/// `{"device":"SN-1","type":"thermometer","attributes":{..},"telemetry":[{"ts":..,"values":{..}}]}`;
/// `type` and `ts` are left out when absent.
pub fn device_update_json(u: &DeviceUpdate) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"device\":");
    push_str(&mut out, &u.device);
    if let Some(t) = &u.device_type {
        out.push_str(",\"type\":");
        push_str(&mut out, t);
    }
    out.push_str(",\"attributes\":");
    push_entries(&mut out, &u.attributes);
    out.push_str(",\"telemetry\":[");
    for (i, t) in u.telemetry.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        if let Some(ts) = t.ts {
            let _ = write!(out, "\"ts\":{ts},");
        }
        out.push_str("\"values\":");
        push_entries(&mut out, &t.values);
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `{"target":"..","payload":"..","metadata":{..}}`; a payload that is not
/// UTF-8 is given as `"payloadHex"`.
pub fn downlink_message_json(m: &DownlinkMessage) -> String {
    let mut out = String::with_capacity(64 + m.payload.len());
    out.push_str("{\"target\":");
    push_str(&mut out, &m.target);
    match std::str::from_utf8(&m.payload) {
        Ok(text) => {
            out.push_str(",\"payload\":");
            push_str(&mut out, text);
        }
        Err(_) => {
            out.push_str(",\"payloadHex\":\"");
            for b in &m.payload {
                let _ = write!(out, "{b:02x}");
            }
            out.push('"');
        }
    }
    out.push_str(",\"metadata\":{");
    for (i, (k, v)) in m.metadata.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, k);
        out.push(':');
        push_str(&mut out, v);
    }
    out.push_str("}}");
    out
}

fn push_entries(out: &mut String, entries: &[Entry]) {
    out.push('{');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, &e.key);
        out.push(':');
        push_value(out, &e.value);
    }
    out.push('}');
}

fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str("null"),
        },
        Value::Text(s) => push_str(out, s),
        Value::Json(s) => out.push_str(s),
    }
}

fn push_str(out: &mut String, s: &str) {
    // Serializing a &str to JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Telemetry;

    #[test]
    fn keeps_the_converter_order_and_omits_absent_parts() {
        let u = DeviceUpdate {
            device: "SN-1".into(),
            device_type: None,
            attributes: vec![Entry::new("z", Value::Text("a\"b".into())), Entry::new("a", Value::Bool(true))],
            telemetry: vec![
                Telemetry { ts: Some(5), values: vec![Entry::new("t", Value::Float(21.5))] },
                Telemetry { ts: None, values: vec![Entry::new("j", Value::Json("{\"x\":[1]}".into()))] },
            ],
        };
        assert_eq!(
            device_update_json(&u),
            r#"{"device":"SN-1","attributes":{"z":"a\"b","a":true},"telemetry":[{"ts":5,"values":{"t":21.5}},{"values":{"j":{"x":[1]}}}]}"#
        );
    }

    #[test]
    fn binary_payloads_are_hex() {
        let m = DownlinkMessage {
            target: "t".into(),
            payload: vec![0xff, 0x01],
            metadata: vec![("qos".into(), "1".into())],
        };
        assert_eq!(downlink_message_json(&m), r#"{"target":"t","payloadHex":"ff01","metadata":{"qos":"1"}}"#);
    }
}
