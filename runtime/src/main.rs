//! The `loopd` command: run a config, check one, or start a handler project.

mod scaffold;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a config file (the same as `loopd <config>`).
    Run {
        /// The config file.
        config: PathBuf,
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();

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
        Some(Command::Run { config }) => run(config),
        None => match cli.config {
            Some(config) => run(config),
            None => {
                eprintln!("loopd: no config file given\n\nUsage: loopd <CONFIG>\n       loopd check <CONFIG>\n       loopd new-handler <NAME> [--c]\n\nTry `loopd --help`, or `loopd examples/loopd.toml`.");
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
    let known = ["check", "run", "new-handler", "help"].contains(&first.as_str());
    if known || args.len() < 2 || first.starts_with('-') || std::path::Path::new(first).exists() {
        return None;
    }
    let close = ["check", "run", "new-handler"]
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

fn run(config: PathBuf) -> Result<(), loopd::Error> {
    let mut rt = Runtime::builder()
        .config_file(&config)
        .handle_signals(true)
        .build()?;
    log::info!(
        "loopd {} ready: {} listeners from {}",
        loopd::VERSION,
        rt.listeners().len(),
        config.display()
    );
    rt.run()?;
    Ok(())
}

fn check(config: PathBuf) -> Result<(), loopd::Error> {
    let handlers = Runtime::builder().config_file(&config).check()?;
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
