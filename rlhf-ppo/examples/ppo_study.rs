//! Small on-policy experiments on `tldr-synth` (the TL;DR pipeline at laptop scale, see
//! `rlhf_testkit::tldr`), judged by the gold scorer on 64 held-out prompts.
//!
//! ```text
//! cargo run --profile dev -p rlhf-ppo --example ppo_study -- samples     # PPO, RLOO, GRPO at n = 1, 4, 8
//! cargo run --profile dev -p rlhf-ppo --example ppo_study -- practices   # single RM vs ensemble vs length-only
//! ```
//!
//! Every run: 15 iterations of 64 episodes (64/n prompts × n samples), β = 0.05, lr 3e-4,
//! 2 minibatches × 4 epochs, seed 4. `PPO_ITERS` changes the iteration count.

use std::time::Instant;

use rlhf_core::Scorer;
use rlhf_core::train::RunOptions;
use rlhf_core::train::metrics::names;
use rlhf_ppo::{AdvantageEstimator, PolicyAndValue, PpoInputs, PpoReport, train_ppo};
use rlhf_reward::{Combine, EnsembleScorer, LengthScorer, RewardModel, RewardScorer};
use rlhf_testkit::tldr;
use tldr::{Tldr, build, gold_of_samples, mean, train_rm};

fn iterations() -> usize {
    std::env::var("PPO_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

struct Outcome {
    gold: f64,
    gold_sd: f64,
    report: PpoReport,
    seconds_per_iteration: f64,
    length: f64,
}

fn metric(r: &PpoReport, name: &str) -> f64 {
    r.last
        .iter()
        .find(|m| m.0 == name)
        .map_or(f64::NAN, |m| m.1)
}

/// Trains the SFT policy against `scorer` and judges it.
fn run(
    s: &Tldr,
    scorer: &dyn Scorer,
    critic_from: Option<&RewardModel>,
    advantage: AdvantageEstimator,
    n: usize,
) -> Outcome {
    let cfg = tldr::ppo_config(s, advantage, n, iterations(), 3e-4);
    let value = advantage.needs_critic().then(|| {
        critic_from
            .expect("a reward model for the critic")
            .to_value_model()
    });
    let inputs = PpoInputs {
        reference: &s.sft,
        scorer,
        tokenizer: &s.tok,
        prompts: &s.train_prompts,
        demonstrations: &[],
        eval: None,
        eval_every: 0,
        eval_first: false,
    };
    let start = Instant::now();
    let (models, report) = train_ppo(
        PolicyAndValue::new(s.sft.clone(), value),
        &inputs,
        &cfg,
        &RunOptions::quiet(),
        &s.device,
    )
    .unwrap();
    let seconds_per_iteration = start.elapsed().as_secs_f64() / report.iterations as f64;
    let gold = gold_of_samples(&models.policy, s);
    let m = mean(&gold);
    let sd = (gold.iter().map(|g| (g - m).powi(2)).sum::<f64>() / (gold.len() - 1) as f64).sqrt();
    Outcome {
        gold: m,
        gold_sd: sd / (gold.len() as f64).sqrt(),
        length: metric(&report, names::COMPLETIONS_MEAN_LENGTH),
        report,
        seconds_per_iteration,
    }
}

/// FLOPs of one iteration, `2·N` per token forward and `6·N` per token trained (N = non-embedding
/// parameters of the tiny model): generation, old and reference log-probs, the RM, the critic's
/// values, and `epochs` updates of the policy (and the critic).
fn flops_per_iteration(s: &Tldr, episodes: f64, response: f64, critic: bool, epochs: f64) -> f64 {
    let n = s.shape.non_embedding_params() as f64;
    let tokens = episodes * (s.query_length as f64 + response);
    let forward_models = 3.0 + f64::from(u8::from(critic)); // old, reference, RM, (critic)
    let trained = 1.0 + f64::from(u8::from(critic));
    2.0 * n * episodes * response
        + 2.0 * n * tokens * forward_models
        + 6.0 * n * tokens * trained * epochs
}

fn samples(s: &Tldr) {
    let rm = s.rm.as_ref().unwrap();
    let scorer = RewardScorer::new(rm.clone(), s.tok.clone(), &s.device);
    println!(
        "SFT policy: gold {:.3}; {} iterations of 64 episodes each\n",
        mean(&s.sft_gold),
        iterations()
    );
    println!(
        "| method | n | gold after (± s.e.) | gain | KL | RM score | length | s / iteration | GFLOP / iteration |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (advantage, n) in [
        (AdvantageEstimator::Gae, 1),
        (AdvantageEstimator::Gae, 4),
        (AdvantageEstimator::Gae, 8),
        (AdvantageEstimator::Rloo, 4),
        (AdvantageEstimator::Rloo, 8),
        (AdvantageEstimator::Grpo, 4),
        (AdvantageEstimator::Grpo, 8),
    ] {
        let o = run(s, &scorer, Some(rm), advantage, n);
        let flops = flops_per_iteration(s, 64.0, o.length, advantage.needs_critic(), 4.0);
        println!(
            "| {:?} | {n} | {:.3} ± {:.3} | {:+.3} | {:.2} | {:.3} | {:.1} | {:.2} | {:.1} |",
            advantage,
            o.gold,
            o.gold_sd,
            o.gold - mean(&s.sft_gold),
            metric(&o.report, names::OBJECTIVE_KL),
            metric(&o.report, names::OBJECTIVE_SCORES),
            o.length,
            o.seconds_per_iteration,
            flops / 1e9
        );
    }
}

fn practices(s: &Tldr) {
    let rm = s.rm.as_ref().unwrap();
    println!(
        "SFT policy: gold {:.3}; PPO (GAE, critic from the first RM), β = 0.05, {} iterations\n",
        mean(&s.sft_gold),
        iterations()
    );
    let members: Vec<RewardModel> = [(11, 12), (13, 14)]
        .iter()
        .map(|&(i, d)| {
            let (m, e) = train_rm(s, i, d);
            eprintln!(
                "ensemble member ({i}, {d}): gold-order accuracy {:.3}",
                e.gold_accuracy.unwrap_or(f64::NAN)
            );
            m
        })
        .collect();
    let served = |m: &RewardModel| -> Box<dyn Scorer> {
        Box::new(RewardScorer::new(m.clone(), s.tok.clone(), &s.device))
    };
    let single = RewardScorer::new(rm.clone(), s.tok.clone(), &s.device);
    let ensemble = EnsembleScorer::new(
        std::iter::once(rm).chain(&members).map(served).collect(),
        Combine::MeanMinusStd { lambda: 1.0 },
    )
    .unwrap();
    let length = LengthScorer::new(0.1, s.tok.eos_text());
    println!("| reward | gold after (± s.e.) | gain | KL | length |");
    println!("|---|---|---|---|---|");
    for (name, scorer) in [
        ("single RM", &single as &dyn Scorer),
        ("3-RM ensemble, mean − 1·std", &ensemble),
        ("length only (0.1 per word)", &length),
    ] {
        let o = run(s, scorer, Some(rm), AdvantageEstimator::Gae, 1);
        println!(
            "| {name} | {:.3} ± {:.3} | {:+.3} | {:.2} | {:.1} |",
            o.gold,
            o.gold_sd,
            o.gold - mean(&s.sft_gold),
            metric(&o.report, names::OBJECTIVE_KL),
            o.length
        );
    }
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "samples".into());
    let s = build();
    match which.as_str() {
        "samples" => samples(&s),
        "practices" => practices(&s),
        other => {
            eprintln!("unknown experiment {other:?}: samples | practices");
            std::process::exit(2);
        }
    }
}
