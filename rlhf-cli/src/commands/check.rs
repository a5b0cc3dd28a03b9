//! `rlhf check`: read a data file as the trainers would, before training on it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use rlhf_data::{Kind, ReadOptions, Tokenizer, detect_kind, inspect};

use crate::args::read_options;

/// `rlhf check` options.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// JSONL (optionally .gz) or parquet.
    pub file: PathBuf,
    /// preference, sft, prompt, kwise, steps or unpaired (default: read off the first record).
    #[arg(long)]
    pub kind: Option<Kind>,
    /// Count and report bad records instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Errors to report.
    #[arg(long, default_value_t = 10)]
    pub max_errors: usize,
    /// A model directory or tokenizer.json: also report prompt and response lengths in tokens.
    #[arg(long, value_name = "DIR|FILE")]
    pub tokenizer: Option<PathBuf>,
    /// The prompt field, when the file names it differently.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// The field of a plain-text record, when the file names it differently
    /// [TRL: --dataset_text_field].
    #[arg(long, default_value = "text")]
    pub dataset_text_field: String,
}

/// Prints what the read found; exits with 1 when a record is bad (unless `--skip-bad`).
pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let mut opts = ReadOptions {
        max_errors: args.max_errors,
        ..read_options(&args.prompt_field, args.skip_bad)
    };
    opts.fields.text = args.dataset_text_field.clone();
    let kind = match args.kind {
        Some(k) => k,
        None => detect_kind(&args.file, &opts)?,
    };
    let tokenizer = match &args.tokenizer {
        Some(p) if p.is_dir() => Some(Tokenizer::from_dir(p)?),
        Some(p) => Some(Tokenizer::from_file(p, None)?),
        None => None,
    };
    let found = inspect(&args.file, kind, &opts, tokenizer.as_ref())?;
    print!("{}", found.text);
    Ok(if found.clean || args.skip_bad {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
