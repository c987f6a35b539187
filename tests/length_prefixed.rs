//! Framed echo: `length-prefixed` (4-byte big-endian length, then payload)
//! and `line`. Echo re-applies the framing, so every frame comes back with its
//! header (or its "\n"). A frame over `max_frame` disconnects that peer only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const MAX_FRAME: usize = 65_536;
const LINE_MAX: usize = 16;

const CONFIG: &str = r#"
[[handler]]
name = "lp"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
framing = "length-prefixed"
max_frame = 65536

[[handler]]
name = "line"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
framing = "line"
max_frame = 16
"#;

/// One length-prefixed frame: header, then payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Splits a byte stream back into frames; panics on a truncated one.
fn parse_frames(mut buf: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        assert!(buf.len() >= 4, "truncated header: {} bytes left", buf.len());
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert!(buf.len() >= 4 + len, "truncated frame of {len} bytes");
        frames.push(buf[4..4 + len].to_vec());
        buf = &buf[4 + len..];
    }
    frames
}

/// Runs `write` on a thread (then shuts the write side), reads to EOF here.
fn write_then_read_to_eof(
    stream: TcpStream,
    write: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        write(&mut writer);
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let mut got = Vec::new();
    reader.read_to_end(&mut got).expect("echo, then EOF");
    t.join().expect("writer thread");
    got
}

fn payloads() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        vec![0xA5],
        pattern(MAX_FRAME, 1),
        pattern(2, 2),
        Vec::new(),
        pattern(1000, 3),
        pattern(MAX_FRAME - 1, 4),
        b"\0\0\0\x05 looks like a header inside a payload".to_vec(),
    ]
}

#[test]
fn frames_in_one_write_come_back_whole_with_headers_in_order() {
    let loopd = Loopd::start(CONFIG);
    let payloads = payloads();
    let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
    let sent = stream.clone();
    let got = write_then_read_to_eof(tcp(loopd.tcp("lp")), move |w| w.write_all(&sent).unwrap());
    assert_eq!(got.len(), stream.len(), "echoed byte count");
    assert!(got == stream, "the echoed stream differs");
    assert_eq!(parse_frames(&got), payloads);
}

#[test]
fn frames_split_into_tiny_writes_come_back_whole() {
    let loopd = Loopd::start(CONFIG);
    let payloads = vec![
        pattern(5, 10),
        Vec::new(),
        pattern(300, 11),
        vec![7],
        pattern(MAX_FRAME, 12),
        Vec::new(),
    ];
    let expected: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
    let to_send = payloads.clone();
    let got = write_then_read_to_eof(tcp(loopd.tcp("lp")), move |w| {
        for (i, p) in to_send.iter().enumerate() {
            // The header one byte at a time...
            for b in (p.len() as u32).to_be_bytes() {
                w.write_all(&[b]).unwrap();
            }
            // ...the payload a few bytes at a time (more for the big one, to keep it quick).
            let step = if p.len() > 10_000 { 61 } else { 1 + i % 4 };
            for chunk in p.chunks(step) {
                w.write_all(chunk).unwrap();
            }
        }
    });
    assert_eq!(got.len(), expected.len(), "echoed byte count");
    assert!(got == expected, "the echoed stream differs");
    assert_eq!(parse_frames(&got), payloads);
}

#[test]
fn oversize_frame_closes_that_connection_only() {
    let loopd = Loopd::start(CONFIG);
    let addr = loopd.tcp("lp");

    let mut before = tcp(addr);
    let hello = frame(b"before");
    before.write_all(&hello).unwrap();
    let mut got = vec![0u8; hello.len()];
    before.read_exact(&mut got).unwrap();
    assert_eq!(got, hello);

    // A valid frame, then a header announcing max_frame + 1 bytes. loopd has
    // read every byte we sent, so it closes cleanly after echoing the first.
    let mut bad = tcp(addr);
    let ok = frame(b"still echoed");
    let mut msg = ok.clone();
    msg.extend_from_slice(&((MAX_FRAME + 1) as u32).to_be_bytes());
    bad.write_all(&msg).unwrap();
    let got = read_until_closed(&mut bad);
    assert_eq!(got, ok, "the frame before the oversize one, then EOF");
    assert!(
        loopd.wait_for_log(
            "frame of 65537 bytes exceeds max_frame (65536 bytes)",
            TIMEOUT
        ),
        "{}",
        loopd.logs()
    );

    // The other connection, and a new one, still echo.
    let big = frame(&pattern(MAX_FRAME, 5));
    assert!(echo_roundtrip(before.try_clone().unwrap(), &big) == big);
    let after = tcp(addr);
    assert!(echo_roundtrip(after, &big) == big);
    assert!(loopd.wait_for_logs("exceeds max_frame", 1, TIMEOUT));
    assert_eq!(
        loopd.logs().matches("exceeds max_frame").count(),
        1,
        "{}",
        loopd.logs()
    );
}

#[test]
fn a_truncated_frame_at_eof_is_dropped_not_echoed() {
    let loopd = Loopd::start(CONFIG);
    let whole = frame(b"whole");
    let mut msg = whole.clone();
    msg.extend_from_slice(&frame(b"truncated")[..7]);
    let got = write_then_read_to_eof(tcp(loopd.tcp("lp")), move |w| w.write_all(&msg).unwrap());
    assert_eq!(got, whole);
}

#[test]
fn lines_come_back_with_a_newline_and_crlf_becomes_lf() {
    let loopd = Loopd::start(CONFIG);
    let got = write_then_read_to_eof(tcp(loopd.tcp("line")), |w| {
        w.write_all(b"hello\n").unwrap();
        w.write_all(b"crlf\r\n").unwrap();
        w.write_all(b"\n").unwrap();
        w.write_all(b"\r\n").unwrap();
        w.write_all(b"exactly-16-bytes\n").unwrap();
        w.write_all(b"sixteen-and-cr!!\r\n").unwrap();
        w.write_all(b"two\nin one\r\nwrite\n").unwrap();
        w.write_all(b"sp").unwrap();
        w.write_all(b"lit\n").unwrap();
        // The last line has no newline: the EOF ends it.
        w.write_all(b"tail").unwrap();
    });
    let want =
        "hello\ncrlf\n\n\nexactly-16-bytes\nsixteen-and-cr!!\ntwo\nin one\nwrite\nsplit\ntail\n";
    assert_eq!(String::from_utf8_lossy(&got), want);
}

#[test]
fn a_last_line_ending_in_cr_at_eof_loses_the_cr() {
    let loopd = Loopd::start(CONFIG);
    let got = write_then_read_to_eof(tcp(loopd.tcp("line")), |w| {
        w.write_all(b"a\nlast\r").unwrap()
    });
    assert_eq!(String::from_utf8_lossy(&got), "a\nlast\n");
}

#[test]
fn an_overlong_line_disconnects_that_client_only() {
    let loopd = Loopd::start(CONFIG);
    let addr = loopd.tcp("line");
    let mut other = tcp(addr);
    other.write_all(b"first\n").unwrap();
    let mut buf = [0u8; 6];
    other.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"first\n");

    // A line of max_frame + 1 bytes after a good one.
    let mut bad = tcp(addr);
    let long = "x".repeat(LINE_MAX + 1);
    bad.write_all(format!("ok\n{long}\n").as_bytes()).unwrap();
    assert_eq!(read_until_closed(&mut bad), b"ok\n");
    assert!(
        loopd.wait_for_log("frame of 17 bytes exceeds max_frame (16 bytes)", TIMEOUT),
        "{}",
        loopd.logs()
    );

    // A line that never ends and is already too long.
    let mut endless = tcp(addr);
    endless.write_all(&[b'z'; 40]).unwrap();
    assert_eq!(read_until_closed(&mut endless), b"");
    assert!(
        loopd.wait_for_logs("exceeds max_frame (16 bytes)", 2, TIMEOUT),
        "{}",
        loopd.logs()
    );

    other.write_all(b"still here\r\n").unwrap();
    let mut buf = [0u8; 11];
    other.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here\n");
    let got = write_then_read_to_eof(tcp(addr), |w| w.write_all(b"new client\n").unwrap());
    assert_eq!(got, b"new client\n");
}

/// A line of exactly max_frame bytes plus "\r" is not too long while its "\n"
/// is still in flight. A second connection's round trip between the two
/// writes makes it likely (not certain) that loopd sees the "\r" alone.
#[test]
fn a_max_length_line_whose_newline_comes_later_is_not_too_long() {
    let loopd = Loopd::start(CONFIG);
    let addr = loopd.tcp("line");
    let mut a = tcp(addr);
    let mut b = tcp(addr);
    let line = "y".repeat(LINE_MAX);
    for round in 0..5 {
        a.write_all(format!("{line}\r").as_bytes()).unwrap();
        b.write_all(b"sync\n").unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"sync\n", "round {round}");
        a.write_all(b"\n").unwrap();
        let mut got = vec![0u8; LINE_MAX + 1];
        a.read_exact(&mut got).unwrap();
        assert_eq!(got, format!("{line}\n").as_bytes(), "round {round}");
    }
    assert!(
        !loopd.logs().contains("exceeds max_frame"),
        "{}",
        loopd.logs()
    );
}

/// The one byte of slack a line gets for a "\r" whose "\n" is in flight
/// must not let an over-long last line through at EOF.
#[test]
fn an_overlong_last_line_at_eof_is_refused() {
    let loopd = Loopd::start(CONFIG);
    let long = vec![b'q'; LINE_MAX + 1];
    let got = write_then_read_to_eof(tcp(loopd.tcp("line")), move |w| w.write_all(&long).unwrap());
    assert_eq!(
        String::from_utf8_lossy(&got),
        "",
        "a {}-byte line reached a handler whose max_frame is {LINE_MAX}",
        LINE_MAX + 1
    );
    assert!(
        loopd.wait_for_log("frame of 17 bytes exceeds max_frame (16 bytes)", TIMEOUT),
        "{}",
        loopd.logs()
    );
}

/// Shrinks the client's socket buffers (so a stall comes after little data).
fn small_buffers(s: &TcpStream) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let size: libc::c_int = 16 << 10;
        // SAFETY: a valid socket fd and a correctly sized option value.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "setsockopt");
    }
}

/// Sends `stream` without reading until a write stalls (loopd has paused
/// this connection with frames still buffered), then reads everything back.
/// Returns the echo and whether the writer really stalled.
fn echo_after_a_stall(addr: SocketAddr, stream: Vec<u8>) -> (Vec<u8>, bool) {
    let s = tcp(addr);
    small_buffers(&s);
    let mut writer = s.try_clone().unwrap();
    let (stalled_tx, stalled_rx) = mpsc::channel();
    let w = std::thread::spawn(move || {
        writer
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut sent = 0;
        let mut stalled = false;
        while sent < stream.len() {
            let want = (64 << 10).min(stream.len() - sent);
            match writer.write(&stream[sent..sent + want]) {
                Ok(n) => {
                    sent += n;
                    if n < want && !stalled {
                        stalled = true;
                        stalled_tx.send(()).unwrap();
                        writer.set_write_timeout(Some(TIMEOUT)).unwrap();
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stalled {
                        panic!("write to loopd blocked for {TIMEOUT:?}");
                    }
                    stalled = true;
                    stalled_tx.send(()).unwrap();
                    writer.set_write_timeout(Some(TIMEOUT)).unwrap();
                }
                Err(e) => panic!("write to loopd: {e}"),
            }
        }
        writer.shutdown(Shutdown::Write).unwrap();
        stalled
    });
    // Read nothing until the writer stalled (or sent everything).
    let _ = stalled_rx.recv_timeout(TIMEOUT);
    let mut reader = s;
    let mut got = Vec::new();
    reader.read_to_end(&mut got).expect("echo, then EOF");
    let stalled = w.join().expect("writer thread");
    (got, stalled)
}

/// Many small frames from a peer that does not read: loopd pauses with
/// frames left in its input buffer, and resumes with them in order.
#[test]
fn small_frames_buffered_across_a_pause_come_back_in_order() {
    let loopd = Loopd::start(CONFIG);

    let mut frames = Vec::new();
    let mut i = 0u32;
    while frames.len() < (2 << 20) {
        let payload = format!("frame {i} {}", "-".repeat((i % 40) as usize));
        frames.extend_from_slice(&frame(payload.as_bytes()));
        i += 1;
    }
    let (got, stalled) = echo_after_a_stall(loopd.tcp("lp"), frames.clone());
    assert_eq!(got.len(), frames.len(), "echoed byte count ({i} frames)");
    assert!(got == frames, "the echoed frames differ");
    if !stalled {
        eprintln!("note: the length-prefixed writer never stalled; the pause was not exercised");
    }

    let mut lines = Vec::new();
    let mut i = 0u32;
    while lines.len() < (1 << 20) {
        lines.extend_from_slice(format!("l{i:x}\n").as_bytes());
        i += 1;
    }
    let (got, stalled) = echo_after_a_stall(loopd.tcp("line"), lines.clone());
    assert_eq!(got.len(), lines.len(), "echoed byte count ({i} lines)");
    assert!(got == lines, "the echoed lines differ");
    if !stalled {
        eprintln!("note: the line writer never stalled; the pause was not exercised");
    }
}

/// ABI 1.1 `on_oversize`: a handler may skip an oversize frame instead of
/// losing the connection; loopd discards it without buffering it.
#[test]
fn a_handler_can_skip_oversize_lines_and_keep_the_connection() {
    let loopd = Loopd::start(&probe_config(
        "framing = \"line\"\nmax_frame = 16\n[handler.config]\nskip_oversize = true\n",
    ));
    let mut c = LineClient::connect(loopd.tcp("probe"));
    // Found whole in one read: the line is dropped up to its newline.
    c.send(&"x".repeat(40));
    assert_eq!(c.recv(), "oversize 40 16");
    assert_eq!(c.cmd("echo after-1"), "after-1");
    // Longer than any read: loopd drops it as it streams in, buffering none of it.
    let big = "y".repeat(3 << 20);
    let mut w = c.stream().try_clone().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(big.as_bytes()).unwrap();
        w.write_all(b"\necho after-2\n").unwrap();
    });
    let first = c.recv();
    assert!(
        first.starts_with("oversize ") && first.ends_with(" 16"),
        "{first}"
    );
    assert_eq!(
        c.recv(),
        "after-2",
        "the next line after the skipped one is intact"
    );
    t.join().unwrap();
    assert!(
        !loopd.logs().contains("exceeds max_frame"),
        "{}",
        loopd.logs()
    );
}

#[test]
fn a_handler_can_skip_oversize_length_prefixed_frames() {
    let loopd = Loopd::start(&probe_config(
        "framing = \"length-prefixed\"\nmax_frame = 16\n[handler.config]\nskip_oversize = true\n",
    ));
    let mut s = tcp(loopd.tcp("probe"));
    let frame = |payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    };
    let mut wire = frame(&[b'z'; 100_000]);
    wire.extend(frame(b"echo kept"));
    use std::io::{Read, Write};
    s.write_all(&wire).unwrap();
    // The probe always answers in lines, whatever its input framing.
    let want = b"oversize 100000 16\nkept\n".to_vec();
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&got));
}

/// ABI 1.1 `on_partial`: a handler may refuse to act on a last line that
/// was never finished.
#[test]
fn a_handler_can_ignore_an_unfinished_last_line() {
    let loopd = Loopd::start(&probe_config(
        "framing = \"line\"\n[handler.config]\nignore_partial = true\n",
    ));
    let mut c = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(c.cmd("echo complete"), "complete");
    use std::io::Write;
    let mut w = c.stream().try_clone().unwrap();
    w.write_all(b"echo half-writ").unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read_to_eof(), "", "the unfinished command is not run");
    assert!(
        loopd.wait_for_log("probe: partial echo half-writ", TIMEOUT),
        "{}",
        loopd.logs()
    );
}
