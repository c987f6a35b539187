//! Listening sockets handed over by the process that started loopd:
//! systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`) and a binary upgrade (`LOOPD_LISTEN_FDS`, set by the
//! old loopd for the new one).
//!
//! A listener whose address matches an inherited socket adopts it instead
//! of binding: no port is ever closed, so no connection is refused. Sockets
//! are matched by what they are bound to (`getsockname`), not by name, so
//! a systemd `.socket` unit needs no `FileDescriptorName=`; names are only
//! used in messages.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use crate::config::ListenAddr;
use crate::sys::{self, SocketName};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Inherited sockets not yet adopted by a listener.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    sockets: Vec<(OwnedFd, SocketName, String)>,
    /// A worker's copy: unused sockets are closed without a word (worker
    /// 0's set says it once).
    copy: bool,
}

impl Inherited {
    /// Takes the sockets the environment says this process inherited,
    /// and removes those variables (they are not meant for children).
    pub(crate) fn from_env() -> Inherited {
        let mut fds: Vec<(RawFd, String)> = Vec::new();
        let ours = std::process::id().to_string();
        if let (Ok(pid), Ok(n)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) {
            if pid.trim() == ours {
                let n: RawFd = n.trim().parse().unwrap_or(0);
                let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
                    .map(|s| s.split(':').map(str::to_string).collect())
                    .unwrap_or_default();
                for i in 0..n.clamp(0, 1024) {
                    let name = names
                        .get(i as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("systemd socket {i}"));
                    fds.push((LISTEN_FDS_START + i, name));
                }
            }
        }
        if let Ok(list) = std::env::var("LOOPD_LISTEN_FDS") {
            for fd in list
                .split(',')
                .filter_map(|f| f.trim().parse::<RawFd>().ok())
            {
                fds.push((fd, format!("inherited socket {fd}")));
            }
        }
        for var in [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "LOOPD_LISTEN_FDS",
        ] {
            std::env::remove_var(var);
        }
        let mut sockets = Vec::new();
        for (fd, name) in fds {
            if fd < 0 {
                continue;
            }
            let Some(sockname) = sys::socket_name(fd) else {
                log::warn!(
                    "{name} (fd {fd}) is not a bound TCP, UDP or Unix stream socket; ignored"
                );
                continue;
            };
            // SAFETY: the parent handed this descriptor to this process for
            // loopd to use; nothing else in the process owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if let Err(e) = sys::set_cloexec(owned.as_raw_fd(), true) {
                log::warn!("{name} (fd {fd}): {e}; ignored");
                continue;
            }
            log::debug!("inherited {name} (fd {fd}): {sockname:?}");
            sockets.push((owned, sockname, name));
        }
        Inherited {
            sockets,
            copy: false,
        }
    }

    /// Another worker's set: the same sockets, duplicated, so that every
    /// worker accepts from them (the kernel hands each connection to one).
    pub(crate) fn duplicate(&self) -> std::io::Result<Inherited> {
        let mut sockets = Vec::with_capacity(self.sockets.len());
        for (fd, sockname, name) in &self.sockets {
            sockets.push((fd.try_clone()?, sockname.clone(), name.clone()));
        }
        Ok(Inherited {
            sockets,
            copy: true,
        })
    }

    /// Adds worker 0's socket for a Unix listener to another worker's set.
    pub(crate) fn add_unix(&mut self, path: PathBuf, fd: OwnedFd) {
        let name = format!("worker 0's socket {}", path.display());
        self.sockets.push((fd, SocketName::Unix(path), name));
    }

    /// The inherited socket bound to `addr`, if there is one.
    pub(crate) fn take(&mut self, addr: &ListenAddr) -> Option<OwnedFd> {
        let at = self
            .sockets
            .iter()
            .position(|(_, name, _)| matches(name, addr))?;
        let (fd, _, name) = self.sockets.swap_remove(at);
        if self.copy {
            log::debug!("{addr}: using {name}");
        } else {
            log::info!("{addr}: using {name}, handed over by the parent process");
        }
        Some(fd)
    }

    /// Closes what no listener asked for, saying so.
    pub(crate) fn close_unused(&mut self) {
        for (_, sockname, name) in self.sockets.drain(..) {
            if self.copy {
                continue;
            }
            log::warn!("{name} ({sockname:?}) matches no listener of the config; closed");
        }
    }
}

fn matches(name: &SocketName, addr: &ListenAddr) -> bool {
    match (name, addr) {
        (
            SocketName::Inet {
                addr: a,
                stream: true,
            },
            ListenAddr::Tcp(b) | ListenAddr::Tls(b),
        )
        | (
            SocketName::Inet {
                addr: a,
                stream: false,
            },
            ListenAddr::Udp(b),
        ) => a == b || (b.port() == 0 && a.ip() == b.ip()),
        (SocketName::Unix(p), ListenAddr::Unix(q)) => p == q,
        _ => false,
    }
}
