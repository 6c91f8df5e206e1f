//! DenseNet (Huang et al., 2017) exactly as torchvision builds it, so torchvision weights
//! load unchanged: growth rate, block sizes, bottleneck width (`bn_size * growth`),
//! compression 0.5 at each transition, BatchNorm eps 1e-5 and momentum 0.1.
//!
//! Field names mirror torchvision's module tree (`features.conv0`, `features.norm0`, dense
//! layers' `norm1/conv1/norm2/conv2`, transitions' `norm/conv`, `features.norm5`,
//! `classifier`), except that blocks and transitions are vectors so that any block
//! configuration works; [`crate::weights`] maps `blocks.0.layers.0` to
//! `denseblock1.denselayer1`.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{
    AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, AvgPool2d, AvgPool2dConfig, MaxPool2d,
    MaxPool2dConfig,
};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::kernels::avg_pool::avg_pool2d;
use crate::kernels::bf16::bn_relu_conv;
use crate::kernels::bn_relu::bn_relu;
use crate::kernels::conv::conv2d;
use crate::kernels::dense_block::{dense_block, dense_block_inference};
use crate::kernels::max_pool::max_pool2d;

/// DenseNet hyper-parameters. [`DenseNetConfig::densenet121`] is torchvision's `densenet121`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    pub growth_rate: usize,
    /// Dense layers per block.
    pub block_config: Vec<usize>,
    pub num_init_features: usize,
    /// Bottleneck width factor: the 1x1 convolution outputs `bn_size * growth_rate`.
    pub bn_size: usize,
    /// Image channels: 3 (RGB, torchvision weights) or 1 (grey).
    pub in_channels: usize,
    /// Classifier outputs; `None` builds the feature extractor only.
    pub num_classes: Option<usize>,
    /// Channel reduction at each transition (torchvision: `num_features // 2`).
    pub compression: f64,
    pub bn_eps: f64,
    pub bn_momentum: f64,
}

impl DenseNetConfig {
    /// torchvision's DenseNet-121: 7,978,856 parameters with the 1000-class head.
    pub fn densenet121() -> Self {
        DenseNetConfig {
            growth_rate: 32,
            block_config: vec![6, 12, 24, 16],
            num_init_features: 64,
            bn_size: 4,
            in_channels: 3,
            num_classes: Some(1000),
            compression: 0.5,
            bn_eps: 1e-5,
            bn_momentum: 0.1,
        }
    }

    /// A small configuration with every structural element of DenseNet-121 (four blocks,
    /// bottlenecks, three transitions), for tests and the CPU demo.
    pub fn tiny() -> Self {
        DenseNetConfig {
            growth_rate: 8,
            block_config: vec![2, 3, 2, 2],
            num_init_features: 16,
            bn_size: 2,
            num_classes: Some(5),
            ..Self::densenet121()
        }
    }

    /// Channels out of each transition's 1x1 convolution.
    fn compressed(&self, channels: usize) -> usize {
        (channels as f64 * self.compression).floor() as usize
    }

    /// Channels of the final feature maps (1024 for DenseNet-121).
    pub fn feature_dim(&self) -> usize {
        let mut c = self.num_init_features;
        for (i, &n) in self.block_config.iter().enumerate() {
            c += n * self.growth_rate;
            if i + 1 < self.block_config.len() {
                c = self.compressed(c);
            }
        }
        c
    }

    fn bn(&self, channels: usize, device: &Device) -> BatchNorm {
        BatchNormConfig::new(channels)
            .with_epsilon(self.bn_eps)
            .with_momentum(self.bn_momentum)
            .init(device)
    }

    /// Builds the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> DenseNet {
        let conv0 = Conv2dConfig::new([self.in_channels, self.num_init_features], [7, 7])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
            .with_bias(false)
            .init(device);
        let pool0 = MaxPool2dConfig::new([3, 3])
            .with_strides([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init();
        let mut c = self.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &n) in self.block_config.iter().enumerate() {
            let layers = (0..n)
                .map(|k| DenseLayer::new(self, c + k * self.growth_rate, device))
                .collect();
            blocks.push(DenseBlock { layers });
            c += n * self.growth_rate;
            if i + 1 < self.block_config.len() {
                let out = self.compressed(c);
                transitions.push(Transition {
                    norm: self.bn(c, device),
                    conv: Conv2dConfig::new([c, out], [1, 1])
                        .with_bias(false)
                        .init(device),
                    pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
                });
                c = out;
            }
        }
        DenseNet {
            features: Features {
                conv0,
                norm0: self.bn(self.num_init_features, device),
                pool0,
                blocks,
                transitions,
                norm5: self.bn(c, device),
            },
            classifier: self
                .num_classes
                .map(|k| LinearConfig::new(c, k).init(device)),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
        }
    }
}

/// BN-ReLU-Conv1x1 (bottleneck) then BN-ReLU-Conv3x3, producing `growth_rate` new maps.
#[derive(Module, Debug)]
pub struct DenseLayer {
    pub norm1: BatchNorm,
    pub conv1: Conv2d,
    pub norm2: BatchNorm,
    pub conv2: Conv2d,
}

impl DenseLayer {
    fn new(cfg: &DenseNetConfig, in_channels: usize, device: &Device) -> Self {
        let mid = cfg.bn_size * cfg.growth_rate;
        DenseLayer {
            norm1: cfg.bn(in_channels, device),
            conv1: Conv2dConfig::new([in_channels, mid], [1, 1])
                .with_bias(false)
                .init(device),
            norm2: cfg.bn(mid, device),
            conv2: Conv2dConfig::new([mid, cfg.growth_rate], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = bn_relu_conv(&self.norm1, &self.conv1, &x)
            .unwrap_or_else(|| conv1x1(&self.conv1, bn_relu(&self.norm1, x)));
        bn_relu_conv(&self.norm2, &self.conv2, &h)
            .unwrap_or_else(|| conv2d(&self.conv2, bn_relu(&self.norm2, h)))
    }
}

/// A 1x1 convolution: medret's kernel (`kernels/conv.rs`), or with the kernels off a
/// matrix product ([`conv1x1_as_matmul`]), still faster than burn's convolution.
pub fn conv1x1(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if crate::kernels::enabled() {
        conv2d(conv, x)
    } else {
        conv1x1_as_matmul(conv, x)
    }
}

/// A 1x1 convolution (stride 1, no padding) as one batched matrix product,
/// `[1, O, C] x [N, C, H*W]`, on the same weights. The result is the convolution's; the
/// point is speed: burn-flex 0.22 computes a convolution's input gradient as a transposed
/// convolution with a direct loop, while a matrix product's backward is two more matrix
/// products (see `bench/densenet_ops.sh`).
pub fn conv1x1_as_matmul(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let weight = conv.weight.val();
    let [o, wc, kh, kw] = weight.dims();
    debug_assert!(
        wc == c && kh == 1 && kw == 1,
        "conv1x1_as_matmul needs a 1x1 convolution over {c} channels"
    );
    let y = weight.reshape([1, o, wc]).matmul(x.reshape([n, c, h * w]));
    let y = match &conv.bias {
        Some(b) => y + b.val().reshape([1, o, 1]),
        None => y,
    };
    y.reshape([n, o, h, w])
}

/// Each layer sees the concatenation of the block input and every earlier layer's output.
#[derive(Module, Debug)]
pub struct DenseBlock {
    pub layers: Vec<DenseLayer>,
}

impl DenseBlock {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Training on the CPU: one feature buffer instead of a concatenation per layer.
        if let Some(y) = dense_block(&self.layers, &x) {
            return y;
        }
        if let Some(y) = dense_block_inference(&self.layers, &x) {
            return y;
        }
        let mut features = x;
        for layer in &self.layers {
            let new = layer.forward(features.clone());
            features = Tensor::cat(vec![features, new], 1);
        }
        features
    }
}

/// BN-ReLU-Conv1x1 (compression) then 2x2 average pooling.
#[derive(Module, Debug)]
pub struct Transition {
    pub norm: BatchNorm,
    pub conv: Conv2d,
    pub pool: AvgPool2d,
}

impl Transition {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = bn_relu_conv(&self.norm, &self.conv, &x)
            .unwrap_or_else(|| conv1x1(&self.conv, bn_relu(&self.norm, x)));
        avg_pool2d(&self.pool, y)
    }
}

/// torchvision's `densenet.features`.
#[derive(Module, Debug)]
pub struct Features {
    pub conv0: Conv2d,
    pub norm0: BatchNorm,
    pub pool0: MaxPool2d,
    pub blocks: Vec<DenseBlock>,
    pub transitions: Vec<Transition>,
    pub norm5: BatchNorm,
}

/// DenseNet: feature extractor and optional linear classifier.
#[derive(Module, Debug)]
pub struct DenseNet {
    pub features: Features,
    pub classifier: Option<Linear>,
    pub pool: AdaptiveAvgPool2d,
}

impl DenseNet {
    /// The last feature maps (after `norm5`, before the ReLU): what Grad-CAM looks at.
    pub fn feature_maps(&self, x: Tensor<4>) -> Tensor<4> {
        let f = &self.features;
        let mut h = max_pool2d(&f.pool0, bn_relu(&f.norm0, conv2d(&f.conv0, x)));
        for (i, block) in f.blocks.iter().enumerate() {
            h = block.forward(h);
            if let Some(t) = f.transitions.get(i) {
                h = t.forward(h);
            }
        }
        f.norm5.forward(h)
    }

    /// ReLU, global average pool and flatten: the pooled feature (1024-d for DenseNet-121).
    pub fn pool_maps(&self, maps: Tensor<4>) -> Tensor<2> {
        self.pool.forward(relu(maps)).flatten(1, 3)
    }

    /// Pooled features of a batch, as torchvision computes them before the classifier.
    pub fn pooled(&self, x: Tensor<4>) -> Tensor<2> {
        self.pool_maps(self.feature_maps(x))
    }

    /// Class scores (logits). Panics without a classifier; see [`DenseNet::has_classifier`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let pooled = self.pooled(x);
        self.classifier
            .as_ref()
            .expect("DenseNet built without a classifier")
            .forward(pooled)
    }

    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }
}
