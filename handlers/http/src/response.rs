//! Response heads, error pages and access log text.

use std::fmt::Write as _;

/// The reason phrase of every status this server sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Builds a response head in a byte buffer.
#[derive(Debug)]
pub(crate) struct HeadBuf {
    buf: String,
}

impl HeadBuf {
    /// The status line plus `Server` (unless `None`) and `Date`.
    pub(crate) fn new(status: u16, server: Option<&str>, date: &str) -> HeadBuf {
        let mut buf = String::with_capacity(320);
        let _ = write!(buf, "HTTP/1.1 {status} {}\r\n", reason(status));
        if let Some(server) = server {
            let _ = write!(buf, "Server: {server}\r\n");
        }
        let _ = write!(buf, "Date: {date}\r\n");
        HeadBuf { buf }
    }

    /// Header lines rendered before (each `Name: value\r\n`, checked when
    /// the config was read).
    pub(crate) fn raw(&mut self, lines: &str) -> &mut Self {
        self.buf.push_str(lines);
        self
    }

    /// One header field. Values come from this server (never raw request
    /// bytes), so they hold no line breaks.
    pub(crate) fn field(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.buf, "{name}: {value}\r\n");
        self
    }

    /// Ends the head with the `Connection` field the response needs, and
    /// appends `body` (if any).
    pub(crate) fn finish(mut self, connection: Connection, body: &[u8]) -> Vec<u8> {
        match connection {
            Connection::Close => self.buf.push_str("Connection: close\r\n"),
            Connection::KeepAlive10 => self.buf.push_str("Connection: keep-alive\r\n"),
            Connection::Default => {}
        }
        self.buf.push_str("\r\n");
        let mut bytes = self.buf.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

/// What the `Connection` field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    /// Nothing: HTTP/1.1 persistence.
    Default,
    /// `Connection: close`: the server closes after this response.
    Close,
    /// `Connection: keep-alive`: an HTTP/1.0 client asked to keep it.
    KeepAlive10,
}

/// The small HTML page of an error or redirect status.
pub(crate) fn error_page(status: u16, link: Option<&str>) -> String {
    let title = format!("{status} {}", reason(status));
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n"
    );
    if let Some(link) = link {
        let link = html_escape(link);
        let _ = writeln!(page, "<p><a href=\"{link}\">{link}</a></p>");
    }
    page.push_str("</body></html>\n");
    page
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Request bytes made safe for a log line: printable ASCII except `"` and
/// `\` stays, everything else becomes `\xHH` (no forged log lines).
pub(crate) fn log_escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 8);
    for &b in bytes.iter().take(max) {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_with_a_blank_line() {
        let mut h = HeadBuf::new(404, Some("loopd/0.1.0"), "Thu, 01 Jan 1970 00:00:00 GMT");
        h.field("Content-Length", 3);
        let bytes = h.finish(Connection::Close, b"abc");
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 404 Not Found\r\nServer: loopd/0.1.0\r\n\
             Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 3\r\n\
             Connection: close\r\n\r\nabc"
        );
    }

    #[test]
    fn no_server_field_when_there_is_none() {
        let mut h = HeadBuf::new(200, None, "Thu, 01 Jan 1970 00:00:00 GMT");
        h.raw("X-Content-Type-Options: nosniff\r\n");
        let text = String::from_utf8(h.finish(Connection::Default, b"")).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
             X-Content-Type-Options: nosniff\r\n\r\n"
        );
    }

    #[test]
    fn error_pages_escape_links() {
        let page = error_page(301, Some("/a<b>/"));
        assert!(page.contains("301 Moved Permanently"));
        assert!(page.contains("/a&lt;b&gt;/"));
        assert!(!page.contains("<b>"));
    }

    #[test]
    fn log_escaping() {
        assert_eq!(
            log_escape(b"GET /a\"b\\ HTTP/1.1", 100),
            "GET /a\\x22b\\x5C HTTP/1.1"
        );
        assert_eq!(log_escape(b"a\nb\xff", 100), "a\\x0Ab\\xFF");
        assert_eq!(log_escape(b"abcdef", 3), "abc...");
    }
}
