use super::*;

fn msg(payload: &str, status: u32, meta: &[(&str, &str)]) -> RawUplink {
    RawUplink {
        source: Source::Opcua(OpcuaValue {
            node: "ns=2;s=Boiler.Temperature".into(),
            status,
            source_time: Some(1_700_000_000_000),
            server_time: Some(1_700_000_000_500),
        }),
        device: Some("Boiler 1".into()),
        payload: payload.as_bytes().to_vec(),
        metadata: meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        received_at: 1_700_000_001_000,
    }
}

fn convert(payload: &str, status: u32, meta: &[(&str, &str)]) -> ConvertedMessage {
    UplinkConverter::new("{}").map(|c| c.convert_message(&msg(payload, status, meta))).unwrap().unwrap()
}

fn value_of(payload: &str) -> Result<Value, String> {
    variant(payload.as_bytes())
}

#[test]
fn a_telemetry_value_goes_to_its_key_of_its_device() {
    let out = convert(r#"{"Type": 11, "Body": 21.5}"#, 0, &[("key", "temperature"), ("device-type", "boiler")]);
    assert_eq!(out.dropped, vec![]);
    assert_eq!(
        out.updates,
        vec![DeviceUpdate {
            device: "Boiler 1".into(),
            device_type: Some("boiler".into()),
            attributes: vec![],
            telemetry: vec![Telemetry {
                ts: None,
                values: vec![Entry::new(Key::new("temperature"), Value::Float(21.5))]
            }],
        }]
    );
}

#[test]
fn attributes_and_the_timestamp_locations() {
    let out = convert(r#"{"Type": 6, "Body": 50}"#, 0, &[("key", "frequency"), ("section", "attributes")]);
    assert_eq!(out.updates[0].attributes, vec![Entry::new(Key::new("frequency"), Value::Int(50))]);
    assert!(out.updates[0].telemetry.is_empty());
    let ts = |stamp| {
        convert(r#"{"Type": 6, "Body": 1}"#, 0, &[("key", "k"), ("timestamp", stamp)]).updates[0].telemetry[0].ts
    };
    assert_eq!(ts("source"), Some(1_700_000_000_000));
    assert_eq!(ts("server"), Some(1_700_000_000_500));
    assert_eq!(ts("gateway"), None);
}

#[test]
fn bad_values_are_dropped_with_their_status_and_uncertain_ones_sent() {
    let out = convert(r#"{"Type": 11, "Body": 0.0}"#, 0x8034_0000, &[("key", "t"), ("status", "BadNodeIdUnknown")]);
    assert!(out.updates.is_empty());
    assert_eq!(out.dropped.len(), 1);
    assert_eq!(out.dropped[0].key, "t");
    assert!(out.dropped[0].reason.contains("BadNodeIdUnknown (0x80340000)"), "{}", out.dropped[0].reason);
    let out = convert(r#"{"Type": 11, "Body": 3.5}"#, 0x4000_0000, &[("key", "t")]);
    assert_eq!(out.updates[0].telemetry[0].values[0].value, Value::Float(3.5));
}

#[test]
fn variant_types() {
    assert_eq!(value_of(r#"{"Type": 1, "Body": true}"#), Ok(Value::Bool(true)));
    assert_eq!(value_of(r#"{"Type": 8, "Body": "-9000000000"}"#), Ok(Value::Int(-9_000_000_000)));
    assert_eq!(
        value_of(r#"{"Type": 9, "Body": 18446744073709551615}"#),
        Ok(Value::Text("18446744073709551615".into()))
    );
    assert_eq!(value_of(r#"{"Type": 10, "Body": 1.5}"#), Ok(Value::Float(1.5)));
    // A double stays a double when it is whole.
    assert_eq!(value_of(r#"{"Type": 11, "Body": 19.0}"#), Ok(Value::Float(19.0)));
    assert!(value_of(r#"{"Type": 11, "Body": "NaN"}"#).is_err());
    assert_eq!(value_of(r#"{"Type": 12, "Body": "Grüße"}"#), Ok(Value::Text("Grüße".into())));
    assert_eq!(
        value_of(r#"{"Type": 13, "Body": "2026-12-02T04:00:00.000Z"}"#),
        Ok(Value::Text("2026-12-02T04:00:00.000Z".into()))
    );
    assert_eq!(value_of(r#"{"Type": 15, "Body": "3q2+7w=="}"#), Ok(Value::Text("deadbeef".into())));
    assert_eq!(value_of(r#"{"Type": 15, "Body": "AAECAwQFBgcICQ"}"#), Ok(Value::Text("00010203040506070809".into())));
    assert_eq!(
        value_of(r#"{"Type": 17, "Body": {"IdType": 1, "Id": "Pump", "Namespace": 3}}"#),
        Ok(Value::Text("ns=3;s=Pump".into()))
    );
    assert_eq!(value_of(r#"{"Type": 17, "Body": {"Id": 2258}}"#), Ok(Value::Text("i=2258".into())));
    assert_eq!(value_of(r#"{"Type": 20, "Body": "2:Pump"}"#), Ok(Value::Text("2:Pump".into())));
    assert_eq!(
        value_of(r#"{"Type": 21, "Body": {"Locale": "en", "Text": "Running"}}"#),
        Ok(Value::Text("Running".into()))
    );
    assert_eq!(value_of(r#"{"Type": 19, "Body": 2150891520}"#), Ok(Value::Int(2_150_891_520)));
    // A decoded structure is its fields; one left as its raw body (the
    // server publishes no definition) keeps its type id for a custom
    // converter to decode.
    let json = |payload: &str| match value_of(payload) {
        Ok(Value::Json(s)) => serde_json::from_str::<Json>(&s).unwrap(),
        other => panic!("a structure is JSON: {other:?}"),
    };
    assert_eq!(
        json(r#"{"Type": 22, "Body": {"UaTypeId": {"Id": 5001, "Namespace": 2}, "UaBody": {"X": 1.5, "Y": 2}}}"#),
        serde_json::json!({"X": 1.5, "Y": 2})
    );
    assert_eq!(
        json(r#"{"Type": 22, "Body": {"UaTypeId": {"Id": 5002, "Namespace": 2}, "UaEncoding": 1, "UaBody": "AQI="}}"#),
        serde_json::json!({"UaTypeId": {"Id": 5002, "Namespace": 2}, "UaEncoding": 1, "UaBody": "AQI="})
    );
    assert_eq!(
        json(
            r#"{"Type": 22, "Body": [{"UaTypeId": {"Id": 5001}, "UaBody": {"X": 1}}, {"UaTypeId": {"Id": 5001}, "UaBody": {"X": 2}}]}"#
        ),
        serde_json::json!([{"X": 1}, {"X": 2}])
    );
    assert_eq!(value_of(r#"{"Type": 6, "Body": [1, 2, 3]}"#), Ok(Value::Json("[1,2,3]".into())));
    assert_eq!(value_of(r#"{"Type": 12, "Body": ["a", "b"]}"#), Ok(Value::Json(r#"["a","b"]"#.into())));
    assert!(value_of("null").unwrap_err().contains("null Variant"));
    assert!(value_of(r#"{"Type": 11}"#).unwrap_err().contains("empty"));
    assert!(value_of(r#"{"Type": 15, "Body": "**"}"#).unwrap_err().contains("byte 0"));
}

#[test]
fn messages_that_are_not_opcua_values_are_refused() {
    let c = UplinkConverter::new("{}").unwrap();
    let mut m = msg(r#"{"Type": 11, "Body": 1.0}"#, 0, &[("key", "t")]);
    m.source = Source::None;
    assert!(c.convert_message(&m).is_err());
    let m = msg(r#"{"Type": 11, "Body": 1.0}"#, 0, &[]);
    assert!(c.convert_message(&m).unwrap_err().contains("key"));
    assert!(UplinkConverter::new("[]").is_err());
}
