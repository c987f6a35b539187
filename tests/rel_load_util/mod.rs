//! Helpers for the load-side reliability tests (slow clients, many
//! connections, fd exhaustion, graceful shutdown): process figures read from
//! /proc, the fd limit, and wrk.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (up to the
/// hard limit); returns the soft limit now in force. Children (loopd)
/// inherit it.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur
}

/// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU time (user + system) the process has used so far.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name is in parentheses and may hold spaces: count fields
    // after the last ')'. utime and stime are fields 14 and 15 (1-based),
    // i.e. the 12th and 13th after the state field.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((utime + stime) * 1000 / hz)
}

/// How many descriptors the process holds open.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Installs `tool` (a Debian package of the same name) if it is missing:
/// .ci/run does this too; a test run on its own should not fail for it.
pub fn need_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", tool])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "{tool} is needed (apt-get install {tool}); .ci/run installs it"
        );
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    pub requests: u64,
    pub rps: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx answers.
    pub errors: u64,
}

/// Runs wrk against `url` for `secs` seconds with `conns` connections on
/// one thread, and parses its summary.
pub fn wrk(url: &str, conns: u32, secs: u32) -> WrkRun {
    need_tool("wrk");
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "10s",
            url,
        ])
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed:\n{text}");
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}"));
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let mut errors = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    errors += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    WrkRun {
        requests,
        rps,
        errors,
    }
}
