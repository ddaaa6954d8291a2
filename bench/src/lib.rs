//! Shared material for the benchmarks: realistic device messages and the
//! converter configs that map them.
//!
//! Run everything with `cargo bench -p tbgw-bench`; each bench prints a
//! table. Speed targets are checked here as ratios against a baseline
//! measured in the same run, never as absolute times in unit tests.

pub mod dataset;
pub mod native;
pub mod process;

use std::path::{Path, PathBuf};

/// A whole-number setting of a bench from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `p` quantile (0.5 for the median, 1.0 the largest) of `sorted`,
/// sorted ascending, by nearest rank; NaN when it is empty.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Write the gateway config of a bench with one connector (`kind`, named
/// `name`, configured by `file` in `dir`): ThingsBoard on `tb_port`,
/// statistics every second, a memory store; returns its path.
pub fn write_config(dir: &Path, tb_port: u16, kind: &str, name: &str, file: &str) -> anyhow::Result<PathBuf> {
    write_config_with(dir, tb_port, kind, name, file, "")
}

/// [`write_config`] with more keys of the `tbgw` section (`"maxBatch: 64,
/// queue: 1024"`).
pub fn write_config_with(
    dir: &Path,
    tb_port: u16,
    kind: &str,
    name: &str,
    file: &str,
    tbgw: &str,
) -> anyhow::Result<PathBuf> {
    let config = dir.join("tb_gateway.yaml");
    let more = if tbgw.is_empty() { String::new() } else { format!(", {tbgw}") };
    std::fs::write(
        &config,
        format!(
            "thingsboard: {{host: 127.0.0.1, port: {tb_port}, security: {{type: accessToken, accessToken: bench}},\
             statistics: {{enable: true, statsSendPeriodInSeconds: 1}}}}\n\
             storage: {{type: memory}}\n\
             connectors: [{{type: {kind}, name: {name}, configuration: {file}}}]\n\
             tbgw: {{cacheDir: {}{more}}}\n",
            dir.join("cache").display(),
        ),
    )?;
    Ok(config)
}
