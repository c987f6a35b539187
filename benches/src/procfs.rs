//! What the runner reads from `/proc` and asks of the kernel: CPU time and
//! memory of a server, the load average, pinning and file limits.

use std::collections::BTreeMap;
use std::io;

use anyhow::{bail, Context, Result};

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// `utime + stime` of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    stat_ticks(&stat).with_context(|| format!("malformed /proc/{pid}/stat"))
}

/// `utime + stime` from the text of a `/proc/PID/stat` (or
/// `/proc/PID/task/TID/stat`), in clock ticks.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may contain spaces: fields
    // are counted after the last ')'. utime and stime are fields 14 and 15,
    // i.e. the 12th and 13th after the name.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid of a process, if it still exists.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Direct children of a process (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| ppid(p) == Some(pid))
        .collect()
}

/// `/proc/PID/smaps_rollup` as bytes per field (`Rss`, `Anonymous`, ...).
pub fn smaps_rollup(pid: u32) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value), Some("kB")) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let (Some(key), Ok(kb)) = (key.strip_suffix(':'), value.parse::<u64>()) {
            out.insert(key.to_string(), kb * 1024);
        }
    }
    if !out.contains_key("Rss") {
        bail!("/proc/{pid}/smaps_rollup has no Rss line");
    }
    Ok(out)
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(-1.0));
    [
        it.next().unwrap_or(-1.0),
        it.next().unwrap_or(-1.0),
        it.next().unwrap_or(-1.0),
    ]
}

/// Pins the calling thread (the runner, hence the load generators) to one core.
pub fn pin_self(core: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit (children inherit it);
/// returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit; raising soft to hard needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod stat_tests {
    use super::stat_ticks;

    #[test]
    fn ticks_are_counted_after_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194304 10 0 0 0 7 5 0 0 20 0 3 0 100";
        assert_eq!(stat_ticks(stat), Some(12));
        assert_eq!(stat_ticks("42 (x) S 1"), None);
    }
}
