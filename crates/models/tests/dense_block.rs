//! The dense block through one feature buffer (`kernels/dense_block.rs`) against the same
//! layers concatenated with `Tensor::cat`: same kernels, so the block's bookkeeping (views
//! into the buffer, the appends' gradient split, the in-place adds) is all that differs.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Distribution;
use medret_models::densenet::{DenseBlock, DenseNetConfig};
use medret_models::kernels::dense_block::{BLOCK_CALLS, IN_PLACE_ADDS, INFERENCE_BLOCK_CALLS};

mod common;
use common::{rel_per_element, vals};

/// The tests count the block's calls: one at a time.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The block as `densenet.rs` wrote it before the buffer: concatenate after each layer.
fn concatenated(block: &DenseBlock, x: Tensor<4>) -> Tensor<4> {
    let mut f = x;
    for layer in &block.layers {
        let new = layer.forward(f.clone());
        f = Tensor::cat(vec![f, new], 1);
    }
    f
}

/// Every parameter's gradient, in the module's order.
fn param_grads(m: &DenseBlock, grads: &burn::tensor::Gradients) -> Vec<Vec<f32>> {
    struct Collect<'a>(&'a burn::tensor::Gradients, Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = p.val().grad(self.0) {
                self.1.push(g.into_data().try_to_vec::<f32>().unwrap());
            }
        }
    }
    let mut c = Collect(grads, Vec::new());
    m.visit(&mut c);
    c.1
}

/// Output, loss, input gradients and every parameter's gradient of a loss that uses the
/// block's output twice (so burn sums the output's gradient before the block sees it) and
/// runs the block on two inputs before one backward (two buffers alive at once).
fn run(
    block: &DenseBlock,
    x1: &Tensor<4>,
    x2: &Tensor<4>,
    forward: &dyn Fn(&DenseBlock, Tensor<4>) -> Tensor<4>,
) -> Vec<Vec<f32>> {
    let x1 = x1.clone().autodiff().require_grad();
    let x2 = x2.clone().autodiff().require_grad();
    let y1 = forward(block, x1.clone());
    let y2 = forward(block, x2.clone());
    let w = Tensor::<4>::ones(y1.dims(), &y1.device()).mul_scalar(0.5);
    let loss = (y1.clone() * y1.clone()).mean()
        + (y1.clone() * w).sum()
        + (y2.clone() * y2.clone()).mean();
    let grads = loss.backward();
    let mut out = vec![
        vals(y1),
        vals(y2),
        vals(loss),
        vals(x1.grad(&grads).unwrap()),
        vals(x2.grad(&grads).unwrap()),
    ];
    out.extend(param_grads(block, &grads));
    out
}

#[test]
fn the_buffered_block_equals_concatenation() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex().autodiff();
    dev.seed(11);
    // DenseNet-121's first block, narrower: 3 layers, growth 8, bottleneck 16.
    let cfg = DenseNetConfig::tiny();
    let model = cfg.init(&dev);
    let block = model.features.blocks[1].clone();
    let c_in = block.layers[0].norm1.gamma.dims()[0];
    let x1 = Tensor::<4>::random(
        [3, c_in, 9, 7],
        Distribution::Normal(0.5, 1.0),
        &Device::flex(),
    );
    let x2 = Tensor::<4>::random(
        [3, c_in, 9, 7],
        Distribution::Normal(-0.2, 2.0),
        &Device::flex(),
    );

    let calls = || BLOCK_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let c0 = calls();
    let adds = IN_PLACE_ADDS.load(std::sync::atomic::Ordering::Relaxed);
    let buffered = run(&block, &x1, &x2, &|b, x| b.forward(x));
    assert_eq!(calls(), c0 + 2, "the buffered block did not run");
    // Every layer's first BatchNorm, in both blocks, added into the gradient buffer.
    assert_eq!(
        IN_PLACE_ADDS.load(std::sync::atomic::Ordering::Relaxed),
        adds + 2 * block.layers.len(),
        "the BatchNorms did not add into the block's gradient buffer"
    );
    let plain = run(&block, &x1, &x2, &concatenated);

    assert_eq!(buffered.len(), plain.len());
    assert_eq!(
        buffered.len(),
        5 + 6 * block.layers.len(),
        "a gradient is missing"
    );
    for (i, (a, b)) in buffered.iter().zip(&plain).enumerate() {
        assert_eq!(a.len(), b.len(), "tensor {i}");
        // Infinite where either holds a NaN or infinity.
        let worst = rel_per_element(a, b);
        // The same operations on the same values; only where sums are formed differs.
        assert!(
            worst < 1e-5,
            "tensor {i} (0-1 outputs, 2 loss, 3-4 input gradients, then parameters): {worst}"
        );
    }
    // Not trivially equal: the input gradient is not zero.
    assert!(buffered[3].iter().any(|v| v.abs() > 1e-6));
}

/// Inference (no graph) takes the buffered block too, its layers reading channel-prefix
/// views of the one buffer, with exactly the concatenating block's result: the same
/// operations on the same values.
#[test]
fn inference_takes_the_buffered_block_with_the_concatenating_result() {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::flex();
    let model = DenseNetConfig::tiny().init(&dev);
    let block = &model.features.blocks[0];
    let c_in = block.layers[0].norm1.gamma.dims()[0];
    let x = Tensor::<4>::random([2, c_in, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
    let before = INFERENCE_BLOCK_CALLS.load(std::sync::atomic::Ordering::Relaxed);
    let y = block.forward(x.clone());
    let want = concatenated(block, x);
    assert_eq!(vals(y), vals(want));
    assert_eq!(
        INFERENCE_BLOCK_CALLS.load(std::sync::atomic::Ordering::Relaxed),
        before + 1,
        "the buffered block did not run"
    );
}
