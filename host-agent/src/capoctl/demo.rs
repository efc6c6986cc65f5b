//! `capoctl demo`: the seed document's walkthrough. The seed's manifests become the
//! messages Felix would send, which take the real path: encoded as frames, decoded,
//! converted, applied, rendered.

use std::fmt::Write as _;
use std::net::IpAddr;

use capo_policy::{trace, IdTable, State};
use capo_resources::{Options, Resources, Snapshot};

use crate::inputs::felix_stream::StreamError;
use crate::inputs::replay::{replay_reader, ReplayOptions};
use crate::views::{packet, trace_text, ArgError, View};
use capo_felix::frame::encode_frames;

/// The seed's manifests (`examples/seed/`), built in so the demo runs anywhere.
const SEED_MANIFESTS: [(&str, &str); 4] = [
    (
        "examples/seed/namespace.yaml",
        include_str!("../../../examples/seed/namespace.yaml"),
    ),
    (
        "examples/seed/nodes.yaml",
        include_str!("../../../examples/seed/nodes.yaml"),
    ),
    (
        "examples/seed/pods.yaml",
        include_str!("../../../examples/seed/pods.yaml"),
    ),
    (
        "examples/seed/networkpolicy.yaml",
        include_str!("../../../examples/seed/networkpolicy.yaml"),
    ),
];

/// The node the seed's walkthrough looks at.
pub const SEED_NODE: &str = "kind-worker2";

/// Why the walkthrough could not run (the seed is built in, so this means a bug).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A seed manifest did not load.
    #[error("{0}")]
    Manifest(#[from] capo_resources::Error),
    /// The seed's Felix stream was refused.
    #[error("{0}")]
    Stream(#[from] StreamError),
    /// A probe's address did not parse.
    #[error("{addr}: {error}")]
    Address {
        /// The text.
        addr: &'static str,
        /// Why.
        error: std::net::AddrParseError,
    },
    /// A probe's packet was rejected.
    #[error(transparent)]
    Packet(#[from] ArgError),
}

/// What Felix on kind-worker2 holds for the seed's manifests, with or without the
/// NetworkPolicy.
pub fn seed_snapshot(with_policy: bool) -> Result<Snapshot, DemoError> {
    let mut res = Resources::new();
    for (file, text) in SEED_MANIFESTS {
        if !with_policy && file.ends_with("networkpolicy.yaml") {
            continue;
        }
        res.add_text(std::path::Path::new(file), text)?;
    }
    Ok(res.snapshot(&Options::for_node(Some(SEED_NODE))))
}

/// The demo's replay options: the seed's `tun3` is `sw_if_index=11`.
pub fn seed_options() -> ReplayOptions {
    ReplayOptions {
        interface_indexes: vec![("tun3".into(), 11)],
        ..ReplayOptions::default()
    }
}

/// A probe of the seed's netcat test.
pub struct Probe {
    /// What it shows.
    pub label: &'static str,
    /// Source address.
    pub from: &'static str,
    /// Destination address.
    pub to: &'static str,
    /// Protocol name.
    pub proto: &'static str,
    /// Destination port.
    pub dport: u16,
}

/// The netcat test: ts1 → ts2 on the allowed port and on others.
pub const NETCAT: [Probe; 4] = [
    Probe {
        label: "ts1 -> ts2 tcp/5978 (nc -z 11.0.0.67 5978)",
        from: "11.0.0.196",
        to: "11.0.0.67",
        proto: "tcp",
        dport: 5978,
    },
    Probe {
        label: "ts1 -> ts2 tcp/5979 (nc -z 11.0.0.67 5979)",
        from: "11.0.0.196",
        to: "11.0.0.67",
        proto: "tcp",
        dport: 5979,
    },
    Probe {
        label: "ts1 -> ts2 udp/5978 (nc -zu 11.0.0.67 5978)",
        from: "11.0.0.196",
        to: "11.0.0.67",
        proto: "udp",
        dport: 5978,
    },
    Probe {
        label: "ts1 -> ts2 tcp/5978 over IPv6",
        from: "fd20::58fd:b191:5c13:9cc3",
        to: "fd20::1cc0:b1ac:ad47:e7c2",
        proto: "tcp",
        dport: 5978,
    },
];

/// Traces one probe.
pub fn probe(state: &State, ids: &IdTable, p: &Probe) -> Result<String, DemoError> {
    let address = |addr: &'static str| {
        addr.parse::<IpAddr>()
            .map_err(|error| DemoError::Address { addr, error })
    };
    let (from, to) = (address(p.from)?, address(p.to)?);
    let pkt = packet(from, to, p.proto, Some(40000), Some(p.dport), None, None)?;
    Ok(trace_text(&trace(state, &pkt), state, ids))
}

/// Runs the walkthrough and returns what it prints.
pub fn run() -> Result<String, DemoError> {
    let opts = seed_options();
    let (before, after) = (seed_snapshot(false)?, seed_snapshot(true)?);
    let mut stream = before.to_felix_messages();
    let r0 = replay_reader(encode_frames(&stream).as_slice(), &opts)?;
    // Creating the policy: the updates Felix sends after InSync.
    let mut added = capo_resources::diff(&before, &after);
    capo_resources::number_from(&mut added, stream.len() as u64);
    stream.extend(added);
    let r1 = replay_reader(encode_frames(&stream).as_slice(), &opts)?;

    let mut out = String::new();
    out += "capo demo: the seed's walkthrough (see docs/troubleshooting.md)\n\n";
    out += "Node kind-worker2 (172.18.0.2, fc00:f853:ccd:e793::2).\n";
    out += "Pods: ts1 11.0.0.196 on kind-worker3 (role=sender), ts2 11.0.0.67 on this node\n";
    out += "(role=receiver, interface tun3), from examples/seed/. The manifests become the\n";
    out += "messages Felix would send, decoded and applied like Felix's own.\n\n";
    out += "ts2 has only the usual allow profiles:\n\n";
    let _ = writeln!(out, "vpp# {}", View::Interfaces.command());
    out += &View::Interfaces.render(&r0.state, &r0.ids);
    out += "\nkubectl apply: NetworkPolicy default/test-network-policy\n";
    out += "  (podSelector role=receiver, ingress from role=sender, TCP 5978)\n\n";
    let _ = writeln!(out, "vpp# {}", View::Interfaces.command());
    out += &View::Interfaces.render(&r1.state, &r1.ids);
    out += "\nThe netcat test, as capo's verdicts:\n\n";
    for p in &NETCAT {
        let _ = writeln!(out, "$ {}", p.label);
        out += &probe(&r1.state, &r1.ids, p)?;
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_shows_before_and_after_and_the_netcat_verdicts() {
        let out = run().unwrap();
        assert!(
            out.contains("[tun3 sw_if_index=11  addr=11.0.0.67 addr6=fd20::1cc0:b1ac:ad47:e7c2]")
        );
        assert!(out.contains(
            "      tx:[rule#18;allow][proto==TCP,dst==5978,src==[ipset#1;prefix;11.0.0.196/32,fd20::58fd:b191:5c13:9cc3/128,],]"
        ));
        let verdicts: Vec<&str> = out
            .lines()
            .filter(|l| *l == "ALLOW" || *l == "DENY")
            .collect();
        assert_eq!(verdicts, vec!["ALLOW", "DENY", "DENY", "ALLOW"]);
    }
}
