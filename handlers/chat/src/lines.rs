//! Cutting a client's byte stream into lines, with a bounded buffer.
//!
//! Chat does its own line splitting (it runs with `framing = "raw"`) for two
//! reasons loopd's `line` framing cannot serve:
//! - a last line without `\n` at disconnect is a half-written line, and chat
//!   must not broadcast it (loopd's line framing delivers it as a line, and
//!   `on_data` cannot tell it from a complete one);
//! - a line over `max_line` must be answered and skipped while the connection
//!   stays, however long it is (loopd's framing disconnects at `max_frame`).
//!
//! Only the bytes of an incomplete line are kept, at most `max_line + 1`
//! (room for a `\r` before the `\n`); a longer line is reported as soon as it
//! overflows and then skipped up to its `\n` without buffering.

use std::ops::ControlFlow;

/// What [`Splitter::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// A complete line, without `\n` and without one `\r` before it.
    Line(&'a [u8]),
    /// A line longer than `max_line`: reported once, its bytes dropped.
    TooLong,
}

/// One connection's line splitter.
#[derive(Debug, Default)]
pub(crate) struct Splitter {
    /// The start of a line whose `\n` has not arrived; at most `max_line + 1` bytes.
    partial: Vec<u8>,
    /// Inside an over-long line that was already reported: drop bytes up to `\n`.
    skipping: bool,
}

impl Splitter {
    /// Feeds one chunk of input, calling `f` for each line or over-long line
    /// it completes, in order. Stops early (dropping the rest of the chunk)
    /// when `f` returns `Break`, e.g. after `/quit`.
    pub(crate) fn feed<F>(&mut self, mut chunk: &[u8], max_line: usize, mut f: F)
    where
        F: FnMut(Piece<'_>) -> ControlFlow<()>,
    {
        while let Some(at) = memchr::memchr(b'\n', chunk) {
            let head = &chunk[..at];
            chunk = &chunk[at + 1..];
            let flow = if self.skipping {
                self.skipping = false;
                ControlFlow::Continue(())
            } else if self.partial.is_empty() {
                emit(head, max_line, &mut f)
            } else if self.partial.len() + head.len() > max_line + 1 {
                self.partial = Vec::new();
                f(Piece::TooLong)
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                emit(&line, max_line, &mut f)
            };
            if flow.is_break() {
                return;
            }
        }
        if self.skipping || chunk.is_empty() {
            return;
        }
        if self.partial.len() + chunk.len() > max_line + 1 {
            // Over the limit whether or not a `\r` follows: say so now
            // rather than after however many more bytes the line has.
            self.partial = Vec::new();
            self.skipping = true;
            let _ = f(Piece::TooLong);
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }

    /// Bytes of a line that has started but not ended (a skipped over-long
    /// line counts as 0). Non-zero at EOF means a half-written line.
    pub(crate) fn unfinished(&self) -> usize {
        self.partial.len()
    }

    /// Whether the stream stopped in the middle of a line (kept or skipped).
    pub(crate) fn mid_line(&self) -> bool {
        self.skipping || !self.partial.is_empty()
    }
}

/// Strips one `\r` and checks the length of a complete line.
fn emit<F>(line: &[u8], max_line: usize, f: &mut F) -> ControlFlow<()>
where
    F: FnMut(Piece<'_>) -> ControlFlow<()>,
{
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_line {
        f(Piece::TooLong)
    } else {
        f(Piece::Line(line))
    }
}

/// The same length rule for a line loopd's `line` framing delivered (it
/// already removed `\n` and one `\r`).
pub(crate) fn check_framed(line: &[u8], max_line: usize) -> Piece<'_> {
    if line.len() > max_line {
        Piece::TooLong
    } else {
        Piece::Line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the splitter reports for these chunks, as strings ("!" = too long).
    fn run(s: &mut Splitter, chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in chunks {
            s.feed(chunk, max, |p| {
                out.push(match p {
                    Piece::Line(l) => String::from_utf8(l.to_vec()).unwrap(),
                    Piece::TooLong => "!".to_string(),
                });
                ControlFlow::Continue(())
            });
        }
        out
    }

    #[test]
    fn lines_split_however_the_bytes_arrive() {
        let text = b"hello\nworld\r\n\nlast\n";
        let whole = run(&mut Splitter::default(), &[text], 100);
        assert_eq!(whole, ["hello", "world", "", "last"]);
        for cut in 0..text.len() {
            let mut s = Splitter::default();
            let got = run(&mut s, &[&text[..cut], &text[cut..]], 100);
            assert_eq!(got, whole, "cut at {cut}");
            assert!(!s.mid_line());
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(run(&mut Splitter::default(), &bytes, 100), whole);
    }

    #[test]
    fn only_one_cr_is_stripped_and_only_before_the_newline() {
        let got = run(&mut Splitter::default(), &[b"a\r\r\nb\rc\n"], 100);
        assert_eq!(got, ["a\r", "b\rc"]);
    }

    #[test]
    fn an_unterminated_line_stays_unfinished() {
        let mut s = Splitter::default();
        assert_eq!(run(&mut s, &[b"done\nhalf-wri", b"tten"], 100), ["done"]);
        assert!(s.mid_line());
        assert_eq!(s.unfinished(), "half-written".len());
    }

    #[test]
    fn max_line_counts_bytes_without_the_line_ending() {
        let max = 4;
        for (input, want) in [
            (&b"abcd\n"[..], "abcd"),
            (b"abcd\r\n", "abcd"),
            (b"abcde\n", "!"),
            (b"abcde\r\n", "!"),
        ] {
            assert_eq!(run(&mut Splitter::default(), &[input], max), [want]);
            // The same, one byte at a time (the partial-buffer paths).
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                run(&mut Splitter::default(), &bytes, max),
                [want],
                "{input:?} byte by byte"
            );
        }
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_the_stream_goes_on() {
        let mut s = Splitter::default();
        let long = vec![b'x'; 10_000];
        let mut chunks: Vec<&[u8]> = vec![b"ok\nxx"];
        chunks.extend(long.chunks(777));
        chunks.push(b"xxx\nnext\n");
        assert_eq!(run(&mut s, &chunks, 100), ["ok", "!", "next"]);
        assert!(!s.mid_line());
    }

    #[test]
    fn an_over_long_line_is_reported_before_its_end_arrives() {
        let mut s = Splitter::default();
        assert_eq!(run(&mut s, &[&[b'y'; 102]], 100), ["!"]);
        assert!(s.mid_line());
        assert_eq!(s.unfinished(), 0, "nothing of it is kept");
        assert_eq!(run(&mut s, &[&[b'y'; 5000], b"\n", b"z\n"], 100), ["z"]);
    }

    #[test]
    fn the_buffer_never_holds_more_than_max_line_plus_one() {
        let mut s = Splitter::default();
        for _ in 0..1000 {
            run(&mut s, &[b"0123456789"], 64);
            assert!(s.partial.len() <= 65);
        }
    }

    #[test]
    fn break_stops_at_once() {
        let mut s = Splitter::default();
        let mut seen = Vec::new();
        s.feed(b"one\n/quit\nthree\n", 100, |p| {
            let Piece::Line(l) = p else { panic!() };
            seen.push(l.to_vec());
            if l == b"/quit" {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(seen, [b"one".to_vec(), b"/quit".to_vec()]);
    }

    #[test]
    fn framed_lines_get_the_same_length_rule() {
        assert_eq!(check_framed(b"abcd", 4), Piece::Line(b"abcd"));
        assert_eq!(check_framed(b"abcde", 4), Piece::TooLong);
    }
}
