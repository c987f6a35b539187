//! Listening sockets: TCP (IPv4 and IPv6, `SO_REUSEADDR`) and Unix-domain
//! streams, opened non-blocking with a deep accept backlog.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use loopd_handler_api::abi;

use crate::config::ListenAddr;
use crate::sys;

/// Accept backlog requested from the kernel (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// An open listener.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) fd: OwnedFd,
    /// The owning handler instance.
    pub(crate) instance: usize,
    /// `LOOPD_TRANSPORT_*` of accepted connections.
    pub(crate) transport: u32,
    /// The URL actually bound (a port of 0 replaced by the real one).
    pub(crate) url: Rc<CStr>,
    /// The socket file we created, removed again when the listener closes.
    unix_path: Option<(PathBuf, u64, u64)>,
    /// Not accepting for a moment after EMFILE/ENFILE.
    pub(crate) paused: bool,
}

impl Listener {
    /// Opens a stream listener for `addr`. UDP is not a stream listener.
    pub(crate) fn open(addr: &ListenAddr, instance: usize) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(sa) => {
                let fd = sys::bind_listener(sa, true, BACKLOG)?;
                let local = sys::local_addr(fd.as_raw_fd())
                    .to_socket_addr()
                    .unwrap_or(*sa);
                let url = format!("tcp://{local}");
                Ok(Listener {
                    fd,
                    instance,
                    transport: abi::LOOPD_TRANSPORT_TCP,
                    url: cstr(url),
                    unix_path: None,
                    paused: false,
                })
            }
            ListenAddr::Unix(path) => {
                clear_stale_socket(path)?;
                let l = UnixListener::bind(path)?;
                l.set_nonblocking(true)?;
                let meta = std::fs::symlink_metadata(path)?;
                let fd = OwnedFd::from(l);
                sys::set_backlog(fd.as_raw_fd(), BACKLOG)?;
                Ok(Listener {
                    fd,
                    instance,
                    transport: abi::LOOPD_TRANSPORT_UNIX,
                    url: cstr(addr.to_string()),
                    unix_path: Some((path.clone(), meta.dev(), meta.ino())),
                    paused: false,
                })
            }
            ListenAddr::Udp(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a udp address is not a stream listener",
            )),
        }
    }

    /// The (device, inode) of the socket file this listener created.
    pub(crate) fn unix_file(&self) -> Option<(u64, u64)> {
        self.unix_path.as_ref().map(|(_, dev, ino)| (*dev, *ino))
    }

    pub(crate) fn url_str(&self) -> &str {
        self.url.to_str().unwrap_or("?")
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket file, but only if it is still the one we bound:
        // another process may have replaced it since.
        if let Some((path, dev, ino)) = &self.unix_path {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.dev() == *dev && meta.ino() == *ino {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

pub(crate) fn cstr(s: String) -> Rc<CStr> {
    Rc::from(CString::new(s).unwrap_or_default().as_c_str())
}

/// A socket file left behind by a process that died is removed; one that a
/// live process still listens on is an error, and so is any other file.
fn clear_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; not replacing it",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("loopd-listener-{}-{name}", std::process::id()))
    }

    #[test]
    fn stale_socket_is_replaced_live_one_is_refused() {
        let path = tmp("stale.sock");
        let _ = std::fs::remove_file(&path);
        // A listener that is dropped without cleanup leaves a stale file.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = Listener::open(&ListenAddr::Unix(path.clone()), 0).expect("stale file replaced");
        let err = Listener::open(&ListenAddr::Unix(path.clone()), 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(live);
        assert!(!path.exists(), "socket file removed on close");
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let path = tmp("regular");
        std::fs::write(&path, b"keep me").unwrap();
        let err = Listener::open(&ListenAddr::Unix(path.clone()), 0).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tcp_port_zero_reports_the_real_port() {
        let l = Listener::open(&ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()), 0).unwrap();
        assert!(l.url_str().starts_with("tcp://127.0.0.1:"));
        assert!(!l.url_str().ends_with(":0"));
    }
}
