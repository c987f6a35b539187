//! loopd as a system service: sd_notify messages (`Type=notify`), systemd
//! socket activation (`LISTEN_FDS`), and a binary upgrade (SIGUSR2) under
//! load with no connection refused.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const ECHO: &str = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{dir}/echo.sock"]
"#;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_service_manager_hears_ready_reloading_and_stopping() {
    let dir = TempDir::new("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut loopd = Loopd::start_with(ECHO, "info", |cmd| {
        cmd.env("NOTIFY_SOCKET", &path);
    });
    let ready = recv(&sock);
    assert_eq!(ready, format!("READY=1\nMAINPID={}", loopd.pid()));
    loopd.signal(libc::SIGHUP);
    let reloading = recv(&sock);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(recv(&sock), "READY=1");
    loopd.signal(libc::SIGTERM);
    assert_eq!(recv(&sock), "STOPPING=1");
    assert_eq!(loopd.wait_exit(TIMEOUT).code(), Some(0));
    figure("service.notifications", 4);
}

#[test]
fn a_socket_handed_over_by_systemd_is_adopted_not_bound() {
    activation(1);
}

/// With workers, every worker accepts from the one socket systemd passed.
#[test]
fn workers_share_a_socket_handed_over_by_systemd() {
    activation(2);
}

fn activation(workers: usize) {
    build_plugins();
    let dir = TempDir::new("activation");
    // The "systemd" side: a listening socket bound before loopd starts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = dir.join("loopd.toml");
    std::fs::write(
        &config,
        format!("[runtime]\nworkers = {workers}\n[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://{addr}\"]\n"),
    )
    .unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    // LISTEN_PID must be loopd's own pid: the shell's, which exec keeps.
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(loopd_bin())
        .arg(&config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "echo-tcp")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only dup2 and fcntl between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(3, libc::F_GETFD);
            libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut logs = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + TIMEOUT;
    while !seen.contains(" ready: ") {
        assert!(Instant::now() < deadline);
        let mut line = String::new();
        if logs.read_line(&mut line).unwrap() == 0 {
            panic!("loopd exited:\n{seen}");
        }
        seen.push_str(&line);
    }
    assert!(
        seen.contains("using echo-tcp, handed over by the parent process"),
        "{seen}"
    );
    assert!(
        !seen.contains("already in use") && !seen.contains("matches no listener"),
        "{seen}"
    );
    drop(listener); // loopd holds its own copy now
    for _ in 0..20 {
        let mut s = tcp(addr);
        s.write_all(b"activated").unwrap();
        let mut back = [0u8; 9];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"activated");
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// The pid in the pid file, once it names a process other than `not`.
fn pid_other_than(path: &std::path::Path, not: i32) -> i32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&p| p != not)
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the pid file never changed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Echo round trips on fresh connections from 3 threads, each a new TCP
/// connection, until stopped (at most 200,000 per thread).
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU32>,
    failed: Arc<AtomicU32>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (done, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let clients = (0..3)
            .map(|i| {
                let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::SeqCst) && n < 200_000 {
                        let msg = format!("c{i} {n}");
                        let ok = TcpStream::connect(addr)
                            .and_then(|mut s| {
                                s.set_read_timeout(Some(TIMEOUT))?;
                                s.write_all(msg.as_bytes())?;
                                let mut back = vec![0u8; msg.len()];
                                s.read_exact(&mut back)?;
                                Ok(back == msg.as_bytes())
                            })
                            .unwrap_or(false);
                        if !ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failed,
            clients,
        }
    }

    /// Waits until `n` more round trips than now have completed.
    fn wait_for_more(&self, n: u32) {
        let before = self.done.load(Ordering::SeqCst);
        let deadline = Instant::now() + TIMEOUT;
        while self.done.load(Ordering::SeqCst) < before + n {
            assert!(
                Instant::now() < deadline,
                "no request completed for {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients: (round trips, failed ones).
    fn finish(self) -> (u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.join().unwrap();
        }
        (
            self.done.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// The inodes of the listening TCP sockets on `port` that process `pid`
/// holds (`/proc/PID/fd` against `/proc/net/tcp` and `tcp6`).
fn listening_inodes(pid: i32, port: u16) -> Vec<u64> {
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port) && f[3] == "0A" {
                listening.insert(f[9].parse::<u64>().unwrap());
            }
        }
    }
    let mut held: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?.to_string();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .filter(|i| listening.contains(i))
        .collect();
    held.sort_unstable();
    held.dedup();
    held
}

/// The loopd an upgrade started (not our child): killed if the test fails
/// before it stops it.
struct Successor(i32);

impl Drop for Successor {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: kill(2) on the loopd this test's upgrade started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// Stops the loopd the old one started, and waits until it is gone.
fn stop_new(new: i32) {
    assert!(alive(new));
    // SAFETY: signalling the new loopd, started by the old one.
    unsafe { libc::kill(new, libc::SIGTERM) };
    let deadline = Instant::now() + TIMEOUT;
    while alive(new) {
        assert!(Instant::now() < deadline, "the new loopd did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_binary_upgrade_under_load_refuses_no_connection() {
    upgrade_under_load(1);
}

#[test]
fn a_binary_upgrade_with_workers_hands_over_every_workers_sockets() {
    upgrade_under_load(2);
}

/// SIGUSR2 to a loopd with one worker, `loopd upgrade` to one with
/// `workers` > 1, under continuous load: no connection fails, and the new
/// loopd serves on every socket the old one had (one `SO_REUSEPORT` socket
/// per worker, connections queued on each), binding none of its own.
/// `loopd upgrade` exits 0 once the new process says it took over, naming
/// it; asked after the takeover, while the old one drains, it says the
/// same at once.
fn upgrade_under_load(workers: usize) {
    let config =
        format!("[runtime]\nworkers = {workers}\npid_file = \"{{dir}}/loopd.pid\"\n{ECHO}");
    let mut old = Loopd::start_with(&config, "info", |_| {});
    let addr: SocketAddr = old.tcp("echo");
    let sock = old.unix("echo");
    let pid_file = old.dir.join("loopd.pid");
    let sockets = listening_inodes(old.pid(), addr.port());
    assert_eq!(sockets.len(), workers, "one listening socket per worker");
    let load = Load::start(addr);
    std::thread::sleep(Duration::from_millis(200));
    // A connection the old loopd keeps draining until it is closed.
    let mut held = tcp(addr);
    held.write_all(b"old one").unwrap();
    let mut back = [0u8; 7];
    held.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"old one");
    let said = if workers == 1 {
        old.signal(libc::SIGUSR2);
        None
    } else {
        Some(common::run_loopd(&[
            "upgrade",
            "--pid",
            &old.pid().to_string(),
        ]))
    };
    let new = pid_other_than(&pid_file, old.pid());
    let _reaper = Successor(new);
    if let Some(out) = said {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "loopd (process {}) upgraded: the new loopd (process {new}) took over",
                old.pid()
            )),
            "{stdout}"
        );
    } else {
        // Asked after the takeover (SIGUSR2 started this one) while the old
        // loopd drains the held connection: it says so at once.
        assert!(
            old.wait_for_log(&format!("upgrade: process {new} took over"), TIMEOUT),
            "{}",
            old.logs()
        );
        let out = common::run_loopd(&["upgrade", "--pid", &old.pid().to_string()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains(&format!(
                "loopd (process {}) upgraded: the new loopd (process {new}) took over",
                old.pid()
            )),
            "{stdout}"
        );
    }
    drop(held);
    // The new one got them at exec and is ready (it wrote the pid file);
    // the old one exits after that.
    assert_eq!(
        listening_inodes(new, addr.port()),
        sockets,
        "the new loopd adopted every worker's socket, and bound none of its own"
    );
    // The old one drains and exits by itself, 0.
    assert_eq!(
        old.wait_exit_status(TIMEOUT).code(),
        Some(0),
        "{}",
        old.logs()
    );
    // The new one serves: the load goes on against it.
    load.wait_for_more(200);
    let (total, bad) = load.finish();
    figure(&format!("service.upgrade_w{workers}_requests"), total);
    figure(&format!("service.upgrade_w{workers}_failed"), bad);
    // The Unix socket survived the old process's exit.
    assert_eq!(echo_roundtrip(unix(&sock), b"still here"), b"still here");
    if workers > 1 {
        let threads = thread_names(new);
        for w in 0..workers {
            let name = format!("loopd-worker-{w}");
            assert!(threads.contains(&name), "{name} runs: {threads:?}");
        }
    }
    stop_new(new);
    assert!(!sock.exists(), "the last loopd removed its socket file");
    assert_eq!(
        bad, 0,
        "{bad} of {total} connections failed across the upgrade"
    );
    let logs = old.logs();
    let handed = match workers {
        1 => "with 2 listening sockets;".to_string(),
        n => format!("with {} listening sockets of {n} workers", n + 1),
    };
    assert!(logs.contains(&handed), "{logs}");
}

/// Edits `old`'s config file with `edit`, then `loopd upgrade`: the new
/// loopd fails with an error containing `error`, the old one says it
/// serves on, and so does the command, exiting 1.
fn failed_upgrade(old: &Loopd, edit: impl FnOnce(String) -> String, error: &str) {
    let path = old.dir.join("loopd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&path, edited).unwrap();
    old.expect_error(error);
    old.expect_error("before taking over; this one keeps serving");
    let out = common::run_loopd(&["upgrade", "--pid", &old.pid().to_string()]);
    if !old.wait_for_log("this one keeps serving", TIMEOUT) {
        // It took over instead: stop it too.
        let _reaper = std::fs::read_to_string(old.dir.join("loopd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|&p| p != old.pid())
            .map(Successor);
        panic!("the upgrade did not fail:\n{}", old.logs());
    }
    assert!(old.logs().contains(error), "{}", old.logs());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "loopd upgrade: error: loopd (process {}): upgrade: the new loopd (process ",
            old.pid()
        )) && stderr.contains("before taking over; this one keeps serving; the log says why"),
        "{stderr}"
    );
}

#[test]
fn an_upgrade_to_another_number_of_workers_is_refused_and_the_old_one_serves_on() {
    let config = format!("[runtime]\nworkers = 2\npid_file = \"{{dir}}/loopd.pid\"\n{ECHO}");
    let old = Loopd::start_with(&config, "info", |_| {});
    let addr: SocketAddr = old.tcp("echo");
    failed_upgrade(
        &old,
        |c| c.replace("workers = 2", "workers = 3"),
        "a binary upgrade from several workers keeps their number",
    );
    let logs = old.logs();
    assert!(
        logs.contains("ran 2 workers and handed over their listening sockets (3 in all), but the config asks for 3"),
        "{logs}"
    );
    assert_eq!(echo_roundtrip(tcp(addr), b"still mine"), b"still mine");
    assert_eq!(listening_inodes(old.pid(), addr.port()).len(), 2);
    old.assert_no_unexpected_errors();
}

#[test]
fn a_new_loopd_that_fails_after_adopting_leaves_the_old_one_its_unix_socket() {
    let config = format!("[runtime]\nworkers = 2\npid_file = \"{{dir}}/loopd.pid\"\n{ECHO}");
    let mut old = Loopd::start_with(&config, "info", |_| {});
    let sock = old.unix("echo");
    // The new process adopts the sockets, then fails to bind this one.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    failed_upgrade(
        &old,
        |c| c.replace("echo.sock\"]", &format!("echo.sock\", \"tcp://{busy}\"]")),
        "Address already in use",
    );
    assert!(
        sock.exists(),
        "the failed new loopd removed the socket file"
    );
    assert_eq!(echo_roundtrip(unix(&sock), b"still mine"), b"still mine");
    // No upgrade is under way any more: a shutdown removes the file.
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_exit_status(TIMEOUT).code(), Some(0));
    assert!(!sock.exists(), "the socket file outlived its loopd");
}

/// `workers = "auto"` on N CPUs, then the process may use one (`taskset`,
/// as a container's CPU set can shrink): `loopd upgrade` still succeeds,
/// the new process running N workers (one per socket handed over), and it
/// says why.
#[test]
fn an_upgrade_with_auto_workers_keeps_their_number_when_the_cpus_change() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("one CPU: workers = \"auto\" is 1 worker, which any number may follow");
        return;
    }
    let config = format!("[runtime]\nworkers = \"auto\"\npid_file = \"{{dir}}/loopd.pid\"\n{ECHO}");
    let old = Loopd::start_with(&config, "info", |_| {});
    let addr: SocketAddr = old.tcp("echo");
    assert_eq!(listening_inodes(old.pid(), addr.port()).len(), cpus);
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &old.pid().to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(pinned.success());
    let out = common::run_loopd(&["upgrade", "--pid", &old.pid().to_string()]);
    // Refused, the new process is gone already.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let new = pid_other_than(&old.dir.join("loopd.pid"), old.pid());
    let _reaper = Successor(new);
    let status = std::fs::read_to_string(format!("/proc/{new}/status")).unwrap();
    assert!(
        status.contains("Cpus_allowed_list:\t0\n"),
        "the new loopd may use one CPU:\n{status}"
    );
    let threads = thread_names(new);
    for w in 0..cpus {
        let name = format!("loopd-worker-{w}");
        assert!(threads.contains(&name), "{name} runs: {threads:?}");
    }
    assert_eq!(listening_inodes(new, addr.port()).len(), cpus);
    assert!(
        old.logs().contains(&format!(
            "workers = \"auto\" is 1 here, but the loopd this one takes over from ran {cpus} workers: running {cpus}"
        )),
        "{}",
        old.logs()
    );
    assert_eq!(echo_roundtrip(tcp(addr), b"new one"), b"new one");
    stop_new(new);
}

/// A new binary that never becomes ready (here a script that only sleeps):
/// each `loopd upgrade` that gives up (`--wait 0.2`) closes its request,
/// and the old loopd lets it go at the next one instead of keeping a
/// descriptor per request until the new process ends.
#[test]
fn upgrade_requests_given_up_on_are_let_go_while_the_new_process_hangs() {
    use std::os::unix::fs::PermissionsExt;
    let bin_dir = TempDir::new("upgrade-hang");
    let bin = bin_dir.join("loopd");
    std::fs::copy(loopd_bin(), &bin).unwrap();
    let echo = plugin_dir().join(format!(
        "{}loopd_echo{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let config = format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"{}\"\nlisten = [\"tcp://127.0.0.1:0\"]\n",
        echo.display()
    );
    let bin_for_cmd = bin.clone();
    let old = Loopd::start_with(&config, "info", move |cmd| {
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
        let mut from_copy = Command::new(&bin_for_cmd);
        from_copy
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        *cmd = from_copy;
    });
    // The new "binary" (replaced by rename, as an install does).
    let script = bin_dir.join("loopd.new");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&script, &bin).unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", old.pid()))
            .unwrap()
            .count()
    };
    let ask = || common::run_loopd(&["upgrade", "--pid", &old.pid().to_string(), "--wait", "0.2"]);
    let first = ask();
    assert_eq!(first.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("did not answer within 0.2 s"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = fds();
    for _ in 0..10 {
        assert_eq!(ask().status.code(), Some(1));
    }
    let after = fds();
    assert!(
        after <= before + 1,
        "{before} descriptors before 10 requests given up on, {after} after"
    );
    // The sleeping "new loopd" is the old one's child: end it.
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", old.pid(), old.pid()))
            .unwrap_or_default();
    for child in children.split_whitespace() {
        // SAFETY: kill(2) of the old loopd's child, started by this test.
        unsafe { libc::kill(child.parse().unwrap(), libc::SIGKILL) };
    }
    old.expect_error("exited (signal: 9");
    assert!(old.wait_for_log("before taking over; this one keeps serving", TIMEOUT));
}
