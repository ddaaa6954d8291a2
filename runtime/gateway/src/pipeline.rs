//! The pipeline between connectors and the event store.
//!
//! ```text
//! connectors ─(UplinkSink: bounded queue per worker, by ordering key)─▶ converter workers (OS threads)
//!            ─(bounded queue)─▶ store writer (one OS thread) ─▶ EventStore::append ─▶ acks, Notify
//! ```
//!
//! - **Converter workers** (about one per core) each own their converter
//!   instances and take messages in batches: everything queued, up to
//!   `max_batch`, without waiting, so a batch grows with the load and adds no
//!   latency when the gateway is idle. In a stream of messages that come
//!   one by one (the next within `LINGER`, 2 ms, of the last batch: a CAN
//!   bus, devices publishing at a steady rate), the worker sleeps until
//!   `LINGER` after the batch's first message and takes what came meanwhile:
//!   each stage then wakes a few times per `LINGER` instead of once per
//!   message (at 10,000 CAN frames/s, 40% less CPU per frame), for at most
//!   2 ms more latency; a message after a pause goes at once. A batch is split by converter (route),
//!   each part converted in one call. Missing timestamps are filled with the
//!   receipt time. Wasm calls never run on tokio's threads. Then the
//!   route's report strategies ([`tbgw_core::report`]) drop the values
//!   that need not go on (unchanged, or within their report period); the
//!   worker keeps what it last reported of each device's keys. A device's
//!   updates of one batch become one event (a connector that sends a
//!   message per value, as OPC-UA does, stores a record per device, not
//!   per value). Devices' own
//!   requests that a converter recognised ("connect me", "send me my
//!   attributes") go to the router at once, tagged with the route's
//!   connector.
//! - **The store writer** takes every converted batch that is waiting and
//!   appends their events in one write (group commit; in a stream it
//!   lingers as the workers do, so that one write and one fsync take the
//!   batches of both workers: at 1,000 messages/s from 100 devices, ~14%
//!   less CPU per message for ~2 ms more median latency), then confirms the
//!   messages to their sources ([`tbgw_core::connector::Ack`]) and wakes the
//!   ThingsBoard client. A message that failed to convert (rejected, or a
//!   call that failed alone and again with a larger budget:
//!   [`tbgw_wasm::RETRY_BUDGET`]) is kept in the store as a dead letter
//!   ([`tbgw_store::dead_letters`]) in the same step, then confirmed:
//!   nothing is acknowledged and gone without a trace.
//! - **Order**: a connector sends all messages with the same ordering key
//!   (an MQTT topic) to the same worker; workers and the writer keep their
//!   order; so a device's data reaches the store, and ThingsBoard, in the
//!   order it arrived.
//! - **Backpressure**: every queue is bounded. When the store blocks (full
//!   under `when_full: block`), the writer waits, the workers wait, and the
//!   connectors stop taking messages from their sources.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tbgw_core::Event;
use tbgw_core::connector::{Ack, RouteId, Uplink, UplinkSink};
use tbgw_core::downlink::FromDevice;
use tbgw_core::report::{ReportFilter, ReportPolicy, Strategy};
use tbgw_store::{DeadLetter, EventStore, StoreError};
use tbgw_wasm::{UplinkConverter, Worker};
use tokio::sync::{Notify, mpsc};

/// Where devices' own requests go (the router), with their connector.
pub type RequestSender = mpsc::UnboundedSender<FromDevice>;

/// A converter and the connector it serves.
pub struct Route {
    pub connector: Arc<str>,
    /// Where the route is configured, for messages: `connectors[0].configuration.mapping[1]`.
    pub origin: String,
    pub converter: UplinkConverter,
    /// Which converted values go on to ThingsBoard; `None`: all of them.
    pub report: Option<ReportPolicy>,
    /// The downlink converter that answers the attribute requests this
    /// route's converter recognises; `None`: the device's own.
    pub answers: Option<usize>,
}

/// Sizes of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineConfig {
    pub workers: usize,
    /// Messages queued per worker.
    pub queue: usize,
    /// Messages per conversion batch, at most.
    pub max_batch: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PipelineConfig { workers: cores.clamp(1, 4), queue: 4096, max_batch: 256 }
    }
}

/// Counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Messages converted.
    pub converted: AtomicU64,
    /// Messages that failed to convert.
    pub failed: AtomicU64,
    /// Values the converter left out of converted messages.
    pub dropped_values: AtomicU64,
    /// Events stored.
    pub stored: AtomicU64,
    /// Values held back by the report strategy (unchanged, or within
    /// their report period).
    pub not_reported: AtomicU64,
}

/// A route and its counters.
pub struct RouteEntry {
    pub route: Route,
    pub stats: RouteStats,
}

/// Every route, by id ([`RouteId`]), shared by the workers, the writer and
/// the gateway. It only grows: a connector restarted with a new
/// configuration adds its new routes ([`Pipeline::add_routes`]), and its
/// old ones stay, for the messages still queued for them and for its
/// counters' totals.
#[derive(Clone, Default)]
struct RouteTable(Arc<RwLock<Vec<Arc<RouteEntry>>>>);

impl RouteTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<RouteEntry>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: RouteId) -> Option<Arc<RouteEntry>> {
        self.read().get(id).cloned()
    }

    fn push(&self, routes: Vec<Route>) -> Vec<RouteId> {
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        let first = table.len();
        table.extend(routes.into_iter().map(|route| Arc::new(RouteEntry { route, stats: RouteStats::default() })));
        (first..table.len()).collect()
    }
}

/// The running pipeline.
pub struct Pipeline {
    sink: Option<UplinkSink>,
    /// The workers' queues, to tell how much waits.
    queues: Vec<flume::Sender<Uplink>>,
    /// Set by `drain`: workers stop once their queue is empty.
    draining: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    routes: RouteTable,
}

/// What a worker hands to the writer.
struct Converted {
    events: Vec<Event>,
    /// The route of each event, in order.
    routes: Vec<RouteId>,
    /// Messages that failed to convert.
    dead: Vec<DeadLetter>,
    acks: Vec<Ack>,
}

impl Pipeline {
    pub fn start(
        routes: Vec<Route>,
        store: Arc<dyn EventStore>,
        new_data: Arc<Notify>,
        requests: RequestSender,
        config: PipelineConfig,
    ) -> std::io::Result<Pipeline> {
        let table = RouteTable::default();
        table.push(routes);
        let (to_writer, from_workers) = sync_channel::<Converted>(config.workers.max(1) * 4);
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        let draining = Arc::new(AtomicBool::new(false));
        for i in 0..config.workers.max(1) {
            let (tx, rx) = flume::bounded::<Uplink>(config.queue.max(1));
            senders.push(tx);
            let (routes, to_writer, draining, requests) =
                (table.clone(), to_writer.clone(), draining.clone(), requests.clone());
            let max_batch = config.max_batch.max(1);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("tbgw-convert-{i}"))
                    .spawn(move || work(rx, &routes, to_writer, &requests, max_batch, &draining))?,
            );
        }
        drop(to_writer);
        let writer = {
            let routes = table.clone();
            std::thread::Builder::new()
                .name("tbgw-store-writer".into())
                .spawn(move || write(from_workers, &*store, &new_data, &routes))?
        };
        Ok(Pipeline {
            sink: Some(UplinkSink::new(senders.clone())),
            queues: senders,
            draining,
            workers,
            writer: Some(writer),
            routes: table,
        })
    }

    /// Where connectors put messages.
    pub fn sink(&self) -> Option<UplinkSink> {
        self.sink.clone()
    }

    /// Every route (those of connectors since restarted included), by id.
    pub fn routes(&self) -> Vec<Arc<RouteEntry>> {
        self.routes.read().clone()
    }

    /// Add routes (a connector restarted with a new configuration); their ids.
    pub fn add_routes(&self, routes: Vec<Route>) -> Vec<RouteId> {
        self.routes.push(routes)
    }

    /// Messages waiting for a converter worker.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(flume::Sender::len).sum()
    }

    /// Close the intake and wait until everything queued is converted and
    /// stored (or the store closed). Blocks: call it off the async runtime.
    /// Connectors stop sending first (stop intake); a message one of them
    /// still puts in a queue after it emptied stays unconfirmed, and its
    /// source sends it again.
    pub fn drain(&mut self) {
        self.sink = None;
        self.draining.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// At most one log line of a kind every so often, with the count of the
/// lines held back.
struct Quiet {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Quiet {
    fn new(every: Duration) -> Self {
        Quiet { every, last: None, held: 0 }
    }

    /// `Some(held back since the last line)` when a line may go out now.
    fn ready(&mut self) -> Option<u64> {
        match self.last {
            Some(t) if t.elapsed() < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(Instant::now());
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

fn work(
    rx: flume::Receiver<Uplink>,
    routes: &RouteTable,
    to_writer: SyncSender<Converted>,
    requests: &RequestSender,
    max_batch: usize,
    draining: &AtomicBool,
) {
    let mut instances: HashMap<RouteId, Worker<tbgw_wasm::Uplink>> = HashMap::new();
    // What this worker last reported per route: a device's messages all
    // come to one worker (its ordering key), so its keys' history is here.
    let mut reported: HashMap<RouteId, ReportFilter> = HashMap::new();
    let mut quiet: HashMap<(RouteId, bool), Quiet> = HashMap::new();
    // When the last batch was done: a message that comes soon after it is
    // part of a stream.
    let mut last_done: Option<Instant> = None;
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(u) => u,
            Err(flume::RecvTimeoutError::Timeout) if draining.load(Ordering::Relaxed) => break,
            Err(flume::RecvTimeoutError::Timeout) => continue,
            Err(flume::RecvTimeoutError::Disconnected) => break,
        };
        let received = Instant::now();
        let mut batch = vec![first];
        take_queued(&rx, &mut batch, max_batch);
        // In a stream of messages that come one by one, let some gather
        // before converting: sleeping, not waiting on the queue (a waiting
        // worker is woken by every message), so that a steady flow costs a
        // few wake-ups of each stage per LINGER instead of one per message.
        // A message after a pause is converted at once.
        if batch.len() < max_batch && last_done.is_some_and(|t| received.duration_since(t) < LINGER) {
            std::thread::sleep(LINGER.saturating_sub(received.elapsed()));
            take_queued(&rx, &mut batch, max_batch);
        }
        // Per route, in arrival order.
        let mut order: Vec<RouteId> = Vec::new();
        let mut groups: HashMap<RouteId, Vec<Uplink>> = HashMap::new();
        for u in batch {
            let group = groups.entry(u.route).or_insert_with(|| {
                order.push(u.route);
                Vec::new()
            });
            group.push(u);
        }
        let mut out = Converted { events: Vec::new(), routes: Vec::new(), dead: Vec::new(), acks: Vec::new() };
        for route_id in order {
            let Some(group) = groups.remove(&route_id) else { continue };
            let Some(entry) = routes.get(route_id) else { continue };
            let (route, st) = (&entry.route, &entry.stats);
            let (raws, acks): (Vec<_>, Vec<_>) = group.into_iter().map(|u| (u.raw, u.ack)).unzip();
            let instance = instances.entry(route_id).or_insert_with(|| route.converter.worker());
            for (raw, result) in raws.iter().zip(instance.convert(&raws)) {
                match result {
                    Ok(converted) => {
                        st.converted.fetch_add(1, Ordering::Relaxed);
                        if let Some(first) = converted.dropped.first() {
                            st.dropped_values.fetch_add(converted.dropped.len() as u64, Ordering::Relaxed);
                            if let Some(held) = quiet
                                .entry((route_id, false))
                                .or_insert_with(|| Quiet::new(Duration::from_secs(60)))
                                .ready()
                            {
                                tracing::warn!(
                                    connector = %route.connector,
                                    converter = route.converter.name(),
                                    route = %route.origin,
                                    source = %raw.source,
                                    "left out `{}`: {}{}",
                                    first.key,
                                    first.reason,
                                    more(converted.dropped.len() - 1, held)
                                );
                            }
                        }
                        for request in converted.requests {
                            // Dropped only when the gateway is stopping.
                            let _ = requests.send(FromDevice {
                                connector: route.connector.clone(),
                                answered_by: route.answers,
                                request,
                            });
                        }
                        for mut update in converted.updates {
                            stamp(&mut update, raw.received_at);
                            if let Some(policy) = &route.report {
                                let filter = reported.entry(route_id).or_default();
                                let held = report(policy, filter, &mut update, raw.received_at);
                                st.not_reported.fetch_add(held, Ordering::Relaxed);
                            }
                            if !has_values(&mut update) {
                                continue;
                            }
                            out.events.push(Event::new(route.connector.to_string(), update));
                            out.routes.push(route_id);
                        }
                    }
                    Err(e) => {
                        st.failed.fetch_add(1, Ordering::Relaxed);
                        if let Some(held) =
                            quiet.entry((route_id, true)).or_insert_with(|| Quiet::new(Duration::from_secs(10))).ready()
                        {
                            tracing::warn!(
                                connector = %route.connector,
                                converter = route.converter.name(),
                                route = %route.origin,
                                source = %raw.source,
                                "message not converted, kept as a dead letter: {e}{}",
                                more(0, held)
                            );
                        }
                        let info = route.converter.info();
                        out.dead.push(DeadLetter {
                            connector: route.connector.to_string(),
                            route: route.origin.clone(),
                            converter: info.name,
                            converter_sha256: info.sha256,
                            reason: e.to_string(),
                            failed_at: tbgw_core::now_ms(),
                            raw: raw.clone(),
                        });
                    }
                }
            }
            out.acks.extend(acks.into_iter().flatten());
        }
        out.events = merge(out.events);
        if to_writer.send(out).is_err() {
            break;
        }
        last_done = Some(Instant::now());
    }
}

/// A device's updates of one batch as one event ([`Event::merge`]): one
/// record to store, read and remove, one part of a publish, where a
/// connector sends a message per value (OPC-UA, BLE, CAN, Modbus). A
/// device's updates keep their order; between devices, order does not
/// matter.
fn merge(events: Vec<Event>) -> Vec<Event> {
    if events.len() < 2 {
        return events;
    }
    let mut merged: Vec<Event> = Vec::with_capacity(events.len());
    // Each device's latest event.
    let mut latest: HashMap<String, usize> = HashMap::new();
    for e in events {
        match latest.get(&e.update.device) {
            Some(&i) if merged[i].merges_with(&e) => merged[i].merge(e),
            _ => {
                latest.insert(e.update.device.clone(), merged.len());
                merged.push(e);
            }
        }
    }
    merged
}

/// How long a converter worker lets a stream's messages gather (see `work`).
const LINGER: Duration = Duration::from_millis(2);

/// Add to `batch` what is queued, up to `max` in all, without waiting.
fn take_queued(rx: &flume::Receiver<Uplink>, batch: &mut Vec<Uplink>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(u) => batch.push(u),
            Err(_) => break,
        }
    }
}

/// Readings without a timestamp get the message's receipt time.
pub fn stamp(update: &mut tbgw_core::DeviceUpdate, received_at: i64) {
    for t in &mut update.telemetry {
        t.ts.get_or_insert(received_at);
    }
}

/// Drop readings left without values; whether anything is left to store.
pub fn has_values(update: &mut tbgw_core::DeviceUpdate) -> bool {
    update.telemetry.retain(|t| !t.values.is_empty());
    !(update.telemetry.is_empty() && update.attributes.is_empty())
}

/// Keep the values of `update` its report strategies let through; the
/// number held back.
fn report(policy: &ReportPolicy, filter: &mut ReportFilter, update: &mut tbgw_core::DeviceUpdate, now_ms: i64) -> u64 {
    let tbgw_core::DeviceUpdate { device, attributes, telemetry, .. } = update;
    let mut held = 0;
    let mut keep = |key: &str, value: &tbgw_core::Value, is_telemetry: bool| {
        let strategy = policy.strategy(Strategy::OnReceived, device, key);
        let kept = filter.keep(strategy, device, key, is_telemetry, value, now_ms);
        held += u64::from(!kept);
        kept
    };
    attributes.retain(|e| keep(&e.key, &e.value, false));
    for t in telemetry.iter_mut() {
        t.values.retain(|e| keep(&e.key, &e.value, true));
    }
    held
}

fn more(here: usize, held: u64) -> String {
    let mut s = String::new();
    if here > 0 {
        s.push_str(&format!(" (and {here} more values of this message)"));
    }
    if held > 0 {
        s.push_str(&format!(" ({held} more such messages since the last report)"));
    }
    s
}

/// How many events one append takes at most.
const MAX_APPEND: usize = 2048;

fn write(rx: Receiver<Converted>, store: &dyn EventStore, new_data: &Notify, table: &RouteTable) {
    let mut errors = Quiet::new(Duration::from_secs(60));
    // When the last write was done: as for the workers, batches that follow
    // it closely are a stream, and one write (one fsync) takes what came
    // within LINGER instead of one write per batch.
    let mut last_done: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let received = Instant::now();
        let mut group = vec![first];
        let mut n = group[0].events.len();
        let take = |group: &mut Vec<Converted>, n: &mut usize| {
            while *n < MAX_APPEND {
                match rx.try_recv() {
                    Ok(c) => {
                        *n += c.events.len();
                        group.push(c);
                    }
                    Err(_) => break,
                }
            }
        };
        take(&mut group, &mut n);
        if n < MAX_APPEND && last_done.is_some_and(|t| received.duration_since(t) < LINGER) {
            std::thread::sleep(LINGER.saturating_sub(received.elapsed()));
            take(&mut group, &mut n);
        }
        let mut events = Vec::with_capacity(n);
        let mut routes = Vec::with_capacity(n);
        let mut acks = Vec::new();
        let mut dead = Vec::new();
        for c in group {
            events.extend(c.events);
            routes.extend(c.routes);
            dead.extend(c.dead);
            acks.extend(c.acks);
        }
        if append_all(store, &events, &mut errors).is_err() || keep_dead(store, &dead, &mut errors).is_err() {
            // The store closed (the gateway is stopping): these messages are
            // not confirmed, their sources send them again at the next start.
            tracing::info!(
                "the event store closed; {} messages left unconfirmed for their sources to resend",
                acks.len()
            );
            return;
        }
        {
            let table = table.read();
            for r in routes {
                if let Some(e) = table.get(r) {
                    e.stats.stored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tracing::debug!(events = events.len(), acks = acks.len(), "stored");
        new_data.notify_one();
        for ack in acks {
            ack.confirm();
        }
        last_done = Some(Instant::now());
    }
}

/// Keep the messages that failed as dead letters, retrying on errors until
/// it works or the store is closed.
fn keep_dead(store: &dyn EventStore, dead: &[DeadLetter], errors: &mut Quiet) -> Result<(), ()> {
    if dead.is_empty() {
        return Ok(());
    }
    loop {
        match store.put_dead_letters(dead) {
            Ok(()) => return Ok(()),
            Err(StoreError::Closed) => return Err(()),
            Err(e) => {
                if let Some(held) = errors.ready() {
                    tracing::error!("keeping dead letters failed: {e}; retrying{}", more(0, held));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Append `events`, in pieces the store accepts, retrying on errors until
/// it works or the store is closed.
fn append_all(store: &dyn EventStore, events: &[Event], errors: &mut Quiet) -> Result<(), ()> {
    let mut piece = MAX_APPEND;
    let mut rest = events;
    while !rest.is_empty() {
        let take = piece.min(rest.len());
        match store.append(&rest[..take]) {
            Ok(_) => rest = &rest[take..],
            Err(StoreError::Closed) => return Err(()),
            Err(StoreError::TooLarge { .. }) if take > 1 => piece = (take / 2).max(1),
            Err(StoreError::TooLarge { bytes, max_bytes, .. }) => {
                tracing::error!(
                    "an event of {bytes} bytes is larger than the whole store ({max_bytes} bytes): dropped"
                );
                rest = &rest[1..];
            }
            Err(e) => {
                if let Some(held) = errors.ready() {
                    tracing::error!("appending to the event store failed: {e}; retrying{}", more(0, held));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbgw_core::{DeviceUpdate, Entry, Telemetry, Value};

    fn event(device: &str, ts: i64, n: i64) -> Event {
        Event::new(
            "c",
            DeviceUpdate {
                device: device.into(),
                device_type: None,
                attributes: Vec::new(),
                telemetry: vec![Telemetry { ts: Some(ts), values: vec![Entry::new("n", Value::Int(n))] }],
            },
        )
    }

    #[test]
    fn a_batch_becomes_one_event_per_device_in_its_order() {
        let mut typed = event("B", 5, 50);
        typed.update.device_type = Some("meter".into());
        let batch = vec![event("A", 1, 1), event("B", 1, 10), event("A", 2, 2), typed, event("B", 6, 60)];
        let merged = merge(batch);
        let summary: Vec<(String, u32, Vec<i64>)> = merged
            .iter()
            .map(|e| {
                let ns = e.update.telemetry.iter().flat_map(|t| &t.values).map(|v| match v.value {
                    Value::Int(n) => n,
                    _ => unreachable!(),
                });
                (e.update.device.clone(), e.updates, ns.collect())
            })
            .collect();
        // B's other profile is an event of its own; B's later update joins
        // that one (its latest), so B's data stays in order.
        assert_eq!(
            summary,
            [
                ("A".into(), 2, vec![1, 2]),
                ("B".into(), 1, vec![10]),
                ("B".into(), 1, vec![50]),
                ("B".into(), 1, vec![60])
            ]
        );
    }
}
