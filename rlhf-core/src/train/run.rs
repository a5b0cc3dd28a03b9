//! [`Run`]: what every trainer's loop shares — an output directory with `checkpoints/` and
//! `metrics.jsonl`, resuming from the newest checkpoint, and progress with ETA
//! ([`super::progress`]).
//!
//! A trainer asks [`Run::start`] for the checkpoint to resume from (if any), restores its own
//! state from it, logs metrics with [`Run::log`], reports each finished step with
//! [`Run::step_done`] and saves with [`Run::save`] when [`Run::checkpoint_due`] says so. On
//! resume the metrics file is cut back to the checkpoint's step, so it reads as if the run had
//! never stopped; so is `completions.jsonl`, the samples a trainer that samples shows with
//! [`Run::log_completions`].
//!
//! Two guards live here too. [`Run::check_finite`] counts steps skipped for a non-finite loss or
//! gradient norm (the count is saved with each checkpoint) and stops the run after
//! `max_nonfinite_streak` in a row, naming the last good checkpoint. [`Run::interrupted`] says
//! whether SIGINT or SIGTERM arrived (see [`super::interrupt`]): the trainer then checkpoints the
//! step it just finished and returns [`Error::Interrupted`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::checkpoint::{Checkpoint, CheckpointStore, NewCheckpoint};
use super::interrupt;
use super::memory;
use super::metrics::MetricsSink;
use super::progress::Progress;
use super::replicas::Replicas;
use crate::{Error, Result};

/// The key of the skipped-step count in a checkpoint's state.
const SKIPPED_KEY: &str = "skipped_steps";

/// The samples a run shows ([`RunOptions::log_completions`]), beside `metrics.jsonl`.
pub const COMPLETIONS_FILE: &str = "completions.jsonl";

/// Where a trainer writes and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunOptions {
    /// Output directory (`checkpoints/`, `metrics.jsonl`); `None` keeps everything in memory.
    pub out_dir: Option<PathBuf>,
    /// Save a checkpoint every this many optimizer steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Report progress: a progress bar with ETA and the key metrics when stderr is a terminal
    /// (and the `progress` feature is on), otherwise a `tracing` event every `log_every` steps
    /// (and at the first and last).
    pub progress: bool,
    /// Steps between progress events when there is no bar (TRL's `logging_steps`).
    pub log_every: u64,
    /// Stop after this many optimizer steps in a row with a non-finite loss or gradient norm.
    pub max_nonfinite_streak: u32,
    /// Write up to this many of each logged step's samples (prompt and completion, and what the
    /// trainer adds: an on-policy score and advantage) to
    /// `completions.jsonl`, for a trainer that samples (TRL's `log_completions` with
    /// `num_completions_to_print`, where TRL writes every completion to a parquet file besides;
    /// `None`: off). Logged steps: every `log_every` steps and the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_completions: Option<usize>,
    /// Data-parallel replicas: each micro-batch split between them (see [`Replicas`]). Where a
    /// run runs, not what it computes: not part of a run's recorded options.
    #[serde(skip)]
    pub replicas: Replicas,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            out_dir: None,
            checkpoint_every: 0,
            keep_last: 2,
            progress: true,
            log_every: 10,
            max_nonfinite_streak: 8,
            log_completions: None,
            replicas: Replicas::default(),
        }
    }
}

impl RunOptions {
    /// In memory and without progress reports, with the other defaults: a run inside a test, a
    /// benchmark or a larger program that reports on its own.
    pub fn quiet() -> Self {
        RunOptions {
            progress: false,
            ..Self::default()
        }
    }

    /// [`RunOptions::quiet`], writing to `dir`.
    pub fn quiet_in(dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            out_dir: Some(dir.into()),
            ..Self::quiet()
        }
    }

    /// Writing to `dir`, with the other defaults.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            out_dir: Some(dir.into()),
            ..Self::default()
        }
    }
}

/// One trainer's run: checkpoints, metrics and progress.
#[derive(Debug)]
pub struct Run {
    options: RunOptions,
    store: Option<CheckpointStore>,
    metrics: Option<MetricsSink>,
    completions: Option<MetricsSink>,
    progress: Progress,
    skipped: u64,
    streak: u32,
}

/// The metrics a progress line or bar shows, when a step has them.
const KEY_METRICS: &[&str] = &[
    super::metrics::names::TRAIN_LOSS,
    super::metrics::names::EVAL_LOSS,
    super::metrics::names::REWARDS_ACCURACIES,
    super::metrics::names::REWARDS_MARGINS,
    super::metrics::names::EVAL_ACCURACY,
    super::metrics::names::OBJECTIVE_SCORES,
    super::metrics::names::OBJECTIVE_KL,
    super::metrics::names::TRAIN_GRAD_NORM,
    super::metrics::names::TRAIN_LR,
];

/// `name value` for each key metric present in `metrics`.
pub fn key_metrics(metrics: &[(&str, f64)]) -> String {
    KEY_METRICS
        .iter()
        .filter_map(|k| metrics.iter().find(|m| m.0 == *k))
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join("  ")
}

impl Run {
    /// Opens the run's directory. Returns the newest checkpoint when there is one (a damaged
    /// newest checkpoint is an error that names the newest good one); the metrics file is then
    /// cut back to its step. `total_steps` sizes the progress bar; `label` prefixes it. With an
    /// output directory, SIGINT and SIGTERM stop the run cleanly from here on.
    pub fn start(
        options: &RunOptions,
        total_steps: u64,
        label: &str,
    ) -> Result<(Run, Option<Checkpoint>)> {
        let store = options
            .out_dir
            .as_ref()
            .map(|d| CheckpointStore::new(d.join("checkpoints"), options.keep_last));
        let resume = match &store {
            Some(s) => {
                interrupt::install_handlers()?;
                s.remove_partial()?;
                s.latest()?
            }
            None => None,
        };
        let skipped = resume
            .as_ref()
            .and_then(|c| c.state.get(SKIPPED_KEY)?.as_u64())
            .unwrap_or(0);
        // a resumed run's files are cut back to its checkpoint's step
        let sink = |name: &str| -> Result<Option<MetricsSink>> {
            let Some(d) = &options.out_dir else {
                return Ok(None);
            };
            let mut sink = MetricsSink::open(d.join(name))?;
            sink.truncate_after(resume.as_ref().map_or(0, |c| c.step))?;
            Ok(Some(sink))
        };
        let metrics = sink("metrics.jsonl")?;
        // cut back too when this run logs none, so a run that logged them leaves no line past
        // the checkpoint it resumes from
        let logged_before = options
            .out_dir
            .as_ref()
            .is_some_and(|d| d.join(COMPLETIONS_FILE).exists());
        let completions = if options.log_completions.is_some() || logged_before {
            sink(COMPLETIONS_FILE)?
        } else {
            None
        };
        let progress = Progress::new(
            options.progress,
            total_steps,
            resume.as_ref().map_or(0, |c| c.step),
            label,
            options.log_every,
        );
        Ok((
            Run {
                options: options.clone(),
                store,
                metrics,
                completions,
                progress,
                skipped,
                streak: 0,
            },
            resume,
        ))
    }

    /// The output directory, if any.
    pub fn out_dir(&self) -> Option<&Path> {
        self.options.out_dir.as_deref()
    }

    /// Appends a metrics line for `step` (nothing without an output directory), and reports
    /// progress as an event when there is no bar and the step is due.
    pub fn log(&mut self, step: u64, metrics: &[(&str, f64)]) -> Result<()> {
        self.progress.log(step, metrics);
        match &mut self.metrics {
            Some(m) => m.log(step, metrics),
            None => Ok(()),
        }
    }

    /// How many samples of `step` to show in `completions.jsonl` (of `total` steps): `None` when
    /// the run logs none, or not at this step.
    pub fn completions_due(&self, step: u64, total: u64) -> Option<usize> {
        let due = step.is_multiple_of(self.options.log_every.max(1)) || step == total;
        self.completions
            .as_ref()
            .and(self.options.log_completions)
            .filter(|_| due)
    }

    /// Appends one line per sample of `step` to `completions.jsonl` (nothing when the run logs
    /// none).
    pub fn log_completions(&mut self, step: u64, rows: Vec<Map<String, Value>>) -> Result<()> {
        match &mut self.completions {
            Some(sink) => rows
                .into_iter()
                .try_for_each(|row| sink.log_object(step, row)),
            None => Ok(()),
        }
    }

    /// Advances the progress bar to `step` with a short status message.
    pub fn step_done(&self, step: u64, message: impl Into<String>) {
        self.progress.step_done(step, message.into());
    }

    /// Whether a checkpoint is due after `step`: every `checkpoint_every` steps, always at
    /// `last_step`, and when the run was interrupted.
    pub fn checkpoint_due(&self, step: u64, last_step: u64) -> bool {
        self.store.is_some()
            && (step == last_step
                || self.interrupted()
                || (self.options.checkpoint_every > 0
                    && step.is_multiple_of(self.options.checkpoint_every)))
    }

    /// Saves the checkpoint `build` makes atomically, with the skipped-step count in its state
    /// (nothing without an output directory). Returns the checkpoint's directory.
    ///
    /// The memory the steps freed goes back to the operating system first
    /// ([`memory::release_freed`]), so the checkpoint's bytes do not come on top of it.
    pub fn save<'a>(
        &self,
        build: impl FnOnce() -> Result<NewCheckpoint<'a>>,
    ) -> Result<Option<PathBuf>> {
        let Some(s) = &self.store else {
            return Ok(None);
        };
        memory::release_freed();
        let mut ckpt = build()?;
        if let Some(state) = ckpt.state.as_object_mut() {
            state.insert(SKIPPED_KEY.into(), self.skipped.into());
        }
        s.save(ckpt).map(Some)
    }

    /// Whether SIGINT or SIGTERM asked this run (one with an output directory) to stop.
    pub fn interrupted(&self) -> bool {
        self.store.is_some() && interrupt::requested()
    }

    /// After step `step` (checkpointed because [`Run::checkpoint_due`] said so): the
    /// [`Error::Interrupted`] to return when the run was interrupted.
    pub fn stop_if_interrupted(&self, step: u64) -> Result<()> {
        if !self.interrupted() {
            return Ok(());
        }
        self.progress.abandon("interrupted");
        Err(Error::Interrupted {
            step,
            checkpoint: self.last_checkpoint(),
        })
    }

    /// The newest checkpoint's directory, if any.
    pub fn last_checkpoint(&self) -> Option<PathBuf> {
        let s = self.store.as_ref()?;
        let step = *s.steps().ok()?.last()?;
        Some(s.path_of(step))
    }

    /// Records whether step `step`'s loss and gradient norm were finite. A non-finite one (whose
    /// update the trainer skips) is counted and reported as a warning with `context()` (which
    /// batch); more than `max_nonfinite_streak` in a row stop the run with
    /// [`Error::NonFinite`], which names the last good checkpoint.
    pub fn check_finite(
        &mut self,
        step: u64,
        finite: bool,
        context: impl FnOnce() -> String,
    ) -> Result<()> {
        if finite {
            self.streak = 0;
            return Ok(());
        }
        self.skipped += 1;
        self.streak += 1;
        self.progress.warn(format!(
            "step {step}: non-finite loss or gradient norm on {}; update skipped ({} in a row, \
             {} in all)",
            context(),
            self.streak,
            self.skipped
        ));
        if self.streak > self.options.max_nonfinite_streak {
            return Err(Error::NonFinite {
                step,
                streak: self.streak,
                last_checkpoint: self.last_checkpoint(),
            });
        }
        Ok(())
    }

    /// Steps skipped for a non-finite loss or gradient norm, over the whole run (resumes
    /// included).
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Clears the progress bar.
    pub fn finish(&self) {
        self.progress.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::super::checkpoint::Part;
    use super::*;

    #[test]
    fn resumes_from_the_newest_checkpoint_and_cuts_metrics_back() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RunOptions {
            checkpoint_every: 2,
            progress: false,
            ..RunOptions::in_dir(dir.path())
        };
        let (mut run, resume) = Run::start(&opts, 5, "test").unwrap();
        assert!(resume.is_none());
        for step in 1..=3 {
            run.log(step, &[("train/loss", step as f64)]).unwrap();
            if run.checkpoint_due(step, 5) {
                run.save(|| {
                    Ok(NewCheckpoint {
                        step,
                        parts: vec![("model".into(), Part::bytes(vec![step as u8]))],
                        state: serde_json::json!({"step": step}),
                    })
                })
                .unwrap();
            }
        }
        // "killed" after step 3: the checkpoint of step 2 is the newest
        drop(run);
        let (run, resume) = Run::start(&opts, 5, "test").unwrap();
        let c = resume.unwrap();
        assert_eq!((c.step, c.parts["model"].clone()), (2, vec![2]));
        let lines = super::super::metrics::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(lines.len(), 2, "step 3's line is gone");
        assert!(run.checkpoint_due(5, 5) && run.checkpoint_due(4, 5) && !run.checkpoint_due(3, 5));
    }
}
