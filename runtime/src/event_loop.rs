//! The readiness poller: epoll, used directly. The only module that
//! registers file descriptors for readiness.
//!
//! Sources are registered level-triggered (not oneshot, which would cost an
//! `epoll_ctl` per event): the loop changes a source's interest only when it
//! actually changes (output queued or drained, input paused or resumed).
//!
//! One pass of the loop is one `epoll_wait` and nothing else. (The `polling`
//! crate, used before, re-armed its timerfd and its wake-up eventfd on every
//! wait: `timerfd_settime`, two `epoll_ctl` and a `read` per pass, which more
//! than doubled the syscalls of an echo round trip; see docs/benchmarks.md.)
//! The timeout is rounded up to whole milliseconds, so a deadline is never
//! reported early; loopd's timers are in milliseconds anyway. The wake-up
//! eventfd is registered once, level-triggered, and read only when it fired.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// Most events taken from the kernel per pass.
const EVENTS_PER_WAIT: usize = 1024;

/// The key of the wake-up eventfd. Registry ids are never 0.
const WAKER_KEY: u64 = 0;

/// What "readable" covers: data, EOF, hang-up and errors (epoll reports
/// `EPOLLHUP` and `EPOLLERR` even when not asked for).
const READ_FLAGS: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLPRI) as u32;
/// What "writable" covers.
const WRITE_FLAGS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// One ready source.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) key: u64,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

/// The epoll instance, its reusable event buffer and the wake-up eventfd.
pub(crate) struct EventLoop {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    waker: Arc<OwnedFd>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("epoll", &self.epoll)
            .field("waker", &self.waker)
            .finish_non_exhaustive()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn interest(read: bool, write: bool) -> u32 {
    let mut e = 0;
    if read {
        e |= (libc::EPOLLIN | libc::EPOLLPRI) as u32;
    }
    if write {
        e |= libc::EPOLLOUT as u32;
    }
    e
}

/// Milliseconds for `epoll_wait`: -1 for none, rounded up otherwise.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    }
}

impl EventLoop {
    pub(crate) fn new() -> io::Result<EventLoop> {
        // SAFETY: plain syscalls; each returned fd is owned right away.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        // SAFETY: as above.
        let waker = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let ev = EventLoop {
            epoll,
            events: Vec::with_capacity(EVENTS_PER_WAIT),
            waker: Arc::new(waker),
        };
        ev.ctl(
            libc::EPOLL_CTL_ADD,
            ev.waker.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKER_KEY,
        )?;
        Ok(ev)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: key };
        // SAFETY: `ev` is a valid epoll_event for the call; the kernel
        // validates `fd` (EBADF otherwise).
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Registers `fd` under `key` (never 0).
    ///
    /// # Safety
    /// `fd` must stay open until [`EventLoop::delete`] is called for it.
    pub(crate) unsafe fn add(
        &self,
        fd: RawFd,
        key: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        debug_assert_ne!(key, WAKER_KEY);
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest(read, write), key)
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        key: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_MOD,
            fd.as_raw_fd(),
            interest(read, write),
            key,
        )
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0)
    }

    /// Waits up to `timeout` (forever if `None`) and appends what is ready to `out`.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Ready>,
    ) -> io::Result<()> {
        self.events.clear();
        // SAFETY: the buffer has room for EVENTS_PER_WAIT events; the kernel
        // writes at most that many and returns how many it wrote.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS_PER_WAIT as libc::c_int,
                timeout_ms(timeout),
            )
        };
        let n = match cvt(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        // SAFETY: the kernel initialised the first `n` entries.
        unsafe { self.events.set_len(n) };
        for ev in &self.events {
            // Copies out of the (packed on x86-64) struct; no references.
            let (flags, key) = (ev.events, ev.u64);
            if key == WAKER_KEY {
                self.clear_wake();
                continue;
            }
            out.push(Ready {
                key,
                readable: flags & READ_FLAGS != 0,
                writable: flags & WRITE_FLAGS != 0,
            });
        }
        Ok(())
    }

    /// Resets the wake-up eventfd after it fired.
    fn clear_wake(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`. EAGAIN (already
        // cleared) is fine: the eventfd is non-blocking.
        unsafe { libc::read(self.waker.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }

    /// A handle that wakes [`EventLoop::wait`] from any thread.
    pub(crate) fn waker(&self) -> Waker {
        Waker(self.waker.clone())
    }
}

impl AsRawFd for EventLoop {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl AsFd for EventLoop {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

/// Wakes the loop from any thread.
#[derive(Debug, Clone)]
pub(crate) struct Waker(Arc<OwnedFd>);

impl Waker {
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one`. A full counter (EAGAIN) means a
        // wake-up is already pending; once the loop is gone nobody reads it.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_millis(7))), 7);
        assert_eq!(
            timeout_ms(Some(Duration::from_secs(u64::MAX))),
            libc::c_int::MAX
        );
    }

    #[test]
    fn readiness_is_level_triggered_and_follows_interest() {
        let mut ev = EventLoop::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        // SAFETY: `a` outlives its registration (deleted below).
        unsafe { ev.add(a.as_raw_fd(), 7, true, false).unwrap() };
        let mut out = Vec::new();
        ev.wait(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty(), "nothing to read yet: {out:?}");
        b.write_all(b"x").unwrap();
        for _ in 0..2 {
            // Unread data is reported again and again (level-triggered).
            out.clear();
            ev.wait(Some(Duration::from_secs(5)), &mut out).unwrap();
            assert_eq!(out.len(), 1);
            assert!(out[0].key == 7 && out[0].readable && !out[0].writable);
        }
        ev.modify(a.as_fd(), 7, false, true).unwrap();
        out.clear();
        ev.wait(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert!(out[0].writable && !out[0].readable, "{out:?}");
        ev.delete(a.as_fd()).unwrap();
        out.clear();
        ev.wait(Some(Duration::ZERO), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn a_hang_up_is_reported_without_interest() {
        let mut ev = EventLoop::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        // SAFETY: `a` outlives its registration.
        unsafe { ev.add(a.as_raw_fd(), 9, false, false).unwrap() };
        drop(b);
        let mut out = Vec::new();
        ev.wait(Some(Duration::from_secs(5)), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].readable && out[0].writable);
        ev.delete(a.as_fd()).unwrap();
    }

    /// Whether the wake-up eventfd holds a count (a read would succeed).
    fn wake_pending(ev: &EventLoop) -> bool {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`; the fd is non-blocking.
        let n = unsafe { libc::read(ev.waker.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n == 8 {
            // Put it back.
            ev.waker().wake();
        }
        n == 8
    }

    #[test]
    fn a_wake_from_another_thread_ends_a_wait_and_is_cleared() {
        let mut ev = EventLoop::new().unwrap();
        let w = ev.waker();
        std::thread::spawn(move || {
            w.wake();
            w.wake();
        })
        .join()
        .unwrap();
        assert!(wake_pending(&ev));
        let mut out = Vec::new();
        // Returns at once: the wake-up is pending (a lost one would make
        // this wait a minute and leave the count set).
        ev.wait(Some(Duration::from_secs(60)), &mut out).unwrap();
        assert!(out.is_empty(), "a wake-up is not an event: {out:?}");
        assert!(!wake_pending(&ev), "the wait cleared the wake-up");
    }
}
