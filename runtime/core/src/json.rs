//! JSON renderings of converter output, in the order a reader expects
//! (device first, keys in the converter's order), for `tbgw converter test`
//! and the logs.

use crate::{BleRequest, DeviceUpdate, DownlinkMessage, Entry, OpcuaRequest, Value, hex};
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

/// One message for a device, keyed by its connector kind:
/// `{"mqtt":{"topic":..,"payload":..,"qos":..,"retain":..}}`,
/// `{"modbus":{"functionCode":..,"address":..,"count":..,"payloadHex":".."}}`, ...
/// A payload that is not UTF-8 text is given as `"payloadHex"`.
pub fn downlink_message_json(m: &DownlinkMessage) -> String {
    use serde_json::{Map, Value as J, json};
    let payload = |o: &mut Map<String, J>, bytes: &[u8], text_ok: bool| match std::str::from_utf8(bytes) {
        Ok(text) if text_ok => {
            o.insert("payload".into(), J::String(text.to_owned()));
        }
        _ => {
            o.insert("payloadHex".into(), J::String(hex(bytes)));
        }
    };
    let inner = match m {
        DownlinkMessage::Mqtt(p) => {
            let mut o = Map::new();
            o.insert("topic".into(), json!(p.topic));
            payload(&mut o, &p.payload, true);
            o.insert("qos".into(), json!(p.qos));
            o.insert("retain".into(), json!(p.retain));
            if let Some(r) = &p.response {
                o.insert("response".into(), json!({"topic": r.topic, "qos": r.qos, "timeoutMs": r.timeout_ms}));
            }
            J::Object(o)
        }
        DownlinkMessage::Modbus(r) => {
            let mut o = Map::new();
            o.insert("functionCode".into(), json!(r.function_code));
            o.insert("address".into(), json!(r.address));
            o.insert("count".into(), json!(r.count));
            if !r.payload.is_empty() {
                payload(&mut o, &r.payload, false);
            }
            J::Object(o)
        }
        DownlinkMessage::Opcua(r) => match r {
            OpcuaRequest::Read(node) => json!({ "read": node }),
            OpcuaRequest::Write { node, value } => json!({"write": {"node": node, "value": value_json(value)}}),
            OpcuaRequest::Call { object, method, arguments } => json!({"call": {
                "object": object, "method": method,
                "arguments": arguments.iter().map(value_json).collect::<Vec<_>>()}}),
        },
        DownlinkMessage::Ble(r) => match r {
            BleRequest::Read(c) => json!({ "read": c }),
            BleRequest::Write { characteristic, payload: bytes, with_response } => {
                let mut o = Map::new();
                o.insert("characteristic".into(), json!(characteristic));
                payload(&mut o, bytes, false);
                o.insert("withResponse".into(), json!(with_response));
                json!({ "write": o })
            }
            BleRequest::Scan => json!("scan"),
        },
        DownlinkMessage::Can(c) => {
            let f = &c.frame;
            let mut o = Map::new();
            for (k, v) in [
                ("id", json!(f.id)),
                ("extended", json!(f.extended)),
                ("rtr", json!(f.rtr)),
                ("fd", json!(f.fd)),
                ("brs", json!(f.brs)),
            ] {
                o.insert(k.into(), v);
            }
            payload(&mut o, &c.payload, false);
            if let Some(r) = &c.response {
                o.insert("response".into(), json!({"id": r.id, "extended": r.extended, "timeoutMs": r.timeout_ms}));
            }
            J::Object(o)
        }
    };
    json!({ m.kind(): inner }).to_string()
}

/// A value as JSON (a `Json` value's own document; invalid JSON as text).
pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Text(s) => s.clone().into(),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
    }
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
    fn messages_are_keyed_by_connector_and_binary_payloads_are_hex() {
        let m = DownlinkMessage::Mqtt(crate::MqttPublish {
            topic: "t".into(),
            payload: vec![0xff, 0x01],
            qos: 1,
            retain: false,
            response: None,
        });
        assert_eq!(downlink_message_json(&m), r#"{"mqtt":{"topic":"t","payloadHex":"ff01","qos":1,"retain":false}}"#);
        let m = DownlinkMessage::Modbus(crate::ModbusRequest {
            function_code: 6,
            address: 10,
            count: 1,
            payload: vec![0, 215],
        });
        assert_eq!(
            downlink_message_json(&m),
            r#"{"modbus":{"functionCode":6,"address":10,"count":1,"payloadHex":"00d7"}}"#
        );
    }
}
