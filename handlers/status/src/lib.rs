//! The loopd status handler: the process's counters as Prometheus metrics
//! (`GET /metrics`, text format 0.0.4) and a live page (`GET /`) that
//! charts them every second.
//!
//! It reads the counters through the public ABI only (`stats_json`, ABI
//! 1.4), so it sees every worker of the process whichever worker serves the
//! request, and `/proc/self` for the `process_*` metrics. Each request is
//! answered and the connection closed (`Connection: close`). Anything but
//! `GET`/`HEAD` of `/`, `/metrics` gets 405, an unknown path 404, a request
//! that does not parse (or whose head is over 8 KiB) 400, and a connection
//! without a whole request head within `request_timeout_ms` 408.
//!
//! `docs/handlers/status.md` lists every metric.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

use std::fmt::Write as _;

use std::time::Duration;

use loopd_handler_api::{CloseMode, CloseReason, ConnId, ConnInfo, Ctx, Framing, Handler, TimerId};
use serde_json::Value;

mod page;
pub mod prometheus;

/// Largest request head read before answering 400.
const MAX_REQUEST: usize = 8 << 10;

/// The `[handler.config]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// How long a client may take to send its whole request head, from its
    /// connect: then 408 and close (a client that connects and sends
    /// nothing, or trickles, does not hold a connection forever).
    pub request_timeout_ms: u64,
}

impl Default for StatusConfig {
    fn default() -> StatusConfig {
        StatusConfig {
            request_timeout_ms: 10_000,
        }
    }
}

/// The status handler.
#[derive(Debug)]
pub struct Status {
    request_timeout: Duration,
}

/// A connection's request bytes so far.
#[derive(Debug, Default)]
pub struct StatusConn {
    head: Vec<u8>,
    answered: bool,
    /// Its `request_timeout_ms`, until it is answered.
    timer: Option<TimerId>,
}

impl Handler for Status {
    type Config = StatusConfig;
    type Conn = StatusConn;
    const FRAMING: Framing = Framing::Raw;
    const FRAMINGS: &'static [Framing] = &[Framing::Raw];
    /// Connections only: loopd refuses a `udp://` listener on it.
    const DATAGRAMS: bool = false;
    /// Over `tls://`, an HTTP/1.1 server by ALPN.
    const ALPN: &'static std::ffi::CStr = c"http/1.1";

    fn create(ctx: &Ctx, _instance: &str, config: StatusConfig) -> Result<Self, String> {
        if !(1..=3_600_000).contains(&config.request_timeout_ms) {
            return Err(format!(
                "request_timeout_ms = {} is out of range (1 to 3600000)",
                config.request_timeout_ms
            ));
        }
        // Reading once tells every worker to keep its snapshot fresh.
        ctx.stats_json()
            .map_err(|e| format!("status needs a loopd with ABI 1.4 stats_json: {e}"))?;
        Ok(Status {
            request_timeout: Duration::from_millis(config.request_timeout_ms),
        })
    }

    fn on_open(
        &mut self,
        ctx: &Ctx,
        conn: ConnId,
        _info: &ConnInfo<'_>,
    ) -> Result<StatusConn, String> {
        let timer = ctx
            .set_timer(self.request_timeout, conn.raw())
            .map_err(|e| format!("cannot set its request timeout: {e}"))?;
        Ok(StatusConn {
            timer: Some(timer),
            ..StatusConn::default()
        })
    }

    fn on_timer(&mut self, ctx: &Ctx, _timer: TimerId, conn: u64) {
        // Only an unanswered connection's timer is still set.
        let conn = ConnId::from_raw(conn);
        let reply = response(408, "text/plain", b"request timeout\n", false);
        let _ = ctx.send(conn, &reply);
        let _ = ctx.close(conn, CloseMode::Flush);
    }

    fn on_close(&mut self, ctx: &Ctx, _conn: ConnId, state: StatusConn, _reason: CloseReason) {
        if let Some(t) = state.timer {
            let _ = ctx.cancel_timer(t);
        }
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut StatusConn, data: &[u8]) {
        if state.answered {
            return;
        }
        state.head.extend_from_slice(data);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let too_large = || response(400, "text/plain", b"request head too large\n", false);
        let reply = match req.parse(&state.head) {
            Ok(httparse::Status::Partial) if state.head.len() <= MAX_REQUEST => return,
            Ok(httparse::Status::Partial) => too_large(),
            // A whole head can arrive in one read: it is measured too.
            Ok(httparse::Status::Complete(len)) if len > MAX_REQUEST => too_large(),
            Err(e) => response(
                400,
                "text/plain",
                format!("bad request: {e}\n").as_bytes(),
                false,
            ),
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                let path = req.path.unwrap_or("");
                let path = path.split('?').next().unwrap_or(path);
                let head_only = method == "HEAD";
                if method != "GET" && !head_only {
                    response(405, "text/plain", b"only GET and HEAD\n", false)
                } else {
                    match path {
                        "/metrics" => match ctx.stats_json() {
                            Ok(text) => match serde_json::from_str::<Value>(&text) {
                                Ok(v) => response(
                                    200,
                                    "text/plain; version=0.0.4; charset=utf-8",
                                    prometheus::render(&v, &prometheus::process()).as_bytes(),
                                    head_only,
                                ),
                                Err(e) => response(
                                    500,
                                    "text/plain",
                                    format!("stats: {e}\n").as_bytes(),
                                    head_only,
                                ),
                            },
                            Err(e) => response(
                                500,
                                "text/plain",
                                format!("stats: {e}\n").as_bytes(),
                                head_only,
                            ),
                        },
                        "/" | "/index.html" => response(
                            200,
                            "text/html; charset=utf-8",
                            page::HTML.as_bytes(),
                            head_only,
                        ),
                        _ => response(404, "text/plain", b"not found\n", head_only),
                    }
                }
            }
        };
        state.answered = true;
        state.head = Vec::new();
        if let Some(t) = state.timer.take() {
            let _ = ctx.cancel_timer(t);
        }
        let _ = ctx.send(conn, &reply);
        let _ = ctx.close(conn, CloseMode::Flush);
    }
}

/// A whole HTTP/1.1 response that closes the connection.
fn response(code: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Internal Server Error",
    };
    let mut head = String::new();
    let _ = write!(
        head,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(feature = "plugin")]
loopd_handler_api::export_handler!(Status, name = "status");
