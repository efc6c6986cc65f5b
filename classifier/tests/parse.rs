//! The parser never panics, and what it parses round-trips through the frame
//! builder.
#![allow(clippy::unwrap_used)]

mod common;

use capo_classifier::{build, parse_ethernet, parse_ip};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_ethernet(&bytes);
        let _ = parse_ip(&bytes);
    }

    #[test]
    fn parse_never_panics_on_mutated_frames(pkt in common::packet(), flips in prop::collection::vec((0usize..80, any::<u8>()), 0..6), cut in 0usize..90) {
        let mut f = build::frame(&pkt, 0x12);
        for (i, b) in flips {
            if let Some(x) = f.get_mut(i) {
                *x = b;
            }
        }
        f.truncate(cut.max(1));
        let _ = parse_ethernet(&f);
        let _ = parse_ip(f.get(14..).unwrap_or(&[]));
    }

    #[test]
    fn built_frames_parse_back(pkt in common::packet()) {
        let f = build::frame(&pkt, 0);
        prop_assert_eq!(parse_ethernet(&f).unwrap().packet, pkt);
    }
}
