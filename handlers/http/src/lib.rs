//! The loopd http handler: a fast, careful HTTP/1.1 static file server.
//!
//! It serves the files under one root directory over HTTP/1.1 and 1.0:
//! `GET` and `HEAD`, keep-alive and pipelining, conditional requests
//! (`ETag`, `Last-Modified`), single byte ranges, directory index files and
//! redirects. Requests are parsed with `httparse`; paths are percent-decoded
//! and normalised before the file system is touched, and files are opened
//! beneath the root so that no `..`, encoded `..` or symlink reaches outside
//! it. Large files are streamed in chunks as the client reads them, so memory
//! per connection stays bounded whatever the file size. Every wait has a
//! deadline (request head, keep-alive idle, a client that stops reading).
//!
//! Load it from a loopd config:
//!
//! ```toml
//! [[handler]]
//! name = "http"
//! plugin = "http"
//! listen = ["tcp://127.0.0.1:8080"]
//! [handler.config]
//! root = "examples/www"
//! ```
//!
//! Every config key is in [`Config`] and in `docs/handlers/http.md`. Each
//! request is logged at info level under the target `loopd::access`, in the
//! common log format followed by the response time in seconds:
//!
//! ```text
//! 127.0.0.1 - - [06/Nov/2025:08:49:37 +0000] "GET /style.css HTTP/1.1" 200 2311 0.000
//! ```
//!
//! The handler is also a Rust library: a program that embeds loopd can link
//! it statically with `Builder::static_handler::<loopd_http::Http>("http")`.
//!
//! ```
//! use loopd_handler_api::Handler;
//! // The handler declares raw framing: it parses HTTP itself.
//! assert_eq!(loopd_http::Http::FRAMING, loopd_handler_api::Framing::Raw);
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

mod body;
mod cache;
mod clock;
mod cond;
mod config;
mod fs;
#[doc(hidden)]
pub mod fuzzing;
mod mime;
mod path;
mod request;
mod response;
mod server;

pub use config::Config;

use loopd_handler_api::{CloseReason, ConnId, ConnInfo, Ctx, EofAction, Framing, Handler, TimerId};

/// The http handler (one instance per `[[handler]]` entry).
#[derive(Debug)]
pub struct Http {
    server: server::Server,
}

impl Handler for Http {
    type Config = Config;
    type Conn = ();
    const FRAMING: Framing = Framing::Raw;
    const FRAMINGS: &'static [Framing] = &[Framing::Raw];
    /// Connections only: loopd refuses a `udp://` listener on it.
    const DATAGRAMS: bool = false;
    /// The access log uses `log_to` (ABI 1.1); on a 1.0 host it falls back to
    /// the instance's own log target, so 1.0 is enough.
    const MIN_HOST_MINOR: u32 = 0;
    /// Over `tls://`, clients learn by ALPN that this is HTTP/1.1 (a 1.4
    /// host offers it; an older one ignores it).
    const ALPN: &'static std::ffi::CStr = c"http/1.1";

    fn create(ctx: &Ctx, _instance: &str, config: Config) -> Result<Self, String> {
        let settings = config.validate()?;
        Ok(Http {
            server: server::Server::new(ctx, settings)?,
        })
    }

    fn on_open(&mut self, _ctx: &Ctx, conn: ConnId, info: &ConnInfo<'_>) -> Result<(), String> {
        self.server.on_open(conn, info)
    }

    fn on_data(&mut self, _ctx: &Ctx, conn: ConnId, _state: &mut (), data: &[u8]) {
        self.server.on_data(conn, data);
    }

    fn on_eof(&mut self, _ctx: &Ctx, conn: ConnId, _state: &mut ()) -> EofAction {
        if self.server.on_eof(conn) {
            EofAction::KeepOpen
        } else {
            EofAction::Close
        }
    }

    fn on_writable(&mut self, _ctx: &Ctx, conn: ConnId, _state: &mut ()) {
        self.server.on_writable(conn);
    }

    fn on_close(&mut self, _ctx: &Ctx, conn: ConnId, _state: (), reason: CloseReason) {
        self.server.on_close(conn, reason);
    }

    fn on_timer(&mut self, _ctx: &Ctx, timer: TimerId, user_data: u64) {
        self.server.on_timer(timer, user_data);
    }

    fn on_shutdown(&mut self, _ctx: &Ctx) {
        self.server.on_shutdown();
    }
}

/// Whether this build opens files with the POSIX walk (the `portable`
/// feature, or a platform other than Linux) rather than `openat2`. For the
/// integration tests; not a stable API.
#[doc(hidden)]
pub const PORTABLE: bool = cfg!(any(feature = "portable", not(target_os = "linux")));

/// Whether this build has the `portable` feature. For the integration
/// tests, which build the plugin with the same features; not a stable API.
#[doc(hidden)]
pub const PORTABLE_FEATURE: bool = cfg!(feature = "portable");

#[cfg(feature = "plugin")]
loopd_handler_api::export_handler!(Http, name = "http");
