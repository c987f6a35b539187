//! Signals and graceful shutdown: SIGTERM/SIGINT stop accepting, let open
//! connections finish (up to shutdown_timeout_ms), then exit 0; a second
//! signal cuts the wait short; SIGPIPE never kills loopd.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// Echo on TCP and Unix, with its own idle close at shutdown pushed past
/// every test's waits: these tests are about the runtime's drain.
fn echo_config(runtime: &str) -> String {
    echo_config_idle(runtime, 3_600_000)
}

fn echo_config_idle(runtime: &str, idle_ms: u64) -> String {
    format!(
        r#"
[runtime]
{runtime}

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/echo.sock"]
[handler.config]
shutdown_idle_ms = {idle_ms}
"#
    )
}

/// Everything loopd logged, once it has exited: waits for its stderr to
/// close, since the log reader may lag behind the exit.
fn final_logs(loopd: &Loopd) -> String {
    assert!(
        loopd.wait_for_log("<stderr closed>", TIMEOUT),
        "loopd's stderr did not close:\n{}",
        loopd.logs()
    );
    loopd.logs()
}

/// A client whose echo works: proves loopd accepted and opened it.
fn open_client(loopd: &Loopd) -> TcpStream {
    let mut s = tcp(loopd.tcp("echo"));
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s
}

#[test]
fn sigterm_during_a_large_echo_finishes_it_refuses_new_clients_and_exits_0() {
    const TOTAL: usize = 8 << 20;
    const BEFORE_SIGNAL: usize = 2 << 20;
    // Generous: the in-flight echo must finish well within it even on a busy machine.
    let mut loopd = Loopd::start(&echo_config("shutdown_timeout_ms = 25000"));
    let addr = loopd.tcp("echo");
    let sock = loopd.unix("echo");
    let data = pattern(TOTAL, 77);

    let mut s = tcp(addr);
    let mut writer = s.try_clone().unwrap();
    let (go_on, go_on_rx) = mpsc::channel::<()>();
    let to_send = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&to_send[..BEFORE_SIGNAL]).unwrap();
        // The rest only once SIGTERM was sent and handled.
        go_on_rx
            .recv_timeout(TIMEOUT)
            .expect("go-ahead for the rest");
        for chunk in to_send[BEFORE_SIGNAL..].chunks(64 << 10) {
            writer.write_all(chunk).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });

    let mut got = vec![0u8; 1 << 20];
    s.read_exact(&mut got).expect("the first MiB of the echo");

    loopd.signal(libc::SIGTERM);
    assert!(
        loopd.wait_for_log("shutting down", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert!(
        loopd
            .logs()
            .contains("waiting up to 25000 ms for 1 open connections"),
        "{}",
        loopd.logs()
    );
    // The listeners are closed: new clients are refused while the echo is
    // still in flight.
    let refused = TcpStream::connect_timeout(&addr, TIMEOUT);
    assert!(
        refused.is_err(),
        "a TCP connect after SIGTERM succeeded ({:?})",
        refused.unwrap().local_addr()
    );
    assert!(!sock.exists(), "the unix socket file is still there");
    assert!(
        UnixStream::connect(&sock).is_err(),
        "a unix connect after SIGTERM succeeded"
    );
    assert!(loopd.is_running(), "loopd exited with the echo in flight");

    go_on.send(()).unwrap();
    s.read_to_end(&mut got)
        .expect("the rest of the echo, then EOF");
    w.join().expect("writer thread");
    assert_eq!(got.len(), TOTAL, "echoed byte count");
    assert!(got == data, "the echo differs");

    let status = loopd.wait_exit(TIMEOUT);
    let logs = final_logs(&loopd);
    assert_eq!(status.code(), Some(0), "{}", logs);
    assert!(logs.contains("shutdown complete"), "{}", logs);
    assert!(!logs.contains("shutdown timeout"), "{}", logs);
}

#[test]
fn sigint_with_no_connections_exits_0_and_removes_the_socket_file() {
    let mut loopd = Loopd::start(&echo_config(""));
    let sock = loopd.unix("echo");
    assert!(sock.exists());
    loopd.signal(libc::SIGINT);
    let status = loopd.wait_exit(TIMEOUT);
    let logs = final_logs(&loopd);
    assert_eq!(status.code(), Some(0), "{}", logs);
    assert!(logs.contains("shutdown complete"), "{}", logs);
    assert!(!sock.exists(), "{} was left behind", sock.display());
}

#[test]
fn an_idle_client_is_closed_at_the_shutdown_timeout_then_exit_0() {
    let mut loopd = Loopd::start(&echo_config("shutdown_timeout_ms = 500"));
    let mut idle = open_client(&loopd);
    loopd.signal(libc::SIGTERM);
    assert!(
        loopd.wait_for_log("shutting down", TIMEOUT),
        "{}",
        loopd.logs()
    );
    // Nothing more comes, then EOF: loopd cut the connection at the deadline.
    assert_eq!(read_until_closed(&mut idle), b"");
    let status = loopd.wait_exit(TIMEOUT);
    let logs = final_logs(&loopd);
    assert_eq!(status.code(), Some(0), "{}", logs);
    let timeout = logs
        .find("shutdown timeout: closing 1 connections")
        .unwrap_or_else(|| panic!("{logs}"));
    // The shutdown still ends with its completion line, after the cut.
    assert!(logs[timeout..].contains("shutdown complete"), "{}", logs);
}

#[test]
fn a_second_sigterm_during_the_wait_exits_0_at_once() {
    // A wait longer than TIMEOUT: only the second signal can end it in time.
    let mut loopd = Loopd::start(&echo_config("shutdown_timeout_ms = 600000"));
    let mut idle = open_client(&loopd);
    loopd.signal(libc::SIGTERM);
    assert!(
        loopd.wait_for_log("shutting down", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert!(loopd.is_running());
    loopd.signal(libc::SIGTERM);
    let status = loopd.wait_exit(TIMEOUT);
    let logs = final_logs(&loopd);
    assert_eq!(status.code(), Some(0), "{}", logs);
    assert!(
        logs.contains("second signal (SIGTERM): closing 1 connections now"),
        "{}",
        logs
    );
    assert!(
        logs.trim_end_matches("<stderr closed>")
            .trim_end()
            .ends_with("shutdown complete"),
        "{}",
        logs
    );
    assert_eq!(read_until_closed(&mut idle), b"");
}

/// The echo handler closes a client that stays quiet for its
/// `shutdown_idle_ms` during a shutdown: an idle client does not hold the
/// shutdown for `shutdown_timeout_ms`, and one that keeps sending is not cut.
#[test]
fn echo_closes_idle_clients_at_shutdown_and_lets_busy_ones_finish() {
    let mut loopd = Loopd::start(&echo_config_idle("shutdown_timeout_ms = 600000", 1000));
    let mut idle = open_client(&loopd);
    let mut busy = open_client(&loopd);
    loopd.signal(libc::SIGTERM);
    assert!(
        loopd.wait_for_log("shutting down", TIMEOUT),
        "{}",
        loopd.logs()
    );
    // The busy one talks (a message every 20 ms, fifty times inside the
    // 1000 ms) until the idle one was closed, and keeps its echo meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talking = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut echoed = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && echoed < 1500 {
                let msg = [(echoed % 251) as u8; 10];
                busy.write_all(&msg).unwrap();
                let mut back = [0u8; 10];
                busy.read_exact(&mut back).expect("the busy client was cut");
                assert_eq!(back, msg);
                echoed += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            // Quiet now: closed within two checks.
            (echoed, read_until_closed(&mut busy))
        })
    };
    assert_eq!(read_until_closed(&mut idle), b"");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (echoed, rest) = talking.join().unwrap();
    assert_eq!(rest, b"");
    figure("echo_busy_client_echoes_during_shutdown", echoed);
    assert!(echoed > 0);
    let status = loopd.wait_exit(TIMEOUT);
    let logs = final_logs(&loopd);
    assert_eq!(status.code(), Some(0), "{}", logs);
    assert!(logs.contains("shutdown complete"), "{}", logs);
    assert!(!logs.contains("shutdown timeout"), "{}", logs);
}

/// Writes `stream` full (nobody reads the echo) until a write makes no
/// progress for a while, so loopd holds output for this peer. Returns the count.
fn fill<S: Write>(stream: &mut S, seed: u8) -> usize {
    let chunk = pattern(64 << 10, seed);
    let mut sent = 0usize;
    while sent < (64 << 20) {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write to loopd: {e}"),
        }
    }
    assert!(sent < (64 << 20), "loopd never pushed back");
    sent
}

/// Peers vanish while loopd has output queued for them: over Unix sockets
/// loopd's next write gets EPIPE (SIGPIPE without MSG_NOSIGNAL), over TCP
/// ECONNRESET. loopd stays up and keeps serving.
#[test]
fn sigpipe_never_kills_loopd() {
    let mut loopd = Loopd::start(&echo_config(""));
    let addr = loopd.tcp("echo");
    let path = loopd.unix("echo");
    // Stays open throughout, so every "closed" line belongs to a vanished peer.
    let witness = tcp(addr);
    let mut fresh_clients = Vec::new();
    let patience = Some(Duration::from_millis(200));
    for round in 0..3u8 {
        match round % 3 {
            0 => {
                let mut s = unix(&path);
                s.set_write_timeout(patience).unwrap();
                fill(&mut s, round);
            }
            1 => {
                let mut s = tcp(addr);
                s.set_write_timeout(patience).unwrap();
                fill(&mut s, round);
            }
            _ => {
                let mut s = tcp(addr);
                s.set_write_timeout(patience).unwrap();
                fill(&mut s, round);
                reset_on_drop(&s);
            }
        }
        // loopd notices at its next write (or read): the connection closes.
        assert!(
            loopd.wait_for_logs(" closed (", usize::from(round) + 1, TIMEOUT),
            "round {round}:\n{}",
            loopd.logs()
        );
        assert!(loopd.is_running(), "round {round}: loopd died");
        let data = pattern(200_000, 100 + round);
        let got = echo_roundtrip(witness.try_clone().unwrap(), &data);
        assert!(got == data, "round {round}: the witness's echo differs");
        let fresh = unix(&path);
        let got = echo_roundtrip(fresh.try_clone().unwrap(), &data);
        assert!(got == data, "round {round}: a new client's echo differs");
        // Kept open until the end: its close would count as a "closed" line.
        fresh_clients.push(fresh);
    }
    assert!(loopd.is_running());
    assert!(
        loopd.logs().contains("Broken pipe"),
        "no write hit a closed unix socket:\n{}",
        loopd.logs()
    );
}
