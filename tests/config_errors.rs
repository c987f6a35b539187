//! Config mistakes are refused by `loopd check` with one error that names the
//! file, the line and column, and the key, followed by the offending source
//! line; listener failures in run mode name the handler and the listener.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Output;

use common::*;

/// The stderr of a run that must fail with exit status 1 and exactly one
/// ERROR line.
fn failed(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains(": ok"), "printed ok:\n{stdout}");
    let errors = stderr.lines().filter(|l| l.contains(" ERROR ")).count();
    assert_eq!(errors, 1, "expected one ERROR line:\n{stderr}");
    stderr
}

/// Writes `text` as loopd.toml in a fresh temp dir and runs `loopd check` on
/// it, which must fail. Returns (config path, stderr).
fn check_fails(text: &str) -> (String, String) {
    let dir = TempDir::new("config");
    let config = write_config(&dir, text);
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    (config.display().to_string(), failed(&out))
}

/// LINE:COL of `inner`, found inside the first occurrence of `context`.
fn pos(text: &str, context: &str, inner: &str) -> (usize, usize) {
    let (line, col) = locate(text, context);
    let off = context
        .find(inner)
        .unwrap_or_else(|| panic!("`{inner}` not in `{context}`"));
    assert!(
        !context[..off].contains('\n'),
        "keep `inner` on the first line of `context`"
    );
    (line, col + off)
}

/// Runs `loopd check` on `text`, which must fail with
/// `CONFIG:LINE:COL: MESSAGE` (MESSAGE being a prefix of the rest of the line),
/// followed by the source line and a caret under the column (the logger may
/// indent those lines).
#[track_caller]
fn assert_error(text: &str, (line, col): (usize, usize), message: &str) -> String {
    let (config, stderr) = check_fails(text);
    let head = format!("{config}:{line}:{col}: {message}");
    assert!(stderr.contains(&head), "expected\n  {head}\nin\n{stderr}");
    let source = text.lines().nth(line - 1).unwrap();
    let shown = format!(" {line} | {source}");
    assert!(
        stderr.lines().any(|l| l.ends_with(&shown)),
        "the source line is not shown:\n{stderr}"
    );
    let gutter = " ".repeat(line.to_string().len());
    let caret = format!(" {gutter} | {}^", " ".repeat(col - 1));
    assert!(
        stderr.lines().any(|l| l.ends_with(&caret)),
        "no caret at column {col}:\n{stderr}"
    );
    stderr
}

/// [`assert_error`] at the start of `needle`.
#[track_caller]
fn assert_at(text: &str, needle: &str, message: &str) -> String {
    assert_error(text, locate(text, needle), message)
}

const HEAD: &str = r#"# config error test
[runtime]
max_connections = 100
"#;

/// A config with HEAD and one echo handler whose body is `body`.
fn one_handler(body: &str) -> String {
    format!("{HEAD}\n[[handler]]\nname = \"echo\"\nplugin = \"echo\"\n{body}\n")
}

#[test]
fn unknown_handler_key() {
    let text = one_handler(r#"lisen = ["tcp://127.0.0.1:0"]"#);
    let (line, col) = locate(&text, "lisen =");
    assert_eq!((line, col), (8, 1), "the test's own arithmetic");
    assert_at(&text, "lisen =", "handler[0].lisen: unknown field `lisen`");
}

#[test]
fn unknown_runtime_key() {
    let text = r#"
[runtime]
max_connections = 100
max_conections = 5

[[handler]]
name = "echo"
plugin = "echo"
"#;
    assert_at(
        text,
        "max_conections",
        "runtime.max_conections: unknown field `max_conections`",
    );
}

#[test]
fn unknown_top_level_table() {
    let text = format!("{HEAD}\n[handlers]\nname = \"echo\"\n");
    assert_at(&text, "handlers", "handlers: unknown field `handlers`");
}

#[test]
fn bad_addresses_name_the_listen_entry() {
    let cases = [
        (
            r#"["tcp://127.0.0.1:0", "tcp://localhost:99999"]"#,
            "\"tcp://localhost:99999\"",
            "handler[0].listen[1]: `tcp://localhost:99999`: `localhost:99999` is not a numeric IP:PORT",
        ),
        (
            r#"["tcp://127.0.0.1"]"#,
            "\"tcp://127.0.0.1\"",
            "handler[0].listen[0]: `tcp://127.0.0.1`: `127.0.0.1` is not a numeric IP:PORT",
        ),
        (
            r#"["tcp://127.0.0.1:0", "unix:///tmp/x.sock", "udpx://127.0.0.1:7000"]"#,
            "\"udpx://",
            "handler[0].listen[2]: `udpx://127.0.0.1:7000`: unknown scheme `udpx` (use tcp, tls, unix or udp)",
        ),
        (
            r#"["127.0.0.1:7000"]"#,
            "\"127.0.0.1:7000\"",
            "handler[0].listen[0]: `127.0.0.1:7000` is not a URL like tcp://127.0.0.1:7000",
        ),
        (
            r#"["unix://"]"#,
            "\"unix://\"",
            "handler[0].listen[0]: `unix://`: the unix socket path is empty",
        ),
    ];
    for (listen, needle, message) in cases {
        let text = one_handler(&format!("listen = {listen}"));
        assert_at(&text, needle, message);
    }
}

#[test]
fn bad_address_in_a_later_handler_names_its_index() {
    let text = format!(
        r#"{HEAD}
[[handler]]
name = "a"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "b"
plugin = "echo"
listen = ["udp://[::1]"]
"#
    );
    assert_at(
        &text,
        "\"udp://[::1]\"",
        "handler[1].listen[0]: `udp://[::1]`: `[::1]` is not a numeric IP:PORT",
    );
}

#[test]
fn duplicate_handler_names() {
    let text = format!(
        r#"{HEAD}
[[handler]]
name = "echo"
plugin = "echo"

[[handler]]
name = "other"
plugin = "echo"

[[handler]]
name  =  "echo"
plugin = "echo"
"#
    );
    assert_error(
        &text,
        pos(&text, "name  =  \"echo\"", "\""),
        "handler[2].name: a handler named `echo` is already defined",
    );
}

#[test]
fn duplicate_listen_addresses() {
    let text = format!(
        r#"{HEAD}
[[handler]]
name = "a"
plugin = "echo"
listen = ["tcp://127.0.0.1:7000", "udp://127.0.0.1:7000"]

[[handler]]
name = "b"
plugin = "echo"
listen = ["tcp://127.0.0.1:0", "tcp://127.0.0.1:7000"]
"#
    );
    // tcp and udp on one port is fine; the same tcp address twice is not.
    assert_error(
        &text,
        pos(
            &text,
            "\"tcp://127.0.0.1:0\", \"tcp://127.0.0.1:7000\"",
            "\"tcp://127.0.0.1:7000\"",
        ),
        "handler[1].listen[1]: tcp://127.0.0.1:7000 is already used by another listener",
    );

    let text =
        one_handler(r#"listen = ["unix:///tmp/loopd-dup.sock", "unix:///tmp/loopd-dup.sock"]"#);
    assert_error(
        &text,
        pos(&text, ", \"unix:///tmp/loopd-dup.sock\"]", "\""),
        "handler[0].listen[1]: unix:///tmp/loopd-dup.sock is already used by another listener",
    );
}

#[test]
fn same_unix_socket_spelled_twice_is_a_duplicate() {
    let dir = TempDir::new("config-dup-unix");
    let a = dir.join("x.sock");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let b = format!("{}/sub/../x.sock", dir.path().display());
    let text = format!(
        r#"{HEAD}
[[handler]]
name = "a"
plugin = "echo"
listen = ["unix://{}"]

[[handler]]
name = "b"
plugin = "echo"
listen = ["unix://{b}"]
"#,
        a.display()
    );
    let config = write_config(&dir, &text);
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    let stderr = failed(&out);
    let (line, col) = locate(&text, &format!("\"unix://{b}\""));
    assert!(
        stderr.contains(&format!(
            "{}:{line}:{col}: handler[1].listen[0]: ",
            config.display()
        )) && stderr.contains("is already used by another listener"),
        "{stderr}"
    );
}

#[test]
fn bad_framing_name() {
    let text = one_handler(r#"framing = "lines""#);
    assert_error(
        &text,
        pos(&text, "framing = \"lines\"", "\""),
        "handler[0].framing: unknown framing `lines` (use raw, line or length-prefixed)",
    );
}

#[test]
fn max_frame_out_of_range() {
    let text = one_handler("max_frame = 0");
    assert_error(
        &text,
        pos(&text, "max_frame = 0", "0"),
        "handler[0].max_frame: must be between 1 and 1073741824 bytes",
    );
    let text = "[runtime]\nmax_frame = 1073741825\n";
    assert_error(
        text,
        (2, 13),
        "runtime.max_frame: must be between 1 and 1073741824 bytes",
    );
    let text = one_handler("max_frame = -1");
    assert_error(
        &text,
        pos(&text, "max_frame = -1", "-1"),
        "handler[0].max_frame: invalid value: integer `-1`",
    );
}

#[test]
fn zero_limits_in_runtime() {
    let text = "[runtime]\nshutdown_timeout_ms = 10\nmax_connections = 0\n";
    assert_error(
        text,
        (3, 19),
        "runtime.max_connections: must be greater than 0",
    );
}

#[test]
fn low_watermark_not_below_high() {
    let text = "[runtime]\noutput_high_watermark = 1000\noutput_low_watermark = 1000\n";
    assert_error(
        text,
        (3, 24),
        "runtime.output_low_watermark: must be below output_high_watermark (1000 >= 1000)",
    );
    let text = one_handler("output_high_watermark = 100\noutput_low_watermark = 200");
    assert_error(
        &text,
        pos(&text, "output_low_watermark = 200", "200"),
        "handler[0].output_low_watermark: must be below output_high_watermark (200 >= 100)",
    );
}

#[test]
fn high_watermark_below_the_default_low_says_so() {
    let text = "[runtime]\noutput_high_watermark = 1000\n";
    let stderr = assert_error(text, (2, 25), "runtime.output_high_watermark: ");
    assert!(
        stderr.contains("default") && stderr.contains("65536"),
        "{stderr}"
    );
}

#[test]
fn toml_syntax_error() {
    let text = format!("{HEAD}\n[[handler]]\nname = \"echo\nplugin = \"echo\"\n");
    let (line, _) = locate(&text, "name = \"echo");
    assert_error(&text, (line, 13), "handler[0].name: invalid basic string");
}

#[test]
fn type_error_has_line_and_column() {
    let text = "[runtime]\nmax_connections = \"many\"\n";
    assert_error(
        text,
        (2, 19),
        "runtime.max_connections: invalid type: string \"many\", expected u64",
    );
}

#[test]
fn type_error_names_the_key() {
    let text = "[runtime]\nmax_connections = \"many\"\n";
    assert_error(text, (2, 19), "runtime.max_connections: invalid type");
}

/// A wrong type inside `[handler.config]` (the plugin's serde) is located
/// at its key, as one in loopd's own tables is.
#[test]
fn a_type_error_in_a_handler_config_names_the_key() {
    let text = one_handler("[handler.config]\nshutdown_idle_ms = \"soon\"");
    let (config, stderr) = check_fails(&text);
    let (line, col) = locate(&text, "shutdown_idle_ms = ");
    let head = format!("{config}:{line}:{col}: handler[0].config.shutdown_idle_ms: handler `echo`");
    assert!(stderr.contains(&head), "expected\n  {head}\nin\n{stderr}");
    assert!(
        stderr.contains(
            "create failed: invalid config: shutdown_idle_ms: invalid type: string \"soon\", expected u64"
        ),
        "{stderr}"
    );
}

#[test]
fn missing_plugin_key() {
    let text = format!(
        r#"{HEAD}
[[handler]]
name = "a"
plugin = "echo"

[[handler]]
name = "b"
listen = []
"#
    );
    // Points at the [[handler]] entry that lacks the key.
    assert_at(
        &text,
        "[[handler]]\nname = \"b\"",
        "handler[1]: missing field `plugin`",
    );
}

#[test]
fn empty_plugin() {
    let text = format!("{HEAD}\n[[handler]]\nname = \"a\"\nplugin = \"\"\n");
    assert_error(
        &text,
        pos(&text, "plugin = \"\"", "\""),
        "handler[0].plugin: is empty",
    );
}

#[test]
fn invalid_handler_name() {
    let text = format!("{HEAD}\n[[handler]]\nname = \"my echo\"\nplugin = \"echo\"\n");
    assert_error(
        &text,
        pos(&text, "name = \"my echo\"", "\""),
        "handler[0].name: `my echo` is not a valid name",
    );
}

#[test]
fn missing_config_file() {
    let dir = TempDir::new("config-missing");
    let config = dir.join("nope.toml");
    let cfg = config.to_str().unwrap();
    let expected = format!("{cfg}: cannot read config: No such file or directory");
    let stderr = failed(&run_loopd(&["check", cfg]));
    assert!(stderr.contains(&expected), "{stderr}");
    let stderr = failed(&run_loopd(&[cfg]));
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn run_mode_reports_config_errors_like_check() {
    let dir = TempDir::new("config-run");
    let text = one_handler(
        r#"listen = ["tcp://127.0.0.1:0"]
framing = "lines""#,
    );
    let config = write_config(&dir, &text);
    let (line, col) = pos(&text, "framing = \"lines\"", "\"");
    let head = format!(
        "{}:{line}:{col}: handler[0].framing: unknown framing `lines`",
        config.display()
    );
    let stderr = failed(&run_loopd(&[config.to_str().unwrap()]));
    assert!(stderr.contains(&head), "{stderr}");
    assert!(
        !stderr.contains("listening on") && !stderr.contains(" ready: "),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Listener errors (run mode only: `check` never listens)
// ---------------------------------------------------------------------------

/// Runs `loopd <config>` on `text`; it must fail before serving. Returns stderr.
fn run_fails(dir: &TempDir, text: &str) -> String {
    let config = write_config(dir, text);
    let stderr = failed(&run_loopd(&[config.to_str().unwrap()]));
    assert!(!stderr.contains(" ready: "), "{stderr}");
    stderr
}

fn echo_on(listen: &str) -> String {
    format!("[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"{listen}\"]\n")
}

#[test]
fn tcp_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("config-inuse");
    let text = echo_on(&format!("tcp://127.0.0.1:{port}"));

    // check does not listen, so the config itself is fine.
    let config = write_config(&dir, &text);
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "check should not bind:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stderr = run_fails(&dir, &text);
    assert!(
        stderr.contains(&format!(
            "handler `echo`: cannot listen on tcp://127.0.0.1:{port}: "
        )) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    drop(taken);
}

#[test]
fn nothing_is_reported_listening_when_a_later_bind_fails() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("config-inuse-second");
    let text = format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"tcp://127.0.0.1:0\", \"tcp://127.0.0.1:{port}\"]\n"
    );
    let stderr = run_fails(&dir, &text);
    // The error points at the listener that failed, the second.
    let config = dir.join("loopd.toml");
    let (line, col) = locate(&text, &format!("\"tcp://127.0.0.1:{port}\""));
    assert!(
        stderr.contains(&format!(
            "{}:{line}:{col}: handler `echo`: cannot listen on tcp://127.0.0.1:{port}: ",
            config.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    drop(taken);
}

#[test]
fn unix_socket_in_a_missing_directory() {
    let dir = TempDir::new("config-nodir");
    let path = dir.join("no/such/dir/echo.sock");
    let stderr = run_fails(&dir, &echo_on(&format!("unix://{}", path.display())));
    assert!(
        stderr.contains(&format!(
            "handler `echo`: cannot listen on unix://{}: No such file or directory",
            path.display()
        )),
        "{stderr}"
    );
    assert!(!path.exists());
}

#[test]
fn unix_socket_another_process_listens_on() {
    let dir = TempDir::new("config-live-unix");
    let path = dir.join("live.sock");
    let live = UnixListener::bind(&path).unwrap();
    let before = std::fs::metadata(&path).unwrap().ino();

    let stderr = run_fails(&dir, &echo_on(&format!("unix://{}", path.display())));
    assert!(
        stderr.contains(&format!(
            "handler `echo`: cannot listen on unix://{}: another process is listening on {}",
            path.display(),
            path.display()
        )),
        "{stderr}"
    );

    // The other process's socket is untouched and still works.
    let meta = std::fs::metadata(&path).expect("the live socket was removed");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.ino(), before, "the live socket was replaced");
    UnixStream::connect(&path).expect("the live socket no longer accepts");
    drop(live);
}

#[test]
fn unix_socket_in_use_hint_does_not_talk_about_ports() {
    let dir = TempDir::new("config-live-unix-hint");
    let path = dir.join("live.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let stderr = run_fails(&dir, &echo_on(&format!("unix://{}", path.display())));
    assert!(
        stderr.contains("another process is listening on"),
        "{stderr}"
    );
    assert!(!stderr.contains("port"), "{stderr}");
}

#[test]
fn unix_path_that_is_not_a_socket_is_left_alone() {
    let dir = TempDir::new("config-regular-file");
    let path = dir.join("data.sock");
    std::fs::write(&path, "precious").unwrap();
    let stderr = run_fails(&dir, &echo_on(&format!("unix://{}", path.display())));
    assert!(
        stderr.contains(&format!(
            "handler `echo`: cannot listen on unix://{}: {} exists and is not a socket; not replacing it",
            path.display(),
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn stale_unix_socket_is_replaced() {
    let dir = TempDir::new("config-stale-unix");
    let path = dir.join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(
        std::fs::metadata(&path).unwrap().file_type().is_socket(),
        "dropping a UnixListener should leave its file"
    );
    // A child another test spawns between the bind and the drop holds a
    // copy of the listener until its exec (CLOEXEC closes it only then),
    // and while it does, connecting succeeds: wait for that to pass.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while UnixStream::connect(&path).is_ok() {
        assert!(std::time::Instant::now() < deadline, "nobody should listen");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let loopd = Loopd::start(&echo_on(&format!("unix://{}", path.display())));
    assert!(
        loopd.wait_for_log(
            &format!("removing stale socket {}", path.display()),
            TIMEOUT
        ),
        "{}",
        loopd.logs()
    );
    assert_eq!(loopd.unix("echo"), path);
    let data = pattern(100_000, 3);
    let got = echo_roundtrip(unix(Path::new(&path)), &data);
    assert!(got == data, "echo over the replaced socket differs");
}

// ---------------------------------------------------------------------------
// Config files that are not regular files, or too large (issue 20, item 12)
// ---------------------------------------------------------------------------

/// `loopd check PATH` and `loopd PATH` both refuse `path` with `reason`,
/// and exit by themselves (run_loopd fails the test after TIMEOUT: a read
/// of /dev/zero would grow without end, a FIFO with no writer would block).
#[track_caller]
fn refused_file(path: &Path, reason: &str) {
    let p = path.to_str().unwrap();
    let expected = format!("{p}: cannot read config: {reason}");
    for args in [vec!["check", p], vec![p]] {
        let stderr = failed(&run_loopd(&args));
        assert!(
            stderr.contains(&expected),
            "{args:?}: expected\n  {expected}\nin\n{stderr}"
        );
        assert!(!stderr.contains(" ready: "), "{stderr}");
    }
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused_unread() {
    refused_file(
        Path::new("/dev/zero"),
        "it is a character device, not a regular file",
    );
    let dir = TempDir::new("config-not-a-file");
    let fifo = dir.join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    refused_file(&fifo, "it is a FIFO (named pipe), not a regular file");
    refused_file(dir.path(), "it is a directory, not a regular file");
    let sock = dir.join("sock.toml");
    let _listener = UnixListener::bind(&sock).unwrap();
    refused_file(&sock, "it is a socket, not a regular file");
}

#[test]
fn a_config_over_4_mib_is_refused_and_one_of_4_mib_is_read() {
    const LIMIT: usize = 4 << 20;
    let dir = TempDir::new("config-size");
    let body = "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\n";
    // Exactly the limit: the handler, then comment lines as padding.
    let mut text = String::from(body);
    let line = format!("# {}\n", "x".repeat(97));
    while text.len() + line.len() <= LIMIT {
        text.push_str(&line);
    }
    text.push_str(&"#".repeat(LIMIT - text.len() - 1));
    text.push('\n');
    assert_eq!(text.len(), LIMIT);
    let config = dir.join("limit.toml");
    std::fs::write(&config, &text).unwrap();
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "a config of exactly 4 MiB is refused:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One byte more.
    text.push('\n');
    std::fs::write(&config, &text).unwrap();
    refused_file(
        &config,
        "it is 4194305 bytes, more than the 4194304 bytes (4 MiB) a config file may have",
    );
    // A sparse file of 1 GiB: refused from its size, without reading it.
    let sparse = dir.join("sparse.toml");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    refused_file(
        &sparse,
        "it is 1073741824 bytes, more than the 4194304 bytes (4 MiB) a config file may have",
    );
}

#[test]
fn a_config_that_is_not_utf8_is_refused() {
    let dir = TempDir::new("config-utf8");
    let config = dir.join("latin1.toml");
    std::fs::write(&config, b"# caf\xe9\n[runtime]\n").unwrap();
    refused_file(&config, "not UTF-8 text (an invalid byte at offset 5)");
}

// ---------------------------------------------------------------------------
// Refused by `loopd check`, and by a start before it binds
// ---------------------------------------------------------------------------

/// [`assert_at`] for `loopd check`; then `loopd <config>` must fail with
/// the same `CONFIG:LINE:COL: MESSAGE`, before listening.
#[track_caller]
fn check_and_start_fail_at(text: &str, needle: &str, message: &str) {
    assert_at(text, needle, message);
    let dir = TempDir::new("config-start");
    let config = write_config(&dir, text);
    let (line, col) = locate(text, needle);
    let head = format!("{}:{line}:{col}: {message}", config.display());
    let stderr = failed(&run_loopd(&[config.to_str().unwrap()]));
    assert!(stderr.contains(&head), "expected\n  {head}\nin\n{stderr}");
    assert!(
        !stderr.contains("listening on") && !stderr.contains(" ready: "),
        "{stderr}"
    );
}

/// A config whose `[runtime]` is `runtime` and whose echo handler listens
/// on a free TCP port.
fn runtime_with_echo(runtime: &str) -> String {
    format!("[runtime]\n{runtime}\n\n{}", echo_on("tcp://127.0.0.1:0"))
}

#[test]
fn a_pid_file_loopd_cannot_write_is_refused_before_binding() {
    let dir = TempDir::new("config-pid-file");
    let missing = dir.join("no/such/dir/loopd.pid");
    let plain = dir.join("plain");
    std::fs::write(&plain, "").unwrap();
    let d = dir.path().display();
    let cases = [
        (
            missing.display().to_string(),
            format!(
                "runtime.pid_file: cannot write {}: its directory {} does not exist",
                missing.display(),
                missing.parent().unwrap().display()
            ),
        ),
        (
            format!("{d}"),
            format!("runtime.pid_file: {d} is a directory: give the path of a file in it, e.g. \"{d}/loopd.pid\""),
        ),
        (
            format!("{d}/x.pid/"),
            format!("runtime.pid_file: {d}/x.pid/ ends in `/`, which names a directory"),
        ),
        (
            format!("{}/x.pid", plain.display()),
            format!(
                "runtime.pid_file: cannot write {}/x.pid: {} is not a directory",
                plain.display(),
                plain.display()
            ),
        ),
        (
            "/dev/null".to_string(),
            "runtime.pid_file: /dev/null is a character device, not a regular file".to_string(),
        ),
    ];
    for (pid_file, message) in cases {
        let text = runtime_with_echo(&format!("pid_file = \"{pid_file}\""));
        check_and_start_fail_at(&text, "\"", &message);
    }
    assert!(!missing.parent().unwrap().exists());
    // A pid_file in an existing directory, or one left there, is fine.
    for _ in 0..2 {
        let text = runtime_with_echo(&format!("pid_file = \"{d}/loopd.pid\""));
        let config = write_config(&dir, &text);
        let out = run_loopd(&["check", config.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.join("loopd.pid"), "1\n").unwrap();
    }
}

#[test]
fn an_access_log_loopd_cannot_open_is_refused_at_its_key() {
    let dir = TempDir::new("config-access-log");
    let missing = dir.join("no/such/dir/access.log");
    let d = dir.path().display();
    let cases = [
        (
            missing.display().to_string(),
            format!(
                "log.access_log: cannot open {}: its directory {} does not exist",
                missing.display(),
                missing.parent().unwrap().display()
            ),
        ),
        (
            format!("{d}"),
            format!("log.access_log: {d} is a directory: give the path of a file in it, e.g. \"{d}/access.log\""),
        ),
    ];
    for (path, message) in cases {
        let text = format!(
            "[log]\naccess_log = \"{path}\"\n\n{}",
            echo_on("tcp://127.0.0.1:0")
        );
        check_and_start_fail_at(&text, "\"", &message);
    }
    assert!(!missing.parent().unwrap().exists());
}

#[test]
fn ipv4_mapped_ipv6_listeners_are_refused_with_the_ipv4_spelling() {
    for (scheme, ip) in [
        ("tcp", "127.0.0.1"),
        ("udp", "127.0.0.1"),
        ("tls", "10.1.2.3"),
    ] {
        let url = format!("{scheme}://[::ffff:{ip}]:20020");
        let text = one_handler(&format!("listen = [\"tcp://127.0.0.1:0\", \"{url}\"]"));
        check_and_start_fail_at(
            &text,
            &format!("\"{url}"),
            &format!(
                "handler[0].listen[1]: `{url}`: ::ffff:{ip} is an IPv4-mapped IPv6 address, which loopd's IPv6 listeners (IPv6-only) cannot bind; write the IPv4 address: `{scheme}://{ip}:20020`"
            ),
        );
    }
}

#[test]
fn a_unix_socket_path_ending_in_a_slash_is_refused() {
    let dir = TempDir::new("config-unix-slash");
    let url = format!("unix://{}/x.sock/", dir.path().display());
    let text = one_handler(&format!("listen = [\"{url}\"]"));
    check_and_start_fail_at(
        &text,
        &format!("\"{url}"),
        &format!("handler[0].listen[0]: `{url}`: a unix socket path cannot end in `/` (that names a directory)"),
    );
    assert!(!dir.join("x.sock").exists());
}

#[test]
fn the_id_minus_one_is_refused_as_a_user_or_group() {
    let minus_one = "4294967295";
    let why = format!(
        "`{minus_one}` is the id -1, which the system reads as \"leave unchanged\": it names no user or group"
    );
    let text = runtime_with_echo(&format!("user = \"{minus_one}\""));
    check_and_start_fail_at(&text, "\"", &format!("runtime.user: {why}"));
    let text = runtime_with_echo(&format!("user = \"0\"\ngroup = \"{minus_one}\""));
    check_and_start_fail_at(
        &text,
        &format!("\"{minus_one}"),
        &format!("runtime.group: {why}"),
    );
    let text = format!(
        "[[handler]]\nname = \"echo\"\nplugin = \"echo\"\nlisten = [\"unix:///tmp/loopd-minus-one.sock\"]\nunix_owner = \"{minus_one}\"\n"
    );
    assert_at(
        &text,
        &format!("\"{minus_one}"),
        &format!("handler[0].unix_owner: {why}"),
    );
    // The largest other id is an id like any other.
    let text = runtime_with_echo("user = \"4294967294\"");
    let dir = TempDir::new("config-uid-max");
    let config = write_config(&dir, &text);
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("the id -1"), "{stderr}");
}

/// A `plugin_dir` that is not a directory would let a plugin of the same
/// name be loaded from next to the executable instead, without a word.
#[test]
fn a_plugin_dir_that_is_not_a_directory_is_refused() {
    let dir = TempDir::new("config-plugin-dir");
    let file = dir.join("file");
    std::fs::write(&file, "").unwrap();
    let missing = dir.join("missing");
    for (value, why) in [
        (
            missing.display().to_string(),
            format!("the directory {} does not exist", missing.display()),
        ),
        (
            file.display().to_string(),
            format!("{} is not a directory", file.display()),
        ),
        (String::new(), "is empty".to_string()),
    ] {
        let text = runtime_with_echo(&format!("plugin_dir = \"{value}\""));
        check_and_start_fail_at(&text, "\"", &format!("runtime.plugin_dir: {why}"));
    }
    // A directory is taken, even one without the plugin in it.
    let text = runtime_with_echo(&format!("plugin_dir = \"{}\"", dir.path().display()));
    let config = write_config(&dir, &text);
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
