//! POSIX: a walk from the root descriptor, one `openat(O_NOFOLLOW)` per
//! name, so no symlink is ever followed and no step can leave the root (the
//! names hold no `.` or `..`). Used on every platform but Linux, on Linux
//! with the `portable` feature, and where `openat2` is refused.
//!
//! Directories on the way are opened `O_RDONLY | O_DIRECTORY` (POSIX has no
//! `O_PATH`), so each must be readable, not only searchable.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::owned_file;

/// Flags of the directories on the way.
const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Opens `rel` (plain names joined with `/`, or `.`) beneath `root` with
/// `flags` for the last name: `ELOOP` if any name is a symlink.
pub(super) fn open_no_symlinks(
    root: BorrowedFd<'_>,
    rel: &[u8],
    flags: libc::c_int,
) -> io::Result<File> {
    let mut names = rel.split(|&b| b == b'/').peekable();
    // The directory the next name is opened in: None is the root.
    let mut dir: Option<OwnedFd> = None;
    while let Some(name) = names.next() {
        let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
        let last = names.peek().is_none();
        if name.is_empty() || name == b".." || (name == b"." && !last) {
            // The caller normalised the path: nothing else reaches here.
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let how = if last {
            flags | libc::O_NOFOLLOW
        } else {
            DIR_FLAGS
        };
        let fd = loop {
            // SAFETY: `at` is an open directory descriptor (the root's or
            // one we own), `c` is NUL-terminated; openat returns a new
            // descriptor or -1.
            let fd = unsafe { libc::openat(at, c.as_ptr(), how) };
            if fd >= 0 {
                break fd;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A symlink with O_NOFOLLOW: ELOOP (Linux, macOS), EMLINK
                // (FreeBSD), ENOTDIR (with O_DIRECTORY on some systems).
                // Ask what the name is rather than trust the errno.
                Some(libc::ELOOP | libc::EMLINK | libc::ENOTDIR) if is_symlink(at, &c) => {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                _ => return Err(e),
            }
        };
        if last {
            // SAFETY: openat returned a new descriptor that we own.
            return Ok(unsafe { owned_file(fd) });
        }
        // SAFETY: openat returned a new descriptor that we own.
        dir = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Err(io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether `name` in the directory `at` is a symlink (lstat).
fn is_symlink(at: libc::c_int, name: &CString) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `at` is an open directory, `name` is NUL-terminated and `st`
    // a valid out-pointer.
    let r = unsafe {
        libc::fstatat(
            at,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    // SAFETY: fstatat returned 0: `st` is initialised.
    r == 0 && (unsafe { st.assume_init() }.st_mode & libc::S_IFMT) == libc::S_IFLNK
}
