//! Listening sockets handed over by the process that started loopd:
//! systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`) and a binary upgrade (`LOOPD_LISTEN_FDS`, set by the
//! old loopd for the new one, with `LOOPD_LISTEN_WORKERS`, the worker each
//! socket was bound by, and `LOOPD_UPGRADE_WORKERS`, how many it ran).
//!
//! With workers, each has its own `SO_REUSEPORT` socket per TCP or UDP
//! address, and the kernel queues connections on every socket of the
//! group: the new process's worker K adopts the old worker K's sockets, so
//! none is left behind with connections queued on it. A systemd socket is
//! one for all workers: each gets a copy.
//!
//! A listener whose address matches an inherited socket adopts it instead
//! of binding: no port is ever closed, so no connection is refused. Sockets
//! are matched by what they are bound to (`getsockname`), not by name, so
//! a systemd `.socket` unit needs no `FileDescriptorName=`; names are only
//! used in messages.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::ListenAddr;
use crate::sys::{self, SocketName};

/// This process is built and serving: the Unix socket files of the sockets
/// it adopted are its own now, removed when it closes them. Until then
/// (a new process of a binary upgrade whose build fails) they belong to
/// the process that handed them over, which keeps serving on them.
static ADOPTION_CONFIRMED: AtomicBool = AtomicBool::new(false);

/// Marks the adopted sockets as this process's own (a build succeeded).
pub(crate) fn confirm_adoption() {
    ADOPTION_CONFIRMED.store(true, Ordering::SeqCst);
}

/// Whether [`confirm_adoption`] was called.
pub(crate) fn adoption_confirmed() -> bool {
    ADOPTION_CONFIRMED.load(Ordering::SeqCst)
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// One inherited socket: what it is bound to, its name in messages, and the
/// worker of the old loopd that bound it (`None`: one for every worker).
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    bound: SocketName,
    name: String,
    worker: Option<usize>,
}

/// Inherited sockets not yet adopted by a listener.
#[derive(Debug, Default)]
pub(crate) struct Inherited {
    sockets: Vec<Socket>,
    /// How many workers the loopd that handed the sockets over ran (a
    /// binary upgrade; `None` from systemd or an older loopd).
    from_workers: Option<usize>,
    /// A worker's copy: unused sockets are closed without a word (worker
    /// 0's set says it once).
    copy: bool,
}

impl Inherited {
    /// Takes the sockets the environment says this process inherited,
    /// and removes those variables (they are not meant for children).
    pub(crate) fn from_env() -> Inherited {
        let mut fds: Vec<(RawFd, String, Option<usize>)> = Vec::new();
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
                    fds.push((LISTEN_FDS_START + i, name, None));
                }
            }
        }
        let from_workers = std::env::var("LOOPD_UPGRADE_WORKERS")
            .ok()
            .and_then(|n| n.trim().parse::<usize>().ok());
        if let Ok(list) = std::env::var("LOOPD_LISTEN_FDS") {
            let owners = std::env::var("LOOPD_LISTEN_WORKERS").unwrap_or_default();
            let owners: Vec<Option<usize>> = owners
                .split(',')
                .map(|w| w.trim().parse::<usize>().ok())
                .collect();
            // Tags that do not pair up with the descriptors are not trusted:
            // every socket is then shared.
            let tagged = owners.len() == list.split(',').count();
            let mut owners = owners.into_iter().filter(|_| tagged);
            for fd in list.split(',') {
                let worker = owners.next().flatten();
                if let Ok(fd) = fd.trim().parse::<RawFd>() {
                    let name = match worker {
                        Some(w) if from_workers.is_some_and(|n| n > 1) => {
                            format!("inherited socket {fd} (worker {w}'s)")
                        }
                        _ => format!("inherited socket {fd}"),
                    };
                    fds.push((fd, name, worker));
                }
            }
        }
        for var in [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "LOOPD_LISTEN_FDS",
            "LOOPD_LISTEN_WORKERS",
            "LOOPD_UPGRADE_WORKERS",
        ] {
            std::env::remove_var(var);
        }
        let mut sockets = Vec::new();
        for (fd, name, worker) in fds {
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
            sockets.push(Socket {
                fd: owned,
                bound: sockname,
                name,
                worker,
            });
        }
        Inherited {
            sockets,
            from_workers,
            copy: false,
        }
    }

    /// Each of `count` workers' sets (one for a runtime without workers):
    /// a socket bound by worker K of the old loopd goes to worker K, one
    /// without a worker (systemd's) to every worker, each a copy, so all
    /// accept from it (the kernel hands each connection to one).
    ///
    /// # Errors
    /// A message when the old loopd ran another number of workers: its
    /// sockets cannot all be served (fewer workers) or the new ones could
    /// not join its sockets' `SO_REUSEPORT` groups alike (more), so a binary
    /// upgrade keeps the count. Or when a socket cannot be copied.
    pub(crate) fn split(mut self, count: usize) -> Result<Vec<Inherited>, String> {
        // Sockets per worker only matter when some address has several
        // (`SO_REUSEPORT`); one socket per address (workers = 1, or workers
        // that all shared systemd's) can be shared by any number of new ones.
        let ids: Vec<Option<(u64, u64)>> = self.sockets.iter().map(|s| identity(&s.fd)).collect();
        let several_per_address = (0..ids.len()).any(|i| {
            (0..i).any(|j| self.sockets[j].bound == self.sockets[i].bound && ids[j] != ids[i])
        });
        let per_worker = self
            .from_workers
            .filter(|&n| n > 1)
            .filter(|_| several_per_address);
        if per_worker.is_none() {
            // Each socket once (each old worker handed over its copy).
            let mut ids = ids.into_iter();
            let mut seen = Vec::new();
            self.sockets.retain(|_| {
                ids.next().flatten().is_none_or(|id| {
                    !seen.contains(&id) && {
                        seen.push(id);
                        true
                    }
                })
            });
        }
        if let Some(n) = per_worker.filter(|&n| n != count) {
            return Err(format!(
                "the loopd that started this one ran {n} workers and handed over their listening \
                 sockets ({} in all), but the config asks for {count}: a binary upgrade from \
                 several workers keeps their number (restart loopd to change it)",
                self.sockets.len()
            ));
        }
        let mut sets: Vec<Inherited> = (0..count)
            .map(|k| Inherited {
                sockets: Vec::new(),
                from_workers: self.from_workers,
                copy: k > 0,
            })
            .collect();
        for s in self.sockets {
            match s.worker {
                // Checked above: the old loopd's workers are this one's.
                Some(k) if per_worker.is_some() => {
                    let set = &mut sets[k.min(count - 1)];
                    set.sockets.push(s);
                }
                _ => {
                    for set in sets.iter_mut().skip(1) {
                        let fd =
                            s.fd.try_clone()
                                .map_err(|e| format!("copying {} for a worker: {e}", s.name))?;
                        set.sockets.push(Socket {
                            fd,
                            bound: s.bound.clone(),
                            name: s.name.clone(),
                            worker: None,
                        });
                    }
                    sets[0].sockets.push(s);
                }
            }
        }
        Ok(sets)
    }

    /// Adds worker 0's socket for a Unix listener to another worker's set.
    pub(crate) fn add_unix(&mut self, path: PathBuf, fd: OwnedFd) {
        let name = format!("worker 0's socket {}", path.display());
        self.sockets.push(Socket {
            fd,
            bound: SocketName::Unix(path),
            name,
            worker: None,
        });
    }

    /// The inherited socket bound to `addr`, if there is one.
    pub(crate) fn take(&mut self, addr: &ListenAddr) -> Option<OwnedFd> {
        let at = self.sockets.iter().position(|s| matches(&s.bound, addr))?;
        let s = self.sockets.swap_remove(at);
        if self.copy {
            log::debug!("{addr}: using {}", s.name);
        } else {
            log::info!(
                "{addr}: using {}, handed over by the parent process",
                s.name
            );
        }
        Some(s.fd)
    }

    /// Closes what no listener asked for, saying so.
    pub(crate) fn close_unused(&mut self) {
        for s in self.sockets.drain(..) {
            // A copy of a socket every worker got is worker 0's to report;
            // a socket this worker was handed alone is its own.
            if self.copy && s.worker.is_none() {
                continue;
            }
            log::warn!(
                "{} ({:?}) matches no listener of the config; closed",
                s.name,
                s.bound
            );
        }
    }
}

/// A socket's (device, inode): the same for every copy of it.
fn identity(fd: &OwnedFd) -> Option<(u64, u64)> {
    // SAFETY: fstat(2) on a descriptor `fd` keeps open, into a zeroed stat
    // this function owns.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd.as_raw_fd(), &mut st) == 0).then_some((st.st_dev as u64, st.st_ino as u64))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener};

    /// A bound TCP socket as an inherited one, from `worker`.
    fn socket(worker: Option<usize>) -> (Socket, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = Socket {
            fd: OwnedFd::from(l),
            bound: SocketName::Inet { addr, stream: true },
            name: format!("test socket {addr}"),
            worker,
        };
        (s, addr)
    }

    fn inode(fd: &OwnedFd) -> u64 {
        identity(fd).expect("fstat").1
    }

    #[test]
    fn each_worker_gets_its_own_sockets_and_a_copy_of_the_shared_ones() {
        let (a0, addr_a) = socket(Some(0));
        // Worker 1's socket for the same address (as SO_REUSEPORT binds it).
        let (mut a1, _) = socket(Some(1));
        a1.bound = SocketName::Inet {
            addr: addr_a,
            stream: true,
        };
        let (shared, addr_s) = socket(None);
        let (i0, i1, is) = (inode(&a0.fd), inode(&a1.fd), inode(&shared.fd));
        let all = Inherited {
            sockets: vec![a0, a1, shared],
            from_workers: Some(2),
            copy: false,
        };
        let mut sets = all.split(2).unwrap();
        assert_eq!(sets.len(), 2);
        let inodes =
            |s: &Inherited| -> Vec<u64> { s.sockets.iter().map(|s| inode(&s.fd)).collect() };
        assert_eq!(inodes(&sets[0]), vec![i0, is]);
        // Worker 1: its own socket, then its copy of the shared one.
        assert_eq!(inodes(&sets[1]), vec![i1, is]);
        assert!(!sets[0].copy && sets[1].copy);
        // Worker 1 adopts its own socket for the address (not worker 0's).
        let fd = sets[1].take(&ListenAddr::Tcp(addr_a)).unwrap();
        assert_eq!(inode(&fd), i1);
        let fd = sets[0].take(&ListenAddr::Tcp(addr_a)).unwrap();
        assert_eq!(inode(&fd), i0);
        // The shared one: a copy each, the same socket.
        let s0 = sets[0].take(&ListenAddr::Tcp(addr_s)).unwrap();
        let s1 = sets[1].take(&ListenAddr::Tcp(addr_s)).unwrap();
        assert_eq!((inode(&s0), inode(&s1)), (is, is));
        assert_ne!(s0.as_raw_fd(), s1.as_raw_fd());
    }

    #[test]
    fn another_number_of_workers_than_the_old_loopd_ran_is_refused() {
        for count in [1, 3] {
            // Two SO_REUSEPORT sockets on one address, one per old worker.
            let (a0, addr) = socket(Some(0));
            let (mut a1, _) = socket(Some(1));
            a1.bound = SocketName::Inet { addr, stream: true };
            let all = Inherited {
                sockets: vec![a0, a1],
                from_workers: Some(2),
                copy: false,
            };
            let e = all.split(count).unwrap_err();
            assert!(
                e.contains("ran 2 workers") && e.contains(&format!("asks for {count}")),
                "{e}"
            );
        }
    }

    #[test]
    fn workers_that_shared_one_socket_may_be_followed_by_any_number() {
        // Both old workers handed over their copy of one (systemd) socket.
        let (s0, addr) = socket(Some(0));
        let i = inode(&s0.fd);
        let s1 = Socket {
            fd: s0.fd.try_clone().unwrap(),
            bound: s0.bound.clone(),
            name: "worker 1's copy".to_string(),
            worker: Some(1),
        };
        let all = Inherited {
            sockets: vec![s0, s1],
            from_workers: Some(2),
            copy: false,
        };
        let mut sets = all.split(3).unwrap();
        for set in &mut sets {
            // Once each: no second copy left over to be closed as unused.
            assert_eq!(set.sockets.len(), 1);
            assert_eq!(inode(&set.take(&ListenAddr::Tcp(addr)).unwrap()), i);
        }
    }

    #[test]
    fn one_old_worker_s_sockets_are_shared_by_any_number_of_new_ones() {
        let (s, addr) = socket(Some(0));
        let i = inode(&s.fd);
        let all = Inherited {
            sockets: vec![s],
            from_workers: Some(1),
            copy: false,
        };
        let mut sets = all.split(3).unwrap();
        for set in &mut sets {
            assert_eq!(inode(&set.take(&ListenAddr::Tcp(addr)).unwrap()), i);
        }
    }
}
