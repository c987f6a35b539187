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

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::SocketAddr;

/// Keys of `seen` are already randomly keyed SipHash fingerprints: hashing
/// them again would only cost time (three times per datagram), and nobody
/// can aim collisions at them, so the map uses them as they are.
#[derive(Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys go in; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Fingerprints of recently relayed datagrams.
#[derive(Debug)]
pub(crate) struct EchoFilter {
    window_ms: u64,
    capacity: usize,
    /// fingerprint -> (sender, expiry)
    seen: HashMap<u64, (SocketAddr, u64), BuildHasherDefault<KeyHasher>>,
    /// (fingerprint, expiry) in the order recorded, for expiry and eviction.
    order: VecDeque<(u64, u64)>,
    /// Keyed randomly per process, so nobody can craft colliding datagrams.
    hasher: RandomState,
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
    /// Remembers up to `capacity` datagrams for `window_ms` each (0: off);
    /// `relay_ports` are the ports the relay sends to.
    pub(crate) fn new(window_ms: u64, capacity: usize, relay_ports: Vec<u16>) -> EchoFilter {
        EchoFilter {
            window_ms,
            capacity: capacity.max(1),
            seen: HashMap::default(),
            order: VecDeque::new(),
            hasher: RandomState::new(),
            relay_ports,
        }
    }

    /// The fingerprint of `data`, taken once per datagram and handed to
    /// [`EchoFilter::is_echo_key`] and [`EchoFilter::record_key`]; `None`
    /// when the filter is off.
    pub(crate) fn key(&self, data: &[u8]) -> Option<u64> {
        (self.window_ms != 0).then(|| self.hasher.hash_one(strip_tags(data)))
    }

    /// Whether `data` from `from` is a copy of something relayed recently.
    #[cfg(test)]
    pub(crate) fn is_echo(&mut self, data: &[u8], from: SocketAddr, now_ms: u64) -> bool {
        let key = self.key(data);
        self.is_echo_key(key, from, now_ms)
    }

    /// [`EchoFilter::is_echo`] for a datagram whose [`EchoFilter::key`] is `key`.
    pub(crate) fn is_echo_key(&mut self, key: Option<u64>, from: SocketAddr, now_ms: u64) -> bool {
        let Some(key) = key else {
            return false;
        };
        self.expire(now_ms);
        match self.seen.get(&key) {
            Some(&(sender, expiry)) if expiry > now_ms => {
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
        let expiry = now_ms + self.window_ms;
        self.seen.insert(key, (from, expiry));
        self.order.push_back((key, expiry));
        while self.order.len() > self.capacity {
            self.pop_front();
        }
    }

    /// Forgets what is older than the window.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        while self.order.front().is_some_and(|&(_, e)| e <= now_ms) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((key, expiry)) = self.order.pop_front() {
            // Only if not recorded again since (a later entry owns it then).
            if self.seen.get(&key).is_some_and(|&(_, e)| e == expiry) {
                self.seen.remove(&key);
            }
        }
    }

    /// Fingerprints held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
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
        assert_eq!(f.len(), 0, "expired");
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
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn bounded_and_rerecording_keeps_the_latest() {
        let mut f = EchoFilter::new(1000, 4, vec![]);
        let s = a("1.1.1.1:1");
        for i in 0..100u32 {
            f.record(&i.to_be_bytes(), s, 0);
        }
        assert!(f.len() <= 4);
        assert!(f.order.len() <= 4);
        assert!(f.is_echo(&99u32.to_be_bytes(), a("2.2.2.2:2"), 1));
        assert!(
            !f.is_echo(&0u32.to_be_bytes(), a("2.2.2.2:2"), 1),
            "evicted"
        );

        // Recorded at 0 and again at 600: still remembered at 1200.
        let mut f = EchoFilter::new(1000, 16, vec![]);
        f.record(b"X", s, 0);
        f.record(b"X", s, 600);
        assert!(f.is_echo(b"X", a("2.2.2.2:2"), 1200));
        assert!(!f.is_echo(b"X", a("2.2.2.2:2"), 1600));
    }
}
