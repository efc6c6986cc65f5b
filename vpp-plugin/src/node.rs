//! The node adapter: four thin graph nodes, one const-generic worker.
//!
//! | node | arc | interface | VPP direction |
//! | --- | --- | --- | --- |
//! | `capo-ip4-in` | ip4-unicast | rx | rx |
//! | `capo-ip6-in` | ip6-unicast | rx | rx |
//! | `capo-ip4-out` | ip4-output | tx | tx |
//! | `capo-ip6-out` | ip6-output | tx | tx |
//!
//! Per frame the worker borrows each buffer once through [`crate::buffer::view`],
//! classifies the frame as a batch with [`crate::batch::classify_batch`] (no pointer
//! casts here), then sets errors and traces and enqueues: drop, or the next feature.
//! Allowed, flow-hit and NIC counters are added once per frame; denied and malformed
//! packets are counted by the drop node from the error set on the buffer.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::LazyLock;
use std::time::Instant;

use arrayvec::ArrayVec;
use vpp_plugin::vlib::node::{FrameRef, Node, NodeRuntimeRef, FRAME_SIZE};
use vpp_plugin::vlib::{self, BufferIndex, BufferRef, MainRef};
use vpp_plugin::{vlib_node, vnet_feature_init, ErrorCounters, NextNodes};

use capo_classifier::Timestamp;

use crate::batch::{
    classify_batch, unclassified, BatchCounts, BatchCtx, DropReason, FrameOut, Next, PacketIn,
    Unclassified,
};
use crate::generation::VppDir;
use crate::trace::TraceData;

/// The flow tables' clock: monotonic nanoseconds since the plugin's first frame.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now() -> Timestamp {
    Timestamp(u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

#[path = "feature.rs"]
pub(crate) mod feature;

/// Next nodes besides the next feature.
#[derive(NextNodes)]
pub(crate) enum CapoNext {
    /// Dropped (denied or malformed).
    #[next_node = "drop"]
    Drop,
}

/// The nodes' counters (`show errors`).
#[derive(ErrorCounters)]
pub(crate) enum CapoError {
    /// Allowed, however decided.
    #[error_counter(name = "allowed", description = "packets allowed", severity = INFO)]
    Allowed,
    /// Denied by policy (counted by the drop node).
    #[error_counter(name = "denied", description = "packets denied by policy", severity = ERROR)]
    Denied,
    /// Allowed by the flow table.
    #[error_counter(name = "flow-hits", description = "flow-table hits", severity = INFO)]
    FlowHit,
    /// Allowed by the NIC.
    #[error_counter(name = "nic-accepted", description = "NIC verdicts accepted", severity = INFO)]
    NicAccepted,
    /// Marks of a generation software does not hold.
    #[error_counter(
        name = "nic-unknown-generation",
        description = "NIC marks from an unknown generation",
        severity = INFO
    )]
    NicUnknownGeneration,
    /// Not parseable (counted by the drop node).
    #[error_counter(name = "malformed", description = "malformed packets", severity = ERROR)]
    Malformed,
    /// No generation or worker to classify with (dropped unless `unclassified pass`).
    #[error_counter(
        name = "unclassified",
        description = "packets that could not be classified",
        severity = ERROR
    )]
    Unclassified,
}

thread_local! {
    /// Per-thread output buffer, reused across frames (no allocation per frame).
    static OUT: RefCell<FrameOut> = RefCell::new(FrameOut::with_capacity(FRAME_SIZE));
}

/// The worker shared by the four nodes.
///
/// # Safety
///
/// VPP's node contract: `frame` holds valid buffer indices owned by this node, invoked
/// on the feature arc `IP6`/`OUTPUT` name (so every buffer's config index is on that
/// arc and its current data is as [`crate::buffer::view`] requires).
#[inline(always)]
unsafe fn run<N, const IP6: bool, const OUTPUT: bool>(
    vm: &mut MainRef,
    node: &mut NodeRuntimeRef<N>,
    frame: &mut FrameRef<N>,
) -> u16
where
    N: Node<
        Vector = BufferIndex,
        Scalar = (),
        Aux = (),
        FeatureData = (),
        NextNodes = CapoNext,
        Errors = CapoError,
        TraceData = TraceData,
    >,
{
    let mut bufs: ArrayVec<&mut BufferRef<()>, FRAME_SIZE> = ArrayVec::new();
    // SAFETY: the frame's vector holds at most FRAME_SIZE valid, owned buffer indices
    // (VPP's frame contract); feature data is `()`.
    let from = unsafe { frame.get_buffers::<FRAME_SIZE>(vm, &mut bufs) };
    let mut nexts: ArrayVec<u16, FRAME_SIZE> = ArrayVec::new();

    let Some(plugin) = crate::vpp_glue::plugin() else {
        // Not started (features are only enabled by a started plugin): fail closed.
        for b in bufs.iter_mut() {
            // SAFETY: the node runs on a feature arc (contract above), so the buffer's
            // config index is valid; this advances it exactly once per buffer.
            let (_next, ()) = unsafe { b.vnet_feature_next() };
            b.set_error(node, CapoError::Unclassified);
            nexts.push(CapoNext::Drop as u16);
        }
        // SAFETY: `from` and `nexts` have one entry per buffer; the drop node takes
        // buffer indices with their current data unchanged.
        unsafe { vm.buffer_enqueue_to_next(node, from, &nexts) };
        return from.len() as u16;
    };

    OUT.with_borrow_mut(|out| {
        {
            // One pass over the buffers' metadata: the next feature and the view.
            let views: ArrayVec<PacketIn<'_>, FRAME_SIZE> = bufs
                .iter_mut()
                .map(|b| {
                    // SAFETY: the node runs on a feature arc (contract above), so the
                    // buffer's config index is valid; this advances it exactly once per
                    // buffer.
                    let (next, ()) = unsafe { b.vnet_feature_next() };
                    nexts.push(next as u16);
                    // SAFETY: contract above: buffers on this arc, owned for the frame.
                    let v = unsafe { crate::buffer::view::<OUTPUT, ()>(b) };
                    PacketIn {
                        bytes: v.bytes,
                        sw_if_index: v.sw_if_index,
                        flow_id: v.flow_id,
                        traced: v.traced,
                    }
                })
                .collect();
            let mut guard = plugin.workers.for_thread(vm.thread_index());
            let dir = if OUTPUT { VppDir::Tx } else { VppDir::Rx };
            let mut counts = BatchCounts::default();
            match guard.as_mut().and_then(|g| g.slot()) {
                Some(slot) => {
                    let mut ctx = BatchCtx {
                        cell: &plugin.cell,
                        slot,
                        marks: plugin.config.nic_marks,
                        now: now(),
                        unclassified: plugin.config.unclassified,
                        sample: plugin.workers.sampling(),
                    };
                    counts = classify_batch::<IP6, OUTPUT>(&mut ctx, &views, out);
                }
                None => {
                    // No worker for this thread: as configured (default: drop).
                    out.clear();
                    let policy = plugin.config.unclassified;
                    for (i, p) in views.iter().enumerate() {
                        out.push(i, unclassified(p, dir, policy, &mut counts));
                    }
                }
            }
            plugin.counters.add(&counts);
            for (counter, n) in [
                (CapoError::Allowed, counts.allowed),
                (CapoError::FlowHit, counts.flow_hits),
                (CapoError::NicAccepted, counts.nic_accepted),
                (
                    CapoError::NicUnknownGeneration,
                    counts.nic_unknown_generation,
                ),
            ] {
                if n > 0 {
                    node.increment_error_counter(vm, counter, n);
                }
            }
            // Unclassified packets that pass are counted here; dropped ones by the
            // drop node from the error set below.
            for (counter, n) in [(
                CapoError::Unclassified,
                if plugin.config.unclassified == Unclassified::Pass {
                    counts.unclassified
                } else {
                    0
                },
            )] {
                if n > 0 {
                    node.increment_error_counter(vm, counter, n);
                }
            }
        }
        for ((b, o), next) in bufs.iter_mut().zip(out.iter()).zip(nexts.iter_mut()) {
            if o.next == Next::Drop {
                b.set_error(
                    node,
                    match o.drop {
                        Some(DropReason::Malformed) => CapoError::Malformed,
                        Some(DropReason::Unclassified) => CapoError::Unclassified,
                        _ => CapoError::Denied,
                    },
                );
                *next = CapoNext::Drop as u16;
            }
        }
        for &(i, t) in out.traces() {
            if let Some(b) = bufs.get_mut(i) {
                b.add_trace(vm, node).write(t);
            }
        }
    });

    // SAFETY: one next per buffer; each is the next feature's index or CapoNext::Drop,
    // both valid next nodes taking buffer indices; buffers are unchanged.
    unsafe { vm.buffer_enqueue_to_next(node, from, &nexts) };
    from.len() as u16
}

macro_rules! capo_node {
    ($ty:ident, $instance:ident, $format:ident, $name:literal, $ip6:literal, $output:literal) => {
        #[doc = concat!("The `", $name, "` node.")]
        #[vlib_node(name = $name, instance = $instance, format_trace = $format)]
        pub(crate) struct $ty;

        static $instance: $ty = $ty;

        fn $format(_vm: &mut MainRef, _node: &mut vlib::NodeRef<$ty>, t: &TraceData) -> String {
            t.to_string()
        }

        impl Node for $ty {
            type Vector = BufferIndex;
            type Scalar = ();
            type Aux = ();
            type NextNodes = CapoNext;
            type RuntimeData = ();
            type TraceData = TraceData;
            type Errors = CapoError;
            type FeatureData = ();

            #[inline(always)]
            unsafe fn function(
                &self,
                vm: &mut MainRef,
                node: &mut NodeRuntimeRef<Self>,
                frame: &mut FrameRef<Self>,
            ) -> u16 {
                // SAFETY: VPP calls this node only from its feature arc, with a frame of
                // buffers it owns (the node registration and feature below).
                unsafe { run::<Self, $ip6, $output>(vm, node, frame) }
            }
        }
    };
}

capo_node!(
    CapoIp4In,
    CAPO_IP4_IN,
    format_capo_ip4_in,
    "capo-ip4-in",
    false,
    false
);
capo_node!(
    CapoIp6In,
    CAPO_IP6_IN,
    format_capo_ip6_in,
    "capo-ip6-in",
    true,
    false
);
capo_node!(
    CapoIp4Out,
    CAPO_IP4_OUT,
    format_capo_ip4_out,
    "capo-ip4-out",
    false,
    true
);
capo_node!(
    CapoIp6Out,
    CAPO_IP6_OUT,
    format_capo_ip6_out,
    "capo-ip6-out",
    true,
    true
);

vnet_feature_init! {
    identifier: CAPO_IP4_IN_FEAT,
    arc_name: "ip4-unicast",
    node: CapoIp4In,
}

vnet_feature_init! {
    identifier: CAPO_IP6_IN_FEAT,
    arc_name: "ip6-unicast",
    node: CapoIp6In,
}

vnet_feature_init! {
    identifier: CAPO_IP4_OUT_FEAT,
    arc_name: "ip4-output",
    node: CapoIp4Out,
    runs_before: ["interface-output"],
}

vnet_feature_init! {
    identifier: CAPO_IP6_OUT_FEAT,
    arc_name: "ip6-output",
    node: CapoIp6Out,
    runs_before: ["interface-output"],
}
