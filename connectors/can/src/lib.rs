//! The CAN connector: frames from a CAN bus to ThingsBoard and back,
//! configured as the ThingsBoard IoT Gateway's `can.json`.
//!
//! - [`config`]: the bus (`interface`, `channel`, `reconnect*`), the
//!   devices and their items (read with [`tbgw_can_items`]), each device's
//!   converters, built-in or custom.
//! - [`link`]: the bus over either transport: [`socketcan_link`] (the
//!   kernel's CAN sockets, Linux) or [`socketcand`] (a socketcand server's
//!   TCP protocol: remote interfaces, bridges, and the tests' bus).
//! - [`connector`]: the task that owns the bus: routing, polling, writes,
//!   reconnection.
//!
//! Like every connector it does protocol I/O only: frames go to the `can`
//! converter (WebAssembly) untouched, and the frames to send come from it
//! already encoded.

pub mod config;
pub mod connector;
pub mod link;
#[cfg(target_os = "linux")]
pub mod socketcan_link;
pub mod socketcand;

pub use config::{CanConfig, parse};
pub use connector::CanConnector;

use tbgw_core::config::Diagnostics;
use tbgw_core::connector::{Connector, RouteId};
use tbgw_core::setup::{ConnectorKind, ConnectorSetup, DownlinkDecl, RouteDecl, Site};

/// The CAN connector kind (`type: can`), for the gateway's list.
pub static KIND: Can = Can;

/// See [`KIND`].
pub struct Can;

impl ConnectorKind for Can {
    fn kind(&self) -> &'static str {
        "can"
    }

    fn parse(&self, doc: &serde_json::Value, site: &Site<'_>, d: &mut Diagnostics) -> Option<Box<dyn ConnectorSetup>> {
        parse(doc, site.base_dir, d).map(|c| Box::new(c) as Box<dyn ConnectorSetup>)
    }
}

impl ConnectorSetup for CanConfig {
    fn routes(&self) -> Vec<RouteDecl> {
        self.route_decls.clone()
    }

    fn downlinks(&self) -> Vec<DownlinkDecl> {
        self.downlinks.clone()
    }

    fn build(&self, name: &str, routes: &[RouteId]) -> Box<dyn Connector> {
        Box::new(CanConnector::new(name, self.clone(), routes))
    }
}
