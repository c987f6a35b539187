//! `loopd status URL`: a short summary of a running loopd from its status
//! handler's `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long connecting, sending and reading may each take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `http://HOST:PORT[/...]` or `HOST:PORT`: the address and the path of
/// the metrics (`/metrics` unless the URL names another).
fn target(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        return Err(format!(
            "{url}: only http:// status listeners (or HOST:PORT)"
        ));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let path = if path == "/" { "/metrics" } else { path };
    if host.is_empty() || !host.contains(':') {
        return Err(format!("{url}: give HOST:PORT, e.g. http://127.0.0.1:9090"));
    }
    Ok((host.to_string(), path.to_string()))
}

/// Fetches the metrics text.
fn fetch(url: &str) -> Result<String, String> {
    let (host, path) = target(url)?;
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).ok();
    s.set_write_timeout(Some(TIMEOUT)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let raw = read_reply(&mut s, &addr)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("{url}{path}: {status}"));
    }
    Ok(body.to_string())
}

/// Most bytes of a reply read.
const MAX_REPLY: usize = 64 << 20;

/// Reads the reply to the request until the peer closes, within
/// [`TIMEOUT`] in all. A listener that answers with something other than
/// HTTP is named as such at once; one that says nothing (or never ends
/// its answer) within the time, as not answering.
fn read_reply(s: &mut TcpStream, addr: &std::net::SocketAddr) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        if !raw.is_empty() && !looks_like_http(&raw) {
            return Err(not_http(addr, &raw));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_answer(addr, &raw));
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut buf) {
            Ok(0) if raw.is_empty() => return Err(closed(addr)),
            Ok(0) => return Ok(raw),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_REPLY {
                    return Err(format!(
                        "{addr}: the reply is over {} MiB: is it a status listener?",
                        MAX_REPLY >> 20
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(no_answer(addr, &raw))
            }
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
}

/// The error for a peer that closed without a byte.
fn closed(addr: &std::net::SocketAddr) -> String {
    format!("{addr} closed the connection without an HTTP response: is it a status listener?")
}

/// Whether `raw`, the start of a reply, can be the start of an HTTP
/// response (`HTTP/`).
fn looks_like_http(raw: &[u8]) -> bool {
    let n = raw.len().min(5);
    raw[..n] == b"HTTP/"[..n]
}

/// The error for a reply that does not start as an HTTP response does,
/// with its first line (printable ASCII only, shortened).
fn not_http(addr: &std::net::SocketAddr, raw: &[u8]) -> String {
    let first: String = raw
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default()
        .iter()
        .take(60)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!(
        "{addr} answered, but not with HTTP (its reply starts with \"{}\"): is it a status listener?",
        first.trim_end_matches('.')
    )
}

/// The error for a peer that did not answer (or finish answering) in time.
fn no_answer(addr: &std::net::SocketAddr, raw: &[u8]) -> String {
    let secs = TIMEOUT.as_secs();
    if raw.is_empty() {
        format!("no HTTP response from {addr} within {secs} s: is it a status listener?")
    } else {
        format!(
            "{addr}: the HTTP response did not end within {secs} s ({} bytes read)",
            raw.len()
        )
    }
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values loopd writes hold no `",` inside (names and URLs).
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once('=') {
                map.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
        out.push((name.to_string(), map, value));
    }
    out
}

/// The summary of a metrics text.
pub(crate) fn summary(text: &str) -> String {
    let samples = parse(text);
    let total = |name: &str| -> f64 {
        samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    };
    let by_handler = |name: &str| -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (n, l, v) in &samples {
            if n == name {
                if let Some(h) = l.get("handler") {
                    *m.entry(h.clone()).or_insert(0.0) += v;
                }
            }
        }
        m
    };
    let mut out = String::new();
    if let Some((_, l, _)) = samples.iter().find(|(n, _, _)| n == "loopd_build_info") {
        let get = |k: &str| l.get(k).map_or("?", String::as_str);
        let _ = write!(out, "loopd {} (ABI {})", get("version"), get("abi"));
    }
    let _ = writeln!(
        out,
        ", {} worker(s), {} loop passes, {} reloads",
        total("loopd_workers"),
        total("loopd_loop_passes_total"),
        total("loopd_reloads_total")
    );
    if let Some((_, _, rss)) = samples
        .iter()
        .find(|(n, _, _)| n == "process_resident_memory_bytes")
    {
        let _ = writeln!(
            out,
            "memory {:.1} MiB, {} open fds, {:.2} s CPU",
            rss / (1 << 20) as f64,
            total("process_open_fds"),
            total("process_cpu_seconds_total")
        );
    }
    let active = by_handler("loopd_connections_active");
    let accepted = by_handler("loopd_connections_accepted_total");
    let closed = by_handler("loopd_connections_closed_total");
    let rx = by_handler("loopd_received_bytes_total");
    let tx = by_handler("loopd_sent_bytes_total");
    let frames = by_handler("loopd_frames_total");
    let dgrams = by_handler("loopd_datagrams_received_total");
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>10} {:>10} {:>14} {:>14} {:>10} {:>10}",
        "handler", "open", "accepted", "closed", "received", "sent", "frames", "datagrams"
    );
    let get = |m: &BTreeMap<String, f64>, h: &str| m.get(h).copied().unwrap_or(0.0);
    for h in active.keys() {
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>10} {:>10} {:>14} {:>14} {:>10} {:>10}",
            h,
            get(&active, h),
            get(&accepted, h),
            get(&closed, h),
            get(&rx, h),
            get(&tx, h),
            get(&frames, h),
            get(&dgrams, h)
        );
    }
    out
}

/// `loopd status URL`.
pub(crate) fn run(url: &str) -> Result<String, String> {
    let text = fetch(url)?;
    if !text.contains("loopd_build_info") {
        return Err(format!(
            "{url}: not a loopd status listener (no loopd_build_info)"
        ));
    }
    Ok(summary(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            target("http://127.0.0.1:9090").unwrap(),
            ("127.0.0.1:9090".into(), "/metrics".into())
        );
        assert_eq!(
            target("127.0.0.1:9090/x").unwrap(),
            ("127.0.0.1:9090".into(), "/x".into())
        );
        assert!(target("https://127.0.0.1:9090").is_err());
        assert!(target("localhost").is_err());
    }

    #[test]
    fn summarises_handlers() {
        let text = "loopd_build_info{version=\"0.1.0\",abi=\"1.4\"} 1\n\
            loopd_connections_active{handler=\"echo\"} 2\n\
            loopd_connections_accepted_total{handler=\"echo\",listener=\"tcp://127.0.0.1:1\"} 5\n\
            loopd_sent_bytes_total{handler=\"echo\"} 120\n";
        let s = summary(text);
        assert!(s.starts_with("loopd 0.1.0 (ABI 1.4)"), "{s}");
        let row = s.lines().find(|l| l.starts_with("echo")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, ["echo", "2", "5", "0", "0", "120", "0", "0"]);
    }
}
