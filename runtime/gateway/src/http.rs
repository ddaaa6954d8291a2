//! The optional HTTP listener (`tbgw.http`): a gateway one can see into
//! without logging in to its machine.
//!
//! - `GET /metrics`: every counter of the [`Status`] snapshot in the
//!   OpenMetrics text format that Prometheus scrapes, encoded by the
//!   `prometheus-client` crate (the snapshot is taken at each scrape, so the
//!   numbers are the ones the statistics publish).
//! - `GET /healthz`: 200 while the process serves (a Docker HEALTHCHECK, a
//!   Kubernetes liveness probe).
//! - `GET /readyz`: 200 when ThingsBoard is connected, the store has room
//!   and every connector is connected; 503 with the reasons otherwise (a
//!   readiness probe).
//! - `GET /`: the status page ([`crate::page`]), for a person.
//!
//! Off by default; on, it listens on loopback unless told otherwise. The
//! server is deliberately small: HTTP/1.1, GET only, one request per
//! connection, a request head of at most 8 KiB, at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once) and each done
//! within [`DEADLINE`] or dropped, so slow clients cannot hold the gateway's
//! file descriptors. It asks the service for the snapshot through the same
//! query channel as the router's `gateway_stats` (without waiting for room
//! in it: a full channel answers 503), so it never touches the gateway's
//! state itself. Label values (connector and converter names) are escaped
//! here: the encoder writes them as given.

use crate::page::Rates;
use crate::service::ServiceQuery;
use crate::status::Status;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The listener's default address when `tbgw.http` names none.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9870";
const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection's whole life: request, snapshot, reply.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Serve until `shutdown`.
pub async fn serve(listener: TcpListener, queries: mpsc::Sender<ServiceQuery>, shutdown: CancellationToken) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let rates = std::sync::Arc::new(std::sync::Mutex::new(Rates::default()));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("HTTP listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Finished connections' results, so the set does not grow.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(socket);
            continue;
        };
        let (queries, rates) = (queries.clone(), rates.clone());
        connections.spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(socket, queries, rates)).await;
            drop(slot);
        });
    }
    // Stopping: those in progress are cut (the service no longer answers).
    connections.shutdown().await;
}

async fn answer(mut socket: TcpStream, queries: mpsc::Sender<ServiceQuery>, rates: SharedRates) {
    let Some(head) = read_head(&mut socket).await else { return };
    let (status, content_type, body) = route(&head, &queries, &rates).await;
    let allow = if status.starts_with("405") { "Allow: GET\r\n" } else { "" };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.write_all(body.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// The request head (up to the blank line), or `None` for a connection
/// that sent none in time or too much.
async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

type SharedRates = std::sync::Arc<std::sync::Mutex<Rates>>;

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn route(
    head: &str,
    queries: &mpsc::Sender<ServiceQuery>,
    rates: &SharedRates,
) -> (&'static str, &'static str, String) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" | "/metrics" | "/" => {
            let Some(status) = snapshot(queries).await else {
                return ("503 Service Unavailable", TEXT, "the gateway is busy or stopping\n".into());
            };
            if path == "/metrics" {
                return match metrics(status) {
                    Ok(text) => ("200 OK", OPENMETRICS, text),
                    Err(e) => ("500 Internal Server Error", TEXT, format!("encoding the metrics failed: {e}\n")),
                };
            }
            let reasons = not_ready(&status);
            if path == "/" {
                let mut rates = rates.lock().unwrap_or_else(|e| e.into_inner());
                return ("200 OK", HTML, crate::page::render(&status, &reasons, &mut rates));
            }
            let body = serde_json::json!({"ready": reasons.is_empty(), "reasons": reasons}).to_string() + "\n";
            if reasons.is_empty() { ("200 OK", JSON, body) } else { ("503 Service Unavailable", JSON, body) }
        }
        _ => ("404 Not Found", TEXT, "not found: try /, /metrics, /healthz or /readyz\n".into()),
    }
}

async fn snapshot(queries: &mpsc::Sender<ServiceQuery>) -> Option<Status> {
    let (tx, rx) = oneshot::channel();
    queries.try_send(ServiceQuery::Status(tx)).ok()?;
    tokio::time::timeout(Duration::from_secs(5), rx).await.ok()?.ok().map(|s| *s)
}

/// Why the gateway is not ready; empty when it is.
pub fn not_ready(status: &Status) -> Vec<String> {
    let mut reasons = Vec::new();
    if !status.client.connected {
        let why = status.client.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        reasons.push(format!("ThingsBoard is not connected{why}"));
    }
    if status.store_full {
        reasons.push(format!("the store is full ({} events waiting)", status.store.records));
    }
    for c in status.connectors.iter().filter(|c| c.running && !c.connected) {
        reasons.push(format!("connector `{}` is not connected", c.name));
    }
    reasons
}

/// The snapshot in the OpenMetrics text format.
pub fn metrics(status: Status) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("tbgw");
    registry.register_collector(Box::new(StatusMetrics(status)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct StatusMetrics(Status);

/// One metric: its samples, each with its labels.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, f64)>,
) -> Result<(), std::fmt::Error> {
    let value_of = |kind: MetricType, value: f64, sample: MetricEncoder| match kind {
        MetricType::Counter => ConstCounter::new(value).encode(sample),
        _ => ConstGauge::new(value).encode(sample),
    };
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    let samples: Vec<_> = samples.into_iter().collect();
    // An unlabelled sample is written without `{}`, which some parsers refuse.
    if let [(labels, value)] = samples.as_slice()
        && labels.is_empty()
    {
        return value_of(kind, *value, metric);
    }
    for (labels, value) in samples {
        let labels: Vec<(&str, String)> = labels.into_iter().map(|(k, v)| (k, escape(&v))).collect();
        value_of(kind, value, metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A label value as the text format wants it: `\`, `"` and line breaks escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Collector for StatusMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let s = &self.0;
        let one = |v: f64| [(Vec::new(), v)];
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        family(&mut e, "uptime_seconds", "Seconds since the gateway started", Gauge, one(s.uptime.as_secs_f64()))?;

        type PerConnector = fn(&crate::status::ConnectorStatus) -> f64;
        let connectors: [(&str, &str, MetricType, PerConnector); 15] = [
            (
                "connector_connected",
                "1 while the connector's link is up (MQTT: its broker; Modbus: a line; CAN: the bus)",
                Gauge,
                |c| f64::from(u8::from(c.connected)),
            ),
            ("connector_messages_received", "Messages received from devices", Counter, |c| c.received as f64),
            ("connector_messages_acked", "Messages confirmed to their source", Counter, |c| c.acked as f64),
            ("connector_messages_unmatched", "Messages that matched no mapping", Counter, |c| c.unmatched as f64),
            ("connector_messages_converted", "Messages converted", Counter, |c| c.converted as f64),
            ("connector_conversion_errors", "Messages that failed to convert", Counter, |c| c.conversion_errors as f64),
            ("connector_values_dropped", "Values converters left out", Counter, |c| c.dropped_values as f64),
            ("connector_values_not_reported", "Values held back by report strategies", Counter, |c| {
                c.not_reported as f64
            }),
            ("connector_events_stored", "Events stored for delivery", Counter, |c| c.stored as f64),
            ("connector_events_delivered", "Events ThingsBoard acknowledged", Counter, |c| c.delivered as f64),
            ("connector_sent_to_devices", "Messages sent to devices", Counter, |c| c.sent_to_devices as f64),
            ("connector_downlink_errors", "Requests for devices answered with an error", Counter, |c| {
                c.downlink_errors as f64
            }),
            ("connector_read_errors", "Polls a device refused or did not answer", Counter, |c| c.read_errors as f64),
            ("connector_reconnects", "Links made again after one was lost", Counter, |c| c.reconnects as f64),
            ("connector_bus_errors", "Error frames the bus reported (CAN)", Counter, |c| c.bus_errors as f64),
        ];
        for (name, help, kind, get) in connectors {
            let samples = s.connectors.iter().map(|c| (vec![("connector", c.name.clone())], get(c)));
            family(&mut e, name, help, kind, samples)?;
        }
        // Counts of one kind of connector: a family per name, over the
        // connectors that keep it.
        let mut extras: Vec<&str> = Vec::new();
        for x in s.connectors.iter().flat_map(|c| &c.extras) {
            if !extras.contains(&x.name) {
                extras.push(x.name);
            }
        }
        for name in extras {
            let mut samples = Vec::new();
            let mut described = None;
            for c in &s.connectors {
                if let Some(x) = c.extras.iter().find(|x| x.name == name) {
                    described.get_or_insert((x.help, if x.gauge { Gauge } else { Counter }));
                    samples.push((vec![("connector", c.name.clone())], x.value as f64));
                }
            }
            if let Some((help, kind)) = described {
                family(&mut e, &format!("connector_{name}"), help, kind, samples)?;
            }
        }

        type PerConverter = fn(&tbgw_wasm::ConverterInfo) -> f64;
        let converters: [(&str, &str, MetricType, PerConverter); 10] = [
            ("converter_calls", "Calls into the converter", Counter, |i| i.calls as f64),
            ("converter_messages", "Messages (or requests) the converter was given", Counter, |i| i.messages as f64),
            ("converter_message_errors", "Messages the converter failed", Counter, |i| i.message_errors as f64),
            ("converter_call_errors", "Calls that trapped, timed out or ran out of memory", Counter, |i| {
                i.call_errors as f64
            }),
            ("converter_busy_seconds", "Time spent in the converter", Counter, |i| i.busy_micros as f64 / 1e6),
            ("converter_instances", "Instances started", Counter, |i| i.instances as f64),
            ("converter_recycled_instances", "Instances replaced because their memory had grown", Counter, |i| {
                i.recycled as f64
            }),
            ("converter_swaps", "New versions swapped in", Counter, |i| i.swaps as f64),
            ("converter_generation", "The version serving: 1 first, +1 per swap", Gauge, |i| i.generation as f64),
            ("converter_memory_limit_bytes", "Linear memory an instance may use", Gauge, |i| {
                i.limits.memory_bytes as f64
            }),
        ];
        for (name, help, kind, get) in converters {
            let samples = s.converters.iter().map(|c| {
                let labels = vec![("converter", c.info.name.clone()), ("connector", c.connector.clone())];
                (labels, get(&c.info))
            });
            family(&mut e, name, help, kind, samples)?;
        }

        let st = &s.store;
        family(&mut e, "store_backlog_events", "Events waiting for delivery", Gauge, one(st.records as f64))?;
        family(&mut e, "store_backlog_bytes", "Bytes of the events waiting", Gauge, one(st.bytes as f64))?;
        family(&mut e, "store_dropped_events", "Events dropped to make room", Counter, one(st.dropped as f64))?;
        family(&mut e, "store_full", "1 while the store is at its bound", Gauge, one(flag(s.store_full)))?;
        family(
            &mut e,
            "dead_letters",
            "Messages kept because they failed to convert",
            Gauge,
            one(st.dead_letters as f64),
        )?;
        family(
            &mut e,
            "dead_letters_dropped",
            "Dead letters not kept (their bound)",
            Counter,
            one(st.dead_letters_dropped as f64),
        )?;

        let c = &s.client;
        family(&mut e, "thingsboard_connected", "1 while connected to ThingsBoard", Gauge, one(flag(c.connected)))?;
        family(&mut e, "thingsboard_sessions", "Connections made to ThingsBoard", Counter, one(c.sessions as f64))?;
        family(&mut e, "thingsboard_publishes", "Publishes to ThingsBoard", Counter, one(c.publishes as f64))?;
        family(&mut e, "thingsboard_pubacks", "PUBACKs from ThingsBoard", Counter, one(c.pubacks as f64))?;
        family(
            &mut e,
            "thingsboard_refused_publishes",
            "Publishes ThingsBoard refused",
            Counter,
            one(c.pacer.refusals as f64),
        )?;
        family(
            &mut e,
            "thingsboard_pace_ratio",
            "Share of ThingsBoard's limits the client sends at (below 1 after a refusal)",
            Gauge,
            one(c.pacer.pace),
        )?;
        if let Some(used) = c.pacer.gateway_use {
            family(
                &mut e,
                "thingsboard_rate_limit_use_ratio",
                "How empty the devices' emptiest bucket is",
                Gauge,
                one(used),
            )?;
        }
        family(&mut e, "thingsboard_delivery_rate", "Events delivered per second lately", Gauge, one(c.delivery_rate))?;
        family(&mut e, "requests", "Requests from ThingsBoard", Counter, one(s.requests as f64))?;
        family(&mut e, "request_errors", "Requests answered with an error", Counter, one(s.request_errors as f64))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ConnectorStatus, ExtraStatus};

    #[test]
    fn readiness_names_each_reason_and_label_values_are_escaped() {
        let connector = |name: &str, running, connected| ConnectorStatus {
            name: name.into(),
            running,
            connected,
            received: 7,
            ..ConnectorStatus::default()
        };
        let status = Status {
            uptime: Duration::from_secs(3),
            connectors: vec![
                connector("A \"x\"\\y", true, false),
                connector("B", false, false),
                connector("C", true, true),
            ],
            converters: Vec::new(),
            store: tbgw_store::StoreStats { records: 5, ..Default::default() },
            store_full: true,
            client: Default::default(),
            requests: 2,
            request_errors: 0,
        };
        let reasons = not_ready(&status);
        assert_eq!(reasons.len(), 3, "ThingsBoard, the store, A (B was stopped on purpose): {reasons:?}");
        assert!(reasons[0].starts_with("ThingsBoard is not connected") && reasons[1].contains("full"));
        assert!(reasons[2].contains("A \"x\""));
        let text = metrics(status).expect("encoded");
        assert!(text.contains(r#"tbgw_connector_messages_received_total{connector="A \"x\"\\y"} 7"#), "{text}");
        assert!(text.contains("tbgw_requests_total 2"), "{text}");
        assert!(text.contains("tbgw_store_backlog_events 5"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_connectors_own_counts_are_a_family_each_over_the_connectors_that_keep_them() {
        let extra = |name, gauge, value| ExtraStatus { name, help: "h", gauge, value };
        let connector =
            |name: &str, extras| ConnectorStatus { name: name.into(), extras, ..ConnectorStatus::default() };
        let status = Status {
            uptime: Duration::from_secs(3),
            connectors: vec![
                connector("plc", vec![extra("monitored_items", true, 1000), extra("bad_status_values", false, 3)]),
                connector("mqtt", Vec::new()),
                connector("plc2", vec![extra("monitored_items", true, 5)]),
            ],
            converters: Vec::new(),
            store: Default::default(),
            store_full: false,
            client: Default::default(),
            requests: 0,
            request_errors: 0,
        };
        let stats = status.statistics();
        assert_eq!((stats["plcMonitoredItems"].clone(), stats["plcBadStatusValues"].clone()), (1000.into(), 3.into()));
        assert!(stats.get("mqttMonitoredItems").is_none());
        let text = metrics(status).expect("encoded");
        let lines: Vec<&str> =
            text.lines().filter(|l| l.contains("monitored_items") || l.contains("bad_status")).collect();
        assert_eq!(
            lines,
            [
                "# HELP tbgw_connector_monitored_items h",
                "# TYPE tbgw_connector_monitored_items gauge",
                r#"tbgw_connector_monitored_items{connector="plc"} 1000.0"#,
                r#"tbgw_connector_monitored_items{connector="plc2"} 5.0"#,
                "# HELP tbgw_connector_bad_status_values h",
                "# TYPE tbgw_connector_bad_status_values counter",
                r#"tbgw_connector_bad_status_values_total{connector="plc"} 3.0"#,
            ]
        );
    }
}
