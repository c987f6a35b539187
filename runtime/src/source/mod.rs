//! Event sources: everything registered with the poller.
//!
//! Each kind has its own module that takes a readiness event, does its own
//! system calls and bookkeeping, and returns (or queues, in
//! `Shared::pending`) what the dispatcher must deliver to the handler: a
//! stream connection (`stream`, with its output queue in `queue`), a
//! listener (`listener`), a datagram socket (`datagram`), a descriptor a
//! handler watches (`watch`). None of them
//! calls a hook; `dispatch.rs` does, through `hooks.rs`.

pub(crate) mod datagram;
pub(crate) mod listener;
pub(crate) mod queue;
pub(crate) mod stream;
pub(crate) mod watch;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Something registered with the poller; its registry id is its poll key.
///
/// Not boxed: nearly every source is a connection, which would then pay an
/// allocation and an indirection for the sake of the few listeners.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Source {
    Listener(listener::Listener),
    Stream(stream::Conn),
    Datagram(datagram::Datagram),
    /// The read end of the signal self-pipe (each byte a signal number).
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    Signal(UnixStream),
    /// A descriptor a handler owns (ABI 1.3 `watch_fd`).
    Watch(watch::Watch),
    /// Where `loopd reload` and `loopd upgrade` ask, and hear the outcome
    /// (`control.rs`).
    #[cfg(target_os = "linux")]
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    Control(crate::control::Control),
}

impl Source {
    /// The descriptor the poller watches (`None`: a connection whose socket
    /// is already released, or whose connect failed at once).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Source::Listener(l) => Some(l.fd.as_fd()),
            Source::Stream(c) => c.io.as_ref().map(|t| t.fd()),
            Source::Datagram(d) => Some(d.sock.as_fd()),
            Source::Signal(s) => Some(s.as_fd()),
            #[cfg(target_os = "linux")]
            Source::Control(c) => Some(c.listener.as_fd()),
            // Registered and removed by `watch.rs` itself, after checking
            // the descriptor is still the handler's.
            Source::Watch(_) => None,
        }
    }

    pub(crate) fn raw_fd(&self) -> Option<RawFd> {
        self.fd().map(|fd| fd.as_raw_fd())
    }
}
