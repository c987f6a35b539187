//! Echo suppression: the copies another relay sends back.
//!
//! Two relays on one segment, each listening on the port the other
//! broadcasts to, would bounce every datagram between them forever (capped
//! only by the rate limit). The relay therefore remembers a fingerprint of
//! every datagram it relayed, with the sender it came from, for a short
//! window. The same content arriving within the window is a copy coming
//! back, and is dropped, with one exception: from the *same* sender, on a
//! port the relay does not send to, it is a client retransmitting, and is
//! relayed as usual. (A sender on a port the relay sends to receives the
//! relay's output: it may be another relay, and what it "retransmits" may
//! be our own copy. Without this rule, two relays that once missed the
//! window on a loaded machine would take each other for retransmitting
//! clients and bounce the datagram forever.)
//!
//! The fingerprint ignores leading `[ip:port] ` tags, so a copy that another
//! relay prefixed with `prefix_sender` is still recognised. The price: two
//! different senders sending byte-identical datagrams within the window get
//! the second one dropped as an echo. Keep the window short (the default,
//! 500 ms, is many round trips on any LAN) or set it to 0 to turn this off.

use std::net::SocketAddr;

use crate::fingerprint::FingerprintKey;

/// Fingerprints per set: a set's keys and expiries fill one cache line.
const WAYS: usize = 4;

/// One set of the fingerprint table: a lookup reads this one cache line.
/// A slot whose expiry has passed (or is 0) is free.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Set {
    keys: [u64; WAYS],
    expiry: [u64; WAYS],
}

/// Fingerprints of recently relayed datagrams, in a fixed set-associative
/// table: a fingerprint (keyed, see [`crate::fingerprint`], so nobody can aim
/// datagrams at one set) picks its set by its low bits, and a new one takes the slot
/// of the set that expires first (a free one if any). One datagram costs one
/// cache line to look up and record, with no allocation and no sweep.
#[derive(Debug)]
pub(crate) struct EchoFilter {
    window_ms: u64,
    /// `sets.len() - 1` (a power of two less one).
    mask: usize,
    sets: Vec<Set>,
    /// The sender of slot `set * WAYS + way`, read only on a match.
    senders: Vec<SocketAddr>,
    /// Keyed randomly per process, so nobody can craft colliding datagrams.
    key: FingerprintKey,
    /// The ports the relay sends to: senders there may be relays.
    relay_ports: Vec<u16>,
}

/// The datagram without leading `[ip:port] ` tags.
pub(crate) fn strip_tags(mut data: &[u8]) -> &[u8] {
    while data.first() == Some(&b'[') {
        // The longest tag is an IPv6 address with a scope id and a port.
        let head = &data[..data.len().min(72)];
        let Some(end) = head.windows(2).position(|w| w == b"] ") else {
            break;
        };
        let inner = &data[1..end];
        let is_addr = std::str::from_utf8(inner)
            .ok()
            .is_some_and(|s| s.parse::<SocketAddr>().is_ok());
        if !is_addr {
            break;
        }
        data = &data[end + 2..];
    }
    data
}

impl EchoFilter {
    /// Remembers about `capacity` datagrams (rounded up to a power of two,
    /// at least one set) for `window_ms` each (0: off, nothing allocated);
    /// `relay_ports` are the ports the relay sends to.
    pub(crate) fn new(window_ms: u64, capacity: usize, relay_ports: Vec<u16>) -> EchoFilter {
        let sets = if window_ms == 0 {
            0
        } else {
            capacity.div_ceil(WAYS).max(1).next_power_of_two()
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        EchoFilter {
            window_ms,
            mask: sets.saturating_sub(1),
            sets: vec![Set::default(); sets],
            senders: vec![unspecified; sets * WAYS],
            key: FingerprintKey::random(),
            relay_ports,
        }
    }

    /// The fingerprint of `data`, taken once per datagram and handed to
    /// [`EchoFilter::is_echo_key`] and [`EchoFilter::record_key`]; `None`
    /// when the filter is off.
    pub(crate) fn key(&self, data: &[u8]) -> Option<u64> {
        (self.window_ms != 0).then(|| self.key.hash(strip_tags(data)))
    }

    /// Whether `data` from `from` is a copy of something relayed recently.
    #[cfg(test)]
    pub(crate) fn is_echo(&mut self, data: &[u8], from: SocketAddr, now_ms: u64) -> bool {
        let key = self.key(data);
        self.is_echo_key(key, from, now_ms)
    }

    /// The set of `key` and the way holding it unexpired, if any.
    fn find(&self, key: u64, now_ms: u64) -> (usize, Option<usize>) {
        let set = (key as usize) & self.mask;
        let s = &self.sets[set];
        let way = (0..WAYS).find(|&w| s.keys[w] == key && s.expiry[w] > now_ms);
        (set, way)
    }

    /// [`EchoFilter::is_echo`] for a datagram whose [`EchoFilter::key`] is `key`.
    pub(crate) fn is_echo_key(&mut self, key: Option<u64>, from: SocketAddr, now_ms: u64) -> bool {
        let Some(key) = key else {
            return false;
        };
        match self.find(key, now_ms) {
            (set, Some(way)) => {
                let sender = self.senders[set * WAYS + way];
                let retransmission = sender == from && !self.relay_ports.contains(&from.port());
                !retransmission
            }
            _ => false,
        }
    }

    /// Remembers that `data` from `from` was relayed (or sent) now.
    pub(crate) fn record(&mut self, data: &[u8], from: SocketAddr, now_ms: u64) {
        let key = self.key(data);
        self.record_key(key, from, now_ms);
    }

    /// [`EchoFilter::record`] for a datagram whose [`EchoFilter::key`] is `key`.
    pub(crate) fn record_key(&mut self, key: Option<u64>, from: SocketAddr, now_ms: u64) {
        let Some(key) = key else {
            return;
        };
        let (set, found) = self.find(key, now_ms);
        let s = &mut self.sets[set];
        // Recorded again: the slot it holds; else the one expiring first
        // (expired and free slots have the smallest expiries).
        let way = found.unwrap_or_else(|| {
            (0..WAYS)
                .min_by_key(|&w| s.expiry[w])
                .expect("a set has slots")
        });
        s.keys[way] = key;
        s.expiry[way] = now_ms + self.window_ms;
        self.senders[set * WAYS + way] = from;
    }

    /// Fingerprints held and not expired at `now_ms`.
    #[cfg(test)]
    pub(crate) fn len(&self, now_ms: u64) -> usize {
        self.sets
            .iter()
            .map(|s| s.expiry.iter().filter(|&&e| e > now_ms).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tags_are_stripped_only_when_they_are_addresses() {
        assert_eq!(strip_tags(b"[1.2.3.4:5] hi"), b"hi");
        assert_eq!(strip_tags(b"[1.2.3.4:5] [[::1]:7] hi"), b"hi");
        assert_eq!(strip_tags(b"[note] hi"), b"[note] hi");
        assert_eq!(strip_tags(b"[1.2.3.4:5]hi"), b"[1.2.3.4:5]hi");
        assert_eq!(strip_tags(b"["), b"[");
        assert_eq!(strip_tags(b"[1.2.3.4:5] "), b"");
        assert_eq!(strip_tags(b""), b"");
    }

    #[test]
    fn a_copy_from_another_sender_is_an_echo() {
        let mut f = EchoFilter::new(500, 16, vec![7003]);
        let client = a("198.18.0.100:4000");
        let relay = a("198.18.0.2:7003");
        assert!(!f.is_echo(b"X", client, 0));
        f.record(b"X", client, 0);
        assert!(f.is_echo(b"X", relay, 10), "the other relay's copy");
        assert!(
            f.is_echo(b"[198.18.0.100:4000] X", relay, 10),
            "a prefixed copy"
        );
        assert!(
            !f.is_echo(b"X", client, 10),
            "a retransmission by the sender"
        );
        assert!(!f.is_echo(b"Y", relay, 10), "other content");
        assert!(!f.is_echo(b"X", relay, 500), "the window has passed");
        assert_eq!(f.len(500), 0, "expired");
    }

    #[test]
    fn a_sender_on_a_port_we_send_to_never_retransmits() {
        // Relays A and B once missed the window: A relayed X again for B.
        // B's copy of that is not a retransmission but the loop going on.
        let mut f = EchoFilter::new(500, 16, vec![7003]);
        let relay_b = a("198.18.0.2:7003");
        f.record(b"X", relay_b, 0);
        assert!(f.is_echo(b"X", relay_b, 10));
        assert!(
            !f.is_echo(b"X", relay_b, 600),
            "outside the window it is new"
        );
    }

    #[test]
    fn zero_window_is_off() {
        let mut f = EchoFilter::new(0, 16, vec![]);
        f.record(b"X", a("1.1.1.1:1"), 0);
        assert!(!f.is_echo(b"X", a("2.2.2.2:2"), 0));
        assert_eq!(f.len(0), 0);
        assert!(f.sets.is_empty(), "nothing allocated");
    }

    #[test]
    fn bounded_and_rerecording_keeps_the_latest() {
        let mut f = EchoFilter::new(1000, 4, vec![]);
        let s = a("1.1.1.1:1");
        for i in 0..100u32 {
            f.record(&i.to_be_bytes(), s, i.into());
            assert!(f.len(0) <= 4, "bounded");
            assert!(
                f.is_echo(&i.to_be_bytes(), a("2.2.2.2:2"), i.into()),
                "the latest is remembered"
            );
        }
        // One set of four: the four latest are kept, the older ones gone.
        for i in 0..100u32 {
            let kept = f.is_echo(&i.to_be_bytes(), a("2.2.2.2:2"), 100);
            assert_eq!(kept, i >= 96, "datagram {i}");
        }

        // Recorded at 0 and again at 600: still remembered at 1200.
        let mut f = EchoFilter::new(1000, 16, vec![]);
        f.record(b"X", s, 0);
        f.record(b"X", s, 600);
        assert_eq!(f.len(600), 1, "recorded again in its own slot");
        assert!(f.is_echo(b"X", a("2.2.2.2:2"), 1200));
        assert!(!f.is_echo(b"X", a("2.2.2.2:2"), 1600));
    }

    #[test]
    fn a_full_table_replaces_what_expires_first_in_the_set() {
        // 8192 slots, 20000 datagrams 1 ms apart with a 60 s window: each
        // set keeps its four latest, and the latest datagrams are all kept.
        let mut f = EchoFilter::new(60_000, 8192, vec![]);
        let s = a("1.1.1.1:1");
        for i in 0..20_000u32 {
            f.record(&i.to_be_bytes(), s, i.into());
        }
        assert_eq!(f.sets.len() * WAYS, 8192);
        assert!(f.len(20_000) <= 8192);
        let recent = (19_900..20_000u32)
            .filter(|i| f.is_echo(&i.to_be_bytes(), a("2.2.2.2:2"), 20_000))
            .count();
        assert!(recent >= 99, "{recent} of the last 100 kept");
        let oldest = (0..100u32)
            .filter(|i| f.is_echo(&i.to_be_bytes(), a("2.2.2.2:2"), 20_000))
            .count();
        // A set that took fewer than four of the 19,900 later ones still
        // holds an old one (about 1 in 75 sets).
        assert!(oldest <= 10, "{oldest} of the first 100 kept");
    }
}
