//! The fuzz entry point for the control core (`host-agent/fuzz`, target
//! `plugin_control`), also replayed over its saved corpus by the tests.

use capo_felix::frame::FrameReader;
use capo_proto::capo::dataplane::v1::{from_plugin, ToPlugin};
use prost::Message;

use crate::cli::Show;
use crate::control::FakeVpp;
use crate::{Plugin, PluginConfig};

/// The control core broke an invariant: after which message, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Divergence(pub String);

/// Messages taken from one input.
const MAX_MESSAGES: usize = 16;

/// The seed's Felix stream, the generation every input starts from.
pub const SEED_FRAMES: &[u8] = include_bytes!("../tests/fixtures/seed.master.frames");

/// What the agent can observe of the plugin: its active generation and every view.
fn observed(plugin: &Plugin) -> (u64, Vec<String>) {
    let views = [
        Show::Interfaces,
        Show::Ipsets,
        Show::Policies { verbose: true },
        Show::Rules,
    ]
    .into_iter()
    .map(|v| plugin.show(v, 0))
    .collect();
    (plugin.cell.active_id(), views)
}

/// Frames of `ToPlugin` messages (Felix's framing) to a control core holding the
/// seed's policy as generation 1. After every message that is not applied (a
/// refusal, a held chunk, a hello) the active generation, every view and VPP's
/// features must be as before; an applied generation must become the active one.
/// Returns how many messages were applied.
///
/// # Errors
///
/// The first message after which that does not hold, named.
pub fn control_core(data: &[u8]) -> Result<u64, Divergence> {
    let plugin = Plugin::new(PluginConfig {
        max_frame_bytes: 1 << 20,
        max_generation_bytes: 4 << 20,
        ..PluginConfig::default()
    });
    let mut core = plugin.control_core(FakeVpp::with(&[("tun3", 11), ("tap0", 1)]));
    let seed: Vec<_> = FrameReader::new(SEED_FRAMES)
        .filter_map(|f| capo_felix::frame::decode_to_dataplane_v3_32(&f.ok()?).ok())
        .collect();
    let first = core.on_message(
        ToPlugin {
            msg: Some(capo_proto::capo::dataplane::v1::to_plugin::Msg::Generation(
                capo_proto::capo::dataplane::v1::Generation {
                    id: 1,
                    full: true,
                    base_id: 0,
                    updates: seed,
                    more: false,
                },
            )),
        },
        0,
    );
    if !matches!(first.msg, Some(from_plugin::Msg::Applied(ref a)) if a.ok) {
        return Err(Divergence(format!(
            "the seed generation was not applied: {first:?}"
        )));
    }
    let mut applied = 0;
    for (i, frame) in FrameReader::with_max_frame_len(data, 1 << 20)
        .take(MAX_MESSAGES)
        .enumerate()
    {
        let Ok(frame) = frame else { break };
        let Ok(msg) = ToPlugin::decode(frame.bytes.as_slice()) else {
            continue;
        };
        let before = observed(&plugin);
        let features = core.context().enabled.clone();
        let reply = core.on_message(msg, 0);
        match reply.msg {
            Some(from_plugin::Msg::Applied(a)) if a.ok => {
                applied += 1;
                if plugin.cell.active_id() != a.generation {
                    return Err(Divergence(format!(
                        "message {i}: generation {} applied but {} is active",
                        a.generation,
                        plugin.cell.active_id()
                    )));
                }
                let _ = observed(&plugin);
            }
            other => {
                if observed(&plugin) != before {
                    return Err(Divergence(format!("message {i}: not applied ({other:?}) but the views or active generation changed")));
                }
                if core.context().enabled != features {
                    return Err(Divergence(format!(
                        "message {i}: not applied but VPP's features changed"
                    )));
                }
            }
        }
    }
    Ok(applied)
}
