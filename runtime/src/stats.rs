//! Counters: per handler instance, per listener and for the loop itself.
//!
//! Counting is a `Cell` add on state the loop already touches: no syscall,
//! no allocation, no lock. Connections and sockets hold an `Rc` of their
//! instance's and their listener's counters and bump both; the loop keeps
//! its own. [`crate::Runtime::stats`] copies them all into a plain
//! [`Stats`] snapshot.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use loopd_handler_api::abi;

/// One counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(Cell<u64>);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.set(self.0.get().wrapping_add(n));
    }

    #[inline]
    pub(crate) fn sub(&self, n: u64) {
        self.0.set(self.0.get().saturating_sub(n));
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Close reasons in counter order (`LOOPD_REASON_*` 1 to 10); anything
/// else counts as the last slot, "other".
const REASONS: usize = 11;

/// The counters of one handler instance or one listener.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: Counter,
    pub(crate) connected: Counter,
    pub(crate) active: Counter,
    closed: [Counter; REASONS],
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) frames_in: Counter,
    pub(crate) oversize_frames: Counter,
    pub(crate) datagrams_in: Counter,
    pub(crate) datagrams_out: Counter,
    pub(crate) datagrams_dropped_send_full: Counter,
    pub(crate) datagrams_dropped_oversize: Counter,
    pub(crate) datagrams_dropped_send_error: Counter,
    pub(crate) timers_set: Counter,
    pub(crate) timers_fired: Counter,
    pub(crate) timers_active: Counter,
}

impl Counters {
    pub(crate) fn closed(&self, reason: i32) -> &Counter {
        let slot = match reason {
            1..=10 => (reason - 1) as usize,
            _ => REASONS - 1,
        };
        &self.closed[slot]
    }

    fn snapshot(&self) -> CounterSnapshot {
        let closed = |r| self.closed(r).get();
        CounterSnapshot {
            accepted: self.accepted.get(),
            connected: self.connected.get(),
            active: self.active.get(),
            closed: ClosedByReason {
                peer: closed(abi::LOOPD_REASON_PEER),
                local: closed(abi::LOOPD_REASON_LOCAL),
                error: closed(abi::LOOPD_REASON_ERROR),
                frame_too_big: closed(abi::LOOPD_REASON_FRAME_TOO_BIG),
                handler: closed(abi::LOOPD_REASON_HANDLER),
                shutdown: closed(abi::LOOPD_REASON_SHUTDOWN),
                connect_failed: closed(abi::LOOPD_REASON_CONNECT_FAILED),
                timeout: closed(abi::LOOPD_REASON_TIMEOUT),
                idle: closed(abi::LOOPD_REASON_IDLE),
                limit: closed(abi::LOOPD_REASON_LIMIT),
                other: self.closed[REASONS - 1].get(),
            },
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            frames_in: self.frames_in.get(),
            oversize_frames: self.oversize_frames.get(),
            datagrams_in: self.datagrams_in.get(),
            datagrams_out: self.datagrams_out.get(),
            datagrams_dropped: DatagramDrops {
                send_buffer_full: self.datagrams_dropped_send_full.get(),
                oversize: self.datagrams_dropped_oversize.get(),
                send_error: self.datagrams_dropped_send_error.get(),
            },
            timers_set: self.timers_set.get(),
            timers_fired: self.timers_fired.get(),
            timers_active: self.timers_active.get(),
        }
    }
}

/// A named set of counters: an instance's (named after it) or a
/// listener's (named by its URL).
#[derive(Debug)]
pub(crate) struct Scope {
    pub(crate) name: Box<str>,
    pub(crate) counters: Counters,
}

impl Scope {
    pub(crate) fn new(name: impl Into<Box<str>>) -> Rc<Scope> {
        Rc::new(Scope {
            name: name.into(),
            counters: Counters::default(),
        })
    }
}

/// Bumps a counter in an instance's scope and, if there is one, a
/// listener's: `count(&inst, listener.as_deref(), |c| &c.bytes_in, n)`.
#[inline]
pub(crate) fn count(
    instance: &Scope,
    listener: Option<&Scope>,
    which: impl Fn(&Counters) -> &Counter,
    n: u64,
) {
    which(&instance.counters).add(n);
    if let Some(l) = listener {
        which(&l.counters).add(n);
    }
}

/// The loop's own counters.
#[derive(Debug, Default)]
pub(crate) struct LoopCounters {
    pub(crate) passes: u64,
    pub(crate) events: u64,
    pub(crate) busy: Duration,
    pub(crate) waiting: Duration,
}

/// A copy of every counter, from [`crate::Runtime::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The loop itself.
    pub loop_stats: LoopStats,
    /// Each handler instance, in the order they were created.
    pub handlers: Vec<HandlerStats>,
    /// Each listener (stream listeners and UDP sockets), in the order they
    /// were opened.
    pub listeners: Vec<ListenerStats>,
}

impl Stats {
    /// The (serving, not draining) instance named `name`, if there is one.
    pub fn handler(&self, name: &str) -> Option<&HandlerStats> {
        self.handlers.iter().find(|h| h.name == name && !h.draining)
    }

    /// Several snapshots (of workers) added up: loop counters summed,
    /// handlers matched by name and draining flag, listeners by URL.
    pub fn sum(parts: &[Stats]) -> Stats {
        let mut total = Stats::default();
        for s in parts {
            let l = &mut total.loop_stats;
            l.passes += s.loop_stats.passes;
            l.events += s.loop_stats.events;
            l.busy += s.loop_stats.busy;
            l.waiting += s.loop_stats.waiting;
            for h in &s.handlers {
                match total
                    .handlers
                    .iter_mut()
                    .find(|t| t.name == h.name && t.draining == h.draining)
                {
                    Some(t) => t.counters.add(&h.counters),
                    None => total.handlers.push(h.clone()),
                }
            }
            for ls in &s.listeners {
                match total.listeners.iter_mut().find(|t| t.url == ls.url) {
                    Some(t) => {
                        t.counters.add(&ls.counters);
                        t.open |= ls.open;
                    }
                    None => total.listeners.push(ls.clone()),
                }
            }
        }
        total
    }

    /// The listener whose bound URL is `url`, if there is one.
    pub fn listener(&self, url: &str) -> Option<&ListenerStats> {
        self.listeners.iter().find(|l| l.url == url)
    }
}

/// The loop's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoopStats {
    /// Passes (`run_once` calls) so far.
    pub passes: u64,
    /// Readiness events and timers handled.
    pub events: u64,
    /// Time spent handling events, timers and deferred work.
    pub busy: Duration,
    /// Time spent waiting in the poller.
    pub waiting: Duration,
}

/// One handler instance's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerStats {
    /// The instance name.
    pub name: String,
    /// An old instance a reload replaced (or removed), serving its last
    /// connections: the new instance of the same name is listed too.
    pub draining: bool,
    /// Its counters: every connection, socket and timer of the instance.
    pub counters: CounterSnapshot,
}

/// One listener's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// The URL actually bound (`tcp://127.0.0.1:7000`, `udp://…`, `unix://…`).
    pub url: String,
    /// The handler instance it belongs to.
    pub handler: String,
    /// Whether it is still open (a closed listener keeps its totals).
    pub open: bool,
    /// Its counters: the connections it accepted (or, for a UDP socket,
    /// its datagrams). Outbound connections and timers count only on their
    /// instance.
    pub counters: CounterSnapshot,
}

/// Counter values at the moment of the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterSnapshot {
    /// Connections accepted.
    pub accepted: u64,
    /// Outbound connections made (`connect`), whether or not they succeeded.
    pub connected: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed, by reason.
    pub closed: ClosedByReason,
    /// Bytes read from stream connections.
    pub bytes_in: u64,
    /// Bytes written to stream connections (`send_file` included).
    pub bytes_out: u64,
    /// Frames handed to `on_data`.
    pub frames_in: u64,
    /// Frames over `max_frame` (skipped or closed).
    pub oversize_frames: u64,
    /// Datagrams handed to `on_datagram`.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams dropped, by reason.
    pub datagrams_dropped: DatagramDrops,
    /// Handler timers set.
    pub timers_set: u64,
    /// Handler timers that fired.
    pub timers_fired: u64,
    /// Handler timers pending now.
    pub timers_active: u64,
}

impl CounterSnapshot {
    fn add(&mut self, o: &CounterSnapshot) {
        self.accepted += o.accepted;
        self.connected += o.connected;
        self.active += o.active;
        let (c, d) = (&mut self.closed, &o.closed);
        c.peer += d.peer;
        c.local += d.local;
        c.error += d.error;
        c.frame_too_big += d.frame_too_big;
        c.handler += d.handler;
        c.shutdown += d.shutdown;
        c.connect_failed += d.connect_failed;
        c.timeout += d.timeout;
        c.idle += d.idle;
        c.limit += d.limit;
        c.other += d.other;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.frames_in += o.frames_in;
        self.oversize_frames += o.oversize_frames;
        self.datagrams_in += o.datagrams_in;
        self.datagrams_out += o.datagrams_out;
        let (a, b) = (&mut self.datagrams_dropped, &o.datagrams_dropped);
        a.send_buffer_full += b.send_buffer_full;
        a.oversize += b.oversize;
        a.send_error += b.send_error;
        self.timers_set += o.timers_set;
        self.timers_fired += o.timers_fired;
        self.timers_active += o.timers_active;
    }

    /// Connections closed, whatever the reason.
    pub fn closed_total(&self) -> u64 {
        let c = &self.closed;
        c.peer
            + c.local
            + c.error
            + c.frame_too_big
            + c.handler
            + c.shutdown
            + c.connect_failed
            + c.timeout
            + c.idle
            + c.limit
            + c.other
    }
}

/// Closed connections, by `on_close` reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClosedByReason {
    /// The peer closed (EOF, then the output flushed).
    pub peer: u64,
    /// The handler closed it.
    pub local: u64,
    /// An I/O error or a reset.
    pub error: u64,
    /// A frame over `max_frame`.
    pub frame_too_big: u64,
    /// A hook failed or panicked.
    pub handler: u64,
    /// Closed by a shutdown.
    pub shutdown: u64,
    /// An outbound connect failed.
    pub connect_failed: u64,
    /// A flush before close timed out.
    pub timeout: u64,
    /// No traffic for the handler's `idle_timeout_ms`.
    pub idle: u64,
    /// Over a loopd limit (the budget for buffered input).
    pub limit: u64,
    /// Any other reason.
    pub other: u64,
}

/// Dropped datagrams, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatagramDrops {
    /// `send_datagram` found the kernel's send buffer full.
    pub send_buffer_full: u64,
    /// A received datagram was over `max_frame`.
    pub oversize: u64,
    /// `send_datagram` failed otherwise (unreachable, refused, too big).
    pub send_error: u64,
}

/// Snapshots of scopes, for [`crate::Runtime::stats`].
pub(crate) fn handler_stats(scope: &Scope, draining: bool) -> HandlerStats {
    HandlerStats {
        name: scope.name.to_string(),
        draining,
        counters: scope.counters.snapshot(),
    }
}

pub(crate) fn listener_stats(scope: &Scope, handler: &str, open: bool) -> ListenerStats {
    ListenerStats {
        url: scope.name.to_string(),
        handler: handler.to_string(),
        open,
        counters: scope.counters.snapshot(),
    }
}

pub(crate) fn loop_stats(c: &LoopCounters) -> LoopStats {
    LoopStats {
        passes: c.passes,
        events: c.events,
        busy: c.busy,
        waiting: c.waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_counts_land_in_their_reason() {
        let s = Scope::new("h");
        s.counters.closed(abi::LOOPD_REASON_PEER).add(2);
        s.counters.closed(abi::LOOPD_REASON_TIMEOUT).add(1);
        s.counters.closed(99).add(1);
        let snap = handler_stats(&s, false).counters;
        assert_eq!(snap.closed.peer, 2);
        assert_eq!(snap.closed.timeout, 1);
        assert_eq!(snap.closed.other, 1);
        assert_eq!(snap.closed_total(), 4);
    }

    #[test]
    fn count_bumps_instance_and_listener() {
        let i = Scope::new("h");
        let l = Scope::new("tcp://127.0.0.1:1");
        count(&i, Some(&l), |c| &c.bytes_in, 5);
        count(&i, None, |c| &c.bytes_in, 1);
        assert_eq!(i.counters.bytes_in.get(), 6);
        assert_eq!(l.counters.bytes_in.get(), 5);
        i.counters.active.sub(10);
        assert_eq!(i.counters.active.get(), 0, "saturates");
    }
}
