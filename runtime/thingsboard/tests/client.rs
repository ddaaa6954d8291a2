//! The delivery client against a real broker (mosquitto) standing in for
//! ThingsBoard: what arrives on the gateway API topics, what leaves the
//! store, and what happens when the broker goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tbgw_core::{DeviceUpdate, Entry, Event, Telemetry, Value};
use tbgw_store::{EventStore, MemoryStore, StoreLimits, WhenFull};
use tbgw_test_support::{Collector, Mosquitto, Received, TestPki};
use tbgw_thingsboard::{ClientConfig, ClientHandle, Credentials, Secret, TlsFiles};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn event(device: &str, n: i64) -> Event {
    Event {
        connector: "test".into(),
        update: DeviceUpdate {
            device: device.into(),
            device_type: Some("sensor".into()),
            attributes: if n % 10 == 0 { vec![Entry::new("last", Value::Int(n))] } else { vec![] },
            telemetry: vec![Telemetry {
                ts: Some(1_700_000_000_000 + n),
                values: vec![Entry::new("n", Value::Int(n))],
            }],
        },
        updates: 1,
    }
}

fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(StoreLimits {
        max_records: 10_000_000,
        max_bytes: 1 << 32,
        when_full: WhenFull::Block,
        dead_letters: Default::default(),
    }))
}

/// The client running on its own runtime.
struct Running {
    runtime: tokio::runtime::Runtime,
    handle: Option<ClientHandle>,
    shutdown: CancellationToken,
    notify: Arc<Notify>,
}

impl Running {
    fn start(config: ClientConfig, store: Arc<dyn EventStore>) -> Running {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let shutdown = CancellationToken::new();
        let notify = Arc::new(Notify::new());
        let handle = {
            let _guard = runtime.enter();
            tbgw_thingsboard::spawn(config, store, notify.clone(), shutdown.clone()).expect("spawn")
        };
        Running { runtime, handle: Some(handle), shutdown, notify }
    }

    fn stats(&self) -> tbgw_thingsboard::ClientStatsSnapshot {
        self.handle.as_ref().map(ClientHandle::stats).unwrap_or_default()
    }

    fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            self.runtime.block_on(h.join());
        }
    }
}

fn config(port: u16) -> ClientConfig {
    let mut c = ClientConfig::new("127.0.0.1", port, Credentials::AccessToken(Secret::new("token")));
    c.reconnect_min = Duration::from_millis(200);
    c.reconnect_max = Duration::from_secs(1);
    c.session_limits_timeout = Duration::from_millis(500);
    c
}

/// Every telemetry reading received: (device, n), in order of arrival.
fn readings(received: &[Received]) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for r in received.iter().filter(|r| r.topic == "v1/gateway/telemetry") {
        let doc: serde_json::Value = serde_json::from_slice(&r.payload).expect("telemetry is JSON");
        for (device, entries) in doc.as_object().expect("an object") {
            for e in entries.as_array().expect("an array") {
                out.push((device.clone(), e["values"]["n"].as_i64().expect("n")));
            }
        }
    }
    out
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn delivers_every_event_once_and_empties_the_store() {
    let broker = Mosquitto::start_new();
    let tb = Collector::connect(broker.port, "tb-1", &["v1/gateway/#"]);
    let store = store();
    let events: Vec<Event> = (0..3000).map(|n| event(&format!("dev-{}", n % 30), n)).collect();
    store.append(&events).expect("append");
    let client = Running::start(config(broker.port), store.clone());

    let got = tb.wait_until(Duration::from_secs(30), "3000 readings", |r| readings(r).len() >= 3000);
    wait_for("an empty store", Duration::from_secs(10), || store.stats().records == 0);
    let r = readings(&got);
    assert_eq!(r.len(), 3000, "no reading duplicated without a reconnect");
    let mut per_device: HashMap<String, Vec<i64>> = HashMap::new();
    for (d, n) in &r {
        per_device.entry(d.clone()).or_default().push(*n);
    }
    for (device, ns) in &per_device {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, &sorted, "{device}'s readings out of order");
        assert_eq!(ns.len(), 100);
    }
    // Each device is connected (with its profile) before its first data.
    for d in 0..30 {
        let name = format!("dev-{d}");
        let connect = got
            .iter()
            .position(|m| {
                m.topic == "v1/gateway/connect" && m.text() == format!(r#"{{"device":"{name}","type":"sensor"}}"#)
            })
            .unwrap_or_else(|| panic!("no connect for {name}"));
        let first_data = got
            .iter()
            .position(|m| m.topic == "v1/gateway/telemetry" && m.text().contains(&format!("\"{name}\"")))
            .expect("data");
        assert!(connect < first_data, "{name} connected after its data");
    }
    // Attributes: the latest value per device wins.
    let attrs: Vec<&Received> = got.iter().filter(|m| m.topic == "v1/gateway/attributes").collect();
    assert!(!attrs.is_empty());
    // Fewer publishes than events: many devices and readings per publish.
    assert!(got.iter().filter(|m| m.topic == "v1/gateway/telemetry").count() < 100);
    let stats = client.stats();
    assert_eq!(stats.delivered, 3000);
    assert_eq!(stats.delivered_per_connector.get("test"), Some(&3000));
    assert!(stats.connected);
    assert_eq!(store.devices().expect("devices").len(), 30, "devices remembered for the next start");
    client.stop();
}

#[test]
fn follows_the_session_limits_thingsboard_sends() {
    let broker = Mosquitto::start_new();
    let tb = Collector::connect_with(broker.port, "tb-2", &["v1/gateway/#", "v1/devices/me/rpc/request/+"], |m| {
        let id = m.topic.strip_prefix("v1/devices/me/rpc/request/")?;
        assert!(m.text().contains("getSessionLimits"));
        Some((
            format!("v1/devices/me/rpc/response/{id}"),
            br#"{"maxPayloadSize":4000,"maxInflightMessages":3,"rateLimits":{"messages":"1000:1"}}"#.to_vec(),
        ))
    });
    let store = store();
    let client = Running::start(config(broker.port), store.clone());
    // Data arrives after the limits were applied.
    std::thread::sleep(Duration::from_millis(500));
    store.append(&(0..2000).map(|n| event(&format!("d{}", n % 7), n)).collect::<Vec<_>>()).expect("append");
    client.notify.notify_one();
    let got = tb.wait_until(Duration::from_secs(30), "2000 readings", |r| readings(r).len() >= 2000);
    for m in got.iter().filter(|m| m.topic.starts_with("v1/gateway/")) {
        assert!(m.payload.len() <= 3200, "a publish of {} bytes, over 80% of the 4000 allowed", m.payload.len());
    }
    client.stop();
}

#[test]
fn an_outage_under_load_loses_nothing() {
    let mut broker = Mosquitto::start_new();
    let tb = Collector::connect(broker.port, "tb-3", &["v1/gateway/telemetry"]);
    let store = store();
    let mut config = config(broker.port);
    config.max_inflight = 20;
    let client = Running::start(config, store.clone());

    // A producer appends 100 events every 10 ms while the broker goes away.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (store, stop, notify) = (store.clone(), stop.clone(), client.notify.clone());
        std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                store
                    .append(&(n..n + 100).map(|i| event(&format!("p{}", i % 10), i)).collect::<Vec<_>>())
                    .expect("append");
                notify.notify_one();
                n += 100;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(store.stats().records > 0, "events wait in the store during the outage");
    broker.start();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().expect("producer");

    wait_for("the backlog to drain", Duration::from_secs(60), || store.stats().records == 0);
    let got = tb.wait_until(Duration::from_secs(30), "every reading", |r| {
        let mut seen: Vec<i64> = readings(r).into_iter().map(|(_, n)| n).collect();
        seen.sort();
        seen.dedup();
        seen.len() as i64 >= produced
    });
    let all = readings(&got);
    let mut seen: Vec<i64> = all.iter().map(|(_, n)| *n).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, (0..produced).collect::<Vec<_>>(), "every event delivered");
    let duplicates = all.len() - seen.len();
    // At most what was in flight when the connection dropped (20 publishes
    // of at most a few hundred readings each).
    assert!(duplicates <= 20 * 400, "{duplicates} duplicates");
    assert!(client.stats().sessions >= 2, "it reconnected");
    client.stop();
}

#[test]
fn tls_with_a_client_certificate() {
    let pki = TestPki::new();
    let broker = Mosquitto::start_tls(pki.listener(true));
    let tb = Collector::connect(broker.port, "tb-4", &["v1/gateway/telemetry"]);
    let store = store();
    store.append(&(0..10).map(|n| event("tls-dev", n)).collect::<Vec<_>>()).expect("append");
    let mut c = config(broker.tls_port.expect("tls port"));
    c.credentials = Credentials::None;
    c.tls = Some(TlsFiles {
        ca_cert: Some(pki.path("ca.pem")),
        client_cert: Some(pki.path("client.pem")),
        private_key: Some(pki.path("client.key")),
    });
    let client = Running::start(c.clone(), store.clone());
    tb.wait_until(Duration::from_secs(20), "10 readings over TLS", |r| readings(r).len() >= 10);
    client.stop();

    // A server certificate from another CA is refused.
    let other = TestPki::new();
    c.tls = Some(TlsFiles { ca_cert: Some(other.path("ca.pem")), ..c.tls.clone().unwrap_or_default() });
    store.append(&[event("tls-dev", 99)]).expect("append");
    let client = Running::start(c, store.clone());
    wait_for("a failed TLS handshake", Duration::from_secs(10), || client.stats().last_error.is_some());
    let err = client.stats().last_error.unwrap_or_default();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!client.stats().connected);
    client.stop();
}

#[test]
fn bad_tls_files_are_refused_at_start() {
    let mut c = config(1);
    c.tls = Some(TlsFiles { ca_cert: Some("/nonexistent/ca.pem".into()), ..TlsFiles::default() });
    let _rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = _rt.enter();
    let err =
        tbgw_thingsboard::spawn(c, store(), Arc::new(Notify::new()), CancellationToken::new()).err().expect("refused");
    assert!(err.to_string().contains("CA certificate /nonexistent/ca.pem"), "{err}");
}
