//! Broken plugins are refused with one clear error that names the config
//! location of the `plugin` key, the handler, the library path and the
//! specific reason, before anything listens.
//!
//! Every C fixture in tests/fixtures/c/ (see its README) is compiled here,
//! into a temp dir, and referenced by absolute path. Each is checked with
//! `loopd check <config>` and again with `loopd <config>` (run mode), which
//! must fail with the same message, exit 1, and never report a listener.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use loopd_handler_api::abi;

/// `ABI 1.0`, as loopd names its own version.
fn host_abi() -> String {
    format!("ABI {}.{}", abi::LOOPD_ABI_MAJOR, abi::LOOPD_ABI_MINOR)
}

/// Compiles tests/fixtures/c/NAME.c into `dir`/NAME.so.
fn fixture(dir: &TempDir, name: &str) -> PathBuf {
    let src = root().join("tests/fixtures/c").join(format!("{name}.c"));
    assert!(src.exists(), "missing fixture {}", src.display());
    let so = dir.join(&format!("{name}.so"));
    compile_c_plugin(&src, &so);
    so
}

/// Writes C source `text` into `dir`/NAME.c and compiles it to NAME.so.
fn inline_plugin(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let src = dir.join(&format!("{name}.c"));
    std::fs::write(&src, text).unwrap();
    let so = dir.join(&format!("{name}.so"));
    compile_c_plugin(&src, &so);
    so
}

/// A config whose first handler (`echo`, a good plugin on port 0) comes
/// before the handler `broken` under test, so run mode would have something
/// to report as listening if it listened before loading every plugin.
fn broken_config(plugin: &str, extra: &str) -> String {
    format!(
        r#"# plugin error test
[runtime]
shutdown_timeout_ms = 1000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "broken"
plugin = "{plugin}"
listen = ["tcp://127.0.0.1:0"]
{extra}
"#
    )
}

/// The text of the single ERROR log line (after `ERROR loopd] `), checking
/// that there is exactly one.
fn single_error(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one ERROR line, stderr:\n{stderr}"
    );
    let line = errors[0];
    match line.split_once("] ") {
        Some((_, msg)) => msg.to_string(),
        None => line.to_string(),
    }
}

/// Checks that `config` is refused by `loopd check` and by `loopd <config>`
/// (run mode) with the same single error, exit status 1, nothing printed as
/// ok and nothing listening. Returns the error message.
fn refused(config: &Path) -> String {
    let cfg = config.to_str().unwrap();

    let out = run_loopd(&["check", cfg]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "loopd check should exit 1\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("ok"),
        "check printed ok for a broken config:\n{stdout}"
    );
    let checked = single_error(&stderr);

    let out = run_loopd(&[cfg]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "loopd <config> should exit 1\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("listening on") && !stderr.contains(" ready: "),
        "run mode listened before refusing the plugin:\n{stderr}"
    );
    let ran = single_error(&stderr);
    assert_eq!(checked, ran, "check and run mode disagree");
    checked
}

/// Compiles `name`, puts it in a config as the handler `broken`, and returns
/// the refusal, after checking its prefix: `CONFIG:LINE:COL: handler
/// `broken`: plugin PATH: `.
fn refused_fixture(name: &str) -> String {
    let dir = TempDir::new(&format!("plugin-{name}"));
    let so = fixture(&dir, name);
    refused_path(&dir, &so, "")
}

fn refused_path(dir: &TempDir, so: &Path, extra: &str) -> String {
    let text = broken_config(so.to_str().unwrap(), extra);
    let config = write_config(dir, &text);
    let (line, col) = locate(&text, &format!("\"{}\"", so.display()));
    let msg = refused(&config);
    let prefix = format!(
        "{}:{line}:{col}: handler `broken`: plugin {}: ",
        config.display(),
        so.display()
    );
    assert!(
        msg.starts_with(&prefix),
        "expected the error to start with\n  {prefix}\ngot\n  {msg}"
    );
    msg[prefix.len()..].to_string()
}

#[track_caller]
fn assert_has(reason: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            reason.contains(n),
            "expected `{n}` in the reason:\n  {reason}"
        );
    }
}

#[test]
fn missing_entry_symbol() {
    let why = refused_fixture("no_entry");
    assert_has(&why, &["no entry symbol loopd_plugin_entry_v1"]);
    // Not mistaken for a library of another ABI major.
    assert!(!why.contains("built for handler ABI"), "{why}");
}

#[test]
fn wrong_major_names_both_versions() {
    let why = refused_fixture("wrong_major");
    assert_has(&why, &["built for handler ABI 2.0", &host_abi()]);
}

#[test]
fn min_host_minor_too_high_says_upgrade_loopd() {
    let why = refused_fixture("min_host_minor");
    let needed = format!("ABI {}.99", abi::LOOPD_ABI_MAJOR);
    assert_has(&why, &[&needed, &host_abi(), "upgrade loopd"]);
}

#[test]
fn entry_returning_null() {
    let why = refused_fixture("null_entry");
    assert_has(&why, &["loopd_plugin_entry_v1 returned NULL"]);
}

#[test]
fn undersized_plugin_info() {
    let why = refused_fixture("undersized_info");
    let min = format!("{} bytes", abi::LOOPD_PLUGIN_INFO_V1_0_SIZE);
    assert_has(&why, &["plugin info is 8 bytes", "smaller than", &min]);
}

#[test]
fn undersized_vtable() {
    let why = refused_fixture("undersized_vtable");
    let min = format!("{} bytes", abi::LOOPD_VTABLE_V1_0_SIZE);
    assert_has(&why, &["vtable is 16 bytes", "smaller than", &min]);
}

#[test]
fn null_vtable() {
    let why = refused_fixture("null_vtable");
    assert_has(&why, &["NULL vtable"]);
}

#[test]
fn create_failure_carries_the_handlers_reason() {
    let why = refused_fixture("create_fails");
    assert_eq!(
        why,
        "create failed: refusing to start: no widgets configured"
    );
}

#[test]
fn create_failure_without_a_reason_gets_the_status_text() {
    let dir = TempDir::new("plugin-silent-create");
    let so = inline_plugin(
        &dir,
        "silent_create",
        r#"#include "loopd.h"
static int32_t silent_create(const loopd_host_api *host, loopd_ctx *ctx,
                             const char *name, const char *json,
                             void **instance_out, char *err, size_t err_cap)
{
    (void)host; (void)ctx; (void)name; (void)json; (void)instance_out;
    (void)err; (void)err_cap;
    return LOOPD_ERR_INVALID; /* and no message */
}
/* A connection hook: the tcp:// listener fits, and create refuses. */
static void silent_close(loopd_ctx *ctx, void *inst, uint64_t conn, void *st,
                         int32_t reason)
{
    (void)ctx; (void)inst; (void)conn; (void)st; (void)reason;
}
static const loopd_vtable vt = {
    .struct_size = (uint32_t)sizeof(loopd_vtable),
    .create = silent_create,
    .on_close = silent_close,
};
static const loopd_plugin_info info = {
    .struct_size = (uint32_t)sizeof(loopd_plugin_info),
    .abi_major = LOOPD_ABI_MAJOR,
    .abi_minor = LOOPD_ABI_MINOR,
    .name = "silent-create",
    .version = "9.9.9",
    .vtable = &vt,
};
const loopd_plugin_info *loopd_plugin_entry_v1(const loopd_host_api *host)
{
    (void)host;
    return &info;
}
"#,
    );
    let why = refused_path(&dir, &so, "");
    assert_eq!(
        why,
        format!(
            "create failed: status {} ({}), and the handler gave no message",
            abi::LOOPD_ERR_INVALID,
            abi::status_str(abi::LOOPD_ERR_INVALID)
        )
    );
}

#[test]
fn missing_file() {
    let dir = TempDir::new("plugin-missing");
    let so = dir.join("nonexistent.so");
    let why = refused_path(&dir, &so, "");
    assert_eq!(why, "file not found");
}

#[test]
fn plugin_name_not_found_lists_where_it_looked() {
    let dir = TempDir::new("plugin-nosuch");
    let text = broken_config("nosuch", "");
    let config = write_config(&dir, &text);
    let (line, col) = locate(&text, "\"nosuch\"");
    let msg = refused(&config);
    let expected = format!(
        "{}:{line}:{col}: handler `broken`: plugin nosuch: not found; looked for {}",
        config.display(),
        plugin_dir().join("libloopd_nosuch.so").display()
    );
    assert!(msg.starts_with(&expected), "{msg}");
    // The tests run from a cargo target dir: the hint about `cargo run` is there.
    assert!(
        msg.ends_with("`cargo build --release` at the workspace root builds the handler plugins; `cargo run` alone does not)"),
        "{msg}"
    );
}

#[test]
fn plugin_name_not_found_with_plugin_dir_lists_both_places() {
    let dir = TempDir::new("plugin-nosuch-dir");
    let text = format!(
        r#"[runtime]
plugin_dir = "{}"

[[handler]]
name = "broken"
plugin = "no-such"
"#,
        dir.path().display()
    );
    let config = write_config(&dir, &text);
    let msg = refused(&config);
    // Dashes become underscores; plugin_dir is searched first.
    let first = dir.join("libloopd_no_such.so");
    let second = plugin_dir().join("libloopd_no_such.so");
    assert!(
        msg.contains(&format!(
            "plugin no-such: not found; looked for {}, {}",
            first.display(),
            second.display()
        )),
        "{msg}"
    );
}

#[test]
fn text_file_is_not_a_loadable_library() {
    let dir = TempDir::new("plugin-text");
    let so = dir.join("x.so");
    std::fs::write(&so, "this is not an ELF file\n").unwrap();
    let why = refused_path(&dir, &so, "");
    assert!(why.starts_with("not a loadable library: "), "{why}");
    // The dlerror() detail is kept, but the path is not repeated in it.
    assert!(why.len() > "not a loadable library: ".len(), "{why}");
    assert!(!why.contains(so.to_str().unwrap()), "{why}");
}

/// A library still being copied (the first bytes of a real plugin) killed
/// `loopd check` with SIGBUS, exit status 135 and no message: the dynamic
/// loader mapped segments past the end of the file and touched them.
#[test]
fn truncated_library_is_refused_not_a_crash() {
    build_plugins();
    let whole = std::fs::read(plugin_dir().join("libloopd_echo.so")).unwrap();
    let dir = TempDir::new("plugin-truncated");
    let so = dir.join("trunc.so");
    std::fs::write(&so, &whole[..64 * 1024]).unwrap();
    // Exit status 1 (not a signal) and the path, checked by refused_path.
    let why = refused_path(&dir, &so, "");
    assert_has(
        &why,
        &[
            "the file is truncated: a load segment ends at byte ",
            "but the file has 65536 bytes (was it still being copied?)",
        ],
    );
}

#[test]
fn library_built_for_abi_2_only() {
    let dir = TempDir::new("plugin-v2");
    let so = inline_plugin(
        &dir,
        "entry_v2",
        r#"#include "loopd.h"
/* What a plugin of a future ABI 2 would export instead of ..._v1. */
LOOPD_EXPORT const void *loopd_plugin_entry_v2(const void *host);
const void *loopd_plugin_entry_v2(const void *host)
{
    (void)host;
    return NULL;
}
"#,
    );
    let why = refused_path(&dir, &so, "");
    assert_has(
        &why,
        &[
            "no entry symbol loopd_plugin_entry_v1",
            "loopd_plugin_entry_v2",
            "built for handler ABI 2",
            &format!("speaks {}.{}", abi::LOOPD_ABI_MAJOR, abi::LOOPD_ABI_MINOR),
        ],
    );
}

#[test]
fn location_points_at_the_plugin_key_of_the_right_entry() {
    // Extra lines and indentation move the key: the location must follow.
    let dir = TempDir::new("plugin-location");
    let so = fixture(&dir, "null_entry");
    let text = format!(
        r#"
# comment

[runtime]
max_connections = 10

[[handler]]
name = "first"
plugin = "echo"

[[handler]]
name = "second"
listen = []
    plugin    =     "{}"
"#,
        so.display()
    );
    let config = write_config(&dir, &text);
    let (line, col) = locate(&text, &format!("\"{}\"", so.display()));
    assert_eq!((line, col), (14, 21), "the test's own arithmetic");
    let msg = refused(&config);
    assert!(
        msg.starts_with(&format!(
            "{}:14:21: handler `second`: plugin {}: ",
            config.display(),
            so.display()
        )),
        "{msg}"
    );
}

#[test]
fn rust_handler_panicking_in_create() {
    let dir = TempDir::new("plugin-panic");
    let text = broken_config("probe", "[handler.config]\npanic_in_create = true\n");
    let config = write_config(&dir, &text);
    let (line, col) = locate(&text, "\"probe\"");
    let msg = refused(&config);
    assert_eq!(
        msg,
        format!(
            "{}:{line}:{col}: handler `broken`: plugin {}: create failed: panicked in create: probe: panic in create",
            config.display(),
            plugin_dir().join("libloopd_probe.so").display()
        )
    );
}

#[test]
fn rust_handler_refusing_in_create() {
    let dir = TempDir::new("plugin-fail-create");
    let text = broken_config("probe", "[handler.config]\nfail_create = \"nope\"\n");
    let config = write_config(&dir, &text);
    let msg = refused(&config);
    assert!(
        msg.ends_with(&format!(
            "handler `broken`: plugin {}: create failed: nope",
            plugin_dir().join("libloopd_probe.so").display()
        )),
        "{msg}"
    );
}

#[test]
fn rust_handler_with_unknown_config_key() {
    let dir = TempDir::new("plugin-bogus-key");
    let text = broken_config("probe", "[handler.config]\nbogus = 1\n");
    let config = write_config(&dir, &text);
    let msg = refused(&config);
    assert!(
        msg.contains("handler `broken`: plugin ")
            && msg.contains("create failed: invalid config: unknown field `bogus`"),
        "{msg}"
    );
}

#[test]
fn good_plugins_load_and_are_listed() {
    let dir = TempDir::new("plugin-good");
    let good = inline_plugin(
        &dir,
        "good",
        r#"#include "loopd.h"
static const loopd_vtable vt = { .struct_size = (uint32_t)sizeof(loopd_vtable) };
static const loopd_plugin_info info = {
    .struct_size = (uint32_t)sizeof(loopd_plugin_info),
    .abi_major = LOOPD_ABI_MAJOR,
    .abi_minor = LOOPD_ABI_MINOR,
    .name = "good",
    .version = "1.2.3",
    .vtable = &vt,
};
const loopd_plugin_info *loopd_plugin_entry_v1(const loopd_host_api *host)
{
    (void)host;
    return &info;
}
"#,
    );
    let text = format!(
        r#"
[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "probe"
plugin = "probe"
listen = ["tcp://127.0.0.1:0"]
[handler.config]
greeting = "hi"

[[handler]]
name = "good-c"
plugin = "{}"
"#,
        good.display()
    );
    let config = write_config(&dir, &text);
    let out = run_loopd(&["check", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let version = env!("CARGO_PKG_VERSION");
    let expected = format!(
        "{}: ok\n  echo: echo {version} ({})\n  probe: probe {version} ({})\n  good-c: good 1.2.3 ({})\n",
        config.display(),
        plugin_dir().join("libloopd_echo.so").display(),
        plugin_dir().join("libloopd_probe.so").display(),
        good.display()
    );
    assert_eq!(stdout, expected);
    assert!(!stderr.contains(" ERROR "), "{stderr}");
}

/// A plugin built against ABI 1.0 (smaller vtable and info, no on_listen)
/// still loads and runs in this 1.1 host: minors only append.
#[test]
fn a_v1_0_plugin_runs_in_a_newer_host() {
    let dir = TempDir::new("plugin-v1-0");
    let src = dir.join("old.c");
    std::fs::write(
        &src,
        r#"#include <string.h>
#include "loopd.h"
static const loopd_host_api *h;
static int32_t create(const loopd_host_api *host, loopd_ctx *ctx, const char *name,
                      const char *cfg, void **out, char *err, size_t cap)
{
    (void)ctx; (void)name; (void)cfg; (void)err; (void)cap;
    h = host;
    *out = NULL;
    return LOOPD_OK;
}
static int32_t on_data(loopd_ctx *ctx, void *inst, uint64_t conn, void *st,
                       const uint8_t *data, size_t len)
{
    (void)inst; (void)st;
    return h->send(ctx, conn, data, len);
}
static void on_datagram(loopd_ctx *ctx, void *inst, uint64_t sock,
                        const loopd_addr *peer, const uint8_t *data, size_t len)
{
    (void)inst;
    h->send_datagram(ctx, sock, peer, data, len);
}
/* Laid out as a 1.0 plugin would be: the table ends after on_shutdown. */
static loopd_vtable vt;
static loopd_plugin_info info;
const loopd_plugin_info *loopd_plugin_entry_v1(const loopd_host_api *host)
{
    (void)host;
    memset(&vt, 0xAB, sizeof vt); /* bytes past the 1.0 size must never be read */
    vt.struct_size = LOOPD_VTABLE_V1_0_SIZE;
    vt.reserved = 0;
    vt.create = create;
    vt.destroy = NULL;
    vt.on_open = NULL;
    vt.on_data = on_data;
    vt.on_eof = NULL;
    vt.on_writable = NULL;
    vt.on_close = NULL;
    vt.on_datagram = on_datagram;
    vt.on_timer = NULL;
    vt.on_shutdown = NULL;
    info.struct_size = LOOPD_PLUGIN_INFO_V1_0_SIZE;
    info.abi_major = 1;
    info.abi_minor = 0;
    info.min_host_minor = 0;
    info.name = "old";
    info.version = "1.0.0";
    info.default_framing = LOOPD_FRAMING_RAW;
    info.vtable = &vt;
    return &info;
}
"#,
    )
    .unwrap();
    let so = dir.join("libold.so");
    compile_c_plugin(&src, &so);
    let config = format!(
        "[[handler]]\nname = \"old\"\nplugin = \"{}\"\nlisten = [\"tcp://127.0.0.1:0\", \"udp://127.0.0.1:0\"]\n",
        so.display()
    );
    let loopd = Loopd::start(&config);
    let got = echo_roundtrip(tcp(loopd.tcp("old")), b"still works");
    assert_eq!(got, b"still works");
    // Its udp:// listener gets on_datagram (on_datagrams is past its table).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(TIMEOUT)).unwrap();
    udp.send_to(b"a datagram", loopd.udp("old")).unwrap();
    let mut buf = [0u8; 64];
    let n = udp.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"a datagram");
}

// ---------------------------------------------------------------------------
// Errors about [handler.config] point at the key (issue 20, item 18)
// ---------------------------------------------------------------------------

/// The refusal of the handler `broken` (plugin `plugin`, with `table` as
/// its `[handler.config]`), which must be located at the first `needle` in
/// the config and name the dotted `key`. Returns the reason after the
/// plugin path.
fn refused_at_key(plugin: &str, table: &str, needle: &str, key: &str) -> String {
    let dir = TempDir::new("plugin-config-key");
    let text = broken_config(plugin, &format!("[handler.config]\n{table}"));
    let config = write_config(&dir, &text);
    let (line, col) = locate(&text, needle);
    let msg = refused(&config);
    let path = plugin_dir().join(format!("libloopd_{plugin}.so"));
    let prefix = format!(
        "{}:{line}:{col}: {key}: handler `broken`: plugin {}: create failed: ",
        config.display(),
        path.display()
    );
    assert!(
        msg.starts_with(&prefix),
        "expected the error to start with\n  {prefix}\ngot\n  {msg}"
    );
    msg[prefix.len()..].to_string()
}

#[test]
fn an_unknown_config_key_is_reported_at_the_key() {
    let why = refused_at_key(
        "probe",
        "greeting = \"hi\"\nbogus = 1\n",
        "bogus = 1",
        "handler[1].config.bogus",
    );
    assert!(
        why.starts_with("invalid config: unknown field `bogus`"),
        "{why}"
    );
}

#[test]
fn a_key_the_handler_names_in_its_message_is_the_location() {
    // The handler's own words: probe refuses with the text it is given.
    let why = refused_at_key(
        "probe",
        "greeting = \"hello\"\nfail_create = \"`greeting` is too long\"\n",
        "greeting = ",
        "handler[1].config.greeting",
    );
    assert_eq!(why, "`greeting` is too long");
    // The http handler checks its ranges after serde: `max_headers` = 0.
    let dir = TempDir::new("plugin-config-root");
    let root = dir.path().display().to_string();
    let why = refused_at_key(
        "http",
        &format!("root = \"{root}\"\nmax_headers = 0\n"),
        "max_headers = 0",
        "handler[1].config.max_headers",
    );
    assert!(
        why.starts_with("`max_headers` must be between 1 and "),
        "{why}"
    );
}

#[test]
fn a_missing_config_key_is_reported_at_the_table() {
    let why = refused_at_key(
        "http",
        "index = \"index.html\"\n",
        "config]",
        "handler[1].config",
    );
    assert!(why.starts_with("`root` is required"), "{why}");
}

#[test]
fn a_create_error_that_names_no_key_stays_at_the_plugin_key() {
    // Nothing in "nope" names a key of the table: the plugin line it is.
    let dir = TempDir::new("plugin-config-nokey");
    let text = broken_config("probe", "[handler.config]\nfail_create = \"nope\"\n");
    let config = write_config(&dir, &text);
    let (line, col) = locate(&text, "\"probe\"");
    let msg = refused(&config);
    assert!(
        msg.starts_with(&format!(
            "{}:{line}:{col}: handler `broken`: plugin ",
            config.display()
        )) && msg.ends_with("create failed: nope"),
        "{msg}"
    );
}

#[test]
fn a_missing_relative_plugin_path_names_the_directory_it_was_resolved_against() {
    let dir = TempDir::new("plugin-relative");
    // The config is in `conf/`; loopd runs in `dir`. A relative path is
    // resolved against the working directory, and the error says so.
    std::fs::create_dir(dir.join("conf")).unwrap();
    let text = broken_config("plugins/libnope.so", "");
    let config = dir.join("conf/loopd.toml");
    std::fs::write(&config, &text).unwrap();
    let cfg = config.to_str().unwrap();
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    for args in [vec!["check", cfg], vec![cfg]] {
        let out = run_loopd_in(Some(&cwd), &args, Some("info"));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let msg = single_error(&String::from_utf8_lossy(&out.stderr));
        let (line, col) = locate(&text, "\"plugins/libnope.so\"");
        assert_eq!(
            msg,
            format!(
                "{cfg}:{line}:{col}: handler `broken`: plugin plugins/libnope.so: file not found; a relative path is resolved against the working directory, {}, not the config file's directory (looked for {})",
                cwd.display(),
                cwd.join("plugins/libnope.so").display()
            ),
            "{args:?}"
        );
    }
}
