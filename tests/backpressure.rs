//! Bounded memory and the watermark contract: a peer that sends without
//! reading is slowed down by TCP (loopd stops reading while its output is
//! over the high watermark) instead of growing loopd's memory; a handler whose
//! send is refused with AGAIN gets `on_writable` once the queue drains below
//! the low watermark.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::*;

const HIGH_WATERMARK: usize = 256 << 10;

/// A field of /proc/<pid>/status, in KiB (VmRSS, VmHWM).
fn status_kib(pid: i32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_sender_that_never_reads_is_blocked_and_loopd_memory_stays_bounded() {
    const TOTAL: usize = 64 << 20;
    /// Far more than loopd's own buffers (a 256 KiB queue, a read buffer),
    /// far less than what it would hold had it kept reading.
    const MAX_GROWTH_KIB: usize = 16 << 10;
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
"#,
    );
    let addr = loopd.tcp("echo");
    // Warm up (first connection, first buffers), then measure the baseline.
    let warm = pattern(300_000, 1);
    assert!(echo_roundtrip(tcp(addr), &warm) == warm);
    let baseline = status_kib(loopd.pid(), "VmRSS");

    let data = pattern(TOTAL, 33);
    let mut s = tcp(addr);
    // A write that makes no progress for this long counts as blocked.
    s.set_write_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut writer = s.try_clone().unwrap();
    let to_send = data.clone();
    let w = std::thread::spawn(move || {
        let mut sent = 0usize;
        while sent < to_send.len() {
            let want = (256 << 10).min(to_send.len() - sent);
            match writer.write(&to_send[sent..sent + want]) {
                Ok(n) => {
                    sent += n;
                    // A blocking write returns short only when it timed out.
                    if n < want {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("write to loopd: {e}"),
            }
        }
        sent
    });
    let sent = w.join().expect("writer thread");
    assert!(
        sent < TOTAL,
        "all {TOTAL} bytes were accepted without the client reading: loopd did not push back"
    );

    let rss = status_kib(loopd.pid(), "VmRSS");
    let peak = status_kib(loopd.pid(), "VmHWM");
    eprintln!(
        "accepted {sent} bytes before blocking; loopd VmRSS {baseline} KiB -> {rss} KiB (peak {peak} KiB)"
    );
    assert!(
        rss < baseline + MAX_GROWTH_KIB,
        "loopd grew from {baseline} KiB to {rss} KiB while {sent} bytes were unread"
    );
    assert!(
        peak < baseline + MAX_GROWTH_KIB,
        "loopd peaked at {peak} KiB (baseline {baseline} KiB) while {sent} bytes were unread"
    );

    // Now read: exactly the accepted bytes come back, in order, then EOF.
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::with_capacity(sent);
    s.read_to_end(&mut got).expect("the echo, then EOF");
    assert_eq!(got.len(), sent, "echoed byte count");
    assert!(got == data[..sent], "the echo differs from what was sent");
    assert!(loopd.logs().lines().all(|l| !l.contains("cannot queue")));
}

/// Parses `stats opens=.. closes=.. open=.. violations=.. last_send_after_close=.. writable=..`.
fn stat(line: &str, key: &str) -> String {
    assert!(line.starts_with("stats "), "not a stats line: {line:?}");
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_string()
}

#[test]
fn flood_until_again_then_on_writable_after_the_queue_drains() {
    let loopd = Loopd::start(&probe_config("framing = \"line\""));
    let addr = loopd.tcp("probe");
    let mut flooded = LineClient::connect(addr);
    let mut observer = LineClient::connect(addr);
    assert_eq!(observer.cmd("echo hi"), "hi");

    flooded.send("flood 1024");
    // Wait for the first flood byte: the flood hook has started, so anything
    // the observer sends now is handled after it returned.
    let mut first = [0u8; 1];
    let n = flooded.stream().peek(&mut first).expect("the flood starts");
    assert_eq!((n, first[0]), (1, b'x'));
    // Nobody has read yet: the queue cannot have drained, so on_writable has
    // not run, and the flood reply is held back by the probe.
    let before = observer.cmd("stats");
    assert_eq!(stat(&before, "writable"), "0", "{before}");
    assert_eq!(stat(&before, "violations"), "0", "{before}");
    assert_eq!(stat(&before, "open"), "2", "{before}");

    // Read in order: N flood messages, then `writable`, then the held reply.
    let message = "x".repeat(1023);
    let mut count = 0u64;
    let mut line = flooded.recv();
    while line == message {
        count += 1;
        line = flooded.recv();
    }
    assert_eq!(line, "writable", "after {count} flood messages");
    let reply = flooded.recv();
    let Some(rest) = reply.strip_prefix("flood ") else {
        panic!("expected the flood reply after `writable`, got {reply:?}");
    };
    let (accepted, status) = rest.split_once(' ').expect(&reply);
    assert_eq!(
        status, "-1",
        "the last send was refused with AGAIN: {reply}"
    );
    let accepted: u64 = accepted.parse().expect(&reply);
    assert_eq!(
        count, accepted,
        "flood messages read vs accepted by send ({reply})"
    );
    let bytes = count * 1024;
    assert!(
        bytes >= HIGH_WATERMARK as u64,
        "only {bytes} bytes were accepted before AGAIN; the high watermark alone is {HIGH_WATERMARK}"
    );

    let queued = flooded.cmd("queued");
    let queued: usize = queued
        .strip_prefix("queued ")
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("bad reply {queued:?}"));
    assert!(queued < HIGH_WATERMARK, "queued {queued} after draining");

    let stats = flooded.cmd("stats");
    assert_eq!(stat(&stats, "violations"), "0", "{stats}");
    assert_eq!(stat(&stats, "writable"), "1", "{stats}");
    assert_eq!(stat(&stats, "open"), "2", "{stats}");
    assert!(
        !loopd.logs().contains("without a refused send"),
        "{}",
        loopd.logs()
    );

    // The connection still works both ways, and a second flood behaves the same.
    assert_eq!(flooded.cmd("echo after"), "after");
    flooded.send("flood 4096");
    let message = "x".repeat(4095);
    let mut count = 0u64;
    let mut line = flooded.recv();
    while line == message {
        count += 1;
        line = flooded.recv();
    }
    assert_eq!(line, "writable", "after {count} flood messages");
    assert_eq!(flooded.recv(), format!("flood {count} -1"));
    let stats = observer.cmd("stats");
    assert_eq!(stat(&stats, "violations"), "0", "{stats}");
    assert_eq!(stat(&stats, "writable"), "2", "{stats}");
}

/// `output_low_watermark = 0` means "resume once the queue is empty": a
/// client that reads only after loopd's queue filled still gets the whole
/// echo (the queue never goes below 0 bytes, so loopd once stopped for good).
#[test]
fn a_low_watermark_of_zero_resumes_once_the_queue_is_empty() {
    const TOTAL: usize = 4 << 20;
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
output_high_watermark = 4096
output_low_watermark = 0
"#,
    );
    let mut s = tcp(loopd.tcp("echo"));
    small_receive_buffer(&s, 8192);
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let data = pattern(TOTAL, 7);
    let mut writer = s.try_clone().unwrap();
    let to_send = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    // Not read until loopd's queue is full and its reading paused.
    std::thread::sleep(Duration::from_millis(500));
    let mut back = Vec::with_capacity(TOTAL);
    match s.read_to_end(&mut back) {
        Ok(_) => {}
        Err(e) => panic!("after {} of {TOTAL} bytes: {e}", back.len()),
    }
    w.join().unwrap();
    assert!(back == data, "{} of {TOTAL} bytes came back", back.len());
}
