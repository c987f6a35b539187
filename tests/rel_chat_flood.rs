//! Reliability: one chat client blasts lines (`yes | nc`) into a room of
//! 20 members who each read at about 500 kB/s (issue 20, item 5).
//!
//! Before the per-sender rate limit, the flood turned those healthy readers
//! into "slow consumers" and got them cut off. With the shipped config,
//! chat holds the flooder to the rate by not reading it (`pause_read`):
//! - every reader stays connected and receives the flooder's lines in
//!   order, none missing: line 0, 1, 2, ... up to the last one chat ran;
//! - the flooder is slowed by TCP itself: its writes block (a 200 ms write
//!   timeout expires), and it is never told anything was refused (it gets
//!   no line at all);
//! - what was relayed stays under burst + rate × time.
//!
//! A second test runs the same flood with the limit turned off and checks
//! that readers do get cut off then, so the first one is not passing for
//! lack of pressure.

mod chat_support;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_support::*;
use common::*;

const READERS: usize = 20;
/// How fast each reader reads, in bytes a second.
const READ_RATE: u64 = 500_000;
/// Bytes in one flood line, without `\n`: long enough that the flood is
/// far over 500 kB/s per reader even from a debug build of loopd.
const LINE_LEN: usize = 400;

/// Flood line `n`: `f` and 8 digits, a space, filler.
fn flood_line(n: u64) -> Vec<u8> {
    let mut v = format!("f{n:08} ").into_bytes();
    v.resize(LINE_LEN, b'y');
    v
}

/// The number of a flood line, if `text` is one.
fn flood_number(text: &[u8]) -> Option<u64> {
    let n = std::str::from_utf8(text.get(1..9)?).ok()?.parse().ok()?;
    (text.first() == Some(&b'f') && text == flood_line(n).as_slice()).then_some(n)
}

/// What one reader saw.
#[derive(Debug, Default)]
struct Seen {
    /// Flood line numbers, as they came.
    flood: Vec<u64>,
    /// Lines that are neither flood lines nor join notices.
    unexpected: Vec<String>,
    /// Answered a `/who` at the end: still connected.
    still_connected: bool,
    /// The server closed the connection (cut off).
    cut: bool,
    bytes: u64,
}

/// Connects and reads up to the welcome line; returns the stream and what
/// came after the welcome in the same reads.
fn join(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = tcp(addr);
    small_receive_buffer(&s, 128 << 10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("reading the welcome");
        assert!(n > 0, "closed before the welcome");
        got.extend_from_slice(&buf[..n]);
        if let Some(at) = got.iter().position(|&b| b == b'\n') {
            let welcome = String::from_utf8_lossy(&got[..at]).into_owned();
            welcome_nick(&welcome);
            return (s, got[at + 1..].to_vec());
        }
    }
}

/// Reads at most [`READ_RATE`] bytes a second until `stop`, then sends a
/// `/who` and reads (at the same pace) up to its answer, which proves it is
/// still connected; or until the server closes.
fn read_paced(mut s: TcpStream, mut pending: Vec<u8>, stop: Arc<AtomicBool>) -> Seen {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut seen = Seen::default();
    let started = Instant::now();
    let deadline = started + 4 * TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    let mut start = 0;
    let mut asked = false;
    loop {
        // Whole lines in `pending`.
        while let Some(at) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + at];
            start += at + 1;
            if let Some(text) = line.strip_prefix(b"flooder: ") {
                match flood_number(text) {
                    Some(n) => seen.flood.push(n),
                    None => seen.unexpected.push(String::from_utf8_lossy(line).into()),
                }
            } else if asked && line.starts_with(b"* online in lobby: ") {
                seen.still_connected = true;
                return seen;
            } else if !(line.starts_with(b"* guest-") && line.ends_with(b" joined")) {
                seen.unexpected
                    .push(String::from_utf8_lossy(&line[..line.len().min(80)]).into());
            }
        }
        pending.drain(..start);
        start = 0;
        if !asked && stop.load(Ordering::SeqCst) {
            asked = true;
            if s.write_all(b"/who\n").is_err() {
                seen.cut = true;
                return seen;
            }
        }
        if Instant::now() > deadline {
            return seen;
        }
        // Pacing: never ahead of READ_RATE since the start.
        let allowed = READ_RATE as f64 * started.elapsed().as_secs_f64();
        if seen.bytes as f64 > allowed {
            let ahead = (seen.bytes as f64 - allowed) / READ_RATE as f64;
            std::thread::sleep(Duration::from_secs_f64(ahead.min(0.1)));
            continue;
        }
        match s.read(&mut buf) {
            Ok(0) => {
                seen.cut = true;
                return seen;
            }
            Ok(n) => {
                seen.bytes += n as u64;
                pending.extend_from_slice(&buf[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                seen.cut = true;
                return seen;
            }
        }
    }
}

/// What the flooder's writer did.
#[derive(Debug, Default)]
struct Writer {
    /// Bytes the kernel took from the flooder.
    bytes: u64,
    /// Writes that timed out (200 ms without the socket taking a byte).
    stalls: u64,
}

/// What the flood did.
struct Outcome {
    writer: Writer,
    /// What the flooder received while flooding (nothing, if all is well).
    flooder_got: Vec<u8>,
    seen: Vec<Seen>,
    elapsed: Duration,
    loopd: Loopd,
}

/// Starts loopd on `config`, joins the flooder and the readers, floods for
/// `duration` or until `stop_early()`, then has every reader send a `/who`
/// and read up to its answer, and collects what everyone saw.
fn flood(config: &str, duration: Duration, stop_early: impl Fn(&Loopd) -> bool + Sync) -> Outcome {
    let loopd = Loopd::start(config);
    let addr = loopd.tcp("chat");
    let mut flooder = Chatter::named(addr, "flooder");
    let readers: Vec<(TcpStream, Vec<u8>)> = (0..READERS).map(|_| join(addr)).collect();
    for _ in 0..READERS {
        let line = flooder.recv();
        assert!(line.ends_with(" joined"), "flooder got {line:?}");
    }
    flooder.expect_reply("/rooms", &format!("* rooms: lobby ({})", READERS + 1));

    let stop = Arc::new(AtomicBool::new(false));
    // Kept open until every reader is done: one that finishes first must
    // not make the others hear it leave.
    let kept: Vec<TcpStream> = readers
        .iter()
        .map(|(s, _)| s.try_clone().unwrap())
        .collect();
    let threads: Vec<_> = readers
        .into_iter()
        .map(|(s, pending)| {
            let stop = stop.clone();
            std::thread::spawn(move || read_paced(s, pending, stop))
        })
        .collect();

    // The flood: whole lines, 64 per write, as fast as the socket takes
    // them, until the time is up.
    let started = Instant::now();
    let writer = {
        let mut w = flooder.stream().try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut out = Writer::default();
            let (mut next, mut chunk, mut at) = (0u64, Vec::new(), 0usize);
            while started.elapsed() < duration && !stop.load(Ordering::SeqCst) {
                if at == chunk.len() {
                    chunk.clear();
                    at = 0;
                    for n in next..next + 64 {
                        chunk.extend_from_slice(&flood_line(n));
                        chunk.push(b'\n');
                    }
                    next += 64;
                }
                match w.write(&chunk[at..]) {
                    Ok(n) => {
                        at += n;
                        out.bytes += n as u64;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        out.stalls += 1
                    }
                    Err(e) => panic!("flooding: {e}"),
                }
            }
            out
        })
    };
    std::thread::scope(|scope| {
        let (stop, loopd, stop_early) = (&stop, &loopd, &stop_early);
        scope.spawn(move || {
            while !stop.load(Ordering::SeqCst) && started.elapsed() < duration {
                if stop_early(loopd) {
                    stop.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    });
    let writer = writer.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    let seen = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Up to the last reader's /who answer: lines are relayed until then.
    let elapsed = started.elapsed();
    // Whatever the flooder was sent meanwhile (refusals, say).
    let mut flooder_got = Vec::new();
    let s = flooder.stream();
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&*s).read(&mut buf) {
        if n == 0 {
            break;
        }
        flooder_got.extend_from_slice(&buf[..n]);
    }
    // Gone with a reset: what it still had on its way is dropped.
    reset_on_drop(s);
    drop(flooder);
    drop(kept);
    Outcome {
        writer,
        flooder_got,
        seen,
        elapsed,
        loopd,
    }
}

#[test]
fn a_flooding_sender_is_read_at_the_rate_and_twenty_500_kbps_readers_keep_everything() {
    // The shipped config: the limit at its defaults (10 lines/s, burst 20).
    let config = shipped_chat_config();
    let duration = tier(Duration::from_secs(3), Duration::from_secs(10));
    // `stop_early` only ends the flood early if someone is cut off.
    let cut = |l: &Loopd| l.logs().contains("disconnecting slow consumer");
    let o = flood(&config, duration, cut);
    let line_bytes = LINE_LEN as u64 + 1;
    let sent = o.writer.bytes / line_bytes;
    let relayed = o.seen.iter().map(|s| s.flood.len()).max().unwrap_or(0) as u64;
    let complete = o
        .seen
        .iter()
        .filter(|s| s.still_connected && !s.flood.is_empty())
        .count();
    let cut_off = o.seen.iter().filter(|s| s.cut).count();
    // The burst, then 10 a second (the byte bucket allows 40 of these
    // lines a second: the line bucket is the tighter one), with a second
    // of slack on the measured time.
    let bound = 20 + (10.0 * (o.elapsed.as_secs_f64() + 1.0)) as u64;
    let cpu = cpu_time(o.loopd.pid()).as_secs_f64();
    figure("rel_chat_flood.flood_lines_sent", sent);
    figure("rel_chat_flood.flood_bytes_sent", o.writer.bytes);
    figure("rel_chat_flood.flood_write_stalls", o.writer.stalls);
    figure("rel_chat_flood.relayed", relayed);
    figure("rel_chat_flood.relayed_bound", bound);
    figure("rel_chat_flood.flooder_got_bytes", o.flooder_got.len());
    figure(
        "rel_chat_flood.readers_complete",
        format!("{complete}/{READERS}"),
    );
    figure("rel_chat_flood.readers_cut", cut_off);
    figure("rel_chat_flood.elapsed_ms", o.elapsed.as_millis());
    figure("rel_chat_flood.loopd_cpu_s", format!("{cpu:.2}"));

    for (i, s) in o.seen.iter().enumerate() {
        assert!(s.unexpected.is_empty(), "reader {i}: {:?}", s.unexpected);
        assert!(!s.cut, "reader {i} was cut off");
        assert!(s.still_connected, "reader {i}: {s:?}");
        // Nothing refused, nothing lost, nothing twice: 0, 1, 2, ...
        let want: Vec<u64> = (0..s.flood.len() as u64).collect();
        assert!(
            s.flood == want,
            "reader {i}: a gap, a repeat or out of order"
        );
    }
    assert_eq!(complete, READERS);
    assert!(relayed >= 20, "less than a burst: {relayed}");
    assert!(relayed <= bound, "{relayed} relayed, over {bound}");
    // Nothing was refused, so the flooder was told nothing.
    assert!(
        o.flooder_got.is_empty(),
        "the flooder got {:?}",
        String::from_utf8_lossy(&o.flooder_got)
    );
    // Slowed by TCP: the socket stopped taking its bytes (200 ms without
    // a byte taken, which loopd reading at full speed never allows), and
    // more was sent than relayed (it waits in loopd's and the kernel's
    // buffers).
    assert!(o.writer.stalls >= 1, "the flooder's writes never blocked");
    assert!(sent > relayed, "sent only {sent}");
    let logs = o.loopd.logs();
    assert!(!logs.contains("slow consumer"), "{logs}");
    assert!(
        logs.contains("rate limit (10 lines/s, 16384 bytes/s): paused reading"),
        "{logs}"
    );
}

#[test]
fn without_the_rate_limit_the_same_flood_cuts_readers_off() {
    // The control: the same flood, the limit off. Readers fall behind and
    // are cut off as slow consumers; the flood stops at the first one.
    if valgrind() {
        // Under valgrind loopd relays too slowly to outrun a 500 kB/s
        // reader: there is no pressure to show.
        eprintln!("skipped under LOOPD_VALGRIND=1: loopd is too slow there to flood anyone");
        return;
    }
    let config = chat_config("max_frame = 4096", UNLIMITED);
    let duration = tier(Duration::from_secs(20), Duration::from_secs(20));
    let cut = |l: &Loopd| l.logs().contains("disconnecting slow consumer");
    let o = flood(&config, duration, cut);
    let cut_off = o
        .loopd
        .logs()
        .matches("disconnecting slow consumer")
        .count();
    figure(
        "rel_chat_flood.unlimited_flood_lines_sent",
        o.writer.bytes / (LINE_LEN as u64 + 1),
    );
    figure(
        "rel_chat_flood.unlimited_readers_cut",
        format!("{cut_off}/{READERS}"),
    );
    figure("rel_chat_flood.unlimited_elapsed_ms", o.elapsed.as_millis());
    assert!(
        cut_off >= 1,
        "no reader was cut off without the limit: the flood is too weak"
    );
}
