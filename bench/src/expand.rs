//! Calico policy expanded into IPv4 5-tuple entries, the form ACL engines take
//! (rte_acl's contexts, VPP's ACL plugin): every rule × its source members ×
//! destination members × port ranges, named ports as `/32` + port entries. An
//! endpoint's program in one direction is a list of *segments* (the allow-from-host
//! rule, each tier with policies for the direction, each profile): allow/deny decide,
//! `pass` or no match moves to the next segment, a tier's end-of-tier drop is a
//! catch-all deny at its end, and after the last segment the packet is dropped.
//! `log` rules are left out (they do not change the verdict).
//!
//! Criteria an ACL cannot express without a complement expansion of IP sets (negated
//! IP sets, negated ports or protocols, service sets, several IP sets that must all
//! hold, ICMP negations) make a program unexpressible: callers count and skip it,
//! never approximate it. The generated workloads use none of them. IPv6 rules expand
//! to nothing (the generated clusters are IPv4-only).

use std::net::IpAddr;

use capo_policy::{
    Action, Cidr, Direction, IpFamily, Member, Rule, SideMatch, State, Verdict, WorkloadKey,
};

/// What an entry's userdata stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Allow,
    Deny,
    Pass,
}

/// An IPv4 prefix as (address, length).
pub(crate) type P4 = (u32, u8);

pub(crate) const ANY: P4 = (0, 0);

/// One 5-tuple entry: protocol, source, destination, source and destination
/// port ranges (ICMP: type and code ranges).
pub(crate) type Entry = (Option<u8>, P4, P4, (u16, u16), (u16, u16));

fn v4(c: &Cidr) -> Option<P4> {
    match c.net().addr() {
        IpAddr::V4(a) => Some((u32::from(a), c.prefix_len())),
        IpAddr::V6(_) => None,
    }
}

fn range_of(p: P4) -> (u64, u64) {
    let host = 32 - u32::from(p.1);
    let size = 1u64 << host;
    let start = u64::from(p.0) & !(size - 1);
    (start, start + size - 1)
}

/// The prefixes covering [lo, hi].
fn range_to_prefixes(mut lo: u64, hi: u64, out: &mut Vec<P4>) {
    while lo <= hi {
        let mut len = 32u32;
        while len > 0 {
            let size = 1u64 << (32 - (len - 1));
            if lo % size != 0 || lo + size - 1 > hi {
                break;
            }
            len -= 1;
        }
        out.push((lo as u32, len as u8));
        lo += 1u64 << (32 - len);
    }
}

/// Addresses of one side: `None` when rte_acl cannot express it.
fn side_addrs(state: &State, side: &SideMatch) -> Option<Vec<P4>> {
    if !side.not_ip_sets.is_empty() || side.ip_sets.len() > 1 {
        return None;
    }
    let mut pos: Vec<P4> = Vec::new();
    let has_pos = !side.nets.is_empty() || !side.ip_sets.is_empty();
    if !side.nets.is_empty() && !side.ip_sets.is_empty() {
        return None;
    }
    pos.extend(side.nets.iter().filter_map(v4));
    if let Some(id) = side.ip_sets.first() {
        let set = state.ipsets().get(id)?;
        for m in set.members() {
            if let Member::Net(c) = m {
                pos.extend(v4(c));
            }
        }
    }
    if has_pos && pos.is_empty() {
        return Some(Vec::new()); // never matches IPv4
    }
    let neg: Vec<P4> = side.not_nets.iter().filter_map(v4).collect();
    if neg.is_empty() {
        if !has_pos {
            pos.push(ANY);
        }
        return Some(pos);
    }
    // Complement of the negated prefixes (within `pos` when there is one).
    let mut gaps: Vec<(u64, u64)> = neg.iter().map(|p| range_of(*p)).collect();
    gaps.sort_unstable();
    let mut allowed = Vec::new();
    let mut next = 0u64;
    for (a, b) in gaps {
        if a > next {
            range_to_prefixes(next, a - 1, &mut allowed);
        }
        next = next.max(b + 1);
    }
    if next <= u64::from(u32::MAX) {
        range_to_prefixes(next, u64::from(u32::MAX), &mut allowed);
    }
    if !has_pos {
        return Some(allowed);
    }
    // Keep positive prefixes wholly outside every negated one; a partial
    // overlap would need splitting, which no workload needs.
    let mut kept = Vec::new();
    for p in pos {
        let (a, b) = range_of(p);
        let inside = neg.iter().any(|n| {
            let (x, y) = range_of(*n);
            a >= x && b <= y
        });
        let overlaps = neg.iter().any(|n| {
            let (x, y) = range_of(*n);
            a <= y && x <= b
        });
        if overlaps && !inside {
            return None;
        }
        if !overlaps {
            kept.push(p);
        }
    }
    Some(kept)
}

/// Port alternatives of one side as ranges; `None` when inexpressible.
fn ports(side: &SideMatch) -> Option<Vec<(u16, u16)>> {
    if !side.not_ports.is_empty() || !side.not_named_port_sets.is_empty() {
        return None;
    }
    if side.ports.is_empty() {
        return Some(if side.named_port_sets.is_empty() {
            vec![(0, u16::MAX)]
        } else {
            Vec::new()
        });
    }
    Some(side.ports.iter().map(|r| (r.first(), r.last())).collect())
}

/// Expands one rule into 5-tuple entries (priority and userdata set later).
pub(crate) fn expand(state: &State, rule: &Rule, out: &mut Vec<Entry>) -> bool {
    if rule.not_protocol.is_some()
        || rule.not_icmp.is_some()
        || !rule.dst_ip_port_sets.is_empty()
        || !rule.src.named_port_sets.is_empty()
    {
        return false;
    }
    if rule.family() == Some(IpFamily::V6) {
        return true; // never matches IPv4: no entries
    }
    let proto = rule.protocol.map(|p| p.0);
    let (Some(src), Some(dst)) = (side_addrs(state, &rule.src), side_addrs(state, &rule.dst))
    else {
        return false;
    };
    let (Some(sports), Some(dports)) = (ports(&rule.src), ports(&rule.dst)) else {
        return false;
    };
    let uses_ports = rule.src.uses_ports() || rule.dst.uses_ports();
    if uses_ports && proto.is_none() {
        return false; // ports would be compared with ICMP type/code
    }
    let (sports, dports) = match rule.icmp {
        Some(m) if uses_ports => {
            let _ = m;
            return false;
        }
        Some(m) => (
            vec![(u16::from(m.icmp_type), u16::from(m.icmp_type))],
            vec![m.code.map_or((0, 255), |c| (u16::from(c), u16::from(c)))],
        ),
        None => (sports, dports),
    };
    for s in &src {
        for d in &dst {
            for sp in &sports {
                for dp in &dports {
                    out.push((proto, *s, *d, *sp, *dp));
                }
            }
        }
    }
    // Named ports: each member's address and port, OR-ed with the ranges.
    if !rule.dst.named_port_sets.is_empty() {
        let dst_any =
            rule.dst.nets.is_empty() && rule.dst.ip_sets.is_empty() && rule.dst.not_nets.is_empty();
        if !dst_any {
            return false;
        }
        for id in &rule.dst.named_port_sets {
            let Some(set) = state.ipsets().get(id) else {
                continue;
            };
            for m in set.members() {
                if let Member::IpPort {
                    addr: IpAddr::V4(a),
                    protocol,
                    port,
                } = m
                {
                    if proto.is_some_and(|p| p != protocol.0) {
                        continue;
                    }
                    for s in &src {
                        for sp in &sports {
                            out.push((
                                Some(protocol.0),
                                *s,
                                (u32::from(*a), 32),
                                *sp,
                                (*port, *port),
                            ));
                        }
                    }
                }
            }
        }
    }
    true
}

/// Why a program cannot be expanded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unexpressible {
    #[error("no such workload")]
    NoWorkload,
    #[error("a rule of {0} uses criteria an ACL cannot express")]
    Criteria(String),
}

/// One segment: its rules in order, each an action and its entries.
pub(crate) type Segment = Vec<(Act, Vec<Entry>)>;

/// Appends each rule's action and entries (`log` rules left out); `None` when a rule
/// cannot be expressed.
fn expand_rules(state: &State, rules: &[Rule], out: &mut Segment) -> Option<()> {
    for r in rules {
        let act = match r.action {
            Action::Allow => Act::Allow,
            Action::Deny => Act::Deny,
            Action::Pass => Act::Pass,
            Action::Log => continue,
        };
        let mut e = Vec::new();
        if !expand(state, r, &mut e) {
            return None;
        }
        out.push((act, e));
    }
    Some(())
}

/// The segments of an endpoint's program in direction `dir`.
pub(crate) fn segments(
    state: &State,
    key: &WorkloadKey,
    dir: Direction,
) -> Result<Vec<Segment>, Unexpressible> {
    let wep = state
        .workloads()
        .get(key)
        .ok_or(Unexpressible::NoWorkload)?;
    // Segments in order, each its rules' actions and entries.
    let mut segs: Vec<Vec<(Act, Vec<Entry>)>> = Vec::new();
    if dir == Direction::Ingress {
        let hosts: Vec<_> = state
            .local_host_addrs()
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => {
                    Some((None, (u32::from(a), 32), ANY, (0, u16::MAX), (0, u16::MAX)))
                }
                IpAddr::V6(_) => None,
            })
            .collect();
        segs.push(vec![(Act::Allow, hosts)]);
    }
    for tier in &wep.tiers {
        let keys = tier.policies(dir);
        if keys.is_empty() {
            continue;
        }
        let mut rules = Vec::new();
        for k in keys.iter().filter(|k| !k.is_staged()) {
            let Some(p) = state.policies().get(k) else {
                continue;
            };
            expand_rules(state, p.rules(dir), &mut rules)
                .ok_or_else(|| Unexpressible::Criteria(format!("policy {}", k.name)))?;
        }
        let end_drop = tier.drops_at_end(dir);
        if end_drop {
            rules.push((
                Act::Deny,
                vec![(None, ANY, ANY, (0, u16::MAX), (0, u16::MAX))],
            ));
        }
        segs.push(rules);
    }
    for name in &wep.profile_ids {
        let Some(p) = state.profiles().get(name) else {
            continue;
        };
        let mut rules = Vec::new();
        expand_rules(state, p.rules(dir), &mut rules)
            .ok_or_else(|| Unexpressible::Criteria(format!("profile {name}")))?;
        segs.push(rules);
    }
    Ok(segs)
}

/// One entry of a first-match list: the verdict of the first entry a packet matches.
pub(crate) type Ace = (Verdict, Entry);

fn meet_prefix(a: P4, b: P4) -> Option<P4> {
    let (wide, narrow) = if a.1 <= b.1 { (a, b) } else { (b, a) };
    let mask = if wide.1 == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(wide.1))
    };
    (narrow.0 & mask == wide.0 & mask).then_some(narrow)
}

fn meet_range(a: (u16, u16), b: (u16, u16)) -> Option<(u16, u16)> {
    let r = (a.0.max(b.0), a.1.min(b.1));
    (r.0 <= r.1).then_some(r)
}

/// The packets both entries match, as one entry (`None`: none).
pub(crate) fn meet(a: &Entry, b: &Entry) -> Option<Entry> {
    let proto = match (a.0, b.0) {
        (Some(x), Some(y)) if x != y => return None,
        (x, y) => x.or(y),
    };
    Some((
        proto,
        meet_prefix(a.1, b.1)?,
        meet_prefix(a.2, b.2)?,
        meet_range(a.3, b.3)?,
        meet_range(a.4, b.4)?,
    ))
}

const CATCH_ALL: Entry = (None, ANY, ANY, (0, u16::MAX), (0, u16::MAX));

/// The segments as one first-match list with the same verdict for every packet, for
/// engines without categories (VPP's ACL plugin): segment by segment; a `pass` entry
/// becomes, in its place, its intersection with every entry of the list that follows
/// its segment; a catch-all ends the list; the last entry denies everything.
pub(crate) fn flatten(segs: &[Segment]) -> Vec<Ace> {
    // Built from the last segment backwards: `tail` is the list from segment i on.
    let mut tail: Vec<Ace> = vec![(Verdict::Deny, CATCH_ALL)];
    for seg in segs.iter().rev() {
        let mut list = Vec::new();
        'rules: for (act, entries) in seg {
            for e in entries {
                match act {
                    Act::Allow | Act::Deny => {
                        let v = if *act == Act::Allow {
                            Verdict::Allow
                        } else {
                            Verdict::Deny
                        };
                        list.push((v, *e));
                        if *e == CATCH_ALL {
                            break 'rules;
                        }
                    }
                    Act::Pass => {
                        list.extend(tail.iter().filter_map(|(v, t)| Some((*v, meet(e, t)?))));
                        if *e == CATCH_ALL {
                            break 'rules;
                        }
                    }
                }
            }
        }
        if list.last().is_none_or(|(_, e)| *e != CATCH_ALL) {
            list.extend(tail.iter().copied());
        }
        tail = list;
    }
    tail
}

#[cfg(test)]
/// Whether `e` matches an IPv4 packet (protocol, addresses, ports or ICMP type/code).
pub(crate) fn matches(e: &Entry, proto: u8, src: u32, dst: u32, p0: u16, p1: u16) -> bool {
    let inside = |p: P4, a: u32| meet_prefix(p, (a, 32)).is_some();
    e.0.is_none_or(|x| x == proto)
        && inside(e.1, src)
        && inside(e.2, dst)
        && (e.3 .0..=e.3 .1).contains(&p0)
        && (e.4 .0..=e.4 .1).contains(&p1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{generate, Kind};

    #[test]
    fn meets() {
        let a: Entry = (Some(6), (0x0a00_0000, 8), ANY, (0, u16::MAX), (80, 90));
        let b: Entry = (None, (0x0a01_0203, 32), (0x0b00_0000, 8), (5, 5), (85, 100));
        assert_eq!(
            meet(&a, &b),
            Some((
                Some(6),
                (0x0a01_0203, 32),
                (0x0b00_0000, 8),
                (5, 5),
                (85, 90)
            ))
        );
        let c: Entry = (Some(17), ANY, ANY, (0, u16::MAX), (0, u16::MAX));
        assert_eq!(meet(&a, &c), None);
        let d: Entry = (None, (0x0b00_0000, 8), ANY, (0, u16::MAX), (0, u16::MAX));
        assert_eq!(meet(&a, &d), None);
    }

    /// The flattened list decides every W-k8s packet as the reference evaluator does
    /// (programs with pass rules included: the security tier has them).
    #[test]
    fn flattened_programs_match_the_reference() {
        let w = generate(Kind::K8s);
        let (state, _) = w.state();
        let mut lists = std::collections::HashMap::new();
        let mut checked = 0;
        let mut passes = 0;
        for (key, dir, pkt) in w.packets.iter().take(4000) {
            let list = lists.entry((key.clone(), *dir)).or_insert_with(|| {
                let segs = segments(&state, key, *dir).unwrap();
                passes += segs
                    .iter()
                    .flatten()
                    .filter(|(a, _)| *a == Act::Pass)
                    .count();
                flatten(&segs)
            });
            let (IpAddr::V4(s), IpAddr::V4(d)) = (pkt.src, pkt.dst) else {
                continue;
            };
            let (p0, p1) = match pkt.l4 {
                capo_policy::L4::Ports { src, dst } => (src, dst),
                capo_policy::L4::Icmp { icmp_type, code } => {
                    (u16::from(icmp_type), u16::from(code))
                }
                capo_policy::L4::None => (0, 0),
            };
            let got = list
                .iter()
                .find(|(_, e)| matches(e, pkt.protocol.0, u32::from(s), u32::from(d), p0, p1))
                .map(|(v, _)| *v);
            let want =
                capo_policy::eval::evaluate_workload(&state, key, *dir, pkt).map(|o| o.verdict);
            assert_eq!(got, want, "{key:?} {dir:?} {pkt:?}");
            checked += 1;
        }
        assert!(checked > 3000, "{checked} packets checked");
        assert!(passes > 0, "no pass rule exercised");
    }
}
