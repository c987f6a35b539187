//! The loopd proxy handler: every accepted connection is forwarded, byte for
//! byte, to one configured upstream (TCP, TLS or a Unix socket), as
//! HAProxy's `mode tcp` or nginx's `stream` proxy do.
//!
//! ```toml
//! [[handler]]
//! name = "redis-proxy"
//! plugin = "proxy"
//! listen = ["tcp://127.0.0.1:7379"]
//! [handler.config]
//! upstream = "tcp://127.0.0.1:6379"
//! ```
//!
//! - **One upstream connection per client**, opened when the client is
//!   accepted. Until it is connected nothing is read from the client: what
//!   the client sends waits in the kernel (TCP slows it down), so loopd
//!   holds none of it. An upstream that refuses, cannot be reached or does
//!   not answer within `connect_timeout_ms` closes the client, with a
//!   warning naming the upstream (the first at once, then at most one every
//!   10 seconds, with the count).
//! - **Back-pressure both ways, each direction on its own.** Toward the
//!   client, `send` refuses with `AGAIN` at the client connection's high
//!   watermark; toward the upstream, at `upstream_high_watermark`. The
//!   proxy keeps that one chunk, stops reading the source (`pause_read`),
//!   and the destination's `on_writable` (below its low watermark) sends
//!   the chunk and resumes the source. A pair therefore holds at most, per
//!   direction, one output queue (its high watermark plus one chunk) and
//!   one chunk: a slow reader on either side costs a bounded amount of
//!   memory, whatever the other side sends.
//!
//!   The upstream connection is opened with `keep_reading` (ABI 1.4):
//!   loopd's own rule (a connection whose output queue is at its high
//!   watermark is not read) would otherwise stop the upstream's replies
//!   while the queue toward it is full, and an upstream that stops reading
//!   while it cannot write (loopd's own echo, any blocking server) would
//!   never drain it. Each direction is paused by the proxy alone, for its
//!   own destination.
//! - **Half-close both ways.** A side's EOF is forwarded as a
//!   `shutdown(SHUT_WR)` of the other side once every byte before it has
//!   been forwarded (`on_eof` keeps the connection open; `shutdown_write`
//!   waits for the queue to drain). The pair ends when both directions have
//!   ended: `printf hi | nc -q1` through the proxy gets the whole reply.
//! - **Errors end the pair.** A reset, an I/O error or a timeout on one side
//!   aborts the other.
//! - **Raw bytes only**: the upstream connection is opened with raw framing
//!   whatever the instance has. The proxy declares raw as its only framing
//!   (ABI 1.5), so loopd refuses an entry with another `framing` before it
//!   starts; a host older than 1.5 does not check, and then a client
//!   listener with another framing is refused connection by connection,
//!   with a warning.
//!
//! docs/handlers/proxy.md has every key and what each costs.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod config;

pub use config::{
    Config, Settings, Upstream, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_SHUTDOWN_IDLE_MS,
    DEFAULT_UPSTREAM_HIGH, DEFAULT_UPSTREAM_LOW, MAX_MS, MAX_WATERMARK,
};

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use loopd_handler_api::{
    CloseMode, CloseReason, ConnId, ConnInfo, ConnectOptions, Ctx, EofAction, Error, Framing,
    Handler, Origin, TimerId,
};

/// At most one warning of a kind (upstream down, wrong framing) per this
/// many milliseconds; the next one says how many it stands for.
const LOG_INTERVAL_MS: u64 = 10_000;
/// How often a shutting-down proxy looks for idle pairs (at most).
const SWEEP_INTERVAL_MS: u64 = 100;
/// `user_data` of the shutdown sweep timer (pair keys start at 1).
const SWEEP: u64 = 0;

/// A proxy instance: its upstream, and every client/upstream pair.
#[derive(Debug)]
pub struct Proxy {
    settings: Settings,
    /// The upstream as `connect_with` takes it.
    url: String,
    /// Raw framing for the upstream side, whatever the instance has,
    /// `upstream_high_watermark`/`upstream_low_watermark`, and reading on
    /// while its queue is full (see the crate docs).
    options: ConnectOptions,
    pairs: HashMap<u64, Pair>,
    /// Upstream connections not opened yet, to their pair.
    connecting: HashMap<ConnId, u64>,
    next_key: u64,
    shutting_down: bool,
    /// Clients closed because the upstream could not be reached.
    down: Throttle,
    /// Clients refused because the listener's framing is not raw.
    wrong_framing: Throttle,
    /// Connections refused because the upstream is the listener that
    /// accepted them.
    own_listener: Throttle,
}

/// Which connection of a pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The accepted connection.
    #[default]
    Client,
    /// The outbound connection to the upstream.
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

/// Per-connection state: which pair, and which side of it.
#[derive(Debug, Default)]
pub struct ProxyConn {
    /// The pair's key; 0 for a connection that is not part of one.
    pair: u64,
    side: Side,
}

/// One client and its upstream connection.
#[derive(Debug)]
struct Pair {
    client: ConnId,
    upstream: ConnId,
    /// The client's address, for log lines (`None`: a Unix-socket client).
    peer: Option<SocketAddr>,
    /// The upstream's `on_open` came.
    connected: bool,
    /// Not closed yet (no `on_close`).
    client_open: bool,
    upstream_open: bool,
    /// Client to upstream.
    up: Flow,
    /// Upstream to client.
    down: Flow,
    /// Both directions ended: each side closes once its output is sent.
    finished: bool,
    /// The proxy closed both sides itself (a timeout, idle at shutdown).
    closing: bool,
    connect_timer: Option<TimerId>,
    idle_timer: Option<TimerId>,
    /// When a byte last went through (`Ctx::now_ms`).
    last_active_ms: u64,
    /// Bytes queued on both sides at the last idle check.
    queued_seen: usize,
}

/// One direction of a pair.
#[derive(Debug, Default)]
struct Flow {
    /// A chunk the destination refused with `AGAIN`; the source is paused
    /// until the destination's `on_writable` sends it.
    held: Vec<u8>,
    /// The proxy paused the source for this direction.
    paused: bool,
    /// The source sent EOF.
    eof: bool,
    /// The destination's sending side is shut (or will be, once its queue
    /// is flushed): this direction is over.
    ended: bool,
    /// Bytes handed to the destination.
    bytes: u64,
}

impl Pair {
    fn conn(&self, side: Side) -> ConnId {
        match side {
            Side::Client => self.client,
            Side::Upstream => self.upstream,
        }
    }

    fn is_open(&self, side: Side) -> bool {
        match side {
            Side::Client => self.client_open,
            Side::Upstream => self.upstream_open,
        }
    }

    /// The direction whose source is `side`.
    fn from(&mut self, side: Side) -> &mut Flow {
        match side {
            Side::Client => &mut self.up,
            Side::Upstream => &mut self.down,
        }
    }

    /// Bytes queued in loopd for both sides, plus chunks held back.
    fn in_flight(&self, ctx: &Ctx) -> usize {
        let queued = |side| {
            if self.is_open(side) {
                ctx.output_queued(self.conn(side)).unwrap_or(0)
            } else {
                0
            }
        };
        queued(Side::Client) + queued(Side::Upstream) + self.up.held.len() + self.down.held.len()
    }
}

/// A peer address for log lines.
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("a unix-socket peer"),
        }
    }
}

/// Rate limit for a warning: the first at once, then at most one per
/// [`LOG_INTERVAL_MS`], with how many events it stands for.
#[derive(Debug, Default)]
struct Throttle {
    count: u64,
    logged_ms: Option<u64>,
}

impl Throttle {
    /// Counts one event at `now`; the count to report if a line is due.
    fn hit(&mut self, now: u64) -> Option<u64> {
        self.count += 1;
        let due = self
            .logged_ms
            .is_none_or(|last| now.saturating_sub(last) >= LOG_INTERVAL_MS);
        if !due {
            return None;
        }
        self.logged_ms = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Proxy {
    /// Logs (rate-limited) that a client was closed because the upstream
    /// could not be reached.
    fn report_down(&mut self, ctx: &Ctx, peer: Option<SocketAddr>, why: fmt::Arguments<'_>) {
        if let Some(n) = self.down.hit(ctx.now_ms()) {
            let more = if n > 1 {
                format!(" ({n} clients closed for this since the last report)")
            } else {
                String::new()
            };
            ctx.warn(format_args!(
                "upstream {} {why}: closed the client from {}{more}",
                self.url,
                Peer(peer)
            ));
        }
    }

    /// The upstream connection of pair `key` is open: start reading the client.
    fn upstream_opened(&mut self, ctx: &Ctx, conn: ConnId) -> Result<ProxyConn, String> {
        let key = self
            .connecting
            .remove(&conn)
            .ok_or("an outbound connection the proxy did not open")?;
        let pair = self.pairs.get_mut(&key).ok_or("its client is gone")?;
        pair.connected = true;
        if let Some(t) = pair.connect_timer.take() {
            let _ = ctx.cancel_timer(t);
        }
        pair.last_active_ms = ctx.now_ms();
        // The client was paused since it was accepted. If it is closing
        // already, its on_close takes this side down too.
        let _ = ctx.resume_read(pair.client);
        if let Some(idle) = self.settings.idle_timeout {
            pair.idle_timer = ctx.set_timer(idle, key).ok();
        }
        Ok(ProxyConn {
            pair: key,
            side: Side::Upstream,
        })
    }

    /// Bytes from `from` go to the other side. When that side cannot take
    /// more (`AGAIN` at its high watermark), the chunk is held and `from`
    /// stops being read until the other side's `on_writable`.
    fn forward(ctx: &Ctx, pair: &mut Pair, from: Side, data: &[u8]) {
        let (src, dst) = (pair.conn(from), pair.conn(from.other()));
        let flow = pair.from(from);
        if !flow.held.is_empty() {
            // A paused source gets no `on_data`, and `drain` sends the held
            // chunk before it resumes the source: this does not happen. If
            // it did, these bytes must still go after the held ones.
            flow.held.extend_from_slice(data);
            let _ = ctx.pause_read(src);
            return;
        }
        match ctx.send(dst, data) {
            Ok(()) => flow.bytes += data.len() as u64,
            // Nothing was queued: keep the chunk for on_writable.
            Err(Error::Again) => {
                flow.held.extend_from_slice(data);
                flow.paused = true;
                let _ = ctx.pause_read(src);
            }
            // The destination is closing: its on_close ends the pair, and
            // nothing can carry these bytes any more. Stop reading them.
            Err(_) => {
                flow.paused = true;
                let _ = ctx.pause_read(src);
            }
        }
    }

    /// The destination of the direction from `from` can take more (its
    /// `on_writable`): send the held chunk, then resume the source (or end
    /// the direction if the source has sent EOF meanwhile).
    fn drain(ctx: &Ctx, pair: &mut Pair, from: Side) {
        let (src, dst) = (pair.conn(from), pair.conn(from.other()));
        let flow = pair.from(from);
        if !flow.held.is_empty() {
            match ctx.send(dst, &flow.held) {
                Ok(()) => {
                    flow.bytes += flow.held.len() as u64;
                    // Freed rather than kept: a pair that was slow once
                    // should not hold a chunk's worth of memory while idle.
                    flow.held = Vec::new();
                }
                // Full again (another send got in first): on_writable
                // comes again. Closed: its on_close ends the pair.
                Err(_) => return,
            }
        }
        if flow.paused {
            flow.paused = false;
            let _ = ctx.resume_read(src);
        }
        if flow.eof && !flow.ended {
            Proxy::end_direction(ctx, pair, from);
        }
    }

    /// Every byte from `from` up to its EOF was handed to the other side:
    /// half-close the other side (after its queue is flushed), or, if the
    /// opposite direction is over too, end the pair.
    fn end_direction(ctx: &Ctx, pair: &mut Pair, from: Side) {
        pair.from(from).ended = true;
        let dst = pair.conn(from.other());
        let _ = ctx.shutdown_write(dst);
        if !pair.from(from.other()).ended {
            return;
        }
        // Both directions are over. A side with nothing left to send is
        // closed now; one still flushing its queue is closed by loopd once
        // that is sent and its half-close done (it has read EOF too).
        pair.finished = true;
        for side in [Side::Client, Side::Upstream] {
            if pair.is_open(side) && ctx.output_queued(pair.conn(side)) == Ok(0) {
                let _ = ctx.close(pair.conn(side), CloseMode::Flush);
            }
        }
    }

    /// Closes both sides of a pair on the proxy's own decision.
    fn close_pair(ctx: &Ctx, pair: &mut Pair, mode: CloseMode) {
        pair.closing = true;
        for side in [Side::Client, Side::Upstream] {
            if pair.is_open(side) {
                let _ = ctx.close(pair.conn(side), mode);
            }
        }
    }

    fn connect_timed_out(&mut self, ctx: &Ctx, key: u64) {
        let Some(pair) = self.pairs.get_mut(&key) else {
            return;
        };
        pair.connect_timer = None;
        if pair.connected {
            return;
        }
        let peer = pair.peer;
        Proxy::close_pair(ctx, pair, CloseMode::Abort);
        let timeout = ms(self.settings.connect_timeout);
        self.report_down(
            ctx,
            peer,
            format_args!("did not answer within connect_timeout_ms ({timeout} ms)"),
        );
    }

    fn idle_check(&mut self, ctx: &Ctx, key: u64) {
        let (Some(idle), Some(pair)) = (self.settings.idle_timeout, self.pairs.get_mut(&key))
        else {
            return;
        };
        pair.idle_timer = None;
        if pair.closing || !pair.connected {
            return;
        }
        let now = ctx.now_ms();
        // A queue that drains counts as traffic: loopd is writing it.
        let in_flight = pair.in_flight(ctx);
        if in_flight != pair.queued_seen {
            pair.queued_seen = in_flight;
            pair.last_active_ms = now;
        }
        let quiet = now.saturating_sub(pair.last_active_ms);
        if quiet >= ms(idle) {
            ctx.debug(format_args!(
                "closing the pair of the client from {}: idle for {quiet} ms (idle_timeout_ms {})",
                Peer(pair.peer),
                ms(idle)
            ));
            Proxy::close_pair(ctx, pair, CloseMode::Flush);
        } else {
            let left = Duration::from_millis(ms(idle) - quiet);
            pair.idle_timer = ctx.set_timer(left, key).ok();
        }
    }

    /// During a shutdown: closes pairs that carried nothing for
    /// `shutdown_idle_ms` and have nothing queued.
    fn sweep(&mut self, ctx: &Ctx) {
        let Some(idle) = self.settings.shutdown_idle else {
            return;
        };
        let now = ctx.now_ms();
        for pair in self.pairs.values_mut() {
            if pair.closing || pair.finished || !pair.connected {
                continue;
            }
            if pair.in_flight(ctx) > 0 {
                pair.last_active_ms = now;
            } else if now.saturating_sub(pair.last_active_ms) >= ms(idle) {
                Proxy::close_pair(ctx, pair, CloseMode::Flush);
            }
        }
    }
}

impl Handler for Proxy {
    type Config = Config;
    type Conn = ProxyConn;
    const FRAMING: Framing = Framing::Raw;
    const FRAMINGS: &'static [Framing] = &[Framing::Raw];
    /// Connections only: loopd refuses a `udp://` listener on it.
    const DATAGRAMS: bool = false;
    // pause_read, resume_read, shutdown_write and connect_with (ABI 1.3),
    // and keep_reading for the upstream connection (ABI 1.4).
    const MIN_HOST_MINOR: u32 = 4;

    fn create(ctx: &Ctx, _instance: &str, config: Config) -> Result<Self, String> {
        let settings = config.validate()?;
        let url = settings.upstream.to_string();
        ctx.debug(format_args!(
            "upstream {url}, connect_timeout_ms {}, idle_timeout_ms {}, shutdown_idle_ms {}, \
             upstream watermarks {}/{}",
            ms(settings.connect_timeout),
            settings.idle_timeout.map_or(0, ms),
            settings.shutdown_idle.map_or(0, ms),
            settings.upstream_watermarks.0,
            settings.upstream_watermarks.1,
        ));
        let (high, low) = settings.upstream_watermarks;
        let mut options = ConnectOptions::new()
            .framing(Framing::Raw)
            .watermarks(high, low)
            .keep_reading(true);
        if let Some(name) = &settings.server_name {
            options = options.server_name(name);
        }
        Ok(Proxy {
            settings,
            url,
            options,
            pairs: HashMap::new(),
            connecting: HashMap::new(),
            next_key: 1,
            shutting_down: false,
            down: Throttle::default(),
            wrong_framing: Throttle::default(),
            own_listener: Throttle::default(),
        })
    }

    fn on_open(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        info: &ConnInfo<'_>,
    ) -> Result<ProxyConn, String> {
        if info.origin == Origin::Connected {
            return self.upstream_opened(ctx, conn);
        }
        if info.framing != Framing::Raw {
            let name = match info.framing {
                Framing::Line => "line",
                Framing::LengthPrefixed => "length-prefixed",
                _ => "unknown",
            };
            if let Some(n) = self.wrong_framing.hit(ctx.now_ms()) {
                ctx.warn(format_args!(
                    "the proxy forwards raw bytes and needs framing = \"raw\" (its default), not \
                     \"{name}\": refused {n} connection(s), the latest from {}; remove the \
                     framing key or set it to \"raw\"",
                    Peer(info.peer)
                ));
            }
            return Err(format!("unsupported framing \"{name}\""));
        }
        if self.shutting_down {
            return Err("shutting down".into());
        }
        // Connecting would reach this very listener, which would connect
        // again, up to max_connections.
        if self.settings.upstream.is_listener_of(info) {
            if let Some(n) = self.own_listener.hit(ctx.now_ms()) {
                ctx.error(format_args!(
                    "upstream {} is this proxy's own listener {}: each connection would connect \
                     to itself again; refused {n} connection(s); point upstream at another server",
                    self.url, info.endpoint
                ));
            }
            return Err("the upstream is this listener".into());
        }
        let upstream = match ctx.connect_with(&self.url, &self.options) {
            Ok(id) => id,
            Err(e) => {
                let tls = matches!(self.settings.upstream, Upstream::Tls(_));
                let why = match e {
                    Error::Limit => "cannot be connected to: loopd is at max_connections",
                    // loopd refuses a tls:// connect it has no CAs to
                    // trust for, or no TLS at all.
                    Error::Invalid if tls => {
                        "cannot be connected to: loopd has no CA certificates to trust for it: \
                         set tls_ca = \"PATH\" on the proxy's [[handler]] entry (the PEM CA \
                         that signed the upstream's certificate), or install the system's CA \
                         certificates"
                    }
                    Error::Unsupported if tls => {
                        "cannot be connected to: this loopd was built without TLS"
                    }
                    _ => "cannot be connected to",
                };
                self.report_down(ctx, info.peer, format_args!("{why} ({e})"));
                return Err(format!("connect to the upstream: {e}"));
            }
        };
        let key = self.next_key;
        // Nothing is read from the client until the upstream is connected:
        // what it sends meanwhile waits in the kernel.
        let paused = ctx.pause_read(conn);
        let timer = ctx.set_timer(self.settings.connect_timeout, key);
        let (Ok(()), Ok(timer)) = (paused, timer) else {
            let _ = ctx.close(upstream, CloseMode::Abort);
            return Err("cannot pause the client or arm its connect timeout".into());
        };
        self.next_key += 1;
        self.connecting.insert(upstream, key);
        self.pairs.insert(
            key,
            Pair {
                client: conn,
                upstream,
                peer: info.peer,
                connected: false,
                client_open: true,
                upstream_open: true,
                up: Flow::default(),
                down: Flow::default(),
                finished: false,
                closing: false,
                connect_timer: Some(timer),
                idle_timer: None,
                last_active_ms: ctx.now_ms(),
                queued_seen: 0,
            },
        );
        Ok(ProxyConn {
            pair: key,
            side: Side::Client,
        })
    }

    fn on_data(&mut self, ctx: &Ctx, _conn: ConnId, state: &mut ProxyConn, data: &[u8]) {
        if let Some(pair) = self.pairs.get_mut(&state.pair) {
            pair.last_active_ms = ctx.now_ms();
            Proxy::forward(ctx, pair, state.side, data);
        }
    }

    fn on_eof(&mut self, ctx: &Ctx, _conn: ConnId, state: &mut ProxyConn) -> EofAction {
        let Some(pair) = self.pairs.get_mut(&state.pair) else {
            return EofAction::Close;
        };
        let flow = pair.from(state.side);
        flow.eof = true;
        // A held chunk goes first; `drain` ends the direction after it.
        if flow.held.is_empty() {
            Proxy::end_direction(ctx, pair, state.side);
        }
        EofAction::KeepOpen
    }

    fn on_writable(&mut self, ctx: &Ctx, _conn: ConnId, state: &mut ProxyConn) {
        if let Some(pair) = self.pairs.get_mut(&state.pair) {
            Proxy::drain(ctx, pair, state.side.other());
        }
    }

    fn on_close(&mut self, ctx: &Ctx, conn: ConnId, state: ProxyConn, reason: CloseReason) {
        // An upstream connection that never opened has no state: find it.
        let (key, side) = if state.pair != 0 {
            (state.pair, state.side)
        } else if let Some(key) = self.connecting.remove(&conn) {
            (key, Side::Upstream)
        } else {
            return;
        };
        let Some(pair) = self.pairs.get_mut(&key) else {
            return;
        };
        match side {
            Side::Client => pair.client_open = false,
            Side::Upstream => pair.upstream_open = false,
        }
        let other = side.other();
        if pair.is_open(other) && !pair.finished && !pair.closing {
            // Mid-stream (a reset, an error, a failed connect, the flush
            // timeout): the other side goes too. Once the stream has
            // started it is reset (ABI 1.6), so a broken stream never looks
            // like a clean end to it; before, the client is just closed.
            pair.closing = true;
            let mode = if pair.connected && reason != CloseReason::ConnectFailed {
                CloseMode::Reset
            } else {
                CloseMode::Abort
            };
            let _ = ctx.close(pair.conn(other), mode);
            if side == Side::Upstream && reason == CloseReason::ConnectFailed {
                let peer = pair.peer;
                match self.settings.upstream {
                    // loopd tells a handler only that the connect failed;
                    // it logs a failed handshake's reason itself.
                    Upstream::Tls(addr) => {
                        let name = self
                            .settings
                            .server_name
                            .clone()
                            .unwrap_or_else(|| addr.ip().to_string());
                        self.report_down(
                            ctx,
                            peer,
                            format_args!(
                                "refused, is unreachable or failed the TLS handshake (its \
                                 certificate must be signed by a CA loopd trusts for it \
                                 (tls_ca, else the system's) and carry {name}; loopd's own \
                                 warning on the handshake says which) ({reason})"
                            ),
                        )
                    }
                    _ => self.report_down(
                        ctx,
                        peer,
                        format_args!("refused or is unreachable ({reason})"),
                    ),
                }
            }
        }
        let Some(pair) = self.pairs.get(&key) else {
            return;
        };
        if pair.client_open || pair.upstream_open {
            return;
        }
        let pair = self.pairs.remove(&key).expect("looked up above");
        for t in [pair.connect_timer, pair.idle_timer].into_iter().flatten() {
            let _ = ctx.cancel_timer(t);
        }
        ctx.debug(format_args!(
            "the client from {} is done: {} bytes to the upstream, {} bytes back{}",
            Peer(pair.peer),
            pair.up.bytes,
            pair.down.bytes,
            if pair.finished { "" } else { " (cut short)" }
        ));
    }

    fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, key: u64) {
        if key == SWEEP {
            return self.sweep(ctx);
        }
        let Some(pair) = self.pairs.get(&key) else {
            return;
        };
        if pair.connect_timer == Some(timer) {
            self.connect_timed_out(ctx, key);
        } else if pair.idle_timer == Some(timer) {
            self.idle_check(ctx, key);
        }
    }

    fn on_shutdown(&mut self, ctx: &Ctx) {
        self.shutting_down = true;
        // Pairs still connecting have forwarded nothing: close them now.
        for pair in self.pairs.values_mut() {
            if !pair.connected && !pair.closing {
                Proxy::close_pair(ctx, pair, CloseMode::Abort);
            }
        }
        // Every other pair may finish; idle ones are closed as they are found.
        if let Some(idle) = self.settings.shutdown_idle {
            self.sweep(ctx);
            let every = Duration::from_millis(ms(idle).clamp(1, SWEEP_INTERVAL_MS));
            if ctx.set_repeating_timer(every, every, SWEEP).is_err() {
                ctx.warn(
                    "cannot arm the shutdown timer: idle pairs stay until shutdown_timeout_ms",
                );
            }
        }
    }
}

#[cfg(feature = "plugin")]
loopd_handler_api::export_handler!(Proxy, name = "proxy");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_reports_the_first_at_once_then_counts() {
        let mut t = Throttle::default();
        assert_eq!(t.hit(1_000), Some(1));
        assert_eq!(t.hit(1_001), None);
        assert_eq!(t.hit(5_000), None);
        assert_eq!(t.hit(11_000), Some(3));
        assert_eq!(t.hit(11_001), None);
    }

    #[test]
    fn sides_and_flows() {
        assert_eq!(Side::Client.other(), Side::Upstream);
        assert_eq!(Side::Upstream.other(), Side::Client);
        assert_eq!(Peer(None).to_string(), "a unix-socket peer");
        assert_eq!(
            Peer(Some("127.0.0.1:9".parse().unwrap())).to_string(),
            "127.0.0.1:9"
        );
    }
}
