//! Helpers for the UDP tests: datagram receivers, and test networks made of
//! network namespaces (`ip netns`), veth pairs and a bridge on 198.18.0.0/24.
//!
//! Every namespace is named `lpdt-<pid>-<n>-<role>` and deleted when its
//! [`Segment`] is dropped, even when the test fails. Leftovers of earlier
//! runs that crashed (a pid that no longer runs) are deleted before a new
//! segment is made. The bridge lives in a namespace of its own, so the host's
//! own network namespace is never touched.
#![allow(dead_code)]

pub mod relay_ns;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common::{Loopd, TIMEOUT};

/// Stops a loopd running a udp-broadcast instance named `relay` gracefully
/// and returns the relay's final counters (its `stopped:` log line).
pub fn final_stats(loopd: &Loopd) -> HashMap<String, u64> {
    loopd.signal(libc::SIGTERM);
    assert!(
        loopd.wait_for_log("relay: stopped: ", TIMEOUT),
        "{}",
        loopd.logs()
    );
    let logs = loopd.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("relay: stopped: "))
        .unwrap();
    line.split("stopped: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// Prefix of every namespace these tests create.
const PREFIX: &str = "lpdt-";

/// Runs `prog` with `args`; the error says what failed.
pub fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `{prog} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip` with `args`.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

/// Like [`ip`], panicking on failure.
pub fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// Deletes namespaces left by earlier runs whose process is gone.
fn delete_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            eprintln!("udp tests: deleting namespace {name} left by an earlier run");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// One namespace test at a time per test binary: they are paced load tests
/// on a 2-core machine, and run more predictably alone.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether namespaces can be made here. If not, says so loudly and returns
/// `false` (the test then skips), except under CI, where it panics: CI runs
/// as root and these tests must run there.
pub fn netns_available() -> bool {
    static AVAILABLE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut state = AVAILABLE.lock().unwrap_or_else(|e| e.into_inner());
    let result = state.get_or_insert_with(|| {
        delete_leftovers();
        let name = format!("{PREFIX}{}-probe", std::process::id());
        let r = ip(&["netns", "add", &name]);
        let _ = ip(&["netns", "del", &name]);
        r
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            let msg = format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! SKIPPED: this test needs network namespaces (root and iproute2).\n\
                 !! {e}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}(CI is set: namespace tests must run here)");
            }
            eprintln!("{msg}");
            false
        }
    }
}

/// A host on the test segment: a namespace with `eth0` at `ip`/24.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// A test network: a bridge (in namespace `sw`) and hosts attached to it.
pub struct Segment {
    pub switch: String,
    pub hosts: HashMap<String, Host>,
    names: Vec<String>,
}

/// The segment's broadcast address.
pub const BROADCAST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 255);

impl Segment {
    /// Makes a bridge and one host per `(role, last octet)`: host `role` gets
    /// 198.18.0.`octet`. Panics if anything fails (after cleaning up).
    pub fn new(hosts: &[(&str, u8)]) -> Segment {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut seg = Segment {
            switch: format!("{base}-sw"),
            hosts: HashMap::new(),
            names: Vec::new(),
        };
        // From here on, Drop cleans up whatever was made.
        ip_ok(&["netns", "add", &seg.switch]);
        seg.names.push(seg.switch.clone());
        let sw = seg.switch.clone();
        ip_ok(&["-n", &sw, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, (role, octet)) in hosts.iter().enumerate() {
            let ns = format!("{base}-{role}");
            ip_ok(&["netns", "add", &ns]);
            seg.names.push(ns.clone());
            let port = format!("p{i}");
            ip_ok(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip_ok(&["-n", &sw, "link", "set", &port, "master", "br0"]);
            ip_ok(&["-n", &sw, "link", "set", &port, "up"]);
            let addr = Ipv4Addr::new(198, 18, 0, *octet);
            ip_ok(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "brd",
                "+",
                "dev",
                "eth0",
            ]);
            // Like a wire: a UDP GSO send (loopd's send_datagrams) is cut
            // into its datagrams before it leaves the host, as a NIC would
            // put them on the wire, so a capture on the bridge counts
            // datagrams, not the kernel's super-packets.
            ip_ok(&["-n", &ns, "link", "set", "eth0", "gso_max_segs", "1"]);
            ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            seg.hosts.insert(role.to_string(), Host { ns, ip: addr });
        }
        seg.wait_until_connected();
        seg
    }

    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .get(role)
            .unwrap_or_else(|| panic!("no host {role}"))
    }

    pub fn ns(&self, role: &str) -> &str {
        &self.host(role).ns
    }

    /// Waits (bounded) until a broadcast from one host reaches every other:
    /// the bridge forwards and every address is usable.
    fn wait_until_connected(&self) {
        let roles: Vec<&String> = self.hosts.keys().collect();
        if roles.len() < 2 {
            return;
        }
        let sender_role = roles[0];
        let receivers: Vec<(String, UdpSocket)> = roles[1..]
            .iter()
            .map(|r| {
                let s = in_ns(self.ns(r), || UdpSocket::bind("0.0.0.0:0").unwrap());
                (r.to_string(), s)
            })
            .collect();
        let sender = in_ns(self.ns(sender_role), || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_broadcast(true).unwrap();
            s
        });
        for (role, rx) in &receivers {
            rx.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let to = SocketAddr::from((BROADCAST, rx.local_addr().unwrap().port()));
            let deadline = Instant::now() + TIMEOUT;
            let mut buf = [0u8; 16];
            loop {
                sender.send_to(b"ping", to).unwrap();
                if rx.recv(&mut buf).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the test segment never connected {sender_role} to {role}"
                );
            }
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, veth peers included.
        for name in self.names.iter().rev() {
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// The namespace file of `ns`.
fn ns_file(ns: &str) -> File {
    File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("opening /run/netns/{ns}: {e}"))
}

/// Runs `f` on a thread inside network namespace `ns`. Sockets it creates
/// stay in that namespace, whichever thread uses them later.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = ns_file(ns);
    std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// In a child between fork and exec: be killed when the thread that spawned
/// us goes away, so a test killed hard leaves no process running inside a
/// namespace (`Loopd` and `Capture` kill theirs when dropped otherwise).
fn die_with_parent() {
    // SAFETY: prctl with plain values; async-signal-safe.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Starts loopd inside namespace `ns` on `config`.
pub fn loopd_in(ns: &str, config: &str) -> Loopd {
    let file = ns_file(ns);
    let fd = file.as_raw_fd();
    let l = Loopd::start_with(config, "debug", move |cmd| {
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes syscalls (setns, prctl), which are async-signal-safe;
        // `fd` stays open in the parent until spawn has returned.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                die_with_parent();
                Ok(())
            });
        }
    });
    drop(file);
    l
}

/// A UDP socket bound to `addr` with a deep receive buffer (so a paced test
/// never loses datagrams to a momentarily busy reader) and a read timeout.
pub fn receiver(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a c_int option value for the call.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// A received datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// Collects datagrams on `sock` on a background thread until `stop` is
/// received (its datagram is included) or `TIMEOUT` passes, then for
/// `linger` more; returns everything, in order.
pub fn collect(
    sock: UdpSocket,
    stop: &'static [u8],
    linger: Duration,
) -> std::thread::JoinHandle<Vec<Got>> {
    collect_counting(sock, stop, linger).0
}

/// As [`collect`]; the counter says how many datagrams arrived so far (for
/// [`send_windowed`]).
pub fn collect_counting(
    sock: UdpSocket,
    stop: &'static [u8],
    linger: Duration,
) -> (std::thread::JoinHandle<Vec<Got>>, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let handle = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let deadline = Instant::now() + TIMEOUT;
        let mut until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= until.unwrap_or(deadline) {
                return got;
            }
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let data = buf[..n].to_vec();
                    if until.is_none() && data.ends_with(stop) {
                        until = Some(Instant::now() + linger);
                    }
                    got.push(Got { from, data });
                    counter.store(got.len(), Ordering::SeqCst);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("receiving: {e}"),
            }
        }
    });
    (handle, count)
}

/// Sends `count` datagrams made by `payload(i)` to `to`, never more than
/// `window` ahead of what the receivers got (`received()`): however slowly
/// loopd or a receiver is scheduled on a busy machine, no socket buffer on
/// the way can overflow, so every datagram must arrive. Panics, naming the
/// datagram, if the receivers stop making progress for `TIMEOUT` (a lost
/// datagram stalls the window).
pub fn send_windowed(
    sock: &UdpSocket,
    to: SocketAddr,
    count: usize,
    window: usize,
    received: impl Fn() -> usize,
    payload: impl Fn(usize) -> Vec<u8>,
) {
    let mut progress = (0, Instant::now());
    for i in 0..count {
        loop {
            let r = received();
            if r != progress.0 {
                progress = (r, Instant::now());
            }
            if i < r + window {
                break;
            }
            assert!(
                progress.1.elapsed() < TIMEOUT,
                "receivers stalled at {r} datagrams while sending datagram {i} to {to}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        sock.send_to(&payload(i), to)
            .unwrap_or_else(|e| panic!("sending datagram {i} to {to}: {e}"));
    }
}

/// Sends `count` datagrams made by `payload(i)` to `to`, paced: `batch` at a
/// time, then a pause of `pause`.
pub fn send_paced(
    sock: &UdpSocket,
    to: SocketAddr,
    count: usize,
    batch: usize,
    pause: Duration,
    payload: impl Fn(usize) -> Vec<u8>,
) {
    for i in 0..count {
        let p = payload(i);
        loop {
            match sock.send_to(&p, to) {
                Ok(_) => break,
                // A full send buffer: wait a moment and send it again.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("sending datagram {i} to {to}: {e}"),
            }
        }
        if (i + 1) % batch == 0 {
            std::thread::sleep(pause);
        }
    }
}

/// A test payload: `<tag> <i> ` followed by deterministic bytes, so loss,
/// duplication, reordering or corruption all show.
pub fn numbered(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{tag} {i:06} ").into_bytes();
    let mut x = (i as u32).wrapping_mul(2_654_435_761) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// `tcpdump` counting frames on an interface of a namespace.
pub struct Capture {
    child: Child,
    stdout: Option<std::thread::JoinHandle<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
}

/// Whether tcpdump is installed.
pub fn have_tcpdump() -> bool {
    Command::new("tcpdump")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Capture {
    /// Starts `tcpdump -i <iface> <filter>` in `ns`; returns once it listens.
    pub fn start(ns: &str, iface: &str, filter: &str) -> Capture {
        // -q: one short line per frame; -l: line-buffered; -p: no promiscuous
        // mode (a bridge sees broadcasts anyway); -B: a deep capture buffer.
        let mut cmd = Command::new("ip");
        // SAFETY: only an async-signal-safe syscall between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                die_with_parent();
                Ok(())
            });
        }
        let mut child = cmd
            .args([
                "netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-q", "-l", "-p",
            ])
            .args(["-B", "8192"])
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stdout =
            std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).collect());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let e = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().unwrap().push(line);
            }
        });
        let c = Capture {
            child,
            stdout: Some(stdout),
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        let deadline = Instant::now() + TIMEOUT;
        while !c
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("listening on"))
        {
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start: {:?}",
                c.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        c
    }

    /// Stops tcpdump; returns the frames it printed and how many the kernel
    /// dropped before tcpdump could read them.
    pub fn stop(mut self) -> (Vec<String>, u64) {
        // SAFETY: signalling our own child (ip netns exec execs tcpdump).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + TIMEOUT;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
        // The process is gone: both pipes are at EOF.
        let lines = self.stdout.take().unwrap().join().unwrap();
        self.stderr_thread.take().unwrap().join().unwrap();
        let dropped = self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("dropped by kernel"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        (lines, dropped)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
