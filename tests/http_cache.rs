//! The http handler's open-file cache: on by default, each cached path
//! checked with one stat at most once per `open_file_cache_ms` (1 ms by
//! default, 0: at every use), so a changed, replaced or deleted file is
//! seen by the next request after that; with a long period a path's file is
//! served from what was opened meanwhile; `open_file_cache_max` bounds it
//! (and 0 turns it off).

mod common;
mod http_util;

use std::io::Write;

use common::*;
use http_util::*;

const HELLO: &[u8] = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n";
const DATA: &[u8] = b"GET /data.bin HTTP/1.1\r\nHost: t\r\n\r\n";

/// Longer than the default period (1 ms, counted in whole milliseconds).
fn after_the_cache_period() {
    pause(10);
}

/// Lets the clock of file timestamps move on before a file is changed, so
/// that its new version gets another mtime (they can be as coarse as one
/// 10 ms kernel tick): a change within that granularity is one stat cannot
/// see, which docs/handlers/http.md says.
fn settle() {
    pause(30);
}

/// Every kind of change to a cached small file (held in memory) and a
/// cached large one (held open), seen by the next request; `wait` runs
/// between a change and that request.
fn changes_are_seen(addr: std::net::SocketAddr, site: &Site, wait: fn()) {
    for (req, name, len) in [(HELLO, "hello.txt", 13), (DATA, "data.bin", 100_000)] {
        let path = site.root.join(name);
        let first = exchange(addr, req);
        assert_eq!(first.status, 200, "{name}");
        // Replaced by a rename (what editors and deploy tools do).
        settle();
        let v2 = pattern(len, 20);
        std::fs::write(site.root.join("new.tmp"), &v2).unwrap();
        std::fs::rename(site.root.join("new.tmp"), &path).unwrap();
        wait();
        let r = exchange(addr, req);
        assert_eq!(r.body, v2, "{name} replaced");
        assert_ne!(r.header("ETag"), first.header("ETag"));
        // Rewritten in place, same size (what `cp` onto it does).
        settle();
        let v3 = pattern(len, 30);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(&v3)
            .unwrap();
        wait();
        assert_eq!(exchange(addr, req).body, v3, "{name} rewritten in place");
        // Truncated and grown.
        settle();
        let v4 = pattern(len + 7, 40);
        std::fs::write(&path, &v4).unwrap();
        wait();
        assert_eq!(exchange(addr, req).body, v4, "{name} grown");
        // Deleted, then created again.
        settle();
        std::fs::remove_file(&path).unwrap();
        wait();
        assert_eq!(exchange(addr, req).status, 404, "{name} deleted");
        std::fs::write(&path, "back\n").unwrap();
        wait();
        assert_eq!(exchange(addr, req).body, b"back\n", "{name} created again");
    }
}

#[test]
fn by_default_a_change_is_seen_after_the_cache_period() {
    let site = Site::new();
    let loopd = site.serve("");
    assert!(
        loopd.wait_for_log("open-file cache: 256 files, checked every 1 ms", TIMEOUT),
        "{}",
        loopd.logs()
    );
    changes_are_seen(loopd.tcp("http"), &site, after_the_cache_period);
    loopd.assert_no_unexpected_errors();
}

#[test]
fn with_a_period_of_0_every_use_is_checked() {
    let site = Site::new();
    let loopd = site.serve("open_file_cache_ms = 0");
    changes_are_seen(loopd.tcp("http"), &site, || {});
}

#[test]
fn with_the_cache_off_every_request_opens_the_file() {
    let site = Site::new();
    let loopd = site.serve("open_file_cache_max = 0");
    assert!(
        loopd.wait_for_log("open-file cache: off", TIMEOUT),
        "{}",
        loopd.logs()
    );
    changes_are_seen(loopd.tcp("http"), &site, || {});
}

#[test]
fn with_a_long_period_a_path_is_opened_once_per_period() {
    let site = Site::new();
    let loopd = site.serve("open_file_cache_ms = 600000");
    let addr = loopd.tcp("http");
    let first = exchange(addr, HELLO);
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"hello, world\n"[..])
    );
    let big = exchange(addr, DATA);
    assert_eq!(big.body, site.file("data.bin"));

    // Replaced and deleted files are still served as they were opened
    // (from memory, or from the open descriptor), with the same
    // validators, within the period.
    std::fs::write(site.root.join("new.txt"), "replaced\n").unwrap();
    std::fs::rename(site.root.join("new.txt"), site.root.join("hello.txt")).unwrap();
    let data = site.file("data.bin");
    std::fs::remove_file(site.root.join("data.bin")).unwrap();
    after_the_cache_period();
    let again = exchange(addr, HELLO);
    assert_eq!(again.body, b"hello, world\n");
    assert_eq!(again.header("ETag"), first.header("ETag"));
    assert_eq!(exchange(addr, DATA).body, data);
    // Ranges and conditionals work on a cached file.
    let part = exchange(
        addr,
        b"GET /data.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=10-19\r\n\r\n",
    );
    assert_eq!((part.status, part.body.as_slice()), (206, &data[10..20]));
    let etag = first.header("ETag").unwrap().to_string();
    let cond = exchange(
        addr,
        format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n").as_bytes(),
    );
    assert_eq!(cond.status, 304);

    // A path not asked for before is looked up as it is now.
    std::fs::write(site.root.join("fresh.txt"), "fresh\n").unwrap();
    assert_eq!(
        exchange(addr, b"GET /fresh.txt HTTP/1.1\r\nHost: t\r\n\r\n").body,
        b"fresh\n"
    );
    // Pipelined requests share the cached file.
    let raw = HELLO.repeat(16);
    let all = exchange_all(
        addr,
        &[
            raw.as_slice(),
            b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ]
        .concat(),
    );
    assert_eq!(
        String::from_utf8_lossy(&all)
            .matches("hello, world\n")
            .count(),
        16
    );
}

/// The descriptors a process has open.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn the_cache_holds_at_most_open_file_cache_max_descriptors() {
    if valgrind() {
        // valgrind holds descriptors of its own.
        return;
    }
    let site = Site::new();
    // Files over 16 KiB are held open (smaller ones in memory, no fd).
    let files = 40;
    for i in 0..files {
        std::fs::write(
            site.root.join(format!("f{i}.bin")),
            pattern(20_000, i as u8),
        )
        .unwrap();
    }
    let mut held = Vec::new();
    for max in [8usize, 256] {
        let loopd = site.serve(&format!("open_file_cache_max = {max}"));
        let addr = loopd.tcp("http");
        let mut c = Client::connect(addr);
        assert_eq!(c.get("/hello.txt").status, 200);
        let base = open_fds(loopd.pid());
        for round in 0..2 {
            for i in 0..files {
                let r = c.get(&format!("/f{i}.bin"));
                assert_eq!(r.body, pattern(20_000, i as u8), "f{i} round {round}");
            }
        }
        let grown = open_fds(loopd.pid()) - base;
        figure(&format!("http_cache.cache_max_{max}_fds_held"), grown);
        held.push((max, grown));
    }
    let (small, big) = (held[0].1, held[1].1);
    assert!(
        small <= 8,
        "{small} descriptors held with open_file_cache_max = 8"
    );
    // The same files with room for all: each is held (the count works).
    assert_eq!(big, files, "{big} descriptors held with room for {files}");
}

#[test]
fn bad_cache_settings_are_refused() {
    let dir = TempDir::new("http-cache-config");
    let site = Site::new();
    for (extra, want) in [
        (
            "open_file_cache_max = 100001",
            "`open_file_cache_max` must be at most 100000",
        ),
        (
            "open_file_cache_ms = 86400001",
            "`open_file_cache_ms` must be at most 86400000",
        ),
    ] {
        let path = write_config(&dir, &config(&site.root, extra));
        let out = run_loopd(&["check", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(err.contains(want), "{extra}:\nwant {want}\ngot {err}");
    }
}
