//! The embedded software dataplane: the fast classifier and flow table inside the
//! agent, following its generations. Packets reach it through the Inject API (tests
//! and demos) or, with a DPDK port, from the port. It keeps its own copy of the
//! policy so that IP-set and policy changes apply incrementally
//! ([`capo_classifier::Builder::apply`]) rather than by a full rebuild.

use std::sync::Arc;
use std::time::Instant;

use capo_classifier::{
    parse_ethernet, Builder, Counters, FlowConfig, GenerationCell, Input, Timestamp, Worker,
};
use capo_policy::{Direction, IdTable, Packet, State, Update, Verdict, Views};
use capo_proto::capo::agent::v1 as api;

use crate::daemon::PolicySink;

/// The classifier, its published generation, one worker and its counters.
pub struct Embedded {
    builder: Builder,
    state: State,
    ids: IdTable,
    cell: Option<GenerationCell>,
    counters: Arc<Counters>,
    worker: Worker,
    started: Instant,
    scratch: Vec<Verdict>,
}

impl Embedded {
    /// An empty dataplane with the default flow table.
    pub fn new() -> Self {
        let counters = Arc::new(Counters::new());
        let worker = Worker::new(FlowConfig::default(), &counters);
        Embedded {
            builder: Builder::new(),
            state: State::new(),
            ids: IdTable::default(),
            cell: None,
            counters,
            worker,
            started: Instant::now(),
            scratch: Vec::new(),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn publish(&mut self, g: Arc<capo_classifier::Generation>) {
        match &self.cell {
            Some(cell) => cell.publish(g),
            None => self.cell = Some(GenerationCell::new(g)),
        }
    }
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded::new()
    }
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

impl PolicySink for Embedded {
    fn name(&self) -> &str {
        "embedded"
    }

    fn commit(
        &mut self,
        _generation: u64,
        state: &State,
        ids: &IdTable,
        delta: Option<&[Update]>,
    ) -> Result<String, String> {
        let t0 = Instant::now();
        let g = match delta {
            Some(updates) if self.cell.is_some() => {
                let mut last = None;
                for u in updates {
                    last = Some(
                        self.builder
                            .apply(&mut self.state, &mut self.ids, u.clone())
                            .map_err(|e| e.to_string())?,
                    );
                }
                match last {
                    Some(g) => g,
                    None => return Ok("unchanged".into()),
                }
            }
            _ => {
                self.state = state.clone();
                self.ids = ids.clone();
                self.builder = Builder::new();
                self.builder.build(&self.state, &self.ids)
            }
        };
        let id = g.id();
        self.publish(g);
        Ok(format!(
            "classifier generation {id:?} in {}us",
            t0.elapsed().as_micros()
        ))
    }

    fn counters(&self, state: &State, ids: &IdTable) -> Option<api::CountersReply> {
        let views = Views::new(state, ids);
        let rules = views
            .numbered_rules()
            .into_iter()
            .map(|r| {
                let c = self.counters.rule(r.id);
                api::RuleCounters {
                    rule_id: r.id,
                    rule: r.line,
                    owner: r.owner,
                    software_packets: c.packets,
                    software_bytes: c.bytes,
                    nic_packets: 0,
                    nic_bytes: 0,
                    placement: api::Placement::Software as i32,
                }
            })
            .collect();
        let mut interfaces = Vec::new();
        let mut names: Vec<String> = vec![ids.host_interface().to_string()];
        names.extend(state.workloads().values().map(|w| w.name.clone()));
        names.extend(
            state
                .host_endpoints()
                .values()
                .filter(|h| !h.name.is_empty() && h.name != "*")
                .map(|h| h.name.clone()),
        );
        let (mut allowed, mut denied) = (0, 0);
        for name in names {
            let Some(idx) = ids.interface(&name) else {
                continue;
            };
            for dir in Direction::BOTH {
                let v = self.counters.interface(idx, dir);
                allowed += v.allow;
                denied += v.deny;
                interfaces.push(api::InterfaceCounters {
                    interface: name.clone(),
                    sw_if_index: idx,
                    direction: dir_name(dir).into(),
                    allowed_packets: v.allow,
                    denied_packets: v.deny,
                    ..Default::default()
                });
            }
        }
        let flows = self.counters.flows();
        Some(api::CountersReply {
            generation: 0,
            rules,
            interfaces,
            totals: Some(api::Totals {
                packets: allowed + denied,
                allowed,
                denied,
                nic_decided: 0,
                software_decided: allowed + denied,
                flow_table_hits: flows.hits,
            }),
        })
    }

    fn decided_in(&self, _interface: &str, _dir: Direction, _pkt: &Packet) -> Option<&'static str> {
        None
    }

    fn inject(
        &mut self,
        interface: &str,
        dir: Direction,
        frames: &[Vec<u8>],
    ) -> Option<Result<api::InjectReply, String>> {
        let Some(cell) = &self.cell else {
            return Some(Err("the embedded dataplane has no generation yet".into()));
        };
        let Some(sw_if_index) = self.ids.interface(interface) else {
            return Some(Err(format!(
                "interface: {interface:?} is not a known interface"
            )));
        };
        let mut batch = Vec::with_capacity(frames.len());
        for (i, f) in frames.iter().enumerate() {
            match parse_ethernet(f) {
                Ok(packet) => batch.push(Input {
                    sw_if_index,
                    dir,
                    packet,
                    len: u32::try_from(f.len()).unwrap_or(u32::MAX),
                }),
                Err(e) => return Some(Err(format!("frames[{i}]: {e}"))),
            }
        }
        let generation = cell.load_full();
        let now = self.now();
        let mut reply = api::InjectReply::default();
        for chunk in batch.chunks(capo_classifier::MAX_BATCH) {
            self.worker
                .process(&generation, chunk, now, &mut self.scratch);
            for v in &self.scratch {
                match v {
                    Verdict::Allow => reply.allowed += 1,
                    Verdict::Deny => reply.denied += 1,
                }
                reply.verdicts.push(
                    match v {
                        Verdict::Allow => "allow",
                        Verdict::Deny => "deny",
                    }
                    .into(),
                );
            }
        }
        Some(Ok(reply))
    }
}
