//! Signals, with [`Builder::handle_signals`](crate::Builder::handle_signals):
//! which ones loopd catches and what each does. No signal whose default
//! action would kill the process takes loopd down by surprise: each either
//! shuts it down cleanly (listeners closed, Unix socket files removed,
//! connections drained or closed, handlers destroyed, logs flushed by the
//! binary) or is logged and ignored. Faults (SIGSEGV, SIGBUS, SIGILL,
//! SIGFPE, SIGABRT, SIGSYS, SIGTRAP) keep their default action: after one,
//! nothing in the process can be trusted to clean up.
//!
//! Every caught signal writes its number, one byte, to a self-pipe the
//! loop watches (a `send` from the handler: async-signal-safe), so the
//! loop acts on it in its next pass, on its own thread.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopd_handler_api::abi;

use crate::Runtime;

/// What a signal makes loopd do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// A graceful shutdown (a second shutdown signal: [`Action::Quit`]).
    Shutdown,
    /// Close every connection now, then shut down.
    Quit,
    /// Re-read the config file and apply it (live reload).
    Reload,
    /// Start the new binary with the listening sockets (binary upgrade).
    Upgrade,
    /// Logged (at most once a second) and otherwise ignored.
    Ignore,
    /// A child exited: the pass it wakes sees whether it was an upgrade's
    /// new process that failed before it took over.
    Child,
}

/// The signals loopd catches, with their action and why: the one table
/// `docs/operations.md` documents.
pub(crate) fn table() -> Vec<(i32, Action, &'static str)> {
    use Action::*;
    let mut t = vec![
        (libc::SIGTERM, Shutdown, "graceful shutdown"),
        (libc::SIGINT, Shutdown, "graceful shutdown"),
        (
            libc::SIGXCPU,
            Shutdown,
            "the CPU time limit (RLIMIT_CPU) is reached: graceful shutdown",
        ),
        (libc::SIGQUIT, Quit, "closing every connection now"),
        (libc::SIGHUP, Reload, "reloading the config file"),
        (libc::SIGUSR1, Ignore, "ignored by the loop"),
        (libc::SIGUSR2, Upgrade, "binary upgrade"),
        (libc::SIGCHLD, Child, "a child process exited"),
        (
            libc::SIGXFSZ,
            Ignore,
            "ignored: a write reached the file size limit (RLIMIT_FSIZE) and failed with EFBIG",
        ),
        (libc::SIGALRM, Ignore, "ignored (loopd sets no alarm)"),
        (libc::SIGVTALRM, Ignore, "ignored (loopd sets no timer)"),
        (
            libc::SIGPROF,
            Ignore,
            "ignored (loopd sets no profiling timer)",
        ),
        (
            libc::SIGIO,
            Ignore,
            "ignored (loopd uses no signal-driven I/O)",
        ),
    ];
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        t.push((
            libc::SIGPWR,
            Shutdown,
            "power failure reported: graceful shutdown",
        ));
        t.push((libc::SIGSTKFLT, Ignore, "ignored"));
        for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            t.push((sig, Ignore, "ignored (loopd uses no real-time signals)"));
        }
    }
    t
}

/// `SIGTERM`, `SIGRTMIN+3`, ...
pub(crate) fn name(sig: i32) -> String {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return match sig - libc::SIGRTMIN() {
            0 => "SIGRTMIN".to_string(),
            n => format!("SIGRTMIN+{n}"),
        };
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    match sig {
        libc::SIGPWR => return "SIGPWR".to_string(),
        libc::SIGSTKFLT => return "SIGSTKFLT".to_string(),
        _ => {}
    }
    match signal_hook::low_level::signal_name(sig) {
        Some(n) => n.to_string(),
        None => format!("signal {sig}"),
    }
}

/// The installed handlers, and when each ignored signal was last logged.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    ids: Vec<signal_hook::SigId>,
    /// Per signal (at most one entry per row of [`table`]): when it was
    /// last logged, and how many of it were not logged since.
    logged: Vec<(i32, Instant, u64)>,
}

impl Signals {
    /// Installs a handler for every signal of [`table`] that writes the
    /// signal's number to `write`. One of the signals operators send
    /// (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR2) that cannot be caught is
    /// an error naming it; any other (a real-time signal that a sandbox or
    /// a tool such as valgrind keeps for itself, say) is skipped with a
    /// debug line and keeps its default action.
    pub(crate) fn install(&mut self, write: UnixStream) -> io::Result<()> {
        // One descriptor for every handler: it is closed when the last
        // action is unregistered (never in a signal handler).
        let fd: Arc<OwnedFd> = Arc::new(write.into());
        for (sig, action, _) in table() {
            if action == Action::Child && ignored(sig) {
                // A process that ignores SIGCHLD has its children reaped
                // by the kernel; a handler would end that (zombies).
                log::debug!("{} stays ignored", name(sig));
                continue;
            }
            let fd = fd.clone();
            let byte = u8::try_from(sig).expect("signal numbers are below 256");
            let action = move || {
                // SAFETY: send(2) is async-signal-safe; one byte from a
                // local, on a descriptor the closure owns. A full pipe
                // drops the byte: the loop is already due to wake.
                unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        (&byte as *const u8).cast(),
                        1,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
            };
            // SAFETY: the action only calls send(2) (async-signal-safe),
            // allocates nothing and takes no lock.
            match unsafe { signal_hook::low_level::register(sig, action) } {
                Ok(id) => self.ids.push(id),
                Err(e) if !OPERATOR_SIGNALS.contains(&sig) => {
                    log::debug!("{} keeps its default action: catching it: {e}", name(sig));
                }
                Err(e) => {
                    return Err(io::Error::new(e.kind(), format!("{}: {e}", name(sig))));
                }
            }
        }
        Ok(())
    }

    /// Removes the actions (the process keeps signal-hook's handler, which
    /// then does nothing: the signals stay caught and ignored).
    pub(crate) fn uninstall(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// The signals operators and service managers send: loopd does not start
/// without them.
const OPERATOR_SIGNALS: [i32; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR2,
];

/// Whether `sig`'s disposition is `SIG_IGN`.
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current
    // one into `old`, a zeroed sigaction this function owns.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// What `sig` makes loopd do, and why.
fn action_of(sig: i32) -> (Action, &'static str) {
    table()
        .into_iter()
        .find(|(s, _, _)| *s == sig)
        .map_or((Action::Ignore, "ignored"), |(_, a, w)| (a, w))
}

/// The most signals one readiness of the pipe handles (the rest stay in the
/// pipe for the next pass).
const PER_PASS: usize = 64;

impl Runtime {
    /// The control socket (`control.rs`) is readable: connections to
    /// accept, or requests on those accepted. The reloads asked for are one
    /// reload, each request answered with its outcome; an upgrade answers
    /// when the new process takes over or exits.
    #[cfg(target_os = "linux")]
    pub(crate) fn control_readable(&mut self, id: u64) {
        use crate::control::{answer, Accepted, Request};
        let mut asked = Vec::new();
        {
            let mut core = self.core.borrow_mut();
            let core = &mut *core;
            let Some(crate::source::Source::Control(c)) = core.sources.get_mut(id) else {
                return;
            };
            let accepted = c.accept(&core.shared.poll, id);
            c.read(&core.shared.poll, &mut asked);
            if let Some(due) = c.due() {
                core.shared.timers.set(
                    due,
                    crate::timer::TimerKind::ControlRequests { control: id },
                );
            }
            match accepted {
                Accepted::All => {}
                Accepted::Capped => core.shared.capped = true,
                Accepted::Exhausted => crate::source::listener::pause(core, id),
            }
        }
        let mut reloads = Vec::new();
        for a in asked {
            match a.request {
                Request::Reload => reloads.push(a.conn),
                Request::Upgrade => {
                    log::info!(
                        "binary upgrade requested by `loopd upgrade` (process {})",
                        a.pid
                    );
                    match self.upgrade_for_request() {
                        Ok(None) => self.upgrade_waiters.push(a.conn),
                        Ok(Some(line)) => answer(a.conn, &Ok(line)),
                        Err(e) => answer(a.conn, &Err(e)),
                    }
                }
                Request::TakenOver => {
                    let outcome = self.taken_over(a.pid);
                    answer(a.conn, &outcome);
                }
            }
        }
        if reloads.is_empty() {
            return;
        }
        log::info!(
            "reload requested by `loopd reload` ({} waiting): reloading the config file",
            reloads.len()
        );
        let outcome = self.reload_requested();
        for conn in reloads {
            answer(conn, &outcome);
        }
    }

    /// The control socket's timer: the connections silent too long close.
    #[cfg(target_os = "linux")]
    pub(crate) fn control_timer(&mut self, id: u64) {
        if let Some(crate::source::Source::Control(c)) = self.core.borrow_mut().sources.get_mut(id)
        {
            c.fired();
        }
        self.control_readable(id);
    }

    /// The signal pipe is readable: acts on each signal in it.
    pub(crate) fn signals_readable(&mut self, fd: std::os::fd::RawFd) {
        let mut buf = [0u8; PER_PASS];
        let n = crate::sys::recv(fd, &mut buf).unwrap_or(0);
        let (mut reload, mut upgrade) = (false, false);
        for &sig in &buf[..n] {
            let sig = i32::from(sig);
            // However many came: one reload of the file as it is now, one
            // upgrade, after the shutdown signals of this batch.
            match action_of(sig).0 {
                Action::Reload => reload = true,
                Action::Upgrade => upgrade = true,
                // `check_successor`, at the end of this pass, looks.
                Action::Child => {}
                _ => {
                    if self.on_signal(sig) {
                        return;
                    }
                }
            }
        }
        // Worker 0 reloads, then has the others apply the same config.
        if reload && self.worker().0 == 0 {
            log::info!("SIGHUP received: reloading the config file");
            // Logged; `loopd reload`'s requests come on their own socket.
            let _ = self.reload_requested();
        }
        if upgrade {
            self.upgrade_requested();
        }
    }

    /// SIGUSR2: a binary upgrade, when this loopd can hand its sockets over.
    fn upgrade_requested(&mut self) {
        // Worker 0 starts it, with every worker's sockets.
        if self.worker().0 > 0 {
            return;
        }
        log::info!("SIGUSR2 received: binary upgrade");
        if let Err(e) = self.upgrade() {
            log::error!("{e}");
        }
    }

    /// Acts on one signal; true when the loop stops at once.
    fn on_signal(&mut self, sig: i32) -> bool {
        let (action, why) = action_of(sig);
        let shutting_down = self.core.borrow().shared.shutdown_deadline.is_some();
        match action {
            Action::Shutdown if !shutting_down => {
                log::info!("{} received: {why}", name(sig));
                self.begin_shutdown();
                false
            }
            Action::Shutdown | Action::Quit => {
                let open = self.core.borrow().shared.conns;
                if shutting_down {
                    log::warn!(
                        "second signal ({}): closing {open} connections now",
                        name(sig)
                    );
                } else {
                    log::warn!("{} received: {why} ({open} open)", name(sig));
                    self.begin_shutdown();
                }
                // Every connection is released here; the end of this pass
                // logs "shutdown complete" and `run` returns.
                self.close_everything(abi::LOOPD_REASON_SHUTDOWN);
                self.stopped = true;
                true
            }
            Action::Ignore | Action::Reload | Action::Upgrade | Action::Child => {
                self.log_ignored(sig, why);
                false
            }
        }
    }

    /// Logs an ignored signal, at most once a second per signal (SIGUSR1
    /// and SIGUSR2, which log rotation scripts send to every process, at
    /// debug level).
    fn log_ignored(&mut self, sig: i32, why: &str) {
        let now = Instant::now();
        let logged = &mut self.signals.logged;
        let unlogged = match logged.iter_mut().find(|(s, _, _)| *s == sig) {
            Some((_, at, n)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *n += 1;
                return;
            }
            Some((_, at, n)) => {
                *at = now;
                std::mem::take(n)
            }
            None => {
                logged.push((sig, now, 0));
                0
            }
        };
        let more = match unlogged {
            0 => String::new(),
            n => format!(" ({n} more since the last one logged)"),
        };
        let level = if sig == libc::SIGUSR1 || sig == libc::SIGUSR2 {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        log::log!(level, "{} received: {why}{more}", name(sig));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_is_listed_once_and_named() {
        let t = table();
        let mut seen = std::collections::HashSet::new();
        for (sig, _, why) in &t {
            assert!(seen.insert(*sig), "{} listed twice", name(*sig));
            assert!(!why.is_empty());
            assert!(name(*sig).starts_with("SIG"), "{sig}: {}", name(*sig));
            assert!(
                !signal_hook::consts::FORBIDDEN.contains(sig),
                "{} cannot be caught",
                name(*sig)
            );
        }
        for fault in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            assert!(!seen.contains(&fault), "{} keeps its default", name(fault));
        }
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        #[cfg(target_os = "linux")]
        assert_eq!(name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
    }
}
