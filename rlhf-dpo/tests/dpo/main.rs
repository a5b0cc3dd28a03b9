//! rlhf-dpo's integration tests that need no process of their own, in one binary: the reference
//! cache's key, one step on `RLHF_DEVICE` against `flex`, one step on every model family, the
//! correctness review's tests, TRL's token metrics, and TRL's formulas on a fixed table. The
//! tests that compare runs bit for bit are in `tests/serial/`, the learning tests in
//! `tests/learning.rs`.

mod cache;
mod devices;
mod families;
mod review;
mod token_metrics;
mod trl_table;

use rlhf_dpo::{DpoConfig, Group, RefCache, train_offline};
use rlhf_models::CausalLm;
use serde_json::{Map, Value};

/// The metric lines of a `train_offline` run (in a directory of its own, without a reference
/// cache), for tests that read what a run logs.
fn logged_run(
    policy: CausalLm,
    reference: &CausalLm,
    train: &[Group],
    eval: &[Group],
    cfg: &DpoConfig,
    device: &burn::tensor::Device,
) -> Vec<Map<String, Value>> {
    let dir = tempfile::tempdir().unwrap();
    let options = rlhf_core::train::RunOptions::quiet_in(dir.path());
    let cache = RefCache::new(None);
    train_offline(
        policy, reference, train, eval, cfg, &cache, &options, device,
    )
    .unwrap();
    rlhf_core::train::metrics::read_metrics(&dir.path().join("metrics.jsonl")).unwrap()
}
