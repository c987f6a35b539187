//! A udp-broadcast relay on a test segment: its config, listeners and
//! senders inside the segment's namespaces, and tcpdump counting the
//! broadcast frames on the bridge. Shared by tests/udp_broadcast_netns.rs
//! and tests/rel_udp_abuse.rs.

use std::net::UdpSocket;

use super::{have_tcpdump, in_ns, receiver, Capture, Segment};

/// The port relays broadcast to, and listeners listen on.
pub const PORT: u16 = 7003;

/// A relay listening on `udp://0.0.0.0:listen_port`, broadcasting to the
/// segment's broadcast address on [`PORT`]; `extra` goes into its
/// `[handler.config]`.
pub fn relay_config(listen_port: u16, extra: &str) -> String {
    format!(
        r#"
[runtime]
shutdown_timeout_ms = 1000

[[handler]]
name = "relay"
plugin = "udp-broadcast"
listen = ["udp://0.0.0.0:{listen_port}"]
broadcast = true
[handler.config]
broadcast_to = ["198.18.0.255:{PORT}"]
{extra}
"#
    )
}

/// A listener on 0.0.0.0:PORT inside the namespace of `role`.
pub fn listener(seg: &Segment, role: &str) -> UdpSocket {
    in_ns(seg.ns(role), || receiver(&format!("0.0.0.0:{PORT}")))
}

/// A sending socket inside the namespace of `role`.
pub fn sender(seg: &Segment, role: &str) -> UdpSocket {
    in_ns(seg.ns(role), || UdpSocket::bind("0.0.0.0:0").unwrap())
}

/// tcpdump counting broadcast frames to PORT on the bridge, if installed
/// (under CI it must be: .ci/run installs it).
pub fn capture(seg: &Segment) -> Option<Capture> {
    if !have_tcpdump() {
        eprintln!(
            "\n!! tcpdump is not installed: frames on the bridge are not counted \
             (listeners still are). .ci/run installs it.\n"
        );
        if std::env::var_os("CI").is_some() {
            panic!("tcpdump is missing under CI");
        }
        return None;
    }
    Some(Capture::start(
        &seg.switch,
        "br0",
        &format!("udp and dst host 198.18.0.255 and dst port {PORT}"),
    ))
}

/// Stops the capture; the number of frames it saw (`None`: no tcpdump, or
/// tcpdump itself lost frames, so its count proves nothing).
pub fn frames(cap: Option<Capture>) -> Option<usize> {
    let (lines, dropped) = cap?.stop();
    if dropped > 0 {
        eprintln!("!! tcpdump lost {dropped} frames: its count is not used");
        return None;
    }
    Some(
        lines
            .iter()
            .filter(|l| l.contains(" > 198.18.0.255."))
            .count(),
    )
}

/// UDP datagrams the kernel of `role`'s namespace dropped so far because a
/// receive buffer was full (`RcvbufErrors` in its /proc/net/snmp).
pub fn udp_rcvbuf_errors(seg: &Segment, role: &str) -> u64 {
    in_ns(seg.ns(role), || {
        // thread-self: /proc/self/net would be the main thread's namespace.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RcvbufErrors")
            .expect("RcvbufErrors in /proc/net/snmp")
            .1
            .parse()
            .unwrap()
    })
}
