//! The `tbgw converter` commands as a user runs them: the real binary, its
//! output on stdout, its messages on stderr and its exit codes (0 all
//! converted, 1 some failed, 2 could not run).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run `tbgw` with `args` in a private compile cache.
fn tbgw(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tbgw"))
        .args(args)
        .current_dir(root())
        .env("TBGW_CACHE_DIR", cache)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tbgw")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_string_lossy().into_owned()
}

#[test]
fn the_readme_example_converts_and_reports_dropped_values() {
    let cache = tempfile::tempdir().expect("tempdir");
    let o = tbgw(
        cache.path(),
        &[
            "converter",
            "test",
            "json",
            "--config",
            "config/converters/json-uplink.json",
            "--input",
            "config/samples/sensor-data.jsonl",
            "--source",
            "sensor/SN-001/data",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0],
        r#"{"device":"SN-001","type":"thermometer","attributes":{"model":"T1000","firmware":"2.4.1"},"telemetry":[{"ts":1700000000000,"values":{"temperature":21.5,"humidity":48.0,"battery":97}}]}"#
    );
    assert!(
        stderr(&o).contains("line 3: dropped `temperature`: `${temp}` is `\"n/a\"`, not a double"),
        "{}",
        stderr(&o)
    );
    // The compiled converter went to the cache (with its checksum beside it).
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .expect("cache")
        .filter_map(|e| e.ok()?.path().extension().map(|x| x.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(cached.iter().filter(|x| *x == "cwasm").count(), 1, "{cached:?}");
    assert_eq!(cached.iter().filter(|x| *x == "sha256").count(), 1, "{cached:?}");
}

#[test]
fn failed_messages_exit_1_with_their_line_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "c.json", r#"{"deviceInfo":{"deviceNameExpression":"${id}"},"timeseries":"*"}"#);
    let input =
        write(dir.path(), "in.jsonl", "{\"id\":\"A\",\"t\":1}\n\nnot json\n{\"t\":2}\n{\"id\":\"B\",\"t\":3}\n");
    let o = tbgw(dir.path(), &["converter", "test", "json", "--config", &config, "--input", &input]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "{\"device\":\"A\",\"attributes\":{},\"telemetry\":[{\"values\":{\"id\":\"A\",\"t\":1}}]}\n\
         {\"device\":\"B\",\"attributes\":{},\"telemetry\":[{\"values\":{\"id\":\"B\",\"t\":3}}]}\n"
    );
    let err = stderr(&o);
    assert!(err.contains("line 3: payload is not valid JSON: expected ident at line 1 column 2"), "{err}");
    assert!(err.contains("line 4: device name: `${id}` is not in the message"), "{err}");
}

#[test]
fn one_pretty_printed_document_is_one_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "c.json", r#"{"deviceInfo":{"deviceNameExpression":"D"},"attributes":"*"}"#);
    let input = write(dir.path(), "in.json", "{\n  \"a\": 1,\n  \"b\": [1, 2]\n}\n");
    let o = tbgw(dir.path(), &["converter", "test", "json", "--config", &config, "--input", &input]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "{\"device\":\"D\",\"attributes\":{\"a\":1,\"b\":[1,2]},\"telemetry\":[]}\n");
}

#[test]
fn an_invalid_converter_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "c.json",
        r#"{"deviceInfo":{"deviceNameExpression":"D"},"timeseries":[{"type":"double","key":"t","valu":"${t}"}]}"#,
    );
    let input = write(dir.path(), "in.json", "{}");
    let o = tbgw(dir.path(), &["converter", "test", "json", "--config", &config, "--input", &input]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid config at `timeseries[0].value`: required; `valu` looks like a typo for it"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
}

#[test]
fn unusable_arguments_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "c.json", r#"{"deviceInfo":{"deviceNameExpression":"D"}}"#);
    let not_json = write(dir.path(), "bad.json", "{deviceInfo:");
    let input = write(dir.path(), "in.json", "{}");
    let empty = write(dir.path(), "empty.json", " \n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["converter", "test", "json", "--input", &input], "--config"),
        (vec!["converter", "test", "jsn", "--config", &config, "--input", &input], "unknown converter `jsn`"),
        (vec!["converter", "test", "json", "--config", &not_json, "--input", &input], "not valid JSON"),
        (vec!["converter", "test", "json", "--config", "/nonexistent.json", "--input", &input], "/nonexistent.json"),
        (vec!["converter", "test", "json", "--config", &config, "--input", &empty], "no messages"),
        (vec!["converter", "test", "json", "--config", &config, "--input", &input, "--metadata", "qos"], "KEY=VALUE"),
        (vec!["converter", "test", "json", "--config", &config, "--input", &input, "--source", "can:zz"], "CAN id"),
        (vec!["converter", "test", "/nonexistent/conv.wasm", "--config", &config, "--input", &input], "cannot read"),
    ];
    for (args, needle) in cases {
        let o = tbgw(dir.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: `{needle}` not in {}", stderr(&o));
    }
}

#[test]
fn downlink_requests_become_device_messages() {
    let cache = tempfile::tempdir().expect("tempdir");
    let o = tbgw(
        cache.path(),
        &[
            "converter",
            "test",
            "json",
            "--downlink",
            "--config",
            "config/converters/json-downlink.json",
            "--input",
            "config/samples/requests.jsonl",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["mqtt"]["topic"], "sensor/SN-001/rpc/getState/7");
    assert_eq!(lines[1]["mqtt"]["response"]["topic"], "sensor/SN-001/rpc/getState/7/response");
    assert_eq!(lines[2]["mqtt"]["payload"], "\"on\"");

    let dir = tempfile::tempdir().expect("tempdir");
    let input = write(dir.path(), "r.jsonl", "{\"device\":\"A\",\"data\":{\"id\":1}}\n{\"data\":{}}\n");
    let o = tbgw(
        cache.path(),
        &[
            "converter",
            "test",
            "json",
            "--downlink",
            "--config",
            "config/converters/json-downlink.json",
            "--input",
            &input,
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("line 1: no attributeUpdates entry for device `A` matches attribute `id`"), "{err}");
    assert!(err.contains("line 2: not a ThingsBoard request: `device` is missing"), "{err}");
}

#[test]
fn a_user_component_that_traps_fails_its_message_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "c.json", r#"{"tag":"probe"}"#);
    let input = write(dir.path(), "in.jsonl", "hello\ntrap\nworld\n");
    let o = tbgw(
        dir.path(),
        &["converter", "test", tbgw_guests::PROBE, "--config", &config, "--input", &input, "--received-at", "5"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains(r#""telemetry":[{"ts":5,"values":{"payload":"hello"}}]"#), "{out}");
    let err = stderr(&o);
    assert!(err.contains("line 2: converter `tbgw_probe` trapped: "), "{err}");
    assert!(err.contains("probe: asked to trap"), "{err}");
}

#[test]
fn the_wrong_direction_gets_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "c.json", "{}");
    let input = write(dir.path(), "in.json", "{}");
    let o = tbgw(
        dir.path(),
        &["converter", "test", tbgw_guests::PROBE, "--downlink", "--config", &config, "--input", &input],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("implements the uplink-converter world"), "{}", stderr(&o));
    assert!(stderr(&o).contains("drop --downlink"), "{}", stderr(&o));
}

#[test]
fn inspect_names_the_world_and_the_imports() {
    let cache = tempfile::tempdir().expect("tempdir");
    let o = tbgw(cache.path(), &["converter", "inspect", tbgw_guests::PROBE]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("implements: uplink-converter (tbgw:converter@0.2.0, supported"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("wasi:filesystem/preopens@") && l.contains("denied: no directories")),
        "{out}"
    );

    // A component built against 0.1.0 is served too.
    let o = tbgw(cache.path(), &["converter", "inspect", tbgw_guests::PROBE_V0_1]);
    assert!(stdout(&o).contains("implements: uplink-converter (tbgw:converter@0.1.0, supported"), "{}", stdout(&o));

    let o = tbgw(cache.path(), &["converter", "inspect", "json", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let docs: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let worlds: Vec<&str> = docs.iter().map(|d| d["implements"][0]["world"].as_str().unwrap_or("")).collect();
    assert_eq!(worlds, ["uplink-converter", "downlink-converter"]);

    let dir = tempfile::tempdir().expect("tempdir");
    let junk = write(dir.path(), "junk.wasm", "junk");
    let o = tbgw(cache.path(), &["converter", "inspect", &junk]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not a valid WebAssembly component"), "{}", stderr(&o));
}

/// The built-in `modbus` converter on polled register blocks, given in hex.
#[test]
fn the_modbus_converter_decodes_register_blocks() {
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    // Registers 0-2: temperature 215 (/10), energy 0x00010002 with LITTLE
    // word order; then a block too short for what it claims.
    let input = write(dir.path(), "blocks.hex", "00d7 0002 0001\n00d7\n");
    let o = tbgw(
        cache.path(),
        &[
            "converter",
            "test",
            "modbus",
            "--config",
            "config/converters/modbus-uplink.json",
            "--input",
            &input,
            "--hex",
            "--source",
            "registers:1:3:0:3",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "the short block fails: {}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        r#"{"device":"Meter A","type":"meter","attributes":{},"telemetry":[{"values":{"temperature":21.5,"energy":65538}}]}"#
    );
    assert!(stderr(&o).contains("line 2: ") && stderr(&o).contains("has 2 bytes, expected 6"), "{}", stderr(&o));
    // Not hex: the line and column.
    let bad = write(dir.path(), "bad.hex", "00zz\n");
    let o = tbgw(
        cache.path(),
        &["converter", "test", "modbus", "--config", "config/converters/modbus-uplink.json", "--input", &bad, "--hex"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 1: `z` at column 3 is not a hex digit"), "{}", stderr(&o));
}

/// The built-in `ble` converter on characteristic values, given in hex,
/// with the Python gateway's sample config: both keys of the characteristic
/// (named in its 16-bit form) from each value.
#[test]
fn the_ble_converter_reads_characteristic_values() {
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write(dir.path(), "values.hex", "010203\n2a\n");
    let o = tbgw(
        cache.path(),
        &[
            "converter",
            "test",
            "ble",
            "--config",
            "config/ble.json",
            "--input",
            &input,
            "--hex",
            "--source",
            "characteristic:2A00",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let device = r#"{"device":"Temperature and humidity sensor","attributes":"#;
    assert_eq!(
        stdout(&o).trim(),
        format!(
            "{device}{{\"name\":\"12cm 3A\",\"values\":\"All values: 123\"}},\"telemetry\":[]}}\n\
             {device}{{\"name\":\"42cm A\",\"values\":\"All values: 42\"}},\"telemetry\":[]}}"
        )
    );
}
