//! The dense layers' 3x3 convolution (128 to 32 channels, stride 1, padding 1) on raw
//! data at DenseNet-121's four block sizes at 224 px: Winograd F(2x2, 3x3) against
//! im2col, for the forward and weight gradient of the 128-to-32 convolution and of the
//! 32-to-128 one (the input gradient's transposed convolution), with the GFLOP/s of the
//! direct count. `cargo run --profile bench -p medret-models --example conv3x3 --
//! [--threads 2] [--batch 16] [--reps 5] [--size 56]`; one JSON line an operation.

use std::time::Instant;

use medret_models::kernels::conv::{Geom, backward, im2col_forward};
use medret_models::kernels::winograd;

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Median milliseconds of `reps` calls after one warm-up.
fn time(reps: usize, f: &dyn Fn() -> Vec<f32>) -> f64 {
    std::hint::black_box(f());
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            std::hint::black_box(f());
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let threads = arg("--threads", 2);
    let n = arg("--batch", 16);
    let reps = arg("--reps", 5);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let only = arg("--size", 0);
    for hw in [56usize, 28, 14, 7]
        .into_iter()
        .filter(|s| only == 0 || *s == only)
    {
        for (what, c, o) in [("forward", 128usize, 32usize), ("input gradient", 32, 128)] {
            let g = Geom::same3x3(n, c, hw, hw, o);
            let x = data(n * c * hw * hw, 1);
            let wt = data(o * c * 9, 2);
            let wino = time(reps, &|| winograd::forward(&x, &wt, g));
            let direct = time(reps, &|| im2col_forward(&x, &wt, g));
            let gflop = 2.0 * (n * o * c * 9 * hw * hw) as f64 / 1e9;
            // The weight gradient: Winograd's products against im2col's.
            let gr = data(n * o * hw * hw, 3);
            let dw_wino = time(reps, &|| winograd::weight_grad(&x, &gr, g));
            winograd::set_enabled(false);
            let dw_direct = time(reps, &|| backward(&x, &wt, &gr, g, false).1);
            winograd::set_enabled(true);
            println!(
                "{{\"op\": \"conv3x3 {c}->{o} weight gradient\", \"size\": {hw}, \"batch\": {n}, \"threads\": {threads}, \"winograd_ms\": {dw_wino:.3}, \"im2col_ms\": {dw_direct:.3}, \"ratio\": {:.3}, \"winograd_gflops\": {:.1}, \"im2col_gflops\": {:.1}}}",
                dw_wino / dw_direct,
                gflop / dw_wino * 1e3,
                gflop / dw_direct * 1e3
            );
            println!(
                "{{\"op\": \"conv3x3 {c}->{o} {what}\", \"size\": {hw}, \"batch\": {n}, \"threads\": {threads}, \"winograd_ms\": {wino:.3}, \"im2col_ms\": {direct:.3}, \"ratio\": {:.3}, \"winograd_gflops\": {:.1}, \"im2col_gflops\": {:.1}}}",
                wino / direct,
                gflop / wino * 1e3,
                gflop / direct * 1e3
            );
        }
    }
}
