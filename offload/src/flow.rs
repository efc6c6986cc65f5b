//! The rte_flow rule model: owned, bounded (`heapless`), allocation-free, `no_std`.
//!
//! A [`FlowRule`] is what DPDK calls a flow rule (rte_flow.rst): an [`Attr`]
//! (group, priority, direction), a pattern of [`Item`]s in wire order and a list of
//! [`Action`]s with exactly one fate. Every item carries its `spec`, an explicit `mask`
//! (never DPDK's default mask: an IPv4 spec with a zero source and a NULL mask would
//! match only 0.0.0.0) and an optional `last` (an inclusive range `spec..=last`, both
//! masked first). `None` instead of a [`Spec`] is DPDK's NULL spec: "this header is
//! present, any value".
//!
//! [`FlowRule::new`] validates the structure once (one fate, wire order, L4 after L3,
//! `last` not below `spec`); the result is immutable. Backends lower it to DPDK's
//! `END`-terminated C arrays in exactly one place (`dpdk::lower`), and the simulated
//! NIC matches packets against it with [`FlowRule::matches`] — the same semantics.
//! Nothing here panics.

use core::fmt;

/// Most items in one pattern (ETH, IPv4/IPv6, L4 and room to spare).
pub const MAX_ITEMS: usize = 4;
/// Most actions in one rule (a fate plus MARK and COUNT).
pub const MAX_ACTIONS: usize = 4;
/// Most queues in one RSS action.
pub const MAX_RSS_QUEUES: usize = 16;

/// A flow group. Group 0 is the root, the only one packets are guaranteed to enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Group(pub u32);

impl Group {
    /// The root group.
    pub const ROOT: Group = Group(0);
}

/// A priority within a group: lower value wins, 0 is the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Priority(pub u32);

/// Which traffic a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowDirection {
    /// Received traffic (what capo offloads).
    Ingress,
    /// Transmitted traffic.
    Egress,
    /// The embedded switch (issued through the transfer proxy port).
    Transfer,
}

/// `struct rte_flow_attr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attr {
    /// Group.
    pub group: Group,
    /// Priority within the group.
    pub priority: Priority,
    /// Direction.
    pub direction: FlowDirection,
}

impl Attr {
    /// An ingress rule in `group` at `priority`.
    pub fn ingress(group: Group, priority: Priority) -> Self {
        Attr {
            group,
            priority,
            direction: FlowDirection::Ingress,
        }
    }
}

/// A value, its mask, and optionally the inclusive upper end of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spec<T> {
    /// The value (`spec`).
    pub spec: T,
    /// Which bits matter (`mask`), always explicit.
    pub mask: T,
    /// Upper end of a range (`last`); `None` is DPDK's NULL `last`.
    pub last: Option<T>,
}

impl<T> Spec<T> {
    /// An exact value/mask match.
    pub fn masked(spec: T, mask: T) -> Self {
        Spec {
            spec,
            mask,
            last: None,
        }
    }
}

impl Spec<Ipv4Fields> {
    /// Any fragment, first or later: `fragment_offset` (MF flag and offset) from 1
    /// to 0x3fff under mask 0x3fff, the one range form mlx5 takes for it.
    pub fn any_fragment() -> Self {
        let frag = |fragment_offset| Ipv4Fields {
            fragment_offset,
            ..Default::default()
        };
        Spec {
            spec: frag(1),
            mask: frag(0x3fff),
            last: Some(frag(0x3fff)),
        }
    }
}

/// Ethernet fields capo matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EthFields {
    /// EtherType, host order.
    pub ether_type: u16,
}

/// IPv4 fields (`rte_ipv4_hdr`), host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ipv4Fields {
    /// Source address, network byte order bytes.
    pub src: [u8; 4],
    /// Destination address, network byte order bytes.
    pub dst: [u8; 4],
    /// `next_proto_id`.
    pub proto: u8,
    /// Flags and fragment offset (`fragment_offset`: MF is 0x2000, offset 0x1fff).
    pub fragment_offset: u16,
}

/// IPv6 fields (`rte_flow_item_ipv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ipv6Fields {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// `proto` (next header of the base header).
    pub proto: u8,
    /// `has_frag_ext`: a fragment extension header is present.
    pub has_frag_ext: bool,
}

/// UDP or SCTP ports, host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortFields {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// TCP ports and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFields {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// `tcp_flags` (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, …).
    pub flags: u8,
}

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// ICMP or ICMPv6 type and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IcmpFields {
    /// Type.
    pub icmp_type: u8,
    /// Code.
    pub code: u8,
}

/// One pattern item; `None` is a NULL spec (header present, any value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// `RTE_FLOW_ITEM_TYPE_ETH`.
    Eth(Option<Spec<EthFields>>),
    /// `RTE_FLOW_ITEM_TYPE_IPV4`.
    Ipv4(Option<Spec<Ipv4Fields>>),
    /// `RTE_FLOW_ITEM_TYPE_IPV6`.
    Ipv6(Option<Spec<Ipv6Fields>>),
    /// `RTE_FLOW_ITEM_TYPE_TCP`.
    Tcp(Option<Spec<TcpFields>>),
    /// `RTE_FLOW_ITEM_TYPE_UDP`.
    Udp(Option<Spec<PortFields>>),
    /// `RTE_FLOW_ITEM_TYPE_SCTP`.
    Sctp(Option<Spec<PortFields>>),
    /// `RTE_FLOW_ITEM_TYPE_ICMP`.
    Icmp(Option<Spec<IcmpFields>>),
    /// `RTE_FLOW_ITEM_TYPE_ICMP6`.
    Icmp6(Option<Spec<IcmpFields>>),
}

impl Item {
    fn layer(&self) -> u8 {
        match self {
            Item::Eth(_) => 2,
            Item::Ipv4(_) | Item::Ipv6(_) => 3,
            _ => 4,
        }
    }

    /// Whether the item uses `last` (a range).
    pub fn has_last(&self) -> bool {
        match self {
            Item::Eth(s) => s.is_some_and(|s| s.last.is_some()),
            Item::Ipv4(s) => s.is_some_and(|s| s.last.is_some()),
            Item::Ipv6(s) => s.is_some_and(|s| s.last.is_some()),
            Item::Tcp(s) => s.is_some_and(|s| s.last.is_some()),
            Item::Udp(s) | Item::Sctp(s) => s.is_some_and(|s| s.last.is_some()),
            Item::Icmp(s) | Item::Icmp6(s) => s.is_some_and(|s| s.last.is_some()),
        }
    }
}

/// RSS configuration: hash types and the queues to spread over (empty: all).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rss {
    /// `RTE_ETH_RSS_*` bits.
    pub types: u64,
    /// Queues.
    pub queues: heapless::Vec<u16, MAX_RSS_QUEUES>,
}

/// One action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `DROP` (fate).
    Drop,
    /// `MARK{id}`.
    Mark(u32),
    /// `RSS` (fate).
    Rss(Rss),
    /// `QUEUE{index}` (fate).
    Queue(u16),
    /// `COUNT{id}`.
    Count(u32),
    /// `JUMP{group}` (fate).
    Jump(Group),
}

impl Action {
    /// Whether the action decides the packet's fate.
    pub fn is_fate(&self) -> bool {
        matches!(
            self,
            Action::Drop | Action::Rss(_) | Action::Queue(_) | Action::Jump(_)
        )
    }
}

/// Why a rule is structurally invalid (before any device sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleError {
    /// More than [`MAX_ITEMS`] items.
    TooManyItems,
    /// More than [`MAX_ACTIONS`] actions.
    TooManyActions,
    /// No fate action: "undefined behavior" per rte_flow.rst.
    NoFate,
    /// More than one fate action.
    SeveralFates,
    /// Item `index` is out of wire order (ETH, then L3, then L4).
    ItemOrder {
        /// Index in the pattern.
        index: usize,
    },
    /// An L4 item without an L3 item before it.
    L4WithoutL3 {
        /// Index in the pattern.
        index: usize,
    },
    /// An L4 item that does not belong to the L3 before it (ICMP after IPv6, …).
    WrongFamily {
        /// Index in the pattern.
        index: usize,
    },
    /// `last` below `spec` once masked.
    LastBelowSpec {
        /// Index in the pattern.
        index: usize,
    },
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::TooManyItems => write!(f, "more than {MAX_ITEMS} pattern items"),
            RuleError::TooManyActions => write!(f, "more than {MAX_ACTIONS} actions"),
            RuleError::NoFate => f.write_str("no fate action (DROP, RSS, QUEUE or JUMP)"),
            RuleError::SeveralFates => f.write_str("more than one fate action"),
            RuleError::ItemOrder { index } => write!(f, "item {index} is out of wire order"),
            RuleError::L4WithoutL3 { index } => write!(f, "L4 item {index} without L3 item"),
            RuleError::WrongFamily { index } => {
                write!(f, "item {index} does not follow its IP family")
            }
            RuleError::LastBelowSpec { index } => write!(f, "item {index}: last below spec"),
        }
    }
}

impl core::error::Error for RuleError {}

/// A validated rte_flow rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowRule {
    attr: Attr,
    pattern: heapless::Vec<Item, MAX_ITEMS>,
    actions: heapless::Vec<Action, MAX_ACTIONS>,
}

impl FlowRule {
    /// Validates and builds a rule.
    ///
    /// # Errors
    ///
    /// [`RuleError`] when the structure is invalid (see its variants).
    pub fn new(attr: Attr, pattern: &[Item], actions: &[Action]) -> Result<Self, RuleError> {
        let pattern: heapless::Vec<Item, MAX_ITEMS> =
            heapless::Vec::from_slice(pattern).map_err(|_| RuleError::TooManyItems)?;
        let actions: heapless::Vec<Action, MAX_ACTIONS> =
            heapless::Vec::from_slice(actions).map_err(|_| RuleError::TooManyActions)?;
        match actions.iter().filter(|a| a.is_fate()).count() {
            0 => return Err(RuleError::NoFate),
            1 => {}
            _ => return Err(RuleError::SeveralFates),
        }
        let mut layer = 0u8;
        let mut l3: Option<bool> = None; // Some(true) = IPv4
        for (index, item) in pattern.iter().enumerate() {
            if item.layer() <= layer {
                return Err(RuleError::ItemOrder { index });
            }
            layer = item.layer();
            match item {
                Item::Ipv4(_) => l3 = Some(true),
                Item::Ipv6(_) => l3 = Some(false),
                Item::Icmp(_) if l3 == Some(false) => return Err(RuleError::WrongFamily { index }),
                Item::Icmp6(_) if l3 == Some(true) => return Err(RuleError::WrongFamily { index }),
                Item::Tcp(_) | Item::Udp(_) | Item::Sctp(_) | Item::Icmp(_) | Item::Icmp6(_)
                    if l3.is_none() =>
                {
                    return Err(RuleError::L4WithoutL3 { index })
                }
                _ => {}
            }
            if !last_not_below_spec(item) {
                return Err(RuleError::LastBelowSpec { index });
            }
        }
        Ok(FlowRule {
            attr,
            pattern,
            actions,
        })
    }

    /// The attributes.
    pub fn attr(&self) -> &Attr {
        &self.attr
    }

    /// The pattern, in wire order (without DPDK's `END`).
    pub fn pattern(&self) -> &[Item] {
        &self.pattern
    }

    /// The actions (without DPDK's `END`).
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    /// The fate action (exactly one exists).
    pub fn fate(&self) -> Option<&Action> {
        self.actions.iter().find(|a| a.is_fate())
    }

    /// The group a dispatcher rule (group 0, `JUMP`) leads to; `None` for any other
    /// rule.
    pub fn dispatch_target(&self) -> Option<Group> {
        match self.fate() {
            Some(Action::Jump(g)) if self.attr.group == Group::ROOT => Some(*g),
            _ => None,
        }
    }

    /// Whether the rule carries a COUNT action.
    pub fn counts(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Count(_)))
    }

    /// The MARK id, if any.
    pub fn mark(&self) -> Option<u32> {
        self.actions.iter().find_map(|a| match a {
            Action::Mark(m) => Some(*m),
            _ => None,
        })
    }

    /// The index its MARK carries (else its COUNT id): the plan entry it stands for.
    pub fn slot(&self, mark_bits: u8) -> Option<u32> {
        self.actions.iter().find_map(|a| match a {
            Action::Mark(m) => Some(crate::mark::Mark::decode(*m, mark_bits).index),
            Action::Count(id) => Some(*id),
            _ => None,
        })
    }

    /// The same rule standing for plan entry `slot`: its MARK's index and its COUNT id
    /// rewritten. `None` when the index does not fit the MARK.
    pub fn with_slot(&self, slot: u32, mark_bits: u8) -> Option<Self> {
        let mut actions = self.actions.clone();
        for a in &mut actions {
            match a {
                Action::Mark(m) => {
                    let mark = crate::mark::Mark {
                        index: slot,
                        ..crate::mark::Mark::decode(*m, mark_bits)
                    };
                    *m = mark.encode(mark_bits)?;
                }
                Action::Count(id) => *id = slot,
                _ => {}
            }
        }
        Some(FlowRule {
            attr: self.attr,
            pattern: self.pattern.clone(),
            actions,
        })
    }

    /// The same rule with another attribute.
    pub fn with_attr(&self, attr: Attr) -> Self {
        FlowRule {
            attr,
            pattern: self.pattern.clone(),
            actions: self.actions.clone(),
        }
    }

    /// Whether the pattern matches a packet's headers (rte_flow semantics: every item's
    /// header is present and every masked field equals `spec`, or lies in
    /// `spec..=last`).
    pub fn matches(&self, h: &Headers) -> bool {
        self.pattern.iter().all(|item| item_matches(item, h))
    }
}

fn last_not_below_spec(item: &Item) -> bool {
    fn ok(spec: u128, mask: u128, last: Option<u128>) -> bool {
        last.is_none_or(|l| l & mask >= spec & mask)
    }
    match item {
        Item::Eth(Some(s)) => ok(
            s.spec.ether_type.into(),
            s.mask.ether_type.into(),
            s.last.map(|l| l.ether_type.into()),
        ),
        Item::Ipv4(Some(s)) => {
            ok(
                u32::from_be_bytes(s.spec.src).into(),
                u32::from_be_bytes(s.mask.src).into(),
                s.last.map(|l| u32::from_be_bytes(l.src).into()),
            ) && ok(
                u32::from_be_bytes(s.spec.dst).into(),
                u32::from_be_bytes(s.mask.dst).into(),
                s.last.map(|l| u32::from_be_bytes(l.dst).into()),
            ) && ok(
                s.spec.fragment_offset.into(),
                s.mask.fragment_offset.into(),
                s.last.map(|l| l.fragment_offset.into()),
            )
        }
        Item::Tcp(Some(s)) => {
            ok(
                s.spec.src_port.into(),
                s.mask.src_port.into(),
                s.last.map(|l| l.src_port.into()),
            ) && ok(
                s.spec.dst_port.into(),
                s.mask.dst_port.into(),
                s.last.map(|l| l.dst_port.into()),
            )
        }
        Item::Udp(Some(s)) | Item::Sctp(Some(s)) => {
            ok(
                s.spec.src_port.into(),
                s.mask.src_port.into(),
                s.last.map(|l| l.src_port.into()),
            ) && ok(
                s.spec.dst_port.into(),
                s.mask.dst_port.into(),
                s.last.map(|l| l.dst_port.into()),
            )
        }
        _ => true,
    }
}

/// The L3 header of a packet as the NIC parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L3Header {
    /// IPv4.
    V4(Ipv4Fields),
    /// IPv6; `proto` is the upper-layer protocol.
    V6(Ipv6Fields),
    /// Not IP.
    Other,
}

/// The L4 header, when the NIC can see one (not in non-first fragments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Header {
    /// TCP.
    Tcp(TcpFields),
    /// UDP.
    Udp(PortFields),
    /// SCTP.
    Sctp(PortFields),
    /// ICMP.
    Icmp(IcmpFields),
    /// ICMPv6.
    Icmp6(IcmpFields),
    /// None visible.
    None,
}

/// A received packet's headers, as far as rte_flow patterns look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Headers {
    /// EtherType.
    pub ether_type: u16,
    /// L3.
    pub l3: L3Header,
    /// L4.
    pub l4: L4Header,
}

fn field(v: u128, spec: u128, mask: u128, last: Option<u128>) -> bool {
    let v = v & mask;
    match last {
        None => v == spec & mask,
        Some(l) => spec & mask <= v && v <= l & mask,
    }
}

fn v4(a: [u8; 4]) -> u128 {
    u32::from_be_bytes(a).into()
}

fn v6(a: [u8; 16]) -> u128 {
    u128::from_be_bytes(a)
}

fn ports_match(p: &PortFields, s: &Option<Spec<PortFields>>) -> bool {
    let Some(s) = s else { return true };
    field(
        p.src_port.into(),
        s.spec.src_port.into(),
        s.mask.src_port.into(),
        s.last.map(|l| l.src_port.into()),
    ) && field(
        p.dst_port.into(),
        s.spec.dst_port.into(),
        s.mask.dst_port.into(),
        s.last.map(|l| l.dst_port.into()),
    )
}

fn icmp_match(p: &IcmpFields, s: &Option<Spec<IcmpFields>>) -> bool {
    let Some(s) = s else { return true };
    field(
        p.icmp_type.into(),
        s.spec.icmp_type.into(),
        s.mask.icmp_type.into(),
        s.last.map(|l| l.icmp_type.into()),
    ) && field(
        p.code.into(),
        s.spec.code.into(),
        s.mask.code.into(),
        s.last.map(|l| l.code.into()),
    )
}

fn item_matches(item: &Item, h: &Headers) -> bool {
    match (item, &h.l3, &h.l4) {
        (Item::Eth(s), _, _) => s.is_none_or(|s| {
            field(
                h.ether_type.into(),
                s.spec.ether_type.into(),
                s.mask.ether_type.into(),
                s.last.map(|l| l.ether_type.into()),
            )
        }),
        (Item::Ipv4(s), L3Header::V4(p), _) => s.is_none_or(|s| {
            field(
                v4(p.src),
                v4(s.spec.src),
                v4(s.mask.src),
                s.last.map(|l| v4(l.src)),
            ) && field(
                v4(p.dst),
                v4(s.spec.dst),
                v4(s.mask.dst),
                s.last.map(|l| v4(l.dst)),
            ) && field(
                p.proto.into(),
                s.spec.proto.into(),
                s.mask.proto.into(),
                s.last.map(|l| l.proto.into()),
            ) && field(
                p.fragment_offset.into(),
                s.spec.fragment_offset.into(),
                s.mask.fragment_offset.into(),
                s.last.map(|l| l.fragment_offset.into()),
            )
        }),
        (Item::Ipv6(s), L3Header::V6(p), _) => s.is_none_or(|s| {
            field(
                v6(p.src),
                v6(s.spec.src),
                v6(s.mask.src),
                s.last.map(|l| v6(l.src)),
            ) && field(
                v6(p.dst),
                v6(s.spec.dst),
                v6(s.mask.dst),
                s.last.map(|l| v6(l.dst)),
            ) && field(
                p.proto.into(),
                s.spec.proto.into(),
                s.mask.proto.into(),
                s.last.map(|l| l.proto.into()),
            ) && (!s.mask.has_frag_ext || p.has_frag_ext == s.spec.has_frag_ext)
        }),
        (Item::Tcp(s), _, L4Header::Tcp(p)) => s.is_none_or(|s| {
            ports_match(
                &PortFields {
                    src_port: p.src_port,
                    dst_port: p.dst_port,
                },
                &Some(Spec {
                    spec: PortFields {
                        src_port: s.spec.src_port,
                        dst_port: s.spec.dst_port,
                    },
                    mask: PortFields {
                        src_port: s.mask.src_port,
                        dst_port: s.mask.dst_port,
                    },
                    last: s.last.map(|l| PortFields {
                        src_port: l.src_port,
                        dst_port: l.dst_port,
                    }),
                }),
            ) && field(
                p.flags.into(),
                s.spec.flags.into(),
                s.mask.flags.into(),
                s.last.map(|l| l.flags.into()),
            )
        }),
        (Item::Udp(s), _, L4Header::Udp(p)) | (Item::Sctp(s), _, L4Header::Sctp(p)) => {
            ports_match(p, s)
        }
        (Item::Icmp(s), L3Header::V4(_), L4Header::Icmp(p))
        | (Item::Icmp6(s), L3Header::V6(_), L4Header::Icmp6(p)) => icmp_match(p, s),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_pkt(src: [u8; 4], dport: u16, flags: u8) -> Headers {
        Headers {
            ether_type: 0x0800,
            l3: L3Header::V4(Ipv4Fields {
                src,
                dst: [10, 0, 0, 1],
                proto: 6,
                fragment_offset: 0,
            }),
            l4: L4Header::Tcp(TcpFields {
                src_port: 40000,
                dst_port: dport,
                flags,
            }),
        }
    }

    fn drop_rule(pattern: &[Item]) -> FlowRule {
        FlowRule::new(
            Attr::ingress(Group(1), Priority(1)),
            pattern,
            &[Action::Count(0), Action::Drop],
        )
        .unwrap()
    }

    #[test]
    fn test_structure_is_validated() {
        let attr = Attr::ingress(Group(1), Priority(1));
        assert_eq!(
            FlowRule::new(attr, &[Item::Eth(None)], &[Action::Mark(1)]),
            Err(RuleError::NoFate)
        );
        assert_eq!(
            FlowRule::new(attr, &[Item::Eth(None)], &[Action::Drop, Action::Queue(0)]),
            Err(RuleError::SeveralFates)
        );
        assert_eq!(
            FlowRule::new(attr, &[Item::Eth(None), Item::Tcp(None)], &[Action::Drop]),
            Err(RuleError::L4WithoutL3 { index: 1 })
        );
        assert_eq!(
            FlowRule::new(attr, &[Item::Ipv4(None), Item::Eth(None)], &[Action::Drop]),
            Err(RuleError::ItemOrder { index: 1 })
        );
        assert_eq!(
            FlowRule::new(attr, &[Item::Ipv6(None), Item::Icmp(None)], &[Action::Drop]),
            Err(RuleError::WrongFamily { index: 1 })
        );
        let backwards = Spec {
            spec: PortFields {
                src_port: 0,
                dst_port: 90,
            },
            mask: PortFields {
                src_port: 0,
                dst_port: 0xffff,
            },
            last: Some(PortFields {
                src_port: 0,
                dst_port: 80,
            }),
        };
        assert_eq!(
            FlowRule::new(
                attr,
                &[Item::Ipv4(None), Item::Udp(Some(backwards))],
                &[Action::Drop]
            ),
            Err(RuleError::LastBelowSpec { index: 1 })
        );
    }

    #[test]
    fn test_prefix_mask_and_syn_matching() {
        let rule = drop_rule(&[
            Item::Eth(Some(Spec::masked(
                EthFields { ether_type: 0x0800 },
                EthFields { ether_type: 0xffff },
            ))),
            Item::Ipv4(Some(Spec::masked(
                Ipv4Fields {
                    src: [192, 168, 0, 0],
                    ..Default::default()
                },
                Ipv4Fields {
                    src: [255, 255, 0, 0],
                    ..Default::default()
                },
            ))),
            Item::Tcp(Some(Spec::masked(
                TcpFields {
                    dst_port: 80,
                    flags: TCP_SYN,
                    ..Default::default()
                },
                TcpFields {
                    dst_port: 0xffff,
                    flags: TCP_SYN | TCP_ACK,
                    ..Default::default()
                },
            ))),
        ]);
        assert!(rule.matches(&tcp_pkt([192, 168, 3, 4], 80, TCP_SYN)));
        assert!(!rule.matches(&tcp_pkt([192, 168, 3, 4], 80, TCP_SYN | TCP_ACK)));
        assert!(!rule.matches(&tcp_pkt([192, 169, 3, 4], 80, TCP_SYN)));
        assert!(!rule.matches(&tcp_pkt([192, 168, 3, 4], 81, TCP_SYN)));
    }

    #[test]
    fn test_fragment_range_matches_any_fragment() {
        let frag = Spec::any_fragment();
        let rule = drop_rule(&[Item::Eth(None), Item::Ipv4(Some(frag))]);
        let mut p = tcp_pkt([1, 2, 3, 4], 80, 0);
        assert!(!rule.matches(&p));
        if let L3Header::V4(ref mut h) = p.l3 {
            h.fragment_offset = 0x2000; // first fragment: MF set
        }
        assert!(rule.matches(&p));
        if let L3Header::V4(ref mut h) = p.l3 {
            h.fragment_offset = 0x4000 | 0x0010; // DF ignored, offset set
        }
        assert!(rule.matches(&p));
    }
}
