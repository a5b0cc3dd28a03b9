//! Compute accounting: FLOPs per workload and model FLOP utilisation.

use rlhf_models::TransformerConfig;
use serde::{Deserialize, Serialize};

/// What a model does with a number of tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// Forward + backward + update: `6·N` per token.
    Train {
        /// Tokens trained on.
        tokens: u64,
    },
    /// Forward only (reference log-probs, reward or value scoring, generation): `2·N` per token.
    Forward {
        /// Tokens processed.
        tokens: u64,
    },
}

/// Estimated FLOPs of `workload` on `model` (`N` = non-embedding parameters; attention's
/// `O(seq²)` term is left out, as in Kaplan et al.'s `C ≈ 6·N·D`).
pub fn flops(model: &TransformerConfig, workload: Workload) -> u64 {
    let n = model.non_embedding_params();
    match workload {
        Workload::Train { tokens } => 6 * n * tokens,
        Workload::Forward { tokens } => 2 * n * tokens,
    }
}

/// FLOPs of one PPO iteration: generation of `episodes × response_len` tokens by the policy;
/// forward passes of the reference, the reward model and (when there is one) the critic over
/// `episodes × (query_len + response_len)` tokens; and `epochs` training passes of the policy and
/// the critic over the same tokens.
pub fn ppo_iteration_flops(
    policy: &TransformerConfig,
    reward: &TransformerConfig,
    critic: Option<&TransformerConfig>,
    episodes: u64,
    query_len: u64,
    response_len: u64,
    epochs: u64,
) -> u64 {
    let seq_tokens = episodes * (query_len + response_len);
    let generation = flops(
        policy,
        Workload::Forward {
            tokens: episodes * response_len,
        },
    );
    let scoring = flops(policy, Workload::Forward { tokens: seq_tokens }) // reference = policy's shape
        + flops(reward, Workload::Forward { tokens: seq_tokens })
        + critic.map_or(0, |c| flops(c, Workload::Forward { tokens: seq_tokens }));
    let update = epochs
        * (flops(policy, Workload::Train { tokens: seq_tokens })
            + critic.map_or(0, |c| flops(c, Workload::Train { tokens: seq_tokens })));
    generation + scoring + update
}

/// Model FLOP utilisation: achieved FLOP/s over the machine's measured peak.
pub fn mfu(flops: u64, seconds: f64, peak_flops_per_second: f64) -> f64 {
    flops as f64 / seconds / peak_flops_per_second
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppo_iteration_adds_its_parts() {
        let m = TransformerConfig::preset("tiny-1m").unwrap();
        let n = m.non_embedding_params();
        let (e, q, r, epochs) = (16, 24, 8, 4);
        let with_critic = ppo_iteration_flops(&m, &m, Some(&m), e, q, r, epochs);
        let expected =
            2 * n * e * r + 3 * (2 * n * e * (q + r)) + epochs * 2 * (6 * n * e * (q + r));
        assert_eq!(with_critic, expected);
        let no_critic = ppo_iteration_flops(&m, &m, None, e, q, r, epochs);
        assert_eq!(
            with_critic - no_critic,
            2 * n * e * (q + r) + epochs * 6 * n * e * (q + r)
        );
    }

    #[test]
    fn mfu_is_a_share_of_peak() {
        assert!((mfu(100_000_000_000, 2.0, 100e9) - 0.5).abs() < 1e-12);
    }
}
