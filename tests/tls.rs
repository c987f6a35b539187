//! `tls://` listeners: the http handler under curl, the echo handler under
//! Python's ssl module, plaintext on a TLS port, a handshake that never
//! comes, a client that never reads, a TLS listener beside a plaintext one,
//! and certificate errors at `loopd check` and at start.
//!
//! The CA and the server certificate are made at test time (rcgen). Needs
//! `curl` and `python3` (`.ci/run` installs curl; python3 is on the image).

mod common;
mod http_util;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http_util::*;
use sha2::{Digest, Sha256};

/// A CA, a certificate it signed for `localhost` and 127.0.0.1, its key,
/// a second key that belongs to neither, and another CA with that key.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new() -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = TempDir::new("tls-certs");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "loopd test CA");
        let ca = ca_params.clone().self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "loopd test server");
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("cert.der"), cert.der()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("other-key.pem"), other.serialize_pem()).unwrap();
        let other_ca = ca_params.self_signed(&other).unwrap();
        std::fs::write(dir.join("other-ca.pem"), other_ca.pem()).unwrap();
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// A CA of its own (`{prefix}-ca.pem`, common name `ca_cn`) and a client
    /// certificate it signed (`{prefix}.pem`, `{prefix}-key.pem`) with the
    /// subject `dn`, in that order; returns the certificate.
    fn client(
        &self,
        prefix: &str,
        ca_cn: &str,
        dn: &[(rcgen::DnType, &str)],
    ) -> rcgen::Certificate {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_cn);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["client.example".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(self.path(&format!("{prefix}-ca.pem")), ca.pem()).unwrap();
        std::fs::write(self.path(&format!("{prefix}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{prefix}-key.pem")), key.serialize_pem()).unwrap();
        cert
    }

    /// The `tls_cert`/`tls_key` lines of a handler entry.
    fn keys(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.p("cert.pem"),
            self.p("key.pem")
        )
    }
}

/// The address of a handler's `tls://` listener.
fn tls_addr(loopd: &Loopd, handler: &str) -> std::net::SocketAddr {
    loopd.listeners[handler]
        .iter()
        .find_map(|u| u.strip_prefix("tls://"))
        .unwrap_or_else(|| panic!("{handler} has no tls:// listener"))
        .parse()
        .unwrap()
}

/// Runs a program bounded by 3 × TIMEOUT (killed beyond it); its output
/// goes through files, so a big one cannot stall it on a full pipe.
fn run(cmd: &mut Command) -> Output {
    let dir = TempDir::new("tls-run");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("the client program must be installed");
    let deadline = Instant::now() + 3 * TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output {
                status,
                stdout: std::fs::read(&out).unwrap(),
                stderr: std::fs::read(&err).unwrap(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn curl(ca: &Path, port: u16, args: &[&str]) -> Output {
    run(Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .args(args))
}

fn ok(out: &Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

fn http_site(certs: &Certs) -> (Site, Loopd) {
    let site = Site::new();
    std::fs::write(site.root.join("big.bin"), pattern(4 << 20, 9)).unwrap();
    let config = config(&site.root, "").replace(
        "listen = [\"tcp://127.0.0.1:0\"]",
        &format!(
            "listen = [\"tls://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]\n{}",
            certs.keys()
        ),
    );
    let loopd = Loopd::start(&config);
    (site, loopd)
}

#[test]
fn curl_gets_the_index_a_4_mib_file_and_a_range_over_tls() {
    let certs = Certs::new();
    let (site, loopd) = http_site(&certs);
    let port = tls_addr(&loopd, "http").port();
    let ca = certs.path("ca.pem");
    let base = format!("https://localhost:{port}");
    let out = curl(&ca, port, &["-v", &format!("{base}/")]);
    let index = ok(&out);
    assert!(index == site.file("index.html"), "index differs");
    // ALPN: the http handler declares http/1.1 (no tls_alpn in the
    // config) and curl takes it.
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(
        verbose
            .lines()
            .any(|l| l.contains("ALPN") && l.contains("accepted") && l.contains("http/1.1")),
        "{verbose}"
    );
    let big = ok(&curl(&ca, port, &[&format!("{base}/big.bin")]));
    assert_eq!(big.len(), 4 << 20);
    assert!(big == site.file("big.bin"), "4 MiB file differs");
    let out = ok(&curl(
        &ca,
        port,
        &[
            "--range",
            "1000-70999",
            "-w",
            "\n%{http_code}",
            &format!("{base}/big.bin"),
        ],
    ));
    let (body, code) = out.split_at(out.len() - 4);
    assert_eq!(code, b"\n206");
    assert!(body == &site.file("big.bin")[1000..71000], "range differs");
    // The plaintext listener beside it serves as before.
    let plain = ok(&run(Command::new("curl").args([
        "--silent",
        "--show-error",
        "--max-time",
        "60",
        &format!("http://{}/hello.txt", loopd.tcp("http")),
    ])));
    assert_eq!(plain, b"hello, world\n");
    // And curl refuses a server its CA file does not vouch for.
    let wrong = run(Command::new("curl")
        .args(["--silent", "--max-time", "20", "--cacert"])
        .arg(certs.path("other-ca.pem"))
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("{base}/")));
    assert!(!wrong.status.success(), "curl trusted an unknown CA");
    assert!(
        loopd.wait_for_log("TLS handshake with", TIMEOUT),
        "the refused handshake is logged"
    );
    loopd.assert_no_unexpected_errors();
}

fn echo_config(certs: &Certs, extra: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000
{extra}

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tls://127.0.0.1:0", "tcp://127.0.0.1:0"]
{}
"#,
        certs.keys()
    )
}

/// Python's ssl client: sends `size` bytes of a pattern and reads the echo;
/// prints the byte count and SHA-256 it got, and the TLS version.
const PY_ECHO: &str = r#"
import hashlib, socket, ssl, sys
port, ca, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 5:
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="localhost")
data = bytes((i * 7 + 3) % 251 for i in range(size))
# In steps of 64 KiB, each read back before the next is sent (one SSL
# object is not to be used from two threads at once).
h, got, sent = hashlib.sha256(), 0, 0
while sent < size:
    s.sendall(data[sent:sent + 65536])
    sent = min(size, sent + 65536)
    while got < sent:
        b = s.recv(65536)
        if not b:
            sent = size
            break
        h.update(b)
        got += len(b)
print(got, h.hexdigest(), s.version())
"#;

#[test]
fn python_ssl_echo_is_byte_exact_for_1_mib() {
    let certs = Certs::new();
    let loopd = Loopd::start(&echo_config(&certs, ""));
    let port = tls_addr(&loopd, "echo").port();
    let size = 1 << 20;
    let out = ok(&run(Command::new("python3")
        .arg("-c")
        .arg(PY_ECHO)
        .arg(port.to_string())
        .arg(certs.path("ca.pem"))
        .arg(size.to_string())));
    let text = String::from_utf8(out).unwrap();
    let fields: Vec<&str> = text.split_whitespace().collect();
    let data: Vec<u8> = (0..size).map(|i| ((i * 7 + 3) % 251) as u8).collect();
    let want = format!("{:x}", Sha256::digest(&data));
    assert_eq!(fields[0], size.to_string(), "{text}");
    assert_eq!(fields[1], want, "echo differs");
    assert!(fields[2].starts_with("TLSv1."), "{text}");
    // The plaintext listener of the same handler echoes as before.
    let plain = echo_roundtrip(tcp(loopd.tcp("echo")), b"plain");
    assert_eq!(plain, b"plain");
    loopd.assert_no_unexpected_errors();
}

/// Reads until EOF or a reset; what came before it.
fn read_until_cut(s: &mut std::net::TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the connection was not cut off: {e}"),
        }
    }
}

#[test]
fn plaintext_sent_to_a_tls_port_is_cut_off() {
    let certs = Certs::new();
    let (_site, loopd) = http_site(&certs);
    let addr = tls_addr(&loopd, "http");
    let mut s = tcp(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let got = read_until_cut(&mut s);
    assert!(!got.starts_with(b"HTTP/"), "plaintext was answered");
    // At most a TLS alert record (content type 21), never application data.
    if !got.is_empty() {
        assert_eq!(got[0], 21, "{got:?}");
    }
    assert!(loopd.wait_for_log("TLS handshake with 127.0.0.1", TIMEOUT));
    // Everyone else is served.
    let port = addr.port();
    let hello = ok(&curl(
        &certs.path("ca.pem"),
        port,
        &[&format!("https://localhost:{port}/hello.txt")],
    ));
    assert_eq!(hello, b"hello, world\n");
    loopd.assert_no_unexpected_errors();
}

#[test]
fn a_handshake_that_never_comes_is_cut_off_by_the_timeout() {
    let certs = Certs::new();
    let loopd = Loopd::start(&echo_config(&certs, "tls_handshake_timeout_ms = 300"));
    let mut s = tcp(tls_addr(&loopd, "echo"));
    // Half a ClientHello's record header, then nothing.
    s.write_all(&[22, 3, 1]).unwrap();
    let got = read_until_cut(&mut s);
    assert!(got.len() < 64, "{got:?}");
    assert!(
        loopd.wait_for_log("not done in 300 ms (tls_handshake_timeout_ms)", TIMEOUT),
        "{}",
        loopd.logs()
    );
    loopd.assert_no_unexpected_errors();
}

/// Python's ssl client that writes as much as loopd takes (up to `limit`
/// bytes, until a send blocks for 2 s) and never reads; prints how much it
/// wrote, then waits for a line on stdin before closing.
const PY_NEVER_READS: &str = r#"
import socket, ssl, sys
port, ca, limit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection(("127.0.0.1", port), timeout=60)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s = ctx.wrap_socket(raw, server_hostname="localhost")
s.settimeout(2)
chunk = b"x" * 65536
sent = 0
try:
    while sent < limit:
        sent += s.send(chunk)
except (socket.timeout, ssl.SSLWantWriteError, TimeoutError):
    pass
print(sent, flush=True)
sys.stdin.readline()
"#;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn a_tls_client_that_never_reads_leaves_loopd_bounded() {
    let certs = Certs::new();
    let loopd = Loopd::start(&echo_config(&certs, ""));
    let port = tls_addr(&loopd, "echo").port();
    let before = rss_kib(loopd.pid());
    let limit: u64 = 256 << 20;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PY_NEVER_READS)
        .arg(port.to_string())
        .arg(certs.path("ca.pem"))
        .arg(limit.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let sent: u64 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    let after = rss_kib(loopd.pid());
    let _ = child.stdin.take().unwrap().write_all(b"\n");
    let _ = child.wait();
    figure("tls_never_reads_sent_bytes", sent);
    figure(
        "tls_never_reads_rss_growth_kib",
        after.saturating_sub(before),
    );
    assert!(
        sent < limit,
        "loopd took all {limit} bytes from a client that reads nothing"
    );
    // The output queue stops at its high watermark (256 KiB) and rustls
    // at its buffer limit: loopd's memory grows by kernel-buffer sizes at
    // most, not by what the client sent.
    assert!(
        after.saturating_sub(before) < 16 << 10,
        "RSS grew from {before} KiB to {after} KiB"
    );
    loopd.assert_no_unexpected_errors();
}

fn check_fails(config: &str, needles: &[&str]) {
    let dir = TempDir::new("tls-check");
    let path = write_config(&dir, config);
    for args in [
        vec!["check", path.to_str().unwrap()],
        vec![path.to_str().unwrap()],
    ] {
        let out = run_loopd(&args);
        assert!(!out.status.success(), "loopd {args:?} accepted it");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: `{n}` not in:\n{stderr}");
        }
    }
}

#[test]
fn broken_certificates_are_named_at_check_and_at_start() {
    let certs = Certs::new();
    let base = |cert: &str, key: &str| {
        format!(
            "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tls://127.0.0.1:0\"]\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"
        )
    };
    let missing = certs.p("nope.pem");
    check_fails(
        &base(&missing, &certs.p("key.pem")),
        &[
            "loopd.toml:5:",
            "handler[0].tls_cert",
            &missing,
            "No such file",
        ],
    );
    let garbage = certs.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let g = garbage.to_str().unwrap();
    check_fails(
        &base(g, &certs.p("key.pem")),
        &["handler[0].tls_cert", g, "no PEM certificate"],
    );
    check_fails(
        &base(&certs.p("cert.pem"), g),
        &["handler[0].tls_key", g, "no PEM private key"],
    );
    // A FIFO would stall the read (no writer) and /dev/zero fill memory:
    // both are refused unread.
    let fifo = certs.path("cert.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    check_fails(
        &base(f, &certs.p("key.pem")),
        &[
            "handler[0].tls_cert",
            f,
            "it is a FIFO (named pipe), not a regular file",
        ],
    );
    check_fails(
        &base(&certs.p("cert.pem"), "/dev/zero"),
        &[
            "handler[0].tls_key",
            "/dev/zero: it is a character device, not a regular file",
        ],
    );
    check_fails(
        &base(&certs.p("cert.pem"), &certs.p("other-key.pem")),
        &[
            "loopd.toml:6:",
            "handler[0].tls_key",
            &certs.p("other-key.pem"),
            "does not go with tls_cert",
        ],
    );
    check_fails(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tls://127.0.0.1:0\"]\n",
        &[
            "handler[0].tls_cert",
            "a tls:// listener needs tls_cert and tls_key",
        ],
    );
    check_fails(
        &format!(
            "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:0\"]\n{}",
            certs.keys()
        ),
        &["handler[0].tls_cert", "only applies to tls:// listeners"],
    );
    // And a good pair passes the check.
    let dir = TempDir::new("tls-check-ok");
    let path = write_config(&dir, &base(&certs.p("cert.pem"), &certs.p("key.pem")));
    let out = run_loopd(&["check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Python's ssl client: one short echo; exits non-zero if the handshake
/// (the certificate check against `ca`) fails.
fn py_echo(port: u16, ca: &Path) -> Output {
    run(Command::new("python3")
        .arg("-c")
        .arg(PY_ECHO)
        .arg(port.to_string())
        .arg(ca)
        .arg("1000"))
}

#[test]
fn sighup_serves_a_changed_certificate_to_new_connections() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let certs = Certs::new();
    let loopd = Loopd::start(&echo_config(&certs, ""));
    let port = tls_addr(&loopd, "echo").port();
    ok(&py_echo(port, &certs.path("ca.pem")));
    // A new CA, and the same files rewritten with a certificate it signed.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "loopd test CA 2");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(certs.path("ca2.pem"), ca.pem()).unwrap();
    std::fs::write(certs.path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(certs.path("key.pem"), key.serialize_pem()).unwrap();
    loopd.signal(libc::SIGHUP);
    assert!(
        loopd.wait_for_log("reloaded: ", TIMEOUT),
        "{}",
        loopd.logs()
    );
    ok(&py_echo(port, &certs.path("ca2.pem")));
    let old = py_echo(port, &certs.path("ca.pem"));
    assert!(!old.status.success(), "the old certificate is still served");
    // A reload with a broken key keeps the running certificate.
    std::fs::write(certs.path("key.pem"), "garbage\n").unwrap();
    loopd.expect_error("reload failed");
    loopd.signal(libc::SIGHUP);
    assert!(loopd.wait_for_log("reload failed", TIMEOUT));
    assert!(
        loopd.logs().contains("no PEM private key"),
        "{}",
        loopd.logs()
    );
    ok(&py_echo(port, &certs.path("ca2.pem")));
    loopd.assert_no_unexpected_errors();
}

#[test]
fn mutual_tls_takes_a_client_certificate_and_refuses_a_client_without() {
    let certs = Certs::new();
    // A client certificate from another CA, which the server trusts for
    // clients (tls_client_ca).
    certs.client(
        "client",
        "loopd client CA",
        &[(rcgen::DnType::CommonName, "client one")],
    );
    let config = echo_config(&certs, "").replace(
        "tls_key = ",
        &format!(
            "tls_client_ca = \"{}\"\ntls_key = ",
            certs.p("client-ca.pem")
        ),
    );
    let loopd = Loopd::start(&config);
    let port = tls_addr(&loopd, "echo").port();
    let with = |cert: &str, key: &str| {
        run(Command::new("python3")
            .arg("-c")
            .arg(PY_ECHO)
            .arg(port.to_string())
            .arg(certs.path("ca.pem"))
            .arg("1000")
            .arg(certs.path(cert))
            .arg(certs.path(key)))
    };
    let out = String::from_utf8(ok(&with("client.pem", "client-key.pem"))).unwrap();
    assert!(out.starts_with("1000 "), "{out}");
    let without = py_echo(port, &certs.path("ca.pem"));
    assert!(
        !without.status.success(),
        "a client without a certificate was served"
    );
    // The server's own certificate is not from the client CA: refused too.
    let wrong = with("cert.pem", "key.pem");
    assert!(
        !wrong.status.success(),
        "a client certificate from another CA was taken"
    );
    assert!(loopd.wait_for_log("TLS handshake with 127.0.0.1", TIMEOUT));
    loopd.assert_no_unexpected_errors();
}

#[test]
fn a_client_in_its_handshake_does_not_hold_up_shutdown() {
    let certs = Certs::new();
    let mut loopd = Loopd::start(&echo_config(&certs, "tls_handshake_timeout_ms = 600000"));
    let mut s = tcp(tls_addr(&loopd, "echo"));
    s.write_all(&[22, 3, 1]).unwrap();
    // An echo client over TLS that finished its handshake is served to
    // the end as before.
    ok(&py_echo(
        tls_addr(&loopd, "echo").port(),
        &certs.path("ca.pem"),
    ));
    loopd.signal(libc::SIGTERM);
    let status = loopd.wait_exit(TIMEOUT);
    assert!(status.success(), "{status:?}");
    let logs = loopd.logs();
    assert!(logs.contains("shutdown complete"), "{logs}");
    assert!(
        !logs.contains("shutdown timeout"),
        "the half-open handshake held the shutdown:\n{logs}"
    );
    read_until_cut(&mut s);
}

fn parse_id(line: &str, prefix: &str) -> u64 {
    line.strip_prefix(prefix)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected `{prefix}<id>`, got `{line}`"))
}

#[test]
fn outbound_tls_connects_trust_the_handlers_tls_ca_only() {
    let certs = Certs::new();
    let config = format!(
        r#"{}
[[handler]]
name = "probe"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
tls_ca = "{}"

[[handler]]
name = "wrong-ca"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
tls_ca = "{}"

[[handler]]
name = "no-ca"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
"#,
        echo_config(&certs, ""),
        certs.p("ca.pem"),
        certs.p("other-ca.pem"),
    );
    // The system's CAs (for no-ca) are the other CA.
    let loopd = Loopd::start_with(&config, "debug", |cmd| {
        cmd.env("SSL_CERT_FILE", certs.path("other-ca.pem"))
            .env_remove("SSL_CERT_DIR");
    });
    let echo = tls_addr(&loopd, "echo");
    let mut c = LineClient::connect(loopd.tcp("probe"));
    let out = parse_id(&c.cmd(&format!("connect tls://{echo}")), "connecting ");
    assert_eq!(c.recv(), format!("connected {out}"));
    // The probe greets the echo server over TLS; the echo comes back.
    assert_eq!(c.recv(), format!("from {out} hello from probe"));
    // A CA that did not sign the server's certificate: the connect fails.
    let mut w = LineClient::connect(loopd.tcp("wrong-ca"));
    let failed = parse_id(&w.cmd(&format!("connect tls://{echo}")), "connecting ");
    assert_eq!(w.recv(), format!("connect-failed {failed}"));
    // The server's certificate, as the handler sees it.
    assert_eq!(
        c.cmd(&format!("subject {out}")),
        "subject CN=loopd test server"
    );
    // No tls_ca: the system's CA certificates, which here (SSL_CERT_FILE)
    // are the other CA's: the handshake fails, and says why.
    let mut n = LineClient::connect(loopd.tcp("no-ca"));
    let failed = parse_id(&n.cmd(&format!("connect tls://{echo}")), "connecting ");
    assert_eq!(n.recv(), format!("connect-failed {failed}"));
    assert!(
        loopd.wait_for_log("no-ca: TLS handshake with 127.0.0.1", TIMEOUT),
        "{}",
        loopd.logs()
    );
    loopd.assert_no_unexpected_errors();
}

/// The echo entry of [`echo_config`] and a probe without `tls_ca`.
fn echo_and_probe_config(certs: &Certs) -> String {
    format!(
        r#"{}
[[handler]]
name = "probe"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
"#,
        echo_config(certs, ""),
    )
}

#[test]
fn a_handler_without_tls_ca_trusts_the_system_cas_and_verifies_the_server_name() {
    let certs = Certs::new();
    let config = echo_and_probe_config(&certs);
    // The system's CAs are the test CA.
    let loopd = Loopd::start_with(&config, "debug", |cmd| {
        cmd.env("SSL_CERT_FILE", certs.path("ca.pem"))
            .env_remove("SSL_CERT_DIR");
    });
    let echo = tls_addr(&loopd, "echo");
    let mut c = LineClient::connect(loopd.tcp("probe"));
    let out = parse_id(&c.cmd(&format!("connect tls://{echo}")), "connecting ");
    assert_eq!(c.recv(), format!("connected {out}"));
    assert_eq!(c.recv(), format!("from {out} hello from probe"));
    assert!(loopd.wait_for_log("trusting 1 system CA certificates", TIMEOUT));
    // A DNS name the certificate carries.
    let named = parse_id(
        &c.cmd(&format!("connect-name localhost tls://{echo}")),
        "connecting ",
    );
    assert_eq!(c.recv(), format!("connected {named}"));
    assert_eq!(c.recv(), format!("from {named} hello from probe"));
    assert_eq!(
        c.cmd(&format!("peer-cert {named}")),
        format!(
            "peer-cert {}",
            std::fs::metadata(certs.path("cert.der")).unwrap().len()
        )
    );
    // One it does not: refused by the handshake, logged with the reason.
    let wrong = parse_id(
        &c.cmd(&format!("connect-name other.example tls://{echo}")),
        "connecting ",
    );
    assert_eq!(c.recv(), format!("connect-failed {wrong}"));
    assert!(
        loopd.wait_for_log(
            "invalid peer certificate: certificate not valid for name",
            TIMEOUT
        ),
        "{}",
        loopd.logs()
    );
    // Not a DNS name (an IP address is not one either), or a name on a
    // plaintext URL: refused at once.
    assert_eq!(
        c.cmd(&format!("connect-name 127.0.0.1 tls://{echo}")),
        "connect -4"
    );
    assert_eq!(
        c.cmd(&format!("connect-name a..b tls://{echo}")),
        "connect -4"
    );
    assert_eq!(
        c.cmd(&format!(
            "connect-name localhost tcp://{}",
            loopd.tcp("echo")
        )),
        "connect -4"
    );
    // A plaintext connection has no peer certificate.
    assert_eq!(c.cmd("subject"), "subject -5");
    loopd.assert_no_unexpected_errors();
}

#[test]
fn without_tls_ca_or_system_cas_an_outbound_tls_connect_is_refused() {
    let certs = Certs::new();
    let config = echo_and_probe_config(&certs);
    let empty = TempDir::new("tls-no-cas");
    let loopd = Loopd::start_with(&config, "debug", |cmd| {
        cmd.env("SSL_CERT_FILE", empty.join("none.pem"))
            .env("SSL_CERT_DIR", empty.path());
    });
    let echo = tls_addr(&loopd, "echo");
    let mut c = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(c.cmd(&format!("connect tls://{echo}")), "connect -4");
    assert!(
        loopd.wait_for_log("no system CA certificates found", TIMEOUT),
        "{}",
        loopd.logs()
    );
    loopd.assert_no_unexpected_errors();
}

/// Python's ssl client for line protocols: sends each argument after the
/// first five as a line and prints one line read back per line sent, then
/// the ALPN protocol the server chose (or None). Arguments: port, CA file,
/// ALPN protocols offered (comma-separated, or "-"), client certificate
/// and key (or "-").
const PY_LINES: &str = r#"
import socket, ssl, sys
port, ca, alpn, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
if cert != "-":
    ctx.load_cert_chain(cert, key)
if alpn != "-":
    ctx.set_alpn_protocols(alpn.split(","))
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="localhost")
f = s.makefile("rwb")
for line in sys.argv[6:]:
    f.write(line.encode() + b"\n")
    f.flush()
    print(f.readline().decode().rstrip("\n"))
print("alpn", s.selected_alpn_protocol())
"#;

fn py_lines(
    port: u16,
    ca: &Path,
    alpn: &str,
    client: Option<(&Path, &Path)>,
    lines: &[&str],
) -> Output {
    let (cert, key) = client.unwrap_or((Path::new("-"), Path::new("-")));
    run(Command::new("python3")
        .arg("-c")
        .arg(PY_LINES)
        .arg(port.to_string())
        .arg(ca)
        .arg(alpn)
        .arg(cert)
        .arg(key)
        .args(lines))
}

#[test]
fn a_handler_reads_the_subject_of_a_mutual_tls_clients_certificate() {
    let certs = Certs::new();
    let cert = certs.client(
        "client",
        "loopd client CA",
        &[
            (rcgen::DnType::CommonName, "alice"),
            (rcgen::DnType::OrganizationName, "Example, Inc."),
        ],
    );
    let config = format!(
        r#"
[[handler]]
name = "mtls"
plugin = "probe"
listen = ["tls://127.0.0.1:0", "tcp://127.0.0.1:0"]
tls_client_ca = "{}"
{}
[[handler]]
name = "tls"
plugin = "probe"
listen = ["tls://127.0.0.1:0"]
{}"#,
        certs.p("client-ca.pem"),
        certs.keys(),
        certs.keys()
    );
    let loopd = Loopd::start(&config);
    let ca_pem = certs.path("ca.pem");
    let (client, client_key) = (certs.path("client.pem"), certs.path("client-key.pem"));
    let out = ok(&py_lines(
        tls_addr(&loopd, "mtls").port(),
        &ca_pem,
        "-",
        Some((&client, &client_key)),
        &["subject", "peer-cert"],
    ));
    let der = cert.der().len();
    // RFC 4514: the parts in the reverse of the certificate's order (this one
    // has CN first, then O), the comma in a value escaped.
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("subject O=Example\\, Inc.,CN=alice\npeer-cert {der}\nalpn None\n")
    );
    // TLS without a client certificate asked for, and plaintext: none.
    let out = ok(&py_lines(
        tls_addr(&loopd, "tls").port(),
        &ca_pem,
        "-",
        None,
        &["subject"],
    ));
    assert_eq!(String::from_utf8(out).unwrap(), "subject -5\nalpn None\n");
    let mut plain = LineClient::connect(loopd.tcp("mtls"));
    assert_eq!(plain.cmd("subject"), "subject -5");
    loopd.assert_no_unexpected_errors();
}

#[test]
fn alpn_comes_from_the_handler_unless_tls_alpn_replaces_it() {
    let certs = Certs::new();
    let site = Site::new();
    let config = format!(
        r#"
[[handler]]
name = "declared"
plugin = "http"
listen = ["tls://127.0.0.1:0"]
{keys}
[handler.config]
root = "{root}"

[[handler]]
name = "none"
plugin = "http"
listen = ["tls://127.0.0.1:0"]
tls_alpn = []
{keys}
[handler.config]
root = "{root}"

[[handler]]
name = "probe"
plugin = "probe"
listen = ["tls://127.0.0.1:0"]
{keys}
[[handler]]
name = "custom"
plugin = "probe"
listen = ["tls://127.0.0.1:0"]
tls_alpn = ["x-loopd-probe"]
{keys}"#,
        keys = certs.keys(),
        root = site.root.display()
    );
    let loopd = Loopd::start(&config);
    let ca = certs.path("ca.pem");
    let alpn_of = |handler: &str, offered: &str| {
        let out = ok(&py_lines(
            tls_addr(&loopd, handler).port(),
            &ca,
            offered,
            None,
            &[],
        ));
        String::from_utf8(out).unwrap()
    };
    // The http handler declares http/1.1.
    assert_eq!(alpn_of("declared", "h2,http/1.1"), "alpn http/1.1\n");
    // tls_alpn = [] offers none: the client's offer is ignored.
    assert_eq!(alpn_of("none", "h2,http/1.1"), "alpn None\n");
    // The probe declares none; tls_alpn gives it one.
    assert_eq!(alpn_of("probe", "h2,http/1.1"), "alpn None\n");
    assert_eq!(alpn_of("custom", "x-loopd-probe"), "alpn x-loopd-probe\n");
    // A client offering only protocols the server does not speak is
    // refused (no_application_protocol).
    let out = py_lines(tls_addr(&loopd, "declared").port(), &ca, "h2", None, &[]);
    assert!(
        !out.status.success(),
        "a client offering only h2 was served"
    );
    loopd.assert_no_unexpected_errors();
}

/// Python's ssl client asking for `name` by SNI: prints the common name of
/// the certificate it was served (verified against the CA, whatever name
/// it carries).
const PY_SNI: &str = r#"
import socket, ssl, sys
port, ca, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60),
                    server_hostname=None if name == "-" else name)
print(dict(x[0] for x in s.getpeercert()["subject"])["commonName"])
"#;

#[test]
fn sni_picks_the_certificate_for_the_name_asked_for() {
    use rcgen::{CertificateParams, KeyPair};
    let certs = Certs::new();
    let ca_pem = std::fs::read_to_string(certs.path("ca.pem")).unwrap();
    // The SNI certificates come from a CA of their own, which the client
    // trusts beside the first.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "loopd SNI CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(certs.path("both-cas.pem"), format!("{ca_pem}{}", ca.pem())).unwrap();
    let issue = |file: &str, names: &[&str], cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(certs.path(&format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(certs.path(&format!("{file}-key.pem")), key.serialize_pem()).unwrap();
    };
    issue("a", &["a.loopd.test"], "site a");
    issue("b", &["*.b.loopd.test", "b.loopd.test"], "site b");
    issue("ip-only", &["127.0.0.2"], "no dns name");
    let config = format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tls://127.0.0.1:0\"]\n{}tls_sni = [{}, {}]\n",
        certs.keys(),
        sni_entry(&certs, "a", "a-key"),
        sni_entry(&certs, "b", "b-key")
    );
    let loopd = Loopd::start(&config);
    let port = tls_addr(&loopd, "echo").port();
    let served = |name: &str| {
        let out = ok(&run(Command::new("python3")
            .arg("-c")
            .arg(PY_SNI)
            .arg(port.to_string())
            .arg(certs.path("both-cas.pem"))
            .arg(name)));
        String::from_utf8(out).unwrap().trim().to_string()
    };
    assert_eq!(served("a.loopd.test"), "site a");
    assert_eq!(served("A.Loopd.Test"), "site a");
    assert_eq!(served("b.loopd.test"), "site b");
    assert_eq!(served("www.b.loopd.test"), "site b");
    // A wildcard covers one label only; other names and no name get the
    // entry's tls_cert.
    assert_eq!(served("x.www.b.loopd.test"), "loopd test server");
    assert_eq!(served("c.loopd.test"), "loopd test server");
    assert_eq!(served("-"), "loopd test server");
    loopd.assert_no_unexpected_errors();

    // Bad entries are named at check, with the entry and the file.
    let base = |sni: String| {
        format!(
            "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tls://127.0.0.1:0\"]\n{}tls_sni = [{}, {sni}]\n",
            certs.keys(),
            sni_entry(&certs, "a", "a-key")
        )
    };
    check_fails(
        &base(sni_entry(&certs, "ip-only", "ip-only-key")),
        &[
            "handler[0].tls_sni[1].cert",
            &certs.p("ip-only.pem"),
            "carries no DNS name",
        ],
    );
    check_fails(
        &base(sni_entry(&certs, "b", "a-key")),
        &[
            "handler[0].tls_sni[1].key",
            &certs.p("a-key.pem"),
            "does not go with its cert",
        ],
    );
    check_fails(
        &base(format!("{{ cert = \"{}\" }}", certs.p("b.pem"))),
        &["tls_sni", "key"],
    );
    // An entry whose path ends like another's is still the one named.
    std::fs::create_dir_all(certs.path("sub")).unwrap();
    std::fs::copy(certs.path("ip-only.pem"), certs.path("sub/a.pem")).unwrap();
    std::fs::copy(certs.path("ip-only-key.pem"), certs.path("sub/a-key.pem")).unwrap();
    check_fails(
        &base(sni_entry(&certs, "sub/a", "sub/a-key")),
        &[
            "handler[0].tls_sni[1].cert",
            &certs.p("sub/a.pem"),
            "carries no DNS name",
        ],
    );
}

fn sni_entry(certs: &Certs, cert: &str, key: &str) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        certs.p(&format!("{cert}.pem")),
        certs.p(&format!("{key}.pem"))
    )
}

/// `GET /metrics` from a status listener, by curl.
fn scrape(addr: std::net::SocketAddr) -> String {
    let out = ok(&run(Command::new("curl").args([
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        &format!("http://{addr}/metrics"),
    ])));
    String::from_utf8(out).unwrap()
}

#[test]
fn with_two_workers_a_port_switched_to_tls_stays_one_port_and_keeps_its_counters() {
    let certs = Certs::new();
    let config = |listen: &str, keys: &str| {
        format!(
            "[runtime]\nworkers = 2\n\n[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"{listen}\"]\n{keys}\n[[handler]]\nname = \"status\"\nplugin = \"status\"\nlisten = [\"tcp://127.0.0.1:0\"]\n"
        )
    };
    let loopd = Loopd::start(&config("tcp://127.0.0.1:0", ""));
    let plain_addr = loopd.tcp("echo");
    let port = plain_addr.port();
    let mut plain = tcp(plain_addr);
    for i in 0..3 {
        let mut s = tcp(plain_addr);
        let msg = format!("before {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
    }
    std::fs::write(
        loopd.dir.join("loopd.toml"),
        config("tls://127.0.0.1:0", &certs.keys()),
    )
    .unwrap();
    loopd.signal(libc::SIGHUP);
    let kept =
        format!("listening on tls://127.0.0.1:{port} (the socket of tcp://127.0.0.1:{port}, kept)");
    let deadline = Instant::now() + TIMEOUT;
    while loopd.logs().matches(&kept).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "both workers keep the socket:\n{}",
            loopd.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // No worker bound another port.
    let logs = loopd.logs();
    assert_eq!(
        logs.matches("echo listening on tls://").count(),
        2,
        "{logs}"
    );
    // Both workers serve TLS on the one port.
    for _ in 0..8 {
        ok(&py_echo(port, &certs.path("ca.pem")));
    }
    // The connection from before stays plaintext.
    plain.write_all(b"still plain\n").unwrap();
    let mut got = [0u8; 12];
    plain.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still plain\n");
    // The tcp:// listener's counters stay, beside the tls:// one's.
    let status = loopd.tcp("status");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = scrape(status);
        let accepted = |url: &str| -> f64 {
            m.lines()
                .filter(|l| {
                    l.starts_with("loopd_connections_accepted_total")
                        && l.contains(&format!("listener=\"{url}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (old, new) = (
            accepted(&format!("tcp://127.0.0.1:{port}")),
            accepted(&format!("tls://127.0.0.1:{port}")),
        );
        if old >= 4.0 && new >= 8.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "accepted: tcp:// {old} (want 4), tls:// {new} (want 8):\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    loopd.assert_no_unexpected_errors();
}

#[test]
fn an_outbound_connection_presents_tls_connect_cert_to_a_server_that_asks() {
    let certs = Certs::new();
    // A client CA the echo server trusts for clients, and a certificate it
    // signed for the probe.
    certs.client(
        "probe",
        "loopd upstream-client CA",
        &[(rcgen::DnType::CommonName, "probe")],
    );
    let config = format!(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tls://127.0.0.1:0"]
tls_client_ca = "{up_ca}"
{keys}
[[handler]]
name = "with-cert"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
tls_ca = "{ca}"
tls_connect_cert = "{cert}"
tls_connect_key = "{key}"

[[handler]]
name = "without"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
tls_ca = "{ca}"
"#,
        up_ca = certs.p("probe-ca.pem"),
        keys = certs.keys(),
        ca = certs.p("ca.pem"),
        cert = certs.p("probe.pem"),
        key = certs.p("probe-key.pem"),
    );
    let loopd = Loopd::start(&config);
    let echo = tls_addr(&loopd, "echo");
    let mut c = LineClient::connect(loopd.tcp("with-cert"));
    let out = parse_id(&c.cmd(&format!("connect tls://{echo}")), "connecting ");
    assert_eq!(c.recv(), format!("connected {out}"));
    assert_eq!(c.recv(), format!("from {out} hello from probe"));
    // Without a certificate the server refuses the handshake: under
    // TLS 1.3 the client has finished its side first, so it may open, and
    // is then closed by the server's alert, before any echo.
    let mut w = LineClient::connect(loopd.tcp("without"));
    let failed = parse_id(&w.cmd(&format!("connect tls://{echo}")), "connecting ");
    let first = w.recv();
    if first == format!("connected {failed}") {
        let next = w.recv();
        assert!(
            next.starts_with(&format!("outbound-closed {failed} ")),
            "{next}"
        );
    } else {
        assert_eq!(first, format!("connect-failed {failed}"));
    }
    assert!(
        loopd.wait_for_log("echo: TLS handshake with 127.0.0.1", TIMEOUT),
        "the server logs the refused client"
    );
    loopd.assert_no_unexpected_errors();

    // Half a pair, or a key that is not the certificate's, is named.
    let entry = |extra: &str| {
        format!(
            "[[handler]]\nname = \"p\"\nplugin = \"probe\"\nlisten = [\"tcp://127.0.0.1:0\"]\n{extra}\n"
        )
    };
    check_fails(
        &entry(&format!("tls_connect_cert = \"{}\"", certs.p("probe.pem"))),
        &["handler[0].tls_connect_key", "is missing"],
    );
    check_fails(
        &entry(&format!(
            "tls_connect_cert = \"{}\"\ntls_connect_key = \"{}\"",
            certs.p("probe.pem"),
            certs.p("key.pem")
        )),
        &[
            "handler[0].tls_connect_key",
            &certs.p("key.pem"),
            "does not go with tls_connect_cert",
        ],
    );
}
