//! Loading converters: every way a component or its config can be wrong is
//! refused at load time with an error that names the converter and the
//! cause, and compiled components are cached on disk across restarts.

mod common;

use common::{batch, json_downlink, json_uplink, probe, runtime, runtime_with_cache};
use std::sync::Arc;
use std::time::Duration;
use tbgw_core::{Direction, DownlinkMessage, DownlinkRequest, RpcRequest, Value};
use tbgw_wasm::{CallError, ComponentSource, ConverterSpec, ImportStatus, Limits, LoadError};

fn bytes(label: &str, wasm: &[u8]) -> ConverterSpec {
    ConverterSpec {
        component: ComponentSource::Bytes { label: label.into(), wasm: Arc::from(wasm) },
        config: "{}".into(),
        limits: Limits::default(),
    }
}

#[test]
fn a_config_refused_by_create_names_the_field() {
    let err = runtime().uplink("p", probe(r#"{"fail":true}"#)).err().expect("refused");
    match &err {
        LoadError::Config { converter, field, message } => {
            assert_eq!(&**converter, "p");
            assert_eq!(field.as_deref(), Some("fail"));
            assert_eq!(message, "asked to fail");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), "converter `p`: invalid config at `fail`: asked to fail");
}

#[test]
fn the_json_converter_names_the_bad_field() {
    let err = runtime()
        .uplink(
            "json-a",
            json_uplink(
                r#"{"deviceInfo":{"deviceNameExpression":"x"},"timeseries":[{"type":"dbl","key":"t","value":"${t}"}]}"#,
            ),
        )
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "converter `json-a`: invalid config at `timeseries[0].type`: unknown type `dbl`; expected one of \
         string, int, integer, long, double, float, bool, boolean, json, raw"
    );
}

#[test]
fn a_loop_in_create_times_out_at_load() {
    let mut spec = probe(r#"{"spin_in_create":true}"#);
    spec.limits.create_timeout = Duration::from_millis(100);
    let err = runtime().uplink("p", spec).err().expect("refused");
    assert!(matches!(&err, LoadError::Create { source: CallError::Timeout { limit_ms: 100, .. }, .. }), "{err:?}");
}

#[test]
fn a_downlink_component_is_not_an_uplink_converter() {
    let err = runtime().uplink("d", bytes("down.wasm", tbgw_guests::JSON_DOWNLINK)).err().expect("refused");
    assert_eq!(
        err.to_string(),
        "converter `d`: down.wasm does not implement the uplink-converter world: \
         it implements the downlink-converter world (tbgw:converter@0.2.0)"
    );
    let err = runtime().downlink("u", bytes("up.wasm", tbgw_guests::JSON_UPLINK)).err().expect("refused");
    assert!(err.to_string().contains("it implements the uplink-converter world"), "{err}");
}

#[test]
fn garbage_is_not_a_component() {
    let err = runtime().uplink("g", bytes("junk.wasm", b"\0asm not really")).err().expect("refused");
    assert!(matches!(&err, LoadError::Compile { .. }), "{err:?}");
    assert!(err.to_string().starts_with("converter `g`: junk.wasm is not a valid WebAssembly component: "), "{err}");
}

#[test]
fn a_missing_file_is_named() {
    let spec = ConverterSpec {
        component: ComponentSource::File("/nonexistent/conv.wasm".into()),
        config: "{}".into(),
        limits: Limits::default(),
    };
    let err = runtime().uplink("f", spec).err().expect("refused");
    assert!(err.to_string().starts_with("converter `f`: cannot read /nonexistent/conv.wasm: "), "{err}");
}

#[test]
fn a_memory_limit_above_the_ceiling_is_refused() {
    let mut spec = probe("{}");
    spec.limits.memory_bytes = 1 << 40;
    let err = runtime().uplink("m", spec).err().expect("refused");
    assert!(matches!(err, LoadError::Limits { .. }), "{err:?}");
}

#[test]
fn components_compile_once_per_process_and_once_per_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let rt = runtime_with_cache(Some(dir.path().to_owned()));
        let a = rt.uplink("a", probe("{}")).expect("a");
        let b = rt.uplink("b", probe(r#"{"tag":"B"}"#)).expect("b");
        let stats = rt.compile_stats();
        assert_eq!((stats.compiled, stats.from_memory, stats.from_disk_cache), (1, 1, 0));
        assert_eq!(a.info().sha256, b.info().sha256);
    }
    let cached: Vec<_> = artifacts(dir.path());
    assert_eq!(cached.len(), 1, "one compiled artifact");

    // A restart loads from disk instead of compiling.
    let rt = runtime_with_cache(Some(dir.path().to_owned()));
    let c = rt.uplink("a", probe("{}")).expect("a");
    assert_eq!(rt.compile_stats().from_disk_cache, 1);
    assert_eq!(rt.compile_stats().compiled, 0);
    assert!(c.worker().try_convert(&batch(&["x"])).expect("call")[0].is_ok());
}

/// The compiled artifacts in a cache directory (each has its checksum beside it).
fn artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let files: Vec<_> = std::fs::read_dir(dir).expect("read").map(|e| e.expect("entry").path()).collect();
    let artifacts: Vec<_> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "cwasm")).cloned().collect();
    for a in &artifacts {
        assert!(files.contains(&a.with_extension("sha256")), "{} has its checksum: {files:?}", a.display());
    }
    artifacts
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_not_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(runtime_with_cache(Some(dir.path().to_owned())).uplink("a", probe("{}")).expect("a"));
    let entry = artifacts(dir.path()).pop().expect("the compiled artifact");
    let mut body = std::fs::read(&entry).expect("read");
    let mid = body.len() / 2;
    body[mid] ^= 0xff;
    std::fs::write(&entry, &body).expect("write");

    let rt = runtime_with_cache(Some(dir.path().to_owned()));
    let c = rt.uplink("a", probe("{}")).expect("loads anyway");
    assert_eq!(rt.compile_stats().compiled, 1);
    assert!(c.worker().try_convert(&batch(&["x"])).expect("call")[0].is_ok());
}

#[test]
fn inspect_reports_world_version_and_imports() {
    let i =
        runtime().inspect(&ComponentSource::Builtin { name: "json", wasm: tbgw_guests::JSON_UPLINK }).expect("inspect");
    assert_eq!(i.worlds, vec![(Direction::Uplink, "0.2.0".to_owned())]);
    assert!(i.exports.contains(&"tbgw:converter/uplink@0.2.0".to_owned()), "{:?}", i.exports);
    let status = |name: &str| i.imports.iter().find(|imp| imp.name.starts_with(name)).map(|imp| imp.status);
    assert!(matches!(status("tbgw:converter/log@"), Some(ImportStatus::Provided(_))));
    assert!(i.imports.iter().all(|imp| imp.status != ImportStatus::Missing), "{:?}", i.imports);
    assert_eq!(i.sha256.len(), 64);
}

#[test]
fn the_downlink_json_converter_runs_through_the_runtime() {
    let c = runtime()
        .downlink(
            "rpc",
            json_downlink(
                r#"{"serverSideRpc":[{"type":"twoWay","deviceNameFilter":".*","methodFilter":"echo",
                    "requestTopicExpression":"d/${deviceName}/req/${requestId}",
                    "responseTopicExpression":"d/${deviceName}/res/${requestId}","responseTimeout":5000,
                    "valueExpression":"${params}"}]}"#,
            ),
        )
        .expect("load");
    let request = DownlinkRequest::Rpc(RpcRequest {
        device: "A".into(),
        id: 42,
        method: "echo".into(),
        params: r#"{"x":1}"#.into(),
    });
    let mut w = c.worker();
    let out = w.convert(&[request]).remove(0).expect("converted");
    let [DownlinkMessage::Mqtt(p)] = &out[..] else { panic!("one MQTT publish: {out:?}") };
    assert_eq!((p.topic.as_str(), p.payload.as_slice()), ("d/A/req/42", br#"{"x":1}"#.as_slice()));
    let response = p.response.as_ref().expect("a two-way RPC waits for its answer");
    assert_eq!((response.topic.as_str(), response.timeout_ms), ("d/A/res/42", 5000));
}

#[test]
fn dropped_values_are_counted() {
    let c = runtime()
        .uplink(
            "json",
            json_uplink(
                r#"{"deviceInfo":{"deviceNameExpression":"D"},
                    "timeseries":[{"type":"double","key":"t","value":"${t}"},{"type":"double","key":"h","value":"${h}"}]}"#,
            ),
        )
        .expect("load");
    let results = c.worker().convert(&batch(&[r#"{"t":1}"#, r#"{"h":2}"#, r#"{"t":3,"h":4}"#]));
    assert!(results.iter().all(Result::is_ok));
    let info = c.info();
    assert_eq!((info.messages, info.dropped_values, info.message_errors), (3, 2, 0));
}

/// A batch's key table serves the instance from batch to batch, and starts
/// afresh when keys made of the messages grow it past its bound: every
/// message keeps its own keys either way.
#[test]
fn keys_stay_right_across_batches_however_many_there_are() {
    let c = runtime()
        .uplink("json", json_uplink(r#"{"deviceInfo":{"deviceNameExpression":"D"},"timeseries":"*"}"#))
        .expect("load");
    let mut w = c.worker();
    let texts: Vec<String> = (0..3000).map(|i| format!(r#"{{"k{i}": {i}, "common": {i}}}"#)).collect();
    for (n, chunk) in texts.chunks(100).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for (j, (text, result)) in chunk.iter().zip(w.convert(&batch(&refs))).enumerate() {
            let out = result.expect("converted");
            let values = &out.updates[0].telemetry[0].values;
            let i = (n * 100 + j) as i64;
            assert_eq!(values.len(), 2, "{text}");
            assert_eq!((values[0].key.as_str(), &values[0].value), (format!("k{i}").as_str(), &Value::Int(i)));
            assert_eq!((values[1].key.as_str(), &values[1].value), ("common", &Value::Int(i)));
        }
    }
}
