//! Workers (`[runtime] workers`): N loops on N threads, each with its own
//! handler instances and its own `SO_REUSEPORT` socket per TCP/UDP
//! address. Every worker takes connections, the bytes come back exact,
//! siblings reach each other with posts, limits are split, and the whole
//! process reloads and shuts down as one.

mod common;
mod rel_load_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use loopd::config::RuntimeConfig;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{Ctx, Handler, NoConfig};

const CLIENTS: usize = 40;

/// `CLIENTS` clients at once, each sending `len` bytes and reading them
/// back; returns how many got exactly what they sent.
fn echo_clients(addr: SocketAddr, len: usize) -> usize {
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(len, i as u8);
                echo_roundtrip(tcp(addr), &data) == data
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count()
}

fn two_workers() -> RuntimeConfig {
    RuntimeConfig {
        workers: 2,
        ..Default::default()
    }
}

#[test]
fn every_worker_takes_connections_and_echoes_exactly() {
    let workers = Runtime::builder()
        .runtime(two_workers())
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
        .build_workers()
        .unwrap();
    assert_eq!(workers.len(), 2);
    let url = workers.listeners()[0].clone();
    let addr: SocketAddr = url.strip_prefix("tcp://").unwrap().parse().unwrap();

    assert_eq!(echo_clients(addr, 64 * 1024), CLIENTS);

    let stats = workers.stats(TIMEOUT);
    let per_worker: Vec<u64> = stats
        .workers
        .iter()
        .map(|s| {
            let s = s.as_ref().expect("every worker answers");
            s.handlers
                .iter()
                .find(|h| h.name == "echo")
                .unwrap()
                .counters
                .accepted
        })
        .collect();
    figure("workers_accepted_per_worker", format!("{per_worker:?}"));
    // The kernel spreads connections by a hash of the 4-tuple: with 40
    // clients, both sockets get some (all on one: 2^-39).
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "a worker accepted nothing: {per_worker:?}"
    );
    assert_eq!(per_worker.iter().sum::<u64>(), CLIENTS as u64);
    let total = stats
        .total
        .handlers
        .iter()
        .find(|h| h.name == "echo")
        .unwrap();
    assert_eq!(total.counters.accepted, CLIENTS as u64);
    assert_eq!(total.counters.bytes_in, (CLIENTS * 64 * 1024) as u64);
    assert_eq!(total.counters.bytes_out, (CLIENTS * 64 * 1024) as u64);

    workers.shutdown();
    workers.run().unwrap();
}

#[test]
fn a_unix_listener_is_one_socket_every_worker_accepts_from() {
    let dir = TempDir::new("workers-unix");
    let path = dir.join("echo.sock");
    let url = format!("unix://{}", path.display());
    let workers = Runtime::builder()
        .runtime(two_workers())
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen(&url))
        .build_workers()
        .unwrap();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let data = pattern(8192, i as u8);
                echo_roundtrip(unix(&path), &data) == data
            })
        })
        .collect();
    let exact = threads.into_iter().map(|t| t.join().unwrap());
    assert_eq!(exact.filter(|ok| *ok).count(), CLIENTS);
    let stats = workers.stats(TIMEOUT);
    for (k, w) in stats.workers.iter().enumerate() {
        let w = w.as_ref().expect("every worker answers");
        let l = w.listeners.iter().find(|l| l.url == url);
        assert!(
            l.is_some_and(|l| l.open),
            "worker {k} does not serve {url}: {:?}",
            w.listeners
        );
    }
    let total = stats.total.handler("echo").unwrap().counters.accepted;
    assert_eq!(total, CLIENTS as u64);
    workers.shutdown();
    workers.run().unwrap();
    assert!(!path.exists(), "the socket file is removed at exit");
}

/// What a sibling handler saw: (worker index, worker count, message,
/// siblings that took the relay).
type Seen = (u32, u32, String, Option<u32>);
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// On `go`, relays `hello from K` to its siblings; records everything.
struct Relay;

impl Handler for Relay {
    type Config = NoConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Relay)
    }
    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        let (index, count) = ctx.worker();
        let text = String::from_utf8_lossy(msg).into_owned();
        let relayed = (msg == b"go").then(|| {
            ctx.post_siblings(format!("hello from {index}").as_bytes())
                .unwrap()
        });
        SEEN.lock().unwrap().push((index, count, text, relayed));
    }
}

#[test]
fn siblings_reach_each_other_with_posts() {
    let workers = Runtime::builder()
        .runtime(RuntimeConfig {
            workers: 3,
            ..Default::default()
        })
        .handler(HandlerSpec::linked::<Relay>("relay"))
        .build_workers()
        .unwrap();
    assert!(workers.handles()[1].post("relay", b"go".to_vec()).is_ok());
    let deadline = Instant::now() + TIMEOUT;
    while SEEN.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", SEEN.lock().unwrap());
        std::thread::sleep(Duration::from_millis(5));
    }
    workers.shutdown();
    workers.run().unwrap();
    let mut seen = SEEN.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (0, 3, "hello from 1".to_string(), None),
            (1, 3, "go".to_string(), Some(2)),
            (2, 3, "hello from 1".to_string(), None),
        ]
    );
}

/// A lone runtime's handler: no siblings, worker 0 of 1.
struct Alone;

#[test]
fn a_single_runtime_is_worker_zero_of_one_without_siblings() {
    // What create saw: (worker index and count, siblings reached).
    type Saw = Option<((u32, u32), u32)>;
    let out: Arc<Mutex<Saw>> = Arc::new(Mutex::new(None));
    let o = out.clone();
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::with("alone", move |ctx: &Ctx| {
            let r = ctx.post_siblings(b"anyone?").unwrap();
            *o.lock().unwrap() = Some((ctx.worker(), r));
            Ok(Alone)
        }))
        .build()
        .unwrap();
    assert_eq!(rt.worker(), (0, 1));
    assert_eq!(*out.lock().unwrap(), Some(((0, 1), 0)));
    rt.handle().stop();
    rt.run().unwrap();
}

impl Handler for Alone {
    type Config = NoConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Err("made with HandlerSpec::with".into())
    }
}

#[test]
fn build_refuses_several_workers_and_limits_are_split() {
    let err = Runtime::builder()
        .runtime(two_workers())
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("build_workers"), "{err}");

    // max_connections = 3 over 2 workers: 2 each, so 4 in all, never more.
    let workers = Runtime::builder()
        .runtime(RuntimeConfig {
            workers: 2,
            max_connections: 3,
            ..Default::default()
        })
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
        .build_workers()
        .unwrap();
    let addr: SocketAddr = workers.listeners()[0]
        .strip_prefix("tcp://")
        .unwrap()
        .parse()
        .unwrap();
    let mut held = Vec::new();
    for i in 0..12u8 {
        let mut s = tcp(addr);
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = s.write_all(&[b'a' + i, b'\n']);
        let mut b = [0u8; 2];
        if s.read_exact(&mut b).is_ok() {
            held.push(s);
        }
    }
    assert!(
        (2..=4).contains(&held.len()),
        "{} connections served with 2 per worker",
        held.len()
    );
    let stats = workers.stats(TIMEOUT);
    for w in stats.workers.iter().flatten() {
        let echo = w.handlers.iter().find(|h| h.name == "echo").unwrap();
        assert!(echo.counters.active <= 2, "{:?}", echo.counters);
    }
    drop(held);
    workers.shutdown();
    workers.run().unwrap();
}

/// Nanoseconds each `loopd-worker-K` thread has run (schedstat), by K;
/// `None` on a kernel without schedstat.
fn worker_cpu_ns(pid: i32) -> Option<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("loopd-worker-") {
            continue;
        }
        let sched = std::fs::read_to_string(t.join("schedstat")).ok()?;
        let ns = sched.split_whitespace().next()?.parse().ok()?;
        out.push((name.to_string(), ns));
    }
    out.sort();
    Some(out)
}

fn http_status(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().to_string()
}

#[test]
fn the_binary_runs_workers_reloads_and_stops_them_all() {
    let site = TempDir::new("workers-www");
    std::fs::write(site.join("index.html"), "hello\n").unwrap();
    let config = format!(
        r#"
[runtime]
workers = 2
shutdown_timeout_ms = 2000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/echo.sock"]

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"
"#,
        site.path().display()
    );
    let mut loopd = Loopd::start(&config);
    assert!(loopd.wait_for_log("2 workers", TIMEOUT), "{}", loopd.logs());
    let names = thread_names(loopd.pid());
    assert!(
        names.contains(&"loopd-worker-0".to_string())
            && names.contains(&"loopd-worker-1".to_string()),
        "{names:?}"
    );

    // Both threads run for the load: an idle worker (no connection, no
    // timer) is never woken, so its CPU time would not move.
    let before = worker_cpu_ns(loopd.pid());
    assert_eq!(echo_clients(loopd.tcp("echo"), 16 * 1024), CLIENTS);
    let after = worker_cpu_ns(loopd.pid());
    match (before, after) {
        (Some(before), Some(after)) => {
            assert_eq!(before.len(), 2, "{before:?}");
            let ran: Vec<u64> = before
                .iter()
                .zip(&after)
                .map(|((_, a), (_, b))| b - a)
                .collect();
            figure("workers_cpu_ns_during_echo", format!("{ran:?}"));
            assert!(ran.iter().all(|&ns| ns > 0), "{before:?} -> {after:?}");
        }
        _ => eprintln!(
            "NOTE: no /proc/PID/task/TID/schedstat on this kernel; per-thread CPU not checked"
        ),
    }
    // The Unix listener: one socket, served by worker 0.
    let data = pattern(4096, 7);
    assert_eq!(echo_roundtrip(unix(&loopd.unix("echo")), &data), data);
    let http = loopd.tcp("http");
    for _ in 0..20 {
        assert_eq!(http_status(http), "HTTP/1.1 200 OK");
    }
    // Under wrk (32 connections, both workers): every answer a 2xx.
    let run = rel_load_util::wrk(&format!("http://{http}/"), 32, 2);
    figure(
        "workers_http_wrk",
        format!("{} requests, {} errors", run.requests, run.errors),
    );
    assert!(run.requests > 0 && run.errors == 0, "{run:?}");

    // SIGHUP: every worker reloads (nothing changed: nothing replaced).
    loopd.signal(libc::SIGHUP);
    assert!(
        loopd.wait_for_logs("reloaded: ", 2, TIMEOUT),
        "{}",
        loopd.logs()
    );
    let reloads: Vec<String> = loopd
        .logs()
        .lines()
        .filter(|l| l.contains("reloaded: "))
        .map(str::to_string)
        .collect();
    assert!(
        reloads.iter().all(|l| l.contains("replaced -")),
        "{reloads:?}"
    );
    assert_eq!(echo_clients(loopd.tcp("echo"), 1024), CLIENTS);

    // A changed echo entry: every worker swaps its own echo instance, and
    // a connection open before keeps being served by the old one.
    let old = tcp(loopd.tcp("echo"));
    assert_eq!(
        echo_roundtrip(old.try_clone().unwrap(), b"before"),
        b"before"
    );
    let changed = config.replace(
        r#"listen = ["tcp://127.0.0.1:0", "unix://{dir}/echo.sock"]"#,
        "listen = [\"tcp://127.0.0.1:0\", \"unix://{dir}/echo.sock\"]\n[handler.config]\nshutdown_idle_ms = 500",
    );
    assert_ne!(changed, config);
    std::fs::write(
        loopd.dir.join("loopd.toml"),
        changed.replace("{dir}", loopd.dir.path().to_str().unwrap()),
    )
    .unwrap();
    loopd.signal(libc::SIGHUP);
    assert!(
        loopd.wait_for_logs("reloaded: ", 4, TIMEOUT),
        "{}",
        loopd.logs()
    );
    let swapped = loopd
        .logs()
        .lines()
        .filter(|l| l.contains("reloaded: ") && l.contains("replaced echo;"))
        .count();
    assert_eq!(swapped, 2, "{}", loopd.logs());
    assert_eq!(echo_roundtrip(old.try_clone().unwrap(), b"after"), b"after");
    assert_eq!(echo_clients(loopd.tcp("echo"), 1024), CLIENTS);
    drop(old);

    // SIGTERM: every worker drains and the process exits cleanly.
    loopd.signal(libc::SIGTERM);
    let status = loopd.wait_exit_status(TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", loopd.logs());
    assert_eq!(
        loopd
            .logs()
            .lines()
            .filter(|l| l.contains("shutdown complete"))
            .count(),
        2,
        "{}",
        loopd.logs()
    );
    loopd.assert_no_unexpected_errors();
}

/// Every worker's open listeners (URL, handler), sorted; `None` for a
/// worker that did not answer.
fn open_listeners(workers: &loopd::Workers) -> Vec<Option<Vec<(String, String)>>> {
    workers
        .stats(TIMEOUT)
        .workers
        .iter()
        .map(|w| {
            let mut open: Vec<(String, String)> = w
                .as_ref()?
                .listeners
                .iter()
                .filter(|l| l.open)
                .map(|l| (l.url.clone(), l.handler.clone()))
                .collect();
            open.sort();
            Some(open)
        })
        .collect()
}

#[test]
fn a_reload_gives_every_worker_the_same_new_listeners() {
    build_plugins();
    let dir = TempDir::new("workers-reload");
    let path = dir.join("loopd.toml");
    let sock = dir.join("added.sock");
    // Two port-0 listeners spelled alike: two ports, each served by both.
    let echo = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "tcp://127.0.0.1:0"]
"#;
    let head = format!(
        "[runtime]\nworkers = 2\nplugin_dir = \"{}\"\n",
        plugin_dir().display()
    );
    std::fs::write(&path, format!("{head}{echo}")).unwrap();
    let workers = Runtime::builder()
        .config_file(&path)
        .build_workers()
        .unwrap();
    let before = open_listeners(&workers);
    assert_eq!(before[0], before[1], "{before:?}");
    assert_eq!(before[0].as_ref().unwrap().len(), 2, "{before:?}");

    // A reload adds a handler on a port-0 address and a Unix socket: both
    // workers serve the port worker 0 bound, and worker 0's Unix socket.
    let added = format!(
        "{head}{echo}\n[[handler]]\nname = \"added\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:0\", \"unix://{}\"]\n",
        sock.display()
    );
    std::fs::write(&path, added).unwrap();
    workers.reload();
    let serves = |all: &[Option<Vec<(String, String)>>], on: bool| {
        all.iter().all(|w| {
            w.as_ref()
                .is_some_and(|w| w.iter().any(|(_, h)| h == "added") == on)
        })
    };
    let deadline = Instant::now() + TIMEOUT;
    let mut now = open_listeners(&workers);
    while !serves(&now, true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = open_listeners(&workers);
    }
    assert!(serves(&now, true), "{now:?}");
    assert_eq!(now[0], now[1], "the workers serve different listeners");
    assert_eq!(now[0].as_ref().unwrap().len(), 4, "{now:?}");
    let url = now[0]
        .as_ref()
        .unwrap()
        .iter()
        .find(|(u, h)| h == "added" && u.starts_with("tcp://"))
        .map(|(u, _)| u.clone())
        .unwrap();
    let addr: SocketAddr = url.strip_prefix("tcp://").unwrap().parse().unwrap();
    assert_eq!(echo_clients(addr, 4096), CLIENTS);
    let accepted: Vec<u64> = workers
        .stats(TIMEOUT)
        .workers
        .iter()
        .map(|w| {
            let w = w.as_ref().expect("every worker answers");
            w.listeners
                .iter()
                .find(|l| l.url == url)
                .unwrap()
                .counters
                .accepted
        })
        .collect();
    // One socket per worker on that port: the kernel spreads the 40
    // clients over both (all on one: 2^-39).
    assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    assert_eq!(accepted.iter().sum::<u64>(), CLIENTS as u64);
    let data = pattern(4096, 3);
    assert_eq!(echo_roundtrip(unix(&sock), &data), data);

    // A reload that removes it: every worker closes both, the file goes.
    std::fs::write(&path, format!("{head}{echo}")).unwrap();
    workers.reload();
    let deadline = Instant::now() + TIMEOUT;
    let mut now = open_listeners(&workers);
    while !serves(&now, false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        now = open_listeners(&workers);
    }
    assert_eq!(now, before);
    assert!(!sock.exists(), "the removed listener's socket file is left");
    assert!(refuses_soon(addr), "{url} still accepts");
    workers.shutdown();
    workers.run().unwrap();
}

/// With workers every TCP and UDP socket has `SO_REUSEPORT`, which lets any
/// socket of the same user join its address: a second loopd on the same
/// config must be refused as with one loop, not take half the traffic.
#[test]
fn a_second_loopd_on_the_same_addresses_is_refused() {
    let first = Loopd::start(
        r#"
[runtime]
workers = 2

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "relay"
plugin = "udp-broadcast"
listen = ["udp://127.0.0.1:0"]
[handler.config]
broadcast_to = ["127.0.0.1:9"]
"#,
    );
    let (tcp_addr, udp_addr) = (first.tcp("echo"), first.udp("relay"));
    let dir = TempDir::new("workers-second");
    for (plugin, url, extra) in [
        ("echo", format!("tcp://{tcp_addr}"), ""),
        (
            "udp-broadcast",
            format!("udp://{udp_addr}"),
            "[handler.config]\nbroadcast_to = [\"127.0.0.1:9\"]\n",
        ),
    ] {
        let path = write_config(
            &dir,
            &format!(
                "[runtime]\nworkers = 2\n\n[[handler]]\nname = \"second\"\nplugin = \"{plugin}\"\nlisten = [\"{url}\"]\n{extra}"
            ),
        );
        let mut second = std::process::Command::new(loopd_bin())
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = second.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = second.kill();
                let _ = second.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        second
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            status.is_some_and(|s| !s.success()),
            "a second loopd served {url} beside the first: {status:?}\n{err}"
        );
        assert!(
            err.contains(&format!("cannot listen on {url}"))
                && err.contains("Address already in use"),
            "{err}"
        );
    }
    // The first one serves on, alone on its addresses.
    let data = pattern(1024, 9);
    assert_eq!(echo_roundtrip(tcp(tcp_addr), &data), data);
    first.assert_no_unexpected_errors();
}

#[test]
fn a_bad_workers_value_names_the_file_line_and_key() {
    let dir = TempDir::new("workers-bad");
    let path = write_config(&dir, "[runtime]\nworkers = 0\n");
    let out = run_loopd(&["check", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("loopd.toml:2") && err.contains("runtime.workers"),
        "{err}"
    );
}
