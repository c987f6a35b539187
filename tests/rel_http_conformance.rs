//! HTTP/1.1 conformance and request smuggling (RFC 9112), over raw sockets.
//!
//! A table of requests, each with the outcome it must get: the status of
//! every response, and whether the connection then stays open or closes.
//! After every case a canary request goes out on the same connection:
//! either the connection closes without answering it, or exactly one
//! response comes back and it is the canary's. A request hidden in a body
//! (`/smuggled.txt`) must never be answered, and no case may produce more
//! responses than it should.
//!
//! The choices where RFC 9112 leaves room, made once and checked here:
//! - Transfer-Encoding with Content-Length, a Transfer-Encoding whose last
//!   coding is not `chunked`, conflicting or malformed Content-Length,
//!   obs-fold, whitespace before a colon, a missing, repeated or invalid
//!   Host: 400, then close.
//! - Bare LF line endings are tolerated everywhere (heads and chunked
//!   framing); a bare CR is always an error (400).
//! - Content-Length lists of one repeated value (`5, 5`) are one value.
//! - A final answer to `Expect: 100-continue` with a body still to come
//!   closes the connection (after lingering): the server cannot know
//!   whether the client will send the body.

mod common;
mod http_util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use common::*;
use http_util::*;

const CANARY_BODY: &str = "CANARY-7f3a91";
const SMUGGLED_BODY: &str = "SMUGGLED-c4e2d8";
const CANARY: &[u8] = b"GET /canary.txt HTTP/1.1\r\nHost: t\r\n\r\n";
const SMUGGLED: &str = "GET /smuggled.txt HTTP/1.1\r\nHost: t\r\n\r\n";

/// What happens to the connection after the case's responses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    /// It stays open: the canary gets exactly one response.
    Open,
    /// The server closes it without answering the canary.
    Close,
}
use After::*;

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    /// The status of each response, in order.
    statuses: Vec<u16>,
    after: After,
}

fn case(name: &'static str, raw: impl AsRef<[u8]>, statuses: &[u16], after: After) -> Case {
    Case {
        name,
        raw: raw.as_ref().to_vec(),
        statuses: statuses.to_vec(),
        after,
    }
}

/// The smuggled request as one chunk of a chunked body.
fn chunk_of_smuggled() -> String {
    format!("{:x}\r\n{SMUGGLED}\r\n", SMUGGLED.len())
}

fn cases() -> Vec<Case> {
    let n = SMUGGLED.len();
    let s = SMUGGLED;
    let chunk = chunk_of_smuggled();
    vec![
        // ---- Request-line forms ----
        case(
            "plain GET",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "HEAD",
            "HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "methods are case-sensitive",
            "get /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[405],
            Open,
        ),
        case(
            "OPTIONS *",
            "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
            &[405],
            Open,
        ),
        case(
            "CONNECT authority-form",
            "CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n",
            &[405],
            Open,
        ),
        case(
            "asterisk-form on GET",
            "GET * HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "relative target without a slash",
            "GET hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "absolute-form",
            "GET http://t/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "absolute-form, scheme in capitals",
            "GET HTTP://T/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "absolute-form with an empty path",
            "GET http://t HTTP/1.1\r\nHost: t\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "absolute-form without Host (HTTP/1.1)",
            "GET http://t/hello.txt HTTP/1.1\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "absolute-form with another scheme",
            "GET ftp://t/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "two spaces after the method",
            "GET  /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "a tab as separator",
            "GET\t/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "trailing space after the version",
            "GET /hello.txt HTTP/1.1 \r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "leading space before the method",
            " GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "empty lines before the request line",
            "\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "version in lower case",
            "GET /hello.txt http/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "version with three digits",
            "GET /hello.txt HTTP/1.10\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "HTTP/2.0 on HTTP/1 framing",
            "GET /hello.txt HTTP/2.0\r\nHost: t\r\n\r\n",
            &[505],
            Close,
        ),
        case(
            "HTTP/0.9 simple request",
            "GET /hello.txt\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "a target with a raw space",
            "GET /hello .txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        // ---- HTTP/1.0 and persistence ----
        case(
            "HTTP/1.0 closes by default",
            "GET /hello.txt HTTP/1.0\r\n\r\n",
            &[200],
            Close,
        ),
        case(
            "HTTP/1.0 keep-alive",
            "GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "HTTP/1.0 keep-alive then close",
            "GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
            &[200],
            Close,
        ),
        case(
            "HTTP/1.1 Connection: close",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            &[200],
            Close,
        ),
        case(
            "close among other tokens",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, Close\r\n\r\n",
            &[200],
            Close,
        ),
        case(
            "two pipelined requests",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\nHEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[200, 200],
            Open,
        ),
        // ---- Host ----
        case(
            "HTTP/1.1 without Host",
            "GET /hello.txt HTTP/1.1\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "two Host fields",
            "GET /hello.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "Host with a space",
            "GET /hello.txt HTTP/1.1\r\nHost: a b\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "Host with a path",
            "GET /hello.txt HTTP/1.1\r\nHost: t/evil\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "Host with userinfo",
            "GET /hello.txt HTTP/1.1\r\nHost: u@t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "empty Host",
            "GET /hello.txt HTTP/1.1\r\nHost:\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "Host as an IPv6 literal with a port",
            "GET /hello.txt HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            &[200],
            Open,
        ),
        // ---- Content-Length ----
        case(
            "GET with a Content-Length body holding a request",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n\r\n{s}"),
            &[200],
            Open,
        ),
        case(
            "POST with a Content-Length body holding a request",
            format!("POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n\r\n{s}"),
            &[405],
            Open,
        ),
        case(
            "Content-Length: 0",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "two equal Content-Length fields",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{s}"
            ),
            &[200],
            Open,
        ),
        case(
            "a Content-Length list of one value",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {n}, {n}\r\n\r\n{s}"),
            &[200],
            Open,
        ),
        case(
            "two different Content-Length fields",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{s}"
            ),
            &[400],
            Close,
        ),
        case(
            "a Content-Length list of two values",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0, {n}\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "negative Content-Length",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "Content-Length with a plus sign",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: +{n}\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "hexadecimal Content-Length",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0x{n:x}\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "empty Content-Length",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "Content-Length over 64 bits",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551616\r\n\r\n{s}"
            ),
            &[400],
            Close,
        ),
        case(
            "Content-Length with leading zeros",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 000{n}\r\n\r\n{s}"),
            &[200],
            Open,
        ),
        case(
            "Content-Length with a space inside",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 1 0\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "Content-Length over max_discard_body",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n{s}"),
            &[413],
            Close,
        ),
        case(
            "Content_Length (underscore) is another field",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent_Length: {n}\r\n\r\n"),
            &[200],
            Open,
        ),
        // ---- Transfer-Encoding ----
        case(
            "chunked body holding a request",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[200],
            Open,
        ),
        case(
            "Chunked in capitals",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: CHUNKED\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[200],
            Open,
        ),
        case(
            "chunked body with trailer fields",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\nX-Trailer: 1\r\nContent-Length: 5\r\n\r\n"
            ),
            &[200],
            Open,
        ),
        case(
            "chunked body with extensions",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{n:x};a=b;c=\"d\"\r\n{s}\r\n0;e\r\n\r\n"
            ),
            &[200],
            Open,
        ),
        case(
            "chunked body with bare LF endings",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\n{s}\n0\n\n"
            ),
            &[200],
            Open,
        ),
        case(
            "Transfer-Encoding and Content-Length",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n0\r\n\r\n{s}",
                5
            ),
            &[400],
            Close,
        ),
        case(
            "Content-Length and Transfer-Encoding",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n",
                chunk.len() + 5
            ),
            &[400],
            Close,
        ),
        case(
            "Transfer-Encoding: identity with Content-Length",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\nContent-Length: {n}\r\n\r\n{s}"
            ),
            &[400],
            Close,
        ),
        case(
            "Transfer-Encoding: gzip",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "chunked not last",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[400],
            Close,
        ),
        case(
            "chunked twice",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[400],
            Close,
        ),
        case(
            "xchunked",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[400],
            Close,
        ),
        case(
            "Transfer-Encoding with a vertical tab",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x0bchunked\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[400],
            Close,
        ),
        case(
            "Transfer-Encoding with a space before the colon",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[400],
            Close,
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            format!(
                "GET /hello.txt HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[400],
            Close,
        ),
        case(
            "Transfer_Encoding (underscore) is another field",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer_Encoding: chunked\r\nContent-Length: {n}\r\n\r\n{s}"
            ),
            &[200],
            Open,
        ),
        case(
            "chunk size over 64 bits",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n{s}\r\n0\r\n\r\n"
            ),
            &[200],
            Close,
        ),
        case(
            "chunk size with 0x",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x{n:x}\r\n{s}\r\n0\r\n\r\n"
            ),
            &[200],
            Close,
        ),
        case(
            "chunk data longer than its size",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc{s}\r\n0\r\n\r\n"
            ),
            &[200],
            Close,
        ),
        case(
            "bare CR in a chunk extension",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{n:x};a\rb\r\n{s}\r\n0\r\n\r\n"
            ),
            &[200],
            Close,
        ),
        case(
            "a request line in the trailer section",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{s}"
            ),
            &[200],
            Close,
        ),
        case(
            "bare CR in a trailer field",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\r\n{s}"
            ),
            &[200],
            Close,
        ),
        case(
            "obs-fold in the trailer section",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
            &[200],
            Close,
        ),
        case(
            "chunked body over max_discard_body",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000\r\n{s}"
            ),
            &[200],
            Close,
        ),
        // ---- obs-fold, whitespace, bare CR and LF ----
        case(
            "obs-fold",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "obs-fold with a tab",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: one\r\n\ttwo\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "obs-fold in Content-Length",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n {n}\r\n\r\n{s}"),
            &[400],
            Close,
        ),
        case(
            "obs-fold in Transfer-Encoding",
            format!(
                "GET /hello.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n{chunk}0\r\n\r\n"
            ),
            &[400],
            Close,
        ),
        case(
            "whitespace before the first field",
            "GET /hello.txt HTTP/1.1\r\n Host: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "bare LF line endings",
            "GET /hello.txt HTTP/1.1\nHost: t\n\n",
            &[200],
            Open,
        ),
        case(
            "mixed LF and CRLF",
            "GET /hello.txt HTTP/1.1\r\nHost: t\n\r\n",
            &[200],
            Open,
        ),
        case(
            "bare CR in the request line",
            "GET /hello.txt\rHTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "bare CR inside a field value",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "bare CR as a line ending",
            "GET /hello.txt HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n",
            &[400],
            Close,
        ),
        // ---- NUL and other bytes ----
        case(
            "NUL in the method",
            "G\0T /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "NUL in the target",
            "GET /hello.txt\0 HTTP/1.1\r\nHost: t\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "NUL in a field name",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX\0A: b\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "NUL in a field value",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "encoded NUL in the path",
            "GET /hello.txt%00 HTTP/1.1\r\nHost: t\r\n\r\n",
            &[403],
            Open,
        ),
        case(
            "DEL in a field value",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "obs-text in a field value",
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: caf\xe9\r\n\r\n".as_slice(),
            &[200],
            Open,
        ),
        case(
            "a field name with a separator",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX(A): b\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "a field line without a colon",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "an empty field name",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\n: b\r\n\r\n",
            &[400],
            Close,
        ),
        case(
            "a TLS handshake on the plain port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".as_slice(),
            &[400],
            Close,
        ),
        // ---- Expect ----
        case(
            "Expect: 100-continue without a body",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "Expect: 100-Continue (case) without a body",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\n\r\n",
            &[200],
            Open,
        ),
        case(
            "Expect: 100-continue with the body not sent",
            format!("GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n"),
            &[200],
            Close,
        ),
        case(
            "Expect: 100-continue on a POST with its body",
            format!("POST /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n{s}"),
            &[405],
            Close,
        ),
        case(
            "an unknown expectation",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\n\r\n",
            &[417],
            Close,
        ),
        case(
            "an unknown expectation after 100-continue",
            "GET /hello.txt HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nExpect: teapot\r\n\r\n",
            &[417],
            Close,
        ),
        case(
            "Expect: 100-continue in HTTP/1.0",
            "GET /hello.txt HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
            &[200],
            Close,
        ),
        case(
            "Expect: 100-continue in HTTP/1.0 is ignored",
            format!(
                "GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n{s}"
            ),
            &[200],
            Open,
        ),
    ]
}

/// Reads until the server closes (EOF or reset), or fails after the
/// client's read timeout (a server that neither answers nor closes).
fn read_until_close(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => {
                return Err(format!(
                    "not closed: {e} after {:?}",
                    String::from_utf8_lossy(&out)
                ))
            }
        }
    }
}

/// What one case produced.
#[derive(Default)]
struct Outcome {
    /// Responses that answered the smuggled request.
    smuggled: usize,
    /// Why the case failed, if it did.
    failure: Option<String>,
}

fn run_case(addr: SocketAddr, c: &Case) -> Outcome {
    let mut out = Outcome::default();
    let mut client = Client::connect(addr);
    // Every expected close comes within the 300 ms linger; a case that
    // leaves the server waiting fails after 10 s instead of hanging.
    client
        .stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    client.send(&c.raw);
    let head = c.raw.starts_with(b"HEAD ");
    let mut fail = |why: String| {
        out.failure.get_or_insert(why);
    };
    let mut got = Vec::new();
    for (i, &want) in c.statuses.iter().enumerate() {
        // Only the second pipelined request of "two pipelined requests" is a
        // HEAD; every other case's responses carry a body unless the case is
        // one HEAD.
        let is_head = head || (i == 1 && c.name == "two pipelined requests");
        match read_response(&mut client.reader, is_head) {
            Ok(r) => {
                if r.text().contains(SMUGGLED_BODY) {
                    out.smuggled += 1;
                }
                got.push(r.status);
                if r.status != want {
                    fail(format!(
                        "response {i}: status {} instead of {want}",
                        r.status
                    ));
                }
                if c.after == Close && i + 1 == c.statuses.len() && r.status >= 400 {
                    // Error responses that close say so.
                    if r.header("Connection") != Some("close") {
                        fail(format!("a {} without Connection: close", r.status));
                    }
                }
            }
            Err(e) => {
                fail(format!("response {i}: {e} (got {got:?})"));
                return out;
            }
        }
    }
    // The canary. Writing may fail if the server has closed already.
    let _ = client.stream.write_all(CANARY);
    match c.after {
        Open => match read_response(&mut client.reader, false) {
            Ok(r) => {
                if r.text().contains(SMUGGLED_BODY) {
                    out.smuggled += 1;
                }
                if r.status != 200 || r.text() != CANARY_BODY {
                    fail(format!(
                        "the canary got {} {:?} instead of its own response",
                        r.status,
                        r.text()
                    ));
                }
                // Nothing more: the server answers nothing else, and closes
                // once the client does.
                let _ = client.stream.shutdown(Shutdown::Write);
                let rest = match read_until_close(&mut client.reader) {
                    Ok(rest) => rest,
                    Err(e) => {
                        fail(e);
                        return out;
                    }
                };
                if !rest.is_empty() {
                    if String::from_utf8_lossy(&rest).contains(SMUGGLED_BODY) {
                        out.smuggled += 1;
                    }
                    fail(format!(
                        "bytes after the canary's response: {:?}",
                        String::from_utf8_lossy(&rest)
                    ));
                }
            }
            Err(e) => fail(format!("the canary got no response: {e}")),
        },
        Close => {
            // The server must close on its own (at most after lingering),
            // without answering the canary.
            let rest = match read_until_close(&mut client.reader) {
                Ok(rest) => rest,
                Err(e) => {
                    fail(e);
                    return out;
                }
            };
            if !rest.is_empty() {
                let text = String::from_utf8_lossy(&rest);
                if text.contains(SMUGGLED_BODY) {
                    out.smuggled += 1;
                }
                fail(format!("expected a close, got {text:?}"));
            }
        }
    }
    out
}

#[test]
fn the_conformance_table() {
    let site = Site::new();
    std::fs::write(site.root.join("canary.txt"), CANARY_BODY).unwrap();
    std::fs::write(site.root.join("smuggled.txt"), SMUGGLED_BODY).unwrap();
    // A short linger keeps the cases that close quick; the header timeout
    // is long enough never to fire within a case on a slow machine (a 408
    // would show up as a failure).
    let loopd = site.serve("lingering_timeout_ms = 300\nheader_timeout_ms = 20000");
    let addr = loopd.tcp("http");
    let cases = cases();
    // Four clients at once (most of the time is lingering closes), each
    // case on its own connection.
    let outcomes: Vec<(&Case, Outcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let cases = &cases;
                s.spawn(move || {
                    cases
                        .iter()
                        .skip(k)
                        .step_by(4)
                        .map(|c| (c, run_case(addr, c)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut failures = Vec::new();
    let mut smuggled = 0;
    for (c, out) in outcomes {
        smuggled += out.smuggled;
        if let Some(why) = out.failure {
            failures.push(format!("{}: {why}", c.name));
        }
    }
    figure("rel_http_conformance.cases", cases.len());
    figure("rel_http_conformance.failures", failures.len());
    figure("rel_http_conformance.smuggled_responses", smuggled);
    assert!(cases.len() >= 60, "{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(smuggled, 0);
    // loopd is still serving.
    assert_eq!(Client::connect(addr).get("/canary.txt").status, 200);
}

#[test]
fn the_table_names_are_unique() {
    let cases = cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len());
}
