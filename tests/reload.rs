//! Live reload (SIGHUP, `loopd reload`): a changed handler gets a new
//! instance while its old connections stay on the old one, listeners that
//! stay keep their sockets, a broken config changes nothing, a plugin file
//! replaced on disk runs its new code beside the old, and reloads under
//! load fail no request and leak nothing.

mod common;
mod rel_load_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rel_load_util::{open_fds, status_kib};

/// Writes `config` over the running loopd's config file and sends SIGHUP;
/// waits for the `reloaded` (or `reload failed`) line number `n`.
fn reload_to(loopd: &Loopd, config: &str, n: usize) -> String {
    let text = config.replace("{dir}", loopd.dir.path().to_str().unwrap());
    std::fs::write(loopd.dir.join("loopd.toml"), text).unwrap();
    loopd.signal(libc::SIGHUP);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let logs = loopd.logs();
        let outcomes: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("reloaded: ") || l.contains("reload failed"))
            .collect();
        if outcomes.len() >= n {
            return outcomes[n - 1].to_string();
        }
        assert!(Instant::now() < deadline, "no reload outcome:\n{logs}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The URL a handler was (last) logged listening on with `prefix`.
fn last_url(loopd: &Loopd, handler: &str, prefix: &str) -> String {
    loopd
        .logs()
        .lines()
        .filter_map(|l| l.split_once(&format!("{handler} listening on {prefix}")))
        .map(|(_, rest)| rest.trim().to_string())
        .next_back()
        .unwrap_or_else(|| panic!("{handler} never listened on {prefix}:\n{}", loopd.logs()))
}

/// Writes `data` and reads as many bytes back.
fn trip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    match s.read_exact(&mut back) {
        Ok(()) => back,
        Err(_) => Vec::new(),
    }
}

fn line_of(s: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    line
}

const ECHO_RAW: &str = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
framing = "raw"

[[handler]]
name = "chat"
plugin = "chat"
listen = ["tcp://127.0.0.1:0"]
"#;

#[test]
fn a_changed_handler_gets_a_new_instance_and_old_connections_stay_on_the_old_one() {
    let loopd = Loopd::start(ECHO_RAW);
    let echo = loopd.tcp("echo");
    // An old connection, raw echo: bytes come back as they are.
    let mut old = tcp(echo);
    assert_eq!(trip(&mut old, b"abc"), b"abc");
    // A chat member in a room: chat's entry does not change, so its
    // instance (and the room) survives.
    let mut alice = LineClient::connect(loopd.tcp("chat"));
    alice.recv();
    alice.cmd("/nick alice");

    // The same listener, echo now line-framed with a frame limit.
    let line_framed = ECHO_RAW.replace("framing = \"raw\"", "framing = \"line\"\nmax_frame = 64");
    let outcome = reload_to(&loopd, &line_framed, 1);
    assert!(outcome.contains("replaced echo"), "{outcome}");
    assert!(outcome.contains("kept 2"), "{outcome}");
    // New connections: line framing (a line comes back with its "\n"; a
    // partial one waits).
    let mut new = BufReader::new(tcp(echo));
    new.get_mut().write_all(b"hello\npart").unwrap();
    assert_eq!(line_of(&mut new), "hello\n");
    // The old connection still runs the old instance: raw, byte for byte.
    assert_eq!(trip(&mut old, b"no newline"), b"no newline");
    // Chat kept its instance: alice is still alice, and sees bob arrive.
    let mut bob = LineClient::connect(loopd.tcp("chat"));
    bob.recv();
    bob.cmd("/nick bob");
    bob.send("hi alice");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("bob: hi alice")) {
        seen.push(alice.recv());
    }
    // The old instance is destroyed once its last connection closes.
    drop(old);
    assert!(
        loopd.wait_for_log("echo: the old instance is drained and destroyed", TIMEOUT),
        "{}",
        loopd.logs()
    );
}

#[test]
fn listeners_are_added_and_removed_and_the_rest_keep_their_sockets() {
    let loopd = Loopd::start(ECHO_RAW);
    let echo = loopd.tcp("echo");
    let chat = loopd.tcp("chat");
    let mut held = tcp(echo);
    let with_unix = ECHO_RAW.replace(
        "listen = [\"tcp://127.0.0.1:0\"]\nframing",
        "listen = [\"tcp://127.0.0.1:0\", \"unix://{dir}/echo.sock\"]\nframing",
    );
    // Chat removed, echo gains a Unix listener.
    let no_chat = with_unix
        .split("[[handler]]\nname = \"chat\"")
        .next()
        .unwrap()
        .to_string();
    let outcome = reload_to(&loopd, &no_chat, 1);
    assert!(outcome.contains("removed chat"), "{outcome}");
    // Only echo's listeners changed: it keeps its instance.
    assert!(outcome.contains("unchanged 1"), "{outcome}");
    let sock = loopd.dir.join("echo.sock");
    assert!(sock.exists(), "{}", loopd.logs());
    assert_eq!(echo_roundtrip(unix(&sock), b"over unix"), b"over unix");
    // The TCP listener never closed: the same port, and a connection made
    // before the reload is still served.
    assert_eq!(trip(&mut held, b"still here"), b"still here");
    assert_eq!(echo_roundtrip(tcp(echo), b"same port"), b"same port");
    assert!(TcpStream::connect(chat).is_err(), "chat's listener closed");
    // And back: chat returns on a new port; the Unix socket file goes.
    let outcome = reload_to(&loopd, ECHO_RAW, 2);
    assert!(outcome.contains("added chat"), "{outcome}");
    assert!(!sock.exists(), "the socket file was removed");
    let chat: SocketAddr = last_url(&loopd, "chat", "tcp://").parse().unwrap();
    let mut c = LineClient::connect(chat);
    assert!(c.recv().contains("welcome"));
}

#[test]
fn a_broken_config_a_missing_plugin_or_a_failing_create_leave_the_old_one_serving() {
    let loopd = Loopd::start(ECHO_RAW);
    let echo = loopd.tcp("echo");
    loopd.expect_error("reload failed");
    let broken = [
        ("[[handler]\nname = \"x\"", "unclosed array table"),
        (
            "[[handler]]\nname = \"echo\"\nplugin = \"no-such-plugin\"\nlisten = [\"tcp://127.0.0.1:0\"]\n",
            "not found",
        ),
        (
            "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:0\"]\n[handler.config]\nshutdown_idle_ms = 0\n",
            "shutdown_idle_ms = 0 must be between",
        ),
    ];
    for (i, (config, why)) in broken.iter().enumerate() {
        let outcome = reload_to(&loopd, config, i + 1);
        assert!(outcome.contains("reload failed"), "{outcome}");
        assert!(outcome.contains(why), "{why}: {outcome}");
        // Nothing changed: echo answers on its port, chat too.
        assert_eq!(echo_roundtrip(tcp(echo), b"unchanged"), b"unchanged");
        assert!(LineClient::connect(loopd.tcp("chat"))
            .recv()
            .contains("welcome"));
    }
    // A good config after the failures applies.
    let outcome = reload_to(&loopd, &ECHO_RAW.replace("framing = \"raw\"", ""), 4);
    assert!(outcome.contains("reloaded: "), "{outcome}");
}

/// A C handler that greets each connection with `VERSION`.
const GREETER: &str = r#"
#include <string.h>
#include "loopd.h"
static const loopd_host_api *host;
static int32_t on_open(loopd_ctx *ctx, void *inst, uint64_t conn,
                       const loopd_conn_info *info, void **state) {
    (void)inst; (void)info; (void)state;
    return host->send(ctx, conn, (const uint8_t *)VERSION "\n", strlen(VERSION) + 1);
}
static int32_t on_data(loopd_ctx *ctx, void *inst, uint64_t conn, void *state,
                       const uint8_t *data, size_t len) {
    (void)inst; (void)state; (void)data; (void)len;
    return host->send(ctx, conn, (const uint8_t *)VERSION "\n", strlen(VERSION) + 1);
}
static const loopd_vtable vtable = {
    .struct_size = sizeof(loopd_vtable), .on_open = on_open, .on_data = on_data,
};
static const loopd_plugin_info info = {
    .struct_size = sizeof(loopd_plugin_info), .abi_major = LOOPD_ABI_MAJOR,
    .abi_minor = LOOPD_ABI_MINOR, .name = "greeter", .version = VERSION,
    .default_framing = LOOPD_FRAMING_LINE, .vtable = &vtable,
};
LOOPD_EXPORT const loopd_plugin_info *loopd_plugin_entry_v1(const loopd_host_api *h) {
    host = h;
    return &info;
}
"#;

fn build_greeter(dir: &Path, version: &str, out: &Path) {
    let src = dir.join(format!("greeter-{version}.c"));
    std::fs::write(&src, format!("#define VERSION \"{version}\"\n{GREETER}")).unwrap();
    compile_c_plugin(&src, out);
}

#[test]
fn a_plugin_replaced_on_disk_runs_its_new_code_beside_the_old() {
    let build = TempDir::new("reload-so");
    let so = build.join("libgreeter.so");
    build_greeter(build.path(), "v1", &so);
    let config = format!(
        "[[handler]]\nname = \"greeter\"\nplugin = \"{}\"\nlisten = [\"tcp://127.0.0.1:0\"]\n",
        so.display()
    );
    let loopd = Loopd::start(&config);
    let addr = loopd.tcp("greeter");
    let mut old = BufReader::new(tcp(addr));
    assert_eq!(line_of(&mut old), "v1\n");
    // A new build replaces the file (a new inode, as `cp` + `mv` or a
    // linker writing a fresh file does).
    let staged = build.join("staged.so");
    build_greeter(build.path(), "v2", &staged);
    std::fs::rename(&staged, &so).unwrap();
    let outcome = reload_to(&loopd, &config, 1);
    assert!(outcome.contains("replaced greeter"), "{outcome}");
    let mut new = BufReader::new(tcp(addr));
    assert_eq!(line_of(&mut new), "v2\n");
    // The old connection keeps the old code.
    old.get_mut().write_all(b"again\n").unwrap();
    assert_eq!(line_of(&mut old), "v1\n");
    new.get_mut().write_all(b"again\n").unwrap();
    assert_eq!(line_of(&mut new), "v2\n");
    // An unchanged file: the same instance.
    let outcome = reload_to(&loopd, &config, 2);
    assert!(outcome.contains("unchanged 1"), "{outcome}");
    // No private copy is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("loopd-{}-", loopd.pid()))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn reloads_under_load_fail_no_request_and_unchanged_ones_leak_nothing() {
    let site = TempDir::new("reload-site");
    std::fs::write(site.join("index.html"), b"<p>hello</p>\n").unwrap();
    let config = |idle: u32| {
        format!(
            r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
shutdown_idle_ms = {idle}

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"
"#,
            site.path().display()
        )
    };
    let loopd = Loopd::start_with(&config(1000), "info", |_| {});
    let (echo, http) = (loopd.tcp("echo"), loopd.tcp("http"));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) && n < 100_000 {
                    let ok = if i % 2 == 0 {
                        // A new connection per echo: every accept counts.
                        let msg = format!("echo {i} {n}");
                        TcpStream::connect(echo)
                            .map(|mut s| {
                                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                                trip(&mut s, msg.as_bytes()) == msg.as_bytes()
                            })
                            .unwrap_or(false)
                    } else {
                        TcpStream::connect(http)
                            .map(|mut s| {
                                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                                let _ = s.write_all(
                                    b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                                );
                                let mut r = Vec::new();
                                let _ = s.read_to_end(&mut r);
                                r.starts_with(b"HTTP/1.1 200")
                            })
                            .unwrap_or(false)
                    };
                    if !ok {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
            })
        })
        .collect();
    // 100 reloads, each replacing echo's instance (its config changes).
    for r in 0..100u32 {
        let outcome = reload_to(&loopd, &config(1000 + (r + 1) % 2), r as usize + 1);
        assert!(outcome.contains("replaced echo"), "{outcome}");
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (failed, total) = (failures.load(Ordering::SeqCst), done.load(Ordering::SeqCst));
    figure("reload.under_load_requests", total);
    figure("reload.under_load_failed", failed);
    assert!(total > 100, "the load ran ({total})");
    assert_eq!(
        failed, 0,
        "{failed} of {total} requests failed during reloads"
    );

    // 100 reloads of an unchanged config: nothing grows.
    // The last of the 100 reloads above set 1000 again.
    let same = config(1000);
    for _ in 0..10 {
        reload_to(
            &loopd,
            &same,
            loopd.logs().matches("reloaded: ").count() + 1,
        );
    }
    let (rss0, fds0) = (status_kib(loopd.pid(), "VmRSS"), open_fds(loopd.pid()));
    let first = loopd.logs().matches("reloaded: ").count();
    for i in 0..100 {
        let outcome = reload_to(&loopd, &same, first + i + 1);
        assert!(outcome.contains("unchanged 2"), "{outcome}");
    }
    let (rss1, fds1) = (status_kib(loopd.pid(), "VmRSS"), open_fds(loopd.pid()));
    figure("reload.unchanged_rss_kib", format!("{rss0}->{rss1}"));
    figure("reload.unchanged_fds", format!("{fds0}->{fds1}"));
    assert_eq!(fds1, fds0, "descriptors leaked");
    if !valgrind() {
        assert!(rss1 <= rss0 + 512, "RSS grew {rss0} -> {rss1} KiB");
    }
}

#[test]
fn loopd_reload_signals_the_process_in_the_pid_file() {
    let config = format!("{ECHO_RAW}\n").replace(
        "[[handler]]\nname = \"echo\"",
        "[runtime]\npid_file = \"{dir}/loopd.pid\"\n\n[[handler]]\nname = \"echo\"",
    );
    let loopd = Loopd::start(&config);
    let pid_file = loopd.dir.join("loopd.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        loopd.pid().to_string()
    );
    let out = run_loopd(&["reload", loopd.dir.join("loopd.toml").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        loopd.wait_for_log("reloaded: ", TIMEOUT),
        "{}",
        loopd.logs()
    );
    let out = run_loopd(&["reload", "--pid", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a process id"));
}

/// `loopd reload` waits for loopd's answer: it exits 0 with the
/// `reloaded: ...` line, or 1 with the error (file, line and caret) when the
/// reload failed, and the running config keeps serving. `--wait 0` only
/// signals, as `kill -HUP` does; a process without the request socket is
/// sent SIGHUP, with a note; a loopd that does not answer in time (stopped
/// here) is a failure that says so, and `--wait` bounds it.
#[test]
fn loopd_reload_reports_the_outcome_and_fails_when_the_reload_does() {
    let loopd = Loopd::start(ECHO_RAW);
    let pid = loopd.pid().to_string();
    let out = run_loopd(&["reload", "--pid", &pid]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("loopd (process {pid}) reloaded: "))
            && stdout.contains("unchanged 2"),
        "{stdout}"
    );

    // A syntax error on the file's last line.
    let path = loopd.dir.join("loopd.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let line = text.lines().count() + 1;
    text.push_str("bogus = \n");
    std::fs::write(&path, &text).unwrap();
    loopd.expect_error("reload failed; the running config is unchanged");
    let out = run_loopd(&["reload", "--pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("reload failed; the running config is unchanged")
            && stderr.contains(&format!("loopd.toml:{line}:9")),
        "{stderr}"
    );
    let mut s = tcp(loopd.tcp("echo"));
    s.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    // Only the signal: success, whatever the reload does.
    let failures = loopd.logs().matches("reload failed").count();
    let out = run_loopd(&["reload", "--pid", &pid, "--wait", "0"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("its log says how it went"));
    assert!(loopd.wait_for_logs("reload failed", failures + 1, TIMEOUT));

    // Not a loopd (no request socket): SIGHUP, and it says so.
    let mut quiet = std::process::Command::new("sh")
        .args(["-c", "trap '' HUP; sleep 30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = run_loopd(&["reload", "--pid", &quiet.id().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("takes no requests") && stderr.contains("cannot be told"),
        "{stderr}"
    );
    quiet.kill().unwrap();
    quiet.wait().unwrap();
    for bad in ["-1", "soon", "NaN"] {
        let out = run_loopd(&["reload", "--pid", &pid, "--wait", bad]);
        assert_eq!(out.status.code(), Some(1), "--wait {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("--wait {bad}: give a number of seconds")),
            "{stderr}"
        );
    }

    // Stopped: the request waits in the backlog, unanswered.
    loopd.signal(libc::SIGSTOP);
    let out = run_loopd(&["reload", "--pid", &pid, "--wait", "1"]);
    loopd.signal(libc::SIGCONT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not answer within 1 s"), "{stderr}");

    // Requests at once each get an answer (none is lost, as a second
    // SIGHUP pending behind the first would be).
    std::fs::write(&path, ECHO_RAW).unwrap();
    let askers: Vec<_> = (0..6)
        .map(|_| {
            let pid = pid.clone();
            std::thread::spawn(move || run_loopd(&["reload", "--pid", &pid]))
        })
        .collect();
    for asker in askers {
        let out = asker.join().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("reloaded: "), "{said}");
    }
}

/// With several workers, worker 0 answers `loopd reload`, once.
#[test]
fn loopd_reload_is_answered_by_worker_0() {
    let loopd = Loopd::start(&format!("[runtime]\nworkers = 2\n{ECHO_RAW}"));
    let out = run_loopd(&["reload", "--pid", &loopd.pid().to_string()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("reloaded: ") && said.contains("unchanged 2"),
        "{said}"
    );
    assert!(
        !loopd.logs().contains("cannot ask this process"),
        "{}",
        loopd.logs()
    );
}

/// A pid_file left by a loopd that was killed: its process id may belong
/// to another process by now, which must not be sent the signal.
#[test]
fn a_stale_pid_file_is_refused_and_its_process_left_alone() {
    let dir = TempDir::new("reload-stale-pid");
    let pid_file = dir.join("loopd.pid");
    let config = write_config(
        &dir,
        &format!(
            "[runtime]\npid_file = \"{}\"\n\n[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:0\"]\n",
            pid_file.display()
        ),
    );
    let config = config.to_str().unwrap();
    // A process that started after the file was written: a reused id.
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&pid_file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    for command in ["reload", "upgrade"] {
        let out = run_loopd(&[command, config]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("names process {}, which started", other.id()))
                && err.contains("after the file was written"),
            "{err}"
        );
    }
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process got the signal"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    // A process that is gone.
    std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
    let out = run_loopd(&["reload", config]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("which does not exist"), "{err}");
}

/// What a reload cannot apply is refused or named, and the running config
/// keeps serving: a port moved from an address to the wildcard (the old
/// socket would still hold it when the new one is bound), a file with no
/// handler left in it (an editor's truncation caught half-way), a changed
/// pid_file (written once, at start).
#[test]
fn what_a_reload_cannot_apply_is_refused_or_named_and_nothing_stops_serving() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = |host: &str, runtime: &str| {
        format!(
            "[runtime]\n{runtime}\n[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://{host}:{port}\"]\nframing = \"raw\"\n"
        )
    };
    let pid_file = "pid_file = \"{dir}/loopd.pid\"";
    let loopd = Loopd::start(&config("127.0.0.1", pid_file));
    let echo: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(echo_roundtrip(tcp(echo), b"up"), b"up");
    loopd.expect_error("reload failed");

    // The wildcard beside the address being closed: named, not blamed on
    // "this config".
    let wildcard = config("0.0.0.0", pid_file);
    let outcome = reload_to(&loopd, &wildcard, 1);
    assert!(outcome.contains("reload failed"), "{outcome}");
    // At the listener in the new file.
    let (line, col) = locate(&wildcard, &format!("\"tcp://0.0.0.0:{port}\""));
    assert!(
        outcome.contains(&format!(
            "{}:{line}:{col}: handler `echo`: cannot listen on tcp://0.0.0.0:{port}: its port is held by tcp://127.0.0.1:{port} (handler `echo`), which this reload would close only after binding it",
            loopd.dir.join("loopd.toml").display()
        )),
        "{outcome}"
    );
    assert_eq!(echo_roundtrip(tcp(echo), b"kept"), b"kept");

    // No handler at all: an empty file, or only [runtime].
    for (n, text) in ["", "[runtime]\nmax_connections = 5\n"].iter().enumerate() {
        let outcome = reload_to(&loopd, text, n + 2);
        assert!(outcome.contains("reload failed"), "{outcome}");
        assert!(
            outcome.contains("reload failed; the running config is unchanged: ")
                && outcome
                    .contains("loopd.toml: defines no [[handler]] (to stop serving, stop loopd)"),
            "{outcome}"
        );
        assert_eq!(echo_roundtrip(tcp(echo), b"still"), b"still");
    }

    // A new pid_file applies at the next start; the reload says so.
    let outcome = reload_to(
        &loopd,
        &config("127.0.0.1", "pid_file = \"{dir}/other.pid\""),
        4,
    );
    assert!(outcome.contains("reloaded: "), "{outcome}");
    let dir = loopd.dir.path().display().to_string();
    assert!(
        loopd.logs().contains(&format!(
            "reload: pid_file = {dir}/other.pid takes a restart; the running loopd's stays {dir}/loopd.pid"
        )),
        "{}",
        loopd.logs()
    );
    assert!(!loopd.dir.join("other.pid").exists());
    assert!(loopd.dir.join("loopd.pid").exists());
    assert_eq!(echo_roundtrip(tcp(echo), b"after"), b"after");
}

/// A Unix listener spelled another way (through a symlinked directory) is
/// the same socket file: a reload keeps it, as it keeps one spelled alike,
/// instead of failing on "the same socket as" itself.
#[test]
fn a_unix_listener_spelled_another_way_keeps_its_socket() {
    let config = |path: &str| {
        format!("[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"unix://{path}\"]\nframing = \"raw\"\n")
    };
    let loopd = Loopd::start(&config("{dir}/e.sock"));
    let path = loopd.unix("echo");
    let open = unix(&path);
    assert_eq!(
        echo_roundtrip(open.try_clone().unwrap(), b"before"),
        b"before"
    );
    std::os::unix::fs::symlink(loopd.dir.path(), loopd.dir.join("link")).unwrap();
    for (n, spelling) in ["{dir}/link/e.sock", "{dir}/e.sock"].iter().enumerate() {
        let outcome = reload_to(&loopd, &config(spelling), n + 1);
        assert!(
            outcome.contains("reloaded: ") && outcome.contains("kept 1"),
            "{outcome}"
        );
        assert!(path.exists());
        assert_eq!(echo_roundtrip(unix(&path), b"kept"), b"kept");
    }
    // The connection open since the start was never touched.
    assert_eq!(
        echo_roundtrip(open.try_clone().unwrap(), b"after"),
        b"after"
    );
}

/// Two loopds that share the network namespace (where abstract sockets
/// live) but each run as process 1 of its own pid namespace, as in two
/// containers with host networking: each has its own control socket, and
/// `loopd reload --pid 1` run in one namespace reloads that one's loopd
/// only. Needs root (a pid namespace); as another user it says so.
#[test]
fn loopd_reload_reaches_the_process_1_of_its_own_pid_namespace_only() {
    use std::process::{Command, Stdio};
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("not root: no pid namespace to run loopd in");
        return;
    }
    // Each loopd is process 1 of a new pid namespace under `unshare`, which
    // kills it when it dies (as a test's loopd is killed when dropped).
    let in_own_pid_namespace = |cmd: &mut Command| {
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--pid", "--kill-child"])
            .arg(loopd_bin())
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        *cmd = wrapped;
    };
    let a = Loopd::start_with(ECHO_RAW, "debug", in_own_pid_namespace);
    let b = Loopd::start_with(ECHO_RAW, "debug", in_own_pid_namespace);
    // The loopd under each `unshare`, by its pid here.
    let inner = |outer: &Loopd| -> i32 {
        let children = std::fs::read_to_string(format!(
            "/proc/{}/task/{}/children",
            outer.pid(),
            outer.pid()
        ))
        .unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    };
    for l in [&a, &b] {
        assert!(
            !l.logs().contains("cannot ask this process"),
            "each binds its own control socket:\n{}",
            l.logs()
        );
    }
    let out = Command::new("nsenter")
        .args(["--target", &inner(&a).to_string(), "--pid", "--"])
        .arg(loopd_bin())
        .args(["reload", "--pid", "1", "--wait", "10"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("loopd (process 1) reloaded: "), "{said}");
    assert!(a.wait_for_log("reload requested by `loopd reload`", TIMEOUT));
    // b is asked nothing (and would log it at once).
    std::thread::sleep(Duration::from_millis(300));
    let logs = b.logs();
    assert!(
        !logs.contains("reload requested") && !logs.contains("reloaded: "),
        "{logs}"
    );
}
