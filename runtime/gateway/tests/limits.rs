//! Converter limits from the gateway's config: a slow but correct converter
//! (the probe test guest, busy a given time a message) times out on the
//! defaults, passes when tried again with a larger budget unless it is far
//! too slow, and converts with a larger `timeoutMs`; `memoryMib` caps its
//! instance.

use std::path::Path;
use tbgw_core::config::Diagnostics;
use tbgw_core::{RawUplink, Source};
use tbgw_wasm::{CallError, MessageError};

/// The converters of a gateway config whose MQTT mapping runs the probe
/// with `limits`.
fn load(limits: serde_json::Value) -> tbgw::service::Loaded {
    let mut converter = serde_json::json!({"type": "custom", "extension": tbgw_guests::PROBE,
                                           "extensionConfig": {"tag": "slow"}});
    if !limits.is_null() {
        converter["limits"] = limits;
    }
    let doc = serde_json::json!({
        "thingsboard": {"host": "127.0.0.1", "security": {"type": "accessToken", "accessToken": "T"}},
        "connectors": [{"type": "mqtt", "name": "M", "configuration": {
            "broker": {"host": "127.0.0.1"},
            "mapping": [{"topicFilter": "t/+", "converter": converter}]}}]
    });
    let mut d = Diagnostics::default();
    let config = tbgw::config::from_document(&doc, Path::new("/x/tb.yaml"), Path::new("/x"), &mut d).expect("config");
    assert!(d.is_ok(), "{:?}", d.errors);
    let runtime = tbgw::converters::runtime(None).expect("runtime");
    tbgw::service::load(&config, &runtime).map_err(|e| e.to_string()).expect("loaded")
}

fn busy(ms: u64) -> RawUplink {
    RawUplink {
        source: Source::mqtt("t/1"),
        device: None,
        payload: format!("busy:{ms}").into_bytes(),
        metadata: vec![],
        received_at: 0,
    }
}

#[test]
fn a_slow_converter_passes_with_a_larger_timeout_and_fails_with_the_default() {
    let defaults = load(serde_json::Value::Null);
    let converter = &defaults.routes[0].converter;
    assert_eq!(converter.info().limits.per_message.as_millis(), 10, "the default budget");
    // 150 ms times out at 110 ms, and passes when tried again alone with
    // four times the budget: a message that timed out on a starved machine
    // is not lost.
    let out = converter.worker().convert(&[busy(150)]).remove(0);
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(converter.info().call_errors, 1, "the first try timed out");
    // 600 ms is beyond the second try too.
    let out = converter.worker().convert(&[busy(600)]).remove(0);
    assert!(matches!(out, Err(MessageError::Call(CallError::Timeout { limit_ms: 440, .. }))), "{out:?}");

    let generous = load(serde_json::json!({"timeoutMs": 400}));
    let converter = &generous.routes[0].converter;
    assert_eq!(converter.info().limits.per_message.as_millis(), 400);
    // A batch of three gets three budgets (and the base): 1.3 s for 450 ms of work.
    let out = converter.worker().convert(&[busy(150), busy(150), busy(150)]);
    assert!(out.iter().all(Result::is_ok), "{out:?}");
}

#[test]
fn the_memory_limit_caps_the_instance() {
    let small = load(serde_json::json!({"memoryMib": 16}));
    let converter = &small.routes[0].converter;
    assert_eq!(converter.info().limits.memory_bytes, 16 << 20);
    let mut hog = busy(0);
    hog.payload = b"hog".to_vec();
    let out = converter.worker().convert(&[hog]).remove(0);
    assert!(
        matches!(out, Err(MessageError::Call(CallError::OutOfMemory { limit_bytes, .. })) if limit_bytes == 16 << 20),
        "{out:?}"
    );
}
