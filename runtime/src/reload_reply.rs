//! The answer to `loopd reload`: whether the reload it asked for was
//! applied, with the line loopd logged about it.
//!
//! A loopd that handles signals (the binary; an embedding program with
//! `Builder::handle_signals(true)`; worker 0 of several) listens on a Unix
//! stream socket in Linux's abstract namespace named `loopd-reload/PID`.
//! A connection to it is one reload request: loopd accepts it, takes it
//! only from a peer that could have sent it SIGHUP (the kernel's
//! `SO_PEERCRED`: root, or loopd's own user), reloads as on SIGHUP, writes
//! `ok` or `failed`, a newline and the line it logged, and closes the
//! connection. Requests accepted in one pass share one reload, read after
//! they came. `loopd reload` talks only to a socket whose owner is the
//! process it was asked about (`SO_PEERCRED` again), so a process holding
//! the name first is not believed; without the socket (a loopd older than
//! the command, another program, a system other than Linux), it sends
//! SIGHUP and says it cannot tell the outcome.
//!
//! No signal carries the request, so none is lost when several come at
//! once, and the answer goes back on the connection the request came on,
//! to the process that made it: nobody else can read it, even after the
//! asker gave up. The socket needs no file (loopd may run as another user
//! than the operator, in a directory the operator cannot see), and it is
//! watched by the loop itself: no thread.

use std::io;
use std::time::Duration;

/// The most requests one readiness of the socket accepts (and so shares
/// one reload among).
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
const ACCEPTS_PER_PASS: usize = 64;

/// The longest answer sent: the rest of a very long error is in the log.
#[cfg(target_os = "linux")]
const MAX_ANSWER: usize = 60 << 10;

/// The abstract socket name of process `pid`'s reload requests.
#[cfg(target_os = "linux")]
fn socket_name(pid: u32) -> String {
    format!("loopd-reload/{pid}")
}

/// The kernel's credentials of a Unix socket's peer: (pid, uid).
#[cfg(target_os = "linux")]
fn peer_cred(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero ucred is valid; getsockopt(2) writes at most
    // `len` bytes into it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED on a socket the caller holds, into a local of the
    // size given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}

/// The request socket of a running loopd, and its refusals' rate limit.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub(crate) struct ReloadRequests {
    pub(crate) listener: std::os::unix::net::UnixListener,
    refused: crate::core::RateLimit,
    exhausted: crate::core::RateLimit,
}

/// What [`accept`] stopped at.
#[cfg(target_os = "linux")]
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Nothing more is waiting.
    All,
    /// [`ACCEPTS_PER_PASS`] taken: more may be waiting.
    Capped,
    /// Out of descriptors (or memory): pause the socket a while, as a
    /// listener is paused, or the loop would spin on it.
    Exhausted,
}

/// Set once a runtime of this process has bound its request socket.
#[cfg(target_os = "linux")]
static BOUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a runtime of this process holds the request socket (so a second
/// one's `AddrInUse` is no conflict).
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
pub(crate) fn bound_here() -> bool {
    BOUND.load(std::sync::atomic::Ordering::SeqCst)
}

/// Binds this process's request socket, non-blocking. `AddrInUse`: another
/// runtime of this process has it ([`bound_here`]), or another process
/// took the name.
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
pub(crate) fn listen() -> io::Result<ReloadRequests> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = socket_name(std::process::id());
    let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    listener.set_nonblocking(true)?;
    BOUND.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(ReloadRequests {
        listener,
        refused: crate::core::RateLimit::default(),
        exhausted: crate::core::RateLimit::default(),
    })
}

/// Accepts the requests waiting, keeping those from a peer that could
/// signal this process (root or this process's user); the others are told
/// why and closed (logged at most once a second).
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
pub(crate) fn accept(
    requests: &mut ReloadRequests,
    out: &mut Vec<std::os::unix::net::UnixStream>,
) -> Accepted {
    use std::os::fd::AsFd;
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    for _ in 0..ACCEPTS_PER_PASS {
        let conn = match requests.listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::All,
            Err(e) if crate::sys::is_resource_exhaustion(&e) => {
                if let Some(n) = requests.exhausted.allow(std::time::Instant::now()) {
                    log::warn!(
                        "reload requests: accept: {e}; not taking any for {} ms ({n} similar warnings suppressed)",
                        crate::source::listener::ACCEPT_BACKOFF.as_millis()
                    );
                }
                return Accepted::Exhausted;
            }
            Err(e) if crate::sys::is_transient_accept_error(&e) => continue,
            Err(e) => {
                log::debug!("reload requests: accept: {e}");
                return Accepted::All;
            }
        };
        let _ = conn.set_nonblocking(true);
        match peer_cred(conn.as_fd()) {
            Ok((_, uid)) if uid == 0 || uid == me => out.push(conn),
            Ok((pid, uid)) => {
                let why = format!("only root or uid {me} may reload loopd, not uid {uid}");
                if let Some(n) = requests.refused.allow(std::time::Instant::now()) {
                    log::warn!(
                        "reload request from process {pid} refused: {why} ({n} similar warnings suppressed)"
                    );
                }
                answer(vec![conn], &Err(format!("refused: {why}")));
            }
            Err(e) => log::debug!("reload requests: peer credentials: {e}"),
        }
    }
    Accepted::Capped
}

/// Writes the reload's outcome to each request and closes it. Never
/// blocks: what a full socket does not take is lost (the log has it).
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
pub(crate) fn answer(
    waiting: Vec<std::os::unix::net::UnixStream>,
    outcome: &Result<String, String>,
) {
    use std::io::Write;
    if waiting.is_empty() {
        return;
    }
    let mut text = match outcome {
        Ok(line) => format!("ok\n{line}"),
        Err(line) => format!("failed\n{line}"),
    };
    if text.len() > MAX_ANSWER {
        let mut end = MAX_ANSWER;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    for mut conn in waiting {
        if let Err(e) = conn.write_all(text.as_bytes()) {
            log::debug!("reload: answering a `loopd reload`: {e}");
        }
    }
}

/// What the running loopd answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The reload was applied: loopd's `reloaded: ...` line.
    Reloaded(String),
    /// It failed and the running config is unchanged: the error.
    Failed(String),
    /// It closed the request unanswered (it is shutting down).
    Closed,
    /// No answer within the time given.
    Silent,
}

/// Why [`request`] could not ask.
#[derive(Debug)]
pub enum Unasked {
    /// Process `pid` has no request socket (not a loopd, an older one, a
    /// loopd without signal handling, or a system other than Linux).
    NoSocket,
    /// The socket's name is held by another process than `pid`.
    Impostor(i32),
    /// Anything else (the error says what).
    Io(io::Error),
}

/// Asks process `pid` to reload and waits up to `wait` for its answer.
///
/// # Errors
/// [`Unasked`]: the request could not be made; the caller may send SIGHUP
/// instead.
#[cfg(target_os = "linux")]
pub fn request(pid: i32, wait: Duration) -> Result<Answer, Unasked> {
    use std::io::Read;
    use std::os::fd::AsFd;

    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let mut conn = match connect(&socket_name(pid as u32), wait) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(Unasked::NoSocket),
        Err(e) if timed_out(&e) => return Ok(Answer::Silent),
        Err(e) => return Err(Unasked::Io(e)),
    };
    // The socket must be the process's own: bound by it (a socket passed on
    // by a process that is gone keeps that process's pid, which a later
    // process may have), as root or as one of the process's users.
    match peer_cred(conn.as_fd()) {
        Ok((owner, uid)) if owner == pid && (uid == 0 || process_uids(pid).contains(&uid)) => {}
        Ok((owner, _)) => return Err(Unasked::Impostor(owner)),
        Err(e) => return Err(Unasked::Io(e)),
    }
    // A zero timeout would mean none: wait at least a millisecond.
    conn.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .map_err(Unasked::Io)?;
    let mut got = Vec::new();
    match (&mut conn).take(MAX_ANSWER as u64).read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if timed_out(&e) => return Ok(Answer::Silent),
        // It exited with the request unread.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Answer::Closed),
        Err(e) => return Err(Unasked::Io(e)),
    }
    if got.is_empty() {
        return Ok(Answer::Closed);
    }
    let text = String::from_utf8_lossy(&got);
    Ok(match text.split_once('\n') {
        Some(("ok", line)) => Answer::Reloaded(line.to_string()),
        Some((_, line)) => Answer::Failed(line.to_string()),
        None => Answer::Failed(text.into_owned()),
    })
}

/// Connects to the abstract socket `name`, waiting at most `wait` for room
/// in its backlog (a stopped or stuck loopd).
#[cfg(target_os = "linux")]
fn connect(name: &str, wait: Duration) -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the descriptor is owned
    // at once below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let conn = std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // A Unix stream connect waits for room in the backlog for at most the
    // send timeout.
    conn.set_write_timeout(Some(wait.max(Duration::from_millis(1))))?;
    // SAFETY: an all-zero sockaddr_un is a valid one (an empty path).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let name = name.as_bytes();
    if name.len() + 1 > addr.sun_path.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // The abstract namespace: a NUL, then the name, its length given.
    for (dst, &b) in addr.sun_path[1..].iter_mut().zip(name) {
        *dst = b as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
    // SAFETY: connect(2) reads `len` bytes of `addr`, a local that holds
    // at least that many.
    let rc = unsafe {
        libc::connect(
            conn.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(conn)
}

/// The real, effective, saved and file-system user ids of process `pid`
/// (`/proc/PID/status`); none if it cannot be read.
#[cfg(target_os = "linux")]
fn process_uids(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|ids| {
                ids.split_whitespace()
                    .filter_map(|u| u.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(not(target_os = "linux"))]
pub fn request(_pid: i32, _wait: Duration) -> Result<Answer, Unasked> {
    Err(Unasked::NoSocket)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_on_its_connection_and_an_impostor_is_not_believed() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener};
        // This process plays loopd: its socket, a request, the answer.
        let mut listener = listen().unwrap();
        let me = std::process::id() as i32;
        let mut ask = |outcome: Result<String, String>| {
            let asker = std::thread::spawn(move || request(me, Duration::from_secs(10)));
            let mut waiting = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while waiting.is_empty() && std::time::Instant::now() < deadline {
                accept(&mut listener, &mut waiting);
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(waiting.len(), 1);
            answer(waiting, &outcome);
            asker.join().unwrap()
        };
        match ask(Err("x.toml:3:1: bad".to_string())) {
            Ok(Answer::Failed(line)) => assert_eq!(line, "x.toml:3:1: bad"),
            other => panic!("{other:?}"),
        }
        match ask(Ok("reloaded: -".to_string())) {
            Ok(Answer::Reloaded(line)) => assert_eq!(line, "reloaded: -"),
            other => panic!("{other:?}"),
        }
        // A long error is cut at a character boundary.
        match ask(Err("é".repeat(MAX_ANSWER))) {
            Ok(Answer::Failed(line)) => assert!(line.len() < MAX_ANSWER && line.starts_with('é')),
            other => panic!("{other:?}"),
        }
        drop(listener);
        // No socket: nothing to ask.
        assert!(matches!(
            request(me, Duration::from_secs(1)),
            Err(Unasked::NoSocket)
        ));
        // This process holds the name of another process's socket (a pid
        // above Linux's limit, so no process has it): an impostor.
        let other = 4_194_305;
        let fake = UnixListener::bind_addr(
            &SocketAddr::from_abstract_name(socket_name(other as u32).as_bytes()).unwrap(),
        )
        .unwrap();
        match request(other, Duration::from_secs(1)) {
            Err(Unasked::Impostor(pid)) => assert_eq!(pid, me),
            other => panic!("{other:?}"),
        }
        drop(fake);
    }
}
