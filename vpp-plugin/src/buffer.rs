//! The one audited buffer helper: everything the node reads from a `vlib_buffer_t`,
//! borrowed once as safe values (a bounds-checked `&[u8]` of the packet from its IP
//! header, the interfaces, the NIC mark, the trace flag). No other code touches buffer
//! memory; the node passes these to the safe batch logic.
#![allow(unsafe_code)]

use vpp_plugin::vlib::{BufferFlags, BufferRef};

use crate::generation::SwIfIndex;

/// One buffer's contents, as the batch logic takes them.
pub(crate) struct BufferView<'a> {
    /// The packet from its IP header to the end of the first buffer.
    pub bytes: &'a [u8],
    /// rx (`OUTPUT = false`) or tx (`OUTPUT = true`) interface.
    pub sw_if_index: SwIfIndex,
    /// `vlib_buffer_t.flow_id` (a NIC mark, or 0).
    pub flow_id: u32,
    /// `VLIB_BUFFER_IS_TRACED`.
    pub traced: bool,
}

/// Borrows what the node needs from `b`.
///
/// On the ip4/ip6-unicast arcs the buffer's current data is the IP header. On the
/// ip4/ip6-output arcs ip4/6-rewrite has already prepended the L2 rewrite, whose length
/// is `vnet_buffer(b)->ip.save_rewrite_length` (the ACL plugin's output nodes skip it
/// the same way); it is skipped here, bounds-checked.
///
/// Only the first buffer of a chain is seen: headers beyond it parse as truncated.
///
/// # Safety
///
/// - `b` is a buffer handed to a node on one of the four capo arcs, owned by this node
///   for the duration of the borrow (VPP's frame contract), with `current_data` and
///   `current_length` describing initialised packet bytes inside its data area.
/// - On the output arcs (`OUTPUT = true`), the `ip` member of the vnet opaque union is
///   the live one (ip4/6-rewrite wrote `save_rewrite_length`).
#[inline(always)]
pub(crate) unsafe fn view<const OUTPUT: bool, F>(b: &mut BufferRef<F>) -> BufferView<'_> {
    let vnet = b.vnet_buffer();
    let sw_if_index = if OUTPUT {
        vnet.tx_sw_if_index()
            .map_or(SwIfIndex(u32::MAX), |s| SwIfIndex(u32::from(s)))
    } else {
        SwIfIndex(u32::from(vnet.rx_sw_if_index()))
    };
    let skip = if OUTPUT {
        // SAFETY: per this function's contract the `ip` union member is live on the
        // output arcs; reading a u8 field of an initialised `vnet_buffer_opaque_t` is
        // a plain load.
        usize::from(unsafe {
            (*vnet.as_ptr())
                .__bindgen_anon_1
                .ip
                .__bindgen_anon_1
                .__bindgen_anon_1
                .save_rewrite_length
        })
    } else {
        0
    };
    let traced = b.flags().contains(BufferFlags::IS_TRACED);
    // SAFETY: `as_ptr` is a valid `vlib_buffer_t`; its first union arm is the one VPP
    // always uses (the other only forces alignment) and `flow_id` is a plain u32 of the
    // initialised first cache line.
    let flow_id = unsafe {
        (*b.as_ptr())
            .__bindgen_anon_1
            .as_ref()
            .__bindgen_anon_1
            .__bindgen_anon_1
            .as_ref()
            .flow_id
    };
    let len = usize::from(b.current_length());
    let start = b.current_ptr_mut().cast_const();
    // SAFETY: per this function's contract, `current_ptr .. current_ptr + current_length`
    // is initialised packet data inside the buffer, not mutated while the returned view
    // lives (the view borrows `b`), and `current_length` fits the buffer's data area.
    let all = unsafe { std::slice::from_raw_parts(start, len) };
    BufferView {
        bytes: all.get(skip..).unwrap_or_default(),
        sw_if_index,
        flow_id,
        traced,
    }
}
