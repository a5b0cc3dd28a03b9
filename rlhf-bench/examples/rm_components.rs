//! What a reward model of the study learned of `tldr-synth`'s gold score: how often it orders a
//! comparison pair as the gold score does, split by what differs between the two responses (their
//! length in words, and which gold components differ: `TldrSynth::gold`).
//!
//! ```sh
//! cargo run -p rlhf-bench --example rm_components -- RM_STAGE PAIRS
//! ```
//!
//! `RM_STAGE` is an RM stage directory of a study's cache (`target/bench-scaling/quick/cache/rm-…`,
//! with `model/` inside; the tokenizer is the cache's `tokenizer-…`), `PAIRS` a `pairs.json` of an
//! RM stage: another seed's, for prompts and samples the RM has not seen. Prints one markdown row
//! per group: the pairs whose gold differs, the RM's agreement with the gold order (a tie counts a
//! half) and its standard error.

use std::cmp::Ordering;
use std::error::Error;
use std::path::{Path, PathBuf};

use rlhf_core::Scorer;
use rlhf_data::Tokenizer;
use rlhf_data::tasks::{GoldScore, Task, TldrSynth};
use rlhf_reward::{RewardModel, RewardScorer};
use serde::Deserialize;

/// A labelled pair as the RM stage stores it: token ids, and the two responses' gold scores.
#[derive(Deserialize)]
struct Pair {
    prompt: Vec<u32>,
    chosen: Vec<u32>,
    rejected: Vec<u32>,
    gold: [f64; 2],
}

/// The gold components the groups split by (`eos` rarely differs between two samples).
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
        let n = self.pairs.max(1) as f64;
        let p = self.agree / n;
        format!(
            "| {name} | {} | {p:.3} | {:.3} |",
            self.pairs,
            (p * (1.0 - p) / n).sqrt()
        )
    }
}

fn component(g: &GoldScore, name: &str) -> f64 {
    g.components
        .iter()
        .find(|c| c.0 == name)
        .map_or(0.0, |c| c.1)
}

/// The cache's tokenizer: the one `tokenizer-…` directory beside the RM stage.
fn tokenizer_beside(stage: &Path) -> Result<Tokenizer, Box<dyn Error>> {
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
    let rm = RewardScorer::new(
        RewardModel::load(&stage.join("model"), &device)?,
        tok.clone(),
        &device,
    );
    let task = TldrSynth::default();
    let pairs: Vec<Pair> = serde_json::from_str(&std::fs::read_to_string(pairs)?)?;

    let mut prompts = Vec::new();
    let mut texts = [Vec::new(), Vec::new()];
    for p in &pairs {
        prompts.push(tok.decode(&p.prompt)?);
        texts[0].push(tok.decode(&p.chosen)?);
        texts[1].push(tok.decode(&p.rejected)?);
    }
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let mut scores = Vec::new();
    for side in &texts {
        let refs: Vec<&str> = side.iter().map(String::as_str).collect();
        scores.push(rm.score(&prompt_refs, &refs)?);
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
        let rm_gap = f64::from(scores[0][i] - scores[1][i]);
        let agree = if rm_gap == 0.0 {
            0.5
        } else {
            f64::from(u8::from((rm_gap > 0.0) == (gold_gap > 0.0)))
        };
        all.add(agree);
        let words = |t: &str| t.split_whitespace().count();
        let by_length = match words(a).cmp(&words(b)) {
            Ordering::Equal => &mut same_length,
            order if (order == Ordering::Greater) == (gold_gap > 0.0) => &mut longer,
            _ => &mut shorter,
        };
        by_length.add(agree);
        let gap = |c: &str| (component(&gold[0], c) - component(&gold[1], c)).abs() > 1e-12;
        if words(a) == words(b) && gap("faithfulness") && !gap("well_formedness") {
            same_length_other_facts.add(agree);
        }
        let differs: Vec<usize> = (0..COMPONENTS.len())
            .filter(|&c| gap(COMPONENTS[c]))
            .collect();
        if let ([c], false) = (differs.as_slice(), gap("conciseness")) {
            only[*c].add(agree);
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
