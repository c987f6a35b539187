//! The Linux path: one syscall where POSIX needs two or three. `accept4`
//! and `socket` take `SOCK_NONBLOCK | SOCK_CLOEXEC` (no window in which a
//! descriptor could leak into a child), `send`/`sendmsg` take
//! `MSG_NOSIGNAL`, `recvfrom` with `MSG_TRUNC` reports a datagram's real
//! length, and `sendfile(2)` copies a file to a socket in the kernel.
//!
//! The `portable` feature replaces this file with `posix.rs` on Linux too.

use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use loopd_handler_api::abi::loopd_addr;

use super::{addr_from_storage, cvt, cvt_size, SockAddr};

/// A new socket of `domain` and `kind` (`SOCK_STREAM`, `SOCK_DGRAM`),
/// non-blocking and close-on-exec.
pub(super) fn socket(domain: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain values only.
    let fd =
        cvt(unsafe { libc::socket(domain, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Accepts one connection, non-blocking and close-on-exec, with the peer's address.
pub(crate) fn accept(listener: RawFd) -> io::Result<(OwnedFd, loopd_addr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid out-parameters sized for any address.
    let fd = cvt(unsafe {
        libc::accept4(
            listener,
            storage.as_mut_ptr().cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zero-initialised, and the kernel filled at most `len` bytes of it.
    let storage = unsafe { storage.assume_init() };
    Ok((fd, addr_from_storage(&storage, len)))
}

/// Receives one datagram into `buf`, with the sender's address. Returns the
/// datagram's *real* length (`MSG_TRUNC`): a value above `buf.len()` means it
/// did not fit and only its first `buf.len()` bytes were kept.
/// (The loop receives in batches; the tests check the single form.)
#[cfg(test)]
pub(crate) fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, loopd_addr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `storage` and
    // `len` are valid out-parameters sized for any address.
    let n = cvt_size(unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            storage.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    // SAFETY: zero-initialised, and the kernel filled at most `len` bytes of it.
    let storage = unsafe { storage.assume_init() };
    Ok((n, addr_from_storage(&storage, len)))
}

/// Most datagrams one [`recv_batch`] call takes.
pub(crate) const BATCH: usize = 32;

/// The `recvmmsg` headers, iovecs and sender buffers of [`recv_batch`],
/// kept between calls (a socket's first receive allocates them once). The
/// loop hands the same buffer and slot size every time, so the headers are
/// pointed at it once; after a call only the address lengths the kernel
/// overwrote are reset. Building 32 headers for every call cost more
/// instructions than the rest of a relayed datagram's receive path.
pub(crate) struct RecvState {
    msgs: [libc::mmsghdr; BATCH],
    iovs: [libc::iovec; BATCH],
    names: [libc::sockaddr_storage; BATCH],
    /// The buffer, stride, slot size and count the first `ready` headers
    /// point at.
    base: *mut u8,
    stride: usize,
    slot: usize,
    ready: usize,
}

impl RecvState {
    /// Zeroed headers (no name, no buffers, no control data).
    pub(crate) fn new() -> Box<RecvState> {
        // SAFETY: all-zero is a valid RecvState: null pointers and zero
        // lengths in the headers, and `ready == 0` says none is set up.
        Box::new(unsafe { std::mem::zeroed() })
    }

    /// Points the first `n` headers at `slot` bytes every `stride` of `buf`
    /// and at their own name storage and iovec, unless they already are.
    fn prepare(&mut self, buf: &mut [u8], stride: usize, slot: usize, n: usize) {
        let base = buf.as_mut_ptr();
        if self.base == base && self.stride == stride && self.slot == slot && self.ready >= n {
            return;
        }
        let name_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: buf[i * stride..][..slot].as_mut_ptr().cast(),
                iov_len: slot,
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = name_len;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
        }
        (self.base, self.stride, self.slot, self.ready) = (base, stride, slot, n);
    }
}

impl std::fmt::Debug for RecvState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvState")
            .field("stride", &self.stride)
            .field("slot", &self.slot)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// Receives up to `out.len()` datagrams with one `recvmmsg(2)`: datagram
/// `i` into `buf[i * stride..][..slot]` (`slot <= stride`), its real
/// length (`MSG_TRUNC`: above `slot` means it did not fit) and sender into
/// `out[i]`. Returns how many arrived; fewer than asked means the socket is
/// drained. `WouldBlock` when none was waiting.
pub(crate) fn recv_batch(
    fd: RawFd,
    state: &mut RecvState,
    buf: &mut [u8],
    stride: usize,
    slot: usize,
    out: &mut [(usize, loopd_addr)],
) -> io::Result<usize> {
    let stride = stride.max(slot).max(1);
    let n = out.len().min(BATCH).min(buf.len() / stride);
    if n == 0 {
        return Ok(0);
    }
    state.prepare(buf, stride, slot, n);
    // SAFETY: recvmmsg(2) with the first `n` headers each pointing at its
    // own name storage and iovec (in `state`, which outlives the call), each
    // iovec at a disjoint `slot`-sized part of `buf` (`slot <= stride`, the
    // first `n` strides inside `buf`), which `prepare` just
    // checked is the buffer they point into and which is borrowed mutably
    // for the call. Through syscall(2): glibc's recvmmsg is a cancellation
    // point (see below).
    let got = cvt_size(unsafe {
        libc::syscall(
            libc::SYS_recvmmsg,
            fd,
            state.msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::timespec>(),
        ) as libc::ssize_t
    })?;
    let name_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    for (i, o) in out[..got].iter_mut().enumerate() {
        let h = &mut state.msgs[i].msg_hdr;
        *o = (
            state.msgs[i].msg_len as usize,
            addr_from_storage(&state.names[i], h.msg_namelen),
        );
        // The kernel wrote the sender's length: the next call needs room again.
        h.msg_namelen = name_len;
    }
    Ok(got)
}

/// Most payload bytes of one coalesced send: the largest UDP datagram over
/// IPv4 (65,535 − 20 − 8).
const MAX_COALESCED: usize = 65_507;

/// Room for one `UDP_SEGMENT` control message (at least `CMSG_SPACE(2)` on
/// every Linux target), aligned for its `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegmentCmsg([u8; 32]);

/// The `sendmmsg` headers, iovecs and addresses of a datagram socket's
/// batched sends, kept between calls (its first batched send allocates
/// them once). Filled by [`SendState::push`], sent by [`SendState::send`].
///
/// Consecutive datagrams to one address, all of one size (the last may be
/// shorter), leave as one message with a `UDP_SEGMENT` control message
/// (UDP GSO, Linux 4.18): the kernel builds one large packet and cuts it
/// into those datagrams at the last moment, so the per-packet cost of the
/// send path is paid once. The receiver sees the same datagrams, in order.
pub(crate) struct SendState {
    msgs: [libc::mmsghdr; BATCH],
    iovs: [libc::iovec; BATCH],
    names: [SockAddr; BATCH],
    ctrl: [SegmentCmsg; BATCH],
    /// `first[k]`: the first datagram of message `k` of the last send;
    /// `first[n]` where it ended. (Visible to the `sys` tests.)
    pub(super) first: [usize; BATCH + 1],
    len: usize,
    /// Datagrams this size or larger are not coalesced: 0 where the kernel
    /// has no `UDP_SEGMENT`, lowered when it refuses a coalesced send.
    coalesce_below: usize,
}

impl SendState {
    /// Empty, for datagram socket `fd` (asked once whether it can coalesce).
    pub(crate) fn new(fd: RawFd) -> Box<SendState> {
        // SAFETY: all-zero is a valid SendState: null pointers and zero
        // lengths in the headers and iovecs, zeroed (unused) addresses and
        // control buffers, and `len == 0` says none is filled.
        let mut state: Box<SendState> = Box::new(unsafe { std::mem::zeroed() });
        state.coalesce_below = if udp_segment_supported(fd) {
            usize::MAX
        } else {
            0
        };
        state
    }

    /// Forgets what was pushed.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// How many are pushed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds a datagram of `len` bytes at `data` for `to`; false (and
    /// nothing added) once [`BATCH`] are pushed. The pointer is only stored:
    /// [`SendState::send`]'s caller vouches for it.
    pub(crate) fn push(&mut self, to: SockAddr, data: *const u8, len: usize) -> bool {
        let i = self.len;
        if i == BATCH {
            return false;
        }
        self.names[i] = to;
        self.iovs[i] = libc::iovec {
            iov_base: data.cast_mut().cast(),
            iov_len: len,
        };
        self.len += 1;
        true
    }

    /// Sends the pushed datagrams from the `from`th on with one
    /// sendmmsg(2), runs of them coalesced (see the type's docs): how many
    /// datagrams the kernel took (at least one), or the error of the first
    /// message it did not take, which holds [`SendState::message_len`]
    /// datagrams.
    ///
    /// # Safety
    /// Every datagram pushed since the last [`SendState::clear`] must still
    /// be valid for reads of its length.
    pub(crate) unsafe fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        if from >= self.len {
            return Ok(0);
        }
        if from + 1 == self.len {
            // One datagram: sendto(2) takes it without the message header
            // sendmmsg(2) copies in and walks.
            self.first[0] = from;
            self.first[1] = self.len;
            let iov = self.iovs[from];
            // SAFETY: the datagram is valid for reads of its length (this
            // function's contract).
            return unsafe { send_to_raw(fd, &self.names[from], iov.iov_base.cast(), iov.iov_len) }
                .map(|_| 1);
        }
        let mut n = 0;
        let mut i = from;
        while i < self.len {
            let start = i;
            let seg = self.iovs[i].iov_len;
            i += 1;
            if seg > 0 && seg < self.coalesce_below {
                let mut total = seg;
                while i < self.len {
                    let len = self.iovs[i].iov_len;
                    if len == 0
                        || len > seg
                        || total + len > MAX_COALESCED
                        || self.names[i] != self.names[start]
                    {
                        break;
                    }
                    total += len;
                    i += 1;
                    if len < seg {
                        // Only the last segment may be shorter.
                        break;
                    }
                }
            }
            self.first[n] = start;
            let (addr, addr_len) = self.names[start].as_ptr();
            let h = &mut self.msgs[n].msg_hdr;
            h.msg_name = addr.cast_mut().cast();
            h.msg_namelen = addr_len;
            h.msg_iov = &mut self.iovs[start];
            h.msg_iovlen = (i - start) as _;
            if i - start > 1 {
                h.msg_control = self.ctrl[n].0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: `h.msg_control` points at `ctrl[n]`: 32 bytes
                // aligned for a cmsghdr, at least CMSG_SPACE(2), so the
                // first header and its two data bytes lie inside it. `seg`
                // fits a u16: two segments fit in MAX_COALESCED.
                unsafe {
                    let cm = libc::CMSG_FIRSTHDR(&*h);
                    (*cm).cmsg_level = libc::SOL_UDP;
                    (*cm).cmsg_type = libc::UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    libc::CMSG_DATA(cm)
                        .cast::<u16>()
                        .write_unaligned(seg as u16);
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            n += 1;
        }
        self.first[n] = self.len;
        // SAFETY: sendmmsg(2) with `n` headers, each pointing at its own
        // address and its run of iovecs in `self` (which outlives the call),
        // each iovec at bytes the caller vouches for, and at most its own
        // UDP_SEGMENT control message. Through syscall(2), see below.
        let sent = cvt_size(unsafe {
            libc::syscall(
                libc::SYS_sendmmsg,
                fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            ) as libc::ssize_t
        })?;
        Ok(self.first[sent.min(n)] - from)
    }

    /// How many datagrams the message from the `from`th datagram held in
    /// the last [`SendState::send`] (the one its error is about).
    pub(crate) fn message_len(&self, from: usize) -> usize {
        if self.first[0] == from && self.first[1] > from {
            self.first[1] - from
        } else {
            1
        }
    }

    /// The last [`SendState::send`] from the `from`th datagram failed with
    /// `e`. If that message coalesced several datagrams and the kernel
    /// refused the coalescing itself (`EINVAL`: a segment too large for the
    /// route's MTU or a socket that cannot checksum it; `EIO`, `EMSGSIZE`,
    /// `ENOPROTOOPT`, `EOPNOTSUPP`), datagrams that size or larger are no
    /// longer coalesced on this socket, and true says: send again from
    /// `from`, one per message.
    pub(crate) fn retry_apart(&mut self, from: usize, e: &io::Error) -> bool {
        let refused = matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::EIO | libc::EMSGSIZE | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
        );
        if !refused || self.message_len(from) < 2 {
            return false;
        }
        self.coalesce_below = self.coalesce_below.min(self.iovs[from].iov_len);
        true
    }
}

/// Whether the kernel takes `UDP_SEGMENT` on `fd` (Linux 4.18 and later, UDP
/// sockets only).
fn udp_segment_supported(fd: RawFd) -> bool {
    super::get_int_opt(fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok()
}

impl std::fmt::Debug for SendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendState")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Sends one datagram to `to` (sendto(2) through syscall(2), see below).
pub(crate) fn send_to(fd: RawFd, to: &SockAddr, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    unsafe { send_to_raw(fd, to, buf.as_ptr(), buf.len()) }
}

/// [`send_to`] of the `len` bytes at `data`.
///
/// # Safety
/// `data` must be valid for reads of `len` bytes for the call.
unsafe fn send_to_raw(fd: RawFd, to: &SockAddr, data: *const u8, len: usize) -> io::Result<usize> {
    let (addr, addr_len) = to.as_ptr();
    // SAFETY: sendto(2) with `data` valid for reads of `len` bytes (the
    // caller's contract) and `addr` valid for `addr_len` bytes, both for
    // the call. The kernel only reads them.
    cvt_size(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            data,
            len,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            addr,
            addr_len,
        ) as libc::ssize_t
    })
}

// The stream and datagram calls of every event go through syscall(2), not
// glibc's recv/send/sendmsg/sendto/recvmmsg: those are pthread cancellation points, and once the
// process has a second thread (loopd's log writer, a worker) each one
// enables and disables asynchronous cancellation around the system call,
// about 30 instructions each way, per call. loopd never cancels a thread.

/// Reads what is available into `buf`; `Ok(0)` is end of stream.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recvfrom(2) with `buf` valid for writes of `buf.len()` bytes
    // and no address out-parameters.
    cvt_size(unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        ) as libc::ssize_t
    })
}

/// Writes what the kernel takes of `buf`, without raising SIGPIPE.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: sendto(2) with `buf` valid for reads of `buf.len()` bytes and
    // no address.
    cvt_size(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        ) as libc::ssize_t
    })
}

/// Writes what the kernel takes of several buffers, without raising SIGPIPE.
pub(crate) fn sendv(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: `msg` points at `bufs`, which outlives the call; no control data.
    cvt_size(unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd,
            &msg as *const libc::msghdr,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        ) as libc::ssize_t
    })
}

/// Writes what the kernel takes of `len` bytes of `file` from `offset` to
/// the socket `sock` (sendfile(2): no copy through user memory). Returns 0
/// only when the file ends at `offset`. Never raises SIGPIPE: sendfile has
/// no MSG_NOSIGNAL, so SIGPIPE is blocked on this thread for the call and a
/// SIGPIPE the call raised is taken back before it is unblocked.
pub(crate) fn sendfile(sock: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    let Ok(mut off) = libc::off_t::try_from(offset) else {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    };
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut pipe: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; filled in by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset_t pointers for the calls.
    let blocked = unsafe {
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old) == 0
    };
    // A SIGPIPE already pending (the embedding program blocks it and one
    // came from elsewhere) is not this call's to take.
    let pending_before = blocked && sigpipe_pending();
    // SAFETY: `off` is a valid in/out offset for the call; both fds are
    // borrowed for its duration.
    let result = cvt_size(unsafe { libc::sendfile(sock, file, &mut off, len) });
    if blocked {
        if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EPIPE))
            && !pending_before
            && sigpipe_pending()
        {
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid set and timeout; takes the SIGPIPE this call
            // raised (none is raised when SIGPIPE is ignored).
            unsafe { libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero) };
        }
        // SAFETY: `old` was filled in by pthread_sigmask above.
        let was_blocked = unsafe { libc::sigismember(&old, libc::SIGPIPE) } == 1;
        if !was_blocked {
            // SAFETY: restores the mask read above.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        }
    }
    result
}

/// Whether a SIGPIPE is pending for this thread or the process.
fn sigpipe_pending() -> bool {
    // SAFETY: sigset_t is plain data, filled in by sigpending.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid sigset_t pointer for both calls.
    unsafe { libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGPIPE) == 1 }
}
