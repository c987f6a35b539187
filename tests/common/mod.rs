//! Shared helpers for loopd's integration tests: build the plugins, start the
//! real `loopd` binary on a config, find its listeners, talk to them.
//!
//! Every blocking call has a timeout so a broken build fails instead of
//! hanging the suite.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The loopd binary cargo built for this test run.
pub fn loopd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loopd"))
}

/// Where loopd looks for plugins by name: next to the binary.
pub fn plugin_dir() -> PathBuf {
    loopd_bin().parent().unwrap().to_path_buf()
}

/// Builds every workspace member once per test binary: `cargo test` does not
/// build the handler plugins (cdylibs), and a leftover from an earlier build
/// must not count.
pub fn build_plugins() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root())
            .args(["build", "--quiet", "--workspace", "--lib"]);
        if plugin_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the plugins");
        assert!(status.success(), "building the plugins failed");
        for name in ["echo", "probe"] {
            let so = plugin_dir().join(format!("libloopd_{name}.so"));
            assert!(so.exists(), "{} was not built", so.display());
        }
    });
}

/// Whether connects to `addr` are refused within 5 s. A listener this
/// process closed can still take a connect for a moment after: a process
/// another test is spawning holds a copy of every fd between its fork and
/// its exec (close-on-exec closes them only at the exec).
pub fn refuses_soon(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ if Instant::now() >= deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles a C plugin with the strict flags the ABI promises to pass.
pub fn compile_c_plugin(src: &Path, out: &Path) {
    let include = root().join("handler-api/include");
    let output = Command::new("gcc")
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-shared",
            "-fPIC",
            "-O1",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .expect("gcc must be installed to build C plugins (apt-get install gcc)");
    assert!(
        output.status.success(),
        "gcc failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Collected stderr lines of a running loopd, with a condition to wait on.
#[derive(Default)]
struct LogSink {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A loopd process started on a config; killed when dropped.
pub struct Loopd {
    child: Child,
    log: Arc<LogSink>,
    /// handler name -> listener URLs, as loopd logged them.
    pub listeners: HashMap<String, Vec<String>>,
    pub dir: TempDir,
    /// Substrings of the error-level lines this test expects loopd to log.
    expected_errors: Mutex<Vec<String>>,
    /// Under `LOOPD_VALGRIND=1`: valgrind's log file, checked when dropped.
    valgrind_log: Option<PathBuf>,
}

impl Loopd {
    /// Writes `config` to a temp file and starts loopd on it with `RUST_LOG=debug`.
    /// `{dir}` in the config is replaced by a fresh temp directory (for unix sockets).
    pub fn start(config: &str) -> Loopd {
        Loopd::start_with(config, "debug", |_| {})
    }

    /// As [`Loopd::start`], with a log filter and a hook to adjust the command.
    pub fn start_with(config: &str, rust_log: &str, adjust: impl FnOnce(&mut Command)) -> Loopd {
        build_plugins();
        let dir = TempDir::new("loopd");
        let config = config.replace("{dir}", dir.path().to_str().unwrap());
        let path = dir.join("loopd.toml");
        std::fs::write(&path, config).unwrap();
        let valgrind_log = valgrind().then(|| dir.join("valgrind.log"));
        let mut cmd = match &valgrind_log {
            Some(log) => valgrind_command(log),
            None => Command::new(loopd_bin()),
        };
        cmd.arg(&path)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("starting loopd");
        let log = Arc::new(LogSink::default());
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("LOOPD_TEST_VERBOSE").is_some() {
                    eprintln!("loopd| {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
            sink.lines.lock().unwrap().push("<stderr closed>".into());
            sink.changed.notify_all();
        });
        let mut l = Loopd {
            child,
            log,
            listeners: HashMap::new(),
            dir,
            expected_errors: Mutex::new(Vec::new()),
            valgrind_log,
        };
        // valgrind starts loopd 20 to 50 times slower.
        let ready_timeout = if l.valgrind_log.is_some() {
            4 * TIMEOUT
        } else {
            TIMEOUT
        };
        if !l.wait_for_log(" ready: ", ready_timeout) {
            panic!("loopd did not become ready:\n{}", l.logs());
        }
        for line in l.log.lines.lock().unwrap().iter() {
            if let Some((head, url)) = line.split_once(" listening on ") {
                let name = head.rsplit(' ').next().unwrap().to_string();
                l.listeners.entry(name).or_default().push(url.to_string());
            }
        }
        l
    }

    /// The first TCP listener of a handler.
    pub fn tcp(&self, handler: &str) -> SocketAddr {
        self.url(handler, "tcp://").parse().unwrap()
    }

    /// The first Unix listener of a handler.
    pub fn unix(&self, handler: &str) -> PathBuf {
        PathBuf::from(self.url(handler, "unix://"))
    }

    /// The first UDP socket of a handler.
    pub fn udp(&self, handler: &str) -> SocketAddr {
        self.url(handler, "udp://").parse().unwrap()
    }

    fn url(&self, handler: &str, scheme: &str) -> String {
        let urls = self
            .listeners
            .get(handler)
            .unwrap_or_else(|| panic!("no listeners for {handler}: {:?}", self.listeners));
        urls.iter()
            .find_map(|u| u.strip_prefix(scheme))
            .unwrap_or_else(|| panic!("{handler} has no {scheme} listener: {urls:?}"))
            .to_string()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything loopd logged so far.
    pub fn logs(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_logs(needle, 1, timeout)
    }

    /// Waits until `count` log lines contain `needle`.
    pub fn wait_for_logs(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if lines.iter().filter(|l| l.contains(needle)).count() >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || lines.last().is_some_and(|l| l == "<stderr closed>") {
                return false;
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Sends a signal to the loopd process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own and a valid signal number.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill failed");
    }

    /// Waits for loopd to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines of stderr, so
                // logs() after wait_exit sees everything loopd wrote.
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_for_log("<stderr closed>", left);
                return status;
            }
            if Instant::now() >= deadline {
                panic!("loopd did not exit within {timeout:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit, without waiting for its stderr to
    /// close (a process it started may hold it, as after a binary upgrade).
    pub fn wait_exit_status(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("loopd did not exit within {timeout:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Declares that error-level lines containing `needle` are expected:
    /// when the test ends, every other error-level line loopd logged fails
    /// it (the way nginx's test suite checks its error log).
    pub fn expect_error(&self, needle: &str) {
        self.expected_errors
            .lock()
            .unwrap()
            .push(needle.to_string());
    }

    /// The error-level lines logged so far that no [`Loopd::expect_error`]
    /// covers.
    pub fn unexpected_errors(&self) -> Vec<String> {
        let expected = self.expected_errors.lock().unwrap();
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| is_error_line(l))
            .filter(|l| !expected.iter().any(|e| l.contains(e.as_str())))
            .cloned()
            .collect()
    }

    /// Fails the test if loopd logged an error-level line nobody expected.
    pub fn assert_no_unexpected_errors(&self) {
        let unexpected = self.unexpected_errors();
        assert!(
            unexpected.is_empty(),
            "loopd logged {} unexpected error line(s):\n{}\n\nfull log:\n{}",
            unexpected.len(),
            unexpected.join("\n"),
            self.logs()
        );
    }
}

/// The names of process `pid`'s threads (`/proc/PID/task/*/comm`), sorted.
pub fn thread_names(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// Whether a line of loopd's log is at error level (env_logger's
/// `[time ERROR target] message` format).
pub fn is_error_line(line: &str) -> bool {
    line.starts_with('[')
        && line
            .split_once(']')
            .is_some_and(|(head, _)| head.split_whitespace().nth(1) == Some("ERROR"))
}

impl Drop for Loopd {
    fn drop(&mut self) {
        if self.valgrind_log.is_some() {
            self.stop_under_valgrind();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        if let Some(log) = &self.valgrind_log {
            check_valgrind_log(log);
        }
        // Let the reader take what loopd wrote before it died, then check
        // its log: an error nobody expected fails the test that caused it.
        self.wait_for_log("<stderr closed>", Duration::from_secs(5));
        self.assert_no_unexpected_errors();
    }
}

/// Whether loopd runs under valgrind (`LOOPD_VALGRIND=1`): then
/// [`Loopd::start_with`] wraps it in [`valgrind_command`], and dropping the
/// [`Loopd`] stops it gracefully and fails the test if valgrind reported
/// any error (invalid reads or writes, uses of uninitialised memory,
/// definite leaks).
pub fn valgrind() -> bool {
    std::env::var_os("LOOPD_VALGRIND").is_some_and(|v| v == "1")
}

/// `valgrind ... loopd`, logging to `log`.
pub fn valgrind_command(log: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
        "--trace-children=no",
    ])
    .arg(format!("--log-file={}", log.display()))
    .arg(loopd_bin());
    cmd
}

impl Loopd {
    /// Under valgrind: SIGTERM and a bounded wait, so the leak check runs
    /// (a killed process is never checked for leaks).
    fn stop_under_valgrind(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill with a pid we own and a valid signal number.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + 2 * TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Fails the test if valgrind's log reports an error.
fn check_valgrind_log(log: &Path) {
    let text = std::fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("reading valgrind's log {}: {e}", log.display()));
    let errors = text
        .lines()
        .filter_map(|l| l.split_once("ERROR SUMMARY: "))
        .filter_map(|(_, rest)| rest.split_whitespace().next()?.parse::<u64>().ok())
        .max();
    match errors {
        Some(0) => {}
        Some(n) => panic!("valgrind reported {n} error(s) in loopd:\n{text}"),
        None => panic!("valgrind's log has no ERROR SUMMARY (did loopd exit?):\n{text}"),
    }
}

/// Whether this run is the soak tier (`LOOPD_SOAK=1`): tests then run their
/// full figures instead of the CI tier's smaller ones.
pub fn soak() -> bool {
    std::env::var_os("LOOPD_SOAK").is_some_and(|v| v == "1")
}

/// `ci` in the CI tier, `soak` in the soak tier.
pub fn tier<T>(ci: T, soak_value: T) -> T {
    if soak() {
        soak_value
    } else {
        ci
    }
}

/// Reports a test's figure as `key=value`: on stdout (see it with
/// `--nocapture`), and appended to the file `$LOOPD_FIGURES` names, if
/// any, which the soak command collects into docs/reliability.md.
pub fn figure(key: &str, value: impl std::fmt::Display) {
    let line = format!("{key}={value}");
    println!("{line}");
    if let Some(path) = std::env::var_os("LOOPD_FIGURES") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("opening $LOOPD_FIGURES");
        writeln!(f, "{line}").expect("writing $LOOPD_FIGURES");
    }
}

/// Runs loopd with `args` to completion (e.g. `check`) with `RUST_LOG=info`.
pub fn run_loopd(args: &[&str]) -> Output {
    run_loopd_in(None, args, Some("info"))
}

/// Runs loopd with `args` in `cwd` (default: inherited) with `RUST_LOG` set
/// to `rust_log` (`None`: unset). Kills it if it has not exited within
/// [`TIMEOUT`]: a bug must not leave a server running.
pub fn run_loopd_in(cwd: Option<&Path>, args: &[&str], rust_log: Option<&str>) -> Output {
    build_plugins();
    let mut cmd = Command::new(loopd_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    match rust_log {
        Some(v) => cmd.env("RUST_LOG", v),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut child = cmd.spawn().expect("starting loopd");
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "loopd {args:?} did not exit within {TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
pub fn locate(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |nl| nl + 1) + 1;
    (line, col)
}

/// Writes a config into `dir` and returns its path, for `run_loopd`.
pub fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.join("loopd.toml");
    std::fs::write(&path, text.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
    path
}

/// A TCP connection with read and write timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting to loopd");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A Unix-domain connection with read and write timeouts.
pub fn unix(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connecting to loopd");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// Deterministic bytes that make misordering or loss visible.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Sends `data` on one thread and reads the same number of bytes back on
/// this one (so a large echo cannot deadlock on full socket buffers).
pub fn echo_roundtrip<S>(stream: S, data: &[u8]) -> Vec<u8>
where
    S: Read + Write + Send + 'static + TryCloneStream,
{
    let mut writer = stream.try_clone_stream();
    let to_send = data.to_vec();
    let t = std::thread::spawn(move || writer.write_all(&to_send));
    let mut reader = stream;
    let mut got = vec![0u8; data.len()];
    reader.read_exact(&mut got).expect("reading the echo");
    t.join().unwrap().expect("writing to loopd");
    got
}

/// `try_clone` for both stream types.
pub trait TryCloneStream: Sized {
    fn try_clone_stream(&self) -> Self;
}

impl TryCloneStream for TcpStream {
    fn try_clone_stream(&self) -> Self {
        self.try_clone().unwrap()
    }
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> Self {
        self.try_clone().unwrap()
    }
}

/// A line-protocol client (for the probe handler).
pub struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> LineClient {
        let s = tcp(addr);
        LineClient {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// The next line, without its newline; panics on EOF or timeout.
    pub fn recv(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("reading a line from loopd");
        assert!(n > 0, "connection closed while waiting for a line");
        line.trim_end_matches('\n').to_string()
    }

    /// Sends a command and returns the reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.recv()
    }

    /// Reads until EOF and returns what came.
    pub fn read_to_eof(&mut self) -> String {
        let mut rest = String::new();
        self.reader
            .read_to_string(&mut rest)
            .expect("reading to EOF");
        rest
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }
}

/// A config with one probe instance on an ephemeral port.
pub fn probe_config(extra: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "probe"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
{extra}
"#
    )
}

/// Shrinks a socket's receive buffer (which also turns off its autotuning),
/// so a client that reads slowly or not at all backs up into the server.
pub fn small_receive_buffer(fd: &impl std::os::fd::AsRawFd, bytes: i32) {
    // SAFETY: a valid socket fd and a correctly sized option value.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt(SO_RCVBUF)");
}

/// Sets SO_LINGER {on, 0}: dropping the socket then sends a RST.
pub fn reset_on_drop(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt(SO_LINGER)");
}

/// Reads until EOF; a reset counts as EOF. Returns the bytes.
pub fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("expected loopd to close the connection, got {e}"),
        }
    }
}

/// The headless browser the page tests drive (Debian's `chromium`).
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "headless Chromium is needed for this test: apt-get install -y chromium (.ci/run does it)"
    );
}

/// Runs headless Chromium with `args` and a fresh profile, bounded in time
/// (its whole process group is killed if it hangs).
pub fn run_chromium(profile: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let child = cmd.spawn().expect("starting chromium");
    let pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + 2 * TIMEOUT;
        while Instant::now() < deadline {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill with the process group of a child we started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("waiting for chromium");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        !watchdog.join().unwrap(),
        "chromium {args:?} hung and was killed"
    );
    out
}
