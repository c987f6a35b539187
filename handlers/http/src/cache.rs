//! The open-file cache: what a request path resolved to (an open descriptor
//! or, for a small file, its bytes; its size, validators and content type),
//! kept between requests so that a request for a cached path costs no
//! open, fstat, read or close.
//!
//! Freshness is checked cheaply: when an entry is used and its path was
//! last looked at `open_file_cache_ms` or more ago (1 ms by default; 0: at
//! every use), one `fstatat` of the path compares what the path names now
//! with what was opened: device, inode, size, mtime and ctime, with
//! nanoseconds. A file replaced (renamed over, as editors and deploy tools
//! do), deleted, rewritten in place, truncated, or made unreadable (chmod
//! changes the ctime) fails the comparison, and the path is opened again,
//! through every check of a first open (the root, the hidden-file rule).
//! Under load that is one stat per path per period, not per request; a
//! change is seen by every request that arrives more than the period (plus
//! the clock's millisecond) after it.
//!
//! Whatever the period, a response is one whole version of its file: a
//! body held in memory was read in one piece and checked (same size and
//! mtime before and after, nothing past its end), and a body read from the
//! descriptor is checked as it goes (`server.rs`). Only a rewrite that
//! keeps the size and the mtime to the nanosecond (and the ctime, for the
//! path check) could go unseen, which needs the clock to be set back, or a
//! change inside the file system's timestamp granularity.
//!
//! Entries are bounded in number (`open_file_cache_max`), small bodies in
//! total bytes ([`MEM_BUDGET`]); an entry unused for [`INACTIVE_MS`] is
//! dropped by a sweep that the next lookup makes once [`SWEEP_EVERY_MS`]
//! have passed (as nginx expires its cached files: on use, with no timer),
//! so a deleted file's descriptor does not keep its disk space for long
//! while requests come; an idle server keeps its entries until the next.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::rc::Rc;

use crate::cond::Validators;
use crate::fs::{Root, Stamp};

/// Files up to this size are held in memory by the cache (their
/// descriptor is closed at once).
pub(crate) const MEM_BODY_MAX: u64 = 16 * 1024;
/// The most bytes of file bodies the cache holds in memory.
pub(crate) const MEM_BUDGET: usize = 4 << 20;
/// An entry unused for this long is dropped.
pub(crate) const INACTIVE_MS: u64 = 60_000;
/// How often a lookup looks for unused entries.
pub(crate) const SWEEP_EVERY_MS: u64 = 10_000;

/// What a response's body is read from.
#[derive(Debug)]
pub(crate) enum Content {
    /// An open descriptor, read (or sent with sendfile) as the response goes.
    File(File),
    /// The whole file, read once and checked to be one version of it.
    Bytes(Box<[u8]>),
}

/// An opened file and what its responses say about it: shared by the
/// responses that send it, and kept in the cache.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) content: Content,
    /// What fstat said when it was opened: what its responses announce.
    pub(crate) stamp: Stamp,
    pub(crate) validators: Validators,
    pub(crate) last_modified: String,
    pub(crate) content_type: String,
    /// Its path below the root (the index file's, for a directory URL),
    /// for the freshness check.
    pub(crate) rel: CString,
}

impl Opened {
    /// The size its responses announce.
    pub(crate) fn len(&self) -> u64 {
        self.stamp.size
    }

    /// Whether the open file still has the size and mtime its response
    /// announced (one fstat). `Err` holds what it has now.
    pub(crate) fn unchanged(&self, file: &File) -> Result<(), Option<Stamp>> {
        match Stamp::of(file) {
            Ok(now) if now.size == self.stamp.size && now.mtime == self.stamp.mtime => Ok(()),
            Ok(now) => Err(Some(now)),
            Err(_) => Err(None),
        }
    }
}

#[derive(Debug)]
struct Entry {
    opened: Rc<Opened>,
    /// When its path was last compared with it (`Ctx::now_ms`).
    checked_ms: u64,
    /// When a request last used it.
    used_ms: u64,
}

/// The cache of one handler instance.
#[derive(Debug)]
pub(crate) struct OpenCache {
    /// Normalised request path (plus `/` for a directory URL) → entry.
    map: HashMap<Vec<u8>, Entry>,
    max: usize,
    valid_ms: u64,
    /// Bytes of `Content::Bytes` bodies held.
    body_bytes: usize,
    /// When unused entries were last looked for.
    swept_ms: u64,
}

impl OpenCache {
    /// A cache of at most `max` entries (0: none) whose paths are checked
    /// at most every `valid_ms` (0: at every use).
    pub(crate) fn new(max: usize, valid_ms: u64) -> OpenCache {
        OpenCache {
            map: HashMap::new(),
            max,
            valid_ms,
            body_bytes: 0,
            swept_ms: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max > 0
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a body of `len` bytes may be held in memory.
    pub(crate) fn may_hold(&self, len: u64) -> bool {
        self.enabled() && len <= MEM_BODY_MAX && self.body_bytes + len as usize <= MEM_BUDGET
    }

    /// The entry for `key` if what its path names is still what was opened.
    pub(crate) fn get(&mut self, key: &[u8], root: &Root, now: u64) -> Option<Rc<Opened>> {
        if now.saturating_sub(self.swept_ms) >= SWEEP_EVERY_MS {
            self.swept_ms = now;
            self.sweep(now);
        }
        let e = self.map.get_mut(key)?;
        if self.valid_ms == 0 || now.saturating_sub(e.checked_ms) >= self.valid_ms {
            match root.stamp_at(&e.opened.rel) {
                Ok(st) if st == e.opened.stamp => e.checked_ms = now,
                _ => {
                    self.remove(key);
                    return None;
                }
            }
        }
        e.used_ms = now;
        Some(e.opened.clone())
    }

    /// Keeps `opened` for `key`, making room first if the cache is full.
    pub(crate) fn insert(&mut self, key: Vec<u8>, opened: Rc<Opened>, now: u64) {
        if !self.enabled() {
            return;
        }
        self.remove(&key);
        if self.map.len() >= self.max {
            self.evict();
        }
        if let Content::Bytes(b) = &opened.content {
            self.body_bytes += b.len();
        }
        self.map.insert(
            key,
            Entry {
                opened,
                checked_ms: now,
                used_ms: now,
            },
        );
    }

    /// Drops every entry for `opened` (it was seen to change).
    pub(crate) fn forget(&mut self, opened: &Rc<Opened>) {
        let mut freed = 0;
        self.map.retain(|_, e| {
            let keep = !Rc::ptr_eq(&e.opened, opened);
            if !keep {
                freed += body_len(&e.opened);
            }
            keep
        });
        self.body_bytes -= freed;
    }

    /// Drops the entries unused for [`INACTIVE_MS`]; returns whether any
    /// are left.
    pub(crate) fn sweep(&mut self, now: u64) -> bool {
        let mut freed = 0;
        self.map.retain(|_, e| {
            let keep = now.saturating_sub(e.used_ms) < INACTIVE_MS;
            if !keep {
                freed += body_len(&e.opened);
            }
            keep
        });
        self.body_bytes -= freed;
        !self.map.is_empty()
    }

    /// Drops everything (descriptors are short, or the server stops).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.body_bytes = 0;
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.map.remove(key) {
            self.body_bytes -= body_len(&e.opened);
        }
    }

    /// Drops the least recently used eighth of the entries (at least one).
    fn evict(&mut self) {
        let mut used: Vec<u64> = self.map.values().map(|e| e.used_ms).collect();
        if used.is_empty() {
            return;
        }
        let n = (self.max / 8).clamp(1, used.len());
        let (below, cut, _) = used.select_nth_unstable(n - 1);
        let cut = *cut;
        // Exactly n: those used before `cut`, then as many used at `cut`
        // as are still needed (a burst of requests can leave many entries
        // with one timestamp, and dropping them all would empty the cache).
        let mut ties = n - below.iter().filter(|&&u| u < cut).count();
        let mut freed = 0;
        self.map.retain(|_, e| {
            let drop = e.used_ms < cut
                || (e.used_ms == cut && ties > 0 && {
                    ties -= 1;
                    true
                });
            if drop {
                freed += body_len(&e.opened);
            }
            !drop
        });
        self.body_bytes -= freed;
    }
}

fn body_len(o: &Opened) -> usize {
    match &o.content {
        Content::Bytes(b) => b.len(),
        Content::File(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn root() -> (Tmp, Root) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopd-http-cache-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = Root::open(&dir, false).unwrap();
        (Tmp(dir), root)
    }

    /// An entry for `name` (written with `body` first), held in memory
    /// when `bytes`.
    fn opened(tmp: &Tmp, root: &Root, name: &str, body: &[u8], bytes: bool) -> Rc<Opened> {
        std::fs::write(tmp.0.join(name), body).unwrap();
        let file = root.open_file(name.as_bytes()).unwrap();
        let stamp = Stamp::of(&file).unwrap();
        Rc::new(Opened {
            content: if bytes {
                Content::Bytes(body.into())
            } else {
                Content::File(file)
            },
            stamp,
            validators: Validators::new(stamp.ino, stamp.modified(), stamp.size),
            last_modified: String::new(),
            content_type: String::new(),
            rel: CString::new(name).unwrap(),
        })
    }

    #[test]
    fn an_entry_is_served_while_its_path_names_the_same_file() {
        let (tmp, root) = root();
        for valid_ms in [0, 1, 1000] {
            let mut c = OpenCache::new(8, valid_ms);
            let o = opened(&tmp, &root, "a", b"one", true);
            c.insert(b"a".to_vec(), o.clone(), 100);
            assert!(Rc::ptr_eq(&c.get(b"a", &root, 100).unwrap(), &o));
            assert!(c.get(b"b", &root, 100).is_none());
            // Replaced: seen at the next check.
            std::fs::write(tmp.0.join("a.new"), b"two").unwrap();
            std::fs::rename(tmp.0.join("a.new"), tmp.0.join("a")).unwrap();
            if valid_ms > 1 {
                // Within the period it is not looked at.
                assert!(c.get(b"a", &root, 100 + valid_ms - 1).is_some());
            }
            assert!(c.get(b"a", &root, 100 + valid_ms).is_none(), "{valid_ms}");
            assert_eq!(c.len(), 0);
            assert_eq!(c.body_bytes, 0);
        }
    }

    #[test]
    fn a_full_cache_drops_an_eighth_even_when_all_were_used_at_once() {
        let (tmp, root) = root();
        let mut c = OpenCache::new(16, 0);
        let o = opened(&tmp, &root, "a", b"x", true);
        for i in 0..16 {
            c.insert(format!("k{i}").into_bytes(), o.clone(), 5);
        }
        // All used in the same millisecond: two go, not sixteen.
        c.insert(b"new".to_vec(), o.clone(), 6);
        assert_eq!(c.len(), 15);
        assert_eq!(c.body_bytes, 15);
    }

    #[test]
    fn bodies_are_bounded_and_accounted() {
        let (tmp, root) = root();
        let mut c = OpenCache::new(1000, 0);
        assert!(c.may_hold(MEM_BODY_MAX));
        assert!(!c.may_hold(MEM_BODY_MAX + 1));
        let body = vec![7u8; MEM_BODY_MAX as usize];
        let mut n = 0;
        while c.may_hold(MEM_BODY_MAX) {
            let name = format!("f{n}");
            let o = opened(&tmp, &root, &name, &body, true);
            c.insert(name.into_bytes(), o, 1);
            n += 1;
        }
        assert_eq!(n, MEM_BUDGET / MEM_BODY_MAX as usize);
        assert!(c.body_bytes <= MEM_BUDGET);
        let first = c.get(b"f0", &root, 1).unwrap();
        c.forget(&first);
        assert_eq!(c.body_bytes, MEM_BUDGET - MEM_BODY_MAX as usize);
        assert!(c.may_hold(MEM_BODY_MAX));
        c.clear();
        assert_eq!((c.len(), c.body_bytes), (0, 0));
        // Off: holds nothing.
        let off = OpenCache::new(0, 0);
        assert!(!off.enabled() && !off.may_hold(1));
    }

    #[test]
    fn a_full_cache_drops_the_least_recently_used() {
        let (tmp, root) = root();
        let mut c = OpenCache::new(16, 0);
        for i in 0..16u64 {
            let name = format!("f{i}");
            let o = opened(&tmp, &root, &name, b"x", false);
            c.insert(name.into_bytes(), o, i);
        }
        // f0 is used again: the oldest are now f1 and f2.
        assert!(c.get(b"f0", &root, 100).is_some());
        let o = opened(&tmp, &root, "new", b"x", false);
        c.insert(b"new".to_vec(), o, 101);
        assert!(c.len() <= 16);
        assert!(c.get(b"f1", &root, 102).is_none());
        assert!(c.get(b"f0", &root, 102).is_some());
        assert!(c.get(b"new", &root, 102).is_some());
        assert!(c.get(b"f15", &root, 102).is_some());
    }

    #[test]
    fn the_sweep_drops_unused_entries() {
        let (tmp, root) = root();
        let mut c = OpenCache::new(16, 0);
        c.insert(b"a".to_vec(), opened(&tmp, &root, "a", b"a", true), 0);
        c.insert(b"b".to_vec(), opened(&tmp, &root, "b", b"b", false), 0);
        assert!(c.get(b"b", &root, INACTIVE_MS - 1).is_some());
        assert!(c.sweep(INACTIVE_MS));
        assert_eq!(c.len(), 1);
        assert_eq!(c.body_bytes, 0);
        assert!(!c.sweep(2 * INACTIVE_MS));
        assert_eq!(c.len(), 0);
        // Lookups sweep by themselves, every SWEEP_EVERY_MS.
        let t = 3 * INACTIVE_MS;
        c.insert(b"a".to_vec(), opened(&tmp, &root, "a", b"a", true), t);
        c.insert(b"b".to_vec(), opened(&tmp, &root, "b", b"b", true), t);
        assert!(c.get(b"b", &root, t + INACTIVE_MS / 2).is_some());
        assert_eq!(c.len(), 2);
        assert!(c.get(b"b", &root, t + INACTIVE_MS + 1).is_some());
        assert_eq!(c.len(), 1, "a, unused for INACTIVE_MS, is gone");
        assert_eq!(c.body_bytes, 1);
    }
}
