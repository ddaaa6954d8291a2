//! A converter can never crash, hang or bloat the gateway: each misbehaviour
//! of a real compiled guest fails that call (or that message) with a typed
//! error naming the converter, and the next call succeeds on a fresh
//! instance.

mod common;

use common::{batch, probe, runtime};
use std::time::{Duration, Instant};
use tbgw_core::{ConvertedMessage, Value};
use tbgw_wasm::{CallError, ComponentSource, ConverterSpec, Limits, MessageError, UplinkConverter, Worker};

fn attr(out: &ConvertedMessage, key: &str) -> Value {
    out.updates[0]
        .attributes
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.clone())
        .unwrap_or_else(|| panic!("no attribute {key} in {out:?}"))
}

/// The `calls` attribute: how many messages the instance that answered has converted.
fn calls(w: &mut Worker<tbgw_wasm::Uplink>) -> i64 {
    let out = w.try_convert(&batch(&["hello"])).expect("call").remove(0).expect("message");
    match attr(&out, "calls") {
        Value::Int(n) => n,
        other => panic!("calls is {other:?}"),
    }
}

fn load(spec: ConverterSpec) -> UplinkConverter {
    runtime().uplink("probe", spec).expect("load probe")
}

#[test]
fn one_instance_serves_many_calls() {
    let c = load(probe(r#"{"tag":"A"}"#));
    let mut w = c.worker();
    for expected in 1..=5 {
        assert_eq!(calls(&mut w), expected);
    }
    assert_eq!(c.info().instances, 1);
    assert_eq!(c.info().calls, 5);
}

#[test]
fn an_infinite_loop_times_out_and_the_next_call_succeeds() {
    let mut spec = probe("{}");
    (spec.limits.per_message, spec.limits.call_base) = (Duration::from_millis(50), Duration::ZERO);
    let c = load(spec);
    let mut w = c.worker();
    assert_eq!(calls(&mut w), 1);

    let started = Instant::now();
    let err = w.try_convert(&batch(&["spin"])).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, CallError::Timeout { converter: "probe".into(), limit_ms: 50 });
    assert_eq!(err.to_string(), "converter `probe` timed out after 50 ms");
    assert!(took >= Duration::from_millis(50), "stopped before its deadline: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop a loop with a 50 ms deadline");

    // A fresh instance answers the next call.
    assert_eq!(calls(&mut w), 1);
    assert_eq!(c.info().instances, 2);
    assert_eq!(c.info().call_errors, 1);
}

#[test]
fn unbounded_allocation_runs_out_of_memory() {
    let mut spec = probe("{}");
    spec.limits.memory_bytes = 16 * 1024 * 1024;
    let c = load(spec);
    let mut w = c.worker();
    let err = w.try_convert(&batch(&["hog"])).unwrap_err();
    assert_eq!(err, CallError::OutOfMemory { converter: "probe".into(), limit_bytes: 16 * 1024 * 1024 });
    assert_eq!(err.to_string(), "converter `probe` ran out of memory (limit 16 MiB)");
    assert_eq!(calls(&mut w), 1);
}

/// A heap that creeps up call after call (as a garbage-collected guest's
/// does) never reaches the limit: the instance is replaced between calls
/// once it has grown into half its headroom, and no call fails.
#[test]
fn an_instance_whose_memory_creeps_up_is_replaced_before_it_runs_out() {
    let mut spec = probe("{}");
    spec.limits.memory_bytes = 32 * 1024 * 1024;
    let c = load(spec);
    let mut w = c.worker();
    let mut served_by_one = Vec::new();
    for _ in 0..20 {
        let out = w.try_convert(&batch(&["keep:2"])).expect("no call fails").remove(0).expect("the message converts");
        served_by_one.push(match attr(&out, "calls") {
            Value::Int(n) => n,
            other => panic!("calls is {other:?}"),
        });
    }
    let info = c.info();
    assert_eq!(info.call_errors, 0, "{info:?}");
    assert!(info.recycled >= 2, "replaced as it grew: {info:?}");
    assert_eq!(info.instances, info.recycled + 1, "{info:?}");
    // Each instance served several calls before it was replaced: 2 MiB a
    // call, half of the ~30 MiB headroom.
    let most = served_by_one.iter().copied().max().unwrap_or_default();
    assert!(served_by_one.iter().filter(|n| **n == 1).count() >= 3 && most >= 5, "{served_by_one:?}");
    // A single call past the limit still runs out of memory.
    let mut spec = probe("{}");
    spec.limits.memory_bytes = 32 * 1024 * 1024;
    let c = load(spec);
    let mut w = c.worker();
    assert!(w.try_convert(&batch(&["keep:40"])).is_err(), "more than the limit in one call still fails");
}

#[test]
fn a_trap_is_reported_with_the_guest_panic_message() {
    let c = load(probe("{}"));
    let mut w = c.worker();
    let err = w.try_convert(&batch(&["trap"])).unwrap_err();
    match &err {
        CallError::Trap { converter, trap, stderr } => {
            assert_eq!(&**converter, "probe");
            assert!(trap.contains("unreachable"), "{trap}");
            let stderr = stderr.as_deref().unwrap_or_default();
            assert!(stderr.contains("probe: asked to trap"), "stderr: {stderr}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(err.to_string().starts_with("converter `probe` trapped: "), "{err}");
    assert_eq!(calls(&mut w), 1);
}

#[test]
fn a_ten_megabyte_result_fails_that_message_only() {
    // Making 10 MB takes more than the default 100 ms in a debug build on a
    // busy machine: this test is about the result's size, not the deadline.
    let mut spec = probe("{}");
    (spec.limits.per_message, spec.limits.call_base) = (Duration::from_secs(30), Duration::ZERO);
    let c = load(spec);
    let mut w = c.worker();
    let results = w.try_convert(&batch(&["a", "flood", "b"])).expect("the call itself succeeds");
    assert!(results[0].is_ok());
    match &results[1] {
        Err(MessageError::OutputTooLarge { converter, bytes, limit }) => {
            assert_eq!(&**converter, "probe");
            assert!(*bytes >= 10 * 1024 * 1024, "{bytes}");
            assert_eq!(*limit, 1024 * 1024);
        }
        other => panic!("expected OutputTooLarge, got {other:?}"),
    }
    assert!(results[2].is_ok());
    // The instance survived: its count of messages goes on (three, then this one).
    assert_eq!(calls(&mut w), 4);
}

#[test]
fn a_poisonous_message_fails_alone_in_its_batch() {
    let mut spec = probe(r#"{"tag":"A"}"#);
    (spec.limits.per_message, spec.limits.call_base) = (Duration::from_millis(50), Duration::ZERO);
    let c = load(spec);
    let mut w = c.worker();
    let results = w.convert(&batch(&["a", "spin", "b", "trap", "fail", "c"]));
    assert_eq!(results.len(), 6);
    let payload = |r: &Result<ConvertedMessage, MessageError>| match r {
        Ok(out) => out.updates[0].telemetry[0].values[0].value.clone(),
        Err(e) => panic!("unexpected error {e}"),
    };
    assert_eq!(payload(&results[0]), Value::Text("a".into()));
    assert!(matches!(results[1], Err(MessageError::Call(CallError::Timeout { .. }))), "{:?}", results[1]);
    assert_eq!(payload(&results[2]), Value::Text("b".into()));
    assert!(matches!(results[3], Err(MessageError::Call(CallError::Trap { .. }))), "{:?}", results[3]);
    assert_eq!(
        results[4],
        Err(MessageError::Rejected { converter: "probe".into(), message: "probe: asked to fail".into() })
    );
    assert_eq!(payload(&results[5]), Value::Text("c".into()));
    assert_eq!(c.info().message_errors, 3);
}

#[test]
fn a_chatty_guest_is_capped_in_the_log() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // 100,000 host calls take a while in a debug build: this test is about
    // the log, not the deadline.
    let mut spec = probe("{}");
    (spec.limits.per_message, spec.limits.call_base) = (Duration::from_secs(30), Duration::ZERO);
    let c = load(spec);
    let mut w = c.worker();
    let started = Instant::now();
    let results = tracing::subscriber::with_default(subscriber, || w.try_convert(&batch(&["chatty"])));
    assert!(results.expect("call")[0].is_ok());
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let guest_lines = log.lines().filter(|l| l.contains("chatty")).count();
    assert_eq!(guest_lines, 100, "the default cap is 100 lines per call");
    assert!(log.lines().all(|l| l.contains("converter=\"probe\"") || l.contains("converter=probe")), "{log}");
    assert!(log.contains("99902 more log lines from this call suppressed"), "{log}");
}

#[test]
fn the_sandbox_denies_files_environment_and_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    // SAFETY: tests in this binary do not read the environment concurrently.
    unsafe { std::env::set_var("TBGW_SECRET_FOR_SANDBOX_TEST", "hunter2") };
    let c = load(probe(&format!(r#"{{"connect":"{addr}"}}"#)));
    let mut w = c.worker();
    let out = w.try_convert(&batch(&["snoop"])).expect("call").remove(0).expect("message");
    for key in ["fs", "file", "env", "net"] {
        match attr(&out, key) {
            Value::Text(t) => assert!(t.starts_with("denied"), "{key}: {t}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "the guest connected");
}

#[test]
fn stdout_and_stderr_do_not_break_calls() {
    let mut spec = probe("{}");
    (spec.limits.per_message, spec.limits.call_base) = (Duration::from_secs(30), Duration::ZERO);
    let c = load(spec);
    let mut w = c.worker();
    for _ in 0..3 {
        assert!(w.try_convert(&batch(&["chatty"])).expect("call")[0].is_ok());
    }
    assert_eq!(c.info().instances, 1);
}

#[test]
fn an_import_tbgw_does_not_provide_loads_and_traps_when_called() {
    let c = load(probe("{}"));
    let mut w = c.worker();
    assert_eq!(calls(&mut w), 1, "the component loads and converts");
    match w.try_convert(&batch(&["extra"])).unwrap_err() {
        CallError::Trap { trap, .. } => {
            assert!(trap.contains("`tbgw:probe/extra#hello` is not provided by tbgw"), "{trap}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(calls(&mut w), 1);
}

/// Results that break the contract where its types cannot forbid it (an
/// entry naming a key the batch's key table lacks, results missing) fail
/// the call as a broken contract and cost the instance, never the gateway.
#[test]
fn results_that_break_the_contract_fail_the_call_and_cost_the_instance() {
    let spec = ConverterSpec {
        component: ComponentSource::File(tbgw_guests::CONTRACT_BREAKER.into()),
        config: "{}".into(),
        limits: Limits::default(),
    };
    let c = runtime().uplink("breaker", spec).expect("load the breaker");
    let mut w = c.worker();
    let fine = |w: &mut Worker<tbgw_wasm::Uplink>| {
        let out = w.try_convert(&batch(&["fine"])).expect("call").remove(0).expect("message");
        assert_eq!(attr(&out, "ok"), Value::Bool(true));
    };
    fine(&mut w);
    for (payload, reason) in
        [("bad-key", "an entry names key 7 of a key table of 0"), ("short", "returned 0 results for a batch of 2")]
    {
        let err = w.try_convert(&batch(&["fine", payload])).unwrap_err();
        assert_eq!(err, CallError::Contract { converter: "breaker".into(), reason: reason.into() });
        assert_eq!(err.to_string(), format!("converter `breaker` broke the contract: {reason}"));
        assert_eq!(w.live_generation(), None, "{payload}: the instance that broke the contract is dropped");
        fine(&mut w);
    }
    assert_eq!(c.info().instances, 3, "a fresh instance after each broken call");
    assert_eq!(c.info().call_errors, 2);
}
