//! The answer to `loopd reload`: whether the reload it asked for was
//! applied, with the line loopd logged about it.
//!
//! `loopd reload` binds a Unix datagram socket in Linux's abstract
//! namespace, named from its own process id and a random nonce, with
//! `SO_PASSCRED` set; then it sends SIGHUP with `sigqueue(3)`, the signal's
//! value carrying [`TAG`] and the nonce. loopd's SIGHUP handler keeps the
//! sender's pid and nonce (`si_code == SI_QUEUE` tells it from a `kill`: a
//! plain `kill -HUP` gets no answer, as before). The reload takes what was
//! kept before it reads the config file, and when it is done, or has
//! failed, sends each of them one datagram: `ok` or `failed`, a newline,
//! then the line it logged. The kernel attaches the sender's credentials to
//! it (the receiver set `SO_PASSCRED`), and `loopd reload` takes an answer
//! only from the process it signalled.
//!
//! A datagram, because sending one never blocks loopd's loop (a full
//! receiver drops it) and needs no permission on a file or a process: loopd
//! may run as another user (`[runtime] user`) than the operator, whom it
//! could not signal back. Linux only (the abstract namespace): elsewhere
//! `loopd reload` signals with `kill` and loopd answers nobody.

use std::io;
use std::time::{Duration, Instant};

/// The high 32 bits of the SIGHUP's value (`sigval`) when `loopd reload`
/// waits for an answer: "loop".
pub const TAG: u64 = 0x6c6f_6f70;

/// The most `loopd reload`s one reload answers; more at once get none (and
/// say so when they time out).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SLOTS: usize = 8;

/// (pid << 32 | nonce) of each `loopd reload` waiting; 0: a free slot.
#[cfg(any(target_os = "linux", target_os = "android"))]
static WAITING: [std::sync::atomic::AtomicU64; SLOTS] =
    [const { std::sync::atomic::AtomicU64::new(0) }; SLOTS];

/// The abstract socket name `loopd reload` (process `pid`) waits on.
fn socket_name(pid: u32, nonce: u32) -> String {
    format!("loopd-reload/{pid}/{nonce:08x}")
}

/// In the SIGHUP handler: keeps the sender if it asked for an answer.
/// Async-signal-safe: reads `info`, stores into atomics, nothing else.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
pub(crate) fn note_request(info: &libc::siginfo_t) {
    use std::sync::atomic::Ordering;
    if info.si_code != libc::SI_QUEUE {
        return;
    }
    // SAFETY: for SI_QUEUE the kernel fills in the sender's pid and the
    // value it queued; the accessors only read those union fields.
    let (pid, value) = unsafe { (info.si_pid(), info.si_value().sival_ptr as usize as u64) };
    if value >> 32 != TAG || pid <= 0 {
        return;
    }
    let entry = (pid as u64) << 32 | (value & 0xffff_ffff);
    for slot in &WAITING {
        if slot
            .compare_exchange(0, entry, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

/// Who is waiting for the reload about to begin (they are forgotten here:
/// a request that comes later waits for the next reload).
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
pub(crate) fn take_waiting() -> Vec<u64> {
    use std::sync::atomic::Ordering;
    WAITING
        .iter()
        .map(|slot| slot.swap(0, Ordering::SeqCst))
        .filter(|&e| e != 0)
        .collect()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
pub(crate) fn take_waiting() -> Vec<u64> {
    Vec::new()
}

/// The longest answer sent: the rest of a very long error is in the log.
const MAX_ANSWER: usize = 60 << 10;

/// Sends the reload's outcome to each of `waiting` (from [`take_waiting`]).
/// Never blocks; an answer that cannot be sent (the asker gave up and
/// exited) is dropped.
#[cfg_attr(not(feature = "signals"), allow(dead_code))]
pub(crate) fn answer(waiting: &[u64], outcome: &Result<String, String>) {
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
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Ok(sock) = UnixDatagram::unbound() else {
            return;
        };
        let _ = sock.set_nonblocking(true);
        for &entry in waiting {
            let name = socket_name((entry >> 32) as u32, entry as u32);
            match SocketAddr::from_abstract_name(name.as_bytes()) {
                Ok(addr) => {
                    if let Err(e) = sock.send_to_addr(text.as_bytes(), &addr) {
                        log::debug!("reload: answering `loopd reload` ({name}): {e}");
                    }
                }
                Err(e) => log::debug!("reload: answering `loopd reload` ({name}): {e}"),
            }
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
    /// No answer within the time given (an older loopd, another program,
    /// or more than 8 `loopd reload`s at once).
    Silent,
}

/// Asks process `pid` to reload (SIGHUP) and waits up to `wait` for its
/// answer. `Err` with `ErrorKind::Unsupported` off Linux: signal it with
/// `kill` instead.
///
/// # Errors
/// The socket cannot be made, or the signal cannot be sent (no such
/// process, not permitted).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn request(pid: i32, wait: Duration) -> io::Result<Answer> {
    use std::os::fd::AsRawFd;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let nonce = random_u32()?;
    let name = socket_name(std::process::id(), nonce);
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    let fd = sock.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: setsockopt(2) on a socket this function owns, reading one
    // c_int from a local.
    if unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let value = libc::sigval {
        sival_ptr: ((TAG << 32) | u64::from(nonce)) as usize as *mut libc::c_void,
    };
    // SAFETY: sigqueue(3) with a positive pid and a value that is only a
    // number (loopd never dereferences it).
    if unsafe { libc::sigqueue(pid, libc::SIGHUP, value) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; MAX_ANSWER + 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Answer::Silent);
        }
        sock.set_read_timeout(Some(left))?;
        let (n, sender) = match recv_with_sender(fd, &mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Answer::Silent)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Only the process signalled answers.
        if sender != Some(pid) {
            continue;
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        return Ok(match text.split_once('\n') {
            Some(("ok", line)) => Answer::Reloaded(line.to_string()),
            Some((_, line)) => Answer::Failed(line.to_string()),
            None => Answer::Failed(text.into_owned()),
        });
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn request(_pid: i32, _wait: Duration) -> io::Result<Answer> {
    Err(io::ErrorKind::Unsupported.into())
}

/// One datagram into `buf`, with the sending process's id (from the
/// `SCM_CREDENTIALS` the kernel attaches).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn recv_with_sender(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<i32>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one ucred, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is a valid empty one; its pointers are set
    // below to the locals above, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg(2) writes at most iov_len bytes into `buf` and at
    // most msg_controllen into `control`.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sender = None;
    // SAFETY: the CMSG_* macros walk the control data recvmsg filled in,
    // within msg_controllen; a ucred is read unaligned from a header the
    // kernel marked SCM_CREDENTIALS.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                sender = Some(cred.pid);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, sender))
}

/// 32 random bits, from the kernel.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn random_u32() -> io::Result<u32> {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reaches_only_the_asker_it_names_and_says_how_it_went() {
        let nonce = random_u32().unwrap();
        let me = std::process::id();
        let name = socket_name(me, nonce);
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let entry = (u64::from(me) << 32) | u64::from(nonce);
        answer(&[entry], &Err("x.toml:3:1: bad".to_string()));
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"failed\nx.toml:3:1: bad");
        // Another nonce is another socket: nothing arrives here.
        answer(&[entry ^ 1], &Ok("reloaded: -".to_string()));
        sock.set_nonblocking(true).unwrap();
        assert!(sock.recv(&mut buf).is_err());
        // A long error is cut at a character boundary.
        sock.set_nonblocking(false).unwrap();
        answer(&[entry], &Err("é".repeat(MAX_ANSWER)));
        let mut big = vec![0u8; 2 * MAX_ANSWER];
        let n = sock.recv(&mut big).unwrap();
        assert!(n <= MAX_ANSWER, "{n}");
        assert!(std::str::from_utf8(&big[..n]).is_ok());
    }
}
