//! The loopd chat handler: a line-based group chat with rooms, nicknames and
//! slow-consumer protection, usable with `nc`.
//!
//! Every client starts as `guest-N` in `lobby`. A plain line goes to everyone
//! else in the room as `nick: text`; commands (`/nick`, `/join`, `/who`,
//! `/rooms`, `/me`, `/quit`, `/help`) do the rest. Server lines start with
//! `* ` (notices) or `! ` (errors); every line ends with `\n`. The protocol
//! and the config keys are documented in `docs/handlers/chat.md`.
//!
//! ```
//! use loopd_chat::Config;
//!
//! // The `[handler.config]` defaults, and the check `create` runs.
//! let config = Config::default();
//! assert_eq!((config.max_line, config.max_pending), (4096, 1 << 20));
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
//! - **Input** is cut into lines by loopd (`framing = "line"`, chat's
//!   default), which buffers at most the instance's `max_frame` bytes of an
//!   unfinished line. A line over `max_frame` is answered from `on_oversize`
//!   and skipped by loopd as it streams in, without being buffered; a line
//!   over `max_line` but within `max_frame` is answered from `on_data`. A
//!   half-written last line at disconnect reaches `on_partial` and is
//!   dropped. Any other framing is refused (see [`Chat`]).
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

mod protocol;
mod roster;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write as _;

use loopd_handler_api::{
    CloseMode, CloseReason, ConnId, ConnInfo, Ctx, EofAction, Error, Framing, Handler,
    OversizeAction,
};
use serde::Deserialize;

use protocol::{BadLine, Input};
use roster::{Member, Roster, Taken};

/// The room every client starts in.
pub const LOBBY: &str = "lobby";

/// Default `max_line`: bytes in one line, without its line ending.
pub const DEFAULT_MAX_LINE: usize = 4096;
/// Default `max_pending`: bytes of output a client may have waiting.
pub const DEFAULT_MAX_PENDING: usize = 1 << 20;
/// Default `max_clients`.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;

/// Largest `max_line` accepted (1 MiB, loopd's default `max_frame`).
pub const MAX_LINE_LIMIT: usize = 1 << 20;
/// Largest `max_pending` accepted (1 GiB).
pub const MAX_PENDING_LIMIT: usize = 1 << 30;
/// How much longer than `max_line` a relayed line can get: `* ` or `: `,
/// a 32-byte nick, a space and `\n`, rounded up.
const RELAY_OVERHEAD: usize = 64;

/// Most bytes of held-back output handed to loopd in one `send`.
const PUMP_CHUNK: usize = 64 * 1024;
/// Held-back output buffers larger than this are freed once empty.
const KEEP_CAPACITY: usize = 64 * 1024;
/// At most one "server full" (or "wrong framing") warning per this many
/// milliseconds.
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_line: DEFAULT_MAX_LINE,
            max_pending: DEFAULT_MAX_PENDING,
            max_clients: DEFAULT_MAX_CLIENTS,
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
        Ok(())
    }
}

/// A chat instance: who is here, and the limits.
///
/// Chat needs `framing = "line"` (its default when the `[[handler]]` table
/// names none). With any other framing it refuses every connection and says
/// why in a warning (the first at once, then at most one every 10 seconds
/// with the number refused): a handler cannot see the framing before the
/// first connection, so it cannot refuse to start instead.
#[derive(Debug)]
pub struct Chat {
    config: Config,
    roster: Roster<ConnId, Outbox>,
    /// The last `guest-N` number handed out.
    last_guest: u64,
    /// The line being sent, built once per message and reused.
    out: Vec<u8>,
    /// Members found over `max_pending` while delivering; cut off by `settle`.
    slow: Vec<ConnId>,
    /// Whether the warning about a `max_frame` below `max_line` was logged.
    noted_small_max_frame: bool,
    /// Connections refused as "server full".
    refused_full: Refusals,
    /// Connections refused for a framing other than `line`.
    refused_framing: Refusals,
    /// After shutdown: clients whose output chat still holds (loopd's queue
    /// was at its high watermark). Their output goes out as it drains, and
    /// they are closed once it has; no longer members of any room.
    leaving: HashMap<ConnId, Outbox>,
}

/// Counts refused connections of one kind and says when to log about them:
/// the first time at once, then at most once per
/// [`REFUSAL_LOG_INTERVAL_MS`], with the number refused since the last time.
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

/// Output for one member that loopd refused because that member's queue was
/// at its high watermark; written out, in order, on `on_writable`.
#[derive(Debug, Default)]
struct Outbox {
    held: VecDeque<u8>,
    /// Already listed in `Chat::slow`.
    flagged: bool,
    /// The peer address, for log lines.
    peer: String,
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
    member: &mut Member<Outbox>,
    bytes: &[u8],
    slow: &mut Vec<ConnId>,
) {
    let outbox = &mut member.data;
    if outbox.held.is_empty() {
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
                outbox.held.extend(bytes);
            }
            // Closing already (an error, or being cut off): on_close
            // follows and takes it out of the roster.
            Err(_) => return,
        }
    } else {
        outbox.held.extend(bytes);
    }
    let queued = ctx.output_queued(conn).unwrap_or(0);
    if queued + outbox.held.len() > max_pending && !outbox.flagged {
        outbox.flagged = true;
        slow.push(conn);
    }
}

/// Hands held-back output to loopd while it takes it. With `all`, in one
/// piece whatever the watermark (used right before closing with a flush).
fn pump(ctx: &Ctx, conn: ConnId, outbox: &mut Outbox, all: bool) {
    while !outbox.held.is_empty() {
        let chunk = if all {
            outbox.held.make_contiguous()
        } else {
            outbox.held.as_slices().0
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
        outbox.held.drain(..n);
    }
    if outbox.held.is_empty() && outbox.held.capacity() > KEEP_CAPACITY {
        outbox.held = VecDeque::new();
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

    /// Takes a member out of the roster and tells its room `* nick left`.
    /// Every way of leaving ends here, and only the first call per member
    /// does anything: the notice goes out exactly once. `why` is for the log.
    fn leave(&mut self, ctx: &Ctx, conn: ConnId, why: fmt::Arguments<'_>) {
        let Some(member) = self.roster.remove(conn) else {
            return;
        };
        ctx.debug(format_args!(
            "{} left (connection {conn}: {why})",
            member.nick
        ));
        compose(&mut self.out, format_args!("* {} left", member.nick));
        self.broadcast_out(ctx, &member.room, None);
    }

    /// Cuts off every member found over `max_pending`. A cut-off member's
    /// leave notice can push others over, so this runs until none is left.
    fn settle(&mut self, ctx: &Ctx) {
        while let Some(conn) = self.slow.pop() {
            let Some(member) = self.roster.get(conn) else {
                continue;
            };
            let pending = ctx.output_queued(conn).unwrap_or(0) + member.data.held.len();
            ctx.warn(format_args!(
                "disconnecting slow consumer {} (connection {conn}, {}): {pending} bytes of \
                 output pending, over max_pending ({} bytes)",
                member.nick, member.data.peer, self.config.max_pending
            ));
            let _ = ctx.close(conn, CloseMode::Abort);
            self.leave(ctx, conn, format_args!("slow consumer"));
        }
    }

    /// The next free `guest-N`.
    fn guest_nick(&mut self) -> String {
        loop {
            self.last_guest += 1;
            let nick = format!("guest-{}", self.last_guest);
            if self.roster.holder(&nick).is_none() {
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
                "server full (max_clients = {}): refused {n} connection(s), the latest from {peer}",
                self.config.max_clients
            ));
        }
    }

    /// Tells a member its line was too long (it is dropped). `max` is the
    /// limit that applied: `max_line`, or `max_frame` if that is smaller.
    fn too_long(&mut self, ctx: &Ctx, conn: ConnId, max: usize) {
        self.reply(ctx, conn, format_args!("! line too long (max {max} bytes)"));
        self.settle(ctx);
    }

    /// One line from a member, within `max_frame` (loopd checked that).
    fn on_line(&mut self, ctx: &Ctx, conn: ConnId, line: &[u8]) {
        if line.len() > self.config.max_line {
            // max_frame is larger than max_line: loopd delivered it whole.
            return self.too_long(ctx, conn, self.config.max_line);
        }
        match protocol::parse(line) {
            Ok(input) => self.command(ctx, conn, input),
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
                // The hot path: the line is built once, without allocating.
                self.out.clear();
                self.out.extend_from_slice(member.nick.as_bytes());
                self.out.extend_from_slice(b": ");
                self.out.extend_from_slice(text.as_bytes());
                self.out.push(b'\n');
                self.tell_room_of(ctx, conn);
            }
            Input::Me(action) => {
                compose(&mut self.out, format_args!("* {} {action}", member.nick));
                self.tell_room_of(ctx, conn);
            }
            Input::Nick(nick) => {
                if !protocol::valid_name(nick) {
                    return self.reply(ctx, conn, format_args!("! invalid nick"));
                }
                match self.roster.rename(conn, nick) {
                    Err(Taken) => self.reply(ctx, conn, format_args!("! nick {nick} is taken")),
                    Ok(old) => {
                        self.reply(ctx, conn, format_args!("* you are now {nick}"));
                        if old != nick {
                            compose(&mut self.out, format_args!("* {old} is now {nick}"));
                            self.tell_room_of(ctx, conn);
                        }
                    }
                }
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
                self.broadcast_out(ctx, &old, None);
                let name = self
                    .roster
                    .room_name(&member_room(&self.roster, conn))
                    .unwrap_or(room)
                    .to_string();
                self.reply(ctx, conn, format_args!("* you are now in {name}"));
                compose(&mut self.out, format_args!("* {nick} joined"));
                self.tell_room_of(ctx, conn);
            }
            Input::Who => {
                let room = member.room.clone();
                let Chat { roster, out, .. } = self;
                out.clear();
                let name = roster.room_name(&room).unwrap_or(&room);
                let _ = write!(out, "* online in {name}: ");
                for (i, nick) in roster.who(&room).into_iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(nick.as_bytes());
                }
                out.push(b'\n');
                self.send_out(ctx, conn);
            }
            Input::Rooms => {
                let Chat { roster, out, .. } = self;
                out.clear();
                out.extend_from_slice(b"* rooms: ");
                for (i, (name, count)) in roster.rooms().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    let _ = write!(out, "{name} ({count})");
                }
                out.push(b'\n');
                self.send_out(ctx, conn);
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

    /// A member leaves on its own (`/quit`, EOF): what chat holds back for
    /// it goes to loopd, so the connection's flush sends it; the room is
    /// told now.
    fn depart(&mut self, ctx: &Ctx, conn: ConnId, why: fmt::Arguments<'_>) {
        if let Some(member) = self.roster.get_mut(conn) {
            pump(ctx, conn, &mut member.data, true);
        }
        self.leave(ctx, conn, why);
    }
}

/// The room key of a member ("" if it is not one).
fn member_room(roster: &Roster<ConnId, Outbox>, conn: ConnId) -> String {
    roster.get(conn).map(|m| m.room.clone()).unwrap_or_default()
}

impl Handler for Chat {
    type Config = Config;
    type Conn = ChatConn;
    const FRAMING: Framing = Framing::Line;
    // on_oversize and on_partial: without them (a 1.0 host) an over-long
    // line would disconnect its sender and a half-written one be broadcast.
    const MIN_HOST_MINOR: u32 = 1;

    fn create(ctx: &Ctx, _instance: &str, config: Config) -> Result<Self, String> {
        config.validate()?;
        ctx.debug(format_args!(
            "chat: max_line {} bytes, max_pending {} bytes, max_clients {}",
            config.max_line, config.max_pending, config.max_clients
        ));
        Ok(Chat {
            config,
            roster: Roster::new(),
            last_guest: 0,
            out: Vec::new(),
            slow: Vec::new(),
            noted_small_max_frame: false,
            refused_full: Refusals::default(),
            refused_framing: Refusals::default(),
            leaving: HashMap::new(),
        })
    }

    fn on_open(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        info: &ConnInfo<'_>,
    ) -> Result<ChatConn, String> {
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
        if self.roster.len() >= self.config.max_clients {
            self.refuse_full(ctx, conn, &peer);
            return Ok(state);
        }
        let nick = self.guest_nick();
        let outbox = Outbox {
            peer,
            ..Outbox::default()
        };
        if self.roster.insert(conn, &nick, LOBBY, outbox).is_err() {
            return Err(format!("nick {nick} is taken"));
        }
        ctx.debug(format_args!("{nick} joined (connection {conn})"));
        self.reply(
            ctx,
            conn,
            format_args!(
                "* welcome to loopd chat, you are {nick} in {LOBBY} (/help lists the commands)"
            ),
        );
        compose(&mut self.out, format_args!("* {nick} joined"));
        self.tell_room_of(ctx, conn);
        self.settle(ctx);
        Ok(state)
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _state: &mut ChatConn, line: &[u8]) {
        if self.roster.contains(conn) {
            self.on_line(ctx, conn, line);
        }
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
        self.too_long(ctx, conn, max);
        OversizeAction::Skip
    }

    fn on_partial(&mut self, _ctx: &Ctx, _conn: ConnId, state: &mut ChatConn, line: &[u8]) {
        // The client closed in the middle of a line: it never finished it,
        // so nobody sees it. on_eof follows and logs it.
        state.dropped_partial = Some(line.len());
    }

    fn on_eof(&mut self, ctx: &Ctx, conn: ConnId, state: &mut ChatConn) -> EofAction {
        if self.roster.contains(conn) {
            if let Some(len) = state.dropped_partial {
                self.depart(
                    ctx,
                    conn,
                    format_args!("EOF; a half-written line dropped ({len} bytes)"),
                );
            } else {
                self.depart(ctx, conn, format_args!("EOF"));
            }
            self.settle(ctx);
        }
        // loopd closes the connection once its output is sent.
        EofAction::Close
    }

    fn on_writable(&mut self, ctx: &Ctx, conn: ConnId, _state: &mut ChatConn) {
        if let Some(member) = self.roster.get_mut(conn) {
            pump(ctx, conn, &mut member.data, false);
        } else if let Some(outbox) = self.leaving.get_mut(&conn) {
            pump(ctx, conn, outbox, false);
            if outbox.held.is_empty() {
                self.leaving.remove(&conn);
                let _ = ctx.close(conn, CloseMode::Flush);
            }
        }
    }

    fn on_close(&mut self, ctx: &Ctx, conn: ConnId, _state: ChatConn, reason: CloseReason) {
        self.leaving.remove(&conn);
        if self.roster.contains(conn) {
            self.leave(ctx, conn, format_args!("{reason}"));
            self.settle(ctx);
        }
    }

    fn on_shutdown(&mut self, ctx: &Ctx) {
        // Everyone leaves at once: each client is told why and closed once
        // its output is sent. No `* nick left` notices: every recipient is
        // leaving too. Output chat holds back for a slow client is not
        // dropped: it goes out as loopd's queue drains (`on_writable`),
        // within loopd's shutdown_timeout_ms.
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
            let mut outbox = member.data;
            outbox.held.extend(&self.out);
            pump(ctx, conn, &mut outbox, false);
            if outbox.held.is_empty() {
                let _ = ctx.close(conn, CloseMode::Flush);
            } else {
                self.leaving.insert(conn, outbox);
            }
        }
        self.slow.clear();
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
        assert_eq!(config.validate(), Ok(()));
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
        // The edges are accepted.
        let edge = Config {
            max_line: 1,
            max_pending: 1 + RELAY_OVERHEAD,
            max_clients: 1,
        };
        assert_eq!(edge.validate(), Ok(()));
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
    fn the_longest_relayed_line_fits_in_the_smallest_max_pending() {
        let nick = "n".repeat(protocol::MAX_NAME);
        let text = "t".repeat(100);
        let said = format!("{nick}: {text}\n");
        let acted = format!("* {nick} {text}\n");
        assert!(said.len().max(acted.len()) <= 100 + RELAY_OVERHEAD);
    }
}
