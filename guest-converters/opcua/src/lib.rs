//! The built-in `opcua` converters' logic, in plain Rust: the uplink one
//! here, the downlink one in [`downlink`].
//!
//! The OPC-UA connector resolves the configuration (which node feeds which
//! key of which device) and sends one message per value and key: the
//! payload is the node's value as an OPC UA JSON Variant (reversible form,
//! `{"Type": 11, "Body": 21.5}`), the source its node, status and times,
//! `device` the device's name, and the metadata say where the value goes:
//!
//! | metadata      | value                                                   |
//! |---------------|---------------------------------------------------------|
//! | `key`         | the ThingsBoard key                                     |
//! | `section`     | `attributes` or `timeseries`                            |
//! | `timestamp`   | `gateway` (default), `source` or `server`: the entry's `timestampLocation` |
//! | `device-type` | the device's profile, when it has one                   |
//! | `status`      | the status code's name, when it is not Good             |
//!
//! A custom converter gets the same messages, and so the same facts.
//!
//! Values: Boolean is a boolean; the integer types an integer (a UInt64
//! beyond 2^63 - 1 is text); Float and Double a double; String, DateTime
//! (RFC 3339), Guid, XmlElement, QualifiedName (`ns:Name`) and NodeId
//! (`ns=2;s=Name`) text; ByteString hex text (as the Python gateway sends
//! it); LocalizedText its text; StatusCode its code, an integer; an
//! ExtensionObject (a structure) a JSON object of its fields (the
//! connector has it decoded where the server publishes the structure's
//! definition; the Python gateway sends Python's text of the object,
//! `Reading(Level=1.5, Unit='m')`), or, where it could not be decoded,
//! its whole JSON (`{"UaTypeId": ..., "UaEncoding": 1, "UaBody":
//! "<base64>"}`) for a custom converter; an array a JSON array of its
//! elements so converted.
//!
//! Status: a Good or Uncertain value is sent (Uncertain is how many PLCs
//! flag a value from a sensor in its warm-up, still the best there is);
//! a Bad one is left out and reported as dropped with its status, not sent
//! as an error text in place of the value as the Python gateway does (a
//! string in a numeric time series breaks its charts and rules).

pub mod downlink;

pub use downlink::DownlinkConverter;

use serde_json::Value as Json;
use tbgw_data::config::{self as cfg};
use tbgw_data::{
    ConfigError, ConvertedMessage, DeviceUpdate, Dropped, Entry, Key, OpcuaValue, RawUplink, Source, Telemetry, Value,
};

/// The OPC UA built-in type ids (OPC 10000-6 §5.1.2) of the Variant types
/// that convert other than by their JSON form.
mod type_id {
    pub const BOOLEAN: u64 = 1;
    pub const SBYTE: u64 = 2;
    pub const UINT64: u64 = 9;
    pub const FLOAT: u64 = 10;
    pub const DOUBLE: u64 = 11;
    pub const BYTE_STRING: u64 = 15;
    pub const NODE_ID: u64 = 17;
    pub const EXPANDED_NODE_ID: u64 = 18;
    pub const LOCALIZED_TEXT: u64 = 21;
    pub const EXTENSION_OBJECT: u64 = 22;
}

/// Which of a value's times the telemetry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    Gateway,
    Source,
    Server,
}

/// The uplink converter.
#[derive(Debug)]
pub struct UplinkConverter;

impl UplinkConverter {
    /// The connector's document (`opcua.json`): the mapping is the
    /// connector's, so only its shape is checked here.
    pub fn new(text: &str) -> Result<UplinkConverter, ConfigError> {
        let doc = cfg::parse_document(text)?;
        cfg::Obj::new("", &doc)?;
        Ok(UplinkConverter)
    }

    pub fn convert_message(&self, msg: &RawUplink) -> Result<ConvertedMessage, String> {
        let Source::Opcua(value) = &msg.source else {
            return Err("the `opcua` converter takes OPC-UA values; this message is not one".to_owned());
        };
        let device = msg.device.as_deref().ok_or("an OPC-UA value without a device")?;
        let meta = |name: &str| msg.metadata.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let key = meta("key").ok_or("an OPC-UA value without its `key` metadata")?;
        let attributes = match meta("section") {
            Some("attributes") => true,
            Some("timeseries") | None => false,
            Some(other) => return Err(format!("section `{other}`: expected attributes or timeseries")),
        };
        let stamp = match meta("timestamp") {
            None | Some("gateway") => Stamp::Gateway,
            Some("source") => Stamp::Source,
            Some("server") => Stamp::Server,
            Some(other) => return Err(format!("timestamp `{other}`: expected gateway, source or server")),
        };
        let mut out = ConvertedMessage::default();
        let entry = match status_rule(value, meta("status")).and_then(|()| variant(&msg.payload)) {
            Ok(v) => Entry::new(Key::new(key), v),
            Err(reason) => {
                out.dropped.push(Dropped { key: key.to_owned(), reason });
                return Ok(out);
            }
        };
        let mut update = DeviceUpdate {
            device: device.to_owned(),
            device_type: meta("device-type").map(str::to_owned),
            attributes: Vec::new(),
            telemetry: Vec::new(),
        };
        if attributes {
            update.attributes.push(entry);
        } else {
            let ts = match stamp {
                Stamp::Gateway => None,
                Stamp::Source => value.source_time,
                Stamp::Server => value.server_time,
            };
            update.telemetry.push(Telemetry { ts, values: vec![entry] });
        }
        out.updates.push(update);
        Ok(out)
    }
}

/// Whether a value of this status is sent (see the module's doc).
fn status_rule(value: &OpcuaValue, name: Option<&str>) -> Result<(), String> {
    if value.status >> 30 == 0b10 {
        let name = name.unwrap_or("Bad");
        return Err(format!("status {name} ({:#010x}) from node {}", value.status, value.node));
    }
    Ok(())
}

/// A JSON Variant's value.
pub fn variant(payload: &[u8]) -> Result<Value, String> {
    let doc: Json = serde_json::from_slice(payload).map_err(|e| format!("the value is not a JSON Variant: {e}"))?;
    let Json::Object(o) = &doc else {
        return Err("no value (a null Variant)".to_owned());
    };
    let ty = o.get("Type").and_then(Json::as_u64).ok_or("a JSON Variant without its `Type`")?;
    match o.get("Body") {
        None | Some(Json::Null) => Err("no value (an empty Variant)".to_owned()),
        Some(Json::Array(items)) if ty != type_id::BYTE_STRING => {
            let items: Result<Vec<Json>, String> = items.iter().map(|b| scalar(ty, b).map(|v| v.to_json())).collect();
            Ok(Value::Json(Json::Array(items?).to_string()))
        }
        Some(body) => scalar(ty, body),
    }
}

fn scalar(ty: u64, body: &Json) -> Result<Value, String> {
    let bad = || format!("a Variant of type {ty} with the body {body}");
    Ok(match ty {
        type_id::BOOLEAN => Value::Bool(body.as_bool().ok_or_else(bad)?),
        type_id::SBYTE..=type_id::UINT64 => match body {
            Json::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(u)) => Value::Text(u.to_string()),
                _ => return Err(bad()),
            },
            // Int64 and UInt64 are JSON strings in the standard encoding.
            Json::String(s) => match s.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) if s.parse::<u64>().is_ok() => Value::Text(s.clone()),
                Err(_) => return Err(bad()),
            },
            _ => return Err(bad()),
        },
        type_id::FLOAT | type_id::DOUBLE => match body {
            Json::Number(n) => Value::Float(n.as_f64().ok_or_else(bad)?),
            Json::String(s) => return Err(format!("{s} is not a number ThingsBoard stores")),
            _ => return Err(bad()),
        },
        type_id::BYTE_STRING => Value::Text(tbgw_data::hex(&base64(body.as_str().ok_or_else(bad)?)?)),
        type_id::NODE_ID | type_id::EXPANDED_NODE_ID => Value::Text(node_id(body).ok_or_else(bad)?),
        type_id::LOCALIZED_TEXT => Value::Text(body.get("Text").and_then(Json::as_str).unwrap_or("").to_owned()),
        type_id::EXTENSION_OBJECT => match body.get("UaBody") {
            Some(fields @ Json::Object(_)) => Value::Json(fields.to_string()),
            _ => Value::Json(body.to_string()),
        },
        _ => match body {
            Json::String(s) => Value::Text(s.clone()),
            other => Value::from_json(other)?,
        },
    })
}

/// A JSON NodeId (`{"IdType": 1, "Id": "Boiler", "Namespace": 2}`) as
/// OPC UA writes it in text (`ns=2;s=Boiler`).
fn node_id(body: &Json) -> Option<String> {
    let ns = body.get("Namespace").and_then(Json::as_u64).unwrap_or(0);
    let id = body.get("Id")?;
    let id = match body.get("IdType").and_then(Json::as_u64).unwrap_or(0) {
        0 => format!("i={}", id.as_u64()?),
        1 => format!("s={}", id.as_str()?),
        2 => format!("g={}", id.as_str()?),
        3 => format!("b={}", id.as_str()?),
        _ => return None,
    };
    Some(if ns == 0 { id } else { format!("ns={ns};{id}") })
}

/// Standard base64 (with or without padding), as OPC UA JSON writes a
/// ByteString.
fn base64(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, c) in text.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err(format!("a ByteString that is not base64 (byte {i}: {:?})", char::from(c))),
        };
        // Only the bits not yet out matter (fewer than 14).
        acc = ((acc << 6) | u32::from(v)) & 0x3fff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
