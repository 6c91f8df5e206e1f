//! Hamming distance between packed codes with the hardware population count where the CPU
//! has one (detected at run time), and a portable fallback that gives identical results.
//!
//! Bit order: bit `i` of a code is bit `i % 64` of word `i / 64`, which is the
//! little-endian byte order of `medret_eval::codes::pack_bytes`: byte `j` of a `.npy` code
//! row holds bits `8j..8j+8`, least significant first.

/// Which implementation [`distances`] uses on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// x86-64 `POPCNT` instruction.
    Popcnt,
    /// Bit-twiddling population count, any CPU.
    Portable,
}

impl Kernel {
    /// The best kernel this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("popcnt") {
                return Kernel::Popcnt;
            }
        }
        Kernel::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Popcnt => "popcnt",
            Kernel::Portable => "portable",
        }
    }
}

/// Population count without the POPCNT instruction (SWAR), so that the fallback really is
/// portable rather than whatever `count_ones` compiles to.
#[inline(always)]
pub fn popcount_portable(mut x: u64) -> u32 {
    x -= (x >> 1) & 0x5555_5555_5555_5555;
    x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

#[inline(always)]
fn dist_words<const W: usize>(q: &[u64; W], c: &[u64], pop: impl Fn(u64) -> u32) -> u16 {
    let mut d = 0u32;
    for w in 0..W {
        d += pop(q[w] ^ c[w]);
    }
    d as u16
}

#[inline(always)]
fn fill<const W: usize>(
    query: &[u64],
    codes: &[u64],
    out: &mut [u16],
    pop: impl Fn(u64) -> u32 + Copy,
) {
    let q: [u64; W] = query.try_into().expect("query length");
    for (o, c) in out.iter_mut().zip(codes.chunks_exact(W)) {
        *o = dist_words::<W>(&q, c, pop);
    }
}

fn fill_dyn(query: &[u64], codes: &[u64], out: &mut [u16], pop: impl Fn(u64) -> u32 + Copy) {
    let w = query.len();
    for (o, c) in out.iter_mut().zip(codes.chunks_exact(w)) {
        *o = query.iter().zip(c).map(|(a, b)| pop(a ^ b)).sum::<u32>() as u16;
    }
}

/// Monomorphised loops for the common code lengths (64 to 1024 bits), so each compiles to
/// straight-line loads, XORs and popcounts.
#[inline(always)]
fn dispatch(query: &[u64], codes: &[u64], out: &mut [u16], pop: impl Fn(u64) -> u32 + Copy) {
    match query.len() {
        1 => fill::<1>(query, codes, out, pop),
        2 => fill::<2>(query, codes, out, pop),
        4 => fill::<4>(query, codes, out, pop),
        8 => fill::<8>(query, codes, out, pop),
        16 => fill::<16>(query, codes, out, pop),
        _ => fill_dyn(query, codes, out, pop),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn distances_popcnt(query: &[u64], codes: &[u64], out: &mut [u16]) {
    dispatch(query, codes, out, |x: u64| x.count_ones());
}

/// Distances from `query` (`W` words) to each code of `codes` (`out.len() * W` words),
/// written to `out`.
pub fn distances(kernel: Kernel, query: &[u64], codes: &[u64], out: &mut [u16]) {
    debug_assert_eq!(codes.len(), out.len() * query.len());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Popcnt => {
            assert!(std::arch::is_x86_feature_detected!("popcnt"));
            // SAFETY: the CPU supports POPCNT (checked above).
            unsafe { distances_popcnt(query, codes, out) }
        }
        _ => dispatch(query, codes, out, popcount_portable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_popcount_is_exact() {
        for x in [
            0u64,
            1,
            u64::MAX,
            0x8000_0000_0000_0001,
            0xdead_beef_cafe_f00d,
        ] {
            assert_eq!(popcount_portable(x), x.count_ones());
        }
        let mut s = 1u64;
        for _ in 0..10_000 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            assert_eq!(popcount_portable(s), s.count_ones());
        }
    }

    #[test]
    fn kernels_agree_for_every_length() {
        let mut s = 7u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s
        };
        for words in [1usize, 2, 3, 4, 8, 16] {
            let n = 37;
            let q: Vec<u64> = (0..words).map(|_| next()).collect();
            let codes: Vec<u64> = (0..n * words).map(|_| next()).collect();
            let mut a = vec![0u16; n];
            let mut b = vec![0u16; n];
            distances(Kernel::Portable, &q, &codes, &mut a);
            distances(Kernel::detect(), &q, &codes, &mut b);
            assert_eq!(a, b);
            for i in 0..n {
                let want: u32 = (0..words)
                    .map(|w| (q[w] ^ codes[i * words + w]).count_ones())
                    .sum();
                assert_eq!(a[i] as u32, want);
            }
        }
        // Hand-computed: 0b1011 vs 0b0110 differ in bits 0, 2, 3.
        let mut d = [0u16];
        distances(Kernel::Portable, &[0b1011], &[0b0110], &mut d);
        assert_eq!(d[0], 3);
    }
}
