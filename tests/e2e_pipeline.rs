//! End to end, with the real `tbgw` process between two real brokers
//! (mosquitto): devices publish on one, ThingsBoard's side is the other.
//! What ThingsBoard receives is checked reading by reading.

#[path = "e2e_common/mod.rs"]
mod common;

use common::{Gateway, device, gateway_yaml, message, mqtt_json, readings, temperature};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tbgw_test_support::{Collector, Mosquitto};

/// Count each (device, seq) reading; check every value.
fn tally(got: &[(String, i64, f64)]) -> HashMap<(String, i64), usize> {
    let mut seen = HashMap::new();
    for (dev, seq, temp) in got {
        let d: usize = dev.trim_start_matches("dev-").parse().expect("a device of ours");
        assert_eq!(*temp, temperature(d, *seq as usize), "{dev} seq {seq} arrived with a wrong value");
        *seen.entry((dev.clone(), *seq)).or_default() += 1;
    }
    seen
}

fn all_present(seen: &HashMap<(String, i64), usize>, devices: usize, per_device: usize) -> bool {
    (0..devices).all(|d| (0..per_device).all(|s| seen.contains_key(&(device(d), s as i64))))
}

#[test]
fn ten_thousand_messages_from_a_hundred_devices_arrive_exactly() {
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb", &["v1/gateway/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let _gw = Gateway::start(dir.path(), &gateway_yaml(tb.port, dir.path(), 60), &mqtt_json(source.port, "gw-10k"));

    let devices = Collector::connect(source.port, "devices", &[]);
    devices.publish_many(
        (0..100).flat_map(|seq| {
            (0..100).map(move |d| (format!("sensor/{}/data", device(d)), message(d, seq).into_bytes()))
        }),
    );
    let got = thingsboard.wait_until(Duration::from_secs(120), "10,000 readings", |r| readings(r).len() >= 10_000);
    let r = readings(&got);
    assert_eq!(r.len(), 10_000, "a reading was invented or duplicated");
    let seen = tally(&r);
    assert!(all_present(&seen, 100, 100), "a reading is missing");
    // Each device's readings in the order they were published.
    for d in 0..100 {
        let seqs: Vec<i64> = r.iter().filter(|(dev, _, _)| *dev == device(d)).map(|(_, s, _)| *s).collect();
        assert_eq!(seqs, (0..100).collect::<Vec<_>>(), "{} out of order", device(d));
    }
    // ThingsBoard's gateway API: every device connected with its profile.
    for d in 0..100 {
        let connect = format!(r#"{{"device":"{}","type":"thermometer"}}"#, device(d));
        assert!(
            got.iter().any(|m| m.topic == "v1/gateway/connect" && m.text() == connect),
            "no connect for {}",
            device(d)
        );
    }
}

#[test]
fn a_thingsboard_outage_under_load_loses_nothing() {
    let (mut tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb-outage", &["v1/gateway/telemetry"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let _gw = Gateway::start(dir.path(), &gateway_yaml(tb.port, dir.path(), 60), &mqtt_json(source.port, "gw-outage"));

    // 20 devices publish for about 14 s while ThingsBoard is away for 10 of them.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let port = source.port;
        std::thread::spawn(move || {
            let devices = Collector::connect(port, "devices-outage", &[]);
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                devices.publish_many(
                    (0..20).map(|d| (format!("sensor/{}/data", device(d)), message(d, seq).into_bytes())),
                );
                seq += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            seq
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    tb.stop();
    std::thread::sleep(Duration::from_secs(10));
    tb.start();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let per_device = publisher.join().expect("publisher");
    assert!(per_device > 100, "the load was too light: {per_device} messages per device");

    let got = thingsboard.wait_until(Duration::from_secs(120), "every reading after the outage", |r| {
        all_present(&tally(&readings(r)), 20, per_device)
    });
    let r = readings(&got);
    let seen = tally(&r);
    assert_eq!(seen.len(), 20 * per_device, "readings that were never published");
    let duplicates = r.len() - seen.len();
    println!("outage: {} readings, {duplicates} duplicates", r.len());
}

#[test]
fn a_killed_gateway_loses_no_qos1_message() {
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    // A ThingsBoard that answers getSessionLimits, so that delivery streams
    // from the start rather than after a backlog built up.
    let filters = ["v1/gateway/telemetry", tbgw_test_support::SESSION_LIMITS_REQUESTS];
    let thingsboard = Collector::thingsboard(tb.port, "tb-kill", &filters);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start(dir.path(), &gateway_yaml(tb.port, dir.path(), 60), &mqtt_json(source.port, "gw-kill"));

    const DEVICES: usize = 30;
    const PER_DEVICE: usize = 150;
    let publisher = {
        let port = source.port;
        std::thread::spawn(move || {
            let devices = Collector::connect(port, "devices-kill", &[]);
            for seq in 0..PER_DEVICE {
                devices.publish_many(
                    (0..DEVICES).map(|d| (format!("sensor/{}/data", device(d)), message(d, seq).into_bytes())),
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Kill it in the middle of the stream, while messages are in flight.
    thingsboard.wait_until(Duration::from_secs(60), "the stream to be flowing", |r| readings(r).len() > 800);
    gw.kill();
    std::thread::sleep(Duration::from_secs(1));
    gw.spawn();
    publisher.join().expect("publisher");

    let got = thingsboard.wait_until(Duration::from_secs(120), "every published reading", |r| {
        all_present(&tally(&readings(r)), DEVICES, PER_DEVICE)
    });
    let r = readings(&got);
    let seen = tally(&r);
    assert_eq!(seen.len(), DEVICES * PER_DEVICE, "readings that were never published");
    let duplicates = r.len() - seen.len();
    println!("kill -9: {} readings, {duplicates} duplicates", r.len());
    // At most what was in flight: messages received but not yet
    // acknowledged (receiveMaximum 200), and publishes not yet confirmed by
    // ThingsBoard (window 100 publishes, a few hundred readings each here).
    assert!(duplicates <= 200 + DEVICES * PER_DEVICE / 2, "{duplicates} duplicates");
    let log = gw.log();
    assert!(log.contains("events waiting for delivery"), "{log}");
}

#[test]
fn a_restart_of_the_devices_broker_is_ridden_out() {
    let (tb, mut source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb-source-restart", &["v1/gateway/telemetry"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start(
        dir.path(),
        &gateway_yaml(tb.port, dir.path(), 60),
        &mqtt_json(source.port, "gw-source-restart"),
    );
    let publish =
        |port: u16, seqs: std::ops::Range<usize>| {
            let devices = Collector::connect(port, "devices-source-restart", &[]);
            devices.publish_many(seqs.flat_map(|seq| {
                (0..5).map(move |d| (format!("sensor/{}/data", device(d)), message(d, seq).into_bytes()))
            }));
        };
    publish(source.port, 0..20);
    thingsboard.wait_until(Duration::from_secs(30), "the first 100 readings", |r| readings(r).len() >= 100);
    // The broker dies (SIGKILL) and comes back on the same port.
    source.stop();
    std::thread::sleep(Duration::from_secs(1));
    source.start();
    gw.wait_for_log(Duration::from_secs(60), "the connector back", |log| {
        log.contains("reconnected to the MQTT broker")
    });
    publish(source.port, 20..40);
    let got = thingsboard.wait_until(Duration::from_secs(60), "every reading, before and after", |r| {
        all_present(&tally(&readings(r)), 5, 40)
    });
    assert_eq!(tally(&readings(&got)).len(), 200, "readings that were never published");
}

#[test]
fn bad_messages_are_counted_and_the_rest_flows() {
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb-bad", &["v1/gateway/telemetry", "v1/devices/me/telemetry"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = Gateway::start(dir.path(), &gateway_yaml(tb.port, dir.path(), 1), &mqtt_json(source.port, "gw-bad"));
    let devices = Collector::connect(source.port, "devices-bad", &[]);
    let mut messages = Vec::new();
    for seq in 0..30 {
        messages.push((format!("sensor/{}/data", device(1)), message(1, seq).into_bytes()));
        if seq % 10 == 0 {
            messages.push((format!("sensor/{}/data", device(2)), b"not json at all".to_vec()));
            messages.push((format!("sensor/{}/data", device(3)), b"[1, 2, 3]".to_vec()));
            messages.push((format!("sensor/{}/data", device(4)), br#"{"seq":"x","temp":"warm"}"#.to_vec()));
        }
    }
    devices.publish_many(messages);
    // Statistics once everything is through: 30 stored and delivered.
    let settled = |m: &tbgw_test_support::Received| {
        m.topic == "v1/devices/me/telemetry"
            && [r#""DevicesEventsStored":30"#, r#""DevicesEventsSent":30"#, r#""DevicesConversionErrors":6"#]
                .iter()
                .all(|k| m.text().contains(k))
    };
    let got =
        thingsboard.wait_until(Duration::from_secs(60), "the good readings and statistics counting the bad", |r| {
            readings(r).iter().filter(|(d, _, _)| *d == device(1)).count() >= 30 && r.iter().any(settled)
        });
    let r = readings(&got);
    tally(&r);
    assert_eq!(r.iter().filter(|(d, _, _)| *d == device(1)).count(), 30, "dev-001: every good reading, once");
    assert!(!r.iter().any(|(d, _, _)| *d == device(2) || *d == device(3)), "a bad message produced data");
    // dev-004's values do not convert: dropped, counted, the message kept.
    let stats = got.iter().find(|m| settled(m)).expect("statistics").text();
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("statistics JSON");
    // 39 messages received; 33 converted (dev-004's are JSON, with values
    // that do not convert: those 6 values are dropped and counted); the 6
    // that are not objects of values are conversion errors.
    assert_eq!(stats["DevicesEventsProduced"], 39, "{stats}");
    assert_eq!(stats["DevicesMessagesConverted"], 33, "{stats}");
    assert_eq!(stats["DevicesConversionErrors"], 6, "{stats}");
    assert_eq!(stats["DevicesValuesDropped"], 6, "{stats}");
    let log = gw.log();
    assert!(log.contains("payload is not valid JSON"), "the failure is logged with its reason:\n{log}");
    assert!(gw.stop().success(), "an orderly stop");
    assert!(gw.log().contains("stopped after"), "{}", gw.log());
}

/// A ThingsBoard gateway user's files, in the Python gateway's JSON shape
/// with its keys tbgw has no use for, run unchanged (memory storage, MQTT 5).
#[test]
fn a_python_gateway_users_files_run_unchanged() {
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb-python", &["v1/gateway/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let general = format!(
        r#"{{
  "thingsboard": {{
    "host": "127.0.0.1", "port": {tb}, "remoteShell": false, "remoteConfiguration": false,
    "statistics": {{"enable": true, "statsSendPeriodInSeconds": 60, "customStatsSendPeriodInSeconds": 3600}},
    "deviceFiltering": {{"enable": false, "filterFile": "list.json"}},
    "maxPayloadSizeBytes": 8196, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
    "checkConnectorsConfigurationInSeconds": 60, "handleDeviceRenaming": true,
    "security": {{"type": "accessToken", "accessToken": "YOUR_ACCESS_TOKEN"}},
    "qos": 1, "reportStrategy": {{"type": "ON_RECEIVED"}},
    "rateLimits": "DEFAULT_TELEMETRY_RATE_LIMIT", "dpRateLimits": "DEFAULT_TELEMETRY_DP_RATE_LIMIT"
  }},
  "storage": {{"type": "memory", "read_records_count": 100, "max_records_count": 100000}},
  "grpc": {{"enabled": false, "serverPort": 9595}},
  "connectors": [{{"type": "mqtt", "name": "MQTT Broker Connector", "configuration": "mqtt.json"}}]
}}"#,
        tb = tb.port
    );
    let mqtt = format!(
        r#"{{
  "broker": {{"host": "127.0.0.1", "port": {port}, "clientId": "ThingsBoard_gateway", "version": 5,
             "maxMessageNumberPerWorker": 10, "maxNumberOfWorkers": 100, "sendDataOnlyOnChange": false,
             "cleanSession": true, "cleanStart": true, "sessionExpiryInterval": 0,
             "security": {{"type": "anonymous"}}}},
  "mapping": [{{
    "topicFilter": "sensor/+/data", "subscriptionQos": 1,
    "converter": {{"type": "json", "useReceivedTs": false,
      "deviceInfo": {{"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)",
                     "deviceProfileExpressionSource": "constant", "deviceProfileExpression": "thermometer"}},
      "attributes": [],
      "timeseries": [{{"type": "integer", "key": "seq", "value": "${{seq}}"}},
                     {{"type": "double", "key": "temperature", "value": "${{temp}}"}}]}}
  }}],
  "requestsMapping": {{"connectRequests": [], "disconnectRequests": [], "attributeRequests": [],
                      "attributeUpdates": [], "serverSideRpc": []}}
}}"#,
        port = source.port
    );
    let gw = Gateway::start_with(dir.path(), &[("tb_gateway.json", &general), ("mqtt.json", &mqtt)]);
    let devices = Collector::connect(source.port, "devices-python", &[]);
    devices
        .publish_many((0..20).flat_map(|seq| {
            (0..10).map(move |d| (format!("sensor/{}/data", device(d)), message(d, seq).into_bytes()))
        }));
    let got = thingsboard.wait_until(Duration::from_secs(60), "200 readings", |r| readings(r).len() >= 200);
    let r = readings(&got);
    assert_eq!(r.len(), 200, "none lost, none invented");
    assert!(all_present(&tally(&r), 10, 20), "a reading is missing");
    // The Python-only keys were noticed, once each, not refused.
    let log = gw.log();
    for key in ["thingsboard.remoteShell", "grpc", "connectors[0].configuration.broker.maxNumberOfWorkers"] {
        assert_eq!(log.matches(&format!("{key}: ignored")).count(), 1, "one notice for {key}:\n{log}");
    }
}

fn probe_version(tag: &str) -> Vec<u8> {
    tbgw_guests::probe_variant(tag).expect("the probe guest")
}

/// The payloads of device `P`'s readings (the probe's), as ThingsBoard got them.
fn probe_payloads(received: &[tbgw_test_support::Received]) -> std::collections::HashSet<String> {
    received
        .iter()
        .filter(|m| m.topic == "v1/gateway/telemetry")
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .flat_map(|doc| doc["P"].as_array().cloned().unwrap_or_default())
        .filter_map(|reading| reading["values"]["payload"].as_str().map(str::to_owned))
        .collect()
}

/// A converter's `.wasm` replaced on disk while messages flow: the running
/// gateway swaps the new version in (no restart), refuses a broken one
/// (the current version keeps serving), and every message is converted.
#[test]
fn a_converter_file_replaced_while_running_is_swapped_in_and_nothing_is_lost() {
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb-swap", &["v1/gateway/#", "v1/devices/me/rpc/response/+"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = std::fs::read(tbgw_guests::PROBE).expect("the probe guest");
    std::fs::write(dir.path().join("conv.wasm"), &wasm).expect("write conv.wasm");
    let mqtt = format!(
        r#"{{"broker": {{"host": "127.0.0.1", "port": {}, "clientId": "gw-swap", "version": 4, "cleanSession": false,
                        "security": {{"type": "anonymous"}}}},
            "mapping": [{{"topicFilter": "probe/in", "subscriptionQos": 1,
                          "converter": {{"type": "custom", "extension": "conv.wasm", "extensionConfig": {{"tag": "P"}}}}}}]}}"#,
        source.port
    );
    let yaml = gateway_yaml(tb.port, dir.path(), 60) + "  watchConverters: 1\n";
    let mut gw = Gateway::start(dir.path(), &yaml, &mqtt);
    let devices = Collector::connect(source.port, "probe-device", &[]);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                devices.publish("probe/in", format!("m{n}"));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // A new version, written beside and renamed over.
    std::thread::sleep(Duration::from_secs(1));
    let v2 = probe_version("2");
    std::fs::write(dir.path().join("conv.wasm.new"), &v2).expect("write v2");
    std::fs::rename(dir.path().join("conv.wasm.new"), dir.path().join("conv.wasm")).expect("rename v2");
    gw.wait_for_log(Duration::from_secs(30), "the new version swapped in", |log| log.contains("swapped in"));
    // A broken one: refused, and the running version goes on.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(dir.path().join("conv.wasm"), b"not a component").expect("write junk");
    gw.wait_for_log(Duration::from_secs(30), "the broken version refused", |log| log.contains("replacement refused"));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    let total = sent.load(Ordering::Relaxed);
    let got = thingsboard
        .wait_until(Duration::from_secs(30), "every message converted", |r| probe_payloads(r).len() >= total);
    let missing: Vec<usize> = (0..total).filter(|n| !probe_payloads(&got).contains(&format!("m{n}"))).collect();
    assert!(missing.is_empty(), "{} of {total} messages lost across the swaps: {missing:?}", missing.len());
    assert!(total > 150, "messages flowed during both swaps ({total})");
    // The converter's own account: one swap, one refusal, generation 2.
    thingsboard.publish("v1/devices/me/rpc/request/1", r#"{"method": "gateway_converters", "params": {}}"#);
    let got = thingsboard.wait_until(Duration::from_secs(20), "the converters RPC's answer", |r| {
        r.iter().any(|m| m.topic == "v1/devices/me/rpc/response/1")
    });
    let answer: serde_json::Value = got
        .iter()
        .find(|m| m.topic == "v1/devices/me/rpc/response/1")
        .and_then(|m| serde_json::from_slice(&m.payload).ok())
        .expect("an answer in JSON");
    let c = &answer["resp"][0];
    assert_eq!((&c["generation"], &c["swaps"], &c["refusedSwaps"]), (&json!(2), &json!(1), &json!(1)), "{answer}");
}

/// An RPC to the gateway device, as ThingsBoard sends it; its answer.
fn own_rpc(tb: &Collector, id: u64, method: &str, params: serde_json::Value) -> serde_json::Value {
    let topic = format!("v1/devices/me/rpc/response/{id}");
    tb.publish(&format!("v1/devices/me/rpc/request/{id}"), json!({"method": method, "params": params}).to_string());
    let got = tb.wait_until(Duration::from_secs(60), &format!("the answer to {method} ({id})"), |r| {
        r.iter().any(|m| m.topic == topic)
    });
    got.iter().find(|m| m.topic == topic).and_then(|m| serde_json::from_slice(&m.payload).ok()).expect("JSON")
}

/// A converter sent from ThingsBoard while devices publish: uploaded in
/// chunks over RPC, swapped in with nothing lost, reported in the
/// `converters` attribute; one announced with a wrong SHA-256 refused; one
/// that traps on every message rolled back by itself, the messages it
/// failed kept as dead letters and delivered after a replay; and the
/// upload still serving after a restart.
#[test]
fn a_converter_uploaded_from_thingsboard_swaps_in_under_load_and_a_trapping_one_rolls_back() {
    use base64::Engine as _;
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(
        tb.port,
        "tb-upload",
        &["v1/gateway/#", "v1/devices/me/rpc/response/+", "v1/devices/me/attributes"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(tbgw_guests::PROBE, dir.path().join("conv.wasm")).expect("copy the probe");
    let mqtt = format!(
        r#"{{"broker": {{"host": "127.0.0.1", "port": {}, "clientId": "gw-upload", "version": 4, "cleanSession": false,
                        "security": {{"type": "anonymous"}}}},
            "mapping": [{{"topicFilter": "probe/in", "subscriptionQos": 1,
                          "converter": {{"type": "custom", "extension": "conv.wasm", "extensionConfig": {{"tag": "P"}}}}}}]}}"#,
        source.port
    );
    let yaml = gateway_yaml(tb.port, dir.path(), 60) + "  uploads: uploads\n";
    let mut gw = Gateway::start(dir.path(), &yaml, &mqtt);
    let listed = own_rpc(&thingsboard, 1, "gateway_converters", json!({}));
    let name = listed["resp"][0]["name"].as_str().expect("a converter's name").to_owned();
    let devices = Collector::connect(source.port, "probe-device", &[]);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                devices.publish("probe/in", format!("m{n}"));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut id = 10;
    let mut upload = |wasm: &[u8], sha256: &str, first: serde_json::Value| -> serde_json::Value {
        const CHUNK: usize = 48 * 1024;
        let mut answer = json!(null);
        for (i, piece) in wasm.chunks(CHUNK).enumerate() {
            let mut params = json!({"converter": name, "sha256": sha256, "size": wasm.len(), "offset": i * CHUNK,
                                    "data": base64::engine::general_purpose::STANDARD.encode(piece)});
            if i == 0
                && let (Some(p), Some(f)) = (params.as_object_mut(), first.as_object())
            {
                p.extend(f.clone());
            }
            id += 1;
            answer = own_rpc(&thingsboard, id, "gateway_converter_upload", params);
            if (i + 1) * CHUNK < wasm.len() {
                assert_eq!(answer["resp"]["received"], json!((i + 1) * CHUNK), "chunk {i}: {answer}");
            }
        }
        answer
    };
    let sha = |wasm: &[u8]| tbgw_wasm::cache::sha256_hex(wasm);

    std::thread::sleep(Duration::from_secs(1));
    let v2 = probe_version("2");
    let answer = upload(&v2, &sha(&v2), json!({"version": "2.0", "config": {"tag": "P"}}));
    assert_eq!((&answer["resp"]["status"], &answer["resp"]["generation"]), (&json!("swapped"), &json!(2)), "{answer}");
    let reported = thingsboard.wait_until(Duration::from_secs(20), "the converters attribute", |r| {
        r.iter().any(|m| m.topic == "v1/devices/me/attributes" && m.text().contains("\"2.0\""))
    });
    let attribute: serde_json::Value = reported
        .iter()
        .rev()
        .find(|m| m.topic == "v1/devices/me/attributes" && m.text().contains("converters"))
        .and_then(|m| serde_json::from_slice(&m.payload).ok())
        .expect("JSON");
    let c = &attribute["converters"][&name];
    assert_eq!((&c["source"], &c["version"], &c["sha256"]), (&json!("upload"), &json!("2.0"), &json!(sha(&v2))));

    // Announced with another hash: refused.
    let v3 = probe_version("3");
    let wrong = upload(&v3, &sha(b"another component"), json!({}));
    assert_eq!(wrong["code"], 422, "{wrong}");
    // One that loads, and traps on every message: rolled back by itself.
    let answer = upload(&v3, &sha(&v3), json!({"config": {"tag": "P", "trap": true}}));
    assert_eq!((&answer["resp"]["status"], &answer["resp"]["generation"]), (&json!("swapped"), &json!(3)), "{answer}");
    gw.wait_for_log(Duration::from_secs(30), "the rollback", |log| log.contains("rolled back:"));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    let total = sent.load(Ordering::Relaxed);
    let listed = own_rpc(&thingsboard, 2, "gateway_converters", json!({}));
    let c = &listed["resp"][0];
    assert_eq!((&c["sha256"], &c["generation"]), (&json!(sha(&v2)), &json!(4)), "back on 2.0: {listed}");

    // Every message converted, or kept as a dead letter by the trapping version.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (got, dead) = (100..)
        .find_map(|id| {
            let dead = own_rpc(&thingsboard, id, "gateway_stats", json!({}))["resp"]["deadLetters"].as_u64();
            let (got, dead) = (thingsboard.received(), dead.unwrap_or(0) as usize);
            let done = probe_payloads(&got).len() + dead >= total || std::time::Instant::now() > deadline;
            if !done {
                std::thread::sleep(Duration::from_millis(200));
            }
            done.then_some((got, dead))
        })
        .expect("an answer");
    let missing: Vec<usize> = (0..total).filter(|n| !probe_payloads(&got).contains(&format!("m{n}"))).collect();
    assert!(dead >= 5, "the trapping version failed messages, kept as dead letters ({dead})");
    assert_eq!(missing.len(), dead, "only the dead letters are missing: {missing:?}");
    assert!(total > 150, "messages flowed throughout ({total})");

    // Stopped, the dead letters replayed (with the version serving: the
    // upload), started again: the upload still serves, every message arrives.
    gw.stop();
    let config = dir.path().join("tb_gateway.yaml");
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_tbgw"))
        .args(["dead-letters", "replay", "--config"])
        .arg(&config)
        .env("TBGW_CACHE_DIR", common::shared_cache())
        .output()
        .expect("run tbgw dead-letters replay");
    assert!(replay.status.success(), "replay: {}", String::from_utf8_lossy(&replay.stderr));
    gw.spawn();
    assert!(gw.log().contains("serving the version uploaded from ThingsBoard"), "the upload kept across the restart");
    let got = thingsboard
        .wait_until(Duration::from_secs(30), "every message delivered", |r| probe_payloads(r).len() >= total);
    let missing: Vec<usize> = (0..total).filter(|n| !probe_payloads(&got).contains(&format!("m{n}"))).collect();
    assert!(missing.is_empty(), "{} of {total} messages lost: {missing:?}", missing.len());
    let listed = own_rpc(&thingsboard, 4, "gateway_converters", json!({}));
    assert_eq!(listed["resp"][0]["sha256"], json!(sha(&v2)), "{listed}");
}

/// Each (device, seq) ThingsBoard received, whatever the other keys.
fn seqs(received: &[tbgw_test_support::Received]) -> std::collections::HashSet<(String, i64)> {
    received
        .iter()
        .filter(|m| m.topic == "v1/gateway/telemetry")
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .filter_map(|doc| doc.as_object().cloned())
        .flat_map(|o| o.into_iter())
        .flat_map(|(dev, readings)| {
            readings.as_array().cloned().unwrap_or_default().into_iter().filter_map(move |r| {
                let seq = r["values"]["seq"].as_i64()?;
                Some((dev.clone(), seq))
            })
        })
        .collect()
}

/// A connector's configuration file edited while devices publish to two
/// connectors: that connector alone restarts with it, the other keeps its
/// session, and nothing is lost; an edit that does not parse is refused
/// and one that only reformats changes nothing (the connector runs on in
/// both cases); one whose connector cannot connect goes back to the
/// configuration before after its probation.
#[test]
fn a_connectors_file_edited_while_running_restarts_that_connector_alone_and_loses_nothing() {
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb-reload", &["v1/gateway/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let a =
        mqtt_json(source.port, "gw-reload-a").replace("sensor/+/data", "a/+/data").replace("(?<=sensor/)", "(?<=a/)");
    let b =
        mqtt_json(source.port, "gw-reload-b").replace("sensor/+/data", "b/+/data").replace("(?<=sensor/)", "(?<=b/)");
    let yaml = gateway_yaml(tb.port, dir.path(), 60).replace(
        "connectors:\n  - {type: mqtt, name: Devices, configuration: mqtt.json}\n",
        "connectors:\n  - {type: mqtt, name: A, configuration: a.json}\n  - {type: mqtt, name: B, configuration: b.json}\n",
    ) + "  watchConverters: 1\n";
    std::fs::write(dir.path().join("a.json"), &a).expect("a.json");
    std::fs::write(dir.path().join("b.json"), &b).expect("b.json");
    let mut gw = Gateway::start_with(dir.path(), &[("tb_gateway.yaml", &yaml), ("mqtt.json", "{}")]);
    gw.wait_for_log(Duration::from_secs(30), "both connectors subscribed", |log| {
        log.matches("subscribed to").count() >= 2
    });
    let devices = Collector::connect(source.port, "reload-devices", &[]);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                for side in ["a", "b"] {
                    devices.publish(&format!("{side}/{side}-dev/data"), format!(r#"{{"seq": {n}, "temp": 20.5}}"#));
                }
                sent.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let write = |text: &str| {
        std::fs::write(dir.path().join("a.json.new"), text).expect("write");
        std::fs::rename(dir.path().join("a.json.new"), dir.path().join("a.json")).expect("rename");
    };
    let restarts = |log: &str| log.matches("connector restarted with its new configuration").count();
    std::thread::sleep(Duration::from_secs(1));

    // A real change: A's temperature under a new key.
    write(&a.replace(r#""key": "temperature""#, r#""key": "temperature_v2""#));
    gw.wait_for_log(Duration::from_secs(30), "A restarted", |log| restarts(log) == 1);
    thingsboard.wait_until(Duration::from_secs(30), "A's readings under the new key", |r| {
        r.iter().any(|m| m.topic == "v1/gateway/telemetry" && m.text().contains("temperature_v2"))
    });
    // Not JSON: refused, A goes on.
    write("{ this is not JSON");
    gw.wait_for_log(Duration::from_secs(30), "the broken edit refused", |log| log.contains("is refused"));
    // The same configuration, reformatted: nothing to do.
    let same: serde_json::Value =
        serde_json::from_str(&a.replace(r#""key": "temperature""#, r#""key": "temperature_v2""#)).expect("JSON");
    write(&serde_json::to_string_pretty(&same).expect("JSON"));
    gw.wait_for_log(Duration::from_secs(30), "the reformatted file seen", |log| log.contains("nothing to do"));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    let total = sent.load(Ordering::Relaxed) as i64;

    let got = thingsboard
        .wait_until(Duration::from_secs(30), "every reading of both connectors", |r| seqs(r).len() as i64 >= 2 * total);
    let got = seqs(&got);
    for dev in ["a-dev", "b-dev"] {
        let missing: Vec<i64> = (0..total).filter(|n| !got.contains(&(dev.to_owned(), *n))).collect();
        assert!(missing.is_empty(), "{dev}: {} of {total} readings lost: {missing:?}", missing.len());
    }
    assert!(total > 100, "readings flowed throughout ({total})");
    let log = gw.log();
    assert_eq!(restarts(&log), 1, "one restart, of A alone:\n{log}");
    let b_sessions = log.lines().filter(|l| l.contains("connector=B") && l.contains("to the MQTT broker")).count();
    assert_eq!(b_sessions, 1, "B kept its one session:\n{log}");

    // A change whose connector cannot connect: back to the one before.
    let closed = tbgw_test_support::free_port();
    write(&a.replace(&format!(r#""port": {}"#, source.port), &format!(r#""port": {closed}"#)));
    gw.wait_for_log(Duration::from_secs(40), "the rollback", |log| log.contains("back to the one before"));
    gw.wait_for_log(Duration::from_secs(30), "A connected again", |log| {
        let after = log.rsplit("back to the one before").next().unwrap_or("");
        after.lines().any(|l| l.contains("connector=A") && l.contains("connected to the MQTT broker"))
    });
    let devices = Collector::connect(source.port, "reload-devices-2", &[]);
    devices.publish("a/a-dev/data", r#"{"seq": 1000000, "temp": 1.5}"#);
    thingsboard.wait_until(Duration::from_secs(30), "A's reading after the rollback", |r| {
        seqs(r).contains(&("a-dev".to_owned(), 1_000_000))
    });
    // And the gateway still stops in order, restarted connectors included.
    assert!(gw.stop().success(), "an orderly stop:\n{}", gw.log());
}
