//! `tbgw demo`: the gateway between simulated devices and a stand-in for
//! ThingsBoard, all on loopback ([`tbgw::demo`]); prints what ThingsBoard
//! receives every two seconds until Ctrl-C (or `--seconds`), then a summary
//! that compares it with what the devices published.

use super::{OK, Out, SOME_FAILED, fail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tbgw::demo::view::Seen;
use tbgw::demo::{Demo, DemoOptions};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub devices: u16,
    /// Each device publishes every this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_ms: u64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Keep the event store here (default: a temporary folder, removed at exit).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The embedded broker's port on 127.0.0.1 (default: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

pub fn run(args: Args) -> ExitCode {
    let temp = match &args.data {
        Some(_) => None,
        None => match tempfile::Builder::new().prefix("tbgw-demo-").tempdir() {
            Ok(t) => Some(t),
            Err(e) => return fail(&format!("cannot make a temporary data folder: {e}")),
        },
    };
    let data_dir = args.data.clone().or_else(|| temp.as_ref().map(|t| t.path().to_owned())).unwrap_or_default();
    let options = DemoOptions {
        devices: usize::from(args.devices),
        interval: Duration::from_millis(args.interval_ms),
        data_dir,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        ..DemoOptions::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("tbgw-io").build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let stop = CancellationToken::new();
    runtime.spawn(super::run::stop_on_signals(stop.clone()));
    runtime.block_on(show(options, args.seconds.map(Duration::from_secs), stop))
}

async fn show(options: DemoOptions, seconds: Option<Duration>, stop: CancellationToken) -> ExitCode {
    let mut out = Out::new();
    let demo = match Demo::start(&options).await {
        Ok(d) => d,
        Err(e) => return fail(&e.to_string()),
    };
    let addr = demo.broker.addr();
    out.line(format!(
        "tbgw demo: {} devices publish every {} ms to the embedded broker at {addr}; tbgw converts them \
         (config/mqtt.json), stores them ({}) and delivers them to ThingsBoard's gateway API on the same broker.",
        options.devices,
        options.interval.as_millis(),
        options.data_dir.display()
    ));
    out.line("What ThingsBoard receives (Ctrl-C to stop):");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let mut last = (Instant::now(), 0u64);
    let end = tokio::time::sleep(seconds.unwrap_or_default());
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
            _ = &mut end, if seconds.is_some() => break,
        }
        if demo.gateway_finished() {
            break;
        }
        let seen = demo.view.snapshot();
        let rate = (seen.readings - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), seen.readings);
        report(&mut out, started.elapsed(), &seen, rate);
    }
    out.line("stopping: the devices first, then the gateway once it delivered what they sent");
    match demo.stop(Duration::from_secs(10)).await {
        Ok(end) => summary(&mut out, &end.seen, end.published),
        Err(e) => fail(&e.to_string()),
    }
}

fn report(out: &mut Out, elapsed: Duration, seen: &Seen, rate: f64) {
    let connected = seen.devices.values().filter(|d| d.connected).count();
    let backlog = seen.stats.as_ref().and_then(|s| s.get("storageBacklog")).map_or("-".to_owned(), ToString::to_string);
    out.line(format!(
        "{:>5.0?}  {connected} devices connected, {} readings ({rate:.0}/s), {} attribute updates; gateway backlog {backlog}",
        elapsed, seen.readings, seen.attribute_updates
    ));
    // One device's latest reading, a different one each time.
    let n = seen.devices.len().max(1);
    let pick = (elapsed.as_secs() as usize / 2) % n;
    if let Some((name, d)) = seen.devices.iter().nth(pick)
        && let Some((ts, values)) = &d.last
    {
        out.line(format!("       {name}: {} at ts {ts}", serde_json::Value::Object(values.clone())));
    }
}

fn summary(out: &mut Out, seen: &Seen, published: u64) -> ExitCode {
    out.line(format!(
        "devices published {published} messages; ThingsBoard received {} readings from {} devices{}",
        seen.readings,
        seen.devices.len(),
        if seen.malformed > 0 { format!(" and {} malformed publishes", seen.malformed) } else { String::new() }
    ));
    if seen.readings >= published && seen.malformed == 0 {
        out.line("nothing lost");
        ExitCode::from(OK)
    } else {
        out.line(format!("{} readings missing", published.saturating_sub(seen.readings)));
        ExitCode::from(SOME_FAILED)
    }
}
