//! The built-in JSON converters' mapping logic, in plain Rust.
//!
//! tbgw's built-in `json` converters are WebAssembly components
//! (`guest-converters/json-uplink`, `guest-converters/json-downlink`); this
//! crate is what they run, free of any WebAssembly glue, so that it can be
//! unit-tested natively and measured natively as the benchmark's baseline.
//!
//! - [`uplink`]: device JSON to ThingsBoard data, configured as the
//!   ThingsBoard IoT Gateway's JSON converter (3.x).
//! - [`downlink`]: RPCs and shared attribute updates to device messages,
//!   configured as the ThingsBoard IoT Gateway's MQTT `requestsMapping`.
//!
//! The building blocks: [`json`] (a payload tree that borrows its strings),
//! [`path`] and [`template`] (the `${...}` expressions), [`coerce`] (value
//! types), [`time`] (timestamps) and [`config`] (errors that name the field).

pub mod coerce;
pub mod config;
pub mod downlink;
pub mod json;
pub mod path;
pub mod template;
pub mod time;
pub mod uplink;

pub use config::ConfigError;
pub use downlink::{DownlinkConverter, DownlinkMessage, Request};
pub use uplink::{Message, UplinkConverter};

/// A ThingsBoard value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// JSON text.
    Json(String),
}

/// A key and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
}

/// Telemetry values sharing a timestamp (`None`: the time of receipt).
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub ts: Option<i64>,
    pub values: Vec<Entry>,
}

/// What one message says about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceUpdate {
    pub device: String,
    pub device_type: Option<String>,
    pub attributes: Vec<Entry>,
    pub telemetry: Vec<Telemetry>,
}

/// A value left out of a converted message, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    pub key: String,
    pub reason: String,
}

/// What one message converted into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkOutput {
    pub updates: Vec<DeviceUpdate>,
    pub dropped: Vec<Dropped>,
}
