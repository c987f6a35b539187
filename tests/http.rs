//! The http handler over raw sockets: headers, methods, paths, keep-alive,
//! pipelining, split requests, conditionals, ranges, the access log.

mod common;
mod http_util;

use std::io::Write;
use std::time::Duration;

use common::*;
use http_util::*;

#[test]
fn get_serves_the_file_with_every_header() {
    let site = Site::new();
    let loopd = site.serve("");
    let r = exchange(loopd.tcp("http"), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(r.body, site.file("index.html"));
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        r.header("Content-Length"),
        Some(site.file("index.html").len().to_string().as_str())
    );
    assert_eq!(r.header("Server"), Some("loopd/0.1.0"));
    let date = r.header("Date").unwrap();
    assert!(date.ends_with(" GMT") && date.len() == 29, "Date: {date}");
    let lm = r.header("Last-Modified").unwrap();
    assert!(
        lm.ends_with(" GMT") && lm.len() == 29,
        "Last-Modified: {lm}"
    );
    let etag = r.header("ETag").unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 4,
        "ETag: {etag}"
    );
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(
        r.header("Connection"),
        None,
        "HTTP/1.1 keeps the connection by default"
    );
}

#[test]
fn head_has_exactly_the_headers_of_get_and_no_body() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    for path in [
        "/",
        "/style.css",
        "/img/loop.png",
        "/missing",
        "/docs",
        "/empty.txt",
    ] {
        let mut c = Client::connect(addr);
        // HEAD then GET on one connection: if HEAD carried a body, the GET's
        // response would not parse.
        c.send(
            format!(
                "HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\nGET {path} HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .as_bytes(),
        );
        let head = c.read(true);
        let get = c.read(false);
        let strip = |r: &Resp| {
            r.headers
                .iter()
                .filter(|(n, _)| n != "Date")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(head.status, get.status, "{path}");
        assert_eq!(
            strip(&head),
            strip(&get),
            "{path}: HEAD and GET headers differ"
        );
        assert!(head.has("Date"));
    }
}

#[test]
fn content_types_follow_the_extension() {
    let site = Site::new();
    let loopd = site.serve(r#"types = { xyz = "text/x-custom; charset=utf-8" }"#);
    let addr = loopd.tcp("http");
    for (path, ty) in [
        ("/style.css", "text/css; charset=utf-8"),
        ("/img/loop.png", "image/png"),
        ("/hello.txt", "text/plain; charset=utf-8"),
        ("/docs/", "text/html; charset=utf-8"),
        ("/data.bin", "application/octet-stream"),
        ("/noext", "application/octet-stream"),
        ("/page.xyz", "text/x-custom; charset=utf-8"),
    ] {
        let r = Client::connect(addr).get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("Content-Type"), Some(ty), "{path}");
    }
}

#[test]
fn missing_file_is_404_with_a_small_html_body() {
    let site = Site::new();
    let loopd = site.serve("");
    let r = Client::connect(loopd.tcp("http")).get("/no/such/file.html");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(r.text().contains("<h1>404 Not Found</h1>"), "{}", r.text());
    assert!(r.body.len() < 512);
    assert!(r.has("Server") && r.has("Date"));
}

#[test]
fn other_methods_get_405_with_allow_and_the_connection_stays() {
    let site = Site::new();
    let loopd = site.serve("");
    let mut c = Client::connect(loopd.tcp("http"));
    for method in [
        "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "get", "BREW",
    ] {
        c.send(
            format!("{method} /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
                .as_bytes(),
        );
        let r = c.read(false);
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{method}");
    }
    // The bodies were read and discarded: the connection is still in step.
    assert_eq!(c.get("/hello.txt").body, b"hello, world\n");
}

#[test]
fn directories_serve_their_index_or_redirect_to_the_slash() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let r = Client::connect(addr).get("/docs/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, site.file("docs/index.html"));

    for (target, location) in [
        ("/docs", "/docs/"),
        ("/docs?x=1&y", "/docs/?x=1&y"),
        ("//docs", "/docs/"),
        ("/img/../docs", "/docs/"),
        ("/a%20b", "/a%20b/"),
        ("http://example.test/docs", "/docs/"),
    ] {
        let r = Client::connect(addr).get(target);
        assert_eq!(r.status, 301, "{target}");
        assert_eq!(r.header("Location"), Some(location), "{target}");
        assert!(r
            .text()
            .contains(&format!("href=\"{}\"", location.replace('&', "&amp;"))));
    }
    // A directory with no index is not listed.
    assert_eq!(Client::connect(addr).get("/noindex/").status, 403);
    assert_eq!(Client::connect(addr).get("/noindex/file.txt").status, 200);
    // A file named with a trailing slash is not a directory.
    assert_eq!(Client::connect(addr).get("/hello.txt/").status, 404);
    // Percent-encoded names.
    let r = Client::connect(addr).get("/a%20b/c%20d.txt");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"spaces"[..]));
}

#[test]
fn hidden_files_are_not_served_but_well_known_is() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    assert_eq!(Client::connect(addr).get("/.hidden").status, 404);
    assert_eq!(Client::connect(addr).get("/%2ehidden").status, 404);
    assert_eq!(
        Client::connect(addr)
            .get("/.well-known/security.txt")
            .status,
        200
    );

    let loopd = site.serve("hidden_files = true");
    assert_eq!(
        Client::connect(loopd.tcp("http")).get("/.hidden").status,
        200
    );
}

#[test]
fn an_index_option_names_another_file() {
    let site = Site::new();
    std::fs::write(site.root.join("docs/home.htm"), "home").unwrap();
    let loopd = site.serve(r#"index = "home.htm""#);
    let r = Client::connect(loopd.tcp("http")).get("/docs/");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"home"[..]));
    assert_eq!(Client::connect(loopd.tcp("http")).get("/").status, 403);
}

#[test]
fn http11_keeps_the_connection_and_honours_connection_close() {
    let site = Site::new();
    let loopd = site.serve("");
    let mut c = Client::connect(loopd.tcp("http"));
    for _ in 0..5 {
        assert_eq!(c.get("/hello.txt").status, 200);
    }
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.read(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let mut c = Client::connect(addr);
    c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n");
    let r = c.read(false);
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert!(c.closed());

    let mut c = Client::connect(addr);
    for _ in 0..3 {
        c.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read(false);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Connection"), Some("keep-alive"));
    }
    c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n");
    assert_eq!(c.read(false).status, 200);
    assert!(c.closed());
}

#[test]
fn keep_alive_zero_closes_after_every_response() {
    let site = Site::new();
    let loopd = site.serve("keepalive_timeout_ms = 0");
    let mut c = Client::connect(loopd.tcp("http"));
    let r = c.get("/hello.txt");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let site = Site::new();
    let loopd = site.serve("");
    let paths = [
        "/hello.txt",
        "/data.bin",
        "/missing",
        "/style.css",
        "/docs",
        "/img/loop.png",
        "/",
        "/data.bin",
        "/hello.txt",
    ];
    let mut raw = Vec::new();
    for p in paths {
        raw.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    raw.extend_from_slice(b"GET /empty.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let all = exchange_all(loopd.tcp("http"), &raw);
    let resps = parse_all(&all);
    assert_eq!(resps.len(), paths.len() + 1);
    for (p, r) in paths.iter().zip(&resps) {
        match *p {
            "/missing" => assert_eq!(r.status, 404),
            "/docs" => assert_eq!(r.status, 301),
            "/" => assert_eq!(r.body, site.file("index.html")),
            p => assert_eq!(r.body, site.file(&p[1..]), "{p}"),
        }
    }
    assert_eq!(resps.last().unwrap().status, 200);
}

#[test]
fn many_pipelined_requests_behind_a_large_response() {
    // A response larger than the output watermark first, then 200 small
    // requests in the same write: the server must stop parsing while the
    // first streams, and answer all of them in order.
    let site = Site::new();
    std::fs::write(site.root.join("big.bin"), pattern(3 << 20, 9)).unwrap();
    let loopd = site.serve("");
    let mut raw = b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    for i in 0..200 {
        let path = if i % 2 == 0 { "/hello.txt" } else { "/missing" };
        raw.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    let all = exchange_all(loopd.tcp("http"), &raw);
    let resps = parse_all(&all);
    assert_eq!(resps.len(), 201);
    assert!(resps[0].body == site.file("big.bin"));
    for (i, r) in resps[1..].iter().enumerate() {
        assert_eq!(
            r.status,
            if i % 2 == 0 { 200 } else { 404 },
            "response {}",
            i + 1
        );
    }
}

#[test]
fn requests_arriving_one_byte_at_a_time() {
    let site = Site::new();
    let loopd = site.serve("");
    let mut c = Client::connect(loopd.tcp("http"));
    let raw =
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nAccept: */*\r\nX-Long: aaaaaaaaaaaaaaaa\r\n\r\n\
                HEAD /style.css HTTP/1.1\r\nHost: t\r\n\r\n\
                GET /docs/ HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody\
                GET /missing HTTP/1.1\r\nHost: t\r\n\r\n";
    for b in raw.iter() {
        c.stream.write_all(&[*b]).unwrap();
        c.stream.flush().unwrap();
    }
    assert_eq!(c.read(false).body, b"hello, world\n");
    let head = c.read(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Type"), Some("text/css; charset=utf-8"));
    assert_eq!(c.read(false).body, site.file("docs/index.html"));
    assert_eq!(c.read(false).status, 404);
}

#[test]
fn request_bodies_on_get_are_discarded() {
    let site = Site::new();
    let loopd = site.serve("max_discard_body = 1000");
    let addr = loopd.tcp("http");
    let mut c = Client::connect(addr);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789");
    assert_eq!(c.read(false).status, 200);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nTrailer: 1\r\n\r\n");
    assert_eq!(c.read(false).status, 200);
    // The body arriving after the response (split across writes).
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nab");
    assert_eq!(c.read(false).status, 200);
    c.send(b"cdef");
    assert_eq!(c.get("/style.css").status, 200);

    // Over the limit: 413, then the connection closes.
    let all = exchange_all(
        addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let resps = parse_all(&all);
    assert_eq!(resps.len(), 1, "{}", String::from_utf8_lossy(&all));
    assert_eq!(resps[0].status, 413);

    // A chunked body over the limit closes the connection after the response.
    let mut raw =
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
    raw.extend_from_slice(&[b'x'; 0x800]);
    raw.extend_from_slice(b"\r\n0\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let resps = parse_all(&exchange_all(addr, &raw));
    assert_eq!(resps.len(), 1);
    assert_eq!(resps[0].status, 200);
}

#[test]
fn conditional_requests_give_304() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let first = Client::connect(addr).get("/style.css");
    let etag = first.header("ETag").unwrap().to_string();
    let lm = first.header("Last-Modified").unwrap().to_string();
    let req = |extra: &str| {
        exchange(
            addr,
            format!("GET /style.css HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes(),
        )
    };
    let r = req(&format!("If-None-Match: {etag}\r\n"));
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("ETag"), Some(etag.as_str()));
    assert_eq!(r.header("Last-Modified"), Some(lm.as_str()));
    assert!(r.has("Date") && r.has("Server"));
    assert_eq!(
        req(&format!("If-None-Match: \"x\", W/{etag}\r\n")).status,
        304
    );
    assert_eq!(req("If-None-Match: *\r\n").status, 304);
    assert_eq!(req("If-None-Match: \"other\"\r\n").status, 200);
    assert_eq!(req(&format!("If-Modified-Since: {lm}\r\n")).status, 304);
    assert_eq!(
        req("If-Modified-Since: Thu, 01 Jan 1998 00:00:00 GMT\r\n").status,
        200
    );
    assert_eq!(req("If-Modified-Since: yesterday\r\n").status, 200);
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(
        req(&format!(
            "If-None-Match: \"other\"\r\nIf-Modified-Since: {lm}\r\n"
        ))
        .status,
        200
    );
    assert_eq!(req("If-Match: \"other\"\r\n").status, 412);
    assert_eq!(req(&format!("If-Match: {etag}\r\n")).status, 200);
    // HEAD too, and a 304 keeps the connection.
    let mut c = Client::connect(addr);
    c.send(
        format!("HEAD /style.css HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes(),
    );
    assert_eq!(c.read(true).status, 304);
    assert_eq!(c.get("/hello.txt").status, 200);
}

#[test]
fn a_changed_file_gets_a_new_etag() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let before = Client::connect(addr).get("/hello.txt");
    std::fs::write(site.root.join("hello.txt"), "changed!").unwrap();
    // Past the open-file cache's period (1 ms): the change is seen.
    pause(10);
    let after = Client::connect(addr).get("/hello.txt");
    assert_eq!(after.body, b"changed!");
    assert_ne!(before.header("ETag"), after.header("ETag"));
}

#[test]
fn single_ranges_give_206_and_bad_ones_416() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let data = site.file("data.bin");
    let len = data.len();
    let range = |spec: &str| {
        exchange(
            addr,
            format!("GET /data.bin HTTP/1.1\r\nHost: t\r\nRange: {spec}\r\n\r\n").as_bytes(),
        )
    };
    for (spec, start, end) in [
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, len - 1),
        ("bytes=-500", len - 500, len - 1),
        ("bytes=99990-200000", 99_990, len - 1),
        ("bytes=65530-65545", 65_530, 65_545),
    ] {
        let r = range(spec);
        assert_eq!(r.status, 206, "{spec}");
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {start}-{end}/{len}").as_str()),
            "{spec}"
        );
        assert_eq!(r.body, &data[start..=end], "{spec}");
    }
    for spec in [
        &format!("bytes={len}-") as &str,
        "bytes=200000-300000",
        "bytes=-0",
    ] {
        let r = range(spec);
        assert_eq!(r.status, 416, "{spec}");
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes */{len}").as_str())
        );
    }
    // Multiple ranges, other units and nonsense: the whole file.
    for spec in ["bytes=0-1,5-6", "lines=1-2", "bytes=9-3", "bytes=x-y"] {
        let r = range(spec);
        assert_eq!((r.status, r.body.len()), (200, len), "{spec}");
    }
    // If-Range with the current ETag honours the range; a stale one does not.
    let etag = Client::connect(addr)
        .get("/data.bin")
        .header("ETag")
        .unwrap()
        .to_string();
    let r = exchange(
        addr,
        format!(
            "GET /data.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\nIf-Range: {etag}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 206);
    let r = exchange(
        addr,
        b"GET /data.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\nIf-Range: \"stale\"\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // HEAD with a range: the 206 headers, no body.
    let r = exchange(
        addr,
        b"HEAD /data.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n",
    );
    assert_eq!((r.status, r.header("Content-Length")), (206, Some("10")));
}

#[test]
fn empty_file_and_absolute_form_targets() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let r = Client::connect(addr).get("/empty.txt");
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("0")));
    let r = exchange(
        addr,
        b"GET http://example.test/hello.txt?q=1 HTTP/1.1\r\nHost: example.test\r\n\r\n",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world\n"[..]));
}

#[test]
fn expect_100_continue_and_unknown_expectations() {
    let site = Site::new();
    let loopd = site.serve("lingering_timeout_ms = 200");
    let addr = loopd.tcp("http");
    // No body: nothing to wait for.
    let mut c = Client::connect(addr);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.read(false).status, 200);
    assert_eq!(c.get("/hello.txt").status, 200);
    // With a body: a final answer, then the connection closes.
    let mut c = Client::connect(addr);
    c.send(
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    );
    let r = c.read(false);
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    c.send(b"abc");
    assert!(c.closed());
    let r = exchange(addr, b"GET / HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\n\r\n");
    assert_eq!(r.status, 417);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_and_memory_stays_bounded() {
    let site = Site::new();
    std::fs::write(site.root.join("huge.bin"), pattern(64 << 20, 1)).unwrap();
    let loopd = site.serve("send_timeout_ms = 1000");
    let addr = loopd.tcp("http");
    let rss_before = rss_kib(loopd.pid());
    // Ten clients ask for 64 MiB each and read nothing.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(addr);
        c.send(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n");
        stalled.push(c);
    }
    // Meanwhile everyone else is served.
    for _ in 0..20 {
        assert_eq!(Client::connect(addr).get("/hello.txt").status, 200);
    }
    let rss_during = rss_kib(loopd.pid());
    // The send timeout cuts the stalled ones: their reads end early.
    assert!(
        loopd.wait_for_logs("client read nothing", 10, TIMEOUT),
        "{}",
        loopd.logs()
    );
    for mut c in stalled {
        let got = read_rest(&mut c.reader);
        assert!(got.len() < 64 << 20, "a stalled client got the whole file");
    }
    // Far less than one file per client: what is queued is bounded by the
    // output watermark, not by the file size.
    let grown = rss_during.saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "loopd grew by {grown} KiB while 10 clients stalled on a 64 MiB file"
    );
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_large_file_to_a_slow_reader_arrives_intact() {
    let site = Site::new();
    let data = pattern(12 << 20, 5);
    std::fs::write(site.root.join("big.bin"), &data).unwrap();
    let loopd = site.serve("");
    let mut c = Client::connect(loopd.tcp("http"));
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    // Read the head, then the body in small bites with pauses in between
    // (bounded: at most ~40 pauses).
    let mut reader = c.reader;
    let resp_head = {
        use std::io::BufRead;
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            head.push(line.clone());
            if line == "\r\n" {
                break;
            }
        }
        head
    };
    assert!(resp_head[0].starts_with("HTTP/1.1 200"));
    let mut body = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 4096];
    let mut pauses = 0;
    while body.len() < data.len() {
        let n = std::io::Read::read(&mut reader, &mut buf).unwrap();
        assert!(n > 0, "EOF after {} bytes", body.len());
        body.extend_from_slice(&buf[..n]);
        if pauses < 40 && body.len() % (256 * 1024) < 4096 {
            pauses += 1;
            pause(10);
        }
    }
    assert!(body == data, "body differs");
}

#[test]
fn many_clients_at_once() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let index = site.file("index.html");
    let data = site.file("data.bin");
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (index, data) = (index.clone(), data.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..25 {
                    if i % 2 == 0 {
                        assert_eq!(c.get("/").body, index);
                    } else {
                        assert!(c.get("/data.bin").body == data);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn the_access_log_has_one_common_log_format_line_per_request() {
    let site = Site::new();
    let loopd = site.serve("");
    let mut c = Client::connect(loopd.tcp("http"));
    c.get("/style.css");
    c.send(b"HEAD /img/loop.png HTTP/1.1\r\nHost: t\r\n\r\n");
    c.read(true);
    c.get("/missing\"quote");
    assert!(wait_access(&loopd, "/missing"));
    let lines = access_lines(&loopd);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let css = site.file("style.css").len();
    // [time LEVEL target] 127.0.0.1 - - [dd/Mon/yyyy:hh:mm:ss +0000] "GET /style.css HTTP/1.1" 200 N 0.000
    let clf = |line: &str| line.split_once("loopd::access] ").unwrap().1.to_string();
    let first = clf(&lines[0]);
    let (prefix, rest) = first.split_once(" \"").unwrap();
    assert!(prefix.starts_with("127.0.0.1 - - ["), "{first}");
    let date = &prefix["127.0.0.1 - - [".len()..prefix.len() - 1];
    assert_eq!(date.len(), 26, "{date}");
    assert!(
        date.ends_with(" +0000") && date.as_bytes()[2] == b'/',
        "{date}"
    );
    let (request, tail) = rest.split_once("\" ").unwrap();
    assert_eq!(request, "GET /style.css HTTP/1.1");
    let fields: Vec<&str> = tail.split(' ').collect();
    assert_eq!(fields[0], "200");
    assert_eq!(fields[1], css.to_string());
    let secs: f64 = fields[2].parse().unwrap();
    assert!(secs >= 0.0 && fields[2].contains('.'), "{first}");
    assert_eq!(fields.len(), 3);
    assert!(
        clf(&lines[1]).contains("\"HEAD /img/loop.png HTTP/1.1\" 200 - "),
        "{}",
        lines[1]
    );
    // Request bytes that could forge a field are escaped.
    assert!(
        clf(&lines[2]).contains("\"GET /missing\\x22quote HTTP/1.1\" 404 "),
        "{}",
        lines[2]
    );
}

#[test]
fn the_access_log_can_be_turned_off() {
    let site = Site::new();
    // Two instances: a request to the quiet one, then one to the loud one.
    // Both log from the same thread in order, so once the loud line is
    // there, a quiet line would be too.
    let root = site.root.display();
    let loopd = Loopd::start(&format!(
        r#"
[[handler]]
name = "quiet"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{root}"
access_log = false

[[handler]]
name = "loud"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{root}"
"#
    ));
    assert_eq!(
        Client::connect(loopd.tcp("quiet")).get("/style.css").status,
        200
    );
    assert_eq!(
        Client::connect(loopd.tcp("loud")).get("/hello.txt").status,
        200
    );
    assert!(wait_access(&loopd, "/hello.txt"));
    let lines = access_lines(&loopd);
    assert_eq!(lines.len(), 1, "{lines:#?}");
}

#[test]
fn shutdown_closes_idle_keep_alive_connections() {
    let site = Site::new();
    let mut loopd = site.serve("");
    let mut c = Client::connect(loopd.tcp("http"));
    assert_eq!(c.get("/hello.txt").status, 200);
    loopd.signal(libc::SIGTERM);
    assert!(c.closed());
    assert!(loopd.wait_exit(TIMEOUT).success());
}

#[test]
fn bad_config_is_refused_before_listening() {
    let dir = TempDir::new("http-config");
    for (extra, root, want) in [
        ("", "/nonexistent/loopd-www", "root /nonexistent/loopd-www"),
        ("rooot = 1", "/tmp", "unknown field"),
        ("max_headers = 0", "/tmp", "max_headers"),
        ("header_timeout_ms = 0", "/tmp", "header_timeout_ms"),
    ] {
        let path = write_config(&dir, &config(std::path::Path::new(root), extra));
        let out = run_loopd(&["check", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: {err}");
        assert!(err.contains(want), "{extra}: {err}");
    }
    let text =
        "[[handler]]\nname = \"http\"\nplugin = \"http\"\nlisten = [\"tcp://127.0.0.1:0\"]\n";
    let path = write_config(&dir, text);
    let out = run_loopd(&["check", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`root` is required"));
}

#[test]
fn a_stalled_streaming_client_does_not_delay_others() {
    let site = Site::new();
    std::fs::write(site.root.join("big.bin"), pattern(16 << 20, 2)).unwrap();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let mut slow = Client::connect(addr);
    slow.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut other = Client::connect(addr);
    for _ in 0..50 {
        assert_eq!(other.get("/hello.txt").status, 200);
    }
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let r = slow.read(false);
    assert_eq!(r.body.len(), 16 << 20);
}

#[test]
fn serves_over_a_unix_socket_too() {
    use std::io::{BufReader, Write};
    let site = Site::new();
    let root = site.root.display();
    let loopd = Loopd::start(&format!(
        r#"
[[handler]]
name = "http"
plugin = "http"
listen = ["unix://{{dir}}/http.sock"]
[handler.config]
root = "{root}"
"#
    ));
    let mut s = unix(&loopd.unix("http"));
    s.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, world\n"[..]));
    // The access log names no address for a Unix-socket client.
    assert!(wait_access(&loopd, "/hello.txt"));
    let line = access_lines(&loopd).pop().unwrap();
    assert!(line.contains("loopd::access] - - - ["), "{line}");
}

#[test]
fn a_response_cut_short_is_logged_with_what_was_sent() {
    let site = Site::new();
    // Far more than the socket buffers on both sides can hold.
    std::fs::write(site.root.join("big.bin"), pattern(64 << 20, 4)).unwrap();
    let loopd = site.serve("");
    let mut c = Client::connect(loopd.tcp("http"));
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    // Read a little, then go away.
    let mut first = [0u8; 1000];
    std::io::Read::read_exact(&mut c.reader, &mut first).unwrap();
    drop(c);
    assert!(wait_access(&loopd, "/big.bin"));
    let line = access_lines(&loopd).pop().unwrap();
    let fields: Vec<&str> = line.rsplit(' ').take(3).collect();
    // ... "GET /big.bin HTTP/1.1" 200 <bytes> <secs>
    assert_eq!(fields[2], "200", "{line}");
    let bytes: u64 = fields[1].parse().unwrap();
    assert!(bytes < 64 << 20, "{line}");
}

/// A large file cut short while it is being sent (with sendfile, bodies
/// over 64 KiB): loopd sends what there is, says so in a warning, closes
/// that connection, and goes on serving.
#[test]
fn a_file_that_shrinks_while_being_sent_ends_that_response_only() {
    let site = Site::new();
    let big = pattern(8 << 20, 7);
    std::fs::write(site.root.join("big.bin"), &big).unwrap();
    let loopd = site.serve("");
    let mut s = tcp(loopd.tcp("http"));
    // A small receive buffer, so most of the file is still to send when it
    // shrinks.
    small_receive_buffer(&s, 16 * 1024);
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    std::io::Read::read_exact(&mut s, &mut first).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(site.root.join("big.bin"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let rest = read_until_closed(&mut s);
    let got = first.len() + rest.len();
    assert!(
        got < big.len(),
        "the response went on past the file's new end: {got} bytes"
    );
    assert!(
        loopd.wait_for_log("file shrank while being sent", TIMEOUT),
        "{}",
        loopd.logs()
    );
    // Everyone else is served as before.
    let r = exchange(
        loopd.tcp("http"),
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, world\n");
}
