//! Interval sets over addresses and ports, and their split into aligned prefixes.
//!
//! Rules are lowered through set algebra: an IP set becomes an interval set (members
//! merged, so overlapping CIDRs collapse), `all listed sets` is an intersection,
//! negations are differences, and the result splits back into the fewest **disjoint**
//! aligned prefixes (the same greedy split turns a port range into value/mask pairs:
//! `1024-65535` → 6, `1-65534` → 30).

use std::net::IpAddr;

use capo_policy::{Cidr, IpFamily, PortRange};

/// Sorted, disjoint, non-adjacent inclusive intervals of `u128` values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Intervals(Vec<(u128, u128)>);

impl Intervals {
    /// No value.
    pub fn empty() -> Self {
        Intervals(Vec::new())
    }

    /// Every value in `0..=max`.
    pub fn full(max: u128) -> Self {
        Intervals(vec![(0, max)])
    }

    /// The union of arbitrary intervals (`lo <= hi` each).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u128, u128)>) -> Self {
        let mut v: Vec<(u128, u128)> = ranges.into_iter().filter(|(l, h)| l <= h).collect();
        v.sort_unstable();
        let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
        for (l, h) in v {
            match out.last_mut() {
                Some(last) if l <= last.1.saturating_add(1) => last.1 = last.1.max(h),
                _ => out.push((l, h)),
            }
        }
        Intervals(out)
    }

    /// The intervals.
    pub fn ranges(&self) -> &[(u128, u128)] {
        &self.0
    }

    /// True when no value is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u128) -> bool {
        let i = self.0.partition_point(|(_, h)| *h < x);
        self.0.get(i).is_some_and(|(l, _)| *l <= x)
    }

    /// Values in both.
    pub fn intersect(&self, other: &Intervals) -> Intervals {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            let lo = a.0.max(b.0);
            let hi = a.1.min(b.1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Intervals(out)
    }

    /// Whether the sets share a value.
    pub fn overlaps(&self, other: &Intervals) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            if a.0.max(b.0) <= a.1.min(b.1) {
                return true;
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        false
    }

    /// Values in `self` but not in `other`.
    pub fn difference(&self, other: &Intervals) -> Intervals {
        let mut out = Vec::new();
        let mut j = 0;
        for &(l, h) in &self.0 {
            let mut cur = l;
            let mut done = false;
            while j < other.0.len() && other.0[j].1 < cur {
                j += 1;
            }
            let mut k = j;
            while k < other.0.len() && other.0[k].0 <= h {
                let (bl, bh) = other.0[k];
                if bl > cur {
                    out.push((cur, bl - 1));
                }
                if bh >= h {
                    done = true;
                    break;
                }
                cur = bh + 1;
                k += 1;
            }
            if !done {
                out.push((cur, h));
            }
        }
        Intervals(out)
    }

    /// The fewest aligned prefixes covering exactly the set, as `(value, prefix_len)`
    /// over `width` bits; they are pairwise disjoint.
    pub fn prefixes(&self, width: u32) -> Vec<(u128, u8)> {
        let mut out = Vec::new();
        for &(l, h) in &self.0 {
            split_range(l, h, width, &mut out);
        }
        out
    }

    /// `self.prefixes(width).len()`, without building the list.
    pub fn prefix_count(&self, width: u32) -> u64 {
        let mut n = 0u64;
        for &(l, h) in &self.0 {
            let mut cur = l;
            loop {
                let len = largest_block(cur, h, width);
                n += 1;
                let size_m1 = block_size_minus_one(len, width);
                if cur.checked_add(size_m1).is_none_or(|e| e >= h) {
                    break;
                }
                cur += size_m1 + 1;
            }
        }
        n
    }

    /// Number of values in the set, saturating.
    pub fn cardinality(&self) -> u128 {
        self.0.iter().fold(0u128, |acc, (l, h)| {
            acc.saturating_add((h - l).saturating_add(1))
        })
    }
}

fn block_size_minus_one(len: u32, width: u32) -> u128 {
    let host_bits = width - len;
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// Prefix length of the largest aligned block starting at `cur` and ending at or
/// before `hi`.
fn largest_block(cur: u128, hi: u128, width: u32) -> u32 {
    let mut len = width - cur.trailing_zeros().min(width);
    loop {
        let size_m1 = block_size_minus_one(len, width);
        if cur.checked_add(size_m1).is_some_and(|e| e <= hi) {
            return len;
        }
        len += 1;
    }
}

fn split_range(lo: u128, hi: u128, width: u32, out: &mut Vec<(u128, u8)>) {
    let mut cur = lo;
    loop {
        let len = largest_block(cur, hi, width);
        out.push((cur, len as u8));
        let size_m1 = block_size_minus_one(len, width);
        match cur.checked_add(size_m1) {
            Some(end) if end < hi => cur = end + 1,
            _ => break,
        }
    }
}

/// Largest IPv4 value.
pub const V4_MAX: u128 = u32::MAX as u128;

/// Addresses of both families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AddrSet {
    /// IPv4 addresses.
    pub v4: Intervals,
    /// IPv6 addresses.
    pub v6: Intervals,
}

impl AddrSet {
    /// Every address.
    pub fn any() -> Self {
        AddrSet {
            v4: Intervals::full(V4_MAX),
            v6: Intervals::full(u128::MAX),
        }
    }

    /// No address.
    pub fn none() -> Self {
        AddrSet::default()
    }

    /// The union of prefixes.
    pub fn from_cidrs<'a>(cidrs: impl IntoIterator<Item = &'a Cidr>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for c in cidrs {
            let (lo, hi, is_v4) = cidr_range(c);
            if is_v4 {
                v4.push((lo, hi));
            } else {
                v6.push((lo, hi));
            }
        }
        AddrSet {
            v4: Intervals::from_ranges(v4),
            v6: Intervals::from_ranges(v6),
        }
    }

    /// Keeps one family only.
    pub fn restrict(&self, family: Option<IpFamily>) -> Self {
        match family {
            None => self.clone(),
            Some(IpFamily::V4) => AddrSet {
                v4: self.v4.clone(),
                v6: Intervals::empty(),
            },
            Some(IpFamily::V6) => AddrSet {
                v4: Intervals::empty(),
                v6: self.v6.clone(),
            },
        }
    }

    /// Intersection.
    pub fn intersect(&self, o: &AddrSet) -> AddrSet {
        AddrSet {
            v4: self.v4.intersect(&o.v4),
            v6: self.v6.intersect(&o.v6),
        }
    }

    /// Difference.
    pub fn difference(&self, o: &AddrSet) -> AddrSet {
        AddrSet {
            v4: self.v4.difference(&o.v4),
            v6: self.v6.difference(&o.v6),
        }
    }

    /// Union.
    pub fn union(&self, o: &AddrSet) -> AddrSet {
        AddrSet {
            v4: Intervals::from_ranges(self.v4.ranges().iter().chain(o.v4.ranges()).copied()),
            v6: Intervals::from_ranges(self.v6.ranges().iter().chain(o.v6.ranges()).copied()),
        }
    }

    /// True when empty in both families.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: &IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.contains(u32::from(*a).into()),
            IpAddr::V6(a) => self.v6.contains(u128::from(*a)),
        }
    }

    /// The family's intervals.
    pub fn family(&self, f: IpFamily) -> &Intervals {
        match f {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }
}

fn cidr_range(c: &Cidr) -> (u128, u128, bool) {
    match c.net() {
        ipnet::IpNet::V4(n) => (
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
            true,
        ),
        ipnet::IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), false),
    }
}

/// Ports as an interval set (`0..=65535`).
pub fn ports_from_ranges(ranges: &[PortRange]) -> Intervals {
    Intervals::from_ranges(
        ranges
            .iter()
            .map(|r| (u128::from(r.first()), u128::from(r.last()))),
    )
}

/// Every port.
pub fn all_ports() -> Intervals {
    Intervals::full(u128::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(l: u128, h: u128) -> Intervals {
        Intervals::from_ranges([(l, h)])
    }

    #[test]
    fn test_port_range_prefix_counts_match_the_fact_sheet() {
        for (l, h, n) in [
            (0, 65535, 1),
            (1024, 65535, 6),
            (1, 65535, 16),
            (1, 65534, 30),
            (8000, 8999, 6),
            (1000, 2000, 8),
            (49152, 65535, 1),
        ] {
            let s = ports(l, h);
            assert_eq!(s.prefixes(16).len(), n, "{l}-{h}");
            assert_eq!(s.prefix_count(16), n as u64, "{l}-{h}");
            // The prefixes cover exactly the range.
            let covered: u128 = s
                .prefixes(16)
                .iter()
                .map(|(_, len)| 1u128 << (16 - u32::from(*len)))
                .sum();
            assert_eq!(covered, h - l + 1);
        }
    }

    #[test]
    fn test_set_algebra() {
        let a = Intervals::from_ranges([(0, 10), (5, 20), (30, 40)]);
        assert_eq!(a.ranges(), &[(0, 20), (30, 40)]);
        let b = ports(15, 35);
        assert_eq!(a.intersect(&b).ranges(), &[(15, 20), (30, 35)]);
        assert_eq!(a.difference(&b).ranges(), &[(0, 14), (36, 40)]);
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&ports(21, 29)));
        assert_eq!(Intervals::full(u128::MAX).prefixes(128), vec![(0, 0)]);
        let all_but_one = Intervals::full(u128::MAX).difference(&ports(0, 0));
        assert_eq!(all_but_one.prefixes(128).len(), 128);
    }

    #[test]
    fn test_cidrs_merge_into_disjoint_prefixes() {
        let cidrs: Vec<Cidr> = ["10.0.0.0/25", "10.0.0.128/25", "10.0.0.7/32", "fd00::/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = AddrSet::from_cidrs(&cidrs);
        assert_eq!(s.v4.prefixes(32), vec![(0x0a00_0000, 24)]);
        assert_eq!(s.v6.prefix_count(128), 1);
        assert!(s.contains(&"10.0.0.99".parse().unwrap()));
    }
}
