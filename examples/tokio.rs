//! loopd nested in a tokio program: the runtime's poller descriptor is an
//! `AsyncFd` in tokio's reactor, and a tokio task drives loopd beside the
//! program's own async work.
//!
//! tokio registers descriptors edge-triggered: it hears about the poller
//! once per change, not once per pass. loopd caps each pass (reads per
//! connection, accepts, events per wait) for fairness and leaves the rest
//! for the next pass, so the loop below keeps calling `run_once` while
//! `has_pending()` says work was left, then waits for tokio again, for at
//! most `next_timeout()` (timers do not make the descriptor readable).
//!
//! It serves the shipped echo handler, linked in, and stops after
//! `--seconds N` (default: run until Ctrl-C).
//!
//! ```sh
//! cargo run --example tokio                        # echo on 127.0.0.1:7300
//! cargo run --example tokio -- --port 0 --seconds 5
//! ```

use std::os::fd::AsRawFd;
use std::time::Duration;

use loopd::{HandlerSpec, Runtime};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Wraps the raw descriptor: tokio needs an owner of `AsRawFd`, and the
/// runtime itself stays on this thread, outside tokio's types.
struct PollerFd(i32);

impl AsRawFd for PollerFd {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

/// Runs loopd until `stop` resolves: one task, the loop below.
async fn drive(
    rt: &mut Runtime,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    // SAFETY: the poller's descriptor stays open, and the same, for as long
    // as the runtime lives, which outlives `fd` (dropped when this function
    // returns); the runtime never closes or replaces it while running.
    let fd =
        unsafe { AsyncFd::register_with_interest(PollerFd(rt.as_raw_fd()), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        // Everything loopd has now, including what a capped pass left.
        loop {
            rt.run_once(Some(Duration::ZERO))?;
            if !rt.has_pending() {
                break;
            }
        }
        if rt.is_finished() {
            return Ok(());
        }
        let sleep = rt.next_timeout().unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            guard = fd.readable() => {
                // loopd drains what made the descriptor readable in the
                // run_once calls above; tokio may clear its flag now, and
                // only a new edge wakes this task again.
                guard?.clear_ready();
            }
            _ = tokio::time::sleep(sleep) => {}
            _ = &mut stop, if !stopping => {
                stopping = true;
                rt.handle().shutdown();
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 7300u16;
    let mut seconds: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            "--seconds" => seconds = Some(args.next().ok_or("--seconds needs a value")?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut rt = Runtime::builder()
        .handler(
            HandlerSpec::linked::<loopd_echo::Echo>("echo")
                .listen(format!("tcp://127.0.0.1:{port}")),
        )
        .build()?;
    for url in rt.listeners() {
        println!("echo listening on {url}");
    }
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio_rt.block_on(async {
        let stop = async {
            match seconds {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        drive(&mut rt, stop).await
    })?;
    println!("stopped");
    Ok(())
}
