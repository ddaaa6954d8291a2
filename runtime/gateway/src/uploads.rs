//! Converters sent from ThingsBoard: received in chunks over RPC, checked,
//! kept on disk, swapped in while the gateway runs, reported, and rolled
//! back, by hand or by themselves when the new version fails.
//!
//! Off unless `tbgw.uploads` names a directory. Then:
//!
//! - **Receiving.** `gateway_converter_upload`, an RPC to the gateway
//!   device, carries one chunk: `{"converter": "<name>", "sha256": "<hex>",
//!   "size": <bytes>, "offset": <bytes>, "data": "<base64>"}`, with
//!   `"config"` (the converter's new config; its current one when absent)
//!   and `"version"` (a label of the sender's) read from the first chunk.
//!   Chunks, because ThingsBoard's RPCs and MQTT payloads are bounded while
//!   a component is often a few MiB: each chunk is answered with how much is
//!   held, and one at the wrong offset with 409 and the offset wanted, so a
//!   sender resumes where it stopped. The name is the converter's in
//!   `gateway_converters` (`<connector>/<label>`). At most
//!   [`MAX_UPLOAD_BYTES`] a component and [`MAX_PARTIAL`] uploads at once;
//!   one left unfinished for [`PARTIAL_TIMEOUT`] is forgotten.
//! - **Checking.** The whole component's SHA-256 must be the one
//!   announced; then the runtime's own swap ([`tbgw_wasm::Converter::replace`])
//!   compiles it, checks its world and contract version, and calls
//!   `create(config)`, all before it serves: a component that fails any of
//!   these is refused, the answer says why, and the running version goes on.
//!   The same component with the same config as the running one changes
//!   nothing (answered `unchanged`).
//! - **Keeping.** A component swapped in is written to the directory
//!   (`<sha256>.wasm`; if it cannot be, the swap is undone and the answer
//!   says why), and `converters.json` says which version serves each
//!   converter, and which served before; both are written atomically, and
//!   only then is the upload answered. At start, after the configured converters are
//!   loaded, each keeps the version uploaded last: an upload survives a
//!   restart, and a restart does not undo a rollback.
//! - **Swapping.** In flight calls finish on the old version; nothing is
//!   lost (the runtime's guarantee, the same as a file swap).
//! - **Rolling back.** For [`WATCH`] after a swap, a version whose messages
//!   fail (at least [`MIN_FAILED`], and [`FAILED_PERCENT`] of what it was
//!   given, and twice the share of the version before) goes back to the
//!   version before it. `gateway_converters` with `{"rollback": "<name>"}`
//!   does the same by hand. The messages that failed meanwhile are dead
//!   letters, kept in the store to be sent again (`tbgw dead-letters`).
//! - **Reporting.** The client attribute `converters` of the gateway
//!   device: each converter's version, SHA-256, generation and source,
//!   published at start and after every change; one log line (target
//!   `tbgw::audit`) per decision: `apply`, `unchanged`, `reject`, `rollback`.

use crate::converters::{AnyConverter, Registry};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tbgw_thingsboard::{Command, CommandSender};
use tbgw_wasm::cache::{sha256_hex, write_atomically};
use tbgw_wasm::{ComponentSource, ConverterSpec};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The largest component accepted.
pub const MAX_UPLOAD_BYTES: usize = 32 << 20;
/// Uploads in progress at once.
pub const MAX_PARTIAL: usize = 4;
/// An unfinished upload untouched this long is forgotten.
pub const PARTIAL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long after a swap a failing version is rolled back by itself.
pub const WATCH: Duration = Duration::from_secs(60);
/// Failed messages before a rollback is considered.
pub const MIN_FAILED: u64 = 5;
/// The share of messages failing that rolls a new version back.
pub const FAILED_PERCENT: u64 = 20;

const MANIFEST: &str = "converters.json";
const AUDIT: &str = "tbgw::audit";

/// Why the upload directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UploadsError {
    #[error("converter uploads (tbgw.uploads): cannot use {}: {source}", path.display())]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("converter uploads (tbgw.uploads): {} is not readable: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
}

/// One version of a converter, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    sha256: String,
    /// The config passed to `create`, as JSON text.
    config: String,
    /// The sender's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// When it was received, ms since the epoch.
    received_ms: u64,
}

/// A converter's uploaded version, and the one before it (`None`: the
/// configured one).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    current: Kept,
    #[serde(default)]
    previous: Option<Kept>,
}

/// `converters.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    converters: BTreeMap<String, Entry>,
}

/// An upload whose chunks are still coming.
struct Partial {
    sha256: String,
    size: usize,
    config: Option<String>,
    version: Option<String>,
    bytes: Vec<u8>,
    touched: Instant,
}

struct State {
    manifest: Manifest,
    partial: HashMap<String, Partial>,
    /// Per converter, the watch of its last swap.
    watches: HashMap<String, CancellationToken>,
}

/// Converter uploads for one gateway run.
pub struct Uploads {
    dir: PathBuf,
    registry: Registry,
    /// Each converter's spec as configured, before any upload (a connector
    /// restarted with a new configuration brings new ones: [`Uploads::adopt`]).
    configured: std::sync::Mutex<HashMap<String, ConverterSpec>>,
    client: CommandSender,
    state: Mutex<State>,
    stop: CancellationToken,
}

/// An answer to the RPC, as the router sends it.
fn error(code: u16, message: impl Into<String>) -> Json {
    json!({"error": message.into(), "code": code})
}

/// The answer when `tbgw.uploads` is not set.
pub fn off() -> Json {
    error(501, "converter upload is off: set tbgw.uploads to the directory where uploaded converters are kept")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn spec_of(kept: &Kept, limits: tbgw_wasm::Limits, wasm: Arc<[u8]>) -> ConverterSpec {
    let label = match &kept.version {
        Some(v) => format!("upload {} ({v})", &kept.sha256[..12.min(kept.sha256.len())]),
        None => format!("upload {}", &kept.sha256[..12.min(kept.sha256.len())]),
    };
    ConverterSpec { component: ComponentSource::Bytes { label, wasm }, config: kept.config.clone(), limits }
}

impl Uploads {
    /// Open `dir` (made if missing) and put back each converter's uploaded
    /// version. Blocking: it compiles.
    pub fn open(dir: &Path, registry: &Registry, client: CommandSender) -> Result<Arc<Uploads>, UploadsError> {
        let configured = registry.snapshot().into_iter().map(|r| (r.name, r.converter.spec())).collect();
        let manifest = put_back_kept(dir, registry)?;
        let mut uploads = Uploads {
            dir: dir.to_owned(),
            registry: registry.clone(),
            configured: std::sync::Mutex::new(configured),
            client,
            state: Mutex::new(State {
                manifest: Manifest::default(),
                partial: HashMap::new(),
                watches: HashMap::new(),
            }),
            stop: CancellationToken::new(),
        };
        uploads.publish(&uploads.attribute(&manifest));
        uploads.state.get_mut().manifest = manifest;
        Ok(Arc::new(uploads))
    }

    fn configured(&self) -> std::sync::MutexGuard<'_, HashMap<String, ConverterSpec>> {
        self.configured.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The converters of a connector restarted with a new configuration:
    /// these are their configured versions now, and each serves its
    /// uploaded version, if it has one, as after a restart. Blocking: it
    /// compiles.
    pub fn adopt(&self, converters: &[crate::converters::Registered]) {
        let state = self.state.blocking_lock();
        for r in converters {
            self.configured().insert(r.name.clone(), r.converter.spec());
            if let Some(entry) = state.manifest.converters.get(&r.name) {
                put_back_one(&self.dir, &r.name, &entry.current, &r.converter);
            }
        }
    }

    /// Stop the rollback watches.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The `converters` client attribute: each converter's version now.
    fn attribute(&self, manifest: &Manifest) -> Json {
        let list: serde_json::Map<String, Json> = self
            .registry
            .snapshot()
            .into_iter()
            .map(|r| {
                let info = r.converter.info();
                let uploaded = manifest.converters.get(&r.name).map(|e| &e.current);
                let v = json!({
                    "connector": r.connector,
                    "direction": info.direction.to_string(),
                    "source": if uploaded.is_some() { "upload" } else { "config" },
                    "version": uploaded.and_then(|k| k.version.clone()),
                    "sha256": info.sha256,
                    "generation": info.generation,
                    "contractVersion": info.contract_version,
                });
                (r.name.clone(), v)
            })
            .collect();
        json!({ "converters": list })
    }

    fn publish(&self, attribute: &Json) {
        let command =
            Command::Publish { topic: "v1/devices/me/attributes".into(), payload: attribute.to_string().into_bytes() };
        if let Err(e) = self.client.send(command) {
            tracing::warn!("the converters attribute was not sent: {e}");
        }
    }

    /// One chunk of `gateway_converter_upload`; the RPC's answer.
    pub async fn upload(self: &Arc<Self>, params: Json) -> Json {
        let chunk = match Chunk::read(&params) {
            Ok(c) => c,
            Err(e) => return error(400, e),
        };
        let Some(registered) = self.registry.get(&chunk.converter) else {
            let names: Vec<String> = self.registry.snapshot().into_iter().map(|r| r.name).collect();
            return error(404, format!("no converter named `{}`; there are: {}", chunk.converter, names.join(", ")));
        };
        let converter = registered.converter.clone();
        let mut state = self.state.lock().await;
        state.partial.retain(|_, p| p.touched.elapsed() < PARTIAL_TIMEOUT);
        if chunk.offset == 0 {
            if !state.partial.contains_key(&chunk.converter) && state.partial.len() >= MAX_PARTIAL {
                return error(429, format!("{MAX_PARTIAL} uploads are in progress; finish one first"));
            }
            let config = chunk.config.clone();
            state.partial.insert(
                chunk.converter.clone(),
                Partial {
                    sha256: chunk.sha256.clone(),
                    size: chunk.size,
                    config,
                    version: chunk.version.clone(),
                    bytes: Vec::with_capacity(chunk.size),
                    touched: Instant::now(),
                },
            );
        }
        let Some(partial) = state.partial.get_mut(&chunk.converter) else {
            return json!({"error": "no upload in progress for this converter: start at offset 0", "code": 409,
                          "received": 0});
        };
        if partial.sha256 != chunk.sha256 || partial.size != chunk.size {
            return json!({"error": "this chunk is of another upload (sha256 or size differ): start at offset 0",
                          "code": 409, "received": partial.bytes.len()});
        }
        if chunk.offset != partial.bytes.len() {
            return json!({"error": format!("expected the chunk at offset {}", partial.bytes.len()), "code": 409,
                          "received": partial.bytes.len()});
        }
        if partial.bytes.len() + chunk.data.len() > partial.size {
            let over = partial.bytes.len() + chunk.data.len() - partial.size;
            state.partial.remove(&chunk.converter);
            return error(400, format!("the chunks are {over} byte(s) longer than size; upload abandoned"));
        }
        partial.bytes.extend_from_slice(&chunk.data);
        partial.touched = Instant::now();
        if partial.bytes.len() < partial.size {
            return json!({"code": 200, "resp": {"converter": chunk.converter, "received": partial.bytes.len(),
                                                 "size": partial.size}});
        }
        let Some(partial) = state.partial.remove(&chunk.converter) else { return error(500, "upload lost") };
        let name = chunk.converter;
        let sha256 = sha256_hex(&partial.bytes);
        if sha256 != partial.sha256 {
            tracing::warn!(target: AUDIT, converter = name, decision = "reject",
                "upload refused: its SHA-256 is {sha256}, not the {} announced", partial.sha256);
            return error(422, format!("SHA-256 mismatch: received {sha256}, announced {}", partial.sha256));
        }
        let current = converter.spec();
        let config = partial.config.unwrap_or(current.config.clone());
        let info = converter.info();
        if info.sha256 == sha256 && current.config == config {
            tracing::info!(target: AUDIT, converter = name, decision = "unchanged", sha256,
                "upload identical to the version serving: nothing changed");
            return json!({"code": 200, "resp": {"converter": name, "status": "unchanged", "sha256": sha256,
                                                 "generation": info.generation}});
        }
        let kept = Kept { sha256: sha256.clone(), config, version: partial.version, received_ms: now_ms() };
        let wasm: Arc<[u8]> = partial.bytes.into();
        let spec = spec_of(&kept, current.limits, wasm.clone());
        let (dir, c) = (self.dir.clone(), converter.clone());
        // Keep it, then swap: compiling takes a while, off the async threads.
        let swapped = tokio::task::spawn_blocking(move || {
            c.replace(spec).map_err(|e| (422, e.to_string()))?;
            write_atomically(&blob_path(&dir, &kept.sha256), &wasm)
                .map_err(|e| (500, format!("cannot keep the component in {}: {e}", dir.display())))?;
            Ok::<Kept, (u16, String)>(kept)
        })
        .await;
        let kept = match swapped {
            Ok(Ok(kept)) => kept,
            Ok(Err((code, e))) => {
                if code != 422 {
                    // Swapped in but not kept: back to what the store says.
                    self.restore(&name, &converter, &state.manifest);
                }
                tracing::warn!(target: AUDIT, converter = name, decision = "reject", sha256, "upload refused: {e}");
                return error(code, e);
            }
            Err(e) => return error(500, format!("the swap did not finish: {e}")),
        };
        let before = state.manifest.converters.get(&name).map(|e| e.current.clone());
        state.manifest.converters.insert(name.clone(), Entry { current: kept.clone(), previous: before });
        if let Err(e) = self.save(&state.manifest) {
            // The swap stands for this run; say the restart may not keep it.
            tracing::error!(converter = name, "{e}: this version serves until the gateway restarts");
        }
        let generation = converter.info().generation;
        tracing::info!(target: AUDIT, converter = name, decision = "apply", sha256, generation,
            version = kept.version.as_deref().unwrap_or(""), "uploaded version swapped in");
        self.watch(&mut state, &name, converter, info, generation);
        let attribute = self.attribute(&state.manifest);
        drop(state);
        self.publish(&attribute);
        json!({"code": 200, "resp": {"converter": name, "status": "swapped", "sha256": sha256,
                                     "generation": generation, "version": kept.version}})
    }

    /// Back to the version before the upload serving `name`; the RPC's
    /// answer. `why` goes in the audit line.
    pub async fn rollback(self: &Arc<Self>, name: &str, why: &str) -> Json {
        let mut state = self.state.lock().await;
        let answer = self.rollback_locked(&mut state, name, why);
        let attribute = self.attribute(&state.manifest);
        drop(state);
        if answer.get("error").is_none() {
            self.publish(&attribute);
        }
        answer
    }

    fn rollback_locked(&self, state: &mut State, name: &str, why: &str) -> Json {
        let Some(r) = self.registry.get(name) else { return error(404, format!("no converter named `{name}`")) };
        let Some(entry) = state.manifest.converters.get(name).cloned() else {
            return error(409, format!("`{name}` serves its configured version: there is nothing to roll back to"));
        };
        if let Some(w) = state.watches.remove(name) {
            w.cancel();
        }
        let limits = r.converter.spec().limits;
        let (spec, next) = match &entry.previous {
            Some(previous) => match read_blob(&self.dir, &previous.sha256) {
                Ok(wasm) => (spec_of(previous, limits, wasm), Some(previous.clone())),
                Err(e) => return error(500, format!("the previous version cannot be read: {e}")),
            },
            None => match self.configured().get(name) {
                Some(spec) => (spec.clone(), None),
                None => return error(500, "the configured version is not known"),
            },
        };
        // Fast enough to do in place: the previous version was compiled
        // before (and is in the runtime's compile cache).
        if let Err(e) = r.converter.replace(spec) {
            tracing::error!(target: AUDIT, converter = name, decision = "rollback",
                "rollback ({why}) refused, the uploaded version keeps serving: {e}");
            return error(500, format!("the previous version did not load: {e}"));
        }
        match next {
            // One level of history: the version before the previous is not kept.
            Some(previous) => {
                state.manifest.converters.insert(name.to_owned(), Entry { current: previous, previous: None });
            }
            None => {
                state.manifest.converters.remove(name);
            }
        }
        if let Err(e) = self.save(&state.manifest) {
            tracing::error!(converter = name, "{e}: a restart may bring the rolled back version again");
        }
        let info = r.converter.info();
        tracing::warn!(target: AUDIT, converter = name, decision = "rollback", from = entry.current.sha256,
            to = info.sha256, generation = info.generation, "rolled back: {why}");
        json!({"code": 200, "resp": {"converter": name, "status": "rolled back", "sha256": info.sha256,
                                     "generation": info.generation}})
    }

    /// Put back what the manifest says serves `name` (after a swap that
    /// could not be kept).
    fn restore(&self, name: &str, converter: &AnyConverter, manifest: &Manifest) {
        let limits = converter.spec().limits;
        let spec = match manifest.converters.get(name) {
            Some(e) => match read_blob(&self.dir, &e.current.sha256) {
                Ok(wasm) => spec_of(&e.current, limits, wasm),
                Err(_) => return,
            },
            None => match self.configured().get(name) {
                Some(spec) => spec.clone(),
                None => return,
            },
        };
        let _ = converter.replace(spec);
    }

    /// Watch `name`'s new `generation` for [`WATCH`]; roll it back if its
    /// messages fail. `before`: its counters when the swap happened.
    fn watch(
        self: &Arc<Self>,
        state: &mut State,
        name: &str,
        converter: AnyConverter,
        before: tbgw_wasm::ConverterInfo,
        generation: u64,
    ) {
        let token = self.stop.child_token();
        if let Some(old) = state.watches.insert(name.to_owned(), token.clone()) {
            old.cancel();
        }
        let (uploads, name) = (self.clone(), name.to_owned());
        // The share of messages the version before failed, in percent.
        let old_share = (before.message_errors * 100).checked_div(before.messages).unwrap_or(0);
        tokio::spawn(async move {
            let until = Instant::now() + WATCH;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while Instant::now() < until {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = converter.info();
                if now.generation != generation {
                    return; // Swapped again (a file change): not this version any more.
                }
                let messages = now.messages.saturating_sub(before.messages);
                let failed = now.message_errors.saturating_sub(before.message_errors);
                if failed >= MIN_FAILED && failed * 100 >= FAILED_PERCENT.max(2 * old_share) * messages {
                    let why = format!(
                        "{failed} of {messages} messages failed in the {:.0?} after the swap (the version before failed {old_share}%)",
                        WATCH - until.saturating_duration_since(Instant::now())
                    );
                    uploads.rollback(&name, &why).await;
                    return;
                }
            }
        });
    }

    fn save(&self, manifest: &Manifest) -> Result<(), String> {
        let path = self.dir.join(MANIFEST);
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| e.to_string())?;
        write_atomically(&path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // Components no version refers to any more.
        let wanted: Vec<&str> = manifest
            .converters
            .values()
            .flat_map(|e| std::iter::once(&e.current).chain(e.previous.as_ref()))
            .map(|k| k.sha256.as_str())
            .collect();
        if let Ok(files) = std::fs::read_dir(&self.dir) {
            for f in files.flatten() {
                let file = f.file_name();
                let Some(stem) = file.to_str().and_then(|n| n.strip_suffix(".wasm")) else { continue };
                if !wanted.contains(&stem) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }
}

/// Put back in `registry` each converter's version uploaded last, as kept
/// in `dir` (made if missing): what serves after a restart, and what
/// `tbgw dead-letters replay` converts with. Blocking: it compiles.
pub fn put_back(dir: &Path, registry: &Registry) -> Result<(), UploadsError> {
    put_back_kept(dir, registry).map(drop)
}

fn put_back_kept(dir: &Path, registry: &Registry) -> Result<Manifest, UploadsError> {
    std::fs::create_dir_all(dir).map_err(|source| UploadsError::Dir { path: dir.to_owned(), source })?;
    let path = dir.join(MANIFEST);
    let mut manifest = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes)
            .map_err(|e| UploadsError::Manifest { path: path.clone(), message: e.to_string() })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(source) => return Err(UploadsError::Dir { path, source }),
    };
    let mut forgotten = Vec::new();

    for (name, entry) in &manifest.converters {
        let Some(r) = registry.get(name) else {
            tracing::warn!(
                target: AUDIT,
                converter = name,
                "an uploaded version is kept for a converter this configuration does not have: forgotten"
            );
            forgotten.push(name.clone());
            continue;
        };
        put_back_one(dir, name, &entry.current, &r.converter);
    }
    for name in forgotten {
        manifest.converters.remove(&name);
    }
    Ok(manifest)
}

/// `converter` serves `kept`, read from `dir`; logged either way.
fn put_back_one(dir: &Path, name: &str, kept: &Kept, converter: &AnyConverter) {
    match read_blob(dir, &kept.sha256) {
        Ok(wasm) => match converter.replace(spec_of(kept, converter.spec().limits, wasm)) {
            Ok(()) => {
                tracing::info!(converter = name, sha256 = kept.sha256, "serving the version uploaded from ThingsBoard")
            }
            Err(e) => {
                tracing::error!(
                    converter = name,
                    "the uploaded version no longer loads ({e}); serving the configured one"
                )
            }
        },
        Err(e) => {
            tracing::error!(converter = name, "the uploaded version cannot be read ({e}); serving the configured one")
        }
    }
}

fn blob_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.wasm"))
}

/// A kept component, checked against its name.
fn read_blob(dir: &Path, sha256: &str) -> Result<Arc<[u8]>, String> {
    let path = blob_path(dir, sha256);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
        return Err(format!("{}: its SHA-256 is {actual}: damaged", path.display()));
    }
    Ok(bytes.into())
}

/// One chunk of an upload, read from the RPC's params.
struct Chunk {
    converter: String,
    sha256: String,
    size: usize,
    offset: usize,
    data: Vec<u8>,
    config: Option<String>,
    version: Option<String>,
}

impl Chunk {
    fn read(params: &Json) -> Result<Chunk, String> {
        let Json::Object(p) = params else {
            return Err("params: an object {converter, sha256, size, offset, data}".into());
        };
        let string = |key: &str| -> Result<&str, String> {
            match p.get(key) {
                Some(Json::String(s)) => Ok(s),
                Some(other) => Err(format!("params.{key}: expected a string, found {other}")),
                None => Err(format!("params.{key}: required")),
            }
        };
        let number = |key: &str| -> Result<usize, String> {
            match p.get(key) {
                None => Ok(0),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| format!("params.{key}: expected a whole number of bytes, found {v}")),
            }
        };
        let converter = string("converter")?.to_owned();
        let sha256 = string("sha256")?.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("params.sha256: expected 64 hex digits".into());
        }
        let size = number("size")?;
        if size == 0 || size > MAX_UPLOAD_BYTES {
            return Err(format!("params.size: expected 1 to {MAX_UPLOAD_BYTES} bytes, found {size}"));
        }
        let offset = number("offset")?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(string("data")?)
            .map_err(|e| format!("params.data: not base64: {e}"))?;
        let config = match p.get("config") {
            None | Some(Json::Null) => None,
            Some(v) => Some(v.to_string()),
        };
        let version = match p.get("version") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        Ok(Chunk { converter, sha256, size, offset, data, config, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::converters::Registered;
    use tbgw_core::Direction;
    use tbgw_core::setup::{ComponentRef, ConverterDecl, LimitsDecl};
    use tokio::sync::mpsc;

    const NAME: &str = "Devices/probe";

    fn probe(tag: &str) -> Vec<u8> {
        tbgw_guests::probe_variant(tag).expect("the probe guest")
    }

    fn registry(runtime: &tbgw_wasm::Runtime) -> Registry {
        let decl = ConverterDecl {
            path: "mapping[0].converter".into(),
            label: "probe".into(),
            component: ComponentRef::File(tbgw_guests::PROBE.into()),
            config: r#"{"tag": "P"}"#.into(),
            limits: LimitsDecl::default(),
        };
        let converter = AnyConverter::load(runtime, NAME, &decl, Direction::Uplink).expect("the probe loads");
        let r = Registry::default();
        r.add(Registered { name: NAME.into(), connector: "Devices".into(), path: decl.path, file: None, converter });
        r
    }

    /// `wasm` in chunks of `chunk` bytes; the answer to each.
    async fn send(uploads: &Arc<Uploads>, wasm: &[u8], chunk: usize, extra: Json) -> Vec<Json> {
        let sha256 = sha256_hex(wasm);
        let mut answers = Vec::new();
        for (i, piece) in wasm.chunks(chunk).enumerate() {
            let mut params = json!({"converter": NAME, "sha256": sha256, "size": wasm.len(), "offset": i * chunk,
                                    "data": base64::engine::general_purpose::STANDARD.encode(piece)});
            if i == 0
                && let (Json::Object(p), Json::Object(e)) = (&mut params, &extra)
            {
                p.extend(e.clone());
            }
            answers.push(uploads.upload(params).await);
        }
        answers
    }

    fn published(rx: &mut mpsc::Receiver<Command>) -> Vec<Json> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            if let Command::Publish { topic, payload } = c {
                assert_eq!(topic, "v1/devices/me/attributes");
                out.push(serde_json::from_slice(&payload).expect("JSON"));
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_in_chunks_is_checked_kept_swapped_reported_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = crate::converters::runtime(None).expect("runtime");
        let reg = registry(&runtime);
        let (tx, mut rx) = mpsc::channel(64);
        let uploads = Uploads::open(dir.path(), &reg, CommandSender::new(tx)).expect("open");
        let first = published(&mut rx);
        assert_eq!(first.len(), 1, "reported at start");
        assert_eq!(first[0]["converters"][NAME]["source"], "config");
        assert_eq!(first[0]["converters"][NAME]["generation"], 1);

        let v2 = probe("2");
        let answers = send(&uploads, &v2, 64 * 1024, json!({"version": "2.0", "config": {"tag": "Q"}})).await;
        let (last, chunks) = answers.split_last().expect("answers");
        assert!(!chunks.is_empty(), "more than one chunk");
        for (i, a) in chunks.iter().enumerate() {
            assert_eq!(a["resp"]["received"], json!((i + 1) * 64 * 1024), "{a}");
        }
        assert_eq!(last["resp"]["status"], "swapped", "{last}");
        assert_eq!(last["resp"]["generation"], 2);
        let info = reg.get(NAME).expect("registered").converter.info();
        assert_eq!(info.sha256, sha256_hex(&v2));
        assert_eq!(reg.get(NAME).expect("registered").converter.spec().config, r#"{"tag":"Q"}"#);
        let report = published(&mut rx);
        assert_eq!(report.len(), 1, "reported after the swap");
        let c = &report[0]["converters"][NAME];
        assert_eq!((&c["source"], &c["version"], &c["generation"]), (&json!("upload"), &json!("2.0"), &json!(2)));
        assert_eq!(c["sha256"], json!(sha256_hex(&v2)));
        assert!(dir.path().join(format!("{}.wasm", sha256_hex(&v2))).exists(), "kept on disk");

        // The same again: nothing changes.
        let again = send(&uploads, &v2, 1 << 20, json!({"config": {"tag": "Q"}})).await;
        assert_eq!(again[0]["resp"]["status"], "unchanged", "{}", again[0]);
        assert_eq!(reg.get(NAME).expect("registered").converter.info().generation, 2);
        uploads.stop();

        // A restart: the configured converter, then the upload put back.
        let reg2 = registry(&runtime);
        let (tx, mut rx) = mpsc::channel(64);
        let _uploads = Uploads::open(dir.path(), &reg2, CommandSender::new(tx)).expect("reopen");
        let info = reg2.get(NAME).expect("registered").converter.info();
        assert_eq!(info.sha256, sha256_hex(&v2), "the upload survives a restart");
        assert_eq!(reg2.get(NAME).expect("registered").converter.spec().config, r#"{"tag":"Q"}"#);
        assert_eq!(published(&mut rx)[0]["converters"][NAME]["source"], "upload");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_uploads_are_refused_and_the_running_version_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = crate::converters::runtime(None).expect("runtime");
        let reg = registry(&runtime);
        let (tx, _rx) = mpsc::channel(64);
        let uploads = Uploads::open(dir.path(), &reg, CommandSender::new(tx)).expect("open");
        let before = reg.get(NAME).expect("registered").converter.info();
        let v2 = probe("2");
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);

        // Announced with another hash.
        let wrong = json!({"converter": NAME, "sha256": sha256_hex(b"other"), "size": v2.len(), "data": b64(&v2)});
        let a = uploads.upload(wrong).await;
        assert_eq!(a["code"], 422, "{a}");
        assert!(a["error"].as_str().is_some_and(|e| e.contains("SHA-256 mismatch")), "{a}");
        // Not a component.
        let junk = b"not a component".to_vec();
        let a = send(&uploads, &junk, 1024, json!({})).await;
        assert_eq!(a[0]["code"], 422, "{}", a[0]);
        // A component whose create refuses its config.
        let a = send(&uploads, &v2, 1 << 20, json!({"config": {"fail": true}})).await;
        assert_eq!(a[0]["code"], 422, "{}", a[0]);
        assert!(a[0]["error"].as_str().is_some_and(|e| e.contains("asked to fail")), "{}", a[0]);
        // A chunk out of order says where to resume.
        let first = json!({"converter": NAME, "sha256": sha256_hex(&v2), "size": v2.len(), "data": b64(&v2[..100])});
        assert_eq!(uploads.upload(first).await["resp"]["received"], 100);
        let skip = json!({"converter": NAME, "sha256": sha256_hex(&v2), "size": v2.len(), "offset": 200,
                          "data": b64(&v2[200..300])});
        let a = uploads.upload(skip).await;
        assert_eq!((&a["code"], &a["received"]), (&json!(409), &json!(100)), "{a}");
        // Fields named.
        let a = uploads.upload(json!({"converter": NAME, "sha256": "xyz", "size": 1, "data": ""})).await;
        assert_eq!(a["error"], "params.sha256: expected 64 hex digits");
        let a = uploads.upload(json!({"converter": "nope", "sha256": sha256_hex(b""), "size": 1, "data": ""})).await;
        assert_eq!(a["code"], 404, "{a}");

        let after = reg.get(NAME).expect("registered").converter.info();
        assert_eq!((after.sha256, after.generation), (before.sha256, before.generation), "the running version goes on");
        let kept: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().map(|f| f.file_name()).collect();
        assert!(kept.is_empty(), "nothing refused is kept: {kept:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rollback_goes_one_version_back_then_to_the_configured_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = crate::converters::runtime(None).expect("runtime");
        let reg = registry(&runtime);
        let configured = reg.get(NAME).expect("registered").converter.info().sha256;
        let (tx, _rx) = mpsc::channel(64);
        let uploads = Uploads::open(dir.path(), &reg, CommandSender::new(tx)).expect("open");
        let (v2, v3) = (probe("2"), probe("3"));
        assert_eq!(send(&uploads, &v2, 1 << 20, json!({})).await[0]["resp"]["status"], "swapped");
        assert_eq!(send(&uploads, &v3, 1 << 20, json!({})).await[0]["resp"]["status"], "swapped");
        let sha = || reg.get(NAME).expect("registered").converter.info().sha256;
        assert_eq!(sha(), sha256_hex(&v3));

        let a = uploads.rollback(NAME, "test").await;
        assert_eq!(a["resp"]["status"], "rolled back", "{a}");
        assert_eq!(sha(), sha256_hex(&v2));
        assert!(!dir.path().join(format!("{}.wasm", sha256_hex(&v3))).exists(), "the version rolled back is gone");
        let a = uploads.rollback(NAME, "test").await;
        assert_eq!(a["resp"]["status"], "rolled back", "{a}");
        assert_eq!(sha(), configured);
        let a = uploads.rollback(NAME, "test").await;
        assert_eq!(a["code"], 409, "{a}");
        let manifest: Json =
            serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST)).expect("manifest")).expect("JSON");
        assert_eq!(manifest["converters"], json!({}), "a restart serves the configured version");
    }
}
