//! The udp-broadcast handler on loopback: relaying to the loopback
//! network's broadcast address (1,000 of 1,000, byte-exact), the sender
//! prefix, the size and rate protections, the beacon, config validation, and
//! what happens without `broadcast = true`.

mod common;
mod udp_support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use udp_support::*;

/// A relay on an ephemeral loopback port.
fn relay_config(broadcast: bool, config: &str) -> String {
    build_plugins();
    let so = plugin_dir().join("libloopd_udp_broadcast.so");
    assert!(so.exists(), "{} was not built", so.display());
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 1000

[[handler]]
name = "relay"
plugin = "udp-broadcast"
listen = ["udp://127.0.0.1:0"]
broadcast = {broadcast}
[handler.config]
{config}
"#
    )
}

fn relay_addr(loopd: &Loopd) -> SocketAddr {
    loopd.listeners["relay"][0]
        .strip_prefix("udp://")
        .unwrap()
        .parse()
        .unwrap()
}

/// A receiver on 0.0.0.0 (so it gets broadcasts) on an ephemeral port.
fn broadcast_receiver() -> (UdpSocket, u16) {
    let rx = receiver("0.0.0.0:0");
    let port = rx.local_addr().unwrap().port();
    (rx, port)
}

fn sender(bind: &str) -> UdpSocket {
    UdpSocket::bind(bind).unwrap()
}

#[test]
fn loopback_broadcast_delivers_1000_of_1000_byte_exact() {
    let (rx, port) = broadcast_receiver();
    let loopd = Loopd::start(&relay_config(
        true,
        &format!(
            "broadcast_to = [\"127.255.255.255:{port}\"]\nrate_per_source = 1000000\nburst = 1000000"
        ),
    ));
    let relay = relay_addr(&loopd);
    let (got, count) = collect_counting(rx, b"END", Duration::from_millis(200));
    let tx = sender("127.0.0.1:0");
    // Sizes from 10 to 1472 bytes; paced by the receiver: this is about
    // correctness, not throughput.
    let sent: Vec<Vec<u8>> = (0..1000)
        .map(|i| numbered("lo", i, 10 + (i * 37) % 1463))
        .collect();
    let received = || count.load(std::sync::atomic::Ordering::SeqCst);
    send_windowed(&tx, relay, sent.len(), 50, received, |i| sent[i].clone());
    tx.send_to(b"END", relay).unwrap();
    let got = got.join().unwrap();
    assert_eq!(
        got.len(),
        1001,
        "1,000 datagrams and END, no more, no fewer"
    );
    for (i, g) in got[..1000].iter().enumerate() {
        assert_eq!(g.from, relay, "relayed from the relay's socket");
        assert!(g.data == sent[i], "datagram {i} differs");
    }
    let stats = final_stats(&loopd);
    assert_eq!(stats["relayed"], 1001, "{stats:?}");
    assert_eq!(stats["sent"], 1001, "{stats:?}");
}

#[test]
fn prefix_sender_tags_each_datagram_with_its_sender() {
    let (rx, port) = broadcast_receiver();
    let loopd = Loopd::start(&relay_config(
        true,
        &format!("broadcast_to = \"127.255.255.255:{port}\"\nprefix_sender = true"),
    ));
    let relay = relay_addr(&loopd);
    let tx = sender("127.0.0.1:0");
    let me = tx.local_addr().unwrap();
    rx.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 2048];
    for payload in [&b"hi"[..], b"", b"[not a tag] x"] {
        tx.send_to(payload, relay).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        let mut want = format!("[{me}] ").into_bytes();
        want.extend_from_slice(payload);
        assert_eq!(&buf[..n], &want[..]);
    }
}

/// Issue 20, item 14: with `prefix_sender`, a 1472-byte datagram went out
/// as 1490 bytes, over `max_datagram` (1472). The tag now counts: what would
/// exceed `max_datagram` with it is dropped and counted
/// (`oversize_prefixed`), never truncated, and nothing sent is larger.
#[test]
fn prefix_sender_never_sends_more_than_max_datagram() {
    const MAX: usize = 1472;
    let (rx, port) = broadcast_receiver();
    let loopd = Loopd::start(&relay_config(
        true,
        &format!(
            "broadcast_to = \"127.255.255.255:{port}\"\nprefix_sender = true\n\
             max_datagram = {MAX}\nrate_per_source = 1000000\nburst = 1000000"
        ),
    ));
    let relay = relay_addr(&loopd);
    let tx = sender("127.0.0.1:0");
    let tag = format!("[{}] ", tx.local_addr().unwrap());
    let fit = MAX - tag.len();
    // 40 sizes that fit with the tag, the 17 to 19 that only fit without
    // it (the issue's 1472 among them), and one over max_datagram itself.
    let sizes: Vec<usize> = (fit - 39..=MAX + 1).collect();
    let (got, count) = collect_counting(rx, b"END", Duration::from_millis(200));
    let received = || count.load(std::sync::atomic::Ordering::SeqCst);
    // Paced by what arrived: only the ones that fit come back, so the
    // window counts those.
    for (i, &len) in sizes.iter().enumerate() {
        tx.send_to(&numbered("p", i, len), relay).unwrap();
        let fitting = sizes[..=i].iter().filter(|&&l| l <= fit).count();
        let deadline = Instant::now() + TIMEOUT;
        while received() + 16 < fitting {
            assert!(Instant::now() < deadline, "relay stalled at datagram {i}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    tx.send_to(b"END", relay).unwrap();
    let got = got.join().unwrap();
    let largest = got.iter().map(|g| g.data.len()).max().unwrap_or(0);
    let relayed: Vec<&Got> = got.iter().filter(|g| !g.data.ends_with(b"END")).collect();
    let stats = final_stats(&loopd);
    let want_relayed = sizes.iter().filter(|&&l| l <= fit).count();
    let want_prefixed = sizes.iter().filter(|&&l| l > fit && l <= MAX).count();
    figure("udp_prefix.tag_bytes", tag.len());
    figure("udp_prefix.largest_sent_bytes", largest);
    figure("udp_prefix.max_datagram", MAX);
    figure(
        "udp_prefix.relayed",
        format!("{}/{want_relayed}", relayed.len()),
    );
    figure("udp_prefix.oversize_prefixed", stats["oversize_prefixed"]);
    figure("udp_prefix.oversize", stats["oversize"]);

    assert!(
        largest <= MAX,
        "sent {largest} bytes, over max_datagram {MAX}"
    );
    assert_eq!(relayed.len(), want_relayed, "sizes that fit with the tag");
    for (i, g) in relayed.iter().enumerate() {
        let mut want = tag.clone().into_bytes();
        want.extend_from_slice(&numbered("p", i, sizes[i]));
        assert!(g.data == want, "datagram {i} ({} bytes) differs", sizes[i]);
    }
    assert_eq!(
        stats["oversize_prefixed"], want_prefixed as u64,
        "{stats:?}"
    );
    assert_eq!(stats["oversize"], 1, "{stats:?}");
    assert_eq!(stats["relayed"], want_relayed as u64 + 1, "{stats:?}");
    assert!(
        loopd.logs().contains(&format!(
            "over max_datagram ({MAX} bytes) with the sender's [ip:port] tag in front"
        )),
        "{}",
        loopd.logs()
    );
}

#[test]
fn oversize_and_rate_limited_datagrams_are_dropped_counted_and_logged() {
    let (rx, port) = broadcast_receiver();
    let loopd = Loopd::start(&relay_config(
        true,
        &format!(
            "broadcast_to = [\"127.255.255.255:{port}\"]\nrate_per_source = 5\nburst = 5\nmax_datagram = 100"
        ),
    ));
    let relay = relay_addr(&loopd);
    let got = collect(rx, b"END", Duration::from_millis(200));
    let flooder = sender("127.0.0.1:0");
    // END comes from another address: a bucket of its own.
    let other = sender("127.0.0.2:0");

    let start = Instant::now();
    other.send_to(&[b'x'; 101], relay).unwrap();
    other.send_to(&[b'y'; 100], relay).unwrap();
    for i in 0..50 {
        flooder.send_to(&numbered("f", i, 20), relay).unwrap();
    }
    other.send_to(b"END", relay).unwrap();
    let got = got.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();

    assert_eq!(
        got[0].data,
        vec![b'y'; 100],
        "101 bytes dropped, 100 relayed"
    );
    assert_eq!(got.last().unwrap().data, b"END");
    let flood = got.iter().filter(|g| g.data.starts_with(b"f ")).count();
    // burst 5, then 5 a second: generous bounds, no timing assumption.
    let most = 5 + (5.0 * (elapsed + 1.0)) as usize;
    assert!(
        (5..=most).contains(&flood),
        "{flood} relayed of 50 (at most {most})"
    );

    assert!(
        loopd.wait_for_log("over max_datagram (100 bytes)", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert!(
        loopd.wait_for_log("over rate_per_source (5/s, burst 5)", TIMEOUT),
        "{}",
        loopd.logs()
    );
    let stats = final_stats(&loopd);
    assert_eq!(stats["oversize"], 1, "{stats:?}");
    assert_eq!(stats["rate"], 50 - flood as u64, "{stats:?}");
    assert_eq!(stats["relayed"], flood as u64 + 2, "{stats:?}");
    // Every drop was reported: the per-reason counts in the log add up.
    let logs = loopd.logs();
    let reported: u64 = logs
        .lines()
        .filter(|l| l.contains("[rate]"))
        .map(|l| {
            l.split("dropped ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count in {l}"))
        })
        .sum();
    assert_eq!(reported, stats["rate"], "{logs}");
}

#[test]
fn the_beacon_goes_out_before_any_traffic_then_periodically() {
    let (rx, port) = broadcast_receiver();
    let loopd = Loopd::start(&relay_config(
        true,
        &format!(
            "broadcast_to = \"127.255.255.255:{port}\"\nannounce = \"svc relay here\"\nannounce_interval_ms = 100"
        ),
    ));
    let relay = relay_addr(&loopd);
    rx.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"svc relay here");
        assert_eq!(from, relay);
    }
    let stats = final_stats(&loopd);
    assert!(stats["beacons"] >= 3, "{stats:?}");
    assert_eq!(stats["relayed"], 0, "{stats:?}");
}

#[test]
fn without_the_broadcast_key_sends_fail_with_one_clear_error() {
    let (rx, port) = broadcast_receiver();
    // Two targets: the broadcast address (refused without SO_BROADCAST) and
    // the receiver's unicast address (works): each input arrives once.
    let loopd = Loopd::start(&relay_config(
        false,
        &format!("broadcast_to = [\"127.255.255.255:{port}\", \"127.0.0.1:{port}\"]"),
    ));
    loopd.expect_error("a broadcast address needs SO_BROADCAST");
    let relay = relay_addr(&loopd);
    let got = collect(rx, b"END", Duration::from_millis(200));
    let tx = sender("127.0.0.1:0");
    for i in 0..5 {
        tx.send_to(&numbered("nb", i, 10), relay).unwrap();
    }
    tx.send_to(b"END", relay).unwrap();
    let got = got.join().unwrap();
    assert_eq!(got.len(), 6, "only the unicast copies: {got:?}");
    let needle = "add `broadcast = true` to the [[handler]] entry of `relay`";
    let logs = loopd.logs();
    assert_eq!(logs.matches(needle).count(), 1, "once:\n{logs}");
    let stats = final_stats(&loopd);
    assert_eq!(stats["send_failed"], 6, "{stats:?}");
    assert_eq!(stats["relayed"], 6, "{stats:?}");
}

#[test]
fn config_errors_name_the_key() {
    let dir = TempDir::new("udp-broadcast-config");
    for (config, want) in [
        (
            "broadcast_to = [\"255.255.255.255:7003\"]",
            "broadcast_to[0]: `255.255.255.255:7003`: 255.255.255.255 (the limited broadcast)",
        ),
        (
            "broadcast_to = [\"localhost:7003\"]",
            "broadcast_to[0]: `localhost:7003` is not a numeric ADDR:PORT",
        ),
        ("broadcast_to = []", "broadcast_to: give at least one"),
        ("prefix_sender = true", "missing field `broadcast_to`"),
        (
            "broadcast_to = \"127.255.255.255:7003\"\nrate_per_source = 0",
            "rate_per_source = 0: must be between 1 and 1000000",
        ),
    ] {
        let path = write_config(&dir, &relay_config(true, config));
        let out = run_loopd(&["check", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}: accepted");
        assert!(err.contains(want), "{config}:\n{err}");
        assert!(err.contains("relay"), "names the handler:\n{err}");
    }
    // Allowed explicitly: accepted, with a loud warning.
    let path = write_config(
        &dir,
        &relay_config(
            true,
            "broadcast_to = [\"255.255.255.255:7003\"]\nallow_limited_broadcast = true",
        ),
    );
    let out = run_loopd(&["check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARN") && err.contains("the limited broadcast"),
        "{err}"
    );
}

#[test]
fn the_example_config_is_valid() {
    // The README's demo config: the relay loads and accepts its config.
    let text = std::fs::read_to_string(root().join("examples/loopd.toml")).unwrap();
    assert!(
        text.contains("listen = [\"udp://127.0.0.1:7002\"]"),
        "{text}"
    );
    assert!(
        text.contains("broadcast_to = [\"127.255.255.255:7003\"]"),
        "{text}"
    );
    // From the workspace root, as the README runs it (other handlers in the
    // file use paths relative to it, e.g. the http root).
    let out = run_loopd_in(
        Some(&root()),
        &["check", "examples/loopd.toml"],
        Some("info"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A burst already waiting when the relay wakes is taken by one receive,
/// handed to the relay in one `on_datagrams` call and relayed with one
/// `send_datagrams`, each target's copies together: for two targets, two
/// `sendmmsg` calls (32 datagrams each) of one message each carrying that
/// target's 32 copies (same target, same size: one UDP GSO send with a
/// `UDP_SEGMENT` control message), no `sendto` (seen with strace,
/// attached while loopd is stopped so the burst is sure to be waiting
/// whole). Each receiver still gets 32 datagrams, each whole, in order.
/// The next burst starts with the other target. The `portable` build
/// sends them one `sendto` each.
#[test]
fn a_waiting_burst_is_relayed_with_one_send_per_target() {
    const BURST: usize = 32;
    let probe = std::process::Command::new("strace").arg("-V").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "this test needs strace (apt-get install strace; .ci/test installs it)"
    );
    let rxs = [receiver("127.0.0.1:0"), receiver("127.0.0.1:0")];
    let [p1, p2] = [0, 1].map(|i| rxs[i].local_addr().unwrap().port());
    let loopd = Loopd::start(&relay_config(
        false,
        &format!(
            "broadcast_to = [\"127.0.0.1:{p1}\", \"127.0.0.1:{p2}\"]\nrate_per_source = 1000000\nburst = 1000000"
        ),
    ));
    let relay = relay_addr(&loopd);
    let dir = TempDir::new("burst-strace");
    let trace = dir.join("trace");
    let pid = loopd.pid();
    let mut strace = std::process::Command::new("strace")
        // No signal lines: the SIGSTOP/SIGCONT below would otherwise cut a
        // call's line in two ("<unfinished ...>", "<... resumed>").
        .args([
            "-f",
            "-qq",
            "-v",
            "-e",
            "trace=sendmmsg,sendto",
            "-e",
            "signal=none",
            "-o",
        ])
        .arg(&trace)
        .args(["-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("starting strace");
    // Attached once every thread of loopd names a tracer (root, or
    // ptrace_scope 0: loopd is not strace's child).
    let traced = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !traced() {
        assert!(Instant::now() < deadline, "strace did not attach to {pid}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Two bursts: the second starts with the other target.
    let tx = sender("127.0.0.1:0");
    for burst in 0..2 {
        loopd.signal(libc::SIGSTOP);
        let sent: Vec<Vec<u8>> = (0..BURST)
            .map(|i| numbered(&format!("burst{burst}"), i, 100))
            .collect();
        for d in &sent {
            tx.send_to(d, relay).unwrap();
        }
        loopd.signal(libc::SIGCONT);
        let mut buf = [0u8; 2048];
        for rx in &rxs {
            for (i, want) in sent.iter().enumerate() {
                let n = rx
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("burst {burst}, copy {i}: {e}"));
                assert_eq!(&buf[..n], &want[..], "burst {burst}, copy {i}, in order");
            }
        }
    }
    // The copies arrived, but strace may not have written the last call's
    // line yet: wait for every call to be there whole before detaching.
    let whole = if cfg!(feature = "portable") {
        4 * BURST
    } else {
        4
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| (l.contains("sendmmsg(") || l.contains("sendto(")) && l.contains(") = "))
        .count()
        < whole
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child, strace, which detaches on SIGINT.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sendmmsg(") || l.contains("sendto("))
        .collect();
    if cfg!(feature = "portable") {
        // The POSIX path has no sendmmsg: one sendto per copy.
        let sendtos = calls.iter().filter(|l| l.contains("sendto(")).count();
        assert_eq!(sendtos, 4 * BURST, "{text}");
        assert!(calls.iter().all(|l| !l.contains("sendmmsg(")), "{text}");
        let firsts = [calls[0], calls[2 * BURST]];
        assert!(
            firsts[0].contains(&format!("htons({p1})"))
                && firsts[1].contains(&format!("htons({p2})")),
            "each burst starts with the next target:\n{text}"
        );
    } else {
        assert_eq!(calls.len(), 4, "one send per target and burst:\n{text}");
        let to = |call: &str| {
            [p1, p2]
                .into_iter()
                .position(|p| call.contains(&format!("htons({p})")))
        };
        assert_eq!(
            calls.iter().map(|c| to(c)).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(1), Some(0)],
            "each target's copies together, each burst starting with the next target:\n{text}"
        );
        for call in calls.iter() {
            assert!(
                call.contains("sendmmsg(")
                    && call.contains(&format!("msg_iovlen={BURST},"))
                    && call.contains("cmsg_level=SOL_UDP")
                    && call.trim_end().ends_with("= 1"),
                "not one coalesced message of all {BURST} copies to one target:\n{text}"
            );
        }
        assert!(
            calls.iter().all(|l| !l.contains("sendto(")),
            "a copy went out with its own sendto:\n{text}"
        );
    }
    loopd.assert_no_unexpected_errors();
}

/// A relay with no udp:// listener at all (a stream listener is refused
/// before it starts) relays nothing, and says so once at start; one with
/// an IPv6 target and only IPv4 listeners says that target gets nothing.
#[test]
fn a_relay_that_can_send_nothing_says_so_at_start() {
    let loopd = Loopd::start(
        r#"
[[handler]]
name = "alone"
plugin = "udp-broadcast"
[handler.config]
broadcast_to = "127.0.0.1:9"

[[handler]]
name = "v4"
plugin = "udp-broadcast"
listen = ["udp://127.0.0.1:0"]
[handler.config]
broadcast_to = ["127.0.0.1:9", "[::1]:9"]
"#,
    );
    let none = "alone: no udp:// listener: there is nothing to relay";
    let v6 = "v4: broadcast_to[1] = [::1]:9 is IPv6 but the handler has no IPv6 udp:// listener to send from";
    loopd.expect_error(none);
    loopd.expect_error(v6);
    assert!(loopd.wait_for_log(none, TIMEOUT), "{}", loopd.logs());
    assert!(loopd.wait_for_log(v6, TIMEOUT), "{}", loopd.logs());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(loopd.logs().matches(none).count(), 1, "{}", loopd.logs());
}
