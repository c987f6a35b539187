//! Findings 20.1, 20.2 and 20.4: no peer can grow the process with
//! unfinished frames, take every connection, hold idle connections
//! forever, or bind loopd's UDP address beside it.
//!
//! - `max_buffered_input`: connections that each hold an unfinished 1 MiB
//!   length-prefixed frame are closed, the biggest first, once all of them
//!   together hold more than the budget; RSS stays bounded and every other
//!   handler keeps answering.
//! - `max_connections_per_peer` and a handler's `max_connections`: one
//!   address opening thousands of echo connections leaves http serving.
//! - `idle_timeout_ms`: a quiet connection is closed, a talking one is not.
//! - UDP sockets are bound without `SO_REUSEADDR` unless
//!   `reuse_address = true`: nobody else can bind the address to take
//!   datagrams.

mod common;
mod rel_load_util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rel_load_util::{raise_nofile, status_kib};

/// The shipped config (examples/loopd.toml), parsed.
fn shipped() -> loopd::Config {
    loopd::Config::from_file(root().join("examples/loopd.toml")).unwrap()
}

/// The shipped config's runtime limits and its echo, length-prefixed echo
/// and http entries with their limits, on free ports.
fn shipped_like(dir_of_site: &str) -> String {
    let c = shipped();
    let rt = &c.runtime;
    let max = |name: &str| {
        c.handlers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.max_connections)
            .map_or(String::new(), |n| format!("max_connections = {n}"))
    };
    format!(
        r#"[runtime]
max_connections = {}
max_connections_per_peer = {}
max_buffered_input = {}

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
{}

[[handler]]
name = "echo-framed"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
framing = "length-prefixed"
max_frame = 1048576
{}

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{dir_of_site}"
"#,
        rt.max_connections,
        rt.max_connections_per_peer,
        rt.max_buffered_input,
        max("echo"),
        max("echo-framed"),
    )
}

/// One echo round trip on a fresh connection.
fn echo_probe(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, TIMEOUT) else {
        return false;
    };
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut back = [0u8; 5];
    s.write_all(b"probe").is_ok() && s.read_exact(&mut back).is_ok() && &back == b"probe"
}

/// One HTTP GET of `/` on a fresh connection, from `from` (a loopback
/// address), answered 200.
fn http_probe(addr: SocketAddr, from: std::net::IpAddr) -> bool {
    let sock = match from {
        std::net::IpAddr::V4(_) => {
            // SAFETY: plain socket creation; the fd is owned below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            assert!(fd >= 0);
            // SAFETY: `fd` is a new descriptor nobody else owns.
            unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        }
        _ => unreachable!("probes come from IPv4 loopback"),
    };
    let bind = std::net::SocketAddr::new(from, 0);
    let (storage, len) = sockaddr(&bind);
    // SAFETY: a valid address of `len` bytes for bind(2).
    let r = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            (&storage as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    assert_eq!(r, 0, "binding the probe to {from}");
    let (storage, len) = sockaddr(&addr);
    // SAFETY: a valid address of `len` bytes for connect(2).
    let r = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            (&storage as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    if r != 0 {
        return false;
    }
    let mut s = sock;
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    if s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply.starts_with(b"HTTP/1.1 200")
}

fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_in, libc::socklen_t) {
    let SocketAddr::V4(v4) = a else {
        panic!("IPv4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    (
        sin,
        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
    )
}

fn site() -> TempDir {
    let dir = TempDir::new("limits-site");
    std::fs::write(dir.join("index.html"), b"<p>up</p>\n").unwrap();
    dir
}

/// Probes echo and http every 20 ms until `stop`; returns (tried, answered).
fn probing(
    echo: SocketAddr,
    http: SocketAddr,
    from: std::net::IpAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u32, u32)> {
    std::thread::spawn(move || {
        let (mut tried, mut answered) = (0u32, 0u32);
        while !stop.load(Ordering::SeqCst) && tried < 10_000 {
            tried += 2;
            answered += u32::from(echo_probe(echo)) + u32::from(http_probe(http, from));
            std::thread::sleep(Duration::from_millis(20));
        }
        (tried, answered)
    })
}

#[test]
fn unfinished_frames_cannot_grow_the_process_past_the_input_budget() {
    // Under valgrind loopd reads far slower: just over the budget then.
    let attackers = if valgrind() {
        140
    } else {
        tier(300usize, 4000)
    };
    raise_nofile(attackers as u64 * 2 + 1000);
    let budget_mib = shipped().runtime.max_buffered_input >> 20;
    let site = site();
    let loopd = Loopd::start_with(&shipped_like(site.path().to_str().unwrap()), "info", |_| {});
    let framed = loopd.tcp("echo-framed");
    let (echo, http) = (loopd.tcp("echo"), loopd.tcp("http"));
    let baseline = status_kib(loopd.pid(), "VmRSS");

    let stop = Arc::new(AtomicBool::new(false));
    let probes = probing(echo, http, "127.0.0.2".parse().unwrap(), stop.clone());

    // Every attacker announces a 1 MiB frame and sends all of it but the
    // last byte, 64 KiB at a time, round robin: all of them grow together.
    let mut conns: Vec<Option<TcpStream>> = (0..attackers)
        .map(|_| {
            let s = TcpStream::connect_timeout(&framed, TIMEOUT).unwrap();
            s.set_write_timeout(Some(TIMEOUT)).unwrap();
            Some(s)
        })
        .collect();
    const FRAME: usize = 1 << 20;
    let chunk = vec![0x5a_u8; 64 << 10];
    for c in conns.iter_mut().flatten() {
        c.write_all(&(FRAME as u32).to_be_bytes()).unwrap();
    }
    let mut sent = vec![0usize; attackers];
    let mut cut = 0usize;
    let started = Instant::now();
    loop {
        let mut progressed = false;
        for (i, slot) in conns.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            let n = chunk.len().min(FRAME - 1 - sent[i]);
            if n == 0 {
                continue;
            }
            match c.write_all(&chunk[..n]) {
                Ok(()) => {
                    sent[i] += n;
                    progressed = true;
                }
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                        "attacker {i}: {e} (loopd stopped reading it without closing it)"
                    );
                    cut += 1;
                    *slot = None;
                }
            }
        }
        if !progressed || started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    // The survivors hold their unfinished frames; wait until loopd has
    // read what was sent (the peak is reached) and look.
    std::thread::sleep(Duration::from_millis(500));
    let peak = status_kib(loopd.pid(), "VmHWM");
    // A survivor whose frame is cut short later is counted too: find out
    // who is still connected (a closed one reads EOF or a reset).
    let mut survivors = 0;
    for c in conns.iter_mut().flatten() {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => survivors += 1,
            _ => cut += 1,
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (tried, answered) = probes.join().unwrap();

    let growth_mib = (peak.saturating_sub(baseline)) / 1024;
    figure("rel_limits.input_attackers", attackers);
    figure("rel_limits.input_attackers_cut", cut);
    figure("rel_limits.input_survivors", survivors);
    figure("rel_limits.input_rss_baseline_kib", baseline);
    figure("rel_limits.input_rss_peak_kib", peak);
    figure("rel_limits.input_rss_growth_mib", growth_mib);
    figure("rel_limits.input_probes", format!("{answered}/{tried}"));
    // The budget holds about budget_mib unfinished 1 MiB frames.
    assert!(
        survivors <= budget_mib + 2,
        "{survivors} connections kept 1 MiB each (budget {budget_mib} MiB)"
    );
    assert_eq!(cut + survivors, attackers);
    if !valgrind() {
        assert!(growth_mib <= 256, "RSS grew by {growth_mib} MiB");
    }
    assert!(tried > 0);
    assert_eq!(answered, tried, "echo and http kept answering");
    assert!(
        loopd.wait_for_log("bytes of unfinished input", TIMEOUT),
        "no warning said why connections were closed"
    );
}

#[test]
fn one_address_cannot_take_every_connection() {
    let attackers = tier(2000usize, 10_000);
    raise_nofile(attackers as u64 * 2 + 1000);
    let site = site();
    let loopd = Loopd::start_with(&shipped_like(site.path().to_str().unwrap()), "info", |_| {});
    let (echo, http) = (loopd.tcp("echo"), loopd.tcp("http"));
    let per_peer = shipped().runtime.max_connections_per_peer;
    assert!(
        per_peer > 0 && per_peer < attackers,
        "the shipped config limits peers"
    );
    // One address opens `attackers` echo connections and holds them.
    let mut held = Vec::with_capacity(attackers);
    for _ in 0..attackers {
        match TcpStream::connect_timeout(&echo, TIMEOUT) {
            Ok(s) => held.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Each one: served (its echo comes back) or refused (closed at once).
    let mut served = 0;
    for s in held.iter_mut() {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut b = [0u8; 1];
        let ok = s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok();
        served += usize::from(ok);
    }
    // While they are held, http answers the same address every time.
    let mut tried = 0;
    let mut answered = 0;
    for _ in 0..tier(50, 500) {
        tried += 1;
        answered += u32::from(http_probe(http, "127.0.0.1".parse().unwrap()));
    }
    figure("rel_limits.peer_attackers", attackers);
    figure("rel_limits.peer_echo_served", served);
    figure("rel_limits.peer_http_probes", format!("{answered}/{tried}"));
    assert_eq!(served, per_peer, "max_connections_per_peer");
    assert_eq!(answered, tried, "http served every probe");
    assert!(loopd.wait_for_log(
        &format!("max_connections_per_peer ({per_peer}) reached for 127.0.0.1"),
        TIMEOUT
    ));
}

#[test]
fn a_handlers_own_max_connections_is_enforced() {
    let site = site();
    let config = format!(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
max_connections = 5

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"
"#,
        site.path().display()
    );
    let loopd = Loopd::start(&config);
    let echo = loopd.tcp("echo");
    let mut held: Vec<TcpStream> = (0..8).map(|_| tcp(echo)).collect();
    let mut served = 0;
    for s in held.iter_mut() {
        let mut b = [0u8; 1];
        served += usize::from(s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok());
    }
    assert_eq!(served, 5);
    assert!(http_probe(loopd.tcp("http"), "127.0.0.1".parse().unwrap()));
    assert!(loopd.wait_for_log("max_connections (5) of this handler reached", TIMEOUT));
    // Closing one makes room for one more.
    drop(held.remove(0));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if echo_probe(echo) {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a close");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn quiet_connections_are_closed_after_the_idle_timeout() {
    let config = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
idle_timeout_ms = 300
"#;
    let loopd = Loopd::start(config);
    let mut quiet = tcp(loopd.tcp("echo"));
    let mut talking = tcp(loopd.tcp("echo"));
    // Talking every 30 ms (ten times inside the timeout) for 1.5 s keeps it.
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let mut b = [0u8; 2];
        talking.write_all(b"hi").unwrap();
        talking
            .read_exact(&mut b)
            .expect("the talking client was cut");
        rounds += 1;
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(read_until_closed(&mut quiet), b"", "closed");
    figure("rel_limits.idle_talking_rounds", rounds);
    assert!(loopd.wait_for_log("(idle_timeout_ms); closing it", TIMEOUT));
}

#[test]
fn udp_addresses_are_not_shared_unless_asked() {
    for (reuse, shared) in [("", false), ("reuse_address = true", true)] {
        let config = format!(
            r#"
[[handler]]
name = "relay"
plugin = "udp-broadcast"
listen = ["udp://127.0.0.1:0"]
{reuse}
[handler.config]
broadcast_to = ["127.0.0.1:9"]
"#
        );
        let loopd = Loopd::start(&config);
        let url = loopd.logs();
        let addr: SocketAddr = url
            .lines()
            .find_map(|l| l.split("listening on udp://").nth(1))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Another local user's socket, asking to share the address.
        // SAFETY: plain socket calls on a descriptor owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is new and owned by `thief` from here on.
        let thief = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: a valid int option.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let (storage, len) = sockaddr(&addr);
        // SAFETY: a valid address of `len` bytes.
        let r = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_in).cast(), len) };
        figure(
            &format!("rel_limits.udp_bind_beside_loopd_reuse_{shared}"),
            r == 0,
        );
        assert_eq!(r == 0, shared, "{reuse:?}: bind beside loopd");
        drop(thief);
    }
}
