//! `rlhf generate`: sample continuations of prompts from a checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_data::generation_config::{GenerationDefaults, generation_defaults};
use rlhf_data::{ReadOptions, Tokenizer, Turns, collate};
use rlhf_models::{CausalLm, Generation, SamplingConfig, generate};
use serde_json::json;

use crate::args::TemplateArgs;
use crate::args::TokenFilterArgs;
use crate::data::prompts;
use crate::load::{self, Checkpoint};

/// How to sample (shared with `rlhf eval`). `rlhf generate` starts, as `transformers`' `generate`
/// does, from the checkpoint's `generation_config.json`: a setting it holds is used where no flag
/// is given (`do_sample: false` is greedy decoding); what neither sets takes the defaults below.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Tokens to generate at most (default 64).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Softmax temperature; 0 is greedy decoding (default 0.7).
    #[arg(long)]
    pub temperature: Option<f32>,
    #[command(flatten)]
    pub filters: TokenFilterArgs,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// flex (CPU), wgpu, wgpu:cpu, vulkan, cuda:N.
    #[arg(long, default_value = "flex")]
    pub device: String,
}

impl SamplingArgs {
    /// The library's sampling settings, stopping at `tokenizer`'s EOS and stop ids: each flag
    /// given, else what `file` (a checkpoint's `generation_config.json`) sets, else the default.
    /// With `do_sample: false` in the file, its temperature and token filters are not read and
    /// the temperature is 0 (greedy), as `transformers` decodes; its repetition penalty still is.
    pub fn config(
        &self,
        tokenizer: &Tokenizer,
        file: &GenerationDefaults,
    ) -> Result<SamplingConfig> {
        let sampled = file.do_sample != Some(false);
        let when_sampled = |v: Option<f32>| v.filter(|_| sampled);
        // the file's settings, which the flags given then replace
        let from_file = SamplingConfig {
            max_new_tokens: file.max_new_tokens.unwrap_or(64),
            temperature: if sampled {
                file.temperature.unwrap_or(0.7)
            } else {
                0.0
            },
            // transformers' 0 turns top-k and min-p off
            top_k: file.top_k.filter(|&k| sampled && k > 0),
            top_p: when_sampled(file.top_p),
            min_p: when_sampled(file.min_p).filter(|&m| m > 0.0),
            repetition_penalty: file.repetition_penalty,
            ..SamplingConfig::default()
        };
        let sampling = self.filters.apply(SamplingConfig {
            max_new_tokens: self.max_new_tokens.unwrap_or(from_file.max_new_tokens),
            temperature: self.temperature.unwrap_or(from_file.temperature),
            ..from_file
        });
        sampling.check()?;
        Ok(sampling.ending_as(tokenizer))
    }
}

/// `rlhf generate` options.
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A Hugging Face model directory.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// A prompt (repeat for several).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A prompt file: JSONL/parquet with a prompt field (messages are rendered with the chat
    /// template), or plain text with one prompt per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Render each `--prompt` as a user message through the chat template.
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// One JSON object per prompt: prompt, prompt_ids, completion, completion_ids, logprobs,
    /// stopped_at_eos.
    #[arg(long)]
    pub json: bool,
}

/// One batch of prompt texts sampled: the prompts' tokens and the generation.
pub fn sample_batch(
    ckpt: &Checkpoint,
    model: &CausalLm,
    texts: &[String],
    sampling: &SamplingConfig,
    rng: &mut ChaCha8Rng,
) -> Result<(Vec<Vec<u32>>, Generation)> {
    let encoded = texts
        .iter()
        .map(|p| ckpt.tokenizer.encode_start(p))
        .collect::<rlhf_core::Result<Vec<_>>>()?;
    let pairs: Vec<(&[u32], &[u32])> = encoded.iter().map(|p| (p.as_slice(), &[][..])).collect();
    let (ids, mask) = collate(&pairs, ckpt.tokenizer.pad_id(), None).prompts();
    let g = generate(model, &ids, &mask, texts.len(), sampling, rng)?;
    Ok((encoded, g))
}

/// The kept tokens of row `r` of a generation (its end, EOS or a stop id, included when the row
/// stopped there).
pub fn row_tokens(g: &Generation, r: usize) -> Vec<u32> {
    (r * g.new_len..(r + 1) * g.new_len)
        .filter(|&i| g.mask[i] == 1)
        .map(|i| g.tokens[i])
        .collect()
}

/// `rlhf generate`'s sampling settings: the flags, then the checkpoint's
/// `generation_config.json` ([`SamplingArgs::config`]), logged as they are used.
fn sampling_of(args: &GenerateArgs, tokenizer: &Tokenizer) -> Result<SamplingConfig> {
    let sampling = args
        .sampling
        .config(tokenizer, &generation_defaults(&args.model)?)
        .with_context(|| {
            format!(
                "the sampling settings: the flags, then {}",
                args.model.join("generation_config.json").display()
            )
        })?;
    tracing::info!(
        "sampling: temperature {}, top-k {:?}, top-p {:?}, min-p {:?}, repetition penalty {:?}, \
         at most {} new tokens",
        sampling.temperature,
        sampling.top_k,
        sampling.top_p,
        sampling.min_p,
        sampling.repetition_penalty,
        sampling.max_new_tokens
    );
    Ok(sampling)
}

/// Samples and prints.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let device = rlhf_core::parse_device(&args.sampling.device)?;
    let ckpt = load::checkpoint(&args.model, &device, args.template.choice())?;
    let mut texts = Vec::new();
    for p in &args.prompt {
        texts.push(if args.chat {
            ckpt.format
                .prompt(&Turns::Messages(vec![rlhf_data::Message {
                    role: "user".into(),
                    content: p.clone(),
                }]))?
        } else {
            p.clone()
        });
    }
    if let Some(file) = &args.prompts {
        let structured = ["jsonl", "json", "parquet", "gz"]
            .iter()
            .any(|e| file.extension().is_some_and(|x| x == *e));
        if structured {
            texts.extend(prompts(file, &ReadOptions::default(), &ckpt.format)?.texts);
        } else {
            let text = std::fs::read_to_string(file)?;
            texts.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            );
        }
    }
    if texts.is_empty() {
        bail!("give at least one --prompt or a --prompts file");
    }
    let sampling = sampling_of(args, &ckpt.tokenizer)?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.sampling.seed);
    for chunk in texts.chunks(args.sampling.batch_size.max(1)) {
        let (encoded, g) = sample_batch(&ckpt, &ckpt.model, chunk, &sampling, &mut rng)?;
        for (r, prompt) in chunk.iter().enumerate() {
            let ids = row_tokens(&g, r);
            // the text without the token that ended the row (EOS or a stop id)
            let text_ids = match ids.split_last() {
                Some((_, body)) if g.has_eos[r] => body,
                _ => &ids[..],
            };
            let completion = ckpt.tokenizer.decode(text_ids)?;
            if args.json {
                let logprobs: Vec<f32> = (r * g.new_len..(r + 1) * g.new_len)
                    .filter(|&i| g.mask[i] == 1)
                    .map(|i| g.logprobs[i])
                    .collect();
                println!(
                    "{}",
                    json!({
                        "prompt": prompt,
                        "prompt_ids": encoded[r],
                        "completion": completion,
                        "completion_ids": ids,
                        "logprobs": logprobs,
                        "stopped_at_eos": g.has_eos[r],
                    })
                );
            } else {
                println!("### {prompt}\n{completion}\n");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapped {
        #[command(flatten)]
        sampling: SamplingArgs,
    }

    /// Each setting is the flag's, else the checkpoint's `generation_config.json`'s, else the
    /// default; `do_sample: false` is greedy decoding, its filters unread and its repetition
    /// penalty kept; a top-k or min-p of 0 is off, as in transformers.
    #[test]
    fn a_flag_then_the_generation_config_then_the_default() {
        let tokenizer = Tokenizer::from_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../rlhf-models/tests/fixtures/hf/tiny-llama"),
        )
        .unwrap();
        let resolve = |flags: &[&str], file: &GenerationDefaults| {
            let args = Wrapped::try_parse_from(std::iter::once("x").chain(flags.iter().copied()))
                .unwrap()
                .sampling;
            let c = args.config(&tokenizer, file).unwrap();
            (
                c.temperature,
                c.top_k,
                c.top_p,
                c.min_p,
                c.repetition_penalty,
                c.max_new_tokens,
            )
        };
        let none = GenerationDefaults::default();
        assert_eq!(resolve(&[], &none), (0.7, None, None, None, None, 64));
        let llama = GenerationDefaults {
            do_sample: Some(true),
            temperature: Some(0.6),
            top_p: Some(0.9),
            top_k: Some(0),
            min_p: Some(0.0),
            repetition_penalty: Some(1.1),
            max_new_tokens: Some(100),
        };
        assert_eq!(
            resolve(&[], &llama),
            (0.6, None, Some(0.9), None, Some(1.1), 100)
        );
        assert_eq!(
            resolve(
                &[
                    "--temperature",
                    "1",
                    "--top-p",
                    "0.5",
                    "--max-new-tokens",
                    "8"
                ],
                &llama
            ),
            (1.0, None, Some(0.5), None, Some(1.1), 8)
        );
        let greedy = GenerationDefaults {
            do_sample: Some(false),
            top_k: Some(5),
            ..llama.clone()
        };
        assert_eq!(
            resolve(&[], &greedy),
            (0.0, None, None, None, Some(1.1), 100)
        );
        assert_eq!(
            resolve(&["--temperature", "0.9"], &greedy).0,
            0.9,
            "a flag still samples"
        );
    }
}
