//! Reliability: a soak of mixed load on all four shipped handlers in one
//! loopd (issue 8, item 14): echo, chat, http and udp-broadcast (relaying on
//! loopback to a unicast receiver of the test), for 20 s in the CI tier and
//! 30 minutes in the soak tier.
//!
//! Figures: loopd's RSS drift between a reference point (minute 5 of 30 in
//! the soak tier; the end of the first third in CI) and the end, the open
//! file descriptors back at their baseline once the clients have left, and
//! no failed request. Every client checks every answer byte for byte, and
//! reconnects every few requests so connections come and go all the time.
//!
//! `LOOPD_VALGRIND=1` runs the same test with loopd under valgrind (see
//! tests/common): the harness then fails it on any valgrind error.

mod chat_support;
mod common;
mod http_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_support::Chatter;
use common::*;

/// Requests per connection before a client reconnects.
const PER_CONNECTION: usize = 50;

fn config(root: &std::path::Path, udp_target: SocketAddr) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "chat"
plugin = "chat"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
# Each session says 50 lines as fast as the round trips go: no
# per-sender rate limit (it would make chat sessions wait, not fail).
rate_lines = 0
rate_bytes = 0

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"

[[handler]]
name = "relay"
plugin = "udp-broadcast"
listen = ["udp://127.0.0.1:0"]
[handler.config]
broadcast_to = ["{udp_target}"]
rate_per_source = 1000000
burst = 1000000
"#,
        root.display()
    )
}

/// Counts of one kind of client.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    /// Runs one connection's worth of requests; a panic inside (a wrong
    /// answer, a timeout, a refused connection) counts as one failure.
    fn session(&self, what: &str, f: impl FnOnce() -> u64) {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(n) => {
                self.ok.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
                    .unwrap_or("?");
                eprintln!("rel_soak: a {what} session failed: {msg}");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn echo_session(addr: SocketAddr, round: usize) -> u64 {
    let mut s = tcp(addr);
    for i in 0..PER_CONNECTION {
        let data = pattern(1 + (round * 131 + i * 977) % 8000, (round + i) as u8);
        s.write_all(&data).unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).unwrap();
        assert!(back == data, "echo: wrong bytes");
    }
    PER_CONNECTION as u64
}

/// Joins `room`, skipping the join and leave notices of other clients
/// passing through the lobby meanwhile.
fn join_room(c: &mut Chatter, room: &str) {
    c.send(&format!("/join {room}"));
    let want = format!("* you are now in {room}");
    loop {
        let line = c.recv();
        if line == want {
            return;
        }
        assert!(
            line.starts_with("* ") && (line.ends_with(" joined") || line.ends_with(" left")),
            "{}: {line:?} while joining {room}",
            c.nick
        );
    }
}

fn chat_session(addr: SocketAddr, worker: usize, round: usize) -> u64 {
    let room = format!("soak-{worker}");
    let mut a = Chatter::join(addr);
    join_room(&mut a, &room);
    let mut b = Chatter::join(addr);
    join_room(&mut b, &room);
    a.expect(&format!("* {} joined", b.nick));
    for i in 0..PER_CONNECTION {
        let text = format!("round {round} line {i} {}", "z".repeat(i * 7));
        a.send(&text);
        b.expect(&format!("{}: {text}", a.nick));
    }
    a.expect_reply("/quit", "* bye");
    assert_eq!(a.read_to_eof(), "");
    b.expect(&format!("* {} left", a.nick));
    b.expect_reply("/quit", "* bye");
    PER_CONNECTION as u64
}

fn http_session(addr: SocketAddr, files: &[(String, Vec<u8>)], round: usize) -> u64 {
    let mut c = http_util::Client::connect(addr);
    for i in 0..PER_CONNECTION {
        let (path, body) = &files[(round + i) % files.len()];
        let resp = c.get(path);
        assert_eq!(resp.status, 200, "GET {path}");
        assert!(resp.body == *body, "GET {path}: wrong body");
    }
    PER_CONNECTION as u64
}

fn udp_session(tx: &UdpSocket, rx: &UdpSocket, relay: SocketAddr, round: usize) -> u64 {
    let mut buf = [0u8; 2048];
    for i in 0..PER_CONNECTION {
        let msg = format!("udp {round} {i} {}", "q".repeat(i * 13));
        tx.send_to(msg.as_bytes(), relay).unwrap();
        let n = rx.recv(&mut buf).expect("the relayed datagram");
        assert_eq!(&buf[..n], msg.as_bytes(), "relayed datagram");
    }
    PER_CONNECTION as u64
}

/// Open file descriptors of a process.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn mixed_load_on_all_four_handlers_leaves_memory_and_fds_where_they_were() {
    let duration = tier(Duration::from_secs(20), Duration::from_secs(30 * 60));
    let sample_every = tier(Duration::from_secs(2), Duration::from_secs(60));
    // The reference point: minute 5 of 30, or the end of CI's first third.
    let reference_at = tier(duration / 3, Duration::from_secs(5 * 60));

    let site = http_util::Site::new();
    let files: Vec<(String, Vec<u8>)> = ["hello.txt", "data.bin", "index.html", "a b/c d.txt"]
        .iter()
        .map(|f| (format!("/{}", f.replace(' ', "%20")), site.file(f)))
        .collect();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let loopd = Loopd::start_with(
        &config(&site.root, rx.local_addr().unwrap()),
        "info",
        |_| {},
    );
    let pid = loopd.pid();
    let (echo, chat, http) = (loopd.tcp("echo"), loopd.tcp("chat"), loopd.tcp("http"));
    let relay: SocketAddr = loopd.listeners["relay"][0]
        .strip_prefix("udp://")
        .unwrap()
        .parse()
        .unwrap();
    // The http handler's open-file cache keeps the descriptor of a large
    // file it served (data.bin): it is part of the baseline. Each request
    // closes its connection, read to its end, so none is counted.
    for (path, body) in &files {
        let all = http_util::exchange_all(
            http,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(all.ends_with(body), "warming {path}");
    }
    let fd_baseline = fd_count(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Arc<[Tally; 4]> = Arc::new(Default::default());
    let mut workers = Vec::new();
    let kinds = [0usize, 0, 1, 1, 2, 2, 3];
    for (w, &kind) in kinds.iter().enumerate() {
        let stop = stop.clone();
        let tallies = tallies.clone();
        let files = files.clone();
        let rx = if kind == 3 {
            Some(rx.try_clone().unwrap())
        } else {
            None
        };
        workers.push(std::thread::spawn(move || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = &tallies[kind];
                match kind {
                    0 => t.session("echo", || echo_session(echo, round)),
                    1 => t.session("chat", || chat_session(chat, w, round)),
                    2 => t.session("http", || http_session(http, &files, round)),
                    _ => t.session("udp", || {
                        udp_session(&tx, rx.as_ref().unwrap(), relay, round)
                    }),
                }
                round += 1;
            }
        }));
    }

    // Sample RSS until the time is up.
    let started = Instant::now();
    let mut samples: Vec<(Duration, usize)> = Vec::new();
    while started.elapsed() < duration {
        std::thread::sleep(sample_every.min(duration.saturating_sub(started.elapsed())));
        let rss = chat_support::status_kib(pid, "VmRSS");
        samples.push((started.elapsed(), rss));
        eprintln!(
            "rel_soak: {:>6.1} s: VmRSS {rss} KiB, {} fds",
            started.elapsed().as_secs_f64(),
            fd_count(pid)
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a load thread");
    }

    // Every client is gone: loopd's descriptors go back to the baseline
    // (it closes each connection as its peer's EOF arrives).
    let deadline = Instant::now() + TIMEOUT;
    let mut fds = fd_count(pid);
    while fds != fd_baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        fds = fd_count(pid);
    }

    let reference = samples
        .iter()
        .find(|(t, _)| *t >= reference_at)
        .map(|&(_, r)| r)
        .expect("a sample at the reference point");
    let end = samples.last().unwrap().1;
    let drift_pct = 100.0 * (end as f64 - reference as f64) / reference as f64;
    let ok: u64 = tallies.iter().map(|t| t.ok.load(Ordering::Relaxed)).sum();
    let failed: u64 = tallies
        .iter()
        .map(|t| t.failed.load(Ordering::Relaxed))
        .sum();
    let per_kind: Vec<u64> = tallies
        .iter()
        .map(|t| t.ok.load(Ordering::Relaxed))
        .collect();
    eprintln!("rel_soak: requests per handler (echo, chat, http, udp): {per_kind:?}");

    figure("rel_soak.duration_s", duration.as_secs());
    figure("rel_soak.requests", ok);
    figure("rel_soak.failed_requests", failed);
    figure("rel_soak.rss_reference_kib", reference);
    figure("rel_soak.rss_end_kib", end);
    figure("rel_soak.rss_drift_pct", format!("{drift_pct:.2}"));
    figure("rel_soak.fd_baseline", fd_baseline);
    figure("rel_soak.fd_after", fds);
    assert_eq!(failed, 0, "failed requests (see the messages above)");
    assert!(
        per_kind.iter().all(|&n| n > 0),
        "a handler got no load: {per_kind:?}"
    );
    assert_eq!(
        fds, fd_baseline,
        "loopd's open descriptors did not return to the baseline"
    );
    if valgrind() {
        // valgrind's own memory is in loopd's RSS: the figure says nothing.
        return;
    }
    // The issue's bound, 2%, in the soak tier (minute 5 to minute 30).
    // CI's 20 s is too short for it: loopd's RSS climbs for its first
    // 10 to 15 s under this load (the chat and relay tables, allocator
    // arenas and socket buffers reaching their working size: measured
    // 10.7 -> 12.2 MiB by second 14, then flat for the next 66 s), so a
    // reference point at second 7 sees warm-up, not drift. CI bounds the
    // growth at 2% or 2 MiB, whichever is more: a leak per request or per
    // connection (hundreds of thousands of each) still shows.
    let limit_pct = if soak() {
        2.0
    } else {
        2.0f64.max(100.0 * 2048.0 / reference as f64)
    };
    assert!(
        drift_pct <= limit_pct,
        "RSS drifted {drift_pct:.2}% ({reference} KiB -> {end} KiB); limit {limit_pct:.2}%; samples {samples:?}"
    );
}
