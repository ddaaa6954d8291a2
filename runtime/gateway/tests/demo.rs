//! `tbgw demo`, the README's first command: the embedded broker, the device
//! simulator and the real gateway, checked from ThingsBoard's side.

use std::time::Duration;
use tbgw::demo::devices::{device_name, reading};
use tbgw::demo::{Demo, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thingsboard_receives_every_device_reading_with_its_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = DemoOptions {
        devices: 10,
        interval: Duration::from_millis(50),
        data_dir: dir.path().to_owned(),
        ..DemoOptions::default()
    };
    let demo = Demo::start(&options).await.expect("the demo starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while demo.view.snapshot().readings < 200 {
        assert!(tokio::time::Instant::now() < deadline, "too few readings: {:?}", demo.view.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = demo.stop(Duration::from_secs(30)).await.expect("an orderly stop");
    let seen = end.seen;
    assert_eq!(seen.readings, end.published, "every published message arrives once");
    assert_eq!(seen.malformed, 0);
    assert_eq!(seen.devices.len(), 10, "{:?}", seen.devices.keys());
    for d in 0..10 {
        let name = device_name(d);
        let dev = &seen.devices[&name];
        assert!(dev.connected, "{name} announced with v1/gateway/connect");
        assert_eq!(dev.device_type.as_deref(), Some("thermometer"), "{name}: the profile of config/mqtt.json");
        assert_eq!(dev.attributes.get("model"), Some(&serde_json::json!(format!("TH-{}", d % 3))));
        let (_, values) = dev.last.as_ref().expect("a reading");
        let (t, h) =
            (values["temperature"].as_f64().expect("temperature"), values["humidity"].as_f64().expect("humidity"));
        assert!((0..100).any(|tick| reading(d, tick) == (t, h)), "{name}: ({t}, {h}) is not a value it published");
    }
}

#[test]
fn the_demo_command_runs_and_loses_nothing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tbgw"))
        .args(["demo", "--seconds", "3", "--devices", "5", "--interval-ms", "100"])
        .output()
        .expect("run tbgw demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("5 devices connected"), "{stdout}");
    assert!(stdout.contains("nothing lost"), "{stdout}");
}
