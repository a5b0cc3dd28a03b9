//! # rlhf-cli
//!
//! The `rlhf` command: RLHF a Hugging Face checkpoint of your own on your own data, and get a
//! Hugging Face checkpoint back.
//!
//! ```text
//! rlhf sft   --model DIR --data FILE --out DIR          prompt/completion, messages or text
//! rlhf rm    --model DIR --data FILE --out DIR          pairs (BT), K-wise (PL), steps (PRM), labels (ORM)
//! rlhf dpo   --model DIR --data FILE --out DIR --loss sigmoid|cdpo|robust|ipo|hinge|simpo|exo-pref|exo-rw|dpo-rw
//! rlhf kto   --model DIR --data FILE --out DIR          prompt/completion/label (or pairs, unpaired)
//! rlhf online-dpo --model DIR --prompts FILE --reward SPEC --out DIR
//! rlhf ppo|grpo|rloo|reinforce-pp|dapo|gspo|cispo --model DIR --prompts FILE --reward SPEC --out DIR
//! rlhf generate --model DIR --prompt TEXT …     rlhf eval --model DIR --prompts FILE --reward SPEC
//! rlhf check FILE                               rlhf plot RUN_DIR
//! ```
//!
//! Each training command is a thin layer over the library's trainer: [`options`] resolves its
//! options (defaults, `--config FILE.toml`, flags), [`load`] loads the checkpoint, tokenizer and
//! chat template, [`data`] turns the records into tokens, [`reward`] parses `--reward`, the
//! trainer runs with checkpoints in `--out`, and [`output`] writes the Hugging Face directory.
//!
//! ```
//! use rlhf_cli::options::normalise_args;
//! use rlhf_cli::reward::Spec;
//! use rlhf_reward::Combine;
//!
//! // TRL's flag spellings work: `--learning_rate` is `--learning-rate`.
//! let args = normalise_args(["rlhf", "ppo", "--learning_rate=3e-6"].map(Into::into));
//! assert_eq!(args[2], "--learning-rate=3e-6");
//!
//! // `--reward`: the pessimistic ensemble of a reward model and the length-only control.
//! let spec: Spec = "min(rm:out/rm, length:0.05)".parse()?;
//! assert_eq!(
//!     spec,
//!     Spec::Ensemble(Combine::Min, vec![Spec::Model("out/rm".into()), Spec::Length(0.05)])
//! );
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod args;
pub mod commands;
pub mod data;
pub mod load;
pub mod options;
pub mod output;
pub mod plot;
pub mod reencode;
pub mod reward;

/// Prints the libraries' `tracing` events (progress, warnings, the memory estimate) on stderr,
/// those `filter` lets through (an `EnvFilter` directive such as `info`, or
/// `warn,rlhf_bench=info`); `RUST_LOG` overrides it. A second call keeps the first subscriber.
pub fn init_logging(filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
