//! The embedding API, used as a library user would: handlers linked in and
//! loaded by path, config and code together, run/run_once/next_timeout, a
//! host loop polling the runtime's descriptor, Handle from other threads,
//! running again after a stop, and errors that name what failed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use loopd::config::FramingKind;
use loopd::{Config, Error, Handle, HandlerSpec, Runtime};
use loopd_handler_api::{ConnId, Ctx, Framing, Handler, NoConfig, TimerId};

/// Runs the loop on this thread, one pass at a time, until `client` (on
/// another thread) is done.
fn serve_until<T>(rt: &mut Runtime, client: JoinHandle<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "the client did not finish");
        rt.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    client.join().expect("client thread panicked")
}

/// Stops the runtime if a test's `run()` has not returned within
/// [`TIMEOUT`], so a broken build fails instead of hanging.
struct Watchdog {
    done: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn new(handle: Handle) -> Watchdog {
        let (done, fired) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (d, f) = (done.clone(), fired.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + TIMEOUT;
            while !d.load(Ordering::SeqCst) {
                if Instant::now() >= deadline {
                    f.store(true, Ordering::SeqCst);
                    handle.stop();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watchdog { done, fired }
    }

    /// Panics if the watchdog had to stop the runtime.
    fn check(&self) {
        assert!(
            !self.fired.load(Ordering::SeqCst),
            "run() did not return by itself within {TIMEOUT:?}"
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// The first TCP listener of `handler`.
fn tcp_addr(rt: &Runtime, handler: &str) -> SocketAddr {
    rt.listeners_of(handler)
        .find_map(|u| u.strip_prefix("tcp://"))
        .unwrap_or_else(|| panic!("{handler} has no tcp listener: {:?}", rt.listeners()))
        .parse()
        .unwrap()
}

/// Sends `line` and reads one line back.
fn ask(addr: SocketAddr, line: &str) -> String {
    let mut s = tcp(addr);
    s.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    reply
}

/// Answers each line with `<instance>: <line>`.
struct Tag {
    name: String,
}

impl Handler for Tag {
    type Config = NoConfig;
    type Conn = ();
    const FRAMING: Framing = Framing::Line;

    fn create(_: &Ctx, instance: &str, _: NoConfig) -> Result<Self, String> {
        Ok(Tag {
            name: instance.to_string(),
        })
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _: &mut (), line: &[u8]) {
        let reply = format!("{}: {}\n", self.name, String::from_utf8_lossy(line));
        let _ = ctx.send(conn, reply.as_bytes());
    }
}

#[test]
fn handle_and_error_can_cross_threads() {
    fn send_sync<T: Clone + Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync::<Handle>();
    error::<Error>();
}

#[test]
fn linked_types_and_a_plugin_by_path_serve_side_by_side() {
    build_plugins();
    let so = plugin_dir().join("libloopd_echo.so");
    let dir = TempDir::new("embed");
    let sock = dir.join("echo.sock");
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
        .handler(
            HandlerSpec::library("echo-so", &so)
                .listen("tcp://127.0.0.1:0")
                .framing(FramingKind::Line),
        )
        .handler(HandlerSpec::linked::<Tag>("tag").listen("tcp://127.0.0.1:0"))
        .listen("echo", &format!("unix://{}", sock.display()))
        .build()
        .unwrap();
    assert_eq!(rt.listeners().len(), 4, "{:?}", rt.listeners());
    let echo = tcp_addr(&rt, "echo");
    let echo_so = tcp_addr(&rt, "echo-so");
    let tag = tcp_addr(&rt, "tag");
    let client = std::thread::spawn(move || {
        let data = pattern(300_000, 3);
        let got = echo_roundtrip(tcp(echo), &data);
        assert!(got == data, "linked echo differs");
        let got = echo_roundtrip(unix(&sock), &data);
        assert!(got == data, "linked echo over unix differs");
        (ask(echo_so, "by path\r\n"), ask(tag, "hi\n"))
    });
    let (from_so, from_tag) = serve_until(&mut rt, client);
    assert_eq!(from_so, "by path\n", "line framing set in code");
    assert_eq!(from_tag, "tag: hi\n");

    let listing = Runtime::builder()
        .handler(HandlerSpec::linked::<Tag>("tag"))
        .handler(HandlerSpec::library("echo-so", &so))
        .check()
        .unwrap();
    assert_eq!(
        listing,
        [
            "tag: embed::Tag (linked in)".to_string(),
            format!("echo-so: echo {} ({})", loopd::VERSION, so.display()),
        ]
    );
}

#[test]
fn a_config_and_code_combine() {
    let config = Config::parse(
        r#"
[runtime]
max_connections = 100

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
framing = "line"
"#,
        None,
    )
    .unwrap();
    let mut rt = Runtime::builder()
        .config(config)
        .static_handler::<loopd_echo::Echo>("echo")
        .handler(HandlerSpec::linked::<Tag>("tag"))
        .listen("tag", "tcp://127.0.0.1:0")
        .listen("echo", "tcp://127.0.0.1:0")
        .build()
        .unwrap();
    let echo: Vec<String> = rt.listeners_of("echo").map(str::to_string).collect();
    assert_eq!(echo.len(), 2, "{echo:?}");
    let second: SocketAddr = echo[1].strip_prefix("tcp://").unwrap().parse().unwrap();
    let tag = tcp_addr(&rt, "tag");
    let client = std::thread::spawn(move || (ask(second, "x\n"), ask(tag, "y\n")));
    assert_eq!(
        serve_until(&mut rt, client),
        ("x\n".into(), "tag: y\n".into())
    );
}

#[test]
fn build_errors_name_what_failed() {
    let err = |b: loopd::Builder| match b.build() {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };

    let e = err(Runtime::builder()
        .handler(HandlerSpec::linked::<Tag>("a"))
        .handler(HandlerSpec::linked::<Tag>("a")));
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        "handler `a` (added in code): a handler with this name is already defined"
    );

    let e = err(Runtime::builder()
        .handler(HandlerSpec::linked::<Tag>("a"))
        .listen("b", "tcp://127.0.0.1:0"));
    assert_eq!(
        e.to_string(),
        "Builder::listen(`b`, `tcp://127.0.0.1:0`): no handler named `b` (handlers: a)"
    );

    // What parses but no listener can bind, as in the config file.
    let e = err(Runtime::builder()
        .handler(HandlerSpec::linked::<Tag>("a"))
        .listen("a", "udp://[::ffff:127.0.0.1]:0"));
    assert!(
        e.to_string()
            .starts_with("Builder::listen(`a`, ...): `udp://[::ffff:127.0.0.1]:0`")
            && e.to_string()
                .ends_with("write the IPv4 address: `udp://127.0.0.1:0`"),
        "{e}"
    );

    let e =
        err(Runtime::builder()
            .handler(HandlerSpec::linked::<Tag>("a").listen("tcp://localhost:80")));
    assert!(
        e.to_string()
            .starts_with("handler `a` (added in code): listen[0]: `tcp://localhost:80`"),
        "{e}"
    );

    let e = err(Runtime::builder().handler(HandlerSpec::library("lib", "/nonexistent/libx.so")));
    match &e {
        Error::Plugin { handler, path, .. } => {
            assert_eq!(handler, "lib");
            assert_eq!(path, std::path::Path::new("/nonexistent/libx.so"));
        }
        other => panic!("expected Error::Plugin, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "handler `lib`: plugin /nonexistent/libx.so: file not found"
    );

    let mut runtime = loopd::config::RuntimeConfig::default();
    runtime.output_low_watermark = runtime.output_high_watermark;
    let e = err(Runtime::builder().runtime(runtime));
    assert!(
        e.to_string()
            .starts_with("Builder::runtime: output_low_watermark"),
        "{e}"
    );
    // Settings made in code are checked against the file's entries too.
    let config = Config::parse(
        "[[handler]]\nname = \"a\"\nplugin = \"echo\"\noutput_low_watermark = 1000\n",
        None,
    )
    .unwrap();
    let runtime = loopd::config::RuntimeConfig {
        output_high_watermark: 1000,
        output_low_watermark: 10,
        ..Default::default()
    };
    let e = err(Runtime::builder()
        .config(config)
        .static_handler::<Tag>("echo")
        .runtime(runtime));
    assert_eq!(
        e.to_string(),
        "Builder::runtime: handler `a` would have output_low_watermark: must be below output_high_watermark (1000 >= 1000)"
    );

    // A port someone else holds: Error::Listen, with the OS error as source.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", taken.local_addr().unwrap());
    let e = err(Runtime::builder().handler(HandlerSpec::linked::<Tag>("a").listen(&url)));
    match &e {
        Error::Listen {
            handler, listener, ..
        } => assert_eq!((handler.as_str(), listener.as_str()), ("a", url.as_str())),
        other => panic!("expected Error::Listen, got {other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with(&format!("handler `a`: cannot listen on {url}: ")),
        "{e}"
    );
    let source = std::error::Error::source(&e).expect("the OS error");
    assert!(source.to_string().contains("in use"), "{source}");
}

/// Counts timer firings; arms one long and one short timer in `create`.
struct Timers;

static FIRED: AtomicUsize = AtomicUsize::new(0);

impl Handler for Timers {
    type Config = NoConfig;
    type Conn = ();

    fn create(ctx: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> {
        ctx.set_timer(Duration::from_secs(3600), 0)
            .map_err(|e| e.to_string())?;
        ctx.set_timer(Duration::from_millis(1), 1)
            .map_err(|e| e.to_string())?;
        Ok(Timers)
    }

    fn on_timer(&mut self, _: &Ctx, _: TimerId, user_data: u64) {
        assert_eq!(user_data, 1, "only the short timer may fire");
        FIRED.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn next_timeout_and_run_once_follow_timers() {
    let mut idle = Runtime::builder()
        .handler(HandlerSpec::linked::<Tag>("tag"))
        .build()
        .unwrap();
    assert_eq!(idle.next_timeout(), None, "nothing scheduled");
    assert_eq!(idle.run_once(Some(Duration::ZERO)).unwrap(), 0);

    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Timers>("timers"))
        .build()
        .unwrap();
    let next = rt.next_timeout().expect("a timer is pending");
    assert!(next <= Duration::from_millis(1), "{next:?}");
    // A watchdog, so a broken run_once(None) fails instead of hanging.
    let handle = rt.handle();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + TIMEOUT;
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            handle.wake();
        })
    };
    let mut dispatched = 0;
    while FIRED.load(Ordering::SeqCst) == 0 {
        dispatched += rt.run_once(None).unwrap();
        assert!(!watchdog.is_finished(), "the short timer never fired");
    }
    done.store(true, Ordering::SeqCst);
    assert_eq!(FIRED.load(Ordering::SeqCst), 1);
    assert_eq!(dispatched, 1, "a fired timer counts as one event");
    let next = rt.next_timeout().expect("the long timer is pending");
    assert!(
        next > Duration::from_secs(60) && next <= Duration::from_secs(3600),
        "{next:?}"
    );
    watchdog.join().unwrap();
}

/// poll(2) on one descriptor: whether it is readable within `timeout_ms`.
fn poll_readable(fd: std::os::fd::BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, and its count.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n >= 0 {
            return n == 1 && pfd.revents & libc::POLLIN != 0;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
    }
}

#[test]
fn a_host_loop_polls_the_runtime_descriptor() {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
        .build()
        .unwrap();
    let addr = tcp_addr(&rt, "echo");
    assert_eq!(rt.as_raw_fd(), rt.as_fd().as_raw_fd());

    // Quiet: nothing to do, the descriptor is not readable.
    assert!(!poll_readable(rt.as_fd(), 0));

    let client = std::thread::spawn(move || {
        let mut got = Vec::new();
        for i in 0..20u8 {
            got.push(echo_roundtrip(tcp(addr), &pattern(10_000, i)) == pattern(10_000, i));
        }
        got
    });
    // The host's own loop: it sleeps in poll(2), never in loopd.
    let deadline = Instant::now() + TIMEOUT;
    let (mut wakeups, mut events) = (0, 0);
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "the client did not finish");
        let wait = rt
            .next_timeout()
            .map_or(20, |d| d.as_millis().min(20) as i32);
        if poll_readable(rt.as_fd(), wait) {
            wakeups += 1;
            events += rt.run_once(Some(Duration::ZERO)).unwrap();
        }
    }
    let results = client.join().unwrap();
    assert!(results.iter().all(|&ok| ok), "{results:?}");
    assert!(
        wakeups > 0 && events >= 20,
        "{wakeups} wakeups, {events} events"
    );

    // Let the last close be handled, then the descriptor is quiet again.
    while rt.connections() > 0 || poll_readable(rt.as_fd(), 0) {
        assert!(Instant::now() < deadline, "the descriptor never went quiet");
        if poll_readable(rt.as_fd(), 20) {
            rt.run_once(Some(Duration::ZERO)).unwrap();
        }
    }

    // A wake from another thread makes it readable; one pass clears it.
    let handle = rt.handle();
    std::thread::spawn(move || handle.wake()).join().unwrap();
    assert!(poll_readable(rt.as_fd(), TIMEOUT.as_millis() as i32));
    assert_eq!(
        rt.run_once(Some(Duration::ZERO)).unwrap(),
        0,
        "a wake is no event"
    );
    assert!(!poll_readable(rt.as_fd(), 0));
}

#[test]
fn a_stopped_runtime_runs_again_with_its_connections() {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Tag>("tag").listen("tcp://127.0.0.1:0"))
        .build()
        .unwrap();
    let addr = tcp_addr(&rt, "tag");
    let handle = rt.handle();
    let (to_client, client_rx) = std::sync::mpsc::channel::<()>();

    // The client keeps one connection across two runs, and stops the
    // runtime itself once each answer arrived.
    let client = std::thread::spawn(move || {
        let mut s = tcp(addr);
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut answers = Vec::new();
        for word in ["one", "two"] {
            s.write_all(format!("{word}\n").as_bytes()).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            answers.push(line);
            handle.stop();
            client_rx.recv_timeout(TIMEOUT).expect("the next run");
        }
        answers
    });
    let watchdog = Watchdog::new(rt.handle());
    rt.run().unwrap();
    watchdog.check();
    assert_eq!(rt.connections(), 1, "stop keeps connections open");
    to_client.send(()).unwrap();
    rt.run().unwrap();
    watchdog.check();
    to_client.send(()).unwrap();
    let answers = client.join().unwrap();
    assert_eq!(answers, ["tag: one\n", "tag: two\n"]);

    // A stop ends one run, not every later pass: once the client's close is
    // handled, run_once(None) waits again (here, for a wake that comes only
    // after a while).
    let deadline = Instant::now() + TIMEOUT;
    while rt.connections() > 0 {
        assert!(Instant::now() < deadline, "the client's close never came");
        rt.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    rt.run_once(Some(Duration::ZERO)).unwrap();
    let woke = Arc::new(AtomicBool::new(false));
    let waker = {
        let (woke, handle) = (woke.clone(), rt.handle());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            woke.store(true, Ordering::SeqCst);
            handle.wake();
        })
    };
    rt.run_once(None).unwrap();
    assert!(
        woke.load(Ordering::SeqCst),
        "run_once(None) returned before anything happened"
    );
    waker.join().unwrap();
}

#[test]
fn shutdown_from_another_thread_finishes_and_stays_finished() {
    let mut rt = Runtime::builder()
        .handler(HandlerSpec::linked::<Tag>("tag").listen("tcp://127.0.0.1:0"))
        .build()
        .unwrap();
    let addr = tcp_addr(&rt, "tag");
    let handle = rt.handle();
    let client = std::thread::spawn(move || {
        let mut s = tcp(addr);
        s.write_all(b"before\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        handle.shutdown();
        // The open connection is still served during the shutdown...
        s.write_all(b"during\n").unwrap();
        let mut during = String::new();
        r.read_line(&mut during).unwrap();
        // ...and the runtime finishes once it is gone.
        drop((s, r));
        (line, during)
    });
    let watchdog = Watchdog::new(rt.handle());
    rt.run().unwrap();
    watchdog.check();
    let (before, during) = client.join().unwrap();
    assert_eq!(
        (before.as_str(), during.as_str()),
        ("tag: before\n", "tag: during\n")
    );
    assert!(rt.is_finished());
    assert_eq!(rt.next_timeout(), None, "nothing left to wake up for");
    rt.run().unwrap();
    watchdog.check();
    assert!(refuses_soon(addr), "the listener is closed");
}
