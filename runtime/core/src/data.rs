//! The host's own records around the shared data model ([`tbgw_data`]):
//! what the event store keeps.

use tbgw_data::DeviceUpdate;

/// A device update on its way to ThingsBoard, as the event store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The connector that received it (for statistics).
    pub connector: String,
    /// The update; every telemetry entry has its `ts` (the receipt time
    /// when the converter gave none).
    pub update: DeviceUpdate,
}

/// A device ThingsBoard knows through this gateway, as the store keeps it
/// to connect it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_type: Option<String>,
    /// The connector that owns the device (where its requests go).
    pub connector: String,
    /// The name ThingsBoard shows it under since a user renamed it there
    /// (`gateway_device_renamed`): its data go under that name, and
    /// requests for that name reach it. `None`: its own name.
    pub renamed: Option<String>,
}
