//! The router: every request from ThingsBoard to its answer, and devices'
//! own requests to ThingsBoard.
//!
//! ```text
//! ThingsBoard ─▶ client ─(Incoming)─▶ router ─▶ device registry: which connector owns the device?
//!     ─▶ downlink converter `convert` (wasm, on the downlink thread) ─▶ connector (DeviceJob) ─▶ device
//!     ◀─ v1/gateway/rpc {"device","id","data"} ◀─ downlink converter `reply` ◀─ the device's answers (or why not)
//! ```
//!
//! - `v1/gateway/rpc` (server-side RPC): answered always, with the reply
//!   the downlink converter makes of the device's answers (`reply`: the
//!   value read, `{"success":true}` once sent, ...), or
//!   `{"success":false,"error":"..."}` saying why not: an unknown device, a
//!   connector without a downlink converter, a request no entry matches, a
//!   connector not connected to its broker (at once, not after a timeout),
//!   no answer from the device in time.
//! - `v1/gateway/attributes` (shared attribute update): sent to the device;
//!   failures are counted and logged.
//! - `v1/devices/me/attributes` and `v1/devices/me/attributes/response/+`
//!   (the gateway device's shared attributes): `RemoteLoggingLevel` to
//!   [`crate::remote_log`].
//! - `v1/devices/me/rpc/request/{id}` (RPC to the gateway): `gateway_ping`,
//!   `gateway_stats`, `gateway_devices`, `gateway_version`,
//!   `gateway_converters`, `gateway_restart`; `<type>_<method>` (e.g.
//!   `mqtt_publish`) goes to the first connector of that type (or the one
//!   named by `params.connector`).
//! - devices' own requests (from the converters, through the pipeline, and
//!   from connectors that announce their devices): connect and disconnect,
//!   and attribute requests, whose answer (`v1/gateway/attributes/response`,
//!   either shape) goes through the downlink converter of the connector that
//!   asked (`attribute-response`) back to the device.
//!
//! Downlink converters run on one dedicated thread (wasm calls never run on
//! tokio's threads), taking every request (and answer to reply to) queued as
//! one batch per converter.
//! Each request is served by a task of its own, so a slow device never
//! delays another's request.

use crate::service::ServiceQuery;
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tbgw_core::connector::ConnectorStats;
use tbgw_core::downlink::{DeviceJob, DeviceRegistry, FromDevice, JobKind, ToConnector};
use tbgw_core::setup::Devices;
use tbgw_core::{
    AttributeRequest, AttributeResponse, DeviceRequest, DownlinkMessage, DownlinkRequest, RawUplink, RpcAnswer,
    RpcRequest,
};
use tbgw_thingsboard::codec;
use tbgw_thingsboard::{Command, CommandSender, Incoming};
use tbgw_wasm::DownlinkConverter;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const RPC_TOPIC: &str = "v1/gateway/rpc";
const ATTRIBUTES_TOPIC: &str = "v1/gateway/attributes";
const ATTRIBUTES_RESPONSE_TOPIC: &str = "v1/gateway/attributes/response";
const ATTRIBUTES_REQUEST_TOPIC: &str = "v1/gateway/attributes/request";
const OWN_ATTRIBUTES_TOPIC: &str = "v1/devices/me/attributes";
const OWN_ATTRIBUTES_RESPONSE_PREFIX: &str = "v1/devices/me/attributes/response/";
const OWN_RPC_PREFIX: &str = "v1/devices/me/rpc/request/";
const OWN_RPC_RESPONSE_PREFIX: &str = "v1/devices/me/rpc/response/";
/// How long a device's attribute request waits for ThingsBoard.
const ATTRIBUTE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a request may wait for its connector's answer beyond the
/// longest answer timeout its messages set: connectors answer by their own
/// deadlines (a two-way RPC's `responseTimeout`); this only guards against
/// a connector that never does.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// A connector as the router sees it.
pub struct Port {
    pub name: String,
    /// Its type (`mqtt`): the prefix of its connector RPCs.
    pub kind: &'static str,
    pub jobs: mpsc::Sender<ToConnector>,
    /// Its downlink converters (indices into the router's) and the devices
    /// each serves: the first that names a device serves it.
    pub downlinks: Vec<(Devices, usize)>,
    pub stats: Arc<ConnectorStats>,
}

impl Port {
    /// The downlink converter of `device`.
    fn downlink_of(&self, device: &str) -> Option<usize> {
        self.downlinks.iter().find(|(devices, _)| devices.contains(device)).map(|(_, i)| *i)
    }
}

/// Counters of the router, for statistics.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Requests from ThingsBoard (RPCs, attribute updates, gateway RPCs).
    pub requests: AtomicU64,
    /// Requests answered (or, for attribute updates, ended) with an error.
    pub errors: AtomicU64,
}

/// Work for the downlink converter thread.
struct ConvertJob {
    converter: usize,
    work: Work,
}

enum Work {
    /// The messages for a request.
    Convert(DownlinkRequest, oneshot::Sender<Result<Vec<DownlinkMessage>, String>>),
    /// ThingsBoard's reply to an RPC from the device's answers.
    Reply(RpcAnswer, oneshot::Sender<Result<String, String>>),
}

struct Shared {
    client: CommandSender,
    registry: Arc<DeviceRegistry>,
    /// A connector restarted with a new configuration gets a new port
    /// ([`Router::set_port`]).
    ports: RwLock<Vec<Arc<Port>>>,
    convert: flume::Sender<ConvertJob>,
    /// Every downlink converter, by index; it only grows
    /// ([`Router::add_downlinks`]).
    converters: Arc<RwLock<Vec<DownlinkConverter>>>,
    /// Devices' attribute requests waiting for ThingsBoard, by id.
    attribute_requests: Mutex<HashMap<u64, Waiting>>,
    next_attribute_request: AtomicU64,
    service: mpsc::Sender<ServiceQuery>,
    restart: CancellationToken,
    stats: Arc<RouterStats>,
    /// `thingsboard.handleDeviceRenaming`.
    follow_renames: bool,
    /// The gateway device's shared attributes other than
    /// `RemoteLoggingLevel`, in order, for remote configuration (unbounded:
    /// ThingsBoard pushes them by hand, and none may be dropped).
    own_attributes: mpsc::UnboundedSender<serde_json::Map<String, Json>>,
}

impl Shared {
    fn ports(&self) -> Vec<Arc<Port>> {
        self.ports.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn port(&self, connector: &str) -> Option<Arc<Port>> {
        self.ports.read().unwrap_or_else(|e| e.into_inner()).iter().find(|p| p.name == connector).cloned()
    }
}

/// A device's attribute request waiting for ThingsBoard.
struct Waiting {
    /// The connector that asked.
    connector: Arc<str>,
    /// The downlink converter that answers, when not the device's own.
    answered_by: Option<usize>,
    request: AttributeRequest,
}

/// The running router.
pub struct Router {
    task: tokio::task::JoinHandle<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    pub stats: Arc<RouterStats>,
}

impl Router {
    /// Start routing. `converters` are every connector's downlink
    /// converters, as the ports name them; `restart` is cancelled by
    /// `gateway_restart`; `service` answers `gateway_stats` and
    /// `gateway_converters`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        ports: Vec<Port>,
        converters: Vec<DownlinkConverter>,
        incoming: mpsc::UnboundedReceiver<Incoming>,
        device_requests: mpsc::UnboundedReceiver<FromDevice>,
        client: CommandSender,
        registry: Arc<DeviceRegistry>,
        service: mpsc::Sender<ServiceQuery>,
        restart: CancellationToken,
        shutdown: CancellationToken,
        follow_renames: bool,
        own_attributes: mpsc::UnboundedSender<serde_json::Map<String, Json>>,
    ) -> std::io::Result<Router> {
        let (convert, jobs) = flume::bounded::<ConvertJob>(4096);
        let converters = Arc::new(RwLock::new(converters));
        let thread = {
            let converters = converters.clone();
            std::thread::Builder::new().name("tbgw-downlink".into()).spawn(move || convert_thread(jobs, &converters))?
        };
        let stats = Arc::new(RouterStats::default());
        let shared = Arc::new(Shared {
            client,
            registry,
            ports: RwLock::new(ports.into_iter().map(Arc::new).collect()),
            convert,
            converters,
            attribute_requests: Mutex::new(HashMap::new()),
            next_attribute_request: AtomicU64::new(1),
            service,
            restart,
            stats: stats.clone(),
            follow_renames,
            own_attributes,
        });
        let task = tokio::spawn(route(shared.clone(), incoming, device_requests, shutdown));
        Ok(Router { task, thread: Some(thread), shared, stats })
    }

    /// Add downlink converters (a connector restarted with a new
    /// configuration); the index of the first, for its port's `downlinks`.
    pub fn add_downlinks(&self, converters: Vec<DownlinkConverter>) -> usize {
        let mut all = self.shared.converters.write().unwrap_or_else(|e| e.into_inner());
        let first = all.len();
        all.extend(converters);
        first
    }

    /// Requests for `port.name` go to `port` from now on.
    pub fn set_port(&self, port: Port) {
        let mut ports = self.shared.ports.write().unwrap_or_else(|e| e.into_inner());
        match ports.iter_mut().find(|p| p.name == port.name) {
            Some(p) => *p = Arc::new(port),
            None => ports.push(Arc::new(port)),
        }
    }

    /// Wait for the router to stop (after the shutdown token).
    pub async fn join(self) {
        let Router { task, thread, shared, .. } = self;
        let _ = task.await;
        // The downlink thread ends when the last sender of its jobs goes:
        // the one here is among them.
        drop(shared);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// The downlink converters' thread: every queued request, one `convert`
/// call per converter; every queued answer, one `reply` call.
fn convert_thread(jobs: flume::Receiver<ConvertJob>, converters: &RwLock<Vec<DownlinkConverter>>) {
    let mut workers = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter().take(255));
        // Converters added since (a connector restarted): their workers.
        if batch.iter().any(|j| j.converter >= workers.len()) {
            let all = converters.read().unwrap_or_else(|e| e.into_inner());
            workers.extend(all[workers.len().min(all.len())..].iter().map(|c| c.worker()));
        }
        for (i, worker) in workers.iter_mut().enumerate() {
            let (mine, rest): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| j.converter == i);
            batch = rest;
            if mine.is_empty() {
                continue;
            }
            let mut requests = Vec::new();
            let mut answers = Vec::new();
            for job in mine {
                match job.work {
                    Work::Convert(request, reply) => requests.push((request, reply)),
                    Work::Reply(answer, reply) => answers.push((answer, reply)),
                }
            }
            if !requests.is_empty() {
                let (requests, replies): (Vec<_>, Vec<_>) = requests.into_iter().unzip();
                for (result, reply) in worker.convert(&requests).into_iter().zip(replies) {
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            }
            if !answers.is_empty() {
                let (answers, replies): (Vec<_>, Vec<_>) = answers.into_iter().unzip();
                for (result, reply) in worker.reply(&answers).into_iter().zip(replies) {
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            }
        }
    }
}

async fn route(
    shared: Arc<Shared>,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    mut device_requests: mpsc::UnboundedReceiver<FromDevice>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = incoming.recv() => from_thingsboard(&shared, msg),
            Some(request) = device_requests.recv() => from_device(&shared, request),
            else => break,
        }
    }
    // Whatever waits for ThingsBoard now gets no answer: say so.
    let waiting: Vec<_> = shared.attribute_requests.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
    for (_, Waiting { connector, request, .. }) in waiting {
        tracing::debug!(connector = %connector, device = request.device, "attribute request unanswered: the gateway is stopping");
    }
}

fn publish(shared: &Shared, topic: String, payload: Vec<u8>) {
    if let Err(e) = shared.client.send(Command::Publish { topic: topic.clone(), payload }) {
        tracing::warn!("cannot send to ThingsBoard on {topic}: {e}");
    }
}

fn from_thingsboard(shared: &Arc<Shared>, msg: Incoming) {
    match msg.topic.as_str() {
        // A plain broker standing in for ThingsBoard sends the gateway its
        // own publishes back: RPC replies (`id` at the top) and client
        // attributes (no `device`). They are not requests.
        RPC_TOPIC | ATTRIBUTES_TOPIC if !is_request(&msg.payload) => {
            tracing::trace!(topic = msg.topic, "not a request (the gateway's own publish, echoed)");
        }
        RPC_TOPIC => {
            shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            let why = match codec::parse_request(&msg.payload) {
                Ok(DownlinkRequest::Rpc(rpc)) => {
                    tokio::spawn(device_rpc(shared.clone(), rpc));
                    None
                }
                Ok(_) => Some("no `data.method`".to_owned()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                // Answer it if it says who and which request it is.
                let doc: Json = serde_json::from_slice(&msg.payload).unwrap_or(Json::Null);
                let (device, id) = (doc["device"].as_str(), doc["data"]["id"].as_i64());
                tracing::warn!("an RPC from ThingsBoard that cannot be read: {why}");
                if let (Some(device), Some(id)) = (device, id) {
                    let data = json!({"success": false, "error": format!("tbgw cannot read this RPC: {why}")});
                    publish(shared, RPC_TOPIC.into(), codec::rpc_reply(device, id, &data));
                }
            }
        }
        ATTRIBUTES_TOPIC => {
            shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            match codec::parse_request(&msg.payload) {
                Ok(request @ DownlinkRequest::AttributeUpdate(_)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let device = request.device().to_owned();
                        if let Err(e) = serve(&shared, request, JobKind::AttributeUpdate).await {
                            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(device, "shared attribute update not delivered: {e}");
                        }
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("a shared attribute update from ThingsBoard that cannot be read: {e}");
                }
            }
        }
        ATTRIBUTES_RESPONSE_TOPIC => attribute_response(shared, &msg.payload),
        OWN_ATTRIBUTES_TOPIC => own_attributes(shared, &msg.payload, false),
        topic if topic.starts_with(OWN_ATTRIBUTES_RESPONSE_PREFIX) => own_attributes(shared, &msg.payload, true),
        topic => match topic.strip_prefix(OWN_RPC_PREFIX) {
            // The gateway's own client-side RPC, echoed by a plain broker.
            Some(_) if msg.payload.windows(16).any(|w| w == b"getSessionLimits") => {}
            Some(id) => {
                shared.stats.requests.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(own_rpc(shared.clone(), id.to_owned(), msg.payload));
            }
            None => tracing::debug!(topic, "a message from ThingsBoard on a topic tbgw does not serve"),
        },
    }
}

/// The gateway device's shared attributes: an update
/// (`{"RemoteLoggingLevel":"DEBUG"}`, `{"deleted":["RemoteLoggingLevel"]}`)
/// or, when `response`, the answer to the client's request
/// (`{"shared":{...}}`). Other keys (and the gateway's own client
/// attributes, echoed by a plain broker) are not tbgw's to apply.
fn own_attributes(shared: &Shared, payload: &[u8], response: bool) {
    let Ok(Json::Object(mut doc)) = serde_json::from_slice::<Json>(payload) else {
        tracing::warn!("the gateway's shared attributes from ThingsBoard cannot be read: not a JSON object");
        return;
    };
    if response {
        let Some(Json::Object(shared)) = doc.remove("shared") else { return };
        doc = shared;
    }
    let deleted = doc
        .get("deleted")
        .and_then(Json::as_array)
        .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some("RemoteLoggingLevel")));
    let hub = crate::remote_log::hub();
    match doc.get("RemoteLoggingLevel") {
        Some(Json::String(name)) => match crate::remote_log::parse_level(name) {
            Some(level) => {
                if hub.gateway_level() != level {
                    hub.set_gateway_level(level);
                    tracing::info!("remote logging level set to {}", name.trim().to_ascii_uppercase());
                }
            }
            None => tracing::warn!(
                "RemoteLoggingLevel `{name}` is not a level ({}); remote logging stays as it was",
                crate::remote_log::LEVEL_NAMES
            ),
        },
        Some(other) => tracing::warn!(
            "RemoteLoggingLevel must be a level name ({}), found {other}; remote logging stays as it was",
            crate::remote_log::LEVEL_NAMES
        ),
        None if deleted => {
            hub.set_gateway_level(crate::remote_log::NONE);
            tracing::info!("RemoteLoggingLevel deleted: remote logging off");
        }
        None => {}
    }
    // The rest is remote configuration's, the service's to decide.
    doc.remove("RemoteLoggingLevel");
    if !doc.is_empty() {
        // Closed only while the gateway stops.
        let _ = shared.own_attributes.send(doc);
    }
}

/// Whether a payload on `v1/gateway/rpc` or `v1/gateway/attributes` is a
/// request (`{"device":..,"data":{..}}`) rather than one of the gateway's
/// own publishes (`{"device":..,"id":..,"data":..}`, `{"Device A":{..}}`).
fn is_request(payload: &[u8]) -> bool {
    match serde_json::from_slice::<Json>(payload) {
        Ok(Json::Object(o)) => o.contains_key("device") && o.contains_key("data") && !o.contains_key("id"),
        // Malformed: a request that cannot be read, reported as such.
        _ => true,
    }
}

/// A server-side RPC for a device, answered whatever happens.
async fn device_rpc(shared: Arc<Shared>, rpc: RpcRequest) {
    let (device, id) = (rpc.device.clone(), rpc.id);
    let data = match rpc_reply(&shared, rpc).await {
        Ok(reply) => serde_json::from_str(&reply).unwrap_or(Json::String(reply)),
        Err(e) => {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(device, id, "RPC answered with an error: {e}");
            json!({"success": false, "error": e})
        }
    };
    publish(&shared, RPC_TOPIC.into(), codec::rpc_reply(&device, id, &data));
}

/// An RPC served and its reply made by the device's downlink converter.
async fn rpc_reply(shared: &Shared, rpc: RpcRequest) -> Result<String, String> {
    let kind = JobKind::Rpc { id: rpc.id, method: rpc.method.clone() };
    let (converter, request, answers) = serve(shared, DownlinkRequest::Rpc(rpc), kind).await?;
    let DownlinkRequest::Rpc(request) = request else { unreachable!("served as it came") };
    let (tx, rx) = oneshot::channel();
    let work = Work::Reply(RpcAnswer { request, answers }, tx);
    shared
        .convert
        .send_async(ConvertJob { converter, work })
        .await
        .map_err(|_| "the gateway is stopping".to_owned())?;
    rx.await.map_err(|_| "the downlink converter thread stopped".to_owned())?
}

/// Route a request to its device: registry, converter, connector. Returns
/// the device's downlink converter, the request as it saw it (under the
/// connector's name for the device) and what the device answered.
async fn serve(
    shared: &Shared,
    mut request: DownlinkRequest,
    kind: JobKind,
) -> Result<(usize, DownlinkRequest, Vec<RawUplink>), String> {
    // ThingsBoard's name for the device; the connector's may differ (renamed).
    let shown = request.device().to_owned();
    let (device, record) = shared
        .registry
        .resolve(&shown)
        .ok_or_else(|| format!("unknown device `{shown}`: no connector of this gateway has connected it"))?;
    request.set_device(device);
    let port = shared.port(&record.connector).ok_or_else(|| {
        format!("device `{}` belongs to connector `{}`, which is not running", request.device(), record.connector)
    })?;
    serve_on(shared, port, None, request, kind).await
}

/// Serve `request` on the connector `port`: the downlink converter
/// `converter`, else the device's, makes the messages, the connector sends
/// them and says what the device answered. Returns the converter, the
/// request and the answers.
async fn serve_on(
    shared: &Shared,
    port: Arc<Port>,
    converter: Option<usize>,
    request: DownlinkRequest,
    kind: JobKind,
) -> Result<(usize, DownlinkRequest, Vec<RawUplink>), String> {
    let Some(converter) = converter.or_else(|| port.downlink_of(request.device())) else {
        return Err(format!(
            "connector `{}` has no downlink converter for `{}`: it sends nothing to it",
            port.name,
            request.device()
        ));
    };
    if !port.stats.connected.load(Ordering::Relaxed) {
        return Err(format!("connector `{}` is not connected to its devices", port.name));
    }
    let (tx, rx) = oneshot::channel();
    shared
        .convert
        .send_async(ConvertJob { converter, work: Work::Convert(request.clone(), tx) })
        .await
        .map_err(|_| "the gateway is stopping".to_owned())?;
    let messages = rx.await.map_err(|_| "the downlink converter thread stopped".to_owned())??;
    let answers_within = messages.iter().filter_map(DownlinkMessage::answer_timeout_ms).max().unwrap_or(0);
    let timeout = JOB_TIMEOUT + Duration::from_millis(u64::from(answers_within));
    let (tx, rx) = oneshot::channel();
    let job = DeviceJob { device: request.device().to_owned(), kind, messages, reply: tx };
    port.jobs.try_send(ToConnector::Device(job)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => format!("connector `{}` has too many requests waiting", port.name),
        mpsc::error::TrySendError::Closed(_) => format!("connector `{}` has stopped", port.name),
    })?;
    let answers = match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(outcome)) => outcome?,
        Ok(Err(_)) => return Err(format!("connector `{}` stopped before answering", port.name)),
        Err(_) => return Err(format!("connector `{}` did not answer in {timeout:?}", port.name)),
    };
    Ok((converter, request, answers))
}

fn from_device(shared: &Arc<Shared>, from: FromDevice) {
    let FromDevice { connector, answered_by, request } = from;
    match request {
        DeviceRequest::Connect { device, device_type } => {
            tracing::debug!(connector = %connector, device, "device connects");
            let command = Command::Connect { device: device.clone(), device_type, connector: connector.to_string() };
            if let Err(e) = shared.client.send(command) {
                tracing::warn!(device, connector = %connector, "cannot connect the device in ThingsBoard: {e}");
            }
        }
        DeviceRequest::Disconnect { device } => {
            tracing::debug!(connector = %connector, device, "device disconnects");
            if let Err(e) = shared.client.send(Command::Disconnect { device: device.clone() }) {
                tracing::warn!(device, connector = %connector, "cannot disconnect the device in ThingsBoard: {e}");
            }
        }
        DeviceRequest::Attributes(request) => {
            let id = shared.next_attribute_request.fetch_add(1, Ordering::Relaxed);
            let shown = shared.registry.renamed(&request.device).unwrap_or_else(|| request.device.clone());
            let payload = codec::attribute_request(id, &shown, request.client, &request.keys);
            shared
                .attribute_requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Waiting { connector, answered_by, request });
            publish(shared, ATTRIBUTES_REQUEST_TOPIC.into(), payload);
            // Weak: a request waiting must not keep the router (and its
            // downlink thread, which a stop joins) alive for its timeout.
            let shared = Arc::downgrade(shared);
            tokio::spawn(async move {
                tokio::time::sleep(ATTRIBUTE_REQUEST_TIMEOUT).await;
                let Some(shared) = shared.upgrade() else { return };
                let late = shared.attribute_requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let Some(Waiting { connector, request, .. }) = late {
                    tracing::warn!(
                        connector = %connector,
                        device = request.device,
                        "attribute request {:?}: ThingsBoard did not answer in {ATTRIBUTE_REQUEST_TIMEOUT:?}",
                        request.keys
                    );
                }
            });
        }
    }
}

/// ThingsBoard answered a device's attribute request: the answer goes to
/// the device through its connector's downlink converter.
fn attribute_response(shared: &Arc<Shared>, payload: &[u8]) {
    let response = match codec::parse_attribute_response(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("an answer to an attribute request that cannot be read: {e}");
            return;
        }
    };
    let waiting = shared.attribute_requests.lock().unwrap_or_else(|e| e.into_inner()).remove(&response.id);
    let Some(Waiting { connector, answered_by, request }) = waiting else {
        tracing::debug!(id = response.id, "an answer to an attribute request nobody waits for");
        return;
    };
    let values = match (response.values, response.value) {
        (Some(values), _) => values,
        (None, Some(value)) => {
            request.keys.first().map(|k| [(k.clone(), value)].into_iter().collect()).unwrap_or_default()
        }
        (None, None) => Default::default(),
    };
    let Some(port) = shared.port(&connector) else { return };
    let answer = DownlinkRequest::AttributeResponse(AttributeResponse {
        device: request.device.clone(),
        keys: request.keys,
        values: codec::entries(&values),
        context: request.context,
    });
    let shared = shared.clone();
    tokio::spawn(async move {
        let device = answer.device().to_owned();
        if let Err(e) = serve_on(&shared, port, answered_by, answer, JobKind::AttributeResponse).await {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(connector = %connector, device, "answering an attribute request: {e}");
        }
    });
}

/// An RPC to the gateway device itself.
async fn own_rpc(shared: Arc<Shared>, id: String, payload: Vec<u8>) {
    let answer = match codec::parse_own_rpc(&payload) {
        Ok((method, params)) => own_method(&shared, &method, params).await,
        Err(e) => json!({"error": format!("cannot read the request: {e}"), "code": 400}),
    };
    if answer.get("error").is_some() {
        shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    publish(&shared, format!("{OWN_RPC_RESPONSE_PREFIX}{id}"), answer.to_string().into_bytes());
}

async fn ask(shared: &Shared, query: impl FnOnce(oneshot::Sender<Json>) -> ServiceQuery) -> Option<Json> {
    let (tx, rx) = oneshot::channel();
    shared.service.send(query(tx)).await.ok()?;
    rx.await.ok()
}

async fn own_method(shared: &Shared, method: &str, params: Json) -> Json {
    match method {
        "gateway_ping" => json!({"code": 200, "resp": "pong"}),
        "gateway_version" => {
            json!({"code": 200, "resp": {"current_version": env!("CARGO_PKG_VERSION"), "name": "tbgw"}})
        }
        "gateway_devices" => {
            // By ThingsBoard's names.
            let devices: serde_json::Map<String, Json> = shared
                .registry
                .snapshot()
                .into_iter()
                .map(|(name, r)| (r.renamed.unwrap_or(name), Json::String(r.connector)))
                .collect();
            json!({"code": 200, "resp": devices})
        }
        "gateway_stats" => match ask(shared, ServiceQuery::Stats).await {
            Some(stats) => json!({"code": 200, "resp": stats}),
            None => json!({"error": "the gateway is stopping", "code": 503}),
        },
        // Lists them; `{"rollback": "<name>"}` rolls an uploaded one back.
        "gateway_converters" => {
            let answer = match params.get("rollback") {
                None | Some(Json::Null) => {
                    ask(shared, ServiceQuery::Converters).await.map(|list| json!({"code": 200, "resp": list}))
                }
                Some(Json::String(name)) => {
                    let name = name.clone();
                    ask(shared, |tx| ServiceQuery::Rollback(name, tx)).await
                }
                Some(other) => {
                    Some(json!({"error": format!("params.rollback: a converter's name, found {other}"), "code": 400}))
                }
            };
            answer.unwrap_or_else(|| json!({"error": "the gateway is stopping", "code": 503}))
        }
        "gateway_converter_upload" => ask(shared, |tx| ServiceQuery::Upload(params, tx))
            .await
            .unwrap_or_else(|| json!({"error": "the gateway is stopping", "code": 503})),
        "gateway_restart" => {
            tracing::info!("restart requested by ThingsBoard (gateway_restart)");
            let restart = shared.restart.clone();
            tokio::spawn(async move {
                // Let the answer go out first.
                tokio::time::sleep(Duration::from_millis(500)).await;
                restart.cancel();
            });
            json!({"success": true})
        }
        // ThingsBoard deleted one of the gateway's devices: forget it, so
        // that its next data creates it again. Params: its name.
        "gateway_device_deleted" => {
            let device = match &params {
                Json::String(name) => Some(name.clone()),
                Json::Object(o) => {
                    o.get("deviceName").or_else(|| o.get("device")).and_then(Json::as_str).map(str::to_owned)
                }
                _ => None,
            };
            let Some(shown) = device else {
                return json!({"error": "params: the deleted device's name", "code": 400});
            };
            let device = shared.registry.resolve(&shown).map_or(shown, |(local, _)| local);
            tracing::info!(device, "ThingsBoard deleted the device: forgotten until it sends data again");
            match shared.client.send(Command::Forget { device }) {
                Ok(()) => json!({"success": true}),
                Err(e) => json!({"error": e.to_string(), "code": 503}),
            }
        }
        // A user renamed one of the gateway's devices in ThingsBoard:
        // params `{"<old name>": "<new name>"}`. Its data go under the new
        // name, and requests for the new name reach it, as the Python
        // gateway does (the connector keeps calling it by its own name).
        "gateway_device_renamed" => {
            let rename = match &params {
                Json::Object(o) if o.len() == 1 => {
                    o.iter().next().and_then(|(from, to)| Some((from.clone(), to.as_str()?.to_owned())))
                }
                _ => None,
            };
            let Some((from, to)) = rename else {
                return json!({"error": "params: {\"<old name>\": \"<new name>\"}", "code": 400});
            };
            if !shared.follow_renames {
                tracing::info!("ThingsBoard renamed `{from}` to `{to}`; not followed (handleDeviceRenaming: false)");
                return json!({"success": true});
            }
            // In the registry at once, so the next request finds the new name.
            let Some((device, _)) = shared.registry.rename(&from, &to) else {
                return json!({"error": format!("unknown device `{from}`"), "code": 404});
            };
            tracing::info!(device, "ThingsBoard renamed `{from}` to `{to}`: its data go under the new name");
            match shared.client.send(Command::Remember { device }) {
                Ok(()) => json!({"success": true}),
                Err(e) => json!({"error": e.to_string(), "code": 503}),
            }
        }
        "gateway_reboot" => json!({
            "error": "not supported: tbgw does not reboot the machine it runs on; gateway_restart restarts tbgw",
            "code": 501
        }),
        other => match other.split_once('_') {
            Some((kind, rest)) if shared.ports().iter().any(|p| p.kind == kind) => {
                connector_rpc(shared, kind, rest, params).await
            }
            _ => json!({"error": format!("Method not found: `{other}`"), "code": 404}),
        },
    }
}

async fn connector_rpc(shared: &Shared, kind: &str, method: &str, params: Json) -> Json {
    let wanted = params.get("connector").and_then(Json::as_str);
    let ports = shared.ports();
    let Some(port) = ports.iter().find(|p| p.kind == kind && wanted.is_none_or(|w| w == p.name)) else {
        return json!({"error": format!("no {kind} connector named `{}`", wanted.unwrap_or_default()), "code": 404});
    };
    let (tx, rx) = oneshot::channel();
    let request = ToConnector::ConnectorRpc { method: method.to_owned(), params: params.to_string(), reply: tx };
    if port.jobs.try_send(request).is_err() {
        return json!({"error": format!("connector `{}` cannot take requests now", port.name), "code": 503});
    }
    match tokio::time::timeout(JOB_TIMEOUT, rx).await {
        Ok(Ok(Ok(answer))) => serde_json::from_str(&answer).unwrap_or(Json::String(answer)),
        Ok(Ok(Err(e))) => json!({"error": e, "code": 500}),
        _ => json!({"error": format!("connector `{}` did not answer", port.name), "code": 504}),
    }
}
