//! Running the real `tbgw` process for end-to-end scenarios: configuration
//! files in a temporary directory, the process started and stopped (politely
//! or with SIGKILL), its log kept for failure messages.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tbgw_test_support::{Collector, Received};

/// Compiled converters shared by every gateway of a test binary.
pub fn shared_cache() -> &'static Path {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| tempfile::tempdir().expect("tempdir")).path()
}

/// The MQTT connector config: devices publish JSON on `sensor/<device>/data`.
///
/// MQTT 3.1.1 towards the devices' broker: mosquitto 2.0.11 (Debian
/// bookworm's) delivers QoS 1 messages to an MQTT 5 subscriber out of order
/// once its receive-maximum quota fills (fixed in mosquitto 2.0.13), which
/// the ordering test would catch as tbgw's fault.
pub fn mqtt_json(source_port: u16, client_id: &str) -> String {
    format!(
        r#"{{
  "broker": {{"host": "127.0.0.1", "port": {source_port}, "clientId": "{client_id}", "version": 4,
             "cleanSession": false, "sessionExpiryInterval": 3600, "receiveMaximum": 200,
             "security": {{"type": "anonymous"}}}},
  "mapping": [{{
    "topicFilter": "sensor/+/data", "subscriptionQos": 1,
    "converter": {{"type": "json",
      "deviceInfo": {{"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)",
                     "deviceProfileExpressionSource": "constant", "deviceProfileExpression": "thermometer"}},
      "timeseries": [{{"type": "integer", "key": "seq", "value": "${{seq}}"}},
                     {{"type": "double", "key": "temperature", "value": "${{temp}}"}}]}}
  }}]
}}"#
    )
}

/// A gateway config: ThingsBoard on `tb_port`, a fjall store in `dir`.
pub fn gateway_yaml(tb_port: u16, dir: &Path, stats_secs: u64) -> String {
    format!(
        "thingsboard:\n  host: 127.0.0.1\n  port: {tb_port}\n  security: {{type: accessToken, accessToken: test-token}}\n  \
         statistics: {{enable: true, statsSendPeriodInSeconds: {stats_secs}}}\n\
         storage:\n  type: fjall\n  data_folder_path: {data}\n  fsync: interval\n  fsync_interval_ms: 100\n\
         connectors:\n  - {{type: mqtt, name: Devices, configuration: mqtt.json}}\n\
         tbgw:\n  cacheDir: {cache}\n",
        data = dir.join("data").display(),
        cache = shared_cache().display(),
    )
}

/// A gateway config for one connector of `kind` named `name`, configured by
/// `file`: ThingsBoard on `tb_port`, statistics every second, a memory store.
pub fn connector_yaml(tb_port: u16, kind: &str, name: &str, file: &str) -> String {
    format!(
        "thingsboard:\n  host: 127.0.0.1\n  port: {tb_port}\n  security: {{type: accessToken, accessToken: t}}\n  \
         statistics: {{enable: true, statsSendPeriodInSeconds: 1}}\n\
         storage: {{type: memory}}\n\
         connectors:\n  - {{type: {kind}, name: {name}, configuration: {file}}}\n\
         tbgw:\n  cacheDir: {cache}\n",
        cache = shared_cache().display(),
    )
}

/// The latest value of a gateway statistic (`CANReconnects`) ThingsBoard
/// received.
pub fn statistic(received: &[Received], key: &str) -> Option<Value> {
    received
        .iter()
        .filter(|m| m.topic == "v1/devices/me/telemetry")
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .filter_map(|v| v.get(key).cloned())
        .next_back()
}

/// The `tbgw` process.
pub struct Gateway {
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: usize,
    /// It has an MQTT connector: ready once subscribed to the devices' topics.
    mqtt: bool,
    /// Environment for the process beyond the harness's own.
    env: Vec<(String, String)>,
}

impl Gateway {
    /// A gateway whose connector config is `modbus.json`.
    pub fn start_modbus(dir: &Path, gateway_yaml: &str, modbus_json: &str) -> Gateway {
        Self::start_with(dir, &[("tb_gateway.yaml", gateway_yaml), ("modbus.json", modbus_json)])
    }

    /// Write the configuration into `dir` and start `tbgw run`.
    pub fn start(dir: &Path, gateway_yaml: &str, mqtt_json: &str) -> Gateway {
        Self::start_with(dir, &[("tb_gateway.yaml", gateway_yaml), ("mqtt.json", mqtt_json)])
    }

    /// Write `files` (name, content) into `dir` and start `tbgw run` with
    /// the first.
    pub fn start_with(dir: &Path, files: &[(&str, &str)]) -> Gateway {
        Self::start_with_env(dir, files, &[])
    }

    /// [`Gateway::start_with`], the process given `env` too (a BLE test's
    /// `DBUS_SYSTEM_BUS_ADDRESS`).
    pub fn start_with_env(dir: &Path, files: &[(&str, &str)], env: &[(&str, &str)]) -> Gateway {
        for (name, content) in files {
            std::fs::write(dir.join(name), content).expect("write config");
        }
        let config = dir.join(files.first().expect("a gateway config").0);
        let mqtt = files.iter().any(|(name, _)| *name == "mqtt.json");
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut g =
            Gateway { dir: dir.to_owned(), config, child: None, log: dir.join("tbgw.log"), starts: 0, mqtt, env };
        g.spawn();
        g
    }

    /// Start the process again (after a stop or a kill), with the same files.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tbgw"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("TBGW_E2E_LOG").unwrap_or_else(|_| "info,rumqttc=warn,fjall=warn,lsm_tree=warn".into()),
            )
            // Configs without tbgw's cacheDir compile here, not in $HOME.
            .env("TBGW_CACHE_DIR", shared_cache())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tbgw");
        self.child = Some(child);
        // Both sides connected, and the devices' messages flowing to it
        // (subscribed, or a session the broker kept): the gateway is ready.
        // Earlier, a message published with a new session would be lost.
        let (starts, mqtt) = (self.starts, self.mqtt);
        self.wait_for_log(Duration::from_secs(60), "a ready gateway", |log| {
            let run = log.split("tbgw 0.1.0 starting").nth(starts).unwrap_or("");
            let devices_side = if mqtt {
                run.contains("subscribed to") || run.contains("session_present=true")
            } else {
                run.contains("connector(s)")
            };
            run.contains("connected to ThingsBoard") && devices_side
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_for_log(&mut self, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if done(&log) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tbgw exited ({status}) while waiting for {what}:\n{log}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the orderly stop.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("tbgw did not stop within 30 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The gateway's side of the failure.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- the last lines of the tbgw log ---\n{}", lines[lines.len().saturating_sub(80)..].join("\n"));
            // The whole log outlives the temporary directory.
            let name = std::thread::current().name().unwrap_or("e2e").replace("::", "-");
            let kept = std::env::temp_dir().join(format!("tbgw-failed-{name}.log"));
            if std::fs::write(&kept, &log).is_ok() {
                eprintln!("--- the whole log: {} ---", kept.display());
            }
        }
    }
}

/// Every telemetry reading ThingsBoard received, as (device, seq, temperature).
pub fn readings(received: &[Received]) -> Vec<(String, i64, f64)> {
    let mut out = Vec::new();
    for r in received.iter().filter(|r| r.topic == "v1/gateway/telemetry") {
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).expect("telemetry is JSON");
        for (device, entries) in doc.as_object().expect("an object of devices") {
            for e in entries.as_array().expect("an array of readings") {
                let v = &e["values"];
                assert!(e["ts"].as_i64().is_some(), "a reading without ts: {e}");
                out.push((
                    device.clone(),
                    v["seq"].as_i64().unwrap_or(-1),
                    v["temperature"].as_f64().unwrap_or(f64::NAN),
                ));
            }
        }
    }
    out
}

/// The temperature device `d` reports with message `seq`.
pub fn temperature(d: usize, seq: usize) -> f64 {
    (d * 1000 + seq) as f64 / 10.0
}

/// The message device `d` publishes as number `seq`.
pub fn message(d: usize, seq: usize) -> String {
    format!(r#"{{"seq":{seq},"temp":{}}}"#, temperature(d, seq))
}

pub fn device(d: usize) -> String {
    format!("dev-{d:03}")
}

/// The latest value of `key` for `device` in what ThingsBoard received.
pub fn latest(received: &[Received], device: &str, key: &str) -> Option<Value> {
    values(received, device, key).pop()
}

/// Every value of `key` for `device` ThingsBoard received (telemetry and
/// attributes), in order.
pub fn values(received: &[Received], device: &str, key: &str) -> Vec<Value> {
    let mut found = Vec::new();
    for m in received.iter().filter(|m| m.topic == "v1/gateway/telemetry" || m.topic == "v1/gateway/attributes") {
        let Ok(doc) = serde_json::from_slice::<Value>(&m.payload) else { continue };
        let Some(entry) = doc.get(device) else { continue };
        let readings: Vec<&Value> = match entry {
            Value::Array(readings) => readings.iter().map(|r| &r["values"]).collect(),
            attrs => vec![attrs],
        };
        found.extend(readings.into_iter().filter_map(|v| v.get(key)).cloned());
    }
    found
}

/// RPC replies ThingsBoard received: (device, id) → data.
pub fn reply(received: &[Received], device: &str, id: i64) -> Option<Value> {
    received
        .iter()
        .filter(|m| m.topic == "v1/gateway/rpc")
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .find(|v| v["device"] == device && v["id"] == id)
        .map(|v| v["data"].clone())
}

pub fn rpc(tb: &Collector, device: &str, id: i64, method: &str, params: Value) -> Value {
    let request = json!({"device": device, "data": {"id": id, "method": method, "params": params}});
    tb.publish("v1/gateway/rpc", request.to_string());
    let got =
        tb.wait_until(Duration::from_secs(20), &format!("the reply to RPC {id}"), |r| reply(r, device, id).is_some());
    reply(&got, device, id).expect("found")
}
