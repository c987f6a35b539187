//! The `[handler.config]` table: parsed by serde, then checked here so every
//! error names the key and says what would be accepted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// Largest UDP payload over IPv4 (65,535 - 20 - 8).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Most targets in `broadcast_to`.
pub const MAX_TARGETS: usize = 64;

/// The config as written (`[handler.config]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Where every datagram is re-sent: one `ADDR:PORT` or a list of them.
    #[serde(deserialize_with = "one_or_many")]
    pub broadcast_to: Vec<String>,
    /// Prefix each relayed datagram with `[ip:port] ` of its sender. The
    /// tag counts against `max_datagram`: a datagram that would exceed it
    /// with the tag is dropped (`oversize_prefixed`), never truncated.
    #[serde(default)]
    pub prefix_sender: bool,
    /// Datagrams per second relayed from one source address (token refill).
    #[serde(default = "defaults::rate_per_source")]
    pub rate_per_source: u64,
    /// Datagrams one source may send in a burst (bucket size).
    #[serde(default = "defaults::burst")]
    pub burst: u64,
    /// Larger datagrams are dropped (1472: one Ethernet frame without fragments).
    #[serde(default = "defaults::max_datagram")]
    pub max_datagram: usize,
    /// Sources tracked one by one; beyond, new sources share one bucket.
    #[serde(default = "defaults::max_sources")]
    pub max_sources: usize,
    /// How long a relayed datagram is remembered, to drop the copies other
    /// relays send back (0 turns echo suppression off).
    #[serde(default = "defaults::echo_window_ms")]
    pub echo_window_ms: u64,
    /// Beacon text sent to every target, at start and then periodically.
    #[serde(default)]
    pub announce: Option<String>,
    /// Beacon period (default 10 s).
    #[serde(default)]
    pub announce_interval_ms: Option<u64>,
    /// Allow 255.255.255.255 as a target (refused by default).
    #[serde(default)]
    pub allow_limited_broadcast: bool,
}

mod defaults {
    pub(super) fn rate_per_source() -> u64 {
        100
    }
    pub(super) fn burst() -> u64 {
        200
    }
    pub(super) fn max_datagram() -> usize {
        1472
    }
    pub(super) fn max_sources() -> usize {
        4096
    }
    pub(super) fn echo_window_ms() -> u64 {
        500
    }
}

/// The default beacon period.
pub const DEFAULT_ANNOUNCE_INTERVAL_MS: u64 = 10_000;

/// A checked config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Targets, in config order, without duplicates.
    pub targets: Vec<SocketAddr>,
    /// See [`RelayConfig::prefix_sender`].
    pub prefix_sender: bool,
    /// See [`RelayConfig::rate_per_source`].
    pub rate_per_source: u64,
    /// See [`RelayConfig::burst`].
    pub burst: u64,
    /// See [`RelayConfig::max_datagram`].
    pub max_datagram: usize,
    /// See [`RelayConfig::max_sources`].
    pub max_sources: usize,
    /// See [`RelayConfig::echo_window_ms`].
    pub echo_window_ms: u64,
    /// The beacon text and period.
    pub announce: Option<(Vec<u8>, u64)>,
    /// Warnings to log at start (e.g. 255.255.255.255 allowed).
    pub warnings: Vec<String>,
}

fn range(key: &str, v: u64, lo: u64, hi: u64) -> Result<u64, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{key} = {v}: must be between {lo} and {hi}"))
    }
}

impl RelayConfig {
    /// Checks every key.
    ///
    /// # Errors
    /// A message naming the key, the value and what is accepted.
    pub fn check(self) -> Result<Settings, String> {
        let mut warnings = Vec::new();
        if self.broadcast_to.is_empty() {
            return Err(
                "broadcast_to: give at least one numeric ADDR:PORT, e.g. [\"127.255.255.255:7003\"]"
                    .into(),
            );
        }
        if self.broadcast_to.len() > MAX_TARGETS {
            return Err(format!(
                "broadcast_to: {} targets; at most {MAX_TARGETS}",
                self.broadcast_to.len()
            ));
        }
        let mut targets: Vec<SocketAddr> = Vec::with_capacity(self.broadcast_to.len());
        for (i, text) in self.broadcast_to.iter().enumerate() {
            let key = format!("broadcast_to[{i}]");
            let addr: SocketAddr = text.trim().parse().map_err(|_| {
                format!(
                    "{key}: `{text}` is not a numeric ADDR:PORT (e.g. 192.168.1.255:7003, \
                     127.255.255.255:7003 or [ff02::1]:7003; host names are not resolved)"
                )
            })?;
            if addr.port() == 0 {
                return Err(format!("{key}: `{text}`: port 0 is not a destination"));
            }
            if addr.ip().is_unspecified() {
                return Err(format!(
                    "{key}: `{text}`: {} is not a destination address",
                    addr.ip()
                ));
            }
            if addr.ip() == IpAddr::V4(Ipv4Addr::BROADCAST) {
                if !self.allow_limited_broadcast {
                    return Err(format!(
                        "{key}: `{text}`: 255.255.255.255 (the limited broadcast) goes to every \
                         host on the segment of the default route; use the broadcast address of \
                         one subnet (e.g. 192.168.1.255, or 127.255.255.255 on loopback), or set \
                         allow_limited_broadcast = true if that is really what you want"
                    ));
                }
                warnings.push(format!(
                    "{key}: relaying to {addr}, the limited broadcast, because \
                     allow_limited_broadcast = true: every host on the default route's segment \
                     gets every relayed datagram"
                ));
            }
            if targets.contains(&addr) {
                return Err(format!("{key}: `{text}` is listed twice"));
            }
            targets.push(addr);
        }
        let rate_per_source = range("rate_per_source", self.rate_per_source, 1, 1_000_000)?;
        let burst = range("burst", self.burst, 1, 1_000_000)?;
        let max_datagram = range(
            "max_datagram",
            self.max_datagram as u64,
            1,
            MAX_UDP_PAYLOAD as u64,
        )? as usize;
        let max_sources = range("max_sources", self.max_sources as u64, 1, 1_000_000)? as usize;
        let echo_window_ms = range("echo_window_ms", self.echo_window_ms, 0, 60_000)?;
        let announce = match (self.announce, self.announce_interval_ms) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(
                    "announce_interval_ms is set but announce (the beacon text) is not".into(),
                )
            }
            (Some(text), interval) => {
                if text.is_empty() {
                    return Err("announce: the beacon text is empty".into());
                }
                if text.len() > MAX_UDP_PAYLOAD {
                    return Err(format!(
                        "announce: {} bytes; a datagram holds at most {MAX_UDP_PAYLOAD}",
                        text.len()
                    ));
                }
                let interval = range(
                    "announce_interval_ms",
                    interval.unwrap_or(DEFAULT_ANNOUNCE_INTERVAL_MS),
                    100,
                    86_400_000,
                )?;
                Some((text.into_bytes(), interval))
            }
        };
        Ok(Settings {
            targets,
            prefix_sender: self.prefix_sender,
            rate_per_source,
            burst,
            max_datagram,
            max_sources,
            echo_window_ms,
            announce,
            warnings,
        })
    }
}

/// `"a"` or `["a", "b"]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an \"ADDR:PORT\" string or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                if out.len() > MAX_TARGETS {
                    return Err(de::Error::custom(format!(
                        "more than {MAX_TARGETS} targets"
                    )));
                }
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        let raw: RelayConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        raw.check()
    }

    #[test]
    fn defaults() {
        let s = parse(r#"{"broadcast_to": "127.255.255.255:7003"}"#).unwrap();
        assert_eq!(s.targets, vec!["127.255.255.255:7003".parse().unwrap()]);
        assert!(!s.prefix_sender);
        assert_eq!((s.rate_per_source, s.burst), (100, 200));
        assert_eq!(s.max_datagram, 1472);
        assert_eq!(s.echo_window_ms, 500);
        assert_eq!(s.announce, None);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn lists_and_beacons() {
        let s = parse(
            r#"{"broadcast_to": ["198.18.0.255:9", "[ff02::1]:9"], "prefix_sender": true,
                "announce": "svc here", "rate_per_source": 5, "burst": 1}"#,
        )
        .unwrap();
        assert_eq!(s.targets.len(), 2);
        assert_eq!(
            s.announce,
            Some((b"svc here".to_vec(), DEFAULT_ANNOUNCE_INTERVAL_MS))
        );
        let s = parse(
            r#"{"broadcast_to": "10.0.0.255:9", "announce": "x", "announce_interval_ms": 250}"#,
        )
        .unwrap();
        assert_eq!(s.announce, Some((b"x".to_vec(), 250)));
    }

    #[test]
    fn the_limited_broadcast_is_refused_unless_allowed() {
        let e = parse(r#"{"broadcast_to": ["255.255.255.255:7003"]}"#).unwrap_err();
        assert!(
            e.starts_with(
                "broadcast_to[0]: `255.255.255.255:7003`: 255.255.255.255 (the limited broadcast)"
            ),
            "{e}"
        );
        assert!(e.contains("allow_limited_broadcast = true"), "{e}");
        let s =
            parse(r#"{"broadcast_to": ["255.255.255.255:7003"], "allow_limited_broadcast": true}"#)
                .unwrap();
        assert_eq!(s.warnings.len(), 1, "allowed, but loudly");
    }

    #[test]
    fn bad_targets_are_named() {
        for (json, want) in [
            (r#"{"broadcast_to": []}"#, "broadcast_to: give at least one"),
            (
                r#"{"broadcast_to": ["localhost:7003"]}"#,
                "broadcast_to[0]: `localhost:7003` is not a numeric ADDR:PORT",
            ),
            (
                r#"{"broadcast_to": ["127.0.0.1"]}"#,
                "is not a numeric ADDR:PORT",
            ),
            (
                r#"{"broadcast_to": ["127.0.0.1:1", "127.0.0.1:0"]}"#,
                "broadcast_to[1]: `127.0.0.1:0`: port 0",
            ),
            (
                r#"{"broadcast_to": ["0.0.0.0:5"]}"#,
                "0.0.0.0 is not a destination",
            ),
            (
                r#"{"broadcast_to": ["1.2.3.4:5", "1.2.3.4:5"]}"#,
                "broadcast_to[1]: `1.2.3.4:5` is listed twice",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
        let e = parse(r#"{}"#).unwrap_err();
        assert!(e.contains("missing field `broadcast_to`"), "{e}");
        let e = parse(r#"{"broadcast_to": 5}"#).unwrap_err();
        assert!(e.contains("an \"ADDR:PORT\" string or a list"), "{e}");
        let e = parse(r#"{"broadcast_to": "1.2.3.4:5", "rate": 5}"#).unwrap_err();
        assert!(e.contains("unknown field `rate`"), "{e}");
    }

    #[test]
    fn bad_numbers_are_named() {
        for (json, want) in [
            (
                r#""rate_per_source": 0"#,
                "rate_per_source = 0: must be between 1",
            ),
            (r#""burst": 0"#, "burst = 0"),
            (
                r#""max_datagram": 70000"#,
                "max_datagram = 70000: must be between 1 and 65507",
            ),
            (r#""max_sources": 0"#, "max_sources = 0"),
            (r#""echo_window_ms": 3600000"#, "echo_window_ms"),
            (
                r#""announce_interval_ms": 1000"#,
                "announce (the beacon text) is not",
            ),
            (
                r#""announce": "", "announce_interval_ms": 1000"#,
                "announce: the beacon text is empty",
            ),
            (
                r#""announce": "x", "announce_interval_ms": 5"#,
                "announce_interval_ms = 5",
            ),
        ] {
            let e = parse(&format!(r#"{{"broadcast_to": "1.2.3.4:5", {json}}}"#)).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
