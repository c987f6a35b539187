//! Reliability: a handler that panics loses the connection it was serving
//! and nothing else (issue 8, item 12).
//!
//! The probe fixture with `panic_every = 10` panics in every 10th `on_data`
//! of the instance. 10,000 connections send one command each, so exactly
//! 1,000 of them hit a panic: those are closed (no reply, a logged panic),
//! the other 9,000 get their reply, and an echo handler in the same loopd
//! serves its own clients correctly throughout. Then the hooks that return
//! nothing (`on_writable`, `on_partial`, `on_timer`, `on_datagram`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn config(panic_every: u64, extra_listen: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "probe"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"{extra_listen}]
[handler.config]
panic_every = {panic_every}

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
"#
    )
}

/// What happened to one probe connection.
enum Outcome {
    Replied,
    ClosedWithoutReply,
}

/// One connection: sends `echo <text>`, reads the reply line or EOF.
fn one_command(addr: SocketAddr, text: &str) -> Outcome {
    let mut s = tcp(addr);
    s.write_all(format!("echo {text}\n").as_bytes())
        .expect("sending a command");
    let got = read_until_closed_or_line(&mut s);
    // No TIME_WAIT left behind by 10,000 client-side closes.
    reset_on_drop(&s);
    match got {
        Some(line) => {
            assert_eq!(line, text, "wrong reply");
            Outcome::Replied
        }
        None => Outcome::ClosedWithoutReply,
    }
}

/// Reads one line (`Some`, without `\n`) or EOF/reset before any byte (`None`).
fn read_until_closed_or_line(s: &mut std::net::TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(b"\n") {
                    got.pop();
                    return Some(String::from_utf8(got).unwrap());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("waiting for a reply or a close: {e}"),
        }
    }
    assert!(
        got.is_empty(),
        "a cut-off reply: {:?}",
        String::from_utf8_lossy(&got)
    );
    None
}

/// Echo clients that check every round trip until `stop`; returns
/// (correct, total) round trips.
fn echo_traffic(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let mut conns: Vec<std::net::TcpStream> = (0..4).map(|_| tcp(addr)).collect();
        let (mut ok, mut total) = (0, 0);
        let deadline = Instant::now() + 4 * TIMEOUT;
        let mut round = 0u32;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            for (k, c) in conns.iter_mut().enumerate() {
                let data = pattern(
                    1000 + (round as usize * 37) % 3000,
                    (round + k as u32) as u8,
                );
                c.write_all(&data).expect("echo: write");
                let mut back = vec![0u8; data.len()];
                total += 1;
                if c.read_exact(&mut back).is_ok() && back == data {
                    ok += 1;
                }
            }
            round += 1;
        }
        (ok, total)
    })
}

#[test]
fn a_handler_panicking_on_every_10th_message_loses_exactly_those_1000_connections() {
    const CONNECTIONS: usize = 10_000;
    const THREADS: usize = 4;
    let mut loopd = Loopd::start_with(&config(10, ""), "info", |_| {});
    loopd.expect_error("panic in on_data: probe: panic on message ");
    let probe = loopd.tcp("probe");
    let stop = Arc::new(AtomicBool::new(false));
    let echo = echo_traffic(loopd.tcp("echo"), stop.clone());

    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let (mut replied, mut closed) = (0usize, 0usize);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= CONNECTIONS {
                        return (replied, closed);
                    }
                    match one_command(probe, &format!("conn-{i}")) {
                        Outcome::Replied => replied += 1,
                        Outcome::ClosedWithoutReply => closed += 1,
                    }
                }
            })
        })
        .collect();
    let (mut replied, mut closed) = (0, 0);
    for w in workers {
        let (r, c) = w.join().expect("a client thread");
        replied += r;
        closed += c;
    }
    stop.store(true, Ordering::SeqCst);
    let (echo_ok, echo_total) = echo.join().expect("the echo clients");

    // Every panic was logged at error level, and each of its connections
    // was closed by loopd with the reason "handler failed".
    let panics_logged = loopd.wait_for_logs(
        "panic in on_data: probe: panic on message ",
        closed,
        TIMEOUT,
    );
    // The close line of a connection follows its panic line: the client
    // can see its connection closed before loopd has logged why.
    loopd.wait_for_logs("(handler failed)", closed, TIMEOUT);
    let logs = loopd.logs();
    let panic_lines = logs
        .lines()
        .filter(|l| is_error_line(l) && l.contains("panic in on_data: probe: panic on message "))
        .count();
    let handler_closes = logs
        .lines()
        .filter(|l| l.contains("probe: closed ") && l.ends_with("(handler failed)"))
        .count();

    // Still serving: a probe command on a fresh connection...
    let mut c = LineClient::connect(probe);
    let stats = c.cmd("stats");
    // ...and a graceful shutdown with exit status 0: no crash.
    drop(c);
    loopd.signal(libc::SIGTERM);
    let status = loopd.wait_exit(TIMEOUT);
    let crashes = usize::from(!status.success());

    figure("rel_panics.messages", CONNECTIONS);
    figure("rel_panics.closed_with_panic", closed);
    figure("rel_panics.panic_log_lines", panic_lines);
    figure("rel_panics.replied", replied);
    figure("rel_panics.crashes", crashes);
    figure("rel_panics.echo_correct", format!("{echo_ok}/{echo_total}"));
    assert!(panics_logged, "fewer than {closed} panics logged");
    assert_eq!(
        closed,
        CONNECTIONS / 10,
        "connections closed without a reply"
    );
    assert_eq!(replied, CONNECTIONS - CONNECTIONS / 10);
    assert_eq!(
        panic_lines, closed,
        "one logged panic per closed connection"
    );
    assert_eq!(
        handler_closes, closed,
        "closed with reason `handler failed`"
    );
    assert_eq!(crashes, 0, "loopd exited with {status:?}:\n{logs}");
    assert!(echo_total > 0, "the echo clients never ran");
    assert_eq!(echo_ok, echo_total, "echo round trips that went wrong");
    // The probe instance itself kept count: it saw every connection open
    // and close (the stats connection is the one still open).
    assert!(
        stats.starts_with(&format!(
            "stats opens={} closes={} open=1 violations=0",
            CONNECTIONS + 1,
            CONNECTIONS
        )),
        "{stats}"
    );
}

/// Reads until the connection closes, with a shorter timeout than TIMEOUT
/// so a connection left open fails in reasonable time.
fn read_all_until_closed(s: &mut std::net::TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    read_until_closed(s)
}

#[test]
fn a_panic_in_on_writable_closes_that_connection_as_a_failed_hook() {
    let loopd = Loopd::start(&config(0, ""));
    loopd.expect_error("panic in on_writable: probe: panic in on_writable");
    let addr = loopd.tcp("probe");
    let mut other = LineClient::connect(addr);
    let mut c = LineClient::connect(addr);
    let id = c.cmd("id");
    let id = id.strip_prefix("id ").unwrap().to_string();
    assert_eq!(c.cmd("panic-writable"), "armed");
    // The probe sends until loopd refuses (its queue is at the high
    // watermark); reading it all makes loopd call on_writable, which panics.
    c.send("flood 65536");
    let mut s = c.stream().try_clone().unwrap();
    let got = read_all_until_closed(&mut s);
    assert!(got.len() >= 65536, "got only {} bytes", got.len());
    assert!(
        got.iter().all(|&b| b == b'x' || b == b'\n'),
        "something other than flood messages arrived (the `writable` line or the flood reply)"
    );
    assert!(
        loopd.wait_for_log(&format!("probe: closed {id} (handler failed)"), TIMEOUT),
        "{}",
        loopd.logs()
    );
    // Nobody else noticed.
    assert_eq!(other.cmd("echo still here"), "still here");
}

#[test]
fn a_panic_in_on_partial_closes_that_connection_as_a_failed_hook() {
    let loopd = Loopd::start(&config(0, ""));
    loopd.expect_error("panic in on_partial: probe: panic on request");
    let addr = loopd.tcp("probe");
    let mut c = LineClient::connect(addr);
    let id = c.cmd("id");
    let id = id.strip_prefix("id ").unwrap().to_string();
    // A last line without "\n" goes to on_partial, which runs it: `panic`.
    c.stream().write_all(b"panic").unwrap();
    c.stream().shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read_to_eof(), "");
    assert!(
        loopd.wait_for_log(&format!("probe: closed {id} (handler failed)"), TIMEOUT),
        "{}",
        loopd.logs()
    );
}

#[test]
fn a_panic_in_on_timer_or_on_datagram_is_logged_and_everything_goes_on() {
    let loopd = Loopd::start(&config(0, ", \"udp://127.0.0.1:0\""));
    loopd.expect_error("panic in on_timer: probe: panic in on_timer");
    loopd.expect_error("panic in on_datagram: probe: panic in on_datagram");
    let addr = loopd.tcp("probe");
    let udp: SocketAddr = loopd.listeners["probe"]
        .iter()
        .find_map(|u| u.strip_prefix("udp://"))
        .expect("the probe's udp listener")
        .parse()
        .unwrap();

    // A timer belongs to the instance, not to a connection: its panic is
    // logged, and the connection that set it is not touched.
    let mut c = LineClient::connect(addr);
    assert!(c.cmd("panic-timer 10").starts_with("timer-set "));
    assert!(
        loopd.wait_for_log("panic in on_timer: probe: panic in on_timer", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert_eq!(c.cmd("echo after the timer"), "after the timer");
    assert!(c.cmd("timer 5 later").starts_with("timer-set "));
    assert_eq!(c.recv(), "timer later");

    // A datagram's panic loses that datagram; the socket keeps serving.
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(b"panic", udp).unwrap();
    assert!(
        loopd.wait_for_log("panic in on_datagram: probe: panic in on_datagram", TIMEOUT),
        "{}",
        loopd.logs()
    );
    tx.send_to(b"hello", udp).unwrap();
    assert!(
        loopd.wait_for_log("probe: unexpected datagram of 5 bytes", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert_eq!(c.cmd("echo after the datagram"), "after the datagram");
    the_panics_went_to_the_log_only(&loopd);
}

/// Each caught panic's log line says where it happened, and the plugin's
/// Rust runtime printed none of them to stderr itself (its panic hook knows
/// the loop's threads).
fn the_panics_went_to_the_log_only(loopd: &Loopd) {
    let logs = loopd.logs();
    let located = logs
        .lines()
        .filter(|l| {
            l.contains("panic in on_") && l.contains(" (at tests/fixtures/probe/src/lib.rs:")
        })
        .count();
    assert!(located >= 2, "no location in the panic lines: {logs}");
    assert!(
        !logs.contains("panicked at"),
        "the plugin's panic hook printed to stderr: {logs}"
    );
}

#[test]
fn with_workers_a_panic_in_any_worker_is_logged_with_its_location_only() {
    let loopd = Loopd::start(&config(0, "").replace(
        "shutdown_timeout_ms = 2000",
        "shutdown_timeout_ms = 2000\nworkers = 2",
    ));
    loopd.expect_error("panic in on_timer: probe: panic in on_timer");
    let addr = loopd.tcp("probe");
    // Connections are spread over both workers: a panicking timer on
    // connections until each worker's thread has run one.
    let mut seen = [false; 2];
    for i in 0..64 {
        let mut c = LineClient::connect(addr);
        let worker = c.cmd("worker");
        let index: usize = match worker.split(' ').collect::<Vec<_>>()[..] {
            ["worker", index, "2"] => index.parse().unwrap(),
            _ => panic!("unexpected reply {worker:?}"),
        };
        assert!(c.cmd("panic-timer 1").starts_with("timer-set "));
        assert!(
            loopd.wait_for_logs(
                "panic in on_timer: probe: panic in on_timer",
                i + 1,
                TIMEOUT
            ),
            "{}",
            loopd.logs()
        );
        assert_eq!(c.cmd("echo still here"), "still here");
        seen[index] = true;
        if seen == [true, true] {
            break;
        }
    }
    assert_eq!(seen, [true, true], "the connections all went to one worker");
    the_panics_went_to_the_log_only(&loopd);
}
