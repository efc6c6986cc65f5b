//! The VPP node's own logic in-process: `capo_vpp_plugin::classify_batch`, the function
//! capo's graph nodes call per frame (interface lookup by `sw_if_index`, NIC-mark
//! check, parse from the IP header, flow table, classification of misses, per-packet
//! next node), on the workload's packets as IP-header buffers. What it leaves out is
//! VPP's own part of a node: buffer indices to pointers, the feature arc's next index,
//! enqueueing. `capo-bench vpp` times the whole node inside VPP; this is its quick,
//! quiet A/B twin.

use std::hint::black_box;
use std::sync::Arc;

use capo_classifier::{IfaceKind, Scratch, Timestamp, MAX_BATCH};
use capo_policy::{IdTable, State, Verdict};
use capo_vpp_plugin::batch::Unclassified;
use capo_vpp_plugin::binding::{Bindings, Bound, How};
use capo_vpp_plugin::generation::{policed_interfaces, Snapshot};
use capo_vpp_plugin::mark::NicMarks;
use capo_vpp_plugin::worker::WorkerSlot;
use capo_vpp_plugin::{
    classify_batch, BatchCtx, FrameOut, Generation, GenerationCell, Next, PacketIn, PluginConfig,
    SwIfIndex, VppDir,
};

use crate::measure::time_loop;
use crate::run::{first_frame, Options};
use crate::workload::Workload;

/// One packet as a node receives it: its interface, its arc and its IP-header bytes.
#[derive(Clone)]
struct NodePacket {
    sw_if_index: u32,
    ip6: bool,
    output: bool,
    bytes: Vec<u8>,
    /// The fast path's verdict on it (`Generation::classify`), to check the node's.
    want: Option<Verdict>,
}

/// A node call: one arc's packets of one frame, in frame order.
struct Call {
    ip6: bool,
    output: bool,
    packets: Vec<NodePacket>,
}

/// ns per packet of the node logic, and what the pass before timing decided.
#[derive(Debug, Clone, Copy)]
pub struct NodeLogic {
    /// ns per first packet (an empty flow table at the start of each pass).
    pub first: f64,
    /// ns per established packet (the allowed packets again).
    pub established: f64,
    /// Packets allowed in the untimed pass.
    pub allowed: usize,
    /// Packets of the first phase.
    pub packets: usize,
    /// First packets whose verdict differs from the fast path's.
    pub disagree: usize,
    /// Of the established phase's packets, those the node allowed (untimed pass).
    pub established_allowed: usize,
}

/// Frames of [`MAX_BATCH`] packets, each split per arc as VPP's graph splits it (the
/// interface's VPP direction follows from the packet's Calico direction and the
/// interface's `invert_rx_tx`).
fn calls(packets: &[NodePacket]) -> Vec<Call> {
    let mut out = Vec::new();
    for frame in packets.chunks(MAX_BATCH) {
        for (ip6, output) in [(false, true), (false, false), (true, true), (true, false)] {
            let these: Vec<NodePacket> = frame
                .iter()
                .filter(|p| p.ip6 == ip6 && p.output == output)
                .cloned()
                .collect();
            if !these.is_empty() {
                out.push(Call {
                    ip6,
                    output,
                    packets: these,
                });
            }
        }
    }
    out
}

/// Runs one node call; returns the packets it let through. `views` is reused from
/// call to call, as the node's per-frame array is (no allocation per call).
fn run_call<'a>(
    ctx: &mut BatchCtx<'_>,
    call: &'a Call,
    views: &mut Vec<PacketIn<'a>>,
    out: &mut FrameOut,
) -> usize {
    views.clear();
    views.extend(call.packets.iter().map(|p| PacketIn {
        bytes: &p.bytes,
        sw_if_index: SwIfIndex(p.sw_if_index),
        flow_id: 0,
        traced: false,
    }));
    match (call.ip6, call.output) {
        (false, false) => classify_batch::<false, false>(ctx, views, out),
        (false, true) => classify_batch::<false, true>(ctx, views, out),
        (true, false) => classify_batch::<true, false>(ctx, views, out),
        (true, true) => classify_batch::<true, true>(ctx, views, out),
    };
    out.iter().filter(|o| o.next == Next::NextFeature).count()
}

/// The node logic on `w`'s packets under `classifier` (compiled from `state`/`ids`),
/// each endpoint bound to the `sw_if_index` the ids give it.
pub fn node_logic(
    w: &Workload,
    state: &State,
    ids: &IdTable,
    classifier: &Arc<capo_classifier::Generation>,
    opts: Options,
) -> Option<NodeLogic> {
    let host = ids.host_interface().to_string();
    let bindings: Bindings = policed_interfaces(state, &host)
        .into_iter()
        .filter_map(|(name, _, _)| {
            let idx = ids.interface(&name)?;
            let bound = Bound {
                sw_if_index: SwIfIndex(idx),
                vpp_name: name.clone(),
                how: How::Explicit,
            };
            Some((name, bound))
        })
        .collect();
    let snapshot = Arc::new(Snapshot {
        state: state.clone(),
        ids: ids.clone(),
    });
    let g = Arc::new(Generation::build(
        1,
        snapshot,
        classifier.clone(),
        &bindings,
    ));
    let cell = GenerationCell::new();
    let _ = cell.publish(g.clone());
    let mut scratch = Scratch::default();
    let packets: Vec<NodePacket> = w
        .packets
        .iter()
        .filter_map(|(k, d, p)| {
            let wep = state.workloads().get(k)?;
            let idx = ids.interface(&wep.name)?;
            let iface = g.interface(SwIfIndex(idx))?;
            let want = classifier
                .interface_of(&IfaceKind::Workload(k.clone()))
                .and_then(|i| classifier.classify(i, *d, p, &mut scratch))
                .map(|d| d.verdict);
            Some(NodePacket {
                sw_if_index: idx,
                ip6: p.dst.is_ipv6(),
                // The arc whose VPP direction is the packet's Calico direction there.
                output: iface.calico_dir(VppDir::Tx) == *d,
                bytes: first_frame(p).get(14..)?.to_vec(),
                want,
            })
        })
        .collect();
    if packets.is_empty() {
        return None;
    }
    let config = PluginConfig::default();
    let mut slot = WorkerSlot::new(config.flow_config());
    let now = Timestamp::from_secs(1);
    let long_after = Timestamp::from_secs(1_000_000_000);
    let first_calls = calls(&packets);
    let mut out = FrameOut::with_capacity(MAX_BATCH);
    let mut views = Vec::with_capacity(MAX_BATCH);
    let mut allowed = Vec::new();
    let mut disagree = 0;
    let mut ctx = BatchCtx {
        cell: &cell,
        slot: &mut slot,
        marks: NicMarks::default(),
        now,
        unclassified: Unclassified::Drop,
        sample: false,
    };
    for call in &first_calls {
        run_call(&mut ctx, call, &mut views, &mut out);
        disagree += call
            .packets
            .iter()
            .zip(out.iter())
            .filter(|(p, o)| {
                let got = match o.next {
                    Next::NextFeature => Verdict::Allow,
                    Next::Drop => Verdict::Deny,
                };
                p.want != Some(got)
            })
            .count();
        allowed.extend(
            call.packets
                .iter()
                .zip(out.iter())
                .filter(|(_, o)| o.next == Next::NextFeature)
                .map(|(p, _)| p.clone()),
        );
    }
    let established_calls = calls(&allowed);
    let established_allowed = established_calls
        .iter()
        .map(|c| run_call(&mut ctx, c, &mut views, &mut out))
        .sum();
    let first = time_loop(opts.budget(), first_calls.len(), |k| {
        if k == 0 {
            ctx.slot.worker.expire(long_after, usize::MAX);
        }
        if let Some(c) = first_calls.get(k) {
            black_box(run_call(&mut ctx, c, &mut views, &mut out));
        }
    });
    let established = time_loop(opts.budget(), established_calls.len().max(1), |k| {
        if let Some(c) = established_calls.get(k) {
            black_box(run_call(&mut ctx, c, &mut views, &mut out));
        }
    });
    Some(NodeLogic {
        first: first * first_calls.len() as f64 / packets.len() as f64,
        established: established * established_calls.len() as f64 / allowed.len().max(1) as f64,
        allowed: allowed.len(),
        packets: packets.len(),
        disagree,
        established_allowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{generate, Kind};

    /// The node decides every packet as the fast path does, and the established
    /// phase's packets (the allowed ones again) all pass.
    #[test]
    fn node_logic_agrees_with_the_fast_path() {
        let w = generate(Kind::Seed);
        let (state, ids) = w.state();
        let g = capo_classifier::Builder::new().build(&state, &ids);
        let opts = Options {
            quick: true,
            fast_only: true,
        };
        let n = node_logic(&w, &state, &ids, &g, opts).unwrap();
        assert_eq!(n.disagree, 0);
        assert!(n.allowed > 0 && n.allowed < n.packets, "{n:?}");
        assert_eq!(n.established_allowed, n.allowed);
        assert!(n.first > 0.0 && n.established > 0.0);
    }
}
