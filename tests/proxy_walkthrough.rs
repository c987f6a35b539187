//! docs/writing-handlers.md, "A proxy, step by step": its Rust blocks, end
//! to end, must be handlers/proxy/examples/tiny_proxy.rs; that example must
//! build into a plugin loopd loads with the page's config; and the proxy it
//! builds must do what the page says (byte-exact both ways, half-close,
//! no hang with an upstream that stops reading while it cannot write, a
//! refused upstream closes the client).

mod common;
mod proxy_support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::sync::OnceLock;

use common::*;
use proxy_support::*;

const SECTION: &str = "## A proxy, step by step";

/// The section's text, up to the next `## ` heading.
fn section() -> String {
    let page = std::fs::read_to_string(root().join("docs/writing-handlers.md")).unwrap();
    let start = page
        .find(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("docs/writing-handlers.md has no `{SECTION}` section"));
    let rest = &page[start + 1..];
    let end = rest[SECTION.len()..]
        .find("\n## ")
        .map_or(rest.len(), |i| i + SECTION.len() + 1);
    rest[..end].to_string()
}

/// The fenced blocks of `text` whose info string starts with `lang`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match &mut open {
            None if fence => {
                let info = line.trim_start().trim_start_matches('`').trim().to_string();
                open = Some((info, String::new()));
            }
            None => {}
            Some(_) if fence && line.trim() == "```" => {
                let (info, body) = open.take().unwrap();
                if info.split_whitespace().next() == Some(lang) {
                    out.push(body);
                }
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(open.is_none(), "an unclosed code block in `{SECTION}`");
    out
}

fn example_path() -> PathBuf {
    root().join("handlers/proxy/examples/tiny_proxy.rs")
}

#[test]
fn the_page_shows_the_example_block_by_block() {
    let shown = blocks(&section(), "rust").join("\n");
    let file = std::fs::read_to_string(example_path()).unwrap();
    if shown != file {
        let line = shown
            .lines()
            .zip(file.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the length".to_string(), |i| format!("line {}", i + 1));
        panic!(
            "`{SECTION}` in docs/writing-handlers.md does not show {} (first difference at {line}; \
             the Rust blocks, joined by one blank line, must be the file)",
            example_path().display()
        );
    }
    assert!(blocks(&section(), "rust").len() >= 8, "one block per step");
}

/// Builds the example plugin once; returns its path.
fn tiny_proxy_so() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_plugins();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(root()).args([
                "build",
                "--quiet",
                "-p",
                "loopd-proxy",
                "--example",
                "tiny-proxy",
            ]);
            if plugin_dir().ends_with("release") {
                cmd.arg("--release");
            }
            assert!(
                cmd.status().unwrap().success(),
                "building the tiny-proxy example"
            );
            let so = plugin_dir().join("examples/libtiny_proxy.so");
            assert!(so.exists(), "{} was not built", so.display());
            so
        })
        .clone()
}

/// The page's config, with the example's real path and free ports.
fn page_config(echo_port: u16) -> String {
    let configs = blocks(&section(), "toml");
    assert_eq!(configs.len(), 1, "one config in `{SECTION}`");
    configs[0]
        .replace(
            "target/release/examples/libtiny_proxy.so",
            tiny_proxy_so().to_str().unwrap(),
        )
        .replace("127.0.0.1:7000", &format!("127.0.0.1:{echo_port}"))
        .replace("127.0.0.1:7005", "127.0.0.1:0")
}

#[test]
fn the_pages_config_passes_loopd_check() {
    let dir = TempDir::new("walkthrough");
    let path = write_config(&dir, &page_config(free_port()));
    let out = run_loopd(&["check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn in_front_of_echo_it_answers_nc_and_round_trips_without_hanging() {
    let loopd = Loopd::start(&page_config(free_port()));
    let addr = loopd.tcp("tiny-proxy");
    // printf 'hi\n' | nc -q1 127.0.0.1 PORT
    for _ in 0..20 {
        let mut c = connect(addr);
        c.write_all(b"hi\n").unwrap();
        half_close(&c);
        assert_eq!(read_until_closed(&mut c), b"hi\n");
    }
    // Both directions at full speed through an upstream that stops
    // reading while it cannot write (step 7).
    for seed in 0..3 {
        let data = Bytes::take(40 + seed, 8 << 20);
        assert!(
            echo_roundtrip(connect(addr), &data) == data,
            "round trip {seed}"
        );
    }
}

#[test]
fn it_carries_8_mib_each_way_through_both_half_closes() {
    let len = 8 << 20;
    let (tx, rx) = mpsc::channel();
    let server = Server::start(move |s| {
        let mut r = s.try_clone().unwrap();
        let got = std::thread::spawn(move || recv_stream(&mut r, 0, 1, || {}));
        let mut w = &s;
        send_stream(&mut w, len, 12, None);
        half_close(&s);
        let _ = tx.send(got.join().unwrap());
    });
    let config = format!(
        "[[handler]]\nname = \"tiny-proxy\"\nplugin = \"{}\"\nlisten = [\"tcp://127.0.0.1:0\"]\n\
         [handler.config]\nupstream = \"{}\"\n",
        tiny_proxy_so().display(),
        server.url()
    );
    let loopd = Loopd::start(&config);
    let c = connect(loopd.tcp("tiny-proxy"));
    let mut w = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let sent = send_stream(&mut w, len, 11, None);
        half_close(&w);
        sent
    });
    let mut r = &c;
    let down = recv_stream(&mut r, 0, 1, || {});
    let up_sent = sender.join().unwrap();
    assert_eq!(
        rx.recv_timeout(TIMEOUT).unwrap(),
        up_sent,
        "client to upstream"
    );
    assert_eq!(down, expected(12, len), "upstream to client");
}

#[test]
fn a_refused_upstream_closes_the_client() {
    let config = format!(
        "[[handler]]\nname = \"tiny-proxy\"\nplugin = \"{}\"\nlisten = [\"tcp://127.0.0.1:0\"]\n\
         [handler.config]\nupstream = \"tcp://127.0.0.1:{}\"\n",
        tiny_proxy_so().display(),
        free_port()
    );
    let loopd = Loopd::start(&config);
    let mut c = connect(loopd.tcp("tiny-proxy"));
    let _ = c.write_all(b"anyone?");
    assert!(read_until_closed(&mut c).is_empty());
    let mut rest = Vec::new();
    assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
}
