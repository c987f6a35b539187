//! UDP in the runtime, driven through the udp-probe fixture: IPv4 and IPv6
//! listeners, whole datagrams with their sender, datagrams over max_frame
//! dropped whole, datagrams that queue up while a batch is handled all
//! delivered in order, send_datagram from on_listen / on_data / on_timer,
//! SO_BROADCAST only with `broadcast = true`, and a full kernel send buffer
//! (made real with a throttled interface in a namespace) dropping and
//! counting instead of queueing.

mod common;
mod udp_support;

use std::net::{SocketAddr, UdpSocket};

use common::*;
use udp_support::*;

/// FNV-1a 64, as the probe computes it.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The UDP listeners of `handler`, as loopd logged them.
fn udp_addrs(loopd: &Loopd, handler: &str) -> Vec<SocketAddr> {
    loopd.listeners[handler]
        .iter()
        .filter_map(|u| u.strip_prefix("udp://"))
        .map(|a| a.parse().unwrap())
        .collect()
}

fn udp_plugin_built() {
    build_plugins();
    let so = plugin_dir().join("libloopd_udp_probe.so");
    assert!(so.exists(), "{} was not built", so.display());
}

/// A client socket with a read timeout.
fn client(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn recv_text(s: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = s.recv_from(&mut buf).expect("waiting for a datagram");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

fn probe_config(listen: &str, extra: &str) -> String {
    udp_plugin_built();
    format!(
        r#"
[[handler]]
name = "udp-probe"
plugin = "udp-probe"
listen = [{listen}]
{extra}
"#
    )
}

#[test]
fn datagrams_arrive_whole_with_their_sender_over_ipv4_and_ipv6() {
    let loopd = Loopd::start(&probe_config(r#""udp://127.0.0.1:0", "udp://[::1]:0""#, ""));
    let addrs = udp_addrs(&loopd, "udp-probe");
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let mut sockets = Vec::new();
    for (addr, bind, largest) in [
        (addrs[0], "127.0.0.1:0", 65_507),
        (addrs[1], "[::1]:0", 65_527),
    ] {
        assert_eq!(addr.is_ipv4(), bind.starts_with("127"));
        let c = client(bind);
        for (i, size) in [0, 1, 100, 1472, 9000, largest].into_iter().enumerate() {
            let data = pattern(size, i as u8);
            c.send_to(&data, addr).unwrap();
            let (reply, from) = recv_text(&c);
            assert_eq!(from, addr, "the reply comes from the socket it was sent to");
            let fields: Vec<&str> = reply.split(' ').collect();
            assert_eq!(fields[0], format!("len={size}"), "{reply}");
            assert_eq!(fields[1], format!("fnv={:016x}", fnv1a(&data)), "{reply}");
            assert_eq!(
                fields[2],
                format!("from={}", c.local_addr().unwrap()),
                "the sender's address is delivered: {reply}"
            );
            sockets.push(fields[3].to_string());
        }
    }
    sockets.dedup();
    assert_eq!(sockets.len(), 2, "two sockets, two ids: {sockets:?}");
}

/// Datagrams sent in windows of 48 queue up at loopd's socket while it
/// handles (and answers) earlier ones: the batch receive and the receive
/// again after a drained batch must hand every one to the handler once, in
/// order, and whole; one over max_frame in each window is dropped without
/// shifting the others.
#[test]
fn datagrams_queued_while_a_batch_is_handled_all_arrive_in_order() {
    let loopd = Loopd::start(&probe_config(r#""udp://127.0.0.1:0""#, "max_frame = 1500"));
    let addr = udp_addrs(&loopd, "udp-probe")[0];
    let c = client("127.0.0.1:0");
    const WINDOWS: usize = 60;
    const PER_WINDOW: usize = 48;
    let mut sent = Vec::new();
    for w in 0..WINDOWS {
        let mut expect = Vec::new();
        for i in 0..PER_WINDOW {
            let n = w * PER_WINDOW + i;
            // One 1600-byte datagram per window: over max_frame, dropped.
            let size = if i == 17 { 1600 } else { 8 + n % 700 };
            let mut data = pattern(size, n as u8);
            data[..8].copy_from_slice(&(n as u64).to_be_bytes());
            c.send_to(&data, addr).unwrap();
            if size <= 1500 {
                expect.push(format!("len={size} fnv={:016x}", fnv1a(&data)));
            }
        }
        for want in &expect {
            let (reply, _) = recv_text(&c);
            assert!(
                reply.starts_with(want.as_str()),
                "window {w}: expected `{want}`, got `{reply}`"
            );
        }
        sent.extend(expect);
    }
    assert_eq!(sent.len(), WINDOWS * (PER_WINDOW - 1));
    // Nothing more: no datagram was delivered twice.
    c.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(c.recv_from(&mut buf).is_err(), "an extra reply arrived");
}

#[test]
fn a_datagram_over_max_frame_is_dropped_whole_and_logged() {
    let loopd = Loopd::start(&probe_config(r#""udp://127.0.0.1:0""#, "max_frame = 100"));
    let addr = udp_addrs(&loopd, "udp-probe")[0];
    let c = client("127.0.0.1:0");
    c.send_to(&pattern(101, 1), addr).unwrap();
    c.send_to(&pattern(5000, 2), addr).unwrap();
    let fits = pattern(100, 3);
    c.send_to(&fits, addr).unwrap();
    // The first reply is for the datagram that fit: nothing of the others
    // was delivered, not even cut short.
    let (reply, _) = recv_text(&c);
    assert!(
        reply.starts_with(&format!("len=100 fnv={:016x} ", fnv1a(&fits))),
        "{reply}"
    );
    assert!(
        loopd.wait_for_log("dropped a datagram of 101 bytes from 127.0.0.1:", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert!(
        loopd.logs().contains("over max_frame (100 bytes)"),
        "{}",
        loopd.logs()
    );
}

#[test]
fn send_datagram_works_from_on_listen_on_data_and_on_timer() {
    let rx = client("127.0.0.1:0");
    let rx_addr = rx.local_addr().unwrap();
    let loopd = Loopd::start(&probe_config(
        r#""udp://127.0.0.1:0", "tcp://127.0.0.1:0""#,
        &format!("[handler.config]\nhello_to = \"{rx_addr}\""),
    ));
    let udp = udp_addrs(&loopd, "udp-probe")[0];

    // on_listen: before any traffic.
    let (hello, from) = recv_text(&rx);
    assert_eq!(hello, format!("hello udp://{udp}"));
    assert_eq!(from, udp);

    let mut c = LineClient::connect(loopd.tcp("udp-probe"));
    // on_data.
    assert_eq!(c.cmd(&format!("udp {rx_addr} from on_data")), "udp ok");
    assert_eq!(recv_text(&rx), ("from on_data".to_string(), udp));
    // on_timer.
    assert_eq!(
        c.cmd(&format!("udp-timer 20 {rx_addr} from on_timer")),
        "timer-set"
    );
    assert_eq!(c.recv(), "udp-timer ok");
    assert_eq!(recv_text(&rx), ("from on_timer".to_string(), udp));
    // A bad destination is refused, not sent.
    assert_eq!(c.cmd("udp 127.0.0.1:0 port zero"), "udp -7");
}

/// `send_datagrams` sends every datagram of a call in order, and one that
/// fails (an IPv6 address from an IPv4 socket) costs only itself.
#[test]
fn send_datagrams_sends_in_order_and_tells_each_ones_fate() {
    udp_plugin_built();
    let loopd = Loopd::start(&probe_config(r#""udp://127.0.0.1:0""#, ""));
    let addr = udp_addrs(&loopd, "udp-probe")[0];
    let c = client("127.0.0.1:0");
    let (a, b) = (client("127.0.0.1:0"), client("127.0.0.1:0"));
    let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    c.send_to(format!("!batch {pa},[::1]:9,{pb},{pa} hi").as_bytes(), addr)
        .unwrap();
    let (reply, _) = recv_text(&c);
    let io = loopd_handler_api::abi::LOOPD_ERR_IO;
    assert_eq!(reply, format!("batch {io} sent=3 ok,{io},ok,ok"));
    assert_eq!(recv_text(&a).0, "0 hi");
    assert_eq!(recv_text(&a).0, "3 hi");
    assert_eq!(recv_text(&b).0, "2 hi");
    loopd.assert_no_unexpected_errors();
}

#[test]
fn broadcast_needs_the_broadcast_key_and_says_so_once() {
    let rx = client("0.0.0.0:0");
    let port = rx.local_addr().unwrap().port();
    let marker_to = SocketAddr::from(([127, 0, 0, 1], port));
    let bcast = format!("127.255.255.255:{port}");

    // Without `broadcast = true`: LOOPD_ERR_IO, and one clear error.
    let loopd = Loopd::start(&probe_config(
        r#""udp://127.0.0.1:0", "tcp://127.0.0.1:0""#,
        "",
    ));
    loopd.expect_error("a broadcast address needs SO_BROADCAST");
    let mut c = LineClient::connect(loopd.tcp("udp-probe"));
    for _ in 0..3 {
        assert_eq!(c.cmd(&format!("udp {bcast} refused")), "udp -7");
    }
    assert_eq!(c.cmd(&format!("udp {marker_to} marker")), "udp ok");
    assert_eq!(
        recv_text(&rx).0,
        "marker",
        "nothing went to the broadcast address before the marker"
    );
    let needle = "add `broadcast = true` to the [[handler]] entry of `udp-probe`";
    assert!(loopd.wait_for_log(needle, TIMEOUT), "{}", loopd.logs());
    let logs = loopd.logs();
    assert_eq!(logs.matches(needle).count(), 1, "logged once:\n{logs}");
    drop(loopd);

    // With it: delivered to a socket bound on the wildcard address.
    let loopd = Loopd::start(&probe_config(
        r#""udp://127.0.0.1:0", "tcp://127.0.0.1:0""#,
        "broadcast = true",
    ));
    let udp = udp_addrs(&loopd, "udp-probe")[0];
    let mut c = LineClient::connect(loopd.tcp("udp-probe"));
    assert_eq!(c.cmd(&format!("udp {bcast} to everyone")), "udp ok");
    assert_eq!(recv_text(&rx), ("to everyone".to_string(), udp));
    assert!(
        !loopd.logs().contains("broadcast = true"),
        "{}",
        loopd.logs()
    );
}

#[test]
fn the_broadcast_key_is_refused_without_a_udp_listener() {
    let dir = TempDir::new("udp-config");
    let path = write_config(
        &dir,
        &probe_config(r#""tcp://127.0.0.1:0""#, "broadcast = true"),
    );
    let out = run_loopd(&["check", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("handler[0].broadcast: only applies to udp:// listeners"),
        "{err}"
    );
}

/// A full send buffer is made real: loopd runs in a namespace whose only
/// route out is a veth with a token bucket filter at 8 bits per second, so
/// the kernel holds every datagram queued against the socket's send buffer
/// until it is full. Commands and replies travel over loopback, untouched.
#[test]
fn a_full_send_buffer_drops_and_counts_never_queues() {
    full_send_buffer(false);
}

/// The same with `send_datagrams`: 64 datagrams a call, one `sendmmsg`
/// each; where the buffer fills, that datagram and the rest of its batch
/// are dropped, counted and told (AGAIN), and the next call tries again.
#[test]
fn a_full_send_buffer_drops_the_rest_of_a_batch_and_counts_it() {
    full_send_buffer(true);
}

fn full_send_buffer(batched: bool) {
    if !netns_available() {
        return;
    }
    let _serial = serial();
    udp_plugin_built();
    let seg = Segment::new(&[("loopd", 1), ("sink", 2)]);
    let ns = seg.ns("loopd").to_string();
    run(
        "tc",
        &[
            "-n",
            &ns,
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            "8bit",
            "burst",
            "1600",
            "limit",
            "100000000",
        ],
    )
    .unwrap();
    // Commands and replies on the first socket; the flood from the second.
    let loopd = loopd_in(
        &ns,
        &probe_config(r#""udp://0.0.0.0:0", "udp://0.0.0.0:0""#, ""),
    );
    let port = udp_addrs(&loopd, "udp-probe")[0].port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let c = in_ns(&ns, || client("127.0.0.1:0"));
    let sink = SocketAddr::from((seg.host("sink").ip, 9));

    let cmd = if batched { "!flood-batch" } else { "!flood" };
    c.send_to(format!("{cmd} {sink} 1000 2000").as_bytes(), addr)
        .unwrap();
    let (reply, _) = recv_text(&c);
    if batched {
        assert!(reply.contains(" calls=32"), "2000 in calls of 64: {reply}");
    }
    let count = |key: &str| -> u64 {
        reply
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in `{reply}`"))
    };
    let (ok, again) = (count("ok"), count("again"));
    assert!(ok > 0, "some fit in the send buffer: {reply}");
    assert!(again > 0, "the rest was refused with AGAIN: {reply}");
    assert_eq!(ok + again, 2000, "every datagram sent or refused: {reply}");
    assert_eq!((count("io"), count("other")), (0, 0), "{reply}");
    assert!(
        loopd.wait_for_log("kernel send buffer full", TIMEOUT),
        "{}",
        loopd.logs()
    );
    // Warned at most once a second, with the count so far.
    let logs = loopd.logs();
    assert!(
        logs.matches("kernel send buffer full").count() <= 3,
        "{logs}"
    );
    // A batch that meets a full buffer before its last datagram loses the
    // rest of it ("N datagrams of a batch"); one that meets it at its last,
    // just that one.
    assert!(
        logs.contains("dropped a datagram to 198.18.0.2:9; ")
            || (batched && logs.contains("datagrams of a batch, the first to 198.18.0.2:9; ")),
        "{logs}"
    );

    // The loop was not blocked: the socket still answers (over loopback).
    c.send_to(b"still there?", addr).unwrap();
    assert!(recv_text(&c).0.starts_with("len=12 "));

    // The count is reported when the socket closes.
    loopd.signal(libc::SIGTERM);
    assert!(
        loopd.wait_for_log(&format!("{again} datagrams dropped on send"), TIMEOUT),
        "{}",
        loopd.logs()
    );
}
