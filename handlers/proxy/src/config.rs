//! The proxy's `[handler.config]` table and its upstream URL.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default `connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default `shutdown_idle_ms`.
pub const DEFAULT_SHUTDOWN_IDLE_MS: u64 = 1_000;
/// Default `upstream_high_watermark` (loopd's default output high watermark).
pub const DEFAULT_UPSTREAM_HIGH: usize = 256 << 10;
/// Default `upstream_low_watermark` (loopd's default output low watermark).
pub const DEFAULT_UPSTREAM_LOW: usize = 64 << 10;
/// Largest `upstream_high_watermark` accepted (1 GiB).
pub const MAX_WATERMARK: usize = 1 << 30;
/// Largest value any `*_ms` key accepts: about 24.8 days (what fits a
/// signed 32-bit millisecond count, as in nginx and HAProxy).
pub const MAX_MS: u64 = i32::MAX as u64;

/// The `[handler.config]` table of a proxy instance. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where every client is forwarded: `tcp://IP:PORT`, `tls://IP:PORT`
    /// (TLS to the upstream, trusting the entry's `tls_ca` if set, else the
    /// system's CA certificates; the certificate must carry the IP address,
    /// or [`Config::server_name`]) or `unix://PATH`. Required; numeric addresses only (a running loop never
    /// waits for a resolver).
    pub upstream: String,
    /// How long connecting to the upstream may take before the client is
    /// closed. 1 to [`MAX_MS`].
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// A pair that carries no byte either way for this long is closed.
    /// 0 (the default) turns it off. Up to [`MAX_MS`].
    #[serde(default)]
    pub idle_timeout_ms: u64,
    /// During a graceful shutdown, a pair that has carried no byte for this
    /// long, with nothing queued either way, is closed. 0 waits for every
    /// pair to end by itself (loopd cuts what is left at
    /// `shutdown_timeout_ms`). Up to [`MAX_MS`].
    #[serde(default = "default_shutdown_idle")]
    pub shutdown_idle_ms: u64,
    /// The upstream connection's output high watermark: at this many bytes
    /// queued for the upstream, `send` refuses and the proxy stops reading
    /// the client. 1 to [`MAX_WATERMARK`].
    #[serde(default = "default_upstream_high")]
    pub upstream_high_watermark: usize,
    /// Its low watermark: queued bytes below which the upstream's
    /// `on_writable` resumes reading the client; below
    /// `upstream_high_watermark`.
    #[serde(default = "default_upstream_low")]
    pub upstream_low_watermark: usize,
    /// A `tls://` upstream only: the DNS name its certificate must carry
    /// (also sent as SNI). Without it, the certificate must carry the IP
    /// address of `upstream`.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_upstream_high() -> usize {
    DEFAULT_UPSTREAM_HIGH
}

fn default_upstream_low() -> usize {
    DEFAULT_UPSTREAM_LOW
}

fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}

fn default_shutdown_idle() -> u64 {
    DEFAULT_SHUTDOWN_IDLE_MS
}

/// A checked config, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The upstream to connect to.
    pub upstream: Upstream,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout of a pair, if any.
    pub idle_timeout: Option<Duration>,
    /// Idle time after which a pair is closed during shutdown, if any.
    pub shutdown_idle: Option<Duration>,
    /// The upstream queue's bounds: the client is paused at `.0`, resumed
    /// below `.1`.
    pub upstream_watermarks: (usize, usize),
    /// The DNS name a `tls://` upstream's certificate must carry, if not
    /// its IP address.
    pub server_name: Option<String>,
}

impl Config {
    /// Checks every key and returns the settings.
    ///
    /// # Errors
    /// A message naming the key, the value and what is accepted.
    pub fn validate(&self) -> Result<Settings, String> {
        let upstream = Upstream::parse(&self.upstream).map_err(|e| format!("upstream: {e}"))?;
        let ms = |key: &str, v: u64, zero_ok: bool| -> Result<Option<Duration>, String> {
            if v == 0 && !zero_ok {
                return Err(format!("{key} = 0: must be 1 to {MAX_MS} milliseconds"));
            }
            if v > MAX_MS {
                return Err(format!(
                    "{key} = {v} is too large: at most {MAX_MS} milliseconds"
                ));
            }
            Ok((v > 0).then(|| Duration::from_millis(v)))
        };
        let (high, low) = (self.upstream_high_watermark, self.upstream_low_watermark);
        if !(1..=MAX_WATERMARK).contains(&high) {
            return Err(format!(
                "upstream_high_watermark = {high} is out of range: 1 to {MAX_WATERMARK} bytes"
            ));
        }
        if low >= high {
            return Err(format!(
                "upstream_low_watermark = {low} must be below upstream_high_watermark ({high})"
            ));
        }
        if let Some(name) = &self.server_name {
            if !matches!(upstream, Upstream::Tls(_)) {
                return Err(format!(
                    "server_name = {name:?}: only for a tls:// upstream, not {upstream}"
                ));
            }
            if !is_dns_name(name) {
                return Err(format!(
                    "server_name = {name:?} is not a DNS name (letters, digits, `-` and `.`, \
                     e.g. \"redis.example.com\"; an IP address goes in upstream)"
                ));
            }
        }
        Ok(Settings {
            upstream,
            connect_timeout: ms("connect_timeout_ms", self.connect_timeout_ms, false)?
                .expect("checked above 0"),
            idle_timeout: ms("idle_timeout_ms", self.idle_timeout_ms, true)?,
            shutdown_idle: ms("shutdown_idle_ms", self.shutdown_idle_ms, true)?,
            upstream_watermarks: (high, low),
            server_name: self.server_name.clone(),
        })
    }
}

/// A host name as a certificate names it: dot-separated labels of 1 to 63
/// letters, digits and hyphens (not at either end), 253 bytes at most, not
/// all digits and dots (that is an address).
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Where the proxy connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A numeric IPv4 or IPv6 address and port.
    Tcp(SocketAddr),
    /// The same, with TLS: loopd's outbound `tls://`, which trusts the
    /// handler entry's `tls_ca` if set, else the system's CA certificates,
    /// and checks that the upstream's certificate carries the IP address,
    /// or the configured `server_name` ([`Settings::server_name`]).
    Tls(SocketAddr),
    /// A Unix-domain stream socket.
    Unix(PathBuf),
}

impl Upstream {
    /// Whether the connection `info` describes was accepted at this very
    /// address: its local address (a wildcard listener's connections have
    /// the concrete one), or its Unix listener's path as written.
    pub fn is_listener_of(&self, info: &loopd_handler_api::ConnInfo<'_>) -> bool {
        match self {
            Upstream::Tcp(a) | Upstream::Tls(a) => info.local == Some(*a),
            Upstream::Unix(p) => info
                .endpoint
                .strip_prefix("unix://")
                .is_some_and(|own| std::path::Path::new(own) == p),
        }
    }

    /// Parses `tcp://IP:PORT` (`tcp://[::1]:6379` for IPv6), `tls://IP:PORT`
    /// or `unix:///path/to.sock` (a relative path is relative to loopd's
    /// working directory).
    ///
    /// # Errors
    /// What is wrong with `s`, with an example of what works.
    pub fn parse(s: &str) -> Result<Upstream, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("`{s}` is not a URL like tcp://127.0.0.1:6379 or unix:///run/app.sock")
        })?;
        match scheme {
            "tcp" | "tls" => {
                let addr: SocketAddr = rest.parse().map_err(|_| {
                    format!(
                        "`{s}`: `{rest}` is not a numeric IP:PORT (e.g. 127.0.0.1:6379 or \
                         [::1]:6379; host names are not resolved)"
                    )
                })?;
                if addr.port() == 0 {
                    return Err(format!("`{s}`: port 0 cannot be connected to"));
                }
                if addr.ip().is_unspecified() || addr.ip().is_multicast() {
                    return Err(format!(
                        "`{s}`: {} is not an address to connect to",
                        addr.ip()
                    ));
                }
                Ok(if scheme == "tls" {
                    Upstream::Tls(addr)
                } else {
                    Upstream::Tcp(addr)
                })
            }
            "unix" => {
                if rest.is_empty() {
                    return Err(format!("`{s}`: the unix socket path is empty"));
                }
                if rest.len() >= 108 {
                    return Err(format!(
                        "`{s}`: a unix socket path must be shorter than 108 bytes"
                    ));
                }
                if rest.contains('\0') {
                    return Err(format!("`{s}`: the unix socket path contains NUL"));
                }
                Ok(Upstream::Unix(PathBuf::from(rest)))
            }
            other => Err(format!(
                "`{s}`: unknown scheme `{other}` (use tcp://, tls:// or unix://)"
            )),
        }
    }
}

impl fmt::Display for Upstream {
    /// The URL [`loopd_handler_api::Ctx::connect_with`] takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Tcp(a) => write!(f, "tcp://{a}"),
            Upstream::Tls(a) => write!(f, "tls://{a}"),
            Upstream::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<Settings, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate()
    }

    #[test]
    fn defaults() {
        let s = config(r#"{"upstream": "tcp://127.0.0.1:6379"}"#).unwrap();
        assert_eq!(s.upstream, Upstream::Tcp("127.0.0.1:6379".parse().unwrap()));
        assert_eq!(s.connect_timeout, Duration::from_millis(5000));
        assert_eq!(s.idle_timeout, None);
        assert_eq!(s.shutdown_idle, Some(Duration::from_millis(1000)));
        assert_eq!(s.upstream_watermarks, (256 << 10, 64 << 10));
        assert_eq!(s.server_name, None);
    }

    #[test]
    fn a_tls_upstream_may_name_its_server() {
        let s = config(r#"{"upstream": "tls://10.0.0.5:6380", "server_name": "redis.example"}"#)
            .unwrap();
        assert_eq!(s.upstream, Upstream::Tls("10.0.0.5:6380".parse().unwrap()));
        assert_eq!(s.server_name.as_deref(), Some("redis.example"));
        for ok in ["localhost", "a-b.example.com.", "x1"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in ["", "-a.example", "a_b", "1.2.3.4", "a..b", &"x".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_key() {
        let s = config(
            r#"{"upstream": "unix:///run/app.sock", "connect_timeout_ms": 250,
                "idle_timeout_ms": 60000, "shutdown_idle_ms": 0,
                "upstream_high_watermark": 1048576, "upstream_low_watermark": 0}"#,
        )
        .unwrap();
        assert_eq!(s.upstream, Upstream::Unix("/run/app.sock".into()));
        assert_eq!(s.upstream.to_string(), "unix:///run/app.sock");
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(s.shutdown_idle, None);
        assert_eq!(s.upstream_watermarks, (1 << 20, 0));
    }

    #[test]
    fn urls_round_trip() {
        for url in [
            "tcp://127.0.0.1:1",
            "tcp://[::1]:6379",
            "tls://127.0.0.1:6380",
            "tls://[::1]:443",
            "unix://rel/x.sock",
        ] {
            assert_eq!(Upstream::parse(url).unwrap().to_string(), url);
        }
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        let cases = [
            (r#"{}"#, "missing field `upstream`"),
            (
                r#"{"upstream": "tcp://127.0.0.1:1", "conect_timeout_ms": 1}"#,
                "unknown field `conect_timeout_ms`",
            ),
            (
                r#"{"upstream": "127.0.0.1:6379"}"#,
                "upstream: `127.0.0.1:6379` is not a URL like tcp://127.0.0.1:6379",
            ),
            (
                r#"{"upstream": "tcp://localhost:6379"}"#,
                "`localhost:6379` is not a numeric IP:PORT",
            ),
            (r#"{"upstream": "tcp://127.0.0.1:0"}"#, "port 0"),
            (
                r#"{"upstream": "tls://localhost:443"}"#,
                "`localhost:443` is not a numeric IP:PORT",
            ),
            (
                r#"{"upstream": "tls://[::]:443"}"#,
                ":: is not an address to connect to",
            ),
            (
                r#"{"upstream": "tcp://127.0.0.1:1", "server_name": "db.example"}"#,
                "server_name = \"db.example\": only for a tls:// upstream, not tcp://127.0.0.1:1",
            ),
            (
                r#"{"upstream": "tls://127.0.0.1:1", "server_name": "127.0.0.1"}"#,
                "server_name = \"127.0.0.1\" is not a DNS name",
            ),
            (
                r#"{"upstream": "tcp://0.0.0.0:80"}"#,
                "0.0.0.0 is not an address to connect to",
            ),
            (
                r#"{"upstream": "udp://127.0.0.1:53"}"#,
                "unknown scheme `udp`",
            ),
            (
                r#"{"upstream": "unix://"}"#,
                "the unix socket path is empty",
            ),
            (
                r#"{"upstream": "tcp://127.0.0.1:1", "connect_timeout_ms": 0}"#,
                "connect_timeout_ms = 0: must be 1 to",
            ),
            (
                r#"{"upstream": "tcp://127.0.0.1:1", "idle_timeout_ms": 99999999999}"#,
                "idle_timeout_ms = 99999999999 is too large",
            ),
            (
                r#"{"upstream": "tcp://127.0.0.1:1", "upstream_high_watermark": 0}"#,
                "upstream_high_watermark = 0 is out of range",
            ),
            (
                r#"{"upstream": "tcp://127.0.0.1:1", "upstream_low_watermark": 262144}"#,
                "upstream_low_watermark = 262144 must be below upstream_high_watermark (262144)",
            ),
        ];
        for (json, want) in cases {
            let err = config(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err:?} lacks {want:?}");
        }
        let long = format!(r#"{{"upstream": "unix:///{}"}}"#, "x".repeat(120));
        assert!(config(&long)
            .unwrap_err()
            .contains("shorter than 108 bytes"));
    }
}
