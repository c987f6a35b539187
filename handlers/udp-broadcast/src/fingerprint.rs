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
//!
//! On x86-64 with AVX2 (checked once, when the key is made) a block's NH is
//! the same construction over 32-bit words (the block zero-padded to a
//! whole 32 bytes), twice: the paper's Toeplitz
//! extension, NH-32 under the key and under the key shifted by two words,
//! each sum mod 2^64 (at most 2^-32 each, 2^-64 for the pair: the paper's
//! Theorem 2). Eight 32-bit products per 32 bytes take one `vpmuludq` for
//! four: both passes take 12 instructions per 32 bytes, 384 a kilobyte to
//! the scalar 64-bit NH's ~860. A process uses one of the two throughout (a fingerprint is
//! only ever compared with its own process's).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::sip::SipKey;

/// Bytes per NH block: one key word per 8 bytes of it.
pub(crate) const BLOCK: usize = 1024;

/// Key word pairs: one per 16 bytes of a block, and one more for the
/// Toeplitz shift of the AVX2 path.
const PAIRS: usize = BLOCK / 16 + 1;

/// Datagrams up to this long are fingerprinted with NH (every UDP datagram
/// is: IPv4's largest payload is 65,507 bytes); a longer slice, which no
/// datagram is, goes to SipHash whole.
const MAX_NH: usize = 64 * BLOCK;

/// The two random keys of a fingerprint (never printed: `Debug` shows none
/// of them).
pub(crate) struct FingerprintKey {
    nh: Box<[[u64; 2]; PAIRS]>,
    sip: SipKey,
    /// NH over 32-bit words with AVX2 (checked at [`FingerprintKey::random`]).
    avx2: bool,
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FingerprintKey").finish_non_exhaustive()
    }
}

impl FingerprintKey {
    /// A key random to this process.
    pub(crate) fn random() -> FingerprintKey {
        FingerprintKey::random_for(avx2::detected())
    }

    /// A random key, NH with AVX2 or not (`avx2` only where it is there).
    fn random_for(avx2: bool) -> FingerprintKey {
        let rs = RandomState::new();
        let mut nh = Box::new([[0u64; 2]; PAIRS]);
        for (i, k) in nh.as_flattened_mut().iter_mut().enumerate() {
            *k = rs.hash_one((0x6c6f_6f70_646e_6800_u64, i));
        }
        FingerprintKey {
            nh,
            sip: SipKey::random(),
            avx2,
        }
    }

    /// NH of one block of at most [`BLOCK`] bytes.
    #[inline]
    fn nh(&self, block: &[u8]) -> u128 {
        if self.avx2 {
            // SAFETY: `avx2` is set only where the CPU has AVX2
            // (`random_for`'s callers: `avx2::detected`, or tests that
            // checked it).
            unsafe { avx2::nh(&self.nh, block) }
        } else {
            nh(&self.nh, block)
        }
    }

    /// The 64-bit fingerprint of `data`.
    pub(crate) fn hash(&self, data: &[u8]) -> u64 {
        if data.len() <= BLOCK {
            // One block, as most datagrams are: its sum, then the length.
            let mut last = [0u8; 24];
            last[..16].copy_from_slice(&self.nh(data).to_le_bytes());
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
            sums[n..n + 16].copy_from_slice(&self.nh(block).to_le_bytes());
            n += 16;
        }
        sums[n..n + 8].copy_from_slice(&(data.len() as u64).to_le_bytes());
        self.sip.hash(&sums[..n + 8])
    }
}

fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// NH of one block of at most [`BLOCK`] bytes, zero-padded to 16 bytes,
/// over 64-bit words.
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

/// NH over 32-bit words, two Toeplitz passes, with AVX2 (x86-64 only).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_add_epi64, _mm256_loadu_si256, _mm256_mul_epu32,
        _mm256_setzero_si256, _mm256_srli_epi64, _mm256_storeu_si256,
    };

    use super::PAIRS;

    /// Whether this CPU has AVX2.
    pub(super) fn detected() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// Both passes over 32 bytes of message at `m` with the key at `k`
    /// (the second pass 8 bytes further on), added to `acc`.
    ///
    /// # Safety
    /// The CPU has AVX2; `m` and `k` can be read for 32 and 40 bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn round(acc: &mut [__m256i; 2], m: *const u8, k: *const u8) {
        // SAFETY: the caller lends 32 bytes at `m` and 40 at `k`;
        // unaligned loads.
        let (m, k1, k2) = unsafe {
            (
                _mm256_loadu_si256(m.cast()),
                _mm256_loadu_si256(k.cast()),
                _mm256_loadu_si256(k.add(8).cast()),
            )
        };
        for (acc, k) in acc.iter_mut().zip([k1, k2]) {
            // Words 2i and 2i+1, each plus its key word mod 2^32; the
            // even lanes times the odd ones, as 64-bit products.
            let a = _mm256_add_epi32(m, k);
            *acc = _mm256_add_epi64(*acc, _mm256_mul_epu32(a, _mm256_srli_epi64::<32>(a)));
        }
    }

    /// NH-32 of one block of at most [`super::BLOCK`] bytes (zero-padded to
    /// 32), under the key and the key two words on: the first pass's sum
    /// in the low 64 bits, the second's in the high.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn nh(key: &[[u64; 2]; PAIRS], block: &[u8]) -> u128 {
        debug_assert!(block.len() <= super::BLOCK);
        let k = key.as_ptr().cast::<u8>();
        let mut acc = [_mm256_setzero_si256(); 2];
        let full = block.len() / 32;
        for i in 0..full {
            // SAFETY: AVX2 (our caller's promise); 32 bytes of the block
            // at 32 i; 40 of the key at 32 i, since 32 i + 40 is at most
            // BLOCK + 8, within the key's (BLOCK / 16 + 1) · 16 bytes.
            unsafe { round(&mut acc, block.as_ptr().add(32 * i), k.add(32 * i)) };
        }
        let tail = &block[32 * full..];
        if !tail.is_empty() {
            let mut last = [0u8; 32];
            last[..tail.len()].copy_from_slice(tail);
            // SAFETY: as above, for the padded last 32 bytes (full < 32).
            unsafe { round(&mut acc, last.as_ptr(), k.add(32 * full)) };
        }
        let mut sums = [0u64; 2];
        for (sum, acc) in sums.iter_mut().zip(acc) {
            let mut lanes = [0u64; 4];
            // SAFETY: 32 writable bytes at `lanes`; an unaligned store.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
            *sum = lanes.iter().fold(0u64, |s, &l| s.wrapping_add(l));
        }
        u128::from(sums[0]) | (u128::from(sums[1]) << 64)
    }
}

/// Elsewhere: no AVX2 path.
#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    use super::PAIRS;

    pub(super) fn detected() -> bool {
        false
    }

    /// Never called: `detected` is false.
    ///
    /// # Safety
    /// None needed; it is [`super::nh`].
    pub(super) unsafe fn nh(key: &[[u64; 2]; PAIRS], block: &[u8]) -> u128 {
        super::nh(key, block)
    }
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

    /// NH-32 as the paper writes it, twice (the Toeplitz extension): the
    /// block's words 2i and 2i+1 each plus its key
    /// word mod 2^32, multiplied as 64-bit numbers, summed mod 2^64; the
    /// second pass with the key two words on. Padded to 32 bytes, as the
    /// AVX2 path pads (any fixed padding will do: the length is hashed).
    fn nh32_toeplitz_reference(key: &[u64], block: &[u8]) -> u128 {
        let kw: Vec<u32> = key
            .iter()
            .flat_map(|k| [*k as u32, (*k >> 32) as u32])
            .collect();
        let mut padded = block.to_vec();
        padded.resize(block.len().div_ceil(32) * 32, 0);
        let m: Vec<u32> = padded
            .chunks(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let pass = |shift: usize| {
            (0..m.len() / 2).fold(0u64, |sum, i| {
                let a = m[2 * i].wrapping_add(kw[2 * i + shift]) as u64;
                let b = m[2 * i + 1].wrapping_add(kw[2 * i + 1 + shift]) as u64;
                sum.wrapping_add(a * b)
            })
        };
        u128::from(pass(0)) | (u128::from(pass(2)) << 64)
    }

    #[test]
    fn nh_with_avx2_is_the_papers_nh32_twice() {
        if !avx2::detected() {
            eprintln!("NOTE: no AVX2 on this CPU: the AVX2 NH is not checked");
            return;
        }
        let k = FingerprintKey::random_for(true);
        let data: Vec<u8> = (0..BLOCK as u32).map(|i| (i * 131 + 17) as u8).collect();
        let nh = |key: &[[u64; 2]; PAIRS], block: &[u8]| {
            // SAFETY: AVX2 checked above.
            unsafe { avx2::nh(key, block) }
        };
        for len in (0..=72).chain([95, 96, 97, 500, 992, 993, 1000, 1023, BLOCK]) {
            assert_eq!(
                nh(&k.nh, &data[..len]),
                nh32_toeplitz_reference(k.nh.as_flattened(), &data[..len]),
                "length {len}"
            );
        }
        // All-ones words with all-ones keys: each sum wraps mod 2^32 and
        // mod 2^64.
        let ones = [[u64::MAX; 2]; PAIRS];
        let block = [0xffu8; BLOCK];
        assert_eq!(
            nh(&ones, &block),
            nh32_toeplitz_reference(ones.as_flattened(), &block)
        );
        assert_eq!(k.hash(&data), k.hash(&data.clone()));
    }

    /// Both NH paths where the CPU has both, else the scalar one.
    fn keys() -> Vec<FingerprintKey> {
        let mut keys = vec![FingerprintKey::random_for(false)];
        if avx2::detected() {
            keys.push(FingerprintKey::random_for(true));
        }
        keys
    }

    #[test]
    fn every_byte_and_the_length_count() {
        for k in keys() {
            every_byte_and_the_length_count_with(&k);
        }
    }

    fn every_byte_and_the_length_count_with(k: &FingerprintKey) {
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
