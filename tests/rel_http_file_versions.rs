//! Reliability: a response is one version of its file, and its validators
//! name that version (issue 20 item 9).
//!
//! - Two contents of a path with the same size and mtime (a replacement
//!   that keeps the mtime, as `cp -p` or `rsync -t` make it) get different
//!   ETags, so no stale 304 and no `If-Range` that splices new bytes onto an
//!   old prefix; so do two in-place versions whose mtimes differ only in
//!   nanoseconds.
//! - A file rewritten in place (same size, new mtime), grown, or truncated
//!   and rewritten while it is being downloaded aborts that download: the
//!   client never receives a complete response mixing two versions.

mod common;
mod http_util;

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use http_util::*;

/// Sets a file's mtime (and atime) to `(seconds, nanoseconds)`.
fn set_mtime(path: &Path, (sec, nsec): (i64, i64)) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [t, t];
    // SAFETY: `c` is NUL-terminated and `times` holds two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn mtime(path: &Path) -> (i64, i64) {
    let m = std::fs::metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> Resp {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes(),
    )
}

/// Longer than the open-file cache's default period (1 ms, counted in
/// whole milliseconds), after which a change is seen by the next request,
/// and than the granularity of file timestamps (as coarse as a 10 ms
/// kernel tick), so that the next change gets another mtime.
fn after_the_cache_period() {
    pause(30);
}

#[test]
fn same_size_and_mtime_still_get_a_new_etag() {
    let site = Site::new();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");
    let path = site.root.join("v.txt");
    std::fs::write(&path, "version one\n").unwrap();
    let first = get(addr, "/v.txt", "");
    assert_eq!(first.body, b"version one\n");
    let etag1 = first.header("ETag").unwrap().to_string();

    // Replaced by a rename, keeping size and mtime to the nanosecond.
    let tmp = site.root.join("v.tmp");
    std::fs::write(&tmp, "version two\n").unwrap();
    set_mtime(&tmp, mtime(&path));
    std::fs::rename(&tmp, &path).unwrap();
    after_the_cache_period();
    let second = get(addr, "/v.txt", "");
    assert_eq!(second.body, b"version two\n");
    assert_eq!(
        second.header("Last-Modified"),
        first.header("Last-Modified"),
        "the scenario: same size and mtime"
    );
    let etag2 = second.header("ETag").unwrap().to_string();
    let distinct_replaced = etag1 != etag2;

    // The old tag validates nothing: no stale 304, no splice.
    let cond = get(addr, "/v.txt", &format!("If-None-Match: {etag1}\r\n"));
    let stale_304 = u32::from(cond.status == 304);
    let spliced = get(
        addr,
        "/v.txt",
        &format!("Range: bytes=8-10\r\nIf-Range: {etag1}\r\n"),
    );
    let if_range_splices = u32::from(spliced.status == 206);
    assert_eq!(spliced.body, b"version two\n");
    let fresh = get(
        addr,
        "/v.txt",
        &format!("Range: bytes=8-10\r\nIf-Range: {etag2}\r\n"),
    );
    assert_eq!((fresh.status, fresh.body.as_slice()), (206, &b"two"[..]));

    // Rewritten in place (same inode, same size); the mtime moves by a
    // nanosecond only, inside the same second.
    let (sec, nsec) = mtime(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(b"version 3!!\n")
        .unwrap();
    set_mtime(
        &path,
        (
            sec,
            if nsec == 999_999_999 {
                nsec - 1
            } else {
                nsec + 1
            },
        ),
    );
    after_the_cache_period();
    let third = get(addr, "/v.txt", "");
    assert_eq!(third.body, b"version 3!!\n");
    assert_eq!(
        third.header("Last-Modified"),
        second.header("Last-Modified")
    );
    let distinct_nanoseconds = third.header("ETag").unwrap() != etag2;

    figure(
        "rel_http_file_versions.etag_distinct_after_replace",
        distinct_replaced,
    );
    figure(
        "rel_http_file_versions.etag_distinct_by_nanoseconds",
        distinct_nanoseconds,
    );
    figure("rel_http_file_versions.stale_304", stale_304);
    figure("rel_http_file_versions.if_range_splices", if_range_splices);
    assert!(distinct_replaced && distinct_nanoseconds);
    assert_eq!((stale_304, if_range_splices), (0, 0));
    loopd.assert_no_unexpected_errors();
}

/// How a file is changed under a download.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// 64 KiB overwritten in the middle: same size, new mtime.
    InPlace,
    /// One byte appended.
    Grow,
    /// Truncated, then written again whole with other bytes (what `cp`
    /// onto an existing file does): same size in the end.
    TruncateAndRewrite,
}

const BIG: usize = 8 << 20;

/// Starts a download of `/big.bin` with a small receive buffer, reads its
/// head and the first 64 KiB, applies `change` (if any), and returns the
/// body bytes received before the server closed (or the whole body).
fn download(addr: std::net::SocketAddr, file: &Path, change: Option<Change>) -> (u16, Vec<u8>) {
    let mut s = tcp(addr);
    small_receive_buffer(&s, 16 * 1024);
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    s.read_exact(&mut got).unwrap();
    match change {
        None => {}
        Some(Change::InPlace) => {
            let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            f.seek(SeekFrom::Start((BIG / 2) as u64)).unwrap();
            f.write_all(&pattern(64 * 1024, 0xA5)).unwrap();
        }
        Some(Change::Grow) => {
            std::fs::OpenOptions::new()
                .append(true)
                .open(file)
                .unwrap()
                .write_all(b"+")
                .unwrap();
        }
        Some(Change::TruncateAndRewrite) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(file)
                .unwrap();
            f.write_all(&pattern(BIG, 0x5A)).unwrap();
        }
    }
    got.extend_from_slice(&read_until_closed(&mut s));
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = read_response(&mut &got[..end], true).unwrap();
    (head.status, got[end..].to_vec())
}

#[test]
fn a_file_changed_during_its_download_aborts_the_download() {
    let site = Site::new();
    let file = site.root.join("big.bin");
    let original = pattern(BIG, 7);
    std::fs::write(&file, &original).unwrap();
    let loopd = site.serve("");
    let addr = loopd.tcp("http");

    // The control: unchanged, the download is complete and exact.
    let (status, body) = download(addr, &file, None);
    assert_eq!(status, 200);
    let complete_unchanged = body == original;

    let rounds = tier(2, 10);
    let mut aborted = 0;
    let mut complete_mixed = 0;
    let mut total = 0;
    for round in 0..rounds {
        for change in [Change::InPlace, Change::Grow, Change::TruncateAndRewrite] {
            total += 1;
            std::fs::write(&file, &original).unwrap();
            after_the_cache_period();
            let (status, body) = download(addr, &file, Some(change));
            assert_eq!(status, 200, "round {round} {change:?}");
            if body.len() < BIG {
                aborted += 1;
                // What did arrive is the start of one version or the other
                // chunk by chunk, never more than was announced.
            } else {
                complete_mixed += 1;
                eprintln!("round {round} {change:?}: complete {} bytes", body.len());
            }
        }
    }
    // After a change the next request sees the new file, whole.
    std::fs::write(&file, pattern(BIG, 9)).unwrap();
    after_the_cache_period();
    let (status, body) = download(addr, &file, None);
    let fresh_after_change = status == 200 && body == pattern(BIG, 9);

    figure(
        "rel_http_file_versions.complete_unchanged",
        complete_unchanged,
    );
    figure(
        "rel_http_file_versions.aborted_on_change",
        format!("{aborted}/{total}"),
    );
    figure(
        "rel_http_file_versions.complete_after_change",
        complete_mixed,
    );
    figure(
        "rel_http_file_versions.fresh_after_change",
        fresh_after_change,
    );
    assert!(complete_unchanged && fresh_after_change);
    assert_eq!((aborted, complete_mixed), (total, 0));
    assert!(
        loopd.wait_for_log("file changed while being sent", TIMEOUT),
        "{}",
        loopd.logs()
    );
    loopd.assert_no_unexpected_errors();
}
