//! Hot swap from disk: while the gateway runs, every converter loaded from a
//! `.wasm` file is watched, and a file that changes is swapped in without a
//! restart and without losing a message.
//!
//! The runtime does the swap ([`tbgw_wasm::Converter::replace`]): the new
//! component is compiled, checked and `create`d off the hot path; calls in
//! flight finish on the old version; a replacement that fails any check is
//! refused with its reason and the old version keeps serving. This module
//! only decides when: files are polled (`tbgw.watchConverters` seconds, 1
//! by default; 0 turns it off) rather than watched with inotify, which
//! works the same on every filesystem, containers' bind mounts included, at
//! the cost of one `stat` per file per period. A change is swapped in once
//! the file's size and modification time have stayed the same for one
//! period, so that a file still being copied is not read half-written
//! (writing a new file and renaming it over the old one is safest; a
//! half-written file that slips through is refused, and the finished one
//! swapped in at the next change of its time).
//!
//! A converter serving a version uploaded from ThingsBoard
//! ([`crate::uploads`]) keeps it when its file changes.
//!
//! The converter's config (`extensionConfig`) is part of the gateway's
//! configuration, which is read at start: changing it takes a restart
//! (`gateway_restart`).

use crate::converters::{AnyConverter, Registry};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What tells a file's versions apart without reading it.
type Stamp = Option<(u64, SystemTime)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// One watched file and the converters loaded from it.
struct File {
    path: PathBuf,
    converters: Vec<AnyConverter>,
    /// The version swapped in (or loaded at start).
    applied: Stamp,
    /// A change seen at the last check, waiting to stay the same.
    pending: Option<Stamp>,
}

/// Watch the files of the registry's converters every `period` until
/// `stop`; `None` if none was loaded from a file.
pub fn spawn(registry: &Registry, period: Duration, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let mut files: HashMap<PathBuf, File> = HashMap::new();
    for c in registry.iter().map(|r| r.converter.clone()) {
        let Some(path) = c.file() else { continue };
        files
            .entry(path.clone())
            .or_insert_with(|| File { applied: stamp(&path), path, converters: Vec::new(), pending: None })
            .converters
            .push(c);
    }
    if files.is_empty() || period.is_zero() {
        return None;
    }
    tracing::info!("watching {} converter file(s) for changes, every {period:?}", files.len());
    let mut files: Vec<File> = files.into_values().collect();
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for f in &mut files {
                let now = stamp(&f.path);
                if now == f.applied {
                    f.pending = None;
                    continue;
                }
                if f.pending != Some(now) {
                    // Changed since the last look: wait for it to settle.
                    f.pending = Some(now);
                    continue;
                }
                f.pending = None;
                f.applied = now;
                if now.is_none() {
                    tracing::warn!(
                        "converter file {} is gone; its converters keep serving the version loaded",
                        f.path.display()
                    );
                    continue;
                }
                // One serving a version uploaded from ThingsBoard keeps it
                // (the file's serves again after a rollback).
                let converters: Vec<AnyConverter> =
                    f.converters.iter().filter(|c| c.file().is_some()).cloned().collect();
                if converters.len() < f.converters.len() {
                    tracing::info!(
                        "converter file {} changed; {} of its converter(s) serve an uploaded version and keep it",
                        f.path.display(),
                        f.converters.len() - converters.len()
                    );
                }
                if converters.is_empty() {
                    continue;
                }
                tracing::info!("converter file {} changed: swapping it in", f.path.display());
                let wanted = converters.len();
                // Compiling takes a while: off the async threads.
                let swapped = tokio::task::spawn_blocking(move || {
                    converters.iter().map(|c| c.replace(c.spec()).is_ok()).filter(|ok| *ok).count()
                })
                .await
                .unwrap_or(0);
                if swapped < wanted {
                    // Refused (logged by the runtime with the reason): the
                    // next change of the file is tried again.
                    tracing::warn!(
                        "{} of {wanted} converter(s) of {} kept their version",
                        wanted - swapped,
                        f.path.display()
                    );
                }
            }
        }
    }))
}
