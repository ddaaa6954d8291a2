//! The whole pipeline against real brokers: messages waiting on a devices'
//! broker (mosquitto) for a persistent session are drained to a second
//! broker standing in for ThingsBoard, first by a plain relay (subscribe →
//! publish QoS 1, no conversion, no store: the ceiling), then by tbgw with
//! the fjall store (fsync per batch), then by tbgw with the memory store.
//! Prints messages/s, the ratio to the relay, and tbgw's CPU time and RSS.
//!
//! `cargo bench -p tbgw-bench --bench pipeline` (needs `mosquitto`;
//! `TBGW_BENCH_MESSAGES` sets the count, default 100,000.)
//!
//! Rates run from the first message ThingsBoard's side receives to the
//! last, so start-up is not counted; every run has to deliver every message
//! or the bench fails. tbgw runs as a child process (this binary again, in
//! gateway mode) so that its RSS and CPU are its own.

#[path = "common/gateway.rs"]
mod gateway;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tbgw_bench::process::{cpu_seconds, status_kb};
use tbgw_test_support::Mosquitto;

const DEVICES: usize = 100;

fn main() -> anyhow::Result<()> {
    if let Some(gateway) = gateway::run_if_asked() {
        return gateway;
    }
    let messages: usize = std::env::var("TBGW_BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let cache = tempfile::tempdir()?;

    println!("pipeline: {messages} JSON messages from {DEVICES} devices, queued on one mosquitto, drained to another");
    println!();
    let relay = rt.block_on(run_relay(messages))?;
    let fjall = rt.block_on(run_gateway(messages, "fjall", cache.path()))?;
    let memory = rt.block_on(run_gateway(messages, "memory", cache.path()))?;

    println!("{:<52} {:>10} {:>8} {:>9} {:>12}", "", "msgs/s", "vs relay", "CPU s", "peak RSS MB");
    let row = |name: &str, r: &Run| {
        println!(
            "{name:<52} {:>10.0} {:>8.2} {:>9} {:>12}",
            r.rate(messages),
            r.rate(messages) / relay.rate(messages),
            r.cpu.map_or("-".into(), |c| format!("{c:.2}")),
            r.peak_rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
        )
    };
    row("plain relay (no conversion, no store)", &relay);
    row("tbgw: json converter, fjall store, fsync per batch", &fjall);
    row("tbgw: json converter, memory store", &memory);
    println!();
    println!(
        "targets: tbgw with fjall >= 0.70 of the relay (got {:.2}); RSS under load < 80 MB (got {:.1})",
        fjall.rate(messages) / relay.rate(messages),
        fjall.peak_rss_mb.unwrap_or(f64::NAN)
    );
    Ok(())
}

/// What one run measured.
struct Run {
    /// First to last message received on ThingsBoard's side.
    span: Duration,
    cpu: Option<f64>,
    peak_rss_mb: Option<f64>,
}

impl Run {
    fn rate(&self, messages: usize) -> f64 {
        (messages.saturating_sub(1)) as f64 / self.span.as_secs_f64().max(1e-9)
    }
}

fn message(d: usize, seq: usize) -> (String, String) {
    (
        format!("sensor/dev-{d:03}/data"),
        format!(
            r#"{{"seq":{seq},"temp":{},"hum":{},"model":"TH-{}"}}"#,
            20.0 + (seq % 100) as f64 / 10.0,
            40 + d % 20,
            d % 3
        ),
    )
}

/// A persistent session for `client_id` with the devices' subscription, so
/// that the broker keeps what is published before the consumer starts.
async fn open_session(port: u16, client_id: &str) -> anyhow::Result<()> {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(false);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("sensor/+/data", QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
            break;
        }
    }
    c.disconnect().await?;
    while el.poll().await.is_ok() {}
    Ok(())
}

/// Publish every message (QoS 1) and wait for all the PUBACKs.
async fn preload(port: u16, messages: usize) -> anyhow::Result<()> {
    let o = MqttOptions::new("bench-devices", "127.0.0.1", port);
    let (c, mut el) = AsyncClient::new(o, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = acked.clone();
    let poller = tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = ev {
                acks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for seq in 0..messages.div_ceil(DEVICES) {
        for d in 0..DEVICES {
            if seq * DEVICES + d < messages {
                let (topic, payload) = message(d, seq);
                c.publish(topic, QoS::AtLeastOnce, false, payload).await?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked.load(Ordering::Relaxed) < messages as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the broker acknowledged {} of {messages}",
            acked.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    Ok(())
}

/// ThingsBoard's side: counts readings until `expected`; returns the span
/// from the first to the last. `packed`: publishes carry the gateway API's
/// `{"device": [{"ts", "values"}, ...]}`, else one message each.
async fn count(
    port: u16,
    expected: usize,
    packed: bool,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Duration> {
    let mut o = MqttOptions::new("bench-thingsboard", "127.0.0.1", port);
    o.set_max_packet_size(16 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("v1/gateway/telemetry", QoS::AtLeastOnce).await?;
    let mut ready = Some(ready);
    let (mut n, mut first) = (0usize, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < expected {
        anyhow::ensure!(Instant::now() < deadline, "ThingsBoard's side got {n} of {expected}");
        match tokio::time::timeout(Duration::from_secs(60), el.poll()).await {
            Err(_) => anyhow::bail!("nothing for 60 s; ThingsBoard's side got {n} of {expected}"),
            Ok(Err(e)) => anyhow::bail!("ThingsBoard's side: {e}"),
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                first.get_or_insert_with(Instant::now);
                n += if packed {
                    let doc: serde_json::Value = serde_json::from_slice(&p.payload)?;
                    doc.as_object().map_or(0, |o| o.values().map(|v| v.as_array().map_or(0, Vec::len)).sum())
                } else {
                    1
                };
            }
            Ok(Ok(_)) => {}
        }
    }
    anyhow::ensure!(n == expected, "ThingsBoard's side got {n} readings for {expected} messages");
    Ok(first.map_or(Duration::ZERO, |f| f.elapsed()))
}

async fn run_relay(messages: usize) -> anyhow::Result<Run> {
    let (source, tb) = (Mosquitto::start_new(), Mosquitto::start_new());
    open_session(source.port, "bench-relay").await?;
    preload(source.port, messages).await?;
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(count(tb.port, messages, false, ready_tx));
    ready.await?;

    let mut o = MqttOptions::new("bench-relay-tb", "127.0.0.1", tb.port);
    o.set_inflight(100);
    let (out, mut out_el) = AsyncClient::new(o, 1000);
    tokio::spawn(async move { while out_el.poll().await.is_ok() {} });
    let mut o = MqttOptions::new("bench-relay", "127.0.0.1", source.port);
    o.set_clean_session(false).set_manual_acks(true);
    let (src, mut src_el) = AsyncClient::new(o, 1000);
    // Forward and acknowledge in a task of its own: awaiting `ack` in the
    // task that polls the event loop deadlocks once its request queue fills.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    let forward = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            if out.publish("v1/gateway/telemetry", QoS::AtLeastOnce, false, p.payload.clone()).await.is_err()
                || src.ack(&p).await.is_err()
            {
                return;
            }
        }
    });
    let relay = tokio::spawn(async move {
        while let Ok(ev) = src_el.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev
                && tx.send(p).is_err()
            {
                return;
            }
        }
    });
    let span = counter.await??;
    relay.abort();
    forward.abort();
    Ok(Run { span, cpu: None, peak_rss_mb: None })
}

async fn run_gateway(messages: usize, storage: &str, cache: &Path) -> anyhow::Result<Run> {
    let (source, tb) = (Mosquitto::start_new(), Mosquitto::start_new());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tb_gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "thingsboard: {{host: 127.0.0.1, port: {}, security: {{type: accessToken, accessToken: bench}}}}\n\
             storage: {{type: {storage}, data_folder_path: {}}}\n\
             connectors: [{{type: mqtt, name: Devices, configuration: mqtt.json}}]\n\
             tbgw: {{cacheDir: {}}}\n",
            tb.port,
            dir.path().join("data").display(),
            cache.display()
        ),
    )?;
    std::fs::write(
        dir.path().join("mqtt.json"),
        format!(
            r#"{{"broker": {{"host": "127.0.0.1", "port": {}, "clientId": "bench-gw", "version": 4, "cleanSession": false}},
  "mapping": [{{"topicFilter": "sensor/+/data", "subscriptionQos": 1,
    "converter": {{"type": "json",
      "deviceInfo": {{"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)",
                     "deviceProfileExpressionSource": "constant", "deviceProfileExpression": "thermometer"}},
      "attributes": [{{"type": "string", "key": "model", "value": "${{model}}"}}],
      "timeseries": [{{"type": "integer", "key": "seq", "value": "${{seq}}"}},
                     {{"type": "double", "key": "temperature", "value": "${{temp}}"}},
                     {{"type": "double", "key": "humidity", "value": "${{hum}}"}}]}}}}]}}"#,
            source.port
        ),
    )?;
    // Compile the converter now, so that the child loads it from the cache
    // like any gateway after its first start.
    let (cfg, _) = tbgw::config::load(&config).map_err(|d| anyhow::anyhow!("bench config: {:?}", d.errors))?;
    let (_, errors) = tbgw::service::check_converters(&cfg, &tbgw::converters::runtime(Some(cache.to_owned()))?);
    anyhow::ensure!(errors.is_empty(), "bench converters: {errors:?}");

    open_session(source.port, "bench-gw").await?;
    preload(source.port, messages).await?;
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(count(tb.port, messages, true, ready_tx));
    ready.await?;

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(gateway::GATEWAY_MODE, &config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let mut peak = 0u64;
    let span = loop {
        if counter.is_finished() {
            break counter.await??;
        }
        peak = peak.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the gateway exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu = cpu_seconds(pid);
    peak = peak.max(status_kb(pid, "VmRSS:").unwrap_or(0));
    let _ = child.kill();
    let _ = child.wait();
    Ok(Run { span, cpu, peak_rss_mb: Some(peak as f64 / 1024.0) })
}
