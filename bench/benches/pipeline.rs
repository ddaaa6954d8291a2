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
//! `TBGW_BENCH_MODE=drain`: the drain after an outage under ThingsBoard's
//! rate limits instead. 100 devices publish live (2 messages/s each) into a
//! fake ThingsBoard that enforces its limits as ThingsBoard does
//! (`tbgw_test_support::fake_mqtt`); ThingsBoard goes away for 30 s and
//! comes back with a datapoint limit of 1,500/s (the live load is 800/s).
//! Prints the backlog, the drain rate against the limit, the time to drain
//! (until tbgw is caught up with the live data), the latency of live data
//! published during the drain, what ThingsBoard refused, tbgw's CPU and RSS.
//!
//! `TBGW_BENCH_MODE=outage`: memory through a long outage. 100 devices
//! publish `TBGW_BENCH_RATE` messages/s (default 5,000) while ThingsBoard
//! is away for `TBGW_BENCH_SECONDS` (default 600); every 10% of it prints
//! tbgw's RSS, its store's backlog (from its `/metrics`) and the messages
//! published, then the peak RSS and whether tbgw kept up with the devices.
//!
//! `TBGW_BENCH_MODE=live`: devices publishing while tbgw runs, as they do:
//! 100 devices, `TBGW_BENCH_RATE` messages/s in all (default 1,000), evenly
//! paced, then as fast as one publisher can, QoS 1, through a stock
//! mosquitto, into ThingsBoard's side (the fake ThingsBoard, limits far
//! above the load). Each load through the plain relay (a child process too,
//! each message framed for the gateway API without parsing it, one publish
//! each) and through tbgw (the fjall store, the default config). Prints
//! messages/s delivered and the ratio to the relay, CPU (% of a core and µs
//! per message), peak RSS, and the latency publish → ThingsBoard
//! (p50/p99/max) over `TBGW_BENCH_SECONDS` (default 20) after a 5 s warm-up.
//!
//! In every mode `TBGW_BENCH_FSYNC=interval` runs tbgw with
//! `storage.fsync: interval` instead of the default (`batch`).
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
use tbgw_test_support::fake_mqtt::{FakeThingsBoard, LimitSpec, Refusal, TbLimits};
use tbgw_test_support::{Collector, Mosquitto};

const DEVICES: usize = 100;

fn main() -> anyhow::Result<()> {
    if let Some(gateway) = gateway::run_if_asked() {
        return gateway;
    }
    if let Some(relay) = relay_if_asked() {
        return relay;
    }
    let messages: usize = std::env::var("TBGW_BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let cache = tempfile::tempdir()?;
    match std::env::var("TBGW_BENCH_MODE").as_deref() {
        Ok("drain") => return drain(cache.path()),
        Ok("live") => return live(cache.path()),
        Ok("outage") => return outage(cache.path()),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

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

/// The gateway's config (fjall or memory store, the bench's JSON mapping)
/// in `dir`, its converter compiled into `cache`.
fn gateway_config(
    dir: &Path,
    tb_port: u16,
    source_port: u16,
    storage: &str,
    cache: &Path,
) -> anyhow::Result<std::path::PathBuf> {
    gateway_config_with(dir, tb_port, source_port, storage, cache, "")
}

/// [`gateway_config`] with more keys in the `tbgw` section (`, http: ...`).
fn gateway_config_with(
    dir: &Path,
    tb_port: u16,
    source_port: u16,
    storage: &str,
    cache: &Path,
    tbgw_keys: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let config = dir.join("tb_gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "thingsboard: {{host: 127.0.0.1, port: {}, security: {{type: accessToken, accessToken: bench}}}}\n\
             storage: {{type: {storage}, data_folder_path: {}{fsync}}}\n\
             connectors: [{{type: mqtt, name: Devices, configuration: mqtt.json}}]\n\
             tbgw: {{cacheDir: {}{tbgw_keys}}}\n",
            tb_port,
            dir.join("data").display(),
            cache.display(),
            fsync = std::env::var("TBGW_BENCH_FSYNC").map(|f| format!(", fsync: {f}")).unwrap_or_default(),
        ),
    )?;
    std::fs::write(
        dir.join("mqtt.json"),
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
            source_port
        ),
    )?;
    // Compile the converter now, so that the child loads it from the cache
    // like any gateway after its first start.
    let (cfg, _) = tbgw::config::load(&config).map_err(|d| anyhow::anyhow!("bench config: {:?}", d.errors))?;
    let (_, errors) = tbgw::service::check_converters(&cfg, &tbgw::converters::runtime(Some(cache.to_owned()))?);
    anyhow::ensure!(errors.is_empty(), "bench converters: {errors:?}");
    Ok(config)
}

fn spawn_gateway(config: &Path) -> anyhow::Result<std::process::Child> {
    Ok(std::process::Command::new(std::env::current_exe()?)
        .env(gateway::GATEWAY_MODE, config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?)
}

async fn run_gateway(messages: usize, storage: &str, cache: &Path) -> anyhow::Result<Run> {
    let (source, tb) = (Mosquitto::start_new(), Mosquitto::start_new());
    let dir = tempfile::tempdir()?;
    let config = gateway_config(dir.path(), tb.port, source.port, storage, cache)?;

    open_session(source.port, "bench-gw").await?;
    preload(source.port, messages).await?;
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(count(tb.port, messages, true, ready_tx));
    ready.await?;

    let mut child = spawn_gateway(&config)?;
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

/// The drain after an outage under ThingsBoard's limits (`TBGW_BENCH_MODE=drain`).
fn drain(cache: &Path) -> anyhow::Result<()> {
    const EVERY: Duration = Duration::from_millis(500);
    const OUTAGE: Duration = Duration::from_secs(30);
    // Each message: 3 telemetry values and 1 attribute, 4 datapoints.
    let (live_dp, limit_dp) = (DEVICES as f64 * 2.0 * 4.0, 1500.0);
    let source = Mosquitto::start_new();
    let mut tb = FakeThingsBoard::start(TbLimits {
        gateway: LimitSpec::new("1000:1,30000:60", "2000:1", &format!("{limit_dp}:1")),
        own: LimitSpec::new("100:1", "100:1", "1000:1"),
        announced: None,
        refusal: Refusal::PubackThenClose,
    });
    let dir = tempfile::tempdir()?;
    let config = gateway_config(dir.path(), tb.port, source.port, "fjall", cache)?;
    let mut child = spawn_gateway(&config)?;
    let pid = child.id();

    // Devices publish by the clock; seq n of every device goes at start + n x EVERY.
    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let load = {
        let (rounds, stop, port) = (rounds.clone(), stop.clone(), source.port);
        std::thread::spawn(move || {
            let devices = Collector::connect(port, "bench-devices", &[]);
            let mut seq = 0usize;
            while !stop.load(Ordering::Relaxed) {
                devices.publish_many((0..DEVICES).map(|d| {
                    let (topic, payload) = message(d, seq);
                    (topic, payload.into_bytes())
                }));
                seq += 1;
                rounds.store(seq as u64, Ordering::Relaxed);
                std::thread::sleep((start + EVERY * seq as u32).saturating_duration_since(Instant::now()));
            }
        })
    };
    let published_at = |seq: i64| start + EVERY * u32::try_from(seq.max(0)).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(5));
    let (dp0, t0) = (tb.datapoints(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    // What the live load costs ThingsBoard, as tbgw packs it.
    let live_accepted = (tb.datapoints() - dp0) as f64 / t0.elapsed().as_secs_f64();
    tb.stop();
    let rounds_at_stop = rounds.load(Ordering::Relaxed);
    std::thread::sleep(OUTAGE);
    let backlog_rounds = rounds.load(Ordering::Relaxed);
    let backlog = (backlog_rounds - rounds_at_stop) as usize * DEVICES;
    let (dp_before, cpu_before) = (tb.datapoints(), cpu_seconds(pid).unwrap_or(0.0));
    tb.start_again();
    let back = Instant::now();
    let mut peak = 0u64;
    // Caught up: every device's newest reading is at most two rounds behind.
    let drained = loop {
        peak = peak.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the gateway exited: {status}");
        }
        let sent = rounds.load(Ordering::Relaxed) as i64;
        let mut newest = vec![-1i64; DEVICES];
        for r in tb.readings() {
            if let (Some(d), Some(seq)) = (
                r.device.strip_prefix("dev-").and_then(|d| d.parse::<usize>().ok()),
                r.values.get("seq").and_then(serde_json::Value::as_i64),
            ) && d < DEVICES
            {
                newest[d] = newest[d].max(seq);
            }
        }
        if newest.iter().all(|n| *n >= backlog_rounds as i64 && sent - n <= 2) {
            break back.elapsed();
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(600),
            "not drained after 600 s ({} refused)",
            tb.refused()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (dp_after, cpu_after) = (tb.datapoints(), cpu_seconds(pid).unwrap_or(0.0));
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    // Live data during the drain: published after ThingsBoard came back,
    // accepted before the drain ended.
    let mut latencies: Vec<f64> = tb
        .readings()
        .iter()
        .filter_map(|r| {
            let seq = r.values.get("seq").and_then(serde_json::Value::as_i64)?;
            let sent = published_at(seq);
            (sent >= back && r.at <= back + drained).then(|| r.at.saturating_duration_since(sent).as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| tbgw_bench::quantile(&latencies, p);
    let rate = (dp_after - dp_before) as f64 / drained.as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "drain under ThingsBoard's limits: {DEVICES} devices x 2 messages/s (4 datapoints each: {live_dp:.0}/s), \
         ThingsBoard away {} s, then gatewayRateLimits.telemetryDataPoints {limit_dp:.0}:1",
        OUTAGE.as_secs()
    );
    println!();
    println!("{:<58} {:>14}", "backlog when ThingsBoard came back (messages)", backlog);
    println!("{:<58} {:>14.0}", "drain rate (datapoints/s accepted)", rate);
    println!("{:<58} {:>14.2}", "  vs the limit (tbgw aims at 0.80)", rate / limit_dp);
    println!("{:<58} {:>14.1}", "time to drain: caught up with the live data (s)", drained.as_secs_f64());
    println!("{:<58} {:>14.0}", "live load before the outage (datapoints/s accepted)", live_accepted);
    println!("{:<58} {:>14.0}", "backlog drained at (drain rate - live load, datapoints/s)", rate - live_accepted);
    println!(
        "{:<58} {:>14}",
        "live data during the drain: latency p50 / p99 / max (s)",
        format!("{:.1} / {:.1} / {:.1}", pct(0.5), pct(0.99), pct(1.0))
    );
    println!("{:<58} {:>14}", "publishes ThingsBoard refused", tb.refused());
    println!(
        "{:<58} {:>14.1}",
        "tbgw CPU during the drain (% of a core)",
        (cpu_after - cpu_before) / drained.as_secs_f64() * 100.0
    );
    println!("{:<58} {:>14.1}", "tbgw peak RSS during the drain (MB)", peak as f64 / 1024.0);
    Ok(())
}

/// Devices publishing while tbgw runs (`TBGW_BENCH_MODE=live`): at a fixed
/// rate, then as fast as the publisher can; each load through the plain
/// relay and through tbgw in turn.
fn live(cache: &Path) -> anyhow::Result<()> {
    let rate = tbgw_bench::env_u64("TBGW_BENCH_RATE", 1000).max(1);
    let seconds = tbgw_bench::env_u64("TBGW_BENCH_SECONDS", 20).max(1);
    println!(
        "live load: {DEVICES} devices publishing JSON messages (QoS 1) through a stock mosquitto, at {rate}/s in all \
         (evenly paced) and as fast as one publisher can, into ThingsBoard's side; between them the plain relay \
         (subscribe -> publish QoS 1, no conversion, no store) or tbgw (default config, fjall store); {seconds} s \
         after a 5 s warm-up"
    );
    println!();
    println!(
        "{:<34} {:>10} {:>9} {:>10} {:>9} {:>9} {:>22}",
        "", "msgs/s", "vs relay", "CPU %", "µs/msg", "RSS MB", "latency p50/p99/max ms"
    );
    let mut failures = Vec::new();
    for (load, paced) in [(format!("{rate}/s"), Some(rate)), ("as fast as it can".to_owned(), None)] {
        let relay = live_run(cache, Middle::Relay, paced, seconds)?;
        let tbgw = live_run(cache, Middle::Tbgw, paced, seconds)?;
        for (name, r) in [("relay", &relay), ("tbgw", &tbgw)] {
            println!(
                "{:<34} {:>10.0} {:>9.2} {:>10.1} {:>9.1} {:>9.1} {:>22}",
                format!("{name}, {load}"),
                r.delivered,
                r.delivered / relay.delivered.max(1e-9),
                r.cpu * 100.0,
                r.cpu * 1e6 / r.delivered.max(1e-9),
                r.peak_mb,
                format!("{:.1} / {:.1} / {:.1}", r.p50, r.p99, r.max)
            );
            if paced.is_some() && r.arrived < 0.99 * r.published {
                failures.push(format!("{name}, {load}: {:.0} of {:.0} messages arrived", r.arrived, r.published));
            }
        }
    }
    println!();
    println!("(msgs/s: delivered to ThingsBoard's side in the window; at a fixed rate latency runs from each");
    println!(" message's publish, as fast as it can it includes the wait in the devices' broker's queue)");
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Who stands between the devices' broker and ThingsBoard's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Middle {
    Relay,
    Tbgw,
}

/// One live run's figures.
struct Live {
    /// Messages/s ThingsBoard's side received in the window.
    delivered: f64,
    /// Of a core.
    cpu: f64,
    peak_mb: f64,
    p50: f64,
    p99: f64,
    max: f64,
    /// Messages published in the window, and those of them that arrived.
    published: f64,
    arrived: f64,
}

fn live_run(cache: &Path, middle: Middle, rate: Option<u64>, seconds: u64) -> anyhow::Result<Live> {
    let Steady { tb, rt, mut child, pid, stop, start: _, publisher, _source, _dir } =
        Steady::start(cache, middle, rate, "")?;
    if let Some(status) = child.try_wait()? {
        anyhow::bail!("the {middle:?} exited: {status}");
    }
    let (cpu0, t0) = (cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    let mut peak = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        peak = peak.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (cpu1, t1) = (cpu_seconds(pid).unwrap_or(0.0), Instant::now());
    stop.store(true, Ordering::Relaxed);
    // What was published in the window has a moment to arrive.
    std::thread::sleep(Duration::from_secs(2));
    let sent = rt.block_on(publisher)??;
    let _ = child.kill();
    let _ = child.wait();
    let (mut latencies, mut delivered, mut arrived) = (Vec::new(), 0usize, 0usize);
    for r in tb.readings() {
        if r.at >= t0 && r.at < t1 {
            delivered += 1;
        }
        let (Some(d), Some(seq)) = (
            r.device.strip_prefix("dev-").and_then(|d| d.parse::<usize>().ok()),
            r.values.get("seq").and_then(serde_json::Value::as_u64),
        ) else {
            continue;
        };
        let Some(&at) = sent.get(seq as usize * DEVICES + d) else { continue };
        if at >= t0 && at < t1 {
            arrived += 1;
            latencies.push(r.at.saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| tbgw_bench::quantile(&latencies, p);
    let window = (t1 - t0).as_secs_f64();
    Ok(Live {
        delivered: delivered as f64 / window,
        cpu: (cpu1 - cpu0) / window,
        peak_mb: peak as f64 / 1024.0,
        p50: pct(0.5),
        p99: pct(0.99),
        max: pct(1.0),
        published: sent.iter().filter(|&&at| at >= t0 && at < t1).count() as f64,
        arrived: arrived as f64,
    })
}

/// tbgw (the default config, fjall, more `tbgw` keys) or the relay between
/// a stock mosquitto where 100 devices publish `rate` messages/s (`None`:
/// as fast as they can) and the fake ThingsBoard, 5 s after the load began.
struct Steady {
    tb: FakeThingsBoard,
    rt: tokio::runtime::Runtime,
    child: std::process::Child,
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// When message 0 was due.
    start: Instant,
    /// When each message was published (message k: device k % 100, seq k / 100).
    publisher: tokio::task::JoinHandle<anyhow::Result<Vec<Instant>>>,
    _source: Mosquitto,
    _dir: tempfile::TempDir,
}

impl Steady {
    fn start(cache: &Path, middle: Middle, rate: Option<u64>, tbgw_keys: &str) -> anyhow::Result<Steady> {
        let source = Mosquitto::start_new();
        let tb = FakeThingsBoard::start(TbLimits {
            gateway: LimitSpec::new("1000000:1", "1000000:1", "10000000:1"),
            own: LimitSpec::new("1000:1", "1000:1", "10000:1"),
            announced: None,
            refusal: Refusal::PubackThenClose,
        });
        let dir = tempfile::tempdir()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        // The persistent session first: nothing published is lost while
        // the gateway (or the relay) starts.
        rt.block_on(open_session(source.port, "bench-gw"))?;
        let child = match middle {
            Middle::Tbgw => {
                let config = gateway_config_with(dir.path(), tb.port, source.port, "fjall", cache, tbgw_keys)?;
                spawn_gateway(&config)?
            }
            Middle::Relay => std::process::Command::new(std::env::current_exe()?)
                .env(RELAY_MODE, format!("{}:{}", source.port, tb.port))
                .stdout(std::process::Stdio::null())
                .spawn()?,
        };
        let pid = child.id();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let start = Instant::now() + Duration::from_secs(1);
        let publisher = rt.spawn(publish_at(source.port, rate, start, stop.clone()));
        std::thread::sleep(Duration::from_secs(6));
        Ok(Steady { tb, rt, child, pid, stop, start, publisher, _source: source, _dir: dir })
    }
}

/// The relay's child mode: `TBGW_BENCH_RELAY=<devices' broker port>:<ThingsBoard's port>`.
const RELAY_MODE: &str = "TBGW_BENCH_RELAY";

/// In relay mode, relay until killed and return `Some`.
fn relay_if_asked() -> Option<anyhow::Result<()>> {
    let ports = std::env::var(RELAY_MODE).ok()?;
    let run = || -> anyhow::Result<()> {
        let (source, tb) = ports.split_once(':').ok_or_else(|| anyhow::anyhow!("{RELAY_MODE}: {ports}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(live_relay(source.parse()?, tb.parse()?))
    };
    Some(run())
}

/// The floor of a live run: each device's message as it is, framed as the
/// gateway API's `{"dev-001": [{"values": <payload>}]}` (no parsing), one
/// publish QoS 1 each; the device's message acknowledged once it is handed
/// on (not once ThingsBoard has it: less than tbgw promises).
async fn live_relay(source_port: u16, tb_port: u16) -> anyhow::Result<()> {
    let mut o = MqttOptions::new("bench-relay-tb", "127.0.0.1", tb_port);
    o.set_inflight(100).set_credentials("bench", "");
    let (out, mut out_el) = AsyncClient::new(o, 1000);
    tokio::spawn(async move { while out_el.poll().await.is_ok() {} });
    let mut o = MqttOptions::new("bench-gw", "127.0.0.1", source_port);
    o.set_clean_session(false).set_manual_acks(true);
    let (src, mut src_el) = AsyncClient::new(o, 1000);
    // Forward and acknowledge in a task of its own: awaiting `ack` in the
    // task that polls the event loop deadlocks once its request queue fills.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let device = p.topic.split('/').nth(1).unwrap_or("");
            let mut framed = format!(r#"{{"{device}":[{{"values":"#).into_bytes();
            framed.extend_from_slice(&p.payload);
            framed.extend_from_slice(b"}]}");
            if out.publish("v1/gateway/telemetry", QoS::AtLeastOnce, false, framed).await.is_err()
                || src.ack(&p).await.is_err()
            {
                return;
            }
        }
    });
    loop {
        if let Event::Incoming(Packet::Publish(p)) = src_el.poll().await? {
            tx.send(p)?;
        }
    }
}

/// ThingsBoard away for a long while under a steady load (`TBGW_BENCH_MODE=outage`).
fn outage(cache: &Path) -> anyhow::Result<()> {
    let rate = tbgw_bench::env_u64("TBGW_BENCH_RATE", 5000).max(1);
    let seconds = tbgw_bench::env_u64("TBGW_BENCH_SECONDS", 600).max(10);
    let http = tbgw_test_support::free_port();
    let Steady { mut tb, rt, mut child, pid, stop, start, publisher, _source, _dir } =
        Steady::start(cache, Middle::Tbgw, Some(rate), &format!(", http: {{listen: 127.0.0.1:{http}}}"))?;
    let rss = || status_kb(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0;
    let published = || (start.elapsed().as_secs_f64() * rate as f64) as u64;
    let before = rss();
    tb.stop();
    println!(
        "outage: {DEVICES} devices publishing {rate} JSON messages/s in all (QoS 1, evenly paced) through a stock \
         mosquitto, ThingsBoard away {seconds} s (fjall store, default config)"
    );
    println!();
    println!("{:>10} {:>12} {:>16} {:>16}", "outage s", "RSS MB", "store backlog", "published");
    let first = (backlog(http).unwrap_or(0), published());
    println!("{:>10} {:>12.1} {:>16} {:>16}", 0, before, first.0, first.1);
    let (t0, cpu0) = (Instant::now(), cpu_seconds(pid).unwrap_or(0.0));
    let (mut peak, mut row, mut last) = (0f64, 1u64, first);
    while row <= 10 {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the gateway exited: {status}");
        }
        peak = peak.max(rss());
        if t0.elapsed() >= Duration::from_secs(seconds * row / 10) {
            last = (backlog(http).unwrap_or(0), published());
            println!("{:>10} {:>12.1} {:>16} {:>16}", seconds * row / 10, rss(), last.0, last.1);
            row += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu = (cpu_seconds(pid).unwrap_or(0.0) - cpu0) / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(publisher);
    let _ = child.kill();
    let _ = child.wait();
    println!();
    println!("{:<52} {:>12.1}", "tbgw RSS before the outage (MB)", before);
    println!("{:<52} {:>12.1}", "tbgw peak RSS during the outage (MB)", peak);
    println!("{:<52} {:>12.1}", "tbgw CPU during the outage (% of a core)", cpu * 100.0);
    println!(
        "{:<52} {:>12.3}",
        "stored / published in the outage (< 1: store full or behind)",
        (last.0 - first.0) as f64 / (last.1 - first.1).max(1) as f64
    );
    Ok(())
}

/// The store's backlog, from tbgw's `/metrics` on 127.0.0.1:`port`.
fn backlog(port: u16) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("tbgw_store_backlog_events "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Publish message k (device k % 100, its seq k / 100) at `start` + k / `rate`
/// (`None`: as fast as the broker takes them), QoS 1 without waiting for
/// each PUBACK, until `stop`; when each was published.
async fn publish_at(
    port: u16,
    rate: Option<u64>,
    start: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Vec<Instant>> {
    let mut o = MqttOptions::new("bench-devices", "127.0.0.1", port);
    o.set_inflight(1000);
    let (c, mut el) = AsyncClient::new(o, 10_000);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let mut sent = Vec::new();
    tokio::time::sleep_until(start.into()).await;
    while !stop.load(Ordering::Relaxed) {
        let k = sent.len() as u64;
        if let Some(rate) = rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(k as f64 / rate as f64)).into()).await;
        }
        let (topic, payload) = message((k % DEVICES as u64) as usize, (k / DEVICES as u64) as usize);
        c.publish(topic, QoS::AtLeastOnce, false, payload).await?;
        sent.push(Instant::now());
    }
    Ok(sent)
}
