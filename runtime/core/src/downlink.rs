//! Requests between ThingsBoard and devices, as the gateway's router and the
//! connectors hand them to each other.
//!
//! ThingsBoard → device: the router turns a server-side RPC, a shared
//! attribute update or the answer to a device's attribute request into
//! [`DownlinkMessage`]s with the device's downlink converter, and hands them
//! to the connector that owns the device as a [`DeviceJob`]. The connector
//! sends them and answers the job's [`Answers`] exactly once: with what the
//! device answered to the messages that expect an answer (a two-way RPC's
//! response, a Modbus read), in their order (none for writes), or with why
//! it could not (not connected, timed out, a message of another connector's
//! kind). The router makes ThingsBoard's reply from that with the converter
//! (`reply`); nothing is left without an answer.
//!
//! Device → ThingsBoard: devices' own requests ("connect me", "send me my
//! attributes": [`DeviceRequest`]) are recognised by converters in the
//! devices' messages and handed to the router by the pipeline; a connector
//! that knows its devices without their saying (Modbus slaves) announces
//! them through [`DeviceRequests`] too.

use crate::{DeviceRequest, DownlinkMessage, RawUplink};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};

/// How a connector RPC ended: the answer (JSON text), or why it failed
/// (words for a user, which the router sends to ThingsBoard as the error).
pub type Outcome = Result<String, String>;

/// Where a connector RPC's [`Outcome`] goes. Dropping it unanswered counts
/// as a failure ("the connector dropped the request"), so nothing waits
/// forever.
pub type Reply = oneshot::Sender<Outcome>;

/// What a device answered to a job's messages that expect an answer, in
/// order, or why the job failed.
pub type Answered = Result<Vec<RawUplink>, String>;

/// Where a [`DeviceJob`]'s [`Answered`] goes; dropped unanswered, it fails.
pub type Answers = oneshot::Sender<Answered>;

/// What a request from ThingsBoard is, for the connector's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    Rpc {
        id: i64,
        method: String,
    },
    AttributeUpdate,
    /// The answer to the device's attribute request.
    AttributeResponse,
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobKind::Rpc { id, method } => write!(f, "RPC {method} (id {id})"),
            JobKind::AttributeUpdate => f.write_str("attribute update"),
            JobKind::AttributeResponse => f.write_str("answer to an attribute request"),
        }
    }
}

/// Messages for one device, from one ThingsBoard request.
#[derive(Debug)]
pub struct DeviceJob {
    pub device: String,
    pub kind: JobKind,
    pub messages: Vec<DownlinkMessage>,
    pub reply: Answers,
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

/// A connector's end of the router: what it receives, and where it
/// announces its devices (tagged with the connector's name).
pub struct DownlinkLink {
    pub jobs: mpsc::Receiver<ToConnector>,
    pub requests: DeviceRequests,
}

/// A device's own request on its way to the router.
#[derive(Debug, Clone, PartialEq)]
pub struct FromDevice {
    /// The connector the device belongs to.
    pub connector: Arc<str>,
    /// The downlink converter (the gateway's number for it) that answers
    /// an attribute request, when not the device's own: the one paired with
    /// the route whose converter recognised the request (`RouteDecl::answers`).
    pub answered_by: Option<usize>,
    pub request: DeviceRequest,
}

/// Where devices' requests go, tagged with the connector they belong to.
#[derive(Clone)]
pub struct DeviceRequests {
    connector: Arc<str>,
    tx: mpsc::UnboundedSender<FromDevice>,
}

impl DeviceRequests {
    pub fn new(connector: &str, tx: mpsc::UnboundedSender<FromDevice>) -> Self {
        DeviceRequests { connector: connector.into(), tx }
    }

    /// Hand a request to the router; false when the gateway is stopping.
    pub fn send(&self, request: DeviceRequest) -> bool {
        self.tx.send(FromDevice { connector: self.connector.clone(), answered_by: None, request }).is_ok()
    }
}

/// The devices ThingsBoard knows through this gateway and the connector of
/// each: what routes a request to its device. The ThingsBoard client keeps
/// it (it connects the devices); the router and the gateway RPCs read it.
/// Devices are kept by the connector's name for them; a device renamed in
/// ThingsBoard is also found by its new name ([`DeviceRegistry::resolve`]).
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    inner: RwLock<Devices>,
}

#[derive(Debug, Default)]
struct Devices {
    by_name: HashMap<String, crate::DeviceRecord>,
    /// ThingsBoard's name of a renamed device, to the connector's name.
    renamed: HashMap<String, String>,
}

impl DeviceRegistry {
    /// The record of the device the connector calls `device`.
    pub fn get(&self, device: &str) -> Option<crate::DeviceRecord> {
        self.read().by_name.get(device).cloned()
    }

    /// Insert or update; true when that changed anything. A rename already
    /// known is kept when `record` says none (a connector does not know it).
    pub fn put(&self, device: &str, mut record: crate::DeviceRecord) -> bool {
        let mut d = self.write();
        let old = d.by_name.get(device).cloned();
        if record.renamed.is_none() {
            record.renamed = old.as_ref().and_then(|o| o.renamed.clone());
        }
        if old.as_ref() == Some(&record) {
            return false;
        }
        if let Some(old_name) = old.and_then(|o| o.renamed) {
            d.renamed.remove(&old_name);
        }
        if let Some(new_name) = &record.renamed {
            d.renamed.insert(new_name.clone(), device.to_owned());
        }
        d.by_name.insert(device.to_owned(), record);
        true
    }

    pub fn remove(&self, device: &str) -> Option<crate::DeviceRecord> {
        let mut d = self.write();
        let record = d.by_name.remove(device)?;
        if let Some(name) = &record.renamed {
            d.renamed.remove(name);
        }
        Some(record)
    }

    /// The device ThingsBoard calls `name`: the connector's name for it and
    /// its record. A renamed device is no longer found by its old name.
    pub fn resolve(&self, name: &str) -> Option<(String, crate::DeviceRecord)> {
        let d = self.read();
        if let Some(local) = d.renamed.get(name) {
            return d.by_name.get(local).map(|r| (local.clone(), r.clone()));
        }
        d.by_name.get(name).filter(|r| r.renamed.is_none()).map(|r| (name.to_owned(), r.clone()))
    }

    /// The name ThingsBoard shows the device the connector calls `device`
    /// under, when it was renamed there.
    pub fn renamed(&self, device: &str) -> Option<String> {
        let d = self.read();
        if d.renamed.is_empty() {
            return None;
        }
        d.by_name.get(device).and_then(|r| r.renamed.clone())
    }

    /// Whether any device was renamed (nothing to look up otherwise).
    pub fn any_renamed(&self) -> bool {
        !self.read().renamed.is_empty()
    }

    /// ThingsBoard renamed the device it called `from` to `to`: its record
    /// under the connector's name, to keep; `None` if no device is `from`.
    /// Renaming it back to the connector's name undoes the rename.
    pub fn rename(&self, from: &str, to: &str) -> Option<(String, crate::DeviceRecord)> {
        let (local, mut record) = self.resolve(from)?;
        record.renamed = (to != local).then(|| to.to_owned());
        let mut d = self.write();
        if let Some(old) = d.by_name.get(&local).and_then(|r| r.renamed.clone()) {
            d.renamed.remove(&old);
        }
        if let Some(new_name) = &record.renamed {
            d.renamed.insert(new_name.clone(), local.clone());
        }
        d.by_name.insert(local.clone(), record.clone());
        Some((local, record))
    }

    /// Every device and its record, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, crate::DeviceRecord)> {
        let mut all: Vec<_> = self.read().by_name.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Devices> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Devices> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceRecord;

    fn record(connector: &str) -> DeviceRecord {
        DeviceRecord { device_type: None, connector: connector.into(), renamed: None }
    }

    #[test]
    fn a_renamed_device_is_found_by_its_new_name_only() {
        let r = DeviceRegistry::default();
        r.put("dev-1", record("mqtt"));
        r.put("dev-2", record("mqtt"));
        assert!(!r.any_renamed());
        let (local, rec) = r.rename("dev-1", "Boiler").expect("known");
        assert_eq!((local.as_str(), rec.renamed.as_deref()), ("dev-1", Some("Boiler")));
        assert_eq!(r.resolve("Boiler").map(|(l, _)| l), Some("dev-1".into()));
        assert!(r.resolve("dev-1").is_none(), "the old name is ThingsBoard's no more");
        assert_eq!(r.renamed("dev-1").as_deref(), Some("Boiler"));
        assert_eq!(r.renamed("dev-2"), None);
        // A connector announcing it again does not undo the rename.
        assert!(!r.put("dev-1", record("mqtt")));
        assert_eq!(r.renamed("dev-1").as_deref(), Some("Boiler"));
        // Renamed again, then back to its own name.
        r.rename("Boiler", "Boiler 2").expect("known by its new name");
        assert!(r.resolve("Boiler").is_none());
        r.rename("Boiler 2", "dev-1").expect("known");
        assert_eq!(r.resolve("dev-1").map(|(l, _)| l), Some("dev-1".into()));
        assert!(!r.any_renamed());
        assert!(r.rename("nobody", "x").is_none());
        // Forgetting a renamed device forgets its new name too.
        r.rename("dev-2", "Pump");
        r.remove("dev-2");
        assert!(r.resolve("Pump").is_none() && !r.any_renamed());
    }
}
