//! Helpers for the http handler's tests: a served tree in a temp dir (with a
//! sentinel file just outside the root), a loopd running the http handler on
//! it, and a small HTTP/1.1 response reader for raw-socket tests.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{self, Loopd, TempDir, TIMEOUT};

/// Whether the http handler under test opens files the POSIX way (a walk
/// with openat(O_NOFOLLOW)): the suite was built with `--features
/// loopd-http/portable`, or the platform is not Linux.
pub const PORTABLE: bool = loopd_http::PORTABLE;

/// What the handler's start-up line says about how it opens files, with
/// the features this suite was built with (`None`: openat2, or the POSIX
/// walk where the kernel refuses openat2).
pub fn expected_backend() -> Option<&'static str> {
    PORTABLE.then_some("files opened with openat O_NOFOLLOW, name by name")
}

/// Checks that the handler opens files as this suite was built to test
/// (with `--features loopd-http/portable`: the POSIX walk), and reports it
/// as the figure `<test>.backend`.
pub fn assert_backend(loopd: &Loopd, test: &str) {
    assert!(
        loopd.wait_for_log("files opened with", TIMEOUT),
        "{}",
        loopd.logs()
    );
    if let Some(backend) = expected_backend() {
        assert!(loopd.logs().contains(backend), "{}", loopd.logs());
    }
    let logs = loopd.logs();
    let walk = logs.contains("files opened with openat O_NOFOLLOW");
    common::figure(
        &format!("{test}.backend"),
        if walk { "posix-walk" } else { "openat2" },
    );
}

/// Builds the plugins (`common::build_plugins`), then the http plugin again
/// with the features this suite was built with: the nested `cargo build`
/// of `build_plugins` knows nothing of `--features loopd-http/portable`.
pub fn http_plugin() {
    common::build_plugins();
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if !loopd_http::PORTABLE_FEATURE {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(common::root()).args([
            "build",
            "--quiet",
            "-p",
            "loopd-http",
            "--lib",
            "--features",
            "portable",
        ]);
        if common::plugin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the http plugin");
        assert!(status.success(), "building the portable http plugin failed");
    });
}

/// What the sentinel file outside the root holds; it must never appear in
/// a response.
pub const SENTINEL: &str = "SENTINEL-outside-root-5d0e7c1b";

/// A served tree: `<tmp>/root` (a copy of examples/www plus test files) and
/// `<tmp>/secret.txt` (the sentinel) next to it.
pub struct Site {
    pub dir: TempDir,
    pub root: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        http_plugin();
        let dir = TempDir::new("http-site");
        let root = dir.join("root");
        copy_dir(&common::root().join("examples/www"), &root);
        std::fs::write(dir.join("secret.txt"), SENTINEL).unwrap();
        std::fs::write(root.join("hello.txt"), "hello, world\n").unwrap();
        std::fs::write(root.join("data.bin"), common::pattern(100_000, 3)).unwrap();
        std::fs::write(root.join("empty.txt"), "").unwrap();
        std::fs::write(root.join("noext"), "no extension").unwrap();
        std::fs::write(root.join("page.xyz"), "custom type").unwrap();
        std::fs::create_dir_all(root.join("noindex")).unwrap();
        std::fs::write(root.join("noindex/file.txt"), "in noindex").unwrap();
        std::fs::write(root.join(".hidden"), "hidden file").unwrap();
        std::fs::create_dir_all(root.join(".well-known")).unwrap();
        std::fs::write(root.join(".well-known/security.txt"), "Contact: x").unwrap();
        std::fs::create_dir_all(root.join("a b")).unwrap();
        std::fs::write(root.join("a b/c d.txt"), "spaces").unwrap();
        Site { dir, root }
    }

    /// A file under the root.
    pub fn file(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.root.join(rel)).unwrap()
    }

    /// Starts loopd with the http handler on this root; `extra` is appended
    /// to `[handler.config]`.
    pub fn serve(&self, extra: &str) -> Loopd {
        Loopd::start(&config(&self.root, extra))
    }
}

/// A config with one http instance on an ephemeral port.
pub fn config(root: &Path, extra: &str) -> String {
    http_plugin();
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "http"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"
{extra}
"#,
        root.display()
    )
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The value of a header (case-insensitive name); panics if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = found.next();
        assert!(found.next().is_none(), "{name} repeated in {self:?}");
        first
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `r`. `head_request`: the request was HEAD (no
/// body whatever the headers say). Panics on malformed responses.
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
    }
    let status_line = line.trim_end_matches("\r\n").to_string();
    assert!(line.ends_with("\r\n"), "status line without CRLF: {line:?}");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap().to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "head cut short",
            ));
        }
        assert!(line.ends_with("\r\n"), "header line without CRLF: {line:?}");
        let line = line.trim_end_matches("\r\n");
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("bad header line {line:?}"));
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        version,
        headers,
        body: Vec::new(),
    };
    if !head_request && status != 304 && status != 204 {
        let len: usize = resp
            .header("Content-Length")
            .unwrap_or_else(|| panic!("no Content-Length in {resp:?}"))
            .parse()
            .unwrap();
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        resp.body = body;
    }
    Ok(resp)
}

/// A client connection with a buffered reader.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = common::tcp(addr);
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Sends a GET (HTTP/1.1, Host set) and reads the response.
    pub fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read(false)
    }

    pub fn read(&mut self, head_request: bool) -> Resp {
        read_response(&mut self.reader, head_request).expect("reading a response")
    }

    /// True if the server closes the connection (EOF or reset) within
    /// TIMEOUT with no further bytes; panics if bytes arrive.
    pub fn closed(&mut self) -> bool {
        let rest = read_rest(&mut self.reader);
        assert!(
            rest.is_empty(),
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&rest)
        );
        true
    }
}

/// Reads until EOF (or a reset, or TIMEOUT) and returns what came.
pub fn read_rest<R: Read>(r: &mut R) -> Vec<u8> {
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        assert!(
            Instant::now() < deadline,
            "connection not closed within {TIMEOUT:?}"
        );
        match r.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "reading until the server closes: {e} (got {} bytes)",
                out.len()
            ),
        }
    }
}

/// One request on a fresh connection: sends `raw`, reads one response.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut c = Client::connect(addr);
    c.send(raw);
    let head = raw.starts_with(b"HEAD ");
    c.read(head)
}

/// Sends `raw` on a fresh connection, shuts down the sending side, and
/// returns everything the server sends until it closes.
pub fn exchange_all(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = common::tcp(addr);
    s.write_all(raw).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    read_rest(&mut s)
}

/// Parses every response in `bytes` (none of them to HEAD).
pub fn parse_all(bytes: &[u8]) -> Vec<Resp> {
    let mut r = BufReader::new(bytes);
    let mut out = Vec::new();
    while !r.fill_buf().unwrap().is_empty() {
        out.push(read_response(&mut r, false).unwrap());
    }
    out
}

/// The access log lines loopd wrote so far.
pub fn access_lines(loopd: &Loopd) -> Vec<String> {
    loopd
        .logs()
        .lines()
        .filter(|l| l.contains("loopd::access"))
        .map(str::to_string)
        .collect()
}

/// Waits until an access log line contains `needle`.
pub fn wait_access(loopd: &Loopd, needle: &str) -> bool {
    loopd.wait_for_log(needle, TIMEOUT)
}

/// Sleeps a little (for tests that let a server-side timeout pass; never
/// used to assert on timing).
pub fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}
