//! End to end with the real `tbgw` process: Modbus devices simulated on
//! tokio-modbus's server side (one Modbus TCP, one with RTU framing over
//! TCP), ThingsBoard's side a mosquitto broker. Values are checked as
//! ThingsBoard receives them; writes as the device holds them.

#[path = "e2e_common/mod.rs"]
mod common;

use common::{Gateway, latest, rpc};
use serde_json::{Value, json};
use std::time::Duration;
use tbgw_test_support::modbus::{Framing, ModbusDevice, SerialBus};
use tbgw_test_support::{Collector, Mosquitto, Received};

fn slave(name: &str, port: u16, method: &str, unit: u8) -> Value {
    json!({
        "host": "127.0.0.1", "port": port, "type": "tcp", "method": method, "unitId": unit,
        "deviceName": name, "deviceType": "meter", "pollPeriod": 100, "timeout": 1, "retries": 1,
        "connectAttemptTimeMs": 500, "connectAttemptCount": 2, "waitAfterFailedAttemptsMs": 500,
        "byteOrder": "BIG", "wordOrder": "LITTLE", "maxGap": 8,
        "attributes": [{"tag": "serial", "type": "string", "functionCode": 3, "address": 10, "objectsCount": 2}],
        "timeseries": [
            {"tag": "temperature", "type": "16int", "functionCode": 3, "address": 0, "objectsCount": 1, "divider": 10},
            {"tag": "energy", "type": "32uint", "functionCode": 3, "address": 1, "objectsCount": 2},
            {"tag": "voltage", "type": "32float", "functionCode": 4, "address": 0, "objectsCount": 2},
            {"tag": "relay", "type": "bits", "functionCode": 1, "address": 3, "objectsCount": 1}
        ],
        "attributeUpdates": [{"tag": "setpoint", "type": "16int", "functionCode": 6, "address": 20, "divider": 10}],
        "rpc": [
            {"tag": "setRelay", "type": "bits", "functionCode": 5, "address": 3, "objectsCount": 1},
            {"tag": "setLimits", "type": "32float", "functionCode": 16, "address": 30, "objectsCount": 2},
            {"tag": "getTemperature", "type": "16int", "functionCode": 3, "address": 0, "objectsCount": 1, "divider": 10}
        ]
    })
}

/// ThingsBoard's side (a broker, and a collector of what it receives) and
/// tbgw polling `modbus_json`; the broker and the configuration's directory
/// live as long as the guard returned first (bound first, dropped last:
/// after the gateway, whose log is in that directory).
fn start(client_id: &str, modbus_json: &str) -> ((Mosquitto, tempfile::TempDir), Collector, Gateway) {
    let tb_broker = Mosquitto::start_new();
    let tb = Collector::connect(tb_broker.port, client_id, &["v1/gateway/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "thingsboard:\n  host: 127.0.0.1\n  port: {port}\n  security: {{type: accessToken, accessToken: t}}\n\
         storage: {{type: memory}}\n\
         connectors:\n  - {{type: modbus, name: Meters, configuration: modbus.json}}\n\
         tbgw:\n  cacheDir: {cache}\n",
        port = tb_broker.port,
        cache = common::shared_cache().display(),
    );
    let gw = Gateway::start_modbus(dir.path(), &yaml, modbus_json);
    ((tb_broker, dir), tb, gw)
}

fn memory(d: &ModbusDevice, serial: &[u8; 4]) {
    d.with(|m| {
        m.holding[0] = 215;
        // 70000 = 0x0001_1170 with LITTLE word order: low word first.
        m.holding[1] = 0x1170;
        m.holding[2] = 0x0001;
        m.holding[10] = u16::from_be_bytes([serial[0], serial[1]]);
        m.holding[11] = u16::from_be_bytes([serial[2], serial[3]]);
        // 229.5f32 = 0x43658000, LITTLE words.
        m.input[0] = 0x8000;
        m.input[1] = 0x4365;
        m.coils[3] = true;
        // Nothing exists past 100: a read there is refused.
        m.limit = 100;
    });
}

struct Setup {
    tb: Collector,
    gw: Gateway,
    tcp: ModbusDevice,
    rtu: ModbusDevice,
    _keep: (Mosquitto, tempfile::TempDir),
}

fn setup(name: &str) -> Setup {
    let (tcp, rtu) = (ModbusDevice::start(Framing::Tcp), ModbusDevice::start(Framing::RtuOverTcp));
    memory(&tcp, b"AB12");
    memory(&rtu, b"RT01");
    let config = json!({"master": {"slaves": [
        slave("Meter TCP", tcp.port, "socket", 1),
        slave("Meter RTU", rtu.port, "rtu", 2),
    ]}});
    let (_keep, tb, gw) = start(&format!("tb-{name}"), &config.to_string());
    Setup { tb, gw, tcp, rtu, _keep }
}

#[test]
fn every_tag_arrives_decoded_over_tcp_and_rtu_framing() {
    let s = setup("read");
    let got = s.tb.wait_until(Duration::from_secs(30), "both meters' values", |r| {
        ["Meter TCP", "Meter RTU"].iter().all(|d| latest(r, d, "voltage").is_some() && latest(r, d, "serial").is_some())
    });
    for (device, serial) in [("Meter TCP", "AB12"), ("Meter RTU", "RT01")] {
        assert_eq!(latest(&got, device, "temperature"), Some(json!(21.5)), "{device}");
        assert_eq!(latest(&got, device, "energy"), Some(json!(70000)), "{device}");
        assert_eq!(latest(&got, device, "voltage"), Some(json!(229.5)), "{device}");
        assert_eq!(latest(&got, device, "relay"), Some(json!(true)), "{device}");
        assert_eq!(latest(&got, device, "serial"), Some(json!(serial)), "{device}");
    }
    let connect = got.iter().find(|m| m.topic == "v1/gateway/connect" && m.text().contains("Meter TCP"));
    assert_eq!(connect.map(Received::text).as_deref(), Some(r#"{"device":"Meter TCP","type":"meter"}"#));
    // The planner's three reads per poll (registers 0-11 in one, the input
    // registers, the coil), not one per tag: five tags.
    let before = s.tcp.requests();
    std::thread::sleep(Duration::from_millis(1000));
    let per_poll = (s.tcp.requests() - before) as f64 / 10.0;
    assert!((2.0..=3.5).contains(&per_poll), "{per_poll} requests per poll; expected 3");
    // A value changed on the device arrives.
    s.tcp.with(|m| m.holding[0] = 199);
    s.tb.wait_until(Duration::from_secs(10), "the new temperature", |r| {
        latest(r, "Meter TCP", "temperature") == Some(json!(19.9))
    });
}

#[test]
fn rpcs_and_attribute_updates_write_and_read_the_device() {
    let s = setup("write");
    s.tb.wait_until(Duration::from_secs(30), "both meters connected", |r| {
        ["Meter TCP", "Meter RTU"].iter().all(|d| latest(r, d, "voltage").is_some())
    });
    assert_eq!(rpc(&s.tb, "Meter TCP", 1, "setRelay", json!(false)), json!({"result": {"value": false}}));
    assert!(!s.tcp.with(|m| m.coils[3]), "the coil was written");
    assert_eq!(
        rpc(&s.tb, "Meter RTU", 2, "setLimits", json!({"value": 1.5})),
        json!({"result": {"value": {"value": 1.5}}})
    );
    assert_eq!(s.rtu.with(|m| (m.holding[30], m.holding[31])), (0x0000, 0x3fc0), "1.5f32, LITTLE words");
    assert_eq!(rpc(&s.tb, "Meter TCP", 3, "getTemperature", json!(null)), json!({"result": {"value": 21.5}}));
    let data = rpc(&s.tb, "Meter TCP", 4, "explode", json!(1));
    assert!(data["error"].as_str().is_some_and(|e| e.contains("no rpc entry has the tag `explode`")), "{data}");
    // The Python gateway's reserved get/set: any register, described in the params.
    let set = "type=32uint;functionCode=16;objectsCount=2;address=40;value=123456;";
    assert_eq!(rpc(&s.tb, "Meter TCP", 5, "set", json!(set)), json!({"result": {"value": set}}));
    assert_eq!(s.tcp.with(|m| (m.holding[40], m.holding[41])), (0xe240, 0x0001), "123456, LITTLE words");
    let get = "type=32uint;functionCode=3;objectsCount=2;address=40;";
    assert_eq!(rpc(&s.tb, "Meter TCP", 6, "get", json!(get)), json!({"result": {"value": 123456}}));
    // A shared attribute update.
    s.tb.publish("v1/gateway/attributes", json!({"device": "Meter RTU", "data": {"setpoint": 22.5}}).to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.rtu.with(|m| m.holding[20]) != 225 {
        assert!(std::time::Instant::now() < deadline, "the setpoint never reached the device");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_dead_device_is_isolated_and_comes_back() {
    let mut s = setup("dead");
    s.tb.wait_until(Duration::from_secs(30), "both meters polled", |r| {
        ["Meter TCP", "Meter RTU"].iter().all(|d| latest(r, d, "voltage").is_some())
    });
    s.tcp.stop();
    std::thread::sleep(Duration::from_millis(500));
    // Its requests are answered at once; the other meter goes on.
    let data = rpc(&s.tb, "Meter TCP", 10, "setRelay", json!(true));
    assert!(data["error"].as_str().is_some_and(|e| e.contains("not connected")), "{data}");
    s.rtu.with(|m| m.holding[0] = 100);
    s.tb.wait_until(Duration::from_secs(10), "the live meter's new value", |r| {
        latest(r, "Meter RTU", "temperature") == Some(json!(10.0))
    });
    // Back: polled again.
    s.tcp.with(|m| m.holding[0] = 300);
    s.tcp.resume();
    s.tb.wait_until(Duration::from_secs(20), "the meter back", |r| {
        latest(r, "Meter TCP", "temperature") == Some(json!(30.0))
    });
    let log = s.gw.log();
    // One line when it went (however many attempts failed), one when it came back.
    let warnings = log.lines().filter(|l| l.contains("WARN") && l.contains("Meter TCP")).count();
    assert_eq!(warnings, 1, "logged once per state change:\n{log}");
    assert!(log.contains("connected again"), "{log}");
}

/// RTU on a serial port: a pty pair stands in for the RS-485 line.
#[test]
fn a_serial_rtu_device_is_polled_and_written() {
    let device = ModbusDevice::start_serial();
    memory(&device, b"SE01");
    let mut slave = slave("Meter Serial", 0, "rtu", 3);
    let path = device.serial_path().expect("a serial line").display().to_string();
    let o = slave.as_object_mut().expect("object");
    o.remove("host");
    o.insert("type".into(), json!("serial"));
    o.insert("port".into(), json!(path));
    o.insert("baudrate".into(), json!(19200));
    o.insert("parity".into(), json!("N"));
    o.insert("stopbits".into(), json!(1));
    o.insert("bytesize".into(), json!(8));
    let config = json!({"master": {"slaves": [slave]}});
    let (_keep, tb, _gw) = start("tb-serial", &config.to_string());
    let got = tb.wait_until(Duration::from_secs(30), "the serial meter's values", |r| {
        latest(r, "Meter Serial", "voltage").is_some() && latest(r, "Meter Serial", "serial").is_some()
    });
    assert_eq!(latest(&got, "Meter Serial", "temperature"), Some(json!(21.5)));
    assert_eq!(latest(&got, "Meter Serial", "energy"), Some(json!(70000)));
    assert_eq!(latest(&got, "Meter Serial", "serial"), Some(json!("SE01")));
    assert_eq!(rpc(&tb, "Meter Serial", 1, "setLimits", json!(2.5)), json!({"result": {"value": 2.5}}));
    // 2.5f32 = 0x40200000, LITTLE words.
    assert_eq!(device.with(|m| (m.holding[30], m.holding[31])), (0x0000, 0x4020));
}

/// An RS-485 bus: three units on one serial port take turns on it; one is
/// off (it does not answer at all), which costs the others little, and
/// comes back.
#[test]
fn units_on_one_serial_bus_take_turns() {
    let bus = SerialBus::start(&[1, 2, 3]);
    for (unit, t) in [(1, 101), (2, 202), (3, 303)] {
        bus.with(unit, |m| m.holding[0] = t);
    }
    bus.silence(3, true);
    let path = bus.path().display().to_string();
    let unit = |name: &str, id: u8| {
        json!({"type": "serial", "port": path, "baudrate": 19200, "unitId": id, "deviceName": name,
               "pollPeriod": 100, "timeout": 0.3, "retries": 1, "delayBetweenRequestsMs": 5,
               "connectAttemptCount": 2, "waitAfterFailedAttemptsMs": 2000,
               "timeseries": [{"tag": "temperature", "type": "16int", "functionCode": 3, "address": 0, "divider": 10}],
               "rpc": [{"tag": "setTemperature", "type": "16int", "functionCode": 6, "address": 0, "divider": 10}]})
    };
    let config = json!({"master": {"slaves": [unit("Bus 1", 1), unit("Bus 2", 2), unit("Bus 3", 3)]}});
    let (_keep, tb, gw) = start("tb-bus", &config.to_string());
    let got = tb.wait_until(Duration::from_secs(30), "the two live units' values", |r| {
        latest(r, "Bus 1", "temperature").is_some() && latest(r, "Bus 2", "temperature").is_some()
    });
    assert_eq!(latest(&got, "Bus 1", "temperature"), Some(json!(10.1)));
    assert_eq!(latest(&got, "Bus 2", "temperature"), Some(json!(20.2)));
    assert_eq!(latest(&got, "Bus 3", "temperature"), None);
    // The live units keep most of their pace (30 polls in 3 s at 100 ms;
    // about 20 here): the silent unit costs two probes of 0.3 s every 2 s,
    // not `retries` timeouts every poll (which would leave unit 1 about 4
    // polls). The bound leaves room for a loaded machine.
    let before = bus.requests(1);
    std::thread::sleep(Duration::from_secs(3));
    let polls = bus.requests(1) - before;
    eprintln!("unit 1: {polls} polls in 3 s beside a silent unit");
    assert!(polls >= 8, "unit 1 was polled {polls} times in 3 s at a 100 ms period");
    // Writes reach the unit they name; the silent one's are answered with why.
    assert_eq!(rpc(&tb, "Bus 2", 1, "setTemperature", json!(12.5)), json!({"result": {"value": 12.5}}));
    assert_eq!(bus.with(2, |m| m.holding[0]), 125);
    assert_eq!(bus.with(1, |m| m.holding[0]), 101);
    let data = rpc(&tb, "Bus 3", 2, "setTemperature", json!(1));
    assert!(data["error"].as_str().is_some_and(|e| e.contains("did not answer")), "{data}");
    // Back: polled again.
    bus.silence(3, false);
    tb.wait_until(Duration::from_secs(20), "unit 3 back", |r| latest(r, "Bus 3", "temperature") == Some(json!(30.3)));
    let log = gw.log();
    let warnings = |device: &str| log.lines().filter(|l| l.contains("WARN") && l.contains(device)).count();
    assert_eq!((warnings("Bus 1"), warnings("Bus 2")), (0, 0), "the live units are fine:\n{log}");
    assert_eq!(warnings("Bus 3"), 1, "logged once per state change:\n{log}");
    assert!(log.contains("unit 3 answers again"), "{log}");
}

/// Modbus TCP frames in UDP datagrams (`type: udp`).
#[test]
fn a_udp_device_is_polled() {
    let device = ModbusDevice::start_udp();
    memory(&device, b"UD01");
    let mut slave = slave("Meter UDP", device.port, "socket", 4);
    slave["type"] = json!("udp");
    let config = json!({"master": {"slaves": [slave]}});
    let (_keep, tb, _gw) = start("tb-udp", &config.to_string());
    let got = tb.wait_until(Duration::from_secs(30), "the UDP meter's values", |r| {
        latest(r, "Meter UDP", "voltage").is_some() && latest(r, "Meter UDP", "serial").is_some()
    });
    assert_eq!(latest(&got, "Meter UDP", "temperature"), Some(json!(21.5)));
    assert_eq!(latest(&got, "Meter UDP", "voltage"), Some(json!(229.5)));
    assert_eq!(latest(&got, "Meter UDP", "serial"), Some(json!("UD01")));
}

/// The Python gateway's own example `modbus.json`, only its device's port
/// changed to the simulator's: its tags arrive decoded as it configures
/// them, and its attribute update and RPCs reach the device.
#[test]
fn the_python_gateways_modbus_json_runs_unchanged() {
    let device = ModbusDevice::start(Framing::Tcp);
    device.with(|m| {
        m.holding[..4].copy_from_slice(&[215, 456, 2200, 500]);
        m.coils[1] = true;
    });
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/modbus_python_default.json");
    let original = std::fs::read_to_string(file).expect("the Python gateway's modbus.json");
    let text = original.replacen("\"port\": 5021", &format!("\"port\": {}", device.port), 1);
    assert_ne!(text, original, "the device's port is in the file");
    let (_keep, tb, _gw) = start("tb-python-modbus", &text);
    let got = tb.wait_until(Duration::from_secs(30), "the demo device's values", |r| {
        ["temperature", "humidity", "relay", "power", "frequency"].iter().all(|k| latest(r, "Demo Device", k).is_some())
    });
    let values: Vec<Option<Value>> = ["temperature", "humidity", "power", "frequency", "relay"]
        .iter()
        .map(|k| latest(&got, "Demo Device", k))
        .collect();
    assert_eq!(
        values,
        [Some(json!(21.5)), Some(json!(45.6)), Some(json!(220.0)), Some(json!(50.0)), Some(json!(true))]
    );
    assert_eq!(rpc(&tb, "Demo Device", 1, "setRelay", json!(false)), json!({"result": {"value": false}}));
    assert!(!device.with(|m| m.coils[1]));
    assert_eq!(rpc(&tb, "Demo Device", 2, "getRelay", json!(null)), json!({"result": {"value": false}}));
    tb.publish("v1/gateway/attributes", json!({"device": "Demo Device", "data": {"relay": true}}).to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !device.with(|m| m.coils[1]) {
        assert!(std::time::Instant::now() < deadline, "the attribute update did not set the coil");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Report strategies, as the Python gateway's: a slave `ON_CHANGE` sends a
/// value again only when it changes, however often it is polled; one tag
/// of it `ON_RECEIVED` is sent every poll.
#[test]
fn a_slave_reporting_on_change_sends_only_changes() {
    let device = ModbusDevice::start(Framing::Tcp);
    device.with(|m| m.holding[..2].copy_from_slice(&[215, 1]));
    let config = json!({"master": {"slaves": [{
    "host": "127.0.0.1", "port": device.port, "unitId": 1, "deviceName": "Quiet Meter", "pollPeriod": 100,
    "reportStrategy": {"type": "ON_CHANGE"},
    "timeseries": [
        {"tag": "temperature", "type": "16int", "functionCode": 3, "address": 0, "divider": 10},
        {"tag": "heartbeat", "type": "16int", "functionCode": 3, "address": 1, "reportStrategy": {"type": "ON_RECEIVED"}}
    ]}]}});
    let (_keep, tb, _gw) = start("tb-report", &config.to_string());
    let values = |received: &[Received], key: &str| -> Vec<Value> {
        received
            .iter()
            .filter(|m| m.topic == "v1/gateway/telemetry")
            .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
            .flat_map(|doc| doc["Quiet Meter"].as_array().cloned().unwrap_or_default())
            .filter_map(|reading| reading["values"].get(key).cloned())
            .collect()
    };
    // Twenty polls of the same registers: the heartbeat each time, the
    // temperature once.
    tb.wait_until(Duration::from_secs(30), "20 heartbeats", |r| values(r, "heartbeat").len() >= 20);
    device.with(|m| m.holding[0] = 216);
    tb.wait_until(Duration::from_secs(10), "the changed temperature", |r| values(r, "temperature").len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    let got = tb.received();
    assert_eq!(values(&got, "temperature"), [json!(21.5), json!(21.6)], "once, then on the change only");
    assert!(values(&got, "heartbeat").len() >= 25, "the ON_RECEIVED tag every poll");
}

/// A slave on the user's own converters (built over the guest SDK), as the
/// Python gateway names them per slave: its blocks are decoded by the
/// custom uplink component, and its RPCs made and answered by the custom
/// downlink one, both ways (the registers read come back through its
/// `reply`); a slave beside it stays on the built-in converters.
#[test]
fn a_slave_on_custom_converters_both_ways() {
    let (custom, builtin) = (ModbusDevice::start(Framing::Tcp), ModbusDevice::start(Framing::Tcp));
    custom.with(|m| {
        m.holding[0] = 7;
        m.holding[1] = 700;
    });
    memory(&builtin, b"BI01");
    let mut own = json!({
        "host": "127.0.0.1", "port": custom.port, "unitId": 1, "deviceName": "Custom", "pollPeriod": 100,
        "timeout": 1, "connectAttemptTimeMs": 500,
        "timeseries": [{"tag": "ignored", "type": "16uint", "functionCode": 3, "address": 0, "objectsCount": 2}],
        "uplink_converter": tbgw_guests::CUSTOM_REGISTERS,
        "downlink_converter": {"type": "custom", "extension": tbgw_guests::CUSTOM_DOWNLINK,
                               "extensionConfig": {"kind": "modbus"}, "limits": {"timeoutMs": 50}}
    });
    own["deviceType"] = json!("meter");
    let config = json!({"master": {"slaves": [own, slave("Builtin", builtin.port, "socket", 1)]}});
    let (_keep, tb, _gw) = start("tb-custom", &config.to_string());
    tb.wait_until(Duration::from_secs(30), "both slaves polled", |r| {
        latest(r, "Custom", "reg1").is_some() && latest(r, "Builtin", "voltage").is_some()
    });
    let got = tb.received();
    assert_eq!(latest(&got, "Custom", "reg0"), Some(json!(7)), "decoded by the custom component");
    assert_eq!(latest(&got, "Custom", "reg1"), Some(json!(700)));
    assert_eq!(latest(&got, "Custom", "decoder"), Some(json!("custom")));
    assert_eq!(latest(&got, "Custom", "ignored"), None, "not by the built-in");
    assert_eq!(latest(&got, "Builtin", "temperature"), Some(json!(21.5)), "its neighbour keeps the built-in");

    let written = rpc(&tb, "Custom", 1, "writeRegister", json!({"address": 1, "value": 4242}));
    assert_eq!(written, json!({"custom": true, "method": "writeRegister", "written": true}));
    assert_eq!(custom.with(|m| m.holding[1]), 4242, "the custom downlink component wrote it");
    let read = rpc(&tb, "Custom", 2, "readRegisters", json!({"address": 0, "count": 2}));
    assert_eq!(read, json!({"custom": true, "method": "readRegisters", "registers": [7, 4242]}));
    let refused = rpc(&tb, "Custom", 3, "readRegisters", json!({"address": 0, "count": 500}));
    assert!(
        refused["error"].as_str().is_some_and(|e| e.contains("count 500 is out of range (1 to 125 registers)")),
        "the connector checks what the converter asks: {refused}"
    );
    // The built-in slave's RPCs are the built-in converter's.
    assert_eq!(rpc(&tb, "Builtin", 4, "getTemperature", json!(null)), json!({"result": {"value": 21.5}}));
}
