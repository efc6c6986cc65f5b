//! `capoctl demo`: the seed document's walkthrough, run through the real Felix path
//! (messages encoded as frames, decoded, converted, applied, rendered).

use std::fmt::Write as _;
use std::net::IpAddr;

use capo_policy::{trace, IdTable, State};
use capo_proto::felix::v3_32 as pb;
use pb::to_dataplane::Payload as P;

use crate::cli::{packet, trace_text, View};
use crate::felix::frame::encode_frame;
use crate::replay::{replay_reader, ReplayOptions};

/// The seed's sender set (Felix's id for the `role == 'sender'` selector).
pub const SENDER_SET: &str = "s:ebLtp9XAGohF9T55oU1rDi27kDSS-9O3rK5I-w";

fn msg(seq: u64, p: P) -> pb::ToDataplane {
    pb::ToDataplane {
        sequence_number: seq,
        payload: Some(p),
    }
}

fn allow_all() -> pb::Rule {
    pb::Rule {
        action: "allow".into(),
        ..Default::default()
    }
}

fn ts2(with_policy: bool) -> P {
    let tiers = if with_policy {
        vec![pb::TierInfo {
            name: "default".into(),
            ingress_policies: vec![policy_id()],
            egress_policies: vec![],
            default_action: "Deny".into(),
        }]
    } else {
        vec![]
    };
    P::WorkloadEndpointUpdate(pb::WorkloadEndpointUpdate {
        id: Some(pb::WorkloadEndpointId {
            orchestrator_id: "k8s".into(),
            workload_id: "default/ts2".into(),
            endpoint_id: "eth0".into(),
        }),
        endpoint: Some(pb::WorkloadEndpoint {
            state: "active".into(),
            name: "tun3".into(),
            profile_ids: vec!["kns.default".into(), "ksa.default.default".into()],
            ipv4_nets: vec!["11.0.0.67/32".into()],
            ipv6_nets: vec!["fd20::1cc0:b1ac:ad47:e7c2/128".into()],
            tiers,
            ..Default::default()
        }),
    })
}

fn policy_id() -> pb::PolicyId {
    pb::PolicyId {
        name: "test-network-policy".into(),
        namespace: "default".into(),
        kind: "KubernetesNetworkPolicy".into(),
    }
}

/// The seed's node before the NetworkPolicy: config, profiles, ts2, host metadata, InSync.
pub fn seed_before() -> Vec<pb::ToDataplane> {
    let config = [
        ("CalicoVersion", "v3.33.0"),
        ("FelixHostname", "kind-worker2"),
        ("DefaultEndpointToHostAction", "ACCEPT"),
        (
            "FailsafeInboundHostPorts",
            capo_policy::config::DEFAULT_FAILSAFE_INBOUND,
        ),
        (
            "FailsafeOutboundHostPorts",
            capo_policy::config::DEFAULT_FAILSAFE_OUTBOUND,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vec![
        msg(
            0,
            P::ConfigUpdate(pb::ConfigUpdate {
                config,
                ..Default::default()
            }),
        ),
        msg(
            1,
            P::ActiveProfileUpdate(pb::ActiveProfileUpdate {
                id: Some(pb::ProfileId {
                    name: "kns.default".into(),
                }),
                profile: Some(pb::Profile {
                    inbound_rules: vec![allow_all()],
                    outbound_rules: vec![allow_all()],
                }),
            }),
        ),
        msg(
            2,
            P::ActiveProfileUpdate(pb::ActiveProfileUpdate {
                id: Some(pb::ProfileId {
                    name: "ksa.default.default".into(),
                }),
                profile: Some(pb::Profile::default()),
            }),
        ),
        msg(3, ts2(false)),
        msg(
            4,
            P::HostMetadataUpdate(pb::HostMetadataUpdate {
                hostname: "kind-worker2".into(),
                ipv4_addr: "172.18.0.2/16".into(),
                ipv6_addr: "fc00:f853:ccd:e793::2/64".into(),
                ..Default::default()
            }),
        ),
        msg(5, P::InSync(pb::InSync {})),
    ]
}

/// What Felix sends when the seed's NetworkPolicy is created.
pub fn seed_policy_added() -> Vec<pb::ToDataplane> {
    vec![
        msg(
            6,
            P::IpsetUpdate(pb::IpSetUpdate {
                id: SENDER_SET.into(),
                members: vec![
                    "11.0.0.196/32".into(),
                    "fd20::58fd:b191:5c13:9cc3/128".into(),
                ],
                r#type: pb::ip_set_update::IpSetType::Net as i32,
            }),
        ),
        msg(
            7,
            P::ActivePolicyUpdate(pb::ActivePolicyUpdate {
                id: Some(policy_id()),
                policy: Some(pb::Policy {
                    inbound_rules: vec![pb::Rule {
                        action: "allow".into(),
                        protocol: Some(pb::Protocol {
                            number_or_name: Some(pb::protocol::NumberOrName::Name("tcp".into())),
                        }),
                        dst_ports: vec![pb::PortRange {
                            first: 5978,
                            last: 5978,
                        }],
                        src_ip_set_ids: vec![SENDER_SET.into()],
                        ..Default::default()
                    }],
                    namespace: "default".into(),
                    tier: "default".into(),
                    ..Default::default()
                }),
            }),
        ),
        msg(8, ts2(true)),
    ]
}

/// Encodes messages as a Felix frame stream.
pub fn frames(msgs: &[pb::ToDataplane]) -> Vec<u8> {
    msgs.iter().flat_map(encode_frame).collect()
}

/// The demo's replay options: the seed's `tun3` is `sw_if_index=11`.
pub fn seed_options() -> ReplayOptions {
    ReplayOptions {
        interface_indexes: vec![("tun3".into(), 11)],
        ..ReplayOptions::default()
    }
}

/// A probe of the seed's netcat test.
pub struct Probe {
    /// What it shows.
    pub label: &'static str,
    /// Source address.
    pub from: &'static str,
    /// Destination address.
    pub to: &'static str,
    /// Protocol name.
    pub proto: &'static str,
    /// Destination port.
    pub dport: u16,
}

/// The netcat test: ts1 → ts2 on the allowed port and on others.
pub const NETCAT: [Probe; 4] = [
    Probe {
        label: "ts1 -> ts2 tcp/5978 (nc -z 11.0.0.67 5978)",
        from: "11.0.0.196",
        to: "11.0.0.67",
        proto: "tcp",
        dport: 5978,
    },
    Probe {
        label: "ts1 -> ts2 tcp/5979 (nc -z 11.0.0.67 5979)",
        from: "11.0.0.196",
        to: "11.0.0.67",
        proto: "tcp",
        dport: 5979,
    },
    Probe {
        label: "ts1 -> ts2 udp/5978 (nc -zu 11.0.0.67 5978)",
        from: "11.0.0.196",
        to: "11.0.0.67",
        proto: "udp",
        dport: 5978,
    },
    Probe {
        label: "ts1 -> ts2 tcp/5978 over IPv6",
        from: "fd20::58fd:b191:5c13:9cc3",
        to: "fd20::1cc0:b1ac:ad47:e7c2",
        proto: "tcp",
        dport: 5978,
    },
];

/// Traces one probe.
pub fn probe(state: &State, ids: &IdTable, p: &Probe) -> Result<String, String> {
    let from: IpAddr = p.from.parse().map_err(|e| format!("{}: {e}", p.from))?;
    let to: IpAddr = p.to.parse().map_err(|e| format!("{}: {e}", p.to))?;
    let pkt = packet(from, to, p.proto, Some(40000), Some(p.dport), None, None)?;
    Ok(trace_text(&trace(state, &pkt), state, ids))
}

/// Runs the walkthrough and returns what it prints.
pub fn run() -> Result<String, String> {
    let opts = seed_options();
    let before = seed_before();
    let mut all = before.clone();
    all.extend(seed_policy_added());
    let r0 = replay_reader(frames(&before).as_slice(), &opts).map_err(|e| e.to_string())?;
    let r1 = replay_reader(frames(&all).as_slice(), &opts).map_err(|e| e.to_string())?;

    let mut out = String::new();
    out += "capo demo: the seed's walkthrough (see docs/troubleshooting.md)\n\n";
    out += "Node kind-worker2 (172.18.0.2, fc00:f853:ccd:e793::2).\n";
    out += "Pods: ts1 11.0.0.196 on kind-worker3 (role=sender), ts2 11.0.0.67 on this node\n";
    out +=
        "(role=receiver, interface tun3). Felix's updates go through capo's decoder and state.\n\n";
    out += "ts2 has only the usual allow profiles:\n\n";
    let _ = writeln!(out, "vpp# {}", View::Interfaces.command());
    out += &View::Interfaces.render(&r0.state, &r0.ids);
    out += "\nkubectl apply: NetworkPolicy default/test-network-policy\n";
    out += "  (podSelector role=receiver, ingress from role=sender, TCP 5978)\n\n";
    let _ = writeln!(out, "vpp# {}", View::Interfaces.command());
    out += &View::Interfaces.render(&r1.state, &r1.ids);
    out += "\nThe netcat test, as capo's verdicts:\n\n";
    for p in &NETCAT {
        let _ = writeln!(out, "$ {}", p.label);
        out += &probe(&r1.state, &r1.ids, p)?;
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_shows_before_and_after_and_the_netcat_verdicts() {
        let out = run().unwrap();
        assert!(
            out.contains("[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]")
        );
        assert!(out.contains(
            "      tx:[rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,],]"
        ));
        let verdicts: Vec<&str> = out
            .lines()
            .filter(|l| *l == "ALLOW" || *l == "DENY")
            .collect();
        assert_eq!(verdicts, vec!["ALLOW", "DENY", "DENY", "ALLOW"]);
    }
}
