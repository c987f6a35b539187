//! The documentation cannot rot:
//!
//! - every ` ```toml ` block in README.md, docs/ and the examples' READMEs
//!   is a complete config that `loopd check` accepts (plugins resolved next
//!   to the loopd binary; the workspace is built first);
//! - a ` ```toml fragment ` block (part of a config, or another TOML file)
//!   must at least parse as TOML;
//! - a block whose info string has `file=PROJECT/PATH` shows a file that
//!   `loopd new-handler` generates, and must match it exactly;
//! - every relative link resolves (to a file, and to a heading when it has a
//!   `#fragment`), and every page under docs/ is reachable from README.md.
//!
//! A config naming a plugin that is not part of this checkout yet (a
//! handler another branch adds) is skipped with a message on stderr naming
//! it; any other missing plugin fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Handlers the project plans that may not be in this checkout: a config
/// naming one of them is skipped (loudly) while it is not built.
const PLANNED: &[&str] = &["chat", "http", "udp-broadcast"];

/// Generated projects the docs show files of: name and `--c`.
const PROJECTS: &[(&str, bool)] = &[("greeter", false), ("shout", true)];

/// One fenced code block.
#[derive(Debug)]
struct Block {
    file: PathBuf,
    line: usize,
    info: String,
    text: String,
}

impl Block {
    fn at(&self) -> String {
        format!(
            "{}:{}",
            self.file
                .strip_prefix(root())
                .unwrap_or(&self.file)
                .display(),
            self.line
        )
    }

    fn lang(&self) -> &str {
        self.info.split_whitespace().next().unwrap_or("")
    }

    fn attrs(&self) -> Vec<&str> {
        self.info.split_whitespace().skip(1).collect()
    }

    fn file_attr(&self) -> Option<&str> {
        self.attrs()
            .into_iter()
            .find_map(|a| a.strip_prefix("file="))
    }
}

/// README.md, everything under docs/, and READMEs under examples/ and handlers/.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, only_readme: bool) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out, only_readme);
            } else if path.extension().is_some_and(|x| x == "md")
                && (!only_readme || path.file_name().is_some_and(|n| n == "README.md"))
            {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files, false);
    walk(&root().join("examples"), &mut files, true);
    walk(&root().join("handlers"), &mut files, true);
    files.sort();
    files
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match &mut open {
            None if fence => {
                let info = line.trim_start().trim_start_matches('`').trim().to_string();
                open = Some((i + 1, info, String::new()));
            }
            None => {}
            Some(_) if fence && line.trim() == "```" => {
                let (line, info, text) = open.take().unwrap();
                out.push(Block {
                    file: file.to_path_buf(),
                    line,
                    info,
                    text,
                });
            }
            Some((_, _, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(open.is_none(), "{}: an unclosed code block", file.display());
    out
}

fn all_blocks() -> Vec<Block> {
    markdown_files().iter().flat_map(|f| blocks(f)).collect()
}

/// Writes to the real stderr: libtest captures `eprintln!`, and a skip
/// must be seen.
fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// examples/c-handler built in a temp dir: the docs name its library by
/// its in-tree path, which the test does not write into.
fn build_upper(dir: &TempDir) -> PathBuf {
    let src = root().join("examples/c-handler");
    for file in ["Makefile", "upper.c"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    let out = Command::new("make")
        .arg("-C")
        .arg(dir.path())
        .arg(format!(
            "LOOPD_INCLUDE={}",
            root().join("handler-api/include").display()
        ))
        .env_remove("CFLAGS")
        .env_remove("MAKEFLAGS")
        .output()
        .expect("make (and gcc) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("libloopd_upper.so")
}

#[test]
fn every_config_block_passes_loopd_check() {
    build_plugins();
    let tmp = TempDir::new("docs");
    let mut upper: Option<PathBuf> = None;
    let (mut checked, mut skipped) = (Vec::new(), Vec::new());
    for block in all_blocks().iter().filter(|b| b.lang() == "toml") {
        let attrs = block.attrs();
        for a in &attrs {
            assert!(
                *a == "fragment" || a.starts_with("file="),
                "{}: unknown attribute `{a}` on a toml block (use `fragment` or `file=`)",
                block.at()
            );
        }
        let table: toml::Table = toml::from_str(&block.text)
            .unwrap_or_else(|e| panic!("{}: not valid TOML: {e}\n{}", block.at(), block.text));
        if !attrs.is_empty() {
            continue;
        }

        // Which plugins does it need, and are they here?
        let mut text = block.text.clone();
        let mut missing = Vec::new();
        let handlers = table
            .get("handler")
            .and_then(|h| h.as_array())
            .cloned()
            .unwrap_or_default();
        for h in &handlers {
            let plugin = h
                .get("plugin")
                .and_then(|p| p.as_str())
                .unwrap_or_else(|| panic!("{}: a handler without plugin", block.at()));
            if plugin.contains('/') || plugin.ends_with(".so") {
                if root().join(plugin).exists() || Path::new(plugin).is_absolute() {
                    continue;
                }
                if plugin == "examples/c-handler/libloopd_upper.so" {
                    let so = upper.get_or_insert_with(|| build_upper(&tmp));
                    text = text.replace(plugin, so.to_str().unwrap());
                    continue;
                }
                panic!(
                    "{}: plugin path `{plugin}` does not exist; mark an illustrative config ```toml fragment",
                    block.at()
                );
            }
            let so = plugin_dir().join(format!("libloopd_{}.so", plugin.replace('-', "_")));
            if !so.exists() {
                assert!(
                    PLANNED.contains(&plugin),
                    "{}: plugin `{plugin}` is not built ({} is missing) and is not a planned handler",
                    block.at(),
                    so.display()
                );
                missing.push(plugin.to_string());
            }
        }
        if !missing.is_empty() {
            loud(&format!(
                "docs: SKIPPED the config at {}: plugin(s) {} not in this checkout yet",
                block.at(),
                missing.join(", ")
            ));
            skipped.push(block.at());
            continue;
        }

        let path = tmp.join(&format!("block-{}.toml", checked.len()));
        std::fs::write(&path, &text).unwrap();
        let out = run_loopd_in(
            Some(&root()),
            &["check", path.to_str().unwrap()],
            Some("info"),
        );
        assert!(
            out.status.success(),
            "{}: `loopd check` refused this config:\n{}\n{}",
            block.at(),
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(block.at());
    }
    loud(&format!(
        "docs: {} config blocks pass `loopd check`; {} skipped",
        checked.len(),
        skipped.len()
    ));
    // The docs do show configs: a parser that finds none is broken.
    assert!(checked.len() >= 3, "only {checked:?} were checked");
}

#[test]
fn generated_files_shown_in_the_docs_match_new_handler() {
    let tmp = TempDir::new("docs-scaffold");
    let mut generated = HashMap::new();
    for (name, c) in PROJECTS {
        let mut args = vec!["new-handler", name];
        if *c {
            args.push("--c");
        }
        let out = run_loopd_in(Some(tmp.path()), &args, Some("info"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        generated.insert(*name, tmp.join(name));
    }
    let mut shown = 0;
    for block in all_blocks() {
        let Some(file) = block.file_attr() else {
            continue;
        };
        let (project, rel) = file
            .split_once('/')
            .unwrap_or_else(|| panic!("{}: file= needs PROJECT/PATH", block.at()));
        let dir = generated.get(project).unwrap_or_else(|| {
            panic!(
                "{}: no generated project `{project}` (known: {PROJECTS:?})",
                block.at()
            )
        });
        let actual = std::fs::read_to_string(dir.join(rel))
            .unwrap_or_else(|e| panic!("{}: {file} is not generated: {e}", block.at()));
        if actual != block.text {
            let line = actual
                .lines()
                .zip(block.text.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "the length".to_string(), |i| format!("line {}", i + 1));
            panic!(
                "{}: the docs show {file}, but `loopd new-handler` writes something else (first difference at {line}). Generated:\n{actual}",
                block.at()
            );
        }
        shown += 1;
    }
    assert!(shown >= 3, "only {shown} generated files are shown");
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Anchors of a markdown file's headings (outside code blocks).
fn anchors(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Relative link targets of a markdown file (outside code blocks and code spans).
fn links(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut in_code = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Drop code spans, so `[x](y)` inside backticks is not a link.
        let mut plain = String::new();
        for (j, part) in line.split('`').enumerate() {
            if j % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = &after[..end];
            if !target.contains("://") && !target.starts_with("mailto:") {
                out.push((i + 1, target.to_string()));
            }
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn links_resolve_and_every_page_is_reachable_from_the_readme() {
    let files = markdown_files();
    let mut graph: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    let mut broken = Vec::new();
    for file in &files {
        let dir = file.parent().unwrap();
        for (line, target) in links(file) {
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            let at = format!("{}:{line}", file.strip_prefix(root()).unwrap().display());
            if !resolved.exists() {
                broken.push(format!("{at}: {target} does not exist"));
                continue;
            }
            if let Some(fragment) = fragment {
                if resolved.extension().is_some_and(|x| x == "md")
                    && !anchors(&resolved).contains(fragment)
                {
                    broken.push(format!("{at}: {target}: no heading with that anchor"));
                }
            }
            if resolved.extension().is_some_and(|x| x == "md") {
                let resolved = std::fs::canonicalize(&resolved).unwrap();
                graph.entry(file.clone()).or_default().push(resolved);
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));

    let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
    let graph: BTreeMap<PathBuf, Vec<PathBuf>> =
        graph.into_iter().map(|(k, v)| (canon(&k), v)).collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![canon(&root().join("README.md"))];
    while let Some(page) = todo.pop() {
        if seen.insert(page.clone()) {
            todo.extend(graph.get(&page).cloned().unwrap_or_default());
        }
    }
    let docs = canon(&root().join("docs"));
    let unreachable: Vec<_> = files
        .iter()
        .map(|f| canon(f))
        .filter(|f| f.starts_with(&docs) && !seen.contains(f))
        .collect();
    assert!(
        unreachable.is_empty(),
        "pages not reachable from README.md: {unreachable:?}"
    );
}

#[test]
fn the_fence_parser_finds_what_it_should() {
    // A self-check, so the tests above cannot pass by finding nothing.
    let dir = TempDir::new("docs-parser");
    let md = dir.join("x.md");
    std::fs::write(
        &md,
        "# Title\n\n```toml\na = 1\n```\n\ntext [link](y.md#part) `[no](z.md)`\n\n```rust file=p/src/lib.rs\nfn x() {}\n```\n",
    )
    .unwrap();
    let b = blocks(&md);
    assert_eq!(b.len(), 2);
    assert_eq!(
        (b[0].lang(), b[0].text.as_str(), b[0].line),
        ("toml", "a = 1\n", 3)
    );
    assert_eq!(b[1].file_attr(), Some("p/src/lib.rs"));
    assert_eq!(links(&md), [(7, "y.md#part".to_string())]);
    assert_eq!(slug("`[runtime]`"), "runtime");
    assert_eq!(slug(" 4. Test"), "4-test");
    assert_eq!(slug(" Back-pressure"), "back-pressure");
}
