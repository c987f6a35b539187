//! Benchmark 8, workers: loopd with `[runtime] workers = 1` and `= 2` side
//! by side, on echo (50 and 500 connections of 64 B round trips), HTTP
//! (the 612-byte page and 16 KiB over 256 keep-alive connections, against
//! nginx with `worker_processes 1` and `2`) and chat (N = 1000 receivers).
//!
//! This machine has two cores and the load generator needs one of them. A
//! one-worker server runs pinned to the server core, as in every other
//! benchmark; a two-worker server may run on both cores, where its second
//! worker shares core 0 with the load generator. So the two-worker rows
//! measure what a second loop costs and what it buys when it has to share a
//! core, not how far loopd scales: that needs a machine where the load
//! generator has cores of its own (see the report's text).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::chat::{Proto, Rig};
use crate::echo::{self, Load};
use crate::http::{self, handler_built};
use crate::peers;
use crate::procfs;
use crate::results::{Bench, Case};
use crate::server::{free_port, CpuProbe, Server, SERVER_CORE};
use crate::stats::percentile;
use crate::Ctx;

/// Where a server with `workers` loops runs: one worker on the server
/// core; two on both cores.
fn cores(workers: usize) -> String {
    if workers == 1 {
        SERVER_CORE.to_string()
    } else {
        "0,1".to_string()
    }
}

/// A `[runtime]` table with `workers` loops (and the other benchmarks'
/// connection limit).
fn runtime_table(workers: usize) -> String {
    format!("[runtime]\nmax_connections = 20000\nworkers = {workers}\n\n")
}

/// Starts the loopd binary on `body` with `workers` loops.
fn loopd(ctx: &Ctx, name: &str, workers: usize, body: &str, addr: SocketAddr) -> Result<Server> {
    let config = format!("{}{body}", runtime_table(workers));
    let mut s = peers::loopd_on(ctx, &ctx.bin, &cores(workers), name, &config, &[])?;
    s.wait_tcp(addr)?;
    Ok(s)
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// loopd's echo with `workers` loops.
fn loopd_echo(ctx: &Ctx, workers: usize) -> Result<(String, Server, SocketAddr)> {
    let port = free_port()?;
    let name = format!("loopd-w{workers}");
    let body = format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\nframing = \"raw\"\n"
    );
    let s = loopd(ctx, &format!("{name}-echo"), workers, &body, local(port))?;
    Ok((name, s, local(port)))
}

/// loopd's http handler on `root` with `workers` loops (shipped defaults,
/// the access log off as nginx's is).
fn loopd_http(ctx: &Ctx, root: &Path, workers: usize) -> Result<(String, Server, SocketAddr)> {
    let port = free_port()?;
    let name = format!("loopd-w{workers}");
    let body = format!(
        "[[handler]]\nname = \"http\"\nplugin = \"http\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[handler.config]\nroot = \"{}\"\naccess_log = false\n",
        root.display()
    );
    let s = loopd(ctx, &format!("{name}-http"), workers, &body, local(port))?;
    Ok((name, s, local(port)))
}

/// loopd's chat with `workers` loops, its per-sender rate limit off (as
/// in the chat benchmark).
fn loopd_chat(ctx: &Ctx, workers: usize) -> Result<(String, Server, SocketAddr)> {
    let port = free_port()?;
    let name = format!("loopd-w{workers}");
    let body = format!(
        "[[handler]]\nname = \"chat\"\nplugin = \"chat\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[handler.config]\nrate_lines = 0\nrate_bytes = 0\n"
    );
    let s = loopd(ctx, &format!("{name}-chat"), workers, &body, local(port))?;
    Ok((name, s, local(port)))
}

/// nginx with `workers` worker processes serving `root`.
fn nginx(ctx: &Ctx, root: &Path, workers: usize) -> Result<(String, Server, SocketAddr)> {
    let name = format!("nginx-w{workers}");
    let (s, addr) = http::start_nginx_on(ctx, root, &name, workers, &cores(workers))?;
    Ok((name, s, addr))
}

/// Threads of `pid` whose name starts with `prefix`, with their CPU ticks.
fn thread_ticks(pid: u32, prefix: &str) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return v;
    };
    for t in dir.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        if let Some(ticks) = procfs::stat_ticks(&stat) {
            v.push((comm.to_string(), ticks));
        }
    }
    v.sort();
    v
}

/// The share of the CPU time between two [`thread_ticks`] snapshots that
/// each `loopd-worker-K` thread took, as "a/b" percentages.
fn split(before: &[(String, u64)], after: &[(String, u64)]) -> Option<String> {
    let deltas: Vec<u64> = after
        .iter()
        .map(|(n, t)| {
            let was = before.iter().find(|(m, _)| m == n).map_or(0, |(_, t)| *t);
            t.saturating_sub(was)
        })
        .collect();
    let total: u64 = deltas.iter().sum();
    if deltas.len() < 2 || total == 0 {
        return None;
    }
    let mut s = String::new();
    for (i, d) in deltas.iter().enumerate() {
        let _ = write!(
            s,
            "{}{:.0}",
            if i > 0 { "/" } else { "" },
            *d as f64 * 100.0 / total as f64
        );
    }
    Some(s)
}

/// One timed echo run: the echo benchmark's figures, plus each worker's
/// share of the CPU.
fn echo_round(
    ctx: &Ctx,
    server: &mut Server,
    load: &Load,
    notes: &mut Vec<String>,
    label: &str,
    name: &str,
) -> Result<BTreeMap<String, f64>> {
    let before = thread_ticks(server.pid(), "loopd-worker-");
    let m = echo::measure(ctx, server, load)?;
    let after = thread_ticks(server.pid(), "loopd-worker-");
    if let Some(s) = split(&before, &after) {
        notes.push(format!("{label}, {name}: CPU per worker {s} %"));
    }
    Ok(m)
}

/// Runs the whole workers benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "workers".into(),
        ..Bench::default()
    };
    let mut notes = Vec::new();
    bench.skipped = handler_built(ctx, "echo")
        .or_else(|| handler_built(ctx, "http"))
        .or_else(|| handler_built(ctx, "chat"));
    if bench.skipped.is_some() {
        return Ok(bench);
    }

    // Echo.
    let mut servers = vec![loopd_echo(ctx, 1)?, loopd_echo(ctx, 2)?];
    for (name, _, addr) in &servers {
        echo::verify(*addr).with_context(|| format!("{name} failed the echo check"))?;
    }
    let conns: &[usize] = if ctx.smoke { &[50] } else { &[50, 500] };
    for (name, server, addr) in servers.iter_mut() {
        if !ctx.warmup.is_zero() {
            let load = echo_load(*addr, 50, ctx.warmup);
            echo::measure(ctx, server, &load).with_context(|| format!("{name} warm-up"))?;
        }
    }
    for &c in conns {
        let mut case = Case {
            label: format!("echo, {c} conns × 64 B"),
            params: [("conns".into(), c as f64), ("size".into(), 64.0)].into(),
            peers: Vec::new(),
        };
        for round in 0..ctx.rounds {
            for (name, server, addr) in servers.iter_mut() {
                let load = echo_load(*addr, c, ctx.run);
                let m = echo_round(ctx, server, &load, &mut notes, &case.label, name)
                    .with_context(|| format!("workers {name} {}", case.label))?;
                print_row(&case.label, round, ctx.rounds, name, &m, "rt");
                case.push(name, m);
            }
        }
        bench.cases.push(case);
    }
    stop_all(&mut servers)?;

    // HTTP.
    let root = ctx.work.join("www-workers");
    let files = http::make_site(&root)?;
    let mut servers = vec![
        loopd_http(ctx, &root, 1)?,
        loopd_http(ctx, &root, 2)?,
        nginx(ctx, &root, 1)?,
        nginx(ctx, &root, 2)?,
    ];
    for (name, _, addr) in &servers {
        http::verify(*addr, &files).with_context(|| format!("{name} failed the HTTP check"))?;
    }
    let secs = ctx.run.as_secs().max(1);
    if !ctx.warmup.is_zero() {
        for (name, _, addr) in &servers {
            http::wrk(ctx, *addr, http::SMALL, 64, false, 1)
                .with_context(|| format!("{name} warm-up"))?;
        }
    }
    for (label, path, size) in [
        ("612 B", http::SMALL, http::SMALL_SIZE),
        ("16 KiB", http::LARGE, http::LARGE_SIZE),
    ] {
        let c = 256;
        let mut case = Case {
            label: format!("http {label}, {c} conns"),
            params: [("conns".into(), c as f64), ("size".into(), size as f64)].into(),
            peers: Vec::new(),
        };
        for round in 0..ctx.rounds {
            for (name, server, addr) in servers.iter_mut() {
                let mut probe = CpuProbe::new(server);
                probe.mark(true)?;
                let w = http::wrk(ctx, *addr, path, c, false, secs)
                    .with_context(|| format!("workers {name} {}", case.label))?;
                probe.mark(false)?;
                let (cpu, wall) = probe.result(ctx.tck);
                if w.non_2xx > 0.0 || w.socket_errors > 0.0 {
                    bail!(
                        "workers {name} {}: {} responses not 2xx/3xx, {} socket errors",
                        case.label,
                        w.non_2xx,
                        w.socket_errors
                    );
                }
                let mut m = BTreeMap::new();
                m.insert("ops_per_s".into(), w.requests / w.secs);
                m.insert("cpu_us_per_op".into(), cpu * 1e6 / w.requests);
                m.insert("busy".into(), cpu / wall);
                print_row(&case.label, round, ctx.rounds, name, &m, "req");
                case.push(name, m);
            }
        }
        bench.cases.push(case);
    }
    stop_all(&mut servers)?;

    // Chat: rooms span the workers, so every receiver gets every line
    // whichever worker its connection landed on (the rig checks it).
    let n = if ctx.smoke { 100 } else { 1000 };
    let mut servers = vec![loopd_chat(ctx, 1)?, loopd_chat(ctx, 2)?];
    let mut rigs = Vec::new();
    for (name, server, addr) in servers.iter_mut() {
        let t = Instant::now();
        let rig = Rig::connect_workers(*addr, Proto::Line, n)
            .with_context(|| format!("{name}: connecting {n} chat receivers"))?;
        server.check_alive()?;
        println!(
            "workers: chat {name}: {n} receivers connected and checked in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        rigs.push(rig);
    }
    if !ctx.warmup.is_zero() {
        for ((name, server, _), rig) in servers.iter_mut().zip(rigs.iter_mut()) {
            let mut probe = CpuProbe::new(server);
            rig.run(ctx.warmup, &mut |s| probe.mark(s))
                .with_context(|| format!("{name} chat warm-up"))?;
        }
    }
    let mut case = Case {
        label: format!("chat, N = {n}"),
        params: [("receivers".into(), n as f64)].into(),
        peers: Vec::new(),
    };
    for round in 0..ctx.rounds {
        for ((name, server, _), rig) in servers.iter_mut().zip(rigs.iter_mut()) {
            let mut probe = CpuProbe::new(server);
            let out = rig
                .run(ctx.run, &mut |s| probe.mark(s))
                .with_context(|| format!("workers chat {name} N={n}"))?;
            let (cpu, wall) = probe.result(ctx.tck);
            let secs = out.elapsed.as_secs_f64();
            let mut m = BTreeMap::new();
            m.insert("ops_per_s".into(), out.deliveries as f64 / secs);
            m.insert("cpu_us_per_op".into(), cpu * 1e6 / out.deliveries as f64);
            m.insert("busy".into(), cpu / wall);
            m.insert(
                "p99_us".into(),
                percentile(&out.latencies, 99.0) as f64 / 1e3,
            );
            print_row(&case.label, round, ctx.rounds, name, &m, "delivery");
            case.push(name, m);
        }
    }
    bench.cases.push(case);
    drop(rigs);
    stop_all(&mut servers)?;

    // The per-worker split, once per case and server (the median round's
    // would need every round kept; the last one is shown).
    let mut seen = BTreeMap::new();
    for n in notes {
        if let Some((key, _)) = n.rsplit_once(": CPU per worker") {
            seen.insert(key.to_string(), n.clone());
        }
    }
    bench.notes.extend(seen.into_values());
    Ok(bench)
}

fn echo_load(addr: SocketAddr, conns: usize, duration: std::time::Duration) -> Load {
    Load {
        addr,
        conns,
        size: 64,
        duration,
        max_ops: u64::MAX,
        latency: false,
    }
}

fn print_row(
    label: &str,
    round: usize,
    rounds: usize,
    name: &str,
    m: &BTreeMap<String, f64>,
    unit: &str,
) {
    println!(
        "workers {label:>24} round {}/{rounds} {name:>9}: {:>10.0} {unit}/s  {:>6.2} µs cpu/{unit}  busy {:>3.0}%",
        round + 1,
        m["ops_per_s"],
        m["cpu_us_per_op"],
        m["busy"] * 100.0
    );
}

fn stop_all(servers: &mut [(String, Server, SocketAddr)]) -> Result<()> {
    for (_, server, _) in servers.iter_mut() {
        server.check_alive()?;
        server.stop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_split_is_each_threads_share() {
        let before = vec![
            ("loopd-worker-0".to_string(), 10),
            ("loopd-worker-1".to_string(), 5),
        ];
        let after = vec![
            ("loopd-worker-0".to_string(), 40),
            ("loopd-worker-1".to_string(), 15),
        ];
        assert_eq!(split(&before, &after).as_deref(), Some("75/25"));
        assert_eq!(split(&after, &after), None, "no time, no split");
        assert_eq!(split(&[], &after[..1]), None, "one worker, no split");
    }
}
