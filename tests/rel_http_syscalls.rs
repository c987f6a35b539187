//! Reliability (issue 13 item 6): with its defaults, a keep-alive request
//! for a cached file costs the http handler no open, stat of the file
//! descriptor, read or close, counted with `strace -c` on the running
//! loopd: what is left is the socket's read and write, the loop's wait and
//! at most one `fstatat` of the path per millisecond (the open-file cache's
//! freshness check). A count is stable where timings on a shared machine
//! are not. With the cache off the same requests make the file syscalls
//! again, which shows the count sees them.

mod common;
mod http_util;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;
use http_util::*;

/// Requests counted per case.
const REQUESTS: u64 = 2_000;

/// Runs `load` while `strace -c -f` is attached to `pid`; returns the calls
/// per syscall.
fn strace_counts(pid: i32, load: impl FnOnce()) -> BTreeMap<String, u64> {
    let dir = TempDir::new("http-strace");
    let out = dir.join("strace.txt");
    let mut child = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace must be installed for this test (apt-get install strace)");
    // Wait until it is attached to every thread ("Process N attached").
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("strace did not attach: {seen:?}"));
        if line.contains("attached") {
            break;
        }
        seen.push(line);
    }
    load();
    // SAFETY: signalling the strace child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // strace detaches, writes its table and ends by the signal.
    child.wait().unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // "% time  seconds  usecs/call  calls  [errors]  syscall"
        if cols.len() < 5 || cols[0].parse::<f64>().is_err() {
            continue;
        }
        let name = cols[cols.len() - 1];
        if name == "total" {
            continue;
        }
        if let Ok(n) = cols[3].parse::<u64>() {
            calls.insert(name.to_string(), n);
        }
    }
    assert!(!calls.is_empty(), "no strace table in:\n{text}");
    calls
}

/// `REQUESTS` keep-alive GETs of `path` on one connection, each checked.
fn load(addr: std::net::SocketAddr, path: &str, body: &[u8]) {
    let mut c = Client::connect(addr);
    for _ in 0..REQUESTS {
        let r = c.get(path);
        assert_eq!((r.status, r.body.as_slice()), (200, body));
    }
}

fn per_request(calls: &BTreeMap<String, u64>, names: &[&str]) -> f64 {
    let n: u64 = names
        .iter()
        .map(|n| calls.get(*n).copied().unwrap_or(0))
        .sum();
    n as f64 / REQUESTS as f64
}

/// Syscalls that touch the served file itself.
const FILE_CALLS: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "close",
    "statx",
    "fstat",
    "newfstat",
    "pread64",
    "read_at",
    "sendfile",
    "sendfile64",
];

#[test]
fn a_cached_keep_alive_request_makes_no_file_syscalls() {
    if valgrind() {
        // Under valgrind the process's syscalls are valgrind's too.
        figure("rel_http_syscalls.skipped_under_valgrind", 1);
        return;
    }
    let site = Site::new();
    std::fs::write(site.root.join("16k.bin"), pattern(16 * 1024, 5)).unwrap();
    let page = site.file("index.html");
    let large = site.file("16k.bin");
    let mut per = BTreeMap::new();
    for (label, extra) in [
        ("default", "access_log = false"),
        ("uncached", "access_log = false\nopen_file_cache_max = 0"),
    ] {
        let loopd = site.serve(extra);
        let addr = loopd.tcp("http");
        for (size, path, body) in [("612b", "/", &page), ("16k", "/16k.bin", &large)] {
            // Warm: the file is in the cache before counting.
            load_some(addr, path, body);
            let calls = strace_counts(loopd.pid(), || load(addr, path, body));
            let total: u64 = calls.values().sum();
            let all = total as f64 / REQUESTS as f64;
            let file = per_request(&calls, FILE_CALLS);
            let stat = per_request(&calls, &["newfstatat", "fstatat64"]);
            eprintln!("{label} {size}: {calls:?}");
            figure(
                &format!("rel_http_syscalls.{label}_{size}_syscalls_per_request"),
                format!("{all:.2}"),
            );
            figure(
                &format!("rel_http_syscalls.{label}_{size}_file_syscalls_per_request"),
                format!("{file:.3}"),
            );
            figure(
                &format!("rel_http_syscalls.{label}_{size}_path_stats_per_request"),
                format!("{stat:.3}"),
            );
            per.insert((label, size), (all, file, stat));
        }
        loopd.assert_no_unexpected_errors();
    }
    for size in ["612b", "16k"] {
        let (all, file, stat) = per[&("default", size)];
        let (uncached_all, uncached_file, _) = per[&("uncached", size)];
        // No open, fstat, read or close per request: a few in all at most
        // (a descriptor the loop itself opens, a stray timer read).
        assert!(file <= 0.01, "{size}: {file} file syscalls per request");
        assert!(stat <= 1.0, "{size}: {stat} path stats per request");
        // recvfrom, sendmsg, the loop's wait and the poller's own calls.
        assert!(all <= 8.5, "{size}: {all} syscalls per request");
        // The count sees file syscalls when there are some.
        assert!(uncached_file >= 2.5, "{size}: uncached {uncached_file}");
        assert!(uncached_all > all, "{size}: {uncached_all} <= {all}");
    }
}

fn load_some(addr: std::net::SocketAddr, path: &str, body: &[u8]) {
    let mut c = Client::connect(addr);
    for _ in 0..10 {
        assert_eq!(c.get(path).body, body);
    }
}
