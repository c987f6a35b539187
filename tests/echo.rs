//! Echo over TCP and over a Unix socket: byte-exact at every size, many
//! clients at once, quick successive sends, half-close.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Barrier;
use std::time::Duration;

use common::*;

const CONFIG: &str = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{dir}/echo.sock"]
"#;

/// 1 byte to 8 MiB, including sizes around the 64 KiB read buffer.
const SIZES: &[usize] = &[
    1,
    2,
    100,
    4095,
    4096,
    65_535,
    65_536,
    65_537,
    1 << 20,
    8 << 20,
];

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

/// A burst that takes more than one readiness event's reads (raw framing
/// reads at most `max_frame` bytes at a time, and 4 reads per event) comes
/// back whole although the client sends nothing after it: what an event's
/// reads leave in the socket is read on the next pass, which no new event
/// would report (connections are edge-triggered).
#[test]
fn a_burst_longer_than_one_events_reads_comes_back_whole() {
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "unix://{dir}/echo.sock"]
max_frame = 1024
"#,
    );
    fn burst<S: Read + Write>(mut s: S, what: &str, seed: u8) {
        // 60 KB: 15 events' reads, well within the sockets' buffers, so it
        // is all sent while the client reads nothing.
        let data = pattern(60_000, seed);
        s.write_all(&data).unwrap();
        let mut got = vec![0; data.len()];
        let mut n = 0;
        while n < got.len() {
            match s.read(&mut got[n..]) {
                Ok(0) => panic!("{what}: EOF after {n} of {} bytes", data.len()),
                Ok(k) => n += k,
                Err(e) => panic!("{what}: {e} after {n} of {} bytes came back", data.len()),
            }
        }
        assert!(got == data, "{what}: the echo differs");
    }
    let t = tcp(loopd.tcp("echo"));
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    burst(t, "tcp", 1);
    let u = unix(&loopd.unix("echo"));
    u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    burst(u, "unix", 2);
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

/// A message and the end of the stream that arrive together (a client that
/// writes, then shuts its side down at once: `printf 'hi' | nc -q1`): the
/// read that takes the message comes back short with the peer's EOF still
/// unread, and the EOF must be noticed all the same, however the socket is
/// polled. Over TCP and a Unix socket, 200 times each.
#[test]
fn a_message_and_eof_that_arrive_together_get_the_echo_then_eof() {
    let loopd = Loopd::start(CONFIG);
    fn once<S: Read + Write>(mut s: S, shut: impl FnOnce(&S), what: &str, i: usize) {
        let data = pattern(1 + i % 100, i as u8);
        s.write_all(&data).unwrap();
        shut(&s);
        let mut got = Vec::new();
        if let Err(e) = s.read_to_end(&mut got) {
            panic!(
                "{what} #{i}: {e} after {} of {} bytes: loopd missed the EOF",
                got.len(),
                data.len()
            );
        }
        assert!(
            got == data,
            "{what} #{i}: got {} of {} bytes",
            got.len(),
            data.len()
        );
    }
    for i in 0..200 {
        let t = tcp(loopd.tcp("echo"));
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        once(t, |s| s.shutdown(Shutdown::Write).unwrap(), "tcp", i);
        let u = unix(&loopd.unix("echo"));
        u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        once(u, |s| s.shutdown(Shutdown::Write).unwrap(), "unix", i);
    }
}

/// 100 clients at once, each with its own pattern (64 KiB to 256 KiB): every
/// client gets exactly its own bytes back.
fn many_concurrent_clients<S, F>(connect: F)
where
    S: Read + Write + Send + 'static + TryCloneStream,
    F: Fn() -> S,
{
    const CLIENTS: usize = 100;
    // Connect everyone first: a failed connect then panics here, never
    // inside a thread that others wait for at the barrier.
    let streams: Vec<S> = (0..CLIENTS).map(|_| connect()).collect();
    let barrier = Barrier::new(CLIENTS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let size = (64 << 10) + i * ((192 << 10) / CLIENTS) + i;
                    let data = pattern(size, i as u8);
                    barrier.wait();
                    let got = echo_roundtrip(stream, &data);
                    if got != data {
                        let first = got.iter().zip(&data).position(|(a, b)| a != b);
                        panic!("client {i}: echo of {size} bytes differs (first difference at {first:?})");
                    }
                    size
                })
            })
            .collect();
        let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(total > CLIENTS * (64 << 10));
    });
}

#[test]
fn hundred_concurrent_tcp_clients_each_get_their_own_bytes() {
    let loopd = Loopd::start(CONFIG);
    let addr = loopd.tcp("echo");
    many_concurrent_clients(|| tcp(addr));
}

#[test]
fn hundred_concurrent_unix_clients_each_get_their_own_bytes() {
    let loopd = Loopd::start(CONFIG);
    let path = loopd.unix("echo");
    many_concurrent_clients(|| unix(&path));
}

/// Raw framing keeps no message boundaries: three back-to-back writes come
/// back as one exact byte stream, whatever way the reads cut it.
#[test]
fn three_quick_sends_come_back_whole() {
    let loopd = Loopd::start(CONFIG);
    for mut s in [
        Box::new(tcp(loopd.tcp("echo"))) as Box<dyn ReadWrite>,
        Box::new(unix(&loopd.unix("echo"))),
    ] {
        for round in 0..20u8 {
            let parts = [
                format!("first message, round {round}\n").into_bytes(),
                pattern(1000 + 333 * round as usize, round),
                b"!".to_vec(),
            ];
            for p in &parts {
                s.write_all(p).unwrap();
            }
            let want = parts.concat();
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got)
                .expect("reading three quick sends back");
            assert!(got == want, "round {round}: the byte stream differs");
        }
        s.shutdown_write();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("EOF after the echo");
        assert!(rest.is_empty(), "{} unexpected extra bytes", rest.len());
    }
}

trait ReadWrite: Read + Write {
    fn shutdown_write(&self);
}

impl ReadWrite for TcpStream {
    fn shutdown_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

impl ReadWrite for UnixStream {
    fn shutdown_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

#[test]
fn ipv6_listener_echoes() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        eprintln!("note: skipping the IPv6 echo test: cannot bind [::1]:0 on this machine ({e})");
        return;
    }
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "echo6"
plugin = "echo"
listen = ["tcp://[::1]:0"]
"#,
    );
    let addr = loopd.tcp("echo6");
    assert!(addr.is_ipv6(), "{addr}");
    assert_eq!(addr.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    for (i, size) in [1usize, 1000, 300_000].into_iter().enumerate() {
        let data = pattern(size, 200 + i as u8);
        let got = echo_roundtrip(tcp(addr), &data);
        assert!(got == data, "ipv6 echo of {size} bytes differs");
    }
}

/// Peers that vanish mid-transfer (a RST, or a plain close with unread data)
/// do not disturb a large echo running on another connection.
#[test]
fn peers_resetting_mid_transfer_do_not_disturb_another_echo() {
    let loopd = Loopd::start(CONFIG);
    let addr = loopd.tcp("echo");
    let data = pattern(8 << 20, 42);
    let steady = {
        let data = data.clone();
        let s = tcp(addr);
        std::thread::spawn(move || echo_roundtrip(s, &data))
    };
    for i in 0..20u8 {
        let mut s = tcp(addr);
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        // Enough that loopd is still echoing when the peer goes away; the
        // write may block (nobody reads), which is fine.
        let chunk = pattern(256 << 10, i);
        let _ = s.write_all(&chunk);
        // Wait until the echo has started, so the reset lands mid-transfer.
        let mut first = [0u8; 1];
        s.read_exact(&mut first).expect("the echo starts");
        assert_eq!(first[0], chunk[0]);
        if i % 2 == 0 {
            reset_on_drop(&s);
        }
        drop(s);
    }
    let got = steady.join().expect("the steady client");
    assert!(got == data, "the steady client's 8 MiB echo differs");
    // loopd is still serving.
    let after = pattern(100_000, 9);
    assert!(echo_roundtrip(tcp(addr), &after) == after);
}
