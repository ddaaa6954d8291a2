//! The `tbgw` gateway: configuration, wiring and the command line.
//!
//! - [`converters`]: how configs name converters (a built-in name or a
//!   `.wasm` path) and how the converter runtime is set up for this machine.
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin command line over this
//! library.

pub mod converters;
