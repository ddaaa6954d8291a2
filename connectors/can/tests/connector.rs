//! The connector's loop on a real socketcand bus (the test support's hub on
//! 127.0.0.1), driven as the gateway drives it: frames out to the
//! converter stage, jobs in from the router. What the end-to-end tests do
//! not reach: a downlink message that waits for the device's answer, and
//! what happens while the bus is down or given up.

use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tbgw_core::config::Diagnostics;
use tbgw_core::connector::{Connector, ConnectorContext, ConnectorStats, Uplink, UplinkSink};
use tbgw_core::downlink::{DeviceJob, DeviceRequests, DownlinkLink, JobKind, ToConnector};
use tbgw_core::{CanFrame, CanResponse, CanSend, DownlinkMessage, Source};
use tbgw_test_support::socketcand::Hub;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

struct Running {
    jobs: mpsc::Sender<ToConnector>,
    uplinks: flume::Receiver<Uplink>,
    stats: Arc<ConnectorStats>,
    stop: CancellationToken,
    finish: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The devices' requests (the connector announces its devices).
    _requests: mpsc::UnboundedReceiver<tbgw_core::downlink::FromDevice>,
}

fn start(port: u16, reconnect: serde_json::Value) -> Running {
    let mut doc = json!({"interface": "socketcand", "host": "127.0.0.1", "port": port, "channel": "can0", "reconnectPeriod": 0.2,
        "devices": [{"name": "Ecu", "timeseries": [{"key": "speed", "nodeId": "0x7E8", "value": "3:1:int"}]}]});
    if let (Some(o), Some(r)) = (doc.as_object_mut(), reconnect.as_object()) {
        o.extend(r.clone());
    }
    let mut d = Diagnostics::default();
    let config = tbgw_connector_can::parse(&doc, Path::new("."), &mut d).expect("config");
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let connector = Box::new(tbgw_connector_can::CanConnector::new("bus", config, &[7]));
    let (tx, uplinks) = flume::bounded(64);
    let (jobs, jobs_rx) = mpsc::channel(16);
    let (requests, requests_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ConnectorStats::default());
    let (stop, finish) = (CancellationToken::new(), CancellationToken::new());
    let ctx = ConnectorContext {
        sink: UplinkSink::new(vec![tx]),
        downlink: DownlinkLink { jobs: jobs_rx, requests: DeviceRequests::new("bus", requests) },
        stop_intake: stop.clone(),
        finish: finish.clone(),
        stats: stats.clone(),
    };
    let task = tokio::spawn(connector.run(ctx));
    Running { jobs, uplinks, stats, stop, finish, task, _requests: requests_rx }
}

fn request(id: u32, data: &[u8], response: Option<CanResponse>) -> DownlinkMessage {
    DownlinkMessage::Can(CanSend { frame: CanFrame { id, ..CanFrame::default() }, payload: data.to_vec(), response })
}

async fn job(r: &Running, messages: Vec<DownlinkMessage>) -> Result<Vec<tbgw_core::RawUplink>, String> {
    let (reply, answered) = oneshot::channel();
    let job = DeviceJob { device: "Ecu".into(), kind: JobKind::Rpc { id: 1, method: "m".into() }, messages, reply };
    r.jobs.send(ToConnector::Device(job)).await.expect("the connector takes jobs");
    answered.await.expect("answered")
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < end, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_the_devices_answer_and_frames_go_to_the_converter() {
    let hub = Hub::start();
    let r = start(hub.port, json!({}));
    until("the connector joins", || hub.joined() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // An OBD-II style query: the answer is the first frame with id 0x7E8.
    let answer = CanResponse { id: 0x7E8, extended: false, timeout_ms: 2000 };
    let asked = tokio::spawn({
        let jobs = r.jobs.clone();
        async move {
            let (reply, answered) = oneshot::channel();
            let messages = vec![request(0x7DF, &[0x02, 0x01, 0x0D], Some(answer))];
            let job = DeviceJob {
                device: "Ecu".into(),
                kind: JobKind::Rpc { id: 1, method: "speed".into() },
                messages,
                reply,
            };
            jobs.send(ToConnector::Device(job)).await.expect("sent");
            answered.await.expect("answered")
        }
    });
    hub.wait_frames(Duration::from_secs(5), "the query", |f| f.iter().any(|f| f.id == 0x7DF));
    hub.inject(0x123, false, &[1]);
    hub.inject(0x7E8, false, &[0x03, 0x41, 0x0D, 88]);
    let answers = asked.await.expect("joined").expect("answered with the frame");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].payload, [0x03, 0x41, 0x0D, 88]);
    assert_eq!(answers[0].source, Source::Can(CanFrame { id: 0x7E8, ..CanFrame::default() }));
    // The answer is also a frame of the `speed` item: to the converter, on its route.
    let up = r.uplinks.recv_async().await.expect("an uplink");
    assert_eq!(
        (up.route, up.raw.device.as_deref(), up.raw.payload.as_slice()),
        (7, Some("Ecu"), &[0x03, 0x41, 0x0D, 88][..])
    );
    until("0x123 counted as unmatched", || r.stats.unmatched.load(Ordering::Relaxed) == 1).await;
    assert_eq!(r.stats.received.load(Ordering::Relaxed), 2);

    // No answer: a timeout that says what was awaited.
    let quiet = CanResponse { id: 0x7E9, extended: false, timeout_ms: 300 };
    let e = job(&r, vec![request(0x7DF, &[0x02, 0x01, 0x0C], Some(quiet))]).await.expect_err("a timeout");
    assert_eq!(e, "`Ecu` did not answer (a frame with standard id 0x7E9 within 300 ms)");
    // A frame socketcand cannot carry is refused; the bus stays.
    let fd = DownlinkMessage::Can(CanSend {
        frame: CanFrame { id: 1, fd: true, ..CanFrame::default() },
        payload: vec![0; 12],
        response: None,
    });
    let e = job(&r, vec![fd]).await.expect_err("FD over socketcand");
    assert!(e.contains("classic CAN frames only"), "{e}");
    assert_eq!(job(&r, vec![request(0x10, &[1, 2], None)]).await, Ok(vec![]));
    assert_eq!(r.stats.sent_to_devices.load(Ordering::Relaxed), 3);
    assert_eq!(r.stats.downlink_errors.load(Ordering::Relaxed), 2);
    r.stop.cancel();
    r.finish.cancel();
    tokio::time::timeout(Duration::from_secs(5), r.task).await.expect("stops").expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_down_answers_at_once_and_reconnect_count_gives_up() {
    let mut hub = Hub::start();
    let port = hub.port;
    let r = start(port, json!({"reconnectCount": 2}));
    until("the connector joins", || hub.joined() == 1).await;
    assert!(r.stats.connected.load(Ordering::Relaxed));
    hub.stop();
    until("the loss noticed", || !r.stats.connected.load(Ordering::Relaxed)).await;
    // While it waits to try again, a request is answered at once.
    let started = std::time::Instant::now();
    let e = job(&r, vec![request(0x10, &[1], None)]).await.expect_err("not connected");
    assert!(started.elapsed() < Duration::from_millis(500), "answered in {:?}", started.elapsed());
    assert!(e.contains("is not connected"), "{e}");
    // Two more attempts 0.2 s apart fail (nothing listens): it gives up, and says so to requests.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = job(&r, vec![request(0x10, &[1], None)]).await.expect_err("given up");
    assert!(e.contains("gave up after 2 attempts"), "{e}");
    // The hub back: no new connection, the connector has stopped trying.
    let hub2 = Hub::start_on(port);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hub2.accepted(), 0);
    assert_eq!(r.stats.reconnects.load(Ordering::Relaxed), 0);
    r.finish.cancel();
    tokio::time::timeout(Duration::from_secs(5), r.task).await.expect("stops").expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_lost_bus_stops_the_connector() {
    let mut hub = Hub::start();
    let r = start(hub.port, json!({"reconnect": false}));
    until("the connector joins", || hub.joined() == 1).await;
    hub.stop();
    until("the loss noticed", || !r.stats.connected.load(Ordering::Relaxed)).await;
    let e = job(&r, vec![request(0x10, &[1], None)]).await.expect_err("stopped");
    assert!(e.contains("reconnect is off"), "{e}");
    r.finish.cancel();
    tokio::time::timeout(Duration::from_secs(5), r.task).await.expect("stops").expect("no panic");
}
