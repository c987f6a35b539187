//! Thin, safe wrappers over the few socket syscalls std does not expose the
//! way a readiness loop needs them: accept non-blocking and close-on-exec,
//! `send` and `sendmsg` that never raise SIGPIPE (a peer that went away
//! must not kill the process, even in an embedding program that did not
//! ignore it), non-blocking `connect`, `SO_ERROR`, `sendfile`, and
//! `recvfrom` that tells a datagram that did not fit from one that did.
//!
//! This file is the interface and what every Unix shares. Two files do what
//! differs: `linux.rs` (accept4, `SOCK_NONBLOCK` on socket(), `MSG_NOSIGNAL`,
//! Linux's sendfile) and `posix.rs` (accept + fcntl, socket + fcntl,
//! `SO_NOSIGPIPE` where `MSG_NOSIGNAL` is missing, sendfile as bounded
//! pread + send), which macOS and the BSDs take. The `portable` feature
//! makes Linux take `posix.rs` too, so CI runs that path on every change.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use loopd_handler_api::abi::loopd_addr;

#[cfg(all(target_os = "linux", not(feature = "portable")))]
mod linux;
#[cfg(all(target_os = "linux", not(feature = "portable")))]
use linux as imp;
#[cfg(not(all(target_os = "linux", not(feature = "portable"))))]
mod posix;
#[cfg(not(all(target_os = "linux", not(feature = "portable"))))]
use posix as imp;

#[cfg(test)]
pub(crate) use imp::recv_from;
pub(crate) use imp::{
    accept, recv_batch, send, send_to, sendfile, sendv, RecvState, SendState, BATCH,
};

/// The longest Unix socket path plus one (its NUL): the size of this
/// platform's `sockaddr_un::sun_path`, 108 bytes on Linux and 104 on macOS
/// and the BSDs.
pub(crate) const UNIX_PATH_MAX: usize =
    size_of::<libc::sockaddr_un>() - std::mem::offset_of!(libc::sockaddr_un, sun_path);

pub(super) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(super) fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Converts what the kernel wrote into a `sockaddr_storage` into the ABI form.
pub(super) fn addr_from_storage(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> loopd_addr {
    let len = len as usize;
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            loopd_addr::from_socket_addr(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is large enough.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let addr = std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            );
            loopd_addr::from_socket_addr(addr.into())
        }
        libc::AF_UNIX => loopd_addr::unix(),
        _ => loopd_addr::default(),
    }
}

/// An IPv4 or IPv6 socket address in the form the kernel takes, built
/// straight from a [`loopd_addr`] (no `std::net` round trip, no 128-byte
/// `sockaddr_storage` to zero): what `send_datagram` passes to `sendto`.
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    raw: RawAddr,
    len: libc::socklen_t,
}

#[derive(Clone, Copy)]
#[repr(C)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl SockAddr {
    /// `addr` as the kernel takes it; `None` for anything but IPv4 and IPv6.
    pub(crate) fn from_loopd(addr: &loopd_addr) -> Option<SockAddr> {
        use loopd_handler_api::abi::{LOOPD_AF_INET, LOOPD_AF_INET6};
        match addr.family {
            LOOPD_AF_INET => {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = addr.port.to_be();
                let ip = [addr.ip[0], addr.ip[1], addr.ip[2], addr.ip[3]];
                // The four bytes in network order, as they are in `ip`.
                sin.sin_addr.s_addr = u32::from_ne_bytes(ip);
                Some(SockAddr {
                    raw: RawAddr { v4: sin },
                    len: size_of::<libc::sockaddr_in>() as libc::socklen_t,
                })
            }
            LOOPD_AF_INET6 => {
                // SAFETY: all-zero is a valid sockaddr_in6.
                let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = addr.port.to_be();
                sin6.sin6_addr.s6_addr = addr.ip;
                sin6.sin6_scope_id = addr.scope_id;
                Some(SockAddr {
                    raw: RawAddr { v6: sin6 },
                    len: size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                })
            }
            _ => None,
        }
    }

    /// The address and its length, for a syscall.
    pub(super) fn as_ptr(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        ((&self.raw as *const RawAddr).cast(), self.len)
    }

    /// The address as the kernel reads it: its first `len` bytes.
    fn bytes(&self) -> &[u8] {
        let (ptr, len) = self.as_ptr();
        // SAFETY: `len` is the size of the member `from_loopd` wrote whole
        // (a sockaddr_in or sockaddr_in6, built from zeroed), so its first
        // `len` bytes are initialised and borrowed with `self`.
        unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize) }
    }
}

/// The same address, byte for byte as the kernel reads it.
impl PartialEq for SockAddr {
    fn eq(&self, other: &SockAddr) -> bool {
        self.bytes() == other.bytes()
    }
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ptr, len) = self.as_ptr();
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: `len` (at most a sockaddr_in6) bytes are readable at `ptr`
        // and writable in the larger `storage`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                ptr.cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len as usize,
            )
        };
        match addr_from_storage(&storage, len).to_socket_addr() {
            Some(a) => write!(f, "SockAddr({a})"),
            None => f.write_str("SockAddr(?)"),
        }
    }
}

/// Writes `addr` into a `sockaddr_storage`; returns it and its length.
fn storage_from_addr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The socket's local address.
pub(crate) fn local_addr(fd: RawFd) -> loopd_addr {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid out-parameters sized for any address.
    let r = unsafe { libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return loopd_addr::default();
    }
    // SAFETY: zero-initialised, and the kernel filled at most `len` bytes of it.
    addr_from_storage(&unsafe { storage.assume_init() }, len)
}

/// Reads what is available into `buf`; `Ok(0)` is end of stream.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    #[cfg(all(target_os = "linux", not(feature = "portable")))]
    {
        linux::recv(fd, buf)
    }
    #[cfg(not(all(target_os = "linux", not(feature = "portable"))))]
    {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
    }
}

/// Whether a `sendto` error means "the kernel has no room right now": the
/// datagram is dropped, never queued.
pub(crate) fn is_send_buffer_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Whether a `sendto` error is the kernel refusing a broadcast destination to
/// a socket without `SO_BROADCAST` (Linux and the BSDs answer `EACCES`).
pub(crate) fn is_broadcast_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EACCES)
}

/// Whether a sendfile error concerns the socket (the connection is dead)
/// rather than the file.
pub(crate) fn is_socket_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE)
            | Some(libc::ECONNRESET)
            | Some(libc::ENOTCONN)
            | Some(libc::ETIMEDOUT)
            | Some(libc::ECONNABORTED)
            | Some(libc::EHOSTUNREACH)
            | Some(libc::ENETUNREACH)
    )
}

/// Turns off Nagle's algorithm: loopd writes whole replies, latency matters.
pub(crate) fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int option value for the duration of the call.
    // Failure (e.g. on a Unix socket) is harmless and ignored.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Re-issues `listen` with a larger backlog (Linux and the BSDs allow it on
/// a listening socket).
pub(crate) fn set_backlog(fd: RawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: plain values only.
    cvt(unsafe { libc::listen(fd, backlog) }).map(drop)
}

/// The pending error of a socket (`SO_ERROR`), e.g. the result of a non-blocking connect.
pub(crate) fn take_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let err = get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Reads an int socket option.
pub(super) fn get_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-parameters for an int option.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

pub(super) fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int option for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A bound, non-blocking, close-on-exec socket for a listener: TCP (then
/// listening with `backlog`) or UDP. TCP sockets get `SO_REUSEADDR` (a
/// restart may bind while old connections sit in TIME_WAIT; on TCP it lets
/// no one else take a listening port), UDP ones only when `reuse_udp` says
/// so: on UDP it would let any local user bind the same address and take
/// datagrams. An IPv6 socket is IPv6-only, so `[::]:P` and `0.0.0.0:P` can
/// both be listened on (nginx's default), instead of the first one taking
/// both.
///
/// `sharing` says whether and how the socket shares its address with the
/// other workers' (`SO_REUSEPORT`: one socket per worker on the same
/// address, the kernel spreading connections and datagrams).
pub(crate) fn bind_listener(
    addr: &SocketAddr,
    tcp: bool,
    backlog: i32,
    reuse_udp: bool,
    sharing: PortSharing,
) -> io::Result<OwnedFd> {
    if sharing == PortSharing::First && addr.port() != 0 {
        // Linux lets any socket of the same user with SO_REUSEPORT join a
        // group: a second loopd started on the same config would bind
        // beside the first and take half its connections. A socket
        // without it binds only where no one listens: EADDRINUSE, as
        // with one loop, when someone does.
        drop(bind_socket(addr, tcp, reuse_udp, false)?);
    }
    let fd = bind_socket(addr, tcp, reuse_udp, sharing != PortSharing::Alone)?;
    if tcp {
        set_backlog(fd.as_raw_fd(), backlog)?;
    }
    Ok(fd)
}

/// How a listening socket shares its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortSharing {
    /// One loop: the socket is the address's only one.
    Alone,
    /// Worker 0's: the first of the workers' sockets on the address, bound
    /// only if no other socket (another process's) holds it.
    First,
    /// Another worker's: joins worker 0's socket on the address.
    Join,
}

impl PortSharing {
    /// For a loop that is worker `index` of `workers`.
    pub(crate) fn of_worker(index: usize, workers: usize) -> PortSharing {
        match (workers, index) {
            (0 | 1, _) => PortSharing::Alone,
            (_, 0) => PortSharing::First,
            _ => PortSharing::Join,
        }
    }
}

/// A bound TCP or UDP socket, `SO_REUSEPORT` set if `reuse_port`.
fn bind_socket(
    addr: &SocketAddr,
    tcp: bool,
    reuse_udp: bool,
    reuse_port: bool,
) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind = if tcp {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let fd = imp::socket(domain, kind)?;
    if tcp || reuse_udp {
        set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    }
    if reuse_port {
        set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    if addr.is_ipv6() {
        set_int_opt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = storage_from_addr(addr);
    // SAFETY: `storage` holds a valid address of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// Starts a non-blocking TCP connect. `Ok` means connected or in progress:
/// writability then tells, and [`take_error`] says how it went.
pub(crate) fn connect_tcp(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = imp::socket(domain, libc::SOCK_STREAM)?;
    let (storage, len) = storage_from_addr(addr);
    // SAFETY: `storage` holds a valid address of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    set_nodelay(fd.as_raw_fd());
    Ok(fd)
}

/// `path` as a `sockaddr_un` and its length.
fn unix_addr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= sun.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path too long or contains NUL",
        ));
    }
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // sun_path starts after sun_family (and sun_len on the BSDs).
    let len =
        (std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1) as libc::socklen_t;
    Ok((sun, len))
}

/// Starts a non-blocking Unix-domain stream connect.
pub(crate) fn connect_unix(path: &Path) -> io::Result<OwnedFd> {
    let (sun, len) = unix_addr(path)?;
    let fd = imp::socket(libc::AF_UNIX, libc::SOCK_STREAM)?;
    // SAFETY: `sun` holds a valid, NUL-terminated address of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

/// A non-blocking, close-on-exec Unix-domain stream socket bound to `path`
/// and not yet listening: until [`set_backlog`] makes it listen, a connect
/// to the new socket file is refused, so its mode and owner can be set
/// before anyone can use it.
pub(crate) fn bind_unix(path: &Path) -> io::Result<OwnedFd> {
    let (sun, len) = unix_addr(path)?;
    let fd = imp::socket(libc::AF_UNIX, libc::SOCK_STREAM)?;
    // SAFETY: `sun` holds a valid, NUL-terminated address of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(fd)
}

/// Sets the mode of `path` without following a symlink there: a symlink
/// swapped in for the file is refused (`fchmodat` with
/// `AT_SYMLINK_NOFOLLOW`). Where the C library cannot do that for any file
/// (`EOPNOTSUPP`: glibc before 2.32), `chmod` after checking the path is
/// not a symlink.
pub(crate) fn chmod_nofollow(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path contains NUL"))?;
    // SAFETY: a NUL-terminated path and plain values.
    let r = unsafe {
        libc::fchmodat(
            libc::AT_FDCWD,
            c.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // Two names for one value on Linux, two values on macOS.
    let unsupported = |n: i32| n == libc::EOPNOTSUPP || n == libc::ENOTSUP;
    if !e.raw_os_error().is_some_and(unsupported) {
        return Err(e);
    }
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(e);
    }
    // SAFETY: a NUL-terminated path and a plain mode.
    cvt(unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// Waits up to `timeout` for `fd` to become writable (a non-blocking
/// connect to finish); `Ok(false)` when the time ran out.
pub(crate) fn wait_writable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Shuts down the sending side of a connected stream socket (the peer
/// reads EOF; reading goes on).
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain values only.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// Whether an accept error means "out of descriptors or memory": back off.
pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Whether an accept error concerns only the one connection being accepted.
pub(crate) fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED) | Some(libc::EPROTO) | Some(libc::EPERM) | Some(libc::EINTR)
    )
}

/// What a socket inherited from a parent process (systemd socket
/// activation, a binary upgrade) is bound to, to match it with a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SocketName {
    /// A TCP (`stream`) or UDP socket bound to this address.
    Inet { addr: SocketAddr, stream: bool },
    /// A Unix-domain stream socket bound to this path.
    Unix(std::path::PathBuf),
}

/// The name of the socket `fd` is, if it is a bound TCP, UDP or Unix
/// stream socket (`None` for anything else: not a socket, another family,
/// an unnamed one).
pub(crate) fn socket_name(fd: RawFd) -> Option<SocketName> {
    let kind = get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()?;
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid out-parameters sized for any address.
    if unsafe { libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len) } < 0 {
        return None;
    }
    // SAFETY: zero-initialised, and the kernel filled at most `len` bytes of it.
    let storage = unsafe { storage.assume_init() };
    match storage.ss_family as libc::c_int {
        libc::AF_INET | libc::AF_INET6 => Some(SocketName::Inet {
            addr: addr_from_storage(&storage, len).to_socket_addr()?,
            stream: kind == libc::SOCK_STREAM,
        }),
        libc::AF_UNIX if kind == libc::SOCK_STREAM => {
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: the family says the storage holds a sockaddr_un.
            let sun = unsafe {
                &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>()
            };
            let path_len = (len as usize).checked_sub(size_of::<libc::sa_family_t>())?;
            let bytes: Vec<u8> = sun.sun_path[..path_len.min(sun.sun_path.len())]
                .iter()
                .map(|&c| c as u8)
                .take_while(|&b| b != 0)
                .collect();
            if bytes.is_empty() {
                return None;
            }
            Some(SocketName::Unix(std::ffi::OsStr::from_bytes(&bytes).into()))
        }
        _ => None,
    }
}

/// Reads a file that must be a regular file of at most `limit` bytes
/// (`what` names such a file in the error: "a config file"), checked on the
/// opened descriptor (fstat), and read no further than `limit + 1` bytes in
/// case it grows meanwhile. Opened non-blocking, so a FIFO with no writer is
/// refused instead of waited for (and no terminal becomes loopd's
/// controlling terminal); `/dev/zero`, a FIFO or a directory is refused
/// unread. The error is the reason alone, for the caller to put after the
/// path.
#[cfg(any(feature = "config-file", feature = "tls"))]
pub(crate) fn read_regular_file(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let (file, meta) = open_regular(path).map_err(|e| e.to_string())?;
    let too_big = |len: u64| {
        format!(
            "it is {len} bytes, more than the {limit} bytes ({} MiB) {what} may have",
            limit >> 20
        )
    };
    if meta.len() > limit {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// What a file that is not a regular one is: "a directory", "a FIFO
/// (named pipe)", ...
pub(crate) fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "an unknown kind of file"
    }
}

/// Why [`open_regular`] refused a file.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The open or the fstat failed.
    Io(io::Error),
    /// It is not a regular file; [`file_kind`] says what it is.
    NotRegular(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Io(e) => write!(f, "{e}"),
            Refused::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
        }
    }
}

/// Opens `path` for reading, refusing anything but a regular file, checked
/// on the opened descriptor (fstat). Opened non-blocking, so a FIFO (even
/// one that took the file's place since a caller's stat) is refused
/// instead of waited for, and no terminal becomes loopd's controlling
/// terminal.
pub(crate) fn open_regular(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), Refused> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match std::fs::metadata(path) {
            // A socket cannot be opened (ENXIO): say what it is. The stat
            // only words the message; nothing is read on its say-so.
            Ok(m) if !m.is_file() => Refused::NotRegular(file_kind(m.file_type())),
            _ => Refused::Io(e),
        })?;
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotRegular(file_kind(meta.file_type())));
    }
    Ok((file, meta))
}

/// Sets `SO_LINGER` to 0 seconds on a socket about to be closed: a TCP
/// close then sends a reset and drops what is unsent. A failure (not a
/// socket, or one without lingering) leaves the plain close.
pub(crate) fn linger_zero(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) reads a `linger` from a local of its size, on
    // a descriptor the caller holds.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Sets or clears `FD_CLOEXEC` on `fd`, and makes it non-blocking when
/// `cloexec` is set (adopting an inherited socket).
pub(crate) fn set_cloexec(fd: RawFd, cloexec: bool) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a descriptor the caller owns.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFD))?;
        let flags = if cloexec {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        cvt(libc::fcntl(fd, libc::F_SETFD, flags))?;
        if cloexec {
            let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
            cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair(bind: &str) -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind(bind).unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind(bind).unwrap();
        (rx, tx)
    }

    /// Waits (bounded) for a datagram and receives it with `recv_from`.
    fn recv_wait(rx: &UdpSocket, buf: &mut [u8]) -> (usize, loopd_addr) {
        for _ in 0..1000 {
            match recv_from(rx.as_raw_fd(), buf) {
                Ok(x) => return x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("recv_from: {e}"),
            }
        }
        panic!("no datagram arrived");
    }

    #[test]
    fn recv_from_reports_the_real_length_and_the_sender() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (rx, tx) = pair(bind);
            let to = rx.local_addr().unwrap();
            let mut buf = [0u8; 8];

            tx.send_to(b"fits", to).unwrap();
            let (n, from) = recv_wait(&rx, &mut buf);
            assert_eq!(n, 4);
            assert_eq!(&buf[..4], b"fits");
            assert_eq!(from.to_socket_addr(), Some(tx.local_addr().unwrap()));

            tx.send_to(b"exactly8", to).unwrap();
            assert_eq!(
                recv_wait(&rx, &mut buf).0,
                8,
                "a full buffer is not truncation"
            );

            tx.send_to(b"nine byte", to).unwrap();
            let (n, _) = recv_wait(&rx, &mut buf);
            assert_eq!(n, 9, "a datagram that did not fit reports its real size");

            tx.send_to(b"", to).unwrap();
            assert_eq!(
                recv_wait(&rx, &mut buf).0,
                0,
                "an empty datagram is a datagram"
            );

            let err = recv_from(rx.as_raw_fd(), &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{bind}");
        }
    }

    #[test]
    fn recv_batch_takes_many_datagrams_at_once_with_lengths_and_senders() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (rx, tx) = pair(bind);
            let to = rx.local_addr().unwrap();
            // 40 datagrams queued: sizes 0..39, the 10th one too big for a slot.
            const SLOT: usize = 16;
            for i in 0..40u8 {
                let len = if i == 10 { 100 } else { usize::from(i) % SLOT };
                tx.send_to(&vec![i; len], to).unwrap();
            }
            // Slots of 16 bytes, 24 apart.
            const STRIDE: usize = SLOT + 8;
            let mut buf = vec![0u8; BATCH * STRIDE];
            let mut out = vec![(0, loopd_addr::default()); BATCH];
            let mut state = RecvState::new();
            let mut seen = Vec::new();
            let mut calls = Vec::new();
            for _ in 0..1000 {
                match recv_batch(rx.as_raw_fd(), &mut state, &mut buf, STRIDE, SLOT, &mut out) {
                    Ok(n) => {
                        calls.push(n);
                        for (i, (len, from)) in out[..n].iter().enumerate() {
                            assert_eq!(from.to_socket_addr(), Some(tx.local_addr().unwrap()));
                            let kept = (*len).min(SLOT);
                            seen.push((*len, buf[i * STRIDE..][..kept].to_vec()));
                        }
                        if seen.len() == 40 {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("recv_batch: {e}"),
                }
            }
            assert_eq!(seen.len(), 40, "{bind}: {calls:?}");
            assert!(calls.iter().all(|&n| n <= BATCH), "{calls:?}");
            for (i, (len, data)) in seen.iter().enumerate() {
                if i == 10 {
                    assert_eq!(*len, 100, "the real length of one that did not fit");
                    assert_eq!(data, &vec![10u8; SLOT]);
                } else {
                    assert_eq!(*len, i % SLOT);
                    assert_eq!(data, &vec![i as u8; i % SLOT], "{bind}: datagram {i}");
                }
            }
            let err = recv_batch(rx.as_raw_fd(), &mut state, &mut buf, STRIDE, SLOT, &mut out)
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{bind}");

            // The same state with another buffer and slot size (headers
            // kept from the calls above must not be reused as they are).
            let mut other = vec![0u8; 4 * 64];
            tx.send_to(&[9u8; 40], to).unwrap();
            tx.send_to(&[8u8; 64], to).unwrap();
            let mut got = Vec::new();
            for _ in 0..1000 {
                match recv_batch(rx.as_raw_fd(), &mut state, &mut other, 64, 64, &mut out) {
                    Ok(n) => {
                        for (i, (len, from)) in out[..n].iter().enumerate() {
                            assert_eq!(from.to_socket_addr(), Some(tx.local_addr().unwrap()));
                            got.push(other[i * 64..][..*len].to_vec());
                        }
                        if got.len() == 2 {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("recv_batch: {e}"),
                }
            }
            assert_eq!(got, vec![vec![9u8; 40], vec![8u8; 64]], "{bind}");
        }
    }

    #[test]
    fn send_to_reaches_ipv4_and_ipv6_addresses_built_from_loopd_addr() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let (rx, tx) = pair(bind);
            let to = loopd_addr::from_socket_addr(rx.local_addr().unwrap());
            let raw = SockAddr::from_loopd(&to).unwrap();
            assert!(format!("{raw:?}").contains(&rx.local_addr().unwrap().to_string()));
            assert_eq!(send_to(tx.as_raw_fd(), &raw, b"hello").unwrap(), 5);
            let mut buf = [0u8; 16];
            let (n, from) = recv_wait(&rx, &mut buf);
            assert_eq!(&buf[..n], b"hello", "{bind}");
            assert_eq!(from.to_socket_addr(), Some(tx.local_addr().unwrap()));
        }
        assert!(SockAddr::from_loopd(&loopd_addr::unix()).is_none());
        assert!(SockAddr::from_loopd(&loopd_addr::default()).is_none());
        // A scope id travels (and a wrong one is the kernel's to refuse).
        let mut scoped = loopd_addr::from_socket_addr("[fe80::1]:9".parse().unwrap());
        scoped.scope_id = 7;
        let raw = SockAddr::from_loopd(&scoped).unwrap();
        // SAFETY: built as IPv6 above.
        assert_eq!(unsafe { raw.raw.v6.sin6_scope_id }, 7);
    }

    #[test]
    fn broadcast_needs_so_broadcast() {
        // 127.255.255.255 is the broadcast address of the loopback network.
        let (rx, tx) = pair("127.0.0.1:0");
        let to: SocketAddr = format!("127.255.255.255:{}", rx.local_addr().unwrap().port())
            .parse()
            .unwrap();
        let err = tx.send_to(b"x", to).unwrap_err();
        assert!(is_broadcast_refused(&err), "{err}");
        assert!(!is_send_buffer_full(&err));
        tx.set_broadcast(true).unwrap();
        tx.send_to(b"x", to).expect("allowed with SO_BROADCAST");
    }

    /// Runs of equal-sized datagrams to one address leave as one message
    /// each (UDP GSO), and arrive as the datagrams they were; a socket that
    /// cannot coalesce (SO_NO_CHECK: the kernel refuses GSO without
    /// checksums) gets them one by one instead, none lost.
    #[cfg(all(target_os = "linux", not(feature = "portable")))]
    #[test]
    fn runs_to_one_address_are_coalesced_and_arrive_as_sent() {
        let (rx1, tx) = pair("127.0.0.1:0");
        let rx2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx2.set_nonblocking(true).unwrap();
        let to = |rx: &UdpSocket| {
            SockAddr::from_loopd(&loopd_addr::from_socket_addr(rx.local_addr().unwrap())).unwrap()
        };
        let (a, b) = (to(&rx1), to(&rx2));
        let dgram = |i: u8, len: usize| vec![i; len];
        // (target, bytes): five of 100 and a shorter one to a (one message),
        // one more to a (a new message: the short one closed the last), two
        // to b, an empty one to b (never coalesced).
        let plan: Vec<(SockAddr, Vec<u8>)> = vec![
            (a, dgram(0, 100)),
            (a, dgram(1, 100)),
            (a, dgram(2, 100)),
            (a, dgram(3, 100)),
            (a, dgram(4, 100)),
            (a, dgram(5, 40)),
            (a, dgram(6, 100)),
            (b, dgram(7, 100)),
            (b, dgram(8, 100)),
            (b, dgram(9, 0)),
        ];
        let mut state = SendState::new(tx.as_raw_fd());
        for (addr, d) in &plan {
            assert!(state.push(*addr, d.as_ptr(), d.len()));
        }
        // SAFETY: every pushed datagram is in `plan`, alive for the call.
        assert_eq!(unsafe { state.send(tx.as_raw_fd(), 0) }.unwrap(), 10);
        assert_eq!(state.first[..5], [0, 6, 7, 9, 10], "four messages");
        let mut buf = [0u8; 256];
        for (addr, d) in &plan {
            let rx = if *addr == a { &rx1 } else { &rx2 };
            let (n, from) = recv_wait(rx, &mut buf);
            assert_eq!(&buf[..n], &d[..], "each datagram whole, in order");
            assert_eq!(from.to_socket_addr(), Some(tx.local_addr().unwrap()));
        }

        let on: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int for the call.
        let r = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        state.clear();
        for d in &plan[..3] {
            assert!(state.push(a, d.1.as_ptr(), d.1.len()));
        }
        // SAFETY: as above.
        let err = unsafe { state.send(tx.as_raw_fd(), 0) }.unwrap_err();
        assert_eq!(state.message_len(0), 3);
        assert!(state.retry_apart(0, &err), "{err}");
        // SAFETY: as above.
        assert_eq!(unsafe { state.send(tx.as_raw_fd(), 0) }.unwrap(), 3);
        assert_eq!(state.first[..4], [0, 1, 2, 3], "one by one now");
        for d in &plan[..3] {
            let (n, _) = recv_wait(&rx1, &mut buf);
            assert_eq!(&buf[..n], &d.1[..]);
        }
        assert!(
            !state.retry_apart(0, &io::Error::from_raw_os_error(libc::EINVAL)),
            "nothing coalesced to take apart"
        );

        // The last one left (sent with sendto(2)) is a message of its own.
        assert!(state.push(b, plan[7].1.as_ptr(), plan[7].1.len()));
        // SAFETY: as above.
        assert_eq!(unsafe { state.send(tx.as_raw_fd(), 3) }.unwrap(), 1);
        assert_eq!(state.first[..2], [3, 4]);
        assert_eq!(state.message_len(3), 1);
        let (n, _) = recv_wait(&rx2, &mut buf);
        assert_eq!(&buf[..n], &plan[7].1[..]);
    }

    #[test]
    fn send_buffer_full_errors() {
        assert!(is_send_buffer_full(&io::Error::from_raw_os_error(
            libc::EAGAIN
        )));
        assert!(is_send_buffer_full(&io::Error::from_raw_os_error(
            libc::ENOBUFS
        )));
        assert!(!is_send_buffer_full(&io::Error::from_raw_os_error(
            libc::EMSGSIZE
        )));
    }
}
