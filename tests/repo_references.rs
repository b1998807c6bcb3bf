//! The repository stands alone: every path that code comments and docs cite inside the
//! repository exists, relative Markdown links resolve, and nothing cites notes kept outside
//! it.

use std::fs;
use std::path::{Path, PathBuf};

/// Folders whose text is checked (fixtures and installed packages are data, not prose).
const ROOTS: [&str; 9] = ["src", "tests", "shaders", "js", "www", "docs", "scripts", "benches", ".ci"];
const FILES: [&str; 4] = ["README.md", "BENCHMARKS.md", "build.sh", "Cargo.toml"];
const SKIP_DIRS: [&str; 5] = ["fixtures", "node_modules", "pkg", "target", "vendor"];
/// Written by the build (not committed): their paths are relative to `www/`.
const SKIP_FILES: [&str; 1] = ["www/offline-files.js"];
const EXTENSIONS: [&str; 11] = ["rs", "wgsl", "js", "ts", "md", "py", "sh", "html", "css", "toml", "json"];
/// Where cited repository paths start.
const TOP: [&str; 8] = ["src/", "tests/", "shaders/", "js/", "www/", "docs/", "scripts/", ".ci/"];
/// Made by the build, not committed.
const GENERATED: [&str; 3] = ["www/pkg", "tests/browser/node_modules", "tests/fixtures/quant"];
/// Words that point at notes outside the repository.
const OUTSIDE: [&str; 2] = ["GUIDE", "../shared"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                text_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| EXTENSIONS.contains(&e.to_string_lossy().as_ref())) {
            out.push(path);
        }
    }
}

/// Repository paths cited in `text`: runs of path characters that start with a top-level
/// folder, unless a placeholder or glob follows (`tests/kernels_*.rs`, `families/<family>/`).
fn cited_paths(text: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_path_char(chars[i]) || (i > 0 && is_path_char(chars[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_path_char(chars[i]) {
            i += 1;
        }
        let token: String = chars[start..i].iter().collect();
        let token = token.trim_end_matches(['.', ',', ':']).to_string();
        let templated = chars.get(i).is_some_and(|c| "*<{$".contains(*c));
        if !templated && TOP.iter().any(|t| token.starts_with(t)) && !token.contains("..") {
            out.push(token);
        }
    }
    out
}

/// Targets of relative Markdown links `[text](target)`.
fn markdown_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or("").to_string())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn cited_paths_exist_and_nothing_cites_outside_notes() {
    let root = root();
    let mut files: Vec<PathBuf> = FILES.iter().map(|f| root.join(f)).collect();
    for dir in ROOTS {
        text_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 100, "found only {} files to check", files.len());
    let this_file = root.join("tests/repo_references.rs");
    let mut missing = Vec::new();
    for file in files.iter().filter(|f| **f != this_file) {
        let Ok(text) = fs::read_to_string(file) else { continue };
        let rel = file.strip_prefix(&root).unwrap_or(file).display().to_string();
        if SKIP_FILES.contains(&rel.as_str()) {
            continue;
        }
        for word in OUTSIDE {
            if text.contains(word) {
                missing.push(format!("{rel}: cites {word:?}, which is not in the repository"));
            }
        }
        for path in cited_paths(&text) {
            if !GENERATED.iter().any(|g| path.starts_with(g)) && !root.join(&path).exists() {
                missing.push(format!("{rel}: cites {path}, which does not exist"));
            }
        }
        if rel.ends_with(".md") {
            let dir = file.parent().unwrap_or(&root);
            for link in markdown_links(&text) {
                if !dir.join(&link).exists() {
                    missing.push(format!("{rel}: links to {link}, which does not exist"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{} broken references:\n{}", missing.len(), missing.join("\n"));
}

#[test]
fn the_scanner_finds_paths_but_not_templates() {
    let text = "see `src/model/state.rs`, src/gpu/. and tests/kernels_*.rs or families/<f> and src/model/families/<family>/x";
    assert_eq!(cited_paths(text), ["src/model/state.rs", "src/gpu/"]);
    assert_eq!(markdown_links("[a](MODELS.md) [b](https://x.y/z) [c](../src/lib.rs#L1)"), ["MODELS.md", "../src/lib.rs"]);
}
