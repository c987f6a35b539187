//! The ABI 1.3 additions from C, through the real loopd binary: the plugin
//! tests/fixtures/c/api13.c (its header lists the line protocol) is compiled
//! with the strict flags and loaded twice, as `hub` and `peer`. Commands on
//! plain TCP and Unix connections drive `post`/`on_message`, a FIFO the
//! plugin makes and watches in `create` (`watch_fd`, `on_fd`, hang-ups,
//! stale watch ids), `pause_read`/`resume_read`, `shutdown_write`,
//! `timer_repeat` and `connect_with`; every assertion is on the bytes a
//! client reads.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The fixture, compiled once per test into its own temp dir.
struct Plugin {
    _dir: TempDir,
    so: PathBuf,
}

fn plugin() -> Plugin {
    let dir = TempDir::new("api13");
    let so = dir.join("libloopd_api13.so");
    compile_c_plugin(&root().join("tests/fixtures/c/api13.c"), &so);
    Plugin { _dir: dir, so }
}

/// `hub` (TCP, Unix, a FIFO, a small mailbox) and `peer` (TCP, Unix).
fn start(plugin: &Plugin) -> Loopd {
    let so = plugin.so.display();
    Loopd::start(&format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "hub"
plugin = "{so}"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/hub.sock"]
mailbox_messages = 8
mailbox_bytes = 512

[handler.config]
fifo = "{{dir}}/hub.fifo"

[[handler]]
name = "peer"
plugin = "{so}"
listen = ["tcp://127.0.0.1:0", "unix://{{dir}}/peer.sock"]
"#
    ))
}

/// A line client over TCP or a Unix socket.
struct Lines<S> {
    reader: BufReader<S>,
    writer: S,
}

impl Lines<TcpStream> {
    fn tcp(loopd: &Loopd, handler: &str) -> Self {
        let s = tcp(loopd.tcp(handler));
        Lines {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }
}

impl Lines<UnixStream> {
    fn unix(loopd: &Loopd, handler: &str) -> Self {
        let s = unix(&loopd.unix(handler));
        Lines {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }
}

impl<S: Read + Write> Lines<S> {
    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn recv(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reading a line");
        assert!(n > 0, "EOF while waiting for a line");
        assert!(line.ends_with('\n'), "a line without its end: {line:?}");
        line.pop();
        line
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.recv()
    }

    /// Subscribes to the instance's broadcasts.
    fn sub(mut self) -> Self {
        assert_eq!(self.cmd("sub"), "sub ok");
        self
    }

    fn id(&mut self) -> u64 {
        let reply = self.cmd("id");
        reply
            .strip_prefix("id ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not an id: {reply:?}"))
    }
}

#[test]
fn posts_arrive_in_order_and_a_full_mailbox_pushes_back() {
    let plugin = plugin();
    let loopd = start(&plugin);
    let mut hub = Lines::tcp(&loopd, "hub").sub();
    // Posted by the other instance, from a command on a Unix socket.
    let mut peer = Lines::unix(&loopd, "peer");
    assert_eq!(peer.cmd("post hub hello there"), "post 0");
    assert_eq!(hub.recv(), "message hello there");
    assert_eq!(peer.cmd("post nobody x"), "post -11", "NO_SUCH_INSTANCE");
    // Larger than hub's whole mailbox (512 bytes): INVALID, not FULL.
    assert_eq!(
        peer.cmd(&format!("post hub {}", "z".repeat(600))),
        "post -4"
    );

    // 20 posts in one hook into a mailbox of 8: on_message only runs after
    // the hook, so exactly 8 fit and 12 are refused; nothing else queues.
    assert_eq!(peer.cmd("burst hub 20"), "burst ok 8 full 12 other 0");
    for i in 1..=8 {
        assert_eq!(hub.recv(), format!("message m{i}"));
    }
    // The mailbox drained: it takes posts again.
    assert_eq!(peer.cmd("burst hub 3"), "burst ok 3 full 0 other 0");
    for i in 1..=3 {
        assert_eq!(hub.recv(), format!("message m{i}"));
    }

    // Posting to oneself (NULL instance): after the hook, never inside it.
    assert_eq!(hub.cmd("post - note to self"), "post 0");
    assert_eq!(hub.recv(), "message note to self");
    assert_eq!(
        hub.cmd("stats"),
        "stats messages 13 fd_lines 0 stray 0 hups 0"
    );
    // The peer's own mailbox is its own: nothing arrived there.
    assert_eq!(
        peer.cmd("stats"),
        "stats messages 0 fd_lines 0 stray 0 hups 0"
    );
}

/// Opens the hub's FIFO for writing (the plugin holds the read end).
fn fifo_writer(path: &Path) -> std::fs::File {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("opening the FIFO for writing")
}

#[test]
fn a_fifo_made_in_create_is_watched_and_a_hang_up_reopens_it() {
    let plugin = plugin();
    let mut loopd = start(&plugin);
    assert!(loopd.wait_for_log(
        &format!(
            "api13 hub ready (fifo {})",
            loopd.dir.join("hub.fifo").display()
        ),
        TIMEOUT
    ));
    let fifo = loopd.dir.join("hub.fifo");
    let mut hub = Lines::tcp(&loopd, "hub").sub();

    let mut w = fifo_writer(&fifo);
    w.write_all(b"line one\nline two\n").unwrap();
    assert_eq!(hub.recv(), "fd line one");
    assert_eq!(hub.recv(), "fd line two");
    // A line in two writes is one line.
    w.write_all(b"par").unwrap();
    w.flush().unwrap();
    assert_eq!(
        hub.cmd("stats"),
        "stats messages 0 fd_lines 2 stray 0 hups 0"
    );
    w.write_all(b"tial\n").unwrap();
    assert_eq!(hub.recv(), "fd partial");

    // The last writer goes: on_fd sees the hang-up, removes the watch,
    // closes and reopens the FIFO, and watches it again.
    drop(w);
    assert_eq!(hub.recv(), "fd hup 1");
    assert_eq!(hub.recv(), "fd reopened 0");
    // The removed watch's id is stale: refused, never the new watch.
    assert_eq!(hub.cmd("stale"), "stale -2 -2");

    let mut w = fifo_writer(&fifo);
    w.write_all(b"after reopen\n").unwrap();
    assert_eq!(hub.recv(), "fd after reopen");
    drop(w);
    assert_eq!(hub.recv(), "fd hup 2");
    assert_eq!(hub.recv(), "fd reopened 0");
    assert_eq!(
        hub.cmd("stats"),
        "stats messages 0 fd_lines 4 stray 0 hups 2"
    );

    // A graceful stop destroys the instance, which removes its watch,
    // closes the FIFO and unlinks it.
    drop(hub);
    loopd.signal(libc::SIGTERM);
    let status = loopd.wait_exit(TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", loopd.logs());
    assert!(!fifo.exists(), "destroy did not unlink {}", fifo.display());
}

#[test]
fn a_paused_connection_is_not_read_until_another_resumes_it() {
    let plugin = plugin();
    let loopd = start(&plugin);
    let mut a = Lines::tcp(&loopd, "hub");
    let id = a.id();
    // One write: loopd reads "one" and "two" together with "pause", so a
    // pause that did not hold would deliver them in the same pass (and the
    // plugin answers a line delivered while paused with "LEAK").
    a.writer.write_all(b"pause\none\ntwo\n").unwrap();
    assert_eq!(a.recv(), format!("paused {id} 0 0"));

    let mut b = Lines::tcp(&loopd, "hub");
    assert_eq!(
        b.cmd(&format!("count {id}")),
        "count 2",
        "id and pause only"
    );
    assert_eq!(b.cmd(&format!("count {id}")), "count 2");
    assert_eq!(b.cmd(&format!("resume {id}")), "resume 0");
    assert_eq!(a.recv(), "got one");
    assert_eq!(a.recv(), "got two");
    assert_eq!(b.cmd(&format!("count {id}")), "count 4");
    // Resuming what is not paused is fine; an unknown id is refused.
    assert_eq!(b.cmd(&format!("resume {id}")), "resume 0");
    assert_eq!(b.cmd("resume 12345678"), "resume -2", "NO_SUCH_CONN");
    assert_eq!(a.cmd("still there"), "got still there");
}

#[test]
fn shutdown_write_sends_eof_while_the_client_keeps_writing() {
    let plugin = plugin();
    let loopd = start(&plugin);
    let mut watcher = Lines::tcp(&loopd, "hub").sub();
    let mut c = Lines::tcp(&loopd, "hub");
    let id = c.id();
    c.send("half");
    assert_eq!(c.recv(), "bye");
    // EOF from loopd, with our side still open.
    let mut rest = Vec::new();
    c.reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"", "nothing after bye but EOF");
    // What we write still arrives (and a send to us is refused: CLOSED).
    c.send("still here");
    assert_eq!(
        watcher.recv(),
        format!("after-half {id} still here send -3")
    );
    c.send("and here");
    assert_eq!(watcher.recv(), format!("after-half {id} and here send -3"));
    // Our EOF closes it: reason PEER.
    c.writer.shutdown(Shutdown::Write).unwrap();
    assert_eq!(watcher.recv(), format!("closed {id} reason 1"));

    // The half-close waits for the queue: all 200000 bytes come first.
    let mut big = Lines::unix(&loopd, "hub");
    big.send("halfbig 200000");
    let mut got = Vec::new();
    big.reader.read_to_end(&mut got).unwrap();
    let expected: Vec<u8> = (0..200_000).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the bytes before EOF differ");
    big.send("after");
    let big_id = watcher.recv();
    assert!(
        big_id.starts_with("after-half ") && big_id.ends_with(" after send -3"),
        "{big_id}"
    );
}

#[test]
fn repeating_timers_tick_per_connection_until_cancelled() {
    let plugin = plugin();
    let loopd = start(&plugin);
    let mut fast = Lines::tcp(&loopd, "hub");
    let mut slow = Lines::tcp(&loopd, "hub");
    assert_eq!(fast.cmd("tick 5 2"), "tick armed");
    assert_eq!(slow.cmd("tick 3 7"), "tick armed");
    // Each timer's user_data is its connection: the ticks never cross.
    for i in 1..=5 {
        assert_eq!(fast.recv(), format!("tick {i}"));
    }
    // Cancelled at the 5th tick: OK, then NO_SUCH_TIMER for the same id.
    assert_eq!(fast.recv(), "ticks done 0 again -9");
    for i in 1..=3 {
        assert_eq!(slow.recv(), format!("tick {i}"));
    }
    assert_eq!(slow.recv(), "ticks done 0 again -9");
    // An interval of 0 is refused: INVALID.
    assert_eq!(fast.cmd("tick 1 0"), "tick error -4");
    // The same connection can arm another one after the cancel.
    assert_eq!(fast.cmd("tick 2 1"), "tick armed");
    assert_eq!(fast.recv(), "tick 1");
    assert_eq!(fast.recv(), "tick 2");
    assert_eq!(fast.recv(), "ticks done 0 again -9");
    assert_eq!(
        fast.cmd("stats"),
        "stats messages 0 fd_lines 0 stray 0 hups 0"
    );
}

#[test]
fn connect_with_gives_an_outbound_connection_its_own_framing() {
    let plugin = plugin();
    let loopd = start(&plugin);
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let mut c = Lines::tcp(&loopd, "hub");

    // The instance is line-framed; this connection is raw with frames of
    // at most 4 bytes.
    assert_eq!(
        c.cmd(&format!("connect tcp://127.0.0.1:{port} 4")),
        "connect 0"
    );
    let (mut up, _) = upstream.accept().unwrap();
    up.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(
        c.recv(),
        "upstream open framing 1 origin 2",
        "RAW, CONNECTED"
    );
    let mut hello = [0u8; 15];
    up.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello upstream\n");
    // No newline: a line-framed connection would never deliver this.
    up.write_all(b"abcdefghij").unwrap();
    let mut seen = String::new();
    while seen.len() < 10 {
        let line = c.recv();
        let rest = line
            .strip_prefix("upstream data ")
            .unwrap_or_else(|| panic!("{line:?}"));
        let (len, bytes) = rest.split_once(' ').unwrap();
        let len: usize = len.parse().unwrap();
        assert!((1..=4).contains(&len), "a frame of {len} bytes: {line:?}");
        assert_eq!(bytes.len(), len);
        seen.push_str(bytes);
    }
    assert_eq!(seen, "abcdefghij");
    drop(up);
    assert_eq!(c.recv(), "upstream eof");
    assert_eq!(c.recv(), "upstream closed 1", "PEER");

    // Options the host refuses, and a malformed URL: INVALID at once.
    assert_eq!(
        c.cmd(&format!("connect-bad tcp://127.0.0.1:{port}")),
        "connect -4"
    );
    assert_eq!(c.cmd("connect tcp://no-such-host 0"), "connect -4");
    // Nobody listening: CONNECT_FAILED arrives as on_close.
    drop(upstream);
    assert_eq!(
        c.cmd(&format!("connect tcp://127.0.0.1:{port} 0")),
        "connect 0"
    );
    assert_eq!(c.recv(), "upstream closed 7", "CONNECT_FAILED");
}
