//! Every index returns what a naive scan returns, ties by (distance, id), through adds and
//! removes.

use medret_index::hamming::naive_search;
use medret_index::popcount::Kernel;
use medret_index::{FloatIndex, HammingIndex, Metric, MultiIndex};
use proptest::prelude::*;

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s
}

/// A code of `bits` bits; only the low `bias` bits are random, so that distances collide
/// (ties) and the clusters exercise multi-index hashing's buckets.
fn code(s: &mut u64, bits: usize, bias: usize) -> Vec<u64> {
    let words = bits.div_ceil(64);
    let mut c: Vec<u64> = (0..words).map(|_| lcg(s)).collect();
    for (w, x) in c.iter_mut().enumerate() {
        let lo = w * 64;
        let keep = bias.min(bits).saturating_sub(lo).min(64);
        *x &= if keep == 64 {
            u64::MAX
        } else {
            (1u64 << keep) - 1
        };
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn hamming_and_mih_equal_the_scan(
        bits_bytes in 1usize..=20,
        n in 0usize..400,
        k in 0usize..50,
        bias in 4usize..160,
        seed in any::<u64>(),
        sub in 4usize..20,
        removals in 0usize..40,
    ) {
        let bits = bits_bytes * 8;
        let mut s = seed;
        let mut scan = HammingIndex::new(bits).unwrap();
        let mut portable = HammingIndex::new(bits).unwrap().with_kernel(Kernel::Portable);
        // POPCNT explicitly too, where the detected kernel is a wider one.
        let popcnt_kernel = if Kernel::detect() == Kernel::Portable { Kernel::Portable } else { Kernel::Popcnt };
        let mut popcnt = HammingIndex::new(bits).unwrap().with_kernel(popcnt_kernel);
        let mut mih = MultiIndex::new(bits, sub.min(bits)).unwrap();
        // Ids out of insertion order, so the tie rule is not insertion order.
        for i in 0..n {
            let id = (i as u64 * 7919) % 10_007;
            let c = code(&mut s, bits, bias);
            scan.add(id, &c).unwrap();
            portable.add(id, &c).unwrap();
            popcnt.add(id, &c).unwrap();
            mih.add(id, &c).unwrap();
        }
        for _ in 0..removals.min(n) {
            let id = scan.ids()[(lcg(&mut s) as usize) % scan.len()];
            prop_assert!(scan.remove(id));
            prop_assert!(portable.remove(id));
            prop_assert!(popcnt.remove(id));
            prop_assert!(mih.remove(id));
            prop_assert!(!scan.remove(id));
        }
        for _ in 0..3 {
            let q = code(&mut s, bits, bias);
            let want = naive_search(&scan, &q, k);
            prop_assert_eq!(&scan.search(&q, k).unwrap(), &want);
            prop_assert_eq!(&portable.search(&q, k).unwrap(), &want);
            prop_assert_eq!(&popcnt.search(&q, k).unwrap(), &want);
            prop_assert_eq!(&mih.search(&q, k).unwrap(), &want);
            // Radius search: all within r, same order.
            let r = (lcg(&mut s) % (bits as u64 + 1)) as u32;
            let all = naive_search(&scan, &q, usize::MAX);
            let within: Vec<_> = all.into_iter().filter(|h| h.distance <= r).collect();
            prop_assert_eq!(scan.radius(&q, r).unwrap(), within);
        }
    }

    #[test]
    fn float_top_k_equals_the_scan(
        dim in 1usize..40,
        n in 0usize..300,
        k in 0usize..30,
        seed in any::<u64>(),
        cosine in any::<bool>(),
        removals in 0usize..30,
    ) {
        let metric = if cosine { Metric::Cosine } else { Metric::L2 };
        let mut s = seed;
        // Few distinct values, so ties are common.
        let f = |s: &mut u64| ((lcg(s) >> 40) % 5) as f32 - 2.0;
        let mut idx = FloatIndex::new(dim, metric).unwrap();
        for i in 0..n {
            let v: Vec<f32> = (0..dim).map(|_| f(&mut s)).collect();
            idx.add((i as u64 * 31) % 1009, &v).unwrap();
        }
        for j in 0..removals.min(n) {
            idx.remove((j as u64 * 31 * 3) % 1009);
        }
        let q: Vec<f32> = (0..dim).map(|_| f(&mut s)).collect();
        prop_assert_eq!(idx.search(&q, k).unwrap(), idx.naive_search(&q, k).unwrap());
    }
}

#[test]
fn counting_selection_breaks_ties_by_id() {
    let mut idx = HammingIndex::new(8).unwrap();
    // Distances to query 0: id 9 -> 1, id 3 -> 1, id 5 -> 0, id 1 -> 2.
    idx.add(9, &[0b0000_0001]).unwrap();
    idx.add(3, &[0b0000_0010]).unwrap();
    idx.add(5, &[0]).unwrap();
    idx.add(1, &[0b0000_0011]).unwrap();
    let hits = idx.search(&[0], 2).unwrap();
    let got: Vec<(u32, u64)> = hits.iter().map(|h| (h.distance, h.id)).collect();
    assert_eq!(got, vec![(0, 5), (1, 3)]);
    let all: Vec<u64> = idx.radius(&[0], 1).unwrap().iter().map(|h| h.id).collect();
    assert_eq!(all, vec![5, 3, 9]);
}

#[test]
fn mih_is_exact_on_a_larger_random_set() {
    // 64-bit random codes, 20k of them: the regime MIH is for (16-bit substrings).
    let mut s = 42u64;
    let mut scan = HammingIndex::new(64).unwrap();
    let mut mih = MultiIndex::new(64, MultiIndex::substring_bits_for(64, 20_000, 100)).unwrap();
    for id in 0..20_000u64 {
        let c = [lcg(&mut s)];
        scan.add(id, &c).unwrap();
        mih.add(id, &c).unwrap();
    }
    for _ in 0..20 {
        let q = [lcg(&mut s)];
        let want = naive_search(&scan, &q, 100);
        assert_eq!(scan.search(&q, 100).unwrap(), want);
        assert_eq!(mih.search(&q, 100).unwrap(), want);
    }
    // Many blocks with heavy ties (12 random bits): the threshold shared between blocks
    // must not drop a tied code.
    let mut tied = HammingIndex::new(64).unwrap();
    for id in 0..70_000u64 {
        tied.add((id * 7) % 70_001, &[lcg(&mut s) & 0xfff]).unwrap();
    }
    for k in [1, 100, 5000] {
        let q = [lcg(&mut s) & 0xfff];
        assert_eq!(
            tied.search(&q, k).unwrap(),
            naive_search(&tied, &q, k),
            "k = {k}"
        );
    }
}

#[test]
fn bad_codes_are_refused_and_change_nothing() {
    let mut idx = HammingIndex::new(16).unwrap();
    assert!(HammingIndex::new(12).is_err());
    assert!(HammingIndex::new(1032).is_err());
    idx.add(1, &[0xffff]).unwrap();
    // Bits beyond the code length.
    let e = idx.add(2, &[0x1_0000]).unwrap_err();
    assert!(e.to_string().contains("16-bit"), "{e}");
    let e = idx.add(1, &[0]).unwrap_err();
    assert!(e.to_string().contains("already"), "{e}");
    assert_eq!(idx.len(), 1);
    assert!(idx.search(&[0, 0], 1).is_err());
    let mut f = FloatIndex::new(3, Metric::Cosine).unwrap();
    assert!(f.add(1, &[1.0, 2.0]).is_err());
    assert!(f.add(1, &[1.0, f32::NAN, 0.0]).is_err());
    assert!(f.is_empty());
}
