//! Shared material for the benchmarks: realistic device messages and the
//! converter configs that map them.
//!
//! Run everything with `cargo bench -p tbgw-bench`; each bench prints a
//! table. Speed targets are checked here as ratios against a baseline
//! measured in the same run, never as absolute times in unit tests.

pub mod dataset;
pub mod native;
pub mod process;

/// A whole-number setting of a bench from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
