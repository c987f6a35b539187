//! The dispatcher: the only code that calls hooks.
//!
//! Rules it keeps: the loop state (`Core`) is never borrowed while a hook
//! runs, so host functions can borrow it; what a host function causes is
//! queued in `Core::pending` and delivered here after the hook returns; a
//! connection is released only after its `on_close`, so an id stays valid
//! (and stale afterwards) exactly as the ABI promises.

use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use loopd_handler_api::abi::{self, loopd_conn_info, loopd_listen_info};

use crate::config::FramingKind;
use crate::conn::{next_frame, skip_input, Discard, Next, Phase, Skipping};
use crate::event_loop::Ready;
use crate::state::{Bound, Deferred, Source};
use crate::sys;
use crate::timer::TimerKind;
use crate::Runtime;

/// Most reads from one connection per readiness event (fairness).
const READS_PER_EVENT: usize = 4;
/// Most datagrams read from one socket per readiness event (fairness).
const DATAGRAMS_PER_EVENT: usize = 64;

fn framing_raw(f: FramingKind) -> u32 {
    match f {
        FramingKind::Raw => abi::LOOPD_FRAMING_RAW,
        FramingKind::Line => abi::LOOPD_FRAMING_LINE,
        FramingKind::LengthPrefixed => abi::LOOPD_FRAMING_LENGTH_PREFIXED,
    }
}

fn peer_text(a: &abi::loopd_addr) -> String {
    match a.to_socket_addr() {
        Some(sa) => sa.to_string(),
        None if a.family == abi::LOOPD_AF_UNIX => "unix peer".to_string(),
        None => "unknown peer".to_string(),
    }
}

/// What is left of an input buffer after frames were taken from it: nothing
/// at all when it is empty (an idle connection holds no buffer), and no more
/// capacity than a few times what it holds.
fn keep_partial(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.is_empty() {
        return Vec::new();
    }
    if buf.capacity() > 4 * buf.len().max(4096) {
        buf.shrink_to(buf.len().max(4096));
    }
    buf
}

impl Runtime {
    // ---------------------------------------------------------------------
    // Hook calls. Each one: the Core is not borrowed; pointers are valid for
    // the call; the instance is alive (not destroyed).
    // ---------------------------------------------------------------------

    fn hook_on_open(
        &self,
        inst: usize,
        id: u64,
        info: &loopd_conn_info,
        state: &mut *mut c_void,
    ) -> i32 {
        let i = &self.instances[inst];
        match i.plugin.vtable.on_open {
            // SAFETY: checked plugin vtable; `info` and `state` are valid for the call.
            Some(f) => unsafe { f(i.ctx.as_raw(), i.ptr, id, info, state) },
            None => abi::LOOPD_OK,
        }
    }

    fn hook_on_data(&self, inst: usize, id: u64, state: *mut c_void, data: &[u8]) -> i32 {
        let i = &self.instances[inst];
        match i.plugin.vtable.on_data {
            // SAFETY: checked plugin vtable; `data` is borrowed for the call.
            Some(f) => unsafe { f(i.ctx.as_raw(), i.ptr, id, state, data.as_ptr(), data.len()) },
            None => abi::LOOPD_OK,
        }
    }

    fn hook_on_eof(&self, inst: usize, id: u64, state: *mut c_void) -> i32 {
        let i = &self.instances[inst];
        match i.plugin.vtable.on_eof {
            // SAFETY: checked plugin vtable; plain values.
            Some(f) => unsafe { f(i.ctx.as_raw(), i.ptr, id, state) },
            None => abi::LOOPD_EOF_CLOSE,
        }
    }

    fn hook_on_writable(&self, inst: usize, id: u64, state: *mut c_void) {
        let i = &self.instances[inst];
        if let Some(f) = i.plugin.vtable.on_writable {
            // SAFETY: checked plugin vtable; plain values.
            unsafe { f(i.ctx.as_raw(), i.ptr, id, state) }
        }
    }

    fn hook_on_close(&self, inst: usize, id: u64, state: *mut c_void, reason: i32) {
        let i = &self.instances[inst];
        if let Some(f) = i.plugin.vtable.on_close {
            // SAFETY: checked plugin vtable; plain values; last call for `state`.
            unsafe { f(i.ctx.as_raw(), i.ptr, id, state, reason) }
        }
    }

    /// Tells the owning instance about a listener (`on_listen`, ABI 1.1).
    pub(crate) fn announce_listener(&self, b: &Bound) {
        let i = &self.instances[b.instance];
        let Some(f) = i.plugin.vtable.on_listen else {
            return;
        };
        let url = CString::new(b.url.as_str()).unwrap_or_default();
        let info = loopd_listen_info {
            struct_size: std::mem::size_of::<loopd_listen_info>() as u32,
            transport: b.transport,
            local: b.local,
            url: url.as_ptr(),
        };
        // SAFETY: checked plugin vtable; `info` and `url` are valid for the call.
        unsafe { f(i.ctx.as_raw(), i.ptr, b.id, &info) };
    }

    // ---------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------

    pub(crate) fn dispatch(&mut self, r: Ready) {
        enum Kind {
            Listener,
            Conn,
            Datagram,
            Signal,
        }
        let kind = match self.core.borrow().sources.get(r.key) {
            Some(Source::Listener(_)) => Kind::Listener,
            Some(Source::Conn(_)) => Kind::Conn,
            Some(Source::Datagram(_)) => Kind::Datagram,
            Some(Source::Signal(_)) => Kind::Signal,
            // An event for a source removed earlier in this pass.
            None => return,
        };
        match kind {
            Kind::Listener => self.core.borrow_mut().accept(r.key),
            Kind::Conn => {
                if r.writable {
                    self.core.borrow_mut().conn_writable(r.key);
                }
                if r.readable {
                    if self.hung_up_unasked(r.key) {
                        self.core
                            .borrow_mut()
                            .begin_close(r.key, true, abi::LOOPD_REASON_ERROR);
                    } else {
                        let prev = self.set_current(r.key);
                        self.conn_readable(r.key);
                        self.set_current(prev);
                    }
                }
            }
            Kind::Datagram => self.datagram_readable(r.key),
            Kind::Signal => self.signal_readable(r.key),
        }
    }

    /// A readable event on a connection not registered for reading is epoll's
    /// unconditional HUP/ERR (or a stale event from earlier in this pass):
    /// true if the socket really is dead, so it gets closed instead of
    /// reported again and again.
    fn hung_up_unasked(&self, id: u64) -> bool {
        let core = self.core.borrow();
        let Some(c) = core.conn(id) else { return false };
        if c.phase != Phase::Open || c.interest.0 {
            return false;
        }
        let Some(fd) = &c.fd else { return false };
        let dead = sys::hung_up(fd.as_raw_fd());
        if dead {
            log::debug!(
                "{}: connection {id}: peer hung up",
                core.instances[c.instance].name
            );
        }
        dead
    }

    /// Reads from a connection and hands complete frames to the handler.
    fn conn_readable(&mut self, id: u64) {
        for _ in 0..READS_PER_EVENT {
            let mut core = self.core.borrow_mut();
            let Some(c) = core.conn_mut(id) else { return };
            if !c.can_deliver() || c.read_eof {
                return;
            }
            let fd =
                c.fd.as_ref()
                    .expect("open connection has an fd")
                    .as_raw_fd();
            let framing = c.framing;
            let cap = if framing == FramingKind::Raw {
                c.max_frame.min(self.scratch.len())
            } else {
                self.scratch.len()
            };
            let n = match sys::recv(fd, &mut self.scratch[..cap]) {
                Ok(0) => {
                    c.read_eof = true;
                    core.update_interest(id);
                    drop(core);
                    self.process_input(id);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let inst = c.instance;
                    log::debug!(
                        "{}: read from connection {id}: {e}",
                        core.instances[inst].name
                    );
                    core.begin_close(id, true, abi::LOOPD_REASON_ERROR);
                    return;
                }
            };
            if framing == FramingKind::Raw || c.inbuf.is_empty() {
                // The common case: frames straight from the read buffer.
                drop(core);
                let data = &self.scratch[..n];
                let used = self.deliver_frames(id, data);
                if used < n {
                    let mut core = self.core.borrow_mut();
                    if let Some(c) = core.conn_mut(id) {
                        if c.phase == Phase::Open {
                            c.inbuf.extend_from_slice(&data[used..]);
                        }
                    }
                }
            } else {
                c.inbuf.extend_from_slice(&self.scratch[..n]);
                drop(core);
                self.process_input(id);
            }
            if n < cap {
                return;
            }
        }
    }

    /// Hands frames in `data` to the handler while the connection can take
    /// them; returns how many bytes were consumed.
    fn deliver_frames(&self, id: u64, data: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            let (inst, state, framing, max) = {
                let mut core = self.core.borrow_mut();
                let Some(c) = core.conn_mut(id) else {
                    return pos;
                };
                if !c.can_deliver() {
                    return pos;
                }
                // The rest of a frame the handler chose to skip.
                if let Some(skipping) = c.skipping {
                    let (dropped, still) = skip_input(skipping, &data[pos..]);
                    pos += dropped;
                    c.skipping = still;
                    if still.is_some() {
                        return pos;
                    }
                }
                (c.instance, c.state, c.framing, c.max_frame)
            };
            match next_frame(framing, max, &data[pos..]) {
                Next::Frame {
                    start,
                    end,
                    consumed,
                } => {
                    let status = self.hook_on_data(inst, id, state, &data[pos + start..pos + end]);
                    pos += consumed;
                    if status < 0 {
                        self.hook_failed(id, "on_data");
                        return pos;
                    }
                }
                Next::Incomplete => return pos,
                Next::TooBig(size, discard) => {
                    if !self.oversize_skipped(inst, id, state, size, max) {
                        return pos;
                    }
                    let mut core = self.core.borrow_mut();
                    let Some(c) = core.conn_mut(id) else {
                        return pos;
                    };
                    let rest = &data[pos..];
                    match discard {
                        Discard::Consume(n) => pos += n,
                        Discard::UntilNewline => {
                            pos += rest.len();
                            c.skipping = Some(Skipping::Line);
                        }
                        Discard::Payload(len) => {
                            let (dropped, still) = skip_input(Skipping::Bytes(len), &rest[4..]);
                            pos += 4 + dropped;
                            c.skipping = still;
                        }
                    }
                }
            }
        }
    }

    /// A frame over max_frame: asks the handler (`on_oversize`, ABI 1.1)
    /// whether to skip it; otherwise closes the connection with a log line.
    /// Returns true if the frame is to be skipped.
    fn oversize_skipped(
        &self,
        inst: usize,
        id: u64,
        state: *mut c_void,
        size: usize,
        max: usize,
    ) -> bool {
        let i = &self.instances[inst];
        if let Some(f) = i.plugin.vtable.on_oversize {
            // SAFETY: checked plugin vtable; plain values.
            let verdict = unsafe { f(i.ctx.as_raw(), i.ptr, id, state, size as u64, max as u64) };
            let still_open = self
                .core
                .borrow()
                .conn(id)
                .is_some_and(|c| c.phase == Phase::Open);
            if !still_open {
                // The handler closed it from the hook: nothing more to say.
                return false;
            }
            if verdict == abi::LOOPD_OVERSIZE_SKIP {
                log::debug!(
                    "{}: connection {id}: skipping a frame of {size} bytes over max_frame ({max} bytes)",
                    i.name
                );
                return true;
            }
        }
        let mut core = self.core.borrow_mut();
        if let Some(c) = core.conn(id) {
            log::warn!(
                "{}: closing connection {id} from {}: frame of {size} bytes exceeds max_frame ({max} bytes)",
                core.instances[inst].name,
                peer_text(&c.peer),
            );
        }
        core.begin_close(id, false, abi::LOOPD_REASON_FRAME_TOO_BIG);
        false
    }

    /// Delivers buffered frames (after a pause, or after EOF), then EOF itself.
    fn process_input(&self, id: u64) {
        let buf = {
            let mut core = self.core.borrow_mut();
            let Some(c) = core.conn_mut(id) else { return };
            if !c.can_deliver() {
                return;
            }
            std::mem::take(&mut c.inbuf)
        };
        let used = if buf.is_empty() {
            0
        } else {
            self.deliver_frames(id, &buf)
        };
        let (eof_due, inst, state, framing, max, rest) = {
            let mut core = self.core.borrow_mut();
            let Some(c) = core.conn_mut(id) else { return };
            if c.phase != Phase::Open {
                return;
            }
            let mut buf = buf;
            buf.drain(..used);
            let eof_due = c.read_eof && !c.eof_done && c.can_deliver();
            if eof_due {
                c.eof_done = true;
                (true, c.instance, c.state, c.framing, c.max_frame, buf)
            } else {
                c.inbuf = keep_partial(buf);
                return;
            }
        };
        debug_assert!(eof_due);
        // The peer is done. A last line without "\n" is still a line (or,
        // for a handler with on_partial, reported as unfinished); a
        // truncated length-prefixed frame is not a frame.
        if !rest.is_empty() {
            match framing {
                FramingKind::Line => {
                    let end = if rest.last() == Some(&b'\r') {
                        rest.len() - 1
                    } else {
                        rest.len()
                    };
                    if end > max {
                        if !self.oversize_skipped(inst, id, state, end, max) {
                            return;
                        }
                    } else if let Some(f) = self.instances[inst].plugin.vtable.on_partial {
                        let i = &self.instances[inst];
                        // SAFETY: checked plugin vtable; the bytes are borrowed for the call.
                        unsafe { f(i.ctx.as_raw(), i.ptr, id, state, rest.as_ptr(), end) };
                    } else if self.hook_on_data(inst, id, state, &rest[..end]) < 0 {
                        self.hook_failed(id, "on_data");
                        return;
                    }
                }
                _ => log::debug!(
                    "{}: connection {id}: dropping {} bytes of a truncated frame at EOF",
                    self.instances[inst].name,
                    rest.len()
                ),
            }
        }
        let still_open = self
            .core
            .borrow()
            .conn(id)
            .is_some_and(|c| c.phase == Phase::Open);
        if !still_open {
            return;
        }
        if self.hook_on_eof(inst, id, state) != abi::LOOPD_EOF_KEEP_OPEN {
            self.core
                .borrow_mut()
                .begin_close(id, false, abi::LOOPD_REASON_PEER);
        }
    }

    fn hook_failed(&self, id: u64, hook: &str) {
        let mut core = self.core.borrow_mut();
        if let Some(c) = core.conn(id) {
            log::warn!(
                "{}: {hook} failed on connection {id} from {}; closing it",
                core.instances[c.instance].name,
                peer_text(&c.peer)
            );
        }
        core.begin_close(id, true, abi::LOOPD_REASON_HANDLER);
    }

    /// Reads up to [`DATAGRAMS_PER_EVENT`] datagrams and hands each to
    /// `on_datagram` with its sender. A datagram over the socket's
    /// `max_datagram` is detected (`MSG_TRUNC` reports its real size) and
    /// dropped, never delivered cut short.
    fn datagram_readable(&mut self, id: u64) {
        for _ in 0..DATAGRAMS_PER_EVENT {
            let (inst, cap, result) = {
                let core = self.core.borrow();
                let Some(Source::Datagram(d)) = core.sources.get(id) else {
                    return;
                };
                let cap = d.max_datagram.min(self.scratch.len());
                let fd = d.sock.as_raw_fd();
                (
                    d.instance,
                    cap,
                    sys::recv_from(fd, &mut self.scratch[..cap]),
                )
            };
            match result {
                Ok((n, peer)) if n > cap => {
                    self.core.borrow_mut().datagram_too_big(id, n, &peer);
                }
                Ok((n, peer)) => {
                    let i = &self.instances[inst];
                    if let (Some(f), false) = (i.plugin.vtable.on_datagram, i.destroyed) {
                        // SAFETY: checked plugin vtable; `peer` and the bytes are borrowed for the call.
                        unsafe { f(i.ctx.as_raw(), i.ptr, id, &peer, self.scratch.as_ptr(), n) };
                    }
                    self.drain_pending();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. a queued ICMP error: reading it clears it.
                    log::debug!(
                        "{}: receiving a datagram on socket {id}: {e}",
                        self.instances[inst].name
                    );
                    return;
                }
            }
        }
    }

    fn signal_readable(&mut self, id: u64) {
        let mut buf = [0u8; 16];
        let n = {
            let core = self.core.borrow();
            let Some(Source::Signal(s)) = core.sources.get(id) else {
                return;
            };
            sys::recv(s.as_raw_fd(), &mut buf).unwrap_or(0)
        };
        for _ in 0..n {
            if self.core.borrow().shutdown_deadline.is_none() {
                self.begin_shutdown();
            } else {
                let open = self.core.borrow().conns;
                log::warn!("second signal: closing {open} connections now");
                self.close_everything(abi::LOOPD_REASON_SHUTDOWN);
                self.stopped = true;
                return;
            }
        }
    }

    // ---------------------------------------------------------------------
    // Deferred work
    // ---------------------------------------------------------------------

    /// Delivers everything host functions and I/O queued, until nothing is left.
    pub(crate) fn drain_pending(&self) {
        loop {
            let next = self.core.borrow_mut().pending.pop_front();
            match next {
                None => return,
                Some(Deferred::Open(id)) => {
                    let prev = self.set_current(id);
                    self.deliver_open(id);
                    self.set_current(prev);
                }
                Some(Deferred::Close(id)) => self.finish_close(id),
                Some(Deferred::Writable(id)) => {
                    let target = {
                        let core = self.core.borrow();
                        core.conn(id)
                            .filter(|c| c.phase == Phase::Open)
                            .map(|c| (c.instance, c.state))
                    };
                    if let Some((inst, state)) = target {
                        let prev = self.set_current(id);
                        self.hook_on_writable(inst, id, state);
                        self.set_current(prev);
                    }
                }
                Some(Deferred::Input(id)) => {
                    let prev = self.set_current(id);
                    self.process_input(id);
                    self.set_current(prev);
                }
            }
        }
    }

    /// Marks `id` as the connection being handled (its sends are replies);
    /// returns the previous one.
    fn set_current(&self, id: u64) -> u64 {
        std::mem::replace(&mut self.core.borrow_mut().current, id)
    }

    /// Writes the output sends deferred during this pass (see `Core::send`),
    /// and delivers what that causes, until nothing is left deferred.
    pub(crate) fn flush_deferred(&self) {
        loop {
            let mut dirty = std::mem::take(&mut self.core.borrow_mut().dirty);
            if dirty.is_empty() {
                return;
            }
            for &id in &dirty {
                self.core.borrow_mut().flush_deferred(id);
            }
            dirty.clear();
            {
                let mut core = self.core.borrow_mut();
                if core.dirty.is_empty() {
                    // Keep the allocation for the next pass.
                    core.dirty = dirty;
                }
            }
            // on_writable, resumed input and closes may send again.
            self.drain_pending();
        }
    }

    fn deliver_open(&self, id: u64) {
        let (inst, info) = {
            let mut core = self.core.borrow_mut();
            let Some(c) = core.conn_mut(id) else { return };
            if c.phase != Phase::Open || c.opened {
                return;
            }
            c.opened = true;
            c.known = true;
            let info = loopd_conn_info {
                struct_size: std::mem::size_of::<loopd_conn_info>() as u32,
                transport: c.transport,
                origin: c.origin,
                framing: framing_raw(c.framing),
                peer: c.peer,
                local: c.local,
                endpoint: c.endpoint.as_ptr(),
            };
            // Keep the endpoint string alive for the call even if the
            // connection is released meanwhile (it cannot be: no re-entrancy).
            (c.instance, (info, c.endpoint.clone()))
        };
        let mut state: *mut c_void = std::ptr::null_mut();
        let status = self.hook_on_open(inst, id, &info.0, &mut state);
        let mut core = self.core.borrow_mut();
        if let Some(c) = core.conn_mut(id) {
            c.state = state;
            log::debug!(
                "{}: connection {id} opened ({} on {})",
                core.instances[inst].name,
                peer_text(&info.0.peer),
                info.1.to_str().unwrap_or("?")
            );
        }
        if status < 0 {
            log::debug!(
                "{}: on_open refused connection {id}",
                core.instances[inst].name
            );
            core.begin_close(id, true, abi::LOOPD_REASON_HANDLER);
        } else {
            core.update_interest(id);
        }
    }

    fn finish_close(&self, id: u64) {
        let Some((inst, state, reason, known)) = self.core.borrow_mut().release_conn(id) else {
            return;
        };
        log::debug!(
            "{}: connection {id} closed ({})",
            self.instances[inst].name,
            abi::reason_str(reason)
        );
        if known {
            self.hook_on_close(inst, id, state, reason);
        }
        self.core.borrow_mut().sources.remove(id);
    }

    /// Fires every timer that is due; returns how many.
    pub(crate) fn fire_timers(&self) -> usize {
        let now = Instant::now();
        let mut fired = 0;
        loop {
            let due = self.core.borrow_mut().timers.pop_due(now);
            let Some((id, kind)) = due else { return fired };
            fired += 1;
            match kind {
                TimerKind::Handler {
                    instance,
                    user_data,
                } => {
                    let i = &self.instances[instance];
                    if let (Some(f), false) = (i.plugin.vtable.on_timer, i.destroyed) {
                        // SAFETY: checked plugin vtable; plain values.
                        unsafe { f(i.ctx.as_raw(), i.ptr, id, user_data) };
                    }
                }
                TimerKind::CloseTimeout { conn } => self.core.borrow_mut().close_timed_out(conn),
                TimerKind::ResumeListener { listener } => {
                    self.core.borrow_mut().resume_listener(listener)
                }
            }
            self.drain_pending();
        }
    }

    // ---------------------------------------------------------------------
    // Shutdown and teardown
    // ---------------------------------------------------------------------

    /// Stops accepting, tells every instance, and starts the deadline.
    pub(crate) fn begin_shutdown(&mut self) {
        {
            let mut core = self.core.borrow_mut();
            if core.shutdown_deadline.is_some() {
                return;
            }
            let timeout = core.cfg.shutdown_timeout;
            core.shutdown_deadline = Some(Instant::now() + timeout);
            core.close_listeners();
            log::info!(
                "shutting down: listeners closed; waiting up to {} ms for {} open connections",
                timeout.as_millis(),
                core.conns
            );
        }
        for index in 0..self.instances.len() {
            let i = &self.instances[index];
            if let (Some(f), false) = (i.plugin.vtable.on_shutdown, i.destroyed) {
                // SAFETY: checked plugin vtable; plain values.
                unsafe { f(i.ctx.as_raw(), i.ptr) };
            }
            self.drain_pending();
        }
    }

    /// Ends a graceful shutdown when every connection is gone or time is up.
    pub(crate) fn check_shutdown(&mut self) {
        let (deadline, open) = {
            let core = self.core.borrow();
            let Some(deadline) = core.shutdown_deadline else {
                return;
            };
            (deadline, core.conns)
        };
        if open == 0 {
            log::info!("shutdown complete");
            self.stopped = true;
        } else if Instant::now() >= deadline {
            log::warn!("shutdown timeout: closing {open} connections that are still open");
            self.close_everything(abi::LOOPD_REASON_SHUTDOWN);
            self.stopped = true;
        }
    }

    /// Aborts every connection and delivers their `on_close`.
    pub(crate) fn close_everything(&self, reason: i32) {
        {
            let mut core = self.core.borrow_mut();
            for id in core.sources.ids() {
                if core.conn(id).is_some() {
                    core.begin_close(id, true, reason);
                }
            }
        }
        self.drain_pending();
    }

    /// Calls `destroy` for an instance whose connections are all closed.
    pub(crate) fn destroy_instance(&mut self, index: usize) {
        self.core.borrow_mut().timers.cancel_where(
            |k| matches!(k, TimerKind::Handler { instance, .. } if *instance == index),
        );
        let i = &mut self.instances[index];
        if i.destroyed {
            return;
        }
        i.destroyed = true;
        if let Some(f) = i.plugin.vtable.destroy {
            // SAFETY: checked plugin vtable; called once, after every on_close.
            unsafe { f(i.ctx.as_raw(), i.ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_partial;

    #[test]
    fn an_emptied_input_buffer_is_freed_and_a_mostly_empty_one_shrunk() {
        let mut big = Vec::with_capacity(1 << 20);
        big.extend_from_slice(b"x");
        big.clear();
        assert_eq!(keep_partial(big).capacity(), 0);
        let mut partial = Vec::with_capacity(1 << 20);
        partial.extend_from_slice(b"half a line");
        let kept = keep_partial(partial);
        assert_eq!(kept, b"half a line");
        assert!(kept.capacity() <= 4 * 4096, "{}", kept.capacity());
    }
}
