//! The `extern "C"` trampolines that turn a [`Handler`] into a `loopd_vtable`.
//!
//! Each trampoline is thin: it converts pointers, then calls the handler
//! inside `catch_unwind`, so a panic never crosses the boundary. A panic in a
//! connection hook fails that connection; in `create`, that instance.
//!
//! `on_open` and `on_data` report a panic to the host by their return value
//! (the host then aborts the connection with `LOOPD_REASON_HANDLER`). The
//! hooks without a result (`on_writable`, `on_partial`) abort the connection
//! themselves through the host's `close`, and the handler's `on_close` then
//! gets [`CloseReason::Handler`] as well: a connection whose `on_writable`
//! panicked would otherwise stay open with nothing left to resume it.

use std::any::Any;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{
    self, loopd_conn_info, loopd_ctx, loopd_host_api, loopd_plugin_info, loopd_vtable,
};
use crate::types::{
    ConnId, ConnInfo, EofAction, FdEvents, Framing, Level, ListenInfo, Origin, OversizeAction,
    SocketId, TimerId, Transport, WatchId,
};
use crate::{CloseMode, CloseReason, Ctx, Handler};

/// What `create` allocates: the host table (copied) and the handler.
struct Instance<H> {
    host: &'static loopd_host_api,
    handler: H,
    /// Connections aborted because a hook without a result panicked: their
    /// `on_close` reports [`CloseReason::Handler`]. Each id leaves at its
    /// `on_close`, so this never holds more than the open connections.
    failed: Vec<u64>,
}

impl<H> Instance<H> {
    fn ctx(&self, raw: *mut loopd_ctx) -> Ctx {
        // SAFETY: `self.host` is 'static.
        unsafe { Ctx::from_raw(self.host, raw) }
    }

    /// After a panic in a connection hook that cannot report failure:
    /// aborts the connection, as a failed `on_data` does.
    fn fail_conn(&mut self, ctx: &Ctx, conn: u64) {
        let id = ConnId::from_raw(conn);
        if ctx.close(id, CloseMode::Abort).is_ok() && !self.failed.contains(&conn) {
            ctx.log(
                Level::Warn,
                format_args!("closing connection {id} after the panic"),
            );
            self.failed.push(conn);
        }
    }

    /// The reason to report for `conn`'s close: `Handler` if a panic
    /// aborted it.
    fn close_reason(&mut self, conn: u64, reason: i32) -> CloseReason {
        if let Some(at) = self.failed.iter().position(|&c| c == conn) {
            self.failed.swap_remove(at);
            return CloseReason::Handler;
        }
        CloseReason::from_raw(reason)
    }
}

/// The vtable for `H`. Every hook is present.
pub const fn vtable<H: Handler>() -> loopd_vtable {
    loopd_vtable {
        struct_size: std::mem::size_of::<loopd_vtable>() as u32,
        reserved: 0,
        create: Some(create::<H>),
        destroy: Some(destroy::<H>),
        on_open: Some(on_open::<H>),
        on_data: Some(on_data::<H>),
        on_eof: Some(on_eof::<H>),
        on_writable: Some(on_writable::<H>),
        on_close: Some(on_close::<H>),
        on_datagram: Some(on_datagram::<H>),
        on_timer: Some(on_timer::<H>),
        on_shutdown: Some(on_shutdown::<H>),
        on_listen: Some(on_listen::<H>),
        on_oversize: Some(on_oversize::<H>),
        on_partial: Some(on_partial::<H>),
        on_message: Some(on_message::<H>),
        on_fd: Some(on_fd::<H>),
    }
}

/// The plugin info for `H`, given its static vtable and NUL-terminated name and version.
pub const fn plugin_info<H: Handler>(
    vtable: &'static loopd_vtable,
    name: &'static str,
    version: &'static str,
) -> loopd_plugin_info {
    loopd_plugin_info {
        struct_size: std::mem::size_of::<loopd_plugin_info>() as u32,
        abi_major: abi::LOOPD_ABI_MAJOR,
        abi_minor: abi::LOOPD_ABI_MINOR,
        min_host_minor: H::MIN_HOST_MINOR,
        name: name.as_ptr().cast(),
        version: version.as_ptr().cast(),
        default_framing: H::FRAMING.to_raw(),
        reserved: 0,
        vtable,
    }
}

/// The body of `loopd_plugin_entry_v1`: refuse a host of another major.
///
/// # Safety
/// `host` must be NULL or point to a valid `loopd_host_api`.
pub unsafe fn entry(
    host: *const loopd_host_api,
    info: &'static loopd_plugin_info,
) -> *const loopd_plugin_info {
    // SAFETY: the caller guarantees `host` is NULL or valid; every version of
    // the table starts with struct_size and abi_major.
    match unsafe { host.as_ref() } {
        Some(h) if h.abi_major == abi::LOOPD_ABI_MAJOR => {
            install_panic_hook();
            info
        }
        _ => std::ptr::null(),
    }
}

/// Copies the host table, reading no more than the host says it has, into
/// memory that lives for the rest of the process: a [`Ctx`] a handler keeps
/// must not dangle. Copies are shared: an instance whose host table reads
/// the same as an earlier one's gets that copy, so a program that creates
/// and destroys instances (or whole runtimes) again and again does not grow,
/// and the copies stay reachable (not leaked) until the process exits.
///
/// # Safety
/// `host` must point to a valid `loopd_host_api` of at least `struct_size` bytes.
unsafe fn copy_host(host: *const loopd_host_api) -> &'static loopd_host_api {
    // SAFETY: all-zero is valid for this struct: integers, a NULL pointer, `None`s.
    let mut out: loopd_host_api = unsafe { std::mem::zeroed() };
    // SAFETY: `host` is valid per the contract; we read its first field only.
    let size = unsafe { (*host).struct_size } as usize;
    let n = size.min(std::mem::size_of::<loopd_host_api>());
    // SAFETY: `host` has at least `size >= n` readable bytes; `out` has `n` writable ones.
    unsafe {
        std::ptr::copy_nonoverlapping(
            host.cast::<u8>(),
            (&mut out as *mut loopd_host_api).cast::<u8>(),
            n,
        )
    };
    shared_copy(out)
}

/// The process-wide copy of a host table that reads as `table`.
fn shared_copy(table: loopd_host_api) -> &'static loopd_host_api {
    /// Distinct tables kept; more (a host that builds a table per instance)
    /// are still copied, one each, never freed.
    const MAX_SHARED: usize = 16;
    static COPIES: std::sync::Mutex<Vec<&'static loopd_host_api>> =
        std::sync::Mutex::new(Vec::new());
    let bytes = |t: &loopd_host_api| -> [u8; std::mem::size_of::<loopd_host_api>()] {
        // SAFETY: the struct is plain integers and pointers with no padding
        // (checked against loopd.h by tests/abi_layout.rs), so every byte
        // is initialised.
        unsafe { std::mem::transmute_copy(t) }
    };
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&copy) = copies.iter().find(|c| bytes(c) == bytes(&table)) {
        return copy;
    }
    let copy: &'static loopd_host_api = Box::leak(Box::new(table));
    if copies.len() < MAX_SHARED {
        copies.push(copy);
    }
    copy
}

/// The bytes a host lends a hook.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes for `'a` (or `len` 0).
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

thread_local! {
    /// Inside a hook this SDK guards: a panic there is caught and reported
    /// through loopd's log, so the plugin's panic hook stays quiet.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the last guarded panic happened (`file:line:column`), and its
    /// backtrace when `RUST_BACKTRACE` asks for one.
    static PANIC_AT: std::cell::RefCell<Option<Panicked>> = const { std::cell::RefCell::new(None) };
}

/// In a plugin (called from its entry point, so never for a handler linked
/// into a program, whose panic hook is the program's): a panic the SDK
/// catches is not printed by the plugin's Rust runtime straight to stderr,
/// where it would bypass loopd's log (which never blocks the loop, and
/// keeps lines whole) and could block the loop on a stderr nobody reads;
/// its location (and backtrace, with `RUST_BACKTRACE=1`) goes into the
/// log line instead. Any other panic (in a thread of the handler's own)
/// goes to the hook that was there before.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                return previous(info);
            }
            let trace = std::backtrace::Backtrace::capture();
            let panicked = Panicked {
                at: info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
                trace: (trace.status() == std::backtrace::BacktraceStatus::Captured)
                    .then(|| trace.to_string()),
            };
            PANIC_AT.with(|p| *p.borrow_mut() = Some(panicked));
        }));
    });
}

/// What the panic hook recorded about a guarded panic.
#[derive(Debug, Default)]
struct Panicked {
    /// `file:line:column`.
    at: Option<String>,
    trace: Option<String>,
}

impl std::fmt::Display for Panicked {
    /// ` (at FILE:LINE:COL)`, then the backtrace on lines of its own.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(at) = &self.at {
            write!(f, " (at {at})")?;
        }
        if let Some(trace) = &self.trace {
            write!(f, "\nstack backtrace:\n{}", trace.trim_end())?;
        }
        Ok(())
    }
}

/// Runs `f` under `catch_unwind`, as a guarded hook; a panic becomes its
/// message, and where it happened when the panic hook recorded it.
fn catch<R>(f: impl FnOnce() -> R) -> Result<R, (String, Panicked)> {
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.map_err(|payload| {
        let at = PANIC_AT.with(|p| p.borrow_mut().take()).unwrap_or_default();
        (panic_message(&*payload).to_string(), at)
    })
}

/// Runs `f`, turning a panic into `fallback` and a log line through `ctx`.
fn guard<R>(ctx: &Ctx, hook: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch(f) {
        Ok(r) => r,
        Err((msg, at)) => {
            ctx.log(Level::Error, format_args!("panic in {hook}: {msg}{at}"));
            fallback
        }
    }
}

/// Writes `msg` into the host's error buffer, truncated on a char boundary, NUL-terminated.
fn write_err(err: *mut c_char, cap: usize, msg: &str) {
    if err.is_null() || cap == 0 {
        return;
    }
    let mut n = msg.len().min(cap - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the host gave `cap` writable bytes at `err`; we write `n + 1 <= cap`.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// serde_json appends " at line 1 column 9": meaningless to someone who wrote TOML.
fn config_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Parses the instance name and config, then builds the handler.
fn create_safe<H: Handler>(ctx: &Ctx, name: &str, config_json: &str) -> Result<H, String> {
    let json = if config_json.trim().is_empty() {
        "{}"
    } else {
        config_json
    };
    let config: H::Config =
        serde_json::from_str(json).map_err(|e| format!("invalid config: {}", config_error(&e)))?;
    H::create(ctx, name, config)
}

fn cstr<'a>(p: *const c_char) -> Result<&'a str, String> {
    if p.is_null() {
        return Ok("");
    }
    // SAFETY: the host passes NUL-terminated strings valid for the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| "string is not UTF-8".to_string())
}

/// Creates an instance of `H` with `make` instead of [`Handler::create`]:
/// the runtime calls this for a linked handler built from a value or a
/// closure (`loopd::HandlerSpec::with`), then uses the vtable of `H` for
/// every other hook, as for any instance. A panic in `make` is an error.
///
/// # Safety
/// `host` must point to a valid `loopd_host_api` of at least its
/// `struct_size` bytes, and `raw` must be the context the host gives this
/// instance; the pointer returned must be passed to the hooks of
/// [`vtable::<H>`](vtable) only.
pub unsafe fn adopt<H: Handler>(
    host: *const loopd_host_api,
    raw: *mut loopd_ctx,
    make: impl FnOnce(&Ctx) -> Result<H, String>,
) -> Result<*mut c_void, String> {
    if host.is_null() {
        return Err("host passed a NULL pointer to create".to_string());
    }
    // SAFETY: checked non-NULL; the host's table is valid for the process.
    let host = unsafe { copy_host(host) };
    // SAFETY: `host` is 'static; `raw` is the context the host gave this instance.
    let ctx = unsafe { Ctx::from_raw(host, raw) };
    let handler = catch(|| make(&ctx))
        .unwrap_or_else(|(msg, _)| Err(format!("panicked in create: {msg}")))?;
    let instance = Box::new(Instance {
        host,
        handler,
        failed: Vec::new(),
    });
    Ok(Box::into_raw(instance).cast())
}

unsafe extern "C" fn create<H: Handler>(
    host: *const loopd_host_api,
    raw: *mut loopd_ctx,
    name: *const c_char,
    config_json: *const c_char,
    instance_out: *mut *mut c_void,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    if host.is_null() || instance_out.is_null() {
        write_err(err, err_cap, "host passed a NULL pointer to create");
        return abi::LOOPD_ERR_INVALID;
    }
    // SAFETY: checked non-NULL; the host's table is valid for the process.
    let host = unsafe { copy_host(host) };
    // SAFETY: `host` is 'static; `raw` is the context the host gave this instance.
    let ctx = unsafe { Ctx::from_raw(host, raw) };
    let result = catch(|| {
        let name = cstr(name)?;
        let json = cstr(config_json)?;
        create_safe::<H>(&ctx, name, json)
    })
    .unwrap_or_else(|(msg, _)| Err(format!("panicked in create: {msg}")));
    match result {
        Ok(handler) => {
            let instance = Box::new(Instance {
                host,
                handler,
                failed: Vec::new(),
            });
            // SAFETY: checked non-NULL; the host gives a writable out-pointer.
            unsafe { *instance_out = Box::into_raw(instance).cast() };
            abi::LOOPD_OK
        }
        Err(msg) => {
            write_err(err, err_cap, &msg);
            abi::LOOPD_ERR_HANDLER
        }
    }
}

/// # Safety
/// `instance` must be NULL or a pointer `create::<H>` produced and that is still live.
unsafe fn instance<'a, H>(instance: *mut c_void) -> Option<&'a mut Instance<H>> {
    // SAFETY: per the contract, a non-NULL `instance` is our live Box, used by one hook at a time.
    unsafe { instance.cast::<Instance<H>>().as_mut() }
}

unsafe extern "C" fn destroy<H: Handler>(raw: *mut loopd_ctx, inst: *mut c_void) {
    if inst.is_null() {
        return;
    }
    // SAFETY: the host calls destroy once, last, with the pointer create produced.
    let boxed = unsafe { Box::from_raw(inst.cast::<Instance<H>>()) };
    let ctx = boxed.ctx(raw);
    guard(&ctx, "destroy", (), move || drop(boxed));
}

fn conn_info(info: &loopd_conn_info) -> ConnInfo<'_> {
    ConnInfo {
        transport: match info.transport {
            abi::LOOPD_TRANSPORT_TCP => Transport::Tcp,
            abi::LOOPD_TRANSPORT_UNIX => Transport::Unix,
            abi::LOOPD_TRANSPORT_UDP => Transport::Udp,
            other => Transport::Other(other),
        },
        origin: match info.origin {
            abi::LOOPD_ORIGIN_ACCEPTED => Origin::Accepted,
            abi::LOOPD_ORIGIN_CONNECTED => Origin::Connected,
            other => Origin::Other(other),
        },
        framing: Framing::from_raw(info.framing),
        peer: info.peer.to_socket_addr(),
        local: info.local.to_socket_addr(),
        endpoint: cstr(info.endpoint).unwrap_or(""),
    }
}

unsafe extern "C" fn on_open<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    conn: u64,
    info: *const loopd_conn_info,
    state_out: *mut *mut c_void,
) -> i32 {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    // SAFETY: the host passes a valid info (at least v1.0 size) for the call.
    let Some(info) = (unsafe { info.as_ref() }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    if state_out.is_null() {
        return abi::LOOPD_ERR_INVALID;
    }
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    let result = guard(&ctx, "on_open", Err(None), || {
        handler
            .on_open(&ctx, ConnId::from_raw(conn), &conn_info(info))
            .map_err(Some)
    });
    match result {
        Ok(state) => {
            // SAFETY: checked non-NULL; valid for writes for this call.
            unsafe { *state_out = Box::into_raw(Box::new(state)).cast() };
            abi::LOOPD_OK
        }
        Err(msg) => {
            if let Some(msg) = msg {
                ctx.log(
                    Level::Debug,
                    format_args!("refused connection {}: {msg}", ConnId::from_raw(conn)),
                );
            }
            abi::LOOPD_ERR_HANDLER
        }
    }
}

/// # Safety
/// `state` must be NULL or a pointer `on_open::<H>` stored that is still live.
unsafe fn conn_state<'a, H: Handler>(state: *mut c_void) -> Option<&'a mut H::Conn> {
    // SAFETY: per the contract, a non-NULL state is our live Box.
    unsafe { state.cast::<H::Conn>().as_mut() }
}

unsafe extern "C" fn on_data<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    conn: u64,
    state: *mut c_void,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: the host passes the pointers create and on_open produced.
    let (Some(inst), Some(state)) = (unsafe { instance::<H>(inst) }, unsafe {
        conn_state::<H>(state)
    }) else {
        return abi::LOOPD_ERR_INVALID;
    };
    // SAFETY: the host lends `len` readable bytes at `data` for this call.
    let bytes = unsafe { bytes(data, len) };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_data", abi::LOOPD_ERR_HANDLER, || {
        handler.on_data(&ctx, ConnId::from_raw(conn), state, bytes);
        abi::LOOPD_OK
    })
}

unsafe extern "C" fn on_eof<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    conn: u64,
    state: *mut c_void,
) -> i32 {
    // SAFETY: the host passes the pointers create and on_open produced.
    let (Some(inst), Some(state)) = (unsafe { instance::<H>(inst) }, unsafe {
        conn_state::<H>(state)
    }) else {
        return abi::LOOPD_EOF_CLOSE;
    };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_eof", abi::LOOPD_EOF_CLOSE, || {
        match handler.on_eof(&ctx, ConnId::from_raw(conn), state) {
            EofAction::Close => abi::LOOPD_EOF_CLOSE,
            EofAction::KeepOpen => abi::LOOPD_EOF_KEEP_OPEN,
        }
    })
}

unsafe extern "C" fn on_writable<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    conn: u64,
    state: *mut c_void,
) {
    // SAFETY: the host passes the pointers create and on_open produced.
    let (Some(inst), Some(state)) = (unsafe { instance::<H>(inst) }, unsafe {
        conn_state::<H>(state)
    }) else {
        return;
    };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    let ok = guard(&ctx, "on_writable", false, || {
        handler.on_writable(&ctx, ConnId::from_raw(conn), state);
        true
    });
    if !ok {
        inst.fail_conn(&ctx, conn);
    }
}

unsafe extern "C" fn on_close<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    conn: u64,
    state: *mut c_void,
    reason: i32,
) {
    // SAFETY: on_close is the last call for `state`: take back the Box on_open made.
    let state = if state.is_null() {
        H::Conn::default()
    } else {
        // SAFETY: non-NULL state is the Box on_open stored; on_close is its last use.
        *unsafe { Box::from_raw(state.cast::<H::Conn>()) }
    };
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    let ctx = inst.ctx(raw);
    let reason = inst.close_reason(conn, reason);
    let handler = &mut inst.handler;
    guard(&ctx, "on_close", (), move || {
        handler.on_close(&ctx, ConnId::from_raw(conn), state, reason)
    })
}

unsafe extern "C" fn on_datagram<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    socket: u64,
    peer: *const abi::loopd_addr,
    data: *const u8,
    len: usize,
) {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    // SAFETY: the host lends `peer` for this call.
    let peer = unsafe { peer.as_ref() }.and_then(|p| p.to_socket_addr());
    // SAFETY: the host lends `len` readable bytes at `data` for this call.
    let bytes = unsafe { bytes(data, len) };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_datagram", (), || {
        handler.on_datagram(&ctx, SocketId::from_raw(socket), peer, bytes)
    })
}

unsafe extern "C" fn on_timer<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    timer: u64,
    user_data: u64,
) {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_timer", (), || {
        handler.on_timer(&ctx, TimerId::from_raw(timer), user_data)
    })
}

unsafe extern "C" fn on_message<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    msg: *const u8,
    len: usize,
) {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    let ctx = inst.ctx(raw);
    // SAFETY: the host lends `len` bytes at `msg` for this call.
    let msg = unsafe { bytes(msg, len) };
    let handler = &mut inst.handler;
    guard(&ctx, "on_message", (), || handler.on_message(&ctx, msg))
}

unsafe extern "C" fn on_fd<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    watch: u64,
    user_data: u64,
    events: u32,
) {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_fd", (), || {
        handler.on_fd(
            &ctx,
            WatchId::from_raw(watch),
            user_data,
            FdEvents::from_raw(events),
        )
    })
}

unsafe extern "C" fn on_shutdown<H: Handler>(raw: *mut loopd_ctx, inst: *mut c_void) {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_shutdown", (), || handler.on_shutdown(&ctx))
}

unsafe extern "C" fn on_listen<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    listener: u64,
    info: *const abi::loopd_listen_info,
) {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    // SAFETY: the host lends a valid info for the call.
    let Some(info) = (unsafe { info.as_ref() }) else {
        return;
    };
    let transport = match info.transport {
        abi::LOOPD_TRANSPORT_TCP => Transport::Tcp,
        abi::LOOPD_TRANSPORT_UNIX => Transport::Unix,
        abi::LOOPD_TRANSPORT_UDP => Transport::Udp,
        other => Transport::Other(other),
    };
    let url = cstr(info.url).unwrap_or("");
    let listen = ListenInfo {
        transport,
        local: info.local.to_socket_addr(),
        url,
    };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_listen", (), || {
        handler.on_listen(&ctx, SocketId::from_raw(listener), &listen)
    })
}

unsafe extern "C" fn on_oversize<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    conn: u64,
    state: *mut c_void,
    frame_size: u64,
    max_frame: u64,
) -> i32 {
    // SAFETY: the host passes the pointers create and on_open produced.
    let (Some(inst), Some(state)) = (unsafe { instance::<H>(inst) }, unsafe {
        conn_state::<H>(state)
    }) else {
        return abi::LOOPD_OVERSIZE_CLOSE;
    };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(
        &ctx,
        "on_oversize",
        abi::LOOPD_OVERSIZE_CLOSE,
        || match handler.on_oversize(&ctx, ConnId::from_raw(conn), state, frame_size, max_frame) {
            OversizeAction::Close => abi::LOOPD_OVERSIZE_CLOSE,
            OversizeAction::Skip => abi::LOOPD_OVERSIZE_SKIP,
        },
    )
}

unsafe extern "C" fn on_partial<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    conn: u64,
    state: *mut c_void,
    data: *const u8,
    len: usize,
) {
    // SAFETY: the host passes the pointers create and on_open produced.
    let (Some(inst), Some(state)) = (unsafe { instance::<H>(inst) }, unsafe {
        conn_state::<H>(state)
    }) else {
        return;
    };
    // SAFETY: the host lends `len` readable bytes at `data` for this call.
    let bytes = unsafe { bytes(data, len) };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    let ok = guard(&ctx, "on_partial", false, || {
        handler.on_partial(&ctx, ConnId::from_raw(conn), state, bytes);
        true
    });
    if !ok {
        inst.fail_conn(&ctx, conn);
    }
}
