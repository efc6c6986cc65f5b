//! Fixed-width rule bitmaps: one bit per rule of a program, in evaluation order.

/// Number of 64-bit words needed for `n` bits.
pub(crate) fn words_for(n: usize) -> usize {
    n.div_ceil(64).max(1)
}

/// Sets bit `i`.
pub(crate) fn set(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1u64 << (i % 64);
    }
}

/// Whether bit `i` is set.
#[cfg(test)]
pub(crate) fn get(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

/// The first set bit in `from..end`, if any.
#[cfg(test)]
pub(crate) fn next_set(bits: &[u64], from: usize, end: usize) -> Option<usize> {
    if from >= end {
        return None;
    }
    let mut wi = from / 64;
    let mut w = bits.get(wi)? & (!0u64 << (from % 64));
    loop {
        if w != 0 {
            let i = wi * 64 + w.trailing_zeros() as usize;
            return (i < end).then_some(i);
        }
        wi += 1;
        if wi * 64 >= end {
            return None;
        }
        w = *bits.get(wi)?;
    }
}

/// The first set bit at or after `from`, or `usize::MAX` when there is none. Runs
/// of empty words (a wide program's candidates are mostly zero) are passed four
/// at a time.
#[inline]
pub(crate) fn first_set_from(bits: &[u64], from: usize) -> usize {
    let mut wi = from / 64;
    let Some(first) = bits.get(wi) else {
        return usize::MAX;
    };
    let w = first & (!0u64 << (from % 64));
    if w != 0 {
        return wi * 64 + w.trailing_zeros() as usize;
    }
    wi += 1;
    let rest = bits.get(wi..).unwrap_or(&[]);
    let mut blocks = rest.chunks_exact(4);
    for block in blocks.by_ref() {
        if block.iter().fold(0, |acc, x| acc | x) != 0 {
            break;
        }
        wi += 4;
    }
    for x in bits.get(wi..).unwrap_or(&[]) {
        if *x != 0 {
            return wi * 64 + x.trailing_zeros() as usize;
        }
        wi += 1;
    }
    usize::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_set_respects_bounds() {
        let mut b = vec![0u64; 3];
        set(&mut b, 3);
        set(&mut b, 64);
        set(&mut b, 130);
        assert_eq!(next_set(&b, 0, 192), Some(3));
        assert_eq!(next_set(&b, 4, 192), Some(64));
        assert_eq!(next_set(&b, 65, 130), None);
        assert_eq!(next_set(&b, 65, 131), Some(130));
        assert_eq!(next_set(&b, 131, 192), None);
        assert!(get(&b, 64) && !get(&b, 65));
        assert_eq!(first_set_from(&b, 0), 3);
        assert_eq!(first_set_from(&b, 4), 64);
        assert_eq!(first_set_from(&b, 131), usize::MAX);
        assert_eq!(first_set_from(&b, 192), usize::MAX);
    }

    proptest::proptest! {
        /// Over wide, mostly empty bitmaps (runs of empty words passed four at a
        /// time), the first set bit from any position is the bit-by-bit answer.
        #[test]
        fn first_set_from_finds_the_next_bit(
            set_bits in proptest::collection::vec(0usize..22 * 64, 0..4),
            from in 0usize..22 * 64 + 70,
            words in 1usize..23,
        ) {
            let mut b = vec![0u64; words];
            for i in &set_bits {
                set(&mut b, *i);
            }
            let want = next_set(&b, from, words * 64).unwrap_or(usize::MAX);
            proptest::prop_assert_eq!(first_set_from(&b, from), want);
        }
    }
}
