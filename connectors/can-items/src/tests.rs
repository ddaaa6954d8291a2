use super::*;
use serde_json::json;

#[test]
fn the_python_gateways_sample_routes_every_key() {
    let doc: Value = serde_json::from_str(include_str!("python-sample.json")).expect("sample");
    let s = read(&doc).expect("the sample's items read");
    assert_eq!(s.devices.len(), 1);
    assert_eq!(s.devices[0].name, "Car");
    let keys = |id, ext, data: &[u8]| s.routes.items(id, ext, data).map(|i| s.items[i].key).collect::<Vec<_>>();
    // rpm (command 48059 = 0xBBBB at bytes 2..4) and milliage (no command) share id 1918:
    // in the Python gateway milliage's lack of command disables rpm's.
    assert_eq!(keys(1918, true, &[0, 0, 0xBB, 0xBB, 0x01, 0x02]), ["milliage", "rpm"]);
    assert_eq!(keys(1918, true, &[0, 0, 0xBB, 0xBC, 0x01, 0x02]), ["milliage"]);
    // A standard frame with the same number is another frame.
    assert!(keys(1918 & 0x7FF, false, &[0, 0, 0xBB, 0xBB]).is_empty());
    // 8717 = 0x220D at bytes 2..4.
    assert_eq!(keys(41, false, &[0, 0, 0x22, 0x0D, 0x0C]), ["isDriverDoorOpened"]);
    assert!(keys(41, false, &[0, 0, 0x22]).is_empty(), "a frame too short for its command matches nothing");
    assert!(keys(41, true, &[0, 0, 0x22, 0x0D]).is_empty());
    let door = &s.items[0];
    assert_eq!(door.polling, Some(Polling { always: false, period_ms: 1000, data: vec![0xAB, 0xCD, 0xAB, 0xCD] }));
    let rpm = s.items.iter().find(|i| i.key == "rpm").expect("rpm");
    assert_eq!(rpm.frame, FrameId { id: 1918, extended: true, fd: false, brs: false });
    assert_eq!(rpm.polling.as_ref().map(|p| (p.always, p.period_ms)), Some((true, 5000)));
    let mut ids: Vec<_> = s.routes.ids().collect();
    ids.sort();
    assert_eq!(ids, [(41, false), (1918, true)]);
}

fn device(timeseries: Value) -> Value {
    json!({"devices": [{"name": "D", "timeseries": timeseries}]})
}

fn error(doc: Value) -> String {
    let e = read(&doc).expect_err("refused");
    format!("{}: {}", e.field.unwrap_or_default(), e.message)
}

#[test]
fn two_command_layouts_on_one_id_are_refused_naming_both() {
    let doc = device(json!([
        {"key": "a", "nodeId": 5, "command": "0:1:1", "value": "1:1:int"},
        {"key": "b", "nodeId": 5, "command": "0:2:big:2", "value": "2:1:int"},
    ]));
    assert_eq!(
        error(doc),
        "devices[0].timeseries[1].command: bytes 0..2 big-endian here, but devices[0].timeseries[0].command puts \
         the command of standard id 5 (0x5) at bytes 0..1 big-endian: the frames of one id carry their command in one place"
    );
    // The same layout with other values, and the same number as an extended id, are fine.
    let doc = device(json!([
        {"key": "a", "nodeId": 5, "command": "0:1:1", "value": "1:1:int"},
        {"key": "b", "nodeId": 5, "command": {"start": 0, "length": 1, "value": 2}, "value": "1:1:int"},
        {"key": "c", "nodeId": 5, "isExtendedId": true, "command": "0:2:little:2", "value": "2:1:int"},
    ]));
    let s = read(&doc).expect("fine");
    let keys = |id, ext, data: &[u8]| s.routes.items(id, ext, data).map(|i| s.items[i].key).collect::<Vec<_>>();
    assert_eq!(keys(5, false, &[1, 9]), ["a"]);
    assert_eq!(keys(5, false, &[2, 9]), ["b"]);
    assert_eq!(keys(5, false, &[3, 9]), Vec::<&str>::new());
    assert_eq!(keys(5, true, &[2, 0, 9]), ["c"]);
    assert_eq!(keys(5, true, &[0, 2, 9]), Vec::<&str>::new());
}

#[test]
fn bad_entries_are_refused_by_field() {
    for (entry, want) in [
        (json!({"key": "a", "value": "0:1:int"}), "devices[0].timeseries[0].nodeId: required"),
        (
            json!({"key": "a", "nodeId": 2048, "value": "0:1:int"}),
            "devices[0].timeseries[0].nodeId: 2048 (0x800) is beyond the largest identifier 0x7FF; an extended (29-bit) identifier needs `isExtendedId: true`",
        ),
        (
            json!({"key": "a", "nodeId": "0x7DF", "command": "2:2:big", "value": "0:1:int"}),
            "devices[0].timeseries[0].command: `2:2:big` is not a command; expected start:length:order:value, e.g. `2:2:big:48059`",
        ),
        (
            json!({"key": "a", "nodeId": 1, "command": "0:1:middle:1", "value": "0:1:int"}),
            "devices[0].timeseries[0].command: `middle` is not a byte order; expected big or little",
        ),
        (
            json!({"key": "a", "nodeId": 1, "command": "0:1:300", "value": "0:1:int"}),
            "devices[0].timeseries[0].command: 300 does not fit in the command's 1 byte(s)",
        ),
        (
            json!({"key": "a", "nodeId": 1, "value": "0:1:int", "polling": {"type": "sometimes", "dataInHex": "00"}}),
            "devices[0].timeseries[0].polling.type: `sometimes` is not a polling type; expected once or always",
        ),
        (
            json!({"key": "a", "nodeId": 1, "value": "0:1:int", "polling": {"dataInHex": "aa bb cc d ee"}}),
            "devices[0].timeseries[0].polling.dataInHex: hex digit `d` at position 9 is not one of a pair (bytes are two digits)",
        ),
        (
            json!({"key": "a", "nodeId": 1, "value": "0:1:int", "polling": {"dataInHex": "00 11 22 33 44 55 66 77 88"}}),
            "devices[0].timeseries[0].polling.dataInHex: 9 bytes do not fit a classic CAN frame (at most 8; CAN FD needs `isFd: true`)",
        ),
        (
            json!({"key": "a", "nodeId": 1, "value": "0:1:int", "bitrateSwitch": true}),
            "devices[0].timeseries[0].bitrateSwitch: a bit rate switch needs a CAN FD frame (`isFd: true`)",
        ),
        (
            json!({"key": "a", "nodeId": 1, "vlaue": "0:1:int"}),
            "devices[0].timeseries[0].value: required; `vlaue` looks like a typo for it",
        ),
        (
            json!({"key": "a", "nodeId": 1, "value": "0:1:int", "expresion": "value"}),
            "devices[0].timeseries[0].expresion: unknown field; did you mean `expression`?",
        ),
    ] {
        let got = error(device(json!([entry])));
        assert!(got.starts_with(want), "{got}\nwanted {want}");
    }
    assert_eq!(error(json!({"devices": []})), "devices: no device: the connector would read nothing");
    assert_eq!(
        error(json!({"devices": [{"name": "D"}, {"name": "D"}]})),
        "devices[1].name: `D` is also the name of devices[0]: requests could not tell them apart"
    );
    let fd = device(json!([{"key": "a", "nodeId": 1, "isFd": true, "bitrateSwitch": true, "value": "0:1:int",
        "polling": {"type": "always", "period": 0.25, "dataInHex": "00112233445566778899aabb"}}]));
    let s = read(&fd).expect("an FD poll of 12 bytes");
    assert_eq!(s.items[0].polling.as_ref().map(|p| (p.period_ms, p.data.len())), Some((250, 12)));
}

#[test]
fn fields_read_in_either_order() {
    let f = Field { start: 1, length: 2, big_endian: true };
    assert_eq!(f.read(&[0, 0x12, 0x34]), Some(0x1234));
    assert_eq!(Field { big_endian: false, ..f }.read(&[0, 0x12, 0x34]), Some(0x3412));
    assert_eq!(f.read(&[0, 0x12]), None);
    assert_eq!(hex_bytes("x", " aaBB\tcc ").expect("hex"), [0xAA, 0xBB, 0xCC]);
    assert!(hex_bytes("x", "aa zz").expect_err("zz").message.contains("`z` at position 3"));
}
