//! Frozen models in bf16: the reference policy and the reward model a trainer only reads, held at
//! half the bytes of f32 where the backend computes in bf16.
//!
//! A frozen model's parameters are cast once ([`Precision::apply`]); its forward pass then runs
//! in bf16 from the embedding on (the rotary tables the model builds in f32 are cast to the
//! hidden states' dtype where they meet them), and its outputs — logits, values, scores — are
//! cast back to f32, so every loss and statistic downstream stays in f32. (TRL takes a bf16
//! model's log-softmax in bf16, row by row; casting the logits first costs one f32 copy of them
//! and keeps the log-softmax as exact as an f32 model's, given the logits.) Trained models stay
//! in f32: the optimizer's moments and updates need its precision.
//!
//! Backends: flex stores bf16 (its matrix products convert to f32 inside, so this saves resident
//! memory, not time), LibTorch and CUDA compute in it; WebGPU's WGSL has no bf16, so there the
//! option is refused, as on any device whose backend says it cannot compute in bf16
//! ([`Precision::check_device`]).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Device;
use burn::tensor::{DType, FloatDType, Tensor};
use rlhf_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The dtype a frozen model's weights are held in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32, as trained.
    #[default]
    F32,
    /// bfloat16: half the bytes, 8 bits of mantissa.
    Bf16,
}

impl Precision {
    /// `model` with every float parameter cast to this precision; [`Precision::F32`] leaves it
    /// as it is (models load and train in f32).
    pub fn apply<M: Module>(self, model: M) -> M {
        match self {
            Precision::F32 => model,
            Precision::Bf16 => model.map(&mut CastTo(FloatDType::BF16)),
        }
    }

    /// An error when `device`'s backend cannot hold and compute this precision.
    pub fn check_device(self, device: &Device) -> Result<()> {
        if self == Precision::Bf16 && !device.supports_dtype(FloatDType::BF16) {
            return Err(Error::Config(format!(
                "bf16 frozen models: {device:?} cannot compute in bf16 (WebGPU's WGSL has no \
                 bf16); hold them in f32 on this device"
            )));
        }
        Ok(())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::Config(format!(
                "unknown dtype {other:?} for frozen models: f32 or bf16"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Casts every float parameter to one dtype.
struct CastTo(FloatDType);

impl ModuleMapper for CastTo {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `t` in f32 (a model's output, whatever its weights' dtype).
pub(crate) fn to_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// `t` in `like`'s dtype (a host-built table meeting the hidden states).
pub(crate) fn like<const D: usize, const E: usize>(t: Tensor<D>, like: &Tensor<E>) -> Tensor<D> {
    let dtype = like.dtype();
    if t.dtype() == dtype {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CausalLm, ScalarModel, TransformerConfig};

    fn model(preset: &str) -> CausalLm {
        let device = rlhf_core::device_from_env().expect("RLHF_DEVICE");
        device.seed(3);
        let mut config = TransformerConfig::preset(preset).expect("preset");
        config.vocab_size = 40;
        CausalLm::init(&config, &device).expect("init")
    }

    /// A committed checkpoint of the `transformers` parity fixtures (`tests/fixtures/hf/`).
    fn fixture(name: &str) -> CausalLm {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
        let device = rlhf_core::device_from_env().expect("RLHF_DEVICE");
        crate::load_pretrained(&dir.join(name), &device)
            .expect("fixture")
            .1
    }

    /// Every weight of a bf16 model is held in 2 bytes, and its logits and scores come out in
    /// f32 within bf16's rounding of the f32 model's (8 bits of mantissa: about 0.4% per
    /// operation), for each family and its options: GPT-NeoX (parallel and sequential
    /// residuals), Llama (GQA, Llama 3 rope scaling), Qwen2 (QKV bias, tied head), Qwen3 (query
    /// and key norms), Mistral (sliding window), Phi-3 (fused projections, partial rotary) and
    /// GPT-2 (learned positions).
    #[test]
    fn a_bf16_model_holds_half_the_bytes_and_gives_f32_outputs_close_to_the_f32_model() {
        let device = rlhf_core::device_from_env().expect("RLHF_DEVICE");
        if !device.supports_dtype(FloatDType::BF16) {
            // wgpu (WGSL has no bf16): refused up front rather than failing in a matmul
            let err = Precision::Bf16.check_device(&device).unwrap_err();
            assert!(err.to_string().contains("cannot compute in bf16"), "{err}");
            return;
        }
        assert!(Precision::Bf16.check_device(&device).is_ok());
        for preset in ["tiny-1m", "tiny-llama-1m", "tiny-qwen2-1m"] {
            close_in_bf16(preset, model(preset));
        }
        for name in [
            "tiny-neox-sequential",
            "tiny-llama3",
            "tiny-qwen3",
            "tiny-mistral",
            "tiny-phi3",
            "tiny-gpt2",
        ] {
            close_in_bf16(name, fixture(name));
        }
    }

    fn close_in_bf16(name: &str, f32_model: CausalLm) {
        use rlhf_core::train::memory::float_params;
        let f32_model = f32_model.without_dropout();
        // the second row left-padded by three tokens
        let ids: Vec<u32> = (0..2 * 9).map(|i| 2 + (i * 7 % 30) as u32).collect();
        let mask: Vec<u8> = (0..2 * 9)
            .map(|i| u8::from(!(9..12).contains(&i)))
            .collect();
        let input = f32_model.input(&ids, &mask, 2).unwrap();
        let want = f32_model.forward(&input, None);
        let bf16 = Precision::Bf16.apply(f32_model.clone());
        let params = float_params(&bf16);
        assert!(params.iter().all(|p| p.bytes == 2 * p.elements), "{name}");
        let got = bf16.forward(&input, None);
        assert_eq!(got.dtype(), DType::F32, "{name}");
        // the weights' own rounding, computed in f32: a checkpoint with large weights (the
        // sequential NeoX fixture's logits reach 8) loses that much in any bf16 model; computing
        // in bf16 may add at most 5% of the logits' scale to it (Mistral's fixture adds 3.7%; a
        // mask or a rotary table gone wrong moves logits by their scale)
        let rounding = max_diff(rounded(&bf16).forward(&input, None), want.clone());
        let (diff, scale) = (max_diff(got, want.clone()), max_abs(want));
        assert!(
            diff > 0.0 && diff < rounding + 0.05 * scale,
            "{name}: {diff} of {scale} (the weights' rounding alone: {rounding})"
        );
        // a score sums over the hidden size and may cancel to near zero: its error is measured
        // against the scores' spread over every position
        // a fixed score head: one drawn from burn's generator depends on what the tests running
        // beside this one drew, and a head whose scores cancel to near zero failed the bound
        // below in some runs
        let mut scalar = ScalarModel::from_backbone(f32_model);
        let d = scalar.backbone.hidden_size();
        let head: Vec<f32> = (0..d)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / (8.0 * (d as f32).sqrt()))
            .collect();
        scalar.score.weight = Param::from_tensor(Tensor::from_data(
            burn::tensor::TensorData::new(head, [d, 1]),
            &scalar.backbone.device(),
        ));
        let want = scalar.per_token(&input);
        let bf16 = Precision::Bf16.apply(scalar);
        let got = bf16.per_token(&input);
        assert_eq!(got.dtype(), DType::F32, "{name}");
        let rounding = max_diff(rounded(&bf16).per_token(&input), want.clone());
        let (diff, scale) = (max_diff(got, want.clone()), max_abs(want));
        assert!(
            diff < rounding + 0.05 * scale,
            "{name} scores: {diff} of {scale} (the weights' rounding alone: {rounding})"
        );
    }

    /// A bf16 model's weights back in f32: the f32 model with rounded weights.
    fn rounded<M: Module>(bf16: &M) -> M {
        bf16.clone().map(&mut CastTo(FloatDType::F32))
    }

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        max_abs(a.sub(b))
    }

    fn max_abs<const D: usize>(t: Tensor<D>) -> f32 {
        t.abs().max().into_scalar()
    }

    #[test]
    fn f32_leaves_a_model_as_it_is_and_names_parse() {
        use rlhf_core::train::memory::float_params;
        let m = Precision::F32.apply(model("tiny-1m"));
        assert!(float_params(&m).iter().all(|p| p.bytes == 4 * p.elements));
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
        assert!("fp8".parse::<Precision>().is_err());
        assert_eq!(Precision::Bf16.to_string(), "bf16");
    }
}
