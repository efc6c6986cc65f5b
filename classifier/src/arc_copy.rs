//! Copies of shared slices of plain values, made with one `memcpy`.
#![allow(unsafe_code)]

use std::sync::Arc;

/// An unshared copy of `src` in a new `Arc`. `Arc::<[T]>::from(&[T])` clones
/// element by element; index updates copy a leaf's slots (kilobytes) per key, so
/// the copy is one block move here.
pub(crate) fn arc_copy<T: Copy>(src: &[T]) -> Arc<[T]> {
    let mut copy = Arc::<[T]>::new_uninit_slice(src.len());
    match Arc::get_mut(&mut copy) {
        Some(dst) => {
            // SAFETY: `dst` was made with `src.len()` elements of `T` and is a new
            // allocation, so the two do not overlap; `T: Copy`, so a bitwise copy
            // is a valid value, and after it every element is initialised.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    dst.as_mut_ptr().cast::<T>(),
                    src.len(),
                );
                copy.assume_init()
            }
        }
        // A new `Arc` is never shared; this arm only keeps the function total.
        None => Arc::from(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_the_same_values_apart_from_the_original() {
        let original: Arc<[(u32, u64)]> = Arc::from(vec![(1, 2), (3, 4), (5, 6)]);
        let mut copy = arc_copy(&original);
        assert_eq!(&*copy, &*original);
        Arc::get_mut(&mut copy).expect("unshared")[1] = (7, 8);
        assert_eq!(&*original, &[(1, 2), (3, 4), (5, 6)]);
        assert_eq!(&*copy, &[(1, 2), (7, 8), (5, 6)]);
        assert!(arc_copy::<u8>(&[]).is_empty());
    }
}
