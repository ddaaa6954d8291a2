//! The connectors this tbgw has: one line per connector crate, each behind
//! the cargo feature of its name (all on by default). Everything else about
//! a connector is in its crate, behind [`tbgw_core::setup`].

use tbgw_core::setup::ConnectorKind;

/// Every connector kind built in.
pub const KINDS: &[&dyn ConnectorKind] = &[
    #[cfg(feature = "mqtt")]
    &tbgw_connector_mqtt::KIND,
    #[cfg(feature = "modbus")]
    &tbgw_connector_modbus::KIND,
    #[cfg(feature = "can")]
    &tbgw_connector_can::KIND,
    #[cfg(feature = "opcua")]
    &tbgw_connector_opcua::KIND,
    #[cfg(feature = "ble")]
    &tbgw_connector_ble::KIND,
];

/// The connector kind configs call `kind` (`mqtt`).
pub fn kind(kind: &str) -> Option<&'static dyn ConnectorKind> {
    KINDS.iter().copied().find(|k| k.kind() == kind)
}

/// Their names, for messages: `mqtt, modbus`.
pub fn names() -> String {
    KINDS.iter().map(|k| k.kind()).collect::<Vec<_>>().join(", ")
}
