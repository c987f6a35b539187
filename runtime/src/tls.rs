//! TLS over a stream socket (the `tls` feature): rustls with the `ring`
//! provider, driven by the loop without blocking.
//!
//! A [`TlsStream`] is a nonblocking socket and a rustls connection. Reads
//! pull records from the socket only when no decrypted bytes are left;
//! writes hand rustls plaintext only once the records of the previous write
//! are on the wire, so rustls never holds more than one write (at most
//! [`BUFFER_LIMIT`] bytes, also set as its own limit) on top of loopd's
//! output queue: the watermarks hold over TLS as over TCP.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::sys;

/// The most plaintext and records rustls may hold for one connection's
/// output (`set_buffer_limit`).
pub(crate) const BUFFER_LIMIT: usize = 64 << 10;

/// A server's TLS setup: the certificate chain and key of a handler entry.
pub(crate) type ServerConfig = Arc<rustls::ServerConfig>;

/// The crypto provider loopd uses: ring (builds with a C compiler alone).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM private key)
/// into a server config, with the further certificates of `sni` (each
/// chosen for the DNS names it carries when a client asks for one). The
/// error names the file and what is wrong with it: unreadable, no
/// certificate or key in it, a key that does not belong to the
/// certificate, an SNI certificate without a DNS name.
pub(crate) fn load_server(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
    sni: &[(std::path::PathBuf, std::path::PathBuf)],
) -> Result<ServerConfig, String> {
    let certs = read_certs("tls_cert", cert)?;
    let key_der = read_key("tls_key", key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            // Mutual TLS: a client must present a certificate this CA
            // signed, or the handshake fails.
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("tls_client_ca", ca)? {
                roots.add(c).map_err(|e| {
                    format!("tls_client_ca {}: not a CA certificate: {e}", ca.display())
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mismatch = |e: rustls::Error| {
        format!(
            "tls_key {} does not go with tls_cert {}: {e}",
            key.display(),
            cert.display()
        )
    };
    let mut config = if sni.is_empty() {
        builder.with_single_cert(certs, key_der).map_err(mismatch)?
    } else {
        let provider = provider();
        let default =
            rustls::sign::CertifiedKey::from_der(certs, key_der, &provider).map_err(mismatch)?;
        let mut by_name = Vec::new();
        for (c, k) in sni {
            let (names, ck) = load_sni(c, k)?;
            by_name.extend(names.into_iter().map(|n| (n, ck.clone())));
        }
        builder.with_cert_resolver(Arc::new(SniResolver {
            default: Arc::new(default),
            by_name,
        }))
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// One `tls_sni` certificate and key, and the DNS names it serves. The
/// error starts with `tls_sni cert` or `tls_sni key`: the file at fault.
pub(crate) fn load_sni(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<String>, Arc<rustls::sign::CertifiedKey>), String> {
    let chain = read_certs("tls_sni cert", cert)?;
    let names =
        dns_names(&chain[0]).map_err(|e| format!("tls_sni cert {}: {e}", cert.display()))?;
    if names.is_empty() {
        return Err(format!(
            "tls_sni cert {}: carries no DNS name (subjectAltName), so no client could ask for it",
            cert.display()
        ));
    }
    let ck =
        rustls::sign::CertifiedKey::from_der(chain, read_key("tls_sni key", key)?, &provider())
            .map_err(|e| {
                format!(
                    "tls_sni key {} does not go with its cert {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?;
    Ok((names, Arc::new(ck)))
}

/// A client's TLS setup: the CAs that outbound `tls://` connections trust.
pub(crate) type ClientConfig = Arc<rustls::ClientConfig>;

/// Loads the client setup of a handler's outbound `tls://` connections:
/// `ca` (PEM CA certificates) as the only roots they trust, else the
/// system's; and `identity` (`tls_connect_cert`, `tls_connect_key`), the
/// certificate they present to a server that asks for one (mutual TLS).
pub(crate) fn load_client(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let roots = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("tls_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls_ca {}: not a CA certificate: {e}", ca.display()))?;
            }
            roots
        }
        None => system_roots(log::Level::Warn).ok_or_else(|| {
            "tls_connect_cert: no tls_ca and no system CA certificates to trust the servers by"
                .to_string()
        })?,
    };
    let Some((cert, key)) = identity else {
        return client_trusting(roots);
    };
    let certs = read_certs("tls_connect_cert", cert)?;
    let key_der = read_key("tls_connect_key", key)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key_der)
        .map_err(|e| {
            format!(
                "tls_connect_key {} does not go with tls_connect_cert {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The system's CA certificates (see [`system_client`]); `None`, logged at
/// `level` with what to do, when there are none.
fn system_roots(level: log::Level) -> Option<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        log::log!(level, "reading the system's CA certificates: {e}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        log::log!(
            level,
            "outbound tls://: no system CA certificates found (install the system's CA bundle, e.g. the ca-certificates package, set SSL_CERT_FILE, or give the handler tls_ca)"
        );
        return None;
    }
    log::info!(
        "outbound tls://: trusting {added} system CA certificates ({ignored} unusable ones skipped)"
    );
    Some(roots)
}

fn client_trusting(roots: rustls::RootCertStore) -> Result<ClientConfig, String> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client setup of a handler without `tls_ca`: the system's CA
/// certificates (the `SSL_CERT_FILE` or `SSL_CERT_DIR` the environment
/// names, else the platform's store), read once per process on the first
/// outbound `tls://` connect that needs them (1 to 20 ms on the loop
/// thread, once). `None` when there are none, which is logged with what to
/// do; they are looked for again at the next such connect, so installing
/// them needs no restart.
pub(crate) fn system_client() -> Option<ClientConfig> {
    static SYSTEM: std::sync::Mutex<Option<ClientConfig>> = std::sync::Mutex::new(None);
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let mut system = SYSTEM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(c) = &*system {
        return Some(c.clone());
    }
    let first = !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed);
    let level = if first {
        log::Level::Warn
    } else {
        log::Level::Debug
    };
    match client_trusting(system_roots(level)?) {
        Ok(c) => {
            *system = Some(c.clone());
            Some(c)
        }
        Err(e) => {
            log::log!(level, "outbound tls://: {e}");
            None
        }
    }
}

/// The name an outbound connection's server certificate must carry: the
/// DNS name given (`server_name`), else the IP address connected to.
/// `None` for a name that is not a valid DNS name.
pub(crate) fn server_name(
    name: Option<&str>,
    ip: std::net::IpAddr,
) -> Option<rustls::pki_types::ServerName<'static>> {
    match name {
        None => Some(rustls::pki_types::ServerName::IpAddress(ip.into())),
        // A DNS name only: an IP address here would skip the name check
        // the caller asked for (and send no SNI).
        Some(n) => match rustls::pki_types::ServerName::try_from(n.to_string()).ok()? {
            dns @ rustls::pki_types::ServerName::DnsName(_) => Some(dns),
            _ => None,
        },
    }
}

/// The most a certificate, key or CA file may hold: a chain or a CA bundle
/// is kilobytes (the whole Mozilla bundle about 200 KiB).
const MAX_PEM_BYTES: u64 = 16 << 20;

/// A PEM file: a regular file of at most [`MAX_PEM_BYTES`] (a FIFO would
/// stall the loop reading it, at start or at a reload; `/dev/zero` would
/// fill memory).
fn read_file(kind: &str, path: &Path) -> Result<Vec<u8>, String> {
    crate::sys::read_regular_file(path, MAX_PEM_BYTES, "a PEM file")
        .map_err(|e| format!("{kind} {}: {e}", path.display()))
}

fn read_certs(kind: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(kind, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{kind} {}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{kind} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(kind: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(kind, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{kind} {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            path.display()
        ),
        e => format!("{kind} {}: not a PEM private key: {e}", path.display()),
    })
}

/// The DNS names (subjectAltName) a certificate carries, lowercased;
/// `*.example.com` for a wildcard. An error for a certificate the X.509
/// parser refuses (stricter than the handshake's: a serial over 20 bytes,
/// say).
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::{name::GeneralName, SubjectAltName};
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("cannot parse it for its DNS names: {e}"))?;
    Ok(
        match cert.tbs_certificate().get_extension::<SubjectAltName>() {
            Ok(Some((_, san))) => san
                .0
                .iter()
                .filter_map(|g| match g {
                    GeneralName::DnsName(n) => Some(n.to_string().to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
    )
}

/// Chooses a listener's certificate by the name the client asks for (SNI):
/// an `tls_sni` certificate carrying that name (exactly, or by a wildcard
/// for its first label), else the entry's `tls_cert`, which also serves
/// clients that ask for no name.
#[derive(Debug)]
struct SniResolver {
    default: Arc<rustls::sign::CertifiedKey>,
    by_name: Vec<(String, Arc<rustls::sign::CertifiedKey>)>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<rustls::sign::CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        let find = |want: &str| self.by_name.iter().find(|(n, _)| n == want);
        find(&name)
            .or_else(|| wildcard.as_deref().and_then(find))
            .map_or_else(|| self.default.clone(), |(_, ck)| ck.clone())
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Reads and writes a raw nonblocking socket for rustls.
struct FdIo(RawFd);

impl io::Read for FdIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sys::recv(self.0, buf)
    }
}

impl io::Write for FdIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.0, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection over a nonblocking socket.
pub(crate) struct TlsStream {
    fd: OwnedFd,
    conn: rustls::Connection,
    /// The socket reported EOF.
    eof: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("fd", &self.fd)
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// The server side of an accepted socket; the handshake is still to do.
    pub(crate) fn accept(fd: OwnedFd, config: &ServerConfig) -> io::Result<TlsStream> {
        let mut conn = rustls::ServerConnection::new(config.clone()).map_err(tls_error)?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(TlsStream {
            fd,
            conn: conn.into(),
            eof: false,
        })
    }

    /// The client side of a connecting socket, whose server's certificate
    /// must carry `name` ([`server_name`]).
    pub(crate) fn connect(
        fd: OwnedFd,
        config: &ClientConfig,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let mut conn = rustls::ClientConnection::new(config.clone(), name).map_err(tls_error)?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(TlsStream {
            fd,
            conn: conn.into(),
            eof: false,
        })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Writes records rustls holds until it holds none or the socket is
    /// full.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let mut io = FdIo(self.raw());
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut io) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records are waiting for the socket to take them.
    pub(crate) fn pending_output(&self) -> bool {
        self.conn.wants_write()
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Moves the handshake on as far as the socket allows: `Ok(true)` once
    /// it is complete, `Ok(false)` to wait for the socket (readable, or
    /// writable when [`TlsStream::pending_output`]).
    pub(crate) fn handshake(&mut self) -> io::Result<bool> {
        loop {
            self.flush()?;
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            if self.conn.wants_write() {
                return Ok(false);
            }
            match self.conn.read_tls(&mut FdIo(self.raw())) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // The alert that says why, if the socket takes it.
                let _ = self.flush();
                return Err(tls_error(e));
            }
        }
    }

    /// Reads decrypted bytes; `Ok(0)` is the end of the stream (the peer's
    /// close_notify, or EOF on the socket).
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: an end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.conn.read_tls(&mut FdIo(self.raw())) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            let processed = self.conn.process_new_packets();
            // Whatever rustls has to say (alerts, key updates, tickets).
            let flushed = self.flush();
            processed.map_err(tls_error)?;
            flushed?;
        }
    }

    /// Decrypted bytes are waiting in rustls (the socket may have none).
    pub(crate) fn buffered_input(&mut self) -> bool {
        self.conn
            .process_new_packets()
            .is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    /// Encrypts what rustls takes of `buf` once the previous records are
    /// written; `WouldBlock` while they are not.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush()?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.flush()?;
        Ok(n)
    }

    /// Writes several buffers in order, as [`TlsStream::write`] does one:
    /// rustls packs them into records together, so a response's header and
    /// body go out as one record (and one send), not one per buffer.
    pub(crate) fn writev(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        if wanted == 0 {
            return Ok(0);
        }
        self.flush()?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write_vectored(bufs)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.flush()?;
        Ok(n)
    }

    /// Sends close_notify (best effort: what the socket takes now).
    pub(crate) fn close_notify(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }

    /// Half-close: close_notify, then shut down the socket's sending side
    /// once the socket took it.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        self.close_notify();
        if self.conn.wants_write() {
            return Ok(());
        }
        sys::shutdown_write(self.raw())
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The peer's certificate (the leaf, DER), verified by the handshake.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        if self.conn.is_handshaking() {
            return None;
        }
        self.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }
}

/// The subject of a DER certificate as an RFC 4514 string
/// (`CN=alice,O=Example`), or `None` if it does not parse.
pub(crate) fn subject(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate().subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A server TlsStream and a rustls client over a socket pair, the
    /// handshake done.
    fn pair() -> (TlsStream, rustls::ClientConnection, UnixStream) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = std::env::temp_dir().join(format!("loopd-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cp, cert.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        let server_config = load_server(&cp, &kp, None, &[], &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client_config = client_trusting(roots).unwrap();
        let (s, c) = UnixStream::pair().unwrap();
        s.set_nonblocking(true).unwrap();
        c.set_nonblocking(true).unwrap();
        let mut server = TlsStream::accept(OwnedFd::from(s), &server_config).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
        let mut c = c;
        for _ in 0..100 {
            while client.wants_write() {
                client.write_tls(&mut c).unwrap();
            }
            let server_done = server.handshake().unwrap();
            match client.read_tls(&mut c) {
                Ok(_) => {
                    client.process_new_packets().unwrap();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if server_done && !client.is_handshaking() && !client.wants_write() {
                return (server, client, c);
            }
        }
        panic!("the handshake did not finish");
    }

    /// What is waiting on the client's socket.
    fn read_all(c: &mut UnixStream) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        raw
    }

    /// The content types of the TLS records in `raw`, in order.
    fn record_types(raw: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        let mut at = 0;
        while at + 5 <= raw.len() {
            types.push(raw[at]);
            at += 5 + usize::from(u16::from_be_bytes([raw[at + 3], raw[at + 4]]));
        }
        assert_eq!(at, raw.len(), "a record was cut short");
        types
    }

    #[test]
    fn writev_sends_its_buffers_in_one_record() {
        let (mut server, mut client, mut c) = pair();
        // Tickets and the like from the end of the handshake.
        let _ = read_all(&mut c);
        let (head, body) = (b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), [7u8; 612]);
        let n = server
            .writev(&[io::IoSlice::new(head), io::IoSlice::new(&body)])
            .unwrap();
        assert_eq!(n, head.len() + body.len());
        // One application-data record (content type 23), not one per buffer.
        let raw = read_all(&mut c);
        assert_eq!(record_types(&raw), vec![23]);
        let mut reader = raw.as_slice();
        // And the client reads it back whole.
        client.read_tls(&mut reader).unwrap();
        client.process_new_packets().unwrap();
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        assert_eq!(got.len(), head.len() + body.len());
        assert!(got.starts_with(head) && got.ends_with(&body));
    }
}
