//! What a connector is to the rest of the gateway.
//!
//! A connector does protocol I/O only: it turns what it receives into
//! [`RawUplink`]s and hands them to the converter stage through an
//! [`UplinkSink`], each with the [`RouteId`] of the converter that handles it
//! and an [`Ack`] that the pipeline calls once the message's events are
//! durable in the event store (or once the message has failed for good).
//! Only then may the connector confirm the message to its source (an MQTT
//! PUBACK): nothing is acknowledged upstream before it is durable downstream.
//!
//! Requests from ThingsBoard arrive on the context's
//! [`DownlinkLink`](crate::downlink::DownlinkLink), already converted into
//! messages for the device; the connector sends them and answers each.
//!
//! Shutting down has two steps: `stop_intake` (take no new messages: the
//! source keeps what was not acknowledged), then, once the pipeline has
//! drained and the last acks were made, `finish` (disconnect).

use crate::RawUplink;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// Which converter handles a message (an index the gateway assigns).
pub type RouteId = usize;

/// Confirms a message to its source.
pub struct Ack(Box<dyn FnOnce() + Send>);

impl Ack {
    pub fn new(confirm: impl FnOnce() + Send + 'static) -> Ack {
        Ack(Box::new(confirm))
    }

    /// Confirm the message.
    pub fn confirm(self) {
        (self.0)()
    }
}

/// A message on its way to a converter.
pub struct Uplink {
    pub route: RouteId,
    pub raw: RawUplink,
    /// `None` when the source needs no confirmation (MQTT QoS 0).
    pub ack: Option<Ack>,
}

/// The converter stage closed (the gateway is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the converter stage is closed")]
pub struct Closed;

/// Where connectors put messages. Messages with the same ordering key go to
/// the same converter thread, in order: that is what keeps a device's data
/// in order from source to ThingsBoard.
#[derive(Clone)]
pub struct UplinkSink {
    shards: Arc<[flume::Sender<Uplink>]>,
}

impl UplinkSink {
    pub fn new(shards: Vec<flume::Sender<Uplink>>) -> UplinkSink {
        UplinkSink { shards: shards.into() }
    }

    /// Hand `uplink` over; waits while the converter stage is full
    /// (backpressure). `key` is the ordering key (a topic, a device address).
    pub async fn send(&self, key: &str, uplink: Uplink) -> Result<(), Closed> {
        let shard = self.shard(key);
        shard.send_async(uplink).await.map_err(|_| Closed)
    }

    fn shard(&self, key: &str) -> &flume::Sender<Uplink> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }
}

/// A connector's counters.
#[derive(Debug, Default)]
pub struct ConnectorStats {
    pub connected: AtomicBool,
    /// Messages received from devices.
    pub received: AtomicU64,
    /// Messages confirmed to their source.
    pub acked: AtomicU64,
    /// Messages that matched no mapping (dropped, confirmed).
    pub unmatched: AtomicU64,
    /// Messages sent to devices (RPC requests, attribute updates, answers
    /// to attribute requests).
    pub sent_to_devices: AtomicU64,
    /// Requests from ThingsBoard answered with an error (not connected,
    /// timed out, refused by the broker).
    pub downlink_errors: AtomicU64,
    /// Polls of a device that failed: refused (a Modbus exception) or not
    /// answered. Data quality, not a fault of the gateway.
    pub read_errors: AtomicU64,
    /// Links made again after one was lost (a CAN bus reopened).
    pub reconnects: AtomicU64,
    /// Error frames the bus reported (CAN).
    pub bus_errors: AtomicU64,
    /// Counts of this connector's kind only (OPC-UA's monitored items, ...).
    extras: std::sync::Mutex<Vec<Arc<Extra>>>,
}

/// A count one kind of connector keeps beyond the common ones. The status
/// snapshot, the statistics (`<Connector><Name>`, in CamelCase) and
/// `/metrics` (`connector_<name>`) show every one a connector registered.
#[derive(Debug)]
pub struct Extra {
    /// In snake_case: `monitored_items`.
    pub name: &'static str,
    /// One line for `/metrics`.
    pub help: &'static str,
    /// A level (`set`), not a count that only grows (`add`).
    pub gauge: bool,
    value: AtomicU64,
}

impl Extra {
    pub fn set(&self, v: u64) {
        self.value.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Take `n` from a level, never below zero.
    pub fn sub(&self, n: u64) {
        let _ = self.value.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl ConnectorStats {
    /// The connector's count `name`, made on first use (the same name gives
    /// the same count: a connector run again keeps counting). Shown from
    /// its registration on, in the order registered.
    pub fn extra(&self, name: &'static str, help: &'static str, gauge: bool) -> Arc<Extra> {
        let mut extras = self.extras.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = extras.iter().find(|e| e.name == name) {
            return e.clone();
        }
        let e = Arc::new(Extra { name, help, gauge, value: AtomicU64::new(0) });
        extras.push(e.clone());
        e
    }

    /// Every count registered, in order.
    pub fn extras(&self) -> Vec<Arc<Extra>> {
        self.extras.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a running connector gets.
pub struct ConnectorContext {
    pub sink: UplinkSink,
    /// Requests from ThingsBoard for its devices, and where its devices'
    /// own requests go.
    pub downlink: crate::downlink::DownlinkLink,
    pub stop_intake: CancellationToken,
    pub finish: CancellationToken,
    pub stats: Arc<ConnectorStats>,
}

/// A connector: protocol I/O for one configured source.
pub trait Connector: Send {
    /// Its name in the gateway config (and in statistics).
    fn name(&self) -> &str;

    /// Run until `ctx.finish` is cancelled.
    fn run(self: Box<Self>, ctx: ConnectorContext) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
