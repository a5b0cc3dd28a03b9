//! [`sequence_kl`]: the sampled estimate of a policy's KL to a reference, per response.

use burn::module::Module;
use burn::tensor::Device;
use rlhf_core::{Result, zero_masked};
use rlhf_data::collate;

use crate::lm::CausalLm;
use crate::sft::{LmBatch, target_logprobs};

/// `Σ_t [log π(y_t) − log π_ref(y_t)]` of each response `y` to its prompt, both distributions at
/// `temperature` (1 when it is 0, greedy decoding): averaged over responses sampled from `π`, the
/// Monte-Carlo estimate of `KL(π‖π_ref)` per sequence (the k1 estimator, summed). No gradients.
pub fn sequence_kl(
    policy: &CausalLm,
    reference: &CausalLm,
    prompt_ids: &[Vec<u32>],
    responses: &[Vec<u32>],
    temperature: f32,
    device: &Device,
) -> Result<Vec<f64>> {
    let temperature = if temperature > 0.0 { temperature } else { 1.0 };
    let device = device.clone().without_autodiff();
    let (policy, reference) = (policy.valid(), reference.valid());
    let mut out = Vec::with_capacity(responses.len());
    for (ps, rs) in prompt_ids.chunks(32).zip(responses.chunks(32)) {
        let pairs: Vec<(&[u32], &[u32])> = ps
            .iter()
            .zip(rs)
            .map(|(p, r)| (p.as_slice(), r.as_slice()))
            .collect();
        let batch = LmBatch::from_sequences(&collate(&pairs, 0, None));
        let policy_logp = target_logprobs(&policy, &batch, temperature, &device)?;
        let reference_logp = target_logprobs(&reference, &batch, temperature, &device)?.logp;
        let diff = policy_logp.logp.sub(reference_logp);
        let per_row = zero_masked(diff, policy_logp.mask).sum_dim(1);
        out.extend(rlhf_core::host::to_f64_vec(per_row.reshape([batch.batch])));
    }
    Ok(out)
}
