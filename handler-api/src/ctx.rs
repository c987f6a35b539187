//! [`Ctx`]: the host functions, safely.

use std::ffi::CString;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::abi::{self, loopd_bytes, loopd_ctx, loopd_host_api};
use crate::datagrams::{LentOutbox, Outbox};
use crate::timer_payload::TimerPayloads;
use crate::types::{
    CloseMode, ConnId, ConnectOptions, Error, Framing, Interest, Level, SocketId, TimerId, WatchId,
};

/// A metric a handler declared ([`Ctx::counter`], [`Ctx::gauge`],
/// [`Ctx::histogram`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Metric(u64);

/// One set of label values of a [`Metric`] ([`Ctx::series`]): what
/// [`Ctx::metric_add`], [`Ctx::metric_set`] and [`Ctx::metric_observe`]
/// update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Series(u64);

fn c_strings(list: &[&str]) -> Result<Vec<CString>, Error> {
    list.iter()
        .map(|s| CString::new(*s).map_err(|_| Error::Invalid))
        .collect()
}

/// The runtime's side of the contract: send, close, timers, connect, logging.
///
/// Every hook receives a `Ctx`; it stays valid until the instance is dropped,
/// so a handler may keep the one `create` gets. Its methods may only be called
/// from inside a hook, on the loop thread; anywhere else they return
/// [`Error::WrongThread`] ([`Ctx::log`] works from any thread). A host call
/// never runs another hook: a close or an error it causes is delivered after
/// the current hook returns.
#[derive(Clone, Copy)]
pub struct Ctx {
    host: *const loopd_host_api,
    raw: *mut loopd_ctx,
    /// The instance's timer payloads (NULL for a `Ctx` made by
    /// [`Ctx::from_raw`]: typed payloads are then unsupported).
    payloads: *const TimerPayloads,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("raw", &self.raw).finish()
    }
}

/// Parts sent by one `sendv` call without a heap allocation.
const INLINE_PARTS: usize = 8;

impl Ctx {
    /// Wraps a host table and the host's context pointer.
    ///
    /// # Safety
    /// `host` must point to a `loopd_host_api` of this SDK's full size (a
    /// table from an older host must be copied into one first, with every
    /// field past the host's `struct_size` NULL, as the SDK's own glue does:
    /// the newer host functions are then reported as unsupported) that stays
    /// valid and unchanged while this `Ctx` or a copy of it is used, and
    /// `raw` must be the context the host passed to the current instance.
    pub unsafe fn from_raw(host: *const loopd_host_api, raw: *mut loopd_ctx) -> Ctx {
        Ctx {
            host,
            raw,
            payloads: std::ptr::null(),
        }
    }

    /// [`Ctx::from_raw`] with the instance's payload table, for the glue.
    ///
    /// # Safety
    /// As [`Ctx::from_raw`]; and `payloads` must stay valid while this
    /// `Ctx` or a copy of it is used (the glue keeps it for the life of
    /// the instance, and drops it after the handler).
    pub(crate) unsafe fn with_payloads(
        host: *const loopd_host_api,
        raw: *mut loopd_ctx,
        payloads: *const TimerPayloads,
    ) -> Ctx {
        Ctx {
            host,
            raw,
            payloads,
        }
    }

    fn payloads(&self) -> Option<&TimerPayloads> {
        // SAFETY: `with_payloads`' contract: NULL, or valid while this Ctx
        // is used.
        unsafe { self.payloads.as_ref() }
    }

    /// The host's context pointer, for calling the raw ABI directly.
    pub fn as_raw(&self) -> *mut loopd_ctx {
        self.raw
    }

    fn host(&self) -> &loopd_host_api {
        // SAFETY: `from_raw`'s contract: `host` is valid for as long as this Ctx is used.
        unsafe { &*self.host }
    }

    /// loopd's version and ABI minor, e.g. `("0.1.0", 0)`.
    pub fn host_version(&self) -> (&str, u32) {
        let host = self.host();
        let version = if host.version.is_null() {
            ""
        } else {
            // SAFETY: the host promises a static NUL-terminated string.
            unsafe { std::ffi::CStr::from_ptr(host.version) }
                .to_str()
                .unwrap_or("")
        };
        (version, host.abi_minor)
    }

    /// Sends `data` on `conn`: written at once if the socket takes it, queued otherwise.
    ///
    /// # Errors
    /// [`Error::Again`] when the output queue is at its high watermark (nothing
    /// was queued; [`crate::Handler::on_writable`] follows once it drains),
    /// [`Error::Closed`] when the connection is closing, [`Error::NoSuchConn`]
    /// for an unknown or stale id.
    pub fn send(&self, conn: ConnId, data: &[u8]) -> Result<(), Error> {
        let f = self.host().send.ok_or(Error::Unsupported)?;
        // SAFETY: `data` is valid for reads of `data.len()` bytes for this call; the host copies it.
        Error::check(unsafe { f(self.raw, conn.raw(), data.as_ptr(), data.len()) })
    }

    /// Sends several byte slices back to back as one message: all or nothing.
    ///
    /// # Errors
    /// As [`Ctx::send`].
    pub fn send_parts(&self, conn: ConnId, parts: &[&[u8]]) -> Result<(), Error> {
        let f = self.host().sendv.ok_or(Error::Unsupported)?;
        let mut inline = [loopd_bytes {
            ptr: std::ptr::null(),
            len: 0,
        }; INLINE_PARTS];
        let heap: Vec<loopd_bytes>;
        let raw_parts: &[loopd_bytes] = if parts.len() <= INLINE_PARTS {
            for (slot, part) in inline.iter_mut().zip(parts) {
                *slot = loopd_bytes {
                    ptr: part.as_ptr(),
                    len: part.len(),
                };
            }
            &inline[..parts.len()]
        } else {
            heap = parts
                .iter()
                .map(|p| loopd_bytes {
                    ptr: p.as_ptr(),
                    len: p.len(),
                })
                .collect();
            &heap
        };
        // SAFETY: every part points to a live slice for the duration of the call.
        Error::check(unsafe { f(self.raw, conn.raw(), raw_parts.as_ptr(), raw_parts.len()) })
    }

    /// Sends one message framed for `framing`: as is for raw, followed by `\n`
    /// for line (the payload should not contain `\n` itself), preceded by its
    /// 4-byte big-endian length for length-prefixed.
    ///
    /// # Errors
    /// [`Error::Invalid`] if a length-prefixed payload is over `u32::MAX` bytes;
    /// otherwise as [`Ctx::send`].
    pub fn send_frame(&self, conn: ConnId, framing: Framing, payload: &[u8]) -> Result<(), Error> {
        match framing {
            Framing::Line => self.send_parts(conn, &[payload, b"\n"]),
            Framing::LengthPrefixed => {
                let header = crate::length_prefix(payload.len()).ok_or(Error::Invalid)?;
                self.send_parts(conn, &[&header, payload])
            }
            Framing::Raw | Framing::Default => self.send(conn, payload),
        }
    }

    /// Closes `conn`. `on_close` follows after the current hook returns (for
    /// [`CloseMode::Flush`], once the queue is sent or the flush times out).
    /// Closing a connection that is already closing is `Ok`.
    ///
    /// # Errors
    /// [`Error::NoSuchConn`] for an unknown or stale id.
    pub fn close(&self, conn: ConnId, mode: CloseMode) -> Result<(), Error> {
        let f = self.host().close.ok_or(Error::Unsupported)?;
        let mode = match mode {
            CloseMode::Flush => abi::LOOPD_CLOSE_FLUSH,
            CloseMode::Abort => abi::LOOPD_CLOSE_ABORT,
            CloseMode::Reset if self.host().abi_minor >= 6 => abi::LOOPD_CLOSE_RESET,
            CloseMode::Reset => abi::LOOPD_CLOSE_ABORT,
        };
        // SAFETY: plain values only.
        Error::check(unsafe { f(self.raw, conn.raw(), mode) })
    }

    /// Sends one datagram from `socket` to `to`. Never queued.
    ///
    /// # Errors
    /// [`Error::Again`] if the kernel's buffer is full (the datagram was
    /// dropped), [`Error::Io`], [`Error::NoSuchConn`], [`Error::Unsupported`]
    /// if `socket` is a stream.
    pub fn send_datagram(
        &self,
        socket: SocketId,
        to: SocketAddr,
        data: &[u8],
    ) -> Result<(), Error> {
        let f = self.host().send_datagram.ok_or(Error::Unsupported)?;
        let to = abi::loopd_addr::from_socket_addr(to);
        // SAFETY: `to` and `data` are valid for the duration of the call.
        Error::check(unsafe { f(self.raw, socket.raw(), &to, data.as_ptr(), data.len()) })
    }

    /// Sends every datagram of `out` from `socket`, in order, with as few
    /// system calls as the host can (one `sendmmsg` on Linux, with runs of
    /// same-sized datagrams to one address as one UDP GSO send; ABI 1.4). Never
    /// queued. [`Outbox::results`] then says what happened to each (as
    /// [`Ctx::send_datagram`] would have) and [`Outbox::sent`] how many went.
    /// On a host without `send_datagrams` they go one `send_datagram` each,
    /// with the same results.
    ///
    /// # Errors
    /// The first datagram's error that was not sent ([`Error::Again`]: the
    /// kernel's buffer was full, it and the rest were dropped;
    /// [`Error::Io`]; [`Error::Invalid`]); [`Error::NoSuchConn`] or
    /// [`Error::Unsupported`] (a stream) before any is tried: then none was
    /// sent and every result reads [`Error::Again`] (not sent), so check
    /// this error before blaming a full buffer.
    pub fn send_datagrams(&self, socket: SocketId, out: &mut Outbox) -> Result<(), Error> {
        if out.is_empty() {
            out.finish(0);
            return Ok(());
        }
        let Some(f) = self.host().send_datagrams else {
            return self.send_datagrams_one_by_one(socket, out);
        };
        let msgs = out.prepare();
        let mut sent = 0usize;
        // SAFETY: `msgs` is `len` initialised datagrams pointing into `out`'s
        // bytes, which stay put for the call; `sent` is a valid out-pointer.
        let status = unsafe {
            f(
                self.raw,
                socket.raw(),
                msgs.as_mut_ptr(),
                msgs.len(),
                &mut sent,
            )
        };
        out.finish(sent);
        Error::check(status)
    }

    /// [`Ctx::send_datagrams`] for a [`LentOutbox`]: its lent datagrams go
    /// out from the bytes they borrow, without a copy.
    ///
    /// # Errors
    /// As [`Ctx::send_datagrams`].
    pub fn send_lent_datagrams(
        &self,
        socket: SocketId,
        out: &mut LentOutbox<'_>,
    ) -> Result<(), Error> {
        self.send_datagrams(socket, out.outbox_mut())
    }

    /// [`Ctx::send_datagrams`] on a host that lacks it.
    fn send_datagrams_one_by_one(&self, socket: SocketId, out: &mut Outbox) -> Result<(), Error> {
        // Nothing from an earlier send may show through.
        out.mark_unsent();
        let f = self.host().send_datagram.ok_or(Error::Unsupported)?;
        let (mut sent, mut first) = (0, abi::LOOPD_OK);
        let mut full = false;
        for i in 0..out.len() {
            let status = if full {
                abi::LOOPD_ERR_AGAIN
            } else {
                let (to, data) = out.entry(i);
                // SAFETY: `to` and `data` are valid for the duration of the call.
                unsafe { f(self.raw, socket.raw(), to, data.as_ptr(), data.len()) }
            };
            match status {
                abi::LOOPD_OK => sent += 1,
                abi::LOOPD_ERR_NO_SUCH_CONN | abi::LOOPD_ERR_UNSUPPORTED if i == 0 => {
                    out.set_sent(0);
                    return Error::check(status);
                }
                abi::LOOPD_ERR_AGAIN => full = true,
                _ => {}
            }
            if status != abi::LOOPD_OK && first == abi::LOOPD_OK {
                first = status;
            }
            out.set_status(i, status);
        }
        out.set_sent(sent);
        Error::check(first)
    }

    /// Arms a one-shot timer; [`crate::Handler::on_timer`] gets `user_data` after `delay`.
    ///
    /// The host counts delays in whole milliseconds (`timer_set`'s
    /// `delay_ms`): a `delay` that is not one is rounded up, so `on_timer`
    /// never comes before `delay` has passed (1 µs waits 1 ms; zero fires on
    /// the next pass).
    ///
    /// # Errors
    /// [`Error::Limit`] if the runtime's timer limit is reached.
    pub fn set_timer(&self, delay: Duration, user_data: u64) -> Result<TimerId, Error> {
        let f = self.host().timer_set.ok_or(Error::Unsupported)?;
        let ms = delay_ms(delay);
        let mut id = 0u64;
        // SAFETY: `id` is a valid out-pointer for the duration of the call.
        Error::check(unsafe { f(self.raw, ms, user_data, &mut id) })?;
        Ok(TimerId::from_raw(id))
    }

    /// Cancels a pending timer. A payload it carries
    /// ([`Ctx::set_timer_with`]) is dropped here, also when the timer had
    /// already fired (inside its own `on_timer`).
    ///
    /// # Errors
    /// [`Error::NoSuchTimer`] if it already fired or was cancelled.
    pub fn cancel_timer(&self, timer: TimerId) -> Result<(), Error> {
        let f = self.host().timer_cancel.ok_or(Error::Unsupported)?;
        // SAFETY: plain values only.
        let result = Error::check(unsafe { f(self.raw, timer.raw()) });
        if matches!(result, Ok(()) | Err(Error::NoSuchTimer)) {
            if let Some(payloads) = self.payloads() {
                payloads.cancel(timer.raw());
            }
        }
        result
    }

    /// Arms a one-shot timer carrying `payload`, a value of any type:
    /// [`crate::Handler::on_timer`] runs after `delay` (with `user_data` 0)
    /// and gets it back with [`Ctx::take_timer_payload`]. The SDK keeps the
    /// payload in a per-instance table keyed by the timer's id; it is
    /// dropped when `on_timer` returns without taking it, when the timer
    /// is cancelled ([`Ctx::cancel_timer`]), or when the instance is
    /// destroyed. Delays round up to whole milliseconds, as for
    /// [`Ctx::set_timer`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use loopd_handler_api::{ConnId, Ctx, Handler, NoConfig, TimerId};
    ///
    /// /// What a timer is for, handed back typed in `on_timer`.
    /// struct Reminder {
    ///     conn: ConnId,
    ///     text: String,
    /// }
    ///
    /// struct Later;
    ///
    /// impl Handler for Later {
    ///     type Config = NoConfig;
    ///     type Conn = ();
    ///     fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
    ///         Ok(Later)
    ///     }
    ///     fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), line: &[u8]) {
    ///         let text = String::from_utf8_lossy(line).into_owned();
    ///         let _ = ctx.set_timer_with(Duration::from_secs(1), Reminder { conn, text });
    ///     }
    ///     fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, _: u64) {
    ///         if let Some(r) = ctx.take_timer_payload::<Reminder>(timer) {
    ///             let _ = ctx.send(r.conn, r.text.as_bytes());
    ///         }
    ///     }
    /// }
    ///
    /// loopd_handler_api::export_handler!(Later, name = "later");
    /// ```
    ///
    /// # Errors
    /// As [`Ctx::set_timer`] (the payload is dropped); [`Error::Unsupported`]
    /// for a `Ctx` made with [`Ctx::from_raw`] rather than by the SDK's glue.
    pub fn set_timer_with<T: 'static>(
        &self,
        delay: Duration,
        payload: T,
    ) -> Result<TimerId, Error> {
        let payloads = self.payloads().ok_or(Error::Unsupported)?;
        let timer = self.set_timer(delay, 0)?;
        payloads.insert(timer.raw(), Box::new(payload), false);
        Ok(timer)
    }

    /// [`Ctx::set_repeating_timer`] carrying `payload`: it stays with the
    /// timer across ticks (reach it in `on_timer` with
    /// [`Ctx::with_timer_payload`]) until [`Ctx::cancel_timer`] or the
    /// instance's end drops it, or [`Ctx::take_timer_payload`] takes it.
    ///
    /// # Errors
    /// As [`Ctx::set_repeating_timer`] (the payload is dropped);
    /// [`Error::Unsupported`] as for [`Ctx::set_timer_with`].
    pub fn set_repeating_timer_with<T: 'static>(
        &self,
        delay: Duration,
        interval: Duration,
        payload: T,
    ) -> Result<TimerId, Error> {
        let payloads = self.payloads().ok_or(Error::Unsupported)?;
        let timer = self.set_repeating_timer(delay, interval, 0)?;
        payloads.insert(timer.raw(), Box::new(payload), true);
        Ok(timer)
    }

    /// Takes the payload of `timer` if it carries a `T`: in `on_timer`,
    /// the value given to [`Ctx::set_timer_with`]. `None` if it carries
    /// none, one of another type (which stays where it is), or it was
    /// taken already. Works on a pending timer too (it then fires without
    /// a payload).
    pub fn take_timer_payload<T: 'static>(&self, timer: TimerId) -> Option<T> {
        self.payloads()?.take::<T>(timer.raw())
    }

    /// Runs `f` on the payload of `timer` if it carries a `T`, leaving it
    /// with the timer: the way a repeating timer's `on_timer` updates its
    /// state. `None` if there is no such payload, or when called from
    /// inside another `f` (payloads are lent one at a time). Cancelling the
    /// timer inside `f` drops the payload once `f` returns.
    pub fn with_timer_payload<T: 'static, R>(
        &self,
        timer: TimerId,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        self.payloads()?.with::<T, R>(timer.raw(), f)
    }

    /// Starts an outbound connection to a numeric URL such as
    /// `tcp://127.0.0.1:6379` or `unix:///run/app.sock`. The id is returned at
    /// once; the result arrives as `on_open` or as `on_close` with
    /// [`crate::CloseReason::ConnectFailed`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed URL, [`Error::Limit`] at `max_connections`,
    /// [`Error::Unsupported`] for a handler with [`Handler::STREAMS`](crate::Handler::STREAMS)
    /// `false` (it has no hook to hear of the connection; ABI 1.5 host).
    pub fn connect(&self, url: &str) -> Result<ConnId, Error> {
        let f = self.host().connect.ok_or(Error::Unsupported)?;
        let url = CString::new(url).map_err(|_| Error::Invalid)?;
        let mut id = 0u64;
        // SAFETY: `url` is NUL-terminated and `id` a valid out-pointer for the call.
        Error::check(unsafe { f(self.raw, url.as_ptr(), &mut id) })?;
        Ok(ConnId::from_raw(id))
    }

    /// [`Ctx::connect`] with per-connection options (ABI 1.3): framing,
    /// `max_frame` and watermarks of its own, e.g. raw bytes for the
    /// upstream side of a proxy whose clients speak lines.
    ///
    /// # Errors
    /// As [`Ctx::connect`]; [`Error::Invalid`] for options the host refuses
    /// (a low watermark not below the high one, `max_frame` over 1 GiB);
    /// [`Error::Unsupported`] on a host older than 1.3.
    pub fn connect_with(&self, url: &str, options: &ConnectOptions) -> Result<ConnId, Error> {
        let f = self.host().connect_with.ok_or(Error::Unsupported)?;
        // A host that reads server_name has peer_certificate too (they came
        // together): an older one would verify the IP instead, silently.
        if options.server_name.is_some() && self.host().peer_certificate.is_none() {
            return Err(Error::Unsupported);
        }
        let url = CString::new(url).map_err(|_| Error::Invalid)?;
        let opts = options.to_raw();
        let mut id = 0u64;
        // SAFETY: `url` is NUL-terminated, `opts` and `id` valid for the call.
        Error::check(unsafe { f(self.raw, url.as_ptr(), &opts, &mut id) })?;
        Ok(ConnId::from_raw(id))
    }

    /// Stops reading `conn` (ABI 1.3): no `on_data` until
    /// [`Ctx::resume_read`]; the peer is slowed down by TCP. Independent of
    /// loopd's own pause at the output high watermark.
    ///
    /// # Errors
    /// [`Error::NoSuchConn`], [`Error::Closed`]; [`Error::Unsupported`] on a
    /// host older than 1.3.
    pub fn pause_read(&self, conn: ConnId) -> Result<(), Error> {
        let f = self.host().pause_read.ok_or(Error::Unsupported)?;
        // SAFETY: plain values only.
        Error::check(unsafe { f(self.raw, conn.raw()) })
    }

    /// Reads `conn` again after [`Ctx::pause_read`]; frames already
    /// buffered are delivered after the current hook returns.
    ///
    /// # Errors
    /// As [`Ctx::pause_read`].
    pub fn resume_read(&self, conn: ConnId) -> Result<(), Error> {
        let f = self.host().resume_read.ok_or(Error::Unsupported)?;
        // SAFETY: plain values only.
        Error::check(unsafe { f(self.raw, conn.raw()) })
    }

    /// Half-closes `conn` (ABI 1.3): once its output queue is flushed, its
    /// sending side is shut down (the peer reads EOF) while it keeps
    /// reading. Later sends fail with [`Error::Closed`].
    ///
    /// # Errors
    /// As [`Ctx::pause_read`].
    pub fn shutdown_write(&self, conn: ConnId) -> Result<(), Error> {
        let f = self.host().shutdown_write.ok_or(Error::Unsupported)?;
        // SAFETY: plain values only.
        Error::check(unsafe { f(self.raw, conn.raw()) })
    }

    /// Posts `msg` to the handler instance named `instance` of this runtime
    /// (ABI 1.3); its [`crate::Handler::on_message`] gets a copy after the
    /// current hook returns, in the order posted. Works from any thread
    /// while this instance exists.
    ///
    /// # Errors
    /// [`Error::Full`] when the target's mailbox is at its limit (nothing
    /// was posted: back-pressure), [`Error::NoSuchInstance`],
    /// [`Error::Invalid`] for a message larger than the mailbox,
    /// [`Error::Closed`] once the runtime stopped; [`Error::Unsupported`] on
    /// a host older than 1.3.
    pub fn post(&self, instance: &str, msg: &[u8]) -> Result<(), Error> {
        let f = self.host().post.ok_or(Error::Unsupported)?;
        let name = CString::new(instance).map_err(|_| Error::Invalid)?;
        // SAFETY: `name` is NUL-terminated, `msg` valid for its length, for the call.
        Error::check(unsafe { f(self.raw, name.as_ptr(), msg.as_ptr(), msg.len()) })
    }

    /// Posts `msg` to this very instance: delivered by
    /// [`crate::Handler::on_message`] on the loop thread, which makes it the
    /// way for another thread (holding a copy of this `Ctx`) to hand work
    /// to the handler.
    ///
    /// # Errors
    /// As [`Ctx::post`].
    pub fn post_self(&self, msg: &[u8]) -> Result<(), Error> {
        let f = self.host().post.ok_or(Error::Unsupported)?;
        // SAFETY: NULL names this instance; `msg` is valid for its length.
        Error::check(unsafe { f(self.raw, std::ptr::null(), msg.as_ptr(), msg.len()) })
    }

    /// Posts `msg` to this instance's siblings (ABI 1.4): the instance of
    /// the same name on every other worker of the process (`[runtime]
    /// workers`), each through its [`crate::Handler::on_message`]. Returns
    /// how many took it: 0 with a single worker. Works from any thread.
    ///
    /// # Errors
    /// [`Error::Full`] when at least one sibling's mailbox was at its limit
    /// (that one got nothing, the others did); [`Error::Unsupported`] on a
    /// host older than 1.4.
    pub fn post_siblings(&self, msg: &[u8]) -> Result<u32, Error> {
        let f = self.host().post_siblings.ok_or(Error::Unsupported)?;
        let mut delivered = 0u32;
        // SAFETY: `msg` is valid for its length for the call; a valid out-pointer.
        Error::check(unsafe { f(self.raw, msg.as_ptr(), msg.len(), &mut delivered) })?;
        Ok(delivered)
    }

    /// This runtime's worker index and the number of workers (ABI 1.4):
    /// `(0, 1)` for a process with one loop, and on a host older than 1.4.
    pub fn worker(&self) -> (u32, u32) {
        let Some(f) = self.host().worker_info else {
            return (0, 1);
        };
        let (mut index, mut count) = (0u32, 1u32);
        // SAFETY: valid out-pointers for the call.
        if unsafe { f(self.raw, &mut index, &mut count) } != abi::LOOPD_OK {
            return (0, 1);
        }
        (index, count)
    }

    /// A snapshot of the whole process's counters, every worker's, as JSON
    /// text (ABI 1.4): `docs/handlers/status.md` lists the fields. Works
    /// from any thread.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a host older than 1.4.
    pub fn stats_json(&self) -> Result<String, Error> {
        let f = self.host().stats_json.ok_or(Error::Unsupported)?;
        let bytes = read_sized_out(|buf, cap, len| {
            // SAFETY: `buf` has `cap` writable bytes; a valid out-pointer.
            unsafe { f(self.raw, buf, cap, len) }
        })?;
        String::from_utf8(bytes).map_err(|_| Error::Invalid)
    }

    /// The subject of `conn`'s verified peer certificate as an RFC 4514
    /// string, e.g. `CN=alice,O=Example` (ABI 1.4): the client's under
    /// mutual TLS (`tls_client_ca`), the server's on an outbound `tls://`
    /// connection.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the connection has none (not TLS, no
    /// client certificate asked for) or the host is older than 1.4;
    /// [`Error::NoSuchConn`].
    pub fn peer_subject(&self, conn: ConnId) -> Result<String, Error> {
        let f = self.host().peer_subject.ok_or(Error::Unsupported)?;
        let bytes = read_sized_out(|buf, cap, len| {
            // SAFETY: `buf` has `cap` writable bytes; a valid out-pointer.
            unsafe { f(self.raw, conn.raw(), buf, cap, len) }
        })?;
        String::from_utf8(bytes).map_err(|_| Error::Invalid)
    }

    /// `conn`'s verified peer certificate, DER (the leaf; ABI 1.4), for a
    /// handler that pins or parses it.
    ///
    /// # Errors
    /// As [`Ctx::peer_subject`].
    pub fn peer_certificate(&self, conn: ConnId) -> Result<Vec<u8>, Error> {
        let f = self.host().peer_certificate.ok_or(Error::Unsupported)?;
        read_sized_out(|buf, cap, len| {
            // SAFETY: `buf` has `cap` writable bytes; a valid out-pointer.
            unsafe { f(self.raw, conn.raw(), buf, cap, len) }
        })
    }

    /// Declares a counter (ABI 1.4): only inside [`crate::Handler::create`].
    /// `name` is a Prometheus name (conventionally ending in `_total`),
    /// `labels` at most 8 label names. Update it through a [`Series`]
    /// from [`Ctx::series`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad declaration (an invalid or duplicate
    /// name, too many or invalid labels; loopd logs which) or outside
    /// `create`; [`Error::Unsupported`] on a host older than 1.4.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> Result<Metric, Error> {
        self.declare(abi::LOOPD_METRIC_COUNTER, name, help, labels, &[])
    }

    /// Declares a gauge (ABI 1.4), as [`Ctx::counter`].
    ///
    /// # Errors
    /// As [`Ctx::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> Result<Metric, Error> {
        self.declare(abi::LOOPD_METRIC_GAUGE, name, help, labels, &[])
    }

    /// Declares a histogram (ABI 1.4) with these bucket upper bounds
    /// (strictly increasing; empty: Prometheus' defaults, 0.005 to 10).
    ///
    /// # Errors
    /// As [`Ctx::counter`], and for bounds out of order.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<Metric, Error> {
        self.declare(abi::LOOPD_METRIC_HISTOGRAM, name, help, labels, buckets)
    }

    fn declare(
        &self,
        kind: u32,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<Metric, Error> {
        let f = self.host().metric_declare.ok_or(Error::Unsupported)?;
        let name = CString::new(name).map_err(|_| Error::Invalid)?;
        let help = CString::new(help).map_err(|_| Error::Invalid)?;
        let labels = c_strings(labels)?;
        let ptrs: Vec<*const std::ffi::c_char> = labels.iter().map(|l| l.as_ptr()).collect();
        let mut id = 0u64;
        // SAFETY: every pointer is valid for the call; a valid out-pointer.
        Error::check(unsafe {
            f(
                self.raw,
                kind,
                name.as_ptr(),
                help.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len() as u32,
                buckets.as_ptr(),
                buckets.len() as u32,
                &mut id,
            )
        })?;
        Ok(Metric(id))
    }

    /// The series of `metric` for these label values, one per label name
    /// (ABI 1.4): made on first use, the same id for the same values.
    /// Resolve it once (in `create` for fixed values) and keep it.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a wrong number of values or one over 256
    /// bytes; [`Error::Limit`] past 16384 series in the instance;
    /// [`Error::Unsupported`] on a host older than 1.4.
    pub fn series(&self, metric: Metric, values: &[&str]) -> Result<Series, Error> {
        let f = self.host().metric_series.ok_or(Error::Unsupported)?;
        let values = c_strings(values)?;
        let ptrs: Vec<*const std::ffi::c_char> = values.iter().map(|l| l.as_ptr()).collect();
        let mut id = 0u64;
        // SAFETY: every pointer is valid for the call; a valid out-pointer.
        Error::check(unsafe {
            f(
                self.raw,
                metric.0,
                ptrs.as_ptr(),
                ptrs.len() as u32,
                &mut id,
            )
        })?;
        Ok(Series(id))
    }

    fn update(&self, series: Series, op: u32, value: f64) {
        if let Some(f) = self.host().metric_update {
            // SAFETY: plain values; the host checks the id.
            unsafe { f(self.raw, series.0, op, value) };
        }
    }

    /// Adds `value` to a counter (>= 0) or a gauge series (ABI 1.4). No
    /// allocation; a wrong series or op is ignored.
    pub fn metric_add(&self, series: Series, value: f64) {
        self.update(series, abi::LOOPD_METRIC_ADD, value);
    }

    /// Sets a gauge series (ABI 1.4).
    pub fn metric_set(&self, series: Series, value: f64) {
        self.update(series, abi::LOOPD_METRIC_SET, value);
    }

    /// Observes `value` into a histogram series (ABI 1.4).
    pub fn metric_observe(&self, series: Series, value: f64) {
        self.update(series, abi::LOOPD_METRIC_OBSERVE, value);
    }

    /// Watches `fd`, a descriptor the handler owns, for `interest` (ABI
    /// 1.3): [`crate::Handler::on_fd`] gets `user_data` whenever it is
    /// ready. loopd never reads, writes or closes it; remove the watch
    /// before closing the fd.
    ///
    /// # Errors
    /// [`Error::Io`] when the poller refuses it (a regular file, an fd
    /// watched already), [`Error::Invalid`]; [`Error::Unsupported`] on a host
    /// older than 1.3.
    pub fn watch_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        interest: Interest,
        user_data: u64,
    ) -> Result<WatchId, Error> {
        let f = self.host().watch_fd.ok_or(Error::Unsupported)?;
        let mut id = 0u64;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: plain values and a valid out-pointer.
        Error::check(unsafe { f(self.raw, raw, interest.to_raw(), user_data, &mut id) })?;
        Ok(WatchId::from_raw(id))
    }

    /// Changes what `watch` waits for ([`Interest::NONE`] parks it).
    ///
    /// # Errors
    /// [`Error::NoSuchConn`] for a stale or foreign watch.
    pub fn modify_watch(&self, watch: WatchId, interest: Interest) -> Result<(), Error> {
        let f = self.host().watch_modify.ok_or(Error::Unsupported)?;
        // SAFETY: plain values only.
        Error::check(unsafe { f(self.raw, watch.raw(), interest.to_raw()) })
    }

    /// Stops watching; `watch` is stale afterwards.
    ///
    /// # Errors
    /// [`Error::NoSuchConn`] for a stale or foreign watch.
    pub fn remove_watch(&self, watch: WatchId) -> Result<(), Error> {
        let f = self.host().watch_remove.ok_or(Error::Unsupported)?;
        // SAFETY: plain values only.
        Error::check(unsafe { f(self.raw, watch.raw()) })
    }

    /// Arms a repeating timer (ABI 1.3): [`crate::Handler::on_timer`] gets
    /// `user_data` after `delay`, then every `interval`, drift-free (each
    /// deadline is the previous one plus `interval`; ticks missed while the
    /// loop was busy are skipped, not bunched). The id stays the same until
    /// [`Ctx::cancel_timer`].
    ///
    /// # Errors
    /// [`Error::Invalid`] for a zero interval (both `delay` and `interval`
    /// are whole milliseconds, rounded up),
    /// [`Error::Limit`]; [`Error::Unsupported`] on a host older than 1.3.
    pub fn set_repeating_timer(
        &self,
        delay: Duration,
        interval: Duration,
        user_data: u64,
    ) -> Result<TimerId, Error> {
        let f = self.host().timer_repeat.ok_or(Error::Unsupported)?;
        // Whole milliseconds, rounded up (as set_timer): never early.
        let ms = delay_ms;
        let mut id = 0u64;
        // SAFETY: `id` is a valid out-pointer for the duration of the call.
        Error::check(unsafe { f(self.raw, ms(delay), ms(interval), user_data, &mut id) })?;
        Ok(TimerId::from_raw(id))
    }

    /// Milliseconds on the host's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        match self.host().now_ms {
            // SAFETY: plain values only.
            Some(f) => unsafe { f(self.raw) },
            None => 0,
        }
    }

    /// Bytes waiting in `conn`'s output queue.
    ///
    /// # Errors
    /// [`Error::NoSuchConn`] for an unknown or stale id.
    pub fn output_queued(&self, conn: ConnId) -> Result<usize, Error> {
        let f = self.host().output_queued.ok_or(Error::Unsupported)?;
        let mut n = 0usize;
        // SAFETY: `n` is a valid out-pointer for the duration of the call.
        Error::check(unsafe { f(self.raw, conn.raw(), &mut n) })?;
        Ok(n)
    }

    /// Writes up to `len` bytes of `file`, from `offset`, to `conn` with
    /// sendfile(2) (ABI 1.2): the kernel copies them from the page cache and
    /// loopd holds none of them, so a client that reads slowly costs no
    /// memory. Never queued: returns how many bytes were written (at least
    /// 1, unless `len` is 0). When that is fewer than `len`,
    /// [`crate::Handler::on_writable`] follows once the socket can take more.
    ///
    /// # Errors
    /// [`Error::Again`] when nothing could be written (the socket is full,
    /// output sent earlier is still queued and goes first, or an outbound
    /// connection is still connecting); `on_writable` follows. [`Error::Io`]
    /// when reading the file failed or it ends at or before `offset`
    /// (nothing written; the connection is left as
    /// it was). [`Error::Closed`], [`Error::NoSuchConn`] as for
    /// [`Ctx::send`]. [`Error::Unsupported`] on a host older than ABI 1.2:
    /// read the file and [`Ctx::send`] it instead.
    pub fn send_file(
        &self,
        conn: ConnId,
        file: &impl std::os::fd::AsFd,
        offset: u64,
        len: u64,
    ) -> Result<u64, Error> {
        let f = self.host().send_file.ok_or(Error::Unsupported)?;
        let mut sent = 0u64;
        let fd = file.as_fd();
        // SAFETY: `fd` is open for the duration of the call (borrowed from
        // `file`); `sent` is a valid out-pointer.
        Error::check(unsafe {
            f(
                self.raw,
                conn.raw(),
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                offset,
                len,
                &mut sent,
            )
        })?;
        Ok(sent)
    }

    /// Logs `msg` through loopd's logger, tagged with the instance name.
    pub fn log(&self, level: Level, msg: impl fmt::Display) {
        let Some(f) = self.host().log else { return };
        let text = msg.to_string();
        // SAFETY: `text` is valid for reads of its length for the duration of the call.
        unsafe { f(self.raw, level as u32, text.as_ptr().cast(), text.len()) }
    }

    /// Logs `msg` under an explicit log target such as `loopd::access`, so
    /// operators can filter it with `RUST_LOG`. On a host older than ABI 1.1
    /// this falls back to [`Ctx::log`] (the instance's own target).
    pub fn log_to(&self, level: Level, target: &str, msg: impl fmt::Display) {
        let Some(f) = self.host().log_to else {
            return self.log(level, msg);
        };
        let Ok(target) = CString::new(target) else {
            return self.log(level, msg);
        };
        let text = msg.to_string();
        // SAFETY: `target` is NUL-terminated and `text` valid for its length, for the call.
        unsafe {
            f(
                self.raw,
                level as u32,
                target.as_ptr(),
                text.as_ptr().cast(),
                text.len(),
            )
        }
    }

    /// Logs at [`Level::Error`].
    pub fn error(&self, msg: impl fmt::Display) {
        self.log(Level::Error, msg)
    }

    /// Logs at [`Level::Warn`].
    pub fn warn(&self, msg: impl fmt::Display) {
        self.log(Level::Warn, msg)
    }

    /// Logs at [`Level::Info`].
    pub fn info(&self, msg: impl fmt::Display) {
        self.log(Level::Info, msg)
    }

    /// Logs at [`Level::Debug`].
    pub fn debug(&self, msg: impl fmt::Display) {
        self.log(Level::Debug, msg)
    }
}

/// `delay` in whole milliseconds, rounded up (a delay is a lower bound:
/// truncating it would fire a timer early), saturating at `u64::MAX`.
fn delay_ms(delay: Duration) -> u64 {
    u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Calls a host function that copies out bytes of a size it reports
/// (`LOOPD_ERR_FULL` with the size needed when `cap` is short), growing the
/// buffer until they fit. The content may grow between calls: a few tries.
fn read_sized_out(
    mut call: impl FnMut(*mut u8, usize, *mut usize) -> i32,
) -> Result<Vec<u8>, Error> {
    let mut buf: Vec<u8> = Vec::new();
    for _ in 0..4 {
        let mut len = 0usize;
        let status = call(buf.as_mut_ptr(), buf.len(), &mut len);
        if status == abi::LOOPD_OK {
            buf.truncate(len);
            return Ok(buf);
        }
        if status != abi::LOOPD_ERR_FULL {
            Error::check(status)?;
        }
        buf.resize(len + len / 4 + 64, 0);
    }
    Err(Error::Full)
}

#[cfg(test)]
mod tests {
    use super::delay_ms;
    use crate::abi::{self, loopd_addr, loopd_ctx, loopd_host_api};
    use crate::{Ctx, Error, Outbox, SocketId};
    use std::cell::RefCell;
    use std::net::SocketAddr;
    use std::time::Duration;

    thread_local! {
        /// What the mock send_datagram answers, in turn; what it was given.
        static ANSWERS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
        static GIVEN: RefCell<Vec<(u16, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
    }

    unsafe extern "C" fn send_one(
        _: *mut loopd_ctx,
        _: u64,
        to: *const loopd_addr,
        data: *const u8,
        len: usize,
    ) -> i32 {
        // SAFETY: the SDK lends both for the call.
        let (port, bytes) = unsafe { ((*to).port, std::slice::from_raw_parts(data, len)) };
        GIVEN.with(|g| g.borrow_mut().push((port, bytes.to_vec())));
        ANSWERS.with(|a| a.borrow_mut().remove(0))
    }

    unsafe extern "C" fn send_many(
        _: *mut loopd_ctx,
        _: u64,
        msgs: *mut abi::loopd_datagram,
        count: usize,
        sent: *mut usize,
    ) -> i32 {
        // SAFETY: the SDK lends `count` datagrams and `sent` for the call.
        let msgs = unsafe { std::slice::from_raw_parts_mut(msgs, count) };
        let mut n = 0;
        for m in msgs.iter_mut() {
            // SAFETY: each points at its bytes for the call.
            let bytes = unsafe { std::slice::from_raw_parts(m.data, m.len) };
            GIVEN.with(|g| g.borrow_mut().push((m.addr.port, bytes.to_vec())));
            m.status = ANSWERS.with(|a| a.borrow_mut().remove(0));
            n += usize::from(m.status == abi::LOOPD_OK);
        }
        // SAFETY: as above.
        unsafe { *sent = n };
        msgs.iter()
            .map(|m| m.status)
            .find(|&s| s != abi::LOOPD_OK)
            .unwrap_or(abi::LOOPD_OK)
    }

    fn host(batched: bool) -> loopd_host_api {
        // SAFETY: all-zero is a valid table: integers, NULL, `None`s.
        let mut h: loopd_host_api = unsafe { std::mem::zeroed() };
        h.struct_size = std::mem::size_of::<loopd_host_api>() as u32;
        h.send_datagram = Some(send_one);
        if batched {
            h.send_datagrams = Some(send_many);
        }
        h
    }

    fn outbox() -> Outbox {
        let mut out = Outbox::new();
        for port in 1..=4u16 {
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            out.push_parts(to, &[b"p", &[port as u8]]);
        }
        out
    }

    /// One call, IO on the second, AGAIN on the third: what each host
    /// gave, and what the handler reads back.
    fn send_on(batched: bool, answers: &[i32]) -> (Result<(), Error>, Vec<u16>, Outbox) {
        ANSWERS.with(|a| *a.borrow_mut() = answers.to_vec());
        GIVEN.with(|g| g.borrow_mut().clear());
        let host = host(batched);
        // SAFETY: a valid table; the mock never reads the context.
        let ctx = unsafe { Ctx::from_raw(&host, std::ptr::null_mut()) };
        let mut out = outbox();
        let r = ctx.send_datagrams(SocketId::from_raw(7), &mut out);
        let given = GIVEN.with(|g| g.borrow().clone());
        for (port, bytes) in &given {
            assert_eq!(bytes, &[b'p', *port as u8]);
        }
        (r, given.iter().map(|g| g.0).collect(), out)
    }

    #[test]
    fn send_datagrams_gives_the_same_results_with_or_without_the_host_function() {
        use abi::{LOOPD_ERR_AGAIN as AGAIN, LOOPD_ERR_IO as IO, LOOPD_OK as OK};
        let (r, given, out) = send_on(true, &[OK, IO, AGAIN, AGAIN]);
        assert_eq!(given, [1, 2, 3, 4], "one call with every datagram");
        let batched: Vec<_> = out.results().map(|(a, r)| (a.port(), r)).collect();
        assert_eq!((r, out.sent()), (Err(Error::Io), 1));
        // Without send_datagrams: one send_datagram each, none after AGAIN.
        let (r, given, out) = send_on(false, &[OK, IO, AGAIN]);
        assert_eq!(given, [1, 2, 3], "the fourth is not tried after AGAIN");
        assert_eq!((r, out.sent()), (Err(Error::Io), 1));
        let single: Vec<_> = out.results().map(|(a, r)| (a.port(), r)).collect();
        assert_eq!(batched, single);
        assert_eq!(
            single,
            [
                (1, Ok(())),
                (2, Err(Error::Io)),
                (3, Err(Error::Again)),
                (4, Err(Error::Again))
            ]
        );
        let (r, _, out) = send_on(false, &[OK, OK, OK, OK]);
        assert_eq!((r, out.sent()), (Ok(()), 4));
    }

    #[test]
    fn lent_datagrams_go_out_in_order_with_copied_ones_on_either_host() {
        use abi::{LOOPD_ERR_AGAIN as AGAIN, LOOPD_OK as OK};
        let received: Vec<Vec<u8>> = (1..=3u8).map(|i| vec![b'p', i]).collect();
        for batched in [true, false] {
            ANSWERS.with(|a| *a.borrow_mut() = vec![OK, OK, OK, AGAIN]);
            GIVEN.with(|g| g.borrow_mut().clear());
            let host = host(batched);
            // SAFETY: a valid table; the mock never reads the context.
            let ctx = unsafe { Ctx::from_raw(&host, std::ptr::null_mut()) };
            let mut out = crate::LentOutbox::new();
            let to = |port| SocketAddr::from(([127, 0, 0, 1], port));
            out.push_lent(to(1), &received[0]);
            out.push_parts(to(2), &[b"p", &[2]]);
            out.push_lent(to(3), &received[2]);
            out.push(to(4), b"p\x04");
            let r = ctx.send_lent_datagrams(SocketId::from_raw(7), &mut out);
            let given = GIVEN.with(|g| g.borrow().clone());
            let expected: Vec<(u16, Vec<u8>)> =
                (1..=4u16).map(|p| (p, vec![b'p', p as u8])).collect();
            assert_eq!(given, expected, "batched host: {batched}");
            assert_eq!((r, out.sent()), (Err(Error::Again), 3));
            let ports: Vec<_> = out.results().map(|(a, r)| (a.port(), r.is_ok())).collect();
            assert_eq!(ports, [(1, true), (2, true), (3, true), (4, false)]);
            // Cleared for the next call, buffers kept.
            let out: crate::LentOutbox<'static> = out.reuse();
            assert!(out.is_empty() && out.sent() == 0);
        }
    }

    #[test]
    fn delays_round_up_to_whole_milliseconds() {
        assert_eq!(delay_ms(Duration::ZERO), 0);
        assert_eq!(delay_ms(Duration::from_nanos(1)), 1);
        assert_eq!(delay_ms(Duration::from_micros(999)), 1);
        assert_eq!(delay_ms(Duration::from_millis(1)), 1);
        assert_eq!(delay_ms(Duration::from_micros(1001)), 2);
        assert_eq!(delay_ms(Duration::from_micros(1500)), 2);
        assert_eq!(delay_ms(Duration::from_secs(3600)), 3_600_000);
        assert_eq!(delay_ms(Duration::MAX), u64::MAX);
    }
}
