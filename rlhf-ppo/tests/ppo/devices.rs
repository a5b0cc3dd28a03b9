//! One PPO iteration (GAE with a critic) and one GRPO iteration on the device of `RLHF_DEVICE`
//! (wgpu + lavapipe in CI) match the same iteration on `flex`: same weights, same sampled
//! responses, same minibatch order. The rollout's log-probs, rewards and advantages agree within
//! 1e-3, and every minibatch's losses within 1e-3 (relative, floored at 1). With `RLHF_DEVICE`
//! unset both sides are `flex`.

use burn::module::Module;
use burn::tensor::Device;
use rand::SeedableRng;
use rlhf_core::train::checkpoint::{module_from_bytes, module_to_bytes};
use rlhf_core::train::metrics::names;
use rlhf_core::train::{OptimizerConfig, TrainRng};
use rlhf_models::{SamplingConfig, ScalarModel, generate};
use rlhf_ppo::{
    AdvantageEstimator, Experience, PolicyAndValue, PpoConfig, UpdateStats, encode_queries,
    make_experience, ppo_update,
};

use rlhf_testkit::counting;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn one_ppo_and_one_grpo_iteration_match_flex() {
    let tok = counting::tokenizer();
    let policy_bytes = counting::counting_policy(&tok, 0.0);
    let flex = rlhf_core::parse_device("flex").unwrap().autodiff();
    let other = rlhf_core::device_from_env().unwrap().autodiff();
    let vocab = tok.vocab_size();
    let policy = counting::load(&policy_bytes, vocab, 0.0, &flex);
    let value_bytes = rlhf_core::train::seeded(&flex, 21, || {
        module_to_bytes(ScalarModel::from_backbone(policy)).unwrap()
    });
    let prompts: Vec<String> = (1..=4).map(counting::prompt).collect();
    for advantage in [AdvantageEstimator::Gae, AdvantageEstimator::Grpo] {
        let cfg = PpoConfig {
            advantage,
            samples_per_prompt: 4,
            prompts_per_batch: 4,
            query_length: 8,
            response_length: 8,
            ppo_epochs: 1,
            num_minibatches: 2,
            optimizer: OptimizerConfig {
                lr: 1e-3,
                ..OptimizerConfig::default()
            },
            ..PpoConfig::default()
        };
        let episodes: Vec<&str> = prompts.iter().flat_map(|p| [p.as_str(); 4]).collect();
        let (qids, qmask) = encode_queries(&tok, &episodes, cfg.query_length).unwrap();
        // the responses are sampled once, on flex, and given to both sides
        let generation = generate(
            &counting::load(&policy_bytes, vocab, 0.0, &flex).valid(),
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
        let scores: Vec<f32> = (0..episodes.len()).map(|i| (i % 5) as f32 * 0.5).collect();
        let run = |device: &Device| -> (Experience, UpdateStats) {
            let policy = counting::load(&policy_bytes, vocab, 0.0, device);
            let value = advantage.needs_critic().then(|| {
                module_from_bytes(
                    rlhf_core::train::seeded(device, 0, || {
                        ScalarModel::from_backbone(policy.clone())
                    }),
                    &value_bytes,
                )
                .unwrap()
            });
            let models = PolicyAndValue::new(policy, value);
            let inference = PolicyAndValue {
                policy: models.policy.valid(),
                value: models.value.as_ref().map(|v| v.valid()),
            };
            let reference = counting::load(&policy_bytes, vocab, 0.0, device).valid();
            let (exp, _) = make_experience(
                &inference,
                &reference,
                &qids,
                &qmask,
                &generation,
                &scores,
                None,
                &cfg,
                0.05,
            )
            .unwrap();
            let mut optim = cfg.optimizer.build().unwrap();
            let (_, stats) = ppo_update(
                models,
                &mut optim,
                &exp,
                &cfg,
                0.05,
                &mut cfg.entropy_controller(),
                &|_| cfg.optimizer.lr,
                &[],
                &mut TrainRng::seed_from_u64(9),
                device,
                &rlhf_core::train::Replicas::default(),
            )
            .unwrap();
            (exp, stats)
        };
        let (ea, sa) = run(&flex);
        let (eb, sb) = run(&other);
        for (name, a, b) in [
            ("logprobs", &ea.logprobs, &eb.logprobs),
            ("rewards", &ea.rewards, &eb.rewards),
            ("advantages", &ea.advantages, &eb.advantages),
            ("values", &ea.values, &eb.values),
        ] {
            assert_eq!(a.len(), b.len());
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-3, "{advantage:?} {name}: max difference {worst}");
        }
        assert_eq!(sa.minibatches.len(), 2);
        for (ma, mb) in sa.minibatches.iter().zip(&sb.minibatches) {
            for key in [names::LOSS_TOTAL, names::LOSS_POLICY, names::VAL_LOSS] {
                let a = ma.iter().find(|m| m.0 == key).map(|m| m.1);
                let b = mb.iter().find(|m| m.0 == key).map(|m| m.1);
                assert_eq!(a.is_some(), b.is_some());
                if let (Some(a), Some(b)) = (a, b) {
                    assert!(close(a, b), "{advantage:?} {key}: {a} vs {b}");
                }
            }
        }
        eprintln!(
            "{advantage:?}: loss/total {:?} vs {:?}",
            sa.minibatches
                .iter()
                .map(|m| m.iter().find(|x| x.0 == names::LOSS_TOTAL).unwrap().1)
                .collect::<Vec<_>>(),
            sb.minibatches
                .iter()
                .map(|m| m.iter().find(|x| x.0 == names::LOSS_TOTAL).unwrap().1)
                .collect::<Vec<_>>()
        );
    }
}
