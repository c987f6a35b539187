//! The `loopd` binary's log: env_logger's format and `RUST_LOG` filter,
//! written by threads of its own, so that logging never blocks the loop
//! (the stderr writer only while there is something to write: see
//! [`WRITER_IDLE`]).
//!
//! A record is formatted on the thread that logs it and queued in memory;
//! only the writer threads make the `write(2)` that can block (stderr on a
//! pipe nobody reads, a hung disk). Each queue holds at most
//! `[log] max_queued` bytes: past that a line is dropped and counted, and
//! the count is logged where the gap is, once the writer gets there
//! ("N log lines dropped: stderr was not being read"). Lines of target
//! `loopd::access` go to `[log] access_log` when it is set: appended in
//! batches of `access_log_buffer` bytes, never held longer than
//! `access_log_flush_ms`, reopened on SIGUSR1 (log rotation), as nginx's
//! `access_log path buffer=64k flush=1s`.
//!
//! At exit [`finish`] waits (at most [`FINISH_TIMEOUT`]) for both queues
//! to be written. Writes that bypass the logger (a C handler's
//! `fprintf(stderr, ...)`, `eprintln!`) still go straight to stderr; the
//! SDK logs a panic in a hook through the host.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};
use loopd::config::LogConfig;

/// The target of access log lines (the http handler logs them with `log_to`).
pub(crate) const ACCESS_TARGET: &str = "loopd::access";

/// The longest [`finish`] waits for the queues to be written at exit.
pub(crate) const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the access log writer looks at the reopen flag when idle.
const REOPEN_CHECK: Duration = Duration::from_millis(200);

/// How long the stderr writer thread waits for a line before it ends (the
/// next line starts another). While nothing is logged, a loopd with one
/// loop is then a process of one thread, and the kernel skips what it does
/// for every system call on a socket in a process whose threads share a
/// file table: take and drop a reference on the socket's file (3% of a
/// round trip of loopback sends and receives here). Starting the thread
/// again costs the thread that logs about 10 µs (pthread_create), at most
/// once per this long.
const WRITER_IDLE: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it left consistent data (pushes and pops only).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// stderr
// ---------------------------------------------------------------------------

/// A queued stderr entry: a formatted record, or how many records were
/// dropped at this point of the stream.
enum Entry {
    Line(Vec<u8>),
    Dropped(u64),
}

#[derive(Default)]
struct StderrState {
    entries: VecDeque<Entry>,
    /// Bytes of the queued lines.
    bytes: usize,
    max: usize,
    /// The writer holds an entry it took.
    writing: bool,
    /// A writer thread is running, or being started.
    running: bool,
}

/// The stderr queue and its writer thread (started by the first line
/// queued, ended after [`WRITER_IDLE`] without one).
struct Stderr {
    state: Mutex<StderrState>,
    ready: Condvar,
    idle: Condvar,
}

thread_local! {
    /// Set on the stderr writer while it logs a drop count: that record
    /// goes to the front of the queue, where the gap is.
    static AT_FRONT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Stderr {
    fn new(max: usize) -> Arc<Stderr> {
        Arc::new(Stderr {
            state: Mutex::new(StderrState {
                max,
                ..StderrState::default()
            }),
            ready: Condvar::new(),
            idle: Condvar::new(),
        })
    }

    /// Starts the writer thread, which `st.running` says is not running;
    /// called with the state locked (as `st`), which it unlocks.
    fn start_writer(self: &Arc<Self>, mut st: MutexGuard<'_, StderrState>) {
        st.running = true;
        drop(st);
        let writer = self.clone();
        let started = std::thread::Builder::new()
            .name("loopd-log".into())
            .spawn(move || writer.run());
        if started.is_err() {
            // No thread now (a thread limit): the lines wait, within
            // `max_queued`, and the next one tries again.
            lock(&self.state).running = false;
        }
    }

    fn push(self: &Arc<Self>, line: &[u8]) {
        let mut st = lock(&self.state);
        if AT_FRONT.with(|f| f.get()) {
            // The drop notice: small, one per gap, past the limit.
            st.bytes += line.len();
            st.entries.push_front(Entry::Line(line.to_vec()));
        } else if st.bytes + line.len() > st.max {
            match st.entries.back_mut() {
                Some(Entry::Dropped(n)) => *n += 1,
                _ => st.entries.push_back(Entry::Dropped(1)),
            }
        } else {
            st.bytes += line.len();
            st.entries.push_back(Entry::Line(line.to_vec()));
        }
        if !st.running {
            return self.start_writer(st);
        }
        drop(st);
        self.ready.notify_one();
    }

    fn run(&self) {
        // fd 2 itself, not std's Stderr: no lock shared with eprintln!.
        // SAFETY: fd 2 stays open for the life of the process; ManuallyDrop
        // never closes it.
        let mut out = ManuallyDrop::new(unsafe { File::from_raw_fd(2) });
        loop {
            let entry = {
                let mut st = lock(&self.state);
                loop {
                    if let Some(e) = st.entries.pop_front() {
                        if let Entry::Line(l) = &e {
                            st.bytes -= l.len();
                        }
                        st.writing = true;
                        break e;
                    }
                    let (next, wait) = self
                        .ready
                        .wait_timeout(st, WRITER_IDLE)
                        .unwrap_or_else(|e| e.into_inner());
                    st = next;
                    if wait.timed_out() && st.entries.is_empty() {
                        // Under the lock: a line queued after this starts
                        // a new writer.
                        st.running = false;
                        return;
                    }
                }
            };
            match entry {
                // A write error (EPIPE: the reader is gone; EIO: the
                // terminal is) loses the line; there is nowhere to say so.
                Entry::Line(l) => drop(write_blocking(&mut out, &l)),
                Entry::Dropped(n) => {
                    AT_FRONT.with(|f| f.set(true));
                    log::warn!(target: "loopd", "{n} log lines dropped: stderr was not being read");
                    AT_FRONT.with(|f| f.set(false));
                }
            }
            let mut st = lock(&self.state);
            st.writing = false;
            if st.entries.is_empty() {
                self.idle.notify_all();
            }
        }
    }

    /// Waits until everything queued is written, or `deadline`.
    fn wait_written(self: &Arc<Self>, deadline: Instant) -> bool {
        let mut st = lock(&self.state);
        if !st.running && !st.entries.is_empty() {
            // Lines left by a writer that could not be started.
            self.start_writer(st);
            st = lock(&self.state);
        }
        while !st.entries.is_empty() || st.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Writes all of `buf`, waiting when the descriptor is non-blocking and full
/// (a parent may have shared a non-blocking pipe).
fn write_blocking(out: &mut File, mut buf: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        match out.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: out.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, -1) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What env_logger writes to: the stderr queue.
struct ToQueue(Arc<Stderr>);

impl Write for ToQueue {
    /// env_logger hands over one whole formatted record per `write_all`,
    /// and this takes it in one call.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The access log file
// ---------------------------------------------------------------------------

struct AccessState {
    /// Lines waiting, back to back.
    buf: Vec<u8>,
    lines: u64,
    /// When the oldest waiting line arrived.
    since: Option<Instant>,
    /// Lines dropped (the queue was full) and not yet reported.
    dropped: u64,
    writing: bool,
    closed: bool,
}

struct Access {
    path: PathBuf,
    max: usize,
    buffer: usize,
    flush: Duration,
    state: Mutex<AccessState>,
    ready: Condvar,
    idle: Condvar,
    /// Set by SIGUSR1.
    reopen: Arc<AtomicBool>,
}

/// Opens (or creates) the access log for appending. Opened non-blocking, so
/// that a FIFO no process reads is an error instead of an open that waits
/// for a reader forever (at start, or in `loopd check`); then blocking
/// again, for the writer thread: a FIFO or terminal that is slow to read
/// holds up that thread only.
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => io::Error::new(
                e.kind(),
                "it is a FIFO that no process has open for reading (start the reader first)",
            ),
            _ => e,
        })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: fcntl on a descriptor this function owns; F_GETFL/F_SETFL
    // only read and change its status flags.
    let cleared = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !cleared {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

impl Access {
    fn push(&self, msg: &std::fmt::Arguments<'_>) {
        let mut st = lock(&self.state);
        let before = st.buf.len();
        let _ = writeln!(st.buf, "{msg}");
        if st.buf.len() > self.max {
            st.buf.truncate(before);
            st.dropped += 1;
            return;
        }
        st.lines += 1;
        st.since.get_or_insert_with(Instant::now);
        // Wake the writer once the buffer is full (the flush interval
        // wakes it otherwise).
        let full = st.buf.len() >= self.buffer && before < self.buffer.max(1);
        drop(st);
        if full {
            self.ready.notify_one();
        }
    }

    fn run(&self, mut file: File) {
        let mut errors = ErrorReport::default();
        loop {
            let (batch, lines, dropped, reopen, closed) = {
                let mut st = lock(&self.state);
                loop {
                    let reopen = self.reopen.load(Ordering::Relaxed);
                    let due = st.buf.len() >= self.buffer.max(1)
                        || st.closed
                        || reopen
                        || st.since.is_some_and(|t| t.elapsed() >= self.flush);
                    if due && (!st.buf.is_empty() || st.dropped > 0 || reopen || st.closed) {
                        break;
                    }
                    let wait = match st.since {
                        Some(t) => self.flush.saturating_sub(t.elapsed()).min(REOPEN_CHECK),
                        None => REOPEN_CHECK,
                    };
                    st = self
                        .ready
                        .wait_timeout(st, wait.max(Duration::from_millis(1)))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                st.writing = true;
                st.since = None;
                let batch = std::mem::take(&mut st.buf);
                let lines = std::mem::take(&mut st.lines);
                let dropped = std::mem::take(&mut st.dropped);
                let reopen = self.reopen.swap(false, Ordering::Relaxed);
                (batch, lines, dropped, reopen, st.closed)
            };
            if !batch.is_empty() {
                if let Err(e) = file.write_all(&batch) {
                    errors.failed(&self.path, &e, lines);
                }
            }
            if dropped > 0 {
                log::warn!(
                    target: "loopd",
                    "{dropped} access log lines dropped: {} was not being written fast enough",
                    self.path.display()
                );
            }
            if reopen {
                match open_append(&self.path) {
                    Ok(f) => {
                        file = f;
                        log::info!(target: "loopd", "access log reopened: {}", self.path.display());
                    }
                    Err(e) => log::error!(
                        target: "loopd",
                        "reopening the access log {}: {e}; still writing to the file opened before",
                        self.path.display()
                    ),
                }
            }
            let mut st = lock(&self.state);
            st.writing = false;
            if st.buf.is_empty() {
                self.idle.notify_all();
            }
            if closed && st.buf.is_empty() {
                return;
            }
        }
    }

    fn wait_written(&self, deadline: Instant) -> bool {
        let mut st = lock(&self.state);
        st.closed = true;
        self.ready.notify_one();
        while !st.buf.is_empty() || st.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Access log write errors (EFBIG past RLIMIT_FSIZE, ENOSPC): the first
/// logged at once, then at most one line a minute with the count.
#[derive(Default)]
struct ErrorReport {
    last: Option<Instant>,
    lost: u64,
}

impl ErrorReport {
    fn failed(&mut self, path: &Path, e: &io::Error, lines: u64) {
        self.lost += lines;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.last = Some(Instant::now());
        log::error!(
            target: "loopd",
            "writing the access log {}: {e}; {} lines lost",
            path.display(),
            std::mem::take(&mut self.lost)
        );
    }
}

// ---------------------------------------------------------------------------
// The logger
// ---------------------------------------------------------------------------

struct Logger {
    stderr: env_logger::Logger,
    queue: Arc<Stderr>,
    access: OnceLock<Arc<Access>>,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        (m.target() == ACCESS_TARGET && self.access.get().is_some()) || self.stderr.enabled(m)
    }

    fn log(&self, record: &Record<'_>) {
        if record.target() == ACCESS_TARGET {
            if let Some(a) = self.access.get() {
                return a.push(record.args());
            }
        }
        self.stderr.log(record);
    }

    fn flush(&self) {}
}

static LOGGER: OnceLock<&'static Logger> = OnceLock::new();

/// Installs the logger: `RUST_LOG` (default `info`) and env_logger's
/// format, on the stderr queue (1 MiB until [`configure`] reads `[log]`).
pub(crate) fn install() {
    let queue = Stderr::new(LogConfig::default().max_queued);
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    b.format_timestamp_millis()
        .target(env_logger::Target::Pipe(Box::new(ToQueue(queue.clone()))));
    if std::env::var_os("RUST_LOG_STYLE").is_none() {
        use std::io::IsTerminal;
        b.write_style(if io::stderr().is_terminal() {
            env_logger::WriteStyle::Always
        } else {
            env_logger::WriteStyle::Never
        });
    }
    let stderr = b.build();
    let max = stderr.filter();
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        stderr,
        queue,
        access: OnceLock::new(),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
        let _ = LOGGER.set(logger);
    }
    // A panic of loopd's own: what was queued first, then the message.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(l) = LOGGER.get() {
            l.queue
                .wait_written(Instant::now() + Duration::from_secs(1));
        }
        default(info);
    }));
}

/// Checks `[log] access_log` without creating it (for `loopd check`): an
/// existing file must open for appending. (A new one's directory, and the
/// path's shape, were checked when the config file was read.)
pub(crate) fn check(config: &loopd::Config) -> Result<(), loopd::Error> {
    let Some(path) = &config.log.access_log else {
        return Ok(());
    };
    if !path.exists() {
        return Ok(());
    }
    open_append(path)
        .map(drop)
        .map_err(|e| access_error(config, path, &e))
}

fn access_error(config: &loopd::Config, path: &Path, e: &io::Error) -> loopd::Error {
    let at = match (&config.log.access_log_location, &config.path) {
        (Some(l), _) => l.to_string(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "<config>".to_string(),
    };
    loopd::Error::Config(format!(
        "{at}: log.access_log: cannot open {}: {e}",
        path.display()
    ))
}

/// Applies `[log]`: the stderr queue's limit, and the access log file
/// (opened now, before any switch of user; SIGUSR1 reopens it).
pub(crate) fn configure(config: &loopd::Config) -> Result<(), loopd::Error> {
    let Some(logger) = LOGGER.get() else {
        return Ok(());
    };
    let log = &config.log;
    lock(&logger.queue.state).max = log.max_queued;
    let Some(path) = &log.access_log else {
        return Ok(());
    };
    let file = open_append(path).map_err(|e| access_error(config, path, &e))?;
    let reopen = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, reopen.clone()).map_err(
        |source| loopd::Error::System {
            what: "installing the SIGUSR1 handler (access log reopen)".into(),
            source,
        },
    )?;
    let access = Arc::new(Access {
        path: path.clone(),
        max: log.max_queued,
        buffer: log.access_log_buffer,
        flush: log.access_log_flush,
        state: Mutex::new(AccessState {
            buf: Vec::with_capacity(log.access_log_buffer.min(1 << 20)),
            lines: 0,
            since: None,
            dropped: 0,
            writing: false,
            closed: false,
        }),
        ready: Condvar::new(),
        idle: Condvar::new(),
        reopen,
    });
    let writer = access.clone();
    std::thread::Builder::new()
        .name("loopd-access-log".into())
        .spawn(move || writer.run(file))
        .map_err(|source| loopd::Error::System {
            what: "starting the access log writer thread".into(),
            source,
        })?;
    let _ = logger.access.set(access);
    // Access lines are logged at info level: let them through whatever
    // RUST_LOG says about stderr.
    if log::max_level() < LevelFilter::Info {
        log::set_max_level(LevelFilter::Info);
    }
    log::info!(
        target: "loopd",
        "access log: {} (buffer {} bytes, flush every {} ms)",
        path.display(),
        log.access_log_buffer,
        log.access_log_flush.as_millis()
    );
    Ok(())
}

/// Writes what is queued (the access log, then stderr), waiting at most
/// [`FINISH_TIMEOUT`] in all: stderr on a pipe nobody reads must not keep
/// loopd from exiting.
pub(crate) fn finish() {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let deadline = Instant::now() + FINISH_TIMEOUT;
    if let Some(a) = logger.access.get() {
        a.wait_written(deadline);
    }
    logger.queue.wait_written(deadline);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_log_fifo_without_a_reader_is_an_error_not_a_wait() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("loopd-logsink-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fifo = dir.join("access.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(open_append(&path).map(drop)));
        let Ok(opened) = rx.recv_timeout(Duration::from_secs(10)) else {
            // A reader lets the blocked open return, and the test fail.
            let _ = std::fs::File::open(&fifo);
            panic!("opening the access log waited for a FIFO reader");
        };
        let e = opened.unwrap_err();
        assert!(
            e.to_string().contains("no process has open for reading"),
            "{e}"
        );
        // With a reader it opens, blocking again for the writer thread.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut w = open_append(&fifo).unwrap();
        // SAFETY: F_GETFL on a descriptor `w` owns.
        let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "{flags:#x}");
        w.write_all(b"GET / 200\n").unwrap();
        drop(w);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut &reader, &mut got).unwrap();
        assert_eq!(got, "GET / 200\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_marks_the_gap() {
        // `running` with no writer: the lines stay queued for the test.
        let q = Arc::new(Stderr {
            state: Mutex::new(StderrState {
                max: 11,
                running: true,
                ..StderrState::default()
            }),
            ready: Condvar::new(),
            idle: Condvar::new(),
        });
        q.push(b"12345\n");
        q.push(b"abcd\n");
        q.push(b"dropped\n");
        q.push(b"also\n");
        let st = lock(&q.state);
        assert_eq!(st.bytes, 11);
        let kinds: Vec<String> = st
            .entries
            .iter()
            .map(|e| match e {
                Entry::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Entry::Dropped(n) => format!("<{n} dropped>"),
            })
            .collect();
        assert_eq!(kinds, ["12345\n", "abcd\n", "<2 dropped>"]);
    }
}
