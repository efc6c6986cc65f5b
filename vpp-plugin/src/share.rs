//! The NIC share through VPP's flow layer (`vnet/flow`): the agent plans it, the
//! plugin installs it on the hardware under the interfaces it polices.
//!
//! VPP's driver owns the NIC, so capo cannot program it with rte_flow itself: it asks
//! VPP's flow layer, which hands each flow to the driver (`flow_ops_function` of the
//! device class; dpdk turns it into an rte_flow rule). The layer has no groups and no
//! priorities, so the agent plans in flat-marks mode: every rule decides its whole
//! match for the generation it was planned on (a drop, or a MARK in capo's layout,
//! which names the generation and arrives as the buffer's `flow_id`), and the order
//! of two rules never matters.
//!
//! [`FlowLayerRule`] is one validated rule (an `ipv4-n-tuple` or `ipv6-n-tuple` flow
//! with a DROP or MARK action). [`ShareState`] installs a share over any [`FlowLayer`]
//! (VPP's in `vnet_ifaces`, a recording double in the tests), removals first:
//!
//! 1. the last share's rules that are not in the new one are disabled and deleted;
//! 2. hardware no longer under a policed interface has its rules disabled;
//! 3. each new rule is added once and enabled on every target hardware interface.
//!
//! A driver without flow support answers "not supported" to the first rule: the
//! interface is fallback-only (every rule in software) and not asked again. Any other
//! refusal leaves that rule in software on that interface; software holds the whole
//! policy, so a missing drop costs CPU, never a wrong verdict.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use capo_proto::capo::agent::v1 as api;
use capo_proto::capo::dataplane::v1 as pb;

/// VPP's "not supported" flow error (`VNET_FLOW_ERROR_NOT_SUPPORTED`).
pub const FLOW_ERROR_NOT_SUPPORTED: i32 = -1;

/// Addresses of one family, each with its mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowAddrs {
    /// `ipv4-n-tuple`.
    V4 {
        /// Source address and mask.
        src: ([u8; 4], [u8; 4]),
        /// Destination address and mask.
        dst: ([u8; 4], [u8; 4]),
    },
    /// `ipv6-n-tuple`.
    V6 {
        /// Source address and mask.
        src: ([u8; 16], [u8; 16]),
        /// Destination address and mask.
        dst: ([u8; 16], [u8; 16]),
    },
}

/// What a flow does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowAction {
    /// The NIC drops them.
    Drop,
    /// The NIC delivers them with this `flow_id` (capo's mark layout).
    Mark(u32),
}

/// One rule of a NIC share, as VPP's flow layer takes it: an n-tuple flow that drops
/// or marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowLayerRule {
    /// Drop or mark.
    pub action: FlowAction,
    /// Addresses and masks.
    pub addrs: FlowAddrs,
    /// The IP protocol, or any.
    pub protocol: Option<u8>,
    /// Source port and mask (TCP, UDP; mask 0: any).
    pub src_port: (u16, u16),
    /// Destination port and mask.
    pub dst_port: (u16, u16),
}

/// Why a share was refused before anything was installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// A rule's addresses are neither four nor sixteen bytes, or differ in length.
    #[error("rule {0}: addresses and masks must all be 4 bytes (IPv4) or all 16 (IPv6)")]
    Addresses(usize),
    /// A value does not fit its field.
    #[error("rule {index}: {field} {value} is out of range")]
    OutOfRange {
        /// The rule's position in the share.
        index: usize,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// Ports on a protocol without them (or on any protocol).
    #[error("rule {0}: ports need the protocol TCP or UDP")]
    PortsWithoutL4(usize),
    /// Neither a drop nor a mark, or mark 0 (VPP's "no mark").
    #[error("rule {0}: the action must be DROP, or MARK with a non-zero mark")]
    Action(usize),
    /// Planned on a generation the plugin does not hold.
    #[error("the share was planned on generation {share}, the plugin holds {active}")]
    Generation {
        /// The share's generation.
        share: u64,
        /// The plugin's active generation (0: none).
        active: u64,
    },
}

const TCP: u8 = 6;
const UDP: u8 = 17;

impl FlowLayerRule {
    /// Validates rule `index` of a share.
    ///
    /// # Errors
    ///
    /// [`ShareError`] saying which field is wrong.
    pub fn from_proto(index: usize, r: &pb::FlowLayerRule) -> Result<Self, ShareError> {
        let action = match pb::FlowLayerAction::try_from(r.action) {
            Ok(pb::FlowLayerAction::Drop) => FlowAction::Drop,
            Ok(pb::FlowLayerAction::Mark) if r.mark != 0 => FlowAction::Mark(r.mark),
            _ => return Err(ShareError::Action(index)),
        };
        let addrs = match (
            r.src_addr.len(),
            r.src_mask.len(),
            r.dst_addr.len(),
            r.dst_mask.len(),
        ) {
            (4, 4, 4, 4) => FlowAddrs::V4 {
                src: (array(&r.src_addr), array(&r.src_mask)),
                dst: (array(&r.dst_addr), array(&r.dst_mask)),
            },
            (16, 16, 16, 16) => FlowAddrs::V6 {
                src: (array(&r.src_addr), array(&r.src_mask)),
                dst: (array(&r.dst_addr), array(&r.dst_mask)),
            },
            _ => return Err(ShareError::Addresses(index)),
        };
        let field = |field: &'static str, value: u32, max: u32| {
            if value > max {
                Err(ShareError::OutOfRange {
                    index,
                    field,
                    value,
                })
            } else {
                Ok(value)
            }
        };
        let protocol = field("protocol", r.protocol, 255)? as u8;
        let port = |name, value, mask_name, mask| -> Result<(u16, u16), ShareError> {
            Ok((
                field(name, value, 0xffff)? as u16,
                field(mask_name, mask, 0xffff)? as u16,
            ))
        };
        let src_port = port("src_port", r.src_port, "src_port_mask", r.src_port_mask)?;
        let dst_port = port("dst_port", r.dst_port, "dst_port_mask", r.dst_port_mask)?;
        let protocol = r.protocol_exact.then_some(protocol);
        let has_ports = src_port.1 != 0 || dst_port.1 != 0;
        if has_ports && !matches!(protocol, Some(TCP | UDP)) {
            return Err(ShareError::PortsWithoutL4(index));
        }
        Ok(FlowLayerRule {
            action,
            addrs,
            protocol,
            src_port,
            dst_port,
        })
    }
}

/// A sampled flow as the agent reads it ([`pb::FlowSample`]).
pub fn sample_to_proto(p: &capo_policy::Packet, tcp_flags: u8, packets: u64) -> pb::FlowSample {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut out = pb::FlowSample {
        src: bytes(p.src),
        dst: bytes(p.dst),
        protocol: u32::from(p.protocol.0),
        packets,
        ..Default::default()
    };
    match p.l4 {
        capo_policy::eval::L4::Ports { src, dst } => {
            out.src_port = u32::from(src);
            out.dst_port = u32::from(dst);
        }
        capo_policy::eval::L4::Icmp { icmp_type, code } => {
            out.icmp = true;
            out.src_port = u32::from(icmp_type);
            out.dst_port = u32::from(code);
        }
        capo_policy::eval::L4::None => out.no_l4 = true,
    }
    if p.protocol == capo_policy::Protocol::TCP {
        out.tcp_flags = u32::from(tcp_flags);
    }
    out
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(b.get(..N).unwrap_or(&[0; N][..]));
    out
}

/// Validates a whole share planned on `generation` while the plugin holds `active`.
///
/// # Errors
///
/// The first bad rule, or a generation the plugin does not hold (a share without
/// rules is taken whatever the plugin holds: it only removes).
pub fn validate_share(share: &pb::NicShare, active: u64) -> Result<Vec<FlowLayerRule>, ShareError> {
    if !share.rules.is_empty() && share.generation != active {
        return Err(ShareError::Generation {
            share: share.generation,
            active,
        });
    }
    share
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| FlowLayerRule::from_proto(i, r))
        .collect()
}

/// VPP's flow layer, as the share needs it. Errors are VPP's flow error codes.
pub trait FlowLayer {
    /// Adds a flow (not yet on any interface): its index.
    fn add(&mut self, rule: &FlowLayerRule) -> Result<u32, i32>;
    /// Enables flow `flow` on hardware interface `hw_if_index`.
    fn enable(&mut self, flow: u32, hw_if_index: u32) -> Result<(), i32>;
    /// Disables it there.
    fn disable(&mut self, flow: u32, hw_if_index: u32);
    /// Deletes the flow.
    fn delete(&mut self, flow: u32);
}

/// A hardware interface under a policed interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// VPP's hardware interface index.
    pub hw_if_index: u32,
    /// The (first) policed software interface on it.
    pub sw_if_index: u32,
    /// Its name.
    pub name: String,
    /// The driver (device class).
    pub driver: String,
}

/// What one hardware interface took.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HwState {
    target: Target,
    /// `Some(false)`: the driver has no flow support (not asked again).
    takes_flows: Option<bool>,
    refused: u32,
    detail: String,
}

/// The installed share: its rules, the flow of each, where each is enabled.
#[derive(Debug, Default)]
pub struct ShareState {
    generation: u64,
    rules: usize,
    flows: HashMap<FlowLayerRule, (u32, BTreeSet<u32>)>,
    hardware: BTreeMap<u32, HwState>,
}

impl ShareState {
    /// Installs `rules` (planned on `generation`) on `targets`, removals first
    /// (see the module doc); what each interface took.
    pub fn apply<L: FlowLayer>(
        &mut self,
        layer: &mut L,
        generation: u64,
        rules: &[FlowLayerRule],
        targets: &[Target],
    ) -> Vec<api::FlowLayerInterface> {
        let wanted: BTreeSet<FlowLayerRule> = rules.iter().copied().collect();
        // 1. Rules the new share does not have.
        self.flows.retain(|rule, (flow, on)| {
            if wanted.contains(rule) {
                return true;
            }
            for hw in on.iter() {
                layer.disable(*flow, *hw);
            }
            layer.delete(*flow);
            false
        });
        // 2. Hardware no longer under a policed interface.
        let mut by_hw: BTreeMap<u32, &Target> = BTreeMap::new();
        for t in targets {
            by_hw.entry(t.hw_if_index).or_insert(t);
        }
        for (flow, on) in self.flows.values_mut() {
            on.retain(|hw| {
                let keep = by_hw.contains_key(hw);
                if !keep {
                    layer.disable(*flow, *hw);
                }
                keep
            });
        }
        self.hardware.retain(|hw, _| by_hw.contains_key(hw));
        // 3. Every new rule on every target that takes flows.
        for (hw, target) in &by_hw {
            let state = self.hardware.entry(*hw).or_insert_with(|| HwState {
                target: (*target).clone(),
                takes_flows: None,
                refused: 0,
                detail: String::new(),
            });
            state.target = (*target).clone();
            state.refused = 0;
            if state.takes_flows == Some(false) {
                continue;
            }
            for rule in &wanted {
                let (flow, on) = match self.flows.get_mut(rule) {
                    Some(entry) => entry,
                    None => match layer.add(rule) {
                        Ok(flow) => self.flows.entry(*rule).or_insert((flow, BTreeSet::new())),
                        Err(code) => {
                            state.refused += 1;
                            state.detail = format!("adding a flow: {}", flow_error_name(code));
                            continue;
                        }
                    },
                };
                if on.contains(hw) {
                    continue;
                }
                match layer.enable(*flow, *hw) {
                    Ok(()) => {
                        on.insert(*hw);
                        state.takes_flows = Some(true);
                    }
                    Err(FLOW_ERROR_NOT_SUPPORTED) if state.takes_flows.is_none() => {
                        state.takes_flows = Some(false);
                        state.detail = format!(
                            "fallback-only: the driver has no flow support ({})",
                            flow_error_name(FLOW_ERROR_NOT_SUPPORTED)
                        );
                        break;
                    }
                    Err(code) => {
                        state.refused += 1;
                        state.detail = format!("refused: {}", flow_error_name(code));
                    }
                }
            }
        }
        // Flows enabled nowhere are not kept.
        self.flows.retain(|_, (flow, on)| {
            if on.is_empty() {
                layer.delete(*flow);
            }
            !on.is_empty()
        });
        self.generation = generation;
        self.rules = wanted.len();
        self.report()
    }

    /// The share's generation and rule count, and what each interface took.
    pub fn summary(&self) -> (u64, usize, Vec<api::FlowLayerInterface>) {
        (self.generation, self.rules, self.report())
    }

    fn report(&self) -> Vec<api::FlowLayerInterface> {
        self.hardware
            .iter()
            .map(|(hw, s)| api::FlowLayerInterface {
                interface: s.target.name.clone(),
                sw_if_index: s.target.sw_if_index,
                driver: s.target.driver.clone(),
                takes_flows: s.takes_flows == Some(true),
                installed: self
                    .flows
                    .values()
                    .filter(|(_, on)| on.contains(hw))
                    .count() as u32,
                refused: s.refused,
                detail: s.detail.clone(),
            })
            .collect()
    }
}

/// VPP's flow errors (`foreach_flow_error` in `vnet/flow/flow.h`).
pub fn flow_error_name(code: i32) -> &'static str {
    match code {
        -1 => "not supported",
        -2 => "already done",
        -3 => "already exists",
        -4 => "no such entry",
        -5 => "no such interface",
        -6 => "internal error",
        _ => "unknown flow error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl FlowLayerRule {
        /// Whether the rule matches a packet with these fields (the flow layer's match:
        /// every field under its mask, as `capo test flow-emulation` matches in C).
        fn matches(&self, src: IpAddr, dst: IpAddr, protocol: u8, ports: (u16, u16)) -> bool {
            fn masked<const N: usize>(a: [u8; N], (v, m): ([u8; N], [u8; N])) -> bool {
                a.iter().zip(v).zip(m).all(|((a, v), m)| a & m == v & m)
            }
            let addrs = match (self.addrs, src, dst) {
                (FlowAddrs::V4 { src: s, dst: d }, IpAddr::V4(a), IpAddr::V4(b)) => {
                    masked(a.octets(), s) && masked(b.octets(), d)
                }
                (FlowAddrs::V6 { src: s, dst: d }, IpAddr::V6(a), IpAddr::V6(b)) => {
                    masked(a.octets(), s) && masked(b.octets(), d)
                }
                _ => false,
            };
            let port = |p: u16, (v, m): (u16, u16)| p & m == v & m;
            addrs
                && self.protocol.is_none_or(|p| p == protocol)
                && port(ports.0, self.src_port)
                && port(ports.1, self.dst_port)
        }
    }

    /// A flow layer that records what it was asked, with drivers per hardware index.
    #[derive(Default)]
    struct Recorder {
        next: u32,
        flows: BTreeMap<u32, FlowLayerRule>,
        enabled: BTreeSet<(u32, u32)>,
        /// Hardware whose driver has no flow support.
        unsupported: BTreeSet<u32>,
        /// Rules the driver refuses (by destination port).
        refuse_port: Option<u16>,
        calls: Vec<String>,
    }

    impl FlowLayer for Recorder {
        fn add(&mut self, rule: &FlowLayerRule) -> Result<u32, i32> {
            self.next += 1;
            self.flows.insert(self.next, *rule);
            self.calls.push(format!("add {}", self.next));
            Ok(self.next)
        }
        fn enable(&mut self, flow: u32, hw: u32) -> Result<(), i32> {
            self.calls.push(format!("enable {flow} on {hw}"));
            if self.unsupported.contains(&hw) {
                return Err(FLOW_ERROR_NOT_SUPPORTED);
            }
            if self
                .refuse_port
                .is_some_and(|p| self.flows.get(&flow).is_some_and(|r| r.dst_port.0 == p))
            {
                return Err(-6);
            }
            self.enabled.insert((flow, hw));
            Ok(())
        }
        fn disable(&mut self, flow: u32, hw: u32) {
            self.calls.push(format!("disable {flow} on {hw}"));
            self.enabled.remove(&(flow, hw));
        }
        fn delete(&mut self, flow: u32) {
            self.calls.push(format!("delete {flow}"));
            assert!(
                !self.enabled.iter().any(|(f, _)| *f == flow),
                "deleted while enabled"
            );
            self.flows.remove(&flow);
        }
    }

    fn drop_udp_to(dst: [u8; 4], port: u16) -> FlowLayerRule {
        FlowLayerRule {
            action: FlowAction::Drop,
            addrs: FlowAddrs::V4 {
                src: ([0; 4], [0; 4]),
                dst: (dst, [255; 4]),
            },
            protocol: Some(UDP),
            src_port: (0, 0),
            dst_port: (port, 0xffff),
        }
    }

    fn target(hw: u32, name: &str) -> Target {
        Target {
            hw_if_index: hw,
            sw_if_index: hw + 10,
            name: name.into(),
            driver: "dpdk".into(),
        }
    }

    fn enabled_rules(r: &Recorder, hw: u32) -> BTreeSet<FlowLayerRule> {
        r.enabled
            .iter()
            .filter(|(_, h)| *h == hw)
            .map(|(f, _)| r.flows[f])
            .collect()
    }

    #[test]
    fn a_share_goes_on_every_target_and_the_next_replaces_it_removals_first() {
        let mut layer = Recorder::default();
        let mut share = ShareState::default();
        let (a, b, c) = (
            drop_udp_to([10, 0, 0, 1], 53),
            drop_udp_to([10, 0, 0, 2], 53),
            drop_udp_to([10, 0, 0, 3], 53),
        );
        let targets = [target(1, "eth0"), target(2, "eth1")];
        let report = share.apply(&mut layer, 4, &[a, b], &targets);
        assert_eq!(report.len(), 2);
        assert!(report.iter().all(|r| r.takes_flows && r.installed == 2));
        assert_eq!(enabled_rules(&layer, 1), BTreeSet::from([a, b]));
        assert_eq!(enabled_rules(&layer, 2), BTreeSet::from([a, b]));
        // One flow per rule, enabled on both interfaces.
        assert_eq!(layer.flows.len(), 2);

        layer.calls.clear();
        let report = share.apply(&mut layer, 5, &[b, c], &targets[..1]);
        // `a` goes first (disabled, deleted) before anything is added; eth1 loses
        // its rules; `b` stays as it was.
        let first_add = layer.calls.iter().position(|c| c.starts_with("add"));
        let last_delete = layer.calls.iter().rposition(|c| c.starts_with("delete"));
        assert!(last_delete < first_add, "{:?}", layer.calls);
        assert_eq!(enabled_rules(&layer, 1), BTreeSet::from([b, c]));
        assert!(enabled_rules(&layer, 2).is_empty());
        assert_eq!(layer.flows.len(), 2);
        assert_eq!(report.len(), 1);
        assert_eq!(share.summary().0, 5);
        assert_eq!(share.summary().1, 2);

        // An empty share removes everything.
        share.apply(&mut layer, 0, &[], &targets);
        assert!(layer.flows.is_empty() && layer.enabled.is_empty());
    }

    #[test]
    fn a_driver_without_flows_is_fallback_only_and_refusals_stay_in_software() {
        let mut layer = Recorder {
            unsupported: BTreeSet::from([2]),
            refuse_port: Some(99),
            ..Recorder::default()
        };
        let mut share = ShareState::default();
        let rules = [
            drop_udp_to([10, 0, 0, 1], 53),
            drop_udp_to([10, 0, 0, 1], 99),
            drop_udp_to([10, 0, 0, 2], 53),
        ];
        let report = share.apply(
            &mut layer,
            1,
            &rules,
            &[target(1, "eth0"), target(2, "tap0")],
        );
        let eth0 = report.iter().find(|r| r.interface == "eth0").unwrap();
        let tap0 = report.iter().find(|r| r.interface == "tap0").unwrap();
        assert!(eth0.takes_flows);
        assert_eq!((eth0.installed, eth0.refused), (2, 1));
        assert_eq!(eth0.detail, "refused: internal error");
        assert!(!tap0.takes_flows);
        assert_eq!(tap0.installed, 0);
        assert!(tap0.detail.starts_with("fallback-only"), "{}", tap0.detail);
        // The refused rule's flow is not kept; the unsupported driver was asked once.
        assert_eq!(layer.flows.len(), 2);
        let asked = |calls: &[String]| calls.iter().filter(|c| c.ends_with("on 2")).count();
        assert_eq!(asked(&layer.calls), 1);
        layer.calls.clear();
        share.apply(
            &mut layer,
            2,
            &rules,
            &[target(1, "eth0"), target(2, "tap0")],
        );
        assert_eq!(asked(&layer.calls), 0, "{:?}", layer.calls);
    }

    fn proto_rule(addr_len: usize) -> pb::FlowLayerRule {
        pb::FlowLayerRule {
            src_addr: vec![0; addr_len],
            src_mask: vec![0; addr_len],
            dst_addr: vec![10; addr_len],
            dst_mask: vec![255; addr_len],
            protocol: 17,
            protocol_exact: true,
            dst_port: 53,
            dst_port_mask: 0xffff,
            action: pb::FlowLayerAction::Drop as i32,
            ..Default::default()
        }
    }

    #[test]
    fn rules_are_validated_field_by_field() {
        let ok = FlowLayerRule::from_proto(0, &proto_rule(4)).unwrap();
        assert!(ok.matches(
            "1.2.3.4".parse().unwrap(),
            "10.10.10.10".parse().unwrap(),
            17,
            (4000, 53)
        ));
        assert!(!ok.matches(
            "1.2.3.4".parse().unwrap(),
            "10.10.10.10".parse().unwrap(),
            6,
            (4000, 53)
        ));
        assert!(!ok.matches(
            "1.2.3.4".parse().unwrap(),
            "10.10.10.11".parse().unwrap(),
            17,
            (4000, 53)
        ));
        assert!(matches!(
            FlowLayerRule::from_proto(0, &proto_rule(16)).unwrap().addrs,
            FlowAddrs::V6 { .. }
        ));
        let bad = |f: &dyn Fn(&mut pb::FlowLayerRule)| {
            let mut r = proto_rule(4);
            f(&mut r);
            FlowLayerRule::from_proto(3, &r).unwrap_err()
        };
        assert_eq!(
            bad(&|r| r.dst_mask = vec![255; 16]),
            ShareError::Addresses(3)
        );
        assert_eq!(
            bad(&|r| r.dst_port = 70_000),
            ShareError::OutOfRange {
                index: 3,
                field: "dst_port",
                value: 70_000
            }
        );
        assert_eq!(
            bad(&|r| r.protocol = 300).to_string(),
            "rule 3: protocol 300 is out of range"
        );
        assert_eq!(bad(&|r| r.protocol = 1), ShareError::PortsWithoutL4(3));
        assert_eq!(
            bad(&|r| r.protocol_exact = false),
            ShareError::PortsWithoutL4(3)
        );
        assert_eq!(bad(&|r| r.action = 0), ShareError::Action(3));
        assert_eq!(
            bad(&|r| r.action = pb::FlowLayerAction::Mark as i32),
            ShareError::Action(3)
        );
        let mut marked = proto_rule(4);
        marked.action = pb::FlowLayerAction::Mark as i32;
        marked.mark = 0xc0_0001;
        assert_eq!(
            FlowLayerRule::from_proto(0, &marked).unwrap().action,
            FlowAction::Mark(0xc0_0001)
        );
        let share = pb::NicShare {
            generation: 4,
            rules: vec![proto_rule(4)],
            ..Default::default()
        };
        assert_eq!(
            validate_share(&share, 5),
            Err(ShareError::Generation {
                share: 4,
                active: 5
            })
        );
        assert_eq!(validate_share(&share, 4).unwrap().len(), 1);
        let empty = pb::NicShare {
            generation: 9,
            ..Default::default()
        };
        assert_eq!(validate_share(&empty, 0), Ok(vec![]));
    }
}
