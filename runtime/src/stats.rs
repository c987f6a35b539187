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
            output_queued: 0,
        }
    }
}

/// A named set of counters: an instance's (named after it) or a
/// listener's (named by its URL).
#[derive(Debug)]
pub(crate) struct Scope {
    pub(crate) name: Box<str>,
    pub(crate) counters: Counters,
    /// Metrics the handler declared (an instance's scope only).
    pub(crate) metrics: std::cell::RefCell<crate::metrics::Metrics>,
}

impl Scope {
    pub(crate) fn new(name: impl Into<Box<str>>) -> Rc<Scope> {
        Rc::new(Scope {
            name: name.into(),
            counters: Counters::default(),
            metrics: Default::default(),
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

/// Upper bounds of the pass busy-time histogram buckets, in microseconds
/// (a last bucket, over the largest bound, is implied).
pub const PASS_BUSY_BOUNDS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// Buckets of the pass busy-time histogram: one per bound, then the rest.
pub const PASS_BUSY_BUCKETS: usize = PASS_BUSY_BOUNDS_US.len() + 1;

/// The loop's own counters.
#[derive(Debug, Default)]
pub(crate) struct LoopCounters {
    pub(crate) passes: u64,
    pub(crate) events: u64,
    pub(crate) busy: Duration,
    pub(crate) waiting: Duration,
    /// Passes by busy time (not cumulative): bucket `i` holds the passes
    /// up to `PASS_BUSY_BOUNDS_US[i]` and over the bound before.
    pub(crate) busy_buckets: [u64; PASS_BUSY_BUCKETS],
    /// Reloads applied.
    pub(crate) reloads: u64,
    /// Reloads that failed (the running config stayed).
    pub(crate) reload_failures: u64,
}

impl LoopCounters {
    /// Counts one pass that was busy for `busy`: a comparison per bound,
    /// no clock read and no allocation.
    #[inline]
    pub(crate) fn pass(&mut self, busy: Duration) {
        let us = busy.as_micros();
        let slot = PASS_BUSY_BOUNDS_US
            .iter()
            .position(|&b| us <= u128::from(b))
            .unwrap_or(PASS_BUSY_BUCKETS - 1);
        self.busy_buckets[slot] += 1;
        self.busy += busy;
        self.passes += 1;
    }
}

/// A copy of every counter, from [`crate::Runtime::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
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
            for (t, b) in l.busy_buckets.iter_mut().zip(s.loop_stats.busy_buckets) {
                *t += b;
            }
            l.reloads += s.loop_stats.reloads;
            l.reload_failures += s.loop_stats.reload_failures;
            for h in &s.handlers {
                match total
                    .handlers
                    .iter_mut()
                    .find(|t| t.name == h.name && t.draining == h.draining)
                {
                    Some(t) => {
                        t.counters.add(&h.counters);
                        crate::metrics::merge(&mut t.metrics, &h.metrics);
                    }
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
    /// Time spent waiting in the poller (with the few instructions before
    /// each wait that decide how long it may be).
    pub waiting: Duration,
    /// Passes by busy time, not cumulative: `busy_buckets[i]` counts the
    /// passes busy for at most [`PASS_BUSY_BOUNDS_US`]`[i]` microseconds
    /// (and more than the bound before); the last, the rest.
    pub busy_buckets: [u64; PASS_BUSY_BUCKETS],
    /// Reloads applied (a reload that failed is not counted here).
    pub reloads: u64,
    /// Reloads that failed and left the running config in place.
    pub reload_failures: u64,
}

/// One handler instance's counters.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct HandlerStats {
    /// The instance name.
    pub name: String,
    /// An old instance a reload replaced (or removed), serving its last
    /// connections: the new instance of the same name is listed too.
    pub draining: bool,
    /// Its counters: every connection, socket and timer of the instance.
    pub counters: CounterSnapshot,
    /// The metrics it declared (ABI 1.4 `metric_declare`).
    pub metrics: Vec<crate::metrics::MetricSnapshot>,
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
    /// Bytes waiting in the output queues of its open connections now.
    pub output_queued: u64,
}

impl CounterSnapshot {
    fn add(&mut self, o: &CounterSnapshot) {
        self.output_queued += o.output_queued;
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
        metrics: scope.metrics.borrow().snapshot(),
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
        busy_buckets: c.busy_buckets,
        reloads: c.reloads,
        reload_failures: c.reload_failures,
    }
}

/// Where every worker of a process leaves its latest snapshot, for the
/// `stats_json` host function (a status handler reads the whole process,
/// whichever worker it runs on).
///
/// A runtime publishes at the end of its first pass, then, once someone
/// has read the board, at most every [`PUBLISH_EVERY`] after a pass that
/// handled events: a snapshot costs a few allocations a tenth of a second,
/// never anything per event, and nothing at all without a reader.
#[derive(Debug, Default)]
pub(crate) struct StatsBoard {
    slots: std::sync::Mutex<Vec<Option<Stats>>>,
    read: std::sync::atomic::AtomicBool,
}

/// How stale a published snapshot may get while its loop is busy.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(100);

impl StatsBoard {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Stats>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Worker `index` left `stats`.
    pub(crate) fn publish(&self, index: usize, stats: Stats) {
        let mut slots = self.slots();
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        slots[index] = Some(stats);
    }

    /// Whether anyone has read the board (then it is kept fresh).
    pub(crate) fn has_readers(&self) -> bool {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every worker's snapshot as JSON text: `{"version", "abi", "workers":
    /// N, "total": {...}, "per_worker": [{"worker": K, ...}]}`.
    pub(crate) fn json(&self) -> String {
        self.read.store(true, std::sync::atomic::Ordering::Relaxed);
        let parts: Vec<(usize, Stats)> = self
            .slots()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.clone().map(|s| (i, s)))
            .collect();
        let all: Vec<Stats> = parts.iter().map(|(_, s)| s.clone()).collect();
        let per_worker: Vec<serde_json::Value> = parts
            .iter()
            .map(|(i, s)| {
                let mut v = s.to_json();
                v["worker"] = (*i).into();
                v
            })
            .collect();
        serde_json::json!({
            "version": crate::VERSION,
            "abi": format!("{}.{}", abi::LOOPD_ABI_MAJOR, abi::LOOPD_ABI_MINOR),
            "workers": parts.len(),
            "total": Stats::sum(&all).to_json(),
            "per_worker": per_worker,
        })
        .to_string()
    }
}

impl Stats {
    /// The snapshot as a JSON value (the `stats_json` host function's
    /// format; `docs/handlers/status.md` lists the fields).
    pub fn to_json(&self) -> serde_json::Value {
        let l = &self.loop_stats;
        serde_json::json!({
            "loop": {
                "passes": l.passes,
                "events": l.events,
                "busy_seconds": l.busy.as_secs_f64(),
                "waiting_seconds": l.waiting.as_secs_f64(),
                "busy_bounds_us": PASS_BUSY_BOUNDS_US,
                "busy_buckets": l.busy_buckets,
                "reloads": l.reloads,
                "reload_failures": l.reload_failures,
            },
            "handlers": self.handlers.iter().map(|h| {
                let mut v = h.counters.to_json();
                v["name"] = h.name.as_str().into();
                v["draining"] = h.draining.into();
                v["metrics"] = h.metrics.iter().map(|m| serde_json::json!({
                    "name": m.name,
                    "help": m.help,
                    "kind": m.kind.as_str(),
                    "labels": m.labels,
                    "buckets": m.buckets,
                    "series": m.series.iter().map(|s| serde_json::json!({
                        "labels": s.labels,
                        "value": s.value,
                        "counts": s.counts,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>().into();
                v
            }).collect::<Vec<_>>(),
            "listeners": self.listeners.iter().map(|ls| {
                let mut v = ls.counters.to_json();
                v["url"] = ls.url.as_str().into();
                v["handler"] = ls.handler.as_str().into();
                v["open"] = ls.open.into();
                v
            }).collect::<Vec<_>>(),
        })
    }
}

impl CounterSnapshot {
    fn to_json(&self) -> serde_json::Value {
        let c = &self.closed;
        let d = &self.datagrams_dropped;
        serde_json::json!({
            "accepted": self.accepted,
            "connected": self.connected,
            "active": self.active,
            "closed": {
                "peer": c.peer, "local": c.local, "error": c.error,
                "frame_too_big": c.frame_too_big, "handler": c.handler,
                "shutdown": c.shutdown, "connect_failed": c.connect_failed,
                "timeout": c.timeout, "idle": c.idle, "limit": c.limit, "other": c.other,
            },
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "frames_in": self.frames_in,
            "oversize_frames": self.oversize_frames,
            "datagrams_in": self.datagrams_in,
            "datagrams_out": self.datagrams_out,
            "datagrams_dropped": {
                "send_buffer_full": d.send_buffer_full,
                "oversize": d.oversize,
                "send_error": d.send_error,
            },
            "timers_set": self.timers_set,
            "timers_fired": self.timers_fired,
            "timers_active": self.timers_active,
            "output_queued": self.output_queued,
        })
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

    #[test]
    fn passes_land_in_their_busy_bucket() {
        let mut c = LoopCounters::default();
        c.pass(Duration::from_micros(10));
        c.pass(Duration::from_micros(11));
        c.pass(Duration::from_secs(1));
        assert_eq!(c.busy_buckets[0], 1);
        assert_eq!(c.busy_buckets[1], 1);
        assert_eq!(c.busy_buckets[PASS_BUSY_BUCKETS - 1], 1);
        assert_eq!(c.passes, 3);
    }

    #[test]
    fn the_board_sums_its_workers() {
        let board = StatsBoard::default();
        assert!(!board.has_readers());
        let h = Scope::new("echo");
        h.counters.bytes_in.add(7);
        for w in [1, 0] {
            board.publish(
                w,
                Stats {
                    handlers: vec![handler_stats(&h, false)],
                    ..Stats::default()
                },
            );
        }
        let v: serde_json::Value = serde_json::from_str(&board.json()).unwrap();
        assert!(board.has_readers());
        assert_eq!(v["workers"], 2);
        assert_eq!(v["total"]["handlers"][0]["bytes_in"], 14);
        assert_eq!(v["per_worker"][1]["worker"], 1);
        assert_eq!(v["per_worker"][1]["handlers"][0]["name"], "echo");
    }
}
