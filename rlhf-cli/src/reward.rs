//! `--reward SPEC`: what scores the on-policy trainers' samples, written on the command line.
//!
//! | spec | scorer |
//! | --- | --- |
//! | `DIR` or `rm:DIR` | a reward model (what `rlhf rm` wrote, or any sequence-classification checkpoint) |
//! | `exact-match`, `exact-match:FIELD` | 1 when the response equals the prompt record's `FIELD` (default `answer`), else 0 |
//! | `regex:PATTERN` | 1 when the response matches the pattern, else 0 |
//! | `length`, `length:SCALE` | words × `SCALE` (default 0.1): the length-only control |
//! | `judge:DIR` | a causal LM checkpoint as an LLM judge (LongReward's four dimensions, the expected rating 0–9; `rlhf_reward::LlmJudge`) |
//! | `sum(A,B,…)`, `mean(A,B,…)`, `min(A,B,…)`, `mean-minus-std:λ(A,B,…)` | a combination of the specs inside (`sum` is TRL's for several reward functions) |
//!
//! `--reward-weights W…` weights the terms of a top-level `sum(…)` (or a single spec), as TRL's
//! `reward_weights`. The on-policy trainers log each top-level term's own scores (a single
//! reward's too) as `rewards/{name}/mean` and `rewards/{name}/std`, the name being a reward
//! model's directory name, as TRL names one, `exact-match`, `regex`, `length`, a judge's
//! directory name or a nested combination's kind; a repeated name gets `_2`, `_3`, … where TRL
//! would pool the repeats under one name.
//!
//! A spec that names a reward model also gives the on-policy trainers their critic's starting
//! point (TL;DR detail 6: the value model starts from the reward model). A reward model reads
//! each sample as `rlhf rm` encoded its training data, in its own tokenizer and chat format
//! ([`crate::reencode`]); a critic reads the policy's ids, so it starts from a reward model only
//! of the policy's ids.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::Device;
use rlhf_core::Scorer;
use rlhf_data::Tokenizer;
use rlhf_models::Precision;
use rlhf_reward::{
    Combine, EnsembleScorer, ExactMatchScorer, JudgeConfig, LengthScorer, LlmJudge, RegexScorer,
    RewardKind, RewardScorer,
};

use crate::data::Prompts;
use crate::load::{self, TemplateChoice};
use crate::reencode::ReEncoded;

/// A parsed `--reward` spec.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A reward model's directory.
    Model(PathBuf),
    /// Exact match against a field of the prompt record.
    ExactMatch(String),
    /// A regular expression.
    Regex(String),
    /// Words × scale.
    Length(f32),
    /// A causal LM checkpoint as an LLM judge.
    Judge(PathBuf),
    /// An ensemble.
    Ensemble(Combine, Vec<Spec>),
    /// A sum of the specs weighted by the weights (one each).
    Weighted(Vec<f32>, Vec<Spec>),
}

/// Splits `s` at its top-level commas (those outside parentheses).
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts
}

impl std::str::FromStr for Spec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Spec> {
        let s = s.trim();
        if let Some(open) = s.find('(')
            && s.ends_with(')')
        {
            let (head, inner) = (&s[..open], &s[open + 1..s.len() - 1]);
            let combine = match head.split_once(':') {
                None if head == "sum" => Combine::Sum,
                None if head == "mean" => Combine::Mean,
                None if head == "min" => Combine::Min,
                Some(("mean-minus-std", l)) => Combine::MeanMinusStd {
                    lambda: l
                        .parse()
                        .map_err(|_| anyhow!("mean-minus-std:λ needs a number, got `{l}`"))?,
                },
                None if head == "mean-minus-std" => Combine::MeanMinusStd { lambda: 1.0 },
                _ => bail!("unknown combination `{head}`: sum, mean, min or mean-minus-std:λ"),
            };
            let members = split_top(inner)
                .into_iter()
                .map(str::parse)
                .collect::<Result<Vec<Spec>>>()?;
            return Ok(Spec::Ensemble(combine, members));
        }
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) if ["rm", "exact-match", "regex", "length", "judge"].contains(&k) => {
                (k, Some(a))
            }
            _ => (s, None),
        };
        Ok(match (kind, arg) {
            ("rm", Some(dir)) => Spec::Model(PathBuf::from(dir)),
            ("exact-match", field) => Spec::ExactMatch(field.unwrap_or("answer").to_string()),
            ("regex", Some(p)) => Spec::Regex(p.to_string()),
            ("judge", Some(dir)) => Spec::Judge(PathBuf::from(dir)),
            ("length", scale) => Spec::Length(match scale {
                Some(x) => x
                    .parse()
                    .map_err(|_| anyhow!("length:SCALE needs a number, got `{x}`"))?,
                None => 0.1,
            }),
            _ if Path::new(s).join("config.json").is_file() => Spec::Model(PathBuf::from(s)),
            _ => bail!(
                "unknown reward `{s}`: a reward-model directory (or rm:DIR), exact-match[:FIELD], \
                 regex:PATTERN, length[:SCALE], judge:DIR, or sum(…)/mean(…)/min(…)/\
                 mean-minus-std:λ(…) of these"
            ),
        })
    }
}

impl Spec {
    /// The reward models the spec names, in order.
    pub fn models(&self) -> Vec<&Path> {
        match self {
            Spec::Model(p) => vec![p.as_path()],
            Spec::Ensemble(_, members) | Spec::Weighted(_, members) => {
                members.iter().flat_map(Spec::models).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The spec with its terms weighted (`--reward-weights`, TRL's `reward_weights`): those of a
    /// top-level `sum(…)`, one weight each, or a single spec's one term.
    pub fn weighted(self, weights: &[f32]) -> Result<Spec> {
        let members = match self {
            Spec::Ensemble(Combine::Sum, members) => members,
            Spec::Ensemble(..) | Spec::Weighted(..) => bail!(
                "--reward-weights weights the terms of sum(…) (TRL's sum of reward functions), \
                 not of another combination"
            ),
            single => vec![single],
        };
        if weights.len() != members.len() {
            bail!(
                "number of reward weights ({}) must match number of reward functions ({})",
                weights.len(),
                members.len()
            );
        }
        Ok(Spec::Weighted(weights.to_vec(), members))
    }

    /// The spec as the trainers take it: a single reward becomes a sum of one term, so that its
    /// scores are logged by name (`rewards/{name}/*`) as TRL logs every reward function's; a
    /// combination stays as it is.
    pub fn named(self) -> Spec {
        match self {
            Spec::Ensemble(..) | Spec::Weighted(..) => self,
            single => Spec::Weighted(vec![1.0], vec![single]),
        }
    }

    /// Whether the spec's scores are a weighted sum of its terms' (`sum(…)`, `--reward-weights`,
    /// or a single reward), which GDPO's normalisation needs.
    pub fn is_weighted_sum(&self) -> bool {
        !matches!(self, Spec::Ensemble(c, _) if *c != Combine::Sum)
    }

    /// The name of the spec's scores among an ensemble's parts: a model's or a judge's directory
    /// name, or the kind.
    fn label(&self) -> String {
        let dir_name = |p: &Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        match self {
            Spec::Model(dir) | Spec::Judge(dir) => dir_name(dir),
            Spec::ExactMatch(_) => "exact-match".into(),
            Spec::Regex(_) => "regex".into(),
            Spec::Length(_) => "length".into(),
            Spec::Ensemble(combine, _) => match combine {
                Combine::Sum => "sum",
                Combine::Mean => "mean",
                Combine::Min => "min",
                Combine::MeanMinusStd { .. } => "mean-minus-std",
            }
            .into(),
            Spec::Weighted(..) => "sum".into(),
        }
    }

    /// The scorer, its reward models held in `frozen`'s dtype, their Jinja chat templates
    /// rendering with the policy's `--chat-template-kwargs` (`variables`).
    pub fn build(
        &self,
        tokenizer: &Tokenizer,
        prompts: &Prompts,
        device: &Device,
        (frozen, variables): (Precision, Option<&str>),
    ) -> Result<Box<dyn Scorer>> {
        let eos = tokenizer.eos_text();
        Ok(match self {
            Spec::Model(dir) => reward_model(dir, tokenizer, prompts, device, (frozen, variables))?,
            Spec::ExactMatch(field) => {
                let mut answers = Vec::with_capacity(prompts.records.len());
                for (text, r) in prompts.texts.iter().zip(&prompts.records) {
                    let answer = match r.extra.get(field) {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other @ serde_json::Value::Number(_)) => other.to_string(),
                        _ => bail!(
                            "exact-match: a prompt record has no string `{field}` (the reference \
                             answer): {:?}",
                            text
                        ),
                    };
                    answers.push((text.clone(), answer));
                }
                Box::new(ExactMatchScorer::new(answers, eos))
            }
            Spec::Regex(p) => Box::new(RegexScorer::new(p, eos)?),
            Spec::Length(scale) => Box::new(LengthScorer::new(*scale, eos)),
            Spec::Judge(dir) => {
                let judge = load::checkpoint(dir, device, TemplateChoice::default())?;
                Box::new(
                    LlmJudge::new(
                        judge.model,
                        judge.tokenizer,
                        // the policy's EOS is what its responses end with
                        JudgeConfig {
                            response_eos: Some(eos.to_string()),
                            ..JudgeConfig::default()
                        },
                        device,
                    )
                    .with_context(|| format!("the judge in {}", dir.display()))?,
                )
            }
            Spec::Ensemble(combine, members) => Box::new(Self::ensemble(
                members,
                *combine,
                tokenizer,
                prompts,
                device,
                (frozen, variables),
            )?),
            Spec::Weighted(weights, members) => Box::new(
                Self::ensemble(
                    members,
                    Combine::Sum,
                    tokenizer,
                    prompts,
                    device,
                    (frozen, variables),
                )?
                .with_weights(weights.clone())?,
            ),
        })
    }

    /// `members` built and combined by `combine`, their parts named by their labels.
    fn ensemble(
        members: &[Spec],
        combine: Combine,
        tokenizer: &Tokenizer,
        prompts: &Prompts,
        device: &Device,
        served: (Precision, Option<&str>),
    ) -> Result<EnsembleScorer> {
        let built = members
            .iter()
            .map(|m| m.build(tokenizer, prompts, device, served))
            .collect::<Result<_>>()?;
        Ok(EnsembleScorer::new(built, combine)?
            .with_names(members.iter().map(Spec::label).collect())?)
    }
}

/// The reward model in `dir` as a scorer of the policy's samples: each sample as `rlhf rm`
/// encoded its training data, in the model's own tokenizer and chat format ([`ReEncoded`]); a
/// process RM reads the text (it finds its steps there; the policy's EOS follows the last one).
/// The model is held in `frozen`'s dtype, its Jinja template rendering with `variables`.
fn reward_model(
    dir: &Path,
    tokenizer: &Tokenizer,
    prompts: &Prompts,
    device: &Device,
    (frozen, variables): (Precision, Option<&str>),
) -> Result<Box<dyn Scorer>> {
    let mut rm = load::reward_model(dir, device, 0)?;
    if frozen != Precision::F32 {
        frozen.check_device(device)?;
        tracing::info!("reward model {}: held in {frozen}", dir.display());
        rm.model = frozen.apply(rm.model);
    }
    let own = load::reward_tokenizer(dir, &rm.config, tokenizer)?;
    if rm.settings.kind == RewardKind::Process {
        return Ok(Box::new(RewardScorer::new(rm, own, device)));
    }
    let eos = tokenizer.eos_text();
    if !own.same_ids(tokenizer) {
        tracing::info!(
            "reward model {}: its own tokenizer ({} tokens, EOS {:?}), not the policy's: it reads \
             each sample in its own chat format and tokens, a reply ending with the policy's EOS \
             {eos:?} as a finished one",
            dir.display(),
            own.vocab_size(),
            own.eos_text()
        );
    }
    Ok(Box::new(ReEncoded::new(
        RewardScorer::new(rm, own, device),
        prompts,
        eos,
        variables,
    )?))
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};
    use rlhf_data::Turns;

    use super::*;
    use crate::data::Encoder;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../rlhf-models/tests/fixtures/hf")
            .join(name)
    }

    /// A user's question as a chat, rendered by `policy`'s template, and the prompts the trainers
    /// would pass with it.
    fn cat_question(policy: &Tokenizer) -> (Turns, String, Prompts) {
        let chat = Turns::Messages(vec![rlhf_data::Message {
            role: "user".into(),
            content: "What did the cat do?".into(),
        }]);
        let (rendered, prompts) = chat_prompt(policy, chat.clone());
        (chat, rendered, prompts)
    }

    /// `chat` as a run's one prompt, rendered by `tokenizer`'s chat template, and the rendering.
    fn chat_prompt(tokenizer: &Tokenizer, chat: Turns) -> (String, Prompts) {
        let format = tokenizer.config().chat_format().unwrap();
        let rendered = format.prompt(&chat).unwrap();
        let prompts = Prompts {
            texts: vec![rendered.clone()],
            records: vec![rlhf_data::PromptRecord {
                prompt: chat,
                extra: Default::default(),
            }],
        };
        (rendered, prompts)
    }

    /// A checkpoint whose `config.json` names its EOS as PAD (as TRL's `RewardTrainer` writes it
    /// for a tokenizer without a PAD) learned its score at the token before a reply's EOS, where
    /// `transformers` reads it: a finished reply scores as the same reply without its EOS. Without
    /// that PAD the score is read at the EOS, and the two differ.
    #[test]
    fn a_checkpoint_whose_pad_is_its_eos_is_read_before_the_eos() {
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let source = fixture("tiny-llama3");
        let tokenizer = Tokenizer::from_dir(&source).unwrap();
        let score = |pad: Option<u32>| -> Vec<f32> {
            let rm_dir = dir.path().join(format!("{pad:?}"));
            std::fs::create_dir_all(&rm_dir).unwrap();
            for entry in std::fs::read_dir(&source).unwrap() {
                let path = entry.unwrap().path();
                std::fs::copy(&path, rm_dir.join(path.file_name().unwrap())).unwrap();
            }
            let config_path = rm_dir.join("config.json");
            let mut config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
            config["pad_token_id"] = pad.map_or(serde_json::Value::Null, Into::into);
            std::fs::write(&config_path, config.to_string()).unwrap();
            let rm = load::reward_model(&rm_dir, &device, 0).unwrap();
            assert_eq!(rm.pad_token_id, pad);
            let body = "it sat on the mat.";
            let finished = format!("{body}{}", tokenizer.eos_text());
            RewardScorer::new(rm, tokenizer.clone(), &device)
                .score(&["What did the cat do?"; 2], &[&finished, body])
                .unwrap()
        };
        let at_eos = score(None);
        assert_ne!(at_eos[0], at_eos[1]);
        let before_eos = score(Some(tokenizer.eos_id()));
        assert_eq!(before_eos[0], before_eos[1]);
        assert_eq!(before_eos[1], at_eos[1]);
    }

    /// A reward model of another tokenizer reads each sample as its own data were written: the
    /// prompt in its chat format, a finished reply as its template renders it, a cut-off reply
    /// bare.
    #[test]
    fn a_reward_model_of_another_tokenizer_reads_samples_in_its_own_format() {
        let device = Device::flex();
        let policy_dir = fixture("tiny-llama3-chat");
        let policy = Tokenizer::from_dir(&policy_dir).unwrap();
        let policy_format = policy.config().chat_format().unwrap();
        let rm_dir = fixture("tiny-qwen2-chat");
        let own = Tokenizer::from_dir(&rm_dir).unwrap();
        let own_format = own.config().chat_format().unwrap();
        assert!(!own.same_ids(&policy) && own.same_ids(&own.clone()));
        assert_ne!(policy.eos_text(), own.eos_text());
        let (chat, rendered, prompts) = cat_question(&policy);
        let scorer = Spec::Model(rm_dir.clone())
            .build(&policy, &prompts, &device, (Precision::F32, None))
            .unwrap();
        let served = || {
            RewardScorer::new(
                load::reward_model(&rm_dir, &device, 0).unwrap(),
                own.clone(),
                &device,
            )
        };
        let body = "it sat on the mat.";
        let finished = format!("{body}{}", policy.eos_text());
        let plain = "What did the cat do?\n";
        let got = scorer
            .score(
                &[&rendered, &rendered, plain],
                &[&finished, body, &finished],
            )
            .unwrap();
        // the same model served with its own tokenizer, on its own rendering: ChatML's prompt, the
        // reply as the template renders it, its EOS `<|im_end|>` and the `\n` after it (a
        // checkpoint without rlhf's settings, TRL's, is read as TRL reads it); cut off, the bare
        // text; a plain prompt as it is
        let own_prompt = own_format.prompt(&chat).unwrap();
        assert!(
            own_prompt.ends_with("<|im_start|>assistant\n"),
            "{own_prompt}"
        );
        let own_reply = format!("{body}{}\n", own.eos_text());
        let plain_reply = format!("{body}{}", own.eos_text());
        let want = served()
            .score(
                &[&own_prompt, &own_prompt, plain],
                &[&own_reply, body, &plain_reply],
            )
            .unwrap();
        assert_eq!(got, want);
        // what it read before: the policy's rendering and tokens
        let before = RewardScorer::new(
            load::reward_model(&rm_dir, &device, 0).unwrap(),
            policy.clone(),
            &device,
        );
        assert_ne!(
            before.score(&[&rendered], &[&finished]).unwrap()[0],
            want[0]
        );
        // a reward model of the policy's own tokenizer reads a sample as `rlhf rm` encoded its
        // data: the reply tokenised after the prompt, a token spanning the seam in the reply
        let same = Spec::Model(policy_dir.clone())
            .build(&policy, &prompts, &device, (Precision::F32, None))
            .unwrap();
        let (seam, reply) = ("the answer is: ", format!("yes{}", policy.eos_text()));
        let enc = Encoder {
            tokenizer: &policy,
            format: &policy_format,
            max_prompt: usize::MAX,
            max_length: usize::MAX,
            chat_reading: rlhf_reward::ChatReading::Rendered,
        };
        let trained = enc.fit(&Turns::from(seam), &[&Turns::from("yes")]).unwrap();
        let served_own = || {
            RewardScorer::new(
                load::reward_model(&policy_dir, &device, 0).unwrap(),
                policy.clone(),
                &device,
            )
        };
        let want = served_own()
            .score_tokens(&[(trained.0, trained.1[0].clone())])
            .unwrap();
        assert_eq!(same.score(&[seam], &[&reply]).unwrap(), want);
        // the text path tokenises the reply on its own, which the model never trained on here
        assert_ne!(served_own().score(&[seam], &[&reply]).unwrap(), want);
        // one vocabulary with another EOS named, or a [PAD] added here, is the same ids
        let other_eos =
            Tokenizer::from_file(&rm_dir.join("tokenizer.json"), Some("<|endoftext|>")).unwrap();
        assert_ne!(other_eos.eos_id(), own.eos_id());
        assert!(other_eos.same_ids(&own) && own.same_ids(&other_eos));
    }

    /// A chat reward model is read as `transformers` reads what TRL's `RewardTrainer` trains: the
    /// conversation as its template renders it, whole. `tiny-qwen2-chat/reward.json` (written by
    /// `xtask/fixtures/make_cli_fixtures.py`) holds a score head and what
    /// `AutoModelForSequenceClassification` with it scores for three conversations; the reward
    /// model served the policy's finished replies gives the same scores, and read at each reply's
    /// end of turn (`ChatReading::TurnEnd`), other ones.
    #[test]
    fn a_chat_reward_model_scores_what_transformers_scores() {
        let device = Device::flex();
        let dir = fixture("tiny-qwen2-chat");
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reward.json")).unwrap())
                .unwrap();
        let weight: Vec<f32> = want["score_weight"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_f64().unwrap() as f32)
            .collect();
        let tokenizer = Tokenizer::from_dir(&dir).unwrap();
        let eos = tokenizer.eos_text();
        for c in want["conversations"].as_array().unwrap() {
            let mut messages: Vec<rlhf_data::Message> =
                serde_json::from_value(c["messages"].clone()).unwrap();
            let reply = messages.pop().unwrap().content;
            let (rendered, prompts) = chat_prompt(&tokenizer, Turns::Messages(messages));
            let score = |reading: rlhf_reward::ChatReading| {
                let mut rm = load::reward_model(&dir, &device, 0).unwrap();
                rm.settings.chat_reading = reading;
                let head = TensorData::new(weight.clone(), [weight.len(), 1]);
                rm.model.score.weight = Param::from_tensor(Tensor::from_data(head, &device));
                let served = RewardScorer::new(rm, tokenizer.clone(), &device);
                ReEncoded::new(served, &prompts, eos.clone(), None)
                    .unwrap()
                    .score(&[&rendered], &[&format!("{reply}{eos}")])
                    .unwrap()[0]
            };
            let transformers = c["score"].as_f64().unwrap();
            let rendered_whole = f64::from(score(rlhf_reward::ChatReading::Rendered));
            let at_turn_end = f64::from(score(rlhf_reward::ChatReading::TurnEnd));
            assert!(
                (rendered_whole - transformers).abs() < 1e-4,
                "{}: {rendered_whole} against transformers' {transformers}",
                c["text"]
            );
            assert!(
                (at_turn_end - transformers).abs() > 1e-3,
                "{}: {at_turn_end}",
                c["text"]
            );
        }
    }

    /// A reward model whose settings name no `chat_reading` is read where the `rlhf rm` that wrote
    /// them trained it, at the reply's end of turn; one whose settings say `rendered` reads the
    /// template's `\n` after it too.
    #[test]
    fn a_reward_model_is_read_where_its_settings_say_it_was_trained() {
        let device = Device::flex();
        let policy = Tokenizer::from_dir(&fixture("tiny-llama3-chat")).unwrap();
        let own = Tokenizer::from_dir(&fixture("tiny-qwen2-chat")).unwrap();
        let (chat, rendered, prompts) = cat_question(&policy);
        let finished = format!("it sat on the mat.{}", policy.eos_text());
        let own_prompt = own.config().chat_format().unwrap().prompt(&chat).unwrap();
        let root = tempfile::tempdir().unwrap();
        let read = |reading: Option<&str>| {
            let dir = root.path().join(reading.unwrap_or("none"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in std::fs::read_dir(fixture("tiny-qwen2-chat")).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
            }
            let config_path = dir.join("config.json");
            let mut config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
            let mut settings = serde_json::json!({
                "kind": "outcome",
                "normalisation": {"bias": 0.0, "gain": 1.0},
                "step_aggregate": "min",
                "step_delimiter": null
            });
            if let Some(r) = reading {
                settings["chat_reading"] = r.into();
            }
            config["rlhf_scalar"] = settings;
            std::fs::write(&config_path, config.to_string()).unwrap();
            let got = Spec::Model(dir.clone())
                .build(&policy, &prompts, &device, (Precision::F32, None))
                .unwrap()
                .score(&[&rendered], &[&finished])
                .unwrap()[0];
            let served = RewardScorer::new(
                load::reward_model(&dir, &device, 0).unwrap(),
                own.clone(),
                &device,
            );
            let at = |reply: &str| served.score(&[&own_prompt], &[reply]).unwrap()[0];
            let eos = own.eos_text();
            (
                got,
                at(&format!("it sat on the mat.{eos}")),
                at(&format!("it sat on the mat.{eos}\n")),
            )
        };
        let (legacy, at_turn_end, at_rendered) = read(None);
        assert_eq!(legacy, at_turn_end);
        assert_ne!(at_turn_end, at_rendered);
        let (rendered_setting, _, at_rendered) = read(Some("rendered"));
        assert_eq!(rendered_setting, at_rendered);
    }

    /// The policy's `--chat-template-kwargs` reach a reward model's own Jinja template, as TRL's
    /// GRPO and RLOO pass them: a ChatML reward model whose template opens with a `/no_think`
    /// system turn when `enable_thinking` is false reads the conversation with that turn, as its
    /// own rendering with the variable gives it, and without the variables reads it without. (A
    /// reward model reads the whole conversation, rendered without a generation prompt, as TRL's
    /// does: what a template writes only after the generation prompt never reaches it.)
    #[test]
    fn the_chat_template_variables_reach_a_reward_models_template() {
        let device = Device::flex();
        let policy = Tokenizer::from_dir(&fixture("tiny-llama3-chat")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(fixture("tiny-qwen2-chat")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let config_path = dir.path().join("tokenizer_config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        let template = config["chat_template"].as_str().unwrap().replace(
            "{% for message in messages %}",
            "{% if enable_thinking is defined and not enable_thinking %}{{ \
             '<|im_start|>system\n/no_think<|im_end|>\n' }}{% endif %}{% for message in \
             messages %}",
        );
        assert!(template.contains("enable_thinking"), "{template}");
        config["chat_template"] = template.into();
        std::fs::write(&config_path, config.to_string()).unwrap();
        let own = Tokenizer::from_dir(dir.path()).unwrap();
        let (chat, rendered, prompts) = cat_question(&policy);
        let finished = format!("it sat on the mat.{}", policy.eos_text());
        let score = |variables: Option<&str>| {
            Spec::Model(dir.path().to_path_buf())
                .build(&policy, &prompts, &device, (Precision::F32, variables))
                .unwrap()
                .score(&[&rendered], &[&finished])
                .unwrap()[0]
        };
        let no_thinking = score(Some(r#"{"enable_thinking": false}"#));
        let served = RewardScorer::new(
            load::reward_model(dir.path(), &device, 0).unwrap(),
            own.clone(),
            &device,
        );
        let own_prompt = own.config().chat_format().unwrap().prompt(&chat).unwrap();
        let reply = format!("it sat on the mat.{}\n", own.eos_text());
        let no_think_prompt = format!("<|im_start|>system\n/no_think<|im_end|>\n{own_prompt}");
        assert_eq!(
            no_thinking,
            served.score(&[&no_think_prompt], &[&reply]).unwrap()[0]
        );
        assert_eq!(
            score(None),
            served.score(&[&own_prompt], &[&reply]).unwrap()[0]
        );
        assert_ne!(no_thinking, score(None));
    }

    #[test]
    fn specs_parse_with_their_defaults_and_nest() {
        let p = |s: &str| s.parse::<Spec>().unwrap();
        assert_eq!(p("exact-match"), Spec::ExactMatch("answer".into()));
        assert_eq!(
            p("exact-match:solution"),
            Spec::ExactMatch("solution".into())
        );
        assert_eq!(p("length"), Spec::Length(0.1));
        assert_eq!(
            p("sum(regex:a,length)"),
            Spec::Ensemble(
                Combine::Sum,
                vec![Spec::Regex("a".into()), Spec::Length(0.1)]
            )
        );
        assert_eq!(p("regex:^a,b$"), Spec::Regex("^a,b$".into()));
        assert_eq!(p("judge:models/j"), Spec::Judge("models/j".into()));
        assert_eq!(
            p("mean-minus-std:0.5(rm:a, min(rm:b,length:2))"),
            Spec::Ensemble(
                Combine::MeanMinusStd { lambda: 0.5 },
                vec![
                    Spec::Model("a".into()),
                    Spec::Ensemble(
                        Combine::Min,
                        vec![Spec::Model("b".into()), Spec::Length(2.0)]
                    )
                ]
            )
        );
        assert_eq!(
            p("mean(rm:a,rm:b)").models(),
            vec![Path::new("a"), Path::new("b")]
        );
        for bad in [
            "nope",
            "length:x",
            "median(rm:a)",
            "mean(rm:a",
            "mean-minus-std:x(rm:a)",
        ] {
            assert!(bad.parse::<Spec>().is_err(), "{bad}");
        }
    }
}
