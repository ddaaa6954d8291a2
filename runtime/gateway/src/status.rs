//! What the gateway knows of itself, in one typed snapshot ([`Status`]):
//! its connectors and their state, their routes, every converter (version,
//! hash, generation, calls, errors, time), the store's backlog, the
//! ThingsBoard client's state, the router's counts. The statistics sent to
//! ThingsBoard, the `gateway_stats` and `gateway_converters` RPCs are
//! renderings of it ([`Status::statistics`], [`Status::converters`]), and so
//! will be a metrics endpoint or a status page.

use serde_json::{Map, Value, json};
use std::time::Duration;
use tbgw_store::StoreStats;
use tbgw_thingsboard::ClientStatsSnapshot;
use tbgw_thingsboard::limits::LimitsSource;
use tbgw_wasm::ConverterInfo;

/// The gateway, now.
#[derive(Debug, Clone)]
pub struct Status {
    pub uptime: Duration,
    pub connectors: Vec<ConnectorStatus>,
    pub converters: Vec<ConverterStatus>,
    pub store: StoreStats,
    /// The store is at its bound (`when_full` decides what happens next).
    pub store_full: bool,
    pub client: ClientStatsSnapshot,
    /// Requests from ThingsBoard, and those answered with an error.
    pub requests: u64,
    pub request_errors: u64,
}

/// One connector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorStatus {
    pub name: String,
    /// Its `type`.
    pub kind: String,
    pub connected: bool,
    /// Still running (not stopped on its own by `stop_connector`).
    pub running: bool,
    /// Messages received from devices, confirmed to their source, matching
    /// no route.
    pub received: u64,
    pub acked: u64,
    pub unmatched: u64,
    /// Messages converted, failed to convert, values left out by the
    /// converters, events stored, values held back by report strategies.
    pub converted: u64,
    pub conversion_errors: u64,
    pub dropped_values: u64,
    pub stored: u64,
    pub not_reported: u64,
    /// Events ThingsBoard acknowledged.
    pub delivered: u64,
    /// Messages sent to devices, requests that failed, polls that failed.
    pub sent_to_devices: u64,
    pub downlink_errors: u64,
    pub read_errors: u64,
    /// Links made again after a loss; error frames on the bus (CAN).
    pub reconnects: u64,
    /// Its devices ThingsBoard knows (connected through the gateway).
    pub devices: u64,
    pub bus_errors: u64,
    /// The names of its uplink routes' converters, in route order.
    pub routes: Vec<String>,
    /// Counts of its kind only ([`tbgw_core::connector::Extra`]).
    pub extras: Vec<ExtraStatus>,
}

/// A connector's count of its kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraStatus {
    /// In snake_case.
    pub name: &'static str,
    pub help: &'static str,
    pub gauge: bool,
    pub value: u64,
}

impl ExtraStatus {
    /// `monitored_items` as the statistics name it: `MonitoredItems`.
    pub fn camel_name(&self) -> String {
        self.name
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
            })
            .collect()
    }
}

/// One converter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConverterStatus {
    pub connector: String,
    /// Where it is configured.
    pub path: String,
    pub info: ConverterInfo,
}

impl Status {
    /// The statistics published to `v1/devices/me/telemetry` (and answered
    /// to `gateway_stats`): the Python gateway's keys (`eventsProduced`,
    /// `eventsSent`, `<Connector>EventsProduced`, `<Connector>EventsSent`)
    /// and tbgw's own.
    pub fn statistics(&self) -> Value {
        let mut out = Map::new();
        let mut produced = 0;
        for c in &self.connectors {
            let key: String = c.name.chars().filter(|ch| !ch.is_whitespace()).collect();
            produced += c.received;
            let mut put = |suffix: &str, v: Value| {
                out.insert(format!("{key}{suffix}"), v);
            };
            put("EventsProduced", c.received.into());
            put("EventsSent", c.delivered.into());
            put("MessagesConverted", c.converted.into());
            put("ConversionErrors", c.conversion_errors.into());
            put("ValuesDropped", c.dropped_values.into());
            put("EventsStored", c.stored.into());
            put("ValuesNotReported", c.not_reported.into());
            put("Connected", c.connected.into());
            put("SentToDevices", c.sent_to_devices.into());
            put("DownlinkErrors", c.downlink_errors.into());
            put("ReadErrors", c.read_errors.into());
            put("Reconnects", c.reconnects.into());
            put("BusErrors", c.bus_errors.into());
            for e in &c.extras {
                put(&e.camel_name(), e.value.into());
            }
        }
        out.insert("requestsReceived".into(), self.requests.into());
        out.insert("requestErrors".into(), self.request_errors.into());
        out.insert("eventsProduced".into(), produced.into());
        out.insert("eventsSent".into(), self.client.delivered.into());
        out.insert("storageBacklog".into(), self.store.records.into());
        out.insert("storageBytes".into(), self.store.bytes.into());
        out.insert("storageDropped".into(), self.store.dropped.into());
        out.insert("deadLetters".into(), self.store.dead_letters.into());
        out.insert("deadLettersDropped".into(), self.store.dead_letters_dropped.into());
        // A drain after an outage: how fast, how long still, how hard
        // ThingsBoard's limits hold it.
        let rate = self.client.delivery_rate;
        out.insert("deliveryRate".into(), json!((rate * 10.0).round() / 10.0));
        if self.store.records > 0 && rate > 0.0 {
            out.insert("timeToDrainSeconds".into(), ((self.store.records as f64 / rate).ceil() as u64).into());
        }
        let pacer = &self.client.pacer;
        let source = match pacer.source {
            LimitsSource::None => "none",
            LimitsSource::Config => "config",
            LimitsSource::ThingsBoard => "thingsboard",
        };
        out.insert("rateLimitsFrom".into(), source.into());
        out.insert("deliveryPacePercent".into(), ((pacer.pace * 100.0).round() as u64).into());
        out.insert("refusedPublishes".into(), pacer.refusals.into());
        if let Some(used) = pacer.gateway_use {
            out.insert("rateLimitUsePercent".into(), ((used * 100.0).round() as u64).into());
        }
        out.insert("uptimeSeconds".into(), self.uptime.as_secs().into());
        Value::Object(out)
    }

    /// Every converter, as `gateway_converters` lists them.
    pub fn converters(&self) -> Value {
        Value::Array(
            self.converters
                .iter()
                .map(|c| {
                    let i = &c.info;
                    json!({
                        "name": i.name,
                        "connector": c.connector,
                        "path": c.path,
                        "direction": i.direction.to_string(),
                        "source": i.origin,
                        "sha256": i.sha256,
                        "contractVersion": i.contract_version,
                        "generation": i.generation,
                        "calls": i.calls,
                        "messages": i.messages,
                        "messageErrors": i.message_errors,
                        "callErrors": i.call_errors,
                        "droppedValues": i.dropped_values,
                        "instances": i.instances,
                        "recycledInstances": i.recycled,
                        "swaps": i.swaps,
                        "refusedSwaps": i.refused_swaps,
                        "busyMicros": i.busy_micros,
                        "microsPerMessage": i.busy_micros.checked_div(i.messages).unwrap_or(0),
                        "timeoutMs": u64::try_from(i.limits.per_message.as_millis()).unwrap_or(u64::MAX),
                        "memoryMib": i.limits.memory_bytes / (1024 * 1024),
                    })
                })
                .collect(),
        )
    }
}
