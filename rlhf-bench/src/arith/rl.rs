//! RL against a verifier: the SFT policy of `arith-steps` trained by an on-policy method (GRPO in
//! the presets) with the verifier's score as the reward, on `task.train_prompts` in-domain
//! training prompts; its pass@1 is then judged by the gold final answer on the held-out prompts
//! of the candidates, in-domain and out of distribution, against the SFT policy's (the share of
//! right candidates, sampled at the same temperature).

use std::time::Instant;

use burn::tensor::Device;

use rlhf_core::train::seeded;
use rlhf_core::{Result, Scorer};
use rlhf_models::{CausalLm, ScalarModel};
use rlhf_ppo::{PolicyAndValue, PpoConfig, PpoInputs, train_ppo};

use super::Measured;
use super::policy::{Held, Setup, is_right};
use super::verifier;
use crate::cache::quiet_in;
use crate::compute::ppo_iteration_flops;
use crate::config::RunConfig;
use crate::judge::{kl_per_prompt, per_prompt, sample};
use crate::method::{advantage_for, critic_shape};
use crate::metrics::{arith as am, names};
use crate::pipeline::{RunResult, peak_memory_bytes};
use crate::stages::{Prompts, Sft};
use crate::stats::mean;

/// Runs an RL point (see the module documentation).
pub(crate) fn run_rl(
    cfg: &RunConfig,
    cache: &std::path::Path,
    work: &std::path::Path,
) -> Result<RunResult> {
    let start = Instant::now();
    let device = rlhf_core::parse_device(&cfg.device)?.autodiff();
    let setup = Setup::new(cfg, cache)?;
    let tok = &setup.tok;
    let mut out = Measured::default();
    let sft = setup.sft(&cfg.sft.policy_size, &device)?;
    setup.add_sft_metrics(&sft, &mut out);
    let backbone = setup.sft(&cfg.rm.size, &device)?;
    let stage = verifier::train(&setup, &sft, &backbone, &device)?;
    stage.add_metrics(&mut out);
    let scorer = stage.scorer(tok, &device);

    // the method
    let train_prompts = setup.prompts(Prompts::RlTrain, cfg.task.train_prompts);
    let mut pcfg = cfg.method.ppo.clone();
    pcfg.seed = cfg.seed;
    pcfg.query_length = 1;
    for p in &train_prompts {
        pcfg.query_length = pcfg.query_length.max(tok.encode(p)?.len());
    }
    pcfg.advantage = advantage_for(cfg.method.kind);
    // a critic (PPO's) starts from the verifier's transformer with a fresh head, as the TL;DR
    // reproduction's starts from its reward model (or from the policy's, when switched off)
    let critic_from = if pcfg.value_from_reward_model {
        &stage.verifier.lm
    } else {
        &sft.model
    };
    let value = pcfg.advantage.needs_critic().then(|| {
        seeded(&device, cfg.seed.wrapping_add(8), || {
            ScalarModel::from_backbone(critic_from.clone())
        })
    });
    let method_start = Instant::now();
    let inputs = PpoInputs {
        reference: &sft.model,
        scorer: &scorer,
        tokenizer: tok,
        prompts: &train_prompts,
        demonstrations: &[],
        eval: None,
        eval_every: 0,
        eval_first: false,
    };
    let (models, report) = train_ppo(
        PolicyAndValue::new(sft.model.clone(), value),
        &inputs,
        &pcfg,
        &quiet_in(work.join("ppo")),
        &device,
    )?;
    add_method_cost(&mut out, &pcfg, &sft, &stage, report.iterations);
    out.metric(names::ITERATIONS, report.iterations as f64);
    out.metric(names::TIME_METHOD, method_start.elapsed().as_secs_f64());

    judge_pass1(&setup, &sft, &models.policy, &scorer, &device, &mut out)?;
    out.metric(names::MEMORY_PEAK, peak_memory_bytes());
    Ok(RunResult {
        metrics: out.metrics,
        items: out.items,
        curve: Vec::new(),
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The RL stage's FLOPs and tokens over its `iterations` (responses counted at their full
/// `response_length`).
fn add_method_cost(
    out: &mut Measured,
    pcfg: &PpoConfig,
    sft: &Sft,
    stage: &verifier::Stage,
    iterations: u64,
) {
    let critic = critic_shape(pcfg, &stage.config, &sft.shape);
    let per_iteration = ppo_iteration_flops(
        &sft.shape,
        &stage.config,
        critic,
        pcfg.batch_size() as u64,
        pcfg.query_length as u64,
        pcfg.response_length as u64,
        pcfg.ppo_epochs as u64,
    );
    out.metric(names::FLOPS_METHOD, (per_iteration * iterations) as f64);
    out.metric(
        names::TOKENS_METHOD,
        (iterations
            * pcfg.batch_size() as u64
            * (pcfg.query_length + pcfg.response_length) as u64
            * pcfg.ppo_epochs as u64) as f64,
    );
}

/// The judge: pass@1 before (the SFT policy's candidates) and after RL (`policy`'s samples),
/// per held-out prompt, in-domain and out of distribution; in-domain also the verifier's mean
/// score of both and the KL of `policy` to the SFT policy.
fn judge_pass1(
    setup: &Setup<'_>,
    sft: &Sft,
    policy: &CausalLm,
    scorer: &dyn Scorer,
    device: &Device,
    out: &mut Measured,
) -> Result<()> {
    let (cfg, tok) = (setup.cfg, &setup.tok);
    let j = &cfg.judge;
    for (held, before, after) in [
        (Held::InDomain, am::PASS1_BEFORE, am::PASS1_AFTER),
        (Held::Ood, am::PASS1_BEFORE_OOD, am::PASS1_AFTER_OOD),
    ] {
        let c = setup.candidates(sft, held)?;
        let right = |texts: &[String], k: usize| -> Vec<f64> {
            let r: Vec<f64> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| f64::from(u8::from(is_right(&setup.task, &c.prompts[i / k], t))))
                .collect();
            per_prompt(&r, k)
        };
        out.per_prompt(before, right(&c.texts, c.n));
        let s = sample(
            policy,
            tok,
            &c.prompts,
            j.samples,
            j.temperature,
            j.max_new_tokens,
            cfg.seed.wrapping_add(41),
        )?;
        out.per_prompt(after, right(&s.texts, s.k));
        if held == Held::InDomain {
            out.metric(am::VERIFIER_BEFORE, mean(&c.score(scorer)?));
            let prompts: Vec<&str> = c
                .prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.as_str(), s.k))
                .collect();
            let texts: Vec<&str> = s.texts.iter().map(String::as_str).collect();
            let after_scores = scorer.score(&prompts, &texts)?;
            out.metric(
                am::VERIFIER_AFTER,
                mean(after_scores.into_iter().map(f64::from)),
            );
            let kl = kl_per_prompt(
                policy,
                &sft.model,
                tok,
                &c.prompts,
                &s,
                j.temperature,
                device,
            )?;
            out.metric(names::KL, mean(&kl));
        }
    }
    Ok(())
}
