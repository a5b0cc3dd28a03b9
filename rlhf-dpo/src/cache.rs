//! The reference log-prob cache: the frozen reference's sequence log-probs of every response,
//! computed once, stored on disk and reused across epochs and runs.
//!
//! The key covers the inputs that change a reference log-prob and that the trainer sees: the
//! reference's weights, the token ids of the data (so the chat template and the tokenizer, which
//! made them), and how the log-probs are read ([`LogpSpec`]: the truncation, the temperature and
//! LD-DPO's α).
//! A change to any of them gives a new key, so a stale cache is not read. The architecture's
//! settings that no weight carries (a rotary base, a norm's ε) are not in a [`CausalLm`]'s
//! parameters: a caller that changes them keeps another directory (`rlhf dpo` and `rlhf kto` name
//! theirs by the checksum of the reference's `config.json`).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use rlhf_core::train::fs::{checksum, write_atomic};
use rlhf_core::{Error, Result};
use rlhf_models::CausalLm;
use serde::{Deserialize, Serialize};

use crate::trainer::Group;

/// The checksum of every parameter value of `model` in module order (not the parameter ids, which
/// differ between two loads of the same weights).
pub fn weights_hash(model: &CausalLm) -> u64 {
    struct Hasher(Vec<u8>);
    impl ModuleVisitor for Hasher {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0
                .extend_from_slice(&checksum(data.as_bytes()).to_le_bytes());
        }
    }
    let mut h = Hasher(Vec::new());
    model.visit(&mut h);
    checksum(&h.0)
}

/// The checksum of the token ids of every group (prompt and responses, with separators).
pub fn data_hash(groups: &[Group]) -> u64 {
    let mut bytes = Vec::new();
    for g in groups {
        for part in std::iter::once(&g.prompt).chain(&g.responses) {
            bytes.extend(part.iter().flat_map(|t| t.to_le_bytes()));
            bytes.extend(u32::MAX.to_le_bytes());
        }
        bytes.extend((u32::MAX - 1).to_le_bytes());
    }
    checksum(&bytes)
}

/// How the reference's sequence log-probs are read from the token ids: part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogpSpec {
    /// Longest prompt / response kept (prompts keep their end, responses their start).
    pub truncation: Option<(usize, usize)>,
    /// The temperature the logits are divided by.
    pub temperature: f32,
    /// LD-DPO's weight of the tokens beyond a group's shortest response (absent from the key
    /// when `None`, so the caches written before it stay valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ld_alpha: Option<f32>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    weights: String,
    data: String,
    spec: LogpSpec,
    logps: Vec<Vec<f32>>,
}

/// The key of one cache entry: the weights' hash, the data's, and the spec's.
fn key(weights: u64, data: u64, spec: &LogpSpec) -> String {
    let spec_bytes = serde_json::to_vec(spec).expect("a spec serialises");
    format!("{weights:016x}-{data:016x}-{:016x}", checksum(&spec_bytes))
}

/// Reference log-probs per group and response, on disk in `dir` (or only in memory).
#[derive(Debug, Clone)]
pub struct RefCache {
    dir: Option<PathBuf>,
}

impl RefCache {
    /// A cache in `dir`; `None` computes every time.
    pub fn new(dir: Option<&Path>) -> Self {
        RefCache {
            dir: dir.map(Path::to_path_buf),
        }
    }

    /// The cached log-probs for this reference, data and spec, or `compute()`'s, stored for next
    /// time. Returns them and whether `compute` ran.
    pub fn get_or_compute(
        &self,
        reference: &CausalLm,
        groups: &[Group],
        spec: &LogpSpec,
        compute: impl FnOnce() -> Result<Vec<Vec<f32>>>,
    ) -> Result<(Vec<Vec<f32>>, bool)> {
        // without a directory there is nothing to look up: skip hashing every weight
        let Some(dir) = &self.dir else {
            return Ok((compute()?, true));
        };
        let (w, d) = (weights_hash(reference), data_hash(groups));
        let path = dir.join(format!("ref-logps-{}.json", key(w, d, spec)));
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let file: CacheFile = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                message: format!("unreadable reference cache ({e}); delete it to recompute"),
            })?;
            let fits = file.logps.len() == groups.len()
                && file
                    .logps
                    .iter()
                    .zip(groups)
                    .all(|(l, g)| l.len() == g.responses.len());
            if fits
                && file.weights == format!("{w:016x}")
                && file.data == format!("{d:016x}")
                && file.spec == *spec
            {
                return Ok((file.logps, false));
            }
        }
        let file = CacheFile {
            weights: format!("{w:016x}"),
            data: format!("{d:016x}"),
            spec: *spec,
            logps: compute()?,
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let bytes = serde_json::to_vec(&file).map_err(|e| Error::Record(e.to_string()))?;
        write_atomic(&path, &bytes)?;
        Ok((file.logps, true))
    }
}
