//! Handlers added in code: [`HandlerSpec`], what a `[[handler]]` entry says,
//! checked as strictly as the config file is.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use loopd_handler_api::abi;

use crate::config::{check_name, FramingKind, HandlerConfig, ListenAddr, PluginRef, RuntimeConfig};
use crate::error::Error;

/// One handler instance added in code with [`Builder::handler`]: the same
/// facts a `[[handler]]` entry of the config file gives.
///
/// The handler is either a Rust type linked into the program
/// ([`HandlerSpec::linked`]) or a plugin loaded from a shared library
/// ([`HandlerSpec::library`], [`HandlerSpec::plugin`]).
///
/// ```
/// use loopd::config::FramingKind;
/// use loopd::HandlerSpec;
/// # use loopd_handler_api::{Ctx, Handler, NoConfig};
/// # struct Greeter;
/// # impl Handler for Greeter {
/// #     type Config = NoConfig;
/// #     type Conn = ();
/// #     fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> { Ok(Greeter) }
/// # }
///
/// // A Rust type, no shared library involved.
/// let greeter = HandlerSpec::linked::<Greeter>("greeter")
///     .listen("tcp://127.0.0.1:0")
///     .framing(FramingKind::Line)
///     .max_frame(4096);
///
/// // A plugin, loaded as `plugin = "..."` would load it.
/// let upper = HandlerSpec::library("upper", "examples/c-handler/libloopd_upper.so")
///     .listen("unix:///tmp/upper.sock");
/// # let _ = (greeter, upper);
/// ```
///
/// Nothing is checked until [`Builder::build`]: a malformed URL, a bad limit
/// or a config that is not a JSON object is then an [`Error::Config`] that
/// names the handler and the value.
///
/// [`Builder::handler`]: crate::Builder::handler
/// [`Builder::build`]: crate::Builder::build
#[derive(Debug, Clone)]
pub struct HandlerSpec {
    name: String,
    source: Source,
    listen: Vec<String>,
    framing: Option<FramingKind>,
    max_frame: Option<usize>,
    watermarks: Option<(usize, usize)>,
    /// The `[handler.config]` table as JSON, or why it could not be made.
    config_json: Result<String, String>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    idle_timeout: Option<std::time::Duration>,
    reuse_address: bool,
    mailbox: Option<(usize, usize)>,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    tls_client_ca: Option<std::path::PathBuf>,
    tls_ca: Option<std::path::PathBuf>,
    tls_connect: Option<(std::path::PathBuf, std::path::PathBuf)>,
    tls_alpn: Option<Vec<String>>,
    tls_sni: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Where a handler's hooks come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A Rust type linked into the program.
    Linked(Linked),
    /// A plugin resolved and loaded as the config's `plugin` key would be.
    Plugin(PluginRef),
}

/// Makes a linked handler's instance from a value or closure the program
/// gave (`HandlerSpec::with`, `HandlerSpec::instance`) instead of its
/// `create`: given the host table and the instance's context, returns the
/// instance pointer for the type's vtable.
pub(crate) type Maker = Arc<
    dyn Fn(*const abi::loopd_host_api, *mut abi::loopd_ctx) -> Result<*mut c_void, String>
        + Send
        + Sync,
>;

/// A handler type linked into the program: its vtable and what it declares.
#[derive(Clone)]
pub(crate) struct Linked {
    pub(crate) vtable: abi::loopd_vtable,
    pub(crate) framing: Option<FramingKind>,
    /// The ALPN protocols `H::ALPN` declares.
    pub(crate) alpn: Vec<String>,
    /// `H::FRAMINGS` as `LOOPD_FRAMING_BIT`s (0: any).
    pub(crate) framings: u32,
    /// For `loopd check`-style listings and logs, e.g. `loopd_echo::Echo`.
    pub(crate) type_name: &'static str,
    /// How to make the instance, when not by the type's `create`.
    pub(crate) make: Option<Maker>,
}

impl std::fmt::Debug for Linked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linked")
            .field("type_name", &self.type_name)
            .field("framing", &self.framing)
            .field("made_by_the_program", &self.make.is_some())
            .finish()
    }
}

impl Linked {
    /// The vtable and declared framing of `H`.
    pub(crate) fn of<H: loopd_handler_api::Handler>() -> Linked {
        // LOOPD_FRAMING_DEFAULT (no preference) is no framing.
        let framing = FramingKind::try_from(H::FRAMING.to_raw()).ok();
        Linked {
            vtable: loopd_handler_api::vtable::<H>(),
            framing,
            alpn: H::ALPN
                .to_str()
                .ok()
                .and_then(|list| crate::plugin::parse_alpn(list).ok())
                .unwrap_or_default(),
            framings: loopd_handler_api::framings::<H>(),
            type_name: std::any::type_name::<H>(),
            make: None,
        }
    }
}

impl HandlerSpec {
    fn new(name: impl Into<String>, source: Source) -> HandlerSpec {
        HandlerSpec {
            name: name.into(),
            source,
            listen: Vec::new(),
            framing: None,
            max_frame: None,
            watermarks: None,
            config_json: Ok("{}".to_string()),
            max_connections: None,
            max_connections_per_peer: None,
            idle_timeout: None,
            tls: None,
            tls_client_ca: None,
            tls_ca: None,
            tls_connect: None,
            tls_alpn: None,
            tls_sni: Vec::new(),
            reuse_address: false,
            mailbox: None,
        }
    }

    /// An instance named `name` of the handler type `H`, linked into this
    /// program: no shared library, the same hooks and the same guarantees
    /// (panics contained, no re-entrancy) as a loaded plugin. The shipped
    /// handler crates are libraries too, e.g. `HandlerSpec::linked::<loopd_echo::Echo>("echo")`.
    pub fn linked<H: loopd_handler_api::Handler>(name: impl Into<String>) -> HandlerSpec {
        HandlerSpec::new(name, Source::Linked(Linked::of::<H>()))
    }

    /// An instance named `name` of the linked type `H`, made by `make`
    /// instead of [`Handler::create`](loopd_handler_api::Handler::create):
    /// the way to hand a linked handler what JSON config cannot carry (a
    /// channel, shared state, a database pool). `make` gets the instance's
    /// [`Ctx`](loopd_handler_api::Ctx) (so it may set timers or post) and
    /// runs when the runtime is built, once per runtime built from this
    /// spec; an `Err` fails the build, as a failing `create` does. The
    /// `[handler.config]` table is not read.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use loopd::{HandlerSpec, Runtime};
    /// use loopd_handler_api::{Ctx, Handler, NoConfig};
    ///
    /// struct Reporter(mpsc::Sender<String>);
    /// impl Handler for Reporter {
    ///     type Config = NoConfig;
    ///     type Conn = ();
    ///     fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
    ///         Err("built by the program".into())
    ///     }
    ///     fn on_message(&mut self, _: &Ctx, msg: &[u8]) {
    ///         let _ = self.0.send(String::from_utf8_lossy(msg).into_owned());
    ///     }
    /// }
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let mut rt = Runtime::builder()
    ///     .handler(HandlerSpec::with("reporter", move |_ctx: &Ctx| Ok(Reporter(tx.clone()))))
    ///     .build()?;
    /// rt.handle().post("reporter", "hi").unwrap();
    /// rt.run_once(Some(std::time::Duration::from_secs(1)))?;
    /// assert_eq!(rx.recv().unwrap(), "hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with<H, F>(name: impl Into<String>, make: F) -> HandlerSpec
    where
        H: loopd_handler_api::Handler,
        F: Fn(&loopd_handler_api::Ctx) -> Result<H, String> + Send + Sync + 'static,
    {
        let mut linked = Linked::of::<H>();
        linked.make = Some(Arc::new(move |host, raw| {
            // SAFETY: the runtime passes its host table and this
            // instance's context, and uses the pointer with H's vtable.
            unsafe { loopd_handler_api::__private::adopt::<H>(host, raw, &make) }
        }));
        HandlerSpec::new(name, Source::Linked(linked))
    }

    /// An instance named `name` of the linked type `H`: this very value
    /// (see [`HandlerSpec::with`]). A value can serve one runtime only:
    /// building a second runtime from the same spec fails with an error
    /// that says so (use [`HandlerSpec::with`] to make one per runtime).
    pub fn instance<H>(name: impl Into<String>, handler: H) -> HandlerSpec
    where
        H: loopd_handler_api::Handler + Send,
    {
        let slot = Mutex::new(Some(handler));
        let name = name.into();
        let shown = name.clone();
        HandlerSpec::with(name, move |_| {
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .ok_or_else(|| {
                    format!(
                        "HandlerSpec::instance(`{shown}`): the value was used by another runtime already; \
                         use HandlerSpec::with to make one per runtime"
                    )
                })
        })
    }

    /// An instance named `name` of the plugin in the shared library at
    /// `path` (relative paths are relative to the working directory).
    pub fn library(name: impl Into<String>, path: impl Into<PathBuf>) -> HandlerSpec {
        HandlerSpec::new(name, Source::Plugin(PluginRef::Path(path.into())))
    }

    /// An instance named `name` of `plugin`, read exactly as the config's
    /// `plugin` key ([`PluginRef::parse`]): a bare name such as `echo` is
    /// `libloopd_echo.so` (`.dylib` on macOS) in `plugin_dir` or next to the
    /// running executable; anything containing `/` or ending in `.so` (or
    /// the platform's library suffix) is a path.
    pub fn plugin(name: impl Into<String>, plugin: &str) -> HandlerSpec {
        HandlerSpec::new(name, Source::Plugin(PluginRef::parse(plugin)))
    }

    /// Adds a listener: `tcp://IP:PORT`, `unix:///path` or `udp://IP:PORT`
    /// (numeric addresses; port 0 picks a free port, see
    /// [`Runtime::listeners`](crate::Runtime::listeners)).
    pub fn listen(mut self, url: impl Into<String>) -> HandlerSpec {
        self.listen.push(url.into());
        self
    }

    /// How input is cut into frames (default: what the handler declares, else raw).
    pub fn framing(mut self, framing: FramingKind) -> HandlerSpec {
        self.framing = Some(framing);
        self
    }

    /// The largest frame, in bytes (1 to 1 GiB; default: the runtime's `max_frame`).
    pub fn max_frame(mut self, bytes: usize) -> HandlerSpec {
        self.max_frame = Some(bytes);
        self
    }

    /// Output queue watermarks, in bytes: `send` refuses with `AGAIN` at
    /// `high`; `on_writable` fires and input resumes below `low`. `low` must
    /// be below `high`.
    pub fn output_watermarks(mut self, high: usize, low: usize) -> HandlerSpec {
        self.watermarks = Some((high, low));
        self
    }

    /// Most connections of this instance open at once, accepted and
    /// outbound (default: only the runtime's `max_connections`).
    pub fn max_connections(mut self, n: usize) -> HandlerSpec {
        self.max_connections = Some(n);
        self
    }

    /// Most connections one peer address may have open to this instance
    /// (0: no limit; default: the runtime's `max_connections_per_peer`).
    pub fn max_connections_per_peer(mut self, n: usize) -> HandlerSpec {
        self.max_connections_per_peer = Some(n);
        self
    }

    /// Closes a connection that has neither received nor sent anything for
    /// `timeout` (default: never).
    pub fn idle_timeout(mut self, timeout: std::time::Duration) -> HandlerSpec {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The PEM certificate chain (leaf first) and private key served on
    /// the instance's `tls://` listeners (the `tls` feature); checked when
    /// the runtime is built.
    pub fn tls(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> HandlerSpec {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// The ALPN protocols the instance's `tls://` listeners offer, most
    /// preferred first (e.g. `["http/1.1"]`; none for an empty list),
    /// instead of those the plugin declares.
    pub fn tls_alpn<S: Into<String>>(
        mut self,
        protocols: impl IntoIterator<Item = S>,
    ) -> HandlerSpec {
        self.tls_alpn = Some(protocols.into_iter().map(Into::into).collect());
        self
    }

    /// The PEM CA certificates the instance's outbound `tls://`
    /// connections trust.
    pub fn tls_ca(mut self, ca: impl Into<std::path::PathBuf>) -> HandlerSpec {
        self.tls_ca = Some(ca.into());
        self
    }

    /// The certificate (PEM chain) and key the instance's outbound
    /// `tls://` connections present to a server that asks for one.
    pub fn tls_connect_identity(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> HandlerSpec {
        self.tls_connect = Some((cert.into(), key.into()));
        self
    }

    /// A further certificate and key for the instance's `tls://`
    /// listeners, served to clients that ask (SNI) for a DNS name it
    /// carries; call once per certificate. Needs [`HandlerSpec::tls`],
    /// whose certificate the other clients get.
    pub fn tls_sni(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> HandlerSpec {
        self.tls_sni.push((cert.into(), key.into()));
        self
    }

    /// Mutual TLS on the instance's `tls://` listeners: a client must
    /// present a certificate signed by a CA in this PEM file.
    pub fn tls_client_ca(mut self, ca: impl Into<std::path::PathBuf>) -> HandlerSpec {
        self.tls_client_ca = Some(ca.into());
        self
    }

    /// Sets `SO_REUSEADDR` on the instance's UDP sockets (default off: any
    /// local user could then bind the address and take its datagrams).
    pub fn reuse_address(mut self, on: bool) -> HandlerSpec {
        self.reuse_address = on;
        self
    }

    /// Bounds the instance's mailbox for posted messages: at most
    /// `messages` waiting, `bytes` in all (default 4096 and 4 MiB).
    pub fn mailbox(mut self, messages: usize, bytes: usize) -> HandlerSpec {
        self.mailbox = Some((messages, bytes));
        self
    }

    /// The handler's own configuration (the `[handler.config]` table), as
    /// any value that serializes to a JSON object, e.g. a `serde_json::Value`
    /// or the handler's own config struct.
    pub fn config<T: serde::Serialize + ?Sized>(mut self, config: &T) -> HandlerSpec {
        self.config_json = serde_json::to_string(config).map_err(|e| e.to_string());
        self
    }

    /// The handler's own configuration as JSON text, e.g. `{"root": "www"}`.
    pub fn config_json(mut self, json: impl Into<String>) -> HandlerSpec {
        self.config_json = Ok(json.into());
        self
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks everything and turns the spec into a config entry (plus the
    /// linked type, if any).
    pub(crate) fn into_entry(
        self,
        runtime: &RuntimeConfig,
    ) -> Result<(HandlerConfig, Option<Linked>), Error> {
        let name = self.name;
        let fail =
            |what: String| Error::Config(format!("handler `{name}` (added in code): {what}"));
        check_name(&name).map_err(|e| fail(format!("name: {e}")))?;
        let mut listen = Vec::with_capacity(self.listen.len());
        for (i, url) in self.listen.iter().enumerate() {
            let addr =
                ListenAddr::parse_listener(url).map_err(|e| fail(format!("listen[{i}]: {e}")))?;
            listen.push(addr);
        }
        let (high, low) = match self.watermarks {
            Some((high, low)) => (Some(high), Some(low)),
            None => (None, None),
        };
        let json = self
            .config_json
            .map_err(|e| fail(format!("config cannot be serialized: {e}")))?;
        match serde_json::from_str::<serde_json::Value>(&json) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(other) => {
                return Err(fail(format!(
                    "config must be a JSON object (a table), not `{other}`"
                )))
            }
            Err(e) => return Err(fail(format!("config is not valid JSON: {e}"))),
        }
        let (plugin, linked) = match self.source {
            Source::Linked(l) => (PluginRef::Name(l.type_name.to_string()), Some(l)),
            Source::Plugin(p) => (p, None),
        };
        let mut entry = HandlerConfig::new(name.clone(), plugin);
        entry.listen = listen;
        entry.framing = self.framing;
        entry.max_frame = self.max_frame;
        entry.output_high_watermark = high;
        entry.output_low_watermark = low;
        entry.config_json = json;
        for (value, key) in [
            (self.max_connections, "max_connections"),
            (self.mailbox.map(|m| m.0), "mailbox messages"),
            (self.mailbox.map(|m| m.1), "mailbox bytes"),
        ] {
            if value == Some(0) {
                return Err(fail(format!("{key} must be greater than 0")));
            }
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(fail("idle_timeout must be greater than 0".to_string()));
        }
        if self.reuse_address && !entry.listen.iter().any(|a| matches!(a, ListenAddr::Udp(_))) {
            return Err(fail(
                "reuse_address only applies to udp:// listeners, and this handler has none"
                    .to_string(),
            ));
        }
        entry.max_connections = self.max_connections;
        entry.max_connections_per_peer = self.max_connections_per_peer;
        entry.idle_timeout = self.idle_timeout;
        entry.reuse_address = self.reuse_address;
        if let Some((cert, key)) = self.tls {
            if !entry.listen.iter().any(|a| matches!(a, ListenAddr::Tls(_))) {
                return Err(fail(
                    "tls only applies to tls:// listeners, and this handler has none".to_string(),
                ));
            }
            entry.tls_cert = Some(cert);
            entry.tls_key = Some(key);
        }
        if self.tls_client_ca.is_some() && entry.tls_cert.is_none() {
            return Err(fail("tls_client_ca needs tls(cert, key)".to_string()));
        }
        if !self.tls_sni.is_empty() && entry.tls_cert.is_none() {
            return Err(fail("tls_sni needs tls(cert, key)".to_string()));
        }
        entry.tls_sni = self.tls_sni;
        entry.tls_client_ca = self.tls_client_ca;
        entry.tls_ca = self.tls_ca;
        entry.tls_connect = self.tls_connect;
        entry.tls_alpn = self.tls_alpn;
        entry.mailbox_messages = self.mailbox.map(|m| m.0);
        entry.mailbox_bytes = self.mailbox.map(|m| m.1);
        entry
            .limits(runtime)
            .validate()
            .map_err(|e| fail(e.to_string()))?;
        Ok((entry, linked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: HandlerSpec) -> String {
        match spec.into_entry(&RuntimeConfig::default()) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_handler_and_the_value() {
        let e = err(HandlerSpec::plugin("a", "echo").listen("tcp://localhost:1"));
        assert!(
            e.starts_with("handler `a` (added in code): listen[0]: `tcp://localhost:1`"),
            "{e}"
        );
        // What parses but no listener can bind: the IPv4 spelling is named.
        let e = err(HandlerSpec::plugin("a", "echo").listen("tcp://[::ffff:127.0.0.1]:1"));
        assert!(
            e.starts_with("handler `a` (added in code): listen[0]: `tcp://[::ffff:127.0.0.1]:1`")
                && e.ends_with("write the IPv4 address: `tcp://127.0.0.1:1`"),
            "{e}"
        );
        let e = err(HandlerSpec::plugin("bad name", "echo"));
        assert!(
            e.contains("`bad name` (added in code): name: `bad name` is not a valid name"),
            "{e}"
        );
        let e = err(HandlerSpec::plugin("a", "echo").max_frame(0));
        assert!(
            e.contains("(added in code): max_frame: must be between 1 and 1073741824 bytes, not 0"),
            "{e}"
        );
        let e = err(HandlerSpec::plugin("a", "echo").max_frame((1 << 30) + 1));
        assert!(e.contains("not 1073741825"), "{e}");
        let e = err(HandlerSpec::plugin("a", "echo").output_watermarks(10, 10));
        assert!(
            e.contains(
                "(added in code): output_low_watermark: must be below output_high_watermark (10 >= 10)"
            ),
            "{e}"
        );
        // Two rules broken: the first is reported.
        let e = err(HandlerSpec::plugin("a", "echo")
            .max_frame(0)
            .output_watermarks(1, 1));
        assert!(e.contains("max_frame: "), "max_frame is checked first: {e}");
        let e = err(HandlerSpec::plugin("a", "echo").config_json("[1]"));
        assert!(
            e.contains("config must be a JSON object (a table), not `[1]`"),
            "{e}"
        );
        let e = err(HandlerSpec::plugin("a", "echo").config_json("{"));
        assert!(e.contains("config is not valid JSON"), "{e}");
        let e = err(HandlerSpec::plugin("a", "echo").config(&5));
        assert!(e.contains("not `5`"), "{e}");
    }

    #[test]
    fn plugin_reads_names_and_paths_like_the_config() {
        let (e, l) = HandlerSpec::plugin("a", "echo")
            .into_entry(&RuntimeConfig::default())
            .unwrap();
        assert_eq!(e.plugin, PluginRef::Name("echo".into()));
        assert!(l.is_none());
        let (e, _) = HandlerSpec::plugin("a", "./x.so")
            .into_entry(&RuntimeConfig::default())
            .unwrap();
        assert_eq!(e.plugin, PluginRef::Path("./x.so".into()));
        let (e, _) = HandlerSpec::library("a", "libx.so")
            .listen("udp://127.0.0.1:0")
            .output_watermarks(100, 10)
            .config(&serde_json::json!({"k": 1}))
            .into_entry(&RuntimeConfig::default())
            .unwrap();
        assert_eq!(e.plugin, PluginRef::Path("libx.so".into()));
        assert_eq!(e.listen[0].to_string(), "udp://127.0.0.1:0");
        assert_eq!(
            (e.output_high_watermark, e.output_low_watermark),
            (Some(100), Some(10))
        );
        assert_eq!(e.config_json, r#"{"k":1}"#);
    }
}
