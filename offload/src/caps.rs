//! What a NIC can do, as data (offload.md §2). The planner and the simulated NIC read
//! the same [`NicCaps`]; the DPDK backend fills one from its probe.
//!
//! The three profiles are derived from the DPDK 22.11 PMD sources (tag `v22.11`;
//! the functions cited are unchanged at v22.11.11): each field's value cites the
//! code that decides it, as `path:line` under `drivers/`. `tests/profiles.rs` holds
//! one accept/refuse case per cited rule, run against the simulated NIC.

/// How generations reach the NIC (offload.md §6.1 item 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
#[cfg_attr(feature = "std", serde(rename_all = "kebab-case"))]
pub enum OffloadMode {
    /// Versioned groups behind one dispatcher rule (needs groups and JUMP).
    VersionedGroups,
    /// Only DROP rules with no conflicting earlier rule, updated monotonically.
    DropOnly,
    /// One flat table without priorities (VPP's flow layer): drops and MARKed
    /// decisions, each with no overlapping earlier rule that decides otherwise, so
    /// that no two rules' order matters; the marks name the generation, and a new
    /// generation's rules go in only after the old ones are out.
    FlatMarks,
    /// No offload: software decides everything.
    SoftwareOnly,
}

/// A NIC's rte_flow capabilities and limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NicCaps {
    /// Profile or driver name.
    pub name: &'static str,
    /// rte_flow is implemented at all (`-ENOSYS` otherwise).
    pub flow_api: bool,
    /// Non-root groups reachable through JUMP exist.
    pub groups: bool,
    /// The group attribute is accepted but ignored (cnxk): every rule is live at once.
    pub groups_ignored: bool,
    /// Highest priority number usable in non-root groups (or in the only table).
    pub max_priority: u32,
    /// Highest priority number usable in the root group.
    pub root_max_priority: u32,
    /// Rule entries available to capo.
    pub capacity: u32,
    /// `last` ranges on TCP/UDP/SCTP ports.
    pub l4_ranges: bool,
    /// The IPv4 `fragment_offset` range form (spec 1, last 0x3fff, mask 0x3fff).
    pub ipv4_fragment_range: bool,
    /// Prefix (partial) masks on IP addresses; `false`: exact /32 and /128 only.
    pub ip_prefix_masks: bool,
    /// IPv6 patterns.
    pub ipv6: bool,
    /// TCP flags matching.
    pub tcp_flags: bool,
    /// Usable MARK bits (mlx5: 24, or 16 in 16-bit metadata mode).
    pub mark_bits: u8,
    /// COUNT action and queries.
    pub counters: bool,
    /// Rules that may carry COUNT at once (`u32::MAX`: no limit of the driver's own).
    pub counter_limit: u32,
    /// COUNT queries report bytes (`false`: packets only).
    pub counter_bytes: bool,
    /// SCTP items.
    pub sctp: bool,
    /// ICMP items (IPv4) with type and code.
    pub icmp: bool,
    /// ICMP6 items (IPv6) with type and code.
    pub icmp6: bool,
    /// Partial (prefix) masks on TCP/UDP/SCTP ports; `false`: 0 or 0xffff only.
    pub port_prefix_masks: bool,
    /// The IPv4 protocol field matched on its own (a protocol without an L4 item).
    pub ipv4_proto: bool,
    /// Without groups, MARKed decisions may still go down, in one table without
    /// priorities ([`OffloadMode::FlatMarks`]): the table takes two rules of the same
    /// pattern with different marks, and software holds every generation a mark names.
    pub flat_marks: bool,
}

impl NicCaps {
    /// NVIDIA mlx5 (ConnectX-6 Dx/7, BlueField) on DPDK 22.11, DV steering
    /// (`dv_flow_en=1`, the default):
    /// - groups and JUMP (`net/mlx5/mlx5_flow_dv.c:6726-6740`, `:5165-5208`);
    /// - priorities 0..21843 in non-root groups (`net/mlx5/mlx5_flow.h:370`); the
    ///   root group has 0..1 or 0..3 depending on the device's Verbs priorities
    ///   (`net/mlx5/mlx5_flow.c:1355-1356`, `:11262-11303`): 0..1 holds on all;
    /// - prefix masks on addresses and ports (`net/mlx5/mlx5_flow.c:2583-2664`,
    ///   `:2846-2883`); no ranges but the fragment form "spec 1, last 0x3fff,
    ///   mask 0x3fff" (`net/mlx5/mlx5_flow_dv.c:2606-2677`);
    /// - TCP flags, any mask (`net/mlx5/mlx5_flow.c:2846-2883`);
    /// - no SCTP item ("item not supported", `net/mlx5/mlx5_flow_dv.c:7446-7449`);
    /// - ICMP and ICMP6 items (`net/mlx5/mlx5_flow.c:2316-2411`; the firmware needs
    ///   `FLEX_PARSER_PROFILE_ENABLE=2`, `doc/guides/nics/mlx5.rst:408-410`);
    /// - MARK below 0xfffff0 (`common/mlx5/mlx5_prm.h:248-257`);
    /// - COUNT with packets and bytes (`net/mlx5/mlx5_flow_dv.c:16735-16770`).
    pub fn mlx5(capacity: u32) -> Self {
        NicCaps {
            name: "mlx5",
            flow_api: true,
            groups: true,
            groups_ignored: false,
            max_priority: 21_843,
            root_max_priority: 1,
            capacity,
            l4_ranges: false,
            ipv4_fragment_range: true,
            ip_prefix_masks: true,
            ipv6: true,
            tcp_flags: true,
            mark_bits: 24,
            counters: true,
            counter_limit: u32::MAX,
            counter_bytes: true,
            sctp: false,
            icmp: true,
            icmp6: true,
            port_prefix_masks: true,
            ipv4_proto: true,
            flat_marks: false,
        }
    }

    /// Intel E810 (`ice`, PF, non-pipeline mode). Rules carrying MARK or COUNT
    /// reach only the FDIR engine, and FDIR takes priority 0 only
    /// (`net/ice/ice_fdir_filter.c:2470`); the switch engine (priority 1) takes
    /// neither (`net/ice/ice_switch_filter.c:1811-1849`) and refuses capo's EtherType
    /// mask with an L3 item (`:613-614`, `:43-61`). So:
    /// - no groups (`net/ice/ice_generic_flow.c:2052-2057`), priority 0 only;
    /// - exact /32 and /128 addresses (`net/ice/ice_fdir_filter.c:2045-2052`; a
    ///   partial IPv6 mask is silently dropped, `:2113-2118`, so never sent);
    /// - port masks 0 or 0xffff (`:2194-2200`, `:2241-2247`, `:2286-2292`), no
    ///   ranges (a port `last` is silently ignored, `:1850-1856`, so never sent);
    /// - no TCP flags ("Invalid TCP mask", `:2180-2192`);
    /// - no fragment range (`fragment_offset` is no input-set field, `:2068-2090`);
    /// - SCTP in FDIR (`:115`, `:121`); no ICMP or ICMP6 engine on a PF (`:109-138`);
    /// - IPv4 protocol alone: not determined from the source, refused here;
    /// - 256 counters per PF, packets only (`:244-265`, `:1596`);
    /// - MARK takes 32 bits (`:1729-1735`); 24 are used, as on mlx5.
    ///
    /// Not modelled: FDIR holds one input set per flow type at a time
    /// (`:668-703`), so rules of one flow type matching different fields conflict
    /// at create; a full table fails with EINVAL, not ENOMEM (`:1427-1434`).
    pub fn e810(capacity: u32) -> Self {
        NicCaps {
            name: "e810",
            flow_api: true,
            groups: false,
            groups_ignored: false,
            max_priority: 0,
            root_max_priority: 0,
            capacity,
            l4_ranges: false,
            ipv4_fragment_range: false,
            ip_prefix_masks: false,
            ipv6: true,
            tcp_flags: false,
            mark_bits: 24,
            counters: true,
            counter_limit: 256,
            counter_bytes: false,
            sctp: true,
            icmp: false,
            icmp6: false,
            port_prefix_masks: false,
            ipv4_proto: false,
            flat_marks: false,
        }
    }

    /// Marvell cnxk with the default key-extraction (MKEX) profile of the Linux AF
    /// driver: which fields match is the loaded profile's choice (any mask must
    /// fall within the extracted bytes, `common/cnxk/roc_npc_utils.c:61-158`), and
    /// the default extracts IPv4 addresses and TCP/UDP ports only: no IPv6
    /// addresses, TCP flags, IPv4 protocol byte, SCTP ports or ICMP type/code.
    /// - the group attribute is ignored (`net/cnxk/cnxk_flow.c:266-268`), no JUMP
    ///   (`:241-244`), priorities 0..2 by default (`common/cnxk/roc_npc.c:745-762`);
    /// - no `last` at all (`common/cnxk/roc_npc_utils.c:116-118`);
    /// - ICMP6 items are silently ignored (no entry in `net/cnxk/cnxk_flow.c:6-61`),
    ///   so a rule with one would match all IPv6: never sent;
    /// - MARK up to 0xfffd (`common/cnxk/roc_npc.c:415-428`); 16 bits are used;
    /// - COUNT with packets only (`net/cnxk/cnxk_flow.c:418`).
    ///
    /// Boards loading another MKEX profile can match more; this profile claims only
    /// what the default allows.
    pub fn cnxk(capacity: u32) -> Self {
        NicCaps {
            name: "cnxk",
            flow_api: true,
            groups: false,
            groups_ignored: true,
            max_priority: 2,
            root_max_priority: 2,
            capacity,
            l4_ranges: false,
            ipv4_fragment_range: false,
            ip_prefix_masks: true,
            ipv6: false,
            tcp_flags: false,
            mark_bits: 16,
            counters: true,
            counter_limit: u32::MAX,
            counter_bytes: false,
            sctp: false,
            icmp: false,
            icmp6: false,
            port_prefix_masks: true,
            ipv4_proto: false,
            flat_marks: false,
        }
    }

    /// VPP's flow layer (`vnet/flow`, VPP 26.06), through which the capo VPP plugin
    /// installs the NIC share on the NIC VPP's driver owns
    /// (`src/vnet/flow/flow.h`): `ipv4-n-tuple` and `ipv6-n-tuple` flows (addresses
    /// with masks, protocol exact or any, TCP/UDP ports with masks) with a DROP or
    /// MARK action; no groups and no priority field (dpdk's backend puts every flow
    /// in group 0 at priority 0), so flat-marks mode; no TCP flags, ranges, ICMP or
    /// SCTP fields. Marks are 32 bits in the layer (the buffer's `flow_id`); 24 are
    /// used, as on mlx5. What the driver underneath refuses stays in software, rule
    /// by rule.
    pub fn vpp_flow_layer(capacity: u32) -> Self {
        NicCaps {
            name: "vpp-flow",
            flow_api: true,
            capacity,
            ip_prefix_masks: true,
            ipv6: true,
            mark_bits: 24,
            port_prefix_masks: true,
            ipv4_proto: true,
            flat_marks: true,
            ..NicCaps::none("vpp-flow")
        }
    }

    /// A PMD that took the probe's DROP rule but has no profile here: drop-only
    /// with nothing the probe did not test (exact IPv4 addresses and ports, one
    /// priority, no counters, marks, flags, ranges or IPv6).
    pub fn unknown(name: &'static str, capacity: u32) -> Self {
        NicCaps {
            name,
            flow_api: true,
            capacity,
            ..NicCaps::none(name)
        }
    }

    /// A port without rte_flow (net_null, net_ring, …).
    pub fn none(name: &'static str) -> Self {
        NicCaps {
            name,
            flow_api: false,
            groups: false,
            groups_ignored: false,
            max_priority: 0,
            root_max_priority: 0,
            capacity: 0,
            l4_ranges: false,
            ipv4_fragment_range: false,
            ip_prefix_masks: false,
            ipv6: false,
            tcp_flags: false,
            mark_bits: 0,
            counters: false,
            counter_limit: 0,
            counter_bytes: false,
            sctp: false,
            icmp: false,
            icmp6: false,
            port_prefix_masks: false,
            ipv4_proto: false,
            flat_marks: false,
        }
    }

    /// The mode the capabilities allow.
    pub fn mode(&self) -> OffloadMode {
        if !self.flow_api || self.capacity == 0 {
            OffloadMode::SoftwareOnly
        } else if self.groups && !self.groups_ignored && self.mark_bits >= 8 {
            OffloadMode::VersionedGroups
        } else if self.flat_marks && self.mark_bits >= 8 {
            OffloadMode::FlatMarks
        } else {
            OffloadMode::DropOnly
        }
    }
}
