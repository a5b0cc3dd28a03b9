//! Parsing a user's choice of device, in one place.
//!
//! burn 0.22 picks the backend at run time through [`burn::tensor::Device`]; which backends
//! exist is decided at compile time by cargo features (`flex`, `wgpu`, `vulkan`, `cpu`, `cuda`,
//! `tch`),
//! forwarded by every crate of this workspace to burn's features of the same name.
//! `Device::default()` is never used: with the `cuda` feature on a machine without a GPU it would
//! pick CUDA.

use burn::tensor::{Device, DeviceKind};

use crate::{Error, Result};

/// A parsed device string, before the device is created.
///
/// | string | device |
/// | --- | --- |
/// | `flex` | burn's pure-Rust CPU backend (the default feature) |
/// | `cpu` | CubeCL's CPU backend (feature `cpu`) |
/// | `wgpu`, `wgpu:cpu`, `wgpu:discrete:N`, `wgpu:integrated:N` | WGSL through wgpu (feature `wgpu`); `wgpu` alone takes the system's default adapter |
/// | `vulkan`, `vulkan:cpu`, … | wgpu pinned to Vulkan and SPIR-V (feature `vulkan`) |
/// | `cuda`, `cuda:N` | CUDA device `N` (feature `cuda`) |
/// | `tch`, `tch:cpu`, `tch:cuda:N`, `tch:mps` | LibTorch through burn-tch (feature `tch`, built against an installed PyTorch) on the CPU, CUDA device `N` or Apple's MPS |
/// | `ws://HOST:PORT` | the first device of a burn-remote server (feature `remote`; see [`crate::remote`]) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's flex backend.
    Flex,
    /// CubeCL's CPU backend.
    Cpu,
    /// wgpu (WGSL) on the given adapter kind.
    Wgpu(AdapterKind),
    /// wgpu pinned to Vulkan on the given adapter kind.
    Vulkan(AdapterKind),
    /// CUDA device by index.
    Cuda(usize),
    /// LibTorch on the given device.
    Tch(TchKind),
    /// A burn-remote server's device, by its WebSocket address (`ws://HOST:PORT`).
    Remote(String),
}

/// Which device a LibTorch tensor lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TchKind {
    /// The CPU (PyTorch's own kernels and threads).
    Cpu,
    /// CUDA device by index.
    Cuda(usize),
    /// Apple's Metal Performance Shaders.
    Mps,
}

/// Which adapter a wgpu device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    /// The system's default adapter.
    Default,
    /// A CPU (software) adapter, such as Mesa's lavapipe.
    Cpu,
    /// The N-th discrete GPU.
    Discrete(usize),
    /// The N-th integrated GPU.
    Integrated(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        if let Some(address) = lower.strip_prefix("ws://") {
            if address.is_empty() || address.starts_with(':') {
                return Err(Error::Device(format!("`{s}`: expected ws://HOST:PORT")));
            }
            return Ok(DeviceSpec::Remote(format!("ws://{}", &s.trim()[5..])));
        }
        let (name, rest) = match lower.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (lower.as_str(), None),
        };
        let bad = |why: &str| Error::Device(format!("`{s}`: {why}"));
        match name {
            "flex" | "cpu" if rest.is_some() => Err(bad("this backend takes no `:` suffix")),
            "flex" => Ok(DeviceSpec::Flex),
            "cpu" => Ok(DeviceSpec::Cpu),
            "wgpu" | "vulkan" => {
                let kind = match rest {
                    None => AdapterKind::Default,
                    Some("cpu") => AdapterKind::Cpu,
                    Some(r) => match r.split_once(':') {
                        Some(("discrete", i)) => {
                            AdapterKind::Discrete(parse_index(i).map_err(|e| bad(&e))?)
                        }
                        Some(("integrated", i)) => {
                            AdapterKind::Integrated(parse_index(i).map_err(|e| bad(&e))?)
                        }
                        _ => {
                            return Err(bad(
                                "expected `cpu`, `discrete:N` or `integrated:N` after `:`",
                            ));
                        }
                    },
                };
                Ok(if name == "wgpu" {
                    DeviceSpec::Wgpu(kind)
                } else {
                    DeviceSpec::Vulkan(kind)
                })
            }
            "cuda" => Ok(DeviceSpec::Cuda(match rest {
                None => 0,
                Some(i) => parse_index(i).map_err(|e| bad(&e))?,
            })),
            "tch" => Ok(DeviceSpec::Tch(match rest {
                None | Some("cpu") => TchKind::Cpu,
                Some("mps") => TchKind::Mps,
                Some("cuda") => TchKind::Cuda(0),
                Some(r) => match r.split_once(':') {
                    Some(("cuda", i)) => TchKind::Cuda(parse_index(i).map_err(|e| bad(&e))?),
                    _ => return Err(bad("expected `cpu`, `cuda:N` or `mps` after `tch:`")),
                },
            })),
            _ => Err(bad(
                "unknown backend; expected flex, cpu, wgpu, vulkan, cuda[:N], \
                 tch[:cpu|:cuda:N|:mps] or ws://HOST:PORT",
            )),
        }
    }
}

fn parse_index(s: &str) -> std::result::Result<usize, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a device index"))
}

impl DeviceSpec {
    /// The cargo feature that compiles this backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            DeviceSpec::Flex => "flex",
            DeviceSpec::Cpu => "cpu",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Vulkan(_) => "vulkan",
            DeviceSpec::Cuda(_) => "cuda",
            DeviceSpec::Tch(_) => "tch",
            DeviceSpec::Remote(_) => "remote",
        }
    }

    /// Creates the device, or says which feature to enable when the backend was not compiled in.
    /// The device has no autodiff; call `.autodiff()` on it where training needs gradients.
    pub fn create(&self) -> Result<Device> {
        let missing = || {
            Error::Device(format!(
                "backend `{}` was not compiled in: rebuild with `--features {}`",
                self.feature(),
                self.feature()
            ))
        };
        match self {
            DeviceSpec::Flex => {
                #[cfg(feature = "flex")]
                return Ok(Device::flex());
                #[cfg(not(feature = "flex"))]
                return Err(missing());
            }
            DeviceSpec::Cpu => {
                #[cfg(feature = "cpu")]
                return Ok(Device::cpu());
                #[cfg(not(feature = "cpu"))]
                return Err(missing());
            }
            DeviceSpec::Wgpu(kind) => {
                #[cfg(feature = "wgpu")]
                return Ok(Device::wgpu(adapter(*kind)));
                #[cfg(not(feature = "wgpu"))]
                return {
                    let _ = kind;
                    Err(missing())
                };
            }
            DeviceSpec::Vulkan(kind) => {
                #[cfg(feature = "vulkan")]
                return Ok(Device::vulkan(adapter(*kind)));
                #[cfg(not(feature = "vulkan"))]
                return {
                    let _ = kind;
                    Err(missing())
                };
            }
            DeviceSpec::Cuda(index) => {
                #[cfg(feature = "cuda")]
                return Ok(Device::cuda(*index));
                #[cfg(not(feature = "cuda"))]
                return {
                    let _ = index;
                    Err(missing())
                };
            }
            DeviceSpec::Tch(kind) => {
                // burn 0.22 marks burn-tch deprecated in favour of its CubeCL backends; on a CPU
                // it is the fastest backend burn has (see docs/perf-report.md)
                #[cfg(feature = "tch")]
                #[allow(deprecated)]
                return Ok(match kind {
                    TchKind::Cpu => Device::libtorch(),
                    TchKind::Cuda(i) => Device::libtorch_cuda(*i),
                    TchKind::Mps => Device::libtorch_mps(),
                });
                #[cfg(not(feature = "tch"))]
                return {
                    let _ = kind;
                    Err(missing())
                };
            }
            DeviceSpec::Remote(address) => {
                #[cfg(feature = "remote")]
                return crate::remote::connect(address);
                #[cfg(not(feature = "remote"))]
                return {
                    let _ = address;
                    Err(missing())
                };
            }
        }
    }
}

/// Whether `device` (with or without autodiff) is a LibTorch device; always `false` without the
/// `tch` feature. burn 0.22 does not export its dispatch enum, and a device prints as
/// `Device<LibTorch(…)>`.
pub fn is_libtorch(device: &Device) -> bool {
    #[cfg(feature = "tch")]
    {
        format!("{:?}", device.clone().without_autodiff()).starts_with("Device<LibTorch(")
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = device;
        false
    }
}

/// Whether `device` (with or without autodiff) is burn-flex, the pure-Rust CPU backend. Work
/// that is too small to fill the CPU's threads inside one operation (a decode step's products)
/// may be split across them by the caller instead.
///
/// ```
/// assert!(rlhf_core::device::is_flex(&rlhf_core::parse_device("flex").unwrap()));
/// ```
pub fn is_flex(device: &Device) -> bool {
    format!("{:?}", device.clone().without_autodiff()).starts_with("Device<Flex")
}

/// The burn adapter selector for an [`AdapterKind`].
pub fn adapter(kind: AdapterKind) -> DeviceKind {
    match kind {
        AdapterKind::Default => DeviceKind::DefaultDevice,
        AdapterKind::Cpu => DeviceKind::Cpu,
        AdapterKind::Discrete(i) => DeviceKind::DiscreteGpu(i),
        AdapterKind::Integrated(i) => DeviceKind::IntegratedGpu(i),
    }
}

/// Parses a device string (see [`DeviceSpec`]) and creates the device.
///
/// ```
/// let device = rlhf_core::parse_device("flex").unwrap();
/// assert!(!device.is_autodiff());
/// assert!(rlhf_core::parse_device("tpu").is_err());
/// ```
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceSpec>()?.create()
}

/// The device named by the `RLHF_DEVICE` environment variable, or `flex` when it is unset.
///
/// Tests and examples use it so one test suite runs on every backend: CI runs the suite again
/// with `RLHF_DEVICE=wgpu:cpu` and `--features wgpu` on Mesa's lavapipe.
pub fn device_from_env() -> Result<Device> {
    match std::env::var("RLHF_DEVICE") {
        Ok(s) if !s.trim().is_empty() => parse_device(&s),
        _ => parse_device("flex"),
    }
}
