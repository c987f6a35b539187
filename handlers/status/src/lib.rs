//! The loopd status handler: the process's counters as Prometheus metrics
//! (`GET /metrics`, text format 0.0.4) and a live page (`GET /`) that
//! charts them every second.
//!
//! It reads the counters through the public ABI only (`stats_json`, ABI
//! 1.4), so it sees every worker of the process whichever worker serves the
//! request, and `/proc/self` for the `process_*` metrics. Each request is
//! answered and the connection closed (`Connection: close`). Anything but
//! `GET`/`HEAD` of `/`, `/metrics` gets 405, an unknown path 404, a request
//! that does not parse (or is over 8 KiB) 400.
//!
//! `docs/handlers/status.md` lists every metric.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

use std::fmt::Write as _;

use loopd_handler_api::{CloseMode, ConnId, ConnInfo, Ctx, Framing, Handler};
use serde_json::Value;

mod page;
pub mod prometheus;

/// Largest request head read before answering 400.
const MAX_REQUEST: usize = 8 << 10;

/// The `[handler.config]` table (nothing to set yet).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {}

/// The status handler.
#[derive(Debug, Default)]
pub struct Status;

/// A connection's request bytes so far.
#[derive(Debug, Default)]
pub struct StatusConn {
    head: Vec<u8>,
    answered: bool,
}

impl Handler for Status {
    type Config = StatusConfig;
    type Conn = StatusConn;
    const FRAMING: Framing = Framing::Raw;
    /// Over `tls://`, an HTTP/1.1 server by ALPN.
    const ALPN: &'static std::ffi::CStr = c"http/1.1";

    fn create(ctx: &Ctx, _instance: &str, _config: StatusConfig) -> Result<Self, String> {
        // Reading once tells every worker to keep its snapshot fresh.
        ctx.stats_json()
            .map_err(|e| format!("status needs a loopd with ABI 1.4 stats_json: {e}"))?;
        Ok(Status)
    }

    fn on_open(
        &mut self,
        _ctx: &Ctx,
        _conn: ConnId,
        _info: &ConnInfo<'_>,
    ) -> Result<StatusConn, String> {
        Ok(StatusConn::default())
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut StatusConn, data: &[u8]) {
        if state.answered {
            return;
        }
        state.head.extend_from_slice(data);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let reply = match req.parse(&state.head) {
            Ok(httparse::Status::Partial) if state.head.len() <= MAX_REQUEST => return,
            Ok(httparse::Status::Partial) => {
                response(400, "text/plain", b"request head too large\n", false)
            }
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
