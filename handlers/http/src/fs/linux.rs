//! Linux 5.6+: one `openat2` per open, resolved by the kernel beneath the
//! root with no symlink followed.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::{owned_file, OPEN_FLAGS};

/// `struct open_how` of openat2(2): three u64s, a fixed kernel ABI (libc's
/// copy is `#[non_exhaustive]` and cannot be built with a literal).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Whether openat2 works here: ENOSYS (Linux < 5.6) or EPERM (a seccomp
/// filter) on the root itself means it does not.
pub(super) fn available(root: BorrowedFd<'_>) -> bool {
    !matches!(
        open_no_symlinks(root, b".").map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENOSYS | libc::EPERM))
    )
}

/// Opens `rel` beneath `root`: `EXDEV` if a step would leave it, `ELOOP`
/// if a symlink is on the way.
pub(super) fn open_no_symlinks(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<File> {
    let c = CString::new(rel).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let how = OpenHow {
        flags: OPEN_FLAGS as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // A concurrent rename anywhere on the system can make a RESOLVE_BENEATH
    // lookup fail with EAGAIN; it is safe to retry.
    for _ in 0..4 {
        // SAFETY: the root fd is open, `c` is NUL-terminated, `how` is a
        // valid open_how and its size is passed; the syscall returns a new
        // descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor that we own.
            return Ok(unsafe { owned_file(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}
