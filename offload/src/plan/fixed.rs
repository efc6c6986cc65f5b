//! The rules every groups-mode plan starts with (fragment and source punts; the
//! catch-all comes last) and the entries left for decisions once they are placed.

use std::sync::Arc;

use crate::atom::{expand, ETHER_TYPE_IPV4, ETHER_TYPE_IPV6};
use crate::caps::NicCaps;
use crate::flow::{EthFields, Ipv6Fields, Item, Spec};
use crate::lower::{Match, OffloadProgram};
use crate::mark::max_index;

use super::{PlanConfig, Role};

/// The punts above everything else: fragments (priority 0), then packets from local
/// sources (priority 1). Only groups mode has them; drop-only mode restricts each
/// decision to non-local sources instead.
pub(super) fn fixed_rules(
    program: &OffloadProgram,
    caps: &NicCaps,
    groups: bool,
) -> Vec<(Role, Vec<Item>)> {
    let mut fixed = Vec::new();
    if !groups {
        return fixed;
    }
    for pattern in fragment_patterns(caps) {
        fixed.push((Role::FragmentPunt, pattern));
    }
    let mut from_local = Match::any();
    from_local.src = Arc::new(program.local_sources.clone());
    if let Ok(atoms) = expand(&from_local, caps, u64::from(caps.capacity)) {
        for a in atoms {
            fixed.push((Role::SourcePunt, a.pattern().to_vec()));
        }
    }
    fixed
}

/// Entries left for decisions, exact flows and covers once `fixed` entries (the punts
/// and the catch-all) and the configured reserve are taken, bounded by the mark
/// space; `None` when not even one more fits.
pub(super) fn entry_budget(caps: &NicCaps, cfg: &PlanConfig, fixed: u64) -> Option<u64> {
    if fixed + u64::from(cfg.reserve) + 1 > u64::from(caps.capacity) {
        return None;
    }
    let room = u64::from(caps.capacity)
        .saturating_sub(u64::from(cfg.reserve))
        .saturating_sub(fixed);
    Some(room.min(u64::from(max_index(caps.mark_bits)).saturating_sub(fixed)))
}

/// The fragment punt patterns the device can express.
pub(super) fn fragment_patterns(caps: &NicCaps) -> Vec<Vec<Item>> {
    let eth = |t| {
        Item::Eth(Some(Spec::masked(
            EthFields { ether_type: t },
            EthFields { ether_type: 0xffff },
        )))
    };
    let mut out = Vec::new();
    if caps.ipv4_fragment_range {
        out.push(vec![
            eth(ETHER_TYPE_IPV4),
            Item::Ipv4(Some(Spec::any_fragment())),
        ]);
    }
    if caps.ipv6 {
        out.push(vec![
            eth(ETHER_TYPE_IPV6),
            Item::Ipv6(Some(Spec::masked(
                Ipv6Fields {
                    has_frag_ext: true,
                    ..Default::default()
                },
                Ipv6Fields {
                    has_frag_ext: true,
                    ..Default::default()
                },
            ))),
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutils as fixture;

    #[test]
    fn test_groups_mode_punts_fragments_then_local_sources() {
        let (_, program) = fixture::program(vec![], vec![]);
        let caps = NicCaps::mlx5(64);
        let roles: Vec<Role> = fixed_rules(&program, &caps, true)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        // Both fragment forms, then one punt per local source (the workload, the host).
        assert_eq!(
            roles,
            vec![
                Role::FragmentPunt,
                Role::FragmentPunt,
                Role::SourcePunt,
                Role::SourcePunt
            ]
        );
        assert!(fixed_rules(&program, &caps, false).is_empty());
    }

    #[test]
    fn test_fragment_punts_follow_the_device() {
        let mut caps = NicCaps::mlx5(64);
        assert_eq!(fragment_patterns(&caps).len(), 2);
        caps.ipv4_fragment_range = false;
        caps.ipv6 = false;
        assert!(fragment_patterns(&caps).is_empty());
    }

    #[test]
    fn test_budget_leaves_the_fixed_entries_and_the_reserve() {
        let cfg = PlanConfig::default();
        assert_eq!(entry_budget(&NicCaps::mlx5(64), &cfg, 5), Some(58));
        // Exactly one entry left.
        assert_eq!(entry_budget(&NicCaps::mlx5(7), &cfg, 5), Some(1));
        assert_eq!(entry_budget(&NicCaps::mlx5(6), &cfg, 5), None);
        // The mark space bounds it too.
        let mut caps = NicCaps::mlx5(1 << 20);
        caps.mark_bits = 8;
        assert_eq!(
            entry_budget(&caps, &cfg, 5),
            Some(u64::from(max_index(8)) - 5)
        );
    }
}
