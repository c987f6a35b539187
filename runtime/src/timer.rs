//! Timers: a min-heap of deadlines over a generation-tagged registry.
//!
//! Cancelling removes the registry entry at once; its heap entry is skipped
//! when it reaches the top. So that a handler which sets and cancels
//! far-future timers in a loop cannot grow the heap without bound, the heap
//! is rebuilt from the live entries once it holds more than twice as many.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::registry::Registry;

/// Longest delay a handler's timer may have: about 136 years. Longer ones
/// are clamped, so a deadline is always representable.
pub(crate) const MAX_DELAY_MS: u64 = u32::MAX as u64 * 1000;

/// The deadline of a timer set `delay_ms` after `now` (clamped to
/// [`MAX_DELAY_MS`]). Never panics: a deadline the clock cannot represent
/// saturates near the latest one it can (a real clock is centuries away).
pub(crate) fn deadline_after(now: Instant, delay_ms: u64) -> Instant {
    let mut delay = Duration::from_millis(delay_ms.min(MAX_DELAY_MS));
    loop {
        match now.checked_add(delay) {
            Some(at) => return at,
            None => delay /= 2,
        }
    }
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// A handler's timer: `on_timer(id, user_data)` on that instance.
    Handler {
        instance: crate::instance::InstanceId,
        user_data: u64,
    },
    /// A connection's flush-before-close took too long: abort it.
    CloseTimeout { conn: u64 },
    /// A connection's TLS handshake took too long: close it.
    HandshakeTimeout { conn: u64 },
    /// A listener paused after EMFILE/ENFILE may accept again.
    ResumeListener { listener: u64 },
    /// A connection on the control socket may be out of time to send its
    /// request (`control.rs`).
    #[cfg(target_os = "linux")]
    #[cfg_attr(not(feature = "signals"), allow(dead_code))]
    ControlRequests { control: u64 },
    /// Close connections idle past their instance's `idle_timeout_ms`
    /// (repeating, while any instance has one).
    IdleSweep,
    /// An instance a reload replaced ran out of `drain_timeout_ms`.
    DrainTimeout {
        instance: crate::instance::InstanceId,
    },
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    kind: TimerKind,
    /// A repeating timer's interval (at least 1 ms).
    interval: Option<Duration>,
}

/// Pending timers.
#[derive(Debug)]
pub(crate) struct Timers {
    entries: Registry<Entry>,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            entries: Registry::new(),
            heap: BinaryHeap::new(),
        }
    }

    /// Number of pending timers.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn set(&mut self, deadline: Instant, kind: TimerKind) -> u64 {
        self.insert(deadline, kind, None)
    }

    /// A timer that fires at `deadline`, then every `interval` after it
    /// (drift-free: each deadline is the previous one plus `interval`), with
    /// the same id until cancelled. `interval` must be non-zero.
    pub(crate) fn set_repeating(
        &mut self,
        deadline: Instant,
        interval: Duration,
        kind: TimerKind,
    ) -> u64 {
        debug_assert!(!interval.is_zero());
        self.insert(deadline, kind, Some(interval))
    }

    fn insert(&mut self, deadline: Instant, kind: TimerKind, interval: Option<Duration>) -> u64 {
        let id = self.entries.insert_with(|_| Entry {
            deadline,
            kind,
            interval,
        });
        self.heap.push(Reverse((deadline, id)));
        id
    }

    /// The timer's kind, if it is still pending.
    pub(crate) fn get(&self, id: u64) -> Option<TimerKind> {
        self.entries.get(id).map(|e| e.kind)
    }

    /// Cancels a pending timer; `false` if it fired or was cancelled already.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        if self.entries.remove(id).is_none() {
            return false;
        }
        if self.heap.len() > 64 && self.heap.len() > 2 * self.entries.len() {
            let entries = &self.entries;
            self.heap
                .retain(|Reverse((_, id))| entries.get(*id).is_some());
        }
        true
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.heap.peek().copied() {
            match self.entries.get(id) {
                Some(e) if e.deadline == deadline => return Some(deadline),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Removes and returns one timer due at or before `now`. A repeating
    /// timer is not removed but moved to its next deadline after `now`
    /// (ticks it missed are skipped, not bunched); [`Timers::get`] then
    /// still finds it.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(u64, TimerKind)> {
        let deadline = self.next_deadline()?;
        if deadline > now {
            return None;
        }
        let Reverse((_, id)) = self.heap.pop()?;
        let entry = self.entries.get_mut(id)?;
        let Some(interval) = entry.interval else {
            return self.entries.remove(id).map(|e| (id, e.kind));
        };
        let kind = entry.kind;
        let behind = now.duration_since(deadline).as_nanos() / interval.as_nanos();
        let steps = u32::try_from(behind + 1).unwrap_or(u32::MAX);
        let next = interval
            .checked_mul(steps)
            .and_then(|d| deadline.checked_add(d));
        match next {
            Some(next) => {
                entry.deadline = next;
                self.heap.push(Reverse((next, id)));
            }
            // Past what the clock can hold: it has fired its last.
            None => {
                self.entries.remove(id);
            }
        }
        Some((id, kind))
    }

    /// Cancels every timer matching `pred` (e.g. an instance's, at teardown).
    pub(crate) fn cancel_where(&mut self, pred: impl Fn(&TimerKind) -> bool) {
        for id in self.entries.ids() {
            if self.entries.get(id).is_some_and(|e| pred(&e.kind)) {
                self.cancel(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn handler(n: u64) -> TimerKind {
        TimerKind::Handler {
            instance: 0,
            user_data: n,
        }
    }

    #[test]
    fn fire_in_deadline_order_and_skip_cancelled() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let _a = t.set(t0 + Duration::from_millis(30), handler(3));
        let b = t.set(t0 + Duration::from_millis(10), handler(1));
        let _c = t.set(t0 + Duration::from_millis(20), handler(2));
        assert!(t.cancel(b));
        assert!(!t.cancel(b));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(20)));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(15)), None);
        let due: Vec<_> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_secs(1)))
            .map(|(_, k)| k)
            .collect();
        assert_eq!(due, vec![handler(2), handler(3)]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn repeating_timers_keep_their_id_and_do_not_drift() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timers::new();
        let id = t.set_repeating(t0 + ms(10), ms(10), handler(7));
        assert_eq!(t.pop_due(t0 + ms(9)), None);
        // Late by 3 ms: the next deadline is still t0 + 20, not t0 + 23.
        assert_eq!(t.pop_due(t0 + ms(13)), Some((id, handler(7))));
        assert_eq!(t.pop_due(t0 + ms(13)), None, "once per deadline");
        assert_eq!(t.next_deadline(), Some(t0 + ms(20)));
        // Stuck for 55 ms: one tick, and the missed ones are skipped.
        assert_eq!(t.pop_due(t0 + ms(75)), Some((id, handler(7))));
        assert_eq!(t.pop_due(t0 + ms(75)), None);
        assert_eq!(t.next_deadline(), Some(t0 + ms(80)));
        assert_eq!(t.get(id), Some(handler(7)), "still pending");
        assert!(t.cancel(id));
        assert_eq!(t.pop_due(t0 + ms(1000)), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn set_and_cancel_in_a_loop_stays_bounded() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut t = Timers::new();
        for i in 0..100_000 {
            let id = t.set(far, handler(i));
            t.cancel(id);
        }
        assert!(t.heap.len() <= 130, "heap grew to {}", t.heap.len());
    }

    #[test]
    fn cancel_where_removes_matching() {
        let now = Instant::now();
        let mut t = Timers::new();
        t.set(
            now,
            TimerKind::Handler {
                instance: 1,
                user_data: 0,
            },
        );
        t.set(
            now,
            TimerKind::Handler {
                instance: 2,
                user_data: 0,
            },
        );
        t.cancel_where(|k| matches!(k, TimerKind::Handler { instance: 1, .. }));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.pop_due(now).map(|(_, k)| k),
            Some(TimerKind::Handler {
                instance: 2,
                user_data: 0
            })
        );
    }
}

/// A model check: random sets, cancels and clock advances, with extreme
/// deadlines, against a reference model (a `BTreeMap` ordered by deadline,
/// then by the order timers were set). Every step compares what fires, in
/// what order, the next deadline, the count, and each id's state; the heap
/// must stay within its bound. `LOOPD_SOAK=1` runs many more cases
/// (`PROPTEST_CASES` overrides both). Prints `rel_timer.cases` and
/// `rel_timer.divergences` (also appended to `$LOOPD_FIGURES`).
#[cfg(test)]
mod model_check {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

    /// When a timer is due, relative to the clock at the time it is set.
    #[derive(Debug, Clone)]
    enum When {
        /// This long before now (a deadline already passed).
        Past(u64),
        /// `deadline_after(now, ms)`, the runtime's own conversion (0,
        /// small, around the clamp, u64::MAX).
        AfterMs(u64),
        /// The latest instant the clock can represent (what Duration::MAX
        /// saturates to).
        Latest,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set {
            when: When,
            instance: u64,
        },
        /// Set this many timers at once (enough to make the heap compact
        /// itself when they are cancelled).
        SetMany {
            count: usize,
            when: When,
            instance: u64,
        },
        /// Cancel the last `n` ids handed out.
        CancelRecent(usize),
        /// Cancel the k-th id from the end (`CancelRecent`, expanded).
        CancelBack(usize),
        /// Cancel the n-th id handed out so far (pending, fired or cancelled).
        Cancel(usize),
        /// Cancel an id that was never handed out.
        CancelUnknown(u64),
        /// Cancel every timer of one instance.
        CancelInstance(u64),
        /// Move the clock forward by this many ms, then fire what is due.
        Advance(u64),
        /// Move the clock to the next deadline, then fire what is due.
        AdvanceToNext,
        /// Move the clock to the latest instant: everything fires.
        AdvanceToLatest,
    }

    fn ms() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            0..10_000u64,
            Just(MAX_DELAY_MS - 1),
            Just(MAX_DELAY_MS),
            Just(MAX_DELAY_MS + 1),
            Just(u64::MAX - 1),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (ms(), 0..3u64).prop_map(|(ms, instance)| Op::Set { when: When::AfterMs(ms), instance }),
            1 => (0..100_000u64, 0..3u64).prop_map(|(ms, instance)| Op::Set { when: When::Past(ms), instance }),
            1 => (0..3u64).prop_map(|instance| Op::Set { when: When::Latest, instance }),
            1 => (1..120usize, ms(), 0..3u64).prop_map(|(count, ms, instance)| Op::SetMany { count, when: When::AfterMs(ms), instance }),
            5 => any::<usize>().prop_map(Op::Cancel),
            1 => (1..120usize).prop_map(Op::CancelRecent),
            1 => any::<u64>().prop_map(Op::CancelUnknown),
            1 => (0..3u64).prop_map(Op::CancelInstance),
            2 => prop_oneof![Just(0u64), 0..20_000u64, Just(MAX_DELAY_MS), Just(u64::MAX)].prop_map(Op::Advance),
            1 => Just(Op::AdvanceToNext),
            1 => Just(Op::AdvanceToLatest),
        ]
    }

    /// The latest instant representable after `base` (found by halving).
    fn latest(base: Instant) -> Instant {
        static LATEST: OnceLock<Instant> = OnceLock::new();
        *LATEST.get_or_init(|| {
            let (mut lo, mut hi) = (0u64, u64::MAX);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if base.checked_add(Duration::from_secs(mid)).is_some() {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            let t = base + Duration::from_secs(lo);
            t.checked_add(Duration::from_nanos(999_999_999))
                .unwrap_or(t)
        })
    }

    fn add_ms(t: Instant, ms: u64, base: Instant) -> Instant {
        t.checked_add(Duration::from_millis(ms))
            .unwrap_or(latest(base))
    }

    /// Runs one sequence against the timers and the model.
    fn check(ops: &[Op], base: Instant) -> Result<(), TestCaseError> {
        let mut t = Timers::new();
        // (deadline, order set) -> (id, kind), and id -> its key.
        let mut model: BTreeMap<(Instant, u64), (u64, TimerKind)> = BTreeMap::new();
        let mut keys: HashMap<u64, (Instant, u64)> = HashMap::new();
        let mut handed: Vec<u64> = Vec::new();
        let mut now = base;
        let mut seq = 0u64;
        let mut peak = 0usize;
        let mut steps: Vec<Op> = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::SetMany {
                    count,
                    when,
                    instance,
                } => steps.extend(std::iter::repeat_n(
                    Op::Set {
                        when: when.clone(),
                        instance: *instance,
                    },
                    *count,
                )),
                Op::CancelRecent(n) => {
                    steps.extend((1..=*n).map(Op::CancelBack));
                }
                other => steps.push(other.clone()),
            }
        }
        for (step, op) in steps.iter().enumerate() {
            let mut touched = None;
            match op {
                Op::SetMany { .. } | Op::CancelRecent(_) => unreachable!("expanded above"),
                Op::Set { when, instance } => {
                    let at = match *when {
                        When::Past(ms) => now.checked_sub(Duration::from_millis(ms)).unwrap_or(now),
                        When::AfterMs(ms) => {
                            let at = deadline_after(now, ms);
                            prop_assert!(at >= now);
                            prop_assert!(now
                                .checked_add(Duration::from_millis(MAX_DELAY_MS))
                                .is_none_or(|limit| at <= limit));
                            at
                        }
                        When::Latest => latest(base),
                    };
                    seq += 1;
                    let kind = TimerKind::Handler {
                        instance: *instance,
                        user_data: seq,
                    };
                    let id = t.set(at, kind);
                    prop_assert_ne!(id, 0, "id 0 handed out");
                    prop_assert!(!handed.contains(&id), "id {} handed out twice", id);
                    handed.push(id);
                    touched = Some(id);
                    model.insert((at, seq), (id, kind));
                    keys.insert(id, (at, seq));
                }
                Op::Cancel(_) | Op::CancelBack(_) => {
                    let pick = match *op {
                        Op::Cancel(n) if !handed.is_empty() => Some(handed[n % handed.len()]),
                        Op::CancelBack(k) => handed.len().checked_sub(k).map(|i| handed[i]),
                        _ => None,
                    };
                    let Some(id) = pick else {
                        continue;
                    };
                    touched = Some(id);
                    let want = match keys.remove(&id) {
                        Some(key) => model.remove(&key).is_some(),
                        None => false,
                    };
                    prop_assert_eq!(t.cancel(id), want, "cancel({})", id);
                }
                Op::CancelUnknown(id) => {
                    if !handed.contains(id) {
                        prop_assert!(!t.cancel(*id), "cancelled unknown id {}", id);
                    }
                }
                Op::CancelInstance(i) => {
                    t.cancel_where(
                        |k| matches!(k, TimerKind::Handler { instance, .. } if instance == i),
                    );
                    model.retain(|_, (id, k)| {
                        let gone =
                            matches!(k, TimerKind::Handler { instance, .. } if instance == i);
                        if gone {
                            keys.remove(id);
                        }
                        !gone
                    });
                }
                Op::Advance(_) | Op::AdvanceToNext | Op::AdvanceToLatest => {
                    let to = match op {
                        Op::Advance(ms) => add_ms(now, *ms, base),
                        Op::AdvanceToNext => model.keys().next().map_or(now, |k| k.0),
                        _ => latest(base),
                    };
                    // The clock never goes back.
                    now = now.max(to);
                    let mut fired = Vec::new();
                    while let Some(due) = t.pop_due(now) {
                        fired.push(due);
                        prop_assert!(fired.len() <= handed.len(), "fired more than was set");
                    }
                    let mut want = Vec::new();
                    while let Some(entry) = model.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let (id, kind) = entry.remove();
                        keys.remove(&id);
                        want.push((id, kind));
                    }
                    prop_assert_eq!(fired, want, "fired at {:?} after the start", now - base);
                }
            }
            // After every step: the same pending set, next deadline and ids.
            prop_assert_eq!(t.len(), model.len(), "pending count after {:?}", op);
            prop_assert_eq!(
                t.next_deadline(),
                model.keys().next().map(|k| k.0),
                "next deadline after {:?}",
                op
            );
            // Every id's state now and then (and after the steps that touch
            // many); the one a step touched, always.
            let all = step % 16 == 0
                || step + 1 == steps.len()
                || matches!(
                    op,
                    Op::CancelInstance(_)
                        | Op::Advance(_)
                        | Op::AdvanceToNext
                        | Op::AdvanceToLatest
                );
            for id in if all { &handed[..] } else { touched.as_slice() } {
                let want = keys.get(id).map(|key| model[key].1);
                prop_assert_eq!(t.get(*id), want, "get({}) after {:?}", id, op);
            }
            // Cancelled entries left in the heap are bounded: never more
            // than 64 or the most timers ever pending at once.
            peak = peak.max(t.len());
            prop_assert!(
                t.heap.len() >= t.len(),
                "a pending timer is missing from the heap"
            );
            prop_assert!(
                t.heap.len() - t.len() <= peak.max(64),
                "heap of {} for {} timers (peak {})",
                t.heap.len(),
                t.len(),
                peak
            );
        }
        Ok(())
    }

    fn figure(key: &str, value: u64) {
        let line = format!("{key}={value}");
        println!("{line}");
        if let Ok(path) = std::env::var("LOOPD_FIGURES") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    #[test]
    fn timers_match_a_reference_model() {
        let soak = std::env::var("LOOPD_SOAK").is_ok_and(|v| v == "1");
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if soak { 20_000 } else { 256 });
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let base = Instant::now();
        let ran = AtomicU64::new(0);
        let result = runner.run(&prop::collection::vec(op(), 1..200), |ops| {
            ran.fetch_add(1, Ordering::Relaxed);
            check(&ops, base)
        });
        let divergences = u64::from(result.is_err());
        figure("rel_timer.cases", u64::from(cases));
        figure("rel_timer.divergences", divergences);
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, ops)) => {
                panic!("the timers diverge from the model: {why}\nminimal sequence: {ops:#?}")
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            ran.load(Ordering::Relaxed) >= u64::from(cases),
            "ran fewer cases than asked"
        );
        assert_eq!(divergences, 0);
    }
}
