//! The gateway service: everything wired from the configuration, run until
//! told to stop, stopped in an order that loses nothing.
//!
//! Start: open the event store; load every mapping's converter (all of them
//! are checked before anything runs); start the pipeline, the ThingsBoard
//! client and the connectors; report statistics.
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

use crate::config::{ConnectorConfig, ConnectorKind, GatewayConfig, StorageKind};
use crate::converters;
use crate::pipeline::{Pipeline, Route};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tbgw_connector_mqtt::MqttConnector;
use tbgw_connector_mqtt::config::{ConverterRef, MappingConfig};
use tbgw_core::Direction;
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats};
use tbgw_store::{EventStore, FjallStore, MemoryStore, StoreError};
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, LoadError, Runtime, RuntimeError};
use tokio::sync::Notify;
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
    connector: Box<dyn Connector>,
}

/// Load the converter of one mapping.
fn load_route(connector: &ConnectorConfig, mapping: &MappingConfig, runtime: &Runtime) -> Result<Route, ServiceError> {
    let path = format!("{}.{}", connector.path, mapping.converter_path);
    let (component, converter_config, name) = match &mapping.converter {
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
    let converter = runtime
        .uplink(&format!("{}/{}", connector.name, name), spec)
        .map_err(|error| ServiceError::Converter { path: path.clone(), error })?;
    Ok(Route { connector: connector.name.as_str().into(), origin: path, converter })
}

fn mappings(c: &ConnectorConfig) -> &[MappingConfig] {
    match &c.kind {
        ConnectorKind::Mqtt(m) => &m.mappings,
    }
}

/// Load every converter the configuration names: one route per mapping,
/// and the route ids of each connector's mappings.
pub fn load_routes(config: &GatewayConfig, runtime: &Runtime) -> Result<(Vec<Route>, Vec<Vec<usize>>), ServiceError> {
    let mut routes = Vec::new();
    let mut per_connector = Vec::new();
    for c in &config.connectors {
        let mut ids = Vec::new();
        for m in mappings(c) {
            ids.push(routes.len());
            routes.push(load_route(c, m, runtime)?);
        }
        per_connector.push(ids);
    }
    Ok((routes, per_connector))
}

/// Load every converter, reporting every one that fails.
pub fn check_converters(config: &GatewayConfig, runtime: &Runtime) -> (usize, Vec<ServiceError>) {
    let (mut ok, mut errors) = (0, Vec::new());
    for c in &config.connectors {
        for m in mappings(c) {
            match load_route(c, m, runtime) {
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

/// Run the gateway until `shutdown` is cancelled, then stop in order.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let started = Instant::now();
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
    let (routes, route_ids) = {
        let (config, runtime) = (config.clone(), runtime.clone());
        tokio::task::spawn_blocking(move || load_routes(&config, &runtime))
            .await
            .map_err(|e| ServiceError::Threads(std::io::Error::other(e.to_string())))??
    };
    let new_data = Arc::new(Notify::new());
    let mut pipeline =
        Pipeline::start(routes, store.clone(), new_data.clone(), config.pipeline).map_err(ServiceError::Threads)?;
    let client_stop = CancellationToken::new();
    let client =
        tbgw_thingsboard::spawn(config.thingsboard.clone(), store.clone(), new_data.clone(), client_stop.clone())?;

    let plans: Vec<Plan> = config
        .connectors
        .iter()
        .zip(route_ids)
        .map(|(c, ids)| Plan {
            name: c.name.clone(),
            connector: match &c.kind {
                ConnectorKind::Mqtt(m) => Box::new(MqttConnector::new(c.name.clone(), m.clone(), ids)),
            },
        })
        .collect();
    let stop_intake = CancellationToken::new();
    let finish = CancellationToken::new();
    let mut connector_stats = Vec::new();
    let mut tasks = Vec::new();
    for plan in plans {
        let stats = Arc::new(ConnectorStats::default());
        connector_stats.push((plan.name.clone(), stats.clone()));
        let Some(sink) = pipeline.sink() else { break };
        let ctx = ConnectorContext { sink, stop_intake: stop_intake.clone(), finish: finish.clone(), stats };
        tasks.push(tokio::spawn(plan.connector.run(ctx)));
    }
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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = async { reports.as_mut().expect("guarded").tick().await }, if reports.is_some() => {
                let report = statistics(started, &*store, &pipeline, &connector_stats, &client.stats());
                client.own_telemetry(report.to_string());
            }
        }
    }

    tracing::info!("stopping: no new messages; converting and storing what was received");
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
    Ok(())
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
) -> serde_json::Value {
    let s = store.stats();
    let mut out = serde_json::Map::new();
    let mut put = |k: String, v: serde_json::Value| {
        out.insert(k, v);
    };
    let mut produced_total = 0u64;
    let mut per: HashMap<&str, [u64; 4]> = HashMap::new();
    for (route, st) in pipeline.routes().iter().zip(pipeline.stats()) {
        let e = per.entry(&route.connector).or_default();
        e[0] += st.converted.load(Ordering::Relaxed);
        e[1] += st.failed.load(Ordering::Relaxed);
        e[2] += st.dropped_values.load(Ordering::Relaxed);
        e[3] += st.stored.load(Ordering::Relaxed);
    }
    for (name, cs) in connectors {
        let key: String = name.chars().filter(|c| !c.is_whitespace()).collect();
        let received = cs.received.load(Ordering::Relaxed);
        produced_total += received;
        let [converted, failed, dropped, stored] = per.get(name.as_str()).copied().unwrap_or_default();
        put(format!("{key}EventsProduced"), received.into());
        put(format!("{key}EventsSent"), client.delivered_per_connector.get(name).copied().unwrap_or(0).into());
        put(format!("{key}MessagesConverted"), converted.into());
        put(format!("{key}ConversionErrors"), failed.into());
        put(format!("{key}ValuesDropped"), dropped.into());
        put(format!("{key}EventsStored"), stored.into());
        put(format!("{key}Connected"), cs.connected.load(Ordering::Relaxed).into());
    }
    put("eventsProduced".into(), produced_total.into());
    put("eventsSent".into(), client.delivered.into());
    put("storageBacklog".into(), s.records.into());
    put("storageBytes".into(), s.bytes.into());
    put("storageDropped".into(), s.dropped.into());
    put("uptimeSeconds".into(), started.elapsed().as_secs().into());
    serde_json::Value::Object(out)
}
