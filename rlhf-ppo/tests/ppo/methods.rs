//! The newer policy-optimisation settings inside the trainer: the sampler and the trainer agree
//! on the rollout's log-probs (so no importance-sampling correction is needed here), the loss
//! aggregations coincide where their definitions do, and DAPO's dynamic sampling keeps only
//! groups whose scores differ. On the device of `RLHF_DEVICE` (flex by default; wgpu in CI).

use burn::module::Module;
use rand::SeedableRng;
use rlhf_core::train::metrics::names;
use rlhf_core::train::{Metrics, OptimizerConfig, TrainRng};
use rlhf_core::{AdaptiveEntropy, EntropyController, LossAggregation, PolicyObjective};
use rlhf_models::{Generation, SamplingConfig, generate};
use rlhf_ppo::{
    AdvantageEstimator, PolicyAndValue, PpoConfig, PpoInputs, UpdateStats, encode_queries,
    make_experience, minibatch_loss, overlong_penalty, ppo_iteration, ppo_update,
};

use rlhf_testkit::counting;

fn metric(m: &Metrics, name: &str) -> f64 {
    m.iter()
        .find(|x| x.0 == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .1
}

fn small(advantage: AdvantageEstimator) -> PpoConfig {
    PpoConfig {
        advantage,
        samples_per_prompt: 4,
        prompts_per_batch: 4,
        query_length: 8,
        response_length: 8,
        ppo_epochs: 2,
        num_minibatches: 2,
        temperature: 1.0,
        optimizer: OptimizerConfig {
            lr: 1e-3,
            ..OptimizerConfig::default()
        },
        ..PpoConfig::default()
    }
}

/// The log-probs recorded while sampling (KV cache, host-side softmax) and the ones the trainer
/// recomputes for the same tokens (one full forward pass, `token_logprobs` on the device) are
/// the same numbers up to rounding: `sampling/kl` below 1e−6. Frameworks that sample with
/// another engine see far more and need the truncated importance-sampling correction.
/// The correction, and the share of high-entropy tokens, weigh each token's loss as they say.
#[test]
fn the_sampler_and_the_trainer_agree_on_the_rollout_log_probs() {
    let tok = counting::tokenizer();
    let device = rlhf_core::device_from_env().unwrap().autodiff();
    let bytes = counting::counting_policy(&tok, 0.0);
    let policy = counting::load(&bytes, tok.vocab_size(), 0.0, &device);
    // at T = 0.7, so that the temperature the trainer reapplies is part of what agrees
    let cfg = PpoConfig {
        rollout_is_cap: Some(3.0),
        temperature: 0.7,
        ..small(AdvantageEstimator::Grpo)
    };
    let prompts: Vec<String> = (1..=4).map(counting::prompt).collect();
    let episodes: Vec<&str> = prompts.iter().flat_map(|p| [p.as_str(); 4]).collect();
    let (qids, qmask) = encode_queries(&tok, &episodes, cfg.query_length).unwrap();
    let models = PolicyAndValue::new(policy, None);
    let inference = PolicyAndValue {
        policy: models.policy.valid(),
        value: None,
    };
    let generation = generate(
        &inference.policy,
        &qids,
        &qmask,
        episodes.len(),
        &SamplingConfig {
            max_new_tokens: cfg.response_length,
            temperature: cfg.temperature,
            eos_id: Some(tok.eos_id()),
            ..SamplingConfig::default()
        },
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(2),
    )
    .unwrap();
    let scores: Vec<f32> = (0..episodes.len()).map(|i| (i % 3) as f32).collect();
    let (agreeing, metrics) = make_experience(
        &inference,
        &inference.policy,
        &qids,
        &qmask,
        &generation,
        &scores,
        None,
        &cfg,
        0.0,
    )
    .unwrap();
    let (kl, mean, max) = (
        metric(&metrics, names::SAMPLING_KL),
        metric(&metrics, names::SAMPLING_LOGP_DIFF_MEAN),
        metric(&metrics, names::SAMPLING_LOGP_DIFF_MAX),
    );
    let is_mean = metric(&metrics, names::SAMPLING_IS_RATIO_MEAN);
    eprintln!(
        "{:?}: sampling/kl {kl:.3e}, |Δ logp| mean {mean:.3e} max {max:.3e}, IS weight mean {is_mean}",
        rlhf_core::device_from_env().unwrap()
    );
    assert!((0.0..1e-6).contains(&kl), "sampling/kl {kl}");
    assert!(mean < 1e-4 && max < 1e-3, "|Δ| mean {mean} max {max}");
    assert!((is_mean - 1.0).abs() < 1e-3, "weights {is_mean}");

    // a sampler that disagrees (its log-probs 0.4 lower at the tokens of positive advantage):
    // the correction weighs those tokens by min(e^0.4, 3) in the loss and the metrics say so
    let mut other = generation.clone();
    for (k, lp) in other.logprobs.iter_mut().enumerate() {
        if agreeing.advantages[k] > 0.0 && other.mask[k] == 1 {
            *lp -= 0.4;
        }
    }
    let (exp, metrics) = make_experience(
        &inference,
        &inference.policy,
        &qids,
        &qmask,
        &other,
        &scores,
        None,
        &cfg,
        0.0,
    )
    .unwrap();
    let real: Vec<usize> = (0..exp.mask.len()).filter(|&k| exp.mask[k] > 0.5).collect();
    let weight = |k: usize| {
        (f64::from(exp.logprobs[k]) - f64::from(exp.sampler_logprobs[k]))
            .exp()
            .min(3.0)
    };
    let host_mean = |w: &dyn Fn(usize) -> f64| {
        real.iter()
            .map(|&k| -f64::from(exp.advantages[k]) * w(k))
            .sum::<f64>()
            / real.len() as f64
    };
    let expected_weight = real.iter().map(|&k| weight(k)).sum::<f64>() / real.len() as f64;
    assert!(
        (metric(&metrics, names::SAMPLING_IS_RATIO_MEAN) - expected_weight).abs() < 1e-5
            && metric(&metrics, names::SAMPLING_KL) > 1e-3
    );
    let rows: Vec<usize> = (0..exp.batch).collect();
    let mb = exp
        .minibatch(&rows, models.policy.vocab_size(), &device)
        .unwrap();
    for (cap, w) in [
        (Some(3.0), &weight as &dyn Fn(usize) -> f64),
        (None, &|_| 1.0),
    ] {
        let cfg = PpoConfig {
            rollout_is_cap: cap,
            ..cfg.clone()
        };
        let (_, m) = minibatch_loss(&models, &mb, &cfg, 0.0, cfg.entropy_coef);
        let (got, want) = (metric(&m, names::LOSS_POLICY), host_mean(w));
        assert!(
            (got - want).abs() < 1e-4,
            "cap {cap:?}: policy loss {got}, expected {want}"
        );
    }
    assert!((host_mean(&weight) - host_mean(&|_| 1.0)).abs() > 1e-2);

    // with a share ρ of high-entropy tokens, only the real tokens whose entropy (at the
    // sampling temperature, read here from a forward pass of its own) reaches the 1 − ρ
    // quantile count, over every real token
    let [_, total] = mb.input.dims();
    let r = total - mb.query_len;
    let hidden = models
        .policy
        .hidden(&mb.input, None)
        .narrow(1, mb.query_len - 1, r);
    let entropy = rlhf_core::host::to_f64_vec(rlhf_core::entropy_from_logits(
        models.policy.lm_head(hidden),
        cfg.temperature,
    ));
    let mut sorted: Vec<f64> = real.iter().map(|&k| entropy[k]).collect();
    sorted.sort_by(f64::total_cmp);
    for rho in [0.3f32, 0.05] {
        let x = (1.0 - f64::from(rho)) * (sorted.len() - 1) as f64;
        let (i, j) = (x.floor() as usize, x.ceil() as usize);
        let threshold = sorted[i] + (x - i as f64) * (sorted[j] - sorted[i]);
        // a token within rounding of the cut could fall on either side
        assert!(real.iter().all(|&k| (entropy[k] - threshold).abs() > 1e-5));
        let selected = |k: usize| f64::from(u8::from(entropy[k] >= threshold));
        let cfg = PpoConfig {
            rollout_is_cap: None,
            top_entropy_quantile: rho,
            ..cfg.clone()
        };
        let (_, m) = minibatch_loss(&models, &mb, &cfg, 0.0, cfg.entropy_coef);
        let (got, want) = (metric(&m, names::LOSS_POLICY), host_mean(&selected));
        assert!(
            (got - want).abs() < 1e-4,
            "ρ {rho}: policy loss {got}, expected {want}"
        );
        assert!(
            (want - host_mean(&|_| 1.0)).abs() > 1e-3,
            "ρ {rho} changes nothing here"
        );
    }
}

/// A generation whose every row runs to the token limit (no EOS), so every response has
/// `L_max` tokens.
fn full_length_generation(batch: usize, len: usize, vocab: u32) -> Generation {
    Generation {
        batch,
        new_len: len,
        tokens: (0..batch * len)
            .map(|i| (i as u32 * 7 + 3) % vocab)
            .collect(),
        logprobs: vec![0.0; batch * len],
        mask: vec![1; batch * len],
        has_eos: vec![false; batch],
    }
}

/// What the update tests share: the counting policy (its bytes, to start each update afresh),
/// four `count k:` prompts sampled four times each, fixed scores, and a probe input whose
/// logits after an update tell two updates apart.
struct Updates {
    device: burn::tensor::Device,
    bytes: Vec<u8>,
    vocab: usize,
    qids: Vec<u32>,
    qmask: Vec<u8>,
    scores: Vec<f32>,
    probe_input: rlhf_models::TokenInput,
}

impl Updates {
    fn new(base: &PpoConfig) -> Self {
        let tok = counting::tokenizer();
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let bytes = counting::counting_policy(&tok, 0.0);
        let vocab = tok.vocab_size();
        let prompts: Vec<String> = (1..=4).map(counting::prompt).collect();
        let episodes: Vec<&str> = prompts.iter().flat_map(|p| [p.as_str(); 4]).collect();
        let (qids, qmask) = encode_queries(&tok, &episodes, base.query_length).unwrap();
        let scores: Vec<f32> = (0..episodes.len()).map(|i| (i % 3) as f32 * 0.7).collect();
        let probe = counting::load(&bytes, vocab, 0.0, &device).valid();
        let probe_input = probe.input(&qids, &qmask, episodes.len()).unwrap();
        Updates {
            device,
            bytes,
            vocab,
            qids,
            qmask,
            scores,
            probe_input,
        }
    }

    /// The probe's logits under the counting policy, before any update.
    fn start(&self) -> Vec<f32> {
        let policy = counting::load(&self.bytes, self.vocab, 0.0, &self.device).valid();
        rlhf_core::host::to_f32_vec(policy.forward(&self.probe_input, None))
    }

    /// Sixteen responses of `len` tokens, none ending with EOS.
    fn full_length(&self, len: usize) -> Generation {
        full_length_generation(self.scores.len(), len, self.vocab as u32)
    }

    /// The experience of `generation` under `cfg` (β = 0) and one update of the counting policy
    /// on it: the probe's logits after, the experience and its metrics.
    fn update(
        &self,
        cfg: &PpoConfig,
        generation: &Generation,
    ) -> (Vec<f32>, rlhf_ppo::Experience, Metrics) {
        let (logits, exp, metrics, ..) = self.update_with(cfg, generation);
        (logits, exp, metrics)
    }

    /// [`Self::update`], with the update's own statistics and the entropy controller after it.
    fn update_with(
        &self,
        cfg: &PpoConfig,
        generation: &Generation,
    ) -> (
        Vec<f32>,
        rlhf_ppo::Experience,
        Metrics,
        UpdateStats,
        EntropyController,
    ) {
        let load = || counting::load(&self.bytes, self.vocab, 0.0, &self.device);
        let models = PolicyAndValue::new(load(), None);
        let inference = PolicyAndValue {
            policy: models.policy.valid(),
            value: None,
        };
        let (exp, metrics) = make_experience(
            &inference,
            &inference.policy,
            &self.qids,
            &self.qmask,
            generation,
            &self.scores,
            None,
            cfg,
            0.0,
        )
        .unwrap();
        let mut optim = cfg.optimizer.build().unwrap();
        let mut entropy = cfg.entropy_controller();
        let (models, stats) = ppo_update(
            models,
            &mut optim,
            &exp,
            cfg,
            0.0,
            &mut entropy,
            &|_| cfg.optimizer.lr,
            &[],
            &mut TrainRng::seed_from_u64(9),
            &self.device,
            &rlhf_core::train::Replicas::default(),
        )
        .unwrap();
        let logits = models.policy.valid().forward(&self.probe_input, None);
        (
            rlhf_core::host::to_f32_vec(logits),
            exp,
            metrics,
            stats,
            entropy,
        )
    }
}

/// The largest absolute difference of two vectors.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// The mean entropy (nats) of the next-token distributions in `logits` (`[…, vocab]`).
fn mean_entropy(logits: &[f32], vocab: usize) -> f64 {
    let rows = logits.chunks(vocab);
    let n = rows.len() as f64;
    rows.map(|row| {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let z: f64 = row.iter().map(|&l| f64::from(l - m).exp()).sum();
        row.iter()
            .map(|&l| {
                let lp = f64::from(l - m) - z.ln();
                -lp.exp() * lp
            })
            .sum::<f64>()
    })
    .sum::<f64>()
        / n
}

/// The entropy bonus pushes the policy's entropy the way its sign says: after one update on the
/// same rollout, the probe's mean entropy is highest with `c = 1`, lowest with `c = −1`, and
/// between them without a bonus.
#[test]
fn the_entropy_bonus_moves_the_entropy_its_way() {
    let base = small(AdvantageEstimator::Grpo);
    let updates = Updates::new(&base);
    let full = updates.full_length(base.response_length);
    let entropy_after = |c: f32| {
        let cfg = PpoConfig {
            entropy_coef: c,
            ..base.clone()
        };
        mean_entropy(&updates.update(&cfg, &full).0, updates.vocab)
    };
    let (up, none, down) = (entropy_after(1.0), entropy_after(0.0), entropy_after(-1.0));
    let start = mean_entropy(&updates.start(), updates.vocab);
    eprintln!("entropy: start {start:.4}, c 1 {up:.4}, c 0 {none:.4}, c −1 {down:.4}");
    assert!(up > none + 1e-3 && none > down + 1e-3, "{up} {none} {down}");
}

/// Skywork-OR1's adaptive entropy control, over one update of four optimizer steps (two epochs of
/// two minibatches) on the same rollout:
/// - before the first step there is no measurement, so the first step applies no bonus: one step
///   with `c = 1` takes the step of `c = 0`, where a fixed `c = 1` takes another;
/// - with the target below any entropy the gate never opens: `c` falls by `δ` each step, the
///   update is the one without a bonus, and `loss/total` holds no entropy term;
/// - with the target above every entropy `c` rises by `δ` up to `c_max`, each step's `loss/total`
///   holds `−c·H̄` with the `c` the step applied (the one after the step before), and the
///   policy's entropy ends higher;
/// - the step compares its own mean entropy with the target: a target just above the first
///   step's `H̄` raises `c`, one just below lowers it; with a share of high-entropy tokens, `H̄`
///   is their mean;
/// - steps without a response token in the loss measure nothing and leave the state alone.
#[test]
fn adaptive_entropy_applies_its_coefficient_after_a_step_at_or_below_the_target() {
    let base = small(AdvantageEstimator::Grpo);
    let updates = Updates::new(&base);
    let full = updates.full_length(base.response_length);
    let adaptive = |c: f32, target: f32, delta: f32, max: f32, one_step: bool| PpoConfig {
        entropy_coef: c,
        adaptive_entropy: Some(AdaptiveEntropy {
            target,
            delta,
            min: 0.0,
            max,
        }),
        ppo_epochs: if one_step { 1 } else { base.ppo_epochs },
        num_minibatches: if one_step { 1 } else { base.num_minibatches },
        ..base.clone()
    };
    let fixed = |c: f32, one_step: bool| PpoConfig {
        entropy_coef: c,
        adaptive_entropy: None,
        ..adaptive(c, 1.0, 0.0, 1.0, one_step)
    };
    let run = |cfg: &PpoConfig| updates.update_with(cfg, &full);
    let total_is = |stats: &UpdateStats, applied: &[f64]| {
        for (m, c) in stats.minibatches.iter().zip(applied) {
            let want = metric(m, names::LOSS_POLICY) - c * metric(m, names::LOSS_ENTROPY);
            let total = metric(m, names::LOSS_TOTAL);
            assert!(
                (total - want).abs() < 1e-6,
                "loss/total {total}, want {want} (c {c})"
            );
        }
        assert_eq!(stats.minibatches.len(), applied.len());
    };
    let coefs = |stats: &UpdateStats| -> Vec<f64> {
        let c = stats.minibatches.iter();
        c.map(|m| metric(m, names::ENTROPY_COEF)).collect()
    };
    let close = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    };

    // the first step: nothing measured yet, no bonus
    let (first, ..) = run(&adaptive(1.0, 1e3, 0.0, 1.0, true));
    let (none, ..) = run(&fixed(0.0, true));
    let (bonus, ..) = run(&fixed(1.0, true));
    assert!(worst(&first, &none) < 1e-6, "{}", worst(&first, &none));
    assert!(worst(&bonus, &none) > 1e-3, "{}", worst(&bonus, &none));

    // the gate never opens: the update is the one without a bonus, and c falls by δ a step
    let (closed, _, _, stats, _) = run(&adaptive(1.0, 1e-6, 0.25, 1.0, false));
    let (none, ..) = run(&fixed(0.0, false));
    assert!(worst(&closed, &none) < 1e-6, "{}", worst(&closed, &none));
    total_is(&stats, &[0.0; 4]);
    assert!(
        close(&coefs(&stats), &[0.75, 0.5, 0.25, 0.0]),
        "{:?}",
        coefs(&stats)
    );

    // always at or below the target: c rises to c_max, each step applying the one before
    let (open, _, _, stats, _) = run(&adaptive(0.0, 1e3, 0.5, 1.2, false));
    assert!(
        close(&coefs(&stats), &[0.5, 1.0, 1.2, 1.2]),
        "{:?}",
        coefs(&stats)
    );
    total_is(&stats, &[0.0, 0.5, 1.0, f64::from(1.2f32)]);
    let (h_open, h_none) = (
        mean_entropy(&open, updates.vocab),
        mean_entropy(&none, updates.vocab),
    );
    assert!(
        h_open > h_none + 1e-3,
        "entropy {h_open} with the bonus, {h_none} without"
    );

    // the comparison reads the step's own mean entropy
    let h0 = metric(&stats.minibatches[0], names::LOSS_ENTROPY);
    for (target, want) in [(h0 + 1e-3, 0.6), (h0 - 1e-3, 0.4)] {
        let (.., stats, _) = run(&adaptive(0.5, target as f32, 0.1, 1.0, false));
        let got = coefs(&stats)[0];
        assert!(
            (got - want).abs() < 1e-6,
            "target {target} (H̄ {h0}): c {got}, want {want}"
        );
    }
    // with a share ρ of high-entropy tokens, over those tokens (TRL's effective mask), whose mean
    // lies above every token's: a target between the two lowers c
    let selected = |target: f32| PpoConfig {
        top_entropy_quantile: 0.5,
        ..adaptive(0.5, target, 0.1, 1.0, false)
    };
    let (.., stats, _) = run(&selected(1e3));
    let (all, high) = (
        metric(&stats.minibatches[0], names::POLICY_ENTROPY),
        metric(&stats.minibatches[0], names::LOSS_ENTROPY),
    );
    assert!(
        high > all + 1e-3,
        "H̄ {high} over the top half, {all} over all"
    );
    let (.., stats, _) = run(&selected(((all + high) / 2.0) as f32));
    assert!((coefs(&stats)[0] - 0.4).abs() < 1e-6, "{:?}", coefs(&stats));

    // every response cut off with mask_truncated_completions: no step, no measurement
    let cut = PpoConfig {
        mask_truncated_completions: true,
        ..adaptive(0.5, 1e3, 0.1, 1.0, false)
    };
    let (.., stats, after) = run(&cut);
    assert!(stats.minibatches.is_empty());
    assert_eq!(after, cut.entropy_controller());
}

/// The KL loss term's bias correction reaches the loss as TRL weighs it. Against a reference
/// `0.5` below the policy at every token (so `k3 = e^{−0.5} − 0.5` everywhere), with the sampling
/// policy's log-probs `δ_t` below the trained one's, `δ_t` cycling through −0.1, 0, 0.15, 0.3
/// along each response:
/// - the logged `kl` (TRL's token mean of the term) is `k3`'s mean without the correction,
///   `k3·mean(e^{δ_t})` with it at the token level, and `k3·e^{mean δ}` at GSPO's sequence level;
/// - it reads the ratio before INTELLECT-2's cap `δ = 1.21`, which `e^{0.3}` exceeds;
/// - at `δ_t = 0` (on-policy) the value is unchanged but the gradient is not: the ratio keeps its
///   gradient (`k3·∇logπ` more), where a detached one would change nothing.
#[test]
fn the_bias_correction_weighs_the_kl_term_by_the_importance_ratio() {
    let base = PpoConfig {
        kl_in_reward: false,
        kl_estimator: rlhf_core::KlEstimator::K3,
        ..small(AdvantageEstimator::Grpo)
    };
    let updates = Updates::new(&base);
    let (_, exp, _) = updates.update(&base, &updates.full_length(base.response_length));
    let models = PolicyAndValue::new(
        counting::load(&updates.bytes, updates.vocab, 0.0, &updates.device),
        None,
    );
    let rows: Vec<usize> = (0..exp.batch).collect();
    let on_policy = {
        let mut mb = exp
            .minibatch(&rows, updates.vocab, &updates.device)
            .unwrap();
        mb.ref_logprobs = mb.logprobs.clone().sub_scalar(0.5);
        mb.advantages = mb.advantages.clone().zeros_like();
        mb
    };
    let [b, r] = on_policy.logprobs.dims();
    let cycle = [-0.1f32, 0.0, 0.15, 0.3];
    let shifts: Vec<f32> = (0..b * r).map(|k| cycle[(k % r) % 4]).collect();
    let mut shifted = on_policy.clone();
    shifted.logprobs = on_policy
        .logprobs
        .clone()
        .sub(burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(shifts.clone(), [b, r]),
            &updates.device,
        ));
    let with = |correct: bool, objective: PolicyObjective, delta: Option<f32>| PpoConfig {
        kl_bias_correction: correct,
        policy_objective: objective,
        delta,
        ..base.clone()
    };
    let kl = |cfg: &PpoConfig| {
        metric(
            &minibatch_loss(&models, &shifted, cfg, 1.0, 0.0).1,
            names::KL_LOSS_TERM,
        )
    };
    let k3 = (-0.5f64).exp() - 1.0 + 0.5;
    let mean = |v: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = v.collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    // every response runs to the limit: each row's mean shift is the cycle's over r positions
    let row_mean = mean(&mut (0..r).map(|t| f64::from(cycle[t % 4])));
    let token = k3 * mean(&mut shifts.iter().map(|&d| f64::from(d).exp()));
    for (cfg, want) in [
        (with(false, PolicyObjective::Ppo, None), k3),
        (with(true, PolicyObjective::Ppo, None), token),
        (with(true, PolicyObjective::Ppo, Some(1.21)), token),
        (with(true, PolicyObjective::Gspo, None), k3 * row_mean.exp()),
    ] {
        let got = kl(&cfg);
        assert!(
            (got - want).abs() < 1e-4 * want,
            "{:?}, correction {}, δ {:?}: kl {got}, want {want}",
            cfg.policy_objective,
            cfg.kl_bias_correction,
            cfg.delta
        );
    }
    let grad_norm = |correct: bool| {
        let cfg = with(correct, PolicyObjective::Ppo, None);
        let (loss, m) = minibatch_loss(&models, &on_policy, &cfg, 1.0, 0.0);
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &models);
        (
            metric(&m, names::KL_LOSS_TERM),
            rlhf_core::train::global_grad_norm(&models, &grads),
        )
    };
    let ((kl_plain, g_plain), (kl_corrected, g_corrected)) = (grad_norm(false), grad_norm(true));
    assert!((kl_plain - kl_corrected).abs() < 1e-6 * kl_plain);
    assert!(
        (g_plain - g_corrected).abs() > 1e-3 * g_plain,
        "gradient norm {g_plain} without the correction, {g_corrected} with"
    );
}

/// The minibatch of the whole rollout of [`Updates`] (every response `L_max` tokens long), its
/// policy loaded afresh (so every ratio is 1), and the host copy of its advantages.
fn whole_rollout(base: &PpoConfig) -> (PolicyAndValue, rlhf_ppo::Minibatch, Vec<f32>) {
    let updates = Updates::new(base);
    let (_, exp, _) = updates.update(base, &updates.full_length(base.response_length));
    let models = PolicyAndValue::new(
        counting::load(&updates.bytes, updates.vocab, 0.0, &updates.device),
        None,
    );
    let rows: Vec<usize> = (0..exp.batch).collect();
    let mb = exp
        .minibatch(&rows, updates.vocab, &updates.device)
        .unwrap();
    let advantages = rlhf_core::host::to_f32_vec(mb.advantages.clone());
    (models, mb, advantages)
}

/// `t` plus `shift` `[batch, seq]`, on `t`'s device.
fn shifted(t: &burn::tensor::Tensor<2>, shift: Vec<f32>) -> burn::tensor::Tensor<2> {
    let dims = t.dims();
    t.clone().add(burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(shift, dims),
        &t.device(),
    ))
}

/// The loss of `mb` under `cfg` (β 0) and its gradient's global norm.
fn loss_and_grad_norm(
    models: &PolicyAndValue,
    mb: &rlhf_ppo::Minibatch,
    cfg: &PpoConfig,
) -> (Metrics, f64) {
    let (loss, m) = minibatch_loss(models, mb, cfg, 0.0, 0.0);
    let grads = burn::optim::GradientsParams::from_grads(loss.backward(), models);
    (m, rlhf_core::train::global_grad_norm(models, &grads).into())
}

/// SAPO's soft gate inside the trainer (`PpoConfig::sapo_temperatures`, `τ_pos` 0.5 and `τ_neg`
/// 2 here, so that swapping them shows):
/// - on-policy its gradient is GRPO's clipped surrogate's (the gate's slope is 1 at `ρ = 1`);
/// - off-policy, with per-token shifts `δ_t` of the rollout's log-probs (`ρ_t = e^{δ_t}`), the
///   logged policy loss is the token mean of `−A·(4/τ)·σ(τ(ρ − 1))` (the `grpo` aggregation on
///   equal lengths), nothing is counted as clipped, and the gradient is no longer GRPO's.
#[test]
fn sapo_gates_the_ratio_softly_with_its_temperatures() {
    let base = PpoConfig {
        loss_aggregation: LossAggregation::Grpo,
        ..small(AdvantageEstimator::Grpo)
    };
    let (models, on_policy, advantages) = whole_rollout(&base);
    let sapo = PpoConfig {
        policy_objective: PolicyObjective::Sapo,
        sapo_temperatures: rlhf_core::SapoTemperatures {
            positive: 0.5,
            negative: 2.0,
        },
        ..base.clone()
    };
    sapo.validate().unwrap();
    let (_, grpo_norm) = loss_and_grad_norm(&models, &on_policy, &base);
    let (_, sapo_norm) = loss_and_grad_norm(&models, &on_policy, &sapo);
    assert!(
        (grpo_norm - sapo_norm).abs() < 1e-5 * grpo_norm,
        "on-policy gradient norm {sapo_norm}, GRPO's {grpo_norm}"
    );
    let [b, r] = on_policy.logprobs.dims();
    let cycle = [-0.4f32, 0.0, 0.3, 0.9];
    let shifts: Vec<f32> = (0..b * r).map(|k| cycle[(k % r) % 4]).collect();
    let mut off_policy = on_policy.clone();
    off_policy.logprobs = shifted(&on_policy.logprobs, shifts.iter().map(|d| -d).collect());
    let want = |t: rlhf_core::SapoTemperatures| {
        let per_token = shifts.iter().zip(&advantages).map(|(&d, &a)| {
            let (a, rho) = (f64::from(a), f64::from(d).exp());
            let tau = f64::from(if a > 0.0 { t.positive } else { t.negative });
            -a * 4.0 / tau / (1.0 + (-tau * (rho - 1.0)).exp())
        });
        per_token.sum::<f64>() / (b * r) as f64
    };
    let swapped = rlhf_core::SapoTemperatures {
        positive: 2.0,
        negative: 0.5,
    };
    assert!((want(sapo.sapo_temperatures) - want(swapped)).abs() > 1e-2);
    let (m, off_norm) = loss_and_grad_norm(&models, &off_policy, &sapo);
    let (got, want) = (metric(&m, names::LOSS_POLICY), want(sapo.sapo_temperatures));
    assert!(
        (got - want).abs() < 1e-5 * want.abs().max(1.0),
        "loss {got}, want {want}"
    );
    assert_eq!(metric(&m, names::POLICY_CLIPFRAC), 0.0);
    assert_eq!(metric(&m, names::CLIP_RATIO_REGION), 0.0);
    let (_, grpo_off_norm) = loss_and_grad_norm(&models, &off_policy, &base);
    assert!((off_norm - grpo_off_norm).abs() > 1e-3 * grpo_off_norm);
}

/// VESPO's weight inside the trainer (`PpoConfig::vespo_shape`, a shape other than TRL's and
/// whose `_pos` and `_neg` halves differ, so that swapping them shows):
/// - on-policy its gradient is GRPO's clipped surrogate's (`φ(1) = 1`);
/// - off-policy, with row `i`'s log-ratios summing to `c_i` (`W_i = e^{c_i}`), the logged policy
///   loss is the token mean of `−φ(W_i)·A·logπ`, `vespo/phi_seq_mean` the mean `φ(W_i)` over the
///   rows, nothing is counted as clipped, and the gradient is no longer GRPO's.
#[test]
fn vespo_weighs_each_response_by_its_whole_ratio() {
    let base = small(AdvantageEstimator::Grpo);
    let (models, on_policy, advantages) = whole_rollout(&base);
    let shape = rlhf_core::VespoShape {
        k_pos: 1.5,
        lambda_pos: 2.5,
        k_neg: 3.0,
        lambda_neg: 1.0,
    };
    let vespo = PpoConfig {
        policy_objective: PolicyObjective::Vespo,
        vespo_shape: shape,
        ..base.clone()
    };
    vespo.validate().unwrap();
    let (_, grpo_norm) = loss_and_grad_norm(&models, &on_policy, &base);
    let (_, vespo_norm) = loss_and_grad_norm(&models, &on_policy, &vespo);
    assert!(
        (grpo_norm - vespo_norm).abs() < 1e-5 * grpo_norm,
        "on-policy gradient norm {vespo_norm}, GRPO's {grpo_norm}"
    );
    let [b, r] = on_policy.logprobs.dims();
    let sums = [-0.4f32, 0.0, 0.3, 0.9];
    let c = |i: usize| sums[i % 4];
    let mut off_policy = on_policy.clone();
    off_policy.logprobs = shifted(
        &on_policy.logprobs,
        (0..b * r).map(|k| -c(k / r) / r as f32).collect(),
    );
    let logprobs = rlhf_core::host::to_f32_vec(on_policy.logprobs.clone());
    let phi = |i: usize, a: f64, s: rlhf_core::VespoShape| {
        let (k, lambda) = if a >= 0.0 {
            (s.k_pos, s.lambda_pos)
        } else {
            (s.k_neg, s.lambda_neg)
        };
        let (k, lambda, w) = (f64::from(k), f64::from(lambda), f64::from(c(i)).exp());
        lambda.exp() * w.powf(k) * (-lambda * w).exp()
    };
    let want = |s: rlhf_core::VespoShape| {
        let per_token = (0..b * r).map(|k| {
            let a = f64::from(advantages[k]);
            -phi(k / r, a, s) * a * f64::from(logprobs[k])
        });
        per_token.sum::<f64>() / (b * r) as f64
    };
    let swapped = rlhf_core::VespoShape {
        k_pos: 3.0,
        lambda_pos: 1.0,
        k_neg: 1.5,
        lambda_neg: 2.5,
    };
    assert!((want(shape) - want(swapped)).abs() > 1e-2);
    let (m, off_norm) = loss_and_grad_norm(&models, &off_policy, &vespo);
    let (got, want) = (metric(&m, names::LOSS_POLICY), want(shape));
    assert!(
        (got - want).abs() < 1e-4 * want.abs().max(1.0),
        "loss {got}, want {want}"
    );
    let phi_mean = (0..b)
        .map(|i| phi(i, f64::from(advantages[i * r]), shape))
        .sum::<f64>()
        / b as f64;
    let logged = metric(&m, names::VESPO_PHI_MEAN);
    assert!(
        (logged - phi_mean).abs() < 1e-4,
        "φ mean {logged}, want {phi_mean}"
    );
    assert_eq!(metric(&m, names::CLIP_RATIO_REGION), 0.0);
    assert_eq!(metric(&m, names::POLICY_CLIPFRAC), 0.0);
    let (_, grpo_off_norm) = loss_and_grad_norm(&models, &off_policy, &base);
    assert!((off_norm - grpo_off_norm).abs() > 1e-3 * grpo_off_norm);
}

/// DeepSeek-V3.2's off-policy sequence mask inside the trainer: the sampler's log-probs lie 1
/// above the policy's on the even rows (a drift of 1) and equal them on the odd ones. At `δ` 0.5
/// the even rows' negative-advantage tokens leave the policy loss, which is then the loss, and
/// the gradient, of the same minibatch with those tokens' advantages set to 0 (the aggregation
/// still counts them); `off_policy_mask/masked_ratio` is their share. At `δ` 1.5 nothing is
/// dropped.
#[test]
fn the_off_policy_mask_drops_the_negative_advantages_of_drifted_responses() {
    let base = small(AdvantageEstimator::Grpo);
    let (models, on_policy, advantages) = whole_rollout(&base);
    let [b, r] = on_policy.logprobs.dims();
    let drifted = |k: usize| (k / r).is_multiple_of(2);
    let mut mb = on_policy.clone();
    mb.sampler_logprobs = shifted(
        &on_policy.logprobs,
        (0..b * r)
            .map(|k| f32::from(u8::from(drifted(k))))
            .collect(),
    );
    let dropped: Vec<bool> = (0..b * r)
        .map(|k| drifted(k) && advantages[k] < 0.0)
        .collect();
    let share = dropped.iter().filter(|&&d| d).count() as f64 / (b * r) as f64;
    let negative = advantages.iter().filter(|&&a| a < 0.0).count() as f64 / (b * r) as f64;
    assert!(
        share > 0.0 && share < negative,
        "dropped {share}, negative {negative}"
    );
    let masking = |delta: f32| PpoConfig {
        off_policy_mask_threshold: Some(delta),
        ..base.clone()
    };
    masking(0.5).validate().unwrap();
    let (m, norm) = loss_and_grad_norm(&models, &mb, &masking(0.5));
    assert!((metric(&m, names::OFF_POLICY_MASKED) - share).abs() < 1e-6);
    let mut zeroed = mb.clone();
    zeroed.advantages = burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(
            advantages
                .iter()
                .zip(&dropped)
                .map(|(&a, &d)| if d { 0.0 } else { a })
                .collect::<Vec<f32>>(),
            [b, r],
        ),
        &mb.advantages.device(),
    );
    let (m_zeroed, norm_zeroed) = loss_and_grad_norm(&models, &zeroed, &base);
    let loss = |m: &Metrics| metric(m, names::LOSS_POLICY);
    assert!(
        (loss(&m) - loss(&m_zeroed)).abs() < 1e-6,
        "{} vs {}",
        loss(&m),
        loss(&m_zeroed)
    );
    assert!((norm - norm_zeroed).abs() < 1e-5 * norm_zeroed);
    let (m_plain, norm_plain) = loss_and_grad_norm(&models, &mb, &base);
    assert!((norm - norm_plain).abs() > 1e-3 * norm_plain);
    let (m_loose, _) = loss_and_grad_norm(&models, &mb, &masking(1.5));
    assert_eq!(metric(&m_loose, names::OFF_POLICY_MASKED), 0.0);
    assert_eq!(loss(&m_loose), loss(&m_plain));
}

/// TRL RLOO's `normalize_advantages`: the experience's advantages are the leave-one-out ones
/// normalised over the batch, `(A − mean)/(sample std + 1e−4)`; off (the default), they are the
/// leave-one-out ones. Every other estimator refuses it.
#[test]
fn rloo_normalises_its_advantages_over_the_batch_when_asked() {
    let base = small(AdvantageEstimator::Rloo);
    let updates = Updates::new(&base);
    let generation = updates.full_length(base.response_length);
    let rows = |cfg: &PpoConfig| {
        let (_, exp, _) = updates.update(cfg, &generation);
        let r = exp.response_len;
        (0..exp.batch)
            .map(|i| f64::from(exp.advantages[i * r]))
            .collect::<Vec<f64>>()
    };
    let plain = rows(&base);
    let normalised = rows(&PpoConfig {
        normalize_advantages: true,
        ..base.clone()
    });
    let n = plain.len() as f64;
    let mean = plain.iter().sum::<f64>() / n;
    let std = (plain.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    assert!(std > 0.1, "the leave-one-out advantages spread: {plain:?}");
    for (got, a) in normalised.iter().zip(&plain) {
        let want = (a - mean) / (std + 1e-4);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    for advantage in [
        AdvantageEstimator::Gae,
        AdvantageEstimator::Grpo,
        AdvantageEstimator::GrpoBatch,
        AdvantageEstimator::DrGrpo,
        AdvantageEstimator::ReinforcePp,
    ] {
        let other = PpoConfig {
            advantage,
            normalize_advantages: true,
            ..base.clone()
        };
        let err = other.validate().unwrap_err().to_string();
        assert!(err.contains("normalize_advantages"), "{advantage:?}: {err}");
    }
}

/// With every response `L_max` tokens long and the symmetric clip, GRPO's per-response mean,
/// DAPO's token mean and Dr. GRPO's constant normaliser are one loss: two epochs of updates
/// leave the same weights. With one response cut short they do not (so the comparison can
/// fail).
#[test]
fn grpo_dapo_and_dr_grpo_aggregations_take_the_same_steps_on_equal_lengths() {
    let base = small(AdvantageEstimator::Grpo);
    let updates = Updates::new(&base);
    let after = |aggregation: LossAggregation, generation: &Generation| -> Vec<f32> {
        let cfg = PpoConfig {
            loss_aggregation: aggregation,
            ..base.clone()
        };
        updates.update(&cfg, generation).0
    };
    let full = updates.full_length(base.response_length);
    let grpo = after(LossAggregation::Grpo, &full);
    for other in [LossAggregation::Dapo, LossAggregation::DrGrpo] {
        let d = worst(&grpo, &after(other, &full));
        assert!(d < 1e-5, "{other:?} differs from grpo by {d}");
    }
    // ragged lengths: the per-response mean weighs a short response's tokens more
    let mut ragged = full.clone();
    for t in 2..base.response_length {
        ragged.mask[t] = 0;
    }
    let d = worst(
        &after(LossAggregation::Grpo, &ragged),
        &after(LossAggregation::Dapo, &ragged),
    );
    assert!(
        d > 1e-4,
        "grpo and dapo should differ on ragged lengths ({d})"
    );
}

/// `mask_truncated_completions`: a response without EOS leaves the loss, so what its tokens are
/// does not move the update (with the option off it does), while its score still enters its
/// group's baseline: the responses' advantages do not change.
#[test]
fn truncated_responses_leave_the_loss_but_not_the_baseline() {
    let base = small(AdvantageEstimator::Grpo);
    let updates = Updates::new(&base);
    // even rows end with EOS after 5 tokens, odd rows run to the limit without one
    let (r, rows, vocab) = (
        base.response_length,
        updates.scores.len(),
        updates.vocab as u32,
    );
    let mut ended = updates.full_length(r);
    for row in (0..rows).step_by(2) {
        ended.has_eos[row] = true;
        ended.mask[row * r + 5..(row + 1) * r].fill(0);
    }
    let mut other = ended.clone();
    for row in (1..rows).step_by(2) {
        for t in &mut other.tokens[row * r..(row + 1) * r] {
            *t = (*t + 5) % vocab;
        }
    }
    for aggregation in [LossAggregation::Grpo, LossAggregation::Dapo] {
        let cfg = |mask| PpoConfig {
            mask_truncated_completions: mask,
            loss_aggregation: aggregation,
            ..base.clone()
        };
        let (masked, exp, metrics) = updates.update(&cfg(true), &ended);
        let moved = worst(&masked, &updates.start());
        assert!(
            moved > 1e-4,
            "{aggregation:?}: the responses that ended should move it ({moved})"
        );
        let d = worst(&masked, &updates.update(&cfg(true), &other).0);
        assert!(
            d < 1e-6,
            "{aggregation:?}: a truncated response's tokens moved the update by {d}"
        );
        let (kept, kept_exp, _) = updates.update(&cfg(false), &ended);
        let d = worst(&kept, &updates.update(&cfg(false), &other).0);
        assert!(
            d > 1e-4,
            "{aggregation:?}: without the option they should move it ({d})"
        );
        // the odd rows are out of the loss mask, the even rows as they were
        for row in 0..rows {
            let want: f32 = if row % 2 == 1 { 0.0 } else { 5.0 };
            let span = row * r..(row + 1) * r;
            assert_eq!(exp.mask[span].iter().sum::<f32>(), want, "row {row}");
        }
        // the baseline still holds the truncated responses' scores
        assert_eq!(exp.advantages, kept_exp.advantages);
        assert_eq!(metric(&metrics, names::COMPLETIONS_CLIPPED_RATIO), 0.5);
        assert_eq!(
            metric(&metrics, names::COMPLETIONS_MEAN_TERMINATED_LENGTH),
            5.0
        );
        assert_eq!(
            (
                metric(&metrics, names::COMPLETIONS_MIN_LENGTH),
                metric(&metrics, names::COMPLETIONS_MAX_LENGTH)
            ),
            (5.0, r as f64)
        );
    }
}

/// With the KL in the reward and β ≠ 0, `kl` is the token mean of the reward's per-token k1 over
/// the loss's tokens (RLOO's, as TRL logs it), here against an untrained reference so that it is
/// far from 0; with `mask_truncated_completions` the truncated responses' tokens leave it.
#[test]
fn the_reward_kl_metric_is_the_token_mean_of_the_rewards_kl() {
    let tok = counting::tokenizer();
    let device = rlhf_core::device_from_env().unwrap();
    let vocab = tok.vocab_size();
    let policy = counting::load(&counting::counting_policy(&tok, 0.0), vocab, 0.0, &device);
    let reference = rlhf_models::CausalLm::init(&counting::shape(vocab, 0.0), &device).unwrap();
    let prompts: Vec<String> = (1..=4).map(counting::prompt).collect();
    let episodes: Vec<&str> = prompts.iter().flat_map(|p| [p.as_str(); 4]).collect();
    let base = PpoConfig {
        kl_estimator: rlhf_core::KlEstimator::K1,
        ..small(AdvantageEstimator::Rloo)
    };
    let (qids, qmask) = encode_queries(&tok, &episodes, base.query_length).unwrap();
    let r = base.response_length;
    let mut generation = full_length_generation(episodes.len(), r, vocab as u32);
    for row in (0..episodes.len()).step_by(2) {
        generation.has_eos[row] = true;
        generation.mask[row * r + 3..(row + 1) * r].fill(0);
    }
    let scores = vec![1.0; episodes.len()];
    let models = PolicyAndValue::new(policy, None);
    let experience = |cfg: &PpoConfig, beta: f32| {
        make_experience(
            &models,
            &reference,
            &qids,
            &qmask,
            &generation,
            &scores,
            None,
            cfg,
            beta,
        )
        .unwrap()
    };
    for mask_truncated in [false, true] {
        let cfg = PpoConfig {
            mask_truncated_completions: mask_truncated,
            ..base.clone()
        };
        let (exp, metrics) = experience(&cfg, 0.1);
        let (mut sum, mut count) = (0.0f64, 0.0f64);
        for k in 0..exp.mask.len() {
            let kept = generation.mask[k] == 1 && (!mask_truncated || generation.has_eos[k / r]);
            if kept {
                sum += f64::from(exp.logprobs[k]) - f64::from(exp.ref_logprobs[k]);
                count += 1.0;
            }
        }
        let want = sum / count;
        let got = metric(&metrics, names::KL_LOSS_TERM);
        assert!(want.abs() > 0.1, "the reference should differ ({want})");
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "kl {got} against {want}"
        );
        // a truncated response's KL leaves the reward with it (TRL's RLOO): its rewards are its
        // score alone; one that ended keeps its KL penalty
        let row_reward = |row: usize| -> f32 { exp.rewards[row * r..(row + 1) * r].iter().sum() };
        let truncated = (row_reward(1) - 1.0).abs();
        assert_eq!(
            truncated < 1e-6,
            mask_truncated,
            "row 1's reward {}",
            row_reward(1)
        );
        assert!(
            (row_reward(0) - 1.0).abs() > 1e-3,
            "row 0's reward {}",
            row_reward(0)
        );
    }
    // β = 0: nothing in the reward, nothing logged
    let (_, metrics) = experience(&base, 0.0);
    assert!(metrics.iter().all(|m| m.0 != names::KL_LOSS_TERM));
}

/// The counting policy (as reference and as the policy to train) on eight `count k:` prompts.
struct Counting {
    tok: rlhf_data::Tokenizer,
    device: burn::tensor::Device,
    bytes: Vec<u8>,
    prompts: Vec<String>,
    reference: rlhf_models::CausalLm,
}

impl Counting {
    fn new() -> Self {
        let tok = counting::tokenizer();
        let device = rlhf_core::device_from_env().unwrap().autodiff();
        let bytes = counting::counting_policy(&tok, 0.0);
        let reference = counting::load(&bytes, tok.vocab_size(), 0.0, &device);
        Counting {
            prompts: (1..=8).map(counting::prompt).collect(),
            tok,
            device,
            bytes,
            reference,
        }
    }

    /// One iteration of `cfg` from the counting policy on the first four prompts, seed 5.
    fn iteration(&self, scorer: &dyn rlhf_core::Scorer, cfg: &PpoConfig) -> rlhf_ppo::Iteration {
        let inputs = PpoInputs {
            reference: &self.reference,
            scorer,
            tokenizer: &self.tok,
            prompts: &self.prompts,
            demonstrations: &[],
            eval: None,
            eval_every: 0,
            eval_first: false,
        };
        let policy = counting::load(&self.bytes, self.tok.vocab_size(), 0.0, &self.device);
        let mut optim = cfg.optimizer.build().unwrap();
        let picked: Vec<&str> = self.prompts[..4].iter().map(String::as_str).collect();
        ppo_iteration(
            PolicyAndValue::new(policy, None),
            &mut optim,
            &inputs,
            &picked,
            cfg,
            0.0,
            &mut cfg.entropy_controller(),
            &|_| cfg.optimizer.lr,
            &mut TrainRng::seed_from_u64(5),
            &self.device,
            &rlhf_core::train::Replicas::default(),
        )
        .unwrap()
    }
}

/// Scores a response to `count k:` with `k`, whatever it says.
struct PromptNumber;

impl rlhf_core::Scorer for PromptNumber {
    fn score(&self, prompts: &[&str], _responses: &[&str]) -> rlhf_core::Result<Vec<f32>> {
        Ok(prompts
            .iter()
            .map(|p| {
                p.trim_start_matches("count ")
                    .trim_end_matches(':')
                    .parse()
                    .unwrap()
            })
            .collect())
    }
}

/// Held-out evaluation (`held_out_metrics`) draws the same random numbers at every call, scores
/// with the scorer alone (the missing-EOS penalty is training's), and counts what it sampled:
/// with a limit of one token no response of the counting policy ends, so every one is clipped
/// and one token long; with room most end. Every prompt is sampled `n` times, across batches of
/// `prompts_per_batch`: scored by the number they ask for, the eight prompts' three samples
/// each have the mean and the sample spread of 1…8 each three times.
#[test]
fn held_out_metrics_score_the_samples_alone_and_repeat() {
    let counting = Counting::new();
    let policy = counting::load(
        &counting.bytes,
        counting.tok.vocab_size(),
        0.0,
        &counting.device,
    );
    let held_out = rlhf_ppo::HeldOut {
        prompts: &counting.prompts,
        samples_per_prompt: 3,
    };
    let cfg = |penalty: Option<f32>, length: usize| PpoConfig {
        temperature: 1.0,
        missing_eos_penalty: penalty,
        response_length: length,
        ..small(AdvantageEstimator::Grpo)
    };
    let eval = |cfg: &PpoConfig| {
        let reward = (&counting.tok, &counting::Words as &dyn rlhf_core::Scorer);
        let models = (&policy, &counting.reference);
        rlhf_ppo::held_out_metrics(models, reward, &held_out, cfg)
            .unwrap()
            .metrics
    };
    let first = eval(&cfg(None, 16));
    assert_eq!(first, eval(&cfg(None, 16)));
    assert_eq!(first, eval(&cfg(Some(-5.0), 16)));
    assert!(metric(&first, names::EVAL_COMPLETIONS_CLIPPED_RATIO) < 0.5);
    assert!(metric(&first, names::EVAL_REWARD) > 0.0);
    let cut = eval(&cfg(Some(-5.0), 1));
    assert_eq!(metric(&cut, names::EVAL_COMPLETIONS_CLIPPED_RATIO), 1.0);
    assert_eq!(metric(&cut, names::EVAL_COMPLETIONS_MEAN_LENGTH), 1.0);
    assert!(metric(&cut, names::EVAL_REWARD) > -5.0);

    let reward = (&counting.tok, &PromptNumber as &dyn rlhf_core::Scorer);
    let models = (&policy, &counting.reference);
    let m = rlhf_ppo::held_out_metrics(models, reward, &held_out, &cfg(None, 4))
        .unwrap()
        .metrics;
    let asked: Vec<f64> = (1..=8).flat_map(|k| [f64::from(k); 3]).collect();
    let mean = asked.iter().sum::<f64>() / 24.0;
    let std = (asked.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / 23.0).sqrt();
    assert!(
        (metric(&m, names::EVAL_REWARD) - mean).abs() < 1e-9,
        "{m:?}"
    );
    assert!(
        (metric(&m, names::EVAL_REWARD_STD) - std).abs() < 1e-6,
        "{m:?}"
    );
}

/// Held-out evaluation logs each reward function's scores (`eval_rewards/{name}/*`) and the
/// samples' KL to the reference (`eval_kl`) as training logs them (`rewards/{name}/*`, `kl`) for
/// the same samples: an iteration on the held-out prompts with the held-out draws and β in the
/// reward, under each estimator and with the responses cut off at the limit left out, from a
/// policy that one iteration moved off the reference. Its forward passes in smaller chunks give
/// the same KL; against the policy itself the KL is 0.
#[test]
fn held_out_metrics_log_the_parts_and_the_kl_as_training() {
    use rlhf_core::KlEstimator;
    use rlhf_reward::{Combine, EnsembleScorer, LengthScorer, RegexScorer};
    let counting = Counting::new();
    let eos = counting.tok.eos_text().to_string();
    let members: Vec<Box<dyn rlhf_core::Scorer>> = vec![
        Box::new(LengthScorer::new(1.0, eos.clone())),
        Box::new(RegexScorer::new("yes yes", eos).unwrap()),
    ];
    let scorer = EnsembleScorer::new(members, Combine::Sum)
        .unwrap()
        .with_names(vec!["words".into(), "two".into()])
        .unwrap();
    let moving = PpoConfig {
        missing_eos_penalty: None,
        optimizer: OptimizerConfig {
            lr: 1e-2,
            ..OptimizerConfig::default()
        },
        ..small(AdvantageEstimator::Rloo)
    };
    let moved = counting.iteration(&counting::Words, &moving).models.policy;
    let prompts: Vec<&str> = counting.prompts[..4].iter().map(String::as_str).collect();
    let held_out = rlhf_ppo::HeldOut {
        prompts: &counting.prompts[..4],
        samples_per_prompt: 4,
    };
    let reward = (&counting.tok, &scorer as &dyn rlhf_core::Scorer);
    let held_out_of = |cfg: &PpoConfig| {
        rlhf_ppo::held_out_metrics((&moved, &counting.reference), reward, &held_out, cfg).unwrap()
    };
    for (estimator, truncated) in [
        (KlEstimator::K1, false),
        (KlEstimator::K2, false),
        (KlEstimator::K3, false),
        (KlEstimator::K3, true),
    ] {
        // with a limit of 16 tokens, some responses end and some are cut off (and leave the KL)
        let cfg = PpoConfig {
            kl_estimator: estimator,
            kl_in_reward: true,
            mask_truncated_completions: truncated,
            response_length: if truncated {
                16
            } else {
                moving.response_length
            },
            ..moving.clone()
        };
        let evaluated = held_out_of(&cfg);
        if truncated {
            let clipped = metric(&evaluated.metrics, names::EVAL_COMPLETIONS_CLIPPED_RATIO);
            assert!(clipped > 0.0 && clipped < 1.0, "clipped share {clipped}");
        }
        // the KL's forward passes in chunks of a smaller training rollout's rows: the same KL
        let chunked = held_out_of(&PpoConfig {
            samples_per_prompt: 2,
            ..cfg.clone()
        });
        let (whole, parts) = (
            metric(&evaluated.metrics, names::EVAL_KL),
            metric(&chunked.metrics, names::EVAL_KL),
        );
        assert!(
            (whole - parts).abs() <= 1e-6 * whole.abs(),
            "{whole} {parts}"
        );
        let inputs = PpoInputs {
            reference: &counting.reference,
            scorer: &scorer,
            tokenizer: &counting.tok,
            prompts: &counting.prompts,
            demonstrations: &[],
            eval: None,
            eval_every: 0,
            eval_first: false,
        };
        let trained = ppo_iteration(
            PolicyAndValue::new(moved.clone(), None),
            &mut cfg.optimizer.build().unwrap(),
            &inputs,
            &prompts,
            &cfg,
            0.1,
            &mut cfg.entropy_controller(),
            &|_| cfg.optimizer.lr,
            &mut TrainRng::seed_from_u64(cfg.seed).fork("held-out"),
            &counting.device,
            &rlhf_core::train::Replicas::default(),
        )
        .unwrap();
        let kl = metric(&trained.metrics, names::KL_LOSS_TERM);
        let eval_kl = metric(&evaluated.metrics, names::EVAL_KL);
        assert!(
            kl.abs() > 1e-3,
            "{estimator:?}: the policy did not move: {kl}"
        );
        assert!(
            (eval_kl - kl).abs() <= 1e-5 * kl.abs(),
            "{estimator:?}, truncated ones out {truncated}: eval_kl {eval_kl}, training's {kl}"
        );
        assert_eq!(trained.score_parts.len(), 4);
        for (name, value) in &trained.score_parts {
            let eval_name = format!("eval_{name}");
            let (_, eval_value) = evaluated
                .named
                .iter()
                .find(|(n, _)| *n == eval_name)
                .unwrap_or_else(|| panic!("no {eval_name} in {:?}", evaluated.named));
            assert!(
                (eval_value - value).abs() < 1e-9,
                "{name}: {eval_value} {value}"
            );
        }
    }
    let itself = rlhf_ppo::held_out_metrics((&moved, &moved), reward, &held_out, &moving).unwrap();
    assert_eq!(metric(&itself.metrics, names::EVAL_KL), 0.0);
}

/// `top_k`, `top_p`, `min_p` and `repetition_penalty` reach the sampler: with `top_k = 1` at
/// temperature 1 each prompt's four samples are the one most likely response (every group's
/// scores equal), and the sampler's log-probs (of the truncated distribution, each 0) part from
/// the trainer's (of the whole one), as TRL's would; without either the samples differ and the
/// two agree; a nucleus of tiny mass and a min-p of 1 are greedy too; a repetition penalty
/// samples from another distribution than the trainer reads.
#[test]
fn the_token_filters_reach_the_sampler() {
    let counting = Counting::new();
    let base = PpoConfig {
        temperature: 1.0,
        missing_eos_penalty: None,
        ..small(AdvantageEstimator::Grpo)
    };
    let greedy = counting.iteration(
        &counting::Words,
        &PpoConfig {
            top_k: Some(1),
            ..base.clone()
        },
    );
    assert_eq!(metric(&greedy.metrics, names::FRAC_REWARD_ZERO_STD), 1.0);
    // the rows of a group, prompt and response, are one sequence
    let e = &greedy.experience;
    let row_len = e.query_len + e.response_len;
    let rows: Vec<&[u32]> = e.ids.chunks(row_len).collect();
    for (g, group) in rows.chunks(4).enumerate() {
        assert!(group.iter().all(|row| row == &group[0]), "group {g}");
    }
    assert!(metric(&greedy.metrics, names::SAMPLING_LOGP_DIFF_MEAN) > 1e-3);
    let sampled = counting.iteration(&counting::Words, &base);
    assert!(metric(&sampled.metrics, names::FRAC_REWARD_ZERO_STD) < 1.0);
    assert!(metric(&sampled.metrics, names::SAMPLING_KL) < 1e-6);
    // a nucleus of tiny mass holds the most likely token alone: greedy again
    let nucleus = counting.iteration(
        &counting::Words,
        &PpoConfig {
            top_p: Some(1e-3),
            ..base.clone()
        },
    );
    assert_eq!(metric(&nucleus.metrics, names::FRAC_REWARD_ZERO_STD), 1.0);
    let only_top = counting.iteration(
        &counting::Words,
        &PpoConfig {
            min_p: Some(1.0),
            ..base.clone()
        },
    );
    assert_eq!(metric(&only_top.metrics, names::FRAC_REWARD_ZERO_STD), 1.0);
    let penalised = counting.iteration(
        &counting::Words,
        &PpoConfig {
            repetition_penalty: Some(3.0),
            ..base.clone()
        },
    );
    assert!(metric(&penalised.metrics, names::SAMPLING_LOGP_DIFF_MEAN) > 1e-3);
}

/// `reward_clip_range` holds the scores that the advantages are made of, DAPO's overlong
/// punishment included (TRL counts it as a reward function): with the same seed the samples are
/// the same, the experience's scores are the unclipped run's held in `[min, max]` (which differs
/// from clipping the scorer's score alone on some row), and RLOO's advantages (no KL in the
/// reward) are each score minus the mean of its group's other scores. The missing-EOS penalty
/// then replaces the clipped score of a response without EOS.
#[test]
fn reward_clip_range_holds_the_scores_the_advantages_are_made_of() {
    let counting = Counting::new();
    let cfg = PpoConfig {
        missing_eos_penalty: None,
        overlong_buffer: Some(2),
        kl: rlhf_core::KlController::Fixed { value: 0.0 },
        ..small(AdvantageEstimator::Rloo)
    };
    let (lo, hi) = (0.6, 1.0);
    let free = counting.iteration(&counting::Words, &cfg).experience;
    let clipped_cfg = PpoConfig {
        reward_clip_range: Some((lo, hi)),
        ..cfg.clone()
    };
    clipped_cfg.validate().unwrap();
    let clipped = counting
        .iteration(&counting::Words, &clipped_cfg)
        .experience;
    assert_eq!(clipped.ids, free.ids, "the same samples");
    let r = free.response_len;
    let punishment = |row: usize| {
        let length = free.mask[row * r..(row + 1) * r].iter().sum::<f32>() as usize;
        overlong_penalty(length, cfg.response_length, 2, 1.0)
    };
    let scorer: Vec<f32> = (0..free.batch)
        .map(|row| free.scores[row] - punishment(row))
        .collect();
    assert!(
        scorer.iter().any(|&s| s < lo) && scorer.iter().any(|&s| s > hi),
        "the clip should act at both ends: {scorer:?}"
    );
    let want: Vec<f32> = free.scores.iter().map(|s| s.clamp(lo, hi)).collect();
    assert!(
        (0..free.batch).any(|row| scorer[row].clamp(lo, hi) + punishment(row) != want[row]),
        "no row tells the clip of the sum from the clip of the scorer's score"
    );
    for (row, (got, want)) in clipped.scores.iter().zip(&want).enumerate() {
        assert!((got - want).abs() < 1e-6, "row {row}: {got} vs {want}");
    }
    let n = cfg.samples_per_prompt;
    for row in 0..clipped.batch {
        let group = &want[row / n * n..(row / n + 1) * n];
        let others = (group.iter().sum::<f32>() - want[row]) / (n - 1) as f32;
        let first = (0..r).find(|&t| clipped.mask[row * r + t] == 1.0).unwrap();
        let got = clipped.advantages[row * r + first];
        assert!(
            (got - (want[row] - others)).abs() < 1e-5,
            "row {row}: {got}"
        );
    }
    // the missing-EOS penalty (which excludes the overlong punishment) replaces the clipped
    // score: a response without EOS scores the penalty, outside the range, the others the clip
    let penalised = PpoConfig {
        overlong_buffer: None,
        missing_eos_penalty: Some(-5.0),
        ..clipped_cfg
    };
    penalised.validate().unwrap();
    let free = PpoConfig {
        reward_clip_range: None,
        missing_eos_penalty: None,
        ..penalised.clone()
    };
    let raw = counting.iteration(&counting::Words, &free).experience;
    let e = counting.iteration(&counting::Words, &penalised).experience;
    assert_eq!(e.ids, raw.ids, "the same samples");
    assert!(e.has_eos.iter().any(|&x| !x) && e.has_eos.iter().any(|&x| x));
    for row in 0..e.batch {
        let want = if e.has_eos[row] {
            raw.scores[row].clamp(lo, hi)
        } else {
            -5.0
        };
        assert_eq!(e.scores[row], want, "row {row}");
    }
}

/// DAPO's dynamic sampling on a rule reward with ties (the counting policy at a low temperature
/// often gives a prompt `n` equal word counts): the kept batch holds only groups whose scores
/// differ, more sampling rounds were needed, and the batch keeps its size. With a constant
/// reward no group is informative: every round is spent and the batch is refilled.
#[test]
fn dynamic_sampling_keeps_groups_whose_scores_differ() {
    let counting = Counting::new();
    let run = |scorer: &dyn rlhf_core::Scorer, cfg: &PpoConfig| counting.iteration(scorer, cfg);
    let cfg = PpoConfig {
        temperature: 0.3,
        dynamic_sampling: Some(6),
        overlong_buffer: Some(2),
        missing_eos_penalty: None,
        ..small(AdvantageEstimator::Grpo)
    };
    let step = run(&counting::Words, &cfg);
    let (rounds, dropped, refilled) = (
        metric(&step.metrics, names::DYNAMIC_SAMPLING_ROUNDS),
        metric(&step.metrics, names::DYNAMIC_SAMPLING_DROPPED),
        metric(&step.metrics, names::DYNAMIC_SAMPLING_REFILLED),
    );
    eprintln!(
        "rounds {rounds}, dropped {dropped}, refilled {refilled}, overlong {}",
        metric(&step.metrics, names::OBJECTIVE_OVERLONG)
    );
    assert!(
        dropped >= 1.0 && rounds >= 2.0,
        "the setting should have produced flat groups"
    );
    assert_eq!(step.experience.batch, 16);
    // dynamic sampling compares the scorer's scores; the experience holds them after the
    // overlong punishment, which two responses of a kept group may cancel out
    let e = &step.experience;
    let r = e.response_len;
    let scorer_scores: Vec<f32> = (0..e.batch)
        .map(|row| {
            let length = e.mask[row * r..(row + 1) * r].iter().sum::<f32>() as usize;
            e.scores[row] - overlong_penalty(length, 8, 2, 1.0)
        })
        .collect();
    let flat = |scores: &[f32], tolerance: f32| {
        scores
            .chunks(4)
            .filter(|g| g.iter().all(|&s| (s - g[0]).abs() <= tolerance))
            .count() as f64
    };
    assert_eq!(
        flat(&scorer_scores, 1e-5),
        refilled,
        "only refilled groups may have equal scorer scores"
    );
    // TRL's metric is over the rewards as the scorer and the penalties gave them (here, with no
    // variance reduction, the scores the advantages are made of)
    assert_eq!(
        metric(&step.metrics, names::FRAC_REWARD_ZERO_STD),
        flat(&e.scores, 0.0) / 4.0
    );

    // the same seed gives the same batch (a resumed run repeats its iterations)
    assert_eq!(run(&counting::Words, &cfg).experience, step.experience);
    // the overlong punishment is in the score that makes the advantages
    let constant = run(&counting::Constant(1.0), &cfg);
    let r = constant.experience.response_len;
    for (row, &score) in constant.experience.scores.iter().enumerate() {
        let length = constant.experience.mask[row * r..(row + 1) * r]
            .iter()
            .sum::<f32>() as usize;
        assert_eq!(
            score,
            1.0 + overlong_penalty(length, 8, 2, 1.0),
            "row {row}"
        );
    }
    let no_shaping = PpoConfig {
        overlong_buffer: None,
        ..cfg.clone()
    };
    let constant = run(&counting::Constant(1.0), &no_shaping);
    assert_eq!(
        (
            metric(&constant.metrics, names::DYNAMIC_SAMPLING_ROUNDS),
            metric(&constant.metrics, names::DYNAMIC_SAMPLING_REFILLED)
        ),
        (6.0, 4.0)
    );
    assert_eq!(constant.experience.batch, 16);
}

/// GSPO and CISPO run through the trainer with finite losses and their clip diagnostics, and
/// their first minibatch (ratio 1) moves the policy. TRL's per-response extremes bound the means:
/// `clip_ratio/low_min ≤ low_mean` and `high_max ≥ high_mean`; GSPO clips whole responses, so its
/// extremes are 0 or 1 (`high_max` 1 exactly when a response was clipped high).
#[test]
fn gspo_and_cispo_iterations_train() {
    let counting = Counting::new();
    let mut clipped_minibatches = 0;
    for recipe in [PpoConfig::gspo(), PpoConfig::cispo()] {
        let cfg = PpoConfig {
            samples_per_prompt: 4,
            prompts_per_batch: 4,
            query_length: 8,
            response_length: 8,
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            ..recipe
        };
        cfg.validate().unwrap();
        let step = counting.iteration(&counting::Words, &cfg);
        assert_eq!(step.update.minibatches.len(), 4);
        for m in &step.update.minibatches {
            for name in [
                names::LOSS_POLICY,
                names::CLIP_RATIO_LOW,
                names::CLIP_RATIO_HIGH,
            ] {
                assert!(
                    metric(m, name).is_finite(),
                    "{:?}: {name}",
                    cfg.policy_objective
                );
            }
        }
        // the first minibatch is on-policy (up to the rounding of a 4-row against a 16-row
        // forward pass): nothing clipped
        let first = &step.update.minibatches[0];
        assert_eq!(metric(first, names::POLICY_CLIPFRAC), 0.0);
        assert!((metric(first, names::VAL_RATIO_MEAN) - 1.0).abs() < 1e-5);
        if cfg.policy_objective == PolicyObjective::Gspo {
            // later minibatches are off-policy: the sequence ratio moved
            let last = step.update.minibatches.last().unwrap();
            assert!((metric(last, names::VAL_RATIO_MEAN) - 1.0).abs() > 1e-5);
        }
        for m in &step.update.minibatches {
            let (low, high) = (
                metric(m, names::CLIP_RATIO_LOW),
                metric(m, names::CLIP_RATIO_HIGH),
            );
            let (low_min, high_max) = (
                metric(m, names::CLIP_RATIO_LOW_MIN),
                metric(m, names::CLIP_RATIO_HIGH_MAX),
            );
            assert!(
                (0.0..=low + 1e-6).contains(&low_min) && (high - 1e-6..=1.0).contains(&high_max),
                "{:?}: low {low} (min {low_min}), high {high} (max {high_max})",
                cfg.policy_objective
            );
            if cfg.policy_objective == PolicyObjective::Gspo {
                assert_eq!(high_max, if high > 0.0 { 1.0 } else { 0.0 });
                assert_eq!(low_min, if low >= 1.0 { 1.0 } else { 0.0 });
            }
            clipped_minibatches += usize::from(low + high > 0.0);
        }
    }
    assert!(
        clipped_minibatches > 0,
        "no minibatch clipped: the extremes were not tested"
    );
}

/// GDPO's normalisation (`multi_objective_aggregation = normalize_then_sum`) reads each reward
/// function's scores apart: the same samples scored by a word count and a rule (weights 1 and 2)
/// get the same advantages when the word count is on a thousand times the scale, where the
/// weighted sum normalised as GRPO does follows the larger function. The rule's scores vary in
/// the batch, so it has a share to lose.
#[test]
fn gdpo_advantages_do_not_follow_a_reward_functions_scale() {
    use rlhf_ppo::MultiObjectiveAggregation as Aggregation;
    use rlhf_reward::{Combine, EnsembleScorer, LengthScorer, RegexScorer};
    let counting = Counting::new();
    let eos = counting.tok.eos_text().to_string();
    let two = |scale: f32| {
        let members: Vec<Box<dyn rlhf_core::Scorer>> = vec![
            Box::new(LengthScorer::new(scale, eos.clone())),
            Box::new(RegexScorer::new("yes yes yes", eos.clone()).unwrap()),
        ];
        EnsembleScorer::new(members, Combine::Sum)
            .unwrap()
            .with_names(vec!["words".into(), "three".into()])
            .unwrap()
            .with_weights(vec![1.0, 2.0])
            .unwrap()
    };
    let run = |scale: f32, aggregation| {
        let cfg = PpoConfig {
            missing_eos_penalty: None,
            // the iteration's β is 0 (`Counting::iteration`)
            kl: rlhf_core::KlController::Fixed { value: 0.0 },
            multi_objective_aggregation: aggregation,
            ..small(AdvantageEstimator::Grpo)
        };
        cfg.validate().unwrap();
        counting.iteration(&two(scale), &cfg)
    };
    let largest_gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    let gdpo = run(1.0, Aggregation::NormalizeThenSum);
    let part = |name: &str| {
        let name = format!("rewards/{name}");
        gdpo.score_parts.iter().find(|(n, _)| *n == name).unwrap().1
    };
    let rule_spread = part("three/std");
    assert!(rule_spread > 0.1, "the rule's scores vary: {rule_spread}");
    let stretched = run(1000.0, Aggregation::NormalizeThenSum);
    let gap = largest_gap(
        &gdpo.experience.advantages,
        &stretched.experience.advantages,
    );
    assert!(gap < 1e-3, "GDPO moved by {gap}");
    let summed = run(1.0, Aggregation::SumThenNormalize);
    let summed_stretched = run(1000.0, Aggregation::SumThenNormalize);
    let gap = largest_gap(
        &summed.experience.advantages,
        &summed_stretched.experience.advantages,
    );
    assert!(gap > 0.1, "the sum moved by only {gap}");
    assert!(largest_gap(&gdpo.experience.advantages, &summed.experience.advantages) > 0.1);
    // the decoupled rewards end scaled by the batch's spread, `(r − mean_B)/(std_B + 1e−4)`: over
    // the batch the advantages have mean 0 and a spread of 1, where scaling each group by its
    // own (GRPO's) would leave a spread of at most √(12/15) over these 4 groups of 4
    let e = &gdpo.experience;
    let rows: Vec<f64> = (0..e.batch)
        .map(|row| f64::from(e.advantages[row * e.response_len]))
        .collect();
    let mean = rows.iter().sum::<f64>() / rows.len() as f64;
    let spread =
        (rows.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (rows.len() as f64 - 1.0)).sqrt();
    assert!(
        mean.abs() < 1e-4 && (spread - 1.0).abs() < 1e-3,
        "{mean} ± {spread}"
    );
    // the scores stay the scorer's: the weighted sum of the parts
    let (words, three) = (part("words/mean"), part("three/mean"));
    let scores = metric(&gdpo.metrics, names::OBJECTIVE_SCORES);
    assert!((scores - (words + 2.0 * three)).abs() < 1e-5, "{scores}");
}
