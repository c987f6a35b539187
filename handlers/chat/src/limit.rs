//! The per-sender rate limit: two token buckets, one counting lines and one
//! counting bytes. Pure arithmetic on a millisecond clock (loopd's
//! `now_ms`), so every rule is unit-tested without a running loopd.
//!
//! Tokens are kept in thousandths, so a refill of `rate` tokens a second is
//! exactly `rate` thousandths a millisecond: no floating point, no drift.

/// One bucket's setting: `per_s` tokens a second (0: no limit), up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) per_s: u64,
    pub(crate) burst: u64,
}

impl Rate {
    fn unlimited(self) -> bool {
        self.per_s == 0
    }
}

/// The two settings of a chat instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) lines: Rate,
    pub(crate) bytes: Rate,
}

impl Limits {
    /// Whether either bucket limits anything.
    pub(crate) fn enabled(&self) -> bool {
        !self.lines.unlimited() || !self.bytes.unlimited()
    }
}

/// One bucket's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    /// Tokens, in thousandths.
    milli: u64,
    /// When `milli` was last brought up to date.
    at_ms: u64,
}

impl Bucket {
    fn full(rate: Rate, now: u64) -> Bucket {
        Bucket {
            milli: rate.burst.saturating_mul(1000),
            at_ms: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: u64) {
        // A clock that goes backwards refills nothing.
        let elapsed = now.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(rate.per_s))
            .min(rate.burst.saturating_mul(1000));
    }

    /// Milliseconds until `cost` tokens are there (0: now).
    fn wait_ms(&self, rate: Rate, cost: u64) -> u64 {
        let need = cost.saturating_mul(1000);
        if rate.unlimited() || self.milli >= need {
            0
        } else {
            (need - self.milli).div_ceil(rate.per_s)
        }
    }

    fn take(&mut self, rate: Rate, cost: u64) {
        if !rate.unlimited() {
            self.milli -= cost.saturating_mul(1000).min(self.milli);
        }
    }
}

/// One sender's buckets. They start full: a new client may send a burst
/// at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limiter {
    lines: Bucket,
    bytes: Bucket,
}

impl Limiter {
    pub(crate) fn new(limits: &Limits, now: u64) -> Limiter {
        Limiter {
            lines: Bucket::full(limits.lines, now),
            bytes: Bucket::full(limits.bytes, now),
        }
    }

    /// Milliseconds until one line of `len` bytes may go (0: now).
    pub(crate) fn wait_ms(&mut self, limits: &Limits, len: usize, now: u64) -> u64 {
        self.lines.refill(limits.lines, now);
        self.bytes.refill(limits.bytes, now);
        let len = len as u64;
        self.lines
            .wait_ms(limits.lines, 1)
            .max(self.bytes.wait_ms(limits.bytes, len))
    }

    /// Takes one line of `len` bytes whatever the buckets hold (each at
    /// least empties; a line longer than the byte burst costs the burst).
    /// For a line refused as too long: its bytes were sent all the same.
    pub(crate) fn charge(&mut self, limits: &Limits, len: usize, now: u64) {
        self.lines.refill(limits.lines, now);
        self.bytes.refill(limits.bytes, now);
        self.lines.take(limits.lines, 1);
        self.bytes
            .take(limits.bytes, (len as u64).min(limits.bytes.burst));
    }

    /// Takes one line of `len` bytes if both buckets allow it now; returns
    /// whether it did (if not, nothing is taken).
    pub(crate) fn try_take(&mut self, limits: &Limits, len: usize, now: u64) -> bool {
        if self.wait_ms(limits, len, now) > 0 {
            return false;
        }
        self.lines.take(limits.lines, 1);
        self.bytes.take(limits.bytes, len as u64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lines: (u64, u64), bytes: (u64, u64)) -> Limits {
        Limits {
            lines: Rate {
                per_s: lines.0,
                burst: lines.1,
            },
            bytes: Rate {
                per_s: bytes.0,
                burst: bytes.1,
            },
        }
    }

    #[test]
    fn a_charge_takes_a_line_whatever_the_buckets_hold() {
        // 10 lines and 100 bytes a second, bursts of 2 lines and 200 bytes.
        let l = limits((10, 2), (100, 200));
        let mut s = Limiter::new(&l, 0);
        // A line far over the byte burst costs the burst, no more.
        s.charge(&l, 1_000_000, 0);
        assert_eq!(s.wait_ms(&l, 1, 0), 10, "one byte refills in 10 ms");
        assert_eq!(s.wait_ms(&l, 200, 0), 2_000);
        // Charged on empty buckets: they stay empty, not below.
        s.charge(&l, 5, 0);
        s.charge(&l, 5, 0);
        assert_eq!(s.wait_ms(&l, 1, 0), 100, "a line refills in 100 ms");
        assert!(s.try_take(&l, 1, 2_000));
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_applies() {
        let l = limits((10, 20), (0, 1));
        let mut s = Limiter::new(&l, 1_000);
        for i in 0..20 {
            assert!(s.try_take(&l, 5, 1_000), "line {i} of the burst");
        }
        assert!(!s.try_take(&l, 5, 1_000));
        // One line per 100 ms.
        assert_eq!(s.wait_ms(&l, 5, 1_000), 100);
        assert_eq!(s.wait_ms(&l, 5, 1_050), 50);
        assert!(!s.try_take(&l, 5, 1_099));
        assert!(s.try_take(&l, 5, 1_100));
        assert!(!s.try_take(&l, 5, 1_100));
        // A second of silence gives 10 lines back, never more than the burst.
        let mut n = 0;
        while s.try_take(&l, 5, 2_100) {
            n += 1;
        }
        assert_eq!(n, 10);
        let mut n = 0;
        while s.try_take(&l, 5, 100_000) {
            n += 1;
        }
        assert_eq!(n, 20);
    }

    #[test]
    fn bytes_are_limited_on_their_own() {
        let l = limits((0, 1), (1000, 3000));
        let mut s = Limiter::new(&l, 0);
        assert!(s.try_take(&l, 2000, 0));
        assert!(!s.try_take(&l, 2000, 0), "1000 bytes left");
        assert_eq!(s.wait_ms(&l, 2000, 0), 1000);
        assert!(s.try_take(&l, 1000, 0));
        assert_eq!(s.wait_ms(&l, 1, 0), 1, "a byte a millisecond");
        assert!(s.try_take(&l, 2000, 2000));
        // Unlimited lines: any number of empty... well, zero-byte lines.
        for _ in 0..10_000 {
            assert!(s.try_take(&l, 0, 2000));
        }
    }

    #[test]
    fn both_buckets_must_allow_a_line_and_a_refusal_takes_nothing() {
        let l = limits((1, 2), (100, 100));
        let mut s = Limiter::new(&l, 0);
        assert!(s.try_take(&l, 100, 0));
        // One line token left, but no bytes: refused, and the line token
        // is still there.
        assert!(!s.try_take(&l, 1, 0));
        assert!(s.try_take(&l, 0, 0));
        assert!(!s.try_take(&l, 0, 0), "no line tokens");
        assert_eq!(s.wait_ms(&l, 100, 0), 1000);
    }

    #[test]
    fn nothing_limited_never_waits() {
        let l = limits((0, 1), (0, 1));
        assert!(!l.enabled());
        let mut s = Limiter::new(&l, 0);
        for _ in 0..100_000 {
            assert!(s.try_take(&l, 1 << 20, 0));
        }
    }

    #[test]
    fn extreme_values_saturate_instead_of_overflowing() {
        let l = limits((1_000_000, 1_000_000), (1 << 30, 1 << 30));
        let mut s = Limiter::new(&l, 0);
        assert!(s.try_take(&l, 1 << 30, u64::MAX));
        assert!(!s.try_take(&l, 1, u64::MAX), "the byte burst is spent");
        assert!(s.try_take(&l, 0, u64::MAX));
        assert_eq!(s.wait_ms(&l, 1 << 30, u64::MAX), 1000);
        // The clock going backwards refills nothing and takes nothing.
        let mut t = Limiter::new(&limits((1, 1), (0, 1)), 5_000);
        let l1 = limits((1, 1), (0, 1));
        assert!(t.try_take(&l1, 0, 5_000));
        assert!(!t.try_take(&l1, 0, 0));
        assert_eq!(t.wait_ms(&l1, 0, 0), 1000);
        assert!(t.try_take(&l1, 0, 6_000));
    }
}
