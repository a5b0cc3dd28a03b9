//! `cargo xtask <task>`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Orchestration only: every task spawns cargo (or bash) and fails loudly with the exit status of
//! the first command that failed.

use std::io::Write;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// The project's automation: `cargo xtask <task>`.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Subcommand)]
enum Task {
    /// The scaling study (default preset `quick`, offline, on the CPU): points, summary.csv,
    /// plots and report.md under target/bench-scaling/<preset>; a rerun skips finished points.
    /// Options go to `rlhf-bench sweep` (see `cargo xtask bench-scaling --help`).
    #[command(disable_help_flag = true)]
    BenchScaling {
        /// `--preset smoke|quick|full`, `--out DIR`, `--axes a,b`, `--seeds N|0,1`, `--jobs J`,
        /// `--device D`, …
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Throughput, MFU against the measured matmul peak and peak memory of SFT, RM, DPO (with
    /// and without the reference cache), generation, RLOO and PPO at two sizes → target/bench-perf/perf.json; with --peer, TRL on
    /// the same shapes, alternating, and the ratio. Options go to `rlhf-perf`.
    #[command(disable_help_flag = true)]
    BenchPerf {
        /// `--sizes small,25m`, `--workloads sft,…`, `--repeats N`, `--peer PYTHON`,
        /// `--device tch`, `--out FILE`, …
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every check of .ci/run on this machine (skips its apt install step).
    Ci,
    /// Check with PyTorch + transformers that transformers loads what this project writes:
    /// `save_pretrained` of every fixture, and the output directory of every `rlhf` training
    /// command (logits and scores within 1e-4); `--regenerate` first rewrites the fixtures.
    Fixtures {
        /// A Python with torch and transformers.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Rewrite rlhf-models' fixtures (make_hf_fixtures.py, make_family_fixtures.py,
        /// make_cli_fixtures.py) first.
        #[arg(long)]
        regenerate: bool,
    },
    /// Type-check the CUDA backend offline (DOCS_RS=1 cargo check --workspace --lib --features
    /// rlhf-core/cuda).
    CheckCuda,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        None => {
            use clap::CommandFactory;
            // A reader that stops early (`| head`) closes the pipe; that is not an error.
            let _ = writeln!(std::io::stdout(), "{}", Cli::command().render_help());
            Ok(())
        }
        Some(Task::Ci) => run(Command::new("bash")
            .arg(".ci/run")
            .env("RLHF_CI_SKIP_INSTALL", "1")),
        Some(Task::CheckCuda) => check_cuda(),
        Some(Task::BenchScaling { args }) => run_bench_binary("rlhf-bench", &["sweep"], &args),
        Some(Task::BenchPerf { args }) => bench_perf(&args),
        Some(Task::Fixtures { python, regenerate }) => fixtures(&python, regenerate),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// burn 0.22's CUDA runtime downloads an LLVM bundle in its build script, which cannot work
/// offline; with `DOCS_RS=1` that build script skips the download (as it does on docs.rs), so
/// the CUDA path can at least be type-checked. Nothing is linked or run.
fn check_cuda() -> Result<()> {
    run(Command::new(cargo())
        .args([
            "check",
            "--workspace",
            "--lib",
            "--features",
            "rlhf-core/cuda",
        ])
        .env("DOCS_RS", "1"))
}

/// With `regenerate`, rewrites `rlhf-models/tests/fixtures/hf/` with the given Python (which
/// needs `torch` and `transformers`; the tests themselves never run Python). Then round-trips
/// every parity fixture through `save_pretrained` and has `transformers` load the result; then
/// runs every training command of `rlhf` briefly on the command-line fixtures (and DPO with
/// LoRA, and with DoRA) and has `transformers` load each output directory, comparing its logits
/// (or scores) with ours; a LoRA or DoRA run's PEFT adapter files are loaded with `peft` on the
/// base model too.
fn fixtures(python: &str, regenerate: bool) -> Result<()> {
    let out = "rlhf-models/tests/fixtures/hf";
    if regenerate {
        run(Command::new(python).args(["xtask/fixtures/make_hf_fixtures.py", out]))?;
        run(Command::new(python).args(["xtask/fixtures/make_family_fixtures.py", out]))?;
        run(Command::new(python).args(["xtask/fixtures/make_cli_fixtures.py", "."]))?;
    }
    let tmp = std::env::temp_dir().join(format!("rlhf-export-check-{}", std::process::id()));
    for name in [
        "tiny-neox",
        "tiny-llama",
        "tiny-qwen2",
        "tiny-neox-sequential",
        "tiny-llama3",
        "tiny-llama-linear",
        "tiny-llama-dynamic",
        "tiny-qwen3",
        "tiny-mistral",
        "tiny-phi3",
        "tiny-gpt2",
    ] {
        let fixture = format!("{out}/{name}");
        let exported = tmp.join(name).display().to_string();
        run(Command::new(cargo()).args([
            "run",
            "--quiet",
            "-p",
            "rlhf-cli",
            "--example",
            "export_pretrained",
            "--",
            &fixture,
            &exported,
        ]))?;
        run(Command::new(python).args([
            "xtask/fixtures/check_export.py",
            &exported,
            &format!("{fixture}/parity.json"),
        ]))?;
    }
    run(Command::new(cargo()).args([
        "build",
        "--quiet",
        "-p",
        "rlhf-cli",
        "--bin",
        "rlhf",
        "--example",
        "logits",
    ]))?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let rlhf = format!("{target}/debug/rlhf");
    let logits = format!("{target}/debug/examples/logits");
    let tldr = "rlhf-cli/data/tldr";
    let mut pairs = Vec::new();
    for model in ["tiny-pythia", "tiny-qwen2-chat", "tiny-llama3-chat"] {
        let base = format!("{out}/{model}");
        let dir = |cmd: &str| tmp.join(format!("{model}-{cmd}")).display().to_string();
        let common = ["--learning-rate", "1e-3", "--max-length", "256", "--quiet"];
        let commands: Vec<(&str, Vec<String>, bool)> = vec![
            (
                "sft",
                vec!["--data".into(), format!("{tldr}/sft.jsonl")],
                false,
            ),
            (
                "rm",
                vec!["--data".into(), format!("{tldr}/preference.jsonl")],
                true,
            ),
            (
                "dpo",
                vec!["--data".into(), format!("{tldr}/preference.jsonl")],
                false,
            ),
        ];
        for (cmd, extra, scalar) in commands {
            let mut c = Command::new(&rlhf);
            c.args([cmd, "--model", &base, "--out", &dir(cmd)])
                .args(&extra)
                .args(common);
            run(&mut c)?;
            pairs.push((dir(cmd), scalar));
        }
        // LoRA and DoRA: the merged output, and PEFT's adapter files on the base (checked below)
        let targets = if model == "tiny-pythia" {
            "query_key_value"
        } else {
            "all-linear"
        };
        for (name, dora) in [("dpo-lora", false), ("dpo-dora", true)] {
            adapter_run(&rlhf, &base, &dir(name), targets, "256", dora)?;
            pairs.push((dir(name), false));
        }
        for cmd in ["ppo", "grpo"] {
            let reward = if cmd == "ppo" {
                dir("rm")
            } else {
                "length:0.1".into()
            };
            run(Command::new(&rlhf).args([
                cmd,
                "--model",
                &base,
                "--out",
                &dir(cmd),
                "--prompts",
                &format!("{tldr}/prompts.jsonl"),
                "--reward",
                &reward,
                "--iterations",
                "2",
                "--prompts-per-batch",
                "4",
                "--max-completion-length",
                "8",
                "--learning-rate",
                "1e-3",
                "--quiet",
            ]))?;
            pairs.push((dir(cmd), false));
        }
    }
    // GPT-2's `Conv1D` (PEFT's `fan_in_fan_out`), on its 32 learned positions
    for (name, dora) in [("dpo-lora", false), ("dpo-dora", true)] {
        let dir = tmp.join(format!("tiny-gpt2-{name}")).display().to_string();
        let base = format!("{out}/tiny-gpt2");
        adapter_run(&rlhf, &base, &dir, "all-linear", "32", dora)?;
        pairs.push((dir, false));
    }
    let mut check = Command::new(python);
    check.arg("xtask/fixtures/check_outputs.py");
    for (dir, scalar) in &pairs {
        let json = format!("{dir}.ours.json");
        let mut c = Command::new(&logits);
        c.args([dir.as_str(), json.as_str()]);
        if *scalar {
            c.arg("--scalar");
        }
        run(&mut c)?;
        check.args([dir.as_str(), json.as_str()]);
    }
    run(&mut check)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// `rlhf dpo` from `base` into `out` with LoRA (or DoRA) adapters of rank 4 on `targets`, saved
/// as PEFT's files too.
fn adapter_run(
    rlhf: &str,
    base: &str,
    out: &str,
    targets: &str,
    max_length: &str,
    dora: bool,
) -> Result<()> {
    let mut c = Command::new(rlhf);
    c.args(["dpo", "--model", base, "--out", out])
        .args(["--data", "rlhf-cli/data/tldr/preference.jsonl"])
        .args(["--lora-rank", "4", "--lora-target-modules", targets])
        .args(["--save-adapter", "--learning-rate", "1e-2"])
        .args(["--max-length", max_length, "--quiet"]);
    if dora {
        c.arg("--use-dora");
    }
    run(&mut c)
}

/// `bench-perf`: `rlhf-perf` with the options given; with `--device tch…`, built with the `tch`
/// feature against the PyTorch of `python3` (or `$VIRTUAL_ENV`), whose `lib/` is put on
/// `LD_LIBRARY_PATH` for the run.
fn bench_perf(args: &[String]) -> Result<()> {
    let device = args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--device=").map(str::to_string))
        });
    if !device.is_some_and(|d| d.starts_with("tch")) {
        return run_bench_binary("rlhf-perf", &[], args);
    }
    let python = std::env::var("VIRTUAL_ENV")
        .map(|v| format!("{v}/bin/python"))
        .unwrap_or_else(|_| "python3".to_string());
    let lib = Command::new(&python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(lib) = lib else {
        bail!(
            "--device tch needs PyTorch ({python} could not import torch); install torch 2.9.0 \
             (tch 0.22's version) in a venv and set VIRTUAL_ENV, or set LIBTORCH"
        );
    };
    let library_path = match std::env::var("LD_LIBRARY_PATH") {
        Ok(p) if !p.is_empty() => format!("{lib}:{p}"),
        _ => lib,
    };
    let mut cmd = Command::new(cargo());
    cmd.args(["run", "--quiet", "-p", "rlhf-bench", "--features", "tch"])
        .args(["--bin", "rlhf-perf", "--"])
        .args(args)
        .env("LD_LIBRARY_PATH", library_path);
    if std::env::var_os("LIBTORCH").is_none() {
        cmd.env("LIBTORCH_USE_PYTORCH", "1");
        if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{venv}/bin:{path}"));
        }
    }
    run(&mut cmd)
}

/// `cargo run` of one of `rlhf-bench`'s binaries. The `dev` profile already optimises every
/// dependency (burn above all), so this reuses the test build instead of a second full build of
/// burn.
///
/// On Unix this process *becomes* that command (`exec`, and `cargo run` execs the binary too), so
/// a signal sent to it (a `kill`, a CI job's timeout) reaches the benchmark itself, which
/// checkpoints and stops, instead of leaving it running without its parent.
fn run_bench_binary(bin: &str, command: &[&str], args: &[String]) -> Result<()> {
    let mut cmd = Command::new(cargo());
    cmd.args(["run", "--quiet", "-p", "rlhf-bench", "--bin", bin, "--"])
        .args(command)
        .args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        eprintln!("xtask: running {cmd:?}");
        let e = cmd.exec();
        Err(e).with_context(|| format!("could not start {cmd:?}"))
    }
    #[cfg(not(unix))]
    run(&mut cmd)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}
