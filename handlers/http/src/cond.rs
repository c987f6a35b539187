//! Validators (ETag, Last-Modified), conditional requests (RFC 9110 13) and
//! byte ranges (RFC 9110 14).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::request::{list, parse_decimal, Request};

/// A file's validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validators {
    /// A strong entity tag, quotes included:
    /// `"<inode hex>-<mtime in ns, hex>-<size hex>"`.
    pub(crate) etag: String,
    /// Modification time, whole seconds since the epoch.
    pub(crate) mtime: u64,
}

impl Validators {
    /// From a file's inode, modification time and size. Two versions of a
    /// path differ in at least one of them unless the file was rewritten in
    /// place to the same size with its mtime put back to the nanosecond:
    /// a replacement (a rename over it, as editors, rsync and deploy tools
    /// do) is a new inode even when it keeps the size and the mtime
    /// (`cp -p`, `rsync -t`).
    pub(crate) fn new(ino: u64, modified: SystemTime, size: u64) -> Validators {
        let since = modified.duration_since(UNIX_EPOCH).unwrap_or_default();
        Validators {
            etag: format!("\"{ino:x}-{:x}-{size:x}\"", since.as_nanos()),
            mtime: since.as_secs(),
        }
    }

    /// `Last-Modified` as an HTTP-date.
    pub(crate) fn last_modified(&self) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(self.mtime))
    }
}

/// What the preconditions say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// Send the representation.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

fn http_date_secs(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let t = httpdate::parse_http_date(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// Whether an entity-tag list (`"a", W/"b"` or `*`) holds `etag`. With
/// `strong`, a weak tag in the list never matches (RFC 9110 8.8.3.2).
pub(crate) fn etag_list_matches(value: &[u8], etag: &str, strong: bool) -> bool {
    let mut rest = value.trim_ascii();
    if rest == b"*" {
        return true;
    }
    loop {
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return false;
        }
        let weak = rest.starts_with(b"W/");
        if weak {
            rest = &rest[2..];
        }
        if rest.first() != Some(&b'"') {
            return false; // malformed: nothing further can be trusted
        }
        let Some(close) = rest[1..].iter().position(|&b| b == b'"') else {
            return false;
        };
        let tag = &rest[..close + 2];
        if tag == etag.as_bytes() && !(strong && weak) {
            return true;
        }
        rest = &rest[close + 2..];
    }
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and
/// `If-Modified-Since` in the order RFC 9110 13.2.2 gives, for GET/HEAD.
pub(crate) fn preconditions(req: &Request<'_>, v: &Validators) -> Precondition {
    // A field repeated on several lines is one list (RFC 9110 5.3): any
    // line may hold the matching tag.
    if !req.if_match.is_empty() {
        if !req
            .if_match
            .iter()
            .any(|im| etag_list_matches(im, &v.etag, true))
        {
            return Precondition::Failed;
        }
    } else if let Some(ius) = req.if_unmodified_since.and_then(http_date_secs) {
        if v.mtime > ius {
            return Precondition::Failed;
        }
    }
    if !req.if_none_match.is_empty() {
        if req
            .if_none_match
            .iter()
            .any(|inm| etag_list_matches(inm, &v.etag, false))
        {
            return Precondition::NotModified;
        }
    } else if let Some(ims) = req.if_modified_since.and_then(http_date_secs) {
        if v.mtime <= ims {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// What a `Range` field asks of a representation of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// No (usable) range: send it all with 200.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

/// Interprets `Range` (and `If-Range`) for a representation of `len` bytes.
/// A single byte range is honoured; several ranges, other units or a
/// malformed field are ignored (a full 200 is always a valid answer).
pub(crate) fn range(req: &Request<'_>, v: &Validators, len: u64) -> RangeAnswer {
    let Some(value) = req.range else {
        return RangeAnswer::Full;
    };
    if let Some(if_range) = req.if_range {
        let if_range = if_range.trim_ascii();
        // Only a strong match counts; a weak tag never does, nor a date:
        // Last-Modified has whole seconds, and a file rewritten twice in
        // one second keeps it (RFC 9110 8.8.2.2: a date is strong only if
        // the server can tell it did not change twice in that second,
        // which it cannot). The whole file is always a valid answer.
        let fresh = if_range.starts_with(b"\"") && if_range == v.etag.as_bytes();
        if !fresh {
            return RangeAnswer::Full;
        }
    }
    let value = value.trim_ascii();
    let Some(eq) = value.iter().position(|&b| b == b'=') else {
        return RangeAnswer::Full;
    };
    if !value[..eq].trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return RangeAnswer::Full;
    }
    let mut specs = list(&value[eq + 1..]);
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return RangeAnswer::Full;
    };
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (spec[..dash].trim_ascii(), spec[dash + 1..].trim_ascii());
    // Digits that overflow u64 are still a valid (huge) number.
    let number = |s: &[u8]| -> Option<u64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(parse_decimal(s).unwrap_or(u64::MAX))
    };
    match (first.is_empty(), last.is_empty()) {
        (true, true) => RangeAnswer::Full,
        (true, false) => {
            // "-N": the last N bytes.
            let Some(n) = number(last) else {
                return RangeAnswer::Full;
            };
            if n == 0 || len == 0 {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            }
        }
        (false, _) => {
            let Some(start) = number(first) else {
                return RangeAnswer::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match number(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                start,
                end: end.min(len - 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validators {
        Validators {
            etag: "\"abc-10\"".into(),
            mtime: 1_000_000,
        }
    }

    #[test]
    fn etags_tell_inodes_and_nanoseconds_apart() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let a = Validators::new(7, t, 100);
        assert_eq!(
            a.etag,
            format!("\"7-{:x}-64\"", 1_700_000_000_000_000_005u128)
        );
        // Same size and mtime, another inode (a replacement that kept the
        // mtime): another tag.
        assert_ne!(Validators::new(8, t, 100).etag, a.etag);
        // Same inode and size, a nanosecond later: another tag, same
        // Last-Modified.
        let b = Validators::new(7, t + Duration::from_nanos(1), 100);
        assert_ne!(b.etag, a.etag);
        assert_eq!(b.last_modified(), a.last_modified());
        assert_ne!(Validators::new(7, t, 101).etag, a.etag);
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn req<'a>() -> Request<'a> {
        Request::default()
    }

    #[test]
    fn etag_lists() {
        let e = "\"abc-10\"";
        assert!(etag_list_matches(b"\"abc-10\"", e, true));
        assert!(etag_list_matches(b"*", e, true));
        assert!(etag_list_matches(b"\"x\", \"abc-10\"", e, true));
        assert!(etag_list_matches(b"W/\"abc-10\"", e, false));
        assert!(!etag_list_matches(b"W/\"abc-10\"", e, true));
        assert!(!etag_list_matches(b"\"abc-1\"", e, false));
        assert!(!etag_list_matches(b"abc-10", e, false));
        assert!(etag_list_matches(b"\"a,b\" , \"abc-10\"", e, false));
    }

    #[test]
    fn if_none_match_beats_if_modified_since() {
        let later = date(2_000_000);
        let mut r = req();
        r.if_none_match = vec![b"\"other\""];
        r.if_modified_since = Some(later.as_bytes());
        assert_eq!(preconditions(&r, &v()), Precondition::Proceed);
        r.if_none_match = vec![b"\"abc-10\""];
        assert_eq!(preconditions(&r, &v()), Precondition::NotModified);
        // The tag on a second field line counts as in one list.
        r.if_none_match = vec![b"\"other\"", b"\"abc-10\""];
        assert_eq!(preconditions(&r, &v()), Precondition::NotModified);
    }

    #[test]
    fn if_modified_since() {
        let mut r = req();
        let same = date(1_000_000);
        let earlier = date(999_999);
        r.if_modified_since = Some(same.as_bytes());
        assert_eq!(preconditions(&r, &v()), Precondition::NotModified);
        r.if_modified_since = Some(earlier.as_bytes());
        assert_eq!(preconditions(&r, &v()), Precondition::Proceed);
        r.if_modified_since = Some(b"not a date");
        assert_eq!(preconditions(&r, &v()), Precondition::Proceed);
    }

    #[test]
    fn if_match_and_if_unmodified_since() {
        let mut r = req();
        r.if_match = vec![b"\"nope\""];
        assert_eq!(preconditions(&r, &v()), Precondition::Failed);
        r.if_match = vec![b"\"abc-10\""];
        assert_eq!(preconditions(&r, &v()), Precondition::Proceed);
        r.if_match = vec![b"\"nope\"", b"\"abc-10\""];
        assert_eq!(preconditions(&r, &v()), Precondition::Proceed);
        let mut r = req();
        let earlier = date(999_999);
        r.if_unmodified_since = Some(earlier.as_bytes());
        assert_eq!(preconditions(&r, &v()), Precondition::Failed);
    }

    fn ranged(value: &'static str, len: u64) -> RangeAnswer {
        let mut r = req();
        r.range = Some(value.as_bytes());
        range(&r, &v(), len)
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(ranged("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(ranged("bytes=90-", 100), Partial { start: 90, end: 99 });
        assert_eq!(ranged("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(ranged("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(ranged("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(ranged("Bytes = 5-5", 100), Partial { start: 5, end: 5 });
        assert_eq!(
            ranged("bytes=0-99999999999999999999999", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(ranged("bytes=100-", 100), Unsatisfiable);
        assert_eq!(ranged("bytes=99999999999999999999999-", 100), Unsatisfiable);
        assert_eq!(ranged("bytes=-0", 100), Unsatisfiable);
        assert_eq!(ranged("bytes=0-", 0), Unsatisfiable);
        assert_eq!(ranged("bytes=-5", 0), Unsatisfiable);
        assert_eq!(ranged("bytes=5-1", 100), Full);
        assert_eq!(ranged("bytes=0-1,5-6", 100), Full);
        assert_eq!(ranged("items=0-1", 100), Full);
        assert_eq!(ranged("bytes=a-b", 100), Full);
        assert_eq!(ranged("bytes=-", 100), Full);
        assert_eq!(ranged("bytes", 100), Full);
    }

    #[test]
    fn if_range() {
        let mut r = req();
        r.range = Some(b"bytes=0-0");
        r.if_range = Some(b"\"abc-10\"");
        assert!(matches!(range(&r, &v(), 10), RangeAnswer::Partial { .. }));
        r.if_range = Some(b"\"old\"");
        assert_eq!(range(&r, &v(), 10), RangeAnswer::Full);
        r.if_range = Some(b"W/\"abc-10\"");
        assert_eq!(range(&r, &v(), 10), RangeAnswer::Full);
        // A date, even the file's exact Last-Modified, is weak: the whole
        // file (it may have been rewritten twice within that second).
        let same = date(1_000_000);
        let mut r2 = req();
        r2.range = Some(b"bytes=0-0");
        r2.if_range = Some(same.as_bytes());
        assert_eq!(range(&r2, &v(), 10), RangeAnswer::Full);
    }
}
