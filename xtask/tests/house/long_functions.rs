//! No function of library code is over 80 lines unless a comment just above it (after its
//! documentation) says why it is one piece: `// One piece, over 80 lines: …`. Library code is
//! every crate's `src/` but binaries (`main.rs`, `src/bin/`), `xtask` and the test kit; test
//! modules (`#[cfg(test)] mod`) are not library code.

use std::path::{Path, PathBuf};

use super::{files, root};

const LIMIT: usize = 80;

const REASON: &str = "// One piece, over 80 lines:";

fn is_library(root: &Path, file: &Path) -> bool {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    file.extension().is_some_and(|e| e == "rs")
        && parts.len() >= 3
        && parts[1] == "src"
        && !matches!(parts[0], "xtask" | "rlhf-testkit" | "fuzz")
        && !parts.contains(&"bin")
        && parts.last() != Some(&"main.rs")
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The start of a function item: `fn name`, after any of `pub(…)`, `const`, `async`, `unsafe`.
fn is_fn_start(line: &str) -> bool {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.peek() {
        if w.starts_with("pub") || matches!(*w, "const" | "async" | "unsafe" | "extern") {
            words.next();
        } else {
            break;
        }
    }
    words.next() == Some("fn")
}

/// `line` without a trailing `// …` comment.
fn code(line: &str) -> &str {
    line.split(" //").next().unwrap_or(line).trim_end()
}

/// The line that closes the item opened at line `start` (at `start`'s indentation), searched
/// from `from`.
fn closing(lines: &[&str], start: usize, from: usize) -> usize {
    let ind = indent(lines[start]);
    (from..lines.len())
        .find(|&k| indent(lines[k]) == ind && lines[k].trim_start().starts_with('}'))
        .unwrap_or(lines.len() - 1)
}

/// `(first line, lines, name)` of each function over the limit in `text` without the reason.
fn unexplained(text: &str) -> Vec<(usize, usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        // a test module is not library code: skip to its end (`mod tests;` has none here)
        if lines[i].trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("mod ") && code(l).ends_with('{'))
        {
            i = closing(&lines, i + 1, i + 2) + 1;
            continue;
        }
        if !is_fn_start(lines[i]) {
            i += 1;
            continue;
        }
        // the signature ends at `{` (a body) or `;` (a declaration in a trait)
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = code(lines[j]);
            l.ends_with('{') || l.ends_with(';')
        }) else {
            break;
        };
        if code(lines[open]).ends_with(';') {
            i = open + 1;
            continue;
        }
        let close = closing(&lines, i, open + 1);
        let count = close - i + 1;
        if count > LIMIT {
            let explained = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    let t = l.trim_start();
                    t.starts_with("//") || t.starts_with("#[")
                })
                .any(|l| l.trim_start().starts_with(REASON));
            if !explained {
                let name = lines[i].split("fn ").nth(1).unwrap_or("");
                let name = name.split(['(', '<']).next().unwrap_or(name);
                found.push((i + 1, count, name.to_string()));
            }
            i = close + 1;
        } else {
            i += 1;
        }
    }
    found
}

#[test]
fn the_checker_finds_a_long_function_and_accepts_a_reason() {
    let body = "    x();\n".repeat(LIMIT);
    let long = format!("/// Docs.\npub fn long() {{\n{body}}}\n");
    assert_eq!(unexplained(&long), vec![(2, LIMIT + 2, "long".to_string())]);
    let kept = format!("/// Docs.\n{REASON} a reason.\npub fn long() {{\n{body}}}\n");
    assert!(unexplained(&kept).is_empty());
    let short = "fn short() {\n    x();\n}\n";
    assert!(unexplained(short).is_empty());
    let in_tests = format!("#[cfg(test)]\nmod tests {{\n    fn long() {{\n{body}    }}\n}}\n");
    assert!(unexplained(&in_tests).is_empty());
    // library code after a test module, a method, a signature over several lines, a comment
    // after the opening brace
    let after = format!(
        "{in_tests}impl A {{\n    pub(crate) fn method(\n        &self,\n    ) -> u8 {{ // note\n{body}    }}\n}}\n"
    );
    assert_eq!(
        unexplained(&after),
        vec![(LIMIT + 7, LIMIT + 4, "method".to_string())]
    );
}

#[test]
fn no_library_function_is_over_80_lines_without_a_reason() {
    let root = root();
    let mut all: Vec<PathBuf> = Vec::new();
    files(&root, &mut all);
    let library: Vec<&PathBuf> = all.iter().filter(|f| is_library(&root, f)).collect();
    assert!(
        library.len() > 50,
        "the walk found {} library files",
        library.len()
    );
    let mut offenders = Vec::new();
    for file in library {
        let text = std::fs::read_to_string(file).expect("a library file reads");
        let rel = file.strip_prefix(&root).unwrap_or(file);
        let rel = rel.to_string_lossy().replace('\\', "/");
        for (line, count, name) in unexplained(&text) {
            offenders.push(format!("{rel}:{line} `{name}`: {count} lines"));
        }
    }
    assert!(
        offenders.is_empty(),
        "split these functions, or say above each why it is one piece (`{REASON} …`):\n{}",
        offenders.join("\n")
    );
}
