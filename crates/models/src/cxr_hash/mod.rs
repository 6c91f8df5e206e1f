//! Interpretable fusion hashing for chest X-rays (Guan et al., CMPB 222, 2022), built on
//! AG-CNN's global/local scheme:
//!
//! 1. the **global network** (a DenseNet with its own classifier over the findings) gives
//!    feature maps `F`, pooled features `g` and class scores;
//! 2. a **saliency map** from `F`: Grad-CAM of the predicted findings (closed form for the
//!    pooled linear head, [`crate::grad_cam::grad_cam_pooled_linear`]) or the cheaper
//!    activation map (channel-wise max of `ReLU(F)`, AG-CNN's own);
//! 3. the **mask crop** ([`cam_crop`]) of the input image around the salient region,
//!    resized to the input size;
//! 4. the **local network** (a second DenseNet, own weights) on the crop gives `l`;
//! 5. **fusion** `[g, l]` -> [`hash_head`] (FC, K tanh units, classifier).
//!
//! `branches` selects global only, local only or the fusion, for the ablations. The
//! saliency targets are the findings the global network predicts (probability > 0.5, else
//! its top finding), in training as at search time, so the local network learns on the
//! crops it will see when no labels are known.

pub mod cam_crop;
pub mod hash_head;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::densenet::{DenseNet, DenseNetConfig};
use crate::grad_cam::{Saliency, grad_cam_pooled_linear, to_saliency};
use cam_crop::{CropBox, CropConfig, crop_box, crop_resize};
use hash_head::{HashHead, HashHeadConfig};

/// Which pooled features feed the hash head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Branches {
    Global,
    Local,
    Fusion,
}

impl std::str::FromStr for Branches {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "global" => Ok(Branches::Global),
            "local" => Ok(Branches::Local),
            "fusion" => Ok(Branches::Fusion),
            o => Err(format!("branches `{o}`: expected global, local or fusion")),
        }
    }
}

/// The saliency map that drives the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaliencyKind {
    GradCam,
    Activation,
}

impl std::str::FromStr for SaliencyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grad-cam" | "gradcam" => Ok(SaliencyKind::GradCam),
            "activation" => Ok(SaliencyKind::Activation),
            o => Err(format!("saliency `{o}`: expected grad-cam or activation")),
        }
    }
}

/// Everything that defines the network (saved in `model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionHashConfig {
    pub arch: Arch,
    /// The backbone of both networks (feature extractor; `num_classes` is ignored).
    pub backbone: DenseNetConfig,
    /// Findings the classifiers predict.
    pub classes: usize,
    /// Code length K (a multiple of 8, 8 to 256).
    pub bits: usize,
    /// Width of the FC layer before the hash layer.
    pub fc_dim: usize,
    pub branches: Branches,
    pub saliency: SaliencyKind,
    pub crop: CropConfig,
    /// Batch-normalise the hash layer's pre-activations ([`hash_head`]); models trained
    /// before it existed read as false and keep their head.
    #[serde(default)]
    pub hash_norm: bool,
}

impl FusionHashConfig {
    pub fn new(arch: Arch, in_channels: usize, classes: usize, bits: usize) -> Self {
        FusionHashConfig {
            arch,
            backbone: DenseNetConfig {
                in_channels,
                ..arch.config(None)
            },
            classes,
            bits,
            fc_dim: 512,
            branches: Branches::Fusion,
            saliency: SaliencyKind::GradCam,
            crop: CropConfig::default(),
            hash_norm: true,
        }
    }

    /// The global network's configuration (backbone plus classifier over the findings).
    pub fn global_config(&self) -> DenseNetConfig {
        DenseNetConfig {
            num_classes: Some(self.classes),
            ..self.backbone.clone()
        }
    }

    /// The local network's configuration (feature extractor only).
    pub fn local_config(&self) -> DenseNetConfig {
        DenseNetConfig {
            num_classes: None,
            ..self.backbone.clone()
        }
    }

    pub fn needs_local(&self) -> bool {
        self.branches != Branches::Global
    }

    /// Input width of the hash head.
    pub fn head_in_dim(&self) -> usize {
        let d = self.backbone.feature_dim();
        match self.branches {
            Branches::Fusion => 2 * d,
            _ => d,
        }
    }

    /// Checks the settings a user can get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.bits == 0 || !self.bits.is_multiple_of(8) || self.bits > 256 {
            return Err(format!(
                "--bits {}: codes are a multiple of 8 from 8 to 256 bits (16, 32, 48, 64 in the paper)",
                self.bits
            ));
        }
        if self.classes == 0 {
            return Err("no classes to learn".into());
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> FusionHashNet {
        FusionHashNet {
            global: self.global_config().init(device),
            local: self.needs_local().then(|| self.local_config().init(device)),
            head: HashHeadConfig {
                in_dim: self.head_in_dim(),
                fc_dim: self.fc_dim,
                bits: self.bits,
                classes: self.classes,
                norm: self.hash_norm,
            }
            .init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct FusionHashNet {
    pub global: DenseNet,
    pub local: Option<DenseNet>,
    pub head: HashHead,
}

/// How much of the network a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The global network alone (the first stage of the staged schedule).
    GlobalOnly,
    /// Everything; `detach_global` stops gradients into the global network (second stage).
    Full { detach_global: bool },
    /// Everything, plus the saliency maps at input resolution (search explanations).
    Explain,
}

/// What a forward pass gives.
pub struct FusionOutput {
    /// The global classifier's scores `[N, classes]`.
    pub global_logits: Tensor<2>,
    /// Relaxed codes `[N, K]` (absent for [`Pass::GlobalOnly`]).
    pub h: Option<Tensor<2>>,
    /// The hash head's class scores.
    pub logits: Option<Tensor<2>>,
    /// Crop boxes in input pixels (empty when the local network is not run).
    pub boxes: Vec<CropBox>,
    /// Images whose map was empty, cropped to the whole image.
    pub fallbacks: usize,
    /// Saliency at input resolution ([`Pass::Explain`] only).
    pub saliency: Vec<Saliency>,
}

impl FusionHashNet {
    pub fn forward(&self, cfg: &FusionHashConfig, x: Tensor<4>, pass: Pass) -> FusionOutput {
        let [n, c, hh, ww] = x.dims();
        let mut maps = self.global.feature_maps(x.clone());
        if matches!(
            pass,
            Pass::Full {
                detach_global: true
            }
        ) {
            maps = maps.detach();
        }
        let g = self.global.pool_maps(maps.clone());
        let maps_dims = maps.dims();
        let classifier = self.global.classifier.as_ref().expect("global classifier");
        let global_logits = classifier.forward(g.clone());
        let mut out = FusionOutput {
            global_logits: global_logits.clone(),
            h: None,
            logits: None,
            boxes: Vec::new(),
            fallbacks: 0,
            saliency: Vec::new(),
        };
        if pass == Pass::GlobalOnly {
            return out;
        }
        let need_saliency = cfg.needs_local() || pass == Pass::Explain;
        let mut l = None;
        if need_saliency {
            // Everything the host needs, in one read (`host`): the maps, and for Grad-CAM
            // the scores and the classifier's weights, and the pixels to crop.
            let grad_cam = cfg.saliency == SaliencyKind::GradCam;
            let mut reads = crate::host::Reads::new().with(maps);
            if grad_cam {
                reads = reads.with(global_logits).with(classifier.weight.val());
            }
            if self.local.is_some() {
                reads = reads.with(x.clone());
            }
            let mut host = reads.f32().into_iter();
            let f = host.next().expect("maps read");
            let grad_cam_inputs = if grad_cam {
                let scores = host.next().expect("scores read");
                let weight = host.next().expect("weights read");
                Some((scores, weight))
            } else {
                None
            };
            let sal = self.saliency(cfg, &f, maps_dims, grad_cam_inputs, hh, ww);
            for s in &sal {
                let (b, fell_back) = crop_box(&s.data, hh, ww, &cfg.crop);
                out.boxes.push(b);
                out.fallbacks += usize::from(fell_back);
            }
            if let Some(local) = &self.local {
                let pixels = host.next().expect("pixels read");
                let per = c * hh * ww;
                let mut crops = Vec::with_capacity(n * per);
                for (i, b) in out.boxes.iter().enumerate() {
                    crops.extend(crop_resize(
                        &pixels[i * per..(i + 1) * per],
                        c,
                        hh,
                        ww,
                        b,
                        hh,
                        ww,
                    ));
                }
                let crops =
                    Tensor::<4>::from_data(TensorData::new(crops, [n, c, hh, ww]), &x.device());
                l = Some(local.pooled(crops));
            }
            if pass == Pass::Explain {
                out.saliency = sal;
            }
        }
        let feature = match cfg.branches {
            Branches::Global => g,
            Branches::Local => l.expect("local network"),
            Branches::Fusion => Tensor::cat(vec![g, l.expect("local network")], 1),
        };
        let (h, logits) = self.head.forward(feature);
        out.h = Some(h);
        out.logits = Some(logits);
        out
    }

    /// Saliency maps `[0, 1]` at `hh x ww` for each image, from the global maps `f` (read
    /// back, `dims`), and for Grad-CAM the global scores and classifier weights.
    fn saliency(
        &self,
        cfg: &FusionHashConfig,
        f: &[f32],
        dims: [usize; 4],
        grad_cam: Option<(Vec<f32>, Vec<f32>)>,
        hh: usize,
        ww: usize,
    ) -> Vec<Saliency> {
        let [n, ch, h, w] = dims;
        // The scores and weights are read exactly when `cfg.saliency` is Grad-CAM.
        let raw = match grad_cam {
            Some((scores, weight)) => {
                let targets = predicted_targets(&scores, cfg.classes);
                grad_cam_pooled_linear(f, dims, &weight, cfg.classes, &targets)
            }
            None => {
                let mut out = vec![0.0f32; n * h * w];
                for i in 0..n {
                    for k in 0..ch {
                        let plane = &f[(i * ch + k) * h * w..(i * ch + k + 1) * h * w];
                        for (o, &v) in out[i * h * w..(i + 1) * h * w].iter_mut().zip(plane) {
                            *o = o.max(relu_f(v));
                        }
                    }
                }
                out
            }
        };
        to_saliency(&raw, n, h, w, hh, ww)
    }
}

fn relu_f(v: f32) -> f32 {
    v.max(0.0)
}

/// The findings whose logit is positive (probability > 0.5), else the top one.
pub fn predicted_targets(logits: &[f32], classes: usize) -> Vec<Vec<usize>> {
    logits
        .chunks(classes)
        .map(|row| {
            let t: Vec<usize> = (0..classes).filter(|&k| row[k] > 0.0).collect();
            if t.is_empty() {
                let top = (0..classes).fold(0, |b, k| if row[k] > row[b] { k } else { b });
                vec![top]
            } else {
                t
            }
        })
        .collect()
}
