//! The MQTT connector: device data from an MQTT broker into tbgw.
//!
//! - [`config`]: the ThingsBoard IoT Gateway's `mqtt.json`, read with every
//!   problem reported by path.
//! - [`connector`]: subscriptions, manual acknowledgements once stored,
//!   reconnection, persistent sessions, MQTT 3.1.1 and 5; requests from
//!   ThingsBoard sent to devices, and two-way RPCs' answers awaited.
//!
//! Like every connector, it does protocol I/O only: payloads go to the
//! converters untouched, devices' own requests (connect, disconnect,
//! attribute requests) included: their topics go to a route of their own,
//! whose converter recognises them.

pub mod config;
pub mod connector;

pub use config::{MqttConfig, parse};
pub use connector::MqttConnector;
