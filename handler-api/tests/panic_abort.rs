//! A handler built with `panic = "abort"` must not compile: loopd contains a
//! handler's panic to one connection, and that needs unwinding.

use std::path::Path;
use std::process::Command;

fn write_crate(dir: &Path, panic: &str) {
    let api = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "panic-check"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
loopd-handler-api = {{ path = "{}" }}

[profile.dev]
panic = "{panic}"

[workspace]
"#,
            api.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        r#"
use loopd_handler_api::{export_handler, Ctx, Handler, NoConfig};
pub struct H;
impl Handler for H {
    type Config = NoConfig;
    type Conn = ();
    fn create(_: &Ctx, _: &str, _: NoConfig) -> Result<Self, String> { Ok(H) }
}
export_handler!(H);
"#,
    )
    .unwrap();
}

fn check(panic: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("loopd-panic-{panic}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_crate(&dir, panic);
    // Reuse one target dir across runs so the dependencies build only once.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/panic-profile-check");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["check", "--offline", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("running cargo");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn panic_abort_is_a_compile_error_and_unwind_compiles() {
    let (ok, stderr) = check("abort");
    assert!(!ok, "a handler built with panic = \"abort\" compiled");
    assert!(
        stderr.contains("loopd handlers must be built with panic = \"unwind\""),
        "the error should explain why:\n{stderr}"
    );
    let (ok, stderr) = check("unwind");
    assert!(
        ok,
        "the same handler with panic = \"unwind\" must compile:\n{stderr}"
    );
}
