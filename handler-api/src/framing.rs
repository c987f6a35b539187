//! Framing for handlers that read raw bytes.
//!
//! loopd can cut input into lines or length-prefixed frames itself (the
//! `framing` config key), and that is the right choice when a whole
//! connection speaks one framing. A handler that needs to switch (a protocol
//! with a line-based handshake and a binary body, say) takes `raw` framing
//! and decodes with these instead. They follow loopd's own rules exactly and
//! are bounded the same way: a decoder never holds more than one frame's
//! limit (plus its header), and a frame over the limit is an error as soon as
//! it is known, before its bytes are buffered.
//!
//! Each `decode` call hands complete frames to a closure. Frames that arrive
//! whole inside one `data` slice are passed straight from it (no copy); only
//! the bytes of an incomplete frame are kept for the next call.
//!
//! ```
//! use loopd_handler_api::framing::{FrameError, LineDecoder};
//!
//! let mut lines = LineDecoder::new(16);
//! let mut got = Vec::new();
//! // Bytes arrive split anywhere; lines come out whole, without "\r\n".
//! lines.decode(b"hel", |l| got.push(l.to_vec()))?;
//! lines.decode(b"lo\r\nwor", |l| got.push(l.to_vec()))?;
//! lines.decode(b"ld\n", |l| got.push(l.to_vec()))?;
//! assert_eq!(got, [b"hello".to_vec(), b"world".to_vec()]);
//!
//! // A line over the limit is refused: close that connection.
//! let err = lines.decode(&[b'x'; 40], |_| {}).unwrap_err();
//! assert_eq!(err, FrameError::TooLong { len: 40, limit: 16 });
//! # Ok::<(), FrameError>(())
//! ```
//!
//! In a handler, keep the decoder in the connection state and close the
//! connection on an error (its stream is out of step from then on):
//!
//! ```
//! use loopd_handler_api::framing::LengthPrefixedDecoder;
//! use loopd_handler_api::{CloseMode, ConnId, Ctx, Framing, Handler, NoConfig};
//!
//! struct Frames;
//!
//! struct Conn {
//!     frames: LengthPrefixedDecoder,
//! }
//!
//! impl Default for Conn {
//!     fn default() -> Conn {
//!         Conn { frames: LengthPrefixedDecoder::new(64 << 10) }
//!     }
//! }
//!
//! impl Handler for Frames {
//!     type Config = NoConfig;
//!     type Conn = Conn;
//!     const FRAMING: Framing = Framing::Raw;
//!
//!     fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
//!         Ok(Frames)
//!     }
//!
//!     fn on_data(&mut self, ctx: &Ctx, conn: ConnId, state: &mut Conn, data: &[u8]) {
//!         let decoded = state.frames.decode(data, |frame| {
//!             // Answer each frame with its length, framed the same way.
//!             let reply = (frame.len() as u32).to_string();
//!             let _ = ctx.send_frame(conn, Framing::LengthPrefixed, reply.as_bytes());
//!         });
//!         if let Err(e) = decoded {
//!             ctx.debug(format_args!("{conn}: {e}; closing"));
//!             let _ = ctx.close(conn, CloseMode::Abort);
//!         }
//!     }
//! }
//! # let _ = Frames;
//! ```

use std::fmt;

/// Why a decoder gave up on a stream. After an error the decoder is empty
/// again, but the stream is out of step: close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is over the decoder's limit. `len` is the line length seen so
    /// far, or the length a frame header announced.
    TooLong {
        /// Bytes seen or announced.
        len: usize,
        /// The decoder's limit.
        limit: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, limit } => {
                write!(f, "frame of {len} bytes is over the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Cuts a byte stream into `\n`-terminated lines, as loopd's `line` framing
/// does: each line is handed over without its `\n` and without a `\r` just
/// before it. A line longer than `max_line` bytes (not counting those) is
/// an error.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max_line: usize,
}

/// `line` without one trailing `\r`.
fn strip_cr(line: &[u8]) -> &[u8] {
    match line {
        [head @ .., b'\r'] => head,
        _ => line,
    }
}

impl LineDecoder {
    /// A decoder for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> LineDecoder {
        LineDecoder {
            buf: Vec::new(),
            max_line,
        }
    }

    /// The longest line accepted.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes of an incomplete line held for the next call (at most
    /// `max_line + 1`: a trailing `\r` may still be waiting for its `\n`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `data`; calls `on_line` for each complete line, in order, and
    /// returns how many there were.
    ///
    /// # Errors
    /// [`FrameError::TooLong`] as soon as a line is known to be over the
    /// limit. The lines before it were handed over; the decoder is emptied.
    pub fn decode(
        &mut self,
        data: &[u8],
        mut on_line: impl FnMut(&[u8]),
    ) -> Result<usize, FrameError> {
        let mut rest = data;
        let mut lines = 0;
        if !self.buf.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(nl) => {
                    self.buf.extend_from_slice(&rest[..nl]);
                    rest = &rest[nl + 1..];
                    let line = strip_cr(&self.buf);
                    if line.len() > self.max_line {
                        return Err(self.fail(line.len()));
                    }
                    on_line(line);
                    self.buf.clear();
                    lines += 1;
                }
                None => {
                    self.keep(rest)?;
                    return Ok(0);
                }
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let line = strip_cr(&rest[..nl]);
            if line.len() > self.max_line {
                return Err(self.fail(line.len()));
            }
            on_line(line);
            lines += 1;
            rest = &rest[nl + 1..];
        }
        self.keep(rest)?;
        Ok(lines)
    }

    /// The incomplete last line, if any, handed over and forgotten: loopd's
    /// `line` framing delivers it when the peer closes.
    pub fn take_rest(&mut self) -> Option<Vec<u8>> {
        if self.buf.is_empty() {
            return None;
        }
        let mut rest = std::mem::take(&mut self.buf);
        if rest.last() == Some(&b'\r') {
            rest.pop();
        }
        Some(rest)
    }

    /// Forgets any incomplete line.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
    }

    /// Holds `partial` (no `\n` in it) after what is already held.
    fn keep(&mut self, partial: &[u8]) -> Result<(), FrameError> {
        let len = self.buf.len() + partial.len();
        // One byte of slack, for a "\r" whose "\n" may be in flight: any
        // other byte past the limit makes the line too long already (and
        // `take_rest` must never hand over more than `max_line`).
        let last = partial.last().or(self.buf.last()).copied();
        if unfinished_line_too_long(len, last, self.max_line) {
            return Err(self.fail(len));
        }
        self.buf.extend_from_slice(partial);
        Ok(())
    }

    fn fail(&mut self, len: usize) -> FrameError {
        self.clear();
        FrameError::TooLong {
            len,
            limit: self.max_line,
        }
    }
}

/// Bytes in a length-prefixed frame's header.
const HEADER: usize = 4;

/// Cuts a byte stream into length-prefixed frames, as loopd's
/// `length-prefixed` framing does: a 4-byte big-endian length, then that many
/// bytes of payload; the payload is handed over. A header announcing more
/// than `max_frame` bytes is an error at once, before any of the payload is
/// held. Use [`crate::length_prefix`] or [`crate::Ctx::send_frame`] to write
/// frames.
#[derive(Debug, Clone)]
pub struct LengthPrefixedDecoder {
    buf: Vec<u8>,
    max_frame: usize,
}

impl LengthPrefixedDecoder {
    /// A decoder for payloads of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> LengthPrefixedDecoder {
        LengthPrefixedDecoder {
            buf: Vec::new(),
            max_frame,
        }
    }

    /// The largest payload accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes of an incomplete frame held for the next call, header included
    /// (at most `4 + max_frame`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `data`; calls `on_frame` with each complete payload, in order,
    /// and returns how many there were.
    ///
    /// # Errors
    /// [`FrameError::TooLong`] when a header announces more than
    /// `max_frame` bytes. The frames before it were handed over; the decoder
    /// is emptied.
    pub fn decode(
        &mut self,
        data: &[u8],
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<usize, FrameError> {
        let mut rest = data;
        let mut frames = 0;
        if !self.buf.is_empty() {
            if self.buf.len() < HEADER {
                let take = (HEADER - self.buf.len()).min(rest.len());
                self.buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.buf.len() < HEADER {
                    return Ok(0);
                }
            }
            let len = self.check(header_len(&self.buf))?;
            let take = (HEADER + len - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() < HEADER + len {
                return Ok(0);
            }
            on_frame(&self.buf[HEADER..]);
            self.buf.clear();
            frames += 1;
        }
        while rest.len() >= HEADER {
            let len = self.check(header_len(rest))?;
            if rest.len() < HEADER + len {
                break;
            }
            on_frame(&rest[HEADER..HEADER + len]);
            frames += 1;
            rest = &rest[HEADER + len..];
        }
        self.buf.extend_from_slice(rest);
        Ok(frames)
    }

    /// Forgets any incomplete frame.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
    }

    /// `len` if within the limit; otherwise the error, and the decoder emptied.
    fn check(&mut self, len: usize) -> Result<usize, FrameError> {
        if len > self.max_frame {
            self.clear();
            return Err(FrameError::TooLong {
                len,
                limit: self.max_frame,
            });
        }
        Ok(len)
    }
}

/// The payload length in the header at the start of `bytes` (at least 4 bytes).
fn header_len(bytes: &[u8]) -> usize {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize
}

/// Whether a line of `len` bytes whose `\n` has not arrived, ending in
/// `last`, is already known to be over `max_line`. One byte of slack, for a
/// `\r` whose `\n` is still in flight: any other byte past the limit makes
/// the line too long already.
fn unfinished_line_too_long(len: usize, last: Option<u8>, max_line: usize) -> bool {
    len > max_line.saturating_add(1) || (len > max_line && last != Some(b'\r'))
}

// ---------------------------------------------------------------------------
// The framing core: one frame at a time, over a buffer the caller owns. The
// loop cuts every connection's input with these (and the decoders above
// follow the same rules), so a frame means the same thing to loopd's
// `line`/`length-prefixed` framing and to a handler that decodes itself.
// ---------------------------------------------------------------------------

/// The first frame in a buffer, as the framing core sees it.
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
    /// known, and how to discard it if it is to be skipped.
    TooBig(usize, Discard),
}

/// How to get rid of an oversize frame that is skipped.
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

/// `raw` framing: whatever is there, at most `max_frame` bytes of it.
pub fn next_raw(max_frame: usize, buf: &[u8]) -> Next {
    if buf.is_empty() {
        return Next::Incomplete;
    }
    let end = buf.len().min(max_frame);
    Next::Frame {
        start: 0,
        end,
        consumed: end,
    }
}

/// `line` framing: the first `\n`-terminated line, without the `\n` and a
/// `\r` before it; refused as soon as it is known to be over `max_line`.
pub fn next_line(max_line: usize, buf: &[u8]) -> Next {
    match memchr::memchr(b'\n', buf) {
        Some(nl) => {
            let end = if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            if end > max_line {
                Next::TooBig(end, Discard::Consume(nl + 1))
            } else {
                Next::Frame {
                    start: 0,
                    end,
                    consumed: nl + 1,
                }
            }
        }
        None if unfinished_line_too_long(buf.len(), buf.last().copied(), max_line) => {
            Next::TooBig(buf.len(), Discard::UntilNewline)
        }
        None => Next::Incomplete,
    }
}

/// `length-prefixed` framing: a 4-byte big-endian length, then the payload;
/// a header announcing more than `max_frame` is refused before its payload.
pub fn next_length_prefixed(max_frame: usize, buf: &[u8]) -> Next {
    if buf.len() < HEADER {
        return Next::Incomplete;
    }
    let len = header_len(buf);
    if len > max_frame {
        Next::TooBig(len, Discard::Payload(len as u64))
    } else if buf.len() < HEADER + len {
        Next::Incomplete
    } else {
        Next::Frame {
            start: HEADER,
            end: HEADER + len,
            consumed: HEADER + len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(d: &mut LineDecoder, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        for c in chunks {
            d.decode(c, |l| out.push(l.to_vec()))?;
        }
        Ok(out)
    }

    fn frames_of(
        d: &mut LengthPrefixedDecoder,
        chunks: &[&[u8]],
    ) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        for c in chunks {
            d.decode(c, |f| out.push(f.to_vec()))?;
        }
        Ok(out)
    }

    #[test]
    fn lines_come_out_whole_however_the_input_is_split() {
        let input: &[u8] = b"one\r\n\ntwo\nthree\r\r\nfour";
        let whole = lines_of(&mut LineDecoder::new(100), &[input]).unwrap();
        assert_eq!(whole, [&b"one"[..], b"", b"two", b"three\r"]);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut d = LineDecoder::new(100);
                let got = lines_of(&mut d, &[&input[..a], &input[a..b], &input[b..]]).unwrap();
                assert_eq!(got, whole, "split at {a} and {b}");
                assert_eq!(d.buffered(), 4);
                assert_eq!(d.take_rest(), Some(b"four".to_vec()));
                assert_eq!(d.take_rest(), None);
            }
        }
    }

    #[test]
    fn line_limit_is_loopds() {
        // Exactly at the limit passes, "\r" not counted; one more fails.
        let mut d = LineDecoder::new(3);
        let got = lines_of(&mut d, &[b"abc\r\n", b"ab", b"c\r", b"\n"]).unwrap();
        assert_eq!(got, [b"abc", b"abc"]);
        assert_eq!(
            d.decode(b"abcd\n", |_| panic!("no line")),
            Err(FrameError::TooLong { len: 4, limit: 3 })
        );
        // An incomplete line is refused once it cannot fit, before its "\n".
        let mut d = LineDecoder::new(3);
        assert_eq!(d.decode(b"abc\r", |_| {}), Ok(0));
        assert_eq!(d.buffered(), 4);
        assert_eq!(
            d.decode(b"x", |_| {}),
            Err(FrameError::TooLong { len: 5, limit: 3 })
        );
        assert_eq!(d.buffered(), 0, "emptied after an error");
        // Lines before the bad one were handed over.
        let mut seen = Vec::new();
        let r = LineDecoder::new(3).decode(b"ok\ntoo long\n", |l| seen.push(l.to_vec()));
        assert_eq!(r, Err(FrameError::TooLong { len: 8, limit: 3 }));
        assert_eq!(seen, [b"ok"]);
    }

    /// Found by the framing fuzz target: an incomplete line of exactly
    /// `max_line + 1` bytes not ending in `\r` was held, and `take_rest`
    /// handed it over at EOF, one byte over the limit.
    #[test]
    fn a_held_line_never_exceeds_the_limit() {
        let mut d = LineDecoder::new(4);
        assert_eq!(
            d.decode(b"abcde", |_| panic!("no line")),
            Err(FrameError::TooLong { len: 5, limit: 4 })
        );
        assert_eq!(d.take_rest(), None);
        // Split across calls too.
        let mut d = LineDecoder::new(4);
        assert_eq!(d.decode(b"abcd", |_| {}), Ok(0));
        assert_eq!(
            d.decode(b"e", |_| {}),
            Err(FrameError::TooLong { len: 5, limit: 4 })
        );
        // The one byte of slack is for a "\r" only.
        let mut d = LineDecoder::new(4);
        assert_eq!(d.decode(b"abcd\r", |_| {}), Ok(0));
        assert_eq!(d.take_rest(), Some(b"abcd".to_vec()));
    }

    #[test]
    fn line_buffer_stays_bounded() {
        let mut d = LineDecoder::new(1000);
        for _ in 0..1000 {
            if d.decode(b"xxxxxxxxxx", |_| {}).is_err() {
                break;
            }
            assert!(d.buffered() <= 1001);
        }
        assert_eq!(d.buffered(), 0, "the overlong line was refused");
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_come_out_whole_however_the_input_is_split() {
        let input: Vec<u8> = [frame(b"hello"), frame(b""), frame(b"\n\0x"), frame(b"end")].concat();
        let whole = frames_of(&mut LengthPrefixedDecoder::new(10), &[&input]).unwrap();
        assert_eq!(whole, [&b"hello"[..], b"", b"\n\0x", b"end"]);
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let mut d = LengthPrefixedDecoder::new(10);
                let got = frames_of(&mut d, &[&input[..a], &input[a..b], &input[b..]]).unwrap();
                assert_eq!(got, whole, "split at {a} and {b}");
                assert_eq!(d.buffered(), 0);
            }
        }
        let mut d = LengthPrefixedDecoder::new(10);
        assert_eq!(d.decode(&input[..7], |_| {}), Ok(0));
        assert_eq!(d.buffered(), 7);
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_payload() {
        let mut d = LengthPrefixedDecoder::new(10);
        let mut seen = Vec::new();
        let mut input = frame(b"fine");
        input.extend_from_slice(&11u32.to_be_bytes());
        let r = d.decode(&input, |f| seen.push(f.to_vec()));
        assert_eq!(r, Err(FrameError::TooLong { len: 11, limit: 10 }));
        assert_eq!(seen, [b"fine"]);
        assert_eq!(d.buffered(), 0);
        // Split inside the header.
        let mut d = LengthPrefixedDecoder::new(10);
        assert_eq!(d.decode(&[0, 0], |_| {}), Ok(0));
        assert_eq!(
            d.decode(&[0xff, 0xff], |_| {}),
            Err(FrameError::TooLong {
                len: 0xffff,
                limit: 10
            })
        );
        assert_eq!(
            FrameError::TooLong { len: 11, limit: 10 }.to_string(),
            "frame of 11 bytes is over the limit of 10 bytes"
        );
    }

    #[test]
    fn core_raw_frames_are_capped_chunks() {
        assert_eq!(next_raw(4, b""), Next::Incomplete);
        assert_eq!(
            next_raw(4, b"abcdef"),
            Next::Frame {
                start: 0,
                end: 4,
                consumed: 4
            }
        );
    }

    #[test]
    fn core_lines_strip_newline_and_carriage_return() {
        assert_eq!(
            next_line(10, b"hi\r\nrest"),
            Next::Frame {
                start: 0,
                end: 2,
                consumed: 4
            }
        );
        assert_eq!(
            next_line(10, b"\n"),
            Next::Frame {
                start: 0,
                end: 0,
                consumed: 1
            }
        );
        assert_eq!(next_line(10, b"partial"), Next::Incomplete);
        // exactly max_line is fine, one more is not
        assert_eq!(
            next_line(3, b"abc\n"),
            Next::Frame {
                start: 0,
                end: 3,
                consumed: 4
            }
        );
        assert_eq!(
            next_line(3, b"abcd\n"),
            Next::TooBig(4, Discard::Consume(5))
        );
        assert_eq!(next_line(3, b"abc\r"), Next::Incomplete);
        // Known to be too long one byte past the limit, unless that is "\r".
        assert_eq!(
            next_line(3, b"abcd"),
            Next::TooBig(4, Discard::UntilNewline)
        );
        assert_eq!(
            next_line(3, b"abcde"),
            Next::TooBig(5, Discard::UntilNewline)
        );
    }

    /// The core and the decoder are one rule: for every prefix of a stream
    /// the decoder accepts, the core cuts the same first line or refuses it.
    #[test]
    fn core_and_line_decoder_agree() {
        let inputs: [&[u8]; 6] = [
            b"abc\r\n", b"abcd", b"abc\r", b"ab\rc\n", b"abcde\n", b"\r\r\n",
        ];
        for input in inputs {
            for cut in 0..=input.len() {
                let part = &input[..cut];
                let mut d = LineDecoder::new(3);
                let mut first = None;
                let decoded = d.decode(part, |l| {
                    first.get_or_insert_with(|| l.to_vec());
                });
                match next_line(3, part) {
                    Next::Frame { start, end, .. } => {
                        assert_eq!(first.as_deref(), Some(&part[start..end]), "{part:?}")
                    }
                    Next::Incomplete => assert_eq!(decoded, Ok(0), "{part:?}"),
                    Next::TooBig(..) => assert!(decoded.is_err(), "{part:?}"),
                }
            }
        }
    }

    #[test]
    fn core_length_prefixed_frames() {
        assert_eq!(next_length_prefixed(10, b"\0\0"), Next::Incomplete);
        assert_eq!(
            next_length_prefixed(10, b"\0\0\0\0"),
            Next::Frame {
                start: 4,
                end: 4,
                consumed: 4
            }
        );
        assert_eq!(
            next_length_prefixed(10, b"\0\0\0\x02hiX"),
            Next::Frame {
                start: 4,
                end: 6,
                consumed: 6
            }
        );
        assert_eq!(next_length_prefixed(10, b"\0\0\0\x05hi"), Next::Incomplete);
        assert_eq!(
            next_length_prefixed(10, b"\0\0\0\x0b"),
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
}
