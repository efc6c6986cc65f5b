//! NIC marks as VPP hands them to the node (DESIGN.md §4, reference/offload.md §6).
//!
//! A packet the NIC has already matched carries the rte_flow `MARK` of the rule that
//! matched it; VPP's dpdk input copies it into the buffer's `flow_id`. The layout is
//! `capo-offload`'s ([`capo_offload::mark`]), the one the offload side stamps, so NIC
//! and plugin cannot disagree: from the top of the NIC's usable mark bits (16 or 24,
//! the plugin's `nic-mark-bits`), 2 bits of generation tag (generation mod 4), 1 bit of
//! kind (allow or punt), then the plan entry's index.
//!
//! What is VPP-specific lives here:
//!
//! - `flow_id` 0 means "no mark" in VPP. It is also the encoding of an allow from plan
//!   entry 0 of a generation whose tag is 0; such a packet is classified in software,
//!   which is always safe (the NIC is only a cache of software decisions).
//! - A `flow_id` with bits above `nic-mark-bits`, or in the 16 values mlx5 reserves at
//!   the top of the range, is not capo's (another user of VPP's flow offload): no mark.
//! - `nic-mark-bits 0` turns marks off: every packet is classified in software.
//!
//! Whether a mark's generation is one software holds is the cell's business
//! ([`crate::generation::GenerationCell::holds_tag`]).

pub use capo_offload::mark::{gen_tag, Mark, MarkKind};

/// The widest mark a NIC stamps (mlx5 full mode).
pub const MAX_MARK_BITS: u8 = 24;
/// The narrowest mark width that can carry a capo mark.
pub const MIN_MARK_BITS: u8 = 8;
/// Values mlx5 reserves at the top of the mark range.
const RESERVED_TOP: u32 = 16;

/// How the node reads `flow_id`s: the NIC's mark width, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicMarks {
    bits: u8,
}

impl Default for NicMarks {
    fn default() -> Self {
        NicMarks {
            bits: MAX_MARK_BITS,
        }
    }
}

impl NicMarks {
    /// Marks `bits` wide (8..=24), or `None` for a width capo marks cannot use.
    pub fn new(bits: u8) -> Option<NicMarks> {
        (MIN_MARK_BITS..=MAX_MARK_BITS)
            .contains(&bits)
            .then_some(NicMarks { bits })
    }

    /// Marks ignored: every packet is classified in software.
    pub fn off() -> NicMarks {
        NicMarks { bits: 0 }
    }

    /// The mark width (0: off).
    pub fn bits(self) -> u8 {
        self.bits
    }

    /// The capo mark a buffer's `flow_id` carries, if any.
    #[inline]
    pub fn decode(self, flow_id: u32) -> Option<Mark> {
        if self.bits == 0 || flow_id == 0 {
            return None;
        }
        let limit = (1u32 << self.bits) - RESERVED_TOP;
        (flow_id < limit).then(|| Mark::decode(flow_id, self.bits))
    }

    /// The `flow_id` a NIC stamps for `mark` (tests, and the offload side's encoder).
    pub fn encode(self, mark: Mark) -> Option<u32> {
        if self.bits == 0 {
            return None;
        }
        mark.encode(self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_id_zero_and_foreign_ids_are_no_mark() {
        let m = NicMarks::default();
        assert_eq!(m.decode(0), None);
        assert_eq!(m.decode(1 << 24), None);
        assert_eq!(m.decode((1 << 24) - 1), None);
        assert_eq!(NicMarks::off().decode(5), None);
        assert_eq!(NicMarks::new(7), None);
        assert_eq!(NicMarks::new(25), None);
    }

    #[test]
    fn round_trips_the_offload_layout() {
        for bits in [16u8, 24] {
            let m = NicMarks::new(bits).unwrap();
            for generation in 1..9u64 {
                for kind in [MarkKind::Allow, MarkKind::Punt] {
                    let mark = Mark {
                        gen_tag: gen_tag(generation),
                        kind,
                        index: 7,
                    };
                    let raw = m.encode(mark).unwrap();
                    // The offload crate's own decoder agrees.
                    assert_eq!(Mark::decode(raw, bits), mark);
                    assert_eq!(m.decode(raw), Some(mark));
                }
            }
        }
    }
}
