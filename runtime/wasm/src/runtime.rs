//! The [`Runtime`]: one wasmtime engine for the whole gateway, its linker,
//! the deadline ticker and the compiled-component caches.

use crate::bindings::tbgw::{converter0_1_0 as v1, converter0_2_0 as v2};
use crate::bindings::{Contract, Downlink, Uplink};
use crate::cache::{Cache, CompileSource, sha256_hex};
use crate::component::{Compiled, ComponentSource, Inspection};
use crate::component::{ImportStatus, import_status};
use crate::converter::{Converter, ConverterSpec};
use crate::error::{LoadError, RuntimeError};
use crate::host::HostState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How the runtime is set up. Per-converter limits are in [`crate::Limits`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached between runs; `None` compiles
    /// every component at every start.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may be alive at once, across all converters (each
    /// worker thread keeps one per converter it runs). The pooling allocator
    /// reserves address space for this many up front.
    pub max_instances: u32,
    /// The largest memory limit any converter may ask for.
    pub max_memory_bytes: u64,
    /// Granularity of call deadlines.
    pub epoch_tick: Duration,
    /// Write `/tmp/perf-<pid>.map` so that `perf` can name the functions of
    /// compiled converters (for profiling a converter; off by default).
    pub perf_map: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 256,
            max_memory_bytes: 1024 * 1024 * 1024,
            epoch_tick: Duration::from_millis(5),
            perf_map: false,
        }
    }
}

/// Counts of how components were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompileStats {
    /// Compiled by Cranelift.
    pub compiled: u64,
    /// Loaded from the on-disk cache.
    pub from_disk_cache: u64,
    /// Shared with another converter of this process.
    pub from_memory: u64,
}

/// The converter runtime. Cheap to clone; the engine, the caches and the
/// ticker thread live as long as any clone (or any converter) does.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<Cache>,
    /// Compiled components by content hash, shared while someone uses them.
    compiled: Mutex<HashMap<String, Weak<Compiled>>>,
    config: RuntimeConfig,
    stats: [AtomicU64; 3],
    /// Held for its `Drop`, which stops the thread.
    _ticker: Ticker,
}

impl Runtime {
    /// Set up the engine: Cranelift, epoch interruption for deadlines, the
    /// pooling allocator sized by `config`, and WASI with every capability
    /// denied.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::new();
        let n = config.max_instances.max(1);
        let max_memory = usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX);
        // A Rust guest is one component instance holding a few core
        // instances (its module, WASI adapter shims) and one or two
        // memories; interpreters (Python, JavaScript) bring more.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_memory_size(max_memory)
            .max_unused_warm_slots(n.min(100));
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .wasm_component_model(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if config.perf_map {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(engine_err)?;

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        // Both versions of the contract's imports.
        v2::log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(engine_err)?;
        v2::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(engine_err)?;
        v1::log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(engine_err)?;
        v1::types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(engine_err)?;

        let cache = match &config.cache_dir {
            Some(dir) => {
                Some(Cache::open(dir, &engine).map_err(|source| RuntimeError::CacheDir { path: dir.clone(), source })?)
            }
            None => None,
        };
        let ticker = Ticker::start(engine.clone(), config.epoch_tick).map_err(RuntimeError::Ticker)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                compiled: Mutex::new(HashMap::new()),
                config,
                stats: Default::default(),
                _ticker: ticker,
            }),
        })
    }

    /// Load an uplink converter: compile (or fetch from the caches), check
    /// the world, and validate `create(config)` in a first instance.
    pub fn uplink(&self, name: &str, spec: ConverterSpec) -> Result<Converter<Uplink>, LoadError> {
        Converter::load(self, name, spec)
    }

    /// Load a downlink converter; see [`Runtime::uplink`].
    pub fn downlink(&self, name: &str, spec: ConverterSpec) -> Result<Converter<Downlink>, LoadError> {
        Converter::load(self, name, spec)
    }

    /// Load a converter of either direction.
    pub fn load<C: Contract>(&self, name: &str, spec: ConverterSpec) -> Result<Converter<C>, LoadError> {
        Converter::load(self, name, spec)
    }

    /// What a component implements and imports.
    pub fn inspect(&self, source: &ComponentSource) -> Result<Inspection, LoadError> {
        let name: Arc<str> = "inspect".into();
        let wasm = source.read(&name)?;
        let (compiled, _, _) = self.compile(&name, source)?;
        Ok(Inspection::new(&compiled.component, &self.inner.engine, &wasm, compiled.sha256.clone()))
    }

    /// How components were obtained so far.
    pub fn compile_stats(&self) -> CompileStats {
        let get = |s: CompileSource| self.inner.stats[s as usize].load(Ordering::Relaxed);
        CompileStats {
            compiled: get(CompileSource::Compiled),
            from_disk_cache: get(CompileSource::DiskCache),
            from_memory: get(CompileSource::Memory),
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Epoch ticks for a deadline of `d` (at least `d`, at most one tick more).
    pub(crate) fn ticks(&self, d: Duration) -> u64 {
        let tick = self.inner.config.epoch_tick.as_nanos().max(1);
        u64::try_from(d.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// The compiled component for `source`: from this process, the disk
    /// cache, or Cranelift, in that order.
    pub(crate) fn compile(
        &self,
        converter: &Arc<str>,
        source: &ComponentSource,
    ) -> Result<(Arc<Compiled>, CompileSource, Duration), LoadError> {
        let started = Instant::now();
        let wasm = source.read(converter)?;
        let sha256 = sha256_hex(&wasm);
        let mut compiled = self.inner.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = compiled.get(&sha256).and_then(Weak::upgrade) {
            self.inner.stats[CompileSource::Memory as usize].fetch_add(1, Ordering::Relaxed);
            return Ok((c, CompileSource::Memory, started.elapsed()));
        }
        let engine = &self.inner.engine;
        let (component, how) = match self.inner.cache.as_ref().and_then(|c| c.load(engine, &sha256)) {
            Some(component) => (component, CompileSource::DiskCache),
            None => {
                let component =
                    wasmtime::component::Component::new(engine, &*wasm).map_err(|e| LoadError::Compile {
                        converter: converter.clone(),
                        origin: source.describe(),
                        reason: format!("{e:#}"),
                    })?;
                // Stored, the artifact is used from the file: mapped, it is
                // resident only where it runs (see `cache`), while the
                // compiler's copy would stay whole in anonymous memory.
                let mapped = match &self.inner.cache {
                    Some(cache) if cache.store(&sha256, &component) => cache.load(engine, &sha256),
                    _ => None,
                };
                (mapped.unwrap_or(component), CompileSource::Compiled)
            }
        };
        self.inner.stats[how as usize].fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Compiled { component, sha256: sha256.clone() });
        compiled.retain(|_, w| w.strong_count() > 0);
        compiled.insert(sha256, Arc::downgrade(&entry));
        Ok((entry, how, started.elapsed()))
    }

    /// Resolve a component's imports. Imports tbgw does not provide are
    /// linked to functions that trap, so that components built with extra
    /// imports they never call (common with interpreters) still load; the
    /// list is logged.
    pub(crate) fn instance_pre(
        &self,
        converter: &str,
        compiled: &Compiled,
    ) -> wasmtime::Result<InstancePre<HostState>> {
        let component = &compiled.component;
        let engine = &self.inner.engine;
        let missing: Vec<(String, ComponentItem)> = component
            .component_type()
            .imports(engine)
            .filter(|(name, _)| import_status(name) == ImportStatus::Missing)
            .map(|(name, item)| (name.to_owned(), item.ty))
            .collect();
        if missing.is_empty() {
            return self.inner.linker.instantiate_pre(component);
        }
        let names: Vec<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
        tracing::warn!(converter, "imports {} which tbgw does not provide: calling them traps", names.join(", "));
        // Stub only these: wasmtime's `define_unknown_imports_as_traps`
        // would also shadow WASI imports that the linker serves through
        // semver matching (a guest's wasi:cli@0.2.6 by our 0.2.12).
        let mut linker = self.inner.linker.clone();
        for (name, item) in missing {
            match item {
                ComponentItem::ComponentInstance(instance) => {
                    let mut stubs = linker.instance(&name)?;
                    for (func, item) in instance.exports(engine) {
                        if let ComponentItem::ComponentFunc(_) = item.ty {
                            let what = format!("{name}#{func}");
                            stubs.func_new(func, move |_, _, _, _| {
                                Err(wasmtime::format_err!("`{what}` is not provided by tbgw"))
                            })?;
                        }
                    }
                }
                ComponentItem::ComponentFunc(_) => {
                    let what = name.clone();
                    linker.root().func_new(&name, move |_, _, _, _| {
                        Err(wasmtime::format_err!("`{what}` is not provided by tbgw"))
                    })?;
                }
                _ => {}
            }
        }
        linker.instantiate_pre(component)
    }
}

/// The thread that advances the engine's epoch, which is what call
/// deadlines count in.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tbgw-wasm-epoch".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })?;
        Ok(Ticker { stop, thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
