//! The running BLE connector: one scanner for the connector, one task per
//! device.
//!
//! The connector's task opens BlueZ (through btleplug; retried every
//! [`RETRY`] while there is no adapter), starts one continuous discovery
//! and follows the adapter's events: each event of a configured device's
//! address wakes that device's task (an advertisement changed, the link
//! dropped). Requests from ThingsBoard are handed to the device's task.
//!
//! A device's task, for a device with characteristic keys, writes or
//! reads by RPC, connects (within `timeout`), discovers its services,
//! subscribes its `notify` characteristics (again after every reconnect:
//! the Python gateway subscribes once per process), reads its `read`
//! characteristics every `pollPeriod`, and serves requests between them.
//! Each value goes to the `ble` converter as it came, with its
//! characteristic (and `method` metadata, `read` or `notify`). A lost link
//! is made again forever: `connectRetryInSeconds` apart (at least
//! [`MIN_RETRY`]), with `waitAfterConnectRetries` more after every
//! `connectRetry` attempts. A device with advertisement keys has its
//! advertisement (every manufacturer- and service-data entry, RSSI, TX
//! power, local name) sent when it changes (RSSI aside, which changes with
//! every packet) and every `pollPeriod`, whether or not it is connected.
//! Devices never wait on each other: an absent one only keeps its own task
//! waiting.

use crate::config::{BleConfig, DeviceConfig};
use btleplug::api::{
    Central, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats, Extra, RouteId, Uplink, UplinkSink};
use tbgw_core::downlink::{DeviceJob, ToConnector};
use tbgw_core::{
    BleAdvertisement, BleCharacteristic, BleRequest, DeviceRequest, DownlinkMessage, ManufacturerData, RawUplink,
    ServiceData, Source, now_ms,
};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};
use tokio_util::sync::CancellationToken;

/// How often BlueZ (or an adapter) is looked for again while there is none.
pub const RETRY: Duration = Duration::from_secs(10);

/// The least time between two connection attempts to a device (the Python
/// gateway's pause too: `connectRetryInSeconds` defaults to 0).
pub const MIN_RETRY: Duration = Duration::from_secs(1);

/// Requests a device's task holds while it is busy; more are refused.
const JOBS_PER_DEVICE: usize = 16;

/// A BLE connector: the devices, and the route of each device's uplink
/// converter.
pub struct BleConnector {
    name: String,
    config: BleConfig,
    routes: Vec<RouteId>,
}

impl BleConnector {
    /// `routes[i]` is the route id of the config's route `i`.
    pub fn new(name: impl Into<String>, config: BleConfig, routes: &[RouteId]) -> BleConnector {
        // The gateway gives one id per declared route, and every device has
        // one of them (`parse`): a miss is a bug of tbgw, not of the config.
        let routes = config
            .device_routes
            .iter()
            .map(|r| *routes.get(*r).expect("the gateway gives every declared route an id"))
            .collect();
        BleConnector { name: name.into(), config, routes }
    }
}

impl Connector for BleConnector {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(*self, ctx))
    }
}

/// What every device task shares.
struct Shared {
    connector: String,
    sink: UplinkSink,
    stats: Arc<ConnectorStats>,
    stop: CancellationToken,
    adapter: Adapter,
    /// Configured devices the scan has seen.
    seen: Arc<Extra>,
    /// Devices connected now.
    connected: Arc<Extra>,
    /// Notifications received.
    notifications: Arc<Extra>,
    /// Advertisements sent.
    advertisements: Arc<Extra>,
}

/// What wakes a device's task besides its requests.
#[derive(Default)]
struct Wake {
    /// An event of the device's address: it was seen, advertised, changed.
    seen: Notify,
    /// Its link dropped.
    disconnected: Notify,
}

fn refuse(stats: &ConnectorStats, job: ToConnector, why: &str) {
    match job {
        ToConnector::Device(job) => refuse_job(stats, job, why),
        ToConnector::ConnectorRpc { method, reply, .. } => {
            let _ =
                reply.send(Err(format!("the ble connector has no connector RPC `{method}`; send RPCs to its devices")));
        }
    }
}

fn refuse_job(stats: &ConnectorStats, job: DeviceJob, why: &str) {
    stats.downlink_errors.fetch_add(1, Ordering::Relaxed);
    let _ = job.reply.send(Err(why.to_owned()));
}

/// BlueZ's first adapter, scanning.
async fn open() -> Result<Adapter, String> {
    let manager = Manager::new().await.map_err(|e| format!("cannot reach BlueZ on the system D-Bus: {e}"))?;
    let adapter = manager
        .adapters()
        .await
        .map_err(|e| format!("cannot list BlueZ's adapters: {e}"))?
        .into_iter()
        .next()
        .ok_or("BlueZ has no Bluetooth adapter")?;
    adapter.start_scan(ScanFilter::default()).await.map_err(|e| format!("cannot start scanning: {e}"))?;
    Ok(adapter)
}

async fn run(conn: BleConnector, mut ctx: ConnectorContext) {
    let c = &conn.config;
    // The devices are known without their saying: connect them now, so
    // that requests reach them before they have sent anything.
    for d in &c.devices {
        ctx.downlink
            .requests
            .send(DeviceRequest::Connect { device: d.name.clone(), device_type: d.device_type.clone() });
    }
    // BlueZ opened, followed until its events end (bluetoothd restarted),
    // and opened again; until the connector stops.
    while let Some(adapter) = open_retrying(&conn, &mut ctx).await {
        ctx.stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(connector = %conn.name, "scanning with {}", adapter.adapter_info().await.unwrap_or_default());
        let stopped = scan(&conn, &mut ctx, adapter).await;
        ctx.stats.connected.store(false, Ordering::Relaxed);
        if stopped {
            break;
        }
    }
    ctx.stats.connected.store(false, Ordering::Relaxed);
    // Stopping: answer what still comes until the end.
    loop {
        tokio::select! {
            _ = ctx.finish.cancelled() => break,
            Some(job) = ctx.downlink.jobs.recv() => refuse(&ctx.stats, job, "the connector is stopping"),
        }
    }
    tracing::info!(connector = %conn.name, "stopped");
}

/// BlueZ's adapter, tried every [`RETRY`] (requests answered meanwhile);
/// `None` once the connector stops.
async fn open_retrying(conn: &BleConnector, ctx: &mut ConnectorContext) -> Option<Adapter> {
    let mut last_error = String::new();
    loop {
        tokio::select! {
            r = open() => match r {
                Ok(a) => return Some(a),
                Err(why) => {
                    if why != last_error {
                        tracing::warn!(connector = %conn.name, "{why}; trying again every {RETRY:?}");
                        last_error = why;
                    }
                }
            },
            _ = ctx.stop_intake.cancelled() => return None,
        }
        let wake = Instant::now() + RETRY;
        let why = format!("BlueZ is not available ({last_error})");
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                _ = ctx.stop_intake.cancelled() => return None,
                Some(job) = ctx.downlink.jobs.recv() => refuse(&ctx.stats, job, &why),
            }
        }
    }
}

/// Follow the adapter's events and run the devices' tasks until the
/// connector stops (`true`) or BlueZ's events end (`false`).
async fn scan(conn: &BleConnector, ctx: &mut ConnectorContext, adapter: Adapter) -> bool {
    let c = &conn.config;
    let mut events = match adapter.events().await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(connector = %conn.name, "cannot follow BlueZ's events: {e}");
            return false;
        }
    };
    let shared = Arc::new(Shared {
        connector: conn.name.clone(),
        sink: ctx.sink.clone(),
        stats: ctx.stats.clone(),
        stop: ctx.stop_intake.child_token(),
        adapter: adapter.clone(),
        seen: ctx.stats.extra("devices_seen", "Configured BLE devices the scan has seen", true),
        connected: ctx.stats.extra("devices_connected", "BLE devices connected now", true),
        notifications: ctx.stats.extra("notifications", "GATT notifications received", false),
        advertisements: ctx.stats.extra("advertisements", "BLE advertisements sent to the converter", false),
    });
    // Levels of this scan's devices (a scan after BlueZ came back starts over).
    shared.seen.set(0);
    shared.connected.set(0);
    let mut tasks = tokio::task::JoinSet::new();
    let mut wakes = Vec::new();
    let mut jobs = HashMap::new();
    for (d, route) in c.devices.iter().zip(&conn.routes) {
        let wake = Arc::new(Wake::default());
        let (tx, rx) = mpsc::channel(JOBS_PER_DEVICE);
        jobs.insert(d.name.clone(), tx);
        wakes.push(wake.clone());
        tasks.spawn(device_task(shared.clone(), d.clone(), *route, rx, wake));
    }
    // Peripheral ids seen, and the device each is (if any).
    let mut known: HashMap<PeripheralId, Option<usize>> = HashMap::new();
    let scan_log = sleep(c.first_scan);
    tokio::pin!(scan_log);
    let mut logged = c.scan_log.is_none();
    let stopped = loop {
        tokio::select! {
            _ = ctx.stop_intake.cancelled() => break true,
            event = events.next() => {
                let Some(event) = event else {
                    tracing::error!(connector = %conn.name, "BlueZ's event stream ended: opening it again");
                    break false;
                };
                let (id, lost) = match event {
                    CentralEvent::DeviceDisconnected(id) => (id, true),
                    CentralEvent::DeviceDiscovered(id)
                    | CentralEvent::DeviceUpdated(id)
                    | CentralEvent::ManufacturerDataAdvertisement { id, .. }
                    | CentralEvent::ServiceDataAdvertisement { id, .. }
                    | CentralEvent::ServicesAdvertisement { id, .. }
                    | CentralEvent::RssiUpdate { id, .. } => (id, false),
                    _ => continue,
                };
                let device = match known.get(&id) {
                    Some(d) => *d,
                    None => {
                        let Ok(p) = adapter.peripheral(&id).await else { continue };
                        let address = p.address().to_string();
                        let d = c.devices.iter().position(|d| d.address.eq_ignore_ascii_case(&address));
                        known.insert(id, d);
                        d
                    }
                };
                if let Some(d) = device {
                    let w = &wakes[d];
                    if lost { w.disconnected.notify_one() } else { w.seen.notify_one() }
                }
            }
            Some(job) = ctx.downlink.jobs.recv() => match job {
                ToConnector::Device(job) => match jobs.get(&job.device) {
                    Some(tx) => {
                        if let Err(e) = tx.try_send(job) {
                            let (why, job) = match e {
                                mpsc::error::TrySendError::Full(j) => ("busy: too many requests are waiting", j),
                                mpsc::error::TrySendError::Closed(j) => ("the device's task has ended", j),
                            };
                            let why = format!("`{}` is {why}", job.device);
                            refuse_job(&ctx.stats, job, &why);
                        }
                    }
                    None => {
                        let why = format!("no device of this connector is named `{}`", job.device);
                        refuse_job(&ctx.stats, job, &why);
                    }
                },
                other => refuse(&ctx.stats, other, ""),
            },
            _ = &mut scan_log, if !logged => {
                logged = true;
                log_scan(conn, &adapter).await;
            }
        }
    };
    shared.stop.cancel();
    let _ = adapter.stop_scan().await;
    // Each task disconnects its device; answer requests meanwhile.
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            Some(job) = ctx.downlink.jobs.recv() => {
                refuse(&ctx.stats, job, if stopped { "the connector is stopping" } else { "BlueZ is being opened again" })
            }
        }
    }
    stopped
}

/// `showMap` with `scanner.deviceName`: what the first scan found.
async fn log_scan(conn: &BleConnector, adapter: &Adapter) {
    let want = conn.config.scan_log.as_ref().and_then(|s| s.name.as_deref());
    let mut found = Vec::new();
    for p in adapter.peripherals().await.unwrap_or_default() {
        let name = p.properties().await.ok().flatten().and_then(|pr| pr.local_name);
        if want.is_none_or(|w| name.as_deref() == Some(w)) {
            found.push(format!("{} {}", p.address(), name.as_deref().unwrap_or("(no name)")));
        }
    }
    if found.is_empty() {
        tracing::info!(connector = %conn.name, "the scan found no device{}", want.map(|w| format!(" named `{w}`")).unwrap_or_default());
    } else {
        tracing::info!(connector = %conn.name, "the scan found: {}", found.join(", "));
    }
}

/// A device's peripheral, once BlueZ has seen its address.
async fn find(adapter: &Adapter, address: &str) -> Option<Peripheral> {
    adapter.peripherals().await.ok()?.into_iter().find(|p| p.address().to_string().eq_ignore_ascii_case(address))
}

/// What BlueZ knows of a peripheral's advertisement, in a stable order.
async fn advertisement(p: &Peripheral, address: &str) -> Option<BleAdvertisement> {
    let props = p.properties().await.ok()??;
    let mut manufacturer_data: Vec<ManufacturerData> =
        props.manufacturer_data.into_iter().map(|(company, data)| ManufacturerData { company, data }).collect();
    manufacturer_data.sort_by_key(|m| m.company);
    let mut service_data: Vec<ServiceData> =
        props.service_data.into_iter().map(|(uuid, data)| ServiceData { uuid: uuid.to_string(), data }).collect();
    service_data.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    let mut services: Vec<String> = props.services.iter().map(ToString::to_string).collect();
    services.sort();
    Some(BleAdvertisement {
        address: address.to_owned(),
        rssi: props.rssi,
        tx_power: props.tx_power_level,
        local_name: props.local_name,
        manufacturer_data,
        service_data,
        services,
    })
}

/// How a connection ended.
enum End {
    Stopped,
    Lost(String),
}

/// One device's task.
struct Device {
    shared: Arc<Shared>,
    conf: DeviceConfig,
    /// Its uplink converter's route.
    route: RouteId,
    jobs: mpsc::Receiver<DeviceJob>,
    wake: Arc<Wake>,
    /// The last advertisement sent, RSSI left out.
    last_advertisement: Option<BleAdvertisement>,
    peripheral: Option<Peripheral>,
}

async fn device_task(
    shared: Arc<Shared>,
    conf: DeviceConfig,
    route: RouteId,
    jobs: mpsc::Receiver<DeviceJob>,
    wake: Arc<Wake>,
) {
    let mut d = Device { shared, conf, route, jobs, wake, last_advertisement: None, peripheral: None };
    if d.conf.connects {
        d.connect_forever().await;
    } else {
        d.listen().await;
    }
}

impl Device {
    fn poll_period(&self) -> Duration {
        Duration::from_millis(self.conf.connection.poll_ms)
    }

    fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.conf.connection.timeout_ms)
    }

    /// Hand a message to the converter.
    async fn emit(&self, source: Source, payload: Vec<u8>, metadata: Vec<(String, String)>) {
        self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
        let raw = RawUplink { source, device: Some(self.conf.name.clone()), payload, metadata, received_at: now_ms() };
        let uplink = Uplink { route: self.route, raw, ack: None };
        // Closed only while the gateway stops.
        let _ = self.shared.sink.send(&self.conf.address, uplink).await;
    }

    /// The peripheral, looked up once BlueZ has seen the device.
    async fn peripheral(&mut self) -> Option<Peripheral> {
        if self.peripheral.is_none() {
            self.peripheral = find(&self.shared.adapter, &self.conf.address).await;
            if self.peripheral.is_some() {
                self.shared.seen.add(1);
            }
        }
        self.peripheral.clone()
    }

    /// Send the advertisement if the device has advertisement keys and it
    /// changed (or `always`, at the poll period).
    async fn advertise(&mut self, always: bool) {
        if !self.conf.advertises {
            return;
        }
        let Some(p) = self.peripheral().await else { return };
        let Some(adv) = advertisement(&p, &self.conf.address).await else { return };
        let without_rssi = BleAdvertisement { rssi: None, ..adv.clone() };
        if !always && self.last_advertisement.as_ref() == Some(&without_rssi) {
            return;
        }
        self.last_advertisement = Some(without_rssi);
        self.shared.advertisements.add(1);
        self.emit(Source::Advertisement(adv), Vec::new(), Vec::new()).await;
    }

    /// An advertisement-only device: listened to, never connected.
    async fn listen(&mut self) {
        let mut tick = tokio::time::interval(self.poll_period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = self.wake.seen.notified() => self.advertise(false).await,
                _ = tick.tick() => self.advertise(true).await,
                Some(job) = self.jobs.recv() => {
                    let why = format!("`{}` is not connected to: it has no characteristic keys, writes or RPCs that read or write", self.conf.name);
                    let p = self.peripheral().await;
                    self.serve(p.as_ref(), &HashMap::new(), job, &why).await;
                }
            }
        }
    }

    /// Connect, serve, and connect again, until the connector stops.
    async fn connect_forever(&mut self) {
        let c = self.conf.connection;
        let mut attempts: u64 = 0;
        let mut ever = false;
        // Advertisements every poll period while not connected (a session
        // sends them at its polls).
        let mut tick = tokio::time::interval(self.poll_period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if self.shared.stop.is_cancelled() {
                return;
            }
            let why = match self.peripheral().await {
                None => format!("`{}` ({}) has not been seen by the scan yet", self.conf.name, self.conf.address),
                Some(p) => match self.connect(&p).await {
                    Ok(chars) => {
                        attempts = 0;
                        if ever {
                            self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever = true;
                        self.shared.connected.add(1);
                        let end = self.session(&p, chars).await;
                        self.shared.connected.sub(1);
                        match end {
                            End::Stopped => {
                                let _ = timeout(Duration::from_secs(2), p.disconnect()).await;
                                return;
                            }
                            End::Lost(why) => {
                                tracing::warn!(connector = %self.shared.connector, device = %self.conf.name, "lost: {why}");
                                // BlueZ may still hold the link half-open.
                                let _ = timeout(Duration::from_secs(2), p.disconnect()).await;
                                format!("`{}` lost its connection ({why}); connecting again", self.conf.name)
                            }
                        }
                    }
                    Err(why) => {
                        attempts += 1;
                        tracing::warn!(connector = %self.shared.connector, device = %self.conf.name, attempt = attempts, "cannot connect: {why}");
                        format!("`{}` is not connected ({why})", self.conf.name)
                    }
                },
            };
            let mut wait = Duration::from_millis(c.retry_wait_ms).max(MIN_RETRY);
            if c.retries > 0 && attempts > 0 && attempts.is_multiple_of(c.retries) {
                wait += Duration::from_millis(c.wait_after_retries_ms);
            }
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = self.shared.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = self.wake.seen.notified() => {
                        self.advertise(false).await;
                        // Seen for the first time: try now.
                        if self.peripheral.is_none() && self.peripheral().await.is_some() {
                            break;
                        }
                    }
                    _ = tick.tick() => self.advertise(true).await,
                    Some(job) = self.jobs.recv() => {
                        let p = self.peripheral.clone();
                        self.serve(p.as_ref(), &HashMap::new(), job, &why).await;
                    }
                }
            }
        }
    }

    /// Connect and find the configured characteristics.
    async fn connect(&self, p: &Peripheral) -> Result<HashMap<String, Characteristic>, String> {
        let t = self.op_timeout();
        tracing::info!(connector = %self.shared.connector, device = %self.conf.name, "connecting to {}", self.conf.address);
        match timeout(t, p.connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no connection within {t:?} (timeout)")),
        }
        match timeout(t, p.discover_services()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("discovering its services: {e}")),
            Err(_) => return Err(format!("its services were not discovered within {t:?} (timeout)")),
        }
        let mut chars = HashMap::new();
        for ch in p.characteristics() {
            chars.entry(ch.uuid.to_string()).or_insert(ch);
        }
        if self.conf.show_map {
            let mut map: Vec<String> = p
                .characteristics()
                .iter()
                .map(|c| format!("service {} characteristic {} {:?}", c.service_uuid, c.uuid, c.properties))
                .collect();
            map.sort();
            tracing::info!(connector = %self.shared.connector, device = %self.conf.name, "map:\n{}", map.join("\n"));
        }
        for uuid in self.conf.reads.iter().chain(&self.conf.notifies) {
            if !chars.contains_key(uuid) {
                tracing::warn!(connector = %self.shared.connector, device = %self.conf.name, "has no characteristic {uuid}: its keys get no value");
            }
        }
        tracing::info!(connector = %self.shared.connector, device = %self.conf.name, "connected ({} characteristics)", chars.len());
        Ok(chars)
    }

    /// One connection: notifications, polls, advertisements and requests
    /// until the link is lost or the connector stops.
    async fn session(&mut self, p: &Peripheral, chars: HashMap<String, Characteristic>) -> End {
        let t = self.op_timeout();
        // The stream before the subscriptions: no first value is missed.
        let mut notes = match p.notifications().await {
            Ok(n) => n,
            Err(e) => return End::Lost(format!("cannot follow its notifications: {e}")),
        };
        for uuid in &self.conf.notifies {
            let Some(ch) = chars.get(uuid) else { continue };
            match timeout(t, p.subscribe(ch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(connector = %self.shared.connector, device = %self.conf.name, "cannot subscribe to {uuid}: {e}")
                }
                Err(_) => return End::Lost(format!("subscribing to {uuid} took more than {t:?}")),
            }
        }
        let mut tick = tokio::time::interval(self.poll_period());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return End::Stopped,
                n = notes.next() => match n {
                    Some(n) => self.notified(n).await,
                    None => return End::Lost("its notifications ended".to_owned()),
                },
                _ = tick.tick() => {
                    if let Err(why) = self.poll(p, &chars).await {
                        return End::Lost(why);
                    }
                    self.advertise(true).await;
                }
                _ = self.wake.disconnected.notified() => {
                    if !p.is_connected().await.unwrap_or(false) {
                        return End::Lost("the device disconnected".to_owned());
                    }
                }
                _ = self.wake.seen.notified() => self.advertise(false).await,
                Some(job) = self.jobs.recv() => self.serve(Some(p), &chars, job, "").await,
            }
        }
    }

    async fn notified(&self, n: ValueNotification) {
        self.shared.notifications.add(1);
        let source = Source::Characteristic(BleCharacteristic {
            address: self.conf.address.clone(),
            service: n.service_uuid.to_string(),
            characteristic: n.uuid.to_string(),
        });
        self.emit(source, n.value, vec![(tbgw_ble_items::METHOD_METADATA.into(), "notify".into())]).await;
    }

    /// Read every `read` characteristic; an error ends the session only if
    /// the link is gone.
    async fn poll(&self, p: &Peripheral, chars: &HashMap<String, Characteristic>) -> Result<(), String> {
        let t = self.op_timeout();
        for uuid in &self.conf.reads {
            let Some(ch) = chars.get(uuid) else { continue };
            match timeout(t, p.read(ch)).await {
                Ok(Ok(value)) => {
                    let source = Source::Characteristic(BleCharacteristic {
                        address: self.conf.address.clone(),
                        service: ch.service_uuid.to_string(),
                        characteristic: uuid.clone(),
                    });
                    self.emit(source, value, vec![(tbgw_ble_items::METHOD_METADATA.into(), "read".into())]).await;
                }
                Ok(Err(e)) => {
                    if !p.is_connected().await.unwrap_or(false) {
                        return Err(format!("reading {uuid}: {e}"));
                    }
                    self.shared.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(connector = %self.shared.connector, device = %self.conf.name, "reading {uuid}: {e}");
                }
                Err(_) => return Err(format!("reading {uuid} took more than {t:?}")),
            }
        }
        Ok(())
    }

    /// Do a request's messages in order: answered with what the reads and
    /// scans returned, or with the first failure. Without a connection
    /// (`why` says why), only a scan can be served.
    async fn serve(
        &mut self,
        p: Option<&Peripheral>,
        chars: &HashMap<String, Characteristic>,
        job: DeviceJob,
        why: &str,
    ) {
        let mut answers = Vec::new();
        let connected = why.is_empty();
        for m in &job.messages {
            let r = match m {
                DownlinkMessage::Ble(BleRequest::Scan) => match p {
                    Some(p) => match advertisement(p, &self.conf.address).await {
                        Some(adv) => Ok(Some(RawUplink {
                            source: Source::Advertisement(adv),
                            device: Some(self.conf.name.clone()),
                            payload: Vec::new(),
                            metadata: Vec::new(),
                            received_at: now_ms(),
                        })),
                        None => Err(format!("BlueZ has no advertisement of `{}`", self.conf.name)),
                    },
                    None => Err(format!("`{}` ({}) has not been seen by the scan", self.conf.name, self.conf.address)),
                },
                DownlinkMessage::Ble(_) if !connected => Err(why.to_owned()),
                DownlinkMessage::Ble(req) => match p {
                    Some(p) => self.request(p, chars, req).await,
                    None => Err(why.to_owned()),
                },
                other => Err(format!("the ble connector sends BLE requests; this is a {} message", other.kind())),
            };
            match r {
                Ok(answer) => {
                    self.shared.stats.sent_to_devices.fetch_add(1, Ordering::Relaxed);
                    answers.extend(answer);
                }
                Err(why) => {
                    tracing::warn!(connector = %self.shared.connector, device = %self.conf.name, "{}: {why}", job.kind);
                    return refuse_job(&self.shared.stats, job, &why);
                }
            }
        }
        let _ = job.reply.send(Ok(answers));
    }

    async fn request(
        &self,
        p: &Peripheral,
        chars: &HashMap<String, Characteristic>,
        req: &BleRequest,
    ) -> Result<Option<RawUplink>, String> {
        let t = self.op_timeout();
        let find = |text: &str| {
            let uuid = tbgw_ble_items::uuid(text)?;
            chars.get(&uuid).ok_or_else(|| format!("`{}` has no characteristic {uuid}", self.conf.name))
        };
        match req {
            BleRequest::Read(uuid) => {
                let ch = find(uuid)?;
                let value = match timeout(t, p.read(ch)).await {
                    Ok(r) => r.map_err(|e| format!("reading {}: {e}", ch.uuid))?,
                    Err(_) => return Err(format!("reading {} took more than {t:?}", ch.uuid)),
                };
                Ok(Some(RawUplink {
                    source: Source::Characteristic(BleCharacteristic {
                        address: self.conf.address.clone(),
                        service: ch.service_uuid.to_string(),
                        characteristic: ch.uuid.to_string(),
                    }),
                    device: Some(self.conf.name.clone()),
                    payload: value,
                    metadata: vec![(tbgw_ble_items::METHOD_METADATA.into(), "read".into())],
                    received_at: now_ms(),
                }))
            }
            BleRequest::Write { characteristic, payload, with_response } => {
                let ch = find(characteristic)?;
                let kind = if *with_response { WriteType::WithResponse } else { WriteType::WithoutResponse };
                match timeout(t, p.write(ch, payload, kind)).await {
                    Ok(r) => r.map_err(|e| format!("writing {}: {e}", ch.uuid))?,
                    Err(_) => return Err(format!("writing {} took more than {t:?}", ch.uuid)),
                }
                Ok(None)
            }
            // Served without a connection, before.
            BleRequest::Scan => Err("a scan is not a GATT request".to_owned()),
        }
    }
}
