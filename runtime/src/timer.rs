//! Timers: a min-heap of deadlines over a generation-tagged registry.
//!
//! Cancelling removes the registry entry at once; its heap entry is skipped
//! when it reaches the top. So that a handler which sets and cancels
//! far-future timers in a loop cannot grow the heap without bound, the heap
//! is rebuilt from the live entries once it holds more than twice as many.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::registry::Registry;

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// A handler's timer: `on_timer(id, user_data)` on that instance.
    Handler { instance: usize, user_data: u64 },
    /// A connection's flush-before-close took too long: abort it.
    CloseTimeout { conn: u64 },
    /// A listener paused after EMFILE/ENFILE may accept again.
    ResumeListener { listener: u64 },
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    kind: TimerKind,
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
        let id = self.entries.insert_with(|_| Entry { deadline, kind });
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

    /// Removes and returns one timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(u64, TimerKind)> {
        let deadline = self.next_deadline()?;
        if deadline > now {
            return None;
        }
        let Reverse((_, id)) = self.heap.pop()?;
        self.entries.remove(id).map(|e| (id, e.kind))
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
