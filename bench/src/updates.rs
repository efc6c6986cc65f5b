//! `capo-bench updates`: every kind of policy update, timed while another thread
//! classifies the workload's packets against whatever generation is current.
//!
//! Two paths ([`UpdatePath`]):
//!
//! - `builder` (engine `fast`): what the embedded dataplane does with one Felix
//!   message: `Builder::apply` (state validation and apply, incremental recompile, a
//!   new generation) and `GenerationCell::publish`; then, timed apart,
//!   `Builder::settle`, which the embedded dataplane calls after each publish;
//! - `plugin` (engine `plugin`): what the VPP plugin does with one generation of one
//!   update from the agent: `ControlCore::on_message` on the encoded generation
//!   (decode and validate on the views' copy of the state, bind endpoints to VPP
//!   interfaces, compile, snapshot state and ids for the views, flip), with a
//!   stand-in for VPP's interface table and feature commits (`FakeVpp`); then, timed
//!   apart, `ControlCore::after_reply`, what the plugin's connection does once the
//!   reply is written (free the generation the flip let go of, make the next
//!   delta's state ready).
//!
//! Kinds, each alternating a change and its undo so the state stays the workload's:
//!
//! - `member-host`: a `/32` into or out of a selector set;
//! - `member-cidr`: a `/24` into or out of a CIDR set;
//! - `member-named-port`: an `ip,tcp:port` member into or out of a named-port set;
//! - `member-remove`: a member a selector set already holds removed, then added back
//!   (a pod deleted: its address may sit anywhere in a set of thousands); the pairs
//!   are drawn uniformly, so a set comes up in proportion to its size;
//! - `policy`: a policy's rules changed (one port moved) and restored;
//! - `profile`: a profile's first inbound rule narrowed to TCP to one port, and
//!   restored (a namespace's profile: every endpoint of the namespace uses it);
//! - `policy-add-remove`: a new policy added and removed the way Felix sends it, one
//!   message at a time: the policy, then an endpoint listing it in one of its tiers,
//!   then the endpoint without it, then the policy's removal (each message timed on
//!   its own);
//! - `set-add-remove`: a new IP set of 64 addresses added, then removed (Felix sends
//!   a set before the policies that name it, and removes it after them);
//! - `host-metadata`: another node's addresses added, then removed (Felix sends every
//!   node's, as nodes join and leave the cluster);
//! - `endpoint`: a local endpoint removed and re-added;
//! - `endpoint-replica`: a new local endpoint listing what an existing one lists (a
//!   pod of a deployment scaled up), added, then removed;
//! - `endpoint-unique`: a new local endpoint whose policy lists no endpoint has (an
//!   existing one's, each tier reversed), added, then removed: its programs are
//!   laid out afresh, where `endpoint`'s re-added endpoint may take the programs
//!   the generation before its removal still holds;
//! - `rejected`: a delta naming an IP set the state lacks, which must fail.
//!
//! A failed apply is counted in `failed` and kept out of the timings; a kind other
//! than `rejected` with a failure means the benchmark's own updates are wrong. The
//! classifying thread's packet count during each kind shows the load was there.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capo_classifier::{Builder, GenerationCell, IfaceKind, Scratch};
use capo_policy::{Cidr, IpSetId, IpSetKind, Member, Protocol, State, Update};
use capo_proto::capo::dataplane::v1::{from_plugin, to_plugin, FromPlugin, Hello, ToPlugin};
use capo_vpp_plugin::config::PluginConfig;
use capo_vpp_plugin::control::{
    generation_chunks, generation_message, ChannelLimits, ControlCore, FakeVpp,
};
use capo_vpp_plugin::generation::policed_interfaces;
use capo_vpp_plugin::Plugin;
use serde::Serialize;

use crate::workload::{generate, Kind, Rng};

/// Which code applies the updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePath {
    /// The classifier's builder, as the embedded dataplane runs it.
    Builder,
    /// The VPP plugin's control core, fed encoded generations as the agent sends them.
    Plugin,
}

impl UpdatePath {
    /// The rows' engine name.
    pub fn engine(self) -> &'static str {
        match self {
            UpdatePath::Builder => "fast",
            UpdatePath::Plugin => "plugin",
        }
    }
}

/// One kind's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateRow {
    /// `fast` (capo's builder) or `plugin` (the VPP plugin's control path).
    pub engine: &'static str,
    /// The workload.
    pub workload: &'static str,
    /// The update kind.
    pub update: &'static str,
    /// Updates applied and published.
    pub applied: usize,
    /// Updates refused (kept out of the timings).
    pub failed: usize,
    /// Microseconds per applied update: median, 99th percentile, largest.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// Largest.
    pub max_us: Option<f64>,
    /// The work after each update, timed apart from it: the plugin's after its reply
    /// ([`ControlCore::after_reply`]: freeing what the flip let go of, making the
    /// next delta's state ready), the builder's after its publish
    /// (`Builder::settle`): median, 99th percentile, largest.
    pub after_reply_p50_us: Option<f64>,
    /// 99th percentile.
    pub after_reply_p99_us: Option<f64>,
    /// Largest.
    pub after_reply_max_us: Option<f64>,
    /// Packets the other thread classified while this kind ran.
    pub classified_meanwhile: u64,
}

fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    sorted
        .get((sorted.len() * p / 100).min(sorted.len() - 1))
        .copied()
}

/// The update kinds, in the order they run.
pub const KINDS: [&str; 13] = [
    "member-host",
    "member-cidr",
    "member-named-port",
    "member-remove",
    "policy",
    "profile",
    "policy-add-remove",
    "set-add-remove",
    "host-metadata",
    "endpoint",
    "endpoint-replica",
    "endpoint-unique",
    "rejected",
];

/// Interface names the `endpoint-replica` and `endpoint-unique` kinds give their
/// endpoints in turn (one at a time exists; VPP has an interface of each).
const REPLICA_NAMES: usize = 16;

fn replica_name(i: usize) -> String {
    format!("capo-bench-replica-{}", i % REPLICA_NAMES)
}

/// The sets of one kind: selector sets of host members, CIDR sets, named-port sets.
fn sets_of(state: &State, want: fn(&capo_policy::IpSet) -> bool) -> Vec<IpSetId> {
    state
        .ipsets()
        .iter()
        .filter(|(_, s)| want(s))
        .map(|(id, _)| id.clone())
        .collect()
}

/// The `i`-th new local endpoint: a copy of `wep` (the endpoint of `key`) changed by
/// `change`, on its own interface and address; its removal goes onto `undo`.
fn new_endpoint(
    i: usize,
    key: &capo_policy::WorkloadKey,
    wep: &capo_policy::WorkloadEndpoint,
    tag: &str,
    change: impl FnOnce(&mut capo_policy::WorkloadEndpoint),
    undo: &mut Vec<Update>,
) -> Update {
    let mut new = capo_policy::WorkloadEndpoint::clone(wep);
    change(&mut new);
    new.name = replica_name(i);
    new.ipv4_nets = vec![Cidr::host(IpAddr::V4(Ipv4Addr::from(
        0x6700_0000u32 + i as u32,
    )))];
    new.ipv6_nets = vec![];
    let new_key = capo_policy::WorkloadKey {
        workload: format!("{}-{tag}-{i}", key.workload),
        ..key.clone()
    };
    undo.push(Update::WorkloadRemove(new_key.clone()));
    Update::WorkloadUpdate(new_key, new.into())
}

/// The `i`-th update of `kind`: the next step still owed on `undo` (a stack of the
/// updates that lead back to the workload's state), else a new change whose way back
/// goes onto `undo`.
fn next_update(
    kind: &str,
    i: usize,
    state: &State,
    rng: &mut Rng,
    undo: &mut Vec<Update>,
    sets: &[IpSetId],
) -> Option<Update> {
    if let Some(u) = undo.pop() {
        return Some(u);
    }
    let pick_set = |rng: &mut Rng| sets.get(rng.below(sets.len().max(1))).cloned();
    let delta = |id: IpSetId, m: Member, undo: &mut Vec<Update>| {
        undo.push(Update::IpSetDelta {
            id: id.clone(),
            added: vec![],
            removed: vec![m],
        });
        Update::IpSetDelta {
            id,
            added: vec![m],
            removed: vec![],
        }
    };
    match kind {
        "member-host" => {
            let id = pick_set(rng)?;
            let addr = IpAddr::V4(Ipv4Addr::from(0x6400_0000u32 + i as u32));
            Some(delta(id, Member::Net(Cidr::host(addr)), undo))
        }
        "member-cidr" => {
            let id = pick_set(rng)?;
            let net = format!("{}/24", Ipv4Addr::from(0x6500_0000u32 + ((i as u32) << 8)))
                .parse::<Cidr>()
                .ok()?;
            Some(delta(id, Member::Net(net), undo))
        }
        "member-named-port" => {
            let id = pick_set(rng)?;
            let m = Member::IpPort {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + rng.below(1 << 16) as u32)),
                protocol: Protocol::TCP,
                port: 20_000 + (i % 10_000) as u16,
            };
            Some(delta(id, m, undo))
        }
        "member-remove" => {
            // A (set, member) pair drawn uniformly, as pod deletions send them: a
            // set in proportion to its size, so large sets come up as often as
            // their members.
            let sized: Vec<(&IpSetId, &capo_policy::IpSet)> = sets
                .iter()
                .filter_map(|id| Some((id, state.ipsets().get(id)?)))
                .collect();
            let total: usize = sized.iter().map(|(_, s)| s.len()).sum();
            let mut at = rng.below(total.max(1));
            let (id, set) = sized.into_iter().find(|(_, s)| {
                let here = at < s.len();
                if !here {
                    at -= s.len();
                }
                here
            })?;
            let (id, m) = (id.clone(), *set.members().nth(at)?);
            undo.push(Update::IpSetDelta {
                id: id.clone(),
                added: vec![m],
                removed: vec![],
            });
            Some(Update::IpSetDelta {
                id,
                added: vec![],
                removed: vec![m],
            })
        }
        "policy" => {
            let n = state.policies().len();
            let (key, p) = state.policies().get_index(rng.below(n.max(1)))?;
            let mut changed = capo_policy::Policy::clone(p);
            let rule = changed
                .inbound
                .iter_mut()
                .chain(changed.outbound.iter_mut())
                .find(|r| !r.dst.ports.is_empty())?;
            let port = 40_000 + (i % 20_000) as u16;
            rule.dst.ports = vec![capo_policy::PortRange::single(port)];
            undo.push(Update::PolicyUpdate(key.clone(), p.clone()));
            Some(Update::PolicyUpdate(key.clone(), changed.into()))
        }
        "profile" => {
            let n = state.profiles().len();
            let (name, p) = state.profiles().get_index(rng.below(n.max(1)))?;
            let mut changed = capo_policy::Profile::clone(p);
            let rule = changed.inbound.first_mut()?;
            rule.protocol = Some(capo_policy::Protocol::TCP);
            rule.dst.ports = vec![capo_policy::PortRange::single(40_000 + (i % 20_000) as u16)];
            undo.push(Update::ProfileUpdate(name.clone(), p.clone()));
            Some(Update::ProfileUpdate(name.clone(), changed.into()))
        }
        "policy-add-remove" => {
            // Felix's order: the policy before the endpoint that lists it; the
            // endpoint without it before the policy's removal. The endpoint: the
            // first from a random start whose first tier holds a policy, the model
            // for the new one's rules.
            let n = state.workloads().len();
            let start = rng.below(n.max(1));
            let (key, wep, model) = (0..n).find_map(|k| {
                let (key, wep) = state.workloads().get_index((start + k) % n)?;
                let tier = wep.tiers.first()?;
                let (_, model) = state.policies().iter().find(|(_, p)| p.tier == tier.name)?;
                Some((key, wep, model))
            })?;
            let added = capo_policy::PolicyKey {
                kind: "NetworkPolicy".into(),
                namespace: "capo-bench".into(),
                name: format!("added-{i}").into(),
            };
            // Listed in the directions it has rules for, as Felix lists a policy by
            // its types.
            let mut listed = capo_policy::WorkloadEndpoint::clone(wep);
            let first = listed.tiers.first_mut()?;
            if !model.inbound.is_empty() {
                first.ingress.insert(0, added.clone());
            }
            if !model.outbound.is_empty() {
                first.egress.insert(0, added.clone());
            }
            undo.push(Update::PolicyRemove(added.clone()));
            undo.push(Update::WorkloadUpdate(key.clone(), wep.clone()));
            undo.push(Update::WorkloadUpdate(key.clone(), listed.into()));
            Some(Update::PolicyUpdate(added, model.clone()))
        }
        "set-add-remove" => {
            let id = IpSetId::new(format!("s:capo-bench-added-{i}"))?;
            let members = (0..64u32)
                .map(|k| {
                    let addr = Ipv4Addr::from(0x6600_0000u32 + ((i as u32) << 6) + k);
                    Member::Net(Cidr::host(IpAddr::V4(addr)))
                })
                .collect();
            undo.push(Update::IpSetRemove(id.clone()));
            Some(Update::IpSetReplace {
                id,
                kind: IpSetKind::Net,
                members,
            })
        }
        "host-metadata" => {
            let host = format!("capo-bench-node-{i}");
            undo.push(Update::HostMetadataRemove(host.clone()));
            Some(Update::HostMetadataUpdate(
                host,
                capo_policy::HostMetadata {
                    ipv4: Some(IpAddr::V4(Ipv4Addr::from(0xc0a8_0000u32 + i as u32))),
                    ipv6: None,
                },
            ))
        }
        "endpoint" => {
            let n = state.workloads().len();
            let (key, wep) = state.workloads().get_index(rng.below(n.max(1)))?;
            undo.push(Update::WorkloadUpdate(key.clone(), wep.clone()));
            Some(Update::WorkloadRemove(key.clone()))
        }
        "endpoint-replica" => {
            // A deployment scaled up: a new pod with an existing pod's labels, hence
            // its policies and profiles, on a new interface and address; then gone.
            let n = state.workloads().len();
            let (key, wep) = state.workloads().get_index(rng.below(n.max(1)))?;
            Some(new_endpoint(i, key, wep, "replica", |_| {}, undo))
        }
        "endpoint-unique" => {
            // A new pod that no other pod's policy lists match: an existing pod's
            // policies, each tier's in reverse order, so its programs are laid out
            // afresh (as large as that pod's), not shared. The pod copied: the first
            // from a random start with a tier of two policies or more in a direction
            // (reversing fewer changes nothing).
            let n = state.workloads().len();
            let start = rng.below(n.max(1));
            let (key, wep) = (0..n).find_map(|k| {
                let (key, wep) = state.workloads().get_index((start + k) % n)?;
                wep.tiers
                    .iter()
                    .any(|t| t.ingress.len() > 1 || t.egress.len() > 1)
                    .then_some((key, wep))
            })?;
            let reversed = |w: &mut capo_policy::WorkloadEndpoint| {
                for tier in &mut w.tiers {
                    tier.ingress.reverse();
                    tier.egress.reverse();
                }
            };
            Some(new_endpoint(i, key, wep, "unique", reversed, undo))
        }
        "rejected" => Some(Update::IpSetDelta {
            id: IpSetId::new(format!("s:no-such-set-{i}"))?,
            added: vec![Member::Net(Cidr::host(IpAddr::V4(Ipv4Addr::LOCALHOST)))],
            removed: vec![],
        }),
        _ => None,
    }
}

/// Applies updates along one [`UpdatePath`] and classifies on another thread
/// against what it publishes.
enum Target {
    Builder {
        builder: Box<Builder>,
        ids: Box<capo_policy::IdTable>,
        cell: Arc<GenerationCell>,
    },
    Plugin {
        plugin: Arc<Plugin>,
        core: Box<ControlCore<FakeVpp>>,
        /// The id of the plugin's active generation.
        generation: u64,
    },
}

impl Target {
    fn new(path: UpdatePath, state: &State, ids: capo_policy::IdTable) -> Result<Self, String> {
        match path {
            UpdatePath::Builder => {
                let mut builder = Box::new(Builder::new());
                let first = builder.build(state, &ids);
                Ok(Target::Builder {
                    builder,
                    ids: Box::new(ids),
                    cell: Arc::new(GenerationCell::new(first)),
                })
            }
            UpdatePath::Plugin => {
                let plugin = Arc::new(Plugin::new(PluginConfig::default()));
                // VPP has an interface for every endpoint, the host and the
                // replicas to come.
                let names: Vec<String> = policed_interfaces(state, &plugin.config.host_interface)
                    .into_iter()
                    .map(|(name, _, _)| name)
                    .chain((0..REPLICA_NAMES).map(replica_name))
                    .collect();
                let table: Vec<(&str, u32)> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.as_str(), 10 + i as u32))
                    .collect();
                let mut core = Box::new(plugin.control_core(FakeVpp::with(&table)).with_limits(
                    ChannelLimits {
                        max_frame_bytes: 1 << 30,
                        max_generation_bytes: 1 << 36,
                    },
                ));
                core.on_message(
                    ToPlugin {
                        msg: Some(to_plugin::Msg::Hello(Hello {
                            agent_version: "capo-bench".into(),
                            epoch: 1,
                            bindings: vec![],
                            // As capo-agent asks.
                            interfaces_when_changed: true,
                            interfaces_as_changes: true,
                        })),
                    },
                    0,
                );
                let snapshot = capo_felix::encode::snapshot(state);
                let mut reply = None;
                for chunk in generation_chunks(1, true, 0, snapshot, 4_096) {
                    reply = Some(core.on_message(chunk, 0));
                }
                applied(reply.unwrap_or_default())?;
                core.after_reply();
                Ok(Target::Plugin {
                    plugin,
                    core,
                    generation: 1,
                })
            }
        }
    }

    /// Applies one update; how long the path took (the plugin's: from the encoded
    /// generation to its reply) and the work after it (the plugin's after its
    /// reply, the builder's settle after its publish), or why it was refused.
    fn apply(
        &mut self,
        state: &mut State,
        update: Update,
    ) -> Result<(Duration, Option<Duration>), String> {
        match self {
            Target::Builder { builder, ids, cell } => {
                let t = Instant::now();
                let g = builder
                    .apply(state, ids, update)
                    .map_err(|e| e.to_string())?;
                cell.publish(g);
                let took = t.elapsed();
                // What the embedded dataplane does once it published: the spare
                // interface lists brought forward, freeing what only they held.
                let t = Instant::now();
                builder.settle();
                Ok((took, Some(t.elapsed())))
            }
            Target::Plugin {
                core, generation, ..
            } => {
                let next = *generation + 1;
                let msg = generation_message(
                    next,
                    false,
                    *generation,
                    vec![capo_felix::encode::update(&update)],
                    false,
                );
                let t = Instant::now();
                let reply = core.on_message(msg, 0);
                let took = t.elapsed();
                // What the plugin's connection does once the reply is written.
                let t = Instant::now();
                core.after_reply();
                let after = t.elapsed();
                applied(reply)?;
                *generation = next;
                // The bench's own copy follows, to draw the next updates from.
                state.apply(update).map_err(|e| e.to_string())?;
                Ok((took, Some(after)))
            }
        }
    }

    /// Starts the classifying thread: batches of `packets` against the current
    /// generation, counted into `classified`, until `stop`.
    fn load(
        &self,
        packets: Vec<(
            capo_policy::WorkloadKey,
            capo_policy::Direction,
            capo_policy::Packet,
        )>,
        stop: Arc<AtomicBool>,
        classified: Arc<AtomicU64>,
    ) -> std::thread::JoinHandle<()> {
        let current: Box<dyn Fn() -> Option<Held> + Send> = match self {
            Target::Builder { cell, .. } => {
                let cell = cell.clone();
                Box::new(move || Some(Held::Builder(cell.load_full())))
            }
            Target::Plugin { plugin, .. } => {
                let plugin = plugin.clone();
                Box::new(move || plugin.cell.load().map(Held::Plugin))
            }
        };
        std::thread::spawn(move || {
            let mut scratch = Scratch::default();
            let mut batch = Vec::with_capacity(capo_classifier::MAX_BATCH);
            while !stop.load(Ordering::Relaxed) {
                for chunk in packets.chunks(capo_classifier::MAX_BATCH) {
                    let Some(held) = current() else {
                        break;
                    };
                    let g = held.classifier();
                    batch.clear();
                    batch.extend(chunk.iter().filter_map(|(k, d, p)| {
                        Some((g.interface_of(&IfaceKind::Workload(k.clone()))?, *d, *p))
                    }));
                    // Decisions borrow the generation: a vector per batch (this thread
                    // is the load, not the measurement).
                    let mut out = Vec::with_capacity(batch.len());
                    g.classify_batch(&batch, &mut scratch, &mut out);
                    classified.fetch_add(out.len() as u64, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        })
    }
}

/// The generation the classifying thread holds for one batch.
enum Held {
    Builder(Arc<capo_classifier::Generation>),
    Plugin(Arc<capo_vpp_plugin::generation::Generation>),
}

impl Held {
    fn classifier(&self) -> &capo_classifier::Generation {
        match self {
            Held::Builder(g) => g,
            Held::Plugin(g) => g.classifier(),
        }
    }
}

/// The plugin's answer to a whole generation: applied, or why not.
fn applied(reply: FromPlugin) -> Result<(), String> {
    match reply.msg {
        Some(from_plugin::Msg::Applied(a)) if a.ok => Ok(()),
        Some(from_plugin::Msg::Applied(a)) => Err(a.error),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Runs `count` updates of each kind in `kinds` (of [`KINDS`], in that order) on
/// `kind`'s workload along `path` while a second thread classifies; `log` gets
/// progress lines.
///
/// # Errors
///
/// When the plugin refuses the workload's first, full generation.
pub fn run(
    kind: Kind,
    count: usize,
    kinds: &[&str],
    path: UpdatePath,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<UpdateRow>, String> {
    let w = generate(kind);
    let (mut state, ids) = w.state();
    let mut target = Target::new(path, &state, ids)?;
    let stop = Arc::new(AtomicBool::new(false));
    let classified = Arc::new(AtomicU64::new(0));
    log(&format!(
        "updates ({}): {}: {} members, {} rules; a second thread classifies {} packets in a loop",
        path.engine(),
        kind.name(),
        w.members,
        w.rules,
        w.packets.len()
    ));
    let load = target.load(w.packets.clone(), stop.clone(), classified.clone());
    let selector = w.selector_sets.clone();
    let cidr = sets_of(&state, |s| {
        s.kind() != IpSetKind::IpAndPort
            && s.members()
                .any(|m| matches!(m, Member::Net(c) if c.prefix_len() < 32))
    });
    let named = sets_of(&state, |s| s.kind() == IpSetKind::IpAndPort);
    let mut rows = Vec::new();
    let mut rng = Rng::new(99);
    for name in KINDS.into_iter().filter(|k| kinds.contains(k)) {
        let sets: &[IpSetId] = match name {
            "member-host" | "member-remove" => &selector,
            "member-cidr" => &cidr,
            "member-named-port" => &named,
            _ => &[],
        };
        let before = classified.load(Ordering::Relaxed);
        let mut samples = Vec::with_capacity(count);
        let mut after = Vec::with_capacity(count);
        let mut failed = 0usize;
        let mut undo = Vec::new();
        for i in 0..count {
            let Some(update) = next_update(name, i, &state, &mut rng, &mut undo, sets) else {
                break;
            };
            match target.apply(&mut state, update) {
                Ok((took, after_reply)) => {
                    samples.push(took.as_secs_f64() * 1e6);
                    after.extend(after_reply.map(|d| d.as_secs_f64() * 1e6));
                }
                Err(_) => failed += 1,
            }
        }
        // Leave the state as the workload's for the next kind.
        while let Some(u) = undo.pop() {
            let _ = target.apply(&mut state, u);
        }
        samples.sort_by(f64::total_cmp);
        after.sort_by(f64::total_cmp);
        let row = UpdateRow {
            engine: path.engine(),
            workload: kind.name(),
            update: name,
            applied: samples.len(),
            failed,
            p50_us: percentile(&samples, 50),
            p99_us: percentile(&samples, 99),
            max_us: samples.last().copied(),
            after_reply_p50_us: percentile(&after, 50),
            after_reply_p99_us: percentile(&after, 99),
            after_reply_max_us: after.last().copied(),
            classified_meanwhile: classified.load(Ordering::Relaxed) - before,
        };
        log(&format!(
            "updates ({}): {name}: {} applied, {failed} failed, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs{}; {} packets classified meanwhile",
            path.engine(),
            row.applied,
            row.p50_us.unwrap_or(f64::NAN),
            row.p99_us.unwrap_or(f64::NAN),
            row.max_us.unwrap_or(f64::NAN),
            row.after_reply_p99_us
                .map(|p99| {
                    let after = match path {
                        UpdatePath::Builder => "the settle after the publish",
                        UpdatePath::Plugin => "after the reply",
                    };
                    format!(" ({after}: p99 {p99:.1} µs)")
                })
                .unwrap_or_default(),
            row.classified_meanwhile
        ));
        rows.push(row);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind applies (or, for `rejected`, fails) every time, and the other thread
    /// classified while it ran.
    #[test]
    fn every_kind_runs_under_load() {
        let rows = run(Kind::K8s, 20, &KINDS, UpdatePath::Builder, &mut |_| {}).unwrap();
        assert_eq!(rows.len(), KINDS.len());
        for r in &rows {
            if r.update == "rejected" {
                assert_eq!((r.applied, r.failed), (0, 20), "{r:?}");
                assert_eq!(r.p99_us, None);
            } else {
                assert_eq!((r.applied, r.failed), (20, 0), "{r:?}");
                let (p50, p99, max) = (r.p50_us.unwrap(), r.p99_us.unwrap(), r.max_us.unwrap());
                assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r:?}");
                // The settle after each publish is timed apart.
                let (p50, p99, max) = (
                    r.after_reply_p50_us.unwrap(),
                    r.after_reply_p99_us.unwrap(),
                    r.after_reply_max_us.unwrap(),
                );
                assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r:?}");
            }
        }
        assert!(rows.iter().map(|r| r.classified_meanwhile).sum::<u64>() > 0);
    }

    /// The VPP plugin's path applies (or refuses) every update as the builder's does,
    /// with the plugin's generations classified meanwhile.
    #[test]
    fn every_kind_runs_through_the_plugin() {
        let rows = run(Kind::K8s, 10, &KINDS, UpdatePath::Plugin, &mut |_| {}).unwrap();
        assert_eq!(rows.len(), KINDS.len());
        for r in &rows {
            assert_eq!(r.engine, "plugin");
            let want = if r.update == "rejected" {
                (0, 10)
            } else {
                (10, 0)
            };
            assert_eq!((r.applied, r.failed), want, "{r:?}");
            // The work after each reply is timed apart, for every applied update.
            if r.applied > 0 {
                let (p50, p99, max) = (
                    r.after_reply_p50_us.unwrap(),
                    r.after_reply_p99_us.unwrap(),
                    r.after_reply_max_us.unwrap(),
                );
                assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r:?}");
            }
        }
        assert!(rows.iter().map(|r| r.classified_meanwhile).sum::<u64>() > 0);
    }

    /// A replica lists what the endpoint it copies lists, so it classifies with that
    /// endpoint's programs (laid out once); its removal returns to the workload.
    #[test]
    fn a_replica_shares_the_programs_of_the_endpoint_it_copies() {
        let w = generate(Kind::K8s);
        let (mut state, mut ids) = w.state();
        let original = state.clone();
        let mut builder = Builder::new();
        builder.build(&state, &ids);
        let (mut rng, mut undo) = (Rng::new(3), Vec::new());
        let add = next_update("endpoint-replica", 0, &state, &mut rng, &mut undo, &[]).unwrap();
        let Update::WorkloadUpdate(_, replica) = &add else {
            panic!("{add:?}")
        };
        let copied = state
            .workloads()
            .values()
            .find(|w| w.tiers == replica.tiers && w.profile_ids == replica.profile_ids)
            .map(|w| w.name.clone())
            .unwrap();
        let name = replica.name.clone();
        let g = builder.apply(&mut state, &mut ids, add).unwrap();
        let (a, b) = (g.interface(&name).unwrap(), g.interface(&copied).unwrap());
        for dir in capo_policy::Direction::BOTH {
            assert!(g.shares_program(a, b, dir), "{name} and {copied}, {dir:?}");
        }
        let back = next_update("endpoint-replica", 1, &state, &mut rng, &mut undo, &[]).unwrap();
        builder.apply(&mut state, &mut ids, back).unwrap();
        assert!(state.workloads() == original.workloads());
    }

    /// A unique endpoint's programs are its own: no other interface classifies with
    /// them.
    #[test]
    fn a_unique_endpoint_shares_no_program() {
        let w = generate(Kind::K8s);
        let (mut state, mut ids) = w.state();
        let mut builder = Builder::new();
        builder.build(&state, &ids);
        let (mut rng, mut undo) = (Rng::new(5), Vec::new());
        let add = next_update("endpoint-unique", 0, &state, &mut rng, &mut undo, &[]).unwrap();
        let Update::WorkloadUpdate(_, unique) = &add else {
            panic!("{add:?}")
        };
        assert!(unique
            .tiers
            .iter()
            .any(|t| t.ingress.len() > 1 || t.egress.len() > 1));
        let name = unique.name.clone();
        let g = builder.apply(&mut state, &mut ids, add).unwrap();
        let own = g.interface(&name).unwrap();
        let others: Vec<_> = state
            .workloads()
            .values()
            .filter(|w| w.name != name)
            .filter_map(|w| g.interface(&w.name))
            .collect();
        assert_eq!(others.len(), state.workloads().len() - 1);
        for dir in capo_policy::Direction::BOTH {
            assert!(
                others.iter().all(|o| !g.shares_program(own, *o, dir)),
                "{dir:?}"
            );
        }
    }

    /// A policy's add and removal goes in Felix's order (the policy before an endpoint
    /// lists it, the endpoint without it before the removal), every message changes
    /// the state, and the fourth leaves the workload's state as it was.
    #[test]
    fn policy_add_remove_follows_felix_order_and_returns_to_the_workload() {
        let w = generate(Kind::K8s);
        let (mut state, _) = w.state();
        let original = state.clone();
        let (mut rng, mut undo) = (Rng::new(7), Vec::new());
        let mut steps = Vec::new();
        for i in 0..4 {
            let u = next_update("policy-add-remove", i, &state, &mut rng, &mut undo, &[]).unwrap();
            steps.push(u.clone());
            assert_eq!(
                state.apply(u).unwrap(),
                capo_policy::Applied::Changed,
                "step {i}"
            );
            if i == 1 {
                let Some(Update::PolicyUpdate(added, _)) = steps.first() else {
                    panic!("the first step adds the policy: {steps:?}");
                };
                let listing: Vec<_> = state
                    .workloads()
                    .values()
                    .filter(|w| w.tiers.iter().any(|t| t.ingress.contains(added)))
                    .collect();
                assert_eq!(listing.len(), 1, "one endpoint lists the new policy");
            }
        }
        assert!(undo.is_empty());
        assert!(matches!(steps.last(), Some(Update::PolicyRemove(_))));
        assert!(
            state.policies() == original.policies() && state.workloads() == original.workloads(),
            "the cycle ends where it began"
        );
    }

    /// The new kinds run on every workload, W-seed's endpoint without tiers included.
    #[test]
    fn new_kinds_run_on_the_seed_workload() {
        let kinds = ["policy-add-remove", "set-add-remove", "host-metadata"];
        let rows = run(Kind::Seed, 8, &kinds, UpdatePath::Builder, &mut |_| {}).unwrap();
        for r in &rows {
            assert_eq!((r.applied, r.failed), (8, 0), "{r:?}");
        }
        assert_eq!(rows.len(), 3);
    }

    /// `--kinds` runs only the kinds named, in the benchmark's order.
    #[test]
    fn kinds_filter_runs_only_those_named() {
        let rows = run(
            Kind::K8s,
            3,
            &["policy", "member-cidr"],
            UpdatePath::Builder,
            &mut |_| {},
        )
        .unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.update).collect();
        assert_eq!(names, ["member-cidr", "policy"]);
    }

    #[test]
    fn percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50), Some(51.0));
        assert_eq!(percentile(&xs, 99), Some(100.0));
        assert_eq!(percentile(&[], 99), None);
    }
}
