//! Connection edge cases against the http handler:
//! - half-closes: a client that shuts down its sending side right after
//!   its request still gets the whole response;
//! - lingering close: a client still sending a large body to a route that
//!   refuses it reads the whole 4xx, and the server closes gracefully (no
//!   reset that could destroy the response before the client reads it);
//! - resets mid-response: clients that reset while a large file is on its
//!   way leave loopd alive, serving, and with no descriptor leaked;
//! - a signal storm: SIGUSR1 at about 1 kHz during load fails no request.

mod common;
mod http_util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http_util::*;

const BIG: usize = 4 << 20;
const MID: usize = 256 << 10;

fn site() -> Site {
    let site = Site::new();
    std::fs::write(site.root.join("big.bin"), pattern(BIG, 7)).unwrap();
    std::fs::write(site.root.join("mid.bin"), pattern(MID, 9)).unwrap();
    site
}

/// Reads until the server closes: the bytes, and whether it was a reset
/// rather than an orderly close.
fn read_to_close(s: &mut impl Read) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        assert!(Instant::now() < deadline, "not closed within {TIMEOUT:?}");
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("reading until the server closes: {e}"),
        }
    }
}

/// The number of descriptors a process holds.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Runs `total` jobs on `threads` threads; returns how many succeeded and
/// the first few failures.
fn parallel(
    threads: usize,
    total: usize,
    job: impl Fn(usize) -> Result<(), String> + Sync,
) -> (usize, Vec<String>) {
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                match job(i) {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        let mut f = failures.lock().unwrap();
                        if f.len() < 10 {
                            f.push(format!("#{i}: {e}"));
                        }
                    }
                }
            });
        }
    });
    (ok.into_inner(), failures.into_inner().unwrap())
}

#[test]
fn half_closed_clients_get_their_whole_response() {
    let site = site();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let hello = site.file("hello.txt");
    let mid = site.file("mid.bin");
    let big = site.file("big.bin");
    let total = 1000;
    // Four forms, in turn: keep-alive HTTP/1.1, Connection: close,
    // HTTP/1.0, and two pipelined requests; files small and large (the
    // large ones are still being sent when the EOF arrives).
    let (ok, failures) = parallel(8, total, |i| {
        let (path, body) = match i % 3 {
            0 => ("/hello.txt", &hello),
            1 => ("/mid.bin", &mid),
            _ => ("/big.bin", &big),
        };
        let (raw, count) = match i % 4 {
            0 => (format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"), 1),
            1 => (
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
                1,
            ),
            2 => (format!("GET {path} HTTP/1.0\r\n\r\n"), 1),
            _ => (
                format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(2),
                2,
            ),
        };
        let mut s = tcp(addr);
        s.write_all(raw.as_bytes()).map_err(|e| e.to_string())?;
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let (all, reset) = read_to_close(&mut s);
        if reset {
            return Err(format!("reset after {} bytes", all.len()));
        }
        let resps = parse_all(&all);
        if resps.len() != count {
            return Err(format!("{} responses instead of {count}", resps.len()));
        }
        for r in resps {
            if r.status != 200 || r.body != *body {
                return Err(format!("{path}: {} with {} bytes", r.status, r.body.len()));
            }
        }
        Ok(())
    });
    figure("rel_conn_edges.half_closes", total);
    figure("rel_conn_edges.half_closes_complete", ok);
    assert_eq!(ok, total, "{failures:#?}");
}

#[test]
fn half_closed_echo_clients_get_every_byte_back() {
    // The same through the runtime's own EOF path (the echo handler closes
    // on EOF): what was sent before the half-close is echoed in full before
    // loopd closes. Most payloads fit in the socket buffers; every 100th is
    // 4 MiB, so loopd's output queue fills and it stops reading while the
    // EOF is still behind unread data.
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
"#,
    );
    let addr = loopd.tcp("echo");
    let total = 1000;
    let (ok, failures) = parallel(8, total, |i| {
        let len = if i % 100 == 0 { 4 << 20 } else { 64 << 10 };
        let data = pattern(len, i as u8);
        let mut s = tcp(addr);
        let mut writer = s.try_clone().unwrap();
        let to_send = data.clone();
        let t = std::thread::spawn(move || {
            writer.write_all(&to_send)?;
            writer.shutdown(Shutdown::Write)
        });
        let (got, reset) = read_to_close(&mut s);
        t.join().unwrap().map_err(|e| format!("sending: {e}"))?;
        if reset {
            return Err(format!("reset after {} of {len} bytes", got.len()));
        }
        if got != data {
            return Err(format!("{} bytes back instead of {len}", got.len()));
        }
        Ok(())
    });
    figure("rel_conn_edges.echo_half_closes", total);
    figure("rel_conn_edges.echo_half_closes_complete", ok);
    assert_eq!(ok, total, "{failures:#?}");
}

/// A request head and a large body that the server refuses, sent by one
/// thread while this one reads the response.
struct Refused {
    name: &'static str,
    head: String,
    /// The body: `BODY_LEN` bytes, chunked or not.
    chunked: bool,
    status: u16,
}

const BODY_LEN: usize = 4 << 20;

fn send_refused(addr: SocketAddr, case: &Refused) -> Result<(), String> {
    let mut s = tcp(addr);
    let mut writer = s.try_clone().unwrap();
    let mut raw = case.head.clone().into_bytes();
    if case.chunked {
        raw.extend_from_slice(format!("{BODY_LEN:x}\r\n").as_bytes());
        raw.resize(raw.len() + BODY_LEN, b'b');
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        raw.resize(raw.len() + BODY_LEN, b'b');
    }
    let t = std::thread::spawn(move || {
        let sent = writer.write_all(&raw);
        let _ = writer.shutdown(Shutdown::Write);
        sent
    });
    let (all, reset) = read_to_close(&mut s);
    let sent = t.join().unwrap();
    let resps = std::panic::catch_unwind(|| parse_all(&all)).map_err(|_| {
        format!(
            "a malformed or cut response: {:?}",
            String::from_utf8_lossy(&all)
        )
    })?;
    let [r] = &resps[..] else {
        return Err(format!("{} responses", resps.len()));
    };
    if r.status != case.status {
        return Err(format!("status {} instead of {}", r.status, case.status));
    }
    if reset {
        return Err("the server reset the connection instead of closing it".into());
    }
    if let Err(e) = sent {
        return Err(format!(
            "the server stopped reading the body before the client was done: {e}"
        ));
    }
    Ok(())
}

#[test]
fn a_client_sending_a_large_body_to_a_4xx_reads_the_whole_response() {
    let site = site();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let cases = [
        Refused {
            name: "Content-Length over max_discard_body",
            head: format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY_LEN}\r\n\r\n"
            ),
            chunked: false,
            status: 413,
        },
        Refused {
            name: "POST with a Content-Length body",
            head: format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY_LEN}\r\n\r\n"),
            chunked: false,
            status: 413,
        },
        Refused {
            name: "POST with a chunked body",
            head: "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            chunked: true,
            status: 405,
        },
        Refused {
            name: "GET with a chunked body",
            head: "GET /missing HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            chunked: true,
            status: 404,
        },
        Refused {
            name: "a malformed head",
            head: "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\nContent-Length: 5\r\n\r\n"
                .into(),
            chunked: false,
            status: 400,
        },
    ];
    let rounds = tier(10, 100);
    let mut complete = 0;
    let mut failures = Vec::new();
    for case in &cases {
        for round in 0..rounds {
            match send_refused(addr, case) {
                Ok(()) => complete += 1,
                Err(e) => failures.push(format!("{} #{round}: {e}", case.name)),
            }
        }
    }
    figure("rel_conn_edges.lingering_4xx", cases.len() * rounds);
    figure("rel_conn_edges.lingering_4xx_complete", complete);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(complete, cases.len() * rounds);
}

#[test]
fn a_slow_upload_to_a_4xx_is_read_to_its_end() {
    // The body takes longer than the lingering timeout to arrive, with gaps
    // shorter than one: the server keeps reading (each arrival extends the
    // linger, within lingering_time_ms) instead of resetting the
    // connection halfway through the upload.
    let site = site();
    let loopd = site.serve("lingering_timeout_ms = 1000\nlingering_time_ms = 20000");
    let addr = loopd.tcp("http");
    let rounds = tier(2, 10);
    let mut complete = 0;
    for round in 0..rounds {
        let mut s = tcp(addr);
        let mut writer = s.try_clone().unwrap();
        // 16 parts 100 ms apart: 1.6 s in all, past the 1 s timeout a
        // linger that did not wait for the client would cut it at.
        let parts = 16;
        let part = 64 << 10;
        let t = std::thread::spawn(move || -> io::Result<()> {
            writer.write_all(
                format!(
                    "GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    parts * part
                )
                .as_bytes(),
            )?;
            for _ in 0..parts {
                writer.write_all(&vec![b'u'; part])?;
                // A gap a tenth of lingering_timeout_ms.
                std::thread::sleep(Duration::from_millis(100));
            }
            writer.shutdown(Shutdown::Write)
        });
        let (all, reset) = read_to_close(&mut s);
        let sent = t.join().unwrap();
        let resps = parse_all(&all);
        assert_eq!(resps.len(), 1, "round {round}");
        assert_eq!(resps[0].status, 413);
        assert!(!reset, "round {round}: reset instead of a close");
        assert!(sent.is_ok(), "round {round}: the upload was cut: {sent:?}");
        complete += 1;
    }
    figure("rel_conn_edges.slow_uploads_to_4xx_complete", complete);
    assert_eq!(complete, rounds);
}

#[test]
fn clients_reset_mid_response_leave_loopd_serving() {
    let site = site();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    // The baseline: one connection served and gone.
    assert_eq!(Client::connect(addr).get("/hello.txt").status, 200);
    let baseline = fd_count(loopd.pid());
    let total = 1000;
    let (ok, failures) = parallel(8, total, |_| {
        let mut s = tcp(addr);
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .map_err(|e| e.to_string())?;
        // Part of the response, then a reset (SO_LINGER 0).
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 || !buf.starts_with(b"HTTP/1.1 200 ") {
            return Err(format!(
                "{n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..n.min(40)])
            ));
        }
        reset_on_drop(&s);
        drop(s);
        Ok(())
    });
    figure("rel_conn_edges.resets", ok);
    assert_eq!(ok, total, "{failures:#?}");
    let mut loopd = loopd;
    let alive = loopd.is_running();
    figure("rel_conn_edges.alive_after_resets", alive);
    assert!(alive);
    // Still serving, whole files too.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/big.bin").body, site.file("big.bin"));
    drop(c);
    // Every reset connection's descriptor is released (bounded wait).
    let deadline = Instant::now() + TIMEOUT;
    let mut leaked = fd_count(loopd.pid()).saturating_sub(baseline);
    while leaked > 0 && Instant::now() < deadline {
        pause(50);
        leaked = fd_count(loopd.pid()).saturating_sub(baseline);
    }
    figure("rel_conn_edges.fds_leaked_after_resets", leaked);
    assert_eq!(leaked, 0);
}

#[test]
fn a_sigusr1_storm_fails_no_request() {
    let site = site();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let pid = loopd.pid();
    let storm = Duration::from_secs(tier(3, 10));
    let hello = site.file("hello.txt");
    let mid = site.file("mid.bin");
    let done = AtomicBool::new(false);
    let signals = AtomicUsize::new(0);
    let requests = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let first_failure = std::sync::Mutex::new(None::<String>);
    std::thread::scope(|s| {
        // 1 kHz: signal i goes at i ms (late ones catch up), for the
        // storm's length.
        s.spawn(|| {
            let start = Instant::now();
            for i in 0..storm.as_millis() as u32 {
                let at = start + Duration::from_millis(u64::from(i));
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                // SAFETY: kill with our child's pid and a valid signal.
                if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
                    break;
                }
                signals.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        });
        // Four keep-alive clients, each bounded in count.
        for k in 0..4 {
            let (done, requests, failed, first_failure) =
                (&done, &requests, &failed, &first_failure);
            let (hello, mid) = (&hello, &mid);
            s.spawn(move || {
                let mut c: Option<Client> = None;
                let mut i = 0;
                while !done.load(Ordering::SeqCst) && i < 100_000 {
                    i += 1;
                    let (path, body) = if (i + k) % 4 == 0 {
                        ("/mid.bin", mid)
                    } else {
                        ("/hello.txt", hello)
                    };
                    let result = (|| -> Result<(), String> {
                        let client = match c.as_mut() {
                            Some(c) => c,
                            None => {
                                let s = TcpStream::connect_timeout(&addr, TIMEOUT)
                                    .map_err(|e| e.to_string())?;
                                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                                c.insert(Client {
                                    reader: io::BufReader::new(s.try_clone().unwrap()),
                                    stream: s,
                                })
                            }
                        };
                        client
                            .stream
                            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                            .map_err(|e| e.to_string())?;
                        let r =
                            read_response(&mut client.reader, false).map_err(|e| e.to_string())?;
                        if r.status != 200 || r.body != *body {
                            return Err(format!(
                                "{path}: {} with {} bytes",
                                r.status,
                                r.body.len()
                            ));
                        }
                        Ok(())
                    })();
                    requests.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = result {
                        failed.fetch_add(1, Ordering::SeqCst);
                        first_failure.lock().unwrap().get_or_insert(e);
                        c = None;
                    }
                    // A new connection now and then, so accepts are in the
                    // storm too.
                    if i % 50 == 0 {
                        c = None;
                    }
                }
            });
        }
    });
    let mut loopd = loopd;
    let alive = loopd.is_running();
    let signals = signals.into_inner();
    let requests = requests.into_inner();
    let failed = failed.into_inner();
    figure("rel_conn_edges.signal_storm_signals", signals);
    figure("rel_conn_edges.signal_storm_requests", requests);
    figure("rel_conn_edges.signal_storm_failed", failed);
    assert!(alive, "loopd died in the signal storm:\n{}", loopd.logs());
    assert_eq!(failed, 0, "{:?}", first_failure.lock().unwrap());
    assert!(signals >= 100, "only {signals} signals sent");
    assert!(requests > 0);
    // The signals arrived and were handled (not blocked or lost).
    assert!(loopd.wait_for_log("SIGUSR1 received", TIMEOUT));
    assert_eq!(Client::connect(addr).get("/hello.txt").status, 200);
}
