//! What a stream connection reads from and writes to.
//!
//! Stream I/O goes through [`Transport`] and nothing else, so another kind
//! of stream (TLS) can sit beside the plain socket without touching the
//! connection logic in `source/stream.rs`, as Redis's `ConnectionType` does
//! for TCP, TLS and Unix sockets. A transport is an enum, not a trait
//! object: the loop's hot path stays a direct call.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::sys;

/// A connected stream.
#[derive(Debug)]
pub(crate) enum Transport {
    /// A TCP or Unix-domain socket, read and written directly.
    Plain(OwnedFd),
    /// A TCP socket carrying TLS (`tls://` listeners).
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream>),
}

impl Transport {
    /// Reads what is available; `Ok(0)` is the end of the stream.
    #[inline]
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(fd) => sys::recv(fd.as_raw_fd(), buf),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.read(buf),
        }
    }

    /// Writes what the kernel takes of `buf`, without raising SIGPIPE.
    #[inline]
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(fd) => sys::send(fd.as_raw_fd(), buf),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.write(buf),
        }
    }

    /// Writes what the kernel takes of several buffers, in order.
    #[inline]
    pub(crate) fn writev(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(fd) => sys::sendv(fd.as_raw_fd(), bufs),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.writev(bufs),
        }
    }

    /// Writes up to `len` bytes of `file` from `offset` without copying them
    /// through user memory, where the transport can. `ErrorKind::Unsupported`
    /// means it cannot: the caller reads and writes instead
    /// ([`crate::source::stream`] does, bounded).
    pub(crate) fn sendfile(&mut self, file: RawFd, offset: u64, len: usize) -> io::Result<usize> {
        match self {
            Transport::Plain(fd) => sys::sendfile(fd.as_raw_fd(), file, offset, len),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => {
                let _ = (t, file, offset, len);
                Err(io::ErrorKind::Unsupported.into())
            }
        }
    }

    /// Shuts down the sending side (half-close); reading goes on.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(fd) => sys::shutdown_write(fd.as_raw_fd()),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.shutdown_write(),
        }
    }

    /// The descriptor the poller watches.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Transport::Plain(fd) => fd.as_fd(),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.fd(),
        }
    }

    /// Records the transport holds that the socket has not taken yet
    /// (TLS): the connection watches for writability until they are gone.
    #[inline]
    pub(crate) fn pending_output(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.pending_output(),
        }
    }

    /// Writes what [`Transport::pending_output`] reports, as far as the
    /// socket takes it.
    pub(crate) fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.flush(),
        }
    }

    /// Input already read from the socket and waiting in the transport,
    /// which no readiness event will report.
    pub(crate) fn buffered_input(&mut self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.buffered_input(),
        }
    }

    /// A handshake is still to finish before the handler hears of the
    /// connection.
    pub(crate) fn handshaking(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.is_handshaking(),
        }
    }

    /// Moves a handshake on: `Ok(true)` once done.
    pub(crate) fn handshake(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.handshake(),
        }
    }

    /// The peer's verified certificate (DER, the leaf), once the handshake
    /// is done: a TLS client's under mutual TLS, a TLS server's on an
    /// outbound connection. `None` for a plain socket.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Transport::Plain(_) => None,
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.peer_certificate(),
        }
    }

    /// Ends the session cleanly before the socket is closed (TLS
    /// close_notify, best effort).
    pub(crate) fn close_notify(&mut self) {
        match self {
            Transport::Plain(_) => {}
            #[cfg(feature = "tls")]
            Transport::Tls(t) => t.close_notify(),
        }
    }
}
