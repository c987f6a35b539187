//! A connection's bounded output queue: the bytes the kernel did not take
//! yet, written front to back with one `sendmsg` over up to 64 chunks.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use crate::transport::Transport;

/// Small sends are appended to the last queued chunk up to this size, so a
/// stream of tiny messages does not become a stream of tiny allocations.
const COALESCE_LIMIT: usize = 16 << 10;
/// Most buffers handed to one `sendmsg`.
const MAX_IOV: usize = 64;

/// Bytes the kernel did not take yet. Chunks are written front to back;
/// `head` is how much of the front chunk is already sent.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    chunks: VecDeque<Vec<u8>>,
    head: usize,
    len: usize,
}

impl OutQueue {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `data` to the back of the queue.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        let front_untouched = self.chunks.len() > 1 || self.head == 0;
        if let Some(last) = self.chunks.back_mut() {
            if last.len() + data.len() <= COALESCE_LIMIT && front_untouched {
                last.extend_from_slice(data);
                return;
            }
        }
        let mut chunk =
            Vec::with_capacity(
                data.len()
                    .max(if data.len() < COALESCE_LIMIT { 4096 } else { 0 }),
            );
        chunk.extend_from_slice(data);
        self.chunks.push_back(chunk);
    }

    /// Writes as much as the transport takes. Returns how many bytes were
    /// written, and the error that stopped it, if any (would-block is not
    /// an error: the queue simply is not empty yet).
    pub(crate) fn flush(&mut self, io: &mut Transport) -> (usize, io::Result<()>) {
        let mut total = 0;
        while !self.is_empty() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &chunk[self.head..] } else { chunk });
                n += 1;
            }
            match io.writev(&iov[..n]) {
                Ok(written) => {
                    total += written;
                    self.consume(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return (total, Err(e)),
            }
        }
        (total, Ok(()))
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front().expect("consumed more than queued");
            let left = front.len() - self.head;
            if n >= left {
                n -= left;
                self.head = 0;
                self.chunks.pop_front();
            } else {
                self.head += n;
                n = 0;
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 16 {
            // An idle connection holds no buffers.
            self.chunks = VecDeque::new();
        }
    }

    pub(crate) fn clear(&mut self) {
        *self = OutQueue::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_coalesces_and_consumes() {
        let mut q = OutQueue::default();
        q.push(b"abc");
        q.push(b"def");
        assert_eq!(q.len(), 6);
        assert_eq!(q.chunks.len(), 1);
        q.consume(2);
        assert_eq!(q.len(), 4);
        // a partly sent front chunk is not appended to
        q.push(b"g");
        assert_eq!(q.chunks.len(), 2);
        q.push(&vec![7u8; COALESCE_LIMIT]);
        assert_eq!(q.chunks.len(), 3);
        q.consume(4);
        assert_eq!(q.len(), 1 + COALESCE_LIMIT);
        q.consume(q.len());
        assert!(q.is_empty());
        assert_eq!(q.head, 0);
    }

    #[test]
    fn queue_flushes_through_a_socket() {
        use std::io::Read;
        use std::os::fd::OwnedFd;
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut io = Transport::Plain(OwnedFd::from(a));
        let mut q = OutQueue::default();
        q.push(b"hello ");
        q.push(&vec![b'x'; 40_000]);
        q.push(b" world");
        let (written, result) = q.flush(&mut io);
        result.unwrap();
        assert_eq!(written, 40_012);
        assert!(q.is_empty());
        let mut got = vec![0u8; 40_012];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got[..6], b"hello ");
        assert_eq!(&got[40_006..], b" world");
    }
}
