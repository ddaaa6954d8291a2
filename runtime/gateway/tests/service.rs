//! The service in-process: built from a config, one connector stopped alone
//! while the other goes on, and the status snapshot saying so; the HTTP
//! listener's metrics, health and readiness, and its status page as
//! headless Chromium renders it.

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tbgw::service::Gateway;
use tbgw_core::config::Diagnostics;
use tbgw_test_support::{Collector, Mosquitto, Received};

fn mqtt(port: u16, client_id: &str) -> serde_json::Value {
    json!({
        "broker": {"host": "127.0.0.1", "port": port, "clientId": client_id, "version": 4, "cleanSession": false},
        "mapping": [{"topicFilter": "sensor/+/data", "converter": {"type": "json",
            "deviceInfo": {"deviceNameExpressionSource": "topic", "deviceNameExpression": "(?<=sensor/)(.*?)(?=/data)"},
            "timeseries": [{"type": "integer", "key": "n", "value": "${n}"}]}}]
    })
}

/// The readings of `device` ThingsBoard received.
fn readings(received: &[Received], device: &str) -> Vec<i64> {
    received
        .iter()
        .filter(|m| m.topic == "v1/gateway/telemetry")
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .flat_map(|doc| doc[device].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["values"]["n"].as_i64())
        .collect()
}

#[test]
fn one_connector_stops_alone_and_the_status_says_so() {
    let (tb_broker, a, b) = (Mosquitto::start_new(), Mosquitto::start_new(), Mosquitto::start_new());
    let tb = Collector::connect(tb_broker.port, "tb-service", &["v1/gateway/#"]);
    let doc = json!({
        "thingsboard": {"host": "127.0.0.1", "port": tb_broker.port,
                        "security": {"type": "accessToken", "accessToken": "T"}, "statistics": {"enable": false}},
        "storage": {"type": "memory"},
        "connectors": [
            {"type": "mqtt", "name": "A", "configuration": mqtt(a.port, "gw-a")},
            {"type": "mqtt", "name": "B", "configuration": mqtt(b.port, "gw-b")}
        ]
    });
    let mut d = Diagnostics::default();
    let config = tbgw::config::from_document(&doc, Path::new("/x/tb.yaml"), Path::new("/x"), &mut d).expect("config");
    assert!(d.is_ok(), "{:?}", d.errors);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut gw = rt.block_on(Gateway::build(config)).expect("built");
    let names: Vec<String> = gw.registry().snapshot().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["A/json", "B/json"]);

    let (dev_a, dev_b) = (Collector::connect(a.port, "dev-a", &[]), Collector::connect(b.port, "dev-b", &[]));
    let wait_connected = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !gw.status().connectors.iter().all(|c| c.connected) {
            assert!(std::time::Instant::now() < deadline, "{what}: not connected");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_connected("both connectors");
    // Their subscriptions are taken once connected and subscribed: wait for
    // a first reading from each before counting.
    tb.wait_until(Duration::from_secs(20), "a first reading from each", |r| {
        dev_a.publish("sensor/DA/data", r#"{"n": 0}"#);
        dev_b.publish("sensor/DB/data", r#"{"n": 0}"#);
        !readings(r, "DA").is_empty() && !readings(r, "DB").is_empty()
    });
    assert!(rt.block_on(gw.stop_connector("A")));
    assert!(!rt.block_on(gw.stop_connector("nobody")));
    for n in 1..=5 {
        dev_a.publish("sensor/DA/data", format!(r#"{{"n": {n}}}"#));
        dev_b.publish("sensor/DB/data", format!(r#"{{"n": {n}}}"#));
    }
    let got = tb.wait_until(Duration::from_secs(20), "B's readings", |r| readings(r, "DB").contains(&5));
    assert!(!readings(&got, "DA").contains(&1), "A stopped: its devices' messages stay with their broker");

    let status = gw.status();
    let (sa, sb) = (&status.connectors[0], &status.connectors[1]);
    assert_eq!((sa.name.as_str(), sa.connected, sb.name.as_str(), sb.connected), ("A", false, "B", true));
    assert!(sb.received >= 6 && sb.converted >= 6 && sb.stored >= 6, "{sb:?}");
    assert_eq!(sb.routes, ["B/json"]);
    let stats = status.statistics();
    assert_eq!(stats["AConnected"], json!(false), "{stats}");
    assert!(stats["BEventsProduced"].as_u64() >= Some(6), "{stats}");
    let converters = status.converters();
    assert_eq!(converters[1]["name"], "B/json", "{converters}");
    assert_eq!(converters[1]["path"], "connectors[1].configuration.mapping[0].converter", "{converters}");
    assert!(converters[1]["messages"].as_u64() >= Some(6), "{converters}");
    rt.block_on(gw.stop());
}

/// `GET path` on 127.0.0.1:`port`: (status code, body).
fn get(port: u16, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send the request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    let code = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// The value of the sample `name` with `labels` (all of them) in a scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        },
    )
}

/// The status page as headless Chromium (Debian's `chromium`) renders it:
/// the DOM after rendering, and a screenshot (PNG) of a 1280x900 window.
fn chromium(port: u16) -> (String, Vec<u8>) {
    let profile = tempfile::tempdir().expect("tempdir");
    let shot = profile.path().join("page.png");
    let url = format!("http://127.0.0.1:{port}/");
    let run = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,900"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium (Debian's `chromium` package; .ci/run installs it)");
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = run(&["--dump-dom".as_ref()]);
    run(&[format!("--screenshot={}", shot.display()).as_ref()]);
    (dom, std::fs::read(&shot).expect("the screenshot"))
}

/// The text of the first `<td class="{class}">` of the row that starts with `row`.
fn cell<'a>(dom: &'a str, row: &str, class: &str) -> Option<&'a str> {
    let rest = &dom[dom.find(row)?..];
    let rest = &rest[..rest.find("</tr>")?];
    let start = rest.find(&format!("<td class=\"{class}\">"))? + class.len() + 13;
    Some(&rest[start..start + rest[start..].find("</td>")?])
}

#[test]
fn the_http_listener_serves_metrics_health_readiness_and_a_status_page() {
    let (mut tb_broker, a) = (Mosquitto::start_new(), Mosquitto::start_new());
    let tb = Collector::connect(tb_broker.port, "tb-http", &["v1/gateway/#"]);
    let port = tbgw_test_support::free_port();
    let doc = json!({
        "thingsboard": {"host": "127.0.0.1", "port": tb_broker.port,
                        "security": {"type": "accessToken", "accessToken": "T"}, "statistics": {"enable": false}},
        "storage": {"type": "memory"},
        "connectors": [{"type": "mqtt", "name": "A", "configuration": mqtt(a.port, "gw-http")}],
        "tbgw": {"http": {"listen": format!("127.0.0.1:{port}")}}
    });
    let mut d = Diagnostics::default();
    let config = tbgw::config::from_document(&doc, Path::new("/x/tb.yaml"), Path::new("/x"), &mut d).expect("config");
    assert!(d.is_ok(), "{:?}", d.errors);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut gw = rt.block_on(Gateway::build(config)).expect("built");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            gw.run(&shutdown).await;
            gw.stop().await;
        })
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(get(port, "GET", "/healthz"), (200, "ok\n".into()));
    wait_for("ready", &|| get(port, "GET", "/readyz").0 == 200);

    let dev = Collector::connect(a.port, "dev-http", &[]);
    tb.wait_until(Duration::from_secs(20), "a first reading", |r| {
        dev.publish("sensor/DH/data", r#"{"n": 0}"#);
        !readings(r, "DH").is_empty()
    });
    for n in 1..=5 {
        dev.publish("sensor/DH/data", format!(r#"{{"n": {n}}}"#));
    }
    tb.wait_until(Duration::from_secs(20), "the five readings", |r| readings(r, "DH").contains(&5));
    let (code, text) = get(port, "GET", "/metrics");
    assert_eq!(code, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text scrape");
    let received = sample(&scrape, "tbgw_connector_messages_received_total", &[("connector", "A")]).expect("received");
    assert!(received >= 6.0, "{text}");
    let delivered = sample(&scrape, "tbgw_connector_events_delivered_total", &[("connector", "A")]).expect("delivered");
    assert!(delivered >= 6.0, "{text}");
    assert_eq!(sample(&scrape, "tbgw_thingsboard_connected", &[]), Some(1.0), "{text}");
    assert_eq!(sample(&scrape, "tbgw_converter_generation", &[("converter", "A/json")]), Some(1.0), "{text}");
    assert!(sample(&scrape, "tbgw_uptime_seconds", &[]).is_some_and(|u| u > 0.0), "{text}");

    // The status page, rendered: the live numbers (between the scrape before
    // and one after: the first readings' repeats may still be arriving), and
    // a screenshot of a page, not a blank.
    let (dom, png) = chromium(port);
    let (_, text) = get(port, "GET", "/metrics");
    let after = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a scrape");
    let row = r#"<tr data-connector="A">"#;
    for (class, metric, before) in [
        ("received", "tbgw_connector_messages_received_total", received),
        ("delivered", "tbgw_connector_events_delivered_total", delivered),
    ] {
        let now = sample(&after, metric, &[("connector", "A")]).expect(metric);
        let shown: f64 = cell(&dom, row, class).and_then(|c| c.parse().ok()).unwrap_or(-1.0);
        assert!(
            (before..=now).contains(&shown),
            "{class}: the page shows {shown}, the scrapes {before} and {now}: {dom}"
        );
    }
    assert_eq!(cell(&dom, row, "devices"), Some("1"), "{dom}");
    assert_eq!(cell(&dom, r#"<tr data-converter="A/json">"#, "generation"), Some("1"), "{dom}");
    assert!(dom.contains(r#"<dd id="thingsboard"><span class="ok">connected</span>"#), "{dom}");
    assert!(dom.contains(r#"<meta http-equiv="refresh" content="5">"#), "it refreshes itself: {dom}");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let size = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    assert_eq!((size(16), size(20)), (1280, 900), "the window's size");
    // A blank 1280x900 PNG is a few hundred bytes; text and tables, tens of KiB.
    assert!(png.len() > 20_000, "the screenshot shows little ({} bytes)", png.len());

    // ThingsBoard away: not ready, and why; back: ready again.
    tb_broker.stop();
    wait_for("not ready", &|| get(port, "GET", "/readyz").0 == 503);
    let (_, why) = get(port, "GET", "/readyz");
    let why: serde_json::Value = serde_json::from_str(&why).expect("JSON");
    assert_eq!(why["ready"], false);
    assert!(why["reasons"][0].as_str().is_some_and(|r| r.starts_with("ThingsBoard is not connected")), "{why}");
    assert_eq!(get(port, "GET", "/healthz").0, 200, "alive all the same");
    let (dom, _) = chromium(port);
    assert!(dom.contains(r#"<span class="bad">not ready</span>: ThingsBoard is not connected"#), "{dom}");
    tb_broker.start();
    wait_for("ready again", &|| get(port, "GET", "/readyz").0 == 200);

    assert_eq!(get(port, "GET", "/nope").0, 404);
    assert_eq!(get(port, "POST", "/metrics").0, 405);
    shutdown.cancel();
    rt.block_on(running).expect("stopped");
}
