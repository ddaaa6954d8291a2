//! Requests between ThingsBoard and devices, as the gateway's router and the
//! connectors hand them to each other.
//!
//! ThingsBoard → device: the router turns a server-side RPC or a shared
//! attribute update into [`DownlinkMessage`]s with the device's downlink
//! converter, and hands them to the connector that owns the device as a
//! [`DeviceJob`]. The connector sends them and answers the job's [`Reply`]
//! exactly once: with the device's answer (a two-way RPC), with success once
//! sent, or with why it could not (not connected, timed out). The router
//! answers ThingsBoard from that; nothing is left without an answer.
//!
//! Device → ThingsBoard: a connector that recognises a device's own request
//! (connect me, disconnect me, send me my attributes) hands it to the router
//! as a [`DeviceRequest`].

use crate::DownlinkMessage;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// How a request ended: the answer (JSON text), or why it failed (words
/// for a user, which the router sends to ThingsBoard as the error).
pub type Outcome = Result<String, String>;

/// Where an [`Outcome`] goes. Dropping it unanswered counts as a failure
/// ("the connector dropped the request"), so nothing waits forever.
pub type Reply = oneshot::Sender<Outcome>;

/// What a request from ThingsBoard is, for the connector's logs and replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// `params` is the RPC's params as JSON text.
    Rpc {
        id: i64,
        method: String,
        params: String,
    },
    AttributeUpdate,
}

/// Messages for one device, from one ThingsBoard request.
#[derive(Debug)]
pub struct DeviceJob {
    pub device: String,
    pub kind: JobKind,
    pub messages: Vec<DownlinkMessage>,
    pub reply: Reply,
}

/// What the router hands a connector.
#[derive(Debug)]
pub enum ToConnector {
    Device(DeviceJob),
    /// An RPC to the connector itself: `<type>_<method>` sent to the gateway
    /// device (e.g. `mqtt_publish`); `params` is JSON text.
    ConnectorRpc {
        method: String,
        params: String,
        reply: Reply,
    },
}

/// What a connector asks of ThingsBoard for one of its devices.
#[derive(Debug)]
pub enum DeviceRequest {
    /// `v1/gateway/connect`: ThingsBoard creates the device if new, and
    /// sends its requests to this gateway.
    Connect { device: String, device_type: Option<String> },
    /// `v1/gateway/disconnect`.
    Disconnect { device: String },
    /// `v1/gateway/attributes/request`: the device's shared (or client)
    /// attributes `keys`. The reply is a JSON object of the values found.
    Attributes { device: String, keys: Vec<String>, client: bool, reply: Reply },
}

/// A connector's end of the router: what it receives, and where it sends
/// its devices' requests (tagged with the connector's name).
pub struct DownlinkLink {
    pub jobs: mpsc::Receiver<ToConnector>,
    pub requests: DeviceRequests,
}

/// Where a connector sends its devices' requests.
#[derive(Clone)]
pub struct DeviceRequests {
    connector: Arc<str>,
    tx: mpsc::UnboundedSender<(Arc<str>, DeviceRequest)>,
}

impl DeviceRequests {
    pub fn new(connector: &str, tx: mpsc::UnboundedSender<(Arc<str>, DeviceRequest)>) -> Self {
        DeviceRequests { connector: connector.into(), tx }
    }

    /// Hand a request to the router; false when the gateway is stopping.
    pub fn send(&self, request: DeviceRequest) -> bool {
        self.tx.send((self.connector.clone(), request)).is_ok()
    }
}

/// The devices ThingsBoard knows through this gateway and the connector of
/// each: what routes a request to its device. The ThingsBoard client keeps
/// it (it connects the devices); the router and the gateway RPCs read it.
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    devices: RwLock<HashMap<String, crate::DeviceRecord>>,
}

impl DeviceRegistry {
    pub fn get(&self, device: &str) -> Option<crate::DeviceRecord> {
        self.read().get(device).cloned()
    }

    /// Insert or update; true when that changed anything.
    pub fn put(&self, device: &str, record: crate::DeviceRecord) -> bool {
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        if map.get(device) == Some(&record) {
            return false;
        }
        map.insert(device.to_owned(), record);
        true
    }

    pub fn remove(&self, device: &str) -> Option<crate::DeviceRecord> {
        self.devices.write().unwrap_or_else(|e| e.into_inner()).remove(device)
    }

    /// Every device and its record, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, crate::DeviceRecord)> {
        let mut all: Vec<_> = self.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, crate::DeviceRecord>> {
        self.devices.read().unwrap_or_else(|e| e.into_inner())
    }
}
