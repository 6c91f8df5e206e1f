//! `report.html`: one self-contained page (no network: plots are inline SVG drawn with
//! `plotters`, thumbnails inline PNG) that a person reads: the protocol, the metric table
//! with intervals and reference levels, the precision-recall curves, AP per class, the
//! saliency localisation, timings, a gallery of queries with their top results, and the
//! model card.

use std::fmt::Write;

use base64::Engine;
use plotters::prelude::*;

use crate::report::{PrPoint, Scores};

/// One thumbnail of the gallery.
pub struct Thumb {
    /// PNG bytes (the overlay as the model saw the image).
    pub png: Vec<u8>,
    pub caption: String,
    /// For results: whether it is relevant to the query.
    pub relevant: Option<bool>,
}

/// A query and its top results.
pub struct GalleryRow {
    pub query: Thumb,
    pub results: Vec<Thumb>,
}

/// Everything the page shows. Tables are `(name, value)` rows, already formatted.
pub struct Page<'a> {
    pub title: String,
    pub protocol: Vec<(String, String)>,
    pub scores: &'a Scores,
    /// Named baselines scored on the same splits.
    pub baselines: Vec<(String, &'a Scores)>,
    pub localisation: Vec<(String, String)>,
    pub timing: Vec<(String, String)>,
    pub gallery: Vec<GalleryRow>,
    pub card: serde_json::Value,
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The precision-recall curves as an SVG document.
pub fn pr_svg(curves: &[(String, &[PrPoint])], over: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("precision against recall (points: {over})"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("recall")
            .y_desc("precision")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, pts)) in curves.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.recall, p.precision)),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Lines of `(x, y)` points as an SVG document (e.g. mAP against code length).
pub fn lines_svg(
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<String, String> {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, _) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
    }
    if !x0.is_finite() || x0 == x1 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(x0..x1, 0f64..1f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, p)) in series.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(p.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
            chart
                .draw_series(
                    p.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, colour.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn table(out: &mut String, rows: &[(String, String)]) {
    out.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    out.push_str("</table>");
}

fn thumb(out: &mut String, t: &Thumb) {
    let class = match t.relevant {
        Some(true) => "rel",
        Some(false) => "irr",
        None => "query",
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&t.png);
    let _ = write!(
        out,
        "<figure class=\"{class}\"><img alt=\"{}\" src=\"data:image/png;base64,{b64}\"><figcaption>{}</figcaption></figure>",
        esc(&t.caption),
        esc(&t.caption)
    );
}

/// A compact summary of one evaluation: each metric with its interval beside the best
/// model-free baseline, chance and always-majority, then the PR curve of the model and
/// its baselines (the demo's report page shows one per method).
pub fn headline(
    s: &Scores,
    baselines: &std::collections::BTreeMap<String, Scores>,
) -> Result<String, String> {
    let mut h = String::from(
        "<table><tr><th>metric</th><th>model [95% interval]</th><th>best model-free baseline</th><th>chance</th><th>always-majority</th></tr>",
    );
    for k in s.ordered_metrics() {
        let best = baselines
            .iter()
            .filter_map(|(n, b)| b.metrics.get(k).map(|v| (n, *v)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("-".to_string(), |(n, v)| format!("{v:.3} ({})", esc(n)));
        let [lo, hi] = s.intervals.get(k).copied().unwrap_or([f64::NAN; 2]);
        let _ = write!(
            h,
            "<tr><td>{}</td><td><b>{:.3}</b> [{lo:.3}, {hi:.3}]</td><td>{best}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            esc(k),
            s.metrics[k],
            s.chance.get(k).copied().unwrap_or(f64::NAN),
            s.majority.get(k).copied().unwrap_or(f64::NAN),
        );
    }
    h.push_str("</table>");
    let mut curves: Vec<(String, &[PrPoint])> = vec![("model".to_string(), s.pr_curve.as_slice())];
    for (n, b) in baselines {
        curves.push((n.clone(), b.pr_curve.as_slice()));
    }
    h.push_str(&pr_svg(&curves, &s.pr_over)?);
    Ok(h)
}

/// Renders the page.
pub fn render(p: &Page) -> Result<String, String> {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f4f4f4}}\
figure{{display:inline-block;margin:4px;width:150px;vertical-align:top}}figure img{{width:150px}}\
figcaption{{font-size:11px}}.rel{{border:3px solid #2a2}}.irr{{border:3px solid #c33}}.query{{border:3px solid #36c}}\
.row{{margin-bottom:1em;border-bottom:1px solid #ddd}}pre{{background:#f8f8f8;padding:1em;overflow:auto}}\
</style></head><body><h1>{}</h1>",
        esc(&p.title),
        esc(&p.title)
    );
    o.push_str("<h2>Protocol</h2>");
    table(&mut o, &p.protocol);

    o.push_str("<h2>Retrieval</h2><p>Each figure is the mean over queries with its bootstrap 95% interval; the chance level is a random ranking's, the always-majority level is every query getting the most frequent label's cases first.</p><table><tr><th>metric</th><th>model [95% interval]</th><th>chance</th><th>always-majority</th>");
    for (name, _) in &p.baselines {
        let _ = write!(o, "<th>{}</th>", esc(name));
    }
    o.push_str("</tr>");
    for k in p.scores.ordered_metrics() {
        let v = p.scores.metrics[k];
        let [lo, hi] = p.scores.intervals.get(k).copied().unwrap_or([f64::NAN; 2]);
        let _ = write!(
            o,
            "<tr><td>{}</td><td><b>{v:.4}</b> [{lo:.4}, {hi:.4}]</td><td>{:.4}</td><td>{:.4}</td>",
            esc(k),
            p.scores.chance.get(k).copied().unwrap_or(f64::NAN),
            p.scores.majority.get(k).copied().unwrap_or(f64::NAN)
        );
        for (_, b) in &p.baselines {
            match b.metrics.get(k) {
                Some(x) => {
                    let _ = write!(o, "<td>{x:.4}</td>");
                }
                None => o.push_str("<td>-</td>"),
            }
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    let _ = write!(
        o,
        "<p>mAP over the whole ranking: {:.4} with ties in database order, {:.4} expected over random orders of tied items.</p>",
        p.scores.map_all, p.scores.map_all_expected_over_ties
    );

    let mut curves: Vec<(String, &[PrPoint])> =
        vec![("model".to_string(), p.scores.pr_curve.as_slice())];
    for (name, b) in &p.baselines {
        curves.push((name.clone(), b.pr_curve.as_slice()));
    }
    o.push_str("<h2>Precision and recall</h2>");
    let _ = write!(
        o,
        "<p>Mean precision and recall over the {} of {} queries with a relevant case in the database (a query with none has no recall).</p>",
        p.scores.pr_curve_queries, p.scores.queries
    );
    o.push_str(&pr_svg(&curves, &p.scores.pr_over)?);

    if !p.scores.per_class_ap.is_empty() {
        o.push_str("<h2>AP per class</h2>");
        let rows: Vec<(String, String)> = p
            .scores
            .per_class_ap
            .iter()
            .map(|(k, v)| (k.clone(), format!("{v:.4}")))
            .collect();
        table(&mut o, &rows);
    }
    if !p.localisation.is_empty() {
        o.push_str("<h2>Where the saliency falls</h2>");
        table(&mut o, &p.localisation);
    }
    o.push_str("<h2>Timing</h2>");
    table(&mut o, &p.timing);

    if !p.gallery.is_empty() {
        o.push_str("<h2>Gallery</h2><p>Each row: the query (blue), then its top results, green when relevant, red when not, with the model's saliency overlay.</p>");
        for row in &p.gallery {
            o.push_str("<div class=\"row\">");
            thumb(&mut o, &row.query);
            for r in &row.results {
                thumb(&mut o, r);
            }
            o.push_str("</div>");
        }
    }
    o.push_str("<h2>Model card</h2><pre>");
    o.push_str(&esc(
        &serde_json::to_string_pretty(&p.card).map_err(|e| e.to_string())?
    ));
    o.push_str("</pre></body></html>\n");
    Ok(o)
}
