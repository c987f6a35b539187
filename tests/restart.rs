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
