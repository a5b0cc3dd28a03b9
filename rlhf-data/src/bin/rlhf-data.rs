//! `rlhf-data`: look at a data file before training on it.
//!
//! ```text
//! rlhf-data check FILE --kind preference|sft|prompt|kwise|steps [--skip-bad] [--max-errors N] [--KEY-key NAME …]
//! rlhf-data stats FILE --kind … --tokenizer tokenizer.json [--KEY-key NAME …]
//! rlhf-data export-task tldr-synth|arith-steps --out DIR [--n N] [--seed S] [--agreement 0.73]
//! ```
//!
//! `check` exits with status 1 when a record is bad (2 on usage errors), unless `--skip-bad`.

use std::path::PathBuf;
use std::process::ExitCode;

use rlhf_data::tasks::{export_task, task_by_name};
use rlhf_data::{
    ChatTemplate, FieldNames, Kind, KwiseRecord, Loaded, PreferenceRecord, PromptRecord,
    ReadOptions, Record, SftRecord, StepRecord, Tokenizer, read_records,
};

const USAGE: &str = "usage:
  rlhf-data check FILE --kind preference|sft|prompt|kwise|steps [--skip-bad] [--max-errors N] [--prompt-key K] [--chosen-key K] [--rejected-key K] [--completion-key K] [--messages-key K] [--text-key K] [--completions-key K] [--rewards-key K] [--labels-key K]
  rlhf-data stats FILE --kind KIND --tokenizer tokenizer.json [key options as for check]
  rlhf-data export-task tldr-synth|arith-steps --out DIR [--n N] [--seed S] [--agreement A]";

struct Args {
    positional: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(raw: Vec<String>) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut it = raw.into_iter().peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let flag = matches!(name, "skip-bad" | "help");
                let value = if flag {
                    None
                } else {
                    Some(it.next().ok_or_else(|| format!("--{name} needs a value"))?)
                };
                options.push((name.to_string(), value));
            } else {
                positional.push(a);
            }
        }
        Ok(Args {
            positional,
            options,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        match self
            .options
            .iter()
            .find(|(n, _)| !known.contains(&n.as_str()))
        {
            Some((n, _)) => Err(format!("unknown option --{n}")),
            None => Ok(()),
        }
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: `{v}` is not valid")),
        }
    }
}

const KEY_OPTIONS: &[&str] = &[
    "prompt-key",
    "chosen-key",
    "rejected-key",
    "completion-key",
    "messages-key",
    "text-key",
    "completions-key",
    "rewards-key",
    "labels-key",
];

fn field_names(a: &Args) -> FieldNames {
    let mut f = FieldNames::default();
    let slots: [(&str, &mut String); 9] = [
        ("prompt-key", &mut f.prompt),
        ("chosen-key", &mut f.chosen),
        ("rejected-key", &mut f.rejected),
        ("completion-key", &mut f.completion),
        ("messages-key", &mut f.messages),
        ("text-key", &mut f.text),
        ("completions-key", &mut f.completions),
        ("rewards-key", &mut f.rewards),
        ("labels-key", &mut f.labels),
    ];
    for (opt, slot) in slots {
        if let Some(v) = a.get(opt) {
            *slot = v.to_string();
        }
    }
    f
}

/// The prompt and response texts of a record, rendered with the chat template.
trait Texts {
    fn texts(&self, t: &ChatTemplate) -> (String, Vec<String>);
}
impl Texts for PreferenceRecord {
    fn texts(&self, t: &ChatTemplate) -> (String, Vec<String>) {
        (
            t.prompt(&self.prompt),
            vec![t.response(&self.chosen), t.response(&self.rejected)],
        )
    }
}
impl Texts for SftRecord {
    fn texts(&self, t: &ChatTemplate) -> (String, Vec<String>) {
        (t.prompt(&self.prompt), vec![t.response(&self.completion)])
    }
}
impl Texts for PromptRecord {
    fn texts(&self, t: &ChatTemplate) -> (String, Vec<String>) {
        (t.prompt(&self.prompt), Vec::new())
    }
}
impl Texts for KwiseRecord {
    fn texts(&self, t: &ChatTemplate) -> (String, Vec<String>) {
        (
            t.prompt(&self.prompt),
            self.completions.iter().map(|c| t.response(c)).collect(),
        )
    }
}
impl Texts for StepRecord {
    fn texts(&self, _t: &ChatTemplate) -> (String, Vec<String>) {
        (self.prompt.clone(), vec![self.completions.join("\n")])
    }
}

fn report<R>(loaded: &Loaded<R>, file: &str) {
    let r = &loaded.report;
    println!(
        "{file}: read {} records, kept {}, rejected {}",
        r.read, r.kept, r.rejected
    );
    for e in &r.errors {
        println!("  {e}");
    }
    if r.rejected > r.errors.len() {
        println!("  … and {} more", r.rejected - r.errors.len());
    }
}

fn percentile(sorted: &[usize], q: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn run_kind<R: Record + Texts>(cmd: &str, file: &str, a: &Args) -> Result<ExitCode, String> {
    let opts = ReadOptions {
        fields: field_names(a),
        skip_bad: a.flag("skip-bad"),
        max_errors: a.parsed("max-errors", 10)?,
        ..ReadOptions::default()
    };
    let path = PathBuf::from(file);
    let loaded = match read_records::<R>(&path, &opts) {
        Ok(l) => l,
        Err(e) if cmd == "check" => {
            println!("{e}");
            println!("(stopped at the first bad record; --skip-bad reads on and counts them)");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.to_string()),
    };
    if cmd == "check" {
        report(&loaded, file);
        return Ok(if loaded.report.rejected > 0 && !opts.skip_bad {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let tok_path = a
        .get("tokenizer")
        .ok_or("stats needs --tokenizer tokenizer.json")?;
    let tok = Tokenizer::from_file(&PathBuf::from(tok_path), None).map_err(|e| e.to_string())?;
    let template = ChatTemplate::default();
    let (mut prompts, mut responses) = (Vec::new(), Vec::new());
    for r in &loaded.records {
        let (p, rs) = r.texts(&template);
        prompts.push(tok.encode(&p).map_err(|e| e.to_string())?.len());
        for x in rs {
            responses.push(tok.encode(&x).map_err(|e| e.to_string())?.len());
        }
    }
    report(&loaded, file);
    println!(
        "{:<10} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "tokens", "count", "p50", "p90", "p95", "p99", "max"
    );
    for (name, mut v) in [("prompt", prompts), ("response", responses)] {
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        println!(
            "{:<10} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
            name,
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.9),
            percentile(&v, 0.95),
            percentile(&v, 0.99),
            v[v.len() - 1]
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    rlhf_core::train::tune_allocator();
    match run() {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("rlhf-data: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let a = Args::parse(std::env::args().skip(1).collect())?;
    if a.flag("help") || a.positional.is_empty() {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    match a.positional.as_slice() {
        [cmd, file] if cmd == "check" || cmd == "stats" => {
            let mut known = KEY_OPTIONS.to_vec();
            known.extend(["kind", "skip-bad", "max-errors", "tokenizer"]);
            a.check_known(&known)?;
            let kind: Kind = a.get("kind").ok_or("--kind is required")?.parse()?;
            match kind {
                Kind::Preference => run_kind::<PreferenceRecord>(cmd, file, &a),
                Kind::Sft => run_kind::<SftRecord>(cmd, file, &a),
                Kind::Prompt => run_kind::<PromptRecord>(cmd, file, &a),
                Kind::Kwise => run_kind::<KwiseRecord>(cmd, file, &a),
                Kind::Steps => run_kind::<StepRecord>(cmd, file, &a),
            }
        }
        [cmd, name] if cmd == "export-task" => {
            a.check_known(&["out", "n", "seed", "agreement"])?;
            let task = task_by_name(name)
                .ok_or_else(|| format!("unknown task `{name}`: tldr-synth or arith-steps"))?;
            let out = PathBuf::from(a.get("out").ok_or("--out DIR is required")?);
            let summary = export_task(
                task.as_ref(),
                &out,
                a.parsed("n", 1000)?,
                a.parsed("seed", 0)?,
                a.parsed("agreement", 0.73)?,
            )
            .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => Err("expected `check FILE`, `stats FILE` or `export-task NAME`".into()),
    }
}
