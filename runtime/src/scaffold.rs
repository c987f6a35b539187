//! `loopd new-handler`: a ready-to-build handler project, in Rust or in C.
//!
//! The templates live in `runtime/templates/` and are compiled into the
//! binary, so an installed loopd can scaffold without its source tree. A
//! Rust project depends on `loopd-handler-api` (and, for its tests, on
//! `loopd`) by path when a loopd checkout is at hand (the one this binary
//! was built from, or `--loopd-src`), else by version from the registry. A
//! C project gets a copy of `loopd.h`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The port the generated config listens on unless `--port` says otherwise.
pub(crate) const DEFAULT_PORT: u16 = 7200;
/// Longest handler name accepted.
const MAX_NAME: usize = 48;

const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml.tmpl");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs.tmpl");
const RUST_TEST: &str = include_str!("../templates/rust/test.rs.tmpl");
const RUST_README: &str = include_str!("../templates/rust/README.md.tmpl");
const C_SOURCE: &str = include_str!("../templates/c/handler.c.tmpl");
const C_TEST: &str = include_str!("../templates/c/test.c.tmpl");
const C_MAKEFILE: &str = include_str!("../templates/c/Makefile.tmpl");
const C_README: &str = include_str!("../templates/c/README.md.tmpl");
const CONFIG: &str = include_str!("../templates/loopd.toml.tmpl");

/// Which language to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Language {
    Rust,
    C,
}

/// Where a Rust project's loopd crates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Path dependencies on this loopd checkout.
    Checkout(PathBuf),
    /// Version dependencies from the registry (crates.io).
    Registry,
}

/// What `new-handler` was asked for.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) name: String,
    pub(crate) language: Language,
    /// The project directory (default `./NAME`).
    pub(crate) dir: Option<PathBuf>,
    /// `--loopd-src DIR`.
    pub(crate) loopd_src: Option<PathBuf>,
    /// `--registry`.
    pub(crate) registry: bool,
    /// `--port`: what the generated config listens on (1 to 65535).
    pub(crate) port: u16,
}

/// Why nothing was created.
#[derive(Debug)]
pub(crate) enum ScaffoldError {
    /// A bad argument (exit status 2).
    Usage(String),
    /// Something on disk (exit status 1).
    Failed(String),
}

impl fmt::Display for ScaffoldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScaffoldError::Usage(m) | ScaffoldError::Failed(m) => f.write_str(m),
        }
    }
}

/// Checks a handler name: it becomes the plugin name, the crate
/// `loopd-NAME`, the library `libloopd_NAME.so` (`.dylib` on macOS) and C
/// identifiers.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let rule = "use a lower-case letter, then lower-case letters, digits, `-` or `_`, e.g. `greeter` or `my-proto`";
    if name.is_empty() {
        return Err(format!("the handler name is empty ({rule})"));
    }
    if name.len() > MAX_NAME {
        return Err(format!("`{name}` is longer than {MAX_NAME} characters"));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !first_ok || !rest_ok {
        return Err(format!("`{name}` is not a valid handler name ({rule})"));
    }
    if name.ends_with(['-', '_']) {
        return Err(format!("`{name}` ends with `-` or `_` ({rule})"));
    }
    Ok(())
}

/// `my-proto` → `MyProto`; names a template already uses get a suffix.
fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    const TAKEN: &[&str] = &[
        "Handler",
        "Ctx",
        "ConnId",
        "ConnInfo",
        "CloseMode",
        "CloseReason",
        "Error",
        "Framing",
        "Deserialize",
        "Default",
        "Result",
        "String",
        "Self",
        "Ok",
        "Err",
        "Vec",
        "Option",
        "Some",
        "None",
        "Box",
        "Runtime",
        "HandlerSpec",
        "TcpStream",
        "Duration",
        "Instant",
        "BufRead",
        "BufReader",
        "Write",
    ];
    if TAKEN.contains(&camel.as_str()) {
        camel + "Handler"
    } else {
        camel
    }
}

/// The loopd checkout this binary was built from, if it is still there.
fn build_checkout() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    is_checkout(&root).then_some(root)
}

/// Whether `root` holds the loopd crates.
fn is_checkout(root: &Path) -> bool {
    let has = |manifest: &str, name: &str| {
        fs::read_to_string(root.join(manifest))
            .is_ok_and(|t| t.contains(&format!("name = \"{name}\"")))
    };
    has("handler-api/Cargo.toml", "loopd-handler-api") && has("runtime/Cargo.toml", "loopd")
}

/// A TOML string holding `path`.
fn toml_string(path: &Path) -> Result<String, ScaffoldError> {
    let text = path
        .to_str()
        .ok_or_else(|| ScaffoldError::Usage(format!("{} is not valid UTF-8", path.display())))?;
    Ok(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (key, value) in vars {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    debug_assert!(!out.contains("{{"), "unfilled placeholder in:\n{out}");
    out
}

/// The files of the project, relative to its directory, and a note on
/// where its loopd crates come from.
fn files(req: &Request) -> Result<(Vec<(PathBuf, String)>, String), ScaffoldError> {
    let name = req.name.as_str();
    let lib = name.replace('-', "_");
    if req.port == 0 {
        return Err(ScaffoldError::Usage(
            "--port 0 would listen on a different port every run; pick one from 1 to 65535".into(),
        ));
    }
    let port = req.port.to_string();
    match req.language {
        Language::Rust => {
            let source = match (&req.loopd_src, req.registry) {
                (Some(_), true) => {
                    return Err(ScaffoldError::Usage(
                        "--loopd-src and --registry exclude each other".into(),
                    ))
                }
                (Some(dir), false) => {
                    let dir = fs::canonicalize(dir).map_err(|e| {
                        ScaffoldError::Usage(format!("--loopd-src {}: {e}", dir.display()))
                    })?;
                    if !is_checkout(&dir) {
                        return Err(ScaffoldError::Usage(format!(
                            "--loopd-src {}: not a loopd checkout (no handler-api/ and runtime/ crates)",
                            dir.display()
                        )));
                    }
                    Source::Checkout(dir)
                }
                (None, true) => Source::Registry,
                (None, false) => build_checkout().map_or(Source::Registry, Source::Checkout),
            };
            let version = {
                let mut parts = loopd::VERSION.split('.');
                format!(
                    "{}.{}",
                    parts.next().unwrap_or("0"),
                    parts.next().unwrap_or("1")
                )
            };
            let (api_dep, loopd_dep, api_note, note, patch) = match &source {
                Source::Checkout(root) => (
                    format!(
                        "# The loopd checkout this project was made from.\nloopd-handler-api = {{ path = {} }}",
                        toml_string(&root.join("handler-api"))?
                    ),
                    format!("loopd = {{ path = {} }}", toml_string(&root.join("runtime"))?),
                    "is a path into the loopd checkout it was generated from; if that moves, update the paths (or use versions from crates.io: `loopd-handler-api = \"VERSION\"`).".replace("VERSION", &version),
                    format!("loopd crates by path from {}", root.display()),
                    format!(
                        "\n# The loopd checkout builds with a fix to the `polling` crate (its\n# vendor/polling/LOOPD-PATCH.md); Cargo takes patches only from the\n# project it builds, so this one names it too.\n[patch.crates-io]\npolling = {{ path = {} }}\n",
                        toml_string(&root.join("vendor/polling"))?
                    ),
                ),
                Source::Registry => (
                    format!(
                        "# From crates.io. To build against a loopd checkout instead:\n# loopd-handler-api = {{ path = \"/path/to/loopd/handler-api\" }}\nloopd-handler-api = \"{version}\""
                    ),
                    format!(
                        "# loopd = {{ path = \"/path/to/loopd/runtime\" }}\nloopd = \"{version}\""
                    ),
                    "comes from crates.io by version; to build against a loopd source checkout, replace it with `{ path = \"/path/to/loopd/handler-api\" }` (and `loopd` with `.../runtime`).".to_string(),
                    format!("loopd crates {version} from crates.io (no loopd checkout found)"),
                    String::new(),
                ),
            };
            let ty = type_name(name);
            // What cargo names a cdylib here: libloopd_NAME.so on Linux and
            // the BSDs, libloopd_NAME.dylib on macOS.
            let dylib = format!(
                "{}loopd_{lib}{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            );
            let vars = [
                ("name", name),
                ("lib", lib.as_str()),
                ("type", ty.as_str()),
                ("api_dep", api_dep.as_str()),
                ("loopd_dep", loopd_dep.as_str()),
                ("patch", patch.as_str()),
                ("api_note", api_note.as_str()),
                ("port", port.as_str()),
                ("dylib", dylib.as_str()),
            ];
            let plugin = format!("target/release/{dylib}");
            let config = render(
                CONFIG,
                &[
                    ("name", name),
                    ("build", "cargo build --release"),
                    ("plugin_path", &plugin),
                    ("port", &port),
                    ("config_table", "\n[handler.config]\ngreeting = \"hello\"\n"),
                ],
            );
            Ok((
                vec![
                    ("Cargo.toml".into(), render(RUST_CARGO, &vars)),
                    ("src/lib.rs".into(), render(RUST_LIB, &vars)),
                    (format!("tests/{lib}.rs").into(), render(RUST_TEST, &vars)),
                    ("README.md".into(), render(RUST_README, &vars)),
                    ("loopd.toml".into(), config),
                    (".gitignore".into(), "/target\n".to_string()),
                ],
                note,
            ))
        }
        Language::C => {
            if req.loopd_src.is_some() || req.registry {
                return Err(ScaffoldError::Usage(
                    "--loopd-src and --registry are for Rust projects; a C project gets a copy of loopd.h".into(),
                ));
            }
            let prefix = lib.clone();
            let upper = lib.to_ascii_uppercase();
            let vars = [
                ("name", name),
                ("lib", lib.as_str()),
                ("prefix", prefix.as_str()),
                ("upper", upper.as_str()),
                ("port", port.as_str()),
            ];
            // The Makefile names the library libloopd_NAME.so on every
            // system (dlopen does not care about the suffix).
            let plugin = format!("./libloopd_{lib}.so");
            let config = render(
                CONFIG,
                &[
                    ("name", name),
                    ("build", "make"),
                    ("plugin_path", &plugin),
                    ("port", &port),
                    ("config_table", "\n[handler.config]\ngreeting = \"hello\"\n"),
                ],
            );
            Ok((
                vec![
                    (format!("{name}.c").into(), render(C_SOURCE, &vars)),
                    (format!("{name}_test.c").into(), render(C_TEST, &vars)),
                    ("loopd.h".into(), loopd_handler_api::C_HEADER.to_string()),
                    ("Makefile".into(), render(C_MAKEFILE, &vars)),
                    ("README.md".into(), render(C_README, &vars)),
                    ("loopd.toml".into(), config),
                    (".gitignore".into(), format!("*.so\n*.o\n/{lib}_test\n")),
                ],
                "a copy of this loopd's loopd.h".to_string(),
            ))
        }
    }
}

/// Creates the project; returns the directory and the text to print.
pub(crate) fn new_handler(req: &Request) -> Result<(PathBuf, String), ScaffoldError> {
    check_name(&req.name).map_err(ScaffoldError::Usage)?;
    let dir = req.dir.clone().unwrap_or_else(|| PathBuf::from(&req.name));
    let (files, note) = files(req)?;
    if fs::symlink_metadata(&dir).is_ok() {
        return Err(ScaffoldError::Failed(format!(
            "{} already exists; nothing was written (pick another --dir, or remove it)",
            dir.display()
        )));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| {
            ScaffoldError::Failed(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    // create_dir, not create_dir_all: a directory that appeared meanwhile
    // is never written into.
    fs::create_dir(&dir)
        .map_err(|e| ScaffoldError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let written = write_all(&dir, &files);
    if let Err(e) = written {
        // Only what this call created: the directory did not exist before.
        let _ = fs::remove_dir_all(&dir);
        return Err(ScaffoldError::Failed(format!(
            "writing into {}: {e}; removed it again",
            dir.display()
        )));
    }

    let kind = match req.language {
        Language::Rust => "Rust",
        Language::C => "C",
    };
    let mut out = format!(
        "created {} handler `{}` in {} ({note}):\n",
        kind,
        req.name,
        dir.display()
    );
    for (path, _) in &files {
        out.push_str(&format!("  {}\n", dir.join(path).display()));
    }
    let loopd = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "loopd".to_string());
    let build = match req.language {
        Language::Rust => "cargo build --release",
        Language::C => "make",
    };
    out.push_str(&format!(
        "\nnext:\n  cd {}\n  {build}\n  {loopd} loopd.toml\n  nc 127.0.0.1 {}    (in another terminal; type a line)\n",
        dir.display(),
        req.port
    ));
    match req.language {
        Language::Rust => out.push_str("  cargo test              (runs the handler in-process)\n"),
        Language::C => out.push_str("  make test               (tests it without loopd)\n"),
    }
    Ok((dir, out))
}

fn write_all(dir: &Path, files: &[(PathBuf, String)]) -> io::Result<()> {
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["greeter", "my-proto", "a1_b2", "x"] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Greeter",
            "1st",
            "-x",
            "a b",
            "a/b",
            "..",
            "x-",
            "é",
            &"a".repeat(49),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("my-proto_x"), "MyProtoX");
        assert_eq!(type_name("handler"), "HandlerHandler");
        assert_eq!(type_name("error"), "ErrorHandler");
    }

    #[test]
    fn the_port_reaches_config_readme_and_c_test() {
        for language in [Language::Rust, Language::C] {
            let req = Request {
                name: "p".into(),
                language,
                dir: None,
                loopd_src: None,
                registry: language == Language::Rust,
                port: 9,
            };
            let (generated, _) = files(&req).unwrap();
            let get = |name: &str| {
                generated
                    .iter()
                    .find(|(p, _)| p == Path::new(name))
                    .map(|(_, t)| t.as_str())
                    .unwrap_or_else(|| panic!("no {name}"))
            };
            assert!(get("loopd.toml").contains("listen = [\"tcp://127.0.0.1:9\"]"));
            assert!(get("README.md").contains("nc 127.0.0.1 9 "));
            if language == Language::C {
                assert!(get("p_test.c").contains("\"tcp://127.0.0.1:9\""));
            }
            let zero = Request { port: 0, ..req };
            assert!(matches!(files(&zero), Err(ScaffoldError::Usage(_))));
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for language in [Language::Rust, Language::C] {
            for registry in [false, true] {
                let req = Request {
                    name: "my-proto".into(),
                    language,
                    dir: None,
                    loopd_src: None,
                    registry: registry && language == Language::Rust,
                    port: DEFAULT_PORT,
                };
                let (files, _) = files(&req).unwrap();
                for (path, text) in files {
                    assert!(!text.contains("{{"), "{}:\n{text}", path.display());
                }
            }
        }
    }
}
