//! Opening files beneath the root, and nothing else.
//!
//! On Linux 5.6+ every open is one `openat2(root_fd, rel, RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)`: the kernel resolves the path, symlinks included,
//! and fails with `EXDEV` if any step would leave the root. That is free of
//! check-then-use races. A symlink inside the root that leads elsewhere
//! inside the root is followed; an absolute one (refused by
//! `RESOLVE_BENEATH`) is resolved with `realpath`, checked to stay inside the
//! root, and the resolved path is then opened with `RESOLVE_NO_SYMLINKS`, so
//! a symlink swapped in after the check fails the open instead of escaping.
//!
//! Where `openat2` is missing (an older kernel, or a seccomp filter that
//! refuses it), the fallback is `realpath` + prefix check + `open` with
//! `O_NOFOLLOW` on the resolved path: only a directory swapped for a symlink
//! between the check and the open could escape, which needs write access to
//! the served tree.
//!
//! Every file is opened `O_NONBLOCK` (opening a FIFO must not block the loop)
//! and `O_NOCTTY`; only regular files are served.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The served directory: an `O_PATH` descriptor and its canonical path.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// `openat2` works here (checked on the first open).
    openat2: std::cell::Cell<bool>,
}

const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

impl Root {
    /// Opens the root directory.
    ///
    /// # Errors
    /// A message naming the path: missing, not a directory, unreadable.
    pub(crate) fn open(path: &Path) -> Result<Root, String> {
        let canonical =
            std::fs::canonicalize(path).map_err(|e| format!("root {}: {e}", path.display()))?;
        let c = cstring(canonical.as_os_str().as_bytes())
            .ok_or_else(|| format!("root {}: contains a NUL byte", path.display()))?;
        // SAFETY: `c` is NUL-terminated; open returns a new descriptor or -1.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(format!("root {}: {e}", path.display()));
        }
        // SAFETY: `fd` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let root = Root {
            fd,
            path: canonical,
            openat2: std::cell::Cell::new(true),
        };
        // Probe once: openat2 on the root itself. ENOSYS (Linux < 5.6) or
        // EPERM (a seccomp filter) means it is not there.
        if let Err(e) = root.openat2(b".", libc::RESOLVE_BENEATH) {
            if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
                root.openat2.set(false);
            }
        }
        Ok(root)
    }

    /// Whether opens go through `openat2` (else the `realpath` fallback).
    pub(crate) fn uses_openat2(&self) -> bool {
        self.openat2.get()
    }

    /// The canonical path of the root.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` (names joined with `/`, no `.` or `..`, no NUL; empty for
    /// the root itself) for reading, never outside the root.
    ///
    /// # Errors
    /// `NotFound` (also for a path through a non-directory), `PermissionDenied`
    /// (unreadable, or it would leave the root), or another I/O error.
    pub(crate) fn open_file(&self, rel: &[u8]) -> io::Result<File> {
        let rel = if rel.is_empty() { &b"."[..] } else { rel };
        if self.openat2.get() {
            match self.openat2(rel, libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    // openat2 went away (a seccomp filter installed later).
                    self.openat2.set(false);
                }
                // EXDEV: some step would leave the root, or an absolute
                // symlink (which RESOLVE_BENEATH never follows).
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    return self.open_resolved(rel, true);
                }
                other => return other.map_err(classify),
            }
        }
        self.open_resolved(rel, false)
    }

    /// `realpath`, check it is inside the root, open what it resolved to
    /// without following symlinks.
    fn open_resolved(&self, rel: &[u8], with_openat2: bool) -> io::Result<File> {
        let full = self.path.join(OsStr::from_bytes(rel));
        let resolved = std::fs::canonicalize(&full).map_err(classify)?;
        let inside = resolved
            .strip_prefix(&self.path)
            .map_err(|_| io::Error::from(io::ErrorKind::PermissionDenied))?;
        if with_openat2 {
            let inside = inside.as_os_str().as_bytes();
            let inside = if inside.is_empty() { &b"."[..] } else { inside };
            self.openat2(inside, libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS)
                .map_err(classify)
        } else {
            let c = cstring(resolved.as_os_str().as_bytes())
                .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: `c` is NUL-terminated; open returns a new descriptor or -1.
            let fd = unsafe { libc::open(c.as_ptr(), OPEN_FLAGS | libc::O_NOFOLLOW) };
            if fd < 0 {
                return Err(classify(io::Error::last_os_error()));
            }
            // SAFETY: `fd` is a descriptor we just opened and own.
            Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
    }

    fn openat2(&self, rel: &[u8], resolve: u64) -> io::Result<File> {
        let c = cstring(rel).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let how = OpenHow {
            flags: OPEN_FLAGS as u64,
            mode: 0,
            resolve,
        };
        // A concurrent rename anywhere on the system can make a
        // RESOLVE_BENEATH lookup fail with EAGAIN; it is safe to retry.
        for _ in 0..4 {
            // SAFETY: the root fd is open, `c` is NUL-terminated, `how` is a
            // valid open_how and its size is passed; the syscall returns a new
            // descriptor or -1.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd >= 0 {
                // SAFETY: the kernel returned a new descriptor that we own.
                return Ok(File::from(unsafe {
                    OwnedFd::from_raw_fd(fd as libc::c_int)
                }));
            }
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                return Err(e);
            }
        }
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }
}

/// `struct open_how` of openat2(2): three u64s, a fixed kernel ABI (libc's
/// copy is `#[non_exhaustive]` and cannot be built with a literal).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstring(bytes: &[u8]) -> Option<CString> {
    CString::new(bytes).ok()
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

    fn tree() -> (Tmp, Root) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!(
            "loopd-http-fs-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(base.join("secret.txt"), "SECRET").unwrap();
        std::fs::write(root.join("a.txt"), "A").unwrap();
        std::fs::write(root.join("sub/b.txt"), "B").unwrap();
        symlink("../secret.txt", root.join("rel-out")).unwrap();
        symlink(base.join("secret.txt"), root.join("abs-out")).unwrap();
        symlink("a.txt", root.join("rel-in")).unwrap();
        symlink(root.join("sub/b.txt"), root.join("abs-in")).unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        symlink(&base, root.join("dir-out")).unwrap();
        let r = Root::open(&root).unwrap();
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
        for escape in ["rel-out", "abs-out", "dir-out/secret.txt", "sub/up/rel-out"] {
            let e = read(root, escape).expect_err(escape);
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{escape}: {e}");
        }
        let e = read(root, "missing").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = read(root, "a.txt/x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(root.open_file(b"").unwrap().metadata().unwrap().is_dir());
    }

    #[test]
    fn opens_inside_and_refuses_escapes() {
        let (_tmp, root) = tree();
        let with_openat2 = root.uses_openat2();
        if !with_openat2 {
            eprintln!("openat2 is not available here: this test covers the fallback only");
        }
        check_tree(&root);
        // No escape attempt switched openat2 off.
        assert_eq!(root.uses_openat2(), with_openat2);
    }

    #[test]
    fn the_fallback_without_openat2_refuses_escapes_too() {
        let (_tmp, root) = tree();
        root.openat2.set(false);
        check_tree(&root);
    }
}
