//! SipHash-1-3 (the algorithm behind std's `RandomState` hasher) over a
//! whole byte slice at once, for the echo fingerprints' last step and the
//! rate limiter's table.
//!
//! std's hasher is fed through `Hasher::write`, which buffers and handles
//! tails byte by byte on every call: about 700 instructions for a 64-byte
//! input. This one reads the slice as little-endian 64-bit words in one
//! loop, about a third of that, with the same keyed strength (the keys come
//! from a `RandomState`, so they are random per process and nobody can aim
//! collisions at a fingerprint).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// A SipHash key: two random 64-bit halves (never printed: `Debug` shows
/// none of it).
#[derive(Clone, Copy)]
pub(crate) struct SipKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for SipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipKey").finish_non_exhaustive()
    }
}

impl SipKey {
    /// A key random to this process: two outputs of a randomly keyed
    /// `RandomState`, unpredictable without its keys.
    pub(crate) fn random() -> SipKey {
        let rs = RandomState::new();
        SipKey {
            k0: rs.hash_one(0x6c6f_6f70_645f_6b30_u64),
            k1: rs.hash_one(0x6c6f_6f70_645f_6b31_u64),
        }
    }

    /// SipHash-1-3 of `data` (one compression round per word, three
    /// finalization rounds).
    pub(crate) fn hash(&self, data: &[u8]) -> u64 {
        sip::<1, 3>(self.k0, self.k1, data)
    }
}

/// A `BuildHasher` for maps keyed by small values (source addresses): the
/// bytes a key writes are gathered, then hashed once with [`SipKey::hash`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SipBuild(pub(crate) SipKey);

impl std::hash::BuildHasher for SipBuild {
    type Hasher = SipHasher;

    fn build_hasher(&self) -> SipHasher {
        SipHasher {
            key: self.0,
            buf: [0; 32],
            len: 0,
            folded: 0,
        }
    }
}

/// The hasher of [`SipBuild`]: up to 32 bytes kept inline (an IP address
/// writes 12 or 24), longer input folded in 32 bytes at a time.
#[derive(Debug)]
pub(crate) struct SipHasher {
    key: SipKey,
    buf: [u8; 32],
    len: usize,
    folded: u64,
}

impl std::hash::Hasher for SipHasher {
    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.len == self.buf.len() {
                self.folded = self.folded.rotate_left(17) ^ self.key.hash(&self.buf);
                self.len = 0;
            }
            let n = bytes.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    fn finish(&self) -> u64 {
        self.folded ^ self.key.hash(&self.buf[..self.len])
    }
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-C-D of `data` with the key (`k0`, `k1`), as in the SipHash
/// paper: the last word holds the remaining bytes and the length's low byte
/// in its top byte.
fn sip<const C: usize, const D: usize>(k0: u64, k1: u64, data: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let m = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        v[3] ^= m;
        for _ in 0..C {
            round(&mut v);
        }
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let tail = words.remainder();
    last[..tail.len()].copy_from_slice(tail);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    for _ in 0..C {
        round(&mut v);
    }
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..D {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn the_rounds_are_siphash_as_std_computes_it() {
        // std's only stable SipHash with chosen keys is SipHash-2-4: the same
        // rounds, counted differently; check them against it.
        use std::hash::{Hasher, SipHasher};
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        for (k0, k1) in [
            (0, 0),
            (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908),
            (u64::MAX, 3),
        ] {
            for len in (0..=70).chain([255, 256, 257, 300]) {
                let mut h = SipHasher::new_with_keys(k0, k1);
                h.write(&data[..len]);
                assert_eq!(
                    sip::<2, 4>(k0, k1, &data[..len]),
                    h.finish(),
                    "length {len}"
                );
            }
        }
    }

    #[test]
    fn the_paper_s_test_vector() {
        // SipHash-2-4, key 00..0f, message 00..0e (the SipHash paper, appendix A).
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(
            sip::<2, 4>(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908, &msg),
            0xa129_ca61_49be_45e5
        );
    }

    #[test]
    fn the_map_hasher_hashes_what_was_written_whatever_the_pieces() {
        use std::hash::{BuildHasher, Hasher};
        let b = SipBuild(SipKey::random());
        let whole = |bytes: &[u8]| {
            let mut h = b.build_hasher();
            h.write(bytes);
            h.finish()
        };
        let data: Vec<u8> = (0..100u8).collect();
        for len in [0, 5, 31, 32, 33, 64, 100] {
            let mut h = b.build_hasher();
            for piece in data[..len].chunks(7) {
                h.write(piece);
            }
            assert_eq!(h.finish(), whole(&data[..len]), "length {len}");
        }
        let ip = |s: &str| b.hash_one(s.parse::<std::net::IpAddr>().unwrap());
        assert_eq!(ip("198.18.0.1"), ip("198.18.0.1"));
        assert_ne!(ip("198.18.0.1"), ip("198.18.0.2"));
        assert_ne!(ip("::1"), ip("::2"));
        assert_ne!(b.hash_one(1u8), whole(&[]));
    }

    #[test]
    fn keys_differ_and_one_byte_changes_the_hash() {
        let (a, b) = (SipKey::random(), SipKey::random());
        assert_ne!((a.k0, a.k1), (b.k0, b.k1));
        assert_ne!(a.k0, a.k1);
        let x = a.hash(b"hello world, a datagram");
        assert_eq!(x, a.hash(b"hello world, a datagram"));
        assert_ne!(x, a.hash(b"hello world, a datagrap"));
        assert_ne!(x, b.hash(b"hello world, a datagram"));
        assert_ne!(a.hash(b""), a.hash(b"\0"), "the length counts");
    }
}
