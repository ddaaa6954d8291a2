//! The Modbus connector: a polling master for Modbus TCP, RTU framing over
//! TCP, Modbus over UDP and RTU on serial ports, configured as the ThingsBoard IoT Gateway's
//! `modbus.json`.
//!
//! - [`config`]: `master.slaves[]`, every problem by path; the tags are
//!   checked with the `modbus` converter's own library.
//! - [`planner`]: tags read with as few requests as the protocol allows.
//! - [`connector`]: one task per line (a Modbus TCP slave's connection, or
//!   a serial bus its slaves share): polls, reconnection, writes and reads
//!   asked by ThingsBoard.
//! - [`udp`]: Modbus frames in UDP datagrams, as a stream for tokio-modbus.
//!
//! Like every connector it does protocol I/O only: polled blocks go to the
//! `modbus` converter (WebAssembly) untouched, and writes come from it
//! already encoded.

pub mod config;
pub mod connector;
pub mod planner;
pub mod udp;

pub use config::{ModbusConfig, parse};
pub use connector::ModbusConnector;
