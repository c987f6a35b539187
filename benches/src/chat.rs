//! Benchmark 3, chat fan-out: loopd's chat handler against redis-server
//! pub/sub and a tokio chat server.
//!
//! One thread on `polling` holds `N` receivers and 4 publishers. Each
//! publisher keeps `WINDOW` 64-byte messages in flight (closed loop): a
//! message is complete when the last receiver has it, and only then may its
//! publisher send another. Every receiver checks that it gets every
//! publisher's messages exactly once and in order, so loss is counted
//! exactly: a gap, a duplicate or a reordering fails the run.
//!
//! loopd chat and the tokio server speak the same line protocol (a message
//! reaches receivers as `guest-K: TEXT`); redis receivers `SUBSCRIBE` and
//! publishers `PUBLISH`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use polling::{Event, Events, PollMode, Poller};

use crate::echo::connect_many;
use crate::http::{handler_built, which};
use crate::peers;
use crate::results::{Bench, Case};
use crate::server::{free_port, CpuProbe, Server};
use crate::stats::percentile;
use crate::Ctx;

/// Concurrent publishers.
pub const PUBLISHERS: usize = 4;
/// Messages each publisher keeps in flight.
pub const WINDOW: usize = 4;
/// Bytes of text per message.
pub const MSG_SIZE: usize = 64;
/// The redis channel.
const CHANNEL: &str = "bench";
/// Longest wait for a setup step or for the last deliveries of a run.
const WAIT: Duration = Duration::from_secs(60);

/// How a server is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// loopd chat / tokio chat: lines, delivered as `nick: text`.
    Line,
    /// redis pub/sub (RESP).
    Redis,
}

/// A message's text: `p<P> s<SEQ> ` padded with `x` to [`MSG_SIZE`] bytes.
fn message(p: usize, seq: u64) -> [u8; MSG_SIZE] {
    let mut m = [b'x'; MSG_SIZE];
    let head = format!("p{p} s{seq} ");
    m[..head.len()].copy_from_slice(head.as_bytes());
    m
}

/// Parses a message's text back into (publisher, sequence); `None` for
/// anything else (the setup's `sync` message).
fn parse_message(text: &[u8]) -> Result<Option<(usize, u64)>> {
    if text.starts_with(b"sync") {
        return Ok(None);
    }
    let bad = || anyhow::anyhow!("unexpected message {:?}", String::from_utf8_lossy(text));
    if text.len() != MSG_SIZE || text[0] != b'p' {
        return Err(bad());
    }
    let mut it = text[1..].split(|&b| b == b' ');
    let p = it.next().ok_or_else(bad)?;
    let s = it.next().ok_or_else(bad)?;
    let p: usize = std::str::from_utf8(p)?.parse().map_err(|_| bad())?;
    let s = s.strip_prefix(b"s").ok_or_else(bad)?;
    let s: u64 = std::str::from_utf8(s)?.parse().map_err(|_| bad())?;
    if p >= PUBLISHERS {
        return Err(bad());
    }
    Ok(Some((p, s)))
}

/// One frame a connection received.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    /// A chat message or redis `message` push: its text.
    Message(&'a [u8]),
    /// Anything the benchmark does not count: notices, subscribe replies.
    Other,
    /// A redis integer reply (PUBLISH's receiver count).
    Int(i64),
}

/// Parses one frame from the front of `buf`: `(frame, bytes used)`, or
/// `None` if incomplete.
fn parse_frame(proto: Proto, buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    match proto {
        Proto::Line => {
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                return Ok(None);
            };
            let line = &buf[..nl];
            if line.starts_with(b"! ") {
                bail!("server error line: {}", String::from_utf8_lossy(line));
            }
            if line.starts_with(b"* ") {
                return Ok(Some((Frame::Other, nl + 1)));
            }
            let Some(colon) = line.windows(2).position(|w| w == b": ") else {
                bail!("unexpected line: {}", String::from_utf8_lossy(line));
            };
            Ok(Some((Frame::Message(&line[colon + 2..]), nl + 1)))
        }
        Proto::Redis => parse_resp(buf),
    }
}

/// Reads `\r\n`-terminated header at `at`: (line without CRLF, next index).
fn resp_line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], at + i + 2))
}

fn resp_int(line: &[u8]) -> Result<i64> {
    Ok(std::str::from_utf8(line)?.parse()?)
}

/// One RESP value: pushes (`message`/`subscribe` arrays) and integers.
fn parse_resp(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    let Some((head, mut at)) = resp_line(buf, 0) else {
        return Ok(None);
    };
    match head.first() {
        Some(b':') => Ok(Some((Frame::Int(resp_int(&head[1..])?), at))),
        Some(b'-') => bail!("redis error: {}", String::from_utf8_lossy(head)),
        Some(b'+') => Ok(Some((Frame::Other, at))),
        Some(b'*') => {
            let n = resp_int(&head[1..])?;
            let mut items: [&[u8]; 3] = [&[]; 3];
            #[allow(clippy::needless_range_loop)] // k also counts items past the third
            for k in 0..n as usize {
                let Some((h, next)) = resp_line(buf, at) else {
                    return Ok(None);
                };
                match h.first() {
                    Some(b'$') => {
                        let len = resp_int(&h[1..])? as usize;
                        if buf.len() < next + len + 2 {
                            return Ok(None);
                        }
                        if k < 3 {
                            items[k] = &buf[next..next + len];
                        }
                        at = next + len + 2;
                    }
                    Some(b':') => at = next,
                    _ => bail!("unexpected RESP item {}", String::from_utf8_lossy(h)),
                }
            }
            if n == 3 && items[0] == b"message" {
                Ok(Some((Frame::Message(items[2]), at)))
            } else {
                Ok(Some((Frame::Other, at)))
            }
        }
        _ => bail!("unexpected RESP {}", String::from_utf8_lossy(head)),
    }
}

/// A PUBLISH (redis) or a line (chat) carrying `text`.
fn publish_bytes(proto: Proto, text: &[u8]) -> Vec<u8> {
    match proto {
        Proto::Line => {
            let mut v = text.to_vec();
            v.push(b'\n');
            v
        }
        Proto::Redis => {
            let mut v = format!(
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{CHANNEL}\r\n${}\r\n",
                CHANNEL.len(),
                text.len()
            )
            .into_bytes();
            v.extend_from_slice(text);
            v.extend_from_slice(b"\r\n");
            v
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes of an incomplete frame.
    partial: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Slot {
    sent_at: Instant,
    remaining: usize,
}

/// N receivers and the publishers, connected to one server, kept across
/// rounds (joining a chat room tells everyone in it: setup is O(N²)).
pub struct Rig {
    proto: Proto,
    poller: Poller,
    /// Receivers `0..n`, then the publishers.
    conns: Vec<Conn>,
    n: usize,
    /// `expected[r * PUBLISHERS + p]`: next sequence receiver `r` must get from `p`.
    expected: Vec<u64>,
    next_seq: [u64; PUBLISHERS],
    slots: Vec<Option<Slot>>,
    syncs: Vec<u32>,
    sync_round: u32,
    scratch: Vec<u8>,
    stopping: bool,
    inflight: usize,
    completed: u64,
    latencies: Vec<u64>,
    /// PUBLISH replies that named another receiver count.
    bad_replies: u64,
    /// Receivers are spread over several bridged servers: a sync message
    /// may miss one whose server has not subscribed yet, so a sync round
    /// that is not complete soon is tried again.
    retry_sync: bool,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rig({:?}, {} receivers)", self.proto, self.n)
    }
}

/// What one timed run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Messages that reached every receiver.
    pub messages: u64,
    /// Deliveries to receivers (messages × N).
    pub deliveries: u64,
    /// From the first publish to the last delivery.
    pub elapsed: Duration,
    /// Sorted times from publish to the last receiver, ns.
    pub latencies: Vec<u64>,
}

impl Rig {
    /// Connects `n` receivers and the publishers, and waits until every
    /// receiver is subscribed (a first message reached all of them).
    pub fn connect(addr: SocketAddr, proto: Proto, n: usize) -> Result<Rig> {
        Rig::connect_on(&[addr], proto, n, false)
    }

    /// [`Rig::connect`] to a server whose members join asynchronously
    /// (several workers: a member's join reaches the other workers by a
    /// post, after a sync line may have passed): the sync is repeated
    /// until every receiver got one.
    pub fn connect_workers(addr: SocketAddr, proto: Proto, n: usize) -> Result<Rig> {
        Rig::connect_on(&[addr], proto, n, true)
    }

    /// [`Rig::connect`] with receiver `r` on `addrs[r % len]` and
    /// publisher `p` on `addrs[p % len]`: chat instances bridged by Redis.
    pub fn connect_split(addrs: &[SocketAddr], proto: Proto, n: usize) -> Result<Rig> {
        Rig::connect_on(addrs, proto, n, addrs.len() > 1)
    }

    fn connect_on(addrs: &[SocketAddr], proto: Proto, n: usize, retry_sync: bool) -> Result<Rig> {
        let poller = Poller::new()?;
        let mut conns = Vec::with_capacity(n + PUBLISHERS);
        let mut streams = Vec::with_capacity(n + PUBLISHERS);
        for i in 0..n + PUBLISHERS {
            let k = if i < n { i } else { i - n };
            streams.extend(connect_many(addrs[k % addrs.len()], 1)?);
        }
        for (i, stream) in streams.into_iter().enumerate() {
            stream.set_nonblocking(true)?;
            // SAFETY: every stream is deleted from the poller in Drop before
            // it is closed.
            unsafe {
                poller.add_with_mode(stream.as_raw_fd(), Event::readable(i), PollMode::Level)?
            };
            conns.push(Conn {
                stream,
                partial: Vec::new(),
            });
        }
        let mut rig = Rig {
            proto,
            poller,
            conns,
            n,
            expected: vec![0; n * PUBLISHERS],
            next_seq: [0; PUBLISHERS],
            slots: vec![None; PUBLISHERS * WINDOW],
            syncs: vec![0; n],
            sync_round: 0,
            scratch: vec![0; 256 * 1024],
            stopping: false,
            inflight: 0,
            completed: 0,
            latencies: Vec::new(),
            bad_replies: 0,
            retry_sync,
        };
        if proto == Proto::Redis {
            let sub = format!(
                "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{CHANNEL}\r\n",
                CHANNEL.len()
            );
            for r in 0..n {
                rig.conns[r].stream.write_all(sub.as_bytes())?;
            }
        }
        // A sync message from publisher 0 reaching every receiver proves
        // they are all in: redis replies to PUBLISH with the subscriber
        // count, so repeat until it is N; the chat servers deliver in order
        // after the join notices.
        let deadline = Instant::now() + WAIT;
        loop {
            if rig.sync(deadline)? {
                break;
            }
            if Instant::now() > deadline {
                bail!("{n} receivers did not all subscribe within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(rig)
    }

    /// Publishes `sync` from publisher 0 and waits until every receiver got
    /// it. `false` if redis said fewer than N are subscribed.
    fn sync(&mut self, deadline: Instant) -> Result<bool> {
        self.sync_round += 1;
        let text = format!("sync {}", self.sync_round);
        let p0 = self.n;
        let bytes = publish_bytes(self.proto, text.as_bytes());
        self.conns[p0].stream.write_all(&bytes)?;
        let mut events = Events::new();
        let mut reply: Option<i64> = None;
        let round_start = Instant::now();
        loop {
            let all = self.syncs.iter().all(|&s| s == self.sync_round);
            if all && (self.proto == Proto::Line || reply.is_some()) {
                return Ok(true);
            }
            if self.retry_sync && round_start.elapsed() > Duration::from_millis(500) {
                return Ok(false);
            }
            if let Some(count) = reply {
                if count < self.n as i64 && self.proto == Proto::Redis {
                    // Not everyone subscribed yet; the ones who did will get
                    // this sync, and the next round counts again.
                    self.drain_for(Duration::from_millis(50))?;
                    return Ok(false);
                }
            }
            if Instant::now() > deadline {
                let missing = self.syncs.iter().filter(|&&s| s != self.sync_round).count();
                bail!(
                    "{missing} of {} receivers never got the setup message",
                    self.n
                );
            }
            events.clear();
            self.poller
                .wait(&mut events, Some(Duration::from_millis(100)))?;
            for ev in events.iter() {
                self.read(ev.key, &mut |_, _, f| {
                    if let Frame::Int(c) = f {
                        reply = Some(c);
                    }
                })?;
            }
        }
    }

    /// Reads and handles whatever arrives for `d`.
    fn drain_for(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        let mut events = Events::new();
        while Instant::now() < until {
            events.clear();
            self.poller
                .wait(&mut events, Some(Duration::from_millis(10)))?;
            for ev in events.iter() {
                self.read(ev.key, &mut |_, _, _| {})?;
            }
        }
        Ok(())
    }

    /// Reads what connection `i` has and handles each whole frame: message
    /// accounting for receivers, `other` for everything else.
    fn read(&mut self, i: usize, other: &mut dyn FnMut(&mut Rig, usize, Frame<'_>)) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = self.read_into(i, &mut scratch, other);
        self.scratch = scratch;
        result
    }

    fn read_into(
        &mut self,
        i: usize,
        scratch: &mut [u8],
        other: &mut dyn FnMut(&mut Rig, usize, Frame<'_>),
    ) -> Result<()> {
        let conn = &mut self.conns[i];
        let pre = conn.partial.len();
        scratch[..pre].copy_from_slice(&conn.partial);
        conn.partial.clear();
        let n = match conn.stream.read(&mut scratch[pre..]) {
            Ok(0) => bail!("the server closed connection {i}"),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.partial.extend_from_slice(&scratch[..pre]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e).context("reading"),
        };
        let data = &scratch[..pre + n];
        let mut pos = 0;
        while let Some((frame, used)) = parse_frame(self.proto, &data[pos..])? {
            pos += used;
            match frame {
                Frame::Message(text) if i < self.n => self.delivered(i, text)?,
                Frame::Int(count) if self.proto == Proto::Redis && i >= self.n => {
                    if count != self.n as i64 && self.syncs.iter().all(|&s| s == self.sync_round) {
                        self.bad_replies += 1;
                    }
                    other(self, i, Frame::Int(count));
                }
                f => other(self, i, f),
            }
        }
        self.conns[i].partial.extend_from_slice(&data[pos..]);
        Ok(())
    }

    /// Receiver `r` got `text`.
    fn delivered(&mut self, r: usize, text: &[u8]) -> Result<()> {
        let Some((p, seq)) = parse_message(text)? else {
            self.syncs[r] = self.sync_round;
            return Ok(());
        };
        let want = &mut self.expected[r * PUBLISHERS + p];
        if seq != *want {
            bail!(
                "receiver {r} got message {seq} of publisher {p} but expected {}: {}",
                *want,
                if seq > *want {
                    format!("{} lost", seq - *want)
                } else {
                    "duplicated or reordered".into()
                }
            );
        }
        *want += 1;
        let slot_index = p * WINDOW + (seq % WINDOW as u64) as usize;
        let Some(slot) = &mut self.slots[slot_index] else {
            bail!("message {seq} of publisher {p} was never in flight");
        };
        slot.remaining -= 1;
        if slot.remaining == 0 {
            let sent_at = slot.sent_at;
            self.slots[slot_index] = None;
            self.latencies.push(sent_at.elapsed().as_nanos() as u64);
            self.completed += 1;
            self.inflight -= 1;
            if !self.stopping {
                self.publish(p)?;
            }
        }
        Ok(())
    }

    fn publish(&mut self, p: usize) -> Result<()> {
        let seq = self.next_seq[p];
        self.next_seq[p] += 1;
        let slot_index = p * WINDOW + (seq % WINDOW as u64) as usize;
        if self.slots[slot_index].is_some() {
            bail!("publisher {p}: window slot still busy");
        }
        self.slots[slot_index] = Some(Slot {
            sent_at: Instant::now(),
            remaining: self.n,
        });
        self.inflight += 1;
        let bytes = publish_bytes(self.proto, &message(p, seq));
        let conn = &mut self.conns[self.n + p];
        match conn.stream.write(&bytes) {
            Ok(k) if k == bytes.len() => Ok(()),
            Ok(_) | Err(_) => {
                // A 100-byte write on a socket with a handful of messages
                // in flight always fits; anything else is a broken server.
                conn.stream.set_nonblocking(false)?;
                conn.stream
                    .set_write_timeout(Some(Duration::from_secs(5)))?;
                bail!("publisher {p}: the server stopped reading")
            }
        }
    }

    /// One timed run: publish for `duration`, then wait for the last
    /// deliveries. `mark(true)`/`mark(false)` bracket the timed window.
    pub fn run(
        &mut self,
        duration: Duration,
        mark: &mut dyn FnMut(bool) -> Result<()>,
    ) -> Result<Outcome> {
        self.stopping = false;
        self.completed = 0;
        self.latencies.clear();
        let mut events = Events::new();
        mark(true)?;
        let t0 = Instant::now();
        for p in 0..PUBLISHERS {
            for _ in 0..WINDOW {
                self.publish(p)?;
            }
        }
        let stop_at = t0 + duration;
        let mut last = t0;
        while self.inflight > 0 {
            events.clear();
            self.poller
                .wait(&mut events, Some(Duration::from_millis(100)))?;
            let now = Instant::now();
            if now > stop_at {
                self.stopping = true;
                if now > stop_at + WAIT {
                    bail!(
                        "{} messages still not delivered to every receiver {WAIT:?} after the run",
                        self.inflight
                    );
                }
            }
            let before = self.completed;
            for ev in events.iter() {
                self.read(ev.key, &mut |_, _, _| {})?;
            }
            if self.completed > before {
                last = Instant::now();
            }
        }
        mark(false)?;
        if self.bad_replies > 0 {
            bail!(
                "{} PUBLISH replies counted fewer than {} subscribers",
                self.bad_replies,
                self.n
            );
        }
        let mut latencies = std::mem::take(&mut self.latencies);
        latencies.sort_unstable();
        Ok(Outcome {
            messages: self.completed,
            deliveries: self.completed * self.n as u64,
            elapsed: last.duration_since(t0),
            latencies,
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &self.conns {
            let _ = self.poller.delete(&c.stream);
        }
    }
}

/// Starts redis-server: no persistence, one thread.
pub fn start_redis(ctx: &Ctx) -> Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let dir = ctx.work.join("redis");
    std::fs::create_dir_all(&dir)?;
    let redis = which("redis-server")?;
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--io-threads",
        "1",
        "--maxclients",
        "10000",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut s = Server::spawn(
        "redis",
        Path::new(&redis),
        &args,
        &ctx.work.join("redis.log"),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    s.wait_tcp(addr)?;
    Ok((s, addr))
}

/// Starts the tokio chat server.
pub fn start_tokio_chat(ctx: &Ctx) -> Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = Server::spawn(
        "tokio-chat",
        &ctx.bin.join("tokio-chat"),
        &[addr.to_string()],
        &ctx.work.join("tokio-chat.log"),
    )?;
    s.wait_tcp(addr)?;
    Ok((s, addr))
}

/// chat's per-sender rate limit (10 lines a second by default) would make
/// this benchmark measure the limit, not the fan-out: redis and the tokio
/// server have none. `loopd-before` gets them too; a build from before the
/// limit refuses keys it does not know, and has no limit to lift, so it is
/// then started without them.
const NO_RATE_LIMIT: &str = "[handler.config]\nrate_lines = 0\nrate_bytes = 0\n";

/// Starts loopd with the chat handler.
pub fn start_loopd_chat(ctx: &Ctx) -> Result<(Server, SocketAddr)> {
    start_loopd_chat_from(ctx, &ctx.bin, "loopd-chat", NO_RATE_LIMIT)
}

/// [`start_loopd_chat`] from the build in `bin`, with `extra` after the
/// `[[handler]]` table.
pub fn start_loopd_chat_from(
    ctx: &Ctx,
    bin: &Path,
    name: &str,
    extra: &str,
) -> Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let config = format!(
        "{}[[handler]]\nname = \"chat\"\nplugin = \"chat\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\n{extra}",
        peers::RUNTIME_TABLE
    );
    let mut s = peers::loopd_from(ctx, bin, name, &config, &[])?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    s.wait_tcp(addr)?;
    Ok((s, addr))
}

/// Runs the whole chat benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "chat".into(),
        ..Bench::default()
    };
    let mut servers: Vec<(String, Server, SocketAddr, Proto)> = Vec::new();
    bench.skipped = handler_built(ctx, "chat");
    if bench.skipped.is_none() {
        let (s, a) = start_loopd_chat(ctx)?;
        servers.push(("loopd".into(), s, a, Proto::Line));
        if let Some((s, a)) = peers::before("chat", |dir| {
            start_loopd_chat_from(ctx, dir, "loopd-before-chat", NO_RATE_LIMIT).or_else(|e| {
                eprintln!(
                    "chat: loopd-before refused the rate-limit keys ({e:#}): started without them"
                );
                start_loopd_chat_from(ctx, dir, "loopd-before-chat", "")
            })
        }) {
            servers.push(("loopd-before".into(), s, a, Proto::Line));
        }
    }
    let (s, a) = start_redis(ctx)?;
    servers.push(("redis".into(), s, a, Proto::Redis));
    let (s, a) = start_tokio_chat(ctx)?;
    servers.push(("tokio".into(), s, a, Proto::Line));

    let sizes: &[usize] = if ctx.smoke {
        &[10, 100]
    } else {
        &[10, 100, 1000, 4000]
    };
    for &n in sizes {
        // Connecting is the correctness check: every receiver must get the
        // setup message through the server, exactly once and in order.
        let mut rigs = Vec::new();
        for (name, server, addr, proto) in servers.iter_mut() {
            if name == "loopd-before" && n > 1000 {
                // One send per join notice: its setup alone takes minutes.
                rigs.push(None);
                continue;
            }
            let t = Instant::now();
            let rig = Rig::connect(*addr, *proto, n)
                .with_context(|| format!("{name}: connecting {n} receivers"))?;
            server.check_alive()?;
            println!(
                "chat: {name}: {n} receivers + {PUBLISHERS} publishers connected and checked in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            rigs.push(Some(rig));
        }
        if !ctx.warmup.is_zero() {
            for ((name, server, _, _), rig) in servers.iter_mut().zip(rigs.iter_mut()) {
                let Some(rig) = rig else { continue };
                let mut probe = CpuProbe::new(server);
                rig.run(ctx.warmup, &mut |s| probe.mark(s))
                    .with_context(|| format!("{name} warm-up"))?;
            }
        }
        let mut case = Case {
            label: format!("N = {n}"),
            params: [("receivers".into(), n as f64)].into(),
            peers: Vec::new(),
        };
        for round in 0..ctx.rounds {
            for ((name, server, _, _), rig) in servers.iter_mut().zip(rigs.iter_mut()) {
                let Some(rig) = rig else { continue };
                let mut probe = CpuProbe::new(server);
                let out = rig
                    .run(ctx.run, &mut |s| probe.mark(s))
                    .with_context(|| format!("chat {name} N={n}"))?;
                let (cpu, wall) = probe.result(ctx.tck);
                let mut m = BTreeMap::new();
                let secs = out.elapsed.as_secs_f64();
                m.insert("ops_per_s".into(), out.deliveries as f64 / secs);
                m.insert("msgs_per_s".into(), out.messages as f64 / secs);
                m.insert("cpu_us_per_op".into(), cpu * 1e6 / out.deliveries as f64);
                m.insert("busy".into(), cpu / wall);
                m.insert("loss".into(), 0.0);
                for (key, p) in [("p50_us", 50.0), ("p95_us", 95.0), ("p99_us", 99.0)] {
                    m.insert(key.into(), percentile(&out.latencies, p) as f64 / 1e3);
                }
                println!(
                    "chat N={n:<5} round {}/{} {:>6}: {:>10.0} deliveries/s  {:>6.3} µs cpu/delivery  busy {:>3.0}%  last-receiver p50 {:.0} µs p95 {:.0} µs p99 {:.0} µs",
                    round + 1,
                    ctx.rounds,
                    name,
                    m["ops_per_s"],
                    m["cpu_us_per_op"],
                    m["busy"] * 100.0,
                    m["p50_us"],
                    m["p95_us"],
                    m["p99_us"]
                );
                case.push(name, m);
            }
        }
        bench.cases.push(case);
        drop(rigs);
        for (_, server, _, _) in servers.iter_mut() {
            server.check_alive()?;
        }
    }
    for (_, server, _, _) in servers.iter_mut() {
        server.stop();
    }
    Ok(bench)
}

/// Receivers in the bridge benchmark.
const BRIDGE_N: usize = 1000;

/// The chat bridge (`loopd-bench chat-bridge`): deliveries per second for
/// N = 1000 receivers split over two loopd chat instances bridged through
/// redis-server, against the same N on one instance. The publishers are
/// split too, so half of every message crosses Redis. CPU is loopd's (both
/// instances) plus, for the bridged row, redis-server's.
pub fn bench_bridge(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "chat-bridge".into(),
        ..Bench::default()
    };
    bench.skipped = handler_built(ctx, "chat");
    if bench.skipped.is_some() {
        return Ok(bench);
    }
    let n = if ctx.smoke { 20 } else { BRIDGE_N };
    let (mut redis, redis_addr) = start_redis(ctx)?;
    let (mut single, single_addr) = start_loopd_chat(ctx)?;
    let bridged_config = format!("{NO_RATE_LIMIT}bridge = \"redis://{redis_addr}\"\n");
    let (mut b0, a0) = start_loopd_chat_from(ctx, &ctx.bin, "loopd-bridge-0", &bridged_config)?;
    let (mut b1, a1) = start_loopd_chat_from(ctx, &ctx.bin, "loopd-bridge-1", &bridged_config)?;
    let t = Instant::now();
    let mut one = Rig::connect(single_addr, Proto::Line, n).context("one instance")?;
    let mut two = Rig::connect_split(&[a0, a1], Proto::Line, n).context("two bridged instances")?;
    println!(
        "chat-bridge: {n} receivers on one instance, and on two bridged ones, connected and checked in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut case = Case {
        label: format!("N = {n}"),
        params: [("receivers".into(), n as f64)].into(),
        peers: Vec::new(),
    };
    for round in 0..ctx.rounds.max(1) {
        // One instance.
        let mut probe = CpuProbe::new(&mut single);
        let out = one
            .run(ctx.run, &mut |s| probe.mark(s))
            .context("one instance")?;
        let (cpu, wall) = probe.result(ctx.tck);
        push_row(
            &mut case,
            "loopd (1 instance)",
            &out,
            cpu,
            wall,
            round,
            ctx.rounds,
        );
        // Two bridged instances and Redis: the three probes bracket the
        // same window.
        let (mut p0, mut p1, mut pr) = (
            CpuProbe::new(&mut b0),
            CpuProbe::new(&mut b1),
            CpuProbe::new(&mut redis),
        );
        let out = two
            .run(ctx.run, &mut |s| {
                p0.mark(s)?;
                p1.mark(s)?;
                pr.mark(s)
            })
            .context("two bridged instances")?;
        let (c0, wall) = p0.result(ctx.tck);
        let (c1, _) = p1.result(ctx.tck);
        let (cr, _) = pr.result(ctx.tck);
        push_row(
            &mut case,
            "loopd x2 + redis (bridged)",
            &out,
            c0 + c1 + cr,
            wall,
            round,
            ctx.rounds,
        );
    }
    bench.cases.push(case);
    drop((one, two));
    for s in [&mut single, &mut b0, &mut b1, &mut redis] {
        s.check_alive()?;
        s.stop();
    }
    Ok(bench)
}

/// Adds one run's figures to `case` and prints them.
fn push_row(
    case: &mut Case,
    name: &str,
    out: &Outcome,
    cpu: f64,
    wall: f64,
    round: usize,
    rounds: usize,
) {
    let mut m = BTreeMap::new();
    let secs = out.elapsed.as_secs_f64();
    m.insert("ops_per_s".into(), out.deliveries as f64 / secs);
    m.insert("msgs_per_s".into(), out.messages as f64 / secs);
    m.insert("cpu_us_per_op".into(), cpu * 1e6 / out.deliveries as f64);
    m.insert("busy".into(), cpu / wall);
    m.insert("loss".into(), 0.0);
    for (key, p) in [("p50_us", 50.0), ("p95_us", 95.0), ("p99_us", 99.0)] {
        m.insert(key.into(), percentile(&out.latencies, p) as f64 / 1e3);
    }
    println!(
        "chat-bridge round {}/{rounds} {name:>27}: {:>10.0} deliveries/s  {:>6.3} µs cpu/delivery  last-receiver p50 {:.0} µs p99 {:.0} µs",
        round + 1,
        m["ops_per_s"],
        m["cpu_us_per_op"],
        m["p50_us"],
        m["p99_us"]
    );
    case.push(name, m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = message(3, 123456);
        assert_eq!(m.len(), MSG_SIZE);
        assert_eq!(parse_message(&m).unwrap(), Some((3, 123456)));
        assert_eq!(parse_message(b"sync 4").unwrap(), None);
        assert!(parse_message(b"p9 s1 xxx").is_err());
    }

    #[test]
    fn line_frames() {
        let buf = b"* guest-1 joined\nguest-2: hello\npartial";
        let (f, used) = parse_frame(Proto::Line, buf).unwrap().unwrap();
        assert_eq!((f, used), (Frame::Other, 17));
        let (f, used2) = parse_frame(Proto::Line, &buf[used..]).unwrap().unwrap();
        assert_eq!(f, Frame::Message(b"hello"));
        assert!(parse_frame(Proto::Line, &buf[used + used2..])
            .unwrap()
            .is_none());
        assert!(parse_frame(Proto::Line, b"! server full\n").is_err());
    }

    #[test]
    fn resp_frames() {
        let push = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$5\r\nhello\r\n";
        let (f, used) = parse_frame(Proto::Redis, push).unwrap().unwrap();
        assert_eq!((f, used), (Frame::Message(b"hello"), push.len()));
        for cut in 0..push.len() {
            assert!(
                parse_frame(Proto::Redis, &push[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n";
        assert_eq!(
            parse_frame(Proto::Redis, sub).unwrap().unwrap(),
            (Frame::Other, sub.len())
        );
        assert_eq!(
            parse_frame(Proto::Redis, b":42\r\n").unwrap().unwrap(),
            (Frame::Int(42), 5)
        );
        assert!(parse_frame(Proto::Redis, b"-ERR nope\r\n").is_err());
        let publish = publish_bytes(Proto::Redis, b"hi");
        assert_eq!(
            publish,
            b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$2\r\nhi\r\n"
        );
    }
}
