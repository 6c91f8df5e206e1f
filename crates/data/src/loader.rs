//! Parallel batch loading with bounded memory: one batch is decoded at a time, its images
//! in parallel (rayon), so memory holds at most `batch_size` decoded images whatever the
//! dataset size.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::Result;
use crate::image_buf::ImageF32;
use crate::phantom::draw::mix_seed;
use crate::record::Record;
use crate::transform::Pipeline;

/// One batch: the images and the positions of their records in the loader's list.
#[derive(Debug)]
pub struct Batch {
    pub indices: Vec<usize>,
    pub images: Vec<ImageF32>,
}

/// Iterates over batches of transformed images for one epoch.
pub struct BatchLoader<'a> {
    records: &'a [Record],
    pipeline: &'a Pipeline,
    order: Vec<usize>,
    batch_size: usize,
    epoch: u64,
    next: usize,
    /// A sampler's order may hold an image twice: its augmentation then draws by
    /// position in the epoch, so the two copies differ.
    by_position: bool,
}

impl<'a> BatchLoader<'a> {
    /// `shuffle` permutes the order with the pipeline's seed and the epoch.
    pub fn new(
        records: &'a [Record],
        pipeline: &'a Pipeline,
        batch_size: usize,
        epoch: u64,
        shuffle: bool,
    ) -> Self {
        let mut order: Vec<usize> = (0..records.len()).collect();
        if shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(pipeline.seed, u64::MAX, epoch));
            order.shuffle(&mut rng);
        }
        BatchLoader {
            by_position: false,
            ..Self::with_order(records, pipeline, batch_size, epoch, order)
        }
    }
}

impl<'a> BatchLoader<'a> {
    /// Batches in a given order (a sampler's, which may repeat an image).
    pub fn with_order(
        records: &'a [Record],
        pipeline: &'a Pipeline,
        batch_size: usize,
        epoch: u64,
        order: Vec<usize>,
    ) -> Self {
        BatchLoader {
            records,
            pipeline,
            order,
            batch_size: batch_size.max(1),
            epoch,
            next: 0,
            by_position: true,
        }
    }
}

impl Iterator for BatchLoader<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let start = self.next;
        let indices = self.order[start..end].to_vec();
        self.next = end;
        let by_position = self.by_position;
        let images = indices
            .par_iter()
            .enumerate()
            .map(|(j, &i)| {
                let salt = if by_position {
                    (start + j) as u64
                } else {
                    i as u64
                };
                self.pipeline.load(&self.records[i], self.epoch, salt)
            })
            .collect::<Result<Vec<_>>>();
        Some(images.map(|images| Batch { indices, images }))
    }
}
