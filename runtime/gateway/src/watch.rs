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
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What tells a file's versions apart without reading it.
type Stamp = Option<(u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// A file watched for changes by polling: a change counts once the file's
/// size and modification time have stayed the same for one more check.
/// The converter watcher and the connectors' configuration files
/// ([`crate::service::Gateway::run`]) both use it.
#[derive(Debug)]
pub struct Watched {
    pub path: PathBuf,
    /// The version acted on (or seen at start).
    applied: Stamp,
    /// A change seen at the last check, waiting to stay the same.
    pending: Option<Stamp>,
}

/// What a check of a [`Watched`] file found.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing, or a change still settling.
    None,
    /// A new version, settled.
    Changed,
    /// The file is gone.
    Gone,
}

impl Watched {
    /// Watch `path` from its version now.
    pub fn new(path: PathBuf) -> Watched {
        Watched { applied: stamp(&path), path, pending: None }
    }

    pub fn check(&mut self) -> Change {
        let now = stamp(&self.path);
        if now == self.applied {
            self.pending = None;
            return Change::None;
        }
        if self.pending != Some(now) {
            // Changed since the last look: wait for it to settle.
            self.pending = Some(now);
            return Change::None;
        }
        self.pending = None;
        self.applied = now;
        if now.is_none() { Change::Gone } else { Change::Changed }
    }
}

/// Watch the files of the registry's converters every `period` until
/// `stop`; `None` when `period` is zero. The registry is read again at each
/// check: converters of a connector restarted with a new configuration are
/// watched from then on.
pub fn spawn(registry: &Registry, period: Duration, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    if period.is_zero() {
        return None;
    }
    let registry = registry.clone();
    let mut files: HashMap<PathBuf, Watched> = HashMap::new();
    let count = by_file(&registry).len();
    if count > 0 {
        tracing::info!("watching {count} converter file(s) for changes, every {period:?}");
    }
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let current = by_file(&registry);
            files.retain(|path, _| current.contains_key(path));
            for (path, all) in current {
                let f = files.entry(path.clone()).or_insert_with(|| Watched::new(path));
                match f.check() {
                    Change::None => continue,
                    Change::Gone => {
                        tracing::warn!(
                            "converter file {} is gone; its converters keep serving the version loaded",
                            f.path.display()
                        );
                        continue;
                    }
                    Change::Changed => {}
                }
                swap(&f.path, all).await;
            }
        }
    }))
}

/// The registry's converters loaded from a file, by file (one serving a
/// version uploaded from ThingsBoard included: it is told apart at a change).
fn by_file(registry: &Registry) -> HashMap<PathBuf, Vec<AnyConverter>> {
    let mut files: HashMap<PathBuf, Vec<AnyConverter>> = HashMap::new();
    for r in registry.snapshot() {
        if let Some(path) = r.file {
            files.entry(path).or_default().push(r.converter);
        }
    }
    files
}

/// Swap the new version of `path` into its converters.
async fn swap(path: &Path, all: Vec<AnyConverter>) {
    // One serving a version uploaded from ThingsBoard keeps it (the file's
    // serves again after a rollback).
    let converters: Vec<AnyConverter> = all.iter().filter(|c| c.file().is_some()).cloned().collect();
    if converters.len() < all.len() {
        tracing::info!(
            "converter file {} changed; {} of its converter(s) serve an uploaded version and keep it",
            path.display(),
            all.len() - converters.len()
        );
    }
    if converters.is_empty() {
        return;
    }
    tracing::info!("converter file {} changed: swapping it in", path.display());
    let wanted = converters.len();
    // Compiling takes a while: off the async threads.
    let swapped = tokio::task::spawn_blocking(move || {
        converters.iter().map(|c| c.replace(c.spec()).is_ok()).filter(|ok| *ok).count()
    })
    .await
    .unwrap_or(0);
    if swapped < wanted {
        // Refused (logged by the runtime with the reason): the next change
        // of the file is tried again.
        tracing::warn!("{} of {wanted} converter(s) of {} kept their version", wanted - swapped, path.display());
    }
}
