//! Pooled DenseNet features for a list of images, with torchvision's preprocessing.

use burn::prelude::*;
use medret_data::Record;
use medret_data::loader::BatchLoader;
use medret_data::transform::{Channels, Normalize, Pipeline, TransformConfig};

use crate::densenet::DenseNet;

/// The preprocessing torchvision weights expect: RGB (grey repeated), `/255`, resized to
/// `size` unless already that size, ImageNet mean and std.
pub fn torchvision_pipeline(size: usize) -> Pipeline {
    Pipeline::new(
        TransformConfig {
            size,
            channels: Channels::Rgb,
            normalize: Some(Normalize::imagenet()),
            ..Default::default()
        },
        0,
    )
}

/// Pooled features (eval mode), one row per record in order; `tick` per image.
pub fn pooled_features(
    model: &DenseNet,
    records: &[Record],
    pipeline: &Pipeline,
    batch_size: usize,
    device: &Device,
    tick: &(dyn Fn() + Sync),
) -> medret_data::Result<Vec<Vec<f32>>> {
    let model = model.valid();
    let mut out = vec![Vec::new(); records.len()];
    for batch in BatchLoader::new(records, pipeline, batch_size, 0, false) {
        let batch = batch?;
        let (c, h, w) = {
            let i = &batch.images[0];
            (i.channels, i.height, i.width)
        };
        let mut data = Vec::with_capacity(batch.images.len() * c * h * w);
        for img in &batch.images {
            data.extend_from_slice(&img.data);
        }
        let x =
            Tensor::<4>::from_data(TensorData::new(data, [batch.images.len(), c, h, w]), device);
        let pooled = model.pooled(x);
        let d = pooled.dims()[1];
        let v = pooled
            .into_data()
            .try_into_vec::<f32>()
            .expect("pooled features are f32");
        for (k, &i) in batch.indices.iter().enumerate() {
            out[i] = v[k * d..(k + 1) * d].to_vec();
            tick();
        }
    }
    Ok(out)
}
