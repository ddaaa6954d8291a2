//! The converter runtime: the only crate of tbgw that uses wasmtime.
//!
//! Every translation between device data and ThingsBoard data in tbgw is
//! done by a *converter*, a WebAssembly component implementing one of the
//! worlds of `wit/converter.wit`. This crate loads converters, runs them
//! sandboxed, and swaps them while the gateway runs.
//!
//! # Design
//!
//! **One engine.** A [`Runtime`] owns the wasmtime `Engine` (Cranelift,
//! epoch interruption, pooling allocator), one `Linker` with WASI and the
//! contract's `log` import, and a thread that advances the epoch every few
//! milliseconds. Components are compiled once per process (shared by content
//! hash) and cached on disk across restarts (see [`cache`]).
//!
//! **Contract versions.** The host implements `tbgw:converter@0.2` (the
//! contract of `wit/converter.wit`) and, unchanged, `@0.1`
//! (`wit/0.1.0/`): a component built against 0.1.0 keeps loading and
//! working, what 0.1 cannot say being adapted at the boundary (the
//! `bindings` module says how). A downlink converter also makes ThingsBoard's reply
//! to an RPC from the device's answers ([`Worker::reply`]).
//!
//! **Sandbox.** Guests get WASI with every capability denied: no directories,
//! no environment, no network (see [`host`]). Each store has a memory cap;
//! each call an epoch deadline that grows with its batch ([`Limits`]: a
//! budget per message plus a base). A trap, a timeout or a refused memory
//! growth fails that call with a typed [`CallError`] naming the converter,
//! and the instance is discarded: the next call gets a fresh one. A result
//! larger than the converter's limit fails that message only.
//!
//! **Threads.** Calls are synchronous and must run on dedicated threads, not
//! on tokio's workers (WASI's sync host calls block on a runtime of their
//! own). A [`Converter`] is shared; each thread calls it through its own
//! [`Worker`], which keeps one instance alive across calls: instantiation is
//! paid once, not per message, and `create(config)` runs once per instance.
//!
//! **Batches.** `convert` takes a batch and returns one result per input; a
//! bad message fails alone. When a whole call fails, [`Worker::convert`]
//! retries the batch one message at a time to find the culprit; after two
//! timeouts in a row it stops, and the messages left untried say so
//! ([`MessageError::NotTried`]) rather than claim a timeout of their own.
//!
//! **Hot swap.** [`Converter::replace`] prepares the new version off the hot
//! path (compile, check the world, run `create` in a probe instance) and
//! publishes it atomically; calls in flight finish on the old version, and a
//! broken replacement is refused while the old version keeps serving.

mod bindings;
pub mod cache;
mod component;
mod converter;
mod error;
pub mod host;
mod limits;
mod runtime;

pub use bindings::{CONTRACT_PACKAGE, CONTRACT_VERSION, CONTRACT_VERSIONS, Contract, Downlink, Uplink, is_supported};
pub use cache::CompileSource;
pub use component::{ComponentSource, Import, ImportStatus, Inspection};
pub use converter::{Converter, ConverterInfo, ConverterSpec, Worker};
pub use error::{CallError, LoadError, MessageError, RuntimeError};
pub use limits::Limits;
pub use runtime::{CompileStats, Runtime, RuntimeConfig};

/// An uplink converter.
pub type UplinkConverter = Converter<Uplink>;
/// A downlink converter.
pub type DownlinkConverter = Converter<Downlink>;
