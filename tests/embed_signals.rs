//! Signal handling is opt-in for embedders: a runtime built without
//! `handle_signals` leaves the process's dispositions alone (the program's
//! own SIGINT handler keeps running), and one built with it installs
//! handlers and shuts down gracefully on SIGINT.
//!
//! Signal dispositions belong to the whole process, so this file holds one
//! test, run alone in its own test binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use loopd::{HandlerSpec, Runtime};

/// What `sigaction` reports for `sig`: the handler address and the flags.
fn disposition(sig: i32) -> (usize, i32) {
    // SAFETY: all-zero is a valid sigaction; querying with a NULL new action
    // changes nothing.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0);
        (old.sa_sigaction, old.sa_flags)
    }
}

static OWN_SIGINTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn own_handler(_: i32) {
    OWN_SIGINTS.fetch_add(1, Ordering::SeqCst);
}

/// Serves one echo exchange through `rt`, so the runtime has really run.
fn exercise(rt: &mut Runtime) {
    let url = rt.listeners()[0].clone();
    let addr: std::net::SocketAddr = url.strip_prefix("tcp://").unwrap().parse().unwrap();
    let client = std::thread::spawn(move || {
        let mut s = tcp(addr);
        s.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    });
    let deadline = Instant::now() + TIMEOUT;
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "the client did not finish");
        rt.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    assert_eq!(client.join().unwrap(), "ping\n");
}

fn echo_runtime(signals: bool) -> Runtime {
    Runtime::builder()
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("echo").listen("tcp://127.0.0.1:0"))
        .handle_signals(signals)
        .build()
        .unwrap()
}

#[test]
fn signals_are_opt_in_for_embedders() {
    // The program installs its own SIGINT handler and ignores SIGTERM.
    // SAFETY: installing a handler that only touches an atomic, and SIG_IGN.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = own_handler as *const () as usize;
        assert_eq!(libc::sigaction(libc::SIGINT, &act, std::ptr::null_mut()), 0);
        assert_ne!(libc::signal(libc::SIGTERM, libc::SIG_IGN), libc::SIG_ERR);
    }
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGPIPE, libc::SIGHUP];
    let before: Vec<_> = signals.iter().map(|&s| disposition(s)).collect();

    // Without handle_signals: built, run, dropped; nothing changes.
    {
        let mut rt = echo_runtime(false);
        exercise(&mut rt);
        let during: Vec<_> = signals.iter().map(|&s| disposition(s)).collect();
        assert_eq!(during, before, "a runtime changed signal dispositions");
        // The program's own handler still gets SIGINT, and the runtime
        // does not start shutting down.
        // SAFETY: raising a signal whose handler is installed above.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        assert_eq!(OWN_SIGINTS.load(Ordering::SeqCst), 1);
        rt.run_once(Some(Duration::ZERO)).unwrap();
        assert!(!rt.is_shutting_down());
        exercise(&mut rt);
    }
    let after: Vec<_> = signals.iter().map(|&s| disposition(s)).collect();
    assert_eq!(
        after, before,
        "dropping a runtime changed signal dispositions"
    );

    // With handle_signals: loopd's handler is installed (so the check above
    // can see a change), and SIGINT starts a graceful shutdown.
    let mut rt = echo_runtime(true);
    assert_ne!(
        disposition(libc::SIGINT).0,
        before[0].0,
        "handle_signals(true) installed no SIGINT handler"
    );
    exercise(&mut rt);
    // SAFETY: raising a signal whose handler loopd installed.
    assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    while !rt.is_finished() {
        assert!(
            Instant::now() < deadline,
            "SIGINT did not shut the runtime down"
        );
        rt.run_once(Some(Duration::from_millis(20))).unwrap();
    }
    // signal-hook chains to the handler that was there before.
    assert_eq!(OWN_SIGINTS.load(Ordering::SeqCst), 2);
    // SIGPIPE is never touched: loopd writes with MSG_NOSIGNAL.
    assert_eq!(disposition(libc::SIGPIPE), before[2]);
}
