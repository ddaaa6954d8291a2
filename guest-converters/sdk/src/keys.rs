//! The key table of one batch's `uplink-results`: every distinct key once,
//! entries naming theirs by index.
//!
//! A converter configured with a key hands out clones of one shared
//! [`Key`], so most lookups are by the key's address in a small
//! direct-mapped cache; a key made per message (from a template, or every
//! member of a `"*"` mapping) is found by its text. Every key the cache
//! points at is kept in the table, so an address in it cannot be reused by
//! another key while the batch lasts.
//!
//! One table serves an instance's every batch: its keys keep their indices
//! from batch to batch (a converter's keys are the same in every message),
//! so the table is built once, and each batch sends it whole. A converter
//! whose keys are made of its messages would grow it without end: past
//! [`MAX_KEYS`] it starts afresh at the next batch.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use tbgw_data::Key;

const CACHE: usize = 64;

/// Keys a table keeps across batches, at most.
pub(crate) const MAX_KEYS: usize = 1024;

pub(crate) struct KeyTable {
    keys: Vec<Key>,
    by_text: HashMap<Key, u32, BuildHasherDefault<Fx>>,
    /// (address of a key kept in `keys`, its index); address 0: empty.
    cache: [(usize, u32); CACHE],
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTable { keys: Vec::new(), by_text: HashMap::default(), cache: [(0, 0); CACHE] }
    }
}

impl KeyTable {
    /// The index of `key`, added if new.
    pub(crate) fn index(&mut self, key: Key) -> u32 {
        let addr = key.addr();
        // Keys made together sit at evenly spaced addresses: spread them.
        let slot = (addr >> 3) % CACHE;
        let (cached, index) = self.cache[slot];
        if cached == addr {
            return index;
        }
        let index = match self.by_text.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.keys.len() as u32;
                self.keys.push(key.clone());
                self.by_text.insert(key.clone(), i);
                i
            }
        };
        // Only an address the table keeps alive may be cached.
        if self.keys[index as usize].ptr_eq(&key) {
            self.cache[slot] = (addr, index);
        }
        index
    }

    /// Start a batch: the table as it was, unless it grew past
    /// [`MAX_KEYS`].
    pub(crate) fn begin(&mut self) {
        if self.keys.len() > MAX_KEYS {
            self.by_text.clear();
            self.cache = [(0, 0); CACHE];
            self.keys.clear();
        }
    }

    /// The table, in index order, for the batch's results.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.as_str().to_owned()).collect()
    }
}

/// FxHash (as rustc's): keys are short and trusted, SipHash is wasted here.
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
