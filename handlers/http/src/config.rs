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
    /// How long an opened file (descriptor, size, validators, content
    /// type) is reused for requests of the same path before it is opened
    /// and checked again, in milliseconds; `0` (the default) opens the file
    /// for every request. Like nginx's `open_file_cache_valid`: within that
    /// time a replaced or deleted file may still be served as it was.
    pub open_file_cache_ms: u64,
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
            open_file_cache_ms: 0,
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
    pub(crate) open_file_cache: Option<Duration>,
}

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
            open_file_cache: match self.open_file_cache_ms {
                0 => None,
                ms if ms <= 86_400_000 => Some(Duration::from_millis(ms)),
                ms => {
                    return Err(format!(
                        "`open_file_cache_ms` must be at most 86400000 (a day), got {ms}"
                    ))
                }
            },
        })
    }
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
    fn keepalive_zero_disables_keep_alive() {
        let s = parse(r#"{"root": "w", "keepalive_timeout_ms": 0}"#).unwrap();
        assert_eq!(s.keepalive_timeout, None);
    }
}
