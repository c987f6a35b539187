//! The http handler's whole request path, without sockets: arbitrary bytes
//! arrive on one connection of a real `loopd_http::Http` instance, through
//! a host table this target implements (send, sendfile, close, timers, a
//! clock it moves itself), over a real directory tree.
//!
//! Input: one flags byte, then the bytes the client sends.
//! - bit 0: `hidden_files`; bit 1: `open_file_cache_ms`; bit 2: no access
//!   log; bit 3: no keep-alive;
//! - bits 4-5: how the bytes are split into reads (whole, one byte, random
//!   sizes, per line);
//! - bit 6: a small output queue (the host refuses sends with AGAIN and
//!   later calls `on_writable`), so responses stream under backpressure;
//! - bit 7: the client half-closes after its last byte.
//!
//! Between reads the clock may jump (random mode), so the header, idle,
//! send and lingering deadlines fire mid-request.
//!
//! Checked on every input:
//! - no panic, and no error-level log line;
//! - the output is a sequence of well-formed HTTP/1.1 responses with a
//!   known status (never 500: the tree is readable) whose `Content-Length`
//!   matches the body;
//! - nothing outside the root (a symlink points at a sentinel file outside)
//!   and no hidden file (unless `hidden_files`) is ever sent;
//! - nothing is sent after the handler closed the connection;
//! - the handler holds at most a few timers per connection, and none after
//!   `on_close`.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loopd_fuzz::{chunks, Input, Rng};
use loopd_handler_api::abi::{self, loopd_bytes, loopd_ctx, loopd_host_api};
use loopd_handler_api::{
    CloseReason, ConnId, ConnInfo, Ctx, EofAction, Framing, Handler, Origin, TimerId, Transport,
};
use loopd_http::Http;

const CONN: u64 = (7 << 32) | 3;
/// What the file outside the root holds; no response may contain it.
const SENTINEL: &[u8] = b"SENTINEL-OUTSIDE-THE-ROOT";
/// What the hidden file holds.
const HIDDEN: &[u8] = b"HIDDEN-FILE-CONTENT";
/// Most timers the handler may hold for one connection at once.
const MAX_TIMERS: usize = 4;

/// The host's view of the one connection.
#[derive(Default)]
struct Host {
    now: u64,
    next_timer: u64,
    /// id -> (due, user_data)
    timers: BTreeMap<u64, (u64, u64)>,
    out: Vec<u8>,
    /// Bytes "queued" since the last drain; sends beyond `limit` get AGAIN.
    queued: usize,
    limit: usize,
    want_writable: bool,
    closed: bool,
    sent_after_close: usize,
    error_logs: Vec<String>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

fn with<R>(f: impl FnOnce(&mut Host) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

fn accept(h: &mut Host, conn: u64, parts: &[&[u8]]) -> i32 {
    if conn != CONN {
        return abi::LOOPD_ERR_NO_SUCH_CONN;
    }
    if h.closed {
        h.sent_after_close += 1;
        return abi::LOOPD_ERR_CLOSED;
    }
    if h.queued >= h.limit {
        h.want_writable = true;
        return abi::LOOPD_ERR_AGAIN;
    }
    for p in parts {
        h.out.extend_from_slice(p);
        h.queued += p.len();
    }
    abi::LOOPD_OK
}

/// # Safety
/// `ptr` is valid for `len` bytes (or `len` is 0).
unsafe fn slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

unsafe extern "C" fn log(_: *mut loopd_ctx, level: u32, msg: *const c_char, len: usize) {
    if level == abi::LOOPD_LOG_ERROR {
        // SAFETY: the SDK passes its message's bytes for the call.
        let text = String::from_utf8_lossy(unsafe { slice(msg.cast(), len) }).into_owned();
        with(|h| h.error_logs.push(text));
    }
}

unsafe extern "C" fn log_to(
    ctx: *mut loopd_ctx,
    level: u32,
    _target: *const c_char,
    msg: *const c_char,
    len: usize,
) {
    // SAFETY: as `log`.
    unsafe { log(ctx, level, msg, len) }
}

unsafe extern "C" fn send(_: *mut loopd_ctx, conn: u64, data: *const u8, len: usize) -> i32 {
    // SAFETY: the SDK passes a live slice for the call.
    let data = unsafe { slice(data, len) };
    with(|h| accept(h, conn, &[data]))
}

unsafe extern "C" fn sendv(
    _: *mut loopd_ctx,
    conn: u64,
    parts: *const loopd_bytes,
    n: usize,
) -> i32 {
    // SAFETY: the SDK passes `n` live parts for the call.
    let parts: Vec<&[u8]> = unsafe { std::slice::from_raw_parts(parts, n) }
        .iter()
        // SAFETY: each part is a live slice for the call.
        .map(|p| unsafe { slice(p.ptr, p.len) })
        .collect();
    with(|h| accept(h, conn, &parts))
}

/// sendfile(2) as loopd does it: at most 16 KiB a call (so responses also
/// stream in partial writes, with `on_writable` owed), AGAIN when the
/// "socket" is full, IO when the file ends before `offset`.
unsafe extern "C" fn send_file(
    _: *mut loopd_ctx,
    conn: u64,
    fd: i32,
    offset: u64,
    len: u64,
    sent: *mut u64,
) -> i32 {
    use std::os::unix::fs::FileExt;
    with(|h| {
        if conn != CONN {
            return abi::LOOPD_ERR_NO_SUCH_CONN;
        }
        if h.closed {
            h.sent_after_close += 1;
            return abi::LOOPD_ERR_CLOSED;
        }
        if h.queued >= h.limit || len == 0 {
            h.want_writable = true;
            return abi::LOOPD_ERR_AGAIN;
        }
        let n = len.min(16 << 10).min((h.limit - h.queued) as u64) as usize;
        let mut buf = vec![0u8; n];
        // SAFETY: the SDK lends an open descriptor for the call; ManuallyDrop
        // keeps it open afterwards.
        let file = std::mem::ManuallyDrop::new(unsafe {
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
        let got = match file.read_at(&mut buf, offset) {
            Ok(0) | Err(_) => return abi::LOOPD_ERR_IO,
            Ok(got) => got,
        };
        h.out.extend_from_slice(&buf[..got]);
        h.queued += got;
        if (got as u64) < len {
            h.want_writable = true;
        }
        // SAFETY: the SDK passes a valid out-pointer.
        unsafe { *sent = got as u64 };
        abi::LOOPD_OK
    })
}

unsafe extern "C" fn close(_: *mut loopd_ctx, conn: u64, mode: u32) -> i32 {
    if conn != CONN {
        return abi::LOOPD_ERR_NO_SUCH_CONN;
    }
    if mode != abi::LOOPD_CLOSE_FLUSH && mode != abi::LOOPD_CLOSE_ABORT {
        return abi::LOOPD_ERR_INVALID;
    }
    with(|h| h.closed = true);
    abi::LOOPD_OK
}

unsafe extern "C" fn timer_set(_: *mut loopd_ctx, ms: u64, user_data: u64, id: *mut u64) -> i32 {
    with(|h| {
        if h.timers.len() >= 64 {
            return abi::LOOPD_ERR_LIMIT;
        }
        h.next_timer += 1;
        let t = (1 << 32) | h.next_timer;
        // loopd clamps delays the same way.
        let due = h.now.saturating_add(ms.min(u64::from(u32::MAX) * 1000));
        h.timers.insert(t, (due, user_data));
        // SAFETY: the SDK passes a valid out-pointer.
        unsafe { *id = t };
        abi::LOOPD_OK
    })
}

unsafe extern "C" fn timer_cancel(_: *mut loopd_ctx, id: u64) -> i32 {
    with(|h| match h.timers.remove(&id) {
        Some(_) => abi::LOOPD_OK,
        None => abi::LOOPD_ERR_NO_SUCH_TIMER,
    })
}

unsafe extern "C" fn now_ms(_: *mut loopd_ctx) -> u64 {
    with(|h| h.now)
}

unsafe extern "C" fn output_queued(_: *mut loopd_ctx, conn: u64, n: *mut usize) -> i32 {
    if conn != CONN {
        return abi::LOOPD_ERR_NO_SUCH_CONN;
    }
    // SAFETY: the SDK passes a valid out-pointer.
    with(|h| unsafe { *n = h.queued });
    abi::LOOPD_OK
}

unsafe extern "C" fn status_str(_: i32) -> *const c_char {
    c"status".as_ptr()
}

static HOST_API: loopd_host_api = loopd_host_api {
    struct_size: std::mem::size_of::<loopd_host_api>() as u32,
    abi_major: abi::LOOPD_ABI_MAJOR,
    abi_minor: abi::LOOPD_ABI_MINOR,
    reserved: 0,
    version: c"0.0.0-fuzz".as_ptr(),
    log: Some(log),
    send: Some(send),
    sendv: Some(sendv),
    close: Some(close),
    send_datagram: None,
    timer_set: Some(timer_set),
    timer_cancel: Some(timer_cancel),
    connect: None,
    now_ms: Some(now_ms),
    output_queued: Some(output_queued),
    status_str: Some(status_str),
    log_to: Some(log_to),
    send_file: Some(send_file),
    pause_read: None,
    resume_read: None,
    shutdown_write: None,
    connect_with: None,
    post: None,
    watch_fd: None,
    watch_modify: None,
    watch_remove: None,
    timer_repeat: None,
    post_siblings: None,
    worker_info: None,
    stats_json: None,
    metric_declare: None,
    metric_series: None,
    metric_update: None,
    peer_subject: None,
    peer_certificate: None,
    send_datagrams: None,
};

/// The served tree, made once per process:
/// `index.html`, `a.txt`, `sub/index.html`, `sub/b.css`, `big.bin`
/// (200 KiB, streamed in chunks), `.hidden`, `.well-known/x`, `nodir/`
/// (a directory without an index), `in` (a symlink to `a.txt`), `out` and
/// `sub/out` (symlinks to the sentinel outside the root), `up` (a symlink
/// to `..`), `abs` (an absolute symlink to the sentinel).
fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("loopd-fuzz-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        let mk = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
        let put = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
        mk("sub");
        mk("nodir");
        mk(".well-known");
        std::fs::write(base.join("secret.txt"), SENTINEL).unwrap();
        put("index.html", b"<h1>index</h1>\n");
        put("a.txt", b"hello, world\n");
        put("sub/index.html", b"<p>sub</p>\n");
        put("sub/b.css", b"p { color: red }\n");
        put(".hidden", HIDDEN);
        put(".well-known/x", b"well known\n");
        put("big.bin", &vec![b'b'; 200 << 10]);
        let link = |target: &std::path::Path, at: &str| {
            std::os::unix::fs::symlink(target, root.join(at)).unwrap()
        };
        link("a.txt".as_ref(), "in");
        link("../secret.txt".as_ref(), "out");
        link("../../secret.txt".as_ref(), "sub/out");
        link("..".as_ref(), "up");
        link(&base.join("secret.txt"), "abs");
        root
    })
}

fn make(flags: u8) -> (Http, Ctx) {
    // SAFETY: HOST_API is a complete static table; the context pointer is
    // never dereferenced by this host.
    let ctx = unsafe {
        Ctx::from_raw(
            &HOST_API,
            std::ptr::NonNull::<c_void>::dangling().as_ptr().cast(),
        )
    };
    let config = serde_json::json!({
        "root": root(),
        "hidden_files": flags & 1 != 0,
        "open_file_cache_ms": if flags & 2 != 0 { 1000 } else { 0 },
        "access_log": flags & 4 == 0,
        "keepalive_timeout_ms": if flags & 8 != 0 { 0 } else { 5000 },
        "header_timeout_ms": 3000,
        "send_timeout_ms": 4000,
        "lingering_timeout_ms": 1000,
        "max_request_line": 512,
        "max_header_bytes": 1024,
        "max_headers": 16,
        "max_discard_body": 4096,
    });
    let config = serde_json::from_value(config).expect("a valid config");
    let http = Http::create(&ctx, "http", config).expect("the handler starts");
    (http, ctx)
}

/// Fires every timer due at the host's clock, earliest first.
fn fire_due(http: &mut Http, ctx: &Ctx) {
    for _ in 0..64 {
        let due = with(|h| {
            let now = h.now;
            let next = h
                .timers
                .iter()
                .filter(|(_, &(at, _))| at <= now)
                .min_by_key(|(&id, &(at, _))| (at, id))
                .map(|(&id, &(_, data))| (id, data));
            if let Some((id, _)) = next {
                h.timers.remove(&id);
            }
            next
        });
        let Some((id, data)) = due else { return };
        http.on_timer(ctx, TimerId::from_raw(id), data);
        check_timers();
    }
}

/// Empties the "queue" as a reader would; `on_writable` if it was owed.
fn drain(http: &mut Http, ctx: &Ctx) {
    let owed = with(|h| {
        h.queued = 0;
        std::mem::take(&mut h.want_writable) && !h.closed
    });
    if owed {
        http.on_writable(ctx, ConnId::from_raw(CONN), &mut ());
        check_timers();
    }
}

fn check_timers() {
    let n = with(|h| h.timers.len());
    assert!(
        n <= MAX_TIMERS,
        "the handler holds {n} timers for one connection"
    );
}

fn closed() -> bool {
    with(|h| h.closed)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let bytes = input.rest();
    let mut rng = Rng::new(data.len() as u64 ^ u64::from(flags) << 56);
    with(|h| {
        *h = Host {
            limit: if flags & 0x40 != 0 { 256 } else { usize::MAX },
            ..Host::default()
        }
    });
    let (mut http, ctx) = make(flags);
    let id = ConnId::from_raw(CONN);
    let info = ConnInfo {
        transport: Transport::Tcp,
        origin: Origin::Accepted,
        framing: Framing::Raw,
        peer: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        local: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        endpoint: "tcp://127.0.0.1:8080",
    };
    http.on_open(&ctx, id, &info)
        .expect("a raw connection is accepted");
    check_timers();

    let mode = (flags >> 4) & 3;
    for chunk in chunks(bytes, mode, &mut rng) {
        if closed() {
            break;
        }
        // A paused connection is not read until its queue drains.
        if with(|h| h.queued >= h.limit) {
            drain(&mut http, &ctx);
            if closed() {
                break;
            }
        }
        http.on_data(&ctx, id, &mut (), chunk);
        check_timers();
        if mode == 2 {
            match rng.below(8) {
                0 => with(|h| h.now += 1500),
                1 => with(|h| h.now += 5000),
                _ => {}
            }
            fire_due(&mut http, &ctx);
        }
    }
    if !closed() && flags & 0x80 != 0 {
        drain(&mut http, &ctx);
        if !closed() && matches!(http.on_eof(&ctx, id, &mut ()), EofAction::Close) {
            with(|h| h.closed = true);
        }
    }
    // Let the connection run its course: the client reads everything and
    // time passes until the handler closes or has nothing left to wait for.
    for _ in 0..64 {
        drain(&mut http, &ctx);
        fire_due(&mut http, &ctx);
        if closed() {
            break;
        }
        let next = with(|h| h.timers.values().map(|&(at, _)| at).min());
        match next {
            Some(at) => with(|h| h.now = h.now.max(at)),
            None if with(|h| h.want_writable) => {}
            None => break,
        }
    }
    let reason = if closed() {
        CloseReason::Local
    } else {
        CloseReason::Peer
    };
    with(|h| h.closed = true);
    http.on_close(&ctx, id, (), reason);
    let (left, out, sent_after_close, errors) = with(|h| {
        (
            h.timers.len(),
            std::mem::take(&mut h.out),
            h.sent_after_close,
            std::mem::take(&mut h.error_logs),
        )
    });
    drop(http);

    assert!(errors.is_empty(), "error-level log lines: {errors:?}");
    assert_eq!(sent_after_close, 0, "sends after close");
    assert_eq!(left, 0, "timers left after on_close");
    check_responses(&out, flags & 1 != 0);
});

/// The output is whole responses, each well-formed, none leaking.
fn check_responses(mut out: &[u8], hidden_ok: bool) {
    assert!(
        !contains(out, SENTINEL),
        "a file outside the root was served"
    );
    if !hidden_ok {
        assert!(!contains(out, HIDDEN), "a hidden file was served");
    }
    while !out.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        let len = match resp.parse(out) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ),
        };
        assert_eq!(resp.version, Some(1), "HTTP/1.1 responses only");
        let status = resp.code.expect("a status code");
        assert!(
            matches!(
                status,
                200 | 206
                    | 301
                    | 304
                    | 400
                    | 403
                    | 404
                    | 405
                    | 408
                    | 412
                    | 413
                    | 414
                    | 416
                    | 417
                    | 431
                    | 505
            ),
            "unexpected status {status}"
        );
        let lengths: Vec<u64> = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .expect("a numeric Content-Length")
            })
            .collect();
        assert!(
            lengths.len() <= 1,
            "{} Content-Length fields",
            lengths.len()
        );
        out = &out[len..];
        let body = match lengths.first() {
            None => {
                assert_eq!(status, 304, "a {status} without Content-Length");
                0
            }
            // A HEAD response has the length but no body: the next
            // response follows at once (no served body starts this way).
            Some(_) if out.is_empty() || out.starts_with(b"HTTP/1.1 ") => 0,
            Some(&n) => n as usize,
        };
        if body > out.len() {
            // Only a streamed file may be cut short (a client that stopped
            // reading, cut at the send timeout), and only at the end.
            assert!(
                matches!(status, 200 | 206),
                "a {status} announces {body} bytes, {} follow",
                out.len()
            );
            return;
        }
        out = &out[body..];
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
