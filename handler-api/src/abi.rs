//! The raw handler ABI v1: a `#[repr(C)]` mirror of `include/loopd.h`.
//!
//! `loopd.h` is the source of truth; every item here carries the same name and
//! the same documentation contract. A test (`tests/abi_layout.rs`) compiles a
//! C program against the header and checks that every struct's size and every
//! field's offset match these definitions.
//!
//! Most handlers never touch this module: implement [`crate::Handler`] and use
//! [`crate::export_handler!`] instead.
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_void};

/// Major version of the ABI. A major bump renames the entry symbol.
pub const LOOPD_ABI_MAJOR: u32 = 1;
/// Minor version of the ABI. A minor bump only appends fields and functions.
pub const LOOPD_ABI_MINOR: u32 = 6;
/// The one symbol a plugin exports, NUL-terminated.
pub const LOOPD_ENTRY_SYMBOL: &[u8] = b"loopd_plugin_entry_v1\0";

/// Success.
pub const LOOPD_OK: i32 = 0;
/// The output queue is at its high watermark; nothing was queued.
pub const LOOPD_ERR_AGAIN: i32 = -1;
/// The id does not name a live connection or socket of this instance.
pub const LOOPD_ERR_NO_SUCH_CONN: i32 = -2;
/// The connection is closing and accepts no more output.
pub const LOOPD_ERR_CLOSED: i32 = -3;
/// An argument is invalid.
pub const LOOPD_ERR_INVALID: i32 = -4;
/// The operation is not available on this object or host.
pub const LOOPD_ERR_UNSUPPORTED: i32 = -5;
/// A configured limit was reached.
pub const LOOPD_ERR_LIMIT: i32 = -6;
/// The operating system refused the operation.
pub const LOOPD_ERR_IO: i32 = -7;
/// A host function was called outside a hook or from another thread.
pub const LOOPD_ERR_WRONG_THREAD: i32 = -8;
/// The timer id does not name a pending timer of this instance.
pub const LOOPD_ERR_NO_SUCH_TIMER: i32 = -9;
/// A hook failed or panicked.
pub const LOOPD_ERR_HANDLER: i32 = -10;
/// `post`: no handler instance has that name (1.3).
pub const LOOPD_ERR_NO_SUCH_INSTANCE: i32 = -11;
/// `post`: the target's mailbox is full; nothing was posted (1.3).
pub const LOOPD_ERR_FULL: i32 = -12;

/// `metric_declare`: a counter (1.4).
pub const LOOPD_METRIC_COUNTER: u32 = 1;
/// `metric_declare`: a gauge (1.4).
pub const LOOPD_METRIC_GAUGE: u32 = 2;
/// `metric_declare`: a histogram (1.4).
pub const LOOPD_METRIC_HISTOGRAM: u32 = 3;
/// `metric_update`: add (a counter by a value >= 0, or a gauge) (1.4).
pub const LOOPD_METRIC_ADD: u32 = 1;
/// `metric_update`: set a gauge (1.4).
pub const LOOPD_METRIC_SET: u32 = 2;
/// `metric_update`: observe into a histogram (1.4).
pub const LOOPD_METRIC_OBSERVE: u32 = 3;
/// Most labels a handler-defined metric may have (1.4).
pub const LOOPD_METRIC_MAX_LABELS: u32 = 8;

/// Address family: unknown.
pub const LOOPD_AF_UNSPEC: u16 = 0;
/// Address family: IPv4.
pub const LOOPD_AF_INET: u16 = 1;
/// Address family: IPv6.
pub const LOOPD_AF_INET6: u16 = 2;
/// Address family: Unix domain.
pub const LOOPD_AF_UNIX: u16 = 3;

/// Stream transport: TCP.
pub const LOOPD_TRANSPORT_TCP: u32 = 1;
/// Stream transport: Unix-domain stream socket.
pub const LOOPD_TRANSPORT_UNIX: u32 = 2;
/// Datagram transport: UDP (listeners only; since 1.1).
pub const LOOPD_TRANSPORT_UDP: u32 = 3;
/// Stream transport: TLS over TCP (`tls://` listeners; since 1.4). The
/// handler reads and writes plaintext.
pub const LOOPD_TRANSPORT_TLS: u32 = 4;

/// The connection was accepted by a listener.
pub const LOOPD_ORIGIN_ACCEPTED: u32 = 1;
/// The connection was opened by `connect`.
pub const LOOPD_ORIGIN_CONNECTED: u32 = 2;

/// Plugin info only: no framing preference (raw).
pub const LOOPD_FRAMING_DEFAULT: u32 = 0;
/// Bytes as they arrive.
pub const LOOPD_FRAMING_RAW: u32 = 1;
/// One line per call, without `\n` and a `\r` before it.
pub const LOOPD_FRAMING_LINE: u32 = 2;
/// One payload per call; 4-byte big-endian length header on the wire.
pub const LOOPD_FRAMING_LENGTH_PREFIXED: u32 = 3;
/// A framing's bit in [`loopd_plugin_info::framings`] (1.5), as the C
/// macro `LOOPD_FRAMING_BIT(framing)`. For the three framings only: the
/// bit of `LOOPD_FRAMING_DEFAULT` means nothing, and a value of 32 or more
/// gives 0 here (the C macro has no defined value for it).
#[allow(non_snake_case)]
pub const fn LOOPD_FRAMING_BIT(framing: u32) -> u32 {
    if framing < 32 {
        1 << framing
    } else {
        0
    }
}

/// `close` mode: send what is queued, then close.
pub const LOOPD_CLOSE_FLUSH: u32 = 0;
/// `close` mode: drop the queue and close now.
pub const LOOPD_CLOSE_ABORT: u32 = 1;
/// `close` mode (ABI 1.6): as `ABORT`, and the peer is told the stream
/// broke (TCP: a reset instead of a FIN), so a cut-off stream never looks
/// complete. An older host refuses it with `LOOPD_ERR_INVALID`.
pub const LOOPD_CLOSE_RESET: u32 = 2;

/// Close reason: the peer closed and the output was flushed.
pub const LOOPD_REASON_PEER: i32 = 1;
/// Close reason: the handler called `close`.
pub const LOOPD_REASON_LOCAL: i32 = 2;
/// Close reason: I/O error or reset by the peer.
pub const LOOPD_REASON_ERROR: i32 = 3;
/// Close reason: the peer exceeded the maximum frame size.
pub const LOOPD_REASON_FRAME_TOO_BIG: i32 = 4;
/// Close reason: a hook failed or panicked.
pub const LOOPD_REASON_HANDLER: i32 = 5;
/// Close reason: loopd shut down.
pub const LOOPD_REASON_SHUTDOWN: i32 = 6;
/// Close reason: an outbound connect failed.
pub const LOOPD_REASON_CONNECT_FAILED: i32 = 7;
/// Close reason: a flush before close timed out.
pub const LOOPD_REASON_TIMEOUT: i32 = 8;
/// Close reason: no traffic for the handler's `idle_timeout_ms` (1.3).
pub const LOOPD_REASON_IDLE: i32 = 9;
/// Close reason: a loopd limit was reached, e.g. the process's budget for
/// buffered input (`max_buffered_input`) (1.3).
pub const LOOPD_REASON_LIMIT: i32 = 10;

/// `on_eof` result: close once the output queue is flushed.
pub const LOOPD_EOF_CLOSE: i32 = 0;
/// `on_eof` result: keep the connection open for writing.
pub const LOOPD_EOF_KEEP_OPEN: i32 = 1;

/// `on_oversize` result: close the connection (1.1).
pub const LOOPD_OVERSIZE_CLOSE: i32 = 0;
/// `on_oversize` result: discard that frame and keep the connection (1.1).
pub const LOOPD_OVERSIZE_SKIP: i32 = 1;

/// fd watch interest and `on_fd` events: readable (1.3).
pub const LOOPD_FD_READABLE: u32 = 1;
/// fd watch interest and `on_fd` events: writable (1.3).
pub const LOOPD_FD_WRITABLE: u32 = 2;
/// `on_fd` events only: hung up or in error (1.3).
pub const LOOPD_FD_HUP: u32 = 4;

/// Log level: error.
pub const LOOPD_LOG_ERROR: u32 = 1;
/// Log level: warning.
pub const LOOPD_LOG_WARN: u32 = 2;
/// Log level: info.
pub const LOOPD_LOG_INFO: u32 = 3;
/// Log level: debug.
pub const LOOPD_LOG_DEBUG: u32 = 4;
/// Log level: trace.
pub const LOOPD_LOG_TRACE: u32 = 5;

/// The host's opaque per-instance context.
#[repr(C)]
#[derive(Debug)]
pub struct loopd_ctx {
    _private: [u8; 0],
    // Opaque and owned by the host: not Send, not Sync, not Unpin.
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// A borrowed byte range.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_bytes {
    /// Start of the bytes; may be NULL when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

/// A socket address without pointers. See `loopd.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct loopd_addr {
    /// `LOOPD_AF_*`.
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// IPv6 scope id.
    pub scope_id: u32,
    /// IPv4 in the first 4 bytes, or the 16 bytes of IPv6.
    pub ip: [u8; 16],
}

/// One datagram of a batch (since 1.4): what `on_datagrams` receives and
/// `send_datagrams` sends. A fixed layout, never extended. See `loopd.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_datagram {
    /// The sender (`on_datagrams`) or where to (`send_datagrams`).
    pub addr: loopd_addr,
    /// `send_datagrams` writes here why it was or was not sent.
    pub status: i32,
    /// Always 0.
    pub reserved: u32,
    /// The bytes (may be NULL when `len` is 0).
    pub data: *const u8,
    /// How many.
    pub len: usize,
}

/// Facts about a new connection, passed to `on_open`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_conn_info {
    /// `size_of::<loopd_conn_info>()` as the host knows it.
    pub struct_size: u32,
    /// `LOOPD_TRANSPORT_*`.
    pub transport: u32,
    /// `LOOPD_ORIGIN_*`.
    pub origin: u32,
    /// `LOOPD_FRAMING_*` in effect.
    pub framing: u32,
    /// The peer's address.
    pub peer: loopd_addr,
    /// The local address.
    pub local: loopd_addr,
    /// Listener URL or connect target, NUL-terminated, never NULL.
    pub endpoint: *const c_char,
}

/// A listener or datagram socket, passed to `on_listen` (since 1.1).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_listen_info {
    /// `size_of::<loopd_listen_info>()` as the host knows it.
    pub struct_size: u32,
    /// `LOOPD_TRANSPORT_*`.
    pub transport: u32,
    /// The bound address.
    pub local: loopd_addr,
    /// The URL actually bound, NUL-terminated, never NULL.
    pub url: *const c_char,
}

/// `loopd_host_api.log`.
pub type loopd_log_fn = unsafe extern "C" fn(*mut loopd_ctx, u32, *const c_char, usize);
/// `loopd_host_api.send`.
pub type loopd_send_fn = unsafe extern "C" fn(*mut loopd_ctx, u64, *const u8, usize) -> i32;
/// `loopd_host_api.sendv`.
pub type loopd_sendv_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u64, *const loopd_bytes, usize) -> i32;
/// `loopd_host_api.close`.
pub type loopd_close_fn = unsafe extern "C" fn(*mut loopd_ctx, u64, u32) -> i32;
/// `loopd_host_api.send_datagram`.
pub type loopd_send_datagram_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u64, *const loopd_addr, *const u8, usize) -> i32;
/// `loopd_host_api.timer_set`.
pub type loopd_timer_set_fn = unsafe extern "C" fn(*mut loopd_ctx, u64, u64, *mut u64) -> i32;
/// `loopd_host_api.timer_cancel`.
pub type loopd_timer_cancel_fn = unsafe extern "C" fn(*mut loopd_ctx, u64) -> i32;
/// `loopd_host_api.connect`.
pub type loopd_connect_fn = unsafe extern "C" fn(*mut loopd_ctx, *const c_char, *mut u64) -> i32;
/// `loopd_host_api.now_ms`.
pub type loopd_now_ms_fn = unsafe extern "C" fn(*mut loopd_ctx) -> u64;
/// `loopd_host_api.output_queued`.
pub type loopd_output_queued_fn = unsafe extern "C" fn(*mut loopd_ctx, u64, *mut usize) -> i32;
/// `loopd_host_api.status_str`.
pub type loopd_status_str_fn = unsafe extern "C" fn(i32) -> *const c_char;
/// `loopd_host_api.log_to` (since 1.1).
pub type loopd_log_to_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u32, *const c_char, *const c_char, usize);
/// `loopd_host_api.send_file` (since 1.2).
pub type loopd_send_file_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u64, i32, u64, u64, *mut u64) -> i32;
/// `loopd_host_api.pause_read`, `resume_read`, `shutdown_write` (since 1.3).
pub type loopd_conn_op_fn = unsafe extern "C" fn(*mut loopd_ctx, u64) -> i32;
/// `loopd_host_api.connect_with` (since 1.3).
pub type loopd_connect_with_fn = unsafe extern "C" fn(
    *mut loopd_ctx,
    *const c_char,
    *const loopd_connect_options,
    *mut u64,
) -> i32;
/// `loopd_host_api.post` (since 1.3).
pub type loopd_post_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *const c_char, *const u8, usize) -> i32;
/// `loopd_host_api.watch_fd` (since 1.3).
pub type loopd_watch_fd_fn = unsafe extern "C" fn(*mut loopd_ctx, i32, u32, u64, *mut u64) -> i32;
/// `loopd_host_api.watch_modify` (since 1.3).
pub type loopd_watch_modify_fn = unsafe extern "C" fn(*mut loopd_ctx, u64, u32) -> i32;
/// `loopd_host_api.watch_remove` (since 1.3).
pub type loopd_watch_remove_fn = unsafe extern "C" fn(*mut loopd_ctx, u64) -> i32;
/// `loopd_host_api.timer_repeat` (since 1.3).
pub type loopd_timer_repeat_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u64, u64, u64, *mut u64) -> i32;
/// `loopd_host_api.post_siblings` (since 1.4).
pub type loopd_post_siblings_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *const u8, usize, *mut u32) -> i32;
/// `loopd_host_api.worker_info` (since 1.4).
pub type loopd_worker_info_fn = unsafe extern "C" fn(*mut loopd_ctx, *mut u32, *mut u32) -> i32;
/// `loopd_host_api.metric_declare` (since 1.4).
pub type loopd_metric_declare_fn = unsafe extern "C" fn(
    *mut loopd_ctx,
    u32,
    *const c_char,
    *const c_char,
    *const *const c_char,
    u32,
    *const f64,
    u32,
    *mut u64,
) -> i32;
/// `loopd_host_api.metric_series` (since 1.4).
pub type loopd_metric_series_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u64, *const *const c_char, u32, *mut u64) -> i32;
/// `loopd_host_api.metric_update` (since 1.4).
pub type loopd_metric_update_fn = unsafe extern "C" fn(*mut loopd_ctx, u64, u32, f64) -> i32;
/// `loopd_host_api.stats_json` (since 1.4).
pub type loopd_stats_json_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut u8, usize, *mut usize) -> i32;
/// `loopd_host_api.peer_subject` and `peer_certificate` (since 1.4).
pub type loopd_peer_cert_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u64, *mut u8, usize, *mut usize) -> i32;

/// `loopd_host_api.send_datagrams` (since 1.4).
pub type loopd_send_datagrams_fn =
    unsafe extern "C" fn(*mut loopd_ctx, u64, *mut loopd_datagram, usize, *mut usize) -> i32;

/// Options for `connect_with` (1.3). Extensible; a zero field means "what
/// the instance has".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_connect_options {
    /// `size_of::<loopd_connect_options>()` as the caller knows it.
    pub struct_size: u32,
    /// `LOOPD_FRAMING_*`; `LOOPD_FRAMING_DEFAULT` = the instance's framing.
    pub framing: u32,
    /// Largest frame; 0 = the instance's `max_frame`.
    pub max_frame: u64,
    /// Output queue high watermark; 0 = the instance's.
    pub output_high_watermark: u64,
    /// Output queue low watermark; 0 = the instance's.
    pub output_low_watermark: u64,
    /// `LOOPD_CONNECT_*` (since 1.4); 0 = none.
    pub flags: u32,
    /// Always 0.
    pub reserved: u32,
    /// `tls://` only (since 1.4): the DNS name the server's certificate must
    /// carry, also sent as SNI; NULL = the URL's IP address.
    pub server_name: *const c_char,
}

impl Default for loopd_connect_options {
    fn default() -> loopd_connect_options {
        loopd_connect_options {
            struct_size: core::mem::size_of::<loopd_connect_options>() as u32,
            framing: LOOPD_FRAMING_DEFAULT,
            max_frame: 0,
            output_high_watermark: 0,
            output_low_watermark: 0,
            flags: 0,
            reserved: 0,
            server_name: core::ptr::null(),
        }
    }
}

/// `loopd_connect_options.flags` (1.4): keep reading the connection while
/// its own output queue is at its high watermark.
pub const LOOPD_CONNECT_KEEP_READING: u32 = 1;

/// Functions the host implements. See `loopd.h` for each contract.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_host_api {
    /// `size_of::<loopd_host_api>()` as the host knows it.
    pub struct_size: u32,
    /// The host's ABI major.
    pub abi_major: u32,
    /// The host's ABI minor.
    pub abi_minor: u32,
    /// Always 0.
    pub reserved: u32,
    /// loopd's version, NUL-terminated, static.
    pub version: *const c_char,
    /// Log through loopd's logger.
    pub log: Option<loopd_log_fn>,
    /// Queue bytes for a connection.
    pub send: Option<loopd_send_fn>,
    /// Queue several byte ranges as one message.
    pub sendv: Option<loopd_sendv_fn>,
    /// Close a connection.
    pub close: Option<loopd_close_fn>,
    /// Send one datagram.
    pub send_datagram: Option<loopd_send_datagram_fn>,
    /// Arm a one-shot timer.
    pub timer_set: Option<loopd_timer_set_fn>,
    /// Cancel a timer.
    pub timer_cancel: Option<loopd_timer_cancel_fn>,
    /// Start an outbound connection.
    pub connect: Option<loopd_connect_fn>,
    /// Monotonic milliseconds.
    pub now_ms: Option<loopd_now_ms_fn>,
    /// Bytes waiting in a connection's output queue.
    pub output_queued: Option<loopd_output_queued_fn>,
    /// Describe a status code.
    pub status_str: Option<loopd_status_str_fn>,
    /// Log under an explicit target (since 1.1).
    pub log_to: Option<loopd_log_to_fn>,
    /// Write part of a file to a connection with sendfile(2) (since 1.2).
    pub send_file: Option<loopd_send_file_fn>,
    /// Stop reading a connection (since 1.3).
    pub pause_read: Option<loopd_conn_op_fn>,
    /// Read a paused connection again (since 1.3).
    pub resume_read: Option<loopd_conn_op_fn>,
    /// Half-close: shut down the sending side once the queue is flushed (since 1.3).
    pub shutdown_write: Option<loopd_conn_op_fn>,
    /// `connect` with per-connection options (since 1.3).
    pub connect_with: Option<loopd_connect_with_fn>,
    /// Post a message to a handler instance by name (since 1.3).
    pub post: Option<loopd_post_fn>,
    /// Watch a descriptor the handler owns for readiness (since 1.3).
    pub watch_fd: Option<loopd_watch_fd_fn>,
    /// Change what a watch waits for (since 1.3).
    pub watch_modify: Option<loopd_watch_modify_fn>,
    /// Stop watching a descriptor (since 1.3).
    pub watch_remove: Option<loopd_watch_remove_fn>,
    /// Arm a repeating timer (since 1.3).
    pub timer_repeat: Option<loopd_timer_repeat_fn>,
    /// Post to this instance's siblings on the other workers (since 1.4).
    pub post_siblings: Option<loopd_post_siblings_fn>,
    /// This runtime's worker index and the number of workers (since 1.4).
    pub worker_info: Option<loopd_worker_info_fn>,
    /// The process's counters as JSON text (since 1.4).
    pub stats_json: Option<loopd_stats_json_fn>,
    /// Declare a counter, gauge or histogram, in `create` (since 1.4).
    pub metric_declare: Option<loopd_metric_declare_fn>,
    /// The series of a metric for a set of label values (since 1.4).
    pub metric_series: Option<loopd_metric_series_fn>,
    /// Add to, set or observe into a series (since 1.4).
    pub metric_update: Option<loopd_metric_update_fn>,
    /// The subject of a TLS connection's peer certificate (since 1.4).
    pub peer_subject: Option<loopd_peer_cert_fn>,
    /// A TLS connection's peer certificate, DER (since 1.4).
    pub peer_certificate: Option<loopd_peer_cert_fn>,
    /// Several datagrams from one socket at once (since 1.4).
    pub send_datagrams: Option<loopd_send_datagrams_fn>,
}

// SAFETY: the host table is immutable static data (function pointers and a
// pointer to a static string); sharing it between threads is sound.
unsafe impl Sync for loopd_host_api {}
// SAFETY: as above; it holds no thread-bound state.
unsafe impl Send for loopd_host_api {}

/// `loopd_vtable.create`.
pub type loopd_create_fn = unsafe extern "C" fn(
    *const loopd_host_api,
    *mut loopd_ctx,
    *const c_char,
    *const c_char,
    *mut *mut c_void,
    *mut c_char,
    usize,
) -> i32;
/// `loopd_vtable.destroy`.
pub type loopd_destroy_fn = unsafe extern "C" fn(*mut loopd_ctx, *mut c_void);
/// `loopd_vtable.on_open`.
pub type loopd_on_open_fn = unsafe extern "C" fn(
    *mut loopd_ctx,
    *mut c_void,
    u64,
    *const loopd_conn_info,
    *mut *mut c_void,
) -> i32;
/// `loopd_vtable.on_data`.
pub type loopd_on_data_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *mut c_void, *const u8, usize) -> i32;
/// `loopd_vtable.on_eof`.
pub type loopd_on_eof_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *mut c_void) -> i32;
/// `loopd_vtable.on_writable`.
pub type loopd_on_writable_fn = unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *mut c_void);
/// `loopd_vtable.on_close`.
pub type loopd_on_close_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *mut c_void, i32);
/// `loopd_vtable.on_datagram`.
pub type loopd_on_datagram_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *const loopd_addr, *const u8, usize);
/// `loopd_vtable.on_timer`.
pub type loopd_on_timer_fn = unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, u64);
/// `loopd_vtable.on_shutdown`.
pub type loopd_on_shutdown_fn = unsafe extern "C" fn(*mut loopd_ctx, *mut c_void);
/// `loopd_vtable.on_oversize` (since 1.1).
pub type loopd_on_oversize_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *mut c_void, u64, u64) -> i32;
/// `loopd_vtable.on_partial` (since 1.1).
pub type loopd_on_partial_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *mut c_void, *const u8, usize);
/// `loopd_vtable.on_listen` (since 1.1).
pub type loopd_on_listen_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *const loopd_listen_info);
/// `loopd_vtable.on_message` (since 1.3).
pub type loopd_on_message_fn = unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, *const u8, usize);
/// `loopd_vtable.on_fd` (since 1.3).
pub type loopd_on_fd_fn = unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, u64, u32);
/// `loopd_vtable.on_datagrams` (since 1.4).
pub type loopd_on_datagrams_fn =
    unsafe extern "C" fn(*mut loopd_ctx, *mut c_void, u64, *const loopd_datagram, usize);

/// Hooks the handler implements; `None` means "not interested".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_vtable {
    /// `size_of::<loopd_vtable>()` as the plugin knows it.
    pub struct_size: u32,
    /// Always 0.
    pub reserved: u32,
    /// Create an instance.
    pub create: Option<loopd_create_fn>,
    /// Free an instance.
    pub destroy: Option<loopd_destroy_fn>,
    /// A connection opened.
    pub on_open: Option<loopd_on_open_fn>,
    /// One frame arrived.
    pub on_data: Option<loopd_on_data_fn>,
    /// The peer stopped sending.
    pub on_eof: Option<loopd_on_eof_fn>,
    /// The output queue drained after `AGAIN`.
    pub on_writable: Option<loopd_on_writable_fn>,
    /// The connection is gone.
    pub on_close: Option<loopd_on_close_fn>,
    /// A datagram arrived.
    pub on_datagram: Option<loopd_on_datagram_fn>,
    /// A timer fired.
    pub on_timer: Option<loopd_on_timer_fn>,
    /// loopd is shutting down.
    pub on_shutdown: Option<loopd_on_shutdown_fn>,
    /// A listener is open (since 1.1).
    pub on_listen: Option<loopd_on_listen_fn>,
    /// A frame over `max_frame` is arriving (since 1.1).
    pub on_oversize: Option<loopd_on_oversize_fn>,
    /// A last line without its `\n` at EOF (since 1.1).
    pub on_partial: Option<loopd_on_partial_fn>,
    /// A message posted to the instance (since 1.3).
    pub on_message: Option<loopd_on_message_fn>,
    /// A watched descriptor is ready (since 1.3).
    pub on_fd: Option<loopd_on_fd_fn>,
    /// Several datagrams arrived, instead of `on_datagram` (since 1.4).
    pub on_datagrams: Option<loopd_on_datagrams_fn>,
}

impl loopd_vtable {
    /// A table of the current size with every hook `None`.
    pub const EMPTY: loopd_vtable = loopd_vtable {
        struct_size: core::mem::size_of::<loopd_vtable>() as u32,
        reserved: 0,
        create: None,
        destroy: None,
        on_open: None,
        on_data: None,
        on_eof: None,
        on_writable: None,
        on_close: None,
        on_datagram: None,
        on_timer: None,
        on_shutdown: None,
        on_listen: None,
        on_oversize: None,
        on_partial: None,
        on_message: None,
        on_fd: None,
        on_datagrams: None,
    };
}

/// What `loopd_plugin_entry_v1` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct loopd_plugin_info {
    /// `size_of::<loopd_plugin_info>()` as the plugin knows it.
    pub struct_size: u32,
    /// ABI major the plugin was built for.
    pub abi_major: u32,
    /// ABI minor the plugin was built for.
    pub abi_minor: u32,
    /// Oldest host minor the plugin works with.
    pub min_host_minor: u32,
    /// Plugin name, NUL-terminated.
    pub name: *const c_char,
    /// Plugin version, NUL-terminated.
    pub version: *const c_char,
    /// `LOOPD_FRAMING_*` the plugin prefers.
    pub default_framing: u32,
    /// Always 0.
    pub reserved: u32,
    /// The hooks; never NULL.
    pub vtable: *const loopd_vtable,
    /// The ALPN protocols of its `tls://` listeners, comma-separated and
    /// NUL-terminated, most preferred first; NULL = none (since 1.4).
    pub alpn: *const c_char,
    /// The framings the handler works with, as [`LOOPD_FRAMING_BIT`]s ORed
    /// together; 0 = any (since 1.5). loopd refuses a handler entry whose
    /// framing is not one of them.
    pub framings: u32,
    /// Always 0.
    pub reserved2: u32,
}

// SAFETY: plugin info is immutable static data (pointers to static strings
// and a static vtable); sharing it between threads is sound.
unsafe impl Sync for loopd_plugin_info {}
// SAFETY: as above.
unsafe impl Send for loopd_plugin_info {}

/// The entry point's type: `loopd_plugin_entry_v1`.
pub type loopd_plugin_entry_v1_fn =
    unsafe extern "C" fn(host: *const loopd_host_api) -> *const loopd_plugin_info;

/// Size of the v1.0 `loopd_vtable` (up to and including `on_shutdown`); a
/// plugin's table must be at least this big. Fixed: later minors append.
pub const LOOPD_VTABLE_V1_0_SIZE: usize = core::mem::offset_of!(loopd_vtable, on_shutdown)
    + core::mem::size_of::<Option<loopd_on_shutdown_fn>>();
/// Size of the v1.0 `loopd_plugin_info` (up to and including `vtable`); a
/// plugin's info must be at least this big. Fixed: later minors append.
pub const LOOPD_PLUGIN_INFO_V1_0_SIZE: usize =
    core::mem::offset_of!(loopd_plugin_info, vtable) + core::mem::size_of::<*const loopd_vtable>();
/// Size of the v1.0 `loopd_host_api` (up to and including `status_str`).
pub const LOOPD_HOST_API_V1_0_SIZE: usize = core::mem::offset_of!(loopd_host_api, status_str)
    + core::mem::size_of::<Option<loopd_status_str_fn>>();
/// Size of the v1.0 `loopd_conn_info` (up to and including `endpoint`).
pub const LOOPD_CONN_INFO_V1_0_SIZE: usize =
    core::mem::offset_of!(loopd_conn_info, endpoint) + core::mem::size_of::<*const c_char>();

/// A static description of a status code, as `status_str` returns it.
pub fn status_str(status: i32) -> &'static str {
    // The text is ASCII, so this never fails.
    status_cstr(status).to_str().unwrap_or("unknown status")
}

/// [`status_str`] as a NUL-terminated C string: what the host's
/// `status_str` function returns.
pub fn status_cstr(status: i32) -> &'static core::ffi::CStr {
    match status {
        LOOPD_OK => c"ok",
        LOOPD_ERR_AGAIN => c"output queue full, try again after on_writable",
        LOOPD_ERR_NO_SUCH_CONN => c"no such connection",
        LOOPD_ERR_CLOSED => c"connection is closing",
        LOOPD_ERR_INVALID => c"invalid argument",
        LOOPD_ERR_UNSUPPORTED => c"operation not supported",
        LOOPD_ERR_LIMIT => c"limit reached",
        LOOPD_ERR_IO => c"I/O error",
        LOOPD_ERR_WRONG_THREAD => c"host function called outside a hook or from another thread",
        LOOPD_ERR_NO_SUCH_TIMER => c"no such timer",
        LOOPD_ERR_HANDLER => c"handler failed",
        LOOPD_ERR_NO_SUCH_INSTANCE => c"no such handler instance",
        LOOPD_ERR_FULL => c"mailbox full, try again later",
        _ => c"unknown status",
    }
}

/// A static description of a close reason.
pub fn reason_str(reason: i32) -> &'static str {
    match reason {
        LOOPD_REASON_PEER => "closed by peer",
        LOOPD_REASON_LOCAL => "closed by handler",
        LOOPD_REASON_ERROR => "I/O error",
        LOOPD_REASON_FRAME_TOO_BIG => "frame too big",
        LOOPD_REASON_HANDLER => "handler failed",
        LOOPD_REASON_SHUTDOWN => "shutdown",
        LOOPD_REASON_CONNECT_FAILED => "connect failed",
        LOOPD_REASON_TIMEOUT => "flush timed out",
        LOOPD_REASON_IDLE => "idle timeout",
        LOOPD_REASON_LIMIT => "over a loopd limit",
        _ => "unknown reason",
    }
}

impl loopd_addr {
    /// The ABI form of a socket address.
    pub fn from_socket_addr(addr: std::net::SocketAddr) -> loopd_addr {
        let mut out = loopd_addr {
            port: addr.port(),
            ..loopd_addr::default()
        };
        match addr {
            std::net::SocketAddr::V4(v4) => {
                out.family = LOOPD_AF_INET;
                out.ip[..4].copy_from_slice(&v4.ip().octets());
            }
            std::net::SocketAddr::V6(v6) => {
                out.family = LOOPD_AF_INET6;
                out.scope_id = v6.scope_id();
                out.ip = v6.ip().octets();
            }
        }
        out
    }

    /// The address of a Unix-domain peer (no fields are used).
    pub fn unix() -> loopd_addr {
        loopd_addr {
            family: LOOPD_AF_UNIX,
            ..loopd_addr::default()
        }
    }

    /// The socket address, for `LOOPD_AF_INET` and `LOOPD_AF_INET6`; `None` otherwise.
    pub fn to_socket_addr(&self) -> Option<std::net::SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
        match self.family {
            LOOPD_AF_INET => {
                let ip = Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3]);
                Some(SocketAddrV4::new(ip, self.port).into())
            }
            LOOPD_AF_INET6 => {
                let ip = Ipv6Addr::from(self.ip);
                Some(SocketAddrV6::new(ip, self.port, 0, self.scope_id).into())
            }
            _ => None,
        }
    }
}
