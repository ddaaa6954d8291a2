//! The service in-process: built from a config, one connector stopped alone
//! while the other goes on, and the status snapshot saying so.

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tbgw::service::Gateway;
use tbgw_core::config::Diagnostics;
use tbgw_test_support::{Collector, Mosquitto, Received};

fn mqtt(port: u16, client_id: &str) -> serde_json::Value {
    json!({
        "broker": {"host": "127.0.0.1", "port": port, "clientId": client_id, "version": 4, "cleanSession": false},
        "mapping": [{"topicFilter": "sensor/+/data", "converter": {"type": "json",
            "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)"},
            "timeseries": [{"type": "integer", "key": "n", "value": "${n}"}]}}]
    })
}

/// The readings of `device` ThingsBoard received.
fn readings(received: &[Received], device: &str) -> Vec<i64> {
    received
        .iter()
        .filter(|m| m.topic == "v1/gateway/telemetry")
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .flat_map(|doc| doc[device].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["values"]["n"].as_i64())
        .collect()
}

#[test]
fn one_connector_stops_alone_and_the_status_says_so() {
    let (tb_broker, a, b) = (Mosquitto::start_new(), Mosquitto::start_new(), Mosquitto::start_new());
    let tb = Collector::connect(tb_broker.port, "tb-service", &["v1/gateway/#"]);
    let doc = json!({
        "thingsboard": {"host": "127.0.0.1", "port": tb_broker.port,
                        "security": {"type": "accessToken", "accessToken": "T"}, "statistics": {"enable": false}},
        "storage": {"type": "memory"},
        "connectors": [
            {"type": "mqtt", "name": "A", "configuration": mqtt(a.port, "gw-a")},
            {"type": "mqtt", "name": "B", "configuration": mqtt(b.port, "gw-b")}
        ]
    });
    let mut d = Diagnostics::default();
    let config = tbgw::config::from_document(&doc, Path::new("/x/tb.yaml"), Path::new("/x"), &mut d).expect("config");
    assert!(d.is_ok(), "{:?}", d.errors);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut gw = rt.block_on(Gateway::build(config)).expect("built");
    let names: Vec<&str> = gw.registry().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["A/json", "B/json"]);

    let (dev_a, dev_b) = (Collector::connect(a.port, "dev-a", &[]), Collector::connect(b.port, "dev-b", &[]));
    let wait_connected = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !gw.status().connectors.iter().all(|c| c.connected) {
            assert!(std::time::Instant::now() < deadline, "{what}: not connected");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_connected("both connectors");
    // Their subscriptions are taken once connected and subscribed: wait for
    // a first reading from each before counting.
    tb.wait_until(Duration::from_secs(20), "a first reading from each", |r| {
        dev_a.publish("sensor/DA/data", r#"{"n": 0}"#);
        dev_b.publish("sensor/DB/data", r#"{"n": 0}"#);
        !readings(r, "DA").is_empty() && !readings(r, "DB").is_empty()
    });
    assert!(rt.block_on(gw.stop_connector("A")));
    assert!(!rt.block_on(gw.stop_connector("nobody")));
    for n in 1..=5 {
        dev_a.publish("sensor/DA/data", format!(r#"{{"n": {n}}}"#));
        dev_b.publish("sensor/DB/data", format!(r#"{{"n": {n}}}"#));
    }
    let got = tb.wait_until(Duration::from_secs(20), "B's readings", |r| readings(r, "DB").contains(&5));
    assert!(!readings(&got, "DA").contains(&1), "A stopped: its devices' messages stay with their broker");

    let status = gw.status();
    let (sa, sb) = (&status.connectors[0], &status.connectors[1]);
    assert_eq!((sa.name.as_str(), sa.connected, sb.name.as_str(), sb.connected), ("A", false, "B", true));
    assert!(sb.received >= 6 && sb.converted >= 6 && sb.stored >= 6, "{sb:?}");
    assert_eq!(sb.routes, ["B/json"]);
    let stats = status.statistics();
    assert_eq!(stats["AConnected"], json!(false), "{stats}");
    assert!(stats["BEventsProduced"].as_u64() >= Some(6), "{stats}");
    let converters = status.converters();
    assert_eq!(converters[1]["name"], "B/json", "{converters}");
    assert_eq!(converters[1]["path"], "connectors[1].configuration.mapping[0].converter", "{converters}");
    assert!(converters[1]["messages"].as_u64() >= Some(6), "{converters}");
    rt.block_on(gw.stop());
}
