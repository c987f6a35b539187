//! Messages (ABI 1.3): `Handle::post` from other threads and the host's
//! `post` between instances deliver `on_message` on the loop thread, in
//! order, with back-pressure from a bounded mailbox instead of growth.

mod common;

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TIMEOUT;
use loopd::{HandlerSpec, PostError, Runtime};
use loopd_handler_api::{Ctx, Error, Handler, NoConfig};

thread_local! {
    /// What each instance received, by name, on the loop thread.
    static GOT: RefCell<Vec<(String, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

fn got() -> Vec<(String, Vec<u8>)> {
    GOT.with(|g| g.borrow().clone())
}

/// Records every message; a message `fwd:NAME:REST` is posted on to NAME
/// as REST; `panic` panics.
struct Sink {
    name: String,
}

impl Handler for Sink {
    type Config = NoConfig;
    type Conn = ();
    fn create(ctx: &Ctx, name: &str, _: NoConfig) -> Result<Self, String> {
        if name == "early" {
            // Posting to oneself from create works: the mailbox exists.
            ctx.post_self(b"from create").map_err(|e| e.to_string())?;
        }
        Ok(Sink {
            name: name.to_string(),
        })
    }
    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        if msg == b"panic" {
            panic!("a message that panics");
        }
        if let Some(rest) = msg.strip_prefix(b"fwd:") {
            let text = std::str::from_utf8(rest).unwrap();
            let (to, body) = text.split_once(':').unwrap();
            let r = ctx.post(to, body.as_bytes());
            GOT.with(|g| {
                g.borrow_mut()
                    .push((self.name.clone(), format!("forwarded {r:?}").into_bytes()))
            });
            return;
        }
        GOT.with(|g| g.borrow_mut().push((self.name.clone(), msg.to_vec())));
    }
}

fn runtime(names: &[&str]) -> Runtime {
    GOT.with(|g| g.borrow_mut().clear());
    let mut b = Runtime::builder();
    for n in names {
        b = b.handler(HandlerSpec::linked::<Sink>(*n));
    }
    b.build().unwrap()
}

fn run_until(rt: &mut Runtime, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out; got {} messages",
            got().len()
        );
        rt.run_once(Some(Duration::from_millis(50))).unwrap();
    }
}

#[test]
fn posts_from_threads_arrive_in_order_per_sender() {
    let mut rt = runtime(&["sink"]);
    let handle = rt.handle();
    const THREADS: usize = 4;
    const EACH: usize = 2000;
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let h = handle.clone();
            std::thread::spawn(move || {
                let mut full = 0usize;
                for i in 0..EACH {
                    let msg = format!("{t}:{i}");
                    // Back-pressure: a full mailbox refuses; retry later.
                    loop {
                        match h.post("sink", msg.clone()) {
                            Ok(()) => break,
                            Err(PostError::Full) => {
                                full += 1;
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            Err(e) => panic!("post: {e}"),
                        }
                    }
                }
                full
            })
        })
        .collect();
    run_until(&mut rt, || got().len() == THREADS * EACH);
    let full: usize = senders.into_iter().map(|s| s.join().unwrap()).sum();
    common::figure("posts_delivered", THREADS * EACH);
    common::figure("posts_refused_full", full);
    let mut next = [0usize; THREADS];
    for (name, msg) in got() {
        assert_eq!(name, "sink");
        let text = String::from_utf8(msg).unwrap();
        let (t, i) = text.split_once(':').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[t], "sender {t}: out of order");
        next[t] += 1;
    }
}

#[test]
fn a_full_mailbox_refuses_and_memory_stays_bounded() {
    let rt = runtime(&["sink"]);
    let handle = rt.handle();
    // Nobody runs the loop: the mailbox fills up, then refuses.
    let mut accepted = 0usize;
    let refused = loop {
        match handle.post("sink", vec![7u8; 1000]) {
            Ok(()) => accepted += 1,
            Err(PostError::Full) => break true,
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 1_000_000, "the mailbox never filled");
    };
    assert!(refused);
    // 4 MiB of 1000-byte messages (the default byte bound), at most.
    assert!(accepted <= (4 << 20) / 1000, "accepted {accepted}");
    assert_eq!(
        handle.post("sink", vec![0u8; 5 << 20]),
        Err(PostError::TooLarge)
    );
    assert_eq!(handle.post("nobody", "x"), Err(PostError::NoSuchInstance));
    common::figure("mailbox_accepted_before_full", accepted);
    drop(rt);
    assert_eq!(handle.post("sink", "x"), Err(PostError::Stopped));
}

#[test]
fn instances_post_to_each_other_and_never_reenter() {
    let mut rt = runtime(&["a", "b"]);
    let handle = rt.handle();
    handle.post("a", "fwd:b:hello b").unwrap();
    handle.post("a", "fwd:nobody:x").unwrap();
    handle.post("b", "direct").unwrap();
    run_until(&mut rt, || got().len() == 4);
    let got = got();
    let at = |who: &str, what: &[u8]| {
        got.iter()
            .position(|(n, m)| n == who && m == what)
            .unwrap_or_else(|| {
                panic!(
                    "{who} never got {:?}: {got:?}",
                    String::from_utf8_lossy(what)
                )
            })
    };
    // a's hook returned (and recorded) before b got the forwarded message:
    // a post is delivered after the current hook, never inside it.
    assert!(at("a", b"forwarded Ok(())") < at("b", b"hello b"));
    // a's own messages stay in posting order.
    assert!(at("a", b"forwarded Ok(())") < at("a", b"forwarded Err(NoSuchInstance)"));
    at("b", b"direct");
}

#[test]
fn a_panic_in_on_message_is_contained() {
    let mut rt = runtime(&["sink", "early"]);
    let handle = rt.handle();
    handle.post("sink", "panic").unwrap();
    handle.post("sink", "after").unwrap();
    run_until(&mut rt, || got().len() == 2);
    let got = got();
    assert!(got.contains(&("early".into(), b"from create".to_vec())));
    assert!(got.contains(&("sink".into(), b"after".to_vec())));
}

/// The host's `post` works from another thread too, through a `Ctx` the
/// handler handed out; it refuses with `Full` rather than block.
struct Spawner {
    done: Arc<AtomicUsize>,
}

static SPAWNED: Mutex<Option<Arc<AtomicUsize>>> = Mutex::new(None);

impl Handler for Spawner {
    type Config = NoConfig;
    type Conn = ();
    fn create(ctx: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        let done = SPAWNED.lock().unwrap().clone().unwrap();
        let ctx = SendCtx(*ctx);
        std::thread::spawn(move || {
            let ctx = ctx;
            for i in 0..100u32 {
                while let Err(e) = ctx.0.post_self(&i.to_be_bytes()) {
                    assert_eq!(e, Error::Full);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Ok(Spawner { done })
    }
    fn on_message(&mut self, _: &Ctx, msg: &[u8]) {
        let i = u32::from_be_bytes(msg.try_into().unwrap());
        assert_eq!(i as usize, self.done.load(Ordering::SeqCst), "in order");
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// A `Ctx` may be used from another thread for `post` (and `log`) only;
/// the test keeps to that.
struct SendCtx(Ctx);
// SAFETY: only `post_self` is called on the other thread, which loopd.h
// allows from any thread while the instance exists (the runtime outlives
// the thread: the test waits for all 100 messages first).
unsafe impl Send for SendCtx {}

#[test]
fn the_host_post_works_from_another_thread() {
    let done = Arc::new(AtomicUsize::new(0));
    *SPAWNED.lock().unwrap() = Some(done.clone());
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Spawner>("spawner"))
        .build()
        .unwrap();
    let d = done.clone();
    run_until(&mut rt, || d.load(Ordering::SeqCst) == 100);
    let s = rt.stats();
    assert!(s.loop_stats.events >= 100, "{:?}", s.loop_stats);
}
