//! Request heads: limits, `httparse`, and the few header fields the server
//! acts on.
//!
//! [`Scanner`] decides *when* to parse: a head can only complete on a blank
//! line, so bytes that arrive one at a time are only searched, not parsed
//! again and again (which would cost quadratic time for a slow sender).
//! The request line is parsed as soon as it is complete, so a malformed
//! one is refused without waiting for the rest.

use std::mem::MaybeUninit;

use crate::config::MAX_HEADERS_LIMIT;

/// Most empty lines tolerated before a request line (RFC 9112 2.2 asks
/// servers to ignore at least one).
const MAX_LEADING_EMPTY: usize = 64;

/// The size limits on a request head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_request_line: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
}

/// A request head the server refuses, with the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    /// 400, 414, 431 or 505.
    pub(crate) status: u16,
    /// Why, for the debug log.
    pub(crate) why: &'static str,
}

impl Reject {
    fn new(status: u16, why: &'static str) -> Reject {
        Reject { status, why }
    }
}

/// A complete, syntactically valid request head.
#[derive(Debug, Clone, Default)]
pub(crate) struct Request<'a> {
    /// The request line as sent, without its line ending (for the log).
    pub(crate) line: &'a [u8],
    pub(crate) method: &'a str,
    pub(crate) target: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) version: u8,
    pub(crate) host_fields: usize,
    /// A `Host` field's value is not `host[:port]` (RFC 9112 3.2: 400).
    pub(crate) bad_host: bool,
    /// `Content-Length`, all values agreeing.
    pub(crate) content_length: Option<u64>,
    /// The `Content-Length` fields disagree or are not numbers.
    pub(crate) bad_content_length: bool,
    /// A `Transfer-Encoding` field is present.
    pub(crate) transfer_encoding: bool,
    /// ... and `chunked` is its last (and only chunked) coding.
    pub(crate) chunked: bool,
    pub(crate) conn_close: bool,
    pub(crate) conn_keep_alive: bool,
    /// An `Expect` field asks for `100-continue`.
    pub(crate) expect_continue: bool,
    /// An `Expect` field (any of them) holds another expectation, or is
    /// empty: 417.
    pub(crate) expect_other: bool,
    /// Each `If-Match` field line (repeated lines are one list).
    pub(crate) if_match: Vec<&'a [u8]>,
    /// Each `If-None-Match` field line.
    pub(crate) if_none_match: Vec<&'a [u8]>,
    pub(crate) if_modified_since: Option<&'a [u8]>,
    pub(crate) if_unmodified_since: Option<&'a [u8]>,
    pub(crate) range: Option<&'a [u8]>,
    pub(crate) if_range: Option<&'a [u8]>,
}

/// The outcome of looking at the start of the input. Returned by value once
/// per request and matched at once: boxing the request would allocate for
/// every one.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Head<'a> {
    /// More bytes are needed (and the limits are not exceeded yet).
    Partial,
    /// A complete head of `len` bytes.
    Complete { len: usize, req: Request<'a> },
}

/// Remembers how far the pending bytes were searched, so each byte of a
/// head is looked at a bounded number of times.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scanner {
    /// Bytes of the pending input already searched.
    scanned: usize,
    /// The request line's end was already seen (and the line parsed).
    line_done: bool,
}

impl Scanner {
    /// Forgets the pending head (it was consumed).
    pub(crate) fn reset(&mut self) {
        *self = Scanner::default();
    }

    /// Looks at `buf`, the input starting at the first byte of a request.
    ///
    /// # Errors
    /// The status to refuse the request with.
    pub(crate) fn parse<'a>(&mut self, buf: &'a [u8], limits: &Limits) -> Result<Head<'a>, Reject> {
        let first_look = self.scanned == 0;
        let lead = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if lead > 2 * MAX_LEADING_EMPTY {
            return Err(Reject::new(
                400,
                "too many empty lines before the request line",
            ));
        }
        let line = &buf[lead..];
        let Some(line_end) = memchr(b'\n', line) else {
            if line.len() > limits.max_request_line {
                return Err(Reject::new(414, "request line too long"));
            }
            self.scanned = buf.len();
            // Garbage (a TLS handshake, another protocol) is refused on its
            // first bytes, without waiting for a line end.
            if first_look && !line.is_empty() {
                return run(buf, lead..buf.len(), buf.len(), limits);
            }
            return Ok(Head::Partial);
        };
        let line_len = if line_end > 0 && line[line_end - 1] == b'\r' {
            line_end - 1
        } else {
            line_end
        };
        if line_len > limits.max_request_line {
            return Err(Reject::new(414, "request line too long"));
        }
        let headers_start = lead + line_end + 1;
        // Parse when the request line just completed (to refuse a bad one
        // early) or when a blank line ends the head; otherwise only check
        // the size.
        let from = self.scanned.saturating_sub(3).max(lead + line_end);
        let ended = find_head_end(&buf[from..]).is_some();
        let line_just_done = !self.line_done;
        self.line_done = true;
        self.scanned = buf.len();
        if !ended && !line_just_done {
            if buf.len() - headers_start > limits.max_header_bytes {
                return Err(Reject::new(431, "header section too large"));
            }
            return Ok(Head::Partial);
        }
        run(buf, lead..lead + line_len, headers_start, limits)
    }
}

/// Runs httparse on `buf`, whose request line is `buf[line]` (possibly
/// incomplete) and whose header section starts at `headers_start`.
fn run<'a>(
    buf: &'a [u8],
    line: std::ops::Range<usize>,
    headers_start: usize,
    limits: &Limits,
) -> Result<Head<'a>, Reject> {
    let line = &buf[line];
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let fields = &mut storage[..limits.max_headers.min(MAX_HEADERS_LIMIT)];
    let mut req = httparse::Request::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, fields);
    match status {
        Ok(httparse::Status::Partial) => {
            if buf.len() - headers_start > limits.max_header_bytes {
                return Err(Reject::new(431, "header section too large"));
            }
            Ok(Head::Partial)
        }
        Ok(httparse::Status::Complete(len)) => {
            if len - headers_start > limits.max_header_bytes {
                return Err(Reject::new(431, "header section too large"));
            }
            let request = summarize(&req, line)?;
            Ok(Head::Complete { len, req: request })
        }
        Err(httparse::Error::TooManyHeaders) => Err(Reject::new(431, "too many header fields")),
        Err(httparse::Error::Version) => {
            if looks_like_http_version(line) {
                Err(Reject::new(505, "HTTP version not supported"))
            } else {
                Err(Reject::new(400, "malformed HTTP version"))
            }
        }
        Err(httparse::Error::HeaderName) => Err(Reject::new(
            400,
            "invalid header name (or an obsolete line folding)",
        )),
        Err(httparse::Error::HeaderValue) => Err(Reject::new(400, "invalid header value")),
        Err(httparse::Error::Token) => Err(Reject::new(400, "invalid method or target")),
        Err(httparse::Error::NewLine) => Err(Reject::new(400, "invalid line ending")),
        Err(_) => Err(Reject::new(400, "malformed request")),
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// The end of a header section: `\n\n` or `\n\r\n`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = memchr(b'\n', &buf[i..]) {
        let at = i + nl;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
        i = at + 1;
    }
    None
}

/// `METHOD TARGET HTTP/d.d`: a well-formed request line with a version
/// httparse does not speak.
fn looks_like_http_version(line: &[u8]) -> bool {
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [_, _, v] = parts[..] else {
        return false;
    };
    v.len() == 8
        && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit()
        && v[6] == b'.'
        && v[7].is_ascii_digit()
}

/// Comma-separated list elements, trimmed, empty ones skipped.
pub(crate) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn summarize<'a>(req: &httparse::Request<'_, 'a>, line: &'a [u8]) -> Result<Request<'a>, Reject> {
    let target = req.path.unwrap_or_default();
    // httparse lets bytes above 0x7f through; a request target is ASCII.
    if !target.is_ascii() {
        return Err(Reject::new(400, "non-ASCII bytes in the request target"));
    }
    let mut r = Request {
        line,
        method: req.method.unwrap_or_default(),
        target,
        version: req.version.unwrap_or(1),
        ..Request::default()
    };
    let mut chunked_seen = 0usize;
    let mut last_coding: &[u8] = b"";
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("host") {
            r.host_fields += 1;
            r.bad_host |= !valid_host(value);
        } else if is("content-length") {
            for v in list(value).chain(value.trim_ascii().is_empty().then_some(&b""[..])) {
                match parse_decimal(v) {
                    Some(n) if r.content_length.is_none_or(|old| old == n) => {
                        r.content_length = Some(n)
                    }
                    _ => r.bad_content_length = true,
                }
            }
        } else if is("transfer-encoding") {
            r.transfer_encoding = true;
            for coding in list(value) {
                // A coding may carry parameters (";q=..."): compare its name.
                let name = coding
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if name.eq_ignore_ascii_case(b"chunked") {
                    chunked_seen += 1;
                }
                last_coding = name;
            }
        } else if is("connection") {
            for token in list(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    r.conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    r.conn_keep_alive = true;
                }
            }
        } else if is("expect") {
            // Every member of every Expect field counts: a second field
            // must not hide an expectation the server cannot meet.
            let mut members = 0;
            for member in list(value) {
                members += 1;
                if member.eq_ignore_ascii_case(b"100-continue") {
                    r.expect_continue = true;
                } else {
                    r.expect_other = true;
                }
            }
            r.expect_other |= members == 0;
        } else if is("if-match") {
            r.if_match.push(value);
        } else if is("if-none-match") {
            r.if_none_match.push(value);
        } else if is("if-modified-since") {
            r.if_modified_since.get_or_insert(value);
        } else if is("if-unmodified-since") {
            r.if_unmodified_since.get_or_insert(value);
        } else if is("range") {
            r.range.get_or_insert(value);
        } else if is("if-range") {
            r.if_range.get_or_insert(value);
        }
    }
    r.chunked = chunked_seen == 1 && last_coding.eq_ignore_ascii_case(b"chunked");
    Ok(r)
}

/// Whether a `Host` value can be `uri-host [ ":" port ]` (RFC 3986): a
/// RFC 3986's IPvFuture: `"v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn is_ip_future(s: &[u8]) -> bool {
    let Some(rest) = s.strip_prefix(b"v").or_else(|| s.strip_prefix(b"V")) else {
        return false;
    };
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
    !version.is_empty()
        && version.iter().all(u8::is_ascii_hexdigit)
        && !tail.is_empty()
        && tail
            .iter()
            .all(|&b| crate::path::is_unreserved_or_sub_delim(b) || b == b':')
}

/// reg-name, an IPv4 address or a bracketed IP literal, and an optional
/// port. Empty is allowed (a request whose target has no authority).
/// Anything else (spaces, `/`, `@`, `?`, quotes...) could make two parties
/// disagree on which host is meant: 400.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let inside = &literal[..end];
            let ok = !inside.is_empty()
                && inside
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                || is_ip_future(inside);
            if !ok {
                return false;
            }
            (&b""[..], &literal[end + 1..])
        }
        None => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        },
    };
    // reg-name = *( unreserved / pct-encoded / sub-delims )
    let reg_name = host
        .iter()
        .all(|&b| crate::path::is_unreserved_or_sub_delim(b) || b == b'%');
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    reg_name && port_ok
}

/// A non-empty run of ASCII digits that fits in u64.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_request_line: 100,
        max_header_bytes: 200,
        max_headers: 5,
    };

    fn parse(buf: &[u8]) -> Result<Head<'_>, Reject> {
        Scanner::default().parse(buf, &LIMITS)
    }

    fn complete(buf: &[u8]) -> (usize, Request<'_>) {
        match parse(buf) {
            Ok(Head::Complete { len, req }) => (len, req),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn repeated_conditional_fields_are_kept_line_by_line() {
        let (_, r) = complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nIf-Match: \"x\"\r\nIf-Match: \"y\"\r\nIf-None-Match: \"z\"\r\n\r\n",
        );
        assert_eq!(r.if_match, [&b"\"x\""[..], &b"\"y\""[..]]);
        assert_eq!(r.if_none_match, [&b"\"z\""[..]]);
    }

    fn status(buf: &[u8]) -> u16 {
        match parse(buf) {
            Err(r) => r.status,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn a_simple_request() {
        let (len, r) = complete(b"GET /a?b HTTP/1.1\r\nHost: x\r\n\r\nrest");
        assert_eq!(len, 30);
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/a?b");
        assert_eq!(r.version, 1);
        assert_eq!(r.line, b"GET /a?b HTTP/1.1");
        assert_eq!(r.host_fields, 1);
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let (_, r) = complete(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.version, 0);
        assert_eq!(r.line, b"GET / HTTP/1.0");
    }

    #[test]
    fn partial_heads_wait() {
        assert!(matches!(parse(b"GET / HT"), Ok(Head::Partial)));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Ok(Head::Partial)
        ));
    }

    #[test]
    fn limits() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(status(long_line.as_bytes()), 414);
        assert_eq!(status("GET /".repeat(30).as_bytes()), 414);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        assert_eq!(status(big.as_bytes()), 431);
        let big_partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(200));
        assert_eq!(status(big_partial.as_bytes()), 431);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(6));
        assert_eq!(status(many.as_bytes()), 431);
        let five = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(5));
        complete(five.as_bytes());
    }

    #[test]
    fn malformed_heads_are_400_and_versions_505() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), 400); // obs-fold
        assert_eq!(status(b"GET / HTTP/1.1\r\nX y: a\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\x7f HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET  / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"G\x00T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status(b"GET / FOO/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"G ET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1 x\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n"), 400);
    }

    #[test]
    fn garbage_is_refused_on_its_first_bytes() {
        assert_eq!(status(b"\x16\x03\x01\x02\x00"), 400);
        assert_eq!(status(b"\x00\x00"), 400);
        assert!(matches!(parse(b"GET"), Ok(Head::Partial)));
    }

    #[test]
    fn a_bad_request_line_is_refused_before_the_head_ends() {
        assert_eq!(status(b"GET / HTTP/9.9\r\nHost: x\r\n"), 505);
        assert_eq!(status(b"GET /a b c\r\n"), 400);
    }

    #[test]
    fn framing_fields() {
        let (_, r) = complete(b"GET / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(r.content_length, Some(5));
        assert!(!r.bad_content_length);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n");
        assert!(r.bad_content_length);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(r.bad_content_length);
        for bad in ["+5", "-1", "0x5", "5 5", "", "99999999999999999999"] {
            let head = format!("GET / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            let (_, r) = complete(head.as_bytes());
            assert!(r.bad_content_length, "{bad:?}");
        }
        let (_, r) = complete(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert!(r.transfer_encoding && r.chunked);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert!(r.transfer_encoding && !r.chunked);
        let (_, r) = complete(
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(r.transfer_encoding && !r.chunked);
    }

    #[test]
    fn host_values() {
        for good in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[v1.x]",
            "",
            "a-b_c~d%41",
            "h:",
            "[v1.fe80::a+en1]",
            "[V7f.x:y]:80",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "a b",
            "a/b",
            "user@host",
            "a?b",
            "a#b",
            "h:8x",
            "h:1:2",
            "[::1",
            "[::1]x",
            "[]",
            "\"q\"",
            "a\\b",
            "[v a@b/]",
            "[v1.]",
            "[v.x]",
            "[vg.x]",
            "[v1.a b]",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        let (_, r) = complete(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
        assert!(r.bad_host);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nHost: a:1\r\n\r\n");
        assert!(!r.bad_host);
    }

    #[test]
    fn every_expectation_counts() {
        let (_, r) = complete(b"GET / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n");
        assert!(r.expect_continue && !r.expect_other);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: x\r\n\r\n");
        assert!(r.expect_continue && r.expect_other);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nExpect: 100-continue, x\r\n\r\n");
        assert!(r.expect_other);
        let (_, r) = complete(b"GET / HTTP/1.1\r\nExpect:\r\n\r\n");
        assert!(r.expect_other);
        let (_, r) = complete(b"GET / HTTP/1.1\r\n\r\n");
        assert!(!r.expect_continue && !r.expect_other);
    }

    #[test]
    fn connection_tokens() {
        let (_, r) = complete(b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n");
        assert!(r.conn_close && !r.conn_keep_alive);
        let (_, r) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.conn_keep_alive);
    }

    #[test]
    fn bytes_arriving_one_at_a_time_are_parsed_once_complete() {
        let head = b"GET /x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        let mut s = Scanner::default();
        for end in 1..head.len() {
            match s.parse(&head[..end], &LIMITS) {
                Ok(Head::Partial) => {}
                other => panic!("at {end}: {other:?}"),
            }
        }
        match s.parse(head, &LIMITS) {
            Ok(Head::Complete { len, req }) => {
                assert_eq!(len, head.len());
                assert_eq!(req.target, "/x");
            }
            other => panic!("{other:?}"),
        }
    }
}
