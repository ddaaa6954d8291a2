//! Shared material for the benchmarks: realistic device messages and the
//! converter configs that map them.
//!
//! Run everything with `cargo bench -p tbgw-bench`; each bench prints a
//! table. Speed targets are checked here as ratios against a baseline
//! measured in the same run, never as absolute times in unit tests.

pub mod dataset;
pub mod native;
pub mod process;
