//! The connector's loop against a real OPC-UA server (async-opcua's own
//! server side, in process on 127.0.0.1), driven as the gateway drives it:
//! values out to the converter stage, the devices' connect requests to the
//! router. Checked as the converter receives them: the node, the JSON
//! Variant, the key and device they are for.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tbgw_core::config::Diagnostics;
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats, Uplink, UplinkSink};
use tbgw_core::downlink::{DeviceRequests, DownlinkLink, FromDevice};
use tbgw_core::{DeviceRequest, Source};
use tbgw_test_support::asyncua::AsyncuaServer;
use tbgw_test_support::opcua::{OpcuaServer, Plant, USER, client_certificate, initial};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Running {
    uplinks: flume::Receiver<Uplink>,
    stats: Arc<ConnectorStats>,
    stop: CancellationToken,
    finish: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    requests: mpsc::UnboundedReceiver<FromDevice>,
    jobs: mpsc::Sender<tbgw_core::downlink::ToConnector>,
}

/// One value as the converter gets it.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    device: String,
    key: String,
    section: String,
    node: String,
    value: Value,
}

fn start(doc: Value) -> Running {
    // RUST_LOG=debug shows the connector's (and async-opcua's) side.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut d = Diagnostics::default();
    let site = tbgw_core::setup::Site { name: "plc", base_dir: Path::new(".") };
    let config = tbgw_connector_opcua::parse(&doc, &site, &mut d).expect("config");
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let routes: Vec<usize> = (0..tbgw_core::setup::ConnectorSetup::routes(&config).len()).map(|i| 10 + i).collect();
    let connector = Box::new(tbgw_connector_opcua::OpcuaConnector::new("plc", config, &routes));
    let (tx, uplinks) = flume::bounded(100_000);
    let (jobs, jobs_rx) = mpsc::channel(16);
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ConnectorStats::default());
    let (stop, finish) = (CancellationToken::new(), CancellationToken::new());
    let ctx = ConnectorContext {
        sink: UplinkSink::new(vec![tx]),
        downlink: DownlinkLink { jobs: jobs_rx, requests: DeviceRequests::new("plc", requests) },
        stop_intake: stop.clone(),
        finish: finish.clone(),
        stats: stats.clone(),
    };
    let task = tokio::spawn(connector.run(ctx));
    Running { uplinks, stats, stop, finish, task, requests: requests_rx, jobs }
}

fn doc(url: &str, server: Value, timeseries: Value) -> Value {
    let mut s =
        json!({"url": url, "timeoutInMillis": 2000, "subCheckPeriodInMillis": 50, "reconnectBackoffInitialDelay": 0.2});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), server.as_object()) {
        s.extend(extra.clone());
    }
    json!({
        "server": s,
        "mapping": [{
            "deviceNodeSource": "path",
            "deviceNodePattern": "Root\\.Objects\\.Plant\\.Boiler 1",
            "deviceInfo": {"deviceNameExpression": "Boiler ${SerialNumber}", "deviceNameExpressionSource": "path",
                           "deviceProfileExpression": "boiler"},
            "attributes": [{"key": "serial", "type": "path", "value": "${SerialNumber}"},
                           {"key": "site", "type": "constant", "value": "Plant A"}],
            "timeseries": timeseries
        }, {
            "deviceNodeSource": "path",
            "deviceNodePattern": "Root\\.Objects\\.Plant\\.Boiler 2",
            "deviceInfo": {"deviceNameExpression": "Boiler ${SerialNumber}", "deviceNameExpressionSource": "path"},
            "timeseries": timeseries
        }]
    })
}

fn keys(n: usize) -> Value {
    let mut keys = vec![
        json!({"key": "temperature", "type": "path", "value": "${Temperature}"}),
        json!({"key": "level", "type": "path", "value": "${Füllstand}"}),
        // The same node under a second key.
        json!({"key": "temperatureAgain", "type": "path", "value": "${Temperature}"}),
    ];
    for j in 0..n {
        keys.push(json!({"key": format!("v{j}"), "type": "path", "value": format!("${{V{j}}}")}));
    }
    Value::Array(keys)
}

fn take(r: &Running) -> Vec<Got> {
    r.uplinks
        .try_iter()
        .map(|u| {
            let meta =
                |k: &str| u.raw.metadata.iter().find(|(m, _)| m == k).map(|(_, v)| v.clone()).unwrap_or_default();
            let Source::Opcua(v) = &u.raw.source else { panic!("not an OPC-UA value: {:?}", u.raw.source) };
            Got {
                device: u.raw.device.clone().unwrap_or_default(),
                key: meta("key"),
                section: meta("section"),
                node: v.node.clone(),
                value: serde_json::from_slice(&u.raw.payload).expect("a JSON Variant"),
            }
        })
        .collect()
}

/// Values until `done` says they are enough (10 s at most).
async fn collect(r: &Running, what: &str, mut got: Vec<Got>, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        got.extend(take(r));
        if done(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "not within 15 s: {what}; got {} values: {:?}",
            got.len(),
            got.last()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn latest(got: &[Got], device: &str, key: &str) -> Option<Value> {
    got.iter().rev().find(|g| g.device == device && g.key == key).map(|g| g.value["Body"].clone())
}

/// The latest value of a numeric key (OPC UA JSON writes a whole double
/// as `75`: its Variant type says it is a Double).
fn number(got: &[Got], device: &str, key: &str) -> Option<f64> {
    latest(got, device, key).and_then(|v| v.as_f64())
}

/// The connector's own count `name` in the status snapshot.
fn extra(r: &Running, name: &str) -> Option<u64> {
    r.stats.extras().iter().find(|e| e.name == name).map(|e| e.get())
}

fn connects(r: &mut Running) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    while let Ok(FromDevice { request, .. }) = r.requests.try_recv() {
        if let DeviceRequest::Connect { device, device_type } = request {
            out.push((device, device_type));
        }
    }
    out
}

async fn stop(r: Running) {
    r.stop.cancel();
    r.finish.cancel();
    tokio::time::timeout(Duration::from_secs(10), r.task).await.expect("the connector stops").expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_bring_every_keys_first_value_then_each_change_split_at_the_servers_cap() {
    // 5 items per subscription: 2 devices x 5 nodes take 2 subscriptions,
    // and the shared nodes are monitored once.
    let server = OpcuaServer::start(Plant { devices: 2, variables: 3, items_per_subscription: 5, ..Plant::default() });
    let mut r = start(doc(&server.url(), json!({}), keys(3)));
    let expected: BTreeSet<(String, String)> = ["Boiler SN-1", "Boiler SN-2"]
        .iter()
        .flat_map(|d| {
            ["temperature", "level", "temperatureAgain", "v0", "v1", "v2"].map(|k| (d.to_string(), k.to_string()))
        })
        .chain([("Boiler SN-1".to_string(), "serial".to_string()), ("Boiler SN-1".to_string(), "site".to_string())])
        .collect();
    let got = collect(&r, "every key's first value", Vec::new(), |g| {
        g.iter().map(|g| (g.device.clone(), g.key.clone())).collect::<BTreeSet<_>>() == expected
    })
    .await;
    assert_eq!(number(&got, "Boiler SN-1", "v2"), Some(initial(1, 2)));
    assert_eq!(number(&got, "Boiler SN-2", "level"), Some(75.0));
    assert_eq!(latest(&got, "Boiler SN-1", "serial"), Some(json!("SN-1")));
    assert_eq!(latest(&got, "Boiler SN-1", "site"), Some(json!("Plant A")));
    let t = got.iter().find(|g| g.device == "Boiler SN-2" && g.key == "temperatureAgain").expect("temperatureAgain");
    assert_eq!(
        (t.value.clone(), t.node.as_str(), t.section.as_str()),
        (json!({"Type": 11, "Body": 20.5}), format!("ns={};s=Boiler 2.Temperature", server.ns).as_str(), "timeseries")
    );
    let serial = got.iter().find(|g| g.key == "serial").expect("serial");
    assert_eq!(serial.section, "attributes");
    // No value twice: each key's first value came once.
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for g in &got {
        *counts.entry((g.device.clone(), g.key.clone())).or_default() += 1;
    }
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert_eq!(
        connects(&mut r),
        vec![("Boiler SN-1".to_string(), Some("boiler".to_string())), ("Boiler SN-2".to_string(), None)]
    );

    // A change reaches both keys of the node, and only the node's keys.
    server.set(2, "Temperature", 30.25);
    server.tick(1.0);
    let got = collect(&r, "the changes", Vec::new(), |g| {
        number(g, "Boiler SN-2", "temperatureAgain") == Some(30.25)
            && number(g, "Boiler SN-2", "temperature") == Some(30.25)
            && number(g, "Boiler SN-1", "v2") == Some(initial(1, 2) + 1.0)
    })
    .await;
    assert!(got.iter().all(|g| g.key != "level" && g.key != "serial"), "unchanged nodes sent again: {got:?}");
    assert!(r.stats.connected.load(Ordering::Relaxed));
    // The status snapshot: 5 nodes a device (`temperatureAgain` reads
    // `temperature`'s) and Boiler 1's serial number, in subscriptions of
    // the server's 5 items: 5 + 5 + 1.
    let counts =
        [("devices", 2), ("nodes", 11), ("subscriptions", 3), ("monitored_items", 11), ("bad_status_values", 0)];
    assert_eq!(counts.map(|(name, _)| (name, extra(&r, name))), counts.map(|(name, n)| (name, Some(n))));
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_low_limits_still_delivers_every_key_subscribed_or_polled() {
    // 20 devices x 63 nodes (60 V<j>, Temperature, Füllstand, SerialNumber):
    // 1,260 nodes, where the server takes 50 a
    // Read or Translate, 100 monitored items a call and 1,000 a
    // subscription (it refuses a larger request).
    let plant = Plant {
        devices: 20,
        variables: 60,
        items_per_subscription: 1000,
        nodes_per_call: 50,
        monitored_items_per_call: 100,
        ..Plant::default()
    };
    let server = OpcuaServer::start(plant);
    let one = |doc: &mut Value| {
        doc["mapping"].as_array_mut().expect("mappings").truncate(1);
        doc["mapping"][0]["deviceNodePattern"] = json!("Root\\.Objects\\.Plant\\.Boiler [0-9]+");
    };
    let devices: Vec<String> = (1..=plant.devices).map(|d| format!("Boiler SN-{d}")).collect();
    let every_key = |g: &[Got]| -> bool {
        let seen: BTreeSet<(&str, &str)> = g.iter().map(|g| (g.device.as_str(), g.key.as_str())).collect();
        devices.iter().all(|d| (0..plant.variables).all(|j| seen.contains(&(d.as_str(), format!("v{j}").as_str()))))
            && devices.iter().all(|d| seen.contains(&(d.as_str(), "level")))
    };
    for server_keys in [json!({}), json!({"enableSubscriptions": false, "pollPeriodInMillis": 500})] {
        let mut doc = doc(&server.url(), server_keys.clone(), keys(plant.variables));
        one(&mut doc);
        let r = start(doc);
        let got = collect(&r, &format!("every key of every device with {server_keys}"), Vec::new(), every_key).await;
        assert_eq!(number(&got, "Boiler SN-20", "v59"), Some(initial(20, 59)));
        assert_eq!(extra(&r, "nodes"), Some(20 * 63), "{server_keys}");
        if server_keys["enableSubscriptions"] != json!(false) {
            assert_eq!(extra(&r, "subscriptions"), Some(2));
            assert_eq!(extra(&r, "monitored_items"), Some(20 * 63));
            // No value twice.
            let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
            for g in &got {
                *counts.entry((g.device.clone(), g.key.clone())).or_default() += 1;
            }
            assert!(counts.values().all(|&n| n == 1), "{:?}", counts.iter().find(|(_, n)| **n > 1));
        }
        assert_eq!(r.stats.read_errors.load(Ordering::Relaxed), 0);
        stop(r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_reads_every_node_each_period_and_a_username_logs_in() {
    let server = OpcuaServer::start(Plant::default());
    let login = json!({"enableSubscriptions": false, "pollPeriodInMillis": 200,
        "identity": {"type": "username", "username": USER.0, "password": USER.1}});
    let r = start(doc(&server.url(), login, keys(1)));
    let started = tokio::time::Instant::now();
    let got = collect(&r, "five polls", Vec::new(), |g| {
        g.iter().filter(|g| g.device == "Boiler SN-2" && g.key == "v0").count() >= 5
    })
    .await;
    let elapsed = started.elapsed();
    // Five polls 200 ms apart: about a second, not five (whole seconds).
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(number(&got, "Boiler SN-2", "v0"), Some(initial(2, 0)));
    server.set(1, "V0", -1.5);
    collect(&r, "the new value", got, |g| number(g, "Boiler SN-1", "v0") == Some(-1.5)).await;
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error_and_a_backoff() {
    let server = OpcuaServer::start(Plant::default());
    let login = json!({"identity": {"type": "username", "username": USER.0, "password": "wrong"}});
    let r = start(doc(&server.url(), login, keys(0)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(take(&r).is_empty());
    assert!(!r.stats.connected.load(Ordering::Relaxed));
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_subscribed_again_with_its_namespace_moved() {
    let server = OpcuaServer::start(Plant::default());
    let port = server.port;
    let old_ns = server.ns;
    let mut r = start(doc(&server.url(), json!({}), keys(1)));
    collect(&r, "the first values", Vec::new(), |g| latest(g, "Boiler SN-2", "v0").is_some()).await;
    assert_eq!(connects(&mut r).len(), 2);
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!r.stats.connected.load(Ordering::Relaxed), "the loss is seen");
    // The same port, the plant's namespace index moved by one.
    let server = OpcuaServer::start_on(port, Plant { extra_namespaces: 1, ..Plant::default() });
    assert_ne!(server.ns, old_ns);
    let started = tokio::time::Instant::now();
    server.set(1, "V0", 99.0);
    let got =
        collect(&r, "values after the restart", Vec::new(), |g| number(g, "Boiler SN-1", "v0") == Some(99.0)).await;
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let v0 = got.iter().rev().find(|g| g.key == "v0" && g.device == "Boiler SN-1").expect("v0");
    assert_eq!(v0.node, format!("ns={};s=Boiler 1.V0", server.ns));
    server.set(2, "V0", 7.0);
    collect(&r, "the next change", got, |g| number(g, "Boiler SN-2", "v0") == Some(7.0)).await;
    assert!(r.stats.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(connects(&mut r), vec![], "devices are not connected (or deleted) again");
    assert_eq!(extra(&r, "subscriptions"), Some(1), "the old session's subscriptions are not counted");
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_stopped_while_its_server_is_away_leaves_no_task_behind() {
    let tasks = tokio::runtime::Handle::current().metrics();
    let before = tasks.num_alive_tasks();
    let server = OpcuaServer::start(Plant::default());
    let r = start(doc(&server.url(), json!({}), keys(0)));
    collect(&r, "the first values", Vec::new(), |g| latest(g, "Boiler SN-1", "temperature").is_some()).await;
    server.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The session cannot be closed: async-opcua's event loop would try
    // to reconnect for as long as the process lives.
    stop(r).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while tasks.num_alive_tasks() > before {
        assert!(tokio::time::Instant::now() < end, "{} tasks left of the connector", tasks.num_alive_tasks() - before);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_tried_again_until_it_comes() {
    let port = tbgw_test_support::free_port();
    let r = start(doc(&format!("opc.tcp://127.0.0.1:{port}/"), json!({}), keys(0)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!r.stats.connected.load(Ordering::Relaxed));
    let server = OpcuaServer::start_on(port, Plant::default());
    collect(&r, "values once the server is up", Vec::new(), |g| latest(g, "Boiler SN-1", "temperature").is_some())
        .await;
    drop(server);
    stop(r).await;
}

/// A directory of this test's own, emptied.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tbgw-opcua-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// The certificates (`.der`) in a directory of the trust store.
fn certificates(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "der")).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_signs_or_encrypts_and_logs_in_by_password_or_certificate() {
    let dir = scratch("policies");
    let (cert, key) = client_certificate(&dir, "tbgw-client", "urn:tbgw:test:client");
    let server = OpcuaServer::start_secure(Plant::default(), &cert);
    let trusted = server.certificate();
    let mut cases: Vec<(&str, &str, Value)> = Vec::new();
    for policy in ["Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] {
        for mode in ["Sign", "SignAndEncrypt"] {
            cases.push((policy, mode, json!({"type": "cert.PEM"})));
        }
    }
    // A password over an encrypted channel, and the certificate as the login.
    cases.push((
        "Aes256Sha256RsaPss",
        "SignAndEncrypt",
        json!({"type": "cert.PEM", "username": USER.0, "password": USER.1}),
    ));
    cases.push(("Basic256Sha256", "SignAndEncrypt", json!({"type": "x509"})));
    for (i, (policy, mode, mut identity)) in cases.into_iter().enumerate() {
        let extra = json!({"cert": cert, "privateKey": key, "caCert": trusted, "mode": mode});
        if let (Some(id), Some(extra)) = (identity.as_object_mut(), extra.as_object()) {
            id.extend(extra.clone());
        }
        let what = format!("{policy} {mode} {identity}");
        let mut server_keys = json!({"security": policy, "identity": identity, "pkiDir": dir.join(format!("pki-{i}"))});
        if identity["type"] == "x509" {
            // A hand-set URI that is not the certificate's gives way to it.
            server_keys["uri"] = json!("urn:tbgw:set:by:hand");
        }
        let r = start(doc(&server.url(), server_keys, keys(0)));
        let got = collect(&r, &what, Vec::new(), |g| latest(g, "Boiler SN-1", "temperature").is_some()).await;
        assert_eq!(number(&got, "Boiler SN-1", "temperature"), Some(20.5), "{what}");
        stop(r).await;
    }
    // A wrong password is refused over a secure channel too.
    let identity = json!({"type": "cert.PEM", "cert": cert, "privateKey": key, "caCert": trusted,
                          "username": USER.0, "password": "wrong"});
    let r = start(doc(&server.url(), json!({"identity": identity, "pkiDir": dir.join("pki-wrong")}), keys(0)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(take(&r).is_empty());
    assert!(!r.stats.connected.load(Ordering::Relaxed));
    stop(r).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_is_refused_until_trusted_and_trust_on_first_use_trusts_the_first_only() {
    let dir = scratch("trust");
    let (cert, key) = client_certificate(&dir, "tbgw-client", "urn:tbgw:test:client");
    let server = OpcuaServer::start_secure(Plant::default(), &cert);
    let identity = |tofu: bool| json!({"type": "cert.PEM", "cert": cert, "privateKey": key, "trustOnFirstUse": tofu});
    let pki = dir.join("pki");
    let keys_of = |tofu: bool| json!({"security": "Basic256Sha256", "identity": identity(tofu), "pkiDir": pki});

    // Not in the trust list: refused, and kept in `rejected/` for a user
    // to move; no data.
    let r = start(doc(&server.url(), keys_of(false), keys(0)));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(take(&r).is_empty());
    assert!(!r.stats.connected.load(Ordering::Relaxed));
    assert_eq!((certificates(&pki.join("rejected")), certificates(&pki.join("trusted"))), (1, 0));
    stop(r).await;

    // Trust on first use: the first server seen is trusted and kept.
    let _ = std::fs::remove_dir_all(pki.join("rejected"));
    let r = start(doc(&server.url(), keys_of(true), keys(0)));
    collect(&r, "values from the first server seen", Vec::new(), |g| latest(g, "Boiler SN-1", "temperature").is_some())
        .await;
    assert_eq!(certificates(&pki.join("trusted")), 1);

    // The server comes back at the same address with another certificate:
    // not the first one, refused, while the connector runs and after.
    let port = server.stop();
    let other = OpcuaServer::start_secure_on(port, Plant::default(), &cert);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    take(&r);
    other.set(1, "Temperature", 99.5);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(take(&r).is_empty(), "values from a server of another certificate");
    assert!(!r.stats.connected.load(Ordering::Relaxed));
    stop(r).await;
    let r = start(doc(&other.url(), keys_of(true), keys(0)));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(take(&r).is_empty());
    assert!(!r.stats.connected.load(Ordering::Relaxed));
    assert_eq!((certificates(&pki.join("rejected")), certificates(&pki.join("trusted"))), (1, 1));
    stop(r).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests for `device`, as the router hands them over; what the
/// connector answered.
async fn serve(r: &Running, device: &str, messages: Vec<tbgw_core::DownlinkMessage>) -> Vec<tbgw_core::RawUplink> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let kind = tbgw_core::downlink::JobKind::Rpc { id: 1, method: "test".into() };
    let job = tbgw_core::downlink::DeviceJob { device: device.into(), kind, messages, reply };
    r.jobs.send(tbgw_core::downlink::ToConnector::Device(job)).await.expect("the connector takes requests");
    let answered = tokio::time::timeout(Duration::from_secs(10), answer).await.expect("an answer in time");
    answered.expect("answered").expect("carried out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_server_python_asyncua_every_change_once_and_typed_writes_and_calls() {
    use tbgw_core::{DownlinkMessage, OpcuaRequest, Value as V};
    let mut server = AsyncuaServer::start(2);
    let timeseries = json!([{"key": "temperature", "type": "path", "value": "${Temperature}"},
                            {"key": "counter", "type": "path", "value": "${Counter}"},
                            {"key": "reading", "type": "path", "value": "${Reading}"},
                            {"key": "levels", "type": "path", "value": "${Levels}"}]);
    let r = start(doc(&server.url(), json!({}), timeseries));
    let devices = ["Boiler SN-1", "Boiler SN-2"];
    let got = collect(&r, "asyncua's first values", Vec::new(), |g| {
        devices
            .iter()
            .all(|d| ["counter", "temperature", "reading", "levels"].iter().all(|k| latest(g, d, k).is_some()))
    })
    .await;
    assert_eq!(number(&got, "Boiler SN-2", "temperature"), Some(20.5));
    assert_eq!(latest(&got, "Boiler SN-1", "levels"), Some(json!([1.5, 2.5])));
    // A structure of the server's own type, decoded from the definition
    // it publishes (the first value too, which came before the
    // definitions were loaded), and each change of it.
    for d in devices {
        let reading = latest(&got, d, "reading").expect("a reading");
        assert_eq!(reading["UaBody"], json!({"Level": 1.5, "Unit": "m", "Samples": [1, 2, 3]}), "{d}: {reading}");
    }
    tokio::task::block_in_place(|| server.reading(2, 7.25));
    let got = collect(&r, "the structure's change", got, |g| {
        latest(g, "Boiler SN-2", "reading").is_some_and(|v| v["UaBody"]["Level"] == json!(7.25))
    })
    .await;

    // Every change of a counter, once, in order: no duplicate, no gap.
    tokio::task::block_in_place(|| server.count(100, 20));
    let got = collect(&r, "every count", got, |g| devices.iter().all(|d| number(g, d, "counter") == Some(100.0))).await;
    for d in devices {
        let seen: Vec<u64> = got
            .iter()
            .filter(|g| g.device == d && g.key == "counter")
            .filter_map(|g| g.value["Body"].as_u64())
            .collect();
        assert_eq!(seen, (0..=100).collect::<Vec<u64>>(), "{d}");
    }

    // A write typed by the node's DataType (text to an Int16), read back
    // by asyncua with its type; a method called with Int32 arguments.
    let write = |value: V| DownlinkMessage::Opcua(OpcuaRequest::Write { node: "SetPoint".into(), value });
    let answers = serve(&r, "Boiler SN-1", vec![write(V::Text("42".into()))]).await;
    let Source::Opcua(v) = &answers[0].source else { panic!("{:?}", answers[0]) };
    assert_eq!(v.status, 0, "{:?}", answers[0]);
    assert_eq!(tokio::task::block_in_place(|| server.get(1, "SetPoint")), (json!(42), "Int16".to_owned()));
    let answers = serve(&r, "Boiler SN-1", vec![write(V::Int(70000))]).await;
    let meta: BTreeMap<String, String> = answers[0].metadata.iter().cloned().collect();
    assert_eq!(meta.get("status").map(String::as_str), Some("BadTypeMismatch"), "{meta:?}");
    assert!(meta["error"].contains("out of the range of a Int16"), "{meta:?}");
    assert_eq!(tokio::task::block_in_place(|| server.get(1, "SetPoint")).0, json!(42));
    let call = OpcuaRequest::Call {
        object: String::new(),
        method: "multiply".into(),
        arguments: vec![V::Int(6), V::Text("7".into())],
    };
    let answers = serve(&r, "Boiler SN-2", vec![DownlinkMessage::Opcua(call)]).await;
    let outputs: Value = serde_json::from_slice(&answers[0].payload).expect("JSON");
    assert_eq!(outputs, json!([{"Type": 6, "Body": 42}]));
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_seen_by_keep_alive_and_read_again_when_it_goes_on() {
    let mut server = AsyncuaServer::start(1);
    let timeseries = json!([{"key": "counter", "type": "path", "value": "${Counter}"}]);
    // Keep-alives every second (a quarter of the session timeout).
    let mut doc = doc(&server.url(), json!({"sessionTimeoutInMillis": 4000}), timeseries);
    doc["mapping"].as_array_mut().expect("mappings").truncate(1);
    let mut r = start(doc);
    let got = collect(&r, "the first count", Vec::new(), |g| latest(g, "Boiler SN-1", "counter").is_some()).await;
    tokio::task::block_in_place(|| server.count(5, 20));
    collect(&r, "the count to 5", got, |g| number(g, "Boiler SN-1", "counter") == Some(5.0)).await;
    assert_eq!(connects(&mut r).len(), 1);

    // Its socket stays open and nothing answers: only keep-alive tells.
    server.freeze();
    let frozen = tokio::time::Instant::now();
    while r.stats.connected.load(Ordering::Relaxed) {
        assert!(frozen.elapsed() < Duration::from_secs(15), "a frozen server is not seen within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = frozen.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.thaw();
    let thawed = tokio::time::Instant::now();
    collect(&r, "connected again", Vec::new(), |_| r.stats.connected.load(Ordering::Relaxed)).await;
    tokio::task::block_in_place(|| server.count(20, 20));
    let got =
        collect(&r, "counts after the thaw", Vec::new(), |g| number(g, "Boiler SN-1", "counter") == Some(20.0)).await;
    assert!(thawed.elapsed() < Duration::from_secs(10), "data again {:?} after the thaw", thawed.elapsed());
    let seen_after: Vec<u64> =
        got.iter().filter(|g| g.key == "counter").filter_map(|g| g.value["Body"].as_u64()).collect();
    let tail: Vec<u64> = seen_after.iter().copied().skip_while(|c| *c != 1).collect();
    assert_eq!(tail, (1..=20).collect::<Vec<u64>>(), "every count after the thaw, once: {seen_after:?}");
    assert!(r.stats.reconnects.load(Ordering::Relaxed) >= 1);
    assert_eq!(connects(&mut r), vec![], "the device is not connected again");
    eprintln!("frozen server seen after {seen:?}");
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_finds_a_new_device_and_sends_no_value_twice() {
    let server = OpcuaServer::start(Plant::default());
    let mut doc = doc(&server.url(), json!({"scanPeriodInMillis": 300}), keys(1));
    doc["mapping"].as_array_mut().expect("mappings").truncate(1);
    doc["mapping"][0]["deviceNodePattern"] = json!("Root\\.Objects\\.Plant\\.Boiler [0-9]+");
    let mut r = start(doc);
    let all_keys =
        |d: &str, g: &[Got]| ["temperature", "level", "v0", "serial", "site"].iter().all(|k| latest(g, d, k).is_some());
    let got =
        collect(&r, "both devices", Vec::new(), |g| all_keys("Boiler SN-1", g) && all_keys("Boiler SN-2", g)).await;
    assert_eq!(connects(&mut r).len(), 2);
    // Rescans that find nothing new change nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = collect(&r, "nothing", got, |_| true).await;

    server.add_device(3);
    let found = tokio::time::Instant::now();
    let mut got = collect(&r, "the new device", got, |g| all_keys("Boiler SN-3", g)).await;
    assert!(found.elapsed() < Duration::from_secs(5), "found after {:?}", found.elapsed());
    assert_eq!(connects(&mut r), vec![("Boiler SN-3".to_string(), Some("boiler".to_string()))]);
    assert_eq!(extra(&r, "devices"), Some(3));
    // The subscriptions were made again: the old devices' unchanged
    // values are not sent again, their next changes are.
    server.set(1, "V0", 5.5);
    got = collect(&r, "a change after the rescan", got, |g| number(g, "Boiler SN-1", "v0") == Some(5.5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    got = collect(&r, "the rest", got, |_| true).await;
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for g in &got {
        *counts.entry((g.device.clone(), g.key.clone())).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|((d, k), n)| **n > 1 && !(d == "Boiler SN-1" && k == "v0")).collect();
    assert!(twice.is_empty(), "values sent twice: {twice:?}");
    assert_eq!(counts[&("Boiler SN-1".to_string(), "v0".to_string())], 2);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_pattern_finds_every_matching_device() {
    let server = OpcuaServer::start(Plant { devices: 3, ..Plant::default() });
    // `Boiler [0-9]+` names no node as written: it is matched against
    // the browse names under Plant (not the Python gateway's one device).
    let doc = json!({
        "server": {"url": server.url(), "timeoutInMillis": 2000, "subCheckPeriodInMillis": 50},
        "mapping": [{
            "deviceNodeSource": "path",
            "deviceNodePattern": "Root\\.Objects\\.Plant\\.Boiler [0-9]+",
            "deviceInfo": {"deviceNameExpression": "Boiler ${SerialNumber}", "deviceNameExpressionSource": "path"},
            "timeseries": [{"key": "temperature", "type": "path", "value": "${Temperature}"}]
        }, {
            "deviceNodeSource": "path",
            "deviceNodePattern": "Root\\.Objects\\.Plant\\.Pump.*",
            "deviceInfo": {"deviceNameExpression": "Pump"},
            "timeseries": [{"key": "speed", "type": "path", "value": "${Speed}"}]
        }]
    });
    let mut r = start(doc);
    let devices = ["Boiler SN-1", "Boiler SN-2", "Boiler SN-3"];
    let got = collect(&r, "every boiler's temperature", Vec::new(), |g| {
        devices.iter().all(|d| latest(g, d, "temperature").is_some())
    })
    .await;
    assert!(got.iter().all(|g| g.key == "temperature"), "no pump matches: {got:?}");
    let mut connected: Vec<String> = connects(&mut r).into_iter().map(|(d, _)| d).collect();
    connected.sort();
    assert_eq!(connected, devices);
    stop(r).await;
}
