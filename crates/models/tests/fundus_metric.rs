//! The fundus network: at step 0 the mirror descriptor is the plain backbone's, repeated;
//! shapes, halves and explanations.

use burn::prelude::*;
use medret_models::Arch;
use medret_models::fundus_metric::{Attention, FundusMetricConfig};

mod common;
use common::worst;

fn cfg(attention: Attention) -> FundusMetricConfig {
    let mut c = FundusMetricConfig::new(Arch::DenseNetTiny, attention);
    c.backbone.block_config = vec![1, 1];
    c
}

fn v(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn zero_initialised_mirror_model_is_the_plain_backbone_at_step_0() {
    let dev = Device::flex();
    let mirror = cfg(Attention::Mirror).init(&dev).valid();
    let mut plain = cfg(Attention::None).init(&dev).valid();
    plain.backbone = mirror.backbone.clone();
    plain.gem = mirror.gem.clone();
    let x = Tensor::<4>::random(
        [3, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let m = mirror.forward(x.clone(), false);
    let p = plain.forward(x, false);
    let d = p.descriptor.dims()[1];
    assert_eq!(m.descriptor.dims(), [3, 2 * d]);
    let (mv, pv) = (v(m.descriptor), v(p.descriptor));
    let s = std::f32::consts::FRAC_1_SQRT_2;
    for i in 0..3 {
        for j in 0..d {
            let want = pv[i * d + j] * s;
            assert!((mv[i * 2 * d + j] - want).abs() < 1e-5, "first half");
            assert!((mv[i * 2 * d + d + j] - want).abs() < 1e-5, "second half");
        }
    }
    let (h, vv) = m.halves.unwrap();
    assert_eq!(v(h), v(vv), "both blocks return F at step 0");
}

#[test]
fn projection_head_and_explanations() {
    let dev = Device::flex();
    let mut c = cfg(Attention::Mirror);
    c.dim = Some(16);
    c.classes = Some(5);
    let net = c.init(&dev).valid();
    let x = Tensor::<4>::random(
        [2, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let out = net.forward(x, true);
    assert_eq!(out.descriptor.dims(), [2, 16]);
    let norms: Vec<f32> = v(out.descriptor.powf_scalar(2.0).sum_dim(1));
    assert!(
        norms.iter().all(|n| (n - 1.0).abs() < 1e-5),
        "unit rows: {norms:?}"
    );
    assert_eq!(out.logits.unwrap().dims(), [2, 5]);
    assert_eq!(out.saliency.len(), 2);
    assert!(
        out.saliency
            .iter()
            .all(|s| s.data.len() == 32 * 32 && s.data.iter().all(|x| (0.0..=1.0).contains(x)))
    );
    assert_eq!(c.descriptor_dim(), 16);
}

/// Similarity Grad-CAM against a closed form: with the plain backbone and GeM at `p = 1`
/// (average pooling), the score is `s = <m / |m|, t>` with `m` the channels' spatial
/// means, so `ds/dF_c(i, j) = (t_c - s u_c) / (|m| h w)` where `F_c(i, j) > 0` (GeM clamps
/// at a small epsilon, so zeros get no gradient), `u = m / |m|`; the channel weight is its
/// spatial mean, and the map `ReLU(sum_c w_c F_c)`, upsampled and min-max normalised.
#[test]
fn similarity_grad_cam_matches_the_closed_form_for_average_pooling() {
    use burn::tensor::activation::relu;
    let dev = Device::flex();
    let mut net = cfg(Attention::None).init(&dev).valid();
    net.gem = medret_models::fundus_metric::gem::Gem::new(1.0, &dev);
    let x = Tensor::<4>::random(
        [2, 3, 32, 32],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let f = relu(net.backbone.feature_maps(x.clone()));
    let [n, c, h, w] = f.dims();
    let fv = f.into_data().try_to_vec::<f32>().unwrap();
    // Targets: image 0 against image 1's descriptor and the reverse, plus a fixed one.
    let desc = v(net.forward(x.clone(), false).descriptor);
    let targets = vec![desc[c..2 * c].to_vec(), desc[..c].to_vec()];
    let got = net.similarity_grad_cam(x.clone(), &targets);
    assert_eq!(got.len(), 2);
    let hw = (h * w) as f32;
    let mut raw = vec![0.0f32; n * h * w];
    for i in 0..n {
        let maps = &fv[i * c * h * w..(i + 1) * c * h * w];
        let m: Vec<f32> = (0..c)
            .map(|k| maps[k * h * w..(k + 1) * h * w].iter().sum::<f32>() / hw)
            .collect();
        let norm = m.iter().map(|x| x * x).sum::<f32>().sqrt();
        let u: Vec<f32> = m.iter().map(|x| x / norm).collect();
        let t = &targets[i];
        let s: f32 = u.iter().zip(t).map(|(a, b)| a * b).sum();
        for k in 0..c {
            let ch = &maps[k * h * w..(k + 1) * h * w];
            let positive = ch.iter().filter(|&&x| x > 1e-6).count() as f32 / hw;
            let wk = (t[k] - s * u[k]) / (norm * hw) * positive;
            for (r, &x) in raw[i * h * w..(i + 1) * h * w].iter_mut().zip(ch) {
                *r += wk * x;
            }
        }
    }
    raw.iter_mut().for_each(|r| *r = r.max(0.0));
    let want = medret_models::grad_cam::to_saliency(&raw, n, h, w, 32, 32);
    for (g, e) in got.iter().zip(&want) {
        assert!(
            e.data.iter().any(|&x| x > 0.5),
            "a degenerate reference map"
        );
        // Infinite where either map holds a NaN or infinity.
        let diff = worst(g.data.iter().zip(&e.data).map(|(a, b)| (a - b).abs()));
        assert!(diff < 1e-3, "max difference {diff}");
    }
    // The mirror model gives one map per image at the input size, finite and in [0, 1].
    let mirror = cfg(Attention::Mirror).init(&dev).valid();
    let d = v(mirror.forward(x.clone(), false).descriptor);
    let k = d.len() / 2;
    let maps = mirror.similarity_grad_cam(x, &[d[k..].to_vec(), d[..k].to_vec()]);
    assert_eq!((maps.len(), maps[0].height, maps[0].width), (2, 32, 32));
    assert!(
        maps.iter()
            .all(|m| m.data.iter().all(|x| (0.0..=1.0).contains(x)))
    );
}
