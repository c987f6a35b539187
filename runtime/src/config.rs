//! The config file: TOML in, typed [`Config`] out, with errors that name the
//! file, the line and the key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::Error;

/// Largest frame a config may allow (1 GiB).
const MAX_FRAME_LIMIT: u64 = 1 << 30;

/// A parsed, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (`None` when built in code or from a string).
    pub path: Option<PathBuf>,
    /// The `[runtime]` table.
    pub runtime: RuntimeConfig,
    /// The `[[handler]]` entries, in file order.
    pub handlers: Vec<HandlerConfig>,
}

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Most connections open at once (accepted and outbound); more are refused.
    pub max_connections: usize,
    /// How long a graceful shutdown may take before connections are cut.
    pub shutdown_timeout: Duration,
    /// How long `close(FLUSH)` or an EOF may wait for queued output to drain.
    pub close_timeout: Duration,
    /// Default largest frame (see [`HandlerConfig::max_frame`]).
    pub max_frame: usize,
    /// Default output queue size at which `send` refuses with AGAIN and input pauses.
    pub output_high_watermark: usize,
    /// Default output queue size below which `on_writable` fires and input resumes.
    pub output_low_watermark: usize,
    /// Where plugins given by name are looked up first (default: next to the executable).
    pub plugin_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_connections: 10_000,
            shutdown_timeout: Duration::from_millis(5_000),
            close_timeout: Duration::from_millis(5_000),
            max_frame: 1 << 20,
            output_high_watermark: 256 << 10,
            output_low_watermark: 64 << 10,
            plugin_dir: None,
        }
    }
}

/// Which library a handler comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// A bare name such as `echo`: `libloopd_echo.so` next to the executable.
    Name(String),
    /// A path to a shared library.
    Path(PathBuf),
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginRef::Name(n) => f.write_str(n),
            PluginRef::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A listener address, written as a URL in the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// `tcp://127.0.0.1:7000`, `tcp://[::1]:7000`.
    Tcp(SocketAddr),
    /// `unix:///tmp/loopd.sock`.
    Unix(PathBuf),
    /// `udp://127.0.0.1:7002`.
    Udp(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::Udp(a) => write!(f, "udp://{a}"),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    /// Parses `tcp://IP:PORT`, `udp://IP:PORT` or `unix:///absolute/or/relative/path`.
    /// Addresses must be numeric: a running loop never blocks on a resolver.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("`{s}` is not a URL like tcp://127.0.0.1:7000 or unix:///tmp/x.sock")
        })?;
        let ip = |rest: &str| -> Result<SocketAddr, String> {
            rest.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "`{s}`: `{rest}` is not a numeric IP:PORT (e.g. 127.0.0.1:7000 or [::1]:7000)"
                )
            })
        };
        match scheme {
            "tcp" => ip(rest).map(ListenAddr::Tcp),
            "udp" => ip(rest).map(ListenAddr::Udp),
            "unix" => {
                if rest.is_empty() {
                    return Err(format!("`{s}`: the unix socket path is empty"));
                }
                if rest.len() >= 108 {
                    return Err(format!(
                        "`{s}`: a unix socket path must be shorter than 108 bytes"
                    ));
                }
                if rest.contains('\0') {
                    return Err(format!("`{s}`: the unix socket path contains NUL"));
                }
                Ok(ListenAddr::Unix(PathBuf::from(rest)))
            }
            other => Err(format!(
                "`{s}`: unknown scheme `{other}` (use tcp, unix or udp)"
            )),
        }
    }
}

/// How a handler's input is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingKind {
    /// Bytes as they arrive.
    Raw,
    /// `\n`-terminated lines.
    Line,
    /// 4-byte big-endian length, then payload.
    LengthPrefixed,
}

impl FramingKind {
    fn parse(s: &str) -> Option<FramingKind> {
        match s {
            "raw" => Some(FramingKind::Raw),
            "line" => Some(FramingKind::Line),
            "length-prefixed" => Some(FramingKind::LengthPrefixed),
            _ => None,
        }
    }
}

impl fmt::Display for FramingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramingKind::Raw => "raw",
            FramingKind::Line => "line",
            FramingKind::LengthPrefixed => "length-prefixed",
        })
    }
}

/// Where something was written: for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}:{}:{}", p.display(), self.line, self.column),
            None => write!(f, "<config>:{}:{}", self.line, self.column),
        }
    }
}

/// One `[[handler]]` entry.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// The instance name, unique in the config.
    pub name: String,
    /// The library.
    pub plugin: PluginRef,
    /// Listener addresses.
    pub listen: Vec<ListenAddr>,
    /// Framing; `None` means the plugin's default (raw if it has none).
    pub framing: Option<FramingKind>,
    /// Largest frame: for `line` and `length-prefixed`, a longer frame
    /// disconnects the peer; for `raw`, the most bytes one `on_data` gets.
    pub max_frame: Option<usize>,
    /// Output queue high watermark (overrides the runtime's).
    pub output_high_watermark: Option<usize>,
    /// Output queue low watermark (overrides the runtime's).
    pub output_low_watermark: Option<usize>,
    /// Set `SO_BROADCAST` on the handler's UDP sockets, so it may send to
    /// broadcast addresses (`broadcast = true`; only valid with a `udp://`
    /// listener).
    pub broadcast: bool,
    /// The `[handler.config]` table as JSON (`{}` when absent).
    pub config_json: String,
    /// Where the entry's `plugin` key is, for errors about loading it.
    pub plugin_location: Option<Location>,
}

impl HandlerConfig {
    /// A handler entry with defaults, for building configs in code.
    pub fn new(name: impl Into<String>, plugin: PluginRef) -> HandlerConfig {
        HandlerConfig {
            name: name.into(),
            plugin,
            listen: Vec::new(),
            framing: None,
            max_frame: None,
            output_high_watermark: None,
            output_low_watermark: None,
            broadcast: false,
            config_json: "{}".to_string(),
            plugin_location: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    runtime: Option<Spanned<RawRuntime>>,
    #[serde(default)]
    handler: Vec<Spanned<RawHandler>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    max_connections: Option<Spanned<u64>>,
    shutdown_timeout_ms: Option<Spanned<u64>>,
    close_timeout_ms: Option<Spanned<u64>>,
    max_frame: Option<Spanned<u64>>,
    output_high_watermark: Option<Spanned<u64>>,
    output_low_watermark: Option<Spanned<u64>>,
    plugin_dir: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandler {
    name: Spanned<String>,
    plugin: Spanned<String>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    framing: Option<Spanned<String>>,
    max_frame: Option<Spanned<u64>>,
    output_high_watermark: Option<Spanned<u64>>,
    output_low_watermark: Option<Spanned<u64>>,
    broadcast: Option<Spanned<bool>>,
    config: Option<toml::Table>,
}

/// Turns byte offsets into line and column for one source text.
struct Source<'a> {
    file: Option<&'a Path>,
    text: &'a str,
}

impl Source<'_> {
    fn location(&self, span: &Range<usize>) -> Location {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(start, |nl| start - nl - 1) + 1;
        Location {
            file: self.file.map(Path::to_path_buf),
            line,
            column,
        }
    }

    /// The dotted key written on the line holding byte `offset`, e.g.
    /// `runtime.max_connections` or `handler[1].listen`, read off the text
    /// (toml's own errors say what is wrong but not where in the tree).
    fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_no = self.text[..offset].matches('\n').count();
        let mut table = String::new();
        let mut handlers = 0usize;
        for line in self.text.lines().take(line_no + 1) {
            let t = line.trim();
            if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
                let name = name.trim();
                if name == "handler" {
                    handlers += 1;
                    table = format!("handler[{}]", handlers - 1);
                } else {
                    table = name.to_string();
                }
            } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
                let name = name.trim();
                table = match name.strip_prefix("handler.") {
                    Some(sub) if handlers > 0 => format!("handler[{}].{sub}", handlers - 1),
                    _ => name.to_string(),
                };
            }
        }
        let line = self.text.lines().nth(line_no).unwrap_or("").trim_start();
        let key: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        let is_assignment = !key.is_empty() && line[key.len()..].trim_start().starts_with('=');
        match (is_assignment, table.is_empty()) {
            (true, true) => key,
            (true, false) => format!("{table}.{key}"),
            (false, _) => table,
        }
    }

    /// `file:line:col: key: message`, then the offending line with a caret.
    fn error(&self, span: Option<Range<usize>>, key: &str, message: impl fmt::Display) -> Error {
        let mut text = String::new();
        match &span {
            Some(span) => {
                let loc = self.location(span);
                text.push_str(&format!("{loc}: "));
                if !key.is_empty() {
                    text.push_str(&format!("{key}: "));
                }
                text.push_str(&message.to_string());
                if let Some(line) = self.text.lines().nth(loc.line - 1) {
                    let gutter = loc.line.to_string().len();
                    text.push_str(&format!(
                        "\n {:gutter$} |\n {} | {}\n {:gutter$} | {}^",
                        "",
                        loc.line,
                        line,
                        "",
                        " ".repeat(loc.column - 1)
                    ));
                }
            }
            None => {
                match self.file {
                    Some(p) => text.push_str(&format!("{}: ", p.display())),
                    None => text.push_str("<config>: "),
                }
                if !key.is_empty() {
                    text.push_str(&format!("{key}: "));
                }
                text.push_str(&message.to_string());
            }
        }
        Error::Config(text)
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file, line and key for anything malformed,
    /// or for a file that cannot be read.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read config: {e}", path.display())))?;
        Config::parse(&text, Some(path))
    }

    /// Parses and validates config text; `file` is only used in messages.
    ///
    /// # Errors
    /// [`Error::Config`] naming the line and key of the first problem.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, Error> {
        let src = Source { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e.span().map(|sp| src.key_at(sp.start)).unwrap_or_default();
            src.error(e.span(), &key, e.message())
        })?;

        let mut runtime = RuntimeConfig::default();
        if let Some(rt) = raw.runtime {
            let rt = rt.into_inner();
            let positive = |v: &Option<Spanned<u64>>, key: &str| -> Result<Option<u64>, Error> {
                match v {
                    Some(s) if *s.get_ref() == 0 => Err(src.error(
                        Some(s.span()),
                        &format!("runtime.{key}"),
                        "must be greater than 0",
                    )),
                    Some(s) => Ok(Some(*s.get_ref())),
                    None => Ok(None),
                }
            };
            if let Some(v) = positive(&rt.max_connections, "max_connections")? {
                runtime.max_connections = usize::try_from(v).unwrap_or(usize::MAX);
            }
            if let Some(v) = positive(&rt.shutdown_timeout_ms, "shutdown_timeout_ms")? {
                runtime.shutdown_timeout = Duration::from_millis(v);
            }
            if let Some(v) = positive(&rt.close_timeout_ms, "close_timeout_ms")? {
                runtime.close_timeout = Duration::from_millis(v);
            }
            if let Some(s) = &rt.max_frame {
                runtime.max_frame = check_frame(&src, s, "runtime.max_frame")?;
            }
            if let Some(v) = positive(&rt.output_high_watermark, "output_high_watermark")? {
                runtime.output_high_watermark = usize::try_from(v).unwrap_or(usize::MAX);
            }
            if let Some(v) = &rt.output_low_watermark {
                runtime.output_low_watermark = usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
            }
            if runtime.output_low_watermark >= runtime.output_high_watermark {
                return Err(watermark_error(
                    &src,
                    "runtime.",
                    rt.output_high_watermark.as_ref(),
                    rt.output_low_watermark.as_ref(),
                    runtime.output_high_watermark,
                    runtime.output_low_watermark,
                    None,
                ));
            }
            if let Some(dir) = rt.plugin_dir {
                runtime.plugin_dir = Some(PathBuf::from(dir.into_inner()));
            }
        }

        let mut handlers = Vec::with_capacity(raw.handler.len());
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, entry) in raw.handler.into_iter().enumerate() {
            let h = entry.into_inner();
            let key = |k: &str| format!("handler[{i}].{k}");

            let name = h.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(src.error(
                    Some(h.name.span()),
                    &key("name"),
                    format!("`{name}` is not a valid name (use letters, digits, `-`, `_`, `.`)"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(src.error(
                    Some(h.name.span()),
                    &key("name"),
                    format!("a handler named `{name}` is already defined"),
                ));
            }

            let plugin_text = h.plugin.get_ref();
            if plugin_text.is_empty() {
                return Err(src.error(Some(h.plugin.span()), &key("plugin"), "is empty"));
            }
            let plugin = if plugin_text.contains('/') || plugin_text.ends_with(".so") {
                PluginRef::Path(PathBuf::from(plugin_text))
            } else {
                PluginRef::Name(plugin_text.clone())
            };

            let mut listen = Vec::with_capacity(h.listen.len());
            for (j, l) in h.listen.iter().enumerate() {
                let addr: ListenAddr = l
                    .get_ref()
                    .parse()
                    .map_err(|e| src.error(Some(l.span()), &key(&format!("listen[{j}]")), e))?;
                // Port 0 means "any free port": many listeners may ask for it.
                let ephemeral =
                    matches!(&addr, ListenAddr::Tcp(a) | ListenAddr::Udp(a) if a.port() == 0);
                if !ephemeral && !addrs.insert(same_socket_key(&addr)) {
                    return Err(src.error(
                        Some(l.span()),
                        &key(&format!("listen[{j}]")),
                        format!("{addr} is already used by another listener"),
                    ));
                }
                listen.push(addr);
            }

            let framing = match &h.framing {
                Some(f) => Some(FramingKind::parse(f.get_ref()).ok_or_else(|| {
                    src.error(
                        Some(f.span()),
                        &key("framing"),
                        format!(
                            "unknown framing `{}` (use raw, line or length-prefixed)",
                            f.get_ref()
                        ),
                    )
                })?),
                None => None,
            };
            let max_frame = match &h.max_frame {
                Some(s) => Some(check_frame(&src, s, &key("max_frame"))?),
                None => None,
            };
            let high = h
                .output_high_watermark
                .as_ref()
                .map(|s| *s.get_ref() as usize);
            let low = h
                .output_low_watermark
                .as_ref()
                .map(|s| *s.get_ref() as usize);
            let (eff_high, eff_low) = (
                high.unwrap_or(runtime.output_high_watermark),
                low.unwrap_or(runtime.output_low_watermark),
            );
            if eff_low >= eff_high {
                return Err(watermark_error(
                    &src,
                    &format!("handler[{i}]."),
                    h.output_high_watermark.as_ref(),
                    h.output_low_watermark.as_ref(),
                    eff_high,
                    eff_low,
                    Some(h.name.span()),
                ));
            }

            let broadcast = match &h.broadcast {
                Some(b)
                    if *b.get_ref() && !listen.iter().any(|a| matches!(a, ListenAddr::Udp(_))) =>
                {
                    return Err(src.error(
                        Some(b.span()),
                        &key("broadcast"),
                        "only applies to udp:// listeners, and this handler has none",
                    ));
                }
                Some(b) => *b.get_ref(),
                None => false,
            };

            let config_json = match &h.config {
                Some(table) => serde_json::to_string(table)
                    .map_err(|e| src.error(Some(h.name.span()), &key("config"), e))?,
                None => "{}".to_string(),
            };

            handlers.push(HandlerConfig {
                name,
                plugin,
                listen,
                framing,
                max_frame,
                output_high_watermark: high,
                output_low_watermark: low,
                broadcast,
                config_json,
                plugin_location: Some(src.location(&h.plugin.span())),
            });
        }

        Ok(Config {
            path: file.map(Path::to_path_buf),
            runtime,
            handlers,
        })
    }
}

/// What two listener URLs that name the same socket have in common: a unix
/// path made absolute and lexically normalised (`a/sub/../x.sock` is
/// `a/x.sock`), so one socket spelled two ways is caught before binding.
fn same_socket_key(addr: &ListenAddr) -> ListenAddr {
    use std::path::Component;
    match addr {
        ListenAddr::Unix(p) => {
            let abs = if p.is_absolute() {
                p.clone()
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            };
            let mut out = PathBuf::new();
            for c in abs.components() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    other => out.push(other),
                }
            }
            ListenAddr::Unix(out)
        }
        other => other.clone(),
    }
}

/// The low watermark must be below the high one. The message names the key
/// that is in the file and says which value is a default.
fn watermark_error(
    src: &Source<'_>,
    prefix: &str,
    high_key: Option<&Spanned<u64>>,
    low_key: Option<&Spanned<u64>>,
    high: usize,
    low: usize,
    fallback: Option<Range<usize>>,
) -> Error {
    let default = |set: bool| if set { "" } else { ", the default" };
    match (high_key, low_key) {
        (Some(h), None) => src.error(
            Some(h.span()),
            &format!("{prefix}output_high_watermark"),
            format!(
                "must be above output_low_watermark ({high} <= {low}{})",
                default(false)
            ),
        ),
        (h, l) => src.error(
            l.or(h).map(|s| s.span()).or(fallback),
            &format!("{prefix}output_low_watermark"),
            format!(
                "must be below output_high_watermark ({low} >= {high}{})",
                default(h.is_some())
            ),
        ),
    }
}

fn check_frame(src: &Source<'_>, v: &Spanned<u64>, key: &str) -> Result<usize, Error> {
    let n = *v.get_ref();
    if n == 0 || n > MAX_FRAME_LIMIT {
        return Err(src.error(
            Some(v.span()),
            key,
            format!("must be between 1 and {MAX_FRAME_LIMIT} bytes"),
        ));
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text, Some(Path::new("t.toml"))) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_the_design_example() {
        let c = Config::parse(
            r#"
[runtime]
max_connections = 100
shutdown_timeout_ms = 250

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:7000", "unix:///tmp/loopd-echo.sock", "tcp://[::1]:7000"]
framing = "raw"

[[handler]]
name = "http"
plugin = "./x/libhttp.so"
listen = ["udp://127.0.0.1:7002"]
[handler.config]
root = "examples/www"
"#,
            None,
        )
        .unwrap();
        assert_eq!(c.runtime.max_connections, 100);
        assert_eq!(c.runtime.shutdown_timeout, Duration::from_millis(250));
        assert_eq!(c.handlers.len(), 2);
        assert_eq!(c.handlers[0].plugin, PluginRef::Name("echo".into()));
        assert_eq!(
            c.handlers[0].listen[1],
            ListenAddr::Unix("/tmp/loopd-echo.sock".into())
        );
        assert_eq!(c.handlers[0].listen[2].to_string(), "tcp://[::1]:7000");
        assert_eq!(c.handlers[0].framing, Some(FramingKind::Raw));
        assert_eq!(
            c.handlers[1].plugin,
            PluginRef::Path("./x/libhttp.so".into())
        );
        assert_eq!(c.handlers[1].config_json, r#"{"root":"examples/www"}"#);
        assert_eq!(c.handlers[0].config_json, "{}");
        assert_eq!(c.handlers[1].plugin_location.as_ref().unwrap().line, 14);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\nlisen = []\n");
        assert!(e.starts_with("t.toml:4:1: "), "{e}");
        assert!(e.contains("unknown field `lisen`"), "{e}");
    }

    #[test]
    fn unknown_runtime_key() {
        let e = err("[runtime]\nmax_conections = 5\n");
        assert!(e.starts_with("t.toml:2:1: "), "{e}");
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_address_names_the_listen_entry() {
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:7000\", \"tcp://localhost:99999\"]\n");
        assert!(e.starts_with("t.toml:4:35: handler[0].listen[1]: "), "{e}");
        assert!(e.contains("not a numeric IP:PORT"), "{e}");
        let e =
            err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\nlisten = [\"sctp://1.2.3.4:5\"]\n");
        assert!(e.contains("unknown scheme `sctp`"), "{e}");
    }

    #[test]
    fn duplicate_names_and_addresses() {
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\n[[handler]]\nname = \"a\"\nplugin = \"echo\"\n");
        assert!(e.starts_with("t.toml:5:8: handler[1].name: "), "{e}");
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:1\"]\n[[handler]]\nname = \"b\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:1\"]\n");
        assert!(
            e.contains("handler[1].listen[0]: tcp://127.0.0.1:1 is already used"),
            "{e}"
        );
    }

    #[test]
    fn bad_framing_and_sizes() {
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\nframing = \"lines\"\n");
        assert!(
            e.contains("t.toml:4:11: handler[0].framing: unknown framing `lines`"),
            "{e}"
        );
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\nmax_frame = 0\n");
        assert!(e.contains("handler[0].max_frame: must be between"), "{e}");
        let e = err("[runtime]\noutput_high_watermark = 10\noutput_low_watermark = 10\n");
        assert!(
            e.contains("runtime.output_low_watermark: must be below"),
            "{e}"
        );
        let e = err("[runtime]\nmax_connections = 0\n");
        assert!(
            e.contains("t.toml:2:19: runtime.max_connections: must be greater than 0"),
            "{e}"
        );
    }

    #[test]
    fn toml_errors_name_the_dotted_key() {
        let e = err("[runtime]\nmax_connections = \"many\"\n");
        assert!(
            e.starts_with("t.toml:2:19: runtime.max_connections: invalid type"),
            "{e}"
        );
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\n[[handler]]\nname = \"b\"\nplugin = \"echo\"\nlisten = 5\n");
        assert!(e.contains("handler[1].listen: invalid type"), "{e}");
        let e = err("[[handler]]\nname = \"a\"\n");
        assert!(e.contains("handler[0]: missing field `plugin`"), "{e}");
    }

    #[test]
    fn watermark_errors_name_the_key_in_the_file() {
        let e = err("[runtime]\noutput_high_watermark = 1000\n");
        assert!(
            e.contains("runtime.output_high_watermark: must be above output_low_watermark (1000 <= 65536, the default)"),
            "{e}"
        );
        let e =
            err("[[handler]]\nname = \"a\"\nplugin = \"echo\"\noutput_low_watermark = 300000\n");
        assert!(
            e.contains("handler[0].output_low_watermark: must be below output_high_watermark (300000 >= 262144, the default)"),
            "{e}"
        );
    }

    #[test]
    fn broadcast_key() {
        let c = Config::parse(
            "[[handler]]\nname = \"a\"\nplugin = \"x\"\nlisten = [\"udp://127.0.0.1:0\"]\nbroadcast = true\n",
            None,
        )
        .unwrap();
        assert!(c.handlers[0].broadcast);
        let c = Config::parse(
            "[[handler]]\nname = \"a\"\nplugin = \"x\"\nlisten = [\"udp://127.0.0.1:0\"]\n",
            None,
        )
        .unwrap();
        assert!(!c.handlers[0].broadcast, "off by default");
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"x\"\nlisten = [\"tcp://127.0.0.1:0\"]\nbroadcast = true\n");
        assert!(
            e.contains("t.toml:5:13: handler[0].broadcast: only applies to udp:// listeners"),
            "{e}"
        );
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"x\"\nlisten = [\"udp://127.0.0.1:0\"]\nbroadcast = \"yes\"\n");
        assert!(e.contains("handler[0].broadcast: invalid type"), "{e}");
    }

    #[test]
    fn type_errors_and_syntax_errors_have_lines() {
        let e = err("[runtime]\nmax_connections = \"many\"\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
        let e = err("[[handler]]\nname = \"a\nplugin = \"echo\"\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
        let e = err("[[handler]]\nname = \"a\"\n");
        assert!(e.contains("missing field `plugin`"), "{e}");
    }
}
