//! BLE under load: 50 connected peripherals notifying at 10 Hz (two values
//! a notification) and 50 beacons whose manufacturer data changes every
//! second, served by the fake BlueZ of `tbgw_test_support::bluez` on a
//! private dbus-daemon; tbgw reaches it through btleplug as it reaches the
//! real BlueZ, decodes in the `ble` WASM converter and delivers to a local
//! mosquitto (its default settings) standing in for ThingsBoard.
//! Measured: notifications and advertisement changes sent, values/s
//! ThingsBoard received, tbgw's CPU (% of one core) and peak RSS; in the same
//! run, a plain btleplug client (the same peripherals connected and
//! subscribed, the same beacons followed; each value counted and thrown
//! away) as the floor. The fake's cost (this process: BlueZ's side, the load,
//! the ThingsBoard counter) and the bus daemon's are reported apart.
//!
//! `cargo bench -p tbgw-bench --bench ble` (needs `mosquitto` and `dbus`;
//! `TBGW_BENCH_PERIPHERALS` default 50, `TBGW_BENCH_BEACONS` default 50,
//! `TBGW_BENCH_HZ` default 10, `TBGW_BENCH_SECONDS` default 20).

#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/thingsboard.rs"]
mod thingsboard;

use btleplug::api::{Central, CentralEvent, Manager as _, Peripheral as _, ScanFilter};
use futures_util::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tbgw_bench::env_u64 as env;
use tbgw_bench::process::{Run, cpu_seconds, measure, spawn_self as spawn};
use tbgw_test_support::Mosquitto;
use tbgw_test_support::bluez::{FakeBluez, FakeChar, FakeDevice};

const FLOOR_MODE: &str = "TBGW_BENCH_BLE_FLOOR";
const SETTLE: Duration = Duration::from_secs(5);
const CLIMATE: &str = "226caa55-6476-4566-7562-66734470666d";

fn peripheral(i: u64) -> String {
    format!("AA:00:00:00:{:02X}:{:02X}", i >> 8, i & 0xff)
}

fn beacon(i: u64) -> String {
    format!("BB:00:00:00:{:02X}:{:02X}", i >> 8, i & 0xff)
}

fn main() -> anyhow::Result<()> {
    if let Some(gateway) = gateway::run_if_asked() {
        return gateway;
    }
    if let Ok(spec) = std::env::var(FLOOR_MODE) {
        return floor(&spec);
    }
    let (peripherals, beacons, hz, seconds) = (
        env("TBGW_BENCH_PERIPHERALS", 50),
        env("TBGW_BENCH_BEACONS", 50),
        env("TBGW_BENCH_HZ", 10),
        env("TBGW_BENCH_SECONDS", 20),
    );
    println!(
        "ble: {peripherals} peripherals notifying at {hz} Hz (two values each) and {beacons} beacons changing every second, for {seconds} s, through a fake BlueZ on a private D-Bus"
    );
    println!();
    let dir = tempfile::tempdir()?;

    // The floor: a plain btleplug client of the same devices.
    let count_file = dir.path().join("floor-count");
    let (floor_run, floor_load) = {
        let bluez = plant(peripherals, beacons);
        let child = spawn(&[
            (FLOOR_MODE, format!("{peripherals}|{}", count_file.display())),
            ("DBUS_SYSTEM_BUS_ADDRESS", bluez.address().to_owned()),
        ])?;
        wait_subscribed(&bluez, peripherals)?;
        let load = Load::start(&bluez, peripherals, beacons, hz);
        let run = measure(child, SETTLE, seconds, || std::fs::read_to_string(&count_file).ok()?.trim().parse().ok())?;
        (run, load.finish())
    };

    let bluez = plant(peripherals, beacons);
    let tb = Mosquitto::start_new();
    let config = write_config(dir.path(), tb.port, peripherals, beacons)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let received = Arc::new(thingsboard::Received::default());
    rt.block_on(thingsboard::count_datapoints(tb.port, received.clone()))?;
    let child = spawn(&[
        (gateway::GATEWAY_MODE, config.display().to_string()),
        ("DBUS_SYSTEM_BUS_ADDRESS", bluez.address().to_owned()),
    ])?;
    wait_subscribed(&bluez, peripherals)?;
    let load = Load::start(&bluez, peripherals, beacons, hz);
    let (me, daemon) = (std::process::id(), bluez.daemon_pid());
    let (me0, daemon0, t0) = (cpu_seconds(me).unwrap_or(0.0), cpu_seconds(daemon).unwrap_or(0.0), Instant::now());
    let tbgw_run = measure(child, SETTLE, seconds, || Some(received.datapoints.load(Ordering::Relaxed)))?;
    let elapsed = t0.elapsed().as_secs_f64();
    let fake_cpu = (cpu_seconds(me).unwrap_or(0.0) - me0) / elapsed * 100.0;
    let daemon_cpu = (cpu_seconds(daemon).unwrap_or(0.0) - daemon0) / elapsed * 100.0;
    let tbgw_load = load.finish();

    let row = |name: &str, sent: &Sent, run: &Run, values: String| {
        println!(
            "{name:<48} {:>10.0} {:>10.0} {values:>10} {:>12.1} {:>12.1}",
            sent.notifications, sent.advertisements, run.cpu_percent, run.peak_rss_mb
        );
    };
    println!(
        "{:<48} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "", "notif./s", "adv./s", "values/s", "CPU % core", "peak RSS MB"
    );
    row(
        "plain btleplug client (values counted, thrown away)",
        &floor_load,
        &floor_run,
        format!("{:.0}*", floor_run.counted_per_s),
    );
    row(
        "tbgw: ble WASM converter, memory store, MQTT",
        &tbgw_load,
        &tbgw_run,
        format!("{:.0}", tbgw_run.counted_per_s),
    );
    println!();
    println!("* the floor counts messages (a notification, an advertisement change), not values");
    let expected = 2.0 * tbgw_load.notifications + tbgw_load.advertisements;
    println!(
        "tbgw delivered {:.0} values/s of the {expected:.0}/s sent ({:.1}%); its largest store backlog: {} events",
        tbgw_run.counted_per_s,
        tbgw_run.counted_per_s / expected.max(1.0) * 100.0,
        received.peak_backlog.load(Ordering::Relaxed)
    );
    println!(
        "tbgw / plain client CPU: {:.2}x; the fake BlueZ with the load and the counter: {fake_cpu:.1}% of a core; the bus daemon: {daemon_cpu:.1}%",
        tbgw_run.cpu_percent / floor_run.cpu_percent.max(0.01)
    );
    Ok(())
}

/// A fake BlueZ with the peripherals and the beacons.
fn plant(peripherals: u64, beacons: u64) -> Arc<FakeBluez> {
    let bluez = Arc::new(FakeBluez::start());
    for i in 0..peripherals {
        bluez.add_device(&FakeDevice {
            address: peripheral(i),
            name: Some(format!("sensor-{i:03}")),
            rssi: Some(-50),
            services: vec![(
                "0000181a-0000-1000-8000-00805f9b34fb".into(),
                vec![FakeChar { uuid: CLIMATE.into(), flags: vec!["read", "notify"], value: vec![0, 0] }],
            )],
            ..Default::default()
        });
    }
    for i in 0..beacons {
        bluez.add_device(&FakeDevice {
            address: beacon(i),
            name: Some(format!("beacon-{i:03}")),
            rssi: Some(-70),
            manufacturer_data: vec![(0x0059, vec![0, 0])],
            ..Default::default()
        });
    }
    bluez
}

fn wait_subscribed(bluez: &FakeBluez, peripherals: u64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    while (0..peripherals).any(|i| !bluez.is_notifying(&peripheral(i), CLIMATE)) {
        anyhow::ensure!(Instant::now() < until, "not every peripheral was subscribed within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// What the load sent, per second.
struct Sent {
    notifications: f64,
    advertisements: f64,
}

/// Notifications at `hz` from every peripheral, a new advertisement from
/// every beacon each second.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Sent>,
}

impl Load {
    fn start(bluez: &Arc<FakeBluez>, peripherals: u64, beacons: u64, hz: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, bluez) = (stop.clone(), bluez.clone());
        let thread = std::thread::spawn(move || {
            let (start, mut tick, mut notes, mut advs) = (Instant::now(), 0u64, 0u64, 0u64);
            let period = Duration::from_secs_f64(1.0 / hz as f64);
            while !stop2.load(Ordering::Relaxed) {
                for i in 0..peripherals {
                    if bluez.notify(&peripheral(i), CLIMATE, &[(tick % 256) as u8, ((tick + i) % 256) as u8]) {
                        notes += 1;
                    }
                }
                if tick.is_multiple_of(hz) {
                    for i in 0..beacons {
                        let level = (tick / hz + i) as u16;
                        bluez.set_manufacturer_data(&beacon(i), vec![(0x0059, level.to_be_bytes().to_vec())]);
                        advs += 1;
                    }
                }
                tick += 1;
                let next = start + period * tick as u32;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            let secs = start.elapsed().as_secs_f64();
            Sent { notifications: notes as f64 / secs, advertisements: advs as f64 / secs }
        });
        Load { stop, thread }
    }

    fn finish(self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(Sent { notifications: 0.0, advertisements: 0.0 })
    }
}

fn write_config(dir: &Path, tb_port: u16, peripherals: u64, beacons: u64) -> anyhow::Result<std::path::PathBuf> {
    let mut devices: Vec<serde_json::Value> = (0..peripherals)
        .map(|i| {
            serde_json::json!({"name": format!("sensor-{i:03}"), "MACAddress": peripheral(i), "pollPeriod": 60000,
                "telemetry": [
                    {"key": "temperature", "method": "notify", "characteristicUUID": CLIMATE, "valueExpression": "[0]", "valueType": "uint8"},
                    {"key": "humidity", "method": "notify", "characteristicUUID": CLIMATE, "valueExpression": "[1]", "valueType": "uint8"}
                ]})
        })
        .collect();
    devices.extend((0..beacons).map(|i| {
        serde_json::json!({"name": format!("beacon-{i:03}"), "MACAddress": beacon(i), "pollPeriod": 60000,
            "telemetry": [{"key": "level", "dataSourceType": "advertisement", "valueExpression": "[0:2]", "compute": "value / 10"}]})
    }));
    std::fs::write(dir.join("ble.json"), serde_json::json!({"name": "BLE", "devices": devices}).to_string())?;
    tbgw_bench::write_config(dir, tb_port, "ble", "BLE", "ble.json")
}

/// The floor: a btleplug client that connects to and subscribes every
/// peripheral, follows every beacon's manufacturer data, and writes how
/// many values it got to a file every 200 ms.
fn floor(spec: &str) -> anyhow::Result<()> {
    let (n, file) = spec.split_once('|').ok_or_else(|| anyhow::anyhow!("PERIPHERALS|FILE"))?;
    let peripherals: u64 = n.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let manager = btleplug::platform::Manager::new().await?;
        let adapter = manager.adapters().await?.into_iter().next().ok_or_else(|| anyhow::anyhow!("no adapter"))?;
        let count = Arc::new(AtomicU64::new(0));
        let mut events = adapter.events().await?;
        adapter.start_scan(ScanFilter::default()).await?;
        let wanted: Vec<String> = (0..peripherals).map(peripheral).collect();
        for p in adapter.peripherals().await? {
            if !wanted.contains(&p.address().to_string()) {
                continue;
            }
            let count = count.clone();
            tokio::spawn(async move {
                p.connect().await?;
                p.discover_services().await?;
                let mut notes = p.notifications().await?;
                for c in p.characteristics() {
                    if c.uuid.to_string() == CLIMATE {
                        p.subscribe(&c).await?;
                    }
                }
                while let Some(n) = notes.next().await {
                    std::hint::black_box(n);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
        let mut last = Instant::now();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
            if let Ok(Some(CentralEvent::ManufacturerDataAdvertisement { manufacturer_data, .. })) = next {
                std::hint::black_box(manufacturer_data);
                count.fetch_add(1, Ordering::Relaxed);
            }
            if last.elapsed() > Duration::from_millis(200) {
                std::fs::write(file, count.load(Ordering::Relaxed).to_string())?;
                last = Instant::now();
            }
        }
    })
}
