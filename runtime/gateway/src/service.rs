//! The gateway service: everything wired from the configuration, run until
//! told to stop, stopped in an order that loses nothing.
//!
//! [`Gateway::build`]: open the event store; load every converter every
//! connector declares (all of them are checked before anything runs), into
//! the [`Registry`]; start the pipeline, the ThingsBoard client, the router
//! of ThingsBoard's requests ([`crate::router`]) and the connectors, each
//! with its own stop.
//!
//! [`Gateway::run`]: report statistics, answer the router's questions about
//! the gateway ([`Status`]), until told to stop or asked to restart.
//!
//! [`Gateway::stop`] (after SIGINT, SIGTERM, or the caller's token):
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
//! One connector can be stopped alone ([`Gateway::stop_connector`]): it
//! stops taking messages, the pipeline is given a moment to store what it
//! sent, then it disconnects; what was still on its way is not acknowledged,
//! so its source sends it again.
//!
//! One connector can be restarted alone with its configuration read again
//! ([`Gateway::reload_connector`], when its file changes): its new
//! converters are loaded while it runs, then it stops as above and starts
//! again; its new routes and downlink converters are added to the
//! pipeline's and the router's tables (which only grow), its port in the
//! router and its converters in the [`Registry`] are replaced.
//!
//! `gateway_restart` stops the same way and tells the caller to start again
//! ([`Stopped::Restart`]).

use crate::config::{ConnectorConfig, GatewayConfig, StorageKind};
use crate::converters::{self, AnyConverter, DeclError, Registered, Registry};
use crate::pipeline::{Pipeline, RequestSender, Route};
use crate::router::{Port, Router};
use crate::status::{ConnectorStatus, ConverterStatus, ExtraStatus, Status};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tbgw_core::Direction;
use tbgw_core::config::join;
use tbgw_core::connector::{ConnectorContext, ConnectorStats};
use tbgw_core::downlink::{DeviceRequests, DownlinkLink};
use tbgw_core::report::{ReportPolicy, Strategy};
use tbgw_core::setup::{ConverterDecl, Devices};
use tbgw_store::{EventStore, FjallStore, MemoryStore, StoreError};
use tbgw_wasm::{DownlinkConverter, LoadError, Runtime, RuntimeError};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A converter did not load: its path in the config (with the field of
    /// its config at fault, when `create` named one) and why.
    #[error("{}: {}", at(path, error), reason(error))]
    Converter { path: String, error: DeclError },
    #[error(transparent)]
    ThingsBoard(#[from] tbgw_thingsboard::ClientError),
    #[error("cannot start the pipeline threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error("tbgw.http.listen: cannot listen on {addr}: {source}")]
    Http { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Uploads(#[from] crate::uploads::UploadsError),
}

impl ServiceError {
    /// What the problem is, whichever converter met it: the uplink and the
    /// downlink converter of one config meet its errors alike, and are
    /// reported once.
    fn problem(&self) -> String {
        match self {
            ServiceError::Converter { path, error: error @ DeclError::Load(LoadError::Config { message, .. }) } => {
                format!("{}: {message}", at(path, error))
            }
            other => other.to_string(),
        }
    }
}

/// Where a converter's error is: a config error at its field.
fn at(path: &str, error: &DeclError) -> String {
    match error {
        DeclError::Load(LoadError::Config { field: Some(field), .. }) => join(path, field),
        _ => path.to_owned(),
    }
}

fn reason(error: &DeclError) -> String {
    match error {
        DeclError::Load(LoadError::Config { converter, field: Some(_), message }) => {
            format!("{message} (converter `{converter}`)")
        }
        other => other.to_string(),
    }
}

/// How the gateway stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Told to stop (a signal, the caller's token).
    Normally,
    /// ThingsBoard asked for a restart (`gateway_restart`): start again.
    Restart,
}

/// What the router asks the service.
pub enum ServiceQuery {
    /// The statistics, as published.
    Stats(oneshot::Sender<serde_json::Value>),
    /// Every converter, as `gateway_converters` lists them.
    Converters(oneshot::Sender<serde_json::Value>),
    /// The whole snapshot (the HTTP listener's metrics and readiness).
    Status(oneshot::Sender<Box<Status>>),
    /// A chunk of a converter upload (`gateway_converter_upload`'s params):
    /// the RPC's answer.
    Upload(serde_json::Value, oneshot::Sender<serde_json::Value>),
    /// Roll a converter back to the version before its upload.
    Rollback(String, oneshot::Sender<serde_json::Value>),
}

/// Every converter the configuration declares, loaded (and registered):
/// the pipeline's routes, the router's downlink converters, and per
/// connector which are its own.
pub struct Loaded {
    pub registry: Registry,
    pub routes: Vec<Route>,
    pub downlinks: Vec<DownlinkConverter>,
    pub per_connector: Vec<ConnectorConverters>,
}

/// A connector's converters in [`Loaded`].
pub struct ConnectorConverters {
    /// Its routes' ids, in its order.
    pub routes: Vec<usize>,
    /// Its downlink converters (indices into `downlinks`) and their devices.
    pub downlinks: Vec<(Devices, usize)>,
}

/// A connector's route with the gateway's strategy where it names none;
/// nothing to filter when everything is reported.
fn effective(report: &ReportPolicy, main: Strategy) -> Option<ReportPolicy> {
    let mut p = report.clone();
    p.route = Some(p.route.unwrap_or(main));
    (!p.reports_everything(Strategy::OnReceived)).then_some(p)
}

fn load_one(
    runtime: &Runtime,
    registry: &Registry,
    connector: &ConnectorConfig,
    decl: &ConverterDecl,
    direction: Direction,
) -> Result<AnyConverter, ServiceError> {
    let path = join(&connector.path, &decl.path);
    let label = if direction == Direction::Downlink && !decl.label.contains("downlink") {
        format!("{} (downlink)", decl.label)
    } else {
        decl.label.clone()
    };
    let name = registry.name_for(&connector.name, &label);
    let converter = AnyConverter::load(runtime, &name, decl, direction)
        .map_err(|error| ServiceError::Converter { path: path.clone(), error })?;
    let file = converter.file();
    registry.add(Registered { name, connector: connector.name.clone(), path, file, converter: converter.clone() });
    Ok(converter)
}

/// Load every converter the configuration declares.
pub fn load(config: &GatewayConfig, runtime: &Runtime) -> Result<Loaded, ServiceError> {
    let mut loaded =
        Loaded { registry: Registry::default(), routes: Vec::new(), downlinks: Vec::new(), per_connector: Vec::new() };
    let registry = loaded.registry.clone();
    for c in &config.connectors {
        let mine = load_connector(runtime, &registry, c, config.report_strategy, &mut loaded)?;
        loaded.per_connector.push(mine);
    }
    Ok(loaded)
}

/// Load `c`'s converters into `loaded` (registered in `registry`): its
/// routes and downlink converters are appended, and their indices are
/// those in `loaded`.
fn load_connector(
    runtime: &Runtime,
    registry: &Registry,
    c: &ConnectorConfig,
    report_strategy: Strategy,
    loaded: &mut Loaded,
) -> Result<ConnectorConverters, ServiceError> {
    let mut route_ids = Vec::new();
    for r in c.setup.routes() {
        let AnyConverter::Uplink(converter) = load_one(runtime, registry, c, &r.converter, Direction::Uplink)? else {
            unreachable!("loaded as an uplink converter")
        };
        let answers = match &r.answers {
            Some(decl) => {
                let AnyConverter::Downlink(answering) = load_one(runtime, registry, c, decl, Direction::Downlink)?
                else {
                    unreachable!("loaded as a downlink converter")
                };
                loaded.downlinks.push(answering);
                Some(loaded.downlinks.len() - 1)
            }
            None => None,
        };
        route_ids.push(loaded.routes.len());
        loaded.routes.push(Route {
            connector: c.name.as_str().into(),
            origin: join(&c.path, &r.converter.path),
            converter,
            report: effective(&r.report, report_strategy),
            answers,
        });
    }
    let mut downlinks = Vec::new();
    for dl in c.setup.downlinks() {
        let AnyConverter::Downlink(converter) = load_one(runtime, registry, c, &dl.converter, Direction::Downlink)?
        else {
            unreachable!("loaded as a downlink converter")
        };
        downlinks.push((dl.devices, loaded.downlinks.len()));
        loaded.downlinks.push(converter);
    }
    Ok(ConnectorConverters { routes: route_ids, downlinks })
}

/// Load every converter, reporting every one that fails: how many loaded,
/// and the errors.
pub fn check_converters(config: &GatewayConfig, runtime: &Runtime) -> (usize, Vec<ServiceError>) {
    let (mut ok, mut errors) = (0, Vec::new());
    let registry = Registry::default();
    for c in &config.connectors {
        let routes = c.setup.routes();
        let answers = routes.iter().filter_map(|r| r.answers.clone()).map(|a| (a, Direction::Downlink));
        let uplinks = routes.iter().map(|r| (r.converter.clone(), Direction::Uplink));
        let downlinks = c.setup.downlinks().into_iter().map(|d| (d.converter, Direction::Downlink));
        for (decl, direction) in uplinks.chain(answers).chain(downlinks) {
            match load_one(runtime, &registry, c, &decl, direction) {
                Ok(_) => ok += 1,
                Err(e) if errors.iter().any(|known: &ServiceError| known.problem() == e.problem()) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    (ok, errors)
}

/// Where compiled converters go: the configured directory, else beside the
/// event store, else the user's cache.
/// Where the gateway caches compiled converters: `tbgw.cacheDir`, else
/// beside its store.
pub fn cache_dir(config: &GatewayConfig) -> Option<std::path::PathBuf> {
    config.cache_dir.clone().or_else(|| match &config.storage.kind {
        StorageKind::Fjall { path, .. } => Some(path.join("converter-cache")),
        StorageKind::Memory => converters::default_cache_dir(),
    })
}

/// Start connector `c` with its converters (route ids in the pipeline,
/// downlink converter indices in the router) and `stats` (a restarted
/// connector keeps its counters): its port for the router, and the running
/// connector. `None` once the pipeline is draining.
fn launch(
    c: &ConnectorConfig,
    mine: ConnectorConverters,
    pipeline: &Pipeline,
    device_requests: &RequestSender,
    stats: Arc<ConnectorStats>,
) -> Option<(Port, RunningConnector)> {
    let sink = pipeline.sink()?;
    let (jobs_tx, jobs) = mpsc::channel(4096);
    let downlink = DownlinkLink { jobs, requests: DeviceRequests::new(&c.name, device_requests.clone()) };
    let port =
        Port { name: c.name.clone(), kind: c.kind, jobs: jobs_tx, downlinks: mine.downlinks, stats: stats.clone() };
    let (stop_intake, finish) = (CancellationToken::new(), CancellationToken::new());
    let ctx = ConnectorContext {
        sink,
        downlink,
        stop_intake: stop_intake.clone(),
        finish: finish.clone(),
        stats: stats.clone(),
    };
    let table = pipeline.routes();
    let routes =
        mine.routes.iter().filter_map(|&r| table.get(r)).map(|e| e.route.converter.name().to_owned()).collect();
    let task = tokio::spawn(c.setup.build(&c.name, &mine.routes).run(ctx));
    let running =
        RunningConnector { name: c.name.clone(), kind: c.kind, stats, routes, stop_intake, finish, task: Some(task) };
    Some((port, running))
}

/// How long a connector restarted with a new configuration has to connect
/// before it goes back to the configuration before.
pub const PROBATION: Duration = Duration::from_secs(15);

/// A connector restarted with a new configuration, until it connects.
struct Probation {
    /// The configuration before, to go back to.
    previous: ConnectorConfig,
    until: Instant,
    /// The file's content before, when remote configuration replaced it.
    file: Option<Vec<u8>>,
}

/// What became of a connector's configuration read again
/// ([`Gateway::reload_connector`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The same configuration (perhaps written differently): nothing done.
    Unchanged,
    /// The connector runs the new configuration.
    Restarted,
}

/// A connector running, with its own stop.
struct RunningConnector {
    name: String,
    kind: &'static str,
    stats: Arc<ConnectorStats>,
    /// Its routes' converter names.
    routes: Vec<String>,
    stop_intake: CancellationToken,
    finish: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningConnector {
    /// Disconnect (its intake stopped before) and wait for it to end.
    async fn finish(&mut self) {
        self.finish.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.stats.connected.store(false, Ordering::Relaxed);
    }
}

/// The gateway, built and running.
pub struct Gateway {
    config: GatewayConfig,
    started: Instant,
    store: Arc<dyn EventStore>,
    registry: Registry,
    pipeline: Pipeline,
    client: tbgw_thingsboard::ClientHandle,
    client_stop: CancellationToken,
    router: Router,
    router_stop: CancellationToken,
    connectors: Vec<RunningConnector>,
    queries: mpsc::Receiver<ServiceQuery>,
    restart: CancellationToken,
    watch_stop: CancellationToken,
    watcher: Option<tokio::task::JoinHandle<()>>,
    http_stop: CancellationToken,
    http: Option<tokio::task::JoinHandle<()>>,
    /// Remote logging's delivery ([`crate::remote_log::deliver`]).
    remote_log_stop: CancellationToken,
    remote_log: tokio::task::JoinHandle<()>,
    /// Converters uploaded from ThingsBoard (`tbgw.uploads`).
    uploads: Option<Arc<crate::uploads::Uploads>>,
    /// What a connector started later needs: the converter runtime, and
    /// where devices' requests go.
    runtime: Runtime,
    device_requests: RequestSender,
    /// Connectors restarted with a new configuration, until they connect.
    probation: Vec<Probation>,
    /// Remote configuration's memory (`thingsboard.remoteConfiguration`),
    /// and the gateway device's shared attributes from the router.
    remote: crate::remote_config::RemoteConfig,
    own_attributes: mpsc::UnboundedReceiver<serde_json::Map<String, serde_json::Value>>,
}

impl Gateway {
    /// Open the store, load every converter, and start the pipeline, the
    /// ThingsBoard client, the router and the connectors.
    pub async fn build(config: GatewayConfig) -> Result<Gateway, ServiceError> {
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
        // The HTTP listener's address first: a port in use fails the start.
        let http = match config.http {
            Some(addr) => {
                Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| ServiceError::Http { addr, source })?)
            }
            None => None,
        };
        let runtime = converters::runtime(cache_dir(&config))?;
        let loaded = {
            let (config, runtime) = (config.clone(), runtime.clone());
            tokio::task::spawn_blocking(move || load(&config, &runtime))
                .await
                .map_err(|e| ServiceError::Threads(std::io::Error::other(e.to_string())))??
        };
        let Loaded { registry, routes, downlinks, per_connector } = loaded;
        let new_data = Arc::new(Notify::new());
        // Devices' own requests, from the converters and from connectors, to the router.
        let (device_requests_tx, device_requests) = mpsc::unbounded_channel();
        let pipeline =
            Pipeline::start(routes, store.clone(), new_data.clone(), device_requests_tx.clone(), config.pipeline)
                .map_err(ServiceError::Threads)?;
        let client_stop = CancellationToken::new();
        let mut client =
            tbgw_thingsboard::spawn(config.thingsboard.clone(), store.clone(), new_data.clone(), client_stop.clone())?;
        // Uploaded converters serve from the first message.
        let uploads = match &config.uploads {
            Some(dir) => {
                let (dir, registry, sender) = (dir.clone(), registry.clone(), client.sender());
                let opened =
                    tokio::task::spawn_blocking(move || crate::uploads::Uploads::open(&dir, &registry, sender)).await;
                match opened {
                    Ok(Ok(uploads)) => Some(uploads),
                    Ok(Err(e)) => {
                        client_stop.cancel();
                        return Err(e.into());
                    }
                    Err(e) => {
                        client_stop.cancel();
                        return Err(ServiceError::Threads(std::io::Error::other(e.to_string())));
                    }
                }
            }
            None => None,
        };

        // Remote logging knows the connectors before they log.
        let hub = crate::remote_log::hub();
        hub.set_sources(
            config.connectors.iter().map(|c| (c.name.clone(), c.remote_log)).collect(),
            registry.snapshot().into_iter().map(|r| (r.name, r.connector)).collect(),
        );
        let remote_log_stop = CancellationToken::new();
        let remote_log = tokio::spawn(crate::remote_log::deliver(
            hub,
            client.sender(),
            client.shared_stats(),
            config.thingsboard.max_payload_bytes,
            remote_log_stop.clone(),
        ));

        let mut connectors = Vec::new();
        let mut ports = Vec::new();
        for (c, mine) in config.connectors.iter().zip(per_connector) {
            let stats = Arc::new(ConnectorStats::default());
            let Some((port, running)) = launch(c, mine, &pipeline, &device_requests_tx, stats) else { break };
            ports.push(port);
            connectors.push(running);
        }
        let (queries_tx, queries) = mpsc::channel(16);
        let http_stop = CancellationToken::new();
        let http_queries = queries_tx.clone();
        let restart = CancellationToken::new();
        let router_stop = CancellationToken::new();
        let incoming = client.take_requests().unwrap_or_else(|| mpsc::unbounded_channel().1);
        let (own_attributes_tx, own_attributes) = mpsc::unbounded_channel();
        let router = Router::start(
            ports,
            downlinks,
            incoming,
            device_requests,
            client.sender(),
            client.registry(),
            queries_tx,
            restart.clone(),
            router_stop.clone(),
            config.handle_device_renaming,
            own_attributes_tx,
        )
        .map_err(|e| {
            // What was started before: the process ends, but not its tasks' way out.
            remote_log_stop.cancel();
            client_stop.cancel();
            ServiceError::Threads(e)
        })?;
        let watch_stop = CancellationToken::new();
        let watcher = crate::watch::spawn(&registry, config.watch_converters, watch_stop.clone());
        // Last, so that nothing after it can fail and leave it holding the port.
        let http = http.map(|listener| {
            match listener.local_addr() {
                Ok(addr) => tracing::info!("HTTP listener on http://{addr} (/, /metrics, /healthz, /readyz)"),
                Err(e) => tracing::warn!("HTTP listener: {e}"),
            }
            tokio::spawn(crate::http::serve(listener, http_queries, http_stop.clone()))
        });
        crate::memory::release_startup_memory();
        tracing::info!(
            "tbgw {} started: {} connector(s), {} converter(s); {} events waiting for delivery",
            env!("CARGO_PKG_VERSION"),
            connectors.len(),
            registry.len(),
            store.stats().records
        );
        Ok(Gateway {
            config,
            started,
            store,
            registry,
            pipeline,
            client,
            client_stop,
            router,
            router_stop,
            connectors,
            queries,
            restart,
            watch_stop,
            watcher,
            http_stop,
            http,
            remote_log_stop,
            remote_log,
            uploads,
            runtime,
            device_requests: device_requests_tx,
            probation: Vec::new(),
            remote: crate::remote_config::RemoteConfig::default(),
            own_attributes,
        })
    }

    /// The converters it runs, by name.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What the gateway knows of itself, now.
    pub fn status(&self) -> Status {
        let client = self.client.stats();
        let routes = self.pipeline.routes();
        let mut devices: HashMap<String, u64> = HashMap::new();
        for (_, record) in self.client.registry().snapshot() {
            *devices.entry(record.connector).or_default() += 1;
        }
        let connectors = self
            .connectors
            .iter()
            .map(|c| {
                let s = &c.stats;
                let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                let mut status = ConnectorStatus {
                    name: c.name.clone(),
                    kind: c.kind.to_owned(),
                    connected: s.connected.load(Ordering::Relaxed),
                    running: c.task.is_some(),
                    received: get(&s.received),
                    acked: get(&s.acked),
                    unmatched: get(&s.unmatched),
                    sent_to_devices: get(&s.sent_to_devices),
                    downlink_errors: get(&s.downlink_errors),
                    read_errors: get(&s.read_errors),
                    reconnects: get(&s.reconnects),
                    devices: devices.get(&c.name).copied().unwrap_or(0),
                    bus_errors: get(&s.bus_errors),
                    delivered: client.delivered_per_connector.get(&c.name).copied().unwrap_or(0),
                    routes: c.routes.clone(),
                    extras: s
                        .extras()
                        .iter()
                        .map(|e| ExtraStatus { name: e.name, help: e.help, gauge: e.gauge, value: e.get() })
                        .collect(),
                    ..ConnectorStatus::default()
                };
                for e in &routes {
                    let (route, st) = (&e.route, &e.stats);
                    if *route.connector == *c.name {
                        status.converted += get(&st.converted);
                        status.conversion_errors += get(&st.failed);
                        status.dropped_values += get(&st.dropped_values);
                        status.stored += get(&st.stored);
                        status.not_reported += get(&st.not_reported);
                    }
                }
                status
            })
            .collect();
        let converters = self
            .registry
            .snapshot()
            .into_iter()
            .map(|r| ConverterStatus { info: r.converter.info(), connector: r.connector, path: r.path })
            .collect();
        let store = self.store.stats();
        let limits = self.config.storage.limits;
        Status {
            uptime: self.started.elapsed(),
            connectors,
            converters,
            // Under `block` a full store holds the connectors back; under
            // `drop_oldest` being at the bound is how it works.
            store_full: limits.when_full == tbgw_store::WhenFull::Block
                && (store.records >= limits.max_records || store.bytes + (1 << 20) >= limits.max_bytes),
            store,
            client,
            requests: self.router.stats.requests.load(Ordering::Relaxed),
            request_errors: self.router.stats.errors.load(Ordering::Relaxed),
        }
    }

    /// Report statistics and answer the router until `shutdown` is
    /// cancelled or ThingsBoard asks for a restart.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> Stopped {
        let mut reports = self.config.statistics.map(|period| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // The machine, once (as the Python gateway: attributes of the
        // gateway device); sent when the session starts.
        let mut machine = crate::machine::Sampler::default();
        if reports.is_some() {
            let attributes = serde_json::Value::Object(crate::machine::once()).to_string();
            let publish = tbgw_thingsboard::Command::Publish {
                topic: "v1/devices/me/attributes".into(),
                payload: attributes.into_bytes(),
            };
            if let Err(e) = self.client.send(publish) {
                tracing::debug!("the machine's attributes were not sent: {e}");
            }
            // The first CPU sample: the first report's share starts here.
            machine.sample();
        }
        // The connectors' configuration files, checked as the converters'
        // are (`tbgw.watchConverters`): an edit restarts that connector alone.
        let period = self.config.watch_converters;
        let mut files: Vec<(String, crate::watch::Watched)> = self
            .config
            .connectors
            .iter()
            .filter_map(|c| Some((c.name.clone(), crate::watch::Watched::new(c.file.clone()?))))
            .collect();
        let mut file_checks = (!period.is_zero() && !files.is_empty()).then(|| {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        // Remote configuration: a new session gets the running configuration.
        let mut remote_checks = self.config.remote_configuration.then(|| {
            let mut t = tokio::time::interval(Duration::from_millis(500));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Stopped::Normally,
                _ = self.restart.cancelled() => return Stopped::Restart,
                _ = async { file_checks.as_mut().expect("guarded").tick().await }, if file_checks.is_some() => {
                    let changed: Vec<String> = files
                        .iter_mut()
                        .filter_map(|(name, w)| (w.check() == crate::watch::Change::Changed).then(|| name.clone()))
                        .collect();
                    for name in changed {
                        self.file_changed(&name).await;
                    }
                    self.check_probation().await;
                }
                Some(attributes) = self.own_attributes.recv() => self.remote_attributes(attributes).await,
                _ = async { remote_checks.as_mut().expect("guarded").tick().await }, if remote_checks.is_some() => {
                    self.remote_session();
                    if file_checks.is_none() {
                        self.check_probation().await;
                    }
                }
                _ = async { reports.as_mut().expect("guarded").tick().await }, if reports.is_some() => {
                    let mut report = self.status().statistics();
                    if let serde_json::Value::Object(o) = &mut report {
                        o.extend(machine.sample());
                    }
                    self.client.own_telemetry(report.to_string());
                }
                Some(query) = self.queries.recv() => match query {
                    ServiceQuery::Stats(reply) => {
                        let mut report = self.status().statistics();
                        if let serde_json::Value::Object(o) = &mut report {
                            // The machine now; the process's CPU share is the reports'.
                            o.extend(crate::machine::Sampler::default().sample());
                        }
                        let _ = reply.send(report);
                    }
                    ServiceQuery::Converters(reply) => {
                        let _ = reply.send(self.status().converters());
                    }
                    ServiceQuery::Status(reply) => {
                        let _ = reply.send(Box::new(self.status()));
                    }
                    ServiceQuery::Upload(params, reply) => match self.uploads.clone() {
                        // Compiling takes a while: the loop goes on meanwhile.
                        Some(uploads) => {
                            tokio::spawn(async move { let _ = reply.send(uploads.upload(params).await); });
                        }
                        None => {
                            let _ = reply.send(crate::uploads::off());
                        }
                    },
                    ServiceQuery::Rollback(name, reply) => match self.uploads.clone() {
                        Some(uploads) => {
                            tokio::spawn(async move {
                                let _ = reply.send(uploads.rollback(&name, "asked by ThingsBoard (gateway_converters)").await);
                            });
                        }
                        None => {
                            let _ = reply.send(crate::uploads::off());
                        }
                    },
                },
            }
        }
    }

    /// Stop one connector alone: no new messages, a moment for the pipeline
    /// to store what it sent, then it disconnects. False if there is no
    /// running connector of that name.
    ///
    /// The moment is the whole pipeline's queue emptying (other connectors'
    /// messages included), 5 s at most: what is stored after the connector
    /// disconnected is kept, but its acknowledgement finds nobody, so a
    /// broker that redelivers (a persistent session) sends it again to the
    /// connector started next: a duplicate, never a loss.
    pub async fn stop_connector(&mut self, name: &str) -> bool {
        let Some(c) = self.connectors.iter_mut().find(|c| c.name == name && c.task.is_some()) else { return false };
        c.stop_intake.cancel();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pipeline.queued() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.finish().await;
        tracing::info!(connector = name, "connector stopped");
        true
    }

    /// Read connector `name`'s configuration again (its file as it is now)
    /// and, when it changed, restart that connector alone with it: its new
    /// converters are loaded and checked while the old connector runs; then
    /// the old one stops as [`Gateway::stop_connector`] stops it, and the new
    /// one starts, with the same counters. A configuration that does not
    /// read or whose converters do not load is refused with every problem
    /// found, and the running connector goes on. Other connectors, the
    /// store and the ThingsBoard connection are not touched.
    pub async fn reload_connector(&mut self, name: &str) -> Result<Reload, String> {
        let index = self
            .config
            .connectors
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| format!("no connector named `{name}`"))?;
        let old = self.config.connectors[index].clone();
        let reread = tokio::task::spawn_blocking(move || old.reread()).await.map_err(|e| e.to_string())?;
        let new = match reread {
            Ok((new, notices)) => {
                for n in &notices.notices {
                    tracing::info!(connector = name, "{n}");
                }
                new
            }
            Err(d) => return Err(d.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
        };
        if new.document == self.config.connectors[index].document {
            return Ok(Reload::Unchanged);
        }
        self.restart_connector(index, new).await?;
        Ok(Reload::Restarted)
    }

    /// Restart connector `index` with `new`, read and checked.
    async fn restart_connector(&mut self, index: usize, new: ConnectorConfig) -> Result<(), String> {
        let name = new.name.clone();
        let registry = Registry::default();
        let (runtime, c, strategy) = (self.runtime.clone(), new.clone(), self.config.report_strategy);
        let uploads = self.uploads.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut loaded = Loaded {
                registry: registry.clone(),
                routes: Vec::new(),
                downlinks: Vec::new(),
                per_connector: Vec::new(),
            };
            let mine = load_connector(&runtime, &registry, &c, strategy, &mut loaded)?;
            // Its converters uploaded from ThingsBoard keep their versions.
            if let Some(u) = uploads {
                u.adopt(&registry.snapshot());
            }
            Ok::<_, ServiceError>((loaded, mine))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let (Loaded { registry, mut routes, downlinks, .. }, mut mine) = loaded;
        self.stop_connector(&name).await;
        // Indices in the router's and the pipeline's tables.
        let base = self.router.add_downlinks(downlinks);
        for r in &mut routes {
            if let Some(a) = &mut r.answers {
                *a += base;
            }
        }
        for (_, i) in &mut mine.downlinks {
            *i += base;
        }
        let ids = self.pipeline.add_routes(routes);
        mine.routes = mine.routes.iter().filter_map(|&local| ids.get(local).copied()).collect();
        self.registry.replace_connector(&name, registry.snapshot());
        let stats = self
            .connectors
            .iter()
            .find(|c| c.name == name && c.kind == new.kind)
            .map(|c| c.stats.clone())
            .unwrap_or_default();
        let (port, running) = launch(&new, mine, &self.pipeline, &self.device_requests, stats)
            .ok_or_else(|| "the gateway is stopping".to_owned())?;
        self.router.set_port(port);
        match self.connectors.iter_mut().find(|c| c.name == name) {
            Some(c) => *c = running,
            None => self.connectors.push(running),
        }
        self.config.connectors[index] = new;
        crate::remote_log::hub().set_sources(
            self.config.connectors.iter().map(|c| (c.name.clone(), c.remote_log)).collect(),
            self.registry.snapshot().into_iter().map(|r| (r.name, r.connector)).collect(),
        );
        Ok(())
    }

    /// Connector `name`'s configuration file changed: reload it; a
    /// restarted connector is on probation until it connects.
    async fn file_changed(&mut self, name: &str) {
        let Some(previous) = self.config.connectors.iter().find(|c| c.name == name).cloned() else { return };
        let file = previous.file.as_deref().map(|f| f.display().to_string()).unwrap_or_default();
        match self.reload_connector(name).await {
            Ok(Reload::Unchanged) => {
                tracing::info!(connector = name, "{file} changed, but not the configuration it holds: nothing to do")
            }
            Ok(Reload::Restarted) => {
                tracing::info!(connector = name, "{file} changed: connector restarted with its new configuration");
                self.probation.retain(|p| p.previous.name != name);
                self.probation.push(Probation { previous, until: Instant::now() + PROBATION, file: None });
            }
            Err(e) => tracing::error!(
                connector = name,
                "{file} changed, and its new configuration is refused (the connector goes on with the one it runs): {e}"
            ),
        }
    }

    /// Connectors on probation that connected pass; those still not
    /// connected after [`PROBATION`] go back to their configuration before
    /// (and their file to its content before, when remote configuration
    /// replaced it).
    async fn check_probation(&mut self) {
        let now = Instant::now();
        let connectors = &self.connectors;
        let (mut keep, mut back) = (Vec::new(), Vec::new());
        for p in self.probation.drain(..) {
            let name = &p.previous.name;
            if connectors.iter().any(|c| c.name == *name && c.stats.connected.load(Ordering::Relaxed)) {
                tracing::info!(connector = name, "connected with its new configuration");
            } else if now >= p.until {
                back.push(p);
            } else {
                keep.push(p);
            }
        }
        self.probation = keep;
        for Probation { previous, file, .. } in back {
            let name = previous.name.clone();
            let Some(index) = self.config.connectors.iter().position(|c| c.name == name) else { continue };
            let restored = match (&file, &previous.file) {
                (Some(bytes), Some(path)) => match tbgw_wasm::cache::write_atomically(path, bytes) {
                    Ok(()) => "its file put back as it was",
                    Err(e) => {
                        tracing::error!(connector = name, "cannot put {} back: {e}", path.display());
                        "its file could not be put back"
                    }
                },
                _ => "the file keeps the new one; it is read again when it changes",
            };
            tracing::error!(
                target: "tbgw::audit",
                connector = name,
                decision = "rollback",
                "not connected {PROBATION:?} after its restart with a new configuration: back to the one before ({restored})"
            );
            if let Err(e) = self.restart_connector(index, previous).await {
                tracing::error!(connector = name, "the configuration before did not start again either: {e}");
            }
            if self.config.remote_configuration && file.is_some() {
                self.publish_attributes(serde_json::json!({
                    format!("{name}_CONFIG_ERROR"):
                        format!("not connected {PROBATION:?} after the restart: back to the configuration before"),
                    name.clone(): crate::remote_config::connector_attribute(&self.config.connectors[index], 0),
                }));
            }
        }
    }

    fn publish_attributes(&self, attributes: serde_json::Value) {
        let publish = tbgw_thingsboard::Command::Publish {
            topic: "v1/devices/me/attributes".into(),
            payload: attributes.to_string().into_bytes(),
        };
        if let Err(e) = self.client.send(publish) {
            tracing::warn!("the gateway's attributes were not sent: {e}");
        }
    }

    /// A new ThingsBoard session: the running configuration, and the
    /// request for the shared one.
    fn remote_session(&mut self) {
        let stats = self.client.stats();
        if !stats.connected || stats.sessions == self.remote.sessions {
            return;
        }
        self.remote.sessions = stats.sessions;
        let running: Vec<String> =
            self.connectors.iter().filter(|c| c.task.is_some()).map(|c| c.name.clone()).collect();
        let current = self.remote.current(&self.config, &running);
        self.publish_attributes(current);
        let (topic, payload) = crate::remote_config::RemoteConfig::request(&self.config, stats.sessions);
        if let Err(e) = self.client.send(tbgw_thingsboard::Command::Publish { topic, payload }) {
            tracing::warn!("the shared configuration was not asked for: {e}");
        }
    }

    /// The gateway device's shared attributes (pushed, or the answer to the
    /// session's request): remote configuration's part of them.
    async fn remote_attributes(&mut self, attributes: serde_json::Map<String, serde_json::Value>) {
        use crate::remote_config::{RemoteConfig, SHARED_KEYS};
        if !self.config.remote_configuration {
            return;
        }
        for (key, value) in attributes {
            // Applying the list twice does nothing: it needs no telling apart.
            if key == "active_connectors" {
                self.remote_active(&value).await;
            } else if self.remote.is_own(&key, &value) {
                continue;
            } else if SHARED_KEYS.contains(&key.as_str()) {
                let section = match key.as_str() {
                    "general_configuration" => "thingsboard",
                    "storage_configuration" => "storage",
                    "grpc_configuration" => "grpc",
                    _ => "logs",
                };
                let running = self.config.document.get(section).cloned().unwrap_or_default();
                let changed = crate::remote_config::changed_keys(&running, &value);
                if changed.is_empty() {
                    RemoteConfig::audit(&key, "noop", "the same as the running one");
                } else {
                    RemoteConfig::audit_reject(
                        &key,
                        &format!(
                            "{key} changes {changed:?}: tbgw reads `{section}` from {} at start, not from ThingsBoard",
                            self.config.file.display()
                        ),
                    );
                }
            } else if self.config.connectors.iter().any(|c| c.name == key) {
                self.remote_connector(&key, value).await;
            } else if value.get("configurationJson").is_some() {
                self.remote_reject(
                    &key,
                    "adding a connector from ThingsBoard is not supported yet: add it to the configuration file",
                );
            }
        }
    }

    fn remote_reject(&mut self, key: &str, why: &str) {
        crate::remote_config::RemoteConfig::audit_reject(key, why);
        self.publish_attributes(serde_json::json!({ format!("{key}_CONFIG_ERROR"): why }));
    }

    /// A connector's attribute from ThingsBoard.
    async fn remote_connector(&mut self, name: &str, value: serde_json::Value) {
        use crate::remote_config::{RemoteConfig, changed_keys, pushed_document, runs};
        let document = match pushed_document(&value) {
            Ok(d) => d,
            Err(e) => return self.remote_reject(name, &e),
        };
        let Some(index) = self.config.connectors.iter().position(|c| c.name == name) else { return };
        let c = self.config.connectors[index].clone();
        if runs(&c, &document) {
            RemoteConfig::audit(name, "noop", "the same as the running one: nothing restarted, nothing written");
        } else {
            let changed = changed_keys(&c.document, &document);
            let staged = match c.with_document(&document) {
                Ok(s) => s,
                Err(d) => {
                    let why = d.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    return self.remote_reject(name, &why);
                }
            };
            let before = c.file.as_ref().and_then(|f| std::fs::read(f).ok());
            if let Err(e) = self.restart_connector(index, staged.config.clone()).await {
                staged.discard();
                return self.remote_reject(name, &e);
            }
            if let Err(e) = staged.commit() {
                tracing::error!(connector = name, "the new configuration runs but was not written to its file: {e}");
            }
            RemoteConfig::audit(
                name,
                "apply",
                &format!("connector restarted with the new configuration; changed: {changed:?}"),
            );
            self.probation.retain(|p| p.previous.name != name);
            self.probation.push(Probation { previous: c, until: Instant::now() + PROBATION, file: before });
        }
        if let Some(echo) = self.remote.echo(name, &value) {
            self.publish_attributes(echo);
        }
    }

    /// `active_connectors` from ThingsBoard: stop those it leaves out, start
    /// those stopped so that it names again.
    async fn remote_active(&mut self, value: &serde_json::Value) {
        use crate::remote_config::RemoteConfig;
        let Some(list) = value.as_array() else {
            return self.remote_reject("active_connectors", "expected a list of connector names");
        };
        let wanted: Vec<&str> = list.iter().filter_map(serde_json::Value::as_str).collect();
        for index in 0..self.config.connectors.len() {
            let c = self.config.connectors[index].clone();
            let running = self.connectors.iter().any(|r| r.name == c.name && r.task.is_some());
            let listed = wanted.contains(&c.name.as_str());
            if running && !listed {
                self.stop_connector(&c.name).await;
                RemoteConfig::audit(&c.name, "stop", "left out of active_connectors: stopped");
            } else if !running && listed {
                match self.restart_connector(index, c.clone()).await {
                    Ok(()) => RemoteConfig::audit(&c.name, "start", "named in active_connectors again: started"),
                    Err(e) => self.remote_reject(&c.name, &e),
                }
            }
        }
        if let Some(echo) = self.remote.echo("active_connectors", value) {
            self.publish_attributes(echo);
        }
    }

    /// Stop everything, in the order that loses nothing.
    pub async fn stop(mut self) {
        tracing::info!("stopping: no new messages; converting and storing what was received");
        self.http_stop.cancel();
        if let Some(h) = self.http.take() {
            // It cuts its connections and ends: the port is free after.
            let _ = h.await;
        }
        if let Some(u) = &self.uploads {
            u.stop();
        }
        self.watch_stop.cancel();
        if let Some(w) = self.watcher.take() {
            // A swap in progress finishes first (it is short, and harmless).
            let _ = w.await;
        }
        for c in &self.connectors {
            c.stop_intake.cancel();
        }
        let mut pipeline = self.pipeline;
        let pipeline = tokio::task::spawn_blocking(move || {
            pipeline.drain();
            pipeline
        })
        .await
        .ok();
        for c in &mut self.connectors {
            c.finish().await;
        }
        self.router_stop.cancel();
        drop(self.queries);
        self.router.join().await;
        // Records still queued then stay unsent, as the Python gateway's.
        self.remote_log_stop.cancel();
        let _ = (&mut self.remote_log).await;
        self.client_stop.cancel();
        let delivered = self.client.stats().delivered;
        self.client.join().await;
        let store = self.store.clone();
        let store_done = tokio::task::spawn_blocking(move || {
            if let Err(e) = store.flush() {
                tracing::error!("flushing the event store: {e}");
            }
            store.close();
            store.stats()
        });
        if let Ok(s) = store_done.await {
            tracing::info!(
                "stopped after {:.0?}: {} events delivered, {} waiting in the store",
                self.started.elapsed(),
                delivered,
                s.records
            );
        }
        drop(pipeline);
    }
}

/// Run the gateway until `shutdown` is cancelled (or ThingsBoard asks for a
/// restart), then stop in order.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> Result<Stopped, ServiceError> {
    let mut gateway = Gateway::build(config).await?;
    let stopped = gateway.run(&shutdown).await;
    if stopped == Stopped::Restart {
        tracing::info!("restarting: stopping first");
    }
    gateway.stop().await;
    Ok(stopped)
}
