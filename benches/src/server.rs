//! Servers under test: started pinned to the server core, watched, and
//! always stopped (SIGTERM, then SIGKILL), even when the runner fails or
//! panics. Each one also dies with the runner (`PR_SET_PDEATHSIG`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procfs;

/// The core servers run on; the load generators run on [`CLIENT_CORE`].
pub const SERVER_CORE: usize = 1;
/// The core the runner and its load generators (and wrk) run on.
pub const CLIENT_CORE: usize = 0;
/// Longest wait for a server to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (the kernel's pick, released again).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(l.local_addr()?.port())
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(s.local_addr()?.port())
}

/// A running server process.
#[derive(Debug)]
pub struct Server {
    /// Short name used in logs and results (`loopd`, `nginx`, ...).
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Processes whose CPU time counts (the server, and its workers).
    cpu_pids: Vec<u32>,
    count_children: bool,
}

impl Server {
    /// Starts `program args` pinned to [`SERVER_CORE`] with `taskset`,
    /// stdout and stderr going to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Server> {
        Server::spawn_env(name, program, args, &[], log)
    }

    /// [`Server::spawn`] with extra environment variables.
    pub fn spawn_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Server> {
        Server::spawn_on(&SERVER_CORE.to_string(), name, program, args, env, log)
    }

    /// [`Server::spawn_env`] pinned to `cores` (a `taskset -c` list such as
    /// `0,1`) instead of the server core.
    pub fn spawn_on(
        cores: &str,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Server> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cores)
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {}", program.display()))?;
        let pid = child.id();
        Ok(Server {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
            cpu_pids: vec![pid],
            count_children: false,
        })
    }

    /// Counts the CPU time of the server's child processes too (nginx's
    /// worker does the work; the master sleeps).
    pub fn with_children(mut self) -> Server {
        self.count_children = true;
        self
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.cpu_pids[0]
    }

    /// The pids whose CPU and memory count: the server and, with
    /// [`Server::with_children`], its workers.
    pub fn pids(&mut self) -> Vec<u32> {
        if self.count_children && self.cpu_pids.len() == 1 {
            let kids = procfs::children(self.pid());
            self.cpu_pids.extend(kids);
        }
        self.cpu_pids.clone()
    }

    /// CPU time used so far, in clock ticks.
    pub fn cpu_ticks(&mut self) -> Result<u64> {
        let mut sum = 0;
        for pid in self.pids() {
            sum += procfs::cpu_ticks(pid)
                .with_context(|| format!("{} (pid {pid}) is gone", self.name))?;
        }
        Ok(sum)
    }

    /// Fails with the end of the log if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}); end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    /// Waits until a TCP connection to `addr` succeeds.
    pub fn wait_tcp(&mut self, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept on {addr} within {START_TIMEOUT:?}; end of its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Stops the server: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(3));
    }

    /// Stops the server: SIGTERM, then SIGKILL after `grace` (a server under
    /// valgrind needs longer to exit and write its profile). Returns whether
    /// it exited by itself.
    pub fn stop_within(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("{} ignored SIGTERM for {grace:?}; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
        for pid in self.cpu_pids.iter().skip(1) {
            // SAFETY: plain syscall; the worker of a server we started.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Server CPU time and wall time between two marks.
#[derive(Debug)]
pub struct CpuProbe<'a> {
    server: &'a mut Server,
    ticks: u64,
    at: Instant,
    cpu_secs: f64,
    wall_secs: f64,
}

impl<'a> CpuProbe<'a> {
    /// A probe on `server`.
    pub fn new(server: &'a mut Server) -> CpuProbe<'a> {
        CpuProbe {
            server,
            ticks: 0,
            at: Instant::now(),
            cpu_secs: 0.0,
            wall_secs: 0.0,
        }
    }

    /// `true`: the timed window starts; `false`: it ends.
    pub fn mark(&mut self, start: bool) -> Result<()> {
        let ticks = self.server.cpu_ticks()?;
        if start {
            self.ticks = ticks;
            self.at = Instant::now();
        } else {
            self.wall_secs = self.at.elapsed().as_secs_f64();
            self.cpu_secs = ticks.saturating_sub(self.ticks) as f64;
        }
        Ok(())
    }

    /// (server CPU seconds, wall seconds) of the window.
    pub fn result(&self, tck: u64) -> (f64, f64) {
        (self.cpu_secs / tck as f64, self.wall_secs)
    }
}
