//! Looking at a data file before training on it: `check` (does every record read, and if not,
//! where is the first bad one) and `stats` (token lengths), shared by the `rlhf check` and
//! `rlhf-data` commands.

use std::fmt::Write as _;
use std::path::Path;

use rlhf_base::Result;

use crate::records::{
    Kind, KwiseRecord, PreferenceRecord, PromptRecord, SftRecord, StepRecord, UnpairedRecord,
};
use crate::{ChatTemplate, Loaded, ReadOptions, Record, Tokenizer, read_records};

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

impl Texts for UnpairedRecord {
    fn texts(&self, t: &ChatTemplate) -> (String, Vec<String>) {
        (t.prompt(&self.prompt), vec![t.response(&self.completion)])
    }
}

/// What a check or a stats run found: the text to print and whether every record read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// `FILE: read N records, kept K, rejected R`, the first errors, and (stats) the length table.
    pub text: String,
    /// No record was rejected and the read did not stop at a bad one.
    pub clean: bool,
}

fn summary<R>(loaded: &Loaded<R>, file: &Path) -> String {
    let r = &loaded.report;
    let mut out = format!(
        "{}: read {} records, kept {}, rejected {}\n",
        file.display(),
        r.read,
        r.kept,
        r.rejected
    );
    for e in &r.errors {
        let _ = writeln!(out, "  {e}");
    }
    if r.rejected > r.errors.len() {
        let _ = writeln!(out, "  … and {} more", r.rejected - r.errors.len());
    }
    out
}

fn percentile(sorted: &[usize], q: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn inspect_kind<R: Record + Texts>(
    path: &Path,
    opts: &ReadOptions,
    tokenizer: Option<&Tokenizer>,
) -> Result<Inspection> {
    let loaded = match read_records::<R>(path, opts) {
        Ok(l) => l,
        Err(e) if tokenizer.is_none() => {
            return Ok(Inspection {
                text: format!(
                    "{e}\n(stopped at the first bad record; --skip-bad reads on and counts them)\n"
                ),
                clean: false,
            });
        }
        Err(e) => return Err(e),
    };
    let mut text = summary(&loaded, path);
    let clean = loaded.report.rejected == 0;
    if let Some(tok) = tokenizer {
        let template = ChatTemplate::default();
        let (mut prompts, mut responses) = (Vec::new(), Vec::new());
        for r in &loaded.records {
            let (p, rs) = r.texts(&template);
            prompts.push(tok.encode_start(&p)?.len());
            for x in rs {
                responses.push(tok.encode(&x)?.len());
            }
        }
        let _ = writeln!(
            text,
            "{:<10} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "tokens", "count", "p50", "p90", "p95", "p99", "max"
        );
        for (name, mut v) in [("prompt", prompts), ("response", responses)] {
            v.sort_unstable();
            if v.is_empty() {
                continue;
            }
            let _ = writeln!(
                text,
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
    }
    Ok(Inspection { text, clean })
}

/// Reads every record of `path` as `kind`: with a `tokenizer`, also the token lengths of prompts
/// and responses (percentiles). Without one, a bad record ends the check with its location
/// (unless `opts.skip_bad`), which the returned text says.
pub fn inspect(
    path: &Path,
    kind: Kind,
    opts: &ReadOptions,
    tokenizer: Option<&Tokenizer>,
) -> Result<Inspection> {
    match kind {
        Kind::Preference => inspect_kind::<PreferenceRecord>(path, opts, tokenizer),
        Kind::Sft => inspect_kind::<SftRecord>(path, opts, tokenizer),
        Kind::Prompt => inspect_kind::<PromptRecord>(path, opts, tokenizer),
        Kind::Kwise => inspect_kind::<KwiseRecord>(path, opts, tokenizer),
        Kind::Steps => inspect_kind::<StepRecord>(path, opts, tokenizer),
        Kind::Unpaired => inspect_kind::<UnpairedRecord>(path, opts, tokenizer),
    }
}
