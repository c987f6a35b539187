//! Path traversal: a table of payloads against a root with a sentinel file
//! just outside it (and symlinks that point there). No response may ever
//! contain the sentinel; every payload that tries to leave the root is
//! refused with 400, 403 or 404.

mod common;
mod http_util;

use std::os::unix::fs::symlink;

use http_util::*;

/// Whether a payload must be refused, or may be served (it stays inside the
/// root once normalised) as long as the sentinel never shows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Refused,
    Harmless,
}
use Expect::*;

/// Request targets, sent as is on the request line.
const PAYLOADS: &[(&str, Expect)] = &[
    // Plain and encoded dot-dot.
    ("/../secret.txt", Refused),
    ("/../../secret.txt", Refused),
    ("/./../secret.txt", Refused),
    ("//../secret.txt", Refused),
    ("///..//..//secret.txt", Refused),
    ("/docs/../../secret.txt", Refused),
    ("/docs/./../.././secret.txt", Refused),
    ("/x/../../secret.txt", Refused),
    ("/%2e%2e/secret.txt", Refused),
    ("/%2E%2E/secret.txt", Refused),
    ("/.%2e/secret.txt", Refused),
    ("/%2e./secret.txt", Refused),
    ("/.%2E/.%2E/secret.txt", Refused),
    ("/docs/%2e%2e/%2e%2e/secret.txt", Refused),
    // Encoded slashes.
    ("/..%2fsecret.txt", Refused),
    ("/%2e%2e%2fsecret.txt", Refused),
    ("/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt", Refused),
    ("/docs/..%2f..%2fsecret.txt", Refused),
    ("/docs%2f..%2f..%2fsecret.txt", Refused),
    ("%2f..%2fsecret.txt", Refused),
    // Backslashes, raw and encoded.
    ("/..\\secret.txt", Refused),
    ("/\\..\\secret.txt", Refused),
    ("/docs\\..\\..\\secret.txt", Refused),
    ("/..%5csecret.txt", Refused),
    ("/%5c..%5csecret.txt", Refused),
    ("/docs/..%5c..%5csecret.txt", Refused),
    ("/%2e%2e%5c%2e%2e%5csecret.txt", Refused),
    ("/..%5c/secret.txt", Refused),
    // NUL bytes.
    ("/..%00/secret.txt", Refused),
    ("/secret.txt%00.html", Refused),
    ("/%00../secret.txt", Refused),
    ("/docs/%00/../../secret.txt", Refused),
    ("/.%00./secret.txt", Refused),
    ("/index.html%00", Refused),
    // Double encoding: decoded once, "%2e%2e" is a plain (missing) name.
    ("/%252e%252e/secret.txt", Refused),
    ("/..%252fsecret.txt", Refused),
    ("/..%255c..%255csecret.txt", Refused),
    // Overlong and look-alike encodings: plain (missing) names.
    ("/%c0%ae%c0%ae/secret.txt", Refused),
    ("/%c0%ae%c0%ae%c0%afsecret.txt", Refused),
    ("/%e0%80%ae%e0%80%ae/secret.txt", Refused),
    ("/..%c0%afsecret.txt", Refused),
    ("/..%ef%bc%8fsecret.txt", Refused),
    ("/%uff0e%uff0e/secret.txt", Refused),
    ("/%2e%2e%u2215secret.txt", Refused),
    // Odd dot runs.
    ("/..../secret.txt", Refused),
    ("/....//secret.txt", Refused),
    ("/.../secret.txt", Refused),
    ("/..;/secret.txt", Refused),
    ("/docs/..;/..;/secret.txt", Refused),
    // Symlinks inside the root that lead outside it.
    ("/link-out", Refused),
    ("/link-out/", Refused),
    ("/%6c%69%6e%6b-out", Refused),
    ("/abs-out", Refused),
    ("/docs/../link-out", Refused),
    ("/dir-out/secret.txt", Refused),
    ("/dir-out/", Refused),
    ("/up/secret.txt", Refused),
    ("/docs/up2/secret.txt", Refused),
    // Absolute-form targets.
    ("http://localhost/../secret.txt", Refused),
    ("http://localhost/%2e%2e/secret.txt", Refused),
    ("http://localhost/..%2fsecret.txt", Refused),
    ("http://localhost/link-out", Refused),
    // Well-known system files.
    ("/../../../../../../etc/passwd", Refused),
    ("/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", Refused),
    ("/....//....//etc/passwd", Refused),
    ("/etc/passwd", Refused),
    ("/proc/self/environ", Refused),
    // Inside the root once normalised: served (or 301), never the sentinel.
    ("/docs/../index.html", Harmless),
    ("/?/../../secret.txt", Harmless),
    ("/index.html?../../secret.txt", Harmless),
    ("/docs/%2e%2e/index.html", Harmless),
    ("/img/..%2fdocs", Harmless),
    // Through a symlink that leaves the root and comes back into it: the
    // file read is inside the root.
    ("/dir-out/root/index.html", Harmless),
];

fn tree() -> Site {
    let site = Site::new();
    let base = site.dir.path();
    // Symlinks pointing outside the root, relative and absolute, to the
    // file and to its directory.
    symlink("../secret.txt", site.root.join("link-out")).unwrap();
    symlink(base.join("secret.txt"), site.root.join("abs-out")).unwrap();
    symlink(base, site.root.join("dir-out")).unwrap();
    symlink("..", site.root.join("up")).unwrap();
    symlink("../..", site.root.join("docs/up2")).unwrap();
    // Symlinks that stay inside the root are followed.
    symlink("hello.txt", site.root.join("link-in")).unwrap();
    symlink(site.root.join("docs/index.html"), site.root.join("abs-in")).unwrap();
    site
}

fn get(addr: std::net::SocketAddr, target: &str) -> (Vec<u8>, Option<Resp>) {
    let mut raw = b"GET ".to_vec();
    raw.extend_from_slice(target.as_bytes());
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let all = exchange_all(addr, &raw);
    let resp = parse_all(&all).into_iter().next();
    (all, resp)
}

#[test]
fn the_table_is_big_enough() {
    assert!(PAYLOADS.len() >= 50, "{} payloads", PAYLOADS.len());
}

#[test]
fn no_payload_reaches_the_sentinel() {
    let site = tree();
    // The sentinel is there and readable: only the server stands between it
    // and the client.
    assert_eq!(
        std::fs::read_to_string(site.dir.join("secret.txt")).unwrap(),
        SENTINEL
    );
    let loopd = site.serve("");
    assert_backend(&loopd, "http_traversal");
    let addr = loopd.tcp("http");
    // The setup can serve: a control file and symlinks that stay inside.
    for (target, body) in [
        ("/hello.txt", site.file("hello.txt")),
        ("/link-in", site.file("hello.txt")),
        ("/abs-in", site.file("docs/index.html")),
    ] {
        let (_, r) = get(addr, target);
        let r = r.unwrap_or_else(|| panic!("{target}: no response"));
        assert_eq!((r.status, &r.body), (200, &body), "{target}");
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let passwd_line = passwd.lines().next().unwrap_or("root:x:0:0:").to_string();
    let mut failures = Vec::new();
    for &(target, expect) in PAYLOADS {
        let (all, resp) = get(addr, target);
        let text = String::from_utf8_lossy(&all);
        if text.contains(SENTINEL) {
            failures.push(format!("{target}: THE SENTINEL LEAKED"));
            continue;
        }
        if !passwd_line.is_empty() && text.contains(&passwd_line) {
            failures.push(format!("{target}: /etc/passwd leaked"));
            continue;
        }
        let Some(r) = resp else {
            failures.push(format!("{target}: no response"));
            continue;
        };
        let ok = match expect {
            Refused => matches!(r.status, 400 | 403 | 404),
            Harmless => matches!(r.status, 200 | 301),
        };
        if !ok {
            failures.push(format!("{target}: {} ({expect:?})", r.status));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_payloads_pipelined_on_one_connection() {
    // The same table on one keep-alive connection: a refusal must leave
    // the connection in step (or close it after a 400), never serve the
    // sentinel to a later request.
    let site = tree();
    let loopd = site.serve("");
    let mut raw = Vec::new();
    for &(target, _) in PAYLOADS {
        raw.extend_from_slice(
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
        );
    }
    let all = exchange_all(loopd.tcp("http"), &raw);
    assert!(!String::from_utf8_lossy(&all).contains(SENTINEL));
    let resps = parse_all(&all);
    assert!(!resps.is_empty());
    for r in &resps {
        assert!(!r.text().contains(SENTINEL));
    }
}
