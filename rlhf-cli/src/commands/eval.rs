//! `rlhf eval`: sample a checkpoint's responses to a prompt file and measure them: the mean
//! reward (with its standard error), the KL to a reference, the length, the share that ended with
//! EOS; every sample written to JSONL.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_core::stats::mean_se;
use rlhf_data::ReadOptions;
use rlhf_data::generation_config::GenerationDefaults;
use rlhf_models::Precision;
use serde_json::json;

use crate::args::TemplateArgs;
use crate::commands::generate::{SamplingArgs, row_tokens, sample_batch};
use crate::data::prompts;
use crate::load;
use crate::reward::Spec;

/// `rlhf eval` options.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A Hugging Face model directory.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The prompts (JSONL/parquet with a prompt field; a verifier reads its reference there).
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// What scores a response (as for `rlhf ppo`).
    #[arg(long, value_name = "SPEC")]
    pub reward: String,
    /// A reference model: report the KL of the samples to it.
    #[arg(long = "ref", value_name = "DIR")]
    pub ref_model: Option<PathBuf>,
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    pub samples_per_prompt: usize,
    /// Evaluate on the first N prompts only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write every sample (prompt, completion, reward, tokens, KL) here, one JSON object per line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Samples, scores and reports.
// One piece, over 80 lines: one pass over the episodes in batches: each batch sampled, scored
// and (with --ref) its KL measured, each sample written to the JSONL and added to the totals
// that the summary then prints.
pub fn run(args: &EvalArgs) -> Result<()> {
    let device = rlhf_core::parse_device(&args.sampling.device)?;
    let ckpt = load::checkpoint(&args.model, &device, args.template.choice())?;
    let reference = match &args.ref_model {
        Some(dir) => Some(load::reference_in(dir, &ckpt.config, &device)?),
        None => None,
    };
    let mut prompts = prompts(&args.prompts, &ReadOptions::default(), &ckpt.format)?;
    if let Some(n) = args.limit {
        prompts.texts.truncate(n);
        prompts.records.truncate(n);
    }
    if prompts.texts.is_empty() {
        bail!("{}: no prompts", args.prompts.display());
    }
    let spec: Spec = args.reward.parse()?;
    let variables = args.template.chat_template_kwargs.as_deref();
    let scorer = spec.build(
        &ckpt.tokenizer,
        &prompts,
        &device,
        (Precision::F32, variables),
    )?;
    // measured at the flags' settings alone, not the checkpoint's generation_config.json
    let sampling = args
        .sampling
        .config(&ckpt.tokenizer, &GenerationDefaults::default())?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.sampling.seed);
    let episodes: Vec<String> = prompts
        .texts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), args.samples_per_prompt.max(1)))
        .collect();
    let mut out = match &args.out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let (mut rewards, mut kls, mut lengths, mut eos) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    for chunk in episodes.chunks(args.sampling.batch_size.max(1)) {
        let (prompt_ids, g) = sample_batch(&ckpt, &ckpt.model, chunk, &sampling, &mut rng)?;
        let responses: Vec<Vec<u32>> = (0..chunk.len()).map(|r| row_tokens(&g, r)).collect();
        let texts = responses
            .iter()
            .map(|r| ckpt.tokenizer.decode_response(r))
            .collect::<rlhf_core::Result<Vec<_>>>()?;
        let prompt_refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let scores = scorer.score(&prompt_refs, &text_refs)?;
        let kl = match &reference {
            Some(r) => rlhf_models::sequence_kl(
                &ckpt.model,
                r,
                &prompt_ids,
                &responses,
                sampling.temperature,
                &device,
            )?,
            None => vec![f64::NAN; chunk.len()],
        };
        for i in 0..chunk.len() {
            if let Some(w) = &mut out {
                writeln!(
                    w,
                    "{}",
                    json!({
                        "prompt": chunk[i],
                        "completion": texts[i],
                        "reward": scores[i],
                        "tokens": responses[i].len(),
                        "stopped_at_eos": g.has_eos[i],
                        "kl": kl[i],
                    })
                )?;
            }
            rewards.push(f64::from(scores[i]));
            kls.push(kl[i]);
            lengths.push(responses[i].len() as f64);
            eos += usize::from(g.has_eos[i]);
        }
    }
    if let Some(mut w) = out {
        w.flush()?;
    }
    let (reward, se) = mean_se(&rewards);
    println!("samples                 {}", rewards.len());
    println!(
        "reward ({})  {reward:.4} ± {se:.4} (standard error)",
        scorer.name()
    );
    if reference.is_some() {
        let (kl, kl_se) = mean_se(&kls);
        println!("kl to the reference     {kl:.4} ± {kl_se:.4} nats per response");
    }
    println!("length                  {:.2} tokens", mean_se(&lengths).0);
    println!(
        "stopped at EOS          {:.3}",
        eos as f64 / rewards.len().max(1) as f64
    );
    Ok(())
}
