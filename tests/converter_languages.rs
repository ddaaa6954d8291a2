//! Converters in Rust, Python and JavaScript, as a user makes them: a project
//! from `tbgw converter new`, its unit tests on the language's own runtime,
//! its `build.sh` (pinned tools from the registries), its `test.sh` (the
//! component in `tbgw converter test`, against the expected output); the
//! same mapping in the three languages giving the same output, types
//! included; and a converter swapped from Python to JavaScript in a running
//! gateway under load, with no message lost.

#[path = "e2e_common/mod.rs"]
mod common;

use common::{Gateway, gateway_yaml, shared_cache};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tbgw::templates::Lang;
use tbgw_test_support::converter_projects::{build, new_project, run, sensor_example, unit_tests};
use tbgw_test_support::{Collector, Mosquitto};

fn tbgw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tbgw"))
}

/// Where the tools and the built projects live across runs.
fn tools() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("converter-tools")
}

/// The sensor example in `lang`, its project made by the binary.
fn example(lang: Lang) -> (PathBuf, PathBuf) {
    sensor_example(&tools(), lang.dir(), lang.logic(), |parent, name| {
        new_project(tbgw(), parent, name, lang.dir(), false)
    })
}

/// The project's `test.sh`, with this build's tbgw and the run's shared
/// component cache.
fn test_sh(project: &Path) -> String {
    run(
        Command::new("bash")
            .arg(project.join("test.sh"))
            .current_dir(project)
            .env("TBGW", tbgw())
            .env("TBGW_CACHE_DIR", shared_cache()),
        &format!("{}/test.sh", project.display()),
    )
}

/// The Python and JavaScript helpers' own tests (`guest-converters/template-tests`).
#[test]
fn the_helpers_pass_their_own_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-converters/template-tests");
    let python = run(Command::new("python3").args(["-m", "unittest", "-v", "test_tbgw"]).current_dir(&dir), "python3");
    assert!(python.contains("Ran 3 tests") && python.contains("OK"), "{python}");
    let node = run(Command::new("node").arg("--test").current_dir(&dir), "node --test");
    assert!(node.contains("# pass 5") && node.contains("# fail 0"), "{node}");
}

#[test]
fn fresh_projects_in_every_language_build_and_pass_their_tests() {
    let parent = tempfile::tempdir().expect("tempdir");
    for lang in Lang::ALL {
        for downlink in [false, true] {
            let name = format!("my-{}-{}", lang.dir(), if downlink { "downlink" } else { "uplink" });
            let project = new_project(tbgw(), parent.path(), &name, lang.dir(), downlink);
            let tests = unit_tests(&tools(), &project);
            // The template's own tests ran (and passed: `run` checks the exit code).
            let ran = ["Ran 2 tests", "# pass 2", "test result: ok. 1 passed"].iter().any(|s| tests.contains(s));
            assert!(ran, "{name}: {tests}");
            build(&tools(), &project);
            let out = test_sh(&project);
            assert!(out.contains("ok: 3 outputs as expected"), "{name}: {out}");
            // The one bad line of the sample fails with its reason, from the
            // converter's own words.
            let reasons = std::fs::read_to_string(project.join("err.txt")).expect("err.txt");
            let expected = if downlink { "line 4: " } else { "line 3: " };
            let failed: Vec<&str> = reasons.lines().filter(|l| l.starts_with(expected)).collect();
            assert_eq!(failed.len(), 1, "{name}: {reasons}");
            let words = if downlink { "must be an object" } else { "JSON" };
            assert!(failed[0].contains(words), "{name}: {reasons}");
        }
    }
    let again = Command::new(tbgw())
        .args(["converter", "new", "my-rust-uplink", "--lang", "rust", "--dir"])
        .arg(parent.path())
        .output()
        .expect("tbgw");
    assert_eq!(again.status.code(), Some(2), "an existing project is not overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn the_sensor_example_gives_the_same_output_in_rust_python_and_javascript() {
    let mut outputs = BTreeMap::new();
    for lang in Lang::ALL {
        let (project, _) = example(lang);
        let out = test_sh(&project);
        assert!(out.contains("outputs as expected"), "{lang:?}: {out}");
        outputs.insert(lang.dir(), std::fs::read_to_string(project.join("out.jsonl")).expect("out.jsonl"));
        let reasons = std::fs::read_to_string(project.join("err.txt")).expect("err.txt");
        // What is left out is said the same way in the three languages.
        let dropped: Vec<&str> = reasons.lines().filter(|l| l.contains(": dropped ")).collect();
        assert_eq!(dropped, ["line 3: dropped `battery`: null"], "{lang:?}: {reasons}");
        assert!(reasons.contains("line 7: ") && reasons.contains("missing `serial`"), "{lang:?}: {reasons}");
    }
    let rust = &outputs["rust"];
    for (lang, out) in &outputs {
        assert_eq!(out, rust, "{lang} and rust differ");
    }
    // Types as ThingsBoard stores them: a whole double stays a double, an
    // integer an integer, an object JSON; text keeps its characters.
    assert!(rust.contains(r#""temperature":19.0,"humidity":51"#), "{rust}");
    assert!(rust.contains(r#""temperature":100.0"#), "1e2 is a double: {rust}");
    assert!(rust.contains("Zürich Halle 2") && rust.contains("Kühlraum ❄"), "{rust}");
}

/// A report of device `d`, reading `seq`, as the example maps it.
fn report(d: usize, seq: usize) -> String {
    format!(
        r#"{{"serial": "TH-{d:02}", "model": "TH-200", "readings": {{"seq": {seq}, "temperature": 19.0, "door_open": false}}}}"#
    )
}

#[test]
fn a_converter_swapped_from_python_to_javascript_under_load_loses_nothing() {
    let (_, python) = example(Lang::Python);
    let (_, js) = example(Lang::Js);
    let (tb, source) = (Mosquitto::start_new(), Mosquitto::start_new());
    let thingsboard = Collector::connect(tb.port, "tb-lang-swap", &["v1/gateway/#"]);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&python, dir.path().join("sensor.wasm")).expect("the Python build");
    let mqtt = format!(
        r#"{{"broker": {{"host": "127.0.0.1", "port": {}, "clientId": "gw-lang-swap", "version": 4, "cleanSession": false,
                        "security": {{"type": "anonymous"}}}},
            "mapping": [{{"topicFilter": "sensors/+/data", "subscriptionQos": 1,
                          "converter": {{"type": "custom", "extension": "sensor.wasm",
                                         "extensionConfig": {{"deviceType": "thermometer"}}}}}}]}}"#,
        source.port
    );
    let yaml = gateway_yaml(tb.port, dir.path(), 60) + "  watchConverters: 1\n";
    let mut gw = Gateway::start(dir.path(), &yaml, &mqtt);
    let devices = Collector::connect(source.port, "sensors", &[]);
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                devices.publish(&format!("sensors/{}/data", n % 10), report(n % 10, n));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let before_swap = sent.load(Ordering::Relaxed);
    std::fs::copy(&js, dir.path().join("sensor.wasm.new")).expect("the JavaScript build");
    std::fs::rename(dir.path().join("sensor.wasm.new"), dir.path().join("sensor.wasm")).expect("rename over");
    gw.wait_for_log(Duration::from_secs(90), "the JavaScript version swapped in", |log| log.contains("swapped in"));
    let at_swap = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    let total = sent.load(Ordering::Relaxed);
    // Every reading, once or more (QoS 1), typed as the converter said.
    let seen = |received: &[tbgw_test_support::Received]| -> BTreeSet<i64> {
        received
            .iter()
            .filter(|m| m.topic == "v1/gateway/telemetry")
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
            .flat_map(|doc| doc.as_object().cloned().unwrap_or_default().into_values())
            .flat_map(|readings| readings.as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["values"]["seq"].as_i64())
            .collect()
    };
    let got = thingsboard.wait_until(Duration::from_secs(60), "every reading delivered", |r| seen(r).len() >= total);
    let delivered = seen(&got);
    let missing: Vec<usize> = (0..total).filter(|n| !delivered.contains(&(*n as i64))).collect();
    assert!(missing.is_empty(), "{} of {total} readings lost across the swap: {missing:?}", missing.len());
    assert!(
        before_swap > 100 && total > at_swap + 100,
        "readings flowed before and after the swap: {before_swap}, {at_swap}, {total}"
    );
    for m in got.iter().filter(|m| m.topic == "v1/gateway/telemetry") {
        let text = String::from_utf8_lossy(&m.payload);
        assert!(text.contains(r#""temperature":19.0"#) && text.contains(r#""door_open":false"#), "types kept: {text}");
    }
    let attributes = got.iter().filter(|m| m.topic == "v1/gateway/attributes").count();
    assert!(attributes > 0, "the model attribute arrived");
    assert_eq!(gw.stop().code(), Some(0), "{}", gw.log());
}
