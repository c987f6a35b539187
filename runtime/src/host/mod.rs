//! The host side of the ABI: the `loopd_host_api` table and its functions.
//!
//! Each function is a thin trampoline: check the context and the thread,
//! borrow the loop state, convert pointers, and call a safe method of the
//! source it concerns (a connection, a datagram socket) or of the timers.
//! A host function never runs a hook; what it causes is queued.
//! Nothing here unwinds into the caller: a panic in loopd's own code becomes
//! `LOOPD_ERR_IO` and is logged.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use loopd_handler_api::abi::{self, loopd_addr, loopd_bytes, loopd_ctx, loopd_host_api};

use crate::core::{Core, Shared};
use crate::instance::InstanceId;
use crate::mailbox::{PostError, Postbox};
use crate::source::stream::{self, Conn, ConnOptions};
use crate::source::{datagram, watch};
use crate::timer::{self, TimerKind};

mod metrics;
use metrics::{host_metric_declare, host_metric_series, host_metric_update, host_stats_json};

/// Most pending timers per runtime; `timer_set` refuses beyond.
const MAX_TIMERS: usize = 1 << 20;

/// What `loopd_ctx *` points to: one per handler instance, owned by the runtime.
#[derive(Debug)]
pub(crate) struct HostCtx {
    pub(crate) core: *const RefCell<Core>,
    pub(crate) instance: InstanceId,
    /// `loopd::handler::<name>`, the log target of this instance.
    pub(crate) log_target: String,
    /// The instance's name (the target of `post(NULL)`).
    pub(crate) name: String,
    /// The runtime's mailboxes: `post` works from any thread.
    pub(crate) postbox: std::sync::Arc<Postbox>,
    /// Which worker this instance lives on, when there are several.
    pub(crate) worker: Option<crate::workers::WorkerSlot>,
    /// Every worker's stats snapshots, for `stats_json`.
    pub(crate) stats_board: std::sync::Arc<crate::stats::StatsBoard>,
}

impl HostCtx {
    pub(crate) fn as_raw(&self) -> *mut loopd_ctx {
        (self as *const HostCtx).cast_mut().cast()
    }
}

thread_local! {
    /// The runtime whose hooks are running on this thread, if any.
    static ACTIVE: Cell<*const RefCell<Core>> = const { Cell::new(std::ptr::null()) };
}

/// Marks a runtime as the one running hooks on this thread, until dropped.
#[derive(Debug)]
pub(crate) struct ActiveGuard(*const RefCell<Core>);

impl ActiveGuard {
    pub(crate) fn enter(core: &RefCell<Core>) -> ActiveGuard {
        ActiveGuard(ACTIVE.with(|a| a.replace(core)))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Runs `f` on the loop state of the instance behind `ctx`, or returns the
/// status for a call made at the wrong time or place.
///
/// # Safety
/// `ctx` must be NULL or a context the runtime handed out that is still alive.
unsafe fn with_core(ctx: *mut loopd_ctx, f: impl FnOnce(&mut Core, InstanceId) -> i32) -> i32 {
    if ctx.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: per the contract, a non-NULL ctx is a live HostCtx; its fields are immutable.
    let hc = unsafe { &*ctx.cast::<HostCtx>() };
    if ACTIVE.with(|a| a.get()) != hc.core {
        return abi::LOOPD_ERR_WRONG_THREAD;
    }
    // SAFETY: ACTIVE equals this core only on the loop thread while the runtime is alive.
    let cell = unsafe { &*hc.core };
    let Ok(mut core) = cell.try_borrow_mut() else {
        return abi::LOOPD_ERR_WRONG_THREAD;
    };
    match catch_unwind(AssertUnwindSafe(|| f(&mut core, hc.instance))) {
        Ok(status) => status,
        Err(_) => {
            log::error!(
                "internal error in a host function (a bug in loopd); see the panic message above"
            );
            abi::LOOPD_ERR_IO
        }
    }
}

/// Runs `f` on connection `id` of the instance behind `ctx`.
///
/// # Safety
/// As [`with_core`].
unsafe fn with_conn(
    ctx: *mut loopd_ctx,
    id: u64,
    f: impl FnOnce(&mut Conn, &mut Shared) -> i32,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_core(ctx, |core, inst| match core.owned_conn(inst, id) {
            Ok((c, sh)) => f(c, sh),
            Err(status) => status,
        })
    }
}

/// # Safety
/// `ptr` must be valid for `len` bytes, or `len` must be 0.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        Some(&[])
    } else if ptr.is_null() {
        None
    } else {
        // SAFETY: the caller lends `len` readable bytes at `ptr` for the call.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

unsafe extern "C" fn host_log(ctx: *mut loopd_ctx, level: u32, msg: *const c_char, len: usize) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: a non-NULL ctx is a live HostCtx; its fields are immutable.
    let hc = unsafe { &*ctx.cast::<HostCtx>() };
    // SAFETY: the caller lends `len` bytes at `msg` for the call.
    let Some(text) = (unsafe { bytes(msg.cast(), len) }) else {
        return;
    };
    let level = log_level(level);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        log::log!(target: hc.log_target.as_str(), level, "{}", String::from_utf8_lossy(text));
    }));
}

unsafe extern "C" fn host_log_to(
    ctx: *mut loopd_ctx,
    level: u32,
    target: *const c_char,
    msg: *const c_char,
    len: usize,
) {
    if ctx.is_null() {
        return;
    }
    if target.is_null() {
        // SAFETY: forwarded: the caller's pointers are valid for the call.
        return unsafe { host_log(ctx, level, msg, len) };
    }
    // SAFETY: the caller lends a NUL-terminated target for the call.
    let target = unsafe { CStr::from_ptr(target) }.to_string_lossy();
    // SAFETY: the caller lends `len` bytes at `msg` for the call.
    let Some(text) = (unsafe { bytes(msg.cast(), len) }) else {
        return;
    };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        log::log!(target: &target, log_level(level), "{}", String::from_utf8_lossy(text));
    }));
}

fn log_level(level: u32) -> log::Level {
    match level {
        abi::LOOPD_LOG_ERROR => log::Level::Error,
        abi::LOOPD_LOG_WARN => log::Level::Warn,
        abi::LOOPD_LOG_INFO => log::Level::Info,
        abi::LOOPD_LOG_DEBUG => log::Level::Debug,
        _ => log::Level::Trace,
    }
}

unsafe extern "C" fn host_send(ctx: *mut loopd_ctx, conn: u64, data: *const u8, len: usize) -> i32 {
    // SAFETY: the caller lends `len` bytes at `data` for the call.
    let Some(data) = (unsafe { bytes(data, len) }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_conn(ctx, conn, |c, sh| c.send(conn, sh, &[data])) }
}

unsafe extern "C" fn host_sendv(
    ctx: *mut loopd_ctx,
    conn: u64,
    parts: *const loopd_bytes,
    count: usize,
) -> i32 {
    if count == 0 {
        // SAFETY: `ctx` comes from the runtime.
        return unsafe { with_conn(ctx, conn, |c, sh| c.send(conn, sh, &[])) };
    }
    if parts.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: the caller lends `count` parts for the call.
    let raw = unsafe { std::slice::from_raw_parts(parts, count) };
    // A few parts (the common case: header + payload) need no allocation.
    const INLINE: usize = 8;
    let mut inline: [&[u8]; INLINE] = [&[]; INLINE];
    let mut heap: Vec<&[u8]> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        // SAFETY: each part lends `len` bytes at `ptr` for the call.
        let Some(part) = (unsafe { bytes(p.ptr, p.len) }) else {
            return abi::LOOPD_ERR_INVALID;
        };
        if count <= INLINE {
            inline[i] = part;
        } else {
            heap.push(part);
        }
    }
    let slices: &[&[u8]] = if count <= INLINE {
        &inline[..count]
    } else {
        &heap
    };
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_conn(ctx, conn, |c, sh| c.send(conn, sh, slices)) }
}

unsafe extern "C" fn host_close(ctx: *mut loopd_ctx, conn: u64, mode: u32) -> i32 {
    if !matches!(
        mode,
        abi::LOOPD_CLOSE_FLUSH | abi::LOOPD_CLOSE_ABORT | abi::LOOPD_CLOSE_RESET
    ) {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_conn(ctx, conn, |c, sh| c.close(conn, sh, mode)) }
}

unsafe extern "C" fn host_send_datagram(
    ctx: *mut loopd_ctx,
    socket: u64,
    to: *const loopd_addr,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: the caller lends `to` for the call.
    let Some(to) = (unsafe { to.as_ref() }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    // SAFETY: the caller lends `len` bytes at `data` for the call.
    let Some(data) = (unsafe { bytes(data, len) }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| {
            datagram::send(core, inst, socket, to, data)
        })
    }
}

unsafe extern "C" fn host_send_datagrams(
    ctx: *mut loopd_ctx,
    socket: u64,
    msgs: *mut abi::loopd_datagram,
    count: usize,
    sent_out: *mut usize,
) -> i32 {
    let msgs = if count == 0 {
        &mut [][..]
    } else if msgs.is_null() {
        return abi::LOOPD_ERR_INVALID;
    } else {
        // SAFETY: the caller lends `count` datagrams at `msgs`, writable
        // (their statuses), for the call; each one's bytes too (checked
        // for NULL one by one).
        unsafe { std::slice::from_raw_parts_mut(msgs, count) }
    };
    let mut sent = 0;
    // SAFETY: `ctx` comes from the runtime.
    let status = unsafe {
        with_core(ctx, |core, inst| {
            let (n, status) = datagram::send_many(core, inst, socket, msgs);
            sent = n;
            status
        })
    };
    // SAFETY: the caller lends `sent_out` (or NULL) for the call.
    if let Some(out) = unsafe { sent_out.as_mut() } {
        *out = sent;
    }
    status
}

unsafe extern "C" fn host_timer_set(
    ctx: *mut loopd_ctx,
    delay_ms: u64,
    user_data: u64,
    out: *mut u64,
) -> i32 {
    if out.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| {
            match timer_set(core, inst, delay_ms, None, user_data) {
                Ok(id) => {
                    // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
                    *out = id;
                    abi::LOOPD_OK
                }
                Err(status) => status,
            }
        })
    }
}

unsafe extern "C" fn host_timer_cancel(ctx: *mut loopd_ctx, timer: u64) -> i32 {
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_core(ctx, |core, inst| timer_cancel(core, inst, timer)) }
}

fn timer_set(
    core: &mut Core,
    inst: InstanceId,
    delay_ms: u64,
    interval_ms: Option<u64>,
    user_data: u64,
) -> Result<u64, i32> {
    if core.shared.timers.len() >= MAX_TIMERS {
        return Err(abi::LOOPD_ERR_LIMIT);
    }
    let deadline = timer::deadline_after(std::time::Instant::now(), delay_ms);
    let kind = TimerKind::Handler {
        instance: inst,
        user_data,
    };
    let id = match interval_ms {
        None => core.shared.timers.set(deadline, kind),
        Some(ms) => core.shared.timers.set_repeating(
            deadline,
            std::time::Duration::from_millis(ms.min(timer::MAX_DELAY_MS)),
            kind,
        ),
    };
    if let Some(i) = core.instances.get(inst) {
        i.scope.counters.timers_set.add(1);
        i.scope.counters.timers_active.add(1);
    }
    Ok(id)
}

fn timer_cancel(core: &mut Core, inst: InstanceId, id: u64) -> i32 {
    match core.shared.timers.get(id) {
        Some(TimerKind::Handler {
            instance: owner, ..
        }) if owner == inst => {
            core.shared.timers.cancel(id);
            if let Some(i) = core.instances.get(inst) {
                i.scope.counters.timers_active.sub(1);
            }
            abi::LOOPD_OK
        }
        _ => abi::LOOPD_ERR_NO_SUCH_TIMER,
    }
}

unsafe extern "C" fn host_connect(ctx: *mut loopd_ctx, url: *const c_char, out: *mut u64) -> i32 {
    // SAFETY: forwarded: the caller's pointers are valid for the call.
    unsafe { host_connect_with(ctx, url, std::ptr::null(), out) }
}

/// What a `loopd_connect_options` asks for, or `None` if it is malformed.
///
/// # Safety
/// `raw.server_name` must be NULL or a NUL-terminated string valid for the
/// call.
unsafe fn connect_options(raw: &abi::loopd_connect_options) -> Option<ConnOptions> {
    let nonzero = |v: u64| usize::try_from(v).ok().filter(|&v| v > 0);
    let framing = match raw.framing {
        abi::LOOPD_FRAMING_DEFAULT => None,
        other => Some(crate::config::FramingKind::try_from(other).ok()?),
    };
    if raw.flags & !abi::LOOPD_CONNECT_KEEP_READING != 0 || raw.reserved != 0 {
        return None;
    }
    let server_name = if raw.server_name.is_null() {
        None
    } else {
        // SAFETY: per the contract, a NUL-terminated string lent for the call.
        let name = unsafe { CStr::from_ptr(raw.server_name) }.to_str().ok()?;
        Some(name.to_string())
    };
    Some(ConnOptions {
        server_name,
        framing,
        max_frame: nonzero(raw.max_frame),
        high_watermark: nonzero(raw.output_high_watermark),
        low_watermark: nonzero(raw.output_low_watermark),
        keep_reading: raw.flags & abi::LOOPD_CONNECT_KEEP_READING != 0,
    })
}

unsafe extern "C" fn host_connect_with(
    ctx: *mut loopd_ctx,
    url: *const c_char,
    opts: *const abi::loopd_connect_options,
    out: *mut u64,
) -> i32 {
    if url.is_null() || out.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: the caller lends a NUL-terminated string for the call.
    let Ok(url) = unsafe { CStr::from_ptr(url) }.to_str() else {
        return abi::LOOPD_ERR_INVALID;
    };
    let options = if opts.is_null() {
        ConnOptions::default()
    } else {
        // SAFETY: the caller lends the options for the call; only the
        // fields within its struct_size are read, the rest count as 0.
        let mut raw = unsafe { read_sized(opts) };
        // A struct_size that ends inside the pointer (a corrupt struct)
        // must not leave half of it to be read.
        // SAFETY: as above: struct_size comes first.
        let size = unsafe { opts.cast::<u32>().read_unaligned() } as usize;
        if size
            < std::mem::offset_of!(abi::loopd_connect_options, server_name)
                + std::mem::size_of::<*const c_char>()
        {
            raw.server_name = std::ptr::null();
        }
        // SAFETY: a non-NULL server_name came within struct_size from the
        // caller, who lends it for the call.
        match unsafe { connect_options(&raw) } {
            Some(o) => o,
            None => return abi::LOOPD_ERR_INVALID,
        }
    };
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| {
            match stream::connect(core, inst, url, options) {
                Ok(id) => {
                    // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
                    *out = id;
                    abi::LOOPD_OK
                }
                Err(status) => status,
            }
        })
    }
}

/// Copies an extensible struct the caller lends, reading no more than its
/// `struct_size` (its first field) says it has; the rest stays zero.
///
/// # Safety
/// `p` must point to a readable struct whose first field is a `u32`
/// `struct_size`, with at least that many readable bytes.
unsafe fn read_sized<T: Copy + Default>(p: *const T) -> T {
    let mut out = T::default();
    // SAFETY: per the contract, the first 4 bytes are struct_size.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: `p` has at least `n` readable bytes, `out` `n` writable ones.
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&mut out as *mut T).cast::<u8>(), n) };
    out
}

/// Copies `data` to the caller's buffer, the stats_json way: `*len_out`
/// gets its length; `LOOPD_OK` when it fit in `cap` bytes (copied),
/// `LOOPD_ERR_FULL` when it did not (nothing copied).
///
/// # Safety
/// `len_out` must be a valid out-pointer, `buf` valid for `cap` writable
/// bytes (it may be NULL only when `cap` is 0), neither overlapping `data`.
pub(super) unsafe fn copy_out(data: &[u8], buf: *mut u8, cap: usize, len_out: *mut usize) -> i32 {
    // SAFETY: per the contract.
    unsafe { *len_out = data.len() };
    if data.len() > cap {
        return abi::LOOPD_ERR_FULL;
    }
    if !data.is_empty() {
        // SAFETY: `buf` is non-NULL (cap >= len > 0) with `cap` writable
        // bytes, and does not overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
    }
    abi::LOOPD_OK
}

/// `peer_subject` and `peer_certificate`: what `pick` makes of the
/// connection's verified peer certificate, copied out.
///
/// # Safety
/// As [`with_conn`] and [`copy_out`].
unsafe fn peer_cert_out(
    ctx: *mut loopd_ctx,
    conn: u64,
    buf: *mut u8,
    cap: usize,
    len_out: *mut usize,
    pick: fn(&[u8]) -> Option<Vec<u8>>,
) -> i32 {
    if len_out.is_null() || (buf.is_null() && cap > 0) {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_conn(ctx, conn, |c, _| {
            let Some(der) = c.io.as_ref().and_then(|io| io.peer_certificate()) else {
                return abi::LOOPD_ERR_UNSUPPORTED;
            };
            match pick(der) {
                // SAFETY: the caller lends `buf` (cap bytes) and `len_out`
                // for the call; the certificate is ours.
                Some(out) => copy_out(&out, buf, cap, len_out),
                // A verified certificate the X.509 parser refuses
                // (stricter than the handshake's).
                None => abi::LOOPD_ERR_IO,
            }
        })
    }
}

unsafe extern "C" fn host_peer_subject(
    ctx: *mut loopd_ctx,
    conn: u64,
    buf: *mut u8,
    cap: usize,
    len_out: *mut usize,
) -> i32 {
    #[cfg(feature = "tls")]
    fn subject(der: &[u8]) -> Option<Vec<u8>> {
        crate::tls::subject(der).map(String::into_bytes)
    }
    #[cfg(not(feature = "tls"))]
    fn subject(_der: &[u8]) -> Option<Vec<u8>> {
        None
    }
    // SAFETY: forwarded: the caller's pointers are valid for the call.
    unsafe { peer_cert_out(ctx, conn, buf, cap, len_out, subject) }
}

unsafe extern "C" fn host_peer_certificate(
    ctx: *mut loopd_ctx,
    conn: u64,
    buf: *mut u8,
    cap: usize,
    len_out: *mut usize,
) -> i32 {
    // SAFETY: forwarded: the caller's pointers are valid for the call.
    unsafe { peer_cert_out(ctx, conn, buf, cap, len_out, |der| Some(der.to_vec())) }
}

unsafe extern "C" fn host_pause_read(ctx: *mut loopd_ctx, conn: u64) -> i32 {
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_conn(ctx, conn, |c, sh| c.pause_read(conn, sh)) }
}

unsafe extern "C" fn host_resume_read(ctx: *mut loopd_ctx, conn: u64) -> i32 {
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_conn(ctx, conn, |c, sh| c.resume_read(conn, sh)) }
}

unsafe extern "C" fn host_shutdown_write(ctx: *mut loopd_ctx, conn: u64) -> i32 {
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_conn(ctx, conn, |c, sh| c.shutdown_write(conn, sh)) }
}

unsafe extern "C" fn host_post(
    ctx: *mut loopd_ctx,
    instance: *const c_char,
    msg: *const u8,
    len: usize,
) -> i32 {
    if ctx.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: a non-NULL ctx is a live HostCtx; its fields are immutable
    // and the postbox is thread-safe, so any thread may post.
    let hc = unsafe { &*ctx.cast::<HostCtx>() };
    // SAFETY: the caller lends `len` bytes at `msg` for the call.
    let Some(msg) = (unsafe { bytes(msg, len) }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    let target = if instance.is_null() {
        hc.name.as_str()
    } else {
        // SAFETY: the caller lends a NUL-terminated string for the call.
        match unsafe { CStr::from_ptr(instance) }.to_str() {
            Ok(name) => name,
            Err(_) => return abi::LOOPD_ERR_NO_SUCH_INSTANCE,
        }
    };
    match hc.postbox.post(target, msg.to_vec()) {
        Ok(()) => abi::LOOPD_OK,
        Err(PostError::Full) => abi::LOOPD_ERR_FULL,
        Err(PostError::TooLarge) => abi::LOOPD_ERR_INVALID,
        Err(PostError::NoSuchInstance) => abi::LOOPD_ERR_NO_SUCH_INSTANCE,
        Err(_) => abi::LOOPD_ERR_CLOSED,
    }
}

unsafe extern "C" fn host_post_siblings(
    ctx: *mut loopd_ctx,
    msg: *const u8,
    len: usize,
    delivered_out: *mut u32,
) -> i32 {
    if ctx.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: a non-NULL ctx is a live HostCtx; its fields are immutable
    // and the sibling mailboxes are thread-safe, so any thread may post.
    let hc = unsafe { &*ctx.cast::<HostCtx>() };
    // SAFETY: the caller lends `len` bytes at `msg` for the call.
    let Some(msg) = (unsafe { bytes(msg, len) }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    let (delivered, full) = match &hc.worker {
        Some(w) => w.siblings.post(w.index, &hc.name, msg),
        None => (0, false),
    };
    if !delivered_out.is_null() {
        // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
        unsafe { *delivered_out = delivered };
    }
    if full {
        abi::LOOPD_ERR_FULL
    } else {
        abi::LOOPD_OK
    }
}

unsafe extern "C" fn host_worker_info(
    ctx: *mut loopd_ctx,
    index_out: *mut u32,
    count_out: *mut u32,
) -> i32 {
    if ctx.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: a non-NULL ctx is a live HostCtx; `worker` is immutable.
    let hc = unsafe { &*ctx.cast::<HostCtx>() };
    let (index, count) = hc.worker.as_ref().map_or((0, 1), |w| (w.index, w.count));
    if !index_out.is_null() {
        // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
        unsafe { *index_out = index as u32 };
    }
    if !count_out.is_null() {
        // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
        unsafe { *count_out = count as u32 };
    }
    abi::LOOPD_OK
}

unsafe extern "C" fn host_watch_fd(
    ctx: *mut loopd_ctx,
    fd: i32,
    interest: u32,
    user_data: u64,
    out: *mut u64,
) -> i32 {
    if out.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| {
            match watch::add(core, inst, fd, interest, user_data) {
                Ok(id) => {
                    // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
                    *out = id;
                    abi::LOOPD_OK
                }
                Err(status) => status,
            }
        })
    }
}

unsafe extern "C" fn host_watch_modify(ctx: *mut loopd_ctx, id: u64, interest: u32) -> i32 {
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_core(ctx, |core, inst| watch::modify(core, inst, id, interest)) }
}

unsafe extern "C" fn host_watch_remove(ctx: *mut loopd_ctx, id: u64) -> i32 {
    // SAFETY: `ctx` comes from the runtime.
    unsafe { with_core(ctx, |core, inst| watch::remove(core, inst, id)) }
}

unsafe extern "C" fn host_timer_repeat(
    ctx: *mut loopd_ctx,
    delay_ms: u64,
    interval_ms: u64,
    user_data: u64,
    out: *mut u64,
) -> i32 {
    if out.is_null() || interval_ms == 0 {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_core(ctx, |core, inst| {
            match timer_set(core, inst, delay_ms, Some(interval_ms), user_data) {
                Ok(id) => {
                    // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
                    *out = id;
                    abi::LOOPD_OK
                }
                Err(status) => status,
            }
        })
    }
}

unsafe extern "C" fn host_now_ms(ctx: *mut loopd_ctx) -> u64 {
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL ctx is a live HostCtx.
    let hc = unsafe { &*ctx.cast::<HostCtx>() };
    if ACTIVE.with(|a| a.get()) == hc.core {
        // SAFETY: on the loop thread while the runtime is alive (checked above).
        if let Ok(core) = unsafe { &*hc.core }.try_borrow() {
            return core.shared.now_ms();
        }
    }
    // Off the loop thread: the same clock, read without touching loop state.
    crate::process_start().elapsed().as_millis() as u64
}

unsafe extern "C" fn host_output_queued(ctx: *mut loopd_ctx, conn: u64, out: *mut usize) -> i32 {
    if out.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_conn(ctx, conn, |c, _| {
            // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
            *out = c.output_queued();
            abi::LOOPD_OK
        })
    }
}

unsafe extern "C" fn host_send_file(
    ctx: *mut loopd_ctx,
    conn: u64,
    fd: i32,
    offset: u64,
    len: u64,
    sent_out: *mut u64,
) -> i32 {
    if sent_out.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: `ctx` comes from the runtime.
    unsafe {
        with_conn(ctx, conn, |c, sh| {
            match c.send_file(conn, sh, fd, offset, len) {
                Ok(n) => {
                    // SAFETY: checked non-NULL; the caller gives a writable out-pointer.
                    *sent_out = n;
                    abi::LOOPD_OK
                }
                Err(status) => status,
            }
        })
    }
}

unsafe extern "C" fn host_status_str(status: i32) -> *const c_char {
    abi::status_cstr(status).as_ptr()
}

static VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("version contains NUL"),
    };

struct HostTable(loopd_host_api);
// SAFETY: the table is immutable: function pointers and a pointer to a static string.
unsafe impl Sync for HostTable {}

static HOST_API: HostTable = HostTable(loopd_host_api {
    struct_size: std::mem::size_of::<loopd_host_api>() as u32,
    abi_major: abi::LOOPD_ABI_MAJOR,
    abi_minor: abi::LOOPD_ABI_MINOR,
    reserved: 0,
    version: VERSION.as_ptr(),
    log: Some(host_log),
    send: Some(host_send),
    sendv: Some(host_sendv),
    close: Some(host_close),
    send_datagram: Some(host_send_datagram),
    send_datagrams: Some(host_send_datagrams),
    timer_set: Some(host_timer_set),
    timer_cancel: Some(host_timer_cancel),
    connect: Some(host_connect),
    now_ms: Some(host_now_ms),
    output_queued: Some(host_output_queued),
    status_str: Some(host_status_str),
    log_to: Some(host_log_to),
    send_file: Some(host_send_file),
    pause_read: Some(host_pause_read),
    resume_read: Some(host_resume_read),
    shutdown_write: Some(host_shutdown_write),
    connect_with: Some(host_connect_with),
    post: Some(host_post),
    watch_fd: Some(host_watch_fd),
    watch_modify: Some(host_watch_modify),
    watch_remove: Some(host_watch_remove),
    timer_repeat: Some(host_timer_repeat),
    post_siblings: Some(host_post_siblings),
    worker_info: Some(host_worker_info),
    stats_json: Some(host_stats_json),
    metric_declare: Some(host_metric_declare),
    metric_series: Some(host_metric_series),
    metric_update: Some(host_metric_update),
    peer_subject: Some(host_peer_subject),
    peer_certificate: Some(host_peer_certificate),
});

/// The host table every plugin receives. Static: valid for the whole process.
pub(crate) fn host_api() -> *const loopd_host_api {
    &HOST_API.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The context of a test instance `t` in `core`.
    fn test_ctx(core: &RefCell<Core>) -> HostCtx {
        let inst = crate::instance::test_instance(&mut core.borrow_mut(), "t", Default::default());
        HostCtx {
            core,
            instance: inst,
            log_target: "loopd::handler::t".into(),
            name: "t".into(),
            postbox: Postbox::new(core.borrow().shared.poll.waker()),
            worker: None,
            stats_board: Default::default(),
        }
    }

    /// A plugin built before `server_name` passes a shorter struct (1.3: 32
    /// bytes, early 1.4: 40), or a corrupt size that ends inside the
    /// pointer: whatever lies beyond its struct_size is never read.
    #[test]
    fn connect_options_shorter_than_server_name_never_read_it() {
        let core = RefCell::new(Core::new(Default::default()).unwrap());
        let hc = test_ctx(&core);
        let _g = ActiveGuard::enter(&core);
        for size in [32u32, 40, 44, 47, 48] {
            // Past the struct: garbage that must not be dereferenced. At
            // 48 bytes it is in the struct, so a real name is given.
            let o = abi::loopd_connect_options {
                struct_size: size,
                server_name: if size < 48 {
                    0x10 as *const std::ffi::c_char
                } else {
                    c"db.example".as_ptr()
                },
                ..Default::default()
            };
            let mut id = 0;
            // SAFETY: `o` and `id` are valid for the call; server_name is
            // only valid where the size covers it, which is the point.
            let st = unsafe {
                host_connect_with(hc.as_raw(), c"tcp://127.0.0.1:9".as_ptr(), &o, &mut id)
            };
            // A name read on a tcp:// URL is refused: only the full struct.
            if size < 48 {
                assert_ne!(st, abi::LOOPD_ERR_INVALID, "size {size}");
            } else {
                assert_eq!(st, abi::LOOPD_ERR_INVALID, "size {size}");
            }
        }
    }

    #[test]
    fn calls_outside_a_hook_are_refused() {
        let core = RefCell::new(Core::new(Default::default()).unwrap());
        let hc = test_ctx(&core);
        let mut id = 0;
        // SAFETY: hc is alive; no runtime is active on this thread.
        let status = unsafe { host_timer_set(hc.as_raw(), 1, 0, &mut id) };
        assert_eq!(status, abi::LOOPD_ERR_WRONG_THREAD);
        let _g = ActiveGuard::enter(&core);
        // SAFETY: as above, now active.
        let status = unsafe { host_timer_set(hc.as_raw(), 1, 0, &mut id) };
        assert_eq!(status, abi::LOOPD_OK);
        assert_ne!(id, 0);
        // SAFETY: as above.
        assert_eq!(
            unsafe { host_send(hc.as_raw(), 12345, std::ptr::null(), 0) },
            abi::LOOPD_ERR_NO_SUCH_CONN
        );
        // SAFETY: as above; a NULL pointer with a length is refused.
        assert_eq!(
            unsafe { host_send(hc.as_raw(), 12345, std::ptr::null(), 3) },
            abi::LOOPD_ERR_INVALID
        );
        // SAFETY: as above; a bad mode is refused before the id is looked up.
        assert_eq!(
            unsafe { host_close(hc.as_raw(), 12345, 99) },
            abi::LOOPD_ERR_INVALID
        );
        let core = core.borrow();
        let counters = &core.instances.get(hc.instance).unwrap().scope.counters;
        assert_eq!(counters.timers_set.get(), 1);
        assert_eq!(counters.timers_active.get(), 1);
    }
}
