//! Telling a service manager how loopd is doing: systemd's `sd_notify`
//! protocol (`Type=notify` units). A datagram such as `READY=1` to the Unix
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); nothing when it is not set. Never blocks, never fails loudly:
//! the manager is told what it can be told.

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

/// Where notifications go: read (and removed from the environment, so
/// children do not inherit it) the first time.
fn target() -> Option<&'static std::os::unix::net::SocketAddr> {
    static TARGET: OnceLock<Option<std::os::unix::net::SocketAddr>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let name = std::env::var_os("NOTIFY_SOCKET")?;
            std::env::remove_var("NOTIFY_SOCKET");
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()).to_vec();
            match bytes.first() {
                #[cfg(target_os = "linux")]
                Some(b'@') => {
                    use std::os::linux::net::SocketAddrExt;
                    std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..]).ok()
                }
                Some(b'/') => std::os::unix::net::SocketAddr::from_pathname(&name).ok(),
                _ => None,
            }
        })
        .as_ref()
}

/// Reads `NOTIFY_SOCKET` now, so a later notification needs no
/// environment (which a program may change).
pub(crate) fn init() {
    let _ = target();
}

/// Sends `state` (e.g. `READY=1`, `RELOADING=1\nMONOTONIC_USEC=...`,
/// `STOPPING=1`) to the service manager, if there is one.
pub(crate) fn send(state: &str) {
    let Some(to) = target() else { return };
    let sent = UnixDatagram::unbound().and_then(|s| {
        s.set_nonblocking(true)?;
        s.send_to_addr(state.as_bytes(), to)
    });
    if let Err(e) = sent {
        log::debug!("telling the service manager {state:?}: {e}");
    }
}

/// `RELOADING=1` with the monotonic timestamp systemd wants beside it.
pub(crate) fn reloading() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
