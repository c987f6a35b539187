//! Logging never stops the loop (issue 20.3): with stderr on a pipe nobody
//! reads, loopd keeps serving and counts the lines it drops; the access log
//! file gets every line, in batches, after a flush, across a SIGUSR1
//! reopen and at exit; a write past RLIMIT_FSIZE (SIGXFSZ, EFBIG) loses
//! lines, not loopd.

mod common;
mod http_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http_util::{Client, Site};

/// echo and http, with `[log]` settings.
fn config(site: &Site, log: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[log]
{log}

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"
"#,
        site.root.display()
    )
}

/// The address in a `NAME listening on tcp://ADDR` line.
fn listener(lines: &[String], name: &str) -> SocketAddr {
    let needle = format!(" {name} listening on tcp://");
    lines
        .iter()
        .find_map(|l| l.split_once(&needle).map(|(_, a)| a.parse().unwrap()))
        .unwrap_or_else(|| panic!("no {name} listener in {lines:#?}"))
}

#[test]
fn stderr_that_nobody_reads_never_stops_the_loop() {
    const REQUESTS: usize = 3_000;
    build_plugins();
    let site = Site::new();
    let dir = TempDir::new("log-pipe");
    let path = write_config(&dir, &config(&site, "max_queued = 65536"));
    let mut child = Command::new(loopd_bin())
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut head = Vec::new();
    while !head.iter().any(|l: &String| l.contains(" ready: ")) {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{head:#?}");
        head.push(line.trim_end().to_string());
    }
    let (http, echo) = (listener(&head, "http"), listener(&head, "echo"));

    // From here nobody reads stderr: ~100 bytes of access log per request
    // fill the pipe (64 KiB) and the queue (64 KiB) many times over.
    let mut web = Client::connect(http);
    let mut e = tcp(echo);
    let mut answered = 0;
    for i in 0..REQUESTS {
        let r = web.get(&format!("/hello.txt?n={i}"));
        assert_eq!(r.status, 200, "request {i}");
        if i % 100 == 0 {
            e.write_all(b"still here").unwrap();
            let mut buf = [0u8; 10];
            e.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"still here");
        }
        answered += 1;
    }
    drop((web, e));

    // Read again: the queued lines, then the drop count, where the gap is.
    let (seen, notice) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if line.contains("log lines dropped") {
                let _ = seen.send(());
            }
            rest.push(line);
        }
        rest
    });
    // The queue has drained once the count is out: the shutdown's lines
    // then fit (logged while it was still full, they would be counted too).
    notice
        .recv_timeout(TIMEOUT)
        .expect("the drop count was not logged");
    // SAFETY: kill with a pid we own and a valid signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "loopd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{rest:#?}");
    let access = rest.iter().filter(|l| l.contains("loopd::access]")).count();
    let dropped: usize = rest
        .iter()
        .filter_map(|l| l.split_once("WARN  loopd] "))
        .filter_map(|(_, m)| m.strip_suffix(" log lines dropped: stderr was not being read"))
        .map(|n| n.parse::<usize>().unwrap())
        .sum();
    let notices = rest
        .iter()
        .filter(|l| l.contains("log lines dropped"))
        .count();
    figure(
        "rel_logging.requests_answered",
        format!("{answered}/{REQUESTS}"),
    );
    figure("rel_logging.access_lines_written", access);
    figure("rel_logging.lines_dropped_reported", dropped);
    figure("rel_logging.drop_notices", notices);
    assert_eq!(answered, REQUESTS);
    assert!(dropped > 0, "nothing was dropped: {access} access lines");
    assert!(
        access + dropped >= REQUESTS,
        "{access} written + {dropped} dropped < {REQUESTS}"
    );
    assert!(
        rest.last()
            .is_some_and(|l| l.ends_with("shutdown complete")),
        "the log does not end with the shutdown: {:?}",
        rest.last()
    );
}

/// The access log's lines, once it has `n` (waiting at most TIMEOUT).
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The query numbers in access log lines of `GET /hello.txt?n=N`.
fn numbers(lines: &[String]) -> Vec<usize> {
    let mut n: Vec<usize> = lines
        .iter()
        .filter_map(|l| {
            l.split_once("/hello.txt?n=")?
                .1
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    n.sort_unstable();
    n
}

#[test]
fn the_access_log_file_gets_every_line_after_a_flush_a_reopen_and_at_exit() {
    let site = Site::new();
    let log = r#"access_log = "{dir}/access.log"
access_log_buffer = 65536
access_log_flush_ms = 200"#;
    let mut loopd = Loopd::start(&config(&site, log));
    let path = loopd.dir.join("access.log");
    let http = loopd.tcp("http");
    let mut c = Client::connect(http);
    for i in 0..500 {
        assert_eq!(c.get(&format!("/hello.txt?n={i}")).status, 200);
    }
    // Well under the buffer: the flush interval writes them.
    let lines = wait_lines(&path, 500);
    assert_eq!(numbers(&lines), (0..500).collect::<Vec<_>>(), "{lines:?}");
    // Plain lines in the file (no level or target), none on stderr.
    assert!(
        lines[0].contains("\"GET /hello.txt?n=0 HTTP/1.1\" 200"),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("loopd::access"), "{}", lines[0]);
    assert!(!loopd.logs().contains("loopd::access]"), "{}", loopd.logs());

    // Rotation: move the file away, SIGUSR1, and new lines go to a new file.
    let rotated = loopd.dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    loopd.signal(libc::SIGUSR1);
    assert!(
        loopd.wait_for_log("access log reopened", TIMEOUT),
        "{}",
        loopd.logs()
    );
    for i in 500..600 {
        assert_eq!(c.get(&format!("/hello.txt?n={i}")).status, 200);
    }
    let after = wait_lines(&path, 100);
    assert_eq!(numbers(&after), (500..600).collect::<Vec<_>>());
    assert_eq!(wait_lines(&rotated, 500).len(), 500, "the rotated file");
    drop(c);
    loopd.signal(libc::SIGTERM);
    assert_eq!(loopd.wait_exit(TIMEOUT).code(), Some(0));
    figure(
        "rel_logging.access_file_lines",
        format!("{}/600", lines.len() + after.len()),
    );
}

#[test]
fn buffered_access_lines_are_written_at_exit() {
    let site = Site::new();
    // Neither the buffer nor the interval is reached before the exit.
    let log = r#"access_log = "{dir}/access.log"
access_log_buffer = 1048576
access_log_flush_ms = 600000"#;
    let mut loopd = Loopd::start(&config(&site, log));
    let path = loopd.dir.join("access.log");
    let mut c = Client::connect(loopd.tcp("http"));
    for i in 0..200 {
        assert_eq!(c.get(&format!("/hello.txt?n={i}")).status, 200);
    }
    drop(c);
    let before = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        before, "",
        "written before the buffer filled or the interval passed"
    );
    loopd.signal(libc::SIGTERM);
    assert_eq!(loopd.wait_exit(TIMEOUT).code(), Some(0));
    let lines = wait_lines(&path, 200);
    assert_eq!(numbers(&lines), (0..200).collect::<Vec<_>>());
    figure(
        "rel_logging.flushed_at_exit",
        format!("{}/200", lines.len()),
    );
}

#[test]
fn an_access_log_past_the_file_size_limit_loses_lines_not_loopd() {
    const LIMIT: u64 = 4096;
    let site = Site::new();
    let log = r#"access_log = "{dir}/access.log"
access_log_buffer = 0"#;
    let mut loopd = Loopd::start_with(&config(&site, log), "info", |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    loopd.expect_error("writing the access log");
    let mut c = Client::connect(loopd.tcp("http"));
    for i in 0..200 {
        assert_eq!(
            c.get(&format!("/hello.txt?n={i}")).status,
            200,
            "request {i}"
        );
    }
    assert!(
        loopd.wait_for_log("File too large", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert!(
        loopd.logs().contains("SIGXFSZ received: ignored"),
        "{}",
        loopd.logs()
    );
    assert!(loopd.is_running());
    let size = std::fs::metadata(loopd.dir.join("access.log"))
        .unwrap()
        .len();
    assert!(size <= LIMIT, "{size}");
    drop(c);
    loopd.signal(libc::SIGTERM);
    assert_eq!(loopd.wait_exit(TIMEOUT).code(), Some(0));
    figure("rel_logging.fsize_limited_served", "200/200");
    figure("rel_logging.fsize_limited_file_bytes", size);
}

/// With nothing to log, the stderr writer thread ends after a second, so a
/// loopd with one loop is a process of one thread (the kernel then skips a
/// file reference per socket system call); the next line starts it again,
/// and no line is lost across those ends and starts.
#[test]
fn the_log_writer_ends_when_idle_and_the_next_line_brings_it_back() {
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "probe"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
"#,
    );
    let pid = loopd.pid();
    let threads = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let one_thread_soon = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while threads() != 1 {
            assert!(
                Instant::now() < deadline,
                "{what}: still {} threads after 10 s:\n{}",
                threads(),
                loopd.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    one_thread_soon("after start-up");
    let mut c = LineClient::connect(loopd.tcp("probe"));
    for round in 0..3 {
        one_thread_soon("idle");
        // A burst of lines, from the loop thread, on a stopped writer.
        for i in 0..50 {
            assert_eq!(
                c.cmd(&format!("log-to probe::idle round {round} line {i}")),
                "logged"
            );
        }
        assert!(
            loopd.wait_for_logs(&format!("round {round} line "), 50, Duration::from_secs(10)),
            "{}",
            loopd.logs()
        );
        for i in 0..50 {
            let line = format!("round {round} line {i}");
            assert_eq!(
                loopd.logs().lines().filter(|l| l.ends_with(&line)).count(),
                1,
                "{line}:\n{}",
                loopd.logs()
            );
        }
    }
    one_thread_soon("at the end");
}
