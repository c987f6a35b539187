//! The http handler's open-file cache (`open_file_cache_ms`): off by
//! default, so every request sees the file as it is; on, a path's file is
//! opened once per period and served from that descriptor meanwhile.

mod common;
mod http_util;

use http_util::*;

const HELLO: &[u8] = b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn without_the_cache_every_request_opens_the_file() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    assert_eq!(exchange(addr, HELLO).body, b"hello, world\n");
    std::fs::write(site.root.join("new.txt"), "replaced\n").unwrap();
    std::fs::rename(site.root.join("new.txt"), site.root.join("hello.txt")).unwrap();
    assert_eq!(exchange(addr, HELLO).body, b"replaced\n");
    std::fs::remove_file(site.root.join("hello.txt")).unwrap();
    assert_eq!(exchange(addr, HELLO).status, 404);
}

#[test]
fn with_the_cache_a_path_is_opened_once_per_period() {
    let site = Site::new();
    let loopd = site.serve("open_file_cache_ms = 600000");
    let addr = loopd.tcp("http");
    let first = exchange(addr, HELLO);
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"hello, world\n"[..])
    );
    let big = exchange(addr, b"GET /data.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(big.body, site.file("data.bin"));

    // Replaced and deleted files are still served from the cached
    // descriptors, with the same validators, within the period.
    std::fs::write(site.root.join("new.txt"), "replaced\n").unwrap();
    std::fs::rename(site.root.join("new.txt"), site.root.join("hello.txt")).unwrap();
    let data = site.file("data.bin");
    std::fs::remove_file(site.root.join("data.bin")).unwrap();
    let again = exchange(addr, HELLO);
    assert_eq!(again.body, b"hello, world\n");
    assert_eq!(again.header("ETag"), first.header("ETag"));
    assert_eq!(
        exchange(addr, b"GET /data.bin HTTP/1.1\r\nHost: t\r\n\r\n").body,
        data
    );
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
