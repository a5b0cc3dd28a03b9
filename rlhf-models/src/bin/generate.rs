//! `generate`: sample continuations from a Hugging Face checkpoint directory.
//!
//! ```text
//! generate --model DIR (--prompt TEXT)… | --prompts FILE [--max-new-tokens N] [--temperature T]
//!          [--top-k K] [--top-p P] [--seed S] [--device D] [--batch-size B] [--eos TOKEN] [--json]
//! ```
//!
//! `DIR` holds `config.json`, `model.safetensors` (or a sharded index) and `tokenizer.json`.
//! `--prompts` takes a text file (one prompt per line) or a JSONL/parquet prompt file (field
//! `prompt`; chat messages are rendered with ChatML). Temperature 0 is greedy decoding. With
//! `--json`, one JSON object per prompt: `prompt`, `prompt_ids`, `completion`, `completion_ids`,
//! `logprobs`, `stopped_at_eos`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_data::{ChatTemplate, PromptRecord, ReadOptions, Tokenizer, read_records};
use rlhf_models::{SamplingConfig, generate, load_pretrained};
use serde_json::json;

const USAGE: &str = "usage: generate --model DIR (--prompt TEXT)... | --prompts FILE
       [--max-new-tokens 64] [--temperature 0.7] [--top-k K] [--top-p P] [--seed 0]
       [--device flex] [--batch-size 8] [--eos TOKEN] [--json]";

struct Options {
    model: PathBuf,
    prompts: Vec<String>,
    sampling: SamplingConfig,
    seed: u64,
    device: String,
    batch_size: usize,
    eos: Option<String>,
    json: bool,
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, name: &str) -> Result<&'a String, String> {
    it.next().ok_or_else(|| format!("{name} needs a value"))
}

fn number<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name}: `{s}` is not a valid number"))
}

fn read_prompt_file(path: &Path) -> Result<Vec<String>, String> {
    let structured = ["jsonl", "json", "parquet", "gz"]
        .iter()
        .any(|e| path.extension().is_some_and(|x| x == *e));
    if structured {
        let loaded = read_records::<PromptRecord>(path, &ReadOptions::default())
            .map_err(|e| e.to_string())?;
        let chat = ChatTemplate::chatml();
        Ok(loaded
            .records
            .iter()
            .map(|r| chat.prompt(&r.prompt))
            .collect())
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        model: PathBuf::new(),
        prompts: Vec::new(),
        sampling: SamplingConfig {
            max_new_tokens: 64,
            ..SamplingConfig::default()
        },
        seed: 0,
        device: "flex".into(),
        batch_size: 8,
        eos: None,
        json: false,
    };
    let mut model = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(value(&mut it, a)?)),
            "--prompt" => o.prompts.push(value(&mut it, a)?.clone()),
            "--prompts" => o
                .prompts
                .extend(read_prompt_file(Path::new(value(&mut it, a)?))?),
            "--max-new-tokens" => o.sampling.max_new_tokens = number(value(&mut it, a)?, a)?,
            "--temperature" => o.sampling.temperature = number(value(&mut it, a)?, a)?,
            "--top-k" => o.sampling.top_k = Some(number(value(&mut it, a)?, a)?),
            "--top-p" => o.sampling.top_p = Some(number(value(&mut it, a)?, a)?),
            "--seed" => o.seed = number(value(&mut it, a)?, a)?,
            "--device" => o.device = value(&mut it, a)?.clone(),
            "--batch-size" => o.batch_size = number::<usize>(value(&mut it, a)?, a)?.max(1),
            "--eos" => o.eos = Some(value(&mut it, a)?.clone()),
            "--json" => o.json = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    o.model = model.ok_or("--model is required")?;
    if o.prompts.is_empty() {
        return Err("give at least one --prompt or a --prompts file".into());
    }
    if o.sampling.temperature.is_nan() || o.sampling.temperature < 0.0 {
        return Err("--temperature must be ≥ 0".into());
    }
    if o.sampling.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err("--top-p must be in (0, 1]".into());
    }
    Ok(o)
}

fn run(o: Options) -> Result<(), String> {
    let device = rlhf_core::parse_device(&o.device).map_err(|e| e.to_string())?;
    let tokenizer = Tokenizer::from_file(&o.model.join("tokenizer.json"), o.eos.as_deref())
        .map_err(|e| e.to_string())?;
    let (config, model) = load_pretrained(&o.model, &device).map_err(|e| e.to_string())?;
    let sampling = SamplingConfig {
        eos_id: Some(tokenizer.eos_id()),
        ..o.sampling
    };
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    for chunk in o.prompts.chunks(o.batch_size) {
        let encoded = chunk
            .iter()
            .map(|p| tokenizer.encode(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if let Some(bad) = encoded
            .iter()
            .flatten()
            .find(|&&t| t as usize >= config.vocab_size)
        {
            return Err(format!(
                "token id {bad} is outside the model's vocabulary of {}: tokenizer and model do not match",
                config.vocab_size
            ));
        }
        let width = encoded.iter().map(Vec::len).max().unwrap_or(0).max(1);
        // Left padding; the pad id is any valid row, since padded keys are never attended to.
        let mut ids = Vec::with_capacity(chunk.len() * width);
        let mut mask = Vec::with_capacity(chunk.len() * width);
        for e in &encoded {
            ids.extend(std::iter::repeat_n(0, width - e.len()).chain(e.iter().copied()));
            mask.extend(std::iter::repeat_n(0u8, width - e.len()).chain(e.iter().map(|_| 1)));
        }
        let g = generate(&model, &ids, &mask, chunk.len(), &sampling, &mut rng)
            .map_err(|e| e.to_string())?;
        for (r, prompt) in chunk.iter().enumerate() {
            let row = r * g.new_len..(r + 1) * g.new_len;
            let kept: Vec<usize> = row.clone().filter(|&i| g.mask[i] == 1).collect();
            let ids: Vec<u32> = kept.iter().map(|&i| g.tokens[i]).collect();
            let text_ids: Vec<u32> = ids
                .iter()
                .copied()
                .filter(|&t| t != tokenizer.eos_id())
                .collect();
            let completion = tokenizer.decode(&text_ids).map_err(|e| e.to_string())?;
            if o.json {
                println!(
                    "{}",
                    json!({
                        "prompt": prompt,
                        "prompt_ids": encoded[r],
                        "completion": completion,
                        "completion_ids": ids,
                        "logprobs": kept.iter().map(|&i| g.logprobs[i]).collect::<Vec<_>>(),
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

fn main() -> ExitCode {
    rlhf_core::train::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("generate: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("generate: {e}");
            ExitCode::from(1)
        }
    }
}
