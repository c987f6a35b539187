//! Typed timer payloads: the per-instance table behind
//! [`Ctx::set_timer_with`](crate::Ctx::set_timer_with).
//!
//! The host's timers carry a `u64`; a payload of any type stays here, keyed
//! by the timer's id, from the call that armed the timer until one of:
//! the handler takes it ([`Ctx::take_timer_payload`](crate::Ctx::take_timer_payload)),
//! a one-shot timer's `on_timer` returns, the timer is cancelled, or the
//! instance is destroyed. Nothing outlives the instance, and the table
//! holds at most one entry per pending timer (which the host bounds).
//!
//! No user code runs while a `RefCell` here is borrowed: a payload is
//! always moved out first and dropped (or lent to a closure) afterwards, so
//! a payload whose `Drop` calls back into the `Ctx` cannot trip a borrow.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// One timer's payload.
struct Entry {
    payload: Box<dyn Any>,
    /// A repeating timer keeps its payload after each `on_timer`.
    repeating: bool,
}

/// The payload lent to a `with` closure: whose, and whether its timer was
/// cancelled meanwhile (then it is dropped, not put back).
#[derive(Clone, Copy)]
struct Lent {
    timer: u64,
    cancelled: bool,
}

/// The payloads of one handler instance's pending timers.
#[derive(Default)]
pub(crate) struct TimerPayloads {
    pending: RefCell<HashMap<u64, Entry>>,
    /// The payload of the timer whose `on_timer` is running.
    firing: RefCell<Option<(u64, Entry)>>,
    /// The payload lent to a `with` closure, if any.
    out: Cell<Option<Lent>>,
    /// Set once the instance is being destroyed: nothing is kept after.
    closed: Cell<bool>,
}

impl std::fmt::Debug for TimerPayloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerPayloads")
            .field("pending", &self.pending.borrow().len())
            .finish()
    }
}

impl TimerPayloads {
    /// Keeps `payload` for the pending timer `timer`. After
    /// [`TimerPayloads::close`] it is dropped instead.
    pub(crate) fn insert(&self, timer: u64, payload: Box<dyn Any>, repeating: bool) {
        if self.closed.get() {
            drop(payload);
            return;
        }
        let old = self
            .pending
            .borrow_mut()
            .insert(timer, Entry { payload, repeating });
        // A stale entry under a reused id (ids carry a generation, so this
        // does not happen with a conforming host) goes now, borrow released.
        drop(old);
    }

    /// Before `on_timer(timer)`: sets the timer's payload aside for the
    /// hook to take.
    pub(crate) fn begin_fire(&self, timer: u64) {
        let entry = self.pending.borrow_mut().remove(&timer);
        if let Some(entry) = entry {
            let old = self.firing.replace(Some((timer, entry)));
            drop(old);
        }
    }

    /// After `on_timer`: a repeating timer's payload goes back (unless the
    /// hook took it or cancelled the timer); a one-shot timer's is returned
    /// for the caller to drop.
    pub(crate) fn end_fire(&self) -> Option<Box<dyn Any>> {
        let (timer, entry) = self.firing.borrow_mut().take()?;
        if entry.repeating && !self.closed.get() {
            let old = self.pending.borrow_mut().insert(timer, entry);
            drop(old);
            None
        } else {
            Some(entry.payload)
        }
    }

    /// Moves the payload of `timer` out of the table if it is a `T`.
    fn remove_if<T: 'static>(&self, timer: u64) -> Option<(Entry, bool)> {
        {
            let mut firing = self.firing.borrow_mut();
            if firing
                .as_ref()
                .is_some_and(|(id, e)| *id == timer && (*e.payload).is::<T>())
            {
                return firing.take().map(|(_, e)| (e, true));
            }
        }
        let mut pending = self.pending.borrow_mut();
        if pending.get(&timer).is_some_and(|e| (*e.payload).is::<T>()) {
            return pending.remove(&timer).map(|e| (e, false));
        }
        None
    }

    /// Takes the payload of `timer` if it is a `T`; it is no longer kept
    /// (a repeating timer goes on without one).
    pub(crate) fn take<T: 'static>(&self, timer: u64) -> Option<T> {
        let (entry, _) = self.remove_if::<T>(timer)?;
        entry.payload.downcast::<T>().ok().map(|b| *b)
    }

    /// Lends the payload of `timer`, if it is a `T`, to `f`, then keeps it
    /// again, unless `f` cancelled the timer. Inside `f` the payload is
    /// out of the table: asking for it again finds nothing.
    pub(crate) fn with<T: 'static, R>(&self, timer: u64, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        if self.out.get().is_some() {
            // Nested lending is refused rather than juggled.
            return None;
        }
        let (entry, was_firing) = self.remove_if::<T>(timer)?;
        self.out.set(Some(Lent {
            timer,
            cancelled: false,
        }));
        // Put back (or drop) even if `f` panics: the guard runs on unwind.
        struct Restore<'a> {
            table: &'a TimerPayloads,
            timer: u64,
            entry: Option<Entry>,
            was_firing: bool,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let cancelled = self.table.out.replace(None).is_some_and(|l| l.cancelled);
                let Some(entry) = self.entry.take() else {
                    return;
                };
                if cancelled || self.table.closed.get() {
                    drop(entry);
                } else if self.was_firing {
                    let old = self.table.firing.replace(Some((self.timer, entry)));
                    drop(old);
                } else {
                    let old = self.table.pending.borrow_mut().insert(self.timer, entry);
                    drop(old);
                }
            }
        }
        let mut restore = Restore {
            table: self,
            timer,
            entry: Some(entry),
            was_firing,
        };
        let payload = restore
            .entry
            .as_mut()
            .and_then(|e| e.payload.downcast_mut::<T>())
            .expect("remove_if checked the type");
        let r = f(payload);
        drop(restore);
        Some(r)
    }

    /// The timer was cancelled: its payload is dropped (after the borrow).
    pub(crate) fn cancel(&self, timer: u64) {
        if let Some(lent) = self.out.get().filter(|l| l.timer == timer) {
            self.out.set(Some(Lent {
                cancelled: true,
                ..lent
            }));
        }
        let from_firing = {
            let mut firing = self.firing.borrow_mut();
            if firing.as_ref().is_some_and(|(id, _)| *id == timer) {
                firing.take()
            } else {
                None
            }
        };
        drop(from_firing);
        let from_pending = self.pending.borrow_mut().remove(&timer);
        drop(from_pending);
    }

    /// The instance is going: drops every payload, and any kept later.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        let firing = self.firing.borrow_mut().take();
        drop(firing);
        // A payload's Drop may arm a timer with a payload: that one is
        // dropped at once (closed), so one pass empties the table.
        let all: Vec<Entry> = self.pending.borrow_mut().drain().map(|(_, e)| e).collect();
        drop(all);
    }

    /// Payloads held (pending and firing), for tests.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.borrow().len() + usize::from(self.firing.borrow().is_some())
    }
}
