//! The loopd chat handler: a line-based group chat with rooms, nicknames and
//! slow-consumer protection, usable with `nc`.
//!
//! Every client starts as `guest-N` in `lobby`. A plain line goes to everyone
//! else in the room as `nick: text`; commands (`/nick`, `/join`, `/who`,
//! `/rooms`, `/me`, `/quit`, `/help`) do the rest. Server lines start with
//! `* ` (notices) or `! ` (errors), actions (`/me`) with `+ `; every line
//! ends with `\n`. The protocol and the config keys are documented in
//! `docs/handlers/chat.md`.
//!
//! ```
//! use loopd_chat::Config;
//!
//! // The `[handler.config]` defaults, and the check `create` runs.
//! let config = Config::default();
//! assert_eq!((config.max_line, config.max_pending), (4096, 1 << 20));
//! assert_eq!((config.rate_lines, config.burst_lines), (10, 20));
//! assert!(config.validate().is_ok());
//! let tiny = Config { max_pending: 100, ..Config::default() };
//! assert!(tiny.validate().unwrap_err().contains("max_pending"));
//! ```
//!
//! How it stays bounded:
//! - **Fan-out** builds each outgoing line once, in one reusable buffer, and
//!   hands those same bytes to every recipient (`send` writes them straight to
//!   the socket; loopd copies only what the kernel did not take).
//! - **Slow consumers.** A recipient's pending output is what loopd has
//!   queued for it plus what chat holds for it because loopd's queue was at
//!   its high watermark (`send` refused with `Again`). Chat keeps that
//!   overflow in order and writes it out on `on_writable`, so a recipient
//!   that is merely behind loses nothing; once the total exceeds
//!   `max_pending`, the recipient is disconnected with a warning naming it.
//!   Memory per client is therefore at most `max_pending` plus one line,
//!   whatever `output_high_watermark` is.
//! - **Senders.** Each client's lines (commands too) pass two token
//!   buckets, lines and bytes a second (`rate_lines`, `rate_bytes`, with
//!   bursts `burst_lines`, `burst_bytes`). A line over the rate waits, and
//!   chat stops reading that client (`Ctx::pause_read`) until a timer
//!   releases it: the client is slowed down by TCP itself, as by a server
//!   that reads slowly, and nothing it sends is refused. So one client
//!   blasting lines costs its room at most the rate, and nobody becomes a
//!   slow consumer because of it.
//! - **Rooms.** In a room of more than `quiet_above` members, joins and
//!   leaves are not announced (announcing them costs the room's size per
//!   event: quadratic when thousands join at once); `/who` and `/rooms`
//!   answer at most `max_list` entries at a time, with a cursor to the next.
//! - **Input** is cut into lines by loopd (`framing = "line"`, chat's
//!   default), which buffers at most the instance's `max_frame` bytes of an
//!   unfinished line. A line over `max_frame` is answered from `on_oversize`
//!   and skipped by loopd as it streams in, without being buffered; a line
//!   over `max_line` but within `max_frame` is answered from `on_data`. A
//!   half-written last line at disconnect reaches `on_partial` and is
//!   dropped. Any other framing is refused (see [`Chat`]).
//!
//! All of this is per member and local to the instance that holds the
//! connection: nothing needs to be shared to apply it.
//!
//! Rooms span instances two ways: the workers of one process
//! (`[runtime] workers`) through sibling posts, worker 0 granting the
//! nicks; processes and machines through the Redis bridge (then each
//! worker is one bridge instance). Both keep one model: lines relayed per
//! room with a kind, and a directory of the other instances' members.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

mod bridge;
mod limit;
mod protocol;
pub mod resp;
mod roster;
mod siblings;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use loopd_handler_api::{
    CloseMode, CloseReason, ConnId, ConnInfo, Ctx, EofAction, Error, Framing, Handler,
    OversizeAction, Series, TimerId,
};

use bridge::{Bridge, Event, Op};
use resp::Value;
use serde::Deserialize;

use limit::{Limiter, Limits, Rate};
use protocol::{BadLine, Input};
use roster::{fold, Member, Page, Roster, Taken};
use siblings::{Record, Siblings};

/// The room every client starts in.
pub const LOBBY: &str = "lobby";

/// Default `max_line`: bytes in one line, without its line ending.
pub const DEFAULT_MAX_LINE: usize = 4096;
/// Default `max_pending`: bytes of output a client may have waiting.
pub const DEFAULT_MAX_PENDING: usize = 1 << 20;
/// Default `max_clients`.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Default `rate_lines`: lines a second one client may send.
pub const DEFAULT_RATE_LINES: u64 = 10;
/// Default `burst_lines`.
pub const DEFAULT_BURST_LINES: u64 = 20;
/// Default `rate_bytes`: bytes a second one client may send.
pub const DEFAULT_RATE_BYTES: u64 = 16 * 1024;
/// Default `burst_bytes` (or `max_line`, if that is larger).
pub const DEFAULT_BURST_BYTES: u64 = 64 * 1024;
/// Default `quiet_above`: rooms larger than this announce no joins or leaves.
pub const DEFAULT_QUIET_ABOVE: usize = 100;
/// Default `max_list`: entries in one `/who` or `/rooms` answer.
pub const DEFAULT_MAX_LIST: usize = 100;

/// Largest `max_line` accepted (1 MiB, loopd's default `max_frame`).
pub const MAX_LINE_LIMIT: usize = 1 << 20;
/// Largest `max_pending` accepted (1 GiB).
pub const MAX_PENDING_LIMIT: usize = 1 << 30;
/// Largest `rate_lines` and `burst_lines` accepted.
pub const MAX_LINES_LIMIT: u64 = 1_000_000;
/// Largest `rate_bytes` and `burst_bytes` accepted (1 GiB).
pub const MAX_BYTES_LIMIT: u64 = 1 << 30;
/// Largest `max_list` accepted.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Default `bridge_prefix`.
pub const DEFAULT_BRIDGE_PREFIX: &str = bridge::DEFAULT_PREFIX;
/// Default `bridge_ttl_ms`.
pub const DEFAULT_BRIDGE_TTL_MS: u64 = bridge::DEFAULT_TTL_MS;
/// Default `bridge_retry_max_ms`.
pub const DEFAULT_BRIDGE_RETRY_MAX_MS: u64 = bridge::DEFAULT_RETRY_MAX_MS;
/// How much longer than `max_line` a relayed line can get: `* ` or `: `,
/// a 32-byte nick, a space and `\n`, rounded up.
const RELAY_OVERHEAD: usize = 64;

/// Most bytes of held-back output handed to loopd in one `send`.
const PUMP_CHUNK: usize = 64 * 1024;
/// Held-back output buffers larger than this are freed once empty.
const KEEP_CAPACITY: usize = 64 * 1024;
/// Buffers of waiting input larger than this are freed once empty.
const KEEP_WAITING_CAPACITY: usize = 4 * 1024;
/// At most one "server full" (or "wrong framing", or "rate limit") warning
/// per this many milliseconds.
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// The `[handler.config]` table of a chat instance. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Longest line a client may send, in bytes, not counting `\n` or `\r\n`.
    /// A longer line gets `! line too long (max N bytes)` and is dropped;
    /// the connection stays. 1 to [`MAX_LINE_LIMIT`].
    pub max_line: usize,
    /// Most bytes of output a client may have waiting (queued in loopd plus
    /// held back by chat). A client over it is disconnected as a slow
    /// consumer. At least `max_line + 64`, at most [`MAX_PENDING_LIMIT`].
    pub max_pending: usize,
    /// Most clients at once; the next one gets `! server full` and is closed.
    /// At least 1.
    pub max_clients: usize,
    /// Lines a second one client may send, commands included (the refill of
    /// its line bucket); 0: no limit on lines. At most [`MAX_LINES_LIMIT`].
    pub rate_lines: u64,
    /// Lines one client may send at once (the size of its line bucket). 1
    /// to [`MAX_LINES_LIMIT`].
    pub burst_lines: u64,
    /// Bytes a second one client may send (the refill of its byte bucket);
    /// 0: no limit on bytes. At most [`MAX_BYTES_LIMIT`].
    pub rate_bytes: u64,
    /// Bytes one client may send at once (the size of its byte bucket).
    /// least `max_line` (so the longest line can pass), at most
    /// [`MAX_BYTES_LIMIT`]. `None` (the key left out):
    /// [`DEFAULT_BURST_BYTES`] or `max_line`, whichever is larger.
    pub burst_bytes: Option<u64>,
    /// In a room of more than this many members, joins and leaves are not
    /// announced. 0: never announced.
    pub quiet_above: usize,
    /// Most entries in one `/who` or `/rooms` answer; the answer names where
    /// the next page starts. 1 to [`MAX_LIST_LIMIT`].
    pub max_list: usize,
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (`rediss://` over TLS,
    /// trusting the entry's `tls_ca` if set, else the system's CA
    /// certificates; the server's certificate must carry the URL's IP
    /// address, or its host name): bridge rooms with the other chat
    /// instances that use the same Redis and prefix. `None`: this instance
    /// alone.
    pub bridge: Option<String>,
    /// What every Redis key and channel of the bridge starts with.
    pub bridge_prefix: String,
    /// Presence in Redis expires this long after the last heartbeat (one
    /// every third of it): how long the members of a crashed instance stay
    /// in `/who`. 1000 to 3600000.
    pub bridge_ttl_ms: u64,
    /// The longest wait between two attempts to reach Redis (the wait
    /// doubles from 100 ms up to this). 100 to 600000.
    pub bridge_retry_max_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_line: DEFAULT_MAX_LINE,
            max_pending: DEFAULT_MAX_PENDING,
            max_clients: DEFAULT_MAX_CLIENTS,
            rate_lines: DEFAULT_RATE_LINES,
            burst_lines: DEFAULT_BURST_LINES,
            rate_bytes: DEFAULT_RATE_BYTES,
            burst_bytes: None,
            quiet_above: DEFAULT_QUIET_ABOVE,
            max_list: DEFAULT_MAX_LIST,
            bridge: None,
            bridge_prefix: DEFAULT_BRIDGE_PREFIX.to_string(),
            bridge_ttl_ms: DEFAULT_BRIDGE_TTL_MS,
            bridge_retry_max_ms: DEFAULT_BRIDGE_RETRY_MAX_MS,
        }
    }
}

impl Config {
    /// Checks that the limits are in range and fit together.
    ///
    /// # Errors
    /// A message naming the key and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_LINE_LIMIT).contains(&self.max_line) {
            return Err(format!(
                "max_line = {} is out of range: 1 to {MAX_LINE_LIMIT} bytes",
                self.max_line
            ));
        }
        let min_pending = self.max_line + RELAY_OVERHEAD;
        if !(min_pending..=MAX_PENDING_LIMIT).contains(&self.max_pending) {
            return Err(format!(
                "max_pending = {} is out of range: {min_pending} (max_line + {RELAY_OVERHEAD}, \
                 so one relayed line fits) to {MAX_PENDING_LIMIT} bytes",
                self.max_pending
            ));
        }
        if self.max_clients == 0 {
            return Err("max_clients = 0: at least 1 client must be allowed".to_string());
        }
        if self.rate_lines > MAX_LINES_LIMIT {
            return Err(format!(
                "rate_lines = {} is out of range: 0 (no limit) to {MAX_LINES_LIMIT} lines a second",
                self.rate_lines
            ));
        }
        if !(1..=MAX_LINES_LIMIT).contains(&self.burst_lines) {
            return Err(format!(
                "burst_lines = {} is out of range: 1 to {MAX_LINES_LIMIT} lines",
                self.burst_lines
            ));
        }
        if self.rate_bytes > MAX_BYTES_LIMIT {
            return Err(format!(
                "rate_bytes = {} is out of range: 0 (no limit) to {MAX_BYTES_LIMIT} bytes a second",
                self.rate_bytes
            ));
        }
        let min_burst = self.max_line as u64;
        if let Some(burst) = self.burst_bytes {
            if !(min_burst..=MAX_BYTES_LIMIT).contains(&burst) {
                return Err(format!(
                    "burst_bytes = {burst} is out of range: {min_burst} (max_line, so the \
                     longest line can pass) to {MAX_BYTES_LIMIT} bytes"
                ));
            }
        }
        if !(1..=MAX_LIST_LIMIT).contains(&self.max_list) {
            return Err(format!(
                "max_list = {} is out of range: 1 to {MAX_LIST_LIMIT} entries",
                self.max_list
            ));
        }
        let prefix = &self.bridge_prefix;
        if prefix.is_empty() || prefix.len() > 200 || !prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "bridge_prefix = {prefix:?}: 1 to 200 printable ASCII characters, no spaces"
            ));
        }
        if !(1_000..=3_600_000).contains(&self.bridge_ttl_ms) {
            return Err(format!(
                "bridge_ttl_ms = {} is out of range: 1000 to 3600000 ms",
                self.bridge_ttl_ms
            ));
        }
        if !(100..=600_000).contains(&self.bridge_retry_max_ms) {
            return Err(format!(
                "bridge_retry_max_ms = {} is out of range: 100 to 600000 ms",
                self.bridge_retry_max_ms
            ));
        }
        Ok(())
    }

    /// The bridge's settings (the URL parsed and its host resolved), if
    /// one is configured.
    ///
    /// # Errors
    /// A message naming what is wrong with `bridge`.
    fn bridge_settings(&self) -> Result<Option<bridge::Settings>, String> {
        let Some(url) = &self.bridge else {
            return Ok(None);
        };
        Ok(Some(bridge::Settings {
            target: bridge::parse_target(url)?,
            prefix: self.bridge_prefix.clone(),
            ttl_ms: self.bridge_ttl_ms,
            retry_max_ms: self.bridge_retry_max_ms,
        }))
    }

    fn limits(&self) -> Limits {
        Limits {
            lines: Rate {
                per_s: self.rate_lines,
                burst: self.burst_lines,
            },
            bytes: Rate {
                per_s: self.rate_bytes,
                burst: self.burst_bytes(),
            },
        }
    }

    /// `burst_bytes`, or its default.
    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
            .unwrap_or_else(|| DEFAULT_BURST_BYTES.max(self.max_line as u64))
    }

    /// The rate limit in words, for the log.
    fn limit_text(&self) -> String {
        let mut parts = Vec::new();
        if self.rate_lines > 0 {
            parts.push(format!("{} lines/s", self.rate_lines));
        }
        if self.rate_bytes > 0 {
            parts.push(format!("{} bytes/s", self.rate_bytes));
        }
        parts.join(", ")
    }
}

/// A chat instance: who is here, and the limits.
///
/// Chat needs `framing = "line"` (its default when the `[[handler]]` table
/// names none). It declares so (`FRAMINGS`, ABI 1.5), and loopd refuses an
/// entry with any other framing at start, in `loopd check` and on a
/// reload, naming the key. On a host older than 1.5, which does not check,
/// it refuses every connection instead and says why in a warning (the
/// first at once, then at most one every 10 seconds with the number
/// refused).
#[derive(Debug)]
pub struct Chat {
    /// Its metrics (ABI 1.4; `None` on an older host).
    metrics: Option<ChatMetrics>,
    config: Config,
    limits: Limits,
    /// `Config::limit_text`, built once.
    limit_text: String,
    roster: Roster<ConnId, Client>,
    /// The last `guest-N` number handed out.
    last_guest: u64,
    /// The line being sent, built once per message and reused.
    out: Vec<u8>,
    /// A waiting line being released, reused.
    scratch: Vec<u8>,
    /// Members found over `max_pending` while delivering; cut off by `settle`.
    slow: Vec<ConnId>,
    /// Whether the warning about a `max_frame` below `max_line` was logged.
    noted_small_max_frame: bool,
    /// Connections refused as "server full".
    refused_full: Refusals,
    /// Connections refused for a framing other than `line`.
    refused_framing: Refusals,
    /// Times a client's reading was paused for the rate limit (any client).
    paused_rate: Refusals,
    /// After shutdown: clients whose output chat still holds (loopd's queue
    /// was at its high watermark). Their output goes out as it drains, and
    /// they are closed once it has; no longer members of any room.
    leaving: HashMap<ConnId, VecDeque<u8>>,
    /// The Redis bridge, if configured.
    bridge: Option<Bridge>,
    /// Clients waiting for the bridge to hand them a `guest-N` nick (read
    /// paused): not members yet, so they hear nothing before the welcome.
    joining: HashMap<ConnId, Client>,
    /// Folded nicks a member is claiming through the bridge right now: a
    /// second member of this instance asking for one is told it is taken.
    claiming: HashSet<String>,
    /// The other workers of this process (`[runtime] workers`), when there
    /// are some and no bridge spans them (see [`siblings`]).
    sib: Option<Siblings>,
    /// This worker's index and the number of workers (`Ctx::worker`).
    worker: (u32, u32),
}

/// Counts refusals of one kind and says when to log about them: the first
/// time at once, then at most once per [`REFUSAL_LOG_INTERVAL_MS`], with
/// the number refused since the last time.
#[derive(Debug, Default)]
struct Refusals {
    /// Refused since the last log line.
    count: u64,
    /// When the last log line was due (`Ctx::now_ms`).
    logged_ms: Option<u64>,
}

impl Refusals {
    /// Counts one refusal at `now`; returns how many to report if a log
    /// line is due.
    fn count(&mut self, now: u64) -> Option<u64> {
        self.count += 1;
        let due = self
            .logged_ms
            .is_none_or(|last| now.saturating_sub(last) >= REFUSAL_LOG_INTERVAL_MS);
        if !due {
            return None;
        }
        self.logged_ms = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// What chat keeps for one member.
#[derive(Debug)]
struct Client {
    /// Output loopd refused because the member's queue was at its high
    /// watermark; written out, in order, on `on_writable`.
    backlog: VecDeque<u8>,
    /// Already listed in `Chat::slow`.
    flagged: bool,
    /// The peer address, for log lines.
    peer: String,
    /// The member's rate-limit buckets.
    limiter: Limiter,
    /// Lines waiting for the rate limit, in order, each followed by `\n`
    /// (loopd cut the input at `\n`, so no line holds one). Reading is
    /// paused while any waits, so this is the line that found the bucket
    /// empty (and, at most, the few loopd had cut in the same pass).
    waiting: VecDeque<u8>,
    /// How many lines `waiting` holds, and their bytes without the `\n`s.
    waiting_lines: u64,
    waiting_bytes: u64,
    /// Reading is paused (`Ctx::pause_read`) until `waiting` is empty and
    /// no bridge reply is awaited.
    paused: bool,
    /// A command of the member's waits for a reply from the bridge (its
    /// later lines wait behind it, so replies keep their order).
    busy: bool,
    /// The pending timer (releases waiting lines) and when it fires.
    timer: Option<(TimerId, u64)>,
}

impl Client {
    fn new(peer: String, limits: &Limits, now: u64) -> Client {
        Client {
            backlog: VecDeque::new(),
            flagged: false,
            peer,
            limiter: Limiter::new(limits, now),
            waiting: VecDeque::new(),
            waiting_lines: 0,
            waiting_bytes: 0,
            paused: false,
            busy: false,
            timer: None,
        }
    }

    /// The length of the first waiting line.
    fn first_waiting_len(&self) -> Option<usize> {
        if self.waiting_lines == 0 {
            return None;
        }
        self.waiting.iter().position(|&b| b == b'\n')
    }

    fn push_waiting(&mut self, line: &[u8]) {
        self.waiting.extend(line);
        self.waiting.push_back(b'\n');
        self.waiting_lines += 1;
        self.waiting_bytes += line.len() as u64;
    }

    /// Copies the first waiting line, of `len` bytes, into `into`
    /// (replacing what was there).
    fn peek_waiting(&self, len: usize, into: &mut Vec<u8>) {
        into.clear();
        into.extend(self.waiting.range(..len));
    }

    /// Drops the first waiting line, of `len` bytes.
    fn pop_waiting(&mut self, len: usize) {
        self.waiting.drain(..=len);
        self.waiting_lines -= 1;
        self.waiting_bytes -= len as u64;
        if self.waiting.is_empty() && self.waiting.capacity() > KEEP_WAITING_CAPACITY {
            self.waiting = VecDeque::new();
        }
    }
}

/// Pauses reading a client (once); returns whether it was not paused yet.
fn pause(ctx: &Ctx, conn: ConnId, client: &mut Client) -> bool {
    if client.paused {
        return false;
    }
    client.paused = true;
    if let Err(e) = ctx.pause_read(conn) {
        // Closing already: no more input comes anyway.
        ctx.debug(format_args!("connection {conn}: pause_read: {e}"));
    }
    true
}

/// Reads a paused client again; loopd delivers what it holds after the
/// current hook returns.
fn unpause(ctx: &Ctx, conn: ConnId, client: &mut Client) {
    if client.paused {
        client.paused = false;
        let _ = ctx.resume_read(conn);
    }
}

/// Whether a line is blank once cleaned (ignored, so not rate-limited).
fn is_blank(line: &[u8]) -> bool {
    matches!(protocol::clean(line), Ok(text) if protocol::parse(&text) == Input::Empty)
}

/// Whether a line is `/quit`: never held to the rate (only behind the lines
/// that wait before it).
fn is_quit(line: &[u8]) -> bool {
    matches!(protocol::clean(line), Ok(text) if protocol::parse(&text) == Input::Quit)
}

/// The chat's metrics: messages by kind, members and rooms now.
#[derive(Debug)]
struct ChatMetrics {
    said: Series,
    acted: Series,
    members: Series,
    rooms: Series,
}

impl ChatMetrics {
    fn new(ctx: &Ctx) -> Result<Option<ChatMetrics>, String> {
        let messages = match ctx.counter(
            "loopd_chat_messages_total",
            "Lines members said to their room, by kind (say, me).",
            &["kind"],
        ) {
            Ok(m) => m,
            Err(Error::Unsupported) => return Ok(None),
            Err(e) => return Err(format!("declaring the chat metrics: {e}")),
        };
        let declare = || -> Result<ChatMetrics, Error> {
            let members = ctx.gauge("loopd_chat_members", "Members connected now.", &[])?;
            let rooms = ctx.gauge("loopd_chat_rooms", "Rooms with members now.", &[])?;
            Ok(ChatMetrics {
                said: ctx.series(messages, &["say"])?,
                acted: ctx.series(messages, &["me"])?,
                members: ctx.series(members, &[])?,
                rooms: ctx.series(rooms, &[])?,
            })
        };
        declare()
            .map(Some)
            .map_err(|e| format!("declaring the chat metrics: {e}"))
    }
}

impl Chat {
    /// Sets the member and room gauges.
    fn gauges(&self, ctx: &Ctx) {
        if let Some(m) = &self.metrics {
            ctx.metric_set(m.members, self.roster.len() as f64);
            ctx.metric_set(m.rooms, self.roster.room_count() as f64);
        }
    }
}

/// Per-connection state. loopd cuts the lines (`framing = "line"`), so all
/// chat keeps per connection is what it logs when the client leaves.
#[derive(Debug, Default)]
pub struct ChatConn {
    /// Bytes of a half-written last line loopd reported at EOF
    /// (`on_partial`): dropped, never broadcast.
    dropped_partial: Option<usize>,
}

/// Formats `args` plus `\n` into `out`, replacing what was there.
fn compose(out: &mut Vec<u8>, args: fmt::Arguments<'_>) {
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = out.write_fmt(args);
    out.push(b'\n');
}

/// Hands `bytes` to one member: straight to loopd, or behind output already
/// held back. If the member's pending output is now over `max_pending`, it
/// goes on the `slow` list (once).
fn deliver(
    ctx: &Ctx,
    max_pending: usize,
    conn: ConnId,
    member: &mut Member<Client>,
    bytes: &[u8],
    slow: &mut Vec<ConnId>,
) {
    let client = &mut member.data;
    if client.backlog.is_empty() {
        match ctx.send(conn, bytes) {
            Ok(()) => {}
            // loopd's queue is at the high watermark: keep the line, in
            // order; on_writable follows once the queue drains.
            Err(Error::Again) => {
                ctx.debug(format_args!(
                    "{} (connection {conn}) is behind: holding its output until loopd's \
                     queue drains",
                    member.nick
                ));
                client.backlog.extend(bytes);
            }
            // Closing already (an error, or being cut off): on_close
            // follows and takes it out of the roster.
            Err(_) => return,
        }
    } else {
        client.backlog.extend(bytes);
    }
    let queued = ctx.output_queued(conn).unwrap_or(0);
    if queued + client.backlog.len() > max_pending && !client.flagged {
        client.flagged = true;
        slow.push(conn);
    }
}

/// Hands held-back output to loopd while it takes it. With `all`, in one
/// piece whatever the watermark (used right before closing with a flush).
fn pump(ctx: &Ctx, conn: ConnId, backlog: &mut VecDeque<u8>, all: bool) {
    while !backlog.is_empty() {
        let chunk = if all {
            backlog.make_contiguous()
        } else {
            backlog.as_slices().0
        };
        let n = if all {
            chunk.len()
        } else {
            chunk.len().min(PUMP_CHUNK)
        };
        if ctx.send(conn, &chunk[..n]).is_err() {
            // Again: on_writable follows. Closed: nothing more to do.
            break;
        }
        backlog.drain(..n);
    }
    if backlog.is_empty() && backlog.capacity() > KEEP_CAPACITY {
        *backlog = VecDeque::new();
    }
}

fn peer_text(info: &ConnInfo<'_>) -> String {
    match info.peer {
        Some(addr) => addr.to_string(),
        None => "unix peer".to_string(),
    }
}

impl Chat {
    /// Sends `self.out` to one member.
    fn send_out(&mut self, ctx: &Ctx, to: ConnId) {
        let Chat {
            roster,
            out,
            slow,
            config,
            ..
        } = self;
        if let Some(member) = roster.get_mut(to) {
            deliver(ctx, config.max_pending, to, member, out, slow);
        }
    }

    /// Formats a line and sends it to one member.
    fn reply(&mut self, ctx: &Ctx, to: ConnId, args: fmt::Arguments<'_>) {
        compose(&mut self.out, args);
        self.send_out(ctx, to);
    }

    /// Sends `self.out` to everyone in a room but `except`.
    fn broadcast_out(&mut self, ctx: &Ctx, room: &str, except: Option<ConnId>) {
        let Chat {
            roster,
            out,
            slow,
            config,
            ..
        } = self;
        roster.for_each_in(room, except, |k, member| {
            deliver(ctx, config.max_pending, k, member, out, slow);
        });
    }

    /// Sends `self.out` to everyone in `from`'s room but `from`.
    fn tell_room_of(&mut self, ctx: &Ctx, from: ConnId) {
        let Chat {
            roster,
            out,
            slow,
            config,
            ..
        } = self;
        roster.for_each_near(from, |k, member| {
            deliver(ctx, config.max_pending, k, member, out, slow);
        });
    }

    /// Whether joins and leaves are announced in a room of `members`.
    fn announced(&self, members: usize) -> bool {
        members <= self.config.quiet_above
    }

    /// Takes a member out of the roster and tells its room `* nick left`
    /// (unless the room is over `quiet_above`). Every way of leaving ends
    /// here, and only the first call per member does anything: the notice
    /// goes out at most once. `why` is for the log.
    fn leave(&mut self, ctx: &Ctx, conn: ConnId, why: fmt::Arguments<'_>) {
        let Some(member) = self.roster.remove(conn) else {
            return;
        };
        let client = &member.data;
        if let Some((timer, _)) = client.timer {
            let _ = ctx.cancel_timer(timer);
        }
        if client.waiting_lines > 0 {
            ctx.debug(format_args!(
                "{} (connection {conn}): {} line(s) still waiting for the rate limit are dropped",
                member.nick, client.waiting_lines
            ));
        }
        ctx.debug(format_args!(
            "{} left (connection {conn}: {why})",
            member.nick
        ));
        // The room's size before this member left.
        compose(&mut self.out, format_args!("* {} left", member.nick));
        if self.announced(self.roster.room_len(&member.room) + 1) {
            self.broadcast_out(ctx, &member.room, None);
        }
        self.publish_out(ctx, &member.room, KIND_JOIN);
        self.sib_gone(ctx, &fold(&member.nick));
        if let Some(b) = self.bridge.as_mut() {
            b.del_member(ctx, &fold(&member.nick));
            if self.roster.room_len(&member.room) == 0 {
                b.unsubscribe(ctx, &member.room);
            }
        }
    }

    /// Cuts off every member found over `max_pending`. A cut-off member's
    /// leave notice can push others over, so this runs until none is left.
    fn settle(&mut self, ctx: &Ctx) {
        while let Some(conn) = self.slow.pop() {
            let Some(member) = self.roster.get(conn) else {
                continue;
            };
            let pending = ctx.output_queued(conn).unwrap_or(0) + member.data.backlog.len();
            ctx.warn(format_args!(
                "disconnecting slow consumer {} (connection {conn}, {}): {pending} bytes of \
                 output pending, over max_pending ({} bytes)",
                member.nick, member.data.peer, self.config.max_pending
            ));
            let _ = ctx.close(conn, CloseMode::Abort);
            self.leave(ctx, conn, format_args!("slow consumer"));
        }
    }

    /// Handles what the bridge reported.
    fn bridge_events(&mut self, ctx: &Ctx) {
        while let Some(ev) = self.bridge.as_mut().and_then(Bridge::pop_event) {
            match ev {
                Event::Up { again } => self.bridge_up(ctx, again),
                Event::Down => {
                    compose(&mut self.out, format_args!("{BRIDGE_DOWN}"));
                    for conn in self.roster.keys() {
                        self.send_out(ctx, conn);
                    }
                }
                Event::Message { room, kind, line } => self.remote_line(ctx, &room, kind, &line),
                Event::Reply { op, value } => self.bridge_reply(ctx, op, value),
            }
            self.settle(ctx);
        }
    }

    /// The bridge is up: this instance's members are registered (a nick
    /// another instance took meanwhile is renamed), its rooms subscribed.
    fn bridge_up(&mut self, ctx: &Ctx, again: bool) {
        let members: Vec<(String, String)> = self
            .roster
            .keys()
            .into_iter()
            .filter_map(|k| self.roster.get(k))
            .map(|m| (fold(&m.nick), presence(&m.nick, &m.room, &self.roster)))
            .collect();
        let rooms: Vec<String> = self
            .roster
            .rooms("", usize::MAX)
            .items
            .iter()
            .map(|(n, _)| fold(n))
            .collect();
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        b.rejoin(ctx, &members);
        for room in rooms {
            b.subscribe(ctx, &room);
        }
        if again {
            compose(&mut self.out, format_args!("{BRIDGE_BACK}"));
            for conn in self.roster.keys() {
                self.send_out(ctx, conn);
            }
        }
    }

    /// A line another instance published to one of our rooms.
    fn remote_line(&mut self, ctx: &Ctx, room: &str, kind: u8, line: &[u8]) {
        let size = self.roster.room_len(room);
        if size == 0 || (kind == KIND_JOIN && !self.announced(size)) {
            return;
        }
        // What another instance relays was cleaned there; anything else
        // (another publisher on the channel) is not passed on.
        let clean = line.len() <= MAX_LINE_LIMIT + RELAY_OVERHEAD
            && matches!(protocol::clean(line), Ok(std::borrow::Cow::Borrowed(_)));
        if !clean || !matches!(kind, KIND_LINE | KIND_JOIN) {
            ctx.debug(format_args!(
                "bridge: dropped a message for room {room} that no chat instance sent"
            ));
            return;
        }
        self.out.clear();
        self.out.extend_from_slice(line);
        self.out.push(b'\n');
        self.broadcast_out(ctx, room, None);
    }

    /// A reply from the bridge (`None`: it went down first; the member
    /// gets what this instance alone can tell).
    fn bridge_reply(&mut self, ctx: &Ctx, op: Op, value: Option<Value>) {
        if let Some(Value::Error(e)) = &value {
            ctx.warn(format_args!(
                "bridge: Redis answered an error: {}",
                String::from_utf8_lossy(e)
            ));
        }
        let value = value.filter(|v| !matches!(v, Value::Error(_)));
        match op {
            Op::Guest(conn) => {
                let nick = value
                    .as_ref()
                    .and_then(Value::as_bytes)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::to_string);
                let Some(client) = self.joining.remove(&conn) else {
                    // It left while waiting: the nick goes back.
                    if let Some(nick) = nick {
                        self.sib_gone(ctx, &fold(&nick));
                        if let Some(b) = self.bridge.as_mut() {
                            b.del_member(ctx, &fold(&nick));
                        }
                    }
                    return;
                };
                let nick = match nick {
                    Some(n) if protocol::valid_name(&n) && self.roster.holder(&n).is_none() => n,
                    _ => self.guest_nick(),
                };
                self.admit(ctx, conn, nick, client);
            }
            Op::Nick { conn, nick } => {
                let key = fold(&nick);
                self.claiming.remove(&key);
                if !self.roster.contains(conn) {
                    if value == Some(Value::Integer(1)) {
                        self.sib_gone(ctx, &key);
                        if let Some(b) = self.bridge.as_mut() {
                            b.del_member(ctx, &key);
                        }
                    }
                    return;
                }
                match value {
                    Some(Value::Integer(0)) => {
                        self.reply(ctx, conn, format_args!("! nick {nick} is taken"))
                    }
                    // Granted, or no answer: then it is only checked here.
                    _ => self.rename(ctx, conn, &nick),
                }
                self.end_op(ctx, conn);
            }
            Op::Who { conn, from } => {
                if !self.roster.contains(conn) {
                    return;
                }
                let nicks = value.as_ref().and_then(Value::as_items).map(|items| {
                    items
                        .iter()
                        .filter_map(|v| v.as_bytes())
                        .filter_map(|b| std::str::from_utf8(b).ok())
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                });
                let max = self.config.max_list;
                let (page, local) = match nicks {
                    Some(n) => (roster::page_nicks(n, max), false),
                    None => {
                        let room = member_room(&self.roster, conn);
                        let p = self.roster.who(&room, &from, max);
                        let page = Page {
                            items: p.items.into_iter().map(str::to_string).collect(),
                            next: p.next.map(|(n, left)| (n.to_string(), left)),
                        };
                        (page, true)
                    }
                };
                self.answer_who(ctx, conn, &from, page, local);
                self.end_op(ctx, conn);
            }
            Op::Rooms { conn, from } => {
                if !self.roster.contains(conn) {
                    return;
                }
                let rooms = value.as_ref().and_then(Value::as_items).map(|items| {
                    items
                        .chunks_exact(3)
                        .filter_map(|c| {
                            let key = std::str::from_utf8(c[0].as_bytes()?).ok()?;
                            let name = std::str::from_utf8(c[1].as_bytes()?).ok()?;
                            let Value::Integer(n) = c[2] else { return None };
                            Some((key.to_string(), name.to_string(), n.max(0) as usize))
                        })
                        .collect::<Vec<_>>()
                });
                let max = self.config.max_list;
                let (page, local) = match rooms {
                    Some(r) => (roster::page_rooms(r, max), false),
                    None => {
                        let p = self.roster.rooms(&from, max);
                        let page = Page {
                            items: p
                                .items
                                .into_iter()
                                .map(|(n, c)| (n.to_string(), c))
                                .collect(),
                            next: p.next.map(|((n, c), left)| ((n.to_string(), c), left)),
                        };
                        (page, true)
                    }
                };
                self.answer_rooms(ctx, conn, &from, page, local);
                self.end_op(ctx, conn);
            }
            Op::Rejoin => {
                let taken: Vec<String> = value
                    .as_ref()
                    .and_then(Value::as_items)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|v| v.as_bytes())
                    .filter_map(|b| std::str::from_utf8(b).ok())
                    .map(str::to_string)
                    .collect();
                for key in taken {
                    let Some(conn) = self.roster.holder(&key) else {
                        continue;
                    };
                    let Some(member) = self.roster.get(conn) else {
                        continue;
                    };
                    let old = member.nick.clone();
                    let room = member.room.clone();
                    let name = self.roster.room_name(&room).unwrap_or(&room).to_string();
                    let op = Op::Rename {
                        conn,
                        old: old.clone(),
                    };
                    let sent = self
                        .bridge
                        .as_mut()
                        .is_some_and(|b| b.guest(ctx, &room, &name, "", op));
                    if sent {
                        ctx.info(format_args!(
                            "bridge: {old} (connection {conn}) took its nick while the bridge \
                             was down, and another server holds it: renaming"
                        ));
                        self.start_op(ctx, conn);
                    }
                }
            }
            Op::Rename { conn, old } => {
                if !self.roster.contains(conn) {
                    return;
                }
                let nick = value
                    .as_ref()
                    .and_then(Value::as_bytes)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .filter(|n| protocol::valid_name(n))
                    .map(str::to_string);
                if let Some(nick) = nick {
                    if self.roster.rename(conn, &nick).is_ok() {
                        self.reply(
                            ctx,
                            conn,
                            format_args!(
                                "* your nick {old} is taken on another server: you are now {nick}"
                            ),
                        );
                        let room = member_room(&self.roster, conn);
                        compose(&mut self.out, format_args!("* {old} is now {nick}"));
                        self.tell_room_of(ctx, conn);
                        self.publish_out(ctx, &room, KIND_LINE);
                    }
                }
                self.end_op(ctx, conn);
            }
            Op::Hello | Op::Auth | Op::Select | Op::Plain => {}
        }
    }

    /// A new client becomes a member named `nick`: welcomed, announced.
    fn admit(&mut self, ctx: &Ctx, conn: ConnId, nick: String, mut client: Client) {
        let was_paused = std::mem::take(&mut client.paused);
        let Ok(room) = self.roster.insert(conn, &nick, LOBBY, client) else {
            let _ = ctx.close(conn, CloseMode::Abort);
            return;
        };
        if was_paused {
            let _ = ctx.resume_read(conn);
        }
        match self.worker {
            (_, 1) => ctx.debug(format_args!("{nick} joined (connection {conn})")),
            (w, _) => ctx.debug(format_args!(
                "{nick} joined (connection {conn}, worker {w})"
            )),
        }
        self.reply(
            ctx,
            conn,
            format_args!(
                "* welcome to loopd chat, you are {nick} in {LOBBY} (/help lists the commands)"
            ),
        );
        compose(&mut self.out, format_args!("* {nick} joined"));
        if self.announced(self.roster.room_len(&room)) {
            self.tell_room_of(ctx, conn);
        }
        self.publish_out(ctx, &room, KIND_JOIN);
        self.sib_presence(ctx, conn);
        if let Some(b) = self.bridge.as_mut() {
            b.subscribe(ctx, &room);
            if b.is_up() {
                // Recorded by the guest script already when it gave the
                // nick; set here for a nick given locally.
                b.set_member(ctx, &fold(&nick), &presence(&nick, &room, &self.roster));
            }
        }
        self.settle(ctx);
    }

    /// The next free `guest-N`.
    fn guest_nick(&mut self) -> String {
        loop {
            self.last_guest += 1;
            let nick = format!("guest-{}", self.last_guest);
            if self.roster.holder(&nick).is_none()
                && !self.sib.as_ref().is_some_and(|s| s.held(&nick))
            {
                return nick;
            }
        }
    }

    /// Refuses a connection over `max_clients`.
    fn refuse_full(&mut self, ctx: &Ctx, conn: ConnId, peer: &str) {
        let _ = ctx.send(conn, b"! server full\n");
        let _ = ctx.close(conn, CloseMode::Flush);
        if let Some(n) = self.refused_full.count(ctx.now_ms()) {
            ctx.warn(format_args!(
                "server full (max_clients = {}{}): refused {n} connection(s), the latest from {peer}",
                self.config.max_clients,
                match ctx.worker().1 {
                    1 => String::new(),
                    n => format!(" on this worker, its share of {n} workers'"),
                }
            ));
        }
    }

    /// Tells a member its line of `len` bytes (or more) was too long (it is
    /// dropped). `max` is the limit that applied: `max_line`, or `max_frame`
    /// if that is smaller. The bytes count against the rate limit as a
    /// line's do: a client sending only over-long lines is paused like one
    /// that sends too many, or it could make loopd read and chat answer as
    /// fast as it sends.
    fn too_long(&mut self, ctx: &Ctx, conn: ConnId, max: usize, len: usize) {
        self.reply(ctx, conn, format_args!("! line too long (max {max} bytes)"));
        let limits = self.limits;
        if limits.enabled() {
            if let Some(member) = self.roster.get_mut(conn) {
                let now = ctx.now_ms();
                let client = &mut member.data;
                client.limiter.charge(&limits, len, now);
                let idle = !client.busy && client.waiting_lines == 0;
                if idle && client.limiter.wait_ms(&limits, 1, now) > 0 && pause(ctx, conn, client) {
                    if let Some(n) = self.paused_rate.count(now) {
                        ctx.info(format_args!(
                            "rate limit ({}): paused reading {n} time(s), the latest {} (connection \
                             {conn}, {}, lines too long)",
                            self.limit_text, member.nick, client.peer
                        ));
                    }
                    self.arm(ctx, conn, now);
                }
            }
        }
        self.settle(ctx);
    }

    /// One line from a member, within `max_frame` (loopd checked that):
    /// run now if the rate limit allows it and nothing of the member's is
    /// waiting (lines, or a bridge reply), else queued behind it with the
    /// member's reading paused.
    fn on_line(&mut self, ctx: &Ctx, conn: ConnId, line: &[u8]) {
        if line.len() > self.config.max_line {
            // max_frame is larger than max_line: loopd delivered it whole.
            return self.too_long(ctx, conn, self.config.max_line, line.len());
        }
        let limits = self.limits;
        let Some(member) = self.roster.get_mut(conn) else {
            return;
        };
        let client = &mut member.data;
        let now = ctx.now_ms();
        let queued = client.busy || client.waiting_lines > 0;
        // Ignored lines cost nothing; /quit is never held to the rate.
        if !queued
            && (!limits.enabled()
                || is_blank(line)
                || is_quit(line)
                || client.limiter.try_take(&limits, line.len(), now))
        {
            return self.run(ctx, conn, line);
        }
        // The line waits, and so does the rest of the input (in loopd's
        // buffer, then the kernel's, then the client's).
        client.push_waiting(line);
        let for_rate = !client.busy;
        if pause(ctx, conn, client) && for_rate {
            if let Some(n) = self.paused_rate.count(now) {
                ctx.info(format_args!(
                    "rate limit ({}): paused reading {n} time(s), the latest {} (connection \
                     {conn}, {})",
                    self.limit_text, member.nick, client.peer
                ));
            }
        }
        if for_rate {
            self.arm(ctx, conn, now);
        }
    }

    /// Sets the member's timer for when its first waiting line can go. A
    /// timer already set for earlier stays.
    fn arm(&mut self, ctx: &Ctx, conn: ConnId, now: u64) {
        let limits = self.limits;
        let Some(member) = self.roster.get_mut(conn) else {
            return;
        };
        let client = &mut member.data;
        // Nothing waits, but reading is paused for lines that were too long:
        // until the buckets hold a line again.
        let Some(len) = client
            .first_waiting_len()
            .or((client.paused && !client.busy).then_some(1))
        else {
            return;
        };
        let due = now.saturating_add(client.limiter.wait_ms(&limits, len, now));
        if let Some((timer, at)) = client.timer {
            if at <= due {
                return;
            }
            let _ = ctx.cancel_timer(timer);
            client.timer = None;
        }
        match ctx.set_timer(Duration::from_millis(due.saturating_sub(now)), conn.raw()) {
            Ok(timer) => client.timer = Some((timer, due)),
            Err(e) => {
                // Without a timer nothing would release the lines: let
                // them go now rather than keep the client paused forever.
                ctx.warn(format_args!(
                    "cannot set a timer ({e}): {}'s waiting lines go now, past the rate limit",
                    member.nick
                ));
                self.release(ctx, conn, true);
            }
        }
    }

    /// Runs the member's waiting lines the rate limit allows now (`force`:
    /// all of them), up to one that waits for a bridge reply; resumes
    /// reading once nothing waits, else sets the timer for the next line.
    fn release(&mut self, ctx: &Ctx, conn: ConnId, force: bool) {
        let now = ctx.now_ms();
        let limits = self.limits;
        loop {
            let Some(member) = self.roster.get_mut(conn) else {
                // Cut off, or gone with /quit, while its lines ran.
                return self.settle(ctx);
            };
            let client = &mut member.data;
            if client.busy {
                break;
            }
            let Some(len) = client.first_waiting_len() else {
                break;
            };
            let mut line = std::mem::take(&mut self.scratch);
            client.peek_waiting(len, &mut line);
            let go = force
                || !limits.enabled()
                || is_blank(&line)
                || is_quit(&line)
                || client.limiter.try_take(&limits, len, now);
            if !go {
                self.scratch = line;
                break;
            }
            client.pop_waiting(len);
            self.run(ctx, conn, &line);
            self.scratch = line;
        }
        let Some(member) = self.roster.get_mut(conn) else {
            return self.settle(ctx);
        };
        let client = &mut member.data;
        if client.busy {
            // The reply releases the rest.
        } else if client.waiting_lines == 0 {
            unpause(ctx, conn, client);
        } else if !force {
            self.arm(ctx, conn, now);
        }
        self.settle(ctx);
    }

    /// The member now waits for a bridge reply: its reading pauses.
    fn start_op(&mut self, ctx: &Ctx, conn: ConnId) {
        if let Some(member) = self.roster.get_mut(conn) {
            member.data.busy = true;
            pause(ctx, conn, &mut member.data);
        }
    }

    /// The reply came (or the bridge went down): run what waited behind it.
    fn end_op(&mut self, ctx: &Ctx, conn: ConnId) {
        if let Some(member) = self.roster.get_mut(conn) {
            member.data.busy = false;
            self.release(ctx, conn, false);
        }
    }

    /// Runs one line: a command or text for the room, or an error reply.
    fn run(&mut self, ctx: &Ctx, conn: ConnId, line: &[u8]) {
        match protocol::clean(line) {
            Ok(text) => self.command(ctx, conn, protocol::parse(&text)),
            Err(BadLine::NotUtf8) => self.reply(
                ctx,
                conn,
                format_args!("! invalid UTF-8: lines must be UTF-8 text"),
            ),
            Err(BadLine::Control) => self.reply(
                ctx,
                conn,
                format_args!("! control characters are not allowed"),
            ),
        }
        self.settle(ctx);
    }

    fn command(&mut self, ctx: &Ctx, conn: ConnId, input: Input<'_>) {
        let Some(member) = self.roster.get(conn) else {
            return;
        };
        match input {
            Input::Empty => {}
            Input::Say(text) => {
                if let Some(m) = &self.metrics {
                    ctx.metric_add(m.said, 1.0);
                }
                // The hot path: the line is built once, without allocating.
                let room = member.room.clone();
                self.out.clear();
                self.out.extend_from_slice(member.nick.as_bytes());
                self.out.extend_from_slice(b": ");
                self.out.extend_from_slice(text.as_bytes());
                self.out.push(b'\n');
                self.tell_room_of(ctx, conn);
                self.publish_out(ctx, &room, KIND_LINE);
            }
            Input::Me(action) => {
                if let Some(m) = &self.metrics {
                    ctx.metric_add(m.acted, 1.0);
                }
                // `+ `, never `* `: an action cannot pass for a notice.
                let room = member.room.clone();
                compose(&mut self.out, format_args!("+ {} {action}", member.nick));
                self.tell_room_of(ctx, conn);
                self.publish_out(ctx, &room, KIND_LINE);
            }
            Input::Nick(nick) => {
                if !protocol::valid_name(nick) {
                    return self.reply(ctx, conn, format_args!("! invalid nick"));
                }
                let key = fold(nick);
                let holder = self.roster.holder(nick);
                if holder.is_some_and(|h| h != conn) || self.claiming.contains(&key) {
                    return self.reply(ctx, conn, format_args!("! nick {nick} is taken"));
                }
                if let (None, Some(s)) = (holder, self.sib.as_mut()) {
                    // A nick nobody on this worker holds: worker 0 knows
                    // whether another worker's member does.
                    if s.is_authority() {
                        if s.held(nick) {
                            return self.reply(ctx, conn, format_args!("! nick {nick} is taken"));
                        }
                    } else {
                        let room = member.room.clone();
                        let name = self.roster.room_name(&room).unwrap_or(&room).to_string();
                        s.push(
                            ctx,
                            Record::Claim {
                                conn: conn.raw(),
                                nick,
                                room: &room,
                                name: &name,
                            },
                        );
                        self.claiming.insert(key);
                        return self.start_op(ctx, conn);
                    }
                }
                if holder.is_none() {
                    // A nick nobody here holds: it must be free on every
                    // other instance too (a claim in Redis, atomically).
                    let value = presence(nick, &member.room, &self.roster);
                    let old = fold(&member.nick);
                    let op = Op::Nick {
                        conn,
                        nick: nick.to_string(),
                    };
                    if let Some(b) = self.bridge.as_mut().filter(|b| b.is_up()) {
                        if b.claim(ctx, &key, &value, &old, op) {
                            self.claiming.insert(key);
                            return self.start_op(ctx, conn);
                        }
                    }
                }
                self.rename(ctx, conn, nick);
            }
            Input::Join(room) => {
                if !protocol::valid_name(room) {
                    return self.reply(ctx, conn, format_args!("! invalid room name"));
                }
                let nick = member.nick.clone();
                let Some(old) = self.roster.move_to(conn, room) else {
                    let name = self.roster.room_name(&member_room(&self.roster, conn));
                    let name = name.unwrap_or(room).to_string();
                    return self.reply(ctx, conn, format_args!("* you are already in {name}"));
                };
                compose(&mut self.out, format_args!("* {nick} left"));
                if self.announced(self.roster.room_len(&old) + 1) {
                    self.broadcast_out(ctx, &old, None);
                }
                self.publish_out(ctx, &old, KIND_JOIN);
                let key = member_room(&self.roster, conn);
                let name = self.roster.room_name(&key).unwrap_or(room).to_string();
                let size = self.roster.room_len(&key);
                self.sib_presence(ctx, conn);
                if let Some(b) = self.bridge.as_mut() {
                    if self.roster.room_len(&old) == 0 {
                        b.unsubscribe(ctx, &old);
                    }
                    b.subscribe(ctx, &key);
                    b.set_member(ctx, &fold(&nick), &presence(&nick, &key, &self.roster));
                }
                if self.announced(size) {
                    self.reply(ctx, conn, format_args!("* you are now in {name}"));
                    compose(&mut self.out, format_args!("* {nick} joined"));
                    self.tell_room_of(ctx, conn);
                } else {
                    let quiet_above = self.config.quiet_above;
                    self.reply(
                        ctx,
                        conn,
                        format_args!(
                            "* you are now in {name} ({size} members: joins and leaves are not \
                             announced in rooms of more than {quiet_above})"
                        ),
                    );
                    compose(&mut self.out, format_args!("* {nick} joined"));
                }
                self.publish_out(ctx, &key, KIND_JOIN);
            }
            Input::Who(from) => {
                let room = member.room.clone();
                let op = Op::Who {
                    conn,
                    from: from.to_string(),
                };
                if let Some(b) = self.bridge.as_mut().filter(|b| b.is_up()) {
                    if b.who(ctx, &room, from, op) {
                        return self.start_op(ctx, conn);
                    }
                }
                if self.sib.is_some() {
                    let page = self.who_all(&room, from);
                    return self.answer_who(ctx, conn, from, page, false);
                }
                let page = self.roster.who(&room, from, self.config.max_list);
                let page = Page {
                    items: page.items.into_iter().map(str::to_string).collect(),
                    next: page.next.map(|(n, left)| (n.to_string(), left)),
                };
                self.answer_who(ctx, conn, from, page, self.bridge.is_some());
            }
            Input::Rooms(from) => {
                let op = Op::Rooms {
                    conn,
                    from: from.to_string(),
                };
                if let Some(b) = self.bridge.as_mut().filter(|b| b.is_up()) {
                    if b.rooms(ctx, from, op) {
                        return self.start_op(ctx, conn);
                    }
                }
                if self.sib.is_some() {
                    let page = self.rooms_all(from);
                    return self.answer_rooms(ctx, conn, from, page, false);
                }
                let page = self.roster.rooms(from, self.config.max_list);
                let page = Page {
                    items: page
                        .items
                        .into_iter()
                        .map(|(n, c)| (n.to_string(), c))
                        .collect(),
                    next: page.next.map(|((n, c), left)| ((n.to_string(), c), left)),
                };
                self.answer_rooms(ctx, conn, from, page, self.bridge.is_some());
            }
            Input::Quit => {
                self.reply(ctx, conn, format_args!("* bye"));
                self.depart(ctx, conn, format_args!("/quit"));
                let _ = ctx.close(conn, CloseMode::Flush);
            }
            Input::Help => {
                self.out.clear();
                self.out.extend_from_slice(protocol::HELP.as_bytes());
                self.send_out(ctx, conn);
            }
            Input::Usage(synopsis) => self.reply(ctx, conn, format_args!("! usage: {synopsis}")),
            Input::Unknown(word) => self.reply(
                ctx,
                conn,
                format_args!("! unknown command {word} (try /help)"),
            ),
        }
    }

    /// Renames a member here (the bridge, if any, granted the nick); tells
    /// it, and its room (here and on the other instances).
    fn rename(&mut self, ctx: &Ctx, conn: ConnId, nick: &str) {
        match self.roster.rename(conn, nick) {
            Err(Taken) => self.reply(ctx, conn, format_args!("! nick {nick} is taken")),
            Ok(old) => {
                self.reply(ctx, conn, format_args!("* you are now {nick}"));
                if old != nick {
                    let room = member_room(&self.roster, conn);
                    compose(&mut self.out, format_args!("* {old} is now {nick}"));
                    self.tell_room_of(ctx, conn);
                    self.publish_out(ctx, &room, KIND_LINE);
                    if fold(&old) != fold(nick) {
                        self.sib_gone(ctx, &fold(&old));
                    }
                    self.sib_presence(ctx, conn);
                    // Down, or a change of case: the claim did not record it.
                    let value = presence(nick, &room, &self.roster);
                    if let Some(b) = self.bridge.as_mut() {
                        if fold(&old) != fold(nick) {
                            b.del_member(ctx, &fold(&old));
                        }
                        b.set_member(ctx, &fold(nick), &value);
                    }
                }
            }
        }
    }

    /// Formats a `/who` answer and sends it. `local`: the bridge is
    /// configured but this answer is only this instance's.
    fn answer_who(&mut self, ctx: &Ctx, conn: ConnId, from: &str, page: Page<String>, local: bool) {
        let room = member_room(&self.roster, conn);
        let Chat { roster, out, .. } = self;
        let name = roster.room_name(&room).unwrap_or(&room);
        out.clear();
        let _ = write!(out, "* online in {name}");
        if !from.is_empty() {
            let _ = write!(out, " from {from}");
        }
        out.extend_from_slice(b": ");
        if page.items.is_empty() {
            out.extend_from_slice(b"none");
        }
        for (i, nick) in page.items.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(nick.as_bytes());
        }
        if let Some((next, left)) = page.next {
            let _ = write!(out, "; {left} more: /who {next}");
        }
        if local {
            out.extend_from_slice(LOCAL_ONLY.as_bytes());
        }
        out.push(b'\n');
        self.send_out(ctx, conn);
    }

    /// Formats a `/rooms` answer and sends it.
    fn answer_rooms(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        from: &str,
        page: Page<(String, usize)>,
        local: bool,
    ) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"* rooms");
        if !from.is_empty() {
            let _ = write!(out, " from {from}");
        }
        out.extend_from_slice(b": ");
        if page.items.is_empty() {
            out.extend_from_slice(b"none");
        }
        for (i, (name, count)) in page.items.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            let _ = write!(out, "{name} ({count})");
        }
        if let Some(((next, _), left)) = page.next {
            let _ = write!(out, "; {left} more: /rooms {next}");
        }
        if local {
            out.extend_from_slice(LOCAL_ONLY.as_bytes());
        }
        out.push(b'\n');
        self.send_out(ctx, conn);
    }

    /// Publishes `self.out` (without its `\n`) to a room's channel.
    fn publish_out(&mut self, ctx: &Ctx, room: &str, kind: u8) {
        let line = self.out.strip_suffix(b"\n").unwrap_or(&self.out);
        if let Some(b) = self.bridge.as_mut() {
            b.publish(ctx, room, kind, line);
        }
        if let Some(s) = self.sib.as_mut() {
            s.push(ctx, Record::Line { room, kind, line });
        }
    }

    /// A member leaves on its own (`/quit`, EOF): what chat holds back for
    /// it goes to loopd, so the connection's flush sends it; the room is
    /// told now.
    fn depart(&mut self, ctx: &Ctx, conn: ConnId, why: fmt::Arguments<'_>) {
        if let Some(member) = self.roster.get_mut(conn) {
            pump(ctx, conn, &mut member.data.backlog, true);
        }
        self.leave(ctx, conn, why);
    }
}

impl Chat {
    /// Tells the other workers where a member is (its nick and room).
    fn sib_presence(&mut self, ctx: &Ctx, conn: ConnId) {
        let (Some(s), Some(m)) = (self.sib.as_mut(), self.roster.get(conn)) else {
            return;
        };
        let name = self.roster.room_name(&m.room).unwrap_or(&m.room);
        s.push(
            ctx,
            Record::Presence {
                nick: &m.nick,
                room: &m.room,
                name,
            },
        );
    }

    /// Tells the other workers a member's nick (folded) is free again.
    fn sib_gone(&mut self, ctx: &Ctx, key: &str) {
        if let Some(s) = self.sib.as_mut() {
            s.push(ctx, Record::Gone { key });
        }
    }

    /// A `/who` page of a room over every worker: this one's roster and the
    /// directory of the others.
    fn who_all(&self, room: &str, from: &str) -> Page<String> {
        let mut nicks: Vec<String> = self
            .roster
            .who(room, from, usize::MAX)
            .items
            .into_iter()
            .map(str::to_string)
            .collect();
        if let Some(s) = &self.sib {
            nicks.extend(
                s.directory
                    .values()
                    .filter(|r| r.room == room && roster::at_or_after(&r.nick, from))
                    .map(|r| r.nick.clone()),
            );
        }
        roster::page_nicks(nicks, self.config.max_list)
    }

    /// A `/rooms` page over every worker.
    fn rooms_all(&self, from: &str) -> Page<(String, usize)> {
        let mut rooms: HashMap<String, (String, usize)> = HashMap::new();
        for (name, n) in self.roster.rooms("", usize::MAX).items {
            rooms.insert(fold(name), (name.to_string(), n));
        }
        if let Some(s) = &self.sib {
            for r in s.directory.values() {
                rooms
                    .entry(r.room.clone())
                    .or_insert_with(|| (r.name.clone(), 0))
                    .1 += 1;
            }
        }
        let from = fold(from);
        let rooms = rooms
            .into_iter()
            .filter(|(key, _)| *key >= from)
            .map(|(key, (name, n))| (key, name, n))
            .collect();
        roster::page_rooms(rooms, self.config.max_list)
    }

    /// A batch of records from another worker.
    fn sibling_batch(&mut self, ctx: &Ctx, msg: &[u8]) {
        let Some(mut s) = self.sib.take() else {
            return;
        };
        let Some((from, records)) = s.receive(msg) else {
            self.sib = Some(s);
            return;
        };
        let me = s.index;
        self.sib = Some(s);
        for rec in records {
            match rec {
                Record::Line { room, kind, line } => self.remote_line(ctx, room, kind, line),
                Record::Presence { nick, room, name } => {
                    if let Some(s) = self.sib.as_mut() {
                        s.set(from, nick, room, name);
                    }
                }
                Record::Gone { key } => {
                    if let Some(s) = self.sib.as_mut() {
                        s.unset(from, key);
                    }
                }
                Record::Claim {
                    conn,
                    nick,
                    room,
                    name,
                } if me == 0 => self.grant(ctx, from, conn, nick, room, name),
                Record::Answer { to, conn, ok, nick } if to == me => {
                    let conn = ConnId::from_raw(conn);
                    if self.joining.contains_key(&conn) {
                        let value = ok.then(|| Value::Bulk(nick.as_bytes().to_vec()));
                        self.bridge_reply(ctx, Op::Guest(conn), value);
                    } else {
                        // A nick claim (or a guest nick for a client gone
                        // meanwhile): a nick granted to nobody goes back.
                        let op = Op::Nick {
                            conn,
                            nick: nick.to_string(),
                        };
                        self.bridge_reply(ctx, op, Some(Value::Integer(i64::from(ok))));
                    }
                }
                Record::Claim { .. } | Record::Answer { .. } => {}
            }
            self.settle(ctx);
        }
    }

    /// On worker 0: `worker`'s member `conn` asks for `nick` (`""`: a guest
    /// nick). Granted when no member of any worker holds it, recorded at
    /// once (so no second claim gets it before the holder's presence
    /// arrives), and answered.
    fn grant(&mut self, ctx: &Ctx, worker: u32, conn: u64, nick: &str, room: &str, name: &str) {
        let (ok, nick) = if nick.is_empty() {
            (true, self.guest_nick())
        } else {
            let taken = self.roster.holder(nick).is_some()
                || self.sib.as_ref().is_some_and(|s| {
                    s.directory
                        .get(&fold(nick))
                        .is_some_and(|r| r.worker != worker)
                });
            (!taken, nick.to_string())
        };
        if let Some(s) = self.sib.as_mut() {
            if ok {
                s.set(worker, &nick, room, name);
            }
            s.push(
                ctx,
                Record::Answer {
                    to: worker,
                    conn,
                    ok,
                    nick: &nick,
                },
            );
        }
    }
}

/// What a member's entry in Redis holds: nick, room key, room name.
fn presence(nick: &str, room_key: &str, roster: &Roster<ConnId, Client>) -> String {
    let name = roster.room_name(room_key).unwrap_or(room_key);
    format!("{nick}\n{room_key}\n{name}")
}

/// A published line for everyone in the room.
const KIND_LINE: u8 = b'L';
/// A published join or leave notice: each instance shows it to its members
/// if the room is not over `quiet_above` there.
const KIND_JOIN: u8 = b'J';
/// The end of a `/who` or `/rooms` answer while the bridge is down.
const LOCAL_ONLY: &str = " (this server only: the bridge to the others is down)";
/// What members are told when the bridge goes down, and comes back.
const BRIDGE_DOWN: &str =
    "* the bridge to the other servers is down: until it is back, only this server's members hear you";
const BRIDGE_BACK: &str = "* the bridge to the other servers is back";

/// The room key of a member ("" if it is not one).
fn member_room(roster: &Roster<ConnId, Client>, conn: ConnId) -> String {
    roster.get(conn).map(|m| m.room.clone()).unwrap_or_default()
}

impl Handler for Chat {
    type Config = Config;
    type Conn = ChatConn;
    const FRAMING: Framing = Framing::Line;
    const FRAMINGS: &'static [Framing] = &[Framing::Line];
    /// Connections only: loopd refuses a `udp://` listener on it.
    const DATAGRAMS: bool = false;
    // 1.1's on_oversize and on_partial (without them an over-long line
    // would disconnect its sender and a half-written one be broadcast);
    // 1.3's pause_read (the rate limit), connect_with and repeating timers
    // (the bridge).
    const MIN_HOST_MINOR: u32 = 3;

    fn create(ctx: &Ctx, _instance: &str, mut config: Config) -> Result<Self, String> {
        config.validate()?;
        // max_clients is the process's: with several workers each instance
        // takes its share, rounded up (as loopd splits max_connections).
        let (_, workers) = ctx.worker();
        config.max_clients = config.max_clients.div_ceil(workers.max(1) as usize);
        let limit_text = config.limit_text();
        ctx.debug(format_args!(
            "chat: max_line {} bytes, max_pending {} bytes, max_clients {}, rate limit {} \
             (bursts of {} lines, {} bytes), quiet_above {}, max_list {}",
            config.max_line,
            config.max_pending,
            config.max_clients,
            if limit_text.is_empty() {
                "off"
            } else {
                &limit_text
            },
            config.burst_lines,
            config.burst_bytes(),
            config.quiet_above,
            config.max_list
        ));
        let bridge = match config.bridge_settings()? {
            Some(settings) => {
                let mut b = Bridge::new(settings, ctx);
                b.start(ctx)?;
                let s = b.settings();
                ctx.info(format_args!(
                    "bridge to {} (prefix \"{}\", presence expires after {} ms), instance id {}",
                    s.target, s.prefix, s.ttl_ms, b.id
                ));
                Some(b)
            }
            None => None,
        };
        let (index, count) = ctx.worker();
        let sib = if count < 2 {
            None
        } else if bridge.is_some() {
            ctx.debug(format_args!(
                "worker {index} of {count}: rooms span the workers through the bridge"
            ));
            None
        } else {
            ctx.debug(format_args!(
                "worker {index} of {count}: rooms span the workers through sibling posts; \
                 worker 0 grants the nicks"
            ));
            Some(Siblings::new(index, count))
        };
        Ok(Chat {
            metrics: ChatMetrics::new(ctx)?,
            limits: config.limits(),
            limit_text,
            config,
            roster: Roster::new(),
            last_guest: 0,
            out: Vec::new(),
            scratch: Vec::new(),
            slow: Vec::new(),
            noted_small_max_frame: false,
            refused_full: Refusals::default(),
            refused_framing: Refusals::default(),
            paused_rate: Refusals::default(),
            leaving: HashMap::new(),
            bridge,
            joining: HashMap::new(),
            claiming: HashSet::new(),
            sib,
            worker: (index, count),
        })
    }

    fn on_open(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        info: &ConnInfo<'_>,
    ) -> Result<ChatConn, String> {
        if let Some(b) = self.bridge.as_mut().filter(|b| b.is_link(conn)) {
            b.on_open(ctx, conn);
            self.bridge_events(ctx);
            return Ok(ChatConn::default());
        }
        let peer = peer_text(info);
        if info.framing != Framing::Line {
            let name = match info.framing {
                Framing::Raw => "raw",
                Framing::LengthPrefixed => "length-prefixed",
                _ => "unknown",
            };
            if let Some(n) = self.refused_framing.count(ctx.now_ms()) {
                ctx.warn(format_args!(
                    "chat needs framing = \"line\" (its default), not \"{name}\": refused {n} \
                     connection(s), the latest from {peer}; remove the framing key or set it to \
                     \"line\""
                ));
            }
            return Err(format!("unsupported framing \"{name}\""));
        }
        let state = ChatConn::default();
        if self.roster.len() + self.joining.len() >= self.config.max_clients {
            self.refuse_full(ctx, conn, &peer);
            return Ok(state);
        }
        let mut client = Client::new(peer, &self.limits, ctx.now_ms());
        if let Some(b) = self.bridge.as_mut().filter(|b| b.is_up()) {
            // A guest-N free on every instance: the welcome waits for it,
            // and so does the client's input.
            if b.guest(ctx, LOBBY, LOBBY, "", Op::Guest(conn)) {
                pause(ctx, conn, &mut client);
                self.joining.insert(conn, client);
                return Ok(state);
            }
        }
        if let Some(s) = self.sib.as_mut().filter(|s| !s.is_authority()) {
            // Worker 0 hands out the guest-N nicks: the welcome waits for it.
            s.push(
                ctx,
                Record::Claim {
                    conn: conn.raw(),
                    nick: "",
                    room: LOBBY,
                    name: LOBBY,
                },
            );
            pause(ctx, conn, &mut client);
            self.joining.insert(conn, client);
            return Ok(state);
        }
        let nick = self.guest_nick();
        self.admit(ctx, conn, nick, client);
        self.gauges(ctx);
        Ok(state)
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _state: &mut ChatConn, line: &[u8]) {
        if self.roster.contains(conn) {
            self.on_line(ctx, conn, line);
        } else if let Some(b) = self.bridge.as_mut().filter(|b| b.is_link(conn)) {
            b.on_data(ctx, conn, line);
            self.bridge_events(ctx);
        }
        self.gauges(ctx);
    }

    fn on_oversize(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        _state: &mut ChatConn,
        frame_size: u64,
        max_frame: u64,
    ) -> OversizeAction {
        // Skipped by loopd as it streams in: none of it is buffered.
        if !self.roster.contains(conn) {
            // Closing already (refused as "server full", or cut off).
            return OversizeAction::Skip;
        }
        let max_line = self.config.max_line;
        let max = usize::try_from(max_frame).map_or(max_line, |f| f.min(max_line));
        if max < max_line && !self.noted_small_max_frame {
            self.noted_small_max_frame = true;
            ctx.warn(format_args!(
                "max_frame ({max_frame} bytes) is below chat's max_line ({max_line} bytes): \
                 lines over {max_frame} bytes are refused; set max_frame = {max_line}"
            ));
        }
        ctx.debug(format_args!(
            "connection {conn}: skipping a line of {frame_size}+ bytes over max_frame \
             ({max_frame} bytes)"
        ));
        self.too_long(
            ctx,
            conn,
            max,
            usize::try_from(frame_size).unwrap_or(usize::MAX),
        );
        OversizeAction::Skip
    }

    fn on_partial(&mut self, _ctx: &Ctx, _conn: ConnId, state: &mut ChatConn, line: &[u8]) {
        // The client closed in the middle of a line: it never finished it,
        // so nobody sees it. on_eof follows and logs it.
        state.dropped_partial = Some(line.len());
    }

    fn on_eof(&mut self, ctx: &Ctx, conn: ConnId, state: &mut ChatConn) -> EofAction {
        let Some(member) = self.roster.get_mut(conn) else {
            // loopd closes the connection once its output is sent.
            return EofAction::Close;
        };
        if let Some(len) = state.dropped_partial {
            ctx.debug(format_args!(
                "{} (connection {conn}): EOF; a half-written line dropped ({len} bytes)",
                member.nick
            ));
        }
        // Never while lines wait: loopd holds the EOF back while reading is
        // paused, and delivers it after the lines that came before it.
        debug_assert_eq!(member.data.waiting_lines, 0);
        self.depart(ctx, conn, format_args!("EOF"));
        self.settle(ctx);
        EofAction::Close
    }

    fn on_writable(&mut self, ctx: &Ctx, conn: ConnId, _state: &mut ChatConn) {
        if let Some(member) = self.roster.get_mut(conn) {
            pump(ctx, conn, &mut member.data.backlog, false);
        } else if let Some(backlog) = self.leaving.get_mut(&conn) {
            pump(ctx, conn, backlog, false);
            if backlog.is_empty() {
                self.leaving.remove(&conn);
                let _ = ctx.close(conn, CloseMode::Flush);
            }
        }
    }

    fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, user_data: u64) {
        if let Some(s) = self.sib.as_mut().filter(|s| s.timer == Some(timer)) {
            return s.on_timer(ctx);
        }
        if let Some(b) = self.bridge.as_mut() {
            if b.on_timer(ctx, timer) {
                return self.bridge_events(ctx);
            }
        }
        let conn = ConnId::from_raw(user_data);
        let Some(member) = self.roster.get_mut(conn) else {
            return;
        };
        if member.data.timer.map(|(t, _)| t) != Some(timer) {
            return;
        }
        member.data.timer = None;
        self.release(ctx, conn, false);
    }

    fn on_close(&mut self, ctx: &Ctx, conn: ConnId, _state: ChatConn, reason: CloseReason) {
        if let Some(b) = self.bridge.as_mut().filter(|b| b.is_link(conn)) {
            b.on_close(ctx, conn);
            return self.bridge_events(ctx);
        }
        self.leaving.remove(&conn);
        // Gone while waiting for its nick: the reply finds it gone.
        self.joining.remove(&conn);
        if self.roster.contains(conn) {
            self.leave(ctx, conn, format_args!("{reason}"));
            self.settle(ctx);
        }
        self.gauges(ctx);
    }

    fn on_shutdown(&mut self, ctx: &Ctx) {
        // Everyone leaves at once: each client is told why and closed once
        // its output is sent. No `* nick left` notices: every recipient is
        // leaving too. Output chat holds back for a slow client is not
        // dropped: it goes out as loopd's queue drains (`on_writable`),
        // within loopd's shutdown_timeout_ms. Lines still waiting for the
        // rate limit are dropped (logged at debug level).
        // Its presence leaves Redis first, while the links are up.
        if let Some(b) = self.bridge.as_mut() {
            b.shutdown(ctx);
        }
        for (conn, _) in self.joining.drain() {
            let _ = ctx.send(conn, b"* server shutting down\n");
            let _ = ctx.close(conn, CloseMode::Flush);
        }
        let members = self.roster.keys();
        ctx.info(format_args!(
            "shutting down: closing {} chat client(s)",
            members.len()
        ));
        compose(&mut self.out, format_args!("* server shutting down"));
        for conn in members {
            let Some(member) = self.roster.remove(conn) else {
                continue;
            };
            let mut client = member.data;
            if let Some((timer, _)) = client.timer {
                let _ = ctx.cancel_timer(timer);
            }
            if client.waiting_lines > 0 {
                ctx.debug(format_args!(
                    "{} (connection {conn}): {} line(s) waiting for the rate limit dropped at \
                     shutdown",
                    member.nick, client.waiting_lines
                ));
            }
            client.backlog.extend(&self.out);
            pump(ctx, conn, &mut client.backlog, false);
            if client.backlog.is_empty() {
                let _ = ctx.close(conn, CloseMode::Flush);
            } else {
                self.leaving.insert(conn, client.backlog);
            }
        }
        self.slow.clear();
        if let Some(s) = self.sib.as_mut() {
            s.flush(ctx);
        }
    }

    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        self.sibling_batch(ctx, msg);
    }
}

#[cfg(feature = "plugin")]
loopd_handler_api::export_handler!(Chat, name = "chat");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        serde_json::from_str::<Config>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_table_gives_the_defaults() {
        let config = parse("{}").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.max_line, 4096);
        assert_eq!(config.max_pending, 1_048_576);
        assert_eq!(config.max_clients, 10_000);
        assert_eq!((config.rate_lines, config.burst_lines), (10, 20));
        assert_eq!((config.rate_bytes, config.burst_bytes()), (16_384, 65_536));
        let long = parse(r#"{"max_line": 100000}"#).unwrap();
        assert_eq!(long.burst_bytes(), 100_000, "room for the longest line");
        assert_eq!(long.validate(), Ok(()));
        assert_eq!((config.quiet_above, config.max_list), (100, 100));
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.limit_text(), "10 lines/s, 16384 bytes/s");
        assert!(config.limits().enabled());
        let off = parse(r#"{"rate_lines": 0, "rate_bytes": 0}"#).unwrap();
        assert_eq!(off.validate(), Ok(()));
        assert!(!off.limits().enabled());
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        assert!(parse(r#"{"max_lines": 10}"#)
            .unwrap_err()
            .contains("unknown field `max_lines`"));
        assert!(parse(r#"{"max_line": -1}"#).is_err());
        assert!(parse(r#"{"max_line": "4096"}"#).is_err());
    }

    #[test]
    fn limits_are_checked_with_the_key_and_range_named() {
        let bad = |c: Config| c.validate().unwrap_err();
        let d = Config::default();
        assert!(bad(Config {
            max_line: 0,
            ..d.clone()
        })
        .starts_with("max_line = 0"));
        assert!(bad(Config {
            max_line: MAX_LINE_LIMIT + 1,
            ..d.clone()
        })
        .contains("1 to 1048576"));
        let e = bad(Config {
            max_line: 4096,
            max_pending: 4096,
            ..d.clone()
        });
        assert!(e.starts_with("max_pending = 4096"), "{e}");
        assert!(e.contains("4160"), "{e}");
        assert!(bad(Config {
            max_pending: MAX_PENDING_LIMIT + 1,
            ..d.clone()
        })
        .starts_with("max_pending"));
        assert!(bad(Config {
            max_clients: 0,
            ..d.clone()
        })
        .starts_with("max_clients = 0"));
        for (c, want) in [
            (
                Config {
                    rate_lines: MAX_LINES_LIMIT + 1,
                    ..d.clone()
                },
                "rate_lines = 1000001 is out of range: 0 (no limit)",
            ),
            (
                Config {
                    burst_lines: 0,
                    ..d.clone()
                },
                "burst_lines = 0 is out of range: 1",
            ),
            (
                Config {
                    rate_bytes: MAX_BYTES_LIMIT + 1,
                    ..d.clone()
                },
                "rate_bytes = 1073741825",
            ),
            (
                Config {
                    burst_bytes: Some(4095),
                    ..d.clone()
                },
                "burst_bytes = 4095 is out of range: 4096 (max_line",
            ),
            (
                Config {
                    max_list: 0,
                    ..d.clone()
                },
                "max_list = 0 is out of range: 1 to 10000",
            ),
        ] {
            let e = bad(c);
            assert!(e.starts_with(want), "{e}");
        }
        // The edges are accepted.
        let edge = Config {
            max_line: 1,
            max_pending: 1 + RELAY_OVERHEAD,
            max_clients: 1,
            rate_lines: 0,
            burst_lines: 1,
            rate_bytes: 0,
            burst_bytes: Some(1),
            quiet_above: 0,
            max_list: 1,
            bridge_ttl_ms: 1_000,
            bridge_retry_max_ms: 100,
            ..d.clone()
        };
        assert_eq!(edge.validate(), Ok(()));
        for (c, want) in [
            (
                Config {
                    bridge_prefix: String::new(),
                    ..d.clone()
                },
                "bridge_prefix = \"\": 1 to 200",
            ),
            (
                Config {
                    bridge_prefix: "a b".into(),
                    ..d.clone()
                },
                "bridge_prefix = \"a b\"",
            ),
            (
                Config {
                    bridge_ttl_ms: 999,
                    ..d.clone()
                },
                "bridge_ttl_ms = 999 is out of range: 1000 to 3600000",
            ),
            (
                Config {
                    bridge_retry_max_ms: 600_001,
                    ..d.clone()
                },
                "bridge_retry_max_ms = 600001 is out of range: 100 to 600000",
            ),
        ] {
            let e = bad(c);
            assert!(e.starts_with(want), "{e}");
        }
        let bridged = parse(r#"{"bridge": "rediss://127.0.0.1:6380"}"#).unwrap();
        let s = bridged.bridge_settings().unwrap().unwrap();
        assert_eq!(s.target.connect_url(), "tls://127.0.0.1:6380");
        let bridged = parse(r#"{"bridge": "redis://127.0.0.1:7000/2"}"#).unwrap();
        let s = bridged.bridge_settings().unwrap().unwrap();
        assert_eq!((s.target.addr.port(), s.target.db), (7000, 2));
        assert_eq!((s.prefix.as_str(), s.ttl_ms), ("loopd:chat:", 15_000));
        assert!(Config::default().bridge_settings().unwrap().is_none());
        let top = Config {
            rate_lines: MAX_LINES_LIMIT,
            burst_lines: MAX_LINES_LIMIT,
            rate_bytes: MAX_BYTES_LIMIT,
            burst_bytes: Some(MAX_BYTES_LIMIT),
            quiet_above: usize::MAX,
            max_list: MAX_LIST_LIMIT,
            ..d.clone()
        };
        assert_eq!(top.validate(), Ok(()));
    }

    #[test]
    fn refusals_are_logged_at_once_then_at_most_once_per_interval_with_a_count() {
        let mut r = Refusals::default();
        assert_eq!(r.count(1_000), Some(1));
        assert_eq!(r.count(1_001), None);
        assert_eq!(r.count(1_000 + REFUSAL_LOG_INTERVAL_MS - 1), None);
        assert_eq!(r.count(1_000 + REFUSAL_LOG_INTERVAL_MS), Some(3));
        assert_eq!(r.count(1_000 + 5 * REFUSAL_LOG_INTERVAL_MS), Some(1));
        // A clock that goes backwards does not stop the counting.
        assert_eq!(r.count(0), None);
    }

    #[test]
    fn waiting_lines_come_out_whole_and_in_order() {
        let limits = Config::default().limits();
        let mut c = Client::new(String::new(), &limits, 0);
        assert_eq!(c.first_waiting_len(), None);
        for line in [&b"one"[..], b"", b"three 3"] {
            c.push_waiting(line);
        }
        assert_eq!((c.waiting_lines, c.waiting_bytes), (3, 10));
        let mut out = Vec::new();
        for want in [&b"one"[..], b"", b"three 3"] {
            let len = c.first_waiting_len().unwrap();
            c.peek_waiting(len, &mut out);
            c.pop_waiting(len);
            assert_eq!(out, want);
        }
        assert_eq!((c.waiting_lines, c.waiting_bytes), (0, 0));
        assert!(c.waiting.is_empty());
        assert_eq!(c.first_waiting_len(), None);
    }

    #[test]
    fn the_longest_relayed_line_fits_in_the_smallest_max_pending() {
        let nick = "n".repeat(protocol::MAX_NAME);
        let text = "t".repeat(100);
        let said = format!("{nick}: {text}\n");
        let acted = format!("+ {nick} {text}\n");
        assert!(said.len().max(acted.len()) <= 100 + RELAY_OVERHEAD);
    }
}
