//! The http handler's defences over raw sockets: size limits (414, 431),
//! request smuggling (400, then close), bad versions (505), slowloris (408)
//! and idle keep-alive connections.

mod common;
mod http_util;

use std::io::Write;

use common::*;
use http_util::*;

/// Sends `raw` on a fresh connection, closes the sending side, and checks
/// that exactly one response with `status` comes back before the server
/// closes: nothing after the bad request is ever answered.
fn refused(addr: std::net::SocketAddr, raw: &[u8], status: u16) -> Resp {
    let all = exchange_all(addr, raw);
    let resps = parse_all(&all);
    assert_eq!(
        resps.len(),
        1,
        "{:?} got:\n{}",
        String::from_utf8_lossy(raw),
        String::from_utf8_lossy(&all)
    );
    let r = resps.into_iter().next().unwrap();
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(raw));
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(r.text().contains(&format!("<h1>{status} ")), "{}", r.text());
    r
}

/// A follow-up request smuggled behind a bad one.
const SMUGGLED: &str = "GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn request_line_over_8_kib_is_414() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    // "GET /" + path + " HTTP/1.1" = 8192 bytes exactly: accepted (404).
    let path = "a".repeat(8192 - "GET / HTTP/1.1".len());
    let r = exchange(
        addr,
        format!("GET /{path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 404);
    let path = "a".repeat(8193 - "GET / HTTP/1.1".len());
    refused(
        addr,
        format!("GET /{path} HTTP/1.1\r\nHost: t\r\n\r\n{SMUGGLED}").as_bytes(),
        414,
    );
    // Without a line end at all, once the limit is passed.
    refused(addr, format!("GET /{}", "b".repeat(10_000)).as_bytes(), 414);
}

#[test]
fn headers_over_16_kib_or_100_fields_are_431() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    // 100 fields (Host included) are fine, 101 are not.
    let fields = |n: usize| -> String { (1..n).map(|i| format!("X-F{i}: v\r\n")).collect() };
    let r = exchange(
        addr,
        format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\n{}\r\n", fields(100)).as_bytes(),
    );
    assert_eq!(r.status, 200);
    refused(
        addr,
        format!(
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\n{}\r\n{SMUGGLED}",
            fields(101)
        )
        .as_bytes(),
        431,
    );
    // 16 KiB of header section is fine, one byte more is not.
    let header_section = |size: usize| {
        let fixed = "Host: t\r\nX-Big: \r\n\r\n".len();
        format!("Host: t\r\nX-Big: {}\r\n\r\n", "v".repeat(size - fixed))
    };
    let r = exchange(
        addr,
        format!("GET /hello.txt HTTP/1.1\r\n{}", header_section(16 * 1024)).as_bytes(),
    );
    assert_eq!(r.status, 200);
    refused(
        addr,
        format!(
            "GET /hello.txt HTTP/1.1\r\n{}{SMUGGLED}",
            header_section(16 * 1024 + 1)
        )
        .as_bytes(),
        431,
    );
    // An endless header section is refused once it passes the limit.
    refused(
        addr,
        format!("GET / HTTP/1.1\r\nHost: t\r\nX: {}", "v".repeat(40_000)).as_bytes(),
        431,
    );
}

#[test]
fn smuggling_attempts_get_400_and_the_connection_closes() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let cases: &[&[u8]] = &[
        // Transfer-Encoding together with Content-Length.
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n",
        // Conflicting or malformed Content-Length.
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 4, 5\r\n\r\nabcde",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: +4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: \r\n\r\n",
        // Transfer-Encoding that does not end in chunked, or in HTTP/1.0.
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Obsolete line folding.
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        // Invalid characters.
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"G ET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        // Host missing (HTTP/1.1) or repeated.
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        // Malformed targets.
        b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a%zz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a% HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    for case in cases {
        let mut raw = case.to_vec();
        raw.extend_from_slice(SMUGGLED.as_bytes());
        refused(addr, &raw, 400);
    }
}

#[test]
fn after_a_400_the_server_closes_even_if_the_client_does_not() {
    let site = Site::new();
    let loopd = site.serve("lingering_timeout_ms = 300");
    let mut c = Client::connect(loopd.tcp("http"));
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let r = c.read(false);
    assert_eq!(r.status, 400);
    // What the client sends now is read and thrown away (lingering), never
    // answered; then the server closes.
    c.send(SMUGGLED.as_bytes());
    assert!(c.closed());
}

#[test]
fn unsupported_versions_get_505() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    for line in [
        "GET / HTTP/2.0",
        "GET / HTTP/1.2",
        "GET / HTTP/3.0",
        "GET / HTTP/0.9",
    ] {
        refused(
            addr,
            format!("{line}\r\nHost: t\r\n\r\n{SMUGGLED}").as_bytes(),
            505,
        );
    }
    refused(
        addr,
        format!("GET / FTP/1.0\r\n\r\n{SMUGGLED}").as_bytes(),
        400,
    );
}

#[test]
fn slowloris_gets_408_and_is_closed() {
    let site = Site::new();
    // A second instance with the default timeout shows that the loop keeps
    // serving others (a short timeout there would race with a slow test
    // machine).
    let root = site.root.display();
    let loopd = Loopd::start(&format!(
        r#"
[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{root}"
header_timeout_ms = 500
lingering_timeout_ms = 200

[[handler]]
name = "patient"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{root}"
"#
    ));
    let addr = loopd.tcp("http");
    // A partial head that never completes.
    let mut partial = Client::connect(addr);
    partial.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ");
    // A connection that sends nothing.
    let mut silent = Client::connect(addr);
    // A trickle: one byte every 50 ms does not buy more time (bounded: at
    // most 100 bytes, stopping as soon as the server answers).
    let mut trickle = Client::connect(addr);
    trickle.send(b"GET / HTTP/1.1\r\n");
    let mut sent = 0;
    while sent < 100 {
        if trickle.stream.write_all(b"X").is_err() {
            break;
        }
        sent += 1;
        pause(50);
        if loopd.logs().matches(" 408 ").count() >= 3 {
            break;
        }
    }
    for c in [&mut partial, &mut silent, &mut trickle] {
        let r = c.read(false);
        assert_eq!(r.status, 408);
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(c.closed());
    }
    assert!(sent < 100, "the trickling client was never cut off");
    // Others are served all along.
    assert_eq!(
        Client::connect(loopd.tcp("patient"))
            .get("/hello.txt")
            .status,
        200
    );
}

#[test]
fn a_slow_but_complete_request_is_served() {
    let site = Site::new();
    let loopd = site.serve("header_timeout_ms = 30000");
    let mut c = Client::connect(loopd.tcp("http"));
    for part in [
        &b"GET /hello.txt HT"[..],
        b"TP/1.1\r\nHo",
        b"st: t\r\n",
        b"\r\n",
    ] {
        c.send(part);
        pause(100);
    }
    assert_eq!(c.read(false).status, 200);
}

#[test]
fn idle_keep_alive_connections_are_closed_quietly() {
    let site = Site::new();
    let loopd = site.serve("keepalive_timeout_ms = 300");
    let mut c = Client::connect(loopd.tcp("http"));
    assert_eq!(c.get("/hello.txt").status, 200);
    // No 408 for an idle connection: just a close.
    assert!(c.closed());
}

#[test]
fn the_header_timeout_covers_a_body_being_discarded() {
    let site = Site::new();
    // Long enough for the first request to arrive even on a slow machine.
    let loopd = site.serve("header_timeout_ms = 3000\nlingering_timeout_ms = 200");
    let mut c = Client::connect(loopd.tcp("http"));
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npart");
    assert_eq!(c.read(false).status, 200);
    // The rest of the body never comes.
    let r = c.read(false);
    assert_eq!(r.status, 408);
    assert!(c.closed());
}

#[test]
fn every_refusal_is_in_the_access_log() {
    let site = Site::new();
    // Two instances: the 408 needs a short header timeout, which the other
    // refusals must not race against on a slow machine.
    let root = site.root.display();
    let loopd = Loopd::start(&format!(
        r#"
[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{root}"

[[handler]]
name = "impatient"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{root}"
header_timeout_ms = 300
"#
    ));
    let addr = loopd.tcp("http");
    refused(addr, b"GET / HTTP/1.1\r\n\r\n", 400);
    refused(
        addr,
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000)).as_bytes(),
        414,
    );
    let mut c = Client::connect(loopd.tcp("impatient"));
    assert_eq!(c.read(false).status, 408);
    for status in [" 400 ", " 414 ", " 408 "] {
        assert!(
            loopd.wait_for_log(status, TIMEOUT),
            "no {status} line:\n{}",
            loopd.logs()
        );
    }
    let lines = access_lines(&loopd);
    assert!(
        lines.iter().any(|l| l.contains("\"GET / HTTP/1.1\" 400 ")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("\"-\" 414 ")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("\"-\" 408 ")), "{lines:#?}");
}

#[test]
fn a_refused_client_that_is_still_sending_reads_its_response() {
    // The server refuses after 16 KiB of a 4 MiB header section. Closing
    // with unread input would reset the connection and could destroy the
    // 431 before the client reads it; lingering reads and discards the
    // rest instead, then closes once the client is done.
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    for _ in 0..3 {
        let mut c = Client::connect(addr);
        let mut writer = c.stream.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            let mut raw = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
            raw.resize(4 << 20, b'v');
            let sent = writer.write_all(&raw).is_ok();
            let _ = writer.shutdown(std::net::Shutdown::Write);
            sent
        });
        let r = c.read(false);
        assert_eq!(r.status, 431);
        assert!(c.closed());
        assert!(
            t.join().unwrap(),
            "the server stopped reading before the client finished"
        );
    }
}
