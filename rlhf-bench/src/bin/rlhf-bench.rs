//! `rlhf-bench`: run one pipeline config, or sweep a preset of the scaling study and write its
//! report.
//!
//! ```text
//! rlhf-bench run CONFIG.toml [--out DIR]   # DIR (target/rlhf-bench/run) holds one configuration:
//!                                         # run again, it resumes; another one is refused
//! rlhf-bench sweep [--preset smoke|quick|full] [--out DIR] [--axes a,b] [--seeds 0,1 | --seeds N] [--device D] [--no-progress]
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
  rlhf-bench sweep [--preset smoke|quick|full] [--out DIR] [--axes a,b] [--seeds 0,1 | --seeds N] [--device D] [--no-progress]
  rlhf-bench report DIR
  rlhf-bench verify DIR";

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
        if a == "--no-progress" {
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
            let seeds: Vec<u64> = match opts.get("seeds") {
                None => vec![0],
                Some(s) if s.contains(',') => match s.split(',').map(str::parse).collect() {
                    Ok(v) => v,
                    Err(_) => return usage(&format!("--seeds {s}: not a list of integers")),
                },
                Some(s) => match s.parse::<u64>() {
                    Ok(n) if n > 0 => (0..n).collect(),
                    _ => return usage(&format!("--seeds {s}: a count ≥ 1 or a list")),
                },
            };
            let device = opts.get("device").cloned().unwrap_or_else(|| "flex".into());
            preset_points(&preset, &axes, &seeds, &device).and_then(|points| {
                eprintln!(
                    "{} points of preset `{preset}` → {}",
                    points.len(),
                    out.display()
                );
                let start = std::time::Instant::now();
                let r = sweep(&points, &out, !flags.iter().any(|f| f == "--no-progress"))?;
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
            eprintln!("rlhf-bench: {e}");
            // 130 = stopped by SIGINT/SIGTERM after a checkpoint, as shells report an interrupt
            match e {
                rlhf_core::Error::Interrupted { .. } => ExitCode::from(130),
                _ => ExitCode::from(1),
            }
        }
    }
}
