//! [`Builder`]: a runtime from a config file, settings and handlers added
//! in code; plugins loaded, instances created, listeners opened.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;

use crate::config::{FramingKind, HandlerConfig, ListenAddr, PluginRef, RuntimeConfig};
use crate::core::Core;
use crate::host::{ActiveGuard, HostCtx};
use crate::instance::{Instance, InstanceId, Life, Settings};
use crate::plugin::{self, Plugin};
use crate::privileges;
use crate::source::listener;
use crate::spec::{HandlerSpec, Linked};
use crate::stats::Scope;
use crate::{Config, Error, Runtime};

/// Configures and builds a [`Runtime`].
///
/// Handlers come from a config (parsed with [`Builder::config`] or read by
/// [`Builder::build`] from [`Builder::config_file`]), from code
/// ([`Builder::handler`]), or both: entries added in code follow the
/// config's, and names must be unique across the two.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    pub(crate) config: Option<Config>,
    pub(crate) config_path: Option<std::path::PathBuf>,
    pub(crate) runtime: Option<RuntimeConfig>,
    statics: HashMap<String, Linked>,
    specs: Vec<HandlerSpec>,
    extra_listeners: Vec<(String, String)>,
    #[cfg(feature = "signals")]
    signals: bool,
    pub(crate) inherit: bool,
    pub(crate) service: bool,
    listen: bool,
    /// Set by `build_workers` for each worker it builds.
    pub(crate) worker: Option<crate::workers::WorkerSlot>,
}

impl Builder {
    /// Uses a parsed config (replacing any earlier [`Builder::config_file`]).
    pub fn config(mut self, config: Config) -> Builder {
        self.config = Some(config);
        self.config_path = None;
        self
    }

    /// Reads the config from a file when [`Builder::build`] runs (replacing
    /// any earlier [`Builder::config`]).
    pub fn config_file(mut self, path: impl AsRef<Path>) -> Builder {
        self.config_path = Some(path.as_ref().to_path_buf());
        self.config = None;
        self
    }

    /// Replaces the `[runtime]` settings (limits, timeouts, `plugin_dir`) of
    /// the config, or the defaults when there is no config.
    pub fn runtime(mut self, runtime: RuntimeConfig) -> Builder {
        self.runtime = Some(runtime);
        self
    }

    /// Adds a handler instance: a Rust type linked into the program or a
    /// plugin from a shared library, with its listeners. See [`HandlerSpec`].
    pub fn handler(mut self, spec: HandlerSpec) -> Builder {
        self.specs.push(spec);
        self
    }

    /// Adds a listener URL to the handler named `handler`, defined in the
    /// config or with [`Builder::handler`].
    pub fn listen(mut self, handler: &str, url: &str) -> Builder {
        self.extra_listeners
            .push((handler.to_string(), url.to_string()));
        self
    }

    /// Makes `plugin = "<name>"` in the config mean the handler type `H`,
    /// linked into this program, instead of a shared library.
    pub fn static_handler<H: loopd_handler_api::Handler>(mut self, name: &str) -> Builder {
        self.statics.insert(name.to_string(), Linked::of::<H>());
        self
    }

    /// Handles signals: SIGINT, SIGTERM, SIGPWR and SIGXCPU start a
    /// graceful shutdown (a second one closes everything at once), SIGQUIT
    /// closes everything at once; SIGHUP reloads the config file
    /// ([`Runtime::reload_file`](crate::Runtime::reload_file)), SIGUSR2
    /// starts a binary upgrade ([`Runtime::upgrade`](crate::Runtime::upgrade));
    /// SIGUSR1, SIGXFSZ, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGSTKFLT and
    /// the real-time signals are caught, logged (at most once a second
    /// each; SIGUSR1 at debug level) and ignored, where they would kill the
    /// process. Faults (SIGSEGV, SIGBUS, ...) keep their default. Off by
    /// default: an embedding program keeps its own signal dispositions. The
    /// `loopd` binary turns it on.
    ///
    /// Once turned on, the handlers stay installed for the life of the
    /// process (`signal-hook` cannot restore the previous disposition; it
    /// does chain to a handler installed before): after the runtime is
    /// dropped, those signals are caught and ignored. A program that outlives its runtime, or that
    /// handles signals itself, should leave this off and call
    /// [`Handle::shutdown`](crate::Handle::shutdown) from its own handling instead.
    #[cfg(feature = "signals")]
    pub fn handle_signals(mut self, on: bool) -> Builder {
        self.signals = on;
        self
    }

    /// Adopts listening sockets the parent process handed over, instead of
    /// binding their addresses: systemd socket activation (`LISTEN_FDS`,
    /// `LISTEN_PID`; matched to listeners by the address they are bound
    /// to) and a loopd binary upgrade (`Runtime::upgrade`). Off by default;
    /// the `loopd` binary turns it on. Inherited sockets no listener asks
    /// for are closed with a warning.
    pub fn inherit_listeners(mut self, on: bool) -> Builder {
        self.inherit = on;
        self
    }

    /// Tells a service manager (systemd `Type=notify`, through
    /// `NOTIFY_SOCKET`) `READY=1` once the listeners are open,
    /// `RELOADING=1` and `READY=1` around a reload, and `STOPPING=1` when a
    /// shutdown begins. Off by default; the `loopd` binary turns it on.
    pub fn notify_service_manager(mut self, on: bool) -> Builder {
        self.service = on;
        self
    }

    /// Loads the plugins and creates the instances, opens the listeners and
    /// returns the runtime, ready to run.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad config or handler spec, [`Error::Plugin`]
    /// naming the library and the reason, [`Error::Listen`] naming the
    /// listener and the handler, [`Error::System`] naming a step the
    /// operating system refused. Nothing listens unless everything succeeded.
    pub fn build(mut self) -> Result<Runtime, Error> {
        self.listen = true;
        self.build_inner()
    }

    /// Loads the plugins and creates (then destroys) the instances without
    /// opening any listener: validates a config completely. Returns one line
    /// per instance: its name, plugin, version and where it came from.
    ///
    /// # Errors
    /// As [`Builder::build`], without listener errors.
    pub fn check(mut self) -> Result<Vec<String>, Error> {
        self.listen = false;
        let rt = self.build_inner()?;
        let core = rt.core.borrow();
        Ok(core
            .instances
            .iter()
            .map(|i| {
                let from = match &i.plugin.path {
                    Some(p) => p.display().to_string(),
                    None => "linked in".to_string(),
                };
                let mut line = format!("{}: {}", i.name(), i.plugin.name);
                if !i.plugin.version.is_empty() {
                    line.push(' ');
                    line.push_str(&i.plugin.version);
                }
                line.push_str(&format!(" ({from})"));
                line
            })
            .collect())
    }

    /// The config, with the runtime settings, handlers and listeners added
    /// in code, and for each entry the linked type that serves it (if any).
    fn assemble(&mut self) -> Result<Assembled, Error> {
        let mut config = match (self.config.take(), &self.config_path) {
            (Some(c), _) => c,
            #[cfg(feature = "config-file")]
            (None, Some(path)) => Config::from_file(path)?,
            #[cfg(not(feature = "config-file"))]
            (None, Some(path)) => {
                return Err(Error::Config(format!(
                    "{}: reading config files needs loopd's `config-file` feature",
                    path.display()
                )))
            }
            (None, None) => Config::empty(),
        };
        if let Some(rt) = self.runtime.take() {
            check_runtime(&rt)?;
            config.runtime = rt;
            // The file's own limits were checked against its [runtime].
            for h in &config.handlers {
                h.limits(&config.runtime).validate().map_err(|e| {
                    Error::Config(format!(
                        "Builder::runtime: handler `{}` would have {e}",
                        h.name
                    ))
                })?;
            }
        }
        let mut linked: Vec<Option<Linked>> = config
            .handlers
            .iter()
            .map(|h| match &h.plugin {
                PluginRef::Name(n) => self.statics.get(n).cloned(),
                PluginRef::Path(_) => None,
            })
            .collect();
        let file_entries = config.handlers.len();
        for spec in std::mem::take(&mut self.specs) {
            let (entry, l) = spec.into_entry(&config.runtime)?;
            if config.handlers.iter().any(|h| h.name == entry.name) {
                return Err(Error::Config(format!(
                    "handler `{}` (added in code): a handler with this name is already defined{}",
                    entry.name,
                    config
                        .path
                        .as_ref()
                        .map(|p| format!(" in {}", p.display()))
                        .unwrap_or_default()
                )));
            }
            config.handlers.push(entry);
            linked.push(l);
        }
        let mut extra = Vec::new();
        for (handler, url) in std::mem::take(&mut self.extra_listeners) {
            let known: Vec<&str> = config.handlers.iter().map(|h| h.name.as_str()).collect();
            let known = if known.is_empty() {
                "there are no handlers".to_string()
            } else {
                format!("handlers: {}", known.join(", "))
            };
            let entry = config
                .handlers
                .iter_mut()
                .find(|h| h.name == handler)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "Builder::listen(`{handler}`, `{url}`): no handler named `{handler}` ({known})"
                    ))
                })?;
            let addr = ListenAddr::parse_listener(&url)
                .map_err(|e| Error::Config(format!("Builder::listen(`{handler}`, ...): {e}")))?;
            entry.listen.push(addr.clone());
            extra.push((handler, addr));
        }
        Ok(Assembled {
            config,
            linked,
            file_entries,
            extra,
        })
    }

    fn build_inner(mut self) -> Result<Runtime, Error> {
        let Assembled {
            mut config,
            linked,
            file_entries,
            extra,
        } = self.assemble()?;
        if let Some(slot) = &self.worker {
            slot.adjust(&mut config);
        } else if config.runtime.workers > 1 && self.listen {
            return Err(Error::Config(format!(
                "{}workers = {}: build with Builder::build_workers (the loopd binary does)",
                config
                    .path
                    .as_ref()
                    .map(|p| format!("{}: ", p.display()))
                    .unwrap_or_default(),
                config.runtime.workers
            )));
        }
        // Workers switch user once every worker has bound (build_workers).
        let first = self.worker.as_ref().is_none_or(|w| w.index == 0);
        let (switch, access) = accounts(&config, self.listen, first)?;
        let switch = if self.worker.is_some() { None } else { switch };
        let core = Core::new(config.runtime.clone()).map_err(|source| Error::System {
            what: "creating the poller (epoll or kqueue)".to_string(),
            source,
        })?;
        let mut rt = Runtime::new(core);
        rt.service = self.service;
        if let Some(slot) = &self.worker {
            rt.worker = Some(slot.clone());
            rt.core.borrow_mut().shared.worker_index = slot.index;
            rt.stats_board = slot.siblings.stats_board.clone();
            slot.siblings.join(slot.index, rt.handle());
        }
        if self.service {
            crate::notify::init();
        }
        if self.listen {
            if let Some(slot) = &self.worker {
                rt.core.borrow_mut().shared.inherited = slot.take_inherited();
            } else if self.inherit {
                let mut sets = crate::inherit::Inherited::from_env()
                    .split(1)
                    .map_err(Error::Config)?;
                rt.core.borrow_mut().shared.inherited = sets.pop().unwrap_or_default();
            }
        }
        let _active = ActiveGuard::enter(&rt.core);

        let mut instances = Vec::with_capacity(config.handlers.len());
        for (h, linked) in config.handlers.iter().zip(&linked) {
            instances.push(create_instance(&rt, &config, h, linked.as_ref())?);
        }
        rt.reload = crate::reload::State {
            config_path: self.config_path.clone().or_else(|| config.path.clone()),
            statics: std::mem::take(&mut self.statics),
            entries: config.handlers[..file_entries]
                .iter()
                .cloned()
                .zip(instances.iter().copied())
                .collect(),
            extra,
            sweep: None,
        };
        rt.arm_idle_sweep();

        if self.listen {
            let mut bound = Vec::new();
            for (i, ((h, &inst), access)) in config
                .handlers
                .iter()
                .zip(&instances)
                .zip(&access)
                .enumerate()
            {
                for addr in &h.listen {
                    let b = listener::open(&mut rt.core.borrow_mut(), addr, inst, access).map_err(
                        |source| Error::Listen {
                            location: h.listen_location(addr).map(ToString::to_string),
                            handler: h.name.clone(),
                            listener: addr.to_string(),
                            source,
                        },
                    )?;
                    bound.push((h.name.clone(), b, addr.clone(), i < file_entries));
                }
            }
            if let Some((user, gid, shown)) = &switch {
                switch_user(&config, user, *gid, shown)?;
            }
            // Only once every listener is open: nothing is reported as
            // listening by a loopd that is about to exit.
            for (name, b, _, _) in &bound {
                log::info!("{name} listening on {}", b.url);
            }
            for (name, b, addr, from_file) in &bound {
                rt.add_bound(name, b, addr, *from_file);
            }
            rt.core.borrow_mut().shared.inherited.close_unused();
            for (_, b, _, _) in &bound {
                rt.announce_listener(b);
            }
            rt.drain_pending();
        }

        #[cfg(feature = "signals")]
        if self.signals {
            rt.install_signals().map_err(|source| Error::System {
                what: "installing the signal handlers".to_string(),
                source,
            })?;
        }
        // Workers: build_workers does both once every worker is up.
        if self.worker.is_none() {
            crate::inherit::confirm_adoption();
            if self.service && self.listen {
                crate::notify::send(&format!("READY=1\nMAINPID={}", std::process::id()));
            }
        }
        Ok(rt)
    }
}

/// What a builder's config, specs and listeners come to.
struct Assembled {
    config: Config,
    /// For each entry, the linked type that serves it (if any).
    linked: Vec<Option<Linked>>,
    /// How many of the entries come from the config (the rest from code).
    file_entries: usize,
    /// Listeners added in code to the config's handlers.
    extra: Vec<(String, ListenAddr)>,
}

/// The user to switch to once the listeners are open (with its group and
/// how to name them in the log), and each handler's Unix socket access,
/// with the names in the config looked up; warns when loopd runs as root
/// and will stay root (when `warn`: once per process, not per worker).
/// `listen`: a real start, where a user switch that cannot happen (loopd
/// is not root) is an error; `loopd check` warns.
#[allow(clippy::type_complexity)]
pub(crate) fn accounts(
    config: &Config,
    listen: bool,
    warn: bool,
) -> Result<
    (
        Option<(privileges::User, libc::gid_t, String)>,
        Vec<listener::UnixAccess>,
    ),
    Error,
> {
    let rt = &config.runtime;
    let mut switch = None;
    if let Some(u) = &rt.user {
        let user = privileges::user(u, "runtime.user")?;
        let gid = match &rt.group {
            Some(g) => privileges::group(g, "runtime.group")?,
            None => user.gid,
        };
        let shown = format!(
            "user {} (uid {}), group {}",
            u.name,
            user.uid,
            rt.group
                .as_ref()
                .map_or(format!("gid {gid}"), |g| format!("{} (gid {gid})", g.name))
        );
        // SAFETY: these getters cannot fail.
        let already = unsafe { (libc::geteuid(), libc::getegid()) } == (user.uid, gid);
        if !already && !privileges::is_root() {
            let why = format!(
                "loopd runs as uid {}, not as root, so it cannot switch to {shown}; start it as root, or remove the key",
                privileges::euid()
            );
            let at = u
                .location
                .as_ref()
                .map(|l| format!("{l}: "))
                .unwrap_or_default();
            if listen {
                return Err(Error::Config(format!("{at}runtime.user: {why}")));
            }
            log::warn!("{at}runtime.user: {why} (a check need not be root)");
        }
        if !already {
            switch = Some((user, gid, shown));
        }
    } else if warn && privileges::is_root() {
        log::warn!(
            "loopd runs as root: every handler can do anything root can; set [runtime] user (and group) to switch to an unprivileged user once the listeners are open"
        );
    }
    let mut access = Vec::with_capacity(config.handlers.len());
    for (i, h) in config.handlers.iter().enumerate() {
        access.push(unix_access(h, i)?);
    }
    Ok((switch, access))
}

/// Entry `i`'s Unix socket mode and owner, with the names looked up.
pub(crate) fn unix_access(h: &HandlerConfig, i: usize) -> Result<listener::UnixAccess, Error> {
    Ok(listener::UnixAccess {
        mode: h.unix_mode,
        uid: h
            .unix_owner
            .as_ref()
            .map(|a| privileges::user(a, &format!("handler[{i}].unix_owner")))
            .transpose()?
            .map(|u| u.uid),
        gid: h
            .unix_group
            .as_ref()
            .map(|a| privileges::group(a, &format!("handler[{i}].unix_group")))
            .transpose()?,
    })
}

/// Switches to `[runtime] user`/`group` once every listener is open, and
/// warns about socket files the new user will not be able to remove.
pub(crate) fn switch_user(
    config: &Config,
    user: &privileges::User,
    gid: libc::gid_t,
    shown: &str,
) -> Result<(), Error> {
    privileges::switch_to(user, gid).map_err(|source| Error::System {
        what: format!("switching to {shown}"),
        source,
    })?;
    log::info!("listeners open; now running as {shown}");
    for h in &config.handlers {
        for addr in &h.listen {
            let ListenAddr::Unix(path) = addr else {
                continue;
            };
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !privileges::can_write_dir(dir) {
                log::warn!(
                    "{}: {} is not writable by the new user, so {} cannot be removed when loopd stops (the next start replaces it)",
                    h.name,
                    dir.display(),
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Loads (or links) the plugin of entry `h`, adds its instance record and
/// runs its `create`. On failure the record is gone again and the error
/// names the handler, the library and the reason.
pub(crate) fn create_instance(
    rt: &Runtime,
    config: &Config,
    h: &HandlerConfig,
    linked: Option<&Linked>,
) -> Result<InstanceId, Error> {
    let location = h.plugin_location.as_ref().map(|l| l.to_string());
    let fail = |path: &Path, reason: String| Error::Plugin {
        location: location.clone(),
        handler: h.name.clone(),
        path: path.to_path_buf(),
        reason,
    };
    let plugin = match linked {
        Some(l) => Plugin {
            path: None,
            name: match &h.plugin {
                PluginRef::Name(n) => n.clone(),
                PluginRef::Path(p) => p.display().to_string(),
            },
            version: String::new(),
            default_framing: l.framing,
            alpn: l.alpn.clone(),
            // Checked against its FRAMING when the type was compiled.
            framings: l.framings,
            vtable: l.vtable,
            stamp: None,
        },
        None => {
            let path = plugin::resolve(&h.plugin, config.runtime.plugin_dir.as_deref())
                .map_err(|(path, why)| fail(&path, why))?;
            // Once per process: worker 0 says it for every worker.
            let warnings = match &rt.worker {
                Some(w) if w.index > 0 => Vec::new(),
                _ => privileges::plugin_warnings(&path),
            };
            for warning in warnings {
                log::warn!("handler `{}`: {warning}", h.name);
            }
            plugin::load_current(&path).map_err(|why| fail(&path, why))?
        }
    };
    listeners_fit(h, &plugin)?;
    framing_fits(h, &plugin)?;
    let name = CString::new(h.name.as_str())
        .map_err(|_| Error::Config("handler name contains NUL".into()))?;
    let json = CString::new(h.config_json.as_str())
        .map_err(|_| Error::Config(format!("handler `{}`: config contains NUL", h.name)))?;
    let limits = h.limits(&config.runtime);
    let settings = Settings {
        framing: h
            .framing
            .or(plugin.default_framing)
            .unwrap_or(FramingKind::Raw),
        max_frame: limits.max_frame,
        high_watermark: limits.output_high_watermark,
        low_watermark: limits.output_low_watermark,
        broadcast: h.broadcast,
        max_connections: h.max_connections,
        max_per_peer: h
            .max_connections_per_peer
            .unwrap_or(config.runtime.max_connections_per_peer),
        idle_timeout: h.idle_timeout,
        reuse_address: h.reuse_address,
        ..Settings::default()
    };
    let settings = Settings {
        mailbox_messages: h.mailbox_messages.unwrap_or(settings.mailbox_messages),
        mailbox_bytes: h.mailbox_bytes.unwrap_or(settings.mailbox_bytes),
        ..settings
    };
    let tls = tls_server(h, &plugin.alpn)?;
    let tls_client = tls_client(h)?;
    let shown = plugin.path.clone().unwrap_or_else(|| h.name.clone().into());
    let (plugin_name, plugin_version) = (plugin.name.clone(), plugin.version.clone());
    let core_ptr: *const RefCell<Core> = &*rt.core;
    let id = rt.core.borrow_mut().instances.insert_with(|id| Instance {
        plugin,
        ptr: std::ptr::null_mut(),
        ctx: Box::new(HostCtx {
            core: core_ptr,
            instance: id,
            log_target: format!("loopd::handler::{}", h.name),
            name: h.name.clone(),
            postbox: rt.postbox.clone(),
            worker: rt.worker.clone(),
            stats_board: rt.stats_board.clone(),
        }),
        settings,
        scope: Scope::new(h.name.as_str()),
        life: Life::Creating,
        tls,
        tls_client,
    });
    // Before create: an instance may post to itself from create.
    rt.postbox.open(
        &h.name,
        id,
        settings.mailbox_messages,
        settings.mailbox_bytes,
    );
    let make = linked.and_then(|l| l.make.as_ref());
    match rt.hooks().create(id, &name, &json, make) {
        Ok(ptr) => {
            let mut core = rt.core.borrow_mut();
            let i = core.instances.get_mut(id).expect("the instance just added");
            i.ptr = ptr;
            i.life = Life::Live;
        }
        Err(msg) => {
            rt.core.borrow_mut().instances.remove(id);
            let mut err = fail(&shown, format!("create failed: {msg}"));
            // A message about a key of [handler.config] points at that key.
            if let (Error::Plugin { location, .. }, Some((key, at))) =
                (&mut err, h.locate_config_error(&msg))
            {
                *location = Some(format!("{at}: {key}"));
            }
            return Err(err);
        }
    }
    log::debug!(
        "{}: created from plugin {plugin_name} {plugin_version} ({} framing)",
        h.name,
        settings.framing
    );
    Ok(id)
}

/// Refuses a listener of entry `h` that the plugin has no hook for: a
/// `udp://` listener without `on_datagram` or `on_datagrams` (every
/// datagram would be dropped), a stream listener without any connection
/// hook (every connection would be accepted and ignored). A hook left NULL
/// is how a plugin says it does not serve that kind (`loopd.h`; the Rust
/// SDK's `Handler::DATAGRAMS` and `Handler::STREAMS`); one connection hook
/// is enough (a handler may only greet in `on_open`).
pub(crate) fn listeners_fit(h: &HandlerConfig, plugin: &Plugin) -> Result<(), Error> {
    h.listen
        .iter()
        .try_for_each(|addr| listener_fits(h, plugin, addr))
}

/// [`listeners_fit`] for one listener of `h` (a reload's new listener for
/// an instance it keeps).
pub(crate) fn listener_fits(
    h: &HandlerConfig,
    plugin: &Plugin,
    addr: &ListenAddr,
) -> Result<(), Error> {
    let why = match addr {
        ListenAddr::Udp(_) if !plugin.serves_datagrams() => "has no on_datagram hook, so every datagram would be dropped",
        ListenAddr::Tcp(_) | ListenAddr::Tls(_) | ListenAddr::Unix(_)
            if !plugin.serves_streams() =>
        {
            "has no connection hooks (on_open, on_data, on_close, ...), so every connection would be accepted and ignored"
        }
        _ => return Ok(()),
    };
    let at = h
        .listen_location(addr)
        .or(h.plugin_location.as_ref())
        .map(|l| format!("{l}: "))
        .unwrap_or_default();
    Err(Error::Config(format!(
        "{at}handler `{}`: listener {addr}: plugin {} {why}",
        h.name, plugin.name
    )))
}

/// Refuses an entry whose `framing` the plugin does not work with (its
/// `framings`, ABI 1.5): chat reads lines, a proxy bytes. Without a
/// `framing` key the entry gets the plugin's default, which
/// [`plugin::check_framings`] has checked already.
pub(crate) fn framing_fits(h: &HandlerConfig, plugin: &Plugin) -> Result<(), Error> {
    let Some(framing) = h.framing else {
        return Ok(());
    };
    if framing.is_in(plugin.framings) {
        return Ok(());
    }
    let default = plugin.default_framing.unwrap_or(FramingKind::Raw).name();
    let without = match plugin.default_framing {
        Some(_) => format!("its default is \"{default}\""),
        None => format!("without it the entry gets \"{default}\""),
    };
    // An entry made in code has no key to remove.
    let (at, fix) = match &h.framing_location {
        Some(l) => (format!("{l}: "), format!("remove the key ({without})")),
        None => (
            String::new(),
            format!("leave the framing unset ({without})"),
        ),
    };
    Err(Error::Config(format!(
        "{at}handler `{}`: framing = \"{}\": plugin {} works only with framing = {}; {fix}",
        h.name,
        framing.name(),
        plugin.name,
        FramingKind::list(plugin.framings),
    )))
}

/// The checks the config file applies to `[runtime]`, for settings made in code.
fn check_runtime(rt: &RuntimeConfig) -> Result<(), Error> {
    let fail = |what: String| Error::Config(format!("Builder::runtime: {what}"));
    for (value, key) in [
        (rt.max_connections, "max_connections"),
        (rt.output_high_watermark, "output_high_watermark"),
        (rt.max_frame, "max_frame"),
    ] {
        if value == 0 {
            return Err(fail(format!("{key} must be greater than 0")));
        }
    }
    if rt.shutdown_timeout.is_zero() || rt.close_timeout.is_zero() {
        return Err(fail(
            "shutdown_timeout and close_timeout must be greater than 0".to_string(),
        ));
    }
    rt.limits().validate().map_err(|e| fail(e.to_string()))
}

/// The certificate and key of a handler entry's `tls://` listeners, loaded
/// now: a missing, unreadable or malformed file, or a key that is not the
/// certificate's, stops the start with the path and the reason.
///
/// Its ALPN protocols are the entry's `tls_alpn`, else `declared` (the
/// plugin's).
pub(crate) fn tls_server(
    h: &HandlerConfig,
    declared: &[String],
) -> Result<Option<crate::instance::TlsServer>, Error> {
    let wants = h.listen.iter().any(|a| matches!(a, ListenAddr::Tls(_)));
    if !wants {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&h.tls_cert, &h.tls_key) else {
        return Err(Error::Config(format!(
            "handler `{}`: a tls:// listener needs tls_cert and tls_key",
            h.name
        )));
    };
    #[cfg(feature = "tls")]
    {
        let alpn: Vec<&[u8]> = h
            .tls_alpn
            .as_deref()
            .unwrap_or(declared)
            .iter()
            .map(|p| p.as_bytes())
            .collect();
        crate::tls::load_server(cert, key, h.tls_client_ca.as_deref(), &alpn, &h.tls_sni)
            .map(Some)
            .map_err(|e| Error::Config(format!("handler `{}`: {e}", h.name)))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cert, key, &h.tls_client_ca, declared);
        Err(Error::Config(format!(
            "handler `{}`: tls:// listeners need loopd built with the `tls` feature",
            h.name
        )))
    }
}

/// The setup of a handler entry's outbound `tls://` connections: the CAs
/// they trust (`tls_ca`) and the certificate they present
/// (`tls_connect_cert`); `None` for neither (the process's system CAs are
/// then used, read at the first connect).
pub(crate) fn tls_client(h: &HandlerConfig) -> Result<Option<crate::instance::TlsClient>, Error> {
    if h.tls_ca.is_none() && h.tls_connect.is_none() {
        return Ok(None);
    }
    #[cfg(feature = "tls")]
    {
        let identity = h
            .tls_connect
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        crate::tls::load_client(h.tls_ca.as_deref(), identity)
            .map(Some)
            .map_err(|e| Error::Config(format!("handler `{}`: {e}", h.name)))
    }
    #[cfg(not(feature = "tls"))]
    {
        Err(Error::Config(format!(
            "handler `{}`: tls_ca and tls_connect_cert need loopd built with the `tls` feature",
            h.name
        )))
    }
}
