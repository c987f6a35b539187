//! Starting the servers: loopd (binary and embedded), tokio, C, nginx,
//! redis. Each starts pinned to the server core with its own port and a log
//! in the run directory, and is ready (accepting) when this returns.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::server::{free_port, Server};
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

/// Starts the `loopd` found in `bin` on `config`.
pub fn loopd_from(
    ctx: &Ctx,
    bin: &Path,
    name: &str,
    config: &str,
    env: &[(&str, &str)],
) -> Result<Server> {
    let path = write_file(&ctx.work, &format!("{name}.toml"), config)?;
    Server::spawn_env(
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
