//! Reliability: a graceful shutdown loses nothing. SIGTERM arrives while 50
//! large downloads are in flight (slow-ish readers) and 20 chat clients
//! have output queued. Every download must complete with the right SHA-256,
//! every chat client must get all of its queued lines (then the shutdown
//! notice, then EOF), the listeners must refuse new connections at once,
//! and loopd must exit 0 within `shutdown_timeout_ms`.

mod chat_support;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_support::Chatter;
use common::*;

const DOWNLOADS: usize = 50;
const FILES: usize = 5;
const CHATTERS: usize = 20;
const SHUTDOWN_TIMEOUT_MS: u64 = 20_000;

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum (coreutils)");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// What one download got.
struct Download {
    status: u16,
    content_length: usize,
    /// Body bytes received.
    len: usize,
    /// Their SHA-256 (hashed as they arrive: nothing is kept).
    sha: String,
    /// The server closed the connection after the body, with nothing more.
    clean_eof: bool,
}

/// Fetches `path` reading at most 16 KiB every 10 ms (about 1.6 MB/s), with
/// a small receive buffer (128 KiB) so most of the file is still on the
/// server side when SIGTERM comes; `progress` counts body bytes as they
/// arrive.
fn slow_download(addr: SocketAddr, path: &str, progress: &AtomicUsize) -> Download {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting for a download");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    small_receive_buffer(&s, 128 << 10);
    let mut w = s.try_clone().unwrap();
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut r = BufReader::with_capacity(16 << 10, s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut content_length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap();
            }
        }
    }
    let mut hasher = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sha256sum (coreutils)");
    let mut hash_in = hasher.stdin.take().unwrap();
    let mut len = 0;
    let mut buf = vec![0u8; 16 << 10];
    while len < content_length {
        let want = buf.len().min(content_length - len);
        match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                hash_in.write_all(&buf[..n]).unwrap();
                len += n;
                progress.fetch_add(n, Ordering::SeqCst);
            }
            Err(e) => panic!("download of {path}: {e} after {len} bytes"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(hash_in);
    let out = hasher.wait_with_output().unwrap();
    let sha = String::from_utf8(out.stdout).unwrap()[..64].to_string();
    let mut rest = Vec::new();
    let clean_eof = r.read_to_end(&mut rest).is_ok() && rest.is_empty();
    Download {
        status,
        content_length,
        len,
        sha,
        clean_eof,
    }
}

/// Whether a connect to `addr` is refused (nothing listens any more).
fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// The state letter of /proc/<pid>/stat ('Z' once exited, unreaped).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
        Err(_) => true,
    }
}

#[test]
fn sigterm_during_downloads_and_queued_chat_output_loses_nothing() {
    let site = TempDir::new("rel-shutdown-site");
    let root = site.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // Larger than the kernel's largest socket send buffer (4 MiB): loopd
    // itself still has part of every file to send when SIGTERM comes. At
    // about 1.6 MB/s per reader, 16 MiB (soak) takes some 10 s: well within
    // shutdown_timeout_ms, so the test measures loopd, not the readers.
    let file_len: usize = tier(8 << 20, 16 << 20);
    let mut want_sha = Vec::new();
    for k in 0..FILES {
        let data = pattern(file_len, 10 + k as u8);
        std::fs::write(root.join(format!("f{k}.bin")), &data).unwrap();
        want_sha.push(sha256(&data));
    }
    let config = format!(
        r#"
[runtime]
shutdown_timeout_ms = {SHUTDOWN_TIMEOUT_MS}

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"

[[handler]]
name = "chat"
plugin = "chat"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
# The speaker floods on purpose: no per-sender rate limit.
rate_lines = 0
rate_bytes = 0
"#,
        root.display()
    );
    let mut loopd = Loopd::start_with(&config, "info", |_| {});
    let pid = loopd.pid();
    let http = loopd.tcp("http");
    let chat = loopd.tcp("chat");

    // 20 chat clients; the 19 listeners stop reading while the speaker says
    // `lines` lines (about 600 KB for each): their output queues up on the
    // server's side (their receive buffers are kept small; not below the
    // loopback MSS of 64 KiB, where the receiver's silly-window avoidance
    // stalls the flow for seconds at a time).
    let lines: usize = tier(3000, 4000);
    let mut chatters: Vec<Chatter> = (0..CHATTERS).map(|_| Chatter::join(chat)).collect();
    for c in &chatters[1..] {
        small_receive_buffer(c.stream(), 128 << 10);
    }
    let pad = "x".repeat(180);
    let speaker = &mut chatters[0];
    let mut said = String::new();
    for i in 0..lines {
        said.push_str(&format!("m{i:05} {pad}\n"));
    }
    speaker.send_raw(said.as_bytes());
    // A command round trip: every line before it has been handled (and
    // relayed) once its answer comes.
    speaker.send("/rooms");
    loop {
        let line = speaker.recv();
        if line.starts_with("* rooms: ") {
            break;
        }
        assert!(line.ends_with(" joined"), "speaker got {line:?}");
    }
    let speaker_nick = speaker.nick.clone();

    // 50 downloads, slow-ish readers.
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..DOWNLOADS).map(|_| AtomicUsize::new(0)).collect());
    let downloads: Vec<_> = (0..DOWNLOADS)
        .map(|i| {
            let progress = progress.clone();
            std::thread::spawn(move || {
                slow_download(http, &format!("/f{}.bin", i % FILES), &progress[i])
            })
        })
        .collect();
    // SIGTERM once every download is under way.
    let deadline = Instant::now() + TIMEOUT;
    while progress
        .iter()
        .any(|p| p.load(Ordering::SeqCst) < (256 << 10))
    {
        assert!(Instant::now() < deadline, "downloads did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    let in_flight = progress
        .iter()
        .filter(|p| p.load(Ordering::SeqCst) < file_len)
        .count();
    let t_signal = Instant::now();
    loopd.signal(libc::SIGTERM);
    figure("rel_shutdown.downloads_in_flight", in_flight);
    assert_eq!(
        in_flight, DOWNLOADS,
        "downloads finished before SIGTERM: the test proves nothing"
    );

    // The exit time, watched from the side (the reading below takes time).
    let exit_watch = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TIMEOUT_MS) + TIMEOUT;
        while !exited(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        t_signal.elapsed()
    });

    // The listeners refuse new connections at once: poll until they do.
    let deadline = Instant::now() + TIMEOUT;
    while !refused(http) {
        assert!(
            Instant::now() < deadline,
            "http still accepts after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let refused_after = t_signal.elapsed();
    figure("rel_shutdown.refused_after_ms", refused_after.as_millis());
    assert!(
        loopd.wait_for_log("shutting down", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert!(refused(chat), "chat still accepts after SIGTERM");
    // "At once": as soon as the loop takes the signal; the bound is only
    // slack for a loaded 2-core machine (the figure shows the real time).
    assert!(
        refused_after <= Duration::from_secs(2),
        "the listener accepted connections for {refused_after:?} after SIGTERM"
    );

    // Every chat client gets all that was queued for it, then the notice.
    let mut flushed = 0;
    for (n, c) in chatters.iter_mut().enumerate() {
        let (got, err) = c.read_until_closed();
        assert!(err.is_none(), "chat client {n}: {err:?}");
        assert_eq!(
            got.last().map(String::as_str),
            Some("* server shutting down"),
            "chat client {n}'s last line"
        );
        if n == 0 {
            flushed += 1;
            continue;
        }
        let relayed: Vec<&String> = got
            .iter()
            .filter(|l| l.starts_with(&format!("{speaker_nick}: ")))
            .collect();
        let complete = relayed.len() == lines
            && relayed
                .iter()
                .enumerate()
                .all(|(i, l)| **l == format!("{speaker_nick}: m{i:05} {pad}"));
        assert!(
            complete,
            "chat client {n} got {} of {lines} lines, or out of order",
            relayed.len()
        );
        flushed += 1;
    }
    figure("rel_shutdown.chat_flushed", flushed);
    assert_eq!(flushed, CHATTERS);

    // Every download completes, byte for byte.
    let mut intact = 0;
    for (i, d) in downloads.into_iter().enumerate() {
        let d = d.join().expect("download thread");
        assert_eq!(d.status, 200, "download {i}");
        assert_eq!(d.content_length, file_len, "download {i}");
        assert_eq!(d.len, file_len, "download {i} cut short");
        assert!(
            d.clean_eof,
            "download {i}: not closed cleanly after the body"
        );
        if d.sha == want_sha[i % FILES] {
            intact += 1;
        }
    }
    figure("rel_shutdown.downloads_intact", intact);
    assert_eq!(intact, DOWNLOADS, "downloads with the wrong SHA-256");

    let exit_after = exit_watch.join().unwrap();
    let status = loopd.wait_exit(TIMEOUT);
    figure("rel_shutdown.exit_after_ms", exit_after.as_millis());
    figure("rel_shutdown.shutdown_timeout_ms", SHUTDOWN_TIMEOUT_MS);
    let logs = loopd.logs();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(!logs.contains("shutdown timeout"), "{logs}");
    assert!(
        exit_after < Duration::from_millis(SHUTDOWN_TIMEOUT_MS),
        "loopd exited {exit_after:?} after SIGTERM"
    );
}

/// Chat holds a slow client's output itself once loopd's queue is at its
/// high watermark. At shutdown that held output, and the shutdown notice
/// after it, must still reach the client.
#[test]
fn chat_output_held_back_at_shutdown_is_delivered() {
    let config = format!(
        r#"
[runtime]
shutdown_timeout_ms = {SHUTDOWN_TIMEOUT_MS}

[[handler]]
name = "chat"
plugin = "chat"
listen = ["tcp://127.0.0.1:0"]
output_high_watermark = 65536
output_low_watermark = 16384
[handler.config]
max_pending = 67108864
rate_lines = 0
rate_bytes = 0
"#
    );
    let mut loopd = Loopd::start_with(&config, "info", |_| {});
    let chat = loopd.tcp("chat");
    let mut slow = Chatter::join(chat);
    small_receive_buffer(slow.stream(), 128 << 10);
    let mut speaker = Chatter::join(chat);
    // Far more than the kernel's socket buffers take (4 MiB at most):
    // the rest waits in loopd's queue and in chat.
    let lines = 40_000;
    let pad = "y".repeat(180);
    let mut said = String::new();
    for i in 0..lines {
        said.push_str(&format!("h{i:05} {pad}\n"));
    }
    let writer = {
        let mut w = speaker.stream().try_clone().unwrap();
        std::thread::spawn(move || w.write_all(said.as_bytes()))
    };
    writer.join().unwrap().expect("the speaker's lines");
    speaker.send("/rooms");
    loop {
        let line = speaker.recv();
        if line.starts_with("* rooms: ") {
            break;
        }
    }
    loopd.signal(libc::SIGTERM);
    assert!(
        loopd.wait_for_log("shutting down", TIMEOUT),
        "{}",
        loopd.logs()
    );
    let (got, err) = slow.read_until_closed();
    assert!(err.is_none(), "{err:?}");
    let relayed: Vec<&String> = got
        .iter()
        .filter(|l| l.starts_with(&format!("{}: ", speaker.nick)))
        .collect();
    figure("rel_shutdown.held_lines_delivered", relayed.len());
    assert_eq!(relayed.len(), lines, "lines lost at shutdown");
    assert!(
        relayed
            .iter()
            .enumerate()
            .all(|(i, l)| **l == format!("{}: h{i:05} {pad}", speaker.nick)),
        "lines out of order"
    );
    assert_eq!(
        got.last().map(String::as_str),
        Some("* server shutting down")
    );
    let status = loopd.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", loopd.logs());
}
