//! Messages for handler instances from any thread: one bounded mailbox per
//! instance, filled by [`crate::Handle::post`] and the host's `post`, and
//! emptied by the loop, which delivers each message with `on_message`.
//!
//! A mailbox is bounded by a message count and a byte total (the
//! instance's `mailbox_messages` and `mailbox_bytes`); a post that does not
//! fit is refused at once ([`PostError::Full`]): back-pressure, never
//! growth. Only the first post after the loop last looked wakes it (one
//! write to the poller's notifier), however many follow.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::event_loop::Waker;
use crate::instance::InstanceId;

/// Why a post was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PostError {
    /// The instance's mailbox is at its limit (`mailbox_messages` or
    /// `mailbox_bytes`): nothing was posted. Try again later, or drop.
    Full,
    /// The message is larger than the whole mailbox (`mailbox_bytes`).
    TooLarge,
    /// No handler instance of this runtime has that name.
    NoSuchInstance,
    /// The runtime is gone (dropped).
    Stopped,
}

impl fmt::Display for PostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PostError::Full => "the instance's mailbox is full",
            PostError::TooLarge => "the message is larger than the instance's mailbox",
            PostError::NoSuchInstance => "no handler instance has that name",
            PostError::Stopped => "the runtime has stopped",
        })
    }
}

impl std::error::Error for PostError {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (each critical section is a push, a pop or a map update).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// One instance's mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    instance: InstanceId,
    queue: Mutex<Queue>,
    max_messages: usize,
    max_bytes: usize,
}

impl Mailbox {
    fn push(&self, msg: Vec<u8>) -> Result<(), PostError> {
        if msg.len() > self.max_bytes {
            return Err(PostError::TooLarge);
        }
        let mut q = lock(&self.queue);
        if q.messages.len() >= self.max_messages || q.bytes + msg.len() > self.max_bytes {
            return Err(PostError::Full);
        }
        q.bytes += msg.len();
        q.messages.push_back(msg);
        Ok(())
    }

    /// Takes up to `n` messages, oldest first.
    fn take(&self, n: usize, out: &mut Vec<Vec<u8>>) -> bool {
        let mut q = lock(&self.queue);
        for _ in 0..n {
            let Some(m) = q.messages.pop_front() else {
                break;
            };
            q.bytes -= m.len();
            out.push(m);
        }
        if q.messages.is_empty() && q.messages.capacity() > 64 {
            q.messages = VecDeque::new();
        }
        !q.messages.is_empty()
    }
}

/// The mailboxes of one runtime, shared with its handles.
#[derive(Debug)]
pub(crate) struct Postbox {
    boxes: Mutex<HashMap<Box<str>, Arc<Mailbox>>>,
    /// Mailboxes of instances a reload replaced, emptied to them by
    /// [`Postbox::take`] and dropped once empty.
    retired: Mutex<Vec<Arc<Mailbox>>>,
    /// A post arrived since the loop last took mail.
    mail: AtomicBool,
    stopped: AtomicBool,
    waker: Waker,
}

impl Postbox {
    pub(crate) fn new(waker: Waker) -> Arc<Postbox> {
        Arc::new(Postbox {
            boxes: Mutex::new(HashMap::new()),
            retired: Mutex::new(Vec::new()),
            mail: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            waker,
        })
    }

    /// Gives the instance named `name` a mailbox (replacing an older
    /// instance's of that name: posts go to the newest).
    pub(crate) fn open(
        &self,
        name: &str,
        instance: InstanceId,
        max_messages: usize,
        max_bytes: usize,
    ) {
        let mailbox = Arc::new(Mailbox {
            instance,
            queue: Mutex::new(Queue::default()),
            max_messages,
            max_bytes,
        });
        lock(&self.boxes).insert(name.into(), mailbox);
    }

    /// The mailbox posts to `name` go to now.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Mailbox>> {
        lock(&self.boxes).get(name).cloned()
    }

    /// Puts `mailbox` back as the one for `name` (or none), as it was.
    pub(crate) fn restore(&self, name: &str, mailbox: Option<Arc<Mailbox>>) {
        let mut boxes = lock(&self.boxes);
        match mailbox {
            Some(m) => boxes.insert(name.into(), m),
            None => boxes.remove(name),
        };
    }

    /// A replaced instance's mailbox: what it holds is still delivered to
    /// that instance; nothing new reaches it.
    pub(crate) fn retire(&self, mailbox: Arc<Mailbox>) {
        if !lock(&mailbox.queue).messages.is_empty() {
            lock(&self.retired).push(mailbox);
            self.mail.store(true, Ordering::Release);
        }
    }

    /// Forgets the mailbox of a removed instance named `name` (if it is
    /// still that instance's), retiring it.
    pub(crate) fn close(&self, name: &str, instance: InstanceId) {
        let mut boxes = lock(&self.boxes);
        if boxes.get(name).is_some_and(|m| m.instance == instance) {
            if let Some(m) = boxes.remove(name) {
                drop(boxes);
                self.retire(m);
            }
        }
    }

    /// Posts `msg` to the instance named `name`; wakes the loop if it has
    /// not been told of mail since it last looked.
    pub(crate) fn post(&self, name: &str, msg: Vec<u8>) -> Result<(), PostError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(PostError::Stopped);
        }
        let mailbox = lock(&self.boxes)
            .get(name)
            .cloned()
            .ok_or(PostError::NoSuchInstance)?;
        mailbox.push(msg)?;
        if !self.mail.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
        Ok(())
    }

    /// Whether a post arrived since the last [`Postbox::take`].
    pub(crate) fn has_mail(&self) -> bool {
        self.mail.load(Ordering::Acquire)
    }

    /// Takes up to `per_instance` messages from each mailbox (fairness:
    /// one busy sender cannot starve the loop), as (instance, message)
    /// pairs in posting order per instance. Mail left behind keeps
    /// [`Postbox::has_mail`] true.
    pub(crate) fn take(&self, per_instance: usize, out: &mut Vec<(InstanceId, Vec<u8>)>) {
        if !self.mail.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut boxes: Vec<Arc<Mailbox>> = lock(&self.boxes).values().cloned().collect();
        {
            let mut retired = lock(&self.retired);
            retired.retain(|m| !lock(&m.queue).messages.is_empty());
            boxes.extend(retired.iter().cloned());
        }
        let mut left = false;
        let mut batch = Vec::new();
        for b in boxes {
            left |= b.take(per_instance, &mut batch);
            out.extend(batch.drain(..).map(|m| (b.instance, m)));
        }
        if left {
            self.mail.store(true, Ordering::Release);
        }
    }

    /// The runtime is going away: every later post fails with `Stopped`,
    /// and queued messages are dropped.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        lock(&self.boxes).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn postbox() -> (Arc<Postbox>, crate::event_loop::EventLoop) {
        let poll = crate::event_loop::EventLoop::new().unwrap();
        (Postbox::new(poll.waker()), poll)
    }

    #[test]
    fn mailboxes_are_bounded_by_count_and_bytes() {
        let (p, _poll) = postbox();
        p.open("a", 7, 2, 10);
        assert_eq!(p.post("b", vec![1]), Err(PostError::NoSuchInstance));
        assert_eq!(p.post("a", vec![0; 11]), Err(PostError::TooLarge));
        p.post("a", vec![1; 6]).unwrap();
        assert_eq!(p.post("a", vec![2; 5]), Err(PostError::Full), "bytes");
        p.post("a", vec![3; 4]).unwrap();
        assert_eq!(p.post("a", vec![]), Err(PostError::Full), "count");
        assert!(p.has_mail());
        let mut out = Vec::new();
        p.take(1, &mut out);
        assert_eq!(out, vec![(7, vec![1; 6])]);
        assert!(p.has_mail(), "one left");
        p.post("a", vec![4]).unwrap();
        out.clear();
        p.take(10, &mut out);
        assert_eq!(out, vec![(7, vec![3; 4]), (7, vec![4])], "in order");
        assert!(!p.has_mail());
        p.stop();
        assert_eq!(p.post("a", vec![1]), Err(PostError::Stopped));
    }

    #[test]
    fn posts_from_many_threads_all_arrive_in_order_per_sender() {
        let (p, _poll) = postbox();
        p.open("sink", 1, 100_000, 1 << 20);
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u16 {
                        let [a, b] = i.to_be_bytes();
                        p.post("sink", vec![t, a, b]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut out = Vec::new();
        while p.has_mail() {
            p.take(64, &mut out);
        }
        assert_eq!(out.len(), 4000);
        let mut next = [0u16; 4];
        for (_, m) in out {
            let (t, i) = (m[0] as usize, u16::from_be_bytes([m[1], m[2]]));
            assert_eq!(i, next[t], "sender {t} out of order");
            next[t] += 1;
        }
    }
}
