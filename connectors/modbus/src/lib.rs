//! The Modbus connector: a polling master for Modbus TCP, RTU framing over
//! TCP, Modbus over UDP and RTU on serial ports, configured as the ThingsBoard IoT Gateway's
//! `modbus.json`.
//!
//! - [`config`]: `master.slaves[]`, every problem by path; where each tag
//!   is, read with the tag schema ([`tbgw_modbus_tags`]); each slave's
//!   converters, built-in or custom.
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

use tbgw_core::config::Diagnostics;
use tbgw_core::connector::{Connector, RouteId};
use tbgw_core::setup::{ConnectorKind, ConnectorSetup, DownlinkDecl, RouteDecl, Site};

/// The Modbus connector kind (`type: modbus`), for the gateway's list.
pub static KIND: Modbus = Modbus;

/// See [`KIND`].
pub struct Modbus;

impl ConnectorKind for Modbus {
    fn kind(&self) -> &'static str {
        "modbus"
    }

    fn parse(&self, doc: &serde_json::Value, site: &Site<'_>, d: &mut Diagnostics) -> Option<Box<dyn ConnectorSetup>> {
        parse(doc, site.base_dir, d).map(|c| Box::new(c) as Box<dyn ConnectorSetup>)
    }
}

impl ConnectorSetup for ModbusConfig {
    fn routes(&self) -> Vec<RouteDecl> {
        self.routes.clone()
    }

    fn downlinks(&self) -> Vec<DownlinkDecl> {
        self.downlinks.clone()
    }

    fn build(&self, name: &str, routes: &[RouteId]) -> Box<dyn Connector> {
        Box::new(ModbusConnector::new(name, self.clone(), routes))
    }
}
