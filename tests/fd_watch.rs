//! fd watches and repeating timers (ABI 1.3): a handler's own descriptors
//! in loopd's loop, with stale ids refused and a descriptor closed under a
//! watch detected rather than spun on.

mod common;

use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use common::TIMEOUT;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{Ctx, Error, FdEvents, Handler, Interest, NoConfig, TimerId, WatchId};

thread_local! {
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// The pipe's read end, handed to the handler by the test.
    static PIPE: RefCell<Option<OwnedFd>> = const { RefCell::new(None) };
    static READ: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn log(line: impl Into<String>) {
    LOG.with(|l| l.borrow_mut().push(line.into()));
}

fn logged() -> Vec<String> {
    LOG.with(|l| l.borrow().clone())
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: a valid array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: pipe2 returned two new descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: `data` is valid for its length; `fd` is open.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}

/// Watches the pipe's read end; posted commands drive it.
struct Watcher {
    watch: Option<WatchId>,
}

impl Handler for Watcher {
    type Config = NoConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Watcher { watch: None })
    }
    fn on_message(&mut self, ctx: &Ctx, msg: &[u8]) {
        let fd = PIPE.with(|p| p.borrow().as_ref().map(|f| f.as_raw_fd()));
        match msg {
            b"watch" => {
                // SAFETY: the test keeps the pipe open while it is watched.
                let fd = unsafe { BorrowedFd::borrow_raw(fd.unwrap()) };
                let w = ctx.watch_fd(fd, Interest::READABLE, 42).unwrap();
                self.watch = Some(w);
                // The same fd twice is refused by the poller.
                log(format!(
                    "again: {:?}",
                    ctx.watch_fd(fd, Interest::READABLE, 0).err()
                ));
            }
            b"remove" => {
                let w = self.watch.unwrap();
                log(format!("remove: {:?}", ctx.remove_watch(w)));
                log(format!("stale remove: {:?}", ctx.remove_watch(w)));
                log(format!(
                    "stale modify: {:?}",
                    ctx.modify_watch(w, Interest::READABLE)
                ));
            }
            b"close-under" => {
                // Wrong on purpose: the fd is closed while still watched.
                PIPE.with(|p| p.borrow_mut().take());
                log("closed under the watch");
            }
            b"modify" => {
                let w = self.watch.unwrap();
                log(format!(
                    "modify: {:?}",
                    ctx.modify_watch(w, Interest::READABLE)
                ));
            }
            b"file" => {
                let f = std::fs::File::open("/proc/self/status").unwrap();
                log(format!(
                    "regular file: {:?}",
                    ctx.watch_fd(std::os::fd::AsFd::as_fd(&f), Interest::READABLE, 0)
                        .err()
                ));
            }
            _ => {}
        }
    }
    fn on_fd(&mut self, _: &Ctx, watch: WatchId, user_data: u64, events: FdEvents) {
        assert_eq!(Some(watch), self.watch);
        assert_eq!(user_data, 42);
        if events.readable {
            let fd = PIPE.with(|p| p.borrow().as_ref().unwrap().as_raw_fd());
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: `buf` is valid for its length; the pipe is open.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                READ.with(|r| r.borrow_mut().extend_from_slice(&buf[..n as usize]));
            }
        }
        log(format!(
            "on_fd readable={} hup={}",
            events.readable, events.hup
        ));
    }
}

fn watcher() -> (Runtime, OwnedFd) {
    LOG.with(|l| l.borrow_mut().clear());
    READ.with(|r| r.borrow_mut().clear());
    let (r, w) = pipe();
    PIPE.with(|p| *p.borrow_mut() = Some(r));
    let rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Watcher>("watcher"))
        .build()
        .unwrap();
    (rt, w)
}

fn run_until(rt: &mut Runtime, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {:?}", logged());
        rt.run_once(Some(Duration::from_millis(10))).unwrap();
    }
}

/// `run_once` passes that dispatched something, out of `passes`.
fn busy_passes(rt: &mut Runtime, passes: usize) -> usize {
    (0..passes)
        .filter(|_| rt.run_once(Some(Duration::from_millis(2))).unwrap() > 0)
        .count()
}

#[test]
fn a_pipe_is_read_through_its_watch_and_hup_parks_it() {
    let (mut rt, w) = watcher();
    rt.handle().post("watcher", "watch").unwrap();
    rt.handle().post("watcher", "file").unwrap();
    run_until(&mut rt, || logged().len() == 2);
    assert_eq!(logged()[0], "again: Some(Io)");
    assert_eq!(logged()[1], "regular file: Some(Io)");
    let writer = std::thread::spawn(move || {
        for i in 0..100u8 {
            write_all(&w, &[i; 100]);
            std::thread::sleep(Duration::from_millis(1));
        }
        w // dropped by the test: that is the hang-up
    });
    run_until(&mut rt, || READ.with(|r| r.borrow().len()) == 10_000);
    let w = writer.join().unwrap();
    let data = READ.with(|r| r.borrow().clone());
    for (i, chunk) in data.chunks(100).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == i as u8),
            "chunk {i} out of order"
        );
    }
    drop(w);
    run_until(&mut rt, || logged().iter().any(|l| l.contains("hup=true")));
    // Parked after the hang-up: it does not report again, however long.
    let before = logged().len();
    assert_eq!(busy_passes(&mut rt, 50), 0, "{:?}", logged());
    assert_eq!(logged().len(), before);
    rt.handle().post("watcher", "remove").unwrap();
    run_until(&mut rt, || logged().len() == before + 3);
    assert_eq!(
        &logged()[before..],
        [
            "remove: Ok(())",
            "stale remove: Err(NoSuchConn)",
            "stale modify: Err(NoSuchConn)"
        ]
    );
}

#[test]
fn a_fd_closed_under_its_watch_is_detected_not_spun_on() {
    let (mut rt, w) = watcher();
    rt.handle().post("watcher", "watch").unwrap();
    run_until(&mut rt, || logged().len() == 1);
    rt.handle().post("watcher", "close-under").unwrap();
    run_until(&mut rt, || logged().len() == 2);
    // The reader is gone: writes fail with EPIPE, nothing is reported.
    // SAFETY: as in write_all; the result is EPIPE (SIGPIPE is ignored by
    // the test harness's default Rust runtime).
    let n = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    assert_eq!(n, -1);
    assert_eq!(busy_passes(&mut rt, 50), 0, "spun on a closed fd");
    rt.handle().post("watcher", "modify").unwrap();
    run_until(&mut rt, || logged().len() == 3);
    assert_eq!(logged()[2], "modify: Err(Closed)", "detected and dropped");
    rt.handle().post("watcher", "remove").unwrap();
    run_until(&mut rt, || logged().len() == 6);
    assert_eq!(logged()[3], "remove: Err(NoSuchConn)", "already dropped");
}

/// A repeating timer ticks with one id until cancelled.
struct Ticker {
    id: Option<TimerId>,
    ticks: u32,
}

impl Handler for Ticker {
    type Config = NoConfig;
    type Conn = ();
    fn create(ctx: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        let id = ctx
            .set_repeating_timer(Duration::from_millis(1), Duration::from_millis(2), 9)
            .map_err(|e| e.to_string())?;
        assert_eq!(
            ctx.set_repeating_timer(Duration::ZERO, Duration::ZERO, 0)
                .err(),
            Some(Error::Invalid)
        );
        Ok(Ticker {
            id: Some(id),
            ticks: 0,
        })
    }
    fn on_timer(&mut self, ctx: &Ctx, timer: TimerId, user_data: u64) {
        assert_eq!(Some(timer), self.id, "one id for every tick");
        assert_eq!(user_data, 9);
        self.ticks += 1;
        log(format!("tick {}", self.ticks));
        if self.ticks == 5 {
            ctx.cancel_timer(timer).unwrap();
            log("cancelled");
        }
    }
}

#[test]
fn a_repeating_timer_ticks_until_cancelled() {
    LOG.with(|l| l.borrow_mut().clear());
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Ticker>("ticker"))
        .build()
        .unwrap();
    run_until(&mut rt, || {
        logged().last().map(String::as_str) == Some("cancelled")
    });
    for _ in 0..20 {
        rt.run_once(Some(Duration::from_millis(3))).unwrap();
    }
    assert_eq!(
        logged().len(),
        6,
        "no tick after the cancel: {:?}",
        logged()
    );
    let c = &rt.stats().handlers[0].counters;
    assert_eq!((c.timers_set, c.timers_fired, c.timers_active), (1, 5, 0));
}
