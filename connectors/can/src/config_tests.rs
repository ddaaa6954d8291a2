use super::*;
use serde_json::json;
use tbgw_core::setup::Devices;

fn read(doc: Value) -> (Option<CanConfig>, Vec<String>, Vec<String>) {
    let mut d = Diagnostics::default();
    let c = parse(&doc, Path::new("/etc/tbgw"), &mut d);
    (c, d.errors.iter().map(ToString::to_string).collect(), d.notices.iter().map(ToString::to_string).collect())
}

fn sample() -> Value {
    serde_json::from_str(include_str!("../../can-items/src/python-sample.json")).expect("sample")
}

#[test]
fn the_python_gateways_sample_reads_with_its_defaults() {
    let (c, errors, _) = read(sample());
    assert!(errors.is_empty(), "{errors:?}");
    let c = c.expect("config");
    assert_eq!(c.interface, Interface::SocketCan { channel: "vcan0".into(), fd: true });
    assert_eq!(c.reconnect, Reconnect { enabled: true, period: Duration::from_secs(5), count: None });
    assert_eq!(c.devices, ["Car"]);
    assert_eq!(c.route_decls.len(), 1);
    assert_eq!(c.route_decls[0].converter.component, ComponentRef::Builtin("can".into()));
    assert_eq!(c.downlinks.len(), 1);
    assert_eq!(c.downlinks[0].devices, Devices::Named(vec!["Car".into()]));
    let polls: Vec<(&str, u32, Option<Duration>, usize)> =
        c.polls.iter().map(|p| (p.key.as_str(), p.frame.id, p.period, p.data.len())).collect();
    assert_eq!(
        polls,
        [
            ("isDriverDoorOpened", 41, None, 4),
            ("rpm", 1918, Some(Duration::from_secs(5)), 8),
            ("milliage", 1918, Some(Duration::from_secs(30)), 8)
        ]
    );
}

#[test]
fn socketcand_and_the_bus_keys() {
    let mut doc = sample();
    doc["interface"] = json!("socketcand");
    doc["host"] = json!("127.0.0.1");
    doc["channel"] = json!("can0");
    doc["backend"] = json!({"receive_own_messages": true});
    doc["sendDataOnlyOnChange"] = json!(true);
    doc["devices"][0]["sendDataOnlyOnChange"] = json!(true);
    doc.as_object_mut().map(|o| o.remove("sendDataOnlyOnChange"));
    let (c, errors, notices) = read(doc.clone());
    assert!(errors.is_empty(), "{errors:?}");
    let c = c.expect("config");
    assert_eq!(c.interface, Interface::Socketcand { host: "127.0.0.1".into(), port: 29536, channel: "can0".into() });
    assert!(notices.iter().any(|n| n.starts_with("backend.receive_own_messages")), "{notices:?}");
    assert_eq!(c.route_decls[0].report.devices.get("Car"), Some(&Strategy::OnChange));

    doc["backend"] = json!({"fd": true});
    let (_, errors, _) = read(doc.clone());
    assert_eq!(errors, ["backend.fd: socketcand carries classic CAN frames only"]);
    doc.as_object_mut().map(|o| o.remove("host"));
    doc["backend"] = json!({});
    let (_, errors, _) = read(doc.clone());
    assert_eq!(errors, ["host: required: the socketcand server (`interface: socketcand`)"]);
    doc["interface"] = json!("pcan");
    let (_, errors, _) = read(doc.clone());
    assert_eq!(
        errors,
        ["interface: `pcan` is not an interface tbgw has; expected socketcan, or socketcand for a remote bus"]
    );
    doc["interface"] = json!("socketcan");
    doc["reconectPeriod"] = json!(5);
    let (_, errors, _) = read(doc);
    assert_eq!(errors, ["reconectPeriod: unknown key; did you mean `reconnectPeriod`?"]);
}

#[test]
fn a_device_with_its_own_converters() {
    let doc = json!({"interface": "socketcand", "host": "127.0.0.1", "port": 1, "devices": [
        {"name": "A", "timeseries": [{"key": "a", "nodeId": 1, "value": "0:1:int"}]},
        {"name": "B", "converters": {"uplink": "conv/b.wasm", "downlink": {"type": "can"}},
         "timeseries": [{"key": "b", "nodeId": 2, "value": "0:1:int"}]},
        {"name": "C", "converters": {"uplink": "CustomCanUplinkConverter"},
         "timeseries": [{"key": "c", "nodeId": 3, "value": "0:1:int"}]}
    ]});
    let (_, errors, _) = read(doc.clone());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("devices[2].converters.uplink: `CustomCanUplinkConverter` is not a .wasm file"));
    let mut doc = doc;
    doc["devices"].as_array_mut().map(|d| d.pop());
    let (c, errors, _) = read(doc);
    assert!(errors.is_empty(), "{errors:?}");
    let c = c.expect("config");
    assert_eq!(c.route_decls.len(), 2);
    assert_eq!(c.device_routes, [0, 1]);
    assert_eq!(c.route_decls[1].converter.component, ComponentRef::File("/etc/tbgw/conv/b.wasm".into()));
    assert_eq!(c.downlinks.len(), 1, "both devices on the built-in downlink");
    assert_eq!(c.downlinks[0].devices, Devices::Named(vec!["A".into(), "B".into()]));
}

#[test]
fn an_fd_poll_over_socketcand_is_refused() {
    let doc = json!({"interface": "socketcand", "host": "127.0.0.1", "devices": [{"name": "A", "timeseries": [
        {"key": "a", "nodeId": 1, "isFd": true, "value": "0:1:int", "polling": {"dataInHex": "00"}},
        {"key": "b", "nodeId": 2, "isFd": true, "value": "0:1:int"}
    ]}]});
    let (_, errors, _) = read(doc);
    assert_eq!(errors, ["devices[0].timeseries[0].isFd: a CAN FD poll; socketcand carries classic CAN frames only"]);
}
