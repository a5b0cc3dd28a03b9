//! The axes of the study: what each varies, and the seed-paper finding it tests (the findings
//! themselves are computed in [`crate::findings`]).

use serde::{Deserialize, Serialize};

use rlhf_core::{Error, Result};

/// One axis of the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Comparison pairs the RM trains on (no policy training).
    RmVolume,
    /// A fixed pair budget: many prompts × 1 pair against few prompts × 4.
    RmDiversity,
    /// The RM's size, with PPO from the base policy.
    RmSize,
    /// The policy's size, with PPO against one RM trained on every size's samples.
    PolicySize,
    /// Samples per prompt at equal episodes per iteration (PPO).
    SamplesPerPrompt,
    /// PPO, GRPO, RLOO, REINFORCE++, DPO and EXO, each at several β.
    Method,
    /// PPO's KL coefficient, 0 included: the over-optimisation axis.
    KlBudget,
    /// Best-of-n reranking of SFT samples by the RM.
    BestOfN,
    /// PPO against the RM, and against the length-only part of the RM.
    LengthControl,
    /// `arith-steps`: outcome and process verifiers at several data volumes.
    Supervision,
    /// `arith-steps`: RL of the SFT solver with each verifier as the reward.
    SupervisionRl,
}

impl Axis {
    /// Every axis, in report order.
    pub const ALL: [Axis; 11] = [
        Axis::RmVolume,
        Axis::RmDiversity,
        Axis::RmSize,
        Axis::PolicySize,
        Axis::SamplesPerPrompt,
        Axis::Method,
        Axis::KlBudget,
        Axis::BestOfN,
        Axis::LengthControl,
        Axis::Supervision,
        Axis::SupervisionRl,
    ];

    /// The axis's name in files and on the command line (`rm_volume`, …).
    pub fn name(self) -> &'static str {
        match self {
            Axis::RmVolume => "rm_volume",
            Axis::RmDiversity => "rm_diversity",
            Axis::RmSize => "rm_size",
            Axis::PolicySize => "policy_size",
            Axis::SamplesPerPrompt => "samples_per_prompt",
            Axis::Method => "method",
            Axis::KlBudget => "kl_budget",
            Axis::BestOfN => "best_of_n",
            Axis::LengthControl => "length_control",
            Axis::Supervision => "supervision",
            Axis::SupervisionRl => "supervision_rl",
        }
    }

    /// The axis named `name`; the error lists every name.
    pub fn parse(name: &str) -> Result<Axis> {
        Axis::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown axis {name:?}; the axes are {}",
                    Axis::ALL.map(Axis::name).join(", ")
                ))
            })
    }

    /// Whether the axis's values are numbers on a log scale (plotted so, fitted per doubling).
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Axis::RmVolume | Axis::SamplesPerPrompt | Axis::BestOfN | Axis::Supervision
        )
    }
}

impl std::fmt::Display for Axis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for a in Axis::ALL {
            assert_eq!(Axis::parse(a.name()).unwrap(), a);
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
        }
        let e = Axis::parse("rm_volumes").unwrap_err().to_string();
        assert!(e.contains("rm_volume, rm_diversity"), "{e}");
    }
}
