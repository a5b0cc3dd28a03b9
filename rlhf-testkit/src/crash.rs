//! Crash tests for the trainers: run one test of the current test binary in a child process,
//! let it train into a directory, and kill it (SIGKILL) or stop it (SIGTERM) once it has logged a
//! given step. The parent then resumes in the same directory and compares with a run that never
//! stopped.
//!
//! The child is named with [`test_name!`](crate::test_name), which gives the test's name as
//! libtest knows it, module path included, in a binary of one file or of several modules.
//!
//! ```no_run
//! # fn train(_dir: &std::path::Path) {}
//! use rlhf_testkit::crash::{Signal, child_dir, signal_child_at_step};
//!
//! #[test]
//! #[ignore = "the child process of a crash test"]
//! fn crash_child() {
//!     if let Some(dir) = child_dir() {
//!         train(&dir);
//!     }
//! }
//!
//! #[test]
//! fn survives_sigkill() {
//!     let dir = tempfile::tempdir().unwrap();
//!     let child = rlhf_testkit::test_name!(crash_child);
//!     let status = signal_child_at_step(&child, dir.path(), 3, Signal::Kill).unwrap();
//!     assert!(!status.success());
//!     train(dir.path()); // resumes from the newest checkpoint
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rlhf_core::{Error, Result};

/// The environment variable that tells a child test where to train.
pub const CHILD_DIR_ENV: &str = "RLHF_CRASH_CHILD_DIR";

/// The signal a crash test sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: the process dies at once, wherever it is (mid-step, mid-checkpoint).
    Kill,
    /// SIGTERM: the trainer finishes its step, checkpoints it and returns.
    Term,
}

/// In a child started by [`signal_child_at_step`], the directory to train into; `None` in an
/// ordinary test run.
pub fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_DIR_ENV).map(PathBuf::from)
}

/// The name libtest gives test function `$test` of the calling module: the module's path inside
/// the test binary, then the function's name (`kto::kto_sigkill_child` in a binary whose
/// `main.rs` declares `mod kto`; `rm_sigkill_child` in a binary of one file). The child of a
/// crash test is run by this name with `--exact`. Naming a function that is not in scope is a
/// compile error.
#[macro_export]
macro_rules! test_name {
    ($test:ident) => {{
        let _: fn() = $test;
        $crate::crash::name_in_binary(module_path!(), stringify!($test))
    }};
}

/// The name libtest gives test `test` of the module at `module_path` (a `module_path!()`, which
/// starts with the binary's crate name, which libtest leaves out). See [`test_name!`].
///
/// [`test_name!`]: crate::test_name
pub fn name_in_binary(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_binary, module)) => format!("{module}::{test}"),
        None => test.to_owned(),
    }
}

/// A step in `1..last` drawn from the clock (printed, so a failure can be replayed with
/// `RLHF_CRASH_STEP`, which overrides it).
pub fn random_step(last: u64) -> u64 {
    if let Some(s) = std::env::var("RLHF_CRASH_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return s;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let step = 1 + u64::from(nanos) % last.saturating_sub(1).max(1);
    eprintln!("crash test: signal at step {step} (RLHF_CRASH_STEP={step} replays it)");
    step
}

/// Lines in `dir/metrics.jsonl` (0 when it does not exist yet).
fn logged_steps(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(0, |s| s.lines().count())
}

/// Runs test `test_name` (its full name, as [`test_name!`](crate::test_name) gives it) of the
/// current test binary in a child process with [`CHILD_DIR_ENV`]` = dir`, waits until it has
/// logged `step` metrics lines, sends `signal` and returns the child's exit status. Fails when the
/// child ends before that step, or after two minutes.
pub fn signal_child_at_step(
    test_name: &str,
    dir: &Path,
    step: u64,
    signal: Signal,
) -> Result<ExitStatus> {
    let exe = std::env::current_exe().map_err(|e| Error::io("current test binary", e))?;
    let mut child = Command::new(&exe)
        .args([test_name, "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(&exe, e))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while logged_steps(dir) < step as usize {
        if let Some(status) = child.try_wait().map_err(|e| Error::io(&exe, e))? {
            return Err(Error::Config(format!(
                "the child ended ({status}) after {} steps, before step {step}",
                logged_steps(dir)
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(Error::Config(format!(
                "the child did not reach step {step} in two minutes"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    match signal {
        Signal::Kill => child.kill().map_err(|e| Error::io(&exe, e))?,
        Signal::Term => {
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .map_err(|e| Error::io("kill", e))?;
            if !sent.success() {
                return Err(Error::Config(format!("`kill -TERM` failed: {sent}")));
            }
        }
    }
    child.wait().map_err(|e| Error::io(&exe, e))
}

/// The whole SIGKILL test of a trainer. `train(dir)` trains into `dir` (resuming from its newest
/// checkpoint, as every trainer does) and returns the final weights; `child_test` is the full
/// name ([`test_name!`](crate::test_name)) of an ignored test that calls `train(child_dir())`.
/// Runs `train` straight into one directory; runs the child into another, kills it with SIGKILL
/// at a random step in `1..total - 1` and resumes there; then asserts the same final weights, bit
/// for bit, and the same metrics lines (the `time/*` metrics aside).
///
/// # Panics
/// When the resumed run differs from the straight one, or the child could not be killed as
/// planned (these are test assertions).
pub fn assert_resumes_after_sigkill(
    child_test: &str,
    total: u64,
    train: impl Fn(&Path) -> Vec<f32>,
) {
    let straight = tempfile_dir("straight");
    let killed = tempfile_dir("killed");
    let expected = train(&straight);
    // at least two steps remain after the signal, so the child is still training when it lands
    let step = random_step(total - 1);
    let status = signal_child_at_step(child_test, &killed, step, Signal::Kill)
        .unwrap_or_else(|e| panic!("crash test at step {step}: {e}"));
    assert!(!status.success(), "the child was killed: {status}");
    let resumed = train(&killed);
    assert!(
        expected == resumed,
        "killed at step {step} and resumed: the final weights differ from the uninterrupted run's"
    );
    assert_eq!(
        metrics_without_time(&straight),
        metrics_without_time(&killed),
        "killed at step {step}: the metrics lines differ"
    );
    let _ = std::fs::remove_dir_all(&straight);
    let _ = std::fs::remove_dir_all(&killed);
}

/// The metrics lines of the run in `dir`, each without its `time/*` metrics (wall-clock times
/// differ between runs that are otherwise identical).
///
/// # Panics
/// When `dir/metrics.jsonl` cannot be read (a test assertion).
pub fn metrics_without_time(dir: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    rlhf_core::train::metrics::read_metrics(&dir.join("metrics.jsonl"))
        .expect("metrics")
        .into_iter()
        .map(|mut l| {
            l.retain(|k, _| !k.starts_with("time/"));
            l
        })
        .collect()
}

/// A fresh directory under the system's temp directory.
fn tempfile_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("rlhf-crash-{}-{n}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A lock for the tests of one test binary that must not overlap: on the CPU backend a training
/// run's last bits can differ while another test trains in the same process (seen with two test
/// threads; the cause is not known), so bit-for-bit comparisons hold only when their runs have
/// the process to themselves. Every test of such a binary takes it first.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
