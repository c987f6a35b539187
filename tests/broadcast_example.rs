//! examples/broadcast.rs: another thread posts lines with `Handle::post`;
//! the linked handler (built by the program with `HandlerSpec::with`)
//! sends each to every client, in order; the program stops by itself.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::*;

fn example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(root()).args([
                "build",
                "--quiet",
                "-p",
                "loopd",
                "--example",
                "broadcast",
            ]);
            if plugin_dir().ends_with("release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().unwrap().success(), "building the example");
            plugin_dir().join("examples/broadcast")
        })
        .clone()
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_client_gets_every_posted_line_in_order() {
    let mut running = Running(
        Command::new(example())
            .args(["--port", "0", "--ticks", "50", "--clients", "3"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the example"),
    );
    let mut out = BufReader::new(running.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("fanout listening on tcp://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            std::thread::spawn(move || {
                let mut ticks = Vec::new();
                for line in BufReader::new(s).lines() {
                    let line = line.expect("reading the broadcast");
                    if !line.starts_with("* ") {
                        ticks.push(line);
                    }
                }
                ticks
            })
        })
        .collect();
    let want: Vec<String> = (1..=50).map(|i| format!("tick {i}")).collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), want);
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("tick 50 reached 3 clients"), "{rest}");
    assert!(rest.trim_end().ends_with("stopped"), "{rest}");
    assert!(running.0.wait().unwrap().success());
    figure("broadcast_example_lines_per_client", want.len());
}
