//! Opening a connection whose transport has a handshake to do (TLS):
//! `on_open` waits for it, bounded by `tls_handshake_timeout_ms`; and the
//! client side of an outbound `tls://` connect.

use super::*;

impl Conn {
    // ---------------------------------------------------------------------
    // Opening
    // ---------------------------------------------------------------------

    /// An accepted connection whose transport has a handshake to do:
    /// `on_open` waits for it, bounded by `tls_handshake_timeout`.
    pub(crate) fn start_handshake(&mut self, id: u64, sh: &mut Shared) {
        if let Some(t) = self.close_timer.take() {
            sh.timers.cancel(t);
        }
        self.phase = Phase::Handshaking;
        self.close_timer = Some(sh.timers.set(
            Instant::now() + sh.cfg.tls_handshake_timeout,
            TimerKind::HandshakeTimeout { conn: id },
        ));
        self.handshake(id, sh);
    }

    /// Whether the connection is still in its handshake.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.phase == Phase::Handshaking
    }

    /// Moves the handshake on after a readiness event; once done, the
    /// connection is open and `on_open` is queued. A failed handshake
    /// closes the connection with a debug line: the handler never hears
    /// of it.
    pub(crate) fn handshake(&mut self, id: u64, sh: &mut Shared) {
        if self.phase != Phase::Handshaking {
            return;
        }
        let Some(io) = self.io.as_mut() else { return };
        match io.handshake() {
            Ok(true) => {
                if let Some(t) = self.close_timer.take() {
                    sh.timers.cancel(t);
                }
                self.phase = Phase::Open;
                self.touch(sh);
                sh.pending.push_back(Deferred::Open(id));
                // Data sent with the handshake's last flight is already
                // decrypted: no event will report it.
                sh.pending.push_back(Deferred::Input(id));
            }
            Ok(false) => {}
            Err(e) => {
                // An outbound connection's handler learns that its connect
                // failed, and the operator why (an untrusted or misnamed
                // certificate is a setup to fix); a client's failed
                // handshake is its own business.
                let reason = if self.origin == abi::LOOPD_ORIGIN_CONNECTED {
                    // At most one a second: a proxy whose upstream's
                    // certificate is wrong fails every client's connect.
                    let log = &mut sh.tls_connect_log;
                    let at = match log.iter().position(|(i, _)| *i == self.instance) {
                        Some(at) => at,
                        None => {
                            if log.len() >= 64 {
                                log.remove(0);
                            }
                            log.push((self.instance, Default::default()));
                            log.len() - 1
                        }
                    };
                    if let Some(n) = log[at].1.allow(sh.now) {
                        log::warn!(
                            "{}: TLS handshake with {} ({}) failed: {e}{}",
                            self.name(),
                            peer_text(&self.peer),
                            self.endpoint.to_string_lossy(),
                            if n > 0 {
                                format!(" ({n} similar warnings suppressed)")
                            } else {
                                String::new()
                            }
                        );
                    }
                    abi::LOOPD_REASON_CONNECT_FAILED
                } else {
                    log::debug!(
                        "{}: TLS handshake with {} failed: {e}",
                        self.name(),
                        peer_text(&self.peer)
                    );
                    abi::LOOPD_REASON_ERROR
                };
                self.begin_close(id, sh, true, reason);
                return;
            }
        }
        self.update_interest(id, sh);
    }

    /// The handshake took longer than `tls_handshake_timeout`.
    pub(crate) fn handshake_timed_out(&mut self, id: u64, sh: &mut Shared) {
        if self.phase != Phase::Handshaking {
            return;
        }
        self.close_timer = None;
        log::debug!(
            "{}: TLS handshake with {} not done in {} ms (tls_handshake_timeout_ms); closing it",
            self.name(),
            peer_text(&self.peer),
            sh.cfg.tls_handshake_timeout.as_millis()
        );
        self.begin_close(id, sh, true, abi::LOOPD_REASON_TIMEOUT);
    }

    /// Marks `on_open` as delivered and returns what it reports (the
    /// endpoint string is returned too, so it outlives the call). `None` if
    /// the connection is not open or already opened.
    pub(crate) fn open_info(&mut self) -> Option<(loopd_conn_info, Rc<CStr>)> {
        if self.phase != Phase::Open || self.opened {
            return None;
        }
        self.opened = true;
        self.known = true;
        let info = loopd_conn_info {
            struct_size: std::mem::size_of::<loopd_conn_info>() as u32,
            transport: self.transport,
            origin: self.origin,
            framing: self.framing.into(),
            peer: self.peer,
            local: self.local,
            endpoint: self.endpoint.as_ptr(),
        };
        Some((info, self.endpoint.clone()))
    }
}

/// How an outbound `tls://` connection is set up: the CAs it trusts and
/// the name its server's certificate must carry.
#[cfg(feature = "tls")]
pub(super) struct TlsClientSetup(
    crate::tls::ClientConfig,
    rustls::pki_types::ServerName<'static>,
);

#[cfg(not(feature = "tls"))]
pub(super) struct TlsClientSetup(std::convert::Infallible);

/// Chooses the setup of an outbound `tls://` connect to `ip`, before any
/// socket exists: the instance's `tls_ca`, else the system's CA
/// certificates; `server_name` (or the IP) as the name to verify. A
/// refusal is `LOOPD_ERR_INVALID` (a bad name, no CAs to trust), with a
/// debug line saying why.
#[cfg(feature = "tls")]
pub(super) fn tls_client_setup(
    inst: &Instance,
    ip: std::net::IpAddr,
    server_name: Option<&str>,
    url: &str,
) -> Result<TlsClientSetup, i32> {
    let Some(name) = crate::tls::server_name(server_name, ip) else {
        log::debug!(
            "{}: connect to {url}: server_name {:?} is not a DNS name",
            inst.name(),
            server_name.unwrap_or_default()
        );
        return Err(abi::LOOPD_ERR_INVALID);
    };
    let config = match &inst.tls_client {
        Some(c) => c.clone(),
        None => crate::tls::system_client().ok_or_else(|| {
            log::debug!(
                "{}: connect to {url}: no tls_ca and no system CA certificates to trust",
                inst.name()
            );
            abi::LOOPD_ERR_INVALID
        })?,
    };
    Ok(TlsClientSetup(config, name))
}

#[cfg(not(feature = "tls"))]
pub(super) fn tls_client_setup(
    inst: &Instance,
    _ip: std::net::IpAddr,
    _server_name: Option<&str>,
    url: &str,
) -> Result<TlsClientSetup, i32> {
    log::debug!(
        "{}: connect to {url}: loopd was built without the `tls` feature",
        inst.name()
    );
    Err(abi::LOOPD_ERR_UNSUPPORTED)
}

impl TlsClientSetup {
    /// The client side of TLS over the connecting socket `fd`.
    pub(super) fn transport(self, fd: OwnedFd) -> std::io::Result<Transport> {
        #[cfg(feature = "tls")]
        {
            Ok(Transport::Tls(Box::new(crate::tls::TlsStream::connect(
                fd, &self.0, self.1,
            )?)))
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = fd;
            match self.0 {}
        }
    }
}
