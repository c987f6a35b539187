//! Binary upgrade (SIGUSR2, `loopd upgrade`, `Runtime::upgrade`): the loopd
//! binary is started anew with this process's listening sockets, as
//! nginx's binary upgrade does. The new process adopts the sockets (they
//! never close, so no connection is refused), and once it is ready it sends
//! this one SIGTERM: this one stops accepting, lets its connections finish
//! and exits. If the new process fails first, this one keeps serving.
//!
//! With workers, worker 0 starts it with every worker's sockets (each has
//! its own `SO_REUSEPORT` socket per TCP and UDP address, and connections
//! queue on all of them), each tagged with its worker: the new process's
//! worker K adopts old worker K's (`inherit.rs`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::source::Source;
use crate::{Error, Runtime};

/// How long worker 0 waits for another worker's sockets (each answers at
/// its next pass).
const SOCKETS_TIMEOUT: Duration = Duration::from_secs(2);

impl Runtime {
    /// Starts the `loopd` binary again (the file at the path this process
    /// was started from, so a new build there is what runs) with the same
    /// arguments and every open listening socket, for it to take over:
    /// it adopts the sockets (`Builder::inherit_listeners`) and, once
    /// ready, sends this process SIGTERM. Returns the new process's id.
    ///
    /// With workers ([`Builder::build_workers`](crate::Builder::build_workers)),
    /// worker 0 starts it, with every worker's sockets; the new process
    /// must run as many workers (it refuses to start otherwise, and this
    /// one keeps serving).
    ///
    /// # Errors
    /// [`Error::System`] when the sockets cannot be handed over (a worker
    /// did not answer within 2 s) or the binary cannot be started, an
    /// upgrade is already under way, or this runtime is a worker other
    /// than worker 0.
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
        if self.core.borrow().shared.shutdown_deadline.is_some() {
            return Err(fail(
                "this loopd is shutting down",
                std::io::Error::from(std::io::ErrorKind::Interrupted),
            ));
        }
        let (index, count) = self.worker();
        if index > 0 {
            return Err(fail(
                &format!("worker {index} cannot start it (worker 0 does, for every worker)"),
                std::io::Error::from(std::io::ErrorKind::Unsupported),
            ));
        }
        let exe = std::env::current_exe().map_err(|e| fail("finding the binary", e))?;
        // A binary replaced on disk reads as "PATH (deleted)": the new
        // file at PATH is the one to start.
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(path) => std::path::PathBuf::from(path),
            None => exe,
        };
        // Every worker's sockets, each with its worker.
        let mut sockets: Vec<(usize, OwnedFd)> = Vec::new();
        let own = self
            .listening_sockets(true)
            .map_err(|e| fail("copying a listening socket", e))?;
        sockets.extend(own.into_iter().map(|fd| (0, fd)));
        // Every other worker is asked at once, and answers at its next pass.
        // (Each handle first: a request made is always collected below.)
        let mut others = Vec::with_capacity(count.saturating_sub(1));
        for k in 1..count {
            match self.worker.as_ref().and_then(|w| w.siblings.handle(k)) {
                Some(h) => others.push((k, h)),
                None => {
                    return Err(fail(
                        &format!("loopd-worker-{k} is not running"),
                        std::io::Error::from(std::io::ErrorKind::NotConnected),
                    ))
                }
            }
        }
        for (_, h) in &others {
            h.request_listening_sockets();
        }
        let deadline = std::time::Instant::now() + SOCKETS_TIMEOUT;
        // Collected all, even after a failure: each request is withdrawn.
        let answers: Vec<_> = others
            .iter()
            .map(|(k, h)| (*k, h.listening_sockets(deadline)))
            .collect();
        for (k, theirs) in answers {
            match theirs {
                Some(Ok(fds)) => sockets.extend(fds.into_iter().map(|fd| (k, fd))),
                Some(Err(e)) => {
                    return Err(fail(
                        &format!("copying loopd-worker-{k}'s listening sockets"),
                        e,
                    ))
                }
                None => {
                    return Err(fail(
                        &format!(
                            "loopd-worker-{k} did not hand over its listening sockets within {} s",
                            SOCKETS_TIMEOUT.as_secs()
                        ),
                        std::io::Error::from(std::io::ErrorKind::TimedOut),
                    ))
                }
            }
        }
        // The copies stay close-on-exec here (other workers' handlers may
        // start processes meanwhile); only the new loopd's copies of them,
        // in its process between fork and exec, lose the flag.
        let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let list: Vec<String> = fds.iter().map(RawFd::to_string).collect();
        let owners: Vec<String> = sockets.iter().map(|(k, _)| k.to_string()).collect();
        let mut cmd = Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .env("LOOPD_LISTEN_FDS", list.join(","))
            .env("LOOPD_LISTEN_WORKERS", owners.join(","))
            .env("LOOPD_UPGRADE_WORKERS", count.to_string())
            .env("LOOPD_UPGRADE_FROM", std::process::id().to_string());
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls fcntl(2), which is async-signal-safe, on descriptors
        // the child inherited open (the `sockets` copies, alive until
        // `spawn` returns); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        if let Some(w) = &self.worker {
            // Every worker's shutdown now leaves the Unix socket files.
            w.siblings.set_upgrading(true);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                if let Some(w) = &self.worker {
                    w.siblings.set_upgrading(false);
                }
                return Err(fail(&format!("starting {}", exe.display()), e));
            }
        };
        // The child has its copies; ours close here.
        drop(sockets);
        let pid = child.id();
        log::info!(
            "upgrade: started {} (process {pid}) with {} listening sockets{}; serving until it takes over",
            exe.display(),
            list.len(),
            if count > 1 {
                format!(" of {count} workers")
            } else {
                String::new()
            }
        );
        self.successor = Some(child);
        Ok(pid)
    }

    /// Close-on-exec copies of this loop's open listening sockets (TCP and
    /// UDP; Unix ones too when `unix`: worker 0's, which the other workers
    /// accept from as well).
    pub(crate) fn listening_sockets(&self, unix: bool) -> std::io::Result<Vec<OwnedFd>> {
        let core = self.core.borrow();
        let mut copies = Vec::new();
        for r in self.listener_records.iter().filter(|r| r.open) {
            if !unix && matches!(r.addr, crate::config::ListenAddr::Unix(_)) {
                continue;
            }
            let fd = match core.sources.get(r.id) {
                Some(Source::Listener(l)) => l.fd.as_fd(),
                Some(Source::Datagram(d)) => d.sock.as_fd(),
                _ => continue,
            };
            copies.push(fd.try_clone_to_owned()?);
        }
        Ok(copies)
    }

    /// `loopd upgrade` asked: starts the upgrade, or, with one under way,
    /// waits for that one. `Ok`: the request waits for the new process
    /// (`taken_over`, `check_successor`).
    #[cfg(target_os = "linux")]
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    pub(crate) fn upgrade_for_request(&mut self) -> Result<Option<String>, String> {
        // A new process that failed is reported before another starts.
        self.check_successor();
        if let Some(line) = &self.taken_over_by {
            return Ok(Some(line.clone()));
        }
        // `check_successor` just let go of one that exited.
        if self.successor.is_some() {
            // Requests whose asker gave up are let go first.
            self.upgrade_waiters
                .retain(|c| !crate::control::peer_closed(c));
            if self.upgrade_waiters.len() >= crate::control::PENDING_MAX {
                return Err(format!(
                    "{} `loopd upgrade` requests wait for this upgrade already",
                    self.upgrade_waiters.len()
                ));
            }
            return Ok(None);
        }
        match self.upgrade() {
            Ok(_) => Ok(None),
            Err(e) => {
                log::error!("{e}");
                Err(e.to_string())
            }
        }
    }

    /// The new process `pid` says it serves (`control.rs`'s `taken-over`,
    /// just before it sends this one SIGTERM): the requests waiting for the
    /// upgrade are answered.
    #[cfg(target_os = "linux")]
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    pub(crate) fn taken_over(&mut self, pid: i32) -> Result<String, String> {
        let ours = self.successor.as_ref().map(std::process::Child::id);
        if ours != u32::try_from(pid).ok() {
            return Err(match ours {
                Some(n) => format!("process {pid} is not the new loopd (process {n})"),
                None => "no upgrade is under way".to_string(),
            });
        }
        let line = format!(
            "upgraded: the new loopd (process {pid}) took over; this one (process {}) stops accepting and lets its connections finish",
            std::process::id()
        );
        log::info!("upgrade: process {pid} took over");
        for conn in self.upgrade_waiters.drain(..) {
            crate::control::answer(conn, &Ok(line.clone()));
        }
        self.taken_over_by = Some(line.clone());
        Ok(line)
    }

    /// Closes the control socket and the requests waiting on it; those
    /// waiting for an upgrade are told it did not come through here.
    #[cfg(target_os = "linux")]
    pub(crate) fn close_control(&mut self) {
        let mut core = self.core.borrow_mut();
        let core = &mut *core;
        for id in core.sources.ids() {
            if let Some(Source::Control(c)) = core.sources.get_mut(id) {
                c.close(&core.shared.poll);
                core.remove_source(id);
            }
        }
        let new = self.successor.as_ref().map_or(0, std::process::Child::id);
        for conn in self.upgrade_waiters.drain(..) {
            crate::control::answer(
                conn,
                &Err(format!(
                    "this loopd (process {}) stopped before the new one (process {new}) said it had taken over; the log says whether it serves",
                    std::process::id()
                )),
            );
        }
    }

    /// While an upgrade is pending: a new process that exited before it
    /// took over leaves this one serving, with an error saying so.
    pub(crate) fn check_successor(&mut self) {
        let Some(child) = &mut self.successor else {
            return;
        };
        // An error (the child reaped elsewhere: ECHILD) counts as exited.
        let exited = match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status.to_string()),
            Err(e) => Some(format!("its status is unknown: {e}")),
        };
        if let Some(status) = exited {
            if let Some(w) = &self.worker {
                w.siblings.set_upgrading(false);
            }
            #[cfg(target_os = "linux")]
            if self.taken_over_by.is_some() {
                // It served, then ended: this one is on its way out anyway.
                log::info!(
                    "upgrade: the new loopd (process {}) exited ({status})",
                    child.id()
                );
                self.successor = None;
                return;
            }
            let line = format!(
                "upgrade: the new loopd (process {}) exited ({status}) before taking over; this one keeps serving",
                child.id()
            );
            if self.core.borrow().shared.shutdown_deadline.is_none() {
                log::error!("{line}");
            }
            #[cfg(target_os = "linux")]
            for conn in self.upgrade_waiters.drain(..) {
                crate::control::answer(conn, &Err(format!("{line}; the log says why")));
            }
            self.successor = None;
        }
    }
}
