//! `rlhf-bench`: run one pipeline config, or sweep a preset of the scaling study and write its
//! report.
//!
//! ```text
//! rlhf-bench run CONFIG.toml [--out DIR]   # DIR (target/rlhf-bench/run) holds one configuration:
//!                                         # run again, it resumes; another one is refused
//! rlhf-bench sweep [--preset smoke|quick|full] [--out DIR] [--axes a,b] [--seeds 0,1 | --seeds N]
//!                  [--jobs J] [--device D] [--no-progress]
//!     # seeds: the preset's (smoke 1, quick 2, full 3); with J > 1 (default: one per core, at
//!     # most one per seed) the seeds run in J child processes at once, each on cores/J threads
//! rlhf-bench report DIR      # rewrite the report from the stored points
//! rlhf-bench verify DIR      # check the report's and the CSV's numbers against the points
//! ```
//!
//! Exit status: 0 on success, 1 when a run fails (the error names the file or the setting), 2 on
//! a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use rlhf_bench::pipeline::claim_run_dir;
use rlhf_bench::{RunConfig, preset_points, read_points, run, sweep, write_report};

const USAGE: &str = "usage:
  rlhf-bench run CONFIG.toml [--out DIR]
  rlhf-bench sweep [--preset smoke|quick|full] [--out DIR] [--axes a,b] [--seeds 0,1 | --seeds N] [--jobs J] [--device D] [--no-progress]
  rlhf-bench report DIR
  rlhf-bench verify DIR";

/// The line a child of a parallel sweep prints last: `ran copied skipped`.
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
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", (cores / jobs).max(1).to_string());
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
            (true, [ran, copied, skipped]) => {
                total.ran += ran;
                total.copied += copied;
                total.skipped += skipped;
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

fn usage(msg: &str) -> ExitCode {
    eprintln!("rlhf-bench: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    rlhf_core::train::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage("no command");
    };
    let mut opts = std::collections::BTreeMap::new();
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--no-progress" || a == "--no-report" {
            flags.push(a.clone());
        } else if let Some(name) = a.strip_prefix("--") {
            let Some(v) = args.get(i + 1) else {
                return usage(&format!("--{name} needs a value"));
            };
            opts.insert(name.to_string(), v.clone());
            i += 1;
        } else {
            positional.push(a.clone());
        }
        i += 1;
    }
    let result = match cmd.as_str() {
        "run" => {
            let Some(path) = positional.first() else {
                return usage("run needs a CONFIG file");
            };
            let out = PathBuf::from(
                opts.get("out")
                    .cloned()
                    .unwrap_or_else(|| "target/rlhf-bench/run".into()),
            );
            RunConfig::from_file(&PathBuf::from(path)).and_then(|cfg| {
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
            })
        }
        "sweep" => {
            let preset = opts
                .get("preset")
                .cloned()
                .unwrap_or_else(|| "quick".into());
            let out = PathBuf::from(
                opts.get("out")
                    .cloned()
                    .unwrap_or_else(|| format!("target/bench-scaling/{preset}")),
            );
            let axes: Vec<String> = opts
                .get("axes")
                .map(|a| {
                    a.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let mut seeds: Vec<u64> = match opts.get("seeds") {
                None => rlhf_bench::study::default_seeds(&preset),
                Some(s) if s.contains(',') => match s.split(',').map(str::parse).collect() {
                    Ok(v) => v,
                    Err(_) => return usage(&format!("--seeds {s}: not a list of integers")),
                },
                Some(s) => match s.parse::<u64>() {
                    Ok(n) if n > 0 => (0..n).collect(),
                    _ => return usage(&format!("--seeds {s}: a count ≥ 1 or a list")),
                },
            };
            let mut seen = std::collections::BTreeSet::new();
            seeds.retain(|s| seen.insert(*s));
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let jobs = match opts.get("jobs").map(|j| j.parse::<usize>()) {
                None => cores.min(seeds.len()).max(1),
                Some(Ok(j)) if j > 0 => j.min(seeds.len().max(1)),
                Some(_) => return usage("--jobs: a count ≥ 1"),
            };
            let device = opts.get("device").cloned().unwrap_or_else(|| "flex".into());
            let progress = !flags.iter().any(|f| f == "--no-progress");
            let report = !flags.iter().any(|f| f == "--no-report");
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
                    parallel_sweep(&points, &out, &opts, &seeds, jobs, cores, progress)?
                } else {
                    sweep(&points, &out, progress)?
                };
                if !report {
                    // a child of a parallel sweep: its counts, for the parent
                    println!("{SUMMARY} {} {} {}", r.ran, r.copied, r.skipped);
                    return Ok(());
                }
                let all = read_points(&out)?;
                write_report(
                    &out,
                    &all,
                    &format!("RLHF scaling study, preset `{preset}`"),
                )?;
                eprintln!(
                    "ran {} points, copied {} identical ones, skipped {} finished ones, in {:.0} s; report: {}",
                    r.ran,
                    r.copied,
                    r.skipped,
                    start.elapsed().as_secs_f64(),
                    out.join("report.md").display()
                );
                Ok(())
            })
        }
        "verify" => {
            let Some(dir) = positional.first() else {
                return usage("verify needs a DIR");
            };
            rlhf_bench::report::verify_report(&PathBuf::from(dir)).map(|n| {
                println!("report.md and summary.csv agree with the points ({n} rows checked)");
            })
        }
        "report" => {
            let Some(dir) = positional.first() else {
                return usage("report needs a DIR");
            };
            let out = PathBuf::from(dir);
            read_points(&out).and_then(|all| write_report(&out, &all, "RLHF scaling study"))
        }
        other => return usage(&format!("unknown command {other:?}")),
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
