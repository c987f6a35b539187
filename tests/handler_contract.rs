//! The handler contract, driven from outside through the probe handler:
//! panics are contained, stale ids are refused, hooks never nest, timers,
//! outbound connects, per-instance isolation, on_close exactly once.

mod common;

use std::time::Duration;

use common::*;

fn parse_id(reply: &str, prefix: &str) -> u64 {
    reply
        .strip_prefix(prefix)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected `{prefix}<id>`, got `{reply}`"))
}

fn stats(c: &mut LineClient) -> String {
    let s = c.cmd("stats");
    assert!(s.starts_with("stats "), "{s}");
    s
}

fn stat(line: &str, key: &str) -> String {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in `{line}`"))
        .to_string()
}

/// The harness itself: an error-level line the test did not declare with
/// `expect_error` fails the test when loopd is dropped.
#[test]
#[should_panic(expected = "unexpected error line")]
fn an_undeclared_error_line_fails_the_test() {
    let loopd = Loopd::start(&probe_config(""));
    let mut victim = LineClient::connect(loopd.tcp("probe"));
    victim.send("panic");
    assert_eq!(victim.read_to_eof(), "");
    assert!(loopd.wait_for_log("panic in on_data", TIMEOUT));
    drop(loopd);
}

#[test]
fn a_panic_in_on_data_closes_only_that_connection() {
    let loopd = Loopd::start(&probe_config(""));
    loopd.expect_error("panic in on_data: probe: panic on request");
    let mut bystander = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(bystander.cmd("echo before"), "before");

    let mut victim = LineClient::connect(loopd.tcp("probe"));
    victim.send("panic");
    assert_eq!(
        victim.read_to_eof(),
        "",
        "the panicking connection is closed"
    );
    assert!(
        loopd.wait_for_log("panic in on_data: probe: panic on request", TIMEOUT),
        "{}",
        loopd.logs()
    );
    assert!(
        loopd.wait_for_log("on_data failed on connection", TIMEOUT),
        "{}",
        loopd.logs()
    );

    assert_eq!(bystander.cmd("echo after"), "after");
    let mut newcomer = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(newcomer.cmd("echo new"), "new");
    let s = stats(&mut newcomer);
    assert_eq!(stat(&s, "violations"), "0");
}

#[test]
fn a_stale_id_after_slot_reuse_gets_no_such_conn() {
    let loopd = Loopd::start(&probe_config(""));
    let mut control = LineClient::connect(loopd.tcp("probe"));
    let control_id = parse_id(&control.cmd("id"), "id ");

    let mut a = LineClient::connect(loopd.tcp("probe"));
    let a_id = parse_id(&a.cmd("id"), "id ");
    drop(a);
    assert!(
        loopd.wait_for_log(&format!("connection {a_id} closed"), TIMEOUT),
        "{}",
        loopd.logs()
    );

    let mut b = LineClient::connect(loopd.tcp("probe"));
    let b_id = parse_id(&b.cmd("id"), "id ");
    assert_ne!(control_id, a_id);
    assert_eq!(
        a_id & 0xffff_ffff,
        b_id & 0xffff_ffff,
        "the slot was reused (precondition)"
    );
    assert_ne!(a_id, b_id, "a reused slot gets a new generation");

    assert_eq!(control.cmd(&format!("send {a_id} not-for-you")), "send -2");
    assert_eq!(control.cmd(&format!("send {b_id} for-b")), "send ok");
    assert_eq!(b.recv(), "for-b", "b gets only what was sent to its own id");
    assert_eq!(control.cmd("send 0 x"), "send -2", "0 is never a valid id");
}

#[test]
fn close_from_inside_a_hook_is_deferred_and_hooks_never_nest() {
    let loopd = Loopd::start(&probe_config(""));
    let mut a = LineClient::connect(loopd.tcp("probe"));
    a.send("close-then-send");
    assert_eq!(a.read_to_eof(), "");
    assert!(
        loopd.wait_for_log("probe: send after close -> -3", TIMEOUT),
        "{}",
        loopd.logs()
    );

    let mut c = LineClient::connect(loopd.tcp("probe"));
    let s = stats(&mut c);
    assert_eq!(
        stat(&s, "last_send_after_close"),
        "-3",
        "send after close is CLOSED"
    );
    assert_eq!(
        stat(&s, "violations"),
        "0",
        "no hook ran inside another: {s}"
    );
}

#[test]
fn on_close_comes_exactly_once_per_connection() {
    let loopd = Loopd::start(&probe_config(""));
    for i in 0..20 {
        let mut c = LineClient::connect(loopd.tcp("probe"));
        match i % 4 {
            0 => drop(c),
            1 => {
                c.send("close");
                assert_eq!(c.read_to_eof(), "bye\n");
            }
            2 => {
                c.send("abort");
                assert_eq!(c.read_to_eof(), "");
            }
            _ => {
                c.stream().shutdown(std::net::Shutdown::Write).unwrap();
                assert_eq!(c.read_to_eof(), "");
            }
        }
    }
    assert!(
        loopd.wait_for_logs("probe: closed", 20, TIMEOUT),
        "{}",
        loopd.logs()
    );
    let mut c = LineClient::connect(loopd.tcp("probe"));
    let s = stats(&mut c);
    assert_eq!(stat(&s, "opens"), "21", "{s}");
    assert_eq!(stat(&s, "closes"), "20", "{s}");
    assert_eq!(stat(&s, "open"), "1", "{s}");
}

#[test]
fn timers_fire_in_deadline_order_and_cancel() {
    let loopd = Loopd::start(&probe_config(""));
    let mut c = LineClient::connect(loopd.tcp("probe"));
    assert!(c.cmd("timer 150 late").starts_with("timer-set "));
    assert!(c.cmd("timer 10 early").starts_with("timer-set "));
    let cancelled = parse_id(&c.cmd("timer 100 cancelled"), "timer-set ");
    assert_eq!(c.cmd(&format!("cancel {cancelled}")), "cancel ok");
    assert_eq!(
        c.cmd(&format!("cancel {cancelled}")),
        "cancel -9",
        "a cancelled timer is gone"
    );
    assert_eq!(c.recv(), "timer early");
    assert_eq!(c.recv(), "timer late", "the cancelled timer never fires");

    let t0 = parse_id(&c.cmd("now"), "now ");
    std::thread::sleep(Duration::from_millis(20));
    let t1 = parse_id(&c.cmd("now"), "now ");
    assert!(
        t1 >= t0 + 20,
        "now_ms is monotonic milliseconds: {t0} then {t1}"
    );
}

#[test]
fn outbound_connect_reaches_another_handler_and_failures_are_reported() {
    let config = format!(
        "{}\n[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:0\"]\n",
        probe_config("")
    );
    let loopd = Loopd::start(&config);
    let echo = loopd.tcp("echo");
    let mut c = LineClient::connect(loopd.tcp("probe"));

    let out = parse_id(&c.cmd(&format!("connect tcp://{echo}")), "connecting ");
    assert_eq!(c.recv(), format!("connected {out}"));
    // The probe greets the echo server, which echoes; the probe forwards it.
    assert_eq!(c.recv(), format!("from {out} hello from probe"));

    // A port nothing listens on (just released): refused asynchronously.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = parse_id(&c.cmd(&format!("connect tcp://{closed}")), "connecting ");
    assert_eq!(c.recv(), format!("connect-failed {refused}"));
    // A unix path with no listener fails at once, but still via on_close.
    let missing = format!("unix://{}/nobody.sock", loopd.dir.path().display());
    let gone = parse_id(&c.cmd(&format!("connect {missing}")), "connecting ");
    assert_eq!(c.recv(), format!("connect-failed {gone}"));
    // Malformed and non-numeric targets are refused synchronously.
    assert_eq!(c.cmd("connect nonsense"), "connect -4");
    assert_eq!(c.cmd("connect tcp://localhost:80"), "connect -4");

    let s = stats(&mut c);
    assert_eq!(stat(&s, "violations"), "0");
}

#[test]
fn an_instance_cannot_touch_another_instances_connections() {
    let config = format!(
        "{}\n[[handler]]\nname = \"other\"\nplugin = \"probe\"\nlisten = [\"tcp://127.0.0.1:0\"]\n",
        probe_config("")
    );
    let loopd = Loopd::start(&config);
    let mut mine = LineClient::connect(loopd.tcp("probe"));
    let mut theirs = LineClient::connect(loopd.tcp("other"));
    let their_id = parse_id(&theirs.cmd("id"), "id ");
    assert_eq!(mine.cmd(&format!("send {their_id} hijack")), "send -2");
    assert_eq!(theirs.cmd("echo still-mine"), "still-mine");
    let timer = parse_id(&theirs.cmd("timer 60000 far"), "timer-set ");
    assert_eq!(
        mine.cmd(&format!("cancel {timer}")),
        "cancel -9",
        "timers are per instance"
    );
}

#[test]
fn greeting_from_config_and_shutdown_notice() {
    let loopd = Loopd::start(&probe_config("[handler.config]\ngreeting = \"welcome\"\n"));
    let mut c = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(c.recv(), "welcome", "config reached create() as JSON");
    loopd.signal(libc::SIGTERM);
    assert_eq!(c.recv(), "shutdown", "on_shutdown ran");
    drop(c);
    let mut loopd = loopd;
    assert!(loopd.wait_exit(TIMEOUT).success());
}

#[test]
fn on_listen_reports_every_listener_before_traffic() {
    let config = probe_config("").replace(
        "listen = [\"tcp://127.0.0.1:0\"]",
        "listen = [\"tcp://127.0.0.1:0\", \"unix://{dir}/p.sock\", \"udp://127.0.0.1:0\"]",
    );
    let loopd = Loopd::start(&config);
    let urls = loopd.listeners.get("probe").unwrap().clone();
    assert_eq!(urls.len(), 3, "{urls:?}");
    let mut c = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(
        c.cmd("listeners"),
        format!("listeners {}", urls.join(" ")),
        "the real bound URLs (port 0 resolved), in config order"
    );
}

#[test]
fn log_to_uses_the_given_target() {
    let loopd = Loopd::start(&probe_config(""));
    loopd.expect_error("panic in on_data: probe: panic on request");
    let mut c = LineClient::connect(loopd.tcp("probe"));
    assert_eq!(c.cmd("log-to loopd::access GET / 200"), "logged");
    assert!(
        loopd.wait_for_log("INFO  loopd::access] GET / 200", TIMEOUT),
        "{}",
        loopd.logs()
    );
    // The ordinary log goes under the instance's own target.
    c.send("panic");
    assert!(loopd.wait_for_log("loopd::handler::probe] panic in on_data", TIMEOUT));
}
