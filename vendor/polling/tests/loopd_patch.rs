//! loopd patch (see LOOPD-PATCH.md): the epoll backend keeps its timerfd
//! armed across `wait`s with the same deadline and clears its notifier only
//! when it was delivered. These pin what that must not change: a timeout
//! still ends a wait, never before its deadline, and a notification is never
//! lost. Every wait is bounded by a watchdog that makes the socket readable
//! after 10 s; a wait it had to end fails the test. The time checks are lower bounds only.

#![cfg(unix)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode, Poller};

/// A poller with one level-triggered socket under key 1 that the test can
/// make readable (`ready`) and drain (`drain`).
struct Rig {
    poller: Arc<Poller>,
    tx: UnixStream,
    rx: UnixStream,
    events: Events,
    watchdog_fired: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl Rig {
    fn new() -> io::Result<Rig> {
        let poller = Arc::new(Poller::new()?);
        let (tx, rx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        // SAFETY: `rx` outlives its registration (deleted in Drop).
        unsafe { poller.add_with_mode(&rx, Event::readable(1), PollMode::Level)? };
        let watchdog_fired = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        {
            // It ends a stuck wait with I/O, not with `notify`: a broken
            // notifier must not hang the test.
            let mut tx = tx.try_clone()?;
            let (fired, done) = (watchdog_fired.clone(), done.clone());
            thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until && !done.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(5));
                }
                if !done.load(Ordering::SeqCst) {
                    fired.store(true, Ordering::SeqCst);
                    let _ = tx.write_all(&[1]);
                }
            });
        }
        Ok(Rig {
            poller,
            tx,
            rx,
            events: Events::new(),
            watchdog_fired,
            done,
        })
    }

    fn ready(&mut self) {
        self.tx.write_all(&[1]).unwrap();
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 64];
        while self.rx.read(&mut buf).is_ok() {}
    }

    /// Waits until `deadline`; returns how many socket events came back.
    fn wait_until(&mut self, deadline: Instant) -> usize {
        self.events.clear();
        let n = self
            .poller
            .wait_deadline(&mut self.events, deadline)
            .unwrap();
        assert!(
            !self.watchdog_fired.load(Ordering::SeqCst),
            "a wait with a timeout did not end by itself"
        );
        n
    }

    /// A wait that returns at once with the socket readable: arms the timer
    /// for `deadline` (or keeps it) without it firing.
    fn arm(&mut self, deadline: Instant) {
        self.ready();
        assert_eq!(self.wait_until(deadline), 1);
        self.drain();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.poller.delete(&self.rx);
    }
}

/// Waits at `deadline` until one returns without events (the timeout) and
/// checks it did not come early.
fn times_out_at(rig: &mut Rig, deadline: Instant) {
    for _ in 0..1000 {
        if rig.wait_until(deadline) == 0 {
            let now = Instant::now();
            assert!(now >= deadline, "woke {:?} early", deadline - now);
            return;
        }
        rig.drain();
    }
    panic!("1000 waits returned events with nothing written");
}

#[test]
fn a_kept_timer_still_ends_the_wait() -> io::Result<()> {
    let mut rig = Rig::new()?;
    let deadline = Instant::now() + Duration::from_millis(30);
    // The first wait arms the timer; the next ones keep it.
    for _ in 0..20 {
        rig.arm(deadline);
    }
    times_out_at(&mut rig, deadline);
    Ok(())
}

#[test]
fn timeouts_as_durations_from_one_deadline_still_end_the_wait() -> io::Result<()> {
    // How loopd and most loops call it: `deadline - now` on every pass.
    let mut rig = Rig::new()?;
    let deadline = Instant::now() + Duration::from_millis(30);
    for _ in 0..20 {
        rig.ready();
        rig.events.clear();
        let timeout = deadline.saturating_duration_since(Instant::now());
        assert_eq!(rig.poller.wait(&mut rig.events, Some(timeout))?, 1);
        rig.drain();
    }
    for _ in 0..1000 {
        rig.events.clear();
        let timeout = deadline.saturating_duration_since(Instant::now());
        if rig.poller.wait(&mut rig.events, Some(timeout))? == 0 {
            assert!(
                !rig.watchdog_fired.load(Ordering::SeqCst),
                "a wait with a timeout did not end by itself"
            );
            let now = Instant::now();
            assert!(now >= deadline, "woke {:?} early", deadline - now);
            return Ok(());
        }
        rig.drain();
    }
    panic!("1000 waits returned events with nothing written");
}

#[test]
fn an_earlier_deadline_rearms_the_timer() -> io::Result<()> {
    let mut rig = Rig::new()?;
    rig.arm(Instant::now() + Duration::from_secs(3600));
    let soon = Instant::now() + Duration::from_millis(20);
    times_out_at(&mut rig, soon);
    Ok(())
}

#[test]
fn a_later_deadline_is_not_woken_by_the_earlier_timer() -> io::Result<()> {
    let mut rig = Rig::new()?;
    rig.arm(Instant::now() + Duration::from_millis(10));
    let later = Instant::now() + Duration::from_millis(60);
    times_out_at(&mut rig, later);
    Ok(())
}

#[test]
fn a_timer_that_expired_unseen_does_not_end_a_later_wait() -> io::Result<()> {
    let mut rig = Rig::new()?;
    rig.arm(Instant::now() + Duration::from_millis(5));
    // It expires while nobody waits; its event is still queued in epoll.
    thread::sleep(Duration::from_millis(30));
    let later = Instant::now() + Duration::from_millis(40);
    times_out_at(&mut rig, later);
    Ok(())
}

#[test]
fn a_wait_without_a_timeout_is_not_ended_by_an_earlier_timer() -> io::Result<()> {
    let mut rig = Rig::new()?;
    rig.arm(Instant::now() + Duration::from_millis(10));
    // Only this write, well after the timer's deadline, may end the wait.
    let mut tx = rig.tx.try_clone()?;
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        tx.write_all(&[1]).unwrap();
    });
    rig.events.clear();
    let n = rig.poller.wait(&mut rig.events, None)?;
    assert_eq!(
        n, 1,
        "the earlier wait's timer ended a wait without a timeout"
    );
    assert!(!rig.watchdog_fired.load(Ordering::SeqCst));
    writer.join().unwrap();
    Ok(())
}

#[test]
fn a_timeout_still_fires_after_a_notification() -> io::Result<()> {
    let mut rig = Rig::new()?;
    let deadline = Instant::now() + Duration::from_millis(40);
    rig.arm(deadline);
    // The notification ends the next wait at once...
    rig.poller.notify()?;
    assert_eq!(rig.wait_until(deadline), 0);
    // ...and the timeout still ends the one after it.
    times_out_at(&mut rig, deadline);
    Ok(())
}

#[test]
fn notifications_after_io_wakeups_are_never_lost() {
    // The waiter returns for I/O a few times (the patched backend then
    // leaves its notifier alone), then blocks with nothing ready; another
    // thread notifies just before or while it blocks. Every round's
    // notification must end that wait.
    let mut rig = Rig::new().unwrap();
    let rounds = 300;
    let (go, go_rx) = mpsc::channel::<u64>();
    let notifier = {
        let p = rig.poller.clone();
        thread::spawn(move || {
            while let Ok(spin) = go_rx.recv() {
                // 0 to ~100 µs: before, at or after the waiter blocks.
                let until = Instant::now() + Duration::from_nanos(spin);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                p.notify().unwrap();
            }
        })
    };
    let waits = AtomicUsize::new(0);
    for round in 0..rounds {
        for _ in 0..round % 4 {
            rig.ready();
            rig.events.clear();
            let n = rig
                .poller
                .wait(&mut rig.events, Some(Duration::from_secs(3600)))
                .unwrap();
            assert_eq!(n, 1);
            rig.drain();
        }
        go.send((round as u64 * 7919) % 100_000).unwrap();
        rig.events.clear();
        rig.poller
            .wait(&mut rig.events, Some(Duration::from_secs(3600)))
            .unwrap();
        waits.fetch_add(1, Ordering::Relaxed);
        assert!(
            !rig.watchdog_fired.load(Ordering::SeqCst),
            "the notification of round {round} was lost"
        );
    }
    drop(go);
    notifier.join().unwrap();
    assert_eq!(waits.load(Ordering::Relaxed), rounds);
}
