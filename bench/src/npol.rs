//! Upstream npol (VPP 26.06's network-policy plugin, the C plugin capo replaces) as a
//! peer: the cluster's policy loaded through npol's binary API the way Calico/VPP's
//! agent loads it (capo-upstream.md §1, §2.1, §6), on the same interfaces capo polices.
//!
//! The conversion is [`crate::linear`]'s (one engine, two runners): IP sets become npol
//! sets (address and prefix sets as `NET` sets of prefixes, named-port sets as
//! `IP_AND_PORT`), rules keep Calico's order with their 16 entry lists, each policy
//! and profile becomes one npol policy (Calico inbound rules on its TX list, outbound
//! on RX), and each endpoint's interface gets its tiers' policies concatenated (egress
//! as rx policies, ingress as tx), its profiles, and the agent's defaults: policy
//! default deny with policies, pass with profiles only, else allow; profile default
//! deny. So npol's verdicts must equal [`crate::linear::Linear`]'s, tuple for tuple.

use std::collections::HashMap;

use capo_policy::{Action, Direction, IpSetId, IpSetKind, Member, Rule, State, WorkloadKey};

use crate::linear::{convert, CRule};
use crate::vppapi::{ApiClient, ApiError, Body};

// Message names with the CRCs of VPP 26.06's npol.api.json.
const IPSET_CREATE: &str = "npol_ipset_create_f948b404";
const IPSET_ADD_DEL_MEMBERS: &str = "npol_ipset_add_del_members_8ad1b2ed";
const RULE_CREATE: &str = "npol_rule_create_f113de45";
const POLICY_CREATE: &str = "npol_policy_create_3441bb97";
const CONFIGURE_POLICIES: &str = "npol_configure_policies_66fe1335";

// npol.api enums.
const NPOL_IP_AND_PORT: u8 = 1;
const NPOL_NET: u8 = 2;
const NPOL_CIDR: u8 = 0;
const NPOL_PORT_RANGE: u8 = 1;
const NPOL_PORT_IP_SET: u8 = 2;
const NPOL_IP_SET: u8 = 3;
const FILTER_NONE: u8 = 0;
const FILTER_L4_PROTO: u8 = 3;
const DEFAULT_ALLOW: u8 = 0;
const DEFAULT_DENY: u8 = 1;
const DEFAULT_PASS: u8 = 2;

/// Union sizes on the wire: `npol_ipset_member_val` (three-tuple: 17 + 1 + 2) and
/// `npol_entry_data` (prefix: 17 + 1).
const MEMBER_BYTES: usize = 20;
const ENTRY_DATA_BYTES: usize = 18;

/// Members per `add_del_members` message.
const MEMBERS_PER_MESSAGE: usize = 1000;

/// What was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NpolLoad {
    /// IP sets created.
    pub sets: usize,
    /// Members added.
    pub members: usize,
    /// Rules created.
    pub rules: usize,
    /// Policies and profiles created.
    pub policies: usize,
    /// Interfaces configured.
    pub interfaces: usize,
}

fn rule_body(r: &CRule, set_ids: &[u32]) -> Body {
    let mut b = Body::default();
    b.u8(match r.action {
        Action::Allow => 0,
        Action::Deny => 1,
        Action::Log => 2,
        Action::Pass => 3,
    });
    let mut filters = 0;
    for (proto, should_match) in [(r.proto, 1u8), (r.not_proto, 0)] {
        if let Some(p) = proto {
            b.u32(u32::from(p)).u8(FILTER_L4_PROTO).u8(should_match);
            filters += 1;
        }
    }
    for _ in filters..3 {
        b.u32(0).u8(FILTER_NONE).u8(0);
    }
    let mut entries = Body::default();
    let mut n = 0u32;
    for cat in 0..4 {
        // DST = 0, SRC = 1, NOT_DST = 2, NOT_SRC = 3.
        let (is_src, is_not) = (u8::from(cat % 2 == 1), u8::from(cat >= 2));
        let mut head = |e: &mut Body, ty: u8| {
            n += 1;
            e.u8(is_src).u8(is_not).u8(ty);
        };
        for c in &r.prefixes[cat] {
            head(&mut entries, NPOL_CIDR);
            entries.prefix(c);
        }
        for p in &r.port_ranges[cat] {
            head(&mut entries, NPOL_PORT_RANGE);
            entries
                .u16(p.first())
                .u16(p.last())
                .zeros(ENTRY_DATA_BYTES - 4);
        }
        for (sets, ty) in [
            (&r.ip_ipsets[cat], NPOL_IP_SET),
            (&r.ipport_ipsets[cat], NPOL_PORT_IP_SET),
        ] {
            for s in sets {
                head(&mut entries, ty);
                entries
                    .u32(set_ids.get(*s).copied().unwrap_or(u32::MAX))
                    .zeros(ENTRY_DATA_BYTES - 4);
            }
        }
    }
    b.u32(n).bytes(&entries.0);
    b
}

fn member_bytes(m: &Member, b: &mut Body) {
    let start = b.0.len();
    match m {
        Member::Net(c) => {
            b.prefix(c);
        }
        Member::IpPort {
            addr,
            protocol,
            port,
        } => {
            b.address(*addr).u8(protocol.0).u16(*port);
        }
    }
    let used = b.0.len() - start;
    b.zeros(MEMBER_BYTES - used);
}

/// Loads `state` into npol and configures each endpoint's interface (`ifaces`: the
/// endpoint and its `sw_if_index`); `log` gets progress lines.
pub fn load(
    api: &mut ApiClient,
    state: &State,
    ifaces: &[(WorkloadKey, u32)],
    log: &mut dyn FnMut(&str),
) -> Result<NpolLoad, ApiError> {
    let mut done = NpolLoad::default();
    // Sets, in the state's order; `set_ids[i]` is npol's id of the i-th.
    let mut index: HashMap<IpSetId, usize> = HashMap::new();
    let mut set_ids = Vec::with_capacity(state.ipsets().len());
    for (id, set) in state.ipsets() {
        let ty = match set.kind() {
            IpSetKind::IpAndPort => NPOL_IP_AND_PORT,
            IpSetKind::Ip | IpSetKind::Net => NPOL_NET,
        };
        let npol_id = api.request_id(IPSET_CREATE, Body::default().u8(ty))?;
        let members: Vec<&Member> = set.members().collect();
        for chunk in members.chunks(MEMBERS_PER_MESSAGE) {
            let mut b = Body::default();
            b.u32(npol_id).u8(1).u32(chunk.len() as u32);
            for m in chunk {
                member_bytes(m, &mut b);
            }
            api.request(IPSET_ADD_DEL_MEMBERS, &b)?;
            done.members += chunk.len();
        }
        index.insert(id.clone(), set_ids.len());
        set_ids.push(npol_id);
        done.sets += 1;
    }
    log(&format!(
        "npol: {} sets, {} members loaded",
        done.sets, done.members
    ));
    // One npol policy per policy and profile: rules on TX for Calico inbound, RX for
    // outbound (§2.1).
    let mut create = |api: &mut ApiClient, inbound: &[Rule], outbound: &[Rule]| {
        let mut items = Body::default();
        let mut n = 0u32;
        for (rules, is_inbound) in [(inbound, 0u8), (outbound, 1)] {
            for r in rules {
                let id = api.request_id(RULE_CREATE, &rule_body(&convert(r, &index), &set_ids))?;
                items.u8(is_inbound).u32(id);
                n += 1;
            }
        }
        done.rules += n as usize;
        let mut b = Body::default();
        b.u32(n).bytes(&items.0);
        done.policies += 1;
        api.request_id(POLICY_CREATE, &b)
    };
    let mut policy_ids = HashMap::new();
    for (key, p) in state.policies() {
        let id = create(api, &p.inbound, &p.outbound)?;
        policy_ids.insert(key.clone(), id);
    }
    let mut profile_ids = HashMap::new();
    for (name, p) in state.profiles() {
        let id = create(api, &p.inbound, &p.outbound)?;
        profile_ids.insert(name.clone(), id);
    }
    log(&format!(
        "npol: {} rules in {} policies and profiles loaded",
        done.rules, done.policies
    ));
    for (key, sw_if_index) in ifaces {
        let Some(wep) = state.workloads().get(key) else {
            continue;
        };
        let list = |dir: Direction| -> Vec<u32> {
            wep.tiers
                .iter()
                .flat_map(|t| t.policies(dir))
                .filter(|k| !k.is_staged())
                .filter_map(|k| policy_ids.get(k).copied())
                .collect()
        };
        // VPP rx on a pod's interface is Calico egress (§2.1).
        let (rx, tx) = (list(Direction::Egress), list(Direction::Ingress));
        let profiles: Vec<u32> = wep
            .profile_ids
            .iter()
            .filter_map(|n| profile_ids.get(n).copied())
            .collect();
        let default = |policies: &[u32]| match (policies.is_empty(), profiles.is_empty()) {
            (false, _) => DEFAULT_DENY,
            (true, false) => DEFAULT_PASS,
            (true, true) => DEFAULT_ALLOW,
        };
        let mut b = Body::default();
        b.u32(*sw_if_index)
            .u32(rx.len() as u32)
            .u32(tx.len() as u32)
            .u32((rx.len() + tx.len() + profiles.len()) as u32)
            .u8(0)
            .u8(default(&rx))
            .u8(default(&tx))
            .u8(DEFAULT_DENY)
            .u8(DEFAULT_DENY);
        for id in rx.iter().chain(&tx).chain(&profiles) {
            b.u32(*id);
        }
        api.request(CONFIGURE_POLICIES, &b)?;
        done.interfaces += 1;
    }
    log(&format!("npol: {} interfaces configured", done.interfaces));
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capo_policy::{PortRange, Protocol};

    #[test]
    fn rules_encode_filters_entries_and_set_ids() {
        let mut r = Rule::any(Action::Deny);
        r.protocol = Some(Protocol::TCP);
        r.dst.ports = vec![PortRange::single(80)];
        r.src.not_nets = vec!["10.0.0.0/8".parse().unwrap()];
        r.src.ip_sets = vec![IpSetId::new("s:a").unwrap()];
        let index = HashMap::from([(IpSetId::new("s:a").unwrap(), 0usize)]);
        let b = rule_body(&convert(&r, &index), &[42]).0;
        // action, 3 filters of 6 bytes, entry count, 3 entries of 21 bytes.
        assert_eq!(b.len(), 1 + 18 + 4 + 3 * 21);
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..7], &[0, 0, 0, 6, FILTER_L4_PROTO, 1]);
        assert_eq!(&b[7..9], &[0, 0]);
        assert_eq!(&b[19..23], &[0, 0, 0, 3]);
        // DST port range first, then SRC set, then NOT_SRC prefix.
        let e = &b[23..];
        assert_eq!(&e[..7], &[0, 0, NPOL_PORT_RANGE, 0, 80, 0, 80]);
        assert_eq!(&e[21..28], &[1, 0, NPOL_IP_SET, 0, 0, 0, 42]);
        assert_eq!(&e[42..46], &[1, 1, NPOL_CIDR, 0]);
        assert_eq!(e[46], 10);
        assert_eq!(e[42 + 3 + 17], 8);
    }

    #[test]
    fn members_fill_the_union() {
        let mut b = Body::default();
        member_bytes(&Member::Net("10.1.0.0/16".parse().unwrap()), &mut b);
        member_bytes(
            &Member::IpPort {
                addr: "10.0.0.1".parse().unwrap(),
                protocol: Protocol::TCP,
                port: 8080,
            },
            &mut b,
        );
        assert_eq!(b.0.len(), 2 * MEMBER_BYTES);
        assert_eq!(b.0[17], 16);
        let t = &b.0[MEMBER_BYTES..];
        assert_eq!((t[0], t[1], t[17]), (0, 10, 6));
        assert_eq!(&t[18..20], &8080u16.to_be_bytes());
    }
}
