//! The layer table and parameter counts `medret model summary` prints.

use serde::Serialize;

use crate::densenet::DenseNet;
use crate::weights::expected_tensors;

/// One layer (module) of the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerRow {
    /// torchvision module path, e.g. `features.denseblock1.denselayer1.conv1`.
    pub name: String,
    pub kind: &'static str,
    /// Weight shape in PyTorch layout (`[out, in, kh, kw]` or `[out, in]`).
    pub weight_shape: Vec<usize>,
    /// Trainable parameters (weights and biases; BatchNorm running statistics excluded).
    pub params: usize,
}

/// Totals as torchvision counts them (`sum(p.numel() for p in model.parameters())`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub layers: Vec<LayerRow>,
    pub parameters: usize,
    pub feature_extractor_parameters: usize,
    pub classifier_parameters: usize,
    /// BatchNorm running means and variances.
    pub buffers: usize,
}

/// Builds the table from the model's tensors, grouped by module.
pub fn summarise(model: &DenseNet) -> Summary {
    let mut layers: Vec<LayerRow> = Vec::new();
    let (mut params, mut features, mut classifier, mut buffers) = (0, 0, 0, 0);
    for t in expected_tensors(model) {
        let n: usize = t.shape.iter().product();
        let (module, leaf) = t.key.rsplit_once('.').unwrap_or(("", t.key.as_str()));
        if t.is_buffer() {
            buffers += n;
        } else {
            params += n;
            if t.key.starts_with("classifier") {
                classifier += n;
            } else {
                features += n;
            }
        }
        if layers.last().map(|l| l.name.as_str()) != Some(module) {
            layers.push(LayerRow {
                name: module.to_string(),
                kind: "",
                weight_shape: Vec::new(),
                params: 0,
            });
        }
        let row = layers.last_mut().expect("row");
        if !t.is_buffer() {
            row.params += n;
        }
        if leaf == "weight" {
            row.weight_shape = t.shape.clone();
            row.kind = match t.shape.len() {
                4 => "Conv2d",
                2 => "Linear",
                _ => "BatchNorm2d",
            };
        }
    }
    Summary {
        layers,
        parameters: params,
        feature_extractor_parameters: features,
        classifier_parameters: classifier,
        buffers,
    }
}
