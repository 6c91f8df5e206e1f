//! DenseNet against torchvision: parameter counts, key names, and outputs on a fixture of
//! seeded random weights (non-trivial BatchNorm statistics) made by
//! `tools/make_densenet_fixture.py` with PyTorch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::sync::atomic::Ordering;

use burn::prelude::*;
use medret_models::summary::summarise;
use medret_models::weights::{expected_tensors, read_header};
use medret_models::{DenseNetConfig, WeightsError, load_torchvision, save_torchvision};
use safetensors::SafeTensors;

mod common;
use common::{f32s, fixture, rel_err};

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn densenet121_counts_and_names_match_torchvision() {
    let device = Device::flex();
    let cfg = DenseNetConfig::densenet121();
    let model = cfg.init(&device);
    let s = summarise(&model);
    assert_eq!(s.parameters, 7_978_856);
    assert_eq!(s.feature_extractor_parameters, 6_953_856);
    assert_eq!(cfg.feature_dim(), 1024);
    let keys = expected_tensors(&model);
    let find = |k: &str| {
        keys.iter()
            .find(|t| t.key == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .shape
            .clone()
    };
    assert_eq!(find("features.conv0.weight"), [64, 3, 7, 7]);
    assert_eq!(
        find("features.denseblock4.denselayer16.conv2.weight"),
        [32, 128, 3, 3]
    );
    assert_eq!(find("features.transition3.conv.weight"), [512, 1024, 1, 1]);
    assert_eq!(find("features.norm5.running_var"), [1024]);
    assert_eq!(find("classifier.weight"), [1000, 1024]);
    // 1 conv0 + 58 dense layers x 2 + 3 transitions + 1 classifier weight-bearing layers.
    assert_eq!(
        s.layers.iter().filter(|l| l.kind == "Conv2d").count(),
        1 + 58 * 2 + 3
    );
}

#[test]
fn tiny_key_set_equals_the_torchvision_state_dict() {
    let model = DenseNetConfig::tiny().init(&Device::flex());
    let ours: BTreeSet<String> = expected_tensors(&model)
        .into_iter()
        .map(|t| t.key)
        .collect();
    let theirs: BTreeSet<String> = read_header(&fixture("densenet_tiny_weights.safetensors"))
        .unwrap()
        .into_keys()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn outputs_match_pytorch_within_1e4_of_scale() {
    let device = Device::flex();
    let cfg = DenseNetConfig::tiny();
    let mut model = cfg.init(&device);
    load_torchvision(
        &mut model,
        &cfg,
        &fixture("densenet_tiny_weights.safetensors"),
    )
    .unwrap();
    let model = model.valid();
    let io_bytes = std::fs::read(fixture("densenet_tiny_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    let (x, shape) = f32s(&io, "input");
    let input = Tensor::<4>::from_data(
        TensorData::new(x, [shape[0], shape[1], shape[2], shape[3]]),
        &device,
    );
    let maps = model.feature_maps(input.clone());
    let (want_maps, maps_shape) = f32s(&io, "features");
    assert_eq!(maps.dims().to_vec(), maps_shape);
    let e_maps = rel_err(&to_vec(maps.clone()), &want_maps);
    let e_pooled = rel_err(&to_vec(model.pool_maps(maps)), &f32s(&io, "pooled").0);
    let e_logits = rel_err(&to_vec(model.forward(input)), &f32s(&io, "logits").0);
    eprintln!(
        "relative max error: maps {e_maps:.2e}, pooled {e_pooled:.2e}, logits {e_logits:.2e}"
    );
    assert!(e_maps <= 1e-4 && e_pooled <= 1e-4 && e_logits <= 1e-4);
}

#[test]
fn a_randomly_initialised_model_does_not_match_pytorch() {
    // The parity test can fail: without the fixture weights the outputs differ.
    let device = Device::flex();
    let model = DenseNetConfig::tiny().init(&device).valid();
    let io_bytes = std::fs::read(fixture("densenet_tiny_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    let (x, s) = f32s(&io, "input");
    let input = Tensor::<4>::from_data(TensorData::new(x, [s[0], s[1], s[2], s[3]]), &device);
    assert!(rel_err(&to_vec(model.forward(input)), &f32s(&io, "logits").0) > 1e-2);
}

#[test]
fn save_then_load_round_trips_with_torchvision_names() {
    let device = Device::flex();
    let cfg = DenseNetConfig::tiny();
    let mut a = cfg.init(&device);
    load_torchvision(&mut a, &cfg, &fixture("densenet_tiny_weights.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w.safetensors");
    save_torchvision(&a, &cfg, &out).unwrap();
    save_torchvision(&a, &cfg, &out).unwrap(); // overwriting an existing file works
    let theirs: BTreeSet<String> = read_header(&fixture("densenet_tiny_weights.safetensors"))
        .unwrap()
        .into_keys()
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    let ours: BTreeSet<String> = read_header(&out).unwrap().into_keys().collect();
    assert_eq!(ours, theirs);
    let mut b = cfg.init(&device);
    load_torchvision(&mut b, &cfg, &out).unwrap();
    let x = Tensor::<4>::random(
        [1, 3, 32, 32],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &device,
    );
    let (ya, yb) = (
        to_vec(a.valid().forward(x.clone())),
        to_vec(b.valid().forward(x)),
    );
    assert_eq!(ya, yb);
}

/// Rewrites the fixture with `edit` applied to its tensor list.
fn edited(
    dir: &Path,
    edit: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let bytes = std::fs::read(fixture("densenet_tiny_weights.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut v);
    let views: Vec<(String, safetensors::tensor::TensorView)> = v
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let p = dir.join("edited.safetensors");
    safetensors::serialize_to_file(views, None, &p).unwrap();
    p
}

#[test]
fn bad_weight_files_are_clear_errors() {
    let device = Device::flex();
    let cfg = DenseNetConfig::tiny();
    let tmp = tempfile::tempdir().unwrap();
    let load = |p: &Path| {
        let mut m = cfg.init(&device);
        load_torchvision(&mut m, &cfg, p).unwrap_err()
    };

    let p = edited(tmp.path(), |v| {
        v.retain(|t| t.0 != "features.norm5.running_mean")
    });
    let e = load(&p);
    assert!(
        matches!(&e, WeightsError::Missing { keys, .. } if keys == &["features.norm5.running_mean"]),
        "{e}"
    );
    assert!(e.to_string().contains("edited.safetensors"), "{e}");

    let p = edited(tmp.path(), |v| {
        let t = v.iter_mut().find(|t| t.0 == "classifier.weight").unwrap();
        t.2 = vec![t.2[1], t.2[0]];
    });
    let e = load(&p);
    assert!(
        matches!(&e, WeightsError::Shape { key, .. } if key == "classifier.weight"),
        "{e}"
    );

    let p = edited(tmp.path(), |v| {
        let t = v.iter_mut().find(|t| t.0 == "classifier.bias").unwrap();
        t.1 = safetensors::Dtype::F64;
        t.3 =
            t.3.chunks_exact(4)
                .flat_map(|b| (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).to_le_bytes())
                .collect();
    });
    let e = load(&p);
    assert!(
        matches!(&e, WeightsError::DType { key, found, .. } if key == "classifier.bias" && found == "F64"),
        "{e}"
    );

    let p = edited(tmp.path(), |v| {
        v.push((
            "features.denseblock9.denselayer1.conv1.weight".into(),
            safetensors::Dtype::F32,
            vec![1],
            vec![0; 4],
        ))
    });
    let e = load(&p);
    assert!(matches!(&e, WeightsError::Unexpected { .. }), "{e}");
    assert!(e.to_string().contains("denseblock9"), "{e}");

    // A DenseNet-121 file into the tiny model: unexpected keys and shapes, not a panic.
    let bytes = std::fs::read(fixture("densenet_tiny_weights.safetensors")).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = load(&cut);
    assert!(e.to_string().contains("truncated"), "{e}");
    std::fs::write(&cut, b"hello").unwrap();
    assert!(load(&cut).to_string().contains("not a safetensors file"));
    assert!(
        load(&tmp.path().join("absent.safetensors"))
            .to_string()
            .contains("absent.safetensors")
    );
}

/// The full DenseNet-121 (32 MB of weights, not committed): run with
/// `MEDRET_DENSENET121_FIXTURE=DIR cargo test -p medret-models -- --ignored`, DIR from
/// `tools/make_densenet_fixture.py --full DIR`.
#[test]
#[ignore = "needs the full DenseNet-121 fixture from tools/make_densenet_fixture.py --full"]
fn full_densenet121_matches_pytorch() {
    let dir = PathBuf::from(
        std::env::var("MEDRET_DENSENET121_FIXTURE").expect("MEDRET_DENSENET121_FIXTURE"),
    );
    let device = Device::flex();
    let cfg = DenseNetConfig::densenet121();
    let mut model = cfg.init(&device);
    load_torchvision(
        &mut model,
        &cfg,
        &dir.join("densenet121_weights.safetensors"),
    )
    .unwrap();
    let model = model.valid();
    let io_bytes = std::fs::read(dir.join("densenet121_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    let (x, s) = f32s(&io, "input");
    let input = Tensor::<4>::from_data(TensorData::new(x, [s[0], s[1], s[2], s[3]]), &device);
    let maps = model.feature_maps(input);
    let e_maps = rel_err(&to_vec(maps.clone()), &f32s(&io, "features").0);
    let pooled = model.pool_maps(maps);
    let e_pooled = rel_err(&to_vec(pooled.clone()), &f32s(&io, "pooled").0);
    let logits = model.classifier.as_ref().unwrap().forward(pooled);
    let e_logits = rel_err(&to_vec(logits), &f32s(&io, "logits").0);
    eprintln!(
        "DenseNet-121 224x224 relative max error: maps {e_maps:.2e}, pooled {e_pooled:.2e}, logits {e_logits:.2e}"
    );
    assert!(e_maps <= 1e-4 && e_pooled <= 1e-4 && e_logits <= 1e-4);
}

/// Training mode (BatchNorm on batch statistics, through medret's fused BatchNorm + ReLU
/// kernel): the gradients of `sum(logits * W)` with respect to the input and to every
/// parameter equal PyTorch's (`tools/make_densenet_grad_fixture.py`) within 1e-4 of
/// each tensor's scale.
#[test]
fn training_gradients_match_pytorch() {
    let device = Device::flex().autodiff();
    let cfg = DenseNetConfig::tiny();
    let mut model = cfg.init(&device);
    load_torchvision(
        &mut model,
        &cfg,
        &fixture("densenet_tiny_weights.safetensors"),
    )
    .unwrap();
    let io_bytes = std::fs::read(fixture("densenet_tiny_io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io_bytes).unwrap();
    let g_bytes = std::fs::read(fixture("densenet_tiny_grads.safetensors")).unwrap();
    let gf = SafeTensors::deserialize(&g_bytes).unwrap();
    let (x, s) = f32s(&io, "input");
    let x = Tensor::<4>::from_data(
        TensorData::new(x, [s[0], s[1], s[2], s[3]]),
        &Device::flex(),
    )
    .autodiff()
    .require_grad();
    let (w, ws) = f32s(&gf, "loss_weights");
    let w = Tensor::<2>::from_data(TensorData::new(w, [ws[0], ws[1]]), &device);
    let blocks = medret_models::kernels::dense_block::BLOCK_CALLS.load(Ordering::Relaxed);
    let loss = (model.forward(x.clone()) * w).sum();
    assert_eq!(
        medret_models::kernels::dense_block::BLOCK_CALLS.load(Ordering::Relaxed),
        blocks + cfg.block_config.len(),
        "the dense blocks did not go through the feature buffer"
    );
    let e_loss = rel_err(&to_vec(loss.clone()), &f32s(&gf, "loss").0);
    let grads = loss.backward();
    let e_input = rel_err(&to_vec(x.grad(&grads).unwrap()), &f32s(&gf, "grad.input").0);

    // Every float the module holds, in its order (parameters and running statistics).
    struct Collect<'a>(
        &'a burn::tensor::Gradients,
        Vec<Option<(Vec<f32>, Vec<usize>)>>,
    );
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let g = p.val().grad(self.0).map(|g| (g.dims().to_vec(), g));
            self.1.push(g.map(|(d, g)| (to_vec(g), d)));
        }
    }
    let mut c = Collect(&grads, Vec::new());
    burn::module::Module::visit(&model, &mut c);
    let names = expected_tensors(&model);
    assert_eq!(names.len(), c.1.len());
    let (mut worst, mut worst_key, mut compared) = (0.0f32, String::new(), 0);
    for (t, g) in names.iter().zip(c.1) {
        if t.is_buffer() {
            continue;
        }
        let (mut ours, dims) = g.unwrap_or_else(|| panic!("no gradient for {}", t.key));
        if t.key.ends_with("classifier.weight") {
            // burn's Linear is [in, out]; PyTorch's [out, in].
            let (i, o) = (dims[0], dims[1]);
            ours = (0..o * i).map(|k| ours[(k % i) * o + k / i]).collect();
        }
        let e = rel_err(&ours, &f32s(&gf, &format!("grad.{}", t.key)).0);
        if e > worst {
            (worst, worst_key) = (e, t.key.clone());
        }
        compared += 1;
    }
    eprintln!(
        "training gradients against PyTorch: loss {e_loss:.2e}, input {e_input:.2e}, worst of {compared} parameters {worst:.2e} ({worst_key})"
    );
    assert!(compared > 40, "{compared} parameters compared");
    assert!(e_loss <= 1e-4 && e_input <= 1e-4 && worst <= 1e-4);
}
