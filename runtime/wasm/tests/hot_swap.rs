//! Hot swap under load: threads convert continuously while the converter is
//! replaced 50 times (alternating component and config) and offered broken
//! replacements. No call fails, every batch is converted by exactly one
//! version, and broken replacements never take over.

mod common;

use common::{batch, json_uplink, probe, runtime_with_cache};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, LoadError};

const SWAPS: u64 = 50;
const THREADS: usize = 3;

/// Version A: the probe guest, answering as device `A`.
fn version_a() -> ConverterSpec {
    probe(r#"{"tag":"A"}"#)
}

/// Version B: the built-in JSON converter, answering as device `B`.
fn version_b() -> ConverterSpec {
    json_uplink(
        r#"{"deviceInfo":{"deviceNameExpressionSource":"constant","deviceNameExpression":"B"},
            "timeseries":[{"type":"integer","key":"v","value":"${v}"}]}"#,
    )
}

#[test]
fn fifty_swaps_under_load_lose_no_call() {
    let cache = tempfile::tempdir().expect("tempdir");
    let rt = runtime_with_cache(Some(cache.path().to_owned()));
    let converter = rt.uplink("swapped", version_a()).expect("load A");
    let stop = Arc::new(AtomicBool::new(false));

    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let converter = converter.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut worker = converter.worker();
                let mut seen: HashMap<String, u64> = HashMap::new();
                let mut failures = Vec::new();
                let input = batch(&[r#"{"v":1}"#, r#"{"v":2}"#, r#"{"v":3}"#, r#"{"v":4}"#]);
                while !stop.load(Ordering::Relaxed) {
                    let results = worker.convert(&input);
                    assert_eq!(results.len(), input.len());
                    let mut devices = Vec::new();
                    for r in results {
                        match r {
                            Ok(out) => devices.extend(out.updates.into_iter().map(|u| u.device)),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    // One batch, one version.
                    devices.dedup();
                    assert!(devices.len() <= 1, "a batch mixed versions: {devices:?}");
                    for d in devices {
                        *seen.entry(d).or_default() += 1;
                    }
                }
                (seen, failures)
            })
        })
        .collect();

    let broken: Vec<(&str, ConverterSpec)> = vec![
        (
            "not a component",
            ConverterSpec {
                component: ComponentSource::Bytes { label: "junk".into(), wasm: Arc::from(&b"junk"[..]) },
                config: "{}".into(),
                limits: Limits::default(),
            },
        ),
        (
            "the wrong world",
            ConverterSpec {
                component: ComponentSource::Builtin { name: "json", wasm: tbgw_guests::JSON_DOWNLINK },
                config: "{}".into(),
                limits: Limits::default(),
            },
        ),
        ("a config create() refuses", probe(r#"{"fail":true}"#)),
        ("an invalid JSON converter config", json_uplink(r#"{"deviceInfo":{}}"#)),
    ];

    let mut refused = 0;
    for i in 1..=SWAPS {
        let next = if i % 2 == 1 { version_b() } else { version_a() };
        converter.replace(next).expect("a good replacement is accepted");
        std::thread::sleep(Duration::from_millis(5));
        if i % 10 == 0 {
            for (what, spec) in &broken {
                let before = converter.info().generation;
                let err = converter.replace(spec.clone()).err().unwrap_or_else(|| panic!("{what} was accepted"));
                assert!(
                    matches!(err, LoadError::Compile { .. } | LoadError::WrongWorld { .. } | LoadError::Config { .. }),
                    "{what}: {err:?}"
                );
                assert_eq!(converter.info().generation, before, "{what} changed the version");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);

    let mut seen: HashMap<String, u64> = HashMap::new();
    for t in threads {
        let (s, failures) = t.join().expect("worker thread");
        assert!(failures.is_empty(), "failed calls during swaps: {failures:?}");
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
    }
    let devices: Vec<&String> = seen.keys().collect();
    assert!(seen.keys().all(|d| d == "A" || d == "B"), "results from neither version: {devices:?}");
    assert!(seen["A"] > 0 && seen["B"] > 0, "both versions served: {seen:?}");

    let info = converter.info();
    assert_eq!(info.generation, SWAPS + 1);
    assert_eq!(info.swaps, SWAPS);
    assert_eq!(info.refused_swaps, refused);
    assert_eq!(info.message_errors, 0);
    // SWAPS is even: version A (the probe) is current again.
    assert_eq!(info.sha256, rt.uplink("check", version_a()).expect("A").info().sha256);
}

#[test]
fn after_a_refused_swap_the_old_version_keeps_serving() {
    let rt = common::runtime();
    let converter = rt.uplink("c", version_a()).expect("load");
    let mut worker = converter.worker();
    assert!(converter.replace(probe(r#"{"fail":true}"#)).is_err());
    let out = worker.convert(&batch(&["x"])).remove(0).expect("converted");
    assert_eq!(out.updates[0].device, "A");
    assert_eq!(converter.info().generation, 1);
}

#[test]
fn a_call_in_flight_finishes_on_its_version() {
    let rt = common::runtime();
    let mut spec = version_a();
    (spec.limits.per_message, spec.limits.call_base) = (Duration::from_secs(30), Duration::ZERO);
    let converter = rt.uplink("c", spec).expect("load");
    // Compile B now so that the swap below is quick.
    let _b = rt.uplink("b", version_b()).expect("B");

    let caller = {
        let converter = converter.clone();
        std::thread::spawn(move || {
            let mut worker = converter.worker();
            let out = worker.convert(&batch(&["busy:1500"])).remove(0).expect("converted");
            let finished = std::time::Instant::now();
            let next = worker.convert(&batch(&[r#"{"v":7}"#])).remove(0).expect("converted");
            (out.updates[0].device.clone(), finished, next.updates[0].device.clone(), worker.live_generation())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    converter.replace(version_b()).expect("swap");
    let swapped = std::time::Instant::now();
    let (first, finished, next, generation) = caller.join().expect("caller");
    assert!(swapped < finished, "the swap should land while the call runs");
    assert_eq!(first, "A", "the call started on A finishes on A");
    assert_eq!(next, "B", "the next call runs on B");
    assert_eq!(generation, Some(2));
}
