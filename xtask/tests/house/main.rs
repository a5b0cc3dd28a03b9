//! The house rules, checked over the repository's files: every document the code names is in the
//! repository ([`doc_references`]), and no library function is over 80 lines without a reason
//! ([`long_functions`]).

mod doc_references;
mod long_functions;

use std::path::{Path, PathBuf};

/// Directories that hold build output or other repositories' files.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "corpus", "artifacts"];

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name) {
                files(&path, out);
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "md" | "toml" | "py" | "sh")
        ) || name == "run"
        {
            out.push(path);
        }
    }
}
