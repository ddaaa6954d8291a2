//! The same converter in Rust, Python and JavaScript: the sensor example
//! (`guest-converters/examples/sensor`), each built from a project of
//! `tbgw converter new` with the project's own `build.sh`, on the same 1,000
//! sensor reports at batch sizes 1, 16 and 256. Prints µs per message and
//! the ratio to the Rust version in the same run; then what each costs in
//! memory, measured in a fresh process that loads the compiled component
//! from the cache as a restarted gateway does: the loaded converter, its
//! first instance, each further one (RSS, split into anonymous memory and
//! file-backed pages); and the first load's compile time.
//!
//! `cargo bench -p tbgw-bench --bench languages` (needs python3 with venv
//! and npm, as the tests do; the tools are installed once into
//! `target/tmp/converter-tools`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tbgw::templates::Lang;
use tbgw_core::{Direction, RawUplink, Source};
use tbgw_wasm::{ComponentSource, ConverterSpec, Limits, Runtime, Uplink, Worker};

const MESSAGES: usize = 1000;
const ROUNDS: usize = 3;
const RUNS: usize = 7;
const BATCHES: [usize; 3] = [1, 16, 256];
const CONFIG: &str = r#"{"deviceType": "thermometer"}"#;
/// Set in the child process: the component whose memory it measures.
const CHILD: &str = "TBGW_BENCH_LANGUAGES_CHILD";

fn main() {
    if let Ok(wasm) = std::env::var(CHILD) {
        return memory_child(Path::new(&wasm), &cache_dir());
    }
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR")).join("converter-tools");
    let built: Vec<(Lang, PathBuf)> = Lang::ALL
        .iter()
        .map(|&lang| {
            let (_, wasm) = tbgw_test_support::converter_projects::sensor_example(
                &tools,
                lang.dir(),
                lang.logic(),
                |parent, name| {
                    tbgw::templates::create(parent, name, lang, Direction::Uplink).expect("tbgw converter new");
                    parent.join(name)
                },
            );
            (lang, wasm)
        })
        .collect();
    let messages = reports(MESSAGES);
    let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();

    // First loads into an empty cache: the compile a user waits for once.
    let _ = std::fs::remove_dir_all(cache_dir());
    let rt = tbgw::converters::runtime(Some(cache_dir())).expect("runtime");
    let mut loaded = Vec::new();
    for (lang, wasm) in &built {
        let started = Instant::now();
        let converter = rt.uplink(lang.dir(), spec(wasm)).expect("load the converter");
        let compile = started.elapsed();
        let size = std::fs::metadata(wasm).map_or(0, |m| m.len());
        loaded.push((*lang, converter, compile, size));
    }
    let mut workers: Vec<(Lang, Worker<Uplink>)> = loaded.iter().map(|(l, c, _, _)| (*l, c.worker())).collect();
    for (_, w) in &mut workers {
        for _ in 0..3 {
            run(w, &messages, 16);
        }
    }

    println!("the sensor example in three languages, as tbgw runs them");
    println!(
        "{MESSAGES} reports ({} bytes on average), {ROUNDS} rounds per run, best of {RUNS} runs\n",
        bytes / MESSAGES
    );
    println!("| language | batch 1 µs/msg | batch 16 | batch 256 | × Rust at 256 | instances (recycled) |");
    println!("|----------|---------------:|---------:|----------:|--------------:|---------------------:|");
    let mut table: Vec<(Lang, Vec<f64>)> = workers.iter().map(|(l, _)| (*l, Vec::new())).collect();
    for batch in BATCHES {
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
        // Alternate the languages so that machine noise hits all.
        for _ in 0..RUNS {
            for (i, (_, w)) in workers.iter_mut().enumerate() {
                runs[i].push(run(w, &messages, batch));
            }
        }
        for (i, r) in runs.into_iter().enumerate() {
            table[i].1.push(best(r));
        }
    }
    let rust_256 = table.iter().find(|(l, _)| *l == Lang::Rust).map_or(f64::NAN, |(_, t)| t[2]);
    for (lang, t) in &table {
        let info = loaded.iter().find(|(l, _, _, _)| l == lang).map(|(_, c, _, _)| c.info()).expect("loaded");
        println!(
            "| {:<8} | {:>14.2} | {:>8.2} | {:>9.2} | {:>13.1} | {:>11} ({:>6}) |",
            lang.dir(),
            t[0],
            t[1],
            t[2],
            t[2] / rust_256,
            info.instances,
            info.recycled
        );
    }
    drop(workers);

    println!("\nmemory, in a fresh process loading the cached compilation (MB of RSS: anonymous + file-backed)");
    println!(
        "| language | component | first load (compile) | cached load | loaded converter | first instance | each further instance |"
    );
    println!(
        "|----------|----------:|---------------------:|------------:|-----------------:|---------------:|----------------------:|"
    );
    for (lang, _, compile, size) in &loaded {
        let wasm = &built.iter().find(|(l, _)| l == lang).expect("built").1;
        let m = memory_of(wasm);
        println!(
            "| {:<8} | {:>6.1} MB | {:>18.1} s | {:>8.0} ms | {} | {} | {} |",
            lang.dir(),
            *size as f64 / 1e6,
            compile.as_secs_f64(),
            m.load_ms,
            mb(m.loaded),
            mb(m.first),
            mb(m.further),
        );
    }
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("converter-tools/bench-cache")
}

fn spec(wasm: &Path) -> ConverterSpec {
    ConverterSpec {
        component: ComponentSource::File(wasm.to_owned()),
        config: CONFIG.into(),
        // The default memory limit, as users have it; a generous deadline
        // so that a slow machine's moment is not a failed call.
        limits: Limits { per_message: Duration::from_secs(10), ..Limits::default() },
    }
}

/// Sensor reports as the example maps them: attributes, a location object,
/// four readings of four types, a timestamp; 50 devices.
fn reports(n: usize) -> Vec<RawUplink> {
    (0..n)
        .map(|i| {
            let payload = format!(
                r#"{{"serial": "TH-{:04}", "model": "TH-200", "firmware": "2.4.1", "ts": {}, "readings": {{"temperature": {}.{}, "humidity": {}, "battery": 3.{:02}, "door_open": {}}}, "location": {{"site": "Plant 3", "lat": 52.08, "lon": 4.31}}}}"#,
                i % 50,
                1_733_000_000_000i64 + i as i64 * 1000,
                15 + i % 10,
                i % 10,
                40 + i % 20,
                i % 100,
                i % 7 == 0
            );
            RawUplink {
                source: Source::mqtt(format!("sensors/TH-{:04}/data", i % 50)),
                device: None,
                payload: payload.into_bytes(),
                metadata: Vec::new(),
                received_at: 1_733_000_000_000,
            }
        })
        .collect()
}

/// µs per message, converting the messages `ROUNDS` times, `batch` per call.
fn run(worker: &mut Worker<Uplink>, messages: &[RawUplink], batch: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..ROUNDS {
        for chunk in messages.chunks(batch) {
            let out = worker.try_convert(black_box(chunk)).expect("call");
            assert!(out.iter().all(|r| r.is_ok()), "every report converts");
            black_box(out);
        }
    }
    started.elapsed().as_secs_f64() * 1e6 / (ROUNDS * messages.len()) as f64
}

fn best(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

/// RSS in kB: (anonymous, file-backed and shared).
type Rss = (u64, u64);

struct Memory {
    load_ms: f64,
    loaded: Rss,
    first: Rss,
    further: Rss,
}

fn mb((anon, file): Rss) -> String {
    format!("{:.1} + {:.1}", anon as f64 / 1024.0, file as f64 / 1024.0)
}

fn rss_now() -> Rss {
    let pid = std::process::id();
    let kb = |key| tbgw_bench::process::status_kb(pid, key).unwrap_or(0);
    (kb("RssAnon:"), kb("RssFile:") + kb("RssShmem:"))
}

fn diff(a: Rss, b: Rss) -> Rss {
    (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))
}

/// Run this bench again as a child measuring `wasm`.
fn memory_of(wasm: &Path) -> Memory {
    let out =
        Command::new(std::env::current_exe().expect("this bench")).env(CHILD, wasm).output().expect("the memory child");
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<f64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    assert!(out.status.success() && n.len() == 7, "the memory child: {text}{}", String::from_utf8_lossy(&out.stderr));
    let kb = |i: usize| (n[i] as u64, n[i + 1] as u64);
    Memory { load_ms: n[0], loaded: kb(1), first: kb(3), further: kb(5) }
}

/// The child: the gateway's runtime, the cached component loaded, one
/// instance, then three more; prints the load time and the RSS steps.
fn memory_child(wasm: &Path, cache: &Path) {
    let messages = reports(16);
    let rt: Runtime = tbgw::converters::runtime(Some(cache.to_owned())).expect("runtime");
    let before = rss_now();
    let started = Instant::now();
    let converter = rt.uplink("measured", spec(wasm)).expect("load the converter");
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let loaded = rss_now();
    let mut first = converter.worker();
    black_box(first.try_convert(&messages).expect("call"));
    let one = rss_now();
    let mut more: Vec<Worker<Uplink>> = (0..3).map(|_| converter.worker()).collect();
    for w in &mut more {
        black_box(w.try_convert(&messages).expect("call"));
    }
    let four = rss_now();
    let further = diff(one, four);
    let (l, f) = (diff(before, loaded), diff(loaded, one));
    println!("{load_ms:.1} {} {} {} {} {} {}", l.0, l.1, f.0, f.1, further.0 / 3, further.1 / 3);
}
