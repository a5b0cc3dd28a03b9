//! LoRA (Hu et al., 2021) on this crate's models, as PEFT applies it to a `transformers` model.
//!
//! Each targeted linear weight `W` (`[d_in, d_out]` here) becomes `W + s·A·B` (`s = α/r`, or
//! rsLoRA's `α/√r`) with `A` `[d_in, r]` and `B` `[r, d_out]`; `W` and every other parameter of
//! the model are frozen, so only `A` and `B` train (with DoRA, the magnitudes too). `A` starts as
//! PEFT's does (Kaiming-uniform, bounds `±1/√d_in`) and `B` at zero, so the model computes
//! exactly what it did before the adapters were attached.
//!
//! LoRA's adapters are burn's own ([`burn::module::LoraAdapter`]), DoRA's this crate's
//! [`DoraAdapter`], both attached with [`Module::apply_reparameterization`]: optimizers,
//! gradients, checkpoints (module records) and `Module::valid` see them as ordinary parameters,
//! and `Module::materialize` folds them into the weights, which is what
//! [`crate::save_pretrained`] writes. [`save_peft_adapter`] writes the adapters alone in PEFT's
//! layout.
//!
//! DoRA (Liu et al., 2024; PEFT's `use_dora`) decomposes the adapted weight into a direction and a
//! trained magnitude `m` (`[d_out]`, one per output, starting at `‖W‖` of that output's column):
//! `W' = m · (W + s·A·B) / ‖W + s·A·B‖`, the norm over each output's inputs taken as a constant
//! to the gradient (the paper's §4.3, as PEFT does). It starts at `W' = W` too ([`DoraAdapter`]).
//!
//! Targets are module names, matched against the end of each linear layer's path the way PEFT
//! matches `target_modules` (`q_proj` matches `layers.3.self_attn.q_proj`, and so does
//! `self_attn.q_proj`); `all-linear` is every linear layer but the output head. Without targets,
//! the family's PEFT defaults apply ([`default_target_modules`]).

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{
    LoraAdapter, Module, ModuleVisitor, Param, Reparameterization, Reparameterizer,
};
use burn::tensor::{Distribution, Tensor};
use rlhf_core::train::fs::write_atomic;
use rlhf_core::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Architecture, TransformerConfig};
use crate::hf::hf_parameter_name;
use crate::lm::CausalLm;

/// The target that selects every linear layer except the output head (PEFT's `all-linear`).
pub const ALL_LINEAR: &str = "all-linear";

/// Output heads, which `all-linear` leaves out (PEFT leaves out the output layer; a scalar
/// model's `score` head is trained whole, as PEFT's `modules_to_save` does for classifiers).
const HEADS: &[&str] = &["lm_head", "embed_out", "score"];

/// LoRA's settings [PEFT: `LoraConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of each adapter.
    pub rank: usize,
    /// `α`: the adapters' product is scaled by `α/r` (`α/√r` with `rslora`).
    pub alpha: f64,
    /// Module names to adapt (empty: the family's PEFT defaults; `all-linear`: every linear layer
    /// but the head).
    pub target_modules: Vec<String>,
    /// Rank-stabilised LoRA (Kalajdzievski 2023; PEFT's `use_rslora`): scale by `α/√r`, which
    /// keeps the update's size from shrinking as the rank grows.
    #[serde(default)]
    pub rslora: bool,
    /// DoRA (PEFT's `use_dora`): a trained magnitude per output besides the adapters
    /// ([`DoraAdapter`]).
    #[serde(default)]
    pub dora: bool,
}

impl LoraConfig {
    /// Rank `rank`, scale `alpha / rank`, the family's default targets.
    pub fn new(rank: usize, alpha: f64) -> Self {
        LoraConfig {
            rank,
            alpha,
            target_modules: Vec::new(),
            rslora: false,
            dora: false,
        }
    }

    /// The factor of the adapters' product: `α/r`, or `α/√r` with `rslora` (PEFT's `scaling`).
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// The module names targeted on `arch`.
    pub fn targets(&self, arch: Architecture) -> Vec<String> {
        if self.target_modules.is_empty() {
            default_target_modules(arch)
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            self.target_modules.clone()
        }
    }

    /// Refuses a rank of 0, a non-finite or non-positive `α`, and target names that are not
    /// dotted identifiers.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Config("LoRA: the rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Config(format!(
                "LoRA: alpha must be positive, got {}",
                self.alpha
            )));
        }
        for t in &self.target_modules {
            let ident =
                |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if t != ALL_LINEAR && !t.split('.').all(ident) {
                return Err(Error::Config(format!(
                    "LoRA: target module `{t}` is not a module name (letters, digits, `_`, \
                     dotted paths) or `{ALL_LINEAR}`"
                )));
            }
        }
        Ok(())
    }
}

/// PEFT's default `target_modules` of each family
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`): the attention's query and value
/// projections, or the fused projection that holds them. PEFT has no default for Phi-3 (it asks
/// for targets); here it is the fused `qkv_proj`, which holds Phi-3's query and value.
pub fn default_target_modules(arch: Architecture) -> &'static [&'static str] {
    match arch {
        Architecture::GptNeox => &["query_key_value"],
        Architecture::Llama | Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Mistral => {
            &["q_proj", "v_proj"]
        }
        Architecture::Phi3 => &["qkv_proj"],
        Architecture::Gpt2 => &["c_attn"],
    }
}

/// A linear layer's weight as the module tree holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearWeight {
    /// The parameter's path in the module tree (`Llama.layers.0.self_attn.q_proj.weight`).
    pub path: String,
    /// `[d_in, d_out]`.
    pub dims: [usize; 2],
}

impl LinearWeight {
    /// The layer's path: the parameter's without `.weight`.
    pub fn module(&self) -> &str {
        self.path.strip_suffix(".weight").unwrap_or(&self.path)
    }

    /// The layer's own name, the last part of its path (`q_proj`).
    pub fn name(&self) -> &str {
        let m = self.module();
        m.rsplit('.').next().unwrap_or(m)
    }

    /// Whether `target` names this layer: its path ends with `target` at a `.` boundary
    /// (PEFT's suffix match), or `target` is `all-linear` and the layer is not a head.
    fn is_targeted_by(&self, target: &str) -> bool {
        if target == ALL_LINEAR {
            return !HEADS.contains(&self.name());
        }
        let m = self.module();
        m == target || m.ends_with(&format!(".{target}"))
    }
}

/// Every linear layer's weight in `model` (`Linear` and GPT-2's `Conv1D`), in visiting order.
/// Embeddings are not linear layers and are never adapted.
pub fn linear_weights<M: Module>(model: &M) -> Vec<LinearWeight> {
    struct Visitor {
        path: Vec<String>,
        containers: Vec<String>,
        found: Vec<LinearWeight>,
    }
    impl ModuleVisitor for Visitor {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push(name.to_string());
            self.containers.push(container_type.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
            self.containers.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let linear = matches!(
                self.containers.last().map(String::as_str),
                Some("Struct:Linear" | "Struct:Conv1D")
            );
            if D == 2 && linear && self.path.last().is_some_and(|p| p == "weight") {
                let shape = param.lazy_shape();
                self.found.push(LinearWeight {
                    path: self.path.join("."),
                    dims: [shape[0], shape[1]],
                });
            }
        }
    }
    let mut v = Visitor {
        path: Vec::new(),
        containers: Vec::new(),
        found: Vec::new(),
    };
    model.visit(&mut v);
    v.found
}

/// The linear weights of `model` that `cfg` adapts on `arch`. Every target must name at least
/// one layer: a target that names none is an error listing the layer names the model has.
pub fn lora_targets<M: Module>(
    model: &M,
    cfg: &LoraConfig,
    arch: Architecture,
) -> Result<Vec<LinearWeight>> {
    cfg.validate()?;
    let weights = linear_weights(model);
    let targets = cfg.targets(arch);
    for t in &targets {
        if !weights.iter().any(|w| w.is_targeted_by(t)) {
            let names: BTreeSet<&str> = weights.iter().map(LinearWeight::name).collect();
            return Err(Error::Config(format!(
                "LoRA: target module `{t}` is not a linear layer of this {arch:?} model; its \
                 linear layers are {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(weights
        .into_iter()
        .filter(|w| targets.iter().any(|t| w.is_targeted_by(t)))
        .collect())
}

/// Attaches PEFT-initialised adapters to the weights of `targets` (paths of 2-D weights) and
/// freezes every other parameter.
struct PeftLora {
    targets: BTreeSet<String>,
    rank: usize,
    scale: f64,
}

impl PeftLora {
    /// The frozen `param`, and the factors of its adapter when it is a target: `A` as PEFT
    /// draws it (`kaiming_uniform_(A, a=√5)`, whose bound is `1/√d_in`), `B = 0`.
    fn factors<const D: usize>(
        &self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<(Tensor<2>, Tensor<2>)>) {
        let base = param.set_require_grad(false);
        if D != 2 || !self.targets.contains(path) {
            return (base, None);
        }
        let weight = base.val();
        let device = weight.device();
        let [d_in, d_out] = [weight.dims()[0], weight.dims()[1]];
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Tensor::<2>::random(
            [d_in, self.rank],
            Distribution::Uniform(-bound, bound),
            &device,
        );
        let b = Tensor::<2>::zeros([self.rank, d_out], &device);
        (base, Some((a, b)))
    }
}

impl Reparameterizer for PeftLora {
    type Reparam = LoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<LoraAdapter>) {
        let (base, factors) = self.factors(path, param);
        let adapter = factors.map(|(a, b)| LoraAdapter {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            scale: self.scale,
        });
        (base, adapter)
    }
}

/// DoRA's adapter of a weight `W` (`[d_in, d_out]`): LoRA's factors `A`, `B` and scale `s`, and
/// the magnitude `m` (`[d_out]`). The weight it gives is
/// `W' = m ⊙ (W + s·A·B) / ‖W + s·A·B‖`, each output's column divided by its norm over the
/// inputs and multiplied by its magnitude; the norm is a constant to the gradient (DoRA's §4.3,
/// PEFT's `weight_norm.detach()`). A column of norm 0 is divided by the least positive `f32`
/// instead: its magnitude starts at 0 and receives a gradient of 0, so it stays 0 (PEFT's would be
/// NaN).
#[derive(Debug, Module)]
pub struct DoraAdapter {
    /// Down-projection `[d_in, r]`.
    pub a: Param<Tensor<2>>,
    /// Up-projection `[r, d_out]`.
    pub b: Param<Tensor<2>>,
    /// The magnitude of each output's column, `[d_out]`.
    pub magnitude: Param<Tensor<1>>,
    /// `s`, as LoRA's.
    pub scale: f64,
}

impl Reparameterization for DoraAdapter {
    const NAME: &'static str = ADAPTER;

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let shape = base.shape();
        let (a, b) = (self.a.val(), self.b.val());
        let [d_in, d_out] = [a.dims()[0], b.dims()[1]];
        // computed in the adapters' dtype, as burn's LoRA adapter composes
        let base = if base.dtype().is_float() && base.dtype() != a.dtype() {
            base.cast(a.dtype())
        } else {
            base
        };
        let w = base
            .reshape([d_in, d_out])
            .add(a.matmul(b).mul_scalar(self.scale));
        let norm = column_norms(w.clone().detach()).clamp_min(f32::MIN_POSITIVE);
        let factor = self.magnitude.val().unsqueeze_dim::<2>(0).div(norm);
        w.mul(factor).reshape(shape)
    }
}

/// `‖w_{·,j}‖` of each column of `w` (`[d_in, d_out]`), as `[1, d_out]`.
fn column_norms(w: Tensor<2>) -> Tensor<2> {
    w.powi_scalar(2).sum_dim(0).sqrt()
}

/// [`PeftLora`]'s adapters with DoRA's magnitude, started at each column's norm `‖W‖`.
struct PeftDora(PeftLora);

impl Reparameterizer for PeftDora {
    type Reparam = DoraAdapter;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<DoraAdapter>) {
        let (base, factors) = self.0.factors(path, param);
        let adapter = factors.map(|(a, b)| {
            let d_out = b.dims()[1];
            let weight = base.val();
            let dims = weight.dims();
            let norms = column_norms(weight.reshape([dims[0], dims[1]])).reshape([d_out]);
            DoraAdapter {
                a: Param::from_tensor(a),
                b: Param::from_tensor(b),
                magnitude: Param::from_tensor(norms),
                scale: self.0.scale,
            }
        });
        (base, adapter)
    }
}

/// `model` with LoRA adapters on the weights `cfg` targets (on the family `arch`), their `A`
/// factors drawn from `seed`, and every other parameter frozen. Call it on the model on its
/// training (autodiff) device.
pub fn apply_lora<M: Module>(
    model: M,
    cfg: &LoraConfig,
    arch: Architecture,
    seed: u64,
) -> Result<M> {
    let targets: BTreeSet<String> = lora_targets(&model, cfg, arch)?
        .into_iter()
        .map(|w| w.path)
        .collect();
    let device = model
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| Error::Config("LoRA: the model has no parameters".into()))?;
    let lora = PeftLora {
        targets,
        rank: cfg.rank,
        scale: cfg.scale(),
    };
    Ok(rlhf_core::train::seeded(&device, seed, || {
        if cfg.dora {
            model.apply_reparameterization(PeftDora(lora))
        } else {
            model.apply_reparameterization(lora)
        }
    }))
}

/// `(trained, total)`: the parameters that train (require gradients, on an autodiff device) and
/// all of them, adapters included.
pub fn trainable_params<M: Module>(model: &M) -> (usize, usize) {
    let (trained, frozen) = rlhf_core::train::memory::parameter_counts(model);
    (trained as usize, (trained + frozen) as usize)
}

/// Where a weight's adapter sits in the module tree: `….q_proj.weight.lora.{a,b}` (and DoRA's
/// `….lora.magnitude`).
const ADAPTER: &str = "lora";

/// Writes the adapters of `model` (a [`CausalLm`] with adapters from [`apply_lora`] under
/// `cfg`) in PEFT's layout: `dir/adapter_model.safetensors`, tensors
/// `base_model.model.<Hugging Face layer path>.lora_A.weight` (`[r, d_in]`) and `….lora_B.weight`
/// (`[d_out, r]`), with DoRA `….lora_magnitude_vector` (`[d_out]`), and
/// `dir/adapter_config.json` naming `base_model` as the base.
/// `peft.PeftModel.from_pretrained(base, dir)` loads them.
pub fn save_peft_adapter(
    model: &CausalLm,
    config: &TransformerConfig,
    cfg: &LoraConfig,
    base_model: &Path,
    dir: &Path,
) -> Result<()> {
    let arch = config.architecture;
    let (tensors, layers) = peft_tensors(model, arch);
    if tensors.is_empty() {
        return Err(Error::Config("the model carries no LoRA adapters".into()));
    }
    let magnitudes = tensors
        .iter()
        .filter(|t| t.0.ends_with(".lora_magnitude_vector"))
        .count();
    if magnitudes != if cfg.dora { layers.len() } else { 0 } {
        return Err(Error::Config(format!(
            "the adapters' config says use_dora {}, and {magnitudes} of the {} adapters carry \
             DoRA's magnitude",
            cfg.dora,
            layers.len()
        )));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("adapter tensors: {e}")))?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("adapter_model.safetensors");
    let bytes =
        safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            message: e.to_string(),
        })?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&path, &bytes)?;
    let adapter_config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model.display().to_string(),
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": 0.0,
        "target_modules": layers,
        "fan_in_fan_out": arch == Architecture::Gpt2,
        "bias": "none",
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": cfg.rslora,
        "use_dora": cfg.dora,
        "modules_to_save": null,
    });
    let text = serde_json::to_vec_pretty(&adapter_config).expect("a JSON value serialises");
    write_atomic(&dir.join("adapter_config.json"), &text)
}

/// A tensor as `safetensors` writes it: its name, shape and little-endian f32 bytes.
type NamedTensor = (String, Vec<usize>, Vec<u8>);

/// The adapters of `model` as PEFT's tensors ([`save_peft_adapter`]), and the adapted layers by
/// their Hugging Face paths (PEFT matches a list of targets by name and expands `all-linear` only
/// when given as a string, so the exact paths always load).
fn peft_tensors(model: &CausalLm, arch: Architecture) -> (Vec<NamedTensor>, Vec<String>) {
    let mut tensors: Vec<NamedTensor> = Vec::new();
    let mut layers = Vec::new();
    for Adapter {
        path,
        a,
        b,
        magnitude,
    } in adapters(model)
    {
        let name = hf_parameter_name(arch, &path);
        let layer = name.strip_suffix(".weight").unwrap_or(&name).to_string();
        layers.push(layer.clone());
        let bytes = |t: Tensor<2>| -> Vec<u8> {
            rlhf_core::host::to_f32_vec(t)
                .into_iter()
                .flat_map(f32::to_le_bytes)
                .collect()
        };
        let (a, b) = (a.transpose(), b.transpose());
        tensors.push((
            format!("base_model.model.{layer}.lora_A.weight"),
            a.dims().to_vec(),
            bytes(a),
        ));
        tensors.push((
            format!("base_model.model.{layer}.lora_B.weight"),
            b.dims().to_vec(),
            bytes(b),
        ));
        if let Some(m) = magnitude {
            let d_out = m.dims()[0];
            tensors.push((
                format!("base_model.model.{layer}.lora_magnitude_vector"),
                vec![d_out],
                bytes(m.reshape([1, d_out])),
            ));
        }
    }
    (tensors, layers)
}

/// An adapted weight's adapter, as [`adapters`] finds it.
struct Adapter {
    /// The weight's path.
    path: String,
    /// `A`, `[d_in, r]`.
    a: Tensor<2>,
    /// `B`, `[r, d_out]`.
    b: Tensor<2>,
    /// DoRA's magnitude, `[d_out]`.
    magnitude: Option<Tensor<1>>,
}

/// The adapter of every adapted weight of `model`, in visiting order. (A weight's visitor sees
/// its frozen base as a plain parameter, then the adapter's factors as the parameters `lora.a`
/// and `lora.b` under it, and DoRA's magnitude as `lora.magnitude`.)
fn adapters<M: Module>(model: &M) -> Vec<Adapter> {
    struct Collect {
        path: Vec<String>,
        a: Option<Tensor<2>>,
        found: Vec<Adapter>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n = self.path.len();
            if n < 3 || self.path[n - 2] != ADAPTER {
                return;
            }
            let value = param.val();
            let dims = value.dims();
            let path = self.path[..n - 2].join(".");
            match (self.path[n - 1].as_str(), D) {
                ("a", 2) => self.a = Some(value.reshape([dims[0], dims[1]])),
                ("b", 2) => {
                    if let Some(a) = self.a.take() {
                        self.found.push(Adapter {
                            path,
                            a,
                            b: value.reshape([dims[0], dims[1]]),
                            magnitude: None,
                        });
                    }
                }
                ("magnitude", 1) => {
                    if let Some(last) = self.found.last_mut().filter(|f| f.path == path) {
                        last.magnitude = Some(value.reshape([dims[0]]));
                    }
                }
                _ => {}
            }
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        a: None,
        found: Vec::new(),
    };
    model.visit(&mut c);
    c.found
}
