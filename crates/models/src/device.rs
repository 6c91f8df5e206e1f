//! Choosing the compute device at run time (`--device cpu|gpu:N|NAME`) and listing the
//! adapters (`medret devices`).
//!
//! The CPU runs on burn-flex. GPUs run on burn's CubeCL backend through Vulkan (SPIR-V
//! kernels), enabled by the `gpu` cargo feature (`cuda` is a deprecated alias: it was
//! never CUDA). burn 0.22.1's native `cuda` feature cannot be used: its `cubecl-cuda` 0.11
//! depends on `cubecl-llvm`, whose build script downloads a prebuilt LLVM 23 and so fails
//! without internet (and no Debian package provides LLVM 23). Vulkan reaches the same
//! NVIDIA GPUs through the driver's Vulkan ICD and builds offline. Mesa's lavapipe, a
//! Vulkan implementation on the CPU, runs the same kernels in CI.

use burn::prelude::Device;
use serde::Serialize;

/// True when this build can use GPUs.
pub const GPU_BUILD: bool = cfg!(any(feature = "gpu", feature = "gpu-wgsl"));

/// How to get a build that can.
pub const REBUILD: &str = "rebuild with `cargo build --release --features gpu` (Vulkan; needs the GPU driver's Vulkan ICD)";

/// One adapter, as `medret devices` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Adapter {
    /// Its position in the list: `--device gpu:N`.
    pub index: usize,
    pub name: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    /// The largest buffer the adapter allows, in bytes (Vulkan through wgpu reports no
    /// total memory).
    pub max_buffer_bytes: u64,
    /// The burn device it is (`Vulkan(DiscreteGpu(0))`, ...).
    pub device: String,
}

/// Every Vulkan adapter, in the order Vulkan lists them.
#[cfg(any(feature = "gpu", feature = "gpu-wgsl"))]
pub fn adapters() -> Vec<Adapter> {
    use burn::tensor::DeviceKind;
    use std::future::Future;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    // Native enumeration is synchronous behind its future: one poll finishes it.
    let mut fut = Box::pin(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let list = match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(l) => l,
        std::task::Poll::Pending => Vec::new(),
    };
    let mut seen = std::collections::HashMap::<&'static str, usize>::new();
    list.iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            let kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => "discrete",
                wgpu::DeviceType::IntegratedGpu => "integrated",
                wgpu::DeviceType::VirtualGpu => "virtual",
                wgpu::DeviceType::Cpu => "cpu",
                wgpu::DeviceType::Other => "other",
            };
            let n = seen.entry(kind).or_default();
            // burn numbers adapters within their type, in this same order.
            let burn_kind = match kind {
                "discrete" => Some(DeviceKind::DiscreteGpu(*n)),
                "integrated" => Some(DeviceKind::IntegratedGpu(*n)),
                "virtual" => Some(DeviceKind::VirtualGpu(*n)),
                "cpu" => (*n == 0).then_some(DeviceKind::Cpu),
                _ => None,
            };
            *n += 1;
            Adapter {
                index,
                name: info.name.clone(),
                kind: kind.into(),
                backend: format!("{:?}", info.backend),
                driver: info.driver.clone(),
                driver_info: info.driver_info.clone(),
                max_buffer_bytes: a.limits().max_buffer_size,
                device: burn_kind
                    .and_then(|k| on_vulkan(k).ok())
                    .map(|d| format!("{d:?}"))
                    .unwrap_or_else(|| "none (burn cannot address it)".into()),
            }
        })
        .collect()
}

/// Without the `gpu` feature there are none.
#[cfg(not(any(feature = "gpu", feature = "gpu-wgsl")))]
pub fn adapters() -> Vec<Adapter> {
    Vec::new()
}

/// How kernels reach the driver. The `gpu` build compiles CubeCL's own SPIR-V on Vulkan
/// (subgroups and cooperative matrices where the GPU has them); the `gpu-wgsl` build has
/// wgpu's naga translate WGSL instead. Mesa 22's lavapipe (Debian 12's software Vulkan,
/// what CI runs) crashes compiling CubeCL's SPIR-V, even for an addition, and runs naga's;
/// the parity tests therefore run on `gpu-wgsl` there, and on `gpu` on a real GPU.
pub const SHADERS: &str = if cfg!(feature = "gpu") {
    "spirv"
} else {
    "wgsl"
};

#[cfg(feature = "gpu")]
fn on_vulkan(kind: burn::tensor::DeviceKind) -> Result<Device, String> {
    Ok(Device::vulkan(kind))
}

#[cfg(all(feature = "gpu-wgsl", not(feature = "gpu")))]
fn on_vulkan(kind: burn::tensor::DeviceKind) -> Result<Device, String> {
    Ok(Device::wgpu(kind))
}

/// The burn device of adapter `a`.
#[cfg(any(feature = "gpu", feature = "gpu-wgsl"))]
fn device_of(a: &Adapter) -> Result<Device, String> {
    use burn::tensor::DeviceKind;
    let n = adapters()
        .iter()
        .filter(|b| b.kind == a.kind && b.index < a.index)
        .count();
    let kind = match a.kind.as_str() {
        "discrete" => DeviceKind::DiscreteGpu(n),
        "integrated" => DeviceKind::IntegratedGpu(n),
        "virtual" => DeviceKind::VirtualGpu(n),
        "cpu" if n == 0 => DeviceKind::Cpu,
        _ => {
            return Err(format!(
                "adapter {} ({}) is of a type burn cannot address",
                a.index, a.name
            ));
        }
    };
    on_vulkan(kind)
}

#[cfg(not(any(feature = "gpu", feature = "gpu-wgsl")))]
fn device_of(_: &Adapter) -> Result<Device, String> {
    Err(format!(
        "this medret was built without GPU support; {REBUILD}"
    ))
}

/// burn's default GPU device: the adapter wgpu ranks first. It is a handle of its own (own
/// queue, own memory pool) even where that adapter is also `gpu:N`, which lets the
/// data-parallel path run on two devices of a machine with one adapter (the parity tests
/// on lavapipe).
#[cfg(any(feature = "gpu", feature = "gpu-wgsl"))]
pub fn default_gpu() -> Device {
    on_vulkan(burn::tensor::DeviceKind::DefaultDevice).expect("a Vulkan device kind")
}

/// Parses `cpu`; `gpu:N` (the N-th adapter of any type, in `medret devices` order; `gpu`
/// alone is `gpu:0`); `cuda:N` and `vulkan:N` as deprecated aliases of `gpu:N`; or a
/// substring of an adapter's name (`--device llvmpipe`, `--device H200`).
pub fn parse_device(s: &str) -> Result<Device, String> {
    let s = s.trim();
    if s == "cpu" {
        return Ok(Device::flex());
    }
    if s.is_empty() {
        return Err("empty device: expected `cpu`, `gpu:N` or part of an adapter's name".into());
    }
    let (kind, index) = match s.split_once(':') {
        Some((k, i)) => (k, Some(i)),
        None => (s, None),
    };
    if !GPU_BUILD {
        return Err(if matches!(kind, "gpu" | "cuda" | "vulkan") {
            format!("device `{s}`: this medret was built without GPU support; {REBUILD}")
        } else {
            format!(
                "unknown device `{s}`: expected `cpu` (`gpu:N` and adapter names need a GPU build: {REBUILD})"
            )
        });
    }
    let list = adapters();
    if matches!(kind, "gpu" | "cuda" | "vulkan") {
        let index: usize = match index {
            None => 0,
            Some(i) => i
                .parse()
                .map_err(|_| format!("device `{s}`: `{i}` is not an adapter index"))?,
        };
        return match list.get(index) {
            Some(a) => device_of(a),
            None => Err(format!(
                "device `{s}`: no adapter {index}; {} found (see `medret devices`; is the GPU driver's Vulkan ICD installed?)",
                list.len()
            )),
        };
    }
    let wanted = s.to_lowercase();
    match list
        .iter()
        .find(|a| a.name.to_lowercase().contains(&wanted))
    {
        Some(a) => device_of(a),
        None => Err(format!(
            "unknown device `{s}`: expected `cpu`, `gpu:N` or part of an adapter's name ({})",
            if list.is_empty() {
                "no adapter found".to_string()
            } else {
                list.iter()
                    .map(|a| a.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_others() {
        assert!(parse_device("cpu").is_ok());
        let e = parse_device("gpu:x").unwrap_err();
        assert!(
            e.contains("not an adapter index") || e.contains("without GPU support"),
            "{e}"
        );
        if !GPU_BUILD {
            let e = parse_device("gpu:1").unwrap_err();
            assert!(
                e.contains("without GPU support") && e.contains("--features gpu"),
                "{e}"
            );
            assert!(adapters().is_empty());
        } else {
            let e = parse_device("no-such-adapter-name").unwrap_err();
            assert!(e.contains("unknown device"), "{e}");
            let n = adapters().len();
            let e = parse_device(&format!("gpu:{n}")).unwrap_err();
            assert!(e.contains(&format!("no adapter {n}")), "{e}");
        }
    }
}
