//! The study's statistics on synthetic points whose truth is known: sweeps of three seeds whose
//! best-of-n effect is drawn as a real sweep's would be (a true effect, a seed-to-seed spread,
//! per-prompt noise), run through the same findings code as a real report.
//!
//! - a clear effect is reproduced, and its 95% interval covers the true value in at least 90%
//!   of 200 simulated studies (Student's t over three seeds should cover about 95%);
//! - an effect well inside the noise is inconclusive (in at least 90% of 200 studies);
//! - a clear effect against the claim is contradicted;
//! - one seed never gives a verdict, however clear its prompts make the effect.
//! - seeds that agree more closely than their prompts allow do not narrow the interval below
//!   the prompts' own sampling noise.
//! - a length-only control counts only on seeds where it moved length the RM's way.
//! - RLHF's compute slope is compared with pretraining's only where larger SFT models scored
//!   higher.
//! - two methods are compared only at KLs that both were measured at.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use rlhf_bench::findings::{Finding, findings};
use rlhf_bench::metrics::{curve, items, names};
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

/// Three seeds on which best-of-16 answers exactly two more of 256 prompts right than best-of-1:
/// the draws agree to the last digit (a spread over seeds of zero), yet two prompts in 256 is
/// well inside what sampling other prompts would change. The interval keeps the prompts' noise
/// and the verdict is inconclusive; with eight more right on each seed it is reproduced.
#[test]
fn seeds_that_agree_by_chance_keep_the_prompts_noise() {
    let right = |flips: usize| {
        let mut points = Vec::new();
        for seed in 0..3 {
            // every second prompt right, then `flips` of the wrong ones turned right
            let one: Vec<f64> = (0..256).map(|i| f64::from(i % 2 == 0)).collect();
            let mut best = one.clone();
            for b in best.iter_mut().skip(1).step_by(2).take(flips) {
                *b = 1.0;
            }
            points.push(point(1, seed, one));
            points.push(point(16, seed, best));
        }
        best_of_n(&points)
    };
    let f = right(2);
    let i = f.interval.expect("three seeds give an interval");
    assert_eq!(i.mean, 2.0 / 256.0);
    assert!(i.lo < 0.0 && i.hi > 2.0 * i.mean, "{i:?}");
    assert_eq!(f.verdict, Verdict::Inconclusive, "{}", f.sentence);
    assert_eq!(right(8).verdict, Verdict::Reproduced);
}

/// A `length_control` pair of one seed: the RM's PPO point and the length-only point, with
/// their gold gains and the lengths they moved to from the SFT policy's.
fn length_pair(seed: u64, rm: (f64, f64), length_only: (f64, f64)) -> Vec<PointRecord> {
    let make = |label: &str, x: f64, (gain, length): (f64, f64)| {
        let mut config = RunConfig {
            seed,
            ..RunConfig::default()
        };
        config.method.kind = MethodKind::Ppo;
        PointRecord {
            point: Point {
                axis: Axis::LengthControl,
                label: label.into(),
                x,
                config,
            },
            git_revision: "synthetic".into(),
            result: RunResult {
                metrics: BTreeMap::from([
                    (names::GOLD_GAIN.to_string(), gain),
                    (names::LENGTH.to_string(), length),
                    (names::LENGTH_SFT.to_string(), 20.0),
                ]),
                items: BTreeMap::new(),
                curve: Vec::new(),
                wall_seconds: 0.0,
            },
        }
    };
    vec![make("rm", 0.0, rm), make("length-only", 1.0, length_only)]
}

fn length_control(points: &[PointRecord]) -> Finding {
    findings(points)
        .into_iter()
        .find(|f| f.axis == Axis::LengthControl)
        .expect("the length-control finding")
}

/// The length-only control speaks for the claim only where it moved length the way the RM moved
/// it: a control that lengthened replies while the RM shortened them is left out, however much
/// gold it gained.
#[test]
fn a_length_control_that_moves_length_the_other_way_is_left_out() {
    // the RM shortens replies (20 → 12 tokens) on every seed
    let mut points = Vec::new();
    for seed in 0..3 {
        // the control lengthens them and gains a lot of gold
        points.extend(length_pair(
            seed,
            (0.5, 12.0),
            (0.4 + 0.01 * seed as f64, 30.0),
        ));
    }
    let f = length_control(&points);
    assert_eq!(f.verdict, Verdict::Inconclusive, "{}", f.sentence);
    assert!(f.interval.is_none());
    assert!(f.sentence.contains("on 0 of 3 seeds"), "{}", f.sentence);
    // the same gains with the control shortening replies too: reproduced, a share of 80%
    let mut points = Vec::new();
    for seed in 0..3 {
        points.extend(length_pair(
            seed,
            (0.5, 12.0),
            (0.4 + 0.01 * seed as f64, 15.0),
        ));
    }
    let f = length_control(&points);
    assert_eq!(f.verdict, Verdict::Reproduced, "{}", f.sentence);
    assert!(f.sentence.contains("on 3 of 3 seeds"), "{}", f.sentence);
    assert!(f.sentence.contains("82%"), "{}", f.sentence);
    // an unchanged length is no direction
    let points = length_pair(0, (0.5, 12.0), (0.4, 20.0));
    let f = length_control(&points);
    assert!(f.interval.is_none() && f.verdict == Verdict::Inconclusive);
}

/// A seed's `policy_size` points (SFT FLOPs 8× apart, SFT gold `sft_step` apart) and its base PPO
/// run (`length_control`'s `rm` point), whose gold rises `rl_step` per doubling of its FLOPs.
fn compute_seed(seed: u64, sft_step: f64, rl_step: f64) -> Vec<PointRecord> {
    let config = RunConfig {
        seed,
        ..RunConfig::default()
    };
    let record = |axis: Axis, label: &str, metrics: Vec<(&str, f64)>, curve| PointRecord {
        point: Point {
            axis,
            label: label.into(),
            x: 0.0,
            config: config.clone(),
        },
        git_revision: "synthetic".into(),
        result: RunResult {
            metrics: metrics
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            items: BTreeMap::new(),
            curve,
            wall_seconds: 0.0,
        },
    };
    let mut out: Vec<PointRecord> = ["xs", "s", "l"]
        .iter()
        .zip(0..)
        .map(|(size, i)| {
            let sft = vec![
                (names::FLOPS_SFT, 1e9 * 8f64.powi(i)),
                (names::GOLD_SFT, -0.5 + sft_step * f64::from(i)),
            ];
            record(Axis::PolicySize, size, sft, Vec::new())
        })
        .collect();
    let curve = (1..=4)
        .map(|k| {
            BTreeMap::from([
                (curve::FLOPS.to_string(), 1e9 * 2f64.powi(k)),
                (curve::GOLD.to_string(), rl_step * f64::from(k)),
            ])
        })
        .collect();
    out.push(record(Axis::LengthControl, "rm", Vec::new(), curve));
    out
}

fn compute(points: &[PointRecord]) -> Finding {
    findings(points)
        .into_iter()
        .find(|f| f.claim == "RLHF scales less efficiently than pretraining")
        .expect("the compute finding")
}

/// "RLHF scales less efficiently than pretraining" compares two slopes; where larger SFT models
/// scored lower, a difference far below zero is no evidence against the claim.
#[test]
fn rlhf_is_compared_with_pretraining_only_where_pretraining_gained() {
    // SFT gold falls 0.3 per size (0.1 per doubling), PPO's rises 0.02 per doubling
    let inverted: Vec<PointRecord> = (0..3)
        .flat_map(|seed| compute_seed(seed, -0.3 - 0.01 * seed as f64, 0.02))
        .collect();
    let f = compute(&inverted);
    let i = f.interval.expect("an interval over three seeds");
    assert!(i.hi < 0.0, "{i:?}");
    assert_eq!(f.verdict, Verdict::Inconclusive, "{}", f.sentence);
    assert!(f.sentence.contains("no pretraining gain"), "{}", f.sentence);
    // SFT gold rising 0.6 per size (0.2 per doubling): the same comparison is a test
    let scaling: Vec<PointRecord> = (0..3)
        .flat_map(|seed| compute_seed(seed, 0.6 + 0.01 * seed as f64, 0.02))
        .collect();
    let f = compute(&scaling);
    let i = f.interval.expect("an interval over three seeds");
    assert!((i.mean - (0.2 + 0.01 / 3.0 - 0.02)).abs() < 1e-9, "{i:?}");
    assert_eq!(f.verdict, Verdict::Reproduced, "{}", f.sentence);
    assert!(f.sentence.contains("reproduced"), "{}", f.sentence);
}

/// A seed's `method` points: PPO measured along training and at its end (KL, gold over an SFT
/// policy whose gold is 0), and DPO at three βs measured at their ends (KL, gold gain).
fn method_seed(seed: u64, ppo: &[(f64, f64)], dpo: &[(f64, f64)]) -> Vec<PointRecord> {
    let config = RunConfig {
        seed,
        ..RunConfig::default()
    };
    let record = |label: String, end: (f64, f64), curve, sft: Vec<f64>| PointRecord {
        point: Point {
            axis: Axis::Method,
            label,
            x: 0.0,
            config: config.clone(),
        },
        git_revision: "synthetic".into(),
        result: RunResult {
            metrics: BTreeMap::from([
                (names::KL.to_string(), end.0),
                (names::GOLD_GAIN.to_string(), end.1),
            ]),
            items: BTreeMap::from([(items::SFT_GOLD.to_string(), sft)]),
            curve,
            wall_seconds: 0.0,
        },
    };
    let curve = ppo
        .iter()
        .map(|&(kl, gold)| {
            BTreeMap::from([(curve::KL.to_string(), kl), (curve::GOLD.to_string(), gold)])
        })
        .collect();
    let end = *ppo.last().expect("a PPO curve");
    let mut out = vec![record("ppo-0.05".into(), end, curve, vec![0.0; 4])];
    for (&(kl, gain), beta) in dpo.iter().zip(["0.1", "0.3", "1"]) {
        out.push(record(
            format!("dpo-{beta}"),
            (kl, gain),
            Vec::new(),
            Vec::new(),
        ));
    }
    out
}

fn dpo_against_ppo(points: &[PointRecord]) -> Finding {
    findings(points)
        .into_iter()
        .find(|f| f.claim.contains("dpo reaches a higher gold score than PPO"))
        .expect("the DPO comparison")
}

/// Methods are compared only at KLs that both were measured at. PPO's first evaluation here is
/// at KL 1; a DPO sweep that ends by KL 0.25 shares no KL with it, though a straight line from
/// the SFT point to PPO's first evaluation would put PPO far below DPO there.
#[test]
fn methods_are_compared_only_where_both_were_measured() {
    let ppo = [(1.0, 0.05), (1.5, 0.15), (2.0, 0.25)];
    let near_sft: Vec<PointRecord> = (0..3)
        .flat_map(|seed| method_seed(seed, &ppo, &[(0.25, 0.2), (0.2, 0.2), (0.1, 0.15)]))
        .collect();
    let f = dpo_against_ppo(&near_sft);
    assert!(f.interval.is_none(), "{:?}", f.interval);
    assert_eq!(f.verdict, Verdict::Inconclusive, "{}", f.sentence);
    assert!(f.sentence.contains("no matched KL"), "{}", f.sentence);
    // a sweep over KL 1.2–2: compared at 1.47, 1.73 and 2, where PPO's curve is 0.143, 0.197
    // and 0.25, against DPO's 0.3 + 0.01 × seed
    let overlapping: Vec<PointRecord> = (0..3)
        .flat_map(|seed| {
            let g = 0.3 + 0.01 * seed as f64;
            method_seed(seed, &ppo, &[(2.0, g), (1.6, g), (1.2, g)])
        })
        .collect();
    let f = dpo_against_ppo(&overlapping);
    let i = f.interval.expect("an interval over three seeds");
    let want = 0.31 - (0.05 + 0.2 * (1.4 / 3.0 + 2.2 / 3.0 + 1.0) / 3.0);
    assert!((i.mean - want).abs() < 1e-9, "{i:?} against {want}");
    assert_eq!(f.verdict, Verdict::Reproduced, "{}", f.sentence);
}
