//! The built-in `json` uplink converter in WebAssembly against the same
//! mapping compiled natively, on the same 1,000 realistic messages, at batch
//! sizes 1, 16 and 256. Prints µs per message and the ratio wasm/native.
//!
//! `cargo bench -p tbgw-bench --bench json_converter`
//!
//! Both sides end with the same result type (what the runtime hands the
//! pipeline), and `tests/same_output.rs` checks that they agree on every
//! message. Runs of the two sides alternate so that machine noise hits both;
//! each figure is the median of several runs.

use std::hint::black_box;
use std::time::{Duration, Instant};
use tbgw_bench::{dataset, native::Native};
use tbgw_core::RawUplink;
use tbgw_wasm::{Uplink, Worker};

const MESSAGES: usize = 1000;
const ROUNDS: usize = 5;
const RUNS: usize = 9;
const BATCHES: [usize; 3] = [1, 16, 256];

fn main() {
    let messages = dataset::messages(MESSAGES);
    let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
    let native = Native::new(dataset::CONFIG).expect("config");
    let (_rt, converter) = dataset::wasm_converter();
    let mut worker = converter.worker();

    // Warm up both sides (caches, branch predictors, the instance).
    for _ in 0..3 {
        run_native(&native, &messages, 16);
        run_wasm(&mut worker, &messages, 16);
    }

    println!("json uplink converter: WebAssembly component vs the same mapping native");
    println!(
        "{MESSAGES} messages ({} bytes on average), {ROUNDS} rounds per run, median of {RUNS} runs\n",
        bytes / MESSAGES
    );
    println!("| batch | native µs/msg | wasm µs/msg | wasm/native |");
    println!("|------:|--------------:|------------:|------------:|");
    let mut ratio_256 = 0.0;
    for batch in BATCHES {
        let mut n = Vec::with_capacity(RUNS);
        let mut w = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            n.push(run_native(&native, &messages, batch));
            w.push(run_wasm(&mut worker, &messages, batch));
        }
        let (n, w) = (median(n), median(w));
        let ratio = w / n;
        if batch == 256 {
            ratio_256 = ratio;
        }
        println!("| {batch:>5} | {n:>13.2} | {w:>11.2} | {ratio:>11.2} |");
    }
    println!();

    // What an instance costs to start (instantiate + create(config)), which
    // a worker pays once, and again only after a trap or a swap.
    let started = Instant::now();
    let starts = 20;
    for _ in 0..starts {
        let mut fresh = converter.worker();
        black_box(fresh.try_convert(&messages[..1]).expect("call"));
    }
    println!("instance start + create + first call: {:.0} µs", started.elapsed().as_secs_f64() * 1e6 / starts as f64);
    let verdict = if ratio_256 <= 1.3 {
        "meets the stretch target (1.3)"
    } else if ratio_256 <= 1.5 {
        "meets the target (1.5)"
    } else {
        "MISSES the target (1.5)"
    };
    println!("ratio at batch 256: {ratio_256:.2}, {verdict}");
}

/// µs per message, converting the messages `ROUNDS` times natively.
fn run_native(native: &Native, messages: &[RawUplink], batch: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..ROUNDS {
        for chunk in messages.chunks(batch) {
            for msg in chunk {
                black_box(native.convert(black_box(msg)).ok());
            }
        }
    }
    per_message(started.elapsed(), messages.len())
}

/// µs per message, converting the messages `ROUNDS` times in the component,
/// `batch` messages per call.
fn run_wasm(worker: &mut Worker<Uplink>, messages: &[RawUplink], batch: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..ROUNDS {
        for chunk in messages.chunks(batch) {
            black_box(worker.try_convert(black_box(chunk)).expect("call"));
        }
    }
    per_message(started.elapsed(), messages.len())
}

fn per_message(elapsed: Duration, messages: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / (ROUNDS * messages) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
