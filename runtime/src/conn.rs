//! Per-connection state: input framing and the bounded output queue.

use std::collections::VecDeque;
use std::ffi::{c_void, CStr};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use loopd_handler_api::abi::loopd_addr;

use crate::config::FramingKind;
use crate::sys;

/// Small sends are appended to the last queued chunk up to this size, so a
/// stream of tiny messages does not become a stream of tiny allocations.
const COALESCE_LIMIT: usize = 16 << 10;
/// Most buffers handed to one `sendmsg`.
const MAX_IOV: usize = 64;

/// Bytes the kernel did not take yet. Chunks are written front to back;
/// `head` is how much of the front chunk is already sent.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    chunks: VecDeque<Vec<u8>>,
    head: usize,
    len: usize,
}

impl OutQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` to the back of the queue.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        let front_untouched = self.chunks.len() > 1 || self.head == 0;
        if let Some(last) = self.chunks.back_mut() {
            if last.len() + data.len() <= COALESCE_LIMIT && front_untouched {
                last.extend_from_slice(data);
                return;
            }
        }
        let mut chunk =
            Vec::with_capacity(
                data.len()
                    .max(if data.len() < COALESCE_LIMIT { 4096 } else { 0 }),
            );
        chunk.extend_from_slice(data);
        self.chunks.push_back(chunk);
    }

    /// Writes as much as the socket takes. `Ok(true)` when the queue is empty.
    pub(crate) fn flush(&mut self, fd: &OwnedFd) -> io::Result<bool> {
        while !self.is_empty() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &chunk[self.head..] } else { chunk });
                n += 1;
            }
            match sys::sendv(fd.as_raw_fd(), &iov[..n]) {
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front().expect("consumed more than queued");
            let left = front.len() - self.head;
            if n >= left {
                n -= left;
                self.head = 0;
                self.chunks.pop_front();
            } else {
                self.head += n;
                n = 0;
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 16 {
            // An idle connection holds no buffers.
            self.chunks = VecDeque::new();
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = OutQueue::default();
    }
}

/// The next frame in a buffer, per the connection's framing.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Payload is `buf[start..end]`; the frame takes `consumed` bytes.
    Frame {
        /// First byte of the payload.
        start: usize,
        /// One past the last byte of the payload.
        end: usize,
        /// Bytes the frame takes in `buf`, header and line ending included.
        consumed: usize,
    },
    /// Not a whole frame yet.
    Incomplete,
    /// The frame being received is over the limit: its size as far as
    /// known, and how to discard it if the handler chooses to skip it.
    TooBig(usize, Discard),
}

/// How to get rid of an oversize frame that the handler chose to skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// The whole frame is in the buffer: drop its `n` bytes.
    Consume(usize),
    /// A line without its end yet: drop everything up to and including the next `\n`.
    UntilNewline,
    /// Drop the 4-byte header, then this many payload bytes as they arrive.
    Payload(u64),
}

/// What is being discarded while an oversize frame is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipping {
    /// Input up to and including the next `\n`.
    Line,
    /// This many more bytes.
    Bytes(u64),
}

/// Drops skipped input from the front of `buf`: returns how many bytes were
/// dropped and what is still to skip afterwards.
pub fn skip_input(skipping: Skipping, buf: &[u8]) -> (usize, Option<Skipping>) {
    match skipping {
        Skipping::Line => match memchr::memchr(b'\n', buf) {
            Some(nl) => (nl + 1, None),
            None => (buf.len(), Some(Skipping::Line)),
        },
        Skipping::Bytes(n) => {
            let take = n.min(buf.len() as u64);
            let left = n - take;
            (take as usize, (left > 0).then_some(Skipping::Bytes(left)))
        }
    }
}

/// Finds the first frame in `buf`.
pub fn next_frame(framing: FramingKind, max_frame: usize, buf: &[u8]) -> Next {
    match framing {
        FramingKind::Raw => {
            if buf.is_empty() {
                Next::Incomplete
            } else {
                let end = buf.len().min(max_frame);
                Next::Frame {
                    start: 0,
                    end,
                    consumed: end,
                }
            }
        }
        FramingKind::Line => match memchr::memchr(b'\n', buf) {
            Some(nl) => {
                let end = if nl > 0 && buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                if end > max_frame {
                    Next::TooBig(end, Discard::Consume(nl + 1))
                } else {
                    Next::Frame {
                        start: 0,
                        end,
                        consumed: nl + 1,
                    }
                }
            }
            // Refused as soon as it is known to be too long. One byte of
            // slack, for a "\r" whose "\n" is still in flight; any other
            // byte past max_frame already makes the line too long.
            None if buf.len() > max_frame + 1
                || (buf.len() > max_frame && buf.last() != Some(&b'\r')) =>
            {
                Next::TooBig(buf.len(), Discard::UntilNewline)
            }
            None => Next::Incomplete,
        },
        FramingKind::LengthPrefixed => {
            if buf.len() < 4 {
                return Next::Incomplete;
            }
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > max_frame {
                Next::TooBig(len, Discard::Payload(len as u64))
            } else if buf.len() < 4 + len {
                Next::Incomplete
            } else {
                Next::Frame {
                    start: 4,
                    end: 4 + len,
                    consumed: 4 + len,
                }
            }
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Outbound, waiting for the connect to finish.
    Connecting,
    /// Reading and writing.
    Open,
    /// Closing: no more input; output drains (FLUSH) before `on_close`.
    Closing,
    /// `on_close` is being delivered; the id is about to be released.
    Closed,
}

/// A stream connection, accepted or outbound.
#[derive(Debug)]
pub(crate) struct Conn {
    /// `None` once closed, or when an outbound connect failed at once.
    pub(crate) fd: Option<OwnedFd>,
    /// Index of the owning handler instance.
    pub(crate) instance: usize,
    /// The handler's per-connection state.
    pub(crate) state: *mut c_void,
    pub(crate) framing: FramingKind,
    pub(crate) max_frame: usize,
    pub(crate) high_watermark: usize,
    pub(crate) low_watermark: usize,
    pub(crate) transport: u32,
    pub(crate) origin: u32,
    pub(crate) peer: loopd_addr,
    pub(crate) local: loopd_addr,
    /// Listener URL or connect target.
    pub(crate) endpoint: Rc<CStr>,
    pub(crate) phase: Phase,
    /// The handler holds the id (from `on_open` or `connect`): `on_close` is owed.
    pub(crate) known: bool,
    /// `on_open` was delivered.
    pub(crate) opened: bool,
    /// Bytes of a partial frame (only while one is pending).
    pub(crate) inbuf: Vec<u8>,
    pub(crate) outq: OutQueue,
    /// The peer sent EOF.
    pub(crate) read_eof: bool,
    /// `on_eof` (or the default close) was delivered.
    pub(crate) eof_done: bool,
    /// Input is paused because the output queue reached the high watermark.
    pub(crate) paused: bool,
    /// A send returned AGAIN: `on_writable` is owed once below the low watermark.
    pub(crate) want_writable: bool,
    /// The (readable, writable) interest registered with the poller.
    pub(crate) interest: (bool, bool),
    /// The reason `on_close` will carry.
    pub(crate) close_reason: i32,
    /// The flush-before-close deadline timer, if armed.
    pub(crate) close_timer: Option<u64>,
    /// An oversize frame the handler chose to skip is being discarded.
    pub(crate) skipping: Option<Skipping>,
    /// The pass of the last send written at once (see `Core::send`).
    pub(crate) sent_pass: u32,
    /// Output is queued for the end-of-pass flush (no write interest needed).
    pub(crate) deferred: bool,
}

impl Conn {
    /// The interest this connection needs now.
    pub(crate) fn wanted_interest(&self) -> (bool, bool) {
        match self.phase {
            Phase::Connecting => (false, true),
            Phase::Open => (
                !self.paused && !self.read_eof,
                // An empty queue with `on_writable` owed: a `send_file`
                // the kernel did not take all of waits for the socket.
                (!self.outq.is_empty() && !self.deferred)
                    || (self.outq.is_empty() && self.want_writable),
            ),
            Phase::Closing => (false, !self.outq.is_empty() && !self.deferred),
            Phase::Closed => (false, false),
        }
    }

    /// Whether frames may be handed to the handler now.
    pub(crate) fn can_deliver(&self) -> bool {
        self.phase == Phase::Open && self.opened && !self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_are_capped_chunks() {
        assert_eq!(next_frame(FramingKind::Raw, 4, b""), Next::Incomplete);
        assert_eq!(
            next_frame(FramingKind::Raw, 4, b"abcdef"),
            Next::Frame {
                start: 0,
                end: 4,
                consumed: 4
            }
        );
    }

    #[test]
    fn lines_strip_newline_and_carriage_return() {
        assert_eq!(
            next_frame(FramingKind::Line, 10, b"hi\r\nrest"),
            Next::Frame {
                start: 0,
                end: 2,
                consumed: 4
            }
        );
        assert_eq!(
            next_frame(FramingKind::Line, 10, b"\n"),
            Next::Frame {
                start: 0,
                end: 0,
                consumed: 1
            }
        );
        assert_eq!(
            next_frame(FramingKind::Line, 10, b"partial"),
            Next::Incomplete
        );
        // exactly max_frame is fine, one more is not
        assert_eq!(
            next_frame(FramingKind::Line, 3, b"abc\n"),
            Next::Frame {
                start: 0,
                end: 3,
                consumed: 4
            }
        );
        assert_eq!(
            next_frame(FramingKind::Line, 3, b"abcd\n"),
            Next::TooBig(4, Discard::Consume(5))
        );
        assert_eq!(next_frame(FramingKind::Line, 3, b"abc\r"), Next::Incomplete);
        // Known to be too long one byte past the limit, unless that is "\r".
        assert_eq!(
            next_frame(FramingKind::Line, 3, b"abcd"),
            Next::TooBig(4, Discard::UntilNewline)
        );
        assert_eq!(
            next_frame(FramingKind::Line, 3, b"abcde"),
            Next::TooBig(5, Discard::UntilNewline)
        );
    }

    #[test]
    fn length_prefixed_frames() {
        assert_eq!(
            next_frame(FramingKind::LengthPrefixed, 10, b"\0\0"),
            Next::Incomplete
        );
        assert_eq!(
            next_frame(FramingKind::LengthPrefixed, 10, b"\0\0\0\0"),
            Next::Frame {
                start: 4,
                end: 4,
                consumed: 4
            }
        );
        assert_eq!(
            next_frame(FramingKind::LengthPrefixed, 10, b"\0\0\0\x02hiX"),
            Next::Frame {
                start: 4,
                end: 6,
                consumed: 6
            }
        );
        assert_eq!(
            next_frame(FramingKind::LengthPrefixed, 10, b"\0\0\0\x05hi"),
            Next::Incomplete
        );
        assert_eq!(
            next_frame(FramingKind::LengthPrefixed, 10, b"\0\0\0\x0b"),
            Next::TooBig(11, Discard::Payload(11))
        );
    }

    #[test]
    fn skipping_drops_exactly_the_oversize_frame() {
        assert_eq!(
            skip_input(Skipping::Line, b"xxxx"),
            (4, Some(Skipping::Line))
        );
        assert_eq!(skip_input(Skipping::Line, b"xx\nnext"), (3, None));
        assert_eq!(
            skip_input(Skipping::Bytes(5), b"abc"),
            (3, Some(Skipping::Bytes(2)))
        );
        assert_eq!(skip_input(Skipping::Bytes(2), b"abcdef"), (2, None));
    }

    #[test]
    fn queue_coalesces_and_consumes() {
        let mut q = OutQueue::default();
        q.push(b"abc");
        q.push(b"def");
        assert_eq!(q.len(), 6);
        assert_eq!(q.chunks.len(), 1);
        q.consume(2);
        assert_eq!(q.len(), 4);
        // a partly sent front chunk is not appended to
        q.push(b"g");
        assert_eq!(q.chunks.len(), 2);
        q.push(&vec![7u8; COALESCE_LIMIT]);
        assert_eq!(q.chunks.len(), 3);
        q.consume(4);
        assert_eq!(q.len(), 1 + COALESCE_LIMIT);
        q.consume(q.len());
        assert!(q.is_empty());
        assert_eq!(q.head, 0);
    }

    #[test]
    fn queue_flushes_through_a_socket() {
        use std::io::Read;
        use std::os::fd::OwnedFd;
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let fd = OwnedFd::from(a);
        let mut q = OutQueue::default();
        q.push(b"hello ");
        q.push(&vec![b'x'; 40_000]);
        q.push(b" world");
        assert!(q.flush(&fd).unwrap());
        let mut got = vec![0u8; 40_012];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got[..6], b"hello ");
        assert_eq!(&got[40_006..], b" world");
    }
}
