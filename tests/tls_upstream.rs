//! Outbound TLS from the shipped handlers, and listeners that change
//! between `tcp://` and `tls://` on a reload:
//!
//! - chat's Redis bridge over TLS (`bridge = "rediss://..."`, the entry's
//!   `tls_ca`): two loopd processes bridged through a real redis-server's
//!   `tls-port` deliver each other's room lines; a wrong CA is reported
//!   (the URL, and why) and retried while local chat goes on, and a
//!   reloaded CA file lets the next attempt through; no `tls_ca` (and no
//!   system CAs) is one clear error, however many attempts loopd refuses,
//!   and a reload that adds `tls_ca` lets the bridge connect;
//! - the proxy with a `tls://` upstream (a TLS server of the test's own,
//!   rustls): 1 MiB each way byte for byte through loopd's own TLS echo and
//!   through a server that sends and checks streams of its own, a slow
//!   client and a slow upstream at the pair's memory bound, and a wrong CA
//!   reported;
//! - SIGHUP switching a port between `tcp://` and `tls://`, and a reload
//!   adding a `tls://` listener with a broken certificate refused with the
//!   path and the reason while the old config serves.
//!
//! A certificate that carries a DNS name and no address is checked by that
//! name: `rediss://localhost:PORT`, and the proxy's `server_name`.
//!
//! Certificates are made at test time (rcgen); the TLS clients and servers
//! of the test are rustls, as in loopd. Needs `redis-server` built with TLS
//! (Debian's is; `.ci/test` installs it).

mod chat_support;
mod common;
mod proxy_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chat_support::{chat_config, status_kib, Chatter};
use common::*;
use proxy_support::{
    connect, expected, free_port, half_close, proxy_config, recv_stream, send_stream, Digested,
    Server,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

// ---------------------------------------------------------------------------
// Certificates, and rustls at the test's end
// ---------------------------------------------------------------------------

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1
/// (with its key), one for `localhost` alone (`name-cert.pem`); another
/// CA that signed nothing here.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new() -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = TempDir::new("tls-upstream-certs");
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("loopd test CA");
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        // One that carries the name `localhost` and no address.
        let name_key = KeyPair::generate().unwrap();
        let name_cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&name_key, &ca_cert, &ca_key)
            .unwrap();
        std::fs::write(dir.join("name-cert.pem"), name_cert.pem()).unwrap();
        std::fs::write(dir.join("name-key.pem"), name_key.serialize_pem()).unwrap();
        let (other, _) = ca("another loopd test CA");
        std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// `tls_cert`/`tls_key` lines of a handler entry.
    fn keys(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.p("cert.pem"),
            self.p("key.pem")
        )
    }

    /// A `tls_ca` line naming `file` of this directory.
    fn ca_line(&self, file: &str) -> String {
        format!("tls_ca = \"{}\"\n", self.p(file))
    }

    /// A server setup serving `prefix` `cert.pem` and `key.pem`.
    fn server_config(&self, prefix: &str) -> Arc<rustls::ServerConfig> {
        let certs = CertificateDer::pem_file_iter(self.path(&format!("{prefix}cert.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{prefix}key.pem"))).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Arc::new(config)
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

type TlsServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;
type TlsClientStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS server of the test's own on 127.0.0.1: `serve` runs on a thread
/// per connection, once its handshake is done (a failed handshake ends
/// that connection only).
struct TlsServer {
    inner: Server,
}

impl TlsServer {
    fn start(certs: &Certs, serve: impl Fn(TlsServerStream) + Send + Sync + 'static) -> TlsServer {
        TlsServer::start_serving(certs, "", serve)
    }

    /// As [`TlsServer::start`], serving `prefix` `cert.pem` (`name-` for the
    /// certificate of `localhost` alone).
    fn start_serving(
        certs: &Certs,
        prefix: &str,
        serve: impl Fn(TlsServerStream) + Send + Sync + 'static,
    ) -> TlsServer {
        let config = certs.server_config(prefix);
        let inner = Server::start(move |sock| {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            while tls.conn.is_handshaking() {
                if tls.conn.complete_io(&mut tls.sock).is_err() {
                    return;
                }
            }
            serve(tls)
        });
        TlsServer { inner }
    }

    fn url(&self) -> String {
        format!("tls://{}", self.inner.addr)
    }
}

/// Ends a TLS stream the way a careful server does: close_notify and the
/// socket's `shutdown(SHUT_WR)`, then whatever the peer still sends is
/// read to its end (bounded by the read timeout). Closing a socket with
/// unread input sends a reset, which would throw away bytes the peer has
/// not read yet.
fn tls_finish(mut tls: TlsServerStream) {
    tls.conn.send_close_notify();
    tls.flush().expect("flushing close_notify");
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(&mut tls, &mut std::io::sink());
}

/// A TLS client connection to loopd at `addr`, its handshake done; the
/// certificate must name 127.0.0.1 and come from the test CA.
fn tls_connect(certs: &Certs, addr: SocketAddr) -> std::io::Result<TlsClientStream> {
    tls_connect_to(certs, addr, ServerName::IpAddress(addr.ip().into()))
}

/// As [`tls_connect`], checking the certificate against `name`.
fn tls_connect_to(
    certs: &Certs,
    addr: SocketAddr,
    name: ServerName<'static>,
) -> std::io::Result<TlsClientStream> {
    let conn = rustls::ClientConnection::new(certs.client_config(), name)
        .map_err(std::io::Error::other)?;
    let sock = tcp(addr);
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Writes `data` and reads as many bytes back (short echoes: each fits
/// the socket buffers, so one thread may do both).
fn trip(s: &mut (impl Read + Write), data: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(data)?;
    s.flush()?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

// ---------------------------------------------------------------------------
// Redis over TLS
// ---------------------------------------------------------------------------

/// A redis-server with a plaintext port on 127.0.0.1 for the test's own
/// commands, and a `tls-port` serving the test certificate (no client
/// certificates asked for) for the bridges. Killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    tls_port: u16,
    _dir: TempDir,
}

impl TlsRedis {
    fn start(certs: &Certs) -> TlsRedis {
        TlsRedis::start_serving(certs, "")
    }

    /// As [`TlsRedis::start`], serving `prefix` `cert.pem` on its TLS port
    /// (`name-`: the certificate of `localhost` alone). It listens on ::1
    /// too where there is one, for bridges that resolve `localhost` there.
    fn start_serving(certs: &Certs, prefix: &str) -> TlsRedis {
        let dir = TempDir::new("redis-tls");
        let (port, tls_port) = (free_port(), free_port());
        assert_ne!(port, tls_port);
        let log = dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "-::1", "--port", &port.to_string()])
            .args(["--tls-port", &tls_port.to_string()])
            .arg("--tls-cert-file")
            .arg(certs.path(&format!("{prefix}cert.pem")))
            .arg("--tls-key-file")
            .arg(certs.path(&format!("{prefix}key.pem")))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it (apt-get install -y \
                     redis-server; .ci/test does)"
                )
            });
        let mut r = TlsRedis {
            child,
            port,
            tls_port,
            _dir: dir,
        };
        let deadline = Instant::now() + TIMEOUT;
        while r.command(&["PING"]).as_deref() != Some(b"PONG".as_slice()) {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!(
                    "redis-server exited ({status}): is it built with TLS? Its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever answers on the TLS port does TLS with the test's CA.
        let addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
        let name = if prefix.is_empty() {
            ServerName::IpAddress(addr.ip().into())
        } else {
            ServerName::try_from("localhost").unwrap()
        };
        let mut tls = tls_connect_to(certs, addr, name).expect("a TLS handshake with redis-server");
        tls.write_all(b"PING\r\n").unwrap();
        tls.flush().unwrap();
        let mut pong = [0u8; 7];
        tls.read_exact(&mut pong).expect("PING over TLS");
        assert_eq!(&pong, b"+PONG\r\n");
        r
    }

    /// `bridge = "rediss://..."` for its TLS port.
    fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// Runs one command on the plaintext port: a simple or bulk reply's
    /// bytes, `None` if Redis cannot be reached.
    fn command(&self, args: &[&str]) -> Option<Vec<u8>> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        (&s).write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut head = String::new();
        r.read_line(&mut head).ok()?;
        let head = head.trim_end();
        match head.as_bytes().first() {
            Some(b'$') => {
                let len: usize = head[1..].parse().ok()?;
                let mut body = vec![0u8; len + 2];
                r.read_exact(&mut body).ok()?;
                body.truncate(len);
                Some(body)
            }
            _ => Some(head.get(1..)?.as_bytes().to_vec()),
        }
    }

    /// The local ports (`laddr`) of the clients whose name starts with
    /// `prefix`, from `CLIENT LIST`.
    fn client_ports(&self, prefix: &str) -> Vec<u16> {
        let list = self.command(&["CLIENT", "LIST"]).expect("CLIENT LIST");
        String::from_utf8(list)
            .unwrap()
            .lines()
            .filter(|l| {
                l.split(' ').any(|f| {
                    f.strip_prefix("name=")
                        .is_some_and(|n| n.starts_with(prefix))
                })
            })
            .filter_map(|l| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix("laddr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .map(|a| a.port())
            })
            .collect()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A chat instance whose bridge goes to `url`, with `handler_keys` in its
/// `[[handler]]` table (`tls_ca`) and a short retry.
fn chat_bridged(url: &str, handler_keys: &str, rust_log: &str) -> Loopd {
    chat_bridged_with(url, handler_keys, rust_log, |_| {})
}

fn chat_bridged_with(
    url: &str,
    handler_keys: &str,
    rust_log: &str,
    adjust: impl FnOnce(&mut Command),
) -> Loopd {
    let config = chat_config(
        handler_keys,
        &format!("bridge = \"{url}\"\nbridge_retry_max_ms = 200\n"),
    );
    Loopd::start_with(&config, rust_log, adjust)
}

/// Points the standard `SSL_CERT_FILE` and `SSL_CERT_DIR` at an empty file
/// and directory: a loopd that would fall back on the system's CA
/// certificates for a handler without `tls_ca` finds none, so it has no CA
/// to trust, whatever the machine has installed.
fn no_system_cas(certs: &Certs, cmd: &mut Command) {
    let (file, dir) = (certs.path("no-cas.pem"), certs.path("no-cas.d"));
    std::fs::write(&file, "").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    cmd.env("SSL_CERT_FILE", file).env("SSL_CERT_DIR", dir);
}

/// Has `from` say sync lines until `to` (on another instance) hears one,
/// then an end line: once `to` has that, what `from`'s instance publishes
/// to the room reaches `to`'s instance (pub/sub delivers only what is
/// published after a subscription took effect). Bounded by TIMEOUT.
fn converge(from: &Chatter, to: &mut Chatter) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = from.stream().try_clone().unwrap();
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < TIMEOUT {
                w.write_all(b"sync\n").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            w.write_all(b"sync end\n").unwrap();
        })
    };
    let sync = format!("{}: sync", from.nick);
    while to.recv() != sync {}
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let end = format!("{}: sync end", from.nick);
    while to.recv() != end {}
}

#[test]
fn two_chat_processes_share_a_room_through_redis_over_tls() {
    let certs = Certs::new();
    let redis = TlsRedis::start(&certs);
    let ca = certs.ca_line("ca.pem");
    let a_srv = chat_bridged(&redis.tls_url(), &ca, "debug");
    let b_srv = chat_bridged(&redis.tls_url(), &ca, "debug");
    let connected = format!("bridge: connected to {} (RESP3)", redis.tls_url());
    for srv in [&a_srv, &b_srv] {
        assert!(srv.wait_for_log(&connected, TIMEOUT), "{}", srv.logs());
    }
    // Every bridge link (two per instance) is a client of the TLS port.
    let ports = redis.client_ports("loopd-chat-");
    assert_eq!(ports, vec![redis.tls_port; 4], "CLIENT LIST laddr ports");
    let mut a = Chatter::join(a_srv.tcp("chat"));
    let mut b = Chatter::join(b_srv.tcp("chat"));
    // guest-N comes from Redis (INCR over the TLS link): never the same.
    assert_ne!(a.nick, b.nick);
    converge(&b, &mut a);
    converge(&a, &mut b);
    a.send("hello from A over TLS");
    b.expect(&format!("{}: hello from A over TLS", a.nick));
    b.send("/me waves back");
    a.expect(&format!("+ {} waves back", b.nick));
    // Nicks are claimed through Redis: unique across both.
    a.expect_reply("/nick alice", "* you are now alice");
    let old = std::mem::replace(&mut a.nick, "alice".into());
    b.expect(&format!("* {old} is now alice"));
    b.expect_reply("/nick Alice", "! nick Alice is taken");
    a_srv.assert_no_unexpected_errors();
    b_srv.assert_no_unexpected_errors();
}

#[test]
fn a_wrong_tls_ca_is_reported_and_retried_while_local_chat_goes_on() {
    let certs = Certs::new();
    let redis = TlsRedis::start(&certs);
    // The CA file names a CA that did not sign Redis's certificate.
    let ca_file = certs.path("bridge-ca.pem");
    std::fs::copy(certs.path("other-ca.pem"), &ca_file).unwrap();
    let a_srv = chat_bridged(&redis.tls_url(), &certs.ca_line("bridge-ca.pem"), "debug");
    let url = redis.tls_url();
    // The bridge's warning names the URL and what a TLS failure means.
    let warning = format!("bridge: cannot connect to {url} (1 attempt(s) failed");
    assert!(a_srv.wait_for_log(&warning, TIMEOUT), "{}", a_srv.logs());
    let logs = a_srv.logs();
    let line = logs.lines().find(|l| l.contains(&warning)).unwrap();
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("over TLS also a failed handshake")
            && line.contains(
                "signed by a CA loopd trusts for it (tls_ca, else the system's) and carry \
                 127.0.0.1"
            ),
        "{line}"
    );
    // loopd's own line says why: the certificate's issuer is unknown to
    // tls_ca. And the bridge keeps trying.
    let handshake = format!("chat: TLS handshake with 127.0.0.1:{}", redis.tls_port);
    assert!(
        a_srv.wait_for_logs(&handshake, 6, TIMEOUT),
        "{}",
        a_srv.logs()
    );
    let logs = a_srv.logs();
    let why = logs.lines().find(|l| l.contains(&handshake)).unwrap();
    assert!(why.contains("failed: invalid peer certificate"), "{why}");
    // Local chat is untouched.
    let mut x = Chatter::join(a_srv.tcp("chat"));
    let mut y = Chatter::join(a_srv.tcp("chat"));
    x.expect(&format!("* {} joined", y.nick));
    y.send("local lines still go");
    x.expect(&format!("{}: local lines still go", y.nick));
    // The right CA in the same file, and a reload (the entry is unchanged,
    // so the instance and its members stay): the next retry connects.
    std::fs::copy(certs.path("ca.pem"), &ca_file).unwrap();
    a_srv.signal(libc::SIGHUP);
    assert!(
        a_srv.wait_for_log("reloaded: ", TIMEOUT),
        "{}",
        a_srv.logs()
    );
    assert!(
        a_srv.wait_for_log(&format!("bridge: connected to {url}"), TIMEOUT),
        "{}",
        a_srv.logs()
    );
    assert!(a_srv.logs().contains("unchanged 1"), "{}", a_srv.logs());
    // And x, connected all along, now shares its room with another process.
    let b_srv = chat_bridged(&url, &certs.ca_line("ca.pem"), "info");
    assert!(b_srv.wait_for_log("bridge: connected to", TIMEOUT));
    let mut b = Chatter::join(b_srv.tcp("chat"));
    converge(&x, &mut b);
    converge(&b, &mut x);
    a_srv.assert_no_unexpected_errors();
    b_srv.assert_no_unexpected_errors();
}

#[test]
fn a_failed_outbound_tls_handshake_says_why_at_the_default_log_level() {
    let certs = Certs::new();
    let redis = TlsRedis::start(&certs);
    let a_srv = chat_bridged(&redis.tls_url(), &certs.ca_line("other-ca.pem"), "info");
    assert!(
        a_srv.wait_for_log("bridge: cannot connect to", TIMEOUT),
        "{}",
        a_srv.logs()
    );
    // The certificate's issuer is unknown to tls_ca: some line at info or
    // above says so, with the address.
    let port = format!("127.0.0.1:{}", redis.tls_port);
    let deadline = Instant::now() + TIMEOUT;
    while !a_srv
        .logs()
        .lines()
        .any(|l| l.contains(&port) && l.contains("invalid peer certificate"))
    {
        assert!(
            Instant::now() < deadline,
            "no reason given:\n{}",
            a_srv.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a_srv.assert_no_unexpected_errors();
}

/// What loopd logs (at debug) each time it refuses a `tls://` connect of
/// chat's for want of a CA: one line per attempt, so a count of attempts.
const REFUSED_ATTEMPT: &str = "chat: connect to tls://127.0.0.1:";
const NO_CA: &str = "no tls_ca and no system CA certificates to trust";

/// How many connects of chat's loopd has refused for want of a CA so far.
fn refused_attempts(srv: &Loopd) -> usize {
    srv.logs()
        .lines()
        .filter(|l| l.contains(REFUSED_ATTEMPT) && l.contains(NO_CA))
        .count()
}

/// Waits until loopd has refused `n` of chat's connects for want of a CA.
fn wait_refused_attempts(srv: &Loopd, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while refused_attempts(srv) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} refused attempts:\n{}",
            srv.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The bridge's error line on a refused connect, checked for what it must
/// say; returns how many times it was logged.
fn check_refused_error(srv: &Loopd, redis: &TlsRedis) -> usize {
    let want = format!(
        "bridge: cannot connect to {}: loopd refused tls://127.0.0.1:{} (",
        redis.tls_url(),
        redis.tls_port
    );
    assert!(srv.wait_for_log(&want, TIMEOUT), "{}", srv.logs());
    let logs = srv.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(&want)).collect();
    for line in &lines {
        assert!(is_error_line(line), "{line}");
        assert!(
            line.contains(
                "it has no CA certificates to trust for it (or the host is not a valid DNS \
                 name): set tls_ca = \"PATH\" on the chat's [[handler]] entry"
            ) && line.contains(
                "chat serves this instance alone meanwhile, and the bridge tries again at most \
                 every 200 ms"
            ),
            "{line}"
        );
    }
    lines.len()
}

#[test]
fn a_rediss_bridge_without_tls_ca_is_one_clear_error_and_chat_goes_on() {
    let certs = Certs::new();
    let redis = TlsRedis::start(&certs);
    let a_srv = chat_bridged_with(&redis.tls_url(), "", "debug", |cmd| {
        no_system_cas(&certs, cmd)
    });
    a_srv.expect_error("no CA certificates to trust");
    assert_eq!(check_refused_error(&a_srv, &redis), 1, "{}", a_srv.logs());
    let mut x = Chatter::join(a_srv.tcp("chat"));
    let mut y = Chatter::join(a_srv.tcp("chat"));
    x.expect(&format!("* {} joined", y.nick));
    y.send("still here");
    x.expect(&format!("{}: still here", y.nick));
    // The bridge keeps trying (loopd refuses each attempt, and says so at
    // debug), but the reason is the same every time: the error is said
    // once, not once per attempt.
    wait_refused_attempts(&a_srv, 5);
    assert_eq!(check_refused_error(&a_srv, &redis), 1, "{}", a_srv.logs());
    assert_eq!(
        a_srv.logs().matches("set tls_ca = ").count(),
        1,
        "{}",
        a_srv.logs()
    );
    // Nothing else repeats per attempt at info or above either.
    let logs = a_srv.logs();
    let bridge_lines = logs
        .lines()
        .filter(|l| l.contains("bridge: ") && !l.contains(" DEBUG "))
        .count();
    assert_eq!(bridge_lines, 1, "{logs}");
    a_srv.assert_no_unexpected_errors();
}

#[test]
fn a_reload_adding_tls_ca_lets_a_refused_rediss_bridge_connect() {
    let certs = Certs::new();
    let redis = TlsRedis::start(&certs);
    let url = redis.tls_url();
    let a_srv = chat_bridged_with(&url, "", "debug", |cmd| no_system_cas(&certs, cmd));
    a_srv.expect_error("no CA certificates to trust");
    assert_eq!(check_refused_error(&a_srv, &redis), 1, "{}", a_srv.logs());
    // Past the first refusal: the bridge is retrying, not latched.
    wait_refused_attempts(&a_srv, 3);
    assert!(
        redis.client_ports("loopd-chat-").is_empty(),
        "no bridge link yet"
    );
    // A member of this instance, connected all along.
    let mut x = Chatter::join(a_srv.tcp("chat"));
    // tls_ca added to the entry, nothing else changed: the reload keeps the
    // instance (and x) and gives it the CA; the next attempt connects.
    let config = chat_config(
        &certs.ca_line("ca.pem"),
        &format!("bridge = \"{url}\"\nbridge_retry_max_ms = 200\n"),
    );
    let outcome = reload_to(&a_srv, &config, 1);
    assert!(
        outcome.contains("reloaded: ") && outcome.contains("unchanged 1"),
        "{outcome}\n{}",
        a_srv.logs()
    );
    assert!(
        a_srv.wait_for_log(&format!("bridge: connected to {url} (RESP3)"), TIMEOUT),
        "{}",
        a_srv.logs()
    );
    // Both links are clients of Redis's TLS port.
    assert_eq!(
        redis.client_ports("loopd-chat-"),
        vec![redis.tls_port; 2],
        "CLIENT LIST laddr ports"
    );
    // The refusal was said once, however many attempts it took.
    assert_eq!(check_refused_error(&a_srv, &redis), 1, "{}", a_srv.logs());
    // And x now shares its room with another process.
    let b_srv = chat_bridged(&url, &certs.ca_line("ca.pem"), "info");
    assert!(
        b_srv.wait_for_log("bridge: connected to", TIMEOUT),
        "{}",
        b_srv.logs()
    );
    let mut b = Chatter::join(b_srv.tcp("chat"));
    converge(&x, &mut b);
    converge(&b, &mut x);
    x.send("hello across the reload");
    b.expect(&format!("{}: hello across the reload", x.nick));
    a_srv.assert_no_unexpected_errors();
    b_srv.assert_no_unexpected_errors();
}

#[test]
fn a_rediss_bridge_to_a_host_name_checks_the_certificate_for_the_name() {
    let certs = Certs::new();
    // Redis's certificate carries `localhost` and no address.
    let redis = TlsRedis::start_serving(&certs, "name-");
    let ca = certs.ca_line("ca.pem");
    let by_name = format!("rediss://localhost:{}", redis.tls_port);
    let a_srv = chat_bridged(&by_name, &ca, "info");
    let b_srv = chat_bridged(&by_name, &ca, "info");
    for srv in [&a_srv, &b_srv] {
        assert!(
            srv.wait_for_log(&format!("bridge: connected to {by_name} ("), TIMEOUT),
            "{}",
            srv.logs()
        );
    }
    let mut a = Chatter::join(a_srv.tcp("chat"));
    let mut b = Chatter::join(b_srv.tcp("chat"));
    converge(&a, &mut b);
    converge(&b, &mut a);
    // The same server by its address: the certificate does not carry it.
    let by_ip = chat_bridged(&redis.tls_url(), &ca, "info");
    let warning = format!("bridge: cannot connect to {}", redis.tls_url());
    assert!(by_ip.wait_for_log(&warning, TIMEOUT), "{}", by_ip.logs());
    let handshake = format!("TLS handshake with 127.0.0.1:{}", redis.tls_port);
    assert!(by_ip.wait_for_log(&handshake, TIMEOUT), "{}", by_ip.logs());
    let logs = by_ip.logs();
    let why = logs.lines().find(|l| l.contains(&handshake)).unwrap();
    assert!(why.contains("invalid peer certificate"), "{why}");
    for srv in [&a_srv, &b_srv, &by_ip] {
        srv.assert_no_unexpected_errors();
    }
}

// ---------------------------------------------------------------------------
// The proxy to a TLS upstream
// ---------------------------------------------------------------------------

const MIB: u64 = 1 << 20;

/// A proxy to `upstream` with `tls_ca` (of `certs`, `ca_file`).
fn tls_proxy(certs: &Certs, upstream: &str, ca_file: &str, extra: &str) -> Loopd {
    let config = proxy_config(upstream, "", extra).replace(
        "plugin = \"proxy\"\n",
        &format!("plugin = \"proxy\"\n{}", certs.ca_line(ca_file)),
    );
    Loopd::start_with(&config, "debug", |_| {})
}

#[test]
fn the_proxy_carries_1_mib_each_way_to_loopds_own_tls_echo() {
    let certs = Certs::new();
    let echo = Loopd::start(&format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tls://127.0.0.1:0\"]\n{}",
        certs.keys()
    ));
    let echo_url = echo.listeners["echo"][0].clone();
    assert!(echo_url.starts_with("tls://127.0.0.1:"), "{echo_url}");
    let proxy = tls_proxy(&certs, &echo_url, "ca.pem", "");
    // Sent as fast as loopd takes it while read back on this thread.
    let c = connect(proxy.tcp("proxy"));
    let writer = {
        let c = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let sent = send_stream(&mut &c, MIB, 21, None);
            half_close(&c);
            sent
        })
    };
    let got = recv_stream(&mut &c, 0, 1, || {});
    let sent = writer.join().unwrap();
    assert_eq!(sent, expected(21, MIB));
    // The echo listens on tls:// alone: these bytes went over TLS.
    assert_eq!(got, sent, "the echo through the TLS upstream differs");
    proxy.assert_no_unexpected_errors();
    echo.assert_no_unexpected_errors();
}

#[test]
fn the_proxy_carries_distinct_1_mib_streams_both_ways_to_a_tls_server() {
    let certs = Certs::new();
    let (tx, rx) = mpsc::channel::<(Digested, String)>();
    let tx = Mutex::new(tx);
    // The server sends its own 1 MiB stream, then reads the client's to
    // its close_notify, then ends its side the same way.
    let server = TlsServer::start(&certs, move |mut tls| {
        let version = format!("{:?}", tls.conn.protocol_version());
        send_stream(&mut tls, MIB, 31, None);
        let got = recv_stream(&mut tls, 0, 1, || {});
        let _ = tx.lock().unwrap().send((got, version));
        tls_finish(tls);
    });
    let proxy = tls_proxy(&certs, &server.url(), "ca.pem", "");
    let c = connect(proxy.tcp("proxy"));
    let writer = {
        let c = c.try_clone().unwrap();
        std::thread::spawn(move || {
            let sent = send_stream(&mut &c, MIB, 32, None);
            half_close(&c);
            sent
        })
    };
    let got = recv_stream(&mut &c, 0, 1, || {});
    let sent = writer.join().unwrap();
    let (upstream_got, version) = rx.recv_timeout(TIMEOUT).expect("the server's report");
    assert_eq!(got, expected(31, MIB), "the download differs");
    assert_eq!(upstream_got, sent, "the upload differs");
    assert_eq!(sent, expected(32, MIB));
    assert!(version.contains("TLSv1_"), "{version}");
    assert!(
        proxy.wait_for_log("1048576 bytes to the upstream, 1048576 bytes back", TIMEOUT),
        "{}",
        proxy.logs()
    );
    proxy.assert_no_unexpected_errors();
}

#[test]
fn a_tls_upstream_whose_certificate_tls_ca_did_not_sign_closes_the_client_with_a_warning() {
    let certs = Certs::new();
    let server = TlsServer::start(&certs, |_| panic!("no handshake may succeed"));
    let proxy = tls_proxy(&certs, &server.url(), "other-ca.pem", "");
    let mut c = connect(proxy.tcp("proxy"));
    c.write_all(b"hello").unwrap();
    assert!(read_until_closed(&mut c).is_empty());
    let warning = format!(
        "upstream {} refused, is unreachable or failed the TLS handshake",
        server.url()
    );
    assert!(proxy.wait_for_log(&warning, TIMEOUT), "{}", proxy.logs());
    assert!(
        proxy.logs().contains("invalid peer certificate"),
        "{}",
        proxy.logs()
    );
    proxy.assert_no_unexpected_errors();
}

#[test]
fn a_tls_upstream_without_tls_ca_says_what_is_missing() {
    let certs = Certs::new();
    let server = TlsServer::start(&certs, |_| {});
    let config = proxy_config(&server.url(), "", "");
    let proxy = Loopd::start_with(&config, "debug", |cmd| no_system_cas(&certs, cmd));
    let mut c = connect(proxy.tcp("proxy"));
    assert!(read_until_closed(&mut c).is_empty());
    let want = format!(
        "upstream {} cannot be connected to: loopd has no CA certificates to trust for it: set \
         tls_ca = \"PATH\" on the proxy's [[handler]] entry",
        server.url()
    );
    assert!(proxy.wait_for_log(&want, TIMEOUT), "{}", proxy.logs());
    proxy.assert_no_unexpected_errors();
}

#[test]
fn a_tls_upstreams_server_name_is_the_name_its_certificate_must_carry() {
    let certs = Certs::new();
    // The upstream's certificate carries `localhost` and no address.
    let server = TlsServer::start_serving(&certs, "name-", |mut tls| {
        let mut req = [0u8; 4];
        tls.read_exact(&mut req).unwrap();
        tls.write_all(&req).unwrap();
        tls_finish(tls);
    });
    let named = tls_proxy(&certs, &server.url(), "ca.pem", "");
    // Without server_name the certificate must carry 127.0.0.1: refused.
    let mut c = connect(named.tcp("proxy"));
    c.write_all(b"ping").unwrap();
    assert!(read_until_closed(&mut c).is_empty());
    assert!(
        named.wait_for_log("and carry 127.0.0.1;", TIMEOUT),
        "{}",
        named.logs()
    );
    let config = proxy_config(&server.url(), "server_name = \"localhost\"", "").replace(
        "plugin = \"proxy\"\n",
        &format!("plugin = \"proxy\"\n{}", certs.ca_line("ca.pem")),
    );
    let proxy = Loopd::start(&config);
    let mut c = connect(proxy.tcp("proxy"));
    c.write_all(b"ping").unwrap();
    half_close(&c);
    assert_eq!(read_until_closed(&mut c), b"ping");
    named.assert_no_unexpected_errors();
    proxy.assert_no_unexpected_errors();
}

/// Samples a process's RSS every 20 ms on a thread of its own until
/// stopped; the largest seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    fn start(pid: i32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            let started = Instant::now();
            while !flag.load(Ordering::SeqCst) && started.elapsed() < 4 * TIMEOUT {
                max = max.max(status_kib(pid, "VmRSS") as u64);
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    fn max(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// 2 MB/s.
const SLOW_RATE: u64 = 2_000_000;
/// loopd's default output high watermark (the client side's, and the
/// proxy's `upstream_high_watermark`) and its largest read.
const HIGH: u64 = 256 << 10;
const CHUNK: u64 = 64 << 10;
/// What rustls may hold for the upstream connection beyond loopd's
/// queue: one write (64 KiB, loopd's limit on it) and a record each way
/// being read or written (16 KiB and its overhead, twice).
const TLS_KIB: u64 = 64 + 2 * 17;
/// The allocator's slack and loopd's own buffers, as in proxy_slow.rs.
const SLACK_KIB: u64 = 4 << 10;

/// The most one pair may hold (docs/handlers/proxy.md), plus TLS.
fn bound_kib() -> u64 {
    2 * (HIGH + CHUNK + CHUNK) / 1024 + TLS_KIB
}

fn check_rss(tag: &str, base: u64, max: u64) {
    let growth = max.saturating_sub(base);
    let limit = bound_kib() + SLACK_KIB;
    figure(&format!("tls_upstream.{tag}.rss_base_kib"), base);
    figure(&format!("tls_upstream.{tag}.rss_growth_kib"), growth);
    figure(&format!("tls_upstream.{tag}.rss_limit_kib"), limit);
    assert!(
        growth <= limit,
        "{tag}: loopd grew by {growth} KiB (limit {limit} KiB: the pair's bound {} KiB + {SLACK_KIB} KiB)",
        bound_kib()
    );
}

#[test]
fn a_slow_client_and_a_slow_tls_upstream_cost_the_proxy_only_the_pair_bound() {
    let certs = Certs::new();
    let len = tier(8 * MIB, 50 * MIB);
    let slow = tier(6 * MIB, 50 * MIB);
    let (tx, rx) = mpsc::channel::<Digested>();
    let tx = Mutex::new(tx);
    // "get": a download of `len` bytes as fast as the proxy takes them;
    // "put": an upload read at 2 MB/s for its first `slow` bytes.
    let server = TlsServer::start(&certs, move |mut tls| {
        let mut verb = [0u8; 3];
        tls.read_exact(&mut verb).expect("the request");
        match &verb {
            b"get" => {
                send_stream(&mut tls, len, 41, None);
            }
            b"put" => {
                let got = recv_stream(&mut tls, slow, SLOW_RATE, || {});
                let _ = tx.lock().unwrap().send(got);
            }
            b"hi!" => tls.write_all(b"ok").unwrap(),
            v => panic!("unknown request {v:?}"),
        }
        tls_finish(tls);
    });
    let proxy = tls_proxy(&certs, &server.url(), "ca.pem", "");
    // A first exchange: buffers allocated on first use are in the base.
    let mut c = connect(proxy.tcp("proxy"));
    c.write_all(b"hi!").unwrap();
    half_close(&c);
    assert_eq!(read_until_closed(&mut c), b"ok");
    let base = status_kib(proxy.pid(), "VmRSS") as u64;

    // The client reads the download at 2 MB/s: the upstream's TLS
    // records wait in the kernel, not in loopd.
    let sampler = RssSampler::start(proxy.pid());
    let mut c = connect(proxy.tcp("proxy"));
    c.write_all(b"get").unwrap();
    half_close(&c);
    let got = recv_stream(&mut c, slow, SLOW_RATE, || {});
    let max = sampler.max();
    assert_eq!(got, expected(41, len), "the download arrived whole");
    check_rss("download", base, max);

    // The upstream reads the upload at 2 MB/s: loopd stops reading the
    // client at upstream_high_watermark.
    let base = status_kib(proxy.pid(), "VmRSS") as u64;
    let sampler = RssSampler::start(proxy.pid());
    let c = connect(proxy.tcp("proxy"));
    (&c).write_all(b"put").unwrap();
    let sent = send_stream(&mut &c, len, 42, None);
    half_close(&c);
    let got = rx.recv_timeout(4 * TIMEOUT).expect("the upstream's report");
    let max = sampler.max();
    assert_eq!(got, sent, "the upload arrived whole");
    check_rss("upload", base, max);
    proxy.assert_no_unexpected_errors();
}

// ---------------------------------------------------------------------------
// Reload: tcp:// and tls:// on one port, broken certificates
// ---------------------------------------------------------------------------

/// Writes `config` over the running loopd's config file, sends SIGHUP, and
/// returns the `reloaded:` or `reload failed` line number `n`.
fn reload_to(loopd: &Loopd, config: &str, n: usize) -> String {
    std::fs::write(loopd.dir.join("loopd.toml"), config).unwrap();
    loopd.signal(libc::SIGHUP);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let logs = loopd.logs();
        let outcomes: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("reloaded: ") || l.contains("reload failed"))
            .collect();
        if outcomes.len() >= n {
            return outcomes[n - 1].to_string();
        }
        assert!(Instant::now() < deadline, "no reload outcome:\n{logs}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An echo entry listening on `listen` (TOML array items), with `keys`.
fn echo_entry(listen: &str, keys: &str) -> String {
    format!(
        "[runtime]\nshutdown_timeout_ms = 2000\n\n[[handler]]\nname = \"echo\"\nplugin = \
         \"echo\"\nlisten = [{listen}]\n{keys}"
    )
}

/// A plaintext client gets no echo from a TLS port (the handshake fails,
/// the connection is cut), nor a TLS client from a plaintext one.
fn plaintext_is_refused(addr: SocketAddr) {
    let mut s = tcp(addr);
    s.write_all(b"plain?\n").unwrap();
    let got = read_until_closed(&mut s);
    assert!(!got.starts_with(b"plain?"), "plaintext was echoed: {got:?}");
}

#[test]
fn sighup_switches_a_port_between_tcp_and_tls_keeping_each_connection_on_its_own() {
    let certs = Certs::new();
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let tcp_config = echo_entry(&format!("\"tcp://{addr}\""), "");
    let tls_config = echo_entry(&format!("\"tls://{addr}\""), &certs.keys());
    let loopd = Loopd::start(&tcp_config);
    let mut plain = tcp(addr);
    assert_eq!(trip(&mut plain, b"one").unwrap(), b"one");

    let outcome = reload_to(&loopd, &tls_config, 1);
    assert!(outcome.contains("reloaded: "), "{outcome}");
    // The socket is kept, now serving tls://.
    assert!(
        outcome.contains(&format!("opened tls://{addr}, closed tcp://{addr}, kept 0")),
        "{outcome}"
    );
    assert!(
        loopd.wait_for_log(&format!("the socket of tcp://{addr}, kept"), TIMEOUT),
        "{}",
        loopd.logs()
    );
    // The connection accepted over TCP stays plaintext.
    assert_eq!(trip(&mut plain, b"two").unwrap(), b"two");
    // New ones are TLS.
    let mut secure = tls_connect(&certs, addr).expect("a TLS handshake after the reload");
    assert_eq!(trip(&mut secure, b"three").unwrap(), b"three");
    plaintext_is_refused(addr);

    let outcome = reload_to(&loopd, &tcp_config, 2);
    assert!(outcome.contains("reloaded: "), "{outcome}");
    // The TLS connection stays TLS, the old plaintext one plaintext.
    assert_eq!(trip(&mut secure, b"four").unwrap(), b"four");
    assert_eq!(trip(&mut plain, b"five").unwrap(), b"five");
    let mut again = tcp(addr);
    assert_eq!(trip(&mut again, b"six").unwrap(), b"six");
    assert!(
        tls_connect(&certs, addr).is_err(),
        "a TLS handshake succeeded on the plaintext port"
    );
    loopd.assert_no_unexpected_errors();
}

#[test]
fn a_port_moves_between_tcp_and_tls_in_two_reloads_keeping_old_connections() {
    // The port closed by one reload (its handler keeps another listener)
    // and opened with the other transport by the next: between the two
    // it refuses connections.
    let certs = Certs::new();
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let spare = "\"unix://{dir}/echo.sock\"";
    let tcp_config = echo_entry(&format!("\"tcp://{addr}\", {spare}"), "");
    let loopd = Loopd::start(&tcp_config);
    let dir = loopd.dir.path().to_str().unwrap().to_string();
    let cfg = |c: String| c.replace("{dir}", &dir);
    let mut plain = tcp(addr);
    assert_eq!(trip(&mut plain, b"one").unwrap(), b"one");

    let outcome = reload_to(&loopd, &cfg(echo_entry(spare, "")), 1);
    assert!(outcome.contains("closed tcp://"), "{outcome}");
    assert!(TcpStream::connect(addr).is_err(), "the port still listens");
    let tls_config = cfg(echo_entry(
        &format!("\"tls://{addr}\", {spare}"),
        &certs.keys(),
    ));
    let outcome = reload_to(&loopd, &tls_config, 2);
    assert!(outcome.contains("reloaded: "), "{outcome}");
    assert!(
        outcome.contains(&format!("opened tls://{addr}")),
        "{outcome}"
    );
    // The plaintext connection from before goes on, on its transport.
    assert_eq!(trip(&mut plain, b"two").unwrap(), b"two");
    let mut secure = tls_connect(&certs, addr).expect("a TLS handshake after the reload");
    assert_eq!(trip(&mut secure, b"three").unwrap(), b"three");
    plaintext_is_refused(addr);

    // And back: the TLS connection stays TLS.
    reload_to(&loopd, &cfg(echo_entry(spare, "")), 3);
    let outcome = reload_to(&loopd, &cfg(tcp_config.clone()), 4);
    assert!(
        outcome.contains(&format!("opened tcp://{addr}")),
        "{outcome}"
    );
    assert_eq!(trip(&mut secure, b"four").unwrap(), b"four");
    assert_eq!(trip(&mut plain, b"five").unwrap(), b"five");
    let mut again = tcp(addr);
    assert_eq!(trip(&mut again, b"six").unwrap(), b"six");
    loopd.assert_no_unexpected_errors();
}

#[test]
fn a_reload_adding_a_tls_listener_with_a_broken_certificate_is_refused_and_the_old_config_serves() {
    let certs = Certs::new();
    let (port, tls_port) = (free_port(), free_port());
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let running = echo_entry(&format!("\"tcp://{addr}\""), "");
    let loopd = Loopd::start(&running);
    let mut old = tcp(addr);
    assert_eq!(trip(&mut old, b"before").unwrap(), b"before");
    loopd.expect_error("reload failed");

    let garbage = certs.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = certs.path("missing.pem");
    let other_key = certs.path("other-key.pem");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let with = |cert: &PathBuf, key: &PathBuf| {
        echo_entry(
            &format!("\"tcp://{addr}\", \"tls://{tls_addr}\""),
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        )
    };
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let cases = [
        (
            with(&garbage, &key),
            vec![
                "loopd.toml:8:".to_string(),
                "tls_cert".into(),
                garbage.display().to_string(),
                "no PEM certificate".into(),
            ],
        ),
        (
            with(&missing, &key),
            vec![
                "tls_cert".to_string(),
                missing.display().to_string(),
                "No such file".into(),
            ],
        ),
        (
            with(&cert, &other_key),
            vec![
                "loopd.toml:9:".to_string(),
                "tls_key".into(),
                other_key.display().to_string(),
                "does not go with tls_cert".into(),
            ],
        ),
    ];
    for (n, (config, needles)) in cases.iter().enumerate() {
        let outcome = reload_to(&loopd, config, n + 1);
        assert!(
            outcome.contains("reload failed; the running config is unchanged"),
            "{outcome}"
        );
        for needle in needles {
            assert!(
                outcome.contains(needle.as_str()),
                "`{needle}` not in {outcome}"
            );
        }
        // Nothing listens on the TLS port; the old config serves, old and
        // new connections alike.
        assert!(TcpStream::connect(tls_addr).is_err(), "{tls_addr} listens");
        assert_eq!(trip(&mut old, b"still").unwrap(), b"still");
        let mut new = tcp(addr);
        assert_eq!(trip(&mut new, b"new").unwrap(), b"new");
    }
    // The same reload with a good pair goes through.
    let outcome = reload_to(&loopd, &with(&cert, &key), cases.len() + 1);
    assert!(
        outcome.contains(&format!("opened tls://{tls_addr}")),
        "{outcome}"
    );
    let mut secure = tls_connect(&certs, tls_addr).expect("the TLS listener after the reload");
    assert_eq!(trip(&mut secure, b"secure").unwrap(), b"secure");
    assert_eq!(trip(&mut old, b"after").unwrap(), b"after");
    loopd.assert_no_unexpected_errors();
}
