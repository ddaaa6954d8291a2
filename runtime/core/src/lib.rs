//! tbgw's plain data and the interfaces between its parts: what connectors,
//! converters, the event store and the ThingsBoard client hand to each
//! other.
//!
//! - the data types (this module): mirrors of the converter contract;
//! - [`connector`]: what a connector is and how it hands messages over;
//! - [`downlink`]: requests between ThingsBoard and devices (RPC, attribute
//!   updates and requests, device announcements), and the device registry;
//! - [`config`]: reading config documents with every error reported, by path;
//! - [`report`]: report strategies (which values go on to ThingsBoard).
//!
//! These types mirror the converter contract (`wit/converter.wit`) without
//! depending on wasmtime, so that connectors and the store never see the
//! WebAssembly runtime. `runtime/wasm` converts between the two at the
//! boundary. Kept free of heavy dependencies on purpose: every crate of the
//! workspace depends on this one.

pub mod config;
pub mod connector;
mod data;
pub mod downlink;
mod json;
pub mod report;

pub use data::{
    AttributeUpdate, CanId, ConvertedMessage, DeviceRecord, DeviceUpdate, Direction, DownlinkMessage, DownlinkRequest,
    Dropped, Entry, Event, RawUplink, RegisterBlock, RpcRequest, Source, Telemetry, Value,
};
pub use json::{device_update_json, downlink_message_json};
