//! Per-interface compilation: the programs of a workload, of the host (ingress
//! split by source: from a local workload or not) and of a host endpoint's forwarded
//! traffic, each with the policies and profiles it was built from.

use std::sync::Arc;

use capo_policy::config::EndpointToHostAction;
use capo_policy::eval::{has_enforced_policies, host_endpoint_for_host_traffic, InternalPolicy};
use capo_policy::{
    Decider, Direction, HostEndpoint, IcmpMatch, IdTable, IpFamily, PortRange, State, Verdict,
    WorkloadKey,
};

use super::deps::Deps;
use super::layout::finish;
use super::lower::{Fragment, ProgSpec, SegSpec};
use super::{
    Builder, HOST_ADDRS, LOCAL_WORKLOADS, RULE_ALLOW_FROM_HOST_IN, RULE_ALLOW_FROM_HOST_OUT,
    RULE_WORKLOADS_TO_HOST,
};
use crate::generation::{Entry, Iface, IfaceKind};
use crate::program::{Act, Program};

/// Segments every workload program of one direction starts with.
pub(super) type Preamble = Arc<[(Arc<[Arc<Fragment>]>, SegSpec)]>;

impl Builder {
    pub(super) fn compile_iface(&mut self, state: &State, ids: &IdTable, kind: IfaceKind) {
        let built = match &kind {
            IfaceKind::Workload(key) => self.workload_iface(state, ids, key),
            IfaceKind::Host => Some(self.host_iface(state, ids)),
            IfaceKind::Forward(key) => state
                .host_endpoints()
                .get(key)
                .map(|hep| self.forward_iface(state, ids, key.clone(), hep)),
        };
        match built {
            Some(i) => {
                self.ifaces.insert(kind, Arc::new(i));
            }
            None => {
                self.ifaces.remove(&kind);
            }
        }
    }

    /// Keeps the programs of a workload interface an endpoint update removed or
    /// changed (`old`) alive for a while, those its interface now (at `kind`) does
    /// not hold: a pod deleted and made again (a restart, a single replica rolled)
    /// finds its programs still laid out. (A policy change that compiles an
    /// interface anew retires nothing: its old programs hold fragments no spec will
    /// hold again.)
    pub(super) fn retire(&mut self, old: Option<Arc<Iface>>, kind: &IfaceKind) {
        let Some(old) = old.filter(|i| matches!(i.kind, IfaceKind::Workload(_))) else {
            return;
        };
        let now = self.ifaces.get(kind).cloned();
        let held = |p: &Arc<Program>| {
            now.iter()
                .flat_map(|i| i.entries.iter())
                .any(|e| matches!(e, Entry::Single(q) if Arc::ptr_eq(p, q)))
        };
        for entry in &old.entries {
            if let Entry::Single(program) = entry {
                if !held(program) {
                    self.shared.retire(program);
                }
            }
        }
    }

    /// The internal rules every workload program starts with in direction `dir`:
    /// neighbour discovery, and on ingress the allow-from-host rule. They depend on
    /// nothing an update changes, so the builder makes them once and every
    /// workload's spec shares them: specs compare them by identity, not by their
    /// rules, when they are matched with the programs already laid out.
    pub(super) fn workload_preamble(&self, dir: Direction) -> Preamble {
        let mut spec = ProgSpec::new();
        // Neighbour discovery on the workload's link never meets policy.
        let nd = capo_policy::eval::NEIGHBOUR_DISCOVERY_ICMPV6_TYPES
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut r =
                    self.internal_rule(Act::Allow, InternalPolicy::NeighbourDiscovery, i, None);
                r.rule.family = Some(IpFamily::V6);
                r.rule.protocol = Some(capo_policy::Protocol::ICMPV6.0);
                r.rule.icmp = Some(IcmpMatch {
                    icmp_type: *t,
                    code: None,
                });
                r
            })
            .collect();
        spec.segment(nd, SegSpec::Plain);
        if dir == Direction::Ingress {
            let mut r = self.internal_rule(
                Act::Allow,
                InternalPolicy::AllowFromHost,
                0,
                Some(RULE_ALLOW_FROM_HOST_IN),
            );
            r.rule.src.pos.push(HOST_ADDRS);
            spec.segment(vec![r], SegSpec::Plain);
        }
        spec.segments.into()
    }

    fn workload_iface(&mut self, state: &State, ids: &IdTable, key: &WorkloadKey) -> Option<Iface> {
        let wep = state.workloads().get(key)?;
        let mut deps = Deps::default();
        let mut entries = Vec::new();
        let mut specs = Vec::new();
        let preambles = self.preamble.clone();
        for (dir, preamble) in Direction::BOTH.into_iter().zip(preambles) {
            let mut spec = ProgSpec::new();
            spec.segments.extend(preamble.iter().cloned());
            self.tiers_into(&mut spec, state, ids, &wep.tiers, dir, true, &mut deps);
            self.profiles_into(&mut spec, state, ids, &wep.profile_ids, dir, &mut deps);
            let (program, spec) = self.shared_program(spec);
            entries.push(Entry::Single(program));
            specs.push(Some(spec));
        }
        let (owners, policy_filter) = deps.into_sets();
        Some(Iface {
            name: wep.name.clone(),
            kind: IfaceKind::Workload(key.clone()),
            sw_if_index: ids.interface(&wep.name),
            entries: two(entries)?,
            specs: two(specs)?,
            owners,
            policy_filter,
        })
    }

    fn host_iface(&mut self, state: &State, ids: &IdTable) -> Iface {
        let mut deps = Deps::default();
        let cfg = state.config().clone();
        // Ingress: packets from local workloads first meet DefaultEndpointToHostAction.
        let from_wl = match cfg.endpoint_to_host {
            EndpointToHostAction::Accept | EndpointToHostAction::Drop => {
                let verdict = if cfg.endpoint_to_host == EndpointToHostAction::Accept {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
                finish(
                    &ProgSpec::with_fallback(
                        verdict,
                        Decider::Internal {
                            policy: InternalPolicy::WorkloadsToHost,
                            index: 0,
                        },
                        Some(RULE_WORKLOADS_TO_HOST),
                    ),
                    self.min_words,
                )
            }
            EndpointToHostAction::Return => {
                let hep = host_endpoint_for_host_traffic(state, true).map(|(_, h)| h.clone());
                self.host_program(state, ids, hep.as_ref(), Direction::Ingress, &mut deps)
            }
        };
        let hep = host_endpoint_for_host_traffic(state, false).map(|(_, h)| h.clone());
        let other = self.host_program(state, ids, hep.as_ref(), Direction::Ingress, &mut deps);
        let egress = self.host_program(state, ids, hep.as_ref(), Direction::Egress, &mut deps);
        let name = ids.host_interface().to_string();
        let (owners, policy_filter) = deps.into_sets();
        Iface {
            sw_if_index: ids.interface(&name),
            name,
            kind: IfaceKind::Host,
            entries: [
                Entry::BySrcAtom {
                    atom: LOCAL_WORKLOADS,
                    member: Arc::new(from_wl),
                    other: Arc::new(other),
                },
                Entry::Single(Arc::new(egress)),
            ],
            specs: [None, None],
            owners,
            policy_filter,
        }
    }

    fn host_program(
        &mut self,
        state: &State,
        ids: &IdTable,
        hep: Option<&HostEndpoint>,
        dir: Direction,
        deps: &mut Deps,
    ) -> Program {
        let Some(hep) = hep else {
            return finish(
                &ProgSpec::with_fallback(Verdict::Allow, Decider::NoHostEndpoint, None),
                self.min_words,
            );
        };
        let cfg = state.config();
        let mut spec = ProgSpec::new();
        let mut internal = Vec::new();
        let n_in = cfg.failsafe_inbound.len();
        let (list, base) = match dir {
            Direction::Ingress => (&cfg.failsafe_inbound, 0),
            Direction::Egress => {
                let mut r = self.internal_rule(
                    Act::Allow,
                    InternalPolicy::AllowFromHost,
                    1,
                    Some(RULE_ALLOW_FROM_HOST_OUT),
                );
                r.rule.dst.pos.push(LOCAL_WORKLOADS);
                internal.push(r);
                (&cfg.failsafe_outbound, n_in)
            }
        };
        for (i, f) in list.iter().enumerate() {
            let mut r = self.internal_rule(
                Act::Allow,
                InternalPolicy::Failsafe,
                base + i,
                ids.failsafe_rule(base + i),
            );
            r.rule.protocol = Some(f.protocol.0);
            r.rule.dst.ports.push(PortRange::single(f.port));
            r.rule.dst.uses_ports = true;
            if let Some(net) = f.net {
                let atom = self.anon_atom(&[net]);
                match dir {
                    Direction::Ingress => r.rule.src.pos.push(atom),
                    Direction::Egress => r.rule.dst.pos.push(atom),
                }
            }
            internal.push(r);
        }
        spec.segment(internal, SegSpec::Plain);
        self.tiers_into(
            &mut spec,
            state,
            ids,
            &hep.untracked_tiers,
            dir,
            false,
            deps,
        );
        if dir == Direction::Ingress {
            self.tiers_into(&mut spec, state, ids, &hep.pre_dnat_tiers, dir, false, deps);
        }
        self.tiers_into(&mut spec, state, ids, &hep.tiers, dir, true, deps);
        self.profiles_into(&mut spec, state, ids, &hep.profile_ids, dir, deps);
        finish(&spec, self.min_words)
    }

    fn forward_iface(
        &mut self,
        state: &State,
        ids: &IdTable,
        key: capo_policy::HostEndpointKey,
        hep: &HostEndpoint,
    ) -> Iface {
        let mut deps = Deps::default();
        let mut entries = Vec::new();
        for dir in Direction::BOTH {
            let mut spec = ProgSpec::with_fallback(Verdict::Allow, Decider::NoForwardPolicy, None);
            if dir == Direction::Ingress {
                self.tiers_into(
                    &mut spec,
                    state,
                    ids,
                    &hep.untracked_tiers,
                    dir,
                    false,
                    &mut deps,
                );
                self.tiers_into(
                    &mut spec,
                    state,
                    ids,
                    &hep.pre_dnat_tiers,
                    dir,
                    false,
                    &mut deps,
                );
            }
            if has_enforced_policies(&hep.forward_tiers, dir) {
                self.tiers_into(
                    &mut spec,
                    state,
                    ids,
                    &hep.forward_tiers,
                    dir,
                    true,
                    &mut deps,
                );
            }
            entries.push(Entry::Single(Arc::new(finish(&spec, self.min_words))));
        }
        let [a, b] = match two(entries) {
            Some(e) => e,
            None => unreachable!("two directions were pushed"),
        };
        let (owners, policy_filter) = deps.into_sets();
        Iface {
            sw_if_index: ids.interface(&hep.name),
            name: hep.name.clone(),
            kind: IfaceKind::Forward(key),
            entries: [a, b],
            specs: [None, None],
            owners,
            policy_filter,
        }
    }
}

fn two<T>(v: Vec<T>) -> Option<[T; 2]> {
    <[T; 2]>::try_from(v).ok()
}
