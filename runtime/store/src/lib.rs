//! The event store: where converted device updates wait until ThingsBoard
//! has acknowledged them.
//!
//! # Guarantees
//!
//! - **Ordered.** Every event gets a sequence number (`u64`, increasing) when
//!   it is appended; reads return events in sequence order.
//! - **Durable before acknowledged.** [`EventStore::append`] returns only
//!   once the batch is written: with the `fjall` store, to the operating
//!   system (it survives the process being killed, even with SIGKILL) and,
//!   with [`Durability::PerBatch`], fsynced (it survives power loss too).
//!   The pipeline acknowledges a source message only after its events were
//!   appended.
//! - **Removed only when delivered.** Events leave the store through
//!   [`EventStore::remove`], which the ThingsBoard client calls when the
//!   PUBACK of the publish that carried them arrives. After a restart,
//!   delivery resumes from the oldest event still stored.
//! - **Bounded.** The store holds at most `max_records` events and
//!   `max_bytes` bytes of them. When full, [`WhenFull::Block`] makes `append`
//!   wait (backpressure up to the connectors, which stop taking messages),
//!   [`WhenFull::DropOldest`] removes the oldest events to make room, counts
//!   them in [`StoreStats::dropped`] and logs it.
//!
//! # The `fjall` store's layout
//!
//! One fjall database in the data folder, with four keyspaces:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `events` | sequence number, 8 bytes big-endian (so keys sort in order) | the event, encoded by [`codec`] |
//! | `devices` | device name | the device's profile and connector ([`codec`]) |
//! | `meta` | name | format version and the like |
//! | `dead_letters` | id, 8 bytes big-endian | a message that failed to convert ([`dead_letters`]) |
//!
//! Each `append` is one write batch (group commit: the pipeline appends the
//! events of many messages at once). Removed events become tombstones that
//! fjall's compaction reclaims. Memory stays flat however large the
//! backlog: `events` keeps at most 8 MiB in its memtable (fjall's default,
//! 64 MiB, grew the gateway by ~70 MB in an outage) and has no bloom
//! filters (it is only read by range). At open, one scan of `events` rebuilds the
//! in-memory ledger of sequence numbers and sizes, which is what the bounds
//! are checked against (4 bytes per stored event).
//!
//! # The `memory` store
//!
//! The same contract in memory, for users who prefer no disk I/O: fast, and
//! **everything in it is lost when the gateway stops**.

pub mod codec;
pub mod dead_letters;
mod fjall_store;
mod ledger;
mod memory;

pub use dead_letters::{DeadLetter, DeadLetterFull, DeadLetterLimits};
pub use fjall_store::FjallStore;
pub use memory::MemoryStore;

use std::ops::Range;
use std::time::Duration;
use tbgw_core::{DeviceRecord, Event};

/// An event's place in the store.
pub type Seq = u64;

/// What the store does when an append would exceed its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until delivery makes room: backpressure to the sources.
    Block,
    /// Remove the oldest events to make room, counting them.
    DropOldest,
}

/// When the `fjall` store forces writes to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync every append before it returns.
    PerBatch,
    /// Every append is written to the operating system before it returns
    /// (safe from a process crash); fsync every so often (power loss may
    /// lose that much).
    Interval(Duration),
}

/// Bounds and policies of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_records: u64,
    pub max_bytes: u64,
    pub when_full: WhenFull,
    /// The dead letters' own bounds.
    pub dead_letters: DeadLetterLimits,
}

/// Counters, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Events stored now (the delivery backlog).
    pub records: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Events appended since the store was opened.
    pub appended: u64,
    /// Events removed after delivery since the store was opened.
    pub removed: u64,
    /// Events dropped to make room (`WhenFull::DropOldest`).
    pub dropped: u64,
    /// Events found undecodable and removed.
    pub corrupt: u64,
    /// The sequence number of the oldest stored event.
    pub first_seq: Option<Seq>,
    /// The sequence number the next append starts at.
    pub next_seq: Seq,
    /// Messages kept because they failed to convert, and those not kept
    /// (the dead letters' bound).
    pub dead_letters: u64,
    pub dead_letters_dropped: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store: {0}")]
    Db(String),
    #[error("event store in {path}: {reason}")]
    Open { path: std::path::PathBuf, reason: String },
    #[error("event store is closed")]
    Closed,
    #[error(
        "a batch of {records} events ({bytes} bytes) is larger than the whole store (max_records {max_records}, max_bytes {max_bytes})"
    )]
    TooLarge { records: u64, bytes: u64, max_records: u64, max_bytes: u64 },
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// A store of events waiting for delivery, plus the devices ThingsBoard
/// knows through this gateway. Calls block (disk I/O, a full store): call
/// them from dedicated threads or `spawn_blocking`, never on an async
/// runtime's workers.
pub trait EventStore: Send + Sync {
    /// Append `events` as one batch; returns their sequence numbers. Blocks
    /// while the store is full under [`WhenFull::Block`].
    fn append(&self, events: &[Event]) -> Result<Range<Seq>, StoreError>;

    /// Up to `max` events with sequence numbers from `from` on, in order.
    fn read(&self, from: Seq, max: usize) -> Result<Vec<(Seq, Event)>, StoreError>;

    /// Remove delivered events. Removing an event that is not stored (never
    /// was, or already removed) is not an error.
    fn remove(&self, seqs: Range<Seq>) -> Result<(), StoreError>;

    /// Counters and the backlog.
    fn stats(&self) -> StoreStats;

    /// Remember a device (to connect it again after a restart).
    fn put_device(&self, name: &str, device: &DeviceRecord) -> Result<(), StoreError>;

    /// Forget a device.
    fn remove_device(&self, name: &str) -> Result<(), StoreError>;

    /// Every remembered device.
    fn devices(&self) -> Result<Vec<(String, DeviceRecord)>, StoreError>;

    /// Keep messages that failed to convert, in one write, before they are
    /// acknowledged to their sources. At the bound the oldest letters give
    /// way or the new ones are not kept ([`DeadLetterLimits`]), counted in
    /// [`StoreStats::dead_letters_dropped`].
    fn put_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError>;

    /// Up to `max` dead letters with ids from `from` on, oldest first.
    fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError>;

    /// Remove dead letters (replayed or purged); unknown ids are not an error.
    fn remove_dead_letters(&self, ids: &[u64]) -> Result<(), StoreError>;

    /// Force everything appended so far to the disk.
    fn flush(&self) -> Result<(), StoreError>;

    /// Make blocked and later appends fail with [`StoreError::Closed`] (for
    /// shutdown); reads and removes still work.
    fn close(&self);
}

/// The approximate size of an event in memory, for the memory store's
/// bounds.
fn approx_size(e: &Event) -> u64 {
    let u = &e.update;
    let entries = |es: &[tbgw_core::Entry]| -> usize {
        es.iter()
            .map(|e| {
                e.key.len()
                    + 16
                    + match &e.value {
                        tbgw_core::Value::Text(s) | tbgw_core::Value::Json(s) => s.len(),
                        _ => 0,
                    }
            })
            .sum()
    };
    let telemetry: usize = u.telemetry.iter().map(|t| 16 + entries(&t.values)).sum();
    (64 + e.connector.len()
        + u.device.len()
        + u.device_type.as_ref().map_or(0, String::len)
        + entries(&u.attributes)
        + telemetry) as u64
}
