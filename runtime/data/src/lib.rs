//! tbgw's data model: what devices send, what ThingsBoard stores and asks,
//! what goes back to devices. One set of types for the whole system: the
//! host (connectors, pipeline, store, ThingsBoard client, through
//! `tbgw-core`, which re-exports them) and the guest converters (the
//! built-in converters' libraries and the guest SDK, compiled to
//! WebAssembly) use these same types, so that a converter's library runs
//! natively in tests and benchmarks exactly as it does in its component.
//!
//! Each type mirrors one of the converter contract (`wit/converter.wit`,
//! `tbgw:converter@0.2.0`); the documentation of a type is there, the
//! contract being what converter authors read. The runtime (`runtime/wasm`)
//! and the guest SDK (`guest-converters/sdk`) convert between the two at the
//! boundary. Light on purpose (serde_json only): it builds for every target.

pub mod config;

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Which way a converter translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Device data to ThingsBoard data (`uplink-converter` world).
    Uplink,
    /// ThingsBoard requests to device messages (`downlink-converter` world).
    Downlink,
}

impl Direction {
    /// The contract's world name.
    pub fn world(self) -> &'static str {
        match self {
            Direction::Uplink => "uplink-converter",
            Direction::Downlink => "downlink-converter",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Uplink => "uplink",
            Direction::Downlink => "downlink",
        })
    }
}

/// An attribute or telemetry key. Keys repeat in every message of a device
/// (`temperature`, `humidity`): a key is shared, not copied, so that a
/// converter configured with a key hands it out at the cost of a reference
/// count, and a batch's keys cross the converter contract once.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Arc<str>);

impl Key {
    pub fn new(key: &str) -> Key {
        Key(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` are the same shared key (not only equal).
    pub fn ptr_eq(&self, other: &Key) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Where the shared text is: equal for clones of one key, and stable
    /// while one of them lives.
    pub fn addr(&self) -> usize {
        Arc::as_ptr(&self.0) as *const u8 as usize
    }
}

impl Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key(s.into())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key(s.into())
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Key {
        Key(s.as_str().into())
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A ThingsBoard value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    /// Always finite once past the runtime: it drops NaN and infinities.
    Float(f64),
    Text(String),
    /// Valid JSON text once past the runtime: it checks it.
    Json(String),
}

impl Value {
    /// A JSON value as ThingsBoard stores it, by its own JSON type: a whole
    /// number is an integer, a number written with a fraction or an exponent
    /// a double (`19.0` stays a double), objects and arrays JSON. The error
    /// says why a value has no ThingsBoard form (null, an integer beyond 64
    /// bits), for a `Dropped`.
    pub fn from_json(v: &serde_json::Value) -> Result<Value, String> {
        Ok(match v {
            serde_json::Value::Null => return Err("null".to_owned()),
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Value::Int(i),
                (None, Some(u), _) => return Err(format!("{u} is outside the 64-bit integer range")),
                (_, _, Some(f)) => Value::Float(f),
                _ => return Err(format!("{n} is not a number ThingsBoard stores")),
            },
            serde_json::Value::String(s) => Value::Text(s.clone()),
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => Value::Json(v.to_string()),
        })
    }

    /// The value as JSON: the inverse of [`Value::from_json`]. A `Json` value
    /// is its document (text that is not JSON stays text); a non-finite
    /// double, which no JSON holds, is null.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Json(text) => serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.clone())),
        }
    }
}

/// A key and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: Key,
    pub value: Value,
}

impl Entry {
    pub fn new(key: impl Into<Key>, value: Value) -> Self {
        Entry { key: key.into(), value }
    }
}

/// Telemetry values sharing a timestamp (ms since the epoch); `None` means
/// the message's receipt time.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub ts: Option<i64>,
    pub values: Vec<Entry>,
}

/// What one message says about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceUpdate {
    pub device: String,
    /// The device profile; `None` is ThingsBoard's `default`.
    pub device_type: Option<String>,
    pub attributes: Vec<Entry>,
    pub telemetry: Vec<Telemetry>,
}

/// A value a converter left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub key: String,
    pub reason: String,
}

/// A device asks for its attributes' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeRequest {
    pub device: String,
    pub keys: Vec<String>,
    /// Client-side attributes rather than shared ones.
    pub client: bool,
    /// For the downlink converter that answers; comes back unchanged.
    pub context: String,
}

/// What a device asks of ThingsBoard, recognised in its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRequest {
    /// `v1/gateway/connect`.
    Connect { device: String, device_type: Option<String> },
    /// `v1/gateway/disconnect`.
    Disconnect { device: String },
    /// `v1/gateway/attributes/request`, answered through the downlink converter.
    Attributes(AttributeRequest),
}

impl DeviceRequest {
    pub fn device(&self) -> &str {
        match self {
            DeviceRequest::Connect { device, .. } | DeviceRequest::Disconnect { device } => device,
            DeviceRequest::Attributes(a) => &a.device,
        }
    }
}

/// What one message converted into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvertedMessage {
    pub updates: Vec<DeviceUpdate>,
    pub requests: Vec<DeviceRequest>,
    pub dropped: Vec<Dropped>,
}

/// An MQTT message's topic and delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttMessage {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
}

/// A polled Modbus block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegisterBlock {
    pub unit_id: u8,
    pub function_code: u8,
    pub address: u16,
    pub count: u16,
}

/// An OPC-UA value's node, status and times (the value is the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpcuaValue {
    pub node: String,
    pub status: u32,
    pub source_time: Option<i64>,
    pub server_time: Option<i64>,
}

/// A BLE GATT characteristic of a connected device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleCharacteristic {
    pub address: String,
    pub service: String,
    pub characteristic: String,
}

/// Manufacturer-specific data of an advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManufacturerData {
    pub company: u16,
    pub data: Vec<u8>,
}

/// Service data of an advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceData {
    pub uuid: String,
    pub data: Vec<u8>,
}

/// A BLE advertisement, everything it carried.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BleAdvertisement {
    pub address: String,
    pub rssi: Option<i16>,
    pub tx_power: Option<i16>,
    pub local_name: Option<String>,
    pub manufacturer_data: Vec<ManufacturerData>,
    pub service_data: Vec<ServiceData>,
    pub services: Vec<String>,
}

/// A CAN frame's identifier and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanFrame {
    pub id: u32,
    pub extended: bool,
    pub rtr: bool,
    pub fd: bool,
    pub brs: bool,
    pub esi: bool,
}

/// `bytes` as lower-case hex (how binary payloads and hashes are shown).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Hex text (whitespace ignored) as bytes; the error names the offending
/// character's position.
pub fn unhex(text: &[u8]) -> Result<Vec<u8>, String> {
    let digits: Vec<(usize, u8)> = text.iter().copied().enumerate().filter(|(_, c)| !c.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("{} hex digits: bytes take two each", digits.len()));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let value = |(at, c): (usize, u8)| {
                (c as char)
                    .to_digit(16)
                    .ok_or_else(|| format!("`{}` at column {} is not a hex digit", c as char, at + 1))
            };
            Ok((value(pair[0])? * 16 + value(pair[1])?) as u8)
        })
        .collect()
}

/// The time now, ms since the epoch (how messages are stamped).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Mqtt(MqttMessage),
    Registers(RegisterBlock),
    Opcua(OpcuaValue),
    Characteristic(BleCharacteristic),
    Advertisement(BleAdvertisement),
    Can(CanFrame),
    None,
}

impl Source {
    /// An MQTT message on `topic` (QoS 1, not retained), as tests and tools
    /// make them.
    pub fn mqtt(topic: impl Into<String>) -> Source {
        Source::Mqtt(MqttMessage { topic: topic.into(), qos: 1, retain: false })
    }

    /// The MQTT topic, when it is an MQTT message.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Source::Mqtt(m) => Some(&m.topic),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    /// How logs name a source: `topic sensor/A/data`, `registers 1/3/0/10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Mqtt(m) => write!(f, "topic {}", m.topic),
            Source::Registers(r) => {
                write!(f, "registers unit {} fc {} at {} ({})", r.unit_id, r.function_code, r.address, r.count)
            }
            Source::Opcua(o) => write!(f, "node {}", o.node),
            Source::Characteristic(c) => write!(f, "characteristic {} of {}", c.characteristic, c.address),
            Source::Advertisement(a) => write!(f, "advertisement of {}", a.address),
            Source::Can(c) => write!(f, "CAN id {:#x}", c.id),
            Source::None => f.write_str("no source"),
        }
    }
}

/// One message from a device, as the connector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawUplink {
    pub source: Source,
    /// The device the connector knows the message is from, if it does.
    pub device: Option<String>,
    pub payload: Vec<u8>,
    pub metadata: Vec<(String, String)>,
    /// When tbgw received it, ms since the epoch.
    pub received_at: i64,
}

/// A server-side RPC for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    pub device: String,
    pub id: i64,
    pub method: String,
    /// JSON text.
    pub params: String,
}

/// A shared attribute update for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeUpdate {
    pub device: String,
    pub entries: Vec<Entry>,
}

/// ThingsBoard's answer to a device's attribute request.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeResponse {
    pub device: String,
    /// What the device asked for, in its order.
    pub keys: Vec<String>,
    /// What ThingsBoard has of them.
    pub values: Vec<Entry>,
    /// The request's context.
    pub context: String,
}

/// A request from ThingsBoard for a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DownlinkRequest {
    Rpc(RpcRequest),
    AttributeUpdate(AttributeUpdate),
    AttributeResponse(AttributeResponse),
}

impl DownlinkRequest {
    /// The target device's name.
    pub fn device(&self) -> &str {
        match self {
            DownlinkRequest::Rpc(r) => &r.device,
            DownlinkRequest::AttributeUpdate(a) => &a.device,
            DownlinkRequest::AttributeResponse(a) => &a.device,
        }
    }

    /// Address it to `device` (the connector's name for a renamed device).
    pub fn set_device(&mut self, device: String) {
        match self {
            DownlinkRequest::Rpc(r) => r.device = device,
            DownlinkRequest::AttributeUpdate(a) => a.device = device,
            DownlinkRequest::AttributeResponse(a) => a.device = device,
        }
    }
}

/// Where a two-way RPC's answer comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttResponse {
    pub topic: String,
    pub qos: u8,
    pub timeout_ms: u32,
}

/// An MQTT publish to the devices' broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttPublish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub response: Option<MqttResponse>,
}

/// A Modbus read (function codes 1-4) or write (5, 6, 15, 16) of the
/// request's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusRequest {
    pub function_code: u8,
    pub address: u16,
    pub count: u16,
    pub payload: Vec<u8>,
}

impl ModbusRequest {
    /// Whether it reads (and so is answered with what it read).
    pub fn is_read(&self) -> bool {
        matches!(self.function_code, 1..=4)
    }
}

/// An OPC-UA request.
#[derive(Debug, Clone, PartialEq)]
pub enum OpcuaRequest {
    Read(String),
    Write { node: String, value: Value },
    Call { object: String, method: String, arguments: Vec<Value> },
}

/// A BLE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BleRequest {
    Read(String),
    Write { characteristic: String, payload: Vec<u8>, with_response: bool },
    Scan,
}

/// A frame the device is expected to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanResponse {
    pub id: u32,
    pub extended: bool,
    pub timeout_ms: u32,
}

/// A CAN frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanSend {
    pub frame: CanFrame,
    pub payload: Vec<u8>,
    pub response: Option<CanResponse>,
}

/// One message for a connector to send to a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DownlinkMessage {
    Mqtt(MqttPublish),
    Modbus(ModbusRequest),
    Opcua(OpcuaRequest),
    Ble(BleRequest),
    Can(CanSend),
}

impl DownlinkMessage {
    /// The connector kind that sends it (`mqtt`, `modbus`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            DownlinkMessage::Mqtt(_) => "mqtt",
            DownlinkMessage::Modbus(_) => "modbus",
            DownlinkMessage::Opcua(_) => "opcua",
            DownlinkMessage::Ble(_) => "ble",
            DownlinkMessage::Can(_) => "can",
        }
    }

    /// How long the message waits for the device's answer, when it sets
    /// that itself (an MQTT response, a CAN response).
    pub fn answer_timeout_ms(&self) -> Option<u32> {
        match self {
            DownlinkMessage::Mqtt(p) => p.response.as_ref().map(|r| r.timeout_ms),
            DownlinkMessage::Can(c) => c.response.as_ref().map(|r| r.timeout_ms),
            DownlinkMessage::Modbus(_) | DownlinkMessage::Opcua(_) | DownlinkMessage::Ble(_) => None,
        }
    }
}

/// Why a converter's configuration is invalid: the field (its path in the
/// config, `timeseries[2].type`; `None` when the whole document is at
/// fault) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: Some(field.into()), message: message.into() }
    }

    pub fn whole(message: impl Into<String>) -> Self {
        ConfigError { field: None, message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// How many single-character edits turn `a` into `b` (Levenshtein): config
/// errors point out a key within 2 of the one meant ("did you mean").
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A device's answers to an RPC's messages, for the converter's `reply`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcAnswer {
    pub request: RpcRequest,
    pub answers: Vec<RawUplink>,
}

impl RpcAnswer {
    /// The reply that needs no knowledge of the device: the first answer's
    /// payload when it is JSON, else its text as a JSON string; with no
    /// answer (a write, a one-way RPC), `{"success":true}`. What a converter
    /// replies unless it knows better, and what tbgw replies for a
    /// converter built against contract 0.1 (which had no `reply`).
    pub fn plain_reply(&self) -> String {
        let Some(first) = self.answers.first() else { return r#"{"success":true}"#.to_owned() };
        let text = String::from_utf8_lossy(&first.payload);
        match serde_json::from_str::<serde_json::Value>(&text) {
            // As the device wrote it (its key order kept).
            Ok(_) => text.trim().to_owned(),
            Err(_) => serde_json::Value::String(text.into_owned()).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_keep_their_type() {
        let v = |text: &str| Value::from_json(&serde_json::from_str(text).expect("JSON"));
        assert_eq!(v("19.0"), Ok(Value::Float(19.0)));
        assert_eq!(v("19"), Ok(Value::Int(19)));
        assert_eq!(v("-9223372036854775808"), Ok(Value::Int(i64::MIN)));
        assert_eq!(v("true"), Ok(Value::Bool(true)));
        assert_eq!(v(r#""x""#), Ok(Value::Text("x".into())));
        assert_eq!(v(r#"{"a": [1, 2.5]}"#), Ok(Value::Json(r#"{"a":[1,2.5]}"#.into())));
        assert_eq!(v("null"), Err("null".to_owned()));
        for text in ["19.0", "19", "true", r#""x""#, r#"{"a":[1,2.5]}"#] {
            let json: serde_json::Value = serde_json::from_str(text).expect("JSON");
            assert_eq!(v(text).expect("a value").to_json(), json, "{text} back");
        }
        assert_eq!(
            v("18446744073709551615"),
            Err("18446744073709551615 is outside the 64-bit integer range".to_owned())
        );
    }

    #[test]
    fn keys_compare_as_text_and_share_their_text() {
        let a = Key::from("temperature");
        let b = a.clone();
        assert!(a.ptr_eq(&b) && !a.ptr_eq(&Key::from("temperature")));
        assert_eq!(a, Key::from(String::from("temperature")));
        assert!(a == "temperature" && &*a == "temperature");
        let map: std::collections::HashMap<Key, u8> = [(a, 1)].into_iter().collect();
        assert_eq!(map.get("temperature"), Some(&1));
    }

    #[test]
    fn the_plain_reply_is_the_answer_as_json() {
        let request = RpcRequest { device: "A".into(), id: 1, method: "m".into(), params: "null".into() };
        let answer = |payload: Option<&str>| RpcAnswer {
            request: request.clone(),
            answers: payload
                .map(|p| RawUplink {
                    source: Source::None,
                    device: None,
                    payload: p.as_bytes().to_vec(),
                    metadata: vec![],
                    received_at: 0,
                })
                .into_iter()
                .collect(),
        };
        assert_eq!(answer(Some(r#" {"v": 1, "a": 2}"#)).plain_reply(), r#"{"v": 1, "a": 2}"#);
        assert_eq!(answer(Some("ok")).plain_reply(), r#""ok""#);
        assert_eq!(answer(None).plain_reply(), r#"{"success":true}"#);
    }
}
