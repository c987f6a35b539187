//! `loopd new-handler`: a Rust and a C project are generated into a temp
//! dir, built exactly as their READMEs say (cargo offline, with a target dir
//! under the workspace's so dependencies stay cached between runs; make),
//! checked and run with loopd, and talked to. Bad names, existing
//! directories and conflicting options are refused without writing
//! anything.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Runs `loopd ARGS` in `cwd`.
fn loopd_in(cwd: &Path, args: &[&str]) -> Output {
    run_loopd_in(Some(cwd), args, Some("info"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a build command; panics with its output if it fails.
fn build(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The generated `loopd.toml`, listening on a free port, with the plugin
/// path made absolute (loopd::start runs it from a temp dir).
fn runnable_config(project: &Path, relative_plugin: &str) -> String {
    let config = std::fs::read_to_string(project.join("loopd.toml")).unwrap();
    let plugin = project.join(relative_plugin);
    assert!(
        config.contains("listen = [\"tcp://127.0.0.1:7200\"]"),
        "{config}"
    );
    assert!(
        config.contains(&format!("plugin = \"{relative_plugin}\"")),
        "{config}"
    );
    config
        .replace("tcp://127.0.0.1:7200", "tcp://127.0.0.1:0")
        .replace(
            &format!("plugin = \"{relative_plugin}\""),
            &format!("plugin = \"{}\"", plugin.display()),
        )
}

#[test]
fn a_rust_handler_is_generated_built_tested_and_served() {
    let tmp = TempDir::new("scaffold-rust");
    let out = loopd_in(tmp.path(), &["new-handler", "greeter"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let root = std::fs::canonicalize(root()).unwrap();
    assert!(
        stdout.starts_with(&format!(
            "created Rust handler `greeter` in greeter (loopd crates by path from {})",
            root.display()
        )),
        "{stdout}"
    );
    let project = tmp.join("greeter");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!(
            "loopd-handler-api = {{ path = \"{}\" }}",
            root.join("handler-api").display()
        )),
        "{manifest}"
    );
    assert!(manifest.contains("crate-type = [\"cdylib\", \"rlib\"]"));
    // The library as this platform names it, not always `.so`.
    let dylib = format!(
        "{}loopd_greeter{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    assert!(
        manifest.contains(&format!("target/release/{dylib}")),
        "{manifest}"
    );
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    for wanted in [
        "# greeter: a loopd handler in Rust".to_string(),
        "`greeter` starts out as a".to_string(),
        format!("target/release/{dylib}"),
        "`tests/greeter.rs` runs greeter in-process".to_string(),
        "`HandlerSpec::linked::<Greeter>`".to_string(),
        "the handler, `Greeter`".to_string(),
        "runs greeter alone on 127.0.0.1:7200".to_string(),
    ] {
        assert!(
            readme.contains(&wanted),
            "README lacks {wanted:?}:\n{readme}"
        );
    }
    let test = std::fs::read_to_string(project.join("tests/greeter.rs")).unwrap();
    assert!(test.starts_with("//! Runs greeter in-process"), "{test}");

    // The generated code is what `cargo fmt` would write.
    build(
        Command::new("rustfmt")
            .args(["--check", "--edition", "2021"])
            .arg(project.join("src/lib.rs"))
            .arg(project.join("tests/greeter.rs")),
        "rustfmt --check on the generated sources",
    );

    // A target dir under the workspace's, kept between runs, so the loopd
    // crate and serde are compiled once, not on every test run.
    let cache = plugin_dir().parent().unwrap().join("scaffold");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(&cache, project.join("target")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let in_project = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.args(args)
            .current_dir(&project)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR");
        cmd
    };
    // Its own tests: the handler in-process on the loopd crate.
    let tested = build(
        &mut in_project(&["test", "--offline"]),
        "cargo test in the generated project",
    );
    let report = text(&tested.stdout);
    for test in [
        "tests::answers_name_the_line_and_count",
        "answers_every_line",
        "an_empty_greeting_is_refused",
    ] {
        assert!(report.contains(&format!("test {test} ... ok")), "{report}");
    }
    build(
        &mut in_project(&["build", "--release", "--offline", "--quiet"]),
        "cargo build --release in the generated project",
    );
    assert!(project.join("target/release/libloopd_greeter.so").exists());

    // The generated config, as is, passes `loopd check` from the project.
    let out = loopd_in(&project, &["check", "loopd.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "loopd.toml: ok\n  greeter: greeter 0.1.0 (target/release/libloopd_greeter.so)\n"
    );

    let loopd = Loopd::start(&runnable_config(
        &project,
        "target/release/libloopd_greeter.so",
    ));
    let mut c = LineClient::connect(loopd.tcp("greeter"));
    assert_eq!(c.cmd("world"), "hello, world! (line 1)");
    assert_eq!(c.cmd("again\r"), "hello, again! (line 2)");
}

#[test]
fn a_c_handler_is_generated_built_and_served() {
    let tmp = TempDir::new("scaffold-c");
    let out = loopd_in(tmp.path(), &["new-handler", "shout-c", "--c"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with(
            "created C handler `shout-c` in shout-c (a copy of this loopd's loopd.h):"
        ),
        "{stdout}"
    );
    let project = tmp.join("shout-c");
    for file in [
        "shout-c.c",
        "shout-c_test.c",
        "loopd.h",
        "Makefile",
        "README.md",
        "loopd.toml",
    ] {
        assert!(
            stdout.contains(&format!("  shout-c/{file}\n")),
            "{file}: {stdout}"
        );
    }
    assert!(stdout.contains("  make test "), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(project.join("loopd.h")).unwrap(),
        std::fs::read_to_string(root().join("handler-api/include/loopd.h")).unwrap(),
        "the copied header is this loopd's"
    );
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    for wanted in [
        "# shout-c: a loopd handler in C",
        "`shout-c` starts out as a",
        "runs shout-c alone",
        "`shout_c_logf`",
        "`shout_c_config_next`",
        "`shout-c_test.c`",
        "nc 127.0.0.1 7200",
    ] {
        assert!(
            readme.contains(wanted),
            "README lacks {wanted:?}:\n{readme}"
        );
    }

    // Its own tests (the config reader on malformed JSON, the log helper,
    // the hooks against a mock host), as the README says; then again under
    // AddressSanitizer and UBSan, which fail on any out-of-bounds access.
    let tested = build(make(&project).arg("test"), "make test");
    assert!(
        text(&tested.stdout).contains("shout-c_test: all ")
            && text(&tested.stdout).contains(" checks passed"),
        "{}",
        text(&tested.stdout)
    );
    if sanitizers_work(tmp.path()) {
        let tested = build(
            make(&project).args([
                "clean",
                "test",
                "CFLAGS=-std=c99 -Wall -Wextra -Werror -pedantic -g -O1 \
                 -fsanitize=address,undefined -fno-sanitize-recover=all",
            ]),
            "make test under the sanitizers",
        );
        assert!(
            text(&tested.stdout).contains(" checks passed"),
            "{}",
            text(&tested.stdout)
        );
        build(make(&project).arg("clean"), "make clean");
    } else {
        eprintln!("scaffold: gcc cannot build with -fsanitize=address,undefined here; ran `make test` without the sanitizers");
    }

    let made = build(
        &mut make(&project),
        "make in the generated project (needs make and gcc)",
    );
    let compile = text(&made.stdout);
    assert!(
        compile.contains("-Werror") && compile.contains("-pedantic"),
        "{compile}"
    );
    assert!(
        !text(&made.stderr).contains("warning"),
        "{}",
        text(&made.stderr)
    );
    let so = project.join("libloopd_shout_c.so");
    let nm = build(
        Command::new("nm").args(["-D", "--defined-only"]).arg(&so),
        "nm",
    );
    let exported: Vec<String> = text(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(exported, ["loopd_plugin_entry_v1"]);

    let out = loopd_in(&project, &["check", "loopd.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "loopd.toml: ok\n  shout-c: shout-c 0.1.0 (./libloopd_shout_c.so)\n"
    );

    let config = runnable_config(&project, "./libloopd_shout_c.so");
    assert!(
        config.contains("[handler.config]\ngreeting = \"hello\"\n"),
        "{config}"
    );
    let loopd = Loopd::start(&config);
    // The printf-style log helper, from create.
    assert!(loopd.wait_for_log("shout-c: greets with \"hello\"", TIMEOUT));
    let mut a = LineClient::connect(loopd.tcp("shout-c"));
    let mut b = LineClient::connect(loopd.tcp("shout-c"));
    assert_eq!(a.cmd("world"), "hello, world! (line 1)");
    assert_eq!(a.cmd("again"), "hello, again! (line 2)");
    assert_eq!(b.cmd("b"), "hello, b! (line 1)", "state is per connection");
    drop(loopd);

    // The greeting comes from [handler.config], through the config reader.
    let loopd = Loopd::start(&config.replace(
        "greeting = \"hello\"",
        "greeting = \"ahoy \\\"\\u00e9\\\"\"",
    ));
    let mut a = LineClient::connect(loopd.tcp("shout-c"));
    assert_eq!(a.cmd("you"), "ahoy \"\u{e9}\", you! (line 1)");
    drop(loopd);

    // What create refuses, as `loopd check` reports it.
    for (table, reason) in [
        ("greting = \"hi\"", "invalid config: unknown key `greting` (known: greeting)"),
        ("greeting = \"\"", "greeting must not be empty"),
        ("greeting = 3", "invalid config: `greeting` must be a string"),
        ("greeting = 1.5", "invalid config: `greeting`: a number with a fraction or exponent (only integers) (at byte 13)"),
        ("greeting = [\"a\"]", "invalid config: `greeting`: a table or array"),
        ("greeting = \"x\"\nextra = { a = 1 }", "invalid config: `extra`: a table or array"),
    ] {
        let bad = config.replace("greeting = \"hello\"", table);
        let dir = TempDir::new("scaffold-c-config");
        let path = write_config(&dir, &bad);
        let out = run_loopd(&["check", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{table}: {stderr}");
        assert!(
            stderr.contains(&format!("create failed: {reason}")),
            "{table}: {stderr}"
        );
    }
}

/// `make` in `dir` with the Makefile's own defaults, not the environment's.
fn make(dir: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(dir)
        .env_remove("CFLAGS")
        .env_remove("CC")
        .env_remove("LDFLAGS")
        .env_remove("MAKEFLAGS");
    cmd
}

/// Whether gcc here can build and run a program with ASan and UBSan.
fn sanitizers_work(tmp: &Path) -> bool {
    let src = tmp.join("sanitizers.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let exe = tmp.join("sanitizers");
    Command::new("gcc")
        .args(["-fsanitize=address,undefined", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&exe).status().is_ok_and(|s| s.success())
}

#[test]
fn port_sets_the_generated_config_and_readme() {
    let tmp = TempDir::new("scaffold-port");
    for (name, c) in [("ported", false), ("ported-c", true)] {
        let mut args = vec!["new-handler", name, "--port", "7301"];
        if c {
            args.push("--c");
        }
        let out = loopd_in(tmp.path(), &args);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        assert!(
            stdout.contains("  nc 127.0.0.1 7301    (in another terminal"),
            "{stdout}"
        );
        let project = tmp.join(name);
        let config = std::fs::read_to_string(project.join("loopd.toml")).unwrap();
        assert!(
            config.contains("listen = [\"tcp://127.0.0.1:7301\"]")
                && config.contains("`nc 127.0.0.1 7301`"),
            "{config}"
        );
        assert!(!config.contains("7200"), "{config}");
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        assert!(readme.contains("nc 127.0.0.1 7301"), "{readme}");
        // Prose may wrap: compare it with single spaces.
        let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            readme.contains(&format!("runs {name} alone on 127.0.0.1:7301")),
            "{readme}"
        );
        assert!(!readme.contains("7200"), "{readme}");
        // A config that passes `loopd check` as generated (for Rust only
        // once built, so check the C one).
        if c {
            build(&mut make(&project), "make");
            let out = loopd_in(&project, &["check", "loopd.toml"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
    // Port 0 (a different port every run) and out-of-range ports are
    // refused, and nothing is written.
    for port in ["0", "65536", "http"] {
        let out = loopd_in(tmp.path(), &["new-handler", "zero", "--port", port]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--port {port}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("--port"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(!tmp.join("zero").exists());
}

#[test]
fn bad_names_are_refused_and_nothing_is_written() {
    let tmp = TempDir::new("scaffold-names");
    for name in [
        "Greeter",
        "1st",
        "my handler",
        "../escape",
        "a/b",
        "x-",
        "é",
    ] {
        let out = loopd_in(tmp.path(), &["new-handler", name]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name:?}: {stderr}");
        assert!(
            stderr.starts_with("loopd new-handler: error: `"),
            "{name:?}: {stderr}"
        );
        assert!(stderr.contains("lower-case letter"), "{name:?}: {stderr}");
    }
    let long = "a".repeat(49);
    let out = loopd_in(tmp.path(), &["new-handler", &long]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("longer than 48 characters"));
    let left: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "files were written: {left:?}");
}

#[test]
fn an_existing_directory_is_never_touched() {
    let tmp = TempDir::new("scaffold-exists");
    let taken = tmp.join("greeter");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("mine.txt"), "keep me").unwrap();
    for args in [
        &["new-handler", "greeter"][..],
        &["new-handler", "greeter", "--c"],
        &["new-handler", "other", "--dir", "greeter"],
    ] {
        let out = loopd_in(tmp.path(), args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(
            stderr,
            "loopd new-handler: error: greeter already exists; nothing was written (pick another --dir, or remove it)\n"
        );
    }
    let entries: Vec<_> = std::fs::read_dir(&taken).unwrap().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        std::fs::read_to_string(taken.join("mine.txt")).unwrap(),
        "keep me"
    );
    // A plain file in the way is refused the same way.
    std::fs::write(tmp.join("file"), "x").unwrap();
    let out = loopd_in(tmp.path(), &["new-handler", "x", "--dir", "file"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(tmp.join("file")).unwrap(), "x");
}

#[test]
fn dir_and_dependency_options() {
    let tmp = TempDir::new("scaffold-options");
    // --dir: any path, parents created.
    let out = loopd_in(
        tmp.path(),
        &["new-handler", "deep", "--dir", "a/b/proj", "--registry"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest = std::fs::read_to_string(tmp.join("a/b/proj/Cargo.toml")).unwrap();
    // --registry: versions from crates.io, with the way back to a checkout.
    let version = loopd_version();
    let version: Vec<&str> = version.splitn(3, '.').collect();
    let wanted = format!("loopd-handler-api = \"{}.{}\"", version[0], version[1]);
    assert!(manifest.contains(&wanted), "{manifest}");
    assert!(
        manifest.contains("# loopd-handler-api = { path = \"/path/to/loopd/handler-api\" }"),
        "{manifest}"
    );
    assert!(!manifest.contains(root().to_str().unwrap()), "{manifest}");
    assert!(text(&out.stdout).contains("from crates.io (no loopd checkout found)"));

    // --loopd-src must be a checkout.
    let out = loopd_in(
        tmp.path(),
        &[
            "new-handler",
            "x",
            "--loopd-src",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a loopd checkout"),
        "{}",
        text(&out.stderr)
    );
    let out = loopd_in(
        tmp.path(),
        &["new-handler", "y", "--loopd-src", root().to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Options that make no sense together or for C.
    for args in [
        &["new-handler", "z", "--c", "--registry"][..],
        &["new-handler", "z", "--registry", "--loopd-src", "."],
    ] {
        let out = loopd_in(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert!(!tmp.join("z").exists());
    // A typo of the subcommand is caught.
    let out = loopd_in(tmp.path(), &["new-handlr", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("did you mean `loopd new-handler x`?"),
        "{}",
        text(&out.stderr)
    );
}

/// loopd's version, as `loopd --version` prints it.
fn loopd_version() -> String {
    let out = run_loopd(&["--version"]);
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .expect("loopd --version prints `loopd VERSION ...`")
        .to_string()
}
