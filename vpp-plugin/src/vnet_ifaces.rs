//! VPP's software interfaces, as capo needs them: the list (index and name), whether
//! the capo features are enabled on one, and VPP's add/del callback. The C side is
//! `csrc/capo_vnet.c`; every call here runs on VPP's main thread (the `&MainRef`
//! proves it), where VPP's interface tables may be read.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::sync::OnceLock;

use vpp_plugin::vlib::MainRef;

use crate::binding::VppInterface;
use crate::control::RebindSignal;
use crate::generation::SwIfIndex;
use crate::share::{FlowAction, FlowAddrs, FlowLayer, FlowLayerRule, Target};

extern "C" {
    fn capo_vnet_sw_if_limit() -> u32;
    fn capo_vnet_sw_if_name(sw_if_index: u32, buf: *mut u8, cap: u32) -> i32;
    fn capo_vnet_sw_if_by_name(name: *const u8, len: u32, sw_if_index: *mut u32) -> i32;
    fn capo_vnet_feature_enabled(
        arc: *const std::ffi::c_char,
        node: *const std::ffi::c_char,
        sw_if_index: u32,
    ) -> i32;
    fn capo_vnet_flow_probe(
        sw_if_index: u32,
        mark: u32,
        driver: *mut u8,
        cap: u32,
        driver_len: *mut u32,
    ) -> i32;
    fn capo_vnet_hw_of(
        sw_if_index: u32,
        hw_if_index: *mut u32,
        driver: *mut u8,
        cap: u32,
        driver_len: *mut u32,
    ) -> i32;
    fn capo_vnet_flow_add(rule: *const CapoFlowRule, flow_index: *mut u32) -> i32;
    fn capo_vnet_flow_enable(flow_index: u32, hw_if_index: u32) -> i32;
    fn capo_vnet_flow_disable(flow_index: u32, hw_if_index: u32);
    fn capo_vnet_flow_del(flow_index: u32);
    fn capo_vnet_flow_emulation(sw_if_index: u32, on: i32) -> i32;
    fn capo_vnet_flow_emulation_stats(
        sw_if_index: u32,
        flows: *mut u32,
        dropped: *mut u64,
        marked: *mut u64,
    ) -> i32;
}

/// `capo_flow_rule_t` in `csrc/capo_vnet.c`.
#[repr(C)]
struct CapoFlowRule {
    /// 0: drop; else the mark.
    mark: u32,
    is_ip6: u8,
    protocol: u8,
    protocol_mask: u8,
    src: [u8; 16],
    src_mask: [u8; 16],
    dst: [u8; 16],
    dst_mask: [u8; 16],
    src_port: u16,
    src_port_mask: u16,
    dst_port: u16,
    dst_port_mask: u16,
}

impl CapoFlowRule {
    fn of(rule: &FlowLayerRule) -> Self {
        fn wide<const N: usize>(a: [u8; N]) -> [u8; 16] {
            let mut out = [0u8; 16];
            out[..N].copy_from_slice(&a);
            out
        }
        let (is_ip6, src, src_mask, dst, dst_mask) = match rule.addrs {
            FlowAddrs::V4 { src, dst } => (0, wide(src.0), wide(src.1), wide(dst.0), wide(dst.1)),
            FlowAddrs::V6 { src, dst } => (1, src.0, src.1, dst.0, dst.1),
        };
        CapoFlowRule {
            mark: match rule.action {
                FlowAction::Drop => 0,
                FlowAction::Mark(m) => m,
            },
            is_ip6,
            protocol: rule.protocol.unwrap_or(0),
            protocol_mask: if rule.protocol.is_some() { 0xff } else { 0 },
            src,
            src_mask,
            dst,
            dst_mask,
            src_port: rule.src_port.0,
            src_port_mask: rule.src_port.1,
            dst_port: rule.dst_port.0,
            dst_port_mask: rule.dst_port.1,
        }
    }
}

/// VPP interface names are short; longer ones are cut here.
const NAME_CAP: usize = 256;

/// Every software interface VPP has.
pub(crate) fn list(vm: &MainRef) -> Vec<VppInterface> {
    // SAFETY: main thread (the `MainRef`); reads the interface pool's length.
    let limit = unsafe { capo_vnet_sw_if_limit() };
    let mut out = Vec::new();
    let mut buf = [0u8; NAME_CAP];
    for i in 0..limit {
        if let Some(name) = name_of(vm, i, &mut buf) {
            out.push(VppInterface {
                sw_if_index: SwIfIndex(i),
                name,
            });
        }
    }
    out
}

/// The name of interface `sw_if_index`, if VPP has it.
fn name_of(_vm: &MainRef, sw_if_index: u32, buf: &mut [u8; NAME_CAP]) -> Option<String> {
    // SAFETY: main thread (the `MainRef`); `buf` is valid for `NAME_CAP`
    // bytes, the C side writes at most that many and checks the index against the
    // pool's free list.
    let n = unsafe { capo_vnet_sw_if_name(sw_if_index, buf.as_mut_ptr(), NAME_CAP as u32) };
    let n = usize::try_from(n).ok()?;
    Some(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

/// The interfaces VPP has among `names` and `indexes`, each looked up (no walk of
/// every interface). A name is found through vnet's hardware-interface name hash,
/// else as VPP's CLI parses an interface name; one neither finds is left out,
/// although VPP may have it (the caller then lists every interface).
pub(crate) fn among(vm: &MainRef, names: &[String], indexes: &[SwIfIndex]) -> Vec<VppInterface> {
    let mut out = Vec::with_capacity(names.len() + indexes.len());
    for name in names {
        let Ok(len) = u32::try_from(name.len()) else {
            continue;
        };
        let mut found = 0u32;
        // SAFETY: main thread; `name` is valid for `len` bytes and the C side copies
        // them before parsing; `found` is a valid out-pointer.
        let rc = unsafe { capo_vnet_sw_if_by_name(name.as_ptr(), len, &mut found) };
        if rc == 0 {
            out.push(VppInterface {
                sw_if_index: SwIfIndex(found),
                name: name.clone(),
            });
        }
    }
    let mut buf = [0u8; NAME_CAP];
    for idx in indexes {
        if let Some(name) = name_of(vm, idx.0, &mut buf) {
            out.push(VppInterface {
                sw_if_index: *idx,
                name,
            });
        }
    }
    out
}

/// Whether feature `node` is enabled on `arc` for the interface (false when VPP has no
/// such interface).
pub(crate) fn feature_enabled(_vm: &MainRef, arc: &str, node: &str, sw_if_index: u32) -> bool {
    let (Ok(arc), Ok(node)) = (CString::new(arc), CString::new(node)) else {
        return false;
    };
    // SAFETY: main thread; both strings are NUL-terminated and outlive the call; the C
    // side checks the index.
    unsafe { capo_vnet_feature_enabled(arc.as_ptr(), node.as_ptr(), sw_if_index) == 1 }
}

/// Tries VPP's flow layer on the interface's hardware (a canary MARK flow, added,
/// enabled, disabled and deleted again): the driver's name, and 0 or VPP's flow
/// error code.
pub(crate) fn flow_probe(_vm: &MainRef, sw_if_index: u32, mark: u32) -> (String, i32) {
    let mut buf = [0u8; NAME_CAP];
    let mut len: u32 = 0;
    // SAFETY: main thread (flows are added there, under the CLI's barrier); `buf` is
    // valid for `NAME_CAP` bytes and `len` is a valid out-pointer; the C side checks
    // the index and writes at most `NAME_CAP` bytes.
    let rv = unsafe {
        capo_vnet_flow_probe(
            sw_if_index,
            mark,
            buf.as_mut_ptr(),
            NAME_CAP as u32,
            &mut len,
        )
    };
    let driver = buf.get(..len as usize).unwrap_or_default();
    (String::from_utf8_lossy(driver).into_owned(), rv)
}

/// The hardware interfaces under `policed`, each with its first policed interface's
/// name (from `known`, [`list`]'s answer) and its driver (interfaces VPP no longer
/// has are left out).
pub(crate) fn share_targets(
    _vm: &MainRef,
    known: &[VppInterface],
    policed: &[SwIfIndex],
) -> Vec<Target> {
    let names: std::collections::HashMap<u32, &str> = known
        .iter()
        .map(|i| (i.sw_if_index.0, i.name.as_str()))
        .collect();
    let mut out = Vec::new();
    for sw in policed {
        let mut buf = [0u8; NAME_CAP];
        let (mut hw, mut len) = (0u32, 0u32);
        // SAFETY: main thread; `buf` is valid for `NAME_CAP` bytes, `hw` and `len` are
        // valid out-pointers; the C side checks the index and writes at most that many.
        let rv =
            unsafe { capo_vnet_hw_of(sw.0, &mut hw, buf.as_mut_ptr(), NAME_CAP as u32, &mut len) };
        if rv != 0 {
            continue;
        }
        let driver = buf.get(..len as usize).unwrap_or_default();
        out.push(Target {
            hw_if_index: hw,
            sw_if_index: sw.0,
            name: names.get(&sw.0).copied().unwrap_or_default().to_string(),
            driver: String::from_utf8_lossy(driver).into_owned(),
        });
    }
    out
}

/// VPP's flow layer, on the main thread with the worker barrier held (the
/// `BarrierHeldMainRef` it is made from proves both).
pub(crate) struct VnetFlows<'a> {
    _barrier: &'a vpp_plugin::vlib::BarrierHeldMainRef,
}

impl<'a> VnetFlows<'a> {
    /// The flow layer, while `vm` holds the barrier.
    pub(crate) fn new(vm: &'a vpp_plugin::vlib::BarrierHeldMainRef) -> Self {
        VnetFlows { _barrier: vm }
    }
}

impl FlowLayer for VnetFlows<'_> {
    fn add(&mut self, rule: &FlowLayerRule) -> Result<u32, i32> {
        let c = CapoFlowRule::of(rule);
        let mut index = 0u32;
        // SAFETY: main thread under the barrier; `c` is a valid `capo_flow_rule_t` (same
        // layout, `repr(C)`) that outlives the call; `index` is a valid out-pointer.
        let rv = unsafe { capo_vnet_flow_add(&c, &mut index) };
        if rv == 0 {
            Ok(index)
        } else {
            Err(rv)
        }
    }

    fn enable(&mut self, flow: u32, hw_if_index: u32) -> Result<(), i32> {
        // SAFETY: main thread under the barrier; VPP checks both indices.
        match unsafe { capo_vnet_flow_enable(flow, hw_if_index) } {
            0 => Ok(()),
            rv => Err(rv),
        }
    }

    fn disable(&mut self, flow: u32, hw_if_index: u32) {
        // SAFETY: main thread under the barrier; VPP checks both indices.
        unsafe { capo_vnet_flow_disable(flow, hw_if_index) }
    }

    fn delete(&mut self, flow: u32) {
        // SAFETY: main thread under the barrier; VPP checks the index.
        unsafe { capo_vnet_flow_del(flow) }
    }
}

/// Why the flow emulation could not be turned on or off.
pub(crate) fn flow_emulation(_vm: &MainRef, sw_if_index: u32, on: bool) -> Result<(), String> {
    // SAFETY: main thread (CLI handlers hold the barrier); the C side checks the index.
    match unsafe { capo_vnet_flow_emulation(sw_if_index, i32::from(on)) } {
        0 => Ok(()),
        -1 => Err("no such interface".into()),
        -2 => Err("its driver has flow support of its own: nothing to emulate".into()),
        -3 => Err("interfaces of another driver are emulated already".into()),
        -4 => Err("flows are still enabled on it: remove the NIC share first".into()),
        rv => Err(format!("error {rv}")),
    }
}

/// The flow emulation's counts on an interface: flows enabled, packets dropped and
/// marked (`None`: not emulated).
pub(crate) fn flow_emulation_stats(_vm: &MainRef, sw_if_index: u32) -> Option<(u32, u64, u64)> {
    let (mut flows, mut dropped, mut marked) = (0u32, 0u64, 0u64);
    // SAFETY: main thread; the out-pointers are valid; the C side reads its own table.
    let emulated = unsafe {
        capo_vnet_flow_emulation_stats(sw_if_index, &mut flows, &mut dropped, &mut marked)
    };
    (emulated == 1).then_some((flows, dropped, marked))
}

/// Who hears of interfaces VPP adds or deletes.
static ON_CHANGE: OnceLock<&'static RebindSignal> = OnceLock::new();

/// Sends VPP's interface add/del callbacks to `signal` from now on.
pub(crate) fn notify_changes_to(signal: &'static RebindSignal) {
    let _ = ON_CHANGE.set(signal);
}

/// VPP's callback (registered by `csrc/capo_vnet.c`), on the main thread.
#[no_mangle]
extern "C" fn capo_on_sw_interface_add_del(_sw_if_index: u32, _is_add: u32) {
    if let Some(signal) = ON_CHANGE.get() {
        signal.notify();
    }
}
