//! The http handler's path normalisation: request target → a path below
//! the root.
//!
//! Input: one flags byte (bit 0: `hidden_files`), then the request target.
//!
//! Checked on every input:
//! - the result never leaves the root: no `..`, `.` or empty name, no
//!   leading `/`, no NUL, backslash or control byte; the root joined with
//!   it, lexically normalised, is still below the root;
//! - no hidden name (one starting with `.`, `.well-known` aside) unless
//!   `hidden_files`;
//! - what a `..` would climb above the root is refused, never clamped: a
//!   reference model of RFC 3986 dot-segment removal agrees on every
//!   accepted path;
//! - the directory redirect's `Location` starts with exactly one `/` (never
//!   `//host`, an open redirect) and normalises back to the same path.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use loopd_http::fuzzing::{directory_url, normalize, split_target, PathError};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let hidden = flags & 1 != 0;
    check(raw, hidden);
    // The same bytes as a whole request target, as the server splits it.
    if let Ok(target) = std::str::from_utf8(raw) {
        if let Some((path, _query)) = split_target(target) {
            assert!(path.starts_with('/'), "split_target gave {path:?}");
            check(path.as_bytes(), hidden);
        }
    }
});

fn check(raw: &[u8], hidden: bool) {
    let (rel, _trailing) = match normalize(raw, hidden) {
        Ok(ok) => ok,
        Err(PathError::BadRequest | PathError::Forbidden | PathError::Hidden) => return,
    };
    assert!(
        !rel.starts_with(b"/") && !rel.ends_with(b"/"),
        "{rel:?} has a leading or trailing slash"
    );
    assert!(
        !rel.iter()
            .any(|&b| b == 0 || b == b'\\' || b < 0x20 || b == 0x7f),
        "{rel:?} holds a forbidden byte"
    );
    if !rel.is_empty() {
        for name in rel.split(|&b| b == b'/') {
            assert!(
                !matches!(name, b"" | b"." | b".."),
                "{:?} → {:?} has the name {:?}",
                String::from_utf8_lossy(raw),
                String::from_utf8_lossy(&rel),
                String::from_utf8_lossy(name)
            );
            if !hidden {
                assert!(
                    !name.starts_with(b".") || name == b".well-known",
                    "hidden name {:?} served",
                    String::from_utf8_lossy(name)
                );
            }
        }
    }
    // Joined to a root and normalised lexically, it stays below the root.
    let root = Path::new("/srv/root");
    let joined = root.join(OsStr::from_bytes(&rel));
    let mut depth = 0i64;
    for c in joined
        .strip_prefix(root)
        .expect("below the root")
        .components()
    {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            other => panic!("{rel:?}: component {other:?}"),
        }
        assert!(depth >= 0, "{rel:?} climbs above the root");
    }
    // The reference model: decode, then remove dot segments, refusing to
    // climb above the root.
    assert_eq!(
        model(raw).as_deref(),
        Some(&rel[..]),
        "{:?}",
        String::from_utf8_lossy(raw)
    );
    // The redirect for a directory: one leading slash, and it names the
    // same path again.
    let url = directory_url(&rel);
    assert!(url.starts_with('/') && !url.starts_with("//"), "{url:?}");
    assert_eq!(
        normalize(url.as_bytes(), hidden),
        Ok((rel.clone(), true)),
        "{url:?}"
    );
}

/// Percent-decodes (every `%` must start a valid escape, as the server
/// requires), then resolves `.` and `..` over the names; `None` when a
/// `..` would climb above the root.
fn model(raw: &[u8]) -> Option<Vec<u8>> {
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(raw[i]);
            i += 1;
        }
    }
    let mut names: Vec<&[u8]> = Vec::new();
    for name in decoded.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." => {
                names.pop()?;
            }
            n => names.push(n),
        }
    }
    Some(names.join(&b'/'))
}
