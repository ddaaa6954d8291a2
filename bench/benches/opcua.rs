//! An OPC-UA server of 10,000 nodes, every node changing every second: 100
//! devices of 100 variables (the test support's in-process async-opcua
//! server on 127.0.0.1, in this process), as the target and the
//! Python gateway's worst case. tbgw runs on its default config (fjall
//! store, subscriptions, the `opcua` WASM converter) and delivers to a
//! local mosquitto (its default settings) standing in for ThingsBoard.
//!
//! Measured: how long after start every one of the 10,000 keys had its
//! first value in ThingsBoard; then, over the run, values/s delivered,
//! tbgw's CPU (% of one core) and peak RSS, and values delivered twice.
//! In the same run, the floor: a plain async-opcua client subscribing the
//! same nodes with the same parameters and throwing each value away (no
//! resolution by path, no conversion, no store, no delivery).
//!
//! `cargo bench -p tbgw-bench --bench opcua` (needs `mosquitto`;
//! `TBGW_BENCH_DEVICES` default 100, `TBGW_BENCH_NODES` per device default
//! 100, `TBGW_BENCH_SECONDS` default 20; `TBGW_BENCH_POLL=1` runs tbgw in
//! polling mode, reading every node every second; `TBGW_BENCH_OPCUA_SERVE=1`
//! only serves the plant, for a tbgw started by hand).

#[path = "common/gateway.rs"]
mod gateway;

use opcua::client::{ClientBuilder, IdentityToken, MonitoredItemMap, OnSubscriptionNotificationCore};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, DataChangeNotification, ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NotificationMessage, ReadValueId, TimestampsToReturn,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tbgw_bench::env_u64 as env;
use tbgw_bench::process::{measure, spawn_self as spawn};
use tbgw_test_support::Mosquitto;
use tbgw_test_support::opcua::{OpcuaServer, Plant, node};

const FLOOR_MODE: &str = "TBGW_BENCH_OPCUA_FLOOR";
/// After every key's first value, before measuring.
const SETTLE: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    if let Some(gateway) = gateway::run_if_asked() {
        return gateway;
    }
    if let Ok(spec) = std::env::var(FLOOR_MODE) {
        return floor(&spec);
    }
    let (devices, nodes, seconds) =
        (env("TBGW_BENCH_DEVICES", 100) as usize, env("TBGW_BENCH_NODES", 100) as usize, env("TBGW_BENCH_SECONDS", 20));
    let poll = std::env::var("TBGW_BENCH_POLL").is_ok_and(|p| p == "1");
    let total = devices * nodes;
    let plant = Plant { devices, variables: nodes, items_per_subscription: 1000, ..Plant::default() };
    if std::env::var("TBGW_BENCH_OPCUA_SERVE").is_ok() {
        // Only the server, ticking, for a tbgw started by hand (profiling).
        let server = OpcuaServer::start(plant);
        let _ticker = Ticker::start(&server);
        println!("serving {total} nodes at {}", server.url());
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    println!(
        "opcua: {devices} devices x {nodes} nodes = {total} nodes, every node changing every second, for {seconds} s; tbgw {}",
        if poll { "polling every second" } else { "subscribed (publishing every 100 ms)" }
    );
    println!();
    let dir = tempfile::tempdir()?;

    // The floor.
    let count_file = dir.path().join("floor-values");
    let floor_run = {
        let server = OpcuaServer::start(plant);
        let ticker = Ticker::start(&server);
        let started = Instant::now();
        let child = spawn(&[(FLOOR_MODE, format!("{}|{devices}|{nodes}|{}", server.url(), count_file.display()))])?;
        let read = || -> Option<(u64, f64)> {
            let text = std::fs::read_to_string(&count_file).ok()?;
            let (n, first) = text.trim().split_once(' ')?;
            Some((n.parse().ok()?, first.parse().ok()?))
        };
        let first = wait_first(started, || read().filter(|(_, f)| *f > 0.0).map(|(_, f)| Duration::from_secs_f64(f)))?;
        let run = measure(child, SETTLE, seconds, || read().map(|(n, _)| n))?;
        drop(ticker);
        (run, first)
    };

    // tbgw.
    let server = OpcuaServer::start(plant);
    let ticker = Ticker::start(&server);
    let tb = Mosquitto::start_new();
    let config = write_config(dir.path(), tb.port, &server.url(), devices, nodes, poll)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let received = Arc::new(Seen::default());
    rt.block_on(thingsboard(tb.port, received.clone()))?;
    let started = Instant::now();
    let child = spawn(&[(gateway::GATEWAY_MODE, config.display().to_string())])?;
    let first = wait_first(started, || {
        let keys = received.keys.lock().map_or(0, |k| k.len());
        (keys >= total).then(|| started.elapsed())
    });
    let first = match first {
        Ok(f) => f,
        Err(e) => {
            let keys = received.keys.lock().map_or(0, |k| k.len());
            anyhow::bail!("{e}: {keys} of {total} keys reached ThingsBoard");
        }
    };
    let run = measure(child, SETTLE, seconds, || Some(received.values.load(Ordering::Relaxed)))?;
    drop(ticker);
    let (floor_run, floor_first) = floor_run;

    println!("{:<48} {:>16} {:>10} {:>12} {:>12}", "", "all first values", "values/s", "CPU % core", "peak RSS MB");
    println!(
        "{:<48} {:>15.2}s {:>10.0} {:>12.1} {:>12.1}",
        "plain async-opcua client (values thrown away)",
        floor_first.as_secs_f64(),
        floor_run.counted_per_s,
        floor_run.cpu_percent,
        floor_run.peak_rss_mb
    );
    println!(
        "{:<48} {:>15.2}s {:>10.0} {:>12.1} {:>12.1}",
        "tbgw: opcua WASM converter, fjall store, MQTT",
        first.as_secs_f64(),
        run.counted_per_s,
        run.cpu_percent,
        run.peak_rss_mb
    );
    println!();
    println!(
        "tbgw / plain client CPU: {:.2}x; µs of CPU per value: tbgw {:.1}, plain client {:.1}",
        run.cpu_percent / floor_run.cpu_percent.max(0.01),
        run.cpu_percent * 1e4 / run.counted_per_s.max(1.0),
        floor_run.cpu_percent * 1e4 / floor_run.counted_per_s.max(1.0),
    );
    println!(
        "values ThingsBoard received twice (same device, key, value and time): {}",
        received.duplicates.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Every node to a new value every second.
struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(server: &OpcuaServer) -> Ticker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop2, values) = (stop.clone(), server.setter());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut step = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                step += 1;
                values(step as f64);
                let next = start + Duration::from_secs(step);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Ticker { stop, thread: Some(thread) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_first(started: Instant, done: impl Fn() -> Option<Duration>) -> anyhow::Result<Duration> {
    while started.elapsed() < Duration::from_secs(120) {
        if let Some(d) = done() {
            return Ok(d);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("not every key had a value within 120 s")
}

fn write_config(
    dir: &Path,
    tb_port: u16,
    url: &str,
    devices: usize,
    nodes: usize,
    poll: bool,
) -> anyhow::Result<std::path::PathBuf> {
    let keys: Vec<serde_json::Value> = (0..nodes)
        .map(|j| serde_json::json!({"key": format!("v{j}"), "type": "path", "value": format!("${{V{j}}}")}))
        .collect();
    let mapping: Vec<serde_json::Value> = (1..=devices)
        .map(|d| {
            serde_json::json!({
                "deviceNodeSource": "path",
                "deviceNodePattern": format!("Root\\.Objects\\.Plant\\.Boiler {d}"),
                "deviceInfo": {"deviceNameExpression": "Boiler ${SerialNumber}", "deviceNameExpressionSource": "path"},
                "timeseries": keys
            })
        })
        .collect();
    let mut server = serde_json::json!({"url": url, "identity": {"type": "anonymous"}});
    if poll {
        server["enableSubscriptions"] = false.into();
        server["pollPeriodInMillis"] = 1000.into();
    }
    std::fs::write(dir.join("opcua.json"), serde_json::json!({"server": server, "mapping": mapping}).to_string())?;
    let config = dir.join("tb_gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "thingsboard: {{host: 127.0.0.1, port: {tb_port}, security: {{type: accessToken, accessToken: bench}}}}\n\
             storage: {{type: fjall, data_folder_path: {}}}\n\
             connectors: [{{type: opcua, name: PLC, configuration: opcua.json}}]\n\
             tbgw: {{cacheDir: {}}}\n",
            dir.join("data").display(),
            dir.join("cache").display(),
        ),
    )?;
    Ok(config)
}

/// What ThingsBoard received: the (device, key) pairs seen, values, and
/// values seen twice.
#[derive(Default)]
struct Seen {
    keys: Mutex<HashSet<(String, String)>>,
    values: AtomicU64,
    duplicates: AtomicU64,
}

async fn thingsboard(port: u16, seen: Arc<Seen>) -> anyhow::Result<()> {
    let mut o = MqttOptions::new("bench-thingsboard", "127.0.0.1", port);
    o.set_max_packet_size(16 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("v1/gateway/telemetry", QoS::AtLeastOnce).await?;
    c.subscribe("v1/devices/me/rpc/request/+", QoS::AtLeastOnce).await?;
    let mut subacks = 0;
    while subacks < 2 {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
            subacks += 1;
        }
    }
    tokio::spawn(async move {
        let mut values: HashSet<(String, String, u64, i64)> = HashSet::new();
        loop {
            let ev = match el.poll().await {
                Ok(ev) => ev,
                Err(e) => {
                    eprintln!("ThingsBoard's side lost its broker: {e}");
                    return;
                }
            };
            let Event::Incoming(Packet::Publish(p)) = ev else { continue };
            if let Some(id) = p.topic.strip_prefix("v1/devices/me/rpc/request/") {
                // As ThingsBoard answers tbgw's first request (which holds
                // its deliveries until then): its shape, no rate limits set.
                if String::from_utf8_lossy(&p.payload).contains("getSessionLimits") {
                    let none = serde_json::json!({"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""});
                    let body = serde_json::json!({"maxPayloadSize": 65536, "maxInflightMessages": 100,
                        "rateLimits": none, "gatewayRateLimits": none});
                    let topic = format!("v1/devices/me/rpc/response/{id}");
                    let _ = c.try_publish(topic, QoS::AtMostOnce, false, body.to_string());
                }
                continue;
            }
            let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                continue;
            };
            let mut keys = seen.keys.lock().unwrap_or_else(|e| e.into_inner());
            for (device, readings) in &doc {
                for r in readings.as_array().into_iter().flatten() {
                    let ts = r["ts"].as_i64().unwrap_or(0);
                    for (k, v) in r["values"].as_object().into_iter().flatten() {
                        seen.values.fetch_add(1, Ordering::Relaxed);
                        keys.insert((device.clone(), k.clone()));
                        let bits = v.as_f64().unwrap_or(f64::NAN).to_bits();
                        if !values.insert((device.clone(), k.clone(), bits, ts)) {
                            seen.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// The floor's callback: count the values.
struct Count(Arc<AtomicU64>);

impl OnSubscriptionNotificationCore for Count {
    fn on_subscription_notification(&mut self, n: NotificationMessage, _items: MonitoredItemMap<'_>) {
        for obj in n.notification_data.into_iter().flatten() {
            if let Some(change) = obj.inner_as::<DataChangeNotification>() {
                let k = change.monitored_items.as_ref().map_or(0, Vec::len);
                std::hint::black_box(&change.monitored_items);
                self.0.fetch_add(k as u64, Ordering::Relaxed);
            }
        }
    }
}

/// The floor: every node by its NodeId in subscriptions of 1,000 items (the
/// server's cap), publishing every 100 ms as tbgw's; writes "<values>
/// <seconds until the first value of every node>" to a file every 200 ms.
fn floor(spec: &str) -> anyhow::Result<()> {
    let mut parts = spec.split('|');
    let (url, devices, nodes, file) = (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().parse::<usize>()?,
        parts.next().unwrap_or_default().parse::<usize>()?,
        parts.next().unwrap_or_default().to_owned(),
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut client = ClientBuilder::new()
            .application_name("floor")
            .application_uri("urn:floor")
            .pki_dir(std::env::temp_dir().join("tbgw-bench-floor-pki"))
            .session_retry_limit(-1)
            .max_array_length(1_000_000)
            .client()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let (session, event_loop) = client
            .connect_to_matching_endpoint(
                (url.as_str(), SecurityPolicy::None.to_str(), MessageSecurityMode::None),
                IdentityToken::Anonymous,
            )
            .await?;
        event_loop.spawn();
        session.wait_for_connection().await;
        let ns = session.get_namespace_index(tbgw_test_support::opcua::NAMESPACE).await?;
        let count = Arc::new(AtomicU64::new(0));
        let all: Vec<_> = (1..=devices).flat_map(|d| (0..nodes).map(move |j| (d, j))).collect();
        for (k, chunk) in all.chunks(1000).enumerate() {
            let sub = session
                .create_subscription(Duration::from_millis(100), 300, 50, 0, 0, true, Count(count.clone()))
                .await?;
            let items: Vec<MonitoredItemCreateRequest> = chunk
                .iter()
                .enumerate()
                .map(|(i, (d, j))| {
                    MonitoredItemCreateRequest::new(
                        ReadValueId {
                            node_id: node(ns, *d, &format!("V{j}")),
                            attribute_id: AttributeId::Value as u32,
                            ..Default::default()
                        },
                        MonitoringMode::Reporting,
                        MonitoringParameters {
                            client_handle: (k * 1000 + i + 1) as u32,
                            sampling_interval: 100.0,
                            filter: ExtensionObject::null(),
                            queue_size: 16,
                            discard_oldest: true,
                        },
                    )
                })
                .collect();
            session.create_monitored_items(sub, TimestampsToReturn::Both, items).await?;
        }
        let total = (devices * nodes) as u64;
        let mut first = 0.0;
        loop {
            let n = count.load(Ordering::Relaxed);
            if first == 0.0 && n >= total {
                first = started.elapsed().as_secs_f64();
            }
            std::fs::write(&file, format!("{n} {first}"))?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}
