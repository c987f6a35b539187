//! The `loopd` command line: --version, --help, usage errors, `check` on the
//! shipped config, `run` as a synonym of `loopd <config>`, and RUST_LOG.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;
use loopd_handler_api::abi;

/// Runs loopd to completion in `cwd` with `RUST_LOG` set to `rust_log`
/// (`None`: unset); kills it if it runs longer than [`TIMEOUT`].
fn run_in(cwd: &Path, args: &[&str], rust_log: Option<&str>) -> Output {
    run_loopd_in(Some(cwd), args, rust_log)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopd serving in the background, spawned here rather than through
/// [`Loopd`] so the arguments and RUST_LOG are exactly what a user types.
struct Server {
    child: Child,
    lines: Receiver<String>,
    /// stderr lines received so far.
    seen: Vec<String>,
}

impl Server {
    fn spawn(args: &[&Path], rust_log: Option<&str>) -> Server {
        Server::spawn_args(
            &args.iter().map(|a| a.to_str().unwrap()).collect::<Vec<_>>(),
            rust_log,
        )
    }

    fn spawn_args(args: &[&str], rust_log: Option<&str>) -> Server {
        build_plugins();
        let mut cmd = Command::new(loopd_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match rust_log {
            Some(v) => cmd.env("RUST_LOG", v),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd.spawn().expect("starting loopd");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a stderr line contains `needle`; false on timeout or EOF.
    fn wait_for(&mut self, needle: &str) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.seen.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return false,
            }
        }
    }

    /// Waits until something accepts connections on the Unix socket `path`,
    /// without relying on any log line.
    fn wait_for_socket(&mut self, path: &Path) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(s) = UnixStream::connect(path) {
                drop(s);
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("loopd exited ({status}):\n{}", self.drain());
            }
            assert!(
                Instant::now() < deadline,
                "loopd did not listen on {} in time:\n{}",
                path.display(),
                self.drain()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first listener URL of `handler` with `scheme`, from the log.
    fn listener(&self, handler: &str, scheme: &str) -> String {
        let marker = format!(" {handler} listening on {scheme}");
        self.seen
            .iter()
            .find_map(|l| l.split_once(&marker).map(|(_, rest)| rest.to_string()))
            .unwrap_or_else(|| panic!("no `{marker}` line in:\n{}", self.seen.join("\n")))
    }

    /// SIGTERM, then waits (bounded) for the exit. Returns it with all of stderr.
    fn terminate(&mut self) -> (ExitStatus, String) {
        // SAFETY: kill with the pid of our own child and a valid signal.
        let r = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(r, 0, "kill failed");
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("loopd ignored SIGTERM:\n{}", self.drain());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        (status, self.drain())
    }

    /// All of stderr so far, joined: up to EOF (bounded) if loopd has
    /// exited, else what has already arrived.
    fn drain(&mut self) -> String {
        if self.child.try_wait().unwrap().is_some() {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) => self.seen.push(line),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => panic!("stderr stayed open after exit"),
                }
            }
        } else {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
        }
        self.seen.join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with echo on a TCP port and on a Unix socket in `dir`.
fn echo_config(dir: &TempDir) -> (PathBuf, PathBuf) {
    let sock = dir.join("echo.sock");
    let config = write_config(
        dir,
        &format!(
            r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{}"]
"#,
            sock.display()
        ),
    );
    (config, sock)
}

#[test]
fn version_names_loopd_and_the_handler_abi() {
    let expected = format!(
        "loopd {} (handler ABI {}.{})\n",
        env!("CARGO_PKG_VERSION"),
        abi::LOOPD_ABI_MAJOR,
        abi::LOOPD_ABI_MINOR
    );
    for flag in ["--version", "-V"] {
        let out = run_loopd(&[flag]);
        assert!(out.status.success(), "{flag}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected, "{flag}");
        assert_eq!(text(&out.stderr), "", "{flag}");
    }
}

#[test]
fn help_mentions_run_check_and_rust_log() {
    let out = run_loopd(&["--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for needle in ["Usage: loopd [CONFIG]", "check", "run", "RUST_LOG"] {
        assert!(help.contains(needle), "`{needle}` not in --help:\n{help}");
    }
    let out = run_loopd(&["check", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("without listening"), "{help}");
}

#[test]
fn no_arguments_is_a_usage_error() {
    let out = run_loopd(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    let err = text(&out.stderr);
    for needle in [
        "no config file given",
        "Usage: loopd <CONFIG>",
        "loopd check <CONFIG>",
        "loopd --help",
    ] {
        assert!(err.contains(needle), "`{needle}` not in:\n{err}");
    }

    let out = run_loopd(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("loopd check <CONFIG>"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn mistyped_subcommand_is_explained() {
    let out = run_in(&root(), &["chek", "examples/loopd.toml"], Some("info"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        !err.contains("subcommand 'examples/loopd.toml'"),
        "calls the config a subcommand:\n{err}"
    );
    assert!(err.contains("check"), "does not suggest `check`:\n{err}");
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = run_in(&root(), &["check", "examples/loopd.toml"], Some("info"));
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v = env!("CARGO_PKG_VERSION");
    let echo = plugin_dir().join("libloopd_echo.so");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "examples/loopd.toml: ok", "{stdout}");
    for expected in [
        format!("  echo: echo {v} ({})", echo.display()),
        format!("  echo-framed: echo {v} ({})", echo.display()),
    ] {
        assert!(
            lines.contains(&expected.as_str()),
            "no `{expected}` in:\n{stdout}"
        );
    }
    // One line per [[handler]] of the shipped config, each naming its library.
    let shipped = std::fs::read_to_string(root().join("examples/loopd.toml")).unwrap();
    let handlers = shipped
        .lines()
        .filter(|l| l.trim() == "[[handler]]")
        .count();
    assert_eq!(lines.len(), 1 + handlers, "{stdout}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains(&format!(" {v} (")) && l.ends_with(".so)")),
        "{stdout}"
    );
    // check never listens: nothing about listeners or readiness.
    let err = text(&out.stderr);
    assert!(
        !err.contains("listening on") && !err.contains(" ready: "),
        "{err}"
    );
}

#[test]
fn run_subcommand_works_like_a_bare_config() {
    for run in [true, false] {
        let dir = TempDir::new("cli-run");
        let (config, sock) = echo_config(&dir);
        let run_word = Path::new("run");
        let args: Vec<&Path> = if run {
            vec![run_word, &config]
        } else {
            vec![&config]
        };
        let mut server = Server::spawn(&args, Some("info"));
        assert!(
            server.wait_for(" ready: "),
            "{args:?}: not ready:\n{}",
            server.drain()
        );
        let tcp_url = server.listener("echo", "tcp://");
        assert_eq!(
            server.listener("echo", "unix://"),
            sock.display().to_string()
        );
        assert!(
            server
                .seen
                .iter()
                .any(|l| l.contains(&format!("ready: 2 listeners from {}", config.display()))),
            "{}",
            server.seen.join("\n")
        );

        let data = pattern(50_000, run as u8);
        let got = echo_roundtrip(tcp(tcp_url.parse().unwrap()), &data);
        assert!(got == data, "{args:?}: tcp echo differs");
        let got = echo_roundtrip(unix(&sock), &data);
        assert!(got == data, "{args:?}: unix echo differs");

        let (status, log) = server.terminate();
        assert!(status.success(), "{args:?}: exit {status}:\n{log}");
        assert!(log.contains("shutdown complete"), "{args:?}:\n{log}");
        assert!(!sock.exists(), "{args:?}: the socket file was left behind");
    }
}

#[test]
fn rust_log_warn_hides_info_lines() {
    let dir = TempDir::new("cli-warn");
    let (config, sock) = echo_config(&dir);
    let mut server = Server::spawn(&[&config], Some("warn"));
    server.wait_for_socket(&sock);
    let data = pattern(10_000, 1);
    assert!(echo_roundtrip(unix(&sock), &data) == data);
    let (status, log) = server.terminate();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        !log.contains("listening on") && !log.contains(" ready: ") && !log.contains(" INFO "),
        "info lines with RUST_LOG=warn:\n{log}"
    );
}

#[test]
fn default_log_level_is_info_and_rust_log_debug_adds_debug() {
    for (rust_log, debug) in [(None, false), (Some("debug"), true)] {
        let dir = TempDir::new("cli-log");
        let (config, sock) = echo_config(&dir);
        let mut server = Server::spawn(&[&config], rust_log);
        server.wait_for_socket(&sock);
        assert!(
            server.wait_for(" ready: "),
            "RUST_LOG={rust_log:?}:\n{}",
            server.drain()
        );
        let (status, log) = server.terminate();
        assert!(status.success(), "exit {status}:\n{log}");
        assert!(
            log.contains(&format!("echo listening on unix://{}", sock.display()))
                && log.contains("echo listening on tcp://127.0.0.1:")
                && log.contains(" INFO "),
            "RUST_LOG={rust_log:?}:\n{log}"
        );
        assert_eq!(
            log.contains(" DEBUG "),
            debug,
            "RUST_LOG={rust_log:?}: debug lines present: {}\n{log}",
            !debug
        );
    }
}

#[test]

fn fatal_errors_are_printed_whatever_rust_log_says() {
    let dir = TempDir::new("cli-filter");
    let config = write_config(&dir, "[runtime]\nmax_conections = 5\n");
    for filter in ["loopd::handler::echo=trace", "loopd::listener=debug"] {
        let out = run_in(
            dir.path(),
            &["check", config.to_str().unwrap()],
            Some(filter),
        );
        assert_eq!(out.status.code(), Some(1), "RUST_LOG={filter}");
        let err = text(&out.stderr);
        assert!(
            err.contains("unknown field `max_conections`"),
            "RUST_LOG={filter}: the error was not printed (stderr: {err:?})"
        );
    }
}

#[test]
fn a_config_without_handlers_is_refused_by_run_and_check_but_not_by_reload() {
    let dir = TempDir::new("cli-no-handler");
    let pid_file = dir.join("loopd.pid");
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let runtime_only = write_config(
        &dir,
        &format!(
            "[runtime]\nshutdown_timeout_ms = 2000\npid_file = \"{}\"\n",
            pid_file.display()
        ),
    );
    for config in [&empty, &runtime_only] {
        let cfg = config.to_str().unwrap();
        for args in [vec!["check", cfg], vec![cfg], vec!["run", cfg]] {
            let out = run_in(dir.path(), &args, Some("info"));
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}:\n{err}");
            assert!(
                err.contains(&format!(
                    "{cfg}: defines no [[handler]]: loopd would serve nothing"
                )),
                "{args:?}:\n{err}"
            );
            assert!(
                !err.contains(" ready: ") && !text(&out.stdout).contains(": ok"),
                "{args:?}:\n{err}"
            );
        }
    }
    assert!(!pid_file.exists());
    // `loopd reload` and `loopd upgrade` read only the pid_file: the file
    // gets as far as that.
    for command in ["reload", "upgrade"] {
        let out = run_in(
            dir.path(),
            &[command, runtime_only.to_str().unwrap()],
            Some("info"),
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}:\n{err}");
        assert!(
            err.contains(&format!("cannot read the pid_file {}", pid_file.display()))
                && !err.contains("defines no"),
            "{command}:\n{err}"
        );
    }
}
