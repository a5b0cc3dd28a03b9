//! Supervised fine-tuning: the language-modelling loss on response tokens only (the prompt is
//! context, not target), AdamW with global-norm clipping, eval loss and perplexity.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rlhf_core::train::{
    LrSchedule, MetricsSink, OptimizerConfig, clip_global_grad_norm, metrics::names,
};
use rlhf_core::{Result, masked_mean, token_logprobs};
use rlhf_data::{SequenceBatch, Truncation, collate, length_buckets};
use serde::{Deserialize, Serialize};

use crate::neox::GptNeox;

/// SFT settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SftConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule over all steps.
    pub schedule: LrSchedule,
    /// Longest prompt / response kept.
    pub truncation: Option<(usize, usize)>,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            epochs: 1,
            batch_size: 16,
            optimizer: OptimizerConfig {
                lr: 3e-3,
                ..OptimizerConfig::default()
            },
            schedule: LrSchedule::Constant,
            truncation: None,
        }
    }
}

/// One tokenized example: prompt ids and response ids (the response ends with EOS).
pub type Example = (Vec<u32>, Vec<u32>);

/// Tensors of a collated batch on `device`: model input ids (pads replaced by 0), attention mask
/// and response mask, each `[batch, seq]`.
pub fn batch_tensors(
    batch: &SequenceBatch,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2>, Tensor<2>) {
    let shape = [batch.batch, batch.seq_len()];
    let ids: Vec<i64> = batch
        .model_input_ids(0)
        .into_iter()
        .map(i64::from)
        .collect();
    let f = |v: &[u8]| {
        Tensor::<2>::from_data(
            TensorData::new(v.iter().map(|&x| f32::from(x)).collect::<Vec<_>>(), shape),
            device,
        )
    };
    (
        Tensor::from_data(TensorData::new(ids, shape), device),
        f(&batch.attention_mask),
        f(&batch.response_mask),
    )
}

/// Mean negative log-likelihood of the response tokens: the logits at position `t` predict the
/// token at `t + 1`, and only targets inside the response count. Returns `[1]`.
pub fn sft_loss(model: &GptNeox, batch: &SequenceBatch, device: &Device) -> Tensor<1> {
    let (ids, attention, response) = batch_tensors(batch, device);
    let [_, l] = ids.dims();
    let logits = model.forward(ids.clone(), attention, None);
    let logp = token_logprobs(logits.narrow(1, 0, l - 1), ids.narrow(1, 1, l - 1), 1.0);
    masked_mean(logp, response.narrow(1, 1, l - 1)).neg()
}

fn collate_examples(data: &[&Example], truncation: Option<(usize, usize)>) -> SequenceBatch {
    let t = truncation.map(|(p, r)| Truncation {
        max_prompt: p,
        max_response: r,
    });
    let pairs: Vec<(&[u32], &[u32])> = data
        .iter()
        .map(|(p, r)| (p.as_slice(), r.as_slice()))
        .collect();
    collate(&pairs, 0, t)
}

/// Mean response-token loss over `data` (no gradients).
pub fn eval_loss(model: &GptNeox, data: &[Example], batch_size: usize, device: &Device) -> f64 {
    let valid = model.valid();
    let mut total = 0.0;
    let mut tokens = 0.0;
    for chunk in data.chunks(batch_size.max(1)) {
        let b = collate_examples(&chunk.iter().collect::<Vec<_>>(), None);
        // targets are the response tokens from column 1 on (column 0 has nothing predicting it)
        let l = b.seq_len();
        let n: f64 = b
            .response_mask
            .iter()
            .enumerate()
            .filter(|(i, _)| i % l != 0)
            .map(|(_, &m)| f64::from(m))
            .sum();
        let loss = f64::from(
            sft_loss(&valid, &b, &device.clone().without_autodiff()).into_scalar::<f32>(),
        );
        total += loss * n;
        tokens += n;
    }
    total / tokens.max(1.0)
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SftReport {
    /// Optimizer steps taken.
    pub steps: u64,
    /// Response tokens trained on.
    pub tokens: u64,
    /// Loss of the last step.
    pub final_train_loss: f64,
}

/// Trains `model` on `train` (length-bucketed batches in a random order drawn from `rng`). The
/// model must live on an autodiff device.
pub fn train_sft(
    mut model: GptNeox,
    train: &[Example],
    cfg: &SftConfig,
    device: &Device,
    rng: &mut impl Rng,
    mut metrics: Option<&mut MetricsSink>,
) -> Result<(GptNeox, SftReport)> {
    let mut optim = cfg.optimizer.build()?;
    let mut report = SftReport::default();
    let lengths: Vec<usize> = train.iter().map(|(p, r)| p.len() + r.len()).collect();
    for _ in 0..cfg.epochs {
        for idx in length_buckets(&lengths, cfg.batch_size, rng) {
            let chunk: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
            let batch = &collate_examples(&chunk, cfg.truncation);
            let loss = sft_loss(&model, batch, device);
            let loss_value = f64::from(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let (grads, norm) = match cfg.optimizer.max_grad_norm {
                Some(max) => clip_global_grad_norm(&model, grads, max),
                None => (grads, f32::NAN),
            };
            let lr = cfg.schedule.lr_at(cfg.optimizer.lr, report.steps);
            model = optim.step(lr, model, grads);
            report.steps += 1;
            report.tokens += batch
                .response_mask
                .iter()
                .map(|&m| u64::from(m))
                .sum::<u64>();
            report.final_train_loss = loss_value;
            if let Some(m) = metrics.as_deref_mut() {
                m.log(
                    report.steps,
                    &[
                        (names::TRAIN_LOSS, loss_value),
                        (names::TRAIN_LR, lr),
                        (names::TRAIN_GRAD_NORM, f64::from(norm)),
                    ],
                )?;
            }
        }
    }
    Ok((model, report))
}
