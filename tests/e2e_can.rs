//! End to end with the real `tbgw` process on a CAN bus: the bus is a
//! socketcand hub on 127.0.0.1 (this machine's kernel has no CAN), python-can
//! (its `socketcand` interface, in a venv of its own) is the device on it,
//! and ThingsBoard's side a mosquitto broker with its default settings.
//! Values are checked as ThingsBoard receives them, frames as python-can
//! receives them.

#[path = "e2e_common/mod.rs"]
mod common;

use common::{Gateway, latest, rpc, statistic};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tbgw_test_support::socketcand::{CanPeer, Hub};
use tbgw_test_support::{Collector, Mosquitto, Received};

/// The Python gateway's sample `can.json` over socketcand, with its
/// broken `sendSameData` hex fixed, a poll faster than a second, and a
/// standard frame with the number of `rpm`'s extended one.
fn can_json(port: u16, reconnect_period: f64) -> Value {
    json!({
        "interface": "socketcand", "host": "127.0.0.1", "port": port, "channel": "can0",
        "reconnectPeriod": reconnect_period,
        "devices": [{
            "name": "Car", "type": "car", "sendDataOnlyOnChange": false, "enableUnknownRpc": false, "strictEval": false,
            "attributes": [{
                "key": "isDriverDoorOpened", "nodeId": 41, "command": "2:2:big:8717", "value": "4:1:int",
                "expression": "bool(value & 0b00000100)",
                "polling": {"type": "once", "dataInHex": "AB CD AB CD"}
            }],
            "timeseries": [
                {"key": "rpm", "nodeId": 1918, "isExtendedId": true, "command": "2:2:big:48059", "value": "4:2:big:int",
                 "expression": "value / 4", "polling": {"type": "always", "period": 0.2, "dataInHex": "aaaa bbbb aaaa bbbb"}},
                {"key": "milliage", "nodeId": 1918, "isExtendedId": true, "value": "4:2:little:int", "expression": "value * 10"},
                {"key": "standardTwin", "nodeId": 1918, "value": "0:2:big:int:signed"}
            ],
            "attributeUpdates": [
                {"attributeOnThingsBoard": "softwareVersion", "nodeId": 64, "isExtendedId": true, "dataLength": 4,
                 "dataExpression": "value + 5", "dataByteorder": "little"}
            ],
            "serverSideRpc": [
                {"method": "sendSameData", "nodeId": 4, "isExtendedId": true, "isFd": true, "bitrateSwitch": true,
                 "dataInHex": "aa bb cc dd ee ff aa bb"},
                {"method": "setLightLevel", "nodeId": 5, "dataLength": 2, "dataByteorder": "little", "dataBefore": "00AA",
                 "response": true},
                {"method": "setSpeed", "nodeId": 16, "dataAfter": "0102",
                 "dataExpression": "userSpeed if maxAllowedSpeed > userSpeed else maxAllowedSpeed"}
            ]
        }]
    })
}

struct Setup {
    tb: Collector,
    gw: Gateway,
    hub: Hub,
    peer: CanPeer,
    _keep: (Mosquitto, tempfile::TempDir),
}

fn setup(name: &str, reconnect_period: f64) -> Setup {
    let hub = Hub::start();
    let peer = CanPeer::connect(hub.port);
    // Frames reach a client a moment after it has joined: the peer must be
    // on the bus before the gateway's first polls.
    hub.wait_joined(1, Duration::from_secs(10));
    let tb_broker = Mosquitto::start_new();
    let tb = Collector::connect(tb_broker.port, &format!("tb-{name}"), &["v1/gateway/#", "v1/devices/me/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = common::connector_yaml(tb_broker.port, "can", "CAN", "can.json");
    let config = can_json(hub.port, reconnect_period).to_string();
    let gw = Gateway::start_with(dir.path(), &[("tb_gateway.yaml", &yaml), ("can.json", &config)]);
    hub.wait_joined(2, Duration::from_secs(20));
    Setup { tb, gw, hub, peer, _keep: (tb_broker, dir) }
}

/// The frames tbgw (the hub's client that is not the peer) sent.
fn from_tbgw(hub: &Hub, peer_client: usize) -> Vec<(u32, bool, Vec<u8>, Instant)> {
    hub.frames().into_iter().filter(|f| f.client != peer_client).map(|f| (f.id, f.extended, f.data, f.at)).collect()
}

#[test]
fn frames_from_python_can_arrive_decoded_routed_by_id_kind_and_command() {
    let mut s = setup("uplink", 30.0);
    // rpm and milliage share extended id 1918; 0x0FA0 = 4000 → rpm 1000.0; milliage reads 0xA00F little-endian.
    s.peer.send(1918, true, &[0, 0, 0xBB, 0xBB, 0x0F, 0xA0, 0, 0]);
    // The standard frame with the same number: only standardTwin.
    s.peer.send(1918, false, &[0xFF, 0x38]);
    // Door: command 8717 = 0x220D, bit 2 of byte 4 set.
    s.peer.send(41, false, &[0, 0, 0x22, 0x0D, 0x0C]);
    let got = s.tb.wait_until(Duration::from_secs(30), "the car's values", |r| {
        latest(r, "Car", "rpm").is_some()
            && latest(r, "Car", "standardTwin").is_some()
            && latest(r, "Car", "isDriverDoorOpened").is_some()
    });
    assert_eq!(latest(&got, "Car", "rpm"), Some(json!(1000.0)));
    assert_eq!(latest(&got, "Car", "milliage"), Some(json!(0xA00F * 10)));
    assert_eq!(latest(&got, "Car", "standardTwin"), Some(json!(-200)));
    assert_eq!(latest(&got, "Car", "isDriverDoorOpened"), Some(json!(true)));
    let connect = got.iter().find(|m| m.topic == "v1/gateway/connect").map(Received::text);
    assert_eq!(connect.as_deref(), Some(r#"{"device":"Car","type":"car"}"#));

    // Another command on rpm's id: milliage only; on the door's id: nothing.
    s.peer.send(1918, true, &[0, 0, 0xBB, 0xBC, 0x01, 0x00, 0, 0]);
    s.peer.send(41, false, &[0, 0, 0x22, 0x0E, 0x00]);
    let got =
        s.tb.wait_until(Duration::from_secs(10), "milliage 10", |r| latest(r, "Car", "milliage") == Some(json!(10)));
    assert_eq!(latest(&got, "Car", "rpm"), Some(json!(1000.0)), "rpm kept its value");
    assert_eq!(latest(&got, "Car", "isDriverDoorOpened"), Some(json!(true)));
    // Five frames received, four converted: the door's other command matched no item.
    let stats = s.tb.wait_until(Duration::from_secs(10), "the statistics", |r| {
        statistic(r, "CANEventsProduced") == Some(json!(5)) && statistic(r, "CANMessagesConverted") == Some(json!(4))
    });
    assert_eq!(statistic(&stats, "CANConnected"), Some(json!(true)));
}

#[test]
fn polls_once_exactly_once_and_always_at_their_period() {
    let s = setup("polls", 30.0);
    let peer_client = 0;
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(2100));
    let frames = from_tbgw(&s.hub, peer_client);
    let door: Vec<_> = frames.iter().filter(|f| f.0 == 41).collect();
    assert_eq!(door.len(), 1, "the `once` poll, once: {frames:?}");
    assert_eq!(door[0].2, [0xAB, 0xCD, 0xAB, 0xCD]);
    assert!(!door[0].1, "a standard frame");
    let rpm: Vec<_> = frames.iter().filter(|f| f.0 == 1918).collect();
    assert!(rpm.iter().all(|f| f.1 && f.2 == [0xAA, 0xAA, 0xBB, 0xBB, 0xAA, 0xAA, 0xBB, 0xBB]), "{rpm:?}");
    // Every 200 ms for about two seconds: 10 or 11 (the first at connection).
    assert!((9..=12).contains(&rpm.len()), "{} rpm polls in {:?}", rpm.len(), started.elapsed());
    let gaps: Vec<u128> = rpm.windows(2).map(|w| w[1].3.duration_since(w[0].3).as_millis()).collect();
    assert!(gaps.iter().all(|g| (120..=320).contains(g)), "gaps between polls (ms): {gaps:?}");
    // The python-can peer received them as frames on the bus.
    let got = s.peer.wait_for(Duration::from_secs(5), "the polls at the peer", |f| f.iter().any(|f| f.id == 41));
    assert_eq!(got.iter().filter(|f| f.id == 41).count(), 1);
    assert!(s.gw.log().contains("connected to socketcand can0"), "{}", s.gw.log());
}

#[test]
fn rpcs_and_attribute_updates_become_frames_at_the_peer() {
    let s = setup("downlink", 30.0);
    let at_peer = |id: u32| move |f: &[tbgw_test_support::socketcand::PeerFrame]| f.iter().any(|f| f.id == id);
    assert_eq!(rpc(&s.tb, "Car", 1, "setLightLevel", json!({"value": 513})), json!({"success": true}));
    let got = s.peer.wait_for(Duration::from_secs(10), "setLightLevel's frame", at_peer(5));
    let f = got.iter().find(|f| f.id == 5).expect("frame 5");
    assert_eq!((f.extended, f.data.as_slice()), (false, &[0x00, 0xAA, 0x01, 0x02][..]));

    assert_eq!(
        rpc(&s.tb, "Car", 2, "setSpeed", json!({"userSpeed": 90, "maxAllowedSpeed": 80})),
        json!({"success": true})
    );
    let got = s.peer.wait_for(Duration::from_secs(10), "setSpeed's frame", at_peer(16));
    assert_eq!(got.iter().find(|f| f.id == 16).map(|f| f.data.clone()), Some(vec![80, 0x01, 0x02]));

    // The reserved `set`: the frame in the params.
    let set = rpc(&s.tb, "Car", 3, "set", json!("nodeId=291;isExtendedId=true;dataInHex=0102;"));
    assert_eq!(set, json!({"result": {"success": true}}));
    let got = s.peer.wait_for(Duration::from_secs(10), "set's frame", at_peer(291));
    assert_eq!(got.iter().find(|f| f.id == 291).map(|f| (f.extended, f.data.clone())), Some((true, vec![1, 2])));

    // Errors are answered with the reason.
    let unknown = rpc(&s.tb, "Car", 4, "explode", json!({}));
    assert!(unknown["error"].as_str().is_some_and(|e| e.contains("no serverSideRpc entry for `explode`")), "{unknown}");
    let fd = rpc(&s.tb, "Car", 5, "sendSameData", json!({}));
    assert!(fd["error"].as_str().is_some_and(|e| e.contains("socketcand carries classic CAN frames only")), "{fd}");
    let bad = rpc(&s.tb, "Car", 6, "setLightLevel", json!({"value": 70000}));
    assert!(bad["error"].as_str().is_some_and(|e| e.contains("does not fit in 2 byte(s)")), "{bad}");

    // An attribute update: value + 5 in 4 bytes, little-endian, extended id 64.
    s.tb.publish("v1/gateway/attributes", json!({"device": "Car", "data": {"softwareVersion": 0x0102}}).to_string());
    let got = s.peer.wait_for(Duration::from_secs(10), "softwareVersion's frame", at_peer(64));
    assert_eq!(got.iter().find(|f| f.id == 64).map(|f| (f.extended, f.data.clone())), Some((true, vec![7, 1, 0, 0])));
}

#[test]
fn a_restarted_hub_is_reconnected_and_bus_errors_are_counted() {
    let mut s = setup("reconnect", 0.5);
    s.peer.send(1918, false, &[0, 1]);
    s.tb.wait_until(Duration::from_secs(30), "the first value", |r| latest(r, "Car", "standardTwin") == Some(json!(1)));
    // Error frames: counted, logged once for the same error.
    for _ in 0..3 {
        s.hub.inject_error(0x04);
    }
    let stats = s
        .tb
        .wait_until(Duration::from_secs(10), "bus errors counted", |r| statistic(r, "CANBusErrors") == Some(json!(3)));
    assert_eq!(statistic(&stats, "CANReconnects"), Some(json!(0)));
    s.gw.wait_for_log(Duration::from_secs(5), "the bus error logged", |l| l.contains("bus error"));
    assert_eq!(s.gw.log().matches("bus error:").count(), 1, "{}", s.gw.log());

    // The hub goes away and comes back on its port; python-can does not
    // notice a closed connection, so its peer is started again too.
    let port = s.hub.port;
    s.hub.stop();
    s.gw.wait_for_log(Duration::from_secs(10), "the loss", |l| l.contains("lost socketcand can0"));
    std::thread::sleep(Duration::from_millis(1200));
    let down = Instant::now();
    s.hub = Hub::start_on(port);
    s.peer = CanPeer::connect(port);
    s.hub.wait_joined(2, Duration::from_secs(10));
    let back = down.elapsed();
    assert!(back < Duration::from_secs(5), "reconnected {back:?} after the hub came back (reconnectPeriod 0.5 s)");
    // The `once` poll goes out again on the new connection, and frames flow.
    s.hub.wait_frames(Duration::from_secs(5), "the once poll again", |f| f.iter().any(|f| f.id == 41));
    s.peer.send(1918, false, &[0, 2]);
    let got = s.tb.wait_until(Duration::from_secs(20), "a value after the restart", |r| {
        latest(r, "Car", "standardTwin") == Some(json!(2))
            && statistic(r, "CANReconnects").and_then(|v| v.as_u64()) >= Some(1)
    });
    assert_eq!(statistic(&got, "CANConnected"), Some(json!(true)));

    // Bus-off: the bus is opened again.
    let accepted = s.hub.accepted();
    s.hub.inject_error(0x40);
    s.gw.wait_for_log(Duration::from_secs(10), "bus-off", |l| l.contains("bus-off"));
    let end = Instant::now() + Duration::from_secs(10);
    while s.hub.accepted() == accepted {
        assert!(Instant::now() < end, "no new connection after bus-off");
        std::thread::sleep(Duration::from_millis(20));
    }
}
