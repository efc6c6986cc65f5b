//! rte_flow on a DPDK port: lowering (the one place the model becomes C arrays), the
//! [`FlowBackend`] implementation, and the capability probe.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::ptr::{addr_of_mut, null};

use dpdk_sys::{rte_flow_action_type as act, rte_flow_item_type as it};

use super::ethdev::Port;
use crate::backend::{FlowBackend, FlowCount, FlowHandle};
use crate::caps::NicCaps;
use crate::error::{ErrorTarget, FlowError, FlowErrorKind};
use crate::flow::{Action, Attr, FlowDirection, FlowRule, Item, Spec, MAX_ACTIONS, MAX_ITEMS};

/// Storage the C arrays point into: one slot per item type (a valid pattern has at most
/// one item of each layer) and per action type. Boxed, so its address is stable.
#[derive(Default)]
struct Storage {
    eth: [dpdk_sys::rte_flow_item_eth; 3],
    ipv4: [dpdk_sys::rte_flow_item_ipv4; 3],
    ipv6: [dpdk_sys::rte_flow_item_ipv6; 3],
    tcp: [dpdk_sys::rte_flow_item_tcp; 3],
    udp: [dpdk_sys::rte_flow_item_udp; 3],
    sctp: [dpdk_sys::rte_flow_item_sctp; 3],
    icmp: [dpdk_sys::rte_flow_item_icmp; 3],
    icmp6: [dpdk_sys::rte_flow_item_icmp6; 3],
    mark: dpdk_sys::rte_flow_action_mark,
    count: dpdk_sys::rte_flow_action_count,
    queue: dpdk_sys::rte_flow_action_queue,
    jump: dpdk_sys::rte_flow_action_jump,
    rss: dpdk_sys::rte_flow_action_rss,
    rss_queues: [u16; crate::flow::MAX_RSS_QUEUES],
}

/// A rule lowered to DPDK's structures. The arrays point into `storage`.
pub(crate) struct Lowered {
    attr: dpdk_sys::rte_flow_attr,
    items: [dpdk_sys::rte_flow_item; MAX_ITEMS + 1],
    actions: [dpdk_sys::rte_flow_action; MAX_ACTIONS + 1],
    _storage: Box<Storage>,
}

fn ptrs<T>(
    slot: &[T; 3],
    last: bool,
) -> (
    *const std::ffi::c_void,
    *const std::ffi::c_void,
    *const std::ffi::c_void,
) {
    (
        (&slot[0] as *const T).cast(),
        if last {
            (&slot[2] as *const T).cast()
        } else {
            null()
        },
        (&slot[1] as *const T).cast(),
    )
}

fn fill<F: Copy, C: Default>(
    s: &Option<Spec<F>>,
    slot: &mut [C; 3],
    f: impl Fn(&F, &mut C),
) -> bool {
    match s {
        None => false,
        Some(s) => {
            f(&s.spec, &mut slot[0]);
            f(&s.mask, &mut slot[1]);
            if let Some(l) = &s.last {
                f(l, &mut slot[2]);
            }
            true
        }
    }
}

/// Lowers a rule: `END`-terminated item and action arrays, network byte order, explicit
/// masks. `rss_queues` fills an RSS action that names no queue.
pub(crate) fn lower(rule: &FlowRule, rss_queues: u16) -> Lowered {
    let mut st = Box::<Storage>::default();
    let mut items: [dpdk_sys::rte_flow_item; MAX_ITEMS + 1] = Default::default();
    let mut actions: [dpdk_sys::rte_flow_action; MAX_ACTIONS + 1] = Default::default();
    let Attr {
        group,
        priority,
        direction,
    } = *rule.attr();
    let mut attr = dpdk_sys::rte_flow_attr {
        group: group.0,
        priority: priority.0,
        ..Default::default()
    };
    match direction {
        FlowDirection::Ingress => attr.set_ingress(1),
        FlowDirection::Egress => attr.set_egress(1),
        FlowDirection::Transfer => attr.set_transfer(1),
    }
    let n_items = rule.pattern().len();
    for (i, item) in rule.pattern().iter().enumerate() {
        let (ty, spec) = match item {
            Item::Eth(s) => {
                let set = fill(s, &mut st.eth, |f, c| {
                    c.__bindgen_anon_1.hdr.ether_type = f.ether_type.to_be();
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_ETH,
                    set.then(|| ptrs(&st.eth, s.is_some_and(|s| s.last.is_some()))),
                )
            }
            Item::Ipv4(s) => {
                let set = fill(s, &mut st.ipv4, |f, c| {
                    c.hdr.src_addr = u32::from_ne_bytes(f.src);
                    c.hdr.dst_addr = u32::from_ne_bytes(f.dst);
                    c.hdr.next_proto_id = f.proto;
                    c.hdr.fragment_offset = f.fragment_offset.to_be();
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_IPV4,
                    set.then(|| ptrs(&st.ipv4, s.is_some_and(|s| s.last.is_some()))),
                )
            }
            Item::Ipv6(s) => {
                let set = fill(s, &mut st.ipv6, |f, c| {
                    // SAFETY: the address fields are 16 bytes in every DPDK version
                    // (`uint8_t[16]` in 22.11, `struct rte_ipv6_addr` later).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            f.src.as_ptr(),
                            addr_of_mut!(c.hdr.src_addr).cast::<u8>(),
                            16,
                        );
                        std::ptr::copy_nonoverlapping(
                            f.dst.as_ptr(),
                            addr_of_mut!(c.hdr.dst_addr).cast::<u8>(),
                            16,
                        );
                    }
                    c.hdr.proto = f.proto;
                    c.set_has_frag_ext(u32::from(f.has_frag_ext));
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_IPV6,
                    set.then(|| ptrs(&st.ipv6, s.is_some_and(|s| s.last.is_some()))),
                )
            }
            Item::Tcp(s) => {
                let set = fill(s, &mut st.tcp, |f, c| {
                    c.hdr.src_port = f.src_port.to_be();
                    c.hdr.dst_port = f.dst_port.to_be();
                    c.hdr.tcp_flags = f.flags;
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_TCP,
                    set.then(|| ptrs(&st.tcp, s.is_some_and(|s| s.last.is_some()))),
                )
            }
            Item::Udp(s) => {
                let set = fill(s, &mut st.udp, |f, c| {
                    c.hdr.src_port = f.src_port.to_be();
                    c.hdr.dst_port = f.dst_port.to_be();
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_UDP,
                    set.then(|| ptrs(&st.udp, s.is_some_and(|s| s.last.is_some()))),
                )
            }
            Item::Sctp(s) => {
                let set = fill(s, &mut st.sctp, |f, c| {
                    c.hdr.src_port = f.src_port.to_be();
                    c.hdr.dst_port = f.dst_port.to_be();
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_SCTP,
                    set.then(|| ptrs(&st.sctp, s.is_some_and(|s| s.last.is_some()))),
                )
            }
            Item::Icmp(s) => {
                let set = fill(s, &mut st.icmp, |f, c| {
                    c.hdr.icmp_type = f.icmp_type;
                    c.hdr.icmp_code = f.code;
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_ICMP,
                    set.then(|| ptrs(&st.icmp, s.is_some_and(|s| s.last.is_some()))),
                )
            }
            Item::Icmp6(s) => {
                let set = fill(s, &mut st.icmp6, |f, c| {
                    c.type_ = f.icmp_type;
                    c.code = f.code;
                });
                (
                    it::RTE_FLOW_ITEM_TYPE_ICMP6,
                    set.then(|| ptrs(&st.icmp6, s.is_some_and(|s| s.last.is_some()))),
                )
            }
        };
        items[i].type_ = ty;
        if let Some((spec, last, mask)) = spec {
            items[i].spec = spec;
            items[i].last = last;
            items[i].mask = mask;
        }
    }
    items[n_items].type_ = it::RTE_FLOW_ITEM_TYPE_END;
    let n_actions = rule.actions().len();
    for (i, a) in rule.actions().iter().enumerate() {
        let (ty, conf): (u32, *const std::ffi::c_void) = match a {
            Action::Drop => (act::RTE_FLOW_ACTION_TYPE_DROP, null()),
            Action::Mark(id) => {
                st.mark.id = *id;
                (
                    act::RTE_FLOW_ACTION_TYPE_MARK,
                    (&st.mark as *const dpdk_sys::rte_flow_action_mark).cast(),
                )
            }
            Action::Count(id) => {
                st.count.id = *id;
                (
                    act::RTE_FLOW_ACTION_TYPE_COUNT,
                    (&st.count as *const dpdk_sys::rte_flow_action_count).cast(),
                )
            }
            Action::Queue(q) => {
                st.queue.index = *q;
                (
                    act::RTE_FLOW_ACTION_TYPE_QUEUE,
                    (&st.queue as *const dpdk_sys::rte_flow_action_queue).cast(),
                )
            }
            Action::Jump(g) => {
                st.jump.group = g.0;
                (
                    act::RTE_FLOW_ACTION_TYPE_JUMP,
                    (&st.jump as *const dpdk_sys::rte_flow_action_jump).cast(),
                )
            }
            Action::Rss(rss) => {
                let n = if rss.queues.is_empty() {
                    for q in 0..rss_queues.min(st.rss_queues.len() as u16) {
                        st.rss_queues[usize::from(q)] = q;
                    }
                    rss_queues.min(st.rss_queues.len() as u16)
                } else {
                    for (k, q) in rss.queues.iter().enumerate() {
                        st.rss_queues[k] = *q;
                    }
                    rss.queues.len() as u16
                };
                st.rss.func = dpdk_sys::rte_eth_hash_function::RTE_ETH_HASH_FUNCTION_DEFAULT;
                st.rss.types = rss.types;
                st.rss.queue_num = u32::from(n);
                st.rss.queue = st.rss_queues.as_ptr();
                (
                    act::RTE_FLOW_ACTION_TYPE_RSS,
                    (&st.rss as *const dpdk_sys::rte_flow_action_rss).cast(),
                )
            }
        };
        actions[i].type_ = ty;
        actions[i].conf = conf;
    }
    actions[n_actions].type_ = act::RTE_FLOW_ACTION_TYPE_END;
    Lowered {
        attr,
        items,
        actions,
        _storage: st,
    }
}

/// Maps an rte_flow error (return code or `rte_errno`, and `rte_flow_error`).
fn flow_error(errno: i32, e: &dpdk_sys::rte_flow_error) -> FlowError {
    use dpdk_sys::rte_flow_error_type as t;
    let target = match e.type_ {
        t::RTE_FLOW_ERROR_TYPE_HANDLE => ErrorTarget::Handle,
        t::RTE_FLOW_ERROR_TYPE_ATTR_GROUP => ErrorTarget::AttrGroup,
        t::RTE_FLOW_ERROR_TYPE_ATTR_PRIORITY => ErrorTarget::AttrPriority,
        t::RTE_FLOW_ERROR_TYPE_ATTR
        | t::RTE_FLOW_ERROR_TYPE_ATTR_INGRESS
        | t::RTE_FLOW_ERROR_TYPE_ATTR_EGRESS
        | t::RTE_FLOW_ERROR_TYPE_ATTR_TRANSFER => ErrorTarget::Attr,
        t::RTE_FLOW_ERROR_TYPE_ITEM_NUM
        | t::RTE_FLOW_ERROR_TYPE_ITEM_SPEC
        | t::RTE_FLOW_ERROR_TYPE_ITEM_LAST
        | t::RTE_FLOW_ERROR_TYPE_ITEM_MASK
        | t::RTE_FLOW_ERROR_TYPE_ITEM => ErrorTarget::Item(None),
        t::RTE_FLOW_ERROR_TYPE_ACTION_NUM
        | t::RTE_FLOW_ERROR_TYPE_ACTION_CONF
        | t::RTE_FLOW_ERROR_TYPE_ACTION => ErrorTarget::Action(None),
        t::RTE_FLOW_ERROR_TYPE_STATE => ErrorTarget::State,
        _ => ErrorTarget::Unspecified,
    };
    let message = if e.message.is_null() {
        ""
    } else {
        // SAFETY: rte_flow.h: `message` is a static string valid while the port is
        // configured; capo interns a copy rather than keep the pointer.
        let s = unsafe { CStr::from_ptr(e.message) }
            .to_string_lossy()
            .into_owned();
        intern(s)
    };
    FlowError {
        kind: FlowErrorKind::from_errno(errno),
        target,
        message,
    }
}

/// Error messages are a small, fixed set of PMD strings; keep one copy of each.
fn intern(s: String) -> &'static str {
    use std::sync::Mutex;
    static SEEN: Mutex<BTreeMap<String, &'static str>> = Mutex::new(BTreeMap::new());
    let Ok(mut seen) = SEEN.lock() else { return "" };
    if let Some(v) = seen.get(&s) {
        return v;
    }
    let leaked: &'static str = Box::leak(s.clone().into_boxed_str());
    seen.insert(s, leaked);
    leaked
}

/// The rte_flow backend of one port.
#[derive(Debug)]
pub struct DpdkFlow<'p> {
    port: &'p Port,
    caps: NicCaps,
    handles: BTreeMap<u64, (std::ptr::NonNull<dpdk_sys::rte_flow>, bool)>,
    next: u64,
}

/// What the capability probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The capabilities capo will plan with.
    pub caps: NicCaps,
    /// The first refusal met, if any.
    pub refusal: Option<FlowError>,
    /// Whether the template/async API was set up (`rte_flow_configure` succeeded).
    pub template_api: bool,
    /// What each capability's canary met.
    pub findings: Vec<crate::probe::Finding>,
}

impl<'p> DpdkFlow<'p> {
    /// Probes the port ([`crate::probe`]): the driver's profile (mlx5, ice, cnxk;
    /// any other PMD gets [`NicCaps::unknown`]), less every capability whose canary
    /// rule the port refuses. A port that refuses the DROP canary is not used.
    pub fn probe(port: &'p Port) -> (DpdkFlow<'p>, ProbeReport) {
        let driver = port.driver();
        let profile = if driver.contains("mlx5") {
            NicCaps::mlx5(1 << 16)
        } else if driver.contains("ice") {
            NicCaps::e810(14_000)
        } else if driver.contains("cnxk") {
            NicCaps::cnxk(4096)
        } else {
            NicCaps::unknown("unknown", 1024)
        };
        let mut me = DpdkFlow {
            port,
            caps: profile.clone(),
            handles: BTreeMap::new(),
            next: 1,
        };
        let probed = crate::probe::probe(&mut me, profile);
        let mut caps = probed.caps.clone();
        if !caps.flow_api {
            caps.name = "no-offload";
        }
        me.caps = caps.clone();
        (
            me,
            ProbeReport {
                caps,
                refusal: probed.first_refusal().cloned(),
                template_api: port.flow_template_ready(),
                findings: probed.findings,
            },
        )
    }

    /// Installed rules created through this backend.
    pub fn installed(&self) -> usize {
        self.handles.len()
    }
}

impl FlowBackend for DpdkFlow<'_> {
    fn caps(&self) -> &NicCaps {
        &self.caps
    }

    fn validate(&mut self, rule: &FlowRule) -> Result<(), FlowError> {
        let l = lower(rule, self.port.rx_queues());
        // SAFETY: a zeroed rte_flow_error is a valid out-buffer.
        let mut err: dpdk_sys::rte_flow_error = unsafe { std::mem::zeroed() };
        // SAFETY: `l`'s arrays are END-terminated and point into its live storage.
        let rc = unsafe {
            dpdk_sys::rte_flow_validate(
                self.port.id(),
                &l.attr,
                l.items.as_ptr(),
                l.actions.as_ptr(),
                &mut err,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(flow_error(-rc, &err))
        }
    }

    fn create(&mut self, rule: &FlowRule) -> Result<FlowHandle, FlowError> {
        let l = lower(rule, self.port.rx_queues());
        // SAFETY: a zeroed rte_flow_error is a valid out-buffer.
        let mut err: dpdk_sys::rte_flow_error = unsafe { std::mem::zeroed() };
        // SAFETY: as for validate; DPDK copies what it needs before returning.
        let f = unsafe {
            dpdk_sys::rte_flow_create(
                self.port.id(),
                &l.attr,
                l.items.as_ptr(),
                l.actions.as_ptr(),
                &mut err,
            )
        };
        match std::ptr::NonNull::new(f) {
            Some(f) => {
                let id = self.next;
                self.next += 1;
                let counted = rule.counts();
                self.handles.insert(id, (f, counted));
                Ok(FlowHandle(id))
            }
            None => Err(flow_error(super::errno(), &err)),
        }
    }

    fn destroy(&mut self, handle: FlowHandle) -> Result<(), FlowError> {
        let Some((f, _)) = self.handles.remove(&handle.0) else {
            return Err(FlowError {
                kind: FlowErrorKind::Invalid,
                target: ErrorTarget::Handle,
                message: "unknown flow handle",
            });
        };
        // SAFETY: a zeroed rte_flow_error is a valid out-buffer.
        let mut err: dpdk_sys::rte_flow_error = unsafe { std::mem::zeroed() };
        // SAFETY: `f` was created on this port and is destroyed once.
        let rc = unsafe { dpdk_sys::rte_flow_destroy(self.port.id(), f.as_ptr(), &mut err) };
        if rc == 0 {
            Ok(())
        } else {
            Err(flow_error(-rc, &err))
        }
    }

    fn query_count(&mut self, handle: FlowHandle, reset: bool) -> Result<FlowCount, FlowError> {
        let Some((f, counted)) = self.handles.get(&handle.0).copied() else {
            return Err(FlowError {
                kind: FlowErrorKind::Invalid,
                target: ErrorTarget::Handle,
                message: "unknown flow handle",
            });
        };
        if !counted {
            return Err(FlowError::new(
                FlowErrorKind::NotSup,
                "rule has no COUNT action",
            ));
        }
        let count_action = [
            dpdk_sys::rte_flow_action {
                type_: act::RTE_FLOW_ACTION_TYPE_COUNT,
                conf: null(),
            },
            dpdk_sys::rte_flow_action {
                type_: act::RTE_FLOW_ACTION_TYPE_END,
                conf: null(),
            },
        ];
        let mut q = dpdk_sys::rte_flow_query_count::default();
        q.set_reset(u32::from(reset));
        // SAFETY: a zeroed rte_flow_error is a valid out-buffer.
        let mut err: dpdk_sys::rte_flow_error = unsafe { std::mem::zeroed() };
        // SAFETY: `f` lives on this port; `q` is the COUNT query's in/out structure.
        let rc = unsafe {
            dpdk_sys::rte_flow_query(
                self.port.id(),
                f.as_ptr(),
                count_action.as_ptr(),
                (&mut q as *mut dpdk_sys::rte_flow_query_count).cast(),
                &mut err,
            )
        };
        if rc != 0 {
            return Err(flow_error(-rc, &err));
        }
        Ok(FlowCount {
            hits: if q.hits_set() != 0 { q.hits } else { 0 },
            bytes: if q.bytes_set() != 0 { q.bytes } else { 0 },
        })
    }
}

impl Drop for DpdkFlow<'_> {
    fn drop(&mut self) {
        // Only this backend's own rules, newest first; never rte_flow_flush.
        let ids: Vec<u64> = self.handles.keys().rev().copied().collect();
        for id in ids {
            let _ = self.destroy(FlowHandle(id));
        }
    }
}
