//! Nothing lost at the limits, end to end with the real `tbgw` process:
//! ThingsBoard's rate limits respected while a backlog drains (a fake
//! ThingsBoard that enforces them as its transport does), refused publishes
//! sent again, PUBACKs to the devices' broker in receive order, and messages
//! that fail to convert kept as dead letters and replayed.

mod e2e_common;

use e2e_common::{Gateway, device, gateway_yaml, message, mqtt_json};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tbgw_test_support::fake_mqtt::{FakeThingsBoard, LimitSpec, Reading, RecordingBroker, Refusal, TbLimits};
use tbgw_test_support::{Collector, Mosquitto};

fn unlimited() -> TbLimits {
    TbLimits {
        gateway: LimitSpec::default(),
        own: LimitSpec::default(),
        announced: None,
        refusal: Refusal::PubackThenClose,
    }
}

/// Per device, the `seq`s ThingsBoard got, in arrival order.
fn by_device(readings: &[Reading]) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for r in readings {
        if let Some(seq) = r.values.get("seq").and_then(serde_json::Value::as_i64) {
            out.entry(r.device.clone()).or_default().push(seq);
        }
    }
    out
}

/// Every device got every seq below `per_device[d]`.
fn complete(readings: &[Reading], per_device: &[usize]) -> bool {
    let got = by_device(readings);
    per_device.iter().enumerate().all(|(d, n)| {
        let seqs = got.get(&device(d)).map(Vec::as_slice).unwrap_or(&[]);
        let mut seen = vec![false; *n];
        for s in seqs {
            if let Some(slot) = usize::try_from(*s).ok().and_then(|s| seen.get_mut(s)) {
                *slot = true;
            }
        }
        seen.iter().all(|s| *s)
    })
}

/// Each device's readings arrive in order: a seq seen for the first time is
/// never below one seen before (a resend after a reconnect may repeat).
fn assert_in_order(readings: &[Reading]) {
    for (dev, seqs) in by_device(readings) {
        let mut highest = -1;
        let mut seen = std::collections::HashSet::new();
        for s in seqs {
            if seen.insert(s) {
                assert!(s > highest, "{dev}: seq {s} arrived after {highest}");
                highest = s;
            }
        }
    }
}

/// Devices publishing: `devices` devices, one message each every `every`,
/// until stopped; the count each sent.
struct Load {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, devices: usize, every: Duration) -> Load {
        let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let thread = {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let client = Collector::connect(port, "devices-load", &[]);
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let seq = rounds.load(Ordering::Relaxed);
                    client.publish_many(
                        (0..devices).map(|d| (format!("sensor/{}/data", device(d)), message(d, seq).into_bytes())),
                    );
                    rounds.store(seq + 1, Ordering::Relaxed);
                    // Paced as devices send: by the clock, not after the last burst.
                    let next = start + every * (seq as u32 + 1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        Load { stop, rounds, thread: Some(thread) }
    }

    /// Stop; how many messages each device sent.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the load");
        }
        self.rounds.load(Ordering::Relaxed)
    }
}

/// After a 30 s outage under live load from 100 devices, ThingsBoard comes
/// back with datapoint limits that make the drain take longer than the
/// outage: nothing is refused, nothing lost, each device's order kept, and
/// the gateway catches up with the live data while the devices go on.
#[test]
fn a_drain_after_an_outage_stays_within_thingsboards_limits_and_catches_up() {
    let source = Mosquitto::start_new();
    // 100 devices x 1 message/s x 2 datapoints = 200 datapoints/s live;
    // ThingsBoard takes 450/s (tbgw uses 80%: 360/s), so a 30 s backlog
    // (6,000 datapoints) drains at ~160/s: ~40 s.
    let limits = TbLimits {
        gateway: LimitSpec::new("300:1,12000:60", "1000:1", "450:1"),
        own: LimitSpec::new("100:1", "100:1", "1000:1"),
        announced: None,
        refusal: Refusal::PubackThenClose,
    };
    let mut tb = FakeThingsBoard::start(limits);
    let dir = tempfile::tempdir().expect("tempdir");
    let _gw = Gateway::start(dir.path(), &gateway_yaml(tb.port, dir.path(), 60), &mqtt_json(source.port, "gw-drain"));
    let load = Load::start(source.port, 100, Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(5));
    tb.stop();
    std::thread::sleep(Duration::from_secs(30));
    let outage_end = load.rounds.load(Ordering::Relaxed);
    tb.start_again();
    let back = Instant::now();

    // Caught up: a reading published after ThingsBoard came back arrives
    // within a few seconds of being published, while devices go on.
    let caught_up = loop {
        let sent = load.rounds.load(Ordering::Relaxed);
        let got = by_device(&tb.readings());
        let newest = got.get(&device(0)).and_then(|s| s.iter().max().copied()).unwrap_or(-1);
        if newest > outage_end as i64 && (sent as i64 - newest) <= 3 {
            break back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(150),
            "never caught up: device 0 at seq {newest}, {sent} sent, {} refused",
            tb.refused()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(3));
    let per_device = load.stop();
    let readings = tb.wait_until(Duration::from_secs(60), "every reading", |r| complete(r, &[per_device; 100]));
    assert_eq!(tb.refused(), 0, "ThingsBoard refused data: a limit was exceeded");
    assert_eq!(tb.closed_for_limits(), 0);
    assert_in_order(&readings);
    println!(
        "drain: {} messages behind after the outage, caught up {:.1} s after ThingsBoard came back; {} readings",
        outage_end * 100,
        caught_up.as_secs_f64(),
        readings.len()
    );
    assert!(caught_up > Duration::from_secs(15), "the limits held the drain back ({caught_up:?})");
}

/// A ThingsBoard that announces limits higher than it enforces refuses
/// publishes, as a real one whose limits changed would: the refused events
/// go again (after a PUBACK as 4.2.1+ does, or without one as older ones
/// do), tbgw slows down, and nothing is lost. Devices publish steadily, so
/// that a refused publish is often its chunk's last: taking its PUBACK as
/// delivery would lose it.
#[test]
fn publishes_thingsboard_refuses_are_sent_again() {
    for refusal in [Refusal::PubackThenClose, Refusal::CloseWithoutPuback] {
        let source = Mosquitto::start_new();
        let limits = TbLimits {
            gateway: LimitSpec::new("1000:1", "1000:1", "300:1"),
            own: LimitSpec::default(),
            announced: Some((LimitSpec::new("1000:1", "1000:1", "3000:1"), LimitSpec::default())),
            refusal,
        };
        let tb = FakeThingsBoard::start(limits);
        let dir = tempfile::tempdir().expect("tempdir");
        let client = format!("gw-refused-{refusal:?}");
        let mut gw =
            Gateway::start(dir.path(), &gateway_yaml(tb.port, dir.path(), 60), &mqtt_json(source.port, &client));
        // 10 devices every 50 ms, 2 datapoints each: 400 a second against
        // 300 enforced (and 3,000 announced).
        let load = Load::start(source.port, 10, Duration::from_millis(50));
        std::thread::sleep(Duration::from_secs(10));
        let per_device = load.stop();
        let readings = tb
            .wait_until(Duration::from_secs(90), "every reading despite refusals", |r| complete(r, &[per_device; 10]));
        assert!(tb.refused() > 0, "{refusal:?}: ThingsBoard refused nothing: the test did not test");
        assert_in_order(&readings);
        gw.wait_for_log(Duration::from_secs(5), "the refusal logged", |log| log.contains("most likely a rate limit"));
        println!(
            "{refusal:?}: {} device parts refused, {} readings of {}, all delivered",
            tb.refused(),
            readings.len(),
            per_device * 10
        );
    }
}

/// Conversions that finish out of order (a slow converter on one topic, a
/// fast one on others) still give PUBACKs in the order the messages came.
#[test]
fn pubacks_leave_in_receive_order_when_conversions_finish_out_of_order() {
    let broker = RecordingBroker::start();
    let tb = FakeThingsBoard::start(unlimited());
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = format!(
        r#"{{"broker": {{"host": "127.0.0.1", "port": {}, "clientId": "gw-order", "version": 4,
                        "security": {{"type": "anonymous"}}}},
            "mapping": [
              {{"topicFilter": "slow/+", "subscriptionQos": 1,
                "converter": {{"type": "custom", "extension": "{}", "extensionConfig": {{"tag": "S"}},
                              "limits": {{"timeoutMs": 2000}}}}}},
              {{"topicFilter": "sensor/+/data", "subscriptionQos": 1,
                "converter": {{"type": "json", "deviceInfo": {{"deviceNameExpressionSource": "topic",
                                                              "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)"}},
                              "timeseries": [{{"type": "integer", "key": "seq", "value": "${{seq}}"}}]}}}}]}}"#,
        broker.port,
        tbgw_guests::PROBE
    );
    // Several converter threads, whatever the machine has: with one, every
    // conversion would finish in order and the test could not fail.
    let yaml = gateway_yaml(tb.port, dir.path(), 60) + "  workers: 4\n";
    let _gw = Gateway::start(dir.path(), &yaml, &mqtt);
    broker.wait_subscribed(Duration::from_secs(10));
    let mut sent = vec![broker.publish("slow/1", "busy:400")];
    for d in 0..30 {
        sent.push(broker.publish(&format!("sensor/{}/data", device(d)), message(d, 0)));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.pubacks().len() < sent.len() {
        assert!(Instant::now() < deadline, "{} of {} PUBACKs", broker.pubacks().len(), sent.len());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(broker.pubacks(), sent, "PUBACKs out of receive order");
    // And the data went on: the slow message and the 30 others.
    tb.wait_until(Duration::from_secs(10), "all 31 readings", |r| r.len() >= 31);
}

fn tbgw(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tbgw"))
        .args(args)
        .env("TBGW_CACHE_DIR", e2e_common::shared_cache())
        .output()
        .expect("run tbgw");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Malformed messages are acknowledged, and kept as dead letters with their
/// source and reason; after the route's converter is fixed, a replay stores
/// their events and the gateway delivers them.
#[test]
fn malformed_messages_become_dead_letters_and_a_replay_after_a_fix_delivers_them() {
    let source = Mosquitto::start_new();
    let tb = FakeThingsBoard::start(unlimited());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start(dir.path(), &gateway_yaml(tb.port, dir.path(), 60), &mqtt_json(source.port, "gw-dead"));
    let devices = Collector::connect(source.port, "devices-dead", &[]);
    for seq in 0..5 {
        devices.publish(&format!("sensor/{}/data", device(0)), message(0, seq));
    }
    for bad in ["not json at all", "{\"seq\": 1", "\u{1}\u{2}"] {
        devices.publish(&format!("sensor/{}/data", device(1)), bad);
    }
    tb.wait_until(Duration::from_secs(20), "the good readings", |r| r.len() >= 5);
    gw.wait_for_log(Duration::from_secs(20), "the failures logged", |log| log.contains("kept as a dead letter"));
    let config = dir.path().join("tb_gateway.yaml");
    let config = config.to_str().expect("a UTF-8 path");
    // The store is the running gateway's.
    let (ok, _, err) = tbgw(&["dead-letters", "list", "--config", config]);
    assert!(!ok && err.contains("is the gateway running?"), "{err}");
    assert_eq!(gw.stop().code(), Some(0));

    let (ok, out, err) = tbgw(&["dead-letters", "list", "--config", config, "--json"]);
    assert!(ok, "{err}");
    let letters: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    assert_eq!(letters.len(), 3, "{out}");
    let payloads: Vec<&str> = letters.iter().map(|l| l["payload"].as_str().unwrap_or("")).collect();
    assert_eq!(payloads, ["not json at all", "{\"seq\": 1", "\u{1}\u{2}"]);
    for l in &letters {
        assert_eq!(l["connector"], "Devices");
        assert_eq!(l["route"], "connectors[0].configuration.mapping[0].converter");
        assert_eq!(l["source"], format!("topic sensor/{}/data", device(1)));
        assert_eq!(l["sha256"].as_str().map(str::len), Some(64));
        assert!(!l["reason"].as_str().unwrap_or("").is_empty(), "{l}");
    }
    // A replay with the same converter fails them again and keeps them.
    let (ok, out, _) = tbgw(&["dead-letters", "replay", "--config", config]);
    assert!(!ok && out.matches("still fails").count() == 3, "{out}");

    // The fix: the route's converter now takes any payload (the probe
    // guest: the payload as text). Replay, then the gateway delivers.
    let fixed = format!(
        r#"{{"broker": {{"host": "127.0.0.1", "port": {}, "clientId": "gw-dead", "version": 4, "cleanSession": false,
                        "security": {{"type": "anonymous"}}}},
            "mapping": [{{"topicFilter": "sensor/+/data", "subscriptionQos": 1,
                          "converter": {{"type": "custom", "extension": "{}", "extensionConfig": {{"tag": "fixed"}}}}}}]}}"#,
        source.port,
        tbgw_guests::PROBE
    );
    std::fs::write(dir.path().join("mqtt.json"), fixed).expect("write the fixed mapping");
    let (ok, out, err) = tbgw(&["dead-letters", "replay", "--config", config]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches("replayed").count(), 3, "{out}");
    let (_, out, _) = tbgw(&["dead-letters", "list", "--config", config, "--json"]);
    assert!(out.trim().is_empty(), "replayed letters are gone: {out}");
    gw.spawn();
    let readings = tb.wait_until(Duration::from_secs(20), "the replayed messages", |r| {
        r.iter().filter(|r| r.device == "fixed").count() >= 3
    });
    let replayed: BTreeMap<String, usize> = readings
        .iter()
        .filter(|r| r.device == "fixed")
        .filter_map(|r| r.values.get("payload").and_then(|p| p.as_str()).map(|p| (p.to_owned(), 1)))
        .collect();
    assert_eq!(
        replayed.keys().map(String::as_str).collect::<Vec<_>>(),
        ["\u{1}\u{2}", "not json at all", "{\"seq\": 1"]
    );
}
