//! A disk with a volatile write cache, and the metadata store next to it.

use std::collections::HashMap;

use bytes::Bytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::gen::Generations;
use crate::machine::{Payload, Persisted};
use crate::meta::{MetaFlags, BM_BLOCK_SIZE};

const BS: u64 = BM_BLOCK_SIZE;

/// Block contents: absent means zeroes.
#[derive(Debug, Default, Clone)]
pub struct SimDisk {
    durable: HashMap<u64, Bytes>,
    /// Written but not flushed: lost (each block independently) on power loss.
    cache: HashMap<u64, Option<Bytes>>,
}

fn zero_block() -> Bytes {
    Bytes::from(vec![0u8; BS as usize])
}

impl SimDisk {
    pub fn write(&mut self, offset: u64, len: u32, payload: &Payload, fua: bool) {
        let first = offset / BS;
        let n = u64::from(len) / BS;
        for i in 0..n {
            let v = match payload {
                Payload::Data(d) => {
                    let s = (i * BS) as usize;
                    d.get(s..s + BS as usize).map(Bytes::copy_from_slice)
                }
                // Trim reads back as zeroes here; real devices may differ,
                // which the daemon handles by replicating the same command.
                Payload::Trim | Payload::Zeroes => None,
            };
            if fua {
                self.cache.remove(&(first + i));
                match v {
                    Some(b) => self.durable.insert(first + i, b),
                    None => self.durable.remove(&(first + i)),
                };
            } else {
                self.cache.insert(first + i, v);
            }
        }
    }

    pub fn read(&self, offset: u64, len: u32) -> Bytes {
        let mut out = Vec::with_capacity(len as usize);
        let first = offset / BS;
        for i in 0..u64::from(len) / BS {
            out.extend_from_slice(&self.block(first + i));
        }
        Bytes::from(out)
    }

    pub fn block(&self, b: u64) -> Bytes {
        match self.cache.get(&b) {
            Some(Some(v)) => v.clone(),
            Some(None) => zero_block(),
            None => self.durable.get(&b).cloned().unwrap_or_else(zero_block),
        }
    }

    pub fn flush(&mut self) {
        for (b, v) in self.cache.drain() {
            match v {
                Some(d) => self.durable.insert(b, d),
                None => self.durable.remove(&b),
            };
        }
    }

    /// Power loss: each cached block independently survives, with
    /// chance `survives`, or not.
    pub fn power_loss(&mut self, rng: &mut ChaCha8Rng, survives: f64) {
        let mut keys: Vec<u64> = self.cache.keys().copied().collect();
        keys.sort_unstable();
        for b in keys {
            let v = self.cache.remove(&b).flatten();
            if rng.gen_bool(survives) {
                match v {
                    Some(d) => self.durable.insert(b, d),
                    None => self.durable.remove(&b),
                };
            }
        }
    }

    /// Every block either disk holds something in, sorted.
    pub fn touched(&self, other: &SimDisk) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .durable
            .keys()
            .chain(self.cache.keys())
            .chain(other.durable.keys())
            .chain(other.cache.keys())
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// What the metadata area holds (durable once a write completes).
#[derive(Debug, Clone)]
pub struct SimMeta {
    pub gens: Generations,
    pub flags: MetaFlags,
    pub bitmap: Vec<u64>,
    pub al_seq: u64,
    pub al_extents: Vec<u32>,
    pub promoted_at_ms: u64,
}

impl SimMeta {
    pub fn fresh(nbits: u64) -> Self {
        Self {
            gens: Generations::just_created(),
            flags: MetaFlags::default(),
            bitmap: vec![0; nbits.div_ceil(64) as usize],
            al_seq: 0,
            al_extents: Vec::new(),
            promoted_at_ms: 0,
        }
    }

    pub fn persisted(&self) -> Persisted {
        Persisted {
            gens: self.gens,
            flags: self.flags,
            bitmap: self.bitmap.clone(),
            al_seq: self.al_seq,
            al_extents: self.al_extents.clone(),
            promoted_at_ms: self.promoted_at_ms,
        }
    }

    pub fn write_bitmap(&mut self, first_word: u64, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            if let Some(slot) = self.bitmap.get_mut(first_word as usize + i) {
                *slot = *w;
            }
        }
    }
}
