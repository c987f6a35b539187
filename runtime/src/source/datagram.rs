//! Bound UDP sockets: receiving datagrams (whole or not at all) and
//! `send_datagram` (never queued: a full kernel buffer drops and counts).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use loopd_handler_api::abi;

use crate::core::{Core, RateLimit};
use crate::instance::InstanceId;
use crate::source::listener::{same_port, Bound};
use crate::source::Source;
use crate::stats::{self, Counter, Counters, Scope};
use crate::sys;

/// A bound UDP socket.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) sock: UdpSocket,
    pub(crate) instance: InstanceId,
    /// The instance's name and counters.
    scope: Rc<Scope>,
    /// This socket's counters, named by the URL actually bound.
    listener: Rc<Scope>,
    /// Largest datagram delivered (the handler's `max_frame`, at most the
    /// read buffer); larger ones are dropped.
    pub(crate) max_datagram: usize,
    /// `SO_BROADCAST` is set (`broadcast = true`).
    broadcast: bool,
    /// The "needs `broadcast = true`" error was logged (once per socket).
    broadcast_warned: bool,
    dropped_log: RateLimit,
    oversize_log: RateLimit,
    error_log: RateLimit,
    /// The batch receive's headers, from the first receive on (a socket
    /// that only sends never has them).
    recv_state: Option<Box<sys::RecvState>>,
    /// The batched send's headers, from the first `send_datagrams` on.
    send_state: Option<Box<sys::SendState>>,
    /// Whether receiving again after a drained batch pays (see [`Drain`]).
    drain: Drain,
}

/// Whether to receive again after a batch that drained the socket, instead
/// of going back to the poller: datagrams may have arrived while the batch
/// was handled (each `sendto` of a relay takes microseconds). A receive
/// again that finds one saves a whole loop pass and a poller wait; one that
/// finds none costs a receive that fails with `EAGAIN`, a third of that or
/// less. So it is done while recent tries found datagrams at least a third
/// of the time: a busy socket is drained until it is empty, one that gets a
/// datagram now and then costs a failed receive only on every
/// [`Drain::PROBE_EVERY`]th batch (1/64 of a syscall per datagram when they
/// come one at a time), the probe that notices when traffic picks up: one
/// that finds datagrams turns the tries back on at once. It never waits:
/// each try is one non-blocking receive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    /// How often recent tries found datagrams, in 1/256 (a moving average
    /// over about 8 tries).
    hit_rate: u16,
    /// Drained batches since the last try (for the probe).
    since_try: u8,
}

impl Default for Drain {
    fn default() -> Drain {
        // Start as if tries paid: a socket under load is drained from its
        // first batch, an idle one learns otherwise within a few tries.
        Drain {
            hit_rate: 256,
            since_try: 0,
        }
    }
}

impl Drain {
    /// A try is made while at least this share (in 1/256) of recent tries
    /// found datagrams.
    const WORTH: u16 = 256 / 3;
    /// Otherwise every this many drained batches, to notice a change.
    const PROBE_EVERY: u8 = 64;

    /// After a batch that drained the socket: receive again now?
    pub(crate) fn try_again(&mut self) -> bool {
        self.since_try = self.since_try.saturating_add(1);
        if self.hit_rate >= Self::WORTH || self.since_try >= Self::PROBE_EVERY {
            self.since_try = 0;
            true
        } else {
            false
        }
    }

    /// What the try found.
    pub(crate) fn tried(&mut self, found: bool) {
        let decayed = self.hit_rate - self.hit_rate / 8;
        self.hit_rate = if found {
            (decayed + 32).max(Self::WORTH)
        } else {
            decayed
        };
    }
}

/// The space between two slots of a batch buffer, past the largest
/// datagram: slots 64 KiB apart would all fall in the same set of every
/// cache level (the set index is below bit 16), so a batch of 30 small
/// datagrams would evict itself before the handler and `sendto` read it
/// back. One cache line more per slot puts each slot in a set of its own.
pub(crate) const SLOT_GAP: usize = 64;

/// What one batch receive gave.
pub(crate) enum Batch {
    /// `count` datagrams arrived, datagram `i` at `i * stride` in the
    /// buffer; those over `max_datagram` have length [`DROPPED`] (counted
    /// and dropped). `drained`: the socket had no more.
    Got {
        instance: InstanceId,
        count: usize,
        stride: usize,
        drained: bool,
    },
    /// Interrupted: receive again.
    Retry,
    /// Nothing more to receive now.
    Stop,
}

/// The length of a datagram of a batch that was dropped as too big.
pub(crate) const DROPPED: usize = usize::MAX;

impl Datagram {
    /// Receives up to `out.len()` datagrams at once (one `recvmmsg` on
    /// Linux): datagram `i` in `buf[i * stride..]` (`stride` is
    /// `max_datagram` plus [`SLOT_GAP`]), its length and sender in `out[i]`.
    /// A datagram over the limit is dropped whole and counted.
    pub(crate) fn recv_batch(
        &mut self,
        id: u64,
        buf: &mut [u8],
        out: &mut [(usize, abi::loopd_addr)],
    ) -> Batch {
        let slot = self.max_datagram.max(1);
        let stride = slot + SLOT_GAP;
        let want = out.len().min(buf.len() / stride).max(1);
        let fd = self.sock.as_raw_fd();
        let state = self.recv_state.get_or_insert_with(sys::RecvState::new);
        match sys::recv_batch(fd, state, buf, stride, slot, &mut out[..want]) {
            Ok(count) => {
                for (len, peer) in &mut out[..count] {
                    if *len > slot {
                        self.too_big(*len, peer);
                        *len = DROPPED;
                    } else {
                        self.count(|c| &c.datagrams_in);
                    }
                }
                Batch::Got {
                    instance: self.instance,
                    count,
                    stride,
                    drained: count < want,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Batch::Stop,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Batch::Retry,
            Err(e) => {
                log::debug!(
                    "{}: receiving datagrams on socket {id}: {e}",
                    self.scope.name
                );
                Batch::Stop
            }
        }
    }

    /// Whether to receive again after a batch that drained the socket.
    pub(crate) fn drain(&mut self) -> &mut Drain {
        &mut self.drain
    }

    fn url(&self) -> &str {
        &self.listener.name
    }

    fn count(&self, which: impl Fn(&Counters) -> &Counter) {
        self.count_n(which, 1);
    }

    fn count_n(&self, which: impl Fn(&Counters) -> &Counter, n: u64) {
        stats::count(&self.scope, Some(&self.listener), which, n);
    }

    /// A received datagram of `len` bytes did not fit in `max_datagram`:
    /// count it and say so at debug level (at most once a second per socket).
    fn too_big(&mut self, len: usize, peer: &abi::loopd_addr) {
        self.count(|c| &c.datagrams_dropped_oversize);
        if let Some(n) = self.oversize_log.allow(Instant::now()) {
            let from = peer
                .to_socket_addr()
                .map_or_else(|| "an unknown sender".to_string(), |a| a.to_string());
            log::debug!(
                "{}: {}: dropped a datagram of {len} bytes from {from}: over max_frame ({} bytes); {} dropped so far ({n} similar messages suppressed)",
                self.scope.name,
                self.url(),
                self.max_datagram,
                self.listener.counters.datagrams_dropped_oversize.get()
            );
        }
    }

    /// `send_datagram` from this socket: one `sendto`, its result told as
    /// it is.
    pub(crate) fn send(&mut self, to: &abi::loopd_addr, data: &[u8]) -> i32 {
        let Some(raw) = sys::SockAddr::from_loopd(to) else {
            return abi::LOOPD_ERR_INVALID;
        };
        loop {
            let e = match sys::send_to(self.sock.as_raw_fd(), &raw, data) {
                Ok(_) => {
                    self.count(|c| &c.datagrams_out);
                    return abi::LOOPD_OK;
                }
                Err(e) => e,
            };
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return self.send_failed(e, to, 1);
        }
    }

    /// `send_datagrams` from this socket: `msgs` in order, [`sys::BATCH`]
    /// at a time (one `sendmmsg` each on Linux, runs of equal-sized
    /// datagrams to one address coalesced by UDP GSO: `sys::SendState`),
    /// each one's status written into it. Returns how many were sent and
    /// the first failure's status (`LOOPD_OK` if none): a full kernel
    /// buffer drops that datagram and every later valid one (the next would
    /// find it full too; invalid ones still read `LOOPD_ERR_INVALID`), any
    /// other error only its own (or its coalesced run's).
    pub(crate) fn send_many(&mut self, msgs: &mut [abi::loopd_datagram]) -> (usize, i32) {
        let fd = self.sock.as_raw_fd();
        let mut state = self
            .send_state
            .take()
            .unwrap_or_else(|| sys::SendState::new(fd));
        let (mut sent, mut first) = (0, abi::LOOPD_OK);
        let mut i = 0;
        'chunks: while i < msgs.len() {
            // The next run of valid datagrams (an IP address, bytes or
            // none), up to a batch.
            state.clear();
            let mut end = i;
            while end < msgs.len() {
                let m = &msgs[end];
                let Some(to) = valid_target(m) else {
                    break;
                };
                if !state.push(to, m.data, m.len) {
                    break;
                }
                end += 1;
            }
            if end == i {
                msgs[i].status = abi::LOOPD_ERR_INVALID;
                if first == abi::LOOPD_OK {
                    first = abi::LOOPD_ERR_INVALID;
                }
                i += 1;
                continue;
            }
            let mut from = 0;
            while from < state.len() {
                // SAFETY: every datagram pushed points at bytes the plugin
                // lends for this host call (the send_datagrams contract).
                match unsafe { state.send(fd, from) } {
                    Ok(n) => {
                        for m in &mut msgs[i + from..i + from + n] {
                            m.status = abi::LOOPD_OK;
                        }
                        self.count_n(|c| &c.datagrams_out, n as u64);
                        (sent, from) = (sent + n, from + n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if state.retry_apart(from, &e) => {
                        log::debug!(
                            "{}: {}: the kernel refused {} datagrams of {} bytes as one send ({e}): sending datagrams that size or larger one by one from this socket",
                            self.scope.name,
                            self.url(),
                            state.message_len(from),
                            msgs[i + from].len
                        );
                    }
                    Err(e) => {
                        let at = i + from;
                        let full = sys::is_send_buffer_full(&e);
                        // A full buffer drops this one, the rest of its
                        // chunk and every later valid one (untried: the
                        // buffer is full); anything else the datagrams of
                        // the message it failed (one, or a coalesced run to
                        // one address).
                        let (dropped, later) = if full {
                            let rest = i + state.len();
                            (rest - at, mark_after_full(&mut msgs[rest..]))
                        } else {
                            (state.message_len(from), 0)
                        };
                        let status = self.send_failed(e, &msgs[at].addr, (dropped + later) as u64);
                        for m in &mut msgs[at..at + dropped] {
                            m.status = status;
                        }
                        if first == abi::LOOPD_OK {
                            first = status;
                        }
                        if full {
                            break 'chunks;
                        }
                        from += dropped;
                    }
                }
            }
            i = end;
        }
        state.clear();
        self.send_state = Some(state);
        (sent, first)
    }

    /// A send to `to` failed with `e` (not `EINTR`): counts `dropped`
    /// datagrams (more than one only in a batch: a full buffer, or a
    /// coalesced run to one address), logs
    /// within its rate limit, and returns the status to tell the handler.
    fn send_failed(&mut self, e: io::Error, to: &abi::loopd_addr, dropped: u64) -> i32 {
        // Only the error paths need the address as text.
        let to = DisplayAddr(to);
        match e {
            e if sys::is_send_buffer_full(&e) => {
                // Never queued: a datagram the kernel cannot take now is
                // dropped, counted, and the handler told (AGAIN).
                self.count_n(|c| &c.datagrams_dropped_send_full, dropped);
                if let Some(n) = self.dropped_log.allow(Instant::now()) {
                    let what = if dropped == 1 {
                        format!("a datagram to {to}")
                    } else {
                        format!("{dropped} datagrams of a batch, the first to {to}")
                    };
                    log::warn!(
                            "{}: {}: kernel send buffer full ({e}): dropped {what}; {} dropped so far ({n} similar warnings suppressed)",
                            self.scope.name,
                            self.url(),
                            self.listener.counters.datagrams_dropped_send_full.get()
                        );
                }
                abi::LOOPD_ERR_AGAIN
            }
            e if sys::is_broadcast_refused(&e) && !self.broadcast => {
                self.count_n(|c| &c.datagrams_dropped_send_error, dropped);
                if !self.broadcast_warned {
                    self.broadcast_warned = true;
                    let name = &self.scope.name;
                    log::error!(
                        "{name}: cannot send from {} to {to}: the kernel refused ({e}); \
                             a broadcast address needs SO_BROADCAST: add `broadcast = true` \
                             to the [[handler]] entry of `{name}` (logged once per socket)",
                        self.url()
                    );
                }
                abi::LOOPD_ERR_IO
            }
            e => {
                self.count_n(|c| &c.datagrams_dropped_send_error, dropped);
                if let Some(n) = self.error_log.allow(Instant::now()) {
                    log::debug!(
                        "{}: send_datagram from {} to {to}: {e} ({n} similar messages suppressed)",
                        self.scope.name,
                        self.url()
                    );
                }
                abi::LOOPD_ERR_IO
            }
        }
    }

    /// Serves `instance` from now on (a reload replaced the old one).
    pub(crate) fn serve(&mut self, instance: InstanceId, scope: Rc<Scope>) {
        self.instance = instance;
        self.scope = scope;
    }

    /// Logs what the socket dropped over its life, when it closes.
    pub(crate) fn log_drops(&self, name: &str) {
        let c = &self.listener.counters;
        let (full, oversize) = (
            c.datagrams_dropped_send_full.get(),
            c.datagrams_dropped_oversize.get(),
        );
        if full > 0 || oversize > 0 {
            log::info!(
                "{name}: closed {}: {full} datagrams dropped on send (kernel buffer full), {oversize} received over max_frame ({} bytes) dropped",
                self.url(),
                self.max_datagram
            );
        }
    }
}

/// A `loopd_addr` for a log message, converted only if the message is written.
struct DisplayAddr<'a>(&'a abi::loopd_addr);

impl std::fmt::Display for DisplayAddr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.to_socket_addr() {
            Some(a) => a.fmt(f),
            None => f.write_str("an unknown address"),
        }
    }
}

/// Binds a UDP socket for `instance` and registers it.
pub(crate) fn open(core: &mut Core, sa: &SocketAddr, instance: InstanceId) -> io::Result<Bound> {
    check_own_udp(core, sa)?;
    let inherited = core
        .shared
        .inherited
        .take(&crate::config::ListenAddr::Udp(*sa));
    let inst = core
        .instances
        .get(instance)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the handler instance is gone"))?;
    let sock = match inherited {
        Some(fd) => UdpSocket::from(fd),
        None => UdpSocket::from(sys::bind_listener(
            sa,
            false,
            0,
            inst.settings.reuse_address,
            sys::PortSharing::of_worker(core.shared.worker_index, core.shared.cfg.workers),
        )?),
    };
    if inst.settings.broadcast {
        sock.set_broadcast(true)?;
    }
    let local = sock.local_addr()?;
    let url = format!("udp://{local}");
    let listener = Scope::new(url.as_str());
    let d = Datagram {
        sock,
        instance,
        scope: inst.scope.clone(),
        listener: listener.clone(),
        max_datagram: inst.settings.max_frame.min(crate::SCRATCH_SIZE),
        broadcast: inst.settings.broadcast,
        broadcast_warned: false,
        dropped_log: RateLimit::default(),
        oversize_log: RateLimit::default(),
        error_log: RateLimit::default(),
        recv_state: None,
        send_state: None,
        drain: Drain::default(),
    };
    let id = core.register(Source::Datagram(d), true, false)?;
    Ok(Bound {
        id,
        instance,
        transport: abi::LOOPD_TRANSPORT_UDP,
        local: abi::loopd_addr::from_socket_addr(local),
        url,
        scope: listener,
    })
}

/// A UDP socket of this config already holds the port: say so, rather
/// than blaming another process.
fn check_own_udp(core: &Core, sa: &SocketAddr) -> io::Result<()> {
    if sa.port() == 0 {
        return Ok(());
    }
    for id in core.sources.ids() {
        let Some(Source::Datagram(d)) = core.sources.get(id) else {
            continue;
        };
        let Ok(bound) = d.sock.local_addr() else {
            continue;
        };
        if same_port(&bound, sa) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "it is the same port as {}, already opened by handler `{}` of this config",
                    d.url(),
                    core.instances.name(d.instance)
                ),
            ));
        }
    }
    Ok(())
}

/// The host's `send_datagrams`: `(sent, status)`, as
/// [`Datagram::send_many`]; refused whole for another instance's id or a
/// stream.
pub(crate) fn send_many(
    core: &mut Core,
    instance: InstanceId,
    id: u64,
    msgs: &mut [abi::loopd_datagram],
) -> (usize, i32) {
    match core.sources.get_mut(id) {
        Some(Source::Datagram(d)) if d.instance == instance => d.send_many(msgs),
        Some(Source::Stream(c)) if c.instance == instance => (0, abi::LOOPD_ERR_UNSUPPORTED),
        _ => (0, abi::LOOPD_ERR_NO_SUCH_CONN),
    }
}

/// The host's `send_datagram`.
pub(crate) fn send(
    core: &mut Core,
    instance: InstanceId,
    id: u64,
    to: &abi::loopd_addr,
    data: &[u8],
) -> i32 {
    match core.sources.get_mut(id) {
        Some(Source::Datagram(d)) if d.instance == instance => d.send(to, data),
        Some(Source::Stream(c)) if c.instance == instance => abi::LOOPD_ERR_UNSUPPORTED,
        _ => abi::LOOPD_ERR_NO_SUCH_CONN,
    }
}

/// Where `m` goes, if it can be sent at all: an IP address, and bytes or
/// none (a null `data` with a length is not).
fn valid_target(m: &abi::loopd_datagram) -> Option<sys::SockAddr> {
    if m.data.is_null() && m.len > 0 {
        return None;
    }
    sys::SockAddr::from_loopd(&m.addr)
}

/// `rest` follows a datagram the kernel refused with its send buffer full:
/// marks each valid one dropped with it (`LOOPD_ERR_AGAIN`, untried: the
/// buffer is full) and each invalid one `LOOPD_ERR_INVALID`, as it would
/// have been with room in the buffer; returns how many were valid (dropped,
/// to count).
fn mark_after_full(rest: &mut [abi::loopd_datagram]) -> usize {
    let mut valid = 0;
    for m in rest {
        m.status = if valid_target(m).is_some() {
            valid += 1;
            abi::LOOPD_ERR_AGAIN
        } else {
            abi::LOOPD_ERR_INVALID
        };
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{test_instance, Settings};
    use std::time::Duration;

    fn core_with(broadcast: bool, max_frame: usize) -> (Core, InstanceId) {
        let mut core = Core::new(Default::default()).unwrap();
        let settings = Settings {
            max_frame,
            broadcast,
            ..Settings::default()
        };
        let inst = test_instance(&mut core, "u", settings);
        (core, inst)
    }

    fn udp(core: &mut Core, inst: InstanceId, addr: &str) -> Bound {
        open(core, &addr.parse().unwrap(), inst).unwrap()
    }

    /// A datagram of `data` to `addr`, its status a value no send writes.
    fn msg(addr: abi::loopd_addr, data: &[u8]) -> abi::loopd_datagram {
        abi::loopd_datagram {
            addr,
            status: 12345,
            reserved: 0,
            data: data.as_ptr(),
            len: data.len(),
        }
    }

    /// A datagram to `addr` with a null `data`: empty, or (with `len`)
    /// invalid.
    fn null_data(addr: abi::loopd_addr, len: usize) -> abi::loopd_datagram {
        let mut m = msg(addr, b"");
        (m.data, m.len) = (std::ptr::null(), len);
        m
    }

    fn datagram(core: &Core, id: u64) -> &Datagram {
        match core.sources.get(id) {
            Some(Source::Datagram(d)) => d,
            _ => panic!("not a datagram socket"),
        }
    }

    #[test]
    fn udp_sockets_over_ipv4_and_ipv6() {
        let (mut core, inst) = core_with(false, 1 << 20);
        let v4 = udp(&mut core, inst, "127.0.0.1:0");
        let v6 = udp(&mut core, inst, "[::1]:0");
        assert_eq!(v4.transport, abi::LOOPD_TRANSPORT_UDP);
        assert!(v4.url.starts_with("udp://127.0.0.1:") && !v4.url.ends_with(":0"));
        assert!(v6.url.starts_with("udp://[::1]:"), "{}", v6.url);
        assert_eq!(v6.local.family, abi::LOOPD_AF_INET6);
        assert_eq!(&*v4.scope.name, v4.url, "counters are named by the URL");
        // The read limit is the handler's max_frame, at most the read buffer.
        assert_eq!(datagram(&core, v4.id).max_datagram, crate::SCRATCH_SIZE);
        let (mut small, inst) = core_with(false, 100);
        let b = udp(&mut small, inst, "127.0.0.1:0");
        assert_eq!(datagram(&small, b.id).max_datagram, 100);
    }

    #[test]
    fn the_same_udp_port_twice_in_one_config_is_named() {
        let (mut core, inst) = core_with(false, 1 << 20);
        let b = udp(&mut core, inst, "0.0.0.0:0");
        let port = b.url.rsplit(':').next().unwrap();
        let err = open(
            &mut core,
            &format!("127.0.0.1:{port}").parse().unwrap(),
            inst,
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

        let (mut core, inst) = core_with(false, 1 << 20);
        let b = udp(&mut core, inst, "127.0.0.1:0");
        assert!(!datagram(&core, b.id).sock.broadcast().unwrap());
        assert_eq!(send(&mut core, inst, b.id, &to, b"x"), abi::LOOPD_ERR_IO);
        assert!(
            datagram(&core, b.id).broadcast_warned,
            "the error was logged"
        );
        assert_eq!(send(&mut core, inst, b.id, &to, b"x"), abi::LOOPD_ERR_IO);
        assert_eq!(
            b.scope.counters.datagrams_dropped_send_error.get(),
            2,
            "counted on the socket"
        );

        let (mut core, inst) = core_with(true, 1 << 20);
        let b = udp(&mut core, inst, "127.0.0.1:0");
        assert!(
            datagram(&core, b.id).sock.broadcast().unwrap(),
            "SO_BROADCAST set"
        );
        assert_eq!(send(&mut core, inst, b.id, &to, b"hello"), abi::LOOPD_OK);
        let mut buf = [0u8; 16];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from.to_string(), b.url.strip_prefix("udp://").unwrap());
        assert_eq!(b.scope.counters.datagrams_out.get(), 1);
    }

    #[test]
    fn send_datagram_checks_ids_and_addresses() {
        let (mut core, inst) = core_with(false, 1 << 20);
        let b = udp(&mut core, inst, "127.0.0.1:0");
        let to = abi::loopd_addr::from_socket_addr("127.0.0.1:9".parse().unwrap());
        assert_eq!(
            send(&mut core, inst + 1, b.id, &to, b"x"),
            abi::LOOPD_ERR_NO_SUCH_CONN,
            "another instance's socket"
        );
        assert_eq!(
            send(&mut core, inst, b.id + (1 << 32), &to, b"x"),
            abi::LOOPD_ERR_NO_SUCH_CONN,
            "stale id"
        );
        let unix = abi::loopd_addr::unix();
        assert_eq!(
            send(&mut core, inst, b.id, &unix, b"x"),
            abi::LOOPD_ERR_INVALID
        );
        let huge = vec![0u8; 70_000];
        assert_eq!(
            send(&mut core, inst, b.id, &to, &huge),
            abi::LOOPD_ERR_IO,
            "EMSGSIZE"
        );
        assert_eq!(
            b.scope.counters.datagrams_dropped_send_full.get(),
            0,
            "only a full buffer counts as dropped"
        );
    }

    #[test]
    fn send_many_sends_in_order_and_says_what_became_of_each() {
        let (mut core, inst) = core_with(false, 1 << 20);
        let b = udp(&mut core, inst, "127.0.0.1:0");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let to = abi::loopd_addr::from_socket_addr(rx.local_addr().unwrap());
        let huge = vec![0u8; 70_000];
        // More than one batch, with bad ones between good ones.
        let mut msgs = vec![
            msg(to, b"0"),
            msg(abi::loopd_addr::unix(), b"x"),
            null_data(to, 3),
        ];
        msgs.push(msg(to, &huge));
        let bytes: Vec<u8> = (1..=40).collect();
        for i in 0..40 {
            msgs.push(msg(to, &bytes[i..i + 1]));
        }
        msgs.push(null_data(to, 0));
        let (sent, first) = send_many(&mut core, inst, b.id, &mut msgs);
        assert_eq!((sent, first), (42, abi::LOOPD_ERR_INVALID));
        let statuses: Vec<i32> = msgs.iter().map(|m| m.status).collect();
        assert_eq!(
            &statuses[..4],
            &[
                abi::LOOPD_OK,
                abi::LOOPD_ERR_INVALID,
                abi::LOOPD_ERR_INVALID,
                abi::LOOPD_ERR_IO // EMSGSIZE: the rest still go
            ]
        );
        assert!(
            statuses[4..].iter().all(|&s| s == abi::LOOPD_OK),
            "{statuses:?}"
        );
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..42 {
            let n = rx.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        let mut want = vec![b"0".to_vec()];
        want.extend((1..=40u8).map(|i| vec![i]));
        want.push(Vec::new());
        assert_eq!(got, want, "in order, each once");
        assert_eq!(b.scope.counters.datagrams_out.get(), 42);
        assert_eq!(b.scope.counters.datagrams_dropped_send_error.get(), 1);
        // Refused whole: statuses untouched.
        let mut one = vec![msg(to, b"x")];
        assert_eq!(
            send_many(&mut core, inst + 1, b.id, &mut one),
            (0, abi::LOOPD_ERR_NO_SUCH_CONN)
        );
        assert_eq!(one[0].status, 12345);
    }

    /// After a full send buffer the rest of a call is not tried, but what
    /// could not have been sent anyway still reads INVALID, and only the
    /// valid ones count as dropped (tests/udp.rs fills a real buffer).
    #[test]
    fn after_a_full_buffer_invalid_datagrams_stay_invalid_and_are_not_counted() {
        let to = abi::loopd_addr::from_socket_addr("127.0.0.1:9".parse().unwrap());
        let mut rest = vec![
            msg(to, b"a"),
            msg(abi::loopd_addr::unix(), b"x"),
            null_data(to, 3),
            null_data(to, 0),
            msg(to, b"b"),
        ];
        assert_eq!(mark_after_full(&mut rest), 3);
        let statuses: Vec<i32> = rest.iter().map(|m| m.status).collect();
        assert_eq!(
            statuses,
            [
                abi::LOOPD_ERR_AGAIN,
                abi::LOOPD_ERR_INVALID,
                abi::LOOPD_ERR_INVALID,
                abi::LOOPD_ERR_AGAIN,
                abi::LOOPD_ERR_AGAIN
            ]
        );
        assert_eq!(mark_after_full(&mut []), 0);
    }

    #[test]
    fn draining_again_is_kept_up_only_while_it_finds_datagrams() {
        let mut d = Drain::default();
        assert!(d.try_again(), "a new socket tries");
        // Tries that find nothing: soon only every PROBE_EVERY-th batch.
        let mut tries = 0;
        for _ in 0..200 {
            if d.try_again() {
                tries += 1;
                d.tried(false);
            }
        }
        assert!(
            (200 / usize::from(Drain::PROBE_EVERY)..=30).contains(&tries),
            "{tries}"
        );
        // Traffic picks up: a probe that finds datagrams, then a few more,
        // and every batch tries again.
        let mut streak = 0;
        for _ in 0..100 {
            if d.try_again() {
                d.tried(true);
                streak += 1;
            } else {
                streak = 0;
            }
        }
        assert!(streak >= 50, "{streak}");
        // Half the tries find datagrams: still worth it (above a third).
        let mut made = 0;
        for i in 0..100 {
            if d.try_again() {
                made += 1;
                d.tried(i % 2 == 0);
            }
        }
        assert_eq!(made, 100);
    }

    #[test]
    fn oversized_datagrams_are_dropped_whole_and_counted() {
        let (mut core, inst) = core_with(false, 100);
        let b = udp(&mut core, inst, "127.0.0.1:0");
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.url.strip_prefix("udp://").unwrap();
        tx.send_to(&[7u8; 101], to).unwrap();
        tx.send_to(&[7u8; 5000], to).unwrap();
        tx.send_to(b"fits", to).unwrap();
        let mut buf = vec![0u8; 4 * crate::SCRATCH_SIZE];
        let mut out = vec![Default::default(); 4];
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 3 && std::time::Instant::now() < deadline {
            let Some(Source::Datagram(d)) = core.sources.get_mut(b.id) else {
                panic!("socket gone");
            };
            match d.recv_batch(b.id, &mut buf, &mut out) {
                Batch::Got { count, stride, .. } => {
                    assert_eq!(stride, 100 + SLOT_GAP);
                    for (i, (len, _)) in out[..count].iter().enumerate() {
                        got.push((*len != DROPPED).then(|| buf[i * stride..][..*len].to_vec()));
                    }
                }
                Batch::Retry => {}
                Batch::Stop => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert_eq!(got, vec![None, None, Some(b"fits".to_vec())]);
        assert_eq!(b.scope.counters.datagrams_dropped_oversize.get(), 2);
        assert_eq!(b.scope.counters.datagrams_in.get(), 1);
    }
}
