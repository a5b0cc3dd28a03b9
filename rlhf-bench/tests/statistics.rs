//! The study's statistics on synthetic points whose truth is known: sweeps of three seeds whose
//! best-of-n effect is drawn as a real sweep's would be (a true effect, a seed-to-seed spread,
//! per-prompt noise), run through the same findings code as a real report.
//!
//! - a clear effect is reproduced, and its 95% interval covers the true value in at least 90%
//!   of 200 simulated studies (Student's t over three seeds should cover about 95%);
//! - an effect well inside the noise is inconclusive (in at least 90% of 200 studies);
//! - a clear effect against the claim is contradicted;
//! - one seed never gives a verdict, however clear its prompts make the effect.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use rlhf_bench::findings::{Finding, findings};
use rlhf_bench::metrics::{items, names};
use rlhf_bench::stats::Verdict;
use rlhf_bench::{Axis, MethodKind, Point, PointRecord, RunConfig, RunResult};

const PROMPTS: usize = 512;

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller
    let (u, v): (f64, f64) = (rng.random(), rng.random());
    (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn point(n: usize, seed: u64, gold: Vec<f64>) -> PointRecord {
    let mut config = RunConfig {
        seed,
        ..RunConfig::default()
    };
    config.method.kind = MethodKind::BestOfN;
    config.method.best_of_n = n;
    let mean = gold.iter().sum::<f64>() / gold.len() as f64;
    PointRecord {
        point: Point {
            axis: Axis::BestOfN,
            label: n.to_string(),
            x: n as f64,
            config,
        },
        git_revision: "synthetic".into(),
        result: RunResult {
            metrics: BTreeMap::from([(names::GOLD.to_string(), mean)]),
            items: BTreeMap::from([(items::GOLD.to_string(), gold)]),
            curve: Vec::new(),
            wall_seconds: 0.0,
        },
    }
}

/// A sweep of `seeds` seeds: per seed, the SFT policy's gold per prompt (a prompt effect plus
/// noise) and best-of-16's (the same prompts, plus the seed's effect `truth + N(0, seed_sd)`,
/// plus noise).
fn study(rng: &mut ChaCha8Rng, seeds: u64, truth: f64, seed_sd: f64) -> Vec<PointRecord> {
    let mut out = Vec::new();
    for seed in 0..seeds {
        let effect = truth + seed_sd * normal(rng);
        let (mut one, mut best) = (Vec::new(), Vec::new());
        for _ in 0..PROMPTS {
            let prompt = 0.4 * normal(rng);
            one.push(prompt + 0.5 * normal(rng));
            best.push(prompt + effect + 0.5 * normal(rng));
        }
        out.push(point(1, seed, one));
        out.push(point(16, seed, best));
    }
    out
}

fn best_of_n(points: &[PointRecord]) -> Finding {
    findings(points)
        .into_iter()
        .find(|f| f.axis == Axis::BestOfN)
        .expect("the best-of-n finding")
}

#[test]
fn a_clear_effect_is_reproduced_and_its_interval_covers_the_truth() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let truth = 0.3;
    let (mut covered, mut reproduced) = (0, 0);
    for _ in 0..200 {
        let f = best_of_n(&study(&mut rng, 3, truth, 0.05));
        let i = f.interval.expect("three seeds give an interval");
        assert_eq!(i.seeds, 3);
        covered += usize::from(i.covers(truth));
        reproduced += usize::from(f.verdict == Verdict::Reproduced);
    }
    assert!(
        covered >= 180,
        "the interval covered the truth in {covered} of 200 studies"
    );
    assert!(
        reproduced >= 190,
        "reproduced in {reproduced} of 200 studies"
    );
}

#[test]
fn an_effect_inside_the_noise_is_inconclusive() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // a true effect of 0.01 against a seed-to-seed spread of 0.1
    let f = best_of_n(&study(&mut rng, 3, 0.01, 0.1));
    assert_eq!(f.verdict, Verdict::Inconclusive, "{f:?}");
    let inconclusive = (0..200)
        .filter(|_| best_of_n(&study(&mut rng, 3, 0.01, 0.1)).verdict == Verdict::Inconclusive)
        .count();
    assert!(
        inconclusive >= 180,
        "inconclusive in {inconclusive} of 200 studies"
    );
    assert!(f.table_line().contains("**inconclusive**"));
}

#[test]
fn a_clear_effect_against_the_claim_is_contradicted() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let f = best_of_n(&study(&mut rng, 5, -0.3, 0.05));
    assert_eq!(f.verdict, Verdict::Contradicted, "{f:?}");
    assert_eq!(f.interval.unwrap().seeds, 5);
}

#[test]
fn one_seed_gives_an_interval_over_prompts_and_no_verdict() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let f = best_of_n(&study(&mut rng, 1, 1.0, 0.0));
    let i = f.interval.expect("an interval over the seed's prompts");
    assert_eq!(i.seeds, 1);
    assert!(i.lo > 0.5, "{i:?}");
    assert_eq!(f.verdict, Verdict::Inconclusive);
    assert!(f.sentence.contains("one seed"), "{}", f.sentence);
}
