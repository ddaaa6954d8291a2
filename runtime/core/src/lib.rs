//! tbgw's plain data: what connectors, converters, the event store and the
//! ThingsBoard client hand to each other.
//!
//! These types mirror the converter contract (`wit/converter.wit`) without
//! depending on wasmtime, so that connectors and the store never see the
//! WebAssembly runtime. `runtime/wasm` converts between the two at the
//! boundary. Kept free of heavy dependencies on purpose: every crate of the
//! workspace depends on this one.

mod data;
mod json;

pub use data::{
    AttributeUpdate, CanId, ConvertedMessage, DeviceRecord, DeviceUpdate, Direction, DownlinkMessage, DownlinkRequest,
    Dropped, Entry, Event, RawUplink, RegisterBlock, RpcRequest, Source, Telemetry, Value,
};
pub use json::{device_update_json, downlink_message_json};
