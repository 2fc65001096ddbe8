//! Hashing for maps keyed by a server id (a `u16`): the views and every subscription look ids
//! up once or more per record, tens of thousands of times in a snapshot.
//!
//! The standard library's default (`SipHash` with random keys) exists to resist hash flooding by
//! chosen keys; a `u16` key has only 65,536 values, so no input can make a map of them degrade
//! past that, and a multiplicative hash is enough: Fibonacci hashing, with the product's
//! well-mixed high half moved to the low bits that pick a bucket.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map from server id to `V`.
pub(crate) type IdMap<V> = HashMap<u16, V, BuildHasherDefault<IdHasher>>;

/// A set of server ids.
pub(crate) type IdSet = HashSet<u16, BuildHasherDefault<IdHasher>>;

/// Hashes the one `u16` written to it (an id) by multiplying it with 2^64 / φ.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The product's high half is the well-mixed one; hashbrown picks the bucket from the
        // low bits, so they trade places (ids sharing their low bits, a stride, spread too).
        self.0.rotate_left(32)
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only ids are hashed here; anything else still gets a usable (slower) hash.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spread_over_the_high_bits() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<IdHasher>::default();
        // hashbrown tags buckets with the top 7 bits: consecutive ids must not share them all.
        let tags: std::collections::BTreeSet<u64> =
            (1..=128u16).map(|id| build.hash_one(id) >> 57).collect();
        assert!(tags.len() > 64, "{} distinct tags", tags.len());
        // ... and over the low bits, which pick the bucket: ids 64 apart do not share one.
        let buckets: std::collections::BTreeSet<u64> = (1..=512u16)
            .map(|i| build.hash_one(i * 64) & 1023)
            .collect();
        assert!(buckets.len() > 256, "{} distinct buckets", buckets.len());
        let mut map: IdMap<u16> = IdMap::default();
        for id in 1..=u16::MAX {
            map.insert(id, id);
        }
        assert!((1..=u16::MAX).all(|id| map.get(&id) == Some(&id)));
    }
}
