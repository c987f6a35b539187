//! The udp-broadcast handler on a real broadcast segment: network namespaces
//! joined by veth pairs to a bridge on 198.18.0.0/24, made and deleted by
//! the tests themselves (see `udp_support`). Each test runs loopd inside a
//! namespace, sends from others, and counts what arrives at listeners and,
//! with tcpdump, the broadcast frames on the bridge.
//!
//! They need root (CAP_NET_ADMIN). Without it they skip with a loud
//! message; under CI they fail instead.

mod common;
mod udp_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use udp_support::relay_ns::*;
use udp_support::*;

#[test]
fn three_listeners_each_get_1000_of_1000() {
    if !netns_available() {
        return;
    }
    let _serial = serial();
    build_plugins();
    let seg = Segment::new(&[
        ("relay", 1),
        ("l1", 11),
        ("l2", 12),
        ("l3", 13),
        ("inj", 100),
    ]);
    let loopd = loopd_in(
        seg.ns("relay"),
        &relay_config(7002, "rate_per_source = 1000000\nburst = 1000000"),
    );
    let relay_out = SocketAddr::from((seg.host("relay").ip, 7002));
    let (collectors, counts): (Vec<_>, Vec<_>) = ["l1", "l2", "l3"]
        .iter()
        .map(|r| collect_counting(listener(&seg, r), b"END", Duration::from_millis(300)))
        .unzip();
    let tx = sender(&seg, "inj");
    let sent: Vec<Vec<u8>> = (0..1000)
        .map(|i| numbered("seg", i, 16 + (i * 53) % 1400))
        .collect();
    // Paced by the slowest listener: correctness, not throughput.
    let slowest = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .min()
            .unwrap()
    };
    send_windowed(&tx, relay_out, 1000, 50, slowest, |i| sent[i].clone());
    tx.send_to(b"END", relay_out).unwrap();
    for (l, c) in collectors.into_iter().enumerate() {
        let got = c.join().unwrap();
        assert_eq!(got.len(), 1001, "listener l{}: 1,000 and END", l + 1);
        for (i, g) in got[..1000].iter().enumerate() {
            assert_eq!(g.from, relay_out, "listener l{}: sender", l + 1);
            assert!(
                g.data == sent[i],
                "listener l{}: datagram {i} differs",
                l + 1
            );
        }
    }
    let stats = final_stats(&loopd);
    assert_eq!(stats["relayed"], 1001, "{stats:?}");
}

#[test]
fn a_relay_bound_on_the_broadcast_port_never_rebroadcasts_its_own_output() {
    if !netns_available() {
        return;
    }
    let _serial = serial();
    build_plugins();
    let seg = Segment::new(&[("relay", 1), ("l1", 11), ("inj", 100)]);
    // The relay listens where it broadcasts: every output comes back to it.
    let loopd = loopd_in(
        seg.ns("relay"),
        &relay_config(PORT, "rate_per_source = 1000000\nburst = 1000000"),
    );
    let relay = SocketAddr::from((seg.host("relay").ip, PORT));
    let cap = capture(&seg);
    let (got, count) = collect_counting(listener(&seg, "l1"), b"END", Duration::from_millis(500));
    let tx = sender(&seg, "inj");
    let received = || count.load(Ordering::SeqCst);
    send_windowed(&tx, relay, 1000, 50, received, |i| numbered("own", i, 64));
    tx.send_to(b"END", relay).unwrap();
    let got = got.join().unwrap();
    // Exactly one output per input.
    assert_eq!(got.len(), 1001, "listener: 1,000 and END");
    for (i, g) in got[..1000].iter().enumerate() {
        assert_eq!(g.data, numbered("own", i, 64), "datagram {i}");
        assert_eq!(g.from, relay);
    }
    if let Some(n) = frames(cap) {
        assert_eq!(n, 1001, "broadcast frames on the bridge");
    }
    let stats = final_stats(&loopd);
    assert_eq!(stats["relayed"], 1001, "{stats:?}");
    // Every output did come back, and was recognised as ours.
    assert_eq!(stats["own"], 1001, "{stats:?}");
    assert_eq!(stats["echo"] + stats["rate"], 0, "{stats:?}");
}

#[test]
fn two_relays_on_one_segment_do_not_storm() {
    if !netns_available() {
        return;
    }
    let _serial = serial();
    build_plugins();
    let seg = Segment::new(&[("a", 1), ("b", 2), ("l1", 11), ("inj", 100)]);
    // Both listen on the port both broadcast to, with the default limits.
    let relay_a = loopd_in(seg.ns("a"), &relay_config(PORT, ""));
    let relay_b = loopd_in(seg.ns("b"), &relay_config(PORT, ""));
    let cap = capture(&seg);
    // Everything that arrives within 2 s of the first copy.
    let got = collect(listener(&seg, "l1"), b"storm?", Duration::from_secs(2));
    let tx = sender(&seg, "inj");
    tx.send_to(b"storm?", SocketAddr::from((seg.host("a").ip, PORT)))
        .unwrap();
    let got = got.join().unwrap();
    let froms: Vec<SocketAddr> = got.iter().map(|g| g.from).collect();
    // A relays the datagram, B relays A's copy, A recognises B's copy as an
    // echo: two frames, and nothing after that.
    assert_eq!(
        froms,
        vec![
            SocketAddr::from((seg.host("a").ip, PORT)),
            SocketAddr::from((seg.host("b").ip, PORT)),
        ],
        "{got:?}"
    );
    assert!(got.iter().all(|g| g.data == b"storm?"));
    if let Some(n) = frames(cap) {
        assert_eq!(n, 2, "broadcast frames on the bridge");
    }
    let a = final_stats(&relay_a);
    let b = final_stats(&relay_b);
    assert_eq!((a["relayed"], b["relayed"]), (1, 1), "{a:?} {b:?}");
    assert_eq!(a["echo"], 1, "A dropped B's copy as an echo: {a:?}");
    assert_eq!((a["own"], b["own"]), (1, 1), "{a:?} {b:?}");
}

#[test]
fn a_flood_from_one_source_is_capped_at_the_configured_rate() {
    if !netns_available() {
        return;
    }
    let _serial = serial();
    build_plugins();
    let seg = Segment::new(&[("relay", 1), ("l1", 11), ("inj", 100), ("inj2", 101)]);
    // The defaults: 100 datagrams a second per source, bursts of 200.
    let loopd = loopd_in(seg.ns("relay"), &relay_config(7002, ""));
    let started = Instant::now();
    let relay = SocketAddr::from((seg.host("relay").ip, 7002));
    let got = collect(listener(&seg, "l1"), b"END", Duration::from_millis(300));
    let tx = sender(&seg, "inj");
    let t0 = Instant::now();
    send_paced(&tx, relay, 20_000, 200, Duration::from_millis(1), |i| {
        numbered("flood", i, 64)
    });
    // END from another source: a bucket of its own, never rate limited here.
    sender(&seg, "inj2").send_to(b"END", relay).unwrap();
    let got = got.join().unwrap();
    let elapsed = t0.elapsed().as_secs_f64();
    assert_eq!(got.last().map(|g| &g.data[..]), Some(&b"END"[..]));
    let relayed = got.iter().filter(|g| g.data.starts_with(b"flood ")).count();
    let most = 200 + (100.0 * (elapsed + 1.0)) as usize;
    eprintln!("flood: {relayed} of 20000 relayed in {elapsed:.2} s (bound {most})");
    assert!(
        (200..=most).contains(&relayed),
        "{relayed} relayed in {elapsed:.2} s; expected between the burst (200) and {most}"
    );
    // Relayed in order, none twice.
    let mut last = None;
    for g in got.iter().filter(|g| g.data.starts_with(b"flood ")) {
        let n: usize = std::str::from_utf8(&g.data[6..12])
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            last < Some(n),
            "out of order or duplicated: {n} after {last:?}"
        );
        last = Some(n);
    }
    let stats = final_stats(&loopd);
    let lived = started.elapsed().as_secs_f64();
    assert_eq!(stats["relayed"], relayed as u64 + 1, "{stats:?}");
    assert!(stats["rate"] > 0, "{stats:?}");
    assert!(stats["relayed"] + stats["rate"] <= 20_001, "{stats:?}");
    // Rate drops were logged, at most once a second (plus the final flush).
    let logs = loopd.logs();
    let lines = logs.lines().filter(|l| l.contains("[rate]")).count();
    assert!(lines >= 1, "{logs}");
    assert!(
        lines as f64 <= lived.ceil() + 2.0,
        "{lines} rate messages in {lived:.1} s:\n{logs}"
    );
}
