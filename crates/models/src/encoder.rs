//! From images to what the archive stores: a trained model folder (`model.json` and
//! `model.safetensors`) opened once, then images through the card's preprocessing and
//! the network to packed codes (or descriptors), with the explanation of each (saliency
//! map and crop box) on request. The CLI's `encode`, `index build --model` and
//! `search --image` and the server all go through this one path, so a query is encoded
//! exactly as the archive was.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use medret_data::transform::Pipeline;
use medret_data::{ImageF32, Record};

use crate::cxr_hash::cam_crop::CropBox;
use crate::cxr_hash::hash_head::pack_code_bytes;
use crate::cxr_hash::{FusionHashConfig, FusionHashNet, Pass};
use crate::fundus_metric::{FundusMetricConfig, FundusMetricNet};
use crate::grad_cam::Saliency;
use crate::model_card::{CardError, Method, ModelCard, WEIGHTS_FILE};
use crate::weights::{WeightsError, load_module};

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Card(#[from] CardError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Data(#[from] medret_data::DataError),
}

/// One encoded image.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The stored vector: packed code bytes, or little-endian f32 descriptor bytes.
    pub vector: Vec<u8>,
    /// The relaxed code or descriptor before packing.
    pub raw: Vec<f32>,
    /// Class probabilities of the hash head.
    pub probabilities: Vec<f32>,
    /// Saliency map at the model's input size (with `explain`).
    pub saliency: Option<Saliency>,
    /// The crop box in input pixels (with `explain`).
    pub crop: Option<CropBox>,
    /// For a descriptor model with `binary_bits`: the binarised descriptor (packed bytes).
    pub code: Option<Vec<u8>>,
}

// Boxed: the networks are large structs of modules, and one encoder holds one of them.
enum Net {
    CxrHash(FusionHashConfig, Box<FusionHashNet>),
    Fundus(
        Box<FundusMetricNet>,
        Option<crate::fundus_metric::binarise::SignProjection>,
    ),
}

/// Loads a fundus model's weights (the backbone under `backbone.`, torchvision names).
pub fn load_fundus_metric(
    cfg: &FundusMetricConfig,
    weights: &Path,
    device: &Device,
) -> Result<FundusMetricNet, WeightsError> {
    let mut net = cfg.init(device);
    let f = crate::densenet::DenseNetConfig {
        num_classes: None,
        ..cfg.backbone.clone()
    };
    load_module(&mut net, &[("backbone.", &f)], weights)?;
    Ok(net.valid())
}

pub struct Encoder {
    pub card: ModelCard,
    pub dir: PathBuf,
    net: Net,
    device: Device,
    pipeline: Pipeline,
    display: Pipeline,
}

/// Loads the weights of a model folder into the network its card describes.
pub fn load_fusion_hash(
    cfg: &FusionHashConfig,
    weights: &Path,
    device: &Device,
) -> Result<FusionHashNet, WeightsError> {
    let mut net = cfg.init(device);
    let (g, l) = (cfg.global_config(), cfg.local_config());
    load_module(&mut net, &[("global.", &g), ("local.", &l)], weights)?;
    Ok(net.valid())
}

impl Encoder {
    /// Opens and verifies a model folder (see [`ModelCard::read`]).
    pub fn open(dir: &Path, device: &Device) -> Result<Self, EncodeError> {
        let card = ModelCard::read(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        let net = match &card.method {
            Method::CxrFusionHash(cfg) => Net::CxrHash(
                cfg.clone(),
                Box::new(load_fusion_hash(cfg, &weights, device)?),
            ),
            Method::FundusMetric(cfg) => Net::Fundus(
                Box::new(load_fundus_metric(cfg, &weights, device)?),
                cfg.projection(),
            ),
        };
        let pipeline = Pipeline::new(card.preprocessing.clone(), 0);
        let display = Pipeline::new(
            medret_data::transform::TransformConfig {
                normalize: None,
                ..card.preprocessing.clone()
            },
            0,
        );
        Ok(Encoder {
            card,
            dir: dir.to_path_buf(),
            net,
            device: device.clone(),
            pipeline,
            display,
        })
    }

    /// Bits of the binarised descriptors, for a descriptor model trained with
    /// `binary_bits`.
    pub fn binary_bits(&self) -> Option<usize> {
        match &self.net {
            Net::Fundus(_, p) => p.as_ref().map(|p| p.bits),
            Net::CxrHash(..) => None,
        }
    }

    /// The model's own binary code of a descriptor (packed bytes), for a descriptor model
    /// trained with `binary_bits`.
    pub fn binarise(&self, descriptor: &[f32]) -> Option<Vec<u8>> {
        match &self.net {
            Net::Fundus(_, p) => p.as_ref().map(|p| p.code(descriptor)),
            Net::CxrHash(..) => None,
        }
    }

    /// The input side in pixels.
    pub fn size(&self) -> usize {
        self.card.preprocessing.size
    }

    /// An image as the model sees it, before normalisation: what overlays are drawn on.
    pub fn display_image(&self, img: ImageF32) -> ImageF32 {
        self.display.apply(img, 0, 0)
    }

    /// Encodes decoded images (any size, grey or RGB: the card's preprocessing converts).
    pub fn encode_images(&self, images: Vec<ImageF32>, explain: bool) -> Vec<Encoded> {
        if images.is_empty() {
            return Vec::new();
        }
        let x = self.input(images);
        let n = x.dims()[0];
        match &self.net {
            Net::CxrHash(cfg, net) => {
                let pass = if explain {
                    Pass::Explain
                } else {
                    Pass::Full {
                        detach_global: false,
                    }
                };
                let out = net.forward(cfg, x, pass);
                let k = cfg.bits;
                let h = to_vec(out.h.expect("codes"));
                let probs: Vec<f32> = to_vec(out.logits.expect("logits"))
                    .into_iter()
                    .map(|z| 1.0 / (1.0 + (-z).exp()))
                    .collect();
                let classes = cfg.classes;
                let mut saliency = out.saliency.into_iter();
                (0..n)
                    .map(|i| {
                        let raw = h[i * k..(i + 1) * k].to_vec();
                        Encoded {
                            vector: pack_code_bytes(&raw),
                            raw,
                            probabilities: probs[i * classes..(i + 1) * classes].to_vec(),
                            saliency: if explain { saliency.next() } else { None },
                            crop: if explain {
                                out.boxes.get(i).copied()
                            } else {
                                None
                            },
                            code: None,
                        }
                    })
                    .collect()
            }
            Net::Fundus(net, projection) => {
                let out = net.forward(x, explain);
                let d = out.descriptor.dims()[1];
                let desc = to_vec(out.descriptor);
                let probs = out
                    .logits
                    .map(|l| to_vec(burn::tensor::activation::softmax(l, 1)))
                    .unwrap_or_default();
                let k = probs.len() / n.max(1);
                let mut saliency = out.saliency.into_iter();
                (0..n)
                    .map(|i| {
                        let raw = desc[i * d..(i + 1) * d].to_vec();
                        let code = projection.as_ref().map(|p| p.code(&raw));
                        Encoded {
                            vector: raw.iter().flat_map(|v| v.to_le_bytes()).collect(),
                            raw,
                            probabilities: probs
                                .get(i * k..(i + 1) * k)
                                .map(<[f32]>::to_vec)
                                .unwrap_or_default(),
                            saliency: if explain { saliency.next() } else { None },
                            crop: None,
                            code,
                        }
                    })
                    .collect()
            }
        }
    }

    /// Decoded images through the card's preprocessing, as one batch.
    fn input(&self, images: Vec<ImageF32>) -> Tensor<4> {
        let prepared: Vec<ImageF32> = images
            .into_iter()
            .map(|img| self.pipeline.apply(img, 0, 0))
            .collect();
        let (c, h, w) = (prepared[0].channels, prepared[0].height, prepared[0].width);
        let n = prepared.len();
        let mut data = Vec::with_capacity(n * c * h * w);
        for p in &prepared {
            data.extend_from_slice(&p.data);
        }
        Tensor::<4>::from_data(TensorData::new(data, [n, c, h, w]), &self.device)
    }

    /// For a descriptor model: Grad-CAM of each image's cosine similarity to its target
    /// descriptor (see [`FundusMetricNet::similarity_grad_cam`]), at the input size.
    /// `None` for a hashing model, whose explanation is already its class Grad-CAM.
    pub fn similarity_cam(
        &self,
        images: Vec<ImageF32>,
        targets: &[Vec<f32>],
    ) -> Option<Vec<Saliency>> {
        match &self.net {
            Net::Fundus(net, _) if !images.is_empty() => {
                Some(net.similarity_grad_cam(self.input(images), targets))
            }
            _ => None,
        }
    }

    /// Decodes and encodes one image file (PNG, JPEG or DICOM).
    pub fn encode_file(
        &self,
        path: &Path,
        explain: bool,
    ) -> Result<(ImageF32, Encoded), EncodeError> {
        let img = medret_data::decode::decode_any(path)?;
        let shown = self.display_image(img.clone());
        let e = self.encode_images(vec![img], explain).remove(0);
        Ok((shown, e))
    }

    /// Encodes records in batches (decoded in parallel), in order; `progress` is called
    /// after each batch with the number of images done.
    pub fn encode_records(
        &self,
        records: &[Record],
        batch: usize,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<u8>>, EncodeError> {
        self.encode_records_as(records, batch, false, progress)
    }

    /// [`Encoder::encode_records`], taking the binarised descriptors when `binary` (a
    /// descriptor model trained with `binary_bits`).
    pub fn encode_records_as(
        &self,
        records: &[Record],
        batch: usize,
        binary: bool,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<u8>>, EncodeError> {
        Ok(self
            .encode_records_full(records, batch, progress)?
            .into_iter()
            .map(|e| match e.code {
                Some(code) if binary => code,
                _ => e.vector,
            })
            .collect())
    }

    /// Every output of each record, the relaxed code or descriptor (`raw`) included.
    pub fn encode_records_full(
        &self,
        records: &[Record],
        batch: usize,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Encoded>, EncodeError> {
        use rayon::prelude::*;
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(batch.max(1)) {
            let images = chunk
                .par_iter()
                .map(|r| medret_data::decode::load_image(&r.source))
                .collect::<Result<Vec<_>, _>>()?;
            out.extend(self.encode_images(images, false));
            progress(out.len());
        }
        Ok(out)
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 tensor")
}
