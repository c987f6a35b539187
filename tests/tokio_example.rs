//! examples/tokio.rs runs loopd inside tokio's reactor: a 1 MiB burst is
//! echoed whole with no timer set anywhere (only the `has_pending` loop
//! gets past loopd's per-pass caps under tokio's edge-triggered
//! registration; without it the rest of the burst waits for the next
//! unrelated wake-up), and Ctrl-C stops it gracefully.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use common::*;

fn example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(root())
                .args(["build", "--quiet", "-p", "loopd", "--example", "tokio"]);
            if plugin_dir().ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build --example tokio");
            assert!(status.success(), "building examples/tokio.rs failed");
            plugin_dir().join("examples/tokio")
        })
        .clone()
}

/// Kills the example if the test fails before it exits.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_burst_is_echoed_whole_and_ctrl_c_stops_it() {
    let mut running = Running(
        Command::new(example())
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the example"),
    );
    let child = &mut running.0;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("echo listening on tcp://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Room for the whole burst in flight, so it lands in loopd's socket in
    // one go: one edge for tokio, and more than one capped pass of input
    // (4 reads of 64 KiB) behind it.
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        let size: libc::c_int = 4 << 20;
        // SAFETY: a valid int option for a socket we own.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    let burst: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let t0 = Instant::now();
    s.write_all(&burst).unwrap();
    let mut back = vec![0u8; 1 << 20];
    s.read_exact(&mut back).expect("the whole burst came back");
    assert!(back == burst, "the echo differs");
    figure("tokio_example_echo_ms", t0.elapsed().as_millis());
    figure("tokio_example_burst_bytes", back.len());
    drop(s);
    // Ctrl-C: the example shuts loopd down gracefully and exits.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not stop by itself");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
}
