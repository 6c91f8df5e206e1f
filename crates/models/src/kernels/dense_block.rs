//! The dense block without concatenation copies: the memory-efficient DenseNet of Pleiss
//! et al. (2017), in training on the CPU backend.
//!
//! Why: written with `Tensor::cat`, layer `k` of a block copies all `c_k` channels it
//! sees into a new tensor, and the backward slices and adds gradients of the same sizes:
//! time and memory quadratic in the block's depth (burn-flex's concatenation is 4x to 7x
//! PyTorch's, `bench/densenet_ops.sh`). Here the block allocates one feature buffer of its
//! final width; the input and each layer's new maps are written into it once, and what
//! layer `k` sees is a view of its first `c_k` channels (images `C_total * H * W` floats
//! apart, which the fused BatchNorm+ReLU reads in place). The backward keeps one gradient
//! buffer per block: each append hands its two parts on as views of it, and each layer's
//! BatchNorm adds its input gradient into the prefix in place.
//!
//! On the autodiff graph the block is a chain `F_0 = seed(x)`, `F_{k+1} = append(F_k,
//! new_k)`, each a custom operation whose output is a view of the buffer. Correctness
//! rests on two orders: in the forward, an append writes channels no existing view
//! covers; in the backward, burn runs a node's steps deepest first, so `append_k`
//! (deeper than layer `k`, which feeds it) registers the gradient of `F_k` before layer
//! `k`'s BatchNorm adds into it, and the BatchNorm checks that what it adds into is the
//! buffer (`BlockGrad::prefix_target`), else it registers its gradient the usual way.
//!
//! Inference on the CPU takes the same buffer without a graph
//! ([`dense_block_inference`]). Any other case (kernels off, a layer not training while
//! others do, gradient checkpointing, another device) takes the concatenating block in
//! `densenet.rs`.

use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use rayon::prelude::*;

use super::bn_relu::{bn_relu, bn_relu_in_block, trains_fused};
use super::conv::conv2d;
use super::{SendPtr, as_f32, contiguous, image_data, images, wrap};
use crate::densenet::{DenseLayer, conv1x1};

type Ad = Autodiff<Flex>;

/// Block forwards that took this path (for tests that must know it ran).
pub static BLOCK_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Inference block forwards that took the buffer (counted apart from training's: tests of
/// one run beside tests of the other).
pub static INFERENCE_BLOCK_CALLS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// BatchNorm backwards that added into a block's gradient buffer in place.
pub static IN_PLACE_ADDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A buffer of ours: `tensor` owns it (and keeps it alive), `ptr` is the pointer of the
/// `Vec` it was made from, through which the block writes into it while views of other
/// parts are in use. `[N, channels, H, W]`, contiguous.
#[derive(Debug, Clone)]
struct Buffer {
    tensor: FlexTensor,
    ptr: SendPtr,
    channels: usize,
}

impl Buffer {
    /// A buffer holding `data` (`[n, channels, h, w]`).
    fn new(mut data: Vec<f32>, dims: [usize; 4]) -> Self {
        let ptr = SendPtr(data.as_mut_ptr());
        Buffer {
            tensor: wrap(data, &dims),
            ptr,
            channels: dims[1],
        }
    }

    /// Copies `src` (`[N, C, H, W]`, as [`images`] returns it) into channels `at..at + C`.
    fn write(&self, src: &FlexTensor, at: usize) {
        let dims = src.layout().shape().to_vec();
        let own = self.tensor.layout().shape().to_vec();
        let (n, c, plane) = (dims[0], dims[1], dims[2] * dims[3]);
        assert!(
            n == own[0] && dims[2] == own[2] && dims[3] == own[3] && at + c <= self.channels,
            "append of {dims:?} at channel {at} into a buffer of {own:?}"
        );
        let (data, stride) = image_data(src);
        let (ptr, total) = (self.ptr, self.channels * plane);
        (0..n).into_par_iter().for_each(|i| {
            let from = &data[i * stride..][..c * plane];
            // SAFETY: channels `at..at + c` of image `i` lie inside the buffer (asserted
            // above); no view handed out so far covers them, and each `i` writes its own.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    from.as_ptr(),
                    ptr.get().add(i * total + at * plane),
                    c * plane,
                )
            };
        });
    }
}

/// The block's gradient buffer, made by the first append to run in the backward.
#[derive(Debug, Default)]
pub struct BlockGrad(Mutex<Option<Buffer>>);

impl BlockGrad {
    /// If `view` is a channel prefix of the gradient buffer: the buffer's pointer and the
    /// distance between its images, for adding into that prefix in place.
    pub(crate) fn prefix_target(&self, view: &FlexTensor) -> Option<(SendPtr, usize)> {
        let guard = self.0.lock().ok()?;
        let buf = guard.as_ref()?;
        let (vl, bl) = (view.layout(), buf.tensor.layout());
        let (vs, bs) = (vl.shape().to_vec(), bl.shape().to_vec());
        let prefix = Arc::ptr_eq(&view.data_arc(), &buf.tensor.data_arc())
            && vl.start_offset() == 0
            && vl.strides() == bl.strides()
            && vs.len() == 4
            && vs[0] == bs[0]
            && vs[1] <= bs[1]
            && vs[2..] == bs[2..];
        prefix.then(|| (buf.ptr, bl.strides()[0] as usize))
    }

    fn take(&self) -> Option<Buffer> {
        self.0.lock().ok()?.take()
    }

    fn set(&self, buf: Buffer) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(buf);
        }
    }
}

/// The block's output channels: its input's and every layer's new maps.
fn width(layers: &[DenseLayer], c0: usize) -> usize {
    c0 + layers
        .iter()
        .map(|l| l.conv2.weight.dims()[0])
        .sum::<usize>()
}

/// The dense block's forward through one feature buffer, or `None` where it does not
/// apply (the caller then concatenates).
pub fn dense_block(layers: &[DenseLayer], x: &Tensor<4>) -> Option<Tensor<4>> {
    let trains = layers
        .iter()
        .all(|l| trains_fused(x, &l.norm1) && trains_fused(x, &l.norm2));
    if layers.is_empty() || !trains || x.dtype() != burn::tensor::DType::F32 {
        return None;
    }
    BLOCK_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let [n, c0, h, w] = x.dims();
    let total = width(layers, c0);
    let features = Arc::new(Buffer::new(vec![0.0; n * total * h * w], [n, total, h, w]));
    let grad = Arc::new(BlockGrad::default());
    let mut f = seed(x.clone(), &features, &grad);
    let mut c = c0;
    for layer in layers {
        let h = bn_relu_in_block(&layer.norm1, f.clone(), Some(grad.clone()));
        let new = conv2d(
            &layer.conv2,
            bn_relu(&layer.norm2, conv1x1(&layer.conv1, h)),
        );
        let g = new.dims()[1];
        f = append(f, new, c, &features, &grad);
        c += g;
    }
    Some(f)
}

/// Inference on the CPU (no graph): the same one feature buffer, each layer reading a
/// view of its first channels. With `Tensor::cat` the block copied every channel it had
/// so far at each layer: 14% of DenseNet-121's bf16 inference was those copies (perf).
/// `None` where it does not apply.
pub fn dense_block_inference(layers: &[DenseLayer], x: &Tensor<4>) -> Option<Tensor<4>> {
    if layers.is_empty() || x.device().is_autodiff() || !super::on_cpu_f32(x) {
        return None;
    }
    INFERENCE_BLOCK_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let [n, c0, h, w] = x.dims();
    let total = width(layers, c0);
    let features = Buffer::new(vec![0.0; n * total * h * w], [n, total, h, w]);
    let xf = images(
        x.clone()
            .try_into_primitive::<Flex>()
            .expect("x on the CPU backend"),
    );
    features.write(&xf, 0);
    let mut c = c0;
    for layer in layers {
        let seen = Tensor::<4>::from_primitive::<Flex>(features.tensor.narrow(1, 0, c));
        let new = layer.forward(seen);
        let nf = images(
            new.try_into_primitive::<Flex>()
                .expect("new maps on the CPU backend"),
        );
        // Channels `c..` are covered by no view: the layer's own output is a new tensor.
        features.write(&nf, c);
        c += nf.layout().shape()[1];
    }
    Some(Tensor::<4>::from_primitive::<Flex>(features.tensor))
}

/// `F_0`: the block input written into the buffer's first channels, as a view of them.
fn seed(x: Tensor<4>, features: &Arc<Buffer>, grad: &Arc<BlockGrad>) -> Tensor<4> {
    let xa = x
        .autodiff()
        .try_into_primitive::<Ad>()
        .expect("x on the autodiff CPU backend");
    let node = xa.node();
    let xf = images(xa.into_primitive());
    features.write(&xf, 0);
    let c = xf.layout().shape()[1];
    let out = features.tensor.narrow(1, 0, c);
    let out = match SeedBackward
        .prepare::<NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(grad.clone(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::<4>::from_primitive::<Ad>(out)
}

/// `F_{k+1}`: `new` written after the first `c` channels, and the view of all `c + g`.
fn append(
    f: Tensor<4>,
    new: Tensor<4>,
    c: usize,
    features: &Arc<Buffer>,
    grad: &Arc<BlockGrad>,
) -> Tensor<4> {
    let fa = f
        .autodiff()
        .try_into_primitive::<Ad>()
        .expect("features on the autodiff CPU backend");
    let na = new
        .autodiff()
        .try_into_primitive::<Ad>()
        .expect("new maps on the autodiff CPU backend");
    let nodes = [fa.node(), na.node()];
    let nf = images(na.into_primitive());
    let g = nf.layout().shape()[1];
    features.write(&nf, c);
    let out = features.tensor.narrow(1, 0, c + g);
    let out = match AppendBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((grad.clone(), c, g), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::<4>::from_primitive::<Ad>(out)
}

#[derive(Debug)]
struct AppendBackward;

impl Backward<Flex, 2> for AppendBackward {
    type State = (Arc<BlockGrad>, usize, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_f, node_new] = ops.parents;
        let (grad, c, g) = ops.state;
        let incoming = grads.consume::<Flex>(&ops.node);
        // Deeper appends hand on a prefix of the buffer; the first to run (the block's
        // last) copies its gradient into a new buffer, as does any append whose gradient
        // burn summed into a tensor of its own.
        let buf = match grad.prefix_target(&incoming) {
            Some(_) => incoming,
            None => {
                let dims: [usize; 4] = incoming
                    .layout()
                    .shape()
                    .to_vec()
                    .try_into()
                    .expect("a 4-d gradient");
                let data = as_f32(&contiguous(incoming)).to_vec();
                let buf = Buffer::new(data, dims);
                let t = buf.tensor.clone();
                grad.set(buf);
                t
            }
        };
        if let Some(node) = node_new {
            grads.register::<Flex>(node.id, buf.narrow(1, c, g));
        }
        if let Some(node) = node_f {
            grads.register::<Flex>(node.id, buf.narrow(1, 0, c));
        }
    }
}

#[derive(Debug)]
struct SeedBackward;

impl Backward<Flex, 1> for SeedBackward {
    type State = Arc<BlockGrad>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let incoming = grads.consume::<Flex>(&ops.node);
        // The block's backward is done: nothing adds into the buffer any more.
        drop(ops.state.take());
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, incoming);
        }
    }
}
