//! MARK ids: the generation and what the NIC decided, carried to software.
//!
//! Layout, from the top of the usable bits (16 or 24): 2 bits of generation tag
//! (generation mod 4: at most two generations are resident at once), 1 bit kind (0 =
//! allowed by an offloaded rule, 1 = punt: software must classify), then the index of
//! the plan entry that marked the packet (its position in the plan that created it;
//! kept when a re-plan is committed in place). The 16 highest values are reserved by
//! mlx5, so the index never reaches them.

/// What a marked packet means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkKind {
    /// An offloaded allow rule accepted the packet.
    Allow,
    /// Software must classify the packet (cover, fragment, catch-all).
    Punt,
}

/// A decoded MARK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark {
    /// Generation mod 4.
    pub gen_tag: u8,
    /// Allow or punt.
    pub kind: MarkKind,
    /// The plan entry's index: its position in the plan that created it (a re-plan
    /// committed in place keeps the index of every entry it keeps).
    pub index: u32,
}

/// Generation tag of a generation id.
pub fn gen_tag(generation: u64) -> u8 {
    (generation % 4) as u8
}

/// Highest index that fits `mark_bits` (clamped to 8..=24 bits).
pub fn max_index(mark_bits: u8) -> u32 {
    let bits = u32::from(mark_bits.clamp(8, 24));
    (1u32 << (bits - 3)) - 17
}

impl Mark {
    /// Encodes; `None` when the index does not fit.
    pub fn encode(&self, mark_bits: u8) -> Option<u32> {
        let bits = u32::from(mark_bits.clamp(8, 24));
        if self.index > max_index(mark_bits) {
            return None;
        }
        let kind = match self.kind {
            MarkKind::Allow => 0,
            MarkKind::Punt => 1,
        };
        Some((u32::from(self.gen_tag & 3) << (bits - 2)) | (kind << (bits - 3)) | self.index)
    }

    /// Decodes a raw MARK id.
    pub fn decode(raw: u32, mark_bits: u8) -> Mark {
        let bits = u32::from(mark_bits.clamp(8, 24));
        let gen_tag = ((raw >> (bits - 2)) & 3) as u8;
        let kind = if (raw >> (bits - 3)) & 1 == 1 {
            MarkKind::Punt
        } else {
            MarkKind::Allow
        };
        Mark {
            gen_tag,
            kind,
            index: raw & ((1 << (bits - 3)) - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_marks_round_trip_and_avoid_reserved_values() {
        for bits in [16u8, 24] {
            for tag in 0..4 {
                for kind in [MarkKind::Allow, MarkKind::Punt] {
                    let m = Mark {
                        gen_tag: tag,
                        kind,
                        index: max_index(bits),
                    };
                    let raw = m.encode(bits).unwrap();
                    assert!(raw < (1 << bits) - 16, "{raw:#x} reserved");
                    assert_eq!(Mark::decode(raw, bits), m);
                }
            }
            let too_big = Mark {
                gen_tag: 0,
                kind: MarkKind::Allow,
                index: max_index(bits) + 1,
            };
            assert_eq!(too_big.encode(bits), None);
        }
    }
}
