//! A stream connection, accepted or outbound: its record, its life
//! (open, closing, released) and outbound connects. Reading and framing its
//! input is in `input.rs`, writing its output (and `send_file`) in
//! `output.rs`.
//!
//! Every operation is a method on [`Conn`] that takes the connection's id
//! and the [`Shared`] loop state beside it; none calls a hook. What the
//! handler must hear about is returned ([`Read`], [`Input`]) or queued in
//! `Shared::pending`, and the dispatcher delivers it. All I/O goes through
//! the connection's [`Transport`].

mod handshake;
pub(crate) mod input;
use handshake::tls_client_setup;
mod output;

use std::ffi::{c_void, CStr};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Instant;

use loopd_handler_api::abi::{self, loopd_addr, loopd_conn_info};
use loopd_handler_api::framing::Skipping;

use crate::config::{FramingKind, Limits, ListenAddr};
use crate::core::{Core, Deferred, Shared};
use crate::event_loop::Ready;
use crate::instance::{Instance, InstanceId};
use crate::source::queue::OutQueue;
use crate::source::Source;
use crate::stats::{self, Counter, Counters, Scope};
use crate::sys;
use crate::timer::TimerKind;
use crate::transport::Transport;

pub use input::next_frame;
pub(crate) use input::{Input, Read};

pub(crate) fn peer_text(a: &loopd_addr) -> String {
    match a.to_socket_addr() {
        Some(sa) => sa.to_string(),
        None if a.family == abi::LOOPD_AF_UNIX => "unix peer".to_string(),
        None => "unknown peer".to_string(),
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Outbound, waiting for the connect to finish.
    Connecting,
    /// Accepted, its TLS handshake under way (bounded by
    /// `tls_handshake_timeout`): the handler has not heard of it yet.
    Handshaking,
    /// Reading and writing.
    Open,
    /// Closing: no more input; output drains (FLUSH) before `on_close`.
    Closing,
    /// `on_close` is being delivered; the id is about to be released.
    Closed,
}

/// Where a half-close (`shutdown_write`) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShutWrite {
    /// Not asked for.
    No,
    /// Asked for: done once the output queue is flushed.
    Pending,
    /// The sending side is shut down.
    Done,
}

/// What an outbound connection may set for itself (`connect_with`);
/// `None` keeps the instance's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConnOptions {
    pub(crate) framing: Option<FramingKind>,
    pub(crate) max_frame: Option<usize>,
    pub(crate) high_watermark: Option<usize>,
    pub(crate) low_watermark: Option<usize>,
    /// Read on while the output queue is full (`LOOPD_CONNECT_KEEP_READING`).
    pub(crate) keep_reading: bool,
    /// `tls://` only: the DNS name the server's certificate must carry.
    pub(crate) server_name: Option<String>,
}

/// A connection whose `on_close` is due, released from its socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Released {
    pub(crate) instance: InstanceId,
    pub(crate) state: *mut c_void,
    pub(crate) reason: i32,
    /// The handler was given the id: it is owed `on_close`.
    pub(crate) known: bool,
}

/// A stream connection, accepted or outbound.
#[derive(Debug)]
pub(crate) struct Conn {
    /// `None` once released, or when an outbound connect failed at once.
    pub(crate) io: Option<Transport>,
    /// The owning handler instance.
    pub(crate) instance: InstanceId,
    /// The instance's name and counters.
    scope: Rc<Scope>,
    /// The accepting listener's counters (`None` for outbound connections).
    listener: Option<Rc<Scope>>,
    /// The handler's per-connection state.
    pub(crate) state: *mut c_void,
    framing: FramingKind,
    max_frame: usize,
    high_watermark: usize,
    low_watermark: usize,
    /// Not paused by its own full output queue (`LOOPD_CONNECT_KEEP_READING`).
    keep_reading: bool,
    transport: u32,
    origin: u32,
    peer: loopd_addr,
    local: loopd_addr,
    /// Listener URL or connect target.
    endpoint: Rc<CStr>,
    phase: Phase,
    /// The handler holds the id (from `on_open` or `connect`): `on_close` is owed.
    known: bool,
    /// `on_open` was delivered.
    opened: bool,
    /// Bytes of a partial frame (only while one is pending).
    inbuf: Vec<u8>,
    outq: OutQueue,
    /// The peer sent EOF.
    read_eof: bool,
    /// `on_eof` (or the default close) was delivered.
    eof_done: bool,
    /// Input is paused because the output queue reached the high watermark.
    paused: bool,
    /// Input is paused by the handler (`pause_read`).
    held: bool,
    /// Half-close asked for (`shutdown_write`), and whether it is done.
    shut_write: ShutWrite,
    /// A send returned AGAIN: `on_writable` is owed once below the low watermark.
    want_writable: bool,
    /// The (readable, writable) interest registered with the poller.
    pub(crate) interest: (bool, bool),
    /// The peer hung up while the handler held reading paused: the socket
    /// is registered oneshot with no interest (see [`Conn::park_hangup`]).
    parked: bool,
    /// The reason `on_close` will carry.
    close_reason: i32,
    /// The handler closed with `LOOPD_CLOSE_RESET`: the peer gets a reset.
    reset: bool,
    /// The flush-before-close deadline timer, if armed.
    close_timer: Option<u64>,
    /// The input buffer's capacity as counted in `Shared::buffered_input`.
    inbuf_held: usize,
    /// The peer address counted against `max_connections_per_peer`.
    peer_key: Option<std::net::IpAddr>,
    /// Close after this long without traffic (the instance's setting).
    idle_timeout: Option<std::time::Duration>,
    /// The pass in which it last read or wrote anything.
    last_active: Instant,
    /// An oversize frame the handler chose to skip is being discarded.
    skipping: Option<Skipping>,
    /// The pass of the last send written at once (see [`Conn::send`]).
    sent_pass: u32,
    /// Output is queued for the end-of-pass flush (no write interest needed).
    deferred: bool,
}

impl Conn {
    /// A connection of `inst` over `io`, not yet registered.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        instance: InstanceId,
        inst: &Instance,
        listener: Option<Rc<Scope>>,
        io: Option<Transport>,
        transport: u32,
        origin: u32,
        peer: loopd_addr,
        local: loopd_addr,
        endpoint: Rc<CStr>,
    ) -> Conn {
        let s = &inst.settings;
        Conn {
            io,
            instance,
            scope: inst.scope.clone(),
            listener,
            state: std::ptr::null_mut(),
            framing: s.framing,
            max_frame: s.max_frame,
            high_watermark: s.high_watermark,
            keep_reading: false,
            low_watermark: s.low_watermark,
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
            held: false,
            shut_write: ShutWrite::No,
            want_writable: false,
            interest: (false, false),
            parked: false,
            close_reason: 0,
            close_timer: None,
            inbuf_held: 0,
            peer_key: None,
            idle_timeout: s.idle_timeout,
            last_active: Instant::now(),
            skipping: None,
            sent_pass: 0,
            deferred: false,
            reset: false,
        }
    }

    #[inline]
    fn count(&self, which: impl Fn(&Counters) -> &Counter, n: u64) {
        stats::count(&self.scope, self.listener.as_deref(), which, n);
    }

    /// The instance's name, for messages.
    pub(crate) fn name(&self) -> &str {
        &self.scope.name
    }

    /// Its instance's counters and, if a listener accepted it, the
    /// listener's (by address, for `Runtime::stats`).
    pub(crate) fn scopes(&self) -> (*const Scope, Option<*const Scope>) {
        (
            Rc::as_ptr(&self.scope),
            self.listener.as_ref().map(Rc::as_ptr),
        )
    }

    pub(crate) fn peer(&self) -> &loopd_addr {
        &self.peer
    }

    pub(crate) fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    pub(crate) fn output_queued(&self) -> usize {
        self.outq.len()
    }

    /// The transport holds output the socket has not taken (TLS records).
    fn transport_pending(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.pending_output())
    }

    /// Nothing is left to write: neither queued nor held by the transport.
    pub(crate) fn drained(&self) -> bool {
        self.outq.is_empty() && !self.transport_pending()
    }

    /// Input the transport decrypted that no readiness event will report.
    pub(crate) fn buffered_input(&mut self) -> bool {
        self.can_deliver() && self.io.as_mut().is_some_and(|io| io.buffered_input())
    }

    /// Moves input the transport holds (bounded: rustls keeps at most its
    /// received-plaintext limit) into the input buffer, for
    /// `process_input` to frame.
    pub(crate) fn pull_buffered(&mut self, id: u64, sh: &mut Shared) {
        let mut chunk = [0u8; 4096];
        while !self.read_eof && self.buffered_input() {
            let Some(io) = self.io.as_mut() else { return };
            match io.read(&mut chunk) {
                Ok(0) => {
                    self.read_eof = true;
                    self.update_interest(id, sh);
                }
                Ok(n) => {
                    self.count(|c| &c.bytes_in, n as u64);
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.account_input(sh);
                }
                Err(_) => return,
            }
        }
    }

    /// Whether frames may be handed to the handler now.
    fn can_deliver(&self) -> bool {
        self.phase == Phase::Open && self.opened && !self.paused && !self.held
    }

    /// The interest this connection needs now.
    fn wanted_interest(&self) -> (bool, bool) {
        match self.phase {
            Phase::Connecting => (false, true),
            Phase::Handshaking => (true, self.transport_pending()),
            Phase::Open => (
                !self.paused && !self.held && !self.read_eof,
                // An empty queue with `on_writable` owed: a `send_file`
                // the kernel did not take all of waits for the socket.
                (!self.outq.is_empty() && !self.deferred)
                    || (self.outq.is_empty() && self.want_writable)
                    || self.transport_pending(),
            ),
            Phase::Closing => (
                false,
                (!self.outq.is_empty() && !self.deferred) || self.transport_pending(),
            ),
            Phase::Closed => (false, false),
        }
    }

    /// Brings the poller's interest in line with the connection's state.
    pub(crate) fn update_interest(&mut self, id: u64, sh: &mut Shared) {
        let want = self.wanted_interest();
        if self.parked {
            // Parked after a hang-up: unwatched until there is something
            // to do (a level-triggered registration would report the
            // hang-up again and again).
            if want == (false, false) {
                return;
            }
        } else if want == self.interest {
            return;
        }
        let Some(io) = &self.io else { return };
        match sh.poll.modify(io.fd(), id, want.0, want.1) {
            Ok(()) => {
                self.interest = want;
                self.parked = false;
            }
            Err(e) => {
                log::warn!("poller refused connection {id}: {e}; closing it");
                self.begin_close(id, sh, true, abi::LOOPD_REASON_ERROR);
            }
        }
    }

    /// A readable event on a connection not registered for reading is the
    /// poller's unconditional HUP/ERR (or a stale event from earlier in
    /// this pass): true if the socket really is dead, so it gets closed
    /// instead of reported again and again.
    pub(crate) fn hung_up_unasked(&self, ready: &Ready) -> bool {
        self.phase == Phase::Open && !self.interest.0 && (ready.hup || ready.err)
    }

    /// A hang-up without an error on a connection whose reading the
    /// handler holds paused (`pause_read`), before its EOF was read: the
    /// peer has shut down its side and this side's sending is shut too (or,
    /// for a Unix socket, the peer closed), but what the peer sent before is
    /// still in the kernel's buffer, to be read once reading resumes. The
    /// socket is kept, registered oneshot with no interest, so the
    /// hang-up, which a poller reports whatever the interest, wakes the
    /// loop at most once more; `update_interest` watches it again when
    /// reading resumes. Returns false when the connection must be closed
    /// instead (an error, nothing left to read, output still queued).
    pub(crate) fn park_hangup(&mut self, id: u64, sh: &mut Shared, ready: &Ready) -> bool {
        if ready.err || self.read_eof || !self.held || !self.outq.is_empty() {
            return false;
        }
        if self.parked {
            return true;
        }
        let Some(io) = &self.io else { return false };
        match sh.poll.rearm(io.fd(), id, false, false) {
            Ok(()) => {
                self.parked = true;
                self.interest = (false, false);
                true
            }
            Err(_) => false,
        }
    }
}

impl Conn {
    // ---------------------------------------------------------------------
    // Flow control (ABI 1.3)
    // ---------------------------------------------------------------------

    /// The host's `pause_read`: no more input until `resume_read`.
    pub(crate) fn pause_read(&mut self, id: u64, sh: &mut Shared) -> i32 {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return abi::LOOPD_ERR_CLOSED;
        }
        self.held = true;
        self.update_interest(id, sh);
        abi::LOOPD_OK
    }

    /// The host's `resume_read`: frames already buffered are delivered
    /// after the current hook, and reading goes on.
    pub(crate) fn resume_read(&mut self, id: u64, sh: &mut Shared) -> i32 {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return abi::LOOPD_ERR_CLOSED;
        }
        if self.held {
            self.held = false;
            sh.pending.push_back(Deferred::Input(id));
            self.update_interest(id, sh);
        }
        abi::LOOPD_OK
    }

    /// The host's `shutdown_write`: half-close once the queue is flushed.
    pub(crate) fn shutdown_write(&mut self, id: u64, sh: &mut Shared) -> i32 {
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            return abi::LOOPD_ERR_CLOSED;
        }
        if self.shut_write == ShutWrite::No {
            self.shut_write = ShutWrite::Pending;
            self.finish_shutdown_write(id, sh);
        }
        abi::LOOPD_OK
    }

    /// Shuts the sending side down if a half-close is pending and nothing
    /// is left to write.
    pub(crate) fn finish_shutdown_write(&mut self, id: u64, sh: &mut Shared) {
        if self.shut_write != ShutWrite::Pending || self.phase != Phase::Open || !self.drained() {
            return;
        }
        let Some(io) = &mut self.io else { return };
        match io.shutdown_write() {
            Ok(()) => {
                self.shut_write = ShutWrite::Done;
                // Nothing more to write: an on_writable owed by an earlier
                // AGAIN would only invite a send that fails.
                self.want_writable = false;
                self.update_interest(id, sh);
            }
            Err(e) => {
                log::debug!("{}: shutdown(SHUT_WR) of connection {id}: {e}", self.name());
                self.begin_close(id, sh, true, abi::LOOPD_REASON_ERROR);
            }
        }
    }

    /// Whether sends are refused because the sending side is (being) shut.
    pub(crate) fn write_shut(&self) -> bool {
        self.shut_write != ShutWrite::No
    }

    /// Both directions ended cleanly: the peer's EOF was read, this side's
    /// half-close went out after everything queued, and the hang-up that
    /// follows carries no error. Such a connection is done, not broken.
    pub(crate) fn ended_both_ways(&self, ready: &Ready) -> bool {
        !ready.err && self.read_eof && self.shut_write == ShutWrite::Done && self.drained()
    }
}

impl Conn {
    // ---------------------------------------------------------------------
    // Closing
    // ---------------------------------------------------------------------

    /// The host's `close`.
    pub(crate) fn close(&mut self, id: u64, sh: &mut Shared, mode: u32) -> i32 {
        let abort = match mode {
            abi::LOOPD_CLOSE_FLUSH => false,
            abi::LOOPD_CLOSE_ABORT => true,
            abi::LOOPD_CLOSE_RESET => {
                if self.phase != Phase::Closed {
                    self.reset = true;
                }
                true
            }
            _ => return abi::LOOPD_ERR_INVALID,
        };
        self.begin_close(id, sh, abort, abi::LOOPD_REASON_LOCAL);
        abi::LOOPD_OK
    }

    /// Starts closing: no more input; with `abort` the queue is dropped,
    /// otherwise it drains first (bounded by `close_timeout`). `on_close`
    /// follows through `pending`. Closing twice keeps the first reason; an
    /// abort overrides a flush in progress.
    pub(crate) fn begin_close(&mut self, id: u64, sh: &mut Shared, abort: bool, reason: i32) {
        match self.phase {
            Phase::Closed => return,
            Phase::Closing => {
                if !abort || self.outq.is_empty() {
                    return;
                }
                self.outq.clear();
                sh.pending.push_back(Deferred::Close(id));
            }
            Phase::Open | Phase::Connecting | Phase::Handshaking => {
                // Output queued before a connect finished has nowhere to go.
                let unconnected = matches!(self.phase, Phase::Connecting | Phase::Handshaking);
                if let Some(t) = self.close_timer.take().filter(|_| unconnected) {
                    sh.timers.cancel(t);
                }
                self.phase = Phase::Closing;
                self.close_reason = reason;
                self.inbuf = Vec::new();
                self.account_input(sh);
                if abort || unconnected || self.drained() || self.io.is_none() {
                    self.outq.clear();
                    sh.pending.push_back(Deferred::Close(id));
                } else {
                    self.close_timer = Some(sh.timers.set(
                        Instant::now() + sh.cfg.close_timeout,
                        TimerKind::CloseTimeout { conn: id },
                    ));
                }
            }
        }
        self.update_interest(id, sh);
    }

    /// A flush-before-close ran out of time.
    pub(crate) fn close_timed_out(&mut self, id: u64, sh: &mut Shared) {
        if self.phase != Phase::Closing {
            return;
        }
        log::debug!(
            "{}: connection {id}: flush before close timed out with {} bytes unsent",
            self.name(),
            self.outq.len()
        );
        self.close_timer = None;
        self.close_reason = abi::LOOPD_REASON_TIMEOUT;
        self.outq.clear();
        sh.pending.push_back(Deferred::Close(id));
        self.update_interest(id, sh);
    }

    /// Releases the socket of a connection whose `on_close` is due. Returns
    /// what the dispatcher needs to deliver it, or `None` if already done.
    pub(crate) fn release(&mut self, sh: &mut Shared) -> Option<Released> {
        if self.phase == Phase::Closed {
            return None;
        }
        let flushed = self.close_reason != abi::LOOPD_REASON_ERROR;
        self.phase = Phase::Closed;
        if let Some(mut io) = self.io.take() {
            if self.reset {
                // No TLS close_notify: the stream broke. SO_LINGER 0 makes
                // the close send a reset (TCP); elsewhere it changes nothing.
                crate::sys::linger_zero(io.fd());
            } else if flushed && self.opened {
                io.close_notify();
            }
            if let Err(e) = sh.poll.delete(io.fd()) {
                log::debug!("deregistering a closed connection: {e}");
            }
        }
        self.outq.clear();
        self.inbuf = Vec::new();
        self.account_input(sh);
        if let Some(t) = self.close_timer.take() {
            sh.timers.cancel(t);
        }
        if let Some(ip) = self.peer_key.take() {
            let key = (self.instance, ip);
            if let Some(n) = sh.peers.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    sh.peers.remove(&key);
                }
            }
        }
        sh.conns -= 1;
        self.scope.counters.active.sub(1);
        if let Some(l) = &self.listener {
            l.counters.active.sub(1);
        }
        self.count(|c| c.closed(self.close_reason), 1);
        Some(Released {
            instance: self.instance,
            state: self.state,
            reason: self.close_reason,
            known: self.known,
        })
    }
}

/// The host's `connect` (and `connect_with`): starts an outbound
/// connection for `instance`, with the instance's settings except what
/// `options` sets; the result arrives as `on_open` or `on_close`.
pub(crate) fn connect(
    core: &mut Core,
    instance: InstanceId,
    url: &str,
    options: ConnOptions,
) -> Result<u64, i32> {
    if core.shared.shutdown_deadline.is_some() {
        return Err(abi::LOOPD_ERR_CLOSED);
    }
    let target: ListenAddr = url.parse().map_err(|_| abi::LOOPD_ERR_INVALID)?;
    if core.shared.conns >= core.shared.cfg.max_connections {
        return Err(abi::LOOPD_ERR_LIMIT);
    }
    // Everything is checked before the socket exists: a refused call must
    // not have opened (and dropped) a connection to the target.
    let inst = core.instances.get(instance).ok_or(abi::LOOPD_ERR_INVALID)?;
    let s = &inst.settings;
    if s.max_connections
        .is_some_and(|limit| inst.scope.counters.active.get() >= limit as u64)
    {
        return Err(abi::LOOPD_ERR_LIMIT);
    }
    let limits = Limits {
        max_frame: options.max_frame.unwrap_or(s.max_frame),
        output_high_watermark: options.high_watermark.unwrap_or(s.high_watermark),
        output_low_watermark: options.low_watermark.unwrap_or(s.low_watermark),
    };
    if limits.validate().is_err() {
        return Err(abi::LOOPD_ERR_INVALID);
    }
    let (high, low) = (limits.output_high_watermark, limits.output_low_watermark);
    if options.server_name.is_some() && !matches!(target, ListenAddr::Tls(_)) {
        return Err(abi::LOOPD_ERR_INVALID);
    }
    // Well-formed, but nothing would see it open, close or bring data.
    if !inst.plugin.serves_streams() {
        return Err(abi::LOOPD_ERR_UNSUPPORTED);
    }
    let mut tls = None;
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
        ListenAddr::Tls(sa) => {
            // Refused before the socket exists without CAs to trust.
            let setup = tls_client_setup(inst, sa.ip(), options.server_name.as_deref(), url)?;
            tls = Some(setup);
            (
                sys::connect_tcp(sa),
                abi::LOOPD_TRANSPORT_TLS,
                abi::loopd_addr::from_socket_addr(*sa),
            )
        }
        ListenAddr::Udp(_) => return Err(abi::LOOPD_ERR_INVALID),
    };
    let result = match (result, tls) {
        (Ok(fd), Some(setup)) => setup.transport(fd),
        (r, _) => r.map(Transport::Plain),
    };
    let endpoint = crate::source::listener::cstr(target.to_string());
    let name = inst.name().to_string();
    let new = |io: Option<Transport>| {
        let mut conn = Conn::new(
            instance,
            inst,
            None,
            io,
            transport,
            abi::LOOPD_ORIGIN_CONNECTED,
            peer,
            Default::default(),
            endpoint.clone(),
        );
        conn.known = true;
        conn.framing = options.framing.unwrap_or(conn.framing);
        conn.max_frame = options.max_frame.unwrap_or(conn.max_frame);
        conn.high_watermark = high;
        conn.low_watermark = low;
        conn.keep_reading = options.keep_reading;
        conn
    };
    let id = match result {
        Ok(fd) => {
            let mut conn = new(Some(fd));
            conn.phase = Phase::Connecting;
            core.register(Source::Stream(conn), false, true)
                .map_err(|e| {
                    log::warn!("{name}: connect to {url}: {e}");
                    abi::LOOPD_ERR_IO
                })?
        }
        Err(e) => {
            // Failed at once (e.g. a unix socket nobody listens on): the
            // id is still handed out and on_close reports the failure.
            log::debug!("{name}: connect to {url}: {e}");
            let mut conn = new(None);
            conn.phase = Phase::Closing;
            conn.close_reason = abi::LOOPD_REASON_CONNECT_FAILED;
            let id = core
                .register(Source::Stream(conn), false, false)
                .map_err(|_| abi::LOOPD_ERR_IO)?;
            core.shared.pending.push_back(Deferred::Close(id));
            id
        }
    };
    core.shared.conns += 1;
    if let Some(c) = core.conn(id) {
        c.scope.counters.connected.add(1);
        c.scope.counters.active.add(1);
    }
    Ok(id)
}

/// Counts a connection that was just registered as open.
pub(crate) fn count_accepted(c: &Conn) {
    c.count(|c| &c.accepted, 1);
    c.count(|c| &c.active, 1);
}

impl Conn {
    /// Brings `Shared::buffered_input` in line with this connection's
    /// input buffer (call after every change to it).
    pub(crate) fn account_input(&mut self, sh: &mut Shared) {
        let now = self.inbuf.capacity();
        sh.buffered_input = sh.buffered_input - self.inbuf_held + now;
        self.inbuf_held = now;
    }

    /// Counts the connection against `max_connections_per_peer`.
    pub(crate) fn count_peer(&mut self, ip: std::net::IpAddr, sh: &mut Shared) {
        *sh.peers.entry((self.instance, ip)).or_insert(0) += 1;
        self.peer_key = Some(ip);
    }

    /// Marks the connection active in this pass (idle timeouts).
    #[inline]
    pub(crate) fn touch(&mut self, sh: &Shared) {
        self.last_active = sh.now;
    }
}

/// Closes the connections holding the most unfinished input while all of
/// them together hold more than `max_buffered_input`, each with a
/// (rate-limited) warning: a peer that announces big frames and sends
/// them slowly, or never finishes them, cannot make the process grow, and
/// every other connection keeps being served.
pub(crate) fn enforce_input_budget(core: &mut Core) {
    let max = core.shared.cfg.max_buffered_input;
    while core.shared.buffered_input > max {
        let victim = core
            .sources
            .ids()
            .into_iter()
            .filter_map(|id| core.conn(id).map(|c| (c.inbuf_held, id)))
            .max();
        let Some((held, id)) = victim.filter(|(held, _)| *held > 0) else {
            return;
        };
        let Some((c, sh)) = core.conn_and_shared(id) else {
            return;
        };
        if let Some(n) = sh.budget_warning.allow(sh.now) {
            log::warn!(
                "{}: closing connection {id} from {}: it holds {held} bytes of unfinished input, \
                 and all connections together hold {} (max_buffered_input = {max}) \
                 ({n} similar warnings suppressed)",
                c.name(),
                peer_text(c.peer()),
                sh.buffered_input
            );
        }
        c.begin_close(id, sh, true, abi::LOOPD_REASON_LIMIT);
    }
}

/// Closes every connection of an instance with an idle timeout that has
/// had no traffic for that long (run by the loop's idle sweep timer).
pub(crate) fn close_idle(core: &mut Core) {
    let now = core.shared.now;
    for id in core.sources.ids() {
        let Some((c, sh)) = core.conn_and_shared(id) else {
            continue;
        };
        let Some(limit) = c.idle_timeout else {
            continue;
        };
        if c.phase == Phase::Open && now.saturating_duration_since(c.last_active) >= limit {
            log::debug!(
                "{}: connection {id} from {}: no traffic for {} ms (idle_timeout_ms); closing it",
                c.name(),
                peer_text(c.peer()),
                limit.as_millis()
            );
            c.begin_close(id, sh, false, abi::LOOPD_REASON_IDLE);
        }
    }
}
