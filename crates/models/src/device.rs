//! Choosing the compute device at run time (`--device cpu|cuda:N`).

use burn::prelude::Device;

/// Parses `cpu` or `cuda:N`. CPU runs on burn-flex; CUDA needs a build with the `cuda`
/// feature.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "cpu" => Ok(Device::flex()),
        other if other.starts_with("cuda") => Err(format!(
            "device `{other}`: this medret was built without GPU support (the `cuda` feature)"
        )),
        other => Err(format!(
            "unknown device `{other}`: expected `cpu` or `cuda:N`"
        )),
    }
}
