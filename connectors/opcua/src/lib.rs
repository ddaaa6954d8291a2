//! The OPC-UA connector: values of an OPC-UA server's nodes to
//! ThingsBoard, configured as the ThingsBoard IoT Gateway's `opcua.json`.
//!
//! - [`config`]: the server, the mappings (how to find each device's node,
//!   its name and profile, its keys' nodes), each mapping's converter.
//! - [`path`]: NodeIds, browse paths and `${...}` expressions as the config
//!   writes them.
//! - [`resolve`]: the server's limits, and browse paths to NodeIds in bulk
//!   (TranslateBrowsePathsToNodeIds in batches the server accepts; never a
//!   browse walk per node).
//! - [`connector`]: the task that owns the session: the node table,
//!   subscriptions shared by every device (or chunked polling), rescans,
//!   what happens when the server goes away and comes back.
//! - `structures`: the server's own structure types, loaded when a value
//!   of one first arrives, so that the converter gets their fields.
//! - `security`: the client's certificate, the trust list of server
//!   certificates (and trust on first use), what a refused channel means.
//! - `downlink`: ThingsBoard's writes, reads and method calls carried out
//!   on the session (typed by the nodes' DataTypes), and the
//!   `opcua_<method>` connector RPC.
//!
//! Like every connector it does protocol I/O only: each value goes to the
//! `opcua` converter (WebAssembly) as the OPC UA JSON Variant the server
//! sent, with its node, status and times, and the key it feeds.

pub mod config;
pub mod connector;
mod downlink;
pub mod path;
pub mod resolve;
mod security;
mod structures;

pub use config::{OpcuaConfig, parse};
pub use connector::OpcuaConnector;

use tbgw_core::config::Diagnostics;
use tbgw_core::connector::{Connector, RouteId};
use tbgw_core::setup::{ConnectorKind, ConnectorSetup, DownlinkDecl, RouteDecl, Site};

/// The OPC-UA connector kind (`type: opcua`), for the gateway's list.
pub static KIND: Opcua = Opcua;

/// See [`KIND`].
pub struct Opcua;

impl ConnectorKind for Opcua {
    fn kind(&self) -> &'static str {
        "opcua"
    }

    fn parse(&self, doc: &serde_json::Value, site: &Site<'_>, d: &mut Diagnostics) -> Option<Box<dyn ConnectorSetup>> {
        parse(doc, site, d).map(|c| Box::new(c) as Box<dyn ConnectorSetup>)
    }
}

impl ConnectorSetup for OpcuaConfig {
    fn routes(&self) -> Vec<RouteDecl> {
        self.route_decls.clone()
    }

    fn downlinks(&self) -> Vec<DownlinkDecl> {
        self.downlinks.clone()
    }

    fn build(&self, name: &str, routes: &[RouteId]) -> Box<dyn Connector> {
        Box::new(OpcuaConnector::new(name, self.clone(), routes))
    }
}
