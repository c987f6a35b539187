//! Broadcasting from another thread with `Handle::post`.
//!
//! A handler linked into this program (`Fanout`, below) keeps the clients
//! connected to it. Another thread, which knows nothing of sockets, posts
//! lines to the instance; `Fanout::on_message` runs on the loop thread and
//! sends each line to every client. The thread here reads stdin (each line
//! typed is broadcast) or, with `--ticks N`, posts `tick 1` … `tick N` and
//! stops the program. A full mailbox is back-pressure: the poster waits and
//! tries again rather than let memory grow.
//!
//! The handler is built by the program itself with `HandlerSpec::with`, so
//! it can be handed state that JSON config cannot carry: here a channel
//! that reports each broadcast's reach back to the posting thread.
//!
//! ```sh
//! cargo run --example broadcast                 # clients: nc 127.0.0.1 7400
//! cargo run --example broadcast -- --port 0 --ticks 5
//! ```

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::mpsc;
use std::time::Duration;

use loopd::{HandlerSpec, PostError, Runtime};
use loopd_handler_api::{
    CloseMode, CloseReason, ConnId, ConnInfo, Ctx, Framing, Handler, NoConfig,
};

/// Sends every posted line to every connected client.
struct Fanout {
    clients: HashSet<ConnId>,
    /// How many clients each broadcast reached, for the poster.
    reached: mpsc::Sender<usize>,
}

impl Handler for Fanout {
    type Config = NoConfig;
    type Conn = ();
    const FRAMING: Framing = Framing::Line;

    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Err("this handler is built by the program (HandlerSpec::with)".into())
    }

    fn on_open(&mut self, ctx: &Ctx, conn: ConnId, _: &ConnInfo<'_>) -> Result<(), String> {
        self.clients.insert(conn);
        ctx.send_frame(
            conn,
            Framing::Line,
            b"* connected: lines posted by the program follow",
        )
        .map_err(|e| e.to_string())
    }

    fn on_close(&mut self, _: &Ctx, conn: ConnId, _: (), _: CloseReason) {
        self.clients.remove(&conn);
    }

    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        let mut reached = 0;
        for &conn in &self.clients {
            match ctx.send_frame(conn, Framing::Line, msg) {
                Ok(()) => reached += 1,
                // A client that does not read: drop it rather than queue
                // without end.
                Err(_) => {
                    let _ = ctx.close(conn, CloseMode::Abort);
                }
            }
        }
        let _ = self.reached.send(reached);
    }

    fn on_shutdown(&mut self, ctx: &Ctx) {
        for &conn in &self.clients {
            let _ = ctx.close(conn, CloseMode::Flush);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 7400u16;
    let mut ticks: Option<u32> = None;
    let mut wait_for = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--ticks" => ticks = Some(args.next().ok_or("--ticks needs a value")?.parse()?),
            // With --ticks: start ticking once this many clients are there.
            "--clients" => wait_for = args.next().ok_or("--clients needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (reached_tx, reached) = mpsc::channel();
    let mut rt = Runtime::builder()
        .handler(
            HandlerSpec::with("fanout", move |_ctx: &Ctx| {
                Ok(Fanout {
                    clients: HashSet::new(),
                    reached: reached_tx.clone(),
                })
            })
            .listen(format!("tcp://127.0.0.1:{port}")),
        )
        .build()?;
    for url in rt.listeners() {
        println!("fanout listening on {url}");
    }

    let handle = rt.handle();
    let poster = std::thread::spawn(move || {
        let post = |line: String| loop {
            match handle.post("fanout", line.clone()) {
                Ok(()) => return true,
                // Back-pressure: the mailbox is full; wait and try again.
                Err(PostError::Full) => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => return false,
            }
        };
        match ticks {
            Some(n) => {
                // A probe per 50 ms until enough clients are there.
                if wait_for > 0 {
                    loop {
                        if !post("* waiting".into()) {
                            return;
                        }
                        if reached.recv().unwrap_or(0) >= wait_for {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                for i in 1..=n {
                    if !post(format!("tick {i}")) {
                        return;
                    }
                    let got = reached.recv().unwrap_or(0);
                    println!("tick {i} reached {got} clients");
                }
                handle.shutdown();
            }
            None => {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if !post(line) {
                        return;
                    }
                }
                handle.shutdown();
            }
        }
    });
    rt.run()?;
    poster.join().map_err(|_| "the posting thread panicked")?;
    println!("stopped");
    Ok(())
}
