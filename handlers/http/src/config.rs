//! The `[handler.config]` table: keys, defaults and validation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The http handler's `[handler.config]` table, as written in the TOML file.
///
/// Every key but `root` has a default; unknown keys are errors. See
/// `docs/handlers/http.md` for what each one does.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The directory to serve (required). Relative paths are relative to
    /// loopd's working directory.
    pub root: Option<PathBuf>,
    /// The file served for a directory request (`""`: none).
    pub index: String,
    /// Serve files and directories whose name starts with `.` (except
    /// `.well-known`, which is always served).
    pub hidden_files: bool,
    /// How long a client may take to send a complete request head (and
    /// any body the server discards), in milliseconds: 408 and close.
    pub header_timeout_ms: u64,
    /// How long an idle keep-alive connection stays open, in milliseconds
    /// (`0`: no keep-alive, every response closes its connection).
    pub keepalive_timeout_ms: u64,
    /// How long a response may make no progress (the client not reading)
    /// before the connection is cut, in milliseconds.
    pub send_timeout_ms: u64,
    /// After an error response that closes the connection, how long to wait
    /// for more of what the client is still sending (read and discarded, so
    /// the response is not lost to a TCP reset) before closing, in
    /// milliseconds; each arrival starts the wait again, within
    /// `lingering_time_ms`.
    pub lingering_timeout_ms: u64,
    /// The most time a lingering close may take in all, however steadily
    /// the client keeps sending, in milliseconds.
    pub lingering_time_ms: u64,
    /// Longest request line in bytes (414 beyond).
    pub max_request_line: usize,
    /// Largest header section in bytes, request line excluded (431 beyond).
    pub max_header_bytes: usize,
    /// Most header fields (431 beyond).
    pub max_headers: usize,
    /// Largest request body read and discarded on a GET or HEAD (or any
    /// refused request), in bytes (413 beyond).
    pub max_discard_body: u64,
    /// Write one access log line per request (target `loopd::access`).
    pub access_log: bool,
    /// Extra or overriding `extension = "content type"` pairs.
    pub types: BTreeMap<String, String>,
    /// The content type of files with an unknown extension.
    pub default_type: String,
    /// Most files kept open (small ones in memory) between requests;
    /// `0` opens the file for every request.
    pub open_file_cache_max: usize,
    /// How long a cached file is used without looking at its path again,
    /// in milliseconds: at most one stat of each cached path per period.
    /// The default, 1, sees a change within about 2 ms (the clock counts
    /// whole milliseconds); `0` stats the path at every use. Like nginx's
    /// `open_file_cache_valid`: a change may go unseen that long.
    pub open_file_cache_ms: u64,
    /// The `Server` field (`""`: none); `loopd/<version>` when unset.
    pub server_header: Option<String>,
    /// Fields added to every response, e.g. `Content-Security-Policy`.
    /// `X-Content-Type-Options` (sent as `nosniff` by default) may be
    /// changed, or set to `""` to send none.
    pub headers: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: None,
            index: "index.html".into(),
            hidden_files: false,
            header_timeout_ms: 10_000,
            keepalive_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            lingering_timeout_ms: 2_000,
            lingering_time_ms: 30_000,
            max_request_line: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_discard_body: 64 * 1024,
            access_log: true,
            types: BTreeMap::new(),
            default_type: "application/octet-stream".into(),
            open_file_cache_max: DEFAULT_OPEN_FILE_CACHE_MAX,
            open_file_cache_ms: 1,
            server_header: None,
            headers: BTreeMap::new(),
        }
    }
}

/// The most header fields `max_headers` may allow (the parser's field
/// array lives on the stack).
pub(crate) const MAX_HEADERS_LIMIT: usize = 1000;

/// A validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) root: PathBuf,
    pub(crate) index: Option<String>,
    pub(crate) hidden_files: bool,
    pub(crate) header_timeout: Duration,
    pub(crate) keepalive_timeout: Option<Duration>,
    pub(crate) send_timeout: Duration,
    pub(crate) lingering_timeout: Duration,
    pub(crate) lingering_time: Duration,
    pub(crate) max_request_line: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_discard_body: u64,
    pub(crate) access_log: bool,
    pub(crate) types: BTreeMap<String, String>,
    pub(crate) default_type: String,
    pub(crate) open_file_cache_max: usize,
    pub(crate) open_file_cache_valid_ms: u64,
    /// `None`: the default (`loopd/<version>`); `""`: no `Server` field.
    pub(crate) server_header: Option<String>,
    /// Extra fields, each `Name: value\r\n`, rendered once.
    pub(crate) extra_fields: String,
}

/// `open_file_cache_max` when the config does not set it.
pub(crate) const DEFAULT_OPEN_FILE_CACHE_MAX: usize = 256;

/// The most files `open_file_cache_max` may allow.
pub(crate) const OPEN_FILE_CACHE_LIMIT: usize = 100_000;

/// Fields the server writes itself: configuring them would contradict
/// (or break the framing of) its responses.
const RESERVED_FIELDS: &[&str] = &[
    "accept-ranges",
    "allow",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "etag",
    "keep-alive",
    "last-modified",
    "location",
    "proxy-connection",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Config {
    /// Checks every key and returns the settings the handler runs with.
    ///
    /// # Errors
    /// A message naming the key and what is wrong with it.
    pub(crate) fn validate(self) -> Result<Settings, String> {
        let root = self
            .root
            .ok_or("`root` is required: the directory to serve, e.g. root = \"examples/www\"")?;
        if root.as_os_str().is_empty() {
            return Err("`root` is empty".into());
        }
        let index = if self.index.is_empty() {
            None
        } else if self.index.contains('/') || self.index == "." || self.index == ".." {
            return Err(format!(
                "`index` must be a file name without '/', got {:?}",
                self.index
            ));
        } else if self.index.contains('\0') {
            return Err("`index` contains a NUL byte".into());
        } else {
            Some(self.index)
        };
        let positive = |key: &str, ms: u64| -> Result<Duration, String> {
            if ms == 0 {
                Err(format!("`{key}` must be at least 1 (milliseconds)"))
            } else {
                Ok(Duration::from_millis(ms))
            }
        };
        let header_timeout = positive("header_timeout_ms", self.header_timeout_ms)?;
        let send_timeout = positive("send_timeout_ms", self.send_timeout_ms)?;
        let lingering_timeout = Duration::from_millis(self.lingering_timeout_ms);
        let lingering_time = Duration::from_millis(self.lingering_time_ms);
        if self.lingering_time_ms > 3_600_000 {
            return Err(format!(
                "`lingering_time_ms` must be at most 3600000 (an hour), got {}",
                self.lingering_time_ms
            ));
        }
        let keepalive_timeout = (self.keepalive_timeout_ms > 0)
            .then(|| Duration::from_millis(self.keepalive_timeout_ms));
        let in_range = |key: &str, v: usize, lo: usize, hi: usize| -> Result<usize, String> {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(format!("`{key}` must be between {lo} and {hi}, got {v}"))
            }
        };
        let max_request_line = in_range("max_request_line", self.max_request_line, 64, 1 << 20)?;
        let max_header_bytes = in_range("max_header_bytes", self.max_header_bytes, 64, 1 << 20)?;
        let max_headers = in_range("max_headers", self.max_headers, 1, MAX_HEADERS_LIMIT)?;
        let mut types = BTreeMap::new();
        for (ext, ty) in self.types {
            if ext.is_empty() || ext.contains('.') || ext.contains('/') {
                return Err(format!(
                    "`types`: {ext:?} is not a file extension (write it without the dot)"
                ));
            }
            check_content_type(&format!("types.{ext}"), &ty)?;
            types.insert(ext.to_ascii_lowercase(), ty);
        }
        check_content_type("default_type", &self.default_type)?;
        if self.open_file_cache_max > OPEN_FILE_CACHE_LIMIT {
            return Err(format!(
                "`open_file_cache_max` must be at most {OPEN_FILE_CACHE_LIMIT}, got {}",
                self.open_file_cache_max
            ));
        }
        if self.open_file_cache_ms > 86_400_000 {
            return Err(format!(
                "`open_file_cache_ms` must be at most 86400000 (a day), got {}",
                self.open_file_cache_ms
            ));
        }
        if let Some(server) = &self.server_header {
            check_field_value("server_header", server)?;
        }
        let extra_fields = render_fields(&self.headers)?;
        Ok(Settings {
            root,
            index,
            hidden_files: self.hidden_files,
            header_timeout,
            keepalive_timeout,
            send_timeout,
            lingering_timeout,
            lingering_time,
            max_request_line,
            max_header_bytes,
            max_headers,
            max_discard_body: self.max_discard_body,
            access_log: self.access_log,
            types,
            default_type: self.default_type,
            open_file_cache_max: self.open_file_cache_max,
            open_file_cache_valid_ms: self.open_file_cache_ms,
            server_header: self.server_header,
            extra_fields,
        })
    }
}

/// The `headers` table as header lines, `X-Content-Type-Options: nosniff`
/// first unless the table sets that field.
fn render_fields(headers: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in headers {
        if !is_token(name) {
            return Err(format!(
                "`headers`: {name:?} is not a header field name (letters, digits and \
                 !#$%&'*+-.^_`|~ only, no spaces or colons)"
            ));
        }
        let lower = name.to_ascii_lowercase();
        if lower == "server" {
            return Err(format!(
                "`headers.{name}`: set the Server field with `server_header`"
            ));
        }
        if RESERVED_FIELDS.contains(&lower.as_str()) {
            return Err(format!(
                "`headers.{name}`: the server sets this field itself; it cannot be configured"
            ));
        }
        if seen.contains(&lower) {
            return Err(format!(
                "`headers.{name}`: the field is given twice (names are case-insensitive)"
            ));
        }
        seen.push(lower.clone());
        let key = format!("headers.{name}");
        if value.is_empty() {
            if lower == "x-content-type-options" {
                continue;
            }
            return Err(format!(
                "`{key}`: empty value (only X-Content-Type-Options may be \"\", to send none)"
            ));
        }
        check_field_value(&key, value)?;
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    if !seen.iter().any(|n| n == "x-content-type-options") {
        out.insert_str(0, "X-Content-Type-Options: nosniff\r\n");
    }
    Ok(out)
}

/// RFC 9110 5.6.2 `token`: what a field name is made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A field value goes into a response head as is: one line of printable
/// ASCII (spaces and tabs inside), nothing a client could read as the end
/// of the field or of the head.
fn check_field_value(key: &str, value: &str) -> Result<(), String> {
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!(
            "`{key}`: the value holds a line break (CR or LF); a field value is one line"
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| !(c == ' ' || c == '\t' || c.is_ascii_graphic()))
    {
        return Err(format!(
            "`{key}`: the value holds {c:?}; only printable ASCII, spaces and tabs are allowed"
        ));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(format!("`{key}`: the value starts or ends with whitespace"));
    }
    Ok(())
}

/// A content type goes into a response header as is: printable ASCII only.
fn check_content_type(key: &str, ty: &str) -> Result<(), String> {
    let printable = ty.bytes().all(|b| (0x20..0x7f).contains(&b));
    if ty.is_empty() || !printable || !ty.contains('/') {
        return Err(format!(
            "`{key}`: {ty:?} is not a content type such as \"text/plain; charset=utf-8\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        let cfg: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        cfg.validate()
    }

    #[test]
    fn defaults_need_only_a_root() {
        let s = parse(r#"{"root": "www"}"#).unwrap();
        assert_eq!(s.index.as_deref(), Some("index.html"));
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        assert_eq!(s.keepalive_timeout, Some(Duration::from_secs(60)));
        assert_eq!(s.max_request_line, 8192);
        assert_eq!(s.max_header_bytes, 16384);
        assert_eq!(s.max_headers, 100);
        assert!(s.access_log);
        assert_eq!(s.lingering_timeout, Duration::from_secs(2));
        assert_eq!(s.lingering_time, Duration::from_secs(30));
    }

    #[test]
    fn missing_root_is_an_error() {
        assert!(parse("{}").unwrap_err().contains("`root` is required"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(parse(r#"{"root": "www", "rot": 1}"#)
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (json, key) in [
            (r#"{"root": "w", "index": "a/b"}"#, "index"),
            (
                r#"{"root": "w", "header_timeout_ms": 0}"#,
                "header_timeout_ms",
            ),
            (r#"{"root": "w", "send_timeout_ms": 0}"#, "send_timeout_ms"),
            (
                r#"{"root": "w", "lingering_time_ms": 3600001}"#,
                "lingering_time_ms",
            ),
            (r#"{"root": "w", "max_headers": 0}"#, "max_headers"),
            (r#"{"root": "w", "max_headers": 5000}"#, "max_headers"),
            (
                r#"{"root": "w", "max_request_line": 10}"#,
                "max_request_line",
            ),
            (r#"{"root": "w", "types": {".x": "a/b"}}"#, "types"),
            (r#"{"root": "w", "types": {"x": "bad\ntype"}}"#, "types.x"),
            (
                r#"{"root": "w", "default_type": "nothing"}"#,
                "default_type",
            ),
            (
                r#"{"root": "w", "open_file_cache_ms": 86400001}"#,
                "open_file_cache_ms",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn the_open_file_cache_is_on_and_checked_every_millisecond_by_default() {
        let s = parse(r#"{"root": "w"}"#).unwrap();
        assert_eq!(
            (s.open_file_cache_max, s.open_file_cache_valid_ms),
            (256, 1)
        );
        let s =
            parse(r#"{"root": "w", "open_file_cache_max": 0, "open_file_cache_ms": 0}"#).unwrap();
        assert_eq!((s.open_file_cache_max, s.open_file_cache_valid_ms), (0, 0));
        for (json, key) in [
            (
                r#"{"root": "w", "open_file_cache_max": 100001}"#,
                "open_file_cache_max",
            ),
            (
                r#"{"root": "w", "open_file_cache_ms": 86400001}"#,
                "open_file_cache_ms",
            ),
        ] {
            assert!(parse(json).unwrap_err().contains(key), "{json}");
        }
    }

    #[test]
    fn nosniff_by_default_and_configured_fields_rendered_once() {
        let s = parse(r#"{"root": "w"}"#).unwrap();
        assert_eq!(s.extra_fields, "X-Content-Type-Options: nosniff\r\n");
        assert_eq!(s.server_header, None);
        let s = parse(
            r#"{"root": "w", "server_header": "",
                "headers": {"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}}"#,
        )
        .unwrap();
        assert_eq!(
            s.extra_fields,
            "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
             X-Frame-Options: DENY\r\n"
        );
        assert_eq!(s.server_header.as_deref(), Some(""));
        let s = parse(r#"{"root": "w", "headers": {"x-content-type-options": ""}}"#).unwrap();
        assert_eq!(s.extra_fields, "");
        let s =
            parse(r#"{"root": "w", "headers": {"X-Content-Type-Options": "nosniff"}}"#).unwrap();
        assert_eq!(s.extra_fields, "X-Content-Type-Options: nosniff\r\n");
    }

    #[test]
    fn fields_that_could_split_a_response_are_refused() {
        for (json, key) in [
            (
                r#"{"root": "w", "headers": {"X-A": "a\r\nB: c"}}"#,
                "`headers.X-A`: the value holds a line break",
            ),
            (
                r#"{"root": "w", "headers": {"X-A": "a\u0000"}}"#,
                "`headers.X-A`: the value holds",
            ),
            (
                r#"{"root": "w", "headers": {"X-A": "a\u007f"}}"#,
                "`headers.X-A`: the value holds",
            ),
            (
                r#"{"root": "w", "headers": {"X-A": "tab\tok but trailing "}}"#,
                "whitespace",
            ),
            (
                r#"{"root": "w", "headers": {"X A": "b"}}"#,
                "is not a header field name",
            ),
            (
                r#"{"root": "w", "headers": {"X-A\r\nB": "b"}}"#,
                "is not a header field name",
            ),
            (
                r#"{"root": "w", "headers": {"Content-Type": "x/y"}}"#,
                "`headers.Content-Type`",
            ),
            (
                r#"{"root": "w", "headers": {"server": "x"}}"#,
                "`server_header`",
            ),
            (r#"{"root": "w", "headers": {"X-A": ""}}"#, "empty value"),
            (
                r#"{"root": "w", "headers": {"X-A": "1", "x-a": "2"}}"#,
                "given twice",
            ),
            (
                r#"{"root": "w", "server_header": "a\nb"}"#,
                "`server_header`",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(key), "{json}: {err}");
        }
        // Tabs inside a value are fine.
        assert!(parse(r#"{"root": "w", "headers": {"X-A": "a\tb"}}"#).is_ok());
    }

    #[test]
    fn keepalive_zero_disables_keep_alive() {
        let s = parse(r#"{"root": "w", "keepalive_timeout_ms": 0}"#).unwrap();
        assert_eq!(s.keepalive_timeout, None);
    }
}
