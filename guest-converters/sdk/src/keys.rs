//! The key table of one batch's `uplink-results`: every distinct key the
//! batch uses once, entries naming theirs by index.
//!
//! A converter configured with a key hands out clones of one shared
//! [`Key`], so most lookups are by the key's address in a small
//! direct-mapped cache; a key made per message (from a template, or every
//! member of a `"*"` mapping) is found by its text. Every key the cache
//! points at is kept in the table, so an address in it cannot be reused by
//! another key while it is cached.
//!
//! One table serves an instance's every batch: the keys it knows stay
//! (a converter's keys are the same in every message), so a batch finds
//! them without hashing anew, and each batch numbers and sends only the
//! keys it uses (an entry's batch stamp says whether it has a number in
//! this batch yet). A converter whose keys are made of its messages would
//! grow it without end: past [`MAX_KEYS`] it starts afresh.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use tbgw_data::Key;

const CACHE: usize = 64;

/// Keys a table keeps across batches, at most.
pub(crate) const MAX_KEYS: usize = 4096;

/// A key the table knows: the key, the batch that last numbered it, and
/// its number in that batch.
struct Known {
    key: Key,
    stamp: u32,
    index: u32,
}

pub(crate) struct KeyTable {
    known: Vec<Known>,
    /// Positions in `known` by text.
    by_text: HashMap<Key, u32, BuildHasherDefault<Fx>>,
    /// (address of a key in `known`, its position); address 0: empty.
    cache: [(usize, u32); CACHE],
    /// The batch now (never 0, which new entries carry).
    stamp: u32,
    /// This batch's keys, in their numbers' order.
    batch: Vec<String>,
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable { known: Vec::new(), by_text: HashMap::default(), cache: [(0, 0); CACHE], stamp: 0, batch: Vec::new() }
    }
}

impl KeyTable {
    /// Start a batch.
    pub(crate) fn begin(&mut self) {
        self.batch.clear();
        self.stamp = self.stamp.wrapping_add(1);
        if self.known.len() > MAX_KEYS || self.stamp == 0 {
            self.known.clear();
            self.by_text.clear();
            self.cache = [(0, 0); CACHE];
            self.stamp = 1;
        }
    }

    /// The number of `key` in this batch, given on first use.
    pub(crate) fn index(&mut self, key: Key) -> u32 {
        let position = self.position(key) as usize;
        let known = &mut self.known[position];
        if known.stamp != self.stamp {
            known.stamp = self.stamp;
            known.index = self.batch.len() as u32;
            self.batch.push(known.key.as_str().to_owned());
        }
        known.index
    }

    fn position(&mut self, key: Key) -> u32 {
        let addr = key.addr();
        let slot = (addr >> 3) % CACHE;
        let (cached, position) = self.cache[slot];
        if cached == addr {
            return position;
        }
        let position = match self.by_text.get(&key) {
            Some(&p) => p,
            None => {
                let p = self.known.len() as u32;
                self.known.push(Known { key: key.clone(), stamp: 0, index: 0 });
                self.by_text.insert(key.clone(), p);
                p
            }
        };
        // Only an address the table keeps alive may be cached.
        if self.known[position as usize].key.ptr_eq(&key) {
            self.cache[slot] = (addr, position);
        }
        position
    }

    /// This batch's keys, in their numbers' order.
    pub(crate) fn take_keys(&mut self) -> Vec<String> {
        std::mem::take(&mut self.batch)
    }
}

/// FxHash (as rustc's): keys are short and the converter's own (a guest
/// has nobody to defend against), so SipHash would be time wasted on every
/// key of every batch.
#[derive(Default)]
pub(crate) struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
