//! The loopd echo handler: every frame comes back exactly as it arrived.
//!
//! With `raw` framing it returns the bytes it receives, binary-safe, any size.
//! With `line` framing each line comes back followed by `\n`; with
//! `length-prefixed` framing each frame comes back with its 4-byte header.
//!
//! Echo never buffers on its own: loopd stops reading from a connection while
//! that connection's output is over the high watermark, so a peer that sends
//! without reading is slowed down by TCP instead of growing memory.
//!
//! On a graceful shutdown echo closes each connection once it has been
//! quiet (nothing received) for `shutdown_idle_ms` (default 1000), after
//! what it already echoed is sent: an idle client does not hold the
//! shutdown for the whole `shutdown_timeout_ms`, and a busy one finishes.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use loopd_handler_api::{
    CloseMode, CloseReason, ConnId, ConnInfo, Ctx, Error, Framing, Handler, TimerId,
};

/// The `[handler.config]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchoConfig {
    /// During a graceful shutdown, a connection that has received nothing
    /// for this long is closed (after its output is flushed). 1 to
    /// 3,600,000 ms.
    pub shutdown_idle_ms: u64,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            shutdown_idle_ms: 1000,
        }
    }
}

/// The echo handler: its open connections (with a count of what each
/// received, to tell idle ones at shutdown).
#[derive(Debug, Default)]
pub struct Echo {
    open: HashMap<ConnId, Seen>,
    idle: Duration,
    shutdown_timer: Option<TimerId>,
}

/// A connection's frame count, and its value at the last shutdown check.
#[derive(Debug, Default)]
struct Seen {
    frames: Rc<Cell<u64>>,
    checked: u64,
}

/// Per-connection state: the framing to re-apply to each frame, and the
/// frame count the instance reads at shutdown.
#[derive(Debug, Default)]
pub struct EchoConn {
    framing: Framing,
    frames: Rc<Cell<u64>>,
}

impl Handler for Echo {
    type Config = EchoConfig;
    type Conn = EchoConn;
    const FRAMING: Framing = Framing::Raw;
    /// Connections only: loopd refuses a `udp://` listener on it.
    const DATAGRAMS: bool = false;

    fn create(_ctx: &Ctx, _instance: &str, config: EchoConfig) -> Result<Self, String> {
        if !(1..=3_600_000).contains(&config.shutdown_idle_ms) {
            return Err(format!(
                "shutdown_idle_ms = {} must be between 1 and 3600000",
                config.shutdown_idle_ms
            ));
        }
        Ok(Echo {
            idle: Duration::from_millis(config.shutdown_idle_ms),
            ..Echo::default()
        })
    }

    fn on_open(
        &mut self,
        _ctx: &Ctx,
        conn: ConnId,
        info: &ConnInfo<'_>,
    ) -> Result<EchoConn, String> {
        let frames = Rc::new(Cell::new(0));
        self.open.insert(
            conn,
            Seen {
                frames: frames.clone(),
                checked: 0,
            },
        );
        Ok(EchoConn {
            framing: info.framing,
            frames,
        })
    }

    fn on_close(&mut self, ctx: &Ctx, conn: ConnId, _state: EchoConn, _reason: CloseReason) {
        self.open.remove(&conn);
        if self.open.is_empty() {
            if let Some(t) = self.shutdown_timer.take() {
                let _ = ctx.cancel_timer(t);
            }
        }
    }

    fn on_shutdown(&mut self, ctx: &Ctx) {
        for seen in self.open.values_mut() {
            seen.checked = seen.frames.get();
        }
        // Every shutdown_idle_ms, a connection that received nothing since
        // the last look is closed.
        match ctx.set_repeating_timer(self.idle, self.idle, 0) {
            Ok(t) => self.shutdown_timer = Some(t),
            // A host without repeating timers: close everything now.
            Err(_) => {
                for &conn in self.open.keys() {
                    let _ = ctx.close(conn, CloseMode::Flush);
                }
            }
        }
    }

    fn on_timer(&mut self, ctx: &Ctx, _timer: TimerId, _user_data: u64) {
        for (&conn, seen) in self.open.iter_mut() {
            let now = seen.frames.get();
            if now == seen.checked {
                let _ = ctx.close(conn, CloseMode::Flush);
            }
            seen.checked = now;
        }
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut EchoConn, data: &[u8]) {
        state.frames.set(state.frames.get() + 1);
        match ctx.send_frame(conn, state.framing, data) {
            Ok(()) | Err(Error::Closed) | Err(Error::NoSuchConn) => {}
            Err(e) => {
                // loopd stops delivering frames while this connection's output
                // is over the high watermark, so our own replies should never
                // see Again; if they do, closing beats silently dropping bytes.
                ctx.warn(format_args!(
                    "echo: cannot queue {} bytes on {conn}: {e}; closing",
                    data.len()
                ));
                let _ = ctx.close(conn, CloseMode::Flush);
            }
        }
    }
}

#[cfg(feature = "plugin")]
loopd_handler_api::export_handler!(Echo, name = "echo");
