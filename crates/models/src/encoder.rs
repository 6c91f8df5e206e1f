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
        let prepared = images.into_iter().map(|img| self.prepare(img)).collect();
        self.encode_prepared(prepared, explain)
    }

    /// A decoded image through the card's preprocessing (resize, channels, normalisation):
    /// what [`Encoder::encode_prepared`] takes. Independent of the network, so it can run
    /// on other threads while the network works.
    pub fn prepare(&self, img: ImageF32) -> ImageF32 {
        self.pipeline.apply(img, 0, 0)
    }

    /// Encodes images already through [`Encoder::prepare`], as one batch.
    pub fn encode_prepared(&self, prepared: Vec<ImageF32>, explain: bool) -> Vec<Encoded> {
        if prepared.is_empty() {
            return Vec::new();
        }
        let x = self.stack(prepared);
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

    /// Flip test-time augmentation: each image encoded with its left-right mirror, the
    /// relaxed code or descriptor and the class probabilities averaged, and the stored
    /// vector (code, descriptor, binarised descriptor) remade from that mean. The saliency
    /// and crop box are the unmirrored image's: they are drawn on it.
    pub fn encode_images_with_mirror(&self, images: Vec<ImageF32>, explain: bool) -> Vec<Encoded> {
        let mirrored: Vec<ImageF32> = images
            .iter()
            .map(|img| self.prepare(medret_data::transform::hflip(img)))
            .collect();
        let flipped = self.encode_prepared(mirrored, false);
        self.average_mirrored(self.encode_images(images, explain), flipped)
    }

    /// [`Encoder::encode_images`], or with `flip` [`Encoder::encode_images_with_mirror`]:
    /// as an archive built with flip test-time augmentation encodes everything.
    pub fn encode_images_as(
        &self,
        images: Vec<ImageF32>,
        explain: bool,
        flip: bool,
    ) -> Vec<Encoded> {
        if flip {
            self.encode_images_with_mirror(images, explain)
        } else {
            self.encode_images(images, explain)
        }
    }

    fn average_mirrored(&self, plain: Vec<Encoded>, flipped: Vec<Encoded>) -> Vec<Encoded> {
        plain
            .into_iter()
            .zip(flipped)
            .map(|(mut e, f)| {
                for (a, b) in e.raw.iter_mut().zip(&f.raw) {
                    *a = 0.5 * (*a + b);
                }
                for (a, b) in e.probabilities.iter_mut().zip(&f.probabilities) {
                    *a = 0.5 * (*a + b);
                }
                self.remake_vectors(&mut e);
                e
            })
            .collect()
    }

    /// `e.vector` and `e.code` recomputed from `e.raw`, as the model's own output makes
    /// them: after any change to the relaxed code or descriptor (averaging, expansion).
    pub fn remake_vectors(&self, e: &mut Encoded) {
        match &self.net {
            Net::CxrHash(..) => e.vector = pack_code_bytes(&e.raw),
            Net::Fundus(_, projection) => {
                e.vector = e.raw.iter().flat_map(|v| v.to_le_bytes()).collect();
                e.code = projection.as_ref().map(|p| p.code(&e.raw));
            }
        }
    }

    /// Decoded images through the card's preprocessing, as one batch.
    fn input(&self, images: Vec<ImageF32>) -> Tensor<4> {
        self.stack(images.into_iter().map(|img| self.prepare(img)).collect())
    }

    /// Prepared images as one batch tensor.
    fn stack(&self, prepared: Vec<ImageF32>) -> Tensor<4> {
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
        self.encode_records_with(records, batch, false, progress)
    }

    /// [`Encoder::encode_records_full`], with `flip` each image averaged with its mirror
    /// ([`Encoder::encode_images_with_mirror`]).
    ///
    /// A pipeline of two stages: one thread decodes and prepares the next batch (its
    /// images in parallel) while the network encodes the current one, at most one batch
    /// ahead, so memory stays at about three batches of prepared images whatever the
    /// number of records. The first error stops both, in record order.
    pub fn encode_records_with(
        &self,
        records: &[Record],
        batch: usize,
        flip: bool,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Encoded>, EncodeError> {
        use rayon::prelude::*;
        type Prepared = (Vec<ImageF32>, Vec<ImageF32>);
        let pipeline = &self.pipeline;
        let prepare = |chunk: &[Record]| -> Result<Prepared, EncodeError> {
            let pairs = chunk
                .par_iter()
                .map(|r| {
                    let img = medret_data::decode::load_image(&r.source)?;
                    let mirror =
                        flip.then(|| pipeline.apply(medret_data::transform::hflip(&img), 0, 0));
                    Ok((pipeline.apply(img, 0, 0), mirror))
                })
                .collect::<Result<Vec<_>, medret_data::DataError>>()?;
            let (plain, mirrored): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            Ok((plain, mirrored.into_iter().flatten().collect()))
        };
        let mut out = Vec::with_capacity(records.len());
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            s.spawn(move || {
                for chunk in records.chunks(batch.max(1)) {
                    let prepared = prepare(chunk);
                    let failed = prepared.is_err();
                    // A closed channel: the network side stopped on an error.
                    if tx.send(prepared).is_err() || failed {
                        break;
                    }
                }
            });
            for prepared in rx {
                let (plain, mirrored) = prepared?;
                let encoded = self.encode_prepared(plain, false);
                if flip {
                    let flipped = self.encode_prepared(mirrored, false);
                    out.extend(self.average_mirrored(encoded, flipped));
                } else {
                    out.extend(encoded);
                }
                progress(out.len());
            }
            Ok::<_, EncodeError>(())
        })?;
        Ok(out)
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 tensor")
}
