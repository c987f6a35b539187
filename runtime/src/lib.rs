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
//! installs signal handlers only with [`Builder::handle_signals`] (the
//! `loopd` binary turns it on): SIGINT, SIGTERM, SIGPWR and SIGXCPU start a
//! graceful shutdown, SIGQUIT a fast one, SIGHUP a live reload
//! ([`Runtime::reload_file`]), SIGUSR2 a binary upgrade
//! ([`Runtime::upgrade`]), and the other signals whose default action would
//! kill the process (SIGUSR1, SIGXFSZ, SIGALRM, the real-time signals, ...)
//! are logged and ignored; faults such as SIGSEGV keep their default.
//! Writes never raise SIGPIPE (loopd sends with `MSG_NOSIGNAL`, or sets
//! `SO_NOSIGPIPE` where the platform has no such flag), so an embedding
//! program need not ignore it.
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

mod builder;
pub mod config;
#[doc(hidden)]
pub mod control;
mod core;
mod dispatch;
mod error;
mod event_loop;
#[doc(hidden)]
pub mod fuzzing;
mod hooks;
mod host;
mod inherit;
mod instance;
mod mailbox;
pub mod metrics;
mod notify;
mod plugin;
mod privileges;
mod registry;
mod reload;
#[cfg(feature = "signals")]
mod signals;
mod source;
mod spec;
pub mod stats;
mod sys;
mod timer;
#[cfg(feature = "tls")]
mod tls;
mod transport;
mod upgrade;
mod workers;

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use loopd_handler_api::abi;

pub use builder::Builder;
pub use config::Config;
pub use error::Error;
pub use mailbox::PostError;
pub use reload::ReloadReport;
pub use spec::HandlerSpec;
pub use stats::Stats;
pub use workers::{WorkerStats, Workers};

use crate::core::Core;
use config::ListenAddr;
use event_loop::{Ready, Waker};
use host::ActiveGuard;
use mailbox::Postbox;
use source::listener::{self, Bound};
use stats::Scope;

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

/// Requests from a [`Handle`], read by the loop at every pass.
#[derive(Debug, Default)]
struct Flags {
    stop: AtomicBool,
    shutdown: AtomicBool,
    /// Re-read the config file (a `Handle::reload`, or SIGHUP).
    reload: Arc<AtomicBool>,
    /// A `Handle::stats` waits for a snapshot.
    stats_wanted: AtomicBool,
    stats: std::sync::Mutex<Option<Stats>>,
    stats_ready: std::sync::Condvar,
    /// Worker 0's binary upgrade waits for this worker's listening sockets:
    /// whether it still waits (copies made after it gave up are closed,
    /// not left open in the slot), and the answer.
    sockets_wanted: AtomicBool,
    #[allow(clippy::type_complexity)]
    sockets: std::sync::Mutex<(bool, Option<io::Result<Vec<std::os::fd::OwnedFd>>>)>,
    sockets_ready: std::sync::Condvar,
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
    /// The one read buffer: frames are delivered from it.
    pub(crate) scratch: Vec<u8>,
    /// Datagram batches land here (allocated with the first UDP socket's
    /// first read): one slot of `max_datagram` per datagram.
    pub(crate) datagrams: Vec<u8>,
    /// Each slot's real length and sender.
    pub(crate) received: Vec<(usize, loopd_handler_api::abi::loopd_addr)>,
    /// `on_datagrams`' view of a receive (pointing into `datagrams`; empty
    /// between calls).
    pub(crate) batch: Vec<loopd_handler_api::abi::loopd_datagram>,
    ready: Vec<Ready>,
    flags: Arc<Flags>,
    waker: Waker,
    /// The signal handlers (with `handle_signals`).
    #[cfg(feature = "signals")]
    signals: signals::Signals,
    /// `run` returns at the end of the current pass.
    pub(crate) stopped: bool,
    /// Open listener URLs, in the order they were opened.
    listeners: Vec<String>,
    /// Every listener ever opened (a closed one keeps its counters).
    pub(crate) listener_records: Vec<ListenerRecord>,
    /// What a reload compares against and rebuilds from.
    pub(crate) reload: reload::State,
    /// Tell the service manager about readiness, reloads and stopping.
    pub(crate) service: bool,
    /// A new loopd started by `upgrade`, until it takes over.
    pub(crate) successor: Option<std::process::Child>,
    /// `loopd upgrade` requests waiting for the successor to take over or
    /// exit (`control.rs`).
    #[cfg(target_os = "linux")]
    pub(crate) upgrade_waiters: Vec<std::os::unix::net::UnixStream>,
    /// What those requests were told once the successor took over (later
    /// ones are told the same at once).
    #[cfg(target_os = "linux")]
    pub(crate) taken_over_by: Option<String>,
    /// Which worker this runtime is, when there are several.
    pub(crate) worker: Option<workers::WorkerSlot>,
    /// The instances' mailboxes, shared with every [`Handle`].
    pub(crate) postbox: Arc<Postbox>,
    /// Messages taken from the mailboxes, being delivered (reused).
    pub(crate) mail: Vec<(instance::InstanceId, Vec<u8>)>,
    /// Where this runtime (every worker's, with workers) leaves snapshots
    /// for the `stats_json` host function.
    pub(crate) stats_board: Arc<stats::StatsBoard>,
    /// When this runtime last published (`None`: not yet).
    stats_published: Option<Instant>,
    /// Events were handled since the last publication.
    stats_dirty: bool,
}

/// A listener the runtime opened.
#[derive(Debug, Clone)]
pub(crate) struct ListenerRecord {
    /// The URL actually bound.
    pub(crate) url: String,
    /// The handler it serves.
    pub(crate) handler: String,
    pub(crate) scope: Rc<Scope>,
    /// Its source id.
    pub(crate) id: u64,
    /// The address as written (a port of 0 stays 0): what a reload matches.
    pub(crate) addr: ListenAddr,
    /// Opened for an entry of the config file (a reload may close it).
    pub(crate) from_file: bool,
    /// Still open.
    pub(crate) open: bool,
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
    postbox: Arc<Postbox>,
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

    /// A snapshot of the runtime's counters ([`Runtime::stats`]) taken on
    /// its loop thread at its next pass, from any thread; `None` when the
    /// loop does not get to it within `timeout` (it is not running, or
    /// busy).
    pub fn stats(&self, timeout: Duration) -> Option<Stats> {
        let mut slot = self
            .flags
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = None;
        self.flags.stats_wanted.store(true, Ordering::SeqCst);
        self.waker.wake();
        let (mut slot, _) = self
            .flags
            .stats_ready
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.take()
    }

    /// Asks the loop for close-on-exec copies of its TCP and UDP listening
    /// sockets, made on its thread at its next pass (worker 0's binary
    /// upgrade asks every other worker at once, then collects with
    /// [`Handle::listening_sockets`]).
    pub(crate) fn request_listening_sockets(&self) {
        let mut slot = self
            .flags
            .sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = (true, None);
        self.flags.sockets_wanted.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// The copies asked for with [`Handle::request_listening_sockets`];
    /// `None` when the loop has not made them by `deadline` (it will not
    /// make them later: the request is withdrawn).
    pub(crate) fn listening_sockets(
        &self,
        deadline: Instant,
    ) -> Option<io::Result<Vec<std::os::fd::OwnedFd>>> {
        let slot = self
            .flags
            .sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (mut slot, _) = self
            .flags
            .sockets_ready
            .wait_timeout_while(slot, timeout, |s| s.0 && s.1.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.0 = false;
        slot.1.take()
    }

    /// Asks the loop to re-read its config file and apply it at its next
    /// pass ([`Runtime::reload_file`]), as SIGHUP does for the binary; the
    /// outcome is logged (a config that fails leaves the old one running).
    pub fn reload(&self) {
        self.flags.reload.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Wakes the loop: a [`Runtime::run_once`] that is waiting returns (a
    /// later one returns at once, if none was waiting), and the poller's
    /// descriptor ([`Runtime::as_raw_fd`]) becomes readable until then.
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Posts `msg` to the handler instance named `instance`: its
    /// `on_message` gets it on the loop thread, after whatever hook is
    /// running, in the order posts were made (from every thread together),
    /// with the usual hook guarantees (a panic is contained, no
    /// re-entrancy). The message is moved (or copied) into the instance's
    /// bounded mailbox; only the first post since the loop last took mail
    /// wakes it.
    ///
    /// ```
    /// # use loopd::{HandlerSpec, Runtime};
    /// # use loopd_handler_api::{Ctx, Handler, NoConfig};
    /// # use std::time::Duration;
    /// struct Inbox;
    /// impl Handler for Inbox {
    ///     type Config = NoConfig;
    ///     type Conn = ();
    ///     fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
    ///         Ok(Inbox)
    ///     }
    ///     fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
    ///         ctx.info(format_args!("got {}", String::from_utf8_lossy(msg)));
    ///     }
    /// }
    /// let mut rt = Runtime::builder()
    ///     .handler(HandlerSpec::linked::<Inbox>("inbox"))
    ///     .build()?;
    /// let handle = rt.handle();
    /// std::thread::spawn(move || handle.post("inbox", "hello").unwrap())
    ///     .join()
    ///     .unwrap();
    /// assert_eq!(rt.run_once(Some(Duration::from_secs(1)))?, 1, "one message delivered");
    /// assert_eq!(rt.handle().post("nobody", "x"), Err(loopd::PostError::NoSuchInstance));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`PostError::Full`] when the mailbox is at its limit
    /// (`mailbox_messages` or `mailbox_bytes`; nothing was posted: slow
    /// down or drop), [`PostError::TooLarge`] for a message larger than the
    /// whole mailbox, [`PostError::NoSuchInstance`], and
    /// [`PostError::Stopped`] once the runtime was dropped.
    pub fn post(&self, instance: &str, msg: impl Into<Vec<u8>>) -> Result<(), PostError> {
        self.postbox.post(instance, msg.into())
    }
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A runtime around `core`, with nothing in it yet (see [`Builder`]).
    pub(crate) fn new(core: Core) -> Runtime {
        let waker = core.shared.poll.waker();
        let postbox = Postbox::new(waker.clone());
        Runtime {
            core: Box::new(RefCell::new(core)),
            scratch: vec![0; SCRATCH_SIZE],
            datagrams: Vec::new(),
            received: Vec::new(),
            batch: Vec::new(),
            ready: Vec::with_capacity(1024),
            flags: Arc::new(Flags::default()),
            waker,
            #[cfg(feature = "signals")]
            signals: signals::Signals::default(),
            stopped: false,
            listeners: Vec::new(),
            listener_records: Vec::new(),
            reload: reload::State::default(),
            service: false,
            successor: None,
            #[cfg(target_os = "linux")]
            upgrade_waiters: Vec::new(),
            #[cfg(target_os = "linux")]
            taken_over_by: None,
            worker: None,
            postbox,
            mail: Vec::new(),
            stats_board: Arc::default(),
            stats_published: None,
            stats_dirty: false,
        }
    }

    /// Records a listener that was opened for `handler`, from `addr` as
    /// the config (or code) wrote it.
    pub(crate) fn add_bound(
        &mut self,
        handler: &str,
        b: &Bound,
        addr: &ListenAddr,
        from_file: bool,
    ) {
        self.listeners.push(b.url.clone());
        self.listener_records.push(ListenerRecord {
            url: b.url.clone(),
            handler: handler.to_string(),
            scope: b.scope.clone(),
            id: b.id,
            addr: addr.clone(),
            from_file,
            open: true,
        });
    }

    /// Rebuilds the list of open listener URLs from the records.
    pub(crate) fn refresh_listeners(&mut self) {
        self.listeners = self
            .listener_records
            .iter()
            .filter(|r| r.open)
            .map(|r| r.url.clone())
            .collect();
    }

    /// A handle that can stop or wake this runtime from any thread.
    pub fn handle(&self) -> Handle {
        Handle {
            flags: self.flags.clone(),
            waker: self.waker.clone(),
            postbox: self.postbox.clone(),
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
        self.listener_records
            .iter()
            .filter(move |r| r.open && r.handler == handler)
            .map(|r| r.url.as_str())
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.core.borrow().shared.conns
    }

    /// A snapshot of every counter: the loop's (passes, events, time busy
    /// and waiting), each handler instance's and each listener's
    /// (connections accepted, open and closed by reason, bytes, frames,
    /// datagrams, timers). Counting costs no system call and no allocation
    /// per event; the snapshot itself allocates (names and vectors).
    ///
    /// ```
    /// # use loopd::{HandlerSpec, Runtime};
    /// # use loopd_handler_api::{Ctx, Handler, NoConfig};
    /// # struct Quiet;
    /// # impl Handler for Quiet {
    /// #     type Config = NoConfig;
    /// #     type Conn = ();
    /// #     fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> { Ok(Quiet) }
    /// # }
    /// let rt = Runtime::builder()
    ///     .handler(HandlerSpec::linked::<Quiet>("quiet").listen("tcp://127.0.0.1:0"))
    ///     .build()?;
    /// let stats = rt.stats();
    /// let quiet = stats.handler("quiet").unwrap();
    /// assert_eq!(quiet.counters.active, 0);
    /// assert_eq!(stats.listeners.len(), 1);
    /// # Ok::<(), loopd::Error>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let core = self.core.borrow();
        let mut stats = Stats {
            loop_stats: stats::loop_stats(&core.shared.counters),
            handlers: core
                .instances
                .iter()
                .filter(|i| i.callable())
                .map(|i| stats::handler_stats(&i.scope, i.life == instance::Life::Draining))
                .collect(),
            listeners: self
                .listener_records
                .iter()
                .map(|r| {
                    // A record closed by a reload that switched its socket's
                    // transport shares the socket's id with its successor.
                    let open = r.open && core.sources.get(r.id).is_some();
                    stats::listener_stats(&r.scope, &r.handler, open)
                })
                .collect(),
        };
        // Queued output is a sum over the open connections, taken here
        // rather than kept up to date at every send. Scopes are matched by
        // address: a draining instance shares its name with its successor.
        let scopes: Vec<*const Scope> = core
            .instances
            .iter()
            .filter(|i| i.callable())
            .map(|i| Rc::as_ptr(&i.scope))
            .collect();
        let listeners: Vec<*const Scope> = self
            .listener_records
            .iter()
            .map(|r| Rc::as_ptr(&r.scope))
            .collect();
        for s in core.sources.values() {
            if let source::Source::Stream(c) = s {
                let queued = c.output_queued() as u64;
                if queued == 0 {
                    continue;
                }
                let (inst, listener) = c.scopes();
                if let Some(i) = scopes.iter().position(|&p| p == inst) {
                    stats.handlers[i].counters.output_queued += queued;
                }
                if let Some(i) = listener.and_then(|l| listeners.iter().position(|&p| p == l)) {
                    stats.listeners[i].counters.output_queued += queued;
                }
            }
        }
        stats
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.core.borrow().shared.shutdown_deadline.is_some()
    }

    /// Whether a graceful shutdown has finished: the listeners are closed
    /// and every connection is gone. A program driving the loop with
    /// [`Runtime::run_once`] stops here; [`Runtime::run`] returns at once.
    pub fn is_finished(&self) -> bool {
        let core = self.core.borrow();
        core.shared.shutdown_deadline.is_some() && core.shared.conns == 0
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
        let started = Instant::now();
        {
            let mut core = self.core.borrow_mut();
            core.shared.pass = core.shared.pass.wrapping_add(1);
            core.shared.now = started;
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
        // The few instructions before the wait count as waiting: a clock
        // read less per pass (each is ~25 instructions, and a pass of one
        // echoed message is ~1,700).
        let waited = {
            let mut core = self.core.borrow_mut();
            let waited = core.shared.poll.wait(timeout, &mut ready);
            // A full event buffer may have left events in the kernel.
            core.shared.capped = ready.len() >= event_loop::EVENTS_PER_WAIT;
            waited
        };
        let wait_ended = Instant::now();
        let mut n = 0;
        if waited.is_ok() {
            for r in &ready {
                n += 1;
                self.dispatch(*r);
                self.drain_pending();
            }
        }
        self.ready = ready;
        n += self.deliver_mail();
        n += self.fire_timers();
        self.drain_pending();
        self.take_flags();
        self.flush_deferred();
        if finished_before {
            self.stopped = true;
        } else {
            self.check_shutdown();
        }
        let ended = Instant::now();
        {
            let c = &mut self.core.borrow_mut().shared.counters;
            c.pass(ended - wait_ended);
            c.events += n as u64;
            c.waiting += wait_ended - started;
        }
        self.stats_dirty |= n > 0;
        self.publish_stats(ended);
        waited.map(|()| n)
    }

    /// Leaves a snapshot on the stats board: after the first pass, then,
    /// while someone reads the board, at most every `PUBLISH_EVERY` after
    /// passes that handled events.
    fn publish_stats(&mut self, now: Instant) {
        let due = match self.stats_published {
            None => true,
            Some(at) => {
                self.stats_dirty
                    && self.stats_board.has_readers()
                    && now.duration_since(at) >= stats::PUBLISH_EVERY
            }
        };
        if due {
            let index = self.worker.as_ref().map_or(0, |w| w.index);
            self.stats_board.publish(index, self.stats());
            self.stats_published = Some(now);
            self.stats_dirty = false;
        }
    }

    /// How long until an unpublished change is due on a read stats board.
    fn publish_timeout(&self) -> Option<Duration> {
        let at = self.stats_published?;
        if !self.stats_dirty || !self.stats_board.has_readers() {
            return None;
        }
        Some(stats::PUBLISH_EVERY.saturating_sub(at.elapsed()))
    }

    /// Whether the last pass left work behind: it stopped at a fairness
    /// cap (4 reads of 64 KiB per connection and event, 64 accepts per
    /// listener, 64 datagrams per socket, 1024 events per wait, 256 messages
    /// per instance), or messages, due timers or queued deliveries are
    /// waiting. loopd's sockets are level-triggered, so its own poller
    /// reports leftover readiness again at once; an outer event loop that
    /// watches [`Runtime::as_raw_fd`] edge-triggered (tokio's `AsyncFd`,
    /// an `EPOLLET` registration) is not told again, and must call
    /// `run_once(Some(Duration::ZERO))` while this is true before it
    /// waits. `docs/embedding.md` shows the loop.
    pub fn has_pending(&self) -> bool {
        self.core.borrow().shared.capped || self.next_timeout() == Some(Duration::ZERO)
    }

    /// How long the loop may sleep before a timer or the shutdown deadline
    /// is due (`None`: nothing is scheduled; `Some(ZERO)`: work is already
    /// waiting). A program whose own loop watches [`Runtime::as_raw_fd`]
    /// sleeps at most this long, then calls `run_once(Some(Duration::ZERO))`:
    /// timers do not make the descriptor readable.
    pub fn next_timeout(&self) -> Option<Duration> {
        let mut core = self.core.borrow_mut();
        let sh = &mut core.shared;
        if !sh.pending.is_empty() || !sh.dirty.is_empty() || self.postbox.has_mail() {
            return Some(Duration::ZERO);
        }
        let mut next = sh.timers.next_deadline();
        if let Some(d) = sh.shutdown_deadline.filter(|_| sh.conns > 0) {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        // The clock is read only when something is scheduled.
        next.map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn next_timeout_within(&self, limit: Option<Duration>) -> Option<Duration> {
        if self.stopped {
            return Some(Duration::ZERO);
        }
        let min = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        min(min(self.next_timeout(), limit), self.publish_timeout())
    }

    fn take_flags(&mut self) {
        // Read before they are swapped: twice a pass, a plain load of each
        // flag instead of a locked exchange. A flag set by a handle before
        // it woke the loop is seen: the poller's wake-up is itself a
        // sequentially consistent exchange after the flag's store.
        fn take(flag: &AtomicBool) -> bool {
            flag.load(Ordering::SeqCst) && flag.swap(false, Ordering::SeqCst)
        }
        if take(&self.flags.stop) {
            self.stopped = true;
        }
        if take(&self.flags.shutdown) {
            self.begin_shutdown();
        }
        if take(&self.flags.reload) {
            // Logged: a handle's reload has nobody to answer.
            let _ = self.reload_requested();
        }
        if take(&self.flags.stats_wanted) {
            let snapshot = self.stats();
            *self
                .flags
                .stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot);
            self.flags.stats_ready.notify_all();
        }
        if take(&self.flags.sockets_wanted) {
            // Worker 0 asks for the sockets after any reload it asked for:
            // hand over the listeners of that config.
            if take(&self.flags.reload) {
                let _ = self.reload_requested();
            }
            let mut slot = self
                .flags
                .sockets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.0 {
                // Worker 0 holds the Unix sockets every worker serves.
                slot.1 = Some(self.listening_sockets(false));
                self.flags.sockets_ready.notify_all();
            }
        }
        self.check_successor();
    }
}

impl Runtime {
    /// Catches the signals of `signals.rs`'s table: each writes its number
    /// to a self-pipe the loop watches.
    #[cfg(feature = "signals")]
    pub(crate) fn install_signals(&mut self) -> io::Result<()> {
        use source::Source;
        use std::os::unix::net::UnixStream;
        let (read, write) = UnixStream::pair()?;
        write.set_nonblocking(true)?;
        read.set_nonblocking(true)?;
        self.core
            .borrow_mut()
            .register(Source::Signal(read), true, false)?;
        self.signals.install(write)?;
        // `loopd reload`'s requests: worker 0 reloads.
        #[cfg(target_os = "linux")]
        if self.worker().0 == 0 {
            match control::listen() {
                Ok(l) => {
                    self.core
                        .borrow_mut()
                        .register(Source::Control(l), true, false)?;
                }
                // Another runtime of this process has it and answers.
                Err(_) if control::bound_here() => log::debug!(
                    "`loopd reload` and `loopd upgrade` are answered by the first runtime of this process that handles signals"
                ),
                // Another process holds the name (`loopd reload` does not
                // believe it), or /proc is missing: the commands signal.
                Err(e) => log::warn!(
                    "`loopd reload` and `loopd upgrade` cannot ask this process and hear the outcome (control socket {}: {e}): they will send SIGHUP and SIGUSR2 instead",
                    control::own_socket_name().unwrap_or_else(|_| "loopd-control/?".to_string())
                ),
            }
        }
        Ok(())
    }
}

/// The poller's descriptor (epoll on Linux, kqueue on macOS and the BSDs),
/// for a program with its own event loop.
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
        self.core.borrow().shared.poll.as_raw_fd()
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
        self.postbox.stop();
        let _active = ActiveGuard::enter(&self.core);
        self.close_everything(abi::LOOPD_REASON_SHUTDOWN);
        listener::close_all(&mut self.core.borrow_mut());
        #[cfg(target_os = "linux")]
        self.close_control();
        #[cfg(feature = "signals")]
        self.signals.uninstall();
        let ids = self.core.borrow().instances.ids().to_vec();
        for inst in ids.into_iter().rev() {
            self.destroy_instance(inst);
        }
    }
}
