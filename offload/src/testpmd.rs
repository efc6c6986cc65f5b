//! A plan as DPDK `testpmd` commands, for owners of a NIC to replay by hand
//! (`capoctl offload --testpmd`).
//!
//! The commands are what [`crate::commit::Committer`] issues for the plan on a port
//! that holds nothing yet: the script is recorded by running the committer against
//! [`TestpmdScript`], a backend that writes each `rte_flow_create`/`destroy` as a
//! command line instead of calling a device. Field syntax is testpmd's flow grammar
//! (`flow create PORT [group G] [priority P] ingress pattern ITEM / … / end actions
//! ACTION / … / end`): every matched field as `NAME spec V NAME mask M`, ranges with
//! `NAME last V`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::backend::{FlowBackend, FlowCount, FlowHandle};
use crate::caps::NicCaps;
use crate::commit::Committer;
use crate::error::{FlowError, FlowErrorKind};
use crate::flow::{Action, FlowDirection, FlowRule, Item, Spec};
use crate::plan::OffloadPlan;

/// A [`FlowBackend`] that accepts every rule and records it as a testpmd command.
/// Handles are testpmd's rule numbers (0, 1, … per port in creation order).
#[derive(Debug)]
pub struct TestpmdScript {
    caps: NicCaps,
    port: u16,
    next_rule: u64,
    lines: Vec<String>,
}

impl TestpmdScript {
    /// An empty script for `port` of a NIC with `caps`.
    pub fn new(caps: NicCaps, port: u16) -> Self {
        TestpmdScript {
            caps,
            port,
            next_rule: 0,
            lines: Vec::new(),
        }
    }

    /// The commands recorded so far.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

impl FlowBackend for TestpmdScript {
    fn caps(&self) -> &NicCaps {
        &self.caps
    }

    fn validate(&mut self, _rule: &FlowRule) -> Result<(), FlowError> {
        Ok(())
    }

    fn create(&mut self, rule: &FlowRule) -> Result<FlowHandle, FlowError> {
        self.lines.push(flow_create(self.port, rule));
        let handle = FlowHandle(self.next_rule);
        self.next_rule += 1;
        Ok(handle)
    }

    fn destroy(&mut self, handle: FlowHandle) -> Result<(), FlowError> {
        self.lines
            .push(format!("flow destroy {} rule {}", self.port, handle.0));
        Ok(())
    }

    fn query_count(&mut self, _handle: FlowHandle, _reset: bool) -> Result<FlowCount, FlowError> {
        Err(FlowError::new(
            FlowErrorKind::NotSup,
            "a testpmd script has no counters",
        ))
    }
}

/// The commands that install `plan` on `port` of a NIC with `caps` that holds no
/// capo rule yet: the plan's rules, then (versioned groups) the dispatcher that
/// sends traffic to their group.
pub fn script(plan: &OffloadPlan, caps: &NicCaps, port: u16) -> Vec<String> {
    let mut backend = TestpmdScript::new(caps.clone(), port);
    let _ = Committer::new().commit(&mut backend, plan, &mut |_, _| {});
    backend.lines
}

/// One rule as `flow create`.
pub fn flow_create(port: u16, rule: &FlowRule) -> String {
    let attr = rule.attr();
    let direction = match attr.direction {
        FlowDirection::Ingress => "ingress",
        FlowDirection::Egress => "egress",
        FlowDirection::Transfer => "transfer",
    };
    let mut out = format!(
        "flow create {port} group {} priority {} {direction} pattern",
        attr.group.0, attr.priority.0
    );
    for item in rule.pattern() {
        out.push(' ');
        write_item(&mut out, item);
        out.push_str(" /");
    }
    out.push_str(" end actions");
    for action in rule.actions() {
        out.push(' ');
        write_action(&mut out, action);
        out.push_str(" /");
    }
    out.push_str(" end");
    out
}

/// One field: skipped when its mask is zero (it matches anything).
fn field<T: PartialEq + Default + std::fmt::Display>(
    out: &mut String,
    name: &str,
    spec: T,
    mask: T,
    last: Option<T>,
) {
    if mask == T::default() {
        return;
    }
    let _ = write!(out, " {name} spec {spec}");
    if let Some(l) = last {
        let _ = write!(out, " {name} last {l}");
    }
    let _ = write!(out, " {name} mask {mask}");
}

/// A number testpmd reads, in hex (masks, EtherTypes and flags read best so).
#[derive(PartialEq, Default, Clone, Copy)]
struct Hex(u32);

impl std::fmt::Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

fn item_fields<T: Copy, V: PartialEq + Default + std::fmt::Display>(
    out: &mut String,
    s: &Spec<T>,
    name: &str,
    get: impl Fn(&T) -> V,
) {
    field(
        out,
        name,
        get(&s.spec),
        get(&s.mask),
        s.last.as_ref().map(&get),
    );
}

fn write_item(out: &mut String, item: &Item) {
    match item {
        Item::Eth(s) => {
            out.push_str("eth");
            if let Some(s) = s {
                item_fields(out, s, "type", |f| Hex(u32::from(f.ether_type)));
            }
        }
        Item::Ipv4(s) => {
            out.push_str("ipv4");
            if let Some(s) = s {
                item_fields(out, s, "src", |f| V4(f.src));
                item_fields(out, s, "dst", |f| V4(f.dst));
                item_fields(out, s, "proto", |f| Hex(u32::from(f.proto)));
                item_fields(out, s, "fragment_offset", |f| {
                    Hex(u32::from(f.fragment_offset))
                });
            }
        }
        Item::Ipv6(s) => {
            out.push_str("ipv6");
            if let Some(s) = s {
                item_fields(out, s, "src", |f| V6(f.src));
                item_fields(out, s, "dst", |f| V6(f.dst));
                item_fields(out, s, "proto", |f| Hex(u32::from(f.proto)));
                item_fields(out, s, "has_frag_ext", |f| u32::from(f.has_frag_ext));
            }
        }
        Item::Tcp(s) => {
            out.push_str("tcp");
            if let Some(s) = s {
                item_fields(out, s, "src", |f| u32::from(f.src_port));
                item_fields(out, s, "dst", |f| u32::from(f.dst_port));
                item_fields(out, s, "flags", |f| Hex(u32::from(f.flags)));
            }
        }
        Item::Udp(s) | Item::Sctp(s) => {
            out.push_str(if matches!(item, Item::Udp(_)) {
                "udp"
            } else {
                "sctp"
            });
            if let Some(s) = s {
                item_fields(out, s, "src", |f| u32::from(f.src_port));
                item_fields(out, s, "dst", |f| u32::from(f.dst_port));
            }
        }
        Item::Icmp(s) | Item::Icmp6(s) => {
            out.push_str(if matches!(item, Item::Icmp(_)) {
                "icmp"
            } else {
                "icmp6"
            });
            if let Some(s) = s {
                item_fields(out, s, "type", |f| u32::from(f.icmp_type));
                item_fields(out, s, "code", |f| u32::from(f.code));
            }
        }
    }
}

fn write_action(out: &mut String, action: &Action) {
    match action {
        Action::Drop => out.push_str("drop"),
        Action::Mark(id) => {
            let _ = write!(out, "mark id {id}");
        }
        Action::Count(id) => {
            let _ = write!(out, "count identifier {id}");
        }
        Action::Queue(q) => {
            let _ = write!(out, "queue index {q}");
        }
        Action::Jump(g) => {
            let _ = write!(out, "jump group {}", g.0);
        }
        Action::Rss(rss) => {
            // capo asks for the port's RSS configuration (no types of its own); only
            // a queue list is ever set.
            out.push_str("rss");
            if !rss.queues.is_empty() {
                out.push_str(" queues");
                for q in &rss.queues {
                    let _ = write!(out, " {q}");
                }
                out.push_str(" end");
            }
        }
    }
}

#[derive(PartialEq, Default, Clone, Copy)]
struct V4([u8; 4]);

impl std::fmt::Display for V4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ipv4Addr::from(self.0).fmt(f)
    }
}

#[derive(PartialEq, Default, Clone, Copy)]
struct V6([u8; 16]);

impl std::fmt::Display for V6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ipv6Addr::from(self.0).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::flow::{
        Attr, EthFields, Group, Ipv4Fields, Ipv6Fields, PortFields, Priority, TcpFields,
    };

    #[test]
    fn every_field_kind_in_testpmd_grammar() {
        let rule = FlowRule::new(
            Attr::ingress(Group(1), Priority(3)),
            &[
                Item::Eth(Some(Spec::masked(
                    EthFields { ether_type: 0x0800 },
                    EthFields { ether_type: 0xffff },
                ))),
                Item::Ipv4(Some(Spec::masked(
                    Ipv4Fields {
                        src: [10, 0, 0, 0],
                        dst: [0; 4],
                        proto: 6,
                        fragment_offset: 0,
                    },
                    Ipv4Fields {
                        src: [255, 255, 255, 0],
                        dst: [0; 4],
                        proto: 0xff,
                        fragment_offset: 0x3fff,
                    },
                ))),
                Item::Tcp(Some(Spec {
                    spec: TcpFields {
                        src_port: 0,
                        dst_port: 8000,
                        flags: 0x02,
                    },
                    mask: TcpFields {
                        src_port: 0,
                        dst_port: 0xffff,
                        flags: 0x12,
                    },
                    last: Some(TcpFields {
                        src_port: 0,
                        dst_port: 8080,
                        flags: 0x02,
                    }),
                })),
            ],
            &[
                Action::Mark(0x40_0005),
                Action::Count(7),
                Action::Rss(Default::default()),
            ],
        )
        .unwrap();
        assert_eq!(
            flow_create(0, &rule),
            "flow create 0 group 1 priority 3 ingress pattern \
             eth type spec 0x800 type mask 0xffff / \
             ipv4 src spec 10.0.0.0 src mask 255.255.255.0 proto spec 0x6 proto mask 0xff \
             fragment_offset spec 0x0 fragment_offset mask 0x3fff / \
             tcp dst spec 8000 dst last 8080 dst mask 65535 flags spec 0x2 flags last 0x2 flags mask 0x12 / \
             end actions mark id 4194309 / count identifier 7 / rss / end"
        );
    }

    #[test]
    fn ipv6_udp_and_null_items() {
        let rule = FlowRule::new(
            Attr::ingress(Group::ROOT, Priority(0)),
            &[
                Item::Eth(None),
                Item::Ipv6(Some(Spec::masked(
                    Ipv6Fields {
                        src: [0; 16],
                        dst: "fd00::1".parse::<Ipv6Addr>().unwrap().octets(),
                        proto: 17,
                        has_frag_ext: false,
                    },
                    Ipv6Fields {
                        src: [0; 16],
                        dst: [0xff; 16],
                        proto: 0xff,
                        has_frag_ext: true,
                    },
                ))),
                Item::Udp(Some(Spec::masked(
                    PortFields {
                        src_port: 0,
                        dst_port: 53,
                    },
                    PortFields {
                        src_port: 0,
                        dst_port: 0xffff,
                    },
                ))),
            ],
            &[Action::Drop],
        )
        .unwrap();
        assert_eq!(
            flow_create(2, &rule),
            "flow create 2 group 0 priority 0 ingress pattern eth / \
             ipv6 dst spec fd00::1 dst mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
             proto spec 0x11 proto mask 0xff has_frag_ext spec 0 has_frag_ext mask 1 / \
             udp dst spec 53 dst mask 65535 / end actions drop / end"
        );
    }
}
