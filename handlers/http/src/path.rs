//! Request target → a path relative to the root: percent-decoding and
//! normalisation, before anything touches the file system.
//!
//! The order matters: decode first, then split on `/` and resolve `.` and
//! `..`. An encoded `..` (`%2e%2e`) or an encoded slash (`%2f`) is therefore
//! resolved like the plain one, and a `..` that would climb above the root is
//! refused instead of clamped. What comes out is a list of plain names that
//! the file layer opens beneath the root directory (see `fs.rs`, which also
//! refuses symlinks that lead outside it).

/// Why a request path cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path, or a `%` not followed by two hex digits: 400.
    BadRequest,
    /// Climbs above the root, or holds a NUL, a backslash or a control
    /// character once decoded: 403.
    Forbidden,
    /// A hidden file or directory (a name starting with `.`): 404.
    Hidden,
}

/// A normalised request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReqPath {
    /// The names below the root joined with `/`, without a leading or
    /// trailing slash; empty for the root itself.
    pub(crate) rel: Vec<u8>,
    /// The request named a directory form (`/docs/`, `/docs/.`, `/`).
    pub(crate) trailing_slash: bool,
}

impl ReqPath {
    /// The path as a URL path, percent-encoded, with a leading `/` and a
    /// trailing `/`: the `Location` of a directory redirect. Built from the
    /// normalised names, never from the raw target, so it always starts
    /// with exactly one `/` (never `//host`, an open redirect).
    pub(crate) fn directory_url(&self) -> String {
        let mut url = String::with_capacity(self.rel.len() + 2);
        url.push('/');
        for &b in &self.rel {
            if is_url_path_char(b) {
                url.push(b as char);
            } else {
                url.push('%');
                url.push(HEX[usize::from(b >> 4)] as char);
                url.push(HEX[usize::from(b & 15)] as char);
            }
        }
        if !self.rel.is_empty() {
            url.push('/');
        }
        url
    }

    /// The extension of the last name, if it has one (`"css"` for `a/b.css`).
    pub(crate) fn extension(rel: &[u8]) -> Option<&[u8]> {
        let name = rel.rsplit(|&b| b == b'/').next()?;
        let dot = name.iter().rposition(|&b| b == b'.')?;
        // ".bashrc" has no extension; "a." has an empty one.
        (dot > 0 && dot + 1 < name.len()).then(|| &name[dot + 1..])
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 3986's `unreserved` and `sub-delims` characters.
pub(crate) fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// Characters left as they are in a path we write into a header.
fn is_url_path_char(b: u8) -> bool {
    is_unreserved_or_sub_delim(b) || matches!(b, b':' | b'@' | b'/')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `raw`.
///
/// # Errors
/// [`PathError::BadRequest`] for a `%` not followed by two hex digits.
pub(crate) fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value);
            let lo = raw.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(PathError::BadRequest),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// Whether a name is hidden: it starts with `.` and is not `.well-known`
/// (RFC 8615), which is always served.
pub(crate) fn is_hidden(name: &[u8]) -> bool {
    name.first() == Some(&b'.') && name != b".well-known"
}

/// Decodes and normalises the path part of a request target (no query).
///
/// # Errors
/// See [`PathError`].
pub(crate) fn normalize(raw: &[u8], hidden_files: bool) -> Result<ReqPath, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::BadRequest);
    }
    let decoded = percent_decode(raw)?;
    if decoded
        .iter()
        .any(|&b| b == 0 || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        return Err(PathError::Forbidden);
    }
    let mut names: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = true;
    for name in decoded.split(|&b| b == b'/') {
        match name {
            b"" => {}
            b"." => trailing_slash = true,
            b".." => {
                if names.pop().is_none() {
                    return Err(PathError::Forbidden);
                }
                trailing_slash = true;
            }
            _ => {
                names.push(name);
                trailing_slash = false;
            }
        }
    }
    if decoded.last() == Some(&b'/') {
        trailing_slash = true;
    }
    if !hidden_files && names.iter().any(|n| is_hidden(n)) {
        return Err(PathError::Hidden);
    }
    Ok(ReqPath {
        rel: names.join(&b'/'),
        trailing_slash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, bool) {
        let p = normalize(raw.as_bytes(), false).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        (String::from_utf8(p.rel).unwrap(), p.trailing_slash)
    }

    fn err(raw: &str) -> PathError {
        normalize(raw.as_bytes(), false).expect_err(raw)
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("/"), ("".into(), true));
        assert_eq!(ok("/index.html"), ("index.html".into(), false));
        assert_eq!(ok("/docs/"), ("docs".into(), true));
        assert_eq!(ok("/docs"), ("docs".into(), false));
        assert_eq!(ok("//docs//a.txt"), ("docs/a.txt".into(), false));
    }

    #[test]
    fn dots_resolve_inside_the_root() {
        assert_eq!(ok("/a/./b"), ("a/b".into(), false));
        assert_eq!(ok("/a/../b"), ("b".into(), false));
        assert_eq!(ok("/a/b/.."), ("a".into(), true));
        assert_eq!(ok("/a/."), ("a".into(), true));
        assert_eq!(ok("/a/%2e%2e/b"), ("b".into(), false));
        assert_eq!(ok("/a%2fb"), ("a/b".into(), false));
        assert_eq!(ok("/a..b/c"), ("a..b/c".into(), false));
    }

    #[test]
    fn climbing_out_is_forbidden() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/%2E%2E%2Fx",
            "/a/%2e%2e%2f%2e%2e/x",
            "/..%2fx",
        ] {
            assert_eq!(err(raw), PathError::Forbidden, "{raw}");
        }
    }

    #[test]
    fn nul_backslash_and_controls_are_forbidden() {
        for raw in ["/a%00b", "/a%5c..%5cb", "/a%0ab", "/a%7f", "/a\\b"] {
            assert_eq!(err(raw), PathError::Forbidden, "{raw}");
        }
    }

    #[test]
    fn malformed_encoding_and_non_origin_form_are_bad_requests() {
        for raw in ["/a%", "/a%2", "/a%zz", "/a%%41", "a/b", ""] {
            assert_eq!(err(raw), PathError::BadRequest, "{raw}");
        }
    }

    #[test]
    fn hidden_names_are_refused_unless_allowed() {
        assert_eq!(err("/.git/config"), PathError::Hidden);
        assert_eq!(err("/a/.env"), PathError::Hidden);
        assert_eq!(err("/%2egit/HEAD"), PathError::Hidden);
        assert_eq!(ok("/.well-known/x"), (".well-known/x".into(), false));
        let p = normalize(b"/.env", true).unwrap();
        assert_eq!(p.rel, b".env");
    }

    #[test]
    fn directory_urls_are_encoded_and_single_slashed() {
        let url = |raw: &str| normalize(raw.as_bytes(), false).unwrap().directory_url();
        assert_eq!(url("/docs"), "/docs/");
        assert_eq!(url("//evil.example"), "/evil.example/");
        assert_eq!(url("/a%20b/c"), "/a%20b/c/");
        assert_eq!(url("/%22%3C%3E"), "/%22%3C%3E/");
        assert_eq!(url("/"), "/");
    }

    #[test]
    fn extensions() {
        assert_eq!(ReqPath::extension(b"a/b.css"), Some(&b"css"[..]));
        assert_eq!(ReqPath::extension(b"a.tar.gz"), Some(&b"gz"[..]));
        assert_eq!(ReqPath::extension(b"a/.bashrc"), None);
        assert_eq!(ReqPath::extension(b"a.d/noext"), None);
        assert_eq!(ReqPath::extension(b"a."), None);
    }
}
