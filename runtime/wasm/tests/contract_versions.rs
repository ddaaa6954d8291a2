//! Components built against contract 0.1.0 keep loading and working under
//! this 0.2 host; 0.2's downlink `reply` makes ThingsBoard's reply.

mod common;

use common::{batch, json_downlink, probe, runtime};
use std::time::Duration;
use tbgw_core::{
    AttributeResponse, AttributeUpdate, DownlinkMessage, DownlinkRequest, Entry, MqttMessage, RawUplink, RpcAnswer,
    RpcRequest, Source, Value,
};
use tbgw_wasm::{CallError, ComponentSource, ConverterSpec, Limits, MessageError};

fn v0_1(path: &str, config: &str) -> ConverterSpec {
    ConverterSpec { component: ComponentSource::File(path.into()), config: config.into(), limits: Limits::default() }
}

fn rpc(method: &str) -> RpcRequest {
    RpcRequest { device: "Boiler".into(), id: 7, method: method.into(), params: r#"{"on":true}"#.into() }
}

fn answer(topic: &str, payload: &str) -> RawUplink {
    RawUplink {
        source: Source::Mqtt(MqttMessage { topic: topic.into(), qos: 1, retain: false }),
        device: None,
        payload: payload.as_bytes().to_vec(),
        metadata: vec![],
        received_at: 0,
    }
}

#[test]
fn a_0_1_uplink_component_loads_and_converts() {
    let c = runtime().uplink("old", v0_1(tbgw_guests::PROBE_V0_1, r#"{"tag":"Old"}"#)).expect("a 0.1 component loads");
    let info = c.info();
    assert_eq!(info.contract_version, "0.1.0");
    let mut w = c.worker();
    let out = w.convert(&batch(&["hello", "fail", "world"]));
    let first = out[0].as_ref().expect("converted");
    assert_eq!(first.updates[0].device, "Old");
    assert_eq!(first.updates[0].telemetry[0].values[0].key, "payload");
    assert_eq!(first.updates[0].telemetry[0].values[0].value, Value::Text("hello".into()));
    assert_eq!(first.updates[0].telemetry[0].ts, Some(1_700_000_000_000));
    assert!(matches!(&out[1], Err(MessageError::Rejected { message, .. }) if message == "probe: asked to fail"));
    assert!(out[2].is_ok());
    // Its failures are classified as any component's: a trap fails its message.
    let trapped = w.convert(&batch(&["trap"])).remove(0);
    assert!(matches!(trapped, Err(MessageError::Call(CallError::Trap { .. }))), "{trapped:?}");
    assert!(w.convert(&batch(&["again"]))[0].is_ok(), "a fresh instance takes over");
}

#[test]
fn a_0_1_downlink_component_is_served_as_mqtt_publishes_with_a_plain_reply() {
    let c = runtime().downlink("old", v0_1(tbgw_guests::DOWNLINK_V0_1, "{}")).expect("a 0.1 component loads");
    assert_eq!(c.info().contract_version, "0.1.0");
    let mut w = c.worker();
    let requests = [
        DownlinkRequest::Rpc(rpc("askState")),
        DownlinkRequest::AttributeResponse(AttributeResponse {
            device: "Boiler".into(),
            keys: vec!["fw".into()],
            values: vec![],
            context: "x".into(),
        }),
        DownlinkRequest::AttributeUpdate(AttributeUpdate {
            device: "Boiler".into(),
            entries: vec![Entry::new("setpoint", Value::Float(21.5))],
        }),
    ];
    let out = w.convert(&requests);
    let [DownlinkMessage::Mqtt(p)] = &out[0].as_ref().expect("rpc")[..] else { panic!("{:?}", out[0]) };
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice(), p.qos),
        ("rpc/Boiler/askState", br#"{"on":true}"#.as_slice(), 1)
    );
    let response = p.response.as_ref().expect("response-topic became the response");
    assert_eq!((response.topic.as_str(), response.timeout_ms, response.qos), ("rpc/Boiler/answer/7", 2000, 1));
    let err = out[1].as_ref().expect_err("0.1 has no attribute responses").to_string();
    assert!(err.contains("contract 0.1.0, which cannot answer"), "{err}");
    let [DownlinkMessage::Mqtt(p)] = &out[2].as_ref().expect("update")[..] else { panic!("{:?}", out[2]) };
    assert_eq!((p.topic.as_str(), p.payload.as_slice(), p.retain), ("attr/Boiler", b"setpoint=21.5".as_slice(), true));
    // No `reply` in 0.1: the device's answer as it is, JSON or text.
    let replies = w.reply(&[
        RpcAnswer { request: rpc("askState"), answers: vec![answer("rpc/Boiler/answer/7", r#"{"state":"on"}"#)] },
        RpcAnswer { request: rpc("askState"), answers: vec![answer("rpc/Boiler/answer/7", "on")] },
        RpcAnswer { request: rpc("set"), answers: vec![] },
    ]);
    let replies: Vec<String> = replies.into_iter().map(|r| r.expect("reply")).collect();
    assert_eq!(replies, [r#"{"state":"on"}"#, r#""on""#, r#"{"success":true}"#]);
}

#[test]
fn a_0_2_downlink_component_replies_itself() {
    let c = runtime()
        .downlink(
            "json",
            json_downlink(
                r#"{"serverSideRpc":[{"type":"twoWay","deviceNameFilter":".*","methodFilter":"get",
                    "requestTopicExpression":"q/${deviceName}","responseTopicExpression":"a/${deviceName}",
                    "responseTimeout":100,"valueExpression":"${params}"}]}"#,
            ),
        )
        .expect("load");
    let mut w = c.worker();
    let replies = w.reply(&[
        RpcAnswer { request: rpc("get"), answers: vec![answer("a/Boiler", r#" {"t": 21.5} "#)] },
        RpcAnswer { request: rpc("get"), answers: vec![] },
    ]);
    assert_eq!(replies[0].as_deref(), Ok(r#"{"t": 21.5}"#));
    assert_eq!(replies[1].as_deref(), Ok(r#"{"success":true}"#));
    assert_eq!(c.info().calls, 1, "one call for the batch of answers");
}

#[test]
fn a_neighbours_timeout_is_not_reported_as_a_messages_own() {
    let mut spec = probe("{}");
    (spec.limits.per_message, spec.limits.call_base) = (Duration::from_millis(30), Duration::ZERO);
    let c = runtime().uplink("p", spec).expect("load");
    let out = c.worker().convert(&batch(&["spin", "spin", "innocent"]));
    assert!(matches!(&out[0], Err(MessageError::Call(CallError::Timeout { .. }))), "{:?}", out[0]);
    assert!(matches!(&out[1], Err(MessageError::Call(CallError::Timeout { .. }))), "{:?}", out[1]);
    match &out[2] {
        Err(e @ MessageError::NotTried { cause: CallError::Timeout { .. }, timeouts: 2, .. }) => {
            assert!(e.to_string().contains("so this one was not tried"), "{e}");
        }
        other => panic!("expected NotTried, got {other:?}"),
    }
}
