//! Path traversal at scale: Debian's `wfuzz` traversal word lists (the
//! `vulns/dirTraversal*.txt` and `Injections/Traversal.txt` files, with
//! their targets pointed at a sentinel file just outside the served root),
//! encodings generated here, and symlinks inside the root that lead out of
//! it. No response may contain the sentinel, and every payload is refused
//! with 400, 403 or 404.
//!
//! `tests/http_traversal.rs` holds the hand-written table (with the
//! payloads that are harmless once normalised); this file is its volume
//! companion. Needs the `wfuzz` package (`.ci/run` installs it if missing).

mod common;
mod http_util;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::*;
use http_util::*;

const WORDLISTS: &str = "/usr/share/wfuzz/wordlist";

/// The traversal lists of the wfuzz package, relative to [`WORDLISTS`].
const LISTS: &[&str] = &[
    "vulns/dirTraversal.txt",
    "vulns/dirTraversal-nix.txt",
    "vulns/dirTraversal-win.txt",
    "Injections/Traversal.txt",
];

/// The payloads of one word list (comments and empty lines dropped).
fn read_list(rel: &str) -> Vec<String> {
    let path = Path::new(WORDLISTS).join(rel);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the wfuzz word lists are needed (apt-get install wfuzz; .ci/run does it)",
            path.display()
        )
    });
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Points a word-list payload at the sentinel: `{FILE}` and the Windows
/// targets become `secret.txt` (one level above the root), the Unix system
/// files the sentinel's absolute path (reached from `/` after enough `..`).
/// Both the relative and the absolute form of each `{FILE}` payload are
/// kept.
fn aim(payload: &str, abs: &str) -> Vec<String> {
    let mut out = Vec::new();
    if payload.contains("{FILE}") {
        out.push(payload.replace("{FILE}", "secret.txt"));
        out.push(payload.replace("{FILE}", abs));
        return out;
    }
    let mut aimed = payload.to_string();
    for target in ["etc/passwd", "etc/shadow", "etc/hosts"] {
        aimed = aimed.replace(target, abs);
        aimed = aimed.replace(&target.replace('/', "\\"), abs);
    }
    for target in ["boot.ini", "winnt/desktop.ini", "localstart.asp"] {
        aimed = aimed.replace(target, "secret.txt");
    }
    out.push(aimed);
    out
}

/// A request target: origin-form, as the word lists' relative payloads
/// would be appended to a URL's path.
fn target(payload: &str) -> String {
    if payload.starts_with('/') {
        payload.to_string()
    } else {
        format!("/{payload}")
    }
}

/// Traversals built here: every dot and slash encoding, at several depths,
/// toward `secret.txt` and the sentinel's absolute path, plus whole-path
/// encodings and suffix tricks.
fn generated(abs: &str) -> Vec<String> {
    let dots = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "%c0%ae%c0%ae",
        "%e0%80%ae%e0%80%ae",
        "%c0%2e%c0%2e",
        "%u002e%u002e",
        "%uff0e%uff0e",
        "...",
        "....",
        "..;",
        "..%00",
        "..%20",
        "..%09",
    ];
    let slashes = [
        "/",
        "//",
        "/./",
        "%2f",
        "%2F",
        "%252f",
        "\\",
        "%5c",
        "%5C",
        "%255c",
        "%c0%af",
        "%c1%9c",
        "%e0%80%af",
        "%u2215",
        "%ef%bc%8f",
        "%u002f",
    ];
    let mut out = Vec::new();
    for dot in dots {
        for slash in slashes {
            for depth in [1, 3, 8] {
                let climb = format!("{dot}{slash}").repeat(depth);
                out.push(format!("/{climb}secret.txt"));
                out.push(format!("/{climb}{}", abs.replace('/', slash)));
            }
        }
    }
    // Every byte percent-encoded, once and twice, in both cases.
    let enc = |s: &str, upper: bool| -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    };
    for path in ["../secret.txt", "../../../../../../../../secret.txt"] {
        out.push(format!("/{}", enc(path, false)));
        out.push(format!("/{}", enc(path, true)));
        out.push(format!("/{}", enc(&enc(path, false), false)));
    }
    let deep = format!("{}{abs}", "../".repeat(12));
    out.push(format!("/{}", enc(&deep, false)));
    // Suffixes that some servers strip or misread.
    for suffix in [
        "", "%00", "%00.html", ";.html", "%20", ".", "%2e", "::$DATA", "?x=1", "#frag", "/", "%3f",
        "%23",
    ] {
        out.push(format!("/../secret.txt{suffix}"));
        out.push(format!("/%2e%2e/secret.txt{suffix}"));
    }
    // Absolute-form targets.
    for p in ["../secret.txt", "%2e%2e/secret.txt", "..%2fsecret.txt"] {
        out.push(format!("http://t/{p}"));
        out.push(format!("http://t/docs/../{p}"));
    }
    out
}

/// Payloads through symlinks inside the root that lead outside it.
fn through_symlinks() -> Vec<String> {
    let mut out = Vec::new();
    let links = [
        "escape",
        "escape-rel",
        "docs/deep",
        "%65scape",
        "escape%2f",
        "docs%2fdeep",
        "./escape",
        "docs/../escape",
        "img/../escape-rel",
        "x/../escape",
    ];
    let tails = [
        "secret.txt",
        "./secret.txt",
        "%73ecret.txt",
        "secret.txt%00",
        "root/../secret.txt",
        "root/..%2fsecret.txt",
        "",
    ];
    for link in links {
        for tail in tails {
            out.push(format!("/{link}/{tail}"));
            out.push(format!("/{link}//{tail}"));
        }
    }
    for direct in [
        "/secret-link",
        "/%73ecret-link",
        "/docs/../secret-link",
        "/secret-link/",
    ] {
        out.push(direct.to_string());
    }
    out
}

/// What sending one payload showed.
#[derive(Default)]
struct Tally {
    requests: usize,
    leaks: Vec<String>,
    bad_status: Vec<String>,
}

/// Sends every target on keep-alive connections (a new one whenever the
/// server closes), reading each response.
fn run(addr: SocketAddr, targets: &[String], passwd_line: &str) -> Tally {
    let mut t = Tally::default();
    let mut client: Option<Client> = None;
    for target in targets {
        let c = client.get_or_insert_with(|| Client::connect(addr));
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(target.as_bytes());
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\n\r\n");
        c.stream.write_all(&raw).unwrap();
        let r = read_response(&mut c.reader, false)
            .unwrap_or_else(|e| panic!("{target:?}: no response: {e}"));
        t.requests += 1;
        let mut seen = r.text();
        for (name, value) in &r.headers {
            seen.push_str(&format!("\n{name}: {value}"));
        }
        let closes = r.header("Connection") == Some("close");
        if closes {
            // Whatever else comes before the close counts too.
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            seen.push_str(&String::from_utf8_lossy(&read_rest(&mut c.reader)));
            client = None;
        }
        if seen.contains(SENTINEL) || (!passwd_line.is_empty() && seen.contains(passwd_line)) {
            t.leaks.push(target.clone());
        }
        if !matches!(r.status, 400 | 403 | 404) {
            t.bad_status.push(format!("{target:?}: {}", r.status));
        }
    }
    t
}

#[test]
fn wordlists_encodings_and_symlinks_never_reach_the_sentinel() {
    let site = Site::new();
    let base = site.dir.path().canonicalize().unwrap();
    // Symlinks inside the root leading out of it: to the sentinel's
    // directory (absolute and relative), through a subdirectory, and to
    // the sentinel itself.
    symlink(&base, site.root.join("escape")).unwrap();
    symlink("..", site.root.join("escape-rel")).unwrap();
    symlink("../..", site.root.join("docs/deep")).unwrap();
    symlink("../secret.txt", site.root.join("secret-link")).unwrap();
    // The sentinel is readable through each link: only the server stands
    // between it and the client.
    for via in [
        "escape/secret.txt",
        "escape-rel/secret.txt",
        "docs/deep/secret.txt",
        "secret-link",
    ] {
        assert_eq!(
            std::fs::read_to_string(site.root.join(via)).unwrap(),
            SENTINEL,
            "{via}"
        );
    }
    let abs = base.join("secret.txt");
    let abs = abs.to_str().unwrap().trim_start_matches('/').to_string();

    let mut wfuzz = BTreeSet::new();
    for list in LISTS {
        for payload in read_list(list) {
            for aimed in aim(&payload, &abs) {
                wfuzz.insert(target(&aimed));
            }
        }
    }
    let own: BTreeSet<String> = generated(&abs)
        .into_iter()
        .chain(through_symlinks())
        .filter(|p| !wfuzz.contains(p))
        .collect();
    let targets: Vec<String> = wfuzz.iter().chain(own.iter()).cloned().collect();

    let loopd = site.serve("lingering_timeout_ms = 300");
    assert_backend(&loopd, "rel_http_traversal_scale");
    let addr = loopd.tcp("http");
    // The control: the server does serve files (a broken setup that
    // answered 404 to everything would pass the rest).
    assert_eq!(Client::connect(addr).get("/hello.txt").status, 200);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let passwd_line = passwd.lines().next().unwrap_or_default().to_string();

    // Four clients at once, each with its share of the payloads.
    let shares: Vec<Vec<String>> = (0..4)
        .map(|i| targets.iter().skip(i).step_by(4).cloned().collect())
        .collect();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                let passwd_line = passwd_line.as_str();
                s.spawn(move || run(addr, share, passwd_line))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let requests: usize = tallies.iter().map(|t| t.requests).sum();
    let leaks: Vec<&String> = tallies.iter().flat_map(|t| &t.leaks).collect();
    let bad: Vec<&String> = tallies.iter().flat_map(|t| &t.bad_status).collect();

    figure("rel_http_traversal_scale.wfuzz_payloads", wfuzz.len());
    figure("rel_http_traversal_scale.own_payloads", own.len());
    figure("rel_http_traversal_scale.requests", requests);
    figure("rel_http_traversal_scale.sentinel_responses", leaks.len());
    figure("rel_http_traversal_scale.other_statuses", bad.len());
    assert!(wfuzz.len() >= 900, "{} word-list payloads", wfuzz.len());
    assert_eq!(requests, targets.len());
    assert!(leaks.is_empty(), "THE SENTINEL LEAKED: {leaks:#?}");
    assert!(bad.is_empty(), "statuses other than 400/403/404:\n{bad:#?}");
    // Still serving.
    assert_eq!(Client::connect(addr).get("/hello.txt").status, 200);
}
