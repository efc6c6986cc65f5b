//! The NIC profiles against the rules of the DPDK 22.11 drivers they model: one
//! case per rule, each citing the driver code (tag `v22.11`, paths under
//! `drivers/`) that accepts or refuses it, checked against the simulated NIC of the
//! profile. A profile may refuse what the driver takes (it is then conservative,
//! and the case says so); it never takes what the driver refuses.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use capo_offload::flow::{EthFields, IcmpFields, Ipv4Fields, Ipv6Fields, PortFields, TcpFields};
use capo_offload::{
    Action, Attr, FlowBackend, FlowErrorKind, FlowRule, Group, Item, NicCaps, Priority, SimNic,
    Spec,
};

fn eth(ether_type: u16) -> Item {
    Item::Eth(Some(Spec::masked(
        EthFields { ether_type },
        EthFields { ether_type: 0xffff },
    )))
}

fn ipv4(src_mask: u32, proto: Option<u8>) -> Item {
    Item::Ipv4(Some(Spec::masked(
        Ipv4Fields {
            src: [10, 1, 0, 0],
            proto: proto.unwrap_or(0),
            ..Default::default()
        },
        Ipv4Fields {
            src: src_mask.to_be_bytes(),
            proto: if proto.is_some() { 0xff } else { 0 },
            ..Default::default()
        },
    )))
}

fn ipv6(prefix: u32) -> Item {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    Item::Ipv6(Some(Spec::masked(
        Ipv6Fields {
            src: (0x2001_0db8u128 << 96).to_be_bytes(),
            ..Default::default()
        },
        Ipv6Fields {
            src: mask.to_be_bytes(),
            ..Default::default()
        },
    )))
}

fn tcp(dst_mask: u16, flags_mask: u8) -> Item {
    Item::Tcp(Some(Spec::masked(
        TcpFields {
            dst_port: 80,
            flags: 0x02 & flags_mask,
            ..Default::default()
        },
        TcpFields {
            dst_port: dst_mask,
            flags: flags_mask,
            ..Default::default()
        },
    )))
}

fn ports(dst_mask: u16) -> Spec<PortFields> {
    Spec::masked(
        PortFields {
            dst_port: 5000,
            ..Default::default()
        },
        PortFields {
            dst_port: dst_mask,
            ..Default::default()
        },
    )
}

fn port_range() -> Item {
    Item::Udp(Some(Spec {
        spec: PortFields {
            dst_port: 30000,
            ..Default::default()
        },
        mask: PortFields {
            dst_port: 0xffff,
            ..Default::default()
        },
        last: Some(PortFields {
            dst_port: 30500,
            ..Default::default()
        }),
    }))
}

fn icmp(v6: bool) -> Item {
    let s = Spec::masked(
        IcmpFields {
            icmp_type: 8,
            code: 0,
        },
        IcmpFields {
            icmp_type: 0xff,
            code: 0,
        },
    );
    if v6 {
        Item::Icmp6(Some(s))
    } else {
        Item::Icmp(Some(s))
    }
}

/// capo's any-fragment punt.
fn fragment_range() -> Item {
    Item::Ipv4(Some(Spec::any_fragment()))
}

fn rule(prio: u32, pattern: &[Item], actions: &[Action]) -> FlowRule {
    FlowRule::new(Attr::ingress(Group::ROOT, Priority(prio)), pattern, actions)
        .expect("a well-formed rule")
}

fn drop_rule(pattern: &[Item]) -> FlowRule {
    rule(0, pattern, &[Action::Count(0), Action::Drop])
}

const V4: u16 = 0x0800;
const V6: u16 = 0x86dd;

struct Case {
    profile: &'static str,
    what: &'static str,
    cite: &'static str,
    rule: FlowRule,
    accepted: bool,
}

fn caps(profile: &str) -> NicCaps {
    match profile {
        "mlx5" => NicCaps::mlx5(4096),
        "e810" => NicCaps::e810(4096),
        "cnxk" => NicCaps::cnxk(4096),
        _ => NicCaps::unknown("unknown", 1024),
    }
}

fn cases() -> Vec<Case> {
    let c = |profile, what, cite, rule, accepted| Case {
        profile,
        what,
        cite,
        rule,
        accepted,
    };
    vec![
        // mlx5
        c(
            "mlx5",
            "IPv4 prefix mask",
            "net/mlx5/mlx5_flow.c:2583-2664",
            drop_rule(&[eth(V4), ipv4(0xffff_0000, None)]),
            true,
        ),
        c(
            "mlx5",
            "partial port mask",
            "net/mlx5/mlx5_flow.c:2846-2883",
            drop_rule(&[eth(V4), ipv4(0, None), tcp(0xff00, 0)]),
            true,
        ),
        c(
            "mlx5",
            "TCP flags",
            "net/mlx5/mlx5_flow.c:2846-2883",
            drop_rule(&[eth(V4), ipv4(0, None), tcp(0xffff, 0x12)]),
            true,
        ),
        c(
            "mlx5",
            "SCTP item",
            "net/mlx5/mlx5_flow_dv.c:7446-7449 (item not supported)",
            drop_rule(&[eth(V4), ipv4(0, None), Item::Sctp(Some(ports(0xffff)))]),
            false,
        ),
        c(
            "mlx5",
            "ICMP item",
            "net/mlx5/mlx5_flow.c:2369-2411",
            drop_rule(&[eth(V4), ipv4(0, None), icmp(false)]),
            true,
        ),
        c(
            "mlx5",
            "ICMP6 item",
            "net/mlx5/mlx5_flow.c:2316-2352",
            drop_rule(&[eth(V6), ipv6(0), icmp(true)]),
            true,
        ),
        c(
            "mlx5",
            "port range",
            "net/mlx5/mlx5_flow.c:2792-2827 (last only equal to spec)",
            drop_rule(&[eth(V4), ipv4(0, None), port_range()]),
            false,
        ),
        c(
            "mlx5",
            "the any-fragment range",
            "net/mlx5/mlx5_flow_dv.c:2606-2677",
            drop_rule(&[eth(V4), fragment_range()]),
            true,
        ),
        c(
            "mlx5",
            "DROP with MARK",
            "net/mlx5/mlx5_flow_dv.c:8098-8113",
            rule(
                0,
                &[eth(V4), ipv4(0, None)],
                &[Action::Mark(1), Action::Drop],
            ),
            false,
        ),
        c(
            "mlx5",
            "root priority 2",
            "net/mlx5/mlx5_flow.c:1355-1356 (0..1 on 8-priority devices)",
            drop_rule(&[eth(V4)]).with_attr(Attr::ingress(Group::ROOT, Priority(2))),
            false,
        ),
        c(
            "mlx5",
            "MARK 0xffffef",
            "common/mlx5/mlx5_prm.h:248-257",
            rule(
                0,
                &[eth(V4)],
                &[Action::Mark(0xff_ffef), Action::Rss(Default::default())],
            ),
            true,
        ),
        c(
            "mlx5",
            "MARK 0xfffff0",
            "common/mlx5/mlx5_prm.h:248-257 (reserved)",
            rule(
                0,
                &[eth(V4)],
                &[Action::Mark(0xff_fff0), Action::Rss(Default::default())],
            ),
            false,
        ),
        // ice (E810)
        c(
            "e810",
            "exact IPv4 address",
            "net/ice/ice_fdir_filter.c:2045-2052",
            drop_rule(&[eth(V4), ipv4(u32::MAX, None)]),
            true,
        ),
        c(
            "e810",
            "IPv4 prefix mask",
            "net/ice/ice_fdir_filter.c:2045-2052",
            drop_rule(&[eth(V4), ipv4(0xffff_ff00, None)]),
            false,
        ),
        c(
            "e810",
            "IPv6 prefix mask",
            "net/ice/ice_fdir_filter.c:2113-2118 (widened to any)",
            drop_rule(&[eth(V6), ipv6(64)]),
            false,
        ),
        c(
            "e810",
            "exact port",
            "net/ice/ice_fdir_filter.c:2194-2200",
            drop_rule(&[eth(V4), ipv4(u32::MAX, None), tcp(0xffff, 0)]),
            true,
        ),
        c(
            "e810",
            "partial port mask",
            "net/ice/ice_fdir_filter.c:2194-2200",
            drop_rule(&[eth(V4), ipv4(u32::MAX, None), tcp(0xff00, 0)]),
            false,
        ),
        c(
            "e810",
            "partial UDP port mask",
            "net/ice/ice_fdir_filter.c:2241-2247",
            drop_rule(&[
                eth(V4),
                ipv4(u32::MAX, None),
                Item::Udp(Some(ports(0xfff0))),
            ]),
            false,
        ),
        c(
            "e810",
            "TCP flags",
            "net/ice/ice_fdir_filter.c:2180-2192 (Invalid TCP mask)",
            drop_rule(&[eth(V4), ipv4(u32::MAX, None), tcp(0xffff, 0x12)]),
            false,
        ),
        c(
            "e810",
            "SCTP item",
            "net/ice/ice_fdir_filter.c:115, :121",
            drop_rule(&[
                eth(V4),
                ipv4(u32::MAX, None),
                Item::Sctp(Some(ports(0xffff))),
            ]),
            true,
        ),
        c(
            "e810",
            "ICMP item",
            "net/ice/ice_fdir_filter.c:109-138 (no template)",
            drop_rule(&[eth(V4), ipv4(u32::MAX, None), icmp(false)]),
            false,
        ),
        c(
            "e810",
            "ICMP6 item",
            "net/ice/ice_fdir_filter.c:109-138 (no template)",
            drop_rule(&[eth(V6), ipv6(128), icmp(true)]),
            false,
        ),
        c(
            "e810",
            "the any-fragment range",
            "net/ice/ice_fdir_filter.c:2068-2090 (not encoded)",
            drop_rule(&[eth(V4), fragment_range()]),
            false,
        ),
        c(
            "e810",
            "priority 1 with COUNT",
            "net/ice/ice_fdir_filter.c:2470; net/ice/ice_switch_filter.c:1811-1849",
            drop_rule(&[eth(V4), ipv4(u32::MAX, None)])
                .with_attr(Attr::ingress(Group::ROOT, Priority(1))),
            false,
        ),
        c(
            "e810",
            "a group",
            "net/ice/ice_generic_flow.c:2052-2057",
            drop_rule(&[eth(V4)]).with_attr(Attr::ingress(Group(1), Priority(0))),
            false,
        ),
        c(
            "e810",
            "IPv4 protocol alone",
            "not determined from the source: refused (conservative)",
            drop_rule(&[eth(V4), ipv4(u32::MAX, Some(47))]),
            false,
        ),
        // cnxk, default key profile
        c(
            "cnxk",
            "IPv4 prefix mask",
            "common/cnxk/roc_npc_utils.c:61-107 (IPv4 addresses extracted)",
            drop_rule(&[eth(V4), ipv4(0xffff_0000, None)]),
            true,
        ),
        c(
            "cnxk",
            "partial port mask",
            "common/cnxk/roc_npc_utils.c:61-107 (ports extracted)",
            drop_rule(&[eth(V4), ipv4(0, None), tcp(0xff00, 0)]),
            true,
        ),
        c(
            "cnxk",
            "IPv6 address",
            "common/cnxk/roc_npc_utils.c:109-158 (not extracted by default)",
            drop_rule(&[eth(V6), ipv6(128)]),
            false,
        ),
        c(
            "cnxk",
            "TCP flags",
            "common/cnxk/roc_npc_utils.c:150-156 (not extracted by default)",
            drop_rule(&[eth(V4), ipv4(0, None), tcp(0xffff, 0x12)]),
            false,
        ),
        c(
            "cnxk",
            "IPv4 protocol byte",
            "common/cnxk/roc_npc_utils.c:109-158 (not extracted by default)",
            drop_rule(&[eth(V4), ipv4(0, Some(47))]),
            false,
        ),
        c(
            "cnxk",
            "ICMP6 item",
            "net/cnxk/cnxk_flow.c:6-61 (silently ignored: would match all IPv6)",
            drop_rule(&[eth(V6), ipv6(0), icmp(true)]),
            false,
        ),
        c(
            "cnxk",
            "any range",
            "common/cnxk/roc_npc_utils.c:116-118",
            drop_rule(&[eth(V4), ipv4(0, None), port_range()]),
            false,
        ),
        c(
            "cnxk",
            "priority 2",
            "common/cnxk/roc_npc.c:745-762 (three levels by default)",
            drop_rule(&[eth(V4)]).with_attr(Attr::ingress(Group::ROOT, Priority(2))),
            true,
        ),
        c(
            "cnxk",
            "priority 3",
            "common/cnxk/roc_npc.c:745-762",
            drop_rule(&[eth(V4)]).with_attr(Attr::ingress(Group::ROOT, Priority(3))),
            false,
        ),
        c(
            "cnxk",
            "DROP with MARK",
            "common/cnxk/roc_npc.c:615-621",
            rule(0, &[eth(V4)], &[Action::Mark(1), Action::Drop]),
            false,
        ),
        c(
            "cnxk",
            "JUMP",
            "net/cnxk/cnxk_flow.c:241-244",
            rule(0, &[eth(V4)], &[Action::Jump(Group(1))]),
            false,
        ),
        c(
            "cnxk",
            "MARK 0xffef",
            "common/cnxk/roc_npc.c:415-428 (takes up to 0xfffd; 16 bits used)",
            rule(
                0,
                &[eth(V4)],
                &[Action::Mark(0xffef), Action::Rss(Default::default())],
            ),
            true,
        ),
        // A PMD without a profile: only what the probe tested.
        c(
            "unknown",
            "exact IPv4 address and port",
            "the probe's DROP rule",
            rule(
                0,
                &[
                    eth(V4),
                    ipv4(u32::MAX, None),
                    Item::Udp(Some(ports(0xffff))),
                ],
                &[Action::Drop],
            ),
            true,
        ),
        c(
            "unknown",
            "COUNT",
            "untested by the probe",
            drop_rule(&[eth(V4), ipv4(u32::MAX, None)]),
            false,
        ),
        c(
            "unknown",
            "IPv6",
            "untested by the probe",
            rule(0, &[eth(V6), ipv6(128)], &[Action::Drop]),
            false,
        ),
    ]
}

#[test]
fn test_profiles_follow_the_driver_sources() {
    let mut wrong = Vec::new();
    for case in cases() {
        let mut nic = SimNic::new(caps(case.profile));
        let got = nic.validate(&case.rule);
        if got.is_ok() != case.accepted {
            wrong.push(format!(
                "{}: {} ({}): expected {}, got {got:?}",
                case.profile,
                case.what,
                case.cite,
                if case.accepted { "accepted" } else { "refused" },
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// ice has 256 counters per PF (`net/ice/ice_fdir_filter.c:244-265`): the 257th
/// counted rule fails at create although it validates (`:1415-1425`); rules without
/// COUNT still go in.
#[test]
fn test_e810_runs_out_of_counters_at_create() {
    let mut nic = SimNic::new(NicCaps::e810(4096));
    let counted = |i: u32| {
        let item = Item::Ipv4(Some(Spec::masked(
            Ipv4Fields {
                src: (0x0a00_0000 + i).to_be_bytes(),
                ..Default::default()
            },
            Ipv4Fields {
                src: [255; 4],
                ..Default::default()
            },
        )));
        drop_rule(&[eth(V4), item])
    };
    for i in 0..256 {
        nic.create(&counted(i)).expect("within the counter pool");
    }
    assert!(nic.validate(&counted(256)).is_ok());
    let err = nic.create(&counted(256)).expect_err("no counter left");
    assert_eq!(err.kind, FlowErrorKind::Invalid);
    let uncounted = rule(0, &[eth(V4), ipv4(u32::MAX, None)], &[Action::Drop]);
    assert!(nic.create(&uncounted).is_ok());
}

/// ice (`net/ice/ice_fdir_filter.c:1596`) and cnxk (`net/cnxk/cnxk_flow.c:418`)
/// count packets only; mlx5 counts bytes too (`net/mlx5/mlx5_flow_dv.c:16756-16757`).
#[test]
fn test_counter_bytes_follow_the_driver() {
    use capo_offload::flow::{L3Header, L4Header};
    let headers = capo_offload::Headers {
        ether_type: V4,
        l3: L3Header::V4(Ipv4Fields {
            src: [10, 1, 0, 0],
            dst: [10, 2, 0, 1],
            proto: 17,
            fragment_offset: 0,
        }),
        l4: L4Header::Udp(PortFields {
            src_port: 40000,
            dst_port: 53,
        }),
    };
    for (caps, bytes) in [
        (NicCaps::mlx5(16), 100),
        (NicCaps::e810(16), 0),
        (NicCaps::cnxk(16), 0),
    ] {
        let mut nic = SimNic::new(caps.clone());
        let h = nic
            .create(&drop_rule(&[eth(V4), ipv4(u32::MAX, None)]))
            .expect("accepted");
        nic.receive(&headers, 100);
        let c = nic.query_count(h, false).expect("counted");
        assert_eq!((c.hits, c.bytes), (1, bytes), "{}", caps.name);
    }
}
