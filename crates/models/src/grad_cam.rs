//! Grad-CAM (Selvaraju et al., 2017) for any backbone that exposes its last feature maps,
//! and the cheaper activation map.
//!
//! Grad-CAM: the gradient of a class score (or the sum of several, e.g. a finding set) with
//! respect to the feature maps `F`; channel weights are the gradient's spatial mean; the
//! map is `ReLU(sum_c w_c F_c)`, upsampled to the image (bilinear, pixel centres aligned as
//! in PyTorch's `align_corners=False`) and min-max normalised.

use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::densenet::DenseNet;

/// A backbone Grad-CAM can explain: last feature maps, and the head from them to scores.
///
/// Pass a model in eval mode (`model.valid()`): on an autodiff device a training-mode
/// BatchNorm would normalise with the batch's statistics instead of the running ones.
pub trait CamModel {
    /// `[N, C, h, w]` feature maps (eval mode).
    fn cam_maps(&self, x: Tensor<4>) -> Tensor<4>;
    /// Class scores `[N, K]` from the maps.
    fn cam_head(&self, maps: Tensor<4>) -> Tensor<2>;
}

impl CamModel for DenseNet {
    fn cam_maps(&self, x: Tensor<4>) -> Tensor<4> {
        self.feature_maps(x)
    }

    fn cam_head(&self, maps: Tensor<4>) -> Tensor<2> {
        let classifier = self
            .classifier
            .as_ref()
            .expect("Grad-CAM needs a classifier head");
        classifier.forward(self.pool_maps(maps))
    }
}

/// A saliency map at image resolution, values in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Saliency {
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Saliency {
    /// `(row, col)` of the maximum (first in row-major order on ties).
    pub fn argmax(&self) -> (usize, usize) {
        let i = self
            .data
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0;
        (i / self.width, i % self.width)
    }
}

/// The raw Grad-CAM maps `[N, h, w]` (before upsampling and normalisation) for `targets[n]`,
/// the classes whose scores are summed for image `n`.
pub fn grad_cam_raw(
    maps: Tensor<4>,
    head: impl Fn(Tensor<4>) -> Tensor<2>,
    targets: &[Vec<usize>],
) -> Tensor<3> {
    let [n, _, _, _] = maps.dims();
    assert_eq!(targets.len(), n, "one target set per image");
    let device = maps.device();
    // Make the maps a leaf of the autodiff graph; everything before them is constant.
    let leaf = maps.detach().autodiff().require_grad();
    let scores = head(leaf.clone());
    let k = scores.dims()[1];
    let mut select = vec![0.0f32; n * k];
    for (i, t) in targets.iter().enumerate() {
        for &c in t {
            assert!(c < k, "class {c} out of range (the head has {k})");
            select[i * k + c] = 1.0;
        }
    }
    // Images are independent, so one backward pass of the summed score serves them all.
    let mask = Tensor::<2>::from_data(TensorData::new(select, [n, k]), &scores.device());
    let grads = (scores * mask).sum().backward();
    let g = leaf.grad(&grads).expect("the maps are a tracked leaf");
    let weights = g.mean_dims(&[2, 3]); // [N, C, 1, 1]
    let maps = leaf.without_autodiff().to_device(&device);
    relu((maps * weights).sum_dim(1)).squeeze_dim::<3>(1)
}

/// Grad-CAM maps at `(height, width)`, normalised to `[0, 1]`, one per image.
pub fn grad_cam<M: CamModel>(model: &M, x: Tensor<4>, targets: &[Vec<usize>]) -> Vec<Saliency> {
    let [_, _, h, w] = x.dims();
    let maps = model.cam_maps(x);
    finish(grad_cam_raw(maps, |m| model.cam_head(m), targets), h, w)
}

/// Grad-CAM for the common head "ReLU, global average pool, linear layer", in closed form
/// on host memory, with no autodiff graph: the score's gradient with respect to `F_c(i, j)`
/// is `sum_{k in T} W[c, k] * 1[F_c(i, j) > 0] / (h w)`, so the channel weight (its spatial
/// mean) is `sum_{k in T} W[c, k] * (positive fraction of channel c) / (h w)`. It equals
/// [`grad_cam_raw`] through such a head (a test checks it) and is what training uses per
/// step, where a second backward pass through shared parameters would be costly.
///
/// `maps` is `[n, c, h, w]` row-major, `weight` is the linear layer's `[c, k]` (burn's
/// layout: input by output). Returns the raw maps `[n, h, w]`.
pub fn grad_cam_pooled_linear(
    maps: &[f32],
    [n, c, h, w]: [usize; 4],
    weight: &[f32],
    classes: usize,
    targets: &[Vec<usize>],
) -> Vec<f32> {
    assert_eq!(maps.len(), n * c * h * w, "maps size");
    assert_eq!(weight.len(), c * classes, "weight size");
    assert_eq!(targets.len(), n, "one target set per image");
    let hw = h * w;
    let mut out = vec![0.0f32; n * hw];
    for (i, t) in targets.iter().enumerate() {
        let o = &mut out[i * hw..(i + 1) * hw];
        for ch in 0..c {
            let f = &maps[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let positive = f.iter().filter(|&&v| v > 0.0).count() as f32;
            let wsum: f32 = t.iter().map(|&k| weight[ch * classes + k]).sum();
            let alpha = wsum * positive / (hw * hw) as f32;
            if alpha != 0.0 {
                for (a, &v) in o.iter_mut().zip(f) {
                    *a += alpha * v;
                }
            }
        }
        for a in o.iter_mut() {
            *a = a.max(0.0);
        }
    }
    out
}

/// How the activation map reduces channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationReduce {
    Sum,
    Max,
}

/// The activation map: channel sum or max of `ReLU(F)`, upsampled and normalised. No
/// gradient and no class: cheaper, and what the fusion method may use to crop.
pub fn activation_map<M: CamModel>(
    model: &M,
    x: Tensor<4>,
    reduce: ActivationReduce,
) -> Vec<Saliency> {
    let [_, _, h, w] = x.dims();
    let f = relu(model.cam_maps(x));
    let m = match reduce {
        ActivationReduce::Sum => f.sum_dim(1),
        ActivationReduce::Max => f.max_dim(1),
    };
    finish(m.squeeze_dim::<3>(1), h, w)
}

fn finish(raw: Tensor<3>, height: usize, width: usize) -> Vec<Saliency> {
    let [n, h, w] = raw.dims();
    let v = raw.into_data().try_into_vec::<f32>().expect("f32 maps");
    to_saliency(&v, n, h, w, height, width)
}

/// Raw maps `[n, h, w]` (row-major) upsampled to `height x width` and min-max normalised.
pub fn to_saliency(
    v: &[f32],
    n: usize,
    h: usize,
    w: usize,
    height: usize,
    width: usize,
) -> Vec<Saliency> {
    (0..n)
        .map(|i| {
            let mut data = upsample_bilinear(&v[i * h * w..(i + 1) * h * w], h, w, height, width);
            min_max_normalise(&mut data);
            Saliency {
                height,
                width,
                data,
            }
        })
        .collect()
}

/// Bilinear resize with half-pixel centres (PyTorch `align_corners=False`, OpenCV).
pub fn upsample_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let mut out = vec![0.0; oh * ow];
    let (sy, sx) = (h as f32 / oh as f32, w as f32 / ow as f32);
    for y in 0..oh {
        let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..ow {
            let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(w - 1);
            let top = src[y0 * w + x0] * (1.0 - tx) + src[y0 * w + x1] * tx;
            let bot = src[y1 * w + x0] * (1.0 - tx) + src[y1 * w + x1] * tx;
            out[y * ow + x] = top * (1.0 - ty) + bot * ty;
        }
    }
    out
}

/// Scales to `[0, 1]`; a constant map becomes all zeros (nothing is salient).
pub fn min_max_normalise(v: &mut [f32]) {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let range = hi - lo;
    for x in v.iter_mut() {
        *x = if range > 0.0 { (*x - lo) / range } else { 0.0 };
    }
}
