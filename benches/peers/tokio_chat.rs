//! A tokio chat server speaking the subset of loopd chat's protocol the
//! fan-out benchmark uses, written the way tokio's own chat example is (a
//! shared map of per-client channels, one reader and one writer task per
//! client), on a `current_thread` runtime (one thread, like loopd).
//!
//! - A new client gets `* welcome to tokio chat, you are guest-N in lobby`;
//!   the others get `* guest-N joined`.
//! - A plain line goes to every other client as `guest-N: text`, built once
//!   and shared (`Arc<[u8]>`) by every recipient.
//! - `/quit` closes; any other command gets `! unknown command`.
//! - On disconnect the others get `* guest-N left`.
//! - Lines over 4096 bytes get `! line too long (max 4096 bytes)`.
//! - A client with 16,384 lines waiting is cut off (slow consumer).
//!
//! Usage: `tokio-chat ADDR`; prints `tokio-chat listening on ADDR`.
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Longest line accepted, without the `\n`.
const MAX_LINE: usize = 4096;
/// Lines that may wait for one client before it is cut off.
const MAX_QUEUED: usize = 16_384;

type Line = Arc<[u8]>;

#[derive(Default)]
struct Shared {
    next_guest: u64,
    peers: HashMap<u64, mpsc::Sender<Line>>,
}

impl Shared {
    /// Sends `line` to everyone but `from`; cuts off whoever cannot take it.
    fn broadcast(&mut self, from: u64, line: Line) {
        let mut slow = Vec::new();
        for (id, tx) in &self.peers {
            if *id != from && tx.try_send(line.clone()).is_err() {
                slow.push(*id);
            }
        }
        for id in slow {
            eprintln!("tokio-chat: guest-{id} is not reading; disconnecting it");
            self.peers.remove(&id);
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("tokio-chat listening on {}", listener.local_addr()?);
    let shared = Arc::new(Mutex::new(Shared::default()));
    loop {
        let socket = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("tokio-chat: accept: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move { client(socket, shared).await });
    }
}

async fn client(socket: TcpStream, shared: Arc<Mutex<Shared>>) {
    let (read, write) = socket.into_split();
    let (tx, rx) = mpsc::channel(MAX_QUEUED);
    let id = {
        let mut s = shared.lock().expect("not poisoned");
        s.next_guest += 1;
        let id = s.next_guest;
        let welcome = format!("* welcome to tokio chat, you are guest-{id} in lobby\n");
        let _ = tx.try_send(Line::from(welcome.as_bytes()));
        s.broadcast(id, Line::from(format!("* guest-{id} joined\n").as_bytes()));
        s.peers.insert(id, tx.clone());
        id
    };
    tokio::spawn(writer(write, rx));
    let _ = reader(read, id, &tx, &shared).await;
    let mut s = shared.lock().expect("not poisoned");
    if s.peers.remove(&id).is_some() {
        s.broadcast(id, Line::from(format!("* guest-{id} left\n").as_bytes()));
    }
}

/// Writes queued lines, flushing once the queue is empty.
async fn writer(write: OwnedWriteHalf, mut rx: mpsc::Receiver<Line>) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(16 * 1024, write);
    while let Some(line) = rx.recv().await {
        w.write_all(&line).await?;
        while let Ok(line) = rx.try_recv() {
            w.write_all(&line).await?;
        }
        w.flush().await?;
    }
    Ok(())
}

async fn reader(
    read: OwnedReadHalf,
    id: u64,
    tx: &mpsc::Sender<Line>,
    shared: &Mutex<Shared>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if line.len() <= MAX_LINE + 1 {
                return Ok(()); // EOF in the middle of a line: not a line
            }
            let _ = tx.try_send(Line::from(
                format!("! line too long (max {MAX_LINE} bytes)\n").as_bytes(),
            ));
            // Skip the rest of the long line.
            loop {
                line.clear();
                let n = (&mut r)
                    .take(64 * 1024)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 {
                    return Ok(());
                }
                if line.last() == Some(&b'\n') {
                    break;
                }
            }
            continue;
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        if line.starts_with(b"/") {
            if line.eq_ignore_ascii_case(b"/quit") {
                let _ = tx.try_send(Line::from(&b"* bye\n"[..]));
                return Ok(());
            }
            let _ = tx.try_send(Line::from(
                &b"! unknown command (this server knows /quit)\n"[..],
            ));
            continue;
        }
        let mut out = Vec::with_capacity(line.len() + 24);
        out.extend_from_slice(format!("guest-{id}: ").as_bytes());
        out.extend_from_slice(&line);
        out.push(b'\n');
        shared
            .lock()
            .expect("not poisoned")
            .broadcast(id, Line::from(out));
    }
}
