//! The in-memory store: the same contract as the `fjall` store, bounded
//! and fast, and **lost when the gateway stops**.

use crate::dead_letters::{DeadBook, encode_all};
use crate::ledger::{Admission, Ledger};
use crate::{DeadLetter, EventStore, Seq, StoreError, StoreLimits, StoreStats, approx_size, codec};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tbgw_core::{DeviceRecord, Event};

/// The in-memory event store.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    room: Condvar,
}

struct Inner {
    ledger: Ledger,
    events: BTreeMap<Seq, Event>,
    devices: HashMap<String, DeviceRecord>,
    dead: DeadBook,
    /// Dead letters, encoded (their size is what the bound counts).
    letters: BTreeMap<u64, Vec<u8>>,
}

impl MemoryStore {
    pub fn new(limits: StoreLimits) -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner {
                ledger: Ledger::new(limits, 0),
                events: BTreeMap::new(),
                devices: HashMap::new(),
                dead: DeadBook::new(limits.dead_letters),
                letters: BTreeMap::new(),
            }),
            room: Condvar::new(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl EventStore for MemoryStore {
    fn append(&self, events: &[Event]) -> Result<Range<Seq>, StoreError> {
        let sizes: Vec<u32> = events.iter().map(|e| u32::try_from(approx_size(e)).unwrap_or(u32::MAX)).collect();
        let bytes: u64 = sizes.iter().map(|s| u64::from(*s)).sum();
        let mut inner = self.inner();
        let to_drop = loop {
            if inner.ledger.closed {
                return Err(StoreError::Closed);
            }
            match inner.ledger.admit(events.len() as u64, bytes)? {
                Admission::Go { drop } => break drop,
                Admission::Wait => {
                    inner = self.room.wait_timeout(inner, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        };
        for seq in &to_drop {
            inner.events.remove(seq);
        }
        if !to_drop.is_empty() {
            tracing::warn!("memory store full: dropped the {} oldest events to make room", to_drop.len());
        }
        let range = inner.ledger.push(&sizes);
        for (seq, e) in range.clone().zip(events) {
            inner.events.insert(seq, e.clone());
        }
        Ok(range)
    }

    fn read(&self, from: Seq, max: usize) -> Result<Vec<(Seq, Event)>, StoreError> {
        Ok(self.inner().events.range(from..).take(max).map(|(s, e)| (*s, e.clone())).collect())
    }

    fn remove(&self, seqs: Range<Seq>) -> Result<(), StoreError> {
        let mut inner = self.inner();
        for seq in seqs {
            if inner.ledger.remove(seq) {
                inner.events.remove(&seq);
            }
        }
        drop(inner);
        self.room.notify_all();
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        let mut inner = self.inner();
        let mut stats = inner.ledger.stats();
        (stats.dead_letters, stats.dead_letters_dropped) = (inner.dead.count(), inner.dead.dropped);
        stats
    }

    fn put_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        let encoded = encode_all(letters);
        let mut inner = self.inner();
        if inner.ledger.closed {
            return Err(StoreError::Closed);
        }
        for buf in encoded {
            let Some((id, evict)) = inner.dead.admit(u32::try_from(buf.len()).unwrap_or(u32::MAX)) else { continue };
            for old in evict {
                inner.letters.remove(&old);
            }
            inner.letters.insert(id, buf);
        }
        Ok(())
    }

    fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let inner = self.inner();
        inner
            .letters
            .range(from..)
            .take(max)
            .map(|(id, buf)| {
                codec::decode_dead_letter(buf).map(|l| (*id, l)).map_err(|e| StoreError::Db(e.to_string()))
            })
            .collect()
    }

    fn remove_dead_letters(&self, ids: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.inner();
        for id in ids {
            if inner.dead.remove(*id) {
                inner.letters.remove(id);
            }
        }
        Ok(())
    }

    fn put_device(&self, name: &str, device: &DeviceRecord) -> Result<(), StoreError> {
        self.inner().devices.insert(name.to_owned(), device.clone());
        Ok(())
    }

    fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        self.inner().devices.remove(name);
        Ok(())
    }

    fn devices(&self) -> Result<Vec<(String, DeviceRecord)>, StoreError> {
        let mut devices: Vec<_> = self.inner().devices.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(devices)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn close(&self) {
        self.inner().ledger.closed = true;
        self.room.notify_all();
    }
}
