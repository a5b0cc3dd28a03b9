//! Moving small tensors between host vectors and a device: for the few places where a recursion
//! runs on the host (GAE), for reading metrics back, and for tests.

use burn::tensor::{Device, Tensor, TensorData};

/// A float tensor of `shape` on `device` from `f32` values in row-major order.
pub fn tensor_from_f32<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A float tensor from `f64` values (stored in the device's float type, `f32` by default).
pub fn tensor_from_f64<const D: usize>(
    values: &[f64],
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    tensor_from_f32(values.iter().map(|&x| x as f32).collect(), shape, device)
}

/// The values of a float tensor, row-major, as `f32` (one device→host read).
pub fn to_f32_vec<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converted to f32 reads back as f32")
}

/// The values of a float tensor as `f64`.
pub fn to_f64_vec<const D: usize>(x: Tensor<D>) -> Vec<f64> {
    to_f32_vec(x).into_iter().map(f64::from).collect()
}
