//! The durable store, on fjall. Layout and guarantees: see the crate docs.

use crate::dead_letters::{DeadBook, encode_all};
use crate::ledger::{Admission, Ledger};
use crate::{DeadLetter, Durability, EventStore, Seq, StoreError, StoreLimits, StoreStats, codec};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tbgw_core::{DeviceRecord, Event};

/// Written in `meta` at creation; a store with another format is refused.
const FORMAT: &[u8] = b"tbgw-events-1";
/// The key in `meta` holding the next sequence number, so that sequence
/// numbers are never reused (weak tombstones rely on it).
const NEXT_SEQ: &[u8] = b"next_seq";
/// Not more than one "dropped events" warning this often.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The events keyspace's memtable: written events stay in memory until it
/// is this full, then go to a table on disk. fjall's default (64 MiB, and
/// twice that while one is flushed) made the gateway's memory grow by
/// ~240 bytes per stored event through an outage (101.7 MB after 60 s at
/// 5,000 messages/s, and growing); at 8 MiB it stays flat (57.1 MB peak over
/// 10 minutes) while the backlog goes to disk. (A memtable of 8 MiB
/// holds ~30 s at 1,000 messages/s: recent events are still read from
/// memory, where the ThingsBoard client reads them.)
const EVENTS_MEMTABLE_BYTES: u64 = 8 << 20;

/// fjall's block cache, for reads of a backlog from disk; its default is
/// 32 MiB. The operating system caches the files too.
const CACHE_BYTES: u64 = 8 << 20;

/// The durable event store.
pub struct FjallStore {
    db: Database,
    events: Keyspace,
    devices: Keyspace,
    meta: Keyspace,
    letters: Keyspace,
    durability: Durability,
    ledger: Mutex<Ledger>,
    /// Held through an append, so that appends become visible in the order
    /// of their sequence numbers; the ledger itself is not held through the
    /// write and its fsync, so that `stats`, `remove` and the bounds never
    /// wait for the disk.
    appending: Mutex<()>,
    dead: Mutex<DeadBook>,
    /// Signalled when room is made (remove) or the store closes.
    room: Condvar,
    dropped_warning: Mutex<(Instant, u64)>,
    syncer: Option<Syncer>,
    path: PathBuf,
}

impl FjallStore {
    /// Open (or create) the store in `path`.
    pub fn open(path: &Path, limits: StoreLimits, durability: Durability) -> Result<FjallStore, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: path.to_owned(), reason };
        let db = Database::builder(path).cache_size(CACHE_BYTES).open().map_err(|e| open_err(e.to_string()))?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(|e| open_err(e.to_string()))?;
        match meta.get("format").map_err(|e| open_err(e.to_string()))? {
            Some(format) if &*format != FORMAT => {
                return Err(open_err(format!(
                    "the store was written in format `{}`, this tbgw reads `{}`",
                    String::from_utf8_lossy(&format),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            Some(_) => {}
            None => meta.insert("format", FORMAT).map_err(|e| open_err(e.to_string()))?,
        }
        let events = db
            .keyspace("events", || {
                // Events are only ever read by range, in order: bloom
                // filters (kept in memory) would never be asked.
                KeyspaceCreateOptions::default()
                    .max_memtable_size(EVENTS_MEMTABLE_BYTES)
                    .filter_policy(fjall::config::FilterPolicy::disabled())
            })
            .map_err(|e| open_err(e.to_string()))?;
        let devices = db.keyspace("devices", KeyspaceCreateOptions::default).map_err(|e| open_err(e.to_string()))?;
        let letters =
            db.keyspace("dead_letters", KeyspaceCreateOptions::default).map_err(|e| open_err(e.to_string()))?;
        let mut dead = DeadBook::new(limits.dead_letters);
        for item in letters.iter() {
            let (key, value) = item.into_inner().map_err(|e| open_err(e.to_string()))?;
            let id = seq_of(&key).ok_or_else(|| open_err("a dead letter key is not an id".into()))?;
            dead.restore(id, u32::try_from(value.len()).unwrap_or(u32::MAX));
        }
        if dead.count() > 0 {
            tracing::warn!(
                path = %path.display(),
                "{} messages that failed to convert are kept as dead letters (tbgw dead-letters list)",
                dead.count()
            );
        }

        let floor = match meta.get(NEXT_SEQ).map_err(|e| open_err(e.to_string()))? {
            Some(v) => seq_of(&v).ok_or_else(|| open_err("the stored next sequence number is corrupt".into()))?,
            None => 0,
        };
        let mut ledger = Ledger::new(limits, floor);
        for item in events.iter() {
            let (key, value) = item.into_inner().map_err(|e| open_err(e.to_string()))?;
            let seq = seq_of(&key).ok_or_else(|| open_err("an event key is not a sequence number".into()))?;
            ledger.restore(seq, u32::try_from(value.len()).unwrap_or(u32::MAX));
        }
        ledger.advance_to(floor);
        let stats = ledger.stats();
        tracing::info!(
            path = %path.display(),
            "event store opened: {} events ({} bytes) waiting for delivery",
            stats.records,
            stats.bytes
        );
        let syncer = match durability {
            Durability::Interval(every) => Some(Syncer::start(db.clone(), every).map_err(|e| open_err(e.to_string()))?),
            Durability::PerBatch => None,
        };
        Ok(FjallStore {
            db,
            events,
            devices,
            meta,
            letters,
            durability,
            ledger: Mutex::new(ledger),
            appending: Mutex::new(()),
            dead: Mutex::new(dead),
            room: Condvar::new(),
            dropped_warning: Mutex::new((Instant::now() - DROP_WARNING_EVERY, 0)),
            syncer,
            path: path.to_owned(),
        })
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn_dropped(&self, n: usize) {
        let mut w = self.dropped_warning.lock().unwrap_or_else(|e| e.into_inner());
        w.1 += n as u64;
        if w.0.elapsed() >= DROP_WARNING_EVERY {
            tracing::warn!(
                path = %self.path.display(),
                "event store full: dropped the {} oldest events to make room (storage.when_full = drop_oldest)",
                w.1
            );
            *w = (Instant::now(), 0);
        }
    }
}

fn key(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(bytes: &[u8]) -> Option<Seq> {
    bytes.try_into().ok().map(Seq::from_be_bytes)
}

impl EventStore for FjallStore {
    fn append(&self, events: &[Event]) -> Result<Range<Seq>, StoreError> {
        if events.is_empty() {
            let next = self.ledger().next_seq();
            return Ok(next..next);
        }
        let encoded: Vec<Vec<u8>> = events
            .iter()
            .map(|e| {
                let mut buf = Vec::with_capacity(256);
                codec::encode_event(e, &mut buf);
                buf
            })
            .collect();
        let sizes: Vec<u32> = encoded.iter().map(|b| u32::try_from(b.len()).unwrap_or(u32::MAX)).collect();
        let bytes: u64 = sizes.iter().map(|s| u64::from(*s)).sum();

        let _appending = self.appending.lock().unwrap_or_else(|e| e.into_inner());
        let mut ledger = self.ledger();
        let to_drop = loop {
            if ledger.closed {
                return Err(StoreError::Closed);
            }
            match ledger.admit(encoded.len() as u64, bytes)? {
                Admission::Go { drop } => break drop,
                Admission::Wait => {
                    ledger =
                        self.room.wait_timeout(ledger, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        };
        // Counted before they are written (nobody can read them before the
        // write is done), taken back if the write fails.
        let range = ledger.push(&sizes);
        drop(ledger);
        let mut batch = self.db.batch();
        if self.durability == Durability::PerBatch {
            batch = batch.durability(Some(PersistMode::SyncData));
        }
        for seq in &to_drop {
            batch.remove_weak(&self.events, key(*seq));
        }
        for (seq, buf) in range.clone().zip(encoded) {
            batch.insert(&self.events, key(seq), buf);
        }
        batch.insert(&self.meta, NEXT_SEQ, key(range.end));
        if let Err(e) = batch.commit() {
            self.ledger().unpush(range);
            return Err(e.into());
        }
        if !to_drop.is_empty() {
            self.warn_dropped(to_drop.len());
        }
        Ok(range)
    }

    fn read(&self, from: Seq, max: usize) -> Result<Vec<(Seq, Event)>, StoreError> {
        let mut out = Vec::with_capacity(max.min(1024));
        let mut corrupt = Vec::new();
        for item in self.events.range(key(from)..) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.into_inner()?;
            let Some(seq) = seq_of(&k) else { continue };
            match codec::decode_event(&v) {
                Ok(event) => out.push((seq, event)),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), seq, "removing an undecodable event: {e}");
                    corrupt.push(seq);
                }
            }
        }
        if !corrupt.is_empty() {
            let mut batch = self.db.batch();
            for seq in &corrupt {
                batch.remove(&self.events, key(*seq));
            }
            batch.commit()?;
            let mut ledger = self.ledger();
            for seq in corrupt {
                ledger.remove_corrupt(seq);
            }
        }
        Ok(out)
    }

    fn remove(&self, seqs: Range<Seq>) -> Result<(), StoreError> {
        let mut ledger = self.ledger();
        let mut batch = self.db.batch();
        for seq in seqs {
            if ledger.remove(seq) {
                batch.remove_weak(&self.events, key(seq));
            }
        }
        // Not held through the commit, which may wait for a writer's fsync
        // (fjall's journal): `stats` and appends go on meanwhile. Should the
        // commit fail, the events stay on disk uncounted and go again after
        // a restart: a duplicate, not a loss.
        drop(ledger);
        self.room.notify_all();
        batch.commit()?;
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        let mut stats = self.ledger().stats();
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        (stats.dead_letters, stats.dead_letters_dropped) = (dead.count(), dead.dropped);
        stats
    }

    fn put_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        if self.ledger().closed {
            return Err(StoreError::Closed);
        }
        let encoded = encode_all(letters);
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        // Planned on a copy: the book changes only once the write is done.
        let mut plan = dead.clone();
        let mut batch = self.db.batch();
        if self.durability == Durability::PerBatch {
            batch = batch.durability(Some(PersistMode::SyncData));
        }
        for buf in encoded {
            let Some((id, evict)) = plan.admit(u32::try_from(buf.len()).unwrap_or(u32::MAX)) else {
                tracing::warn!(path = %self.path.display(), "the dead letters are full: a failed message is not kept");
                continue;
            };
            for old in evict {
                batch.remove(&self.letters, key(old));
            }
            batch.insert(&self.letters, key(id), buf);
        }
        batch.commit()?;
        *dead = plan;
        Ok(())
    }

    fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let mut out = Vec::new();
        for item in self.letters.range(key(from)..) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.into_inner()?;
            let Some(id) = seq_of(&k) else { continue };
            match codec::decode_dead_letter(&v) {
                Ok(letter) => out.push((id, letter)),
                Err(e) => tracing::error!(path = %self.path.display(), id, "skipping an undecodable dead letter: {e}"),
            }
        }
        Ok(out)
    }

    fn remove_dead_letters(&self, ids: &[u64]) -> Result<(), StoreError> {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        let mut plan = dead.clone();
        let mut batch = self.db.batch();
        for id in ids {
            if plan.remove(*id) {
                batch.remove(&self.letters, key(*id));
            }
        }
        batch.commit()?;
        *dead = plan;
        Ok(())
    }

    fn put_device(&self, name: &str, device: &DeviceRecord) -> Result<(), StoreError> {
        Ok(self.devices.insert(name, codec::encode_device(device))?)
    }

    fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        Ok(self.devices.remove(name)?)
    }

    fn devices(&self) -> Result<Vec<(String, DeviceRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.devices.iter() {
            let (k, v) = item.into_inner()?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match codec::decode_device(&v) {
                Ok(d) => out.push((name, d)),
                Err(e) => tracing::error!(path = %self.path.display(), device = %name, "skipping a stored device: {e}"),
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(self.db.persist(PersistMode::SyncData)?)
    }

    fn close(&self) {
        self.ledger().closed = true;
        self.room.notify_all();
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        self.syncer.take();
        if let Err(e) = self.db.persist(PersistMode::SyncData) {
            tracing::error!(path = %self.path.display(), "flushing the event store on close failed: {e}");
        }
    }
}

/// fsyncs the database every so often (`Durability::Interval`).
struct Syncer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(db: Database, every: Duration) -> std::io::Result<Syncer> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tbgw-store-sync".into()).spawn(move || {
            let (lock, cv) = &*flag;
            let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*stopped {
                stopped = cv.wait_timeout(stopped, every).unwrap_or_else(|e| e.into_inner()).0;
                if let Err(e) = db.persist(PersistMode::SyncData) {
                    tracing::error!("fsync of the event store failed: {e}");
                }
            }
        })?;
        Ok(Syncer { stop, thread: Some(thread) })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
