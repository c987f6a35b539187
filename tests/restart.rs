//! Restarting on the same port right after connections closed: the
//! listener sets SO_REUSEADDR, so TIME_WAIT sockets do not block the bind.

mod common;

use common::*;

#[test]
fn restart_rebinds_a_port_with_connections_in_time_wait() {
    let first = Loopd::start(&probe_config(""));
    let addr = first.tcp("probe");
    // The server closes first, so its side of each connection is left in TIME_WAIT.
    for _ in 0..3 {
        let mut c = LineClient::connect(addr);
        c.send("close");
        assert_eq!(c.read_to_eof(), "bye\n");
    }
    assert!(first.wait_for_logs("probe: closed", 3, TIMEOUT));
    first.signal(libc::SIGTERM);
    let mut first = first;
    assert!(first.wait_exit(TIMEOUT).success());

    let config = probe_config("").replace("tcp://127.0.0.1:0", &format!("tcp://{addr}"));
    let second = Loopd::start(&config);
    assert_eq!(second.tcp("probe"), addr);
    let mut c = LineClient::connect(addr);
    assert_eq!(c.cmd("echo again"), "again");
}

/// `[::]:P` is IPv6-only (as in nginx), so `0.0.0.0:P` can be listened on
/// beside it: each family gets its own socket.
#[test]
fn ipv4_and_ipv6_wildcards_on_one_port_coexist() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("NOTE: no IPv6 on this machine; skipping the dual-stack test");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://0.0.0.0:{port}\", \"tcp://[::]:{port}\"]\n\n[[handler]]\nname = \"udp\"\nplugin = \"probe\"\nlisten = [\"udp://0.0.0.0:{port}\", \"udp://[::]:{port}\"]\n"
    );
    let loopd = Loopd::start(&config);
    assert_eq!(loopd.listeners["echo"].len(), 2);
    assert_eq!(loopd.listeners["udp"].len(), 2);
    let v4 = echo_roundtrip(
        tcp(format!("127.0.0.1:{port}").parse().unwrap()),
        b"over v4",
    );
    assert_eq!(v4, b"over v4");
    let v6 = echo_roundtrip(tcp(format!("[::1]:{port}").parse().unwrap()), b"over v6");
    assert_eq!(v6, b"over v6");
}
