//! The reference log-prob cache: the frozen reference's sequence log-probs of every response,
//! computed once, stored on disk under a key made of a hash of the reference's weights and a hash
//! of the data, and reused across epochs and runs. A change to either gives a new key, so a stale
//! cache is never read.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use rlhf_core::train::fs::{checksum, write_atomic};
use rlhf_core::{Error, Result};
use rlhf_models::CausalLm;
use serde::{Deserialize, Serialize};

use crate::trainer::Group;

/// FNV-1a over every parameter value of `model` in module order (not the parameter ids, which
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

/// FNV-1a over the token ids of every group (prompt and responses, with separators).
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

#[derive(Serialize, Deserialize)]
struct CacheFile {
    weights: String,
    data: String,
    logps: Vec<Vec<f32>>,
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

    fn path(&self, weights: u64, data: u64) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("ref-logps-{weights:016x}-{data:016x}.json")))
    }

    /// The cached log-probs for this reference and data, or `compute()`'s, stored for next time.
    /// Returns them and whether `compute` ran.
    pub fn get_or_compute(
        &self,
        reference: &CausalLm,
        groups: &[Group],
        compute: impl FnOnce() -> Vec<Vec<f32>>,
    ) -> Result<(Vec<Vec<f32>>, bool)> {
        // without a directory there is nothing to look up: skip hashing every weight
        if self.dir.is_none() {
            return Ok((compute(), true));
        }
        let (w, d) = (weights_hash(reference), data_hash(groups));
        let path = self.path(w, d);
        if let Some(p) = &path
            && p.is_file()
        {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let file: CacheFile = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
                path: p.clone(),
                message: format!("unreadable reference cache ({e}); delete it to recompute"),
            })?;
            let fits = file.logps.len() == groups.len()
                && file
                    .logps
                    .iter()
                    .zip(groups)
                    .all(|(l, g)| l.len() == g.responses.len());
            if fits && file.weights == format!("{w:016x}") && file.data == format!("{d:016x}") {
                return Ok((file.logps, false));
            }
        }
        let logps = compute();
        if let Some(p) = path {
            std::fs::create_dir_all(p.parent().expect("a cache file has a directory"))
                .map_err(|e| Error::io(&p, e))?;
            let file = CacheFile {
                weights: format!("{w:016x}"),
                data: format!("{d:016x}"),
                logps,
            };
            let bytes = serde_json::to_vec(&file).map_err(|e| Error::Record(e.to_string()))?;
            write_atomic(&p, &bytes)?;
            return Ok((file.logps, true));
        }
        Ok((logps, true))
    }
}
