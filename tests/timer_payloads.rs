//! Typed timer payloads (`Ctx::set_timer_with`, `set_repeating_timer_with`)
//! on the real loop: a linked handler arms timers carrying a connection id
//! and text, gets them back typed in `on_timer`, keeps a repeating timer's
//! state in its payload, and every payload is dropped exactly once: after
//! its timer fired, when cancelled, or when the runtime is dropped with
//! timers still pending.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TIMEOUT;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{ConnId, Ctx, Framing, Handler, NoConfig, TimerId};

/// Payloads made and dropped.
#[derive(Default)]
struct Counts {
    made: AtomicUsize,
    dropped: AtomicUsize,
}

/// Counts its own making and dropping.
struct Tracked(Arc<Counts>);

impl Tracked {
    fn new(counts: &Arc<Counts>) -> Tracked {
        counts.made.fetch_add(1, Ordering::SeqCst);
        Tracked(counts.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A one-shot timer's payload: whom to tell what.
struct Reminder {
    conn: ConnId,
    text: String,
    _tracked: Tracked,
}

/// A repeating timer's payload: its state across ticks.
struct Countdown {
    conn: ConnId,
    left: u32,
    ticks: u32,
    _tracked: Tracked,
}

/// `in MS TEXT` answers `armed`, then TEXT after MS; `cancel` cancels the
/// connection's last reminder; `count N MS` ticks N times, then `done`.
struct Later {
    counts: Arc<Counts>,
    last: Option<TimerId>,
}

impl Handler for Later {
    type Config = NoConfig;
    type Conn = ();
    const FRAMING: Framing = Framing::Line;

    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Err("made with HandlerSpec::instance".into())
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), line: &[u8]) {
        let line = String::from_utf8_lossy(line).into_owned();
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        let ms = |w: &str| Duration::from_millis(w.parse().unwrap());
        let reply = match words.as_slice() {
            ["in", delay, text] => {
                let payload = Reminder {
                    conn,
                    text: text.to_string(),
                    _tracked: Tracked::new(&self.counts),
                };
                self.last = Some(ctx.set_timer_with(ms(delay), payload).unwrap());
                "armed".to_string()
            }
            ["cancel"] => {
                let timer = self.last.take().unwrap();
                format!("cancel {:?}", ctx.cancel_timer(timer))
            }
            ["count", n, interval] => {
                let payload = Countdown {
                    conn,
                    left: n.parse().unwrap(),
                    ticks: 0,
                    _tracked: Tracked::new(&self.counts),
                };
                ctx.set_repeating_timer_with(ms(interval), ms(interval), payload)
                    .unwrap();
                "counting".to_string()
            }
            _ => format!("what? {line}"),
        };
        let _ = ctx.send(conn, format!("{reply}\n").as_bytes());
    }

    fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, user_data: u64) {
        assert_eq!(user_data, 0);
        if let Some(r) = ctx.take_timer_payload::<Reminder>(timer) {
            let _ = ctx.send(r.conn, format!("{}\n", r.text).as_bytes());
            return;
        }
        let tick = ctx.with_timer_payload::<Countdown, _>(timer, |c| {
            c.left -= 1;
            c.ticks += 1;
            (c.conn, c.ticks, c.left)
        });
        let Some((conn, ticks, left)) = tick else {
            panic!("a timer without a payload: {timer}");
        };
        let _ = ctx.send(conn, format!("tick {ticks}\n").as_bytes());
        if left == 0 {
            // Drops the payload once this hook returns.
            ctx.cancel_timer(timer).unwrap();
            let _ = ctx.send(conn, b"done\n");
        }
    }
}

#[test]
fn payloads_come_back_typed_and_are_dropped_exactly_once() {
    let counts = Arc::new(Counts::default());
    let mut rt = Runtime::builder()
        .handler(
            HandlerSpec::instance(
                "later",
                Later {
                    counts: counts.clone(),
                    last: None,
                },
            )
            .listen("tcp://127.0.0.1:0"),
        )
        .build()
        .unwrap();
    let addr = rt.listeners()[0]
        .strip_prefix("tcp://")
        .unwrap()
        .to_string();

    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut cmd = |line: &str| {
            s.write_all(format!("{line}\n").as_bytes()).unwrap();
        };
        let mut lines = Vec::new();
        let mut recv = |lines: &mut Vec<String>| {
            let mut l = String::new();
            assert!(r.read_line(&mut l).unwrap() > 0, "EOF");
            lines.push(l.trim_end().to_string());
        };
        // Two reminders: each comes back with its own text.
        cmd("in 40 second\nin 5 first");
        for _ in 0..4 {
            recv(&mut lines);
        }
        // The order of the two answers and two reminders is the loop's
        // business, not this test's.
        lines.sort();
        // One cancelled before it is due: never delivered.
        cmd("in 60000 never");
        cmd("cancel");
        recv(&mut lines);
        recv(&mut lines);
        // A repeating timer whose payload counts its ticks.
        cmd("count 3 2");
        for _ in 0..5 {
            recv(&mut lines);
        }
        // Pending when the runtime goes.
        cmd("in 60000 pending");
        recv(&mut lines);
        lines
    });
    let deadline = Instant::now() + TIMEOUT;
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "the client did not finish");
        rt.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    let lines = client.join().unwrap();
    assert_eq!(
        lines,
        [
            "armed",
            "armed",
            "first",
            "second",
            "armed",
            "cancel Ok(())",
            "counting",
            "tick 1",
            "tick 2",
            "tick 3",
            "done",
            "armed",
        ]
    );
    // Made 5; the two fired, the cancelled and the counted one are gone;
    // one is pending.
    assert_eq!(counts.made.load(Ordering::SeqCst), 5);
    assert_eq!(counts.dropped.load(Ordering::SeqCst), 4);
    drop(rt);
    assert_eq!(
        counts.dropped.load(Ordering::SeqCst),
        5,
        "the pending timer's payload outlived the runtime"
    );
}
