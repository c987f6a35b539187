//! The readiness poller: the only module that imports `polling`.
//!
//! Sources are registered level-triggered (not oneshot, which would cost an
//! `epoll_ctl` per event): the loop changes a source's interest only when it
//! actually changes (output queued or drained, input paused or resumed).

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use polling::{Event, Events, PollMode, Poller};

/// Most events taken from the kernel per pass.
pub(crate) const EVENTS_PER_WAIT: usize = 1024;

/// One ready source, with what the poller said about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) key: u64,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// Hung up (`EPOLLHUP`): reported whatever the interest.
    pub(crate) hup: bool,
    /// In error (`EPOLLERR`): reported whatever the interest.
    pub(crate) err: bool,
}

/// The poller and its reusable event buffer.
#[derive(Debug)]
pub(crate) struct EventLoop {
    poller: Arc<Poller>,
    events: Events,
}

fn interest(key: u64, read: bool, write: bool) -> Event {
    let key = key as usize;
    match (read, write) {
        (true, true) => Event::all(key),
        (true, false) => Event::readable(key),
        (false, true) => Event::writable(key),
        (false, false) => Event::none(key),
    }
}

impl EventLoop {
    pub(crate) fn new() -> io::Result<EventLoop> {
        Ok(EventLoop {
            poller: Arc::new(Poller::new()?),
            events: Events::with_capacity(NonZeroUsize::new(EVENTS_PER_WAIT).expect("non-zero")),
        })
    }

    /// Registers `fd` under `key`.
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
        // SAFETY: forwarded from the caller: `fd` is deleted before it is closed.
        unsafe {
            self.poller
                .add_with_mode(fd, interest(key, read, write), PollMode::Level)
        }
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        key: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        self.poller
            .modify_with_mode(fd, interest(key, read, write), PollMode::Level)
    }

    /// Registers `fd` under `key` in oneshot mode: after one event it
    /// reports nothing until [`EventLoop::rearm`]. Used for descriptors a
    /// handler owns (fd watches), so a descriptor closed under a watch can
    /// never spin the loop.
    ///
    /// # Safety
    /// `fd` must stay open until [`EventLoop::delete`] is called for it,
    /// or be known closed (then the kernel has dropped it already).
    pub(crate) unsafe fn add_oneshot(
        &self,
        fd: RawFd,
        key: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.poller
                .add_with_mode(fd, interest(key, read, write), PollMode::Oneshot)
        }
    }

    /// Re-arms a oneshot registration.
    pub(crate) fn rearm(
        &self,
        fd: BorrowedFd<'_>,
        key: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        self.poller
            .modify_with_mode(fd, interest(key, read, write), PollMode::Oneshot)
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.poller.delete(fd)
    }

    /// Waits up to `timeout` (forever if `None`) and appends what is ready to `out`.
    ///
    /// `timeout` goes to `polling` unrounded: it sets its timerfd to the
    /// nanosecond (and keeps it while the deadline stays the same), or,
    /// without one, rounds `epoll_wait`'s milliseconds up. Either way a wait
    /// for the next timer never ends before that timer is due
    /// (`tests/timers_never_early.rs`).
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Ready>,
    ) -> io::Result<()> {
        self.events.clear();
        match self.poller.wait(&mut self.events, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        out.extend(self.events.iter().map(|ev| Ready {
            key: ev.key as u64,
            readable: ev.readable,
            writable: ev.writable,
            hup: ev.is_interrupt(),
            err: ev.is_err().unwrap_or(false),
        }));
        Ok(())
    }

    /// A handle that wakes [`EventLoop::wait`] from any thread.
    pub(crate) fn waker(&self) -> Waker {
        Waker(self.poller.clone())
    }
}

impl AsRawFd for EventLoop {
    fn as_raw_fd(&self) -> RawFd {
        self.poller.as_raw_fd()
    }
}

impl AsFd for EventLoop {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poller.as_fd()
    }
}

/// Wakes the loop from any thread.
#[derive(Debug, Clone)]
pub(crate) struct Waker(Arc<Poller>);

impl Waker {
    pub(crate) fn wake(&self) {
        // A failure means the poller is gone with its loop: nothing to wake.
        let _ = self.0.notify();
    }
}
