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
                log::debug!(
                    "{}: TLS handshake with {} failed: {e}",
                    self.name(),
                    peer_text(&self.peer)
                );
                // An outbound connection's handler learns that its connect
                // failed.
                let reason = if self.origin == abi::LOOPD_ORIGIN_CONNECTED {
                    abi::LOOPD_REASON_CONNECT_FAILED
                } else {
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

/// The client side of TLS over a connecting socket, trusting the
/// instance's `tls_ca`.
#[cfg(feature = "tls")]
pub(super) fn tls_client_transport(
    fd: OwnedFd,
    inst: &Instance,
    ip: std::net::IpAddr,
) -> std::io::Result<Transport> {
    let Some(config) = &inst.tls_client else {
        return Err(std::io::Error::other("the handler has no tls_ca"));
    };
    Ok(Transport::Tls(Box::new(crate::tls::TlsStream::connect(
        fd, config, ip,
    )?)))
}

#[cfg(not(feature = "tls"))]
pub(super) fn tls_client_transport(
    _fd: OwnedFd,
    inst: &Instance,
    _ip: std::net::IpAddr,
) -> std::io::Result<Transport> {
    // Always None here (its type is Infallible).
    let _ = &inst.tls_client;
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "loopd was built without the `tls` feature",
    ))
}
