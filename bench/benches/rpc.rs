//! RPC round trip, ThingsBoard → device → ThingsBoard, against real brokers:
//! a client playing ThingsBoard sends two-way RPCs at a steady rate on one
//! mosquitto; simulated devices on a second mosquitto answer each at once.
//! Between them, first a plain relay (the request forwarded to the device's
//! topic, the answer forwarded back, no registry, no converter: the floor),
//! then tbgw (a child process: this binary again, in gateway mode). Prints
//! p50/p90/p99/max latency of each and tbgw's ratio to the relay.
//!
//! `cargo bench -p tbgw-bench --bench rpc` (needs `mosquitto`;
//! `TBGW_BENCH_RPC_RATE`, default 100 per second, `TBGW_BENCH_RPC_SECONDS`,
//! default 10.)

#[path = "common/gateway.rs"]
mod gateway;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tbgw_test_support::Mosquitto;

/// A client on 127.0.0.1:`port` that sends at once (no Nagle: each
/// RPC's small publishes would otherwise wait for the previous ACK).
fn client(id: &str, port: u16, inflight: u16) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_inflight(inflight);
    let (c, mut el) = AsyncClient::new(o, 10_000);
    el.network_options.set_tcp_nodelay(true);
    (c, el)
}

const DEVICES: usize = 100;

fn main() -> anyhow::Result<()> {
    if let Some(gateway) = gateway::run_if_asked() {
        return gateway;
    }
    let rate = tbgw_bench::env_u64("TBGW_BENCH_RPC_RATE", 100);
    let seconds = tbgw_bench::env_u64("TBGW_BENCH_RPC_SECONDS", 10);
    let count = (rate * seconds) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let cache = tempfile::tempdir()?;
    println!("rpc: {count} two-way RPCs at {rate}/s to {DEVICES} devices, ThingsBoard -> device -> ThingsBoard");
    println!();
    let relay = rt.block_on(run(rate, count, Between::Relay, cache.path()))?;
    let tbgw = rt.block_on(run(rate, count, Between::Tbgw, cache.path()))?;
    println!("{:<44} {:>8} {:>8} {:>8} {:>8}", "latency (ms)", "p50", "p90", "p99", "max");
    let row = |name: &str, l: &Latencies| {
        println!("{name:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2}", l.at(0.50), l.at(0.90), l.at(0.99), l.at(1.0))
    };
    row("plain relay (no registry, no converter)", &relay);
    row("tbgw: json downlink converter, MQTT connector", &tbgw);
    println!();
    println!(
        "tbgw / relay: p50 {:.2}x, p99 {:.2}x; target p99 < 5 ms (got {:.2}); the Python gateway: ~1 s per RPC",
        tbgw.at(0.5) / relay.at(0.5),
        tbgw.at(0.99) / relay.at(0.99),
        tbgw.at(0.99)
    );
    Ok(())
}

/// Sorted round-trip times, ms.
struct Latencies(Vec<f64>);

impl Latencies {
    fn at(&self, q: f64) -> f64 {
        tbgw_bench::quantile(&self.0, q)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Between {
    Relay,
    Tbgw,
}

fn device(i: usize) -> String {
    format!("dev-{:03}", i % DEVICES)
}

/// Devices that answer every request at once, each on its own connection
/// as devices are (one connection for all would see 100 requests/s and
/// meet the broker's Nagle on its own socket, which no device does).
async fn devices(port: u16) -> anyhow::Result<()> {
    for d in 0..DEVICES {
        let (c, mut el) = client(&format!("bench-{}", device(d)), port, 100);
        c.subscribe(format!("sensor/{}/request/+/+", device(d)), QoS::AtLeastOnce).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let topic = p.topic.replacen("/request/", "/response/", 1);
                if c.publish(topic, QoS::AtLeastOnce, false, p.payload.to_vec()).await.is_err() {
                    return;
                }
            }
        });
        loop {
            match el.poll().await? {
                Event::Incoming(Packet::SubAck(_)) => break,
                _ => continue,
            }
        }
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev
                    && tx.send(p).is_err()
                {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// The floor: forward `v1/gateway/rpc` requests to the device's topic and
/// answers back, with nothing else.
async fn relay(tb_port: u16, device_port: u16) -> anyhow::Result<()> {
    let (tb, mut tb_el) = client("bench-relay-tb", tb_port, 1000);
    let (dev, mut dev_el) = client("bench-relay-dev", device_port, 1000);
    tb.subscribe("v1/gateway/rpc", QoS::AtLeastOnce).await?;
    dev.subscribe("sensor/+/response/+/+", QoS::AtLeastOnce).await?;
    let (to_dev, mut to_dev_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let (to_tb, mut to_tb_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some((t, p)) = to_dev_rx.recv().await {
            // QoS 0, as tbgw sends requests (the Python gateway's default).
            let _ = dev.publish(t, QoS::AtMostOnce, false, p).await;
        }
    });
    tokio::spawn(async move {
        while let Some(p) = to_tb_rx.recv().await {
            let _ = tb.publish("v1/gateway/rpc", QoS::AtLeastOnce, false, p).await;
        }
    });
    let mut subscribed = 0;
    for el in [&mut tb_el, &mut dev_el] {
        while subscribed < 2 {
            if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
                subscribed += 1;
                break;
            }
        }
    }
    tokio::spawn(async move {
        while let Ok(ev) = tb_el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let Ok(req) = serde_json::from_slice::<serde_json::Value>(&p.payload) else { continue };
                let (Some(d), Some(id)) = (req["device"].as_str(), req["data"]["id"].as_i64()) else { continue };
                let _ =
                    to_dev.send((format!("sensor/{d}/request/echo/{id}"), req["data"]["params"].to_string().into()));
            }
        }
    });
    tokio::spawn(async move {
        while let Ok(ev) = dev_el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let parts: Vec<&str> = p.topic.split('/').collect();
                let [_, d, _, _, id] = parts[..] else { continue };
                let data: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                let reply = serde_json::json!({"device": d, "id": id.parse::<i64>().unwrap_or(-1), "data": data});
                let _ = to_tb.send(reply.to_string().into_bytes());
            }
        }
    });
    Ok(())
}

async fn run(rate: u64, count: usize, between: Between, cache: &Path) -> anyhow::Result<Latencies> {
    // Both brokers on mosquitto's stock settings (Nagle on), as users run them.
    let (tb_broker, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    devices(source.port).await?;
    let dir = tempfile::tempdir()?;
    let mut child = None;
    if between == Between::Relay {
        relay(tb_broker.port, source.port).await?;
    }

    // ThingsBoard's side.
    let (tb, mut el) = client("bench-thingsboard", tb_broker.port, 1000);
    tb.subscribe("v1/gateway/#", QoS::AtLeastOnce).await?;
    let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    let (subacked_tx, subacked) = tokio::sync::oneshot::channel();
    // ThingsBoard answers from its own socket; this stand-in's client must
    // not add a hold ThingsBoard has not: the broker's PUBACK of each
    // request, unacknowledged for our kernel's 40 ms, would hold the
    // reply behind it (Nagle on the broker's side). So it ACKs at once.
    let mut quick = tbgw_thingsboard::quickack::AckAtOnce::new(tb_broker.port);
    tokio::spawn(async move {
        let mut subacked = Some(subacked_tx);
        loop {
            let polled = el.poll().await;
            quick.polled(&el, &polled);
            let Ok(ev) = polled else { break };
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(s) = subacked.take() {
                        let _ = s.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = events.send(p);
                }
                _ => {}
            }
        }
    });
    subacked.await?;

    if between == Between::Tbgw {
        let config = dir.path().join("tb_gateway.yaml");
        std::fs::write(
            &config,
            format!(
                "thingsboard: {{host: 127.0.0.1, port: {}, security: {{type: accessToken, accessToken: bench}}}}\n\
                 storage: {{type: memory}}\n\
                 connectors: [{{type: mqtt, name: Devices, configuration: mqtt.json}}]\n\
                 tbgw: {{cacheDir: {}}}\n",
                tb_broker.port,
                cache.display()
            ),
        )?;
        let mqtt = serde_json::json!({
            "broker": {"host": "127.0.0.1", "port": source.port, "clientId": "bench-gw", "version": 4},
            "mapping": [{"topicFilter": "sensor/+/data", "converter": {"type": "json",
                "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)"},
                "timeseries": "*"}}],
            "requestsMapping": {
                "connectRequests": [{"topicFilter": "sensor/+/connect", "deviceInfo": {
                    "deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/connect)"}}],
                "serverSideRpc": [{"type": "twoWay", "deviceNameFilter": ".*", "methodFilter": "echo",
                    "requestTopicExpression": "sensor/${deviceName}/request/${methodName}/${requestId}",
                    "responseTopicExpression": "sensor/${deviceName}/response/${methodName}/${requestId}",
                    "responseTimeout": 10000, "valueExpression": "${params}"}]
            }
        });
        std::fs::write(dir.path().join("mqtt.json"), mqtt.to_string())?;
        let (cfg, _) = tbgw::config::load(&config).map_err(|d| anyhow::anyhow!("bench config: {:?}", d.errors))?;
        let (_, errors) = tbgw::service::check_converters(&cfg, &tbgw::converters::runtime(Some(cache.to_owned()))?);
        anyhow::ensure!(errors.is_empty(), "bench converters: {errors:?}");
        child = Some(
            std::process::Command::new(std::env::current_exe()?)
                .env(gateway::GATEWAY_MODE, &config)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
        // The devices announce themselves; ThingsBoard sees them connected.
        let (c, mut dev_el) = client("bench-announcer", source.port, 100);
        tokio::spawn(async move { while dev_el.poll().await.is_ok() {} });
        let mut connected = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while connected.len() < DEVICES {
            anyhow::ensure!(Instant::now() < deadline, "{} of {DEVICES} devices connected", connected.len());
            for d in 0..DEVICES {
                c.publish(format!("sensor/{}/connect", device(d)), QoS::AtLeastOnce, false, Vec::new()).await?;
            }
            let wait = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    Some(p) = events_rx.recv() => if p.topic == "v1/gateway/connect" {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload)?;
                        connected.insert(v["device"].as_str().unwrap_or("").to_owned());
                        if connected.len() == DEVICES { break; }
                    },
                }
            }
        }
    }

    // Steady rate; every reply matched to its request by id.
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut sent: HashMap<i64, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(count);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next = 0usize;
    let deadline = Instant::now() + Duration::from_secs(count as u64 / rate + 60);
    while latencies.len() < count {
        anyhow::ensure!(Instant::now() < deadline, "{} of {count} RPCs answered", latencies.len());
        tokio::select! {
            _ = ticker.tick(), if next < count => {
                let req = serde_json::json!({"device": device(next), "data": {"id": next, "method": "echo", "params": {"n": next}}});
                sent.insert(next as i64, Instant::now());
                tb.publish("v1/gateway/rpc", QoS::AtLeastOnce, false, req.to_string()).await?;
                next += 1;
            }
            Some(p) = events_rx.recv() => {
                if p.topic != "v1/gateway/rpc" { continue }
                let v: serde_json::Value = serde_json::from_slice(&p.payload)?;
                let Some(id) = v.get("id").and_then(|i| i.as_i64()) else { continue };
                anyhow::ensure!(v["data"]["n"] == id, "reply {id} carries {}", v["data"]);
                if let Some(t) = sent.remove(&id) {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
    }
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Latencies(latencies))
}
