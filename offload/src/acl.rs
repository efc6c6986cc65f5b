//! A safe wrapper over DPDK's `rte_acl` (feature `dpdk`), for the software-classifier
//! benchmarks (`bench/`, engine "rte_acl") and comparisons.
//!
//! # API
//!
//! ```ignore
//! use capo_offload::acl::{AclBuilder, AclRule, Ipv4Key, ipv4_5tuple_rule, IPV4_5TUPLE};
//! use capo_offload::dpdk::eal::Eal;
//!
//! let eal = Eal::init(&["bench", "--no-huge", "--no-pci", "--in-memory", "-l", "0"])?;
//! // A context for N = 5 fields (proto, src, dst, sport, dport), room for 10,000 rules.
//! let mut b = AclBuilder::<5>::new(eal, "w-k8s", IPV4_5TUPLE, 10_000)?;
//! // First match = highest priority: give rule i priority (n - i). userdata must be
//! // non-zero (0 means "no match" in results).
//! b.add(&[ipv4_5tuple_rule(/*priority*/ 10, /*userdata*/ 1, Some(6),
//!         ([10, 0, 0, 0], 8), ([0, 0, 0, 0], 0), (0, 65535), (80, 80))])?;
//! let acl = b.build(1)?;                       // rte_acl_build, 1 category
//! let keys = [Ipv4Key::new(6, [10, 1, 2, 3], [192, 168, 0, 1], 40000, 80)];
//! let inputs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
//! let mut results = [0u32; 1];                 // one per input and category
//! acl.classify(&inputs, &mut results, 1)?;     // rte_acl_classify
//! assert_eq!(results[0], 1);
//! ```
//!
//! - [`AclBuilder::new`] wraps `rte_acl_create` (names are made unique: DPDK returns an
//!   existing context for a repeated name); [`AclBuilder::add`] wraps
//!   `rte_acl_add_rules`; [`AclBuilder::build`] wraps `rte_acl_build` and yields an
//!   immutable [`AclContext`] (rte_acl has no incremental update: a new rule set is a
//!   new context); [`AclContext::classify`] wraps `rte_acl_classify`. Contexts are freed
//!   with `rte_acl_free` on drop.
//! - Rules are given in host byte order; classify inputs are in network byte order
//!   ([`Ipv4Key`] lays out the classic 5-tuple: proto at 0, addresses at 4 and 8, ports
//!   at 12 and 14).
//! - Field types: `Mask` (value + prefix length), `Range` (low..=high, so port ranges
//!   are native), `Bitmask` (value + mask).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dpdk::eal::Eal;

/// An rte_acl failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// A call failed.
    #[error("{function} failed: errno {errno} ({message})")]
    Call {
        /// The C function.
        function: &'static str,
        /// errno (positive).
        errno: i32,
        /// `rte_strerror`.
        message: String,
    },
    /// Bad arguments (field count, buffer sizes, categories).
    #[error("invalid rte_acl arguments: {0}")]
    Invalid(&'static str),
}

fn call_err(function: &'static str, rc: i32) -> AclError {
    let errno = if rc < 0 { -rc } else { crate::dpdk::errno() };
    AclError::Call {
        function,
        errno,
        message: crate::dpdk::strerror(errno),
    }
}

/// How a field matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// `RTE_ACL_FIELD_TYPE_MASK`: value and prefix length.
    Mask,
    /// `RTE_ACL_FIELD_TYPE_RANGE`: low and high, inclusive.
    Range,
    /// `RTE_ACL_FIELD_TYPE_BITMASK`: value and bit mask.
    Bitmask,
}

/// `struct rte_acl_field_def`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDef {
    /// Type.
    pub kind: FieldType,
    /// Size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Index of the field in a rule.
    pub field_index: u8,
    /// Input group (4-byte groups after the first byte).
    pub input_index: u8,
    /// Offset in the classified data.
    pub offset: u32,
}

/// The IPv4 5-tuple layout of [`Ipv4Key`].
pub const IPV4_5TUPLE: [FieldDef; 5] = [
    FieldDef {
        kind: FieldType::Bitmask,
        size: 1,
        field_index: 0,
        input_index: 0,
        offset: 0,
    },
    FieldDef {
        kind: FieldType::Mask,
        size: 4,
        field_index: 1,
        input_index: 1,
        offset: 4,
    },
    FieldDef {
        kind: FieldType::Mask,
        size: 4,
        field_index: 2,
        input_index: 2,
        offset: 8,
    },
    FieldDef {
        kind: FieldType::Range,
        size: 2,
        field_index: 3,
        input_index: 3,
        offset: 12,
    },
    FieldDef {
        kind: FieldType::Range,
        size: 2,
        field_index: 4,
        input_index: 3,
        offset: 14,
    },
];

/// One field of a rule: `value` and `mask_range` (prefix length, high end, or mask),
/// host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AclField {
    /// Value (or low end).
    pub value: u64,
    /// Prefix length, high end or bit mask.
    pub mask_range: u64,
}

/// A rule over `N` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclRule<const N: usize> {
    /// Higher wins; give every rule a distinct priority.
    pub priority: i32,
    /// Returned by classify on a match; must not be 0.
    pub userdata: u32,
    /// Categories the rule belongs to (bit per category).
    pub category_mask: u32,
    /// Fields, in `field_index` order.
    pub fields: [AclField; N],
}

/// An IPv4 5-tuple rule: protocol (`None`: any), source and destination prefixes,
/// source and destination port ranges; category 0.
#[allow(clippy::too_many_arguments)]
pub fn ipv4_5tuple_rule(
    priority: i32,
    userdata: u32,
    proto: Option<u8>,
    src: ([u8; 4], u8),
    dst: ([u8; 4], u8),
    sport: (u16, u16),
    dport: (u16, u16),
) -> AclRule<5> {
    AclRule {
        priority,
        userdata,
        category_mask: 1,
        fields: [
            AclField {
                value: u64::from(proto.unwrap_or(0)),
                mask_range: if proto.is_some() { 0xff } else { 0 },
            },
            AclField {
                value: u64::from(u32::from_be_bytes(src.0)),
                mask_range: u64::from(src.1),
            },
            AclField {
                value: u64::from(u32::from_be_bytes(dst.0)),
                mask_range: u64::from(dst.1),
            },
            AclField {
                value: u64::from(sport.0),
                mask_range: u64::from(sport.1),
            },
            AclField {
                value: u64::from(dport.0),
                mask_range: u64::from(dport.1),
            },
        ],
    }
}

/// Classify input for [`IPV4_5TUPLE`], network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Ipv4Key {
    bytes: [u8; 16],
}

impl Ipv4Key {
    /// A key.
    pub fn new(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Self {
        let mut bytes = [0u8; 16];
        bytes[0] = proto;
        bytes[4..8].copy_from_slice(&src);
        bytes[8..12].copy_from_slice(&dst);
        bytes[12..14].copy_from_slice(&sport.to_be_bytes());
        bytes[14..16].copy_from_slice(&dport.to_be_bytes());
        Ipv4Key { bytes }
    }

    /// The bytes classify reads.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[repr(C)]
struct RawRule<const N: usize> {
    data: dpdk_sys::rte_acl_rule_data,
    field: [dpdk_sys::rte_acl_field; N],
}

fn set_union(u: &mut dpdk_sys::rte_acl_field_types, size: u8, v: u64) {
    match size {
        1 => u.u8_ = v as u8,
        2 => u.u16_ = v as u16,
        4 => u.u32_ = v as u32,
        _ => u.u64_ = v,
    }
}

static NEXT_NAME: AtomicU64 = AtomicU64::new(0);

/// A context being filled (`rte_acl_create` … `rte_acl_add_rules`).
#[derive(Debug)]
pub struct AclBuilder<const N: usize> {
    ctx: NonNull<dpdk_sys::rte_acl_ctx>,
    defs: [FieldDef; N],
    max_rules: u32,
    added: u32,
}

impl<const N: usize> AclBuilder<N> {
    /// `rte_acl_create` for rules of `N` fields laid out by `defs`.
    ///
    /// # Errors
    ///
    /// [`AclError`].
    pub fn new(
        _eal: &Eal,
        name: &str,
        defs: [FieldDef; N],
        max_rules: u32,
    ) -> Result<Self, AclError> {
        if N == 0 || N > dpdk_sys::RTE_ACL_MAX_FIELDS as usize {
            return Err(AclError::Invalid("field count"));
        }
        let unique = format!("{name}-{}", NEXT_NAME.fetch_add(1, Ordering::Relaxed));
        let cname = CString::new(unique).map_err(|_| AclError::Invalid("name holds a NUL byte"))?;
        let param = dpdk_sys::rte_acl_param {
            name: cname.as_ptr(),
            socket_id: dpdk_sys::consts::SOCKET_ID_ANY,
            rule_size: std::mem::size_of::<RawRule<N>>() as u32,
            max_rule_num: max_rules,
        };
        // SAFETY: `param` is valid for the call; the EAL is initialised (`_eal`).
        let ctx = unsafe { dpdk_sys::rte_acl_create(&param) };
        let ctx = NonNull::new(ctx).ok_or_else(|| call_err("rte_acl_create", 0))?;
        Ok(AclBuilder {
            ctx,
            defs,
            max_rules,
            added: 0,
        })
    }

    /// `rte_acl_add_rules`.
    ///
    /// # Errors
    ///
    /// [`AclError`] (too many rules, userdata 0, DPDK's refusal).
    pub fn add(&mut self, rules: &[AclRule<N>]) -> Result<(), AclError> {
        let n = u32::try_from(rules.len()).map_err(|_| AclError::Invalid("too many rules"))?;
        if self.added.saturating_add(n) > self.max_rules {
            return Err(AclError::Invalid("more rules than the context holds"));
        }
        if rules.iter().any(|r| r.userdata == 0) {
            return Err(AclError::Invalid("userdata 0 is reserved for no match"));
        }
        let raw: Vec<RawRule<N>> = rules
            .iter()
            .map(|r| {
                let mut field = [dpdk_sys::rte_acl_field::default(); N];
                for (k, f) in field.iter_mut().enumerate() {
                    let size = self.defs.get(k).map_or(8, |d| d.size);
                    set_union(&mut f.value, size, r.fields[k].value);
                    set_union(&mut f.mask_range, size, r.fields[k].mask_range);
                }
                RawRule {
                    data: dpdk_sys::rte_acl_rule_data {
                        category_mask: r.category_mask,
                        priority: r.priority,
                        userdata: r.userdata,
                    },
                    field,
                }
            })
            .collect();
        // SAFETY: `raw` holds `n` rules laid out as RTE_ACL_RULE_DEF(…, N), the size the
        // context was created with; DPDK copies them.
        let rc = unsafe {
            dpdk_sys::rte_acl_add_rules(
                self.ctx.as_ptr(),
                raw.as_ptr().cast::<dpdk_sys::rte_acl_rule>(),
                n,
            )
        };
        if rc != 0 {
            return Err(call_err("rte_acl_add_rules", rc));
        }
        self.added += n;
        Ok(())
    }

    /// `rte_acl_build` with `categories` (1..=16).
    ///
    /// # Errors
    ///
    /// [`AclError`].
    pub fn build(self, categories: u32) -> Result<AclContext<N>, AclError> {
        if categories == 0 || categories > dpdk_sys::RTE_ACL_MAX_CATEGORIES {
            return Err(AclError::Invalid("categories"));
        }
        let mut cfg = dpdk_sys::rte_acl_config {
            num_categories: categories,
            num_fields: N as u32,
            ..Default::default()
        };
        for (k, d) in self.defs.iter().enumerate() {
            cfg.defs[k] = dpdk_sys::rte_acl_field_def {
                type_: match d.kind {
                    FieldType::Mask => dpdk_sys::consts::RTE_ACL_FIELD_TYPE_MASK,
                    FieldType::Range => dpdk_sys::consts::RTE_ACL_FIELD_TYPE_RANGE,
                    FieldType::Bitmask => dpdk_sys::consts::RTE_ACL_FIELD_TYPE_BITMASK,
                },
                size: d.size,
                field_index: d.field_index,
                input_index: d.input_index,
                offset: d.offset,
            };
        }
        // SAFETY: the context is live and not being classified; `cfg` is valid.
        let rc = unsafe { dpdk_sys::rte_acl_build(self.ctx.as_ptr(), &cfg) };
        if rc != 0 {
            return Err(call_err("rte_acl_build", rc));
        }
        let ctx = self.ctx;
        let defs = self.defs;
        std::mem::forget(self);
        Ok(AclContext {
            ctx,
            categories,
            min_input: min_input_len(&defs),
            _fields: PhantomData,
        })
    }
}

impl<const N: usize> Drop for AclBuilder<N> {
    fn drop(&mut self) {
        // SAFETY: the context was created by rte_acl_create and is freed once.
        unsafe { dpdk_sys::rte_acl_free(self.ctx.as_ptr()) };
    }
}

/// A built, immutable context.
#[derive(Debug)]
pub struct AclContext<const N: usize> {
    ctx: NonNull<dpdk_sys::rte_acl_ctx>,
    categories: u32,
    min_input: usize,
    _fields: PhantomData<[FieldDef; N]>,
}

// SAFETY: a built context is only read by rte_acl_classify, which DPDK allows from
// several threads at once; it is freed only on drop (exclusive access).
unsafe impl<const N: usize> Send for AclContext<N> {}
// SAFETY: see above: classify takes `&self` and does not mutate the context.
unsafe impl<const N: usize> Sync for AclContext<N> {}

/// Inputs per `rte_acl_classify` call (DPDK's own examples classify in bursts of 64).
pub const CLASSIFY_BURST: usize = 64;

impl<const N: usize> AclContext<N> {
    /// `rte_acl_classify`: for each input, `categories` results (userdata of the best
    /// rule per category, 0 for none). `categories` is 1 or a multiple of 4, at most
    /// what the context was built with.
    ///
    /// # Errors
    ///
    /// [`AclError`] when the buffers do not fit or DPDK refuses.
    pub fn classify(
        &self,
        inputs: &[&[u8]],
        results: &mut [u32],
        categories: u32,
    ) -> Result<(), AclError> {
        if categories == 0
            || categories > self.categories
            || (categories != 1 && categories % 4 != 0)
        {
            return Err(AclError::Invalid("categories"));
        }
        if results.len() < inputs.len() * categories as usize {
            return Err(AclError::Invalid("results buffer too small"));
        }
        if inputs.iter().any(|i| i.len() < self.min_input) {
            return Err(AclError::Invalid("input shorter than the field layout"));
        }
        // Bursts of up to CLASSIFY_BURST inputs through a pointer array on the
        // stack: no allocation per call.
        let mut ptrs = [std::ptr::null::<u8>(); CLASSIFY_BURST];
        let per_input = categories as usize;
        for (chunk, out) in inputs
            .chunks(CLASSIFY_BURST)
            .zip(results.chunks_mut(CLASSIFY_BURST * per_input))
        {
            for (p, i) in ptrs.iter_mut().zip(chunk) {
                *p = i.as_ptr();
            }
            // SAFETY: the first `chunk.len()` entries of `ptrs` point to live buffers
            // that cover every field offset (the caller's layout, checked above
            // against the field definitions); `out` has room for chunk.len() *
            // categories values (results was checked to hold inputs * categories,
            // and chunks_mut splits it in step with `inputs`).
            let rc = unsafe {
                dpdk_sys::rte_acl_classify(
                    self.ctx.as_ptr(),
                    ptrs.as_mut_ptr(),
                    out.as_mut_ptr(),
                    chunk.len() as u32,
                    categories,
                )
            };
            if rc != 0 {
                return Err(call_err("rte_acl_classify", rc));
            }
        }
        Ok(())
    }
}

/// Bytes classify reads from each input: the first field's byte, then whole 4-byte
/// groups (8 for 8-byte fields) from the start of each input group.
fn min_input_len(defs: &[FieldDef]) -> usize {
    let mut end = 0usize;
    for d in defs {
        let group_start = defs
            .iter()
            .filter(|o| o.input_index == d.input_index)
            .map(|o| o.offset as usize)
            .min()
            .unwrap_or(d.offset as usize);
        let width = if d.input_index == 0 && d.size == 1 {
            1
        } else {
            usize::from(d.size).max(4)
        };
        end = end
            .max(group_start + width)
            .max(d.offset as usize + usize::from(d.size));
    }
    end
}

impl<const N: usize> Drop for AclContext<N> {
    fn drop(&mut self) {
        // SAFETY: the context was created by rte_acl_create and is freed once.
        unsafe { dpdk_sys::rte_acl_free(self.ctx.as_ptr()) };
    }
}
