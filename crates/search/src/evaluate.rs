//! `medret eval`: a trained model scored on a dataset's query split against its database
//! split, with the reference levels, optional model-free baselines on the same splits,
//! timings, the saliency localisation and a gallery, as `report.json` and a
//! self-contained `report.html`.

use std::path::Path;
use std::time::Instant;

use medret_data::{Record, Split};
use medret_eval::codes::{cosine, pack_bytes};
use medret_eval::expansion::{Expansion, alpha_expand};
use medret_eval::html::{GalleryRow, Page, Thumb};
use medret_eval::ranking::{
    Ranked, rank_hamming, rank_hamming_refined, rank_similarity, rerank_by_relevance_probability,
};
use medret_eval::report::{Sampling, Scores, score};
use medret_eval::{CodeHealth, Relevance, Truth, code_health};
use medret_models::encoder::Encoder;
use medret_models::model_card::{Method, Output};
use serde::Serialize;

use crate::error::{Result, SearchError};
use crate::explain::{overlay_image, saliency_localisation};

/// What `medret eval` was asked.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOptions {
    pub query_split: Split,
    pub database_split: Split,
    pub ks: Vec<usize>,
    pub baselines: bool,
    /// Queries shown in the gallery, each with its top 5.
    pub gallery: usize,
    pub sampling: Sampling,
    pub batch: usize,
    /// A C2L backbone (`medret pretrain c2l`'s `backbone.safetensors`): with
    /// `baselines`, LSH and ITQ over its pooled features too.
    pub c2l: Option<std::path::PathBuf>,
    /// αQE and DBA on the continuous vectors before ranking (off by default).
    pub expansion: Expansion,
    /// Re-rank by the probability that the query shares a case's label, the code ranking
    /// within equal probabilities. Off by default.
    pub relevance_first: Option<RelevanceFrom>,
    /// Test-time augmentation: each image's relaxed code or descriptor averaged with its
    /// left-right mirror's. Off by default.
    pub flip_tta: FlipTta,
}

/// Which images [`EvalOptions::flip_tta`] averages with their mirrors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlipTta {
    #[default]
    Off,
    /// The queries only, against a database encoded plainly: measures whether the
    /// query's side alone would do (it did not; hence `index build --flip-tta`).
    Queries,
    /// Queries and database alike.
    Both,
}

/// Where relevance-first ranking takes the query's class probabilities from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RelevanceFrom {
    /// The model's own classifier (the chest hash head).
    Classifier,
    /// The labels of the query's nearest database cases by the code ranking, smoothed
    /// towards the database's label frequencies: any model, classifier or not.
    Neighbours,
}

const REL_RULE: &str = "cases ranked by the probability that the query shares one of their labels (1 - prod(1 - p)), code ranking within equal probabilities";

/// Neighbours that vote, and the weight (in neighbours) of the database prior.
const VOTERS: usize = 10;
const PRIOR_WEIGHT: f64 = 2.0;

/// The share of database cases carrying each class: the prior of
/// [`neighbour_probabilities`], computed once per database.
fn label_prior(db: &[Vec<u32>], classes: usize) -> Vec<f64> {
    let mut prior = vec![0f64; classes];
    for l in db {
        for &c in l {
            if (c as usize) < classes {
                prior[c as usize] += 1.0 / db.len() as f64;
            }
        }
    }
    prior
}

/// The query's class probabilities from its ranking: the share of its first [`VOTERS`]
/// cases carrying each class, smoothed with [`PRIOR_WEIGHT`] pseudo-cases spread as
/// `prior` (the database's classes, [`label_prior`]), so a query with uninformative
/// neighbours falls back to the always-majority order.
fn neighbour_probabilities(ranking: &[Ranked], db: &[Vec<u32>], prior: &[f64]) -> Vec<f32> {
    let classes = prior.len();
    let mut votes = vec![0f64; classes];
    let n = ranking.len().min(VOTERS);
    for r in &ranking[..n] {
        for &c in &db[r.index] {
            if (c as usize) < classes {
                votes[c as usize] += 1.0;
            }
        }
    }
    votes
        .iter()
        .zip(prior)
        .map(|(v, p)| ((v + PRIOR_WEIGHT * p) / (n as f64 + PRIOR_WEIGHT)) as f32)
        .collect()
}

/// The report, as written to `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub protocol: serde_json::Value,
    /// `{"map@10": ..., "p@10": ..., "ndcg@10": ..., ...}`.
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub scores: Scores,
    pub baselines: std::collections::BTreeMap<String, Scores>,
    pub saliency_localisation: Option<crate::explain::SaliencyLocalisation>,
    pub timing: serde_json::Value,
    pub model_card: serde_json::Value,
    /// What could not be scored, and why.
    pub notes: Vec<String>,
    /// Each metric's value per query, in query order: what paired comparisons between
    /// models (`medret ablate`) resample.
    pub per_query: std::collections::BTreeMap<String, Vec<f64>>,
    /// Codes only: how the database's codes use their bits.
    pub code_health: Option<CodeHealth>,
    /// Codes only: the metrics with Hamming ranking alone, ties by database index.
    pub hamming_only_metrics: Option<std::collections::BTreeMap<String, f64>>,
    /// Each baseline's metric values per query, in query order (as `per_query`): what
    /// paired differences between the model and a baseline resample.
    pub baseline_per_query:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<f64>>>,
    /// Descriptors only: the same descriptors binarised and ranked by Hamming distance
    /// alone (ties by database index): how much of their ranking each binarisation keeps.
    pub binarised:
        Option<std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>>,
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::Train => "train",
        Split::Test => "test",
        Split::Val => "validation part of the train",
    }
}

/// Relevance and ground truth from the model's method: shared label for the chest
/// model (label indices in the card's class order), same grade for the fundus model.
fn truth_of(encoder: &Encoder, r: &Record) -> Option<Truth> {
    match encoder.card.method {
        Method::FundusMetric(_) => r.grade.map(Truth::grade),
        Method::CxrFusionHash(_) => {
            let l: Vec<u32> = r
                .labels
                .iter()
                .filter_map(|x| encoder.card.class_names.iter().position(|c| c == x))
                .map(|i| i as u32)
                .collect();
            (!l.is_empty()).then(|| Truth::labels(l))
        }
    }
}

fn rule_of(encoder: &Encoder) -> Relevance {
    match encoder.card.method {
        Method::FundusMetric(_) => Relevance::SameGrade,
        Method::CxrFusionHash(_) => Relevance::SharesLabel,
    }
}

enum Vectors {
    /// Packed codes and the relaxed codes they came from.
    Codes(Vec<Vec<u64>>, Vec<Vec<f32>>),
    Floats(Vec<Vec<f32>>),
}

/// Every query's ranking. Codes rank by Hamming distance with ties broken by the relaxed
/// codes (the archive's two-stage rule), or, with `hamming_only`, ties by index.
fn rank_all(q: &Vectors, d: &Vectors, hamming_only: bool) -> Vec<Vec<Ranked>> {
    rank_all_skip(q, d, hamming_only, false)
}

/// [`rank_all`]; with `within` (queries and database are one set), each leaves itself out.
fn rank_all_skip(q: &Vectors, d: &Vectors, hamming_only: bool, within: bool) -> Vec<Vec<Ranked>> {
    use rayon::prelude::*;
    let skip = |i: usize| within.then_some(i);
    match (q, d) {
        (Vectors::Codes(q, _), Vectors::Codes(d, _)) if hamming_only => q
            .par_iter()
            .enumerate()
            .map(|(i, c)| rank_hamming(c, d, skip(i)))
            .collect(),
        (Vectors::Codes(q, qr), Vectors::Codes(d, dr)) => q
            .par_iter()
            .zip(qr)
            .enumerate()
            .map(|(i, (c, r))| rank_hamming_refined(c, d, r, dr, skip(i)))
            .collect(),
        (Vectors::Floats(q), Vectors::Floats(d)) => q
            .par_iter()
            .enumerate()
            .map(|(i, v)| {
                let sims: Vec<f32> = d.iter().map(|x| cosine(v, x)).collect();
                rank_similarity(&sims, skip(i))
            })
            .collect(),
        _ => unreachable!("queries and database come from one model"),
    }
}

/// A truth's classes for [`rerank_by_relevance_probability`]: its labels, or its grade.
fn truth_classes(t: &Truth) -> Vec<u32> {
    match t.grade {
        Some(g) => vec![g as u32],
        None => t.labels.clone(),
    }
}

/// Each query's class probabilities, as the model was trained to give them: softmax over
/// the classes for one label an image (and DR grades), one sigmoid a class for several.
fn class_probabilities(
    encoder: &Encoder,
    encoded: &[medret_models::encoder::Encoded],
) -> Result<Vec<Vec<f32>>> {
    let single = match &encoder.card.method {
        Method::FundusMetric(_) => true,
        Method::CxrFusionHash(_) => encoder.card.training["task"]["mode"] == "single_label",
    };
    encoded
        .iter()
        .map(|e| {
            if e.probabilities.is_empty() {
                return Err(SearchError::Invalid(
                    "this model has no classifier: relevance-first ranking needs class probabilities".into(),
                ));
            }
            Ok(match (&encoder.card.method, single) {
                // The hash head reports sigmoids; a softmax-trained head's logits are
                // recovered from them.
                (Method::CxrFusionHash(_), true) => {
                    let z: Vec<f32> = e
                        .probabilities
                        .iter()
                        .map(|&p| {
                            let p = p.clamp(1e-7, 1.0 - 1e-7);
                            (p / (1.0 - p)).ln()
                        })
                        .collect();
                    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let ex: Vec<f32> = z.iter().map(|&v| (v - m).exp()).collect();
                    let s: f32 = ex.iter().sum();
                    ex.iter().map(|v| v / s).collect()
                }
                _ => e.probabilities.clone(),
            })
        })
        .collect()
}

/// Every record encoded; with `flip`, the mean of the image's and its mirror's
/// outputs, the stored vector (code or descriptor) remade from that mean.
fn encode(
    encoder: &Encoder,
    records: &[Record],
    opts: &EvalOptions,
    flip: bool,
) -> Result<Vec<medret_models::encoder::Encoded>> {
    Ok(encoder.encode_records_with(records, opts.batch, flip, &|_| {})?)
}

impl Vectors {
    fn continuous(&self) -> &[Vec<f32>] {
        match self {
            Vectors::Codes(_, r) | Vectors::Floats(r) => r,
        }
    }

    /// The same kind of vectors from new continuous ones: a code is the sign of its
    /// relaxed code, as the model's own binarisation.
    fn like(&self, v: Vec<Vec<f32>>) -> Vectors {
        match self {
            Vectors::Codes(..) => Vectors::Codes(
                v.iter()
                    .map(|r| pack_bytes(&medret_models::cxr_hash::hash_head::pack_code_bytes(r)))
                    .collect(),
                v,
            ),
            Vectors::Floats(_) => Vectors::Floats(v),
        }
    }
}

/// `targets` expanded by αQE with their `n` nearest among `against` (themselves left out
/// when `within`), neighbours ranked as the queries are.
fn expand(targets: &Vectors, against: &Vectors, n: usize, alpha: f32, within: bool) -> Vectors {
    let lists = rank_all_skip(targets, against, false, within);
    let (t, a) = (targets.continuous(), against.continuous());
    let out = t
        .iter()
        .zip(&lists)
        .map(|(v, l)| alpha_expand(v, l.iter().map(|x| a[x.index].as_slice()), n, alpha))
        .collect();
    targets.like(out)
}

/// DBA on the database (each vector with its nearest others), then αQE on the queries
/// against the augmented database.
fn apply_expansion(q: Vectors, d: Vectors, e: Expansion) -> (Vectors, Vectors) {
    let d = if e.dba > 0 {
        expand(&d, &d, e.dba, e.alpha, true)
    } else {
        d
    };
    let q = if e.qe > 0 {
        expand(&q, &d, e.qe, e.alpha, false)
    } else {
        q
    };
    (q, d)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

fn png(img: &image::RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| SearchError::Invalid(format!("cannot encode a thumbnail: {e}")))?;
    Ok(out.into_inner())
}

/// A record's overlay thumbnail (the model's saliency and crop box), shrunk to 192 px.
fn thumbnail(
    encoder: &Encoder,
    r: &Record,
    caption: String,
    relevant: Option<bool>,
) -> Result<Thumb> {
    let img = medret_data::decode::load_image(&r.source)?;
    let shown = encoder.display_image(img.clone());
    let e = encoder.encode_images(vec![img], true).remove(0);
    let big = overlay_image(
        &shown,
        e.saliency.as_ref().map(|s| s.data.as_slice()),
        e.crop.as_ref(),
    )?;
    let small = image::imageops::resize(&big, 192, 192, image::imageops::FilterType::Triangle);
    Ok(Thumb {
        png: png(&small)?,
        caption,
        relevant,
    })
}

fn describe(r: &Record) -> String {
    match r.grade {
        Some(g) => format!("grade {g}"),
        None if r.labels.is_empty() => "unlabelled".into(),
        None => r.labels.join(", "),
    }
}

/// A baseline's name, query codes and database codes.
type BaselineCodes = (String, Vec<Vec<u64>>, Vec<Vec<u64>>);

/// Model-free baselines on the same splits, at `bits` bits (the model's code length, 64
/// for a descriptor model): LSH and ITQ over 32 x 32 grey pixels, over the pooled
/// features of a randomly initialised backbone of the model's architecture, and over a
/// C2L backbone's when one is given. ITQ needs at least `bits` feature dimensions; where
/// there are fewer it is left out and said so in `notes`.
fn baselines(
    encoder: &Encoder,
    queries: &[Record],
    database: &[Record],
    bits: usize,
    opts: &EvalOptions,
    device: &burn::prelude::Device,
    notes: &mut Vec<String>,
) -> Result<Vec<BaselineCodes>> {
    use medret_data::transform::{Pipeline, grey_thumbnails};
    let seed = opts.sampling.seed;
    let load = |records: &[Record]| grey_thumbnails(records, 32, seed);
    let mut out = Vec::new();
    let mut both = |name: &str, fd: &[Vec<f32>], fq: &[Vec<f32>], notes: &mut Vec<String>| {
        let lsh = medret_eval::baseline::lsh_codes;
        out.push((
            format!("{name} LSH"),
            lsh(fd, fq, bits, seed),
            lsh(fd, fd, bits, seed),
        ));
        // One fit on the database, then both sides coded with it.
        let all: Vec<Vec<f32>> = fd.iter().chain(fq).cloned().collect();
        match medret_eval::baseline::itq_codes(fd, &all, bits, seed, 50) {
            Some((mut codes, _)) => {
                let q = codes.split_off(fd.len());
                out.push((format!("{name} ITQ"), q, codes));
            }
            None => notes.push(format!(
                "{name} ITQ left out: {} feature dimensions for {bits} bits",
                fd.first().map_or(0, Vec::len)
            )),
        }
    };
    let (pd, pq) = (load(database)?, load(queries)?);
    both("raw-pixel", &pd, &pq, notes);
    let cfg = match &encoder.card.method {
        Method::CxrFusionHash(c) => c.local_config(),
        Method::FundusMetric(c) => c.backbone.clone(),
    };
    let pipeline = Pipeline::new(encoder.card.preprocessing.clone(), seed);
    let feats = |net: &medret_models::DenseNet, records: &[Record]| {
        medret_models::features::pooled_features(net, records, &pipeline, 32, device, &|| {})
    };
    device.seed(seed);
    let random = cfg.init(device);
    let (fd, fq) = (feats(&random, database)?, feats(&random, queries)?);
    both("random-init feature", &fd, &fq, notes);
    if let Some(path) = &opts.c2l {
        let mut net = cfg.init(device);
        medret_models::weights::load_torchvision(&mut net, &cfg, path).map_err(|e| {
            SearchError::File {
                path: path.clone(),
                message: format!("not a C2L backbone of this model's architecture: {e}"),
            }
        })?;
        let (fd, fq) = (feats(&net, database)?, feats(&net, queries)?);
        both("C2L feature", &fd, &fq, notes);
    }
    Ok(out)
}

/// Scores `encoder` on `records`; `progress` gets a message per stage.
pub fn evaluate(
    encoder: &Encoder,
    records: &[Record],
    data_name: &str,
    opts: &EvalOptions,
    device: &burn::prelude::Device,
    progress: &dyn Fn(&str),
) -> Result<(EvalReport, Vec<GalleryRow>)> {
    if opts.ks.is_empty() || opts.ks.contains(&0) {
        return Err(SearchError::Invalid(
            "-k needs positive depths, e.g. 10,50,100".into(),
        ));
    }
    // `Val`: the validation part of the training split that the model was selected on
    // (its own seed and fraction), against the rest of the training split; for choosing
    // retrieval options without looking at the test split.
    let parts = match opts.query_split {
        Split::Val => {
            if opts.database_split != Split::Train {
                return Err(SearchError::Invalid(
                    "validation queries are ranked against the rest of the train split: use --database-split train".into(),
                ));
            }
            let fraction = encoder.card.training["task"]["val_fraction"]
                .as_f64()
                .filter(|f| *f > 0.0)
                .ok_or_else(|| {
                    SearchError::Invalid(
                        "the model card records no validation fraction: this model was trained without a validation part".into(),
                    )
                })?;
            Some(medret_data::record::split_train_val(
                records,
                fraction,
                encoder.card.seed,
            ))
        }
        _ => None,
    };
    let pick = |split: Split| -> (Vec<Record>, Vec<Truth>, usize) {
        let (mut rs, mut ts, mut skipped) = (Vec::new(), Vec::new(), 0);
        let from: Vec<&Record> = match (&parts, split) {
            (Some((train, _)), Split::Train) => train.iter().collect(),
            (Some((_, val)), Split::Val) => val.iter().collect(),
            _ => records.iter().filter(|r| r.split == Some(split)).collect(),
        };
        for r in from {
            match truth_of(encoder, r) {
                Some(t) => {
                    rs.push(r.clone());
                    ts.push(t);
                }
                None => skipped += 1,
            }
        }
        (rs, ts, skipped)
    };
    let (queries, qt, q_skipped) = pick(opts.query_split);
    let (database, dt, d_skipped) = pick(opts.database_split);
    for (name, split, n, skipped) in [
        ("query", opts.query_split, queries.len(), q_skipped),
        ("database", opts.database_split, database.len(), d_skipped),
    ] {
        if n == 0 {
            return Err(SearchError::Invalid(format!(
                "{data_name}: the {name} split ({}) holds no usable image ({skipped} without a label or grade the model knows)",
                split_name(split)
            )));
        }
    }
    let rule = rule_of(encoder);
    let bits = match encoder.card.output {
        Output::Codes { bits } => Some(bits),
        Output::Descriptors { .. } => None,
    };
    progress("encoding the database");
    let t = Instant::now();
    let dv = encode(encoder, &database, opts, opts.flip_tta == FlipTta::Both)?;
    let encode_s = t.elapsed().as_secs_f64();
    progress("encoding the queries");
    let qv = encode(encoder, &queries, opts, opts.flip_tta != FlipTta::Off)?;
    let as_vectors = |v: Vec<medret_models::encoder::Encoded>| match bits {
        Some(_) => Vectors::Codes(
            v.iter().map(|e| pack_bytes(&e.vector)).collect(),
            v.into_iter().map(|e| e.raw).collect(),
        ),
        None => Vectors::Floats(
            v.iter()
                .map(|e| {
                    e.vector
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                })
                .collect(),
        ),
    };
    let query_probabilities = match opts.relevance_first {
        Some(RelevanceFrom::Classifier) => Some(class_probabilities(encoder, &qv)?),
        _ => None,
    };
    let (qvec, dvec) = apply_expansion(as_vectors(qv), as_vectors(dv), opts.expansion);

    // Query latency through the index a store would use, top max(k).
    let kmax = *opts.ks.iter().max().unwrap_or(&10);
    let mut lat = Vec::with_capacity(queries.len());
    match (&dvec, &qvec) {
        (Vectors::Codes(d, _), Vectors::Codes(q, _)) => {
            let mut index = medret_index::HammingIndex::new(bits.unwrap_or(64))
                .map_err(|e| SearchError::Invalid(e.to_string()))?;
            for (i, c) in d.iter().enumerate() {
                index
                    .add(i as u64, c)
                    .map_err(|e| SearchError::Invalid(e.to_string()))?;
            }
            for c in q {
                let t = Instant::now();
                let _ = index.search(c, kmax);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        (Vectors::Floats(d), Vectors::Floats(q)) => {
            let dim = d[0].len();
            let mut index = medret_index::FloatIndex::new(dim, medret_index::Metric::Cosine)
                .map_err(|e| SearchError::Invalid(e.to_string()))?;
            for (i, v) in d.iter().enumerate() {
                index
                    .add(i as u64, v)
                    .map_err(|e| SearchError::Invalid(e.to_string()))?;
            }
            for v in q {
                let t = Instant::now();
                let _ = index.search(v, kmax);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        _ => unreachable!("queries and database come from one model"),
    }
    lat.sort_by(f64::total_cmp);

    progress("scoring");
    let mut notes = Vec::new();
    let mut lists = rank_all(&qvec, &dvec, false);
    let db_labels: Vec<Vec<u32>> = dt.iter().map(truth_classes).collect();
    let prior = label_prior(
        &db_labels,
        match rule {
            Relevance::SameGrade => 5,
            _ => encoder.card.class_names.len(),
        },
    );
    if opts.relevance_first.is_some() {
        let p = match query_probabilities {
            Some(p) => p,
            None => lists
                .iter()
                .map(|l| neighbour_probabilities(l, &db_labels, &prior))
                .collect(),
        };
        lists = lists
            .iter()
            .zip(p)
            .map(|(l, p)| rerank_by_relevance_probability(l, &p, &db_labels))
            .collect();
    }
    let health = match &dvec {
        Vectors::Codes(d, _) => Some(code_health(d, bits.unwrap_or(64))),
        Vectors::Floats(_) => None,
    };
    let class_names: Vec<String> = match rule {
        Relevance::SameGrade => (0..5).map(|g| format!("grade {g}")).collect(),
        _ => encoder.card.class_names.clone(),
    };
    let score_lists = |lists: &[Vec<Ranked>], bits: Option<usize>| {
        score(
            lists,
            &qt,
            &dt,
            rule,
            &opts.ks,
            bits,
            &class_names,
            opts.sampling,
        )
    };
    let (scores, per_query) = score_lists(&lists, bits);

    // The same codes ranked by Hamming distance alone, ties by index: what the relaxed
    // codes add to the ranking.
    let hamming_only = match bits {
        Some(_) => {
            let plain = rank_all(&qvec, &dvec, true);
            Some(score_lists(&plain, bits).0.metrics)
        }
        None => None,
    };
    if let Some(h) = health.as_ref().filter(|h| !h.is_healthy()) {
        notes.push(format!(
            "the database's codes have collapsed ({}): Hamming ranking is mostly ties",
            h.summary()
        ));
    }

    let mut base = std::collections::BTreeMap::new();
    let mut base_per_query = std::collections::BTreeMap::new();
    if opts.baselines {
        progress("baselines");
        let b = bits.unwrap_or(64);
        for (name, q, d) in baselines(encoder, &queries, &database, b, opts, device, &mut notes)? {
            let lists: Vec<Vec<Ranked>> = q.iter().map(|c| rank_hamming(c, &d, None)).collect();
            // Relevance-first ranking helps any ranking that knows the database's labels,
            // so the model's relevance-first figure is compared with the baselines ranked
            // the same way (with their neighbours' labels: they have no classifier).
            if opts.relevance_first.is_some() {
                let rf: Vec<Vec<Ranked>> = lists
                    .iter()
                    .map(|l| {
                        let p = neighbour_probabilities(l, &db_labels, &prior);
                        rerank_by_relevance_probability(l, &p, &db_labels)
                    })
                    .collect();
                let (scores, per_query) = score_lists(&rf, Some(b));
                base.insert(format!("{name}, relevance-first"), scores);
                base_per_query.insert(format!("{name}, relevance-first"), per_query);
            }
            let (scores, per_query) = score_lists(&lists, Some(b));
            base.insert(name.clone(), scores);
            base_per_query.insert(name, per_query);
        }
    }

    let binarised = match (&qvec, &dvec) {
        (Vectors::Floats(q), Vectors::Floats(d)) => {
            progress("binarised descriptors");
            Some(
                binarisations(encoder, q, d, opts.sampling.seed, &mut notes)
                    .into_iter()
                    .map(|(name, b, qc, dc)| {
                        let lists: Vec<Vec<Ranked>> =
                            qc.iter().map(|c| rank_hamming(c, &dc, None)).collect();
                        (name, score_lists(&lists, Some(b)).0.metrics)
                    })
                    .collect(),
            )
        }
        _ => None,
    };

    progress("saliency localisation and gallery");
    let with_masks: Vec<Record> = queries
        .iter()
        .filter(|r| !r.masks.is_empty() || !r.boxes.is_empty())
        .cloned()
        .collect();
    let localisation = if with_masks.is_empty() {
        notes.push("no query image has a lesion mask or box: no saliency localisation".into());
        None
    } else {
        match saliency_localisation(encoder, &with_masks) {
            Ok(s) => Some(s),
            // An untrained or collapsed model can give flat maps everywhere: say so.
            Err(SearchError::Invalid(why)) => {
                notes.push(format!("saliency localisation not scored: {why}"));
                None
            }
            Err(e) => return Err(e),
        }
    };
    let mut gallery = Vec::new();
    for (qi, q) in queries.iter().enumerate().take(opts.gallery) {
        let query = thumbnail(encoder, q, format!("query: {}", describe(q)), None)?;
        let mut results = Vec::new();
        for x in lists[qi].iter().take(5) {
            let r = &database[x.index];
            let relevant = rule.is_relevant(&qt[qi], &dt[x.index]);
            // Hamming distances are whole bits; cosine distances need decimals.
            let caption = match bits {
                Some(_) => format!("{} (Hamming {})", describe(r), x.distance as u32),
                None => format!("{} (1 - cos {:.3})", describe(r), x.distance),
            };
            results.push(thumbnail(encoder, r, caption, Some(relevant))?);
        }
        gallery.push(GalleryRow { query, results });
    }

    let protocol = serde_json::json!({
        "data": data_name,
        "queries": format!("{} split, {} images ({} skipped: no label or grade the model knows)", split_name(opts.query_split), queries.len(), q_skipped),
        "database": format!("{} split, {} images ({} skipped)", split_name(opts.database_split), database.len(), d_skipped),
        "relevance": rule.describe(),
        "distance": if bits.is_some() { "Hamming" } else { "1 - cosine" },
        "tie_rule": if bits.is_some() { medret_eval::evaluate::REFINED_TIE_RULE } else { "ascending distance, then ascending database index" },
        "code_health": health.as_ref().map(|h| h.summary()),
        "hamming_only_ties_by_index": hamming_only.as_ref().map(|m| m.iter().filter(|(k, _)| k.starts_with("map@")).map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ")),
        "ndcg_gain": match rule { Relevance::SameGrade => "max(0, 2 - |g_q - g_d|)", _ => "1 if relevant" },
        "expansion": opts.expansion.describe(),
        "flip_tta": opts.flip_tta,
        "relevance_first": opts.relevance_first.map(|r| match r {
            RelevanceFrom::Classifier => format!("{REL_RULE}; query probabilities from the model's classifier"),
            RelevanceFrom::Neighbours => format!("{REL_RULE}; query probabilities from its first {VOTERS} cases' labels with {PRIOR_WEIGHT} pseudo-cases of the database's label frequencies"),
        }),
        "ks": opts.ks,
        "intervals": format!("percentile bootstrap over queries, {} resamples, seed {}", opts.sampling.resamples, opts.sampling.seed),
        "chance": format!("mean of {} seeded random rankings", opts.sampling.chance_rankings),
    });
    let timing = serde_json::json!({
        "encode_images_per_second": database.len() as f64 / encode_s.max(1e-9),
        "query_latency_ms_p50": percentile(&lat, 0.5),
        "query_latency_ms_p99": percentile(&lat, 0.99),
        "latency_index": if bits.is_some() { "exact Hamming scan" } else { "exact cosine scan" },
        "database": database.len(),
        "top": kmax,
        "threads": rayon::current_num_threads(),
    });
    let report = EvalReport {
        protocol,
        metrics: scores.metrics.clone(),
        scores,
        baselines: base,
        saliency_localisation: localisation,
        timing,
        model_card: card_summary(&encoder.card)?,
        notes,
        per_query,
        code_health: health,
        hamming_only_metrics: hamming_only,
        baseline_per_query: base_per_query,
        binarised,
    };
    Ok((report, gallery))
}

/// The card as the report shows it: a learned binarisation's matrix (tens of thousands
/// of numbers) is left out, its description kept.
fn card_summary(card: &medret_models::model_card::ModelCard) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(card).map_err(|e| SearchError::Invalid(e.to_string()))?;
    if let Some(l) = v["method"]
        .get_mut("binary_learned")
        .and_then(|l| l.as_object_mut())
    {
        l.remove("mean");
        l.remove("matrix");
    }
    Ok(v)
}

/// One binarisation's name, bits, query codes and database codes.
type Binarised = (String, usize, Vec<Vec<u64>>, Vec<Vec<u64>>);

/// Query and database codes of the descriptors under each binarisation, at the model's
/// `binary_bits` (64 without): SimHash (mean-centred, the database's mean), ITQ fitted on
/// the database, and the model's own codes when it has them. Returns (name, bits, query
/// codes, database codes).
fn binarisations(
    encoder: &Encoder,
    q: &[Vec<f32>],
    d: &[Vec<f32>],
    seed: u64,
    notes: &mut Vec<String>,
) -> Vec<Binarised> {
    use medret_eval::baseline::{Itq, lsh_codes};
    let bits = encoder.binary_bits().unwrap_or(64);
    let mut out = vec![(
        format!("SimHash {bits} bits"),
        bits,
        lsh_codes(d, q, bits, seed),
        lsh_codes(d, d, bits, seed),
    )];
    match Itq::fit(d, bits, seed, 50) {
        Some(itq) => out.push((
            format!("ITQ {bits} bits, fitted on the database"),
            bits,
            q.iter().map(|v| itq.code(v)).collect(),
            d.iter().map(|v| itq.code(v)).collect(),
        )),
        None => notes.push(format!(
            "ITQ of the descriptors left out: {bits} bits for {} database images of {} dimensions",
            d.len(),
            d.first().map_or(0, Vec::len)
        )),
    }
    if let Some(b) = encoder.binary_bits() {
        let codes = |v: &[Vec<f32>]| -> Vec<Vec<u64>> {
            v.iter()
                .filter_map(|x| encoder.binarise(x))
                .map(|c| pack_bytes(&c))
                .collect()
        };
        let how = match &encoder.card.method {
            Method::FundusMetric(c) => c
                .binary_learned
                .as_ref()
                .map_or("random projection".to_string(), |l| l.method.clone()),
            Method::CxrFusionHash(_) => String::new(),
        };
        out.push((
            format!("the model's codes, {b} bits ({how})"),
            b,
            codes(q),
            codes(d),
        ));
    }
    out
}

/// Writes `report.json` and `report.html` into `dir`; returns their paths.
pub fn write_report(
    dir: &Path,
    report: &EvalReport,
    gallery: Vec<GalleryRow>,
    title: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let err = |p: &Path, e: &dyn std::fmt::Display| SearchError::File {
        path: p.to_path_buf(),
        message: format!("cannot write: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, &e))?;
    let json = dir.join("report.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| err(&json, &e))?;
    // Written last and renamed into place, so a report.json that exists is complete:
    // `medret ablate` takes its presence as "this run is done".
    let partial = dir.join("report.json.partial");
    std::fs::write(&partial, text).map_err(|e| err(&partial, &e))?;
    let rows = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        let s = match v {
                            serde_json::Value::String(s) => s.clone(),
                            serde_json::Value::Number(n) => match n.as_f64() {
                                Some(x) if n.is_f64() => format!("{x:.3}"),
                                _ => n.to_string(),
                            },
                            other => other.to_string(),
                        };
                        (k.clone(), s)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let localisation = report
        .saliency_localisation
        .as_ref()
        .map(|s| {
            vec![
                (
                    "images with lesion masks or boxes".into(),
                    s.images.to_string(),
                ),
                (
                    "pointing game (maximum on a lesion)".into(),
                    format!("{:.1}%", 100.0 * s.pointing_hit_rate),
                ),
                (
                    "saliency mass on lesions".into(),
                    format!("{:.1}%", 100.0 * s.energy_in_lesions),
                ),
                (
                    "lesion area share (a random map's expectation of both)".into(),
                    format!("{:.1}%", 100.0 * s.lesion_area_share),
                ),
            ]
        })
        .unwrap_or_default();
    let mut localisation = localisation;
    for (name, m) in report.binarised.iter().flatten() {
        let f = |k: &str| m.get(k).map_or("-".into(), |v| format!("{v:.3}"));
        localisation.push((
            format!("descriptors binarised: {name}, Hamming alone"),
            format!("mAP@100 {}, P@10 {}", f("map@100"), f("p@10")),
        ));
    }
    for n in &report.notes {
        localisation.push(("note".into(), n.clone()));
    }
    let page = Page {
        title: title.to_string(),
        protocol: rows(&report.protocol),
        scores: &report.scores,
        baselines: report
            .baselines
            .iter()
            .map(|(k, v)| (k.clone(), v))
            .collect(),
        localisation,
        timing: rows(&report.timing),
        gallery,
        card: report.model_card.clone(),
    };
    let html = dir.join("report.html");
    let body = medret_eval::html::render(&page).map_err(|e| err(&html, &e))?;
    std::fs::write(&html, body).map_err(|e| err(&html, &e))?;
    std::fs::rename(&partial, &json).map_err(|e| err(&json, &e))?;
    Ok((json, html))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_probabilities_by_hand() {
        // Database labels {0}, {1}, {0}, {0, 1}; ranking 3, 1, 0, 2 (four voters, fewer
        // than VOTERS). Votes: class 0 from cases 3, 0, 2 = 3; class 1 from 3, 1 = 2.
        // Prior: class 0 in 3 of 4 cases, class 1 in 2 of 4. With PRIOR_WEIGHT 2:
        // p0 = (3 + 2 * 0.75) / 6 = 0.75, p1 = (2 + 2 * 0.5) / 6 = 0.5.
        assert_eq!(PRIOR_WEIGHT, 2.0);
        let db = vec![vec![0], vec![1], vec![0], vec![0, 1]];
        let ranking: Vec<Ranked> = [3, 1, 0, 2]
            .iter()
            .map(|&index| Ranked {
                index,
                distance: 0.0,
            })
            .collect();
        let p = neighbour_probabilities(&ranking, &db, &label_prior(&db, 2));
        assert!(
            (p[0] - 0.75).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6,
            "{p:?}"
        );
        // Only the first VOTERS cases vote: 10 of class 1 then 5 of class 0.
        let mut db = vec![vec![1]; 10];
        db.extend(vec![vec![0]; 5]);
        let ranking: Vec<Ranked> = (0..15)
            .map(|index| Ranked {
                index,
                distance: 0.0,
            })
            .collect();
        let p = neighbour_probabilities(&ranking, &db, &label_prior(&db, 2));
        let want1 = (10.0 + 2.0 * 10.0 / 15.0) / 12.0;
        assert!((p[1] as f64 - want1).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn database_augmentation_then_query_expansion() {
        // Database a = (1, 0), b = (0.8, 0.6), c = (0, 1); DBA with one neighbour, alpha 1.
        // a's nearest other is b (cos 0.8): a' = norm((1, 0) + 0.8 (0.8, 0.6)).
        // c's nearest other is b (cos 0.6): c' = norm((0, 1) + 0.6 (0.8, 0.6)).
        let d = Vectors::Floats(vec![vec![1.0, 0.0], vec![0.8, 0.6], vec![0.0, 1.0]]);
        let q = Vectors::Floats(vec![vec![1.0, 0.0]]);
        let e = Expansion {
            qe: 0,
            dba: 1,
            alpha: 1.0,
        };
        let (q2, d2) = apply_expansion(q, d, e);
        let d2 = d2.continuous().to_vec();
        let norm = |x: f64, y: f64| {
            let l = (x * x + y * y).sqrt();
            [x / l, y / l]
        };
        let want_a = norm(1.64, 0.48);
        let want_c = norm(0.48, 1.36);
        for (got, want) in [(&d2[0], want_a), (&d2[2], want_c)] {
            assert!(
                (got[0] as f64 - want[0]).abs() < 1e-6 && (got[1] as f64 - want[1]).abs() < 1e-6,
                "{got:?} {want:?}"
            );
        }
        assert_eq!(q2.continuous()[0], vec![1.0, 0.0], "no αQE asked");
        // Codes: the expanded relaxed codes' signs become the codes.
        let d = Vectors::Codes(vec![vec![0b11]], vec![vec![0.1, 0.9]]);
        let q = Vectors::Codes(vec![vec![0b01]], vec![vec![0.1, -0.01]]);
        let (q2, _) = apply_expansion(
            q,
            d,
            Expansion {
                qe: 1,
                dba: 0,
                alpha: 0.0,
            },
        );
        match q2 {
            Vectors::Codes(c, r) => {
                assert!(r[0][1] > 0.0, "pulled across zero: {r:?}");
                assert_eq!(c[0], vec![0b11]);
            }
            Vectors::Floats(_) => unreachable!(),
        }
    }
}
