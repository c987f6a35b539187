//! Reliability: broken plugins are refused, each with its own message, and
//! never crash loopd (issue 8, item 11).
//!
//! The six broken C fixtures of tests/fixtures/c (see its README) are
//! compiled and loaded, one loopd per fixture, in both modes (`loopd check`
//! and `loopd <config>`), behind a good handler that would be listening if
//! loopd opened listeners before every plugin was loaded. tests/plugin_errors.rs
//! checks each message in detail; this test is the one figure over all of
//! them: refused with the specific reason, a clean exit status 1 (never a
//! signal), and nothing listening.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use common::*;
use loopd_handler_api::abi;

/// A broken fixture and the substrings its refusal must contain.
struct Case {
    fixture: &'static str,
    what: &'static str,
    reason: Vec<String>,
}

fn cases() -> Vec<Case> {
    let host = format!("ABI {}.{}", abi::LOOPD_ABI_MAJOR, abi::LOOPD_ABI_MINOR);
    vec![
        Case {
            fixture: "no_entry",
            what: "no entry symbol",
            reason: vec!["no entry symbol loopd_plugin_entry_v1".into()],
        },
        Case {
            fixture: "wrong_major",
            what: "wrong ABI major",
            reason: vec!["built for handler ABI 2.0".into(), host.clone()],
        },
        Case {
            fixture: "min_host_minor",
            what: "min_host_minor too high",
            reason: vec![
                format!("needs a host with handler ABI {}.99", abi::LOOPD_ABI_MAJOR),
                "upgrade loopd".into(),
            ],
        },
        Case {
            fixture: "null_entry",
            what: "entry returns NULL",
            reason: vec!["loopd_plugin_entry_v1 returned NULL".into()],
        },
        Case {
            fixture: "undersized_info",
            what: "undersized struct",
            reason: vec![
                "plugin info is 8 bytes".into(),
                format!(
                    "smaller than the {} bytes",
                    abi::LOOPD_PLUGIN_INFO_V1_0_SIZE
                ),
            ],
        },
        Case {
            fixture: "create_fails",
            what: "create refusing",
            reason: vec!["create failed: refusing to start: no widgets configured".into()],
        },
    ]
}

/// Whether one run refused the plugin cleanly with `case`'s reason; on
/// failure, says why. `crashed` is set when loopd died of a signal.
fn judge(
    mode: &str,
    case: &Case,
    so: &str,
    out: &Output,
    crashed: &mut usize,
) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(sig) = out.status.signal() {
        *crashed += 1;
        return Err(format!("{mode}: killed by signal {sig}:\n{stderr}"));
    }
    if out.status.code() != Some(1) {
        return Err(format!(
            "{mode}: exit status {:?}, want 1:\n{stderr}",
            out.status
        ));
    }
    if stderr.contains("panicked") {
        return Err(format!("{mode}: a panic:\n{stderr}"));
    }
    if stderr.contains("listening on") || stderr.contains(" ready: ") {
        return Err(format!("{mode}: listened before refusing:\n{stderr}"));
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| is_error_line(l)).collect();
    let [error] = errors[..] else {
        return Err(format!("{mode}: want exactly one error line:\n{stderr}"));
    };
    // The line names the handler and the library, then the specific reason.
    let mut needles = vec![format!("handler `broken`: plugin {so}: ")];
    needles.extend(case.reason.iter().cloned());
    for n in &needles {
        if !error.contains(n.as_str()) {
            return Err(format!("{mode}: `{n}` missing from\n  {error}"));
        }
    }
    Ok(())
}

#[test]
fn six_broken_plugins_are_refused_with_their_reason_and_none_crashes() {
    build_plugins();
    let cases = cases();
    let mut refused = 0;
    let mut crashed = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let dir = TempDir::new(&format!("rel-broken-{}", case.fixture));
        let src = root().join(format!("tests/fixtures/c/{}.c", case.fixture));
        let so = dir.join(&format!("{}.so", case.fixture));
        compile_c_plugin(&src, &so);
        let so = so.to_str().unwrap().to_string();
        let config = write_config(
            &dir,
            &format!(
                r#"[runtime]
shutdown_timeout_ms = 1000

[[handler]]
name = "echo"
plugin = "echo"
listen = ["tcp://127.0.0.1:0"]

[[handler]]
name = "broken"
plugin = "{so}"
listen = ["tcp://127.0.0.1:0"]
"#
            ),
        );
        let config = config.to_str().unwrap();
        let verdicts = [
            judge(
                "check",
                case,
                &so,
                &run_loopd(&["check", config]),
                &mut crashed,
            ),
            judge("run", case, &so, &run_loopd(&[config]), &mut crashed),
        ];
        let bad: Vec<String> = verdicts.into_iter().filter_map(Result::err).collect();
        if bad.is_empty() {
            refused += 1;
        } else {
            failures.push(format!(
                "{} ({}):\n{}",
                case.fixture,
                case.what,
                bad.join("\n")
            ));
        }
    }
    figure(
        "rel_broken_plugins.refused",
        format!("{refused}/{}", cases.len()),
    );
    figure("rel_broken_plugins.crashes", crashed);
    assert_eq!(crashed, 0, "{}", failures.join("\n\n"));
    assert_eq!(refused, cases.len(), "{}", failures.join("\n\n"));
    assert_eq!(cases.len(), 6);
}
