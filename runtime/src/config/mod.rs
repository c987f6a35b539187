//! The config: typed [`Config`], [`RuntimeConfig`] and [`HandlerConfig`]
//! with their one set of rules ([`Limits`], [`check_name`],
//! [`PluginRef::parse`], [`ListenAddr`]); reading a TOML file into them,
//! with errors that name the file, the line and the key, is `file.rs`
//! (the `config-file` feature, on by default).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use loopd_handler_api::abi;

#[cfg(feature = "config-file")]
mod file;

/// The largest config file loopd reads (4 MiB); a larger one, or anything
/// that is not a regular file (`/dev/zero`, a FIFO, a directory), is refused
/// before it is read.
///
/// Parsing is in memory, and the parsed document takes up to about 60
/// times the file's size (a file of short keys with arrays of small
/// integers, the worst case measured: 16 MiB of it took 950 MiB), so the
/// limit bounds what a mistaken path can cost to about 250 MiB. Real
/// configs are far below it: the shipped one is 2 KiB, and one with 10,000
/// `[[handler]]` entries of ten listeners each is 3.2 MB (parsed in 56 MiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The limits a handler instance runs with, as the config file's
/// `max_frame`, `output_high_watermark` and `output_low_watermark` keys
/// (in `[runtime]` as defaults, in `[[handler]]` for one instance) and
/// [`HandlerSpec`](crate::HandlerSpec) set them. [`Limits::validate`] is the
/// one place their rules are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, in bytes (1 to [`Limits::MAX_FRAME`]).
    pub max_frame: usize,
    /// Output queue size at which `send` refuses with AGAIN and input pauses.
    pub output_high_watermark: usize,
    /// Output queue size below which `on_writable` fires and input resumes;
    /// below `output_high_watermark`.
    pub output_low_watermark: usize,
}

impl Limits {
    /// The largest `max_frame` (1 GiB).
    pub const MAX_FRAME: usize = 1 << 30;

    /// Checks the rules: `max_frame` between 1 and [`Limits::MAX_FRAME`],
    /// `output_low_watermark` below `output_high_watermark` (which is then
    /// at least 1).
    ///
    /// # Errors
    /// The first rule broken, naming its key.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.max_frame == 0 || self.max_frame > Limits::MAX_FRAME {
            return Err(LimitError::MaxFrame(self.max_frame));
        }
        if self.output_low_watermark >= self.output_high_watermark {
            return Err(LimitError::Watermarks {
                high: self.output_high_watermark,
                low: self.output_low_watermark,
            });
        }
        Ok(())
    }
}

/// A rule of [`Limits`] that a value breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// `max_frame` (the value) is 0 or above [`Limits::MAX_FRAME`].
    MaxFrame(usize),
    /// `output_low_watermark` is not below `output_high_watermark`.
    Watermarks {
        /// The high watermark.
        high: usize,
        /// The low watermark.
        low: usize,
    },
}

impl LimitError {
    /// The key the error is about: `max_frame` or `output_low_watermark`.
    pub fn key(&self) -> &'static str {
        match self {
            LimitError::MaxFrame(_) => "max_frame",
            LimitError::Watermarks { .. } => "output_low_watermark",
        }
    }

    /// What is wrong, without the key: e.g. `must be between 1 and
    /// 1073741824 bytes, not 0`.
    pub fn reason(&self) -> String {
        match self {
            LimitError::MaxFrame(n) => {
                format!("must be between 1 and {} bytes, not {n}", Limits::MAX_FRAME)
            }
            LimitError::Watermarks { high, low } => {
                format!("must be below output_high_watermark ({low} >= {high})")
            }
        }
    }
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key(), self.reason())
    }
}

impl std::error::Error for LimitError {}

/// The rule for instance names (the config's `name` key and
/// [`HandlerSpec`](crate::HandlerSpec) names): letters, digits, `-`, `_`
/// and `.`, not empty. They appear in log targets and metrics.
///
/// # Errors
/// A message that quotes the name and says what is allowed.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name (use letters, digits, `-`, `_`, `.`)"
        ))
    }
}

/// A parsed, validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (`None` when built in code or from a string).
    pub path: Option<PathBuf>,
    /// The `[runtime]` table.
    pub runtime: RuntimeConfig,
    /// The `[[handler]]` entries, in file order.
    pub handlers: Vec<HandlerConfig>,
    /// The `[log]` table: where the `loopd` binary writes its log. The
    /// runtime itself only logs through the `log` crate; a program
    /// embedding loopd installs its own logger and may read this table.
    pub log: LogConfig,
}

/// How many CPUs this process may run on (its affinity mask), for
/// `workers = "auto"`.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// A config with the default `[runtime]` and no handlers (what an empty
    /// file gives); add handlers in code.
    pub fn empty() -> Config {
        Config {
            path: None,
            runtime: RuntimeConfig::default(),
            handlers: Vec::new(),
            log: LogConfig::default(),
        }
    }
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
    /// How long a TLS handshake may take before the connection is cut
    /// (`tls_handshake_timeout_ms`, default 10 s).
    pub tls_handshake_timeout: Duration,
    /// Default largest frame (see [`HandlerConfig::max_frame`]).
    pub max_frame: usize,
    /// Default output queue size at which `send` refuses with AGAIN and input pauses.
    pub output_high_watermark: usize,
    /// Default output queue size below which `on_writable` fires and input resumes.
    pub output_low_watermark: usize,
    /// Where plugins given by name are looked up first (default: next to the executable).
    pub plugin_dir: Option<PathBuf>,
    /// Most bytes of unfinished frames all connections together may hold
    /// (`max_buffered_input`). Past it, the connections holding the most
    /// are closed (with a warning) until the total is below it again.
    pub max_buffered_input: usize,
    /// Default most connections one peer address may have open to one
    /// handler instance (`max_connections_per_peer`; 0: no limit).
    pub max_connections_per_peer: usize,
    /// After a reload replaced or removed a handler, how long its old
    /// instance may keep serving its connections before they are closed
    /// (`drain_timeout_ms`).
    pub drain_timeout: Duration,
    /// Where the `loopd` binary writes its process id while it runs
    /// (`pid_file`), for `loopd reload` and service managers.
    pub pid_file: Option<PathBuf>,
    /// How many worker threads run a loop each (`workers`: a number, or
    /// `"auto"` for one per CPU the process may run on; default 1).
    pub workers: usize,
    /// Whether `workers` came from `"auto"` (a binary upgrade then keeps
    /// the number the old process ran, whatever the CPUs now).
    pub workers_auto: bool,
    /// The user to run as once every listener is open (`user`; loopd must
    /// start as root): its uid, its primary group unless
    /// [`RuntimeConfig::group`] says otherwise, and its supplementary groups.
    pub user: Option<Account>,
    /// The group to run as, with [`RuntimeConfig::user`] (`group`).
    pub group: Option<Account>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_connections: 10_000,
            shutdown_timeout: Duration::from_millis(5_000),
            close_timeout: Duration::from_millis(5_000),
            tls_handshake_timeout: Duration::from_millis(10_000),
            max_frame: 1 << 20,
            output_high_watermark: 256 << 10,
            output_low_watermark: 64 << 10,
            plugin_dir: None,
            max_buffered_input: 128 << 20,
            max_connections_per_peer: 0,
            drain_timeout: Duration::from_secs(300),
            pid_file: None,
            workers: 1,
            workers_auto: false,
            user: None,
            group: None,
        }
    }
}

impl RuntimeConfig {
    /// The default limits of handler instances.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame,
            output_high_watermark: self.output_high_watermark,
            output_low_watermark: self.output_low_watermark,
        }
    }
}

/// A user or group the config names: a name (`www-data`) or a numeric id
/// (`33`), looked up when the runtime is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The name or number, as written.
    pub name: String,
    /// Where it is written, for errors (`None` when set in code).
    pub location: Option<Location>,
}

impl Account {
    /// An account named in code.
    pub fn new(name: impl Into<String>) -> Account {
        Account {
            name: name.into(),
            location: None,
        }
    }
}

/// The `[log]` table (read by the `loopd` binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Most bytes of log text waiting to be written, for stderr and for the
    /// access log file each (`max_queued`); lines past it are dropped and
    /// counted, and the count is logged once there is room again.
    pub max_queued: usize,
    /// The access log file (`access_log`): lines of target
    /// `loopd::access` are appended to it instead of going to stderr.
    pub access_log: Option<PathBuf>,
    /// Where the config file writes `access_log`, for errors opening it.
    pub access_log_location: Option<Location>,
    /// Bytes of access log collected before a write (`access_log_buffer`;
    /// 0: every line is written at once).
    pub access_log_buffer: usize,
    /// The longest an access log line waits in the buffer
    /// (`access_log_flush_ms`).
    pub access_log_flush: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_queued: 1 << 20,
            access_log: None,
            access_log_location: None,
            access_log_buffer: 64 << 10,
            access_log_flush: Duration::from_secs(1),
        }
    }
}

/// The largest `unix_mode`: permission bits only (no setuid, setgid or
/// sticky bit).
pub const MAX_UNIX_MODE: u32 = 0o777;

/// Reads a `unix_mode` value: octal digits (`"0660"`, `"660"`), at most
/// [`MAX_UNIX_MODE`].
///
/// # Errors
/// A message saying what a mode looks like.
pub fn parse_unix_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = (!digits.is_empty() && digits.len() <= 4)
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .filter(|m| *m <= MAX_UNIX_MODE);
    mode.ok_or_else(|| {
        format!("`{text}` is not a file mode: write permission bits in octal, e.g. \"0660\"")
    })
}

/// Which library a handler comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// A bare name such as `echo`: `libloopd_echo.so` (`libloopd_echo.dylib`
    /// on macOS) in `plugin_dir` or next to the executable.
    Name(String),
    /// A path to a shared library.
    Path(PathBuf),
}

impl PluginRef {
    /// Reads `text` as the config's `plugin` key does: anything containing
    /// `/` or ending in `.so` (or the platform's library suffix, e.g.
    /// `.dylib`) is a path, anything else a name.
    pub fn parse(text: &str) -> PluginRef {
        if text.contains('/')
            || text.ends_with(".so")
            || text.ends_with(std::env::consts::DLL_SUFFIX)
        {
            PluginRef::Path(PathBuf::from(text))
        } else {
            PluginRef::Name(text.to_string())
        }
    }
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
    /// `tls://127.0.0.1:7443`: TCP carrying TLS, with the handler entry's
    /// `tls_cert` and `tls_key` (the `tls` feature).
    Tls(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::Udp(a) => write!(f, "udp://{a}"),
            ListenAddr::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

impl ListenAddr {
    /// Parses a URL to listen on: as [`FromStr`](std::str::FromStr) does,
    /// and refuses what no listener can bind: an IPv4-mapped IPv6 address
    /// (`tcp://[::ffff:127.0.0.1]:7000`), which loopd's IPv6 listeners,
    /// IPv6-only (`IPV6_V6ONLY`), cannot have (an outbound connection to
    /// one is fine, so [`FromStr`](std::str::FromStr) takes it).
    ///
    /// # Errors
    /// What is wrong; for a mapped address, the IPv4 spelling to use.
    pub fn parse_listener(s: &str) -> Result<ListenAddr, String> {
        let addr: ListenAddr = s.parse()?;
        if let ListenAddr::Tcp(SocketAddr::V6(a))
        | ListenAddr::Udp(SocketAddr::V6(a))
        | ListenAddr::Tls(SocketAddr::V6(a)) = &addr
        {
            if let Some(v4) = a.ip().to_ipv4_mapped() {
                let scheme = s.split_once("://").map_or("tcp", |(scheme, _)| scheme);
                return Err(format!(
                    "`{s}`: {} is an IPv4-mapped IPv6 address, which loopd's IPv6 listeners (IPv6-only) cannot bind; write the IPv4 address: `{scheme}://{}`",
                    a.ip(),
                    SocketAddr::new(v4.into(), a.port())
                ));
            }
        }
        Ok(addr)
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
            "tls" => ip(rest).map(ListenAddr::Tls),
            "unix" => {
                if rest.is_empty() {
                    return Err(format!("`{s}`: the unix socket path is empty"));
                }
                if rest.len() >= crate::sys::UNIX_PATH_MAX {
                    return Err(format!(
                        "`{s}`: a unix socket path must be shorter than {} bytes (this system's sun_path)",
                        crate::sys::UNIX_PATH_MAX
                    ));
                }
                if rest.contains('\0') {
                    return Err(format!("`{s}`: the unix socket path contains NUL"));
                }
                if rest.ends_with('/') {
                    return Err(format!(
                        "`{s}`: a unix socket path cannot end in `/` (that names a directory)"
                    ));
                }
                Ok(ListenAddr::Unix(PathBuf::from(rest)))
            }
            other => Err(format!(
                "`{s}`: unknown scheme `{other}` (use tcp, tls, unix or udp)"
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

impl From<FramingKind> for u32 {
    /// The ABI's `LOOPD_FRAMING_*` value.
    fn from(f: FramingKind) -> u32 {
        match f {
            FramingKind::Raw => abi::LOOPD_FRAMING_RAW,
            FramingKind::Line => abi::LOOPD_FRAMING_LINE,
            FramingKind::LengthPrefixed => abi::LOOPD_FRAMING_LENGTH_PREFIXED,
        }
    }
}

impl TryFrom<u32> for FramingKind {
    /// The value, when it is no framing (`LOOPD_FRAMING_DEFAULT`, or unknown).
    type Error = u32;

    /// From the ABI's `LOOPD_FRAMING_*` value; `LOOPD_FRAMING_DEFAULT` (no
    /// preference) is not a framing and is refused like an unknown value.
    fn try_from(raw: u32) -> Result<FramingKind, u32> {
        match raw {
            abi::LOOPD_FRAMING_RAW => Ok(FramingKind::Raw),
            abi::LOOPD_FRAMING_LINE => Ok(FramingKind::Line),
            abi::LOOPD_FRAMING_LENGTH_PREFIXED => Ok(FramingKind::LengthPrefixed),
            other => Err(other),
        }
    }
}

impl FramingKind {
    /// Every framing, in `LOOPD_FRAMING_*` order.
    pub(crate) const ALL: [FramingKind; 3] = [
        FramingKind::Raw,
        FramingKind::Line,
        FramingKind::LengthPrefixed,
    ];

    /// Its spelling in the config file.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FramingKind::Raw => "raw",
            FramingKind::Line => "line",
            FramingKind::LengthPrefixed => "length-prefixed",
        }
    }

    /// Whether a plugin's `framings` (`LOOPD_FRAMING_BIT`s; 0 = any) has it.
    pub(crate) fn is_in(self, framings: u32) -> bool {
        framings == 0 || framings & abi::LOOPD_FRAMING_BIT(self.into()) != 0
    }

    /// The framings of a plugin's `framings`, for messages: `"line"`, or
    /// `"raw" or "line"`.
    pub(crate) fn list(framings: u32) -> String {
        FramingKind::ALL
            .iter()
            .filter(|f| f.is_in(framings))
            .map(|f| format!("\"{}\"", f.name()))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    #[cfg(feature = "config-file")]
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
    /// Most connections of this instance open at once, accepted and
    /// outbound (`max_connections`; `None`: only the runtime's limit).
    pub max_connections: Option<usize>,
    /// Most connections one peer address may have open to this instance
    /// (`max_connections_per_peer`; `None`: the runtime's default; 0: no
    /// limit).
    pub max_connections_per_peer: Option<usize>,
    /// Close a connection that has neither received nor sent anything for
    /// this long (`idle_timeout_ms`; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Set `SO_REUSEADDR` on the handler's UDP sockets (`reuse_address =
    /// true`), letting other sockets bind the same address and share its
    /// datagrams. Off by default: anyone on the machine could then bind
    /// the address and take datagrams meant for loopd.
    pub reuse_address: bool,
    /// The mailbox's bounds for posted messages (`mailbox_messages`,
    /// `mailbox_bytes`; `None`: 4096 messages, 4 MiB).
    pub mailbox_messages: Option<usize>,
    /// See [`HandlerConfig::mailbox_messages`].
    pub mailbox_bytes: Option<usize>,
    /// The `[handler.config]` table as JSON (`{}` when absent).
    pub config_json: String,
    /// The PEM certificate chain (leaf first) served on the handler's
    /// `tls://` listeners (`tls_cert`).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of [`HandlerConfig::tls_cert`] (`tls_key`).
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: the PEM CA certificates a client's certificate must be
    /// signed by (`tls_client_ca`); `None` asks clients for none.
    pub tls_client_ca: Option<PathBuf>,
    /// The PEM CA certificates the handler's outbound `tls://` connections
    /// trust (`tls_ca`); without it, the system's CA certificates.
    pub tls_ca: Option<PathBuf>,
    /// The certificate (PEM chain) and key the handler's outbound `tls://`
    /// connections present to a server that asks (`tls_connect_cert`,
    /// `tls_connect_key`: mutual TLS toward an upstream).
    pub tls_connect: Option<(PathBuf, PathBuf)>,
    /// The ALPN protocols the handler's `tls://` listeners offer, most
    /// preferred first (`tls_alpn`, e.g. `["http/1.1"]`; empty: none);
    /// `None`: those its plugin declares (the http handler: `http/1.1`).
    pub tls_alpn: Option<Vec<String>>,
    /// Further certificates (PEM chain, PEM key) of the handler's `tls://`
    /// listeners, each served to clients that ask (SNI) for a DNS name it
    /// carries (`tls_sni`); the others get `tls_cert`.
    pub tls_sni: Vec<(PathBuf, PathBuf)>,
    /// The mode of the handler's Unix socket files (`unix_mode`; default:
    /// 0660 without the bits the umask clears: never world-accessible).
    pub unix_mode: Option<u32>,
    /// The owner given to the handler's Unix socket files (`unix_owner`).
    pub unix_owner: Option<Account>,
    /// The group given to the handler's Unix socket files (`unix_group`).
    pub unix_group: Option<Account>,
    /// Where the entry's `plugin` key is, for errors about loading it.
    pub plugin_location: Option<Location>,
    /// Where the entry's `framing` key is, for an error about its value.
    pub framing_location: Option<Location>,
    /// Where each of `listen` is written, in the same order (empty for an
    /// entry built in code; shorter when code added listeners), for errors
    /// about a listener: [`HandlerConfig::listen_location`].
    pub listen_locations: Vec<Location>,
    /// Where the `[handler.config]` table and each key in it are written
    /// (empty for an entry built in code), so that an error the handler
    /// reports about its config can point at the key:
    /// [`HandlerConfig::locate_config_error`].
    pub config_keys: ConfigKeys,
}

/// Where the keys of one `[handler.config]` table (and the table itself)
/// are written in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigKeys {
    /// The file, if any.
    file: Option<PathBuf>,
    /// The table as config errors name it: `handler[2].config`.
    table: String,
    /// Line and column of the table's `config` key (`[handler.config]`).
    at: (u32, u32),
    /// Each key relative to the table (`root`, `types.html`,
    /// `broadcast_to[1]`), with the line and column where it (or an array
    /// element's value) starts.
    keys: Vec<(Box<str>, u32, u32)>,
}

impl ConfigKeys {
    /// Whether there is no table.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn location(&self, (line, column): (u32, u32)) -> Location {
        Location {
            file: self.file.clone(),
            line: line as usize,
            column: column as usize,
        }
    }

    /// The dotted key (`handler[2].config.root`) and location of the key
    /// an error message from the handler is about: see
    /// [`HandlerConfig::locate_config_error`].
    pub fn locate(&self, message: &str) -> Option<(String, Location)> {
        if self.is_empty() {
            return None;
        }
        let message = message.strip_prefix("invalid config: ").unwrap_or(message);
        let lead = message
            .split(|c: char| c.is_whitespace() || c == ':' || c == '=' || c == ',')
            .next()
            .unwrap_or("")
            .trim_matches('`');
        let names: Vec<&str> = std::iter::once(lead)
            .chain(message.split('`').skip(1).step_by(2))
            .filter(|n| !n.is_empty())
            .collect();
        let found = |k: &(Box<str>, u32, u32)| {
            Some((format!("{}.{}", self.table, k.0), self.location((k.1, k.2))))
        };
        if let Some(k) = names
            .iter()
            .find_map(|n| self.keys.iter().find(|k| &*k.0 == *n))
        {
            return found(k);
        }
        // A nested struct's serde error names the field only, not its table.
        let leaf = |path: &str| -> String {
            let last = path.rsplit('.').next().unwrap_or(path);
            last.split('[').next().unwrap_or(last).to_string()
        };
        if let Some(k) = names
            .iter()
            .filter(|n| !n.contains('.') && !n.contains('['))
            .find_map(|n| self.keys.iter().find(|k| leaf(&k.0) == *n))
        {
            return found(k);
        }
        // A key that should be there and is not: the table.
        if message.contains("missing field") || message.contains(" is required") {
            return Some((self.table.clone(), self.location(self.at)));
        }
        None
    }
}

impl HandlerConfig {
    /// Where the config file writes listener `addr` of this entry (the
    /// first of equal ones), if it does.
    pub fn listen_location(&self, addr: &ListenAddr) -> Option<&Location> {
        let j = self.listen.iter().position(|a| a == addr)?;
        self.listen_locations.get(j)
    }

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
            max_connections: None,
            max_connections_per_peer: None,
            idle_timeout: None,
            reuse_address: false,
            mailbox_messages: None,
            mailbox_bytes: None,
            unix_mode: None,
            unix_owner: None,
            unix_group: None,
            config_json: "{}".to_string(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_ca: None,
            tls_connect: None,
            tls_alpn: None,
            tls_sni: Vec::new(),
            plugin_location: None,
            framing_location: None,
            listen_locations: Vec::new(),
            config_keys: ConfigKeys::default(),
        }
    }

    /// This instance's limits: its own where set, else the runtime's.
    pub fn limits(&self, runtime: &RuntimeConfig) -> Limits {
        Limits {
            max_frame: self.max_frame.unwrap_or(runtime.max_frame),
            output_high_watermark: self
                .output_high_watermark
                .unwrap_or(runtime.output_high_watermark),
            output_low_watermark: self
                .output_low_watermark
                .unwrap_or(runtime.output_low_watermark),
        }
    }

    /// The key of `[handler.config]` that an error message from the
    /// handler's `create` is about, as far as the message tells: its dotted
    /// name (`handler[2].config.root`) and where it is written. Found from a
    /// key the message names in backticks (`` unknown field `rot` ``,
    /// `` `root` is empty ``) or at its start (`max_line = 0 is out of
    /// range`, `broadcast_to[1]: ...`); a key that is missing (`` missing
    /// field `root` ``, `` `root` is required ``) points at the table.
    /// `None` when the message names no key of the table, or the entry has
    /// no table or was built in code.
    pub fn locate_config_error(&self, message: &str) -> Option<(String, Location)> {
        self.config_keys.locate(message)
    }
}
