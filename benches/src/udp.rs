//! Benchmark 5, UDP relay: loopd's udp-broadcast handler against a C
//! `recvfrom`/`sendto` relay, on loopback.
//!
//! The load generator (one thread) sends datagrams to the relay from one
//! socket and receives the relayed copies on another, in one of two closed
//! loops ([`Load`]):
//!
//! - **window**: `WINDOW` datagrams in flight, one sent for each copy that
//!   comes back. Once the window is full the client sends one datagram per
//!   copy it receives, so the relay, faster than this client, finds one
//!   datagram waiting each time it wakes: the relays are measured mostly
//!   idle, and what one wake-up costs is most of what one datagram costs.
//! - **burst**: `BURST` datagrams sent at once (one `sendmmsg`), then all
//!   their copies collected before the next burst, as a sender that flushes
//!   a batch does (a metrics agent, a QUIC or DNS implementation, a game
//!   tick), or as many senders arriving together would. The client then
//!   sends faster than a relay relays, and the relay finds several
//!   datagrams waiting when it wakes.
//!
//! Each datagram carries its sequence number and a pattern; every copy is
//! checked byte for byte. Blocking sockets with a receive timeout are the
//! cheapest client here (one syscall per datagram each way), which keeps the
//! client from saturating first.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http::handler_built;
use crate::results::{Bench, Case};
use crate::server::{free_udp_port, CpuProbe, Server};
use crate::{peers, Ctx};

/// Datagrams in flight ([`Load::Window`]).
pub const WINDOW: u64 = 64;
/// Datagrams per burst ([`Load::Burst`]).
pub const BURST: u64 = 32;

/// How the client keeps datagrams in flight (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Up to this many in flight, one sent per copy received.
    Window(u64),
    /// This many sent back to back, then every copy awaited.
    Burst(u64),
}
/// How long a missing datagram is waited for before it counts as lost.
const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

fn fill(buf: &mut [u8], seq: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u64).wrapping_mul(7).wrapping_add(seq) as u8;
    }
    buf[..8].copy_from_slice(&seq.to_be_bytes());
}

/// Sends each buffer as one datagram on the connected `sock`, with as few
/// `sendmmsg` calls as the kernel takes (one, unless interrupted).
fn send_burst(sock: &UdpSocket, bufs: &[Vec<u8>]) -> Result<()> {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: all-zero is a valid mmsghdr (no name, no control data).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut done = 0;
    while done < msgs.len() {
        let rest = &mut msgs[done..];
        // SAFETY: each header points at its own iovec, each iovec at a
        // buffer of `bufs`; all outlive the call. The socket is connected,
        // so no address is needed.
        let r = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("sendmmsg");
        }
        done += r as usize;
    }
    Ok(())
}

/// The client's two sockets: `tx` sends to the relay, `rx` is the relay's target.
#[derive(Debug)]
pub struct Client {
    tx: UdpSocket,
    rx: UdpSocket,
    /// The first sequence number of the next run: runs never reuse one, so
    /// a copy that arrives after its run counted it lost (a stalled
    /// machine) is recognised as late in the next run, not taken for a
    /// datagram never sent. Runs start above the numbers [`Client::verify`]
    /// uses, for the same reason.
    next_seq: std::cell::Cell<u64>,
}

impl Client {
    /// Binds the target socket (on `target_port`) and the sending socket.
    pub fn new(relay: SocketAddr, target_port: u16) -> Result<Client> {
        let rx = UdpSocket::bind(("127.0.0.1", target_port))
            .with_context(|| format!("binding the relay target 127.0.0.1:{target_port}"))?;
        rx.set_read_timeout(Some(LOSS_TIMEOUT))?;
        let tx = UdpSocket::bind("127.0.0.1:0")?;
        tx.connect(relay)?;
        Ok(Client {
            tx,
            rx,
            next_seq: std::cell::Cell::new(1 << 32),
        })
    }

    /// Checks relaying one datagram at a time, sizes 1 to 1472 bytes.
    pub fn verify(&self) -> Result<()> {
        let mut back = vec![0u8; 2048];
        for (k, size) in [8usize, 64, 512, 1024, 1472].into_iter().enumerate() {
            let mut msg = vec![0u8; size];
            fill(&mut msg, 1_000_000 + k as u64);
            let mut tries = 0;
            loop {
                self.tx.send(&msg)?;
                match self.rx.recv_from(&mut back) {
                    Ok((n, _)) if back[..n] == msg[..] => break,
                    Ok((n, _)) => bail!("a {size}-byte datagram came back as {n} different bytes"),
                    Err(_) if tries < 10 => tries += 1,
                    Err(e) => bail!("a {size}-byte datagram was never relayed: {e}"),
                }
            }
        }
        Ok(())
    }

    /// `n` datagrams of `size` bytes, one in flight at a time, each copy
    /// checked; returns (relayed, lost). For counting what one relayed
    /// datagram costs the relay.
    pub fn relay_each(&self, size: usize, n: u64) -> Result<(u64, u64)> {
        let mut msg = vec![0u8; size.max(8)];
        let mut back = vec![0u8; 65536];
        let (mut relayed, mut lost) = (0u64, 0u64);
        for seq in 0..n {
            fill(&mut msg, seq);
            self.tx.send(&msg)?;
            loop {
                match self.rx.recv_from(&mut back) {
                    Ok((len, _)) => {
                        if len >= 8 && back[..8] == seq.to_be_bytes() {
                            if back[..len] != msg[..] {
                                bail!("udp: datagram {seq} came back different");
                            }
                            relayed += 1;
                            break;
                        }
                        // A late copy of an earlier datagram counted as lost.
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        lost += 1;
                        break;
                    }
                    Err(e) => return Err(e).context("receiving"),
                }
            }
        }
        Ok((relayed, lost))
    }

    /// Closed loop of `load` for `duration`; returns (relayed, lost, elapsed).
    pub fn run(
        &self,
        size: usize,
        load: Load,
        duration: Duration,
        mark: &mut dyn FnMut(bool) -> Result<()>,
    ) -> Result<(u64, u64, Duration)> {
        let mut msg = vec![0u8; size.max(8)];
        let mut burst = match load {
            Load::Burst(b) => vec![vec![0u8; size.max(8)]; b as usize],
            Load::Window(_) => Vec::new(),
        };
        let mut back = vec![0u8; 65536];
        let mut next_send: u64 = self.next_seq.get();
        let mut next_recv: u64 = next_send;
        let mut relayed = 0u64;
        let mut lost = 0u64;
        mark(true)?;
        let t0 = Instant::now();
        let stop_at = t0 + duration;
        let hard = stop_at + Duration::from_secs(10);
        let mut last = t0;
        loop {
            let sending = Instant::now() < stop_at;
            match load {
                Load::Window(w) => {
                    while sending && next_send - next_recv < w {
                        fill(&mut msg, next_send);
                        self.tx.send(&msg)?;
                        next_send += 1;
                    }
                }
                Load::Burst(_) if sending && next_send == next_recv => {
                    for b in burst.iter_mut() {
                        fill(b, next_send);
                        next_send += 1;
                    }
                    send_burst(&self.tx, &burst)?;
                }
                Load::Burst(_) => {}
            }
            if next_recv == next_send {
                break;
            }
            if Instant::now() > hard {
                bail!("udp: still waiting 10 s after the run");
            }
            match self.rx.recv_from(&mut back) {
                Ok((n, _)) => {
                    if n < 8 {
                        bail!("udp: a {n}-byte datagram came back");
                    }
                    let seq = u64::from_be_bytes(back[..8].try_into().expect("8 bytes"));
                    if seq >= next_send {
                        bail!("udp: datagram {seq} came back but was never sent");
                    }
                    if seq < next_recv {
                        // Later than the receive timeout, after it had been
                        // counted as lost (a busy machine): not counted twice.
                        continue;
                    }
                    fill(&mut msg, seq);
                    if n != msg.len() || back[..n] != msg[..] {
                        bail!("udp: datagram {seq} came back different");
                    }
                    lost += seq - next_recv;
                    next_recv = seq + 1;
                    relayed += 1;
                    last = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Whatever is still in flight is gone.
                    lost += next_send - next_recv;
                    next_recv = next_send;
                }
                Err(e) => return Err(e).context("receiving"),
            }
        }
        mark(false)?;
        self.next_seq.set(next_send);
        Ok((relayed, lost, last.duration_since(t0)))
    }
}

/// Starts the C relay forwarding to 127.0.0.1:`target`.
pub fn start_c_relay(ctx: &Ctx, target: u16) -> Result<(Server, SocketAddr)> {
    let port = free_udp_port()?;
    let s = Server::spawn(
        "c-relay",
        &ctx.peers.join("udp_relay"),
        &[port.to_string(), "127.0.0.1".into(), target.to_string()],
        &ctx.work.join("udp_relay.log"),
    )?;
    Ok((s, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Starts loopd's udp-broadcast relaying to 127.0.0.1:`target`. The rate
/// limit is raised out of the way (1M/s per source); the other protections
/// keep their defaults.
pub fn start_loopd_relay(ctx: &Ctx, target: u16) -> Result<(Server, SocketAddr)> {
    start_loopd_relay_from(ctx, &ctx.bin, "loopd-udp", target)
}

/// [`start_loopd_relay`] from the build in `bin`.
pub fn start_loopd_relay_from(
    ctx: &Ctx,
    bin: &std::path::Path,
    name: &str,
    target: u16,
) -> Result<(Server, SocketAddr)> {
    let port = free_udp_port()?;
    let config = format!(
        "{}[[handler]]\nname = \"relay\"\nplugin = \"udp-broadcast\"\nlisten = [\"udp://127.0.0.1:{port}\"]\n[handler.config]\nbroadcast_to = [\"127.0.0.1:{target}\"]\nrate_per_source = 1000000\nburst = 1000000\n",
        peers::RUNTIME_TABLE
    );
    let s = peers::loopd_from(ctx, bin, name, &config, &[])?;
    Ok((s, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Runs the whole UDP benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "udp".into(),
        ..Bench::default()
    };
    let mut relays: Vec<(String, Server, Client)> = Vec::new();
    bench.skipped = handler_built(ctx, "udp-broadcast");
    if bench.skipped.is_none() {
        let target = free_udp_port()?;
        let (s, a) = start_loopd_relay(ctx, target)?;
        relays.push(("loopd".into(), s, Client::new(a, target)?));
        if let Some((s, a, target)) = peers::before("udp", |dir| {
            let target = free_udp_port()?;
            let (s, a) = start_loopd_relay_from(ctx, dir, "loopd-before-udp", target)?;
            Ok((s, a, target))
        }) {
            relays.push(("loopd-before".into(), s, Client::new(a, target)?));
        }
    }
    let target = free_udp_port()?;
    let (s, a) = start_c_relay(ctx, target)?;
    relays.push(("c-relay".into(), s, Client::new(a, target)?));
    for (name, server, client) in relays.iter_mut() {
        // The relay may still be binding: verify retries each datagram.
        std::thread::sleep(Duration::from_millis(100));
        server.check_alive()?;
        client
            .verify()
            .with_context(|| format!("{name} failed the relay check"))?;
        println!("udp: {name} passed the correctness check");
    }
    if !ctx.warmup.is_zero() {
        for (name, server, client) in relays.iter_mut() {
            let mut probe = CpuProbe::new(server);
            client
                .run(64, Load::Window(WINDOW), ctx.warmup, &mut |s| probe.mark(s))
                .with_context(|| format!("{name} warm-up"))?;
        }
    }
    // The window rows are the benchmark's figures since its first run; the
    // burst row adds the pattern where datagrams queue up at the relay.
    for (size, load) in [
        (64usize, Load::Window(WINDOW)),
        (1024, Load::Window(WINDOW)),
        (64, Load::Burst(BURST)),
    ] {
        let (label, params) = match load {
            Load::Window(_) => (format!("{size} B"), [("size".into(), size as f64)].into()),
            Load::Burst(b) => (
                format!("{size} B, bursts of {b}"),
                [("size".into(), size as f64), ("burst".into(), b as f64)].into(),
            ),
        };
        let mut case = Case {
            label,
            params,
            peers: Vec::new(),
        };
        for round in 0..ctx.rounds {
            for (name, server, client) in relays.iter_mut() {
                let mut probe = CpuProbe::new(server);
                let (relayed, lost, elapsed) = client
                    .run(size, load, ctx.run, &mut |s| probe.mark(s))
                    .with_context(|| format!("udp {name} {}", case.label))?;
                let (cpu, wall) = probe.result(ctx.tck);
                if relayed == 0 {
                    bail!("udp {name}: nothing was relayed");
                }
                let mut m = BTreeMap::new();
                m.insert("ops_per_s".into(), relayed as f64 / elapsed.as_secs_f64());
                m.insert("cpu_us_per_op".into(), cpu * 1e6 / relayed as f64);
                m.insert("busy".into(), cpu / wall);
                m.insert("loss".into(), lost as f64);
                println!(
                    "udp {:>18} round {}/{} {:>8}: {:>9.0} datagrams/s  {:>6.2} µs cpu/datagram  busy {:>3.0}%  lost {lost}",
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
    for (_, server, _) in relays.iter_mut() {
        server.check_alive()?;
        server.stop();
    }
    Ok(bench)
}
