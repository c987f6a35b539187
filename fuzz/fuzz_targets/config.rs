//! The config loader (`runtime/src/config.rs`): arbitrary text in.
//!
//! Checked on every input:
//! - no panic, whatever the TOML;
//! - every error names a line: `<config>:LINE:COLUMN: ...`, with a line
//!   that exists in the text (or one past its end), and quotes that line;
//! - every accepted config keeps the promises the loader makes: unique
//!   handler names of the allowed characters, non-empty plugins, frame
//!   sizes within 1 byte..1 GiB, low watermarks below high ones, positive
//!   limits, `broadcast` only with a UDP listener, and valid JSON for each
//!   handler's table.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use loopd::config::{ListenAddr, PluginRef};
use loopd::{Config, Error};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, None) {
        Err(Error::Config(msg)) => check_error(text, &msg),
        Err(other) => panic!("not a config error: {other}"),
        Ok(config) => check_config(&config),
    }
});

fn check_error(text: &str, msg: &str) {
    let rest = msg
        .strip_prefix("<config>:")
        .unwrap_or_else(|| panic!("no location in {msg:?}"));
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no line in {msg:?}"));
    let column: usize = parts
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no column in {msg:?}"));
    let lines = text.split('\n').count();
    assert!(
        (1..=lines).contains(&line) && column >= 1,
        "{line}:{column} is not in a text of {lines} lines: {msg:?}"
    );
    if let Some(quoted) = text.split('\n').nth(line - 1) {
        let quoted = quoted.strip_suffix('\r').unwrap_or(quoted);
        if !quoted.is_empty() && !quoted.contains('\r') {
            assert!(
                msg.contains(&format!(" {line} | {quoted}")),
                "line {line} is not quoted in {msg:?}"
            );
        }
    }
}

fn check_config(c: &Config) {
    let rt = &c.runtime;
    assert!(rt.max_connections > 0);
    assert!(!rt.shutdown_timeout.is_zero() && !rt.close_timeout.is_zero());
    assert!((1..=1 << 30).contains(&rt.max_frame));
    assert!(rt.output_low_watermark < rt.output_high_watermark);
    let mut names = HashSet::new();
    for h in &c.handlers {
        assert!(
            !h.name.is_empty()
                && h.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "bad name {:?} accepted",
            h.name
        );
        assert!(names.insert(h.name.clone()), "duplicate name {:?}", h.name);
        match &h.plugin {
            PluginRef::Name(n) => assert!(!n.is_empty() && !n.contains('/')),
            PluginRef::Path(p) => assert!(!p.as_os_str().is_empty()),
        }
        if let Some(m) = h.max_frame {
            assert!((1..=1 << 30).contains(&m), "max_frame {m} accepted");
        }
        let high = h.output_high_watermark.unwrap_or(rt.output_high_watermark);
        let low = h.output_low_watermark.unwrap_or(rt.output_low_watermark);
        assert!(low < high, "watermarks {low} >= {high} accepted");
        if h.broadcast {
            assert!(h.listen.iter().any(|a| matches!(a, ListenAddr::Udp(_))));
        }
        for a in &h.listen {
            if let ListenAddr::Unix(p) = a {
                let len = p.as_os_str().len();
                assert!(len > 0 && len < 108, "unix path of {len} bytes accepted");
            }
        }
        serde_json::from_str::<serde_json::Value>(&h.config_json)
            .unwrap_or_else(|e| panic!("config_json {:?}: {e}", h.config_json));
        assert!(h.plugin_location.as_ref().is_some_and(|l| l.line >= 1));
    }
}
