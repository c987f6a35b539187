//! Reliability: slow readers on large files. 500 clients fetch a 100 MiB
//! file and read it slowly while wrk fetches a small file. loopd's memory
//! must not grow with what the slow readers have not read yet (RSS growth
//! ≤ 16 MiB), and the fast clients must keep their throughput (wrk ≥ 80% of
//! a baseline run without the slow readers, on the same machine in the same
//! test).

mod common;
mod rel_load_util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rel_load_util::*;

const READERS: usize = 500;
const BIG: u64 = 100 << 20;
/// Bytes a slow reader takes per turn, and how often it takes a turn
/// (about 20 KB/s each, 10 MB/s for all of them).
const SIP: usize = 1024;
const TURN: Duration = Duration::from_millis(50);
const MAX_RSS_GROWTH_KIB: u64 = 16 << 10;

/// What the slow readers saw.
#[derive(Debug, Default)]
struct ReadersReport {
    /// Readers whose response started with a 200 status line.
    ok: usize,
    /// Readers the server closed or reset before they were done.
    cut: usize,
    /// Body and head bytes read in all.
    bytes: u64,
}

/// Connects the slow readers and sends their requests; `ready` says when
/// every one has received the start of its response.
fn slow_readers(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
) -> std::thread::JoinHandle<ReadersReport> {
    std::thread::spawn(move || {
        let mut socks = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("a slow reader");
            small_receive_buffer(&s, 8192);
            s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s.set_nonblocking(true).unwrap();
            socks.push(Some(s));
        }
        let mut head: Vec<Vec<u8>> = vec![Vec::new(); READERS];
        let mut report = ReadersReport::default();
        let mut buf = [0u8; SIP];
        let deadline = Instant::now() + 10 * TIMEOUT;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            for (i, slot) in socks.iter_mut().enumerate() {
                let Some(s) = slot else { continue };
                match s.read(&mut buf) {
                    Ok(0) => {
                        report.cut += 1;
                        *slot = None;
                    }
                    Ok(n) => {
                        report.bytes += n as u64;
                        if head[i].len() < 12 {
                            head[i].extend_from_slice(&buf[..n.min(12)]);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => {
                        report.cut += 1;
                        *slot = None;
                    }
                }
            }
            if !ready.load(Ordering::SeqCst) && head.iter().all(|h| h.len() >= 12) {
                ready.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(TURN);
        }
        report.ok = head
            .iter()
            .filter(|h| h.starts_with(b"HTTP/1.1 200"))
            .count();
        report
    })
}

#[test]
fn slow_readers_of_a_large_file_cost_no_memory_and_fast_clients_keep_going() {
    raise_nofile(4096);
    let secs: u32 = tier(4, 15);
    let site = TempDir::new("rel-slow-readers");
    let root = site.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // Sparse: 100 MiB that cost neither disk nor time to create.
    let big = std::fs::File::create(root.join("big.bin")).unwrap();
    big.set_len(BIG).unwrap();
    std::fs::write(root.join("small.txt"), "small and fast\n").unwrap();
    let config = format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"
access_log = false
"#,
        root.display()
    );
    let loopd = Loopd::start_with(&config, "info", |_| {});
    let pid = loopd.pid();
    let addr = loopd.tcp("http");
    let url = format!("http://{addr}/small.txt");

    // Warm up (wrk's connections, loopd's buffers), then the baseline.
    wrk(&url, 16, 1);
    let base = wrk(&url, 16, secs);
    assert!(base.requests > 0 && base.errors == 0, "{base:?}");
    let rss0 = status_kib(pid, "VmRSS");

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let readers = slow_readers(addr, stop.clone(), ready.clone());
    let deadline = Instant::now() + 2 * TIMEOUT;
    while !ready.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the slow readers' responses did not all start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let every queue between loopd and the readers fill up.
    std::thread::sleep(Duration::from_secs(1));

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            let deadline = Instant::now() + 10 * TIMEOUT;
            while sampling.load(Ordering::SeqCst) && Instant::now() < deadline {
                max = max.max(status_kib(pid, "VmRSS"));
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        })
    };
    let loaded = wrk(&url, 16, secs);
    sampling.store(false, Ordering::SeqCst);
    let rss_max = sampler.join().unwrap().max(status_kib(pid, "VmRSS"));
    stop.store(true, Ordering::SeqCst);
    let report = readers.join().unwrap();

    let growth = rss_max.saturating_sub(rss0);
    let ratio = loaded.rps * 100.0 / base.rps;
    figure("rel_slow_readers.readers", READERS);
    figure("rel_slow_readers.readers_ok", report.ok);
    figure("rel_slow_readers.readers_cut", report.cut);
    figure("rel_slow_readers.rss_growth_kib", growth);
    figure(
        "rel_slow_readers.wrk_rps_baseline",
        format!("{:.0}", base.rps),
    );
    figure(
        "rel_slow_readers.wrk_rps_loaded",
        format!("{:.0}", loaded.rps),
    );
    figure("rel_slow_readers.wrk_ratio_pct", format!("{ratio:.1}"));
    figure("rel_slow_readers.wrk_errors", loaded.errors);

    assert_eq!(report.ok, READERS, "slow readers without a 200");
    assert_eq!(report.cut, 0, "slow readers cut off mid-file");
    assert!(
        report.bytes < READERS as u64 * BIG,
        "the readers were not slow: they read everything"
    );
    assert_eq!(loaded.errors, 0, "wrk saw errors with the slow readers on");
    // Under valgrind (LOOPD_VALGRIND=1) loopd's RSS is mostly valgrind's
    // own (about 100 MiB, growing with what it tracks): the figure says
    // nothing about loopd there.
    assert!(
        valgrind() || growth <= MAX_RSS_GROWTH_KIB,
        "loopd's RSS grew by {growth} KiB (from {rss0} KiB) with {READERS} slow readers"
    );
    // The throughput ratio is the issue's figure, but on a shared 2-core
    // machine wrk, loopd and 500 readers compete for the same cores, so the
    // CI tier only prints it; the soak tier asserts it.
    if soak() {
        assert!(
            ratio >= 80.0,
            "wrk throughput with slow readers is {ratio:.1}% of the baseline"
        );
    }
}
