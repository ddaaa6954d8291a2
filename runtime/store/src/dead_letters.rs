//! Dead letters: messages that could not be converted, kept rather than
//! only counted.
//!
//! A message fails when its converter rejects it (malformed input, the
//! converter's error), when its call breaks the contract, or when it timed
//! out, trapped or ran out of memory alone twice (the second time on a
//! fresh instance with a larger budget: `tbgw_wasm::RETRY_BUDGET`), or was
//! left untried after its neighbours timed out. The pipeline then keeps the
//! message as it came
//! ([`DeadLetter`]: the raw message and its source, the connector and route,
//! the converter and its version, the reason) before acknowledging it to its
//! source, so that nothing is acknowledged and gone without a trace. `tbgw
//! dead-letters list|replay|purge` reads them; a replay converts them with
//! the converters the configuration names now (after a fixed converter was
//! swapped in) and stores their events.
//!
//! Dead letters are bounded by their own [`DeadLetterLimits`], apart from the
//! events': a flood of bad messages must not crowd out good data. At the
//! bound the oldest letter gives way (or the newest is not kept), and is
//! counted.

use std::collections::BTreeMap;
use tbgw_core::RawUplink;

/// A message that failed to convert, as it came.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub connector: String,
    /// Where its route is configured: `connectors[0].configuration.mapping[1]`.
    pub route: String,
    /// The converter's name and the sha256 of the component that failed it.
    pub converter: String,
    pub converter_sha256: String,
    pub reason: String,
    /// When it failed, ms since the epoch.
    pub failed_at: i64,
    pub raw: RawUplink,
}

/// What happens to a dead letter when the keyspace is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterFull {
    /// The oldest letters are removed to make room.
    DropOldest,
    /// The new letter is not kept.
    DropNewest,
}

/// The bounds of the dead-letter keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    pub max_records: u64,
    pub max_bytes: u64,
    pub when_full: DeadLetterFull,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits { max_records: 10_000, max_bytes: 64 << 20, when_full: DeadLetterFull::DropOldest }
    }
}

/// The ids and sizes of the stored letters, for the bounds.
#[derive(Clone)]
pub(crate) struct DeadBook {
    limits: DeadLetterLimits,
    next: u64,
    sizes: BTreeMap<u64, u32>,
    bytes: u64,
    pub(crate) dropped: u64,
}

impl DeadBook {
    pub(crate) fn new(limits: DeadLetterLimits) -> DeadBook {
        DeadBook { limits, next: 0, sizes: BTreeMap::new(), bytes: 0, dropped: 0 }
    }

    /// A letter found when opening the store.
    pub(crate) fn restore(&mut self, id: u64, size: u32) {
        self.sizes.insert(id, size);
        self.bytes += u64::from(size);
        self.next = self.next.max(id + 1);
    }

    /// Make room for a letter of `size` bytes: its id and the ids of the
    /// letters to remove first; `None` when it is not kept.
    pub(crate) fn admit(&mut self, size: u32) -> Option<(u64, Vec<u64>)> {
        let size64 = u64::from(size);
        if size64 > self.limits.max_bytes || self.limits.max_records == 0 {
            self.dropped += 1;
            return None;
        }
        let mut evict = Vec::new();
        let full = |b: &DeadBook, evicted: usize| {
            (b.sizes.len() - evicted) as u64 >= b.limits.max_records
                || b.bytes - evict_bytes(b, evicted) + size64 > b.limits.max_bytes
        };
        fn evict_bytes(b: &DeadBook, n: usize) -> u64 {
            b.sizes.values().take(n).map(|s| u64::from(*s)).sum()
        }
        while full(self, evict.len()) {
            if self.limits.when_full == DeadLetterFull::DropNewest {
                self.dropped += 1;
                return None;
            }
            match self.sizes.keys().nth(evict.len()) {
                Some(id) => evict.push(*id),
                None => break,
            }
        }
        for id in &evict {
            self.remove(*id);
            self.dropped += 1;
        }
        let id = self.next;
        self.next += 1;
        self.sizes.insert(id, size);
        self.bytes += size64;
        Some((id, evict))
    }

    pub(crate) fn remove(&mut self, id: u64) -> bool {
        match self.sizes.remove(&id) {
            Some(size) => {
                self.bytes -= u64::from(size);
                true
            }
            None => false,
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.sizes.len() as u64
    }
}

/// Encode letters for a store.
pub(crate) fn encode_all(letters: &[DeadLetter]) -> Vec<Vec<u8>> {
    letters
        .iter()
        .map(|l| {
            let mut buf = Vec::with_capacity(256 + l.raw.payload.len());
            crate::codec::encode_dead_letter(l, &mut buf);
            buf
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_drops_the_oldest_or_the_newest() {
        let mut b =
            DeadBook::new(DeadLetterLimits { max_records: 2, max_bytes: 100, when_full: DeadLetterFull::DropOldest });
        assert_eq!(b.admit(10), Some((0, vec![])));
        assert_eq!(b.admit(10), Some((1, vec![])));
        assert_eq!(b.admit(10), Some((2, vec![0])), "the oldest gives way");
        assert_eq!(b.admit(90), Some((3, vec![1])), "bytes count too: 10 + 90 fit in 100");
        assert_eq!(b.admit(101), None, "larger than the keyspace");
        assert_eq!((b.count(), b.dropped), (2, 3));
        let mut n =
            DeadBook::new(DeadLetterLimits { max_records: 1, max_bytes: 100, when_full: DeadLetterFull::DropNewest });
        assert_eq!(n.admit(10), Some((0, vec![])));
        assert_eq!(n.admit(10), None);
        assert!(n.remove(0));
        assert_eq!(n.admit(10), Some((1, vec![])));
    }
}
