//! The framers: loopd's own input framing (`next_frame` and `skip_input`,
//! driven the way the loop drives them, read by read) and the SDK's
//! `LineDecoder` and `LengthPrefixedDecoder`, which promise to follow
//! loopd's rules exactly.
//!
//! Input: framing (raw, line, length-prefixed), `max_frame`, how reads are
//! split, what happens to an oversize frame (the handler skips it, or the
//! connection closes), then the byte stream.
//!
//! Checked on every input:
//! - no panic; no frame is over `max_frame`; a line holds no `\n`;
//! - the frames do not depend on how the stream is split into reads: they
//!   equal a reference model computed on the whole stream (split on `\n`,
//!   strip one `\r`, drop or refuse what is over the limit; or walk the
//!   4-byte headers), including the last line at EOF;
//! - the SDK decoders give the same frames and refuse the same frame, of
//!   the same size; they never hold more than the limit (plus header);
//! - frames encoded with `length_prefix` (or `\n`) decode back to exactly
//!   themselves, through loopd's framer and the SDK's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopd::fuzzing::{next_frame, skip_input, Discard, FramingKind, Next, Skipping};
use loopd_fuzz::{chunks, Input, Rng};
use loopd_handler_api::framing::{FrameError, LengthPrefixedDecoder, LineDecoder};

/// What happens to a frame over `max_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oversize {
    /// The handler's `on_oversize` says skip it.
    Skip,
    /// No `on_oversize` (or it says close): the connection closes.
    Close,
}

/// What a connection delivered: frames, then maybe the refused frame's size.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    refused: Option<usize>,
}

/// One connection's input state, as in `runtime/src/dispatch.rs`.
struct Conn {
    framing: FramingKind,
    max: usize,
    oversize: Oversize,
    inbuf: Vec<u8>,
    skipping: Option<Skipping>,
    closed: bool,
    out: Outcome,
}

impl Conn {
    /// `deliver_frames`: hands frames in `data` over; returns bytes consumed.
    fn deliver(&mut self, data: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            if self.closed {
                return pos;
            }
            if let Some(skipping) = self.skipping {
                let (dropped, still) = skip_input(skipping, &data[pos..]);
                pos += dropped;
                self.skipping = still;
                if still.is_some() {
                    return pos;
                }
            }
            match next_frame(self.framing, self.max, &data[pos..]) {
                Next::Frame {
                    start,
                    end,
                    consumed,
                } => {
                    assert!(start <= end && end <= consumed && consumed <= data.len() - pos);
                    assert!(consumed > 0, "an empty frame consumed nothing");
                    self.out.frames.push(data[pos + start..pos + end].to_vec());
                    pos += consumed;
                }
                Next::Incomplete => return pos,
                Next::TooBig(size, discard) => {
                    assert!(size > self.max, "refused {size} bytes, max {}", self.max);
                    if !self.skipped(size) {
                        return pos;
                    }
                    let rest = &data[pos..];
                    match discard {
                        Discard::Consume(n) => {
                            assert!(n <= rest.len());
                            pos += n
                        }
                        Discard::UntilNewline => {
                            pos += rest.len();
                            self.skipping = Some(Skipping::Line);
                        }
                        Discard::Payload(len) => {
                            let (dropped, still) = skip_input(Skipping::Bytes(len), &rest[4..]);
                            pos += 4 + dropped;
                            self.skipping = still;
                        }
                    }
                }
            }
        }
    }

    fn skipped(&mut self, size: usize) -> bool {
        match self.oversize {
            Oversize::Skip => true,
            Oversize::Close => {
                self.out.refused = Some(size);
                self.closed = true;
                false
            }
        }
    }

    /// `conn_readable` for one read of `data`.
    fn read(&mut self, data: &[u8]) {
        if self.closed {
            return;
        }
        // Raw reads are capped at max_frame.
        let reads: Vec<&[u8]> = if self.framing == FramingKind::Raw {
            data.chunks(self.max).collect()
        } else {
            vec![data]
        };
        for data in reads {
            if self.framing == FramingKind::Raw || self.inbuf.is_empty() {
                let used = self.deliver(data);
                if used < data.len() && !self.closed {
                    self.inbuf.extend_from_slice(&data[used..]);
                }
            } else {
                self.inbuf.extend_from_slice(data);
                self.process_input(false);
            }
            self.check_bound();
        }
    }

    /// `process_input`: buffered frames, then (at EOF) the last partial one.
    fn process_input(&mut self, eof: bool) {
        if self.closed {
            return;
        }
        let mut buf = std::mem::take(&mut self.inbuf);
        let used = if buf.is_empty() {
            0
        } else {
            self.deliver(&buf)
        };
        if self.closed {
            return;
        }
        buf.drain(..used);
        if !eof {
            self.inbuf = buf;
            return;
        }
        if !buf.is_empty() && self.framing == FramingKind::Line {
            let end = if buf.last() == Some(&b'\r') {
                buf.len() - 1
            } else {
                buf.len()
            };
            if end > self.max {
                self.skipped(end);
            } else {
                self.out.frames.push(buf[..end].to_vec());
            }
        }
    }

    /// What a connection may hold between reads.
    fn check_bound(&self) {
        let bound = match self.framing {
            FramingKind::Raw => 0,
            FramingKind::Line => self.max + 1,
            FramingKind::LengthPrefixed => self.max + 4,
        };
        assert!(
            self.inbuf.len() <= bound,
            "{:?} holds {} bytes, max_frame {}",
            self.framing,
            self.inbuf.len(),
            self.max
        );
    }
}

fn run_loopd(framing: FramingKind, max: usize, oversize: Oversize, reads: &[&[u8]]) -> Outcome {
    let mut c = Conn {
        framing,
        max,
        oversize,
        inbuf: Vec::new(),
        skipping: None,
        closed: false,
        out: Outcome::default(),
    };
    for r in reads {
        c.read(r);
    }
    c.process_input(true);
    for f in &c.out.frames {
        assert!(
            f.len() <= max,
            "a frame of {} bytes, max_frame {max}",
            f.len()
        );
        if framing == FramingKind::Line {
            assert!(!f.contains(&b'\n'), "a line holds a newline");
        }
    }
    c.out
}

/// The reference: frames of the whole stream, however it was read.
fn model(framing: FramingKind, max: usize, oversize: Oversize, stream: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let refuse = |out: &mut Outcome, size: usize| -> bool {
        if oversize == Oversize::Close {
            out.refused = Some(size);
            return true;
        }
        false
    };
    match framing {
        FramingKind::Raw => {
            // Any split is right; checked separately.
        }
        FramingKind::Line => {
            let mut rest = stream;
            while !rest.is_empty() {
                let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                    Some(nl) => (&rest[..nl], &rest[nl + 1..]),
                    None => (rest, &b""[..]),
                };
                let stripped = line.strip_suffix(b"\r").unwrap_or(line);
                if stripped.len() > max {
                    // Refused with its size so far, which depends on where
                    // the reads fell for a line refused before its end:
                    // only whether it was refused is compared.
                    if refuse(&mut out, usize::MAX) {
                        return out;
                    }
                } else {
                    out.frames.push(stripped.to_vec());
                }
                rest = next;
            }
        }
        FramingKind::LengthPrefixed => {
            let mut rest = stream;
            while rest.len() >= 4 {
                let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len > max {
                    if refuse(&mut out, len) {
                        return out;
                    }
                    rest = &rest[(4 + len).min(rest.len())..];
                    continue;
                }
                if rest.len() < 4 + len {
                    break;
                }
                out.frames.push(rest[4..4 + len].to_vec());
                rest = &rest[4 + len..];
            }
        }
    }
    out
}

/// The SDK's decoders over the same reads (close on the first error).
fn run_sdk(framing: FramingKind, max: usize, reads: &[&[u8]]) -> Outcome {
    let mut out = Outcome::default();
    match framing {
        FramingKind::Raw => {}
        FramingKind::Line => {
            let mut d = LineDecoder::new(max);
            for r in reads {
                let res = d.decode(r, |l| out.frames.push(l.to_vec()));
                assert!(
                    d.buffered() <= max + 1,
                    "LineDecoder holds {}",
                    d.buffered()
                );
                if let Err(FrameError::TooLong { len, limit }) = res {
                    assert_eq!(limit, max);
                    assert!(len > max);
                    out.refused = Some(len);
                    return out;
                }
            }
            if let Some(rest) = d.take_rest() {
                out.frames.push(rest);
            }
        }
        FramingKind::LengthPrefixed => {
            let mut d = LengthPrefixedDecoder::new(max);
            for r in reads {
                let res = d.decode(r, |f| out.frames.push(f.to_vec()));
                assert!(
                    d.buffered() <= max + 4,
                    "LengthPrefixedDecoder holds {}",
                    d.buffered()
                );
                if let Err(FrameError::TooLong { len, limit }) = res {
                    assert_eq!(limit, max);
                    assert!(len > max);
                    out.refused = Some(len);
                    return out;
                }
            }
        }
    }
    for f in &out.frames {
        assert!(
            f.len() <= max,
            "the SDK handed over {} bytes, max {max}",
            f.len()
        );
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let framing = match flags % 3 {
        0 => FramingKind::Raw,
        1 => FramingKind::Line,
        _ => FramingKind::LengthPrefixed,
    };
    let oversize = if flags & 0x10 != 0 {
        Oversize::Skip
    } else {
        Oversize::Close
    };
    let max = match input.u16() {
        // loopd's largest max_frame (1 GiB) now and then.
        0xffff => 1 << 30,
        n => 1 + usize::from(n % 1024),
    };
    let split = input.u8();
    let stream = input.rest();
    let mut rng = Rng::new(u64::from(split) << 8 | u64::from(flags));
    let reads = chunks(stream, split, &mut rng);

    let got = run_loopd(framing, max, oversize, &reads);
    match framing {
        FramingKind::Raw => {
            assert_eq!(
                got.frames.concat(),
                stream,
                "raw frames lost or added bytes"
            );
            assert!(
                got.frames.iter().all(|f| !f.is_empty()),
                "an empty raw frame"
            );
        }
        _ => {
            let want = model(framing, max, oversize, stream);
            assert_eq!(got.frames, want.frames, "frames differ from the model");
            assert_eq!(
                got.refused.is_some(),
                want.refused.is_some(),
                "refusal differs"
            );
            if framing == FramingKind::LengthPrefixed {
                assert_eq!(got.refused, want.refused);
            }
            if oversize == Oversize::Close {
                let sdk = run_sdk(framing, max, &reads);
                assert_eq!(got, sdk, "loopd and the SDK disagree");
            }
        }
    }

    round_trip(stream, max, &mut rng);
});

/// Frames cut from `payload`, encoded, decode back to themselves.
fn round_trip(payload: &[u8], max: usize, rng: &mut Rng) {
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() && frames.len() < 64 {
        let n = (rng.below(48) as usize).min(rest.len());
        frames.push(&rest[..n]);
        rest = &rest[n..];
    }
    let max = max.max(frames.iter().map(|f| f.len()).max().unwrap_or(0));
    // Length-prefixed.
    let mut wire = Vec::new();
    for f in &frames {
        wire.extend_from_slice(&loopd_handler_api::length_prefix(f.len()).expect("small"));
        wire.extend_from_slice(f);
    }
    let reads = chunks(&wire, rng.next() as u8, rng);
    let want: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
    let got = run_loopd(FramingKind::LengthPrefixed, max, Oversize::Close, &reads);
    assert_eq!(got.frames, want, "length-prefixed round trip through loopd");
    assert_eq!(got.refused, None);
    let got = run_sdk(FramingKind::LengthPrefixed, max, &reads);
    assert_eq!(
        got.frames, want,
        "length-prefixed round trip through the SDK"
    );
    // Lines: without "\n", and without a trailing "\r" (which framing strips).
    let lines: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut l: Vec<u8> = f.iter().copied().filter(|&b| b != b'\n').collect();
            while l.last() == Some(&b'\r') {
                l.pop();
            }
            l
        })
        .collect();
    let mut wire = Vec::new();
    for l in &lines {
        wire.extend_from_slice(l);
        wire.push(b'\n');
    }
    let reads = chunks(&wire, rng.next() as u8, rng);
    let got = run_loopd(FramingKind::Line, max, Oversize::Close, &reads);
    assert_eq!(got.frames, lines, "line round trip through loopd");
    let got = run_sdk(FramingKind::Line, max, &reads);
    assert_eq!(got.frames, lines, "line round trip through the SDK");
}
