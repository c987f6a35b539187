//! The status handler: `/metrics` counts exactly the traffic an echo
//! instance saw, promtool accepts it, headless Chromium renders the live
//! page with the numbers, and bad requests get 400, 404 and 405.
//!
//! Needs Debian's `prometheus` (promtool) and `chromium` (`.ci/test`
//! installs them).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]
framing = "line"

[[handler]]
name = "status"
plugin = "status"
listen = ["tcp://127.0.0.1:0"]
"#;

/// Sends `request` and reads the whole response (the handler closes).
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = tcp(addr);
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (code, head.to_string(), body.to_string())
}

fn metrics(addr: SocketAddr) -> String {
    let (code, head, body) = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// The value of the sample `series` (name and labels as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `ok` holds (snapshots are at most 100 ms old),
/// bounded in time; returns the last text.
fn metrics_until(addr: SocketAddr, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = metrics(addr);
        if ok(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three echo connections, 40 lines in all, two of them closed.
fn traffic(echo: SocketAddr) -> (u64, u64, std::net::TcpStream) {
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut conns = Vec::new();
    for c in 0..3 {
        let mut s = tcp(echo);
        let mut r = BufReader::new(s.try_clone().unwrap());
        for i in 0..(10 + 5 * c) {
            let line = format!("connection {c} line {i}\n");
            s.write_all(line.as_bytes()).unwrap();
            let mut back = String::new();
            r.read_line(&mut back).unwrap();
            assert_eq!(back, line);
            bytes += line.len() as u64;
            lines += 1;
        }
        conns.push(s);
    }
    // Two close; their EOF closes them as "peer".
    conns.truncate(1);
    (bytes, lines, conns.pop().unwrap())
}

#[test]
fn metrics_count_echo_traffic_exactly() {
    let loopd = Loopd::start(CONFIG);
    let status = loopd.tcp("status");
    let (bytes, lines, _open) = traffic(loopd.tcp("echo"));
    assert_eq!(lines, 45);
    let echo = "{handler=\"echo\"}";
    let want = |t: &str| {
        sample(t, &format!("loopd_connections_active{echo}")) == Some(1.0)
            && sample(
                t,
                "loopd_connections_closed_total{handler=\"echo\",reason=\"peer\"}",
            ) == Some(2.0)
            && sample(t, &format!("loopd_sent_bytes_total{echo}")) == Some(bytes as f64)
    };
    let text = metrics_until(status, want);
    assert!(want(&text), "{text}");
    let accepted = format!(
        "loopd_connections_accepted_total{{handler=\"echo\",listener=\"tcp://{}\"}}",
        loopd.tcp("echo")
    );
    assert_eq!(sample(&text, &accepted), Some(3.0), "{text}");
    assert_eq!(
        sample(&text, &format!("loopd_received_bytes_total{echo}")),
        Some(bytes as f64)
    );
    assert_eq!(
        sample(&text, &format!("loopd_frames_total{echo}")),
        Some(lines as f64)
    );
    assert_eq!(
        sample(&text, &format!("loopd_output_queued_bytes{echo}")),
        Some(0.0)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!(
            "loopd_build_info{{version=\"{version}\",abi=\"{}.{}\"}} 1",
            loopd_handler_api::abi::LOOPD_ABI_MAJOR,
            loopd_handler_api::abi::LOOPD_ABI_MINOR
        )),
        "{text}"
    );
    let passes = sample(&text, "loopd_loop_passes_total{worker=\"0\"}").unwrap();
    let count = sample(&text, "loopd_loop_pass_busy_seconds_count{worker=\"0\"}").unwrap();
    let inf = sample(
        &text,
        "loopd_loop_pass_busy_seconds_bucket{worker=\"0\",le=\"+Inf\"}",
    )
    .unwrap();
    assert!(passes > 0.0 && count == passes && inf == passes, "{text}");
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(sample(&text, "process_open_fds").unwrap() >= 3.0);
    assert!(sample(&text, "process_start_time_seconds").unwrap() > 1.0e9);
    assert_eq!(
        sample(&text, "loopd_reloads_total{worker=\"0\"}"),
        Some(0.0)
    );
}

#[test]
fn promtool_accepts_the_metrics() {
    let loopd = Loopd::start(CONFIG);
    traffic(loopd.tcp("echo"));
    let text = metrics(loopd.tcp("status"));
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed for this test: apt-get install -y prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_requests_get_400_404_and_405() {
    let loopd = Loopd::start(CONFIG);
    let status = loopd.tcp("status");
    let (code, _, _) = exchange(status, b"NOT HTTP AT ALL\x01\r\n\r\n");
    assert_eq!(code, 400);
    let (code, _, _) = exchange(status, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 404);
    let (code, head, _) = exchange(status, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (code, _, body) = exchange(status, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""));
    // A head that never ends: 400 once it is over 8 KiB.
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(9 << 10, b'a');
    let (code, _, _) = exchange(status, &big);
    assert_eq!(code, 400);
    // A whole head over 8 KiB in one write: measured too.
    let mut whole = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    whole.resize(9 << 10, b'a');
    whole.extend_from_slice(b"\r\n\r\n");
    let (code, _, body) = exchange(status, &whole);
    assert_eq!((code, body.as_str()), (400, "request head too large\n"));
}

/// A client that connects and sends nothing, or only part of a head, does
/// not hold its connection (and a share of `max_connections`) forever.
#[test]
fn a_request_head_not_sent_in_time_gets_408() {
    let loopd = Loopd::start(&format!(
        "{CONFIG}[handler.config]\nrequest_timeout_ms = 300\n"
    ));
    let status = loopd.tcp("status");
    let silent = tcp(status);
    let (code, _, body) = exchange(status, b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    assert_eq!((code, body.as_str()), (408, "request timeout\n"));
    let mut raw = Vec::new();
    (&silent).read_to_end(&mut raw).unwrap();
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{raw:?}"
    );
    // One answered in time is not cut by its timer.
    let (code, _, _) = exchange(status, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200);
    loopd.assert_no_unexpected_errors();
}

/// Headless Chromium's DOM of `url` after 5 s of virtual time.
fn dump_dom(profile: &Path, url: &str) -> Output {
    run_chromium(profile, &["--virtual-time-budget=5000", "--dump-dom", url])
}

#[test]
fn chromium_renders_the_live_page_with_the_numbers() {
    let loopd = Loopd::start(CONFIG);
    let (bytes, lines, _open) = traffic(loopd.tcp("echo"));
    let status = loopd.tcp("status");
    // The snapshot has caught up before the browser looks.
    let text = metrics_until(status, |t| {
        sample(t, "loopd_sent_bytes_total{handler=\"echo\"}") == Some(bytes as f64)
    });
    assert_eq!(
        sample(&text, "loopd_frames_total{handler=\"echo\"}"),
        Some(lines as f64)
    );
    let tmp = TempDir::new("status-browser");
    let out = dump_dom(&tmp.join("profile"), &format!("http://{status}/"));
    let dom = String::from_utf8_lossy(&out.stdout);
    // The echo row: open connections, accepted, received, sent, frames.
    let row = format!(
        "<tr data-handler=\"echo\"><td>echo</td><td>1</td><td>3</td><td>{bytes}</td><td>{bytes}</td><td>{lines}</td>"
    );
    assert!(
        dom.contains(&row),
        "no echo row {row} in the page:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("echo connections"), "{dom}");
    assert!(dom.contains("echo bytes/s"), "{dom}");
    assert!(dom.contains("loop passes/s"), "{dom}");
    assert!(dom.contains("<svg"), "{dom}");
}

#[test]
fn loopd_status_prints_a_summary() {
    let loopd = Loopd::start(CONFIG);
    let (bytes, lines, _open) = traffic(loopd.tcp("echo"));
    let status = loopd.tcp("status");
    metrics_until(status, |t| {
        sample(t, "loopd_sent_bytes_total{handler=\"echo\"}") == Some(bytes as f64)
    });
    let out = Command::new(loopd_bin())
        .args(["status", &format!("http://{status}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("loopd "), "{text}");
    let row = text.lines().find(|l| l.starts_with("echo ")).expect(&text);
    let cols: Vec<&str> = row.split_whitespace().collect();
    let (b, l) = (bytes.to_string(), lines.to_string());
    assert_eq!(cols, ["echo", "1", "3", "2", &b, &b, &l, "0"], "{text}");

    // Not a status listener: a clear error, exit 1.
    let out = Command::new(loopd_bin())
        .args(["status", &format!("http://{}", loopd.tcp("echo"))])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("loopd status: error: "), "{err}");
}

/// The shipped handlers' own metrics (ABI 1.4) reach `/metrics`.
#[test]
fn handler_metrics_of_http_and_chat_appear() {
    let www = root().join("examples/www");
    let config = format!(
        r#"
[[handler]]
name = "web"
plugin = "http"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
root = "{}"

[[handler]]
name = "chat"
plugin = "chat"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "status"
plugin = "status"
listen = ["tcp://127.0.0.1:0"]
"#,
        www.display()
    );
    let loopd = Loopd::start(&config);
    let web = loopd.tcp("web");
    for path in ["/", "/", "/no-such-page"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        exchange(web, req.as_bytes());
    }
    let (code, _, _) = exchange(
        web,
        b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);

    let mut alice = tcp(loopd.tcp("chat"));
    let mut bob = tcp(loopd.tcp("chat"));
    let mut bob_lines = BufReader::new(bob.try_clone().unwrap());
    alice.write_all(b"hello room\n").unwrap();
    alice.write_all(b"/me waves\n").unwrap();
    // Bob sees both lines before we look at the counters.
    let mut seen = 0;
    let mut line = String::new();
    while seen < 2 {
        line.clear();
        assert!(bob_lines.read_line(&mut line).unwrap() > 0, "chat closed");
        if line.contains("hello room") || line.contains("waves") {
            seen += 1;
        }
    }
    bob.flush().unwrap();

    let status = loopd.tcp("status");
    let want = [
        (
            "loopd_http_requests_total{handler=\"web\",code=\"200\",method=\"GET\"}",
            2.0,
        ),
        (
            "loopd_http_requests_total{handler=\"web\",code=\"404\",method=\"GET\"}",
            1.0,
        ),
        (
            "loopd_http_requests_total{handler=\"web\",code=\"200\",method=\"HEAD\"}",
            1.0,
        ),
        ("loopd_http_response_seconds_count{handler=\"web\"}", 4.0),
        (
            "loopd_chat_messages_total{handler=\"chat\",kind=\"say\"}",
            1.0,
        ),
        (
            "loopd_chat_messages_total{handler=\"chat\",kind=\"me\"}",
            1.0,
        ),
        ("loopd_chat_members{handler=\"chat\"}", 2.0),
        ("loopd_chat_rooms{handler=\"chat\"}", 1.0),
    ];
    let text = metrics_until(status, |t| {
        want.iter().all(|(series, v)| sample(t, series) == Some(*v))
    });
    for (series, v) in want {
        assert_eq!(sample(&text, series), Some(v), "{series} in\n{text}");
    }
    assert!(text.contains("# TYPE loopd_http_response_seconds histogram\n"));

    drop(alice);
    let text = metrics_until(status, |t| {
        sample(t, "loopd_chat_members{handler=\"chat\"}") == Some(1.0)
    });
    assert_eq!(
        sample(&text, "loopd_chat_members{handler=\"chat\"}"),
        Some(1.0),
        "{text}"
    );

    // promtool accepts the handlers' families too.
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed for this test: apt-get install -y prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// tests/fixtures/c/metrics.c, compiled with the strict flags.
fn c_metrics_plugin(dir: &TempDir) -> std::path::PathBuf {
    let so = dir.join("libloopd_c_metrics.so");
    compile_c_plugin(&root().join("tests/fixtures/c/metrics.c"), &so);
    so
}

#[test]
fn a_c_handler_declares_and_updates_metrics() {
    let dir = TempDir::new("status-c");
    let so = c_metrics_plugin(&dir);
    let loopd = Loopd::start(&format!(
        r#"
[[handler]]
name = "cm"
plugin = "{}"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "status"
plugin = "status"
listen = ["tcp://127.0.0.1:0"]
"#,
        so.display()
    ));
    let mut s = tcp(loopd.tcp("cm"));
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut answers = Vec::new();
    for line in ["hi", "a much longer line", "late"] {
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut back = String::new();
        r.read_line(&mut back).unwrap();
        answers.push(back);
    }
    // Outside create a declaration is refused (LOOPD_ERR_INVALID).
    assert_eq!(answers, ["ok\n", "ok\n", "late -4\n"]);
    let want = [
        ("c_lines_total{handler=\"cm\",kind=\"short\"}", 1.0),
        ("c_lines_total{handler=\"cm\",kind=\"long\"}", 1.0),
        ("c_line_bytes_bucket{handler=\"cm\",le=\"4\"}", 1.0),
        ("c_line_bytes_bucket{handler=\"cm\",le=\"16\"}", 1.0),
        ("c_line_bytes_bucket{handler=\"cm\",le=\"64\"}", 2.0),
        ("c_line_bytes_bucket{handler=\"cm\",le=\"+Inf\"}", 2.0),
        ("c_line_bytes_sum{handler=\"cm\"}", 20.0),
        ("c_line_bytes_count{handler=\"cm\"}", 2.0),
        ("c_open{handler=\"cm\"}", 1.0),
    ];
    let status = loopd.tcp("status");
    let text = metrics_until(status, |t| {
        want.iter().all(|(series, v)| sample(t, series) == Some(*v))
    });
    for (series, v) in want {
        assert_eq!(sample(&text, series), Some(v), "{series} in\n{text}");
    }
    assert!(text.contains("# HELP c_lines_total Lines received, by length.\n"));
    drop((s, r));
    let text = metrics_until(status, |t| sample(t, "c_open{handler=\"cm\"}") == Some(0.0));
    assert_eq!(sample(&text, "c_open{handler=\"cm\"}"), Some(0.0), "{text}");
}

#[test]
fn bad_metric_declarations_are_refused_at_create() {
    let dir = TempDir::new("status-c-bad");
    let so = c_metrics_plugin(&dir);
    for (bad, says) in [
        (
            "name",
            "metric name `bad-name` is not a valid Prometheus name",
        ),
        ("dup", "metric `c_open` is declared twice"),
        ("labels", "metric `c_many` has 9 labels; at most 8"),
        ("kind", "unknown kind refused: status -4"),
    ] {
        let config = dir.join(&format!("{bad}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[handler]]\nname = \"cm\"\nplugin = \"{}\"\nlisten = [\"tcp://127.0.0.1:0\"]\n\
                 [handler.config]\nbad = \"{bad}\"\n",
                so.display()
            ),
        )
        .unwrap();
        let out = Command::new(loopd_bin())
            .arg("check")
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: loopd check passed\n{err}");
        assert!(err.contains(says), "{bad}: no {says:?} in\n{err}");
        assert!(err.contains("cm"), "{bad}: the handler is not named\n{err}");
    }
}

/// With two workers the status handler reports the whole process:
/// connections spread over both loops add up, and each loop has its own
/// `worker` series.
#[test]
fn two_workers_add_up() {
    let loopd = Loopd::start(&format!("[runtime]\nworkers = 2\n{CONFIG}"));
    let echo = loopd.tcp("echo");
    let mut bytes = 0u64;
    for i in 0..12 {
        let mut s = tcp(echo);
        let mut r = BufReader::new(s.try_clone().unwrap());
        let line = format!("worker test {i}\n");
        s.write_all(line.as_bytes()).unwrap();
        let mut back = String::new();
        r.read_line(&mut back).unwrap();
        assert_eq!(back, line);
        bytes += line.len() as u64;
    }
    let status = loopd.tcp("status");
    let closed = "loopd_connections_closed_total{handler=\"echo\",reason=\"peer\"}";
    let want = |t: &str| {
        sample(t, closed) == Some(12.0)
            && sample(t, "loopd_sent_bytes_total{handler=\"echo\"}") == Some(bytes as f64)
    };
    // Each status request lands on either worker: both must see it all.
    for _ in 0..4 {
        let text = metrics_until(status, want);
        assert!(want(&text), "{text}");
        assert_eq!(sample(&text, "loopd_workers"), Some(2.0), "{text}");
        for w in ["0", "1"] {
            let passes = format!("loopd_loop_passes_total{{worker=\"{w}\"}}");
            assert!(sample(&text, &passes).unwrap() > 0.0, "{text}");
        }
        assert_eq!(
            sample(&text, "loopd_frames_total{handler=\"echo\"}"),
            Some(12.0)
        );
    }
}

/// udp-broadcast's relayed and dropped datagrams, by reason.
#[test]
fn udp_broadcast_metrics_count_relayed_and_dropped() {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = rx.local_addr().unwrap().port();
    let loopd = Loopd::start(&format!(
        r#"
[[handler]]
name = "relay"
plugin = "udp-broadcast"
listen = ["udp://127.0.0.1:0"]
[handler.config]
broadcast_to = "127.0.0.1:{port}"
max_datagram = 100

[[handler]]
name = "status"
plugin = "status"
listen = ["tcp://127.0.0.1:0"]
"#
    ));
    let relay: SocketAddr = loopd.listeners["relay"][0]
        .strip_prefix("udp://")
        .unwrap()
        .parse()
        .unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..3 {
        tx.send_to(format!("hello {i}").as_bytes(), relay).unwrap();
        let mut buf = [0u8; 200];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("hello {i}").as_bytes());
    }
    tx.send_to(&[b'x'; 150], relay).unwrap();
    let want = [
        ("loopd_udp_broadcast_relayed_total{handler=\"relay\"}", 3.0),
        (
            "loopd_udp_broadcast_dropped_total{handler=\"relay\",reason=\"oversize\"}",
            1.0,
        ),
        (
            "loopd_udp_broadcast_dropped_total{handler=\"relay\",reason=\"rate\"}",
            0.0,
        ),
        // The relay's own max_datagram drops it: loopd handed it over.
        ("loopd_datagrams_received_total{handler=\"relay\"}", 4.0),
        ("loopd_datagrams_sent_total{handler=\"relay\"}", 3.0),
    ];
    let text = metrics_until(loopd.tcp("status"), |t| {
        want.iter().all(|(series, v)| sample(t, series) == Some(*v))
    });
    for (series, v) in want {
        assert_eq!(sample(&text, series), Some(v), "{series} in\n{text}");
    }
}

/// A reload (SIGHUP) counts, on every worker.
#[test]
fn reloads_are_counted() {
    let loopd = Loopd::start(CONFIG);
    let status = loopd.tcp("status");
    let series = "loopd_reloads_total{worker=\"0\"}";
    assert_eq!(sample(&metrics(status), series), Some(0.0));
    // SAFETY: a signal to the loopd this test started.
    assert_eq!(unsafe { libc::kill(loopd.pid(), libc::SIGHUP) }, 0);
    let text = metrics_until(status, |t| sample(t, series) == Some(1.0));
    assert_eq!(sample(&text, series), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "loopd_reload_failures_total{worker=\"0\"}"),
        Some(0.0)
    );
}

/// `loopd status` pointed at a listener that is not a status handler:
/// one that answers with something other than HTTP is named so at once,
/// one that says nothing within 5 s is named as not answering, and
/// neither shows the socket's `EAGAIN`.
#[test]
fn loopd_status_names_a_listener_that_does_not_speak_http() {
    // The messages tell the two apart; nothing here is timed.
    let status = |addr: SocketAddr| {
        let out = Command::new(loopd_bin())
            .args(["status", &addr.to_string()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("os error"), "{err}");
        err
    };

    // echo (line framing) sends the request's lines back.
    let loopd = Loopd::start(CONFIG);
    let echo = loopd.tcp("echo");
    let err = status(echo);
    assert_eq!(
        err.trim_end(),
        format!(
            "loopd status: error: {echo} answered, but not with HTTP (its reply starts with \"GET /metrics HTTP/1.1\"): is it a status listener?"
        )
    );

    // A listener that accepts and says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let err = status(addr);
    assert_eq!(
        err.trim_end(),
        format!(
            "loopd status: error: no HTTP response from {addr} within 5 s: is it a status listener?"
        )
    );
    drop(hold.join().unwrap());
}
