use super::*;

/// A request as `fc/address/count`.
fn target(m: &ModbusRequest) -> String {
    format!("{}/{}/{}", m.function_code, m.address, m.count)
}
use codec::{decode_bits, decode_registers, encode_registers};

fn fmt(t: &str, objects: u16, bo: Order, wo: Order) -> Format {
    Format {
        data_type: DataType::parse(t, objects).unwrap(),
        objects,
        byte_order: bo,
        word_order: wo,
        bit: None,
        bits_as_bool: true,
        divider: None,
        multiplier: None,
        round: 6,
    }
}

const BB: (Order, Order) = (Order::Big, Order::Big);
const BL: (Order, Order) = (Order::Big, Order::Little);
const LB: (Order, Order) = (Order::Little, Order::Big);
const LL: (Order, Order) = (Order::Little, Order::Little);

/// (type, objectsCount, orders, bytes on the wire, value): written out by
/// hand from the registers a device holds, not computed.
#[allow(clippy::type_complexity)]
fn cases() -> Vec<(&'static str, u16, (Order, Order), Vec<u8>, Decoded)> {
    use Decoded::*;
    vec![
        ("16int", 1, BB, vec![0xff, 0x38], Int(-200)),
        ("16int", 1, LB, vec![0x38, 0xff], Int(-200)),
        ("16uint", 1, BB, vec![0xff, 0x38], Int(65336)),
        ("8int", 1, BB, vec![0x80, 0x00], Int(-128)),
        ("8uint", 1, BB, vec![0xfe, 0x00], Int(254)),
        ("8uint", 1, LB, vec![0x00, 0xfe], Int(254)),
        // 0x12345678 in two registers, every order.
        ("32int", 2, BB, vec![0x12, 0x34, 0x56, 0x78], Int(0x1234_5678)),
        ("32int", 2, BL, vec![0x56, 0x78, 0x12, 0x34], Int(0x1234_5678)),
        ("32int", 2, LB, vec![0x34, 0x12, 0x78, 0x56], Int(0x1234_5678)),
        ("32int", 2, LL, vec![0x78, 0x56, 0x34, 0x12], Int(0x1234_5678)),
        ("32int", 2, BB, vec![0xff, 0xff, 0xff, 0xfe], Int(-2)),
        ("32uint", 2, BB, vec![0xff, 0xff, 0xff, 0xfe], Int(4_294_967_294)),
        ("int", 2, BB, vec![0xff, 0xff, 0xff, 0xfe], Int(-2)),
        ("uint", 1, BB, vec![0x01, 0x00], Int(256)),
        // 1.5f32 = 0x3FC00000.
        ("32float", 2, BB, vec![0x3f, 0xc0, 0x00, 0x00], Float(1.5)),
        ("32float", 2, BL, vec![0x00, 0x00, 0x3f, 0xc0], Float(1.5)),
        ("32float", 2, LB, vec![0xc0, 0x3f, 0x00, 0x00], Float(1.5)),
        ("32float", 2, LL, vec![0x00, 0x00, 0xc0, 0x3f], Float(1.5)),
        ("float", 2, BB, vec![0x3f, 0xc0, 0x00, 0x00], Float(1.5)),
        // -2.5f64 = 0xC004000000000000.
        ("64float", 4, BB, vec![0xc0, 0x04, 0, 0, 0, 0, 0, 0], Float(-2.5)),
        ("64float", 4, BL, vec![0, 0, 0, 0, 0, 0, 0xc0, 0x04], Float(-2.5)),
        ("64float", 4, LL, vec![0, 0, 0, 0, 0, 0, 0x04, 0xc0], Float(-2.5)),
        ("double", 4, BB, vec![0xc0, 0x04, 0, 0, 0, 0, 0, 0], Float(-2.5)),
        ("64int", 4, BB, vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x9c], Int(-100)),
        ("64int", 4, BL, vec![0xff, 0x9c, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Int(-100)),
        ("64uint", 4, BB, vec![0, 0, 0, 1, 0, 0, 0, 0], Int(1 << 32)),
        ("64uint", 4, BB, vec![0xff; 8], Float(u64::MAX as f64)),
        // 16-bit floats: 0x3E00 = 1.5, 0xC000 = -2.
        ("16float", 1, BB, vec![0x3e, 0x00], Float(1.5)),
        ("16float", 1, LB, vec![0x00, 0xc0], Float(-2.0)),
        ("string", 3, BB, b"TB-GW\0".to_vec(), Text("TB-GW".into())),
        ("string", 2, LB, b"BTWG".to_vec(), Text("TBGW".into())),
        // Not UTF-8: the bytes in hex, as the Python gateway falls back.
        ("string", 1, BB, vec![0xff, 0x41], Text("ff41".into())),
        ("bytes", 2, BB, vec![0xde, 0xad, 0xbe, 0xef], Text("deadbeef".into())),
        ("bits", 1, BB, vec![0x00, 0x05], Bits((0..16).map(|i| i == 0 || i == 2).collect())),
    ]
}

#[test]
fn every_type_and_order_decodes() {
    for (t, n, (bo, wo), bytes, want) in cases() {
        let got = decode_registers(&bytes, &fmt(t, n, bo, wo)).unwrap_or_else(|e| panic!("{t} {bo:?}/{wo:?}: {e}"));
        assert_eq!(got, want, "{t} x{n} {bo:?}/{wo:?} from {bytes:02x?}");
    }
}

#[test]
fn every_type_and_order_encodes_back_to_the_same_bytes() {
    for (t, n, (bo, wo), bytes, want) in cases() {
        let input = match want {
            Decoded::Int(i) => Input::Int(i),
            Decoded::Float(x) if x == u64::MAX as f64 => continue, // above i64: read-only
            Decoded::Float(x) => Input::Float(x),
            // Hex (`bytes`, or a string that is not UTF-8) reads only.
            Decoded::Text(_) if t == "bytes" || std::str::from_utf8(&bytes).is_err() => continue,
            Decoded::Text(s) => Input::Text(s),
            Decoded::Bits(b) => Input::Bits(b),
            Decoded::Bool(b) => Input::Bool(b),
        };
        let got = encode_registers(&input, &fmt(t, n, bo, wo)).unwrap_or_else(|e| panic!("{t} {bo:?}/{wo:?}: {e}"));
        // (Text is padded with NULs, as the device holds it in these cases.)
        assert_eq!(got, bytes, "{t} x{n} {bo:?}/{wo:?} of {input:?}");
    }
}

#[test]
fn divider_multiplier_and_bit() {
    let mut f = fmt("16int", 1, Order::Big, Order::Big);
    f.divider = Some(10.0);
    assert_eq!(decode_registers(&[0x00, 0xd7], &f).unwrap(), Decoded::Float(21.5));
    assert_eq!(encode_registers(&Input::Float(21.5), &f).unwrap(), vec![0x00, 0xd7]);
    f.divider = None;
    f.multiplier = Some(3.0);
    assert_eq!(decode_registers(&[0x00, 0x07], &f).unwrap(), Decoded::Int(21));
    let mut b = fmt("bits", 1, Order::Big, Order::Big);
    b.bit = Some(9);
    assert_eq!(decode_registers(&[0x02, 0x00], &b).unwrap(), Decoded::Bool(true));
    b.bits_as_bool = false;
    assert_eq!(decode_registers(&[0xfd, 0xff], &b).unwrap(), Decoded::Int(0));
    assert_eq!(
        encode_registers(&Input::Int(70000), &fmt("16int", 1, Order::Big, Order::Big)).unwrap_err(),
        "70000 is out of range for a 16-bit signed integer"
    );
}

#[test]
fn coils_decode_lsb_first() {
    let bits = codec::unpack_bits(&[0b0000_0101, 0b1], 9);
    assert_eq!(bits, [true, false, true, false, false, false, false, false, true]);
    assert_eq!(codec::pack_bits(&bits), vec![0b0000_0101, 0b1]);
    assert_eq!(decode_bits(&bits[2..], &fmt("bits", 1, Order::Big, Order::Big)).unwrap(), Decoded::Bool(true));
    assert_eq!(
        decode_bits(&bits, &fmt("bits", 3, Order::Big, Order::Big)).unwrap(),
        Decoded::Bits(vec![true, false, true])
    );
}

const SLAVE: &str = r#"{
  "host": "127.0.0.1", "port": 5021, "type": "tcp", "method": "socket", "unitId": 7, "pollPeriod": 1000,
  "deviceName": "Meter A", "deviceType": "meter", "byteOrder": "BIG", "wordOrder": "LITTLE",
  "attributes": [{"tag": "serial", "type": "string", "functionCode": 3, "address": 10, "objectsCount": 2}],
  "timeseries": [
    {"tag": "temperature", "type": "16int", "functionCode": 3, "address": 0, "objectsCount": 1, "divider": 10},
    {"tag": "energy", "type": "32uint", "functionCode": 3, "address": 1, "objectsCount": 2},
    {"tag": "far", "type": "16int", "functionCode": 3, "address": 100},
    {"tag": "relay", "type": "bits", "functionCode": 1, "address": 3, "objectsCount": 1}
  ],
  "attributeUpdates": [{"tag": "setpoint", "type": "16int", "functionCode": 6, "address": 20, "divider": 10}],
  "rpc": [
    {"tag": "setRelay", "type": "bits", "functionCode": 5, "address": 3, "objectsCount": 1},
    {"tag": "setLimits", "type": "32float", "functionCode": 16, "address": 30, "objectsCount": 2},
    {"tag": "getTemperature", "type": "16int", "functionCode": 3, "address": 0, "objectsCount": 1, "divider": 10}
  ]
}"#;

#[test]
fn a_block_becomes_the_tags_inside_it() {
    let c = UplinkConverter::new(SLAVE).unwrap();
    // Registers 0..12: temperature 21.5, energy 0x00010002 with LITTLE words, serial "AB12".
    let mut payload = vec![0x00, 0xd7, 0x00, 0x02, 0x00, 0x01];
    payload.extend(vec![0; 14]);
    payload.extend(b"AB12");
    let block = Block { unit_id: 7, function_code: 3, address: 0, count: 12 };
    let out = c.convert(None, block, &payload).unwrap();
    assert_eq!(out.updates.len(), 1);
    let u = &out.updates[0];
    assert_eq!((u.device.as_str(), u.device_type.as_deref()), ("Meter A", Some("meter")));
    assert_eq!(u.attributes, [Entry { key: "serial".into(), value: Value::Text("AB12".into()) }]);
    assert_eq!(
        u.telemetry[0].values,
        [
            Entry { key: "temperature".into(), value: Value::Float(21.5) },
            Entry { key: "energy".into(), value: Value::Int(0x0001_0002) },
        ]
    );
    // Coils: only the coil tag.
    let out = c.convert(None, Block { unit_id: 7, function_code: 1, address: 0, count: 8 }, &[0b1000]).unwrap();
    assert_eq!(out.updates[0].telemetry[0].values, [Entry { key: "relay".into(), value: Value::Bool(true) }]);
    // A short payload names what is missing.
    assert_eq!(c.convert(None, block, &[0; 4]).unwrap_err(), "the block of 12 registers at 0 has 4 bytes, expected 24");
}

#[test]
fn requests_become_writes() {
    let c = DownlinkConverter::new(SLAVE).unwrap();
    let m = c.rpc("Meter A", "setRelay", "true").unwrap();
    assert_eq!((target(&m[0]).as_str(), m[0].payload.as_slice()), ("5/3/1", [1u8].as_slice()));
    let m = c.rpc("Meter A", "setLimits", r#"{"value": 1.5}"#).unwrap();
    assert_eq!((target(&m[0]).as_str(), m[0].payload.as_slice()), ("16/30/2", [0, 0, 0x3f, 0xc0].as_slice()));
    let m = c.rpc("Meter A", "getTemperature", "null").unwrap();
    assert_eq!(target(&m[0]), "3/0/1");
    assert_eq!(c.rpc("Meter A", "explode", "1").unwrap_err(), "no rpc entry has the tag `explode`");
    let m = c.attribute_update("Meter A", &[Entry { key: "setpoint".into(), value: Value::Float(22.5) }]).unwrap();
    assert_eq!((target(&m[0]).as_str(), m[0].payload.as_slice()), ("6/20/1", [0, 225].as_slice()));
    assert!(c.attribute_update("Meter A", &[Entry { key: "other".into(), value: Value::Int(1) }]).is_err());
    // Every slave of a connector in one converter: the device picks its slave.
    let both = format!(
        r#"{{"slaves": [{SLAVE}, {}]}}"#,
        SLAVE.replace("Meter A", "Meter B").replace("\"unitId\": 7", "\"unitId\": 8")
    );
    let c = DownlinkConverter::new(&both).unwrap();
    assert_eq!(c.rpc("Meter B", "setRelay", "false").map(|m| target(&m[0])).unwrap(), "5/3/1");
    assert_eq!(c.rpc("Meter C", "setRelay", "false").unwrap_err(), "no slave has the deviceName `Meter C`");
}

#[test]
fn bad_tags_are_named_by_path() {
    let bad = |json: &str| SlaveConfig::parse(json).unwrap_err().to_string();
    let base = r#""deviceName": "D", "timeseries": "#;
    assert!(
        bad(&format!(
            r#"{{{base}[{{"tag": "t", "type": "32int", "functionCode": 3, "address": 0, "objectsCount": 1}}]}}"#
        ))
        .starts_with("timeseries[0].objectsCount:")
    );
    assert!(
        bad(&format!(r#"{{{base}[{{"tag": "t", "type": "24int", "functionCode": 3, "address": 0}}]}}"#))
            .starts_with("timeseries[0].type: unknown type `24int`")
    );
    assert!(
        bad(&format!(r#"{{{base}[{{"tag": "t", "type": "16int", "functionCode": 6, "address": 0}}]}}"#))
            .starts_with("timeseries[0].functionCode: 6 does not fit here")
    );
    assert!(
        bad(&format!(r#"{{{base}[{{"tag": "t", "type": "16int", "functionCode": 3, "adress": 0}}]}}"#))
            .starts_with("timeseries[0].address: required; `adress` looks like a typo")
    );
    assert!(bad(r#"{"deviceName": "D", "byteOrder": "MIDDLE"}"#).starts_with("byteOrder:"));
}

#[test]
fn one_converter_serves_every_slave_of_a_connector() {
    let b = SLAVE.replace("Meter A", "Meter B");
    let c = UplinkConverter::new(&format!(r#"{{"slaves": [{SLAVE}, {b}]}}"#)).unwrap();
    let block = Block { unit_id: 7, function_code: 3, address: 0, count: 1 };
    let out = c.convert(Some("Meter B"), block, &[0, 100]).unwrap();
    assert_eq!(out.updates[0].device, "Meter B");
    assert_eq!(out.updates[0].telemetry[0].values[0].value, Value::Float(10.0));
    assert_eq!(c.convert(Some("Meter C"), block, &[0, 1]).unwrap_err(), "no slave has the deviceName `Meter C`");
    assert!(c.convert(None, block, &[0, 1]).unwrap_err().contains("the message must say which"));
    // Slaves written alike share their tag lists.
    let s = Slaves::parse(&format!(r#"{{"slaves": [{SLAVE}, {b}]}}"#)).unwrap();
    let (a, b) = (s.get(Some("Meter A")).unwrap(), s.get(Some("Meter B")).unwrap());
    assert!(Arc::ptr_eq(&a.timeseries, &b.timeseries));
    // A bad tag of the second slave is named under it.
    let bad = SLAVE.replace("\"16int\"", "\"16nt\"");
    let err = UplinkConverter::new(&format!(r#"{{"slaves": [{SLAVE}, {bad}]}}"#)).unwrap_err().to_string();
    assert!(err.starts_with("slaves[1].timeseries[0].type:"), "{err}");
}

#[test]
fn the_compact_form_shares_one_profile() {
    let profile = SLAVE.replace(r#""deviceName": "Meter A","#, "");
    let c = UplinkConverter::new(&format!(
        r#"{{"profiles": [{profile}], "slaves": [{{"deviceName": "M1", "unitId": 3, "deviceType": "meter", "profile": 0}},
                                                  {{"deviceName": "M2", "profile": 0}}]}}"#
    ))
    .unwrap();
    let out = c.convert(Some("M2"), Block { unit_id: 1, function_code: 3, address: 0, count: 1 }, &[0, 50]).unwrap();
    assert_eq!((out.updates[0].device.as_str(), out.updates[0].device_type.as_deref()), ("M2", None));
    assert_eq!(out.updates[0].telemetry[0].values[0].value, Value::Float(5.0));
    let err = UplinkConverter::new(r#"{"profiles": [], "slaves": [{"deviceName": "M", "profile": 2}]}"#).unwrap_err();
    assert_eq!(err.to_string(), "slaves[0].profile: no such profile");
}

#[test]
fn an_address_range_is_one_key_per_value() {
    // As the Python gateway's wide-range tags: `${address}` (appended when
    // missing) and the other placeholders filled in per value.
    let c = UplinkConverter::new(
        r#"{"deviceName": "D", "unitId": 4, "timeseries": [
            {"tag": "reg", "type": "16int", "functionCode": 3, "address": "10-13"},
            {"tag": "u${unitId}_f${functionCode}_${address}_${type}", "type": "32uint", "functionCode": 4,
             "address": "0-4", "objectsCount": 2}]}"#,
    )
    .unwrap();
    let out = c
        .convert(None, Block { unit_id: 4, function_code: 3, address: 10, count: 4 }, &[0, 1, 0, 2, 0, 3, 0xff, 0xff])
        .unwrap();
    let keys: Vec<(&str, &Value)> =
        out.updates[0].telemetry[0].values.iter().map(|e| (e.key.as_str(), &e.value)).collect();
    assert_eq!(
        keys,
        [
            ("reg_10", &Value::Int(1)),
            ("reg_11", &Value::Int(2)),
            ("reg_12", &Value::Int(3)),
            ("reg_13", &Value::Int(-1))
        ]
    );
    // Two 32-bit values fit in 0-4; register 4 alone is not a value.
    let s = SlaveConfig::parse(
        r#"{"deviceName": "D", "unitId": 4, "timeseries": [{"tag": "u${unitId}_f${functionCode}_${address}_${type}",
            "type": "32uint", "functionCode": 4, "address": "0-4", "objectsCount": 2}]}"#,
    )
    .unwrap();
    let tags: Vec<(&str, u16)> = s.timeseries.iter().map(|t| (t.tag.as_str(), t.address)).collect();
    assert_eq!(tags, [("u4_f4_0_32uint", 0), ("u4_f4_2_32uint", 2)]);
    // Ranges are read-only, and must run forwards.
    let bad = |json: &str| SlaveConfig::parse(json).unwrap_err().to_string();
    assert_eq!(
        bad(r#"{"deviceName": "D", "rpc": [{"tag": "w", "type": "16int", "functionCode": 6, "address": "0-3"}]}"#),
        "rpc[0].address: `0-3`: address ranges are for reading (attributes, timeseries); write one address"
    );
    assert_eq!(
        bad(
            r#"{"deviceName": "D", "timeseries": [{"tag": "t", "type": "16int", "functionCode": 3, "address": "9-2"}]}"#
        ),
        "timeseries[0].address: `9-2`: the range ends (2) before it starts (9)"
    );
    assert!(
        bad(
            r#"{"deviceName": "D", "timeseries": [{"tag": "t", "type": "16int", "functionCode": 3, "address": "a-2"}]}"#
        )
        .starts_with("timeseries[0].address: expected an address")
    );
    // Slaves alike but for a unit named in range keys do not share lists.
    let slave = |name: &str, unit: u8| {
        format!(
            r#"{{"deviceName": "{name}", "unitId": {unit}, "timeseries": [{{"tag": "t${{unitId}}", "type": "16int",
                "functionCode": 3, "address": "0-1"}}]}}"#
        )
    };
    let s = Slaves::parse(&format!(r#"{{"slaves": [{}, {}]}}"#, slave("A", 1), slave("B", 2))).unwrap();
    assert_eq!(s.get(Some("B")).unwrap().timeseries[1].tag, "t2_1");
}

#[test]
fn reserved_get_and_set_reach_any_register() {
    // As the Python gateway's `get`/`set` RPCs: the register in the params,
    // the slave's byte and word order (BIG, LITTLE here).
    let c = DownlinkConverter::new(SLAVE).unwrap();
    let get = c.rpc("Meter A", "get", r#""type=32float;functionCode=4;objectsCount=2;address=40;""#).unwrap();
    assert_eq!((target(&get[0]).as_str(), get[0].payload.len()), ("4/40/2", 0));
    let set =
        c.rpc("Meter A", "set", r#""type=32float;functionCode=16;objectsCount=2;address=50;value=1.5;""#).unwrap();
    assert_eq!((target(&set[0]).as_str(), set[0].payload.as_slice()), ("16/50/2", [0, 0, 0x3f, 0xc0].as_slice()));
    let set = c.rpc("Meter A", "SET", r#""type=bits;functionCode=5;objectsCount=1;address=9;value=true;""#).unwrap();
    assert_eq!((target(&set[0]).as_str(), set[0].payload.as_slice()), ("5/9/1", [1u8].as_slice()));
    // What is wrong is said, with the schema.
    let err = |method: &str, params: &str| c.rpc("Meter A", method, params).unwrap_err();
    assert!(
        err("get", r#""type=16int;functionCode=6;objectsCount=1;address=0;""#).contains("functionCode: 6 does not fit")
    );
    assert!(err("set", r#""type=16int;functionCode=6;objectsCount=1;address=0;""#).contains("no value="));
    assert!(err("get", r#""type=16int;functionCode=3;adress=0;""#).contains("unknown key `adress`"));
    assert!(err("get", r#""type=16int;functionCode=3;address=x;""#).contains("address=x is not a whole number"));
    // An `rpc[]` entry named `get` would win; other methods are not reserved.
    assert_eq!(err("read", r#""address=1;""#), "no rpc entry has the tag `read`");
    assert!(reserved_rpc("getTemperature", "null", Order::Big, Order::Big).is_none());
}

#[test]
fn variants_and_round_as_the_python_gateway() {
    let c = UplinkConverter::new(
        r#"{"deviceName": "D", "timeseries": [
            {"tag": "state", "type": "16uint", "functionCode": 3, "address": 0,
             "variants": {"0": "stopped", "1": "running", "2": {"fault": true}}},
            {"tag": "level", "type": "16uint", "functionCode": 3, "address": 1, "divider": 3, "round": 2},
            {"tag": "scaled", "type": "16uint", "functionCode": 3, "address": 2, "divider": 2,
             "variants": {"2.0": "two", "2.5": "two and a half"}}]}"#,
    )
    .unwrap();
    let block = Block { unit_id: 1, function_code: 3, address: 0, count: 3 };
    let values = |payload: &[u8]| -> Vec<Value> {
        c.convert(None, block, payload).unwrap().updates[0].telemetry[0]
            .values
            .iter()
            .map(|e| e.value.clone())
            .collect()
    };
    assert_eq!(
        values(&[0, 1, 0, 10, 0, 4]),
        [Value::Text("running".into()), Value::Float(3.33), Value::Text("two".into())]
    );
    assert_eq!(values(&[0, 2, 0, 1, 0, 5])[0], Value::Json(r#"{"fault":true}"#.into()));
    assert_eq!(values(&[0, 2, 0, 1, 0, 5])[2], Value::Text("two and a half".into()));
    // No variant for the value: the value.
    assert_eq!(values(&[0, 9, 0, 1, 0, 7]), [Value::Int(9), Value::Float(0.33), Value::Float(3.5)]);
    let bad = SlaveConfig::parse(
        r#"{"deviceName": "D", "timeseries": [{"tag": "s", "type": "16int", "functionCode": 3, "address": 0, "variants": [1]}]}"#,
    )
    .unwrap_err();
    assert!(bad.to_string().starts_with("timeseries[0].variants: expected an object"), "{bad}");
}
