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

/// The first set bit at or after `from`, or `usize::MAX` when there is none.
#[inline]
pub(crate) fn first_set_from(bits: &[u64], from: usize) -> usize {
    let mut wi = from / 64;
    let Some(first) = bits.get(wi) else {
        return usize::MAX;
    };
    let mut w = first & (!0u64 << (from % 64));
    loop {
        if w != 0 {
            return wi * 64 + w.trailing_zeros() as usize;
        }
        wi += 1;
        match bits.get(wi) {
            Some(x) => w = *x,
            None => return usize::MAX,
        }
    }
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
}
