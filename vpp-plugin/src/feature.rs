//! Enabling the capo features on an interface: all four arcs at once, on the main
//! thread with the barrier held (the `&BarrierHeldMainRef` proves it).

use vpp_plugin::vlib::BarrierHeldMainRef;
use vpp_plugin::vnet::types::SwIfIndex as VppSwIfIndex;

use super::{CAPO_IP4_IN_FEAT, CAPO_IP4_OUT_FEAT, CAPO_IP6_IN_FEAT, CAPO_IP6_OUT_FEAT};
use crate::control::ContextError;
use crate::generation::SwIfIndex;

/// The capo features: `(arc, node)`.
pub(crate) const ARCS: [(&str, &str); 4] = [
    ("ip4-unicast", "capo-ip4-in"),
    ("ip6-unicast", "capo-ip6-in"),
    ("ip4-output", "capo-ip4-out"),
    ("ip6-output", "capo-ip6-out"),
];

/// Enables (or disables) the four capo features on `sw_if_index`. On a failure while
/// enabling, the arcs already enabled are disabled again.
///
/// # Errors
///
/// [`ContextError::Feature`] naming the arc VPP refused.
pub(crate) fn set(
    vm: &BarrierHeldMainRef,
    sw_if_index: SwIfIndex,
    enable: bool,
) -> Result<(), ContextError> {
    let idx = VppSwIfIndex::new(sw_if_index.0);
    let arcs: [(&'static str, &Toggle<'_>); 4] = [
        ("ip4-unicast", &|on| toggle(&CAPO_IP4_IN_FEAT, vm, idx, on)),
        ("ip6-unicast", &|on| toggle(&CAPO_IP6_IN_FEAT, vm, idx, on)),
        ("ip4-output", &|on| toggle(&CAPO_IP4_OUT_FEAT, vm, idx, on)),
        ("ip6-output", &|on| toggle(&CAPO_IP6_OUT_FEAT, vm, idx, on)),
    ];
    for (i, (arc, f)) in arcs.iter().enumerate() {
        if let Err(code) = f(enable) {
            if enable {
                for (_, undo) in arcs.iter().take(i) {
                    let _ = undo(false);
                }
            }
            return Err(ContextError::Feature {
                arc,
                sw_if_index: sw_if_index.0,
                code,
            });
        }
    }
    Ok(())
}

/// Turns one arc's feature on or off.
type Toggle<'a> = dyn Fn(bool) -> Result<(), i32> + 'a;

fn toggle(
    feat: &vpp_plugin::vnet::feature::FeatureRegistration<()>,
    vm: &BarrierHeldMainRef,
    idx: VppSwIfIndex,
    on: bool,
) -> Result<(), i32> {
    let r = if on {
        feat.enable(vm, idx, ())
    } else {
        feat.disable(vm, idx)
    };
    r.map_err(i32::from)
}
