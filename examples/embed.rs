//! A program with its own event loop that embeds loopd.
//!
//! It serves two handlers, both linked into this binary (no `.so` files):
//!
//! - `echo`: the shipped echo handler (`loopd_echo::Echo`): every byte comes back.
//! - `time`: [`Clock`], defined below: each line is answered with the current
//!   UTC time.
//!
//! The program keeps control: its own `poll(2)` loop watches loopd's
//! descriptor next to its own (a signal pipe), does periodic work once a
//! second, and calls `run_once(Some(Duration::ZERO))` when loopd has
//! something to do. Ctrl-C (or SIGTERM) starts a graceful shutdown; a second
//! one exits at once.
//!
//! ```sh
//! cargo run --example embed                  # echo on 7100, time on 7101
//! cargo run --example embed -- --port 0      # any free ports
//! cargo run --example embed -- --seconds 10  # stop by itself after 10 s
//! ```

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loopd::config::RuntimeConfig;
use loopd::{HandlerSpec, Runtime};
use loopd_handler_api::{CloseMode, ConnId, Ctx, Framing, Handler, NoConfig};

/// The "time" service: answers each line with the current UTC time, e.g.
/// `2026-05-01T12:34:56.789Z`.
struct Clock;

impl Handler for Clock {
    type Config = NoConfig;
    type Conn = ();
    const FRAMING: Framing = Framing::Line;

    fn create(_ctx: &Ctx, _instance: &str, _config: NoConfig) -> Result<Self, String> {
        Ok(Clock)
    }

    fn on_data(&mut self, ctx: &Ctx, conn: ConnId, _state: &mut (), _line: &[u8]) {
        if ctx
            .send_frame(conn, Framing::Line, utc_now().as_bytes())
            .is_err()
        {
            // A peer that sends lines without reading the answers.
            let _ = ctx.close(conn, CloseMode::Abort);
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds.
fn utc_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Command-line options.
struct Options {
    /// Echo listens here, time on the next port; 0 picks free ports.
    port: u16,
    /// Stop by itself after this long.
    seconds: Option<u64>,
}

const USAGE: &str = "usage: embed [--port PORT] [--seconds N]
  --port PORT   echo on 127.0.0.1:PORT, time on PORT+1 (default 7100; 0: any free ports)
  --seconds N   shut down gracefully after N seconds (default: run until Ctrl-C)";

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        port: 7100,
        seconds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--port" => {
                let v = value("--port")?;
                opts.port = v
                    .parse()
                    .ok()
                    .filter(|p: &u16| *p < u16::MAX)
                    .ok_or_else(|| format!("--port: `{v}` is not a port below 65535"))?;
            }
            "--seconds" => {
                let v = value("--seconds")?;
                opts.seconds = Some(
                    v.parse()
                        .map_err(|_| format!("--seconds: `{v}` is not a whole number"))?,
                );
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(opts)
}

/// Milliseconds for poll(2): rounded up, so a wake-up is never early.
fn poll_ms(d: Duration) -> i32 {
    d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("embed: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Options) -> Result<(), Box<dyn std::error::Error>> {
    let (echo_port, time_port) = match opts.port {
        0 => (0, 0),
        p => (p, p + 1),
    };
    let mut rt = Runtime::builder()
        .runtime(RuntimeConfig {
            shutdown_timeout: Duration::from_secs(2),
            ..RuntimeConfig::default()
        })
        .handler(
            HandlerSpec::linked::<loopd_echo::Echo>("echo")
                .listen(format!("tcp://127.0.0.1:{echo_port}")),
        )
        .handler(
            HandlerSpec::linked::<Clock>("time").listen(format!("tcp://127.0.0.1:{time_port}")),
        )
        .build()?;

    let addr = |handler: &str| -> String {
        let url = rt.listeners_of(handler).next().unwrap_or("?");
        url.strip_prefix("tcp://")
            .unwrap_or(url)
            .replacen(':', " ", 1)
    };
    println!("echo: nc {}", addr("echo"));
    println!("time: nc {}   (type a line, get the time)", addr("time"));
    println!("Ctrl-C stops (gracefully; a second Ctrl-C at once)");
    io::stdout().flush()?;

    // The program's own signal handling: SIGINT and SIGTERM write a byte to
    // a pipe its loop watches. loopd installs no handler of its own
    // (`handle_signals` is off); it is told to shut down via its Handle.
    let (mut signals, signal_writer) = UnixStream::pair()?;
    signals.set_nonblocking(true)?;
    signal_writer.set_nonblocking(true)?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, signal_writer.try_clone()?)?;
    }

    let handle = rt.handle();
    let start = Instant::now();
    let deadline = opts.seconds.map(|s| start + Duration::from_secs(s));
    let tick = Duration::from_secs(1);
    let mut next_tick = start + tick;
    let (mut ticks, mut events) = (0u64, 0usize);
    let mut stopping = false;
    // Say "stopping" once loopd has begun the shutdown.
    let mut announce = false;

    loop {
        // Sleep until loopd has work, a signal arrives, or our own next tick
        // (or the deadline, or a loopd timer) is due.
        let now = Instant::now();
        let mut wait = next_tick.saturating_duration_since(now);
        if let Some(d) = deadline.filter(|_| !stopping) {
            wait = wait.min(d.saturating_duration_since(now));
        }
        if let Some(t) = rt.next_timeout() {
            wait = wait.min(t);
        }
        let mut fds = [
            libc::pollfd {
                fd: rt.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds, and their count.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, poll_ms(wait)) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }

        if fds[1].revents != 0 {
            let mut buf = [0u8; 16];
            let got = signals.read(&mut buf).unwrap_or(0);
            if got > 0 && stopping {
                println!("second signal: exiting now");
                break;
            }
            if got > 0 {
                stopping = true;
                announce = true;
                handle.shutdown();
            }
        }

        // loopd's turn: never blocks, handles whatever is ready or due
        // (including a shutdown just requested: its listeners close here).
        events += rt.run_once(Some(Duration::ZERO))?;
        if std::mem::take(&mut announce) {
            println!(
                "stopping: no new connections; {} still open, given up to 2 s to finish",
                rt.connections()
            );
            io::stdout().flush()?;
        }

        // Our own periodic work.
        let now = Instant::now();
        if now >= next_tick {
            ticks += 1;
            next_tick += tick;
            println!(
                "[tick {ticks}] open connections: {}, events dispatched: {events}",
                rt.connections()
            );
            io::stdout().flush()?;
        }
        if !stopping && deadline.is_some_and(|d| now >= d) {
            println!("--seconds reached: stopping");
            stopping = true;
            handle.shutdown();
        }
        if rt.is_finished() {
            break;
        }
    }
    drop(rt);
    println!("embed: stopped; ticks: {ticks}, events dispatched: {events}");
    Ok(())
}
