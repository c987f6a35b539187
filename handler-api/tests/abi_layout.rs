//! Checks that `src/abi.rs` mirrors `include/loopd.h` exactly.
//!
//! The test writes a C program that includes `loopd.h` and prints the size of
//! every ABI struct, the offset and size of every field and the value of every
//! constant, compiles it with gcc in strict C99 mode, runs it and compares the
//! output key-for-key with the same facts computed on the Rust side.
//!
//! Completeness, so a change made on one side only cannot slip through:
//! - a field added to a Rust struct breaks the exhaustive destructuring in
//!   `abi_structs!` (a compile error) until it is listed here, and a listed
//!   field the header lacks makes the C program fail to compile;
//! - a field added to a C struct only changes its size, and the fields must
//!   tile every struct exactly (the header uses explicit `reserved` fields
//!   instead of implicit padding), so an unlisted field is reported;
//! - the names of all `#define LOOPD_*` macros and `typedef struct loopd_*`
//!   in the header, and of all `pub const LOOPD_*` and `pub struct loopd_*`
//!   in abi.rs, must equal the lists checked here.
//!
//! gcc (and g++ for the C++ check) must be installed; without them the tests
//! fail, they do not skip.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use loopd_handler_api::abi;

/// Warnings are errors: the header must compile cleanly under these.
const STRICT_FLAGS: &[&str] = &["-Wall", "-Wextra", "-Werror", "-pedantic"];

/// Rust-only constants that have no macro in loopd.h.
const RUST_ONLY_CONSTS: &[&str] = &[];

/// Macros in loopd.h that are not ABI values: the include guard and the
/// visibility attribute.
const HEADER_ONLY_MACROS: &[&str] = &["LOOPD_H", "LOOPD_EXPORT"];

/// Structs without a layout to compare: `loopd_ctx` is opaque (incomplete in
/// C, zero-sized in Rust).
const OPAQUE_STRUCTS: &[&str] = &["loopd_ctx"];

struct FieldLayout {
    name: &'static str,
    offset: usize,
    size: usize,
}

struct StructLayout {
    name: &'static str,
    size: usize,
    fields: Vec<FieldLayout>,
}

/// The size of a field's type, given a projection to the field.
fn field_size<T, F>(_project: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Lists every ABI struct with all of its fields, in declaration order.
macro_rules! abi_structs {
    ($($ty:ident { $($field:ident),+ $(,)? })+) => {
        fn abi_structs() -> Vec<StructLayout> {
            $(
                // Exhaustive (no `..`): a compile error here ("pattern
                // does not mention field" or "pattern requires `..`") means
                // abi.rs has a field that is not listed in `abi_structs!`.
                let _exhaustive = |value: &abi::$ty| {
                    let abi::$ty { $($field: _),+ } = value;
                };
            )+
            vec![$(
                StructLayout {
                    name: stringify!($ty),
                    size: size_of::<abi::$ty>(),
                    fields: vec![$(
                        FieldLayout {
                            name: stringify!($field),
                            offset: offset_of!(abi::$ty, $field),
                            size: field_size(|s: &abi::$ty| &s.$field),
                        }
                    ),+],
                }
            ),+]
        }
    };
}

abi_structs! {
    loopd_bytes { ptr, len }
    loopd_addr { family, port, scope_id, ip }
    loopd_datagram { addr, status, reserved, data, len }
    loopd_conn_info { struct_size, transport, origin, framing, peer, local, endpoint }
    loopd_listen_info { struct_size, transport, local, url }
    loopd_host_api {
        struct_size, abi_major, abi_minor, reserved, version, log, send, sendv, close,
        send_datagram, timer_set, timer_cancel, connect, now_ms, output_queued, status_str,
        log_to, send_file, pause_read, resume_read, shutdown_write, connect_with, post,
        watch_fd, watch_modify, watch_remove, timer_repeat, post_siblings, worker_info,
        stats_json, metric_declare, metric_series, metric_update, peer_subject,
        peer_certificate, send_datagrams,
    }
    loopd_vtable {
        struct_size, reserved, create, destroy, on_open, on_data, on_eof, on_writable,
        on_close, on_datagram, on_timer, on_shutdown, on_listen, on_oversize, on_partial,
        on_message, on_fd, on_datagrams,
    }
    loopd_connect_options {
        struct_size, framing, max_frame, output_high_watermark, output_low_watermark, flags,
        reserved, server_name,
    }
    loopd_plugin_info {
        struct_size, abi_major, abi_minor, min_host_minor, name, version, default_framing,
        reserved, vtable, alpn, framings, reserved2,
    }
}

/// Lists every integer constant mirrored in abi.rs, with its value.
macro_rules! abi_consts {
    ($($name:ident),+ $(,)?) => {
        fn abi_consts() -> Vec<(&'static str, i64)> {
            vec![$((stringify!($name), abi::$name as i64)),+]
        }
    };
}

abi_consts! {
    LOOPD_ABI_MAJOR,
    LOOPD_ABI_MINOR,
    LOOPD_OK,
    LOOPD_ERR_AGAIN,
    LOOPD_ERR_NO_SUCH_CONN,
    LOOPD_ERR_CLOSED,
    LOOPD_ERR_INVALID,
    LOOPD_ERR_UNSUPPORTED,
    LOOPD_ERR_LIMIT,
    LOOPD_ERR_IO,
    LOOPD_ERR_WRONG_THREAD,
    LOOPD_ERR_NO_SUCH_TIMER,
    LOOPD_ERR_HANDLER,
    LOOPD_ERR_NO_SUCH_INSTANCE,
    LOOPD_ERR_FULL,
    LOOPD_METRIC_COUNTER,
    LOOPD_METRIC_GAUGE,
    LOOPD_METRIC_HISTOGRAM,
    LOOPD_METRIC_ADD,
    LOOPD_METRIC_SET,
    LOOPD_METRIC_OBSERVE,
    LOOPD_METRIC_MAX_LABELS,
    LOOPD_FD_READABLE,
    LOOPD_FD_WRITABLE,
    LOOPD_FD_HUP,
    LOOPD_CONNECT_KEEP_READING,
    LOOPD_AF_UNSPEC,
    LOOPD_AF_INET,
    LOOPD_AF_INET6,
    LOOPD_AF_UNIX,
    LOOPD_TRANSPORT_TCP,
    LOOPD_TRANSPORT_UNIX,
    LOOPD_TRANSPORT_UDP,
    LOOPD_TRANSPORT_TLS,
    LOOPD_ORIGIN_ACCEPTED,
    LOOPD_ORIGIN_CONNECTED,
    LOOPD_FRAMING_DEFAULT,
    LOOPD_FRAMING_RAW,
    LOOPD_FRAMING_LINE,
    LOOPD_FRAMING_LENGTH_PREFIXED,
    LOOPD_CLOSE_FLUSH,
    LOOPD_CLOSE_ABORT,
    LOOPD_CLOSE_RESET,
    LOOPD_REASON_PEER,
    LOOPD_REASON_LOCAL,
    LOOPD_REASON_ERROR,
    LOOPD_REASON_FRAME_TOO_BIG,
    LOOPD_REASON_HANDLER,
    LOOPD_REASON_SHUTDOWN,
    LOOPD_REASON_CONNECT_FAILED,
    LOOPD_REASON_TIMEOUT,
    LOOPD_REASON_IDLE,
    LOOPD_REASON_LIMIT,
    LOOPD_EOF_CLOSE,
    LOOPD_EOF_KEEP_OPEN,
    LOOPD_OVERSIZE_CLOSE,
    LOOPD_OVERSIZE_SKIP,
    LOOPD_LOG_ERROR,
    LOOPD_LOG_WARN,
    LOOPD_LOG_INFO,
    LOOPD_LOG_DEBUG,
    LOOPD_LOG_TRACE,
    LOOPD_VTABLE_V1_0_SIZE,
    LOOPD_PLUGIN_INFO_V1_0_SIZE,
    LOOPD_HOST_API_V1_0_SIZE,
    LOOPD_CONN_INFO_V1_0_SIZE,
}

// Output keys, shared by the C program and the Rust side:
//   `loopd_vtable 96`              sizeof the struct
//   `loopd_vtable.create 8`        offsetof the field
//   `sizeof loopd_vtable.create 8` sizeof the field
//   `LOOPD_OK 0`                   a constant
fn size_key(name: &str) -> String {
    name.to_owned()
}
fn offset_key(ty: &str, field: &str) -> String {
    format!("{ty}.{field}")
}
fn field_size_key(ty: &str, field: &str) -> String {
    format!("sizeof {ty}.{field}")
}

fn entry_symbol_rust() -> String {
    let bytes = abi::LOOPD_ENTRY_SYMBOL;
    let without_nul = bytes
        .strip_suffix(b"\0")
        .unwrap_or_else(|| panic!("abi::LOOPD_ENTRY_SYMBOL must end with a NUL: {bytes:?}"));
    assert!(
        !without_nul.contains(&0),
        "abi::LOOPD_ENTRY_SYMBOL has an interior NUL: {bytes:?}"
    );
    String::from_utf8(without_nul.to_vec()).expect("abi::LOOPD_ENTRY_SYMBOL is not UTF-8")
}

/// What the C program must print, computed from abi.rs.
fn rust_facts() -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let mut insert = |key: String, value: String| {
        assert!(
            facts.insert(key.clone(), value).is_none(),
            "{key} listed twice"
        );
    };
    for s in abi_structs() {
        insert(size_key(s.name), s.size.to_string());
        for f in &s.fields {
            insert(offset_key(s.name, f.name), f.offset.to_string());
            insert(field_size_key(s.name, f.name), f.size.to_string());
        }
    }
    for (name, value) in abi_consts().into_iter().chain(abi_macros()) {
        insert(name.to_owned(), value.to_string());
    }
    insert("LOOPD_ENTRY_SYMBOL".to_owned(), entry_symbol_rust());
    facts
}

/// loopd.h's function-like macros, as C expressions, with what their Rust
/// mirrors give for the same arguments.
fn abi_macros() -> Vec<(&'static str, i64)> {
    vec![
        (
            "LOOPD_FRAMING_BIT(LOOPD_FRAMING_RAW)",
            abi::LOOPD_FRAMING_BIT(abi::LOOPD_FRAMING_RAW).into(),
        ),
        (
            "LOOPD_FRAMING_BIT(LOOPD_FRAMING_LINE)",
            abi::LOOPD_FRAMING_BIT(abi::LOOPD_FRAMING_LINE).into(),
        ),
        (
            "LOOPD_FRAMING_BIT(LOOPD_FRAMING_LENGTH_PREFIXED)",
            abi::LOOPD_FRAMING_BIT(abi::LOOPD_FRAMING_LENGTH_PREFIXED).into(),
        ),
    ]
}

/// The C program that prints the same facts from loopd.h.
fn c_program() -> String {
    let mut c = String::from(
        "/* Generated by handler-api/tests/abi_layout.rs. */\n\
         #include <stddef.h>\n\
         #include <stdio.h>\n\
         #include \"loopd.h\"\n\
         \n\
         int main(void)\n\
         {\n",
    );
    for s in abi_structs() {
        let ty = s.name;
        c.push_str(&format!(
            "    printf(\"%s %zu\\n\", \"{}\", sizeof({ty}));\n",
            size_key(ty)
        ));
        for f in &s.fields {
            let field = f.name;
            c.push_str(&format!(
                "    printf(\"%s %zu\\n\", \"{}\", offsetof({ty}, {field}));\n",
                offset_key(ty, field)
            ));
            c.push_str(&format!(
                "    printf(\"%s %zu\\n\", \"{}\", sizeof((({ty} *)0)->{field}));\n",
                field_size_key(ty, field)
            ));
        }
    }
    for (name, _) in abi_consts().into_iter().chain(abi_macros()) {
        c.push_str(&format!(
            "    printf(\"%s %lld\\n\", \"{name}\", (long long)({name}));\n"
        ));
    }
    c.push_str("    printf(\"%s %s\\n\", \"LOOPD_ENTRY_SYMBOL\", LOOPD_ENTRY_SYMBOL);\n");
    c.push_str("    return 0;\n}\n");
    c
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

fn header_path() -> PathBuf {
    include_dir().join("loopd.h")
}

fn abi_rs_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join("abi.rs")
}

/// A fresh directory under the system temp dir, removed on success and kept
/// (for inspection) when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("loopd-abi-layout-{}-{tag}-{n}", std::process::id()));
        // A leftover from an earlier run with the same pid is stale.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs a command; a missing program or a failure is a test failure that
/// shows the command line and its output, plus `hint` for a failure.
fn run(program: &str, args: &[&str], what: &str, hint: &str) -> Output {
    let shown = format!("{program} {}", args.join(" "));
    let output = match Command::new(program).args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{program}` was not found on PATH, but the ABI layout test needs it to {what} \
             (install it, e.g. `apt-get install gcc g++`); this test does not skip"
        ),
        Err(e) => panic!("cannot run `{shown}`: {e}"),
    };
    assert!(
        output.status.success(),
        "`{shown}` failed ({}) while trying to {what}{hint}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("path is not UTF-8: {}", path.display()))
}

/// Compiles the generated program against loopd.h and returns what it printed.
fn c_facts() -> BTreeMap<String, String> {
    let dir = TempDir::new("layout");
    let src = dir.path().join("layout.c");
    let exe = dir.path().join("layout");
    fs::write(&src, c_program()).expect("cannot write layout.c");
    let include = include_dir();
    let mut args = vec!["-std=c99"];
    args.extend_from_slice(STRICT_FLAGS);
    args.extend_from_slice(&[
        "-I",
        path_str(&include),
        "-o",
        path_str(&exe),
        path_str(&src),
    ]);
    run(
        "gcc",
        &args,
        "compile the layout probe against loopd.h",
        " (does the header lack a field or constant that abi.rs has?)",
    );
    let output = run(path_str(&exe), &[], "run the compiled layout probe", "");
    let stdout = String::from_utf8(output.stdout).expect("layout probe printed non-UTF-8");

    let mut facts = BTreeMap::new();
    for line in stdout.lines() {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("unparsable line from the layout probe: {line:?}"));
        let previous = facts.insert(key.to_owned(), value.to_owned());
        assert!(previous.is_none(), "the layout probe printed {key} twice");
    }
    facts
}

#[test]
fn layout_and_constants_match_header() {
    let expected = rust_facts();
    let actual = c_facts();

    let mut problems = Vec::new();
    for (key, rust) in &expected {
        match actual.get(key) {
            Some(c) if c == rust => {}
            Some(c) => problems.push(format!("{key}: loopd.h says {c}, abi.rs says {rust}")),
            None => problems.push(format!(
                "{key}: not printed by the C program (abi.rs says {rust})"
            )),
        }
    }
    for (key, c) in &actual {
        if !expected.contains_key(key) {
            problems.push(format!(
                "{key}: printed by the C program ({c}) but not checked on the Rust side"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "abi.rs does not match loopd.h ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    // The maps are equal key-for-key: every printed line was checked.
    assert_eq!(expected, actual);
}

/// The listed fields must tile each struct: no implicit padding and no
/// unlisted field hiding anywhere, checked on the C side (which this test
/// does not otherwise enumerate) and the Rust side alike.
#[test]
fn fields_tile_every_struct() {
    let c = c_facts();
    let c_value = |key: &str| -> usize {
        c.get(key)
            .unwrap_or_else(|| panic!("the C program did not print {key}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key}: not a number: {e}"))
    };
    let mut problems = Vec::new();
    for s in abi_structs() {
        let sides = [
            (
                "abi.rs",
                s.size,
                s.fields
                    .iter()
                    .map(|f| (f.name, f.offset, f.size))
                    .collect::<Vec<_>>(),
            ),
            (
                "loopd.h",
                c_value(&size_key(s.name)),
                s.fields
                    .iter()
                    .map(|f| {
                        (
                            f.name,
                            c_value(&offset_key(s.name, f.name)),
                            c_value(&field_size_key(s.name, f.name)),
                        )
                    })
                    .collect(),
            ),
        ];
        for (side, size, mut fields) in sides {
            fields.sort_by_key(|&(_, offset, _)| offset);
            let mut end = 0;
            for (field, offset, field_size) in fields {
                if offset != end {
                    problems.push(format!(
                        "{side}: {}.{field} is at offset {offset} but the previous field ends at \
                         {end} (implicit padding or a field this test does not list)",
                        s.name
                    ));
                }
                end = offset + field_size;
            }
            if end != size {
                problems.push(format!(
                    "{side}: the listed fields of {} end at {end} but sizeof is {size} \
                     (trailing padding or a field this test does not list)",
                    s.name
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "ABI structs must consist of the listed fields only, without implicit padding \
         (use an explicit `reserved` field):\n  {}",
        problems.join("\n  ")
    );
}

/// The header and abi.rs declare exactly the constants and structs checked
/// here: a macro or struct added to one file only is reported.
#[test]
fn every_declared_item_is_checked() {
    let header = fs::read_to_string(header_path()).expect("cannot read loopd.h");
    let abi_rs = fs::read_to_string(abi_rs_path()).expect("cannot read abi.rs");

    let ident_after = |line: &str, prefix: &str| -> Option<String> {
        let rest = line.trim_start().strip_prefix(prefix)?;
        let ident: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        (!ident.is_empty()).then_some(ident)
    };
    let collect = |text: &str, prefix: &str, wanted: &str, skip: &[&str]| -> BTreeSet<String> {
        text.lines()
            .filter_map(|line| ident_after(line, prefix))
            .filter(|ident| ident.starts_with(wanted) && !skip.contains(&ident.as_str()))
            .collect()
    };

    let mut consts: BTreeSet<String> = abi_consts()
        .into_iter()
        .map(|(name, _)| name.to_owned())
        .collect();
    consts.insert("LOOPD_ENTRY_SYMBOL".to_owned());
    // A function-like macro's mirror is a `pub const fn` of its name.
    consts.extend(
        abi_macros()
            .into_iter()
            .filter_map(|(expr, _)| expr.split('(').next().map(str::to_owned)),
    );
    let structs: BTreeSet<String> = abi_structs()
        .into_iter()
        .map(|s| s.name.to_owned())
        .collect();

    let header_consts = collect(&header, "#define", "LOOPD_", HEADER_ONLY_MACROS);
    let mut rust_consts = collect(&abi_rs, "pub const", "LOOPD_", RUST_ONLY_CONSTS);
    rust_consts.extend(collect(&abi_rs, "pub const fn", "LOOPD_", RUST_ONLY_CONSTS));
    let header_structs = collect(&header, "typedef struct", "loopd_", OPAQUE_STRUCTS);
    let rust_structs = collect(&abi_rs, "pub struct", "loopd_", OPAQUE_STRUCTS);

    let mut problems = Vec::new();
    for (what, found, checked) in [
        ("#define in loopd.h", &header_consts, &consts),
        ("pub const in abi.rs", &rust_consts, &consts),
        ("typedef struct in loopd.h", &header_structs, &structs),
        ("pub struct in abi.rs", &rust_structs, &structs),
    ] {
        for name in found.difference(checked) {
            problems.push(format!("{what} {name} is not checked by this test"));
        }
        for name in checked.difference(found) {
            problems.push(format!(
                "{name} is checked by this test but is not a {what}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The v1.0 minimum sizes equal where the last v1.0 field ends in
/// loopd.h, which is also the C sizeof as long as no minor version has
/// appended fields.
#[test]
fn v1_0_size_constants_match_c_sizeof() {
    let c = c_facts();
    let c_value = |key: &str| -> usize {
        c.get(key)
            .unwrap_or_else(|| panic!("the C program did not print {key}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key}: not a number: {e}"))
    };
    for (name, rust, ty, last_v1_0_field) in [
        (
            "LOOPD_VTABLE_V1_0_SIZE",
            abi::LOOPD_VTABLE_V1_0_SIZE,
            "loopd_vtable",
            "on_shutdown",
        ),
        (
            "LOOPD_PLUGIN_INFO_V1_0_SIZE",
            abi::LOOPD_PLUGIN_INFO_V1_0_SIZE,
            "loopd_plugin_info",
            "vtable",
        ),
        (
            "LOOPD_HOST_API_V1_0_SIZE",
            abi::LOOPD_HOST_API_V1_0_SIZE,
            "loopd_host_api",
            "status_str",
        ),
        (
            "LOOPD_CONN_INFO_V1_0_SIZE",
            abi::LOOPD_CONN_INFO_V1_0_SIZE,
            "loopd_conn_info",
            "endpoint",
        ),
    ] {
        let v1_0_end = c_value(&offset_key(ty, last_v1_0_field))
            + c_value(&field_size_key(ty, last_v1_0_field));
        assert_eq!(
            rust, v1_0_end,
            "abi::{name} is {rust} but the v1.0 {ty} in loopd.h ends at {v1_0_end} \
             (offsetof + sizeof of {last_v1_0_field})"
        );
        if abi::LOOPD_ABI_MINOR == 0 {
            let c_size = c_value(&size_key(ty));
            assert_eq!(
                rust, c_size,
                "abi::{name} is {rust} but sizeof({ty}) in loopd.h is {c_size}"
            );
        }
    }
}

/// A translation unit that includes only loopd.h and uses a few of its types,
/// macros and the entry declaration.
const STANDALONE_SOURCE: &str = r#"#include "loopd.h"
#include "loopd.h" /* the include guard must make this a no-op */

size_t loopd_header_probe(const loopd_plugin_info *info,
                          const loopd_host_api *host,
                          const loopd_conn_info *conn);

size_t loopd_header_probe(const loopd_plugin_info *info,
                          const loopd_host_api *host,
                          const loopd_conn_info *conn)
{
    loopd_plugin_entry_v1_fn entry = loopd_plugin_entry_v1;
    loopd_bytes part;
    size_t total = sizeof(loopd_vtable) + sizeof(loopd_addr);
    part.ptr = NULL;
    part.len = 0;
    (void)entry;
    if (info != NULL && info->vtable != NULL && info->vtable->on_data != NULL)
        total += info->vtable->struct_size;
    if (host != NULL && host->sendv != NULL)
        total += (size_t)host->abi_major + part.len;
    if (conn != NULL && conn->peer.family == LOOPD_AF_INET)
        total += conn->peer.port;
    return total + (size_t)(LOOPD_ERR_AGAIN < 0) + sizeof(LOOPD_ENTRY_SYMBOL);
}
"#;

/// The header alone is a valid translation unit in C99, C11 and C++11 under
/// strict warnings, and its include guard works.
#[test]
fn header_compiles_standalone_in_c_and_cpp() {
    let dir = TempDir::new("standalone");
    let src = dir.path().join("standalone.c");
    fs::write(&src, STANDALONE_SOURCE).expect("cannot write standalone.c");

    let include = include_dir();
    for (compiler, std, extra) in [
        ("gcc", "-std=c99", &[][..]),
        ("gcc", "-std=c11", &[][..]),
        ("g++", "-std=c++11", &["-x", "c++"][..]),
    ] {
        let obj = dir.path().join(format!("standalone-{compiler}{std}.o"));
        let mut args = vec![std];
        args.extend_from_slice(STRICT_FLAGS);
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "-I",
            path_str(&include),
            "-c",
            "-o",
            path_str(&obj),
            path_str(&src),
        ]);
        run(
            compiler,
            &args,
            &format!("compile loopd.h on its own as {std}"),
            "",
        );
    }
}
