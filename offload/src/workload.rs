//! Deterministic workloads for the offload benchmark and tests.
//!
//! W-k8s (DESIGN.md §7): 250 local endpoints in 25 namespaces, 500 active policies
//! (20 per namespace, each applying to every pod of its namespace), 5,000 rules (8
//! ingress and 2 egress per policy), 2,000 IP sets with 100,000 members in total
//! (remote pod addresses, a tenth of the sets holding /24s), and 10,000 flows whose
//! packet counts follow a Zipf law over flow rank. Flows target services (a pod and
//! one of its ingress rules) whose popularity is Zipf too; a tenth of the flows are
//! connection attempts hitting deny rules.
//!
//! Rule mix (ingress): allow from a set to one TCP port (55%), to a TCP port range
//! (10%), allow UDP 53 from a /16 (5%), deny TCP from a set (10%), deny UDP from a /24
//! (5%), named-port allows (5%, not expressible), `log` (5%), allow from a set on any
//! port with a negated port (5%). Egress: allow TCP to the cluster, allow UDP 53.
//!
//! Everything derives from the seed with a small xorshift generator: no I/O, no clock.

use std::net::{IpAddr, Ipv4Addr};

use capo_policy::eval::L4;
use capo_policy::{
    Action, Cidr, FelixConfig, HostMetadata, IdTable, IpSetId, IpSetKind, Member, Packet, Policy,
    PolicyKey, PortRange, Profile, Protocol, Rule, State, TierDefault, TierInfo, Update,
    WorkloadEndpoint, WorkloadKey,
};

use crate::flow::{TCP_ACK, TCP_SYN};
use crate::verdict::{Fragment, Probe};

/// A deterministic xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is replaced by a constant).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A Zipf sampler over ranks `0..n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// Weights `1 / (k+1)^s`.
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 0..n {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(acc);
        }
        Zipf { cdf }
    }

    /// The weight of rank `k` (normalised).
    pub fn weight(&self, k: usize) -> f64 {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let prev = if k == 0 {
            0.0
        } else {
            self.cdf.get(k - 1).copied().unwrap_or(0.0)
        };
        (self.cdf.get(k).copied().unwrap_or(prev) - prev) / total
    }

    /// A rank.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cdf.last().copied().unwrap_or(0.0);
        let x = rng.unit() * total;
        self.cdf
            .partition_point(|c| *c < x)
            .min(self.cdf.len().saturating_sub(1))
    }
}

/// Size of a generated workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadSpec {
    /// Local endpoints.
    pub endpoints: usize,
    /// Namespaces (endpoints and policies are spread over them).
    pub namespaces: usize,
    /// Active policies.
    pub policies: usize,
    /// Ingress rules per policy.
    pub ingress_rules: usize,
    /// Egress rules per policy.
    pub egress_rules: usize,
    /// IP sets.
    pub ipsets: usize,
    /// Members per IP set.
    pub members_per_set: usize,
    /// Flows.
    pub flows: usize,
    /// Zipf exponent of flow sizes and service popularity.
    pub zipf: f64,
    /// Packets over all flows.
    pub packets: u64,
    /// Seed.
    pub seed: u64,
}

impl WorkloadSpec {
    /// W-k8s.
    pub fn w_k8s(zipf: f64, seed: u64) -> Self {
        WorkloadSpec {
            endpoints: 250,
            namespaces: 25,
            policies: 500,
            ingress_rules: 8,
            egress_rules: 2,
            ipsets: 2000,
            members_per_set: 50,
            flows: 10_000,
            zipf,
            packets: 10_000_000,
            seed,
        }
    }

    /// A small workload (one namespace, two pods, a few rules) for oracle comparisons
    /// and tests.
    pub fn small(zipf: f64, seed: u64) -> Self {
        WorkloadSpec {
            endpoints: 2,
            namespaces: 1,
            policies: 2,
            ingress_rules: 4,
            egress_rules: 1,
            ipsets: 6,
            members_per_set: 3,
            flows: 60,
            zipf,
            packets: 100_000,
            seed,
        }
    }
}

/// A flow of a workload: its packets as the NIC sees them, with counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// The first packet (a connection attempt for TCP).
    pub first: Probe,
    /// The rest of the flow (ACK set for TCP), `None` for one-packet flows.
    pub rest: Option<Probe>,
    /// Packets in total.
    pub packets: u64,
}

/// A generated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Policy state.
    pub state: State,
    /// Ids synced to the state.
    pub ids: IdTable,
    /// Flows, largest first.
    pub flows: Vec<Flow>,
}

/// The host's own address in generated workloads.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE: &str = "node-1";

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn remote_ip(rng: &mut Rng) -> Ipv4Addr {
    // Remote pods: 10.0.0.0/10 minus nothing local.
    let x = rng.below(1 << 22) as u32;
    Ipv4Addr::from(0x0a00_0000 | x)
}

/// Generates a workload.
pub fn generate(spec: &WorkloadSpec) -> Workload {
    let mut rng = Rng::new(spec.seed);
    let mut state = State::new();
    let cfg = FelixConfig {
        hostname: NODE.into(),
        ..FelixConfig::default()
    };
    let _ = state.apply(Update::Config(cfg));
    let _ = state.apply(Update::HostMetadataUpdate(
        NODE.into(),
        HostMetadata {
            ipv4: Some(IpAddr::V4(HOST_ADDR)),
            ipv6: None,
        },
    ));
    // IP sets.
    let mut sets: Vec<(IpSetId, Vec<Member>)> = Vec::new();
    for s in 0..spec.ipsets {
        let Some(id) = IpSetId::new(format!("s:set{s}")) else {
            continue;
        };
        let nets = s % 10 == 9;
        let members: Vec<Member> = (0..spec.members_per_set)
            .map(|_| {
                let ip = remote_ip(&mut rng);
                let cidr = if nets {
                    format!("{}/24", Ipv4Addr::from(u32::from(ip) & 0xffff_ff00))
                        .parse()
                        .unwrap_or_else(|_| Cidr::host(IpAddr::V4(ip)))
                } else {
                    Cidr::host(IpAddr::V4(ip))
                };
                Member::Net(cidr)
            })
            .collect();
        let _ = state.apply(Update::IpSetReplace {
            id: id.clone(),
            kind: if nets { IpSetKind::Net } else { IpSetKind::Ip },
            members: members.clone(),
        });
        sets.push((id, members));
    }
    let named = IpSetId::new("s:named");
    if let Some(id) = &named {
        let members: Vec<Member> = (0..spec.endpoints.min(8))
            .filter_map(|i| format!("{},tcp:8443", pod_ip(i)).parse().ok())
            .collect();
        let _ = state.apply(Update::IpSetReplace {
            id: id.clone(),
            kind: IpSetKind::IpAndPort,
            members,
        });
    }
    // Policies.
    let mut by_ns: Vec<Vec<PolicyKey>> = vec![Vec::new(); spec.namespaces.max(1)];
    for p in 0..spec.policies {
        let ns = p % spec.namespaces.max(1);
        let key = PolicyKey {
            kind: "NetworkPolicy".into(),
            namespace: format!("ns{ns}"),
            name: format!("pol{p}"),
        };
        let mut inbound = Vec::new();
        for _ in 0..spec.ingress_rules {
            let set = sets
                .get(rng.below(sets.len() as u64) as usize)
                .map(|s| s.0.clone());
            let roll = rng.below(100);
            let mut r = Rule::any(Action::Allow);
            match roll {
                0..=54 => {
                    r.protocol = Some(Protocol::TCP);
                    r.src.ip_sets.extend(set);
                    r.dst.ports.push(PortRange::single(
                        [80, 443, 8080, 5432, 6379, 9090][rng.below(6) as usize],
                    ));
                }
                55..=64 => {
                    r.protocol = Some(Protocol::TCP);
                    r.src.ip_sets.extend(set);
                    let lo = 8000 + rng.below(1000) as i64;
                    if let Ok(pr) = PortRange::new(lo, lo + 20 + rng.below(200) as i64) {
                        r.dst.ports.push(pr);
                    }
                }
                65..=69 => {
                    r.protocol = Some(Protocol::UDP);
                    if let Ok(c) = format!("10.{}.0.0/16", rng.below(64)).parse() {
                        r.src.nets.push(c);
                    }
                    r.dst.ports.push(PortRange::single(53));
                }
                70..=79 => {
                    r.action = Action::Deny;
                    r.protocol = Some(Protocol::TCP);
                    r.src.ip_sets.extend(set);
                }
                80..=84 => {
                    r.action = Action::Deny;
                    r.protocol = Some(Protocol::UDP);
                    if let Ok(c) = format!("10.{}.{}.0/24", rng.below(64), rng.below(256)).parse() {
                        r.src.nets.push(c);
                    }
                }
                85..=89 => {
                    r.protocol = Some(Protocol::TCP);
                    r.dst.named_port_sets.extend(named.clone());
                }
                90..=94 => {
                    r.action = Action::Log;
                    r.protocol = Some(Protocol::TCP);
                    r.src.ip_sets.extend(set);
                    r.dst.ports.push(PortRange::single(22));
                }
                _ => {
                    r.protocol = Some(Protocol::TCP);
                    r.src.ip_sets.extend(set);
                    r.dst.not_ports.push(PortRange::single(22));
                }
            }
            inbound.push(r);
        }
        let mut outbound = Vec::new();
        for k in 0..spec.egress_rules {
            let mut r = Rule::any(Action::Allow);
            if k % 2 == 0 {
                r.protocol = Some(Protocol::TCP);
                if let Ok(c) = "10.0.0.0/10".parse() {
                    r.dst.nets.push(c);
                }
            } else {
                r.protocol = Some(Protocol::UDP);
                r.dst.ports.push(PortRange::single(53));
            }
            outbound.push(r);
        }
        let _ = state.apply(Update::PolicyUpdate(
            key.clone(),
            Policy {
                inbound,
                outbound,
                untracked: false,
                pre_dnat: false,
                tier: "default".into(),
            },
        ));
        by_ns[ns].push(key);
    }
    // Profiles and endpoints.
    for ns in 0..spec.namespaces.max(1) {
        let _ = state.apply(Update::ProfileUpdate(
            format!("kns.ns{ns}"),
            Profile {
                inbound: vec![Rule::any(Action::Allow)],
                outbound: vec![Rule::any(Action::Allow)],
            },
        ));
    }
    let mut pods: Vec<(WorkloadKey, usize)> = Vec::new();
    for i in 0..spec.endpoints {
        let ns = i % spec.namespaces.max(1);
        let key = WorkloadKey {
            orchestrator: "k8s".into(),
            workload: format!("ns{ns}/pod{i}"),
            endpoint: "eth0".into(),
        };
        let wep = WorkloadEndpoint {
            name: format!("cali{i}"),
            profile_ids: vec![format!("kns.ns{ns}")],
            ipv4_nets: vec![Cidr::host(IpAddr::V4(pod_ip(i)))],
            ipv6_nets: vec![],
            tiers: vec![TierInfo {
                name: "default".into(),
                ingress: by_ns[ns].clone(),
                egress: by_ns[ns].clone(),
                default_action: TierDefault::Deny,
            }],
        };
        let _ = state.apply(Update::WorkloadUpdate(key.clone(), wep));
        pods.push((key, i));
    }
    let mut ids = IdTable::default();
    ids.sync(&state);

    // Services: (pod, policy, rule index) of expressible-or-not ingress rules.
    let mut services: Vec<(usize, PolicyKey, usize)> = Vec::new();
    for (_, i) in &pods {
        let ns = i % spec.namespaces.max(1);
        for key in &by_ns[ns] {
            if let Some(p) = state.policies().get(key) {
                for r in 0..p.inbound.len() {
                    services.push((*i, key.clone(), r));
                }
            }
        }
    }
    // Shuffle so that popularity is not tied to generation order.
    for k in (1..services.len()).rev() {
        let j = rng.below(k as u64 + 1) as usize;
        services.swap(k, j);
    }
    let svc_zipf = Zipf::new(services.len().max(1), spec.zipf);
    let flow_zipf = Zipf::new(spec.flows.max(1), spec.zipf);
    let mut flows = Vec::with_capacity(spec.flows);
    for f in 0..spec.flows {
        let packets = ((flow_zipf.weight(f) * spec.packets as f64).round() as u64).max(1);
        let Some((pod, key, ri)) = services.get(svc_zipf.sample(&mut rng)).cloned() else {
            break;
        };
        let Some(rule) = state
            .policies()
            .get(&key)
            .and_then(|p| p.inbound.get(ri))
            .cloned()
        else {
            continue;
        };
        let src = match rule
            .src
            .ip_sets
            .first()
            .and_then(|id| state.ipsets().get(id))
        {
            Some(set) => set
                .members()
                .nth(rng.below(set.len() as u64) as usize)
                .and_then(|m| match m {
                    Member::Net(c) => Some(c.net().addr()),
                    Member::IpPort { .. } => None,
                })
                .unwrap_or(IpAddr::V4(remote_ip(&mut rng))),
            None => match rule.src.nets.first() {
                Some(c) => {
                    let base = match c.net().addr() {
                        IpAddr::V4(a) => u32::from(a),
                        IpAddr::V6(_) => 0,
                    };
                    let host = 32 - u32::from(c.prefix_len());
                    let off = if host >= 32 {
                        0
                    } else {
                        rng.below(1 << host) as u32
                    };
                    IpAddr::V4(Ipv4Addr::from(base | off))
                }
                None => IpAddr::V4(remote_ip(&mut rng)),
            },
        };
        let proto = rule.protocol.unwrap_or(Protocol::TCP);
        let dport = match rule.dst.ports.first() {
            Some(pr) => pr.first() + rng.below(u64::from(pr.last() - pr.first()) + 1) as u16,
            None if !rule.dst.named_port_sets.is_empty() => 8443,
            None => [80u16, 443, 8080][rng.below(3) as usize],
        };
        let sport = 32768 + rng.below(28000) as u16;
        let packet = Packet {
            src,
            dst: IpAddr::V4(pod_ip(pod)),
            protocol: proto,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        };
        let first = Probe {
            packet,
            tcp_flags: TCP_SYN,
            fragment: Fragment::No,
        };
        let denied = rule.action == Action::Deny;
        let (rest, packets) = if proto == Protocol::TCP && !denied && packets > 1 {
            (
                Some(Probe {
                    tcp_flags: TCP_ACK,
                    ..first
                }),
                packets,
            )
        } else {
            (None, packets)
        };
        flows.push(Flow {
            first,
            rest,
            packets,
        });
    }
    Workload { state, ids, flows }
}
