//! `rlhf-bench`: run one pipeline config, or sweep a preset of the scaling study and write its
//! report.
//!
//! ```text
//! rlhf-bench run CONFIG.toml [--out DIR]   # DIR (target/rlhf-bench/run) holds one configuration:
//!                                         # run again, it resumes; another one is refused
//! rlhf-bench sweep [--preset smoke|quick|full] [--out DIR] [--axes a,b] [--seeds 0,1 | --seeds N]
//!                  [--jobs J] [--device D] [--no-progress]
//!     # seeds: the preset's (smoke 1, quick 3, full 5); with J > 1 (default: one per seed, at
//!     # most two per core) the seeds run in J child processes at once, each on cores/J threads
//! rlhf-bench report DIR      # rewrite the report from the stored points
//! rlhf-bench verify DIR      # check the report's and the CSV's numbers against the points
//! rlhf-bench diff DIR_A DIR_B  # the two sweeps' findings side by side, with what moved
//! ```
//!
//! Exit status: 0 on success, 1 when a run fails (the error names the file or the setting), 2 on
//! a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use rlhf_bench::pipeline::claim_run_dir;
use rlhf_bench::study::all_stored;
use rlhf_bench::{RunConfig, preset_points, read_points, run, sweep, write_report};

/// The line a child of a parallel sweep prints last: `ran copied skipped elsewhere`.
const SUMMARY: &str = "sweep-summary";

/// Runs the seeds of `points` in `jobs` child processes of this binary at once (seeds dealt out
/// round-robin), each on `cores / jobs` threads: the small models of a CPU study use about one
/// core each, so the seeds of a sweep finish in about the time of one. Each child stores its
/// points as a sequential sweep does (and resumes the same way); a child dies with its parent
/// (SIGTERM, which checkpoints the current run), and Ctrl-C reaches every child, each stopping
/// after a checkpoint.
fn parallel_sweep(
    points: &[rlhf_bench::Point],
    out: &std::path::Path,
    opts: &std::collections::BTreeMap<String, String>,
    seeds: &[u64],
    jobs: usize,
    cores: usize,
    progress: bool,
) -> rlhf_core::Result<rlhf_bench::study::SweepReport> {
    use std::process::{Command, Stdio};
    let io = |e: std::io::Error| rlhf_core::Error::io(out, e);
    std::fs::create_dir_all(out.join("points")).map_err(io)?;
    let exe = std::env::current_exe().map_err(io)?;
    let mut children = Vec::new();
    for j in 0..jobs {
        let mine: Vec<String> = seeds
            .iter()
            .skip(j)
            .step_by(jobs)
            .map(u64::to_string)
            .collect();
        // a list even for one seed (a lone number would be a count)
        let list = if mine.len() == 1 {
            format!("{0},{0}", mine[0])
        } else {
            mine.join(",")
        };
        let mut cmd = Command::new(&exe);
        cmd.args([
            "sweep",
            "--seeds",
            &list,
            "--jobs",
            "1",
            "--no-progress",
            "--no-report",
        ])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::piped());
        for key in ["preset", "axes", "device"] {
            if let Some(v) = opts.get(key) {
                cmd.arg(format!("--{key}")).arg(v);
            }
        }
        // burn's CPU kernels take rayon's count, LibTorch's (`--device tch`) OpenMP's
        for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, (cores / jobs).max(1).to_string());
            }
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches only the child's own state.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        children.push((mine.join(","), cmd.spawn().map_err(io)?));
    }
    // Ctrl-C goes to the children, which checkpoint and stop; this process waits for them
    // SAFETY: ignoring a signal has no memory effects.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let bar = if progress {
        indicatif::ProgressBar::with_draw_target(
            Some(points.len() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} eta {eta}",
        )
        .expect("a valid template"),
    );
    bar.set_prefix("sweep");
    let done = || {
        points
            .iter()
            .filter(|p| out.join("points").join(p.file_name()).exists())
            .count() as u64
    };
    let mut statuses = vec![None; children.len()];
    while statuses.iter().any(Option::is_none) {
        for (i, (_, child)) in children.iter_mut().enumerate() {
            if statuses[i].is_none() {
                statuses[i] = child.try_wait().map_err(io)?;
            }
        }
        bar.set_position(done());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    bar.finish_and_clear();
    let mut total = rlhf_bench::study::SweepReport::default();
    let mut failed = Vec::new();
    for ((seeds, mut child), status) in children.into_iter().zip(statuses) {
        let status = status.expect("every child was waited for");
        let mut text = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            use std::io::Read;
            stdout.read_to_string(&mut text).map_err(io)?;
        }
        let counts: Vec<usize> = text
            .lines()
            .filter_map(|l| l.strip_prefix(SUMMARY))
            .flat_map(|l| l.split_whitespace().filter_map(|x| x.parse().ok()))
            .collect();
        match (status.success(), counts.as_slice()) {
            (true, [ran, copied, skipped, elsewhere]) => {
                total.ran += ran;
                total.copied += copied;
                total.skipped += skipped;
                total.elsewhere += elsewhere;
            }
            _ => failed.push((seeds, status)),
        }
    }
    if let Some((seeds, status)) = failed.first() {
        if failed.iter().any(|(_, s)| s.code() == Some(130)) {
            eprintln!(
                "rlhf-bench: interrupted; finished points are stored and each child checkpointed its run: run the sweep again to go on"
            );
            std::process::exit(130);
        }
        return Err(rlhf_core::Error::Config(format!(
            "the sweep of seed(s) {seeds} failed ({status}); its error is above. Finished points are stored: run the sweep again to go on"
        )));
    }
    Ok(total)
}

/// The scaling study: run one pipeline config, or sweep a preset and write its report.
#[derive(Parser)]
#[command(name = "rlhf-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one pipeline config (TOML); the output directory holds one configuration: run again,
    /// it resumes; another one is refused.
    Run {
        /// The run config.
        config: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/rlhf-bench/run")]
        out: PathBuf,
        /// Run on this device instead of the config's `device` (flex, wgpu, cuda:N, …).
        #[arg(long)]
        device: Option<String>,
    },
    /// Sweep a preset of the scaling study and write its report (a rerun skips finished points).
    Sweep {
        /// smoke, quick or full.
        #[arg(long, default_value = "quick")]
        preset: String,
        /// Output directory (default: target/bench-scaling/PRESET).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only these axes (comma-separated).
        #[arg(long, value_delimiter = ',')]
        axes: Vec<String>,
        /// A count N (seeds 0..N) or a list `0,1` (default: the preset's: smoke 1, quick 3,
        /// full 5).
        #[arg(long)]
        seeds: Option<String>,
        /// Seeds run at once in child processes, each on cores/J threads (at least one; default:
        /// one per seed, at most two per core).
        #[arg(long)]
        jobs: Option<usize>,
        /// flex, wgpu, cuda:N, …
        #[arg(long, default_value = "flex")]
        device: String,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Store the points only (a child of a parallel sweep).
        #[arg(long, hide = true)]
        no_report: bool,
    },
    /// Rewrite the report from the stored points.
    Report {
        /// A sweep's output directory.
        dir: PathBuf,
    },
    /// Check the report's and the CSV's numbers against the points.
    Verify {
        /// A sweep's output directory.
        dir: PathBuf,
    },
    /// Set two sweeps' findings side by side (a rerun against the committed report, say): each
    /// claim's verdict and interval in both, and which verdicts moved.
    Diff {
        /// The first sweep's output directory (or any directory with a `points/` folder).
        a: PathBuf,
        /// The second sweep's.
        b: PathBuf,
    },
}

/// The seeds `--seeds` asks for: a count or a list, each once.
fn parse_seeds(s: Option<&str>, preset: &str) -> Result<Vec<u64>, String> {
    let mut seeds: Vec<u64> = match s {
        None => rlhf_bench::study::default_seeds(preset),
        Some(s) if s.contains(',') => s
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("--seeds {s}: not a list of integers"))?,
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => (0..n).collect(),
            _ => return Err(format!("--seeds {s}: a count ≥ 1 or a list")),
        },
    };
    let mut seen = std::collections::BTreeSet::new();
    seeds.retain(|s| seen.insert(*s));
    Ok(seeds)
}

fn main() -> ExitCode {
    rlhf_core::train::tune_allocator();
    let cli = Cli::parse();
    // the sweep's own lines and every warning; the trainers' progress and memory lines would
    // only run through the sweep's bar
    rlhf_cli::init_logging("warn,rlhf_bench=info");
    let result = match cli.command {
        Command::Run {
            config,
            out,
            device,
        } => RunConfig::from_file(&config).and_then(|mut cfg| {
            if let Some(d) = device {
                cfg.device = d;
            }
            claim_run_dir(&out, &cfg)?;
            let result = run(&cfg, &out.join("cache"), &out.join("work"))?;
            let json = serde_json::to_string_pretty(&result)
                .map_err(|e| rlhf_core::Error::Record(e.to_string()))?;
            rlhf_core::train::fs::write_atomic(&out.join("result.json"), json.as_bytes())?;
            for (k, v) in &result.metrics {
                println!("{k:32} {v}");
            }
            println!("wrote {}", out.join("result.json").display());
            Ok(())
        }),
        Command::Sweep {
            preset,
            out,
            axes,
            seeds,
            jobs,
            device,
            no_progress,
            no_report,
        } => {
            let out =
                out.unwrap_or_else(|| PathBuf::from(format!("target/bench-scaling/{preset}")));
            let seeds = match parse_seeds(seeds.as_deref(), &preset) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("rlhf-bench: {e}");
                    return ExitCode::from(2);
                }
            };
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            // one process per seed: with more seeds than cores they share the cores, which
            // finishes sooner than running the extra seeds after the others
            let jobs = match jobs {
                None => seeds.len().clamp(1, 2 * cores),
                Some(j) if j > 0 => j.min(seeds.len().max(1)),
                Some(_) => {
                    eprintln!("rlhf-bench: --jobs: a count ≥ 1");
                    return ExitCode::from(2);
                }
            };
            let mut opts = std::collections::BTreeMap::new();
            opts.insert("preset".to_string(), preset.clone());
            opts.insert("device".to_string(), device.clone());
            if !axes.is_empty() {
                opts.insert("axes".to_string(), axes.join(","));
            }
            preset_points(&preset, &axes, &seeds, &device).and_then(|points| {
                eprintln!(
                    "{} points of preset `{preset}` ({} seed{}, {jobs} at a time) → {}",
                    points.len(),
                    seeds.len(),
                    if seeds.len() == 1 { "" } else { "s" },
                    out.display()
                );
                let start = std::time::Instant::now();
                let r = if jobs > 1 {
                    parallel_sweep(&points, &out, &opts, &seeds, jobs, cores, !no_progress)?
                } else {
                    sweep(&points, &out, !no_progress)?
                };
                if no_report {
                    // a child of a parallel sweep: its counts, for the parent
                    println!(
                        "{SUMMARY} {} {} {} {}",
                        r.ran, r.copied, r.skipped, r.elsewhere
                    );
                    return Ok(());
                }
                let counts = format!(
                    "ran {} points, copied {} identical ones, skipped {} finished ones, in {:.0} s",
                    r.ran,
                    r.copied,
                    r.skipped,
                    start.elapsed().as_secs_f64()
                );
                // sweeps sharing the directory: the one that ends with every point stored
                // writes the report
                if !all_stored(&points, &out) {
                    eprintln!(
                        "{counts}; {} points are still running in another sweep of {}, which \
                         writes the report when it has them all",
                        r.elsewhere,
                        out.display()
                    );
                    return Ok(());
                }
                let all = read_points(&out)?;
                write_report(
                    &out,
                    &all,
                    &format!("RLHF scaling study, preset `{preset}`"),
                )?;
                eprintln!("{counts}; report: {}", out.join("report.md").display());
                Ok(())
            })
        }
        Command::Verify { dir } => rlhf_bench::verify::verify_report(&dir).map(|n| {
            println!("report.md and summary.csv agree with the points ({n} rows checked)");
        }),
        Command::Diff { a, b } => read_points(&a).and_then(|pa| {
            let pb = read_points(&b)?;
            print!(
                "{}",
                rlhf_bench::diff::FindingsDiff::of(&pa, &pb).markdown()
            );
            Ok(())
        }),
        Command::Report { dir } => {
            read_points(&dir).and_then(|all| write_report(&dir, &all, "RLHF scaling study"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                rlhf_core::Error::Interrupted {
                    checkpoint: None, ..
                } => eprintln!(
                    "rlhf-bench: interrupted while sampling; finished points, cached stages and training checkpoints are kept: run the same command again to go on"
                ),
                _ => eprintln!("rlhf-bench: {e}"),
            }
            // 130 = stopped by SIGINT/SIGTERM, as shells report an interrupt
            if matches!(e, rlhf_core::Error::Interrupted { .. }) {
                ExitCode::from(130)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
