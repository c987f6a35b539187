//! Reading a connection and cutting its input into frames.

use std::io;

use loopd_handler_api::abi;
use loopd_handler_api::framing::{self as core_framing, skip_input, Discard, Next, Skipping};

use super::{Conn, Phase};
use crate::config::FramingKind;
use crate::core::Shared;

/// Finds the first frame in `buf`, per the connection's framing: loopd's
/// framing core (`loopd_handler_api::framing`), which the SDK's decoders
/// follow too.
pub fn next_frame(framing: FramingKind, max_frame: usize, buf: &[u8]) -> Next {
    match framing {
        FramingKind::Raw => core_framing::next_raw(max_frame, buf),
        FramingKind::Line => core_framing::next_line(max_frame, buf),
        FramingKind::LengthPrefixed => core_framing::next_length_prefixed(max_frame, buf),
    }
}

/// What is left of an input buffer after frames were taken from it: nothing
/// at all when it is empty (an idle connection holds no buffer), and no more
/// capacity than a few times what it holds.
fn keep_partial(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.is_empty() {
        return Vec::new();
    }
    if buf.capacity() > 4 * buf.len().max(4096) {
        buf.shrink_to(buf.len().max(4096));
    }
    buf
}

/// The outcome of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// `n` bytes are in the scratch buffer, to be framed from there.
    Direct { n: usize, full: bool },
    /// The bytes were appended to the connection's partial frame: frame
    /// from its buffer.
    Buffered { full: bool },
    /// The peer sent EOF: deliver what is buffered, then the EOF.
    Eof,
    /// Interrupted: read again.
    Retry,
    /// Nothing (more) to read now, or the connection cannot take input.
    Stop,
}

/// The next thing to do with input, from [`Conn::next_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// Deliver `data[start..end]` to `on_data`; it takes `consumed` bytes.
    Frame {
        start: usize,
        end: usize,
        consumed: usize,
    },
    /// `n` bytes of a skipped frame were dropped.
    Skipped(usize),
    /// A frame over `max_frame`: ask the handler, then [`Conn::discard`] or close.
    Oversize { size: usize, discard: Discard },
    /// No whole frame, or the connection cannot take one now.
    Wait,
}

/// What the dispatcher needs once the peer's EOF is due.
#[derive(Debug)]
pub(crate) struct EofInput {
    /// A last partial frame (a line without its `\n`, a truncated frame).
    pub(crate) rest: Vec<u8>,
    pub(crate) framing: FramingKind,
    pub(crate) max_frame: usize,
}

impl Conn {
    // ---------------------------------------------------------------------
    // Input
    // ---------------------------------------------------------------------

    /// Reads once into `scratch` (at most `max_frame` for raw framing).
    pub(crate) fn read(&mut self, id: u64, sh: &mut Shared, scratch: &mut [u8]) -> Read {
        if !self.can_deliver() || self.read_eof {
            return Read::Stop;
        }
        let cap = if self.framing == FramingKind::Raw {
            self.max_frame.min(scratch.len())
        } else {
            scratch.len()
        };
        let io = self.io.as_mut().expect("open connection has a transport");
        match io.read(&mut scratch[..cap]) {
            Ok(0) => {
                self.read_eof = true;
                self.update_interest(id, sh);
                Read::Eof
            }
            Ok(n) => {
                self.count(|c| &c.bytes_in, n as u64);
                self.touch(sh);
                let full = n == cap;
                if self.framing == FramingKind::Raw || self.inbuf.is_empty() {
                    Read::Direct { n, full }
                } else {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    self.account_input(sh);
                    Read::Buffered { full }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::Stop,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Read::Retry,
            Err(e) => {
                log::debug!("{}: read from connection {id}: {e}", self.name());
                self.begin_close(id, sh, true, abi::LOOPD_REASON_ERROR);
                Read::Stop
            }
        }
    }

    /// The next step over `data` (the unread rest of the input): skips what
    /// an oversize frame left, cuts the next frame.
    pub(crate) fn next_input(&mut self, data: &[u8]) -> Input {
        if !self.can_deliver() {
            return Input::Wait;
        }
        if let Some(skipping) = self.skipping {
            let (dropped, still) = skip_input(skipping, data);
            self.skipping = still;
            if dropped > 0 {
                return Input::Skipped(dropped);
            }
            if still.is_some() {
                return Input::Wait;
            }
        }
        match next_frame(self.framing, self.max_frame, data) {
            Next::Frame {
                start,
                end,
                consumed,
            } => {
                self.count(|c| &c.frames_in, 1);
                Input::Frame {
                    start,
                    end,
                    consumed,
                }
            }
            Next::Incomplete => Input::Wait,
            Next::TooBig(size, discard) => {
                self.count(|c| &c.oversize_frames, 1);
                Input::Oversize { size, discard }
            }
        }
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Starts skipping an oversize frame at the front of `data`; returns how
    /// many bytes of `data` that drops now.
    pub(crate) fn discard(&mut self, discard: Discard, data: &[u8]) -> usize {
        match discard {
            Discard::Consume(n) => n,
            Discard::UntilNewline => {
                self.skipping = Some(Skipping::Line);
                data.len()
            }
            Discard::Payload(len) => {
                let (dropped, still) = skip_input(Skipping::Bytes(len), &data[4..]);
                self.skipping = still;
                4 + dropped
            }
        }
    }

    /// Keeps the unconsumed tail of frames read straight from the scratch
    /// buffer (the start of a partial frame).
    pub(crate) fn keep_unconsumed(&mut self, rest: &[u8], sh: &mut Shared) {
        if self.phase == Phase::Open {
            self.inbuf.extend_from_slice(rest);
            self.account_input(sh);
        }
    }

    /// The buffered input to frame now, taken out of the connection while
    /// hooks run; `None` if it cannot take frames.
    pub(crate) fn take_input(&mut self) -> Option<Vec<u8>> {
        self.can_deliver().then(|| std::mem::take(&mut self.inbuf))
    }

    /// Puts back what frames did not consume of `buf`. Returns the peer's
    /// EOF if it is due now (once: `on_eof` follows).
    pub(crate) fn put_back_input(
        &mut self,
        mut buf: Vec<u8>,
        used: usize,
        sh: &mut Shared,
    ) -> Option<EofInput> {
        if self.phase != Phase::Open {
            return None;
        }
        buf.drain(..used);
        let eof = if self.read_eof && !self.eof_done && self.can_deliver() {
            self.eof_done = true;
            Some(EofInput {
                rest: buf,
                framing: self.framing,
                max_frame: self.max_frame,
            })
        } else {
            self.inbuf = keep_partial(buf);
            None
        };
        self.account_input(sh);
        eof
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_input_buffer_is_freed_and_a_mostly_empty_one_shrunk() {
        let mut big = Vec::with_capacity(1 << 20);
        big.extend_from_slice(b"x");
        big.clear();
        assert_eq!(keep_partial(big).capacity(), 0);
        let mut partial = Vec::with_capacity(1 << 20);
        partial.extend_from_slice(b"half a line");
        let kept = keep_partial(partial);
        assert_eq!(kept, b"half a line");
        assert!(kept.capacity() <= 4 * 4096, "{}", kept.capacity());
    }
}
