//! Which mapping holds VPP's main heap, to ask the kernel for transparent huge
//! pages on it (`main-heap-huge-pages`, on by default).
//!
//! The programs and the address index are allocated from VPP's main heap (VPP's
//! `malloc` serves the plugin's allocations). A first packet reads a few lines of
//! them at random among tens of MiB; on 4 KiB pages most of those reads also miss
//! the TLB. VPP maps the heap as one private anonymous region (with
//! `main-heap-page-size 4k`, its default), which `madvise(MADV_HUGEPAGE)` lets the
//! kernel back with 2 MiB pages where the THP mode is `madvise` or `always`. A heap
//! already on hugetlbfs pages (`main-heap-page-size 2m`) is left alone.

use capo_heap::maps::Mapping;

/// Whether the heap's mapping is one to advise: private anonymous memory; the
/// reason otherwise (a hugetlbfs heap is a file mapping).
pub fn advisable(heap: &Mapping<'_>) -> Result<(), String> {
    if !heap.private_rw {
        return Err(format!(
            "VPP's main heap ({} MiB at {:#x}) is not private writable memory",
            heap.len() >> 20,
            heap.start
        ));
    }
    if !heap.path.is_empty() {
        return Err(format!(
            "VPP's main heap ({} MiB at {:#x}) maps {}: on hugetlbfs pages already, or not anonymous memory",
            heap.len() >> 20,
            heap.start,
            heap.path
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capo_heap::maps::mapping_holding;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fe:01 1234 /opt/vpp/bin/vpp
55d0c2000000-55d0c2400000 rw-p 00000000 00:00 0                          [heap]
7f14e0200000-7f1560200000 rw-p 00000000 00:00 0 
7f1560200000-7f1560400000 rw-s 00000000 00:01 77 /memfd:main heap (deleted)
7f1570000000-7f1570001000 r-xp 00000000 fe:01 99 /opt/vpp/lib/libvppinfra.so.26.06
";

    #[test]
    fn the_heap_is_the_anonymous_mapping_holding_an_allocation() {
        let heap = mapping_holding(MAPS, 0x7f15_0000_1234).unwrap();
        assert_eq!(heap.start, 0x7f14_e020_0000);
        assert_eq!(heap.len(), 2048 << 20);
        assert!(heap.private_rw && heap.path.is_empty());
        assert_eq!(advisable(&heap), Ok(()));
        // The first address is in, the end is not.
        assert_eq!(mapping_holding(MAPS, 0x7f14_e020_0000), Some(heap.clone()));
        assert_ne!(mapping_holding(MAPS, 0x7f15_6020_0000), Some(heap));
        assert_eq!(mapping_holding(MAPS, 0x1000), None);
    }

    #[test]
    fn file_and_shared_mappings_are_not_advised() {
        let memfd = mapping_holding(MAPS, 0x7f15_6030_0000).unwrap();
        assert!(!memfd.private_rw);
        assert_eq!(memfd.path, "/memfd:main heap (deleted)");
        assert!(advisable(&memfd).unwrap_err().contains("not private"));
        let code = mapping_holding(MAPS, 0x7f15_7000_0010).unwrap();
        assert!(advisable(&code).is_err());
        let brk = mapping_holding(MAPS, 0x55d0_c210_0000).unwrap();
        assert!(advisable(&brk).unwrap_err().contains("[heap]"));
    }
}
