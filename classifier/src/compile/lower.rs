//! Rule lowering: policy and profile rules, tiers and internal rules as rules over
//! atoms ([`LRule`]), collected into a program spec ([`ProgSpec`]) in evaluation
//! order.

use std::sync::Arc;

use capo_policy::eval::InternalPolicy;
use capo_policy::{
    Action, CompactString, Decider, Direction, IcmpMatch, IdTable, IpFamily, PolicyKey, PortRange,
    Rule, SideMatch, State, TierInfo, Verdict,
};
use smallvec::SmallVec;

use super::deps::Deps;
use super::patch::{OldFragment, Owner};
use super::{Builder, FastMap};
use crate::index::AtomId;
use crate::overlay::{ExactRule, ExactSide};
use crate::program::{range_bounds, table_rows, Act};

/// A rule lowered to atoms: what it matches and what it does.
#[derive(PartialEq)]
pub(super) struct LRule {
    pub(super) act: Act,
    pub(super) family: Option<IpFamily>,
    pub(super) protocol: Option<u8>,
    pub(super) not_protocol: Option<u8>,
    pub(super) icmp: Option<IcmpMatch>,
    pub(super) not_icmp: Option<IcmpMatch>,
    pub(super) src: LSide,
    pub(super) dst: LSide,
    pub(super) svc: Vec<AtomId>,
}

impl LRule {
    /// The rule's criteria as a program's overlay checks them.
    pub(super) fn exact(&self) -> ExactRule {
        ExactRule {
            family: self.family,
            protocol: self.protocol,
            not_protocol: self.not_protocol,
            icmp: self.icmp,
            not_icmp: self.not_icmp,
            needs_ports: self.src.uses_ports || self.dst.uses_ports || !self.svc.is_empty(),
            src: self.src.exact(),
            dst: self.dst.exact(),
            svc: self.svc.as_slice().into(),
        }
    }
}

impl LSide {
    fn exact(&self) -> ExactSide {
        ExactSide {
            pos: self.pos.as_slice().into(),
            neg: self.neg.as_slice().into(),
            ports: self.ports.as_slice().into(),
            np: self.np.as_slice().into(),
            not_ports: self.not_ports.as_slice().into(),
            nnp: self.nnp.as_slice().into(),
        }
    }
}

#[derive(Default, PartialEq)]
pub(super) struct LSide {
    pub(super) pos: Vec<AtomId>,
    pub(super) neg: Vec<AtomId>,
    pub(super) ports: Vec<PortRange>,
    pub(super) not_ports: Vec<PortRange>,
    pub(super) np: Vec<AtomId>,
    pub(super) nnp: Vec<AtomId>,
    pub(super) uses_ports: bool,
}

/// Rules lowered together, with what decides by each and each one's `rule#`: one
/// policy's or profile's list for one direction, or a program's own internal rules.
pub(super) struct Fragment {
    pub(super) rules: Vec<LRule>,
    pub(super) deciders: Arc<[Decider]>,
    pub(super) rule_ids: Vec<Option<u32>>,
    /// Per side (source, destination), the bounds its rules' port ranges put in a
    /// port table (sorted), and whether a rule names named ports: what a patch
    /// needs of every fragment of a program without reading their rules.
    pub(super) port_bounds: [Vec<u16>; 2],
    pub(super) named_ports: [bool; 2],
    /// Per side, whether a rule has a negated port range (the side's port table
    /// then holds negated bitmaps).
    pub(super) negated_ports: [bool; 2],
}

impl Fragment {
    pub(super) fn new(
        rules: Vec<LRule>,
        deciders: Arc<[Decider]>,
        rule_ids: Vec<Option<u32>>,
    ) -> Self {
        let mut port_bounds = [Vec::new(), Vec::new()];
        let mut named_ports = [false; 2];
        let mut negated_ports = [false; 2];
        for r in &rules {
            for (((bounds, named), negated), side) in port_bounds
                .iter_mut()
                .zip(&mut named_ports)
                .zip(&mut negated_ports)
                .zip([&r.src, &r.dst])
            {
                for range in side.ports.iter().chain(&side.not_ports) {
                    bounds.extend(range_bounds(range));
                }
                *named |= !side.np.is_empty() || !side.nnp.is_empty();
                *negated |= !side.not_ports.is_empty();
            }
        }
        for bounds in &mut port_bounds {
            bounds.sort_unstable();
            bounds.dedup();
        }
        Fragment {
            rules,
            deciders,
            rule_ids,
            port_bounds,
            named_ports,
            negated_ports,
        }
    }
}

/// An internal rule before it joins a program: the rule, what names it, its `rule#`.
pub(super) struct OwnRule {
    pub(super) rule: LRule,
    pub(super) decider: Decider,
    pub(super) rule_id: Option<u32>,
}

/// A policy's fragment for one direction, with the tier it was listed in.
type TierFragment = (CompactString, Direction, Arc<Fragment>);

/// Policies' and profiles' rule lists as lowered, shared by every program that
/// includes them. Atoms never change meaning within a builder, and a list's
/// `rule#`s change only with the list (`IdTable::sync` keeps an unchanged list's
/// ids), so an entry stands until its policy or profile changes.
#[derive(Clone, Default)]
pub(super) struct Fragments {
    /// Per policy: (tier, direction, fragment); the tier names the deciders. Held
    /// in the map's own entry (a policy is lowered for its two directions in one
    /// tier), so finding an endpoint's fragments reads no list elsewhere.
    policies: FastMap<PolicyKey, SmallVec<[TierFragment; 2]>>,
    profiles: FastMap<String, Vec<(Direction, Arc<Fragment>)>>,
}

impl Fragments {
    /// Forgets a changed policy's or profile's fragments, returning them.
    pub(super) fn take(&mut self, owner: Owner<'_>) -> Vec<OldFragment> {
        match owner {
            Owner::Policy(key) => self
                .policies
                .remove(key)
                .unwrap_or_default()
                .into_iter()
                .map(|(tier, dir, f)| (Some(tier), dir, f))
                .collect(),
            Owner::Profile(name) => self
                .profiles
                .remove(name)
                .unwrap_or_default()
                .into_iter()
                .map(|(dir, f)| (None, dir, f))
                .collect(),
        }
    }

    /// Makes `fragment` the policy's (listed in `tier`) or profile's fragment for
    /// `dir` again (one the change left as it was: programs holding it need
    /// nothing).
    pub(super) fn keep(
        &mut self,
        owner: Owner<'_>,
        tier: Option<&str>,
        dir: Direction,
        fragment: Arc<Fragment>,
    ) {
        match owner {
            Owner::Policy(key) => {
                for (t, d, f) in self.policies.get_mut(key).into_iter().flatten() {
                    if *d == dir && Some(t.as_str()) == tier {
                        *f = fragment.clone();
                    }
                }
            }
            Owner::Profile(name) => {
                for (d, f) in self.profiles.get_mut(name).into_iter().flatten() {
                    if *d == dir {
                        *f = fragment.clone();
                    }
                }
            }
        }
    }
}

/// A program being assembled: segments of shared fragments in evaluation order,
/// fallback. Kept with a workload's programs, so a policy or profile change can
/// patch them (see `patch`).
#[derive(Clone)]
pub(crate) struct ProgSpec {
    /// Each segment's fragments in a list of their own, shared by the spec's patched
    /// copies: a patch makes anew only the lists holding a changed fragment (a
    /// copy of every list touched every fragment, a cold line each).
    pub(super) segments: Vec<(Arc<[Arc<Fragment>]>, SegSpec)>,
    pub(super) fallback: (Verdict, Decider, Option<u32>),
    /// What a patch needs of every fragment, tallied over them ([`ProgSpec::tally`])
    /// so it reads one list, not each fragment: per side, each port bound with the
    /// number of fragments putting it in the table (sorted by bound), and the
    /// number of fragments naming named ports.
    pub(super) port_bounds: [Vec<(u16, u32)>; 2],
    pub(super) named_ports: [u32; 2],
    /// Per side, the number of fragments with a negated port range.
    pub(super) negated_ports: [u32; 2],
    /// Per fragment in evaluation order, the position of its first rule: a patch
    /// finds its fragments' rules without reading every fragment (each a cold line
    /// of its own). Made with the tallies; a patch keeps every fragment's length.
    pub(super) fragment_starts: Arc<[u32]>,
    /// Whether the tallies are made (and kept: [`ProgSpec::retally`]).
    pub(super) tallied: bool,
}

#[derive(Clone, PartialEq)]
pub(super) enum SegSpec {
    Plain,
    Tier(Option<(Decider, Option<u32>)>),
    Profile,
}

impl std::fmt::Debug for ProgSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgSpec")
            .field("segments", &self.segments.len())
            .field("rules", &self.rule_count())
            .finish()
    }
}

impl ProgSpec {
    pub(super) fn new() -> Self {
        ProgSpec {
            segments: Vec::new(),
            fallback: (Verdict::Deny, Decider::NoProfileMatched, None),
            port_bounds: [Vec::new(), Vec::new()],
            named_ports: [0; 2],
            negated_ports: [0; 2],
            fragment_starts: Arc::default(),
            tallied: false,
        }
    }

    /// Tallies the fragments' port bounds and named ports (a spec kept for
    /// patching).
    pub(super) fn tally(&mut self) {
        let mut all: [Vec<u16>; 2] = [Vec::new(), Vec::new()];
        let mut named = [0u32; 2];
        let mut negated = [0u32; 2];
        let mut starts = Vec::new();
        let mut next = 0;
        for f in self.fragments() {
            starts.push(next);
            next += f.rules.len() as u32;
            for (n, has) in negated.iter_mut().zip(f.negated_ports) {
                *n += u32::from(has);
            }
            for ((list, n), (bounds, has)) in all
                .iter_mut()
                .zip(&mut named)
                .zip(f.port_bounds.iter().zip(f.named_ports))
            {
                list.extend(bounds);
                *n += u32::from(has);
            }
        }
        for (tally, mut list) in self.port_bounds.iter_mut().zip(all) {
            list.sort_unstable();
            *tally = list
                .chunk_by(|a, b| a == b)
                .filter_map(|run| Some((*run.first()?, run.len() as u32)))
                .collect();
        }
        self.named_ports = named;
        self.negated_ports = negated;
        self.fragment_starts = starts.into();
        self.tallied = true;
    }

    /// Moves the tallies from fragment `old` to `new`, which replaced it.
    pub(super) fn retally(&mut self, old: &Fragment, new: &Fragment) {
        for side in 0..2 {
            let (Some(tally), Some(n)) = (
                self.port_bounds.get_mut(side),
                self.named_ports.get_mut(side),
            ) else {
                continue;
            };
            for b in old.port_bounds.get(side).into_iter().flatten() {
                if let Ok(at) = tally.binary_search_by_key(b, |(x, _)| *x) {
                    if let Some((_, count)) = tally.get_mut(at) {
                        *count -= 1;
                        if *count == 0 {
                            tally.remove(at);
                        }
                    }
                }
            }
            for b in new.port_bounds.get(side).into_iter().flatten() {
                match tally.binary_search_by_key(b, |(x, _)| *x) {
                    Ok(at) => {
                        if let Some((_, count)) = tally.get_mut(at) {
                            *count += 1;
                        }
                    }
                    Err(at) => tally.insert(at, (*b, 1)),
                }
            }
            let has = |f: &Fragment| u32::from(f.named_ports.get(side).copied().unwrap_or(false));
            *n = (*n + has(new)).saturating_sub(has(old));
            if let Some(neg) = self.negated_ports.get_mut(side) {
                let has =
                    |f: &Fragment| u32::from(f.negated_ports.get(side).copied().unwrap_or(false));
                *neg = (*neg + has(new)).saturating_sub(has(old));
            }
        }
    }

    /// Bitmaps per interval of a side's port table ([`table_rows`]), from the
    /// tallies.
    pub(super) fn table_rows(&self, side: usize) -> usize {
        table_rows(self.negated_ports.get(side).is_some_and(|n| *n > 0))
    }

    /// A side's port-table interval starts: 0 and every bound.
    pub(super) fn port_starts(&self, side: usize) -> Vec<u16> {
        let tally = self.port_bounds.get(side).map(Vec::as_slice).unwrap_or(&[]);
        let mut starts = Vec::with_capacity(tally.len() + 1);
        if tally.first().is_none_or(|(b, _)| *b != 0) {
            starts.push(0);
        }
        starts.extend(tally.iter().map(|(b, _)| *b));
        starts
    }

    pub(super) fn with_fallback(verdict: Verdict, decider: Decider, rule_id: Option<u32>) -> Self {
        ProgSpec {
            fallback: (verdict, decider, rule_id),
            ..ProgSpec::new()
        }
    }

    /// A segment of internal rules.
    pub(super) fn segment(&mut self, rules: Vec<OwnRule>, kind: SegSpec) {
        let mut lowered = Vec::with_capacity(rules.len());
        let mut deciders = Vec::with_capacity(rules.len());
        let mut rule_ids = Vec::with_capacity(rules.len());
        for r in rules {
            lowered.push(r.rule);
            deciders.push(r.decider);
            rule_ids.push(r.rule_id);
        }
        let fragment = Arc::new(Fragment::new(lowered, deciders.into(), rule_ids));
        self.segments.push((Arc::new([fragment]), kind));
    }

    /// The fragments in evaluation order.
    pub(super) fn fragments(&self) -> impl Iterator<Item = &Arc<Fragment>> {
        self.segments
            .iter()
            .flat_map(|(fragments, _)| fragments.iter())
    }

    /// The fragments in evaluation order, each with the position of its first rule:
    /// from the tallies where they are made, counted otherwise.
    pub(super) fn fragments_at(&self) -> impl Iterator<Item = (&Arc<Fragment>, usize)> {
        let count = self.segments.iter().map(|(f, _)| f.len()).sum::<usize>();
        let stored = self.tallied && self.fragment_starts.len() == count;
        self.fragments()
            .enumerate()
            .scan(0usize, move |next, (k, f)| {
                let at = match self.fragment_starts.get(k) {
                    Some(s) if stored => *s as usize,
                    _ => *next,
                };
                if !stored {
                    *next = at + f.rules.len();
                }
                Some((f, at))
            })
    }

    /// The rules in evaluation order.
    pub(super) fn rules(&self) -> impl Iterator<Item = &LRule> {
        self.fragments().flat_map(|f| f.rules.iter())
    }

    pub(super) fn rule_count(&self) -> usize {
        self.fragments().map(|f| f.rules.len()).sum()
    }
}

fn act(a: Action) -> Act {
    match a {
        Action::Allow => Act::Allow,
        Action::Deny => Act::Deny,
        Action::Log => Act::Log,
        Action::Pass => Act::Pass,
    }
}

impl Builder {
    pub(super) fn internal_rule(
        &self,
        act: Act,
        policy: InternalPolicy,
        index: usize,
        rule_id: Option<u32>,
    ) -> OwnRule {
        OwnRule {
            rule: LRule {
                act,
                family: None,
                protocol: None,
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                src: LSide::default(),
                dst: LSide::default(),
                svc: Vec::new(),
            },
            decider: Decider::Internal { policy, index },
            rule_id,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn tiers_into(
        &mut self,
        spec: &mut ProgSpec,
        state: &State,
        ids: &IdTable,
        tiers: &[TierInfo],
        dir: Direction,
        end_of_tier_drop: bool,
        deps: &mut Deps,
    ) {
        for tier in tiers {
            let keys = tier.policies(dir);
            if keys.is_empty() {
                continue;
            }
            let mut fragments = Vec::new();
            for key in keys.iter().filter(|k| !k.is_staged()) {
                deps.uses_policy(key);
                let Some(fragment) = self.policy_fragment(state, ids, key, &tier.name, dir) else {
                    continue;
                };
                fragments.push(fragment);
            }
            let end_drop = (end_of_tier_drop && tier.drops_at_end(dir)).then(|| {
                (
                    Decider::EndOfTier {
                        tier: tier.name.clone(),
                    },
                    ids.tier_rule(&tier.name),
                )
            });
            spec.segments
                .push((fragments.into(), SegSpec::Tier(end_drop)));
        }
    }

    pub(super) fn profiles_into(
        &mut self,
        spec: &mut ProgSpec,
        state: &State,
        ids: &IdTable,
        profile_ids: &[String],
        dir: Direction,
        deps: &mut Deps,
    ) {
        for name in profile_ids {
            deps.uses_profile(name);
            let Some(fragment) = self.profile_fragment(state, ids, name, dir) else {
                continue;
            };
            spec.segments.push((Arc::new([fragment]), SegSpec::Profile));
        }
    }

    /// Policy `key`'s rules for `dir` in `tier`, lowered once (none when the policy
    /// does not exist).
    pub(super) fn policy_fragment(
        &mut self,
        state: &State,
        ids: &IdTable,
        key: &PolicyKey,
        tier: &str,
        dir: Direction,
    ) -> Option<Arc<Fragment>> {
        let held = self.fragments.policies.get(key).and_then(|list| {
            list.iter()
                .find(|(t, d, _)| *d == dir && t == tier)
                .map(|(_, _, f)| f.clone())
        });
        if held.is_some() {
            return held;
        }
        let rules = state.policies().get(key)?.rules(dir);
        let tier = CompactString::from(tier);
        let deciders = (0..rules.len())
            .map(|index| Decider::PolicyRule {
                tier: tier.clone(),
                policy: key.clone(),
                direction: dir,
                index,
            })
            .collect();
        let fragment = self.fragment(rules, deciders, ids.policy_rule_ids(key, dir));
        self.fragments
            .policies
            .entry(key.clone())
            .or_default()
            .push((tier, dir, fragment.clone()));
        Some(fragment)
    }

    /// Profile `name`'s rules for `dir`, lowered once (none when it does not exist).
    pub(super) fn profile_fragment(
        &mut self,
        state: &State,
        ids: &IdTable,
        name: &str,
        dir: Direction,
    ) -> Option<Arc<Fragment>> {
        let held = self
            .fragments
            .profiles
            .get(name)
            .and_then(|list| list.iter().find(|(d, _)| *d == dir).map(|(_, f)| f.clone()));
        if held.is_some() {
            return held;
        }
        let rules = state.profiles().get(name)?.rules(dir);
        let deciders = (0..rules.len())
            .map(|index| Decider::ProfileRule {
                profile: name.to_string(),
                direction: dir,
                index,
            })
            .collect();
        let fragment = self.fragment(rules, deciders, ids.profile_rule_ids(name, dir));
        self.fragments
            .profiles
            .entry(name.to_string())
            .or_default()
            .push((dir, fragment.clone()));
        Some(fragment)
    }

    fn fragment(
        &mut self,
        rules: &[Rule],
        deciders: Arc<[Decider]>,
        rule_ids: impl Iterator<Item = u32>,
    ) -> Arc<Fragment> {
        let lowered = rules.iter().map(|r| self.lower(r)).collect();
        Arc::new(Fragment::new(
            lowered,
            deciders,
            rule_ids.map(Some).collect(),
        ))
    }

    fn lower(&mut self, rule: &Rule) -> LRule {
        let src = self.lower_side(&rule.src);
        let dst = self.lower_side(&rule.dst);
        let svc = rule
            .dst_ip_port_sets
            .iter()
            .map(|s| self.set_atom(s))
            .collect();
        LRule {
            act: act(rule.action),
            family: rule.family(),
            protocol: rule.protocol.map(|p| p.0),
            not_protocol: rule.not_protocol.map(|p| p.0),
            icmp: rule.icmp,
            not_icmp: rule.not_icmp,
            src,
            dst,
            svc,
        }
    }

    fn lower_side(&mut self, side: &SideMatch) -> LSide {
        let mut pos = Vec::new();
        if !side.nets.is_empty() {
            pos.push(self.anon_atom(&side.nets));
        }
        pos.extend(side.ip_sets.iter().map(|s| self.set_atom(s)));
        pos.sort_unstable();
        pos.dedup();
        let mut neg = Vec::new();
        if !side.not_nets.is_empty() {
            neg.push(self.anon_atom(&side.not_nets));
        }
        neg.extend(side.not_ip_sets.iter().map(|s| self.set_atom(s)));
        LSide {
            pos,
            neg,
            ports: side.ports.clone(),
            not_ports: side.not_ports.clone(),
            np: side
                .named_port_sets
                .iter()
                .map(|s| self.set_atom(s))
                .collect(),
            nnp: side
                .not_named_port_sets
                .iter()
                .map(|s| self.set_atom(s))
                .collect(),
            uses_ports: side.uses_ports(),
        }
    }
}
