//! Response header hardening (issue 20 item 11): `X-Content-Type-Options:
//! nosniff` on every response by default; configured extra fields
//! (`headers`) and `Server` (`server_header`) on every response, errors
//! included; values and names that could split a response or break a head
//! refused by `loopd check` with a message naming the key.

mod common;
mod http_util;

use common::*;
use http_util::*;

/// Requests covering the kinds of response: a file, a range, 304, 301,
/// 403, 404, 405, 412, 416, and (closing) 400.
fn requests(etag: &str) -> Vec<(u16, String)> {
    vec![
        (200, "GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (
            206,
            "GET /data.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n".into(),
        ),
        (
            304,
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n"),
        ),
        (301, "GET /docs HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (403, "GET /noindex/ HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (404, "GET /missing HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (405, "POST /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (
            412,
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-Match: \"x\"\r\n\r\n".into(),
        ),
        (
            416,
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=900-\r\n\r\n".into(),
        ),
        (400, "GET /a%zz HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (400, "GET / HTTP/1.1\r\n\r\n".into()),
        (505, "GET / HTTP/3.0\r\nHost: t\r\n\r\n".into()),
        (200, "HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (404, "HEAD /missing HTTP/1.1\r\nHost: t\r\n\r\n".into()),
    ]
}

fn all_responses(addr: std::net::SocketAddr) -> Vec<(u16, Resp)> {
    let etag = exchange(addr, b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .header("ETag")
        .unwrap()
        .to_string();
    requests(&etag)
        .into_iter()
        .map(|(want, raw)| {
            let all = exchange_all(addr, raw.as_bytes());
            let end = all
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a head")
                + 4;
            let r = read_response(&mut &all[..end], true).unwrap();
            assert_eq!(r.status, want, "{raw:?}");
            (want, r)
        })
        .collect()
}

#[test]
fn nosniff_is_on_every_response_by_default() {
    let site = Site::new();
    let loopd = site.serve("");
    for (status, r) in all_responses(loopd.tcp("http")) {
        assert_eq!(
            r.header("X-Content-Type-Options"),
            Some("nosniff"),
            "{status}: {r:?}"
        );
        assert_eq!(r.header("Server"), Some("loopd/0.1.0"), "{status}");
    }
}

#[test]
fn configured_fields_and_server_are_on_every_response() {
    let site = Site::new();
    let loopd = site.serve(
        r#"server_header = "example"
[handler.config.headers]
Content-Security-Policy = "default-src 'self'; img-src 'self' data:"
Referrer-Policy = "no-referrer"
X-Frame-Options = "DENY"
Strict-Transport-Security = "max-age=63072000"
"#,
    );
    for (status, r) in all_responses(loopd.tcp("http")) {
        assert_eq!(r.header("Server"), Some("example"), "{status}");
        assert_eq!(
            r.header("Content-Security-Policy"),
            Some("default-src 'self'; img-src 'self' data:"),
            "{status}"
        );
        assert_eq!(r.header("Referrer-Policy"), Some("no-referrer"), "{status}");
        assert_eq!(r.header("X-Frame-Options"), Some("DENY"), "{status}");
        assert_eq!(
            r.header("Strict-Transport-Security"),
            Some("max-age=63072000"),
            "{status}"
        );
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    }
}

#[test]
fn server_and_nosniff_can_be_turned_off() {
    let site = Site::new();
    let loopd = site.serve(
        r#"server_header = ""
[handler.config.headers]
X-Content-Type-Options = ""
"#,
    );
    for (status, r) in all_responses(loopd.tcp("http")) {
        assert!(!r.has("Server"), "{status}: {r:?}");
        assert!(!r.has("X-Content-Type-Options"), "{status}: {r:?}");
        assert!(r.has("Date"));
    }
}

#[test]
fn bad_fields_are_refused_naming_the_key() {
    let dir = TempDir::new("http-headers-config");
    let site = Site::new();
    for (extra, want) in [
        (
            "[handler.config.headers]\nX-Evil = \"a\\r\\nSet-Cookie: b\"",
            "`headers.X-Evil`: the value holds a line break",
        ),
        (
            "[handler.config.headers]\nX-Evil = \"a\\nb\"",
            "`headers.X-Evil`: the value holds a line break",
        ),
        (
            "[handler.config.headers]\nX-Nul = \"a\\u0000b\"",
            "`headers.X-Nul`: the value holds '\\0'",
        ),
        (
            "[handler.config.headers]\nX-Utf8 = \"caf\u{e9}\"",
            "`headers.X-Utf8`: the value holds 'é'",
        ),
        (
            "[handler.config.headers]\nX-Space = \" x\"",
            "`headers.X-Space`: the value starts or ends with whitespace",
        ),
        (
            "[handler.config.headers]\n\"Bad Name\" = \"x\"",
            "`headers`: \"Bad Name\" is not a header field name",
        ),
        (
            "[handler.config.headers]\n\"X-Colon:\" = \"x\"",
            "`headers`: \"X-Colon:\" is not a header field name",
        ),
        (
            "[handler.config.headers]\n\"\" = \"x\"",
            "`headers`: \"\" is not a header field name",
        ),
        (
            "[handler.config.headers]\nContent-Length = \"5\"",
            "`headers.Content-Length`: the server sets this field itself",
        ),
        (
            "[handler.config.headers]\ntransfer-encoding = \"chunked\"",
            "`headers.transfer-encoding`: the server sets this field itself",
        ),
        (
            "[handler.config.headers]\nServer = \"x\"",
            "`headers.Server`: set the Server field with `server_header`",
        ),
        (
            "[handler.config.headers]\nX-A = \"1\"\nx-a = \"2\"",
            "the field is given twice",
        ),
        (
            "[handler.config.headers]\nX-Empty = \"\"",
            "`headers.X-Empty`: empty value",
        ),
        (
            "server_header = \"loopd\\r\\nX: y\"",
            "`server_header`: the value holds a line break",
        ),
    ] {
        let path = write_config(&dir, &config(&site.root, extra));
        let out = run_loopd(&["check", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(err.contains(want), "{extra}:\nwant {want}\ngot {err}");
    }
}
