//! Reading a config file: TOML in, typed [`Config`] out, with errors that
//! name the file, the line and the key.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::*;
use crate::error::Error;

mod tls;
use tls::tls_keys;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    runtime: Option<Spanned<RawRuntime>>,
    #[serde(default)]
    handler: Vec<Spanned<RawHandler>>,
    #[serde(default)]
    log: Option<Spanned<RawLog>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    max_queued: Option<Spanned<u64>>,
    access_log: Option<Spanned<String>>,
    access_log_buffer: Option<Spanned<u64>>,
    access_log_flush_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    max_connections: Option<Spanned<u64>>,
    shutdown_timeout_ms: Option<Spanned<u64>>,
    close_timeout_ms: Option<Spanned<u64>>,
    tls_handshake_timeout_ms: Option<Spanned<u64>>,
    max_frame: Option<Spanned<u64>>,
    output_high_watermark: Option<Spanned<u64>>,
    output_low_watermark: Option<Spanned<u64>>,
    plugin_dir: Option<Spanned<String>>,
    max_buffered_input: Option<Spanned<u64>>,
    max_connections_per_peer: Option<Spanned<u64>>,
    drain_timeout_ms: Option<Spanned<u64>>,
    pid_file: Option<Spanned<String>>,
    workers: Option<Spanned<toml::Value>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
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
    max_connections: Option<Spanned<u64>>,
    max_connections_per_peer: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    reuse_address: Option<Spanned<bool>>,
    mailbox_messages: Option<Spanned<u64>>,
    mailbox_bytes: Option<Spanned<u64>>,
    unix_mode: Option<Spanned<String>>,
    unix_owner: Option<Spanned<String>>,
    unix_group: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    tls_client_ca: Option<Spanned<String>>,
    tls_ca: Option<Spanned<String>>,
    tls_connect_cert: Option<Spanned<String>>,
    tls_connect_key: Option<Spanned<String>>,
    tls_alpn: Option<Spanned<Vec<String>>>,
    tls_sni: Option<Vec<tls::RawSni>>,
    config: Option<toml::Table>,
}

/// Turns byte offsets into line and column for one source text.
struct Source<'a> {
    file: Option<&'a Path>,
    text: &'a str,
    /// Byte offset of the start of each line after the first, built on the
    /// first lookup: a location is then a binary search, not a scan of the
    /// text (configs with thousands of keys stay linear).
    line_starts: std::cell::OnceCell<Vec<usize>>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, file: Option<&'a Path>) -> Source<'a> {
        Source {
            file,
            text,
            line_starts: std::cell::OnceCell::new(),
        }
    }

    fn location(&self, span: &Range<usize>) -> Location {
        let start = span.start.min(self.text.len());
        let starts = self.line_starts.get_or_init(|| {
            memchr::memchr_iter(b'\n', self.text.as_bytes())
                .map(|nl| nl + 1)
                .collect()
        });
        // Lines before the one holding `start`.
        let before = starts.partition_point(|&s| s <= start);
        let line_start = if before == 0 { 0 } else { starts[before - 1] };
        Location {
            file: self.file.map(Path::to_path_buf),
            line: before + 1,
            column: start - line_start + 1,
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
    /// The file must be a regular file of at most [`MAX_CONFIG_BYTES`]:
    /// `/dev/zero`, a FIFO or a directory is refused without reading (or
    /// blocking on) it. The checks are made on the opened file, so the path
    /// cannot be swapped for something else between check and read.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file, line and key for anything malformed,
    /// or naming the file for one that cannot be read or is not a regular
    /// file of at most [`MAX_CONFIG_BYTES`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text = read_config_file(path, MAX_CONFIG_BYTES)
            .map_err(|e| Error::Config(format!("{}: cannot read config: {e}", path.display())))?;
        Config::parse(&text, Some(path))
    }

    /// Parses and validates config text; `file` is only used in messages.
    ///
    /// # Errors
    /// [`Error::Config`] naming the line and key of the first problem.
    pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, Error> {
        let src = Source::new(text, file);
        let toml_error = |e: toml::de::Error| {
            let key = e.span().map(|sp| src.key_at(sp.start)).unwrap_or_default();
            src.error(e.span(), &key, e.message())
        };
        let doc = DeTable::parse(text).map_err(toml_error)?;
        // The spans of the keys in each [handler.config], which
        // deserializing into a table forgets.
        let mut config_keys = all_config_keys(&src, doc.get_ref()).into_iter();
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(toml_error)?;

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
                runtime.max_connections = to_usize(v);
            }
            if let Some(v) = positive(&rt.shutdown_timeout_ms, "shutdown_timeout_ms")? {
                runtime.shutdown_timeout = Duration::from_millis(v);
            }
            if let Some(v) = positive(&rt.close_timeout_ms, "close_timeout_ms")? {
                runtime.close_timeout = Duration::from_millis(v);
            }
            if let Some(v) = positive(&rt.tls_handshake_timeout_ms, "tls_handshake_timeout_ms")? {
                runtime.tls_handshake_timeout = Duration::from_millis(v);
            }
            if let Some(v) = &rt.max_frame {
                runtime.max_frame = to_usize(*v.get_ref());
            }
            if let Some(v) = positive(&rt.output_high_watermark, "output_high_watermark")? {
                runtime.output_high_watermark = to_usize(v);
            }
            if let Some(v) = &rt.output_low_watermark {
                runtime.output_low_watermark = to_usize(*v.get_ref());
            }
            let keys = LimitKeys {
                prefix: "runtime.",
                max_frame: rt.max_frame.as_ref(),
                high: rt.output_high_watermark.as_ref(),
                low: rt.output_low_watermark.as_ref(),
                fallback: None,
            };
            runtime
                .limits()
                .validate()
                .map_err(|e| limit_error(&src, &keys, &e))?;
            if let Some(dir) = rt.plugin_dir {
                // A mistyped directory would let a plugin of the same name
                // be taken from next to the executable instead.
                let why = match std::fs::metadata(dir.get_ref()) {
                    _ if dir.get_ref().is_empty() => Some("is empty".to_string()),
                    Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.get_ref())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                        "the directory {} does not exist{}",
                        dir.get_ref(),
                        relative_hint(Path::new(dir.get_ref()))
                    )),
                    // Anything else (permissions) is reported with the
                    // plugin it hides.
                    _ => None,
                };
                if let Some(why) = why {
                    return Err(src.error(Some(dir.span()), "runtime.plugin_dir", why));
                }
                runtime.plugin_dir = Some(PathBuf::from(dir.into_inner()));
            }
            if let Some(v) = positive(&rt.max_buffered_input, "max_buffered_input")? {
                runtime.max_buffered_input = to_usize(v);
            }
            if let Some(v) = &rt.max_connections_per_peer {
                runtime.max_connections_per_peer = to_usize(*v.get_ref());
            }
            if let Some(v) = positive(&rt.drain_timeout_ms, "drain_timeout_ms")? {
                runtime.drain_timeout = Duration::from_millis(v);
            }
            if let Some(w) = &rt.workers {
                runtime.workers_auto = matches!(w.get_ref(), toml::Value::String(s) if s == "auto");
                runtime.workers = match w.get_ref() {
                    toml::Value::Integer(n) if (1..=1024).contains(n) => *n as usize,
                    toml::Value::String(s) if s == "auto" => crate::config::available_cpus(),
                    other => {
                        return Err(src.error(
                            Some(w.span()),
                            "runtime.workers",
                            format!("must be a number from 1 to 1024 or \"auto\", not {other:?}"),
                        ))
                    }
                };
            }
            if let Some(p) = rt.pid_file {
                if p.get_ref().is_empty() {
                    return Err(src.error(Some(p.span()), "runtime.pid_file", "is empty"));
                }
                if let Some(why) = pid_file_problem(Path::new(p.get_ref())) {
                    return Err(src.error(Some(p.span()), "runtime.pid_file", why));
                }
                runtime.pid_file = Some(PathBuf::from(p.into_inner()));
            }
            runtime.user = account(&src, rt.user.as_ref(), "runtime.user")?;
            runtime.group = account(&src, rt.group.as_ref(), "runtime.group")?;
            if let (Some(g), None) = (&rt.group, &rt.user) {
                return Err(src.error(
                    Some(g.span()),
                    "runtime.group",
                    "needs runtime.user: loopd switches group only together with the user",
                ));
            }
        }

        let mut handlers = Vec::with_capacity(raw.handler.len());
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, entry) in raw.handler.into_iter().enumerate() {
            let h = entry.into_inner();
            let key = |k: &str| format!("handler[{i}].{k}");

            let name = h.name.get_ref().clone();
            check_name(&name).map_err(|e| src.error(Some(h.name.span()), &key("name"), e))?;
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
            let plugin = PluginRef::parse(plugin_text);

            let mut listen = Vec::with_capacity(h.listen.len());
            let mut listen_locations = Vec::with_capacity(h.listen.len());
            for (j, l) in h.listen.iter().enumerate() {
                let addr = ListenAddr::parse_listener(l.get_ref())
                    .map_err(|e| src.error(Some(l.span()), &key(&format!("listen[{j}]")), e))?;
                // Port 0 means "any free port": many listeners may ask for it.
                let ephemeral = matches!(&addr, ListenAddr::Tcp(a) | ListenAddr::Udp(a) | ListenAddr::Tls(a) if a.port() == 0);
                if !ephemeral && !addrs.insert(same_socket_key(&addr)) {
                    return Err(src.error(
                        Some(l.span()),
                        &key(&format!("listen[{j}]")),
                        format!("{addr} is already used by another listener"),
                    ));
                }
                listen.push(addr);
                listen_locations.push(src.location(&l.span()));
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

            let config_json = match &h.config {
                Some(table) => serde_json::to_string(table)
                    .map_err(|e| src.error(Some(h.name.span()), &key("config"), e))?,
                None => "{}".to_string(),
            };

            let mut entry = HandlerConfig::new(name, plugin);
            entry.listen = listen;
            entry.listen_locations = listen_locations;
            entry.framing = framing;
            entry.max_frame = h.max_frame.as_ref().map(|s| to_usize(*s.get_ref()));
            entry.output_high_watermark = h
                .output_high_watermark
                .as_ref()
                .map(|s| to_usize(*s.get_ref()));
            entry.output_low_watermark = h
                .output_low_watermark
                .as_ref()
                .map(|s| to_usize(*s.get_ref()));
            let prefix = format!("handler[{i}].");
            let keys = LimitKeys {
                prefix: &prefix,
                max_frame: h.max_frame.as_ref(),
                high: h.output_high_watermark.as_ref(),
                low: h.output_low_watermark.as_ref(),
                fallback: Some(h.name.span()),
            };
            entry
                .limits(&runtime)
                .validate()
                .map_err(|e| limit_error(&src, &keys, &e))?;
            let broadcast = match &h.broadcast {
                Some(b)
                    if *b.get_ref()
                        && !entry.listen.iter().any(|a| matches!(a, ListenAddr::Udp(_))) =>
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

            entry.broadcast = broadcast;
            let positive = |v: &Option<Spanned<u64>>, k: &str| -> Result<Option<usize>, Error> {
                match v {
                    Some(s) if *s.get_ref() == 0 => {
                        Err(src.error(Some(s.span()), &key(k), "must be greater than 0"))
                    }
                    Some(s) => Ok(Some(to_usize(*s.get_ref()))),
                    None => Ok(None),
                }
            };
            entry.max_connections = positive(&h.max_connections, "max_connections")?;
            entry.max_connections_per_peer = h
                .max_connections_per_peer
                .as_ref()
                .map(|s| to_usize(*s.get_ref()));
            entry.idle_timeout = positive(&h.idle_timeout_ms, "idle_timeout_ms")?
                .map(|ms| Duration::from_millis(ms as u64));
            entry.reuse_address = match &h.reuse_address {
                Some(b)
                    if *b.get_ref()
                        && !entry.listen.iter().any(|a| matches!(a, ListenAddr::Udp(_))) =>
                {
                    return Err(src.error(
                        Some(b.span()),
                        &key("reuse_address"),
                        "only applies to udp:// listeners, and this handler has none",
                    ));
                }
                Some(b) => *b.get_ref(),
                None => false,
            };
            entry.mailbox_messages = positive(&h.mailbox_messages, "mailbox_messages")?;
            entry.mailbox_bytes = positive(&h.mailbox_bytes, "mailbox_bytes")?;
            let has_unix = entry
                .listen
                .iter()
                .any(|a| matches!(a, ListenAddr::Unix(_)));
            for (k, set) in [
                ("unix_mode", h.unix_mode.as_ref()),
                ("unix_owner", h.unix_owner.as_ref()),
                ("unix_group", h.unix_group.as_ref()),
            ] {
                if let (Some(v), false) = (set, has_unix) {
                    return Err(src.error(
                        Some(v.span()),
                        &key(k),
                        "only applies to unix:// listeners, and this handler has none",
                    ));
                }
            }
            if let Some(m) = &h.unix_mode {
                entry.unix_mode = Some(
                    parse_unix_mode(m.get_ref())
                        .map_err(|e| src.error(Some(m.span()), &key("unix_mode"), e))?,
                );
            }
            entry.unix_owner = account(&src, h.unix_owner.as_ref(), &key("unix_owner"))?;
            entry.unix_group = account(&src, h.unix_group.as_ref(), &key("unix_group"))?;
            tls_keys(&src, &h, &mut entry, &key)?;
            entry.config_json = config_json;
            entry.plugin_location = Some(src.location(&h.plugin.span()));
            entry.framing_location = h.framing.as_ref().map(|f| src.location(&f.span()));
            entry.config_keys = config_keys.next().unwrap_or_default();
            handlers.push(entry);
        }

        let log = match raw.log {
            Some(l) => log_config(&src, l.into_inner())?,
            None => LogConfig::default(),
        };

        Ok(Config {
            path: file.map(Path::to_path_buf),
            runtime,
            handlers,
            log,
        })
    }
}

/// For a relative path in a message: the directory it is resolved against.
fn relative_hint(p: &Path) -> String {
    if p.is_relative() {
        format!(
            " (a relative path, resolved against the working directory {})",
            crate::plugin::working_dir()
        )
    } else {
        String::new()
    }
}

/// What makes `path` unusable as the `pid_file`, which the `loopd` binary
/// writes only once it listens: a directory (or anything else that is not
/// a regular file: writing a FIFO blocks), or a file whose directory does
/// not exist. Checked when the file is read, so that `loopd check` finds
/// it and a start fails before it binds. What only the write can tell
/// (permissions: loopd may start as another user than `loopd check`) is
/// left to it.
fn pid_file_problem(path: &Path) -> Option<String> {
    new_file_problem(path, "write", "loopd.pid", true)
}

/// What makes `path` unusable as a file loopd makes or appends to (the
/// `pid_file`, the `access_log`): a name ending in `/`, a directory, a
/// directory of it that does not exist or is not one, and, with
/// `regular_only`, anything but a regular file (the access log may be a
/// device such as /dev/stdout). `verb` is what the message says loopd
/// cannot do; `example` names a file for the hint.
fn new_file_problem(path: &Path, verb: &str, example: &str, regular_only: bool) -> Option<String> {
    let shown = path.display();
    if path.as_os_str().to_string_lossy().ends_with('/') {
        return Some(format!(
            "{shown} ends in `/`, which names a directory: give the path of a file"
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Some(format!(
                "{shown} is a directory: give the path of a file in it, e.g. \"{}\"",
                path.join(example).display()
            ))
        }
        Ok(m) if regular_only && !m.is_file() => {
            let kind = crate::sys::file_kind(m.file_type());
            return Some(format!("{shown} is {kind}, not a regular file"));
        }
        Ok(_) => return None,
        Err(_) => {}
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Some(format!(
            "cannot {verb} {shown}: {} is not a directory",
            dir.display()
        )),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Some(format!(
                "cannot {verb} {shown}: its directory {} does not exist",
                dir.display()
            ))
        }
        _ => None,
    }
}

/// A user or group key: not empty, no NUL, not the id -1; looked up when
/// the runtime is built.
fn account(
    src: &Source<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
) -> Result<Option<Account>, Error> {
    let Some(v) = value else { return Ok(None) };
    let name = v.get_ref();
    if name.is_empty() || name.contains('\0') {
        return Err(src.error(
            Some(v.span()),
            key,
            "must be a user or group name, or a numeric id",
        ));
    }
    if let Some(why) = crate::privileges::reserved_id(name) {
        return Err(src.error(Some(v.span()), key, why));
    }
    Ok(Some(Account {
        name: name.clone(),
        location: Some(src.location(&v.span())),
    }))
}

/// The `[log]` table, checked.
fn log_config(src: &Source<'_>, raw: RawLog) -> Result<LogConfig, Error> {
    let mut log = LogConfig::default();
    if let Some(v) = &raw.max_queued {
        if *v.get_ref() == 0 {
            return Err(src.error(Some(v.span()), "log.max_queued", "must be greater than 0"));
        }
        log.max_queued = to_usize(*v.get_ref());
    }
    if let Some(p) = &raw.access_log {
        if p.get_ref().is_empty() {
            return Err(src.error(Some(p.span()), "log.access_log", "is empty"));
        }
        let path = Path::new(p.get_ref());
        if let Some(why) = new_file_problem(path, "open", "access.log", false) {
            return Err(src.error(Some(p.span()), "log.access_log", why));
        }
        log.access_log = Some(path.to_path_buf());
        log.access_log_location = Some(src.location(&p.span()));
    } else {
        let stray = [
            ("log.access_log_buffer", raw.access_log_buffer.as_ref()),
            ("log.access_log_flush_ms", raw.access_log_flush_ms.as_ref()),
        ];
        if let Some((k, Some(v))) = stray.into_iter().find(|(_, v)| v.is_some()) {
            return Err(src.error(
                Some(v.span()),
                k,
                "only applies with log.access_log (the access log file), which is not set",
            ));
        }
    }
    if let Some(v) = &raw.access_log_buffer {
        log.access_log_buffer = to_usize(*v.get_ref());
    }
    if let Some(v) = &raw.access_log_flush_ms {
        if *v.get_ref() == 0 {
            return Err(src.error(
                Some(v.span()),
                "log.access_log_flush_ms",
                "must be greater than 0",
            ));
        }
        log.access_log_flush = Duration::from_millis(*v.get_ref());
    }
    if log.access_log_buffer > log.max_queued {
        let (span, key) = match (&raw.access_log_buffer, &raw.max_queued) {
            (Some(b), _) => (b.span(), "log.access_log_buffer"),
            (None, Some(q)) => (q.span(), "log.max_queued"),
            (None, None) => unreachable!("the defaults are consistent"),
        };
        return Err(src.error(
            Some(span),
            key,
            format!(
                "access_log_buffer ({}) must not exceed max_queued ({}): a buffer that cannot fill is never written",
                log.access_log_buffer, log.max_queued
            ),
        ));
    }
    Ok(log)
}

/// A config value as a `usize` (saturating where `usize` is 32 bits: the
/// limit checks then refuse it as too large).
fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Reads a config file: a regular file of at most `limit` bytes, in UTF-8
/// ([`crate::sys::read_regular_file`]).
fn read_config_file(path: &Path, limit: u64) -> Result<String, String> {
    let bytes = crate::sys::read_regular_file(path, limit, "a config file")?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        format!("not UTF-8 text (an invalid byte at offset {at})")
    })
}

/// Where the keys of each handler's `config` table are written, by
/// handler index.
fn all_config_keys(src: &Source<'_>, doc: &DeTable<'_>) -> Vec<ConfigKeys> {
    let Some(DeValue::Array(handlers)) = doc.get("handler").map(Spanned::get_ref) else {
        return Vec::new();
    };
    let at = |span: Range<usize>| {
        let l = src.location(&span);
        (to_u32(l.line), to_u32(l.column))
    };
    let mut all = Vec::with_capacity(handlers.len());
    for (index, handler) in handlers.iter().enumerate() {
        let found = match handler.get_ref() {
            DeValue::Table(t) => t.get_key_value("config"),
            _ => None,
        };
        let Some((key, value)) = found else {
            all.push(ConfigKeys::default());
            continue;
        };
        let mut keys = ConfigKeys {
            file: src.file.map(Path::to_path_buf),
            table: format!("handler[{index}].config"),
            at: at(key.span()),
            keys: Vec::new(),
        };
        let mut stack: Vec<(String, &DeValue<'_>)> = vec![(String::new(), value.get_ref())];
        while let Some((path, value)) = stack.pop() {
            let children: Vec<(String, Range<usize>, &DeValue<'_>)> = match value {
                DeValue::Table(t) => t
                    .iter()
                    .map(|(k, v)| {
                        let p = if path.is_empty() {
                            k.get_ref().to_string()
                        } else {
                            format!("{path}.{}", k.get_ref())
                        };
                        (p, k.span(), v.get_ref())
                    })
                    .collect(),
                DeValue::Array(a) => a
                    .iter()
                    .enumerate()
                    .map(|(j, v)| (format!("{path}[{j}]"), v.span(), v.get_ref()))
                    .collect(),
                _ => Vec::new(),
            };
            for (p, span, v) in children {
                let (line, column) = at(span);
                keys.keys.push((p.clone().into_boxed_str(), line, column));
                if matches!(v, DeValue::Table(_) | DeValue::Array(_)) {
                    stack.push((p, v));
                }
            }
        }
        // In the file's order (a table's keys come sorted by name): the
        // first key a message could mean is the first one written.
        keys.keys.sort_by_key(|k| (k.1, k.2));
        keys.keys.shrink_to_fit();
        all.push(keys);
    }
    all
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
        // TLS is TCP underneath: the same port either way.
        ListenAddr::Tls(a) => ListenAddr::Tcp(*a),
        other => other.clone(),
    }
}

/// The keys of one table (`[runtime]` or a `[[handler]]`) that set limits,
/// for pointing at the one a [`LimitError`] is about.
struct LimitKeys<'a> {
    /// `runtime.` or `handler[N].`.
    prefix: &'a str,
    max_frame: Option<&'a Spanned<u64>>,
    high: Option<&'a Spanned<u64>>,
    low: Option<&'a Spanned<u64>>,
    /// Where to point when none of the keys is in the table.
    fallback: Option<Range<usize>>,
}

/// A [`LimitError`] at the key that is in the file. For the watermarks,
/// that is the low one unless only the high one is written, and the
/// message says which of the two values is a default.
fn limit_error(src: &Source<'_>, keys: &LimitKeys<'_>, e: &LimitError) -> Error {
    let prefix = keys.prefix;
    match e {
        LimitError::Watermarks { high, low } => {
            let default = |set: bool| if set { "" } else { ", the default" };
            match (keys.high, keys.low) {
                (Some(h), None) => src.error(
                    Some(h.span()),
                    &format!("{prefix}output_high_watermark"),
                    format!(
                        "must be above output_low_watermark ({high} <= {low}{})",
                        default(false)
                    ),
                ),
                (h, l) => {
                    let reason = e.reason();
                    let reason = match reason.strip_suffix(')') {
                        Some(r) => format!("{r}{})", default(h.is_some())),
                        None => reason,
                    };
                    src.error(
                        l.or(h).map(|s| s.span()).or(keys.fallback.clone()),
                        &format!("{prefix}{}", e.key()),
                        reason,
                    )
                }
            }
        }
        _ => src.error(
            keys.max_frame.map(|s| s.span()).or(keys.fallback.clone()),
            &format!("{prefix}{}", e.key()),
            e.reason(),
        ),
    }
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
    fn limits_have_one_rule_each() {
        let ok = RuntimeConfig::default().limits();
        assert_eq!(ok.validate(), Ok(()));
        let max = Limits {
            max_frame: Limits::MAX_FRAME,
            ..ok
        };
        assert_eq!(max.validate(), Ok(()));
        for n in [0, Limits::MAX_FRAME + 1] {
            let e = Limits { max_frame: n, ..ok }.validate().unwrap_err();
            assert_eq!(e, LimitError::MaxFrame(n));
            assert_eq!(e.key(), "max_frame");
            assert_eq!(
                e.to_string(),
                format!("max_frame: must be between 1 and 1073741824 bytes, not {n}")
            );
        }
        for (high, low) in [(10, 10), (10, 11), (0, 0)] {
            let e = Limits {
                output_high_watermark: high,
                output_low_watermark: low,
                ..ok
            }
            .validate()
            .unwrap_err();
            assert_eq!(e.key(), "output_low_watermark");
            assert_eq!(
                e.to_string(),
                format!(
                    "output_low_watermark: must be below output_high_watermark ({low} >= {high})"
                )
            );
        }
        let one = Limits {
            output_high_watermark: 1,
            output_low_watermark: 0,
            ..ok
        };
        assert_eq!(one.validate(), Ok(()));
    }

    #[test]
    fn a_handler_inherits_the_runtime_limits_it_does_not_set() {
        let c = Config::parse(
            "[runtime]\nmax_frame = 100\noutput_high_watermark = 1000\noutput_low_watermark = 100\n[[handler]]\nname = \"a\"\nplugin = \"echo\"\noutput_low_watermark = 10\n",
            None,
        )
        .unwrap();
        assert_eq!(
            c.handlers[0].limits(&c.runtime),
            Limits {
                max_frame: 100,
                output_high_watermark: 1000,
                output_low_watermark: 10
            }
        );
    }

    #[test]
    fn framing_kinds_and_their_abi_values() {
        for f in [
            FramingKind::Raw,
            FramingKind::Line,
            FramingKind::LengthPrefixed,
        ] {
            assert_eq!(FramingKind::try_from(u32::from(f)), Ok(f));
        }
        assert_eq!(u32::from(FramingKind::Line), abi::LOOPD_FRAMING_LINE);
        assert_eq!(
            FramingKind::try_from(abi::LOOPD_FRAMING_DEFAULT),
            Err(abi::LOOPD_FRAMING_DEFAULT)
        );
        assert_eq!(FramingKind::try_from(77), Err(77));
    }

    #[test]
    fn plugin_names_and_paths() {
        assert_eq!(PluginRef::parse("echo"), PluginRef::Name("echo".into()));
        assert_eq!(
            PluginRef::parse("udp-broadcast"),
            PluginRef::Name("udp-broadcast".into())
        );
        for path in ["./echo", "libx.so", "/opt/x", "a/b"] {
            assert_eq!(PluginRef::parse(path), PluginRef::Path(path.into()));
        }
        let native = format!("libx{}", std::env::consts::DLL_SUFFIX);
        assert_eq!(PluginRef::parse(&native), PluginRef::Path(native.into()));
    }

    #[test]
    fn the_name_rule() {
        for ok in ["echo", "a-b_c.d", "X9"] {
            assert_eq!(check_name(ok), Ok(()));
        }
        for bad in ["", "a b", "a/b", "é", "a\0"] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("is not a valid name"), "{e}");
        }
    }

    #[test]
    fn unix_paths_are_limited_by_the_platform_sun_path() {
        #[cfg(target_os = "linux")]
        assert_eq!(crate::sys::UNIX_PATH_MAX, 108);
        #[cfg(any(
            target_vendor = "apple",
            target_os = "freebsd",
            target_os = "openbsd",
            target_os = "netbsd",
            target_os = "dragonfly"
        ))]
        assert_eq!(crate::sys::UNIX_PATH_MAX, 104);
        let max = crate::sys::UNIX_PATH_MAX;
        let fits = format!("unix:///{}", "x".repeat(max - 2));
        assert!(fits.parse::<ListenAddr>().is_ok(), "{max}");
        let long = format!("unix:///{}", "x".repeat(max - 1));
        let e = long.parse::<ListenAddr>().unwrap_err();
        assert!(
            e.contains(&format!("must be shorter than {max} bytes")),
            "{e}"
        );
    }

    #[test]
    fn listeners_refuse_what_cannot_be_bound_and_connects_take_mapped_addresses() {
        let e = ListenAddr::parse_listener("udp://[::ffff:192.0.2.1]:53").unwrap_err();
        assert!(
            e.ends_with("write the IPv4 address: `udp://192.0.2.1:53`"),
            "{e}"
        );
        // An outbound connect from an IPv6 socket reaches a mapped address.
        assert!("tcp://[::ffff:127.0.0.1]:7".parse::<ListenAddr>().is_ok());
        for ok in ["tcp://[::1]:7", "tls://[::]:7", "udp://127.0.0.1:7"] {
            assert_eq!(ListenAddr::parse_listener(ok), ok.parse(), "{ok}");
        }
        for slash in ["unix:///tmp/x.sock/", "unix:///", "unix://dir/"] {
            let e = slash.parse::<ListenAddr>().unwrap_err();
            assert!(e.contains("cannot end in `/`"), "{slash}: {e}");
        }
    }

    /// A config whose handler has a `[handler.config]` table.
    const WITH_TABLE: &str = r#"[[handler]]
name = "a"
plugin = "echo"

[[handler]]
name = "web"
plugin = "http"
[handler.config]
root = "www"
rot = "typo"
broadcast_to = ["127.0.0.1:1", "127.0.0.1:2"]
[handler.config.types]
html = "text/html"
[handler.config.nested]
inner_key = 5
html = 1
"#;

    fn locate(message: &str) -> Option<(String, usize, usize)> {
        let c = Config::parse(WITH_TABLE, Some(Path::new("t.toml"))).unwrap();
        assert!(c.handlers[0].config_keys.is_empty());
        assert!(c.handlers[0].locate_config_error(message).is_none());
        c.handlers[1].locate_config_error(message).map(|(key, at)| {
            assert_eq!(at.file.as_deref(), Some(Path::new("t.toml")));
            (key, at.line, at.column)
        })
    }

    #[test]
    fn handler_config_errors_point_at_the_key() {
        let at = |key: &str, line, column| Some((key.to_string(), line, column));
        assert_eq!(
            locate("invalid config: unknown field `rot`, expected one of `root`, `index`"),
            at("handler[1].config.rot", 10, 1)
        );
        assert_eq!(
            locate("`root` is empty"),
            at("handler[1].config.root", 9, 1)
        );
        assert_eq!(
            locate("root www: No such file or directory"),
            at("handler[1].config.root", 9, 1)
        );
        assert_eq!(
            locate("broadcast_to[1]: `127.0.0.1:2` is listed twice"),
            at("handler[1].config.broadcast_to[1]", 11, 32)
        );
        assert_eq!(
            locate("`types.html`: \"x\" is not a content type"),
            at("handler[1].config.types.html", 13, 1)
        );
        // serde names a nested struct's field without its table.
        assert_eq!(
            locate("invalid config: unknown field `inner_key`, expected `x`"),
            at("handler[1].config.nested.inner_key", 15, 1)
        );
        // The first one written, when two nested tables have the field.
        assert_eq!(
            locate("invalid config: unknown field `html`"),
            at("handler[1].config.types.html", 13, 1)
        );
        // A field that is not in the table: the table.
        assert_eq!(
            locate("invalid config: missing field `index`"),
            at("handler[1].config", 8, 10)
        );
        assert_eq!(locate("the plugin's own trouble"), None);
        assert_eq!(
            locate("invalid config: invalid type: string \"x\", expected u64"),
            None
        );
    }

    #[test]
    fn an_inline_config_table_has_its_keys_too() {
        let c = Config::parse(
            "[[handler]]\nname = \"a\"\nplugin = \"x\"\nconfig = { root = \"w\", max = 3 }\n",
            None,
        )
        .unwrap();
        let (key, at) = c.handlers[0]
            .locate_config_error("unknown field `max`")
            .unwrap();
        assert_eq!((at.line, at.column), (4, 24));
        assert_eq!(key, "handler[0].config.max");
    }

    fn read_err(path: &Path) -> String {
        match Config::from_file(path) {
            Ok(_) => panic!("{} was read", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_files_that_are_not_regular_files_are_refused_unread() {
        let e = read_err(Path::new("/dev/zero"));
        assert_eq!(
            e,
            "/dev/zero: cannot read config: it is a character device, not a regular file"
        );
        let dir = std::env::temp_dir().join(format!("loopd-config-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let e = read_err(&dir);
        assert!(
            e.ends_with("cannot read config: it is a directory, not a regular file"),
            "{e}"
        );
        // A FIFO without a writer: opening it for reading would block.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_err(&fifo);
        assert!(
            e.ends_with("it is a FIFO (named pipe), not a regular file"),
            "{e}"
        );
        let sock = dir.join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = read_err(&sock);
        assert!(e.ends_with("it is a socket, not a regular file"), "{e}");
        // A symlink to a regular file is read.
        let real = dir.join("real.toml");
        std::fs::write(&real, "[runtime]\nmax_connections = 7\n").unwrap();
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(Config::from_file(&link).unwrap().runtime.max_connections, 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_files_over_the_limit_are_refused() {
        let dir = std::env::temp_dir().join(format!("loopd-config-size-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("big.toml");
        let f = std::fs::File::create(&path).unwrap();
        // Sparse: no disk space used.
        f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        drop(f);
        let e = read_err(&path);
        assert!(
            e.ends_with("cannot read config: it is 4194305 bytes, more than the 4194304 bytes (4 MiB) a config file may have"),
            "{e}"
        );
        // The read itself stops at limit + 1, whatever fstat said.
        std::fs::write(&path, "# comment\n".repeat(20)).unwrap();
        let e = read_config_file(&path, 100).unwrap_err();
        assert!(
            e.starts_with("it is 200 bytes, more than the 100 bytes"),
            "{e}"
        );
        let e = read_config_file(&path, 199).unwrap_err();
        assert!(e.starts_with("it is 200 bytes"), "{e}");
        assert_eq!(read_config_file(&path, 200).unwrap().len(), 200);
        std::fs::write(&path, b"a = \"\xff\"\n").unwrap();
        let e = read_err(&path);
        assert!(
            e.ends_with("not UTF-8 text (an invalid byte at offset 5)"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
    fn unix_socket_keys() {
        let unix = "[[handler]]\nname = \"a\"\nplugin = \"x\"\nlisten = [\"unix:///tmp/a.sock\"]\n";
        let c = Config::parse(
            &format!("{unix}unix_mode = \"0600\"\nunix_owner = \"www\"\nunix_group = \"33\"\n"),
            None,
        )
        .unwrap();
        let h = &c.handlers[0];
        assert_eq!(h.unix_mode, Some(0o600));
        assert_eq!(h.unix_owner.as_ref().unwrap().name, "www");
        assert_eq!(
            h.unix_owner
                .as_ref()
                .unwrap()
                .location
                .as_ref()
                .unwrap()
                .line,
            6
        );
        assert_eq!(h.unix_group.as_ref().unwrap().name, "33");
        let c = Config::parse(unix, None).unwrap();
        assert_eq!(
            (c.handlers[0].unix_mode, &c.handlers[0].unix_owner),
            (None, &None)
        );
        for bad in ["\"660x\"", "\"01777\"", "\"\"", "\"9\""] {
            let e = err(&format!("{unix}unix_mode = {bad}\n"));
            assert!(
                e.contains("t.toml:5:13: handler[0].unix_mode: `"),
                "{bad}: {e}"
            );
            assert!(e.contains("is not a file mode"), "{e}");
        }
        let e = err(&format!("{unix}unix_mode = 420\n"));
        assert!(
            e.contains("handler[0].unix_mode: invalid type: integer"),
            "{e}"
        );
        let e = err("[[handler]]\nname = \"a\"\nplugin = \"x\"\nlisten = [\"tcp://127.0.0.1:0\"]\nunix_group = \"g\"\n");
        assert!(
            e.contains("t.toml:5:14: handler[0].unix_group: only applies to unix:// listeners"),
            "{e}"
        );
        let e = err(&format!("{unix}unix_owner = \"\"\n"));
        assert!(
            e.contains("handler[0].unix_owner: must be a user or group name"),
            "{e}"
        );
        assert_eq!(parse_unix_mode("0o644"), Ok(0o644));
        assert_eq!(parse_unix_mode("777"), Ok(0o777));
    }

    #[test]
    fn user_and_group_keys() {
        let c = Config::parse("[runtime]\nuser = \"nobody\"\ngroup = \"nogroup\"\n", None).unwrap();
        assert_eq!(c.runtime.user.unwrap().name, "nobody");
        assert_eq!(c.runtime.group.unwrap().name, "nogroup");
        let e = err("[runtime]\ngroup = \"nogroup\"\n");
        assert!(
            e.contains("t.toml:2:9: runtime.group: needs runtime.user"),
            "{e}"
        );
        let e = err("[runtime]\nuser = \"\"\n");
        assert!(
            e.contains("runtime.user: must be a user or group name"),
            "{e}"
        );
    }

    #[test]
    fn log_table() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.log, LogConfig::default());
        let c = Config::parse(
            "[log]\nmax_queued = 4096\naccess_log = \"/tmp/a.log\"\naccess_log_buffer = 0\naccess_log_flush_ms = 50\n",
            None,
        )
        .unwrap();
        assert_eq!(c.log.max_queued, 4096);
        assert_eq!(c.log.access_log.as_deref(), Some(Path::new("/tmp/a.log")));
        assert_eq!(c.log.access_log_buffer, 0);
        assert_eq!(c.log.access_log_flush, Duration::from_millis(50));
        let e = err("[log]\nmax_queued = 0\n");
        assert!(
            e.contains("t.toml:2:14: log.max_queued: must be greater than 0"),
            "{e}"
        );
        let e = err("[log]\naccess_log_buffer = 10\n");
        assert!(
            e.contains("log.access_log_buffer: only applies with log.access_log"),
            "{e}"
        );
        let e = err("[log]\naccess_log = \"a\"\nmax_queued = 1000\n");
        assert!(
            e.contains("t.toml:3:14: log.max_queued: access_log_buffer (65536) must not exceed max_queued (1000)"),
            "{e}"
        );
        let e = err("[log]\naccess_log = \"a\"\naccess_log_flush_ms = 0\n");
        assert!(
            e.contains("log.access_log_flush_ms: must be greater than 0"),
            "{e}"
        );
        let e = err("[log]\naccess = \"a\"\n");
        assert!(e.contains("log.access: unknown field `access`"), "{e}");
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
