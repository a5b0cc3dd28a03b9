//! Data-parallel replicas on one machine: each micro-batch is cut into one contiguous shard per
//! replica; every replica computes its shard's loss and backward pass at the same time, on its own
//! thread and device; their gradients are reduced on the first device, and one optimizer step
//! follows there.
//!
//! The reduction weighs each shard as the trainers weigh accumulated micro-batches (by the items
//! its loss is a mean over, see [`super::GradAccumulation`]), so `n` replicas take the step one
//! replica takes on the whole batch, up to f32 rounding: `--devices` changes where the work runs,
//! not what the run computes. The shards are reduced in replica order whatever order the threads
//! finish in, so a run is as reproducible with replicas as without, provided nothing in a
//! replica's step draws random numbers: the backends have one generator, which the threads would
//! draw from in the order they run, so trainers refuse replicas for a model with dropout
//! ([`Replicas::refuse_with_dropout`]).
//!
//! burn 0.22.1's collectives (`DistributedContext`) exist only for CUDA with NCCL, so the
//! replicas are threads here on every backend. Each replica other than the first works on a
//! [`Module::fork`] of the model: the same parameter ids (its gradients are keyed as the model's),
//! but its own autodiff leaves, so the replicas' autodiff graphs never meet. Sharing the model's
//! leaves between threads would put both passes in one graph, where burn-autodiff's lock order
//! lets a forward pass and a backward pass deadlock (`docs/perf-report.md`, "Two replicas in
//! threads").

use std::ops::Range;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;

use crate::Result;

/// The devices of the replicas; none or one means a single replica on the trainer's device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replicas {
    devices: Vec<Device>,
}

impl Replicas {
    /// One replica per device, the first holding the model (it is the trainer's device).
    pub fn new(devices: Vec<Device>) -> Self {
        Replicas { devices }
    }

    /// The default on `device` (an autodiff device): two replicas on flex, one elsewhere. On
    /// two cores, two replicas of one thread each run SFT and DPO 1.3–1.6× faster than one
    /// replica on both threads (`docs/perf-report.md`, "Data-parallel replicas"): burn-flex
    /// splits products across threads but runs most other operations on the calling thread.
    pub fn default_for(device: &Device) -> Self {
        let count = if crate::device::is_flex(device) { 2 } else { 1 };
        Replicas::new(vec![device.clone(); count])
    }

    /// How many replicas work on each micro-batch (at least 1).
    pub fn count(&self) -> usize {
        self.devices.len().max(1)
    }

    /// Refuses replicas for a model whose dropout probability is `dropout` > 0: the replicas'
    /// threads would draw its masks from the backend's one generator in the order they run, and
    /// the run would not be reproducible.
    pub fn refuse_with_dropout(&self, label: &str, dropout: f64) -> Result<()> {
        if self.count() > 1 && dropout > 0.0 {
            return Err(crate::Error::Config(format!(
                "{label}: {} data-parallel replicas and dropout {dropout}: the replicas would \
                 draw dropout masks from one generator in the order their threads run, so the \
                 run would not be reproducible; use one device, or turn dropout off",
                self.count()
            )));
        }
        Ok(())
    }

    /// Runs `work` on every replica's shard at once, and returns what each gave, in replica order.
    ///
    /// The first replica runs on the calling thread with `model` itself on `device`; replica `r`
    /// runs on a thread of its own with a fork of `model` on its device. A shard with nothing in
    /// it is `work`'s to recognise (it returns what it returns for nothing, typically `None`).
    /// A replica's panic is the caller's panic, as it would be without replicas.
    pub fn run<M, T>(
        &self,
        model: &M,
        device: &Device,
        work: &(dyn Fn(&M, Shard<'_>) -> Result<T> + Sync),
    ) -> Result<Vec<T>>
    where
        M: Module,
        T: Send,
    {
        let count = self.count();
        if count == 1 {
            return Ok(vec![work(model, Shard::whole(device))?]);
        }
        std::thread::scope(|scope| {
            let others: Vec<_> = self.devices[1..]
                .iter()
                .enumerate()
                .map(|(k, d)| {
                    let fork = model.clone().fork(d);
                    let shard = Shard {
                        index: k + 1,
                        count,
                        device: d,
                    };
                    scope.spawn(move || work(&fork, shard))
                })
                .collect();
            let first = work(
                model,
                Shard {
                    index: 0,
                    count,
                    device,
                },
            );
            let mut all = vec![first];
            for handle in others {
                all.push(
                    handle
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p)),
                );
            }
            all.into_iter().collect()
        })
    }
}

/// Which part of a micro-batch a replica computes, and on which device.
#[derive(Debug, Clone, Copy)]
pub struct Shard<'a> {
    /// This replica's number, `0..count`.
    pub index: usize,
    /// How many replicas share the micro-batch.
    pub count: usize,
    /// The device this replica's model lives on: its batch tensors belong there.
    pub device: &'a Device,
}

impl<'a> Shard<'a> {
    /// The whole micro-batch, on `device`: what a single replica computes.
    pub fn whole(device: &'a Device) -> Self {
        Shard {
            index: 0,
            count: 1,
            device,
        }
    }

    /// This shard's part of `0..len`: contiguous, the parts' sizes differing by at most one, in
    /// replica order. Empty when there are more replicas than items.
    pub fn range(&self, len: usize) -> Range<usize> {
        len * self.index / self.count..len * (self.index + 1) / self.count
    }

    /// This shard's part of `items` (see [`Self::range`]); `None` when it is empty.
    pub fn of<'t, T>(&self, items: &'t [T]) -> Option<&'t [T]> {
        let part = &items[self.range(items.len())];
        (!part.is_empty()).then_some(part)
    }
}

/// The sum of the replicas' gradients of `model`'s parameters, on `device` (where the optimizer
/// steps). Each replica's gradients are those of its share of the loss, so the sum is the whole
/// batch's gradient.
pub fn sum_gradients<M: Module>(
    model: &M,
    device: &Device,
    parts: Vec<GradientsParams>,
) -> GradientsParams {
    let mut sum = GradientsAccumulator::<M>::new();
    for part in parts {
        sum.accumulate(model, part.to_device(device, model));
    }
    sum.grads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_item_once_in_order() {
        let device = crate::parse_device("flex").expect("the CPU device");
        for len in 0..20 {
            for count in 1..6 {
                let covered: Vec<usize> = (0..count)
                    .flat_map(|index| {
                        Shard {
                            index,
                            count,
                            device: &device,
                        }
                        .range(len)
                    })
                    .collect();
                assert_eq!(
                    covered,
                    (0..len).collect::<Vec<_>>(),
                    "{len} items, {count}"
                );
                let sizes: Vec<usize> = (0..count)
                    .map(|index| {
                        Shard {
                            index,
                            count,
                            device: &device,
                        }
                        .range(len)
                        .len()
                    })
                    .collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{sizes:?}");
            }
        }
    }
}
