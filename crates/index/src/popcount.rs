//! Hamming distance between packed codes with the hardware population count where the CPU
//! has one (detected at run time), and a portable fallback that gives identical results.
//!
//! Bit order: bit `i` of a code is bit `i % 64` of word `i / 64`, which is the
//! little-endian byte order of `medret_eval::codes::pack_bytes`: byte `j` of a `.npy` code
//! row holds bits `8j..8j+8`, least significant first.

/// Which implementation [`distances`] uses on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 `VPOPCNTQ`: eight 64-bit codes per instruction (64-bit codes; longer codes
    /// use `POPCNT`).
    Avx512,
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
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
            {
                return Kernel::Avx512;
            }
            if std::arch::is_x86_feature_detected!("popcnt") {
                return Kernel::Popcnt;
            }
        }
        Kernel::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512-vpopcntdq",
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

/// One pass of counting selection over `codes`: returns `(distance, position)` of every
/// code whose distance is at most the threshold the pass ends with, which is at least the
/// k-th smallest distance; so the k nearest (with all their ties) are among them.
///
/// The threshold starts at the code length and drops each time `k` admitted codes lie
/// strictly below it. Distances are small integers, so a histogram of admitted codes is
/// enough to track that count; after the first few hundred codes almost nothing is
/// admitted and the loop is a load, an XOR, a popcount and a compare per code.
#[inline(always)]
fn select_words<const W: usize>(
    query: &[u64],
    codes: &[u64],
    k: usize,
    bits: usize,
    start: u16,
    pop: impl Fn(u64) -> u32 + Copy,
) -> Selected {
    let q: [u64; W] = query.try_into().expect("query length");
    let mut s = Selector::new(k, bits, start);
    // Four codes per step: four independent popcount chains, and one well-predicted
    // branch for the common case where none of the four is admitted.
    let mut quads = codes.chunks_exact(4 * W);
    let mut i = 0u32;
    for c in &mut quads {
        let d0 = dist_words::<W>(&q, &c[..W], pop);
        let d1 = dist_words::<W>(&q, &c[W..2 * W], pop);
        let d2 = dist_words::<W>(&q, &c[2 * W..3 * W], pop);
        let d3 = dist_words::<W>(&q, &c[3 * W..], pop);
        if d0.min(d1).min(d2.min(d3)) <= s.t {
            s.offer(d0, i);
            s.offer(d1, i + 1);
            s.offer(d2, i + 2);
            s.offer(d3, i + 3);
        }
        i += 4;
    }
    for c in quads.remainder().chunks_exact(W) {
        s.offer(dist_words::<W>(&q, c, pop), i);
        i += 1;
    }
    s.finish()
}

/// `(distance, position)` of the selected codes, and the pass's final threshold: at
/// least k codes of the block lie at or below it (when the block has k codes).
pub type Selected = (Vec<(u16, u32)>, u16);

/// The threshold state of one selection pass.
struct Selector {
    hist: Vec<u32>,
    t: u16,
    /// Admitted codes with distance < t.
    below: usize,
    k: usize,
    out: Vec<(u16, u32)>,
}

impl Selector {
    fn new(k: usize, bits: usize, start: u16) -> Self {
        Selector {
            hist: vec![0u32; bits + 2],
            t: start.min(bits as u16),
            below: 0,
            k,
            out: Vec::with_capacity(2 * k),
        }
    }

    #[inline(always)]
    fn offer(&mut self, d: u16, i: u32) {
        if d > self.t {
            return;
        }
        self.out.push((d, i));
        self.hist[d as usize] += 1;
        if d < self.t {
            self.below += 1;
            while self.below >= self.k && self.t > 0 {
                self.t -= 1;
                self.below -= self.hist[self.t as usize] as usize;
            }
        }
    }

    /// The admitted codes still within the final threshold, and that threshold.
    fn finish(mut self) -> Selected {
        let t = self.t;
        self.out.retain(|&(d, _)| d <= t);
        (self.out, t)
    }
}

#[inline(always)]
fn select_with(dists: impl Iterator<Item = u16>, k: usize, bits: usize, start: u16) -> Selected {
    let mut s = Selector::new(k, bits, start);
    for (i, d) in dists.enumerate() {
        s.offer(d, i as u32);
    }
    s.finish()
}

#[inline(always)]
fn select_dispatch(
    query: &[u64],
    codes: &[u64],
    k: usize,
    bits: usize,
    start: u16,
    pop: impl Fn(u64) -> u32 + Copy,
) -> Selected {
    match query.len() {
        1 => select_words::<1>(query, codes, k, bits, start, pop),
        2 => select_words::<2>(query, codes, k, bits, start, pop),
        4 => select_words::<4>(query, codes, k, bits, start, pop),
        8 => select_words::<8>(query, codes, k, bits, start, pop),
        16 => select_words::<16>(query, codes, k, bits, start, pop),
        w => select_with(
            codes
                .chunks_exact(w)
                .map(|c| query.iter().zip(c).map(|(a, b)| pop(a ^ b)).sum::<u32>() as u16),
            k,
            bits,
            start,
        ),
    }
}

/// 64-bit codes, eight at a time: XOR with the broadcast query, `VPOPCNTQ`, and one
/// unsigned compare against the threshold; only lanes that pass go through the selector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
fn select_avx512_w1(query: u64, codes: &[u64], k: usize, bits: usize, start: u16) -> Selected {
    use std::arch::x86_64::*;
    let mut s = Selector::new(k, bits, start);
    let q = _mm512_set1_epi64(query as i64);
    let mut blocks = codes.chunks_exact(8);
    let mut i = 0u32;
    for c in &mut blocks {
        // SAFETY: `c` holds eight u64 (64 bytes); the load is unaligned.
        let v = unsafe { _mm512_loadu_si512(c.as_ptr().cast()) };
        let d = _mm512_popcnt_epi64(_mm512_xor_si512(v, q));
        let mask = _mm512_cmple_epu64_mask(d, _mm512_set1_epi64(s.t as i64));
        if mask != 0 {
            let mut lanes = [0u64; 8];
            // SAFETY: `lanes` is 64 bytes.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), d) };
            for (j, &dj) in lanes.iter().enumerate() {
                if mask & (1 << j) != 0 {
                    s.offer(dj as u16, i + j as u32);
                }
            }
        }
        i += 8;
    }
    for &c in blocks.remainder() {
        s.offer((c ^ query).count_ones() as u16, i);
        i += 1;
    }
    s.finish()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn select_popcnt(query: &[u64], codes: &[u64], k: usize, bits: usize, start: u16) -> Selected {
    select_dispatch(query, codes, k, bits, start, |x: u64| x.count_ones())
}

/// Counting selection over one block of codes (see [`select_words`]); `k >= 1`.
pub fn select(
    kernel: Kernel,
    query: &[u64],
    codes: &[u64],
    k: usize,
    bits: usize,
    start: u16,
) -> Selected {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if query.len() == 1 => {
            assert!(
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
            );
            // SAFETY: the CPU supports AVX-512F and VPOPCNTDQ (checked above).
            unsafe { select_avx512_w1(query[0], codes, k, bits, start) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            // SAFETY: AVX-512 implies POPCNT.
            unsafe { select_popcnt(query, codes, k, bits, start) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Popcnt => {
            assert!(std::arch::is_x86_feature_detected!("popcnt"));
            // SAFETY: the CPU supports POPCNT (checked above).
            unsafe { select_popcnt(query, codes, k, bits, start) }
        }
        _ => select_dispatch(query, codes, k, bits, start, popcount_portable),
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
        Kernel::Popcnt | Kernel::Avx512 => {
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
            // Every kernel's selection agrees with the portable one.
            for k in [1usize, 5, 40] {
                let want = select(Kernel::Portable, &q, &codes, k, words * 64, u16::MAX);
                assert_eq!(
                    select(Kernel::detect(), &q, &codes, k, words * 64, u16::MAX),
                    want
                );
            }
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
