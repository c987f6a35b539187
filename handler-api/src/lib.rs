//! Write loopd handlers in Rust: the handler ABI v1 and a safe layer over it.
//!
//! A handler is a type that implements [`Handler`] plus one
//! [`export_handler!`] line. Built as a `cdylib`, it loads into any loopd of
//! ABI major 1, with no rebuild of loopd; built as an `rlib`, a program that
//! embeds loopd links it in directly. Every hook runs inside `catch_unwind`:
//! a panic closes that one connection (or fails that instance), is logged
//! with the instance name, and the loop keeps serving everyone else.
//!
//! # A complete handler
//!
//! A line protocol with a greeting, per-connection state, a config table, a
//! timer per connection (idle peers are disconnected) and back-pressure:
//!
//! ```
//! use std::time::Duration;
//!
//! use loopd_handler_api::{
//!     export_handler, CloseMode, CloseReason, ConnId, ConnInfo, Ctx, Error, Framing, Handler,
//!     TimerId,
//! };
//! use serde::Deserialize;
//!
//! /// `[handler.config]`: every key optional, unknown keys refused.
//! #[derive(Debug, Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! pub struct Config {
//!     /// Sent to every new connection.
//!     greeting: String,
//!     /// Connections silent for this long are closed.
//!     idle_timeout_ms: u64,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Config {
//!         Config { greeting: "hello".into(), idle_timeout_ms: 30_000 }
//!     }
//! }
//!
//! /// One per `[[handler]]` entry.
//! pub struct Pong {
//!     greeting: String,
//!     idle: Duration,
//! }
//!
//! /// One per connection: made by `on_open`, handed back to `on_close`.
//! #[derive(Default)]
//! pub struct PongConn {
//!     lines: u64,
//!     idle_timer: Option<TimerId>,
//! }
//!
//! impl Pong {
//!     /// (Re)arms the connection's idle timer; the timer carries the
//!     /// connection id, so `on_timer` knows whom it is for.
//!     fn arm(&self, ctx: &Ctx, conn: ConnId, state: &mut PongConn) {
//!         if let Some(old) = state.idle_timer.take() {
//!             let _ = ctx.cancel_timer(old);
//!         }
//!         state.idle_timer = ctx.set_timer(self.idle, conn.raw()).ok();
//!     }
//! }
//!
//! impl Handler for Pong {
//!     type Config = Config;
//!     type Conn = PongConn;
//!     const FRAMING: Framing = Framing::Line;
//!
//!     fn create(_ctx: &Ctx, _instance: &str, config: Config) -> Result<Self, String> {
//!         if config.idle_timeout_ms == 0 {
//!             return Err("idle_timeout_ms must be above 0".into());
//!         }
//!         Ok(Pong {
//!             greeting: config.greeting,
//!             idle: Duration::from_millis(config.idle_timeout_ms),
//!         })
//!     }
//!
//!     fn on_open(&mut self, ctx: &Ctx, conn: ConnId, info: &ConnInfo<'_>) -> Result<PongConn, String> {
//!         ctx.debug(format_args!("{conn} from {:?}", info.peer));
//!         let mut state = PongConn::default();
//!         ctx.send_frame(conn, Framing::Line, self.greeting.as_bytes())
//!             .map_err(|e| e.to_string())?;
//!         self.arm(ctx, conn, &mut state);
//!         Ok(state)
//!     }
//!
//!     fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut PongConn, line: &[u8]) {
//!         state.lines += 1;
//!         self.arm(ctx, conn, state);
//!         let n = state.lines.to_string();
//!         match ctx.send_parts(conn, &[b"pong ", n.as_bytes(), b" ", line, b"\n"]) {
//!             Ok(()) | Err(Error::Closed) => {}
//!             // The queue is full: loopd pauses this peer's input until it
//!             // drains, so this only happens if we send more than we read.
//!             Err(_) => drop(ctx.close(conn, CloseMode::Abort)),
//!         }
//!     }
//!
//!     fn on_timer(&mut self, ctx: &Ctx, _timer: TimerId, conn: u64) {
//!         let conn = ConnId::from_raw(conn);
//!         // The connection may be gone: ids are generation-checked, so a
//!         // stale one is refused (NoSuchConn), never a newer connection.
//!         let _ = ctx.send_frame(conn, Framing::Line, b"idle, bye");
//!         let _ = ctx.close(conn, CloseMode::Flush);
//!     }
//!
//!     fn on_close(&mut self, ctx: &Ctx, conn: ConnId, state: PongConn, reason: CloseReason) {
//!         if let Some(timer) = state.idle_timer {
//!             let _ = ctx.cancel_timer(timer);
//!         }
//!         ctx.debug(format_args!("{conn} closed ({reason}) after {} lines", state.lines));
//!     }
//! }
//!
//! export_handler!(Pong, name = "pong");
//! ```
//!
//! In `Cargo.toml`: `crate-type = ["cdylib", "rlib"]` (`cdylib` for the
//! loadable `.so`; `rlib` to link it into tests and embedding programs),
//! and `serde` with the `derive` feature for the config. The profile must
//! unwind on panic: building a handler with `panic = "abort"` is a compile
//! error, because a panic could then not be contained.
//!
//! # The contract
//!
//! - **One thread, one hook at a time, never nested.** loopd calls hooks on
//!   its loop thread. A [`Ctx`] call made inside a hook never runs another
//!   hook: what it causes (a close, a failed write) is delivered after the
//!   current hook returns. [`Ctx`] methods work inside any hook (including
//!   `create` and `Drop`); from another thread or outside a hook they return
//!   [`Error::WrongThread`] ([`Ctx::log`] works anywhere).
//! - **Ownership.** The handler value is created by `create` and dropped by
//!   loopd after every connection got `on_close` (its `Drop` is the
//!   `destroy` hook). Connection state ([`Handler::Conn`]) is created by
//!   `on_open`, lent to every hook for that connection, and handed back by
//!   value to `on_close`. Bytes passed to a hook are borrowed for that call
//!   only; bytes passed to [`Ctx::send`] are copied before it returns.
//! - **Ids** ([`ConnId`], [`SocketId`], [`TimerId`]) carry a generation: a
//!   kept id that went stale is refused with [`Error::NoSuchConn`] (or
//!   [`Error::NoSuchTimer`]); it never reaches whoever reuses the slot.
//! - **Panics** are caught at the boundary. In `on_open`, `on_data`,
//!   `on_writable` or `on_partial` the connection is aborted
//!   ([`CloseReason::Handler`]); in `create` the instance fails and loopd
//!   does not start; elsewhere (`on_timer`, `on_datagram`, ...) the hook's
//!   effect is lost and the panic logged. The handler value stays in use afterwards,
//!   so keep it consistent (or refuse further work) if a panic can leave it
//!   half-updated. Never panic in `Drop`: a panic while unwinding aborts.
//! - **Versions.** [`export_handler!`] builds against ABI 1.x; the plugin
//!   loads into any loopd of major 1 whose minor is at least
//!   [`Handler::MIN_HOST_MINOR`].
//!
//! # Testing a handler
//!
//! Keep protocol logic in plain functions and unit-test them. Test the hooks
//! in-process by linking the handler into a test with the `loopd` crate
//! (`loopd::HandlerSpec::linked::<MyHandler>("name")`, a `tcp://127.0.0.1:0`
//! listener, `run_once` in a loop while a client thread talks to it): that
//! runs the real loop with the real glue, without a `.so`. `loopd
//! new-handler` generates a project with such a test.
//!
//! # Modules
//!
//! [`framing`] has line and length-prefix decoders for handlers that take
//! raw bytes; [`abi`] is the raw ABI, for handlers written against
//! `loopd.h` by hand.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

pub mod abi;
mod ctx;
mod datagrams;
pub mod framing;
mod glue;
mod timer_payload;
mod types;

pub use ctx::{Ctx, Metric, Series};
pub use datagrams::{Datagram, Datagrams, LentOutbox, Outbox};
pub use types::{
    CloseMode, CloseReason, ConnId, ConnInfo, ConnectOptions, EofAction, Error, FdEvents, Framing,
    Interest, Level, ListenInfo, Origin, OversizeAction, SocketId, TimerId, Transport, WatchId,
};

use std::net::SocketAddr;

/// A loopd handler. Every hook but [`Handler::create`] has a default that does nothing.
///
/// loopd calls the hooks on its loop thread, one at a time, never
/// re-entrantly: a [`Ctx`] call made inside a hook never runs another hook.
/// Every hook may call every [`Ctx`] method. `Drop` is the `destroy` hook:
/// it runs once every connection got `on_close`, and no timer fires after it.
///
/// For one connection the order is always: `on_open`, then any number of
/// `on_data` and `on_writable`, at most one `on_eof`, then exactly one
/// `on_close`. A connection refused by `on_open`, or an outbound
/// [`Ctx::connect`] that failed, gets only `on_close`.
pub trait Handler: Sized + 'static {
    /// The handler's `[handler.config]` table, deserialized from the JSON loopd
    /// passes. Use `#[serde(default, deny_unknown_fields)]` so a typo is an
    /// error, and [`NoConfig`] if there is nothing to configure.
    type Config: serde::de::DeserializeOwned;

    /// Per-connection state, made by [`Handler::on_open`] and handed back by
    /// value to [`Handler::on_close`]. A zero-sized type costs nothing.
    type Conn: Default + 'static;

    /// The framing used when the config does not name one.
    const FRAMING: Framing = Framing::Default;

    /// The framings the handler works with (ABI 1.5); empty: any. loopd
    /// refuses a `[[handler]]` entry whose `framing` is not one of them, at
    /// start, in `loopd check` and on a reload, naming the key, instead of
    /// starting a handler that cannot read its input. [`Handler::FRAMING`]
    /// (raw when unset) must be one of them, or the handler does not
    /// compile. A host older than 1.5 does not check:
    /// a handler that must not run with another framing also looks at
    /// [`ConnInfo::framing`] in [`Handler::on_open`].
    const FRAMINGS: &'static [Framing] = &[];

    /// The oldest host ABI minor this handler works with. Raise it when you
    /// use a host function added in a later minor.
    const MIN_HOST_MINOR: u32 = 0;

    /// The ALPN protocols this handler's `tls://` listeners offer,
    /// comma-separated, most preferred first (ABI 1.4; `c"http/1.1"` for an
    /// HTTP/1.1 server). Empty: none. A handler entry's `tls_alpn` key
    /// replaces them; a host older than 1.4 ignores them.
    const ALPN: &'static std::ffi::CStr = c"";

    /// Receive datagrams in batches, through [`Handler::on_datagrams`],
    /// instead of one [`Handler::on_datagram`] call each (ABI 1.4). A
    /// handler that answers many datagrams at once (with
    /// [`Ctx::send_datagrams`]) sets it; on a host that predates batches
    /// each datagram still comes to `on_datagrams`, as a batch of one.
    const BATCH_DATAGRAMS: bool = false;

    /// Whether the handler serves `udp://` listeners. `false` (a handler
    /// that only serves connections) leaves `on_datagram` and
    /// `on_datagrams` out of its vtable (NULL), so loopd refuses a
    /// `udp://` listener on it, at start and in `loopd check`, instead of
    /// dropping every datagram in the default [`Handler::on_datagram`].
    const DATAGRAMS: bool = true;

    /// Whether the handler serves connections: stream listeners (`tcp://`,
    /// `tls://`, `unix://`) and outbound [`Ctx::connect`]. `false` (a
    /// handler that only serves `udp://` listeners) leaves the connection
    /// hooks (`on_open`, `on_data`, `on_eof`, `on_writable`, `on_close`,
    /// `on_oversize`, `on_partial`) out of its vtable (NULL), so loopd
    /// refuses a stream listener on it, at start and in `loopd check`,
    /// instead of accepting connections nothing answers, and
    /// [`Ctx::connect`] returns [`Error::Unsupported`] (ABI 1.5 host).
    const STREAMS: bool = true;

    /// Builds an instance for one `[[handler]]` entry named `instance`.
    ///
    /// Called once per entry, at startup (and by `loopd check`), before
    /// anything listens. `config` is the entry's `[handler.config]` table; a
    /// table that does not deserialize into [`Handler::Config`] never gets
    /// here (loopd reports serde's message). `ctx` may be kept: it stays
    /// valid for the life of the instance. Timers may be armed here.
    ///
    /// # Errors
    /// A message saying what is wrong; loopd prints it with the library path
    /// and exits before listening.
    fn create(ctx: &Ctx, instance: &str, config: Self::Config) -> Result<Self, String>;

    /// A connection was accepted, or an outbound [`Ctx::connect`] succeeded.
    ///
    /// `info` (peer and local address, listener URL, framing) is borrowed
    /// for this call. The state returned is owned by loopd for the
    /// connection's life, lent to the hooks below, and returned by value to
    /// [`Handler::on_close`]. Sending from here (a greeting) is fine.
    ///
    /// # Errors
    /// A reason to refuse it: the connection is aborted (logged at debug level)
    /// and `on_close` follows with a default state and [`CloseReason::Handler`].
    fn on_open(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        info: &ConnInfo<'_>,
    ) -> Result<Self::Conn, String> {
        let _ = (ctx, conn, info);
        Ok(Self::Conn::default())
    }

    /// One frame: bytes as they arrived (raw), one line without `\n`/`\r\n`,
    /// or one length-prefixed payload without its header. `data` is borrowed
    /// for this call only: copy what must outlive it.
    ///
    /// Not called while the connection's output queue is over its high
    /// watermark (input is paused until it drains), nor after a close was
    /// requested. A panic here closes the connection.
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn, data: &[u8]) {
        let _ = (ctx, conn, state, data);
    }

    /// The peer shut down its sending side and every complete frame was
    /// delivered. By default the connection closes once its output is sent;
    /// return [`EofAction::KeepOpen`] to keep sending (a streamed response)
    /// and call [`Ctx::close`] when done.
    fn on_eof(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn) -> EofAction {
        let _ = (ctx, conn, state);
        EofAction::Close
    }

    /// A send on `conn` returned [`Error::Again`] and the output queue has
    /// since drained below the low watermark: send more. Only after an
    /// `Again`; a handler that never gets one never sees this hook. A panic
    /// here aborts the connection ([`CloseReason::Handler`]).
    fn on_writable(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn) {
        let _ = (ctx, conn, state);
    }

    /// The connection is gone; exactly once per connection, last. `state` is
    /// `Default::default()` when `on_open` never produced one (a refused
    /// connection, or a [`Ctx::connect`] that failed).
    ///
    /// The socket is already released: sends to `conn` return
    /// [`Error::Closed`] now and [`Error::NoSuchConn`] afterwards. Cancel the
    /// connection's timers and forget its id here.
    fn on_close(&mut self, ctx: &Ctx, conn: ConnId, state: Self::Conn, reason: CloseReason) {
        let _ = (ctx, conn, state, reason);
    }

    /// A datagram arrived on `socket` (a `udp://` listener of this instance)
    /// from `peer`. `data` is borrowed for this call; answer with
    /// [`Ctx::send_datagram`].
    fn on_datagram(&mut self, ctx: &Ctx, socket: SocketId, peer: Option<SocketAddr>, data: &[u8]) {
        let _ = (ctx, socket, peer, data);
    }

    /// With [`Handler::BATCH_DATAGRAMS`], instead of `on_datagram`: the
    /// datagrams that arrived together on `socket` (one `recvmmsg`), in
    /// order, borrowed for this call. Answering them with one
    /// [`Ctx::send_datagrams`] costs one system call where
    /// [`Ctx::send_datagram`] costs one per datagram. The default hands
    /// each to [`Handler::on_datagram`].
    fn on_datagrams(&mut self, ctx: &Ctx, socket: SocketId, batch: Datagrams<'_>) {
        for d in batch.iter() {
            self.on_datagram(ctx, socket, d.peer, d.data);
        }
    }

    /// A timer set with [`Ctx::set_timer`] fired (once), or a repeating one
    /// from [`Ctx::set_repeating_timer`] is due (every interval, same id).
    /// `user_data` is the value it was set with, e.g. the raw id of the
    /// connection it is for. A timer armed with [`Ctx::set_timer_with`] or
    /// [`Ctx::set_repeating_timer_with`] carries a typed payload instead
    /// (`user_data` 0): take it with [`Ctx::take_timer_payload`], or update a
    /// repeating timer's with [`Ctx::with_timer_payload`]. A one-shot
    /// timer's payload not taken here is dropped when this hook returns.
    fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, user_data: u64) {
        let _ = (ctx, timer, user_data);
    }

    /// loopd is shutting down: listeners are closed and open connections have
    /// `shutdown_timeout_ms` to finish. Close idle connections here (and
    /// tell busy ones to wrap up); whatever is still open at the deadline is
    /// closed with [`CloseReason::Shutdown`].
    fn on_shutdown(&mut self, ctx: &Ctx) {
        let _ = ctx;
    }

    /// A frame over `max_frame` is arriving (line or length-prefixed
    /// framing); `frame_size` is its size as far as known. Return
    /// [`OversizeAction::Skip`] to have loopd discard that frame without
    /// buffering it and keep the connection (a reply such as an error line
    /// may be sent from here); the default closes the connection. On a host
    /// older than ABI 1.1 the connection is always closed.
    fn on_oversize(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        state: &mut Self::Conn,
        frame_size: u64,
        max_frame: u64,
    ) -> OversizeAction {
        let _ = (ctx, conn, state, frame_size, max_frame);
        OversizeAction::Close
    }

    /// Line framing: the peer closed after a last line without its `\n`.
    /// By default it is handled like any other line (passed to
    /// [`Handler::on_data`]); override to ignore half-written lines. A
    /// panic here aborts the connection ([`CloseReason::Handler`]).
    fn on_partial(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn, line: &[u8]) {
        self.on_data(ctx, conn, state, line)
    }

    /// One call per listener of the instance, once all are open and before
    /// any traffic. For a UDP listener, `listener` is the socket to pass to
    /// [`Ctx::send_datagram`]. Not called by a host older than ABI 1.1.
    fn on_listen(&mut self, ctx: &Ctx, listener: SocketId, info: &ListenInfo<'_>) {
        let _ = (ctx, listener, info);
    }

    /// A message posted to this instance (ABI 1.3): by [`Ctx::post`] from
    /// another instance, [`Ctx::post_self`], or `loopd::Handle::post` from
    /// another thread of an embedding program. `msg` is borrowed for this
    /// call; messages arrive one call each, in the order they were posted.
    /// Not called by a host older than 1.3 (posting there fails with
    /// [`Error::Unsupported`]).
    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        let _ = (ctx, msg);
    }

    /// A descriptor watched with [`Ctx::watch_fd`] is ready (ABI 1.3).
    /// Read or write it here, without blocking: the watch reports again
    /// while it stays ready. After an event with [`FdEvents::hup`] the
    /// watch is parked until [`Ctx::modify_watch`] or [`Ctx::remove_watch`].
    fn on_fd(&mut self, ctx: &Ctx, watch: WatchId, user_data: u64, events: FdEvents) {
        let _ = (ctx, watch, user_data, events);
    }
}

/// The config of a handler that takes none: only an empty table is accepted.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// The 4-byte big-endian header of a length-prefixed frame with `len` payload
/// bytes, or `None` if `len` does not fit in `u32`.
pub fn length_prefix(len: usize) -> Option<[u8; 4]> {
    u32::try_from(len).ok().map(u32::to_be_bytes)
}

/// The text of `loopd.h`, the ABI's C header (the source of truth for C
/// handlers), for tools that write it out, such as `loopd new-handler --c`.
pub const C_HEADER: &str = include_str!("../include/loopd.h");

/// The `loopd_vtable` of a handler type, for registering it without a
/// dynamic library (embedding).
pub const fn vtable<H: Handler>() -> abi::loopd_vtable {
    glue::vtable::<H>()
}

/// The `loopd_plugin_info.framings` of a handler type ([`Handler::FRAMINGS`]
/// as bits), for registering it without a dynamic library (embedding). A
/// handler whose [`Handler::FRAMING`] (or raw, without one) is not among
/// its `FRAMINGS` does not compile.
pub const fn framings<H: Handler>() -> u32 {
    glue::framings::<H>()
}

#[doc(hidden)]
pub mod __private {
    pub use crate::glue::{adopt, entry, plugin_info, vtable};
}

/// Exports a [`Handler`] type as a loadable loopd plugin.
///
/// Expands to the one symbol loopd looks for, `loopd_plugin_entry_v1`, with
/// static plugin info and vtable. The plugin's name defaults to the crate
/// name; `export_handler!(MyHandler, name = "mine")` sets another.
///
/// Building with `panic = "abort"` is a compile error: loopd contains a
/// handler's panic to one connection, which needs unwinding.
#[macro_export]
macro_rules! export_handler {
    ($ty:ty) => {
        $crate::export_handler!($ty, name = env!("CARGO_PKG_NAME"));
    };
    ($ty:ty, name = $name:expr) => {
        #[cfg(panic = "abort")]
        compile_error!(
            "loopd handlers must be built with panic = \"unwind\": loopd contains a handler's \
             panic to one connection, which needs unwinding. Remove `panic = \"abort\"` from \
             the profile."
        );

        const _: () = {
            static LOOPD_VTABLE: $crate::abi::loopd_vtable = $crate::__private::vtable::<$ty>();
            static LOOPD_INFO: $crate::abi::loopd_plugin_info = $crate::__private::plugin_info::<$ty>(
                &LOOPD_VTABLE,
                concat!($name, "\0"),
                concat!(env!("CARGO_PKG_VERSION"), "\0"),
            );

            /// The loopd plugin entry point (ABI major 1).
            ///
            /// # Safety
            /// `host` must be NULL or point to a valid `loopd_host_api`.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn loopd_plugin_entry_v1(
                host: *const $crate::abi::loopd_host_api,
            ) -> *const $crate::abi::loopd_plugin_info {
                // SAFETY: forwarded from the caller's contract.
                unsafe { $crate::__private::entry(host, &LOOPD_INFO) }
            }
        };
    };
}
