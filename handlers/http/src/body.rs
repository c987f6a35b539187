//! Request bodies the server reads only to throw away (a GET or HEAD with a
//! body, or the body of a refused request), so the next request on the
//! connection starts at the right byte. Bounded by `max_discard_body`.

/// Longest chunk-size line or trailer line accepted while discarding.
const MAX_CHUNK_LINE: usize = 4096;

/// Where a body being discarded stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Discard {
    /// No body pending.
    #[default]
    None,
    /// `Content-Length` bytes still to come.
    Length(u64),
    /// A chunked body.
    Chunked(Chunked),
}

/// The state of a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: bytes left, then CRLF.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// The body cannot be discarded: malformed chunked framing, or over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscardError {
    /// The chunked framing is malformed.
    Malformed,
    /// More than `max_discard_body` bytes.
    TooLarge,
}

impl Discard {
    /// A chunked body starts.
    pub(crate) fn chunked() -> Discard {
        Discard::Chunked(Chunked::Size)
    }

    /// Whether a body is pending.
    pub(crate) fn active(&self) -> bool {
        *self != Discard::None
    }

    /// Consumes body bytes from the start of `input`; returns how many. The
    /// rest of `input` is the next request (if the body ended) or an
    /// incomplete framing line (to be offered again with more bytes).
    /// `total` counts the bytes discarded so far and is checked against `limit`.
    ///
    /// # Errors
    /// See [`DiscardError`].
    pub(crate) fn consume(
        &mut self,
        input: &[u8],
        total: &mut u64,
        limit: u64,
    ) -> Result<usize, DiscardError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let used = match self {
                Discard::None => return Ok(pos),
                Discard::Length(left) => {
                    let n = (*left).min(rest.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        *self = Discard::None;
                    }
                    n as usize
                }
                Discard::Chunked(state) => match step(state, rest)? {
                    Step::Used(n) => n,
                    Step::Done(n) => {
                        *self = Discard::None;
                        n
                    }
                },
            };
            *total += used as u64;
            if *total > limit {
                return Err(DiscardError::TooLarge);
            }
            // A chunk declared larger than what is left of the limit is
            // refused at its size line, not after waiting for its data.
            if let Discard::Chunked(Chunked::Data(left)) = self {
                if total.saturating_add(*left) > limit {
                    return Err(DiscardError::TooLarge);
                }
            }
            pos += used;
            if used == 0 {
                return Ok(pos);
            }
        }
    }
}

enum Step {
    Used(usize),
    Done(usize),
}

fn line(rest: &[u8]) -> Result<Option<usize>, DiscardError> {
    match rest.iter().position(|&b| b == b'\n') {
        Some(end) if end < MAX_CHUNK_LINE => Ok(Some(end + 1)),
        Some(_) => Err(DiscardError::Malformed),
        None if rest.len() >= MAX_CHUNK_LINE => Err(DiscardError::Malformed),
        None => Ok(None),
    }
}

fn step(state: &mut Chunked, rest: &[u8]) -> Result<Step, DiscardError> {
    match *state {
        Chunked::Size => {
            let Some(n) = line(rest)? else {
                return Ok(Step::Used(0));
            };
            // A bare LF ends a chunk-size line as it ends a header line
            // (RFC 9112 2.2): httparse wants CRLF, so give it one. A bare
            // CR anywhere in the line is still an error.
            let size_line = &rest[..n];
            let parsed = if size_line.ends_with(b"\r\n") {
                httparse::parse_chunk_size(size_line)
            } else {
                let mut crlf = Vec::with_capacity(n + 1);
                crlf.extend_from_slice(&size_line[..n - 1]);
                crlf.extend_from_slice(b"\r\n");
                httparse::parse_chunk_size(&crlf)
            };
            match parsed {
                Ok(httparse::Status::Complete((_, 0))) => {
                    *state = Chunked::Trailers;
                    Ok(Step::Used(n))
                }
                Ok(httparse::Status::Complete((_, size))) => {
                    *state = Chunked::Data(size);
                    Ok(Step::Used(n))
                }
                _ => Err(DiscardError::Malformed),
            }
        }
        Chunked::Data(left) => {
            let n = left.min(rest.len() as u64);
            *state = if n == left {
                Chunked::DataEnd
            } else {
                Chunked::Data(left - n)
            };
            Ok(Step::Used(n as usize))
        }
        Chunked::DataEnd => match rest {
            [b'\r', b'\n', ..] => {
                *state = Chunked::Size;
                Ok(Step::Used(2))
            }
            [b'\n', ..] => {
                *state = Chunked::Size;
                Ok(Step::Used(1))
            }
            [] | [b'\r'] => Ok(Step::Used(0)),
            _ => Err(DiscardError::Malformed),
        },
        Chunked::Trailers => match line(rest)? {
            None => Ok(Step::Used(0)),
            Some(n) => {
                let text = &rest[..n];
                if text == b"\r\n" || text == b"\n" {
                    Ok(Step::Done(n))
                } else if trailer_field(text) {
                    Ok(Step::Used(n))
                } else {
                    Err(DiscardError::Malformed)
                }
            }
        },
    }
}

/// Whether a trailer line (with its line ending) is a well-formed field
/// line, `name: value`, as in a head: a token name, no bare CR, no control
/// characters, no obs-fold. Anything else (a request line hidden after the
/// last chunk, say) could be read differently by another party.
fn trailer_field(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.iter().all(|&b| tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut d: Discard, input: &[u8], limit: u64) -> Result<(usize, Discard), DiscardError> {
        let mut total = 0;
        let n = d.consume(input, &mut total, limit)?;
        Ok((n, d))
    }

    #[test]
    fn content_length() {
        assert_eq!(
            run(Discard::Length(3), b"abcGET", 10),
            Ok((3, Discard::None))
        );
        assert_eq!(
            run(Discard::Length(5), b"abc", 10),
            Ok((3, Discard::Length(2)))
        );
        assert_eq!(
            run(Discard::Length(20), b"abcdefghijklm", 10),
            Err(DiscardError::TooLarge)
        );
    }

    #[test]
    fn chunked_whole() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET";
        let (n, d) = run(Discard::chunked(), body, 100).unwrap();
        assert_eq!(d, Discard::None);
        assert_eq!(&body[n..], b"GET");
    }

    #[test]
    fn chunked_with_bare_lf_line_endings() {
        let body = b"4\nWiki\n5;ext=1\npedia\n0\n\nGET";
        let (n, d) = run(Discard::chunked(), body, 100).unwrap();
        assert_eq!(d, Discard::None);
        assert_eq!(&body[n..], b"GET");
        // A bare CR is not a line ending.
        for bad in [&b"4\rWiki\r\n"[..], b"4;a\rb\r\nWiki\r\n", b"4\r\r\nWiki"] {
            assert_eq!(
                run(Discard::chunked(), bad, 100),
                Err(DiscardError::Malformed)
            );
        }
    }

    #[test]
    fn trailers_must_be_field_lines() {
        let ok = b"0\r\nX-A: 1\r\nX-B:\tv\xe9\r\n\r\nNEXT";
        let (n, d) = run(Discard::chunked(), ok, 100).unwrap();
        assert_eq!((d, &ok[n..]), (Discard::None, &b"NEXT"[..]));
        for bad in [
            &b"0\r\nGET /x HTTP/1.1\r\n\r\n"[..],
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\nX: a\r\n b\r\n\r\n",
            b"0\r\nX y: a\r\n\r\n",
            b"0\r\n: a\r\n\r\n",
            b"0\r\nX: a\x00\r\n\r\n",
        ] {
            assert_eq!(
                run(Discard::chunked(), bad, 100),
                Err(DiscardError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunked_byte_by_byte() {
        let body = b"4\r\nWiki\r\n0\r\n\r\nNEXT";
        let mut d = Discard::chunked();
        let mut total = 0;
        let mut pending: Vec<u8> = Vec::new();
        let mut consumed_all = 0;
        for &b in body.iter() {
            pending.push(b);
            let n = d.consume(&pending, &mut total, 100).unwrap();
            consumed_all += n;
            pending.drain(..n);
            if !d.active() {
                break;
            }
        }
        assert!(!d.active());
        assert_eq!(consumed_all, body.len() - 4);
    }

    #[test]
    fn malformed_chunked() {
        for bad in [&b"zz\r\n"[..], b"4\r\nWikiXX", b"4\r\nWiki\r\n0\r\n"] {
            let r = run(Discard::chunked(), bad, 100);
            if bad == b"4\r\nWiki\r\n0\r\n" {
                // Incomplete, not malformed: the trailers are still to come.
                assert!(r.unwrap().1.active());
            } else {
                assert_eq!(
                    r,
                    Err(DiscardError::Malformed),
                    "{:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert_eq!(
            run(Discard::chunked(), &long, 1 << 20),
            Err(DiscardError::Malformed)
        );
    }

    #[test]
    fn a_chunk_declared_over_the_limit_is_refused_at_its_size_line() {
        // Only the size line has arrived: no need to wait for the data.
        assert_eq!(
            run(Discard::chunked(), b"10000000\r\nab", 1000),
            Err(DiscardError::TooLarge)
        );
        // Within the limit, it waits for the rest.
        let (n, d) = run(Discard::chunked(), b"10\r\nab", 1000).unwrap();
        assert_eq!((n, d), (6, Discard::Chunked(Chunked::Data(14))));
    }

    #[test]
    fn chunked_over_the_limit() {
        let body = b"ff\r\n";
        let mut data = body.to_vec();
        data.extend_from_slice(&[b'x'; 255]);
        assert_eq!(
            run(Discard::chunked(), &data, 100),
            Err(DiscardError::TooLarge)
        );
    }
}
