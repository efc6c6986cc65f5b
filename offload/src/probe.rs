//! The capability probe (offload.md §6.5): one canary rule per capability the
//! planner may use, each validated, created and destroyed again on the device, so a
//! PMD whose validate passes and create fails (net_tap without TC flower) is caught
//! too. A driver's profile ([`NicCaps`]) says what its code accepts; the probe
//! keeps only what this device, firmware and configuration really take, and never
//! adds what the profile does not claim (a PMD may accept a rule and ignore part of
//! it, as cnxk does with ICMP6 items).
//!
//! Canaries match the source 192.0.2.1 (TEST-NET-1, never a real peer) and are
//! gone before the probe returns.

use crate::backend::FlowBackend;
use crate::caps::NicCaps;
use crate::error::FlowError;
use crate::flow::{
    Action, Attr, EthFields, FlowRule, Group, IcmpFields, Ipv4Fields, Ipv6Fields, Item, PortFields,
    Priority, Rss, Spec, TcpFields,
};
use crate::mark::{Mark, MarkKind};

/// A capability the planner may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// An IPv4/UDP DROP rule: rte_flow works at all.
    Drop,
    /// JUMP from group 0 to a rule in group 1.
    Groups,
    /// The profile's highest priority number.
    Priorities,
    /// COUNT beside DROP.
    Counters,
    /// MARK with the profile's widest id, beside RSS.
    Mark,
    /// TCP flags with a partial mask.
    TcpFlags,
    /// A UDP port range (`last`).
    PortRanges,
    /// A partial port mask.
    PortPrefixMasks,
    /// A partial IPv4 address mask.
    IpPrefixMasks,
    /// An IPv6 address.
    Ipv6,
    /// An SCTP item.
    Sctp,
    /// An ICMP item with its type.
    Icmp,
    /// An ICMP6 item with its type.
    Icmp6,
    /// The any-fragment IPv4 range.
    FragmentRange,
    /// The IPv4 protocol field without an L4 item.
    Ipv4Proto,
}

impl Capability {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Drop => "drop",
            Capability::Groups => "groups",
            Capability::Priorities => "priorities",
            Capability::Counters => "counters",
            Capability::Mark => "mark",
            Capability::TcpFlags => "tcp-flags",
            Capability::PortRanges => "port-ranges",
            Capability::PortPrefixMasks => "port-prefix-masks",
            Capability::IpPrefixMasks => "ip-prefix-masks",
            Capability::Ipv6 => "ipv6",
            Capability::Sctp => "sctp",
            Capability::Icmp => "icmp",
            Capability::Icmp6 => "icmp6",
            Capability::FragmentRange => "fragment-range",
            Capability::Ipv4Proto => "ipv4-proto",
        }
    }
}

/// What the probe found for one capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The canary was validated, created and destroyed.
    Supported,
    /// The device refused the canary.
    Refused(FlowError),
    /// The profile does not claim it: not tried, not used.
    NotClaimed,
    /// Not tried: the DROP canary was refused, so nothing else is used.
    Skipped,
}

/// One line of the probe's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The capability.
    pub capability: Capability,
    /// What happened.
    pub outcome: Outcome,
}

/// The capabilities to plan with and how each was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    /// The profile less what the device refused (`NicCaps::none` when it refused
    /// the DROP canary).
    pub caps: NicCaps,
    /// One finding per capability, in probe order.
    pub findings: Vec<Finding>,
}

impl Probed {
    /// The first refusal, if any.
    pub fn first_refusal(&self) -> Option<&FlowError> {
        self.findings.iter().find_map(|f| match &f.outcome {
            Outcome::Refused(e) => Some(e),
            _ => None,
        })
    }
}

const CANARY_SRC: [u8; 4] = [192, 0, 2, 1];

fn eth(ether_type: u16) -> Item {
    Item::Eth(Some(Spec::masked(
        EthFields { ether_type },
        EthFields { ether_type: 0xffff },
    )))
}

fn canary_v4(src_mask: [u8; 4], proto: Option<u8>, fragment: bool) -> Item {
    let mut s = if fragment {
        Spec::any_fragment()
    } else {
        Spec::masked(Ipv4Fields::default(), Ipv4Fields::default())
    };
    s.spec.src = CANARY_SRC;
    s.mask.src = src_mask;
    if let Some(last) = &mut s.last {
        last.src = CANARY_SRC;
    }
    if let Some(p) = proto {
        s.spec.proto = p;
        s.mask.proto = 0xff;
    }
    Item::Ipv4(Some(s))
}

fn udp_ports(mask: u16, last: Option<u16>) -> Spec<PortFields> {
    Spec {
        spec: PortFields {
            dst_port: 0x9000,
            ..Default::default()
        },
        mask: PortFields {
            dst_port: mask,
            ..Default::default()
        },
        last: last.map(|l| PortFields {
            dst_port: l,
            ..Default::default()
        }),
    }
}

fn icmp_type(t: u8) -> Spec<IcmpFields> {
    Spec::masked(
        IcmpFields {
            icmp_type: t,
            code: 0,
        },
        IcmpFields {
            icmp_type: 0xff,
            code: 0,
        },
    )
}

/// The canary of `cap` under `profile` (`None`: nothing to build).
fn canary(cap: Capability, profile: &NicCaps) -> Option<FlowRule> {
    let exact = [255; 4];
    let v4 = || canary_v4(exact, None, false);
    let drop = [Action::Drop];
    let root = |prio: u32, pattern: &[Item], actions: &[Action]| {
        FlowRule::new(Attr::ingress(Group::ROOT, Priority(prio)), pattern, actions).ok()
    };
    match cap {
        Capability::Drop => root(0, &[eth(0x0800), v4(), Item::Udp(None)], &drop),
        Capability::Groups => None,
        Capability::Priorities => {
            let group = if profile.groups {
                Group(1)
            } else {
                Group::ROOT
            };
            FlowRule::new(
                Attr::ingress(group, Priority(profile.max_priority)),
                &[eth(0x0800), v4(), Item::Udp(None)],
                &drop,
            )
            .ok()
        }
        Capability::Counters => root(
            0,
            &[eth(0x0800), v4(), Item::Udp(None)],
            &[Action::Count(0), Action::Drop],
        ),
        Capability::Mark => {
            let widest = Mark {
                gen_tag: 3,
                kind: MarkKind::Punt,
                index: crate::mark::max_index(profile.mark_bits),
            }
            .encode(profile.mark_bits)?;
            root(
                0,
                &[eth(0x0800), v4(), Item::Udp(None)],
                &[Action::Mark(widest), Action::Rss(Rss::default())],
            )
        }
        Capability::TcpFlags => root(
            0,
            &[
                eth(0x0800),
                v4(),
                Item::Tcp(Some(Spec::masked(
                    TcpFields {
                        flags: 0x02,
                        ..Default::default()
                    },
                    TcpFields {
                        flags: 0x12,
                        ..Default::default()
                    },
                ))),
            ],
            &drop,
        ),
        Capability::PortRanges => root(
            0,
            &[
                eth(0x0800),
                v4(),
                Item::Udp(Some(udp_ports(0xffff, Some(0x90ff)))),
            ],
            &drop,
        ),
        Capability::PortPrefixMasks => root(
            0,
            &[eth(0x0800), v4(), Item::Udp(Some(udp_ports(0xff00, None)))],
            &drop,
        ),
        Capability::IpPrefixMasks => root(
            0,
            &[eth(0x0800), canary_v4([255, 255, 255, 0], None, false)],
            &drop,
        ),
        Capability::Ipv6 => {
            let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            root(
                0,
                &[
                    eth(0x86dd),
                    Item::Ipv6(Some(Spec::masked(
                        Ipv6Fields {
                            src,
                            ..Default::default()
                        },
                        Ipv6Fields {
                            src: [0xff; 16],
                            ..Default::default()
                        },
                    ))),
                    Item::Udp(None),
                ],
                &drop,
            )
        }
        Capability::Sctp => root(
            0,
            &[eth(0x0800), v4(), Item::Sctp(Some(udp_ports(0xffff, None)))],
            &drop,
        ),
        Capability::Icmp => root(
            0,
            &[eth(0x0800), v4(), Item::Icmp(Some(icmp_type(8)))],
            &drop,
        ),
        Capability::Icmp6 => root(
            0,
            &[
                eth(0x86dd),
                Item::Ipv6(None),
                Item::Icmp6(Some(icmp_type(128))),
            ],
            &drop,
        ),
        Capability::FragmentRange => root(0, &[eth(0x0800), canary_v4(exact, None, true)], &drop),
        Capability::Ipv4Proto => root(0, &[eth(0x0800), canary_v4(exact, Some(47), false)], &drop),
    }
}

/// Validates, creates and destroys `rule`.
fn try_rule(backend: &mut impl FlowBackend, rule: &FlowRule) -> Result<(), FlowError> {
    backend.validate(rule)?;
    let h = backend.create(rule)?;
    backend.destroy(h)
}

/// The capability's on/off field in `c`, for those that are one.
fn switch(cap: Capability, c: &mut NicCaps) -> Option<&mut bool> {
    match cap {
        Capability::Drop | Capability::Groups | Capability::Priorities | Capability::Mark => None,
        Capability::Counters => Some(&mut c.counters),
        Capability::TcpFlags => Some(&mut c.tcp_flags),
        Capability::PortRanges => Some(&mut c.l4_ranges),
        Capability::PortPrefixMasks => Some(&mut c.port_prefix_masks),
        Capability::IpPrefixMasks => Some(&mut c.ip_prefix_masks),
        Capability::Ipv6 => Some(&mut c.ipv6),
        Capability::Sctp => Some(&mut c.sctp),
        Capability::Icmp => Some(&mut c.icmp),
        Capability::Icmp6 => Some(&mut c.icmp6),
        Capability::FragmentRange => Some(&mut c.ipv4_fragment_range),
        Capability::Ipv4Proto => Some(&mut c.ipv4_proto),
    }
}

/// Whether `profile` claims `cap`.
fn claimed(cap: Capability, c: &NicCaps) -> bool {
    match cap {
        Capability::Drop => c.flow_api,
        Capability::Groups => c.groups && !c.groups_ignored,
        Capability::Priorities => c.max_priority > 0,
        Capability::Mark => c.mark_bits >= 8,
        _ => switch(cap, &mut c.clone()).is_some_and(|on| *on),
    }
}

/// What refusing `cap` takes away (a refused DROP drops everything, a refused
/// priority keeps the highest one found: both are the caller's).
fn withdraw(cap: Capability, c: &mut NicCaps) {
    match cap {
        Capability::Groups => c.groups = false,
        Capability::Mark => c.mark_bits = 0,
        _ => {
            if let Some(on) = switch(cap, c) {
                *on = false;
            }
        }
    }
}

/// Every capability, in probe order (DROP first: without it nothing else is tried).
pub const ALL: [Capability; 15] = [
    Capability::Drop,
    Capability::Groups,
    Capability::Priorities,
    Capability::Counters,
    Capability::Mark,
    Capability::TcpFlags,
    Capability::PortRanges,
    Capability::PortPrefixMasks,
    Capability::IpPrefixMasks,
    Capability::Ipv6,
    Capability::Sctp,
    Capability::Icmp,
    Capability::Icmp6,
    Capability::FragmentRange,
    Capability::Ipv4Proto,
];

/// Probes `backend` for what `profile` claims.
pub fn probe(backend: &mut impl FlowBackend, profile: NicCaps) -> Probed {
    let mut caps = profile.clone();
    let mut findings = Vec::with_capacity(ALL.len());
    let mut usable = true;
    for cap in ALL {
        let outcome = if !usable {
            Outcome::Skipped
        } else if !claimed(cap, &profile) {
            Outcome::NotClaimed
        } else {
            let result = match cap {
                Capability::Groups => probe_groups(backend),
                Capability::Priorities => {
                    // Keep the highest priority the device takes (ConnectX devices
                    // differ), refusing only the profile's claim.
                    let (highest, refusal) = probe_priorities(backend, &caps);
                    caps.max_priority = highest;
                    caps.root_max_priority = caps.root_max_priority.min(highest);
                    refusal.map_or(Ok(()), Err)
                }
                _ => match canary(cap, &profile) {
                    Some(rule) => try_rule(backend, &rule),
                    None => Ok(()),
                },
            };
            match result {
                Ok(()) => Outcome::Supported,
                Err(e) => {
                    if cap == Capability::Drop {
                        usable = false;
                    }
                    if cap != Capability::Priorities {
                        withdraw(cap, &mut caps);
                    }
                    Outcome::Refused(e)
                }
            }
        };
        findings.push(Finding {
            capability: cap,
            outcome,
        });
    }
    if !usable {
        caps = NicCaps::none(profile.name);
    }
    Probed { caps, findings }
}

/// The highest priority number up to `caps.max_priority` the device takes (in
/// group 1 with groups, else in the root), by bisection; with the refusal of the
/// claimed maximum when it is lower.
fn probe_priorities(backend: &mut impl FlowBackend, caps: &NicCaps) -> (u32, Option<FlowError>) {
    let mut at = |prio: u32| {
        let mut c = caps.clone();
        c.max_priority = prio;
        match canary(Capability::Priorities, &c) {
            Some(rule) => try_rule(backend, &rule),
            None => Ok(()),
        }
    };
    let refusal = match at(caps.max_priority) {
        Ok(()) => return (caps.max_priority, None),
        Err(e) => e,
    };
    // Priority 0 passed with the DROP canary; find the last accepted one below.
    let (mut lo, mut hi) = (0u32, caps.max_priority);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if at(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo, Some(refusal))
}

/// A DROP in group 1 and a JUMP to it from group 0, created in that order and
/// destroyed in reverse.
fn probe_groups(backend: &mut impl FlowBackend) -> Result<(), FlowError> {
    let in_group = FlowRule::new(
        Attr::ingress(Group(1), Priority(0)),
        &[
            eth(0x0800),
            canary_v4([255; 4], None, false),
            Item::Udp(None),
        ],
        &[Action::Drop],
    );
    let jump = FlowRule::new(
        Attr::ingress(Group::ROOT, Priority(0)),
        &[eth(0x0800), canary_v4([255; 4], None, false)],
        &[Action::Jump(Group(1))],
    );
    let (Ok(in_group), Ok(jump)) = (in_group, jump) else {
        return Ok(());
    };
    backend.validate(&in_group)?;
    let d = backend.create(&in_group)?;
    let j = backend.validate(&jump).and_then(|()| backend.create(&jump));
    let result = match j {
        Ok(j) => backend.destroy(j),
        Err(e) => Err(e),
    };
    let gone = backend.destroy(d);
    result.and(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimNic;

    fn outcomes(p: &Probed) -> Vec<(&'static str, &'static str)> {
        p.findings
            .iter()
            .map(|f| {
                (
                    f.capability.name(),
                    match f.outcome {
                        Outcome::Supported => "supported",
                        Outcome::Refused(_) => "refused",
                        Outcome::NotClaimed => "not claimed",
                        Outcome::Skipped => "skipped",
                    },
                )
            })
            .collect()
    }

    /// On a device that is exactly its profile, the probe confirms every claimed
    /// capability, refuses none and leaves no rule behind.
    #[test]
    fn test_each_profile_is_confirmed_on_its_own_device() {
        for profile in [
            NicCaps::mlx5(4096),
            NicCaps::e810(4096),
            NicCaps::cnxk(4096),
            NicCaps::unknown("unknown", 64),
        ] {
            let mut nic = SimNic::new(profile.clone());
            let p = probe(&mut nic, profile.clone());
            assert_eq!(p.caps, profile, "{}", profile.name);
            assert!(
                p.first_refusal().is_none(),
                "{}: {:?}",
                profile.name,
                p.findings
            );
            assert_eq!(nic.installed(), 0);
            for (name, outcome) in outcomes(&p) {
                assert!(
                    outcome == "supported" || outcome == "not claimed",
                    "{}: {name} {outcome}",
                    profile.name
                );
            }
        }
        let mlx5 = probe(&mut SimNic::new(NicCaps::mlx5(64)), NicCaps::mlx5(64));
        assert!(outcomes(&mlx5).contains(&("groups", "supported")));
        assert!(outcomes(&mlx5).contains(&("sctp", "not claimed")));
    }

    /// A device weaker than its profile (firmware without the flex parser, an
    /// 8-priority ConnectX, a board's key profile) loses exactly what it refuses.
    #[test]
    fn test_refused_capabilities_are_withdrawn() {
        let mut device = NicCaps::mlx5(4096);
        device.icmp = false;
        device.icmp6 = false;
        device.tcp_flags = false;
        device.max_priority = 3;
        let p = probe(&mut SimNic::new(device), NicCaps::mlx5(4096));
        let mut want = NicCaps::mlx5(4096);
        want.icmp = false;
        want.icmp6 = false;
        want.tcp_flags = false;
        // The highest priority it takes, found by bisection.
        want.max_priority = 3;
        assert_eq!(p.caps, want);
        let refused: Vec<_> = outcomes(&p)
            .into_iter()
            .filter(|(_, o)| *o == "refused")
            .map(|(n, _)| n)
            .collect();
        assert_eq!(refused, vec!["priorities", "tcp-flags", "icmp", "icmp6"]);
    }

    /// A port without rte_flow: DROP refused, nothing else tried, no offload.
    #[test]
    fn test_a_port_without_rte_flow_is_software_only() {
        let p = probe(
            &mut SimNic::new(NicCaps::none("net_null")),
            NicCaps::mlx5(4096),
        );
        assert_eq!(p.caps.mode(), crate::caps::OffloadMode::SoftwareOnly);
        assert_eq!(outcomes(&p)[0], ("drop", "refused"));
        assert!(outcomes(&p)[1..].iter().all(|(_, o)| *o == "skipped"));
        assert!(p.first_refusal().is_some());
    }

    /// Groups are judged by a JUMP: cnxk takes the group number and ignores it, so
    /// a device that refuses JUMP keeps no groups.
    #[test]
    fn test_groups_need_a_working_jump() {
        let mut device = NicCaps::mlx5(4096);
        device.groups = false;
        device.groups_ignored = true;
        let p = probe(&mut SimNic::new(device), NicCaps::mlx5(4096));
        assert!(!p.caps.groups);
        assert_eq!(p.caps.mode(), crate::caps::OffloadMode::DropOnly);
        assert!(outcomes(&p).contains(&("groups", "refused")));
    }
}
