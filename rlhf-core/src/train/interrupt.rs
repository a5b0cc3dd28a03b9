//! Stopping a run cleanly on SIGINT or SIGTERM: the trainer finishes the step it is on, writes a
//! checkpoint and returns [`Error::Interrupted`](crate::Error::Interrupted), so the run resumes
//! from exactly there.
//!
//! [`Run::start`](super::Run::start) installs the handlers the first time a run with an output
//! directory starts (a run that keeps nothing on disk has nothing to save). The first signal only
//! raises a flag that the trainers read after each step; a second one ends the process at once
//! (exit code 1), so a stuck program can still be stopped with a second Ctrl-C.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the SIGINT/SIGTERM handlers (once per process; later calls do nothing).
pub fn install_handlers() -> Result<()> {
    let mut outcome = Ok(());
    INSTALL.call_once(|| {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // order matters: the conditional exit sees the flag as it was *before* this signal
            let registered =
                signal_hook::flag::register_conditional_shutdown(signal, 1, &REQUESTED)
                    .and_then(|_| signal_hook::flag::register(signal, &REQUESTED));
            if let Err(e) = registered {
                outcome = Err(Error::Config(format!(
                    "could not install the handler of signal {signal}: {e}"
                )));
            }
        }
    });
    outcome
}

/// Whether SIGINT or SIGTERM arrived since the handlers were installed (or since [`clear`]).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Raises the flag as a signal would (for programs that stop a run for their own reasons).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Lowers the flag, so a program that caught an interrupted run can start another.
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}
