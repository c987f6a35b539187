//! Live reload: a new config applied to a running runtime without a
//! dropped connection.
//!
//! A handler whose entry (or plugin file) changed gets a new instance;
//! listeners that stay keep their sockets and serve the new instance from
//! the next accept; new listeners are bound, removed ones closed. The old
//! instance keeps its connections, gets `on_shutdown`, and is destroyed
//! once the last of them is gone (or `drain_timeout_ms` cuts them): plugins
//! are never unloaded, so the old and the new code run side by side.
//! Unchanged handlers keep their instance and its state. A config that
//! does not parse, a plugin that does not load, a `create` that fails or a
//! listener that cannot be bound changes nothing at all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use loopd_handler_api::abi;

use crate::builder::create_instance;
use crate::config::{Config, HandlerConfig, ListenAddr, PluginRef};
use crate::host::ActiveGuard;
use crate::instance::{InstanceId, Life};
use crate::plugin::Stamp;
use crate::source::listener::{self, Bound};
use crate::source::Source;
use crate::spec::Linked;
use crate::timer::TimerKind;
use crate::{Error, Runtime};

/// What a runtime remembers to reload from.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The config file it was built from, if any.
    pub(crate) config_path: Option<PathBuf>,
    /// `plugin = "name"` entries served by linked types.
    pub(crate) statics: HashMap<String, Linked>,
    /// The config's entries (not those added in code) and their instances.
    pub(crate) entries: Vec<(HandlerConfig, InstanceId)>,
    /// Listeners added in code to the config's handlers (kept by reloads).
    pub(crate) extra: Vec<(String, ListenAddr)>,
    /// The idle sweep timer, while any instance has an idle timeout.
    pub(crate) sweep: Option<u64>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Handlers that are new.
    pub added: Vec<String>,
    /// Handlers whose entry or plugin file changed: a new instance serves
    /// new connections, the old one drains.
    pub replaced: Vec<String>,
    /// Handlers no longer in the config: they drain.
    pub removed: Vec<String>,
    /// Handlers that keep their instance.
    pub unchanged: Vec<String>,
    /// Listeners bound, as URLs.
    pub opened: Vec<String>,
    /// Listeners closed, as URLs.
    pub closed: Vec<String>,
    /// Listeners kept (their sockets never closed).
    pub kept: usize,
    /// How long the reload took.
    pub took: Duration,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "added {}; replaced {}; removed {}; unchanged {}; listeners opened {}, closed {}, kept {}; in {} ms",
            list(&self.added),
            list(&self.replaced),
            list(&self.removed),
            self.unchanged.len(),
            list(&self.opened),
            list(&self.closed),
            self.kept,
            self.took.as_millis()
        )
    }
}

/// The parts of an entry that make an instance what it is: a change in
/// any of them means a new instance (listeners are reconciled apart).
fn same_instance(a: &HandlerConfig, b: &HandlerConfig, rt_a: &Config, rt_b: &Config) -> bool {
    a.plugin == b.plugin
        && a.framing == b.framing
        && a.limits(&rt_a.runtime) == b.limits(&rt_b.runtime)
        && a.broadcast == b.broadcast
        && a.max_connections == b.max_connections
        && a.max_connections_per_peer
            .unwrap_or(rt_a.runtime.max_connections_per_peer)
            == b.max_connections_per_peer
                .unwrap_or(rt_b.runtime.max_connections_per_peer)
        && a.idle_timeout == b.idle_timeout
        && a.reuse_address == b.reuse_address
        && a.mailbox_messages == b.mailbox_messages
        && a.mailbox_bytes == b.mailbox_bytes
        && a.config_json == b.config_json
}

/// One handler of the new config, as the reload plans it.
enum Step {
    Keep(InstanceId),
    Replace { old: InstanceId },
    Add,
}

impl Runtime {
    /// A reload asked for by a `Handle` or SIGHUP: applied, and its outcome
    /// logged (an error leaves the old config running) and returned: the
    /// line logged, `reloaded: ...` or the error.
    pub(crate) fn reload_requested(&mut self) -> Result<String, String> {
        if self.worker().0 > 0 {
            // Worker 0 reads the file; this worker applies what it applied.
            self.apply_published_reload();
            return Ok("applied worker 0's reload".to_string());
        }
        if self.service {
            crate::notify::reloading();
        }
        #[cfg(feature = "config-file")]
        let outcome = match self.read_and_reload() {
            Ok(report) => Ok(format!("reloaded: {report}")),
            Err(e) => {
                let line = format!("reload failed; the running config is unchanged: {e}");
                log::error!("{line}");
                Err(line)
            }
        };
        #[cfg(not(feature = "config-file"))]
        let outcome = {
            let line = "reload: this loopd was built without its config-file feature".to_string();
            log::error!("{line}");
            Err(line)
        };
        if self.service {
            crate::notify::send("READY=1");
        }
        outcome
    }

    /// (Re)arms the idle sweep for the instances there are now: an eighth
    /// of the shortest idle timeout apart (10 ms to 1 s), so a connection
    /// is closed at most that much after its timeout; none without one.
    pub(crate) fn arm_idle_sweep(&mut self) {
        let mut core = self.core.borrow_mut();
        if let Some(t) = self.reload.sweep.take() {
            core.shared.timers.cancel(t);
        }
        let shortest = core
            .instances
            .iter()
            .filter(|i| i.callable())
            .filter_map(|i| i.settings.idle_timeout)
            .min();
        if let Some(shortest) = shortest {
            let every = (shortest / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
            self.reload.sweep = Some(core.shared.timers.set_repeating(
                Instant::now() + every,
                every,
                TimerKind::IdleSweep,
            ));
        }
    }

    /// Re-reads the config file the runtime was built from and applies it
    /// ([`Runtime::reload`]); SIGHUP does this in the `loopd` binary.
    ///
    /// # Errors
    /// As [`Runtime::reload`], or [`Error::Config`] when the runtime was
    /// not built from a file.
    #[cfg(feature = "config-file")]
    pub fn reload_file(&mut self) -> Result<ReloadReport, Error> {
        let config = self.read_config_file()?;
        self.reload(config)
    }

    /// The config file, read again.
    #[cfg(feature = "config-file")]
    fn read_config_file(&mut self) -> Result<Config, Error> {
        let Some(path) = self.reload.config_path.clone() else {
            return Err(Error::Config(
                "reload: this runtime was not built from a config file".to_string(),
            ));
        };
        let config = Config::from_file(&path).and_then(|config| {
            // An editor truncating the file, or a rewrite caught half-way,
            // must not close every listener.
            let running = self.reload.entries.len();
            if config.handlers.is_empty() && running > 0 {
                return Err(Error::Config(format!(
                    "{}: defines no [[handler]] (to stop serving, stop loopd)",
                    path.display()
                )));
            }
            Ok(config)
        });
        config.inspect_err(|_| {
            self.core.borrow_mut().shared.counters.reload_failures += 1;
        })
    }

    /// [`Runtime::reload_file`]; with workers, the config applied goes to
    /// the other workers once it is.
    #[cfg(feature = "config-file")]
    fn read_and_reload(&mut self) -> Result<ReloadReport, Error> {
        let config = self.read_config_file()?;
        if self.worker().1 < 2 {
            return self.reload(config);
        }
        let report = self.reload(config.clone())?;
        self.publish_reload(config);
        Ok(report)
    }

    /// Applies a new config to the running runtime: handlers whose entry
    /// or plugin file changed get a new instance (their old one keeps its
    /// connections until they close, or `drain_timeout_ms` passes), new
    /// handlers are created, removed ones drain; listeners that stay keep
    /// their sockets, new ones are bound, removed ones closed. Unchanged
    /// handlers keep their instance and state; handlers added in code are
    /// left alone. `[runtime]` settings take effect for what comes next.
    ///
    /// All or nothing: if a plugin does not load, a `create` fails or a
    /// listener cannot be bound, the runtime goes on exactly as before and
    /// the error says what failed.
    ///
    /// # Errors
    /// As [`crate::Builder::build`] for the new entries.
    pub fn reload(&mut self, config: Config) -> Result<ReloadReport, Error> {
        let result = self.reload_config(config);
        let c = &mut self.core.borrow_mut().shared.counters;
        match result {
            Ok(_) => c.reloads += 1,
            Err(_) => c.reload_failures += 1,
        }
        result
    }

    fn reload_config(&mut self, mut config: Config) -> Result<ReloadReport, Error> {
        let started = Instant::now();
        let _active = ActiveGuard::enter(&self.core);
        if self.is_shutting_down() {
            return Err(Error::Config("reload: a shutdown is under way".to_string()));
        }
        let running_workers = self.core.borrow().shared.cfg.workers;
        if config.runtime.workers != running_workers {
            if self.worker().0 == 0 {
                log::warn!(
                    "reload: workers = {} takes a restart; {running_workers} keep running",
                    config.runtime.workers
                );
            }
            config.runtime.workers = running_workers;
        }
        // The pid_file is written, and the user switched to, once at start.
        {
            let core = self.core.borrow();
            let running = &core.shared.cfg;
            let first = self.worker().0 == 0;
            let show = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map_or_else(|| "none".to_string(), |p| p.display().to_string())
            };
            if config.runtime.pid_file != running.pid_file {
                if first {
                    log::warn!(
                        "reload: pid_file = {} takes a restart; the running loopd's stays {}",
                        show(&config.runtime.pid_file),
                        show(&running.pid_file)
                    );
                }
                config.runtime.pid_file = running.pid_file.clone();
            }
            if (&config.runtime.user, &config.runtime.group) != (&running.user, &running.group) {
                if first {
                    log::warn!(
                        "reload: a changed [runtime] user or group takes a restart; loopd keeps running as it does"
                    );
                }
                config.runtime.user = running.user.clone();
                config.runtime.group = running.group.clone();
            }
        }
        // A worker's share of the limits, its listeners (as at build).
        if let Some(slot) = &self.worker {
            slot.adjust(&mut config);
        }
        let old_config = Config {
            path: self.reload.config_path.clone(),
            runtime: self.core.borrow().shared.cfg.clone(),
            handlers: self.reload.entries.iter().map(|(h, _)| h.clone()).collect(),
            // The binary's log sinks are set up once, at start.
            log: config.log.clone(),
        };
        // Listeners added in code stay with their handlers.
        for (name, addr) in &self.reload.extra {
            if let Some(h) = config.handlers.iter_mut().find(|h| &h.name == name) {
                if !h.listen.contains(addr) {
                    h.listen.push(addr.clone());
                }
            }
        }
        // Handlers added in code keep their names.
        let code_names: Vec<String> = {
            let core = self.core.borrow();
            core.instances
                .iter()
                .filter(|i| i.callable() && i.life != Life::Draining)
                .map(|i| i.name().to_string())
                .filter(|n| !self.reload.entries.iter().any(|(h, _)| &h.name == n))
                .collect()
        };
        if let Some(h) = config
            .handlers
            .iter()
            .find(|h| code_names.contains(&h.name))
        {
            return Err(Error::Config(format!(
                "reload: handler `{}` is already defined in code",
                h.name
            )));
        }

        // Plan: keep, replace or add each entry.
        let plugin_dir = config.runtime.plugin_dir.clone();
        let mut steps = Vec::with_capacity(config.handlers.len());
        for h in &config.handlers {
            let old = self.reload.entries.iter().find(|(o, _)| o.name == h.name);
            let step = match old {
                Some((o, id)) if same_instance(o, h, &old_config, &config) => {
                    if self.plugin_file_changed(*id, &h.plugin, plugin_dir.as_deref()) {
                        Step::Replace { old: *id }
                    } else {
                        Step::Keep(*id)
                    }
                }
                Some((_, id)) => Step::Replace { old: *id },
                None => Step::Add,
            };
            steps.push(step);
        }

        // Kept instances load their certificate and key again: a reload
        // after the files changed serves the new ones to new connections
        // (those open keep theirs). A bad file fails the reload here,
        // before anything changed.
        let mut kept_tls = Vec::new();
        for (i, h) in config.handlers.iter().enumerate() {
            if let Step::Keep(id) = steps[i] {
                let declared = self
                    .core
                    .borrow()
                    .instances
                    .get(id)
                    .map(|inst| inst.plugin.alpn.clone())
                    .unwrap_or_default();
                kept_tls.push((
                    id,
                    crate::builder::tls_server(h, &declared)?,
                    crate::builder::tls_client(h)?,
                ));
            }
        }

        // Create the new instances; on any failure, undo and report.
        let mut created: Vec<(
            usize,
            InstanceId,
            Option<std::sync::Arc<crate::mailbox::Mailbox>>,
        )> = Vec::new();
        for (i, h) in config.handlers.iter().enumerate() {
            if matches!(steps[i], Step::Keep(_)) {
                continue;
            }
            let linked = match &h.plugin {
                PluginRef::Name(n) => self.reload.statics.get(n).cloned(),
                PluginRef::Path(_) => None,
            };
            let previous = self.postbox.get(&h.name);
            match create_instance(self, &config, h, linked.as_ref()) {
                Ok(id) => created.push((i, id, previous)),
                Err(e) => {
                    self.postbox.restore(&h.name, previous);
                    self.undo_created(&config, created);
                    return Err(e);
                }
            }
        }
        let target = |i: usize, steps: &[Step], created: &[(usize, InstanceId, _)]| match steps[i] {
            Step::Keep(id) => id,
            _ => created
                .iter()
                .find(|c| c.0 == i)
                .map(|c| c.1)
                .expect("created"),
        };

        // Listeners: keep those still wanted, bind the new ones.
        let mut claimed = vec![false; self.listener_records.len()];
        let mut kept: Vec<(usize, InstanceId, String)> = Vec::new();
        // A port whose transport changes between tcp:// and tls:// keeps
        // its socket (binding it anew would clash with the old one).
        let mut switched: Vec<(usize, InstanceId, String, bool)> = Vec::new();
        let mut to_bind: Vec<(ListenAddr, InstanceId, String, usize)> = Vec::new();
        for (i, h) in config.handlers.iter().enumerate() {
            let inst = target(i, &steps, &created);
            for addr in &h.listen {
                let free =
                    |j: usize, r: &crate::ListenerRecord| r.open && r.from_file && !claimed[j];
                let records = self.listener_records.iter().enumerate();
                let same = records
                    .clone()
                    .position(|(j, r)| free(j, r) && &r.addr == addr)
                    .or_else(|| {
                        records
                            .clone()
                            .position(|(j, r)| free(j, r) && same_socket_file(&r.addr, addr))
                    });
                let switch = || {
                    records
                        .clone()
                        .position(|(j, r)| free(j, r) && switches(&r.addr, addr))
                };
                match (same, same.is_none().then(switch).flatten()) {
                    (Some(j), _) => {
                        claimed[j] = true;
                        kept.push((j, inst, h.name.clone()));
                    }
                    (None, Some(j)) => {
                        if matches!(addr, ListenAddr::Tls(_)) && !cfg!(feature = "tls") {
                            self.undo_created(&config, created);
                            return Err(Error::Listen {
                                location: h.listen_location(addr).map(ToString::to_string),
                                handler: h.name.clone(),
                                listener: addr.to_string(),
                                source: std::io::Error::new(
                                    std::io::ErrorKind::Unsupported,
                                    "tls:// listeners need loopd built with the `tls` feature",
                                ),
                            });
                        }
                        claimed[j] = true;
                        let tls = matches!(addr, ListenAddr::Tls(_));
                        switched.push((j, inst, h.name.clone(), tls));
                    }
                    (None, None) => to_bind.push((addr.clone(), inst, h.name.clone(), i)),
                }
            }
        }
        // New listeners are bound before the old ones close (all or
        // nothing), so one cannot take the port of a listener this reload
        // closes: the kernel refuses 0.0.0.0:P beside 127.0.0.1:P.
        for (addr, inst, name, i) in &to_bind {
            // A kept instance's new listeners (a new instance's were
            // checked when it was created).
            if matches!(steps[*i], Step::Keep(_)) {
                let fits = match self.core.borrow().instances.get(*inst) {
                    Some(instance) => {
                        crate::builder::listener_fits(&config.handlers[*i], &instance.plugin, addr)
                    }
                    None => Ok(()),
                };
                if let Err(e) = fits {
                    self.undo_created(&config, created);
                    return Err(e);
                }
            }
            let closing = self.listener_records.iter().enumerate().find(|(j, r)| {
                r.open && r.from_file && !claimed[*j] && takes_port_of(&r.addr, addr)
            });
            if let Some((_, r)) = closing {
                let why = format!(
                    "its port is held by {} (handler `{}`), which this reload would close only after binding it: moving a port between an address and the wildcard takes a restart, or a reload to another port first",
                    r.url, r.handler
                );
                self.undo_created(&config, created);
                return Err(Error::Listen {
                    location: config.handlers[*i]
                        .listen_location(addr)
                        .map(ToString::to_string),
                    handler: name.clone(),
                    listener: addr.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::AddrInUse, why),
                });
            }
        }
        let mut bound: Vec<(Bound, ListenAddr, String)> = Vec::new();
        for (addr, inst, name, i) in to_bind {
            let opened = crate::builder::unix_access(&config.handlers[i], i).and_then(|access| {
                listener::open(&mut self.core.borrow_mut(), &addr, inst, &access).map_err(
                    |source| Error::Listen {
                        location: config.handlers[i]
                            .listen_location(&addr)
                            .map(ToString::to_string),
                        handler: name.clone(),
                        listener: addr.to_string(),
                        source,
                    },
                )
            });
            match opened {
                Ok(b) => bound.push((b, addr, name)),
                Err(e) => {
                    for (b, _, _) in bound {
                        self.core.borrow_mut().remove_source(b.id);
                    }
                    self.undo_created(&config, created);
                    return Err(e);
                }
            }
        }

        // Commit. Kept listeners serve their (possibly new) instance.
        let mut report = ReloadReport::default();
        for (id, tls, client) in kept_tls {
            if let Some(inst) = self.core.borrow_mut().instances.get_mut(id) {
                inst.tls = tls;
                inst.tls_client = client;
            }
        }
        for (j, inst, name) in &kept {
            let id = self.listener_records[*j].id;
            let mut core = self.core.borrow_mut();
            let scope = core.instances.get(*inst).map(|i| i.scope.clone());
            match core.sources.get_mut(id) {
                Some(Source::Listener(l)) => l.instance = *inst,
                Some(Source::Datagram(d)) => {
                    if let Some(scope) = scope {
                        d.serve(*inst, scope);
                    }
                }
                _ => {}
            }
            self.listener_records[*j].handler = name.clone();
            report.kept += 1;
        }
        // A switched socket: its old record closes (keeping its URL and
        // counters, as a closed listener's do); a new record, added below
        // once the records are matched no more, takes over.
        let mut switched_records = Vec::new();
        for (j, inst, name, tls) in &switched {
            let old = &mut self.listener_records[*j];
            let mut core = self.core.borrow_mut();
            let Some(Source::Listener(l)) = core.sources.get_mut(old.id) else {
                continue;
            };
            let url = l.switch_transport(*inst, *tls);
            log::info!(
                "{name} listening on {url} (the socket of {}, kept)",
                old.url
            );
            let addr = match (&old.addr, tls) {
                (ListenAddr::Tcp(sa) | ListenAddr::Tls(sa), true) => ListenAddr::Tls(*sa),
                (ListenAddr::Tcp(sa) | ListenAddr::Tls(sa), false) => ListenAddr::Tcp(*sa),
                (other, _) => other.clone(),
            };
            old.open = false;
            report.closed.push(old.url.clone());
            report.opened.push(url.clone());
            switched_records.push(crate::ListenerRecord {
                url,
                handler: name.clone(),
                scope: l.scope.clone(),
                id: old.id,
                addr,
                from_file: true,
                open: true,
            });
        }
        // Listeners no longer wanted close.
        for (j, r) in self.listener_records.iter_mut().enumerate() {
            if r.open && r.from_file && !claimed[j] {
                let mut core = self.core.borrow_mut();
                if let Some(Source::Datagram(d)) = core.remove_source(r.id) {
                    d.log_drops(&r.handler);
                }
                r.open = false;
                report.closed.push(r.url.clone());
            }
        }
        self.listener_records.extend(switched_records);
        for (b, addr, name) in &bound {
            log::info!("{name} listening on {}", b.url);
            self.add_bound(name, b, addr, true);
            report.opened.push(b.url.clone());
        }
        self.refresh_listeners();

        // Old instances drain; the mailboxes move to the new ones.
        let mut draining = Vec::new();
        for (i, h) in config.handlers.iter().enumerate() {
            match steps[i] {
                Step::Keep(_) => report.unchanged.push(h.name.clone()),
                Step::Replace { old } => {
                    report.replaced.push(h.name.clone());
                    draining.push(old);
                }
                Step::Add => report.added.push(h.name.clone()),
            }
        }
        for (_, id, previous) in &created {
            if let Some(m) = previous {
                self.postbox.retire(m.clone());
            }
            let _ = id;
        }
        for (o, id) in &self.reload.entries {
            if !config.handlers.iter().any(|h| h.name == o.name) {
                report.removed.push(o.name.clone());
                self.postbox.close(&o.name, *id);
                draining.push(*id);
            }
        }
        self.core.borrow_mut().shared.cfg = config.runtime.clone();
        self.reload.entries = config
            .handlers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), target(i, &steps, &created)))
            .collect();
        self.reload.config_path = config.path.clone().or(self.reload.config_path.take());
        for id in draining {
            self.begin_drain(id);
        }
        self.arm_idle_sweep();
        // New instances hear about every listener they serve.
        let announce: Vec<Bound> = self
            .listener_records
            .iter()
            .filter(|r| r.open)
            .filter_map(|r| {
                let core = self.core.borrow();
                let (instance, transport, local) = match core.sources.get(r.id)? {
                    Source::Listener(l) => (
                        l.instance,
                        l.transport,
                        crate::sys::local_addr(std::os::fd::AsRawFd::as_raw_fd(&l.fd)),
                    ),
                    Source::Datagram(d) => (
                        d.instance,
                        abi::LOOPD_TRANSPORT_UDP,
                        d.sock
                            .local_addr()
                            .map(abi::loopd_addr::from_socket_addr)
                            .unwrap_or_default(),
                    ),
                    _ => return None,
                };
                created.iter().any(|c| c.1 == instance).then(|| Bound {
                    id: r.id,
                    instance,
                    transport,
                    local,
                    url: r.url.clone(),
                    scope: r.scope.clone(),
                })
            })
            .collect();
        for b in &announce {
            self.announce_listener(b);
        }
        self.drain_pending();
        report.took = started.elapsed();
        log::info!("reloaded: {report}");
        Ok(report)
    }

    /// Whether the library behind instance `id` was replaced on disk since
    /// it was loaded (a linked handler never is).
    fn plugin_file_changed(
        &self,
        id: InstanceId,
        plugin: &PluginRef,
        plugin_dir: Option<&std::path::Path>,
    ) -> bool {
        if matches!(plugin, PluginRef::Name(n) if self.reload.statics.contains_key(n)) {
            return false;
        }
        let core = self.core.borrow();
        let Some(stamp) = core.instances.get(id).and_then(|i| i.plugin.stamp) else {
            return false;
        };
        match crate::plugin::resolve(plugin, plugin_dir) {
            Ok(path) => Stamp::of(&path).map_or(true, |now| now != stamp),
            // Gone: the new instance's load will say why.
            Err(_) => true,
        }
    }

    /// Destroys the instances a failed reload created and gives their
    /// names back their old mailboxes.
    fn undo_created(
        &mut self,
        config: &Config,
        created: Vec<(
            usize,
            InstanceId,
            Option<std::sync::Arc<crate::mailbox::Mailbox>>,
        )>,
    ) {
        for (i, id, previous) in created.into_iter().rev() {
            self.destroy_instance(id);
            self.core.borrow_mut().instances.remove(id);
            self.postbox.restore(&config.handlers[i].name, previous);
        }
        self.drain_pending();
    }

    /// Starts draining an instance a reload replaced or removed:
    /// `on_shutdown`, a deadline, and `destroy` once it has no connection.
    fn begin_drain(&mut self, id: InstanceId) {
        let timeout = {
            let mut core = self.core.borrow_mut();
            let timeout = core.shared.cfg.drain_timeout;
            let Some(i) = core.instances.get_mut(id) else {
                return;
            };
            i.life = Life::Draining;
            log::info!(
                "{}: the old instance drains: {} connections left (drain_timeout_ms = {})",
                i.name(),
                i.scope.counters.active.get(),
                timeout.as_millis()
            );
            timeout
        };
        self.hooks().on_shutdown(id);
        self.drain_pending();
        self.core.borrow_mut().shared.timers.set(
            Instant::now() + timeout,
            TimerKind::DrainTimeout { instance: id },
        );
        self.destroy_if_drained(id);
    }

    /// Destroys a draining instance that has no connection left.
    pub(crate) fn destroy_if_drained(&self, id: InstanceId) {
        let drained = self
            .core
            .borrow()
            .instances
            .get(id)
            .is_some_and(|i| i.life == Life::Draining && i.scope.counters.active.get() == 0);
        if drained {
            self.destroy_instance(id);
            let mut core = self.core.borrow_mut();
            if let Some(i) = core.instances.remove(id) {
                log::info!("{}: the old instance is drained and destroyed", i.name());
            }
        }
    }

    /// A draining instance ran out of time: its connections are closed
    /// (reason `SHUTDOWN`), then it is destroyed.
    pub(crate) fn drain_timed_out(&self, id: InstanceId) {
        {
            let mut core = self.core.borrow_mut();
            let Some(i) = core.instances.get(id).filter(|i| i.life == Life::Draining) else {
                return;
            };
            log::warn!(
                "{}: drain_timeout_ms passed: closing the old instance's {} connections",
                i.name(),
                i.scope.counters.active.get()
            );
            for cid in core.sources.ids() {
                if let Some((c, sh)) = core.conn_and_shared(cid) {
                    if c.instance == id {
                        c.begin_close(cid, sh, true, abi::LOOPD_REASON_SHUTDOWN);
                    }
                }
            }
        }
        self.drain_pending();
        self.destroy_if_drained(id);
    }
}

/// Whether two Unix listener paths spelled differently (a symlinked
/// directory, relative and absolute) name one socket file: the same
/// listener, kept.
fn same_socket_file(old: &ListenAddr, new: &ListenAddr) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (ListenAddr::Unix(a), ListenAddr::Unix(b)) = (old, new) else {
        return false;
    };
    let id = |p: &std::path::Path| {
        std::fs::symlink_metadata(p)
            .ok()
            .filter(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            .map(|m| (m.dev(), m.ino()))
    };
    a != b && id(a).is_some() && id(a) == id(b)
}

/// Whether a socket at `new` would clash with one open at `old`, a
/// different address of the same port (a port of 0 is chosen at bind and
/// clashes with nothing).
fn takes_port_of(old: &ListenAddr, new: &ListenAddr) -> bool {
    use ListenAddr::{Tcp, Tls, Udp};
    match (old, new) {
        (Tcp(a) | Tls(a), Tcp(b) | Tls(b)) | (Udp(a), Udp(b)) => {
            a != b && a.port() != 0 && listener::same_port(a, b)
        }
        _ => false,
    }
}

/// Whether a listener at `old` can become `new` by switching its
/// transport: the same TCP address, one plain and one TLS.
fn switches(old: &ListenAddr, new: &ListenAddr) -> bool {
    match (old, new) {
        (ListenAddr::Tcp(a), ListenAddr::Tls(b)) | (ListenAddr::Tls(a), ListenAddr::Tcp(b)) => {
            a == b
        }
        _ => false,
    }
}
