//! The gateway service: everything wired from the configuration, run until
//! told to stop, stopped in an order that loses nothing.
//!
//! Start: open the event store; load every mapping's converter and every
//! connector's downlink converter (all of them are checked before anything
//! runs); start the pipeline, the ThingsBoard client, the router of
//! ThingsBoard's requests ([`crate::router`]) and the connectors; report
//! statistics, and answer the router's questions about them.
//!
//! Stop (SIGINT, SIGTERM, or the caller's token):
//! 1. connectors stop taking messages (their brokers keep what was not
//!    acknowledged);
//! 2. the pipeline converts and stores what it holds, and confirms those
//!    messages;
//! 3. connectors send the last acknowledgements and disconnect;
//! 4. the ThingsBoard client waits for the PUBACKs of its publishes in
//!    flight and disconnects;
//! 5. the store is flushed and closed. Undelivered events stay in a `fjall`
//!    store for the next start (a `memory` store loses them).
//!
//! `gateway_restart` stops the same way and tells the caller to start again
//! ([`Stopped::Restart`]).

use crate::config::{ConnectorConfig, ConnectorKind, GatewayConfig, StorageKind};
use crate::converters;
use crate::pipeline::{Pipeline, Route};
use crate::router::{Port, Router};
use crate::watch::Watched;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tbgw_connector_modbus::ModbusConnector;
use tbgw_connector_mqtt::MqttConnector;
use tbgw_connector_mqtt::config::{ConverterRef, MappingConfig};
use tbgw_core::Direction;
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats};
use tbgw_core::downlink::{DeviceRequests, DownlinkLink};
use tbgw_core::report::{ReportPolicy, Strategy};
use tbgw_store::{EventStore, FjallStore, MemoryStore, StoreError};
use tbgw_wasm::{
    ComponentSource, ConverterInfo, ConverterSpec, DownlinkConverter, Limits, LoadError, Runtime, RuntimeError,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{path}: {error}")]
    Converter { path: String, error: LoadError },
    #[error("{path}: {error}")]
    UnknownConverter { path: String, error: converters::UnknownConverter },
    #[error(transparent)]
    ThingsBoard(#[from] tbgw_thingsboard::ClientError),
    #[error("cannot start the pipeline threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// A connector's configuration turned into what runs.
struct Plan {
    name: String,
    kind: &'static str,
    connector: Box<dyn Connector>,
}

/// How the gateway stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Told to stop (a signal, the caller's token).
    Normally,
    /// ThingsBoard asked for a restart (`gateway_restart`): start again.
    Restart,
}

/// What the router asks the service (which holds the counters).
pub enum ServiceQuery {
    /// The statistics, as published.
    Stats(oneshot::Sender<serde_json::Value>),
    /// The uplink converters, as `gateway_converters` lists them.
    Converters(oneshot::Sender<serde_json::Value>),
}

/// One converter for `gateway_converters`.
pub fn converter_json(info: &ConverterInfo, connector: &str) -> serde_json::Value {
    serde_json::json!({
        "name": info.name,
        "connector": connector,
        "direction": info.direction.to_string(),
        "source": info.origin,
        "sha256": info.sha256,
        "contractVersion": info.contract_version,
        "generation": info.generation,
        "calls": info.calls,
        "messages": info.messages,
        "messageErrors": info.message_errors,
        "callErrors": info.call_errors,
        "droppedValues": info.dropped_values,
        "instances": info.instances,
        "swaps": info.swaps,
        "refusedSwaps": info.refused_swaps,
    })
}

/// Load a connector's downlink converter, if it has one: a custom component
/// (`downlinkConverter`), else the built-in `json` one when its
/// `requestsMapping` has `attributeUpdates` or `serverSideRpc` entries.
fn load_downlink(connector: &ConnectorConfig, runtime: &Runtime) -> Result<Option<DownlinkConverter>, ServiceError> {
    let m = match &connector.kind {
        ConnectorKind::Mqtt(m) => m,
        ConnectorKind::Modbus(m) => {
            // Every slave in one `modbus` converter: a request goes to its device's slave.
            if !m.has_requests() {
                return Ok(None);
            }
            let path = format!("{}.master.slaves", connector.path);
            let component = converters::resolve("modbus", Direction::Downlink, None)
                .map_err(|error| ServiceError::UnknownConverter { path: path.clone(), error })?;
            let spec = ConverterSpec { component, config: m.converter_config(), limits: Limits::default() };
            let converter = runtime
                .downlink(&format!("{}/modbus (downlink)", connector.name), spec)
                .map_err(|error| ServiceError::Converter { path, error })?;
            return Ok(Some(converter));
        }
    };
    let (path, component, config, name) = match (&m.downlink_converter, &m.requests_mapping) {
        (Some(ConverterRef::Custom { path: file, config }), _) => (
            format!("{}.downlinkConverter", connector.path),
            ComponentSource::File(file.clone()),
            config.clone(),
            file.display().to_string(),
        ),
        (Some(ConverterRef::Builtin { .. }), _) | (None, None) => return Ok(None),
        (None, Some(mapping)) => {
            let has = |k: &str| mapping.get(k).and_then(|v| v.as_array()).is_some_and(|a| !a.is_empty());
            if !has("attributeUpdates") && !has("serverSideRpc") && !has("attributeRequests") {
                return Ok(None);
            }
            let path = format!("{}.requestsMapping", connector.path);
            let source = converters::resolve("json", Direction::Downlink, None)
                .map_err(|error| ServiceError::UnknownConverter { path: path.clone(), error })?;
            (path, source, mapping.to_string(), "json".to_owned())
        }
    };
    let spec = ConverterSpec { component, config, limits: Limits::default() };
    let converter = runtime
        .downlink(&format!("{}/{} (downlink)", connector.name, name), spec)
        .map_err(|error| ServiceError::Converter { path, error })?;
    Ok(Some(converter))
}

/// Load the converter of one route (an MQTT mapping, a Modbus slave).
fn load_route(connector: &ConnectorConfig, route: &RouteSpec, runtime: &Runtime) -> Result<Route, ServiceError> {
    let path = tbgw_core::config::join(&connector.path, &route.path);
    let (component, converter_config, name) = match &route.converter {
        ConverterRef::Builtin { name, config } => {
            let source = converters::resolve(name, Direction::Uplink, None)
                .map_err(|error| ServiceError::UnknownConverter { path: path.clone(), error })?;
            (source, config.clone(), name.clone())
        }
        ConverterRef::Custom { path: file, config } => {
            (ComponentSource::File(file.clone()), config.clone(), file.display().to_string())
        }
    };
    let spec = ConverterSpec { component, config: converter_config, limits: Limits::default() };
    let name = if route.path.is_empty() { format!("{name} (requests)") } else { name };
    let converter = runtime
        .uplink(&format!("{}/{}", connector.name, name), spec)
        .map_err(|error| ServiceError::Converter { path: path.clone(), error })?;
    Ok(Route { connector: connector.name.as_str().into(), origin: path, converter, report: route.report.clone() })
}

/// Where a connector's uplink converter is configured.
struct RouteSpec {
    /// In the connector's configuration: `mapping[2].converter`.
    path: String,
    converter: ConverterRef,
    /// Its values' report strategies, the gateway's included; `None`: every
    /// value is reported.
    report: Option<ReportPolicy>,
}

/// A connector's uplink routes: one per MQTT mapping; one for all the
/// slaves of a Modbus connector (the built-in `modbus` converter, which
/// tells them apart by the block's `device` metadata: one instance per
/// worker however many slaves).
fn route_specs(c: &ConnectorConfig, main: Strategy) -> Vec<RouteSpec> {
    // The gateway's strategy where the route says none; nothing to filter
    // when everything is reported.
    let effective = |p: &ReportPolicy| {
        let mut p = p.clone();
        p.route = Some(p.route.unwrap_or(main));
        (!p.reports_everything(Strategy::OnReceived)).then_some(p)
    };
    match &c.kind {
        ConnectorKind::Mqtt(m) => {
            let mut routes: Vec<RouteSpec> = m
                .mappings
                .iter()
                .map(|m: &MappingConfig| RouteSpec {
                    path: m.converter_path.clone(),
                    converter: m.converter.clone(),
                    report: effective(&m.report),
                })
                .collect();
            // Devices' own requests: recognised by the `json` converter.
            if let (false, Some(mapping)) = (m.request_filters.is_empty(), &m.requests_mapping) {
                routes.push(RouteSpec {
                    path: String::new(),
                    converter: ConverterRef::Builtin {
                        name: "json".into(),
                        config: serde_json::json!({ "requestsMapping": mapping }).to_string(),
                    },
                    report: None,
                });
            }
            routes
        }
        ConnectorKind::Modbus(m) => vec![RouteSpec {
            path: "master.slaves".into(),
            converter: ConverterRef::Builtin { name: "modbus".into(), config: m.converter_config() },
            report: effective(&m.report),
        }],
    }
}

/// Load every converter the configuration names: one route per mapping,
/// and the route ids of each connector's mappings.
pub fn load_routes(config: &GatewayConfig, runtime: &Runtime) -> Result<(Vec<Route>, Vec<Vec<usize>>), ServiceError> {
    let mut routes = Vec::new();
    let mut per_connector = Vec::new();
    for c in &config.connectors {
        let mut ids = Vec::new();
        for r in route_specs(c, config.report_strategy) {
            ids.push(routes.len());
            routes.push(load_route(c, &r, runtime)?);
        }
        per_connector.push(ids);
    }
    Ok((routes, per_connector))
}

/// Load every converter, reporting every one that fails.
pub fn check_converters(config: &GatewayConfig, runtime: &Runtime) -> (usize, Vec<ServiceError>) {
    let (mut ok, mut errors) = (0, Vec::new());
    for c in &config.connectors {
        match load_downlink(c, runtime) {
            Ok(Some(_)) => ok += 1,
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        for r in route_specs(c, config.report_strategy) {
            match load_route(c, &r, runtime) {
                Ok(_) => ok += 1,
                Err(e) => errors.push(e),
            }
        }
    }
    (ok, errors)
}

/// Where compiled converters go: the configured directory, else beside the
/// event store, else the user's cache.
fn cache_dir(config: &GatewayConfig) -> Option<std::path::PathBuf> {
    config.cache_dir.clone().or_else(|| match &config.storage.kind {
        StorageKind::Fjall { path, .. } => Some(path.join("converter-cache")),
        StorageKind::Memory => converters::default_cache_dir(),
    })
}

/// Run the gateway until `shutdown` is cancelled (or ThingsBoard asks for a
/// restart), then stop in order.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> Result<Stopped, ServiceError> {
    let started = Instant::now();
    // The first line of every run (the end-to-end tests count runs by it).
    tracing::info!("tbgw {} starting", env!("CARGO_PKG_VERSION"));
    let store: Arc<dyn EventStore> = match &config.storage.kind {
        StorageKind::Memory => Arc::new(MemoryStore::new(config.storage.limits)),
        StorageKind::Fjall { path, durability } => {
            let (path, limits, durability) = (path.clone(), config.storage.limits, *durability);
            tokio::task::spawn_blocking(move || FjallStore::open(&path, limits, durability).map(Arc::new))
                .await
                .map_err(|e| StoreError::Db(e.to_string()))??
        }
    };
    let runtime = converters::runtime(cache_dir(&config))?;
    let (routes, route_ids, downlinks) = {
        let (config, runtime) = (config.clone(), runtime.clone());
        tokio::task::spawn_blocking(move || {
            let (routes, ids) = load_routes(&config, &runtime)?;
            let downlinks =
                config.connectors.iter().map(|c| load_downlink(c, &runtime)).collect::<Result<Vec<_>, _>>()?;
            Ok::<_, ServiceError>((routes, ids, downlinks))
        })
        .await
        .map_err(|e| ServiceError::Threads(std::io::Error::other(e.to_string())))??
    };
    let watched: Vec<Watched> = routes
        .iter()
        .map(|r| Watched::Uplink(r.converter.clone()))
        .chain(downlinks.iter().flatten().map(|c| Watched::Downlink(c.clone())))
        .collect();
    let new_data = Arc::new(Notify::new());
    // Devices' own requests, from the converters and from connectors, to the router.
    let (device_requests_tx, device_requests) = mpsc::unbounded_channel();
    let mut pipeline =
        Pipeline::start(routes, store.clone(), new_data.clone(), device_requests_tx.clone(), config.pipeline)
            .map_err(ServiceError::Threads)?;
    let client_stop = CancellationToken::new();
    let mut client =
        tbgw_thingsboard::spawn(config.thingsboard.clone(), store.clone(), new_data.clone(), client_stop.clone())?;

    let plans: Vec<Plan> = config
        .connectors
        .iter()
        .zip(route_ids)
        .map(|(c, ids)| match &c.kind {
            ConnectorKind::Mqtt(m) => Plan {
                name: c.name.clone(),
                kind: "mqtt",
                connector: Box::new(MqttConnector::new(c.name.clone(), (**m).clone(), ids)),
            },
            ConnectorKind::Modbus(m) => Plan {
                name: c.name.clone(),
                kind: "modbus",
                connector: Box::new(ModbusConnector::new(c.name.clone(), m.clone(), ids[0])),
            },
        })
        .collect();
    let stop_intake = CancellationToken::new();
    let finish = CancellationToken::new();
    let mut connector_stats = Vec::new();
    let mut tasks = Vec::new();
    let mut ports = Vec::new();
    for (plan, converter) in plans.into_iter().zip(downlinks) {
        let stats = Arc::new(ConnectorStats::default());
        connector_stats.push((plan.name.clone(), stats.clone()));
        let Some(sink) = pipeline.sink() else { break };
        let (jobs_tx, jobs) = mpsc::channel(4096);
        let downlink = DownlinkLink { jobs, requests: DeviceRequests::new(&plan.name, device_requests_tx.clone()) };
        ports.push(Port { name: plan.name.clone(), kind: plan.kind, jobs: jobs_tx, converter, stats: stats.clone() });
        let ctx = ConnectorContext { sink, downlink, stop_intake: stop_intake.clone(), finish: finish.clone(), stats };
        tasks.push(tokio::spawn(plan.connector.run(ctx)));
    }
    drop(device_requests_tx);
    let (queries_tx, mut queries) = mpsc::channel(16);
    let restart = CancellationToken::new();
    let router_stop = CancellationToken::new();
    let incoming = client.take_requests().unwrap_or_else(|| mpsc::unbounded_channel().1);
    let router = Router::start(
        ports,
        incoming,
        device_requests,
        client.sender(),
        client.registry(),
        queries_tx,
        restart.clone(),
        router_stop.clone(),
        config.handle_device_renaming,
    )
    .map_err(ServiceError::Threads)?;
    let watch_stop = CancellationToken::new();
    let watcher = crate::watch::spawn(watched, config.watch_converters, watch_stop.clone());
    crate::memory::release_startup_memory();
    let backlog = store.stats();
    tracing::info!(
        "tbgw {} started: {} connector(s), {} converter(s); {} events waiting for delivery",
        env!("CARGO_PKG_VERSION"),
        connector_stats.len(),
        pipeline.routes().len(),
        backlog.records
    );

    // Statistics until told to stop.
    let mut reports = config.statistics.map(|period| {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    // The machine, once (as the Python gateway: attributes of the gateway
    // device); sent when the session starts.
    let mut machine = crate::machine::Sampler::default();
    if reports.is_some() {
        let attributes = serde_json::Value::Object(crate::machine::once()).to_string();
        let publish = tbgw_thingsboard::Command::Publish {
            topic: "v1/devices/me/attributes".into(),
            payload: attributes.into_bytes(),
        };
        if let Err(e) = client.send(publish) {
            tracing::debug!("the machine's attributes were not sent: {e}");
        }
        // The first CPU sample: the first report's share starts here.
        machine.sample();
    }
    let mut stopped = Stopped::Normally;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = restart.cancelled() => {
                stopped = Stopped::Restart;
                break;
            }
            _ = async { reports.as_mut().expect("guarded").tick().await }, if reports.is_some() => {
                let mut report = statistics(started, &*store, &pipeline, &connector_stats, &client.stats(), &router.stats);
                if let serde_json::Value::Object(o) = &mut report {
                    o.extend(machine.sample());
                }
                client.own_telemetry(report.to_string());
            }
            Some(query) = queries.recv() => match query {
                ServiceQuery::Stats(reply) => {
                    let mut report = statistics(started, &*store, &pipeline, &connector_stats, &client.stats(), &router.stats);
                    if let serde_json::Value::Object(o) = &mut report {
                        // The machine now; the process's CPU share is the reports'.
                        o.extend(crate::machine::Sampler::default().sample());
                    }
                    let _ = reply.send(report);
                }
                ServiceQuery::Converters(reply) => {
                    let list = pipeline.routes().iter().map(|r| converter_json(&r.converter.info(), &r.connector)).collect();
                    let _ = reply.send(serde_json::Value::Array(list));
                }
            },
        }
    }

    tracing::info!("stopping: no new messages; converting and storing what was received");
    watch_stop.cancel();
    if let Some(w) = watcher {
        // A swap in progress finishes first (it is short, and harmless).
        let _ = w.await;
    }
    stop_intake.cancel();
    let pipeline_done = tokio::task::spawn_blocking(move || {
        pipeline.drain();
        pipeline
    });
    let pipeline = pipeline_done.await.ok();
    finish.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    router_stop.cancel();
    drop(queries);
    router.join().await;
    client_stop.cancel();
    let delivered = client.stats().delivered;
    client.join().await;
    let store_done = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.flush() {
                tracing::error!("flushing the event store: {e}");
            }
            store.close();
            store.stats()
        })
    };
    if let Ok(s) = store_done.await {
        tracing::info!(
            "stopped after {:.0?}: {} events delivered, {} waiting in the store",
            started.elapsed(),
            delivered,
            s.records
        );
    }
    drop(pipeline);
    Ok(stopped)
}

/// The statistics published to `v1/devices/me/telemetry`: the Python
/// gateway's keys (`eventsProduced`, `eventsSent`, `<Connector>EventsProduced`,
/// `<Connector>EventsSent`) and tbgw's own.
pub fn statistics(
    started: Instant,
    store: &dyn EventStore,
    pipeline: &Pipeline,
    connectors: &[(String, Arc<ConnectorStats>)],
    client: &tbgw_thingsboard::ClientStatsSnapshot,
    router: &crate::router::RouterStats,
) -> serde_json::Value {
    let s = store.stats();
    let mut out = serde_json::Map::new();
    let mut put = |k: String, v: serde_json::Value| {
        out.insert(k, v);
    };
    let mut produced_total = 0u64;
    let mut per: HashMap<&str, [u64; 5]> = HashMap::new();
    for (route, st) in pipeline.routes().iter().zip(pipeline.stats()) {
        let e = per.entry(&route.connector).or_default();
        e[0] += st.converted.load(Ordering::Relaxed);
        e[1] += st.failed.load(Ordering::Relaxed);
        e[2] += st.dropped_values.load(Ordering::Relaxed);
        e[3] += st.stored.load(Ordering::Relaxed);
        e[4] += st.not_reported.load(Ordering::Relaxed);
    }
    for (name, cs) in connectors {
        let key: String = name.chars().filter(|c| !c.is_whitespace()).collect();
        let received = cs.received.load(Ordering::Relaxed);
        produced_total += received;
        let [converted, failed, dropped, stored, not_reported] = per.get(name.as_str()).copied().unwrap_or_default();
        put(format!("{key}EventsProduced"), received.into());
        put(format!("{key}EventsSent"), client.delivered_per_connector.get(name).copied().unwrap_or(0).into());
        put(format!("{key}MessagesConverted"), converted.into());
        put(format!("{key}ConversionErrors"), failed.into());
        put(format!("{key}ValuesDropped"), dropped.into());
        put(format!("{key}EventsStored"), stored.into());
        put(format!("{key}ValuesNotReported"), not_reported.into());
        put(format!("{key}Connected"), cs.connected.load(Ordering::Relaxed).into());
        put(format!("{key}SentToDevices"), cs.sent_to_devices.load(Ordering::Relaxed).into());
        put(format!("{key}DownlinkErrors"), cs.downlink_errors.load(Ordering::Relaxed).into());
        put(format!("{key}ReadErrors"), cs.read_errors.load(Ordering::Relaxed).into());
    }
    put("requestsReceived".into(), router.requests.load(Ordering::Relaxed).into());
    put("requestErrors".into(), router.errors.load(Ordering::Relaxed).into());
    put("eventsProduced".into(), produced_total.into());
    put("eventsSent".into(), client.delivered.into());
    put("storageBacklog".into(), s.records.into());
    put("storageBytes".into(), s.bytes.into());
    put("storageDropped".into(), s.dropped.into());
    put("uptimeSeconds".into(), started.elapsed().as_secs().into());
    serde_json::Value::Object(out)
}
