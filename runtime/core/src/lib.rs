//! tbgw's plain data and the interfaces between its parts: what connectors,
//! converters, the event store and the ThingsBoard client hand to each
//! other.
//!
//! - the data model, [`tbgw_data`]'s, re-exported here: what devices send,
//!   what ThingsBoard stores and asks, what goes back to devices; and the
//!   event store's records ([`Event`], [`DeviceRecord`]);
//! - [`connector`]: what a connector is and how it hands messages over;
//! - [`downlink`]: requests between ThingsBoard and devices (RPC, attribute
//!   updates and requests, device announcements), and the device registry;
//! - [`config`]: reading config documents with every error reported, by path;
//! - [`report`]: report strategies (which values go on to ThingsBoard);
//! - [`setup`]: the seam a connector crate implements (its kind, its
//!   configuration read, the converters it uses, the running connector).
//!
//! The data types mirror the converter contract (`wit/converter.wit`)
//! without depending on wasmtime, so that connectors and the store never see
//! the WebAssembly runtime; `runtime/wasm` converts between the two at the
//! boundary, and the guest converters use the same types through the guest
//! SDK. Kept free of heavy dependencies on purpose: every crate of the
//! workspace depends on this one.

pub mod config;
pub mod connector;
mod data;
pub mod downlink;
mod json;
pub mod report;
pub mod setup;

pub use data::{DeviceRecord, Event};
pub use json::{device_update_json, downlink_message_json};
pub use tbgw_data::*;
