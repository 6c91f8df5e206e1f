//! Data shared by the training tests.

use std::sync::Arc;

use medret_data::{Dataset, Format, ImageSource, Record, Split};

/// Grey 64x64 images: smooth noise, and for positives a bright disc (the "lesion", label
/// `Mass`) at a random place; the rest are `No Finding`. With `kinds == 3`, every third
/// image instead has a bright horizontal bar (`Effusion`), so retrieval has three classes.
/// Returns the dataset and the disc centres.
#[allow(dead_code)]
pub fn blob_dataset(n: usize, kinds: usize) -> (Dataset, Vec<Option<(f32, f32)>>) {
    let size = 64usize;
    let mut state = 2024u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut images: Vec<Vec<u8>> = Vec::new();
    let mut centres = Vec::new();
    for i in 0..n {
        let positive = i % kinds == 0;
        let bar = kinds == 3 && i % 3 == 1;
        let bar_y = if bar { 8.0 + rnd() * 48.0 } else { 0.0 };
        let centre = positive.then(|| (10.0 + rnd() * 44.0, 10.0 + rnd() * 44.0));
        let (fx, fy, ph) = (rnd() * 0.2, rnd() * 0.2, rnd() * 6.0);
        let mut px = vec![0u8; size * size];
        for y in 0..size {
            for x in 0..size {
                let mut v = 90.0
                    + 25.0 * ((x as f32 * fx + ph).sin() + (y as f32 * fy).cos())
                    + 20.0 * rnd();
                if let Some((cx, cy)) = centre {
                    let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                    if d2 < 25.0 {
                        v += 90.0;
                    }
                }
                if bar && (y as f32 - bar_y).abs() < 2.5 && x > 8 && x < 56 {
                    v += 90.0;
                }
                px[y * size + x] = v.clamp(0.0, 255.0) as u8;
            }
        }
        images.push(px);
        centres.push(centre);
    }
    // One array holding every image, as a MedMNIST file does.
    let all: Arc<[u8]> = Arc::from(images.concat());
    let mut records = Vec::new();
    for (i, centre) in centres.iter().enumerate() {
        let positive = centre.is_some();
        let bar = kinds == 3 && i % 3 == 1;
        let mut r = Record::new(
            format!("blob{i}"),
            ImageSource::Array {
                file: "blobs".into(),
                key: "images".into(),
                index: i,
                height: size,
                width: size,
                channels: 1,
                pixels: all.clone(),
            },
        );
        r.labels = vec![
            if positive {
                "Mass"
            } else if bar {
                "Effusion"
            } else {
                "No Finding"
            }
            .to_string(),
        ];
        r.patient_id = format!("p{i}");
        r.split = Some(if i < n * 3 / 4 {
            Split::Train
        } else {
            Split::Test
        });
        records.push(r);
    }
    let ds = Dataset {
        format: Format::Manifest,
        root: "blobs".into(),
        label_names: if kinds == 3 {
            vec!["Effusion".into(), "Mass".into(), "No Finding".into()]
        } else {
            vec!["Mass".into(), "No Finding".into()]
        },
        records,
        skipped: Vec::new(),
    };
    (ds, centres)
}
