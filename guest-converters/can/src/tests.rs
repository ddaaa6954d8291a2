use super::*;
use serde_json::json;
use tbgw_data::{AttributeUpdate, RpcRequest};

fn frame(id: u32, extended: bool) -> CanFrame {
    CanFrame { id, extended, ..CanFrame::default() }
}

fn hex(text: &str) -> Vec<u8> {
    items::hex_bytes("test", text).expect("hex")
}

fn one_value(out: &ConvertedMessage) -> Option<Value> {
    out.updates.first().and_then(|u| u.telemetry.first()).and_then(|t| t.values.first()).map(|e| e.value.clone())
}

#[test]
fn every_spec_decodes_as_the_python_gateway_does() {
    let mut checked = 0;
    for line in include_str!("../cases/python.json").lines() {
        let case: Json = serde_json::from_str(line).expect("a case");
        let mut entry = json!({"key": "k", "nodeId": 1, "value": case["value"]});
        if let Some(e) = case.get("expression") {
            entry["expression"] = e.clone();
        }
        let config = json!({"devices": [{"name": "D", "type": "t", "timeseries": [entry]}]});
        let conv = UplinkConverter::new(&config.to_string()).unwrap_or_else(|e| panic!("{line}: {e:?}"));
        let out = conv.convert(&frame(1, false), None, &hex(case["frame"].as_str().expect("frame"))).expect("converts");
        let got = one_value(&out);
        let want = match case["result"].as_object().and_then(|o| o.iter().next()) {
            Some((k, v)) if k == "bool" => Some(Value::Bool(v.as_bool().expect("bool"))),
            Some((k, v)) if k == "int" => Some(Value::Int(v.as_i64().expect("int"))),
            Some((k, v)) if k == "float" => Some(Value::Float(v.as_str().and_then(|t| t.parse().ok()).expect("float"))),
            Some((k, v)) if k == "str" => Some(Value::Text(v.as_str().expect("str").to_owned())),
            _ => None,
        };
        assert_eq!(got, want, "{line}\ndropped: {:?}", out.dropped);
        if want.is_none() {
            assert_eq!(out.dropped.len(), 1, "{line}: a dropped value says why");
        }
        checked += 1;
    }
    assert_eq!(checked, 282, "every line of cases/python.json");
}

fn sample() -> Json {
    serde_json::from_str(include_str!("../../../connectors/can-items/src/python-sample.json")).expect("sample")
}

#[test]
fn the_samples_keys_arrive_from_their_frames() {
    let conv = UplinkConverter::new(&sample().to_string()).expect("the sample's uplink");
    // rpm: command 0xBBBB at bytes 2..4, value bytes 4..6 big / 4; milliage: bytes 4..6 little * 10.
    let out = conv.convert(&frame(1918, true), None, &hex("0000BBBB0FA00000")).expect("converts");
    assert_eq!(out.updates.len(), 1);
    let u = &out.updates[0];
    assert_eq!(u.device, "Car");
    let values: Vec<(&str, &Value)> = u.telemetry[0].values.iter().map(|e| (e.key.as_str(), &e.value)).collect();
    assert_eq!(values, [("milliage", &Value::Int(0xA00F * 10)), ("rpm", &Value::Float(1000.0))]);
    let door = conv.convert(&frame(41, false), None, &hex("0000220D04")).expect("converts");
    assert_eq!(door.updates[0].attributes, [Entry::new("isDriverDoorOpened", Value::Bool(true))]);
    // Another command on the id, a standard frame with rpm's number, a short frame.
    assert!(conv.convert(&frame(41, false), None, &hex("0000220E04")).expect("converts").updates.is_empty());
    assert!(conv.convert(&frame(1918, false), None, &hex("0000BBBB0FA00000")).expect("converts").updates.is_empty());
    let short = conv.convert(&frame(1918, true), None, &hex("0000BBBB0F")).expect("converts");
    assert!(short.updates.is_empty());
    assert_eq!(
        short.dropped.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(),
        ["the frame has 5 bytes; the value is bytes 4..6", "the frame has 5 bytes; the value is bytes 4..6"]
    );
}

#[test]
fn expressions_that_could_escape_are_refused_when_loaded() {
    for (expression, want) in [
        ("__import__('os').system('id')", "attribute access"),
        ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
        ("open('/etc/passwd')", "`open` is not a function here"),
        ("value + other", "reads `other`; an expression here reads value and can_data"),
        ("exec('1')", "`exec` is not a function here"),
    ] {
        let config = json!({"devices": [{"name": "D", "timeseries": [
            {"key": "k", "nodeId": 1, "value": "0:1:int", "expression": expression}]}]});
        let e = UplinkConverter::new(&config.to_string()).expect_err(expression);
        assert_eq!(e.field.as_deref(), Some("devices[0].timeseries[0].expression"), "{expression}");
        assert!(e.message.contains(want), "{expression}: {}", e.message);
    }
}

fn rpc(method: &str, params: Json) -> DownlinkRequest {
    DownlinkRequest::Rpc(RpcRequest { device: "Car".into(), id: 1, method: method.into(), params: params.to_string() })
}

/// A frame as the tests compare it: id, extended, FD, BRS, data in hex.
type Sent = (u32, bool, bool, bool, String);

fn sends(conv: &DownlinkConverter, request: &DownlinkRequest) -> Result<Vec<Sent>, String> {
    Ok(conv
        .convert(request)?
        .into_iter()
        .map(|m| match m {
            DownlinkMessage::Can(s) => {
                (s.frame.id, s.frame.extended, s.frame.fd, s.frame.brs, tbgw_data::hex(&s.payload))
            }
            other => panic!("not a CAN message: {other:?}"),
        })
        .collect())
}

#[test]
fn the_samples_rpcs_and_attribute_updates_make_the_python_gateways_frames() {
    // The sample's `sendSameData` hex has a lone digit (`cc d ee`): the Python
    // gateway fails that RPC at every call; tbgw refuses the file, naming it.
    let e = DownlinkConverter::new(&sample().to_string()).expect_err("a lone hex digit");
    assert_eq!(e.field.as_deref(), Some("devices[0].serverSideRpc[0].dataInHex"));
    assert_eq!(e.message, "hex digit `d` at position 36 is not one of a pair (bytes are two digits)");
    let mut fixed = sample();
    fixed["devices"][0]["serverSideRpc"][0]["dataInHex"] = json!("aa bb cc dd ee ff    aa bb aa bb cc dd ee ff");
    let conv = DownlinkConverter::new(&fixed.to_string()).expect("the fixed sample");
    assert_eq!(
        sends(&conv, &rpc("sendSameData", json!({}))),
        Ok(vec![(4, true, true, true, "aabbccddeeffaabbaabbccddeeff".into())])
    );
    // setLightLevel: dataBefore 00AA, then the value in 2 bytes, little-endian.
    assert_eq!(
        sends(&conv, &rpc("setLightLevel", json!({"value": 513}))),
        Ok(vec![(5, false, false, false, "00aa0102".into())])
    );
    // A bare number as the params is the value (the Python gateway refuses any params but an object).
    assert_eq!(sends(&conv, &rpc("setLightLevel", json!(7))), Ok(vec![(5, false, false, false, "00aa0700".into())]));
    // setSpeed: a dataExpression of the params, then dataAfter.
    let speed =
        |user: i64, max: i64| sends(&conv, &rpc("setSpeed", json!({"userSpeed": user, "maxAllowedSpeed": max})));
    assert_eq!(speed(50, 80), Ok(vec![(16, false, false, false, "320102".into())]));
    assert_eq!(speed(90, 80), Ok(vec![(16, false, false, false, "500102".into())]));
    assert_eq!(
        sends(&conv, &rpc("setSpeed", json!({"userSpeed": 50}))),
        Err("dataExpression: name 'maxAllowedSpeed' is not defined".into())
    );
    // softwareVersion: value + 5, 4 bytes little-endian, extended id 64.
    let update = DownlinkRequest::AttributeUpdate(AttributeUpdate {
        device: "Car".into(),
        entries: vec![Entry::new("softwareVersion", Value::Int(0x0102))],
    });
    assert_eq!(sends(&conv, &update), Ok(vec![(64, true, false, false, "07010000".into())]));
    // The sample enables unknown RPCs: the params are the entry.
    assert_eq!(
        sends(&conv, &rpc("anything", json!({"nodeId": 100, "dataInHex": "dead beef"}))),
        Ok(vec![(100, false, false, false, "deadbeef".into())])
    );
    assert_eq!(sends(&conv, &rpc("anything", json!({"value": 1}))), Err("params.nodeId: required".into()));
    // ... and override configured ones (overrideRpcConfig follows enableUnknownRpc).
    assert_eq!(
        sends(&conv, &rpc("setLightLevel", json!({"value": 1, "dataLength": 1, "nodeId": 6}))),
        Ok(vec![(6, false, false, false, "00aa01".into())])
    );
    // The reserved `set`.
    assert_eq!(
        sends(&conv, &rpc("set", json!("nodeId=291;isExtendedId=true;dataInHex=0102;"))),
        Ok(vec![(291, true, false, false, "0102".into())])
    );
    let reply = |method: &str| {
        conv.reply(&RpcAnswer {
            request: RpcRequest { device: "Car".into(), id: 1, method: method.into(), params: "{}".into() },
            answers: vec![],
        })
    };
    assert_eq!(reply("set"), Ok(r#"{"result":{"success":true}}"#.into()));
    assert_eq!(reply("setSpeed"), Ok(r#"{"success":true}"#.into()));
}

#[test]
fn values_that_do_not_fit_their_frame_are_refused_with_the_reason() {
    let config = json!({"devices": [{"name": "Car", "serverSideRpc": [
        {"method": "byte", "nodeId": 1, "dataLength": 1},
        {"method": "signed", "nodeId": 1, "dataLength": 2, "dataSigned": true},
        {"method": "text", "nodeId": 1},
        {"method": "float", "nodeId": 1, "dataByteorder": "little"},
        {"method": "fd", "nodeId": 1, "isFd": true, "dataBefore": "00112233445566778899"},
    ]}]});
    let conv = DownlinkConverter::new(&config.to_string()).expect("config");
    let one = |m: &str, v: Json| sends(&conv, &rpc(m, v)).map(|s| s[0].4.clone());
    assert_eq!(one("byte", json!(255)), Ok("ff".into()));
    assert_eq!(one("byte", json!(256)), Err("256 does not fit in 1 byte(s), unsigned (dataLength)".into()));
    assert_eq!(one("byte", json!(-1)), Ok("ff".into()), "negative values are written signed, as in Python");
    assert_eq!(one("byte", json!(-129)), Err("-129 does not fit in 1 byte(s), signed (dataLength)".into()));
    assert_eq!(one("signed", json!(-2)), Ok("fffe".into()));
    assert_eq!(one("byte", json!(true)), Ok("01".into()));
    assert_eq!(one("text", json!("OK")), Ok("4f4b".into()));
    assert_eq!(one("text", json!("é")), Err("`é` cannot be written in ASCII".into()));
    assert_eq!(
        one("text", json!("123456789")),
        Err("9 bytes do not fit a classic CAN frame (at most 8; CAN FD needs `isFd: true`)".into())
    );
    assert_eq!(one("float", json!(1.5)), Ok("0000c03f".into()));
    assert_eq!(one("fd", json!(1)), Ok("0011223344556677889901".into()));
    assert_eq!(one("fd", json!("x".repeat(55))), Err("65 bytes do not fit a CAN FD frame (at most 64)".into()));
    assert_eq!(
        sends(&conv, &rpc("other", json!(1))),
        Err("`Car` has no serverSideRpc entry for `other` (and enableUnknownRpc is off)".into())
    );
}
