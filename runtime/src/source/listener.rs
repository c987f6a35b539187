//! Listening sockets: TCP (IPv4 and IPv6, `SO_REUSEADDR`) and Unix-domain
//! streams, opened non-blocking with a deep accept backlog; accepting from
//! them, with a back-off when the process runs out of descriptors.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use loopd_handler_api::abi;

use crate::config::ListenAddr;
use crate::core::{Core, Deferred};
use crate::instance::InstanceId;
use crate::source::stream::{self, Conn};
use crate::source::{datagram, Source};
use crate::stats::Scope;
use crate::sys;
use crate::timer::TimerKind;
use crate::transport::Transport;

/// Accept backlog requested from the kernel (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;
/// How long a listener rests after EMFILE/ENFILE before accepting again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most connections accepted per readiness event (fairness).
const ACCEPTS_PER_EVENT: usize = 64;

/// How a Unix listener's socket file is made: its mode (`None`: 0660
/// without the bits the umask clears) and owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UnixAccess {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
}

/// The default mode of a Unix socket file before the umask: owner and
/// group may connect, others may not (as php-fpm's `listen.mode`).
const DEFAULT_UNIX_MODE: u32 = 0o660;

/// An open stream listener.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) fd: OwnedFd,
    /// The owning handler instance.
    pub(crate) instance: InstanceId,
    /// `LOOPD_TRANSPORT_*` of accepted connections.
    pub(crate) transport: u32,
    /// The URL actually bound (a port of 0 replaced by the real one).
    pub(crate) url: Rc<CStr>,
    /// The listener's counters (named by its URL).
    pub(crate) scope: Rc<Scope>,
    /// The socket file we created, removed again when the listener closes.
    unix_path: Option<(PathBuf, u64, u64)>,
    /// Inherited, not bound here: its file is removed only once this
    /// process's build has succeeded (`inherit::confirm_adoption`).
    adopted: bool,
    /// Not accepting for a moment after EMFILE/ENFILE.
    paused: bool,
}

/// A listener that was opened, as `on_listen` reports it.
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub(crate) id: u64,
    pub(crate) instance: InstanceId,
    pub(crate) transport: u32,
    pub(crate) local: abi::loopd_addr,
    pub(crate) url: String,
    pub(crate) scope: Rc<Scope>,
}

impl Listener {
    /// Opens a stream listener for `addr`. UDP is not a stream listener.
    pub(crate) fn open(
        addr: &ListenAddr,
        instance: InstanceId,
        inherited: Option<OwnedFd>,
        sharing: sys::PortSharing,
        access: &UnixAccess,
    ) -> io::Result<Listener> {
        let mut adopted = false;
        let (fd, transport, url, unix_path) = match addr {
            ListenAddr::Tcp(sa) | ListenAddr::Tls(sa) => {
                let tls = matches!(addr, ListenAddr::Tls(_));
                if tls && !cfg!(feature = "tls") {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "tls:// listeners need loopd built with the `tls` feature",
                    ));
                }
                let fd = match inherited {
                    Some(fd) => fd,
                    None => sys::bind_listener(sa, true, BACKLOG, false, sharing)?,
                };
                let local = sys::local_addr(fd.as_raw_fd())
                    .to_socket_addr()
                    .unwrap_or(*sa);
                if tls {
                    (fd, abi::LOOPD_TRANSPORT_TLS, format!("tls://{local}"), None)
                } else {
                    (fd, abi::LOOPD_TRANSPORT_TCP, format!("tcp://{local}"), None)
                }
            }
            ListenAddr::Unix(path) => {
                adopted = inherited.is_some();
                let fd = match inherited {
                    Some(fd) => fd,
                    None => {
                        clear_stale_socket(path)?;
                        bind_unix(path, access)?.0
                    }
                };
                let meta = std::fs::symlink_metadata(path)?;
                (
                    fd,
                    abi::LOOPD_TRANSPORT_UNIX,
                    addr.to_string(),
                    Some((path.clone(), meta.dev(), meta.ino())),
                )
            }
            ListenAddr::Udp(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a udp address is not a stream listener",
                ))
            }
        };
        Ok(Listener {
            fd,
            instance,
            transport,
            scope: Scope::new(url.as_str()),
            url: cstr(url),
            unix_path,
            adopted,
            paused: false,
        })
    }

    /// The (device, inode) of the socket file this listener created.
    pub(crate) fn unix_file(&self) -> Option<(u64, u64)> {
        self.unix_path.as_ref().map(|(_, dev, ino)| (*dev, *ino))
    }

    pub(crate) fn url_str(&self) -> &str {
        self.url.to_str().unwrap_or("?")
    }

    /// Serves the same TCP socket as `tls://` (or back as `tcp://`), for
    /// `instance`, from the next accept: a reload that switches a port's
    /// transport keeps its socket, so no connection waiting in its backlog
    /// is lost. Connections already accepted keep their own transport.
    /// Returns the new URL; its counters start afresh under it.
    pub(crate) fn switch_transport(&mut self, instance: InstanceId, tls: bool) -> String {
        let local = sys::local_addr(self.fd.as_raw_fd())
            .to_socket_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let (transport, url) = if tls {
            (abi::LOOPD_TRANSPORT_TLS, format!("tls://{local}"))
        } else {
            (abi::LOOPD_TRANSPORT_TCP, format!("tcp://{local}"))
        };
        self.instance = instance;
        self.transport = transport;
        self.scope = Scope::new(url.as_str());
        self.url = cstr(url.clone());
        url
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket file, but only if it is still the one we bound:
        // another process may have replaced it since.
        if self.adopted && !crate::inherit::adoption_confirmed() {
            // A failed build of a new process: the old one serves it.
            return;
        }
        if let Some((path, dev, ino)) = &self.unix_path {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.dev() == *dev && meta.ino() == *ino {
                    // After a switch to `[runtime] user`, the directory may
                    // not let loopd remove it: say so (the next start
                    // replaces a stale file).
                    if let Err(e) = std::fs::remove_file(path) {
                        log::warn!("cannot remove the socket file {}: {e}", path.display());
                    }
                }
            }
        }
    }
}

/// Binds a Unix socket file with `access`'s mode and owner, then listens:
/// until then a connect to the file is refused, so no one can connect
/// before it is as configured. On an error after the bind, the new file is
/// removed again.
fn bind_unix(path: &Path, access: &UnixAccess) -> io::Result<(OwnedFd, std::fs::Metadata)> {
    let fd = sys::bind_unix(path)?;
    let setup = || -> io::Result<std::fs::Metadata> {
        // bind created it with 0777 less the umask.
        let created = std::fs::symlink_metadata(path)?.mode() & 0o7777;
        let mode = access.mode.unwrap_or(DEFAULT_UNIX_MODE & created);
        if mode != created {
            sys::chmod_nofollow(path, mode).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("setting the mode of {} to {mode:04o}: {e}", path.display()),
                )
            })?;
        }
        if access.uid.is_some() || access.gid.is_some() {
            // lchown: the socket file itself, never what a symlink put in
            // its place would point to.
            std::os::unix::fs::lchown(path, access.uid, access.gid).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "setting the owner of {} to {}:{}: {e}",
                        path.display(),
                        access.uid.map_or("-".to_string(), |u| u.to_string()),
                        access.gid.map_or("-".to_string(), |g| g.to_string())
                    ),
                )
            })?;
        }
        let meta = std::fs::symlink_metadata(path)?;
        sys::set_backlog(fd.as_raw_fd(), BACKLOG)?;
        Ok(meta)
    };
    match setup() {
        Ok(meta) => Ok((fd, meta)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

pub(crate) fn cstr(s: String) -> Rc<CStr> {
    Rc::from(CString::new(s).unwrap_or_default().as_c_str())
}

/// Opens a listener (or UDP socket) for `instance` and registers it;
/// returns what `on_listen` reports about it.
pub(crate) fn open(
    core: &mut Core,
    addr: &ListenAddr,
    instance: InstanceId,
    access: &UnixAccess,
) -> io::Result<Bound> {
    if let ListenAddr::Udp(sa) = addr {
        return datagram::open(core, sa, instance);
    }
    check_own_listeners(core, addr)?;
    let inherited = core.shared.inherited.take(addr);
    let l = Listener::open(
        addr,
        instance,
        inherited,
        sys::PortSharing::of_worker(core.shared.worker_index, core.shared.cfg.workers),
        access,
    )?;
    let url = l.url_str().to_string();
    let transport = l.transport;
    let local = sys::local_addr(l.fd.as_raw_fd());
    let scope = l.scope.clone();
    let id = core.register(Source::Listener(l), true, false)?;
    Ok(Bound {
        id,
        instance,
        transport,
        local,
        url,
        scope,
    })
}

/// A listener of this very config already holds `addr` (the same socket
/// file under another spelling, or the same port on another address): say
/// so, rather than blaming another process.
fn check_own_listeners(core: &Core, addr: &ListenAddr) -> io::Result<()> {
    let own = |pred: &dyn Fn(&Listener) -> bool| {
        core.sources
            .ids()
            .into_iter()
            .find_map(|id| match core.sources.get(id) {
                Some(Source::Listener(l)) if pred(l) => Some((
                    l.url_str().to_string(),
                    core.instances.name(l.instance).to_string(),
                )),
                _ => None,
            })
    };
    let clash = match addr {
        ListenAddr::Unix(path) => match std::fs::symlink_metadata(path) {
            Ok(meta) => own(&|l| l.unix_file() == Some((meta.dev(), meta.ino()))),
            Err(_) => None,
        },
        ListenAddr::Tcp(sa) | ListenAddr::Tls(sa) if sa.port() != 0 => own(&|l| {
            l.url_str()
                .split_once("://")
                .filter(|(scheme, _)| matches!(*scheme, "tcp" | "tls"))
                .map(|(_, rest)| rest)
                .and_then(|u| u.parse::<std::net::SocketAddr>().ok())
                .is_some_and(|bound| same_port(&bound, sa))
        }),
        _ => None,
    };
    match clash {
        Some((url, handler)) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("it is the same socket as {url}, already opened by handler `{handler}` of this config"),
        )),
        None => Ok(()),
    }
}

/// Whether two socket addresses would take the same port (the same
/// address, or a wildcard on either side, in one address family).
pub(crate) fn same_port(a: &std::net::SocketAddr, b: &std::net::SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Accepts what a listener has pending; queues `on_open` for each.
pub(crate) fn accept(core: &mut Core, id: u64) {
    for _ in 0..ACCEPTS_PER_EVENT {
        let Some(Source::Listener(l)) = core.sources.get(id) else {
            return;
        };
        if l.paused {
            return;
        }
        let (instance, transport, url, scope) =
            (l.instance, l.transport, l.url.clone(), l.scope.clone());
        let (fd, peer) = match sys::accept(l.fd.as_raw_fd()) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if sys::is_transient_accept_error(&e) => continue,
            Err(e) if sys::is_resource_exhaustion(&e) => {
                if let Some(n) = core.shared.full_warning.allow(Instant::now()) {
                    log::warn!(
                        "{}: accept on {}: {e}; pausing this listener for {}ms ({n} similar warnings suppressed)",
                        core.instances.name(instance),
                        url.to_str().unwrap_or("?"),
                        ACCEPT_BACKOFF.as_millis()
                    );
                }
                pause(core, id);
                return;
            }
            Err(e) => {
                log::error!(
                    "{}: accept on {}: {e}",
                    core.instances.name(instance),
                    url.to_str().unwrap_or("?")
                );
                pause(core, id);
                return;
            }
        };
        let max = core.shared.cfg.max_connections;
        if core.shared.conns >= max {
            if let Some(n) = core.shared.full_warning.allow(Instant::now()) {
                log::warn!(
                    "max_connections ({max}) reached: refusing a connection on {} ({n} similar warnings suppressed)",
                    url.to_str().unwrap_or("?")
                );
            }
            continue;
        }
        let Some(inst) = core.instances.get(instance) else {
            continue;
        };
        // The instance's own limit, and its limit per peer address: one
        // handler (or one peer) cannot take every connection of the process.
        if let Some(limit) = inst.settings.max_connections {
            if inst.scope.counters.active.get() >= limit as u64 {
                if let Some(n) = core.shared.full_warning.allow(Instant::now()) {
                    log::warn!(
                        "{}: max_connections ({limit}) of this handler reached: refusing a connection from {} on {} ({n} similar warnings suppressed)",
                        inst.name(),
                        stream::peer_text(&peer),
                        url.to_str().unwrap_or("?")
                    );
                }
                continue;
            }
        }
        let peer_ip = peer.to_socket_addr().map(|a| a.ip().to_canonical());
        let per_peer = inst.settings.max_per_peer;
        if let Some(ip) = peer_ip.filter(|_| per_peer > 0) {
            let open = core.shared.peers.get(&(instance, ip)).copied().unwrap_or(0);
            if open as usize >= per_peer {
                if let Some(n) = core.shared.full_warning.allow(Instant::now()) {
                    log::warn!(
                        "{}: max_connections_per_peer ({per_peer}) reached for {ip}: refusing a connection on {} ({n} similar warnings suppressed)",
                        inst.name(),
                        url.to_str().unwrap_or("?")
                    );
                }
                continue;
            }
        }
        if transport == abi::LOOPD_TRANSPORT_TCP || transport == abi::LOOPD_TRANSPORT_TLS {
            sys::set_nodelay(fd.as_raw_fd());
        }
        let local = sys::local_addr(fd.as_raw_fd());
        let io = if transport == abi::LOOPD_TRANSPORT_TLS {
            match tls_transport(fd, inst) {
                Ok(io) => io,
                Err(e) => {
                    log::warn!(
                        "{}: TLS on {}: {e}",
                        inst.name(),
                        url.to_str().unwrap_or("?")
                    );
                    continue;
                }
            }
        } else {
            Transport::Plain(fd)
        };
        let handshaking = io.handshaking();
        let conn = Conn::new(
            instance,
            inst,
            Some(scope),
            Some(io),
            transport,
            abi::LOOPD_ORIGIN_ACCEPTED,
            peer,
            local,
            url,
        );
        match core.register(Source::Stream(conn), true, false) {
            Ok(cid) => {
                core.shared.conns += 1;
                if let Some((c, sh)) = core.conn_and_shared(cid) {
                    stream::count_accepted(c);
                    if let Some(ip) = peer_ip.filter(|_| per_peer > 0) {
                        c.count_peer(ip, sh);
                    }
                    if handshaking {
                        // on_open once the handshake is done.
                        c.start_handshake(cid, sh);
                        continue;
                    }
                }
                core.shared.pending.push_back(Deferred::Open(cid));
            }
            Err(e) => log::warn!("registering an accepted connection: {e}"),
        }
    }
    core.shared.capped = true;
}

/// The server side of TLS over an accepted socket, with the instance's
/// certificate.
#[cfg(feature = "tls")]
fn tls_transport(fd: OwnedFd, inst: &crate::instance::Instance) -> io::Result<Transport> {
    let Some(config) = &inst.tls else {
        return Err(io::Error::other("the handler has no tls_cert and tls_key"));
    };
    Ok(Transport::Tls(Box::new(crate::tls::TlsStream::accept(
        fd, config,
    )?)))
}

#[cfg(not(feature = "tls"))]
fn tls_transport(_fd: OwnedFd, inst: &crate::instance::Instance) -> io::Result<Transport> {
    // Always None here (its type is Infallible).
    let _ = &inst.tls;
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "loopd was built without the `tls` feature",
    ))
}

/// Stops accepting on a listener (or `loopd reload`'s request socket) for
/// [`ACCEPT_BACKOFF`] after EMFILE/ENFILE: its backlog would otherwise
/// report it ready on every pass.
pub(crate) fn pause(core: &mut Core, id: u64) {
    set_accepting(core, id, false);
    core.shared.timers.set(
        Instant::now() + ACCEPT_BACKOFF,
        TimerKind::ResumeListener { listener: id },
    );
}

/// A listener paused after EMFILE/ENFILE may accept again.
pub(crate) fn resume(core: &mut Core, id: u64) {
    set_accepting(core, id, true);
}

/// Watches (or stops watching) a listener or the request socket for
/// connections to accept.
fn set_accepting(core: &mut Core, id: u64, on: bool) {
    let fd = match core.sources.get_mut(id) {
        Some(Source::Listener(l)) => {
            l.paused = !on;
            l.fd.as_fd()
        }
        #[cfg(target_os = "linux")]
        Some(Source::Control(c)) => c.listener.as_fd(),
        _ => return,
    };
    if let Err(e) = core.shared.poll.modify(fd, id, on, false) {
        let what = if on { "resuming" } else { "pausing" };
        log::warn!("{what} listener: {e}");
    }
}

/// Forgets the socket files of the Unix listeners, so closing them leaves
/// the files (a new process serves the same sockets after an upgrade).
pub(crate) fn keep_socket_files(core: &mut Core) {
    for id in core.sources.ids() {
        if let Some(Source::Listener(l)) = core.sources.get_mut(id) {
            l.unix_path = None;
        }
    }
}

/// Copies of the Unix listeners' sockets, with their paths: the other
/// workers accept from the same socket.
pub(crate) fn unix_sockets(core: &Core) -> Vec<(PathBuf, OwnedFd)> {
    let mut out = Vec::new();
    for id in core.sources.ids() {
        if let Some(Source::Listener(l)) = core.sources.get(id) {
            if let Some((path, _, _)) = &l.unix_path {
                match l.fd.try_clone() {
                    Ok(fd) => out.push((path.clone(), fd)),
                    Err(e) => {
                        log::warn!("{}: cannot share with the other workers: {e}", l.url_str())
                    }
                }
            }
        }
    }
    out
}

/// Closes every listener and datagram socket (shutdown: stop accepting).
pub(crate) fn close_all(core: &mut Core) {
    for id in core.sources.ids() {
        if matches!(
            core.sources.get(id),
            Some(Source::Listener(_) | Source::Datagram(_))
        ) {
            if let Some(Source::Datagram(d)) = core.remove_source(id) {
                d.log_drops(core.instances.name(d.instance));
            }
        }
    }
}

/// How long probing an existing socket file may take: a process that
/// holds it but does not accept (stopped, or its backlog full) must not
/// keep loopd from starting, or from saying why it cannot.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a connect to an existing socket file found.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// A process accepted the connection.
    Listening,
    /// A process holds the socket but did not take the connection within
    /// [`PROBE_TIMEOUT`] (its backlog is full: stopped, or overloaded).
    NotAccepting,
    /// Nobody listens: the file was left behind.
    Stale,
    /// The file went away meanwhile.
    Gone,
}

/// Connects to `path` without blocking (at most [`PROBE_TIMEOUT`]).
fn probe(path: &Path) -> io::Result<Probe> {
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::ECONNREFUSED);
    match sys::connect_unix(path) {
        // Linux connects a Unix socket at once or not at all; other systems
        // may report it in progress: writability then tells.
        Ok(fd) => {
            if !sys::wait_writable(fd.as_raw_fd(), PROBE_TIMEOUT)? {
                return Ok(Probe::NotAccepting);
            }
            match sys::take_error(fd.as_raw_fd())? {
                None => Ok(Probe::Listening),
                Some(e) if refused(&e) => Ok(Probe::Stale),
                Some(e) => Err(e),
            }
        }
        Err(e) if refused(&e) => Ok(Probe::Stale),
        // A full backlog refuses a non-blocking connect with EAGAIN.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Probe::NotAccepting),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Gone),
        Err(e) => Err(e),
    }
}

/// A socket file left behind by a process that died is removed; one that a
/// live process still listens on is an error, and so is one whose process
/// accepts nothing within a second (stopped, or its backlog full: the
/// socket is still that process's), and any other file.
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
    match probe(path)? {
        Probe::Listening => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        )),
        Probe::NotAccepting => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process holds {} but accepts no connections (its backlog is full: \
                 stopped or overloaded?); not replacing it",
                path.display()
            ),
        )),
        Probe::Stale => {
            log::info!("removing stale socket {}", path.display());
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Probe::Gone => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

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
        let open = |p: &std::path::PathBuf| {
            Listener::open(
                &ListenAddr::Unix(p.clone()),
                1,
                None,
                sys::PortSharing::Alone,
                &UnixAccess::default(),
            )
        };
        let live = open(&path).expect("stale file replaced");
        let err = open(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(live);
        assert!(!path.exists(), "socket file removed on close");
    }

    #[test]
    fn a_socket_whose_backlog_is_full_is_refused_without_blocking() {
        let path = tmp("full.sock");
        let _ = std::fs::remove_file(&path);
        let holder = UnixListener::bind(&path).unwrap();
        sys::set_backlog(holder.as_raw_fd(), 0).unwrap();
        // Fill the backlog: non-blocking connects until the kernel refuses.
        let mut queued = Vec::new();
        loop {
            match sys::connect_unix(&path) {
                Ok(fd) => queued.push(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the backlog: {e}"),
            }
            assert!(queued.len() < 1000, "the backlog never filled");
        }
        assert_eq!(probe(&path).unwrap(), Probe::NotAccepting);
        let err = Listener::open(
            &ListenAddr::Unix(path.clone()),
            1,
            None,
            sys::PortSharing::Alone,
            &UnixAccess::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("accepts no connections"), "{err}");
        assert!(path.exists(), "the holder's socket file was kept");
        drop(queued);
        drop(holder);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_regular_file_is_never_removed() {
        let path = tmp("regular");
        std::fs::write(&path, b"keep me").unwrap();
        let err = Listener::open(
            &ListenAddr::Unix(path.clone()),
            1,
            None,
            sys::PortSharing::Alone,
            &UnixAccess::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tcp_port_zero_reports_the_real_port() {
        let l = Listener::open(
            &ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
            1,
            None,
            sys::PortSharing::Alone,
            &UnixAccess::default(),
        )
        .unwrap();
        assert!(l.url_str().starts_with("tcp://127.0.0.1:"));
        assert!(!l.url_str().ends_with(":0"));
        assert_eq!(&*l.scope.name, l.url_str(), "counters are named by the URL");
    }
}
