//! The Redis bridge: rooms that span several chat instances (processes,
//! machines), through Redis pub/sub.
//!
//! Two outbound connections of the loop itself, raw framing, no client
//! library and no thread: the *command* link publishes lines and keeps
//! presence (who is on this instance, in a hash with an expiry that a
//! heartbeat renews), the *subscriber* link receives what the other
//! instances publish (a subscribed connection cannot run other commands).
//! Both speak RESP3 (`HELLO 3`), or RESP2 if the server does not know
//! `HELLO`; [`crate::resp`] encodes and parses.
//!
//! Redis data under the prefix `P` (`bridge_prefix`):
//! - `P instances`: a set of instance ids;
//! - `P m:ID`: a hash per instance, folded nick -> `nick \n room key \n
//!   room name`, expiring `bridge_ttl_ms` after the last heartbeat (so a
//!   crashed instance's members vanish), deleted at shutdown;
//! - `P guest`: the counter for `guest-N` nicks;
//! - channels `P room:KEY`, one per room, carrying `ID \x1f KIND \x1f LINE`.
//!
//! Nick claims, `/who` and `/rooms` are Lua scripts (atomic, one round
//! trip); everything else is plain commands. This module owns the links,
//! the handshake, replies, heartbeats and reconnection; what the replies
//! mean for members is up to the chat instance, through [`Event`]s.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use loopd_handler_api::{CloseMode, ConnId, ConnectOptions, Ctx, Error, Framing, TimerId};

use crate::resp::{encode_command, Limits, Parser, Value};

/// Default `bridge_prefix`.
pub(crate) const DEFAULT_PREFIX: &str = "loopd:chat:";
/// Default `bridge_ttl_ms`: presence expires this long after the last
/// heartbeat (one every third of it).
pub(crate) const DEFAULT_TTL_MS: u64 = 15_000;
/// Default `bridge_retry_max_ms`: the longest wait between reconnections.
pub(crate) const DEFAULT_RETRY_MAX_MS: u64 = 5_000;
/// The first wait before reconnecting; doubled each failure.
const RETRY_BASE_MS: u64 = 100;
/// A link whose oldest command has had no reply for this many heartbeats
/// is taken for dead.
const STALLED_BEATS: u32 = 2;
/// Output loopd may queue for one link before the bridge gives up on a
/// Redis that does not keep up (the link is dropped and made again).
const LINK_HIGH_WATERMARK: usize = 32 << 20;
const LINK_LOW_WATERMARK: usize = 16 << 20;
/// Separates the fields of a published message.
pub(crate) const SEP: u8 = 0x1f;
/// At most one "cannot reach Redis" warning per this many milliseconds.
const DOWN_LOG_INTERVAL_MS: u64 = 10_000;
/// A connect loopd refuses (no CAs to trust, no TLS) is logged when its
/// reason is new, and again at most this often while it lasts: five minutes.
const REFUSED_LOG_INTERVAL_MS: u64 = 300_000;

/// Where and how to reach Redis: `bridge = "redis://..."` (or
/// `rediss://...`, over TLS), parsed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `rediss://`: the links are `tls://` connections, which trust the
    /// chat entry's `tls_ca` if it has one, else the system's CA
    /// certificates; the server's certificate must carry the URL's IP
    /// address, or its host name (see [`Target::certificate_name`]).
    pub(crate) tls: bool,
    /// The address, resolved once at startup.
    pub(crate) addr: SocketAddr,
    /// The host as written (for log lines).
    pub(crate) host: String,
    /// The host when it is a name, not an IP address: over TLS, the name
    /// the server's certificate must carry (and the SNI sent).
    pub(crate) name: Option<String>,
    /// `AUTH` username (Redis 6 ACLs), if any.
    pub(crate) user: Option<String>,
    /// `AUTH` password, if any.
    pub(crate) password: Option<String>,
    /// `SELECT` database (presence keys live there; pub/sub spans all).
    pub(crate) db: u32,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("Target")
            .field("tls", &self.tls)
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl Target {
    /// The URL the links connect to: `tcp://IP:PORT`, or `tls://IP:PORT`
    /// for `rediss://`.
    pub(crate) fn connect_url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "tcp" };
        format!("{scheme}://{}", self.addr)
    }

    /// What the server's certificate must carry over TLS: the URL's host
    /// name, or the IP address it gave.
    pub(crate) fn certificate_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.addr.ip().to_string(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://{}", self.host)?;
        if self.host.parse::<SocketAddr>().is_err() || self.host != self.addr.to_string() {
            write!(f, " ({})", self.addr)?;
        }
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

/// Parses `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (or `rediss://`,
/// the same over TLS) and resolves HOST (once: a name is looked up here, at
/// startup, as nginx does for its upstream servers).
///
/// # Errors
/// A message naming what is wrong, never the password.
pub(crate) fn parse_target(url: &str) -> Result<Target, String> {
    let (tls, rest) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => {
            return Err(format!(
                "bridge = \"{}\": expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (or \
                 rediss://, over TLS)",
                redact(url)
            ))
        }
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "bridge = \"{}\": query strings and fragments are not supported",
            redact(url)
        ));
    }
    let (auth, hostpart) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (user, password) = match auth {
        None => (None, None),
        Some(a) => {
            let (u, p) = a.split_once(':').unwrap_or((a, ""));
            let u = decode_percent(u).map_err(|e| format!("bridge: the username: {e}"))?;
            let p = decode_percent(p).map_err(|e| format!("bridge: the password: {e}"))?;
            ((!u.is_empty()).then_some(u), (!p.is_empty()).then_some(p))
        }
    };
    if user.is_some() && password.is_none() {
        return Err("bridge: a username needs a password (redis://USER:PASSWORD@HOST)".into());
    }
    let (hostport, db) = match hostpart.split_once('/') {
        None => (hostpart, 0),
        Some((h, "")) => (h, 0),
        Some((h, d)) => match d.parse::<u32>() {
            Ok(n) if d.bytes().all(|b| b.is_ascii_digit()) => (h, n),
            _ => {
                return Err(format!(
                    "bridge = \"{}\": the database \"{d}\" is not a number",
                    redact(url)
                ))
            }
        },
    };
    let (host, port) =
        split_host_port(hostport).map_err(|e| format!("bridge = \"{}\": {e}", redact(url)))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("bridge: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("bridge: {host} has no address"))?;
    let shown = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let name = host.parse::<std::net::IpAddr>().is_err().then_some(host);
    Ok(Target {
        tls,
        addr,
        host: shown,
        name,
        user,
        password,
        db,
    })
}

fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address without its closing ]")?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("unexpected \"{after}\" after the address")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("the port \"{p}\" is not 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// `%XX` decoding for the user and password of a URL.
fn decode_percent(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a % not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

/// The URL with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    match rest.rfind('@') {
        Some(at) => {
            let auth = &rest[..at];
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{}{user}:***@{}", &url[..scheme_end + 3], &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// The bridge's settings, from chat's config.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) target: Target,
    pub(crate) prefix: String,
    pub(crate) ttl_ms: u64,
    pub(crate) retry_max_ms: u64,
}

/// What a reply on the command link is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Handshake steps.
    Hello,
    Auth,
    Select,
    /// A command whose reply only matters if it is an error.
    Plain,
    /// A `guest-N` nick for a connection that is joining.
    Guest(ConnId),
    /// A `/nick` claim.
    Nick {
        conn: ConnId,
        nick: String,
    },
    /// `/who` and `/rooms` answers.
    Who {
        conn: ConnId,
        from: String,
    },
    Rooms {
        conn: ConnId,
        from: String,
    },
    /// The members re-registered after (re)connecting.
    Rejoin,
    /// A member renamed because its nick was taken elsewhere meanwhile.
    Rename {
        conn: ConnId,
        old: String,
    },
}

/// What the chat instance must act on.
#[derive(Debug)]
pub(crate) enum Event {
    /// Both links are ready: register the members, subscribe the rooms.
    /// `again`: it had been up before (members were told it went down).
    Up { again: bool },
    /// The bridge went down (it had been up).
    Down,
    /// Another instance published `line` (of `kind`) to room `room`.
    Message {
        room: String,
        kind: u8,
        line: Vec<u8>,
    },
    /// The reply to `op`; `None` if the link went down first.
    Reply { op: Op, value: Option<Value> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Command,
    Subscriber,
}

#[derive(Debug)]
struct Link {
    conn: ConnId,
    role: Role,
    opened: bool,
    ready: bool,
    resp3: bool,
    parser: Parser,
    pending: VecDeque<Op>,
    /// Heartbeats since the last reply while something was pending.
    stalled: u32,
}

impl Link {
    fn new(conn: ConnId, role: Role) -> Link {
        Link {
            conn,
            role,
            opened: false,
            ready: false,
            resp3: false,
            parser: Parser::new(Limits {
                // A /who over 100,000 members, a message of max_line.
                max_bulk: 8 << 20,
                max_value: 64 << 20,
                ..Limits::default()
            }),
            pending: VecDeque::new(),
            stalled: 0,
        }
    }
}

/// The bridge of one chat instance.
#[derive(Debug)]
pub(crate) struct Bridge {
    settings: Settings,
    /// This instance's id: random, new each start.
    pub(crate) id: String,
    cmd: Option<Link>,
    sub: Option<Link>,
    /// Both links are ready.
    up: bool,
    /// It has been up at least once.
    was_up: bool,
    /// Members were told it is down.
    told_down: bool,
    /// Failed attempts in a row (for the backoff).
    attempts: u32,
    retry: Option<TimerId>,
    heartbeat: Option<TimerId>,
    /// Rooms (keys) subscribed on the current subscriber link.
    subscribed: HashSet<String>,
    /// The chat instance is shutting down: no reconnection.
    stopping: bool,
    /// The last refusal of loopd's that was logged (a `tls://` connect it
    /// has no CAs to trust for), and when; cleared once loopd accepts a
    /// connect again.
    refused: Option<(String, u64)>,
    events: VecDeque<Event>,
    rng: u64,
    /// Failed attempts since the last warning, and when that was.
    down_log: (u64, Option<u64>),
    /// Scratch for encoding commands.
    out: Vec<u8>,
}

impl Bridge {
    pub(crate) fn new(settings: Settings, ctx: &Ctx) -> Bridge {
        let seed = random_seed(ctx);
        Bridge {
            id: format!("{:016x}", seed),
            settings,
            cmd: None,
            sub: None,
            up: false,
            was_up: false,
            told_down: false,
            attempts: 0,
            retry: None,
            heartbeat: None,
            subscribed: HashSet::new(),
            stopping: false,
            refused: None,
            events: VecDeque::new(),
            rng: seed | 1,
            down_log: (0, None),
            out: Vec::new(),
        }
    }

    /// Arms the first connection attempt (at once) and the heartbeat.
    pub(crate) fn start(&mut self, ctx: &Ctx) -> Result<(), String> {
        let beat = Duration::from_millis((self.settings.ttl_ms / 3).max(1));
        self.heartbeat = Some(
            ctx.set_repeating_timer(beat, beat, 0)
                .map_err(|e| format!("bridge: cannot set the heartbeat timer: {e}"))?,
        );
        self.retry = Some(
            ctx.set_timer(Duration::ZERO, 0)
                .map_err(|e| format!("bridge: cannot set a timer: {e}"))?,
        );
        Ok(())
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    pub(crate) fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether `conn` is one of the bridge's links.
    pub(crate) fn is_link(&self, conn: ConnId) -> bool {
        self.cmd.as_ref().is_some_and(|l| l.conn == conn)
            || self.sub.as_ref().is_some_and(|l| l.conn == conn)
    }

    fn link_mut(&mut self, conn: ConnId) -> Option<&mut Link> {
        if self.cmd.as_ref().is_some_and(|l| l.conn == conn) {
            self.cmd.as_mut()
        } else if self.sub.as_ref().is_some_and(|l| l.conn == conn) {
            self.sub.as_mut()
        } else {
            None
        }
    }

    /// A timer of the bridge's fired; `false` if it is not one.
    pub(crate) fn on_timer(&mut self, ctx: &Ctx, timer: TimerId) -> bool {
        if Some(timer) == self.retry {
            self.retry = None;
            self.connect(ctx);
            true
        } else if Some(timer) == self.heartbeat {
            self.beat(ctx);
            true
        } else {
            false
        }
    }

    fn connect(&mut self, ctx: &Ctx) {
        if self.stopping || self.cmd.is_some() || self.sub.is_some() {
            return;
        }
        let url = self.settings.target.connect_url();
        let mut options = ConnectOptions::new()
            .framing(Framing::Raw)
            .watermarks(LINK_HIGH_WATERMARK, LINK_LOW_WATERMARK);
        // rediss://NAME: the certificate must carry NAME (sent as SNI too),
        // as redis-cli and the client libraries check it.
        if let (true, Some(name)) = (self.settings.target.tls, &self.settings.target.name) {
            options = options.server_name(name);
        }
        for role in [Role::Command, Role::Subscriber] {
            match ctx.connect_with(&url, &options) {
                Ok(conn) => {
                    if self.refused.take().is_some() {
                        // The refusal is over: back to the usual backoff.
                        self.attempts = 0;
                    }
                    let link = Some(Link::new(conn, role));
                    match role {
                        Role::Command => self.cmd = link,
                        Role::Subscriber => self.sub = link,
                    }
                }
                Err(e @ (Error::Invalid | Error::Unsupported)) if self.settings.target.tls => {
                    return self.connect_refused(ctx, &url, e);
                }
                Err(e) => {
                    ctx.warn(format_args!(
                        "bridge: cannot connect to {} ({e})",
                        self.settings.target
                    ));
                    // The link made already (if any) goes too: the next
                    // attempt makes both.
                    return self.drop_links(ctx);
                }
            }
        }
    }

    /// loopd refused the `tls://` connect outright: it has no CAs to trust
    /// for it (no `tls_ca`, no system CA certificates), the host is not a
    /// DNS name, or it was built without TLS. Not for good: a reload that
    /// sets `tls_ca` keeps this instance (`tls_ca` is not part of what
    /// makes one) and hands it the CAs, so the bridge keeps trying, at its
    /// longest wait. It says so once, and again only if the reason changes
    /// or every [`REFUSED_LOG_INTERVAL_MS`] while it lasts: each attempt
    /// is refused the same way, and a line per attempt would bury the rest
    /// of the log.
    fn connect_refused(&mut self, ctx: &Ctx, url: &str, e: Error) {
        let why = match e {
            Error::Unsupported => "this loopd was built without TLS",
            _ => {
                "it has no CA certificates to trust for it (or the host is not a valid DNS \
                 name): set tls_ca = \"PATH\" on the chat's [[handler]] entry (the PEM CA that \
                 signed the Redis server's certificate) and reload, or install the system's CA \
                 certificates"
            }
        };
        let message = format!(
            "bridge: cannot connect to {}: loopd refused {url} ({e}): {why}; chat serves this \
             instance alone meanwhile, and the bridge tries again at most every {} ms (this is \
             logged again if the reason changes, else every {} minutes)",
            self.settings.target,
            self.settings.retry_max_ms,
            REFUSED_LOG_INTERVAL_MS / 60_000
        );
        let now = ctx.now_ms();
        let due = self.refused.as_ref().is_none_or(|(said, at)| {
            *said != message || now.saturating_sub(*at) >= REFUSED_LOG_INTERVAL_MS
        });
        if due {
            ctx.error(format_args!("{message}"));
            self.refused = Some((message, now));
        }
        // Straight to the longest wait ([`backoff`] caps the count): the
        // refusal lasts until the entry or the machine changes, so quick
        // attempts would only spin.
        self.attempts = u32::MAX;
        self.drop_links(ctx);
    }

    /// A link connected: start its handshake.
    pub(crate) fn on_open(&mut self, ctx: &Ctx, conn: ConnId) {
        let name = format!("loopd-chat-{}", self.id);
        let target = self.settings.target.clone();
        let Some(link) = self.link_mut(conn) else {
            return;
        };
        link.opened = true;
        let role = match link.role {
            Role::Command => "cmd",
            Role::Subscriber => "sub",
        };
        let name = format!("{name}-{role}");
        let mut args: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(pass) = &target.password {
            args.push(b"AUTH");
            args.push(target.user.as_deref().unwrap_or("default").as_bytes());
            args.push(pass.as_bytes());
        }
        args.push(b"SETNAME");
        args.push(name.as_bytes());
        link.pending.push_back(Op::Hello);
        let mut out = Vec::new();
        encode_command(&mut out, &args);
        let _ = ctx.send(conn, &out);
    }

    /// Bytes from a link.
    pub(crate) fn on_data(&mut self, ctx: &Ctx, conn: ConnId, data: &[u8]) {
        let Some(link) = self.link_mut(conn) else {
            return;
        };
        link.parser.feed(data);
        loop {
            let Some(link) = self.link_mut(conn) else {
                return;
            };
            match link.parser.next() {
                Ok(Some(value)) => self.on_value(ctx, conn, value),
                Ok(None) => return,
                Err(e) => {
                    ctx.warn(format_args!(
                        "bridge: {} sent what is not RESP ({e}): reconnecting",
                        self.settings.target
                    ));
                    return self.drop_links(ctx);
                }
            }
        }
    }

    fn on_value(&mut self, ctx: &Ctx, conn: ConnId, value: Value) {
        let me = self.id.clone();
        let prefix = self.settings.prefix.clone();
        let Some(link) = self.link_mut(conn) else {
            return;
        };
        if link.role == Role::Subscriber {
            if let Some((channel, payload)) = value.message() {
                if let Some(ev) = decode_message(&prefix, &me, channel, payload) {
                    self.events.push_back(ev);
                }
                return;
            }
        }
        let Some(op) = link.pending.pop_front() else {
            ctx.warn(format_args!(
                "bridge: an unexpected reply from {}: reconnecting",
                self.settings.target
            ));
            return self.drop_links(ctx);
        };
        link.stalled = 0;
        match op {
            Op::Hello => match value {
                Value::Error(e) if unknown_command(&e) => {
                    // Before Redis 6: RESP2, and AUTH on its own.
                    link.resp3 = false;
                    let pass = self.settings.target.password.clone();
                    match pass {
                        Some(pass) => {
                            let user = self.settings.target.user.clone();
                            let mut args: Vec<&[u8]> = vec![b"AUTH"];
                            if let Some(u) = &user {
                                args.push(u.as_bytes());
                            }
                            args.push(pass.as_bytes());
                            self.command(ctx, conn, &args, Op::Auth);
                        }
                        None => self.select(ctx, conn),
                    }
                }
                Value::Error(e) => self.refused(ctx, "HELLO", &e),
                _ => {
                    link.resp3 = true;
                    self.select(ctx, conn);
                }
            },
            Op::Auth => match value {
                Value::Error(e) => self.refused(ctx, "AUTH", &e),
                _ => self.select(ctx, conn),
            },
            Op::Select => match value {
                Value::Error(e) => self.refused(ctx, "SELECT", &e),
                _ => self.ready(ctx, conn),
            },
            Op::Plain => {
                if let Value::Error(e) = &value {
                    if link.role == Role::Command {
                        ctx.warn(format_args!(
                            "bridge: Redis answered an error: {}",
                            String::from_utf8_lossy(e)
                        ));
                    }
                }
            }
            op => self.events.push_back(Event::Reply {
                op,
                value: Some(value),
            }),
        }
    }

    /// The handshake's last step, SELECT, if a database other than 0 is
    /// asked for (the subscriber link needs none: pub/sub spans every
    /// database).
    fn select(&mut self, ctx: &Ctx, conn: ConnId) {
        let db = self.settings.target.db;
        let is_cmd = self.cmd.as_ref().is_some_and(|l| l.conn == conn);
        if db != 0 && is_cmd {
            let db = db.to_string();
            self.command(ctx, conn, &[b"SELECT", db.as_bytes()], Op::Select);
        } else {
            self.ready(ctx, conn);
        }
    }

    fn ready(&mut self, ctx: &Ctx, conn: ConnId) {
        if let Some(link) = self.link_mut(conn) {
            link.ready = true;
        }
        let both = self.cmd.as_ref().is_some_and(|l| l.ready)
            && self.sub.as_ref().is_some_and(|l| l.ready);
        if !both {
            return;
        }
        self.up = true;
        self.attempts = 0;
        let again = self.was_up && self.told_down;
        let resp = if self.cmd.as_ref().is_some_and(|l| l.resp3) {
            "RESP3"
        } else {
            "RESP2"
        };
        if self.was_up {
            ctx.info(format_args!(
                "bridge: connected to {} again ({resp})",
                self.settings.target
            ));
        } else {
            ctx.info(format_args!(
                "bridge: connected to {} ({resp}), instance id {}, prefix \"{}\"",
                self.settings.target, self.id, self.settings.prefix
            ));
        }
        self.was_up = true;
        self.told_down = false;
        self.down_log = (0, None);
        self.events.push_back(Event::Up { again });
    }

    fn refused(&mut self, ctx: &Ctx, what: &str, error: &[u8]) {
        ctx.error(format_args!(
            "bridge: {} refused {what}: {} (check the bridge URL's username and password)",
            self.settings.target,
            String::from_utf8_lossy(error)
        ));
        self.drop_links(ctx);
    }

    /// A link closed (or never connected).
    pub(crate) fn on_close(&mut self, ctx: &Ctx, conn: ConnId) {
        if !self.is_link(conn) {
            return;
        }
        let opened = self.link_mut(conn).is_some_and(|l| l.opened);
        if self.stopping {
            self.forget(conn);
            return;
        }
        if self.up {
            ctx.warn(format_args!(
                "bridge: lost the connection to {}: chat goes on on this instance alone; \
                 reconnecting",
                self.settings.target
            ));
        } else if !opened {
            let now = ctx.now_ms();
            self.down_log.0 += 1;
            let due = self
                .down_log
                .1
                .is_none_or(|t| now.saturating_sub(t) >= DOWN_LOG_INTERVAL_MS);
            if due {
                // Over TLS a failed connect may be the handshake: loopd
                // tells a handler only that the connect failed, and logs
                // the handshake's error itself.
                let tls = if self.settings.target.tls {
                    format!(
                        "; over TLS also a failed handshake: the server's certificate must be \
                         signed by a CA loopd trusts for it (tls_ca, else the system's) and \
                         carry {}, and loopd's own warning on the handshake says which",
                        self.settings.target.certificate_name()
                    )
                } else {
                    String::new()
                };
                ctx.warn(format_args!(
                    "bridge: cannot connect to {} ({} attempt(s) failed: refused or \
                     unreachable{tls}): retrying, at most every {} ms",
                    self.settings.target, self.down_log.0, self.settings.retry_max_ms
                ));
                self.down_log = (0, Some(now));
            }
        }
        self.forget(conn);
        self.drop_links(ctx);
    }

    fn forget(&mut self, conn: ConnId) {
        if self.cmd.as_ref().is_some_and(|l| l.conn == conn) {
            let link = self.cmd.take().expect("the command link");
            self.fail_pending(link.pending);
        } else if self.sub.as_ref().is_some_and(|l| l.conn == conn) {
            self.sub = None;
            self.subscribed.clear();
        }
    }

    fn fail_pending(&mut self, pending: VecDeque<Op>) {
        for op in pending {
            if !matches!(op, Op::Hello | Op::Auth | Op::Select | Op::Plain) {
                self.events.push_back(Event::Reply { op, value: None });
            }
        }
    }

    /// Closes both links (what is pending fails) and schedules a retry.
    fn drop_links(&mut self, ctx: &Ctx) {
        for link in [self.cmd.take(), self.sub.take()].into_iter().flatten() {
            let _ = ctx.close(link.conn, CloseMode::Abort);
            if link.role == Role::Command {
                self.fail_pending(link.pending);
            }
        }
        self.subscribed.clear();
        if self.up {
            self.up = false;
            self.told_down = true;
            self.events.push_back(Event::Down);
        }
        self.fail(ctx);
    }

    /// Schedules the next attempt: exponential backoff with jitter (half
    /// the delay, plus a random part of the other half).
    fn fail(&mut self, ctx: &Ctx) {
        if self.stopping || self.retry.is_some() {
            return;
        }
        let delay = backoff(
            self.attempts,
            self.settings.retry_max_ms,
            self.next_random(),
        );
        self.attempts = self.attempts.saturating_add(1);
        match ctx.set_timer(Duration::from_millis(delay), 0) {
            Ok(t) => self.retry = Some(t),
            Err(e) => ctx.error(format_args!(
                "bridge: cannot set the reconnection timer ({e}): the bridge stays down"
            )),
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn beat(&mut self, ctx: &Ctx) {
        // A link that has not answered for STALLED_BEATS heartbeats is
        // dead, even if TCP has not noticed.
        let mut dead = false;
        for link in [self.cmd.as_mut(), self.sub.as_mut()].into_iter().flatten() {
            if link.pending.is_empty() {
                link.stalled = 0;
            } else {
                link.stalled += 1;
                dead |= link.stalled > STALLED_BEATS;
            }
        }
        if dead {
            ctx.warn(format_args!(
                "bridge: {} has not answered for {} heartbeats: reconnecting",
                self.settings.target, STALLED_BEATS
            ));
            return self.drop_links(ctx);
        }
        if !self.up {
            return;
        }
        let key = self.member_key();
        let ttl = self.settings.ttl_ms.to_string();
        let set = format!("{}instances", self.settings.prefix);
        let id = self.id.clone();
        self.send_cmd(
            ctx,
            &[b"PEXPIRE", key.as_bytes(), ttl.as_bytes()],
            Op::Plain,
        );
        self.send_cmd(ctx, &[b"SADD", set.as_bytes(), id.as_bytes()], Op::Plain);
        if let Some(conn) = self.sub.as_ref().map(|l| l.conn) {
            self.command(ctx, conn, &[b"PING"], Op::Plain);
        }
    }

    /// Sends a command on a link, expecting a reply for `op`.
    fn command(&mut self, ctx: &Ctx, conn: ConnId, args: &[&[u8]], op: Op) {
        self.out.clear();
        encode_command(&mut self.out, args);
        match ctx.send(conn, &self.out) {
            Ok(()) => {
                if let Some(link) = self.link_mut(conn) {
                    link.pending.push_back(op);
                }
            }
            Err(e) => {
                // Again: loopd holds 32 MiB for Redis already. Either
                // way the link is no good now.
                ctx.warn(format_args!(
                    "bridge: cannot send to {} ({e}): reconnecting",
                    self.settings.target
                ));
                if let Some(link) = self.link_mut(conn) {
                    link.pending.push_back(op);
                }
                self.drop_links(ctx);
            }
        }
    }

    /// A command on the command link, if the bridge is up; `false` (and
    /// nothing sent) if it is not.
    fn send_cmd(&mut self, ctx: &Ctx, args: &[&[u8]], op: Op) -> bool {
        let Some(conn) = self.cmd.as_ref().filter(|l| l.ready).map(|l| l.conn) else {
            return false;
        };
        if !self.up {
            return false;
        }
        self.command(ctx, conn, args, op);
        true
    }

    /// A script on the command link: `EVAL script 0 prefix id ttl args...`.
    fn script(&mut self, ctx: &Ctx, body: &str, args: &[&[u8]], op: Op) -> bool {
        let script = format!("{SCRIPT_HEAD}{body}");
        let ttl = self.settings.ttl_ms.to_string();
        let prefix = self.settings.prefix.clone();
        let id = self.id.clone();
        let mut all: Vec<&[u8]> = vec![
            b"EVAL",
            script.as_bytes(),
            b"0",
            prefix.as_bytes(),
            id.as_bytes(),
            ttl.as_bytes(),
        ];
        all.extend_from_slice(args);
        self.send_cmd(ctx, &all, op)
    }

    fn member_key(&self) -> String {
        format!("{}m:{}", self.settings.prefix, self.id)
    }

    /// The channel of a room.
    fn channel(&self, room: &str) -> String {
        format!("{}room:{room}", self.settings.prefix)
    }

    // ---------------------------------------------------------------------
    // What the chat instance asks for
    // ---------------------------------------------------------------------

    /// Publishes a line to a room's channel (nothing while down).
    pub(crate) fn publish(&mut self, ctx: &Ctx, room: &str, kind: u8, line: &[u8]) {
        if !self.up {
            return;
        }
        let channel = self.channel(room);
        let mut payload = Vec::with_capacity(self.id.len() + 3 + line.len());
        payload.extend_from_slice(self.id.as_bytes());
        payload.push(SEP);
        payload.push(kind);
        payload.push(SEP);
        payload.extend_from_slice(line);
        self.send_cmd(ctx, &[b"PUBLISH", channel.as_bytes(), &payload], Op::Plain);
    }

    /// Subscribes to a room's channel (once).
    pub(crate) fn subscribe(&mut self, ctx: &Ctx, room: &str) {
        let Some(conn) = self.sub.as_ref().filter(|l| l.ready).map(|l| l.conn) else {
            return;
        };
        if !self.up || !self.subscribed.insert(room.to_string()) {
            return;
        }
        let channel = self.channel(room);
        self.command(ctx, conn, &[b"SUBSCRIBE", channel.as_bytes()], Op::Plain);
    }

    /// Unsubscribes from a room's channel.
    pub(crate) fn unsubscribe(&mut self, ctx: &Ctx, room: &str) {
        let Some(conn) = self.sub.as_ref().filter(|l| l.ready).map(|l| l.conn) else {
            return;
        };
        if !self.subscribed.remove(room) {
            return;
        }
        let channel = self.channel(room);
        self.command(ctx, conn, &[b"UNSUBSCRIBE", channel.as_bytes()], Op::Plain);
    }

    /// Records (or updates) a member in this instance's presence hash.
    pub(crate) fn set_member(&mut self, ctx: &Ctx, fold: &str, value: &str) {
        let key = self.member_key();
        let ttl = self.settings.ttl_ms.to_string();
        if self.send_cmd(
            ctx,
            &[b"HSET", key.as_bytes(), fold.as_bytes(), value.as_bytes()],
            Op::Plain,
        ) {
            self.send_cmd(
                ctx,
                &[b"PEXPIRE", key.as_bytes(), ttl.as_bytes()],
                Op::Plain,
            );
        }
    }

    /// Takes a member out of this instance's presence hash.
    pub(crate) fn del_member(&mut self, ctx: &Ctx, fold: &str) {
        let key = self.member_key();
        self.send_cmd(ctx, &[b"HDEL", key.as_bytes(), fold.as_bytes()], Op::Plain);
    }

    /// Claims a nick (free on every other live instance) for `op`; `false`
    /// if the bridge is down.
    pub(crate) fn claim(&mut self, ctx: &Ctx, fold: &str, value: &str, old: &str, op: Op) -> bool {
        self.script(
            ctx,
            SCRIPT_CLAIM,
            &[fold.as_bytes(), value.as_bytes(), old.as_bytes()],
            op,
        )
    }

    /// Allocates a `guest-N` nick free everywhere and records it with
    /// `room`; the reply is the nick. `old` (a folded nick or "") is
    /// removed in the same step.
    pub(crate) fn guest(
        &mut self,
        ctx: &Ctx,
        room_key: &str,
        room_name: &str,
        old: &str,
        op: Op,
    ) -> bool {
        self.script(
            ctx,
            SCRIPT_GUEST,
            &[room_key.as_bytes(), room_name.as_bytes(), old.as_bytes()],
            op,
        )
    }

    /// The nicks in a room on every live instance, from `from` on.
    pub(crate) fn who(&mut self, ctx: &Ctx, room_key: &str, from: &str, op: Op) -> bool {
        let from = from.to_ascii_lowercase();
        self.script(ctx, SCRIPT_WHO, &[room_key.as_bytes(), from.as_bytes()], op)
    }

    /// The rooms on every live instance, from `from` on, with their sizes.
    pub(crate) fn rooms(&mut self, ctx: &Ctx, from: &str, op: Op) -> bool {
        let from = from.to_ascii_lowercase();
        self.script(ctx, SCRIPT_ROOMS, &[from.as_bytes()], op)
    }

    /// Replaces this instance's presence with `members` (folded nick,
    /// value); the reply lists the folded nicks another instance holds.
    pub(crate) fn rejoin(&mut self, ctx: &Ctx, members: &[(String, String)]) -> bool {
        let mut args: Vec<&[u8]> = Vec::with_capacity(members.len() * 2);
        for (fold, value) in members {
            args.push(fold.as_bytes());
            args.push(value.as_bytes());
        }
        self.script(ctx, SCRIPT_REJOIN, &args, Op::Rejoin)
    }

    /// Shutdown: this instance's presence is removed, the links close once
    /// that is sent; no reconnection.
    pub(crate) fn shutdown(&mut self, ctx: &Ctx) {
        if self.stopping {
            return;
        }
        let key = self.member_key();
        let set = format!("{}instances", self.settings.prefix);
        let id = self.id.clone();
        self.send_cmd(ctx, &[b"DEL", key.as_bytes()], Op::Plain);
        self.send_cmd(ctx, &[b"SREM", set.as_bytes(), id.as_bytes()], Op::Plain);
        self.stopping = true;
        for timer in [self.retry.take(), self.heartbeat.take()]
            .into_iter()
            .flatten()
        {
            let _ = ctx.cancel_timer(timer);
        }
        for link in [self.cmd.as_ref(), self.sub.as_ref()].into_iter().flatten() {
            let _ = ctx.close(link.conn, CloseMode::Flush);
        }
        self.up = false;
    }
}

/// The wait before attempt `attempts + 1`: `RETRY_BASE_MS` doubled per
/// failure up to `max`, then half of it fixed and half random (so
/// instances that lost Redis together do not come back in step).
pub(crate) fn backoff(attempts: u32, max: u64, random: u64) -> u64 {
    let full = RETRY_BASE_MS
        .saturating_mul(1u64 << attempts.min(30))
        .min(max)
        .max(1);
    let half = full / 2;
    half + random % (full - half + 1)
}

fn unknown_command(error: &[u8]) -> bool {
    let e = String::from_utf8_lossy(error).to_ascii_lowercase();
    e.contains("unknown command") || e.starts_with("noproto")
}

/// A message from the subscriber link, if it is another instance's line
/// for one of our rooms.
pub(crate) fn decode_message(
    prefix: &str,
    me: &str,
    channel: &[u8],
    payload: &[u8],
) -> Option<Event> {
    let room = channel
        .strip_prefix(prefix.as_bytes())?
        .strip_prefix(b"room:")?;
    let room = std::str::from_utf8(room).ok()?.to_string();
    let mut parts = payload.splitn(3, |&b| b == SEP);
    let from = parts.next()?;
    let kind = parts.next()?;
    let line = parts.next()?;
    if from == me.as_bytes() || kind.len() != 1 {
        return None;
    }
    Some(Event::Message {
        room,
        kind: kind[0],
        line: line.to_vec(),
    })
}

/// A seed for the instance id and the jitter: the clock, the process and
/// the address of a local, hashed.
fn random_seed(ctx: &Ctx) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ctx.now_ms());
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// What every script starts with: ARGV[1] prefix, ARGV[2] this instance's
/// id, ARGV[3] the TTL in ms; `live()` lists live instances (dropping
/// those whose presence expired), `held(fold, others_only)` whether a nick
/// is taken, `put` records one of ours.
const SCRIPT_HEAD: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local P, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function live()
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'instances')) do
    if id == me or redis.call('EXISTS', P .. 'm:' .. id) == 1 then
      out[#out + 1] = id
    else
      redis.call('SREM', P .. 'instances', id)
    end
  end
  return out
end
local function held(fold, others_only)
  for _, id in ipairs(live()) do
    if (id ~= me or not others_only) and redis.call('HEXISTS', P .. 'm:' .. id, fold) == 1 then
      return true
    end
  end
  return false
end
local function put(fold, value)
  redis.call('HSET', P .. 'm:' .. me, fold, value)
  redis.call('PEXPIRE', P .. 'm:' .. me, ttl)
  redis.call('SADD', P .. 'instances', me)
end
local function fields(v)
  local a = string.find(v, '\n', 1, true)
  local b = string.find(v, '\n', a + 1, true)
  return string.sub(v, 1, a - 1), string.sub(v, a + 1, b - 1), string.sub(v, b + 1)
end
"#;

/// ARGV[4] folded nick, ARGV[5] value, ARGV[6] the old folded nick ("").
/// 1: claimed; 0: another instance holds it.
const SCRIPT_CLAIM: &str = r#"
local fold, value, old = ARGV[4], ARGV[5], ARGV[6]
if held(fold, true) then return 0 end
if old ~= '' and old ~= fold then redis.call('HDEL', P .. 'm:' .. me, old) end
put(fold, value)
return 1
"#;

/// ARGV[4] room key, ARGV[5] room name, ARGV[6] an old folded nick to drop
/// (""). The next guest-N that nobody holds, recorded; at most 1000 tries.
const SCRIPT_GUEST: &str = r#"
local room, name, old = ARGV[4], ARGV[5], ARGV[6]
for _ = 1, 1000 do
  local nick = 'guest-' .. redis.call('INCR', P .. 'guest')
  if not held(nick, false) then
    if old ~= '' then redis.call('HDEL', P .. 'm:' .. me, old) end
    put(nick, nick .. '\n' .. room .. '\n' .. name)
    return nick
  end
end
return redis.error_reply('ERR no free guest nick in 1000 tries')
"#;

/// ARGV[4] room key, ARGV[5] lowercase FROM. The nicks in the room on
/// every live instance that sort at or after FROM.
const SCRIPT_WHO: &str = r#"
local room, from = ARGV[4], ARGV[5]
local out = {}
for _, id in ipairs(live()) do
  for _, v in ipairs(redis.call('HVALS', P .. 'm:' .. id)) do
    local nick, key = fields(v)
    if key == room and string.lower(nick) >= from then out[#out + 1] = nick end
  end
end
return out
"#;

/// ARGV[4] lowercase FROM. Flat: room key, name, members, for every room
/// on every live instance whose key sorts at or after FROM.
const SCRIPT_ROOMS: &str = r#"
local from = ARGV[4]
local names, counts, keys = {}, {}, {}
for _, id in ipairs(live()) do
  for _, v in ipairs(redis.call('HVALS', P .. 'm:' .. id)) do
    local _, key, name = fields(v)
    if key >= from then
      if counts[key] == nil then
        counts[key] = 0
        names[key] = name
        keys[#keys + 1] = key
      end
      counts[key] = counts[key] + 1
    end
  end
end
local out = {}
for _, key in ipairs(keys) do
  out[#out + 1] = key
  out[#out + 1] = names[key]
  out[#out + 1] = counts[key]
end
return out
"#;

/// ARGV[4..] pairs of folded nick and value: this instance's members, as
/// they are now. Replaces its presence; returns the folded nicks another
/// instance holds (not recorded).
const SCRIPT_REJOIN: &str = r#"
redis.call('DEL', P .. 'm:' .. me)
local taken = {}
for i = 4, #ARGV, 2 do
  if held(ARGV[i], true) then taken[#taken + 1] = ARGV[i]
  else redis.call('HSET', P .. 'm:' .. me, ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', P .. 'm:' .. me, ttl)
redis.call('SADD', P .. 'instances', me)
return taken
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_every_part_and_defaults() {
        let t = parse_target("redis://127.0.0.1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:6379".parse().unwrap());
        assert_eq!((t.user, t.password, t.db), (None, None, 0));
        let t = parse_target("redis://127.0.0.1:7777/3").unwrap();
        assert_eq!((t.addr.port(), t.db), (7777, 3));
        let t = parse_target("redis://:s%40cret@127.0.0.1:1/").unwrap();
        assert_eq!(
            (t.user, t.password.as_deref(), t.db),
            (None, Some("s@cret"), 0)
        );
        let t = parse_target("redis://bob:pw:with:colons@[::1]:6380/15").unwrap();
        assert_eq!(t.user.as_deref(), Some("bob"));
        assert_eq!(t.password.as_deref(), Some("pw:with:colons"));
        assert_eq!(t.addr, "[::1]:6380".parse().unwrap());
        assert_eq!(t.db, 15);
        assert_eq!(t.host, "[::1]:6380");
        // A name is resolved.
        let t = parse_target("redis://localhost:6379").unwrap();
        assert!(t.addr.ip().is_loopback());
        assert!(!format!("{t:?}").contains("pw"));
        let t = parse_target("redis://u:topsecret@127.0.0.1").unwrap();
        assert!(!format!("{t:?} {t}").contains("topsecret"));
        assert!(!t.tls);
        assert_eq!(t.connect_url(), "tcp://127.0.0.1:6379");
    }

    #[test]
    fn rediss_urls_connect_over_tls() {
        let t = parse_target("rediss://:pw@127.0.0.1:6380/2").unwrap();
        assert!(t.tls);
        assert_eq!(t.connect_url(), "tls://127.0.0.1:6380");
        assert_eq!((t.password.as_deref(), t.db), (Some("pw"), 2));
        assert_eq!(t.to_string(), "rediss://127.0.0.1:6380/2");
        let t = parse_target("rediss://[::1]").unwrap();
        assert_eq!(t.connect_url(), "tls://[::1]:6379");
        assert_eq!(t.to_string(), "rediss://[::1]:6379");
        assert_eq!(t.name, None);
        assert_eq!(t.certificate_name(), "::1");
        // A name is resolved once, as for redis://; the connect is to the
        // address it resolved to, and the certificate must carry the name.
        let t = parse_target("rediss://localhost:6380").unwrap();
        assert!(t.addr.ip().is_loopback());
        assert!(t.to_string().starts_with("rediss://localhost:6380 ("));
        assert_eq!(t.connect_url(), format!("tls://{}", t.addr));
        assert_eq!(t.name.as_deref(), Some("localhost"));
        assert_eq!(t.certificate_name(), "localhost");
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_never_show_the_password() {
        for (url, want) in [
            ("http://127.0.0.1", "expected redis://"),
            ("tls://127.0.0.1:6380", "(or rediss://, over TLS)"),
            ("rediss://127.0.0.1:0", "the port \"0\" is not 1 to 65535"),
            ("redis://127.0.0.1:0", "the port \"0\" is not 1 to 65535"),
            ("redis://127.0.0.1:99999", "the port \"99999\""),
            ("redis://127.0.0.1/x", "the database \"x\" is not a number"),
            ("redis://127.0.0.1/-1", "the database \"-1\""),
            ("redis://127.0.0.1?db=1", "query strings"),
            ("redis://", "no host"),
            ("redis://[::1", "without its closing ]"),
            ("redis://bob@127.0.0.1", "a username needs a password"),
            ("redis://:%zz@127.0.0.1", "the password: a % not followed"),
            (
                "rediss://u:hunter2@127.0.0.1/x",
                "rediss://u:***@127.0.0.1/x",
            ),
        ] {
            let e = parse_target(url).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert_eq!(redact("redis://u:p@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact("redis://h"), "redis://h");
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        for (attempts, full) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (5, 3_200),
            (6, 5_000),
            (40, 5_000),
        ] {
            let lo = backoff(attempts, 5_000, 0);
            let hi = backoff(attempts, 5_000, u64::MAX - 1);
            assert_eq!(lo, full / 2, "attempt {attempts}");
            assert!(hi <= full && hi >= lo, "attempt {attempts}: {hi}");
            for r in [1, 17, 12_345, u64::MAX] {
                let d = backoff(attempts, 5_000, r);
                assert!((full / 2..=full).contains(&d), "{d}");
            }
        }
        assert_eq!(backoff(3, 1, 7), 1);
    }

    #[test]
    fn messages_from_this_instance_or_not_ours_are_dropped() {
        let ev = decode_message("p:", "me", b"p:room:dev", b"them\x1fL\x1fbob: hi\x1fthere");
        match ev {
            Some(Event::Message { room, kind, line }) => {
                assert_eq!((room.as_str(), kind), ("dev", b'L'));
                assert_eq!(line, b"bob: hi\x1fthere");
            }
            other => panic!("{other:?}"),
        }
        assert!(decode_message("p:", "me", b"p:room:dev", b"me\x1fL\x1fx").is_none());
        assert!(decode_message("p:", "me", b"q:room:dev", b"them\x1fL\x1fx").is_none());
        assert!(decode_message("p:", "me", b"p:other", b"them\x1fL\x1fx").is_none());
        assert!(decode_message("p:", "me", b"p:room:dev", b"them\x1fLL\x1fx").is_none());
        assert!(decode_message("p:", "me", b"p:room:dev", b"garbage").is_none());
    }

    #[test]
    fn hello_errors_that_mean_an_old_server_are_told_apart() {
        assert!(unknown_command(
            b"ERR unknown command 'HELLO', with args beginning with: '3'"
        ));
        assert!(unknown_command(b"NOPROTO unsupported protocol version"));
        assert!(!unknown_command(
            b"WRONGPASS invalid username-password pair"
        ));
        assert!(!unknown_command(
            b"NOAUTH HELLO must be called with the client already authenticated"
        ));
    }
}
