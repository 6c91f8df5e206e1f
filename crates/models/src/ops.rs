//! Small tensor operations several networks and losses share.

use burn::prelude::*;

/// Rows of `x` divided by their L2 norm (a zero row stays zero).
pub fn l2_normalise(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}
