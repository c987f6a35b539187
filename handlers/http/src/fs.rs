//! Opening files beneath the root, and nothing else.
//!
//! Every open first tries the path as it is, **following no symlink at all**:
//! on Linux 5.6+ that is one `openat2(root_fd, rel, RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (`linux.rs`); elsewhere, or
//! with the `portable` feature, or where `openat2` is refused, a walk from
//! the root descriptor, one `openat(dir, name, O_NOFOLLOW)` per name
//! (`posix.rs`). The names were normalised before (no `.`, no `..`, hidden
//! names refused by `path.rs`), so what opens is exactly what was checked,
//! free of check-then-use races.
//!
//! A path with a symlink in it fails that first open (`ELOOP`). It is then
//! resolved with `realpath`, which must land inside the root, and every name
//! of the resolved path (below the root) must pass the hidden-file rule: a
//! `visible -> .secret` or `pubgit -> .git` link is as hidden as its target.
//! The resolved path is then opened again following no symlink, so a link
//! swapped in after the check fails the open instead of escaping.
//!
//! Every file is opened `O_NONBLOCK` (opening a FIFO must not block the loop)
//! and `O_NOCTTY`; only regular files are served.

use std::cell::Cell;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[cfg(all(target_os = "linux", not(feature = "portable")))]
mod linux;
mod posix;

/// How files are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: one system
    /// call per open (Linux 5.6+).
    #[cfg(all(target_os = "linux", not(feature = "portable")))]
    Openat2,
    /// A walk from the root, `openat(O_NOFOLLOW)` per name: POSIX.
    Walk,
}

impl Backend {
    /// How the start-up log line names it.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            #[cfg(all(target_os = "linux", not(feature = "portable")))]
            Backend::Openat2 => "openat2 RESOLVE_BENEATH",
            Backend::Walk => "openat O_NOFOLLOW, name by name",
        }
    }
}

/// Flags of every file open.
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// The served directory: a descriptor and its canonical path.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
    hidden_files: bool,
    backend: Cell<Backend>,
}

/// What a file's metadata says about which file it is and whether it
/// changed: the device and inode, the size, the modification and change
/// times (with nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
    /// `S_IFMT` bits of the mode.
    pub(crate) kind: libc::mode_t,
}

impl Stamp {
    fn from_stat(st: &libc::stat) -> Stamp {
        #[allow(clippy::unnecessary_cast)] // the field types differ by platform
        Stamp {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
            kind: st.st_mode & libc::S_IFMT,
        }
    }

    /// The metadata of an open file (fstat(2)).
    pub(crate) fn of(file: &File) -> io::Result<Stamp> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: the descriptor is open for the call and `st` is a valid
        // out-pointer; fstat fills it when it returns 0.
        if unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat returned 0: `st` is initialised.
        Ok(Stamp::from_stat(unsafe { &st.assume_init() }))
    }

    pub(crate) fn is_file(&self) -> bool {
        self.kind == libc::S_IFREG
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// The modification time as a `SystemTime`.
    pub(crate) fn modified(&self) -> std::time::SystemTime {
        let (s, ns) = self.mtime;
        let ns = ns.clamp(0, 999_999_999) as u32;
        if s >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::new(s as u64, ns)
        } else {
            std::time::UNIX_EPOCH
        }
    }
}

impl Root {
    /// Opens the root directory.
    ///
    /// # Errors
    /// A message naming the path: missing, not a directory, unreadable.
    pub(crate) fn open(path: &Path, hidden_files: bool) -> Result<Root, String> {
        let canonical =
            std::fs::canonicalize(path).map_err(|e| format!("root {}: {e}", path.display()))?;
        let c = cstring(canonical.as_os_str().as_bytes())
            .ok_or_else(|| format!("root {}: contains a NUL byte", path.display()))?;
        // SAFETY: `c` is NUL-terminated; open returns a new descriptor or -1.
        let fd = unsafe { libc::open(c.as_ptr(), ROOT_FLAGS) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(format!("root {}: {e}", path.display()));
        }
        // SAFETY: `fd` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let root = Root {
            fd,
            path: canonical,
            hidden_files,
            backend: Cell::new(Backend::Walk),
        };
        #[cfg(all(target_os = "linux", not(feature = "portable")))]
        if linux::available(root.fd.as_fd()) {
            root.backend.set(Backend::Openat2);
        }
        Ok(root)
    }

    /// How opens are made.
    pub(crate) fn backend(&self) -> Backend {
        self.backend.get()
    }

    /// Forces the POSIX walk (the unit tests cover both on Linux).
    #[cfg(test)]
    pub(crate) fn force_walk(&self) {
        self.backend.set(Backend::Walk);
    }

    /// The canonical path of the root.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` (names joined with `/`, no `.` or `..`, no NUL, each name
    /// already checked against the hidden-file rule; empty for the root
    /// itself) for reading, never outside the root and never through a
    /// symlink to a hidden name.
    ///
    /// # Errors
    /// `NotFound` (also for a path through a non-directory, and for a
    /// symlink to a hidden name), `PermissionDenied` (unreadable, or it
    /// would leave the root), or another I/O error.
    pub(crate) fn open_file(&self, rel: &[u8]) -> io::Result<File> {
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        match self.open_no_symlinks(rel) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => self.open_through_symlinks(rel),
            other => other.map_err(classify),
        }
    }

    /// The metadata of what `rel` names now, following symlinks (one
    /// fstatat(2)): only compared with the stamp of a file opened safely
    /// before, never used to open anything.
    pub(crate) fn stamp_at(&self, rel: &CString) -> io::Result<Stamp> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: the root descriptor is open, `rel` is NUL-terminated and
        // `st` a valid out-pointer; fstatat fills it when it returns 0.
        let r = unsafe { libc::fstatat(self.fd.as_raw_fd(), rel.as_ptr(), st.as_mut_ptr(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat returned 0: `st` is initialised.
        Ok(Stamp::from_stat(unsafe { &st.assume_init() }))
    }

    /// Opens `rel` beneath the root following no symlink: `ELOOP` if one
    /// is on the way.
    fn open_no_symlinks(&self, rel: &[u8]) -> io::Result<File> {
        let root = self.fd.as_fd();
        match self.backend.get() {
            #[cfg(all(target_os = "linux", not(feature = "portable")))]
            Backend::Openat2 => match linux::open_no_symlinks(root, rel) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    // openat2 went away (a seccomp filter installed later):
                    // walk from now on.
                    self.backend.set(Backend::Walk);
                    posix::open_no_symlinks(root, rel, OPEN_FLAGS)
                }
                other => other,
            },
            Backend::Walk => posix::open_no_symlinks(root, rel, OPEN_FLAGS),
        }
    }

    /// A path with a symlink on the way: `realpath`, check that it stays
    /// inside the root and names nothing hidden, open what it resolved to
    /// without following symlinks.
    fn open_through_symlinks(&self, rel: &[u8]) -> io::Result<File> {
        let full = self.path.join(OsStr::from_bytes(rel));
        let resolved = std::fs::canonicalize(&full).map_err(classify)?;
        let inside = resolved
            .strip_prefix(&self.path)
            .map_err(|_| io::Error::from(io::ErrorKind::PermissionDenied))?;
        if !self.hidden_files
            && inside
                .iter()
                .any(|name| crate::path::is_hidden(name.as_bytes()))
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "a symlink to a hidden name",
            ));
        }
        let inside = inside.as_os_str().as_bytes();
        let inside = if inside.is_empty() { &b"."[..] } else { inside };
        self.open_no_symlinks(inside).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                // A symlink appeared on the checked path since realpath.
                io::Error::new(io::ErrorKind::PermissionDenied, e)
            } else {
                classify(e)
            }
        })
    }
}

/// The root descriptor: `O_PATH` where openat2 may use it (no read
/// permission needed on the root), a plain read-only directory elsewhere.
#[cfg(all(target_os = "linux", not(feature = "portable")))]
const ROOT_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
#[cfg(not(all(target_os = "linux", not(feature = "portable"))))]
const ROOT_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

fn cstring(bytes: &[u8]) -> Option<CString> {
    CString::new(bytes).ok()
}

/// A new descriptor returned by a system call, owned.
///
/// # Safety
/// `fd` must be a descriptor the caller owns and nothing else closes.
unsafe fn owned_file(fd: libc::c_int) -> File {
    // SAFETY: the caller promises `fd` is ours.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Maps the errors a lookup can give to what the client is told:
/// ENOENT/ENOTDIR/ENAMETOOLONG → not found; EACCES/ELOOP/EXDEV → forbidden.
fn classify(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => {
            io::Error::new(io::ErrorKind::NotFound, e)
        }
        Some(libc::EACCES | libc::EPERM | libc::ELOOP | libc::EXDEV) => {
            io::Error::new(io::ErrorKind::PermissionDenied, e)
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(hidden_files: bool) -> (Tmp, Root) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!(
            "loopd-http-fs-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(root.join(".well-known")).unwrap();
        std::fs::write(base.join("secret.txt"), "SECRET").unwrap();
        std::fs::write(root.join("a.txt"), "A").unwrap();
        std::fs::write(root.join("sub/b.txt"), "B").unwrap();
        std::fs::write(root.join(".secret"), "HIDDEN").unwrap();
        std::fs::write(root.join(".git/config"), "GIT").unwrap();
        std::fs::write(root.join(".well-known/w.txt"), "W").unwrap();
        symlink("../secret.txt", root.join("rel-out")).unwrap();
        symlink(base.join("secret.txt"), root.join("abs-out")).unwrap();
        symlink("a.txt", root.join("rel-in")).unwrap();
        symlink(root.join("sub/b.txt"), root.join("abs-in")).unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        symlink(&base, root.join("dir-out")).unwrap();
        symlink(".secret", root.join("visible-link")).unwrap();
        symlink(".git", root.join("pubgit")).unwrap();
        symlink("../.git/config", root.join("sub/cfg")).unwrap();
        symlink(".well-known", root.join("wk")).unwrap();
        let r = Root::open(&root, hidden_files).unwrap();
        (Tmp(base), r)
    }

    fn read(root: &Root, rel: &str) -> io::Result<String> {
        let mut s = String::new();
        root.open_file(rel.as_bytes())?.read_to_string(&mut s)?;
        Ok(s)
    }

    fn check_tree(root: &Root) {
        assert_eq!(read(root, "a.txt").unwrap(), "A");
        assert_eq!(read(root, "sub/b.txt").unwrap(), "B");
        assert_eq!(read(root, "rel-in").unwrap(), "A");
        assert_eq!(read(root, "abs-in").unwrap(), "B");
        assert_eq!(read(root, "sub/up/a.txt").unwrap(), "A");
        assert_eq!(read(root, "dir-out/root/a.txt").unwrap(), "A");
        assert_eq!(read(root, "wk/w.txt").unwrap(), "W");
        for escape in ["rel-out", "abs-out", "dir-out/secret.txt", "sub/up/rel-out"] {
            let e = read(root, escape).expect_err(escape);
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{escape}: {e}");
        }
        let e = read(root, "missing").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = read(root, "a.txt/x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = read(root, "sub/missing/x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(root.open_file(b"").unwrap().metadata().unwrap().is_dir());
        assert!(root.open_file(b"sub").unwrap().metadata().unwrap().is_dir());
    }

    fn check_hidden_targets(root: &Root, hidden_files: bool) {
        for (link, body) in [
            ("visible-link", "HIDDEN"),
            ("pubgit/config", "GIT"),
            ("sub/cfg", "GIT"),
        ] {
            match read(root, link) {
                Ok(s) => {
                    assert!(hidden_files, "{link} served with hidden_files = false");
                    assert_eq!(s, body);
                }
                Err(e) => {
                    assert!(!hidden_files, "{link}: {e}");
                    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{link}: {e}");
                }
            }
        }
        let dir = root.open_file(b"pubgit");
        assert_eq!(dir.is_ok(), hidden_files);
    }

    #[test]
    fn opens_inside_and_refuses_escapes() {
        let (_tmp, root) = tree(false);
        let backend = root.backend();
        eprintln!("backend: {}", backend.describe());
        check_tree(&root);
        check_hidden_targets(&root, false);
        // No escape attempt switched the backend.
        assert_eq!(root.backend(), backend);
    }

    #[test]
    fn the_posix_walk_refuses_escapes_too() {
        let (_tmp, root) = tree(false);
        root.force_walk();
        check_tree(&root);
        check_hidden_targets(&root, false);
        assert_eq!(root.backend(), Backend::Walk);
    }

    #[test]
    fn symlinks_to_hidden_names_are_served_when_hidden_files_are() {
        for walk in [false, true] {
            let (_tmp, root) = tree(true);
            if walk {
                root.force_walk();
            }
            check_tree(&root);
            check_hidden_targets(&root, true);
        }
    }

    #[test]
    fn a_fifo_neither_blocks_nor_counts_as_a_file() {
        let (tmp, root) = tree(false);
        let fifo = CString::new(tmp.0.join("root/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: `fifo` is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        for walk in [false, true] {
            if walk {
                root.force_walk();
            }
            // O_NONBLOCK: opening a FIFO with no writer returns at once.
            let f = root.open_file(b"fifo").unwrap();
            let stamp = Stamp::of(&f).unwrap();
            assert!(!stamp.is_file() && !stamp.is_dir());
        }
    }

    #[test]
    fn stamps_tell_files_apart_and_see_changes() {
        let (tmp, root) = tree(false);
        let f = root.open_file(b"a.txt").unwrap();
        let s = Stamp::of(&f).unwrap();
        assert!(s.is_file());
        assert_eq!(s.size, 1);
        let at = root.stamp_at(&CString::new("a.txt").unwrap()).unwrap();
        assert_eq!(at, s);
        let other = root.stamp_at(&CString::new("sub/b.txt").unwrap()).unwrap();
        assert_ne!(other.ino, s.ino);
        std::fs::write(tmp.0.join("root/a.txt"), "AA").unwrap();
        assert_ne!(Stamp::of(&f).unwrap(), s);
    }
}
