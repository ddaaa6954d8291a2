//! `tbgw run`: the gateway service, until SIGINT or SIGTERM; and
//! `tbgw check-config`: every problem of a configuration at once, converter
//! configs included, without starting anything.

use super::{OK, RuntimeArgs, UNUSABLE, fail};
use std::path::PathBuf;
use std::process::ExitCode;
use tbgw::config::{self, GatewayConfig};
use tbgw::service;
use tbgw_core::config::Diagnostics;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The gateway configuration (tb_gateway.json or .yaml).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The gateway configuration (tb_gateway.json or .yaml).
    pub config: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

fn print_notices(d: &Diagnostics) {
    for n in &d.notices {
        tracing::info!("{}: {n}", "config");
    }
}

fn print_errors(file: &std::path::Path, d: &Diagnostics) {
    for e in &d.errors {
        eprintln!("error: {}: {e}", file.display());
    }
}

/// Load the configuration, or print every problem.
fn load(file: &std::path::Path) -> Result<(GatewayConfig, Diagnostics), ExitCode> {
    config::load(file).map_err(|d| {
        print_errors(file, &d);
        eprintln!("{} problem(s) in {}", d.errors.len(), file.display());
        ExitCode::from(UNUSABLE)
    })
}

pub fn run(args: RunArgs) -> ExitCode {
    let (config, d) = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    print_notices(&d);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("tbgw-io").build() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(stop_on_signals(shutdown.clone()));
    match runtime.block_on(service::run(config, shutdown)) {
        Ok(service::Stopped::Normally) => ExitCode::from(OK),
        Ok(service::Stopped::Restart) => {
            drop(runtime);
            restart()
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// Replace this process with a fresh `tbgw` with the same arguments: the
/// configuration is read again, the same PID keeps serving (systemd and
/// containers see no exit).
fn restart() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(&format!("cannot restart: where is the tbgw binary? {e}")),
    };
    tracing::info!("restarting: {}", exe.display());
    let err = std::process::Command::new(&exe).args(std::env::args_os().skip(1)).exec();
    fail(&format!("cannot restart {}: {err}", exe.display()))
}

/// Cancel `shutdown` on SIGINT or SIGTERM (a second one exits at once).
pub async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::error!("cannot listen for SIGINT/SIGTERM; stop the gateway with SIGKILL");
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stop requested; send it again to stop at once");
    shutdown.cancel();
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::warn!("stopping at once");
    std::process::exit(1);
}

pub fn check(args: CheckArgs) -> ExitCode {
    let (config, d) = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for n in &d.notices {
        eprintln!("notice: {}: {n}", args.config.display());
    }
    let runtime = match args.runtime.runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    // Every converter, so that every bad converter config is reported.
    let (converters, errors) = service::check_converters(&config, &runtime);
    for e in &errors {
        eprintln!("error: {}: {e}", args.config.display());
    }
    let problems = errors.len();
    if problems > 0 {
        eprintln!("{problems} problem(s) in {}", args.config.display());
        return ExitCode::from(UNUSABLE);
    }
    println!(
        "{}: OK ({} connector(s), {} converter(s), {} notice(s))",
        args.config.display(),
        config.connectors.len(),
        converters,
        d.notices.len()
    );
    ExitCode::from(OK)
}
