//! The built-in `json` converters against the cases in
//! `guest-converters/json/cases/`: each case is a converter config, a
//! message (or a ThingsBoard request) and what ThingsBoard should receive,
//! taken from the ThingsBoard gateway's documented examples. Every case runs
//! through the real WebAssembly component.

use serde_json::{Value, json};
use std::path::PathBuf;
use tbgw_core::{RawUplink, Source};
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, LoadError, MessageError, Runtime, RuntimeConfig};

fn cases(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guest-converters/json/cases").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<Vec<Value>>(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig { max_instances: 16, ..RuntimeConfig::default() }).expect("runtime")
}

fn spec(wasm: &'static [u8], config: &Value) -> ConverterSpec {
    ConverterSpec {
        component: ComponentSource::Builtin { name: "json", wasm },
        config: config.to_string(),
        limits: Limits::default(),
    }
}

fn payload(case: &Value) -> Vec<u8> {
    if let Some(text) = case["payload_text"].as_str() {
        return text.as_bytes().to_vec();
    }
    if let Some(hex) = case["payload_hex"].as_str() {
        return (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
    }
    serde_json::to_vec(&case["payload"]).expect("payload")
}

/// Check a load error against `config_error: {field, message}` (message: a substring).
fn check_config_error(case: &Value, err: Option<LoadError>) -> Result<(), String> {
    let want = &case["config_error"];
    match err {
        Some(LoadError::Config { field, message, .. }) => {
            if field.as_deref() != want["field"].as_str() {
                return Err(format!("field {field:?}, expected {}", want["field"]));
            }
            let needle = want["message"].as_str().unwrap_or_default();
            if !message.contains(needle) {
                return Err(format!("message `{message}` lacks `{needle}`"));
            }
            Ok(())
        }
        Some(other) => Err(format!("expected a config error, got {other}")),
        None => Err("expected a config error, the config loaded".into()),
    }
}

/// Match a conversion result against the case's `error` (exact text), if it
/// has one; otherwise hand back the output to compare.
fn expect_output<T: std::fmt::Debug>(result: Result<T, MessageError>, case: &Value) -> Result<Option<T>, String> {
    match (result, case.get("error")) {
        (Err(MessageError::Rejected { message, .. }), Some(want)) if want.as_str() == Some(message.as_str()) => {
            Ok(None)
        }
        (Err(e), Some(want)) => Err(format!("error `{e}`, expected {want}")),
        (Err(e), None) => Err(format!("failed: {e}")),
        (Ok(out), Some(want)) => Err(format!("expected the error {want}, got {out:?}")),
        (Ok(out), None) => Ok(Some(out)),
    }
}

fn run_cases(file: &str, mut run: impl FnMut(&Value) -> Result<(), String>) -> usize {
    let cases = cases(file);
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?");
        if let Err(e) = run(case) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    cases.len()
}

#[test]
fn uplink_cases() {
    let rt = runtime();
    // Keeps the compiled component loaded across cases.
    let _keep =
        rt.uplink("keep", spec(tbgw_guests::JSON_UPLINK, &json!({"deviceInfo": {"deviceNameExpression": "x"}})));
    let count = run_cases("uplink.json", |case| {
        let loaded = rt.uplink("json", spec(tbgw_guests::JSON_UPLINK, &case["config"]));
        if case.get("config_error").is_some() {
            return check_config_error(case, loaded.err());
        }
        let converter = loaded.map_err(|e| e.to_string())?;
        let msg = RawUplink {
            source: Source::mqtt(case["topic"].as_str().unwrap_or_default()),
            device: None,
            payload: payload(case),
            metadata: vec![],
            received_at: 1_700_000_999_999,
        };
        let Some(out) = expect_output(converter.worker().convert(&[msg]).remove(0), case)? else {
            return Ok(());
        };
        let got: Vec<Value> = out
            .updates
            .iter()
            .map(|u| serde_json::from_str(&tbgw_core::device_update_json(u)).expect("rendered JSON"))
            .collect();
        if Value::Array(got.clone()) != case["expect"] {
            return Err(format!("got {}\n  expected {}", Value::Array(got), case["expect"]));
        }
        let dropped: Vec<Value> = out.dropped.iter().map(|d| json!({"key": d.key, "reason": d.reason})).collect();
        let want = case.get("dropped").cloned().unwrap_or(json!([]));
        if Value::Array(dropped.clone()) != want {
            return Err(format!("dropped {}\n  expected {want}", Value::Array(dropped)));
        }
        Ok(())
    });
    assert!(count >= 30, "the issue asks for at least 30 cases, found {count}");
}

#[test]
fn downlink_cases() {
    let rt = runtime();
    let _keep = rt.downlink("keep", spec(tbgw_guests::JSON_DOWNLINK, &json!({})));
    run_cases("downlink.json", |case| {
        let loaded = rt.downlink("json", spec(tbgw_guests::JSON_DOWNLINK, &case["config"]));
        if case.get("config_error").is_some() {
            return check_config_error(case, loaded.err());
        }
        let converter = loaded.map_err(|e| e.to_string())?;
        let request = tbgw_thingsboard::codec::parse_request(case["request"].to_string().as_bytes())
            .map_err(|e| format!("bad request in the case: {e}"))?;
        let Some(out) = expect_output(converter.worker().convert(&[request]).remove(0), case)? else {
            return Ok(());
        };
        let got: Vec<Value> = out
            .iter()
            .map(|m| serde_json::from_str(&tbgw_core::downlink_message_json(m)).expect("rendered JSON"))
            .collect();
        if Value::Array(got.clone()) != case["expect"] {
            return Err(format!("got {}\n  expected {}", Value::Array(got), case["expect"]));
        }
        Ok(())
    });
}
