//! Workers: N threads `loopd-worker-K`, each a whole loop with its own
//! handler instances, shared-nothing as nginx's worker processes are.
//!
//! Every worker builds the same config for itself: `create` runs once per
//! worker, and an instance only ever sees its own worker's connections.
//! TCP and UDP listeners are one `SO_REUSEPORT` socket per worker on the
//! same address (the kernel spreads connections and datagrams); a port of 0
//! is resolved by worker 0 and the others bind the port it got. A Unix
//! listener is one socket, worker 0's, that every worker accepts from
//! (the others get copies of it). Process-wide limits are
//! split evenly: each worker gets `ceil(limit / workers)` of
//! `max_connections`, a handler's `max_connections` and
//! `max_connections_per_peer`, and `max_buffered_input / workers`.
//! Siblings (the same handler on the other workers) talk through posts
//! (`Ctx::post_siblings`). Signals reach every worker: each shuts down
//! itself. A reload is worker 0's: it reads the file and applies it, then
//! every other worker applies the same config, with the ports worker 0
//! bound for port-0 addresses and worker 0's Unix sockets, as at build.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, ListenAddr};
use crate::inherit::Inherited;
use crate::mailbox::{PostError, Postbox};
use crate::stats::Stats;
use crate::{Builder, Error, Handle, Runtime};

/// What the workers share: each one's handle, by index (its mailboxes, for
/// sibling posts; worker 0 asks the others for their listening sockets when
/// it starts a binary upgrade).
#[derive(Debug, Default)]
pub(crate) struct Siblings {
    handles: Mutex<Vec<Option<Handle>>>,
    /// Worker 0 started a binary upgrade whose new process has not exited:
    /// a shutdown now is its handover, and every worker leaves the Unix
    /// socket files to it.
    upgrading: std::sync::atomic::AtomicBool,
    /// Worker 0's last successful reload, for the others to apply.
    reloaded: Mutex<Reloaded>,
    /// Every worker's latest stats snapshot (`stats_json`).
    pub(crate) stats_board: Arc<crate::stats::StatsBoard>,
}

/// What worker 0 applied at its last successful reload.
#[derive(Debug, Default)]
struct Reloaded {
    /// Counts worker 0's successful reloads (0: none yet).
    generation: u64,
    /// The config as read from the file, before any worker's share.
    config: Option<Config>,
    /// Port-0 listeners and the address worker 0 bound for each.
    ports: Vec<PortZero>,
    /// The paths of worker 0's Unix listeners.
    unix_paths: Vec<PathBuf>,
    /// By worker index: a copy of each of worker 0's Unix sockets, taken by
    /// that worker when it applies the reload.
    unix: Vec<Vec<(PathBuf, OwnedFd)>>,
}

/// A port-0 listener: its handler, its address as written, and the address
/// worker 0 bound for it (the other workers bind that one).
type PortZero = (String, ListenAddr, ListenAddr);

impl Siblings {
    /// Worker `index` is up: its mailboxes can take sibling posts.
    pub(crate) fn join(&self, index: usize, handle: Handle) {
        let mut h = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        if h.len() <= index {
            h.resize(index + 1, None);
        }
        h[index] = Some(handle);
    }

    pub(crate) fn set_upgrading(&self, on: bool) {
        self.upgrading
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn upgrading(&self) -> bool {
        self.upgrading.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Worker `index`'s handle, once it is up.
    pub(crate) fn handle(&self, index: usize) -> Option<Handle> {
        let h = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        h.get(index).cloned().flatten()
    }

    /// Posts `msg` to the instance named `name` on every worker but
    /// `from`: how many took it, and whether any mailbox was full.
    pub(crate) fn post(&self, from: usize, name: &str, msg: &[u8]) -> (u32, bool) {
        let targets: Vec<Arc<Postbox>> = {
            let h = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
            h.iter()
                .enumerate()
                .filter(|(i, _)| *i != from)
                .filter_map(|(_, h)| h.as_ref().map(|h| h.postbox.clone()))
                .collect()
        };
        let (mut delivered, mut full) = (0, false);
        for b in targets {
            match b.post(name, msg.to_vec()) {
                Ok(()) => delivered += 1,
                Err(PostError::Full | PostError::TooLarge) => full = true,
                // A worker without that instance, or stopping: not a sibling.
                Err(_) => {}
            }
        }
        (delivered, full)
    }
}

/// Which worker a runtime is, and what it shares with the others.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSlot {
    pub(crate) index: usize,
    pub(crate) count: usize,
    pub(crate) siblings: Arc<Siblings>,
    /// Port-0 listeners (handler, address as written) and the address
    /// worker 0 bound for each, at build or at its last reload.
    pub(crate) ports: Vec<PortZero>,
    /// The Unix listeners worker 0 shares (the others accept from its
    /// sockets).
    shared_unix: Vec<PathBuf>,
    /// The generation of worker 0's reload this worker applied last.
    applied: u64,
    /// Each worker's copy of the inherited listening sockets (socket
    /// activation, an upgrade): all workers accept from the same sockets.
    inherited: Arc<Mutex<Vec<Option<Inherited>>>>,
}

/// `ceil(n / parts)`.
fn share(n: usize, parts: usize) -> usize {
    n.div_ceil(parts).max(1)
}

impl WorkerSlot {
    /// This worker's inherited sockets (none when there are none).
    pub(crate) fn take_inherited(&self) -> Inherited {
        let mut all = self
            .inherited
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.get_mut(self.index)
            .and_then(Option::take)
            .unwrap_or_default()
    }

    /// This worker's part of `config`: limits split, port-0 addresses
    /// pinned to worker 0's ports, Unix listeners only those worker 0
    /// shares (the others adopt its sockets rather than bind the file).
    pub(crate) fn adjust(&self, config: &mut Config) {
        let n = self.count;
        let rt = &mut config.runtime;
        rt.max_connections = share(rt.max_connections, n);
        if rt.max_connections_per_peer > 0 {
            rt.max_connections_per_peer = share(rt.max_connections_per_peer, n);
        }
        rt.max_buffered_input = (rt.max_buffered_input / n).max(1);
        for h in &mut config.handlers {
            h.max_connections = h.max_connections.map(|m| share(m, n));
            h.max_connections_per_peer =
                h.max_connections_per_peer
                    .map(|m| if m == 0 { 0 } else { share(m, n) });
            if self.index > 0 {
                h.listen.retain(|a| match a {
                    ListenAddr::Unix(p) => self.shared_unix.contains(p),
                    _ => true,
                });
                // A port asked as tcp:// and now tls:// (or back) is the
                // same socket: a reload switches its transport.
                let same = |asked: &ListenAddr, a: &ListenAddr| {
                    asked == a
                        || matches!(
                            (asked, a),
                            (
                                ListenAddr::Tcp(x) | ListenAddr::Tls(x),
                                ListenAddr::Tcp(y) | ListenAddr::Tls(y),
                            ) if x == y
                        )
                };
                let mut earlier: Vec<ListenAddr> = Vec::new();
                for a in &mut h.listen {
                    // The handler's n-th port-0 address spelled this way
                    // takes the n-th port worker 0 bound for it.
                    let n = earlier.iter().filter(|e| same(e, a)).count();
                    earlier.push(a.clone());
                    let pinned = self
                        .ports
                        .iter()
                        .filter(|(name, asked, _)| *name == h.name && same(asked, a))
                        .nth(n);
                    if let Some((_, _, actual)) = pinned {
                        *a = match (&*a, actual) {
                            (ListenAddr::Tls(_), ListenAddr::Tcp(sa) | ListenAddr::Tls(sa)) => {
                                ListenAddr::Tls(*sa)
                            }
                            (ListenAddr::Tcp(_), ListenAddr::Tcp(sa) | ListenAddr::Tls(sa)) => {
                                ListenAddr::Tcp(*sa)
                            }
                            _ => actual.clone(),
                        };
                    }
                }
            }
        }
    }
}

/// Every worker's counters, and their sum.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// All workers together: counters summed, handlers and listeners
    /// matched by name and URL.
    pub total: Stats,
    /// Each worker's own, by index (`None`: it did not answer in time).
    pub workers: Vec<Option<Stats>>,
}

/// Several loops, one per thread, each serving the whole config with its
/// own handler instances: [`Builder::build_workers`].
#[derive(Debug)]
pub struct Workers {
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    handles: Vec<Handle>,
    listeners: Vec<String>,
}

impl Builder {
    /// Builds the config's `[runtime] workers` loops (or `workers` in
    /// [`Builder::runtime`]), each on a thread named `loopd-worker-K`, and
    /// starts them. Every worker creates its own instance of every handler
    /// (`create` runs once per worker); TCP and UDP listeners are one
    /// `SO_REUSEPORT` socket per worker, a Unix listener is worker 0's
    /// socket, which every worker accepts from; limits are split evenly
    /// (module docs). With `workers = 1`
    /// this is one thread running what [`Builder::build`] would build.
    ///
    /// ```
    /// use loopd::{config::RuntimeConfig, HandlerSpec, Runtime};
    ///
    /// let workers = Runtime::builder()
    ///     .runtime(RuntimeConfig { workers: 2, ..Default::default() })
    ///     .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
    ///     .build_workers()?;
    /// assert_eq!(workers.len(), 2);
    /// let url = workers.listeners()[0].clone(); // both workers serve it
    /// # let _ = url;
    /// workers.shutdown();
    /// workers.run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Builder::build`], from the first worker that failed (the
    /// others are stopped).
    pub fn build_workers(mut self) -> Result<Workers, Error> {
        // One parse for every worker (and the count it gives).
        let config = match self.config.take() {
            Some(c) => c,
            #[cfg(feature = "config-file")]
            None => match &self.config_path {
                Some(p) => Config::from_file(p)?,
                None => Config::empty(),
            },
            #[cfg(not(feature = "config-file"))]
            None => Config::empty(),
        };
        let count = self
            .runtime
            .as_ref()
            .map_or(config.runtime.workers, |r| r.workers)
            .max(1);
        self = self.config(config);
        let siblings = Arc::new(Siblings::default());
        // Every worker has a set, even an empty one: worker 0's Unix
        // sockets join the others' sets once it is built.
        let inherited = if self.inherit {
            Inherited::from_env()
        } else {
            Inherited::default()
        };
        let inherited = inherited.split(count).map_err(Error::Config)?;
        let inherited = Arc::new(Mutex::new(inherited.into_iter().map(Some).collect()));
        let mut workers = Workers {
            threads: Vec::new(),
            handles: Vec::new(),
            listeners: Vec::new(),
        };
        let mut ports = Vec::new();
        let mut shared_unix = Vec::new();
        for index in 0..count {
            let mut b = self.clone();
            b.worker = Some(WorkerSlot {
                index,
                count,
                siblings: siblings.clone(),
                ports: ports.clone(),
                shared_unix: shared_unix.clone(),
                applied: 0,
                inherited: inherited.clone(),
            });
            // One voice towards the service manager: worker 0's.
            b.service = self.service && index == 0;
            let (tx, rx) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("loopd-worker-{index}"))
                .spawn(move || {
                    let mut rt = match b.build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let bound: Vec<String> = rt
                        .listener_records
                        .iter()
                        .filter(|r| r.open)
                        .map(|r| r.url.clone())
                        .collect();
                    let zero = port_zero(&rt.listener_records);
                    // Worker 0's Unix sockets, for the others to accept from.
                    let unix = if index == 0 && count > 1 {
                        crate::source::listener::unix_sockets(&rt.core.borrow())
                    } else {
                        Vec::new()
                    };
                    let _ = tx.send(Ok((rt.handle(), bound, zero, unix)));
                    rt.run()
                })
                .map_err(|source| Error::System {
                    what: format!("starting thread loopd-worker-{index}"),
                    source,
                })?;
            match rx.recv() {
                Ok(Ok((handle, bound, zero, unix))) => {
                    if index == 0 {
                        let mut sets = inherited.lock().unwrap_or_else(PoisonError::into_inner);
                        for set in sets.iter_mut().skip(1).flatten() {
                            for (path, fd) in &unix {
                                if !shared_unix.contains(path) {
                                    shared_unix.push(path.clone());
                                }
                                match fd.try_clone() {
                                    Ok(copy) => set.add_unix(path.clone(), copy),
                                    Err(e) => log::warn!(
                                        "unix://{}: cannot share with the other workers: {e}",
                                        path.display()
                                    ),
                                }
                            }
                        }
                        ports = zero;
                        workers.listeners = bound;
                    }
                    workers.handles.push(handle);
                    workers.threads.push(thread);
                }
                Ok(Err(e)) => {
                    let _ = thread.join();
                    workers.stop_all();
                    return Err(e);
                }
                Err(_) => {
                    let _ = thread.join();
                    workers.stop_all();
                    return Err(Error::Config(format!(
                        "loopd-worker-{index} stopped while it was built"
                    )));
                }
            }
        }
        // The user switch, once every worker has bound its sockets (one
        // switch for the whole process: every thread changes with it).
        if let Some(config) = &self.config {
            let switched =
                crate::builder::accounts(config, true, false).and_then(
                    |(switch, _)| match switch {
                        Some((user, gid, shown)) => {
                            crate::builder::switch_user(config, &user, gid, &shown)
                        }
                        None => Ok(()),
                    },
                );
            if let Err(e) = switched {
                workers.stop_all();
                return Err(e);
            }
        }
        crate::inherit::confirm_adoption();
        log::info!("{count} workers running");
        if self.service {
            crate::notify::send(&format!("READY=1\nMAINPID={}", std::process::id()));
        }
        Ok(workers)
    }
}

fn has_port_zero(a: &ListenAddr) -> bool {
    matches!(a, ListenAddr::Tcp(s) | ListenAddr::Udp(s) | ListenAddr::Tls(s) if s.port() == 0)
}

/// The open port-0 listeners of `records` and the address each bound.
fn port_zero(records: &[crate::ListenerRecord]) -> Vec<PortZero> {
    records
        .iter()
        .filter(|r| r.open && has_port_zero(&r.addr))
        .filter_map(|r| {
            Some((
                r.handler.clone(),
                r.addr.clone(),
                actual_addr(&r.addr, &r.url)?,
            ))
        })
        .collect()
}

/// The address a listener bound, from its URL (`tcp://127.0.0.1:40123`).
fn actual_addr(asked: &ListenAddr, url: &str) -> Option<ListenAddr> {
    let rest = url.split_once("://")?.1;
    match asked {
        ListenAddr::Tcp(_) => rest.parse().ok().map(ListenAddr::Tcp),
        ListenAddr::Udp(_) => rest.parse().ok().map(ListenAddr::Udp),
        ListenAddr::Tls(_) => rest.parse().ok().map(ListenAddr::Tls),
        ListenAddr::Unix(_) => None,
    }
}

impl Workers {
    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never: a build makes at least one).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Each worker's handle (stop, shutdown, wake, post, reload).
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The URLs worker 0 bound (the others serve the same addresses).
    pub fn listeners(&self) -> &[String] {
        &self.listeners
    }

    /// Starts a graceful shutdown on every worker.
    pub fn shutdown(&self) {
        for h in &self.handles {
            h.shutdown();
        }
    }

    /// Asks worker 0 to re-read the config file and apply it; once it has,
    /// every other worker applies the same config (with the ports and Unix
    /// sockets worker 0 bound). A reload asked of another worker's handle
    /// is passed to worker 0.
    pub fn reload(&self) {
        if let Some(h) = self.handles.first() {
            h.reload();
        }
    }

    /// Posts `msg` to the instance named `instance` on every worker;
    /// returns how many took it.
    pub fn post_all(&self, instance: &str, msg: &[u8]) -> usize {
        self.handles
            .iter()
            .filter(|h| h.post(instance, msg.to_vec()).is_ok())
            .count()
    }

    /// A snapshot of every worker's counters (each answers at its next
    /// pass; one that does not within `timeout` is `None`) and their sum.
    pub fn stats(&self, timeout: Duration) -> WorkerStats {
        let workers: Vec<Option<Stats>> = self.handles.iter().map(|h| h.stats(timeout)).collect();
        let present: Vec<Stats> = workers.iter().flatten().cloned().collect();
        WorkerStats {
            total: Stats::sum(&present),
            workers,
        }
    }

    fn stop_all(&mut self) {
        for h in &self.handles {
            h.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Waits until every worker's loop has returned (a finished graceful
    /// shutdown, or a stop).
    ///
    /// # Errors
    /// The first I/O error a worker's loop failed with.
    pub fn run(self) -> std::io::Result<()> {
        let mut first = Ok(());
        for t in self.threads {
            let result = t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a worker thread panicked")));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Runtime {
    /// This runtime's worker index and the number of workers: `(0, 1)` for
    /// a runtime built with [`Builder::build`].
    pub fn worker(&self) -> (usize, usize) {
        self.worker.as_ref().map_or((0, 1), |w| (w.index, w.count))
    }

    /// Worker 0 applied `config` (as read from the file): the other
    /// workers are asked to apply it too, with the ports and Unix sockets
    /// worker 0 now has.
    #[cfg(feature = "config-file")]
    pub(crate) fn publish_reload(&mut self, config: Config) {
        let Some(slot) = &self.worker else { return };
        if slot.count < 2 {
            return;
        }
        let unix = crate::source::listener::unix_sockets(&self.core.borrow());
        let copies = (0..slot.count)
            .map(|k| {
                if k == 0 {
                    return Vec::new();
                }
                unix.iter()
                    .filter_map(|(path, fd)| match fd.try_clone() {
                        Ok(copy) => Some((path.clone(), copy)),
                        Err(e) => {
                            log::warn!(
                                "unix://{}: cannot share with loopd-worker-{k}: {e}",
                                path.display()
                            );
                            None
                        }
                    })
                    .collect()
            })
            .collect();
        {
            let mut r = slot
                .siblings
                .reloaded
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            r.generation += 1;
            r.config = Some(config);
            r.ports = port_zero(&self.listener_records);
            r.unix_paths = unix.into_iter().map(|(path, _)| path).collect();
            r.unix = copies;
        }
        for k in 1..slot.count {
            if let Some(h) = slot.siblings.handle(k) {
                h.reload();
            }
        }
    }

    /// A worker other than worker 0 was asked to reload: it applies what
    /// worker 0 last applied, or, when it has applied that already (a
    /// reload asked of this worker's handle), asks worker 0 to reload.
    pub(crate) fn apply_published_reload(&mut self) {
        let Some(slot) = self.worker.as_mut() else {
            return;
        };
        let (config, paths, unix) = {
            let mut r = slot
                .siblings
                .reloaded
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &r.config {
                Some(config) if r.generation > slot.applied => {
                    let config = config.clone();
                    slot.applied = r.generation;
                    slot.ports = r.ports.clone();
                    let unix = r.unix.get_mut(slot.index).map(std::mem::take);
                    (config, r.unix_paths.clone(), unix.unwrap_or_default())
                }
                _ => {
                    drop(r);
                    if let Some(h) = slot.siblings.handle(0) {
                        h.reload();
                    }
                    return;
                }
            }
        };
        // Worker 0's Unix listeners this worker serves already or has a
        // copy of now (one it could not copy stays worker 0's alone: this
        // worker must not bind the file worker 0 serves).
        let served = std::mem::take(&mut slot.shared_unix);
        slot.shared_unix = paths
            .into_iter()
            .filter(|p| served.contains(p) || unix.iter().any(|(u, _)| u == p))
            .collect();
        {
            let mut core = self.core.borrow_mut();
            for (path, fd) in unix {
                core.shared.inherited.add_unix(path, fd);
            }
        }
        if let Err(e) = self.reload(config) {
            log::error!("reload failed; the running config is unchanged: {e}");
        }
        // The copies of Unix sockets this worker serves already.
        self.core.borrow_mut().shared.inherited.close_unused();
    }
}
