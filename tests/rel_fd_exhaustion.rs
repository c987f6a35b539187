//! Reliability: descriptor exhaustion. loopd runs with RLIMIT_NOFILE = 64
//! (as under `prlimit --nofile=64`) while 200 echo clients arrive. At the
//! limit loopd must not spin (it pauses the listener after EMFILE and
//! retries after a back-off), the connections it holds must keep working,
//! and once descriptors are freed the waiting clients must be served
//! promptly, until all 200 have been.

mod common;
mod rel_load_util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};

use common::*;
use rel_load_util::*;

const CLIENTS: usize = 200;
const NOFILE: u64 = 64;
/// Clients closed to free descriptors for the "served within 1 s" figure.
const FREED: usize = 10;

/// Runs loopd with a soft and hard RLIMIT_NOFILE of `n`.
fn limit_nofile(cmd: &mut Command, n: u64) {
    // SAFETY: the hook runs in the forked child before exec and only calls
    // setrlimit, which is async-signal-safe; it touches no shared state.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn message(i: usize) -> Vec<u8> {
    format!("c{i:03}\n").into_bytes()
}

/// The arriving clients: each sent its message right after connecting and
/// waits (in the poller) for the echo, which comes once loopd accepts it.
struct Arrivals {
    poller: Poller,
    events: Events,
    clients: Vec<Option<TcpStream>>,
    got: Vec<Vec<u8>>,
    served: Vec<bool>,
    /// Served clients still in the poller.
    watched: Vec<bool>,
}

impl Arrivals {
    fn connect(addr: std::net::SocketAddr, n: usize) -> Arrivals {
        let poller = Poller::new().unwrap();
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            // The handshake completes in the kernel's backlog whether or not
            // loopd can accept.
            let mut s = tcp(addr);
            s.write_all(&message(i)).unwrap();
            s.set_nonblocking(true).unwrap();
            // SAFETY: removed from the poller before the stream is dropped
            // (`close`, and Drop below).
            unsafe { poller.add_with_mode(&s, Event::readable(i), PollMode::Level) }.unwrap();
            clients.push(Some(s));
        }
        Arrivals {
            poller,
            events: Events::new(),
            clients,
            got: vec![Vec::new(); n],
            served: vec![false; n],
            watched: vec![true; n],
        }
    }

    fn served(&self) -> usize {
        self.served.iter().filter(|s| **s).count()
    }

    /// Waits for echoes until `want` clients are served in all, or nothing
    /// arrives for `quiet`, or `limit` passes. Returns the served count.
    fn wait(&mut self, want: usize, quiet: Duration, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut last = Instant::now();
        let mut buf = [0u8; 64];
        while self.served() < want && Instant::now() < deadline && last.elapsed() < quiet {
            self.events.clear();
            self.poller
                .wait(&mut self.events, Some(Duration::from_millis(50)))
                .unwrap();
            let ready: Vec<usize> = self.events.iter().map(|e| e.key).collect();
            for i in ready {
                let Some(s) = self.clients[i].as_mut() else {
                    continue;
                };
                match s.read(&mut buf) {
                    Ok(0) => panic!("client {i} was closed by loopd"),
                    Ok(n) => self.got[i].extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("client {i}: {e}"),
                }
                if self.got[i] == message(i) {
                    self.served[i] = true;
                    self.poller.delete(&*s).unwrap();
                    self.watched[i] = false;
                    last = Instant::now();
                } else {
                    assert!(
                        message(i).starts_with(&self.got[i]),
                        "client {i}: wrong echo"
                    );
                }
            }
        }
        self.served()
    }

    /// Closes a served client, which frees one of loopd's descriptors.
    fn close(&mut self, i: usize) {
        assert!(self.served[i]);
        self.clients[i] = None;
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        for (i, c) in self.clients.iter().enumerate() {
            if let (Some(s), true) = (c, self.watched[i]) {
                let _ = self.poller.delete(s);
            }
        }
    }
}

#[test]
fn at_the_fd_limit_loopd_idles_keeps_its_clients_and_serves_the_rest_when_fds_free() {
    let window = Duration::from_secs(tier(3, 10));
    let config = r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
"#;
    let loopd = Loopd::start_with(config, "info", |cmd| limit_nofile(cmd, NOFILE));
    let pid = loopd.pid();
    let addr = loopd.tcp("echo");

    let mut arrivals = Arrivals::connect(addr, CLIENTS);
    // Those loopd can take are served; the rest wait in the backlog.
    let first = arrivals.wait(CLIENTS, Duration::from_secs(2), TIMEOUT);
    figure("rel_fd_exhaustion.served_at_limit", first);
    assert!(
        first > 0 && first < CLIENTS,
        "{first} of {CLIENTS} served under a limit of {NOFILE} descriptors"
    );
    assert!(
        loopd.wait_for_log("Too many open files", TIMEOUT),
        "loopd never reported EMFILE:\n{}",
        loopd.logs()
    );

    // At the limit, with clients still waiting: loopd should be idle apart
    // from retrying accept after each back-off.
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let cpu = cpu_time(pid) - cpu0;
    let pct = cpu.as_secs_f64() * 100.0 / t0.elapsed().as_secs_f64();
    figure("rel_fd_exhaustion.cpu_pct_at_limit", format!("{pct:.2}"));
    assert!(
        pct <= 5.0,
        "loopd used {pct:.1}% of a core while at the fd limit (spinning?)"
    );
    assert_eq!(
        arrivals.served(),
        first,
        "served while no descriptor was free"
    );

    // The connections loopd holds are unaffected.
    let held: Vec<usize> = (0..CLIENTS).filter(|&i| arrivals.served[i]).collect();
    let mut ok = 0;
    for &i in &held {
        let s = arrivals.clients[i].as_mut().unwrap();
        s.set_nonblocking(false).unwrap();
        let msg = format!("again-{i:03}/");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        if s.read_exact(&mut back).is_ok() && back == msg.as_bytes() {
            ok += 1;
        }
    }
    figure("rel_fd_exhaustion.existing_ok", ok);
    figure("rel_fd_exhaustion.existing", held.len());
    assert_eq!(ok, held.len(), "held connections failed at the fd limit");

    // Free a few descriptors: as many waiting clients are served, within
    // the issue's 1 s. loopd retries accept every 100 ms; the bound has 2 s
    // of slack on top for a loaded 2-core machine (the figure shows the
    // real time).
    let t_free = Instant::now();
    for &i in held.iter().take(FREED) {
        arrivals.close(i);
    }
    let now_served = arrivals.wait(first + FREED, TIMEOUT, TIMEOUT);
    let after_free = t_free.elapsed();
    figure(
        "rel_fd_exhaustion.served_after_free_ms",
        after_free.as_millis(),
    );
    assert!(
        now_served >= first + FREED,
        "{} waiting clients served after {FREED} descriptors were freed",
        now_served - first
    );
    assert!(
        after_free <= Duration::from_secs(3),
        "waiting clients were served {after_free:?} after descriptors were freed"
    );

    // Close everyone served, round after round: every client is served.
    let deadline = Instant::now() + 2 * TIMEOUT;
    while arrivals.served() < CLIENTS && Instant::now() < deadline {
        let mut freed = 0;
        for i in 0..CLIENTS {
            if arrivals.served[i] && arrivals.clients[i].is_some() {
                arrivals.close(i);
                freed += 1;
            }
        }
        let want = (arrivals.served() + freed).min(CLIENTS);
        arrivals.wait(want, Duration::from_secs(2), TIMEOUT);
    }
    figure("rel_fd_exhaustion.served_total", arrivals.served());
    assert_eq!(arrivals.served(), CLIENTS, "clients never served");
}
