//! Reliability: many connections at once. 10,000 idle TCP connections plus
//! 1,000 Unix-socket connections to the echo handler are held open (5 s in
//! the CI tier, 30 s in the soak tier), then each echoes one message: all
//! 11,000 must answer.

mod common;
mod rel_load_util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use rel_load_util::*;

const TCP_CONNS: usize = 10_000;
const UNIX_CONNS: usize = 1_000;

/// One client, of either kind.
enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Client {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Client::Tcp(s) => s.write_all(data),
            Client::Unix(s) => s.write_all(data),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Client::Tcp(s) => s.read_exact(buf),
            Client::Unix(s) => s.read_exact(buf),
        }
    }
}

/// Connects, retrying briefly when the accept backlog is momentarily full
/// (the kernel drops the SYN and the connect would wait a full second).
fn connect_tcp(addr: std::net::SocketAddr) -> TcpStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline && e.kind() != ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("connecting to loopd: {e}"),
        }
    }
}

#[test]
fn eleven_thousand_connections_held_then_each_echoes_once() {
    // The client side holds 11,000 descriptors and so does loopd (which
    // inherits this limit): the default soft limit of 1,024 is far too low.
    let limit = raise_nofile(20_000);
    assert!(
        limit >= (TCP_CONNS + UNIX_CONNS + 200) as u64,
        "RLIMIT_NOFILE hard limit {limit} is below what this test needs"
    );
    let hold = Duration::from_secs(tier(5, 30));
    let config = format!(
        r#"
[runtime]
max_connections = {}
shutdown_timeout_ms = 2000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/echo.sock"]
"#,
        TCP_CONNS + UNIX_CONNS + 100
    );
    // Info level: debug would log two lines per connection.
    let loopd = Loopd::start_with(&config, "info", |_| {});
    let addr = loopd.tcp("echo");
    let path = loopd.unix("echo");
    let fds_before = open_fds(loopd.pid());

    let started = Instant::now();
    let mut clients = Vec::with_capacity(TCP_CONNS + UNIX_CONNS);
    for i in 0..TCP_CONNS + UNIX_CONNS {
        assert!(
            started.elapsed() < 4 * TIMEOUT,
            "connecting took too long ({i} connected)"
        );
        let c = if i % 11 == 10 {
            let s = UnixStream::connect(&path).expect("a unix connection");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.set_write_timeout(Some(TIMEOUT)).unwrap();
            Client::Unix(s)
        } else {
            let s = connect_tcp(addr);
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.set_write_timeout(Some(TIMEOUT)).unwrap();
            Client::Tcp(s)
        };
        clients.push(c);
    }
    let tcp = clients
        .iter()
        .filter(|c| matches!(c, Client::Tcp(_)))
        .count();
    assert_eq!(
        (tcp, clients.len() - tcp),
        (TCP_CONNS, UNIX_CONNS),
        "connection mix"
    );

    // Wait until loopd holds every one (accepted, not just queued in the
    // kernel's backlog), then hold them idle.
    let deadline = Instant::now() + TIMEOUT;
    let mut server_fds = open_fds(loopd.pid()) - fds_before;
    while server_fds < clients.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        server_fds = open_fds(loopd.pid()) - fds_before;
    }
    figure("rel_many_conns.server_fds", server_fds);
    assert!(
        server_fds >= clients.len(),
        "loopd holds {server_fds} connection descriptors, expected {}",
        clients.len()
    );
    std::thread::sleep(hold);

    // One echo each: write every message first, then read every answer.
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("m{i:05};").as_bytes())
            .expect("writing to a held connection");
    }
    let mut answered = 0;
    let mut wrong = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let want = format!("m{i:05};");
        let mut got = vec![0u8; want.len()];
        match c.read_exact(&mut got) {
            Ok(()) if got == want.as_bytes() => answered += 1,
            Ok(()) => wrong.push(format!("{i}: {:?}", String::from_utf8_lossy(&got))),
            Err(e) => wrong.push(format!("{i}: {e}")),
        }
    }
    let total = clients.len();
    figure("rel_many_conns.answered", answered);
    figure("rel_many_conns.total", total);
    figure("rel_many_conns.hold_s", hold.as_secs());
    assert_eq!(
        answered,
        total,
        "{} connections did not echo; first: {:?}",
        wrong.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    );
    drop(clients);
    // loopd lets them all go again.
    let deadline = Instant::now() + TIMEOUT;
    while open_fds(loopd.pid()) > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        open_fds(loopd.pid()),
        fds_before,
        "loopd kept descriptors of closed connections"
    );
}
