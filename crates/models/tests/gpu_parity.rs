//! The GPU path computes what the CPU computes: the same networks, weights and inputs on
//! the first Vulkan adapter (a real GPU, or Mesa's lavapipe in CI) and on the CPU.
//!
//! Built only with `--features gpu` (or `gpu-wgsl`, which CI uses on lavapipe). Without an adapter the tests say so and pass, unless
//! `MEDRET_REQUIRE_GPU` is set (`.ci/run` installs lavapipe and sets it).
#![cfg(any(feature = "gpu", feature = "gpu-wgsl"))]

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use medret_models::cxr_hash::{Branches, FusionHashConfig, Pass, SaliencyKind};
use medret_models::{Arch, DenseNetConfig, load_torchvision};
use safetensors::SafeTensors;

mod common;
use common::{f32s, fixture, rel_err};

fn gpu() -> Option<Device> {
    let list = medret_models::device::adapters();
    if list.is_empty() {
        assert!(
            std::env::var_os("MEDRET_REQUIRE_GPU").is_none(),
            "MEDRET_REQUIRE_GPU is set but no Vulkan adapter is found (apt install mesa-vulkan-drivers)"
        );
        eprintln!("no Vulkan adapter: the GPU parity tests are skipped");
        return None;
    }
    eprintln!(
        "GPU parity on {} ({}, {} shaders)",
        list[0].name,
        list[0].kind,
        medret_models::device::SHADERS
    );
    Some(medret_models::device::parse_device("gpu:0").unwrap())
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn fixture_input(device: &Device) -> Tensor<4> {
    let io_bytes = std::fs::read(fixture("densenet_tiny_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    let (x, s) = f32s(&io, "input");
    Tensor::<4>::from_data(TensorData::new(x, [s[0], s[1], s[2], s[3]]), device)
}

/// Held by the tests that seed the CPU device (and by any other draw from it): its seed is one generator for the whole
/// process, and tests running side by side would draw each other's weights and inputs.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny_on(device: &Device) -> medret_models::DenseNet {
    let cfg = DenseNetConfig::tiny();
    let mut model = {
        let _draws = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
        cfg.init(device)
    };
    load_torchvision(
        &mut model,
        &cfg,
        &fixture("densenet_tiny_weights.safetensors"),
    )
    .unwrap();
    model
}

/// DenseNet's feature maps, pooled features and logits on the PyTorch fixture.
#[test]
fn densenet_outputs_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::flex();
    let run = |d: &Device| {
        let m = tiny_on(d).valid();
        let x = fixture_input(d);
        let maps = m.feature_maps(x.clone());
        (
            to_vec(maps.clone()),
            to_vec(m.pool_maps(maps)),
            to_vec(m.forward(x)),
        )
    };
    let (a, b) = (run(&cpu), run(&gpu));
    let e = [
        rel_err(&b.0, &a.0),
        rel_err(&b.1, &a.1),
        rel_err(&b.2, &a.2),
    ];
    eprintln!(
        "GPU against CPU: maps {:.2e}, pooled {:.2e}, logits {:.2e}",
        e[0], e[1], e[2]
    );
    assert!(e.iter().all(|&e| e <= 1e-4), "{e:?}");
}

/// The loss and every parameter's gradient of one training step.
#[test]
fn a_densenet_training_step_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    struct Collect<'a>(&'a burn::tensor::Gradients, Vec<Vec<f32>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = p.val().grad(self.0) {
                self.1.push(to_vec(g));
            }
        }
    }
    let run = |d: &Device| {
        // The GPU step with burn's balanced gradient checkpointing, as training runs it
        // there (`medret_train::engine::training_device`).
        let dev = if *d == Device::flex() {
            d.clone().autodiff()
        } else {
            d.clone().autodiff().gradient_checkpointing()
        };
        let model = tiny_on(&dev);
        let x = fixture_input(&dev).require_grad();
        let g_bytes = std::fs::read(fixture("densenet_tiny_grads.safetensors")).unwrap();
        let gf = SafeTensors::deserialize(&g_bytes).unwrap();
        let (w, ws) = f32s(&gf, "loss_weights");
        let w = Tensor::<2>::from_data(TensorData::new(w, [ws[0], ws[1]]), &dev);
        let loss = (model.forward(x.clone()) * w).sum();
        let grads = loss.backward();
        let mut c = Collect(&grads, vec![to_vec(x.grad(&grads).unwrap())]);
        model.visit(&mut c);
        (to_vec(loss.inner()), c.1)
    };
    let (cpu_loss, cpu_grads) = run(&Device::flex());
    let (gpu_loss, gpu_grads) = run(&gpu);
    assert_eq!(cpu_grads.len(), gpu_grads.len());
    let e_loss = rel_err(&gpu_loss, &cpu_loss);
    let worst = gpu_grads
        .iter()
        .zip(&cpu_grads)
        .map(|(g, c)| rel_err(g, c))
        .fold(0.0f32, |m, e| {
            if e.is_finite() {
                m.max(e)
            } else {
                f32::INFINITY
            }
        });
    eprintln!(
        "GPU training step against CPU: loss {e_loss:.2e}, worst of {} gradients {worst:.2e}",
        gpu_grads.len()
    );
    assert!(gpu_grads.len() > 40);
    assert!(
        e_loss <= 1e-3 && worst <= 1e-3,
        "loss {e_loss}, gradients {worst}"
    );
}

/// Grad-CAM maps of the same images and classes.
#[test]
fn grad_cam_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let run = |d: &Device| {
        let m = tiny_on(d).valid();
        let x = fixture_input(d);
        let n = x.dims()[0];
        let classes: Vec<Vec<usize>> = (0..n).map(|i| vec![i % 5]).collect();
        medret_models::grad_cam::grad_cam(&m, x, &classes)
    };
    let (a, b) = (run(&Device::flex()), run(&gpu));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(a, b)| rel_err(&b.data, &a.data))
        .fold(0.0f32, f32::max);
    eprintln!("GPU Grad-CAM against CPU: {worst:.2e}");
    assert!(worst <= 1e-3, "{worst}");
}

/// The chest method's codes (with the Grad-CAM crop) from the same weights: at least
/// 99.9% of bits agree, and the crop boxes are the same.
#[test]
fn fusion_hash_codes_and_crops_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut c = FusionHashConfig::new(Arch::DenseNetTiny, 3, 4, 48);
    c.branches = Branches::Fusion;
    c.saliency = SaliencyKind::GradCam;
    let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = Device::flex();
    cpu.seed(7);
    let net = c.init(&cpu);
    let on_gpu = net.clone().to_device(&gpu);
    let x = Tensor::<4>::random(
        [6, 3, 64, 64],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &cpu,
    );
    let a = net.valid().forward(&c, x.clone(), Pass::Explain);
    let b = on_gpu.valid().forward(&c, x.to_device(&gpu), Pass::Explain);
    let (ha, hb) = (to_vec(a.h.unwrap()), to_vec(b.h.unwrap()));
    let agree = ha
        .iter()
        .zip(&hb)
        .filter(|(x, y)| (**x >= 0.0) == (**y >= 0.0))
        .count() as f64
        / ha.len() as f64;
    let e = rel_err(&hb, &ha);
    eprintln!(
        "GPU codes against CPU: {:.4}% of {} bits agree, outputs within {e:.2e}",
        agree * 100.0,
        ha.len()
    );
    assert!(agree >= 0.999, "{agree}");
    assert!(e <= 1e-4, "{e}");
    assert_eq!(a.boxes, b.boxes);
}

/// The device runs the simplest kernels at all.
#[test]
fn elementwise_and_reduction_kernels_run() {
    let Some(gpu) = gpu() else { return };
    let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]), &gpu);
    let y = (x.clone() + 1.0).sum();
    assert_eq!(to_vec(y), vec![14.0]);
    let m = x.clone().matmul(x);
    assert_eq!(to_vec(m), vec![7.0, 10.0, 15.0, 22.0]);
}

/// `medret devices` names the adapter the tests ran on, with its type and driver.
#[test]
fn the_adapter_list_describes_each_adapter() {
    let Some(_) = gpu() else { return };
    let list = medret_models::device::adapters();
    for (i, a) in list.iter().enumerate() {
        assert_eq!(a.index, i);
        assert!(!a.name.is_empty() && !a.driver.is_empty(), "{a:?}");
        assert!(
            ["discrete", "integrated", "virtual", "cpu", "other"].contains(&a.kind.as_str()),
            "{a:?}"
        );
        assert_eq!(a.backend, "Vulkan");
    }
    if list[0].name.contains("llvmpipe") {
        assert_eq!(list[0].kind, "cpu");
    }
    // By position and by name, the same device.
    let by_index = medret_models::device::parse_device("gpu:0").unwrap();
    let by_name =
        medret_models::device::parse_device(&list[0].name[..list[0].name.len().min(8)]).unwrap();
    assert_eq!(format!("{by_index:?}"), format!("{by_name:?}"));
}

/// The fundus method's descriptors (mirror attention, GeM, projection) and its saliency,
/// from the same weights: within 1e-4 and 1e-3 of the CPU's.
#[test]
fn fundus_descriptors_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    use medret_models::fundus_metric::{Attention, FundusMetricConfig};
    let mut c = FundusMetricConfig::new(Arch::DenseNetTiny, Attention::Mirror);
    c.backbone.block_config = vec![1, 1];
    c.dim = Some(32);
    let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = Device::flex();
    cpu.seed(5);
    let net = c.init(&cpu);
    let on_gpu = net.clone().to_device(&gpu);
    let x = Tensor::<4>::random(
        [4, 3, 48, 48],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &cpu,
    );
    let a = net.valid().forward(x.clone(), true);
    let b = on_gpu.valid().forward(x.to_device(&gpu), true);
    let e = rel_err(&to_vec(b.descriptor), &to_vec(a.descriptor));
    let s = a
        .saliency
        .iter()
        .zip(&b.saliency)
        .map(|(p, q)| rel_err(&q.data, &p.data))
        .fold(0.0f32, f32::max);
    eprintln!("GPU fundus descriptors against CPU: {e:.2e}, saliency {s:.2e}");
    assert!(e <= 1e-4, "{e}");
    assert!(s <= 1e-3, "{s}");
}
