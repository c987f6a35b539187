//! Datagrams in batches (ABI 1.4): what [`crate::Handler::on_datagrams`]
//! receives and what [`crate::Ctx::send_datagrams`] sends.

use std::net::SocketAddr;

use crate::abi::{self, loopd_addr, loopd_datagram};
use crate::Error;

/// Datagrams that arrived together on one socket, in order (what one
/// `recvmmsg` took), borrowed for the [`crate::Handler::on_datagrams`] call.
#[derive(Clone, Copy)]
pub struct Datagrams<'a> {
    raw: &'a [loopd_datagram],
}

/// One datagram of a [`Datagrams`] batch.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The sender, when the host knows it.
    pub peer: Option<SocketAddr>,
    /// The datagram's bytes.
    pub data: &'a [u8],
}

impl<'a> Datagrams<'a> {
    /// # Safety
    /// Every element's `data` must point to `len` readable bytes (or be
    /// NULL with `len` 0), valid for `'a`.
    pub(crate) unsafe fn from_raw(raw: &'a [loopd_datagram]) -> Datagrams<'a> {
        Datagrams { raw }
    }

    /// How many datagrams.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether there are none (the host never passes an empty batch).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Datagram `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<Datagram<'a>> {
        self.raw.get(i).map(|d| {
            let data = if d.data.is_null() || d.len == 0 {
                &[][..]
            } else {
                // SAFETY: `from_raw`'s contract: `len` readable bytes at
                // `data` for 'a.
                unsafe { std::slice::from_raw_parts(d.data, d.len) }
            };
            Datagram {
                peer: d.addr.to_socket_addr(),
                data,
            }
        })
    }

    /// The datagrams in the order they arrived.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Datagram<'a>> + 'a {
        let this = *self;
        (0..this.len()).map(move |i| this.get(i).expect("in range"))
    }
}

impl std::fmt::Debug for Datagrams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Datagrams to send with one [`crate::Ctx::send_datagrams`] call: each
/// pushed with where it goes, its bytes copied in; sent in order. Keep one
/// and [`Outbox::clear`] it between batches: its buffers are reused.
#[derive(Default)]
pub struct Outbox {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    /// What the host is given, rebuilt (pointing into `bytes`) by every
    /// send; only ever read by the host during that call.
    raw: Vec<loopd_datagram>,
    sent: usize,
    /// [`Outbox::group_by_address`]'s scratch space, reused.
    grouped: Vec<Entry>,
    taken: Vec<bool>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    to: loopd_addr,
    /// Where the bytes are: `bytes[start..start + len]` when `lent` is
    /// NULL, else `len` bytes at `lent`, lent to a [`LentOutbox`].
    start: usize,
    len: usize,
    status: i32,
    lent: *const u8,
}

/// Not sent yet (no send since it was pushed).
const UNSENT: i32 = i32::MIN;

// SAFETY: `raw`'s pointers point into `bytes`, which the Outbox owns, or at
// bytes lent to a `LentOutbox` (shared `&[u8]`, which are `Send` and `Sync`);
// they are written by `prepare` and read only by the host during the send
// that follows it (on the thread that holds `&mut Outbox`), never afterwards.
unsafe impl Send for Outbox {}
// SAFETY: as above; `&Outbox` reads entries' bytes only through `entry`
// (shared bytes), never through `raw`'s pointers.
unsafe impl Sync for Outbox {}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("datagrams", &self.entries.len())
            .field("bytes", &self.bytes.len())
            .field("sent", &self.sent)
            .finish()
    }
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Adds a datagram of `data` for `to`.
    pub fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.push_parts(to, &[data]);
    }

    /// Adds one datagram made of `parts` one after the other (a header and
    /// a payload, say), for `to`.
    pub fn push_parts(&mut self, to: SocketAddr, parts: &[&[u8]]) {
        let start = self.bytes.len();
        for p in parts {
            self.bytes.extend_from_slice(p);
        }
        self.entries.push(Entry {
            to: loopd_addr::from_socket_addr(to),
            start,
            len: self.bytes.len() - start,
            status: UNSENT,
            lent: std::ptr::null(),
        });
    }

    /// How many datagrams it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Reorders the datagrams so that those to one address follow one
    /// another: each address's in the order they were pushed, the addresses
    /// in the order each first appears. For datagrams whose order matters
    /// only per address (copies of a batch for several targets, say): on
    /// Linux a run of same-sized datagrams to one address leaves as one UDP
    /// GSO send, so grouping them saves the kernel's per-packet work. Call
    /// it before [`crate::Ctx::send_datagrams`]; [`Outbox::results`] follows
    /// the new order. No allocation once its scratch space has grown.
    pub fn group_by_address(&mut self) {
        let n = self.entries.len();
        if n <= 2 {
            return;
        }
        // One address (a relay with one target, say): nothing to move.
        let first = self.entries[0].to;
        if self.entries.iter().all(|e| e.to == first) {
            return;
        }
        self.taken.clear();
        self.taken.resize(n, false);
        self.grouped.clear();
        for i in 0..n {
            if self.taken[i] {
                continue;
            }
            let to = self.entries[i].to;
            for j in i..n {
                if !self.taken[j] && self.entries[j].to == to {
                    self.taken[j] = true;
                    self.grouped.push(self.entries[j]);
                }
            }
        }
        std::mem::swap(&mut self.entries, &mut self.grouped);
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every datagram (and what the last send said about them),
    /// keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
        // group_by_address's scratch holds the entries it replaced: none of
        // them (a lent one's pointer least of all) outlives a clear.
        self.grouped.clear();
        self.sent = 0;
    }

    /// How many the last [`crate::Ctx::send_datagrams`] sent.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Each datagram's address and what the last send did with it: `Ok`
    /// (sent), [`Error::Again`] (the kernel's buffer was full: dropped),
    /// [`Error::Io`], [`Error::Invalid`]; [`Error::Again`] too for one
    /// pushed after that send (not sent).
    pub fn results(&self) -> impl ExactSizeIterator<Item = (SocketAddr, Result<(), Error>)> + '_ {
        self.entries.iter().map(|e| {
            let to =
                e.to.to_socket_addr()
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            let status = if e.status == UNSENT {
                abi::LOOPD_ERR_AGAIN
            } else {
                e.status
            };
            (to, Error::check(status))
        })
    }

    /// The host's view, pointing into `bytes`, every status "not sent".
    pub(crate) fn prepare(&mut self) -> &mut [loopd_datagram] {
        self.raw.clear();
        let base = self.bytes.as_ptr();
        for e in &self.entries {
            self.raw.push(loopd_datagram {
                addr: e.to,
                // Left so by a host that refuses the whole call.
                status: UNSENT,
                reserved: 0,
                data: if e.lent.is_null() {
                    // SAFETY: `start + len <= bytes.len()` (push_parts); an
                    // offset inside (or one past) the allocation.
                    unsafe { base.add(e.start) }
                } else {
                    e.lent
                },
                len: e.len,
            });
        }
        &mut self.raw
    }

    /// Takes the statuses the host wrote into `prepare`'s view.
    pub(crate) fn finish(&mut self, sent: usize) {
        for (e, r) in self.entries.iter_mut().zip(&self.raw) {
            e.status = r.status;
        }
        self.raw.clear();
        self.sent = sent;
    }

    /// Datagram `i`'s address and bytes (for a host without
    /// `send_datagrams`, sent one by one).
    pub(crate) fn entry(&self, i: usize) -> (&loopd_addr, &[u8]) {
        let e = &self.entries[i];
        if e.lent.is_null() {
            return (&e.to, &self.bytes[e.start..e.start + e.len]);
        }
        // SAFETY: a lent entry is pushed only by `LentOutbox::push_lent`
        // from a `&'a [u8]`, into the Outbox inside that `LentOutbox<'a>`,
        // which nobody else can reach mutably and which clears it before
        // it takes another lifetime (`reuse`) or goes: while the entry is
        // here, the bytes are borrowed.
        (&e.to, unsafe { std::slice::from_raw_parts(e.lent, e.len) })
    }

    /// Marks every datagram "not sent" and none sent (before a send that
    /// writes each status itself).
    pub(crate) fn mark_unsent(&mut self) {
        for e in &mut self.entries {
            e.status = UNSENT;
        }
        self.sent = 0;
    }

    /// Records what sending datagram `i` alone gave.
    pub(crate) fn set_status(&mut self, i: usize, status: i32) {
        self.entries[i].status = status;
    }

    /// Records how many a send without `send_datagrams` sent.
    pub(crate) fn set_sent(&mut self, sent: usize) {
        self.sent = sent;
    }
}

/// An [`Outbox`] that can also send bytes it borrows instead of copying
/// them: [`LentOutbox::push_lent`] takes a `&'a [u8]` (a received datagram
/// of [`Datagrams`], say: a relay sends its copies straight from the
/// receive buffer). Sent with [`crate::Ctx::send_lent_datagrams`]; read back
/// through `Deref` ([`Outbox::results`], [`Outbox::sent`], ...). To keep its
/// buffers from one hook call to the next, store a `LentOutbox<'static>`
/// and [`LentOutbox::reuse`] it for the call's lifetime and back.
///
/// ```
/// # #![allow(dead_code)]
/// use loopd_handler_api::{Ctx, Datagrams, LentOutbox, SocketId};
///
/// struct Relay {
///     out: LentOutbox<'static>,
///     to: std::net::SocketAddr,
/// }
///
/// impl Relay {
///     fn on_datagrams(&mut self, ctx: &Ctx, socket: SocketId, batch: Datagrams<'_>) {
///         let mut out = std::mem::take(&mut self.out).reuse();
///         for d in batch.iter() {
///             out.push_lent(self.to, d.data); // no copy
///         }
///         let _ = ctx.send_lent_datagrams(socket, &mut out);
///         self.out = out.reuse();
///     }
/// }
/// ```
///
/// What it borrows cannot outlive it:
///
/// ```compile_fail
/// use loopd_handler_api::LentOutbox;
///
/// let mut kept: LentOutbox<'static> = LentOutbox::new();
/// let received = vec![1u8, 2, 3];
/// kept.push_lent("127.0.0.1:9".parse().unwrap(), &received);
/// ```
#[derive(Debug, Default)]
pub struct LentOutbox<'a> {
    out: Outbox,
    _lent: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> LentOutbox<'a> {
    /// An empty one.
    pub fn new() -> LentOutbox<'a> {
        LentOutbox::default()
    }

    /// Adds a datagram of `data` for `to`, not copied: `data` stays
    /// borrowed until this outbox is cleared, reused or dropped.
    pub fn push_lent(&mut self, to: SocketAddr, data: &'a [u8]) {
        self.out.entries.push(Entry {
            to: loopd_addr::from_socket_addr(to),
            start: 0,
            len: data.len(),
            status: UNSENT,
            lent: data.as_ptr(),
        });
    }

    /// [`Outbox::push`]: a datagram copied in.
    pub fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.out.push(to, data);
    }

    /// [`Outbox::push_parts`]: a datagram made of `parts`, copied in.
    pub fn push_parts(&mut self, to: SocketAddr, parts: &[&[u8]]) {
        self.out.push_parts(to, parts);
    }

    /// [`Outbox::group_by_address`].
    pub fn group_by_address(&mut self) {
        self.out.group_by_address();
    }

    /// [`Outbox::clear`]: forgets every datagram, lent or copied.
    pub fn clear(&mut self) {
        self.out.clear();
    }

    /// Cleared, with its buffers, for another lifetime.
    pub fn reuse<'b>(mut self) -> LentOutbox<'b> {
        self.out.clear();
        LentOutbox {
            out: self.out,
            _lent: std::marker::PhantomData,
        }
    }

    /// The outbox inside, for [`crate::Ctx::send_lent_datagrams`] (never
    /// handed out mutably: whatever held it could keep lent entries past
    /// `'a`).
    pub(crate) fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.out
    }
}

impl std::ops::Deref for LentOutbox<'_> {
    type Target = Outbox;

    fn deref(&self) -> &Outbox {
        &self.out
    }
}

/// A one-datagram batch as the host would pass it to `on_datagrams`.
pub(crate) fn one(peer: Option<&loopd_addr>, data: &[u8]) -> loopd_datagram {
    loopd_datagram {
        addr: peer.copied().unwrap_or_default(),
        status: abi::LOOPD_OK,
        reserved: 0,
        data: data.as_ptr(),
        len: data.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_points_the_host_at_each_datagram_and_keeps_the_statuses() {
        let mut out = Outbox::new();
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let b: SocketAddr = "[::1]:10".parse().unwrap();
        out.push(a, b"one");
        out.push_parts(b, &[b"[x] ", b"two"]);
        out.push(a, b"");
        let raw = out.prepare();
        assert_eq!(raw.len(), 3);
        // SAFETY: prepare's pointers are valid until the next push/clear.
        let bytes = |d: &loopd_datagram| unsafe { std::slice::from_raw_parts(d.data, d.len) };
        assert_eq!(bytes(&raw[0]), b"one");
        assert_eq!(bytes(&raw[1]), b"[x] two");
        assert_eq!(raw[2].len, 0);
        assert_eq!(raw[1].addr.to_socket_addr(), Some(b));
        assert!(
            raw.iter().all(|d| d.status == UNSENT),
            "until the host says"
        );
        // What a host writes when the buffer fills at the second one.
        raw[0].status = abi::LOOPD_OK;
        raw[1].status = abi::LOOPD_ERR_AGAIN;
        raw[2].status = abi::LOOPD_ERR_AGAIN;
        out.finish(1);
        assert_eq!(out.sent(), 1);
        let results: Vec<_> = out.results().collect();
        assert_eq!(
            results,
            vec![(a, Ok(())), (b, Err(Error::Again)), (a, Err(Error::Again))]
        );
        out.clear();
        assert!(out.is_empty());
        assert_eq!(out.sent(), 0);
    }

    #[test]
    fn a_lent_outbox_points_the_host_at_the_lent_bytes_themselves() {
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let received = [b"first".to_vec(), b"second".to_vec()];
        let mut out = LentOutbox::new();
        out.push_lent(b, &received[0]);
        out.push_parts(a, &[b"[x] ", b"copied"]);
        out.push_lent(a, &received[1]);
        out.push_lent(b, b"");
        out.group_by_address();
        let raw = out.outbox_mut().prepare();
        let to: Vec<_> = raw.iter().map(|d| d.addr.port).collect();
        assert_eq!(to, [10, 10, 9, 9], "grouped, each address's in order");
        assert_eq!(raw[0].data, received[0].as_ptr(), "not copied");
        assert_eq!(raw[0].len, 5);
        assert_eq!(raw[1].len, 0);
        assert_eq!(raw[3].data, received[1].as_ptr(), "not copied");
        // SAFETY: prepare's pointers are valid until the next push/clear.
        let bytes = unsafe { std::slice::from_raw_parts(raw[2].data, raw[2].len) };
        assert_eq!(bytes, b"[x] copied");
        // The one-by-one path reads the same bytes.
        assert_eq!(out.entry(0).1, b"first");
        assert_eq!(out.entry(3).1, b"second");
        assert_eq!(out.len(), 4);
        let out: LentOutbox<'static> = out.reuse();
        assert!(out.is_empty());
    }

    #[test]
    fn grouping_by_address_keeps_each_addresss_order_and_bytes() {
        let mut out = Outbox::new();
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let c: SocketAddr = "[::1]:9".parse().unwrap();
        let pushed = [
            (b, "b1"),
            (a, "a1"),
            (c, "c1"),
            (b, "b2"),
            (a, "a2"),
            (c, "c2"),
            (b, "b3"),
        ];
        for _ in 0..2 {
            out.clear();
            for (to, d) in pushed {
                out.push(to, d.as_bytes());
            }
            out.group_by_address();
            let got: Vec<(Option<SocketAddr>, &[u8])> = (0..out.len())
                .map(|i| {
                    let (to, d) = out.entry(i);
                    (to.to_socket_addr(), d)
                })
                .collect();
            let want: Vec<(Option<SocketAddr>, &[u8])> = [
                (b, "b1"),
                (b, "b2"),
                (b, "b3"),
                (a, "a1"),
                (a, "a2"),
                (c, "c1"),
                (c, "c2"),
            ]
            .iter()
            .map(|(to, d)| (Some(*to), d.as_bytes()))
            .collect();
            assert_eq!(got, want, "grouped, first-seen address first");
            let raw = out.prepare();
            assert_eq!(raw.len(), 7);
            assert_eq!(raw[3].addr.to_socket_addr(), Some(a));
        }
        // Already grouped: unchanged.
        out.clear();
        out.push(a, b"1");
        out.push(a, b"2");
        out.push(b, b"3");
        out.group_by_address();
        assert_eq!(out.entry(0).1, b"1");
        assert_eq!(out.entry(2).1, b"3");
        // All to one address: in push order.
        out.clear();
        for d in ["1", "2", "3", "4"] {
            out.push(c, d.as_bytes());
        }
        out.group_by_address();
        let got: Vec<&[u8]> = (0..4).map(|i| out.entry(i).1).collect();
        assert_eq!(got, [b"1", b"2", b"3", b"4"]);
        // One more address after them: still each address's in order.
        out.push(a, b"5");
        out.push(c, b"6");
        out.group_by_address();
        let got: Vec<&[u8]> = (0..6).map(|i| out.entry(i).1).collect();
        assert_eq!(got, [b"1", b"2", b"3", b"4", b"6", b"5"]);
    }

    #[test]
    fn a_received_batch_reads_back_its_senders_and_bytes() {
        let peer = loopd_addr::from_socket_addr("127.0.0.1:7".parse().unwrap());
        let raw = [one(Some(&peer), b"hello"), one(None, b"")];
        // SAFETY: both point at live bytes (or none).
        let batch = unsafe { Datagrams::from_raw(&raw) };
        let got: Vec<_> = batch.iter().map(|d| (d.peer, d.data.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (Some("127.0.0.1:7".parse().unwrap()), b"hello".to_vec()),
                (None, vec![])
            ]
        );
    }
}
