//! Rooms that span the workers of one process (`[runtime] workers = N`),
//! through sibling posts (`Ctx::post_siblings`), without Redis.
//!
//! Each worker runs its own chat instance; they keep one model between
//! them, the one the Redis bridge keeps between processes:
//! - every line for a room goes to the siblings too (room key, kind and
//!   line, the kinds of the bridge's channels), and each sibling hands it
//!   to its own members of that room;
//! - every worker keeps a directory of the other workers' members (folded
//!   nick -> nick, room key, room name: the bridge's presence value), kept
//!   by presence and gone records, which `/who` and `/rooms` merge with
//!   the local roster;
//! - worker 0 is the authority on nicks: another worker's `/nick` and
//!   `guest-N` are claims posted to it, granted or refused in its answer.
//!
//! Records are batched: everything an instance has for its siblings in one
//! loop pass goes out as one post, when a zero-delay timer fires. Every
//! batch carries the sender's worker index, its instance's epoch and a
//! sequence number; a batch
//! that did not reach every sibling (a mailbox was full, or a sibling not
//! up yet) is posted again, whole, and the siblings that had it already
//! drop the copy by its number. Later batches wait behind it, so each
//! sibling sees a worker's records once and in order.

use std::collections::{HashMap, VecDeque};

use loopd_handler_api::{Ctx, Error, TimerId};
use std::time::Duration;

use crate::bridge::SEP;

/// What starts every batch.
const MAGIC: &[u8] = b"loopd-chat-1";
/// How long a batch that did not reach every sibling waits before it is
/// posted again.
pub(crate) const RETRY_MS: u64 = 5;
/// A batch is sealed once it holds this many bytes (the next record starts
/// another), so one fits a mailbox of the default 4 MiB many times over.
pub(crate) const MAX_BATCH: usize = 64 << 10;
/// Retries of one batch after which it is logged as a warning: a sibling
/// that is stuck, or a `mailbox_bytes` too small for one batch.
const STUCK_RETRIES: u32 = 1000;
/// Most bytes of batches waiting to be posted again; records past it are
/// dropped, counted and logged.
pub(crate) const MAX_BACKLOG: usize = 64 << 20;

/// One record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    /// A line for a room: `kind` as the bridge's (`L`, or `J` for a join or
    /// leave notice).
    Line {
        room: &'a str,
        kind: u8,
        line: &'a [u8],
    },
    /// The sender's member `nick` is in room `room` (key) named `name`.
    Presence {
        nick: &'a str,
        room: &'a str,
        name: &'a str,
    },
    /// The sender's member with this folded nick is gone (or renamed).
    Gone { key: &'a str },
    /// To worker 0: may the sender's member `conn` take `nick` (`""`: the
    /// next free `guest-N`)? It is in room `room` named `name`.
    Claim {
        conn: u64,
        nick: &'a str,
        room: &'a str,
        name: &'a str,
    },
    /// From worker 0 to worker `to`: its member `conn` got `nick` (`ok`),
    /// or it is taken.
    Answer {
        to: u32,
        conn: u64,
        ok: bool,
        nick: &'a str,
    },
}

impl Record<'_> {
    /// Appends the record, `\n`-terminated. No field holds `\n` or the
    /// separator: names are checked, lines cleaned of control characters.
    fn encode(&self, out: &mut Vec<u8>) {
        let field = |out: &mut Vec<u8>, f: &[u8]| {
            out.push(SEP);
            out.extend_from_slice(f);
        };
        match *self {
            Record::Line { room, kind, line } => {
                out.push(b'L');
                field(out, room.as_bytes());
                field(out, &[kind]);
                field(out, line);
            }
            Record::Presence { nick, room, name } => {
                out.push(b'P');
                field(out, nick.as_bytes());
                field(out, room.as_bytes());
                field(out, name.as_bytes());
            }
            Record::Gone { key } => {
                out.push(b'G');
                field(out, key.as_bytes());
            }
            Record::Claim {
                conn,
                nick,
                room,
                name,
            } => {
                out.push(b'C');
                field(out, conn.to_string().as_bytes());
                field(out, nick.as_bytes());
                field(out, room.as_bytes());
                field(out, name.as_bytes());
            }
            Record::Answer { to, conn, ok, nick } => {
                out.push(b'A');
                field(out, to.to_string().as_bytes());
                field(out, conn.to_string().as_bytes());
                field(out, if ok { b"1" } else { b"0" });
                field(out, nick.as_bytes());
            }
        }
        out.push(b'\n');
    }

    /// Parses one record (without its `\n`); `None` for anything else.
    fn decode(rec: &[u8]) -> Option<Record<'_>> {
        let (&tag, rest) = rec.split_first()?;
        let rest = rest.strip_prefix(&[SEP])?;
        fn text(b: &[u8]) -> Option<&str> {
            std::str::from_utf8(b).ok()
        }
        fn num(b: &[u8]) -> Option<u64> {
            text(b)?.parse().ok()
        }
        let mut f = rest.splitn(4, |&b| b == SEP);
        let mut next = || f.next();
        Some(match tag {
            b'L' => {
                let room = text(next()?)?;
                let kind = next()?;
                let line = next()?;
                if kind.len() != 1 {
                    return None;
                }
                Record::Line {
                    room,
                    kind: kind[0],
                    line,
                }
            }
            b'P' => Record::Presence {
                nick: text(next()?)?,
                room: text(next()?)?,
                name: text(next()?)?,
            },
            b'G' => Record::Gone {
                key: text(next()?)?,
            },
            b'C' => Record::Claim {
                conn: num(next()?)?,
                nick: text(next()?)?,
                room: text(next()?)?,
                name: text(next()?)?,
            },
            b'A' => Record::Answer {
                to: u32::try_from(num(next()?)?).ok()?,
                conn: num(next()?)?,
                ok: next()? == b"1",
                nick: text(next()?)?,
            },
            _ => return None,
        })
    }
}

/// A member of another worker, as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remote {
    /// The worker that holds it.
    pub(crate) worker: u32,
    pub(crate) nick: String,
    /// Room key and name.
    pub(crate) room: String,
    pub(crate) name: String,
}

/// The sibling side of one chat instance: the outbox, and the directory of
/// the other workers' members.
#[derive(Debug)]
pub(crate) struct Siblings {
    /// This worker's index, and how many there are.
    pub(crate) index: u32,
    pub(crate) count: u32,
    /// Records of this pass, not sealed into a batch yet.
    pending: Vec<u8>,
    /// Sealed batches not yet taken by every sibling, oldest first.
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    /// The next batch's sequence number.
    next_seq: u64,
    /// This instance's epoch: a reload that replaces chat makes new
    /// instances beside the old (which drain), so a worker's batches are
    /// numbered per instance.
    epoch: u64,
    /// The last sequence number seen from each (worker, epoch).
    seen: HashMap<(u32, u64), u64>,
    /// The flush timer, while one is set.
    pub(crate) timer: Option<TimerId>,
    /// Folded nick -> the member of another worker holding it (on worker 0,
    /// also nicks granted and not yet confirmed).
    pub(crate) directory: HashMap<String, Remote>,
    /// Records dropped past [`MAX_BACKLOG`], not logged yet.
    dropped: u64,
    /// Times a post did not reach every sibling, not logged yet.
    retried: u64,
    /// Retries of the oldest batch.
    stuck: u32,
}

impl Siblings {
    pub(crate) fn new(index: u32, count: u32) -> Siblings {
        Siblings {
            index,
            count,
            pending: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_seq: 1,
            epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            seen: HashMap::new(),
            timer: None,
            directory: HashMap::new(),
            dropped: 0,
            retried: 0,
            stuck: 0,
        }
    }

    /// Whether this worker grants nicks.
    pub(crate) fn is_authority(&self) -> bool {
        self.index == 0
    }

    /// Queues a record for the siblings; the flush timer sends it at the
    /// end of the pass.
    pub(crate) fn push(&mut self, ctx: &Ctx, rec: Record<'_>) {
        if self.queued_bytes + self.pending.len() > MAX_BACKLOG {
            self.dropped += 1;
            if self.dropped == 1 || self.dropped % 10_000 == 0 {
                ctx.warn(format_args!(
                    "workers: the other workers do not take chat's posts ({} bytes waiting, over \
                     {MAX_BACKLOG}): {} record(s) dropped so far",
                    self.queued_bytes, self.dropped
                ));
            }
            return;
        }
        if self.pending.len() >= MAX_BATCH {
            self.seal();
        }
        if self.pending.is_empty() {
            self.pending.extend_from_slice(MAGIC);
            self.pending.push(SEP);
            self.pending.extend_from_slice(
                format!(
                    "{}{sep}{}{sep}{}\n",
                    self.index,
                    self.epoch,
                    self.next_seq,
                    sep = SEP as char
                )
                .as_bytes(),
            );
            self.next_seq += 1;
        }
        rec.encode(&mut self.pending);
        self.arm(ctx, 0);
    }

    fn arm(&mut self, ctx: &Ctx, ms: u64) {
        if self.timer.is_some() {
            return;
        }
        match ctx.set_timer(Duration::from_millis(ms), u64::MAX) {
            Ok(t) => self.timer = Some(t),
            // No timer: post now rather than never.
            Err(_) => self.flush(ctx),
        }
    }

    /// Moves the records of this pass into the queue, as one batch.
    fn seal(&mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.queued_bytes += batch.len();
            self.queue.push_back(batch);
        }
    }

    /// The flush timer fired.
    pub(crate) fn on_timer(&mut self, ctx: &Ctx) {
        self.timer = None;
        self.flush(ctx);
    }

    /// Seals the pass's records into a batch and posts what is queued, in
    /// order, until a batch does not reach every sibling; that one is
    /// posted again after [`RETRY_MS`].
    pub(crate) fn flush(&mut self, ctx: &Ctx) {
        self.seal();
        let want = self.count - 1;
        while let Some(batch) = self.queue.front() {
            match ctx.post_siblings(batch) {
                Ok(n) if n >= want => {
                    self.queued_bytes -= batch.len();
                    self.queue.pop_front();
                    self.stuck = 0;
                }
                // A mailbox full, or a sibling not up yet: again, whole.
                Ok(_) | Err(Error::Full) => {
                    self.retried += 1;
                    self.stuck += 1;
                    if self.stuck % STUCK_RETRIES == 0 {
                        ctx.warn(format_args!(
                            "workers: a batch of chat ({} bytes) has not reached every other \
                             worker in {} tries: a worker is stuck, or its mailbox_bytes is \
                             smaller than the batch",
                            batch.len(),
                            self.stuck
                        ));
                    }
                    if self.retried == 1 || self.retried % 1000 == 0 {
                        ctx.info(format_args!(
                            "workers: a sibling's mailbox is full or not up: {} post(s) of chat \
                             retried so far, {} batch(es) ({} bytes) waiting",
                            self.retried,
                            self.queue.len(),
                            self.queued_bytes
                        ));
                    }
                    if let Some(t) = self.timer.take() {
                        let _ = ctx.cancel_timer(t);
                    }
                    return self.arm(ctx, RETRY_MS);
                }
                Err(e) => {
                    ctx.warn(format_args!(
                        "workers: cannot post to the other workers ({e}): {} batch(es) of chat \
                         dropped",
                        self.queue.len()
                    ));
                    self.queue.clear();
                    self.queued_bytes = 0;
                    return;
                }
            }
        }
    }

    /// The records of a batch from a sibling, unless it is a copy of one
    /// seen already (or not a batch at all): the sender, and the records.
    pub(crate) fn receive<'a>(&mut self, msg: &'a [u8]) -> Option<(u32, Vec<Record<'a>>)> {
        let mut lines = msg.split(|&b| b == b'\n');
        let head = lines.next()?;
        let head = head.strip_prefix(MAGIC)?.strip_prefix(&[SEP])?;
        let head = std::str::from_utf8(head).ok()?;
        let mut fields = head.split(SEP as char);
        let from: u32 = fields.next()?.parse().ok()?;
        let epoch: u64 = fields.next()?.parse().ok()?;
        let seq: u64 = fields.next()?.parse().ok()?;
        if from >= self.count || from == self.index {
            return None;
        }
        let seen = self.seen.entry((from, epoch)).or_default();
        if seq <= *seen {
            return None;
        }
        *seen = seq;
        let recs = lines
            .filter(|l| !l.is_empty())
            .filter_map(Record::decode)
            .collect();
        Some((from, recs))
    }

    /// Records that `worker`'s member holds `nick`, in room `room` / `name`.
    pub(crate) fn set(&mut self, worker: u32, nick: &str, room: &str, name: &str) {
        self.directory.insert(
            crate::roster::fold(nick),
            Remote {
                worker,
                nick: nick.to_string(),
                room: room.to_string(),
                name: name.to_string(),
            },
        );
    }

    /// `worker`'s member with the folded nick `key` is gone.
    pub(crate) fn unset(&mut self, worker: u32, key: &str) {
        if self.directory.get(key).is_some_and(|r| r.worker == worker) {
            self.directory.remove(key);
        }
    }

    /// Whether another worker's member holds (or was granted) `nick`.
    pub(crate) fn held(&self, nick: &str) -> bool {
        self.directory.contains_key(&crate::roster::fold(nick))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_as_they_were_encoded() {
        let recs = [
            Record::Line {
                room: "lobby",
                kind: b'L',
                line: "bob: a line: with\u{2713} ; colons".as_bytes(),
            },
            Record::Presence {
                nick: "Bob",
                room: "dev",
                name: "Dev",
            },
            Record::Gone { key: "bob" },
            Record::Claim {
                conn: u64::MAX,
                nick: "",
                room: "lobby",
                name: "lobby",
            },
            Record::Answer {
                to: 3,
                conn: 7,
                ok: true,
                nick: "guest-4",
            },
        ];
        let mut s = Siblings::new(1, 2);
        let mut batch = MAGIC.to_vec();
        batch.push(SEP);
        batch.extend_from_slice(format!("0{s}7{s}1\n", s = SEP as char).as_bytes());
        for r in &recs {
            r.encode(&mut batch);
        }
        let (from, got) = s.receive(&batch).unwrap();
        assert_eq!(from, 0);
        assert_eq!(got, recs);
        // The same batch again (posted twice after a full mailbox) is dropped.
        assert!(s.receive(&batch).is_none());
        // Not a batch, or from a worker that does not exist.
        assert!(s.receive(b"hello").is_none());
        let mut other = MAGIC.to_vec();
        other.push(SEP);
        other.extend_from_slice(format!("9{s}7{s}1\n", s = SEP as char).as_bytes());
        assert!(s.receive(&other).is_none());
        // The same worker after a reload (another epoch) numbers afresh.
        let mut again = MAGIC.to_vec();
        again.push(SEP);
        again.extend_from_slice(format!("0{s}8{s}1\n", s = SEP as char).as_bytes());
        Record::Gone { key: "x" }.encode(&mut again);
        assert_eq!(s.receive(&again).unwrap().1, [Record::Gone { key: "x" }]);
    }

    #[test]
    fn the_directory_forgets_a_nick_only_for_its_holder() {
        let mut s = Siblings::new(0, 3);
        s.set(1, "Bob", "lobby", "lobby");
        assert!(s.held("BOB"));
        s.unset(2, "bob");
        assert!(s.held("bob"), "worker 2 does not hold it");
        s.unset(1, "bob");
        assert!(!s.held("bob"));
    }
}
