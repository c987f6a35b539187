//! The `loopd` command: run a config, check one, or start a handler project.

mod logsink;
mod scaffold;
mod status_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loopd::control::Request;
use loopd::Runtime;
use loopd_handler_api::abi::{LOOPD_ABI_MAJOR, LOOPD_ABI_MINOR};

/// loopd: an event-loop runtime that serves sockets with handler plugins.
///
/// Logging goes to stderr at level `info`; set RUST_LOG (e.g. RUST_LOG=debug,
/// or RUST_LOG=loopd::handler::echo=trace) to change it.
#[derive(Debug, Parser)]
#[command(name = "loopd", args_conflicts_with_subcommands = true)]
struct Cli {
    /// The config file to run, e.g. examples/loopd.toml.
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Which running loopd `reload` and `upgrade` ask, and how long they wait.
#[derive(Debug, clap::Args)]
struct Ask {
    /// The config file whose `pid_file` names the process.
    config: Option<PathBuf>,
    /// The process id instead.
    #[arg(long)]
    pid: Option<i32>,
    /// How long to wait for the outcome, in seconds; 0 only sends the
    /// signal (SIGHUP to reload, SIGUSR2 to upgrade) and exits 0 at once
    /// (the outcome is then only in loopd's log).
    #[arg(
        long,
        value_name = "SECS",
        default_value = "30",
        allow_hyphen_values = true
    )]
    wait: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a config file (the same as `loopd <config>`).
    Run {
        /// The config file.
        config: PathBuf,
    },
    /// Tell a running loopd to re-read its config file and apply it (live
    /// reload), and wait for its answer: exits 0 once it reloaded, 1 with
    /// its error if the reload failed (the running config is then
    /// unchanged) or if it did not answer. A process that takes no reload
    /// requests (an older loopd) is sent SIGHUP. The process is the one
    /// whose id `--pid` gives, or the one written to the config's
    /// `[runtime] pid_file`.
    Reload(Ask),
    /// Start a new loopd binary in place of a running one, with its
    /// listening sockets (SIGUSR2): no connection is refused; the old one
    /// finishes its connections and exits. Waits for the outcome: exits 0
    /// once the new process took over, 1 with the reason if it could not
    /// be started or exited first (the old one then keeps serving). A
    /// process that takes no requests is sent SIGUSR2. The process is found
    /// as for `reload`.
    Upgrade(Ask),
    /// Print a short summary of a running loopd: its handlers' connections,
    /// bytes and frames, from a status handler's listener (its /metrics).
    Status {
        /// The status listener, e.g. http://127.0.0.1:9090 (or HOST:PORT).
        url: String,
    },
    /// Validate a config: parse it, load every plugin and create every
    /// handler instance, without listening. Exits non-zero with the error.
    Check {
        /// The config file.
        config: PathBuf,
    },
    /// Create a ready-to-build handler project: a Rust crate (default) or a
    /// C file with a Makefile, each with a working example hook, a README
    /// and a config that runs it.
    NewHandler {
        /// The handler's name: a lower-case letter, then lower-case letters,
        /// digits, `-` or `_`. The plugin becomes libloopd_NAME.so.
        name: String,
        /// Write a C handler (NAME.c, loopd.h, Makefile) instead of a Rust crate.
        #[arg(long)]
        c: bool,
        /// The project directory to create (default: ./NAME). It must not exist.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Rust: depend on the loopd crates of this source checkout (default:
        /// the checkout this loopd was built from, if it still exists).
        #[arg(long, value_name = "CHECKOUT")]
        loopd_src: Option<PathBuf>,
        /// Rust: depend on loopd-handler-api (and loopd) from crates.io by
        /// version, even when a checkout is at hand.
        #[arg(long)]
        registry: bool,
        /// The port the generated loopd.toml listens on (127.0.0.1:PORT).
        #[arg(long, value_name = "PORT", default_value_t = scaffold::DEFAULT_PORT)]
        port: u16,
    },
}

fn version() -> &'static str {
    // A static rather than a leaked String: it stays reachable, so the
    // leak check of a valgrind run (LOOPD_VALGRIND=1) reports nothing.
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (handler ABI {LOOPD_ABI_MAJOR}.{LOOPD_ABI_MINOR})",
            loopd::VERSION
        )
    })
}

fn main() -> ExitCode {
    if let Some(msg) = mistyped_command() {
        eprintln!("{msg}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from_cmd(version());
    logsink::install();
    let code = run_command(cli);
    // Everything logged reaches stderr and the access log before exit.
    logsink::finish();
    code
}

fn run_command(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Some(Command::NewHandler {
            name,
            c,
            dir,
            loopd_src,
            registry,
            port,
        }) => {
            let request = scaffold::Request {
                name,
                language: if c {
                    scaffold::Language::C
                } else {
                    scaffold::Language::Rust
                },
                dir,
                loopd_src,
                registry,
                port,
            };
            return match scaffold::new_handler(&request) {
                Ok((_, report)) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loopd new-handler: error: {e}");
                    ExitCode::from(match e {
                        scaffold::ScaffoldError::Usage(_) => 2,
                        scaffold::ScaffoldError::Failed(_) => 1,
                    })
                }
            };
        }
        Some(Command::Check { config }) => check(config),
        Some(Command::Status { url }) => {
            return match status_cli::run(&url) {
                Ok(summary) => {
                    print!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loopd status: error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Reload(a)) => return ask("reload", Request::Reload, a),
        Some(Command::Upgrade(a)) => return ask("upgrade", Request::Upgrade, a),
        Some(Command::Run { config }) => run(config),
        None => match cli.config {
            Some(config) => run(config),
            None => {
                eprintln!("loopd: no config file given\n\nUsage: loopd <CONFIG>\n       loopd check <CONFIG>\n       loopd reload [CONFIG] [--pid PID]\n       loopd upgrade [CONFIG] [--pid PID]\n       loopd status <URL>\n       loopd new-handler <NAME> [--c] [--port N]\n\nTry `loopd --help`, or `loopd examples/loopd.toml`.");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the logger when it shows errors; never lost to a RUST_LOG filter.
            if log::log_enabled!(target: "loopd", log::Level::Error) {
                log::error!(target: "loopd", "{e}");
            } else {
                eprintln!("loopd: error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `loopd chek CONFIG` would otherwise read as config `chek` followed by a
/// stray argument; say what was probably meant.
fn mistyped_command() -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first = args.first()?;
    let known = [
        "check",
        "run",
        "reload",
        "upgrade",
        "status",
        "new-handler",
        "help",
    ]
    .contains(&first.as_str());
    if known || args.len() < 2 || first.starts_with('-') || std::path::Path::new(first).exists() {
        return None;
    }
    let close = ["check", "run", "reload", "upgrade", "status", "new-handler"]
        .into_iter()
        .find(|cmd| edit_distance(first, cmd) <= 2)?;
    Some(format!(
        "error: unknown command `{first}`; did you mean `loopd {close} {}`?\n\nUsage: loopd <CONFIG>\n       loopd check <CONFIG>",
        args[1..].join(" ")
    ))
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Reads the config to run or check: one that defines no handler is
/// refused, since loopd would start and serve nothing. (The library takes
/// one: a program embedding loopd adds its handlers in code; `loopd
/// reload` and `loopd upgrade` read only its pid_file.)
fn serving_config(config: &std::path::Path) -> Result<loopd::Config, loopd::Error> {
    let parsed = loopd::Config::from_file(config)?;
    if parsed.handlers.is_empty() {
        return Err(loopd::Error::Config(format!(
            "{}: defines no [[handler]]: loopd would serve nothing",
            config.display()
        )));
    }
    Ok(parsed)
}

fn run(config: PathBuf) -> Result<(), loopd::Error> {
    let mut parsed = serving_config(&config)?;
    logsink::configure(&parsed)?;
    upgrade_keeps_auto_workers(&mut parsed);
    let builder = Runtime::builder()
        .config(parsed.clone())
        .handle_signals(true)
        .inherit_listeners(true)
        .notify_service_manager(true);
    let workers = parsed.runtime.workers;
    let (served, listeners) = if workers > 1 {
        let w = builder.build_workers()?;
        let n = w.listeners().len();
        (Served::Workers(w), n)
    } else {
        let rt = builder.build()?;
        let n = rt.listeners().len();
        (Served::One(Box::new(rt)), n)
    };
    let _pid_file = match &parsed.runtime.pid_file {
        Some(path) => Some(PidFile::write(path)?),
        None => None,
    };
    log::info!(
        "loopd {} ready: {listeners} listeners from {}{}",
        loopd::VERSION,
        config.display(),
        if workers > 1 {
            format!(", {workers} workers")
        } else {
            String::new()
        }
    );
    // A binary upgrade: this process has the old one's sockets and is
    // ready; the old one may now stop accepting and drain.
    if let Some(old) = std::env::var_os("LOOPD_UPGRADE_FROM") {
        std::env::remove_var("LOOPD_UPGRADE_FROM");
        if let Some(pid) = old
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .filter(|&p| p > 0)
        {
            log::info!("upgrade: taking over from process {pid}");
            // It hears it first, so the `loopd upgrade` waiting there is
            // answered before it shuts down (an older loopd has no control
            // socket: the signal alone).
            let told = (0..2).any(|_| {
                matches!(
                    loopd::control::request(
                        pid,
                        loopd::control::Request::TakenOver,
                        std::time::Duration::from_secs(1),
                    ),
                    Ok(loopd::control::Answer::Done(_)) | Err(loopd::control::Unasked::NoSocket)
                )
            });
            if !told {
                log::warn!(
                    "upgrade: process {pid} did not hear that this one took over: a `loopd upgrade` waiting there may say it failed"
                );
            }
            // SAFETY: kill(2) with a positive pid; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    match served {
        Served::One(mut rt) => rt.run()?,
        Served::Workers(w) => w.run()?,
    }
    Ok(())
}

/// A binary upgrade from several workers must run as many (each handed
/// over its own `SO_REUSEPORT` sockets). With `workers = "auto"` that is
/// the number the old process ran, even if the CPUs this one may use
/// changed since (a container's CPU set, `taskset`): a restart changes it.
fn upgrade_keeps_auto_workers(parsed: &mut loopd::Config) {
    if !parsed.runtime.workers_auto || std::env::var_os("LOOPD_UPGRADE_FROM").is_none() {
        return;
    }
    let Some(old) = std::env::var("LOOPD_UPGRADE_WORKERS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|&n| (2..=1024).contains(&n))
    else {
        return;
    };
    if old != parsed.runtime.workers {
        log::info!(
            "workers = \"auto\" is {} here, but the loopd this one takes over from ran {old} workers: running {old} (a binary upgrade keeps the number; a restart changes it)",
            parsed.runtime.workers
        );
        parsed.runtime.workers = old;
    }
}

/// One loop on the main thread, or `[runtime] workers` of them.
enum Served {
    One(Box<Runtime>),
    Workers(loopd::Workers),
}

/// The `pid_file` while loopd runs: written once listening, removed at exit
/// (if it still holds this process's id).
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> Result<PidFile, loopd::Error> {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
            loopd::Error::System {
                what: format!("writing the pid_file {}", path.display()),
                source,
            }
        })?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// `loopd reload` and `loopd upgrade`: the request to the process, over
/// its control socket (`loopd::control`), and its answer, for at most
/// `wait` seconds; the signal where the process takes no requests.
fn ask(command: &str, request: loopd::control::Request, args: Ask) -> ExitCode {
    use loopd::control::{Answer, Unasked};
    let Ask { config, pid, wait } = args;
    let fail = |e: String| {
        eprintln!("loopd {command}: error: {e}");
        ExitCode::FAILURE
    };
    let wait = match wait
        .parse::<f64>()
        .map(std::time::Duration::try_from_secs_f64)
    {
        Ok(Ok(w)) => w,
        _ => {
            return fail(format!(
                "--wait {wait}: give a number of seconds, 0 or more"
            ))
        }
    };
    let pid = match find_running(config, pid) {
        Ok(pid) => pid,
        Err(e) => return fail(e),
    };
    let (signal, name, what) = match request {
        Request::Upgrade => (
            libc::SIGUSR2,
            "SIGUSR2",
            "to start the new binary and hand over",
        ),
        _ => (libc::SIGHUP, "SIGHUP", "to reload its config"),
    };
    let signal_only = |why: &str| match send_signal(pid, signal) {
        Ok(()) => {
            if !why.is_empty() {
                eprintln!("loopd {command}: {why}");
            }
            println!("asked loopd (process {pid}) {what} ({name}); its log says how it went");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    if wait.is_zero() {
        return signal_only("");
    }
    match loopd::control::request(pid, request, wait) {
        Ok(Answer::Done(line)) => {
            println!("loopd (process {pid}) {line}");
            ExitCode::SUCCESS
        }
        Ok(Answer::Failed(line)) => fail(format!("loopd (process {pid}): {line}")),
        Ok(Answer::Closed) => fail(format!(
            "loopd (process {pid}) closed the request without an answer (it is shutting down?)"
        )),
        Ok(Answer::Silent) => fail(format!(
            "asked loopd (process {pid}) {what}, but it did not answer within {} s; its log says how it went",
            wait.as_secs_f64()
        )),
        Err(Unasked::NoSocket) => signal_only(&format!(
            "process {pid} takes no requests (a loopd older than this command, one in another network or pid namespace, or not loopd), so the outcome cannot be told here"
        )),
        Err(Unasked::Impostor(other)) => signal_only(&format!(
            "the control socket of process {pid} is held by process {other}, which was not asked; so the outcome cannot be told here"
        )),
        Err(Unasked::Io(e)) => fail(format!("asking process {pid}: {e}")),
    }
}

/// The process `--pid` or the config's pid_file names.
fn find_running(config: Option<PathBuf>, pid: Option<i32>) -> Result<i32, String> {
    let pid = match (pid, config) {
        (Some(pid), _) => pid,
        (None, Some(config)) => {
            let c = loopd::Config::from_file(&config).map_err(|e| e.to_string())?;
            let path = c.runtime.pid_file.ok_or_else(|| {
                format!(
                    "{} sets no [runtime] pid_file: give the process with --pid",
                    config.display()
                )
            })?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "cannot read the pid_file {}: {e} (is loopd running?)",
                    path.display()
                )
            })?;
            let pid = text.trim().parse().map_err(|_| {
                format!(
                    "the pid_file {} holds {:?}, not a process id",
                    path.display(),
                    text.trim()
                )
            })?;
            check_pid_file(&path, pid)?;
            pid
        }
        (None, None) => return Err("give the config file (with a pid_file) or --pid".to_string()),
    };
    if pid <= 0 {
        return Err(format!("{pid} is not a process id"));
    }
    Ok(pid)
}

fn send_signal(pid: i32, signal: i32) -> Result<(), String> {
    // SAFETY: kill(2) with a positive pid and a signal number; no memory involved.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(format!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Whether the process a pid_file names can be the loopd that wrote it: a
/// loopd killed (SIGKILL, a crash) leaves its pid_file, and its process id
/// may have gone to another process since, which must not get the signal.
/// It must exist, and (where `/proc` tells) have started before the file
/// was written: loopd writes it once it listens.
fn check_pid_file(path: &std::path::Path, pid: i32) -> Result<(), String> {
    let stale = |why: String| {
        format!(
            "the pid_file {} names process {pid}, {why}: loopd is not running, or did not remove the file when it stopped (it was killed?)",
            path.display()
        )
    };
    if pid <= 0 {
        return Ok(());
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it checks the process.
    if unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return Err(stale("which does not exist".to_string()));
    }
    let written = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if let (Some(file_age), Some(process_age)) = (written, process_age(pid)) {
        // Both are known to about 10 ms; the slack covers a clock step.
        if process_age + std::time::Duration::from_secs(2) < file_age {
            return Err(stale(format!(
                "which started {:.1} s ago, after the file was written ({:.1} s ago)",
                process_age.as_secs_f64(),
                file_age.as_secs_f64()
            )));
        }
    }
    Ok(())
}

/// How long ago process `pid` started, from `/proc` (Linux); `None` where
/// that cannot be read.
fn process_age(pid: i32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, which may contain
    // anything): starttime, in clock ticks since boot, is field 22.
    let start: f64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tck <= 0 {
        return None;
    }
    let age = uptime - start / tck as f64;
    (age >= 0.0).then(|| std::time::Duration::from_secs_f64(age))
}

fn check(config: PathBuf) -> Result<(), loopd::Error> {
    let parsed = serving_config(&config)?;
    logsink::check(&parsed)?;
    let handlers = Runtime::builder().config(parsed).check()?;
    println!("{}: ok", config.display());
    for h in handlers {
        println!("  {h}");
    }
    Ok(())
}

trait ParseWithVersion: Sized {
    fn parse_from_cmd(version: &'static str) -> Self;
}

impl ParseWithVersion for Cli {
    fn parse_from_cmd(version: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().version(version).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}
