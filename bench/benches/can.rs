//! A CAN bus under load: a device peer puts frames on the bus (a socketcand
//! hub on 127.0.0.1) at a fixed rate across 100 ids, each frame carrying
//! two values; tbgw, connected to the hub as a socketcand client, routes
//! them, decodes them in the `can` WASM converter and delivers them to a
//! local mosquitto (its default settings) standing in for ThingsBoard.
//! Measured: frames/s the peer sent, values/s ThingsBoard received, tbgw's
//! CPU (% of one core) and peak RSS; and, in the same run, a plain
//! socketcand client (the same frames read and parsed, then thrown away:
//! no routing, no conversion, no store, no delivery) as the floor.
//!
//! `cargo bench -p tbgw-bench --bench can` (needs `mosquitto`, and python3
//! with venv for the python-can peer; `TBGW_BENCH_RATE` frames/s, default
//! 10000; `TBGW_BENCH_IDS` default 100; `TBGW_BENCH_SECONDS` default 20;
//! `TBGW_BENCH_PEER=rust` makes the hub itself the source, for rates
//! python-can cannot send).

#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/thingsboard.rs"]
mod thingsboard;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tbgw_bench::env_u64 as env;
use tbgw_bench::process::{measure, spawn_self as spawn};
use tbgw_test_support::Mosquitto;
use tbgw_test_support::socketcand::{CanPeer, Hub};

const FLOOR_MODE: &str = "TBGW_BENCH_CAN_FLOOR";
const WARM_UP: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    if let Some(gateway) = gateway::run_if_asked() {
        return gateway;
    }
    if let Ok(spec) = std::env::var(FLOOR_MODE) {
        return floor(&spec);
    }
    let (rate, ids, seconds) =
        (env("TBGW_BENCH_RATE", 10_000), env("TBGW_BENCH_IDS", 100), env("TBGW_BENCH_SECONDS", 20));
    let rust_peer = std::env::var("TBGW_BENCH_PEER").is_ok_and(|p| p == "rust");
    println!(
        "can: {rate} frames/s over {ids} standard ids (two values a frame) from {} for {seconds} s, through a socketcand hub",
        if rust_peer { "the hub itself (a Rust source)" } else { "python-can 4.6.1" }
    );
    println!();

    let dir = tempfile::tempdir()?;
    let count_file = dir.path().join("floor-frames");
    let floor_run = {
        let hub = Hub::start();
        let child = spawn(&[(FLOOR_MODE, format!("{}:{}", hub.port, count_file.display()))])?;
        hub.wait_joined(1, Duration::from_secs(10));
        let load = Load::start(&hub, rust_peer, rate, ids, seconds)?;
        let run = measure(child, WARM_UP, seconds, || std::fs::read_to_string(&count_file).ok()?.trim().parse().ok())?;
        (run, load.finish())
    };

    let hub = Hub::start();
    let tb = Mosquitto::start_new();
    let config = write_config(dir.path(), tb.port, hub.port, ids)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let received = Arc::new(thingsboard::Received::default());
    rt.block_on(thingsboard::count_datapoints(tb.port, received.clone()))?;
    let child = spawn(&[(gateway::GATEWAY_MODE, config.display().to_string())])?;
    hub.wait_joined(1, Duration::from_secs(30));
    let load = Load::start(&hub, rust_peer, rate, ids, seconds)?;
    let tbgw_run = measure(child, WARM_UP, seconds, || Some(received.datapoints.load(Ordering::Relaxed)))?;
    let tbgw_sent = load.finish();

    println!("{:<52} {:>10} {:>10} {:>12} {:>12}", "", "frames/s", "values/s", "CPU % core", "peak RSS MB");
    let (floor_run, floor_sent) = floor_run;
    println!(
        "{:<52} {:>10.0} {:>10} {:>12.1} {:>12.1}",
        "plain socketcand client (frames parsed, thrown away)",
        floor_run.counted_per_s,
        "-",
        floor_run.cpu_percent,
        floor_run.peak_rss_mb
    );
    println!(
        "{:<52} {:>10.0} {:>10.0} {:>12.1} {:>12.1}",
        "tbgw: can WASM converter, memory store, MQTT delivery",
        tbgw_run.counted_per_s / 2.0,
        tbgw_run.counted_per_s,
        tbgw_run.cpu_percent,
        tbgw_run.peak_rss_mb
    );
    println!();
    println!("the peer sent {floor_sent:.0} frames/s in the floor's run and {tbgw_sent:.0} in tbgw's (asked: {rate})");
    println!("tbgw's largest store backlog: {} events (frames)", received.peak_backlog.load(Ordering::Relaxed));
    println!(
        "tbgw / plain client CPU: {:.2}x; µs of CPU per frame: tbgw {:.1}, plain client {:.1}",
        tbgw_run.cpu_percent / floor_run.cpu_percent.max(0.01),
        tbgw_run.cpu_percent * 1e4 / (tbgw_run.counted_per_s / 2.0).max(1.0),
        floor_run.cpu_percent * 1e4 / floor_run.counted_per_s.max(1.0),
    );
    Ok(())
}

/// The frames' source for one run.
enum Load {
    Python(CanPeer),
    Rust(Arc<AtomicBool>, std::thread::JoinHandle<f64>),
}

impl Load {
    fn start(hub: &Hub, rust: bool, rate: u64, ids: u64, seconds: u64) -> anyhow::Result<Load> {
        let count = rate * (WARM_UP.as_secs() + seconds + 2);
        let id_list: Vec<u32> = (0..ids as u32).map(|i| 0x100 + i).collect();
        if !rust {
            let mut peer = CanPeer::connect(hub.port);
            hub.wait_joined(2, Duration::from_secs(10));
            peer.burst(&id_list, count, rate);
            return Ok(Load::Python(peer));
        }
        // The hub as the source: batches every 10 ms.
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, hub) = (stop.clone(), hub.injector());
        let handle = std::thread::spawn(move || {
            let (start, mut n) = (Instant::now(), 0u64);
            while !stop2.load(Ordering::Relaxed) && n < count {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                let batch: Vec<(u32, bool, Vec<u8>)> = (n..due.min(count))
                    .map(|k| {
                        let mut data = (k as u32).to_be_bytes().to_vec();
                        data.extend([0, 0, 0x20, 0x41]);
                        (id_list[(k % id_list.len() as u64) as usize], false, data)
                    })
                    .collect();
                n += batch.len() as u64;
                hub.inject_many(&batch);
                std::thread::sleep(Duration::from_millis(10));
            }
            n as f64 / start.elapsed().as_secs_f64()
        });
        Ok(Load::Rust(stop, handle))
    }

    /// Stop; the rate achieved.
    fn finish(self) -> f64 {
        match self {
            Load::Python(peer) => {
                let note =
                    peer.wait_note(Duration::from_secs(120), "the burst's end", |n| n.get("burst_done").is_some());
                note["burst_done"].as_f64().unwrap_or(0.0) / note["secs"].as_f64().unwrap_or(1.0).max(1e-9)
            }
            Load::Rust(stop, handle) => {
                stop.store(true, Ordering::Relaxed);
                handle.join().unwrap_or(0.0)
            }
        }
    }
}

fn write_config(dir: &Path, tb_port: u16, hub_port: u16, ids: u64) -> anyhow::Result<std::path::PathBuf> {
    let devices: Vec<serde_json::Value> = (0..ids)
        .map(|i| {
            serde_json::json!({"name": format!("node-{i:03}"), "timeseries": [
                {"key": "counter", "nodeId": 0x100 + i, "value": "0:4:big:int"},
                {"key": "level", "nodeId": 0x100 + i, "value": "4:4:little:float", "expression": "round(value, 2)"}
            ]})
        })
        .collect();
    let can = serde_json::json!({"interface": "socketcand", "host": "127.0.0.1", "port": hub_port, "channel": "can0",
                                 "reconnectPeriod": 1, "devices": devices});
    std::fs::write(dir.join("can.json"), can.to_string())?;
    tbgw_bench::write_config(dir, tb_port, "can", "Bus", "can.json")
}

/// The floor: a socketcand client that reads and parses every frame, and
/// writes how many to a file every 200 ms.
fn floor(spec: &str) -> anyhow::Result<()> {
    let (port, file) = spec.split_once(':').ok_or_else(|| anyhow::anyhow!("PORT:FILE"))?;
    let port: u16 = port.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut client = tbgw_connector_can::socketcand::Client::connect("127.0.0.1", port, "can0")
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let frames = AtomicU64::new(0);
        let mut last = Instant::now();
        loop {
            if let tbgw_connector_can::socketcand::Message::Frame(_, data) =
                client.next().await.map_err(|e| anyhow::anyhow!(e))?
            {
                std::hint::black_box(data);
                frames.fetch_add(1, Ordering::Relaxed);
            }
            if last.elapsed() > Duration::from_millis(200) {
                std::fs::write(file, frames.load(Ordering::Relaxed).to_string())?;
                last = Instant::now();
            }
        }
    })
}
