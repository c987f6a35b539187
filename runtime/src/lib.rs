//! loopd: an embeddable, no-frills event-loop runtime with handler plugins.
//!
//! One thread runs one readiness loop. The loop owns every socket, keeps
//! connection state in a slab, cuts input into frames, and hands socket
//! events to *handlers*: plugins loaded from shared libraries through a small
//! versioned C ABI (see [`loopd_handler_api`]), or Rust types linked in
//! statically. The `loopd` binary runs a config file; this crate lets a
//! program embed the same loop.
//!
//! ```
//! use std::time::Duration;
//!
//! use loopd::{HandlerSpec, Runtime};
//! use loopd_handler_api::{ConnId, Ctx, Framing, Handler, NoConfig};
//!
//! /// Answers each line with its length.
//! struct Count;
//!
//! impl Handler for Count {
//!     type Config = NoConfig;
//!     type Conn = ();
//!     const FRAMING: Framing = Framing::Line;
//!     fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
//!         Ok(Count)
//!     }
//!     fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), line: &[u8]) {
//!         let _ = ctx.send(conn, format!("{}\n", line.len()).as_bytes());
//!     }
//! }
//!
//! let mut rt = Runtime::builder()
//!     .handler(HandlerSpec::linked::<Count>("count").listen("tcp://127.0.0.1:0"))
//!     .build()?;
//! // Port 0 picked a free port; the runtime knows which.
//! let url = rt.listeners_of("count").next().unwrap().to_string();
//! let addr = url.strip_prefix("tcp://").unwrap().to_string();
//!
//! // A client on another thread; the loop runs here, one pass at a time.
//! let client = std::thread::spawn(move || {
//!     use std::io::{BufRead, BufReader, Write};
//!     let mut s = std::net::TcpStream::connect(addr).unwrap();
//!     s.write_all(b"hello\n").unwrap();
//!     let mut line = String::new();
//!     BufReader::new(s).read_line(&mut line).unwrap();
//!     line
//! });
//! while !client.is_finished() {
//!     rt.run_once(Some(Duration::from_millis(10)))?;
//! }
//! assert_eq!(client.join().unwrap(), "5\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Building a runtime
//!
//! [`Runtime::builder`] returns a [`Builder`]. Handlers come from a config
//! ([`Builder::config`] with a parsed [`Config`], or [`Builder::config_file`])
//! and from code: [`Builder::handler`] takes a [`HandlerSpec`], either a
//! Rust type linked into the program ([`HandlerSpec::linked`]; the shipped
//! handler crates such as `loopd-echo` work this way too) or a plugin loaded
//! by path ([`HandlerSpec::library`]). [`Builder::static_handler`] makes a
//! config's `plugin = "name"` mean a linked type. [`Builder::build`] fails
//! with one [`Error`] that names what failed; nothing listens unless
//! everything succeeded.
//!
//! # Driving it
//!
//! - [`Runtime::run`] blocks until [`Handle::stop`] or a finished graceful
//!   shutdown ([`Handle::shutdown`]). A stopped runtime can be run again.
//! - [`Runtime::run_once`] does one pass and returns how many events it
//!   dispatched; [`Runtime::next_timeout`] says how long the loop may sleep.
//! - The poller's descriptor ([`AsRawFd`], [`AsFd`]) lets another event loop
//!   watch it: when it polls readable, call `run_once(Some(Duration::ZERO))`.
//! - A [`Handle`] (`Clone + Send + Sync`) stops, shuts down or wakes the loop
//!   from any thread.
//!
//! # Signals
//!
//! A library user's process keeps its own signal dispositions: loopd
//! installs SIGINT/SIGTERM handlers only with [`Builder::handle_signals`]
//! (the `loopd` binary turns it on), which also catches and ignores SIGUSR1
//! and SIGUSR2 (their default action would kill the process). Writes never
//! raise SIGPIPE (loopd sends with `MSG_NOSIGNAL`), so an embedding program
//! need not ignore it.
//!
//! `examples/embed.rs` in the repository is a complete program that drives
//! loopd from its own `poll(2)` loop; `docs/embedding.md` walks through it.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

pub mod config;
mod conn;
mod dispatch;
mod error;
mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod listener;
mod plugin;
mod registry;
mod spec;
mod state;
mod sys;
mod timer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use loopd_handler_api::abi;

pub use config::Config;
pub use error::Error;
pub use spec::HandlerSpec;

use config::{FramingKind, ListenAddr, PluginRef, RuntimeConfig};
use event_loop::{Ready, Waker};
use host::{ActiveGuard, HostCtx};
use plugin::Plugin;
use spec::Linked;
use state::{Core, InstanceInfo};

/// `docs/embedding.md`: its Rust blocks are doctests, so the guide cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../docs/embedding.md")]
struct EmbeddingGuide;

/// loopd's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Size of the read buffer: also the largest datagram (64 KiB covers every
/// UDP payload over IPv4 and IPv6 without jumbograms).
const SCRATCH_SIZE: usize = 64 << 10;

/// The loop's clock starts when the first runtime is made.
pub(crate) fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A created handler instance and the plugin it came from.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) name: String,
    pub(crate) plugin: Plugin,
    /// What `create` stored (NULL if the plugin has no `create`).
    pub(crate) ptr: *mut c_void,
    /// The context handed to the plugin; boxed so its address is stable.
    pub(crate) ctx: Box<HostCtx>,
    pub(crate) destroyed: bool,
}

/// Requests from a [`Handle`], read by the loop at every pass.
#[derive(Debug, Default)]
struct Flags {
    stop: AtomicBool,
    shutdown: AtomicBool,
}

/// A running loopd: listeners, connections, timers and handler instances.
///
/// Build one with [`Runtime::builder`]; drive it with [`Runtime::run`] or,
/// from a program's own loop, one pass at a time with [`Runtime::run_once`].
/// Dropping it closes every connection (handlers get `on_close`), then
/// destroys the handler instances. It is not `Send`: it lives on the thread
/// that runs it; a [`Handle`] reaches it from any thread.
#[derive(Debug)]
pub struct Runtime {
    /// Boxed so the address host contexts point at never moves.
    pub(crate) core: Box<RefCell<Core>>,
    pub(crate) instances: Vec<Instance>,
    pub(crate) scratch: Vec<u8>,
    ready: Vec<Ready>,
    flags: Arc<Flags>,
    waker: Waker,
    signals: Vec<signal_hook::SigId>,
    /// Set by SIGUSR1 or SIGUSR2 (with `handle_signals`): caught so they do
    /// not kill the process, and otherwise ignored.
    ignored_signal: Arc<AtomicBool>,
    /// When an ignored signal was last logged (at most once a second).
    ignored_logged: Option<Instant>,
    /// `run` returns at the end of the current pass.
    pub(crate) stopped: bool,
    /// Bound listener URLs, and the handler each belongs to.
    listeners: Vec<String>,
    listener_handlers: Vec<String>,
}

/// Stops, shuts down or wakes a [`Runtime`] from any thread.
///
/// Cheap to clone; `Send` and `Sync`. Requests are flags the loop reads at
/// the start and end of every pass, plus a wake-up of its poller, so they
/// are never lost: a request made while the loop is not running takes
/// effect in the next pass. A handle outliving its runtime is harmless.
#[derive(Debug, Clone)]
pub struct Handle {
    flags: Arc<Flags>,
    waker: Waker,
}

impl Handle {
    /// Makes [`Runtime::run`] return after the current pass. Listeners and
    /// connections stay open; running the runtime again resumes serving
    /// them. (To a program that drives the loop with [`Runtime::run_once`],
    /// this is a [`Handle::wake`]: the program decides when to stop.)
    pub fn stop(&self) {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Starts a graceful shutdown, as SIGTERM does: stop accepting, call
    /// `on_shutdown`, let connections finish for up to `shutdown_timeout_ms`,
    /// then close the rest; `run` then returns, and
    /// [`Runtime::is_finished`] becomes true.
    pub fn shutdown(&self) {
        self.flags.shutdown.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Wakes the loop: a [`Runtime::run_once`] that is waiting returns (a
    /// later one returns at once, if none was waiting), and the poller's
    /// descriptor ([`Runtime::as_raw_fd`]) becomes readable until then.
    pub fn wake(&self) {
        self.waker.wake();
    }
}

/// Configures and builds a [`Runtime`].
///
/// Handlers come from a config (parsed with [`Builder::config`] or read by
/// [`Builder::build`] from [`Builder::config_file`]), from code
/// ([`Builder::handler`]), or both: entries added in code follow the
/// config's, and names must be unique across the two.
#[derive(Debug, Default)]
pub struct Builder {
    config: Option<Config>,
    config_path: Option<std::path::PathBuf>,
    runtime: Option<RuntimeConfig>,
    statics: HashMap<String, Linked>,
    specs: Vec<HandlerSpec>,
    extra_listeners: Vec<(String, String)>,
    signals: bool,
    listen: bool,
}

impl Builder {
    /// Uses a parsed config (replacing any earlier [`Builder::config_file`]).
    pub fn config(mut self, config: Config) -> Builder {
        self.config = Some(config);
        self.config_path = None;
        self
    }

    /// Reads the config from a file when [`Builder::build`] runs (replacing
    /// any earlier [`Builder::config`]).
    pub fn config_file(mut self, path: impl AsRef<Path>) -> Builder {
        self.config_path = Some(path.as_ref().to_path_buf());
        self.config = None;
        self
    }

    /// Replaces the `[runtime]` settings (limits, timeouts, `plugin_dir`) of
    /// the config, or the defaults when there is no config.
    pub fn runtime(mut self, runtime: RuntimeConfig) -> Builder {
        self.runtime = Some(runtime);
        self
    }

    /// Adds a handler instance: a Rust type linked into the program or a
    /// plugin from a shared library, with its listeners. See [`HandlerSpec`].
    pub fn handler(mut self, spec: HandlerSpec) -> Builder {
        self.specs.push(spec);
        self
    }

    /// Adds a listener URL to the handler named `handler`, defined in the
    /// config or with [`Builder::handler`].
    pub fn listen(mut self, handler: &str, url: &str) -> Builder {
        self.extra_listeners
            .push((handler.to_string(), url.to_string()));
        self
    }

    /// Makes `plugin = "<name>"` in the config mean the handler type `H`,
    /// linked into this program, instead of a shared library.
    pub fn static_handler<H: loopd_handler_api::Handler>(mut self, name: &str) -> Builder {
        self.statics.insert(name.to_string(), Linked::of::<H>());
        self
    }

    /// Handles SIGINT and SIGTERM: the first starts a graceful shutdown, a
    /// second one closes everything at once. SIGUSR1 and SIGUSR2 are caught
    /// and ignored (logged at debug level), where they would kill the
    /// process. Off by default: an embedding program keeps its own signal
    /// dispositions. The `loopd` binary turns it on.
    ///
    /// Once turned on, the process's SIGINT, SIGTERM, SIGUSR1 and SIGUSR2
    /// handlers stay installed for the life of the process (`signal-hook`
    /// cannot restore the previous disposition): after the runtime is
    /// dropped, those signals are caught and ignored. A program that outlives its runtime, or that
    /// handles signals itself, should leave this off and call
    /// [`Handle::shutdown`] from its own handling instead.
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.signals = on;
        self
    }

    /// Loads the plugins and creates the instances, opens the listeners and
    /// returns the runtime, ready to run.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config or handler spec, [`Error::Plugin`]
    /// naming the library and the reason, [`Error::Listen`] naming the
    /// listener and the handler, [`Error::System`] naming a step the
    /// operating system refused. Nothing listens unless everything succeeded.
    pub fn build(mut self) -> Result<Runtime, Error> {
        self.listen = true;
        self.build_inner()
    }

    /// Loads the plugins and creates (then destroys) the instances without
    /// opening any listener: validates a config completely. Returns one line
    /// per instance: its name, plugin, version and where it came from.
    ///
    /// # Errors
    /// As [`Builder::build`], without listener errors.
    pub fn check(mut self) -> Result<Vec<String>, Error> {
        self.listen = false;
        let rt = self.build_inner()?;
        Ok(rt
            .instances
            .iter()
            .map(|i| {
                let from = match &i.plugin.path {
                    Some(p) => p.display().to_string(),
                    None => "linked in".to_string(),
                };
                let mut line = format!("{}: {}", i.name, i.plugin.name);
                if !i.plugin.version.is_empty() {
                    line.push(' ');
                    line.push_str(&i.plugin.version);
                }
                line.push_str(&format!(" ({from})"));
                line
            })
            .collect())
    }

    /// The config, with the runtime settings, handlers and listeners added
    /// in code, and for each entry the linked type that serves it (if any).
    fn assemble(&mut self) -> Result<(Config, Vec<Option<Linked>>), Error> {
        let mut config = match (self.config.take(), &self.config_path) {
            (Some(c), _) => c,
            (None, Some(path)) => Config::from_file(path)?,
            (None, None) => Config::parse("", None)?,
        };
        if let Some(rt) = self.runtime.take() {
            check_runtime(&rt)?;
            config.runtime = rt;
            // The file's own watermarks were checked against its [runtime].
            for h in &config.handlers {
                let high = h
                    .output_high_watermark
                    .unwrap_or(config.runtime.output_high_watermark);
                let low = h
                    .output_low_watermark
                    .unwrap_or(config.runtime.output_low_watermark);
                if low >= high {
                    return Err(Error::Config(format!(
                        "Builder::runtime: handler `{}` would have an output low watermark ({low}) not below its high watermark ({high})",
                        h.name
                    )));
                }
            }
        }
        let mut linked: Vec<Option<Linked>> = config
            .handlers
            .iter()
            .map(|h| match &h.plugin {
                PluginRef::Name(n) => self.statics.get(n).copied(),
                PluginRef::Path(_) => None,
            })
            .collect();
        for spec in std::mem::take(&mut self.specs) {
            let (entry, l) = spec.into_entry(&config.runtime)?;
            if config.handlers.iter().any(|h| h.name == entry.name) {
                return Err(Error::Config(format!(
                    "handler `{}` (added in code): a handler with this name is already defined{}",
                    entry.name,
                    config
                        .path
                        .as_ref()
                        .map(|p| format!(" in {}", p.display()))
                        .unwrap_or_default()
                )));
            }
            config.handlers.push(entry);
            linked.push(l);
        }
        for (handler, url) in std::mem::take(&mut self.extra_listeners) {
            let known: Vec<&str> = config.handlers.iter().map(|h| h.name.as_str()).collect();
            let known = if known.is_empty() {
                "there are no handlers".to_string()
            } else {
                format!("handlers: {}", known.join(", "))
            };
            let entry = config
                .handlers
                .iter_mut()
                .find(|h| h.name == handler)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "Builder::listen(`{handler}`, `{url}`): no handler named `{handler}` ({known})"
                    ))
                })?;
            let addr: ListenAddr = url
                .parse()
                .map_err(|e| Error::Config(format!("Builder::listen(`{handler}`, ...): {e}")))?;
            entry.listen.push(addr);
        }
        Ok((config, linked))
    }

    fn build_inner(mut self) -> Result<Runtime, Error> {
        let (config, linked) = self.assemble()?;
        let core = Core::new(config.runtime.clone()).map_err(|source| Error::System {
            what: "creating the poller (epoll)".to_string(),
            source,
        })?;
        let waker = core.poll.waker();
        let mut rt = Runtime {
            core: Box::new(RefCell::new(core)),
            instances: Vec::new(),
            scratch: vec![0; SCRATCH_SIZE],
            ready: Vec::with_capacity(1024),
            flags: Arc::new(Flags::default()),
            waker,
            signals: Vec::new(),
            ignored_signal: Arc::new(AtomicBool::new(false)),
            ignored_logged: None,
            stopped: false,
            listeners: Vec::new(),
            listener_handlers: Vec::new(),
        };
        let _active = ActiveGuard::enter(&rt.core);

        for (h, linked) in config.handlers.iter().zip(&linked) {
            let location = h.plugin_location.as_ref().map(|l| l.to_string());
            let fail = |path: &Path, reason: String| Error::Plugin {
                location: location.clone(),
                handler: h.name.clone(),
                path: path.to_path_buf(),
                reason,
            };
            let plugin = match linked {
                Some(l) => Plugin {
                    path: None,
                    name: match &h.plugin {
                        PluginRef::Name(n) => n.clone(),
                        PluginRef::Path(p) => p.display().to_string(),
                    },
                    version: String::new(),
                    default_framing: l.framing,
                    vtable: l.vtable,
                },
                None => {
                    let path = plugin::resolve(&h.plugin, config.runtime.plugin_dir.as_deref())
                        .map_err(|(path, why)| fail(&path, why))?;
                    plugin::load(&path).map_err(|why| fail(&path, why))?
                }
            };
            let framing = h
                .framing
                .or(plugin.default_framing)
                .unwrap_or(FramingKind::Raw);
            let index = rt.instances.len();
            rt.core.borrow_mut().instances.push(InstanceInfo {
                name: h.name.clone(),
                framing,
                max_frame: h.max_frame.unwrap_or(config.runtime.max_frame),
                high_watermark: h
                    .output_high_watermark
                    .unwrap_or(config.runtime.output_high_watermark),
                low_watermark: h
                    .output_low_watermark
                    .unwrap_or(config.runtime.output_low_watermark),
                broadcast: h.broadcast,
            });
            let ctx = Box::new(HostCtx {
                core: &*rt.core,
                instance: index,
                log_target: format!("loopd::handler::{}", h.name),
            });
            let mut ptr: *mut c_void = std::ptr::null_mut();
            if let Some(create) = plugin.vtable.create {
                let name = CString::new(h.name.as_str())
                    .map_err(|_| Error::Config("handler name contains NUL".into()))?;
                let json = CString::new(h.config_json.as_str()).map_err(|_| {
                    Error::Config(format!("handler `{}`: config contains NUL", h.name))
                })?;
                let mut err = vec![0u8; 1024];
                // SAFETY: the vtable comes from a checked plugin; every pointer
                // passed is valid for the call, and err has err.len() bytes.
                let status = unsafe {
                    create(
                        host::host_api(),
                        ctx.as_raw(),
                        name.as_ptr(),
                        json.as_ptr(),
                        &mut ptr,
                        err.as_mut_ptr().cast(),
                        err.len(),
                    )
                };
                if status < 0 {
                    let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
                    let msg = String::from_utf8_lossy(&err[..end]).into_owned();
                    let msg = if msg.is_empty() {
                        format!(
                            "status {status} ({}), and the handler gave no message",
                            abi::status_str(status)
                        )
                    } else {
                        msg
                    };
                    let shown = plugin.path.clone().unwrap_or_else(|| h.name.clone().into());
                    return Err(fail(&shown, format!("create failed: {msg}")));
                }
            }
            log::debug!(
                "{}: created from plugin {} {} ({framing} framing)",
                h.name,
                plugin.name,
                plugin.version
            );
            rt.instances.push(Instance {
                name: h.name.clone(),
                plugin,
                ptr,
                ctx,
                destroyed: false,
            });
        }

        if self.listen {
            let mut bound = Vec::new();
            for (index, h) in config.handlers.iter().enumerate() {
                for addr in &h.listen {
                    let b = rt
                        .core
                        .borrow_mut()
                        .add_listener(addr, index)
                        .map_err(|source| Error::Listen {
                            handler: h.name.clone(),
                            listener: addr.to_string(),
                            source,
                        })?;
                    bound.push(b);
                }
            }
            // Only once every listener is open: nothing is reported as
            // listening by a loopd that is about to exit.
            for b in &bound {
                let name = rt.instances[b.instance].name.clone();
                log::info!("{name} listening on {}", b.url);
                rt.listeners.push(b.url.clone());
                rt.listener_handlers.push(name);
            }
            for b in &bound {
                rt.announce_listener(b);
            }
            rt.drain_pending();
        }

        if self.signals {
            rt.install_signals().map_err(|source| Error::System {
                what: "installing the SIGINT/SIGTERM handlers".to_string(),
                source,
            })?;
        }
        Ok(rt)
    }
}

/// The checks the config file applies to `[runtime]`, for settings made in code.
fn check_runtime(rt: &RuntimeConfig) -> Result<(), Error> {
    let fail = |what: String| Error::Config(format!("Builder::runtime: {what}"));
    for (value, key) in [
        (rt.max_connections, "max_connections"),
        (rt.output_high_watermark, "output_high_watermark"),
        (rt.max_frame, "max_frame"),
    ] {
        if value == 0 {
            return Err(fail(format!("{key} must be greater than 0")));
        }
    }
    if rt.shutdown_timeout.is_zero() || rt.close_timeout.is_zero() {
        return Err(fail(
            "shutdown_timeout and close_timeout must be greater than 0".to_string(),
        ));
    }
    if rt.max_frame > 1 << 30 {
        return Err(fail(format!(
            "max_frame {} must be between 1 and {} bytes",
            rt.max_frame,
            1 << 30
        )));
    }
    if rt.output_low_watermark >= rt.output_high_watermark {
        return Err(fail(format!(
            "output_low_watermark {} must be below output_high_watermark {}",
            rt.output_low_watermark, rt.output_high_watermark
        )));
    }
    Ok(())
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A handle that can stop or wake this runtime from any thread.
    pub fn handle(&self) -> Handle {
        Handle {
            flags: self.flags.clone(),
            waker: self.waker.clone(),
        }
    }

    /// The URLs actually bound, in config order, then the order handlers and
    /// listeners were added in code (a port of 0 shows the real port). Empty
    /// for a runtime made by [`Builder::check`].
    pub fn listeners(&self) -> &[String] {
        &self.listeners
    }

    /// The bound URLs of the handler instance named `handler`, in order.
    pub fn listeners_of<'a>(&'a self, handler: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.listeners
            .iter()
            .zip(&self.listener_handlers)
            .filter(move |(_, h)| *h == handler)
            .map(|(url, _)| url.as_str())
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.core.borrow().conns
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.core.borrow().shutdown_deadline.is_some()
    }

    /// Whether a graceful shutdown has finished: the listeners are closed
    /// and every connection is gone. A program driving the loop with
    /// [`Runtime::run_once`] stops here; [`Runtime::run`] returns at once.
    pub fn is_finished(&self) -> bool {
        let core = self.core.borrow();
        core.shutdown_deadline.is_some() && core.conns == 0
    }

    /// Runs until [`Handle::stop`], or until a graceful shutdown (a signal,
    /// when enabled, or [`Handle::shutdown`]) has finished.
    ///
    /// A stopped runtime can be run again: it carries on with the same
    /// listeners, connections and timers. After a finished shutdown there is
    /// nothing left to serve and `run` returns at once.
    ///
    /// # Errors
    /// An I/O error from the poller.
    pub fn run(&mut self) -> io::Result<()> {
        self.stopped = false;
        while !self.stopped {
            self.run_once(None)?;
        }
        Ok(())
    }

    /// One pass: waits for readiness up to `timeout` (`None`: until something
    /// happens; due timers and the shutdown deadline shorten it, and a
    /// [`Handle`] request ends it), dispatches what is ready, fires due
    /// timers. Returns how many events it dispatched: ready sockets handled
    /// plus timers fired (0 when the wait timed out or was only woken).
    ///
    /// `run_once(Some(Duration::ZERO))` never blocks: that is the call for a
    /// program whose own loop watches [`Runtime::as_raw_fd`].
    ///
    /// # Errors
    /// An I/O error from the poller.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let _active = ActiveGuard::enter(&self.core);
        {
            let mut core = self.core.borrow_mut();
            core.pass = core.pass.wrapping_add(1);
        }
        let finished_before = self.is_finished();
        // A stop request ends one `run`, not every later pass.
        self.stopped = false;
        self.take_flags();
        let timeout = if finished_before {
            // Nothing is left to wait for.
            Some(Duration::ZERO)
        } else {
            self.next_timeout_within(timeout)
        };
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        let waited = self.core.borrow_mut().poll.wait(timeout, &mut ready);
        let mut n = 0;
        if waited.is_ok() {
            for r in &ready {
                n += 1;
                self.dispatch(*r);
                self.drain_pending();
            }
        }
        self.ready = ready;
        n += self.fire_timers();
        self.drain_pending();
        self.take_flags();
        self.flush_deferred();
        if finished_before {
            self.stopped = true;
        } else {
            self.check_shutdown();
        }
        waited.map(|()| n)
    }

    /// How long the loop may sleep before a timer or the shutdown deadline
    /// is due (`None`: nothing is scheduled; `Some(ZERO)`: work is already
    /// waiting). A program whose own loop watches [`Runtime::as_raw_fd`]
    /// sleeps at most this long, then calls `run_once(Some(Duration::ZERO))`:
    /// timers do not make the descriptor readable.
    pub fn next_timeout(&self) -> Option<Duration> {
        let mut core = self.core.borrow_mut();
        if !core.pending.is_empty() || !core.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = core.timers.next_deadline();
        if let Some(d) = core.shutdown_deadline.filter(|_| core.conns > 0) {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        next.map(|d| d.saturating_duration_since(now))
    }

    fn next_timeout_within(&self, limit: Option<Duration>) -> Option<Duration> {
        if self.stopped {
            return Some(Duration::ZERO);
        }
        match (self.next_timeout(), limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn take_flags(&mut self) {
        if self.flags.stop.swap(false, Ordering::SeqCst) {
            self.stopped = true;
        }
        if self.flags.shutdown.swap(false, Ordering::SeqCst) {
            self.begin_shutdown();
        }
        if self.ignored_signal.swap(false, Ordering::Relaxed) {
            let now = Instant::now();
            if self
                .ignored_logged
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.ignored_logged = Some(now);
                log::debug!("SIGUSR1 or SIGUSR2 received: loopd does not use them; ignored");
            }
        }
    }
}

impl Runtime {
    fn install_signals(&mut self) -> io::Result<()> {
        let (read, write) = UnixStream::pair()?;
        write.set_nonblocking(true)?;
        self.core.borrow_mut().add_signal_pipe(read)?;
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let id = signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
            self.signals.push(id);
        }
        // Their default action kills the process: a stray `kill -USR1`
        // (log rotation scripts send it to every server) must not take
        // loopd down. Caught by a handler, not ignored with SIG_IGN, so the
        // loop sees them (and every system call they interrupt is retried).
        for sig in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGUSR2] {
            let id = signal_hook::flag::register(sig, self.ignored_signal.clone())?;
            self.signals.push(id);
        }
        Ok(())
    }
}

/// The poller's descriptor (epoll), for a program with its own event loop.
///
/// It polls readable when [`Runtime::run_once`] has I/O to handle or a
/// [`Handle`] woke the loop; watch it for reading, call
/// `run_once(Some(Duration::ZERO))` when it is, and never wait longer than
/// [`Runtime::next_timeout`] (timers do not make it readable). It may rarely
/// poll readable with nothing to do: `run_once` then returns 0. Do not read
/// from it, register it elsewhere with edge triggering only if you drain it
/// with `run_once` each time, and never close it: the runtime owns it.
impl AsRawFd for Runtime {
    fn as_raw_fd(&self) -> RawFd {
        self.core.borrow().poll.as_raw_fd()
    }
}

/// The same descriptor as [`AsRawFd`], borrowed for as long as the runtime.
impl AsFd for Runtime {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the poller lives in the boxed core, as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _active = ActiveGuard::enter(&self.core);
        self.close_everything(abi::LOOPD_REASON_SHUTDOWN);
        self.core.borrow_mut().close_listeners();
        for id in self.signals.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        for index in (0..self.instances.len()).rev() {
            self.destroy_instance(index);
        }
    }
}
