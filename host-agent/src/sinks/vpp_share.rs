//! The NIC share of a VPP node (`--dataplane vpp:SOCKET --nic vpp-flow`): planned
//! here, installed by the capo VPP plugin through VPP's flow layer.
//!
//! On a VPP node VPP's driver owns the NIC, so the agent does not open the port: it
//! plans with the flow layer's capabilities ([`NicCaps::vpp_flow_layer`]: no groups,
//! no priorities, hence flat-marks mode) and sends the plan's rules to the plugin as
//! [`pb::FlowLayerRule`]s: drops, and MARKs in capo's layout (the generation's tag, an
//! allow or a punt, the plan entry). No rule has an overlapping earlier rule that
//! decides otherwise, so no two rules' order matters, and a rule the driver refuses
//! just stays in software.
//!
//! Generations switch break-before-make: before a generation is pushed, the held
//! share leaves the NIC (its marks name the old generation); once the plugin holds
//! the new generation, its share goes in. Between the two, software decides those
//! packets, which it always may.
//!
//! The plan is made from the flows the plugin samples (one packet in sixteen of those
//! software decides, [`pb::FlowSample`]), as the embedded dataplane's is from the
//! flows it decides: they make rules hot and, where no rule looks at source ports,
//! give conversation entries (a MARK for an allowed conversation's next connections
//! too). Before any traffic is sampled the share is empty. (The plugin numbers its
//! rules itself, so its rule counters cannot be matched to the agent's; and taking
//! every rule as hot instead made W-k8s plan for 14.5 s.)

use capo_offload::flow::{EthFields, Ipv4Fields, Ipv6Fields, PortFields, Spec, TcpFields};
use capo_offload::plan::FlowSample;
use capo_offload::{
    Action, FlowRule, Group, HitCounters, Item, NicCaps, OffloadProgram, PlanConfig, Priority,
};
use capo_policy::eval::L4;
use capo_policy::{IdTable, Packet, Protocol, State};
use capo_proto::capo::dataplane::v1 as pb;
use std::net::IpAddr;

/// Flow-layer entries the share may use unless `--nic vpp-flow:N` says otherwise.
pub const DEFAULT_FLOW_LAYER_CAPACITY: u32 = 1024;

/// Why a planned NIC rule has no form in VPP's flow layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotFlowLayer {
    /// The layer has no groups and no priorities.
    #[error("not in group 0 at priority 0")]
    GroupOrPriority,
    /// Only DROP, and MARK on the normal receive path, travel.
    #[error("neither a plain DROP nor a MARK")]
    Action,
    /// An item the n-tuple flows do not have.
    #[error("no {0} item in VPP's n-tuple flows")]
    Item(&'static str),
    /// A range (`last`).
    #[error("a range")]
    Range,
    /// A mask the n-tuple flows cannot carry.
    #[error("a {0} mask")]
    Mask(&'static str),
    /// Neither IPv4 nor IPv6.
    #[error("no IP item")]
    NoIp,
}

const ETHER_IPV4: u16 = 0x0800;
const ETHER_IPV6: u16 = 0x86dd;
const TCP: u32 = 6;
const UDP: u32 = 17;

/// The flow-layer form of `rule` (an `ipv4-n-tuple` or `ipv6-n-tuple` drop).
///
/// # Errors
///
/// [`NotFlowLayer`] when the rule uses something the flow layer cannot express.
pub fn to_flow_layer(rule: &FlowRule) -> Result<pb::FlowLayerRule, NotFlowLayer> {
    if rule.attr().group != Group(0) || rule.attr().priority != Priority(0) {
        return Err(NotFlowLayer::GroupOrPriority);
    }
    let mut out = match rule.actions() {
        [Action::Drop] => pb::FlowLayerRule {
            action: pb::FlowLayerAction::Drop as i32,
            ..Default::default()
        },
        // The RSS fate is the driver's normal receive path, where the mark arrives
        // as the buffer's flow_id.
        [Action::Mark(mark), Action::Rss(_)] if *mark != 0 => pb::FlowLayerRule {
            action: pb::FlowLayerAction::Mark as i32,
            mark: *mark,
            ..Default::default()
        },
        _ => return Err(NotFlowLayer::Action),
    };
    let mut family: Option<usize> = None;
    let mut l4: Option<u32> = None;
    for item in rule.pattern() {
        match item {
            Item::Eth(None) => {}
            Item::Eth(Some(s)) => eth(s)?,
            Item::Ipv4(s) => {
                family = Some(4);
                if let Some(s) = s {
                    ipv4(s, &mut out)?;
                }
            }
            Item::Ipv6(s) => {
                family = Some(16);
                if let Some(s) = s {
                    ipv6(s, &mut out)?;
                }
            }
            Item::Tcp(s) => {
                l4 = Some(TCP);
                if let Some(s) = s {
                    tcp(s, &mut out)?;
                }
            }
            Item::Udp(s) => {
                l4 = Some(UDP);
                if let Some(s) = s {
                    ports(s, &mut out)?;
                }
            }
            Item::Sctp(_) => return Err(NotFlowLayer::Item("SCTP")),
            Item::Icmp(_) => return Err(NotFlowLayer::Item("ICMP")),
            Item::Icmp6(_) => return Err(NotFlowLayer::Item("ICMP6")),
        }
    }
    let len = family.ok_or(NotFlowLayer::NoIp)?;
    for field in [
        &mut out.src_addr,
        &mut out.src_mask,
        &mut out.dst_addr,
        &mut out.dst_mask,
    ] {
        if field.is_empty() {
            *field = vec![0; len];
        }
    }
    if let Some(p) = l4 {
        // The L4 item names the protocol; an IP item saying another never matches.
        if out.protocol_exact && out.protocol != p {
            return Err(NotFlowLayer::Mask("protocol"));
        }
        out.protocol = p;
        out.protocol_exact = true;
    }
    Ok(out)
}

fn no_range<T>(s: &Spec<T>) -> Result<(), NotFlowLayer> {
    if s.last.is_some() {
        Err(NotFlowLayer::Range)
    } else {
        Ok(())
    }
}

/// The EtherType is implied by the IP item; only "any" or the IP types pass.
fn eth(s: &Spec<EthFields>) -> Result<(), NotFlowLayer> {
    no_range(s)?;
    match (s.mask.ether_type, s.spec.ether_type) {
        (0, _) | (0xffff, ETHER_IPV4 | ETHER_IPV6) => Ok(()),
        _ => Err(NotFlowLayer::Mask("EtherType")),
    }
}

fn protocol(spec: u8, mask: u8, out: &mut pb::FlowLayerRule) -> Result<(), NotFlowLayer> {
    match mask {
        0 => Ok(()),
        0xff => {
            out.protocol = u32::from(spec);
            out.protocol_exact = true;
            Ok(())
        }
        _ => Err(NotFlowLayer::Mask("protocol")),
    }
}

fn masked(addr: &[u8], mask: &[u8]) -> Vec<u8> {
    addr.iter().zip(mask).map(|(a, m)| a & m).collect()
}

/// Addresses (spec and mask, source then destination) and the protocol byte, of
/// either family.
fn addresses(
    (src, src_mask): (&[u8], &[u8]),
    (dst, dst_mask): (&[u8], &[u8]),
    (proto, proto_mask): (u8, u8),
    out: &mut pb::FlowLayerRule,
) -> Result<(), NotFlowLayer> {
    out.src_addr = masked(src, src_mask);
    out.src_mask = src_mask.to_vec();
    out.dst_addr = masked(dst, dst_mask);
    out.dst_mask = dst_mask.to_vec();
    protocol(proto, proto_mask, out)
}

fn ipv4(s: &Spec<Ipv4Fields>, out: &mut pb::FlowLayerRule) -> Result<(), NotFlowLayer> {
    no_range(s)?;
    if s.mask.fragment_offset != 0 {
        return Err(NotFlowLayer::Mask("fragment offset"));
    }
    let (v, m) = (&s.spec, &s.mask);
    addresses((&v.src, &m.src), (&v.dst, &m.dst), (v.proto, m.proto), out)
}

fn ipv6(s: &Spec<Ipv6Fields>, out: &mut pb::FlowLayerRule) -> Result<(), NotFlowLayer> {
    no_range(s)?;
    if s.mask.has_frag_ext {
        return Err(NotFlowLayer::Mask("fragment header"));
    }
    let (v, m) = (&s.spec, &s.mask);
    addresses((&v.src, &m.src), (&v.dst, &m.dst), (v.proto, m.proto), out)
}

fn ports(s: &Spec<PortFields>, out: &mut pb::FlowLayerRule) -> Result<(), NotFlowLayer> {
    no_range(s)?;
    out.src_port = u32::from(s.spec.src_port & s.mask.src_port);
    out.src_port_mask = u32::from(s.mask.src_port);
    out.dst_port = u32::from(s.spec.dst_port & s.mask.dst_port);
    out.dst_port_mask = u32::from(s.mask.dst_port);
    Ok(())
}

fn tcp(s: &Spec<TcpFields>, out: &mut pb::FlowLayerRule) -> Result<(), NotFlowLayer> {
    if s.mask.flags != 0 {
        return Err(NotFlowLayer::Mask("TCP flags"));
    }
    let as_ports = |t: TcpFields| PortFields {
        src_port: t.src_port,
        dst_port: t.dst_port,
    };
    ports(
        &Spec {
            spec: as_ports(s.spec),
            mask: as_ports(s.mask),
            last: s.last.map(as_ports),
        },
        out,
    )
}

/// A planned share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePlan {
    /// The drops, in the planner's order, without duplicates.
    pub rules: Vec<pb::FlowLayerRule>,
    /// Planned NIC rules with no flow-layer form (they stay in software).
    pub not_expressible: usize,
}

/// A flow the plugin sampled, as the planner takes it (`None` when malformed).
pub fn sample_from_proto(s: &pb::FlowSample) -> Option<FlowSample> {
    let addr = |b: &[u8]| -> Option<IpAddr> {
        match b.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
            _ => None,
        }
    };
    let (src, dst) = (addr(&s.src)?, addr(&s.dst)?);
    if src.is_ipv4() != dst.is_ipv4() {
        return None;
    }
    let protocol = Protocol(u8::try_from(s.protocol).ok()?);
    let l4 = if s.no_l4 {
        L4::None
    } else if s.icmp {
        L4::Icmp {
            icmp_type: u8::try_from(s.src_port).ok()?,
            code: u8::try_from(s.dst_port).ok()?,
        }
    } else {
        L4::Ports {
            src: u16::try_from(s.src_port).ok()?,
            dst: u16::try_from(s.dst_port).ok()?,
        }
    };
    Some(FlowSample {
        packet: Packet {
            src,
            dst,
            protocol,
            l4,
        },
        tcp_flags: (protocol == Protocol::TCP)
            .then(|| u8::try_from(s.tcp_flags).ok())
            .flatten(),
        hits: s.packets,
    })
}

/// Plans the share of `state` (generation `generation`) for a flow layer of
/// `capacity` entries, ranked by the sampled `flows`.
pub fn plan_share(
    state: &State,
    generation: u64,
    capacity: u32,
    flows: &[FlowSample],
) -> SharePlan {
    plan_share_on(state, &lower_share(state, generation), capacity, flows)
}

/// The lowering a generation's share is planned on: made once per generation, while
/// new samples only plan again ([`plan_share_on`]), as the embedded NIC keeps its.
pub fn lower_share(state: &State, generation: u64) -> OffloadProgram {
    let mut ids = IdTable::default();
    ids.sync(state);
    capo_offload::lower(state, &ids, generation)
}

/// [`plan_share`] on a kept lowering of `state` ([`lower_share`]).
pub fn plan_share_on(
    state: &State,
    program: &OffloadProgram,
    capacity: u32,
    flows: &[FlowSample],
) -> SharePlan {
    let hits = HitCounters {
        flows: flows.to_vec(),
        ..HitCounters::default()
    };
    let caps = NicCaps::vpp_flow_layer(capacity);
    let plan = capo_offload::plan(state, program, &caps, &hits, &PlanConfig::default());
    let mut rules: Vec<pb::FlowLayerRule> = Vec::new();
    let mut not_expressible = 0;
    for planned in &plan.rules {
        match to_flow_layer(&planned.flow) {
            Ok(r) if !rules.contains(&r) => rules.push(r),
            Ok(_) => {}
            Err(_) => not_expressible += 1,
        }
    }
    SharePlan {
        rules,
        not_expressible,
    }
}

/// `capoctl offload` on a VPP node with `--nic vpp-flow`: the share the plugin last
/// acknowledged and what each hardware interface took.
pub fn plan_reply(
    status: &crate::sinks::vpp::VppStatus,
    capacity: u32,
    generation: u64,
) -> capo_proto::capo::agent::v1::OffloadPlanReply {
    let takes = status.flow_layer.iter().any(|i| i.takes_flows);
    let software_only_reason = if let Some(e) = &status.share_error {
        format!("the VPP plugin refused the NIC share: {e}")
    } else if status.flow_layer.is_empty() {
        "no policed VPP interface has reported on the NIC share yet".to_string()
    } else if !takes {
        "no policed VPP interface's driver takes flows (VPP's flow layer): fallback-only"
            .to_string()
    } else {
        String::new()
    };
    capo_proto::capo::agent::v1::OffloadPlanReply {
        generation,
        nic: format!("vpp-flow:{capacity}"),
        offload_available: takes,
        entries_used: status.share_rules as u32,
        entries_capacity: capacity,
        flow_layer: status.flow_layer.clone(),
        software_only_reason,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capo_offload::flow::Attr;
    use capo_offload::testutils::{net, one_workload};
    use capo_policy::{Action as PolicyAction, PortRange, Protocol, Rule};

    fn drop_rule(items: &[Item]) -> FlowRule {
        FlowRule::new(Attr::ingress(Group(0), Priority(0)), items, &[Action::Drop]).unwrap()
    }

    fn v4(src: [u8; 4], src_mask: [u8; 4], proto: Option<u8>) -> Item {
        Item::Ipv4(Some(Spec::masked(
            Ipv4Fields {
                src,
                dst: [10, 244, 0, 1],
                proto: proto.unwrap_or(0),
                fragment_offset: 0,
            },
            Ipv4Fields {
                src: src_mask,
                dst: [255; 4],
                proto: if proto.is_some() { 0xff } else { 0 },
                fragment_offset: 0,
            },
        )))
    }

    fn eth(t: u16, mask: u16) -> Item {
        Item::Eth(Some(Spec::masked(
            EthFields { ether_type: t },
            EthFields { ether_type: mask },
        )))
    }

    fn udp(dst: u16, mask: u16) -> Item {
        Item::Udp(Some(Spec::masked(
            PortFields {
                src_port: 0,
                dst_port: dst,
            },
            PortFields {
                src_port: 0,
                dst_port: mask,
            },
        )))
    }

    #[test]
    fn ipv4_prefix_protocol_and_ports_map_field_by_field() {
        let r = to_flow_layer(&drop_rule(&[
            eth(ETHER_IPV4, 0xffff),
            v4([192, 168, 7, 9], [255, 255, 255, 0], None),
            udp(5353, 0xfff0),
        ]))
        .unwrap();
        assert_eq!(r.src_addr, vec![192, 168, 7, 0]);
        assert_eq!(r.src_mask, vec![255, 255, 255, 0]);
        assert_eq!(r.dst_addr, vec![10, 244, 0, 1]);
        assert_eq!(r.dst_mask, vec![255; 4]);
        // The UDP item names the protocol.
        assert_eq!((r.protocol, r.protocol_exact), (UDP, true));
        assert_eq!((r.dst_port, r.dst_port_mask), (5353 & 0xfff0, 0xfff0));
        assert_eq!((r.src_port, r.src_port_mask), (0, 0));
        assert_eq!(r.action, pb::FlowLayerAction::Drop as i32);

        // A protocol without an L4 item (the IPv4 protocol byte).
        let r = to_flow_layer(&drop_rule(&[v4([0; 4], [0; 4], Some(47))])).unwrap();
        assert_eq!((r.protocol, r.protocol_exact), (47, true));
        assert_eq!(
            (r.src_addr.clone(), r.src_mask.clone()),
            (vec![0; 4], vec![0; 4])
        );
        // TCP ports without flags.
        let tcp_item = Item::Tcp(Some(Spec::masked(
            TcpFields {
                src_port: 0,
                dst_port: 443,
                flags: 0,
            },
            TcpFields {
                src_port: 0,
                dst_port: 0xffff,
                flags: 0,
            },
        )));
        let r = to_flow_layer(&drop_rule(&[v4([0; 4], [0; 4], None), tcp_item])).unwrap();
        assert_eq!(
            (r.protocol, r.dst_port, r.dst_port_mask),
            (TCP, 443, 0xffff)
        );
    }

    #[test]
    fn ipv6_maps_with_sixteen_byte_addresses() {
        let mut dst = [0u8; 16];
        dst[0] = 0xfd;
        dst[15] = 1;
        let item = Item::Ipv6(Some(Spec::masked(
            Ipv6Fields {
                src: [0; 16],
                dst,
                proto: 0,
                has_frag_ext: false,
            },
            Ipv6Fields {
                src: [0; 16],
                dst: [0xff; 16],
                proto: 0,
                has_frag_ext: false,
            },
        )));
        let r = to_flow_layer(&drop_rule(&[
            eth(ETHER_IPV6, 0xffff),
            item,
            udp(53, 0xffff),
        ]))
        .unwrap();
        assert_eq!(r.dst_addr, dst.to_vec());
        assert_eq!(r.src_addr, vec![0; 16]);
        assert_eq!(r.src_mask, vec![0; 16]);
        assert_eq!(r.protocol, UDP);
        // A NULL IPv6 spec: any address of the family.
        let r = to_flow_layer(&drop_rule(&[Item::Ipv6(None), udp(53, 0xffff)])).unwrap();
        assert_eq!((r.src_addr.len(), r.dst_mask.len()), (16, 16));
    }

    #[test]
    fn a_mark_on_the_receive_path_maps_to_a_mark_flow() {
        let any4 = v4([0; 4], [0; 4], None);
        let rss = Action::Rss(capo_offload::flow::Rss::default());
        let marked = |actions: &[Action]| {
            FlowRule::new(Attr::ingress(Group(0), Priority(0)), &[any4], actions).unwrap()
        };
        let r = to_flow_layer(&marked(&[Action::Mark(0x40_0007), rss.clone()])).unwrap();
        assert_eq!(r.action, pb::FlowLayerAction::Mark as i32);
        assert_eq!(r.mark, 0x40_0007);
        // A counter is not read through the flow layer; mark 0 is VPP's "no mark".
        assert_eq!(
            to_flow_layer(&marked(&[Action::Mark(5), Action::Count(0), rss.clone()])),
            Err(NotFlowLayer::Action)
        );
        assert_eq!(
            to_flow_layer(&marked(&[Action::Mark(0), rss])),
            Err(NotFlowLayer::Action)
        );
    }

    #[test]
    fn what_the_flow_layer_cannot_express_is_refused_with_its_reason() {
        let any4 = v4([0; 4], [0; 4], None);
        let attr = |g, p| {
            FlowRule::new(
                Attr::ingress(Group(g), Priority(p)),
                &[any4],
                &[Action::Drop],
            )
            .unwrap()
        };
        assert_eq!(
            to_flow_layer(&attr(1, 0)),
            Err(NotFlowLayer::GroupOrPriority)
        );
        assert_eq!(
            to_flow_layer(&attr(0, 2)),
            Err(NotFlowLayer::GroupOrPriority)
        );
        let marked = FlowRule::new(
            Attr::ingress(Group(0), Priority(0)),
            &[any4],
            &[Action::Mark(5), Action::Drop],
        )
        .unwrap();
        assert_eq!(to_flow_layer(&marked), Err(NotFlowLayer::Action));
        let syn = Item::Tcp(Some(Spec::masked(
            TcpFields {
                src_port: 0,
                dst_port: 80,
                flags: 0x02,
            },
            TcpFields {
                src_port: 0,
                dst_port: 0xffff,
                flags: 0x12,
            },
        )));
        assert_eq!(
            to_flow_layer(&drop_rule(&[any4, syn])),
            Err(NotFlowLayer::Mask("TCP flags"))
        );
        assert_eq!(
            to_flow_layer(&drop_rule(&[any4, Item::Icmp(None)])),
            Err(NotFlowLayer::Item("ICMP"))
        );
        assert_eq!(
            to_flow_layer(&drop_rule(&[any4, Item::Sctp(None)])),
            Err(NotFlowLayer::Item("SCTP"))
        );
        let ranged = Item::Udp(Some(Spec {
            spec: PortFields {
                src_port: 0,
                dst_port: 1000,
            },
            mask: PortFields {
                src_port: 0,
                dst_port: 0xffff,
            },
            last: Some(PortFields {
                src_port: 0,
                dst_port: 2000,
            }),
        }));
        assert_eq!(
            to_flow_layer(&drop_rule(&[any4, ranged])),
            Err(NotFlowLayer::Range)
        );
        let fragments = Item::Ipv4(Some(Spec::any_fragment()));
        assert_eq!(
            to_flow_layer(&drop_rule(&[fragments])),
            Err(NotFlowLayer::Range)
        );
        assert_eq!(
            to_flow_layer(&drop_rule(&[eth(0x8100, 0xffff), any4])),
            Err(NotFlowLayer::Mask("EtherType"))
        );
        let half_proto = Item::Ipv4(Some(Spec::masked(
            Ipv4Fields {
                proto: 6,
                ..Default::default()
            },
            Ipv4Fields {
                proto: 0x0f,
                ..Default::default()
            },
        )));
        assert_eq!(
            to_flow_layer(&drop_rule(&[half_proto])),
            Err(NotFlowLayer::Mask("protocol"))
        );
        let tcp_in_ip_udp_item = v4([0; 4], [0; 4], Some(6));
        assert_eq!(
            to_flow_layer(&drop_rule(&[tcp_in_ip_udp_item, udp(53, 0xffff)])),
            Err(NotFlowLayer::Mask("protocol"))
        );
        assert_eq!(
            to_flow_layer(&drop_rule(&[eth(ETHER_IPV4, 0xffff)])),
            Err(NotFlowLayer::NoIp)
        );
    }

    /// A flow the plugin sampled, to 10.244.0.1 (TCP: an established packet).
    fn sampled(src: &str, protocol: Protocol, sport: u16, dport: u16) -> FlowSample {
        FlowSample {
            packet: Packet {
                src: src.parse().unwrap(),
                dst: "10.244.0.1".parse().unwrap(),
                protocol,
                l4: L4::Ports {
                    src: sport,
                    dst: dport,
                },
            },
            tcp_flags: (protocol == Protocol::TCP).then_some(0x10),
            hits: 20,
        }
    }

    fn allow_from(src: &str, proto: Protocol, port: u16) -> Rule {
        let mut r = Rule::any(PolicyAction::Allow);
        r.protocol = Some(proto);
        r.src.nets.push(net(src));
        r.dst.ports.push(PortRange::single(port));
        r
    }

    #[test]
    fn allows_no_earlier_rule_contradicts_become_marks_naming_the_generation() {
        let mut tcp_deny = Rule::any(PolicyAction::Deny);
        tcp_deny.protocol = Some(Protocol::TCP);
        tcp_deny.src.nets.push(net("172.16.9.0/24"));
        let (state, _) = one_workload(
            vec![
                tcp_deny,
                allow_from("172.16.5.0/24", Protocol::TCP, 80),
                allow_from("172.16.9.0/24", Protocol::UDP, 53),
                // Overlaps the deny above: which rule decides depends on order, which
                // one flat table does not have.
                allow_from("172.16.0.0/16", Protocol::TCP, 443),
            ],
            vec![],
            None,
        );
        // Nothing sampled: nothing planned.
        assert!(plan_share(&state, 3, 64, &[]).rules.is_empty());
        let traffic = [
            sampled("172.16.5.7", Protocol::TCP, 40000, 80),
            sampled("172.16.9.9", Protocol::UDP, 5353, 53),
            sampled("172.16.7.7", Protocol::TCP, 41000, 443),
        ];
        let share = plan_share(&state, 3, 64, &traffic);
        let find = |src: [u8; 4], mask: [u8; 4]| {
            share
                .rules
                .iter()
                .find(|r| r.src_addr == src.to_vec() && r.src_mask == mask.to_vec())
        };
        let web = find([172, 16, 5, 0], [255, 255, 255, 0])
            .unwrap_or_else(|| panic!("no mark for 172.16.5.0/24: {share:?}"));
        assert_eq!(web.dst_addr, vec![10, 244, 0, 1]);
        assert_eq!(
            (web.protocol, web.dst_port, web.dst_port_mask),
            (TCP, 80, 0xffff)
        );
        assert_eq!(web.action, pb::FlowLayerAction::Mark as i32);
        let mark = capo_offload::mark::Mark::decode(web.mark, 24);
        assert_eq!(mark.gen_tag, capo_offload::mark::gen_tag(3));
        assert_eq!(mark.kind, capo_offload::mark::MarkKind::Allow);
        let dns = find([172, 16, 9, 0], [255, 255, 255, 0])
            .unwrap_or_else(|| panic!("no mark for UDP from 172.16.9.0/24: {share:?}"));
        assert_eq!((dns.protocol, dns.dst_port), (UDP, 53));
        assert!(
            find([172, 16, 0, 0], [255, 255, 0, 0]).is_none(),
            "{share:?}"
        );
        // Its sampled conversation, outside the deny, goes down instead.
        let conversation = find([172, 16, 7, 7], [255; 4])
            .unwrap_or_else(|| panic!("no conversation mark: {share:?}"));
        assert_eq!(
            (conversation.dst_port, conversation.src_port_mask),
            (443, 0)
        );
        // The TCP deny needs SYN matching, which the flow layer cannot express.
        assert!(share
            .rules
            .iter()
            .all(|r| r.action == pb::FlowLayerAction::Mark as i32));
        // No capacity: no share.
        assert!(plan_share(&state, 3, 0, &traffic).rules.is_empty());
        // Another generation's marks differ (they name it): a switch replaces them.
        let next = plan_share(&state, 5, 64, &traffic);
        assert_eq!(next.rules.len(), share.rules.len());
        assert!(next.rules.iter().all(|r| !share.rules.contains(r)));
        // Generation 4's tag is 0: its first allow would be mark 0, which is VPP's
        // "no mark", so that rule stays in software.
        let tag0 = plan_share(&state, 4, 64, &traffic);
        assert_eq!(tag0.rules.len() + 1, share.rules.len());
        assert_eq!(tag0.not_expressible, 1);
    }

    #[test]
    fn sampled_flows_cross_the_channel_unchanged() {
        use capo_vpp_plugin::share::sample_to_proto;
        let packets = [
            (
                Packet {
                    src: "172.16.5.5".parse().unwrap(),
                    dst: "10.244.0.1".parse().unwrap(),
                    protocol: Protocol::TCP,
                    l4: L4::Ports {
                        src: 40000,
                        dst: 80,
                    },
                },
                Some(0x02),
            ),
            (
                Packet {
                    src: "fd00::5".parse().unwrap(),
                    dst: "fd00::1".parse().unwrap(),
                    protocol: Protocol::UDP,
                    l4: L4::Ports { src: 5353, dst: 53 },
                },
                None,
            ),
            (
                Packet {
                    src: "172.16.5.5".parse().unwrap(),
                    dst: "10.244.0.1".parse().unwrap(),
                    protocol: Protocol::ICMP,
                    l4: L4::Icmp {
                        icmp_type: 8,
                        code: 0,
                    },
                },
                None,
            ),
            (
                Packet {
                    src: "172.16.5.5".parse().unwrap(),
                    dst: "10.244.0.1".parse().unwrap(),
                    protocol: Protocol(47),
                    l4: L4::None,
                },
                None,
            ),
        ];
        for (p, flags) in packets {
            let wire = sample_to_proto(&p, flags.unwrap_or(0x10), 7);
            let back = sample_from_proto(&wire).unwrap();
            assert_eq!((back.packet, back.tcp_flags, back.hits), (p, flags, 7));
        }
        let mut bad = sample_to_proto(&packets[0].0, 0x02, 1);
        bad.dst = vec![0; 16];
        assert_eq!(sample_from_proto(&bad), None);
        bad.dst = vec![1, 2, 3];
        assert_eq!(sample_from_proto(&bad), None);
        let mut bad = sample_to_proto(&packets[0].0, 0x02, 1);
        bad.dst_port = 70_000;
        assert_eq!(sample_from_proto(&bad), None);
    }

    #[test]
    fn a_sampled_allowed_conversation_becomes_a_mark_where_its_rule_cannot() {
        // The allow overlaps an earlier deny, so the rule cannot go down in one flat
        // table; a conversation the plugin sampled, outside the deny, can.
        let mut tcp_deny = Rule::any(PolicyAction::Deny);
        tcp_deny.protocol = Some(Protocol::TCP);
        tcp_deny.src.nets.push(net("172.16.9.0/24"));
        let (state, _) = one_workload(
            vec![tcp_deny, allow_from("172.16.0.0/16", Protocol::TCP, 80)],
            vec![],
            None,
        );
        assert!(plan_share(&state, 3, 64, &[]).rules.is_empty());
        let sample = sampled("172.16.5.5", Protocol::TCP, 40000, 80);
        let share = plan_share(&state, 3, 64, &[sample]);
        assert_eq!(share.rules.len(), 1, "{share:?}");
        let r = &share.rules[0];
        assert_eq!(
            (r.src_addr.clone(), r.src_mask.clone()),
            (vec![172, 16, 5, 5], vec![255; 4])
        );
        // The conversation: any source port (no rule looks at them), port 80.
        assert_eq!(
            (r.src_port_mask, r.dst_port, r.dst_port_mask),
            (0, 80, 0xffff)
        );
        assert_eq!(r.action, pb::FlowLayerAction::Mark as i32);
    }
}
