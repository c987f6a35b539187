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
use std::rc::Rc;

use crate::abi::{
    self, loopd_conn_info, loopd_ctx, loopd_host_api, loopd_plugin_info, loopd_vtable,
};
use crate::timer_payload::TimerPayloads;
use crate::types::{
    ConnId, ConnInfo, EofAction, FdEvents, Framing, Level, ListenInfo, Origin, OversizeAction,
    SocketId, TimerId, Transport, WatchId,
};
use crate::{CloseMode, CloseReason, Ctx, Datagrams, Handler};

/// What `create` allocates: the host table (copied), the handler and its
/// timer payloads.
struct Instance<H> {
    host: &'static loopd_host_api,
    handler: H,
    /// Connections aborted because a hook without a result panicked: their
    /// `on_close` reports [`CloseReason::Handler`]. Each id leaves at its
    /// `on_close`, so this never holds more than the open connections.
    failed: Vec<u64>,
    /// The payloads of [`Ctx::set_timer_with`]. Made before the handler
    /// (the `Ctx` that `create` gets, and may keep, points to it) and
    /// emptied after it is dropped. An `Rc` so that the pointer each `Ctx`
    /// holds stays valid while the instance is moved into its `Box`.
    payloads: Rc<TimerPayloads>,
}

impl<H> Instance<H> {
    fn ctx(&self, raw: *mut loopd_ctx) -> Ctx {
        ctx_for(self.host, raw, &self.payloads)
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

/// The vtable for `H`. Every hook is present, but for the connection hooks
/// of a handler without [`Handler::STREAMS`] and the datagram hooks of one
/// without [`Handler::DATAGRAMS`] (`on_datagrams` also needs
/// [`Handler::BATCH_DATAGRAMS`]): NULL tells loopd the handler does not
/// serve that kind of listener.
pub const fn vtable<H: Handler>() -> loopd_vtable {
    let streams = H::STREAMS;
    loopd_vtable {
        struct_size: std::mem::size_of::<loopd_vtable>() as u32,
        reserved: 0,
        create: Some(create::<H>),
        destroy: Some(destroy::<H>),
        on_open: if streams { Some(on_open::<H>) } else { None },
        on_data: if streams { Some(on_data::<H>) } else { None },
        on_eof: if streams { Some(on_eof::<H>) } else { None },
        on_writable: if streams {
            Some(on_writable::<H>)
        } else {
            None
        },
        on_close: if streams { Some(on_close::<H>) } else { None },
        on_datagram: if H::DATAGRAMS {
            Some(on_datagram::<H>)
        } else {
            None
        },
        on_timer: Some(on_timer::<H>),
        on_shutdown: Some(on_shutdown::<H>),
        on_listen: Some(on_listen::<H>),
        on_oversize: if streams {
            Some(on_oversize::<H>)
        } else {
            None
        },
        on_partial: if streams { Some(on_partial::<H>) } else { None },
        on_message: Some(on_message::<H>),
        on_fd: Some(on_fd::<H>),
        on_datagrams: if H::DATAGRAMS && H::BATCH_DATAGRAMS {
            Some(on_datagrams::<H>)
        } else {
            None
        },
    }
}

/// `H::FRAMINGS` as bits, checked when `H` is compiled: its `FRAMING` (or,
/// without one, raw: what an entry without a `framing` key gets) must be
/// one of them, or loopd would refuse the plugin when it loads.
pub(crate) const fn framings<H: Handler>() -> u32 {
    const {
        let bits = Framing::bits(H::FRAMINGS);
        let default = match H::FRAMING {
            Framing::Default => Framing::Raw,
            f => f,
        };
        assert!(
            bits == 0 || bits & abi::LOOPD_FRAMING_BIT(default.to_raw()) != 0,
            "Handler::FRAMING (raw when unset) must be one of Handler::FRAMINGS"
        );
        bits
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
        alpn: H::ALPN.as_ptr(),
        framings: framings::<H>(),
        reserved2: 0,
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

/// The `Ctx` of an instance.
fn ctx_for(
    host: &'static loopd_host_api,
    raw: *mut loopd_ctx,
    payloads: &Rc<TimerPayloads>,
) -> Ctx {
    // SAFETY: `host` is 'static; the payloads live in the instance, which
    // drops them only after its handler (and every hook) is done.
    unsafe { Ctx::with_payloads(host, raw, Rc::as_ptr(payloads)) }
}

/// Drops the handler, then every timer payload still held: payloads
/// outlive the handler so that its `Drop` may still cancel timers.
fn destroy_instance<H>(instance: Instance<H>) {
    let Instance {
        handler, payloads, ..
    } = instance;
    // Even when the handler's Drop panics, the payloads go before the
    // table does (a payload's Drop may call back into the Ctx).
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(handler)));
    payloads.close();
    if let Err(panic) = dropped {
        std::panic::resume_unwind(panic);
    }
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
    /// This thread runs hooks of this plugin's instances (it created one:
    /// loopd calls an instance's hooks only on the thread that created it,
    /// its `Runtime` not being `Send`). The plugin's code runs on such a
    /// thread only inside a hook, and every hook is guarded ([`catch`]), so a
    /// panic there is caught and reported through loopd's log, and the
    /// plugin's panic hook stays quiet. Set once per `create` rather than
    /// around every hook: a thread-local in a shared library is a call to
    /// `__tls_get_addr` each time (14 instructions a hook, which were almost
    /// all a plugin's hook cost more than a statically linked handler's).
    static HOOK_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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
            if !HOOK_THREAD.with(|g| g.get()) {
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
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
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

/// A config error, led by the key it is about (`burst_lines: invalid
/// type ...`: loopd finds that key's line), without serde_json's " at line 1
/// column 9", meaningless to someone who wrote TOML.
fn config_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let text = e.inner().to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    // "." is the path of the table itself (a missing field, an unknown one:
    // those messages name the key already).
    match e.path().to_string() {
        path if path == "." || text.contains(&format!("`{path}`")) => text,
        path => format!("{path}: {text}"),
    }
}

/// Parses the instance name and config, then builds the handler.
fn create_safe<H: Handler>(ctx: &Ctx, name: &str, config_json: &str) -> Result<H, String> {
    let json = if config_json.trim().is_empty() {
        "{}"
    } else {
        config_json
    };
    let mut de = serde_json::Deserializer::from_str(json);
    let config: H::Config = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| format!("invalid config: {}", config_error(&e)))?;
    de.end()
        .map_err(|e| format!("invalid config: trailing characters: {e}"))?;
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
    HOOK_THREAD.with(|g| g.set(true));
    // SAFETY: checked non-NULL; the host's table is valid for the process.
    let host = unsafe { copy_host(host) };
    let payloads = Rc::new(TimerPayloads::default());
    let ctx = ctx_for(host, raw, &payloads);
    let made =
        catch(|| make(&ctx)).unwrap_or_else(|(msg, _)| Err(format!("panicked in create: {msg}")));
    let handler = match made {
        Ok(handler) => handler,
        Err(e) => {
            // Payloads of timers armed before the failure go with it.
            close_payloads(&ctx, &payloads);
            return Err(e);
        }
    };
    let instance = Box::new(Instance {
        host,
        handler,
        failed: Vec::new(),
        payloads,
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
    // SAFETY: checked non-NULL; the host's table and context are the
    // caller's contract, forwarded.
    let made = unsafe {
        adopt::<H>(host, raw, |ctx| {
            let name = cstr(name)?;
            let json = cstr(config_json)?;
            create_safe::<H>(ctx, name, json)
        })
    };
    match made {
        Ok(instance) => {
            // SAFETY: checked non-NULL; the host gives a writable out-pointer.
            unsafe { *instance_out = instance };
            abi::LOOPD_OK
        }
        Err(msg) => {
            write_err(err, err_cap, &msg);
            abi::LOOPD_ERR_HANDLER
        }
    }
}

/// Drops the payloads of a failed `create`, containing a panicking `Drop`.
fn close_payloads(ctx: &Ctx, payloads: &TimerPayloads) {
    guard(ctx, "create", (), || payloads.close());
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
    guard(&ctx, "destroy", (), move || destroy_instance(*boxed));
}

fn conn_info(info: &loopd_conn_info) -> ConnInfo<'_> {
    ConnInfo {
        transport: match info.transport {
            abi::LOOPD_TRANSPORT_TCP => Transport::Tcp,
            abi::LOOPD_TRANSPORT_UNIX => Transport::Unix,
            abi::LOOPD_TRANSPORT_UDP => Transport::Udp,
            abi::LOOPD_TRANSPORT_TLS => Transport::Tls,
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
    let peer = unsafe { peer.as_ref() };
    // SAFETY: the host lends `len` readable bytes at `data` for this call.
    let bytes = unsafe { bytes(data, len) };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    let socket = SocketId::from_raw(socket);
    if H::BATCH_DATAGRAMS {
        // A host without on_datagrams: a batch of one.
        let raw = [crate::datagrams::one(peer, bytes)];
        // SAFETY: `raw` points at `bytes`, borrowed for this call.
        let batch = unsafe { Datagrams::from_raw(&raw) };
        return guard(&ctx, "on_datagrams", (), || {
            handler.on_datagrams(&ctx, socket, batch)
        });
    }
    let peer = peer.and_then(|p| p.to_socket_addr());
    guard(&ctx, "on_datagram", (), || {
        handler.on_datagram(&ctx, socket, peer, bytes)
    })
}

unsafe extern "C" fn on_datagrams<H: Handler>(
    raw: *mut loopd_ctx,
    inst: *mut c_void,
    socket: u64,
    msgs: *const abi::loopd_datagram,
    count: usize,
) {
    // SAFETY: the host passes the pointer create produced.
    let Some(inst) = (unsafe { instance::<H>(inst) }) else {
        return;
    };
    if msgs.is_null() || count == 0 {
        return;
    }
    // SAFETY: the host lends `count` datagrams at `msgs`, each pointing at
    // its bytes, for this call.
    let batch = unsafe { Datagrams::from_raw(std::slice::from_raw_parts(msgs, count)) };
    let ctx = inst.ctx(raw);
    let handler = &mut inst.handler;
    guard(&ctx, "on_datagrams", (), || {
        handler.on_datagrams(&ctx, SocketId::from_raw(socket), batch)
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
    // The timer's payload, if any, waits aside for the hook to take; a
    // one-shot timer's is dropped after it (a repeating one's kept).
    inst.payloads.begin_fire(timer);
    guard(&ctx, "on_timer", (), || {
        handler.on_timer(&ctx, TimerId::from_raw(timer), user_data)
    });
    let left = inst.payloads.end_fire();
    guard(&ctx, "on_timer", (), move || drop(left));
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
        abi::LOOPD_TRANSPORT_TLS => Transport::Tls,
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

#[cfg(test)]
mod tests {
    //! Typed timer payloads through the real trampolines, on a mock host
    //! whose timers are a list of pending ids: every payload is dropped
    //! exactly once, when its timer's `on_timer` returns, when it is
    //! cancelled, or when the instance goes.

    use super::*;
    use crate::{Error, NoConfig};
    use std::cell::{Cell, RefCell};
    use std::ptr;
    use std::sync::OnceLock;
    use std::time::Duration;

    thread_local! {
        /// Ids the mock host has pending, and the next one.
        static PENDING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
        static NEXT: Cell<u64> = const { Cell::new(1) };
        /// Whether timer_set refuses (LOOPD_ERR_LIMIT).
        static FULL: Cell<bool> = const { Cell::new(false) };
        /// Payload drops, by tag.
        static DROPS: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
        /// What the handler runs in on_message (timer None) and on_timer.
        static HOOK: RefCell<Option<Hook>> =
            const { RefCell::new(None) };
    }

    /// What the handler runs in on_message (timer None) and on_timer.
    type Hook = Box<dyn FnMut(&Ctx, Option<TimerId>)>;

    unsafe extern "C" fn timer_set(_: *mut loopd_ctx, _: u64, _: u64, out: *mut u64) -> i32 {
        if FULL.with(Cell::get) {
            return abi::LOOPD_ERR_LIMIT;
        }
        let id = NEXT.with(|n| n.replace(n.get() + 1)) | (7 << 32);
        PENDING.with(|p| p.borrow_mut().push(id));
        // SAFETY: the SDK passes a valid out-pointer.
        unsafe { *out = id };
        abi::LOOPD_OK
    }

    unsafe extern "C" fn timer_repeat(
        ctx: *mut loopd_ctx,
        delay: u64,
        _: u64,
        data: u64,
        out: *mut u64,
    ) -> i32 {
        // SAFETY: forwarded.
        unsafe { timer_set(ctx, delay, data, out) }
    }

    unsafe extern "C" fn timer_cancel(_: *mut loopd_ctx, id: u64) -> i32 {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            match p.iter().position(|&t| t == id) {
                Some(at) => {
                    p.remove(at);
                    abi::LOOPD_OK
                }
                None => abi::LOOPD_ERR_NO_SUCH_TIMER,
            }
        })
    }

    unsafe extern "C" fn log(_: *mut loopd_ctx, _: u32, _: *const c_char, _: usize) {}

    fn host() -> &'static loopd_host_api {
        static HOST: OnceLock<loopd_host_api> = OnceLock::new();
        HOST.get_or_init(|| {
            // SAFETY: all-zero is a valid table: integers, NULL, `None`s.
            let mut h: loopd_host_api = unsafe { std::mem::zeroed() };
            h.struct_size = std::mem::size_of::<loopd_host_api>() as u32;
            h.abi_major = abi::LOOPD_ABI_MAJOR;
            h.abi_minor = abi::LOOPD_ABI_MINOR;
            h.log = Some(log);
            h.timer_set = Some(timer_set);
            h.timer_repeat = Some(timer_repeat);
            h.timer_cancel = Some(timer_cancel);
            h
        })
    }

    /// A payload that records its drop.
    struct Tagged(&'static str);

    impl Drop for Tagged {
        fn drop(&mut self) {
            DROPS.with(|d| d.borrow_mut().push(self.0));
        }
    }

    fn drops() -> Vec<&'static str> {
        DROPS.with(|d| d.borrow().clone())
    }

    struct Probe;

    impl Handler for Probe {
        type Config = NoConfig;
        type Conn = ();
        fn create(ctx: &Ctx, name: &str, _: NoConfig) -> Result<Self, String> {
            if name == "fails" {
                ctx.set_timer_with(Duration::from_secs(1), Tagged("from failed create"))
                    .unwrap();
                return Err("refused".into());
            }
            Ok(Probe)
        }
        fn on_message(&mut self, ctx: &Ctx, _: &[u8]) {
            run_hook(ctx, None);
        }
        fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, _: u64) {
            run_hook(ctx, Some(timer));
        }
    }

    fn run_hook(ctx: &Ctx, timer: Option<TimerId>) {
        let mut hook = HOOK.with(|h| h.borrow_mut().take()).expect("a hook");
        hook(ctx, timer);
        HOOK.with(|h| *h.borrow_mut() = Some(hook));
    }

    /// A live instance of Probe, destroyed when dropped.
    struct Inst(*mut c_void);

    impl Inst {
        fn new(name: &str) -> Result<Inst, String> {
            PENDING.with(|p| p.borrow_mut().clear());
            DROPS.with(|d| d.borrow_mut().clear());
            FULL.with(|f| f.set(false));
            let name = std::ffi::CString::new(name).unwrap();
            let mut out = ptr::null_mut();
            let mut err = [0 as c_char; 128];
            // SAFETY: a valid host table, NUL-terminated strings, out-pointers.
            let rc = unsafe {
                create::<Probe>(
                    host(),
                    ptr::null_mut(),
                    name.as_ptr(),
                    c"{}".as_ptr(),
                    &mut out,
                    err.as_mut_ptr(),
                    err.len(),
                )
            };
            if rc == abi::LOOPD_OK {
                Ok(Inst(out))
            } else {
                // SAFETY: create wrote a NUL-terminated message.
                Err(unsafe { CStr::from_ptr(err.as_ptr()) }
                    .to_string_lossy()
                    .into_owned())
            }
        }

        /// Runs `f` inside a hook (on_message), with the instance's Ctx.
        fn with<R: 'static>(&self, f: impl FnOnce(&Ctx) -> R + 'static) -> R {
            let out = std::rc::Rc::new(RefCell::new(None));
            let slot = out.clone();
            let mut f = Some(f);
            HOOK.with(|h| {
                *h.borrow_mut() = Some(Box::new(move |ctx: &Ctx, _| {
                    *slot.borrow_mut() = Some((f.take().unwrap())(ctx));
                }))
            });
            // SAFETY: our live instance; no message bytes.
            unsafe { on_message::<Probe>(ptr::null_mut(), self.0, ptr::null(), 0) };
            let r = out.borrow_mut().take().expect("the hook ran");
            r
        }

        /// Fires `timer` as the host would, running `f` as on_timer.
        fn fire(&self, timer: TimerId, mut f: impl FnMut(&Ctx, TimerId) + 'static) {
            HOOK.with(|h| {
                *h.borrow_mut() = Some(Box::new(move |ctx: &Ctx, t: Option<TimerId>| {
                    f(ctx, t.unwrap())
                }))
            });
            // SAFETY: our live instance.
            unsafe { on_timer::<Probe>(ptr::null_mut(), self.0, timer.raw(), 0) };
        }

        fn held(&self) -> usize {
            // SAFETY: our live instance.
            unsafe { instance::<Probe>(self.0) }.unwrap().payloads.len()
        }
    }

    impl Drop for Inst {
        fn drop(&mut self) {
            // SAFETY: create produced it; destroyed once.
            unsafe { destroy::<Probe>(ptr::null_mut(), self.0) };
        }
    }

    const MS: Duration = Duration::from_millis(5);

    #[test]
    fn a_one_shot_payload_comes_back_typed_and_exactly_once() {
        let inst = Inst::new("p").unwrap();
        let timer = inst.with(|ctx| {
            ctx.set_timer_with(MS, (ConnId::from_raw(42), String::from("hello")))
                .unwrap()
        });
        assert_eq!(inst.held(), 1);
        let got = std::rc::Rc::new(RefCell::new(Vec::new()));
        let seen = got.clone();
        inst.fire(timer, move |ctx, t| {
            // Another type finds nothing and leaves it.
            seen.borrow_mut()
                .push(format!("{:?}", ctx.take_timer_payload::<u64>(t)));
            let p = ctx.take_timer_payload::<(ConnId, String)>(t);
            seen.borrow_mut().push(format!("{p:?}"));
            // Taken: gone.
            let again = ctx.take_timer_payload::<(ConnId, String)>(t);
            seen.borrow_mut().push(format!("{again:?}"));
        });
        assert_eq!(
            *got.borrow(),
            ["None", "Some((ConnId(42:0), \"hello\"))", "None"]
        );
        assert_eq!(inst.held(), 0);
    }

    #[test]
    fn an_untaken_payload_is_dropped_when_on_timer_returns() {
        let inst = Inst::new("p").unwrap();
        let timer = inst.with(|ctx| ctx.set_timer_with(MS, Tagged("untaken")).unwrap());
        inst.fire(timer, |ctx, t| {
            // Still held during the hook.
            assert!(ctx.with_timer_payload::<Tagged, _>(t, |p| p.0).is_some());
            assert!(drops().is_empty());
        });
        assert_eq!(drops(), ["untaken"]);
        assert_eq!(inst.held(), 0);
        // A late fire of the same id finds nothing to drop twice.
        inst.fire(timer, |ctx, t| {
            assert!(ctx.take_timer_payload::<Tagged>(t).is_none())
        });
        assert_eq!(drops(), ["untaken"]);
    }

    #[test]
    fn cancel_drops_the_payload_at_once() {
        let inst = Inst::new("p").unwrap();
        let (a, b) = inst.with(|ctx| {
            let a = ctx.set_timer_with(MS, Tagged("a")).unwrap();
            let b = ctx.set_timer_with(MS, Tagged("b")).unwrap();
            ctx.cancel_timer(a).unwrap();
            assert_eq!(drops(), ["a"]);
            // Cancelled twice: NoSuchTimer, nothing more dropped.
            assert_eq!(ctx.cancel_timer(a), Err(Error::NoSuchTimer));
            (a, b)
        });
        assert_eq!(drops(), ["a"]);
        assert_eq!(inst.held(), 1);
        // Cancelling inside its own on_timer (already fired: NoSuchTimer)
        // drops it there, not after.
        PENDING.with(|p| p.borrow_mut().retain(|&t| t != b.raw()));
        inst.fire(b, |ctx, t| {
            assert_eq!(ctx.cancel_timer(t), Err(Error::NoSuchTimer));
            assert_eq!(drops(), ["a", "b"]);
        });
        assert_eq!(drops(), ["a", "b"]);
        let _ = a;
    }

    #[test]
    fn a_repeating_payload_stays_across_ticks_until_cancelled() {
        let inst = Inst::new("p").unwrap();
        let timer = inst.with(|ctx| {
            ctx.set_repeating_timer_with(MS, MS, (0u32, Tagged("ticker")))
                .unwrap()
        });
        for tick in 1..=3u32 {
            inst.fire(timer, move |ctx, t| {
                let n = ctx
                    .with_timer_payload::<(u32, Tagged), _>(t, |(n, _)| {
                        *n += 1;
                        *n
                    })
                    .unwrap();
                assert_eq!(n, tick);
            });
            assert_eq!(inst.held(), 1, "kept after tick {tick}");
        }
        assert!(drops().is_empty());
        // A panic inside the closure is contained by the hook's guard; the
        // payload goes back all the same.
        inst.fire(timer, |ctx, t| {
            ctx.with_timer_payload::<(u32, Tagged), _>(t, |_| panic!("in the closure"));
        });
        assert_eq!(inst.held(), 1);
        assert!(drops().is_empty());
        // Cancelled from inside the closure: dropped once it returns.
        inst.fire(timer, |ctx, t| {
            let r = ctx.with_timer_payload::<(u32, Tagged), _>(t, |(n, _)| {
                assert!(ctx.take_timer_payload::<(u32, Tagged)>(t).is_none());
                assert!(ctx
                    .with_timer_payload::<(u32, Tagged), _>(t, |_| ())
                    .is_none());
                ctx.cancel_timer(t).unwrap();
                assert!(drops().is_empty(), "dropped while lent");
                *n
            });
            assert_eq!(r, Some(3));
            assert_eq!(drops(), ["ticker"]);
        });
        assert_eq!(inst.held(), 0);
        // Taking a repeating timer's payload ends it too.
        let timer = inst.with(|ctx| {
            ctx.set_repeating_timer_with(MS, MS, Tagged("taken"))
                .unwrap()
        });
        inst.fire(timer, |ctx, t| {
            let p = ctx.take_timer_payload::<Tagged>(t);
            assert_eq!(p.as_ref().map(|p| p.0), Some("taken"));
        });
        assert_eq!(drops(), ["ticker", "taken"]);
        assert_eq!(inst.held(), 0);
    }

    #[test]
    fn destroy_and_a_failed_create_drop_what_is_pending() {
        let inst = Inst::new("p").unwrap();
        inst.with(|ctx| {
            ctx.set_timer_with(MS, Tagged("one-shot")).unwrap();
            ctx.set_repeating_timer_with(MS, MS, Tagged("repeating"))
                .unwrap();
        });
        assert_eq!(inst.held(), 2);
        assert!(drops().is_empty());
        drop(inst);
        let mut d = drops();
        d.sort();
        assert_eq!(d, ["one-shot", "repeating"]);

        let err = Inst::new("fails").err().unwrap();
        assert_eq!(err, "refused");
        assert_eq!(drops(), ["from failed create"]);
    }

    #[test]
    fn a_refused_timer_drops_its_payload_and_a_raw_ctx_has_none() {
        let inst = Inst::new("p").unwrap();
        FULL.with(|f| f.set(true));
        let r = inst.with(|ctx| ctx.set_timer_with(MS, Tagged("refused")).map(|_| ()));
        assert_eq!(r, Err(Error::Limit));
        assert_eq!(drops(), ["refused"]);
        assert_eq!(inst.held(), 0);
        FULL.with(|f| f.set(false));

        // A Ctx made by hand has no table: Unsupported, and no timer armed.
        // SAFETY: a complete static table; the mock ignores the context.
        let ctx = unsafe { Ctx::from_raw(host(), ptr::null_mut()) };
        let before = PENDING.with(|p| p.borrow().len());
        assert_eq!(
            ctx.set_timer_with(MS, Tagged("raw")).map(|_| ()),
            Err(Error::Unsupported)
        );
        assert_eq!(PENDING.with(|p| p.borrow().len()), before);
        assert_eq!(
            ctx.take_timer_payload::<Tagged>(TimerId::from_raw(1))
                .map(|_| ()),
            None
        );
        // Plain timers keep working.
        assert!(ctx.set_timer(MS, 9).is_ok());
    }

    /// A payload whose Drop calls back into the Ctx (cancels a timer, arms
    /// another with a payload) while the instance is being destroyed.
    struct Reentrant {
        ctx: Ctx,
        other: TimerId,
    }

    impl Drop for Reentrant {
        fn drop(&mut self) {
            let _ = self.ctx.cancel_timer(self.other);
            let _ = self.ctx.set_timer_with(MS, Tagged("armed in drop"));
            DROPS.with(|d| d.borrow_mut().push("reentrant"));
        }
    }

    #[test]
    fn a_payload_drop_may_call_back_into_the_ctx() {
        let inst = Inst::new("p").unwrap();
        inst.with(|ctx| {
            let other = ctx.set_timer_with(MS, Tagged("other")).unwrap();
            ctx.set_timer_with(MS, Reentrant { ctx: *ctx, other })
                .unwrap();
        });
        drop(inst);
        let mut d = drops();
        d.sort();
        assert_eq!(d, ["armed in drop", "other", "reentrant"]);
    }
}
