//! End to end with the real `tbgw` process on an OPC-UA server: the server
//! is async-opcua's own server side, in this test's process on 127.0.0.1,
//! holding a plant of boilers; ThingsBoard's side is a mosquitto broker with
//! its default settings. Values are checked as ThingsBoard receives them,
//! converted by the built-in `opcua` converter (WebAssembly).

#[path = "e2e_common/mod.rs"]
mod common;

use common::{Gateway, latest, statistic};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tbgw_test_support::opcua::{OpcuaServer, Plant, Value as Variant, initial};
use tbgw_test_support::{Collector, Mosquitto, Received};

/// The Python gateway's `opcua.json` shape: one mapping per boiler found
/// by its browse path (names with a space), named by its serial number.
fn opcua_json(url: &str, subscriptions: bool) -> Value {
    let keys = json!([
        {"key": "temperature", "type": "path", "value": "${Temperature}", "timestampLocation": "SourceTimestamp"},
        {"key": "level", "type": "path", "value": "${Füllstand}"},
        {"key": "v0", "type": "path", "value": "${V0}"},
        {"key": "v1", "type": "identifier", "value": "${ns=2;s=Boiler 1.V1}"}
    ]);
    let mapping = |d: usize| {
        json!({
            "deviceNodeSource": "path",
            "deviceNodePattern": format!("Root\\.Objects\\.Plant\\.Boiler {d}"),
            "deviceInfo": {"deviceNameExpression": "Boiler ${SerialNumber}", "deviceNameExpressionSource": "path",
                           "deviceProfileExpression": "boiler", "deviceProfileExpressionSource": "constant"},
            "attributes": [{"key": "serial", "type": "path", "value": "${SerialNumber}"}],
            "timeseries": keys,
            "attributes_updates": [{"key": "setpoint", "type": "path", "value": "${SetPoint}"},
                                   {"key": "relay", "type": "path", "value": "Relay"},
                                   {"key": "curve", "type": "path", "value": "${Curve}"}],
            "rpc_methods": [{"method": "multiply", "arguments": [{"type": "integer", "value": 2}, {"type": "integer", "value": 4}]},
                            {"method": "minmax", "arguments": []},
                            {"method": "fail"}]
        })
    };
    json!({
        "server": {"url": url, "timeoutInMillis": 2000, "enableSubscriptions": subscriptions, "pollPeriodInMillis": 300,
                   "subCheckPeriodInMillis": 100, "reconnectBackoffInitialDelay": 0.2, "identity": {"type": "anonymous"}},
        "mapping": [mapping(1), mapping(2)]
    })
}

struct Setup {
    tb: Collector,
    gw: Gateway,
    _keep: (Mosquitto, tempfile::TempDir),
}

fn setup(name: &str, url: &str, subscriptions: bool) -> Setup {
    let tb_broker = Mosquitto::start_new();
    let tb = Collector::connect(tb_broker.port, &format!("tb-{name}"), &["v1/gateway/#", "v1/devices/me/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = common::connector_yaml(tb_broker.port, "opcua", "PLC", "opcua.json");
    let config = opcua_json(url, subscriptions).to_string();
    let gw = Gateway::start_with(dir.path(), &[("tb_gateway.yaml", &yaml), ("opcua.json", &config)]);
    Setup { tb, gw, _keep: (tb_broker, dir) }
}

fn connects(received: &[Received]) -> Vec<String> {
    received.iter().filter(|m| m.topic == "v1/gateway/connect").map(Received::text).collect()
}

/// The `ts` of the latest telemetry of `key` for `device`.
fn latest_ts(received: &[Received], device: &str, key: &str) -> Option<i64> {
    let mut found = None;
    for m in received.iter().filter(|m| m.topic == "v1/gateway/telemetry") {
        let Ok(doc) = serde_json::from_slice::<Value>(&m.payload) else { continue };
        for r in doc.get(device).and_then(Value::as_array).into_iter().flatten() {
            if r["values"].get(key).is_some() {
                found = r["ts"].as_i64();
            }
        }
    }
    found
}

#[test]
fn subscribed_values_reach_thingsboard_typed_and_follow_each_change() {
    let server = OpcuaServer::start(Plant { devices: 2, variables: 2, ..Plant::default() });
    assert_eq!(server.ns, 2, "the identifier key names namespace 2");
    let s = setup("subscribe", &server.url(), true);
    let got = s.tb.wait_until(Duration::from_secs(30), "both boilers' values", |r| {
        ["Boiler SN-1", "Boiler SN-2"]
            .iter()
            .all(|d| ["temperature", "level", "v0", "v1", "serial"].iter().all(|k| latest(r, d, k).is_some()))
    });
    // A Double stays a double in ThingsBoard, whole or not; text is text.
    assert_eq!(latest(&got, "Boiler SN-1", "temperature"), Some(json!(20.5)));
    assert_eq!(latest(&got, "Boiler SN-2", "level"), Some(json!(75.0)));
    assert_eq!(latest(&got, "Boiler SN-2", "v0"), Some(json!(initial(2, 0))));
    // `v1` names Boiler 1's node for both devices.
    assert_eq!(latest(&got, "Boiler SN-2", "v1"), Some(json!(initial(1, 1))));
    assert_eq!(latest(&got, "Boiler SN-1", "serial"), Some(json!("SN-1")));
    let mut c = connects(&got);
    c.sort();
    assert_eq!(c, [r#"{"device":"Boiler SN-1","type":"boiler"}"#, r#"{"device":"Boiler SN-2","type":"boiler"}"#]);

    // A change, stamped by the server: the source time is the telemetry's
    // time where `timestampLocation` says so.
    let before = tbgw_core::now_ms();
    std::thread::sleep(Duration::from_millis(20));
    server.set(1, "Temperature", 61.25);
    server.set(2, "V0", -3.0);
    let got = s.tb.wait_until(Duration::from_secs(10), "the changes", |r| {
        latest(r, "Boiler SN-1", "temperature") == Some(json!(61.25))
            && latest(r, "Boiler SN-2", "v0") == Some(json!(-3.0))
    });
    let ts = latest_ts(&got, "Boiler SN-1", "temperature").expect("a ts");
    assert!(ts > before && ts <= tbgw_core::now_ms(), "the source timestamp {ts} (set after {before})");
    let stats = s.tb.wait_until(Duration::from_secs(10), "the statistics", |r| statistic(r, "PLCConnected").is_some());
    assert_eq!(statistic(&stats, "PLCConnected"), Some(json!(true)));
    assert!(s.gw.log().contains("2 devices, 9 nodes"), "{}", s.gw.log());
}

#[test]
fn a_restarted_server_is_read_again_within_seconds_and_no_device_is_created_twice() {
    let server = OpcuaServer::start(Plant::default());
    let port = server.port;
    let s = setup("restart", &server.url(), false);
    let got = s.tb.wait_until(Duration::from_secs(30), "the first polls", |r| latest(r, "Boiler SN-2", "v0").is_some());
    assert_eq!(connects(&got).len(), 2);
    server.stop();
    std::thread::sleep(Duration::from_secs(1));
    let server = OpcuaServer::start_on(port, Plant::default());
    let restarted = Instant::now();
    server.set(2, "V0", 42.5);
    let got = s.tb.wait_until(Duration::from_secs(20), "a value after the restart", |r| {
        latest(r, "Boiler SN-2", "v0") == Some(json!(42.5))
    });
    assert!(restarted.elapsed() < Duration::from_secs(10), "{:?}", restarted.elapsed());
    assert_eq!(connects(&got).len(), 2, "no device connected (or deleted and created) again");
    assert!(!got.iter().any(|m| m.topic == "v1/gateway/disconnect"));
}

/// A server-side RPC from ThingsBoard to `device`; the reply's `data`.
fn rpc(s: &Setup, device: &str, id: i64, method: &str, params: Value) -> Value {
    let request = json!({"device": device, "data": {"id": id, "method": method, "params": params}});
    s.tb.publish("v1/gateway/rpc", request.to_string());
    let reply = |r: &[Received]| {
        r.iter()
            .filter(|m| m.topic == "v1/gateway/rpc")
            .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
            .find(|v| v["device"] == device && v["id"] == id)
            .map(|v| v["data"].clone())
    };
    let got =
        s.tb.wait_until(Duration::from_secs(20), &format!("the reply to RPC {id} ({method})"), |r| reply(r).is_some());
    reply(&got).expect("found")
}

/// Wait until the server's `variable` of device `d` holds `want`.
fn wait_value(server: &OpcuaServer, d: usize, variable: &str, want: &Variant) {
    let end = Instant::now() + Duration::from_secs(20);
    while server.value(d, variable).as_ref() != Some(want) {
        assert!(Instant::now() < end, "{variable} of device {d}: {:?}, not {want:?}", server.value(d, variable));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn thingsboard_writes_reads_and_calls_methods_typed_by_the_servers_nodes() {
    let server = OpcuaServer::start(Plant::default());
    let s = setup("downlink", &server.url(), true);
    s.tb.wait_until(Duration::from_secs(30), "both boilers", |r| {
        latest(r, "Boiler SN-1", "v0").is_some() && latest(r, "Boiler SN-2", "v0").is_some()
    });

    // Shared attributes: each to its node, cast to the node's DataType
    // (text to an Int16, a list to an array of Doubles).
    let update =
        json!({"device": "Boiler SN-1", "data": {"setpoint": "42", "relay": true, "curve": [4, 5.5], "note": 1}});
    s.tb.publish("v1/gateway/attributes", update.to_string());
    wait_value(&server, 1, "SetPoint", &Variant::Int16(42));
    wait_value(&server, 1, "Relay", &Variant::Boolean(true));
    wait_value(&server, 1, "Curve", &Variant::from(vec![4.0f64, 5.5]));
    assert_eq!(server.value(2, "SetPoint"), Some(Variant::Int16(50)), "the other boiler is untouched");
    // A value the node's type cannot hold is refused, naming why.
    let update = json!({"device": "Boiler SN-1", "data": {"setpoint": 70000}});
    s.tb.publish("v1/gateway/attributes", update.to_string());
    let end = Instant::now() + Duration::from_secs(20);
    while !s.gw.log().contains("70000 is out of the range of a Int16") {
        assert!(Instant::now() < end, "no error for 70000: {}", s.gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.value(1, "SetPoint"), Some(Variant::Int16(42)));

    // get: a browse path from the device, a key of it, a NodeId.
    assert_eq!(rpc(&s, "Boiler SN-1", 1, "get", json!("SetPoint")), json!({"result": {"value": 42}}));
    assert_eq!(rpc(&s, "Boiler SN-2", 2, "get", json!("temperature")), json!({"result": {"value": 20.5}}));
    let label = format!("ns={};s=Boiler 2.Label", server.ns);
    assert_eq!(rpc(&s, "Boiler SN-2", 3, "get", json!(label)), json!({"result": {"value": "idle"}}));
    let missing = rpc(&s, "Boiler SN-2", 4, "get", json!("Nothing"));
    assert!(missing["result"]["error"].as_str().is_some_and(|e| e.starts_with("BadNoMatch")), "{missing}");
    // set: `<node>=<value>`, `<NodeId>; <value>`, typed as the node is.
    assert_eq!(rpc(&s, "Boiler SN-2", 5, "set", json!("SetPoint=7")), json!({"result": {"value": 7}}));
    wait_value(&server, 2, "SetPoint", &Variant::Int16(7));
    let relay = format!("ns={};s=Boiler 2.Relay; true", server.ns);
    assert_eq!(rpc(&s, "Boiler SN-2", 6, "set", json!(relay)), json!({"result": {"value": true}}));
    wait_value(&server, 2, "Relay", &Variant::Boolean(true));
    let label = json!({"node": "Label", "value": "hot"});
    assert_eq!(rpc(&s, "Boiler SN-2", 7, "set", label), json!({"result": {"value": "hot"}}));
    wait_value(&server, 2, "Label", &Variant::from("hot"));

    // Methods: the request's arguments, else the configured ones, cast to
    // the method's InputArguments (the server takes Int32s only).
    assert_eq!(rpc(&s, "Boiler SN-1", 8, "multiply", json!([6, 7])), json!({"result": {"result": 42}}));
    assert_eq!(rpc(&s, "Boiler SN-1", 9, "multiply", json!({})), json!({"result": {"result": 8}}));
    assert_eq!(rpc(&s, "Boiler SN-1", 10, "minmax", json!([3, -1.5])), json!({"result": {"result": [-1.5, 3.0]}}));
    let failed = rpc(&s, "Boiler SN-1", 11, "fail", json!(null));
    assert_eq!(failed, json!({"result": {"error": "BadInvalidState: method `fail` failed"}}));
    let wrong = rpc(&s, "Boiler SN-1", 12, "multiply", json!([1]));
    // Refused by the converter, in the Python gateway's words.
    let refused = |reply: &Value, why: &str| {
        reply["success"] == false && reply["error"].as_str().is_some_and(|e| e.ends_with(why))
    };
    assert!(refused(&wrong, "Expected 2 arguments, but got 1"), "{wrong}");
    let unknown = rpc(&s, "Boiler SN-1", 13, "reboot", json!({}));
    assert!(refused(&unknown, "Requested rpc method is not found in config"), "{unknown}");

    // The connector's own RPC: the method on every device.
    let request = json!({"method": "opcua_multiply",
                         "params": {"arguments": [{"type": "integer", "value": 3}, {"type": "integer", "value": 5}]}});
    s.tb.publish("v1/devices/me/rpc/request/77", request.to_string());
    let got = s.tb.wait_until(Duration::from_secs(20), "the answer to opcua_multiply", |r| {
        r.iter().any(|m| m.topic == "v1/devices/me/rpc/response/77")
    });
    let answer = got.iter().find(|m| m.topic == "v1/devices/me/rpc/response/77").expect("found");
    let answer: Value = serde_json::from_slice(&answer.payload).expect("JSON");
    assert_eq!(
        answer,
        json!([{"result": 15, "device_name": "Boiler SN-1"}, {"result": 15, "device_name": "Boiler SN-2"}])
    );
}
