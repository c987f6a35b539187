//! A listener the plugin has no hook for is refused by `loopd check` and
//! at start, with the config location of the listener, the handler,
//! the listener and why: a `udp://` listener on a plugin without
//! `on_datagram` (every datagram would be dropped), a stream listener on a
//! plugin without any connection hook. A hook left NULL is how a plugin
//! says so (C); the Rust SDK leaves them NULL for `Handler::DATAGRAMS` and
//! `Handler::STREAMS` set to `false`.
//!
//! A `framing` the plugin cannot read is refused the same way, with the
//! location of the `framing` key: chat reads lines, http, status and the
//! proxy bytes. A plugin says which it reads by `loopd_plugin_info.framings`
//! (ABI 1.5; `Handler::FRAMINGS` in the Rust SDK).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use loopd::{HandlerSpec, Runtime};

/// The text of the single ERROR log line, checking there is exactly one.
fn single_error(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one ERROR line, stderr:\n{stderr}"
    );
    match errors[0].split_once("] ") {
        Some((_, msg)) => msg.to_string(),
        None => errors[0].to_string(),
    }
}

/// `config` is refused by `loopd check` and by `loopd <config>` with the
/// same single error, exit 1, and nothing listening. Returns the error.
fn refused(config: &Path) -> String {
    let cfg = config.to_str().unwrap();
    let out = run_loopd(&["check", cfg]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("ok"), "check said ok:\n{stdout}");
    let checked = single_error(&stderr);

    let out = run_loopd(&[cfg]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("listening on"),
        "loopd listened before refusing:\n{stderr}"
    );
    assert_eq!(checked, single_error(&stderr), "check and start disagree");
    checked
}

/// `loopd check` accepts `config`.
fn checks_ok(config: &Path) {
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One handler `e` of `plugin` on `listen`, written into `dir`; the
/// config's path, and where its `plugin` value starts.
///
/// ([`listen_at`] says where its listener is.)
fn one_handler(dir: &TempDir, plugin: &str, listen: &str, extra: &str) -> (PathBuf, String) {
    let text = format!(
        "[runtime]\nshutdown_timeout_ms = 1000\n\n[[handler]]\nname = \"e\"\nplugin = \"{plugin}\"\nlisten = [\"{listen}\"]\n{extra}"
    );
    let config = write_config(dir, &text);
    let (line, col) = locate(&text, &format!("\"{plugin}\""));
    let at = format!("{}:{line}:{col}", config.display());
    (config, at)
}

#[test]
fn a_udp_listener_on_a_plugin_without_on_datagram_is_refused() {
    let dir = TempDir::new("setup-udp");
    for plugin in ["echo", "chat", "http"] {
        let extra = if plugin == "http" {
            format!("[handler.config]\nroot = \"{}\"\n", dir.path().display())
        } else {
            String::new()
        };
        let (config, _) = one_handler(&dir, plugin, "udp://127.0.0.1:0", &extra);
        let at = listen_at(&config, "udp://127.0.0.1:0");
        assert_eq!(
            refused(&config),
            format!(
                "{at}: handler `e`: listener udp://127.0.0.1:0: plugin {plugin} has no on_datagram hook, so every datagram would be dropped"
            )
        );
    }
}

#[test]
fn a_stream_listener_on_udp_broadcast_is_refused() {
    let dir = TempDir::new("setup-stream");
    let extra = "[handler.config]\nbroadcast_to = [\"127.0.0.1:9\"]\n";
    let sock = dir.join("u.sock");
    for url in [
        "tcp://127.0.0.1:0".to_string(),
        format!("unix://{}", sock.display()),
    ] {
        let (config, _) = one_handler(&dir, "udp-broadcast", &url, extra);
        let at = listen_at(&config, &url);
        assert_eq!(
            refused(&config),
            format!(
                "{at}: handler `e`: listener {url}: plugin udp-broadcast has no connection hooks (on_open, on_data, on_close, ...), so every connection would be accepted and ignored"
            )
        );
    }
    // Its own kind of listener is fine.
    let (config, _) = one_handler(&dir, "udp-broadcast", "udp://127.0.0.1:0", extra);
    checks_ok(&config);
}

/// A C plugin named `name` with only the hooks in `hooks` (designated
/// initializers of `loopd_vtable`), compiled into `dir`.
fn c_plugin(dir: &TempDir, name: &str, hooks: &str) -> PathBuf {
    c_plugin_with(dir, name, hooks, "")
}

/// [`c_plugin`] with more fields of its `loopd_plugin_info` (designated
/// initializers) in `info`.
fn c_plugin_with(dir: &TempDir, name: &str, hooks: &str, info: &str) -> PathBuf {
    let src = dir.join(&format!("{name}.c"));
    std::fs::write(
        &src,
        format!(
            r#"#include "loopd.h"
static const loopd_host_api *host;
static int32_t greet(loopd_ctx *ctx, void *inst, uint64_t conn,
                     const loopd_conn_info *info, void **state)
{{
    (void)inst; (void)info; (void)state;
    return host->send(ctx, conn, (const uint8_t *)"hi\n", 3);
}}
static void bye(loopd_ctx *ctx, void *inst, uint64_t conn, void *state,
                int32_t reason)
{{
    (void)ctx; (void)inst; (void)conn; (void)state; (void)reason;
}}
static void answer(loopd_ctx *ctx, void *inst, uint64_t sock,
                   const loopd_addr *peer, const uint8_t *data, size_t len)
{{
    (void)inst;
    host->send_datagram(ctx, sock, peer, data, len);
}}
static const loopd_vtable vt = {{
    .struct_size = (uint32_t)sizeof(loopd_vtable),
    {hooks}
}};
static const loopd_plugin_info info = {{
    .struct_size = (uint32_t)sizeof(loopd_plugin_info),
    .abi_major = LOOPD_ABI_MAJOR,
    .abi_minor = LOOPD_ABI_MINOR,
    .name = "{name}",
    .version = "1.0.0",
    .vtable = &vt,
    {info}
}};
const loopd_plugin_info *loopd_plugin_entry_v1(const loopd_host_api *h)
{{
    host = h;
    (void)greet; (void)bye; (void)answer;
    return &info;
}}
"#
        ),
    )
    .unwrap();
    let so = dir.join(&format!("{name}.so"));
    compile_c_plugin(&src, &so);
    so
}

#[test]
fn a_c_plugin_says_what_it_serves_by_the_hooks_it_leaves_null() {
    let dir = TempDir::new("setup-c");
    // Only on_open and on_close: a greeter, a stream handler all the same.
    let greeter = c_plugin(&dir, "greeter", ".on_open = greet, .on_close = bye,");
    let greeter = greeter.to_str().unwrap();
    let (config, _) = one_handler(&dir, greeter, "tcp://127.0.0.1:0", "");
    checks_ok(&config);
    let loopd = Loopd::start(&std::fs::read_to_string(&config).unwrap());
    let mut c = LineClient::connect(loopd.tcp("e"));
    assert_eq!(c.recv(), "hi");
    drop(loopd);
    let (config, _) = one_handler(&dir, greeter, "udp://127.0.0.1:0", "");
    let at = listen_at(&config, "udp://127.0.0.1:0");
    assert_eq!(
        refused(&config),
        format!(
            "{at}: handler `e`: listener udp://127.0.0.1:0: plugin greeter has no on_datagram hook, so every datagram would be dropped"
        )
    );

    // Only on_datagram: udp:// only.
    let answerer = c_plugin(&dir, "answerer", ".on_datagram = answer,");
    let answerer = answerer.to_str().unwrap();
    let (config, _) = one_handler(&dir, answerer, "udp://127.0.0.1:0", "");
    checks_ok(&config);
    let (config, _) = one_handler(&dir, answerer, "tcp://127.0.0.1:0", "");
    let at = listen_at(&config, "tcp://127.0.0.1:0");
    assert_eq!(
        refused(&config),
        format!(
            "{at}: handler `e`: listener tcp://127.0.0.1:0: plugin answerer has no connection hooks (on_open, on_data, on_close, ...), so every connection would be accepted and ignored"
        )
    );
}

/// A handler added in code is checked the same way, for `check` and
/// `build` alike.
#[test]
fn a_handler_added_in_code_gets_the_same_refusal() {
    let err = Runtime::builder()
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("e").listen("udp://127.0.0.1:0"))
        .check()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "handler `e`: listener udp://127.0.0.1:0: plugin loopd_echo::Echo has no on_datagram hook, so every datagram would be dropped"
    );
    let err = Runtime::builder()
        .handler(HandlerSpec::linked::<loopd_echo::Echo>("e").listen("tcp://127.0.0.1:0"))
        .listen("e", "udp://127.0.0.1:0")
        .build()
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no on_datagram hook"), "{err}");
}

/// A reload that keeps an echo instance and only gives it a `udp://`
/// listener does not create the instance again: the refusal is the
/// reload's, and the instance keeps serving as it did.
#[test]
fn a_reload_giving_a_kept_instance_a_listener_it_cannot_serve_is_refused() {
    let base = "[[handler]]\nname = \"e\"\nplugin = \"echo\"\nframing = \"raw\"\n";
    let loopd = Loopd::start(&format!("{base}listen = [\"tcp://127.0.0.1:0\"]\n"));
    loopd.expect_error("reload failed");
    let echo = loopd.tcp("e");
    std::fs::write(
        loopd.dir.join("loopd.toml"),
        format!("{base}listen = [\"tcp://127.0.0.1:0\", \"udp://127.0.0.1:0\"]\n"),
    )
    .unwrap();
    loopd.signal(libc::SIGHUP);
    let why = "handler `e`: listener udp://127.0.0.1:0: plugin echo has no on_datagram hook, so every datagram would be dropped";
    assert!(
        loopd.wait_for_log("reload failed", TIMEOUT),
        "{}",
        loopd.logs()
    );
    let logs = loopd.logs();
    let line = logs.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains(why), "{logs}");
    assert!(!logs.contains("listening on udp://"), "{logs}");
    assert!(!logs.contains("reloaded: "), "{logs}");
    assert_eq!(echo_roundtrip(tcp(echo), b"kept"), b"kept");
}

/// Where the config at `config` writes the listener `url`: what an error
/// about that listener starts with.
fn listen_at(config: &Path, url: &str) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let (line, col) = locate(&text, &format!("\"{url}\""));
    format!("{}:{line}:{col}", config.display())
}

/// One handler `e` of `plugin` with `framing`, written into `dir`; the
/// config's path, and where its `framing` value starts.
fn framed(dir: &TempDir, plugin: &str, framing: &str, extra: &str) -> (PathBuf, String) {
    let (config, _) = one_handler(
        dir,
        plugin,
        "tcp://127.0.0.1:0",
        &format!("framing = \"{framing}\"\n{extra}"),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let (line, col) = locate(&text, &format!("\"{framing}\""));
    let at = format!("{}:{line}:{col}", config.display());
    (config, at)
}

#[test]
fn a_framing_the_plugin_cannot_read_is_refused_at_its_key() {
    let dir = TempDir::new("setup-framing");
    let root = format!("[handler.config]\nroot = \"{}\"\n", dir.path().display());
    let upstream = "[handler.config]\nupstream = \"tcp://127.0.0.1:9\"\n";
    for (plugin, framing, extra, only) in [
        ("chat", "raw", "", "line"),
        ("chat", "length-prefixed", "", "line"),
        ("http", "line", root.as_str(), "raw"),
        ("status", "length-prefixed", "", "raw"),
        ("proxy", "line", upstream, "raw"),
    ] {
        let (config, at) = framed(&dir, plugin, framing, extra);
        assert_eq!(
            refused(&config),
            format!(
                "{at}: handler `e`: framing = \"{framing}\": plugin {plugin} works only with framing = \"{only}\"; remove the key (its default is \"{only}\")"
            )
        );
        // Its own framing, written out, is fine.
        let (config, _) = framed(&dir, plugin, only, extra);
        checks_ok(&config);
    }
    // echo reads any.
    for framing in ["raw", "line", "length-prefixed"] {
        let (config, _) = framed(&dir, "echo", framing, "");
        checks_ok(&config);
    }
}

#[test]
fn a_c_plugin_declares_its_framings_in_its_info() {
    let dir = TempDir::new("setup-framing-c");
    let hooks = ".on_open = greet, .on_close = bye,";
    let liner = c_plugin_with(
        &dir,
        "liner",
        hooks,
        ".default_framing = LOOPD_FRAMING_LINE, .framings = LOOPD_FRAMING_BIT(LOOPD_FRAMING_LINE) | LOOPD_FRAMING_BIT(LOOPD_FRAMING_LENGTH_PREFIXED),",
    );
    let liner = liner.to_str().unwrap();
    let (config, at) = framed(&dir, liner, "raw", "");
    assert_eq!(
        refused(&config),
        format!(
            "{at}: handler `e`: framing = \"raw\": plugin liner works only with framing = \"line\" or \"length-prefixed\"; remove the key (its default is \"line\")"
        )
    );
    let (config, _) = framed(&dir, liner, "length-prefixed", "");
    checks_ok(&config);

    // No default_framing: an entry without the key gets raw.
    let plain = c_plugin_with(
        &dir,
        "plain",
        hooks,
        ".framings = LOOPD_FRAMING_BIT(LOOPD_FRAMING_RAW) | LOOPD_FRAMING_BIT(LOOPD_FRAMING_LINE),",
    );
    let plain = plain.to_str().unwrap();
    let (config, at) = framed(&dir, plain, "length-prefixed", "");
    assert_eq!(
        refused(&config),
        format!(
            "{at}: handler `e`: framing = \"length-prefixed\": plugin plain works only with framing = \"raw\" or \"line\"; remove the key (without it the entry gets \"raw\")"
        )
    );

    // A plugin whose framings leave out what an entry without the key
    // gets is broken itself: refused at its `plugin` key, for any entry.
    let broken = c_plugin_with(
        &dir,
        "broken",
        hooks,
        ".framings = LOOPD_FRAMING_BIT(LOOPD_FRAMING_LINE),",
    );
    let (config, at) = one_handler(&dir, broken.to_str().unwrap(), "tcp://127.0.0.1:0", "");
    assert_eq!(
        refused(&config),
        format!(
            "{at}: handler `e`: plugin {}: plugin info framings 0x4 (\"line\") does not include \"raw\", what an entry without a framing key gets (it sets no default_framing)",
            broken.display()
        )
    );
}

/// A handler that reads length-prefixed frames only.
struct Frames;

impl loopd_handler_api::Handler for Frames {
    type Config = loopd_handler_api::NoConfig;
    type Conn = ();
    const FRAMING: loopd_handler_api::Framing = loopd_handler_api::Framing::LengthPrefixed;
    const FRAMINGS: &'static [loopd_handler_api::Framing] =
        &[loopd_handler_api::Framing::LengthPrefixed];

    fn create(
        _: &loopd_handler_api::Ctx,
        _: &str,
        _: loopd_handler_api::NoConfig,
    ) -> Result<Self, String> {
        Ok(Frames)
    }
}

/// A linked handler's `Handler::FRAMINGS` hold for a handler made in code.
#[test]
fn a_handler_added_in_code_with_a_framing_it_cannot_read_is_refused() {
    let spec = || HandlerSpec::linked::<Frames>("f").listen("tcp://127.0.0.1:0");
    let err = Runtime::builder()
        .handler(spec().framing(loopd::config::FramingKind::Line))
        .check()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "handler `f`: framing = \"line\": plugin {} works only with framing = \"length-prefixed\"; leave the framing unset (its default is \"length-prefixed\")",
            std::any::type_name::<Frames>()
        )
    );
    Runtime::builder().handler(spec()).check().unwrap();
}

/// A reload that changes chat's framing to one it cannot read is refused,
/// and chat keeps serving its room.
#[test]
fn a_reload_to_a_framing_the_plugin_cannot_read_is_refused() {
    let base = "[[handler]]\nname = \"c\"\nplugin = \"chat\"\nlisten = [\"tcp://127.0.0.1:0\"]\n";
    let loopd = Loopd::start(base);
    loopd.expect_error("reload failed");
    let mut alice = LineClient::connect(loopd.tcp("c"));
    assert!(alice.recv().starts_with("* welcome"));
    let text = format!("{base}framing = \"raw\"\n");
    let path = loopd.dir.join("loopd.toml");
    std::fs::write(&path, &text).unwrap();
    loopd.signal(libc::SIGHUP);
    assert!(
        loopd.wait_for_log("reload failed", TIMEOUT),
        "{}",
        loopd.logs()
    );
    let (line, col) = locate(&text, "\"raw\"");
    let why = format!(
        "{}:{line}:{col}: handler `c`: framing = \"raw\": plugin chat works only with framing = \"line\"",
        path.display()
    );
    let logs = loopd.logs();
    let failed = logs.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(failed.contains(&why), "{why}\nnot in\n{logs}");
    assert!(!logs.contains("reloaded: "), "{logs}");
    // The room is still there, and still reads lines.
    let mut bob = LineClient::connect(loopd.tcp("c"));
    assert!(bob.recv().starts_with("* welcome"));
    alice.send("still one line");
    loop {
        let line = bob.recv();
        if line.contains("still one line") {
            break;
        }
        assert!(line.starts_with("* "), "{line}");
    }
}

/// Takes datagrams only, and tries to open a connection in `create`: the
/// instance is made only if that is refused.
struct DatagramsOnly;

#[derive(serde::Deserialize)]
struct Target {
    target: String,
}

impl loopd_handler_api::Handler for DatagramsOnly {
    type Config = Target;
    type Conn = ();
    const STREAMS: bool = false;

    fn create(ctx: &loopd_handler_api::Ctx, _: &str, config: Target) -> Result<Self, String> {
        match ctx.connect(&config.target) {
            Err(loopd_handler_api::Error::Unsupported) => Ok(DatagramsOnly),
            other => Err(format!("connect gave {other:?}")),
        }
    }
}

/// A handler without connection hooks cannot open a connection: nothing
/// would hear that it opened, closed or brought data.
#[test]
fn a_handler_without_connection_hooks_cannot_connect() {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let url = format!("tcp://{}", target.local_addr().unwrap());
    let rt = Runtime::builder()
        .handler(
            HandlerSpec::linked::<DatagramsOnly>("d")
                .config_json(format!("{{\"target\": \"{url}\"}}"))
                .listen("udp://127.0.0.1:0"),
        )
        .build();
    assert!(rt.is_ok(), "{:?}", rt.err());
    let mut rt = rt.unwrap();
    rt.run_once(Some(std::time::Duration::from_millis(50)))
        .unwrap();
    assert_eq!(
        target.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a connection was opened"
    );
}
