//! Runs the `json` converter component on the benchmark's data set for a
//! while, with a perf map, so that its time can be profiled:
//!
//! `cargo build --release -p tbgw-bench --example profile_json`
//! `perf record -F 2000 -g target/release/examples/profile_json 10 && perf report`
//! (arguments: seconds, batch size; `TBGW_PROFILE_WASM` a component to load
//! instead of the built-in `json`, `TBGW_PROFILE_CONFIG` its config,
//! `TBGW_CACHE_DIR` a compile cache). Instruction counts, which repeat
//! whatever else the machine does: a fixed count with
//! `TBGW_PROFILE_MESSAGES`, under `valgrind --tool=callgrind`, minus the
//! same run with `TBGW_PROFILE_MESSAGES=1` (1,000 messages); with
//! `TBGW_PROFILE_NATIVE`, the native baseline.

use std::time::{Duration, Instant};
use tbgw_bench::dataset;
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, Runtime, RuntimeConfig};

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let batch: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let messages = dataset::messages(1000);
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 4,
        perf_map: true,
        cache_dir: std::env::var_os("TBGW_CACHE_DIR").map(Into::into),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let converter = rt
        .uplink(
            "json",
            ConverterSpec {
                // TBGW_PROFILE_WASM: an unstripped build of the component, for names.
                component: match std::env::var_os("TBGW_PROFILE_WASM") {
                    Some(path) => ComponentSource::File(path.into()),
                    None => ComponentSource::Builtin { name: "json", wasm: tbgw_guests::JSON_UPLINK },
                },
                config: std::env::var("TBGW_PROFILE_CONFIG").unwrap_or_else(|_| dataset::CONFIG.into()),
                limits: Limits { per_message: Duration::from_secs(5), ..Limits::default() },
            },
        )
        .expect("load");
    // TBGW_PROFILE_NATIVE: the same mapping compiled natively, the baseline.
    if std::env::var_os("TBGW_PROFILE_NATIVE").is_some() {
        let native = tbgw_bench::native::Native::new(dataset::CONFIG).expect("config");
        let count: u64 = std::env::var("TBGW_PROFILE_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
        let mut n = 0u64;
        while n < count {
            for m in &messages {
                std::hint::black_box(native.convert(m).expect("converted"));
            }
            n += messages.len() as u64;
        }
        println!("{n} messages natively");
        return;
    }
    let mut worker = converter.worker();
    // TBGW_PROFILE_MESSAGES: a fixed number of messages instead of a time,
    // for instruction counts that repeat (`valgrind --tool=callgrind`).
    let fixed: Option<u64> = std::env::var("TBGW_PROFILE_MESSAGES").ok().and_then(|n| n.parse().ok());
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while fixed.map_or(Instant::now() < until, |f| n < f) {
        for chunk in messages.chunks(batch) {
            let results = worker.try_convert(chunk).expect("call");
            if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                panic!("a message failed: {e}");
            }
            std::hint::black_box(results);
            n += chunk.len() as u64;
        }
    }
    let info = converter.info();
    println!(
        "{n} messages, {:.2} µs/msg; {} calls, {} instances",
        seconds as f64 * 1e6 / n as f64,
        info.calls,
        info.instances
    );
}
