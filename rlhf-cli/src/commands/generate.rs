//! `rlhf generate`: sample continuations of prompts from a checkpoint.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_data::{ReadOptions, Tokenizer, Turns, collate};
use rlhf_models::{CausalLm, Generation, SamplingConfig, generate};
use serde_json::json;

use crate::args::TemplateArgs;
use crate::args::TokenFilterArgs;
use crate::data::prompts;
use crate::load::{self, Checkpoint};

/// How to sample (shared with `rlhf eval`).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
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
    /// The library's sampling settings, stopping at `tokenizer`'s EOS and stop ids.
    pub fn config(&self, tokenizer: &Tokenizer) -> Result<SamplingConfig> {
        let sampling = self.filters.apply(SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            ..SamplingConfig::default()
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
    let sampling = args.sampling.config(&ckpt.tokenizer)?;
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
