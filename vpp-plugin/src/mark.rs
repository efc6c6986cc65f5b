//! NIC marks (DESIGN.md §4, reference/offload.md §6.1 item 5, §6.4).
//!
//! A packet the NIC has already decided carries the rte_flow `MARK` of the rule that
//! decided it; VPP's dpdk input copies it into the buffer's `flow_id`. The 32-bit mark
//! is laid out as
//!
//! ```text
//!  31    28 27            20 19                      0
//! +--------+----------------+-------------------------+
//! |  0xC   | generation tag |  class                  |
//! +--------+----------------+-------------------------+
//! ```
//!
//! - the top nibble `0xC` says the mark is capo's (any other value, including the
//!   `flow_id` 0 of unmarked packets, is "no mark");
//! - the generation tag is the low 8 bits of the generation id whose NIC rules stamped it;
//! - class 0 is `PUNT` (the NIC did not decide: classify in software), any other class
//!   is a hardware allow (class − 1 is the rule class, for counters).
//!
//! Software accepts a hardware allow only when the tag is that of a generation it holds
//! (the active one, or the previous one while it is retired); otherwise the packet is
//! classified as if unmarked. With at most two generations resident, 8 bits cannot alias.
//!
//! The offload side must stamp exactly this layout; [`Mark::encode`] is the one encoder.

/// Top nibble of every capo mark.
const MAGIC: u32 = 0xC;
const MAGIC_SHIFT: u32 = 28;
const TAG_SHIFT: u32 = 20;
const TAG_MASK: u32 = 0xff;
const CLASS_MASK: u32 = 0xf_ffff;

/// A decoded capo mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Not a capo mark (unmarked packet, or another user's flow id).
    None,
    /// The NIC sent the packet to software without a verdict.
    Punt {
        /// Low 8 bits of the stamping generation's id.
        tag: u8,
    },
    /// The NIC allowed the packet.
    Allow {
        /// Low 8 bits of the stamping generation's id.
        tag: u8,
        /// The NIC rule class (for counters).
        class: u32,
    },
}

/// The generation tag of a generation id.
pub fn tag_of(generation: u64) -> u8 {
    (generation & u64::from(TAG_MASK)) as u8
}

impl Mark {
    /// Decodes a buffer's `flow_id`.
    pub fn decode(flow_id: u32) -> Mark {
        if flow_id >> MAGIC_SHIFT != MAGIC {
            return Mark::None;
        }
        let tag = ((flow_id >> TAG_SHIFT) & TAG_MASK) as u8;
        match flow_id & CLASS_MASK {
            0 => Mark::Punt { tag },
            c => Mark::Allow { tag, class: c - 1 },
        }
    }

    /// Encodes a mark (the offload side's half of the contract). Classes above
    /// 2^20 − 2 are clamped to the largest.
    pub fn encode(self) -> u32 {
        let head = |tag: u8| (MAGIC << MAGIC_SHIFT) | (u32::from(tag) << TAG_SHIFT);
        match self {
            Mark::None => 0,
            Mark::Punt { tag } => head(tag),
            Mark::Allow { tag, class } => head(tag) | (class.min(CLASS_MASK - 1) + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for m in [
            Mark::Punt { tag: 0 },
            Mark::Punt { tag: 255 },
            Mark::Allow { tag: 7, class: 0 },
            Mark::Allow {
                tag: 200,
                class: 12345,
            },
        ] {
            assert_eq!(Mark::decode(m.encode()), m);
        }
        assert_eq!(Mark::encode(Mark::None), 0);
    }

    #[test]
    fn foreign_flow_ids_are_no_mark() {
        assert_eq!(Mark::decode(0), Mark::None);
        assert_eq!(Mark::decode(1), Mark::None);
        assert_eq!(Mark::decode(0xffff_ffff), Mark::None);
        assert_eq!(Mark::decode(0x1000_0001), Mark::None);
    }

    #[test]
    fn tags_are_low_byte() {
        assert_eq!(tag_of(0x1_05), 5);
        assert_eq!(tag_of(256), 0);
    }
}
