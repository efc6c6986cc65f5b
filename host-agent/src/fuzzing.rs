//! Entry points shared by the fuzz targets (`host-agent/fuzz`) and the tests that
//! replay their saved corpora in CI. The differential ones return `Err` naming the
//! divergence; the fuzz targets turn that into a crash.

use std::net::IpAddr;

use capo_classifier::{Builder, IfaceKind, Scratch};
use capo_policy::{trace, Direction, Member, Packet, Protocol, State, L4};

use crate::inputs::replay::{replay_reader, ReplayOptions};
use crate::views::View;
use capo_felix::frame::Schema;

/// A differential check found two paths that disagree: what was compared, and how
/// they differ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Divergence(pub String);

/// Feeds arbitrary bytes through the frame decoder and the Felix state machine with
/// both schemas; whatever state results must render and evaluate. Any panic is a
/// bug. Returns how many frames were accepted, for corpus statistics.
pub fn felix_stream(data: &[u8]) -> u64 {
    let mut accepted = 0;
    for schema in [None, Some(Schema::V3_31), Some(Schema::V3_32)] {
        let opts = ReplayOptions {
            schema,
            // Small cap: the fuzzer should explore contents, not allocations.
            max_frame_len: 1 << 20,
            ..ReplayOptions::default()
        };
        let Ok(r) = replay_reader(data, &opts) else {
            continue;
        };
        accepted += r.stats.frames;
        for v in View::ALL {
            let _ = v.render(&r.state, &r.ids);
        }
        for pkt in probe_packets() {
            let _ = trace(&r.state, &pkt);
        }
    }
    accepted
}

fn probe_packets() -> [Packet; 3] {
    let a = [10, 0, 0, 1].into();
    let b = [10, 0, 0, 2].into();
    [
        Packet {
            src: a,
            dst: b,
            protocol: Protocol::TCP,
            l4: L4::Ports { src: 1234, dst: 80 },
        },
        Packet {
            src: b,
            dst: a,
            protocol: Protocol::ICMP,
            l4: L4::Icmp {
                icmp_type: 8,
                code: 0,
            },
        },
        Packet {
            src: "fd00::1".parse().unwrap_or(a),
            dst: "fd00::2".parse().unwrap_or(b),
            protocol: Protocol::UDP,
            l4: L4::None,
        },
    ]
}

/// Bytes at the end of a `felix_classifier` input that choose the probe packets.
pub const PACKET_SPEC_BYTES: usize = 64;

/// A Felix stream (all but the last [`PACKET_SPEC_BYTES`]) into a state, compiled
/// by the fast classifier and checked against the reference evaluator on packets
/// the last bytes build from the state's own addresses, on every interface and
/// direction. Returns how many classifications agreed.
///
/// # Errors
///
/// The first divergence (verdict or decider), named.
pub fn felix_classifier(data: &[u8]) -> Result<u64, Divergence> {
    let (stream, spec) = data.split_at(data.len().saturating_sub(PACKET_SPEC_BYTES));
    let opts = ReplayOptions {
        // The schema the stream's CalicoVersion names.
        schema: None,
        max_frame_len: 1 << 20,
        ..ReplayOptions::default()
    };
    let Ok(r) = replay_reader(stream, &opts) else {
        return Ok(0);
    };
    let packets = packets_from(&r.state, spec);
    let generation = Builder::new().build(&r.state, &r.ids);
    let mut scratch = Scratch::default();
    let mut agreed = 0;
    let kinds = IfaceKind::all(&r.state);
    for kind in &kinds {
        let Some(iface) = generation.interface_of(kind) else {
            return Err(Divergence(format!(
                "the classifier has no interface for {kind:?}"
            )));
        };
        for dir in Direction::BOTH {
            for pkt in &packets {
                let want = kind.reference(&r.state, dir, pkt);
                let got = generation.classify(iface, dir, pkt, &mut scratch);
                match (want, got) {
                    (Some(w), Some(g)) if w.verdict == g.verdict && &w.decider == g.decider() => {
                        agreed += 1;
                    }
                    (w, g) => {
                        return Err(Divergence(format!(
                            "{kind:?} {dir:?} {pkt:?}: reference {w:?}, classifier {:?}",
                            g.map(|g| (g.verdict, g.decider().clone()))
                        )))
                    }
                }
            }
        }
    }
    Ok(agreed)
}

/// Packets between the state's own addresses (endpoints and IP-set members) and a
/// few others, chosen by `spec`, 8 bytes a packet.
fn packets_from(state: &State, spec: &[u8]) -> Vec<Packet> {
    let mut addrs: Vec<IpAddr> = vec![
        [10, 0, 0, 1].into(),
        [192, 168, 1, 1].into(),
        IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]),
    ];
    for w in state.workloads().values() {
        addrs.extend(w.nets().map(|n| n.net().addr()));
    }
    for set in state.ipsets().values() {
        addrs.extend(set.members().take(8).map(|m| match m {
            Member::Net(n) => n.net().addr(),
            Member::IpPort { addr, .. } => *addr,
        }));
    }
    spec.chunks(8)
        .filter(|c| c.len() == 8)
        .map(|c| {
            let src = addrs[usize::from(c[0]) % addrs.len()];
            // Same family as the source where there is one.
            let same: Vec<&IpAddr> = addrs
                .iter()
                .filter(|a| a.is_ipv4() == src.is_ipv4())
                .collect();
            let dst = *same[usize::from(c[1]) % same.len()];
            let protocol = match c[2] % 6 {
                0 | 1 => Protocol::TCP,
                2 => Protocol::UDP,
                3 if src.is_ipv4() => Protocol::ICMP,
                3 => Protocol::ICMPV6,
                4 => Protocol::SCTP,
                _ => Protocol(c[3]),
            };
            let l4 = match protocol {
                Protocol::TCP | Protocol::UDP | Protocol::SCTP => L4::Ports {
                    src: u16::from_le_bytes([c[4], c[5]]),
                    dst: u16::from_le_bytes([c[6], c[7]]),
                },
                Protocol::ICMP | Protocol::ICMPV6 => L4::Icmp {
                    icmp_type: c[4],
                    code: c[5],
                },
                _ => L4::None,
            };
            Packet {
                src,
                dst,
                protocol,
                l4,
            }
        })
        .collect()
}

/// Separates the two manifest sets of a `manifests_diff` input.
pub const MANIFESTS_SEPARATOR: &str = "\n#capo-fuzz-next\n";

/// Two manifest sets (split at [`MANIFESTS_SEPARATOR`]): the first loaded and
/// streamed, then the minimal diff to the second applied through the policy core,
/// must reach the state a fresh load of the second gives. Returns whether both
/// loaded (the check ran).
///
/// # Errors
///
/// A diff that does not apply, or reaches another state.
pub fn manifests_diff(data: &[u8]) -> Result<bool, Divergence> {
    use capo_felix::convert::{convert, Converted};
    use capo_resources::{diff, Options, Resources};
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(false);
    };
    let (a, b) = text.split_once(MANIFESTS_SEPARATOR).unwrap_or((text, ""));
    let load = |yaml: &str| {
        let mut r = Resources::new();
        r.add_text(std::path::Path::new("fuzz.yaml"), yaml).ok()?;
        // Every pod local: any manifest set has endpoints.
        Some(r.snapshot(&Options::for_node(None)))
    };
    let (Some(old), Some(new)) = (load(a), load(b)) else {
        return Ok(false);
    };
    let state_of = |msgs: Vec<capo_proto::felix::v3_32::ToDataplane>, mut state: State| {
        for (i, m) in msgs.into_iter().enumerate() {
            match convert(m, &state).map_err(|e| format!("message {i}: {e}"))? {
                Converted::Update(u) => {
                    state.apply(u).map_err(|e| format!("message {i}: {e}"))?;
                }
                Converted::InSync | Converted::Ignored(_) => {}
            }
        }
        Ok::<State, String>(state)
    };
    let Ok(before) = state_of(old.to_felix_messages(), State::new()) else {
        // A first set Felix's own stream cannot carry is not this check's business.
        return Ok(false);
    };
    let fresh = state_of(new.to_felix_messages(), State::new())
        .map_err(|e| Divergence(format!("fresh load of the second set: {e}")))?;
    let stepped =
        state_of(diff(&old, &new), before).map_err(|e| Divergence(format!("diff: {e}")))?;
    let same = stepped.ipsets() == fresh.ipsets()
        && stepped.policies() == fresh.policies()
        && stepped.profiles() == fresh.profiles()
        && stepped.workloads() == fresh.workloads()
        && stepped.host_endpoints() == fresh.host_endpoints()
        && stepped.config() == fresh.config();
    if same {
        Ok(true)
    } else {
        Err(Divergence(
            "the diff reached another state than a fresh load".into(),
        ))
    }
}
