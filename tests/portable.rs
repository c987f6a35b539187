//! Which syscall path a build takes, seen from outside with strace on the
//! real binary: the `portable` feature (runtime/src/sys/posix.rs, the path
//! macOS and the BSDs take) accepts with accept(2) + fcntl and copies files
//! with pread(2) + send(2), never accept4(2) or sendfile(2); the Linux path
//! (runtime/src/sys/linux.rs) is the other way round.
//!
//! Needs strace (`apt-get install strace`; `.ci/test` installs it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Connections accepted on each of the echo handler's two listeners.
const CONNECTIONS: usize = 5;
/// The file the http handler serves: several chunks, so it goes out with
/// `send_file`.
const FILE_SIZE: usize = 1 << 20;

/// The syscalls of one traced run: (name, result) per completed call.
struct Trace(Vec<(String, i64)>);

impl Trace {
    fn parse(text: &str) -> Trace {
        let mut calls = Vec::new();
        for line in text.lines() {
            // `PID name(args...) = RESULT ...`; with -f every line has a pid.
            let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
            let Some((name, _)) = rest.split_once('(') else {
                continue;
            };
            let Some((_, result)) = rest.rsplit_once(") = ") else {
                continue;
            };
            let result = result.split_whitespace().next().unwrap_or("");
            if let Ok(r) = result.parse::<i64>() {
                calls.push((name.to_string(), r));
            }
        }
        Trace(calls)
    }

    /// Calls of `name` that succeeded.
    fn ok(&self, name: &str) -> usize {
        self.0.iter().filter(|(n, r)| n == name && *r >= 0).count()
    }

    /// Calls of `name`, failed or not.
    fn all(&self, name: &str) -> usize {
        self.0.iter().filter(|(n, _)| n == name).count()
    }
}

/// Runs `strace -f` on `loopd CONFIG`, waits for `ready`, and returns the
/// child (strace) and loopd's log lines so far plus a channel for more.
fn start_traced(config: &Path, trace: &Path) -> (Child, Vec<String>, mpsc::Receiver<String>) {
    let probe = Command::new("strace").arg("-V").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace; .ci/test installs it)"
    );
    let mut child = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=accept,accept4,sendfile,pread64",
            "-o",
        ])
        .arg(trace)
        .arg(loopd_bin())
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting strace");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains(" ready: ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "loopd under strace did not become ready:\n{}",
                    lines.join("\n")
                );
            }
        }
    }
    (child, lines, rx)
}

/// The URL `handler` logged as listening on with `scheme`.
fn listener(lines: &[String], handler: &str, scheme: &str) -> String {
    let head = format!("{handler} listening on {scheme}");
    lines
        .iter()
        .find_map(|l| l.split_once(&head).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no {scheme} listener for {handler}:\n{}", lines.join("\n")))
}

/// loopd's pid: the one child of the strace process.
fn traced_pid(strace: &Child) -> i32 {
    let pid = strace.id();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "strace has no child");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A GET of `path` over a fresh connection; returns the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let at = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&reply[..at])
    );
    reply.split_off(at + 4)
}

#[test]
fn accept_and_sendfile_use_the_syscalls_of_this_build() {
    build_plugins();
    let dir = TempDir::new("portable");
    let www = dir.join("www");
    std::fs::create_dir(&www).unwrap();
    let data = pattern(FILE_SIZE, 7);
    std::fs::write(www.join("big.bin"), &data).unwrap();
    let config = write_config(
        &dir,
        &format!(
            r#"[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/echo.sock"]

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"
access_log = false
"#,
            www.display()
        ),
    );
    let trace_file = dir.join("trace");
    let (mut strace, lines, rx) = start_traced(&config, &trace_file);

    let tcp_addr: std::net::SocketAddr = listener(&lines, "echo", "tcp://").parse().unwrap();
    let unix_path = listener(&lines, "echo", "unix://");
    let http_addr: std::net::SocketAddr = listener(&lines, "http", "tcp://").parse().unwrap();
    for i in 0..CONNECTIONS {
        let msg = pattern(1000, i as u8);
        assert!(echo_roundtrip(tcp(tcp_addr), &msg) == msg, "tcp echo {i}");
        assert!(
            echo_roundtrip(unix(Path::new(&unix_path)), &msg) == msg,
            "unix echo {i}"
        );
    }
    assert!(
        http_get(http_addr, "/big.bin") == data,
        "the served file differs"
    );

    // A graceful stop, so strace writes the whole trace and exits.
    let loopd = traced_pid(&strace);
    // SAFETY: kill with a pid of our own child's child and a valid signal.
    assert_eq!(unsafe { libc::kill(loopd, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = strace.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = strace.kill();
            panic!("loopd under strace did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let logs: Vec<String> = lines.into_iter().chain(rx.try_iter()).collect();
    assert!(
        status.success(),
        "loopd exited with {status}:\n{}",
        logs.join("\n")
    );

    let trace = Trace::parse(&std::fs::read_to_string(&trace_file).unwrap());
    let accepted = 2 * CONNECTIONS + 1;
    figure("portable_build", cfg!(feature = "portable"));
    figure("accept_ok", trace.ok("accept"));
    figure("accept4_ok", trace.ok("accept4"));
    figure("sendfile_calls", trace.all("sendfile"));
    figure("pread64_ok", trace.ok("pread64"));
    if cfg!(feature = "portable") {
        assert_eq!(trace.all("accept4"), 0, "the portable build called accept4");
        assert!(
            trace.ok("accept") >= accepted,
            "{} accepts",
            trace.ok("accept")
        );
        assert_eq!(
            trace.all("sendfile"),
            0,
            "the portable build called sendfile"
        );
        // 64 KiB per pread + send step: 16 for the whole body; at least
        // half of it, whatever the handler sends from its own buffer first.
        let steps = FILE_SIZE / (64 << 10) / 2;
        assert!(
            trace.ok("pread64") >= steps,
            "{} preads: the file was not copied with pread",
            trace.ok("pread64")
        );
    } else {
        assert_eq!(trace.all("accept"), 0, "the Linux build called accept");
        assert!(
            trace.ok("accept4") >= accepted,
            "{} accept4s",
            trace.ok("accept4")
        );
        assert!(
            trace.ok("sendfile") > 0,
            "the Linux build did not use sendfile"
        );
    }
}
