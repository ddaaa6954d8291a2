//! The BLE connector: Bluetooth Low Energy devices to ThingsBoard and
//! back, through BlueZ (btleplug, over the system D-Bus), configured as the
//! ThingsBoard IoT Gateway's `ble.json`.
//!
//! - [`config`]: the connector's keys and its devices (read with
//!   [`tbgw_ble_items`]), and the built-in `ble` converters that decode and
//!   encode their values.
//! - [`connector`]: one scanner for the connector, one task per device:
//!   connections, reads, notifications, advertisements, writes.
//!
//! Like every connector it does protocol I/O only: values go to the `ble`
//! converter (WebAssembly) untouched, and what to write comes from it
//! already encoded.

pub mod config;
pub mod connector;

pub use config::{BleConfig, parse};
pub use connector::BleConnector;

use tbgw_core::config::Diagnostics;
use tbgw_core::connector::{Connector, RouteId};
use tbgw_core::setup::{ConnectorKind, ConnectorSetup, DownlinkDecl, RouteDecl, Site};

/// The BLE connector kind (`type: ble`), for the gateway's list.
pub static KIND: Ble = Ble;

/// See [`KIND`].
pub struct Ble;

impl ConnectorKind for Ble {
    fn kind(&self) -> &'static str {
        "ble"
    }

    fn parse(&self, doc: &serde_json::Value, site: &Site<'_>, d: &mut Diagnostics) -> Option<Box<dyn ConnectorSetup>> {
        parse(doc, site.base_dir, d).map(|c| Box::new(c) as Box<dyn ConnectorSetup>)
    }
}

impl ConnectorSetup for BleConfig {
    fn routes(&self) -> Vec<RouteDecl> {
        self.route_decls.clone()
    }

    fn downlinks(&self) -> Vec<DownlinkDecl> {
        self.downlinks.clone()
    }

    fn build(&self, name: &str, routes: &[RouteId]) -> Box<dyn Connector> {
        Box::new(BleConnector::new(name, self.clone(), routes))
    }
}
