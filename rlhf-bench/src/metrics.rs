//! The names of what a point measures: scalar metrics ([`RunResult::metrics`]), per-prompt
//! values ([`items`], what the intervals are computed from) and learning-curve entries
//! ([`curve`]).
//!
//! | metric | meaning |
//! | --- | --- |
//! | `gold/mean`, `gold/se` | gold score of the judged samples (every sample of every held-out prompt), and its standard error over prompts |
//! | `gold/sft`, `gold/sft_cold`, `gold/gain` | the SFT policy's gold score on the same prompts at the judge's temperature and at the cold one; the gain over the former |
//! | `gold/references`, `gold/ceiling` | the references' gold score (one demonstration per held-out prompt, with the demonstrator's noise: the dataset's human-written summaries), and the perfect summary's (1) |
//! | `gold/completeness`, `gold/faithfulness`, `gold/conciseness`, `gold/well_formedness`, `gold/eos` | the gold score's components, averaged like `gold/mean` |
//! | `judge/win_rate_vs_references`, `judge/sft_win_rate_vs_references`, `judge/sft_cold_win_rate_vs_references` | gold win rate (ties half) of the policy's, the SFT policy's and the cold SFT policy's samples against the references |
//! | `gold/gold_pick`, `judge/gold_pick_win_rate_vs_references` | best-of-n only: gold score and win rate against the references of the gold score's own best-of-n among the same candidates (a reward model without error; Gao et al.'s gold-RM best-of-n) |
//! | `judge/win_rate_vs_sft` | gold win rate of the policy's samples against the SFT policy's, prompt by prompt |
//! | `kl` | `KL(π‖π_ref)` per sequence: the sampled estimate on the judged samples, or `log n − (n−1)/n` for best-of-n |
//! | `proxy/mean`, `proxy/sft` | the reward model's (normalised) score of the judged and of the SFT samples |
//! | `rm/accuracy`, `rm/gold_accuracy`, `rm/labeller_agreement` | held-out RM accuracy against the labels and against the gold order; the labeller's agreement with gold on the training pairs |
//! | `response/length`, `response/sft_length`, `response/eos` | tokens per judged and per SFT response; share of judged responses ending with EOS |
//! | `flops/sft`, `flops/rm`, `flops/method` | estimated FLOPs (`6·N` per trained token, `2·N` per forward token, `N` non-embedding parameters) |
//! | `tokens/sft`, `tokens/rm`, `tokens/method` | tokens of the sequences a stage trains on, once per pass |
//! | `params/policy`, `params/rm` | non-embedding parameters |
//! | `length_control/slope` | the least-squares slope of the RM's score on response length over SFT samples (the length-only reward's direction and scale) |
//! | `time/method`, `memory/peak_bytes` | wall seconds of the method stage; peak resident memory so far |
//! | `proxy/se`, `proxy/gain`, `proxy/chosen`, `proxy/win_rate_vs_sft`, `proxy/win_rate_vs_chosen` | a user's preference file (no gold): the RM judges — its score's standard error, the gain over SFT, the held-out chosen responses' score, win rates by the RM |
//! | `data/records`, `data/rejected`, `data/pairs_dropped`, `data/train_pairs`, `data/eval_pairs`, `data/demos` | a user's preference file: records read and rejected, pairs dropped after truncation, the splits' pairs, SFT demonstrations |
//!
//! `arith-steps` points ([`crate::arith`]) measure their own, named in [`arith`]. Each of the
//! per-prompt ones is stored twice under one name: as a metric (the mean over the seed's
//! held-out prompts) and as items (one value per prompt, in order).
//!
//! | `arith-steps` metric | meaning |
//! | --- | --- |
//! | `bon/accuracy`, `bon/accuracy_ood` | per prompt, 1 when the verifier's pick among the SFT policy's `n` candidates has the right final answer (in-domain prompts; out-of-distribution prompts, longer chains) |
//! | `bon/first`, `bon/random`, `bon/majority`, `bon/oracle` (and `_ood`) | the baselines on the same candidates: best-of-1 (the first candidate, the SFT policy's pass@1), a random pick (the share of right candidates), majority vote over final answers (self-consistency), any candidate right |
//! | `bon/pair_accuracy`, `bon/pair_accuracy_ood` | share of (right, wrong) candidate pairs of a prompt that the verifier orders right (ties ½), over every prompt |
//! | `rm/accuracy`, `rm/balanced_accuracy` | the verifier's held-out accuracy on its own labels (one per solution, or one per step), and the mean of its accuracies on right and on wrong labels |
//! | `rm/solutions`, `rm/labels` | labelled solutions the verifier trained on, and their labels |
//! | `rl/pass1_before`, `rl/pass1_after` (and `_ood`) | per prompt, the share of right samples of the SFT policy (its `n` candidates) and of the policy after RL against the verifier (`judge.samples` samples), at the judge's temperature |
//! | `rl/verifier_before`, `rl/verifier_after` | the verifier's mean score (a probability that the solution is right) of those in-domain samples |

/// Scalar metrics of a point.
pub mod names {
    /// Gold score of the judged samples.
    pub const GOLD: &str = "gold/mean";
    /// Its standard error over prompts.
    pub const GOLD_SE: &str = "gold/se";
    /// The SFT policy's gold score.
    pub const GOLD_SFT: &str = "gold/sft";
    /// The SFT policy's gold score at the cold temperature.
    pub const GOLD_SFT_COLD: &str = "gold/sft_cold";
    /// `gold/mean − gold/sft`.
    pub const GOLD_GAIN: &str = "gold/gain";
    /// The references' gold score.
    pub const GOLD_REFERENCES: &str = "gold/references";
    /// The perfect summary's gold score.
    pub const GOLD_CEILING: &str = "gold/ceiling";
    /// Win rate of the judged samples against the references.
    pub const WIN_VS_REFERENCES: &str = "judge/win_rate_vs_references";
    /// Win rate of the SFT samples against the references.
    pub const SFT_WIN_VS_REFERENCES: &str = "judge/sft_win_rate_vs_references";
    /// Win rate of the cold SFT samples against the references.
    pub const SFT_COLD_WIN_VS_REFERENCES: &str = "judge/sft_cold_win_rate_vs_references";
    /// Best-of-n: the gold score of the gold score's own pick among the same candidates.
    pub const GOLD_PICK: &str = "gold/gold_pick";
    /// Best-of-n: win rate of the gold score's own pick against the references.
    pub const GOLD_PICK_WIN_VS_REFERENCES: &str = "judge/gold_pick_win_rate_vs_references";
    /// Win rate of the judged samples against the SFT samples.
    pub const WIN_VS_SFT: &str = "judge/win_rate_vs_sft";
    /// KL to the reference policy per sequence.
    pub const KL: &str = "kl";
    /// The RM's score of the judged samples.
    pub const PROXY: &str = "proxy/mean";
    /// The RM's score of the SFT samples.
    pub const PROXY_SFT: &str = "proxy/sft";
    /// Held-out RM accuracy against its labels.
    pub const RM_ACCURACY: &str = "rm/accuracy";
    /// Held-out RM accuracy against the gold order.
    pub const RM_GOLD_ACCURACY: &str = "rm/gold_accuracy";
    /// The labeller's agreement with gold.
    pub const RM_LABELLER_AGREEMENT: &str = "rm/labeller_agreement";
    /// Tokens per judged response.
    pub const LENGTH: &str = "response/length";
    /// Tokens per SFT response.
    pub const LENGTH_SFT: &str = "response/sft_length";
    /// Share of judged responses ending with EOS.
    pub const EOS: &str = "response/eos";
    /// FLOPs of SFT.
    pub const FLOPS_SFT: &str = "flops/sft";
    /// FLOPs of the RM stage.
    pub const FLOPS_RM: &str = "flops/rm";
    /// FLOPs of the method stage.
    pub const FLOPS_METHOD: &str = "flops/method";
    /// Tokens of SFT.
    pub const TOKENS_SFT: &str = "tokens/sft";
    /// Tokens of the RM stage.
    pub const TOKENS_RM: &str = "tokens/rm";
    /// Tokens of the method stage.
    pub const TOKENS_METHOD: &str = "tokens/method";
    /// Non-embedding parameters of the policy.
    pub const PARAMS_POLICY: &str = "params/policy";
    /// Non-embedding parameters of the RM.
    pub const PARAMS_RM: &str = "params/rm";
    /// The slope of the RM's score on length over SFT samples.
    pub const LENGTH_SLOPE: &str = "length_control/slope";
    /// Wall seconds of the method stage.
    pub const TIME_METHOD: &str = "time/method";
    /// Peak resident memory.
    pub const MEMORY_PEAK: &str = "memory/peak_bytes";
    /// Iterations of an on-policy method.
    pub const ITERATIONS: &str = "method/iterations";
    /// Optimizer steps of an offline method.
    pub const STEPS: &str = "method/steps";
    /// The KL coefficient at the end of an on-policy run.
    pub const FINAL_KL_COEF: &str = "method/final_kl_coef";
    /// An offline method's held-out implicit-reward accuracy.
    pub const EVAL_REWARD_ACCURACY: &str = "method/eval_reward_accuracy";
    /// A user's file: the RM score's standard error.
    pub const PROXY_SE: &str = "proxy/se";
    /// A user's file: the RM score's gain over SFT.
    pub const PROXY_GAIN: &str = "proxy/gain";
    /// A user's file: the RM's score of the held-out chosen responses.
    pub const PROXY_CHOSEN: &str = "proxy/chosen";
    /// A user's file: win rate by the RM against the SFT policy.
    pub const PROXY_WIN_VS_SFT: &str = "proxy/win_rate_vs_sft";
    /// A user's file: win rate by the RM against the chosen responses.
    pub const PROXY_WIN_VS_CHOSEN: &str = "proxy/win_rate_vs_chosen";
    /// A user's file: records read.
    pub const DATA_RECORDS: &str = "data/records";
    /// A user's file: records rejected.
    pub const DATA_REJECTED: &str = "data/rejected";
    /// A user's file: pairs dropped after truncation.
    pub const DATA_PAIRS_DROPPED: &str = "data/pairs_dropped";
    /// A user's file: training pairs.
    pub const DATA_TRAIN_PAIRS: &str = "data/train_pairs";
    /// A user's file: held-out pairs.
    pub const DATA_EVAL_PAIRS: &str = "data/eval_pairs";
    /// A user's file: SFT demonstrations.
    pub const DATA_DEMOS: &str = "data/demos";
}

/// Per-prompt values of a point (one per held-out prompt of its seed, in order; for the RM,
/// one per held-out pair): the draws the intervals are computed from.
pub mod items {
    /// Mean gold score of the judged samples of each prompt.
    pub const GOLD: &str = "gold";
    /// Mean gold score of the SFT samples of each prompt.
    pub const SFT_GOLD: &str = "sft/gold";
    /// Mean gold score of the cold SFT samples of each prompt.
    pub const SFT_COLD_GOLD: &str = "sft_cold/gold";
    /// Win rate of the judged samples against the prompt's reference.
    pub const WIN: &str = "win_vs_references";
    /// Win rate of the SFT samples against the prompt's reference.
    pub const SFT_WIN: &str = "sft/win_vs_references";
    /// Win rate of the cold SFT samples against the prompt's reference.
    pub const SFT_COLD_WIN: &str = "sft_cold/win_vs_references";
    /// The RM's mean score of the judged samples.
    pub const PROXY: &str = "proxy";
    /// Mean length of the judged samples.
    pub const LENGTH: &str = "length";
    /// Mean length of the SFT samples.
    pub const SFT_LENGTH: &str = "sft/length";
    /// Whether the RM orders each held-out pair as the gold does (1, 0; ties ½).
    pub const RM_GOLD_CORRECT: &str = "rm/gold_correct";
}

/// The names of what an `arith-steps` point measures (see the table above). The per-prompt
/// ones name both a metric and its items.
pub mod arith {
    /// The verifier's pick is right (in-domain prompts).
    pub const PICK: &str = "bon/accuracy";
    /// The verifier's pick is right (out-of-distribution prompts).
    pub const PICK_OOD: &str = "bon/accuracy_ood";
    /// Verifier-weighted voting over the final answers picks a right candidate (in-domain).
    pub const WEIGHTED_VOTE: &str = "bon/weighted_vote";
    /// Verifier-weighted voting out of distribution.
    pub const WEIGHTED_VOTE_OOD: &str = "bon/weighted_vote_ood";
    /// The first candidate is right: best-of-1, the SFT policy's pass@1.
    pub const FIRST: &str = "bon/first";
    /// Best-of-1 out of distribution.
    pub const FIRST_OOD: &str = "bon/first_ood";
    /// A random pick is right: the share of right candidates.
    pub const RANDOM: &str = "bon/random";
    /// A random pick out of distribution.
    pub const RANDOM_OOD: &str = "bon/random_ood";
    /// The majority vote over final answers is right (self-consistency).
    pub const MAJORITY: &str = "bon/majority";
    /// Majority vote out of distribution.
    pub const MAJORITY_OOD: &str = "bon/majority_ood";
    /// Some candidate is right: the best any pick can do.
    pub const ORACLE: &str = "bon/oracle";
    /// The oracle out of distribution.
    pub const ORACLE_OOD: &str = "bon/oracle_ood";
    /// The untrained verifier's pick is right: the candidate the verifier's SFT model finds most
    /// likely (in-domain).
    pub const LIKELIHOOD: &str = "bon/likelihood";
    /// The untrained verifier's pick out of distribution.
    pub const LIKELIHOOD_OOD: &str = "bon/likelihood_ood";
    /// Share of (right, wrong) candidate pairs the untrained verifier orders right (metric only).
    pub const LIKELIHOOD_PAIR_ACCURACY: &str = "bon/likelihood_pair_accuracy";
    /// Share of (right, wrong) candidate pairs the verifier orders right (metric only).
    pub const PAIR_ACCURACY: &str = "bon/pair_accuracy";
    /// The same out of distribution (metric only).
    pub const PAIR_ACCURACY_OOD: &str = "bon/pair_accuracy_ood";
    /// Held-out balanced accuracy of the verifier on its own labels (metric only).
    pub const BALANCED_ACCURACY: &str = "rm/balanced_accuracy";
    /// The likelihood verifier's bias fitted to the untrained model (metric only).
    pub const VERIFIER_BIAS_INITIAL: &str = "rm/initial_bias";
    /// The likelihood verifier's bias after training (metric only).
    pub const VERIFIER_BIAS: &str = "rm/bias";
    /// Labelled solutions the verifier trained on (metric only).
    pub const SOLUTIONS: &str = "rm/solutions";
    /// Labels of those solutions: one each for an outcome verifier, one per step for a process
    /// verifier (metric only).
    pub const LABELS: &str = "rm/labels";
    /// The SFT policy's pass@1 (in-domain), on an RL point.
    pub const PASS1_BEFORE: &str = "rl/pass1_before";
    /// The RL policy's pass@1 (in-domain).
    pub const PASS1_AFTER: &str = "rl/pass1_after";
    /// The SFT policy's pass@1 out of distribution.
    pub const PASS1_BEFORE_OOD: &str = "rl/pass1_before_ood";
    /// The RL policy's pass@1 out of distribution.
    pub const PASS1_AFTER_OOD: &str = "rl/pass1_after_ood";
    /// The verifier's mean score of the SFT policy's in-domain samples (metric only).
    pub const VERIFIER_BEFORE: &str = "rl/verifier_before";
    /// The verifier's mean score of the RL policy's in-domain samples (metric only).
    pub const VERIFIER_AFTER: &str = "rl/verifier_after";
}

/// Learning-curve entries (one per iteration; the `eval/*` ones every few iterations).
pub mod curve {
    /// Gold score on a fixed subset of held-out prompts, one sample each.
    pub const GOLD: &str = "eval/gold";
    /// KL to the reference on those samples.
    pub const KL: &str = "eval/kl";
    /// The RM's score of those samples.
    pub const PROXY: &str = "eval/proxy";
    /// Their mean length.
    pub const LENGTH: &str = "eval/length";
    /// FLOPs of the method so far.
    pub const FLOPS: &str = "flops";
}
