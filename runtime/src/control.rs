//! `loopd reload` and `loopd upgrade`: a request to a running loopd, and
//! its answer.
//!
//! A loopd that handles signals (the binary; an embedding program with
//! `Builder::handle_signals(true)`; worker 0 of several) listens on a Unix
//! stream socket in Linux's abstract namespace named
//! `loopd-control/NS/PID`: PID is its process id and NS the inode of its
//! pid namespace (`/proc/self/ns/pid`), so loopds that share a network
//! namespace but not a pid namespace (containers with host networking,
//! each loopd process 1) each have their own. The asker connects, checks
//! that the socket is the process's own (the kernel's `SO_PEERCRED`:
//! bound by that pid, as root or as one of its users), and only then
//! writes its request, one line:
//!
//! - `reload`: reload as on SIGHUP. Requests read in one pass share one
//!   reload.
//! - `upgrade`: start the new binary as on SIGUSR2 (`upgrade.rs`). The
//!   answer waits until the new process says it has taken over, or exits
//!   before it does; a request during an upgrade under way waits for that
//!   one.
//! - `taken-over`: from the new process of an upgrade (the peer must be
//!   the process this one started), once it serves: this one answers the
//!   upgrade's requests, then shuts down gracefully, as on SIGTERM.
//!
//! loopd takes requests only from a peer that could have signalled it
//! (`SO_PEERCRED`: root, or loopd's own user), and answers each with `ok`
//! or `failed`, a newline and one line (what it logged), then closes the
//! connection. A connection waits at most `REQUEST_TIMEOUT` (10 s) for its
//! request, and at most `PENDING_MAX` (64) wait at once (a new one closes the
//! oldest). Without the socket (a loopd older than the command, another
//! program, a system other than Linux), `loopd reload` and `loopd upgrade`
//! send the signal and say they cannot tell the outcome.
//!
//! No signal carries the request, so none is lost when several come at
//! once, and the answer goes back on the connection the request came on,
//! to the process that made it: nobody else can read it, even after the
//! asker gave up. The socket needs no file (loopd may run as another user
//! than the operator, in a directory the operator cannot see), and it is
//! watched by the loop itself: no thread.

use std::io;
use std::time::Duration;
#[cfg(target_os = "linux")]
use std::time::Instant;

/// The most connections one readiness of the socket accepts.
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
const ACCEPTS_PER_PASS: usize = 64;

/// The most accepted connections waiting for their request line.
#[cfg(target_os = "linux")]
pub(crate) const PENDING_MAX: usize = 64;

/// How long an accepted connection may take to send its request.
#[cfg(target_os = "linux")]
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request line.
#[cfg(target_os = "linux")]
const MAX_REQUEST: usize = 64;

/// The longest answer sent: the rest of a very long error is in the log.
#[cfg(target_os = "linux")]
const MAX_ANSWER: usize = 60 << 10;

/// The inode of this process's pid namespace; an error without `/proc`.
#[cfg(target_os = "linux")]
fn pid_namespace() -> io::Result<u64> {
    // "pid:[4026531836]"
    let link = std::fs::read_link("/proc/self/ns/pid")?;
    link.to_str()
        .and_then(|s| s.strip_prefix("pid:["))
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{}", link.display())))
}

/// The abstract socket name of the control socket of process `pid` in pid
/// namespace `ns`.
#[cfg(target_os = "linux")]
fn socket_name(ns: u64, pid: u32) -> String {
    format!("loopd-control/{ns}/{pid}")
}

/// This process's control socket name.
#[cfg(target_os = "linux")]
pub(crate) fn own_socket_name() -> io::Result<String> {
    Ok(socket_name(pid_namespace()?, std::process::id()))
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

/// What a connection asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Reload the config file (as SIGHUP does).
    Reload,
    /// Start the new binary and hand over (as SIGUSR2 does).
    Upgrade,
    /// The new process of an upgrade serves now: answer the upgrade's
    /// requests and shut down.
    TakenOver,
}

impl Request {
    /// The line that asks for it.
    fn line(self) -> &'static str {
        match self {
            Request::Reload => "reload",
            Request::Upgrade => "upgrade",
            Request::TakenOver => "taken-over",
        }
    }
}

/// A connection whose request was read: answer it with [`answer`].
#[cfg(target_os = "linux")]
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct Asked {
    pub(crate) conn: std::os::unix::net::UnixStream,
    /// The peer's process id (`SO_PEERCRED`, in this process's namespace).
    pub(crate) pid: i32,
    pub(crate) request: Request,
}

/// An accepted connection whose request line is not in yet.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Pending {
    conn: std::os::unix::net::UnixStream,
    pid: i32,
    got: Vec<u8>,
    since: Instant,
}

/// The control socket of a running loopd, the connections accepted on it
/// that have not sent their request yet (each registered with the poller
/// under the socket's own key), and its warnings' rate limits.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) listener: std::os::unix::net::UnixListener,
    pending: Vec<Pending>,
    /// When the timer set for the oldest waiting connection fires.
    armed: Option<Instant>,
    /// Until when accepting is paused (out of descriptors).
    paused_until: Option<Instant>,
    refused: crate::core::RateLimit,
    exhausted: crate::core::RateLimit,
}

/// What [`Control::accept`] stopped at.
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

/// Set once a runtime of this process has bound its control socket.
#[cfg(target_os = "linux")]
static BOUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a runtime of this process holds the control socket (so a second
/// one's `AddrInUse` is no conflict).
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
pub(crate) fn bound_here() -> bool {
    BOUND.load(std::sync::atomic::Ordering::SeqCst)
}

/// Binds this process's control socket, non-blocking. `AddrInUse`: another
/// runtime of this process has it ([`bound_here`]), or another process
/// took the name.
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
pub(crate) fn listen() -> io::Result<Control> {
    let control = listen_as(&own_socket_name()?)?;
    BOUND.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(control)
}

/// Binds the abstract socket `name`, non-blocking.
#[cfg(target_os = "linux")]
fn listen_as(name: &str) -> io::Result<Control> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    listener.set_nonblocking(true)?;
    Ok(Control {
        listener,
        pending: Vec::new(),
        armed: None,
        paused_until: None,
        refused: crate::core::RateLimit::default(),
        exhausted: crate::core::RateLimit::default(),
    })
}

#[cfg(target_os = "linux")]
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
impl Control {
    /// Accepts the connections waiting, keeping those from a peer that
    /// could signal this process (root or this process's user) until their
    /// request comes; the others are told why and closed (logged at most
    /// once a second). Each kept one is registered with `poll` under `key`,
    /// the socket's own.
    pub(crate) fn accept(&mut self, poll: &crate::event_loop::EventLoop, key: u64) -> Accepted {
        use std::os::fd::{AsFd, AsRawFd};
        // Paused, a waiting connection's event or the timer accepts nothing.
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return Accepted::All;
        }
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        for _ in 0..ACCEPTS_PER_PASS {
            let conn = match self.listener.accept() {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::All,
                Err(e) if crate::sys::is_resource_exhaustion(&e) => {
                    if let Some(n) = self.exhausted.allow(Instant::now()) {
                        log::warn!(
                            "control socket: accept: {e}; not taking any for {} ms ({n} similar warnings suppressed)",
                            crate::source::listener::ACCEPT_BACKOFF.as_millis()
                        );
                    }
                    self.paused_until =
                        Some(Instant::now() + crate::source::listener::ACCEPT_BACKOFF);
                    return Accepted::Exhausted;
                }
                Err(e) if crate::sys::is_transient_accept_error(&e) => continue,
                Err(e) => {
                    log::debug!("control socket: accept: {e}");
                    return Accepted::All;
                }
            };
            if let Err(e) = conn.set_nonblocking(true) {
                log::debug!("control socket: {e}");
                continue;
            }
            let pid = match peer_cred(conn.as_fd()) {
                Ok((pid, uid)) if uid == 0 || uid == me => pid,
                Ok((pid, uid)) => {
                    let why = format!("only root or uid {me} may control loopd, not uid {uid}");
                    if let Some(n) = self.refused.allow(Instant::now()) {
                        log::warn!(
                            "control request from process {pid} refused: {why} ({n} similar warnings suppressed)"
                        );
                    }
                    answer(conn, &Err(format!("refused: {why}")));
                    continue;
                }
                Err(e) => {
                    log::debug!("control socket: peer credentials: {e}");
                    continue;
                }
            };
            if self.pending.len() == PENDING_MAX {
                let oldest = self.pending.remove(0);
                log::debug!(
                    "control socket: {PENDING_MAX} connections wait for their request: closing the oldest (process {})",
                    oldest.pid
                );
                drop_pending(poll, oldest);
            }
            // SAFETY: the connection is kept in `self.pending` from here
            // on, and every way out of it (`drop_pending`, `read`, `close`)
            // deletes it from the poller first.
            if let Err(e) = unsafe { poll.add(conn.as_raw_fd(), key, true, false) } {
                log::debug!("control socket: watching a connection: {e}");
                continue;
            }
            self.pending.push(Pending {
                conn,
                pid,
                got: Vec::new(),
                since: Instant::now(),
            });
        }
        Accepted::Capped
    }

    /// Reads what the waiting connections sent: each whole request goes to
    /// `out`; a connection closed, over [`REQUEST_TIMEOUT`] old or sending
    /// something else is answered (if it can still read) and closed.
    pub(crate) fn read(&mut self, poll: &crate::event_loop::EventLoop, out: &mut Vec<Asked>) {
        use std::io::Read;
        use std::os::fd::AsFd;
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let mut buf = [0u8; MAX_REQUEST];
            let done: Option<Result<Request, String>> = loop {
                match p.conn.read(&mut buf) {
                    Ok(0) => break Some(Err(String::new())),
                    Ok(n) => {
                        p.got.extend_from_slice(&buf[..n]);
                        if let Some(end) = p.got.iter().position(|&b| b == b'\n') {
                            let line = String::from_utf8_lossy(&p.got[..end]);
                            break Some(
                                [Request::Reload, Request::Upgrade, Request::TakenOver]
                                    .into_iter()
                                    .find(|r| r.line() == line)
                                    .ok_or_else(|| {
                                        format!(
                                            "unknown request `{}`: this loopd takes `reload` and `upgrade`",
                                            line.escape_debug()
                                        )
                                    }),
                            );
                        }
                        if p.got.len() > MAX_REQUEST {
                            break Some(Err(format!(
                                "a request is one line of at most {MAX_REQUEST} bytes"
                            )));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        break (now.duration_since(p.since) > REQUEST_TIMEOUT).then(|| {
                            Err(format!("no request within {} s", REQUEST_TIMEOUT.as_secs()))
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break Some(Err(String::new())),
                }
            };
            let Some(done) = done else {
                i += 1;
                continue;
            };
            let p = self.pending.remove(i);
            if let Err(e) = poll.delete(p.conn.as_fd()) {
                log::debug!("control socket: {e}");
            }
            match done {
                Ok(request) => out.push(Asked {
                    conn: p.conn,
                    pid: p.pid,
                    request,
                }),
                // Closed by the peer, or broken: nobody to tell.
                Err(why) if why.is_empty() => {}
                Err(why) => {
                    log::debug!("control request from process {}: {why}", p.pid);
                    answer(p.conn, &Err(why));
                }
            }
        }
    }

    /// When a timer should fire to close the oldest waiting connection if
    /// it is still silent then; `None` while one already fires no later
    /// (or nothing waits). The caller sets it, and calls [`Control::fired`]
    /// when it does.
    pub(crate) fn due(&mut self) -> Option<Instant> {
        let due = self.pending.first()?.since + REQUEST_TIMEOUT + Duration::from_millis(1);
        if self.armed.is_some_and(|at| at <= due) {
            return None;
        }
        self.armed = Some(due);
        Some(due)
    }

    /// The timer [`Control::due`] asked for fired.
    pub(crate) fn fired(&mut self) {
        self.armed = None;
    }

    /// Closes every waiting connection (the socket is going away).
    pub(crate) fn close(&mut self, poll: &crate::event_loop::EventLoop) {
        for p in self.pending.drain(..) {
            drop_pending(poll, p);
        }
    }
}

/// Stops watching a waiting connection and closes it.
#[cfg(target_os = "linux")]
fn drop_pending(poll: &crate::event_loop::EventLoop, p: Pending) {
    use std::os::fd::AsFd;
    if let Err(e) = poll.delete(p.conn.as_fd()) {
        log::debug!("control socket: {e}");
    }
}

/// Whether the asker on `conn` closed its end (it gave up waiting).
#[cfg(target_os = "linux")]
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
pub(crate) fn peer_closed(conn: &std::os::unix::net::UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv(2) of at most one byte into a local, peeking, without
    // waiting, on a socket the caller holds.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// Writes `outcome` to a request and closes it. Never blocks: what a full
/// socket does not take is lost (the log has it).
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
#[cfg(target_os = "linux")]
pub(crate) fn answer(mut conn: std::os::unix::net::UnixStream, outcome: &Result<String, String>) {
    use std::io::Write;
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
    if let Err(e) = conn.write_all(text.as_bytes()) {
        log::debug!("control socket: answering a request: {e}");
    }
}

/// What the running loopd answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It did what was asked: the line it logged (`reloaded: ...`,
    /// `upgraded: ...`).
    Done(String),
    /// It failed, and the running loopd is as it was: the error.
    Failed(String),
    /// It closed the request unanswered (it is shutting down).
    Closed,
    /// No answer within the time given.
    Silent,
}

/// Why [`request`] could not ask.
#[derive(Debug)]
pub enum Unasked {
    /// Process `pid` has no control socket (not a loopd, an older one, a
    /// loopd without signal handling, one in another network namespace, or
    /// a system other than Linux).
    NoSocket,
    /// The socket's name is held by another process than `pid`.
    Impostor(i32),
    /// Anything else (the error says what).
    Io(io::Error),
}

/// Asks process `pid` for `request` and waits up to `wait` for its answer.
///
/// # Errors
/// [`Unasked`]: the request could not be made; the caller may send the
/// signal instead.
#[cfg(target_os = "linux")]
pub fn request(pid: i32, request: Request, wait: Duration) -> Result<Answer, Unasked> {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    // `pid` is a process id in this process's pid namespace, and loopd
    // names its socket with its own: only a loopd in this namespace can
    // hold the name asked for.
    let ns = pid_namespace().map_err(|_| Unasked::NoSocket)?;
    let mut conn = match connect(&socket_name(ns, pid as u32), wait) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(Unasked::NoSocket),
        Err(e) if timed_out(&e) => return Ok(Answer::Silent),
        Err(e) => return Err(Unasked::Io(e)),
    };
    // The socket must be the process's own: bound by it (a socket passed on
    // by a process that is gone keeps that process's pid, which a later
    // process may have), as root or as one of the process's users. Nothing
    // is asked before that.
    match peer_cred(conn.as_fd()) {
        Ok((owner, uid)) if owner == pid && (uid == 0 || process_uids(pid).contains(&uid)) => {}
        Ok((owner, _)) => return Err(Unasked::Impostor(owner)),
        Err(e) => return Err(Unasked::Io(e)),
    }
    match conn.write_all(format!("{}\n", request.line()).as_bytes()) {
        Ok(()) => {}
        Err(e) if timed_out(&e) => return Ok(Answer::Silent),
        // Closed before the request came (a refusal, say): what it said
        // before closing is still there to read.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(Unasked::Io(e)),
    }
    // A zero timeout would mean none: wait at least a millisecond.
    conn.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .map_err(Unasked::Io)?;
    let mut got = Vec::new();
    match (&mut conn).take(MAX_ANSWER as u64).read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if timed_out(&e) => return Ok(Answer::Silent),
        // It closed with the request unread: after answering (a refusal),
        // or exiting.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(Unasked::Io(e)),
    }
    if got.is_empty() {
        return Ok(Answer::Closed);
    }
    let text = String::from_utf8_lossy(&got);
    Ok(match text.split_once('\n') {
        Some(("ok", line)) => Answer::Done(line.to_string()),
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
pub fn request(_pid: i32, _request: Request, _wait: Duration) -> Result<Answer, Unasked> {
    Err(Unasked::NoSocket)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::event_loop::EventLoop;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// Accepts and reads on `control` until `n` requests are in (10 s at most).
    fn collect(control: &mut Control, poll: &EventLoop, n: usize) -> Vec<Asked> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < n && Instant::now() < deadline {
            control.accept(poll, 0);
            control.read(poll, &mut out);
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    }

    /// Accepts and reads on `control` for about 100 ms.
    fn pump(control: &mut Control, poll: &EventLoop) -> Vec<Asked> {
        let mut out = Vec::new();
        for _ in 0..10 {
            control.accept(poll, 0);
            control.read(poll, &mut out);
            std::thread::sleep(Duration::from_millis(10));
        }
        out
    }

    #[test]
    fn a_request_is_answered_on_its_connection_and_an_impostor_is_not_believed() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener};
        // This process plays loopd: its socket, a request, the answer.
        let poll = EventLoop::new().unwrap();
        let mut control = listen().unwrap();
        let me = std::process::id() as i32;
        let mut ask = |what: Request, outcome: Result<String, String>| {
            let asker = std::thread::spawn(move || request(me, what, Duration::from_secs(10)));
            let mut asked = collect(&mut control, &poll, 1);
            assert_eq!(asked.len(), 1);
            let a = asked.pop().unwrap();
            assert_eq!((a.request, a.pid), (what, me));
            answer(a.conn, &outcome);
            asker.join().unwrap()
        };
        match ask(Request::Reload, Err("x.toml:3:1: bad".to_string())) {
            Ok(Answer::Failed(line)) => assert_eq!(line, "x.toml:3:1: bad"),
            other => panic!("{other:?}"),
        }
        match ask(Request::Upgrade, Ok("upgraded: -".to_string())) {
            Ok(Answer::Done(line)) => assert_eq!(line, "upgraded: -"),
            other => panic!("{other:?}"),
        }
        // A long error is cut at a character boundary.
        match ask(Request::Reload, Err("é".repeat(MAX_ANSWER))) {
            Ok(Answer::Failed(line)) => assert!(line.len() < MAX_ANSWER && line.starts_with('é')),
            other => panic!("{other:?}"),
        }
        control.close(&poll);
        drop(control);
        // No socket: nothing to ask.
        assert!(matches!(
            request(me, Request::Reload, Duration::from_secs(1)),
            Err(Unasked::NoSocket)
        ));
        // This process holds the name of its parent's socket: an impostor,
        // and nothing is asked of it.
        let parent = std::os::unix::process::parent_id();
        let ns = pid_namespace().unwrap();
        let fake = UnixListener::bind_addr(
            &SocketAddr::from_abstract_name(socket_name(ns, parent).as_bytes()).unwrap(),
        )
        .unwrap();
        fake.set_nonblocking(true).unwrap();
        match request(parent as i32, Request::Reload, Duration::from_secs(1)) {
            Err(Unasked::Impostor(pid)) => assert_eq!(pid, me),
            other => panic!("{other:?}"),
        }
        let (mut seen, _) = fake.accept().unwrap();
        let mut sent = Vec::new();
        seen.read_to_end(&mut sent).unwrap();
        assert!(sent.is_empty(), "the impostor was asked: {sent:?}");
    }

    #[test]
    fn a_connection_is_no_request_until_its_line_comes_and_a_bad_one_is_told_why() {
        let poll = EventLoop::new().unwrap();
        let mut control = listen_as("loopd-control-test/lines").unwrap();
        let connect = || {
            use std::os::linux::net::SocketAddrExt;
            UnixStream::connect_addr(
                &std::os::unix::net::SocketAddr::from_abstract_name(b"loopd-control-test/lines")
                    .unwrap(),
            )
            .unwrap()
        };
        // Connected, then the line in two pieces: one request, once it is whole.
        let mut slow = connect();
        let mut out = Vec::new();
        std::thread::sleep(Duration::from_millis(20));
        control.accept(&poll, 0);
        control.read(&poll, &mut out);
        assert!(out.is_empty());
        slow.write_all(b"relo").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        control.read(&poll, &mut out);
        assert!(out.is_empty());
        slow.write_all(b"ad\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        control.read(&poll, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request, Request::Reload);
        // An unknown line, and one too long, are answered and closed.
        for (sent, said) in [
            (&b"restart\n"[..], "failed\nunknown request `restart`"),
            (&[b'x'; 100][..], "failed\na request is one line"),
        ] {
            let mut c = connect();
            c.write_all(sent).unwrap();
            assert!(pump(&mut control, &poll).is_empty());
            let mut text = String::new();
            c.read_to_string(&mut text).unwrap();
            assert!(text.starts_with(said), "{text}");
        }
        // One silent past REQUEST_TIMEOUT is told so and closed; the timer
        // for it is asked for once, and again after it fired.
        let mut mute = connect();
        assert!(pump(&mut control, &poll).is_empty());
        let due = control.due().expect("a timer for the waiting connection");
        assert!(due >= control.pending[0].since + REQUEST_TIMEOUT);
        assert_eq!(control.due(), None, "one timer at a time");
        control.fired();
        assert_eq!(control.due(), Some(due));
        control.pending[0].since -= REQUEST_TIMEOUT + Duration::from_secs(1);
        control.read(&poll, &mut out);
        assert_eq!(out.len(), 1, "nothing more was asked");
        assert!(control.pending.is_empty());
        let mut text = String::new();
        mute.read_to_string(&mut text).unwrap();
        assert_eq!(text, "failed\nno request within 10 s");
        // A connection that closes unasked is dropped; at most PENDING_MAX
        // wait, the oldest closed for a newer one.
        drop(connect());
        let mut silent: Vec<UnixStream> = (0..PENDING_MAX + 1).map(|_| connect()).collect();
        assert!(pump(&mut control, &poll).is_empty());
        assert_eq!(control.pending.len(), PENDING_MAX);
        let mut first = silent.remove(0);
        first
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            first.read(&mut [0u8; 8]).unwrap(),
            0,
            "the oldest is closed"
        );
        control.close(&poll);
        assert!(control.pending.is_empty());
    }
}
