//! The proxy handler through the real loopd binary and the built plugin:
//! byte-exact transfers both ways with both half-closes, a reply after the
//! client's EOF (`printf hi | nc -q1`), upstreams that refuse, are missing
//! or never answer, 1,000 pairs at once, Unix sockets on both sides, the
//! idle timeout and graceful shutdown. (A framing other than `raw` is
//! refused before the proxy starts: tests/setup_errors.rs.)

mod common;
mod proxy_support;
mod rel_load_util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use proxy_support::*;
use rel_load_util::{open_fds, raise_nofile};

const MIB: u64 = 1 << 20;

/// An upstream that sends `down` bytes of stream 2 while it reads the
/// client's stream to EOF, then half-closes; reports what it read.
fn exchanging_server(down: u64) -> (Server, mpsc::Receiver<Digested>) {
    let (tx, rx) = mpsc::channel();
    let server = Server::start(move |s| {
        let mut reader = s.try_clone().unwrap();
        let got = std::thread::spawn(move || recv_stream(&mut reader, 0, 1, || {}));
        let mut w = &s;
        send_stream(&mut w, down, 2, None);
        half_close(&s);
        let _ = tx.send(got.join().unwrap());
    });
    (server, rx)
}

#[test]
fn fifty_mib_each_way_arrive_byte_exact_through_both_half_closes() {
    let len = 50 * MIB;
    let (server, from_client) = exchanging_server(len);
    let loopd = Loopd::start(&proxy_config(&server.url(), "", ""));
    let client = connect(loopd.tcp("proxy"));
    let mut w = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let sent = send_stream(&mut w, len, 1, None);
        half_close(&w);
        sent
    });
    let mut r = &client;
    let got_down = recv_stream(&mut r, 0, 1, || {});
    let sent_up = sender.join().unwrap();
    let got_up = from_client
        .recv_timeout(TIMEOUT)
        .expect("the upstream's report");
    figure("proxy.bytes_up", got_up.len);
    figure("proxy.bytes_down", got_down.len);
    figure("proxy.sha256_up_match", got_up == sent_up);
    figure("proxy.sha256_down_match", got_down == expected(2, len));
    assert_eq!(got_up, sent_up, "client to upstream");
    assert_eq!(got_down, expected(2, len), "upstream to client");
    // Both EOFs went through (each side read to its end), and the pair is
    // gone from loopd: the client reads EOF, not a hang.
    assert!(
        loopd.wait_for_log("bytes to the upstream", TIMEOUT),
        "{}",
        loopd.logs()
    );
}

/// A download to a slow client that half-closed first: the pair ends with
/// the client's side still flushing, and that side, closed by the hang-up
/// after its half-close, is a clean end (`PEER`), not a broken one.
#[test]
fn a_slow_download_after_both_half_closes_ends_as_a_clean_close() {
    let len = 4 * MIB;
    let (server, from_client) = exchanging_server(len);
    let loopd = Loopd::start(&proxy_config(&server.url(), "", ""));
    let client = connect(loopd.tcp("proxy"));
    small_receive_buffer(&client, 16 << 10);
    half_close(&client);
    let mut r = &client;
    // 4 MiB at about 4 MiB/s: the upstream is done long before the client.
    let got = recv_stream(&mut r, len, 4 * MIB, || {});
    assert_eq!(got, expected(2, len));
    assert_eq!(
        from_client
            .recv_timeout(TIMEOUT)
            .expect("the upstream's report")
            .len,
        0
    );
    drop(client);
    assert!(
        loopd.wait_for_log("bytes to the upstream", TIMEOUT),
        "{}",
        loopd.logs()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!loopd.logs().contains("peer hung up"), "{}", loopd.logs());
    assert!(!loopd.logs().contains("I/O error"), "{}", loopd.logs());
}

#[test]
fn a_reply_sent_after_the_clients_eof_always_arrives() {
    // `printf hi | nc -q1 host port` through the proxy, 200 times: the
    // client half-closes at once; the upstream answers only after reading
    // EOF, then closes. Every fourth reply is 300 KiB (over the high
    // watermark), so the pair ends while loopd still has output queued.
    let server = Server::start(|mut s| {
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        let mut reply = format!("got {} bytes: ", req.len()).into_bytes();
        reply.extend_from_slice(&req);
        if req.ends_with(b"big\n") {
            reply.extend(Bytes::take(7, 300 << 10));
        }
        s.write_all(&reply).unwrap();
    });
    let loopd = Loopd::start(&proxy_config(&server.url(), "", ""));
    let addr = loopd.tcp("proxy");
    let runs = 200;
    let mut complete = 0;
    for i in 0..runs {
        let mut c = connect(addr);
        let req: &[u8] = if i % 4 == 0 { b"hi big\n" } else { b"hi\n" };
        c.write_all(req).unwrap();
        half_close(&c);
        let mut reply = Vec::new();
        c.read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("run {i}: {e}"));
        let mut want = format!("got {} bytes: ", req.len()).into_bytes();
        want.extend_from_slice(req);
        if i % 4 == 0 {
            want.extend(Bytes::take(7, 300 << 10));
        }
        if reply == want {
            complete += 1;
        } else {
            eprintln!("run {i}: {} bytes instead of {}", reply.len(), want.len());
        }
    }
    figure(
        "proxy.replies_after_eof_complete",
        format!("{complete}/{runs}"),
    );
    assert_eq!(complete, runs);
}

#[test]
fn a_refused_upstream_closes_the_client_with_one_warning_naming_it() {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let loopd = Loopd::start(&proxy_config(&url, "", ""));
    let addr = loopd.tcp("proxy");
    let clients = 20;
    for i in 0..clients {
        let mut c = connect(addr);
        // Whatever the client sends is never forwarded anywhere.
        let _ = c.write_all(b"hello?\n");
        let got = read_until_closed(&mut c);
        assert!(got.is_empty(), "client {i} got {got:?}");
    }
    let needle = format!("upstream {url} refused or is unreachable");
    assert!(loopd.wait_for_log(&needle, TIMEOUT), "{}", loopd.logs());
    let lines = loopd.logs().lines().filter(|l| l.contains(&needle)).count();
    figure("proxy.refused_clients_closed", clients);
    figure("proxy.refused_warnings", lines);
    // One warning at once, then at most one per 10 s with the count.
    assert!(
        (1..=2).contains(&lines),
        "{lines} warnings:\n{}",
        loopd.logs()
    );
    assert!(loopd.logs().contains(" WARN "), "{}", loopd.logs());
}

#[test]
fn a_missing_unix_upstream_closes_the_client_with_a_warning() {
    let config = proxy_config("unix://{dir}/nobody.sock", "", "");
    let loopd = Loopd::start(&config);
    let mut c = connect(loopd.tcp("proxy"));
    assert!(read_until_closed(&mut c).is_empty());
    assert!(
        loopd.wait_for_log("nobody.sock refused or is unreachable", TIMEOUT),
        "{}",
        loopd.logs()
    );
}

/// A listening socket whose accept queue is full: a connect to it gets no
/// answer (the kernel drops the SYN) until it gives up.
fn unanswering_listener() -> (std::os::fd::OwnedFd, Vec<TcpStream>, u16) {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // sockaddr is a zeroed sockaddr_in with family, address and port set.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut out_len = len;
        assert_eq!(
            libc::getsockname(
                fd,
                (&mut out as *mut libc::sockaddr_in).cast(),
                &mut out_len
            ),
            0
        );
        let port = u16::from_be(out.sin_port);
        // Fill the accept queue (a backlog of 0 holds one).
        let mut fill = Vec::new();
        for _ in 0..2 {
            let addr = ([127, 0, 0, 1], port).into();
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                fill.push(s);
            }
        }
        assert!(!fill.is_empty(), "could not fill the accept queue");
        (owned, fill, port)
    }
}

#[test]
fn an_upstream_that_never_answers_is_given_up_at_connect_timeout_ms() {
    let (_listener, _fill, port) = unanswering_listener();
    let url = format!("tcp://127.0.0.1:{port}");
    let loopd = Loopd::start(&proxy_config(&url, "connect_timeout_ms = 300", ""));
    let mut c = connect(loopd.tcp("proxy"));
    let started = Instant::now();
    let got = read_until_closed(&mut c);
    figure(
        "proxy.connect_timeout_close_ms",
        started.elapsed().as_millis(),
    );
    assert!(got.is_empty());
    let needle = format!("upstream {url} did not answer within connect_timeout_ms (300 ms)");
    assert!(loopd.wait_for_log(&needle, TIMEOUT), "{}", loopd.logs());
}

#[test]
fn a_thousand_pairs_at_once_each_echo_their_own_bytes() {
    let pairs = 1000;
    raise_nofile(3 * pairs as u64 + 200);
    let port = free_port();
    let echo = format!(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:{port}"]
"#
    );
    let loopd = Loopd::start_with(
        &proxy_config(&format!("tcp://127.0.0.1:{port}"), "", &echo),
        "info",
        |_| {},
    );
    let addr = loopd.tcp("proxy");
    let fds_before = open_fds(loopd.pid());
    let mut clients: Vec<TcpStream> = (0..pairs).map(|_| connect(addr)).collect();
    let size = 4096 + 517;
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&Bytes::take(i as u64 + 100, size)).unwrap();
    }
    let mut exact = 0;
    let mut buf = vec![0u8; size];
    for (i, c) in clients.iter_mut().enumerate() {
        c.read_exact(&mut buf).unwrap();
        if buf == Bytes::take(i as u64 + 100, size) {
            exact += 1;
        }
    }
    // Every pair is still open here: a client and an upstream connection
    // in the proxy, the upstream's accepted end in echo.
    let fds_open = open_fds(loopd.pid()) - fds_before;
    figure("proxy.pairs_at_once", pairs);
    figure("proxy.pairs_byte_exact", format!("{exact}/{pairs}"));
    figure("proxy.loopd_fds_for_pairs", fds_open);
    assert_eq!(exact, pairs);
    assert!(
        fds_open >= 3 * pairs,
        "{fds_open} descriptors for {pairs} pairs"
    );
    // Half-close every client: each gets EOF back through the pair.
    for c in &clients {
        half_close(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(read_until_closed(c).is_empty(), "client {i}");
    }
}

#[test]
fn unix_sockets_on_both_sides() {
    let echo = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["unix://{dir}/echo.sock"]
"#;
    let config = proxy_config("unix://{dir}/echo.sock", "", echo).replace(
        r#"listen = ["tcp://127.0.0.1:0"]"#,
        r#"listen = ["unix://{dir}/proxy.sock"]"#,
    );
    let loopd = Loopd::start(&config);
    let data = Bytes::take(9, 8 << 20);
    let got = echo_roundtrip(unix(&loopd.unix("proxy")), &data);
    figure("proxy.unix_bytes_round_trip", got.len());
    assert!(
        got == data,
        "8 MiB through a unix client and a unix upstream"
    );
    // And a half-close over unix sockets comes back as EOF.
    let mut s: UnixStream = unix(&loopd.unix("proxy"));
    s.write_all(b"last words").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"last words");
}

#[test]
fn a_full_queue_toward_an_echo_upstream_never_stops_its_replies() {
    // loopd's echo stops reading a connection while its output to it is
    // full, as any blocking server does. If the proxy stopped reading the
    // upstream because its queue toward the upstream was full, neither
    // would ever drain: the round trip would hang. Unix sockets (small
    // kernel buffers) and both directions at full speed make it likely.
    let echo = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["unix://{dir}/echo.sock"]
"#;
    let config = proxy_config("unix://{dir}/echo.sock", "", echo).replace(
        r#"listen = ["tcp://127.0.0.1:0"]"#,
        r#"listen = ["unix://{dir}/proxy.sock"]"#,
    );
    let loopd = Loopd::start_with(&config, "info", |_| {});
    let runs = 6;
    let mut complete = 0;
    for i in 0..runs {
        let data = Bytes::take(20 + i, 16 << 20);
        if echo_roundtrip(unix(&loopd.unix("proxy")), &data) == data {
            complete += 1;
        }
    }
    figure("proxy.echo_round_trips_16mib", format!("{complete}/{runs}"));
    assert_eq!(complete, runs);
}

#[test]
fn an_idle_pair_is_closed_at_idle_timeout_ms() {
    let port = free_port();
    let echo = format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\n"
    );
    let loopd = Loopd::start(&proxy_config(
        &format!("tcp://127.0.0.1:{port}"),
        "idle_timeout_ms = 300",
        &echo,
    ));
    let mut c = connect(loopd.tcp("proxy"));
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let started = Instant::now();
    assert!(read_until_closed(&mut c).is_empty());
    figure("proxy.idle_close_ms", started.elapsed().as_millis());
    assert!(loopd.wait_for_log("idle for", TIMEOUT), "{}", loopd.logs());
}

#[test]
fn at_shutdown_idle_pairs_close_and_a_download_in_progress_finishes() {
    let len = 8 * MIB;
    // "d": a download of `len` bytes; "i": one line, then nothing.
    let server = Server::start(move |s| {
        let mut cmd = [0u8; 1];
        if (&s).read_exact(&mut cmd).is_err() {
            return;
        }
        let mut w = &s;
        if cmd == *b"d" {
            send_stream(&mut w, len, 3, None);
        } else {
            w.write_all(b"ok\n").unwrap();
        }
        // Wait for the proxy to end the pair.
        let mut rest = Vec::new();
        let _ = (&s).read_to_end(&mut rest);
    });
    let config = proxy_config(&server.url(), "shutdown_idle_ms = 200", "")
        .replace("shutdown_timeout_ms = 5000", "shutdown_timeout_ms = 20000");
    let mut loopd = Loopd::start(&config);
    let addr = loopd.tcp("proxy");
    let mut idle = connect(addr);
    idle.write_all(b"i").unwrap();
    let mut ok = [0u8; 3];
    idle.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok\n");
    // A download read at 2 MB/s: about 4 s, still going at the signal.
    let mut dl = connect(addr);
    dl.write_all(b"d").unwrap();
    let downloader = std::thread::spawn(move || {
        let mut r = &dl;
        recv_stream(&mut r, len, 2_000_000, || {})
    });
    std::thread::sleep(Duration::from_millis(500));
    loopd.signal(libc::SIGTERM);
    // The idle pair is closed by the proxy (not at the deadline).
    assert!(read_until_closed(&mut idle).is_empty());
    let got = downloader.join().unwrap();
    let status = loopd.wait_exit(TIMEOUT);
    figure("proxy.shutdown_download_intact", got == expected(3, len));
    figure("proxy.shutdown_exit_ok", status.success());
    assert_eq!(got, expected(3, len), "the download finished intact");
    assert!(status.success(), "{}", loopd.logs());
    assert!(
        !loopd.logs().contains("shutdown timeout"),
        "{}",
        loopd.logs()
    );
}

/// An upstream that is the proxy's own listener: each connection would
/// connect to itself again, until max_connections. The first is refused,
/// with one error naming both.
#[test]
fn an_upstream_that_is_the_proxys_own_listener_is_refused_not_looped() {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let tcp_config = proxy_config(&url, "", "")
        .replace("tcp://127.0.0.1:0", &url)
        .replace("[runtime]\n", "[runtime]\nmax_connections = 40\n");
    let unix_config = proxy_config("unix://{dir}/proxy.sock", "", "")
        .replace("tcp://127.0.0.1:0", "unix://{dir}/proxy.sock")
        .replace("[runtime]\n", "[runtime]\nmax_connections = 40\n");
    for config in [tcp_config, unix_config] {
        let loopd = Loopd::start(&config);
        loopd.expect_error("is this proxy's own listener");
        for _ in 0..3 {
            let got = if config.contains("unix://") {
                let mut c = unix(&loopd.unix("proxy"));
                let _ = c.write_all(b"hello?\n");
                let mut got = Vec::new();
                let _ = c.read_to_end(&mut got);
                got
            } else {
                let mut c = connect(format!("127.0.0.1:{port}").parse().unwrap());
                let _ = c.write_all(b"hello?\n");
                read_until_closed(&mut c)
            };
            assert!(got.is_empty(), "{got:?}");
        }
        let needle = "is this proxy's own listener";
        assert!(loopd.wait_for_log(needle, TIMEOUT), "{}", loopd.logs());
        std::thread::sleep(Duration::from_millis(200));
        let logs = loopd.logs();
        assert_eq!(
            logs.lines().filter(|l| l.contains(needle)).count(),
            1,
            "{logs}"
        );
        assert!(!logs.contains("max_connections"), "{logs}");
    }
}

/// Closes `s` with a reset (`SO_LINGER` 0) instead of a FIN.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns, from a local of the
    // option's size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(s);
}

/// Reads `s` until it ends: what came, and whether it ended with a reset
/// (`true`) or a clean EOF.
fn read_to_end_or_reset(s: &mut TcpStream) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
    }
}

/// A side that resets mid-stream is passed on as a reset: the other side
/// gets what came before it, then an error, never a clean end that would
/// make a cut-off stream look complete. Both ways.
#[test]
fn a_reset_on_one_side_is_passed_on_as_a_reset() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", upstream.local_addr().unwrap());
    let loopd = Loopd::start(&proxy_config(&url, "", ""));
    let addr = loopd.tcp("proxy");
    let sent = pattern(100_000, 3);
    // `from` sends, then resets; `to` must see a prefix of it, then a reset.
    let one_way = |mut from: TcpStream, mut to: TcpStream, from_name: &str, to_name: &str| {
        from.write_all(&sent).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        reset(from);
        let (got, was_reset) = read_to_end_or_reset(&mut to);
        assert!(
            sent.starts_with(&got),
            "a prefix of what the {from_name} sent"
        );
        assert!(
            was_reset,
            "the {to_name} saw a clean end after {} bytes",
            got.len()
        );
    };
    let client = connect(addr);
    let (up, _) = upstream.accept().unwrap();
    one_way(up, client, "upstream", "client");
    let client = connect(addr);
    let (up, _) = upstream.accept().unwrap();
    one_way(client, up, "client", "upstream");
}
