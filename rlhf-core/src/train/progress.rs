//! How a run reports its progress: a bar with ETA and the key metrics on a terminal (the
//! `progress` feature, with `indicatif`), otherwise a `tracing` event at `INFO` every `log_every`
//! steps (and at the first and the last), which the program's subscriber prints or drops.

use std::time::Instant;

/// The progress of one run's steps.
#[derive(Debug)]
pub(crate) struct Progress {
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
    /// Progress as events: the total steps, when this process began and at which step.
    lines: Option<(u64, Instant, u64)>,
    log_every: u64,
    label: String,
}

impl Progress {
    /// Progress over `total` steps from step `first` (a resumed run's), shown when `show`:
    /// as a bar when stderr is a terminal and the feature is on, otherwise as events.
    pub(crate) fn new(show: bool, total: u64, first: u64, label: &str, log_every: u64) -> Self {
        #[cfg(feature = "progress")]
        let bar = (show && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .then(|| bar(total, first, label));
        #[cfg(feature = "progress")]
        let show = show && bar.is_none();
        Progress {
            #[cfg(feature = "progress")]
            bar,
            lines: show.then(|| (total, Instant::now(), first)),
            log_every: log_every.max(1),
            label: label.to_string(),
        }
    }

    /// Reports `metrics` of `step` as an event when one is due.
    pub(crate) fn log(&self, step: u64, metrics: &[(&str, f64)]) {
        let Some((total, start, first)) = self.lines else {
            return;
        };
        if !(step == 1 || step == total || step.is_multiple_of(self.log_every)) {
            return;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let rate = step.saturating_sub(first).max(1) as f64 / elapsed.max(1e-9);
        tracing::info!(
            "{} {step}/{total} [{elapsed:.0} s, eta {:.0} s]  {}",
            self.label,
            total.saturating_sub(step) as f64 / rate,
            super::run::key_metrics(metrics)
        );
    }

    /// Moves the bar to `step` with a short status message.
    pub(crate) fn step_done(&self, step: u64, message: String) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(message);
        }
        #[cfg(not(feature = "progress"))]
        let _ = (step, message);
    }

    /// Emits a warning, with the bar out of its way.
    pub(crate) fn warn(&self, message: String) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            return bar.suspend(|| tracing::warn!("{message}"));
        }
        tracing::warn!("{message}");
    }

    /// Leaves the bar where it stopped, with `message`.
    pub(crate) fn abandon(&self, message: &'static str) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.abandon_with_message(message);
        }
        #[cfg(not(feature = "progress"))]
        let _ = message;
    }

    /// Clears the bar.
    pub(crate) fn finish(&self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(feature = "progress")]
fn bar(total: u64, first: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta} {msg}",
        )
        .expect("a valid template"),
    );
    bar.set_prefix(label.to_string());
    bar.set_position(first);
    bar
}
