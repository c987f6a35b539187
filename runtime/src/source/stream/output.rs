//! Writing a connection: sends written at once, deferred to the end of the
//! pass or queued; `send_file`; finishing connects and flushing on
//! writability.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};

use loopd_handler_api::abi;

use super::{Conn, Phase};
use crate::core::{Deferred, Shared};
use crate::sys;
use crate::transport::Transport;

/// Sends up to this size may be deferred to the end of the pass and
/// coalesced; larger ones are written at once when nothing is queued.
const DEFER_LIMIT: usize = 16 << 10;
/// Largest piece of a file read and written per `send_file` call on a
/// transport that cannot sendfile.
const FILE_CHUNK: usize = 64 << 10;

impl Conn {
    // ---------------------------------------------------------------------
    // Output
    // ---------------------------------------------------------------------

    /// `send`/`sendv`: all of `parts` or nothing.
    pub(crate) fn send(&mut self, id: u64, sh: &mut Shared, parts: &[&[u8]]) -> i32 {
        if matches!(self.phase, Phase::Closing | Phase::Closed) || self.write_shut() {
            return abi::LOOPD_ERR_CLOSED;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return abi::LOOPD_OK;
        }
        if self.outq.len() >= self.high_watermark {
            self.want_writable = true;
            return abi::LOOPD_ERR_AGAIN;
        }
        // A reply (a send to the connection being handled) is written at
        // once, the first one in a pass. Other small sends are queued and
        // written together at the end of the pass (`Core::flush_dirty`):
        // the lines a chat member gets from several senders in one pass,
        // or the responses to pipelined requests, become one sendmsg.
        let reply = id == sh.current;
        let mut immediate = self.outq.is_empty()
            && self.phase == Phase::Open
            && ((reply && self.sent_pass != sh.pass) || total > DEFER_LIMIT);
        if self.deferred && self.outq.len() + total > DEFER_LIMIT {
            // Coalesced enough: write it now rather than let it pile up
            // (a handler sending a lot in one hook meets the kernel's
            // buffer first, and loopd's queue only after that, as without
            // deferral).
            self.deferred = false;
            let io = self.io.as_mut().expect("open connection has a transport");
            let (written, result) = self.outq.flush(io);
            self.wrote(written, sh);
            match result {
                Ok(()) => immediate = self.outq.is_empty(),
                Err(e) => {
                    self.outq.clear();
                    return self.write_failed(id, sh, &e);
                }
            }
        }
        let mut written = 0;
        if immediate {
            self.sent_pass = sh.pass;
            let io = self.io.as_mut().expect("open connection has a transport");
            let result = if parts.len() == 1 {
                io.write(parts[0])
            } else {
                // Up to 8 parts on the stack; writev writes at most that
                // many at once anyway, and queues the rest below.
                let mut iov = [IoSlice::new(&[]); 8];
                let mut n = 0;
                for p in parts.iter().filter(|p| !p.is_empty()).take(iov.len()) {
                    iov[n] = IoSlice::new(p);
                    n += 1;
                }
                io.writev(&iov[..n])
            };
            match result {
                Ok(n) => {
                    written = n;
                    self.wrote(n, sh);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return self.write_failed(id, sh, &e),
            }
        }
        if written == total && immediate {
            // Written, but a transport may hold some of it (TLS records
            // the socket did not take): watch for writability.
            if self.io.as_ref().is_some_and(|io| io.pending_output()) {
                self.update_interest(id, sh);
            }
        }
        if written < total {
            let mut skip = written;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                self.outq.push(&part[skip..]);
                skip = 0;
            }
            let was_paused = self.paused;
            if self.outq.len() >= self.high_watermark && !self.keep_reading {
                self.paused = true;
            }
            // Not written because of the pass (not because the kernel was
            // full, and no write interest yet): flushed at the end of it.
            let newly_deferred = !immediate && !self.deferred && !self.interest.1;
            if newly_deferred {
                self.deferred = true;
                sh.dirty.push(id);
            }
            // Deferred output needs no write interest: only a partial write
            // or a pause changes what the poller must watch.
            if immediate || self.paused != was_paused || !self.deferred {
                self.update_interest(id, sh);
            }
        }
        abi::LOOPD_OK
    }

    /// `send_file`: writes what the socket takes of a file range now (with
    /// sendfile(2) where the transport can, else read and written in one
    /// bounded piece); never queues. Owes `on_writable` when it wrote less
    /// than asked (the connection then watches for writability even with
    /// an empty queue).
    pub(crate) fn send_file(
        &mut self,
        id: u64,
        sh: &mut Shared,
        file: RawFd,
        offset: u64,
        len: u64,
    ) -> Result<u64, i32> {
        match self.phase {
            Phase::Open => {}
            // Nothing can be written before the connect completes: on_open,
            // then on_writable, follow it.
            Phase::Connecting | Phase::Handshaking => {
                self.want_writable = true;
                return Err(abi::LOOPD_ERR_AGAIN);
            }
            Phase::Closing | Phase::Closed => return Err(abi::LOOPD_ERR_CLOSED),
        }
        if self.write_shut() {
            return Err(abi::LOOPD_ERR_CLOSED);
        }
        if len == 0 {
            return Ok(0);
        }
        if !self.outq.is_empty() {
            // Queued bytes go first: on_writable once they have drained
            // (below the low watermark), then the handler tries again.
            self.want_writable = true;
            self.update_interest(id, sh);
            return Err(abi::LOOPD_ERR_AGAIN);
        }
        // At most 1 GiB per call (sendfile's own limit is about 2 GiB).
        let want = len.min(1 << 30) as usize;
        let io = self.io.as_mut().expect("open connection has a transport");
        let result = loop {
            match io.sendfile(file, offset, want) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    break copy_file_range_to(io, &mut sh.file_buf, file, offset, want)
                }
                other => break other,
            }
        };
        match result {
            Ok(0) => Err(abi::LOOPD_ERR_IO),
            Ok(n) => {
                self.wrote(n, sh);
                if (n as u64) < len {
                    self.want_writable = true;
                    self.update_interest(id, sh);
                }
                Ok(n as u64)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.want_writable = true;
                self.update_interest(id, sh);
                Err(abi::LOOPD_ERR_AGAIN)
            }
            Err(e) if sys::is_socket_error(&e) => Err(self.write_failed(id, sh, &e)),
            Err(e) => {
                log::debug!("{}: sendfile to connection {id}: {e}", self.name());
                Err(abi::LOOPD_ERR_IO)
            }
        }
    }

    /// Counts bytes written; writing anything is activity (idle timeouts).
    #[inline]
    fn wrote(&mut self, n: usize, sh: &Shared) {
        if n > 0 {
            self.count(|c| &c.bytes_out, n as u64);
            self.touch(sh);
        }
    }

    /// A write failed: close the connection and tell the sender.
    fn write_failed(&mut self, id: u64, sh: &mut Shared, e: &io::Error) -> i32 {
        log::debug!("{}: write to connection {id}: {e}", self.name());
        self.begin_close(id, sh, true, abi::LOOPD_REASON_ERROR);
        abi::LOOPD_ERR_CLOSED
    }

    /// Writes what sends deferred to the end of the pass, as a writable
    /// event would (resuming input, owing `on_writable`, finishing a close).
    pub(crate) fn flush_deferred(&mut self, id: u64, sh: &mut Shared) {
        if self.deferred {
            self.deferred = false;
            self.writable(id, sh);
        }
    }

    /// Writes queued output after a writable event; finishes connects.
    pub(crate) fn writable(&mut self, id: u64, sh: &mut Shared) {
        if self.phase == Phase::Connecting {
            let Some(io) = &self.io else { return };
            let fd = io.fd().as_raw_fd();
            match sys::take_error(fd) {
                Ok(None) if io.handshaking() => {
                    // TLS: on_open once the handshake is done.
                    self.local = sys::local_addr(fd);
                    self.start_handshake(id, sh);
                    return;
                }
                Ok(None) => {
                    self.phase = Phase::Open;
                    self.local = sys::local_addr(fd);
                    sh.pending.push_back(Deferred::Open(id));
                }
                Ok(Some(e)) | Err(e) => {
                    log::debug!(
                        "{}: connect to {}: {e}",
                        self.name(),
                        self.endpoint.to_str().unwrap_or("?")
                    );
                    self.outq.clear();
                    self.begin_close(id, sh, true, abi::LOOPD_REASON_CONNECT_FAILED);
                    return;
                }
            }
        }
        // Whatever was deferred goes out now too.
        self.deferred = false;
        let Some(io) = &mut self.io else { return };
        // Records the transport already holds go first (TLS).
        let (written, result) = match io.flush_pending() {
            Ok(()) => self.outq.flush(io),
            Err(e) => (0, Err(e)),
        };
        self.wrote(written, sh);
        if let Err(e) = result {
            log::debug!("{}: write to connection {id}: {e}", self.name());
            self.outq.clear();
            self.begin_close(id, sh, true, abi::LOOPD_REASON_ERROR);
            return;
        }
        // An empty queue is below any low watermark, 0 included ("resume
        // once everything is sent").
        let below_low = self.outq.len() < self.low_watermark || self.outq.is_empty();
        if below_low && self.paused {
            self.paused = false;
            sh.pending.push_back(Deferred::Input(id));
        }
        if below_low && self.want_writable && self.phase == Phase::Open {
            self.want_writable = false;
            sh.pending.push_back(Deferred::Writable(id));
        }
        if self.phase == Phase::Closing && self.drained() {
            sh.pending.push_back(Deferred::Close(id));
        }
        self.finish_shutdown_write(id, sh);
        self.update_interest(id, sh);
    }
}

/// `send_file` on a transport without sendfile: one bounded piece of the
/// file, read at `offset` and written; returns what the transport took
/// (`Ok(0)` only at the end of the file).
fn copy_file_range_to(
    io: &mut Transport,
    buf: &mut Vec<u8>,
    file: RawFd,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileExt;
    if buf.is_empty() {
        buf.resize(FILE_CHUNK, 0);
    }
    let want = len.min(buf.len());
    // SAFETY: the handler lends `file` open for the call; ManuallyDrop
    // keeps the File from closing it.
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(file) });
    let n = loop {
        match f.read_at(&mut buf[..want], offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if n == 0 {
        return Ok(0);
    }
    io.write(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn send_file_without_sendfile_writes_one_bounded_piece() {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        let mut file = std::env::temp_dir();
        file.push(format!("loopd-copy-file-{}", std::process::id()));
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&file)
            .unwrap()
            .write_all(&body)
            .unwrap();
        let f = std::fs::File::open(&file).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut io = Transport::Plain(OwnedFd::from(a));
        let mut buf = Vec::new();
        let n = copy_file_range_to(&mut io, &mut buf, f.as_raw_fd(), 1000, 150_000).unwrap();
        assert!(n > 0 && n <= FILE_CHUNK, "{n}");
        assert_eq!(buf.len(), FILE_CHUNK, "the bounce buffer stays bounded");
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, body[1000..1000 + n]);
        let end = copy_file_range_to(&mut io, &mut buf, f.as_raw_fd(), 200_000, 10).unwrap();
        assert_eq!(end, 0, "end of file");
        std::fs::remove_file(&file).unwrap();
    }
}
