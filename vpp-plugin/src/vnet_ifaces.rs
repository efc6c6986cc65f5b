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

extern "C" {
    fn capo_vnet_sw_if_limit() -> u32;
    fn capo_vnet_sw_if_name(sw_if_index: u32, buf: *mut u8, cap: u32) -> i32;
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
}

/// VPP interface names are short; longer ones are cut here.
const NAME_CAP: usize = 256;

/// Every software interface VPP has.
pub(crate) fn list(_vm: &MainRef) -> Vec<VppInterface> {
    // SAFETY: main thread (the `MainRef`); reads the interface pool's length.
    let limit = unsafe { capo_vnet_sw_if_limit() };
    let mut out = Vec::new();
    let mut buf = [0u8; NAME_CAP];
    for i in 0..limit {
        // SAFETY: main thread; `buf` is valid for `NAME_CAP` bytes, the C side writes
        // at most that many and checks the index against the pool's free list.
        let n = unsafe { capo_vnet_sw_if_name(i, buf.as_mut_ptr(), NAME_CAP as u32) };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        let name = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        out.push(VppInterface {
            sw_if_index: SwIfIndex(i),
            name,
        });
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
