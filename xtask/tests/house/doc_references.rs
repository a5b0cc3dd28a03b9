//! Every document the repository's files refer to is in the repository: a `*.md` path named in
//! a source file, manifest, script or document resolves from the repository's root or from the
//! referring file's directory (a bare file name may also be one of `docs/`), and nothing points at the brief or the peer script outside the
//! clone (their place before the specification moved into `docs/` and the peer into
//! `rlhf-bench/peer/`). Data beside the clone (the HH-RLHF file CI reads) is not a document.

use super::{files, root};

/// File names that the project writes rather than ships: `report.md` is the scaling study's
/// output under its output directory.
const WRITTEN_BY_THE_PROJECT: &[&str] = &["report.md"];

/// Where the brief and the peer script lived outside the repository (spelt in two pieces, so that
/// this file does not name them).
const OUTSIDE: &[&str] = &[concat!("../shared/", "docs"), concat!("../shared/", "peer")];

/// The reports keep dated accounts of earlier runs, which may name where things were then.
const HISTORY: &[&str] = &["docs/perf-report.md", "docs/scaling-report.md"];

/// The `*.md` paths named on `line`: runs of path characters that end in `.md`.
fn md_paths(line: &str) -> Vec<&str> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut found = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (is_path(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                let word = line[s..i].trim_end_matches('.');
                if word.ends_with(".md") && word.len() > 3 && !word.starts_with("//") {
                    found.push(word);
                }
                start = None;
            }
            _ => {}
        }
    }
    found
}

#[test]
fn every_document_named_in_the_repository_is_in_it() {
    let root = root();
    let mut all = Vec::new();
    files(&root, &mut all);
    assert!(all.len() > 50, "the walk found {} files", all.len());
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in &all {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let relative = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let dir = file.parent().unwrap();
        for (n, line) in text.lines().enumerate() {
            if OUTSIDE.iter().any(|o| line.contains(o)) && !HISTORY.contains(&relative.as_str()) {
                missing.push(format!(
                    "{relative}:{}: points outside the repository",
                    n + 1
                ));
            }
            for reference in md_paths(line) {
                if WRITTEN_BY_THE_PROJECT.contains(&reference) {
                    continue;
                }
                checked += 1;
                let resolves = [root.join(reference), dir.join(reference)]
                    .into_iter()
                    .chain((!reference.contains('/')).then(|| root.join("docs").join(reference)))
                    .any(|path| path.is_file());
                if !resolves {
                    missing.push(format!("{relative}:{}: {reference}", n + 1));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} references found: is the scanner broken?"
    );
    assert!(
        missing.is_empty(),
        "documents named but not in the repository:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_in_prose_links_and_code() {
    assert_eq!(
        md_paths("see `docs/algorithms.md`, \"PPO\"; [report](docs/perf-report.md)."),
        ["docs/algorithms.md", "docs/perf-report.md"]
    );
    assert_eq!(md_paths("readme = \"README.md\""), ["README.md"]);
    assert!(md_paths("https://example.org/x/README.md and x.mdx").is_empty());
    assert_eq!(md_paths("as docs/tasks.md states."), ["docs/tasks.md"]);
}
