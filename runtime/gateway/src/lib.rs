//! The `tbgw` gateway: configuration, wiring and the command line.
//!
//! - [`config`]: the gateway's configuration file (the ThingsBoard gateway's
//!   format), every problem reported by path.
//! - [`demo`]: `tbgw demo`: an embedded broker, a device simulator and a
//!   stand-in for ThingsBoard around the real gateway.
//! - [`machine`]: the machine's and the process's state, for the statistics.
//! - [`memory`]: how tbgw uses the C allocator (arenas, start-up memory).
//! - [`connectors`]: the connectors this tbgw has, one line each.
//! - [`converters`]: how configs name converters (a built-in name or a
//!   `.wasm` path), the registry of the converters running, and how the
//!   converter runtime is set up for this machine.
//! - [`pipeline`]: converter threads and the store writer, between the
//!   connectors and the event store.
//! - [`remote_log`]: the gateway's log records and error counts sent to
//!   ThingsBoard as the Python gateway sends them (`RemoteLoggingLevel`).
//! - [`router`]: ThingsBoard's requests (RPC, attribute updates, RPCs to the
//!   gateway) to connectors and back, devices' own requests to ThingsBoard.
//! - [`service`]: everything wired ([`service::Gateway::build`]), run, and
//!   stopped in order, a connector alone too.
//! - [`status`]: what the gateway knows of itself, one snapshot; statistics
//!   and the gateway RPCs render it.
//! - [`templates`]: converter projects in Rust, Python and JavaScript, from
//!   the templates built into the binary (`tbgw converter new`).
//! - [`watch`]: converter files swapped in when they change (hot swap).
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin command line over this
//! library.

pub mod config;
pub mod connectors;
pub mod converters;
pub mod demo;
pub mod http;
pub mod machine;
pub mod memory;
pub mod page;
pub mod pipeline;
pub mod remote_config;
pub mod remote_log;
pub mod router;
pub mod service;
pub mod status;
pub mod templates;
pub mod uploads;
pub mod watch;
