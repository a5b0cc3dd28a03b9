//! The stage cache: stages that several points share (the tokenizer, each SFT model, each reward
//! model, the SFT policy's judged samples) are built once into a directory under the sweep's
//! `cache/`, keyed by everything that decides them. A stage is built in `NAME.partial` and
//! renamed into place when complete, so a killed run never leaves half a model behind, and the
//! next build of the same stage resumes from the trainer's checkpoints in that directory.

use std::path::{Path, PathBuf};

use rlhf_core::train::RunOptions;
use rlhf_core::{Error, Result};

/// Runs `build` into `NAME.partial` beside `dir` and renames it to `dir`, unless `dir` exists.
///
/// - Exclusive: the build holds an advisory lock on `NAME.lock`, so sweeps running side by side
///   build a stage once; the others wait for it and then read it.
/// - Resumable: a build that was killed leaves its `.partial` directory, and the next build of
///   the same stage gets that directory back, so trainers that checkpoint inside it (see
///   [`stage_run`]) resume from their last checkpoint instead of starting over.
pub(crate) fn cached_dir(dir: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let sibling = |suffix: &str| {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        dir.with_file_name(name)
    };
    let (partial, lock_path) = (sibling(".partial"), sibling(".lock"));
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let lock = lock_file(&lock_path)?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    if !dir.exists() {
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        build(&partial)?;
        std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
    }
    // Whoever waits on this lock checks `dir` again once it has the lock, so removing the file
    // while it is held is safe; it only keeps the cache free of leftovers.
    let _ = std::fs::remove_file(&lock_path);
    Ok(())
}

/// Opens (creating it if needed) the file whose advisory lock guards a stage or a sweep's point.
pub(crate) fn lock_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Reads the JSON file `name` of a cached stage.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T> {
    let p = dir.join(name);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Data {
        file: p.clone(),
        line: e.line(),
        field: name.into(),
        message: e.to_string(),
    })
}

/// Writes `value` as the JSON file `name` of a stage being built.
pub(crate) fn write_json<T: serde::Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let json = serde_json::to_string(value).map_err(|e| Error::Record(e.to_string()))?;
    rlhf_core::train::fs::write_atomic(&dir.join(name), json.as_bytes())
}

/// The [`RunOptions`] of a method's training in a point's work directory: quiet, a checkpoint
/// every 5 steps (the last one kept).
pub(crate) fn quiet_in(dir: PathBuf) -> RunOptions {
    RunOptions {
        out_dir: Some(dir),
        checkpoint_every: 5,
        keep_last: 1,
        progress: false,
        ..RunOptions::default()
    }
}

/// The [`RunOptions`] of a training inside a cached stage: checkpoints in `partial/run` (every 25
/// steps), so a killed stage resumes. Call [`finish_stage_run`] once the stage's model is saved.
pub(crate) fn stage_run(partial: &Path) -> RunOptions {
    RunOptions {
        checkpoint_every: 25,
        ..quiet_in(partial.join("run"))
    }
}

/// Drops a finished stage's checkpoints (its saved model is what the cache keeps).
pub(crate) fn finish_stage_run(partial: &Path) -> Result<()> {
    let run = partial.join("run");
    match std::fs::remove_dir_all(&run) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&run, e)),
        _ => Ok(()),
    }
}

/// Sampling has no checkpoint to write, so after SIGINT/SIGTERM it stops before its next batch
/// ([`Error::Interrupted`] without a checkpoint) instead of finishing the stage; rerun, the point
/// resumes from its trainers' checkpoints and samples again (the samples are seeded).
pub(crate) fn stop_if_interrupted() -> Result<()> {
    if rlhf_core::train::interrupt::requested() {
        return Err(Error::Interrupted {
            step: 0,
            checkpoint: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_stage_killed_mid_build_resumes_in_its_partial_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sft-x");
        // the first build leaves progress behind and dies
        let first = cached_dir(&dir, |tmp| {
            std::fs::write(tmp.join("progress"), "step 25").unwrap();
            Err(Error::Config("killed".into()))
        });
        assert!(first.is_err());
        assert!(!dir.exists());
        // the next build of the same stage gets that progress back
        let mut seen = String::new();
        cached_dir(&dir, |tmp| {
            seen = std::fs::read_to_string(tmp.join("progress")).unwrap();
            std::fs::write(tmp.join("model"), "weights").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, "step 25");
        assert_eq!(
            std::fs::read_to_string(dir.join("model")).unwrap(),
            "weights"
        );
        // nothing but the stage is left, and a finished stage is never built again
        let names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["sft-x"]);
        cached_dir(&dir, |_| panic!("a finished stage was built again")).unwrap();
    }

    #[test]
    fn stages_built_side_by_side_are_built_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("rm-x");
        let builds = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    cached_dir(&dir, |tmp| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        std::fs::write(tmp.join("model"), "weights").map_err(|e| Error::io(tmp, e))
                    })
                    .unwrap();
                    // every caller returns only once the stage is there
                    assert!(dir.join("model").exists());
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }
}
