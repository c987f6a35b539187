//! The loop's state: the registry of sources, the instance table and what
//! every source shares (poller, timers, queued work, limits, counters).
//!
//! Nothing here reads or writes a socket and nothing here calls a hook:
//! sources (`source/`) do their own I/O against this state, host functions
//! (`host/`) borrow it for the length of a call, and what a handler must
//! hear about is queued in [`Shared::pending`] for the dispatcher.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::RuntimeConfig;
use crate::event_loop::EventLoop;
use crate::instance::{InstanceId, Instances};
use crate::registry::Registry;
use crate::source::stream::Conn;
use crate::source::Source;
use crate::stats::LoopCounters;
use crate::timer::Timers;

/// Work for the dispatcher, queued by code that must not run hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// Deliver `on_open`.
    Open(u64),
    /// Release the connection and deliver `on_close`.
    Close(u64),
    /// Deliver `on_writable`.
    Writable(u64),
    /// Hand buffered frames over (input resumed after a pause).
    Input(u64),
}

/// Warnings that could otherwise flood the log: at most one per second each.
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(n suppressed since the last one)` if a warning may be logged now.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// What every source shares: borrowed beside one source's own record.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) poll: EventLoop,
    pub(crate) timers: Timers,
    pub(crate) pending: VecDeque<Deferred>,
    /// Connections with output deferred to the end of the pass.
    pub(crate) dirty: Vec<u64>,
    /// The loop pass (`run_once`) under way, for "first send in a pass".
    pub(crate) pass: u32,
    /// The connection whose event or hook is being handled (0: none): a
    /// send to it is a reply, written at once (see `stream::send`).
    pub(crate) current: u64,
    /// Open connections (accepted and outbound).
    pub(crate) conns: usize,
    pub(crate) cfg: RuntimeConfig,
    /// The graceful shutdown deadline, once shutdown has begun.
    pub(crate) shutdown_deadline: Option<Instant>,
    /// This pass stopped at a fairness cap (reads per connection, accepts,
    /// datagrams, events per wait) with work possibly left: see
    /// `Runtime::has_pending`.
    pub(crate) capped: bool,
    pub(crate) counters: LoopCounters,
    /// "max_connections reached" and accept failures, rate limited.
    pub(crate) full_warning: RateLimit,
    /// Connections closed for the input budget, rate limited.
    pub(crate) budget_warning: RateLimit,
    /// Bounce buffer for `send_file` on a transport without sendfile
    /// (allocated on first use).
    pub(crate) file_buf: Vec<u8>,
    /// Failed outbound TLS handshakes (a wrong CA under a proxy's load),
    /// one limit per instance: the most recent 64 that failed.
    pub(crate) tls_connect_log: Vec<(crate::instance::InstanceId, RateLimit)>,
    /// When the current pass began: connections stamp their activity with
    /// it (idle timeouts), at no clock read per event.
    pub(crate) now: Instant,
    /// Open connections per (instance, peer address), for
    /// `max_connections_per_peer`; entries leave at 0.
    pub(crate) peers: HashMap<(InstanceId, IpAddr), u32>,
    /// Bytes of unfinished frames held by all connections (their input
    /// buffers' capacity), against `max_buffered_input`.
    pub(crate) buffered_input: usize,
    /// Listening sockets handed over by the parent process, until adopted.
    pub(crate) inherited: crate::inherit::Inherited,
    /// This loop's worker index (0 without workers): worker 0 opens each
    /// TCP and UDP address first, the others join its `SO_REUSEPORT` group.
    pub(crate) worker_index: usize,
    start: Instant,
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// The loop's state.
#[derive(Debug)]
pub(crate) struct Core {
    /// Listeners, connections, datagram sockets, the signal pipe: the poll
    /// key of each is its id here.
    pub(crate) sources: Registry<Source>,
    pub(crate) instances: Instances,
    pub(crate) shared: Shared,
}

impl Core {
    pub(crate) fn new(cfg: RuntimeConfig) -> io::Result<Core> {
        Ok(Core {
            sources: Registry::new(),
            instances: Instances::new(),
            shared: Shared {
                poll: EventLoop::new()?,
                timers: Timers::new(),
                pending: VecDeque::new(),
                dirty: Vec::new(),
                pass: 1,
                current: 0,
                conns: 0,
                cfg,
                shutdown_deadline: None,
                capped: false,
                counters: LoopCounters::default(),
                full_warning: RateLimit::default(),
                budget_warning: RateLimit::default(),
                file_buf: Vec::new(),
                tls_connect_log: Vec::new(),
                now: Instant::now(),
                peers: HashMap::new(),
                buffered_input: 0,
                inherited: Default::default(),
                worker_index: 0,
                start: crate::process_start(),
            },
        })
    }

    pub(crate) fn conn(&self, id: u64) -> Option<&Conn> {
        match self.sources.get(id) {
            Some(Source::Stream(c)) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn conn_mut(&mut self, id: u64) -> Option<&mut Conn> {
        conn_in(&mut self.sources, id)
    }

    /// The connection `id` and the shared state, borrowed together.
    pub(crate) fn conn_and_shared(&mut self, id: u64) -> Option<(&mut Conn, &mut Shared)> {
        match self.sources.get_mut(id) {
            Some(Source::Stream(c)) => Some((c, &mut self.shared)),
            _ => None,
        }
    }

    /// A connection of `instance` with the shared state, or the status a
    /// host function returns for an id that is not one.
    pub(crate) fn owned_conn(
        &mut self,
        instance: InstanceId,
        id: u64,
    ) -> Result<(&mut Conn, &mut Shared), i32> {
        match self.sources.get_mut(id) {
            Some(Source::Stream(c)) if c.instance == instance => Ok((c, &mut self.shared)),
            _ => Err(loopd_handler_api::abi::LOOPD_ERR_NO_SUCH_CONN),
        }
    }

    /// Registers a source with the poller and returns its id.
    pub(crate) fn register(&mut self, source: Source, read: bool, write: bool) -> io::Result<u64> {
        let fd = source.raw_fd();
        let id = self.sources.insert_with(|_| source);
        if let Some(fd) = fd {
            // SAFETY: the fd is owned by the source now stored in the registry;
            // `deregister` removes it from the poller before the fd is closed.
            if let Err(e) = unsafe { self.shared.poll.add(fd, id, read, write) } {
                self.sources.remove(id);
                return Err(e);
            }
        }
        if let Some(Source::Stream(c)) = self.sources.get_mut(id) {
            c.interest = (read, write);
        }
        Ok(id)
    }

    /// Removes a source from the poller (its fd stays open).
    pub(crate) fn deregister(&mut self, id: u64) {
        let Some(fd) = self.sources.get(id).and_then(Source::fd) else {
            return;
        };
        if let Err(e) = self.shared.poll.delete(fd) {
            log::debug!("deregistering source {id}: {e}");
        }
    }

    /// Removes a source entirely (dropping it closes its fd).
    pub(crate) fn remove_source(&mut self, id: u64) -> Option<Source> {
        self.deregister(id);
        self.sources.remove(id)
    }

    /// Writes what sends deferred to the end of the pass, for every
    /// connection that has some; returns whether there were any.
    pub(crate) fn flush_dirty(&mut self) -> bool {
        let mut dirty = std::mem::take(&mut self.shared.dirty);
        if dirty.is_empty() {
            return false;
        }
        for &id in &dirty {
            if let Some((c, sh)) = self.conn_and_shared(id) {
                c.flush_deferred(id, sh);
            }
        }
        dirty.clear();
        if self.shared.dirty.is_empty() {
            // Keep the allocation for the next pass.
            self.shared.dirty = dirty;
        }
        true
    }
}

/// The connection `id` in `sources`, borrowing only that field.
pub(crate) fn conn_in(sources: &mut Registry<Source>, id: u64) -> Option<&mut Conn> {
    match sources.get_mut(id) {
        Some(Source::Stream(c)) => Some(c),
        _ => None,
    }
}
