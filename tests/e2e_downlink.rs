//! End to end, ThingsBoard → device → ThingsBoard: the real `tbgw` process
//! between two mosquitto brokers; a test client plays ThingsBoard on one,
//! simulated devices answer on the other. Every request must get its
//! answer: the device's, or an error saying why.

#[path = "e2e_common/mod.rs"]
mod common;

use common::{Gateway, device, gateway_yaml};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tbgw_test_support::{Collector, Mosquitto, Received};

/// `mqtt.json` with a `requestsMapping` in the Python gateway's shape.
fn mqtt_json(source_port: u16, client_id: &str) -> String {
    let config = json!({
        "broker": {"host": "127.0.0.1", "port": source_port, "clientId": client_id, "version": 4,
                   "cleanSession": false, "security": {"type": "anonymous"}},
        "mapping": [{
            "topicFilter": "sensor/+/data", "subscriptionQos": 1,
            "converter": {"type": "json",
                "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)",
                               "deviceProfileExpressionSource": "constant", "deviceProfileExpression": "thermometer"},
                "timeseries": [{"type": "double", "key": "temperature", "value": "${temp}"}]}
        }],
        "requestsMapping": {
            "connectRequests": [{"topicFilter": "sensor/+/connect",
                "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/connect)",
                               "deviceProfileExpressionSource": "constant", "deviceProfileExpression": "relay"}}],
            "disconnectRequests": [{"topicFilter": "sensor/+/disconnect",
                "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/disconnect)"}}],
            "attributeRequests": [{"topicFilter": "sensor/+/attributes/request",
                "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/attributes)"},
                "attributeNameExpressionSource": "message", "attributeNameExpression": "${keys}",
                "topicExpression": "sensor/${deviceName}/attributes/${attributeKey}",
                "valueExpression": "{\"${attributeKey}\":${attributeValue}}"}],
            "attributeUpdates": [{"deviceNameFilter": ".*", "attributeFilter": "setpoint|eco",
                "topicExpression": "sensor/${deviceName}/attributes",
                "valueExpression": "{\"${attributeKey}\":${attributeValue}}"}],
            "serverSideRpc": [
                {"type": "twoWay", "deviceNameFilter": ".*", "methodFilter": "^(echo|slow)$",
                 "requestTopicExpression": "sensor/${deviceName}/request/${methodName}/${requestId}",
                 "responseTopicExpression": "sensor/${deviceName}/response/${methodName}/${requestId}",
                 "responseTimeout": 1500, "valueExpression": "${params}"},
                {"type": "oneWay", "deviceNameFilter": ".*", "methodFilter": "^reboot$",
                 "requestTopicExpression": "sensor/${deviceName}/reboot", "valueExpression": "${params.delay}"}
            ]
        }
    });
    serde_json::to_string_pretty(&config).expect("json")
}

/// Devices that answer `echo` RPCs with `{"device", "echo": params}` and
/// never answer `slow` ones.
fn responder(port: u16, client_id: &str) -> Collector {
    Collector::connect_with(port, client_id, &["sensor/+/request/+/+"], |m: &Received| {
        let parts: Vec<&str> = m.topic.split('/').collect();
        let [_, dev, _, method, id] = parts[..] else { return None };
        if method != "echo" {
            return None;
        }
        let params: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        let answer = json!({"device": dev, "echo": params});
        Some((format!("sensor/{dev}/response/{method}/{id}"), answer.to_string().into_bytes()))
    })
}

/// Everything around one gateway.
struct Setup {
    _tb_broker: Mosquitto,
    source: Mosquitto,
    tb: Collector,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

fn setup(name: &str) -> Setup {
    setup_with(name, |_| None)
}

/// `answer_tb` plays ThingsBoard's part in requests the gateway makes
/// (attribute requests).
fn setup_with(name: &str, answer_tb: impl Fn(&Received) -> Option<(String, Vec<u8>)> + Send + 'static) -> Setup {
    let (tb_broker, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let filters = ["v1/gateway/#", "v1/devices/me/rpc/response/+"];
    let tb = Collector::connect_with(tb_broker.port, &format!("tb-{name}"), &filters, answer_tb);
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start(
        dir.path(),
        &gateway_yaml(tb_broker.port, dir.path(), 60),
        &mqtt_json(source.port, &format!("gw-{name}")),
    );
    Setup { _tb_broker: tb_broker, source, tb, gw, _dir: dir }
}

impl Setup {
    /// Devices announce themselves (`connectRequests`); wait until
    /// ThingsBoard has every `v1/gateway/connect`.
    fn connect_devices(&self, names: &[String]) {
        let devices = Collector::connect(self.source.port, "announcer", &[]);
        devices.publish_many(names.iter().map(|n| (format!("sensor/{n}/connect"), Vec::new())));
        self.tb.wait_until(Duration::from_secs(30), "every device connected", |r| {
            names
                .iter()
                .all(|n| r.iter().any(|m| m.topic == "v1/gateway/connect" && m.text().contains(&format!("\"{n}\""))))
        });
    }

    /// A server-side RPC from ThingsBoard; its reply.
    fn rpc(&self, dev: &str, id: i64, method: &str, params: Value) -> Value {
        let request = json!({"device": dev, "data": {"id": id, "method": method, "params": params}});
        self.tb.publish("v1/gateway/rpc", request.to_string());
        let got = self.tb.wait_until(Duration::from_secs(20), &format!("the reply to RPC {id}"), |r| {
            replies(r).iter().any(|(d, i, _)| d == dev && *i == id)
        });
        replies(&got).into_iter().find(|(d, i, _)| d == dev && *i == id).map(|(_, _, data)| data).expect("found")
    }

    /// An RPC to the gateway device; its answer.
    fn own_rpc(&self, id: u64, method: &str, params: Value) -> Value {
        self.tb.publish(
            &format!("v1/devices/me/rpc/request/{id}"),
            json!({"method": method, "params": params}).to_string(),
        );
        let topic = format!("v1/devices/me/rpc/response/{id}");
        let got = self.tb.wait_until(Duration::from_secs(20), &format!("the answer to {method}"), |r| {
            r.iter().any(|m| m.topic == topic)
        });
        let m = got.iter().find(|m| m.topic == topic).expect("found");
        serde_json::from_slice(&m.payload).expect("an answer in JSON")
    }
}

/// RPC replies ThingsBoard received: (device, id, data).
fn replies(received: &[Received]) -> Vec<(String, i64, Value)> {
    received
        .iter()
        .filter(|m| m.topic == "v1/gateway/rpc")
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .filter(|v| v.get("id").is_some())
        .map(|v| (v["device"].as_str().unwrap_or("").to_owned(), v["id"].as_i64().unwrap_or(-1), v["data"].clone()))
        .collect()
}

fn is_error(data: &Value, contains: &str) -> bool {
    data["success"] == false && data["error"].as_str().is_some_and(|e| e.contains(contains))
}

#[test]
fn a_shared_attribute_update_reaches_the_device_converted() {
    let s = setup("attrs");
    let watcher = Collector::connect(s.source.port, "watch-attrs", &["sensor/+/attributes"]);
    // A device known from its data.
    let devices = Collector::connect(s.source.port, "dev-attrs", &[]);
    devices.publish("sensor/dev-000/data", r#"{"temp":20.5}"#);
    s.tb.wait_until(Duration::from_secs(20), "the device connected", |r| {
        r.iter().any(|m| m.topic == "v1/gateway/connect" && m.text().contains("dev-000"))
    });
    // As in the Python gateway, `${attributeValue}` is the value as text:
    // JSON for numbers and booleans.
    let update = json!({"device": "dev-000", "data": {"setpoint": 21.5, "eco": true, "ignored": 1}});
    s.tb.publish("v1/gateway/attributes", update.to_string());
    let got = watcher.wait_until(Duration::from_secs(20), "both attributes at the device", |r| r.len() >= 2);
    let mut payloads: Vec<Value> = got.iter().map(|m| serde_json::from_slice(&m.payload).expect("JSON")).collect();
    payloads.sort_by_key(|v| v.to_string());
    assert_eq!(payloads, [json!({"eco": true}), json!({"setpoint": 21.5})]);
    assert!(got.iter().all(|m| m.topic == "sensor/dev-000/attributes"));
    // An update for a device nobody connected goes nowhere, and says so.
    s.tb.publish("v1/gateway/attributes", json!({"device": "ghost", "data": {"setpoint": 1}}).to_string());
    let mut gw = s.gw;
    gw.wait_for_log(Duration::from_secs(10), "the refused update logged", |log| {
        log.contains("shared attribute update not delivered") && log.contains("unknown device `ghost`")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(watcher.received().len(), 2, "nothing more reached a device");
}

#[test]
fn rpcs_are_answered_with_the_device_reply_or_an_error() {
    let s = setup("rpc");
    let _devices = responder(s.source.port, "devices-rpc");
    let reboots = Collector::connect(s.source.port, "watch-reboot", &["sensor/+/reboot"]);
    s.connect_devices(&[device(0)]);

    // Two-way: the device's answer, under ThingsBoard's id.
    let data = s.rpc(&device(0), 7, "echo", json!({"x": 1, "s": "text"}));
    assert_eq!(data, json!({"device": device(0), "echo": {"x": 1, "s": "text"}}));

    // One-way: sent, and acknowledged at once.
    let data = s.rpc(&device(0), 8, "reboot", json!({"delay": 5}));
    assert_eq!(data, json!({"success": true}));
    let got = reboots.wait_until(Duration::from_secs(10), "the reboot at the device", |r| !r.is_empty());
    assert_eq!((got[0].topic.as_str(), got[0].text().as_str()), ("sensor/dev-000/reboot", "5"));

    // The device never answers: an error once responseTimeout (1.5 s) is past.
    let asked = Instant::now();
    let data = s.rpc(&device(0), 9, "slow", json!({}));
    assert!(is_error(&data, "no answer from the device"), "{data}");
    assert!(asked.elapsed() >= Duration::from_millis(1400), "answered before the timeout: {:?}", asked.elapsed());

    // Requests that cannot be served are answered, never dropped.
    let data = s.rpc("ghost", 10, "echo", json!({}));
    assert!(is_error(&data, "unknown device `ghost`"), "{data}");
    let data = s.rpc(&device(0), 11, "selfDestruct", json!({}));
    assert!(is_error(&data, "no serverSideRpc entry matches"), "{data}");

    // The devices' broker down: answered at once, not after the timeout.
    let mut source = s.source;
    source.stop();
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let request = json!({"device": device(0), "data": {"id": 12, "method": "echo", "params": {}}});
    s.tb.publish("v1/gateway/rpc", request.to_string());
    let got = s
        .tb
        .wait_until(Duration::from_secs(10), "the reply to RPC 12", |r| replies(r).iter().any(|(_, i, _)| *i == 12));
    let (_, _, data) = replies(&got).into_iter().find(|(_, i, _)| *i == 12).expect("found");
    assert!(is_error(&data, "not connected"), "{data}");
    assert!(asked.elapsed() < Duration::from_millis(1400), "waited for the timeout: {:?}", asked.elapsed());
}

#[test]
fn gateway_rpcs_answer() {
    let s = setup("own");
    let published = Collector::connect(s.source.port, "watch-own", &["custom/#"]);
    s.connect_devices(&[device(3)]);

    assert_eq!(s.own_rpc(1, "gateway_ping", json!({})), json!({"code": 200, "resp": "pong"}));
    let version = s.own_rpc(2, "gateway_version", json!({}));
    assert_eq!(version["resp"]["current_version"], env!("CARGO_PKG_VERSION"), "{version}");
    let devices = s.own_rpc(3, "gateway_devices", json!({}));
    assert_eq!(devices["resp"][device(3)], "Devices", "{devices}");
    let stats = s.own_rpc(4, "gateway_stats", json!({}));
    assert!(stats["resp"]["DevicesEventsProduced"].as_u64().is_some(), "{stats}");
    assert!(stats["resp"]["uptimeSeconds"].as_u64().is_some(), "{stats}");
    // The machine's state, under the Python gateway's keys.
    for key in ["totalCpuUsage", "freeMemory", "diskUsage", "gwMemory"] {
        assert!(stats["resp"][key].as_f64().is_some(), "{key} in {stats}");
    }
    let converters = s.own_rpc(5, "gateway_converters", json!({}));
    let list = converters["resp"].as_array().expect("a list of converters");
    assert_eq!(list.len(), 3, "the mapping's, the device requests' and the downlink converter: {converters}");
    for c in list {
        assert_eq!(c["sha256"].as_str().map(str::len), Some(64), "{c}");
        assert_eq!(c["connector"], "Devices", "{c}");
    }
    assert!(list.iter().any(|c| c["direction"] == "downlink"), "{converters}");
    // The connect request above went through the requests' converter.
    let requests = list.iter().find(|c| c["name"] == "Devices/json (requests)").expect("the requests' converter");
    assert!(requests["messages"].as_u64() >= Some(1), "{requests}");
    assert_eq!(s.own_rpc(6, "gateway_nonsense", json!({}))["code"], 404);
    assert_eq!(s.own_rpc(7, "gateway_reboot", json!({}))["code"], 501);
    // ThingsBoard deleted a device: forgotten until it sends data again,
    // which connects it again (and ThingsBoard creates it anew).
    assert_eq!(s.own_rpc(21, "gateway_device_deleted", json!(device(3))), json!({"success": true}));
    let devices = s.own_rpc(22, "gateway_devices", json!({}));
    assert!(devices["resp"].get(device(3)).is_none(), "{devices}");
    let connects = |r: &[Received]| {
        r.iter().filter(|m| m.topic == "v1/gateway/connect" && m.text().contains(&format!("\"{}\"", device(3)))).count()
    };
    Collector::connect(s.source.port, "deleted-device", &[])
        .publish(&format!("sensor/{}/data", device(3)), r#"{"temp": 1}"#);
    s.tb.wait_until(Duration::from_secs(20), "the deleted device connected again", |r| connects(r) >= 2);
    // A rename of a device the gateway does not know is refused.
    assert_eq!(s.own_rpc(23, "gateway_device_renamed", json!({"nobody": "renamed"}))["code"], 404);

    // A connector RPC: publish on the devices' broker.
    let answer =
        s.own_rpc(8, "mqtt_publish", json!({"requestTopicExpression": "custom/x", "valueExpression": "hello"}));
    assert_eq!(answer, json!({"success": true}));
    let got = published.wait_until(Duration::from_secs(10), "the connector RPC's publish", |r| !r.is_empty());
    assert_eq!((got[0].topic.as_str(), got[0].text().as_str()), ("custom/x", "hello"));

    // Restart: the same process starts again and serves.
    assert_eq!(s.own_rpc(9, "gateway_restart", json!({})), json!({"success": true}));
    let mut gw = s.gw;
    gw.wait_for_log(Duration::from_secs(60), "the gateway started again", |log| {
        log.matches("tbgw 0.1.0 starting").count() == 2
            && log.rsplit("tbgw 0.1.0 starting").next().is_some_and(|run| run.contains("connected to ThingsBoard"))
    });
    let s = Setup { gw, ..s };
    assert_eq!(s.own_rpc(10, "gateway_ping", json!({})), json!({"code": 200, "resp": "pong"}));
    // The device is still known after the restart (kept in the store), and
    // connected again so that ThingsBoard goes on sending it requests.
    let devices = s.own_rpc(11, "gateway_devices", json!({}));
    assert_eq!(devices["resp"][device(3)], "Devices", "{devices}");
    s.tb.wait_until(Duration::from_secs(20), "dev-003 connected again after the restart", |r| {
        r.iter().filter(|m| m.topic == "v1/gateway/connect" && m.text().contains("dev-003")).count() >= 2
    });
}

/// ThingsBoard's part in a device's attribute request: `value` for one key,
/// `values` for several, each `<key>-of-<device>`.
fn tb_answers_attribute_requests(m: &Received) -> Option<(String, Vec<u8>)> {
    if m.topic != "v1/gateway/attributes/request" {
        return None;
    }
    let req: Value = serde_json::from_slice(&m.payload).ok()?;
    let keys: Vec<&str> = req["keys"].as_array()?.iter().filter_map(Value::as_str).collect();
    let value_of = |k: &str| json!(format!("{k}-of-{}", req["device"].as_str().unwrap_or("")));
    let answer = if keys.len() == 1 {
        json!({"id": req["id"], "device": req["device"], "value": value_of(keys[0])})
    } else {
        let values: serde_json::Map<String, Value> = keys.iter().map(|k| (k.to_string(), value_of(k))).collect();
        json!({"id": req["id"], "device": req["device"], "values": values})
    };
    Some(("v1/gateway/attributes/response".into(), answer.to_string().into_bytes()))
}

#[test]
fn an_attribute_request_round_trip() {
    let s = setup_with("attr-req", tb_answers_attribute_requests);
    let watcher = Collector::connect(s.source.port, "watch-attr-req", &["sensor/+/attributes/+"]);
    let answers =
        |r: &[Received]| -> Vec<Received> { r.iter().filter(|m| !m.topic.ends_with("/request")).cloned().collect() };
    s.connect_devices(&[device(5)]);
    let dev = Collector::connect(s.source.port, "dev-attr-req", &[]);
    dev.publish("sensor/dev-005/attributes/request", r#"{"keys":"firmware"}"#);
    let got = answers(
        &watcher.wait_until(Duration::from_secs(20), "the attribute at the device", |r| !answers(r).is_empty()),
    );
    assert_eq!(got[0].topic, "sensor/dev-005/attributes/firmware");
    assert_eq!(
        serde_json::from_slice::<Value>(&got[0].payload).expect("JSON"),
        json!({"firmware": "firmware-of-dev-005"})
    );
    // Several keys: one JSON object of them all.
    dev.publish("sensor/dev-005/attributes/request", r#"{"keys":["a","b"]}"#);
    let got = answers(
        &watcher.wait_until(Duration::from_secs(20), "both attributes at the device", |r| answers(r).len() >= 2),
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&got[1].payload).expect("JSON"),
        json!({"a": "a-of-dev-005", "b": "b-of-dev-005"})
    );
    let request = s.tb.received().into_iter().find(|m| m.topic == "v1/gateway/attributes/request").expect("asked");
    let request: Value = serde_json::from_slice(&request.payload).expect("JSON");
    assert_eq!((request["device"].clone(), request["client"].clone()), (json!("dev-005"), json!(false)), "{request}");
}

#[test]
fn devices_connect_and_disconnect_on_request() {
    let s = setup("conn");
    let _devices = responder(s.source.port, "devices-conn");
    s.connect_devices(&["pump-1".to_owned()]);
    let connect = s.tb.received().into_iter().find(|m| m.topic == "v1/gateway/connect").expect("connect");
    assert_eq!(
        serde_json::from_slice::<Value>(&connect.payload).expect("JSON"),
        json!({"device": "pump-1", "type": "relay"})
    );
    assert_eq!(s.rpc("pump-1", 1, "echo", json!(1))["echo"], 1);

    let dev = Collector::connect(s.source.port, "dev-conn", &[]);
    dev.publish("sensor/pump-1/disconnect", "");
    s.tb.wait_until(Duration::from_secs(20), "the disconnect", |r| {
        r.iter().any(|m| m.topic == "v1/gateway/disconnect" && m.text() == r#"{"device":"pump-1"}"#)
    });
    let data = s.rpc("pump-1", 2, "echo", json!(1));
    assert!(is_error(&data, "unknown device `pump-1`"), "{data}");
}

#[test]
fn a_thousand_concurrent_rpcs_to_a_hundred_devices_are_all_answered() {
    let s = setup("many");
    let _devices = responder(s.source.port, "devices-many");
    let names: Vec<String> = (0..100).map(device).collect();
    s.connect_devices(&names);
    let requests: Vec<(String, Vec<u8>)> = (0..1000)
        .map(|i| {
            let request = json!({"device": device(i % 100), "data": {"id": i, "method": "echo", "params": {"n": i}}});
            ("v1/gateway/rpc".to_owned(), request.to_string().into_bytes())
        })
        .collect();
    let started = Instant::now();
    s.tb.publish_many(requests);
    let got = s.tb.wait_until(Duration::from_secs(60), "1,000 RPC replies", |r| replies(r).len() >= 1000);
    let elapsed = started.elapsed();
    let r = replies(&got);
    assert_eq!(r.len(), 1000, "one reply per request");
    let mut ids: Vec<i64> = r.iter().map(|(_, i, _)| *i).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>(), "every id answered once");
    for (dev, id, data) in &r {
        assert_eq!(*dev, device(*id as usize % 100), "reply {id} for the wrong device");
        assert_eq!(data, &json!({"device": dev, "echo": {"n": id}}), "reply {id}");
    }
    println!("1,000 RPCs to 100 devices answered in {elapsed:?}");
}

/// A user renames a device in ThingsBoard (`gateway_device_renamed`): its
/// data go under the new name, requests for the new name reach it, and the
/// rename is kept across a restart; renaming it back undoes it.
#[test]
fn a_device_renamed_in_thingsboard_goes_by_its_new_name() {
    let s = setup("rename");
    let _responder = responder(s.source.port, "responder-rename");
    let device = Collector::connect(s.source.port, "renamed-device", &[]);
    let temperatures = |r: &[Received], name: &str| -> Vec<f64> {
        r.iter()
            .filter(|m| m.topic == "v1/gateway/telemetry")
            .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
            .flat_map(|doc| doc[name].as_array().cloned().unwrap_or_default())
            .filter_map(|reading| reading["values"]["temperature"].as_f64())
            .collect()
    };
    device.publish("sensor/dev-004/data", r#"{"temp": 1}"#);
    s.tb.wait_until(Duration::from_secs(20), "dev-004's first reading", |r| temperatures(r, "dev-004") == [1.0]);

    let renamed = json!({"dev-004": "Boiler 4"});
    assert_eq!(s.own_rpc(1, "gateway_device_renamed", renamed), json!({"success": true}));
    assert_eq!(s.own_rpc(2, "gateway_device_renamed", json!({"nobody": "x"}))["code"], 404);
    device.publish("sensor/dev-004/data", r#"{"temp": 2}"#);
    s.tb.wait_until(Duration::from_secs(20), "the reading under the new name", |r| {
        temperatures(r, "Boiler 4") == [2.0]
    });
    // Requests for the new name reach the device (on its own topics).
    let reply = s.rpc("Boiler 4", 7, "echo", json!({"x": 1}));
    assert_eq!(reply, json!({"device": "dev-004", "echo": {"x": 1}}));
    let old = s.rpc("dev-004", 8, "echo", json!({}));
    assert!(old["error"].as_str().is_some_and(|e| e.contains("unknown device")), "{old}");
    let devices = s.own_rpc(3, "gateway_devices", json!({}));
    assert_eq!(devices["resp"]["Boiler 4"], "Devices", "{devices}");

    // Kept across a restart.
    assert_eq!(s.own_rpc(4, "gateway_restart", json!({})), json!({"success": true}));
    let mut gw = s.gw;
    gw.wait_for_log(Duration::from_secs(60), "the gateway started again", |log| {
        log.matches("tbgw 0.1.0 starting").count() == 2
            && log.rsplit("tbgw 0.1.0 starting").next().is_some_and(|run| {
                run.contains("connected to ThingsBoard")
                    && (run.contains("subscribed to") || run.contains("session_present=true"))
            })
    });
    let s = Setup { gw, ..s };
    device.publish("sensor/dev-004/data", r#"{"temp": 3}"#);
    s.tb.wait_until(Duration::from_secs(20), "after the restart, the new name", |r| {
        temperatures(r, "Boiler 4") == [2.0, 3.0]
    });
    // Renamed back: its own name again.
    assert_eq!(s.own_rpc(5, "gateway_device_renamed", json!({"Boiler 4": "dev-004"})), json!({"success": true}));
    device.publish("sensor/dev-004/data", r#"{"temp": 4}"#);
    let got = s.tb.wait_until(Duration::from_secs(20), "its own name again", |r| temperatures(r, "dev-004").len() == 2);
    assert_eq!(temperatures(&got, "dev-004"), [1.0, 4.0]);
    assert_eq!(temperatures(&got, "Boiler 4"), [2.0, 3.0]);
}

/// A two-way RPC served by the user's own downlink component (built over
/// the guest SDK, `downlinkConverter`): its request goes where the
/// component says, and ThingsBoard's reply is the one the component makes
/// of the device's answer (`reply`), not the built-in's. Devices' attribute
/// requests are still answered as `requestsMapping` says, which the
/// component knows nothing of.
#[test]
fn a_custom_downlink_component_makes_the_reply() {
    let (tb_broker, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let tb = Collector::connect_with(tb_broker.port, "tb-custom", &["v1/gateway/#"], tb_answers_attribute_requests);
    let _device = Collector::connect_with(source.port, "custom-device", &["custom/+/+"], |m: &Received| {
        let answer = json!({"state": "on", "asked": String::from_utf8_lossy(&m.payload)});
        Some((format!("{}/reply", m.topic), answer.to_string().into_bytes()))
    });
    let mut config: Value = serde_json::from_str(&mqtt_json(source.port, "gw-custom")).expect("json");
    config["downlinkConverter"] = json!({"type": "custom", "extension": tbgw_guests::CUSTOM_DOWNLINK,
                                         "extensionConfig": {"kind": "mqtt"}, "limits": {"timeoutMs": 50}});
    let dir = tempfile::tempdir().expect("tempdir");
    let _gw = Gateway::start(dir.path(), &gateway_yaml(tb_broker.port, dir.path(), 60), &config.to_string());
    let announcer = Collector::connect(source.port, "announce-custom", &[]);
    announcer.publish("sensor/Pump/connect", "");
    tb.wait_until(Duration::from_secs(30), "the device connected", |r| {
        r.iter().any(|m| m.topic == "v1/gateway/connect" && m.text().contains("Pump"))
    });
    let request = json!({"device": "Pump", "data": {"id": 5, "method": "status", "params": {"verbose": true}}});
    tb.publish("v1/gateway/rpc", request.to_string());
    let got = tb.wait_until(Duration::from_secs(20), "the reply", |r| replies(r).iter().any(|(_, id, _)| *id == 5));
    let (_, _, data) = replies(&got).into_iter().find(|(_, id, _)| *id == 5).expect("found");
    assert_eq!(
        data,
        json!({"custom": true, "method": "status", "answer": {"state": "on", "asked": "{\"verbose\":true}"}}),
        "the component's own reply, made of the device's answer"
    );

    let watcher = Collector::connect(source.port, "watch-custom", &["sensor/+/attributes/+"]);
    announcer.publish("sensor/Pump/attributes/request", r#"{"keys":"firmware"}"#);
    let answered = |r: &[Received]| r.iter().any(|m| m.topic == "sensor/Pump/attributes/firmware");
    let got = watcher.wait_until(Duration::from_secs(20), "the attribute at the device", answered);
    let answer = got.iter().find(|m| m.topic == "sensor/Pump/attributes/firmware").expect("found");
    assert_eq!(
        serde_json::from_slice::<Value>(&answer.payload).expect("JSON"),
        json!({"firmware": "firmware-of-Pump"})
    );
}

/// Every text ThingsBoard received under a remote-logging `key`
/// (`SERVICE_LOGS`), in order.
fn remote_logs(received: &[Received], key: &str) -> Vec<String> {
    received
        .iter()
        .filter(|m| m.topic == "v1/devices/me/telemetry")
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .filter_map(|v| v.as_array().cloned())
        .flatten()
        .filter_map(|entry| entry["values"][key].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn remote_logs_follow_remote_logging_level_and_the_connectors_own() {
    let (tb_broker, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let filters = ["v1/devices/me/telemetry", "v1/devices/me/attributes/request/+", "v1/devices/me/rpc/request/+"];
    // ThingsBoard: no rate limits, and RemoteLoggingLevel INFO when asked.
    let tb = Collector::connect_with(tb_broker.port, "tb-logs", &filters, |m: &Received| {
        if let Some(id) = m.topic.strip_prefix("v1/devices/me/rpc/request/") {
            let limits = r#"{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{},"gatewayRateLimits":{}}"#;
            return m
                .text()
                .contains("getSessionLimits")
                .then(|| (format!("v1/devices/me/rpc/response/{id}"), limits.into()));
        }
        let id = m.topic.strip_prefix("v1/devices/me/attributes/request/")?;
        let asked: Value = serde_json::from_slice(&m.payload).ok()?;
        (asked["sharedKeys"] == "RemoteLoggingLevel").then(|| {
            (format!("v1/devices/me/attributes/response/{id}"), br#"{"shared":{"RemoteLoggingLevel":"INFO"}}"#.to_vec())
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut connector: Value = serde_json::from_str(&mqtt_json(source.port, "gw-logs")).expect("json");
    connector["enableRemoteLogging"] = json!(true);
    connector["logLevel"] = json!("INFO");
    let mut gw = Gateway::start(dir.path(), &gateway_yaml(tb_broker.port, dir.path(), 60), &connector.to_string());

    // The level ThingsBoard answered, and the connector's records from
    // before the gateway connected (they waited for it).
    let got = tb.wait_until(Duration::from_secs(30), "the service's and the connector's records", |r| {
        remote_logs(r, "SERVICE_LOGS").iter().any(|t| t.ends_with("remote logging level set to INFO"))
            && remote_logs(r, "Devices_LOGS").iter().any(|t| t.contains("subscribed to 4 topic filter(s)"))
    });
    let service = remote_logs(&got, "SERVICE_LOGS");
    let line = service.iter().find(|t| t.ends_with("remote logging level set to INFO")).expect("found");
    // The Python gateway's format: `2026-12-03 10:47:33,123 - |INFO|<thread> [router.rs] - router tbgw::router - 612 - ...`.
    let (date, rest) = line.split_at(23);
    assert!(
        date.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b' ',
            13 | 16 => b == b':',
            19 => b == b',',
            _ => b.is_ascii_digit(),
        }),
        "{line}"
    );
    assert!(rest.starts_with(" - |INFO|<") && rest.contains("> [router.rs] - router tbgw::router - "), "{line}");
    assert!(remote_logs(&got, "LOGS").contains(line), "the service's records are also under LOGS");
    assert!(
        remote_logs(&got, "Devices_LOGS").iter().all(|t| !t.contains("|DEBUG|")),
        "the connector's logLevel is INFO"
    );
    assert!(
        remote_logs(&got, "LOGS").iter().all(|t| !t.contains("subscribed to")),
        "a connector's records are under its own key only"
    );

    // A message its converter cannot read: the converter's records, tagged.
    let devices = Collector::connect(source.port, "devices-logs", &[]);
    devices.publish("sensor/dev-1/data", "not json");
    tb.wait_until(Duration::from_secs(20), "the converter's record", |r| {
        remote_logs(r, "Devices_converter_LOGS").iter().any(|t| t.contains("|WARNING|") && t.contains("not converted"))
    });

    // NONE stops the service's records; DEBUG starts them again.
    for level in ["NONE", "loud", "DEBUG"] {
        tb.publish("v1/devices/me/attributes", json!({"RemoteLoggingLevel": level}).to_string());
    }
    let got = tb.wait_until(Duration::from_secs(20), "the level set to DEBUG", |r| {
        remote_logs(r, "SERVICE_LOGS").iter().any(|t| t.ends_with("remote logging level set to DEBUG"))
    });
    gw.wait_for_log(Duration::from_secs(5), "the bad level refused", |log| log.contains("`loud` is not a level"));
    assert!(
        remote_logs(&got, "SERVICE_LOGS").iter().all(|t| !t.contains("`loud` is not a level")),
        "a record made while the level was NONE was sent"
    );
}

/// The gateway's client attributes ThingsBoard received, newest last.
fn own_attributes(received: &[Received]) -> Vec<Value> {
    received
        .iter()
        .filter(|m| m.topic == "v1/devices/me/attributes")
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

/// Remote configuration against a fake ThingsBoard that keeps the shared
/// attributes it pushes and answers the gateway's requests with them:
/// the running configuration published; identical pushes (a burst, newer
/// `ts`, and at each of two reconnections) change nothing; a real change to
/// one of two connectors restarts it alone and replaces its file; an
/// invalid one is refused with `A_CONFIG_ERROR`, the file byte-identical;
/// `active_connectors` stops and starts a connector; one that cannot
/// connect is rolled back, file included.
#[test]
fn remote_configuration_changes_only_what_changed_and_refuses_or_rolls_back_the_rest() {
    use std::sync::{Arc, Mutex};
    let (mut tb_broker, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let shared: Arc<Mutex<serde_json::Map<String, Value>>> = Arc::default();
    let answer = {
        let shared = shared.clone();
        move |m: &Received| {
            let id = m.topic.strip_prefix("v1/devices/me/attributes/request/")?;
            let state = Value::Object(shared.lock().expect("state").clone());
            Some((format!("v1/devices/me/attributes/response/{id}"), json!({"shared": state}).to_string().into_bytes()))
        }
    };
    let tb = Collector::connect_with(
        tb_broker.port,
        "tb-remote-config",
        &["v1/gateway/#", "v1/devices/me/attributes", "v1/devices/me/attributes/request/+"],
        answer,
    );
    let push = |key: &str, value: Value| {
        shared.lock().expect("state").insert(key.to_owned(), value.clone());
        tb.publish("v1/devices/me/attributes", json!({ key: value }).to_string());
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let a = common::mqtt_json(source.port, "gw-rc-a")
        .replace("sensor/+/data", "a/+/data")
        .replace("(?<=sensor/)", "(?<=a/)");
    let b = common::mqtt_json(source.port, "gw-rc-b")
        .replace("sensor/+/data", "b/+/data")
        .replace("(?<=sensor/)", "(?<=b/)");
    std::fs::write(dir.path().join("a.json"), &a).expect("a.json");
    std::fs::write(dir.path().join("b.json"), &b).expect("b.json");
    let yaml = gateway_yaml(tb_broker.port, dir.path(), 60)
        .replace("thingsboard:\n", "thingsboard:\n  remoteConfiguration: true\n")
        .replace(
            "connectors:\n  - {type: mqtt, name: Devices, configuration: mqtt.json}\n",
            "connectors:\n  - {type: mqtt, name: A, configuration: a.json}\n  - {type: mqtt, name: B, configuration: b.json}\n",
        );
    let mut gw = Gateway::start_with(dir.path(), &[("tb_gateway.yaml", &yaml), ("mqtt.json", "{}")]);
    let a_file = || std::fs::read(dir.path().join("a.json")).expect("a.json");
    let log_count = |gw: &Gateway, what: &str| gw.log().matches(what).count();
    let b_sessions = |gw: &Gateway| {
        gw.log().lines().filter(|l| l.contains("connector=B") && l.contains("to the MQTT broker")).count()
    };

    // The running configuration, as the Gateways page reads it.
    let got = tb.wait_until(Duration::from_secs(30), "the running configuration", |r| {
        own_attributes(r).iter().any(|v| v.get("active_connectors").is_some())
    });
    let current = own_attributes(&got).into_iter().find(|v| v.get("active_connectors").is_some()).expect("found");
    assert_eq!(current["active_connectors"], json!(["A", "B"]));
    assert_eq!(current["Version"], "3.8.5");
    let a_attr = current["A"].clone();
    assert_eq!((&a_attr["type"], &a_attr["configuration"]), (&json!("mqtt"), &json!("a.json")), "{a_attr}");
    assert_eq!(a_attr["configurationJson"], serde_json::from_str::<Value>(&a).expect("JSON"));
    assert_eq!(current["storage_configuration"]["type"], "fjall");

    // The same, pushed three times with a newer ts: nothing changes, one echo.
    let mut same = a_attr.clone();
    same["ts"] = json!(a_attr["ts"].as_u64().unwrap_or(0) + 1000);
    let before = a_file();
    for _ in 0..3 {
        push("A", same.clone());
    }
    tb.wait_until(Duration::from_secs(20), "the echo", |r| {
        // Three are the fake ThingsBoard's own; the fourth is the gateway's.
        own_attributes(r).iter().filter(|v| v.get("A") == Some(&same)).count() >= 4
    });
    // Two reconnections: each session publishes and asks again; no restart.
    for _ in 0..2 {
        let sessions = log_count(&gw, "connected to ThingsBoard");
        tb_broker.stop();
        std::thread::sleep(Duration::from_millis(500));
        tb_broker.start();
        gw.wait_for_log(Duration::from_secs(30), "a new session", |log| {
            log.matches("connected to ThingsBoard").count() > sessions
        });
        // Its configuration published and the shared attributes answered.
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(log_count(&gw, "decision=\"apply\""), 0, "nothing applied:\n{}", gw.log());
    assert_eq!(log_count(&gw, "connector stopped"), 0, "nothing restarted:\n{}", gw.log());
    assert_eq!(log_count(&gw, "event store opened"), 1, "the store opened once");
    assert_eq!(a_file(), before, "the file untouched");

    // A real change to A: A alone restarts; its file holds the change.
    let mut changed = same.clone();
    changed["ts"] = json!(same["ts"].as_u64().unwrap_or(0) + 1000);
    changed["configurationJson"]["mapping"][0]["converter"]["timeseries"][1]["key"] = json!("temperature_v2");
    push("A", changed.clone());
    gw.wait_for_log(Duration::from_secs(30), "A restarted", |log| log.contains("decision=\"apply\""));
    gw.wait_for_log(Duration::from_secs(30), "A connected", |log| log.contains("connected with its new configuration"));
    let file: Value = serde_json::from_slice(&a_file()).expect("a.json is JSON");
    assert_eq!(file["mapping"][0]["converter"]["timeseries"][1]["key"], "temperature_v2");
    assert_eq!(b_sessions(&gw), 1, "B kept its session:\n{}", gw.log());
    tb.wait_until(Duration::from_secs(20), "the change echoed", |r| {
        own_attributes(r).iter().filter(|v| v.get("A") == Some(&changed)).count() >= 2
    });

    // Invalid: refused, said so, nothing touched.
    let applied = a_file();
    let mut invalid = changed.clone();
    invalid["ts"] = json!(changed["ts"].as_u64().unwrap_or(0) + 1000);
    invalid["configurationJson"]["broker"]["port"] = json!("not a port");
    push("A", invalid);
    let got = tb.wait_until(Duration::from_secs(20), "A_CONFIG_ERROR", |r| {
        own_attributes(r).iter().any(|v| v.get("A_CONFIG_ERROR").is_some())
    });
    let error = own_attributes(&got).into_iter().find_map(|v| v.get("A_CONFIG_ERROR").cloned()).expect("found");
    assert!(error.as_str().is_some_and(|e| e.contains("broker.port")), "{error}");
    assert_eq!(a_file(), applied, "the file byte-identical");
    assert_eq!(log_count(&gw, "decision=\"apply\""), 1);

    // active_connectors without A, then with it again.
    push("active_connectors", json!(["B"]));
    gw.wait_for_log(Duration::from_secs(20), "A stopped", |log| log.contains("decision=\"stop\""));
    push("active_connectors", json!(["A", "B"]));
    gw.wait_for_log(Duration::from_secs(20), "A started", |log| log.contains("decision=\"start\""));
    let devices = Collector::connect(source.port, "rc-devices", &[]);
    tb.wait_until(Duration::from_secs(30), "A's data after its start", |r| {
        devices.publish("a/a-dev/data", r#"{"seq": 7, "temp": 1.5}"#);
        r.iter().any(|m| m.topic == "v1/gateway/telemetry" && m.text().contains("a-dev"))
    });

    // One whose connector cannot connect: rolled back, file included.
    let closed = tbgw_test_support::free_port();
    let mut unreachable = changed.clone();
    unreachable["ts"] = json!(changed["ts"].as_u64().unwrap_or(0) + 5000);
    unreachable["configurationJson"]["broker"]["port"] = json!(closed);
    push("A", unreachable);
    gw.wait_for_log(Duration::from_secs(40), "the rollback", |log| log.contains("decision=\"rollback\""));
    assert_eq!(a_file(), applied, "the file put back");
    assert_eq!(b_sessions(&gw), 1, "B kept its session throughout:\n{}", gw.log());
    assert!(gw.stop().success(), "an orderly stop:\n{}", gw.log());
}
