//! Checkpoints: named binary parts (model weights, optimizer states) plus the trainer's JSON state
//! (step, RNG, KL controller, data position), written atomically and verified on load.
//!
//! A checkpoint is written as a [`NewCheckpoint`], whose parts are encoded one at a time straight
//! into their files (burn's records, written tensor by tensor): the optimizer's moments are never
//! held encoded in memory beside the record they come from. It is read back as a [`Checkpoint`].
//!
//! Layout: `DIR/checkpoint-000000123/` holds one `PART.bin` per part and `manifest.json`, which
//! lists each part's size and checksum and carries the trainer state and the layout's
//! [`FORMAT`]. A checkpoint is written in a
//! hidden `.checkpoint-….tmp` directory, every file fsynced, then renamed into place: a crash at
//! any moment leaves either the previous checkpoints or the new one, never half of it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{Module, ParamGroup, ParamId};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use super::fs::{checksum, file_checksum, sync_dir, sync_file, write_atomic};
use crate::{Error, Result};

/// A checkpoint to write ([`CheckpointStore::save`]).
pub struct NewCheckpoint<'a> {
    /// The optimizer step the checkpoint is taken after.
    pub step: u64,
    /// Binary parts by name (`model`, `optimizer`, `value_model`, …), each written when the
    /// checkpoint is saved.
    pub parts: Vec<(String, Part<'a>)>,
    /// The trainer's own state (RNG, schedule position, KL controller, data-loader position, …).
    pub state: serde_json::Value,
}

/// One part of a [`NewCheckpoint`]: what writes it to its file.
pub struct Part<'a>(Box<WritePart<'a>>);

/// Writes a part to the file at the path it is given.
type WritePart<'a> = dyn FnOnce(&Path) -> Result<()> + 'a;

impl<'a> Part<'a> {
    /// Bytes already in memory.
    pub fn bytes(bytes: Vec<u8>) -> Self {
        Part(Box::new(move |path| write_atomic(path, &bytes)))
    }

    /// A module's weights, as [`module_to_bytes`] encodes them, written from burn's record tensor
    /// by tensor.
    pub fn module<M: Module + 'a>(module: M) -> Self {
        Part(Box::new(move |path| {
            module_record(module)
                .save(path)
                .map_err(|e| Error::Record(format!("writing module {}: {e:?}", path.display())))
        }))
    }

    /// An optimizer's state, as [`optimizer_to_bytes`] encodes it, written from burn's record
    /// tensor by tensor.
    pub fn optimizer(optim: &'a ModuleOptimizer) -> Self {
        Part(Box::new(move |path| {
            optim
                .save(path)
                .map_err(|e| Error::Record(format!("writing optimizer {}: {e:?}", path.display())))
        }))
    }
}

/// One checkpoint read back into memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The optimizer step the checkpoint was taken after.
    pub step: u64,
    /// Binary parts by name (`model`, `optimizer`, `value_model`, …).
    pub parts: BTreeMap<String, Vec<u8>>,
    /// The trainer's own state (RNG, schedule position, KL controller, data-loader position, …).
    pub state: serde_json::Value,
}

impl Checkpoint {
    /// The part `name`; its absence is an error naming `dir` (the run's directory).
    pub fn part(&self, name: &str, dir: &Path) -> Result<&[u8]> {
        self.parts
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("no `{name}` part"),
            })
    }
}

/// The version of the checkpoint layout this code writes and reads. Version 1 (no `format` field
/// in the manifest) checksummed parts with FNV-1a; version 2 with XXH3-64.
pub const FORMAT: u32 = 2;

/// The first thing read from a manifest, so that a checkpoint of another version is refused by
/// its version rather than by a missing field.
#[derive(Deserialize)]
struct Version {
    #[serde(default = "first_format")]
    format: u32,
}

fn first_format() -> u32 {
    1
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    step: u64,
    parts: BTreeMap<String, PartEntry>,
    state: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct PartEntry {
    bytes: u64,
    xxh3_64: String,
}

/// A directory of checkpoints that keeps the last `keep_last`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    keep_last: usize,
}

const PREFIX: &str = "checkpoint-";

impl CheckpointStore {
    /// A store in `dir` (created on the first save) keeping the newest `keep_last` checkpoints
    /// (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep_last: usize) -> Self {
        CheckpointStore {
            dir: dir.into(),
            keep_last: keep_last.max(1),
        }
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory the checkpoint of `step` has (or would have).
    pub fn path_of(&self, step: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{step:09}"))
    }

    /// Writes `ckpt` atomically, one part after the other, then removes checkpoints beyond the
    /// newest `keep_last`. Returns the checkpoint's directory.
    pub fn save(&self, ckpt: NewCheckpoint) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let final_dir = self.path_of(ckpt.step);
        let tmp = self.dir.join(format!(
            ".{PREFIX}{:09}.tmp-{}",
            ckpt.step,
            std::process::id()
        ));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut entries = BTreeMap::new();
        for (name, part) in ckpt.parts {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::Config(format!(
                    "checkpoint part name `{name}` must be [A-Za-z0-9_-]+"
                )));
            }
            if entries.contains_key(&name) {
                return Err(Error::Config(format!(
                    "checkpoint part `{name}` is given twice"
                )));
            }
            let path = tmp.join(format!("{name}.bin"));
            (part.0)(&path)?;
            // burn's recorder does not fsync: the bytes reach the disk before the rename below
            sync_file(&path)?;
            // the part's record is dropped: its memory goes back before the next part's is made
            rlhf_base::release_freed();
            let (bytes, sum) = file_checksum(&path)?;
            entries.insert(
                name,
                PartEntry {
                    bytes,
                    xxh3_64: format!("{sum:016x}"),
                },
            );
        }
        let manifest = Manifest {
            format: FORMAT,
            step: ckpt.step,
            parts: entries,
            state: ckpt.state,
        };
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Record(e.to_string()))?;
        write_atomic(&tmp.join("manifest.json"), &json)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(final_dir)
    }

    /// Removes the hidden directories of checkpoints whose writing was cut short (a process
    /// killed mid-save leaves one; the checkpoints themselves are never partial). Returns how
    /// many were removed. A run calls it when it starts, as the directory's only writer.
    pub fn remove_partial(&self) -> Result<usize> {
        let read = match fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut removed = 0;
        for entry in read.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&format!(".{PREFIX}")) && name.contains(".tmp-") {
                fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Steps of the checkpoints present, oldest first (unverified).
    pub fn steps(&self) -> Result<Vec<u64>> {
        let read = match fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut steps: Vec<u64> = read
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(PREFIX)?.parse().ok())
            .collect();
        steps.sort_unstable();
        Ok(steps)
    }

    /// Removes every checkpoint newer than `step`, so the next resume starts from `step` (to
    /// roll a run back, or to replay a crash in tests). Returns how many were removed.
    pub fn discard_after(&self, step: u64) -> Result<usize> {
        let newer: Vec<u64> = self.steps()?.into_iter().filter(|&s| s > step).collect();
        for s in &newer {
            let p = self.path_of(*s);
            fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        if !newer.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(newer.len())
    }

    /// Loads and verifies the checkpoint of `step`: every part must have the size and checksum
    /// its manifest records.
    pub fn load(&self, step: u64) -> Result<Checkpoint> {
        let dir = self.path_of(step);
        let bad = |m: String| Error::Checkpoint {
            path: dir.clone(),
            message: m,
        };
        let manifest_path = dir.join("manifest.json");
        let raw = fs::read(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let version: Version = serde_json::from_slice(&raw)
            .map_err(|e| bad(format!("manifest.json is not valid: {e}")))?;
        if version.format != FORMAT {
            return Err(bad(format!(
                "checkpoint format {} (this version reads format {FORMAT}): resume it with the \
                 version that wrote it, or start the run again",
                version.format
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&raw)
            .map_err(|e| bad(format!("manifest.json is not valid: {e}")))?;
        if manifest.step != step {
            return Err(bad(format!(
                "manifest says step {}, directory says {step}",
                manifest.step
            )));
        }
        let mut parts = BTreeMap::new();
        for (name, entry) in manifest.parts {
            let path = dir.join(format!("{name}.bin"));
            let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
            if bytes.len() as u64 != entry.bytes {
                return Err(bad(format!(
                    "part `{name}` has {} bytes, manifest says {} (truncated?)",
                    bytes.len(),
                    entry.bytes
                )));
            }
            let sum = format!("{:016x}", checksum(&bytes));
            if sum != entry.xxh3_64 {
                return Err(bad(format!(
                    "part `{name}` checksum {sum} differs from the manifest's {} (corrupt)",
                    entry.xxh3_64
                )));
            }
            parts.insert(name, bytes);
        }
        Ok(Checkpoint {
            step,
            parts,
            state: manifest.state,
        })
    }

    /// The newest checkpoint, verified; `None` when there is none. When the newest is damaged the
    /// error names it and the newest checkpoint before it that verifies, so the user can resume
    /// from that one (or delete the damaged directory).
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        let steps = self.steps()?;
        let Some(&newest) = steps.last() else {
            return Ok(None);
        };
        match self.load(newest) {
            Ok(c) => Ok(Some(c)),
            Err(err) => {
                let previous = steps[..steps.len() - 1]
                    .iter()
                    .rev()
                    .find(|&&s| self.load(s).is_ok());
                let hint = match previous {
                    Some(s) => format!(
                        "; the newest good checkpoint is {}",
                        self.path_of(*s).display()
                    ),
                    None => "; no earlier checkpoint verifies".to_string(),
                };
                Err(Error::Checkpoint {
                    path: self.path_of(newest),
                    message: format!("{err}{hint}"),
                })
            }
        }
    }

    fn prune(&self) -> Result<()> {
        let steps = self.steps()?;
        if steps.len() > self.keep_last {
            for s in &steps[..steps.len() - self.keep_last] {
                let p = self.path_of(*s);
                fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        Ok(())
    }
}

/// A module's weights as bytes (burn's burnpack format, which keeps parameter ids so an
/// optimizer state saved alongside still matches after loading). When some parameters are
/// frozen (LoRA's base weights) and others train, only the trained ones are kept: the frozen
/// ones are the starting checkpoint's, which a resumed run loads again before this record.
pub fn module_to_bytes<M: Module>(module: M) -> Result<Vec<u8>> {
    let bytes = module_record(module)
        .into_bytes()
        .map_err(|e| Error::Record(format!("encoding module: {e:?}")))?;
    Ok(bytes.to_vec())
}

/// The record [`module_to_bytes`] encodes: the trained parameters only, when some are frozen.
fn module_record<M: Module>(module: M) -> ModuleRecord {
    match split_trained(&module) {
        Some(trained) => module.into_record_group(ParamGroup::from_ids(trained)),
        None => module.into_record(),
    }
}

/// The ids of the parameters of `module` that train, when some train and some are frozen; `None`
/// when all train (or none does: a module off the autodiff device).
fn split_trained<M: Module>(module: &M) -> Option<Vec<ParamId>> {
    let params = super::memory::float_params(module);
    let trained: Vec<ParamId> = params.iter().filter(|p| p.trains).map(|p| p.id).collect();
    (!trained.is_empty() && trained.len() < params.len()).then_some(trained)
}

/// Every float parameter of `module`, flattened, in visiting order: what "the same weights" means
/// when comparing two runs (the bytes of [`module_to_bytes`] also hold parameter ids, which differ
/// between runs that drew fresh ids).
pub fn parameter_values<M: Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0.extend(crate::host::to_f32_vec(param.val()));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// Loads weights saved by [`module_to_bytes`] into `module` (which must have the same structure).
pub fn module_from_bytes<M: Module>(module: M, bytes: &[u8]) -> Result<M> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| Error::Record(format!("decoding module: {e:?}")))?
        // a module with frozen parameters was saved without them (see `module_to_bytes`)
        .allow_partial(split_trained(&module).is_some());
    module
        .try_load_record(record)
        .map_err(|e| Error::Record(format!("module does not match the checkpoint: {e:?}")))
}

/// An optimizer's state (moments, step counts) as bytes.
pub fn optimizer_to_bytes(optim: &ModuleOptimizer) -> Result<Vec<u8>> {
    let bytes = optim
        .into_bytes()
        .map_err(|e| Error::Record(format!("encoding optimizer: {e:?}")))?;
    Ok(bytes.to_vec())
}

/// Restores an optimizer state saved by [`optimizer_to_bytes`] into a freshly built optimizer.
pub fn optimizer_from_bytes(optim: ModuleOptimizer, bytes: &[u8]) -> Result<ModuleOptimizer> {
    optim
        .from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| Error::Record(format!("decoding optimizer: {e:?}")))
}
