//! What a NIC can do, as data (offload.md §2). The planner and the simulated NIC read
//! the same [`NicCaps`]; the DPDK backend fills one from its probe.

/// How generations reach the NIC (offload.md §6.1 item 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
#[cfg_attr(feature = "std", serde(rename_all = "kebab-case"))]
pub enum OffloadMode {
    /// Versioned groups behind one dispatcher rule (needs groups and JUMP).
    VersionedGroups,
    /// Only DROP rules with no conflicting earlier rule, updated monotonically.
    DropOnly,
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
}

impl NicCaps {
    /// NVIDIA mlx5 (ConnectX-6 Dx/7, BlueField) on DPDK 22.11, DV steering: groups and
    /// JUMP, 21,844 priorities in non-root groups, 4 in the root, no port ranges.
    pub fn mlx5(capacity: u32) -> Self {
        NicCaps {
            name: "mlx5",
            flow_api: true,
            groups: true,
            groups_ignored: false,
            max_priority: 21_843,
            root_max_priority: 3,
            capacity,
            l4_ranges: false,
            ipv4_fragment_range: true,
            ip_prefix_masks: true,
            ipv6: true,
            tcp_flags: true,
            mark_bits: 24,
            counters: true,
        }
    }

    /// Intel E810 (`ice`): no groups, priorities 0 and 1, exact-match addresses in FDIR,
    /// about 14K entries for one PF.
    pub fn e810(capacity: u32) -> Self {
        NicCaps {
            name: "e810",
            flow_api: true,
            groups: false,
            groups_ignored: false,
            max_priority: 1,
            root_max_priority: 1,
            capacity,
            l4_ranges: false,
            ipv4_fragment_range: true,
            ip_prefix_masks: false,
            ipv6: true,
            tcp_flags: true,
            mark_bits: 24,
            counters: true,
        }
    }

    /// Marvell cnxk: the group attribute is ignored, no JUMP, 3 priorities, no ranges at
    /// all (not even the fragment form).
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
            ipv6: true,
            tcp_flags: true,
            mark_bits: 16,
            counters: true,
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
        }
    }

    /// The mode the capabilities allow.
    pub fn mode(&self) -> OffloadMode {
        if !self.flow_api || self.capacity == 0 {
            OffloadMode::SoftwareOnly
        } else if self.groups && !self.groups_ignored && self.mark_bits >= 8 {
            OffloadMode::VersionedGroups
        } else {
            OffloadMode::DropOnly
        }
    }
}
