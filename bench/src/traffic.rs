//! Traffic over time windows on a generated cluster, for the offload benchmark.
//!
//! The policy and endpoints are the classifier benchmarks' ([`crate::workload`]); the
//! traffic is a model of its own, deterministic from a seed:
//!
//! - **Conversations** `(peer, local endpoint, protocol, service port, opener)` are
//!   taken from the workload's packets that cross the wire (a remote peer and a local
//!   endpoint), classified once with [`capo_policy::trace`]. The mix: allowed TCP
//!   opened by the peer (50%), allowed TCP opened by the local endpoint (20%), TCP
//!   the policy refuses (15%), UDP 53 queries in either direction (10%), ICMP echo (5%).
//! - Each window draws connections over the conversations that have arrived, Zipf by
//!   a popularity rank shuffled independently of arrival (skew [`TrafficOptions::zipf`]);
//!   later windows add new conversations, which may be hot at once.
//! - A **connection** takes the conversation's next source port (a new port per
//!   connection) and carries a handshake, data both ways with its ACKs, and a close;
//!   a refused TCP connection only retries its SYN (1 to [`MAX_SYN_TRIES`] times);
//!   refused UDP and ICMP retry 1 to 3 times. Packets with equal headers in a row are
//!   one [`Segment`] with a count.
//!
//! Whether a connection is allowed is the reference verdict of its opening packet
//! (Calico's conntrack then carries the rest of the connection, replies included).

use std::net::IpAddr;

use capo_offload::verdict::{Fragment, Probe};
use capo_policy::{trace, Direction, IdTable, Packet, Protocol, State, Verdict, L4};

use crate::workload::{generate, Kind, Rng};

/// Most SYNs a refused TCP connection sends (the first one and its retries).
pub const MAX_SYN_TRIES: u64 = 6;

/// TCP flags.
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = SYN | ACK;
const PSH_ACK: u8 = 0x08 | ACK;
const FIN_ACK: u8 = 0x01 | ACK;

/// Ephemeral source ports: Linux's default range.
const EPHEMERAL_FIRST: u16 = 32768;
const EPHEMERAL_COUNT: u16 = 28232;

/// ICMP echo request and reply types.
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// The size and shape of the traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficOptions {
    /// Time windows.
    pub windows: usize,
    /// Conversations present from the first window.
    pub conversations: usize,
    /// Conversations arriving in each later window.
    pub new_per_window: usize,
    /// Connections drawn per window.
    pub connections_per_window: usize,
    /// Zipf exponent of conversation popularity.
    pub zipf: f64,
    /// Seed of the traffic (the cluster has its own, fixed one).
    pub seed: u64,
}

impl TrafficOptions {
    /// The benchmark's default size.
    pub fn standard(zipf: f64, seed: u64) -> Self {
        TrafficOptions {
            windows: 4,
            conversations: 4_000,
            new_per_window: 400,
            connections_per_window: 10_000,
            zipf,
            seed,
        }
    }

    /// A small run for tests.
    pub fn small(zipf: f64, seed: u64) -> Self {
        TrafficOptions {
            windows: 3,
            conversations: 150,
            new_per_window: 20,
            connections_per_window: 400,
            zipf,
            seed,
        }
    }
}

/// Who opens a conversation's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opener {
    /// The remote peer (the request arrives from the wire).
    Peer,
    /// The local endpoint (the replies arrive from the wire).
    Local,
}

/// A conversation: the same peer, endpoint and service, connection after connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The remote address.
    pub peer: IpAddr,
    /// The local endpoint's address.
    pub local: IpAddr,
    /// TCP, UDP or ICMP.
    pub protocol: Protocol,
    /// The service port (on the opener's other side); 0 for ICMP.
    pub port: u16,
    /// Who opens.
    pub opener: Opener,
    /// The policy's verdict for the opening packet.
    pub allowed: bool,
    /// The first window it is active in.
    pub arrives: usize,
    /// Popularity rank (0 is the hottest).
    pub rank: usize,
}

/// Packets with equal headers in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The packets' headers.
    pub probe: Probe,
    /// Arrives from the wire (what the NIC sees); otherwise sent by the local endpoint.
    pub from_wire: bool,
    /// Packets.
    pub count: u64,
}

/// One connection, its packets in order (the first is the opening packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Index into [`Traffic::conversations`].
    pub conversation: usize,
    /// The reference verdict of the opening packet: conntrack then carries the rest.
    pub allowed: bool,
    /// Packets.
    pub segments: Vec<Segment>,
}

impl Connection {
    /// Packets that arrive from the wire.
    pub fn wire_packets(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.from_wire)
            .map(|s| s.count)
            .sum()
    }
}

/// The connections of one time window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    /// Connections, in the order they were drawn.
    pub connections: Vec<Connection>,
}

impl Window {
    /// Packets from the wire.
    pub fn wire_packets(&self) -> u64 {
        self.connections.iter().map(Connection::wire_packets).sum()
    }
}

/// Generated traffic and the state it runs against.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Policy state.
    pub state: State,
    /// Ids synced to the state.
    pub ids: IdTable,
    /// Every conversation, in arrival order.
    pub conversations: Vec<Conversation>,
    /// Time windows.
    pub windows: Vec<Window>,
}

/// The classes of the conversation mix, with their shares in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    PeerTcp,
    LocalTcp,
    RefusedTcp,
    Dns,
    Icmp,
}

const MIX: [(Class, usize); 5] = [
    (Class::PeerTcp, 50),
    (Class::LocalTcp, 20),
    (Class::RefusedTcp, 15),
    (Class::Dns, 10),
    (Class::Icmp, 5),
];

/// A Zipf sampler over ranks `0..n` (weight of rank `k` is `1/(k+1)^s`).
#[derive(Debug, Clone)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let cdf = (0..n)
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(s);
                acc
            })
            .collect();
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cdf.last().copied().unwrap_or(0.0);
        let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cdf
            .partition_point(|c| *c < x)
            .min(self.cdf.len().saturating_sub(1))
    }
}

fn packet(src: IpAddr, dst: IpAddr, protocol: Protocol, l4: L4) -> Packet {
    Packet {
        src,
        dst,
        protocol,
        l4,
    }
}

fn allowed(state: &State, p: &Packet) -> bool {
    trace(state, p).verdict == Verdict::Allow
}

/// Candidate conversations of each class, from the workload's packets that cross the
/// wire.
fn candidates(state: &State, packets: &[(Direction, Packet)]) -> Vec<(Class, Conversation)> {
    let host = state.local_host_addrs();
    let remote = |a: &IpAddr| state.workload_owning(a).is_none() && !host.contains(a);
    let mut out = Vec::new();
    for (dir, p) in packets {
        let (opener, peer, local) = match dir {
            Direction::Ingress if remote(&p.src) => (Opener::Peer, p.src, p.dst),
            Direction::Egress if remote(&p.dst) => (Opener::Local, p.dst, p.src),
            _ => continue,
        };
        let conv = |protocol: Protocol, port: u16, allowed: bool| Conversation {
            peer,
            local,
            protocol,
            port,
            opener,
            allowed,
            arrives: 0,
            rank: 0,
        };
        let (src, dst) = match opener {
            Opener::Peer => (peer, local),
            Opener::Local => (local, peer),
        };
        let opening = |protocol: Protocol, port: u16| {
            let l4 = if protocol == Protocol::ICMP {
                L4::Icmp {
                    icmp_type: ECHO_REQUEST,
                    code: 0,
                }
            } else {
                L4::Ports {
                    src: EPHEMERAL_FIRST,
                    dst: port,
                }
            };
            packet(src, dst, protocol, l4)
        };
        match p.protocol {
            Protocol::TCP => {
                let port = match p.l4 {
                    L4::Ports { dst, .. } => dst,
                    _ => continue,
                };
                let ok = allowed(state, &opening(Protocol::TCP, port));
                let class = match (ok, opener) {
                    (true, Opener::Peer) => Class::PeerTcp,
                    (true, Opener::Local) => Class::LocalTcp,
                    (false, Opener::Peer) => Class::RefusedTcp,
                    // Software refuses it before the wire: nothing for the NIC.
                    (false, Opener::Local) => continue,
                };
                out.push((class, conv(Protocol::TCP, port, ok)));
            }
            Protocol::UDP => {
                let ok = allowed(state, &opening(Protocol::UDP, 53));
                if ok || opener == Opener::Peer {
                    out.push((Class::Dns, conv(Protocol::UDP, 53, ok)));
                }
            }
            Protocol::ICMP if opener == Opener::Peer => {
                let ok = allowed(state, &opening(Protocol::ICMP, 0));
                out.push((Class::Icmp, conv(Protocol::ICMP, 0, ok)));
            }
            _ => {}
        }
    }
    out
}

/// Generates the traffic of `kind`'s cluster.
pub fn generate_traffic(kind: Kind, o: &TrafficOptions) -> Traffic {
    let w = generate(kind);
    let (state, ids) = w.state();
    let packets: Vec<(Direction, Packet)> = w.packets.iter().map(|(_, d, p)| (*d, *p)).collect();
    let pool = candidates(&state, &packets);
    let by_class = |c: Class| -> Vec<&Conversation> {
        pool.iter()
            .filter(|(k, _)| *k == c)
            .map(|(_, v)| v)
            .collect()
    };
    let pools: Vec<(Vec<&Conversation>, usize)> =
        MIX.iter().map(|(c, pct)| (by_class(*c), *pct)).collect();
    let mut rng = Rng::new(o.seed ^ 0x7472_6166_6669_6300);

    // Conversations: a class by the mix (classes without candidates are skipped), a
    // candidate of that class, an arrival window.
    let windows = o.windows.max(1);
    let total = o.conversations + o.new_per_window * (windows - 1);
    let mut conversations = Vec::with_capacity(total);
    let weight: usize = pools
        .iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(_, w)| w)
        .sum();
    for i in 0..total {
        if weight == 0 {
            break;
        }
        let mut roll = rng.below(weight);
        let Some(pool) = pools
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .find_map(|(p, w)| {
                if roll < *w {
                    Some(p)
                } else {
                    roll -= w;
                    None
                }
            })
        else {
            continue;
        };
        let Some(c) = pool.get(rng.below(pool.len())) else {
            continue;
        };
        let arrives = if i < o.conversations {
            0
        } else {
            1 + (i - o.conversations) / o.new_per_window.max(1)
        };
        conversations.push(Conversation {
            arrives,
            ..(*c).clone()
        });
    }
    // Popularity is independent of arrival: a newcomer may be hot at once.
    let mut ranks: Vec<usize> = (0..conversations.len()).collect();
    for k in (1..ranks.len()).rev() {
        ranks.swap(k, rng.below(k + 1));
    }
    let mut by_rank = vec![0usize; conversations.len()];
    for (c, r) in conversations.iter_mut().zip(&ranks) {
        c.rank = *r;
    }
    for (i, c) in conversations.iter().enumerate() {
        if let Some(slot) = by_rank.get_mut(c.rank) {
            *slot = i;
        }
    }

    // Each conversation walks the ephemeral range from its own starting point.
    let mut next_port: Vec<u16> = conversations
        .iter()
        .map(|_| rng.below(usize::from(EPHEMERAL_COUNT)) as u16)
        .collect();
    let zipf = Zipf::new(conversations.len(), o.zipf);
    let mut out = Vec::with_capacity(windows);
    for window in 0..windows {
        let mut connections = Vec::with_capacity(o.connections_per_window);
        for _ in 0..o.connections_per_window {
            let Some(&ci) = by_rank.get(zipf.sample(&mut rng)) else {
                continue;
            };
            // Not arrived yet: this draw is lost (early windows are a little lighter).
            let Some(c) = conversations.get(ci).filter(|c| c.arrives <= window) else {
                continue;
            };
            let Some(port) = next_port.get_mut(ci) else {
                continue;
            };
            let sport = EPHEMERAL_FIRST + *port;
            *port = (*port + 1) % EPHEMERAL_COUNT;
            connections.push(Connection {
                conversation: ci,
                allowed: false,
                segments: connection(c, sport, &mut rng),
            });
        }
        // The reference verdict of each opening packet (the source port is new).
        for conn in &mut connections {
            conn.allowed = conn
                .segments
                .first()
                .is_some_and(|s| allowed(&state, &s.probe.reference_packet()));
        }
        out.push(Window { connections });
    }
    Traffic {
        state,
        ids,
        conversations,
        windows: out,
    }
}

/// The packets of one connection of `c` from source port `sport` (for ICMP, the
/// echo identifier is not modelled).
fn connection(c: &Conversation, sport: u16, rng: &mut Rng) -> Vec<Segment> {
    let (opener, responder) = match c.opener {
        Opener::Peer => (c.peer, c.local),
        Opener::Local => (c.local, c.peer),
    };
    // The opener's packets come from the wire when the peer opens.
    let opener_on_wire = c.opener == Opener::Peer;
    let seg = |src: IpAddr, dst: IpAddr, l4: L4, flags: u8, from_wire: bool, count: u64| Segment {
        probe: Probe {
            packet: packet(src, dst, c.protocol, l4),
            tcp_flags: flags,
            fragment: Fragment::No,
        },
        from_wire,
        count,
    };
    let fwd = L4::Ports {
        src: sport,
        dst: c.port,
    };
    let back = L4::Ports {
        src: c.port,
        dst: sport,
    };
    let there = |l4: L4, flags: u8, n: u64| seg(opener, responder, l4, flags, opener_on_wire, n);
    let reply = |l4: L4, flags: u8, n: u64| seg(responder, opener, l4, flags, !opener_on_wire, n);
    // Requests and responses: a few segments each way, responses larger.
    let requests = 1 + rng.below(6) as u64;
    let responses = requests + rng.below(3 * requests as usize + 1) as u64;
    match c.protocol {
        Protocol::TCP if !c.allowed => {
            vec![there(
                fwd,
                SYN,
                1 + rng.below(MAX_SYN_TRIES as usize) as u64,
            )]
        }
        Protocol::TCP => vec![
            there(fwd, SYN, 1),
            reply(back, SYN_ACK, 1),
            there(fwd, ACK, 1),
            there(fwd, PSH_ACK, requests),
            reply(back, PSH_ACK, responses),
            there(fwd, ACK, responses.div_ceil(2)),
            there(fwd, FIN_ACK, 1),
            reply(back, FIN_ACK, 1),
            there(fwd, ACK, 1),
        ],
        Protocol::ICMP => {
            let request = L4::Icmp {
                icmp_type: ECHO_REQUEST,
                code: 0,
            };
            let echo = L4::Icmp {
                icmp_type: ECHO_REPLY,
                code: 0,
            };
            if c.allowed {
                vec![there(request, 0, requests), reply(echo, 0, requests)]
            } else {
                vec![there(request, 0, 1 + rng.below(3) as u64)]
            }
        }
        _ if c.allowed => vec![there(fwd, 0, requests), reply(back, 0, requests)],
        _ => vec![there(fwd, 0, 1 + rng.below(3) as u64)],
    }
}
