//! Binary codes packed into `u64` words, and the distances between codes and descriptors.
//!
//! Bit order: bit `i` of a K-bit code is bit `i % 64` (least significant first) of word
//! `i / 64`. Equivalently, reading a code as little-endian bytes, bit `i` is bit `i % 8` of
//! byte `i / 8`; this is the layout of the `uint8 N x K/8` code files medret reads.

/// Packs signs (`> 0` is 1) into words; unused high bits of the last word are 0.
pub fn pack_signs(values: &[f32]) -> Vec<u64> {
    let mut out = vec![0u64; values.len().div_ceil(64)];
    for (i, &v) in values.iter().enumerate() {
        if v > 0.0 {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

/// Packs booleans into words.
pub fn pack_bits(bits: &[bool]) -> Vec<u64> {
    let mut out = vec![0u64; bits.len().div_ceil(64)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

/// Packs little-endian bytes (`K/8` a code) into words.
pub fn pack_bytes(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect()
}

/// Hamming distance between two packed codes of the same length.
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Cosine similarity; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())) as f32
    }
}
