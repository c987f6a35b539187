//! loopd: an embeddable, no-frills event-loop runtime with handler plugins.
//!
//! One thread runs one readiness loop. The loop owns every socket, keeps
//! connection state in a slab, cuts input into frames, and hands socket
//! events to *handlers*: plugins loaded from shared libraries through a small
//! versioned C ABI (see `loopd-handler-api`), or Rust types linked in
//! statically. The `loopd` binary runs a config file; this crate lets a
//! program embed the same loop.
//!
//! ```
//! use loopd::{Config, Runtime};
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
//! let config = Config::parse(
//!     r#"
//!     [[handler]]
//!     name = "count"
//!     plugin = "count"
//!     listen = ["tcp://127.0.0.1:0"]
//!     "#,
//!     None,
//! )?;
//! let mut rt = Runtime::builder()
//!     .config(config)
//!     .static_handler::<Count>("count")
//!     .build()?;
//! let addr = rt.listeners()[0].clone();
//! let port: u16 = addr.rsplit(':').next().unwrap().parse()?;
//!
//! // A client on another thread; the loop runs here, one pass at a time.
//! let client = std::thread::spawn(move || {
//!     use std::io::{BufRead, BufReader, Write};
//!     let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
//!     s.write_all(b"hello\n").unwrap();
//!     let mut line = String::new();
//!     BufReader::new(s).read_line(&mut line).unwrap();
//!     line
//! });
//! while !client.is_finished() {
//!     rt.run_once(Some(std::time::Duration::from_millis(10)))?;
//! }
//! assert_eq!(client.join().unwrap(), "5\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
mod host;
mod listener;
mod plugin;
mod registry;
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

use config::{FramingKind, PluginRef};
use event_loop::{Ready, Waker};
use host::{ActiveGuard, HostCtx};
use plugin::Plugin;
use state::{Core, InstanceInfo};

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
    /// `run` returns at the end of the current pass.
    pub(crate) stopped: bool,
    listeners: Vec<String>,
}

/// Stops or wakes a [`Runtime`] from any thread.
#[derive(Debug, Clone)]
pub struct Handle {
    flags: Arc<Flags>,
    waker: Waker,
}

impl Handle {
    /// Makes [`Runtime::run`] return after the current pass. Connections stay
    /// open; running the runtime again resumes serving them.
    pub fn stop(&self) {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Starts a graceful shutdown, as SIGTERM does: stop accepting, call
    /// `on_shutdown`, let connections finish for up to `shutdown_timeout_ms`,
    /// then close the rest; `run` then returns.
    pub fn shutdown(&self) {
        self.flags.shutdown.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Wakes the loop if it is waiting, so `run_once` returns early.
    pub fn wake(&self) {
        self.waker.wake();
    }
}

/// Configures and builds a [`Runtime`].
#[derive(Debug, Default)]
pub struct Builder {
    config: Option<Config>,
    config_path: Option<std::path::PathBuf>,
    statics: HashMap<String, (abi::loopd_vtable, Option<FramingKind>)>,
    signals: bool,
    listen: bool,
}

impl Builder {
    /// Uses a parsed config.
    pub fn config(mut self, config: Config) -> Builder {
        self.config = Some(config);
        self
    }

    /// Reads the config from a file when [`Builder::build`] runs.
    pub fn config_file(mut self, path: impl AsRef<Path>) -> Builder {
        self.config_path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Makes `plugin = "<name>"` in the config mean the handler type `H`,
    /// linked into this program, instead of a shared library.
    pub fn static_handler<H: loopd_handler_api::Handler>(mut self, name: &str) -> Builder {
        let framing = match H::FRAMING {
            loopd_handler_api::Framing::Raw => Some(FramingKind::Raw),
            loopd_handler_api::Framing::Line => Some(FramingKind::Line),
            loopd_handler_api::Framing::LengthPrefixed => Some(FramingKind::LengthPrefixed),
            _ => None,
        };
        self.statics.insert(
            name.to_string(),
            (loopd_handler_api::vtable::<H>(), framing),
        );
        self
    }

    /// Handles SIGINT and SIGTERM: the first starts a graceful shutdown, a
    /// second one closes everything at once. Off by default: an embedding
    /// program keeps its own signal dispositions. The `loopd` binary turns it on.
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.signals = on;
        self
    }

    /// Loads the plugins and creates the instances, opens the listeners and
    /// returns the runtime, ready to run.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config, [`Error::Plugin`] naming the
    /// library and the reason, [`Error::Listen`] naming the listener and the
    /// handler. Nothing listens unless everything succeeded.
    pub fn build(mut self) -> Result<Runtime, Error> {
        self.listen = true;
        self.build_inner()
    }

    /// Loads the plugins and creates (then destroys) the instances without
    /// opening any listener: validates a config completely.
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
                format!(
                    "{}: {} {} ({from})",
                    i.name, i.plugin.name, i.plugin.version
                )
            })
            .collect())
    }

    fn build_inner(mut self) -> Result<Runtime, Error> {
        let config = match (self.config.take(), &self.config_path) {
            (Some(c), _) => c,
            (None, Some(path)) => Config::from_file(path)?,
            (None, None) => Config::parse("", None)?,
        };
        let core = Core::new(config.runtime.clone())?;
        let waker = core.poll.waker();
        let mut rt = Runtime {
            core: Box::new(RefCell::new(core)),
            instances: Vec::new(),
            scratch: vec![0; SCRATCH_SIZE],
            ready: Vec::with_capacity(1024),
            flags: Arc::new(Flags::default()),
            waker,
            signals: Vec::new(),
            stopped: false,
            listeners: Vec::new(),
        };
        let _active = ActiveGuard::enter(&rt.core);

        for h in &config.handlers {
            let location = h.plugin_location.as_ref().map(|l| l.to_string());
            let fail = |path: &Path, reason: String| Error::Plugin {
                location: location.clone(),
                handler: h.name.clone(),
                path: path.to_path_buf(),
                reason,
            };
            let plugin = match (
                &h.plugin,
                self.statics.get(match &h.plugin {
                    PluginRef::Name(n) => n.as_str(),
                    PluginRef::Path(_) => "",
                }),
            ) {
                (PluginRef::Name(n), Some((vtable, framing))) => Plugin {
                    path: None,
                    name: n.clone(),
                    version: String::new(),
                    default_framing: *framing,
                    vtable: *vtable,
                },
                _ => {
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
                log::info!("{} listening on {}", rt.instances[b.instance].name, b.url);
                rt.listeners.push(b.url.clone());
            }
            for b in &bound {
                rt.announce_listener(b);
            }
            rt.drain_pending();
        }

        if self.signals {
            let (read, write) = UnixStream::pair()?;
            write.set_nonblocking(true)?;
            rt.core.borrow_mut().add_signal_pipe(read)?;
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                let id = signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
                rt.signals.push(id);
            }
        }
        Ok(rt)
    }
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

    /// The URLs actually bound, in config order (a port of 0 shows the real port).
    pub fn listeners(&self) -> &[String] {
        &self.listeners
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.core.borrow().conns
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.core.borrow().shutdown_deadline.is_some()
    }

    /// Runs until [`Handle::stop`], or until a graceful shutdown (a signal,
    /// when enabled, or [`Handle::shutdown`]) has finished.
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
    /// happens; timers and shutdown deadlines shorten it), dispatches what is
    /// ready, fires due timers. Returns how many events it dispatched.
    ///
    /// # Errors
    /// An I/O error from the poller.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let _active = ActiveGuard::enter(&self.core);
        {
            let mut core = self.core.borrow_mut();
            core.pass = core.pass.wrapping_add(1);
        }
        self.take_flags();
        let timeout = self.next_timeout_within(timeout);
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
        self.check_shutdown();
        waited.map(|()| n)
    }

    /// How long the loop may sleep before a timer or deadline is due (`None`:
    /// nothing is scheduled). For a host loop that also watches
    /// [`Runtime::as_raw_fd`].
    pub fn next_timeout(&self) -> Option<Duration> {
        let mut core = self.core.borrow_mut();
        if !core.pending.is_empty() || !core.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = core.timers.next_deadline();
        if let Some(d) = core.shutdown_deadline {
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
    }
}

impl AsRawFd for Runtime {
    /// The poller's descriptor: readable when the loop has work.
    fn as_raw_fd(&self) -> RawFd {
        self.core.borrow().poll.as_raw_fd()
    }
}

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
