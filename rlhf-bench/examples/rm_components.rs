//! What a reward model of the study learned of `tldr-synth`'s gold score: how often it orders a
//! comparison pair as the gold score does, split by what differs between the two responses (their
//! length in words, and which gold components differ: `TldrSynth::gold`).
//!
//! ```sh
//! cargo run -p rlhf-bench --example rm_components -- RM_STAGE PAIRS
//! ```
//!
//! `RM_STAGE` is an RM stage directory of a study's cache
//! (`target/bench-scaling/quick/cache/tldr-…/rm-…`, with `model/` inside; the tokenizer is its
//! neighbour `tokenizer-…`), `PAIRS` a `pairs.json` of an
//! RM stage: another seed's, for prompts and samples the RM has not seen. The RM scores the stored
//! token ids, as the stage's gold-order accuracy does. Prints one markdown row per group of the
//! pairs whose gold differs: how many, the RM's agreement with the gold order (a tie counts a
//! half) and its binomial standard error (which treats the pairs as independent: one pair per
//! prompt).

use std::cmp::Ordering;
use std::error::Error;
use std::path::{Path, PathBuf};

use rlhf_data::Tokenizer;
use rlhf_data::tasks::{Task, TldrSynth, strip_eos};
use rlhf_reward::{RankedExample, RewardModel, score_ranked};
use serde::Deserialize;

/// A labelled pair as the RM stage stores it: token ids, and the two responses' gold scores.
#[derive(Deserialize)]
struct Pair {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
    gold: [f64; 2],
}

/// The gold components with a row of their own: pairs where only that component differs.
const COMPONENTS: [&str; 3] = ["completeness", "faithfulness", "well_formedness"];

/// A group of pairs: how many, and how many the RM orders as gold does.
#[derive(Default)]
struct Group {
    pairs: usize,
    agree: f64,
}

impl Group {
    fn add(&mut self, agree: f64) {
        self.pairs += 1;
        self.agree += agree;
    }

    fn row(&self, name: &str) -> String {
        if self.pairs == 0 {
            return format!("| {name} | 0 | — | — |");
        }
        let n = self.pairs as f64;
        let p = self.agree / n;
        format!(
            "| {name} | {} | {p:.3} | {:.3} |",
            self.pairs,
            (p * (1.0 - p) / n).sqrt()
        )
    }
}

/// A response's length in words, as the gold score counts it (without the EOS).
fn words(response: &str) -> usize {
    strip_eos(response).0.split_whitespace().count()
}

/// The cache's tokenizer: the one `tokenizer-…` directory beside the RM stage.
fn tokenizer_beside(stage: &Path) -> Result<Tokenizer, Box<dyn Error>> {
    let stage = std::fs::canonicalize(stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    let cache = stage
        .parent()
        .ok_or("the RM stage has no parent directory")?;
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tokenizer-"))
        })
        .collect();
    let [dir] = dirs.as_slice() else {
        return Err(format!(
            "{}: expected one tokenizer-… directory, found {}",
            cache.display(),
            dirs.len()
        )
        .into());
    };
    Ok(Tokenizer::from_file(&dir.join("tokenizer.json"), None)?)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [stage, pairs] = args.as_slice() else {
        return Err("usage: rm_components RM_STAGE PAIRS".into());
    };
    let device = rlhf_core::device_from_env()?;
    let tok = tokenizer_beside(stage)?;
    let rm = RewardModel::load(&stage.join("model"), &device)?;
    let task = TldrSynth::default();
    let pairs: Vec<Pair> = serde_json::from_str(&std::fs::read_to_string(pairs)?)?;

    let ranked: Vec<RankedExample> = pairs
        .iter()
        .map(|p| RankedExample {
            prompt: p.prompt.clone(),
            responses: vec![p.chosen.clone(), p.rejected.clone()],
            margin: None,
            gold: None,
        })
        .collect();
    let scores = score_ranked(&rm.model, &ranked, 64, &device)?;
    let mut prompts = Vec::new();
    let mut texts = [Vec::new(), Vec::new()];
    for p in &pairs {
        prompts.push(tok.decode(&p.prompt)?);
        texts[0].push(tok.decode(&p.chosen)?);
        texts[1].push(tok.decode(&p.rejected)?);
    }

    let [mut all, mut longer, mut shorter, mut same_length]: [Group; 4] = Default::default();
    let mut only: [Group; 3] = Default::default();
    let mut same_length_other_facts = Group::default();
    for (i, pair) in pairs.iter().enumerate() {
        let (a, b) = (&texts[0][i], &texts[1][i]);
        let gold = [task.gold(&prompts[i], a), task.gold(&prompts[i], b)];
        if (gold[0].total - pair.gold[0]).abs() > 1e-9
            || (gold[1].total - pair.gold[1]).abs() > 1e-9
        {
            return Err(format!("pair {i}: the decoded texts do not score the stored gold").into());
        }
        let gold_gap = gold[0].total - gold[1].total;
        if gold_gap == 0.0 {
            continue;
        }
        let rm_gap = f64::from(scores[i][0] - scores[i][1]);
        let agree = if rm_gap == 0.0 {
            0.5
        } else {
            f64::from(u8::from((rm_gap > 0.0) == (gold_gap > 0.0)))
        };
        all.add(agree);
        let lengths = (words(a), words(b));
        let by_length = match lengths.0.cmp(&lengths.1) {
            Ordering::Equal => &mut same_length,
            order if (order == Ordering::Greater) == (gold_gap > 0.0) => &mut longer,
            _ => &mut shorter,
        };
        by_length.add(agree);
        let gap = |c: &str| (gold[0].component(c) - gold[1].component(c)).abs() > 1e-12;
        if lengths.0 == lengths.1 && gap("faithfulness") && !gap("well_formedness") && !gap("eos") {
            same_length_other_facts.add(agree);
        }
        let differs: Vec<&str> = gold[0]
            .components
            .iter()
            .map(|c| c.0)
            .filter(|c| gap(c))
            .collect();
        if let [c] = differs.as_slice()
            && let Some(k) = COMPONENTS.iter().position(|x| x == c)
        {
            only[k].add(agree);
        }
    }

    println!("| pairs whose gold differs | pairs | RM agrees with gold | standard error |");
    println!("| --- | ---: | ---: | ---: |");
    println!("{}", all.row("all"));
    println!("{}", longer.row("gold prefers the longer response"));
    println!("{}", shorter.row("gold prefers the shorter response"));
    println!("{}", same_length.row("equal length in words"));
    println!(
        "{}",
        same_length_other_facts.row("equal length, other facts, equally well-formed")
    );
    for (c, g) in COMPONENTS.iter().zip(&only) {
        println!("{}", g.row(&format!("only {c} differs")));
    }
    Ok(())
}
