//! Grad-CAM on a hand-set network whose answer is known.

use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::activation::relu;
use medret_models::grad_cam::{grad_cam_raw, min_max_normalise, upsample_bilinear};

/// Feature maps `[1, 2, 4, 4]`: channel 0 is 1.0 at (1, 2), channel 1 is 2.0 at (3, 0).
fn maps(device: &Device) -> Tensor<4> {
    let mut v = vec![0.0f32; 32];
    v[4 + 2] = 1.0;
    v[16 + 12] = 2.0;
    Tensor::from_data(TensorData::new(v, [1, 2, 4, 4]), device)
}

#[test]
fn grad_cam_peaks_where_the_class_evidence_is() {
    let device = Device::flex();
    // Head: ReLU, global average pool, linear without bias; class 0 reads channel 0 with
    // weight 3, class 1 reads channel 1 with weight 5.
    let mut lin = LinearConfig::new(2, 2).with_bias(false).init(&device);
    lin.weight = burn::module::Param::from_data(
        TensorData::new(vec![3.0f32, 0.0, 0.0, 5.0], [2, 2]),
        &device,
    );
    let head = |m: Tensor<4>| lin.forward(relu(m).mean_dims(&[2, 3]).flatten(1, 3));

    // Class 0: d score / d F0 = 3/16 where F0 > 0 (ReLU), else 0; its spatial mean is
    // 3/256; channel 1's weight is 0. Map = ReLU(3/256 * F0): 3/256 at (1, 2), 0 elsewhere.
    let cam = grad_cam_raw(maps(&device), head, &[vec![0]]);
    let v = cam.into_data().try_into_vec::<f32>().unwrap();
    let mut want = vec![0.0f32; 16];
    want[6] = 3.0 / 256.0;
    for (g, w) in v.iter().zip(&want) {
        assert!((g - w).abs() < 1e-7, "{v:?}");
    }
    // Class 1: 5/256 * 2.0 at (3, 0).
    let v = grad_cam_raw(maps(&device), head, &[vec![1]])
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    assert!(
        (v[12] - 10.0 / 256.0).abs() < 1e-7
            && v.iter().enumerate().all(|(i, x)| i == 12 || *x == 0.0),
        "{v:?}"
    );
    // Both classes (a label set): both spots, in the ratio 3 : 10.
    let v = grad_cam_raw(maps(&device), head, &[vec![0, 1]])
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    assert!(
        (v[6] - 3.0 / 256.0).abs() < 1e-7 && (v[12] - 10.0 / 256.0).abs() < 1e-7,
        "{v:?}"
    );
}

#[test]
fn upsampling_and_normalisation_by_hand() {
    // 2x2 -> 4x4 with half-pixel centres: output x=1 maps to source 0.25.
    let up = upsample_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
    assert_eq!(up[0], 0.0);
    assert!((up[1] - 0.25).abs() < 1e-6, "{up:?}");
    assert!((up[15] - 3.0).abs() < 1e-6);
    // Row 1, col 1: source (0.25, 0.25): 0.25 * 2 + 0.25 * 1 = 0.75.
    assert!((up[5] - 0.75).abs() < 1e-6, "{up:?}");
    let mut v = vec![2.0, 4.0, 3.0];
    min_max_normalise(&mut v);
    assert_eq!(v, vec![0.0, 1.0, 0.5]);
    let mut flat = vec![5.0; 3];
    min_max_normalise(&mut flat);
    assert_eq!(flat, vec![0.0; 3]);
}

#[test]
fn densenet_grad_cam_runs_at_image_size_in_unit_range() {
    let device = Device::flex();
    let model = medret_models::DenseNetConfig::tiny().init(&device).valid();
    let x = Tensor::<4>::random(
        [2, 3, 64, 64],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &device,
    );
    let maps = medret_models::grad_cam::grad_cam(&model, x.clone(), &[vec![0], vec![1, 2]]);
    assert_eq!(maps.len(), 2);
    for m in &maps {
        assert_eq!((m.height, m.width), (64, 64));
        assert!(m.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    let act = medret_models::grad_cam::activation_map(
        &model,
        x,
        medret_models::grad_cam::ActivationReduce::Sum,
    );
    assert_eq!(act[0].data.len(), 64 * 64);
    assert!(act[0].data.contains(&1.0), "normalised maximum is 1");
}

#[test]
fn closed_form_grad_cam_equals_autodiff_through_a_pooled_linear_head() {
    use medret_models::grad_cam::grad_cam_pooled_linear;
    let device = Device::flex();
    // Random maps with negative values (so the ReLU mask matters) and a random head.
    let (n, c, h, w, k) = (3usize, 5usize, 4usize, 3usize, 4usize);
    let maps = Tensor::<4>::random(
        [n, c, h, w],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let lin = LinearConfig::new(c, k).init(&device);
    let head = |m: Tensor<4>| lin.forward(relu(m).mean_dims(&[2, 3]).flatten(1, 3));
    let targets = vec![vec![0], vec![1, 3], vec![2]];
    let auto = grad_cam_raw(maps.clone(), head, &targets)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let host = maps.into_data().try_into_vec::<f32>().unwrap();
    let weight = lin.weight.val().into_data().try_into_vec::<f32>().unwrap();
    let closed = grad_cam_pooled_linear(&host, [n, c, h, w], &weight, k, &targets);
    assert_eq!(auto.len(), closed.len());
    // The fold below skips NaN: every value must be finite first.
    assert!(
        auto.iter().chain(&closed).all(|v| v.is_finite()),
        "{auto:?} vs {closed:?}"
    );
    let scale = auto.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (a, b) in auto.iter().zip(&closed) {
        assert!((a - b).abs() / scale < 1e-4, "{auto:?} vs {closed:?}");
    }
    assert!(auto.iter().any(|&v| v > 0.0), "a non-trivial map");
}
