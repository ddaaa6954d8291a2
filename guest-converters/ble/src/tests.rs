use super::*;
use tbgw_data::{AttributeUpdate, BleCharacteristic, ManufacturerData, RpcRequest, ServiceData};

const ADDRESS: &str = "4C:65:A8:DF:85:C0";

fn sample() -> String {
    include_str!("../../../config/ble.json").to_owned()
}

fn characteristic(uuid: &str, method: &str, payload: &[u8]) -> RawUplink {
    RawUplink {
        source: Source::Characteristic(BleCharacteristic {
            address: ADDRESS.into(),
            service: "0000180a-0000-1000-8000-00805f9b34fb".into(),
            characteristic: uuid.into(),
        }),
        device: Some("Temperature and humidity sensor".into()),
        payload: payload.to_vec(),
        metadata: vec![(items::METHOD_METADATA.into(), method.into())],
        received_at: 0,
    }
}

fn values(c: &ConvertedMessage) -> Vec<(String, Value)> {
    c.updates
        .iter()
        .flat_map(|u| u.attributes.iter().chain(u.telemetry.iter().flat_map(|t| &t.values)))
        .map(|e| (e.key.as_str().to_owned(), e.value.clone()))
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// The Python gateway 3.8.5's `BytesBLEUplinkConverter` and
/// `HexBytesBLEUplinkConverter`, run on these expressions and bytes, gave
/// these values (its `[i]` in hex mode raises TypeError; here it is the byte).
#[test]
fn value_expressions_give_the_python_gateways_values() {
    let cases: &[(&str, &[u8], Format, Value)] = &[
        ("[0:2]cm [2:]A", &[1, 2, 3], Format::Bytes, text("12cm 3A")),
        ("All values: [:]", &[0x0a, 0, 0xff], Format::Bytes, text("All values: 100255")),
        ("[2]", &[1, 2, 42], Format::Bytes, text("42")),
        ("[-1]", &[1, 2, 42], Format::Bytes, text("42")),
        ("[1:]", &[1, 2, 42], Format::Bytes, text("242")),
        ("[0:2]", &[1, 2, 3], Format::Hex, Value::Int(258)),
        ("[1:3]", &[1, 2, 3], Format::Hex, Value::Int(515)),
        ("[0:]", &[1, 2], Format::Hex, Value::Int(258)),
        ("[1]", &[1, 2], Format::Hex, Value::Int(2)),
        ("[a] and [0]", &[7], Format::Bytes, text("[a] and 7")),
    ];
    for (expr, data, format, want) in cases {
        assert_eq!(ValueExpr::parse(expr).decode(*format, data).as_ref(), Ok(want), "{expr} of {data:?}");
    }
    assert_eq!(
        ValueExpr::parse("[3]").decode(Format::Bytes, &[1, 2]),
        Err("byte [3] is beyond the value's 2 bytes".to_owned())
    );
    assert_eq!(
        ValueExpr::parse("[0:9]").decode(Format::Hex, &[1; 9]),
        Err("9 bytes are more than a 64-bit number holds".to_owned())
    );
    assert_eq!(ValueExpr::parse("[0:8]").decode(Format::Hex, &[0xff; 8]), Ok(text("18446744073709551615")));
}

#[test]
fn the_samples_keys_get_their_characteristics_values_by_how_they_came() {
    let c = UplinkConverter::new(&sample()).expect("the sample loads");
    let notify = "226caa55-6476-4566-7562-66734470666d";
    let got = c.convert_message(&characteristic(notify, "notify", &[55, 0, 21])).expect("converts");
    assert_eq!(values(&got), vec![("temperature".into(), text("21")), ("humidity".into(), text("55"))]);
    assert_eq!(got.updates[0].device_type, None);
    // The read characteristic's two attributes from one read.
    let name = "00002a00-0000-1000-8000-00805f9b34fb";
    let got = c.convert_message(&characteristic(name, "read", &[1, 2, 3])).expect("converts");
    assert_eq!(values(&got), vec![("name".into(), text("12cm 3A")), ("values".into(), text("All values: 123"))]);
    // A notification of a characteristic its keys read: nothing.
    let got = c.convert_message(&characteristic(name, "notify", &[1])).expect("converts");
    assert!(got.updates.is_empty() && got.dropped.is_empty(), "{got:?}");
    // Too short for `[2]`: temperature dropped with why, humidity kept.
    let got = c.convert_message(&characteristic(notify, "notify", &[9])).expect("converts");
    assert_eq!(values(&got), vec![("humidity".into(), text("9"))]);
    assert_eq!(got.dropped[0].reason, "byte [2] is beyond the value's 1 bytes");
}

fn beacon_config() -> String {
    r#"{"devices": [{"name": "Beacon", "MACAddress": "AA:BB:CC:DD:EE:01", "deviceType": "beacon", "telemetry": [
        {"key": "first", "dataSourceType": "advertisement", "valueExpression": "[0:2]", "compute": "value / 10"},
        {"key": "apple", "dataSourceType": "advertisement", "companyId": "0x004C", "valueExpression": "[1]"},
        {"key": "eddystone", "dataSourceType": "advertisement", "advertisementData": "service", "serviceUUID": "feaa", "valueExpression": "[0:]"},
        {"key": "rssi", "dataSourceType": "advertisement", "advertisementData": "rssi"},
        {"key": "name", "dataSourceType": "advertisement", "advertisementData": "localName", "compute": "value + '!'"},
        {"key": "txPower", "dataSourceType": "advertisement", "advertisementData": "txPower"}]}]}"#
        .to_owned()
}

#[test]
fn every_part_of_an_advertisement_reaches_its_key() {
    let c = UplinkConverter::new(&beacon_config()).expect("loads");
    let adv = BleAdvertisement {
        address: "aa:bb:cc:dd:ee:01".into(),
        rssi: Some(-60),
        tx_power: None,
        local_name: Some("B1".into()),
        manufacturer_data: vec![
            ManufacturerData { company: 0x0006, data: vec![0x01, 0x02] },
            ManufacturerData { company: 0x004c, data: vec![0x02, 0x15] },
        ],
        service_data: vec![ServiceData { uuid: "0000feaa-0000-1000-8000-00805f9b34fb".into(), data: vec![0x10, 0x00] }],
        services: vec![],
    };
    let msg = RawUplink {
        source: Source::Advertisement(adv),
        device: None,
        payload: Vec::new(),
        metadata: Vec::new(),
        received_at: 0,
    };
    let got = c.convert_message(&msg).expect("converts");
    assert_eq!(got.updates[0].device, "Beacon");
    assert_eq!(got.updates[0].device_type.as_deref(), Some("beacon"));
    assert_eq!(
        values(&got),
        vec![
            ("first".into(), Value::Float(25.8)),
            ("apple".into(), Value::Int(0x15)),
            ("eddystone".into(), Value::Int(0x1000)),
            ("rssi".into(), Value::Int(-60)),
            ("name".into(), text("B1!")),
        ],
        "txPower is not in this advertisement: no value, no error"
    );
    assert!(got.dropped.is_empty(), "{:?}", got.dropped);
}

#[test]
fn compute_is_checked_when_loaded() {
    let config = r#"{"devices": [{"name": "B", "MACAddress": "AA:BB:CC:DD:EE:01", "telemetry": [
        {"key": "t", "dataSourceType": "advertisement", "compute": "__import__('os')"}]}]}"#;
    let err = UplinkConverter::new(config).expect_err("refused").to_string();
    assert!(err.starts_with("devices[0].telemetry[0].compute: `__import__('os')`"), "{err}");
    let config = r#"{"devices": [{"name": "B", "MACAddress": "AA:BB:CC:DD:EE:01", "telemetry": [
        {"key": "t", "dataSourceType": "advertisement", "compute": "data * 2"}]}]}"#;
    let err = UplinkConverter::new(config).expect_err("refused").to_string();
    assert_eq!(err, "devices[0].telemetry[0].compute: `data * 2` reads `data`; an expression here reads value");
}

fn rpc(method: &str, params: &str) -> DownlinkRequest {
    DownlinkRequest::Rpc(RpcRequest {
        device: "Temperature and humidity sensor".into(),
        id: 7,
        method: method.into(),
        params: params.into(),
    })
}

#[test]
fn the_samples_writes_and_rpcs_are_the_python_gateways() {
    let c = DownlinkConverter::new(&sample()).expect("loads");
    let name = "00002a00-0000-1000-8000-00805f9b34fb".to_owned();
    let update = DownlinkRequest::AttributeUpdate(AttributeUpdate {
        device: "Temperature and humidity sensor".into(),
        entries: vec![Entry::new("sharedName", Value::Bool(true)), Entry::new("other", Value::Int(1))],
    });
    assert_eq!(
        c.convert(&update),
        Ok(vec![DownlinkMessage::Ble(BleRequest::Write {
            characteristic: name.clone(),
            payload: b"True".to_vec(),
            with_response: true
        })])
    );
    assert_eq!(c.convert(&rpc("rpcMethod1", "null")), Ok(vec![DownlinkMessage::Ble(BleRequest::Read(name.clone()))]));
    assert_eq!(
        c.convert(&rpc("rpcMethod2", r#""hello""#)),
        Ok(vec![DownlinkMessage::Ble(BleRequest::Write {
            characteristic: name.clone(),
            payload: b"hello".to_vec(),
            with_response: true
        })])
    );
    assert_eq!(c.convert(&rpc("rpcMethod3", "{}")), Ok(vec![DownlinkMessage::Ble(BleRequest::Scan)]));
    assert_eq!(
        c.convert(&rpc("get", r#""characteristicUUID=2A00;""#)),
        Ok(vec![DownlinkMessage::Ble(BleRequest::Read(name.clone()))])
    );
    assert_eq!(
        c.convert(&rpc("set", "characteristicUUID=2a00;value=abc;")),
        Ok(vec![DownlinkMessage::Ble(BleRequest::Write {
            characteristic: name,
            payload: b"abc".to_vec(),
            with_response: true
        })])
    );
    assert_eq!(
        c.convert(&rpc("nope", "{}")),
        Err("`Temperature and humidity sensor` has no serverSideRpc entry for `nope`".to_owned())
    );
    assert_eq!(
        c.convert(&rpc("set", "value=abc;")),
        Err("`set` needs characteristicUUID=<uuid>; in its params".into())
    );
}

#[test]
fn replies_are_the_read_value_ok_or_the_advertisement() {
    let c = DownlinkConverter::new(&sample()).expect("loads");
    let request = RpcRequest { device: "D".into(), id: 1, method: "rpcMethod1".into(), params: "{}".into() };
    let answer = |answers| RpcAnswer { request: request.clone(), answers };
    assert_eq!(c.reply(&answer(vec![])), Ok(r#""Ok""#.to_owned()));
    let read = characteristic("00002a00-0000-1000-8000-00805f9b34fb", "read", b"Thermo");
    assert_eq!(c.reply(&answer(vec![read])), Ok(r#""Thermo""#.to_owned()));
    let binary = characteristic("00002a00-0000-1000-8000-00805f9b34fb", "read", &[0xff, 0x01]);
    assert_eq!(c.reply(&answer(vec![binary])), Ok(r#""ff01""#.to_owned()));
    let adv = BleAdvertisement {
        address: ADDRESS.into(),
        rssi: Some(-50),
        manufacturer_data: vec![ManufacturerData { company: 0x4c, data: vec![1] }],
        ..Default::default()
    };
    let scan = RawUplink {
        source: Source::Advertisement(adv),
        device: None,
        payload: vec![],
        metadata: vec![],
        received_at: 0,
    };
    let reply: Json = serde_json::from_str(&c.reply(&answer(vec![scan])).expect("replies")).expect("JSON");
    assert_eq!(
        reply,
        serde_json::json!({"address": "4C:65:A8:DF:85:C0", "rssi": -50, "txPower": null, "localName": null,
                           "manufacturerData": {"0x004c": "01"}, "serviceData": {}, "services": []})
    );
}

#[test]
fn typed_readings_are_little_endian_by_default_and_scaled() {
    let config = r#"{"devices": [{"name": "S", "MACAddress": "AA:BB:CC:DD:EE:01", "telemetry": [
        {"key": "t", "method": "notify", "characteristicUUID": "2a6e", "valueExpression": "[0:2]", "valueType": "int16", "scale": 0.01},
        {"key": "p", "method": "notify", "characteristicUUID": "2a6e", "valueExpression": "[2:6]", "valueType": "uint32", "byteOrder": "big"},
        {"key": "f", "method": "notify", "characteristicUUID": "2a6e", "valueExpression": "[6:10]", "valueType": "float32"},
        {"key": "b", "method": "notify", "characteristicUUID": "2a6e", "valueExpression": "[10]", "valueType": "int8"}]}]}"#;
    let c = UplinkConverter::new(config).expect("loads");
    let mut data = vec![0x0c, 0xfe, 0x00, 0x01, 0x86, 0xa0];
    data.extend_from_slice(&21.5f32.to_le_bytes());
    data.push(0xff);
    let mut msg = characteristic("00002a6e-0000-1000-8000-00805f9b34fb", "notify", &data);
    msg.device = Some("S".into());
    let got = c.convert_message(&msg).expect("converts");
    let v = values(&got);
    assert_eq!(v[0].0, "t");
    assert!(matches!(v[0].1, Value::Float(x) if (x - -5.0).abs() < 1e-9), "0xfe0c = -500 × 0.01: {v:?}");
    assert_eq!(
        v[1..],
        [("p".into(), Value::Int(100_000)), ("f".into(), Value::Float(21.5)), ("b".into(), Value::Int(-1))]
    );
    msg.payload.truncate(3);
    let got = c.convert_message(&msg).expect("converts");
    assert_eq!(got.dropped[0].key, "p");
    assert_eq!(
        got.dropped[0].reason,
        "1 bytes to read as uint32, which takes 4 (select them with valueExpression, e.g. `[0:4]`)"
    );
    let bad = r#"{"devices": [{"name": "S", "MACAddress": "AA:BB:CC:DD:EE:01", "telemetry": [
        {"key": "t", "method": "notify", "characteristicUUID": "2a6e", "valueType": "int24"}]}]}"#;
    assert_eq!(
        UplinkConverter::new(bad).expect_err("refused").to_string(),
        "devices[0].telemetry[0].valueType: `int24`: expected one of int8, uint8, int16, uint16, int32, uint32, int64, uint64, float32, float64"
    );
}

/// `cases/python.json`: valueExpressions (and computes) over byte strings
/// as the installed thingsboard-gateway 3.8.5's converters read them
/// (`cases/generate.py`). tbgw gives the same value for every one, and
/// drops the key where the Python gateway's converter raised.
#[test]
fn every_case_gives_the_python_gateways_value() {
    let cases: Vec<Json> = serde_json::from_str(include_str!("../cases/python.json")).expect("cases");
    assert!(cases.len() > 500);
    for case in &cases {
        let mut key = serde_json::json!({"key": "k", "method": "notify", "characteristicUUID": "2a6e",
                                         "valueExpression": case["valueExpression"]});
        if let Some(c) = case["compute"].as_str() {
            key["compute"] = Json::String(c.to_owned());
        }
        let config = serde_json::json!({"devices": [{"name": "D", "MACAddress": "AA:BB:CC:DD:EE:01",
                                                      "type": case["type"], "telemetry": [key]}]});
        let c = UplinkConverter::new(&config.to_string()).expect("loads");
        let hex = case["data"].as_str().expect("data");
        let data: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
        let mut msg = characteristic("00002a6e-0000-1000-8000-00805f9b34fb", "notify", &data);
        msg.device = Some("D".into());
        let got = c.convert_message(&msg).expect("converts");
        let ours = values(&got).into_iter().next().map(|(_, v)| v);
        let want = match &case["value"] {
            Json::Null => None,
            Json::String(s) => Some(Value::Text(s.clone())),
            Json::Number(n) => Some(match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(u)) => Value::Text(u.to_string()),
                _ => Value::Float(n.as_f64().expect("a number")),
            }),
            other => panic!("unexpected value {other} in {case}"),
        };
        assert_eq!(ours, want, "{case}");
    }
}
