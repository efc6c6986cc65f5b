//! Rule lowering: policy and profile rules, tiers and internal rules as rules over
//! atoms ([`LRule`]), collected into a program spec ([`ProgSpec`]) in evaluation
//! order.

use capo_policy::eval::InternalPolicy;
use capo_policy::ids::PolicyRef;
use capo_policy::{
    Action, Decider, Direction, IcmpMatch, IdTable, IpFamily, PortRange, Rule, SideMatch, State,
    TierInfo, Verdict,
};

use super::deps::Deps;
use super::Builder;
use crate::index::AtomId;
use crate::program::Act;

/// A rule lowered to atoms.
pub(super) struct LRule {
    pub(super) act: Act,
    pub(super) decider: Decider,
    pub(super) rule_id: Option<u32>,
    pub(super) family: Option<IpFamily>,
    pub(super) protocol: Option<u8>,
    pub(super) not_protocol: Option<u8>,
    pub(super) icmp: Option<IcmpMatch>,
    pub(super) not_icmp: Option<IcmpMatch>,
    pub(super) src: LSide,
    pub(super) dst: LSide,
    pub(super) svc: Vec<AtomId>,
}

#[derive(Default)]
pub(super) struct LSide {
    pub(super) pos: Vec<AtomId>,
    pub(super) neg: Vec<AtomId>,
    pub(super) ports: Vec<PortRange>,
    pub(super) not_ports: Vec<PortRange>,
    pub(super) np: Vec<AtomId>,
    pub(super) nnp: Vec<AtomId>,
    pub(super) uses_ports: bool,
}

/// A program being assembled: rules in order, segments, fallback.
pub(super) struct ProgSpec {
    pub(super) rules: Vec<LRule>,
    pub(super) segments: Vec<(usize, usize, SegSpec)>,
    pub(super) fallback: (Verdict, Decider, Option<u32>),
}

pub(super) enum SegSpec {
    Plain,
    Tier(Option<(Decider, Option<u32>)>),
    Profile,
}

impl ProgSpec {
    pub(super) fn new() -> Self {
        ProgSpec {
            rules: Vec::new(),
            segments: Vec::new(),
            fallback: (Verdict::Deny, Decider::NoProfileMatched, None),
        }
    }

    pub(super) fn with_fallback(verdict: Verdict, decider: Decider, rule_id: Option<u32>) -> Self {
        ProgSpec {
            fallback: (verdict, decider, rule_id),
            ..ProgSpec::new()
        }
    }

    pub(super) fn segment(&mut self, rules: Vec<LRule>, kind: SegSpec) {
        let start = self.rules.len();
        self.rules.extend(rules);
        self.segments.push((start, self.rules.len(), kind));
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
    ) -> LRule {
        LRule {
            act,
            decider: Decider::Internal { policy, index },
            rule_id,
            family: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            src: LSide::default(),
            dst: LSide::default(),
            svc: Vec::new(),
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
            let mut rules = Vec::new();
            for key in keys.iter().filter(|k| !k.is_staged()) {
                deps.uses_policy(key);
                let Some(policy) = state.policies().get(key) else {
                    continue;
                };
                let rule_ids = ids.rule_ids(&PolicyRef::Policy(key.clone()), dir);
                for (index, rule) in policy.rules(dir).iter().enumerate() {
                    let decider = Decider::PolicyRule {
                        tier: tier.name.clone(),
                        policy: key.clone(),
                        direction: dir,
                        index,
                    };
                    rules.push(self.lower(rule, decider, rule_ids.get(index).copied()));
                }
            }
            let end_drop = (end_of_tier_drop && tier.drops_at_end(dir)).then(|| {
                (
                    Decider::EndOfTier {
                        tier: tier.name.clone(),
                    },
                    ids.tier_rule(&tier.name),
                )
            });
            spec.segment(rules, SegSpec::Tier(end_drop));
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
            let Some(profile) = state.profiles().get(name) else {
                continue;
            };
            let rule_ids = ids.rule_ids(&PolicyRef::Profile(name.clone()), dir);
            let rules = profile
                .rules(dir)
                .iter()
                .enumerate()
                .map(|(index, rule)| {
                    let decider = Decider::ProfileRule {
                        profile: name.clone(),
                        direction: dir,
                        index,
                    };
                    self.lower(rule, decider, rule_ids.get(index).copied())
                })
                .collect();
            spec.segment(rules, SegSpec::Profile);
        }
    }

    fn lower(&mut self, rule: &Rule, decider: Decider, rule_id: Option<u32>) -> LRule {
        let src = self.lower_side(&rule.src);
        let dst = self.lower_side(&rule.dst);
        let svc = rule
            .dst_ip_port_sets
            .iter()
            .map(|s| self.set_atom(s))
            .collect();
        LRule {
            act: act(rule.action),
            decider,
            rule_id,
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
