//! A linear evaluator reproducing the C plugin's per-packet algorithm
//! (capo-upstream.md §5.2, npol's final semantics in §2.3): per interface, the
//! policies of every tier concatenated into one list per direction; per policy, the
//! rules in order; per rule, 16 entry lists (prefixes, IP sets, port ranges, IP+port
//! sets × src/dst/not-src/not-dst) scanned linearly, IP sets member by member
//! (`pool_foreach`), first matching rule ends the policy; `pass` jumps to the
//! profiles; then `policy_default` (deny when the interface has policies, pass to
//! profiles when it has profiles only, else allow), profiles, `profile_default` deny.
//!
//! It is a cost peer, not a specification: its semantics are the C plugin's (no
//! tiers, no end-of-tier drop, `log` abandons the policy), as documented upstream.

use std::collections::HashMap;
use std::net::IpAddr;

use capo_policy::{
    Action, Cidr, Direction, IpSetId, Member, Packet, PortRange, Protocol, Rule, State, Verdict,
    WorkloadKey, L4,
};

/// One capo rule: filters and the 16 entry lists (also what [`crate::npol`] loads).
#[derive(Debug, Clone)]
pub(crate) struct CRule {
    pub(crate) action: Action,
    pub(crate) proto: Option<u8>,
    pub(crate) not_proto: Option<u8>,
    /// Indexed by category: DST = 0, SRC = 1, NOT_DST = 2, NOT_SRC = 3.
    pub(crate) prefixes: [Vec<Cidr>; 4],
    pub(crate) ip_ipsets: [Vec<usize>; 4],
    pub(crate) port_ranges: [Vec<PortRange>; 4],
    pub(crate) ipport_ipsets: [Vec<usize>; 4],
}

/// One interface direction: policies (rule lists) then profiles.
#[derive(Debug, Clone, Default)]
struct Config {
    policies: Vec<Vec<usize>>,
    profiles: Vec<Vec<usize>>,
}

/// The linear engine: pools of sets, rules, and per-interface configurations.
#[derive(Debug, Clone, Default)]
pub struct Linear {
    sets: Vec<Vec<Member>>,
    rules: Vec<CRule>,
    /// Per interface, the ingress and egress configurations (the plugin's vector
    /// indexed by `sw_if_index`).
    ifaces: Vec<[Config; 2]>,
    /// Endpoint → interface index, resolved once (as the agent resolves the
    /// interface), never per packet.
    index: HashMap<WorkloadKey, LinearIface>,
}

/// An interface of the linear engine (its `sw_if_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearIface(usize);

fn dir_slot(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

const DST: usize = 0;
const SRC: usize = 1;
const NOT_DST: usize = 2;
const NOT_SRC: usize = 3;

impl Linear {
    /// Converts a state the way the Go agent does for workload interfaces.
    pub fn build(state: &State) -> Self {
        let mut l = Linear::default();
        let mut set_ids: HashMap<IpSetId, usize> = HashMap::new();
        for (id, set) in state.ipsets() {
            set_ids.insert(id.clone(), l.sets.len());
            l.sets.push(set.members().copied().collect());
        }
        let mut lists: HashMap<(String, Direction), Vec<usize>> = HashMap::new();
        let mut add_list = |l: &mut Linear, name: String, dir: Direction, rules: &[Rule]| {
            let ids = rules
                .iter()
                .map(|r| {
                    l.rules.push(convert(r, &set_ids));
                    l.rules.len() - 1
                })
                .collect();
            lists.insert((name, dir), ids);
        };
        for (key, p) in state.policies() {
            for dir in Direction::BOTH {
                add_list(&mut l, format!("p:{key}"), dir, p.rules(dir));
            }
        }
        for (name, p) in state.profiles() {
            for dir in Direction::BOTH {
                add_list(&mut l, format!("r:{name}"), dir, p.rules(dir));
            }
        }
        for (key, wep) in state.workloads() {
            let mut configs: [Config; 2] = Default::default();
            for dir in Direction::BOTH {
                let policies = wep
                    .tiers
                    .iter()
                    .flat_map(|t| t.policies(dir))
                    .filter(|k| !k.is_staged())
                    .filter_map(|k| lists.get(&(format!("p:{k}"), dir)).cloned())
                    .collect();
                let profiles = wep
                    .profile_ids
                    .iter()
                    .filter_map(|n| lists.get(&(format!("r:{n}"), dir)).cloned())
                    .collect();
                configs[dir_slot(dir)] = Config { policies, profiles };
            }
            l.index.insert(key.clone(), LinearIface(l.ifaces.len()));
            l.ifaces.push(configs);
        }
        l
    }

    /// The interface of a workload endpoint, if the state has it.
    pub fn interface(&self, key: &WorkloadKey) -> Option<LinearIface> {
        self.index.get(key).copied()
    }

    /// Evaluates a packet on a workload interface (`None`: an endpoint the state
    /// lacks, which the plugin would not police: allow).
    pub fn evaluate(&self, iface: Option<LinearIface>, dir: Direction, pkt: &Packet) -> Verdict {
        let Some(cfg) = iface
            .and_then(|i| self.ifaces.get(i.0))
            .map(|c| &c[dir_slot(dir)])
        else {
            return Verdict::Allow;
        };
        let mut to_profiles = false;
        for policy in &cfg.policies {
            match self.match_policy(policy, pkt) {
                Some(Action::Allow) => return Verdict::Allow,
                Some(Action::Deny) => return Verdict::Deny,
                Some(Action::Pass) => {
                    to_profiles = true;
                    break;
                }
                Some(Action::Log) | None => {}
            }
        }
        if !to_profiles {
            // policy_default: deny with policies, pass with profiles only, else allow.
            if !cfg.policies.is_empty() {
                return Verdict::Deny;
            }
            if cfg.profiles.is_empty() {
                return Verdict::Allow;
            }
        }
        for profile in &cfg.profiles {
            match self.match_policy(profile, pkt) {
                Some(Action::Allow) => return Verdict::Allow,
                Some(Action::Deny) | Some(Action::Pass) => return Verdict::Deny,
                Some(Action::Log) | None => {}
            }
        }
        Verdict::Deny
    }

    fn match_policy(&self, rules: &[usize], pkt: &Packet) -> Option<Action> {
        rules
            .iter()
            .filter_map(|r| self.rules.get(*r))
            .find(|r| self.match_rule(r, pkt))
            .map(|r| r.action)
    }

    fn in_set(&self, set: usize, addr: &IpAddr) -> bool {
        self.sets
            .get(set)
            .is_some_and(|ms| ms.iter().any(|m| m.covers_addr(addr)))
    }

    fn in_ipport_set(&self, set: usize, addr: &IpAddr, proto: Protocol, port: u16) -> bool {
        self.sets
            .get(set)
            .is_some_and(|ms| ms.iter().any(|m| m.is_endpoint(addr, proto, port)))
    }

    fn match_rule(&self, r: &CRule, pkt: &Packet) -> bool {
        if r.proto.is_some_and(|p| p != pkt.protocol.0) {
            return false;
        }
        if r.not_proto.is_some_and(|p| p == pkt.protocol.0) {
            return false;
        }
        let addr = |cat: usize| {
            if cat == SRC || cat == NOT_SRC {
                &pkt.src
            } else {
                &pkt.dst
            }
        };
        for cat in [SRC, DST] {
            let ps = &r.prefixes[cat];
            if !ps.is_empty() && !ps.iter().any(|p| p.contains(addr(cat))) {
                return false;
            }
        }
        for cat in [NOT_SRC, NOT_DST] {
            if r.prefixes[cat].iter().any(|p| p.contains(addr(cat))) {
                return false;
            }
        }
        for cat in [SRC, DST] {
            let sets = &r.ip_ipsets[cat];
            if !sets.is_empty() && !sets.iter().any(|s| self.in_set(*s, addr(cat))) {
                return false;
            }
        }
        for cat in [NOT_SRC, NOT_DST] {
            if r.ip_ipsets[cat].iter().any(|s| self.in_set(*s, addr(cat))) {
                return false;
            }
        }
        let (sport, dport) = match pkt.l4 {
            L4::Ports { src, dst } => (src, dst),
            L4::Icmp { icmp_type, code } => (u16::from(icmp_type), u16::from(code)),
            L4::None => (0, 0),
        };
        for (cat, ncat, port) in [(SRC, NOT_SRC, sport), (DST, NOT_DST, dport)] {
            let ranges = &r.port_ranges[cat];
            let sets = &r.ipport_ipsets[cat];
            if (!ranges.is_empty() || !sets.is_empty())
                && !ranges.iter().any(|x| x.contains(port))
                && !sets
                    .iter()
                    .any(|s| self.in_ipport_set(*s, addr(cat), pkt.protocol, port))
            {
                return false;
            }
            if r.port_ranges[ncat].iter().any(|x| x.contains(port)) {
                return false;
            }
            if r.ipport_ipsets[ncat]
                .iter()
                .any(|s| self.in_ipport_set(*s, addr(ncat), pkt.protocol, port))
            {
                return false;
            }
        }
        true
    }
}

/// The Go agent's rule conversion (capo-upstream.md §6): `set_ids` maps each IP set to
/// its index in the engine's set pool.
pub(crate) fn convert(r: &Rule, set_ids: &HashMap<IpSetId, usize>) -> CRule {
    let ids = |v: &[IpSetId]| -> Vec<usize> {
        v.iter().filter_map(|s| set_ids.get(s).copied()).collect()
    };
    CRule {
        action: r.action,
        proto: r.protocol.map(|p| p.0),
        not_proto: r.not_protocol.map(|p| p.0),
        prefixes: [
            r.dst.nets.clone(),
            r.src.nets.clone(),
            r.dst.not_nets.clone(),
            r.src.not_nets.clone(),
        ],
        ip_ipsets: [
            ids(&r.dst.ip_sets),
            ids(&r.src.ip_sets),
            ids(&r.dst.not_ip_sets),
            ids(&r.src.not_ip_sets),
        ],
        port_ranges: [
            r.dst.ports.clone(),
            r.src.ports.clone(),
            r.dst.not_ports.clone(),
            r.src.not_ports.clone(),
        ],
        ipport_ipsets: [
            ids(&r.dst.named_port_sets),
            ids(&r.src.named_port_sets),
            ids(&r.dst.not_named_port_sets),
            ids(&r.src.not_named_port_sets),
        ],
    }
}
