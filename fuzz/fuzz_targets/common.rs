//! What every target shares: a scratch directory (one per process) and the reader contract.

use std::path::{Path, PathBuf};

use rlhf_data::{Loaded, ReadOptions, Record, read_records};

/// A directory for this process's input files.
pub fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("rlhf-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

/// Reads `path` as records of type `R`, stopping at the first bad one and skipping bad ones:
/// either way no panic, read = kept + rejected, and an error names the file.
pub fn read_all<R: Record>(path: &Path) {
    for skip_bad in [false, true] {
        let opts = ReadOptions {
            skip_bad,
            max_line_bytes: 1 << 16,
            ..ReadOptions::default()
        };
        check(read_records::<R>(path, &opts), path);
    }
}

fn check<R>(result: rlhf_core::Result<Loaded<R>>, path: &Path) {
    match result {
        Ok(l) => assert_eq!(l.report.read, l.report.kept + l.report.rejected),
        Err(e) => {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(e.to_string().contains(&name), "error without the file: {e}");
        }
    }
}
