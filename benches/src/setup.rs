//! Getting a fresh machine ready: Debian packages, the release build, the
//! C peers; and recording the machine, versions and flags.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Flags the C peers are built with.
pub const GCC_FLAGS: &[&str] = &["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11"];

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the Debian packages the peers and wrk come from, if missing:
/// (`binary`, `package`) pairs.
pub fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing {} with apt-get", missing.join(" "));
    let apt = |args: &[&str]| -> Result<bool> {
        Ok(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (are you root on Debian/Ubuntu?)")?
            .success())
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    if !apt(&install)? {
        // The package lists may be missing or stale on a fresh machine.
        if !apt(&["update", "-qq"])? || !apt(&install)? {
            bail!("apt-get could not install {}", missing.join(" "));
        }
    }
    for (bin, pkg) in wanted {
        if !have(bin) {
            bail!("{pkg} is installed but `{bin}` is still not on PATH");
        }
    }
    Ok(())
}

/// Builds the workspace (loopd, every handler plugin, the bench peers) in
/// the profile this runner was built with.
pub fn build_workspace(root: &Path, release: bool) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--workspace"]);
    if release {
        cmd.arg("--release");
    }
    println!("building: {cmd:?}");
    if !cmd.status().context("running cargo build")?.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// Compiles the C peers from `benches/peers/*.c` into `out`.
pub fn build_c_peers(root: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    for name in ["epoll_echo", "udp_relay", "repoll"] {
        let src = root.join("benches/peers").join(format!("{name}.c"));
        let status = Command::new("gcc")
            .args(GCC_FLAGS)
            .arg("-o")
            .arg(out.join(name))
            .arg(&src)
            .status()
            .context("running gcc")?;
        if !status.success() {
            bail!("gcc failed on {}", src.display());
        }
    }
    Ok(())
}

/// The first line a command prints (stdout, else stderr), trimmed.
fn first_line(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not found".into(),
    }
}

/// The version of a package in Cargo.lock.
fn locked_version(root: &Path, krate: &str) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let needle = format!("name = \"{krate}\"\nversion = \"");
    lock.find(&needle)
        .and_then(|i| lock[i + needle.len()..].split('"').next())
        .unwrap_or("?")
        .to_string()
}

/// CPU model, cores, memory and kernel.
pub fn machine() -> BTreeMap<String, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "?".into());
    let mut m = BTreeMap::new();
    m.insert("cpu".into(), model);
    m.insert(
        "cores".into(),
        // The machine's cores, not this process's CPU mask (the runner
        // pins itself to core 0, so available_parallelism says 1).
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| {
                s.lines()
                    .filter(|l| l.starts_with("processor"))
                    .count()
                    .to_string()
            })
            .unwrap_or_else(|_| "?".into()),
    );
    m.insert("memory".into(), mem);
    m.insert("kernel".into(), first_line("uname", &["-sr"]));
    m.insert(
        "governor".into(),
        std::fs::read_to_string("/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "n/a (no cpufreq)".into()),
    );
    m
}

/// Versions of loopd, the peers and the tools.
pub fn versions(root: &Path, bin: &Path) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert(
        "loopd".into(),
        first_line(&bin.join("loopd").display().to_string(), &["--version"]),
    );
    if let Some(dir) = crate::peers::before_dir() {
        v.insert(
            "loopd-before".into(),
            format!(
                "{} from {}",
                first_line(&dir.join("loopd").display().to_string(), &["--version"]),
                std::fs::read_to_string(dir.join("COMMIT"))
                    .map(|c| format!("commit {}", c.trim()))
                    .unwrap_or_else(|_| dir.display().to_string())
            ),
        );
    }
    v.insert("rustc".into(), first_line("rustc", &["--version"]));
    v.insert("tokio".into(), locked_version(root, "tokio"));
    v.insert("polling".into(), locked_version(root, "polling"));
    v.insert("rustls".into(), locked_version(root, "rustls"));
    v.insert("ring".into(), locked_version(root, "ring"));
    v.insert("gcc".into(), first_line("gcc", &["--version"]));
    v.insert("nginx".into(), first_line("nginx", &["-v"]));
    v.insert("redis".into(), first_line("redis-server", &["--version"]));
    v.insert("wrk".into(), first_line("wrk", &["-v"]));
    v.insert("openssl".into(), first_line("openssl", &["version"]));
    v
}

/// Build flags: the cargo profile and the C flags.
pub fn flags(root: &Path, release: bool) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let profile = manifest
        .split("[profile.release]")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| !l.starts_with('['))
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    f.insert(
        "cargo profile".into(),
        if release {
            format!("release ({profile})")
        } else {
            "dev (debug build: smoke only, figures mean nothing)".into()
        },
    );
    f.insert(
        "RUSTFLAGS".into(),
        std::env::var("RUSTFLAGS").unwrap_or_else(|_| "(none)".into()),
    );
    f.insert("gcc".into(), GCC_FLAGS.join(" "));
    f.insert(
        "pinning".into(),
        "server: taskset -c 1; load generator and wrk: core 0".into(),
    );
    f
}

/// `git describe --always --dirty` of the workspace.
pub fn commit(root: &Path) -> String {
    first_line(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "describe",
            "--always",
            "--dirty",
        ],
    )
}

/// The time now, UTC, RFC 3339.
pub fn now_utc() -> String {
    first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}
