//! Policies the sinks' unit tests share.
#![allow(clippy::unwrap_used)]

use capo_policy::*;

/// A workload (11.0.0.67 on tun3) admitting TCP 80 and nothing else.
pub(crate) fn web() -> (State, IdTable) {
    let key = PolicyKey {
        kind: "NetworkPolicy".into(),
        namespace: "default".into(),
        name: "web".into(),
    };
    let mut allow = Rule::any(Action::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.dst.ports = vec![PortRange::single(80)];
    let mut state = State::new();
    state
        .apply(Update::PolicyUpdate(
            key.clone(),
            Policy {
                inbound: vec![allow],
                outbound: vec![],
                untracked: false,
                pre_dnat: false,
                tier: "default".into(),
            }
            .into(),
        ))
        .unwrap();
    state
        .apply(Update::WorkloadUpdate(
            WorkloadKey {
                orchestrator: "k8s".into(),
                workload: "default/web".into(),
                endpoint: "eth0".into(),
            },
            WorkloadEndpoint {
                name: "tun3".into(),
                profile_ids: vec![],
                ipv4_nets: vec!["11.0.0.67/32".parse().unwrap()],
                ipv6_nets: vec![],
                tiers: vec![TierInfo {
                    name: "default".into(),
                    ingress: vec![key],
                    egress: vec![],
                    default_action: TierDefault::Deny,
                }],
            }
            .into(),
        ))
        .unwrap();
    let mut ids = IdTable::default();
    ids.sync(&state);
    (state, ids)
}
