//! `rlhf-data`: look at a data file before training on it.
//!
//! ```text
//! rlhf-data check FILE [--kind KIND] [--skip-bad] [--max-errors N] [--prompt-key K …]
//! rlhf-data stats FILE [--kind KIND] --tokenizer tokenizer.json [--prompt-key K …]
//! rlhf-data export-task tldr-synth|arith-steps --out DIR [--n N] [--seed S] [--agreement 0.73]
//! ```
//!
//! `check` exits with status 1 when a record is bad (2 on usage errors), unless `--skip-bad`.
//! `rlhf check` is the same check.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rlhf_data::tasks::{export_task, task_by_name};
use rlhf_data::{FieldNames, Kind, ReadOptions, Tokenizer, detect_kind, inspect};

/// Look at an RLHF data file before training on it.
#[derive(Parser)]
#[command(name = "rlhf-data", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read every record; report how many were read, kept and rejected, and where the bad ones are.
    Check {
        #[command(flatten)]
        read: ReadArgs,
    },
    /// The check, then token lengths of prompts and responses (percentiles).
    Stats {
        #[command(flatten)]
        read: ReadArgs,
        /// The tokenizer.json to count tokens with.
        #[arg(long)]
        tokenizer: PathBuf,
    },
    /// Write a gold-oracle task's data as files (SFT, preferences, prompts, references, tokenizer).
    ExportTask {
        /// `tldr-synth` or `arith-steps`.
        name: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Records per file.
        #[arg(long, default_value_t = 1000)]
        n: u64,
        /// Seed of the generators.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The simulated labeller's agreement with the gold order.
        #[arg(long, default_value_t = 0.73)]
        agreement: f64,
    },
}

/// Reading a file: its kind, what to do with bad records, and the field names.
#[derive(Args)]
struct ReadArgs {
    /// JSONL (optionally gzip-compressed) or parquet.
    file: PathBuf,
    /// preference, sft, prompt, kwise, steps or unpaired; by default read off the first record.
    #[arg(long)]
    kind: Option<Kind>,
    /// Count and report bad records instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Errors to report.
    #[arg(long, default_value_t = 10)]
    max_errors: usize,
    #[command(flatten)]
    fields: FieldArgs,
}

/// The field names, when the file names them differently (TRL's `*_key` options).
#[derive(Args)]
struct FieldArgs {
    /// The prompt field.
    #[arg(long, default_value = "prompt")]
    prompt_key: String,
    /// The chosen response field.
    #[arg(long, default_value = "chosen")]
    chosen_key: String,
    /// The rejected response field.
    #[arg(long, default_value = "rejected")]
    rejected_key: String,
    /// The completion field.
    #[arg(long, default_value = "completion")]
    completion_key: String,
    /// The conversation field.
    #[arg(long, default_value = "messages")]
    messages_key: String,
    /// The plain-text field.
    #[arg(long, default_value = "text")]
    text_key: String,
    /// The K-wise responses (or steps) field.
    #[arg(long, default_value = "completions")]
    completions_key: String,
    /// The K-wise rewards field.
    #[arg(long, default_value = "rewards")]
    rewards_key: String,
    /// The step labels field.
    #[arg(long, default_value = "labels")]
    labels_key: String,
    /// The unpaired label field.
    #[arg(long, default_value = "label")]
    label_key: String,
}

impl FieldArgs {
    fn names(&self) -> FieldNames {
        FieldNames {
            prompt: self.prompt_key.clone(),
            chosen: self.chosen_key.clone(),
            rejected: self.rejected_key.clone(),
            completion: self.completion_key.clone(),
            messages: self.messages_key.clone(),
            text: self.text_key.clone(),
            completions: self.completions_key.clone(),
            rewards: self.rewards_key.clone(),
            labels: self.labels_key.clone(),
            label: self.label_key.clone(),
            ..FieldNames::default()
        }
    }
}

fn look(read: &ReadArgs, tokenizer: Option<&Tokenizer>) -> rlhf_base::Result<ExitCode> {
    let opts = ReadOptions {
        fields: read.fields.names(),
        skip_bad: read.skip_bad,
        max_errors: read.max_errors,
        ..ReadOptions::default()
    };
    let kind = match read.kind {
        Some(k) => k,
        None => detect_kind(&read.file, &opts)?,
    };
    let found = inspect(&read.file, kind, &opts, tokenizer)?;
    print!("{}", found.text);
    Ok(if found.clean || read.skip_bad {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    rlhf_base::tune_allocator();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Check { read } => look(read, None),
        Command::Stats { read, tokenizer } => {
            Tokenizer::from_file(tokenizer, None).and_then(|tok| look(read, Some(&tok)))
        }
        Command::ExportTask {
            name,
            out,
            n,
            seed,
            agreement,
        } => match task_by_name(name) {
            None => Err(rlhf_base::Error::Config(format!(
                "unknown task `{name}`: tldr-synth or arith-steps"
            ))),
            Some(task) => export_task(task.as_ref(), out, *n, *seed, *agreement).map(|summary| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).expect("a summary serialises")
                );
                ExitCode::SUCCESS
            }),
        },
    };
    result.unwrap_or_else(|e| {
        eprintln!("rlhf-data: {e}");
        ExitCode::from(1)
    })
}
