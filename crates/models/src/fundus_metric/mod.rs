//! The fundus method (Fang et al., BSPC 2023): the input, its horizontal and its vertical
//! flip through one shared backbone, the flipped views' maps flipped back, one mirror-
//! attention block per flipped view ([`mirror_attention`]), GeM pooling ([`gem`]) of each
//! block's output, concatenated, optionally projected, L2-normalised. `--attention none` is
//! the plain backbone with GeM. With the blocks' output convolutions at zero, the mirror
//! descriptor at step 0 is `[GeM(F), GeM(F)]`: the plain backbone's, so the two start from
//! the same retrieval.

pub mod binarise;
pub mod gem;
pub mod mirror_attention;

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::densenet::{DenseNet, DenseNetConfig};
use crate::grad_cam::{Saliency, grad_cam_raw, to_saliency};
use gem::Gem;
use mirror_attention::{MirrorAttention, MirrorAttentionConfig, mirror_views, unflip_h, unflip_v};

/// `--attention mirror|none`: the ablation is one flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Three views through the shared backbone, one mirror-attention block per flipped
    /// view, the descriptor from both blocks' outputs.
    Mirror,
    /// The plain backbone with GeM.
    None,
}

impl std::str::FromStr for Attention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mirror" => Ok(Attention::Mirror),
            "none" => Ok(Attention::None),
            o => Err(format!("attention `{o}`: expected mirror or none")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FundusMetricConfig {
    pub arch: Arch,
    /// The backbone's feature extractor (`num_classes` ignored).
    pub backbone: DenseNetConfig,
    pub attention: Attention,
    /// Linear projection of the pooled descriptor to this width (`None`: no projection).
    pub dim: Option<usize>,
    /// GeM's initial exponent.
    pub gem_p: f32,
    /// An optional classification head over the grades (the authors' code trains one).
    pub classes: Option<usize>,
    /// Also binarise descriptors to this many bits (sign of a seeded random projection),
    /// for a compact Hamming index.
    #[serde(default)]
    pub binary_bits: Option<usize>,
    #[serde(default)]
    pub binary_seed: u64,
    /// A learned binarisation (ITQ) in place of the seeded random projection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_learned: Option<binarise::LearnedBinarisation>,
}

impl FundusMetricConfig {
    pub fn new(arch: Arch, attention: Attention) -> Self {
        FundusMetricConfig {
            arch,
            backbone: arch.config(None),
            attention,
            dim: None,
            gem_p: 3.0,
            classes: None,
            binary_bits: None,
            binary_seed: 0,
            binary_learned: None,
        }
    }

    /// Width of the pooled descriptor before the projection.
    pub fn pooled_dim(&self) -> usize {
        let c = self.backbone.feature_dim();
        match self.attention {
            Attention::Mirror => 2 * c,
            Attention::None => c,
        }
    }

    /// Width of the stored descriptor.
    pub fn descriptor_dim(&self) -> usize {
        self.dim.unwrap_or_else(|| self.pooled_dim())
    }

    /// The binarising projection, when `binary_bits` is set: the learned one when the
    /// card holds one (its shapes are checked with the card), else the seeded random one.
    pub fn projection(&self) -> Option<binarise::SignProjection> {
        let (dim, bits) = (self.descriptor_dim(), self.binary_bits?);
        match &self.binary_learned {
            Some(l) => binarise::SignProjection::learned(dim, bits, l),
            None => Some(binarise::SignProjection::new(dim, bits, self.binary_seed)),
        }
    }

    pub fn init(&self, device: &Device) -> FundusMetricNet {
        let c = self.backbone.feature_dim();
        let block = || MirrorAttentionConfig::new(c).init(device);
        let mirror = self.attention == Attention::Mirror;
        FundusMetricNet {
            backbone: DenseNetConfig {
                num_classes: None,
                ..self.backbone.clone()
            }
            .init(device),
            att_h: mirror.then(block),
            att_v: mirror.then(block),
            gem: Gem::new(self.gem_p, device),
            proj: self
                .dim
                .map(|d| LinearConfig::new(self.pooled_dim(), d).init(device)),
            cls: self
                .classes
                .map(|k| LinearConfig::new(self.descriptor_dim(), k).init(device)),
        }
    }
}

#[derive(Module, Debug)]
pub struct FundusMetricNet {
    pub backbone: DenseNet,
    pub att_h: Option<MirrorAttention>,
    pub att_v: Option<MirrorAttention>,
    pub gem: Gem,
    pub proj: Option<Linear>,
    pub cls: Option<Linear>,
}

/// What a forward pass gives.
pub struct FundusOutput {
    /// L2-normalised descriptors `[N, D]`.
    pub descriptor: Tensor<2>,
    /// `GeM(y_h)` and `GeM(y_v)` (mirror attention only): the two halves whose agreement
    /// is the fine triplet loss's relevance degree.
    pub halves: Option<(Tensor<2>, Tensor<2>)>,
    /// Grade scores of the optional classification head.
    pub logits: Option<Tensor<2>>,
    /// With `explain`: where attention falls (mirror), or the activation map (none), at
    /// input resolution.
    pub saliency: Vec<Saliency>,
}

impl FundusMetricNet {
    fn maps(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.backbone.feature_maps(x))
    }

    pub fn forward(&self, x: Tensor<4>, explain: bool) -> FundusOutput {
        let [n, _, hh, ww] = x.dims();
        let mut saliency = Vec::new();
        let (pooled, halves) = match (&self.att_h, &self.att_v) {
            (Some(ah), Some(av)) => {
                let [o, h, v] = mirror_views(x);
                let f = self.maps(o);
                let fh = unflip_h(self.maps(h));
                let fv = unflip_v(self.maps(v));
                let (yh, a_h) = ah.forward_with_attention(fh, f.clone());
                let (yv, a_v) = av.forward_with_attention(fv, f.clone());
                if explain {
                    // Attention each position receives from the mirrored queries.
                    let [_, _, h, w] = f.dims();
                    let received = (a_h.sum_dim(1) + a_v.sum_dim(1)).reshape([n, h * w]);
                    let v = received.into_data().try_into_vec::<f32>().expect("f32");
                    saliency = to_saliency(&v, n, h, w, hh, ww);
                }
                let (gh, gv) = (self.gem.forward(yh), self.gem.forward(yv));
                (Tensor::cat(vec![gh.clone(), gv.clone()], 1), Some((gh, gv)))
            }
            _ => {
                let f = self.maps(x);
                if explain {
                    let [_, _, h, w] = f.dims();
                    let m = f.clone().sum_dim(1).reshape([n, h * w]);
                    let v = m.into_data().try_into_vec::<f32>().expect("f32");
                    saliency = to_saliency(&v, n, h, w, hh, ww);
                }
                (self.gem.forward(f), None)
            }
        };
        let projected = match &self.proj {
            Some(p) => p.forward(pooled),
            None => pooled,
        };
        let descriptor = crate::ops::l2_normalise(projected);
        let logits = self.cls.as_ref().map(|c| c.forward(descriptor.clone()));
        FundusOutput {
            descriptor,
            halves,
            logits,
            saliency,
        }
    }

    /// Grad-CAM of similarity: for image `i`, the gradient of `<descriptor_i, targets[i]>`
    /// with respect to the original view's feature maps (the flipped views' maps held
    /// fixed), weighted and summed as in [`crate::grad_cam`]. A descriptor model has no
    /// class to explain, so the score is the cosine similarity to what it is compared
    /// with: for a result, the query's descriptor; for the query, its results' mean (the
    /// explanation of "why these match", as in Stylianou et al., WACV 2019).
    pub fn similarity_grad_cam(&self, x: Tensor<4>, targets: &[Vec<f32>]) -> Vec<Saliency> {
        let [n, _, hh, ww] = x.dims();
        assert_eq!(targets.len(), n, "one target descriptor per image");
        let d = targets.first().map_or(0, Vec::len);
        let flat: Vec<f32> = targets
            .iter()
            .flat_map(|t| {
                assert_eq!(
                    t.len(),
                    d,
                    "target of dimension {} for descriptors of {d}",
                    t.len()
                );
                t.iter().copied()
            })
            .collect();
        let (f, mirrored) = match (&self.att_h, &self.att_v) {
            (Some(_), Some(_)) => {
                let [o, h, v] = mirror_views(x);
                let f = self.maps(o);
                (f, Some((unflip_h(self.maps(h)), unflip_v(self.maps(v)))))
            }
            _ => (self.maps(x), None),
        };
        let [_, _, h, w] = f.dims();
        let head = |leaf: Tensor<4>| -> Tensor<2> {
            let pooled = match (&self.att_h, &self.att_v, &mirrored) {
                (Some(ah), Some(av), Some((fh, fv))) => {
                    let dev = leaf.device();
                    let yh = ah.forward(fh.clone().to_device(&dev), leaf.clone());
                    let yv = av.forward(fv.clone().to_device(&dev), leaf);
                    Tensor::cat(vec![self.gem.forward(yh), self.gem.forward(yv)], 1)
                }
                _ => self.gem.forward(leaf),
            };
            let projected = match &self.proj {
                Some(p) => p.forward(pooled),
                None => pooled,
            };
            let desc = crate::ops::l2_normalise(projected);
            assert_eq!(
                desc.dims()[1],
                d,
                "target descriptors of the wrong dimension"
            );
            let t = Tensor::<2>::from_data(TensorData::new(flat.clone(), [n, d]), &desc.device());
            (desc * t).sum_dim(1)
        };
        let raw = grad_cam_raw(f, head, &vec![vec![0]; n]);
        let v = raw.into_data().try_into_vec::<f32>().expect("f32 maps");
        to_saliency(&v, n, h, w, hh, ww)
    }
}
