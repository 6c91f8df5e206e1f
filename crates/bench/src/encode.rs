//! Encoding an archive against the network alone: `medret bench encode`.
//!
//! The network's throughput is timed on images already decoded and prepared (the same
//! batches, repeated), then [`Encoder::encode_records_full`], which `medret encode` and
//! `index build --model` run, on the same records read from their files. Their ratio is
//! what decoding and preprocessing cost once overlapped with the network.

use std::time::Instant;

use anyhow::{Result, bail};
use medret_data::{ImageF32, Record};
use medret_models::encoder::Encoder;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct EncodeThroughput {
    pub images: usize,
    pub batch: usize,
    pub threads: usize,
    /// Images a second through the network alone (prepared input).
    pub network_images_per_s: f64,
    /// Images a second from files to outputs (`encode_records_full`).
    pub pipeline_images_per_s: f64,
    /// `pipeline / network`.
    pub ratio: f64,
    /// Seconds to decode and prepare every image once, on one thread: what the
    /// pipeline hides behind the network.
    pub prepare_seconds_one_thread: f64,
}

/// Times both over `records` (all of them, `repeats` times for the network alone).
pub fn measure(encoder: &Encoder, records: &[Record], batch: usize) -> Result<EncodeThroughput> {
    if records.is_empty() || batch == 0 {
        bail!("no images to encode (or a batch of 0)");
    }
    let t = Instant::now();
    let prepared: Vec<ImageF32> = records
        .iter()
        .map(|r| medret_data::decode::load_image(&r.source).map(|img| encoder.prepare(img)))
        .collect::<Result<_, _>>()?;
    let prepare_seconds_one_thread = t.elapsed().as_secs_f64();
    // One warm-up batch for each, then the whole set.
    let warm = prepared.len().min(batch);
    encoder.encode_prepared(prepared[..warm].to_vec(), false);
    let t = Instant::now();
    for chunk in prepared.chunks(batch) {
        std::hint::black_box(encoder.encode_prepared(chunk.to_vec(), false));
    }
    let network = t.elapsed().as_secs_f64();
    drop(prepared);
    encoder.encode_records_full(&records[..warm], batch, &|_| {})?;
    let t = Instant::now();
    std::hint::black_box(encoder.encode_records_full(records, batch, &|_| {})?);
    let pipeline = t.elapsed().as_secs_f64();
    let n = records.len() as f64;
    Ok(EncodeThroughput {
        images: records.len(),
        batch,
        threads: rayon::current_num_threads(),
        network_images_per_s: n / network,
        pipeline_images_per_s: n / pipeline,
        ratio: network / pipeline,
        prepare_seconds_one_thread,
    })
}
