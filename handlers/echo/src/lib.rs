//! The loopd echo handler: every frame comes back exactly as it arrived.
//!
//! With `raw` framing it returns the bytes it receives, binary-safe, any size.
//! With `line` framing each line comes back followed by `\n`; with
//! `length-prefixed` framing each frame comes back with its 4-byte header.
//!
//! Echo never buffers on its own: loopd stops reading from a connection while
//! that connection's output is over the high watermark, so a peer that sends
//! without reading is slowed down by TCP instead of growing memory.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

use loopd_handler_api::{CloseMode, ConnId, ConnInfo, Ctx, Error, Framing, Handler, NoConfig};

/// The echo handler. Stateless apart from each connection's framing.
#[derive(Debug, Default)]
pub struct Echo;

/// Per-connection state: the framing to re-apply to each frame.
#[derive(Debug, Default)]
pub struct EchoConn {
    framing: Framing,
}

impl Handler for Echo {
    type Config = NoConfig;
    type Conn = EchoConn;
    const FRAMING: Framing = Framing::Raw;

    fn create(_ctx: &Ctx, _instance: &str, _config: NoConfig) -> Result<Self, String> {
        Ok(Echo)
    }

    fn on_open(
        &mut self,
        _ctx: &Ctx,
        _conn: ConnId,
        info: &ConnInfo<'_>,
    ) -> Result<EchoConn, String> {
        Ok(EchoConn {
            framing: info.framing,
        })
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut EchoConn, data: &[u8]) {
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
