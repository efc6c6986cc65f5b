//! Entry points shared by the fuzz targets (`host-agent/fuzz`) and the test that
//! replays their saved corpus in CI.

use capo_policy::{trace, Packet, Protocol, L4};

use crate::cli::View;
use crate::felix::frame::Schema;
use crate::replay::{replay_reader, ReplayOptions};

/// Feeds arbitrary bytes through the frame decoder and the Felix state machine with
/// both schemas; whatever state results must render and evaluate. Any panic is a
/// bug. Returns how many frames were accepted, for corpus statistics.
pub fn felix_stream(data: &[u8]) -> u64 {
    let mut accepted = 0;
    for schema in [None, Some(Schema::V3_31), Some(Schema::V3_32)] {
        let opts = ReplayOptions {
            schema,
            // Small cap: the fuzzer should explore contents, not allocations.
            max_frame_len: 1 << 20,
            ..ReplayOptions::default()
        };
        let Ok(r) = replay_reader(data, &opts) else {
            continue;
        };
        accepted += r.stats.frames;
        for v in View::ALL {
            let _ = v.render(&r.state, &r.ids);
        }
        for pkt in probe_packets() {
            let _ = trace(&r.state, &pkt);
        }
    }
    accepted
}

fn probe_packets() -> [Packet; 3] {
    let a = [10, 0, 0, 1].into();
    let b = [10, 0, 0, 2].into();
    [
        Packet {
            src: a,
            dst: b,
            protocol: Protocol::TCP,
            l4: L4::Ports { src: 1234, dst: 80 },
        },
        Packet {
            src: b,
            dst: a,
            protocol: Protocol::ICMP,
            l4: L4::Icmp {
                icmp_type: 8,
                code: 0,
            },
        },
        Packet {
            src: "fd00::1".parse().unwrap_or(a),
            dst: "fd00::2".parse().unwrap_or(b),
            protocol: Protocol::UDP,
            l4: L4::None,
        },
    ]
}
