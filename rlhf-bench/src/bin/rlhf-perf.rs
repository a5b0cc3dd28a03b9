//! `rlhf-perf`: throughput of the RLHF workloads (SFT, reward model, DPO, generation, RLOO and
//! PPO iterations) at two model sizes, the machine's measured f32 matmul peak, model FLOP
//! utilisation and peak memory; with `--peer PYTHON`, the same workloads through Hugging Face
//! TRL (`rlhf-bench/peer/trl_peer.py`), alternating run by run, and the ratio project/peer.
//!
//! ```text
//! rlhf-perf [--sizes small,25m] [--workloads sft,reward,dpo,dpo-ref-cache,generate,rloo,ppo]
//!           [--repeats 3] [--replicas 1,2]
//!           [--peer PYTHON] [--peer-script PATH] [--device DEVICE]
//!           [--out target/bench-perf/perf.json]
//! rlhf-perf one WORKLOAD SIZE EXAMPLES [--replicas N]   # one run here; prints a JSON line
//! ```
//!
//! Every run is a child process; its peak memory is the maximum resident set size the kernel
//! reports for it (`wait4`). The device is `--device`, else `RLHF_DEVICE`, else `flex`; `tch`
//! needs a build with the `tch` feature (`cargo xtask bench-perf --device tch` makes one).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rlhf_bench::perf::{
    BATCH, NEW_TOKENS, PROMPT_WORDS, RESPONSE_WORDS, SAMPLES_PER_PROMPT, VOCAB, matmul_peak,
    median_min_max,
};
use rlhf_bench::perf::{Measurement, SIZES, Size, Workload, default_examples, measure};
use serde::Serialize;
use serde_json::Value;

/// The peer's PyTorch matmul rate, measured as ours is: median of 10 products of 2048² f32.
const TORCH_PEAK: &str = "import time, torch
n = 2048
a, b = torch.randn(n, n), torch.randn(n, n)
a @ b
ts = []
for _ in range(10):
    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
ts.sort()
print(2 * n ** 3 / ts[len(ts) // 2])";

/// Throughput of the RLHF workloads against Hugging Face TRL on the same shapes.
#[derive(Parser)]
#[command(name = "rlhf-perf", version)]
struct Cli {
    #[command(subcommand)]
    one: Option<One>,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand)]
enum One {
    /// One run in this process; prints a JSON line (what the sweep runs in each child).
    One {
        /// sft, reward, dpo, dpo-ref-cache, generate, rloo or ppo.
        #[arg(value_parser = parse_workload)]
        workload: Workload,
        /// small or 25m.
        #[arg(value_parser = parse_size)]
        size: Size,
        /// Examples (sequences, pairs, prompts) to run.
        examples: usize,
        /// Data-parallel replicas of the training workloads.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::parse(s).map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<Size, String> {
    Size::parse(s).map_err(|e| e.to_string())
}

/// The sweep's options.
#[derive(clap::Args)]
struct Options {
    /// Model sizes (comma-separated; default all: small, 25m).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sizes: Vec<Size>,
    /// Workloads (comma-separated; default all: sft, reward, dpo, dpo-ref-cache, generate, rloo,
    /// ppo).
    #[arg(long, value_delimiter = ',', value_parser = parse_workload)]
    workloads: Vec<Workload>,
    /// Data-parallel replicas of our training runs (comma-separated: each count is measured in
    /// turn within every repeat, so that they are compared side by side).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    replicas: Vec<usize>,
    /// Runs per workload (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
    /// A Python with TRL: run the peer on the same shapes, alternating, and report the ratio.
    #[arg(long, value_name = "PYTHON")]
    peer: Option<String>,
    /// The peer script (default: the one in this crate's sources).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peer/trl_peer.py"))]
    peer_script: PathBuf,
    /// Where the figures go.
    #[arg(long, default_value = "target/bench-perf/perf.json")]
    out: PathBuf,
    /// The device of our runs (`flex`, `tch`, `wgpu:cpu`, …; default `RLHF_DEVICE` or `flex`).
    #[arg(long)]
    device: Option<String>,
}

fn main() -> ExitCode {
    rlhf_core::train::tune_allocator();
    let cli = Cli::parse();
    // the sweep's own lines and every warning; the trainers' progress and memory lines would
    // only run through the sweep's bar
    rlhf_cli::init_logging("warn,rlhf_bench=info");
    let result = match cli.one {
        Some(One::One {
            workload,
            size,
            examples,
            replicas,
        }) => one(workload, size, examples, replicas),
        None => sweep(cli.options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rlhf-perf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn one(workload: Workload, size: Size, examples: usize, replicas: usize) -> Result<()> {
    let device = rlhf_core::device_from_env()?;
    let m = measure(workload, size, examples, replicas, &device)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// What a child printed on its last JSON line, its wall time aside, and its peak memory.
struct ChildRun {
    json: Value,
    max_rss_bytes: u64,
}

/// Runs `cmd`, keeps its stdout and stderr, and reads its maximum resident set size from the
/// kernel when it exits.
fn run_child(cmd: &mut Command, what: &str) -> Result<ChildRun> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: could not start"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .with_context(|| format!("{what}: reading its output"))?;
    let (status, max_rss_bytes) = wait_with_rusage(child.id())?;
    let err = err_reader.join().unwrap_or_default();
    if status != 0 {
        let lines: Vec<&str> = err.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        bail!(
            "{what}: exited with status {status}; the end of its stderr:\n{}",
            tail.join("\n")
        );
    }
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{') && l.contains('"'))
        .with_context(|| format!("{what}: printed no JSON line; its output:\n{out}"))?;
    let json = serde_json::from_str(line).with_context(|| format!("{what}: bad JSON `{line}`"))?;
    Ok(ChildRun {
        json,
        max_rss_bytes,
    })
}

/// `wait4` on the child: its exit status and the kernel's maximum resident set size for it.
fn wait_with_rusage(pid: u32) -> Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is valid; `wait4` fills it for our own child `pid`, which
    // `std` has not reaped (we never call `Child::wait`).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // Linux reports ru_maxrss in KiB
    Ok((code, usage.ru_maxrss as u64 * 1024))
}

fn ours(
    exe: &Path,
    device: &str,
    w: Workload,
    size: Size,
    examples: usize,
    replicas: usize,
) -> Result<(Measurement, u64)> {
    let run = run_child(
        Command::new(exe)
            .args(["one", w.name(), size.name, &examples.to_string()])
            .args(["--replicas", &replicas.to_string()])
            .env("RLHF_DEVICE", device),
        &format!(
            "rlhf-perf one {} {} {examples} --replicas {replicas}",
            w.name(),
            size.name
        ),
    )?;
    let m: Measurement = serde_json::from_value(run.json)?;
    Ok((m, run.max_rss_bytes))
}

/// The peer's examples/s and peak memory.
fn peer(
    o: &Options,
    python: &str,
    trainer: &str,
    size: Size,
    examples: usize,
) -> Result<(f64, u64, Value)> {
    let num = |v: usize| v.to_string();
    let shape = size.shape(VOCAB)?;
    let run = run_child(
        Command::new(python)
            .arg(&o.peer_script)
            .args(["--trainer", trainer])
            .args(["--hidden", &num(shape.hidden_size)])
            .args(["--layers", &num(shape.num_hidden_layers)])
            .args(["--heads", &num(shape.num_attention_heads)])
            .args(["--vocab", &num(VOCAB)])
            .args(["--examples", &num(examples)])
            .args(["--batch", &num(BATCH)])
            .args(["--prompt-words", &num(PROMPT_WORDS)])
            .args(["--response-words", &num(RESPONSE_WORDS)])
            .args(["--new-tokens", &num(NEW_TOKENS)])
            .args(["--samples-per-prompt", &num(SAMPLES_PER_PROMPT)])
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_DATASETS_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1"),
        &format!("peer {trainer} {}", size.name),
    )?;
    let eps = run.json["examples_per_s"]
        .as_f64()
        .with_context(|| format!("peer {trainer}: no examples_per_s in {}", run.json))?;
    Ok((eps, run.max_rss_bytes, run.json))
}

/// Our runs of one workload at one replica count.
#[derive(Default)]
struct Series {
    eps: Vec<f64>,
    units: Vec<f64>,
    flops: Vec<f64>,
    rss: u64,
    last: Option<Measurement>,
}

impl Series {
    fn add(&mut self, m: Measurement, rss: u64) {
        self.eps.push(m.examples_per_s());
        self.units.push(m.units_per_s());
        self.flops.push(m.flops_per_s());
        self.rss = self.rss.max(rss);
        self.last = Some(m);
    }
}

/// `perf.json`: the machine, the shapes, and one row per size × workload × replica count.
#[derive(Serialize)]
struct Report {
    git_revision: String,
    machine: Machine,
    device: String,
    matmul_peak_gflops: Peaks,
    shapes: Shapes,
    repeats: u64,
    workloads: Vec<Row>,
}

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    cpu: String,
    cpu_family: String,
    cpu_model: String,
    cpu_mhz: String,
    cpu_flags: BTreeMap<&'static str, bool>,
    gemm_x86_v4: bool,
}

/// The measured f32 matmul peaks (GFLOP/s), the MFU's denominators.
#[derive(Serialize)]
struct Peaks {
    burn: f64,
    torch: Option<f64>,
}

/// The workloads' shapes, shared with the peer.
#[derive(Serialize)]
struct Shapes {
    batch: usize,
    prompt_tokens: usize,
    response_tokens: usize,
    new_tokens: usize,
    samples_per_prompt: usize,
    vocab: usize,
}

#[derive(Serialize)]
struct Row {
    size: &'static str,
    workload: &'static str,
    replicas: usize,
    unit: &'static str,
    example_unit: &'static str,
    examples_per_run: usize,
    non_embedding_params: u64,
    flops_per_example: f64,
    ours: Ours,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<Peer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<Ratio>,
}

#[derive(Serialize)]
struct Ours {
    examples_per_s: Stats,
    units_per_s: Stats,
    gflops_per_s: f64,
    mfu: f64,
    peak_rss_bytes: u64,
}

#[derive(Serialize)]
struct Peer {
    examples_per_s: Stats,
    gflops_per_s: f64,
    mfu_of_torch_peak: Option<f64>,
    peak_rss_bytes: u64,
    /// The peer's own report of its last run.
    last_report: Value,
}

/// Ours over the peer: the median (and range) of the ratios of runs of the same repeat, and the
/// ratio of the two medians.
#[derive(Serialize)]
struct Ratio {
    median_of_paired: f64,
    min: f64,
    max: f64,
    of_medians: f64,
}

/// A series' median, range and every run.
#[derive(Serialize)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    runs: Vec<f64>,
}

impl Stats {
    fn of(v: &[f64]) -> Self {
        let (median, min, max) = median_min_max(v);
        Stats {
            median,
            min,
            max,
            runs: v.to_vec(),
        }
    }
}

fn sweep(mut o: Options) -> Result<()> {
    if o.sizes.is_empty() {
        o.sizes = SIZES.to_vec();
    }
    if o.workloads.is_empty() {
        o.workloads = Workload::ALL.to_vec();
    }
    if o.peer.is_some() && !o.peer_script.exists() {
        bail!(
            "the peer script {} does not exist (set --peer-script)",
            o.peer_script.display()
        );
    }
    let exe = std::env::current_exe()?;
    let device_name = o
        .device
        .clone()
        .or_else(|| std::env::var("RLHF_DEVICE").ok())
        .unwrap_or_else(|| "flex".into());
    let device = rlhf_core::parse_device(&device_name)?;
    eprintln!("rlhf-perf: measuring the f32 matmul peak (2048², median of 10)…");
    let burn_peak = matmul_peak(&device, 2048, 10);
    let torch_peak = match &o.peer {
        Some(py) => {
            let out = Command::new(py)
                .args(["-c", TORCH_PEAK])
                .output()
                .with_context(|| format!("starting {py}"))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        }
        None => None,
    };
    eprintln!(
        "rlhf-perf: matmul peak: burn {:.1} GFLOP/s{}",
        burn_peak / 1e9,
        torch_peak.map_or(String::new(), |p| format!(
            ", PyTorch {:.1} GFLOP/s",
            p / 1e9
        ))
    );

    let mut rows = Vec::new();
    for &size in &o.sizes {
        for &w in &o.workloads {
            let examples = default_examples(w, size);
            let trainer = o.peer.as_ref().and(w.peer_trainer());
            // one series per replica count, measured in turn within each repeat
            let mut series: Vec<Series> = o.replicas.iter().map(|_| Series::default()).collect();
            let (mut peer_eps, mut peer_rss) = (Vec::new(), 0u64);
            let mut peer_json = Value::Null;
            for rep in 0..o.repeats {
                eprintln!(
                    "rlhf-perf: {} {} run {}/{} ({examples} {})",
                    size.name,
                    w.name(),
                    rep + 1,
                    o.repeats,
                    w.example_unit()
                );
                for (&replicas, ours_runs) in o.replicas.iter().zip(&mut series) {
                    let (m, rss) = ours(&exe, &device_name, w, size, examples, replicas)?;
                    ours_runs.add(m, rss);
                }
                if let (Some(py), Some(t)) = (&o.peer, trainer) {
                    let (eps, rss, j) = peer(&o, py, t, size, examples)?;
                    peer_eps.push(eps);
                    peer_rss = peer_rss.max(rss);
                    peer_json = j;
                }
            }
            for (&replicas, ours_runs) in o.replicas.iter().zip(&series) {
                let m = ours_runs.last.as_ref().expect("repeats ≥ 1");
                let flops_per_example = m.flops as f64 / m.examples as f64;
                let (ours_median, _, _) = median_min_max(&ours_runs.eps);
                let ours_flops = median_min_max(&ours_runs.flops).0;
                let mut row = Row {
                    size: size.name,
                    workload: w.name(),
                    replicas,
                    unit: w.unit(),
                    example_unit: w.example_unit(),
                    examples_per_run: examples,
                    non_embedding_params: m.non_embedding_params,
                    flops_per_example,
                    ours: Ours {
                        examples_per_s: Stats::of(&ours_runs.eps),
                        units_per_s: Stats::of(&ours_runs.units),
                        gflops_per_s: ours_flops / 1e9,
                        mfu: ours_flops / burn_peak,
                        peak_rss_bytes: ours_runs.rss,
                    },
                    peer: None,
                    ratio: None,
                };
                let mut line = format!(
                    "{:<6} {:<13} ×{replicas} {:>10.1} {:<13} MFU {:>5.1}%  peak {:>6.0} MiB",
                    size.name,
                    w.name(),
                    median_min_max(&ours_runs.units).0,
                    w.unit(),
                    100.0 * ours_flops / burn_peak,
                    ours_runs.rss as f64 / (1 << 20) as f64
                );
                if !peer_eps.is_empty() {
                    // each of our runs against the peer's run of the same repeat
                    let ratios: Vec<f64> = ours_runs
                        .eps
                        .iter()
                        .zip(&peer_eps)
                        .map(|(o, p)| o / p)
                        .collect();
                    let (peer_median, _, _) = median_min_max(&peer_eps);
                    let peer_flops = peer_median * flops_per_example;
                    let (ratio, rmin, rmax) = median_min_max(&ratios);
                    row.peer = Some(Peer {
                        examples_per_s: Stats::of(&peer_eps),
                        gflops_per_s: peer_flops / 1e9,
                        mfu_of_torch_peak: torch_peak.map(|p| peer_flops / p),
                        peak_rss_bytes: peer_rss,
                        last_report: peer_json.clone(),
                    });
                    row.ratio = Some(Ratio {
                        median_of_paired: ratio,
                        min: rmin,
                        max: rmax,
                        of_medians: ours_median / peer_median,
                    });
                    line.push_str(&format!(
                        " | TRL {:>7.2} {}/s, peak {:>6.0} MiB | ratio {ratio:.2} ({rmin:.2}–{rmax:.2})",
                        peer_median,
                        w.example_unit(),
                        peer_rss as f64 / (1 << 20) as f64
                    ));
                }
                println!("{line}");
                rows.push(row);
            }
        }
    }

    let report = Report {
        git_revision: rlhf_bench::study::git_revision(),
        machine: machine(),
        device: device_name,
        matmul_peak_gflops: Peaks {
            burn: burn_peak / 1e9,
            torch: torch_peak.map(|p| p / 1e9),
        },
        shapes: Shapes {
            batch: BATCH,
            prompt_tokens: PROMPT_WORDS,
            response_tokens: RESPONSE_WORDS,
            new_tokens: NEW_TOKENS,
            samples_per_prompt: SAMPLES_PER_PROMPT,
            vocab: VOCAB,
        },
        repeats: o.repeats,
        workloads: rows,
    };
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report)?;
    rlhf_core::train::fs::write_atomic(&o.out, text.as_bytes())?;
    eprintln!("rlhf-perf: wrote {}", o.out.display());
    Ok(())
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // the first processor's `key : value` line; a model name alone ("AMD EPYC") does not tell
    // the generation, family and model do (AMD family 25 is Zen 3/4, 26 is Zen 5)
    let field = |key: &str| -> String {
        cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    };
    let flags: BTreeMap<&str, bool> = ["avx2", "fma", "avx512f", "avx512_bf16"]
        .into_iter()
        .map(|f| (f, cpuinfo.split_whitespace().any(|w| w == f)))
        .collect();
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu: field("model name"),
        cpu_family: field("cpu family"),
        cpu_model: field("model"),
        cpu_mhz: field("cpu MHz"),
        cpu_flags: flags,
        gemm_x86_v4: rlhf_core::GEMM_X86_V4,
    }
}
