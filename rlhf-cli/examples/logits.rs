//! Writes what this project computes for a Hugging Face directory on a fixed batch, for
//! `xtask/fixtures/check_outputs.py` to compare with `transformers`:
//! `cargo run -p rlhf-cli --example logits -- DIR OUT.json [--scalar]`.
//!
//! A causal LM gives its logits on a left-padded batch (positions from the mask); a scalar
//! model (`--scalar`, a reward model) gives its score at the last token of each unpadded row.

use std::path::PathBuf;

use burn::module::Module;
use rlhf_core::host::to_f32_vec;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, out) = match args.as_slice() {
        [d, o, ..] => (PathBuf::from(d), PathBuf::from(o)),
        _ => anyhow::bail!("usage: logits DIR OUT.json [--scalar]"),
    };
    let scalar = args.iter().any(|a| a == "--scalar");
    let device = rlhf_core::parse_device("flex")?;
    // three rows of token ids below every fixture's vocabulary, the first two left-padded
    let rows: [&[u32]; 3] = [
        &[5, 9, 13, 2, 40, 7],
        &[17, 3, 3, 8, 21, 34, 55, 1],
        &[11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
    ];
    let json = if scalar {
        let (_, model, _, _) = rlhf_models::load_scalar_pretrained(&dir, &device)?;
        let model = model.valid();
        let scores: Vec<f32> = rows
            .iter()
            .map(|r| -> anyhow::Result<f32> {
                let input = model.input(r, &vec![1; r.len()], 1)?;
                Ok(to_f32_vec(model.at_last_token(&input))[0])
            })
            .collect::<anyhow::Result<_>>()?;
        serde_json::json!({"kind": "scalar", "rows": rows, "scores": scores})
    } else {
        let (_, model) = rlhf_models::load_pretrained(&dir, &device)?;
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for r in rows {
            ids.extend(std::iter::repeat_n(0, width - r.len()).chain(r.iter().copied()));
            mask.extend(std::iter::repeat_n(0u8, width - r.len()).chain(r.iter().map(|_| 1)));
        }
        let logits = to_f32_vec(model.forward(&model.input(&ids, &mask, rows.len())?, None));
        serde_json::json!({"kind": "causal", "input_ids": ids.chunks(width).collect::<Vec<_>>(),
            "attention_mask": mask.chunks(width).collect::<Vec<_>>(), "logits": logits})
    };
    std::fs::write(&out, serde_json::to_vec(&json)?)?;
    Ok(())
}
