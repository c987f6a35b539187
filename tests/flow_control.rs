//! Flow control (ABI 1.3): a handler pauses and resumes reading a
//! connection, half-closes one, and gives an outbound connection options
//! of its own.

mod common;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::TIMEOUT;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{
    CloseReason, ConnId, ConnInfo, ConnectOptions, Ctx, EofAction, Framing, Handler, NoConfig,
};

thread_local! {
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static CONN: RefCell<Option<ConnId>> = const { RefCell::new(None) };
}

fn log(line: impl Into<String>) {
    LOG.with(|l| l.borrow_mut().push(line.into()));
}

fn logged() -> Vec<String> {
    LOG.with(|l| l.borrow().clone())
}

fn run_until(rt: &mut Runtime, mut done: impl FnMut(&Runtime) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done(rt) {
        assert!(Instant::now() < deadline, "timed out: {:?}", logged());
        rt.run_once(Some(Duration::from_millis(10))).unwrap();
    }
}

fn addr_of(rt: &Runtime, name: &str) -> String {
    let url = rt.listeners_of(name).next().unwrap();
    url.strip_prefix("tcp://").unwrap().to_string()
}

/// Echoes; pauses every connection on open; a posted "resume" resumes it.
struct Gate;

impl Handler for Gate {
    type Config = NoConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Gate)
    }
    fn on_open(&mut self, ctx: &Ctx, conn: ConnId, _: &ConnInfo<'_>) -> Result<(), String> {
        ctx.pause_read(conn).map_err(|e| e.to_string())?;
        // Pausing twice is fine.
        ctx.pause_read(conn).map_err(|e| e.to_string())?;
        CONN.with(|c| *c.borrow_mut() = Some(conn));
        Ok(())
    }
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), data: &[u8]) {
        let _ = ctx.send(conn, data);
    }
    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        let conn = CONN.with(|c| c.borrow().unwrap());
        match msg {
            b"resume" => log(format!("resume {:?}", ctx.resume_read(conn))),
            b"pause" => log(format!("pause {:?}", ctx.pause_read(conn))),
            _ => {}
        }
    }
}

#[test]
fn a_paused_connection_is_not_read_until_resumed() {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Gate>("gate").listen("tcp://127.0.0.1:0"))
        .build()
        .unwrap();
    let addr = addr_of(&rt, "gate");
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"held back").unwrap();
    run_until(&mut rt, |_| CONN.with(|c| c.borrow().is_some()));
    // Many passes with the bytes waiting in the kernel: none is read.
    for _ in 0..20 {
        rt.run_once(Some(Duration::from_millis(5))).unwrap();
    }
    let bytes_in = |rt: &Runtime| rt.stats().handler("gate").unwrap().counters.bytes_in;
    assert_eq!(bytes_in(&rt), 0, "read while paused");
    rt.handle().post("gate", "resume").unwrap();
    run_until(&mut rt, |rt| bytes_in(rt) == 9);
    let mut back = [0u8; 9];
    let reader = std::thread::spawn(move || {
        client.read_exact(&mut back).unwrap();
        back
    });
    run_until(&mut rt, |_| reader.is_finished());
    assert_eq!(&reader.join().unwrap(), b"held back");
    assert_eq!(logged(), ["resume Ok(())"]);
}

/// Answers "bye" to the first line and half-closes; counts what it reads
/// afterwards; tries to send once more.
struct Bye {
    after: usize,
}

impl Handler for Bye {
    type Config = NoConfig;
    type Conn = ();
    const FRAMING: Framing = Framing::Line;
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Bye { after: 0 })
    }
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), line: &[u8]) {
        if self.after == 0 && line == b"hello" {
            ctx.send(conn, b"bye\n").unwrap();
            ctx.shutdown_write(conn).unwrap();
            ctx.shutdown_write(conn).unwrap();
            log(format!("send after shutdown: {:?}", ctx.send(conn, b"x")));
        } else {
            log(format!(
                "read after shutdown: {}",
                String::from_utf8_lossy(line)
            ));
        }
        self.after += 1;
    }
    fn on_eof(&mut self, _: &Ctx, _: ConnId, _: &mut ()) -> EofAction {
        log("eof");
        EofAction::Close
    }
    fn on_close(&mut self, _: &Ctx, _: ConnId, _: (), reason: CloseReason) {
        log(format!("closed {reason:?}"));
    }
}

#[test]
fn shutdown_write_half_closes_and_reading_goes_on() {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Bye>("bye").listen("tcp://127.0.0.1:0"))
        .build()
        .unwrap();
    let addr = addr_of(&rt, "bye");
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"hello\n").unwrap();
        let mut got = Vec::new();
        // EOF from loopd's half-close, while our side is still open.
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"still here\nand here\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    run_until(&mut rt, |_| {
        logged().iter().any(|l| l.starts_with("closed"))
    });
    assert_eq!(client.join().unwrap(), b"bye\n");
    assert_eq!(
        logged(),
        [
            "send after shutdown: Err(Closed)",
            "read after shutdown: still here",
            "read after shutdown: and here",
            "eof",
            "closed Peer",
        ]
    );
}

/// A line-framed instance with an outbound connection of its own framing.
struct Dialer {
    target: String,
    raw: bool,
}

#[derive(serde::Deserialize)]
struct DialerConfig {
    target: String,
    raw: bool,
}

impl Handler for Dialer {
    type Config = DialerConfig;
    type Conn = ();
    const FRAMING: Framing = Framing::Line;
    fn create(_: &Ctx, _: &str, c: DialerConfig) -> Result<Self, String> {
        Ok(Dialer {
            target: c.target,
            raw: c.raw,
        })
    }
    fn on_message(&mut self, ctx: &Ctx, _: &[u8]) {
        let bad = ConnectOptions::new().watermarks(10, 10);
        log(format!(
            "bad options: {:?}",
            ctx.connect_with(&self.target, &bad).err()
        ));
        let opts = if self.raw {
            ConnectOptions::new().framing(Framing::Raw).max_frame(4)
        } else {
            ConnectOptions::new()
        };
        if let Err(e) = ctx.connect_with(&self.target, &opts) {
            log(format!("connect failed: {e:?}"));
        }
    }
    fn on_open(&mut self, _: &Ctx, _: ConnId, info: &ConnInfo<'_>) -> Result<(), String> {
        log(format!("open {:?}", info.framing));
        Ok(())
    }
    fn on_data(&mut self, _: &Ctx, _: ConnId, _: &mut (), data: &[u8]) {
        log(format!("data {}", String::from_utf8_lossy(data)));
    }
}

fn dial(raw: bool) -> Vec<String> {
    LOG.with(|l| l.borrow_mut().clear());
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("tcp://{}", upstream.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        // No newline: only raw framing delivers it.
        s.write_all(b"abcdefgh").unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let config = loopd::Config::parse(
        &format!(
            "[[handler]]\nname = \"dialer\"\nplugin = \"dialer\"\n[handler.config]\ntarget = \"{target}\"\nraw = {raw}\n"
        ),
        None,
    )
    .unwrap();
    let mut rt = Runtime::builder()
        .config(config)
        .static_handler::<Dialer>("dialer")
        .build()
        .unwrap();
    rt.handle().post("dialer", "go").unwrap();
    if raw {
        run_until(&mut rt, |_| {
            logged().iter().filter(|l| l.starts_with("data")).count() == 2
        });
    } else {
        run_until(&mut rt, |_| logged().iter().any(|l| l.starts_with("open")));
        for _ in 0..20 {
            rt.run_once(Some(Duration::from_millis(5))).unwrap();
        }
    }
    drop(rt);
    server.join().unwrap();
    logged()
}

#[test]
fn connect_with_gives_an_outbound_connection_its_own_framing() {
    assert_eq!(
        dial(true),
        [
            "bad options: Some(Invalid)",
            "open Raw",
            "data abcd",
            "data efgh"
        ],
        "raw frames of at most the connection's own max_frame"
    );
    // Plain options inherit the instance's line framing: a line without
    // its newline is never delivered.
    assert_eq!(dial(false), ["bad options: Some(Invalid)", "open Line"]);
}

/// Fills its outbound connection's output queue on open (the upstream
/// reads nothing yet), then logs what arrives and whether it may send.
struct Filler {
    target: String,
    keep_reading: bool,
}

#[derive(serde::Deserialize)]
struct FillerConfig {
    target: String,
    keep_reading: bool,
}

impl Handler for Filler {
    type Config = FillerConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, c: FillerConfig) -> Result<Self, String> {
        Ok(Filler {
            target: c.target,
            keep_reading: c.keep_reading,
        })
    }
    fn on_message(&mut self, ctx: &Ctx, _: &[u8]) {
        let opts = ConnectOptions::new()
            .watermarks(256 << 10, 64 << 10)
            .keep_reading(self.keep_reading);
        ctx.connect_with(&self.target, &opts).unwrap();
    }
    fn on_open(&mut self, ctx: &Ctx, conn: ConnId, _: &ConnInfo<'_>) -> Result<(), String> {
        let chunk = vec![b'x'; 64 << 10];
        // The kernel's buffers take a few MiB, the queue 256 KiB more.
        for _ in 0..4096 {
            match ctx.send(conn, &chunk) {
                Ok(()) => {}
                Err(e) => {
                    log(format!("full: {e:?}"));
                    return Ok(());
                }
            }
        }
        Err("the output queue never filled".to_string())
    }
    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), data: &[u8]) {
        log(format!(
            "data {} (send: {:?})",
            String::from_utf8_lossy(data),
            ctx.send(conn, b"y").err()
        ));
    }
    fn on_writable(&mut self, _: &Ctx, _: ConnId, _: &mut ()) {
        log("writable");
    }
}

/// Runs a Filler against an upstream that sends "hello" at once and reads
/// only when told to; returns what the handler logged before the upstream
/// read (after `before` has seen enough) and at the end.
fn fill(keep_reading: bool, before: impl Fn(&[String]) -> bool) -> (Vec<String>, Vec<String>) {
    LOG.with(|l| l.borrow_mut().clear());
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("tcp://{}", upstream.local_addr().unwrap());
    let (go, drain) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.write_all(b"hello").unwrap();
        drain.recv().unwrap();
        let mut sink = [0u8; 1 << 16];
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while let Ok(n) = s.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    });
    let config = loopd::Config::parse(
        &format!(
            "[[handler]]\nname = \"filler\"\nplugin = \"filler\"\n[handler.config]\ntarget = \"{target}\"\nkeep_reading = {keep_reading}\n"
        ),
        None,
    )
    .unwrap();
    let mut rt = Runtime::builder()
        .config(config)
        .static_handler::<Filler>("filler")
        .build()
        .unwrap();
    rt.handle().post("filler", "go").unwrap();
    run_until(&mut rt, |_| logged().iter().any(|l| l.starts_with("full")));
    // 50 passes of up to 10 ms: "hello" has long arrived on loopback.
    for _ in 0..50 {
        if before(&logged()) {
            break;
        }
        rt.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let first = logged();
    go.send(()).unwrap();
    run_until(&mut rt, |_| {
        let l = logged();
        l.iter().any(|l| l == "writable") && l.iter().any(|l| l.starts_with("data"))
    });
    drop(rt);
    server.join().unwrap();
    (first, logged())
}

#[test]
fn keep_reading_delivers_input_while_the_output_queue_is_full() {
    let (first, all) = fill(true, |l| l.iter().any(|l| l.starts_with("data")));
    assert_eq!(
        first,
        ["full: Again", "data hello (send: Some(Again))"],
        "read on while send still refuses"
    );
    assert_eq!(all.last().map(String::as_str), Some("writable"), "{all:?}");

    // Without it the full queue pauses reading: "hello" waits for the
    // upstream to read, and comes after the queue drained.
    let (first, all) = fill(false, |_| false);
    assert_eq!(first, ["full: Again"]);
    assert!(
        all.iter().any(|l| l == "data hello (send: None)") && all.contains(&"writable".to_string()),
        "{all:?}"
    );
}
