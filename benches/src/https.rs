//! Benchmark 9, HTTPS: loopd's http handler on a `tls://` listener against
//! nginx (`listen ... ssl`, the HTTP benchmark's config otherwise), both
//! with the same ECDSA P-256 certificate and key, made at run time with
//! `openssl req`.
//!
//! Three loads, each run interleaved server by server:
//! - keep-alive requests for the 612-byte page and the 16 KiB file
//!   (`wrk -t1`, 64 connections), with both servers also over plain HTTP
//!   (`loopd-plain`, `nginx-plain`): what TLS adds to a request;
//! - one connection per request (`wrk -H 'Connection: close'`): wrk keeps
//!   the TLS session of a connection across its reconnects, so these are
//!   *resumed* handshakes (TLS 1.3 PSK with a fresh X25519 exchange, no
//!   certificate and no signature);
//! - one full handshake per request (`openssl s_time -new`, which never
//!   resumes): X25519 and an ECDSA P-256 signature per connection.
//!
//! Before timing, every server must serve both files byte-exact over TLS
//! (20 requests on one connection, one HTTP/1.0 request as `s_time` sends
//! it), resume a session, and negotiate exactly what the others negotiate
//! with an OpenSSL client (the library wrk and `s_time` use): the same
//! protocol, cipher suite, key-exchange group and signature type.
//!
//! The certificate comes from the `openssl` command line, not rcgen: the
//! benchmark needs `openssl` anyway (`s_client` checks what is negotiated,
//! `s_time` makes the full handshakes, and wrk and nginx link the same
//! library), so the bench crate gains no dependency for it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http::{self, parse_wrk, Response, WrkOut, LARGE, LARGE_SIZE, SMALL, SMALL_SIZE};
use crate::peers;
use crate::results::{Bench, Case};
use crate::server::{free_port, CpuProbe, Server, CLIENT_CORE, SERVER_CORE};
use crate::Ctx;

/// wrk's connections in the keep-alive and resumed-handshake runs.
pub const CONNS: usize = 64;
/// `openssl s_time` processes run side by side in the full-handshake runs
/// (each does one connection at a time).
pub const STIME_CLIENTS: usize = 4;
/// Longest an `openssl s_client` check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate and key both servers serve.
#[derive(Debug, Clone)]
pub struct Cert {
    /// PEM certificate (self-signed).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8).
    pub key: PathBuf,
}

/// What the certificate is, for the page.
pub const CERT_KIND: &str = "self-signed ECDSA P-256 (prime256v1) certificate signed with ecdsa-with-SHA256, for `localhost` and 127.0.0.1, made at run time by `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1`";

/// Makes a fresh self-signed ECDSA P-256 certificate and its key in `dir`.
///
/// # Errors
/// `openssl` missing or failing.
pub fn make_cert(dir: &Path) -> Result<Cert> {
    std::fs::create_dir_all(dir)?;
    let cert = Cert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&cert.key)
        .arg("-out")
        .arg(&cert.cert)
        .output()
        .context("running openssl req")?;
    if !out.status.success() {
        bail!(
            "openssl req could not make the certificate ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(cert)
}

/// The HTTP benchmark's nginx config ([`http::nginx_config_workers`], one
/// worker) with its listener made `ssl`, the certificate and key, and TLS
/// 1.3 only (nginx 1.22's default protocols stop at TLS 1.2, which
/// loopd's clients would then not share with nginx's).
pub fn nginx_tls_config(dir: &Path, root: &Path, port: u16, cert: &Cert) -> Result<String> {
    let plain = http::nginx_config_workers(dir, root, port, 1);
    let listen = format!("listen 127.0.0.1:{port} backlog=4096;");
    if !plain.contains(&listen) {
        bail!("the HTTP benchmark's nginx config has no `{listen}` line to make ssl");
    }
    Ok(plain.replace(
        &listen,
        &format!(
            "listen 127.0.0.1:{port} ssl backlog=4096;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.3;",
            cert.cert.display(),
            cert.key.display()
        ),
    ))
}

/// nginx serving `root` over TLS, one worker, pinned to the server core.
pub fn start_nginx_tls(ctx: &Ctx, root: &Path, cert: &Cert) -> Result<(Server, SocketAddr)> {
    http::start_nginx_with(ctx, "nginx-tls", &SERVER_CORE.to_string(), |dir, port| {
        nginx_tls_config(dir, root, port, cert)
    })
}

/// loopd's http handler on a `tls://` listener with `cert`; every other
/// key at its shipped default (only the access log off, as nginx's is).
pub fn start_loopd_tls(ctx: &Ctx, root: &Path, cert: &Cert) -> Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let config = format!(
        "{}[[handler]]\nname = \"https\"\nplugin = \"http\"\nlisten = [\"tls://127.0.0.1:{port}\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[handler.config]\nroot = \"{}\"\naccess_log = false\n",
        peers::RUNTIME_TABLE,
        cert.cert.display(),
        cert.key.display(),
        root.display(),
    );
    let mut s = peers::loopd(ctx, "loopd-tls", &config)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    s.wait_tcp(addr)?;
    Ok((s, addr))
}

/// Runs `cmd` with `input` on its stdin (closed after it), killed if it
/// takes longer than `limit`.
fn run_bounded(mut cmd: Command, input: &[u8], limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits early closes the pipe: not an error here.
        let _ = stdin.write_all(&input);
    });
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn s_client(addr: SocketAddr, extra: &[&str], input: &[u8]) -> Result<Output> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()])
        .args(extra);
    run_bounded(cmd, input, CHECK_TIMEOUT)
}

/// What an OpenSSL client and a server agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// `TLSv1.3`.
    pub protocol: String,
    /// `TLS_AES_256_GCM_SHA384`.
    pub suite: String,
    /// The key-exchange group, `X25519`.
    pub group: String,
    /// The server's signature type, `ECDSA`.
    pub signature: String,
}

impl fmt::Display for Negotiated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}, key exchange {}, {} signature",
            self.protocol, self.suite, self.group, self.signature
        )
    }
}

/// Asks `openssl s_client -brief` what `addr` negotiates.
pub fn negotiated(addr: SocketAddr) -> Result<Negotiated> {
    let out = s_client(addr, &["-brief"], b"")?;
    parse_brief(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Parses what `openssl s_client -brief` printed.
pub fn parse_brief(text: &str) -> Result<Negotiated> {
    let field = |name: &str| -> Result<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .filter(|v| !v.is_empty())
            .with_context(|| format!("openssl s_client -brief printed no `{name}`:\n{text}"))
    };
    Ok(Negotiated {
        protocol: field("Protocol version:")?,
        suite: field("Ciphersuite:")?,
        group: field("Server Temp Key:")?,
        signature: field("Signature type:")?,
    })
}

/// Sends `request` (raw bytes: one or more requests, the last one ending
/// the connection) over one TLS connection and parses `count` responses.
pub fn fetch(addr: SocketAddr, request: &[u8], count: usize) -> Result<Vec<Response>> {
    // -quiet: only the server's data on stdout; it also waits for the
    // server to close rather than stopping at the end of stdin.
    let out = s_client(addr, &["-quiet"], request)?;
    let mut rest: &[u8] = &out.stdout;
    let mut buf = Vec::new();
    (0..count)
        .map(|i| {
            http::read_response(&mut rest, &mut buf).with_context(|| {
                format!(
                    "response {i} of {count} over TLS from {addr}; openssl said: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })
        })
        .collect()
}

/// Whether `addr` resumes a session: one connection saves it, a second
/// offers it, and s_client reports `Reused`.
pub fn resumes(addr: SocketAddr, dir: &Path) -> Result<bool> {
    let sess = dir.join(format!("session-{}.pem", addr.port()));
    let sess = sess.to_str().context("a non-UTF-8 scratch path")?;
    let req = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    // The first connection reads until the server closes, so the session
    // tickets sent after the handshake are in the saved session.
    fetch_with(addr, &["-quiet", "-sess_out", sess], req)?;
    let out = fetch_with(addr, &["-ign_eof", "-sess_in", sess], req)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text
        .lines()
        .any(|l| l.starts_with("New,") || l.starts_with("Reused,"))
    {
        bail!("openssl s_client printed neither New nor Reused:\n{text}");
    }
    Ok(text.lines().any(|l| l.starts_with("Reused,")))
}

fn fetch_with(addr: SocketAddr, extra: &[&str], req: &[u8]) -> Result<Output> {
    let out = s_client(addr, extra, req)?;
    if !out.status.success() {
        bail!(
            "openssl s_client {} failed ({}): {}",
            extra.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Checks one server over TLS: both files byte-exact 2 times each and the
/// page 16 times more, all on one connection (the last request closes
/// it); the page for an HTTP/1.0 request, as `s_time` sends it; a
/// resumed session. Returns what it negotiates.
pub fn verify(
    addr: SocketAddr,
    files: &BTreeMap<&'static str, Vec<u8>>,
    dir: &Path,
) -> Result<Negotiated> {
    let mut paths = vec![SMALL, LARGE, SMALL, LARGE];
    paths.extend([SMALL; 16]);
    let mut req = String::new();
    for (i, p) in paths.iter().enumerate() {
        let close = if i + 1 == paths.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        req.push_str(&format!(
            "GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n{close}\r\n"
        ));
    }
    let check = |what: &str, path: &str, r: &[Response]| -> Result<()> {
        for (i, resp) in r.iter().enumerate() {
            if resp.status != 200 || resp.body != files[path] {
                bail!(
                    "{what}, response {i}: GET {path}: status {}, {} body bytes (want 200 and the file's {} bytes)",
                    resp.status,
                    resp.body.len(),
                    files[path].len()
                );
            }
        }
        Ok(())
    };
    let got = fetch(addr, req.as_bytes(), paths.len())?;
    for (path, resp) in paths.iter().zip(&got) {
        check("keep-alive over TLS", path, std::slice::from_ref(resp))?;
    }
    let got = fetch(addr, format!("GET {SMALL} HTTP/1.0\r\n\r\n").as_bytes(), 1)?;
    check("HTTP/1.0 over TLS", SMALL, &got)?;
    if !resumes(addr, dir)? {
        bail!("a session saved from one connection was not resumed on the next");
    }
    negotiated(addr)
}

/// One wrk run pinned to the client core, over HTTPS (`tls`) or plain
/// HTTP; with `close`, every request asks for its connection to be closed
/// (wrk reconnects).
pub fn wrk_url(
    tls: bool,
    addr: SocketAddr,
    path: &str,
    conns: usize,
    close: bool,
    secs: u64,
) -> Result<WrkOut> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &CLIENT_CORE.to_string(), "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "5s", "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let scheme = if tls { "https" } else { "http" };
    cmd.arg(format!("{scheme}://{addr}{path}"));
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

/// Full handshakes: [`STIME_CLIENTS`] `openssl s_time -new` processes
/// side by side on the client core for `secs` seconds, each fetching the
/// page over a new connection (never resumed) at a time. Returns the
/// connections made.
pub fn s_time(addr: SocketAddr, secs: u64) -> Result<f64> {
    let limit = Duration::from_secs(secs + 15);
    let children = (0..STIME_CLIENTS)
        .map(|_| {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &CLIENT_CORE.to_string(), "openssl", "s_time"])
                .args(["-connect", &addr.to_string(), "-new"])
                .args(["-time", &secs.to_string(), "-www", SMALL]);
            std::thread::spawn(move || run_bounded(cmd, b"", limit))
        })
        .collect::<Vec<_>>();
    let mut total = 0.0;
    for c in children {
        let out = c
            .join()
            .map_err(|_| anyhow::anyhow!("an s_time thread panicked"))??;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (n, per_conn) = parse_s_time(&text).with_context(|| {
            format!(
                "openssl s_time ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if !out.status.success() || n == 0.0 {
            bail!(
                "openssl s_time failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The page and its response head, not an error page.
        if per_conn < SMALL_SIZE as f64 {
            bail!("s_time read {per_conn} bytes per connection: less than the {SMALL_SIZE}-byte page:\n{text}");
        }
        total += n;
    }
    Ok(total)
}

/// Parses `openssl s_time`'s summary, `N connections in T real seconds,
/// B bytes read per connection`: (N, B).
pub fn parse_s_time(text: &str) -> Result<(f64, f64)> {
    let line = text
        .lines()
        .find(|l| l.contains("real seconds"))
        .with_context(|| format!("openssl s_time printed no summary:\n{text}"))?;
    let n: f64 = line
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("s_time: bad summary {line:?}"))?;
    let per_conn: f64 = line
        .split(", ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("s_time: bad summary {line:?}"))?;
    Ok((n, per_conn))
}

/// One load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// wrk, keep-alive.
    KeepAlive(&'static str),
    /// wrk, `Connection: close` (resumed sessions).
    Resumed,
    /// `openssl s_time -new`.
    Full,
}

/// Runs the whole HTTPS benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "https".into(),
        ..Bench::default()
    };
    let root = ctx.work.join("www-https");
    let files = http::make_site(&root)?;
    let tls = ctx.work.join("tls");
    let cert = make_cert(&tls)?;
    // (name, server, address, over TLS). The plain-HTTP servers run the
    // keep-alive rows only: the difference is what TLS costs a request.
    // The smoke leaves them out (the HTTP benchmark's smoke covers them).
    let plain = !ctx.smoke;
    let mut servers = vec![];
    bench.skipped = http::handler_built(ctx, "http");
    if bench.skipped.is_none() {
        let (s, a) = start_loopd_tls(ctx, &root, &cert)?;
        servers.push(("loopd".to_string(), s, a, true));
        if plain {
            let (s, a) = http::start_loopd_http(ctx, &root, http::Tuning::Defaults)?;
            servers.push(("loopd-plain".to_string(), s, a, false));
        }
    }
    let (s, a) = start_nginx_tls(ctx, &root, &cert)?;
    servers.push(("nginx".to_string(), s, a, true));
    if plain {
        let (s, a) = http::start_nginx(ctx, &root)?;
        servers.push(("nginx-plain".to_string(), s, a, false));
    }
    let mut agreed: Option<(String, Negotiated)> = None;
    for (name, _, addr, tls_on) in &servers {
        if !tls_on {
            http::verify(*addr, &files).with_context(|| format!("{name} failed the HTTP check"))?;
            println!("https: {name} on {addr} (plain HTTP) passed the correctness check");
            continue;
        }
        let n = verify(*addr, &files, &tls)
            .with_context(|| format!("{name} failed the HTTPS check"))?;
        println!("https: {name} on {addr} passed the correctness check; negotiated {n}");
        match &agreed {
            None => agreed = Some((name.clone(), n)),
            Some((first, m)) if *m != n => bail!(
                "{name} negotiates {n} but {first} negotiates {m}: the comparison would not be like for like"
            ),
            Some(_) => {}
        }
    }
    if let Some((_, n)) = &agreed {
        bench.notes.push(format!(
            "negotiated by every server with an OpenSSL client (`openssl s_client`, the library wrk and s_time use): {n}; the certificate: {CERT_KIND}; every server resumed a saved session (`s_client -sess_in`: Reused)"
        ));
    }
    let secs = ctx.run.as_secs().max(1);
    if !ctx.warmup.is_zero() {
        for (name, _, addr, tls_on) in &servers {
            wrk_url(
                *tls_on,
                *addr,
                SMALL,
                CONNS,
                false,
                ctx.warmup.as_secs().max(1),
            )
            .with_context(|| format!("{name} warm-up"))?;
        }
    }
    let loads: &[(&str, Load)] = if ctx.smoke {
        &[
            ("612 B, keep-alive", Load::KeepAlive(SMALL)),
            ("full handshake per request", Load::Full),
        ]
    } else {
        &[
            ("612 B, keep-alive", Load::KeepAlive(SMALL)),
            ("16 KiB, keep-alive", Load::KeepAlive(LARGE)),
            ("resumed handshake per request", Load::Resumed),
            ("full handshake per request", Load::Full),
        ]
    };
    for &(label, load) in loads {
        let (conns, size, handshake) = match load {
            Load::KeepAlive(p) => (CONNS, if p == SMALL { SMALL_SIZE } else { LARGE_SIZE }, 0.0),
            Load::Resumed => (CONNS, SMALL_SIZE, 1.0),
            Load::Full => (STIME_CLIENTS, SMALL_SIZE, 2.0),
        };
        let mut case = Case {
            label: format!("{label}, {conns} conns"),
            params: [
                ("conns".into(), conns as f64),
                ("size".into(), size as f64),
                // 0: none (keep-alive), 1: resumed, 2: full.
                ("handshake".into(), handshake),
            ]
            .into(),
            peers: Vec::new(),
        };
        for round in 0..ctx.rounds {
            for (name, server, addr, tls_on) in servers.iter_mut() {
                if !*tls_on && !matches!(load, Load::KeepAlive(_)) {
                    continue;
                }
                let mut probe = CpuProbe::new(server);
                probe.mark(true)?;
                let (ops, lat) = match load {
                    Load::KeepAlive(path) => {
                        let w = checked(
                            wrk_url(*tls_on, *addr, path, CONNS, false, secs),
                            name,
                            &case,
                            round,
                            &mut bench.notes,
                        )?;
                        (w.requests, w.p50_us.zip(w.p99_us))
                    }
                    Load::Resumed => {
                        let w = checked(
                            wrk_url(true, *addr, SMALL, CONNS, true, secs),
                            name,
                            &case,
                            round,
                            &mut bench.notes,
                        )?;
                        (w.requests, w.p50_us.zip(w.p99_us))
                    }
                    Load::Full => (
                        s_time(*addr, secs)
                            .with_context(|| format!("https {name} {}", case.label))?,
                        None,
                    ),
                };
                probe.mark(false)?;
                let (cpu, wall) = probe.result(ctx.tck);
                let mut m = BTreeMap::new();
                m.insert("ops_per_s".into(), ops / wall);
                m.insert("cpu_us_per_op".into(), cpu * 1e6 / ops);
                m.insert("busy".into(), cpu / wall);
                if let Some((p50, p99)) = lat {
                    m.insert("p50_us".into(), p50);
                    m.insert("p99_us".into(), p99);
                }
                println!(
                    "https {:>40} round {}/{} {:>6}: {:>8.0} op/s  {:>7.2} µs cpu/op  busy {:>3.0}%",
                    case.label,
                    round + 1,
                    ctx.rounds,
                    name,
                    m["ops_per_s"],
                    m["cpu_us_per_op"],
                    m["busy"] * 100.0
                );
                case.push(name, m);
            }
        }
        bench.cases.push(case);
    }
    for (_, server, _, _) in servers.iter_mut() {
        server.check_alive()?;
        server.stop();
    }
    Ok(bench)
}

/// A wrk run that must have had only 2xx answers; socket errors are noted.
fn checked(
    w: Result<WrkOut>,
    name: &str,
    case: &Case,
    round: usize,
    notes: &mut Vec<String>,
) -> Result<WrkOut> {
    let w = w.with_context(|| format!("https {name} {}", case.label))?;
    if w.non_2xx > 0.0 {
        bail!(
            "https {name} {}: {} responses were not 2xx/3xx",
            case.label,
            w.non_2xx
        );
    }
    if w.socket_errors > 0.0 {
        notes.push(format!(
            "{name}, {}, round {}: wrk counted {} socket errors",
            case.label,
            round + 1,
            w.socket_errors
        ));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_time_summary() {
        let text = "Collecting connection statistics for 2 seconds\n\n809 connections in 0.57s; 1419.30 connections/user sec, bytes read 683605\n809 connections in 3 real seconds, 845 bytes read per connection\n";
        assert_eq!(parse_s_time(text).unwrap(), (809.0, 845.0));
        assert!(parse_s_time("ERROR\n").is_err());
    }

    #[test]
    fn brief_summary() {
        let text = "Can't use SSL_get_servername\ndepth=0 CN = localhost\nverify error:num=18:self-signed certificate\nCONNECTION ESTABLISHED\nProtocol version: TLSv1.3\nCiphersuite: TLS_AES_256_GCM_SHA384\nPeer certificate: CN = localhost\nHash used: SHA256\nSignature type: ECDSA\nVerification error: self-signed certificate\nServer Temp Key: X25519, 253 bits\nDONE\n";
        let n = parse_brief(text).unwrap();
        assert_eq!(
            n,
            Negotiated {
                protocol: "TLSv1.3".into(),
                suite: "TLS_AES_256_GCM_SHA384".into(),
                group: "X25519".into(),
                signature: "ECDSA".into(),
            }
        );
        // A failed handshake prints none of it.
        assert!(parse_brief(
            "40F7D0A1B57F0000:error:0A000126:SSL routines::unexpected eof while reading\n"
        )
        .is_err());
    }

    #[test]
    fn nginx_listener_made_ssl() {
        let cert = Cert {
            cert: "/c/cert.pem".into(),
            key: "/c/key.pem".into(),
        };
        let conf = nginx_tls_config(Path::new("/d"), Path::new("/www"), 4443, &cert).unwrap();
        assert!(conf.contains("listen 127.0.0.1:4443 ssl backlog=4096;"));
        assert!(conf.contains("ssl_certificate /c/cert.pem;"));
        assert!(conf.contains("ssl_certificate_key /c/key.pem;"));
        assert!(conf.contains("ssl_protocols TLSv1.3;"));
        assert!(!conf.contains("listen 127.0.0.1:4443 backlog"));
    }
}
