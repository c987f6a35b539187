//! The proxy with a slow reader on either side: a 50 MiB download read at
//! 2 MB/s by the client, a 50 MiB upload read at 2 MB/s by the upstream,
//! and both at once: an upstream echoing what it reads at 2 MB/s (it reads
//! nothing while it cannot write) to a client reading at 1 MB/s while it
//! sends as fast as it can. loopd's RSS must stay within the pair's bound
//! (per direction, an output queue at its high watermark plus a chunk, and
//! one chunk held back) plus a few MiB, however fast the other side sends;
//! and every byte must arrive, through the half-close each side makes first.
//!
//! The CI tier reads the first 16 MiB slowly (8 s; the echo, 6 MiB) and
//! the rest at full speed; the soak tier reads all 50 MiB slowly.

mod common;
mod proxy_support;
mod rel_load_util;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use proxy_support::*;
use rel_load_util::status_kib;

const MIB: u64 = 1 << 20;
const LEN: u64 = 50 * MIB;
/// 2 MB/s.
const SLOW_RATE: u64 = 2_000_000;
/// loopd's default output watermark (both sides: the client connection's
/// and the proxy's `upstream_high_watermark`) and its largest read.
const HIGH: u64 = 256 << 10;
const CHUNK: u64 = 64 << 10;
/// "A few MiB": the allocator's slack and loopd's own buffers.
const SLACK_KIB: u64 = 4 << 10;

/// The most one pair may hold (docs/handlers/proxy.md): each way an
/// output queue at its high watermark (the client connection's, and
/// `upstream_high_watermark`) plus one chunk, and one chunk held back.
fn pair_bound_kib() -> u64 {
    2 * (HIGH + CHUNK + CHUNK) / 1024
}

fn slow_bytes() -> u64 {
    tier(16 * MIB, LEN)
}

/// Starts loopd on a proxy to `server` and returns it with its RSS once
/// a first small exchange has run (buffers allocated on first use count
/// in the baseline).
fn start(server: &Server, warm_up: impl FnOnce(&Loopd)) -> (Loopd, u64) {
    let loopd = Loopd::start_with(&proxy_config(&server.url(), "", ""), "info", |_| {});
    warm_up(&loopd);
    let base = status_kib(loopd.pid(), "VmRSS");
    (loopd, base)
}

/// Samples loopd's RSS; keeps the largest.
fn sampler(pid: i32) -> (Arc<Mutex<u64>>, impl FnMut() + Send) {
    let max = Arc::new(Mutex::new(0u64));
    let m = max.clone();
    (max, move || {
        let rss = status_kib(pid, "VmRSS");
        let mut m = m.lock().unwrap();
        *m = (*m).max(rss);
    })
}

fn check_rss(tag: &str, base: u64, max: u64) {
    let growth = max.saturating_sub(base);
    let limit = pair_bound_kib() + SLACK_KIB;
    figure(&format!("proxy_slow.{tag}.rss_base_kib"), base);
    figure(&format!("proxy_slow.{tag}.rss_growth_kib"), growth);
    figure(&format!("proxy_slow.{tag}.rss_limit_kib"), limit);
    assert!(
        growth <= limit,
        "{tag}: loopd grew by {growth} KiB (limit {limit} KiB: the pair's bound {} KiB + {SLACK_KIB} KiB)",
        pair_bound_kib()
    );
}

#[test]
fn a_client_reading_a_download_at_2_mb_s_costs_loopd_only_the_pair_bound() {
    // The client sends a request and half-closes at once; the upstream
    // answers with LEN bytes as fast as it can, then closes. The upstream's
    // EOF therefore arrives while loopd is not reading it (the client is
    // slow) and after loopd has shut the upstream's sending side.
    let server = Server::start(|mut s| {
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        if req == b"warm-up" {
            s.write_all(b"ok").unwrap();
            return;
        }
        let mut w = &s;
        send_stream(&mut w, LEN, 5, None);
    });
    let (loopd, base) = start(&server, |l| {
        let mut c = connect(l.tcp("proxy"));
        c.write_all(b"warm-up").unwrap();
        half_close(&c);
        assert_eq!(read_until_closed(&mut c), b"ok");
    });
    let (max, sample) = sampler(loopd.pid());
    let mut c = connect(loopd.tcp("proxy"));
    c.write_all(b"get").unwrap();
    half_close(&c);
    let got = recv_stream(&mut c, slow_bytes(), SLOW_RATE, sample);
    figure("proxy_slow.download.bytes", got.len);
    figure("proxy_slow.download.sha256_match", got == expected(5, LEN));
    assert_eq!(got, expected(5, LEN), "the download arrived whole");
    let max = *max.lock().unwrap();
    check_rss("download", base, max);
}

#[test]
fn an_upstream_reading_an_upload_at_2_mb_s_costs_loopd_only_the_pair_bound() {
    // The upstream greets and half-closes at once, then reads the upload
    // slowly. The client's EOF therefore arrives while loopd is not
    // reading it (the upstream is slow) and after loopd has shut the
    // client's sending side.
    let (tx, rx) = mpsc::channel::<Digested>();
    let pid = Arc::new(Mutex::new(0i32));
    let max = Arc::new(Mutex::new(0u64));
    let (p, m) = (pid.clone(), max.clone());
    let server = Server::start(move |mut s| {
        s.write_all(b"ready\n").unwrap();
        half_close(&s);
        let pid = *p.lock().unwrap();
        let m = m.clone();
        let sample = move || {
            if pid > 0 {
                let rss = status_kib(pid, "VmRSS");
                let mut m = m.lock().unwrap();
                *m = (*m).max(rss);
            }
        };
        let slow = if pid > 0 { slow_bytes() } else { 0 };
        let _ = tx.send(recv_stream(&mut s, slow, SLOW_RATE, sample));
    });
    let (loopd, base) = start(&server, |l| {
        let mut c = connect(l.tcp("proxy"));
        half_close(&c);
        assert_eq!(read_until_closed(&mut c), b"ready\n");
    });
    let warm = rx.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(warm.len, 0);
    *pid.lock().unwrap() = loopd.pid();
    let mut c = connect(loopd.tcp("proxy"));
    let mut greeting = [0u8; 6];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"ready\n");
    let sent = {
        let mut w = &c;
        send_stream(&mut w, LEN, 6, None)
    };
    half_close(&c);
    let got = rx.recv_timeout(TIMEOUT * 4).expect("the upstream's report");
    // The upstream's half-close came through long ago; now the pair ends.
    assert!(read_until_closed(&mut c).is_empty());
    figure("proxy_slow.upload.bytes", got.len);
    figure("proxy_slow.upload.sha256_match", got == sent);
    assert_eq!(got, sent, "the upload arrived whole");
    let max = *max.lock().unwrap();
    check_rss("upload", base, max);
}

#[test]
fn a_slow_echo_upstream_and_a_slower_client_get_every_byte_at_the_pair_bound() {
    // The upstream echoes what it reads, reading the first `slow` bytes at
    // 2 MB/s and writing each piece back before it reads more; the client
    // sends as fast as it can and reads at 1 MB/s. Both directions are
    // then full at once: the client's queue (it reads slowly), so the
    // proxy stops reading the upstream, whose writes block, so it stops
    // reading too and the queue toward it fills, so the proxy stops
    // reading the client. Nothing may stall, and the pair holds no more
    // than its bound.
    const ECHO_RATE: u64 = 2_000_000;
    const CLIENT_RATE: u64 = 1_000_000;
    let len = tier(16 * MIB, LEN);
    let slow = tier(6 * MIB, LEN);
    let server = Server::start(move |mut s| {
        let pace = Pace::new(ECHO_RATE);
        let mut buf = vec![0u8; 16 << 10];
        let mut echoed = 0u64;
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("the echo upstream reading after {echoed} bytes: {e}"),
            };
            s.write_all(&buf[..n]).expect("the echo upstream writing");
            echoed += n as u64;
            if echoed < slow {
                pace.wait(echoed);
            }
        }
        half_close(&s);
    });
    let (loopd, base) = start(&server, |l| {
        let mut c = connect(l.tcp("proxy"));
        c.write_all(b"warm-up").unwrap();
        half_close(&c);
        assert_eq!(read_until_closed(&mut c), b"warm-up");
    });
    let (max, sample) = sampler(loopd.pid());
    let mut c = connect(loopd.tcp("proxy"));
    let writer = {
        let c = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut w = &c;
            let sent = send_stream(&mut w, len, 7, None);
            half_close(&c);
            sent
        })
    };
    let got = recv_stream(&mut c, slow, CLIENT_RATE, sample);
    let sent = writer.join().expect("the client's writer");
    figure("proxy_slow.echo.bytes", got.len);
    figure("proxy_slow.echo.sha256_match", got == sent);
    assert_eq!(sent.len, len);
    assert_eq!(got, sent, "every byte came back, in order");
    let max = *max.lock().unwrap();
    check_rss("echo", base, max);
}
