//! Binary upgrade (SIGUSR2, `loopd upgrade`, `Runtime::upgrade`): the loopd
//! binary is started anew with this process's listening sockets, as
//! nginx's binary upgrade does. The new process adopts the sockets (they
//! never close, so no connection is refused), and once it is ready it sends
//! this one SIGTERM: this one stops accepting, lets its connections finish
//! and exits. If the new process fails first, this one keeps serving.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use crate::source::Source;
use crate::{Error, Runtime};

impl Runtime {
    /// Starts the `loopd` binary again (the file at the path this process
    /// was started from, so a new build there is what runs) with the same
    /// arguments and every open listening socket, for it to take over:
    /// it adopts the sockets (`Builder::inherit_listeners`) and, once
    /// ready, sends this process SIGTERM. Returns the new process's id.
    ///
    /// # Errors
    /// [`Error::System`] when the sockets cannot be handed over or the
    /// binary cannot be started, or an upgrade is already under way.
    pub fn upgrade(&mut self) -> Result<u32, Error> {
        let fail = |what: &str, source: std::io::Error| Error::System {
            what: format!("upgrading the binary: {what}"),
            source,
        };
        if let Some(child) = &mut self.successor {
            if child.try_wait().ok().flatten().is_none() {
                return Err(fail(
                    "an upgrade is already under way",
                    std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                ));
            }
        }
        let exe = std::env::current_exe().map_err(|e| fail("finding the binary", e))?;
        // A binary replaced on disk reads as "PATH (deleted)": the new
        // file at PATH is the one to start.
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(path) => std::path::PathBuf::from(path),
            None => exe,
        };
        let mut handed: Vec<OwnedFd> = Vec::new();
        {
            let core = self.core.borrow();
            for r in self.listener_records.iter().filter(|r| r.open) {
                let fd = match core.sources.get(r.id) {
                    Some(Source::Listener(l)) => l.fd.as_raw_fd(),
                    Some(Source::Datagram(d)) => d.sock.as_raw_fd(),
                    _ => continue,
                };
                // A copy without close-on-exec: the child inherits it.
                // SAFETY: fcntl on a descriptor this runtime owns.
                let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD, 3) };
                if dup < 0 {
                    return Err(fail(
                        "copying a listening socket",
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: F_DUPFD returned a new descriptor nobody else owns.
                handed.push(unsafe { OwnedFd::from_raw_fd(dup) });
            }
        }
        let list: Vec<String> = handed.iter().map(|f| f.as_raw_fd().to_string()).collect();
        let child = Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env("LOOPD_LISTEN_FDS", list.join(","))
            .env("LOOPD_UPGRADE_FROM", std::process::id().to_string())
            .spawn()
            .map_err(|e| fail(&format!("starting {}", exe.display()), e))?;
        // The child has its copies; ours close here.
        drop(handed);
        let pid = child.id();
        log::info!(
            "upgrade: started {} (process {pid}) with {} listening sockets; serving until it takes over",
            exe.display(),
            list.len()
        );
        self.successor = Some(child);
        Ok(pid)
    }

    /// While an upgrade is pending: a new process that exited before it
    /// took over leaves this one serving, with an error saying so.
    pub(crate) fn check_successor(&mut self) {
        let Some(child) = &mut self.successor else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            if self.core.borrow().shared.shutdown_deadline.is_none() {
                log::error!(
                    "upgrade: the new loopd (process {}) exited ({status}) before taking over; this one keeps serving",
                    child.id()
                );
            }
            self.successor = None;
        }
    }
}
