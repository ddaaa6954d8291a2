//! The subcommands of the `tbgw` binary, one module each, and what they
//! share: logging set-up, the converter runtime options, exit codes.

pub mod converter_test;
pub mod dead_letters;
pub mod demo;
pub mod inspect;
pub mod new;
pub mod run;

use std::fmt::Display;
use std::io::{IsTerminal, StdoutLock, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tbgw::converters;
use tbgw_wasm::Runtime;

/// Everything converted / shown.
pub const OK: u8 = 0;
/// The command ran, but some inputs failed.
pub const SOME_FAILED: u8 = 1;
/// The command could not run.
pub const UNUSABLE: u8 = 2;

/// Which defaults logging starts with (`RUST_LOG` overrides them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// The tools: warnings and what converters log.
    Tool,
    /// The service: information, with times.
    Service,
    /// The demo: the view on stdout is the show; the gateway says little.
    Demo,
}

/// Logs go to stderr, so that stdout carries only results.
pub fn init_logging(kind: Logging) {
    // async-opcua's client config warns that it lists no endpoints: the
    // OPC-UA connector picks the server's at each connection.
    let default = match kind {
        Logging::Service => {
            "info,rumqttc=warn,fjall=warn,lsm_tree=warn,wasmtime=warn,cranelift_codegen=warn,opcua_client::config=error"
        }
        Logging::Demo => "warn,tbgw::service=info",
        Logging::Tool => "warn,tbgw_wasm::host=info",
    };
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt = if kind == Logging::Tool { fmt.without_time().with_target(false).boxed() } else { fmt.boxed() };
    // The service's records also go to ThingsBoard when it asks
    // (`RemoteLoggingLevel`), by thresholds of their own: RUST_LOG is the
    // terminal's.
    let remote = (kind == Logging::Service).then(|| tbgw::remote_log::layer(tbgw::remote_log::hub()));
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(remote).init();
}

/// Standard output for results. When the reader goes away (`| head`), the
/// rest is dropped quietly instead of failing.
pub struct Out {
    lock: StdoutLock<'static>,
    closed: bool,
}

impl Out {
    pub fn new() -> Self {
        Out { lock: std::io::stdout().lock(), closed: false }
    }

    pub fn line(&mut self, line: impl Display) {
        if !self.closed && writeln!(self.lock, "{line}").is_err() {
            self.closed = true;
        }
    }
}

/// Options for the converter runtime, shared by the converter commands.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Directory for compiled converters [default: $TBGW_CACHE_DIR, or
    /// $XDG_CACHE_HOME/tbgw/components, or ~/.cache/tbgw/components].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile converters every time instead of caching them.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

impl RuntimeArgs {
    pub fn runtime(&self) -> Result<Runtime, ExitCode> {
        let dir = if self.no_cache { None } else { self.cache_dir.clone().or_else(converters::default_cache_dir) };
        converters::runtime(dir).map_err(|e| fail(&e.to_string()))
    }
}

/// Print `message` as an error and return the "could not run" code.
pub fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(UNUSABLE)
}
