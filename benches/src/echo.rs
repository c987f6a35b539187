//! Benchmark 1, echo: loopd's echo (`.so` and linked statically) against a
//! tokio `current_thread` echo and an edge-triggered epoll echo in C.
//!
//! The load generator is one thread on `polling`: `conns` connections, each
//! with one message of `size` bytes in flight (closed loop). Every echoed
//! byte is compared with what was sent; the first byte of each message is a
//! sequence number, so a stale or duplicated reply cannot pass.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use polling::{Event, Events, PollMode, Poller};

use crate::results::{Bench, Case};
use crate::server::{CpuProbe, Server};
use crate::stats::percentile;
use crate::{peers, Ctx};

/// At most this many round-trip times are kept for percentiles.
const MAX_SAMPLES: usize = 4_000_000;

/// One timed echo run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// Connections, each with one message in flight.
    pub conns: usize,
    /// Bytes per message.
    pub size: usize,
    /// How long to keep starting new round trips.
    pub duration: Duration,
    /// Stop after this many round trips even if time is left.
    pub max_ops: u64,
    /// Record every round-trip time (for p50/p99).
    pub latency: bool,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Completed, verified round trips.
    pub ops: u64,
    /// From the first send to the last reply.
    pub elapsed: Duration,
    /// Round-trip times in nanoseconds (only with `Load::latency`).
    pub rtts: Vec<u64>,
}

struct Conn {
    stream: TcpStream,
    msg: Vec<u8>,
    got: usize,
    /// Bytes of `msg` not yet written (a short write).
    unsent: usize,
    seq: u8,
    sent_at: Instant,
    done: bool,
}

/// Connects `n` blocking-then-non-blocking TCP connections with TCP_NODELAY.
pub fn connect_many(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    (0..n)
        .map(|i| {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connection {i} to {addr}"))?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect()
}

fn fill(msg: &mut [u8], conn: usize, seq: u8) {
    for (j, b) in msg.iter_mut().enumerate() {
        *b = (conn.wrapping_mul(31).wrapping_add(j) % 251) as u8;
    }
    msg[0] = seq;
}

/// Runs the closed loop. Calls `mark(true)` right before the first message
/// and `mark(false)` right after the last reply (for CPU snapshots).
pub fn run(load: &Load, mut mark: impl FnMut(bool) -> Result<()>) -> Result<Outcome> {
    let streams = connect_many(load.addr, load.conns)?;
    let poller = Poller::new()?;
    let mut conns: Vec<Conn> = Vec::with_capacity(load.conns);
    for (i, stream) in streams.into_iter().enumerate() {
        stream.set_nonblocking(true)?;
        // SAFETY: every stream is deleted from the poller below before it is
        // dropped; on a panic the kernel drops closed fds from the set itself.
        unsafe {
            poller.add_with_mode(stream.as_raw_fd(), Event::readable(i), PollMode::Level)?;
        }
        let mut msg = vec![0u8; load.size];
        fill(&mut msg, i, 0);
        conns.push(Conn {
            stream,
            msg,
            got: 0,
            unsent: 0,
            seq: 0,
            sent_at: Instant::now(),
            done: false,
        });
    }
    let result = drive(load, &poller, &mut conns, &mut mark);
    for c in &conns {
        let _ = poller.delete(&c.stream);
    }
    result
}

fn send_msg(c: &mut Conn, poller: &Poller, key: usize) -> Result<()> {
    c.sent_at = Instant::now();
    c.got = 0;
    let n = match c.stream.write(&c.msg) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e).context("sending"),
    };
    c.unsent = c.msg.len() - n;
    if c.unsent > 0 {
        poller.modify_with_mode(&c.stream, Event::all(key), PollMode::Level)?;
    }
    Ok(())
}

fn drive(
    load: &Load,
    poller: &Poller,
    conns: &mut [Conn],
    mark: &mut dyn FnMut(bool) -> Result<()>,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    if load.latency {
        out.rtts.reserve(MAX_SAMPLES.min(1 << 20));
    }
    let mut events = Events::new();
    let mut buf = vec![0u8; load.size.max(1)];
    mark(true)?;
    let t0 = Instant::now();
    let stop_at = t0 + load.duration;
    let hard_deadline = stop_at + Duration::from_secs(10);
    for (i, c) in conns.iter_mut().enumerate() {
        send_msg(c, poller, i)?;
    }
    let mut active = conns.len();
    let mut last_reply = t0;
    while active > 0 {
        events.clear();
        poller.wait(&mut events, Some(Duration::from_millis(100)))?;
        let now = Instant::now();
        if now > hard_deadline {
            bail!(
                "echo: {active} of {} connections still waiting for a reply 10 s after the run ended",
                conns.len()
            );
        }
        for ev in events.iter() {
            let c = &mut conns[ev.key];
            if c.done {
                // Level-triggered: anything readable now is a server bug.
                let n = c.stream.read(&mut buf).unwrap_or(0);
                if n > 0 {
                    bail!("echo: {n} unexpected bytes after the last reply");
                }
                continue;
            }
            if ev.writable && c.unsent > 0 {
                let from = c.msg.len() - c.unsent;
                match c.stream.write(&c.msg[from..]) {
                    Ok(n) => c.unsent -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e).context("sending"),
                }
                if c.unsent == 0 {
                    poller.modify_with_mode(&c.stream, Event::readable(ev.key), PollMode::Level)?;
                }
            }
            if !ev.readable {
                continue;
            }
            loop {
                let want = c.msg.len() - c.got;
                match c.stream.read(&mut buf[..want]) {
                    Ok(0) => bail!("echo: the server closed connection {}", ev.key),
                    Ok(n) => {
                        if buf[..n] != c.msg[c.got..c.got + n] {
                            bail!(
                                "echo: connection {} got wrong bytes at offset {} of message {}",
                                ev.key,
                                c.got,
                                c.seq
                            );
                        }
                        c.got += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("receiving"),
                }
                if c.got == c.msg.len() {
                    break;
                }
            }
            if c.got < c.msg.len() {
                continue;
            }
            out.ops += 1;
            last_reply = now;
            if load.latency && out.rtts.len() < MAX_SAMPLES {
                out.rtts
                    .push(now.duration_since(c.sent_at).as_nanos() as u64);
            }
            if now >= stop_at || out.ops >= load.max_ops {
                c.done = true;
                active -= 1;
            } else {
                c.seq = c.seq.wrapping_add(1);
                c.msg[0] = c.seq;
                send_msg(c, poller, ev.key)?;
            }
        }
    }
    mark(false)?;
    out.elapsed = last_reply.duration_since(t0);
    Ok(out)
}

/// Checks a server's echo before anything is timed: sizes from 1 byte to
/// 256 KiB on one connection, and 20 connections interleaved.
pub fn verify(addr: SocketAddr) -> Result<()> {
    let timeout = Some(Duration::from_secs(10));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    for (k, size) in [1usize, 64, 512, 1500, 65_536, 262_144]
        .into_iter()
        .enumerate()
    {
        let mut msg = vec![0u8; size];
        fill(&mut msg, k, k as u8);
        // Write and read from one thread in slices, so a large message
        // cannot deadlock on full socket buffers.
        let mut back = vec![0u8; size];
        let (mut sent, mut got) = (0, 0);
        while got < size {
            if sent < size {
                let end = (sent + 16_384).min(size);
                s.write_all(&msg[sent..end])?;
                sent = end;
            }
            while got < sent {
                let n = s.read(&mut back[got..sent])?;
                if n == 0 {
                    bail!("echo check: the server closed the connection");
                }
                got += n;
            }
        }
        if back != msg {
            bail!("echo check: a {size}-byte message came back different");
        }
    }
    let mut many = connect_many(addr, 20)?;
    for (i, s) in many.iter_mut().enumerate() {
        s.set_read_timeout(timeout)?;
        s.write_all(format!("hello from {i}\n").as_bytes())?;
    }
    for (i, s) in many.iter_mut().enumerate().rev() {
        let want = format!("hello from {i}\n");
        let mut back = vec![0u8; want.len()];
        s.read_exact(&mut back)?;
        if back != want.as_bytes() {
            bail!("echo check: connection {i} got another connection's bytes");
        }
    }
    Ok(())
}

/// The echo servers: (name, server, address).
fn start_peers(ctx: &Ctx) -> Result<Vec<(String, Server, SocketAddr)>> {
    let mut v = vec![peers::loopd_echo(ctx, "loopd")?];
    if let Some(p) = peers::before("echo", |dir| {
        peers::loopd_echo_from(ctx, dir, "loopd-before")
    }) {
        v.push(p);
    }
    v.push(peers::static_echo(ctx)?);
    v.push(peers::tokio_echo(ctx)?);
    v.push(peers::c_echo(ctx)?);
    Ok(v)
}

/// One timed run against `server`; the figures of one round.
pub fn measure(ctx: &Ctx, server: &mut Server, load: &Load) -> Result<BTreeMap<String, f64>> {
    let mut probe = CpuProbe::new(server);
    let out = run(load, |start| probe.mark(start))?;
    let (cpu_secs, wall) = probe.result(ctx.tck);
    if out.ops == 0 {
        bail!("no round trip completed");
    }
    let mut m = BTreeMap::new();
    m.insert(
        "ops_per_s".into(),
        out.ops as f64 / out.elapsed.as_secs_f64(),
    );
    m.insert("cpu_us_per_op".into(), cpu_secs * 1e6 / out.ops as f64);
    m.insert("busy".into(), cpu_secs / wall);
    if load.latency {
        let mut rtts = out.rtts;
        rtts.sort_unstable();
        m.insert("p50_us".into(), percentile(&rtts, 50.0) as f64 / 1e3);
        m.insert("p99_us".into(), percentile(&rtts, 99.0) as f64 / 1e3);
    }
    Ok(m)
}

/// Runs the whole echo benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "echo".into(),
        ..Bench::default()
    };
    let mut servers = start_peers(ctx)?;
    for (name, _, addr) in &servers {
        verify(*addr).with_context(|| format!("{name} failed the echo check"))?;
        println!("echo: {name} on {addr} passed the correctness check");
    }
    let conns: &[usize] = if ctx.smoke { &[1, 50] } else { &[1, 50, 500] };
    let sizes = [64usize, 512];
    let load = |addr, conns, size, duration| Load {
        addr,
        conns,
        size,
        duration,
        max_ops: u64::MAX,
        latency: conns == 1,
    };
    for (name, server, addr) in servers.iter_mut() {
        if !ctx.warmup.is_zero() {
            measure(ctx, server, &load(*addr, 50, 64, ctx.warmup))
                .with_context(|| format!("{name} warm-up"))?;
        }
    }
    for &c in conns {
        for &size in &sizes {
            let mut case = Case {
                label: format!("{c} conn × {size} B"),
                params: [("conns".into(), c as f64), ("size".into(), size as f64)].into(),
                peers: Vec::new(),
            };
            for round in 0..ctx.rounds {
                for (name, server, addr) in servers.iter_mut() {
                    let m = measure(ctx, server, &load(*addr, c, size, ctx.run))
                        .with_context(|| format!("echo {name} {}", case.label))?;
                    println!(
                        "echo {:>16} round {}/{} {:>14}: {:>9.0} rt/s  {:>6.2} µs cpu/rt  busy {:>3.0}%{}",
                        case.label,
                        round + 1,
                        ctx.rounds,
                        name,
                        m["ops_per_s"],
                        m["cpu_us_per_op"],
                        m["busy"] * 100.0,
                        m.get("p99_us")
                            .map(|p| format!("  p50 {:.1} µs p99 {p:.1} µs", m["p50_us"]))
                            .unwrap_or_default()
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
