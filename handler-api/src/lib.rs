//! Write loopd handlers in Rust: the handler ABI v1 and a safe layer over it.
//!
//! A handler is a type that implements [`Handler`] plus one
//! [`export_handler!`] line. Built as a `cdylib`, it loads into any loopd of
//! ABI major 1, with no rebuild of loopd. Every hook runs inside
//! `catch_unwind`: a panic closes that one connection (or fails that
//! instance), is logged with the instance name, and the loop keeps serving
//! everyone else.
//!
//! ```
//! use loopd_handler_api::{export_handler, ConnId, Ctx, Framing, Handler, NoConfig};
//!
//! /// Answers every line with its length.
//! struct LineLength;
//!
//! impl Handler for LineLength {
//!     type Config = NoConfig;
//!     type Conn = ();
//!     const FRAMING: Framing = Framing::Line;
//!
//!     fn create(_ctx: &Ctx, _name: &str, _config: NoConfig) -> Result<Self, String> {
//!         Ok(LineLength)
//!     }
//!
//!     fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _state: &mut (), line: &[u8]) {
//!         let reply = format!("{}\n", line.len());
//!         if ctx.send(conn, reply.as_bytes()).is_err() {
//!             // The output queue is full or the connection is closing:
//!             // this handler chooses to drop the peer rather than buffer.
//!             let _ = ctx.close(conn, loopd_handler_api::CloseMode::Abort);
//!         }
//!     }
//! }
//!
//! export_handler!(LineLength, name = "line-length");
//! ```
//!
//! In `Cargo.toml`, `crate-type = ["cdylib"]` (add `"rlib"` to also link the
//! handler statically into a program that embeds loopd). The profile must
//! unwind on panic: building a handler with `panic = "abort"` is a compile
//! error, because a panic could then not be contained.
//!
//! The raw ABI, for handlers written against `loopd.h` by hand, is in [`abi`].
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

pub mod abi;
mod ctx;
mod glue;
mod types;

pub use ctx::Ctx;
pub use types::{
    CloseMode, CloseReason, ConnId, ConnInfo, EofAction, Error, Framing, Level, ListenInfo, Origin,
    OversizeAction, SocketId, TimerId, Transport,
};

use std::net::SocketAddr;

/// A loopd handler. Every hook but [`Handler::create`] has a default that does nothing.
///
/// loopd calls the hooks on its loop thread, one at a time, never
/// re-entrantly: a [`Ctx`] call made inside a hook never runs another hook.
/// `Drop` is the `destroy` hook: it runs once every connection got `on_close`.
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

    /// The oldest host ABI minor this handler works with. Raise it when you
    /// use a host function added in a later minor.
    const MIN_HOST_MINOR: u32 = 0;

    /// Builds an instance for one `[[handler]]` entry named `instance`.
    ///
    /// # Errors
    /// A message saying what is wrong; loopd prints it with the library path
    /// and exits before listening.
    fn create(ctx: &Ctx, instance: &str, config: Self::Config) -> Result<Self, String>;

    /// A connection was accepted, or an outbound [`Ctx::connect`] succeeded.
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
    /// for this call only.
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn, data: &[u8]) {
        let _ = (ctx, conn, state, data);
    }

    /// The peer shut down its sending side and every complete frame was
    /// delivered. By default the connection closes once its output is sent.
    fn on_eof(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn) -> EofAction {
        let _ = (ctx, conn, state);
        EofAction::Close
    }

    /// A send on `conn` returned [`Error::Again`] and the output queue has
    /// since drained below the low watermark: send more.
    fn on_writable(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn) {
        let _ = (ctx, conn, state);
    }

    /// The connection is gone; exactly once per connection, last. `state` is
    /// `Default::default()` when `on_open` never produced one (a refused
    /// connection, or a [`Ctx::connect`] that failed).
    fn on_close(&mut self, ctx: &Ctx, conn: ConnId, state: Self::Conn, reason: CloseReason) {
        let _ = (ctx, conn, state, reason);
    }

    /// A datagram arrived on `socket` from `peer`.
    fn on_datagram(&mut self, ctx: &Ctx, socket: SocketId, peer: Option<SocketAddr>, data: &[u8]) {
        let _ = (ctx, socket, peer, data);
    }

    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, user_data: u64) {
        let _ = (ctx, timer, user_data);
    }

    /// loopd is shutting down: listeners are closed and open connections have
    /// `shutdown_timeout_ms` to finish. Close idle connections here.
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
    /// [`Handler::on_data`]); override to ignore half-written lines.
    fn on_partial(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Self::Conn, line: &[u8]) {
        self.on_data(ctx, conn, state, line)
    }

    /// One call per listener of the instance, once all are open and before
    /// any traffic. For a UDP listener, `listener` is the socket to pass to
    /// [`Ctx::send_datagram`]. Not called by a host older than ABI 1.1.
    fn on_listen(&mut self, ctx: &Ctx, listener: SocketId, info: &ListenInfo<'_>) {
        let _ = (ctx, listener, info);
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

/// The `loopd_vtable` of a handler type, for registering it without a
/// dynamic library (embedding).
pub const fn vtable<H: Handler>() -> abi::loopd_vtable {
    glue::vtable::<H>()
}

#[doc(hidden)]
pub mod __private {
    pub use crate::glue::{entry, plugin_info, vtable};
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
