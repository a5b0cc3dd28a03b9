//! `cargo xtask <task>`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Orchestration only: every task spawns cargo (or bash) and fails loudly with the exit status of
//! the first command that failed.

use std::process::{Command, ExitCode};

/// Every task: name, arguments, what it does.
const TASKS: &[(&str, &str, &str)] = &[
    (
        "bench-scaling",
        "[--preset smoke|quick|full] [--out DIR] [--axes a,b] [--seeds N|0,1] [--jobs J] [--device D]",
        "the scaling study (default preset `quick`, offline, on the CPU): points, summary.csv, plots and report.md under target/bench-scaling/<preset>; a rerun skips finished points",
    ),
    (
        "bench-perf",
        "[--sizes small,25m] [--workloads sft,...] [--repeats N] [--peer PYTHON] [--out FILE]",
        "throughput, MFU against the measured matmul peak and peak memory of SFT, RM, DPO, generation, RLOO and PPO at two sizes → target/bench-perf/perf.json; with --peer, TRL on the same shapes, alternating, and the ratio",
    ),
    (
        "ci",
        "",
        "run every check of .ci/run on this machine (skips its apt install step)",
    ),
    (
        "fixtures",
        "[--python PY]",
        "regenerate rlhf-models' Hugging Face parity fixtures with PyTorch + transformers, and check that transformers loads our exports",
    ),
    (
        "check-cuda",
        "",
        "type-check the CUDA backend offline (DOCS_RS=1 cargo check --workspace --lib --features rlhf-core/cuda)",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print_tasks();
            Ok(())
        }
        Some("ci") => run(Command::new("bash")
            .arg(".ci/run")
            .env("RLHF_CI_SKIP_INSTALL", "1")),
        Some("check-cuda") => check_cuda(),
        Some("bench-scaling") => bench_scaling(&args[1..]),
        Some("bench-perf") => bench_perf(&args[1..]),
        Some("fixtures") => fixtures(&args[1..]),
        Some(other) => {
            eprintln!("xtask: unknown task `{other}`\n");
            print_tasks();
            Err(())
        }
    };
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_tasks() {
    println!("usage: cargo xtask <task>\n\ntasks:");
    for (name, args, what) in TASKS {
        println!("  {:<28} {what}", format!("{name} {args}"));
    }
}

/// burn 0.22's CUDA runtime downloads an LLVM bundle in its build script, which cannot work
/// offline; with `DOCS_RS=1` that build script skips the download (as it does on docs.rs), so
/// the CUDA path can at least be type-checked. Nothing is linked or run.
fn check_cuda() -> Result<(), ()> {
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

/// Writes `rlhf-models/tests/fixtures/hf/` with the given Python (which needs `torch` and
/// `transformers`; the tests themselves never run Python), then round-trips every fixture through
/// `save_pretrained` and has `transformers` load the result.
fn fixtures(args: &[String]) -> Result<(), ()> {
    let python = match args {
        [] => "python3".to_string(),
        [flag, py] if flag == "--python" => py.clone(),
        _ => {
            eprintln!("xtask: usage: cargo xtask fixtures [--python PY]");
            return Err(());
        }
    };
    let out = "rlhf-models/tests/fixtures/hf";
    run(Command::new(&python).args(["xtask/fixtures/make_hf_fixtures.py", out]))?;
    let tmp = std::env::temp_dir().join(format!("rlhf-export-check-{}", std::process::id()));
    for name in ["tiny-neox", "tiny-llama", "tiny-qwen2"] {
        let fixture = format!("{out}/{name}");
        let exported = tmp.join(name).display().to_string();
        run(Command::new(cargo()).args([
            "run",
            "--quiet",
            "-p",
            "rlhf-models",
            "--example",
            "export_pretrained",
            "--",
            &fixture,
            &exported,
        ]))?;
        run(Command::new(&python).args([
            "xtask/fixtures/check_export.py",
            &exported,
            &format!("{fixture}/parity.json"),
        ]))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Runs the `rlhf-bench` binary's sweep.
fn bench_scaling(args: &[String]) -> Result<(), ()> {
    run_bench_binary("rlhf-bench", &["sweep"], args)
}

/// Runs the `rlhf-perf` binary.
fn bench_perf(args: &[String]) -> Result<(), ()> {
    run_bench_binary("rlhf-perf", &[], args)
}

/// `cargo run` of one of `rlhf-bench`'s binaries. The `dev` profile already optimises every
/// dependency (burn above all), so this reuses the test build instead of a second full build of
/// burn.
///
/// On Unix this process *becomes* that command (`exec`, and `cargo run` execs the binary too), so
/// a signal sent to it (a `kill`, a CI job's timeout) reaches the benchmark itself, which
/// checkpoints and stops, instead of leaving it running without its parent.
fn run_bench_binary(bin: &str, command: &[&str], args: &[String]) -> Result<(), ()> {
    let mut cmd = Command::new(cargo());
    cmd.args(["run", "--quiet", "-p", "rlhf-bench", "--bin", bin, "--"])
        .args(command)
        .args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        eprintln!("xtask: running {cmd:?}");
        let e = cmd.exec();
        eprintln!("xtask: could not start {cmd:?}: {e}");
        Err(())
    }
    #[cfg(not(unix))]
    run(&mut cmd)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn run(cmd: &mut Command) -> Result<(), ()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            eprintln!("xtask: {shown} failed with {s}");
            Err(())
        }
        Err(e) => {
            eprintln!("xtask: could not start {shown}: {e}");
            Err(())
        }
    }
}
