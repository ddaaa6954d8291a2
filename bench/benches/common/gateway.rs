//! The benches' gateway mode: the bench binary runs itself as a child with
//! `TBGW_BENCH_GATEWAY=<config>`, so that tbgw's CPU and memory are its own
//! process's. Set up as tbgw's `main` sets itself up.

use std::path::Path;

pub const GATEWAY_MODE: &str = "TBGW_BENCH_GATEWAY";

/// In gateway mode, run the gateway until killed and return `Some`; else
/// `None` (this is the bench itself).
pub fn run_if_asked() -> Option<anyhow::Result<()>> {
    let config = std::env::var(GATEWAY_MODE).ok()?;
    tbgw::memory::limit_arenas();
    // Warnings (RUST_LOG, as the bench sets it) to stderr, and remote
    // logging's layer (off until ThingsBoard sets a level), as `tbgw run`.
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::from_default_env());
    let _ = tracing_subscriber::registry().with(fmt).with(tbgw::remote_log::layer(tbgw::remote_log::hub())).try_init();
    Some(run(Path::new(&config)))
}

fn run(config: &Path) -> anyhow::Result<()> {
    let (cfg, _) = tbgw::config::load(config).map_err(|d| anyhow::anyhow!("{:?}", d.errors))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(tbgw::service::run(cfg, tokio_util::sync::CancellationToken::new()))?;
    Ok(())
}
