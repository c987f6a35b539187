//! Shared helpers for the proxy tests: an upstream server of the test's
//! own, deterministic byte streams hashed as they go, paced (slow) readers
//! and writers, and configs with a proxy instance.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::TIMEOUT;

/// A TCP server on 127.0.0.1 that runs `serve` on a thread of its own for
/// every connection; stops accepting when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let serve = Arc::new(serve);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                conn.set_write_timeout(Some(TIMEOUT)).unwrap();
                let serve = serve.clone();
                std::thread::spawn(move || serve(conn));
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The upstream URL for a proxy config.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config with one proxy instance `proxy` on an ephemeral TCP port,
/// forwarding to `upstream`; `config` is more of its `[handler.config]`
/// and `extra` more TOML after it (other handlers).
pub fn proxy_config(upstream: &str, config: &str, extra: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 5000

[[handler]]
name = "proxy"
plugin = "proxy"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
upstream = "{upstream}"
{config}

{extra}
"#
    )
}

/// Deterministic bytes: xorshift64*, seeded. Different seeds give
/// unrelated streams, so a byte from the wrong stream or place shows.
pub struct Bytes(u64);

impl Bytes {
    pub fn new(seed: u64) -> Bytes {
        Bytes(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// The first `len` bytes of the stream.
    pub fn take(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Bytes::new(seed).fill(&mut v);
        v
    }
}

/// Holds a reader or writer to `rate` bytes per second.
pub struct Pace {
    start: Instant,
    rate: f64,
}

impl Pace {
    pub fn new(bytes_per_sec: u64) -> Pace {
        Pace {
            start: Instant::now(),
            rate: bytes_per_sec as f64,
        }
    }

    /// Sleeps until `done` bytes are due.
    pub fn wait(&self, done: u64) {
        let due = self.start + Duration::from_secs_f64(done as f64 / self.rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// What one side saw of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    pub len: u64,
    pub sha256: String,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `len` bytes of stream `seed` (at `rate` bytes/s, or as fast as
/// the peer takes them), then shuts down the sending side. Returns what
/// was sent.
pub fn send_stream(w: &mut impl Write, len: u64, seed: u64, rate: Option<u64>) -> Digested {
    let mut gen = Bytes::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let pace = rate.map(Pace::new);
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(buf.len() as u64) as usize;
        let n = if pace.is_some() { n.min(16 << 10) } else { n };
        gen.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).expect("sending the stream");
        hash.update(&buf[..n]);
        sent += n as u64;
        if let Some(p) = &pace {
            p.wait(sent);
        }
    }
    w.flush().unwrap();
    Digested {
        len: sent,
        sha256: hex(&hash.finalize()),
    }
}

/// Reads to EOF: the first `slow` bytes at `rate` bytes/s, the rest as
/// fast as they come. A reset counts as the end (the length then shows
/// what is missing). `sample` runs every 100 ms while reading slowly.
pub fn recv_stream(r: &mut impl Read, slow: u64, rate: u64, mut sample: impl FnMut()) -> Digested {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let pace = Pace::new(rate);
    let mut got = 0u64;
    let mut sampled = Instant::now();
    loop {
        let want = if got < slow {
            (16 << 10).min((slow - got) as usize)
        } else {
            buf.len()
        };
        match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the stream after {got} bytes: {e}"),
        }
        if got < slow {
            pace.wait(got);
            if sampled.elapsed() >= Duration::from_millis(100) {
                sample();
                sampled = Instant::now();
            }
        }
    }
    Digested {
        len: got,
        sha256: hex(&hash.finalize()),
    }
}

/// The SHA-256 of stream `seed`'s first `len` bytes.
pub fn expected(seed: u64, len: u64) -> Digested {
    send_stream(&mut std::io::sink(), len, seed, None)
}

/// Connects to `addr` (the proxy), retrying while a loaded accept backlog
/// drops the SYN.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                s.set_write_timeout(Some(TIMEOUT)).unwrap();
                s.set_nodelay(true).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline && e.kind() != ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("connecting to {addr}: {e}"),
        }
    }
}

/// Shuts down the sending side (a half-close); the peer reads EOF.
pub fn half_close(s: &TcpStream) {
    s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
}
