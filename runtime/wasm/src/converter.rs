//! Converters: a hot-swappable, shared [`Converter`] handle, and the
//! [`Worker`] through which one thread calls it.
//!
//! A `Converter` holds the current *version*: a compiled component with its
//! config and limits, already proven to `create` successfully. `replace`
//! prepares a new version entirely off the hot path (read, compile, check the
//! world, run `create(config)` in a probe instance) and only then publishes
//! it; a version that fails any step is refused and the old one keeps
//! serving.
//!
//! A `Worker` belongs to one thread and owns at most one live instance (a
//! store, the guest's exports and its converter resource). Before each call
//! it compares its instance's version with the current one (one atomic load);
//! on a change it drops the instance and starts one of the new version. A
//! call in flight therefore always finishes on the version it started with.
//! After a trap, a timeout or a memory exhaustion the instance is dropped and
//! the next call starts a fresh one: guest state is only ever a cache.

use crate::bindings::{Contract, Downlink};
use crate::cache::CompileSource;
use crate::component::{Compiled, ComponentSource, contract_exports, world_mismatch};
use crate::error::{CallError, LoadError, MessageError};
use crate::host::HostState;
use crate::limits::Limits;
use crate::runtime::Runtime;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tbgw_core::{Direction, RpcAnswer};
use wasmtime::component::{InstancePre, ResourceAny};
use wasmtime::{Store, Trap};

/// What a converter is made of.
#[derive(Debug, Clone)]
pub struct ConverterSpec {
    pub component: ComponentSource,
    /// The converter's config, as JSON text, passed to `create`.
    pub config: String,
    pub limits: Limits,
}

/// A loaded converter, shared by the threads that run it.
pub struct Converter<C: Contract> {
    shared: Arc<Shared<C>>,
}

impl<C: Contract> Clone for Converter<C> {
    fn clone(&self) -> Self {
        Converter { shared: self.shared.clone() }
    }
}

struct Shared<C: Contract> {
    name: Arc<str>,
    runtime: Runtime,
    current: RwLock<Arc<Version<C>>>,
    /// The generation of `current`, readable without the lock.
    generation: AtomicU64,
    /// Serializes `replace` calls.
    swapping: Mutex<()>,
    stats: Stats,
}

struct Version<C: Contract> {
    generation: u64,
    spec: ConverterSpec,
    compiled: Arc<Compiled>,
    contract_version: String,
    pre: InstancePre<HostState>,
    indices: C::Indices,
}

#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    messages: AtomicU64,
    message_errors: AtomicU64,
    call_errors: AtomicU64,
    dropped_values: AtomicU64,
    instances: AtomicU64,
    recycled: AtomicU64,
    swaps: AtomicU64,
    refused_swaps: AtomicU64,
    /// Time spent in calls.
    busy_nanos: AtomicU64,
}

/// A converter's identity and counters, for statistics and the
/// `gateway_converters` RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConverterInfo {
    pub name: String,
    pub direction: Direction,
    /// Where the current version's component came from.
    pub origin: String,
    /// SHA-256 of the current version's component.
    pub sha256: String,
    /// The contract version the component was built against.
    pub contract_version: String,
    /// 1 for the version loaded first, +1 per successful swap.
    pub generation: u64,
    pub limits: Limits,
    /// `convert` calls made.
    pub calls: u64,
    /// Messages (or requests) passed to `convert`, one-by-one retries of a
    /// failed batch included.
    pub messages: u64,
    /// Messages that failed (rejected, too large, or lost with their call).
    pub message_errors: u64,
    /// Calls that trapped, timed out, ran out of memory or broke the contract.
    pub call_errors: u64,
    /// Values the converter reported as dropped.
    pub dropped_values: u64,
    /// Instances started (the first, then one after each failed call or swap
    /// per worker).
    pub instances: u64,
    /// Instances replaced between calls because their memory had grown into
    /// half of their headroom (a garbage-collected guest's heap creeping up).
    pub recycled: u64,
    pub swaps: u64,
    pub refused_swaps: u64,
    /// Time spent in calls, µs.
    pub busy_micros: u64,
}

impl<C: Contract> Converter<C> {
    pub(crate) fn load(runtime: &Runtime, name: &str, spec: ConverterSpec) -> Result<Self, LoadError> {
        let name: Arc<str> = name.into();
        let version = prepare::<C>(runtime, &name, spec, 1)?;
        Ok(Converter {
            shared: Arc::new(Shared {
                name,
                runtime: runtime.clone(),
                current: RwLock::new(Arc::new(version)),
                generation: AtomicU64::new(1),
                swapping: Mutex::new(()),
                stats: Stats::default(),
            }),
        })
    }

    /// The converter's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Swap in a new component and/or config. Everything that can fail
    /// happens before the swap; on failure the current version keeps serving
    /// and the error says why the new one was refused. Calls in flight finish
    /// on the version they started with.
    pub fn replace(&self, spec: ConverterSpec) -> Result<(), LoadError> {
        let shared = &self.shared;
        let _one_at_a_time = shared.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let generation = shared.generation.load(Ordering::Acquire) + 1;
        match prepare::<C>(&shared.runtime, &shared.name, spec, generation) {
            Ok(version) => {
                let origin = version.spec.component.describe();
                *shared.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(version);
                shared.generation.store(generation, Ordering::Release);
                shared.stats.swaps.fetch_add(1, Ordering::Relaxed);
                tracing::info!(converter = %shared.name, generation, "swapped in {origin}");
                Ok(())
            }
            Err(e) => {
                shared.stats.refused_swaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(converter = %shared.name, "replacement refused, the current version keeps serving: {e}");
                Err(e)
            }
        }
    }

    /// The component and config of the version serving now (a file
    /// component is read anew by [`Converter::replace`]).
    pub fn spec(&self) -> ConverterSpec {
        self.current().spec.clone()
    }

    /// A worker for the calling thread.
    pub fn worker(&self) -> Worker<C> {
        Worker { converter: self.clone(), live: None, budget: 1 }
    }

    /// Identity and counters.
    pub fn info(&self) -> ConverterInfo {
        let current = self.current();
        let s = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConverterInfo {
            name: self.shared.name.to_string(),
            direction: C::DIRECTION,
            origin: current.spec.component.describe(),
            sha256: current.compiled.sha256.clone(),
            contract_version: current.contract_version.clone(),
            generation: current.generation,
            limits: current.spec.limits,
            calls: get(&s.calls),
            messages: get(&s.messages),
            message_errors: get(&s.message_errors),
            call_errors: get(&s.call_errors),
            dropped_values: get(&s.dropped_values),
            instances: get(&s.instances),
            recycled: get(&s.recycled),
            swaps: get(&s.swaps),
            refused_swaps: get(&s.refused_swaps),
            busy_micros: get(&s.busy_nanos) / 1000,
        }
    }

    fn current(&self) -> Arc<Version<C>> {
        self.shared.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Build and validate a version: every failure here is a refusal.
fn prepare<C: Contract>(
    runtime: &Runtime,
    name: &Arc<str>,
    spec: ConverterSpec,
    generation: u64,
) -> Result<Version<C>, LoadError> {
    let limit_err = |reason: String| LoadError::Limits { converter: name.clone(), reason };
    if spec.limits.memory_bytes > runtime.config().max_memory_bytes {
        return Err(limit_err(format!(
            "memory limit of {} bytes exceeds the runtime's ceiling of {} bytes",
            spec.limits.memory_bytes,
            runtime.config().max_memory_bytes
        )));
    }
    if spec.limits.per_message.is_zero() || spec.limits.create_timeout.is_zero() {
        return Err(limit_err("timeouts must be greater than zero".into()));
    }
    let origin = spec.component.describe();
    let (compiled, how, took) = runtime.compile(name, &spec.component)?;
    let pre = runtime.instance_pre(name, &compiled).map_err(|e| LoadError::Instantiate {
        converter: name.clone(),
        origin: origin.clone(),
        reason: format!("{e:#}"),
    })?;
    let exported: Vec<String> = contract_exports(&compiled.component, runtime.engine())
        .into_iter()
        .filter(|(d, _)| *d == C::DIRECTION)
        .map(|(_, v)| v)
        .collect();
    // The version served: the newest the component exports (as `indices` picks).
    let served = crate::bindings::CONTRACT_VERSIONS
        .iter()
        .find_map(|family| exported.iter().find(|v| crate::bindings::version_family(v) == *family))
        .cloned();
    let indices = C::indices(&pre).map_err(|e| match &served {
        // The right interface and version, other types: built against
        // another text of that version's WIT (a draft, a hand edit).
        Some(version) => LoadError::Instantiate {
            converter: name.clone(),
            origin: origin.clone(),
            reason: format!(
                "it exports the {} interface of contract {version}, but not with the types of this tbgw's \
                 contract {version}; rebuild it against wit/converter.wit: {e:#}",
                C::DIRECTION
            ),
        },
        None => LoadError::WrongWorld {
            converter: name.clone(),
            origin: origin.clone(),
            expected: C::DIRECTION.world(),
            found: world_mismatch(&compiled.component, runtime.engine(), C::DIRECTION),
        },
    })?;
    let contract_version = served.unwrap_or_default();
    let version = Arc::new(Version { generation, spec, compiled, contract_version, pre, indices });
    // The config is validated now, in a probe instance, not on the hot path.
    match Live::start(&version, name, runtime, true) {
        Ok(_) => {}
        Err(StartError::Config { field, message }) => {
            return Err(LoadError::Config { converter: name.clone(), field, message });
        }
        Err(StartError::Call(source)) => return Err(LoadError::Create { converter: name.clone(), source }),
    }
    let how = match how {
        CompileSource::Compiled => "compiled",
        CompileSource::DiskCache => "loaded from the compile cache",
        CompileSource::Memory => "already loaded",
    };
    tracing::info!(
        converter = %name,
        generation,
        "{} converter from {origin} ({how} in {} ms, sha256 {})",
        C::DIRECTION,
        took.as_millis(),
        &version.compiled.sha256[..12]
    );
    Arc::try_unwrap(version).map_err(|_| LoadError::Instantiate {
        converter: name.clone(),
        origin,
        reason: "internal: the probe instance outlived its check".into(),
    })
}

/// A running instance of one version.
struct Live<C: Contract> {
    version: Arc<Version<C>>,
    store: Store<HostState>,
    guest: C::Guest,
    converter: ResourceAny,
    /// Linear memory once `create` returned.
    start_memory: usize,
}

impl<C: Contract> Live<C> {
    /// The instance has grown into more than half of the headroom it had
    /// after `create`. A garbage-collected guest (JavaScript's SpiderMonkey)
    /// lets its heap creep up under steady load and aborts when a growth is
    /// refused at the limit, failing a whole call (measured with the sensor
    /// example at the default 64 MiB: once in ~10,000 messages); replaced
    /// early, between calls, it never reaches the limit, and the memory it
    /// held goes back to the pool.
    fn outgrown(&self) -> bool {
        let cap = usize::try_from(self.version.spec.limits.memory_bytes).unwrap_or(usize::MAX);
        let used = self.store.data().memory.used();
        used > self.start_memory && used - self.start_memory > cap.saturating_sub(self.start_memory) / 2
    }
}

enum StartError {
    /// `create` refused the config.
    Config {
        field: Option<String>,
        message: String,
    },
    Call(CallError),
}

impl<C: Contract> Live<C> {
    /// Instantiate `version` and create its converter from the config;
    /// `first` for the probe instance that validates a version, whose log
    /// lines are kept at their level.
    fn start(
        version: &Arc<Version<C>>,
        name: &Arc<str>,
        runtime: &Runtime,
        first: bool,
    ) -> Result<Live<C>, StartError> {
        let limits = version.spec.limits;
        let state = HostState::new(name.clone(), limits.memory_bytes, limits.max_log_lines_per_call);
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(runtime.ticks(limits.create_timeout));
        store.data_mut().begin_call(!first);
        let limit_ms = limits.create_timeout.as_millis();
        let instance = match version.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => {
                store.data_mut().end_call();
                return Err(StartError::Call(classify(e, &store, name, limit_ms, limits, false)));
            }
        };
        let started = C::load(&version.indices, &mut store, &instance)
            .and_then(|guest| Ok((C::create(&guest, &mut store, &version.spec.config)?, guest)));
        store.data_mut().end_call();
        match started {
            Ok((Ok(converter), guest)) => {
                let start_memory = store.data().memory.used();
                Ok(Live { version: version.clone(), store, guest, converter, start_memory })
            }
            Ok((Err((field, message)), _)) => Err(StartError::Config { field, message }),
            Err(e) => Err(StartError::Call(classify(e, &store, name, limit_ms, limits, true))),
        }
    }
}

/// Name what went wrong in a call.
/// `calling`: the error came out of a call into the guest (rather than out
/// of instantiation), so one that is not a wasm trap was raised by a host
/// function the guest called, which ends the call like a trap.
fn classify(
    e: wasmtime::Error,
    store: &Store<HostState>,
    name: &Arc<str>,
    limit_ms: u128,
    limits: Limits,
    calling: bool,
) -> CallError {
    let converter = name.clone();
    if let Some(broken) = e.downcast_ref::<crate::bindings::ContractBroken>() {
        return CallError::Contract { converter, reason: broken.0.clone() };
    }
    let trap = e.downcast_ref::<Trap>().copied();
    if trap == Some(Trap::Interrupt) {
        return CallError::Timeout { converter, limit_ms: u64::try_from(limit_ms).unwrap_or(u64::MAX) };
    }
    if store.data().memory.refused {
        return CallError::OutOfMemory { converter, limit_bytes: limits.memory_bytes };
    }
    let stderr = store.data().stderr_tail();
    match trap {
        Some(trap) => CallError::Trap { converter, trap: trap.to_string(), stderr },
        None if calling => CallError::Trap { converter, trap: e.root_cause().to_string(), stderr },
        // Instantiation failed (e.g. the instance pool is full).
        None => CallError::Instantiate { converter, reason: e.root_cause().to_string() },
    }
}

/// One thread's handle on a converter.
pub struct Worker<C: Contract> {
    converter: Converter<C>,
    live: Option<Live<C>>,
    /// The deadline's multiple for the next call: [`RETRY_BUDGET`] while a
    /// message is tried again.
    budget: u32,
}

/// A message whose call trapped, timed out or ran out of memory is tried
/// once more, alone, on a fresh instance, with this many times its
/// deadline, before it counts as failed: a timeout on a starved machine, or
/// an instance's state gone bad, is not the message's fault.
pub const RETRY_BUDGET: u32 = 4;

/// After this many timeouts in a row, the one-by-one retry of a failed batch
/// stops and leaves the rest untried: each costs a whole deadline.
const MAX_TIMEOUTS_WHEN_ISOLATING: u32 = 2;

impl<C: Contract> Worker<C> {
    /// The converter this worker calls.
    pub fn converter(&self) -> &Converter<C> {
        &self.converter
    }

    /// The generation of the live instance, if there is one.
    pub fn live_generation(&self) -> Option<u64> {
        self.live.as_ref().map(|l| l.version.generation)
    }

    /// Convert a batch: one result per input, in order. When the call fails
    /// as a whole (trap, timeout, out of memory), the inputs are retried one
    /// by one on fresh instances, so that one poisonous message fails alone;
    /// one that fails alone is tried once more with [`RETRY_BUDGET`].
    pub fn convert(&mut self, batch: &[C::Input]) -> Vec<Result<C::Output, MessageError>> {
        self.isolating(batch, Self::try_convert)
    }

    /// One call with the whole batch. A call error fails every input of the
    /// batch and discards the instance.
    pub fn try_convert(&mut self, batch: &[C::Input]) -> Result<Vec<Result<C::Output, MessageError>>, CallError> {
        let results = self.call(batch.len(), |guest, store, converter| C::convert(guest, store, converter, batch))?;
        let shared = &self.converter.shared;
        let limits = self.live.as_ref().map_or_else(Limits::default, |l| l.version.spec.limits);
        let mut failed = 0;
        let mut dropped = 0;
        let results: Vec<_> = results
            .into_iter()
            .map(|r| match r {
                Ok(mut output) => {
                    let (size, dropped_here) = C::sanitize(&mut output);
                    dropped += dropped_here as u64;
                    if size > limits.max_output_bytes {
                        failed += 1;
                        Err(MessageError::OutputTooLarge {
                            converter: shared.name.clone(),
                            bytes: size,
                            limit: limits.max_output_bytes,
                        })
                    } else {
                        Ok(output)
                    }
                }
                Err(message) => {
                    failed += 1;
                    Err(MessageError::Rejected { converter: shared.name.clone(), message })
                }
            })
            .collect();
        shared.stats.message_errors.fetch_add(failed, Ordering::Relaxed);
        shared.stats.dropped_values.fetch_add(dropped, Ordering::Relaxed);
        Ok(results)
    }

    /// Run `try_call` on the whole batch; when that fails as a whole, on its
    /// inputs one by one, until two of those time out in a row: the rest are
    /// left untried and say so (a neighbour's timeout is not theirs).
    fn isolating<I, T>(
        &mut self,
        batch: &[I],
        mut try_call: impl FnMut(&mut Self, &[I]) -> Result<Vec<Result<T, MessageError>>, CallError>,
    ) -> Vec<Result<T, MessageError>> {
        let stats = self.converter.shared.clone();
        let err = match try_call(self, batch) {
            Ok(results) => return results,
            Err(e) if batch.len() <= 1 => {
                let Some(input) = batch.first() else { return Vec::new() };
                return match self.again(input, e, &mut try_call) {
                    Ok(one) => one,
                    Err(e) => {
                        stats.stats.message_errors.fetch_add(1, Ordering::Relaxed);
                        vec![Err(e.into())]
                    }
                };
            }
            Err(e) => e,
        };
        tracing::debug!(converter = %stats.name, "a batch of {} failed ({err}); retrying one by one", batch.len());
        let mut timeouts = 0;
        let mut lost = 0;
        let mut results = Vec::with_capacity(batch.len());
        for input in batch {
            if timeouts >= MAX_TIMEOUTS_WHEN_ISOLATING {
                lost += 1;
                results.push(Err(MessageError::NotTried {
                    converter: stats.name.clone(),
                    cause: err.clone(),
                    timeouts,
                }));
                continue;
            }
            let alone = match try_call(self, std::slice::from_ref(input)) {
                Err(e) => self.again(input, e, &mut try_call),
                ok => ok,
            };
            match alone {
                Ok(mut one) => {
                    timeouts = 0;
                    results.push(one.pop().unwrap_or_else(|| Err(MessageError::Call(err.clone()))));
                }
                Err(e) => {
                    if matches!(e, CallError::Timeout { .. }) {
                        timeouts += 1;
                    }
                    lost += 1;
                    results.push(Err(MessageError::Call(e)));
                }
            }
        }
        stats.stats.message_errors.fetch_add(lost, Ordering::Relaxed);
        results
    }

    /// Try `input` once more after its call failed with `err`, alone, with
    /// [`RETRY_BUDGET`] (the failed call dropped the instance: this one
    /// starts fresh). A broken contract is not tried again: it is the
    /// guest's, whatever the input.
    fn again<I, T>(
        &mut self,
        input: &I,
        err: CallError,
        try_call: &mut impl FnMut(&mut Self, &[I]) -> Result<Vec<Result<T, MessageError>>, CallError>,
    ) -> Result<Vec<Result<T, MessageError>>, CallError> {
        if matches!(err, CallError::Contract { .. }) {
            return Err(err);
        }
        tracing::debug!(converter = %self.converter.shared.name, "a message failed alone ({err}); trying it once more");
        self.budget = RETRY_BUDGET;
        let result = try_call(self, std::slice::from_ref(input));
        self.budget = 1;
        result
    }

    /// One call into the live instance (started first if there is none, or
    /// if a newer version was swapped in), with the deadline of `n` inputs
    /// (times the retry budget while a message is tried again).
    /// A call error discards the instance; the results are the guest's, one
    /// per input.
    fn call<T>(
        &mut self,
        n: usize,
        call: impl FnOnce(&C::Guest, &mut Store<HostState>, ResourceAny) -> wasmtime::Result<Vec<Result<T, String>>>,
    ) -> Result<Vec<Result<T, String>>, CallError> {
        let shared = self.converter.shared.clone();
        let stats = &shared.stats;
        let generation = shared.generation.load(Ordering::Acquire);
        let live = match &mut self.live {
            Some(live) if live.version.generation >= generation => live,
            slot => {
                // Free the old instance's pool slot before taking a new one.
                *slot = None;
                let version = self.converter.current();
                let live = Live::start(&version, &shared.name, &shared.runtime, false).map_err(|e| match e {
                    StartError::Call(e) => e,
                    StartError::Config { field, message } => CallError::Instantiate {
                        converter: shared.name.clone(),
                        reason: format!(
                            "create() refused the config it accepted before{}: {message}",
                            field.map(|f| format!(" at `{f}`")).unwrap_or_default()
                        ),
                    },
                });
                let live = match live {
                    Ok(live) => live,
                    Err(e) => {
                        stats.call_errors.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                stats.instances.fetch_add(1, Ordering::Relaxed);
                slot.insert(live)
            }
        };
        let limits = live.version.spec.limits;
        let deadline = limits.deadline(n).saturating_mul(self.budget.max(1));
        live.store.data_mut().begin_call(false);
        live.store.set_epoch_deadline(shared.runtime.ticks(deadline));
        let started = Instant::now();
        let result = call(&live.guest, &mut live.store, live.converter);
        live.store.data_mut().end_call();
        stats.busy_nanos.fetch_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        stats.calls.fetch_add(1, Ordering::Relaxed);
        stats.messages.fetch_add(n as u64, Ordering::Relaxed);
        match result {
            Ok(results) if results.len() == n => {
                if live.outgrown() {
                    self.live = None;
                    stats.recycled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(results)
            }
            Ok(results) => {
                self.live = None;
                stats.call_errors.fetch_add(1, Ordering::Relaxed);
                Err(CallError::Contract {
                    converter: shared.name.clone(),
                    reason: format!("returned {} results for a batch of {n}", results.len()),
                })
            }
            Err(e) => {
                let err = classify(e, &live.store, &shared.name, deadline.as_millis(), limits, true);
                self.live = None;
                stats.call_errors.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }
}

impl Worker<Downlink> {
    /// ThingsBoard's replies to RPCs from the devices' answers, one per
    /// answer, in order (isolated as [`Worker::convert`] is). A reply that
    /// is not JSON fails with the reason.
    pub fn reply(&mut self, answers: &[RpcAnswer]) -> Vec<Result<String, MessageError>> {
        self.isolating(answers, Self::try_reply)
    }

    /// One `reply` call with all the answers.
    pub fn try_reply(&mut self, answers: &[RpcAnswer]) -> Result<Vec<Result<String, MessageError>>, CallError> {
        let results =
            self.call(answers.len(), |guest, store, converter| Downlink::reply(guest, store, converter, answers))?;
        let name = &self.converter.shared.name;
        let mut failed = 0;
        let results: Vec<_> = results
            .into_iter()
            .map(|r| {
                let checked = r.and_then(|reply| match serde_json::from_str::<serde::de::IgnoredAny>(&reply) {
                    Ok(_) => Ok(reply),
                    Err(e) => Err(format!("its reply is not JSON ({e}): {reply:.200}")),
                });
                checked.map_err(|message| {
                    failed += 1;
                    MessageError::Rejected { converter: name.clone(), message }
                })
            })
            .collect();
        self.converter.shared.stats.message_errors.fetch_add(failed, Ordering::Relaxed);
        Ok(results)
    }
}
