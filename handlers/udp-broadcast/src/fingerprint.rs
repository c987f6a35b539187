//! Datagram fingerprints for echo suppression: NH, then SipHash.
//!
//! Every relayed datagram is fingerprinted whole, so the fingerprint's cost
//! per byte is paid on every byte relayed: SipHash-1-3 alone takes about
//! 2.3 instructions a byte (2,400 for a 1 KiB datagram). NH, the first
//! layer of UMAC (Black, Halevi, Krawczyk, Krovetz, Rogaway, "UMAC: Fast and
//! Secure Message Authentication", CRYPTO '99; RFC 4418), takes one 64×64
//! bit multiply per 16 bytes, about a quarter of that:
//!
//! ```text
//! NH(K, M) = Σ (m[2i] + k[2i] mod 2^64) · (m[2i+1] + k[2i+1] mod 2^64)   mod 2^128
//! ```
//!
//! over a block's little-endian 64-bit words (the block zero-padded to a
//! whole 16 bytes). With a random key, two different blocks of one length
//! give the same NH with probability at most 2^-64 (the paper's Theorem 1),
//! whatever the blocks. A datagram's blocks of [`BLOCK`] bytes are each
//! reduced by NH under one key; the block sums and the datagram's length
//! then go through SipHash-1-3 under a second key, which turns them into a
//! 64-bit fingerprint nobody can predict. Two different datagrams collide
//! only if every block sum agrees (at most 2^-64 for the first block that
//! differs, or impossible when the lengths differ) or SipHash collides on
//! different input (about 2^-64): the keys are random per process and no
//! fingerprint ever leaves it, so nobody can aim a datagram at another's
//! fingerprint.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::sip::SipKey;

/// Bytes per NH block: one key word per 8 bytes of it.
pub(crate) const BLOCK: usize = 1024;

/// Key word pairs: one per 16 bytes of a block.
const PAIRS: usize = BLOCK / 16;

/// Datagrams up to this long are fingerprinted with NH (every UDP datagram
/// is: IPv4's largest payload is 65,507 bytes); a longer slice, which no
/// datagram is, goes to SipHash whole.
const MAX_NH: usize = 64 * BLOCK;

/// The two random keys of a fingerprint (never printed: `Debug` shows none
/// of them).
pub(crate) struct FingerprintKey {
    nh: Box<[[u64; 2]; PAIRS]>,
    sip: SipKey,
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FingerprintKey").finish_non_exhaustive()
    }
}

impl FingerprintKey {
    /// A key random to this process.
    pub(crate) fn random() -> FingerprintKey {
        let rs = RandomState::new();
        let mut nh = Box::new([[0u64; 2]; PAIRS]);
        for (i, k) in nh.as_flattened_mut().iter_mut().enumerate() {
            *k = rs.hash_one((0x6c6f_6f70_646e_6800_u64, i));
        }
        FingerprintKey {
            nh,
            sip: SipKey::random(),
        }
    }

    /// The 64-bit fingerprint of `data`.
    pub(crate) fn hash(&self, data: &[u8]) -> u64 {
        if data.len() <= BLOCK {
            // One block, as most datagrams are: its sum, then the length.
            let mut last = [0u8; 24];
            last[..16].copy_from_slice(&nh(&self.nh, data).to_le_bytes());
            last[16..].copy_from_slice(&(data.len() as u64).to_le_bytes());
            return self.sip.hash(&last);
        }
        if data.len() > MAX_NH {
            return self.sip.hash(data);
        }
        // 16 bytes per block, then the length: at most 1,032 bytes.
        let mut sums = [0u8; 16 * (MAX_NH / BLOCK) + 8];
        let mut n = 0;
        for block in data.chunks(BLOCK) {
            sums[n..n + 16].copy_from_slice(&nh(&self.nh, block).to_le_bytes());
            n += 16;
        }
        sums[n..n + 8].copy_from_slice(&(data.len() as u64).to_le_bytes());
        self.sip.hash(&sums[..n + 8])
    }
}

fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// NH of one block of at most [`BLOCK`] bytes, zero-padded to 16 bytes.
#[inline]
fn nh(key: &[[u64; 2]; PAIRS], block: &[u8]) -> u128 {
    let pair = |m: &[u8], k: &[u64; 2]| {
        let a = word(&m[..8]).wrapping_add(k[0]);
        let b = word(&m[8..]).wrapping_add(k[1]);
        u128::from(a) * u128::from(b)
    };
    let full = block.len() / 16;
    let (body, tail) = block.split_at(full * 16);
    let mut sum = 0u128;
    for (m, k) in body.chunks_exact(16).zip(&key[..full]) {
        sum = sum.wrapping_add(pair(m, k));
    }
    if !tail.is_empty() {
        let mut last = [0u8; 16];
        last[..tail.len()].copy_from_slice(tail);
        sum = sum.wrapping_add(pair(&last, &key[full]));
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NH as the paper writes it: the block padded to whole 16 bytes, each
    /// pair of words with its key words added, multiplied, summed.
    fn nh_reference(key: &[u64], block: &[u8]) -> u128 {
        let mut padded = block.to_vec();
        padded.resize(block.len().div_ceil(16) * 16, 0);
        let m: Vec<u64> = padded.chunks(8).map(word).collect();
        (0..m.len() / 2).fold(0u128, |sum, i| {
            let a = m[2 * i].wrapping_add(key[2 * i]) as u128;
            let b = m[2 * i + 1].wrapping_add(key[2 * i + 1]) as u128;
            sum.wrapping_add(a * b)
        })
    }

    #[test]
    fn nh_is_the_papers_sum_of_products() {
        let k = FingerprintKey::random();
        let data: Vec<u8> = (0..BLOCK as u32).map(|i| (i * 131 + 17) as u8).collect();
        for len in (0..=40).chain([63, 64, 65, 500, 1008, 1009, 1023, BLOCK]) {
            assert_eq!(
                nh(&k.nh, &data[..len]),
                nh_reference(k.nh.as_flattened(), &data[..len]),
                "length {len}"
            );
        }
        // All-ones words with all-ones keys: the products wrap mod 2^128.
        let ones = [[u64::MAX; 2]; PAIRS];
        let block = [0xffu8; BLOCK];
        assert_eq!(nh(&ones, &block), nh_reference(ones.as_flattened(), &block));
    }

    #[test]
    fn every_byte_and_the_length_count() {
        let k = FingerprintKey::random();
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [
            1,
            15,
            16,
            17,
            64,
            1000,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2100,
            3000,
        ] {
            let d = &data[..len];
            let h = k.hash(d);
            let copy = d.to_vec();
            assert_eq!(h, k.hash(&copy), "the same bytes elsewhere, the same print");
            for at in [0, len / 2, len - 1] {
                let mut e = d.to_vec();
                e[at] ^= 1;
                assert_ne!(h, k.hash(&e), "length {len}, byte {at} flipped");
            }
            let mut longer = d.to_vec();
            longer.push(0);
            assert_ne!(h, k.hash(&longer), "length {len} and a zero more");
        }
        assert_ne!(k.hash(b""), k.hash(b"\0"));
        // The blocks are not interchangeable.
        let (a, b) = ([1u8; BLOCK], [2u8; BLOCK]);
        assert_ne!(k.hash(&[a, b].concat()), k.hash(&[b, a].concat()));
        // A slice longer than any datagram is still fingerprinted whole.
        let mut big = vec![5u8; MAX_NH + 1];
        let h = k.hash(&big);
        big[MAX_NH] = 6;
        assert_ne!(h, k.hash(&big));
    }

    #[test]
    fn keys_are_random_per_key() {
        let (a, b) = (FingerprintKey::random(), FingerprintKey::random());
        assert_ne!(a.nh[..], b.nh[..]);
        assert_ne!(a.nh[0][0], a.nh[0][1]);
        let d = b"hello world, a datagram";
        assert_ne!(a.hash(d), b.hash(d));
        assert_eq!(format!("{a:?}"), "FingerprintKey { .. }", "no key in a log");
    }
}
