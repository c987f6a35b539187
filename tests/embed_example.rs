//! examples/embed.rs runs: it prints how to reach its two services, serves
//! the linked echo handler and its own "time" handler, does its periodic
//! work, stops gracefully on SIGINT (serving open connections to the end)
//! and by itself with `--seconds`, and rejects bad arguments.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// Builds the example once per test binary (with cargo, as a user would)
/// and returns its path.
fn example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(root())
                .args(["build", "--quiet", "-p", "loopd", "--example", "embed"]);
            let release = plugin_dir().ends_with("release");
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build --example embed");
            assert!(status.success(), "building examples/embed.rs failed");
            let exe = plugin_dir().join("examples/embed");
            assert!(exe.exists(), "{} was not built", exe.display());
            exe
        })
        .clone()
}

/// The running example, its stdout lines arriving on a channel; killed on drop.
struct Embed {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Embed {
    fn start(args: &[&str]) -> Embed {
        let mut child = Command::new(example())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the example");
        let (tx, lines) = mpsc::channel();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Embed {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?}; the example printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The address in a line such as `echo: nc 127.0.0.1 7100 ...`.
    fn address(&mut self, service: &str) -> SocketAddr {
        let line = self.expect_line(&format!("{service}: nc "));
        let words: Vec<&str> = line.split_whitespace().collect();
        format!("{}:{}", words[2], words[3])
            .parse()
            .unwrap_or_else(|_| panic!("no address in {line:?}"))
    }

    /// Waits for the exit and returns the status code and the rest of stdout.
    fn wait_exit(&mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the example did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(TIMEOUT) {
            rest.push(line);
        }
        (status.code(), rest)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill with the pid of our own child and a valid signal.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Embed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch of `2026-05-01T12:34:56.789Z`, checking the format.
fn parse_utc(s: &str) -> u64 {
    let b = s.as_bytes();
    assert!(
        s.len() == 24
            && s.ends_with('Z')
            && [4, 7].iter().all(|&i| b[i] == b'-')
            && b[10] == b'T'
            && [13, 16].iter().all(|&i| b[i] == b':')
            && b[19] == b'.',
        "not an RFC 3339 UTC time: {s:?}"
    );
    let num = |r: std::ops::Range<usize>| -> i64 { s[r].parse().unwrap() };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from civil (Howard Hinnant), independent of the example's code path.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19)) as u64
}

#[test]
fn serves_echo_and_time_then_stops_gracefully_on_sigint() {
    let mut embed = Embed::start(&["--port", "0"]);
    let echo = embed.address("echo");
    let time = embed.address("time");
    embed.expect_line("Ctrl-C stops");

    let data = pattern(200_000, 9);
    assert!(echo_roundtrip(tcp(echo), &data) == data, "echo differs");

    let mut clock = LineClient::connect(time);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let first = clock.cmd("what time is it?");
    let second = clock.cmd("");
    for answer in [&first, &second] {
        let at = parse_utc(answer);
        // The current time, not a constant: within ten minutes of ours.
        assert!(at.abs_diff(now) < 600, "{answer} is not now ({now})");
    }

    // SIGINT with a connection open: no new connections, the open one is
    // still served, and the example exits 0 once it is closed.
    let mut open = tcp(echo);
    // Accepted and served before the signal, so the shutdown finds it open.
    open.write_all(b"x").unwrap();
    open.read_exact(&mut [0u8; 1]).unwrap();
    embed.signal(libc::SIGINT);
    embed.expect_line("stopping: no new connections;");
    assert!(
        std::net::TcpStream::connect_timeout(&echo, TIMEOUT).is_err(),
        "still accepting during shutdown"
    );
    open.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    open.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    drop(open);
    drop(clock);
    let (code, rest) = embed.wait_exit();
    assert_eq!(
        code,
        Some(0),
        "exit status; stdout after the signal: {rest:?}"
    );
    let last = rest.last().map(String::as_str).unwrap_or("");
    assert!(last.starts_with("embed: stopped; ticks: "), "{rest:?}");
}

#[test]
fn does_periodic_work_and_stops_by_itself_after_seconds() {
    let mut embed = Embed::start(&["--port", "0", "--seconds", "1"]);
    embed.expect_line("time: nc ");
    let tick = embed.expect_line("[tick 1] open connections: 0");
    assert!(tick.contains("events dispatched: "), "{tick}");
    embed.expect_line("--seconds reached: stopping");
    let (code, rest) = embed.wait_exit();
    assert_eq!(code, Some(0), "{rest:?}");
    assert_eq!(
        rest.last().map(String::as_str),
        Some("embed: stopped; ticks: 1, events dispatched: 0")
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut embed = Embed::start(&["--port", "0"]);
    let echo = embed.address("echo");
    // A connection accepted before the shutdown starts, and kept open.
    let mut open = tcp(echo);
    open.write_all(b"x").unwrap();
    open.read_exact(&mut [0u8; 1]).unwrap();
    embed.signal(libc::SIGTERM);
    embed.expect_line("stopping: no new connections; 1 still open");
    embed.signal(libc::SIGINT);
    embed.expect_line("second signal: exiting now");
    let (code, _) = embed.wait_exit();
    assert_eq!(code, Some(0));
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    for args in [&["--seconds", "soon"][..], &["--port"], &["--bogus"]] {
        let out = Command::new(example()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: embed"), "{args:?}: {stderr}");
    }
}

/// Two shipped handler crates linked into one program: each would export
/// `loopd_plugin_entry_v1`, so the program turns off their `plugin` feature.
/// Built out of tree (as a user would), offline, in a cached target dir.
#[test]
fn two_shipped_handlers_link_into_one_program() {
    let tmp = TempDir::new("two-linked");
    let project = tmp.join("two");
    std::fs::create_dir_all(project.join("src")).unwrap();
    let root = root();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            r#"[package]
name = "two-linked"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
loopd = {{ path = "{root}/runtime" }}
loopd-echo = {{ path = "{root}/handlers/echo", default-features = false }}
loopd-chat = {{ path = "{root}/handlers/chat", default-features = false }}

[patch.crates-io]
polling = {{ path = "{root}/vendor/polling" }}

[workspace]
"#,
            root = root.display()
        ),
    )
    .unwrap();
    std::fs::write(
        project.join("src/main.rs"),
        r#"use loopd::{HandlerSpec, Runtime};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
        .handler(HandlerSpec::linked::<loopd_chat::Chat>("chat").listen("tcp://127.0.0.1:0"))
        .build()?;
    for url in rt.listeners() {
        println!("{url}");
    }
    let handle = rt.handle();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        handle.shutdown();
    });
    rt.run()?;
    Ok(())
}
"#,
    )
    .unwrap();
    let cache = plugin_dir().parent().unwrap().join("scaffold");
    std::fs::create_dir_all(&cache).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--offline", "--quiet"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "linking echo and chat into one program failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(cache.join("debug/two-linked"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let echo: SocketAddr = lines.next().unwrap().unwrap()["tcp://".len()..]
        .parse()
        .unwrap();
    let chat: SocketAddr = lines.next().unwrap().unwrap()["tcp://".len()..]
        .parse()
        .unwrap();
    assert_eq!(echo_roundtrip(tcp(echo), b"linked echo"), b"linked echo");
    let mut c = LineClient::connect(chat);
    assert!(c.recv().contains("welcome to loopd chat"));
    drop(c);
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success());
}
