//! The fundus network: at step 0 the mirror descriptor is the plain backbone's, repeated;
//! shapes, halves and explanations.

use burn::prelude::*;
use medret_models::Arch;
use medret_models::fundus_metric::{Attention, FundusMetricConfig};

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
