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

use tbgw_core::config::Diagnostics;
use tbgw_core::connector::{Connector, RouteId};
use tbgw_core::setup::{
    ComponentRef, ConnectorKind, ConnectorSetup, ConverterDecl, Devices, DownlinkDecl, RouteDecl, Site,
};

/// The MQTT connector kind (`type: mqtt`), for the gateway's list.
pub static KIND: Mqtt = Mqtt;

/// See [`KIND`].
pub struct Mqtt;

impl ConnectorKind for Mqtt {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn parse(&self, doc: &serde_json::Value, site: &Site<'_>, d: &mut Diagnostics) -> Option<Box<dyn ConnectorSetup>> {
        parse(doc, site.base_dir, site.name, d).map(|c| Box::new(c) as Box<dyn ConnectorSetup>)
    }
}

impl ConnectorSetup for MqttConfig {
    /// One route per mapping, then the devices' requests' (recognised by
    /// the built-in `json` converter) when `requestsMapping` has any. Their
    /// attribute requests are answered as `requestsMapping` says, by the
    /// built-in `json` downlink converter, a custom `downlinkConverter`
    /// notwithstanding.
    fn routes(&self) -> Vec<RouteDecl> {
        let mut routes: Vec<RouteDecl> = self
            .mappings
            .iter()
            .map(|m| RouteDecl { converter: m.converter.clone(), report: m.report.clone(), answers: None })
            .collect();
        if let (false, Some(mapping)) = (self.request_filters.is_empty(), &self.requests_mapping) {
            routes.push(RouteDecl {
                converter: ConverterDecl {
                    path: String::new(),
                    label: "json (requests)".into(),
                    component: ComponentRef::Builtin("json".into()),
                    config: serde_json::json!({ "requestsMapping": mapping }).to_string(),
                    limits: Default::default(),
                },
                report: Default::default(),
                answers: self.attribute_answers.clone(),
            });
        }
        routes
    }

    fn downlinks(&self) -> Vec<DownlinkDecl> {
        self.downlink.iter().map(|c| DownlinkDecl { converter: c.clone(), devices: Devices::All }).collect()
    }

    fn build(&self, name: &str, routes: &[RouteId]) -> Box<dyn Connector> {
        Box::new(MqttConnector::new(name, self.clone(), routes.to_vec()))
    }
}
