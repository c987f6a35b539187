//! Safe types over the raw ABI values: ids, errors, framing, close reasons.

use std::fmt;
use std::net::SocketAddr;

use crate::abi;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw id as the ABI passes it.
            pub const fn from_raw(raw: u64) -> Self {
                Self(raw)
            }
            /// The raw id: `(generation << 32) | slot`.
            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}:{})", stringify!($name), self.0 & 0xffff_ffff, self.0 >> 32)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "#{}", self.0)
            }
        }
    };
}

id_type!(
    /// A stream connection, accepted or outbound. Stale after `on_close`.
    ConnId
);
id_type!(
    /// A datagram socket.
    SocketId
);
id_type!(
    /// A pending timer.
    TimerId
);
id_type!(
    /// A watched file descriptor (ABI 1.3). Stale after [`crate::Ctx::remove_watch`].
    WatchId
);

/// A host function's refusal. Mirrors the `LOOPD_ERR_*` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The output queue is at its high watermark; wait for `on_writable`.
    Again,
    /// The id does not name a live connection of this instance.
    NoSuchConn,
    /// The connection is closing.
    Closed,
    /// An argument is invalid.
    Invalid,
    /// Not available on this object or host.
    Unsupported,
    /// A configured limit was reached.
    Limit,
    /// The operating system refused.
    Io,
    /// Called outside a hook or from another thread.
    WrongThread,
    /// No such pending timer.
    NoSuchTimer,
    /// `post`: no handler instance has that name (ABI 1.3).
    NoSuchInstance,
    /// `post`: the target's mailbox is full; nothing was posted (ABI 1.3).
    Full,
    /// A code this version does not know.
    Other(i32),
}

impl Error {
    /// `Ok(())` for `LOOPD_OK`, the error otherwise.
    pub fn check(code: i32) -> Result<(), Error> {
        match code {
            abi::LOOPD_OK => Ok(()),
            abi::LOOPD_ERR_AGAIN => Err(Error::Again),
            abi::LOOPD_ERR_NO_SUCH_CONN => Err(Error::NoSuchConn),
            abi::LOOPD_ERR_CLOSED => Err(Error::Closed),
            abi::LOOPD_ERR_INVALID => Err(Error::Invalid),
            abi::LOOPD_ERR_UNSUPPORTED => Err(Error::Unsupported),
            abi::LOOPD_ERR_LIMIT => Err(Error::Limit),
            abi::LOOPD_ERR_IO => Err(Error::Io),
            abi::LOOPD_ERR_WRONG_THREAD => Err(Error::WrongThread),
            abi::LOOPD_ERR_NO_SUCH_TIMER => Err(Error::NoSuchTimer),
            abi::LOOPD_ERR_NO_SUCH_INSTANCE => Err(Error::NoSuchInstance),
            abi::LOOPD_ERR_FULL => Err(Error::Full),
            other => Err(Error::Other(other)),
        }
    }

    /// The `LOOPD_ERR_*` code.
    pub fn code(self) -> i32 {
        match self {
            Error::Again => abi::LOOPD_ERR_AGAIN,
            Error::NoSuchConn => abi::LOOPD_ERR_NO_SUCH_CONN,
            Error::Closed => abi::LOOPD_ERR_CLOSED,
            Error::Invalid => abi::LOOPD_ERR_INVALID,
            Error::Unsupported => abi::LOOPD_ERR_UNSUPPORTED,
            Error::Limit => abi::LOOPD_ERR_LIMIT,
            Error::Io => abi::LOOPD_ERR_IO,
            Error::WrongThread => abi::LOOPD_ERR_WRONG_THREAD,
            Error::NoSuchTimer => abi::LOOPD_ERR_NO_SUCH_TIMER,
            Error::NoSuchInstance => abi::LOOPD_ERR_NO_SUCH_INSTANCE,
            Error::Full => abi::LOOPD_ERR_FULL,
            Error::Other(code) => code,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(abi::status_str(self.code()))
    }
}

impl std::error::Error for Error {}

/// How a connection's input is cut into the frames `on_data` receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Framing {
    /// No preference (plugin info only); loopd uses [`Framing::Raw`].
    #[default]
    Default,
    /// Bytes as they arrive, at most `max_frame` per call.
    Raw,
    /// One line per call, without its `\n` and a `\r` before it.
    Line,
    /// One payload per call; a 4-byte big-endian length precedes it on the wire.
    LengthPrefixed,
}

impl Framing {
    /// The `LOOPD_FRAMING_*` value.
    pub const fn to_raw(self) -> u32 {
        match self {
            Framing::Default => abi::LOOPD_FRAMING_DEFAULT,
            Framing::Raw => abi::LOOPD_FRAMING_RAW,
            Framing::Line => abi::LOOPD_FRAMING_LINE,
            Framing::LengthPrefixed => abi::LOOPD_FRAMING_LENGTH_PREFIXED,
        }
    }

    /// `loopd_plugin_info.framings` for a list of framings (as
    /// [`Handler::FRAMINGS`](crate::Handler::FRAMINGS)): their
    /// `LOOPD_FRAMING_BIT`s ORed together; [`Framing::Default`] has none.
    pub const fn bits(list: &[Framing]) -> u32 {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            if !matches!(list[i], Framing::Default) {
                bits |= abi::LOOPD_FRAMING_BIT(list[i].to_raw());
            }
            i += 1;
        }
        bits
    }

    /// From a `LOOPD_FRAMING_*` value; unknown values read as `Default`.
    pub const fn from_raw(raw: u32) -> Framing {
        match raw {
            abi::LOOPD_FRAMING_RAW => Framing::Raw,
            abi::LOOPD_FRAMING_LINE => Framing::Line,
            abi::LOOPD_FRAMING_LENGTH_PREFIXED => Framing::LengthPrefixed,
            _ => Framing::Default,
        }
    }
}

/// How [`crate::Ctx::close`] treats queued output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Stop reading, send what is queued, then close.
    Flush,
    /// Drop the queue and close now.
    Abort,
    /// As `Abort`, and the peer is told the stream broke (TCP: a reset, not
    /// a FIN), so a cut-off stream never looks complete to it: what a proxy
    /// passes on when the other side failed (ABI 1.6; on an older host,
    /// `Abort`).
    Reset,
}

/// Why a connection closed, as `on_close` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed (EOF) and the output was flushed.
    Peer,
    /// The handler called close.
    Local,
    /// An I/O error, or a reset by the peer.
    Error,
    /// The peer sent a frame over `max_frame`.
    FrameTooBig,
    /// A hook failed, panicked or refused the connection.
    Handler,
    /// loopd shut down.
    Shutdown,
    /// An outbound connect failed.
    ConnectFailed,
    /// The flush before a close timed out.
    Timeout,
    /// No traffic for the handler's `idle_timeout_ms` (ABI 1.3).
    Idle,
    /// A loopd limit was reached, e.g. the process's budget for buffered
    /// input (ABI 1.3).
    Limit,
    /// A reason this version does not know.
    Other(i32),
}

impl CloseReason {
    /// From a `LOOPD_REASON_*` value.
    pub fn from_raw(raw: i32) -> CloseReason {
        match raw {
            abi::LOOPD_REASON_PEER => CloseReason::Peer,
            abi::LOOPD_REASON_LOCAL => CloseReason::Local,
            abi::LOOPD_REASON_ERROR => CloseReason::Error,
            abi::LOOPD_REASON_FRAME_TOO_BIG => CloseReason::FrameTooBig,
            abi::LOOPD_REASON_HANDLER => CloseReason::Handler,
            abi::LOOPD_REASON_SHUTDOWN => CloseReason::Shutdown,
            abi::LOOPD_REASON_CONNECT_FAILED => CloseReason::ConnectFailed,
            abi::LOOPD_REASON_TIMEOUT => CloseReason::Timeout,
            abi::LOOPD_REASON_IDLE => CloseReason::Idle,
            abi::LOOPD_REASON_LIMIT => CloseReason::Limit,
            other => CloseReason::Other(other),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = match *self {
            CloseReason::Peer => abi::LOOPD_REASON_PEER,
            CloseReason::Local => abi::LOOPD_REASON_LOCAL,
            CloseReason::Error => abi::LOOPD_REASON_ERROR,
            CloseReason::FrameTooBig => abi::LOOPD_REASON_FRAME_TOO_BIG,
            CloseReason::Handler => abi::LOOPD_REASON_HANDLER,
            CloseReason::Shutdown => abi::LOOPD_REASON_SHUTDOWN,
            CloseReason::ConnectFailed => abi::LOOPD_REASON_CONNECT_FAILED,
            CloseReason::Timeout => abi::LOOPD_REASON_TIMEOUT,
            CloseReason::Idle => abi::LOOPD_REASON_IDLE,
            CloseReason::Limit => abi::LOOPD_REASON_LIMIT,
            CloseReason::Other(raw) => raw,
        };
        f.write_str(abi::reason_str(raw))
    }
}

/// What to do when the peer stops sending (see [`crate::Handler::on_eof`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EofAction {
    /// Close once the output queue is flushed.
    #[default]
    Close,
    /// Keep the connection open for writing; the handler closes it later.
    KeepOpen,
}

/// What to do with a frame over `max_frame` (see [`crate::Handler::on_oversize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OversizeAction {
    /// Close the connection (reason [`CloseReason::FrameTooBig`]).
    #[default]
    Close,
    /// Discard that frame without buffering it, keep the connection.
    Skip,
}

/// The stream transport of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// A Unix-domain stream socket.
    Unix,
    /// UDP (listeners only).
    Udp,
    /// TLS over TCP (ABI 1.4): loopd encrypts and decrypts, the handler
    /// sees plaintext.
    Tls,
    /// A transport this version does not know.
    Other(u32),
}

/// How a connection came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Accepted by one of the instance's listeners.
    Accepted,
    /// Opened by [`crate::Ctx::connect`].
    Connected,
    /// An origin this version does not know.
    Other(u32),
}

/// Facts about a new connection, given to [`crate::Handler::on_open`].
#[derive(Debug, Clone)]
pub struct ConnInfo<'a> {
    /// TCP or Unix.
    pub transport: Transport,
    /// Accepted or connected.
    pub origin: Origin,
    /// The framing in effect for this connection.
    pub framing: Framing,
    /// The peer's address (`None` for Unix-domain peers).
    pub peer: Option<SocketAddr>,
    /// The local address (`None` for Unix-domain sockets).
    pub local: Option<SocketAddr>,
    /// The listener URL, or the `connect` target.
    pub endpoint: &'a str,
}

/// A listener of the instance, given to [`crate::Handler::on_listen`].
#[derive(Debug, Clone)]
pub struct ListenInfo<'a> {
    /// TCP, Unix or UDP.
    pub transport: Transport,
    /// The bound address (`None` for Unix-domain sockets).
    pub local: Option<SocketAddr>,
    /// The URL actually bound, e.g. `udp://127.0.0.1:7002`.
    pub url: &'a str,
}

/// Severity of a message logged through [`crate::Ctx::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something is off.
    Warn = 2,
    /// Normal operation.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

/// What a descriptor watch waits for ([`crate::Ctx::watch_fd`], ABI 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// Report when the descriptor is readable.
    pub readable: bool,
    /// Report when the descriptor is writable.
    pub writable: bool,
}

impl Interest {
    /// Readable only.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Writable only.
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };
    /// Readable and writable.
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };
    /// Nothing: the watch is parked.
    pub const NONE: Interest = Interest {
        readable: false,
        writable: false,
    };

    /// The `LOOPD_FD_*` mask.
    pub const fn to_raw(self) -> u32 {
        (if self.readable {
            abi::LOOPD_FD_READABLE
        } else {
            0
        }) | (if self.writable {
            abi::LOOPD_FD_WRITABLE
        } else {
            0
        })
    }
}

/// What a watched descriptor is ready for ([`crate::Handler::on_fd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FdEvents {
    /// It can be read without blocking.
    pub readable: bool,
    /// It can be written without blocking.
    pub writable: bool,
    /// It hung up or is in error; the watch is parked until
    /// [`crate::Ctx::modify_watch`] or [`crate::Ctx::remove_watch`].
    pub hup: bool,
}

impl FdEvents {
    /// From a `LOOPD_FD_*` mask.
    pub const fn from_raw(raw: u32) -> FdEvents {
        FdEvents {
            readable: raw & abi::LOOPD_FD_READABLE != 0,
            writable: raw & abi::LOOPD_FD_WRITABLE != 0,
            hup: raw & abi::LOOPD_FD_HUP != 0,
        }
    }
}

/// Per-connection options for [`crate::Ctx::connect_with`] (ABI 1.3). A
/// `None` keeps what the instance has, which is what
/// [`crate::Ctx::connect`] gives every outbound connection: the instance's
/// framing, `max_frame` and output watermarks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// How this connection's input is cut into frames.
    pub framing: Option<Framing>,
    /// Its largest frame.
    pub max_frame: Option<usize>,
    /// Its output queue's high and low watermarks (low below high).
    pub watermarks: Option<(usize, usize)>,
    /// Keep reading it while its own output queue is full (ABI 1.4).
    pub keep_reading: bool,
    /// `tls://` only: the DNS name the server's certificate must carry
    /// (ABI 1.4).
    pub server_name: Option<std::ffi::CString>,
}

impl ConnectOptions {
    /// Options that keep everything the instance has.
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    /// Sets the framing (raw bytes for a proxy, say).
    pub fn framing(mut self, framing: Framing) -> ConnectOptions {
        self.framing = Some(framing);
        self
    }

    /// Sets the largest frame.
    pub fn max_frame(mut self, max_frame: usize) -> ConnectOptions {
        self.max_frame = Some(max_frame);
        self
    }

    /// Sets the output queue's high and low watermarks (`low` 0: resume
    /// once the queue is empty).
    pub fn watermarks(mut self, high: usize, low: usize) -> ConnectOptions {
        self.watermarks = Some((high, low));
        self
    }

    /// Keeps reading the connection while its own output queue is at its
    /// high watermark (ABI 1.4; `LOOPD_CONNECT_KEEP_READING`): `send`
    /// still refuses with [`Error::Again`] there and `on_writable` follows
    /// once it drains, but what the peer sends keeps being delivered. A
    /// proxy's upstream needs it: a full queue toward the upstream must not
    /// stop its replies. A host older than 1.4 ignores it (set
    /// `MIN_HOST_MINOR = 4`).
    pub fn keep_reading(mut self, on: bool) -> ConnectOptions {
        self.keep_reading = on;
        self
    }

    /// For a `tls://` URL: the DNS name the server's certificate must carry,
    /// also sent as SNI (ABI 1.4; `LOOPD_ERR_INVALID` from a host for a name
    /// that is not a DNS name, an IP address included, and for any other
    /// URL). Without it the
    /// certificate must carry the URL's IP address. On a host that does not
    /// read it (older than this field; it has no `peer_certificate`
    /// either), [`crate::Ctx::connect_with`] refuses with
    /// [`Error::Unsupported`] rather than verify the IP instead.
    pub fn server_name(mut self, name: &str) -> ConnectOptions {
        // A name with a NUL in it becomes "", which the host refuses.
        self.server_name = Some(std::ffi::CString::new(name).unwrap_or_default());
        self
    }

    /// The ABI struct. Its `server_name` points into `self`: use it only
    /// while `self` is alive and unchanged (as [`crate::Ctx::connect_with`]
    /// does, for the call).
    #[must_use]
    pub fn to_raw(&self) -> abi::loopd_connect_options {
        abi::loopd_connect_options {
            struct_size: std::mem::size_of::<abi::loopd_connect_options>() as u32,
            framing: self
                .framing
                .map_or(abi::LOOPD_FRAMING_DEFAULT, Framing::to_raw),
            max_frame: self.max_frame.map_or(0, |m| m as u64),
            output_high_watermark: self.watermarks.map_or(0, |(h, _)| h as u64),
            // 0 means "unset" in the ABI: a low watermark of 0 ("resume
            // once the queue is empty") is sent as 1, which means the same.
            output_low_watermark: self.watermarks.map_or(0, |(_, l)| l.max(1) as u64),
            flags: if self.keep_reading {
                abi::LOOPD_CONNECT_KEEP_READING
            } else {
                0
            },
            reserved: 0,
            server_name: self
                .server_name
                .as_deref()
                .map_or(std::ptr::null(), std::ffi::CStr::as_ptr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_watermark_of_zero_is_sent_as_one_not_as_unset() {
        let raw = ConnectOptions::default().watermarks(32768, 0).to_raw();
        assert_eq!(
            (raw.output_high_watermark, raw.output_low_watermark),
            (32768, 1)
        );
        let unset = ConnectOptions::default().to_raw();
        assert_eq!(
            (unset.output_high_watermark, unset.output_low_watermark),
            (0, 0)
        );
    }
}
