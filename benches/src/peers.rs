//! Starting the servers: loopd (binary and embedded), tokio, C, nginx,
//! redis. Each starts pinned to the server core with its own port and a log
//! in the run directory, and is ready (accepting) when this returns.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::server::{free_port, free_udp_port, Server};
use crate::Ctx;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A `[runtime]` table for benchmark configs: room for the idle benchmark's
/// 16k connections.
pub const RUNTIME_TABLE: &str = "[runtime]\nmax_connections = 20000\n\n";

/// A loopd config with one raw echo instance on `port`.
pub fn echo_config(port: u16) -> String {
    let mut c = RUNTIME_TABLE.to_string();
    let _ = write!(
        c,
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\nframing = \"raw\"\n"
    );
    c
}

/// `examples/loopd.toml`, the config loopd ships, made to run beside
/// anything else: every `127.0.0.1` listener on a free port, the Unix
/// socket in the scratch directory (its name prefixed with `tag`), a
/// relative `root` made absolute. Returns it with the address of the
/// listener that ships as `tcp://127.0.0.1:7000` (the echo handler).
pub fn shipped_config(ctx: &Ctx, tag: &str) -> Result<(String, SocketAddr)> {
    let path = ctx.root.join("examples/loopd.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut echo = None;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("listen") {
            // Every quoted URL in the list, rewritten.
            let mut rest = line;
            while let Some(i) = rest.find('"') {
                out.push_str(&rest[..=i]);
                let after = &rest[i + 1..];
                let end = after
                    .find('"')
                    .with_context(|| format!("{}: unterminated string: {line}", path.display()))?;
                let url = &after[..end];
                let new = if let Some(port) = url.strip_prefix("tcp://127.0.0.1:") {
                    let new = free_port()?;
                    if port == "7000" {
                        echo = Some(addr(new));
                    }
                    format!("tcp://127.0.0.1:{new}")
                } else if url.starts_with("udp://127.0.0.1:") {
                    format!("udp://127.0.0.1:{}", free_udp_port()?)
                } else if let Some(sock) = url.strip_prefix("unix://") {
                    let name = Path::new(sock)
                        .file_name()
                        .context("a unix:// URL without a name")?
                        .to_string_lossy();
                    format!(
                        "unix://{}",
                        ctx.work.join(format!("{tag}-{name}")).display()
                    )
                } else {
                    anyhow::bail!("{}: listener {url} cannot be moved aside", path.display());
                };
                out.push_str(&new);
                out.push('"');
                rest = &after[end + 1..];
            }
            out.push_str(rest);
        } else if let Some(value) = t
            .strip_prefix("root = \"")
            .and_then(|v| v.split('"').next())
        {
            let root = ctx.root.join(value);
            let _ = write!(out, "root = \"{}\"", root.display());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let echo =
        echo.with_context(|| format!("{} has no tcp://127.0.0.1:7000 listener", path.display()))?;
    Ok((out, echo))
}

/// loopd on its shipped config ([`shipped_config`]), from the build in
/// `bin`; returns the echo handler's address.
pub fn loopd_shipped_from(
    ctx: &Ctx,
    bin: &Path,
    name: &str,
) -> Result<(String, Server, SocketAddr)> {
    let (config, echo) = shipped_config(ctx, name)?;
    let mut s = loopd_from(ctx, bin, name, &config, &[])?;
    s.wait_tcp(echo)?;
    Ok((name.to_string(), s, echo))
}

/// Starts the `loopd` binary on `config` (plugins found next to it).
pub fn loopd(ctx: &Ctx, name: &str, config: &str) -> Result<Server> {
    loopd_with_env(ctx, name, config, &[])
}

/// [`loopd()`] with extra environment variables (e.g. `RUST_LOG`).
pub fn loopd_with_env(ctx: &Ctx, name: &str, config: &str, env: &[(&str, &str)]) -> Result<Server> {
    loopd_from(ctx, &ctx.bin, name, config, env)
}

/// An older loopd build to compare with, from `LOOPD_BENCH_BEFORE=DIR` (a
/// directory with that build's `loopd` and plugins). Benchmarks that have
/// it run it as one more peer, `loopd-before`, interleaved with the rest:
/// the fair way to measure a fix on a busy machine.
pub fn before_dir() -> Option<PathBuf> {
    std::env::var_os("LOOPD_BENCH_BEFORE").map(PathBuf::from)
}

/// Starts the older build with `start` if `LOOPD_BENCH_BEFORE` names one.
/// An older build may refuse a configuration that uses keys it predates
/// (the shipped config, say): then that benchmark runs without it, and
/// says so, instead of the whole run stopping.
pub fn before<T>(what: &str, start: impl FnOnce(&Path) -> Result<T>) -> Option<T> {
    let dir = before_dir()?;
    match start(&dir) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("loopd-before ({}) left out of {what}: {e:#}", dir.display());
            None
        }
    }
}

/// Starts the `loopd` found in `bin` on `config`.
pub fn loopd_from(
    ctx: &Ctx,
    bin: &Path,
    name: &str,
    config: &str,
    env: &[(&str, &str)],
) -> Result<Server> {
    loopd_on(
        ctx,
        bin,
        &crate::server::SERVER_CORE.to_string(),
        name,
        config,
        env,
    )
}

/// [`loopd_from`] pinned to `cores` (a `taskset -c` list).
pub fn loopd_on(
    ctx: &Ctx,
    bin: &Path,
    cores: &str,
    name: &str,
    config: &str,
    env: &[(&str, &str)],
) -> Result<Server> {
    let path = write_file(&ctx.work, &format!("{name}.toml"), config)?;
    Server::spawn_on(
        cores,
        name,
        &bin.join("loopd"),
        &[path.display().to_string()],
        env,
        &ctx.work.join(format!("{name}.log")),
    )
}

/// loopd with the echo plugin (`libloopd_echo.so`).
pub fn loopd_echo(ctx: &Ctx, name: &str) -> Result<(String, Server, SocketAddr)> {
    loopd_echo_from(ctx, &ctx.bin, name)
}

/// [`loopd_echo()`] from the build in `bin`.
pub fn loopd_echo_from(ctx: &Ctx, bin: &Path, name: &str) -> Result<(String, Server, SocketAddr)> {
    let port = free_port()?;
    let mut s = loopd_from(ctx, bin, name, &echo_config(port), &[])?;
    s.wait_tcp(addr(port))?;
    Ok((name.to_string(), s, addr(port)))
}

/// loopd's echo linked statically into a program (`static-echo`).
pub fn static_echo(ctx: &Ctx) -> Result<(String, Server, SocketAddr)> {
    let port = free_port()?;
    let name = "loopd-static";
    let path = write_file(&ctx.work, "static-echo.toml", &echo_config(port))?;
    let mut s = Server::spawn(
        name,
        &ctx.bin.join("static-echo"),
        &[path.display().to_string()],
        &ctx.work.join("static-echo.log"),
    )?;
    s.wait_tcp(addr(port))?;
    Ok((name.to_string(), s, addr(port)))
}

/// The tokio `current_thread` echo.
pub fn tokio_echo(ctx: &Ctx) -> Result<(String, Server, SocketAddr)> {
    let port = free_port()?;
    let mut s = Server::spawn(
        "tokio",
        &ctx.bin.join("tokio-echo"),
        &[addr(port).to_string()],
        &ctx.work.join("tokio-echo.log"),
    )?;
    s.wait_tcp(addr(port))?;
    Ok(("tokio".to_string(), s, addr(port)))
}

/// The C edge-triggered epoll echo.
pub fn c_echo(ctx: &Ctx) -> Result<(String, Server, SocketAddr)> {
    let port = free_port()?;
    let mut s = Server::spawn(
        "c-epoll",
        &ctx.peers.join("epoll_echo"),
        &[port.to_string()],
        &ctx.work.join("epoll_echo.log"),
    )?;
    s.wait_tcp(addr(port))?;
    Ok(("c-epoll".to_string(), s, addr(port)))
}
