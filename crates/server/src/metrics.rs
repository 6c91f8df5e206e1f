//! `/metrics` in Prometheus text format: requests by route and status, latency
//! histograms by route, the time image searches spend in each stage, and index sizes.
//! Routes are templates (`/api/v1/cases/{id}`), so no case id reaches the metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(BUCKETS) {
            if v <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    stages: BTreeMap<&'static str, Histogram>,
}

#[derive(Default)]
pub struct Metrics(Mutex<Inner>);

impl Metrics {
    fn record(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.0.lock() {
            *m.requests.entry((route.to_string(), status)).or_default() += 1;
            m.latency
                .entry(route.to_string())
                .or_default()
                .observe(seconds);
        }
    }

    /// One stage of an image search: `decode`, `encode`, `search` or `explain`.
    pub fn stage(&self, stage: &'static str, seconds: f64) {
        if let Ok(mut m) = self.0.lock() {
            m.stages.entry(stage).or_default().observe(seconds);
        }
    }

    fn render(&self, out: &mut String) {
        let Ok(m) = self.0.lock() else { return };
        out.push_str("# HELP medret_http_requests_total HTTP requests by route and status.\n# TYPE medret_http_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "medret_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP medret_http_request_duration_seconds Request latency by route.\n# TYPE medret_http_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            histogram(
                out,
                "medret_http_request_duration_seconds",
                &format!("route=\"{route}\""),
                h,
            );
        }
        out.push_str("# HELP medret_search_stage_seconds Time image searches spend per stage.\n# TYPE medret_search_stage_seconds histogram\n");
        for (stage, h) in &m.stages {
            histogram(
                out,
                "medret_search_stage_seconds",
                &format!("stage=\"{stage}\""),
                h,
            );
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (c, b) in h.counts.iter().zip(BUCKETS) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Middleware: counts and times every request, and sets the headers every answer
/// carries (no sniffing, no framing, no referrer, a strict content policy).
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let mut res = next.run(req).await;
    state
        .metrics
        .record(&route, res.status().as_u16(), t.elapsed().as_secs_f64());
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    res
}

#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")
))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    state.metrics.render(&mut out);
    // Work holds its permit until it ends, also after its request timed out: this
    // counts the work running, not the requests waiting.
    let _ = writeln!(
        out,
        "# HELP medret_work_in_progress Decoding, encoding and searching running now (at most the concurrency limit).\n# TYPE medret_work_in_progress gauge\nmedret_work_in_progress {}",
        state
            .config
            .concurrency
            .max(1)
            .saturating_sub(state.work.available_permits())
    );
    out.push_str(
        "# HELP medret_index_cases Cases in each model's index.\n# TYPE medret_index_cases gauge\n",
    );
    for slot in state.all_slots() {
        // Never waits on a search in progress (this handler runs on the async runtime).
        if let Some(n) = slot.cases_now() {
            let _ = writeln!(
                out,
                "medret_index_cases{{model=\"{}\"}} {}",
                slot.info.name.replace(['"', '\\', '\n'], "_"),
                n
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics))
}
