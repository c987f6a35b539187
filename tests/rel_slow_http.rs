//! Reliability: slowloris and slow body attacks (`slowhttptest`) against the
//! http handler. While hundreds of connections trickle headers or a body,
//! the service must stay available in 100% of the samples (slowhttptest's
//! own probe, once a second, and probe requests of this test), and
//! connections that never finish their request head must get a 408 at
//! `header_timeout_ms` and be closed (after lingering).

mod common;
mod http_util;
mod rel_load_util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rel_load_util::*;

/// Raw slowloris clients whose 408 and close this test times itself.
const WATCHED: usize = 20;
const LINGER_MS: u64 = 2000;

/// What the slowhttptest runs of one mode reported.
#[derive(Debug, Default)]
struct Attack {
    waves: usize,
    /// Per-second samples, and those in which slowhttptest's probe got an
    /// answer ("Service Available" > 0).
    samples: usize,
    available: usize,
    /// Most attack connections open at once.
    max_connected: usize,
}

/// Runs slowhttptest (`mode` -H or -B) in waves until `window` has passed:
/// loopd closes the slow connections at its timeouts, and slowhttptest
/// stops when it has none left, so a new wave keeps the attack going.
fn attack(
    mode: &str,
    url: &str,
    dir: &Path,
    window: Duration,
    conns: u32,
    rate: u32,
    interval: u32,
) -> Attack {
    let start = Instant::now();
    let mut a = Attack::default();
    while start.elapsed() + Duration::from_secs(5) < window {
        let left = (window - start.elapsed()).as_secs().max(5);
        let prefix = dir.join(format!("{}{}", &mode[1..], a.waves));
        let mut child = Command::new("slowhttptest")
            .arg(mode)
            .args(["-c", &conns.to_string()])
            .args(["-r", &rate.to_string()])
            .args(["-i", &interval.to_string()])
            .args(["-l", &left.to_string()])
            .args(["-p", "3", "-s", "4096", "-g", "-u", url])
            .arg("-o")
            .arg(&prefix)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running slowhttptest");
        let deadline = Instant::now() + Duration::from_secs(left) + TIMEOUT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("slowhttptest {mode} did not stop by itself");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        a.waves += 1;
        // Seconds,Closed,Pending,Connected,Service Available
        let csv = std::fs::read_to_string(prefix.with_extension("csv"))
            .expect("slowhttptest's CSV report");
        let mut rows = 0;
        for line in csv.lines().skip(1) {
            let cols: Vec<usize> = line
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect();
            assert_eq!(cols.len(), 5, "slowhttptest CSV row {line:?}");
            rows += 1;
            a.samples += 1;
            if cols[4] > 0 {
                a.available += 1;
            }
            a.max_connected = a.max_connected.max(cols[3]);
        }
        assert!(rows > 0, "slowhttptest {mode} reported no samples:\n{csv}");
    }
    a
}

/// One probe request on a fresh connection: a complete, correct answer
/// within 5 s.
fn probe(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got.starts_with(b"HTTP/1.1 200 ") && got.ends_with(b"hello, world\n")
}

/// A slowloris client timed by the test: it sends a request head one
/// header line every 250 ms and never ends it. Returns (time to the 408,
/// time to the close), from just before its connect.
fn slowloris(addr: SocketAddr) -> (Option<Duration>, Option<Duration>) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("a slowloris connection");
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let _ = s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n");
    let mut got = Vec::new();
    let mut t408 = None;
    let mut buf = [0u8; 4096];
    while t0.elapsed() < TIMEOUT {
        // Keep trickling, until the server has answered.
        if t408.is_none() {
            let _ = s.write_all(b"X-Slow: yes\r\n");
        }
        match s.read(&mut buf) {
            Ok(0) => return (t408, Some(t0.elapsed())),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if t408.is_none() && got.starts_with(b"HTTP/1.1 408 ") {
                    t408 = Some(t0.elapsed());
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (t408, Some(t0.elapsed())),
            Err(e) => panic!("slowloris client: {e}"),
        }
    }
    (t408, None)
}

#[test]
fn slowloris_and_slow_body_leave_the_service_available_and_are_cut_at_the_header_timeout() {
    need_tool("slowhttptest");
    let header_timeout_ms: u64 = tier(3000, 10_000);
    let window = Duration::from_secs(tier(25, 240));
    let (conns, rate, interval) = tier((250, 125, 1), (500, 100, 5));
    let site = http_util::Site::new();
    let config = http_util::config(
        &site.root,
        &format!("header_timeout_ms = {header_timeout_ms}\nlingering_timeout_ms = {LINGER_MS}"),
    );
    let loopd = Loopd::start_with(&config, "info", |_| {});
    let addr = loopd.tcp("http");
    let url = format!("http://{addr}/hello.txt");
    let reports = TempDir::new("rel-slow-http");

    // Our own probes, four a second, for the whole attack.
    let probing = Arc::new(AtomicBool::new(true));
    let prober = {
        let probing = probing.clone();
        std::thread::spawn(move || {
            let (mut ok, mut total) = (0, 0);
            let deadline = Instant::now() + window + 2 * TIMEOUT;
            while probing.load(Ordering::SeqCst) && Instant::now() < deadline {
                total += 1;
                if probe(addr) {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            (ok, total)
        })
    };
    let attacks: Vec<_> = ["-H", "-B"]
        .into_iter()
        .map(|mode| {
            let url = url.clone();
            let dir = reports.path().to_path_buf();
            std::thread::spawn(move || attack(mode, &url, &dir, window, conns, rate, interval))
        })
        .collect();

    // Once the attack is under way, time our own slowloris clients.
    std::thread::sleep(Duration::from_secs(3));
    let watched: Vec<_> = (0..WATCHED)
        .map(|_| std::thread::spawn(move || slowloris(addr)))
        .collect();
    let timings: Vec<_> = watched.into_iter().map(|t| t.join().unwrap()).collect();

    let results: Vec<Attack> = attacks.into_iter().map(|t| t.join().unwrap()).collect();
    probing.store(false, Ordering::SeqCst);
    let (probe_ok, probe_total) = prober.join().unwrap();

    let (h, b) = (&results[0], &results[1]);
    let samples = h.samples + b.samples;
    let available = h.available + b.available;
    let availability = available as f64 * 100.0 / samples.max(1) as f64;
    figure("rel_slow_http.slowloris_waves", h.waves);
    figure("rel_slow_http.slowloris_max_connected", h.max_connected);
    figure("rel_slow_http.slowbody_waves", b.waves);
    figure("rel_slow_http.slowbody_max_connected", b.max_connected);
    figure("rel_slow_http.availability_samples", samples);
    figure(
        "rel_slow_http.availability_pct",
        format!("{availability:.1}"),
    );
    figure("rel_slow_http.probe_ok", probe_ok);
    figure("rel_slow_http.probe_total", probe_total);

    let t408: Vec<Duration> = timings.iter().filter_map(|t| t.0).collect();
    let closed: Vec<Duration> = timings.iter().filter_map(|t| t.1).collect();
    let ms = |d: Option<&Duration>| d.map_or(0, |d| d.as_millis());
    figure("rel_slow_http.header_timeout_ms", header_timeout_ms);
    figure("rel_slow_http.got_408", t408.len());
    figure("rel_slow_http.first_408_ms", ms(t408.iter().min()));
    figure("rel_slow_http.last_408_ms", ms(t408.iter().max()));
    figure("rel_slow_http.last_close_ms", ms(closed.iter().max()));

    // The attack really held connections open.
    assert!(
        h.max_connected >= conns as usize / 2,
        "slowloris never held many connections: {h:?}"
    );
    assert!(b.waves > 0 && b.samples > 0, "{b:?}");
    assert_eq!(available, samples, "service unavailable in some samples");
    assert!(probe_total >= 10, "too few probes: {probe_total}");
    assert_eq!(
        probe_ok, probe_total,
        "probe requests failed during the attack"
    );

    // Partial heads get their 408 at the header timeout, and are closed
    // after lingering. The upper bounds add 2-3 s of slack for a loaded
    // 2-core machine; the lower bound has none (a timer never fires early).
    let ht = Duration::from_millis(header_timeout_ms);
    assert_eq!(
        t408.len(),
        WATCHED,
        "slowloris clients without a 408: {timings:?}"
    );
    assert_eq!(
        closed.len(),
        WATCHED,
        "slowloris clients never closed: {timings:?}"
    );
    for (i, &(a, c)) in timings.iter().enumerate() {
        let (a, c) = (a.unwrap(), c.unwrap());
        assert!(
            a >= ht,
            "client {i}: 408 after {a:?}, before the header timeout"
        );
        assert!(
            a <= ht + Duration::from_secs(2),
            "client {i}: 408 only after {a:?} (header timeout {ht:?})"
        );
        assert!(
            c <= ht + Duration::from_millis(LINGER_MS) + Duration::from_secs(3),
            "client {i}: closed only after {c:?}"
        );
    }
}
