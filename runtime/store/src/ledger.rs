//! What both stores keep in memory about the events they hold: sequence
//! numbers and sizes (for the bounds), and the counters. Sequence numbers
//! are dense, so this is a deque of sizes (0 = not stored) from the oldest
//! stored event on: 4 bytes per event.

use crate::{Seq, StoreError, StoreLimits, StoreStats, WhenFull};
use std::collections::VecDeque;
use std::ops::Range;

pub(crate) struct Ledger {
    limits: StoreLimits,
    /// The sequence number of `sizes[0]`.
    base: Seq,
    sizes: VecDeque<u32>,
    records: u64,
    bytes: u64,
    appended: u64,
    removed: u64,
    dropped: u64,
    corrupt: u64,
    pub(crate) closed: bool,
}

/// What an append may do now.
pub(crate) enum Admission {
    /// Append; first remove these oldest events (`WhenFull::DropOldest`).
    Go { drop: Vec<Seq> },
    /// Wait for room (`WhenFull::Block`).
    Wait,
}

impl Ledger {
    pub(crate) fn new(limits: StoreLimits, next_seq: Seq) -> Self {
        Ledger {
            limits,
            base: next_seq,
            sizes: VecDeque::new(),
            records: 0,
            bytes: 0,
            appended: 0,
            removed: 0,
            dropped: 0,
            corrupt: 0,
            closed: false,
        }
    }

    /// Record an event found in the store when opening it (in order).
    pub(crate) fn restore(&mut self, seq: Seq, size: u32) {
        if self.sizes.is_empty() {
            self.base = seq;
        }
        let gap = seq.saturating_sub(self.next_seq());
        self.sizes.extend(std::iter::repeat_n(0, gap as usize));
        self.sizes.push_back(size.max(1));
        self.records += 1;
        self.bytes += u64::from(size);
    }

    /// Never hand out sequence numbers below `seq` (used at open).
    pub(crate) fn advance_to(&mut self, seq: Seq) {
        if self.sizes.is_empty() {
            self.base = self.base.max(seq);
        } else if seq > self.next_seq() {
            let gap = seq - self.next_seq();
            self.sizes.extend(std::iter::repeat_n(0, gap as usize));
        }
    }

    pub(crate) fn next_seq(&self) -> Seq {
        self.base + self.sizes.len() as u64
    }

    /// The oldest stored event.
    pub(crate) fn first_seq(&mut self) -> Option<Seq> {
        while self.sizes.front() == Some(&0) {
            self.sizes.pop_front();
            self.base += 1;
        }
        (!self.sizes.is_empty()).then_some(self.base)
    }

    /// May `n` events of `bytes` bytes be appended now?
    pub(crate) fn admit(&mut self, n: u64, bytes: u64) -> Result<Admission, StoreError> {
        let l = self.limits;
        if n > l.max_records || bytes > l.max_bytes {
            return Err(StoreError::TooLarge { records: n, bytes, max_records: l.max_records, max_bytes: l.max_bytes });
        }
        let fits = |s: &Self| s.records + n <= l.max_records && s.bytes + bytes <= l.max_bytes;
        if fits(self) {
            return Ok(Admission::Go { drop: Vec::new() });
        }
        match l.when_full {
            WhenFull::Block => Ok(Admission::Wait),
            WhenFull::DropOldest => {
                let mut drop = Vec::new();
                while !fits(self) {
                    let Some(seq) = self.first_seq() else { break };
                    self.take(seq);
                    self.dropped += 1;
                    drop.push(seq);
                }
                Ok(Admission::Go { drop })
            }
        }
    }

    /// Account for a batch just written; returns its sequence numbers.
    pub(crate) fn push(&mut self, sizes: &[u32]) -> Range<Seq> {
        let start = self.next_seq();
        for &size in sizes {
            self.sizes.push_back(size.max(1));
            self.records += 1;
            self.bytes += u64::from(size);
        }
        self.appended += sizes.len() as u64;
        start..self.next_seq()
    }

    /// Take back a batch [`Ledger::push`]ed whose write then failed.
    pub(crate) fn unpush(&mut self, range: Range<Seq>) {
        for seq in range {
            if self.take(seq) {
                self.appended -= 1;
            }
        }
    }

    /// Account for a delivered event; false if it was not stored.
    pub(crate) fn remove(&mut self, seq: Seq) -> bool {
        let removed = self.take(seq);
        if removed {
            self.removed += 1;
        }
        removed
    }

    /// Account for an event found undecodable.
    pub(crate) fn remove_corrupt(&mut self, seq: Seq) {
        if self.take(seq) {
            self.corrupt += 1;
        }
    }

    fn take(&mut self, seq: Seq) -> bool {
        let Some(idx) = seq.checked_sub(self.base) else { return false };
        match self.sizes.get_mut(idx as usize) {
            Some(size) if *size > 0 => {
                self.records -= 1;
                self.bytes -= u64::from(*size);
                *size = 0;
                true
            }
            _ => false,
        }
    }

    /// Whether `seq` is stored.
    #[cfg(test)]
    pub(crate) fn contains(&self, seq: Seq) -> bool {
        seq.checked_sub(self.base).and_then(|i| self.sizes.get(i as usize)).is_some_and(|s| *s > 0)
    }

    pub(crate) fn stats(&mut self) -> StoreStats {
        StoreStats {
            records: self.records,
            bytes: self.bytes,
            appended: self.appended,
            removed: self.removed,
            dropped: self.dropped,
            corrupt: self.corrupt,
            first_seq: self.first_seq(),
            next_seq: self.next_seq(),
            dead_letters: 0,
            dead_letters_dropped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_records: u64, when_full: WhenFull) -> StoreLimits {
        StoreLimits { max_records, max_bytes: 1000, when_full, dead_letters: Default::default() }
    }

    #[test]
    fn drop_oldest_makes_room_in_order() {
        let mut l = Ledger::new(limits(3, WhenFull::DropOldest), 10);
        assert_eq!(l.push(&[10, 10, 10]), 10..13);
        l.remove(11);
        match l.admit(2, 20).unwrap() {
            Admission::Go { drop } => assert_eq!(drop, vec![10]),
            Admission::Wait => panic!("should drop"),
        }
        assert_eq!(l.push(&[10, 10]), 13..15);
        let s = l.stats();
        assert_eq!((s.records, s.bytes, s.dropped, s.removed, s.first_seq), (3, 30, 1, 1, Some(12)));
    }

    #[test]
    fn block_waits_and_oversized_batches_are_refused() {
        let mut l = Ledger::new(limits(2, WhenFull::Block), 0);
        l.push(&[1, 1]);
        assert!(matches!(l.admit(1, 1), Ok(Admission::Wait)));
        assert!(matches!(l.admit(3, 1), Err(StoreError::TooLarge { .. })));
        l.remove(0);
        assert!(matches!(l.admit(1, 1), Ok(Admission::Go { .. })));
    }

    #[test]
    fn restore_fills_gaps() {
        let mut l = Ledger::new(limits(100, WhenFull::Block), 0);
        l.restore(5, 3);
        l.restore(8, 4);
        assert_eq!(l.stats().first_seq, Some(5));
        assert!(l.contains(8) && !l.contains(6));
        assert_eq!(l.next_seq(), 9);
        l.remove(5);
        assert_eq!(l.stats().first_seq, Some(8));
    }
}
