//! One module per subcommand; what the training commands share is here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use rlhf_core::train::fs::checksum;
use rlhf_core::train::{Replicas, RunOptions};
use rlhf_data::{ChatFormat, Tokenizer};
use rlhf_dpo::RefCache;
use rlhf_models::{CausalLm, TransformerConfig};
use rlhf_reward::ChatReading;

use crate::args::{DataArgs, FrozenArgs, LoraArgs, ModelArgs, TrainArgs};
use crate::data::Encoder;
use crate::load::{self, Checkpoint};
use crate::output;
use crate::reward::Spec;

pub mod check;
pub mod distill;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod kto;
pub mod online_dpo;
pub mod onpolicy;
pub mod plot;
pub mod rm;
#[cfg(feature = "remote")]
pub mod serve;
pub mod sft;

/// The prompt file and the parsed reward of the commands that sample and score (`--prompts`,
/// `--reward`, both required, and `--reward-weights`).
pub fn prompts_and_reward<'a>(
    prompts: Option<&'a Path>,
    reward: Option<&str>,
    weights: Option<&[f32]>,
) -> Result<(&'a Path, Spec)> {
    let Some(prompt_file) = prompts else {
        bail!("--prompts FILE is required (or `prompts` in the config file)");
    };
    let Some(reward) = reward else {
        bail!(
            "--reward SPEC is required: a reward-model directory, exact-match[:FIELD], regex:PATTERN, length[:SCALE], judge:DIR or a combination"
        );
    };
    let spec: Spec = reward.parse()?;
    Ok((
        prompt_file,
        match weights {
            Some(w) => spec.weighted(w)?,
            None => spec.named(),
        },
    ))
}

/// The directory of the reference log-prob cache of a run in `out` (`--ref-cache`):
/// `OUT/ref-cache/<checksum of the reference's config.json>`. The cache's own key covers the
/// reference's weights, the data and how they are read; the directory adds the architecture's
/// settings that no weight carries (a rotary base, a norm's ε), so editing them in the
/// reference's `config.json` and running again computes the log-probs anew.
pub fn ref_cache_dir(out: &Path, reference: &Path) -> Result<PathBuf> {
    let config = reference.join("config.json");
    let bytes = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    Ok(out
        .join("ref-cache")
        .join(format!("{:016x}", checksum(&bytes))))
}

/// The value of the metric `name` among a report's last metrics (NaN when it was not logged).
pub fn last_metric(last: &[(&str, f64)], name: &str) -> f64 {
    rlhf_core::train::metric(last, name).unwrap_or(f64::NAN)
}

/// What every training command starts with: the checkpoint on the training device and the
/// output directory.
pub struct Prepared {
    /// The checkpoint's directory.
    pub dir: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// The training (autodiff) device.
    pub device: Device,
    /// The data-parallel replicas (`--devices`).
    pub replicas: Replicas,
    /// The starting checkpoint's configuration.
    pub config: TransformerConfig,
    /// The starting checkpoint's tokenizer.
    pub tokenizer: Tokenizer,
    /// The starting checkpoint's chat format.
    pub format: ChatFormat,
    /// The starting model, until the trained model is made from it (it is not held beside it).
    start: Option<CausalLm>,
}

impl Prepared {
    /// Loads `--model` onto `--device` (with autodiff) and checks `--out`.
    pub fn new(model: &ModelArgs, data: &DataArgs) -> Result<Self> {
        let Some(dir) = model.model.clone() else {
            bail!("--model DIR is required (or `model` in the config file)");
        };
        let Some(out) = model.out.clone() else {
            bail!("--out DIR is required (or `out` in the config file)");
        };
        crate::args::refuse_overwrite(&dir, &out)?;
        let device = model.training_device()?;
        let Checkpoint {
            config,
            model: start,
            tokenizer,
            format,
        } = load::checkpoint(&dir, &device, data.template())?;
        Ok(Prepared {
            dir,
            out,
            device,
            replicas: model.replicas(start.dropout() > 0.0)?,
            config,
            tokenizer,
            format,
            start: Some(start),
        })
    }
}

impl Prepared {
    /// The encoder of the checkpoint's tokenizer and chat format, cutting to `data`'s limits.
    pub fn encoder(&self, data: &DataArgs) -> Result<Encoder<'_>> {
        let (max_prompt, max_length) = data.limits()?;
        Ok(Encoder {
            tokenizer: &self.tokenizer,
            format: &self.format,
            max_prompt,
            max_length,
            chat_reading: ChatReading::TurnEnd,
        })
    }

    /// Checkpoints, metrics and progress in the output directory, on the replicas.
    pub fn run_options(&self, train: &TrainArgs) -> RunOptions {
        RunOptions {
            replicas: self.replicas.clone(),
            ..train.run_options(&self.out)
        }
    }

    /// The starting model as its trainer gets it, with LoRA when asked ([`load::policy`]).
    pub fn policy(&mut self, lora: &LoraArgs, seed: u64) -> Result<CausalLm> {
        let start = self.take_start()?;
        load::policy(start, &self.config, lora, seed)
    }

    /// The reference log-prob cache of `--ref-cache` (`on`): in [`ref_cache_dir`] of the
    /// reference, `ref_model` or the starting model; off, a cache that keeps nothing.
    pub fn ref_cache(&self, on: bool, ref_model: Option<&Path>) -> Result<RefCache> {
        let dir = on
            .then(|| ref_cache_dir(&self.out, ref_model.unwrap_or(&self.dir)))
            .transpose()?;
        Ok(RefCache::new(dir.as_deref()))
    }

    /// The policy as its trainer gets it ([`Self::policy`]), then the frozen reference: `--ref`,
    /// or the starting model, in `frozen`'s dtype ([`load::reference`]).
    pub fn policy_and_reference(
        &mut self,
        lora: &LoraArgs,
        seed: u64,
        reference: Option<&Path>,
        frozen: &FrozenArgs,
    ) -> Result<(CausalLm, CausalLm)> {
        let start = self.take_start()?;
        let policy = load::policy(start.clone(), &self.config, lora, seed)?;
        let reference = load::reference(
            reference,
            start,
            &self.config,
            frozen.frozen_dtype,
            lora,
            &self.device,
        )?;
        Ok((policy, reference))
    }

    /// The starting model, handed out once.
    fn take_start(&mut self) -> Result<CausalLm> {
        self.start
            .take()
            .context("the starting model was already handed out")
    }

    /// Writes the trained `model` to the output directory ([`output::save_causal`]).
    pub fn save(&self, model: &CausalLm, lora: &LoraArgs) -> Result<()> {
        output::save_causal(
            &self.out,
            model,
            &self.config,
            &self.tokenizer,
            &self.dir,
            lora,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two references whose `config.json` differ (here in the rotary base alone) get two cache
    /// directories; the same file gets the same one.
    #[test]
    fn the_ref_cache_directory_follows_the_reference_config() {
        let tmp = tempfile::tempdir().unwrap();
        let reference = |name: &str, theta: u32| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let config = format!("{{\"model_type\": \"llama\", \"rope_theta\": {theta}}}");
            std::fs::write(dir.join("config.json"), config).unwrap();
            dir
        };
        let out = tmp.path().join("out");
        let dir = |r: &Path| ref_cache_dir(&out, r).unwrap();
        let (a, same, other) = (
            reference("a", 10000),
            reference("b", 10000),
            reference("c", 500000),
        );
        assert_eq!(dir(&a), dir(&same));
        assert_ne!(dir(&a), dir(&other));
        assert!(dir(&a).starts_with(out.join("ref-cache")));
        assert!(ref_cache_dir(&out, &tmp.path().join("missing")).is_err());
    }
}
