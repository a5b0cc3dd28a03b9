//! Training plumbing shared by every trainer (SFT, reward model, PPO, DPO/EXO): the optimizer,
//! learning-rate schedules, global-norm gradient clipping and accumulation, the seeded RNG,
//! atomic checkpoints that resume exactly, the metrics sink, and [`Run`], which ties checkpoints,
//! metrics and the progress bar together for a trainer's loop.

pub mod checkpoint;
pub mod fit;
pub mod grads;
pub mod interrupt;
pub mod memory;
pub mod metrics;
pub mod optim;
mod progress;
pub mod replicas;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod soft_update;
pub mod sync_ref;

pub use checkpoint::{Checkpoint, CheckpointStore, NewCheckpoint, Part};
pub use fit::{
    AfterStep, BatchLoss, FitConfig, FitReport, LossOf, Metrics, eval_due, fit, fit_with, metric,
    tokens_at_step_end,
};
pub use grads::{
    GradAccumulation, clip_global_grad_norm, clip_if_set, global_grad_norm, scale_grads,
    with_fresh_param_ids,
};
pub use metrics::MetricsSink;
pub use optim::OptimizerConfig;
pub use replicas::{Replicas, Shard};
pub use rlhf_base::{allocator, fs, tune_allocator};
pub use rng::{TrainRng, materialise, seed_all, seeded, try_seeded};
pub use run::{Run, RunOptions};
pub use schedule::{LrSchedule, SchedulePlan, ScheduleShape};
pub use soft_update::soft_update;
pub use sync_ref::{LiveReference, REFERENCE_PART, SyncRef};
