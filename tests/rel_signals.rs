//! Signals whose default action would kill loopd (issue 20.16): each one
//! either shuts it down cleanly (exit 0, the Unix socket file removed, the
//! last log line written) or is logged and ignored while loopd keeps
//! serving. The table is docs/operations.md's.

mod common;

use std::io::{Read, Write};
use std::time::Instant;

use common::*;

fn config(shutdown_timeout_ms: u64) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = {shutdown_timeout_ms}

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/echo.sock"]
[handler.config]
shutdown_idle_ms = 3600000
"#
    )
}

fn name(sig: i32) -> String {
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return match sig - libc::SIGRTMIN() {
            0 => "SIGRTMIN".to_string(),
            n => format!("SIGRTMIN+{n}"),
        };
    }
    let names = [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGSTKFLT, "SIGSTKFLT"),
    ];
    names
        .iter()
        .find(|(s, _)| *s == sig)
        .map(|(_, n)| n.to_string())
        .unwrap()
}

/// One echo round trip on `s`.
fn echo_once(s: &mut std::net::TcpStream, what: &[u8]) {
    s.write_all(what).unwrap();
    let mut got = vec![0u8; what.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, what);
}

/// The lines loopd wrote, once its stderr closed.
fn final_lines(loopd: &Loopd) -> Vec<String> {
    assert!(loopd.wait_for_log("<stderr closed>", TIMEOUT));
    loopd
        .logs()
        .lines()
        .filter(|l| *l != "<stderr closed>")
        .map(str::to_string)
        .collect()
}

#[test]
fn each_shutdown_signal_drains_removes_the_socket_file_and_exits_0() {
    let signals = [libc::SIGTERM, libc::SIGINT, libc::SIGPWR, libc::SIGXCPU];
    let mut clean = 0;
    for sig in signals {
        let mut loopd = Loopd::start(&config(20_000));
        let sock = loopd.unix("echo");
        let mut client = tcp(loopd.tcp("echo"));
        echo_once(&mut client, b"before");
        loopd.signal(sig);
        assert!(
            loopd.wait_for_log("shutting down", TIMEOUT),
            "{}: {}",
            name(sig),
            loopd.logs()
        );
        assert!(
            loopd.logs().contains(&format!("{} received: ", name(sig))),
            "{}",
            loopd.logs()
        );
        // Graceful: the open connection is still served, the listeners are gone.
        echo_once(&mut client, b"during");
        assert!(
            !sock.exists(),
            "{}: the socket file is still there",
            name(sig)
        );
        assert!(
            loopd.is_running(),
            "{} ended loopd before the drain",
            name(sig)
        );
        drop(client);
        let status = loopd.wait_exit(TIMEOUT);
        let lines = final_lines(&loopd);
        assert_eq!(status.code(), Some(0), "{}: {lines:#?}", name(sig));
        assert!(
            lines
                .last()
                .is_some_and(|l| l.ends_with("shutdown complete")),
            "{}: the last line is not the completion: {lines:#?}",
            name(sig)
        );
        clean += 1;
    }
    figure(
        "rel_signals.shutdown_signals_clean",
        format!("{clean}/{}", signals.len()),
    );
}

#[test]
fn sigquit_closes_every_connection_at_once_and_exits_0() {
    // A drain that would outlast the test: SIGQUIT does not wait for it.
    let mut loopd = Loopd::start(&config(600_000));
    let sock = loopd.unix("echo");
    let mut client = tcp(loopd.tcp("echo"));
    echo_once(&mut client, b"hello");
    loopd.signal(libc::SIGQUIT);
    let status = loopd.wait_exit(TIMEOUT);
    let lines = final_lines(&loopd);
    assert_eq!(status.code(), Some(0), "{lines:#?}");
    assert_eq!(read_until_closed(&mut client), b"", "the client was closed");
    assert!(!sock.exists(), "{} was left behind", sock.display());
    let logs = lines.join("\n");
    assert!(
        logs.contains("SIGQUIT received: closing every connection now (1 open)"),
        "{logs}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.ends_with("shutdown complete")),
        "{lines:#?}"
    );
    figure("rel_signals.sigquit_clean", true);
}

#[test]
fn ignored_signals_are_logged_and_loopd_keeps_serving() {
    // SIGHUP (reload) and SIGUSR2 (upgrade) have tests of their own
    // (reload.rs, service.rs).
    let mut ignored = vec![
        libc::SIGXFSZ,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGSTKFLT,
    ];
    ignored.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    let mut loopd = Loopd::start(&config(20_000));
    let sock = loopd.unix("echo");
    let mut client = tcp(loopd.tcp("echo"));
    let started = Instant::now();
    let mut survived = 0;
    for &sig in &ignored {
        loopd.signal(sig);
        let line = format!("{} received: ", name(sig));
        assert!(
            loopd.wait_for_log(&line, TIMEOUT),
            "{}: not logged\n{}",
            name(sig),
            loopd.logs()
        );
        echo_once(&mut client, name(sig).as_bytes());
        assert!(loopd.is_running(), "{} killed loopd", name(sig));
        survived += 1;
    }
    assert!(
        loopd
            .logs()
            .contains("SIGXFSZ received: ignored: a write reached the file size limit"),
        "{}",
        loopd.logs()
    );
    // A storm of one ignored signal is logged at most once a second.
    for _ in 0..200 {
        loopd.signal(libc::SIGALRM);
    }
    echo_once(&mut client, b"after the storm");
    let alarm_lines = loopd.logs().matches("SIGALRM received").count();
    let elapsed_s = started.elapsed().as_secs() + 1;
    assert!(
        alarm_lines as u64 <= elapsed_s + 1,
        "{alarm_lines} SIGALRM lines in {elapsed_s} s"
    );
    assert!(sock.exists(), "an ignored signal removed the socket file");
    drop(client);
    loopd.signal(libc::SIGTERM);
    let status = loopd.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", loopd.logs());
    assert!(!sock.exists());
    figure("rel_signals.ignored_signals", ignored.len());
    figure(
        "rel_signals.survived",
        format!("{survived}/{}", ignored.len()),
    );
    figure("rel_signals.sigalrm_storm_log_lines", alarm_lines);
}
