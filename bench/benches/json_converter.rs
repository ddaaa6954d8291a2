//! The built-in `json` uplink converter in WebAssembly against the same
//! mapping compiled natively, on the same 1,000 realistic messages, at batch
//! sizes 1, 16 and 256. Prints µs per message and the ratio wasm/native.
//! Then the contract's boundary alone: a guest that makes the same output
//! shape without reading the payload (`echo`), built against contract 0.2
//! over the guest SDK and against 0.1 with wit-bindgen alone (0.1's
//! boundary, served by this same host), against making that output
//! natively.
//!
//! `cargo bench -p tbgw-bench --bench json_converter`
//!
//! Both sides end with the same result type (what the runtime hands the
//! pipeline), and `tests/same_output.rs` checks that they agree on every
//! message. Runs of the sides alternate so that machine noise hits all;
//! each figure is the best of several runs (noise on a shared machine only
//! ever adds time).

use std::hint::black_box;
use std::time::{Duration, Instant};
use tbgw_bench::{dataset, native::Native};
use tbgw_core::{ConvertedMessage, DeviceUpdate, Entry, Key, RawUplink, Telemetry, Value};
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, Runtime, RuntimeConfig, Uplink, Worker};

const MESSAGES: usize = 1000;
const ROUNDS: usize = 5;
const RUNS: usize = 15;
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
        "{MESSAGES} messages ({} bytes on average), {ROUNDS} rounds per run, best of {RUNS} runs\n",
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
        let (n, w) = (best(n), best(w));
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
    boundary(&messages);
    // The target of the converter platform: the component at most 1.3x
    // the native mapping at batch 256.
    let verdict = if ratio_256 <= 1.3 { "meets the target (1.3)" } else { "MISSES the target (1.3)" };
    println!("ratio at batch 256: {ratio_256:.2}, {verdict}");
}

/// The boundary alone: the `echo` guests (0.2 over the SDK, 0.1 with
/// wit-bindgen alone) against making their output natively.
fn boundary(messages: &[RawUplink]) {
    let rt = Runtime::new(RuntimeConfig { max_instances: 8, ..RuntimeConfig::default() }).expect("runtime");
    let load = |path: &str| {
        let spec = ConverterSpec {
            component: ComponentSource::File(path.into()),
            config: "{}".into(),
            limits: Limits { per_message: Duration::from_secs(10), ..Limits::default() },
        };
        rt.uplink("echo", spec).expect("load an echo guest")
    };
    let (v2, v1) = (load(tbgw_guests::ECHO), load(tbgw_guests::ECHO_V0_1));
    let (mut w2, mut w1) = (v2.worker(), v1.worker());
    let echo = NativeEcho::new();
    for _ in 0..3 {
        run_wasm(&mut w2, messages, 16);
        run_wasm(&mut w1, messages, 16);
    }
    println!("\nthe boundary alone: the same output made without parsing (echo), µs per message");
    println!("| batch | native | wasm, contract 0.1 | wasm, contract 0.2 | boundary 0.1 | boundary 0.2 |");
    println!("|------:|-------:|-------------------:|-------------------:|-------------:|-------------:|");
    for batch in BATCHES {
        let (mut n, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            n.push(run_native_echo(&echo, messages));
            a.push(run_wasm(&mut w1, messages, batch));
            b.push(run_wasm(&mut w2, messages, batch));
        }
        let (n, a, b) = (best(n), best(a), best(b));
        println!("| {batch:>5} | {n:>6.2} | {a:>18.2} | {b:>18.2} | {:>12.2} | {:>12.2} |", a - n, b - n);
    }
}

/// What `echo` makes, made natively (its keys shared, as the guest's are).
struct NativeEcho {
    attributes: [Key; 3],
    values: [Key; 7],
}

impl NativeEcho {
    fn new() -> Self {
        NativeEcho {
            attributes: ["model", "firmware", "location"].map(Key::from),
            values: ["temperature", "humidity", "co2", "rssi", "battery", "occupied", "p1"].map(Key::from),
        }
    }

    fn convert(&self, m: &RawUplink) -> ConvertedMessage {
        let n = m.payload.len() as i64;
        let text = ["TH-200", "3.4.11", "B2/7/R123"];
        let attributes =
            self.attributes.iter().zip(text).map(|(k, t)| Entry { key: k.clone(), value: Value::Text(t.into()) });
        let values = self.values.iter().enumerate().map(|(i, k)| Entry {
            key: k.clone(),
            value: if i == 3 {
                Value::Int(-n)
            } else if i == 5 {
                Value::Bool(true)
            } else {
                Value::Float(n as f64 / 7.0)
            },
        });
        ConvertedMessage {
            updates: vec![DeviceUpdate {
                device: "SN-00042".into(),
                device_type: Some("thermostat".into()),
                attributes: attributes.collect(),
                telemetry: vec![Telemetry { ts: Some(m.received_at), values: values.collect() }],
            }],
            ..ConvertedMessage::default()
        }
    }
}

fn run_native_echo(echo: &NativeEcho, messages: &[RawUplink]) -> f64 {
    let started = Instant::now();
    for _ in 0..ROUNDS {
        for msg in messages {
            black_box(echo.convert(black_box(msg)));
        }
    }
    per_message(started.elapsed(), messages.len())
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

fn best(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}
