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

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// Readable and writable, private.
    pub private_rw: bool,
    /// The file or pseudo-file mapped (`/memfd:…`, `[heap]`), empty for anonymous
    /// memory.
    pub path: String,
}

impl Mapping {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether it is empty (never, for a line the kernel wrote).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The mapping of `maps` (the text of `/proc/self/maps`) holding `address`.
pub fn mapping_holding(maps: &str, address: usize) -> Option<Mapping> {
    maps.lines()
        .filter_map(parse_line)
        .find(|m| (m.start..m.end).contains(&address))
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    // offset, device and inode, then the path if any, which may hold spaces.
    let path = after_fields(line, 5).to_string();
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        private_rw: perms.starts_with("rw") && perms.ends_with('p'),
        path,
    })
}

/// What follows the first `n` whitespace-separated fields of `line`, trimmed.
fn after_fields(line: &str, n: usize) -> &str {
    let mut rest = line;
    for _ in 0..n {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
    }
    rest.trim()
}

/// Whether the heap's mapping is one to advise: private anonymous memory; the
/// reason otherwise (a hugetlbfs heap is a file mapping).
pub fn advisable(heap: &Mapping) -> Result<(), String> {
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
