//! Re-plans of the installed generation (same policy, new hit counters): the rules
//! the new plan shares with the installed one keep their MARK index and counter, so
//! the commit can leave them in place and change only the difference
//! ([`crate::commit::Committer::refresh`]).

use std::collections::{HashMap, HashSet};

use crate::flow::{Action, Attr, Item};
use crate::mark::{Mark, MarkKind};

use super::{FastHash, OffloadPlan, PlannedRule, Role};

/// What makes two NIC rules the same entry: what it is for (a decision's entry: its
/// counter is credited to that entry's rule) and everything but the index its MARK
/// and COUNT carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleIdentity<'a> {
    role: RoleKey,
    attr: Attr,
    pattern: &'a [Item],
    fate: Option<&'a Action>,
    mark: Option<MarkKind>,
    counts: bool,
}

/// What a rule is for, as far as its counter goes: an exact flow by its domain and
/// verdict (its first packet is only the sample that stood for it: the next plan's
/// entry for the same conversation may come from another connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RoleKey {
    FragmentPunt,
    SourcePunt,
    Decide(usize, usize, bool),
    ExactFlow(usize, bool),
    Cover(usize, usize),
    CatchAll,
}

impl RoleKey {
    fn of(role: &Role) -> Self {
        match *role {
            Role::FragmentPunt => RoleKey::FragmentPunt,
            Role::SourcePunt => RoleKey::SourcePunt,
            Role::Decide {
                domain,
                entry,
                allow,
            } => RoleKey::Decide(domain, entry, allow),
            Role::ExactFlow { domain, allow, .. } => RoleKey::ExactFlow(domain, allow),
            Role::Cover { domain, entry } => RoleKey::Cover(domain, entry),
            Role::CatchAll => RoleKey::CatchAll,
        }
    }
}

/// The identity of `rule` on a device with `mark_bits` MARK bits.
pub fn identity(rule: &PlannedRule, mark_bits: u8) -> RuleIdentity<'_> {
    let flow = &rule.flow;
    RuleIdentity {
        role: RoleKey::of(&rule.role),
        attr: *flow.attr(),
        pattern: flow.pattern(),
        fate: flow.fate(),
        mark: flow.mark().map(|m| Mark::decode(m, mark_bits).kind),
        counts: flow.counts(),
    }
}

/// Renumbers `next`, a plan of `installed`'s generation, for a commit in place: each
/// rule identical to one of `installed` takes that rule's index, every other rule an
/// index no rule of `installed` holds (while the live group holds both plans' rules,
/// an index names one entry). `None` when the indices run out of the MARK's bits or
/// the generations differ: such a plan is committed as a new generation.
pub fn carry_over(
    installed: &OffloadPlan,
    next: OffloadPlan,
    mark_bits: u8,
) -> Option<OffloadPlan> {
    if installed.generation != next.generation || installed.mode != next.mode {
        return None;
    }
    let mut by_identity: HashMap<RuleIdentity<'_>, Vec<u32>, FastHash> = HashMap::default();
    let mut taken: HashSet<u32, FastHash> = HashSet::default();
    for r in installed.rules.iter().rev() {
        if let Some(slot) = r.flow.slot(mark_bits) {
            by_identity
                .entry(identity(r, mark_bits))
                .or_default()
                .push(slot);
            taken.insert(slot);
        }
    }
    let mut fresh = 0u32;
    let mut rules = Vec::with_capacity(next.rules.len());
    for r in &next.rules {
        if r.flow.slot(mark_bits).is_none() {
            rules.push(r.clone());
            continue;
        }
        let kept = by_identity
            .get_mut(&identity(r, mark_bits))
            .and_then(Vec::pop);
        let slot = match kept {
            Some(slot) => slot,
            None => {
                while taken.contains(&fresh) {
                    fresh = fresh.checked_add(1)?;
                }
                taken.insert(fresh);
                fresh
            }
        };
        let flow = r.flow.with_slot(slot, mark_bits)?;
        rules.push(super::PlannedRule {
            role: r.role.clone(),
            flow,
            relies_on: r.relies_on.clone(),
        });
    }
    Some(OffloadPlan { rules, ..next })
}

/// Rules of `a` and `b` that differ (as multisets of identities): what a commit in
/// place inserts plus what it destroys.
pub fn rules_changed(a: &OffloadPlan, b: &OffloadPlan, mark_bits: u8) -> usize {
    let mut count: HashMap<RuleIdentity<'_>, i64, FastHash> = HashMap::default();
    for r in &a.rules {
        *count.entry(identity(r, mark_bits)).or_insert(0) += 1;
    }
    for r in &b.rules {
        *count.entry(identity(r, mark_bits)).or_insert(0) -= 1;
    }
    count.values().map(|c| c.unsigned_abs() as usize).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::NicCaps;
    use crate::plan::{plan, HitCounters, PlanConfig};
    use crate::testutils as fixture;

    fn plans() -> (OffloadPlan, OffloadPlan, u8) {
        let (state, program) = fixture::program(
            vec![
                fixture::allow_tcp("172.16.0.0/24", 80),
                fixture::allow_tcp("172.16.1.0/24", 443),
            ],
            vec![],
        );
        let caps = NicCaps::mlx5(64);
        let hits = |samples: Vec<crate::plan::FlowSample>| HitCounters {
            flows: samples,
            ..HitCounters::default()
        };
        let a = plan(
            &state,
            &program,
            &caps,
            &hits(vec![fixture::tcp_sample([172, 16, 0, 9], 80, 50)]),
            &PlanConfig::default(),
        );
        let b = plan(
            &state,
            &program,
            &caps,
            &hits(vec![
                fixture::tcp_sample([172, 16, 1, 9], 443, 90),
                fixture::tcp_sample([172, 16, 0, 9], 80, 50),
            ]),
            &PlanConfig::default(),
        );
        (a, b, caps.mark_bits)
    }

    #[test]
    fn shared_rules_keep_their_index_and_new_ones_take_free_indices() {
        let (a, b, bits) = plans();
        assert!(rules_changed(&a, &b, bits) > 0, "the plans differ");
        let slots_a: HashMap<RuleIdentity<'_>, u32> = a
            .rules
            .iter()
            .filter_map(|r| Some((identity(r, bits), r.flow.slot(bits)?)))
            .collect();
        let b2 = carry_over(&a, b.clone(), bits).expect("same generation");
        assert_eq!(b2.rules.len(), b.rules.len());
        let mut seen = HashSet::new();
        let mut shared = 0;
        for (r, orig) in b2.rules.iter().zip(&b.rules) {
            assert_eq!(identity(r, bits), identity(orig, bits));
            let slot = r.flow.slot(bits).unwrap();
            assert!(seen.insert(slot), "index {slot} given twice");
            match slots_a.get(&identity(r, bits)) {
                Some(&old) => {
                    shared += 1;
                    assert_eq!(slot, old, "a shared rule keeps its index");
                }
                None => assert!(
                    !slots_a.values().any(|&s| s == slot),
                    "a new rule takes an index the installed plan holds"
                ),
            }
        }
        assert!(shared > 0, "the plans share rules");
        assert_eq!(rules_changed(&b, &b2, bits), 0);
    }

    #[test]
    fn other_generations_are_not_carried_over() {
        let (a, mut b, bits) = plans();
        b.generation += 1;
        assert!(carry_over(&a, b, bits).is_none());
    }
}
