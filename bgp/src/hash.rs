//! A fast hasher for RIB keys (prefixes are small integers; SipHash would dominate the cost).

use std::hash::{BuildHasherDefault, Hasher};

/// Hasher folding input words with a multiply and finishing with a 64-bit avalanche mix, so that
/// both the low bits (bucket index) and the high bits (control byte) depend on every input bit.
#[derive(Default, Clone, Copy)]
pub struct MixHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(K);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn finish(&self) -> u64 {
        // Finalizer of MurmurHash3 (public domain).
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// `BuildHasher` for [`MixHasher`].
pub type MixState = BuildHasherDefault<MixHasher>;

/// A `HashMap` using [`MixHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, MixState>;
