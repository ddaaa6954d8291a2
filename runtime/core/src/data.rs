//! The data types, one for each type of the converter contract.

use std::fmt;

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

/// A ThingsBoard value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    /// Always finite: the runtime drops NaN and infinities.
    Float(f64),
    Text(String),
    /// Valid JSON text: the runtime checks it.
    Json(String),
}

/// A key and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
}

impl Entry {
    pub fn new(key: impl Into<String>, value: Value) -> Self {
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

/// What one message converted into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvertedMessage {
    pub updates: Vec<DeviceUpdate>,
    pub dropped: Vec<Dropped>,
}

/// A polled Modbus block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterBlock {
    pub unit_id: u8,
    pub function_code: u8,
    pub address: u16,
    pub count: u16,
}

/// A CAN identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanId {
    pub id: u32,
    pub extended: bool,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Topic(String),
    Node(String),
    Registers(RegisterBlock),
    Characteristic(String),
    Can(CanId),
    None,
}

/// One message from a device, as the connector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawUplink {
    pub source: Source,
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

/// A request from ThingsBoard for a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DownlinkRequest {
    Rpc(RpcRequest),
    AttributeUpdate(AttributeUpdate),
}

impl DownlinkRequest {
    /// The target device's name.
    pub fn device(&self) -> &str {
        match self {
            DownlinkRequest::Rpc(r) => &r.device,
            DownlinkRequest::AttributeUpdate(a) => &a.device,
        }
    }

    /// Address it to `device` (the connector's name for a renamed device).
    pub fn set_device(&mut self, device: String) {
        match self {
            DownlinkRequest::Rpc(r) => r.device = device,
            DownlinkRequest::AttributeUpdate(a) => a.device = device,
        }
    }
}

/// One message for a connector to send to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkMessage {
    pub target: String,
    pub payload: Vec<u8>,
    pub metadata: Vec<(String, String)>,
}

/// A device update on its way to ThingsBoard, as the event store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The connector that received it (for statistics).
    pub connector: String,
    /// The update; every telemetry entry has its `ts` (the receipt time
    /// when the converter gave none).
    pub update: DeviceUpdate,
}

/// A device ThingsBoard knows through this gateway, as the store keeps it
/// to connect it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_type: Option<String>,
    /// The connector that owns the device (where its requests go).
    pub connector: String,
    /// The name ThingsBoard shows it under since a user renamed it there
    /// (`gateway_device_renamed`): its data go under that name, and
    /// requests for that name reach it. `None`: its own name.
    pub renamed: Option<String>,
}
