//! The loopd udp-broadcast handler: a broadcast relay for local services.
//!
//! Every datagram that arrives on one of the handler's `udp://` listeners is
//! re-sent to each target in `broadcast_to` (a subnet's broadcast address,
//! a multicast group, or any unicast address), optionally prefixed with
//! `[ip:port] ` of its sender. Protections, in the order they are applied:
//!
//! 1. **Own output.** A datagram from one of the relay's own sockets (its
//!    own broadcast, looped back by the kernel) is dropped. For a socket
//!    bound on a wildcard address, "own" means one of our ports on any of
//!    this host's interface addresses (read with `getifaddrs`).
//! 2. **Size.** A datagram over `max_datagram` bytes (default 1472) is dropped;
//!    with `prefix_sender`, so is one that the `[ip:port] ` tag would take
//!    over it (never truncated: a cut datagram would reach receivers looking
//!    whole).
//! 3. **Echoes.** A datagram the relay relayed moments ago for another sender,
//!    coming back from a second relay, is dropped (`echo_window_ms`).
//! 4. **Rate.** A token bucket per source address (`rate_per_source` per
//!    second, `burst`) caps what one sender can make the relay send.
//!
//! Every drop is counted per reason and logged at most once a second per
//! reason (with how many were dropped since the last message); the totals
//! are logged when the handler stops. An optional beacon (`announce`) is
//! sent to every target as soon as the sockets are open and then every
//! `announce_interval_ms`.
//!
//! Sending to a broadcast address needs `broadcast = true` on the
//! `[[handler]]` entry (loopd then sets `SO_BROADCAST`). See
//! `docs/handlers/udp-broadcast.md` for the whole story.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod config;
mod echo;
mod fingerprint;
mod limiter;
mod local;
mod sip;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use loopd_handler_api::{
    Ctx, Datagrams, Error, Handler, LentOutbox, Level, ListenInfo, Series, SocketId, TimerId,
    Transport,
};

use config::{RelayConfig, Settings};
use echo::EchoFilter;
use limiter::Limiter;
use local::{canonical, OwnAddrs};

/// How often counters are flushed to the log and idle sources forgotten.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Per socket the copies go from, its outbox; `'a`: the datagrams whose
/// bytes untagged copies borrow.
type Outboxes<'a> = Vec<(SocketId, LentOutbox<'a>)>;

/// Most datagram fingerprints kept for echo suppression.
const ECHO_CAPACITY: usize = 8192;

/// Timer tags.
const TIMER_HOUSEKEEPING: u64 = 1;
const TIMER_BEACON: u64 = 2;
const TIMER_STARTED: u64 = 3;

/// Why a datagram was not relayed (or a copy of it not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Own,
    Oversize,
    /// Within `max_datagram`, but not once `[ip:port] ` is put in front.
    OversizePrefixed,
    Echo,
    Rate,
    SendBufferFull,
    SendFailed,
}

const REASONS: [Reason; 7] = [
    Reason::Own,
    Reason::Oversize,
    Reason::OversizePrefixed,
    Reason::Echo,
    Reason::Rate,
    Reason::SendBufferFull,
    Reason::SendFailed,
];

impl Reason {
    fn key(self) -> &'static str {
        match self {
            Reason::Own => "own",
            Reason::Oversize => "oversize",
            Reason::OversizePrefixed => "oversize_prefixed",
            Reason::Echo => "echo",
            Reason::Rate => "rate",
            Reason::SendBufferFull => "send_buffer_full",
            Reason::SendFailed => "send_failed",
        }
    }

    fn describe(self, settings: &Settings) -> String {
        match self {
            Reason::Own => "our own output came back".into(),
            Reason::Oversize => format!("over max_datagram ({} bytes)", settings.max_datagram),
            Reason::OversizePrefixed => format!(
                "over max_datagram ({} bytes) with the sender's [ip:port] tag in front \
                 (prefix_sender)",
                settings.max_datagram
            ),
            Reason::Echo => format!(
                "copies of datagrams relayed in the last {} ms (echo_window_ms)",
                settings.echo_window_ms
            ),
            Reason::Rate => format!(
                "over rate_per_source ({}/s, burst {})",
                settings.rate_per_source, settings.burst
            ),
            Reason::SendBufferFull => "the kernel's send buffer was full".into(),
            Reason::SendFailed => "the kernel refused the send".into(),
        }
    }

    /// Expected in normal operation (a relay hears itself and its peers),
    /// so only shown with debug logging.
    fn level(self) -> Level {
        match self {
            Reason::Own | Reason::Echo => Level::Debug,
            _ => Level::Warn,
        }
    }
}

/// One reason's counters and its log throttle.
#[derive(Debug, Default, Clone, Copy)]
struct Drops {
    total: u64,
    /// Not yet reported in the log.
    unreported: u64,
    last_log_ms: Option<u64>,
    /// The last datagram's sender (or the target, for send failures).
    last_addr: Option<SocketAddr>,
}

/// A UDP socket of the instance.
#[derive(Debug, Clone, Copy)]
struct Socket {
    id: SocketId,
    local: SocketAddr,
}

/// The relay. One instance per `[[handler]]` entry.
#[derive(Debug)]
pub struct Relay {
    name: String,
    settings: Settings,
    sockets: Vec<Socket>,
    own: OwnAddrs,
    limiter: Limiter,
    echoes: EchoFilter,
    drops: [Drops; REASONS.len()],
    /// Datagrams relayed (each to every target).
    relayed: u64,
    /// Datagrams sent (relayed copies and beacons).
    sent: u64,
    beacons: u64,
    /// Targets that got the first beacon (sent from `on_listen`).
    beaconed: Vec<bool>,
    timers: Vec<TimerId>,
    stopping: bool,
    /// Reused for the `[ip:port] ` tag.
    out: Vec<u8>,
    /// The copies a batch of datagrams makes, per socket they go from: one
    /// `send_datagrams` each at the end of the batch. Kept here between
    /// batches for their buffers; taken out for the batch
    /// ([`Relay::take_outboxes`]), when an untagged copy borrows the
    /// received bytes instead of copying them.
    outboxes: Outboxes<'static>,
    /// Which target a batch's copies start with: the next one each batch,
    /// so a send buffer that fills part-way through a batch does not
    /// always cost the same targets their copies.
    turn: usize,
    /// The instance's context, kept to log the totals when the relay is
    /// dropped (only if it had a socket: `loopd check` stays quiet).
    ctx: Ctx,
    /// Its metrics (ABI 1.4; `None` on an older host).
    metrics: Option<RelayMetrics>,
}

/// Relayed datagrams, and drops by reason (in `REASONS` order).
#[derive(Debug)]
struct RelayMetrics {
    relayed: Series,
    dropped: [Series; REASONS.len()],
}

impl RelayMetrics {
    fn new(ctx: &Ctx) -> Result<Option<RelayMetrics>, String> {
        let relayed = match ctx.counter(
            "loopd_udp_broadcast_relayed_total",
            "Datagrams relayed (each to every target).",
            &[],
        ) {
            Ok(m) => m,
            Err(Error::Unsupported) => return Ok(None),
            Err(e) => return Err(format!("declaring the relay metrics: {e}")),
        };
        let declare = || -> Result<RelayMetrics, Error> {
            let dropped = ctx.counter(
                "loopd_udp_broadcast_dropped_total",
                "Datagrams dropped, by reason.",
                &["reason"],
            )?;
            let mut series = Vec::with_capacity(REASONS.len());
            for r in REASONS {
                series.push(ctx.series(dropped, &[r.key()])?);
            }
            Ok(RelayMetrics {
                relayed: ctx.series(relayed, &[])?,
                dropped: series.try_into().map_err(|_| Error::Invalid)?,
            })
        };
        declare()
            .map(Some)
            .map_err(|e| format!("declaring the relay metrics: {e}"))
    }
}

impl Relay {
    /// The socket to send to `target` from: the one the datagram came in on
    /// if its family matches, else the first socket of the target's family.
    fn socket_for(&self, target: SocketAddr, preferred: Option<SocketId>) -> Option<SocketId> {
        let fits = |s: &Socket| s.local.is_ipv4() == target.is_ipv4();
        if let Some(p) = preferred {
            if self.sockets.iter().any(|s| s.id == p && fits(s)) {
                return Some(p);
            }
        }
        self.sockets.iter().find(|s| fits(s)).map(|s| s.id)
    }

    fn drop_one(&mut self, ctx: &Ctx, reason: Reason, addr: SocketAddr, now: u64) {
        if let Some(m) = &self.metrics {
            ctx.metric_add(m.dropped[reason as usize], 1.0);
        }
        let d = &mut self.drops[reason as usize];
        d.total += 1;
        d.unreported += 1;
        d.last_addr = Some(addr);
        if d.last_log_ms.is_none_or(|t| now.saturating_sub(t) >= 1000) {
            self.report(ctx, reason, now);
        }
    }

    fn report(&mut self, ctx: &Ctx, reason: Reason, now: u64) {
        let what = reason.describe(&self.settings);
        let d = &mut self.drops[reason as usize];
        if d.unreported == 0 {
            return;
        }
        let since = match d.last_log_ms {
            Some(t) => format!("in the last {:.1} s", now.saturating_sub(t) as f64 / 1000.0),
            None => "so far".to_string(),
        };
        let (verb, prep) = match reason {
            Reason::SendBufferFull | Reason::SendFailed => ("could not send", "last to"),
            _ => ("dropped", "last from"),
        };
        let addr = d
            .last_addr
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        ctx.log(
            reason.level(),
            format_args!(
                "{}: {verb} {} datagram(s) {since}: {what} ({prep} {addr}; {} in total) [{}]",
                self.name,
                d.unreported,
                d.total,
                reason.key()
            ),
        );
        d.unreported = 0;
        d.last_log_ms = Some(now);
    }

    /// Sends `data` to every target, from `preferred` where the family fits.
    fn send_all(&mut self, ctx: &Ctx, preferred: Option<SocketId>, data: &[u8], now: u64) {
        let mut boxes = self.take_outboxes();
        for i in 0..self.settings.targets.len() {
            let target = self.settings.targets[i];
            self.queue(ctx, &mut boxes, preferred, target, 0, data, now);
        }
        self.flush(ctx, &mut boxes, now);
        self.put_outboxes(boxes);
    }

    /// The outboxes, empty, for one batch's lifetime. A hook that panics
    /// half-way leaves none behind (and none lent).
    fn take_outboxes<'a>(&mut self) -> Outboxes<'a> {
        std::mem::take(&mut self.outboxes)
            .into_iter()
            .map(|(s, o)| (s, o.reuse()))
            .collect()
    }

    /// Keeps the outboxes' buffers for the next batch.
    fn put_outboxes(&mut self, boxes: Outboxes<'_>) {
        self.outboxes = boxes.into_iter().map(|(s, o)| (s, o.reuse())).collect();
    }

    fn send_one(
        &mut self,
        ctx: &Ctx,
        preferred: Option<SocketId>,
        target: SocketAddr,
        data: &[u8],
        now: u64,
    ) {
        let mut boxes = self.take_outboxes();
        self.queue(ctx, &mut boxes, preferred, target, 0, data, now);
        self.flush(ctx, &mut boxes, now);
        self.put_outboxes(boxes);
    }

    /// Queues `self.out[..tag_len]` + `data` for `target` in the outbox of
    /// the socket it goes from (`preferred` where the family fits), for the
    /// next [`Relay::flush`]: without a tag, `data` itself (borrowed, not
    /// copied); with one, a copy of both.
    #[allow(clippy::too_many_arguments)]
    fn queue<'a>(
        &mut self,
        ctx: &Ctx,
        boxes: &mut Outboxes<'a>,
        preferred: Option<SocketId>,
        target: SocketAddr,
        tag_len: usize,
        data: &'a [u8],
        now: u64,
    ) {
        let Some(sock) = self.socket_for(target, preferred) else {
            // Said once at start (TIMER_STARTED); counted each time.
            self.drop_one(ctx, Reason::SendFailed, target, now);
            return;
        };
        let at = match boxes.iter().position(|(s, _)| *s == sock) {
            Some(at) => at,
            None => {
                boxes.push((sock, LentOutbox::new()));
                boxes.len() - 1
            }
        };
        if tag_len == 0 {
            boxes[at].1.push_lent(target, data);
        } else {
            boxes[at]
                .1
                .push_parts(target, &[&self.out[..tag_len], data]);
        }
    }

    /// Checks one received datagram and queues its copies (one per target)
    /// in the outbox of the socket each goes from.
    fn relay<'a>(
        &mut self,
        ctx: &Ctx,
        boxes: &mut Outboxes<'a>,
        socket: SocketId,
        peer: Option<SocketAddr>,
        data: &'a [u8],
        now: u64,
    ) {
        let from = canonical(peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))));
        if self.own.is_own(from, now) {
            return self.drop_one(ctx, Reason::Own, from, now);
        }
        if data.len() > self.settings.max_datagram {
            return self.drop_one(ctx, Reason::Oversize, from, now);
        }
        // max_datagram bounds what the relay sends, too: with the tag in
        // front, the datagram must still fit. Dropped, not truncated.
        let tag_len = if self.settings.prefix_sender {
            self.tag(from)
        } else {
            0
        };
        if tag_len + data.len() > self.settings.max_datagram {
            return self.drop_one(ctx, Reason::OversizePrefixed, from, now);
        }
        let key = self.echoes.key(data);
        if self.echoes.is_echo_key(key, from, now) {
            return self.drop_one(ctx, Reason::Echo, from, now);
        }
        if !self.limiter.allow(from.ip(), now) {
            return self.drop_one(ctx, Reason::Rate, from, now);
        }
        self.echoes.record_key(key, from, now);
        self.relayed += 1;
        // self.out holds the tag (see above), or nothing. Starting at this
        // batch's turn (see `turn`).
        let n = self.settings.targets.len();
        let first = self.turn % n.max(1);
        for k in 0..n {
            let target = self.settings.targets[(first + k) % n];
            self.queue(ctx, boxes, Some(socket), target, tag_len, data, now);
        }
    }

    /// Sends what [`Relay::queue`] queued, one `send_datagrams` per socket,
    /// each target's copies together (`group_by_address`: in order per
    /// target, and one UDP GSO send per target where the kernel can), and
    /// counts what was sent and what was dropped.
    fn flush(&mut self, ctx: &Ctx, boxes: &mut Outboxes<'_>, now: u64) {
        for (sock, out) in boxes.iter_mut() {
            if out.is_empty() {
                continue;
            }
            out.group_by_address();
            // Each datagram's result is in `out.results()`, unless the call
            // was refused whole (the socket is gone).
            let whole = matches!(
                ctx.send_lent_datagrams(*sock, out),
                Err(Error::NoSuchConn | Error::Unsupported)
            );
            for (target, result) in out.results() {
                match result {
                    Ok(()) => self.sent += 1,
                    Err(Error::Again) if !whole => {
                        self.drop_one(ctx, Reason::SendBufferFull, target, now)
                    }
                    Err(_) => self.drop_one(ctx, Reason::SendFailed, target, now),
                }
            }
            out.clear();
        }
    }

    /// Puts `[from] ` into `self.out` (replacing what was there); returns
    /// its length: 12 to 24 bytes for IPv4, up to 61 for IPv6 with a scope.
    fn tag(&mut self, from: SocketAddr) -> usize {
        use std::io::Write;
        self.out.clear();
        self.out.push(b'[');
        let _ = write!(self.out, "{from}");
        self.out.extend_from_slice(b"] ");
        self.out.len()
    }

    fn beacon(&mut self, ctx: &Ctx, now: u64) {
        let Some((text, _)) = self.settings.announce.clone() else {
            return;
        };
        self.beacons += 1;
        self.send_all(ctx, None, &text, now);
        self.remember_beacon(&text, now);
    }

    /// A beacon that another relay sends back is an echo like any other.
    fn remember_beacon(&mut self, text: &[u8], now: u64) {
        if let Some(s) = self.sockets.first() {
            let from = s.local;
            self.echoes.record(text, from, now);
        }
    }

    fn set_timer(&mut self, ctx: &Ctx, delay: Duration, tag: u64) {
        match ctx.set_timer(delay, tag) {
            Ok(t) => self.timers.push(t),
            Err(e) => ctx.error(format_args!(
                "{}: cannot set a timer ({e}): {}",
                self.name,
                match tag {
                    TIMER_BEACON => "the beacon stops",
                    _ => "drop counters will not be flushed to the log",
                }
            )),
        }
    }

    /// After every `on_listen`: say what cannot work, start the timers.
    fn started(&mut self, ctx: &Ctx) {
        if self.sockets.is_empty() {
            ctx.error(format_args!(
                "{}: no udp:// listener: there is nothing to relay",
                self.name
            ));
            return;
        }
        for (i, t) in self.settings.targets.iter().enumerate() {
            if self.socket_for(*t, None).is_none() {
                ctx.error(format_args!(
                    "{}: broadcast_to[{i}] = {t} is {} but the handler has no {} udp:// listener to send from: nothing will be sent there",
                    self.name,
                    if t.is_ipv4() { "IPv4" } else { "IPv6" },
                    if t.is_ipv4() { "IPv4" } else { "IPv6" },
                ));
            }
        }
        self.set_timer(ctx, HOUSEKEEPING, TIMER_HOUSEKEEPING);
        if let Some((_, interval)) = self.settings.announce {
            self.set_timer(ctx, Duration::from_millis(interval), TIMER_BEACON);
        }
    }

    fn totals(&self) -> String {
        let mut s = format!(
            "relayed={} sent={} beacons={} sources={} overflowed={}",
            self.relayed,
            self.sent,
            self.beacons,
            self.limiter.sources(),
            self.limiter.overflowed
        );
        for r in REASONS {
            s.push_str(&format!(" {}={}", r.key(), self.drops[r as usize].total));
        }
        s
    }
}

impl fmt::Display for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.totals())
    }
}

impl Handler for Relay {
    type Config = RelayConfig;
    type Conn = ();
    /// The relay learns its sockets from `on_listen` (ABI 1.1): a 1.0 host
    /// would never tell it, so it refuses to load there, with a message.
    const MIN_HOST_MINOR: u32 = 1;
    /// Every datagram a receive took comes in one call and its copies go
    /// out with one `send_datagrams` (one `sendmmsg`) per socket.
    const BATCH_DATAGRAMS: bool = true;
    /// Datagrams only: loopd refuses a stream listener on it.
    const STREAMS: bool = false;

    fn create(ctx: &Ctx, instance: &str, config: RelayConfig) -> Result<Self, String> {
        let settings = config.check()?;
        for w in &settings.warnings {
            ctx.warn(format_args!("{instance}: {w}"));
        }
        let mut relay = Relay {
            name: instance.to_string(),
            sockets: Vec::new(),
            own: OwnAddrs::default(),
            limiter: Limiter::new(
                settings.rate_per_source,
                settings.burst,
                settings.max_sources,
            ),
            echoes: EchoFilter::new(
                settings.echo_window_ms,
                ECHO_CAPACITY,
                settings.targets.iter().map(|t| t.port()).collect(),
            ),
            drops: [Drops::default(); REASONS.len()],
            metrics: RelayMetrics::new(ctx)?,
            relayed: 0,
            sent: 0,
            beacons: 0,
            beaconed: vec![false; settings.targets.len()],
            timers: Vec::new(),
            stopping: false,
            out: Vec::with_capacity(64),
            outboxes: Vec::new(),
            turn: 0,
            ctx: *ctx,
            settings,
        };
        // Fires on the loop's first pass, after every on_listen: also when
        // there is none (a relay without a udp:// listener says so).
        relay.set_timer(ctx, Duration::ZERO, TIMER_STARTED);
        Ok(relay)
    }

    fn on_listen(&mut self, ctx: &Ctx, listener: SocketId, info: &ListenInfo<'_>) {
        let now = ctx.now_ms();
        // loopd refuses a stream listener for a handler without connection
        // hooks (STREAMS = false); a host that did not would get this.
        let (Transport::Udp, Some(local)) = (info.transport, info.local) else {
            ctx.warn(format_args!(
                "{}: {} is not a udp:// listener; udp-broadcast relays nothing from it",
                self.name, info.url
            ));
            return;
        };
        if let Err(e) = self.own.add_socket(local, now) {
            ctx.warn(format_args!(
                "{}: cannot read this host's interface addresses ({e}): datagrams this relay \
                 sends to itself through {} may be relayed again (echo suppression and the rate \
                 limit still apply)",
                self.name, info.url
            ));
        }
        self.sockets.push(Socket {
            id: listener,
            local: canonical(local),
        });
        ctx.info(format_args!(
            "{}: relaying {} to {}",
            self.name,
            info.url,
            self.settings
                .targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        // The first beacon goes out now, before any traffic, from the first
        // socket that can reach each target.
        if let Some((text, _)) = self.settings.announce.clone() {
            let mut any = false;
            for i in 0..self.settings.targets.len() {
                let target = self.settings.targets[i];
                if !self.beaconed[i] && target.is_ipv4() == local.is_ipv4() {
                    self.beaconed[i] = true;
                    any = true;
                    self.send_one(ctx, Some(listener), target, &text, now);
                }
            }
            if any {
                self.beacons += 1;
                self.remember_beacon(&text, now);
            }
        }
    }

    fn on_datagrams(&mut self, ctx: &Ctx, socket: SocketId, batch: Datagrams<'_>) {
        let now = ctx.now_ms();
        let mut boxes = self.take_outboxes();
        let before = self.relayed;
        for d in batch.iter() {
            self.relay(ctx, &mut boxes, socket, d.peer, d.data, now);
        }
        if let Some(m) = &self.metrics {
            if self.relayed > before {
                ctx.metric_add(m.relayed, (self.relayed - before) as f64);
            }
        }
        self.flush(ctx, &mut boxes, now);
        self.put_outboxes(boxes);
        self.turn = self.turn.wrapping_add(1);
    }

    fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, tag: u64) {
        self.timers.retain(|&t| t != timer);
        if self.stopping {
            return;
        }
        let now = ctx.now_ms();
        match tag {
            TIMER_STARTED => self.started(ctx),
            TIMER_HOUSEKEEPING => {
                for r in REASONS {
                    let d = &self.drops[r as usize];
                    if d.unreported > 0
                        && d.last_log_ms.is_none_or(|t| now.saturating_sub(t) >= 1000)
                    {
                        self.report(ctx, r, now);
                    }
                }
                self.limiter.sweep(now);
                self.set_timer(ctx, HOUSEKEEPING, TIMER_HOUSEKEEPING);
            }
            TIMER_BEACON => {
                self.beacon(ctx, now);
                if let Some((_, interval)) = self.settings.announce {
                    self.set_timer(ctx, Duration::from_millis(interval), TIMER_BEACON);
                }
            }
            _ => {}
        }
    }

    fn on_shutdown(&mut self, ctx: &Ctx) {
        self.stopping = true;
        for t in std::mem::take(&mut self.timers) {
            let _ = ctx.cancel_timer(t);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.sockets.is_empty() {
            let now = self.ctx.now_ms();
            let ctx = self.ctx;
            for r in REASONS {
                self.report(&ctx, r, now);
            }
            self.ctx
                .info(format_args!("{}: stopped: {}", self.name, self.totals()));
        }
    }
}

#[cfg(feature = "plugin")]
loopd_handler_api::export_handler!(Relay, name = "udp-broadcast");
