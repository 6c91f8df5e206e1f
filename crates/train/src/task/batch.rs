//! The batch plumbing every task shares: a batch of decoded images as one host buffer,
//! a shard of it for one device, and its tensor.

use burn::prelude::*;
use burn::tensor::TensorData;

/// A batch of equally sized images as one host buffer `[n, c, h, w]`.
pub fn images_host(images: &[medret_data::ImageF32]) -> (Vec<f32>, [usize; 4]) {
    let (c, h, w) = (images[0].channels, images[0].height, images[0].width);
    let mut data = Vec::with_capacity(images.len() * c * h * w);
    for img in images {
        data.extend_from_slice(&img.data);
    }
    (data, [images.len(), c, h, w])
}

/// A host buffer `[n, c, h, w]` as a tensor on `device`.
pub fn pixels_tensor(pixels: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(pixels.to_vec(), shape), device)
}

/// A batch of equally sized images as a tensor on `device`.
pub fn images_tensor(images: &[medret_data::ImageF32], device: &Device) -> Tensor<4> {
    let (data, shape) = images_host(images);
    pixels_tensor(&data, shape, device)
}

/// Images `start..end` of a host buffer `[n, c, h, w]`: one device's shard of a batch.
pub fn shard_pixels(
    pixels: &[f32],
    shape: [usize; 4],
    start: usize,
    end: usize,
) -> (Vec<f32>, [usize; 4]) {
    let item = shape[1] * shape[2] * shape[3];
    (
        pixels[start * item..end * item].to_vec(),
        [end - start, shape[1], shape[2], shape[3]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        let shape = [3, 1, 1, 2];
        let pixels: Vec<f32> = (0..6).map(|x| x as f32).collect();
        assert_eq!(
            shard_pixels(&pixels, shape, 0, 1),
            (vec![0.0, 1.0], [1, 1, 1, 2])
        );
        assert_eq!(
            shard_pixels(&pixels, shape, 1, 3),
            (vec![2.0, 3.0, 4.0, 5.0], [2, 1, 1, 2])
        );
    }
}
