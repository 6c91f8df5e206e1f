//! Choosing the compute device at run time (`--device cpu|cuda:N`).
//!
//! The CPU runs on burn-flex. GPUs run on burn's CubeCL backend through Vulkan (SPIR-V
//! kernels), enabled by the `gpu` cargo feature (alias `cuda`). burn 0.22.1's native
//! `cuda` feature cannot be used: its `cubecl-cuda` 0.11 depends on `cubecl-llvm`, whose
//! build script downloads a prebuilt LLVM 23 and so fails without internet (and no Debian
//! package provides LLVM 23). Vulkan reaches the same NVIDIA GPUs through the driver's
//! Vulkan ICD and builds offline, so `cuda:N` names the N-th discrete GPU there.

use burn::prelude::Device;

/// True when this build can use GPUs.
pub const GPU_BUILD: bool = cfg!(feature = "gpu");

/// Parses `cpu`, or `cuda:N` / `gpu:N` / `vulkan:N` (the N-th discrete GPU; `cuda` alone
/// is `cuda:0`).
pub fn parse_device(s: &str) -> Result<Device, String> {
    let s = s.trim();
    if s == "cpu" {
        return Ok(Device::flex());
    }
    let (kind, index) = match s.split_once(':') {
        Some((k, i)) => (k, Some(i)),
        None => (s, None),
    };
    if !matches!(kind, "cuda" | "gpu" | "vulkan") {
        return Err(format!(
            "unknown device `{s}`: expected `cpu` or `cuda:N` (also `gpu:N`, `vulkan:N`)"
        ));
    }
    let index: usize = match index {
        None => 0,
        Some(i) => i
            .parse()
            .map_err(|_| format!("device `{s}`: `{i}` is not a GPU index"))?,
    };
    gpu(s, index)
}

#[cfg(feature = "gpu")]
fn gpu(name: &str, index: usize) -> Result<Device, String> {
    use burn::tensor::{DeviceKind, DeviceType};
    let wanted = Device::vulkan(DeviceKind::DiscreteGpu(index));
    // Asked first, because burn panics in a worker thread on a missing adapter.
    let available = Device::enumerate(DeviceType::Vulkan);
    if available.contains(&wanted) {
        Ok(wanted)
    } else {
        Err(format!(
            "device `{name}`: no discrete GPU {index} on Vulkan ({} Vulkan device(s) found; is the NVIDIA driver's Vulkan ICD installed?)",
            available.len()
        ))
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu(name: &str, _index: usize) -> Result<Device, String> {
    Err(format!(
        "device `{name}`: this medret was built without GPU support; rebuild with `--features cuda` (Vulkan)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_others() {
        assert!(parse_device("cpu").is_ok());
        let e = parse_device("tpu:0").unwrap_err();
        assert!(e.contains("unknown device"), "{e}");
        let e = parse_device("cuda:x").unwrap_err();
        assert!(e.contains("not a GPU index"), "{e}");
        if !GPU_BUILD {
            let e = parse_device("cuda:1").unwrap_err();
            assert!(e.contains("without GPU support"), "{e}");
        }
    }
}
