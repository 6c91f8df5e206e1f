//! The transform pipeline: each operation against a hand-worked case or a property, and
//! determinism under a seed.

use medret_data::ImageF32;
use medret_data::loader::BatchLoader;
use medret_data::transform::*;
use medret_data::{ImageSource, Record};
use proptest::prelude::*;
use rand::SeedableRng;

fn ramp(c: usize, h: usize, w: usize) -> ImageF32 {
    let data = (0..c * h * w)
        .map(|i| i as f32 / (c * h * w) as f32)
        .collect();
    ImageF32::from_data(c, h, w, data)
}

#[test]
fn flips_by_hand_and_involutions() {
    let img = ImageF32::from_data(1, 2, 3, vec![1., 2., 3., 4., 5., 6.]);
    assert_eq!(hflip(&img).data, vec![3., 2., 1., 6., 5., 4.]);
    assert_eq!(vflip(&img).data, vec![4., 5., 6., 1., 2., 3.]);
    let r = ramp(3, 5, 4);
    assert_eq!(hflip(&hflip(&r)), r);
    assert_eq!(vflip(&vflip(&r)), r);
}

#[test]
fn rotation_by_90_degrees_moves_pixels_where_expected() {
    // 3x3, one bright pixel at (row 0, col 2): top right.
    let mut img = ImageF32::new(1, 3, 3);
    img.set(0, 0, 2, 1.0);
    // Counter-clockwise on screen: top right goes to top left.
    let r = rotate(&img, 90.0);
    assert!((r.get(0, 0, 0) - 1.0).abs() < 1e-5, "{:?}", r.data);
    assert!((r.data.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(rotate(&img, 0.0), img);
}

#[test]
fn resize_keeps_size_and_constants() {
    let r = ramp(3, 7, 9);
    assert_eq!(
        resize(&r, 7, 9),
        r,
        "an image already at the size is not resized"
    );
    let c = ImageF32::from_data(1, 10, 10, vec![0.25; 100]);
    let s = resize(&c, 4, 6);
    assert_eq!((s.height, s.width), (4, 6));
    assert!(s.data.iter().all(|v| (v - 0.25).abs() < 1e-6));
}

#[test]
fn fundus_crop_finds_the_disc() {
    // A bright 4x6 block at rows 3..7, cols 5..11 of a black 12x16 image.
    let mut img = ImageF32::new(3, 12, 16);
    for y in 3..7 {
        for x in 5..11 {
            for c in 0..3 {
                img.set(c, y, x, 0.5);
            }
        }
    }
    let out = fundus_disc_crop(&img, 0.1);
    // Cropped to 4x6 then padded to a 6x6 square, block centred vertically.
    assert_eq!((out.height, out.width), (6, 6));
    assert_eq!(out.get(0, 0, 0), 0.0);
    assert_eq!(out.get(0, 1, 0), 0.5);
    assert_eq!(out.get(0, 4, 5), 0.5);
    assert_eq!(out.get(0, 5, 5), 0.0);
    let black = ImageF32::new(1, 4, 4);
    assert_eq!(fundus_disc_crop(&black, 0.1), black);
}

#[test]
fn colour_jitter_identity_and_hand_case() {
    let r = ramp(3, 4, 4);
    let mut same = r.clone();
    colour_jitter(&mut same, 1.0, 1.0, 1.0);
    assert_eq!(same, r);
    let mut g = ImageF32::from_data(1, 1, 2, vec![0.2, 0.6]);
    // Brightness 0.5: [0.1, 0.3]; contrast 2 about the mean 0.2: [0.0, 0.4].
    colour_jitter(&mut g, 0.5, 2.0, 1.0);
    assert!(
        (g.data[0] - 0.0).abs() < 1e-6 && (g.data[1] - 0.4).abs() < 1e-6,
        "{:?}",
        g.data
    );
}

#[test]
fn cutout_zeroes_an_exact_square_clipped_at_borders() {
    let mut img = ImageF32::from_data(1, 10, 10, vec![1.0; 100]);
    cutout(&mut img, 5, 5, 4);
    assert_eq!(img.data.iter().filter(|&&v| v == 0.0).count(), 16);
    let mut img = ImageF32::from_data(1, 10, 10, vec![1.0; 100]);
    cutout(&mut img, 0, 0, 4);
    assert_eq!(img.data.iter().filter(|&&v| v == 0.0).count(), 4);
}

proptest! {
    #[test]
    fn random_resized_crop_box_stays_inside(seed in 0u64..10_000, h in 8usize..300, w in 8usize..300, lo in 0.05f32..0.9) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (x, y, cw, ch) = random_resized_crop_box(&mut rng, h, w, (lo, 1.0));
        prop_assert!(cw >= 1 && ch >= 1 && x + cw <= w && y + ch <= h);
    }
}

fn array_record(i: usize, px: &std::sync::Arc<[u8]>) -> Record {
    Record::new(
        format!("r{i}"),
        ImageSource::Array {
            file: "mem.npz".into(),
            key: "train_images".into(),
            index: i,
            height: 8,
            width: 8,
            channels: 1,
            pixels: px.clone(),
        },
    )
}

#[test]
fn pipeline_is_deterministic_per_epoch_and_index_and_normalises() {
    let px: std::sync::Arc<[u8]> = (0..10 * 64)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let records: Vec<Record> = (0..10).map(|i| array_record(i, &px)).collect();
    let cfg = TransformConfig {
        size: 6,
        channels: Channels::Rgb,
        fundus_crop: false,
        augment: Augment {
            random_resized_crop: Some((0.3, 1.0)),
            hflip: 0.5,
            vflip: 0.5,
            rotation_deg: 10.0,
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            cutout: Some((0.5, 0.3)),
        },
        normalize: Some(Normalize::imagenet()),
    };
    let p = Pipeline::new(cfg.clone(), 1);
    let a = p.load(&records[3], 0, 3).unwrap();
    assert_eq!((a.channels, a.height, a.width), (3, 6, 6));
    assert_eq!(
        a,
        p.load(&records[3], 0, 3).unwrap(),
        "same seed, epoch, index"
    );
    assert_ne!(
        a,
        p.load(&records[3], 1, 3).unwrap(),
        "another epoch draws other augmentations"
    );
    assert_ne!(a, Pipeline::new(cfg, 2).load(&records[3], 0, 3).unwrap());

    // No augmentation: normalisation is (x - mean) / std per channel.
    let plain = Pipeline::new(
        TransformConfig {
            size: 8,
            channels: Channels::Rgb,
            normalize: Some(Normalize::imagenet()),
            ..Default::default()
        },
        0,
    );
    let n = plain.load(&records[0], 0, 0).unwrap();
    let raw = px[0] as f32 / 255.0;
    assert!((n.get(0, 0, 0) - (raw - 0.485) / 0.229).abs() < 1e-5);
    assert!((n.get(2, 0, 0) - (raw - 0.406) / 0.225).abs() < 1e-5);

    // The loader visits every record once per epoch, in parallel, with the same images as
    // loading one by one.
    let seen: Vec<(usize, ImageF32)> = BatchLoader::new(&records, &p, 4, 2, true)
        .flat_map(|b| {
            let b = b.unwrap();
            assert!(b.images.len() <= 4);
            b.indices.into_iter().zip(b.images).collect::<Vec<_>>()
        })
        .collect();
    let mut idx: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    assert_ne!(idx, (0..10).collect::<Vec<_>>(), "shuffled");
    idx.sort();
    assert_eq!(idx, (0..10).collect::<Vec<_>>());
    for (i, img) in &seen {
        assert_eq!(*img, p.load(&records[*i], 2, *i as u64).unwrap());
    }
}

#[test]
fn overlay_blends_the_jet_colour_map() {
    use medret_data::overlay::{jet, overlay};
    assert_eq!(jet(0.0), [0.0, 0.0, 0.5]);
    assert_eq!(jet(1.0), [0.5, 0.0, 0.0]);
    assert_eq!(jet(0.5), [0.5, 1.0, 0.5]);
    let img = ImageF32::from_data(1, 1, 2, vec![0.2, 0.8]);
    let sal = [0.0, 1.0];
    let o = overlay(&img, &sal, 0.0).unwrap();
    assert_eq!(o.get_pixel(0, 0).0, [51, 51, 51]);
    let o = overlay(&img, &sal, 0.5).unwrap();
    // Pixel 1: 0.5 * 0.8 + 0.5 * (0.5, 0, 0) = (0.65, 0.4, 0.4).
    assert_eq!(o.get_pixel(1, 0).0, [166, 102, 102]);
    assert!(overlay(&img, &[0.0], 0.5).is_err());
}

/// `resize` is the `image` crate's Triangle resize, bit for bit: shrinking by large and
/// fractional factors, growing, one axis only, odd sizes, several channels, and values
/// outside [0, 1] (which both clamp on the way out).
#[test]
fn resize_equals_the_image_crates_triangle_filter_bit_for_bit() {
    use image::imageops::{FilterType, resize as reference};
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 1.4 - 0.2
    };
    for (c, h, w, nh, nw) in [
        (1, 1024, 1024, 96, 96),
        (1, 300, 257, 224, 224),
        (3, 61, 47, 96, 96),
        (1, 17, 40, 17, 9),
        (2, 5, 7, 13, 3),
        (1, 1, 9, 4, 4),
    ] {
        let data: Vec<f32> = (0..c * h * w).map(|_| next()).collect();
        let img = ImageF32::from_data(c, h, w, data);
        let ours = resize(&img, nh, nw);
        for ch in 0..c {
            let src = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
                w as u32,
                h as u32,
                img.plane(ch).to_vec(),
            )
            .unwrap();
            let theirs = reference(&src, nw as u32, nh as u32, FilterType::Triangle);
            let differ = ours
                .plane(ch)
                .iter()
                .zip(theirs.as_raw())
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "{c}x{h}x{w} -> {nh}x{nw}, channel {ch}: {differ} differ"
            );
        }
    }
}

/// A grey image for an RGB network is resized once and repeated: the same result, bit for
/// bit, as repeating it first and resizing three planes, with and without a random crop.
#[test]
fn grey_to_rgb_is_resized_once_with_the_same_result() {
    let img = ramp(1, 37, 53);
    for crop in [None, Some((0.3, 1.0))] {
        let cfg = TransformConfig {
            size: 16,
            channels: Channels::Rgb,
            fundus_crop: false,
            augment: Augment {
                random_resized_crop: crop,
                ..Augment::default()
            },
            normalize: None,
        };
        let got = Pipeline::new(cfg.clone(), 5).apply(img.clone(), 2, 9);
        let keep = TransformConfig {
            channels: Channels::Keep,
            ..cfg
        };
        let want = Pipeline::new(keep, 5).apply(img.to_rgb(), 2, 9);
        assert_eq!((got.channels, got.height, got.width), (3, 16, 16));
        assert!(
            got.data
                .iter()
                .zip(&want.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "crop {crop:?}"
        );
    }
}
