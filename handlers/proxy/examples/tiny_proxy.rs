//! A TCP/Unix proxy in one file, built step by step in
//! docs/writing-handlers.md ("A proxy, step by step"): that section's Rust
//! blocks, put end to end, are this file (tests/proxy_walkthrough.rs checks
//! it, builds it and runs traffic through it).

use std::collections::HashMap;

use loopd_handler_api::{
    export_handler, CloseMode, CloseReason, ConnId, ConnInfo, ConnectOptions, Ctx, EofAction,
    Error, Framing, Handler, Origin,
};
use serde::Deserialize;

/// `[handler.config]`: where to forward every client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `tcp://IP:PORT` or `unix://PATH`.
    upstream: String,
}

/// The instance: the upstream, and every client/upstream pair.
#[derive(Debug)]
pub struct TinyProxy {
    upstream: String,
    pairs: HashMap<u64, Pair>,
    /// Upstream connections not open yet, to their pair.
    dialing: HashMap<ConnId, u64>,
    next: u64,
}

/// Which end of a pair a connection is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Side {
    #[default]
    Client,
    Upstream,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// Per-connection state: its pair (0: none yet) and which end it is.
#[derive(Debug, Default)]
pub struct End {
    pair: u64,
    side: Side,
}

/// One direction of a pair.
#[derive(Debug, Default)]
struct Flow {
    /// A chunk the destination refused with AGAIN.
    held: Vec<u8>,
    /// We paused the source.
    paused: bool,
    /// The source sent EOF.
    eof: bool,
}

/// A client and its upstream connection.
#[derive(Debug)]
struct Pair {
    client: ConnId,
    upstream: ConnId,
    /// Client to upstream, and back.
    up: Flow,
    down: Flow,
    /// Ends that have not had on_close yet.
    open: u8,
    /// Both directions are over.
    done: bool,
    /// One end went away mid-stream; the other is being aborted.
    broken: bool,
}

impl Pair {
    fn conn(&self, side: Side) -> ConnId {
        match side {
            Side::Client => self.client,
            Side::Upstream => self.upstream,
        }
    }

    /// The direction whose source is `side`.
    fn flow(&mut self, side: Side) -> &mut Flow {
        match side {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }
}

impl TinyProxy {
    /// A client was accepted: dial its upstream, and read nothing from the
    /// client until the upstream answers.
    fn accept(&mut self, ctx: &Ctx, client: ConnId, info: &ConnInfo<'_>) -> Result<End, String> {
        if info.framing != Framing::Raw {
            return Err("a proxy needs framing = \"raw\"".into());
        }
        let upstream = ctx
            .connect_with(&self.upstream, &upstream_options())
            .map_err(|e| format!("connect to {}: {e}", self.upstream))?;
        if let Err(e) = ctx.pause_read(client) {
            let _ = ctx.close(upstream, CloseMode::Abort);
            return Err(e.to_string());
        }
        let key = self.next;
        self.next += 1;
        self.dialing.insert(upstream, key);
        self.pairs.insert(
            key,
            Pair {
                client,
                upstream,
                up: Flow::default(),
                down: Flow::default(),
                open: 2,
                done: false,
                broken: false,
            },
        );
        Ok(End {
            pair: key,
            side: Side::Client,
        })
    }

    /// Our upstream connection is open: start reading its client.
    fn connected(&mut self, ctx: &Ctx, upstream: ConnId) -> Result<End, String> {
        let key = self.dialing.remove(&upstream).ok_or("not ours")?;
        let pair = self.pairs.get(&key).ok_or("its client is gone")?;
        let _ = ctx.resume_read(pair.client);
        Ok(End {
            pair: key,
            side: Side::Upstream,
        })
    }
}

impl TinyProxy {
    /// Bytes from one end go to the other. When the other end cannot take
    /// more, stop reading this end until it can.
    fn forward(&mut self, ctx: &Ctx, end: &End, data: &[u8]) {
        let Some(pair) = self.pairs.get_mut(&end.pair) else {
            return;
        };
        let (src, dst) = (pair.conn(end.side), pair.conn(end.side.other()));
        let flow = pair.flow(end.side);
        match ctx.send(dst, data) {
            Ok(()) => return,
            // Nothing was queued: keep the chunk for on_writable.
            Err(Error::Again) => flow.held = data.to_vec(),
            // dst is closing: its on_close ends the pair.
            Err(_) => {}
        }
        flow.paused = true;
        let _ = ctx.pause_read(src);
    }

    /// The destination of the direction from `from` can take more: send
    /// what is held, then read the source again.
    fn drain(&mut self, ctx: &Ctx, key: u64, from: Side) {
        let Some(pair) = self.pairs.get_mut(&key) else {
            return;
        };
        let (src, dst) = (pair.conn(from), pair.conn(from.other()));
        let flow = pair.flow(from);
        if !flow.held.is_empty() {
            // AGAIN once more: on_writable comes again. Closed: on_close.
            if ctx.send(dst, &flow.held).is_err() {
                return;
            }
            flow.held = Vec::new();
        }
        if flow.paused {
            flow.paused = false;
            let _ = ctx.resume_read(src);
        }
    }
}

impl TinyProxy {
    /// One end sent EOF, after every byte it sent was forwarded. Pass it
    /// on as a half-close; when both directions are over, end the pair.
    fn eof(&mut self, ctx: &Ctx, end: &End) {
        let Some(pair) = self.pairs.get_mut(&end.pair) else {
            return;
        };
        pair.flow(end.side).eof = true;
        let _ = ctx.shutdown_write(pair.conn(end.side.other()));
        if !(pair.up.eof && pair.down.eof) {
            return;
        }
        pair.done = true;
        // An end with nothing left to send closes now; one still sending
        // its queue is closed by loopd once that is sent (it has read EOF
        // and its sending side is shut).
        for conn in [pair.client, pair.upstream] {
            if ctx.output_queued(conn) == Ok(0) {
                let _ = ctx.close(conn, CloseMode::Flush);
            }
        }
    }
}

impl TinyProxy {
    /// One end is gone. Mid-stream (a reset, an error, a failed connect)
    /// the other end is aborted too; the pair is forgotten once both are.
    fn closed(&mut self, ctx: &Ctx, conn: ConnId, end: End) {
        // An upstream that never opened has no state of its own.
        let key = match end.pair {
            0 => match self.dialing.remove(&conn) {
                Some(key) => key,
                None => return,
            },
            key => key,
        };
        let Some(pair) = self.pairs.get_mut(&key) else {
            return;
        };
        pair.open -= 1;
        if pair.open == 0 {
            self.pairs.remove(&key);
        } else if !pair.done && !pair.broken {
            pair.broken = true;
            let other = if conn == pair.client {
                pair.upstream
            } else {
                pair.client
            };
            let _ = ctx.close(other, CloseMode::Abort);
        }
    }
}

/// The upstream connection's watermarks: `send` refuses with AGAIN at
/// UP_HIGH bytes queued, and on_writable follows below UP_LOW.
const UP_HIGH: usize = 256 << 10;
const UP_LOW: usize = 64 << 10;

/// Raw bytes whatever the instance's framing, and read on while the queue
/// toward the upstream is full: its replies must keep flowing meanwhile.
fn upstream_options() -> ConnectOptions {
    ConnectOptions::new()
        .framing(Framing::Raw)
        .watermarks(UP_HIGH, UP_LOW)
        .keep_reading(true)
}

impl Handler for TinyProxy {
    type Config = Config;
    type Conn = End;
    const FRAMING: Framing = Framing::Raw;
    // pause_read, resume_read, shutdown_write, connect_with (1.3) and
    // keep_reading (1.4).
    const MIN_HOST_MINOR: u32 = 4;

    fn create(_ctx: &Ctx, _name: &str, config: Config) -> Result<Self, String> {
        let url = config.upstream;
        if !url.starts_with("tcp://") && !url.starts_with("unix://") {
            return Err(format!(
                "upstream `{url}`: use tcp://IP:PORT or unix://PATH"
            ));
        }
        Ok(TinyProxy {
            upstream: url,
            pairs: HashMap::new(),
            dialing: HashMap::new(),
            next: 1,
        })
    }

    fn on_open(&mut self, ctx: &Ctx, conn: ConnId, info: &ConnInfo<'_>) -> Result<End, String> {
        match info.origin {
            Origin::Connected => self.connected(ctx, conn),
            _ => self.accept(ctx, conn, info),
        }
    }

    fn on_data(&mut self, ctx: &Ctx, _conn: ConnId, end: &mut End, data: &[u8]) {
        self.forward(ctx, end, data);
    }

    fn on_writable(&mut self, ctx: &Ctx, _conn: ConnId, end: &mut End) {
        self.drain(ctx, end.pair, end.side.other());
    }

    fn on_eof(&mut self, ctx: &Ctx, _conn: ConnId, end: &mut End) -> EofAction {
        self.eof(ctx, end);
        EofAction::KeepOpen
    }

    fn on_close(&mut self, ctx: &Ctx, conn: ConnId, end: End, _reason: CloseReason) {
        self.closed(ctx, conn, end);
    }
}

export_handler!(TinyProxy, name = "tiny-proxy");
