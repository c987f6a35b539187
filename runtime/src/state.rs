//! The loop's mutable state, and every operation on it that never calls a
//! hook: host functions land here, and so do accept, flush and close
//! bookkeeping. Anything a handler must hear about is pushed onto `pending`
//! and delivered by the dispatcher once the current hook has returned.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use loopd_handler_api::abi;

use crate::config::{FramingKind, ListenAddr, RuntimeConfig};
use crate::conn::{Conn, OutQueue, Phase};
use crate::event_loop::EventLoop;
use crate::listener::{self, Listener};
use crate::registry::Registry;
use crate::sys;
use crate::timer::{self, TimerKind, Timers};

/// How long a listener rests after EMFILE/ENFILE before accepting again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most connections accepted per readiness event (fairness).
const ACCEPTS_PER_EVENT: usize = 64;
/// Sends up to this size may be deferred to the end of the pass and
/// coalesced; larger ones are written at once when nothing is queued.
const DEFER_LIMIT: usize = 16 << 10;
/// Most pending timers per runtime; `timer_set` refuses beyond.
const MAX_TIMERS: usize = 1 << 20;

/// Something registered with the poller.
#[derive(Debug)]
pub(crate) enum Source {
    Listener(Listener),
    Conn(Conn),
    Datagram(Datagram),
    /// The read end of the signal self-pipe.
    Signal(UnixStream),
}

/// A bound UDP socket.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) sock: UdpSocket,
    pub(crate) instance: usize,
    /// The URL actually bound, for messages.
    pub(crate) url: String,
    /// Largest datagram delivered (the handler's `max_frame`, at most the
    /// read buffer); larger ones are dropped.
    pub(crate) max_datagram: usize,
    /// `SO_BROADCAST` is set (`broadcast = true`).
    pub(crate) broadcast: bool,
    /// The "needs `broadcast = true`" error was logged (once per socket).
    broadcast_warned: bool,
    /// Datagrams `send_datagram` dropped because the kernel buffer was full.
    pub(crate) dropped: u64,
    /// Received datagrams dropped because they were over `max_datagram`.
    pub(crate) oversize: u64,
    dropped_log: RateLimit,
    oversize_log: RateLimit,
    error_log: RateLimit,
}

/// A listener that was opened, as `on_listen` reports it.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub(crate) id: u64,
    pub(crate) instance: usize,
    pub(crate) transport: u32,
    pub(crate) local: abi::loopd_addr,
    pub(crate) url: String,
}

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

/// Per-instance facts the host functions need.
#[derive(Debug, Clone)]
pub(crate) struct InstanceInfo {
    pub(crate) name: String,
    pub(crate) framing: FramingKind,
    pub(crate) max_frame: usize,
    pub(crate) high_watermark: usize,
    pub(crate) low_watermark: usize,
    /// `broadcast = true`: `SO_BROADCAST` on the instance's UDP sockets.
    pub(crate) broadcast: bool,
}

/// Warnings that could otherwise flood the log: at most one per second each.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(n suppressed since the last one)` if a warning may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
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

/// Everything the loop owns that host functions may touch.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) poll: EventLoop,
    pub(crate) sources: Registry<Source>,
    pub(crate) timers: Timers,
    pub(crate) pending: VecDeque<Deferred>,
    /// Connections with output deferred to the end of the pass.
    pub(crate) dirty: Vec<u64>,
    /// The loop pass (`run_once`) under way, for "first send in a pass".
    pub(crate) pass: u32,
    /// The connection whose event or hook is being handled (0: none): a
    /// send to it is a reply, written at once; see [`Core::send`].
    pub(crate) current: u64,
    /// Open connections (accepted and outbound).
    pub(crate) conns: usize,
    pub(crate) cfg: RuntimeConfig,
    pub(crate) instances: Vec<InstanceInfo>,
    start: Instant,
    /// The graceful shutdown deadline, once shutdown has begun.
    pub(crate) shutdown_deadline: Option<Instant>,
    full_warning: RateLimit,
}

/// The connection `id` in `sources`, borrowing only that field.
fn conn_in(sources: &mut Registry<Source>, id: u64) -> Option<&mut Conn> {
    match sources.get_mut(id) {
        Some(Source::Conn(c)) => Some(c),
        _ => None,
    }
}

impl Core {
    pub(crate) fn new(cfg: RuntimeConfig) -> io::Result<Core> {
        Ok(Core {
            poll: EventLoop::new()?,
            sources: Registry::new(),
            timers: Timers::new(),
            pending: VecDeque::new(),
            dirty: Vec::new(),
            pass: 1,
            current: 0,
            conns: 0,
            cfg,
            instances: Vec::new(),
            start: crate::process_start(),
            shutdown_deadline: None,
            full_warning: RateLimit::default(),
        })
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn conn(&self, id: u64) -> Option<&Conn> {
        match self.sources.get(id) {
            Some(Source::Conn(c)) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn conn_mut(&mut self, id: u64) -> Option<&mut Conn> {
        match self.sources.get_mut(id) {
            Some(Source::Conn(c)) => Some(c),
            _ => None,
        }
    }

    /// A connection of `instance`, or the status a host function returns.
    fn owned_conn(&mut self, instance: usize, id: u64) -> Result<&mut Conn, i32> {
        match self.sources.get_mut(id) {
            Some(Source::Conn(c)) if c.instance == instance => Ok(c),
            _ => Err(abi::LOOPD_ERR_NO_SUCH_CONN),
        }
    }

    /// Registers a source with the poller and returns its id.
    fn register(&mut self, source: Source, read: bool, write: bool) -> io::Result<u64> {
        let fd = match &source {
            Source::Listener(l) => l.fd.as_raw_fd(),
            Source::Conn(c) => match &c.fd {
                Some(fd) => fd.as_raw_fd(),
                None => -1,
            },
            Source::Datagram(d) => d.sock.as_raw_fd(),
            Source::Signal(s) => s.as_raw_fd(),
        };
        let id = self.sources.insert_with(|_| source);
        if fd >= 0 {
            // SAFETY: the fd is owned by the source now stored in the registry;
            // `deregister` removes it from the poller before the fd is closed.
            if let Err(e) = unsafe { self.poll.add(fd, id, read, write) } {
                self.sources.remove(id);
                return Err(e);
            }
        }
        if let Some(Source::Conn(c)) = self.sources.get_mut(id) {
            c.interest = (read, write);
        }
        Ok(id)
    }

    /// Removes a source from the poller (the fd stays open).
    fn deregister(&mut self, id: u64) {
        let fd = match self.sources.get(id) {
            Some(Source::Listener(l)) => l.fd.as_fd(),
            Some(Source::Conn(c)) => match &c.fd {
                Some(fd) => fd.as_fd(),
                None => return,
            },
            Some(Source::Datagram(d)) => d.sock.as_fd(),
            Some(Source::Signal(s)) => s.as_fd(),
            None => return,
        };
        if let Err(e) = self.poll.delete(fd) {
            log::debug!("deregistering source {id}: {e}");
        }
    }

    /// Removes a source entirely and closes its fd.
    pub(crate) fn remove_source(&mut self, id: u64) -> Option<Source> {
        self.deregister(id);
        self.sources.remove(id)
    }

    /// Brings the poller's interest for a connection in line with its state.
    pub(crate) fn update_interest(&mut self, id: u64) {
        let Some(Source::Conn(c)) = self.sources.get_mut(id) else {
            return;
        };
        let want = c.wanted_interest();
        if want == c.interest {
            return;
        }
        let Some(fd) = &c.fd else { return };
        match self.poll.modify(fd.as_fd(), id, want.0, want.1) {
            Ok(()) => c.interest = want,
            Err(e) => {
                log::warn!("poller refused connection {id}: {e}; closing it");
                self.begin_close(id, true, abi::LOOPD_REASON_ERROR);
            }
        }
    }

    // ---------------------------------------------------------------------
    // Listeners and sockets
    // ---------------------------------------------------------------------

    /// Opens a listener (or UDP socket) for `instance`; returns what
    /// `on_listen` reports about it.
    pub(crate) fn add_listener(&mut self, addr: &ListenAddr, instance: usize) -> io::Result<Bound> {
        if let ListenAddr::Udp(sa) = addr {
            self.check_own_udp(sa)?;
            let sock = UdpSocket::from(sys::bind_listener(sa, false, 0)?);
            let info = &self.instances[instance];
            if info.broadcast {
                sock.set_broadcast(true)?;
            }
            let local = sock.local_addr()?;
            let url = format!("udp://{local}");
            let d = Datagram {
                sock,
                instance,
                url: url.clone(),
                max_datagram: info.max_frame.min(crate::SCRATCH_SIZE),
                broadcast: info.broadcast,
                broadcast_warned: false,
                dropped: 0,
                oversize: 0,
                dropped_log: RateLimit::default(),
                oversize_log: RateLimit::default(),
                error_log: RateLimit::default(),
            };
            let id = self.register(Source::Datagram(d), true, false)?;
            return Ok(Bound {
                id,
                instance,
                transport: abi::LOOPD_TRANSPORT_UDP,
                local: abi::loopd_addr::from_socket_addr(local),
                url,
            });
        }
        self.check_own_listeners(addr)?;
        let l = Listener::open(addr, instance)?;
        let url = l.url_str().to_string();
        let transport = l.transport;
        let local = sys::local_addr(l.fd.as_raw_fd());
        let id = self.register(Source::Listener(l), true, false)?;
        Ok(Bound {
            id,
            instance,
            transport,
            local,
            url,
        })
    }

    /// A listener of this very config already holds `addr` (the same socket
    /// file under another spelling, or the same port on another address):
    /// say so, rather than blaming another process.
    fn check_own_listeners(&self, addr: &ListenAddr) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let own = |pred: &dyn Fn(&Listener) -> bool| {
            self.sources
                .ids()
                .into_iter()
                .find_map(|id| match self.sources.get(id) {
                    Some(Source::Listener(l)) if pred(l) => Some((
                        l.url_str().to_string(),
                        self.instances[l.instance].name.clone(),
                    )),
                    _ => None,
                })
        };
        let clash = match addr {
            ListenAddr::Unix(path) => match std::fs::symlink_metadata(path) {
                Ok(meta) => own(&|l| l.unix_file() == Some((meta.dev(), meta.ino()))),
                Err(_) => None,
            },
            ListenAddr::Tcp(sa) if sa.port() != 0 => own(&|l| {
                l.url_str()
                    .strip_prefix("tcp://")
                    .and_then(|u| u.parse::<std::net::SocketAddr>().ok())
                    .is_some_and(|bound| {
                        bound.port() == sa.port()
                            && bound.is_ipv4() == sa.is_ipv4()
                            && (bound.ip() == sa.ip()
                                || bound.ip().is_unspecified()
                                || sa.ip().is_unspecified())
                    })
            }),
            _ => None,
        };
        match clash {
            Some((url, handler)) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("it is the same socket as {url}, already opened by handler `{handler}` of this config"),
            )),
            None => Ok(()),
        }
    }

    /// As [`Core::check_own_listeners`], for a UDP socket of this config on
    /// the same port (the same address, or a wildcard on either side).
    fn check_own_udp(&self, sa: &std::net::SocketAddr) -> io::Result<()> {
        if sa.port() == 0 {
            return Ok(());
        }
        for id in self.sources.ids() {
            let Some(Source::Datagram(d)) = self.sources.get(id) else {
                continue;
            };
            let Ok(bound) = d.sock.local_addr() else {
                continue;
            };
            if bound.port() == sa.port()
                && bound.is_ipv4() == sa.is_ipv4()
                && (bound.ip() == sa.ip()
                    || bound.ip().is_unspecified()
                    || sa.ip().is_unspecified())
            {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "it is the same port as {}, already opened by handler `{}` of this config",
                        d.url, self.instances[d.instance].name
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn add_signal_pipe(&mut self, read: UnixStream) -> io::Result<()> {
        read.set_nonblocking(true)?;
        self.register(Source::Signal(read), true, false).map(drop)
    }

    /// Closes every listener and datagram socket (shutdown: stop accepting).
    pub(crate) fn close_listeners(&mut self) {
        for id in self.sources.ids() {
            if matches!(
                self.sources.get(id),
                Some(Source::Listener(_) | Source::Datagram(_))
            ) {
                if let Some(Source::Datagram(d)) = self.remove_source(id) {
                    if d.dropped > 0 || d.oversize > 0 {
                        log::info!(
                            "{}: closed {}: {} datagrams dropped on send (kernel buffer full), {} received over max_frame ({} bytes) dropped",
                            self.instances[d.instance].name,
                            d.url,
                            d.dropped,
                            d.oversize,
                            d.max_datagram
                        );
                    }
                }
            }
        }
    }

    /// A received datagram of `len` bytes did not fit in `max_datagram`:
    /// count it and say so at debug level (at most once a second per socket).
    pub(crate) fn datagram_too_big(&mut self, id: u64, len: usize, peer: &abi::loopd_addr) {
        let Some(Source::Datagram(d)) = self.sources.get_mut(id) else {
            return;
        };
        d.oversize += 1;
        if let Some(n) = d.oversize_log.allow(Instant::now()) {
            let from = peer
                .to_socket_addr()
                .map_or_else(|| "an unknown sender".to_string(), |a| a.to_string());
            log::debug!(
                "{}: {}: dropped a datagram of {len} bytes from {from}: over max_frame ({} bytes); {} dropped so far ({n} similar messages suppressed)",
                self.instances[d.instance].name,
                d.url,
                d.max_datagram,
                d.oversize
            );
        }
    }

    /// Accepts what a listener has pending; queues `on_open` for each.
    pub(crate) fn accept(&mut self, id: u64) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let Some(Source::Listener(l)) = self.sources.get(id) else {
                return;
            };
            if l.paused {
                return;
            }
            let (instance, transport, url) = (l.instance, l.transport, l.url.clone());
            let (fd, peer) = match sys::accept(l.fd.as_raw_fd()) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if sys::is_transient_accept_error(&e) => continue,
                Err(e) if sys::is_resource_exhaustion(&e) => {
                    let name = &self.instances[instance].name;
                    if let Some(n) = self.full_warning.allow(Instant::now()) {
                        log::warn!(
                            "{name}: accept on {}: {e}; pausing this listener for {}ms ({n} similar warnings suppressed)",
                            url.to_str().unwrap_or("?"),
                            ACCEPT_BACKOFF.as_millis()
                        );
                    }
                    self.pause_listener(id);
                    return;
                }
                Err(e) => {
                    log::error!(
                        "{}: accept on {}: {e}",
                        self.instances[instance].name,
                        url.to_str().unwrap_or("?")
                    );
                    self.pause_listener(id);
                    return;
                }
            };
            if self.conns >= self.cfg.max_connections {
                if let Some(n) = self.full_warning.allow(Instant::now()) {
                    log::warn!(
                        "max_connections ({}) reached: refusing a connection on {} ({n} similar warnings suppressed)",
                        self.cfg.max_connections,
                        url.to_str().unwrap_or("?")
                    );
                }
                drop(fd);
                continue;
            }
            if transport == abi::LOOPD_TRANSPORT_TCP {
                sys::set_nodelay(fd.as_raw_fd());
            }
            let local = sys::local_addr(fd.as_raw_fd());
            let conn = self.new_conn(
                instance,
                Some(fd),
                transport,
                abi::LOOPD_ORIGIN_ACCEPTED,
                peer,
                local,
                url,
            );
            match self.register(Source::Conn(conn), true, false) {
                Ok(cid) => {
                    self.conns += 1;
                    self.pending.push_back(Deferred::Open(cid));
                }
                Err(e) => log::warn!("registering an accepted connection: {e}"),
            }
        }
    }

    fn pause_listener(&mut self, id: u64) {
        let Some(Source::Listener(l)) = self.sources.get_mut(id) else {
            return;
        };
        l.paused = true;
        if let Err(e) = self.poll.modify(l.fd.as_fd(), id, false, false) {
            log::warn!("pausing listener: {e}");
        }
        self.timers.set(
            Instant::now() + ACCEPT_BACKOFF,
            TimerKind::ResumeListener { listener: id },
        );
    }

    pub(crate) fn resume_listener(&mut self, id: u64) {
        let Some(Source::Listener(l)) = self.sources.get_mut(id) else {
            return;
        };
        l.paused = false;
        if let Err(e) = self.poll.modify(l.fd.as_fd(), id, true, false) {
            log::warn!("resuming listener: {e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_conn(
        &self,
        instance: usize,
        fd: Option<OwnedFd>,
        transport: u32,
        origin: u32,
        peer: abi::loopd_addr,
        local: abi::loopd_addr,
        endpoint: Rc<CStr>,
    ) -> Conn {
        let info = &self.instances[instance];
        Conn {
            fd,
            instance,
            state: std::ptr::null_mut(),
            framing: info.framing,
            max_frame: info.max_frame,
            high_watermark: info.high_watermark,
            low_watermark: info.low_watermark,
            transport,
            origin,
            peer,
            local,
            endpoint,
            phase: Phase::Open,
            known: false,
            opened: false,
            inbuf: Vec::new(),
            outq: OutQueue::default(),
            read_eof: false,
            eof_done: false,
            paused: false,
            want_writable: false,
            interest: (false, false),
            close_reason: 0,
            close_timer: None,
            skipping: None,
            sent_pass: 0,
            deferred: false,
        }
    }

    // ---------------------------------------------------------------------
    // Output
    // ---------------------------------------------------------------------

    /// `send`/`sendv`: all of `parts` or nothing.
    pub(crate) fn send(&mut self, instance: usize, id: u64, parts: &[&[u8]]) -> i32 {
        let (pass, current) = (self.pass, self.current);
        let c = match self.owned_conn(instance, id) {
            Ok(c) => c,
            Err(status) => return status,
        };
        if matches!(c.phase, Phase::Closing | Phase::Closed) {
            return abi::LOOPD_ERR_CLOSED;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return abi::LOOPD_OK;
        }
        if c.outq.len() >= c.high_watermark {
            c.want_writable = true;
            return abi::LOOPD_ERR_AGAIN;
        }
        // A reply (a send to the connection being handled) is written at
        // once, the first one in a pass. Other small sends are queued and
        // written together at the end of the pass (`flush_deferred`): the
        // lines a chat member gets from several senders in one pass, or
        // the responses to pipelined requests, become one sendmsg.
        let reply = id == current;
        let mut immediate = c.outq.is_empty()
            && c.phase == Phase::Open
            && ((reply && c.sent_pass != pass) || total > DEFER_LIMIT);
        if c.deferred && c.outq.len() + total > DEFER_LIMIT {
            // Coalesced enough: write it now rather than let it pile up
            // (a handler sending a lot in one hook meets the kernel's
            // buffer first, and loopd's queue only after that, as without
            // deferral).
            c.deferred = false;
            let fd = c.fd.as_ref().expect("open connection has an fd");
            match c.outq.flush(fd) {
                Ok(_) => immediate = c.outq.is_empty(),
                Err(e) => {
                    c.outq.clear();
                    return self.write_failed(instance, id, &e);
                }
            }
        }
        let mut written = 0;
        if immediate {
            c.sent_pass = pass;
            let fd =
                c.fd.as_ref()
                    .expect("open connection has an fd")
                    .as_raw_fd();
            let result = if parts.len() == 1 {
                sys::send(fd, parts[0])
            } else {
                // Up to 8 parts on the stack; sendv writes at most that many
                // at once anyway, and queues the rest below.
                let mut iov = [std::io::IoSlice::new(&[]); 8];
                let mut n = 0;
                for p in parts.iter().filter(|p| !p.is_empty()).take(iov.len()) {
                    iov[n] = std::io::IoSlice::new(p);
                    n += 1;
                }
                sys::sendv(fd, &iov[..n])
            };
            match result {
                Ok(n) => written = n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    log::debug!(
                        "{}: write to connection {id}: {e}",
                        self.instances[instance].name
                    );
                    self.begin_close(id, true, abi::LOOPD_REASON_ERROR);
                    return abi::LOOPD_ERR_CLOSED;
                }
            }
        }
        if written < total {
            let mut skip = written;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                c.outq.push(&part[skip..]);
                skip = 0;
            }
            let was_paused = c.paused;
            if c.outq.len() >= c.high_watermark {
                c.paused = true;
            }
            // Not written because of the pass (not because the kernel was
            // full, and no write interest yet): flushed at the end of it.
            let newly_deferred = !immediate && !c.deferred && !c.interest.1;
            if newly_deferred {
                c.deferred = true;
            }
            // Deferred output needs no write interest: only a partial write
            // or a pause changes what the poller must watch.
            let recheck = immediate || c.paused != was_paused || !c.deferred;
            if newly_deferred {
                self.dirty.push(id);
            }
            if recheck {
                self.update_interest(id);
            }
        }
        abi::LOOPD_OK
    }

    /// `send_file`: writes what the socket takes of a file range now, with
    /// sendfile(2); never queues. Owes `on_writable` when it wrote less
    /// than asked (the connection then watches for writability even with an
    /// empty queue).
    pub(crate) fn send_file(
        &mut self,
        instance: usize,
        id: u64,
        file: std::os::fd::RawFd,
        offset: u64,
        len: u64,
    ) -> Result<u64, i32> {
        let c = self.owned_conn(instance, id)?;
        match c.phase {
            Phase::Open => {}
            // Nothing can be written before the connect completes: on_open,
            // then on_writable, follow it.
            Phase::Connecting => {
                c.want_writable = true;
                return Err(abi::LOOPD_ERR_AGAIN);
            }
            Phase::Closing | Phase::Closed => return Err(abi::LOOPD_ERR_CLOSED),
        }
        if len == 0 {
            return Ok(0);
        }
        if !c.outq.is_empty() {
            // Queued bytes go first: on_writable once they have drained
            // (below the low watermark), then the handler tries again.
            c.want_writable = true;
            self.update_interest(id);
            return Err(abi::LOOPD_ERR_AGAIN);
        }
        let sock =
            c.fd.as_ref()
                .expect("open connection has an fd")
                .as_raw_fd();
        // At most 1 GiB per call (sendfile's own limit is about 2 GiB).
        let want = len.min(1 << 30) as usize;
        let result = loop {
            match sys::sendfile(sock, file, offset, want) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(0) => Err(abi::LOOPD_ERR_IO),
            Ok(n) => {
                if (n as u64) < len {
                    c.want_writable = true;
                    self.update_interest(id);
                }
                Ok(n as u64)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.want_writable = true;
                self.update_interest(id);
                Err(abi::LOOPD_ERR_AGAIN)
            }
            Err(e) if sys::is_socket_error(&e) => Err(self.write_failed(instance, id, &e)),
            Err(e) => {
                log::debug!(
                    "{}: sendfile to connection {id}: {e}",
                    self.instances[instance].name
                );
                Err(abi::LOOPD_ERR_IO)
            }
        }
    }

    /// A write to `id` failed: close it and tell the sender.
    fn write_failed(&mut self, instance: usize, id: u64, e: &io::Error) -> i32 {
        log::debug!(
            "{}: write to connection {id}: {e}",
            self.instances[instance].name
        );
        self.begin_close(id, true, abi::LOOPD_REASON_ERROR);
        abi::LOOPD_ERR_CLOSED
    }

    /// Writes what sends deferred to the end of the pass, as a writable
    /// event would (resuming input, owing `on_writable`, finishing a close).
    pub(crate) fn flush_deferred(&mut self, id: u64) {
        let Some(c) = conn_in(&mut self.sources, id) else {
            return;
        };
        if !c.deferred {
            return;
        }
        c.deferred = false;
        self.conn_writable(id);
    }

    /// Writes queued output after a writable event; finishes connects.
    pub(crate) fn conn_writable(&mut self, id: u64) {
        let Some(c) = conn_in(&mut self.sources, id) else {
            return;
        };
        if c.phase == Phase::Connecting {
            let fd = c.fd.as_ref().expect("connecting socket has an fd");
            match sys::take_error(fd.as_raw_fd()) {
                Ok(None) => {
                    c.phase = Phase::Open;
                    c.local = sys::local_addr(fd.as_raw_fd());
                    self.pending.push_back(Deferred::Open(id));
                }
                Ok(Some(e)) | Err(e) => {
                    log::debug!(
                        "{}: connect to {}: {e}",
                        self.instances[c.instance].name,
                        c.endpoint.to_str().unwrap_or("?")
                    );
                    c.outq.clear();
                    self.begin_close(id, true, abi::LOOPD_REASON_CONNECT_FAILED);
                    return;
                }
            }
        }
        let Some(c) = conn_in(&mut self.sources, id) else {
            return;
        };
        // Whatever was deferred goes out now too.
        c.deferred = false;
        let Some(fd) = &c.fd else { return };
        if let Err(e) = c.outq.flush(fd) {
            log::debug!(
                "{}: write to connection {id}: {e}",
                self.instances[c.instance].name
            );
            c.outq.clear();
            self.begin_close(id, true, abi::LOOPD_REASON_ERROR);
            return;
        }
        let below_low = c.outq.len() < c.low_watermark;
        if below_low && c.paused {
            c.paused = false;
            self.pending.push_back(Deferred::Input(id));
        }
        if below_low && c.want_writable && c.phase == Phase::Open {
            c.want_writable = false;
            self.pending.push_back(Deferred::Writable(id));
        }
        if c.phase == Phase::Closing && c.outq.is_empty() {
            self.pending.push_back(Deferred::Close(id));
        }
        self.update_interest(id);
    }

    // ---------------------------------------------------------------------
    // Closing
    // ---------------------------------------------------------------------

    /// The host's `close`.
    pub(crate) fn close(&mut self, instance: usize, id: u64, mode: u32) -> i32 {
        let abort = match mode {
            abi::LOOPD_CLOSE_FLUSH => false,
            abi::LOOPD_CLOSE_ABORT => true,
            _ => return abi::LOOPD_ERR_INVALID,
        };
        if let Err(status) = self.owned_conn(instance, id) {
            return status;
        }
        self.begin_close(id, abort, abi::LOOPD_REASON_LOCAL);
        abi::LOOPD_OK
    }

    /// Starts closing a connection: no more input; with `abort` the queue is
    /// dropped, otherwise it drains first (bounded by `close_timeout`).
    /// `on_close` follows through `pending`. Closing twice keeps the first
    /// reason; an abort overrides a flush in progress.
    pub(crate) fn begin_close(&mut self, id: u64, abort: bool, reason: i32) {
        let close_timeout = self.cfg.close_timeout;
        let Some(c) = self.conn_mut(id) else { return };
        match c.phase {
            Phase::Closed => return,
            Phase::Closing => {
                if !abort || c.outq.is_empty() {
                    return;
                }
                c.outq.clear();
                self.pending.push_back(Deferred::Close(id));
            }
            Phase::Open | Phase::Connecting => {
                // Output queued before a connect finished has nowhere to go.
                let unconnected = c.phase == Phase::Connecting;
                c.phase = Phase::Closing;
                c.close_reason = reason;
                c.inbuf = Vec::new();
                if abort || unconnected || c.outq.is_empty() || c.fd.is_none() {
                    c.outq.clear();
                    self.pending.push_back(Deferred::Close(id));
                } else {
                    let t = self.timers.set(
                        Instant::now() + close_timeout,
                        TimerKind::CloseTimeout { conn: id },
                    );
                    if let Some(c) = self.conn_mut(id) {
                        c.close_timer = Some(t);
                    }
                }
            }
        }
        self.update_interest(id);
    }

    /// A flush-before-close ran out of time.
    pub(crate) fn close_timed_out(&mut self, id: u64) {
        let Some(c) = conn_in(&mut self.sources, id) else {
            return;
        };
        if c.phase != Phase::Closing {
            return;
        }
        log::debug!(
            "{}: connection {id}: flush before close timed out with {} bytes unsent",
            self.instances[c.instance].name,
            c.outq.len()
        );
        c.close_timer = None;
        c.close_reason = abi::LOOPD_REASON_TIMEOUT;
        c.outq.clear();
        self.pending.push_back(Deferred::Close(id));
        self.update_interest(id);
    }

    /// Releases the socket of a connection whose `on_close` is due. Returns
    /// what the dispatcher needs to deliver it, or `None` if already done.
    pub(crate) fn release_conn(
        &mut self,
        id: u64,
    ) -> Option<(usize, *mut std::ffi::c_void, i32, bool)> {
        let c = self.conn_mut(id)?;
        if c.phase == Phase::Closed {
            return None;
        }
        c.phase = Phase::Closed;
        let timer = c.close_timer.take();
        let out = (c.instance, c.state, c.close_reason, c.known);
        self.deregister(id);
        if let Some(c) = self.conn_mut(id) {
            c.fd = None;
            c.outq.clear();
            c.inbuf = Vec::new();
        }
        if let Some(t) = timer {
            self.timers.cancel(t);
        }
        self.conns -= 1;
        Some(out)
    }

    // ---------------------------------------------------------------------
    // Timers, connect, datagrams
    // ---------------------------------------------------------------------

    pub(crate) fn timer_set(
        &mut self,
        instance: usize,
        delay_ms: u64,
        user_data: u64,
    ) -> Result<u64, i32> {
        if self.timers.len() >= MAX_TIMERS {
            return Err(abi::LOOPD_ERR_LIMIT);
        }
        Ok(self.timers.set(
            timer::deadline_after(Instant::now(), delay_ms),
            TimerKind::Handler {
                instance,
                user_data,
            },
        ))
    }

    pub(crate) fn timer_cancel(&mut self, instance: usize, id: u64) -> i32 {
        match self.timers.get(id) {
            Some(TimerKind::Handler {
                instance: owner, ..
            }) if owner == instance => {
                self.timers.cancel(id);
                abi::LOOPD_OK
            }
            _ => abi::LOOPD_ERR_NO_SUCH_TIMER,
        }
    }

    pub(crate) fn connect(&mut self, instance: usize, url: &str) -> Result<u64, i32> {
        if self.shutdown_deadline.is_some() {
            return Err(abi::LOOPD_ERR_CLOSED);
        }
        let target: ListenAddr = url.parse().map_err(|_| abi::LOOPD_ERR_INVALID)?;
        if self.conns >= self.cfg.max_connections {
            return Err(abi::LOOPD_ERR_LIMIT);
        }
        let (result, transport, peer) = match &target {
            ListenAddr::Tcp(sa) => (
                sys::connect_tcp(sa),
                abi::LOOPD_TRANSPORT_TCP,
                abi::loopd_addr::from_socket_addr(*sa),
            ),
            ListenAddr::Unix(p) => (
                sys::connect_unix(p),
                abi::LOOPD_TRANSPORT_UNIX,
                abi::loopd_addr::unix(),
            ),
            ListenAddr::Udp(_) => return Err(abi::LOOPD_ERR_INVALID),
        };
        let endpoint = listener::cstr(target.to_string());
        let name = self.instances[instance].name.clone();
        let id = match result {
            Ok(fd) => {
                let mut conn = self.new_conn(
                    instance,
                    Some(fd),
                    transport,
                    abi::LOOPD_ORIGIN_CONNECTED,
                    peer,
                    Default::default(),
                    endpoint,
                );
                conn.phase = Phase::Connecting;
                conn.known = true;
                self.register(Source::Conn(conn), false, true)
                    .map_err(|e| {
                        log::warn!("{name}: connect to {url}: {e}");
                        abi::LOOPD_ERR_IO
                    })?
            }
            Err(e) => {
                // Failed at once (e.g. a unix socket nobody listens on): the
                // id is still handed out and on_close reports the failure.
                log::debug!("{name}: connect to {url}: {e}");
                let mut conn = self.new_conn(
                    instance,
                    None,
                    transport,
                    abi::LOOPD_ORIGIN_CONNECTED,
                    peer,
                    Default::default(),
                    endpoint,
                );
                conn.phase = Phase::Closing;
                conn.known = true;
                conn.close_reason = abi::LOOPD_REASON_CONNECT_FAILED;
                let id = self
                    .register(Source::Conn(conn), false, false)
                    .map_err(|_| abi::LOOPD_ERR_IO)?;
                self.pending.push_back(Deferred::Close(id));
                id
            }
        };
        self.conns += 1;
        Ok(id)
    }

    pub(crate) fn output_queued(&mut self, instance: usize, id: u64) -> Result<usize, i32> {
        self.owned_conn(instance, id).map(|c| c.outq.len())
    }

    pub(crate) fn send_datagram(
        &mut self,
        instance: usize,
        id: u64,
        to: &abi::loopd_addr,
        data: &[u8],
    ) -> i32 {
        let d = match self.sources.get_mut(id) {
            Some(Source::Datagram(d)) if d.instance == instance => d,
            Some(Source::Conn(c)) if c.instance == instance => return abi::LOOPD_ERR_UNSUPPORTED,
            _ => return abi::LOOPD_ERR_NO_SUCH_CONN,
        };
        let Some(to) = to.to_socket_addr() else {
            return abi::LOOPD_ERR_INVALID;
        };
        let name = &self.instances[instance].name;
        loop {
            return match d.sock.send_to(data, to) {
                Ok(_) => abi::LOOPD_OK,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if sys::is_send_buffer_full(&e) => {
                    // Never queued: a datagram the kernel cannot take now is
                    // dropped, counted, and the handler told (AGAIN).
                    d.dropped += 1;
                    if let Some(n) = d.dropped_log.allow(Instant::now()) {
                        log::warn!(
                            "{name}: {}: kernel send buffer full ({e}): dropped a datagram to {to}; {} dropped so far ({n} similar warnings suppressed)",
                            d.url,
                            d.dropped
                        );
                    }
                    abi::LOOPD_ERR_AGAIN
                }
                Err(e) if sys::is_broadcast_refused(&e) && !d.broadcast => {
                    if !d.broadcast_warned {
                        d.broadcast_warned = true;
                        log::error!(
                            "{name}: cannot send from {} to {to}: the kernel refused ({e}); \
                             a broadcast address needs SO_BROADCAST: add `broadcast = true` \
                             to the [[handler]] entry of `{name}` (logged once per socket)",
                            d.url
                        );
                    }
                    abi::LOOPD_ERR_IO
                }
                Err(e) => {
                    if let Some(n) = d.error_log.allow(Instant::now()) {
                        log::debug!(
                            "{name}: send_datagram from {} to {to}: {e} ({n} similar messages suppressed)",
                            d.url
                        );
                    }
                    abi::LOOPD_ERR_IO
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn core_with(broadcast: bool, max_frame: usize) -> Core {
        let mut core = Core::new(RuntimeConfig::default()).unwrap();
        core.instances.push(InstanceInfo {
            name: "u".into(),
            framing: FramingKind::Raw,
            max_frame,
            high_watermark: 2,
            low_watermark: 1,
            broadcast,
        });
        core
    }

    fn udp(core: &mut Core, addr: &str) -> Bound {
        core.add_listener(&ListenAddr::Udp(addr.parse().unwrap()), 0)
            .unwrap()
    }

    fn datagram(core: &Core, id: u64) -> &Datagram {
        match core.sources.get(id) {
            Some(Source::Datagram(d)) => d,
            _ => panic!("not a datagram socket"),
        }
    }

    #[test]
    fn udp_sockets_over_ipv4_and_ipv6() {
        let mut core = core_with(false, 1 << 20);
        let v4 = udp(&mut core, "127.0.0.1:0");
        let v6 = udp(&mut core, "[::1]:0");
        assert_eq!(v4.transport, abi::LOOPD_TRANSPORT_UDP);
        assert!(v4.url.starts_with("udp://127.0.0.1:") && !v4.url.ends_with(":0"));
        assert!(v6.url.starts_with("udp://[::1]:"), "{}", v6.url);
        assert_eq!(v6.local.family, abi::LOOPD_AF_INET6);
        // The read limit is the handler's max_frame, at most the read buffer.
        assert_eq!(datagram(&core, v4.id).max_datagram, crate::SCRATCH_SIZE);
        let mut small = core_with(false, 100);
        let b = udp(&mut small, "127.0.0.1:0");
        assert_eq!(datagram(&small, b.id).max_datagram, 100);
    }

    #[test]
    fn the_same_udp_port_twice_in_one_config_is_named() {
        let mut core = core_with(false, 1 << 20);
        let b = udp(&mut core, "0.0.0.0:0");
        let port = b.url.rsplit(':').next().unwrap();
        let err = core
            .add_listener(
                &ListenAddr::Udp(format!("127.0.0.1:{port}").parse().unwrap()),
                0,
            )
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().contains("already opened by handler `u`"),
            "{err}"
        );
    }

    #[test]
    fn sending_to_a_broadcast_address_needs_the_broadcast_key() {
        let rx = UdpSocket::bind("0.0.0.0:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let to: SocketAddr = format!("127.255.255.255:{}", rx.local_addr().unwrap().port())
            .parse()
            .unwrap();
        let to = abi::loopd_addr::from_socket_addr(to);

        let mut core = core_with(false, 1 << 20);
        let b = udp(&mut core, "127.0.0.1:0");
        assert!(!datagram(&core, b.id).sock.broadcast().unwrap());
        assert_eq!(core.send_datagram(0, b.id, &to, b"x"), abi::LOOPD_ERR_IO);
        assert!(
            datagram(&core, b.id).broadcast_warned,
            "the error was logged"
        );
        assert_eq!(core.send_datagram(0, b.id, &to, b"x"), abi::LOOPD_ERR_IO);

        let mut core = core_with(true, 1 << 20);
        let b = udp(&mut core, "127.0.0.1:0");
        assert!(
            datagram(&core, b.id).sock.broadcast().unwrap(),
            "SO_BROADCAST set"
        );
        assert_eq!(core.send_datagram(0, b.id, &to, b"hello"), abi::LOOPD_OK);
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from.to_string(), b.url.strip_prefix("udp://").unwrap());
    }

    #[test]
    fn send_datagram_checks_ids_and_addresses() {
        let mut core = core_with(false, 1 << 20);
        let b = udp(&mut core, "127.0.0.1:0");
        let to = abi::loopd_addr::from_socket_addr("127.0.0.1:9".parse().unwrap());
        assert_eq!(
            core.send_datagram(1, b.id, &to, b"x"),
            abi::LOOPD_ERR_NO_SUCH_CONN,
            "another instance's socket"
        );
        assert_eq!(
            core.send_datagram(0, b.id + (1 << 32), &to, b"x"),
            abi::LOOPD_ERR_NO_SUCH_CONN,
            "stale id"
        );
        let unix = abi::loopd_addr::unix();
        assert_eq!(
            core.send_datagram(0, b.id, &unix, b"x"),
            abi::LOOPD_ERR_INVALID
        );
        let huge = vec![0u8; 70_000];
        assert_eq!(
            core.send_datagram(0, b.id, &to, &huge),
            abi::LOOPD_ERR_IO,
            "EMSGSIZE"
        );
        assert_eq!(
            datagram(&core, b.id).dropped,
            0,
            "only a full buffer counts as dropped"
        );
    }

    #[test]
    fn oversized_datagrams_are_counted() {
        let mut core = core_with(false, 100);
        let b = udp(&mut core, "127.0.0.1:0");
        let peer = abi::loopd_addr::from_socket_addr("127.0.0.1:5".parse().unwrap());
        core.datagram_too_big(b.id, 101, &peer);
        core.datagram_too_big(b.id, 5000, &peer);
        assert_eq!(datagram(&core, b.id).oversize, 2);
    }
}
