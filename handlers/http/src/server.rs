//! The connection engine: input → requests → responses, in order, with
//! bounded memory and a deadline for every wait.
//!
//! One request at a time per connection: the next request is parsed only
//! once the current response is entirely queued, so pipelined requests are
//! answered in order and a client cannot make the server read ahead without
//! bound. A file body larger than one chunk goes out with `send_file`
//! (sendfile(2), ABI 1.2) as the connection drains (`on_writable`): the
//! kernel copies it from the page cache, and neither this handler nor loopd
//! holds any of it, so a client that reads slowly costs a file descriptor and
//! a position, no buffer. Smaller bodies (and every body on an older host)
//! are read in chunks into one buffer shared by every connection (all hooks
//! run on one thread) and sent with the head; a streaming connection then
//! costs no buffer of its own beyond what loopd queues for it (bounded by the
//! output watermarks). Small files in the open-file cache (`cache.rs`) are
//! held in memory and sent from there.
//!
//! A file that changes while it is being sent is caught: each chunk read
//! (or sent with sendfile) is followed by an fstat, and a change of size or
//! mtime aborts the connection before the response is complete (the last
//! byte of a sendfile body is read and checked before it goes), so a client
//! never receives a whole response that mixes two versions of a file.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use loopd_handler_api::{
    CloseMode, CloseReason, ConnId, ConnInfo, Ctx, Error, Framing, Level, Metric, Series, TimerId,
};

use crate::body::{Discard, DiscardError};
use crate::cache::{Content, OpenCache, Opened};
use crate::clock::Clock;
use crate::cond::{self, Precondition, RangeAnswer, Validators};
use crate::config::Settings;
use crate::fs::{Root, Stamp};
use crate::mime;
use crate::path::{self, PathError, ReqPath};
use crate::request::{Head, Limits, Request, Scanner};
use crate::response::{self, Connection, HeadBuf};

/// Bytes of a file read per send.
const CHUNK: usize = 64 * 1024;
/// Bodies (or what is left of them) larger than this go out with sendfile.
const SENDFILE_MIN: u64 = CHUNK as u64;
/// Chunks sent per hook call before yielding to other connections (a client
/// that reads as fast as we send would otherwise hold the loop for a whole
/// file).
const CHUNKS_PER_TURN: usize = 16;
/// Longest request line kept in an access log line.
const LOG_LINE_MAX: usize = 1024;

/// Which wait a connection's deadline bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Reading a request head (or a body being discarded): 408 when it passes.
    Header,
    /// Idle between keep-alive requests: close quietly.
    Idle,
    /// A response makes no progress (the client does not read): cut it.
    Send,
    /// Discarding what a client sends after an error response: close.
    Linger,
}

/// One access log line in the making.
#[derive(Debug)]
struct LogEntry {
    request: String,
    /// The method for the metrics (`method_label`).
    method: &'static str,
    status: u16,
    start: Instant,
    bytes: u64,
}

/// Methods the request counter names; any other counts as `other`, one
/// that never parsed as `unknown` (the label stays bounded).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The handler's metrics (ABI 1.4; `None` on an older host).
#[derive(Debug)]
struct HttpMetrics {
    requests: Metric,
    /// Series of `requests` by (status, method), resolved on first use.
    by_code: HashMap<(u16, &'static str), Series>,
    response_time: Series,
}

impl HttpMetrics {
    fn new(ctx: &Ctx) -> Result<Option<HttpMetrics>, String> {
        let requests = match ctx.counter(
            "loopd_http_requests_total",
            "HTTP requests answered, by status code and method.",
            &["code", "method"],
        ) {
            Ok(m) => m,
            Err(Error::Unsupported) => return Ok(None),
            Err(e) => return Err(format!("declaring the http metrics: {e}")),
        };
        let time = ctx
            .histogram(
                "loopd_http_response_seconds",
                "Time from a request's first byte to its response being queued whole.",
                &[],
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
                ],
            )
            .and_then(|m| ctx.series(m, &[]))
            .map_err(|e| format!("declaring the http metrics: {e}"))?;
        Ok(Some(HttpMetrics {
            requests,
            by_code: HashMap::new(),
            response_time: time,
        }))
    }
}

/// A response being sent.
#[derive(Debug)]
struct Response {
    /// The head (plus a small body for error pages) not yet queued.
    head: Vec<u8>,
    /// Bytes of `head` that are body (for the access log).
    head_body: u64,
    /// The file body, `pos..end`.
    file: Option<Rc<Opened>>,
    pos: u64,
    end: u64,
    log: Option<LogEntry>,
    /// sendfile failed on this file (a file system it cannot read from):
    /// the rest is read and sent.
    no_sendfile: bool,
}

/// Per-connection state.
#[derive(Debug)]
struct Conn {
    /// The client's address for the access log (`-` for Unix sockets).
    peer: String,
    /// Input not consumed yet: at most one partial request head while no
    /// response is in progress; bounded by `Server::inbuf_cap` otherwise.
    inbuf: Vec<u8>,
    scanner: Scanner,
    /// A request body being read and thrown away.
    discard: Discard,
    discarded: u64,
    resp: Option<Response>,
    /// Close once the current response is queued.
    close_after: bool,
    /// ... after lingering: the client may still be sending.
    linger_after: bool,
    /// Discarding all input until the client closes or the deadline passes.
    lingering: bool,
    /// When a lingering close ends however steadily the client keeps
    /// sending (`Ctx::now_ms`; `lingering_time`).
    linger_until: u64,
    /// The client shut down its sending side.
    peer_eof: bool,
    /// `close` was called; on_close follows.
    closing: bool,
    /// When the first byte of the pending request arrived.
    req_start: Option<Instant>,
    /// The wait in progress and when it ends (`Ctx::now_ms`).
    deadline: Option<(Wait, u64)>,
    /// The timer armed for deadlines, and when it fires. It may fire before
    /// the deadline (which then re-arms it): moving a deadline later costs
    /// nothing.
    armed: Option<(TimerId, u64)>,
    /// A zero-delay timer that continues a response after a yield.
    resume: Option<TimerId>,
}

/// How `pump` left a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    /// Entirely queued (or there was none).
    Done,
    /// Waiting for `on_writable` or a resume timer.
    Blocked,
    /// The connection is closing.
    Gone,
}

/// What a response is made of, before it is queued.
struct Reply {
    status: u16,
    fields: Vec<(&'static str, String)>,
    body: Body,
    head_only: bool,
    log: Option<LogEntry>,
}

/// A response body.
enum Body {
    /// None at all (304).
    None,
    /// A small HTML page, sent with the head.
    Page(String),
    /// Bytes `start..end` of a file.
    File {
        file: Rc<Opened>,
        start: u64,
        end: u64,
    },
}

/// The handler instance.
#[derive(Debug)]
pub(crate) struct Server {
    ctx: Ctx,
    cfg: Settings,
    limits: Limits,
    root: Root,
    /// The `Server` field's value (`None`: no such field).
    server: Option<String>,
    /// Configured fields (and `X-Content-Type-Options`), rendered once.
    extra_fields: String,
    conns: HashMap<ConnId, Conn>,
    scratch: Vec<u8>,
    clock: Clock,
    shutting_down: bool,
    /// Large bodies go out with `send_file` (until the host says it does
    /// not support it: ABI 1.1).
    sendfile: bool,
    inbuf_cap: usize,
    warned_framing: bool,
    /// Opened files kept between requests (`open_file_cache_*`).
    cache: OpenCache,
    metrics: Option<HttpMetrics>,
}

impl Server {
    pub(crate) fn new(ctx: &Ctx, cfg: Settings) -> Result<Server, String> {
        let root = Root::open(&cfg.root, cfg.hidden_files)?;
        let (version, _) = ctx.host_version();
        let version = if version.is_empty() {
            env!("CARGO_PKG_VERSION")
        } else {
            version
        };
        let limits = Limits {
            max_request_line: cfg.max_request_line,
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
        };
        let inbuf_cap = 2 * (cfg.max_request_line + cfg.max_header_bytes) + 64 * 1024;
        let max = cache_entries(ctx, cfg.open_file_cache_max);
        let cache = OpenCache::new(max, cfg.open_file_cache_valid_ms);
        ctx.info(format_args!(
            "serving {} (index {:?}; files opened with {}; open-file cache: {})",
            root.path().display(),
            cfg.index.as_deref().unwrap_or(""),
            root.backend().describe(),
            match (max, cfg.open_file_cache_valid_ms) {
                (0, _) => "off".to_string(),
                (n, 0) => format!("{n} files, checked at every use"),
                (n, ms) => format!("{n} files, checked every {ms} ms"),
            }
        ));
        let server = match &cfg.server_header {
            None => Some(format!("loopd/{version}")),
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.clone()),
        };
        Ok(Server {
            ctx: *ctx,
            extra_fields: cfg.extra_fields.clone(),
            cfg,
            limits,
            root,
            server,
            conns: HashMap::new(),
            scratch: vec![0; CHUNK],
            clock: Clock::default(),
            shutting_down: false,
            sendfile: true,
            inbuf_cap,
            warned_framing: false,
            cache,
            metrics: HttpMetrics::new(ctx)?,
        })
    }

    // ------------------------------------------------------------------
    // Hooks
    // ------------------------------------------------------------------

    pub(crate) fn on_open(&mut self, id: ConnId, info: &ConnInfo<'_>) -> Result<(), String> {
        if info.framing != Framing::Raw {
            // Line or length-prefixed framing would mangle HTTP: refuse,
            // and say why once.
            if !self.warned_framing {
                self.warned_framing = true;
                self.ctx.error(format_args!(
                    "this handler parses HTTP itself and needs framing = \"raw\" (the default), \
                     not {:?}: refusing connections",
                    info.framing
                ));
            }
            return Err("framing is not raw".into());
        }
        let peer = info
            .peer
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "-".into());
        self.conns.insert(
            id,
            Conn {
                peer,
                inbuf: Vec::new(),
                scanner: Scanner::default(),
                discard: Discard::None,
                discarded: 0,
                resp: None,
                close_after: false,
                linger_after: false,
                lingering: false,
                linger_until: 0,
                peer_eof: false,
                closing: false,
                req_start: None,
                deadline: None,
                armed: None,
                resume: None,
            },
        );
        // A new connection has header_timeout to send its first request.
        self.set_deadline(id, Wait::Header);
        Ok(())
    }

    pub(crate) fn on_data(&mut self, id: ConnId, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.closing {
            return;
        }
        if c.lingering {
            // The client is still sending: wait for it a little longer
            // (the armed timer moves the close when it fires), within
            // lingering_time.
            if let Some((Wait::Linger, at)) = c.deadline {
                let ms = self.cfg.lingering_timeout.as_millis() as u64;
                let later = self.ctx.now_ms().saturating_add(ms).min(c.linger_until);
                c.deadline = Some((Wait::Linger, at.max(later)));
            }
            return;
        }
        if c.inbuf.is_empty() {
            // The common case: work straight from loopd's buffer and keep
            // only what is left over.
            let used = self.drive(id, data);
            self.keep_input(id, &data[used..]);
        } else {
            c.inbuf.extend_from_slice(data);
            if c.inbuf.len() > self.inbuf_cap {
                self.too_much_input(id);
                return;
            }
            self.resume_input(id);
        }
    }

    pub(crate) fn on_eof(&mut self, id: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        c.peer_eof = true;
        // Keep writing only while a response is in progress; the rest (a
        // partial request, a lingering close) ends with the client.
        !c.closing && c.resp.is_some()
    }

    pub(crate) fn on_writable(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get(&id) {
            if c.resp.is_some() {
                // Progress: the send timeout starts again.
                self.set_deadline(id, Wait::Send);
            }
        }
        if self.pump(id) == Pump::Done {
            self.resume_input(id);
        }
    }

    pub(crate) fn on_timer(&mut self, timer: TimerId, user_data: u64) {
        let now = self.ctx.now_ms();
        let id = ConnId::from_raw(user_data);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.resume == Some(timer) {
            c.resume = None;
            if self.pump(id) == Pump::Done {
                self.resume_input(id);
            }
            return;
        }
        if c.armed.map(|(t, _)| t) != Some(timer) {
            return;
        }
        c.armed = None;
        let Some((wait, at)) = c.deadline else {
            return;
        };
        if now < at {
            self.arm(id, at - now);
            return;
        }
        c.deadline = None;
        match wait {
            Wait::Header => {
                self.ctx.debug(format_args!(
                    "{id}: no complete request within {:?}; 408",
                    self.cfg.header_timeout
                ));
                let c = self.conns.get_mut(&id).expect("checked above");
                // Whatever was half-sent is dropped; the client gets a 408.
                // One caught mid-request may still be sending: linger.
                let midway = c.req_start.is_some() || c.discard.active() || !c.inbuf.is_empty();
                let head = is_head_request(&c.inbuf);
                c.discard = Discard::None;
                c.inbuf = Vec::new();
                let start = c.req_start.take().unwrap_or_else(Instant::now);
                self.error(id, 408, start, ("-".into(), "unknown"), midway, head);
            }
            Wait::Idle => self.close(id, CloseMode::Flush),
            Wait::Send => {
                self.ctx.debug(format_args!(
                    "{id}: client read nothing for {:?}; closing",
                    self.cfg.send_timeout
                ));
                self.close(id, CloseMode::Abort);
            }
            Wait::Linger => self.close(id, CloseMode::Flush),
        }
    }

    pub(crate) fn on_close(&mut self, id: ConnId, reason: CloseReason) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        if let Some((t, _)) = c.armed.take() {
            let _ = self.ctx.cancel_timer(t);
        }
        if let Some(t) = c.resume.take() {
            let _ = self.ctx.cancel_timer(t);
        }
        if let Some(mut r) = c.resp.take() {
            // Cut short: log what was sent.
            if let Some(entry) = r.log.take() {
                self.ctx.debug(format_args!(
                    "{id}: closed ({reason}) with a response in progress"
                ));
                self.log_access(&c.peer, entry);
            }
        }
    }

    pub(crate) fn on_shutdown(&mut self) {
        self.shutting_down = true;
        self.cache.clear();
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.closing
                    && c.resp.is_none()
                    && c.inbuf.is_empty()
                    && !c.discard.active()
                    && c.req_start.is_none()
            })
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.close(id, CloseMode::Flush);
        }
        for c in self.conns.values_mut() {
            c.close_after = true;
        }
    }

    // ------------------------------------------------------------------
    // Input
    // ------------------------------------------------------------------

    /// Stores unconsumed input, within the bound.
    fn keep_input(&mut self, id: ConnId, rest: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if rest.is_empty() || c.closing || c.lingering {
            return;
        }
        c.inbuf.extend_from_slice(rest);
        if c.inbuf.len() > self.inbuf_cap {
            self.too_much_input(id);
        }
    }

    fn too_much_input(&mut self, id: ConnId) {
        self.ctx.debug(format_args!(
            "{id}: more than {} bytes of requests sent ahead of the responses; closing",
            self.inbuf_cap
        ));
        self.close(id, CloseMode::Abort);
    }

    /// Runs the buffered input again (after a response finished).
    fn resume_input(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let buf = std::mem::take(&mut c.inbuf);
        let used = self.drive(id, &buf);
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.closing && !c.lingering && used < buf.len() {
                let mut buf = buf;
                buf.drain(..used);
                c.inbuf = buf;
            }
        }
    }

    /// Consumes requests (and bodies to discard) from `input` while no
    /// response is in progress; returns the bytes consumed.
    fn drive(&mut self, id: ConnId, input: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return input.len();
            };
            if c.closing || c.lingering {
                return input.len();
            }
            if c.discard.active() {
                match c
                    .discard
                    .consume(&input[pos..], &mut c.discarded, self.cfg.max_discard_body)
                {
                    Ok(n) => pos += n,
                    Err(e) => {
                        let why = match e {
                            DiscardError::Malformed => "malformed chunked request body",
                            DiscardError::TooLarge => "request body over max_discard_body",
                        };
                        self.ctx.debug(format_args!("{id}: {why}; closing"));
                        self.stop_reading(id);
                        return input.len();
                    }
                }
                if c.discard.active() {
                    if c.peer_eof {
                        self.close_when_idle(id);
                    } else if c.resp.is_none() && c.deadline.map(|d| d.0) != Some(Wait::Header) {
                        self.set_deadline(id, Wait::Header);
                    }
                    return pos;
                }
            }
            if c.resp.is_some() {
                return pos;
            }
            let rest = &input[pos..];
            if rest.is_empty() {
                if c.peer_eof || self.shutting_down {
                    self.close(id, CloseMode::Flush);
                } else if self.cfg.keepalive_timeout.is_some() {
                    self.set_deadline(id, Wait::Idle);
                }
                return pos;
            }
            if c.req_start.is_none() {
                c.req_start = Some(Instant::now());
            }
            match c.scanner.parse(rest, &self.limits) {
                Ok(Head::Partial) => {
                    if c.peer_eof {
                        // The client stopped sending mid-request.
                        self.close(id, CloseMode::Flush);
                    } else if c.deadline.map(|d| d.0) != Some(Wait::Header) {
                        // Only a partial head starts the clock: a request
                        // that arrives whole costs no timer.
                        self.set_deadline(id, Wait::Header);
                    }
                    return pos;
                }
                Err(reject) => {
                    self.ctx
                        .debug(format_args!("{id}: {} ({})", reject.status, reject.why));
                    let start = c.req_start.take().unwrap_or_else(Instant::now);
                    // The head was not read to its end: the client may
                    // still be sending it.
                    let head = is_head_request(rest);
                    self.error(
                        id,
                        reject.status,
                        start,
                        ("-".into(), "unknown"),
                        true,
                        head,
                    );
                    return input.len();
                }
                Ok(Head::Complete { len, req }) => {
                    c.scanner.reset();
                    pos += len;
                    let leftover = pos < input.len();
                    self.handle(id, &req, leftover);
                }
            }
        }
    }

    /// The client's input can no longer be followed (a body that cannot be
    /// discarded): ignore the rest of it and close once the response in
    /// progress is out, lingering so that closing with unread input does
    /// not reset the connection and destroy that response before the client
    /// has read it (the client is typically still sending its body).
    fn stop_reading(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.discard = Discard::None;
        c.inbuf = Vec::new();
        c.close_after = true;
        c.linger_after = true;
        c.lingering = true;
        if c.resp.is_none() {
            self.linger(id);
        }
    }

    /// Closes a connection whose client has stopped sending, unless a
    /// response is still going out (then it closes once that is done).
    fn close_when_idle(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            if c.resp.is_some() {
                c.close_after = true;
            } else {
                self.close(id, CloseMode::Flush);
            }
        }
    }

    // ------------------------------------------------------------------
    // Requests
    // ------------------------------------------------------------------

    fn handle(&mut self, id: ConnId, req: &Request<'_>, leftover: bool) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let start = c.req_start.take().unwrap_or_else(Instant::now);
        c.deadline = None;
        let line = if self.cfg.access_log {
            response::log_escape(req.line, LOG_LINE_MAX)
        } else {
            String::new()
        };

        // Framing: anything that could make two parties disagree on where
        // this request ends is refused, and the connection closed.
        let framing_error = if req.transfer_encoding && req.content_length.is_some() {
            Some("both Transfer-Encoding and Content-Length")
        } else if req.bad_content_length {
            Some("invalid or conflicting Content-Length")
        } else if req.transfer_encoding && req.version == 0 {
            Some("Transfer-Encoding in an HTTP/1.0 request")
        } else if req.transfer_encoding && !req.chunked {
            Some("Transfer-Encoding whose final coding is not chunked")
        } else if req.host_fields > 1 || (req.version == 1 && req.host_fields == 0) {
            Some("missing or repeated Host")
        } else if req.bad_host {
            Some("invalid Host")
        } else {
            None
        };
        if let Some(why) = framing_error {
            self.ctx.debug(format_args!("{id}: 400 ({why})"));
            self.error(
                id,
                400,
                start,
                (line, method_label(req.method)),
                true,
                req.method == "HEAD",
            );
            return;
        }
        if let Some(len) = req.content_length {
            if len > self.cfg.max_discard_body {
                self.ctx.debug(format_args!(
                    "{id}: 413 (a {len}-byte body on {})",
                    req.method
                ));
                self.error(
                    id,
                    413,
                    start,
                    (line, method_label(req.method)),
                    true,
                    req.method == "HEAD",
                );
                return;
            }
        }
        let has_body = req.chunked || req.content_length.unwrap_or(0) > 0;
        let c = self.conns.get_mut(&id).expect("checked above");
        c.discarded = 0;
        c.discard = if req.chunked {
            Discard::chunked()
        } else {
            match req.content_length {
                Some(n) if n > 0 => Discard::Length(n),
                _ => Discard::None,
            }
        };

        let mut keep = if req.version == 1 {
            !req.conn_close
        } else {
            req.conn_keep_alive && !req.conn_close
        };
        keep &= !self.shutting_down && self.cfg.keepalive_timeout.is_some();
        if req.expect_other {
            self.error(
                id,
                417,
                start,
                (line, method_label(req.method)),
                true,
                req.method == "HEAD",
            );
            return;
        }
        // An HTTP/1.0 client does not wait for "100 Continue": the
        // expectation is ignored (RFC 9110 10.1.1) and its body discarded.
        if req.expect_continue && has_body && req.version == 1 {
            // No "100 Continue": the answer is final, so the client may or
            // may not send its body. Close (after lingering) rather than
            // guess where the next request starts.
            keep = false;
            c.linger_after = true;
        }
        let connection = if !keep {
            Connection::Close
        } else if req.version == 0 {
            Connection::KeepAlive10
        } else {
            Connection::Default
        };
        c.close_after = !keep;
        if !keep && leftover {
            c.linger_after = true;
        }
        let log = Some(LogEntry {
            request: line,
            method: method_label(req.method),
            status: 0,
            start,
            bytes: 0,
        });

        let head_only = match req.method {
            "GET" => false,
            "HEAD" => true,
            _ => {
                let reply = self.page(405, vec![("Allow", "GET, HEAD".into())], None, false, log);
                self.send_reply(id, reply, connection);
                return;
            }
        };
        let reply = self.resolve(req, head_only, log);
        let connection = if reply.status == 400 {
            // After any 400 the connection closes.
            let c = self.conns.get_mut(&id).expect("checked above");
            c.close_after = true;
            Connection::Close
        } else {
            connection
        };
        self.send_reply(id, reply, connection);
    }

    /// Maps a GET/HEAD target to a reply.
    fn resolve(&mut self, req: &Request<'_>, head_only: bool, log: Option<LogEntry>) -> Reply {
        let Some((raw_path, query)) = split_target(req.target) else {
            return self.page(400, Vec::new(), None, head_only, log);
        };
        let mut rp = match path::normalize(raw_path.as_bytes(), self.cfg.hidden_files) {
            Ok(rp) => rp,
            Err(PathError::BadRequest) => return self.page(400, Vec::new(), None, head_only, log),
            Err(PathError::Forbidden) => return self.page(403, Vec::new(), None, head_only, log),
            Err(PathError::Hidden) => return self.page(404, Vec::new(), None, head_only, log),
        };
        let opened = match self.open_cached(&mut rp) {
            Ok(Some(opened)) => opened,
            Ok(None) => {
                let mut location = rp.directory_url();
                if let Some(q) = query {
                    location.push('?');
                    location.push_str(q);
                }
                let link = location.clone();
                return self.page(
                    301,
                    vec![("Location", location)],
                    Some(&link),
                    head_only,
                    log,
                );
            }
            Err(status) => return self.page(status, Vec::new(), None, head_only, log),
        };
        let len = opened.len();
        let v = &opened.validators;
        match cond::preconditions(req, v) {
            Precondition::Proceed => {}
            Precondition::Failed => return self.page(412, Vec::new(), None, head_only, log),
            Precondition::NotModified => {
                return Reply {
                    status: 304,
                    fields: vec![
                        ("Last-Modified", opened.last_modified.clone()),
                        ("ETag", v.etag.clone()),
                    ],
                    body: Body::None,
                    head_only,
                    log,
                };
            }
        }
        let mut fields = vec![
            ("Last-Modified", opened.last_modified.clone()),
            ("ETag", v.etag.clone()),
            ("Accept-Ranges", "bytes".to_string()),
        ];
        let (status, start, end) = match cond::range(req, v, len) {
            RangeAnswer::Full => (200, 0, len),
            RangeAnswer::Partial { start, end } => {
                fields.push(("Content-Range", format!("bytes {start}-{end}/{len}")));
                (206, start, end + 1)
            }
            RangeAnswer::Unsatisfiable => {
                return self.page(
                    416,
                    vec![("Content-Range", format!("bytes */{len}"))],
                    None,
                    head_only,
                    log,
                );
            }
        };
        Reply {
            status,
            fields,
            body: Body::File {
                file: opened.clone(),
                start,
                end,
            },
            head_only,
            log,
        }
    }

    /// [`Server::open`] through the open-file cache (when it is on), with
    /// what responses need to know about the file worked out once.
    fn open_cached(&mut self, rp: &mut ReqPath) -> Result<Option<Rc<Opened>>, u16> {
        if !self.cache.enabled() || self.shutting_down {
            return Ok(self
                .open(rp)?
                .map(|(f, st, rel)| self.opened(f, st, rel, false)));
        }
        let now = self.ctx.now_ms();
        // The key: the normalised path, plus '/' for a directory URL (a
        // name never ends with one). Built in place: no allocation.
        let slash = rp.trailing_slash;
        if slash {
            rp.rel.push(b'/');
        }
        let hit = self.cache.get(&rp.rel, &self.root, now);
        if slash {
            rp.rel.pop();
        }
        if let Some(opened) = hit {
            return Ok(Some(opened));
        }
        let Some((file, stamp, rel)) = self.open(rp)? else {
            return Ok(None);
        };
        let opened = self.opened(file, stamp, rel, true);
        // A small file seen changing while it was read into memory is
        // served (and checked as it goes) but not kept.
        let torn = matches!(opened.content, Content::File(_)) && self.cache.may_hold(opened.len());
        if !torn {
            let mut key = rp.rel.clone();
            if slash {
                key.push(b'/');
            }
            self.cache.insert(key, opened.clone(), now);
        }
        Ok(Some(opened))
    }

    /// An opened file with its validators and content type; with
    /// `in_memory`, a small file is read whole (and checked to be one
    /// version of itself) and its descriptor closed.
    fn opened(&self, file: File, stamp: Stamp, rel: Vec<u8>, in_memory: bool) -> Rc<Opened> {
        let len = stamp.size;
        let validators = Validators::new(stamp.ino, stamp.modified(), len);
        let content_type = ReqPath::extension(&rel)
            .and_then(|ext| {
                if self.cfg.types.is_empty() {
                    return mime::lookup(ext);
                }
                let lower = String::from_utf8_lossy(ext).to_ascii_lowercase();
                self.cfg
                    .types
                    .get(&lower)
                    .map(String::as_str)
                    .or_else(|| mime::lookup(ext))
            })
            .unwrap_or(&self.cfg.default_type)
            .to_string();
        let content = if in_memory && self.cache.may_hold(len) {
            read_whole(file, stamp)
        } else {
            Content::File(file)
        };
        Rc::new(Opened {
            content,
            last_modified: validators.last_modified(),
            validators,
            content_type,
            stamp,
            // `rel` holds no NUL (path.rs refuses them).
            rel: std::ffi::CString::new(rel).unwrap_or_default(),
        })
    }

    /// Opens what a normalised path names: a file or a directory's index
    /// (with its metadata and path), or `None` for a directory named
    /// without its slash (a redirect).
    fn open(&mut self, rp: &ReqPath) -> Result<Option<(File, Stamp, Vec<u8>)>, u16> {
        let (file, stamp) = self.open_one(&rp.rel)?;
        if stamp.is_dir() {
            if !rp.trailing_slash {
                return Ok(None);
            }
            let Some(index) = &self.cfg.index else {
                return Err(403);
            };
            let mut rel = rp.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(index.as_bytes());
            let (file, stamp) = match self.open_one(&rel) {
                // A directory without an index is not listed.
                Err(404) => return Err(403),
                other => other?,
            };
            if !stamp.is_file() {
                return Err(403);
            }
            return Ok(Some((file, stamp, rel)));
        }
        if !stamp.is_file() {
            return Err(403);
        }
        if rp.trailing_slash {
            // "/file.txt/" names a directory that is not there.
            return Err(404);
        }
        Ok(Some((file, stamp, rp.rel.clone())))
    }

    fn open_one(&mut self, rel: &[u8]) -> Result<(File, Stamp), u16> {
        let file = match self.root.open_file(rel) {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                    && self.cache.len() > 0 =>
            {
                // Out of descriptors: the cache gives its back, once.
                self.ctx.warn(format_args!(
                    "out of file descriptors ({e}): emptying the open-file cache ({} files)",
                    self.cache.len()
                ));
                self.cache.clear();
                self.root.open_file(rel)
            }
            other => other,
        }
        .map_err(|e| self.fs_status(rel, &e))?;
        let stamp = Stamp::of(&file).map_err(|e| self.fs_status(rel, &e))?;
        Ok((file, stamp))
    }

    fn fs_status(&self, rel: &[u8], e: &io::Error) -> u16 {
        match e.kind() {
            io::ErrorKind::NotFound => 404,
            io::ErrorKind::PermissionDenied => 403,
            _ => {
                self.ctx.warn(format_args!(
                    "opening {}: {e}",
                    String::from_utf8_lossy(rel)
                ));
                500
            }
        }
    }

    /// An error or redirect page.
    fn page(
        &self,
        status: u16,
        fields: Vec<(&'static str, String)>,
        link: Option<&str>,
        head_only: bool,
        log: Option<LogEntry>,
    ) -> Reply {
        Reply {
            status,
            fields,
            body: Body::Page(response::error_page(status, link)),
            head_only,
            log,
        }
    }

    /// Answers with an error page (its head only, to a `HEAD` request);
    /// with `maybe_more` the client may still be sending (the request was
    /// not read to its end), so the close lingers. 400, 408, 413, 414, 417,
    /// 431 and 505 always close.
    fn error(
        &mut self,
        id: ConnId,
        status: u16,
        start: Instant,
        (request, method): (String, &'static str),
        maybe_more: bool,
        head_only: bool,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.close_after = true;
        c.linger_after |= maybe_more;
        let log = Some(LogEntry {
            request,
            method,
            status,
            start,
            bytes: 0,
        });
        let reply = self.page(status, Vec::new(), None, head_only, log);
        self.send_reply(id, reply, Connection::Close);
    }

    /// Builds the head and starts sending.
    fn send_reply(&mut self, id: ConnId, reply: Reply, connection: Connection) {
        let mut head = HeadBuf::new(reply.status, self.server.as_deref(), self.clock.http_date());
        let (file, pos, end, page) = match reply.body {
            Body::None => (None, 0, 0, None),
            Body::Page(page) => {
                head.field("Content-Type", "text/html; charset=utf-8");
                head.field("Content-Length", page.len());
                (None, 0, 0, Some(page))
            }
            Body::File { file, start, end } => {
                head.field("Content-Type", &file.content_type);
                head.field("Content-Length", end - start);
                (Some(file), start, end, None)
            }
        };
        for (name, value) in &reply.fields {
            head.field(name, value);
        }
        head.raw(&self.extra_fields);
        let body: &[u8] = match &page {
            Some(p) if !reply.head_only => p.as_bytes(),
            _ => b"",
        };
        let head_body = body.len() as u64;
        let head = head.finish(connection, body);
        let (file, end) = if reply.head_only {
            (None, pos)
        } else {
            (file, end)
        };
        let mut log = reply.log;
        if let Some(l) = &mut log {
            l.status = reply.status;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if connection == Connection::Close {
            c.close_after = true;
        }
        c.resp = Some(Response {
            head,
            head_body,
            no_sendfile: false,
            file,
            pos,
            end,
            log,
        });
        self.pump(id);
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

    /// Queues as much of the current response as the connection takes.
    fn pump(&mut self, id: ConnId) -> Pump {
        for _ in 0..CHUNKS_PER_TURN {
            let Some(c) = self.conns.get_mut(&id) else {
                return Pump::Gone;
            };
            if c.closing {
                return Pump::Gone;
            }
            let Some(r) = c.resp.as_mut() else {
                return Pump::Done;
            };
            let opened = r.file.clone();
            let file = match opened.as_deref().map(|o| &o.content) {
                Some(Content::File(f)) if r.pos < r.end => Some(f),
                _ => None,
            };
            let Some(file) = file else {
                // Nothing to read: the head, with a page or the bytes the
                // cache holds, in one send.
                let body: &[u8] = match opened.as_deref().map(|o| &o.content) {
                    Some(Content::Bytes(b)) => &b[r.pos as usize..r.end as usize],
                    _ => &[],
                };
                let sent = match (r.head.is_empty(), body.is_empty()) {
                    (true, true) => Ok(()),
                    (false, true) => self.ctx.send(id, &r.head),
                    (true, false) => self.ctx.send(id, body),
                    (false, false) => self.ctx.send_parts(id, &[&r.head, body]),
                };
                match sent {
                    Ok(()) => {
                        if let Some(l) = &mut r.log {
                            if !r.head.is_empty() {
                                l.bytes += r.head_body;
                            }
                            l.bytes += body.len() as u64;
                        }
                        r.head = Vec::new();
                        r.pos = r.end;
                        self.finish(id);
                        return Pump::Done;
                    }
                    Err(Error::Again) => return self.blocked(id),
                    Err(_) => return Pump::Gone,
                }
            };
            let opened = opened.as_ref().expect("a file body has its file");
            let remaining = r.end - r.pos;
            if self.sendfile && !r.no_sendfile && remaining > SENDFILE_MIN {
                // A large body goes out with sendfile: nothing of it is
                // read into memory, and loopd queues none of it, so a slow
                // reader costs no buffer at all.
                if !r.head.is_empty() {
                    match self.ctx.send(id, &r.head) {
                        Ok(()) => {
                            if let Some(l) = &mut r.log {
                                l.bytes += r.head_body;
                            }
                            r.head = Vec::new();
                        }
                        Err(Error::Again) => return self.blocked(id),
                        Err(_) => return Pump::Gone,
                    }
                }
                // The last byte is left to the read below, which checks the
                // file after reading it: a change during the transfer is
                // then caught before the response is complete.
                let want = remaining - 1;
                match self.ctx.send_file(id, file, r.pos, want) {
                    Ok(n) => {
                        r.pos += n;
                        if let Some(l) = &mut r.log {
                            l.bytes += n;
                        }
                        if let Err(now) = opened.unchanged(file) {
                            let (pos, opened) = (r.pos, opened.clone());
                            return self.changed(id, &opened, pos, now);
                        }
                        if n < want {
                            // The socket is full: on_writable follows.
                            return self.blocked(id);
                        }
                        continue;
                    }
                    Err(Error::Again) => return self.blocked(id),
                    Err(Error::Unsupported) => {
                        // A host older than ABI 1.2: read and send.
                        self.sendfile = false;
                        continue;
                    }
                    Err(Error::Io) => {
                        // Nothing was written and the connection is as it
                        // was: read and send the rest instead, which finds
                        // a file that shrank, or that cannot be read, and
                        // says so.
                        r.no_sendfile = true;
                        continue;
                    }
                    Err(_) => return Pump::Gone,
                }
            }
            let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(CHUNK);
            match read_full_at(file, &mut self.scratch[..want], r.pos) {
                Ok(n) if n == want => {}
                Ok(_) => {
                    let (pos, opened) = (r.pos, opened.clone());
                    let now = Stamp::of(file).ok();
                    return self.changed(id, &opened, pos, now);
                }
                Err(e) => {
                    self.ctx
                        .warn(format_args!("{id}: reading a file: {e}; closing"));
                    self.close(id, CloseMode::Abort);
                    return Pump::Gone;
                }
            }
            // Checked after the read: what goes out was read before a
            // check that found the file as its response announced it.
            if let Err(now) = opened.unchanged(file) {
                let (pos, opened) = (r.pos, opened.clone());
                return self.changed(id, &opened, pos, now);
            }
            let chunk = &self.scratch[..want];
            let sent = if r.head.is_empty() {
                self.ctx.send(id, chunk)
            } else {
                self.ctx.send_parts(id, &[&r.head, chunk])
            };
            match sent {
                Ok(()) => {
                    if let Some(l) = &mut r.log {
                        if !r.head.is_empty() {
                            l.bytes += r.head_body;
                        }
                        l.bytes += want as u64;
                    }
                    r.head = Vec::new();
                    r.pos += want as u64;
                    if r.pos == r.end {
                        self.finish(id);
                        return Pump::Done;
                    }
                }
                Err(Error::Again) => {
                    // The queue is full: loopd stops reading this client
                    // and calls on_writable once it drains.
                    return self.blocked(id);
                }
                Err(_) => return Pump::Gone,
            }
        }
        // A fast reader: give other connections a turn, continue at once.
        match self.ctx.set_timer(Duration::ZERO, id.raw()) {
            Ok(t) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.resume = Some(t);
                }
                Pump::Blocked
            }
            Err(e) => {
                self.ctx
                    .warn(format_args!("{id}: cannot set a timer ({e}); closing"));
                self.close(id, CloseMode::Abort);
                Pump::Gone
            }
        }
    }

    /// The file of the response in progress is no longer what its head
    /// announced (`now`: what fstat says, if it could): the response must
    /// not complete. The connection is cut and the cache forgets the file.
    fn changed(&mut self, id: ConnId, opened: &Rc<Opened>, pos: u64, now: Option<Stamp>) -> Pump {
        let path = String::from_utf8_lossy(opened.rel.as_bytes()).into_owned();
        let len = opened.len();
        match now {
            Some(st) if st.size < len => self.ctx.warn(format_args!(
                "{id}: file shrank while being sent ({path}: {} bytes, {len} announced, \
                 {pos} sent); closing",
                st.size
            )),
            Some(st) => self.ctx.warn(format_args!(
                "{id}: file changed while being sent ({path}: {} bytes, {len} announced, \
                 mtime {}; {pos} bytes sent); closing",
                st.size,
                if st.mtime == opened.stamp.mtime {
                    "unchanged"
                } else {
                    "changed"
                }
            )),
            None => self.ctx.warn(format_args!(
                "{id}: file shrank while being sent ({path}: {len} bytes announced, \
                 {pos} sent); closing"
            )),
        }
        self.cache.forget(opened);
        self.close(id, CloseMode::Abort);
        Pump::Gone
    }

    /// The response waits for `on_writable`; the send timeout runs.
    fn blocked(&mut self, id: ConnId) -> Pump {
        if let Some(c) = self.conns.get(&id) {
            if c.deadline.map(|d| d.0) != Some(Wait::Send) {
                self.set_deadline(id, Wait::Send);
            }
        }
        Pump::Blocked
    }

    /// The response is entirely queued: log it, then close or go on.
    fn finish(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(mut r) = c.resp.take() else {
            return;
        };
        if let Some(entry) = r.log.take() {
            let peer = c.peer.clone();
            self.log_access(&peer, entry);
        }
        let c = self.conns.get_mut(&id).expect("checked above");
        if c.deadline.map(|d| d.0) == Some(Wait::Send) {
            c.deadline = None;
        }
        if c.close_after || self.shutting_down {
            if c.linger_after || c.discard.active() {
                self.linger(id);
            } else {
                self.close(id, CloseMode::Flush);
            }
        }
    }

    /// After an error response: read and discard whatever the client still
    /// sends, so that closing with unread input does not reset the
    /// connection before the client has read the response.
    fn linger(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.peer_eof || self.cfg.lingering_timeout.is_zero() {
            self.close(id, CloseMode::Flush);
            return;
        }
        c.lingering = true;
        c.inbuf = Vec::new();
        c.discard = Discard::None;
        let total = u64::try_from(self.cfg.lingering_time.as_millis()).unwrap_or(u64::MAX / 2);
        c.linger_until = self.ctx.now_ms().saturating_add(total);
        self.set_deadline(id, Wait::Linger);
    }

    fn close(&mut self, id: ConnId, mode: CloseMode) {
        if let Some(c) = self.conns.get_mut(&id) {
            if c.closing {
                return;
            }
            c.closing = true;
            c.inbuf = Vec::new();
        }
        let _ = self.ctx.close(id, mode);
    }

    fn log_access(&mut self, peer: &str, entry: LogEntry) {
        let secs = entry.start.elapsed().as_secs_f64();
        if let Some(m) = &mut self.metrics {
            let key = (entry.status, entry.method);
            let series = match m.by_code.get(&key) {
                Some(&s) => Some(s),
                None => {
                    let code = entry.status.to_string();
                    let s = self.ctx.series(m.requests, &[&code, entry.method]).ok();
                    if let Some(s) = s {
                        m.by_code.insert(key, s);
                    }
                    s
                }
            };
            if let Some(s) = series {
                self.ctx.metric_add(s, 1.0);
            }
            self.ctx.metric_observe(m.response_time, secs);
        }
        if !self.cfg.access_log {
            return;
        }
        let bytes = if entry.bytes == 0 {
            "-".to_string()
        } else {
            entry.bytes.to_string()
        };
        let request = if entry.request.is_empty() {
            "-"
        } else {
            &entry.request
        };
        let line = format!(
            "{peer} - - [{}] \"{request}\" {} {bytes} {secs:.3}",
            self.clock.log_date(),
            entry.status
        );
        self.ctx.log_to(Level::Info, "loopd::access", line);
    }

    // ------------------------------------------------------------------
    // Deadlines
    // ------------------------------------------------------------------

    fn set_deadline(&mut self, id: ConnId, wait: Wait) {
        let after = match wait {
            Wait::Header => self.cfg.header_timeout,
            Wait::Idle => match self.cfg.keepalive_timeout {
                Some(t) => t,
                None => return,
            },
            Wait::Send => self.cfg.send_timeout,
            Wait::Linger => self.cfg.lingering_timeout,
        };
        let mut ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
        let now = self.ctx.now_ms();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if wait == Wait::Linger {
            ms = ms.min(c.linger_until.saturating_sub(now));
        }
        let at = now.saturating_add(ms);
        c.deadline = Some((wait, at));
        match c.armed {
            // The armed timer fires first; it re-arms for the rest.
            Some((_, due)) if due <= at => {}
            _ => self.arm(id, ms),
        }
    }

    /// (Re-)arms the deadline timer to fire after `ms`.
    fn arm(&mut self, id: ConnId, ms: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some((t, _)) = c.armed.take() {
            let _ = self.ctx.cancel_timer(t);
        }
        match self.ctx.set_timer(Duration::from_millis(ms), id.raw()) {
            Ok(t) => c.armed = Some((t, self.ctx.now_ms().saturating_add(ms))),
            Err(e) => {
                // Without a deadline a client could hold the connection
                // forever: refuse to keep it.
                self.ctx
                    .warn(format_args!("{id}: cannot set a timer ({e}); closing"));
                self.close(id, CloseMode::Abort);
            }
        }
    }
}

/// The open-file cache's size: `configured`, but at most a quarter of the
/// process's descriptor limit (cached large files keep a descriptor open).
fn cache_entries(ctx: &Ctx, configured: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return configured;
    }
    let quarter = usize::try_from(lim.rlim_cur / 4).unwrap_or(usize::MAX);
    if configured > quarter {
        // Said louder when the value was chosen than for the default.
        let level = if configured == crate::config::DEFAULT_OPEN_FILE_CACHE_MAX {
            Level::Info
        } else {
            Level::Warn
        };
        ctx.log(
            level,
            format_args!(
                "open_file_cache_max = {configured} is more than a quarter of the descriptor \
                 limit ({}); holding at most {quarter} files",
                lim.rlim_cur
            ),
        );
        return quarter;
    }
    configured
}

/// Whether the input, a request head (possibly partial or refused), is a
/// `HEAD` request: its answer, even an error, then carries no body.
fn is_head_request(input: &[u8]) -> bool {
    let lead = input
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    input[lead..].starts_with(b"HEAD ")
}

/// Splits a request target into its path and query. Accepts origin-form
/// (`/a?b`) and absolute-form (`http://host/a?b`); anything else is `None`.
pub(crate) fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let target = target.split('#').next().unwrap_or(target);
    if !target.starts_with('/') {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let after = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return None;
        };
        // Skip the authority: the path starts at the first '/' (or is
        // empty, which means "/").
        return match after.find(['/', '?']) {
            Some(i) if after.as_bytes()[i] == b'/' => split_target(&after[i..]),
            Some(i) => Some(("/", Some(&after[i + 1..]))),
            None => Some(("/", None)),
        };
    }
    Some(match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    })
}

/// A small file read whole, if it stays one version while it is read
/// (the same size and mtime before and after, and no byte past its end);
/// otherwise it is left open, to be read and checked as it is sent.
fn read_whole(file: File, stamp: Stamp) -> Content {
    let len = stamp.size as usize;
    let mut buf = vec![0u8; len + 1];
    match read_full_at(&file, &mut buf, 0) {
        Ok(n) if n == len && Stamp::of(&file).is_ok_and(|now| now == stamp) => {
            buf.truncate(len);
            Content::Bytes(buf.into_boxed_slice())
        }
        _ => Content::File(file),
    }
}

/// Reads `buf.len()` bytes at `pos`, fewer only at the end of the file.
fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], pos + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn targets() {
        assert_eq!(split_target("/a?b=1"), Some(("/a", Some("b=1"))));
        assert_eq!(split_target("/a"), Some(("/a", None)));
        assert_eq!(split_target("http://h/x/y?q"), Some(("/x/y", Some("q"))));
        assert_eq!(split_target("HTTPS://h"), Some(("/", None)));
        assert_eq!(split_target("http://h?q"), Some(("/", Some("q"))));
        assert_eq!(split_target("*"), None);
        assert_eq!(split_target("a/b"), None);
        assert_eq!(split_target("/a#frag"), Some(("/a", None)));
    }
}
