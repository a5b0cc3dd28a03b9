//! The scaling study: presets of axes, each axis a list of points (one run configuration per
//! value and seed), and a sweep that runs every point not yet stored.
//!
//! A finished point is `DIR/points/<axis>__<value>__s<seed>.json`, written atomically; a sweep
//! started again skips every point whose file exists, and the point that was running resumes its
//! trainers from their last checkpoints (the method's in the point's work directory, a cached
//! stage's in its `.partial` directory), so a kill costs at most the steps since them and the
//! sampling and judging of that point. Points of different axes with the same configuration and
//! seed (the base PPO run appears on six axes) run once; the others copy its result. Models
//! shared between points (the tokenizer, one SFT per size and seed, one RM per RM configuration)
//! are cached in `DIR/cache`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, Result};

use crate::config::{MethodKind, RewardSource, RunConfig, Supervision};
use crate::pipeline::{RunResult, run};

/// One point of an axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The axis (`rm_volume`, `samples_per_prompt`, …).
    pub axis: String,
    /// The value's label (`1000`, `ppo`, …).
    pub label: String,
    /// The value as a number, for fits and plots (the index for categorical axes).
    pub x: f64,
    /// The run.
    pub config: RunConfig,
}

impl Point {
    /// The file name of the stored result.
    pub fn file_name(&self) -> String {
        format!("{}__{}__s{}.json", self.axis, self.label, self.config.seed)
    }
}

/// A stored point: what ran, where, and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointRecord {
    /// The point (axis, value, full configuration with its seed).
    pub point: Point,
    /// `git rev-parse HEAD` of the code that ran it.
    pub git_revision: String,
    /// The measurements.
    pub result: RunResult,
}

/// Every axis of the study, in report order.
pub const AXES: &[&str] = &[
    "rm_volume",
    "rm_diversity",
    "rm_size",
    "policy_size",
    "samples_per_prompt",
    "method",
    "kl_budget",
    "best_of_n",
    "length_control",
    "supervision",
];

/// The methods of the `method` axis (best-of-n has its own axis).
const EVERY_METHOD: [MethodKind; 6] = [
    MethodKind::Ppo,
    MethodKind::Grpo,
    MethodKind::Rloo,
    MethodKind::ReinforcePp,
    MethodKind::Dpo,
    MethodKind::Exo,
];

/// The budget of a preset.
struct Budget {
    demos: usize,
    sft_epochs: usize,
    vocab: usize,
    train_prompts: usize,
    eval_prompts: usize,
    iterations: usize,
    episodes: usize,
    volumes: Vec<usize>,
    base_pairs: usize,
    sizes: Vec<&'static str>,
    base_size: &'static str,
    ns: Vec<usize>,
    betas: Vec<f64>,
    best_of: Vec<usize>,
    methods: Vec<MethodKind>,
    /// `supervision`: labelled solutions per point, passes over them, best-of-n prompts and n.
    solutions: Vec<usize>,
    verifier_epochs: usize,
    verifier_prompts: usize,
    verifier_n: usize,
}

/// The seeds a preset runs when `--seeds` is not given: `smoke` one (CI), `quick` two (a spread,
/// in the time of one when they run side by side), `full` three.
pub fn default_seeds(preset: &str) -> Vec<u64> {
    match preset {
        "smoke" => vec![0],
        "quick" => vec![0, 1],
        _ => vec![0, 1, 2],
    }
}

fn budget(preset: &str) -> Result<Budget> {
    Ok(match preset {
        "smoke" => Budget {
            demos: 160,
            sft_epochs: 2,
            vocab: 384,
            train_prompts: 64,
            eval_prompts: 16,
            iterations: 2,
            episodes: 16,
            volumes: vec![64, 128],
            base_pairs: 128,
            sizes: vec!["xs"],
            base_size: "xs",
            ns: vec![1, 4],
            betas: vec![0.05],
            best_of: vec![1, 4],
            methods: vec![MethodKind::Ppo, MethodKind::Grpo, MethodKind::Dpo],
            solutions: vec![150, 300],
            verifier_epochs: 2,
            verifier_prompts: 32,
            verifier_n: 4,
        },
        "quick" => Budget {
            demos: 800,
            sft_epochs: 6,
            vocab: 512,
            train_prompts: 512,
            eval_prompts: 64,
            iterations: 10,
            episodes: 64,
            volumes: vec![250, 500, 1000, 2000],
            base_pairs: 1000,
            sizes: vec!["xs", "s", "m"],
            base_size: "s",
            ns: vec![1, 2, 4, 8],
            betas: vec![0.01, 0.05, 0.2],
            best_of: vec![1, 4, 16],
            methods: EVERY_METHOD.to_vec(),
            solutions: vec![750, 1500, 3000],
            verifier_epochs: 16,
            verifier_prompts: 300,
            verifier_n: 8,
        },
        "full" => Budget {
            demos: 4000,
            sft_epochs: 8,
            vocab: 1024,
            train_prompts: 4096,
            eval_prompts: 256,
            iterations: 100,
            episodes: 128,
            volumes: vec![250, 1000, 4000, 16000],
            base_pairs: 4000,
            sizes: vec!["xs", "s", "m", "tiny-25m"],
            base_size: "m",
            ns: vec![1, 2, 4, 8, 16],
            betas: vec![0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
            best_of: vec![1, 2, 4, 8, 16, 32, 64],
            methods: EVERY_METHOD.to_vec(),
            solutions: vec![750, 1500, 3000, 6000, 12000],
            verifier_epochs: 16,
            verifier_prompts: 1000,
            verifier_n: 16,
        },
        other => {
            return Err(Error::Config(format!(
                "unknown preset {other:?}: smoke, quick or full"
            )));
        }
    })
}

/// The points of `preset` on `axes` (all when empty) for `seeds`, on `device`.
pub fn preset_points(
    preset: &str,
    axes: &[String],
    seeds: &[u64],
    device: &str,
) -> Result<Vec<Point>> {
    let b = budget(preset)?;
    for a in axes {
        if !AXES.contains(&a.as_str()) {
            return Err(Error::Config(format!(
                "unknown axis {a:?}; the axes are {}",
                AXES.join(", ")
            )));
        }
    }
    let mut base = RunConfig {
        device: device.to_string(),
        ..RunConfig::default()
    };
    base.task.demos = b.demos;
    base.task.vocab_size = b.vocab;
    base.task.train_prompts = b.train_prompts;
    base.task.eval_prompts = b.eval_prompts;
    base.sft.epochs = b.sft_epochs;
    base.sft.policy_size = b.base_size.into();
    base.rm.size = b.base_size.into();
    base.rm.pairs = b.base_pairs;
    base.rm.eval_pairs = (b.eval_prompts * 3).min(200);
    base.method.ppo.iterations = b.iterations;
    base.method.ppo.prompts_per_batch = b.episodes;
    let on_policy = |kind: MethodKind, n: usize| {
        let mut c = base.clone();
        c.method.kind = kind;
        c.method.ppo.samples_per_prompt = n;
        c.method.ppo.prompts_per_batch = (b.episodes / n).max(1);
        c
    };
    let mut points = Vec::new();
    let mut add = |axis: &str, label: String, x: f64, config: RunConfig| {
        if axes.is_empty() || axes.iter().any(|a| a == axis) {
            for &seed in seeds {
                let mut config = config.clone();
                config.seed = seed;
                points.push(Point {
                    axis: axis.into(),
                    label: label.clone(),
                    x,
                    config,
                });
            }
        }
    };
    // RM accuracy against pairs (no policy optimisation: the SFT policy is judged)
    for &v in &b.volumes {
        let mut c = base.clone();
        c.rm.pairs = v;
        c.method.kind = MethodKind::BestOfN;
        c.method.best_of_n = 1;
        add("rm_volume", v.to_string(), v as f64, c);
    }
    // a fixed pair budget: many prompts × 1 pair vs few prompts × 4 pairs
    for &k in &[1usize, 4] {
        let mut c = base.clone();
        c.rm.pairs_per_prompt = k;
        c.method.kind = MethodKind::BestOfN;
        c.method.best_of_n = 4;
        add("rm_diversity", format!("{k}-per-prompt"), k as f64, c);
    }
    for (i, s) in b.sizes.iter().enumerate() {
        let mut c = on_policy(MethodKind::Ppo, 1);
        c.rm.size = (*s).into();
        add("rm_size", (*s).into(), i as f64, c);
        let mut c = on_policy(MethodKind::Ppo, 1);
        c.sft.policy_size = (*s).into();
        add("policy_size", (*s).into(), i as f64, c);
    }
    for &n in &b.ns {
        add(
            "samples_per_prompt",
            n.to_string(),
            n as f64,
            on_policy(MethodKind::Ppo, n),
        );
    }
    for (i, &kind) in b.methods.iter().enumerate() {
        let n = if matches!(kind, MethodKind::Grpo | MethodKind::Rloo) {
            4
        } else {
            1
        };
        let label = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        add("method", label, i as f64, on_policy(kind, n));
    }
    for &beta in &b.betas {
        let mut c = on_policy(MethodKind::Ppo, 1);
        c.method.ppo.kl = rlhf_core::KlController::Fixed { value: beta };
        add("kl_budget", beta.to_string(), beta, c);
    }
    for &n in &b.best_of {
        let mut c = base.clone();
        c.method.kind = MethodKind::BestOfN;
        c.method.best_of_n = n;
        add("best_of_n", n.to_string(), n as f64, c);
    }
    add(
        "length_control",
        "rm".into(),
        0.0,
        on_policy(MethodKind::Ppo, 1),
    );
    let mut c = on_policy(MethodKind::Ppo, 1);
    c.method.reward = RewardSource::Length;
    add("length_control", "length-only".into(), 1.0, c);
    // outcome vs process verifiers of arith-steps on the same solutions (see `crate::arith`)
    for supervision in [Supervision::Outcome, Supervision::Process] {
        for &v in &b.solutions {
            let mut c = base.clone();
            c.task.name = "arith-steps".into();
            c.task.eval_prompts = b.verifier_prompts;
            c.rm.supervision = supervision;
            c.rm.size = "s".into();
            c.rm.pairs = v;
            c.rm.eval_pairs = 300;
            c.rm.epochs = b.verifier_epochs;
            c.rm.lr = 2e-3;
            c.method.kind = MethodKind::BestOfN;
            c.method.best_of_n = b.verifier_n;
            let kind = match supervision {
                Supervision::Outcome => "outcome",
                Supervision::Process => "process",
            };
            add("supervision", format!("{kind}-{v}"), v as f64, c);
        }
    }
    Ok(points)
}

/// The git revision of the working directory (`-dirty` when it has uncommitted changes), or
/// `unknown`.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=40"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

/// What a sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Points run by this call.
    pub ran: usize,
    /// Points whose identical run (same configuration and seed) was stored under another axis.
    pub copied: usize,
    /// Points found finished and skipped.
    pub skipped: usize,
}

/// Runs every point of `points` whose result is not yet in `out/points/`, in order, with a
/// progress bar; logs one line per point to stderr.
pub fn sweep(points: &[Point], out: &Path, progress: bool) -> Result<SweepReport> {
    let dir = out.join("points");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let cache = out.join("cache");
    let revision = git_revision();
    let bar = if progress {
        ProgressBar::with_draw_target(Some(points.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta} {msg}",
        )
        .expect("a valid template"),
    );
    bar.set_prefix("sweep");
    let log = |line: String| {
        if progress {
            bar.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let mut report = SweepReport::default();
    // the points stored so far (by earlier sweeps and by this one), for identical runs
    let mut stored = read_points(out)?;
    for p in points {
        let path = dir.join(p.file_name());
        if path.exists() {
            log(format!("skip (done)  {}", p.file_name()));
            report.skipped += 1;
            bar.inc(1);
            continue;
        }
        bar.set_message(p.file_name());
        let start = Instant::now();
        // several axes share a run (the base PPO point appears on six): a stored point with the
        // same configuration and seed already has its result
        let same = stored.iter().find(|r| r.point.config == p.config).cloned();
        let copied = same.is_some();
        let record = match same {
            Some(r) => {
                log(format!("same run as  {}", r.point.file_name()));
                PointRecord {
                    point: p.clone(),
                    git_revision: r.git_revision,
                    result: r.result,
                }
            }
            None => {
                let work: PathBuf = out
                    .join("work")
                    .join(p.file_name().trim_end_matches(".json"));
                let result = run(&p.config, &cache, &work)?;
                let _ = std::fs::remove_dir_all(&work);
                PointRecord {
                    point: p.clone(),
                    git_revision: revision.clone(),
                    result,
                }
            }
        };
        let json =
            serde_json::to_string_pretty(&record).map_err(|e| Error::Record(e.to_string()))?;
        write_atomic(&path, json.as_bytes())?;
        log(format!(
            "done {:6.1} s  {}  gold {:.3}  kl {:.2}",
            start.elapsed().as_secs_f64(),
            p.file_name(),
            record
                .result
                .metrics
                .get("gold/mean")
                .copied()
                .unwrap_or(f64::NAN),
            record.result.metrics.get("kl").copied().unwrap_or(f64::NAN)
        ));
        stored.push(record);
        if copied {
            report.copied += 1;
        } else {
            report.ran += 1;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Reads every stored point of `out/points/`, sorted by file name.
pub fn read_points(out: &Path) -> Result<Vec<PointRecord>> {
    let dir = out.join("points");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            serde_json::from_str(&text).map_err(|e| Error::Data {
                file: f.clone(),
                line: e.line(),
                field: "point".into(),
                message: e.to_string(),
            })
        })
        .collect()
}
