//! The seeded random number generator every trainer draws from, with a state that a checkpoint
//! can store and restore exactly.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Bool, Int, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// ChaCha8, seeded from a `u64`. Its whole state is (seed, stream, word position), so a resumed
/// run continues the exact same sequence of draws.
#[derive(Debug, Clone)]
pub struct TrainRng {
    rng: ChaCha8Rng,
}

/// What a checkpoint stores of a [`TrainRng`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The seed the generator was created from.
    pub seed: [u8; 32],
    /// The ChaCha stream.
    pub stream: u64,
    /// Position in the key stream, in 32-bit words (a decimal string in JSON, since it is `u128`).
    #[serde(with = "u128_string")]
    pub word_pos: u128,
}

/// Seeds everything a run draws from: burn's generator on `device` (parameter initialisation,
/// dropout masks, `Tensor::random`) and the returned [`TrainRng`] (data order, sampling).
///
/// burn's generator state cannot be read back, so trainers draw everything that must survive a
/// resume from the `TrainRng`, whose state a checkpoint stores.
pub fn seed_all(device: &burn::tensor::Device, seed: u64) -> TrainRng {
    device.seed(seed);
    TrainRng::seed_from_u64(seed)
}

/// Runs `init` with burn's generator on `device` seeded to `seed`, holding a process-wide lock,
/// and initialises the module's parameters before the lock is released.
///
/// burn's generator is global: two threads that seed and then initialise (tests in one binary run
/// in parallel) would otherwise draw from each other's sequence, and a "seeded" model would
/// depend on timing. burn also initialises parameters *lazily*, at their first use (a forward
/// pass, a save), so the random draws of a module built inside the lock would otherwise happen
/// after it, whenever the module is first used; [`materialise`] draws them here. Every seeded
/// initialisation in this workspace goes through here. The lock is not re-entrant: `init` must
/// not call `seeded` itself.
pub fn seeded<M: Module>(device: &burn::tensor::Device, seed: u64, init: impl FnOnce() -> M) -> M {
    let _guard = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    let module = init();
    materialise(&module);
    module
}

/// [`seeded`] for an initialisation that can fail.
pub fn try_seeded<M: Module, E>(
    device: &burn::tensor::Device,
    seed: u64,
    init: impl FnOnce() -> Result<M, E>,
) -> Result<M, E> {
    let _guard = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    let module = init()?;
    materialise(&module);
    Ok(module)
}

static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Initialises every lazily initialised parameter of `module` now (burn draws a parameter's
/// initial values at its first use).
pub fn materialise<M: Module>(module: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
            let _ = param.val();
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}

impl TrainRng {
    /// A generator seeded from `seed`.
    pub fn seed_from_u64(seed: u64) -> Self {
        TrainRng {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// An independent generator for a named purpose (e.g. `"sampling"`, `"shuffle"`), derived
    /// from this one's seed so that adding draws for one purpose does not shift another's.
    pub fn fork(&self, purpose: &str) -> Self {
        let mut rng = self.rng.clone();
        rng.set_stream(rlhf_base::seed::seed_of(purpose.as_bytes()));
        rng.set_word_pos(0);
        TrainRng { rng }
    }

    /// The state to store in a checkpoint.
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// A generator that continues exactly where `state` was taken.
    pub fn from_state(state: &RngState) -> Self {
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        TrainRng { rng }
    }
}

impl RngCore for TrainRng {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.rng.fill_bytes(dst)
    }
}

mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn restored_state_continues_the_same_sequence() {
        let mut a = TrainRng::seed_from_u64(7);
        for _ in 0..13 {
            a.next_u32();
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut b = TrainRng::from_state(&serde_json::from_str(&json).unwrap());
        let xs: Vec<f64> = (0..20).map(|_| a.random()).collect();
        let ys: Vec<f64> = (0..20).map(|_| b.random()).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn forks_differ_by_purpose_and_are_reproducible() {
        let root = TrainRng::seed_from_u64(1);
        let (mut s1, mut s2, mut t) = (
            root.fork("sampling"),
            root.fork("sampling"),
            root.fork("shuffle"),
        );
        let a = s1.next_u64();
        assert_eq!(a, s2.next_u64());
        assert_ne!(a, t.next_u64());
    }
}
