//! Benchmark 4, idle connections: how much user-space memory a server holds
//! per open, idle connection. loopd's echo, nginx and the tokio echo each
//! get N ∈ {0, 1k, 2k, 4k, 8k, 16k} connections (each used once: one echo
//! round trip, or one keep-alive GET for nginx), then the server's resident
//! memory is read from `/proc/PID/smaps_rollup`; the figure is the
//! least-squares slope of bytes over N.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http::{self, make_site};
use crate::results::{Bench, Case};
use crate::server::Server;
use crate::stats::slope;
use crate::{peers, procfs, Ctx};

/// How long the server gets to settle before its memory is read.
const SETTLE: Duration = Duration::from_millis(300);

/// One use of a fresh connection before it goes idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Send 64 bytes, read them back.
    Echo,
    /// One keep-alive GET of the small file.
    Http,
}

fn open_one(addr: SocketAddr, how: Use, buf: &mut Vec<u8>) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    // Closing resets the connection: no TIME_WAIT pile-up across rounds.
    set_linger_zero(&s);
    match how {
        Use::Echo => {
            let msg = [b'i'; 64];
            s.write_all(&msg)?;
            let mut back = [0u8; 64];
            s.read_exact(&mut back)?;
            if back != msg {
                bail!("idle: echo came back wrong");
            }
        }
        Use::Http => {
            s.write_all(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
            // Read the whole response (612-byte body) before going idle.
            buf.clear();
            loop {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    bail!("idle: nginx closed a keep-alive connection");
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    if buf.len() >= h + 4 + 612 {
                        break;
                    }
                }
            }
            if !buf.starts_with(b"HTTP/1.1 200") {
                bail!("idle: GET did not return 200");
            }
        }
    }
    Ok(s)
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Memory of the server's processes: (Rss, Anonymous), bytes.
fn memory(server: &mut Server) -> Result<(u64, u64)> {
    let mut rss = 0;
    let mut anon = 0;
    for pid in server.pids() {
        let m = procfs::smaps_rollup(pid)?;
        rss += m["Rss"];
        anon += m.get("Anonymous").copied().unwrap_or(0);
    }
    Ok((rss, anon))
}

fn fds(server: &mut Server) -> Result<usize> {
    let mut n = 0;
    for pid in server.pids() {
        n += procfs::fd_count(pid)?;
    }
    Ok(n)
}

/// One round: a fresh server, connections added step by step.
fn round(
    server: &mut Server,
    addr: SocketAddr,
    how: Use,
    steps: &[usize],
) -> Result<BTreeMap<String, f64>> {
    let mut conns = Vec::with_capacity(*steps.last().unwrap_or(&0));
    let mut buf = Vec::new();
    let mut points = Vec::new();
    let mut anon_points = Vec::new();
    let mut m = BTreeMap::new();
    // Warm the server with one connection used and closed, so lazily
    // made start-up state is not counted per connection.
    drop(open_one(addr, how, &mut buf)?);
    std::thread::sleep(SETTLE);
    let base_fds = fds(server)?;
    for &n in steps {
        while conns.len() < n {
            conns.push(
                open_one(addr, how, &mut buf)
                    .with_context(|| format!("opening idle connection {}", conns.len() + 1))?,
            );
        }
        std::thread::sleep(SETTLE);
        server.check_alive()?;
        let held = fds(server)? - base_fds;
        if held < n {
            bail!("the server holds {held} connections, not {n}");
        }
        let (rss, anon) = memory(server)?;
        points.push((n as f64, rss as f64));
        anon_points.push((n as f64, anon as f64));
        m.insert(format!("rss_{n}"), rss as f64);
    }
    m.insert(
        "bytes_per_conn".into(),
        slope(&points).context("need two steps")?,
    );
    m.insert(
        "anon_bytes_per_conn".into(),
        slope(&anon_points).context("need two steps")?,
    );
    Ok(m)
}

/// Runs the whole idle-connection benchmark.
pub fn bench(ctx: &Ctx) -> Result<Bench> {
    let mut bench = Bench {
        id: "idle".into(),
        ..Bench::default()
    };
    let steps: &[usize] = if ctx.smoke {
        &[0, 100, 200]
    } else {
        &[0, 1000, 2000, 4000, 8000, 16000]
    };
    let root = ctx.work.join("www-idle");
    make_site(&root)?;
    let mut case = Case {
        label: format!("N = {steps:?}"),
        params: steps
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("step_{i}"), *n as f64))
            .collect(),
        peers: Vec::new(),
    };
    let peer_names = ["loopd", "nginx", "tokio"];
    for r in 0..ctx.rounds {
        for name in peer_names {
            let (mut server, addr, how) = match name {
                "loopd" => {
                    let (_, s, a) = peers::loopd_echo(ctx, "loopd")?;
                    (s, a, Use::Echo)
                }
                "nginx" => {
                    let (s, a) = http::start_nginx(ctx, &root)?;
                    (s, a, Use::Http)
                }
                _ => {
                    let (_, s, a) = peers::tokio_echo(ctx)?;
                    (s, a, Use::Echo)
                }
            };
            let m = round(&mut server, addr, how, steps)
                .with_context(|| format!("idle {name} round {}", r + 1))?;
            server.stop();
            println!(
                "idle round {}/{} {:>6}: {:>7.0} B/conn resident ({:.0} B/conn anonymous); {:.1} MiB at {} connections",
                r + 1,
                ctx.rounds,
                name,
                m["bytes_per_conn"],
                m["anon_bytes_per_conn"],
                m[&format!("rss_{}", steps[steps.len() - 1])] / (1 << 20) as f64,
                steps[steps.len() - 1]
            );
            case.push(name, m);
        }
    }
    bench.cases.push(case);
    Ok(bench)
}
