//! End to end with the real `tbgw` process and BLE devices: BlueZ is the
//! fake of `tbgw_test_support::bluez` (BlueZ's D-Bus interfaces on a private
//! `dbus-daemon`; these machines have no Bluetooth), reached by btleplug as
//! it reaches the real one; ThingsBoard's side a mosquitto broker with its
//! default settings. Values are checked as ThingsBoard receives them, writes
//! as the device receives them.

#[path = "e2e_common/mod.rs"]
mod common;

use common::{Gateway, latest, rpc, statistic};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tbgw_test_support::bluez::{FakeBluez, FakeChar, FakeDevice};
use tbgw_test_support::{Collector, Mosquitto, Received};

const THERMO: &str = "AA:BB:CC:DD:EE:01";
const BEACON: &str = "AA:BB:CC:DD:EE:02";
const ABSENT: &str = "AA:BB:CC:DD:EE:03";
const CUSTOM: &str = "AA:BB:CC:DD:EE:04";
const CLIMATE: &str = "226caa55-6476-4566-7562-66734470666d";
const BATTERY: &str = "00002a19-0000-1000-8000-00805f9b34fb";
const NAME: &str = "00002a00-0000-1000-8000-00805f9b34fb";

/// The Python gateway's sample's shapes: two notified keys on one
/// characteristic, a read attribute, a write on an attribute update, the
/// three kinds of RPC; a beacon listened to; a device that is never there.
fn ble_json() -> Value {
    json!({
        "name": "BLE Connector", "passiveScanMode": false, "showMap": false,
        "devices": [
            {"name": "Thermo", "deviceType": "thermometer", "MACAddress": THERMO, "pollPeriod": 300, "timeout": 3000,
             "connectRetry": 2, "connectRetryInSeconds": 0, "waitAfterConnectRetries": 1,
             "telemetry": [
                {"key": "temperature", "method": "notify", "characteristicUUID": "226CAA55-6476-4566-7562-66734470666D", "valueExpression": "[0]"},
                {"key": "humidity", "method": "notify", "characteristicUUID": "226CAA55-6476-4566-7562-66734470666D", "valueExpression": "[1]"}
             ],
             "attributes": [{"key": "battery", "method": "read", "characteristicUUID": "2A19", "valueExpression": "[0]%"}],
             "attributeUpdates": [{"attributeOnThingsBoard": "sharedName", "characteristicUUID": "00002A00-0000-1000-8000-00805F9B34FB"}],
             "serverSideRpc": [
                {"methodRPC": "readName", "withResponse": true, "characteristicUUID": "2a00", "methodProcessing": "read"},
                {"methodRPC": "writeName", "withResponse": true, "characteristicUUID": "2a00", "methodProcessing": "write"},
                {"methodRPC": "whereAreYou", "withResponse": true, "methodProcessing": "scan"}
             ]},
            {"name": "Beacon", "MACAddress": BEACON, "type": "hex", "pollPeriod": 60000,
             "telemetry": [
                {"key": "level", "dataSourceType": "advertisement", "valueExpression": "[0:2]", "compute": "value / 10"},
                {"key": "door", "dataSourceType": "advertisement", "advertisementData": "service", "serviceUUID": "feaa", "valueExpression": "[0]"}
             ],
             "attributes": [{"key": "rssi", "dataSourceType": "advertisement", "advertisementData": "rssi"}],
             // A scan needs no connection: the beacon stays listened to.
             "serverSideRpc": [{"methodRPC": "whereAreYou", "withResponse": true, "methodProcessing": "scan"}]},
            {"name": "Absent", "MACAddress": ABSENT, "pollPeriod": 300,
             "telemetry": [{"key": "x", "method": "read", "characteristicUUID": "2a19"}]},
            // A device's own converter (the probe guest: the payload as text, device `probe`).
            {"name": "Custom", "MACAddress": CUSTOM, "converters": {"uplink": tbgw_guests::PROBE},
             "telemetry": [{"key": "raw", "method": "notify", "characteristicUUID": CLIMATE}]}
        ]
    })
}

fn thermo() -> FakeDevice {
    let c = |uuid: &str, flags: Vec<&'static str>, value: &[u8]| FakeChar {
        uuid: uuid.into(),
        flags,
        value: value.to_vec(),
    };
    FakeDevice {
        address: THERMO.into(),
        name: Some("Thermo".into()),
        rssi: Some(-48),
        services: vec![
            ("0000181a-0000-1000-8000-00805f9b34fb".into(), vec![c(CLIMATE, vec!["read", "notify"], &[0, 0])]),
            (
                "0000180f-0000-1000-8000-00805f9b34fb".into(),
                vec![c(BATTERY, vec!["read"], &[87]), c(NAME, vec!["read", "write"], b"Thermo")],
            ),
        ],
        ..Default::default()
    }
}

fn beacon() -> FakeDevice {
    FakeDevice {
        address: BEACON.into(),
        name: Some("Beacon".into()),
        rssi: Some(-70),
        manufacturer_data: vec![(0x0059, vec![0x00, 0xfa])],
        service_data: vec![("0000feaa-0000-1000-8000-00805f9b34fb".into(), vec![1])],
        ..Default::default()
    }
}

struct Setup {
    tb: Collector,
    gw: Gateway,
    bluez: FakeBluez,
    /// From the gateway's being ready to the thermometer's subscription.
    subscribed_after: Duration,
    _keep: (Mosquitto, tempfile::TempDir),
}

fn setup(name: &str) -> Setup {
    let bluez = FakeBluez::start();
    bluez.add_device(&thermo());
    bluez.add_device(&beacon());
    bluez.add_device(&FakeDevice { address: CUSTOM.into(), ..thermo() });
    let tb_broker = Mosquitto::start_new();
    let tb = Collector::connect(tb_broker.port, &format!("tb-{name}"), &["v1/gateway/#", "v1/devices/me/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = common::connector_yaml(tb_broker.port, "ble", "BLE", "ble.json");
    let config = ble_json().to_string();
    let gw = Gateway::start_with_env(
        dir.path(),
        &[("tb_gateway.yaml", &yaml), ("ble.json", &config)],
        &[("DBUS_SYSTEM_BUS_ADDRESS", bluez.address())],
    );
    let ready = Instant::now();
    bluez.wait(Duration::from_secs(20), "the gateway subscribed", |b| b.is_notifying(THERMO, CLIMATE));
    Setup { tb, gw, bluez, subscribed_after: ready.elapsed(), _keep: (tb_broker, dir) }
}

#[test]
fn notified_read_and_advertised_values_reach_thingsboard_and_a_missing_device_delays_none() {
    let s = setup("uplink");
    assert!(s.bluez.notify(THERMO, CLIMATE, &[21, 55]));
    let got = s.tb.wait_until(Duration::from_secs(20), "the thermometer's and the beacon's values", |r| {
        latest(r, "Thermo", "temperature").is_some()
            && latest(r, "Thermo", "battery").is_some()
            && latest(r, "Beacon", "level").is_some()
    });
    // `bytes` (the default for characteristics): the bytes' numbers as text.
    assert_eq!(latest(&got, "Thermo", "temperature"), Some(json!("21")));
    assert_eq!(latest(&got, "Thermo", "humidity"), Some(json!("55")));
    assert_eq!(latest(&got, "Thermo", "battery"), Some(json!("87%")));
    // `hex`: 0x00fa = 250, computed / 10; service data and RSSI too.
    assert_eq!(latest(&got, "Beacon", "level"), Some(json!(25.0)));
    assert_eq!(latest(&got, "Beacon", "door"), Some(json!(1)));
    assert_eq!(latest(&got, "Beacon", "rssi"), Some(json!(-70)));
    // `Absent` is configured and never seen: the others do not wait for it.
    assert!(s.subscribed_after < Duration::from_secs(3), "subscribed {:?} after the start", s.subscribed_after);
    let connects: Vec<String> = got.iter().filter(|m| m.topic == "v1/gateway/connect").map(Received::text).collect();
    assert!(connects.contains(&r#"{"device":"Thermo","type":"thermometer"}"#.to_owned()), "{connects:?}");

    // A beacon's new advertisement is sent as it changes, not at its 60 s poll.
    let changed = Instant::now();
    s.bluez.set_manufacturer_data(BEACON, vec![(0x0059, vec![0x01, 0x04])]);
    s.tb.wait_until(Duration::from_secs(10), "the beacon's new level", |r| {
        latest(r, "Beacon", "level") == Some(json!(26.0))
    });
    assert!(changed.elapsed() < Duration::from_secs(5), "the change took {:?}", changed.elapsed());

    // Reads repeat at the poll period (300 ms), with `Absent` still looked
    // for; a failing read is counted and the link kept.
    let (reads, since) = (s.bluez.reads(THERMO, BATTERY), Instant::now());
    s.bluez.set_value(THERMO, BATTERY, &[86]);
    s.tb.wait_until(Duration::from_secs(10), "the new battery level", |r| {
        latest(r, "Thermo", "battery") == Some(json!("86%"))
    });
    std::thread::sleep(Duration::from_millis(3000).saturating_sub(since.elapsed()));
    let polls = s.bluez.reads(THERMO, BATTERY) - reads;
    assert!((8..=12).contains(&polls), "{polls} reads in {:?} at a 300 ms poll period", since.elapsed());
    s.bluez.fail_reads(THERMO, BATTERY, true);
    let stats = s.tb.wait_until(Duration::from_secs(10), "read errors counted", |r| {
        statistic(r, "BLEReadErrors").and_then(|v| v.as_u64()) >= Some(2)
    });
    assert_eq!(statistic(&stats, "BLEReconnects"), Some(json!(0)));
    assert_eq!(s.bluez.connects(THERMO), 1);
    assert_eq!(statistic(&stats, "BLEDevicesConnected"), Some(json!(2)), "Thermo and Custom");
    assert_eq!(statistic(&stats, "BLEDevicesSeen"), Some(json!(3)), "Thermo, Beacon and Custom, not Absent");

    // The device with its own converter: its notifications go to it.
    s.bluez.wait(Duration::from_secs(10), "Custom subscribed", |b| b.is_notifying(CUSTOM, CLIMATE));
    assert!(s.bluez.notify(CUSTOM, CLIMATE, b"hello"));
    s.tb.wait_until(Duration::from_secs(10), "the probe's value", |r| {
        latest(r, "probe", "payload") == Some(json!("hello"))
    });
}

#[test]
fn every_notification_is_one_value_per_key_and_a_stop_disconnects() {
    let mut s = setup("count");
    for i in 0..20u8 {
        assert!(s.bluez.notify(THERMO, CLIMATE, &[i, 100 + i]));
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = s.tb.wait_until(Duration::from_secs(20), "the 20th value", |r| {
        latest(r, "Thermo", "temperature") == Some(json!("19")) && latest(r, "Thermo", "humidity") == Some(json!("119"))
    });
    let count = |key: &str| common::values(&got, "Thermo", key).len();
    assert_eq!((count("temperature"), count("humidity")), (20, 20));
    let stats = s.tb.wait_until(Duration::from_secs(10), "the notifications counted", |r| {
        statistic(r, "BLENotifications") == Some(json!(20))
    });
    assert!(statistic(&stats, "BLEAdvertisements").and_then(|v| v.as_u64()) >= Some(1), "the beacon's");
    assert!(s.gw.stop().success());
    assert!(!s.bluez.is_connected(THERMO), "the stopped gateway left its device connected");
}

#[test]
fn a_dropped_link_is_made_again_and_its_notifications_subscribed_again() {
    let mut s = setup("reconnect");
    assert!(s.bluez.notify(THERMO, CLIMATE, &[20, 40]));
    s.tb.wait_until(Duration::from_secs(20), "the first value", |r| {
        latest(r, "Thermo", "temperature") == Some(json!("20"))
    });
    // The device refuses connections for a while, then the link drops.
    s.bluez.refuse_connect(THERMO, true);
    s.bluez.drop_link(THERMO);
    s.gw.wait_for_log(Duration::from_secs(10), "the loss", |l| l.contains("lost: "));
    s.gw.wait_for_log(Duration::from_secs(10), "refused attempts", |l| l.matches("cannot connect").count() >= 2);
    let back = Instant::now();
    s.bluez.refuse_connect(THERMO, false);
    // connectRetry 2, then waitAfterConnectRetries 1 s: back within ~2 s.
    s.bluez.wait(Duration::from_secs(10), "subscribed again", |b| {
        b.connects(THERMO) == 2 && b.is_notifying(THERMO, CLIMATE)
    });
    assert!(back.elapsed() < Duration::from_secs(5), "reconnected {:?} after the device came back", back.elapsed());
    assert!(s.bluez.notify(THERMO, CLIMATE, &[22, 41]));
    let got = s.tb.wait_until(Duration::from_secs(10), "a value after the reconnect", |r| {
        latest(r, "Thermo", "temperature") == Some(json!("22"))
            && statistic(r, "BLEReconnects").and_then(|v| v.as_u64()) >= Some(1)
    });
    assert_eq!(latest(&got, "Thermo", "humidity"), Some(json!("41")));
    // The device is ThingsBoard's once: not connected again on the reconnect.
    let connects = got.iter().filter(|m| m.topic == "v1/gateway/connect" && m.text().contains("Thermo")).count();
    assert_eq!(connects, 1);
}

#[test]
fn attribute_updates_and_rpcs_read_write_and_scan_with_the_python_gateways_replies() {
    let s = setup("downlink");
    s.tb.publish("v1/gateway/attributes", json!({"device": "Thermo", "data": {"sharedName": "Kitchen"}}).to_string());
    s.bluez.wait(Duration::from_secs(10), "the attribute's write", |b| !b.writes(THERMO, NAME).is_empty());
    assert_eq!(s.bluez.writes(THERMO, NAME), vec![(b"Kitchen".to_vec(), true)]);

    assert_eq!(rpc(&s.tb, "Thermo", 1, "readName", json!({})), json!("Kitchen"));
    assert_eq!(rpc(&s.tb, "Thermo", 2, "writeName", json!("Hall")), json!("Ok"));
    assert_eq!(s.bluez.writes(THERMO, NAME).last(), Some(&(b"Hall".to_vec(), true)));
    assert_eq!(rpc(&s.tb, "Thermo", 3, "get", json!("characteristicUUID=2A19;")), json!("W"), "87 is `W` as text");
    assert_eq!(rpc(&s.tb, "Thermo", 4, "set", json!("characteristicUUID=2a00;value=Attic;")), json!("Ok"));
    assert_eq!(s.bluez.writes(THERMO, NAME).last(), Some(&(b"Attic".to_vec(), true)));
    let scan = rpc(&s.tb, "Thermo", 5, "whereAreYou", json!({}));
    assert_eq!(scan["address"], json!(THERMO), "{scan}");
    assert_eq!(scan["localName"], json!("Thermo"), "{scan}");

    // Errors are answered at once, with the reason.
    let asked = Instant::now();
    let absent = rpc(&s.tb, "Absent", 6, "get", json!("characteristicUUID=2a19;"));
    assert!(absent["error"].as_str().is_some_and(|e| e.contains("has not been seen by the scan")), "{absent}");
    assert!(asked.elapsed() < Duration::from_secs(3), "answered after {:?}", asked.elapsed());
    let unknown = rpc(&s.tb, "Thermo", 7, "explode", json!({}));
    assert!(unknown["error"].as_str().is_some_and(|e| e.contains("no serverSideRpc entry for `explode`")), "{unknown}");
    let missing = rpc(&s.tb, "Thermo", 8, "get", json!("characteristicUUID=2a01;"));
    assert!(missing["error"].as_str().is_some_and(|e| e.contains("has no characteristic 00002a01")), "{missing}");
    let beacon = rpc(&s.tb, "Beacon", 10, "whereAreYou", json!({}));
    assert_eq!(beacon["manufacturerData"], json!({"0x0059": "00fa"}), "{beacon}");
    assert_eq!(beacon["serviceData"], json!({"0000feaa-0000-1000-8000-00805f9b34fb": "01"}), "{beacon}");
    assert_eq!(s.bluez.connects(BEACON), 0, "a beacon is never connected to");
    // A device that does not answer: the device's timeout (3 s) answers.
    s.bluez.hang_reads(THERMO, NAME, true);
    let asked = Instant::now();
    let hung = rpc(&s.tb, "Thermo", 9, "readName", json!({}));
    assert!(hung["error"].as_str().is_some_and(|e| e.contains("took more than 3s")), "{hung}");
    assert!(asked.elapsed() < Duration::from_secs(5), "answered after {:?}", asked.elapsed());
}

/// The Python gateway's own sample `ble.json`, unchanged, against a device
/// with its sample's address and characteristics: uplink and downlink.
#[test]
fn the_python_gateways_sample_works_unchanged() {
    const SAMPLE: &str = "4C:65:A8:DF:85:C0";
    let sensor = "226caa55-6476-4566-7562-66734470666d";
    let bluez = FakeBluez::start();
    let c = |uuid: &str, flags: Vec<&'static str>, value: &[u8]| FakeChar {
        uuid: uuid.into(),
        flags,
        value: value.to_vec(),
    };
    bluez.add_device(&FakeDevice {
        address: SAMPLE.into(),
        name: Some("LYWSD02".into()),
        rssi: Some(-60),
        services: vec![
            ("0000fe95-0000-1000-8000-00805f9b34fb".into(), vec![c(sensor, vec!["read", "notify"], &[0, 0, 0])]),
            ("00001800-0000-1000-8000-00805f9b34fb".into(), vec![c(NAME, vec!["read", "write"], &[1, 2, 3])]),
        ],
        ..Default::default()
    });
    let tb_broker = Mosquitto::start_new();
    let tb = Collector::connect(tb_broker.port, "tb-sample", &["v1/gateway/#", "v1/devices/me/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = common::connector_yaml(tb_broker.port, "ble", "BLE", "ble.json");
    let sample = include_str!("../config/ble.json");
    let _gw = Gateway::start_with_env(
        dir.path(),
        &[("tb_gateway.yaml", &yaml), ("ble.json", sample)],
        &[("DBUS_SYSTEM_BUS_ADDRESS", bluez.address())],
    );
    bluez.wait(Duration::from_secs(20), "the sample's notify key subscribed", |b| b.is_notifying(SAMPLE, sensor));
    let device = "Temperature and humidity sensor";
    assert!(bluez.notify(SAMPLE, sensor, &[55, 0, 21]));
    let got = tb.wait_until(Duration::from_secs(20), "the sample's values", |r| {
        latest(r, device, "temperature").is_some() && latest(r, device, "name").is_some()
    });
    assert_eq!(latest(&got, device, "temperature"), Some(json!("21")));
    assert_eq!(latest(&got, device, "humidity"), Some(json!("55")));
    // Read once at the connection (its pollPeriod is 500 s).
    assert_eq!(latest(&got, device, "name"), Some(json!("12cm 3A")));
    assert_eq!(latest(&got, device, "values"), Some(json!("All values: 123")));

    tb.publish("v1/gateway/attributes", json!({"device": device, "data": {"sharedName": "Lab"}}).to_string());
    bluez.wait(Duration::from_secs(10), "sharedName written", |b| !b.writes(SAMPLE, NAME).is_empty());
    assert_eq!(bluez.writes(SAMPLE, NAME), vec![(b"Lab".to_vec(), true)]);
    assert_eq!(rpc(&tb, device, 1, "rpcMethod1", json!({})), json!("Lab"));
    assert_eq!(rpc(&tb, device, 2, "rpcMethod2", json!("Hall")), json!("Ok"));
    assert_eq!(bluez.writes(SAMPLE, NAME).last(), Some(&(b"Hall".to_vec(), true)));
    let scan = rpc(&tb, device, 3, "rpcMethod3", json!({}));
    assert_eq!((scan["address"].clone(), scan["rssi"].clone()), (json!(SAMPLE), json!(-60)), "{scan}");
}
