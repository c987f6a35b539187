//! Timers never fire early, and fire in the first pass that starts after
//! their deadline at the latest.
//!
//! A handler linked into an embedded runtime arms timers with delays that
//! are not whole milliseconds (0, 1 µs, 999 µs, 1.5 ms, ...), and more from
//! inside `on_timer`. For each it records the instant just before
//! `Ctx::set_timer` plus the delay asked for (its deadline), the instant just
//! after it plus the delay in the host's whole milliseconds (when it is due
//! at the latest) and, in `on_timer`, the instant and the loop pass. The
//! loop is driven with `run_once(None)`, so only the timers wake it. Checks,
//! per timer: it fired at or after its deadline (never early), and no later
//! than the first pass that started once it was due. Per run: passes that
//! fired nothing (woken before any deadline: a timeout rounded down
//! somewhere) stay a handful. No wall-clock bound is asserted; lateness
//! after the due instant is printed as a figure.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{Ctx, Handler, NoConfig, TimerId};

/// Chains of timers armed in `create`; each re-arms from `on_timer`.
const CHAINS: usize = 48;
/// Timers per chain.
const PER_CHAIN: usize = 5;

/// One timer: when it was due and when (and in which pass) it fired.
#[derive(Debug, Clone, Copy)]
struct Shot {
    delay: Duration,
    /// Just before `set_timer`, plus the delay: it must not fire earlier.
    deadline: Instant,
    /// Just after `set_timer`, plus the delay rounded up to the host's whole
    /// milliseconds (`timer_set` takes `delay_ms`): it is due by then.
    due_by: Instant,
    fired: Option<(Instant, usize)>,
}

#[derive(Debug, Default)]
struct Log {
    shots: Vec<Shot>,
    /// Passes that ran `on_timer` at least once.
    busy_passes: Vec<usize>,
}

static LOG: Mutex<Log> = Mutex::new(Log {
    shots: Vec::new(),
    busy_passes: Vec::new(),
});
/// The pass the driver is in (set before each `run_once`).
static PASS: AtomicUsize = AtomicUsize::new(0);

/// Delays that are not whole milliseconds, and some that are.
fn delay(n: usize) -> Duration {
    const SPECIAL: [u64; 10] = [0, 1, 999, 1000, 1001, 1500, 1999, 2000, 2001, 125];
    if n < SPECIAL.len() {
        return Duration::from_micros(SPECIAL[n]);
    }
    // A fixed pseudo-random spread over 0..6 ms.
    let x = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    Duration::from_micros(x % 6000)
}

fn arm(ctx: &Ctx, index: usize) {
    let delay = delay(index);
    let whole_ms = Duration::from_millis(delay.as_nanos().div_ceil(1_000_000) as u64);
    let mut log = LOG.lock().unwrap();
    assert_eq!(log.shots.len(), index, "shots are armed in index order");
    let deadline = Instant::now() + delay;
    ctx.set_timer(delay, index as u64)
        .expect("the timer limit is far away");
    log.shots.push(Shot {
        delay,
        deadline,
        due_by: Instant::now() + whole_ms,
        fired: None,
    });
}

/// Arms `CHAINS` timers in `create`; each `on_timer` records itself and arms
/// the next timer of its chain.
struct Clock {
    next: usize,
}

impl Handler for Clock {
    type Config = NoConfig;
    type Conn = ();

    fn create(ctx: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        for i in 0..CHAINS {
            arm(ctx, i);
        }
        Ok(Clock { next: CHAINS })
    }

    fn on_timer(&mut self, ctx: &Ctx, _: TimerId, index: u64) {
        let now = Instant::now();
        let pass = PASS.load(Ordering::SeqCst);
        {
            let mut log = LOG.lock().unwrap();
            let shot = &mut log.shots[index as usize];
            assert!(shot.fired.is_none(), "timer {index} fired twice");
            shot.fired = Some((now, pass));
            if log.busy_passes.last() != Some(&pass) {
                log.busy_passes.push(pass);
            }
        }
        if self.next < CHAINS * PER_CHAIN {
            arm(ctx, self.next);
            self.next += 1;
        }
    }
}

#[test]
fn timers_fire_at_their_deadline_never_before_and_within_one_pass() {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Clock>("clock"))
        .build()
        .unwrap();
    // A watchdog, so a timer the poller never wakes for fails the test
    // instead of hanging it.
    let done = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, fired, handle) = (done.clone(), fired.clone(), rt.handle());
        std::thread::spawn(move || {
            let deadline = Instant::now() + TIMEOUT;
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !done.load(Ordering::SeqCst) {
                fired.store(true, Ordering::SeqCst);
                handle.wake();
            }
        })
    };
    let total = CHAINS * PER_CHAIN;
    // starts[k]: when pass k began.
    let mut starts: Vec<Instant> = Vec::new();
    let all_fired = || {
        let log = LOG.lock().unwrap();
        log.shots.len() == total && log.shots.iter().all(|s| s.fired.is_some())
    };
    while !all_fired() {
        assert!(
            starts.len() < 100 * total,
            "{} passes for {total} timers",
            starts.len()
        );
        PASS.store(starts.len(), Ordering::SeqCst);
        starts.push(Instant::now());
        rt.run_once(None).unwrap();
        assert!(
            !fired.load(Ordering::SeqCst),
            "a pending timer never woke the loop"
        );
    }
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();

    let log = LOG.lock().unwrap();
    let mut max_late = Duration::ZERO;
    for (i, shot) in log.shots.iter().enumerate() {
        let (at, pass) = shot.fired.expect("checked above");
        assert!(
            at >= shot.deadline,
            "timer {i} ({:?}) fired {:?} before its deadline",
            shot.delay,
            shot.deadline - at
        );
        // The first pass that began once it was due fires it, if an earlier
        // one did not.
        if let Some(due) = starts.iter().position(|s| *s >= shot.due_by) {
            assert!(
                pass <= due,
                "timer {i} ({:?}) fired in pass {pass}; pass {due} already began after its deadline",
                shot.delay
            );
        }
        max_late = max_late.max(at.saturating_duration_since(shot.due_by));
    }
    // Every pass is woken by a due timer: one that fires nothing was woken
    // before any deadline (a rounded-down timeout spins the loop).
    let idle = starts.len() - log.busy_passes.len();
    figure("timers_never_early.timers", total);
    figure("timers_never_early.passes", starts.len());
    figure("timers_never_early.idle_passes", idle);
    figure("timers_never_early.max_late_us", max_late.as_micros());
    assert!(
        idle <= 2 + total / 50,
        "{idle} of {} passes fired no timer",
        starts.len()
    );
}
