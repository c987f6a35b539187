//! Reliability: every error response to a `HEAD` request is a head only
//! (RFC 9110 9.3.2), whatever refused it: the parser (400, 414, 431, 505),
//! the framing checks (400, 413), `Expect` (417) or the header timeout
//! (408). A body after such a head would be read by the client as the start
//! of the next response. The same requests sent as `GET` get the page, so
//! the test can tell a body when there is one.

mod common;
mod http_util;

use common::*;
use http_util::*;

/// Requests that are refused, as `{M}` for the method, and their status.
fn cases() -> Vec<(&'static str, String, u16)> {
    vec![
        (
            "framing (CL and TE)",
            "{M} / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .into(),
            400,
        ),
        (
            "invalid header name",
            "{M} / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n".into(),
            400,
        ),
        (
            "missing Host",
            "{M} / HTTP/1.1\r\nAccept: */*\r\n\r\n".into(),
            400,
        ),
        (
            "body over max_discard_body",
            "{M} / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n".into(),
            413,
        ),
        (
            "request line too long",
            format!("{{M}} /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000)),
            414,
        ),
        (
            "unknown expectation",
            "{M} / HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\n\r\n".into(),
            417,
        ),
        (
            "header section too large",
            format!(
                "{{M}} / HTTP/1.1\r\nHost: t\r\nX-A: {}\r\n\r\n",
                "b".repeat(17_000)
            ),
            431,
        ),
        (
            "too many fields",
            format!(
                "{{M}} / HTTP/1.1\r\nHost: t\r\n{}\r\n",
                "X-B: c\r\n".repeat(101)
            ),
            431,
        ),
        ("HTTP/2.0", "{M} / HTTP/2.0\r\nHost: t\r\n\r\n".into(), 505),
    ]
}

/// Splits what the server sent into its one response head (parsed) and
/// whatever came after it.
fn split(all: &[u8]) -> (Resp, usize) {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(all)))
        + 4;
    let head = read_response(&mut &all[..end], true).unwrap();
    (head, all.len() - end)
}

#[test]
fn error_responses_to_head_have_no_body() {
    let site = Site::new();
    let loopd = site.serve("header_timeout_ms = 500");
    let addr = loopd.tcp("http");
    let mut checked = 0;
    let mut body_bytes_after_head = 0;
    let mut failures = Vec::new();
    for (what, template, status) in cases() {
        for method in ["HEAD", "GET"] {
            let raw = template.replace("{M}", method);
            let all = exchange_all(addr, raw.as_bytes());
            let (head, after) = split(&all);
            let len: usize = head
                .header("Content-Length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if head.status != status {
                failures.push(format!("{method} {what}: {} (want {status})", head.status));
            }
            if head.header("Connection") != Some("close") {
                failures.push(format!("{method} {what}: no Connection: close"));
            }
            if method == "HEAD" {
                checked += 1;
                body_bytes_after_head += after;
                if after != 0 {
                    failures.push(format!("HEAD {what}: {after} bytes after the head"));
                }
            } else if after != len || len == 0 {
                failures.push(format!(
                    "GET {what}: {after} body bytes, Content-Length {len}"
                ));
            }
        }
    }
    // 408: a HEAD whose head never completes.
    for method in ["HEAD", "GET"] {
        let mut s = tcp(addr);
        std::io::Write::write_all(
            &mut s,
            format!("{method} / HTTP/1.1\r\nHost: t\r\n").as_bytes(),
        )
        .unwrap();
        let all = read_until_closed(&mut s);
        let (head, after) = split(&all);
        if head.status != 408 {
            failures.push(format!("{method} timeout: {}", head.status));
        }
        if method == "HEAD" {
            checked += 1;
            body_bytes_after_head += after;
            if after != 0 {
                failures.push(format!("HEAD timeout: {after} bytes after the head"));
            }
        } else if after == 0 {
            failures.push("GET timeout: no page".into());
        }
    }
    figure("rel_http_head_errors.head_errors_checked", checked);
    figure(
        "rel_http_head_errors.body_bytes_after_head",
        body_bytes_after_head,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, 10);
    loopd.assert_no_unexpected_errors();
}

#[test]
fn a_pipelined_request_after_a_refused_head_gets_no_answer() {
    // A HEAD refused with 400 closes the connection: the request behind it
    // is not answered, and nothing after the 400's head could pass for
    // its response.
    let site = Site::new();
    let loopd = site.serve("");
    let all = exchange_all(
        loopd.tcp("http"),
        b"HEAD / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let (head, after) = split(&all);
    assert_eq!(head.status, 400);
    assert_eq!(after, 0, "{:?}", String::from_utf8_lossy(&all));
}
