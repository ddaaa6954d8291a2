use super::*;

fn doc(text: &str) -> Value {
    serde_json::from_str(text).expect("test JSON")
}

#[test]
fn the_python_gateways_sample_reads_every_key_where_it_is() {
    let sample = doc(include_str!("../../../config/ble.json"));
    let s = read(&sample).expect("the sample reads");
    assert_eq!(s.devices.len(), 1);
    let d = &s.devices[0];
    assert_eq!(d.name, "Temperature and humidity sensor");
    assert_eq!(d.address, "4C:65:A8:DF:85:C0");
    assert_eq!(
        d.connection,
        Connection {
            poll_ms: 500_000,
            timeout_ms: 10_000,
            retries: 5,
            retry_wait_ms: 0,
            wait_after_retries_ms: 10_000
        }
    );
    assert_eq!((d.characteristic_format, d.advertisement_format), (Format::Bytes, Format::Hex));
    let keys: Vec<(&str, Section, &DataSource, &str)> =
        s.items.iter().map(|i| (i.key, i.section, &i.source, i.value_expression)).collect();
    let notify =
        DataSource::Characteristic { uuid: "226caa55-6476-4566-7562-66734470666d".into(), method: Method::Notify };
    let name = DataSource::Characteristic { uuid: "00002a00-0000-1000-8000-00805f9b34fb".into(), method: Method::Read };
    assert_eq!(
        keys,
        vec![
            ("name", Section::Attributes, &name, "[0:2]cm [2:]A"),
            ("values", Section::Attributes, &name, "All values: [:]"),
            ("temperature", Section::Telemetry, &notify, "[2]"),
            ("humidity", Section::Telemetry, &notify, "[0]"),
        ]
    );
    assert_eq!(d.attribute_updates, vec![AttributeUpdate { attribute: "sharedName", characteristic: name_uuid() }]);
    let rpcs: Vec<(&str, Processing, Option<&str>)> =
        d.rpcs.iter().map(|r| (r.method, r.processing, r.characteristic.as_deref())).collect();
    assert_eq!(
        rpcs,
        vec![
            ("rpcMethod1", Processing::Read, Some(name_uuid().as_str())),
            ("rpcMethod2", Processing::Write, Some(name_uuid().as_str())),
            ("rpcMethod3", Processing::Scan, None),
        ]
    );
    assert!(d.connects(&s.items, 0));
}

fn name_uuid() -> String {
    "00002a00-0000-1000-8000-00805f9b34fb".to_owned()
}

#[test]
fn uuids_are_compared_in_one_form() {
    for text in
        ["2A19", "0x2a19", "00002a19", "00002A19-0000-1000-8000-00805F9B34FB", "00002a1900001000800000805f9b34fb"]
    {
        assert_eq!(uuid(text).as_deref(), Ok("00002a19-0000-1000-8000-00805f9b34fb"), "{text}");
    }
    assert_eq!(uuid("2a1").unwrap_err(), "`2a1` is not a UUID: 3 hex digits, expected 4, 8 or 32");
    assert_eq!(uuid("2a1g").unwrap_err(), "`2a1g` is not a UUID: `g` is not a hex digit");
}

#[test]
fn addresses_are_six_hex_pairs() {
    assert_eq!(address("4c-65-a8-df-85-c0").as_deref(), Ok("4C:65:A8:DF:85:C0"));
    assert!(address("4C:65:A8:DF:85").is_err());
    assert!(address("4C:65:A8:DF:85:CG").is_err());
}

#[test]
fn advertisement_keys_say_which_part_they_read() {
    let d = doc(r#"{"devices": [{"name": "Beacon", "MACAddress": "AA:BB:CC:DD:EE:01", "telemetry": [
        {"key": "t", "dataSourceType": "advertisement", "valueExpression": "[0:2]"},
        {"key": "apple", "dataSourceType": "advertisement", "companyId": "0x004C"},
        {"key": "eddystone", "dataSourceType": "advertisement", "advertisementData": "service", "serviceUUID": "feaa"},
        {"key": "rssi", "dataSourceType": "advertisement", "advertisementData": "rssi"}]}]}"#);
    let s = read(&d).expect("reads");
    let fields: Vec<&DataSource> = s.items.iter().map(|i| &i.source).collect();
    assert_eq!(
        fields,
        vec![
            &DataSource::Advertisement(AdvField::Manufacturer(None)),
            &DataSource::Advertisement(AdvField::Manufacturer(Some(0x004c))),
            &DataSource::Advertisement(AdvField::Service(Some("0000feaa-0000-1000-8000-00805f9b34fb".into()))),
            &DataSource::Advertisement(AdvField::Rssi),
        ]
    );
    // Only advertisements: the device is listened to, not connected.
    assert!(!s.devices[0].connects(&s.items, 0));
}

#[test]
fn errors_name_the_field() {
    let err = |text: &str| read(&doc(text)).expect_err("refused").to_string();
    assert_eq!(
        err(r#"{"devices": [{"name": "A", "MACAddress": "AA:BB"}]}"#),
        "devices[0].MACAddress: `AA:BB` is not a MAC address (six hex pairs: `4C:65:A8:DF:85:C0`)"
    );
    assert_eq!(
        err(
            r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF", "telemetry": [{"key": "t", "method": "poll", "characteristicUUID": "2a19"}]}]}"#
        ),
        "devices[0].telemetry[0].method: `poll`: expected read or notify"
    );
    assert_eq!(
        err(
            r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF", "telemetry": [{"key": "t", "method": "read"}]}]}"#
        ),
        "devices[0].telemetry[0].characteristicUUID: required"
    );
    assert_eq!(
        err(
            r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF"}, {"name": "B", "MACAddress": "aa:bb:cc:dd:ee:ff"}]}"#
        ),
        "devices[1].MACAddress: AA:BB:CC:DD:EE:FF is also the address of devices[0]: one device, one entry"
    );
    assert!(
        err(r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF", "polPeriod": 5}]}"#)
            .starts_with("devices[0].polPeriod: unknown field; did you mean `pollPeriod`?")
    );
    assert_eq!(
        err(
            r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF", "serverSideRpc": [{"methodRPC": "set", "methodProcessing": "write", "characteristicUUID": "2a19"}]}]}"#
        ),
        "devices[0].serverSideRpc[0].methodRPC: `set` is reserved (get and set are built in)"
    );
    assert_eq!(
        err(
            r#"{"devices": [{"name": "A", "MACAddress": "AA:BB:CC:DD:EE:FF", "telemetry": [{"key": "t", "dataSourceType": "advertisement", "advertisementData": "rssi", "companyId": 76}]}]}"#
        ),
        "devices[0].telemetry[0].companyId: only for `advertisementData: manufacturer`"
    );
}
