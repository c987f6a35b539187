//! Helpers for the chat tests: configs, a blocking chat client, and a
//! poll-based fleet that drives hundreds of clients from one thread.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};

use crate::common::{tcp, TIMEOUT};

pub mod redis;

/// A config with one chat instance on an ephemeral port. `handler_keys` go
/// into the `[[handler]]` table (no `framing`: chat's own default, line,
/// unless given; no `max_frame`: loopd's default, 1 MiB, unless given),
/// `chat_keys` into `[handler.config]`.
pub fn chat_config(handler_keys: &str, chat_keys: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 2000

[[handler]]
name = "chat"
plugin = "chat"
listen = ["tcp://127.0.0.1:0"]
{handler_keys}

[handler.config]
{chat_keys}
"#
    )
}

/// `[handler.config]` keys that turn chat's per-sender rate limit off: for
/// tests that flood from one client on purpose (to fill a slow consumer's
/// queue, or to load the fan-out), which the limit would otherwise hold
/// back to 10 lines a second. tests/rel_chat_flood.rs tests the limit.
pub const UNLIMITED: &str = "rate_lines = 0\nrate_bytes = 0\n";

/// The chat `[[handler]]` table of the shipped examples/loopd.toml, up to
/// the next table of another handler, listening on an ephemeral port
/// instead of 7001 (so tests can run side by side).
pub fn shipped_chat_config() -> String {
    let path = crate::common::root().join("examples/loopd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("[[handler]]\nname = \"chat\"\n")
        .unwrap_or_else(|| panic!("no chat [[handler]] in {}", path.display()));
    let rest = &text[start..];
    let end = rest[1..]
        .find("\n[[handler]]")
        .map_or(rest.len(), |e| e + 1);
    let block = &rest[..end];
    let listen = "listen = [\"tcp://127.0.0.1:7001\"]";
    assert!(block.contains(listen), "{block}");
    format!(
        "[runtime]\nshutdown_timeout_ms = 2000\n\n{}",
        block.replace(listen, "listen = [\"tcp://127.0.0.1:0\"]")
    )
}

/// The nick a welcome line names.
pub fn welcome_nick(line: &str) -> String {
    let rest = line
        .strip_prefix("* welcome to loopd chat, you are ")
        .unwrap_or_else(|| panic!("not a welcome line: {line:?}"));
    let (nick, room) = rest.split_once(" in ").expect("welcome names a room");
    assert_eq!(room, "lobby (/help lists the commands)", "{line:?}");
    nick.to_string()
}

/// A field of /proc/<pid>/status, in KiB (VmRSS, VmHWM).
pub fn status_kib(pid: i32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// CPU time a process has used (user + system), from /proc/<pid>/stat.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// One chat client over a blocking socket (every read has a timeout).
pub struct Chatter {
    pub nick: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Chatter {
    /// Connects and reads the welcome line.
    pub fn join(addr: SocketAddr) -> Chatter {
        let writer = tcp(addr);
        let reader = BufReader::new(writer.try_clone().unwrap());
        let mut c = Chatter {
            nick: String::new(),
            reader,
            writer,
        };
        c.nick = welcome_nick(&c.recv());
        c
    }

    /// Connects, reads the welcome line and takes `nick`.
    pub fn named(addr: SocketAddr, nick: &str) -> Chatter {
        let mut c = Chatter::join(addr);
        c.expect_reply(&format!("/nick {nick}"), &format!("* you are now {nick}"));
        c.nick = nick.to_string();
        c
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("writing to loopd");
    }

    /// The next line, without `\n`; panics on EOF, error or timeout.
    pub fn recv(&mut self) -> String {
        match self.try_recv() {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{}: connection closed while waiting for a line", self.nick),
            Err(e) => panic!("{}: reading a line: {e}", self.nick),
        }
    }

    /// The next line, `None` at EOF.
    pub fn try_recv(&mut self) -> std::io::Result<Option<String>> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        assert_eq!(line.pop(), Some(b'\n'), "{}: a line without \\n", self.nick);
        Ok(Some(
            String::from_utf8(line).expect("the server sent UTF-8"),
        ))
    }

    /// Asserts the next line.
    pub fn expect(&mut self, want: &str) {
        let got = self.recv();
        assert_eq!(got, want, "{} got the wrong line", self.nick);
    }

    /// Sends `line` and asserts the reply.
    pub fn expect_reply(&mut self, line: &str, want: &str) {
        self.send(line);
        self.expect(want);
    }

    /// Proves nothing else is on its way to this client: a `/rooms` round
    /// trip, whose answer must be the very next line. Anything the server
    /// sent this client before it read `/rooms` would come first.
    pub fn expect_quiet(&mut self) {
        self.send("/rooms");
        let got = self.recv();
        assert!(
            got.starts_with("* rooms: "),
            "{} got {got:?} where nothing was expected",
            self.nick
        );
    }

    /// Reads until the server closes; returns what came.
    pub fn read_to_eof(&mut self) -> String {
        let mut rest = String::new();
        self.reader
            .read_to_string(&mut rest)
            .unwrap_or_else(|e| panic!("{}: reading to EOF: {e}", self.nick));
        rest
    }

    /// Reads every line until the server closes (EOF) or resets the
    /// connection; returns the lines and the error, if it ended with one.
    /// Every line until the server closes. A client cut off with an abort
    /// may get the start of a line and then EOF (loopd had written part of
    /// it when the rest was dropped): that piece comes last, without `\n`.
    pub fn read_until_closed(&mut self) -> (Vec<String>, Option<std::io::Error>) {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return (lines, None),
                Ok(_) => {
                    let whole = line.last() == Some(&b'\n');
                    if whole {
                        line.pop();
                    }
                    lines.push(String::from_utf8(line).expect("the server sent UTF-8"));
                    if !whole {
                        return (lines, None);
                    }
                }
                Err(e) => return (lines, Some(e)),
            }
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }
}

/// One member of a [`Fleet`].
struct FleetClient {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Whether writable interest is registered.
    want_write: bool,
    /// The server closed (EOF or an error); the socket left the poller.
    closed: bool,
}

/// Many nonblocking clients driven from one thread with `polling`, so a test
/// with hundreds of clients needs no thread per client.
pub struct Fleet {
    poller: Poller,
    events: Events,
    clients: Vec<FleetClient>,
    scratch: Vec<u8>,
}

impl Fleet {
    /// Connects `n` clients to `addr`.
    pub fn connect(addr: SocketAddr, n: usize) -> Fleet {
        let mut fleet = Fleet {
            poller: Poller::new().expect("a poller"),
            events: Events::new(),
            clients: Vec::with_capacity(n),
            scratch: vec![0; 64 * 1024],
        };
        for _ in 0..n {
            fleet.add(tcp(addr));
        }
        fleet
    }

    /// Adds a connected stream; returns its index.
    pub fn add(&mut self, stream: TcpStream) -> usize {
        stream.set_nonblocking(true).unwrap();
        let key = self.clients.len();
        // SAFETY: the stream is deleted from the poller before it is dropped
        // (when the server closes it, or in Drop).
        unsafe {
            self.poller
                .add_with_mode(&stream, Event::readable(key), PollMode::Level)
                .expect("registering a client");
        }
        self.clients.push(FleetClient {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            want_write: false,
            closed: false,
        });
        key
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the server closed client `i`.
    pub fn closed(&self, i: usize) -> bool {
        self.clients[i].closed
    }

    /// Closes client `i`'s connection (a FIN: the server sees EOF) and takes
    /// it out of the poller; nothing more is read from it.
    pub fn close(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if !c.closed {
            c.closed = true;
            let _ = self.poller.delete(&c.stream);
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Bytes queued on client `i` that the kernel has not taken yet.
    pub fn unsent(&self, i: usize) -> usize {
        self.clients[i].outbuf.len()
    }

    /// Queues `bytes` on client `i` and writes what the socket takes.
    pub fn send(&mut self, i: usize, bytes: &[u8]) {
        self.clients[i].outbuf.extend_from_slice(bytes);
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.closed {
            return;
        }
        let mut sent = 0;
        while sent < c.outbuf.len() {
            match c.stream.write(&c.outbuf[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("client {i}: write: {e}"),
            }
        }
        c.outbuf.drain(..sent);
        let want_write = !c.outbuf.is_empty();
        if want_write != c.want_write {
            c.want_write = want_write;
            let interest = if want_write {
                Event::all(i)
            } else {
                Event::readable(i)
            };
            self.poller
                .modify_with_mode(&c.stream, interest, PollMode::Level)
                .expect("changing interest");
        }
    }

    /// Waits up to `timeout` for I/O, writes what is queued, reads what
    /// arrived, and hands every complete line (without `\n`) to `on_line`.
    pub fn poll(&mut self, timeout: Duration, mut on_line: impl FnMut(usize, &[u8])) {
        self.events.clear();
        self.poller
            .wait(&mut self.events, Some(timeout))
            .expect("poll");
        let ready: Vec<Event> = self.events.iter().collect();
        for ev in ready {
            let i = ev.key;
            if ev.writable {
                self.flush(i);
            }
            if ev.readable {
                self.read(i, &mut on_line);
            }
        }
    }

    fn read(&mut self, i: usize, on_line: &mut impl FnMut(usize, &[u8])) {
        let c = &mut self.clients[i];
        if c.closed {
            return;
        }
        // A few reads per event keep one busy client from starving the rest.
        for _ in 0..4 {
            match c.stream.read(&mut self.scratch) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => {
                    // EOF, or a reset: either way the server closed it.
                    c.closed = true;
                    let _ = self.poller.delete(&c.stream);
                    break;
                }
                Ok(n) => {
                    let mut start = 0;
                    if c.inbuf.is_empty() {
                        // Lines straight from the read buffer.
                        let data = &self.scratch[..n];
                        while let Some(at) = memchr::memchr(b'\n', &data[start..]) {
                            on_line(i, &data[start..start + at]);
                            start += at + 1;
                        }
                        c.inbuf.extend_from_slice(&data[start..]);
                    } else {
                        c.inbuf.extend_from_slice(&self.scratch[..n]);
                        while let Some(at) = memchr::memchr(b'\n', &c.inbuf[start..]) {
                            on_line(i, &c.inbuf[start..start + at]);
                            start += at + 1;
                        }
                        c.inbuf.drain(..start);
                    }
                    if n < self.scratch.len() {
                        break;
                    }
                }
            }
        }
    }

    /// Polls until `done(state)`, handing lines to `on_line(state, i, line)`.
    /// Panics, naming `what`, if that takes longer than [`TIMEOUT`].
    pub fn run_until<S>(
        &mut self,
        state: &mut S,
        what: &str,
        mut on_line: impl FnMut(&mut S, usize, &[u8]),
        done: impl Fn(&S) -> bool,
    ) {
        let deadline = Instant::now() + TIMEOUT;
        while !done(state) {
            assert!(
                Instant::now() < deadline,
                "timed out after {TIMEOUT:?} waiting for {what}"
            );
            self.poll(Duration::from_millis(100), |i, line| {
                on_line(state, i, line)
            });
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &self.clients {
            if !c.closed {
                let _ = self.poller.delete(&c.stream);
            }
        }
    }
}
