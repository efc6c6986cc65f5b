//! The kernel's list of a process's mappings: the lines of `/proc/PID/maps`, which
//! also head each mapping's block in `/proc/PID/smaps`.

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping<'a> {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// Readable and writable, private.
    pub private_rw: bool,
    /// The file or pseudo-file mapped (`/memfd:…`, `[heap]`), empty for anonymous
    /// memory.
    pub path: &'a str,
}

impl Mapping<'_> {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether it is empty (never, for a line the kernel wrote).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    fn holds(&self, address: usize) -> bool {
        (self.start..self.end).contains(&address)
    }
}

/// The mapping of `maps` (the text of `/proc/PID/maps`) holding `address`.
pub fn mapping_holding(maps: &str, address: usize) -> Option<Mapping<'_>> {
    maps.lines()
        .filter_map(parse_line)
        .find(|m| m.holds(address))
}

/// The `VmFlags` of the mapping in `smaps` (the text of `/proc/PID/smaps`) that
/// holds `address`.
pub fn vm_flags_at(smaps: &str, address: usize) -> Option<&str> {
    let mut inside = false;
    for line in smaps.lines() {
        // A mapping's line, then its fields (`Size:`, …, `VmFlags:`).
        if let Some(mapping) = parse_line(line) {
            inside = mapping.holds(address);
        } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
            return Some(flags.trim());
        }
    }
    None
}

/// A mapping's line; none for anything else (an `smaps` field).
fn parse_line(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        private_rw: perms.starts_with("rw") && perms.ends_with('p'),
        // offset, device and inode, then the path if any, which may hold spaces.
        path: after_fields(line, 5),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_flags_are_those_of_the_mapping_holding_the_address() {
        let smaps = "\
7f0000000000-7f0004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
VmFlags: rd wr mr mw me ac hg 
7f0004000000-7f0004001000 r--p 00000000 fe:01 12 /usr/lib/libc.so.6
Size:                  4 kB
VmFlags: rd mr mw me 
";
        assert_eq!(
            vm_flags_at(smaps, 0x7f00_0000_1000),
            Some("rd wr mr mw me ac hg")
        );
        assert_eq!(vm_flags_at(smaps, 0x7f00_0400_0000), Some("rd mr mw me"));
        assert_eq!(vm_flags_at(smaps, 0x1000), None);
    }
}
