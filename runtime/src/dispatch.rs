//! The dispatcher: hands each readiness event to its source, and delivers
//! what the source reports (frames, datagrams, opens, closes) through the
//! hooks.
//!
//! Rules it keeps: the loop state (`Core`) is never borrowed while a hook
//! runs, so host functions can borrow it; what a host function causes is
//! queued in `Shared::pending` and delivered here after the hook returns; a
//! connection is released only after its `on_close`, so an id stays valid
//! (and stale afterwards) exactly as the ABI promises.

use std::ffi::{c_void, CString};
use std::time::Instant;

use loopd_handler_api::abi::{self, loopd_listen_info};

use crate::config::FramingKind;
use crate::core::Deferred;
use crate::event_loop::Ready;
use crate::hooks::Hooks;
use crate::instance::InstanceId;
use crate::source::datagram::{Batch, DROPPED, SLOT_GAP};
use crate::source::listener::{self, Bound};
use crate::source::stream::{self, peer_text, Input, Read};
use crate::source::{watch, Source};
use crate::sys;
use crate::timer::TimerKind;
use crate::Runtime;

/// Most reads from one connection per readiness event (fairness).
const READS_PER_EVENT: usize = 4;
/// Most datagrams read from one socket per readiness event (fairness).
const DATAGRAMS_PER_EVENT: usize = 64;
/// The datagram batch buffer: `sys::BATCH` slots of the largest datagram
/// (64 KiB), each followed by a [`SLOT_GAP`]. Zeroed memory is mapped
/// lazily, so only the pages datagrams land in are ever resident (one per
/// slot for small ones).
const DATAGRAM_BUFFER: usize = sys::BATCH * (crate::SCRATCH_SIZE + SLOT_GAP);
/// Most posted messages delivered to one instance per pass (fairness).
const MESSAGES_PER_PASS: usize = 256;

impl Runtime {
    pub(crate) fn hooks(&self) -> Hooks<'_> {
        Hooks(&self.core)
    }

    /// Tells the owning instance about a listener (`on_listen`, ABI 1.1).
    pub(crate) fn announce_listener(&self, b: &Bound) {
        let url = CString::new(b.url.as_str()).unwrap_or_default();
        let info = loopd_listen_info {
            struct_size: std::mem::size_of::<loopd_listen_info>() as u32,
            transport: b.transport,
            local: b.local,
            url: url.as_ptr(),
        };
        self.hooks().on_listen(b.instance, b.id, &info);
    }

    /// Hands one readiness event to its source.
    pub(crate) fn dispatch(&mut self, r: Ready) {
        enum Kind {
            Listener,
            Stream,
            Datagram,
            Signal,
            Watch,
            #[cfg(target_os = "linux")]
            Control,
        }
        let kind = match self.core.borrow().sources.get(r.key) {
            Some(Source::Listener(_)) => Kind::Listener,
            Some(Source::Stream(_)) => Kind::Stream,
            Some(Source::Datagram(_)) => Kind::Datagram,
            Some(Source::Signal(..)) => Kind::Signal,
            Some(Source::Watch(_)) => Kind::Watch,
            #[cfg(target_os = "linux")]
            Some(Source::Control(_)) => Kind::Control,
            // An event for a source removed earlier in this pass.
            None => return,
        };
        match kind {
            Kind::Listener => listener::accept(&mut self.core.borrow_mut(), r.key),
            Kind::Stream => {
                if let Some((c, sh)) = self.core.borrow_mut().conn_and_shared(r.key) {
                    if c.is_handshaking() {
                        c.handshake(r.key, sh);
                        return;
                    }
                }
                if r.writable {
                    if let Some((c, sh)) = self.core.borrow_mut().conn_and_shared(r.key) {
                        c.writable(r.key, sh);
                    }
                }
                if r.readable {
                    let mut core = self.core.borrow_mut();
                    let Some((c, sh)) = core.conn_and_shared(r.key) else {
                        return;
                    };
                    if c.hung_up_unasked(&r) {
                        if c.ended_both_ways(&r) {
                            c.begin_close(r.key, sh, false, abi::LOOPD_REASON_PEER);
                        } else if !c.park_hangup(r.key, sh, &r) {
                            log::debug!("{}: connection {}: peer hung up", c.name(), r.key);
                            c.begin_close(r.key, sh, true, abi::LOOPD_REASON_ERROR);
                        }
                    } else {
                        drop(core);
                        let prev = self.set_current(r.key);
                        self.stream_readable(r.key);
                        self.set_current(prev);
                    }
                }
            }
            Kind::Datagram => self.datagram_readable(r.key),
            Kind::Signal => self.signal_readable(r.key),
            Kind::Watch => self.watch_ready(r.key, &r),
            #[cfg(all(target_os = "linux", feature = "signals"))]
            Kind::Control => self.control_readable(r.key),
            #[cfg(all(target_os = "linux", not(feature = "signals")))]
            Kind::Control => {}
        }
    }

    /// Reads from a connection and hands complete frames to the handler.
    fn stream_readable(&mut self, id: u64) {
        for _ in 0..READS_PER_EVENT {
            let read = {
                let mut core = self.core.borrow_mut();
                let Some((c, sh)) = core.conn_and_shared(id) else {
                    return;
                };
                c.read(id, sh, &mut self.scratch)
            };
            let full = match read {
                Read::Direct { n, full } => {
                    // The common case: frames straight from the read buffer.
                    let data = &self.scratch[..n];
                    let used = self.deliver_frames(id, data);
                    if used < n {
                        if let Some((c, sh)) = self.core.borrow_mut().conn_and_shared(id) {
                            c.keep_unconsumed(&data[used..], sh);
                        }
                    }
                    self.check_input_budget();
                    full
                }
                Read::Buffered { full } => {
                    self.process_input(id);
                    self.check_input_budget();
                    full
                }
                Read::Eof => {
                    self.process_input(id);
                    return;
                }
                Read::Retry => continue,
                Read::Stop => return,
            };
            if !full {
                return;
            }
        }
        // Every read filled the buffer: more may be waiting.
        let mut core = self.core.borrow_mut();
        core.shared.capped = true;
        // In the transport, where no event reports it.
        if core.conn_mut(id).is_some_and(|c| c.buffered_input()) {
            core.shared.pending.push_back(Deferred::Input(id));
        }
    }

    /// Hands frames in `data` to the handler while the connection can take
    /// them; returns how many bytes were consumed.
    fn deliver_frames(&self, id: u64, data: &[u8]) -> usize {
        let hooks = self.hooks();
        let mut pos = 0;
        loop {
            let (step, inst, state, max) = {
                let mut core = self.core.borrow_mut();
                let Some(c) = core.conn_mut(id) else {
                    return pos;
                };
                (
                    c.next_input(&data[pos..]),
                    c.instance,
                    c.state,
                    c.max_frame(),
                )
            };
            match step {
                Input::Wait => return pos,
                Input::Skipped(n) => pos += n,
                Input::Frame {
                    start,
                    end,
                    consumed,
                } => {
                    let status = hooks.on_data(inst, id, state, &data[pos + start..pos + end]);
                    pos += consumed;
                    if status < 0 {
                        self.hook_failed(id, "on_data");
                        return pos;
                    }
                }
                Input::Oversize { size, discard } => {
                    if !self.oversize_skipped(inst, id, state, size, max) {
                        return pos;
                    }
                    let mut core = self.core.borrow_mut();
                    let Some(c) = core.conn_mut(id) else {
                        return pos;
                    };
                    pos += c.discard(discard, &data[pos..]);
                }
            }
        }
    }

    /// A frame over max_frame: asks the handler (`on_oversize`, ABI 1.1)
    /// whether to skip it; otherwise closes the connection with a log line.
    /// Returns true if the frame is to be skipped.
    fn oversize_skipped(
        &self,
        inst: InstanceId,
        id: u64,
        state: *mut c_void,
        size: usize,
        max: usize,
    ) -> bool {
        if let Some(verdict) = self.hooks().on_oversize(inst, id, state, size, max) {
            let core = self.core.borrow();
            let Some(c) = core.conn(id).filter(|c| c.is_open()) else {
                // The handler closed it from the hook: nothing more to say.
                return false;
            };
            if verdict == abi::LOOPD_OVERSIZE_SKIP {
                log::debug!(
                    "{}: connection {id}: skipping a frame of {size} bytes over max_frame ({max} bytes)",
                    c.name()
                );
                return true;
            }
        }
        let mut core = self.core.borrow_mut();
        if let Some((c, sh)) = core.conn_and_shared(id) {
            log::warn!(
                "{}: closing connection {id} from {}: frame of {size} bytes exceeds max_frame ({max} bytes)",
                c.name(),
                peer_text(c.peer()),
            );
            c.begin_close(id, sh, false, abi::LOOPD_REASON_FRAME_TOO_BIG);
        }
        false
    }

    /// Delivers buffered frames (after a pause, or after EOF), then EOF itself.
    fn process_input(&self, id: u64) {
        let Some(buf) = self
            .core
            .borrow_mut()
            .conn_mut(id)
            .and_then(|c| c.take_input())
        else {
            return;
        };
        let used = if buf.is_empty() {
            0
        } else {
            self.deliver_frames(id, &buf)
        };
        let (eof, inst, state) = {
            let mut core = self.core.borrow_mut();
            let Some((c, sh)) = core.conn_and_shared(id) else {
                return;
            };
            let Some(eof) = c.put_back_input(buf, used, sh) else {
                return;
            };
            (eof, c.instance, c.state)
        };
        let hooks = self.hooks();
        // The peer is done. A last line without "\n" is still a line (or,
        // for a handler with on_partial, reported as unfinished); a
        // truncated length-prefixed frame is not a frame.
        let rest = &eof.rest;
        if !rest.is_empty() {
            match eof.framing {
                FramingKind::Line => {
                    let end = rest.len() - usize::from(rest.last() == Some(&b'\r'));
                    if end > eof.max_frame {
                        if !self.oversize_skipped(inst, id, state, end, eof.max_frame) {
                            return;
                        }
                    } else if !hooks.on_partial(inst, id, state, &rest[..end])
                        && hooks.on_data(inst, id, state, &rest[..end]) < 0
                    {
                        self.hook_failed(id, "on_data");
                        return;
                    }
                }
                _ => log::debug!(
                    "{}: connection {id}: dropping {} bytes of a truncated frame at EOF",
                    self.core.borrow().instances.name(inst),
                    rest.len()
                ),
            }
        }
        let still_open = self.core.borrow().conn(id).is_some_and(|c| c.is_open());
        if still_open && hooks.on_eof(inst, id, state) != abi::LOOPD_EOF_KEEP_OPEN {
            let mut core = self.core.borrow_mut();
            if let Some((c, sh)) = core.conn_and_shared(id) {
                c.begin_close(id, sh, false, abi::LOOPD_REASON_PEER);
            }
        }
    }

    /// Over the budget for buffered input: the connections holding the
    /// most are closed (see `stream::enforce_input_budget`).
    fn check_input_budget(&self) {
        let mut core = self.core.borrow_mut();
        if core.shared.buffered_input > core.shared.cfg.max_buffered_input {
            stream::enforce_input_budget(&mut core);
        }
    }

    fn hook_failed(&self, id: u64, hook: &str) {
        let mut core = self.core.borrow_mut();
        if let Some((c, sh)) = core.conn_and_shared(id) {
            log::warn!(
                "{}: {hook} failed on connection {id} from {}; closing it",
                c.name(),
                peer_text(c.peer())
            );
            c.begin_close(id, sh, true, abi::LOOPD_REASON_HANDLER);
        }
    }

    /// Receives up to [`DATAGRAMS_PER_EVENT`] datagrams, in batches (one
    /// `recvmmsg` each on Linux), and hands each to `on_datagram` with its
    /// sender.
    fn datagram_readable(&mut self, id: u64) {
        if self.datagrams.is_empty() {
            self.datagrams = vec![0; DATAGRAM_BUFFER];
            self.received = vec![Default::default(); sys::BATCH];
        }
        let (mut buf, mut got) = (
            std::mem::take(&mut self.datagrams),
            std::mem::take(&mut self.received),
        );
        let capped = self.datagram_batches(id, &mut buf, &mut got);
        (self.datagrams, self.received) = (buf, got);
        if capped {
            self.core.borrow_mut().shared.capped = true;
        }
    }

    /// [`Runtime::datagram_readable`]'s loop; true if it stopped at the
    /// per-event budget with datagrams perhaps still waiting. After a batch
    /// that drained the socket it receives once more while that has been
    /// finding datagrams (`datagram::Drain`): what arrived while the batch
    /// was handled is taken without a loop pass and a poller wait.
    fn datagram_batches(
        &mut self,
        id: u64,
        buf: &mut [u8],
        got: &mut [(usize, loopd_handler_api::abi::loopd_addr)],
    ) -> bool {
        let mut left = DATAGRAMS_PER_EVENT;
        let mut again = false;
        while left > 0 {
            let batch = {
                let mut core = self.core.borrow_mut();
                let Some(Source::Datagram(d)) = core.sources.get_mut(id) else {
                    return false;
                };
                let want = left.min(got.len());
                let batch = d.recv_batch(id, buf, &mut got[..want]);
                if again && !matches!(batch, Batch::Retry) {
                    d.drain().tried(matches!(batch, Batch::Got { .. }));
                }
                batch
            };
            let (instance, count, stride, drained) = match batch {
                Batch::Got {
                    instance,
                    count,
                    stride,
                    drained,
                } => (instance, count, stride, drained),
                Batch::Retry => continue,
                Batch::Stop => return false,
            };
            if !self.deliver_batch(instance, id, buf, &got[..count], stride) {
                return false;
            }
            left -= count.min(left);
            if drained {
                let mut core = self.core.borrow_mut();
                let Some(Source::Datagram(d)) = core.sources.get_mut(id) else {
                    return false;
                };
                if left == 0 || !d.drain().try_again() {
                    return false;
                }
                again = true;
            } else {
                again = false;
            }
        }
        true
    }

    /// Hands one receive's datagrams to the handler: all at once to
    /// `on_datagrams` when it has that hook, else one `on_datagram` each.
    /// False if a hook closed the socket.
    fn deliver_batch(
        &mut self,
        instance: InstanceId,
        id: u64,
        buf: &[u8],
        got: &[(usize, loopd_handler_api::abi::loopd_addr)],
        stride: usize,
    ) -> bool {
        if self.hooks().takes_batches(instance) {
            let mut batch = std::mem::take(&mut self.batch);
            batch.clear();
            for (i, (len, peer)) in got.iter().enumerate() {
                if *len != DROPPED {
                    batch.push(loopd_handler_api::abi::loopd_datagram {
                        addr: *peer,
                        status: 0,
                        reserved: 0,
                        data: buf[i * stride..].as_ptr(),
                        len: *len,
                    });
                }
            }
            self.hooks().on_datagrams(instance, id, &mut batch);
            batch.clear();
            self.batch = batch;
            self.drain_pending();
            return self.datagram_open(id);
        }
        for (i, (len, peer)) in got.iter().enumerate() {
            if *len == DROPPED {
                continue;
            }
            // A hook may have closed the socket: the rest of the batch
            // has no one to go to.
            if !self.datagram_open(id) {
                return false;
            }
            let data = &buf[i * stride..i * stride + len];
            self.hooks().on_datagram(instance, id, peer, data);
            self.drain_pending();
        }
        true
    }

    /// Whether datagram socket `id` is still open (a hook may close it).
    fn datagram_open(&self, id: u64) -> bool {
        matches!(
            self.core.borrow().sources.get(id),
            Some(Source::Datagram(_))
        )
    }

    fn signal_readable(&mut self, id: u64) {
        let fd = {
            let core = self.core.borrow();
            let Some(Source::Signal(s)) = core.sources.get(id) else {
                return;
            };
            std::os::fd::AsRawFd::as_raw_fd(s)
        };
        #[cfg(feature = "signals")]
        self.signals_readable(fd);
        #[cfg(not(feature = "signals"))]
        let _ = fd;
    }

    /// Delivers up to [`MESSAGES_PER_PASS`] posted messages per instance,
    /// each with `on_message`; returns how many.
    pub(crate) fn deliver_mail(&mut self) -> usize {
        if !self.postbox.has_mail() {
            return 0;
        }
        let mut mail = std::mem::take(&mut self.mail);
        self.postbox.take(MESSAGES_PER_PASS, &mut mail);
        let n = mail.len();
        for (inst, msg) in mail.drain(..) {
            self.hooks().on_message(inst, &msg);
            self.drain_pending();
        }
        self.mail = mail;
        n
    }

    /// A watched descriptor is ready: `on_fd`, then the watch is re-armed.
    fn watch_ready(&self, id: u64, r: &Ready) {
        let event = watch::ready(&mut self.core.borrow_mut(), id, r);
        let events = match event {
            Some(e) => {
                self.hooks().on_fd(e.instance, id, e.user_data, e.events);
                e.events
            }
            None => 0,
        };
        watch::after_event(&mut self.core.borrow_mut(), id, events);
    }

    // ---------------------------------------------------------------------
    // Deferred work
    // ---------------------------------------------------------------------

    /// Delivers everything host functions and I/O queued, until nothing is left.
    pub(crate) fn drain_pending(&self) {
        let hooks = self.hooks();
        loop {
            let next = self.core.borrow_mut().shared.pending.pop_front();
            match next {
                None => return,
                Some(Deferred::Open(id)) => {
                    let prev = self.set_current(id);
                    self.deliver_open(id);
                    self.set_current(prev);
                }
                Some(Deferred::Close(id)) => self.finish_close(id),
                Some(Deferred::Writable(id)) => {
                    let target = self
                        .core
                        .borrow()
                        .conn(id)
                        .filter(|c| c.is_open())
                        .map(|c| (c.instance, c.state));
                    if let Some((inst, state)) = target {
                        let prev = self.set_current(id);
                        hooks.on_writable(inst, id, state);
                        self.set_current(prev);
                    }
                }
                Some(Deferred::Input(id)) => {
                    let prev = self.set_current(id);
                    // Decrypted input the transport holds joins the
                    // buffered input: the socket may have nothing more to
                    // report.
                    if let Some((c, sh)) = self.core.borrow_mut().conn_and_shared(id) {
                        c.pull_buffered(id, sh);
                    }
                    self.process_input(id);
                    self.set_current(prev);
                }
            }
        }
    }

    /// Marks `id` as the connection being handled (its sends are replies);
    /// returns the previous one.
    fn set_current(&self, id: u64) -> u64 {
        std::mem::replace(&mut self.core.borrow_mut().shared.current, id)
    }

    /// Writes the output sends deferred during this pass, and delivers what
    /// that causes, until nothing is left deferred.
    pub(crate) fn flush_deferred(&self) {
        while self.core.borrow_mut().flush_dirty() {
            // on_writable, resumed input and closes may send again.
            self.drain_pending();
        }
    }

    fn deliver_open(&self, id: u64) {
        let Some((inst, (info, endpoint))) = self
            .core
            .borrow_mut()
            .conn_mut(id)
            .and_then(|c| Some((c.instance, c.open_info()?)))
        else {
            return;
        };
        let mut state: *mut c_void = std::ptr::null_mut();
        let status = self.hooks().on_open(inst, id, &info, &mut state);
        let mut core = self.core.borrow_mut();
        let Some((c, sh)) = core.conn_and_shared(id) else {
            return;
        };
        c.state = state;
        log::debug!(
            "{}: connection {id} opened ({} on {})",
            c.name(),
            peer_text(&info.peer),
            endpoint.to_str().unwrap_or("?")
        );
        if status < 0 {
            log::debug!("{}: on_open refused connection {id}", c.name());
            c.begin_close(id, sh, true, abi::LOOPD_REASON_HANDLER);
        } else {
            c.update_interest(id, sh);
        }
    }

    fn finish_close(&self, id: u64) {
        let released = {
            let mut core = self.core.borrow_mut();
            let Some((c, sh)) = core.conn_and_shared(id) else {
                return;
            };
            let Some(r) = c.release(sh) else { return };
            log::debug!(
                "{}: connection {id} closed ({})",
                c.name(),
                abi::reason_str(r.reason)
            );
            r
        };
        if released.known {
            self.hooks()
                .on_close(released.instance, id, released.state, released.reason);
        }
        self.core.borrow_mut().sources.remove(id);
        // The last connection of an instance a reload replaced.
        self.destroy_if_drained(released.instance);
    }

    /// Fires every timer that is due; returns how many.
    pub(crate) fn fire_timers(&mut self) -> usize {
        let now = Instant::now();
        let mut fired = 0;
        loop {
            let due = self.core.borrow_mut().shared.timers.pop_due(now);
            let Some((id, kind)) = due else { return fired };
            fired += 1;
            match kind {
                TimerKind::Handler {
                    instance,
                    user_data,
                } => {
                    let core = self.core.borrow();
                    let repeats = core.shared.timers.get(id).is_some();
                    if let Some(i) = core.instances.get(instance) {
                        i.scope.counters.timers_fired.add(1);
                        if !repeats {
                            i.scope.counters.timers_active.sub(1);
                        }
                    }
                    drop(core);
                    self.hooks().on_timer(instance, id, user_data);
                }
                TimerKind::CloseTimeout { conn } => {
                    if let Some((c, sh)) = self.core.borrow_mut().conn_and_shared(conn) {
                        c.close_timed_out(conn, sh);
                    }
                }
                TimerKind::HandshakeTimeout { conn } => {
                    if let Some((c, sh)) = self.core.borrow_mut().conn_and_shared(conn) {
                        c.handshake_timed_out(conn, sh);
                    }
                }
                TimerKind::ResumeListener { listener } => {
                    listener::resume(&mut self.core.borrow_mut(), listener)
                }
                #[cfg(all(target_os = "linux", feature = "signals"))]
                TimerKind::ControlRequests { control } => self.control_timer(control),
                #[cfg(all(target_os = "linux", not(feature = "signals")))]
                TimerKind::ControlRequests { .. } => {}
                TimerKind::IdleSweep => stream::close_idle(&mut self.core.borrow_mut()),
                TimerKind::DrainTimeout { instance } => self.drain_timed_out(instance),
            }
            self.drain_pending();
        }
    }

    // ---------------------------------------------------------------------
    // Shutdown and teardown
    // ---------------------------------------------------------------------

    /// Stops accepting, tells every instance, and starts the deadline.
    pub(crate) fn begin_shutdown(&mut self) {
        let ids = {
            let mut core = self.core.borrow_mut();
            if core.shared.shutdown_deadline.is_some() {
                return;
            }
            let timeout = core.shared.cfg.shutdown_timeout;
            core.shared.shutdown_deadline = Some(Instant::now() + timeout);
            if self.service {
                crate::notify::send("STOPPING=1");
            }
            let upgrading = self.worker.as_ref().is_some_and(|w| w.siblings.upgrading());
            if self.successor.is_some() || upgrading {
                // The new process has these sockets: their files stay.
                listener::keep_socket_files(&mut core);
            }
            listener::close_all(&mut core);
            // Connections still in their TLS handshake were never the
            // handlers': nobody waits for them.
            for id in core.sources.ids() {
                if let Some((c, sh)) = core.conn_and_shared(id) {
                    if c.is_handshaking() {
                        c.begin_close(id, sh, true, abi::LOOPD_REASON_SHUTDOWN);
                    }
                }
            }
            log::info!(
                "shutting down: listeners closed; waiting up to {} ms for {} open connections",
                timeout.as_millis(),
                core.shared.conns
            );
            core.instances.ids().to_vec()
        };
        for inst in ids {
            self.hooks().on_shutdown(inst);
            self.drain_pending();
        }
    }

    /// Ends a graceful shutdown when every connection is gone or time is up.
    pub(crate) fn check_shutdown(&mut self) {
        let (deadline, open) = {
            let core = self.core.borrow();
            let Some(deadline) = core.shared.shutdown_deadline else {
                return;
            };
            (deadline, core.shared.conns)
        };
        if open == 0 {
            log::info!("shutdown complete");
            self.stopped = true;
        } else if Instant::now() >= deadline {
            log::warn!("shutdown timeout: closing {open} connections that are still open");
            self.close_everything(abi::LOOPD_REASON_SHUTDOWN);
            log::info!("shutdown complete");
            self.stopped = true;
        }
    }

    /// Aborts every connection and delivers their `on_close`.
    pub(crate) fn close_everything(&self, reason: i32) {
        {
            let mut core = self.core.borrow_mut();
            for id in core.sources.ids() {
                if let Some((c, sh)) = core.conn_and_shared(id) {
                    c.begin_close(id, sh, true, reason);
                }
            }
        }
        self.drain_pending();
    }

    /// Calls `destroy` for an instance whose connections are all closed,
    /// after cancelling its timers.
    pub(crate) fn destroy_instance(&self, inst: InstanceId) {
        {
            let mut core = self.core.borrow_mut();
            core.shared.timers.cancel_where(
                |k| matches!(k, TimerKind::Handler { instance, .. } if *instance == inst),
            );
            watch::remove_all(&mut core, inst);
        }
        self.hooks().destroy(inst);
    }
}
