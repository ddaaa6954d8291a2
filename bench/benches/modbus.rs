//! Modbus polling at scale: N simulated devices x M tags (16-bit holding
//! registers) polled every second for S seconds by tbgw, which decodes them
//! in the `modbus` WASM converter and delivers them to a local mosquitto
//! standing in for ThingsBoard. Measured: reads/s the devices answered,
//! tags/s ThingsBoard received, tbgw's CPU (% of one core) and peak RSS;
//! and, in the same run, a plain poller (the same reads with tokio-modbus,
//! values thrown away: no conversion, no store, no delivery) as the floor.
//!
//! `cargo bench -p tbgw-bench --bench modbus` (needs `mosquitto`;
//! `TBGW_BENCH_DEVICES` default 100, `TBGW_BENCH_TAGS` per device, default
//! 1000, `TBGW_BENCH_SECONDS` default 30, `TBGW_BENCH_POLL_MS` default 1000;
//! tbgw's pipeline: `TBGW_BENCH_MAX_BATCH` default 256, `TBGW_BENCH_QUEUE`
//! default 4096; `TBGW_BENCH_REPORT=ON_CHANGE` (or another report strategy
//! type) sets the slaves' `reportStrategy`: the registers do not change, so
//! after the first poll tbgw sends nothing and the cost of filtering shows.)
//!
//! All devices are one simulator (tokio-modbus's server) on one loopback
//! port, one connection per device, as a gateway sees a field of devices
//! behind a Modbus TCP gateway.

#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/thingsboard.rs"]
mod thingsboard;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tbgw_bench::env_u64 as env;
use tbgw_bench::process::{cpu_seconds, status_kb};
use tbgw_test_support::Mosquitto;
use tbgw_test_support::modbus::{Framing, ModbusDevice};

const POLLER_MODE: &str = "TBGW_BENCH_POLLER";

fn main() -> anyhow::Result<()> {
    if let Some(gateway) = gateway::run_if_asked() {
        return gateway;
    }
    let (devices, tags, seconds) =
        (env("TBGW_BENCH_DEVICES", 100), env("TBGW_BENCH_TAGS", 1000), env("TBGW_BENCH_SECONDS", 30));
    if let Ok(port) = std::env::var(POLLER_MODE) {
        return plain_poller(port.parse()?, devices as usize, tags as u16);
    }
    let sim = ModbusDevice::start(Framing::Tcp);
    sim.with(|m| {
        for (i, r) in m.holding.iter_mut().enumerate().take(tags as usize) {
            *r = i as u16;
        }
    });
    println!(
        "modbus: {devices} devices x {tags} tags (16-bit holding registers) = {} tags, polled every 1 s for {seconds} s",
        devices * tags
    );
    println!();
    let floor = run_child(&sim, &[(POLLER_MODE, sim.port.to_string())], seconds, None)?;
    let tb = Mosquitto::start_new();
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), tb.port, sim.port, devices as usize, tags as u16)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let received = Arc::new(thingsboard::Received::default());
    rt.block_on(thingsboard::count_datapoints(tb.port, received.clone()))?;
    let tbgw = run_child(&sim, &[(gateway::GATEWAY_MODE, config.display().to_string())], seconds, Some(&*received))?;

    println!("{:<48} {:>9} {:>10} {:>12} {:>12}", "", "reads/s", "tags/s", "CPU % core", "peak RSS MB");
    for (name, r) in [
        ("plain poller (no conversion, no store, no delivery)", &floor),
        ("tbgw: modbus WASM converter, memory store, MQTT delivery", &tbgw),
    ] {
        println!(
            "{name:<48} {:>9.0} {:>10} {:>12.1} {:>12.1}",
            r.reads_per_s,
            r.tags_per_s.map_or("-".into(), |t| format!("{t:.0}")),
            r.cpu_percent,
            r.peak_rss_mb
        );
    }
    println!();
    println!("tbgw's largest store backlog: {} events (blocks)", received.peak_backlog.load(Ordering::Relaxed));
    println!(
        "tbgw's high-water mark (VmHWM, start-up included: reading the configuration): {:.1} MB",
        tbgw.high_water_mb
    );
    println!(
        "tbgw / plain poller CPU: {:.2}x; targets for 100k tags at 1 s: < 25% of a core (got {:.1}), < 60 MB (got {:.1}); \
         the Python gateway: 60% of a core and 190 MB for 10 devices x 10 registers every 10 ms",
        tbgw.cpu_percent / floor.cpu_percent.max(0.01),
        tbgw.cpu_percent,
        tbgw.peak_rss_mb
    );
    Ok(())
}

struct Run {
    reads_per_s: f64,
    tags_per_s: Option<f64>,
    cpu_percent: f64,
    /// The largest RSS seen while measured (after the warm-up).
    peak_rss_mb: f64,
    /// The kernel's high-water mark of the RSS, start-up included.
    high_water_mb: f64,
}

fn write_config(
    dir: &Path,
    tb_port: u16,
    sim_port: u16,
    devices: usize,
    tags: u16,
) -> anyhow::Result<std::path::PathBuf> {
    let timeseries: Vec<serde_json::Value> = (0..tags)
        .map(|a| serde_json::json!({"tag": format!("r{a}"), "type": "16int", "functionCode": 3, "address": a, "objectsCount": 1}))
        .collect();
    let report = std::env::var("TBGW_BENCH_REPORT").unwrap_or_else(|_| "ON_RECEIVED".into());
    let slaves: Vec<serde_json::Value> = (0..devices)
        .map(|d| {
            serde_json::json!({
                "host": "127.0.0.1", "port": sim_port, "type": "tcp", "method": "socket", "unitId": 1,
                "deviceName": format!("meter-{d:03}"), "pollPeriod": env("TBGW_BENCH_POLL_MS", 1000), "timeout": 5,
                "reportStrategy": {"type": report},
                "timeseries": timeseries,
            })
        })
        .collect();
    std::fs::write(dir.join("modbus.json"), serde_json::json!({"master": {"slaves": slaves}}).to_string())?;
    let tbgw = format!("maxBatch: {}, queue: {}", env("TBGW_BENCH_MAX_BATCH", 256), env("TBGW_BENCH_QUEUE", 4096));
    tbgw_bench::write_config_with(dir, tb_port, "modbus", "Meters", "modbus.json", &tbgw)
}

/// Run this binary in a mode for `seconds` after a warm-up, sampling its
/// CPU and RSS; reads counted at the simulator, datapoints at `received`.
fn run_child(
    sim: &ModbusDevice,
    env: &[(&str, String)],
    seconds: u64,
    received: Option<&thingsboard::Received>,
) -> anyhow::Result<Run> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.env("RUST_LOG", "warn").stdout(std::process::Stdio::null()).spawn()?;
    let pid = child.id();
    // Warm-up: connected, converters loaded, a few polls done.
    std::thread::sleep(Duration::from_secs(5));
    if let Some(status) = child.try_wait()? {
        anyhow::bail!("the child exited: {status}");
    }
    let (reads0, cpu0, got0, t0) = (
        sim.requests(),
        cpu_seconds(pid).unwrap_or(0.0),
        received.map_or(0, |r| r.datapoints.load(Ordering::Relaxed)),
        Instant::now(),
    );
    let mut peak = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        peak = peak.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let high_water = status_kb(pid, "VmHWM:").unwrap_or(0);
    let reads = sim.requests() - reads0;
    let got = received.map(|r| r.datapoints.load(Ordering::Relaxed) - got0);
    let _ = child.kill();
    let _ = child.wait();
    Ok(Run {
        reads_per_s: reads as f64 / elapsed,
        tags_per_s: got.map(|g| g as f64 / elapsed),
        cpu_percent: cpu / elapsed * 100.0,
        peak_rss_mb: peak as f64 / 1024.0,
        high_water_mb: high_water as f64 / 1024.0,
    })
}

/// The floor: the same reads (125 registers each) on the same schedule.
fn plain_poller(port: u16, devices: usize, tags: u16) -> anyhow::Result<()> {
    use tokio_modbus::client::Reader;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..devices {
            tasks.push(tokio::spawn(async move {
                let addr = ([127, 0, 0, 1], port).into();
                let Ok(mut ctx) = tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(1)).await else {
                    return;
                };
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let mut a = 0u16;
                    while a < tags {
                        let n = (tags - a).min(125);
                        if !matches!(ctx.read_holding_registers(a, n).await, Ok(Ok(_))) {
                            return;
                        }
                        a += n;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(())
}
