//! Benchmark 2, HTTP: loopd's http handler against nginx (Debian's
//! nginx-light, one worker) serving the same files, loaded by `wrk -t1`
//! pinned to the client core.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::peers::{self, write_file};
use crate::results::{Bench, Case};
use crate::server::{free_port, CpuProbe, Server, CLIENT_CORE, SERVER_CORE};
use crate::Ctx;

/// The small file: as large as nginx's own welcome page.
pub const SMALL: &str = "/index.html";
/// The 16 KiB file.
pub const LARGE: &str = "/16k.bin";
/// The small file's size in bytes.
pub const SMALL_SIZE: usize = 612;
/// The large file's size in bytes.
pub const LARGE_SIZE: usize = 16 * 1024;
/// Requests per write in the pipelined runs.
pub const PIPELINE_DEPTH: usize = 16;

/// Writes the served files into `dir`: a 612-byte HTML page and 16 KiB of
/// pseudo-random bytes. Returns them for checking responses.
pub fn make_site(dir: &Path) -> Result<BTreeMap<&'static str, Vec<u8>>> {
    std::fs::create_dir_all(dir)?;
    let head = "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome</title>\n<style>\nhtml { color-scheme: light dark; }\nbody { width: 35em; margin: 0 auto; font-family: Tahoma, Verdana, Arial, sans-serif; }\n</style>\n</head>\n<body>\n<h1>It works</h1>\n<p>The benchmark page: the same size as nginx's welcome page.</p>\n<!-- ";
    let tail = " -->\n</body>\n</html>\n";
    let mut page = head.to_string();
    while page.len() + tail.len() < SMALL_SIZE {
        page.push('.');
    }
    page.push_str(tail);
    assert_eq!(page.len(), SMALL_SIZE);
    let mut large = vec![0u8; LARGE_SIZE];
    let mut x: u32 = 0x9e37_79b9;
    for b in &mut large {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(dir.join("index.html"), &page)?;
    std::fs::write(dir.join("16k.bin"), &large)?;
    Ok([(SMALL, page.into_bytes()), (LARGE, large)].into())
}

/// An nginx config serving `root`, tuned as a fast static file server,
/// with `workers` worker processes; with more than one,
/// each gets its own SO_REUSEPORT listening socket (`listen ...
/// reuseport`), as loopd's workers do.
pub fn nginx_config_workers(dir: &Path, root: &Path, port: u16, workers: usize) -> String {
    let d = dir.display();
    let reuseport = if workers > 1 { " reuseport" } else { "" };
    format!(
        "# nginx as a fast static file server: {workers} worker(s), no access log.
worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{
    worker_connections 20000;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    types {{
        text/html html;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096{reuseport};
        root {root};
        location / {{ }}
    }}
}}
",
        root = root.display()
    )
}

/// Starts nginx on `root`.
pub fn start_nginx(ctx: &Ctx, root: &Path) -> Result<(Server, SocketAddr)> {
    start_nginx_on(ctx, root, "nginx", 1, &SERVER_CORE.to_string())
}

/// Starts nginx `name` on `root` with `workers` worker processes, pinned
/// to `cores` (a `taskset -c` list); its files go to a directory `name`
/// in the scratch directory.
pub fn start_nginx_on(
    ctx: &Ctx,
    root: &Path,
    name: &str,
    workers: usize,
    cores: &str,
) -> Result<(Server, SocketAddr)> {
    start_nginx_with(ctx, name, cores, |dir, port| {
        Ok(nginx_config_workers(dir, root, port, workers))
    })
}

/// Starts nginx `name` pinned to `cores` on the config `config(dir,
/// port)` makes (`dir` is its directory in the scratch directory, `port`
/// the free port it must listen on); a config that cannot be made fails
/// the start.
pub fn start_nginx_with(
    ctx: &Ctx,
    name: &str,
    cores: &str,
    config: impl FnOnce(&Path, u16) -> Result<String>,
) -> Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let dir = ctx.work.join(name);
    std::fs::create_dir_all(&dir)?;
    let conf = write_file(&dir, "nginx.conf", &config(&dir, port)?)?;
    let nginx = which("nginx")?;
    let mut s = Server::spawn_on(
        cores,
        name,
        Path::new(&nginx),
        &[
            "-p".into(),
            dir.display().to_string(),
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            dir.join("nginx-error.log").display().to_string(),
        ],
        &[],
        &ctx.work.join(format!("{name}.log")),
    )?
    .with_children();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    s.wait_tcp(addr)?;
    Ok((s, addr))
}

/// The full path of a program on PATH.
pub fn which(program: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        bail!("{program} is not installed");
    }
    Ok(path)
}

/// Whether a handler is part of this build, and its plugin was built.
pub fn handler_built(ctx: &Ctx, name: &str) -> Option<String> {
    let krate = ctx.root.join("handlers").join(name).join("Cargo.toml");
    let so = ctx
        .bin
        .join(format!("libloopd_{}.so", name.replace('-', "_")));
    if !krate.exists() {
        Some(format!(
            "handler not built yet: handlers/{name} is not in this tree (its branch is not merged)"
        ))
    } else if !so.exists() {
        Some(format!(
            "handler not built yet: {} is missing",
            so.display()
        ))
    } else {
        None
    }
}

/// loopd running the http handler on `root` with its shipped defaults
/// (`Tuning::Defaults`: only the access log is off, as nginx's is), or
/// tuned as nginx is (`Tuning::Tuned`: files kept open for 60 s, as
/// `open_file_cache_valid 60s`).
pub fn start_loopd_http(ctx: &Ctx, root: &Path, tuning: Tuning) -> Result<(Server, SocketAddr)> {
    let name = match tuning {
        Tuning::Defaults => "loopd-http",
        Tuning::Tuned => "loopd-http-tuned",
    };
    start_loopd_http_from(ctx, &ctx.bin, name, root, tuning)
}

/// How loopd's http handler is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// `root` and `access_log = false` only: every tuning key at its
    /// shipped default (the benchmark's `loopd` row).
    Defaults,
    /// Also `open_file_cache_ms = 60000`, as nginx's `open_file_cache`
    /// (the `loopd-tuned` row).
    Tuned,
}

/// [`start_loopd_http`] from the build in `bin` (a build without
/// `open_file_cache_ms` refuses `Tuning::Tuned`).
pub fn start_loopd_http_from(
    ctx: &Ctx,
    bin: &Path,
    name: &str,
    root: &Path,
    tuning: Tuning,
) -> Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let config = format!(
        "{}[[handler]]\nname = \"http\"\nplugin = \"http\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[handler.config]\nroot = \"{}\"\naccess_log = false\n{}",
        peers::RUNTIME_TABLE,
        root.display(),
        match tuning {
            Tuning::Defaults => "",
            Tuning::Tuned => "open_file_cache_ms = 60000\n",
        }
    );
    let mut s = peers::loopd_from(ctx, bin, name, &config, &[])?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    s.wait_tcp(addr)?;
    Ok((s, addr))
}

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (per Content-Length).
    pub body: Vec<u8>,
}

/// Reads one response with a Content-Length body from `buf` + `s`
/// (bytes of `buf` past the response stay in it for the next one).
pub fn read_response(s: &mut impl Read, buf: &mut Vec<u8>) -> Result<Response> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed inside a response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse())
        .context("response without Content-Length")??;
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed inside a response body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends `paths` as GET requests in one write (pipelined) and reads the
/// responses in order.
pub fn get_pipelined(addr: SocketAddr, paths: &[&str]) -> Result<Vec<Response>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = String::new();
    for p in paths {
        req.push_str(&format!("GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
    }
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    paths
        .iter()
        .map(|_| read_response(&mut s, &mut buf))
        .collect()
}

/// `n` GETs of `path`, one at a time over one keep-alive connection, each
/// response checked byte-exact against `want`. Returns the connection's
/// stream once done (the caller closes it when its count is taken).
pub fn get_keepalive(addr: SocketAddr, path: &str, want: &[u8], n: u64) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = Vec::new();
    for i in 0..n {
        s.write_all(req.as_bytes())?;
        let r = read_response(&mut s, &mut buf).with_context(|| format!("request {i}"))?;
        if r.status != 200 || r.body != want {
            bail!(
                "GET {path} (request {i} on one connection): status {}, {} body bytes",
                r.status,
                r.body.len()
            );
        }
    }
    Ok(s)
}

/// Checks that a server returns both files byte-exact, one by one and
/// pipelined 16 deep, over one keep-alive connection each.
pub fn verify(addr: SocketAddr, files: &BTreeMap<&'static str, Vec<u8>>) -> Result<()> {
    for (path, want) in files {
        let r = get_pipelined(addr, &[path, path])?;
        for resp in &r {
            if resp.status != 200 || &resp.body != want {
                bail!(
                    "GET {path}: status {}, {} body bytes (want 200 and the file's {} bytes)",
                    resp.status,
                    resp.body.len(),
                    want.len()
                );
            }
        }
    }
    let paths = vec![SMALL; PIPELINE_DEPTH];
    let r = get_pipelined(addr, &paths)?;
    if r.len() != PIPELINE_DEPTH
        || r.iter()
            .any(|resp| resp.status != 200 || resp.body != files[SMALL])
    {
        bail!("{PIPELINE_DEPTH} pipelined GETs did not all come back 200 with the file");
    }
    Ok(())
}

/// What wrk reported.
#[derive(Debug, Default)]
pub struct WrkOut {
    /// Requests completed.
    pub requests: f64,
    /// Seconds the run took.
    pub secs: f64,
    /// wrk's own requests per second.
    pub rps: f64,
    /// Latency percentiles (µs) from `--latency`.
    pub p50_us: Option<f64>,
    /// See `p50_us`.
    pub p99_us: Option<f64>,
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: f64,
    /// Socket errors (connect, read, write, timeout), summed.
    pub socket_errors: f64,
}

fn time_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let (num, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| text.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        "m" => v * 60e6,
        _ => return None,
    })
}

/// Parses wrk's summary.
pub fn parse_wrk(text: &str) -> Result<WrkOut> {
    let mut out = WrkOut::default();
    let mut in_dist = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some((n, rest)) = t.split_once(" requests in ") {
            out.requests = n.trim().parse().context("wrk request count")?;
            let dur = rest.split(',').next().unwrap_or("");
            out.secs = time_us(dur).context("wrk duration")? / 1e6;
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            out.rps = v.trim().parse().context("wrk Requests/sec")?;
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            out.non_2xx = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            out.socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum();
        } else if t.starts_with("Latency Distribution") {
            in_dist = true;
        } else if in_dist {
            match t.split_once('%') {
                Some(("50", v)) => out.p50_us = time_us(v).filter(|t| *t > 0.0),
                Some(("99", v)) => out.p99_us = time_us(v).filter(|t| *t > 0.0),
                Some(_) => {}
                None => in_dist = false,
            }
        }
    }
    if out.requests == 0.0 || out.secs == 0.0 {
        bail!("wrk completed no request:\n{text}");
    }
    Ok(out)
}

/// One wrk run pinned to the client core.
pub fn wrk(
    ctx: &Ctx,
    addr: SocketAddr,
    path: &str,
    conns: usize,
    pipelined: bool,
    secs: u64,
) -> Result<WrkOut> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &CLIENT_CORE.to_string(), "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "5s", "--latency"]);
    let url = format!("http://{addr}{}", if pipelined { "/" } else { path });
    if pipelined {
        cmd.arg("-s")
            .arg(ctx.root.join("benches/peers/pipeline.lua"))
            .arg(&url)
            .arg("--")
            .arg(PIPELINE_DEPTH.to_string())
            .arg(path);
    } else {
        cmd.arg(&url);
    }
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

/// Runs the whole HTTP benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "http".into(),
        ..Bench::default()
    };
    let root = ctx.work.join("www");
    let files = make_site(&root)?;
    let mut servers = vec![];
    // Without loopd's handler the peer still runs: its figures stay useful
    // and the harness stays exercised.
    bench.skipped = handler_built(ctx, "http");
    if bench.skipped.is_none() {
        let (s, a) = start_loopd_http(ctx, &root, Tuning::Defaults)?;
        servers.push(("loopd".to_string(), s, a));
        let (s, a) = start_loopd_http(ctx, &root, Tuning::Tuned)?;
        servers.push(("loopd-tuned".to_string(), s, a));
        if let Some((s, a)) = peers::before("http", |dir| {
            start_loopd_http_from(ctx, dir, "loopd-before-http", &root, Tuning::Defaults)
        }) {
            servers.push(("loopd-before".to_string(), s, a));
        }
    }
    let (s, a) = start_nginx(ctx, &root)?;
    servers.push(("nginx".to_string(), s, a));
    for (name, _, addr) in &servers {
        verify(*addr, &files).with_context(|| format!("{name} failed the HTTP check"))?;
        println!("http: {name} on {addr} passed the correctness check");
    }
    let secs = ctx.run.as_secs().max(1);
    if !ctx.warmup.is_zero() {
        for (name, _, addr) in &servers {
            wrk(ctx, *addr, SMALL, 64, false, ctx.warmup.as_secs().max(1))
                .with_context(|| format!("{name} warm-up"))?;
        }
    }
    let conns: &[usize] = if ctx.smoke { &[64] } else { &[64, 256] };
    let shapes = [
        ("612 B", SMALL, false),
        ("16 KiB", LARGE, false),
        ("612 B pipelined ×16", SMALL, true),
    ];
    for (label, path, pipelined) in shapes {
        for &c in conns {
            let mut case = Case {
                label: format!("{label}, {c} conns"),
                params: [
                    ("conns".into(), c as f64),
                    (
                        "pipelined".into(),
                        if pipelined {
                            PIPELINE_DEPTH as f64
                        } else {
                            1.0
                        },
                    ),
                    (
                        "size".into(),
                        if path == SMALL {
                            SMALL_SIZE
                        } else {
                            LARGE_SIZE
                        } as f64,
                    ),
                ]
                .into(),
                peers: Vec::new(),
            };
            for round in 0..ctx.rounds {
                for (name, server, addr) in servers.iter_mut() {
                    let mut probe = CpuProbe::new(server);
                    probe.mark(true)?;
                    let w = wrk(ctx, *addr, path, c, pipelined, secs)
                        .with_context(|| format!("http {name} {}", case.label))?;
                    probe.mark(false)?;
                    let (cpu, wall) = probe.result(ctx.tck);
                    if w.non_2xx > 0.0 {
                        bail!(
                            "http {name} {}: {} responses were not 2xx/3xx",
                            case.label,
                            w.non_2xx
                        );
                    }
                    if w.socket_errors > 0.0 {
                        bench.notes.push(format!(
                            "{name}, {}, round {}: wrk counted {} socket errors",
                            case.label,
                            round + 1,
                            w.socket_errors
                        ));
                    }
                    let mut m = BTreeMap::new();
                    m.insert("ops_per_s".into(), w.requests / w.secs);
                    m.insert("cpu_us_per_op".into(), cpu * 1e6 / w.requests);
                    m.insert("busy".into(), cpu / wall);
                    if let (Some(p50), Some(p99)) = (w.p50_us, w.p99_us) {
                        m.insert("p50_us".into(), p50);
                        m.insert("p99_us".into(), p99);
                    }
                    println!(
                        "http {:>26} round {}/{} {:>6}: {:>9.0} req/s  {:>6.2} µs cpu/req  busy {:>3.0}%",
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
    }
    for (_, server, _) in servers.iter_mut() {
        server.check_alive()?;
        server.stop();
    }
    Ok(bench)
}
