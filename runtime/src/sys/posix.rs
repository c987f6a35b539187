//! The POSIX path: what macOS and the BSDs take, and Linux with the
//! `portable` feature (so CI runs it on every change). Each Linux shortcut
//! becomes its portable form:
//!
//! - `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)` is `accept`, then `fcntl` for
//!   `O_NONBLOCK` and `FD_CLOEXEC`; `socket` likewise. (Between the two
//!   calls a `fork` + `exec` on another thread of an embedding program
//!   could inherit the descriptor; loopd itself forks only to start a
//!   binary upgrade's new process, from worker 0.)
//! - `MSG_NOSIGNAL` is used where the platform honours it; where it does
//!   not (macOS), every socket gets `SO_NOSIGPIPE` instead.
//! - `sendfile(2)`, whose signature and semantics differ on every system,
//!   is a bounded `pread` + `send` through one reused buffer per thread.
//! - `recvfrom(MSG_TRUNC)` is `recvmsg`, which flags a truncated datagram
//!   in `msg_flags` everywhere; only Linux also reports its real length.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use loopd_handler_api::abi::loopd_addr;

use super::{addr_from_storage, cvt, cvt_size, SockAddr};

/// Flags for every send: no SIGPIPE where the flag does that.
#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
/// Flags for every send. macOS's MSG_NOSIGNAL is not honoured by every
/// release; `SO_NOSIGPIPE` on each socket ([`no_sigpipe`]) does it.
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// The most buffers one `sendmsg` takes.
#[cfg(any(target_os = "linux", target_os = "android"))]
const IOV_MAX: usize = libc::UIO_MAXIOV as usize;
/// The most buffers one `sendmsg` takes.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const IOV_MAX: usize = libc::IOV_MAX as usize;

/// `recvmsg` flags: Linux returns a truncated datagram's real length when
/// asked with `MSG_TRUNC`; elsewhere the flag only comes back in `msg_flags`.
#[cfg(any(target_os = "linux", target_os = "android"))]
const RECV_FLAGS: libc::c_int = libc::MSG_TRUNC | libc::MSG_DONTWAIT;
/// `recvmsg` flags (the truncation is read from `msg_flags`).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RECV_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// How many bytes one `sendfile` call copies at most: it stops earlier
/// when the socket takes less than it was offered.
const SENDFILE_MAX: usize = 1 << 20;
/// The size of one `pread` + `send` step of `sendfile`.
const SENDFILE_CHUNK: usize = 64 << 10;

/// Sets `O_NONBLOCK` and `FD_CLOEXEC` on `fd`.
fn set_nonblock_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let fd_flags = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        if fd_flags & libc::FD_CLOEXEC == 0 {
            cvt(libc::fcntl(fd, libc::F_SETFD, fd_flags | libc::FD_CLOEXEC))?;
        }
        let fl_flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        if fl_flags & libc::O_NONBLOCK == 0 {
            cvt(libc::fcntl(fd, libc::F_SETFL, fl_flags | libc::O_NONBLOCK))?;
        }
    }
    Ok(())
}

/// Keeps writes to a dead peer from raising SIGPIPE where `MSG_NOSIGNAL`
/// does not.
#[cfg(target_vendor = "apple")]
fn no_sigpipe(fd: RawFd) -> io::Result<()> {
    super::set_int_opt(fd, libc::SOL_SOCKET, libc::SO_NOSIGPIPE, 1)
}

/// Nothing to do: [`SEND_FLAGS`] has `MSG_NOSIGNAL`.
#[cfg(not(target_vendor = "apple"))]
fn no_sigpipe(_fd: RawFd) -> io::Result<()> {
    Ok(())
}

/// A new socket of `domain` and `kind` (`SOCK_STREAM`, `SOCK_DGRAM`),
/// non-blocking and close-on-exec.
pub(super) fn socket(domain: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain values only.
    let fd = cvt(unsafe { libc::socket(domain, kind, 0) })?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_nonblock_cloexec(fd.as_raw_fd())?;
    no_sigpipe(fd.as_raw_fd())?;
    Ok(fd)
}

/// Accepts one connection, non-blocking and close-on-exec, with the peer's address.
pub(crate) fn accept(listener: RawFd) -> io::Result<(OwnedFd, loopd_addr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid out-parameters sized for any address.
    let fd = cvt(unsafe { libc::accept(listener, storage.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: accept returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_nonblock_cloexec(fd.as_raw_fd())?;
    no_sigpipe(fd.as_raw_fd())?;
    // SAFETY: zero-initialised, and the kernel filled at most `len` bytes of it.
    let storage = unsafe { storage.assume_init() };
    Ok((fd, addr_from_storage(&storage, len)))
}

/// Receives one datagram into `buf`, with the sender's address. A value
/// above `buf.len()` means it did not fit and only its first `buf.len()`
/// bytes were kept: its real length on Linux, `buf.len() + 1` where the
/// system only says that it was truncated.
pub(crate) fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, loopd_addr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr (no name, no buffers, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = storage.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `msg` points at `storage` and at `iov`, which points at `buf`;
    // all outlive the call.
    let n = cvt_size(unsafe { libc::recvmsg(fd, &mut msg, RECV_FLAGS) })?;
    let n = if msg.msg_flags & libc::MSG_TRUNC != 0 {
        n.max(buf.len() + 1)
    } else {
        n
    };
    // SAFETY: zero-initialised, and the kernel filled at most `msg_namelen` bytes of it.
    let storage = unsafe { storage.assume_init() };
    Ok((n, addr_from_storage(&storage, msg.msg_namelen)))
}

/// Most datagrams one [`recv_batch`] call takes.
pub(crate) const BATCH: usize = 32;

/// What [`recv_batch`] keeps between calls: nothing here (one `recvmsg`
/// per datagram builds its header on the stack); the Linux path keeps its
/// `recvmmsg` headers.
#[derive(Debug)]
pub(crate) struct RecvState;

impl RecvState {
    /// The (empty) state.
    pub(crate) fn new() -> Box<RecvState> {
        Box::new(RecvState)
    }
}

/// A datagram socket's batched sends, one `sendto` each (POSIX has no
/// `sendmmsg`); the Linux path keeps `sendmmsg` headers. Filled by
/// [`SendState::push`], sent by [`SendState::send`].
#[derive(Debug)]
pub(crate) struct SendState {
    msgs: Vec<(SockAddr, *const u8, usize)>,
}

impl SendState {
    /// Empty, for datagram socket `_fd`.
    pub(crate) fn new(_fd: RawFd) -> Box<SendState> {
        Box::new(SendState {
            msgs: Vec::with_capacity(BATCH),
        })
    }

    /// Forgets what was pushed.
    pub(crate) fn clear(&mut self) {
        self.msgs.clear();
    }

    /// How many are pushed.
    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Adds a datagram of `len` bytes at `data` for `to`; false (and
    /// nothing added) once [`BATCH`] are pushed. The pointer is only stored:
    /// [`SendState::send`]'s caller vouches for it.
    pub(crate) fn push(&mut self, to: SockAddr, data: *const u8, len: usize) -> bool {
        if self.msgs.len() == BATCH {
            return false;
        }
        self.msgs.push((to, data, len));
        true
    }

    /// Sends the `from`th pushed datagram (one `sendto`): `Ok(1)`, or its
    /// error; `Ok(0)` when there is none.
    ///
    /// # Safety
    /// Every datagram pushed since the last [`SendState::clear`] must still
    /// be valid for reads of its length.
    pub(crate) unsafe fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let Some(&(to, data, len)) = self.msgs.get(from) else {
            return Ok(0);
        };
        let buf = if len == 0 {
            &[][..]
        } else {
            // SAFETY: the caller vouches for `len` readable bytes at `data`.
            unsafe { std::slice::from_raw_parts(data, len) }
        };
        send_to(fd, &to, buf).map(|_| 1)
    }

    /// How many datagrams the failed send held: always one here.
    pub(crate) fn message_len(&self, _from: usize) -> usize {
        1
    }

    /// Never: nothing is coalesced on this path.
    pub(crate) fn retry_apart(&mut self, _from: usize, _e: &io::Error) -> bool {
        false
    }
}

/// Receives up to `out.len()` datagrams, one `recvmsg` each (POSIX has no
/// `recvmmsg`): datagram `i` into `buf[i * stride..][..slot]`, its length as
/// [`recv_from`] reports it and sender into `out[i]`. Returns how many
/// arrived; fewer than asked means the socket is drained. `WouldBlock` when
/// none was waiting.
pub(crate) fn recv_batch(
    fd: RawFd,
    _state: &mut RecvState,
    buf: &mut [u8],
    stride: usize,
    slot: usize,
    out: &mut [(usize, loopd_addr)],
) -> io::Result<usize> {
    let stride = stride.max(slot).max(1);
    let n = out.len().min(BATCH).min(buf.len() / stride);
    for i in 0..n {
        match recv_from(fd, &mut buf[i * stride..][..slot]) {
            Ok(got) => out[i] = got,
            Err(e) if i > 0 && e.kind() == io::ErrorKind::WouldBlock => return Ok(i),
            Err(e) if i > 0 && e.kind() == io::ErrorKind::Interrupted => return Ok(i),
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Sends one datagram to `to`.
pub(crate) fn send_to(fd: RawFd, to: &SockAddr, buf: &[u8]) -> io::Result<usize> {
    let (addr, len) = to.as_ptr();
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes and `addr` for
    // `len` bytes, both for the call.
    cvt_size(unsafe { libc::sendto(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS, addr, len) })
}

/// Writes what the kernel takes of `buf`, without raising SIGPIPE.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    cvt_size(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS) })
}

/// Writes what the kernel takes of several buffers, without raising SIGPIPE.
pub(crate) fn sendv(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(IOV_MAX) as _;
    // SAFETY: `msg` points at `bufs`, which outlives the call; no control data.
    cvt_size(unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) })
}

thread_local! {
    /// The copy buffer of [`sendfile`]: allocated on a thread's first call.
    static SENDFILE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes what the socket `sock` takes of `len` bytes of `file` from
/// `offset`, as Linux's sendfile(2) does, by `pread` + `send` of at most
/// 64 KiB at a time: until the socket takes less than it was offered, `len`
/// bytes are written, or 1 MiB (one call must not hold the loop for long).
/// Returns 0 only when the file ends at `offset`. A step the socket took
/// only part of is read again from the file by the next call.
pub(crate) fn sendfile(sock: RawFd, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
    if libc::off_t::try_from(offset).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    }
    SENDFILE_BUF.with_borrow_mut(|buf| {
        if buf.is_empty() {
            buf.resize(SENDFILE_CHUNK, 0);
        }
        let mut sent = 0usize;
        while sent < len.min(SENDFILE_MAX) {
            let want = (len - sent).min(buf.len());
            let Ok(at) = libc::off_t::try_from(offset + sent as u64) else {
                break;
            };
            // SAFETY: `buf` is valid for writes of `want <= buf.len()` bytes.
            let r = unsafe { libc::pread(file, buf.as_mut_ptr().cast(), want, at) };
            let got = match cvt_size(r) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if sent > 0 => {
                    log::debug!("sendfile: reading the file after {sent} bytes: {e}");
                    break;
                }
                Err(e) => return Err(e),
            };
            match send(sock, &buf[..got]) {
                Ok(n) => {
                    sent += n;
                    if n < got {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn accepted_and_new_sockets_are_nonblocking_and_cloexec() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (fd, peer) = loop {
            match accept(l.as_raw_fd()) {
                Ok(x) => break x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert!(peer.to_socket_addr().is_some());
        let s = socket(libc::AF_INET, libc::SOCK_STREAM).unwrap();
        for fd in [fd.as_raw_fd(), s.as_raw_fd()] {
            // SAFETY: fcntl queries on descriptors we own.
            let (fd_flags, fl_flags) = unsafe {
                (
                    libc::fcntl(fd, libc::F_GETFD),
                    libc::fcntl(fd, libc::F_GETFL),
                )
            };
            assert!(fd_flags & libc::FD_CLOEXEC != 0, "not close-on-exec");
            assert!(fl_flags & libc::O_NONBLOCK != 0, "blocking");
        }
    }

    #[test]
    fn sendfile_copies_a_file_range_and_reports_its_end() {
        let path =
            std::env::temp_dir().join(format!("loopd-posix-sendfile-{}", std::process::id()));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let mut offset = 1000u64;
        let end = 150_000u64;
        let mut spins = 0;
        while offset < end {
            match sendfile(
                a.as_raw_fd(),
                file.as_raw_fd(),
                offset,
                (end - offset) as usize,
            ) {
                Ok(n) => {
                    assert!(n > 0, "0 before the end of the file");
                    assert!(n <= SENDFILE_MAX);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    spins += 1;
                    assert!(spins < 100_000, "the reader stopped reading");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("sendfile: {e}"),
            }
        }
        let len = data.len() as u64;
        assert_eq!(
            sendfile(a.as_raw_fd(), file.as_raw_fd(), len, 10).unwrap(),
            0,
            "at the end of the file"
        );
        drop(a);
        let got = reader.join().unwrap();
        assert!(got == data[1000..150_000], "the copy differs");
    }
}
