//! Loading what a command trains and reads: a checkpoint's model, its tokenizer and chat format,
//! a reference, a reward model, a critic, each announced on stderr before training starts.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use rlhf_data::{ChatFormat, JinjaTemplate, Tokenizer};
use rlhf_models::{
    CausalLm, LoraConfig, Precision, ScalarModel, TransformerConfig, apply_lora, load_pretrained,
    trainable_params,
};
use rlhf_reward::{RewardModel, RewardSettings};

use crate::args::LoraArgs;

/// A causal LM checkpoint with its tokenizer and chat format.
pub struct Checkpoint {
    /// `config.json`.
    pub config: TransformerConfig,
    /// The weights.
    pub model: CausalLm,
    /// `tokenizer.json` with EOS, PAD and the template of `tokenizer_config.json`.
    pub tokenizer: Tokenizer,
    /// How conversations become text.
    pub format: ChatFormat,
}

/// `(total, non-embedding)` parameters, for messages.
fn params(config: &TransformerConfig, model_params: usize) -> String {
    format!(
        "{model_params} parameters ({} non-embedding)",
        config.non_embedding_params()
    )
}

/// Which chat template a run renders with: a file in place of the tokenizer's (`--chat-template`),
/// and extra variables for it, a JSON object (`--chat-template-kwargs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateChoice<'a> {
    /// The template file, if any.
    pub file: Option<&'a Path>,
    /// The variables' JSON, if any.
    pub variables: Option<&'a str>,
}

/// How conversations become text for `tokenizer`'s checkpoint: `choice`'s file in place of its
/// template (which the model a run writes then keeps), with `choice`'s variables. Variables need
/// a Jinja template.
pub fn chat_format(tokenizer: &mut Tokenizer, choice: TemplateChoice) -> Result<ChatFormat> {
    let format = match choice.file {
        Some(path) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let c = tokenizer.config();
            let format = ChatFormat::Jinja(JinjaTemplate::new(
                &source,
                c.bos_token.as_deref().unwrap_or(""),
                &tokenizer.eos_text(),
            )?);
            // the model this run writes keeps the template it was trained with
            tokenizer.set_chat_template(&source);
            format
        }
        None => tokenizer.config().chat_format()?,
    };
    let Some(json) = choice.variables else {
        return Ok(format);
    };
    match format {
        ChatFormat::Jinja(t) => Ok(ChatFormat::Jinja(
            t.with_variables(template_variables(json)?)?,
        )),
        ChatFormat::Pieces(_) => bail!(
            "--chat-template-kwargs sets variables of a Jinja chat template; this checkpoint has \
             none (give one with --chat-template)"
        ),
    }
}

/// The variables `--chat-template-kwargs` gives, a JSON object.
pub fn template_variables(json: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    serde_json::from_str(json)
        .with_context(|| format!("--chat-template-kwargs must be a JSON object, got {json}"))
}

/// Loads the checkpoint in `dir` onto `device` and says what it loaded, its conversations
/// rendered as `template` chooses ([`chat_format`]).
pub fn checkpoint(dir: &Path, device: &Device, template: TemplateChoice) -> Result<Checkpoint> {
    let (config, model) = load_pretrained(dir, device)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let mut tokenizer = Tokenizer::from_dir(dir)
        .with_context(|| format!("loading the tokenizer in {}", dir.display()))?;
    let format = chat_format(&mut tokenizer, template)?;
    check_vocabulary(dir, &tokenizer, &config)?;
    tracing::info!(
        "model {}: {:?}, {}, {} layers, width {}",
        dir.display(),
        config.architecture,
        params(&config, model.num_params()),
        config.num_hidden_layers,
        config.hidden_size
    );
    let pad = tokenizer.pad_id();
    tracing::info!(
        "tokenizer: {} tokens, EOS {:?} (id {}), PAD id {pad}{}, {}, chat template: {}",
        tokenizer.vocab_size(),
        tokenizer.eos_text(),
        tokenizer.eos_id(),
        if pad as usize >= config.vocab_size {
            " (added past the vocabulary; never shown to the model)"
        } else {
            ""
        },
        match tokenizer.start() {
            [] => "nothing before a prompt".to_string(),
            start => format!(
                "{:?} before every prompt",
                tokenizer.decode(start).unwrap_or_default()
            ),
        },
        match (&format, template.file) {
            (_, Some(p)) => format!("{}", p.display()),
            (ChatFormat::Jinja(_), None) => "the checkpoint's".into(),
            (ChatFormat::Pieces(_), None) =>
                "none in the checkpoint, ChatML for conversations".into(),
        }
    );
    Ok(Checkpoint {
        config,
        model,
        tokenizer,
        format,
    })
}

/// The frozen reference, held in `dtype`: the checkpoint in `dir`, or (without one) `start`,
/// the starting model the policy was made from (make the policy first: this takes `start`, so
/// that, with `dir`, the starting weights live only in the policy, until its first step replaces
/// them). `config` is the policy's, whose vocabulary the reference must share.
///
/// Refused in bf16 where the device cannot compute in it. Under LoRA without `dir` the reference
/// is the policy's own frozen base, held once, and stays f32 whatever `dtype` says (a bf16 copy
/// would add memory, not save it).
pub fn reference(
    dir: Option<&Path>,
    start: CausalLm,
    config: &TransformerConfig,
    dtype: Precision,
    lora: &LoraArgs,
    device: &Device,
) -> Result<CausalLm> {
    dtype.check_device(device)?;
    match dir {
        None if lora.config().is_some() => {
            tracing::info!("reference: the policy's frozen base, shared with it (in f32)");
            Ok(start)
        }
        None => {
            tracing::info!("reference: the starting policy, in {dtype}");
            Ok(dtype.apply(start))
        }
        Some(dir) => {
            drop(start);
            Ok(dtype.apply(reference_in(dir, config, device)?))
        }
    }
}

/// The reference model in `dir`, whose vocabulary must be `policy`'s.
pub fn reference_in(dir: &Path, policy: &TransformerConfig, device: &Device) -> Result<CausalLm> {
    let (config, model) = load_pretrained(dir, device)
        .with_context(|| format!("loading the reference in {}", dir.display()))?;
    if config.vocab_size != policy.vocab_size {
        bail!(
            "the reference {} has a vocabulary of {} and the policy {}: they must share the tokenizer",
            dir.display(),
            config.vocab_size,
            policy.vocab_size
        );
    }
    tracing::info!(
        "reference {}: {:?}, {}",
        dir.display(),
        config.architecture,
        params(&config, model.num_params())
    );
    Ok(model)
}

/// A reward model from `dir`: what `rlhf rm` wrote, a sequence-classification checkpoint, or a
/// causal LM (whose head is then fresh, drawn from `seed`, so the same command gives the same
/// model).
pub fn reward_model(dir: &Path, device: &Device, seed: u64) -> Result<RewardModel> {
    let (config, model, extra, head) = rlhf_models::load_scalar_pretrained(dir, device)
        .with_context(|| format!("loading the reward model in {}", dir.display()))?;
    let model = if head {
        model
    } else {
        fresh_scalar(model.backbone, seed)
    };
    let settings = if extra.is_null() {
        RewardSettings::outcome()
    } else {
        serde_json::from_value(extra)
            .with_context(|| format!("{}: config.json `rlhf_scalar`", dir.display()))?
    };
    tracing::info!(
        "reward model {}: {:?}, {}, {}",
        dir.display(),
        config.architecture,
        params(&config, model.num_params()),
        if head {
            "its score head"
        } else {
            "a fresh score head (the checkpoint has none)"
        }
    );
    Ok(RewardModel {
        model,
        config,
        settings,
        // as in transformers, a score is read at the last token that is not the config's PAD
        pad_token_id: rlhf_reward::config_pad_token_id(dir)?,
    })
}

/// Refuses a tokenizer whose EOS or start tokens lie outside the model's vocabulary.
fn check_vocabulary(dir: &Path, tokenizer: &Tokenizer, config: &TransformerConfig) -> Result<()> {
    if tokenizer.eos_id() as usize >= config.vocab_size {
        bail!(
            "{}: the tokenizer's EOS {} (id {}) is outside the model's vocabulary of {}",
            dir.display(),
            tokenizer.eos_text(),
            tokenizer.eos_id(),
            config.vocab_size
        );
    }
    if let Some(&id) = tokenizer
        .start()
        .iter()
        .find(|&&id| id as usize >= config.vocab_size)
    {
        bail!(
            "{}: the tokenizer puts {:?} (id {id}) before every text, and it is outside the \
             model's vocabulary of {}",
            dir.display(),
            tokenizer.decode(&[id]).unwrap_or_default(),
            config.vocab_size
        );
    }
    Ok(())
}

/// The tokenizer the reward model in `dir` (a `config` of its own) reads: its own when the
/// directory has a `tokenizer.json`, else the policy's, `policy`.
pub fn reward_tokenizer(
    dir: &Path,
    config: &TransformerConfig,
    policy: &Tokenizer,
) -> Result<Tokenizer> {
    if !dir.join("tokenizer.json").is_file() {
        tracing::info!(
            "reward model {}: no tokenizer of its own; it reads the policy's",
            dir.display()
        );
        return Ok(policy.clone());
    }
    let own = Tokenizer::from_dir(dir)
        .with_context(|| format!("loading the tokenizer in {}", dir.display()))?;
    check_vocabulary(dir, &own, config)?;
    Ok(own)
}

/// A fresh scalar model on `backbone` (a critic or reward model started from a causal LM), its
/// head drawn from `seed`.
pub fn fresh_scalar(backbone: CausalLm, seed: u64) -> ScalarModel {
    let device = backbone.device();
    rlhf_core::train::seeded(&device, seed, || ScalarModel::from_backbone(backbone))
}

/// The policy as its trainer gets it: `model`, or, when `lora` asks for LoRA, `model` with
/// adapters on the target modules and every other weight frozen (the adapters' `A` drawn from
/// `seed`).
pub fn policy(
    model: CausalLm,
    config: &TransformerConfig,
    lora: &LoraArgs,
    seed: u64,
) -> Result<CausalLm> {
    if lora.save_adapter && lora.config().is_none() {
        bail!("--save-adapter writes LoRA adapters: it needs --lora-rank R (or --use-peft)");
    }
    with_lora(model, config, lora, seed, |m| m)
}

/// A reward model as its trainer gets it: [`policy`]'s LoRA on the backbone, with the `score`
/// head trained whole (PEFT's `modules_to_save` for a classifier).
pub fn scalar(
    model: ScalarModel,
    config: &TransformerConfig,
    lora: &LoraArgs,
    seed: u64,
) -> Result<ScalarModel> {
    with_lora(model, config, lora, seed, |m| ScalarModel {
        score: m.score.set_require_grad(true),
        backbone: m.backbone,
    })
}

/// `model` with LoRA when `lora` asks for it, then `finish` (what trains besides the adapters),
/// said on stderr with the share of parameters that train.
fn with_lora<M: Module>(
    model: M,
    config: &TransformerConfig,
    lora: &LoraArgs,
    seed: u64,
    finish: impl FnOnce(M) -> M,
) -> Result<M> {
    let Some(cfg) = lora.config() else {
        for (flag, given) in [
            ("--use-dora", lora.use_dora),
            ("--use-rslora", lora.use_rslora),
        ] {
            if given {
                bail!("{flag} shapes LoRA adapters: it needs --lora-rank R (or --use-peft)");
            }
        }
        return Ok(model);
    };
    let model = finish(apply_lora(model, &cfg, config.architecture, seed)?);
    announce_lora(&model, &cfg, config);
    Ok(model)
}

fn announce_lora<M: Module>(model: &M, cfg: &LoraConfig, config: &TransformerConfig) {
    let (trained, total) = trainable_params(model);
    tracing::info!(
        "{}: rank {}, alpha {}, on {}: {trained} of {total} parameters train ({:.2}%); the \
         frozen base is the reference unless --ref names another model",
        if cfg.dora { "DoRA" } else { "LoRA" },
        cfg.rank,
        cfg.alpha,
        cfg.targets(config.architecture).join(", "),
        100.0 * trained as f64 / total.max(1) as f64
    );
}
