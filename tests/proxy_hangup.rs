//! Regression (found by the proxy's slow-download test): a connection whose
//! reading the handler holds paused (`pause_read`) and whose sending side
//! it has shut (`shutdown_write`) lost what its peer sent before the peer's
//! own half-close. With both directions shut the kernel reports a hang-up
//! (EPOLLHUP), whatever the interest; loopd took a hang-up on a connection
//! it was not reading as a dead peer and closed it with reason ERROR,
//! dropping the unread bytes still in the socket's buffer. A proxy whose
//! client reads slowly therefore cut the end off every download whose
//! client had half-closed first.
//!
//! Now the connection is kept, unwatched, until the handler resumes
//! reading; then the bytes and the EOF are delivered as usual.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{CloseReason, ConnId, ConnInfo, Ctx, Handler, NoConfig};

/// Bytes the handler was given, whether it saw the EOF, and the close reason.
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static EOF: AtomicBool = AtomicBool::new(false);
static CLOSED: Mutex<Option<CloseReason>> = Mutex::new(None);

/// Shuts every connection's sending side and holds its reading paused at
/// once; a posted `resume` resumes them.
#[derive(Default)]
struct Hold {
    conns: Vec<ConnId>,
}

impl Handler for Hold {
    type Config = NoConfig;
    type Conn = ();
    const MIN_HOST_MINOR: u32 = 3;

    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Hold::default())
    }

    fn on_open(&mut self, ctx: &Ctx, conn: ConnId, _: &ConnInfo<'_>) -> Result<(), String> {
        ctx.pause_read(conn).map_err(|e| e.to_string())?;
        ctx.shutdown_write(conn).map_err(|e| e.to_string())?;
        self.conns.push(conn);
        Ok(())
    }

    fn on_data(&mut self, _: &Ctx, _: ConnId, _: &mut (), data: &[u8]) {
        RECEIVED.fetch_add(data.len() as u64, Ordering::SeqCst);
    }

    fn on_eof(&mut self, _: &Ctx, _: ConnId, _: &mut ()) -> loopd_handler_api::EofAction {
        EOF.store(true, Ordering::SeqCst);
        loopd_handler_api::EofAction::Close
    }

    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        assert_eq!(msg, b"resume");
        for c in &self.conns {
            let _ = ctx.resume_read(*c);
        }
    }

    fn on_close(&mut self, _: &Ctx, _: ConnId, _: (), reason: CloseReason) {
        *CLOSED.lock().unwrap() = Some(reason);
    }
}

/// Runs `rt` until `done` or [`TIMEOUT`].
fn run_until(rt: &mut Runtime, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        rt.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    true
}

/// The peer sends `len` bytes and half-closes while the handler holds the
/// connection paused; `settle` lets loopd see the hang-up before the
/// handler resumes. Returns what the handler received.
fn hold_then_resume<S: Read + Write + Send + 'static>(
    url: &str,
    connect: impl FnOnce(&str) -> S + Send + 'static,
    half_close: fn(&S),
    len: usize,
) -> (u64, bool, Option<CloseReason>) {
    RECEIVED.store(0, Ordering::SeqCst);
    EOF.store(false, Ordering::SeqCst);
    *CLOSED.lock().unwrap() = None;
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Hold>("hold").listen(url))
        .build()
        .unwrap();
    let bound = rt.listeners()[0].clone();
    let sent = std::sync::Arc::new(AtomicBool::new(false));
    let flag = sent.clone();
    let client = std::thread::spawn(move || {
        let mut s = connect(&bound);
        // loopd shut its side at once: EOF here.
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        assert!(buf.is_empty());
        s.write_all(&pattern(len, 3)).unwrap();
        half_close(&s);
        flag.store(true, Ordering::SeqCst);
        s
    });
    assert!(run_until(&mut rt, || sent.load(Ordering::SeqCst)));
    // Both directions are shut now: give loopd time to see the hang-up
    // (and, before the fix, to close the connection for it).
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        rt.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    rt.handle().post("hold", "resume").unwrap();
    run_until(&mut rt, || CLOSED.lock().unwrap().is_some());
    let _client = client.join().unwrap();
    (
        RECEIVED.load(Ordering::SeqCst),
        EOF.load(Ordering::SeqCst),
        *CLOSED.lock().unwrap(),
    )
}

#[test]
fn a_paused_half_closed_connection_keeps_what_its_peer_sent_before_hanging_up() {
    // Small enough for the kernel's buffers, so the peer's half-close
    // arrives while the handler still holds the connection paused.
    let len = 32 << 10;
    let tcp = hold_then_resume(
        "tcp://127.0.0.1:0",
        |url| common::tcp(url.strip_prefix("tcp://").unwrap().parse().unwrap()),
        |s| s.shutdown(std::net::Shutdown::Write).unwrap(),
        len,
    );
    figure("hangup.tcp_bytes_delivered", tcp.0);
    assert_eq!(tcp, (len as u64, true, Some(CloseReason::Peer)), "over TCP");

    let dir = TempDir::new("hangup");
    let url = format!("unix://{}", dir.join("hold.sock").display());
    let unix = hold_then_resume(
        &url,
        |url| common::unix(std::path::Path::new(url.strip_prefix("unix://").unwrap())),
        |s| s.shutdown(std::net::Shutdown::Write).unwrap(),
        len,
    );
    figure("hangup.unix_bytes_delivered", unix.0);
    assert_eq!(
        unix,
        (len as u64, true, Some(CloseReason::Peer)),
        "over a Unix socket"
    );
}
