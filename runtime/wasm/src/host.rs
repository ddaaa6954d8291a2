//! What a guest instance sees of the host: the per-store state behind its
//! imports.
//!
//! - WASI with every capability denied: no preopened directories, no
//!   environment variables or arguments, no network (every address refused,
//!   no name lookups), empty stdin. Clocks and randomness are allowed: they
//!   reveal nothing and language runtimes need them at start-up.
//! - stdout, stderr and the `log` import go to tbgw's log, tagged with the
//!   converter's name, capped per call; the tail of stderr is kept so that a
//!   trap can be reported with the guest's panic message.
//! - A memory limiter that refuses growth past the converter's cap and
//!   remembers that it did, so that the resulting trap is reported as
//!   running out of memory rather than as a generic trap.

use crate::bindings::tbgw::converter0_1_0::log as log_v1;
use crate::bindings::tbgw::converter0_2_0::log::{Host as LogHost, Level};
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tbgw_core::Key;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Longest log line kept from a guest, in bytes.
const MAX_LINE: usize = 2048;
/// How much of a guest's stderr is kept to explain a trap.
const STDERR_TAIL: usize = 1024;

/// The state of one guest instance's store (opaque outside this crate).
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryLimiter,
    console: Console,
    /// The keys this instance's results named: each text one shared key.
    pub(crate) keys: KeyCache,
}

/// The keys an instance's results name, by text, so that every batch's key
/// table becomes shared [`Key`]s without a new allocation per key per
/// batch. Bounded: a converter whose keys are made of its messages (a `"*"`
/// mapping) starts it afresh past [`KeyCache::MAX`].
///
/// The texts are the guest's: the hash is seeded per process (foldhash), so
/// that a hostile guest cannot craft keys that collide, which would cost
/// the host its time outside the guest's deadline.
#[derive(Default)]
pub(crate) struct KeyCache(std::collections::HashMap<String, Key, foldhash::fast::RandomState>);

impl KeyCache {
    const MAX: usize = 4096;

    /// The shared key of `text`.
    pub(crate) fn key(&mut self, text: String) -> Key {
        if let Some(k) = self.0.get(&text) {
            return k.clone();
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        let key = Key::from(text.as_str());
        self.0.insert(text, key.clone());
        key
    }
}

impl HostState {
    pub(crate) fn new(converter: Arc<str>, memory_bytes: u64, max_lines: u32) -> Self {
        let console = Console::new(converter, max_lines);
        let wasi = WasiCtxBuilder::new()
            .stdout(console.stream(Stream::Stdout))
            .stderr(console.stream(Stream::Stderr))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryLimiter { cap: usize::try_from(memory_bytes).unwrap_or(usize::MAX), used: 0, refused: false },
            console,
            keys: KeyCache::default(),
        }
    }

    /// Reset the per-call state before a call. `quiet` demotes what the
    /// guest logs to debug level: used for `create` in every instance but
    /// the first of a version, so a config notice is not repeated per
    /// worker and per restarted instance.
    pub(crate) fn begin_call(&mut self, quiet: bool) {
        self.memory.refused = false;
        self.console.lock().begin_call(quiet);
    }

    /// Report what the call logged beyond its budget.
    pub(crate) fn end_call(&mut self) {
        self.console.lock().end_call();
    }

    /// The last bytes the guest wrote to stderr, if any.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let console = self.console.lock();
        let tail = String::from_utf8_lossy(&console.stderr_tail);
        // One line, for logs and RPC replies.
        let tail: Vec<&str> = tail.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        (!tail.is_empty()).then(|| tail.join(" | "))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl crate::bindings::tbgw::converter0_2_0::types::Host for HostState {}
impl crate::bindings::tbgw::converter0_1_0::types::Host for HostState {}

impl LogHost for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.console.lock().line(level, message.as_bytes());
    }
}

/// Contract 0.1's `log`: the same, its levels being 0.2's.
impl log_v1::Host for HostState {
    fn log(&mut self, level: log_v1::Level, message: String) {
        let level = match level {
            log_v1::Level::Trace => Level::Trace,
            log_v1::Level::Debug => Level::Debug,
            log_v1::Level::Info => Level::Info,
            log_v1::Level::Warn => Level::Warn,
            log_v1::Level::Error => Level::Error,
        };
        self.console.lock().line(level, message.as_bytes());
    }
}

/// Caps the total linear memory of one instance.
pub(crate) struct MemoryLimiter {
    cap: usize,
    used: usize,
    /// A growth was refused during the current call.
    pub(crate) refused: bool,
}

impl MemoryLimiter {
    /// Linear memory held now, all memories together.
    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.cap {
            self.refused = true;
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; no honest converter needs more.
        Ok(desired <= 1_000_000)
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The guest's stdout, stderr and `log` import, feeding tbgw's log.
#[derive(Clone)]
struct Console(Arc<Mutex<ConsoleState>>);

struct ConsoleState {
    converter: Arc<str>,
    max_lines: u32,
    quiet: bool,
    lines_this_call: u32,
    suppressed: u64,
    /// Unfinished lines of stdout and stderr.
    partial: [Vec<u8>; 2],
    stderr_tail: Vec<u8>,
}

impl Console {
    fn new(converter: Arc<str>, max_lines: u32) -> Self {
        Console(Arc::new(Mutex::new(ConsoleState {
            converter,
            max_lines,
            quiet: false,
            lines_this_call: 0,
            suppressed: 0,
            partial: [Vec::new(), Vec::new()],
            stderr_tail: Vec::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        // A poisoned lock only means a panic elsewhere mid-log: keep logging.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stream(&self, stream: Stream) -> GuestStream {
        GuestStream { console: self.clone(), stream }
    }
}

impl ConsoleState {
    fn begin_call(&mut self, quiet: bool) {
        self.quiet = quiet;
        self.lines_this_call = 0;
        self.suppressed = 0;
        self.stderr_tail.clear();
    }

    fn end_call(&mut self) {
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            if !self.partial[i].is_empty() {
                let line = std::mem::take(&mut self.partial[i]);
                self.line(level_of(stream), &line);
            }
        }
        if self.suppressed > 0 {
            tracing::warn!(
                converter = %self.converter,
                "{} more log lines from this call suppressed (limit {} per call)",
                self.suppressed,
                self.max_lines
            );
            self.suppressed = 0;
        }
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        if let Stream::Stderr = stream {
            self.stderr_tail.extend_from_slice(bytes);
            if self.stderr_tail.len() > STDERR_TAIL {
                let cut = self.stderr_tail.len() - STDERR_TAIL;
                self.stderr_tail.drain(..cut);
            }
        }
        let idx = stream as usize;
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[idx]);
            line.extend_from_slice(&rest[..nl]);
            self.line(level_of(stream), &line);
            rest = &rest[nl + 1..];
        }
        let partial = &mut self.partial[idx];
        if partial.len() < MAX_LINE {
            let room = MAX_LINE - partial.len();
            partial.extend_from_slice(&rest[..rest.len().min(room)]);
        }
    }

    fn line(&mut self, level: Level, bytes: &[u8]) {
        if self.lines_this_call >= self.max_lines {
            self.suppressed += 1;
            return;
        }
        self.lines_this_call += 1;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LINE)]);
        let text = text.trim_end();
        let converter = &*self.converter;
        if self.quiet {
            tracing::debug!(converter, "{text}");
            return;
        }
        match level {
            Level::Trace => tracing::trace!(converter, "{text}"),
            Level::Debug => tracing::debug!(converter, "{text}"),
            Level::Info => tracing::info!(converter, "{text}"),
            Level::Warn => tracing::warn!(converter, "{text}"),
            Level::Error => tracing::error!(converter, "{text}"),
        }
    }
}

fn level_of(stream: Stream) -> Level {
    match stream {
        Stream::Stdout => Level::Info,
        Stream::Stderr => Level::Warn,
    }
}

/// One of the guest's output streams. Writes never fail and never block, so
/// a chatty guest cannot trap or stall on its own output.
#[derive(Clone)]
struct GuestStream {
    console: Console,
    stream: Stream,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.console.lock().write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.console.lock().write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
