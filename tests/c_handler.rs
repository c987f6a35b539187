//! The C handler example (examples/c-handler): it builds with its own
//! Makefile under -Werror, exports only its entry symbol, loads into loopd by
//! path, and upper-cases an echo byte-exactly.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The example, built in a temp dir (removed on drop).
struct Upper {
    dir: TempDir,
    so: PathBuf,
}

/// Copies examples/c-handler into a temp dir and runs its Makefile there
/// against the workspace's loopd.h.
fn build_upper() -> Upper {
    let dir = TempDir::new("c-handler");
    let src = root().join("examples/c-handler");
    for file in ["Makefile", "upper.c", "README.md"] {
        std::fs::copy(src.join(file), dir.join(file))
            .unwrap_or_else(|e| panic!("copying examples/c-handler/{file}: {e}"));
    }
    let include = root().join("handler-api/include");
    let output = Command::new("make")
        .arg("-C")
        .arg(dir.path())
        .arg(format!("LOOPD_INCLUDE={}", include.display()))
        // The Makefile's own defaults, not whatever the environment says.
        .env_remove("CFLAGS")
        .env_remove("CC")
        .env_remove("LDFLAGS")
        .env_remove("MAKEFLAGS")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `make` ({e}): install make and gcc (apt-get install make gcc)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "make -C examples/c-handler failed:\n{stdout}\n{stderr}"
    );
    // The compile line make ran uses the strict flags the ABI promises,
    // and the compiler said nothing (no warnings at all).
    let compile = stdout
        .lines()
        .find(|l| l.contains("upper.c"))
        .unwrap_or_else(|| panic!("make did not show the compile command:\n{stdout}"));
    for flag in [
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-fPIC",
        "-shared",
    ] {
        assert!(
            compile.split_whitespace().any(|w| w == flag),
            "`{flag}` missing from: {compile}"
        );
    }
    assert!(
        !stderr.contains("warning"),
        "the example compiles with warnings:\n{stderr}"
    );
    let so = dir.join("libloopd_upper.so");
    assert!(so.exists(), "make did not produce {}", so.display());
    Upper { dir, so }
}

impl Upper {
    fn so(&self) -> &Path {
        &self.so
    }

    /// A config with upper on a TCP port and a Unix socket.
    fn config(&self) -> String {
        format!(
            r#"
[[handler]]
name = "upper"
plugin = "{}"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/upper.sock"]
"#,
            self.so.display()
        )
    }
}

/// What upper sends back for `data`.
fn upcase(data: &[u8]) -> Vec<u8> {
    data.iter().map(u8::to_ascii_uppercase).collect()
}

#[test]
fn example_exports_only_its_entry_symbol() {
    let upper = build_upper();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(upper.so())
        .output()
        .expect("nm (binutils) must be installed");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(names, ["loopd_plugin_entry_v1"], "nm -D output:\n{text}");
}

#[test]
fn check_lists_the_c_plugin() {
    let upper = build_upper();
    let config = write_config(&upper.dir, &upper.config());
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "{}: ok\n  upper: upper 0.1.0 ({})\n",
            config.display(),
            upper.so().display()
        )
    );
}

#[test]
fn hello_world_comes_back_upper_cased() {
    let upper = build_upper();
    let loopd = Loopd::start(&upper.config());
    let mut s = tcp(loopd.tcp("upper"));
    s.write_all(b"hello world\n").unwrap();
    let mut got = [0u8; 12];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HELLO WORLD\n");

    let mut u = unix(&loopd.unix("upper"));
    u.write_all(b"over unix: ok?\n").unwrap();
    let mut line = String::new();
    BufReader::new(u).read_line(&mut line).unwrap();
    assert_eq!(line, "OVER UNIX: OK?\n");
}

#[test]
fn every_byte_value_passes_and_only_a_to_z_change() {
    let upper = build_upper();
    let loopd = Loopd::start(&upper.config());
    let data: Vec<u8> = (0..=255u8).collect();
    let got = echo_roundtrip(tcp(loopd.tcp("upper")), &data);
    for (i, (&sent, &back)) in data.iter().zip(&got).enumerate() {
        let expected = if sent.is_ascii_lowercase() {
            sent - b'a' + b'A'
        } else {
            sent
        };
        assert_eq!(
            back, expected,
            "byte {i} ({sent:#04x}) came back as {back:#04x}"
        );
    }
}

#[test]
fn one_mib_comes_back_upper_cased_exactly() {
    // upper closes a connection whose output queue is full (it never drops
    // bytes silently); a high watermark above the payload keeps that policy
    // out of a test about the transformation.
    let upper = build_upper();
    let loopd = Loopd::start(&format!(
        "{}output_high_watermark = 4194304\n",
        upper.config()
    ));
    let data = pattern(1 << 20, 42);
    let expected = upcase(&data);
    assert!(
        expected != data,
        "the pattern must contain lower-case letters"
    );
    let got = echo_roundtrip(tcp(loopd.tcp("upper")), &data);
    assert!(got == expected, "1 MiB over tcp differs");
    let got = echo_roundtrip(unix(&loopd.unix("upper")), &data);
    assert!(got == expected, "1 MiB over unix differs");
}

#[test]
fn two_concurrent_clients_get_their_own_echo() {
    let upper = build_upper();
    let loopd = Loopd::start(&upper.config());
    let addr = loopd.tcp("upper");

    // Interleaved: each client's reply is its own.
    let mut a = tcp(addr);
    let mut b = tcp(addr);
    for round in 0..20 {
        let ma = format!("client a, round {round}\n");
        let mb = format!("client b says {round}\n");
        a.write_all(ma.as_bytes()).unwrap();
        b.write_all(mb.as_bytes()).unwrap();
        let mut ga = vec![0u8; ma.len()];
        let mut gb = vec![0u8; mb.len()];
        b.read_exact(&mut gb).unwrap();
        a.read_exact(&mut ga).unwrap();
        assert_eq!(ga, upcase(ma.as_bytes()));
        assert_eq!(gb, upcase(mb.as_bytes()));
    }

    // Simultaneous bulk transfers on two threads.
    let threads: Vec<_> = (0..2u8)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(200_000, 7 + i);
                let got = echo_roundtrip(tcp(addr), &data);
                assert!(got == upcase(&data), "client {i}: echo differs");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn half_close_gets_the_echo_then_eof() {
    let upper = build_upper();
    let loopd = Loopd::start(&upper.config());
    let mut s = tcp(loopd.tcp("upper"));
    s.write_all(b"bye now").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("the echo, then EOF");
    assert_eq!(got, b"BYE NOW");
}

#[test]
fn handler_config_is_refused() {
    let upper = build_upper();
    let config = write_config(
        &upper.dir,
        &format!("{}[handler.config]\nshout = true\n", upper.config()),
    );
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "handler `upper`: plugin {}: create failed: upper takes no configuration; remove [handler.config]",
            upper.so().display()
        )),
        "{stderr}"
    );
}
