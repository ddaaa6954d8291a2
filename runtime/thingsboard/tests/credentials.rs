//! Credentials: refused ones are reported clearly, accepted ones work, and
//! neither ever appears in the logs (captured here at the most verbose
//! level, rumqttc's own `log` output included).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tbgw_core::{DeviceUpdate, Entry, Event, Telemetry, Value};
use tbgw_store::{EventStore, MemoryStore, StoreLimits, WhenFull};
use tbgw_test_support::{Collector, Mosquitto};
use tbgw_thingsboard::{ClientConfig, Credentials, Secret};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PASSWORD: &str = "pw-9f3b2c-never-log-me";
const WRONG: &str = "pw-wrong-also-secret-77";

#[test]
fn refused_credentials_are_reported_and_no_secret_is_logged() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .try_init()
        .expect("the only subscriber of this test binary");

    let broker = Mosquitto::start_with_users(&[("gateway", PASSWORD), ("tb", "tb")]);
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new(StoreLimits {
        max_records: 1000,
        max_bytes: 1 << 20,
        when_full: WhenFull::Block,
        dead_letters: Default::default(),
    }));
    store
        .append(&[Event {
            connector: "c".into(),
            update: DeviceUpdate {
                device: "D".into(),
                device_type: None,
                attributes: vec![],
                telemetry: vec![Telemetry { ts: Some(1), values: vec![Entry::new("v", Value::Int(1))] }],
            },
            updates: 1,
        }])
        .expect("append");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let run = |password: &str| {
        let mut c = ClientConfig::new(
            "127.0.0.1",
            broker.port,
            Credentials::Basic { username: Some("gateway".into()), password: Some(Secret::new(password)) },
        );
        c.reconnect_min = Duration::from_millis(100);
        let shutdown = CancellationToken::new();
        let _guard = runtime.enter();
        let handle =
            tbgw_thingsboard::spawn(c, store.clone(), Arc::new(Notify::new()), shutdown.clone()).expect("spawn");
        (handle, shutdown)
    };

    let (handle, shutdown) = run(WRONG);
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.stats().last_error.is_none() {
        assert!(Instant::now() < deadline, "no error reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = handle.stats().last_error.unwrap_or_default();
    assert!(err.contains("refused") && err.contains("credentials"), "{err}");
    assert_eq!(store.stats().records, 1, "nothing delivered, nothing lost");
    shutdown.cancel();
    runtime.block_on(handle.join());

    let tb = Collector::connect_basic(broker.port, "tb-cred", &["v1/gateway/telemetry"], "tb", "tb");
    let (handle, shutdown) = run(PASSWORD);
    tb.wait_until(Duration::from_secs(10), "the reading", |r| !r.is_empty());
    shutdown.cancel();
    runtime.block_on(handle.join());

    let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(log.contains("connected to ThingsBoard"), "the log was captured: {log}");
    for secret in [PASSWORD, WRONG] {
        assert!(!log.contains(secret), "a password appears in the log");
    }
}
