//! Per-source token buckets in a bounded table.
//!
//! Each source address gets a bucket of `burst` tokens that refills at
//! `rate` tokens per second; relaying a datagram takes one token. The table
//! holds at most `max_sources` buckets. A bucket that has been idle long
//! enough to be full again carries no information (a fresh bucket is full
//! too), so [`Limiter::sweep`] drops those without weakening the limit. When
//! the table is full of active sources, newcomers share one overflow bucket:
//! a flood from many (possibly spoofed) addresses is then capped at the rate
//! of one source, instead of evicting buckets that are still draining.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::sip::{SipBuild, SipKey};

/// Tokens are counted in thousandths, so refill needs no floating point:
/// `rate` tokens per second is `rate` milli-tokens per millisecond.
const MILLI: u64 = 1000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Milli-tokens available at `last_ms`.
    milli: u64,
    last_ms: u64,
}

impl Bucket {
    fn full(burst: u64, now_ms: u64) -> Bucket {
        Bucket {
            milli: burst * MILLI,
            last_ms: now_ms,
        }
    }

    /// Milli-tokens at `now_ms` (refilled, capped at the burst).
    fn level(&self, rate: u64, burst: u64, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.milli
            .saturating_add(elapsed.saturating_mul(rate))
            .min(burst * MILLI)
    }

    fn take(&mut self, rate: u64, burst: u64, now_ms: u64) -> bool {
        self.milli = self.level(rate, burst, now_ms);
        self.last_ms = self.last_ms.max(now_ms);
        if self.milli >= MILLI {
            self.milli -= MILLI;
            true
        } else {
            false
        }
    }
}

/// Token buckets keyed by source address.
#[derive(Debug)]
pub(crate) struct Limiter {
    rate: u64,
    burst: u64,
    max_sources: usize,
    /// Each tracked source's index in `buckets`. Keyed randomly per process
    /// (senders choose their addresses, so they must not be able to aim
    /// them at one bucket of the map).
    table: HashMap<IpAddr, usize, SipBuild>,
    /// The tracked sources' buckets, each with its source.
    buckets: Vec<(IpAddr, Bucket)>,
    /// The last source [`Limiter::allow`] found or added, and its index: a
    /// run of datagrams from one sender (a burst, a busy client) hashes its
    /// address once, not once per datagram.
    last: Option<(IpAddr, usize)>,
    /// Shared by sources that found the table full.
    overflow: Bucket,
    /// Datagrams that went through the overflow bucket.
    pub(crate) overflowed: u64,
}

impl Limiter {
    /// `rate` tokens per second, buckets of `burst`, at most `max_sources` tracked.
    pub(crate) fn new(rate: u64, burst: u64, max_sources: usize) -> Limiter {
        Limiter {
            rate,
            burst,
            max_sources,
            table: HashMap::with_hasher(SipBuild(SipKey::random())),
            buckets: Vec::new(),
            last: None,
            overflow: Bucket::full(burst, 0),
            overflowed: 0,
        }
    }

    /// Takes a token for `source`: `true` if the datagram may be relayed.
    pub(crate) fn allow(&mut self, source: IpAddr, now_ms: u64) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        let found = match self.last {
            Some((last, i)) if last == source => Some(i),
            _ => self.table.get(&source).copied(),
        };
        if let Some(i) = found {
            self.last = Some((source, i));
            return self.buckets[i].1.take(rate, burst, now_ms);
        }
        if self.buckets.len() < self.max_sources {
            let mut b = Bucket::full(burst, now_ms);
            let ok = b.take(rate, burst, now_ms);
            let i = self.buckets.len();
            self.buckets.push((source, b));
            self.table.insert(source, i);
            self.last = Some((source, i));
            return ok;
        }
        self.overflowed += 1;
        self.overflow.take(rate, burst, now_ms)
    }

    /// Forgets every source whose bucket is full again.
    pub(crate) fn sweep(&mut self, now_ms: u64) {
        let (rate, burst) = (self.rate, self.burst);
        self.last = None;
        let mut i = 0;
        while i < self.buckets.len() {
            if self.buckets[i].1.level(rate, burst, now_ms) < burst * MILLI {
                i += 1;
                continue;
            }
            let (gone, _) = self.buckets.swap_remove(i);
            self.table.remove(&gone);
            // The last bucket took the freed place: its entry follows it.
            if let Some((moved, _)) = self.buckets.get(i) {
                *self
                    .table
                    .get_mut(moved)
                    .expect("every bucket is in the table") = i;
            }
        }
    }

    /// Sources tracked one by one.
    pub(crate) fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    fn relayed(l: &mut Limiter, src: IpAddr, n: usize, now_ms: u64) -> usize {
        (0..n).filter(|_| l.allow(src, now_ms)).count()
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut l = Limiter::new(100, 200, 16);
        assert_eq!(relayed(&mut l, ip(1), 1000, 0), 200, "the burst");
        assert_eq!(relayed(&mut l, ip(1), 1000, 0), 0, "empty");
        assert_eq!(
            relayed(&mut l, ip(1), 1000, 1000),
            100,
            "one second refills 100"
        );
        assert_eq!(
            relayed(&mut l, ip(1), 1000, 1005),
            0,
            "5 ms refill half a token"
        );
        assert_eq!(relayed(&mut l, ip(1), 1000, 1010), 1, "10 ms is one token");
        assert_eq!(
            relayed(&mut l, ip(1), 1000, 100_000),
            200,
            "capped at the burst"
        );
        // Another source has its own bucket.
        assert_eq!(relayed(&mut l, ip(2), 1000, 100_000), 200);
    }

    #[test]
    fn steady_flood_is_capped_at_burst_plus_rate() {
        // 20,000 datagrams spread over 2 s from one source.
        let mut l = Limiter::new(100, 200, 16);
        let n = (0..20_000u64).filter(|i| l.allow(ip(1), i / 10)).count();
        assert!((399..=401).contains(&n), "{n}");
    }

    #[test]
    fn a_clock_that_goes_backwards_grants_nothing() {
        let mut l = Limiter::new(100, 1, 16);
        assert!(l.allow(ip(1), 5000));
        assert!(!l.allow(ip(1), 1000));
        assert!(!l.allow(ip(1), 5000));
        assert!(l.allow(ip(1), 5010));
    }

    #[test]
    fn the_table_is_bounded_and_newcomers_share_the_overflow_bucket() {
        let mut l = Limiter::new(10, 5, 3);
        for i in 1..=3 {
            assert!(l.allow(ip(i), 0));
        }
        assert_eq!(l.sources(), 3);
        // A spoofed flood from 1,000 new addresses gets one bucket's worth.
        let n = (10..250u8)
            .flat_map(|a| (0..4).map(move |b| IpAddr::from([10, b, 0, a])))
            .filter(|&src| l.allow(src, 0))
            .count();
        assert_eq!(n, 5);
        assert_eq!(l.sources(), 3, "never more than max_sources");
        assert_eq!(l.overflowed, 960);
        // Tracked sources keep their own buckets meanwhile.
        assert!(l.allow(ip(1), 0));
    }

    #[test]
    fn sweep_forgets_only_refilled_sources() {
        let mut l = Limiter::new(10, 5, 3);
        assert!(l.allow(ip(1), 0)); // 4 left: full again after 100 ms
        assert_eq!(relayed(&mut l, ip(2), 5, 0), 5); // empty: full after 500 ms
        l.sweep(100);
        assert_eq!(l.sources(), 1, "ip(1) refilled, ip(2) not");
        // Forgetting ip(1) lost nothing: it gets exactly a full burst.
        assert_eq!(relayed(&mut l, ip(1), 10, 100), 5);
        assert_eq!(relayed(&mut l, ip(2), 10, 100), 1, "ip(2) still limited");
        l.sweep(10_000);
        assert_eq!(l.sources(), 0);
    }

    #[test]
    fn a_sweep_keeps_every_remaining_bucket_with_its_source() {
        // ip(1) full again by the sweep; ip(2) and ip(3) not, at different
        // levels. Sweeping ip(1) moves ip(3) into its place.
        let mut l = Limiter::new(10, 5, 8);
        assert!(l.allow(ip(1), 0));
        assert_eq!(relayed(&mut l, ip(2), 2, 0), 2);
        assert_eq!(relayed(&mut l, ip(3), 5, 0), 5);
        l.sweep(100);
        assert_eq!(l.sources(), 2);
        // At 100 ms ip(2) has 3 + 1 tokens, ip(3) 0 + 1: asked in an order
        // that defeats the last-source shortcut, each gets its own.
        assert!(l.allow(ip(3), 100), "ip(3)'s one token");
        assert!(l.allow(ip(2), 100));
        assert!(!l.allow(ip(3), 100), "ip(3) is empty again");
        assert_eq!(relayed(&mut l, ip(2), 10, 100), 3, "ip(2)'s other three");
        // A source swept away comes back with a fresh bucket, and the
        // table still holds exactly one bucket per source.
        assert_eq!(relayed(&mut l, ip(1), 10, 100), 5);
        assert_eq!(l.sources(), 3);
        assert_eq!(l.table.len(), l.buckets.len());
        for (i, (src, _)) in l.buckets.iter().enumerate() {
            assert_eq!(l.table[src], i);
        }
    }
}
