//! The pipeline on a user's own preference data (`task.name = "preferences"`): the same SFT,
//! reward model, method and judge as `tldr-synth`, with the file's labels in place of the
//! simulated labeller and the reward model in place of the gold judge.
//!
//! 1. **Read** `task.data.preferences` with `rlhf-data` (any preference layout it reads, JSONL,
//!    `.jsonl.gz` or parquet; a bad record stops the run with its file, line and field unless
//!    `skip_bad`). Conversational records become text through `task.data.chat_template`.
//! 2. **Split** by a hash of the prompt: `eval_share` of the prompts are held out, and a prompt is
//!    never in both splits.
//! 3. **Tokenize**: the user's `tokenizer.json`, or a byte-level BPE trained on the training
//!    split. Prompts keep their last `max_prompt_tokens` tokens, responses (EOS appended) their
//!    first `max_response_tokens`. Pairs whose responses are empty or equal after that are
//!    dropped and counted.
//! 4. **SFT** on the demonstrations file, or on each training pair's prompt and chosen response.
//! 5. **Reward model** (Bradley–Terry, from the SFT backbone of `rm.size`) on the training pairs,
//!    its label accuracy measured on the held-out pairs, its bias centred on the demonstrations.
//! 6. **Method**, as for `tldr-synth`: the on-policy methods on the training prompts against the
//!    RM, DPO/EXO on the training pairs (reporting their implicit reward's accuracy on the
//!    held-out pairs), best-of-n by the RM, or the SFT policy itself.
//! 7. **Judge** on held-out prompts. There is no gold scorer for a user's data, so the RM is the
//!    judge, and its metrics are named `proxy/…`: a policy optimised against this RM is judged by
//!    it (the overoptimisation the gold tasks measure cannot be seen here). `kl` and the lengths
//!    are measured as on the gold tasks. Every judged response, the SFT policy's response to the
//!    same prompt and their scores are written to `WORK/judged.jsonl`.
//!
//! Metrics: `data/records`, `data/rejected`, `data/pairs_dropped`, `data/train_pairs`,
//! `data/eval_pairs`, `data/demos`, `rm/accuracy`, `proxy/mean`, `proxy/se`, `proxy/sft`,
//! `proxy/gain`, `proxy/chosen` (the held-out chosen responses' score),
//! `proxy/win_rate_vs_sft`, `proxy/win_rate_vs_chosen`, `kl`, `response/length`, `response/eos`,
//! `method/eval_reward_accuracy` (DPO/EXO), the FLOPs and `memory/peak_bytes`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use rlhf_core::train::fs::{checksum, write_atomic};
use rlhf_core::{Error, Result};
use rlhf_data::tasks::win_rate;
use rlhf_data::{
    PreferenceRecord, ReadOptions, SftRecord, Split, Tokenizer, hash_split, read_records,
};
use rlhf_models::CausalLm;
use rlhf_reward::{RankedExample, RewardModel, RewardScorer};
use serde::{Deserialize, Serialize};

use crate::cache::{cached_dir, finish_stage_run, stage_run};
use crate::compute::{Workload, flops};
use crate::config::{RunConfig, UserData};
use crate::judge::{proxy_scores, sample};
use crate::method::{MethodInputs, optimise};
use crate::metrics::names;
use crate::pipeline::{RunResult, peak_memory_bytes};
use crate::stages::{RmStage, fit_reward_model, sft_budget, sft_model};
use crate::stats::mean_se;

/// The salt of the train/eval split, so it never depends on the run's seed.
const SPLIT_SALT: &str = "rlhf-bench/preferences";

/// A record as text, before truncation: prompt, chosen response, rejected response.
type RecordText = (String, String, String);

/// A pair as text, after truncation: what the judge and the RM's scorer read.
#[derive(Debug, Clone)]
struct TextPair {
    prompt: String,
    chosen: String,
}

/// Runs a `preferences` configuration (see the module documentation).
// One piece, over 80 lines: the seven steps of the module docs in order, each reading what the
// earlier ones made, their metrics going into the one map `m`. Reading, the RM and the judge are
// calls; tokenizing (tokenizer, train and held-out pairs, demonstrations), SFT and the method's
// prompts stay inline, since each makes several values that later steps read.
pub fn run_preferences(cfg: &RunConfig, cache: &Path, work: &Path) -> Result<RunResult> {
    let start = Instant::now();
    let d = &cfg.task.data;
    let device = rlhf_core::parse_device(&cfg.device)?.autodiff();
    let mut m: BTreeMap<String, f64> = BTreeMap::new();

    // 1. read, 2. split by prompt
    let opts = ReadOptions {
        fields: d.fields.clone(),
        skip_bad: d.skip_bad,
        ..ReadOptions::default()
    };
    let (train_texts, eval_texts) = read_split(d, &opts, &mut m)?;

    // 3. tokenizer, and the data as tokens
    let root = cache.join(format!("data-{:016x}", fingerprint(cfg)?));
    let demo_texts: Vec<(String, String)> = if d.demonstrations.is_empty() {
        train_texts
            .iter()
            .map(|(p, c, _)| (p.clone(), c.clone()))
            .collect()
    } else {
        let t = &d.chat_template;
        read_records::<SftRecord>(Path::new(&d.demonstrations), &opts)?
            .records
            .iter()
            .map(|r| (t.prompt(&r.prompt), t.response(&r.completion)))
            .collect()
    };
    let tok = tokenizer(d, cfg.task.vocab_size, &train_texts, &demo_texts, &root)?;
    let enc = Encoder { tok: &tok, d };
    let mut dropped = 0usize;
    let (train_pairs, train_text) = enc.pairs(&train_texts, cfg.rm.pairs, &mut dropped)?;
    let (eval_pairs, eval_text) = enc.pairs(&eval_texts, cfg.rm.eval_pairs, &mut dropped)?;
    if train_pairs.is_empty() || eval_pairs.is_empty() {
        return Err(Error::Config(format!(
            "{}: no usable {} pairs (responses empty or equal after truncation to {} tokens)",
            d.preferences,
            if train_pairs.is_empty() {
                "training"
            } else {
                "held-out"
            },
            d.max_response_tokens
        )));
    }
    m.insert(names::DATA_PAIRS_DROPPED.into(), dropped as f64);
    m.insert(names::DATA_TRAIN_PAIRS.into(), train_pairs.len() as f64);
    m.insert(names::DATA_EVAL_PAIRS.into(), eval_pairs.len() as f64);
    let sft_data: Vec<(Vec<u32>, Vec<u32>)> = demo_texts
        .iter()
        .take(cfg.task.demos)
        .map(|(p, c)| Ok((enc.prompt(p)?.1, enc.response(c)?)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|(_, c)| !c.is_empty())
        .collect();
    m.insert(names::DATA_DEMOS.into(), sft_data.len() as f64);

    // 4. SFT
    let sft = sft_model(cfg, &cfg.sft.policy_size, &tok, &sft_data, &root, &device)?;
    m.insert(
        names::PARAMS_POLICY.into(),
        sft.shape.non_embedding_params() as f64,
    );
    m.insert(names::TOKENS_SFT.into(), sft.tokens);
    m.insert(names::FLOPS_SFT.into(), sft.flops);

    // 5. the reward model on the file's labels
    let stage = reward_model(
        cfg,
        &tok,
        train_pairs,
        &eval_pairs,
        &sft_data,
        &root,
        &device,
    )?;
    m.insert(names::RM_ACCURACY.into(), stage.eval_accuracy);
    m.insert(
        names::PARAMS_RM.into(),
        stage.shape.non_embedding_params() as f64,
    );
    m.insert(names::FLOPS_RM.into(), stage.flops);
    m.insert(names::TOKENS_RM.into(), stage.tokens);

    // 6. the method
    let train_prompts = unique_prompts(&train_text, cfg.task.train_prompts);
    let eval_prompts = unique_prompts(&eval_text, cfg.task.eval_prompts);
    let mut query_length = 1;
    for p in train_prompts.iter().chain(&eval_prompts) {
        query_length = query_length.max(tok.encode_start(p)?.len());
    }
    let method_start = Instant::now();
    let mut curve = Vec::new();
    let inputs = MethodInputs {
        sft: &sft.model,
        policy_shape: &sft.shape,
        rm: Some(&stage),
        tok: &tok,
        train_prompts: &train_prompts,
        sft_data: &sft_data,
        query_length,
        eval_pairs: &eval_pairs,
        curve: None,
        length_slope: None,
    };
    let policy = optimise(cfg, &inputs, work, &device, &mut m, &mut curve)?;
    m.insert(
        names::TIME_METHOD.into(),
        method_start.elapsed().as_secs_f64(),
    );

    // 7. the judge: the RM, on held-out prompts
    judge_by_rm(
        cfg,
        &policy,
        &sft.model,
        &stage.rm,
        &tok,
        &eval_prompts,
        &eval_text,
        work,
        &device,
        &mut m,
    )?;
    m.insert(names::MEMORY_PEAK.into(), peak_memory_bytes());
    Ok(RunResult {
        metrics: m,
        items: BTreeMap::new(),
        curve,
        wall_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Steps 1 and 2: the file's records as (prompt, chosen, rejected) text through the chat
/// template, split by a hash of the prompt into training and held-out pairs, with the counts of
/// records read and rejected in `m`.
fn read_split(
    d: &UserData,
    opts: &ReadOptions,
    m: &mut BTreeMap<String, f64>,
) -> Result<(Vec<RecordText>, Vec<RecordText>)> {
    let loaded = read_records::<PreferenceRecord>(Path::new(&d.preferences), opts)?;
    for e in &loaded.report.errors {
        tracing::warn!("skipped: {e}");
    }
    m.insert(names::DATA_RECORDS.into(), loaded.report.read as f64);
    m.insert(names::DATA_REJECTED.into(), loaded.report.rejected as f64);
    let t = &d.chat_template;
    let texts: Vec<RecordText> = loaded
        .records
        .iter()
        .map(|r| {
            (
                t.prompt(&r.prompt),
                t.response(&r.chosen),
                t.response(&r.rejected),
            )
        })
        .collect();
    let (train, eval): (Vec<_>, Vec<_>) = texts
        .into_iter()
        .partition(|(p, _, _)| hash_split(p, SPLIT_SALT, d.eval_share, 0.0) == Split::Train);
    if train.is_empty() || eval.is_empty() {
        return Err(Error::Config(format!(
            "{}: {} records give {} training and {} held-out pairs with eval_share {}: both need at least one",
            d.preferences,
            loaded.records.len(),
            train.len(),
            eval.len(),
            d.eval_share
        )));
    }
    Ok((train, eval))
}

/// The reward model of `cfg.rm` (from the SFT backbone of `rm.size`) on the file's training
/// pairs, its label accuracy measured on the held-out pairs; cached per size, both pair counts,
/// settings and the backbone's SFT budget (seed included).
fn reward_model(
    cfg: &RunConfig,
    tok: &Tokenizer,
    train_pairs: Vec<RankedExample>,
    eval_pairs: &[RankedExample],
    sft_data: &[(Vec<u32>, Vec<u32>)],
    root: &Path,
    device: &Device,
) -> Result<RmStage> {
    let backbone = sft_model(cfg, &cfg.rm.size, tok, sft_data, root, device)?;
    let rm_shape = backbone.shape.clone();
    let r = &cfg.rm;
    // everything the model and its summary depend on: the backbone's SFT budget, both pair sets,
    // the RM's own settings (the seed is in the budget)
    let rm_dir = root.join(format!(
        "rm-{}-p{}-v{}-e{}-lr{}-{}",
        r.size,
        train_pairs.len(),
        eval_pairs.len(),
        r.epochs,
        r.lr,
        sft_budget(cfg, sft_data.len())
    ));
    cached_dir(&rm_dir, |tmp| {
        let (rm, report) = fit_reward_model(
            cfg,
            backbone.model.clone(),
            &rm_shape,
            &train_pairs,
            eval_pairs,
            sft_data,
            &stage_run(tmp),
            device,
        )?;
        rm.save(&tmp.join("model"))?;
        finish_stage_run(tmp)?;
        let summary = RmSummary {
            eval_accuracy: report.eval.accuracy,
        };
        let json = serde_json::to_string(&summary).map_err(|e| Error::Record(e.to_string()))?;
        write_atomic(&tmp.join("summary.json"), json.as_bytes())
    })?;
    let summary_path = rm_dir.join("summary.json");
    let summary: RmSummary = std::fs::read_to_string(&summary_path)
        .map_err(|e| Error::io(&summary_path, e))
        .and_then(|s| {
            serde_json::from_str(&s)
                .map_err(|e| Error::Record(format!("{}: {e}", summary_path.display())))
        })?;
    let rm_tokens: u64 = train_pairs
        .iter()
        .map(|x| (2 * x.prompt.len() + x.responses[0].len() + x.responses[1].len()) as u64)
        .sum();
    Ok(RmStage {
        key: rm_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        gold_correct: Vec::new(),
        rm: RewardModel::load(&rm_dir.join("model"), device)?,
        shape: rm_shape.clone(),
        pairs: train_pairs,
        eval_accuracy: summary.eval_accuracy,
        eval_gold_accuracy: f64::NAN,
        labeller_agreement: f64::NAN,
        tokens: (rm_tokens * r.epochs as u64) as f64,
        flops: (flops(
            &rm_shape,
            Workload::Train {
                tokens: rm_tokens * r.epochs as u64,
            },
        ) + flops(&rm_shape, Workload::Forward { tokens: rm_tokens })) as f64,
    })
}

#[derive(Serialize, Deserialize)]
struct RmSummary {
    eval_accuracy: f64,
}

/// The judge of a user's data: the policy and the SFT policy sampled on the held-out prompts
/// and scored by the RM (`proxy/…`, against the held-out chosen responses too), the policy's KL
/// and length, and every judged response with its SFT counterpart in `WORK/judged.jsonl`.
#[allow(clippy::too_many_arguments)]
fn judge_by_rm(
    cfg: &RunConfig,
    policy: &CausalLm,
    sft: &CausalLm,
    rm: &RewardModel,
    tok: &Tokenizer,
    eval_prompts: &[String],
    eval_text: &[TextPair],
    work: &Path,
    device: &Device,
    m: &mut BTreeMap<String, f64>,
) -> Result<()> {
    let scorer = RewardScorer::new(rm.clone(), tok.clone(), device);
    let j = &cfg.judge;
    let judge = |model: &CausalLm| {
        sample(
            model,
            tok,
            eval_prompts,
            1,
            j.temperature,
            j.max_new_tokens,
            cfg.seed.wrapping_add(11),
        )
    };
    let (judged, baseline) = (judge(policy)?, judge(sft)?);
    let score = |texts: &[String]| proxy_scores(&scorer, eval_prompts, texts, 1);
    let proxy = score(&judged.texts)?;
    let proxy_sft = score(&baseline.texts)?;
    let kl = crate::judge::kl_per_prompt(
        policy,
        sft,
        tok,
        eval_prompts,
        &judged,
        j.temperature,
        device,
    )?;
    m.insert(names::KL.into(), mean_se(&kl).0);
    m.insert(
        names::LENGTH.into(),
        crate::stats::mean(judged.ids.iter().map(|r| r.len() as f64)),
    );
    let chosen: Vec<String> = eval_prompts
        .iter()
        .map(|p| {
            eval_text
                .iter()
                .find(|x| &x.prompt == p)
                .map(|x| x.chosen.clone())
                .expect("every eval prompt comes from a held-out pair")
        })
        .collect();
    let proxy_chosen = score(&chosen)?;
    let (mean, se) = mean_se(&proxy);
    m.insert(names::PROXY.into(), mean);
    m.insert(names::PROXY_SE.into(), se);
    m.insert(names::PROXY_SFT.into(), mean_se(&proxy_sft).0);
    m.insert(names::PROXY_GAIN.into(), mean - mean_se(&proxy_sft).0);
    m.insert(names::PROXY_CHOSEN.into(), mean_se(&proxy_chosen).0);
    m.insert(names::PROXY_WIN_VS_SFT.into(), win_rate(&proxy, &proxy_sft));
    m.insert(
        names::PROXY_WIN_VS_CHOSEN.into(),
        win_rate(&proxy, &proxy_chosen),
    );
    write_judged(
        work,
        eval_prompts,
        &judged.texts,
        &proxy,
        &baseline.texts,
        &proxy_sft,
    )
}

/// `WORK/judged.jsonl`: what the policy said to each held-out prompt, beside the SFT policy,
/// with the RM's scores, for people to read.
fn write_judged(
    work: &Path,
    prompts: &[String],
    texts: &[String],
    scores: &[f64],
    sft_texts: &[String],
    sft_scores: &[f64],
) -> Result<()> {
    let mut lines = String::new();
    for i in 0..prompts.len() {
        let line = serde_json::json!({
            "prompt": prompts[i],
            "response": texts[i],
            "score": scores[i],
            "sft_response": sft_texts[i],
            "sft_score": sft_scores[i],
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    write_atomic(&work.join("judged.jsonl"), lines.as_bytes())
}

/// Truncation to the configured lengths.
struct Encoder<'a> {
    tok: &'a Tokenizer,
    d: &'a UserData,
}

impl Encoder<'_> {
    /// The prompt's last `max_prompt_tokens` tokens, as text and as the tokens of that text (the
    /// scorers and samplers read text, so both must agree).
    /// Both begin as the tokenizer begins a text (Llama's BOS).
    fn prompt(&self, p: &str) -> Result<(String, Vec<u32>)> {
        let ids = self.tok.encode_start(p)?;
        if ids.len() <= self.d.max_prompt_tokens {
            return Ok((p.to_string(), ids));
        }
        let body = self.tok.encode(p)?;
        let keep = (self.d.max_prompt_tokens)
            .saturating_sub(self.tok.start().len())
            .min(body.len());
        let text = self.tok.decode(&body[body.len() - keep..])?;
        let ids = self.tok.encode_start(&text)?;
        Ok((text, ids))
    }

    /// The response and EOS, cut to `max_response_tokens` (a cut response has no EOS).
    fn response(&self, r: &str) -> Result<Vec<u32>> {
        if r.trim().is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = self.tok.encode(r)?;
        ids.push(self.tok.eos_id());
        ids.truncate(self.d.max_response_tokens);
        Ok(ids)
    }

    /// The first `cap` usable pairs of `texts` as tokens, with their prompt and chosen response
    /// as text; a pair whose responses are empty or equal after truncation is counted in
    /// `dropped` and skipped.
    fn pairs(
        &self,
        texts: &[RecordText],
        cap: usize,
        dropped: &mut usize,
    ) -> Result<(Vec<RankedExample>, Vec<TextPair>)> {
        let mut pairs = Vec::new();
        let mut text = Vec::new();
        for (p, c, r) in texts {
            if pairs.len() == cap {
                break;
            }
            let (prompt_text, prompt) = self.prompt(p)?;
            let (chosen, rejected) = (self.response(c)?, self.response(r)?);
            if chosen.is_empty() || rejected.is_empty() || chosen == rejected {
                *dropped += 1;
                continue;
            }
            text.push(TextPair {
                prompt: prompt_text,
                chosen: self.tok.decode(&chosen)?,
            });
            pairs.push(RankedExample {
                prompt,
                responses: vec![chosen, rejected],
                margin: None,
                gold: None,
            });
        }
        Ok((pairs, text))
    }
}

/// The distinct prompts of `pairs`, in file order, at most `cap`.
fn unique_prompts(pairs: &[TextPair], cap: usize) -> Vec<String> {
    let mut seen = BTreeSet::new();
    pairs
        .iter()
        .filter(|x| seen.insert(x.prompt.as_str()))
        .take(cap)
        .map(|x| x.prompt.clone())
        .collect()
}

/// The user's tokenizer, or a BPE trained on the training split (and the demonstrations),
/// cached under `root`.
fn tokenizer(
    d: &UserData,
    vocab_size: usize,
    train: &[RecordText],
    demos: &[(String, String)],
    root: &Path,
) -> Result<Tokenizer> {
    if !d.tokenizer.is_empty() {
        let eos = (!d.eos_token.is_empty()).then_some(d.eos_token.as_str());
        return Tokenizer::from_file(Path::new(&d.tokenizer), eos);
    }
    let dir = root.join(format!("tokenizer-{vocab_size}"));
    cached_dir(&dir, |tmp| {
        let corpus = train
            .iter()
            .flat_map(|(p, c, r)| [p.as_str(), c.as_str(), r.as_str()])
            .chain(demos.iter().flat_map(|(p, c)| [p.as_str(), c.as_str()]));
        Tokenizer::train_bpe(corpus, vocab_size)?.save(&tmp.join("tokenizer.json"))
    })?;
    Tokenizer::from_file(&dir.join("tokenizer.json"), None)
}

/// A key of everything that decides the data: the bytes of the files and the task settings, so
/// cached models never outlive an edit of the data.
fn fingerprint(cfg: &RunConfig) -> Result<u64> {
    let d = &cfg.task.data;
    let settings = serde_json::to_string(&cfg.task).map_err(|e| Error::Record(e.to_string()))?;
    let mut h = checksum(settings.as_bytes());
    for f in [&d.preferences, &d.demonstrations, &d.tokenizer] {
        if f.is_empty() {
            continue;
        }
        let path = Path::new(f.as_str());
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            let mut both = h.to_le_bytes().to_vec();
            both.extend_from_slice(&checksum(&buf[..n]).to_le_bytes());
            h = checksum(&both);
        }
    }
    Ok(h)
}
