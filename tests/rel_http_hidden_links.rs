//! Reliability: the hidden-file rule holds for where a path resolves, not
//! only for the names in the request (issue 20 item 10). Symlinks inside
//! the root with plain names that lead to hidden files or directories
//! (`visible-link -> .secret`, `pubgit -> .git`), relative or absolute,
//! through links to links, and a served file swapped for such a link while
//! it is in the open-file cache: none is ever served with
//! `hidden_files = false`; all of them are with `hidden_files = true`.

mod common;
mod http_util;

use std::os::unix::fs::symlink;

use common::*;
use http_util::*;

const SECRET: &str = "HIDDEN-dotfile-3f7a91";
const GIT_CONFIG: &str = "[core] HIDDEN-git-config-8c2d";

/// Request paths that lead to a hidden name through a symlink.
const THROUGH_LINKS: &[&str] = &[
    "/visible-link",
    "/abs-visible-link",
    "/link-to-link",
    "/pubgit/config",
    "/pubgit/HEAD",
    "/abs-pubgit/config",
    "/docs/cfg",
    "/docs/gitdir/config",
    "/env-link",
    "/nested/deeper/secret",
];

fn tree() -> Site {
    let site = Site::new();
    let root = &site.root;
    std::fs::write(root.join(".secret"), SECRET).unwrap();
    std::fs::write(root.join(".env"), SECRET).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/config"), GIT_CONFIG).unwrap();
    std::fs::write(root.join(".git/HEAD"), GIT_CONFIG).unwrap();
    std::fs::create_dir_all(root.join("nested/.private")).unwrap();
    std::fs::write(root.join("nested/.private/secret"), SECRET).unwrap();
    symlink(".secret", root.join("visible-link")).unwrap();
    symlink(root.join(".secret"), root.join("abs-visible-link")).unwrap();
    symlink("visible-link", root.join("link-to-link")).unwrap();
    symlink(".git", root.join("pubgit")).unwrap();
    symlink(root.join(".git"), root.join("abs-pubgit")).unwrap();
    symlink("../.git/config", root.join("docs/cfg")).unwrap();
    symlink("../pubgit", root.join("docs/gitdir")).unwrap();
    symlink(".env", root.join("env-link")).unwrap();
    symlink(".private", root.join("nested/deeper")).unwrap();
    // A link to .well-known is served: that name is never hidden.
    symlink(".well-known/security.txt", root.join("security-link")).unwrap();
    site
}

fn get_all(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let all = exchange_all(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = parse_all(&all).first().map_or(0, |r| r.status);
    (status, text)
}

fn leaks(text: &str) -> bool {
    text.contains(SECRET) || text.contains(GIT_CONFIG)
}

#[test]
fn symlinks_to_hidden_names_are_not_served() {
    let site = tree();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    assert_backend(&loopd, "rel_http_hidden_links");
    let mut leaked = 0;
    let mut failures = Vec::new();
    // Twice each: the second time through the open-file cache, if anything
    // had been cached.
    for round in 0..2 {
        for &path in THROUGH_LINKS {
            let (status, text) = get_all(addr, path);
            if leaks(&text) {
                leaked += 1;
                failures.push(format!("{path} (round {round}): THE HIDDEN FILE LEAKED"));
            } else if status != 404 {
                failures.push(format!("{path} (round {round}): {status}, want 404"));
            }
        }
    }
    // The names themselves stay hidden, and a link to .well-known is fine.
    for path in ["/.secret", "/.git/config", "/%2egit/config"] {
        let (status, text) = get_all(addr, path);
        assert!(!leaks(&text) && status == 404, "{path}: {status}");
    }
    let (status, text) = get_all(addr, "/security-link");
    assert_eq!(status, 200, "{text}");

    // A served file in the cache, swapped for a link to a hidden one.
    let page = site.root.join("page.txt");
    std::fs::write(&page, "plain page").unwrap();
    let (status, _) = get_all(addr, "/page.txt");
    assert_eq!(status, 200);
    let tmp = site.root.join("page.tmp");
    symlink(".secret", &tmp).unwrap();
    std::fs::rename(&tmp, &page).unwrap();
    pause(10); // past the cache's period (1 ms)
    let (status, text) = get_all(addr, "/page.txt");
    let swapped_leaked = leaks(&text);
    if swapped_leaked {
        leaked += 1;
    }
    assert_eq!(status, 404, "{text}");

    // Pipelined on one connection: nothing either.
    let mut raw = Vec::new();
    for &path in THROUGH_LINKS {
        raw.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    raw.extend_from_slice(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let all = exchange_all(addr, &raw);
    let resps = parse_all(&all);
    let pipelined_leaked = leaks(&String::from_utf8_lossy(&all));
    if pipelined_leaked {
        leaked += 1;
    }
    assert_eq!(resps.len(), THROUGH_LINKS.len() + 1);
    assert!(resps[..THROUGH_LINKS.len()].iter().all(|r| r.status == 404));

    figure("rel_http_hidden_links.links", THROUGH_LINKS.len());
    figure(
        "rel_http_hidden_links.requests",
        2 * THROUGH_LINKS.len() + 1 + resps.len(),
    );
    figure("rel_http_hidden_links.hidden_responses", leaked);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(leaked, 0);
    loopd.assert_no_unexpected_errors();
}

#[test]
fn with_hidden_files_on_the_links_are_served() {
    // The control: the same tree with hidden_files = true serves every
    // link, so the test above can tell a refusal from a broken link.
    let site = tree();
    let loopd = site.serve("hidden_files = true");
    let addr = loopd.tcp("http");
    for &path in THROUGH_LINKS {
        let (status, text) = get_all(addr, path);
        assert_eq!(status, 200, "{path}: {text}");
        assert!(leaks(&text), "{path}: {text}");
    }
}
