//! loopd's benchmark runner: starts loopd and the servers people would
//! otherwise pick (tokio, C, nginx, redis), checks every one for correctness,
//! then times them side by side on pinned cores and writes the results
//! (JSON) and `docs/benchmarks.md` with its plots.
//!
//! ```text
//! cargo run --release -p loopd-bench -- all      # everything; regenerates docs/benchmarks.md
//! cargo run -p loopd-bench -- smoke              # every path, tiny loads, correctness only
//! cargo run --release -p loopd-bench -- echo     # one benchmark (echo|http|chat|idle|udp|startup|syscalls|workers|https)
//! cargo run -p loopd-bench -- report             # regenerate the docs from the results file
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod chat;
pub mod echo;
pub mod http;
pub mod https;
pub mod idle;
pub mod peers;
pub mod procfs;
pub mod report;
pub mod results;
pub mod server;
pub mod setup;
pub mod startup;
pub mod stats;
pub mod svg;
pub mod syscalls;
pub mod udp;
pub mod workers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use results::{Bench, Results};

/// Everything a benchmark needs to know about this run.
#[derive(Debug)]
pub struct Ctx {
    /// Smoke mode: every path, tiny loads, figures mean nothing.
    pub smoke: bool,
    /// Timed rounds per figure.
    pub rounds: usize,
    /// Length of one timed run.
    pub run: Duration,
    /// Warm-up per peer before the rounds.
    pub warmup: Duration,
    /// Where cargo put loopd, the plugins and the bench binaries.
    pub bin: PathBuf,
    /// Where the C peers are built.
    pub peers: PathBuf,
    /// Scratch directory for configs, logs and served files.
    pub work: PathBuf,
    /// The workspace root.
    pub root: PathBuf,
    /// Clock ticks per second of /proc CPU times.
    pub tck: u64,
}

/// The benchmarks, in run order.
pub const BENCHES: &[&str] = &[
    "echo", "http", "chat", "idle", "udp", "startup", "syscalls", "workers", "https",
];

const USAGE: &str = "usage: loopd-bench <all|smoke|report|echo|http|chat|chat-bridge|idle|udp|startup|syscalls|workers|https> [--rounds N] [--secs S] [--out FILE] [--merge FILE]

  all      every benchmark; writes benches/results/results.json and regenerates
           docs/benchmarks.md (run it with --release on a quiet machine)
  smoke    every benchmark path with tiny loads: correctness only (and one
           count: loopd's echo must stay under 3.5 syscalls per round trip);
           results and a rendered page go to target/bench-smoke/;
           --only NAME smokes one benchmark
  report   regenerate docs/benchmarks.md from benches/results/results.json
  NAME     one benchmark; results to target/bench-NAME.json; with --merge
           FILE, also into FILE (e.g. benches/results/results.json), in
           place of that benchmark's earlier figures, the others kept
  load-chat --target ADDR [--conns N] [--secs S] [--redis 1]
           only the chat load generator (N receivers, line protocol or redis)
  load-echo --target ADDR [--conns N] [--size B] [--secs S] [--ops N]
           only the echo load generator, against a server you started (for
           strace -c / callgrind runs); prints round trips and their rate
  load-udp --target ADDR --to PORT [--size B] [--secs S] [--burst N]
           only the UDP relay load generator: sends to the relay at ADDR and
           receives its copies on 127.0.0.1:PORT (the relay's broadcast_to),
           64 datagrams in flight, or bursts of N; prints datagrams relayed";

struct Args {
    command: String,
    target: Option<String>,
    conns: Option<usize>,
    size: Option<usize>,
    ops: Option<u64>,
    redis: bool,
    to: Option<u16>,
    burst: Option<u64>,
    rounds: Option<usize>,
    secs: Option<f64>,
    out: Option<PathBuf>,
    merge: Option<PathBuf>,
    only: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context(USAGE)?;
    let mut a = Args {
        command,
        target: None,
        conns: None,
        size: None,
        ops: None,
        redis: false,
        to: None,
        burst: None,
        rounds: None,
        secs: None,
        out: None,
        merge: None,
        only: None,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        match flag.as_str() {
            "--rounds" => a.rounds = Some(value.parse().context("--rounds")?),
            "--secs" => a.secs = Some(value.parse().context("--secs")?),
            "--out" => a.out = Some(value.into()),
            "--merge" => a.merge = Some(value.into()),
            "--only" => a.only = Some(value),
            "--conns" => a.conns = Some(value.parse().context("--conns")?),
            "--size" => a.size = Some(value.parse().context("--size")?),
            "--ops" => a.ops = Some(value.parse().context("--ops")?),
            "--target" => a.target = Some(value),
            "--redis" => a.redis = value == "1",
            "--to" => a.to = Some(value.parse().context("--to")?),
            "--burst" => a.burst = Some(value.parse().context("--burst")?),
            _ => bail!("unknown option {flag}\n\n{USAGE}"),
        }
    }
    Ok(a)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ has a parent")
        .to_path_buf()
}

/// The runner's command line (see the crate documentation).
///
/// # Errors
/// Bad arguments, a failed build or install, a server that fails its
/// correctness check, or any benchmark that cannot complete.
pub fn run_cli() -> Result<()> {
    let args = parse_args()?;
    let root = root();
    let results_path = root.join("benches/results/results.json");
    match args.command.as_str() {
        "load-echo" => return load_echo(&args),
        "load-chat" => return load_chat(&args),
        "load-udp" => return load_udp(&args),
        "report" => {
            let path = args.out.unwrap_or(results_path);
            let results = read_results(&path)?;
            return write_report(&root, &root.join("docs"), &results);
        }
        "all" | "smoke" => {}
        name if BENCHES.contains(&name) => {}
        // Not in `all`: run on its own.
        "chat-bridge" => {}
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
    let smoke = args.command == "smoke";
    let release = !cfg!(debug_assertions);
    if !release && !smoke {
        eprintln!("warning: a debug build times nothing useful; use `cargo run --release -p loopd-bench -- ...`");
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("runner has no directory")?
        .to_path_buf();
    let work = std::env::temp_dir().join(format!("loopd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let ctx = Ctx {
        smoke,
        rounds: args.rounds.unwrap_or(if smoke { 1 } else { 5 }),
        run: Duration::from_secs_f64(args.secs.unwrap_or(if smoke { 0.1 } else { 2.0 })),
        warmup: if smoke {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        },
        peers: bin.join("bench-peers"),
        bin,
        work,
        root: root.clone(),
        tck: procfs::clk_tck(),
    };

    setup::ensure_packages(&[
        ("nginx", "nginx-light"),
        ("redis-server", "redis-server"),
        ("wrk", "wrk"),
        ("strace", "strace"),
        ("valgrind", "valgrind"),
        ("openssl", "openssl"),
    ])?;
    setup::build_workspace(&root, release)?;
    setup::build_c_peers(&root, &ctx.peers)?;
    procfs::pin_self(server::CLIENT_CORE).context("pinning the runner to core 0")?;
    let nofile = procfs::raise_nofile().context("raising the open-file limit")?;
    println!(
        "open-file limit: {nofile}; scratch directory {}",
        ctx.work.display()
    );

    let mut results = Results::default();
    results.meta.mode = args.command.clone();
    results.meta.command = std::env::args().collect::<Vec<_>>().join(" ");
    results.meta.started = setup::now_utc();
    results.meta.commit = setup::commit(&root);
    results.meta.machine = setup::machine();
    results.meta.versions = setup::versions(&root, &ctx.bin);
    results.meta.flags = setup::flags(&root, release);
    results.meta.rounds = ctx.rounds;
    results.meta.run_secs = ctx.run.as_secs_f64();
    results.meta.warmup_secs = ctx.warmup.as_secs_f64();
    results.meta.load_before = procfs::loadavg();
    println!(
        "load average before: {:.2} {:.2} {:.2}",
        results.meta.load_before[0], results.meta.load_before[1], results.meta.load_before[2]
    );

    let which: Vec<&str> = match (args.command.as_str(), args.only.as_deref()) {
        ("smoke", Some(only)) if BENCHES.contains(&only) => vec![only],
        (_, Some(only)) => bail!(
            "--only takes a benchmark of `smoke`, not `{only}` of `{}`\n\n{USAGE}",
            args.command
        ),
        ("all" | "smoke", None) => BENCHES.to_vec(),
        (name, None) => vec![name],
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| match args.command.as_str() {
            "all" => results_path.clone(),
            "smoke" => root.join("target/bench-smoke/results.json"),
            name => root.join(format!("target/bench-{name}.json")),
        });
    for name in which {
        println!("\n=== {name} ===");
        let bench = run_bench(&ctx, name).with_context(|| format!("benchmark `{name}`"))?;
        if let Some(why) = &bench.skipped {
            println!("\n!!! {name}: loopd SKIPPED: {why}\n");
        }
        results.benches.push(bench);
        results.meta.load_after = procfs::loadavg();
        results.meta.finished = setup::now_utc();
        write_results(&out, &results)?;
    }
    println!("\nresults: {}", out.display());
    if let Some(into) = &args.merge {
        if matches!(args.command.as_str(), "all" | "smoke") {
            bail!(
                "--merge takes one benchmark's results, not `{}`'s",
                args.command
            );
        }
        merge_into(into, &results)?;
        println!(
            "merged into {} (run `-- report` to regenerate the docs)",
            into.display()
        );
    }
    match args.command.as_str() {
        "all" => write_report(&root, &root.join("docs"), &results)?,
        // Exercises the report path without touching the committed docs.
        "smoke" => write_report(&root, &root.join("target/bench-smoke/docs"), &results)?,
        _ => {}
    }
    let _ = std::fs::remove_dir_all(&ctx.work);
    Ok(())
}

/// `--target ADDR`, which `command` needs.
fn target(args: &Args, command: &str) -> Result<std::net::SocketAddr> {
    args.target
        .as_deref()
        .with_context(|| format!("{command} needs --target ADDR"))?
        .parse()
        .context("--target")
}

/// The echo load generator alone, against `--target`.
fn load_echo(args: &Args) -> Result<()> {
    let addr = target(args, "load-echo")?;
    procfs::pin_self(server::CLIENT_CORE)?;
    procfs::raise_nofile()?;
    let load = echo::Load {
        addr,
        conns: args.conns.unwrap_or(50),
        size: args.size.unwrap_or(64),
        duration: Duration::from_secs_f64(args.secs.unwrap_or(2.0)),
        max_ops: args.ops.unwrap_or(u64::MAX),
        latency: false,
    };
    let out = echo::run(&load, |_| Ok(()))?;
    println!(
        "{} round trips in {:.3} s: {:.0} per second",
        out.ops,
        out.elapsed.as_secs_f64(),
        out.ops as f64 / out.elapsed.as_secs_f64()
    );
    Ok(())
}

/// The UDP relay load generator alone, against `--target`, receiving on `--to`.
fn load_udp(args: &Args) -> Result<()> {
    let relay = target(args, "load-udp")?;
    let to = args.to.context("load-udp needs --to PORT")?;
    procfs::pin_self(server::CLIENT_CORE)?;
    let client = udp::Client::new(relay, to)?;
    client.verify().context("the relay check")?;
    let load = match args.burst {
        Some(0) => bail!("--burst must be at least 1"),
        Some(n) => udp::Load::Burst(n),
        None => udp::Load::Window(udp::WINDOW),
    };
    let size = args.size.unwrap_or(64);
    if !(8..=65_507).contains(&size) {
        bail!("--size {size}: a datagram here carries 8 to 65,507 bytes");
    }
    let secs = Duration::from_secs_f64(args.secs.unwrap_or(2.0));
    let (relayed, lost, elapsed) = client.run(size, load, secs, &mut |_| Ok(()))?;
    println!(
        "{relayed} datagrams of {size} B relayed ({lost} lost) in {:.3} s: {:.0} per second",
        elapsed.as_secs_f64(),
        relayed as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// The chat load generator alone, against `--target`.
fn load_chat(args: &Args) -> Result<()> {
    let addr = target(args, "load-chat")?;
    procfs::pin_self(server::CLIENT_CORE)?;
    procfs::raise_nofile()?;
    let proto = if args.redis {
        chat::Proto::Redis
    } else {
        chat::Proto::Line
    };
    let n = args.conns.unwrap_or(100);
    let t = std::time::Instant::now();
    let mut rig = chat::Rig::connect(addr, proto, n)?;
    println!(
        "{n} receivers connected in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let out = rig.run(
        Duration::from_secs_f64(args.secs.unwrap_or(2.0)),
        &mut |_| Ok(()),
    )?;
    println!(
        "{} messages, {} deliveries in {:.3} s: {:.0} deliveries per second",
        out.messages,
        out.deliveries,
        out.elapsed.as_secs_f64(),
        out.deliveries as f64 / out.elapsed.as_secs_f64()
    );
    Ok(())
}

fn read_results(path: &Path) -> Result<Results> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Regenerates the benchmark page into `docs` from `results`, with the
/// before/after table when a baseline exists.
fn write_report(root: &Path, docs: &Path, results: &Results) -> Result<()> {
    let baseline_path = root.join("benches/results/baseline.json");
    let baseline = if baseline_path.exists() {
        Some(read_results(&baseline_path)?)
    } else {
        None
    };
    let gaps = std::fs::read_to_string(root.join("benches/gaps.md")).ok();
    report::write(docs, gaps.as_deref(), results, baseline.as_ref())
}

fn run_bench(ctx: &Ctx, name: &str) -> Result<Bench> {
    match name {
        "echo" => echo::bench(ctx),
        "http" => http::bench(ctx),
        "chat" => chat::bench(ctx),
        "chat-bridge" => chat::bench_bridge(ctx),
        "idle" => idle::bench(ctx),
        "udp" => udp::bench(ctx),
        "startup" => startup::bench(ctx),
        "syscalls" => syscalls::bench(ctx),
        "workers" => workers::bench(ctx),
        "https" => https::bench(ctx),
        other => bail!("no benchmark named {other}"),
    }
}

/// What [`merge_into`] puts before each merged run in the results' command
/// (`"{run}; {ids} from `{command}` at commit …"`); the report splits there.
pub(crate) const MERGED_RUN: &str = "; ";

/// Puts the benchmarks of `run` into the results file `into`, each in
/// place of the earlier figures of the same benchmark (the others kept),
/// and records the run in its `command`; versions the file lacks are
/// added.
fn merge_into(into: &Path, run: &Results) -> Result<()> {
    let mut all = read_results(into)?;
    for b in &run.benches {
        match all.benches.iter_mut().find(|old| old.id == b.id) {
            Some(old) => *old = b.clone(),
            None => all.benches.push(b.clone()),
        }
    }
    let ids = run
        .benches
        .iter()
        .map(|b| b.id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    // An earlier merge of the same benchmarks no longer describes the file.
    let earlier = format!("{MERGED_RUN}{ids} from `");
    let kept = match all.meta.command.find(&earlier) {
        Some(i) => {
            let rest = &all.meta.command[i + earlier.len()..];
            let end = rest.find(MERGED_RUN).map_or("", |j| &rest[j..]);
            format!("{}{end}", &all.meta.command[..i])
        }
        None => all.meta.command.clone(),
    };
    all.meta.command = format!(
        "{kept}{MERGED_RUN}{ids} from `{}` at commit {}, {} to {} (load average {:.2} before)",
        run.meta.command,
        run.meta.commit,
        run.meta.started,
        run.meta.finished,
        run.meta.load_before[0]
    );
    for (k, v) in &run.meta.versions {
        all.meta
            .versions
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    write_results(into, &all)
}

fn write_results(path: &Path, results: &Results) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
