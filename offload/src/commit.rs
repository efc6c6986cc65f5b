//! Generation commits on a NIC (DESIGN.md §4; offload.md §6.2–6.3).
//!
//! - **Versioned groups** (mlx5): generation N+1's rules go into the group that is not
//!   live (groups 1 and 2 alternate), each validated then created, highest priority
//!   first. Then one dispatcher rule in group 0 (`eth → JUMP group`) is replaced
//!   make-before-break: the new one is inserted at the other root priority, the old one
//!   destroyed — the only atomic point; every packet takes exactly one path. Marks carry
//!   the generation, and software keeps N and N+1 resident across the flip.
//! - **Drop-only** (no groups): hardware drops not in the new plan are removed first,
//!   then software switches, then the new drops are added — hardware only ever drops
//!   what the active software generation drops.
//! - **Failure**: any refusal while building N+1 rolls back what was created (reverse
//!   order); the dispatcher is removed so the NIC decides nothing, software runs N+1
//!   complete, and the old group is retired. Software is always complete, so the NIC
//!   only ever loses its share. `rte_flow_flush` is never used.
//!
//! The committer also keeps the software side's view ([`SoftwareView`]): which
//! generations are resident (their marks are trusted) and which is active. An observer
//! is called after every NIC operation, so tests can send packets at every
//! intermediate state.

use std::collections::BTreeSet;

use crate::backend::{FlowBackend, FlowCount, FlowHandle};
use crate::caps::OffloadMode;
use crate::error::FlowError;
use crate::flow::{Action, Attr, FlowRule, Group, Item, Priority};
use crate::plan::{OffloadPlan, Role};

/// What software holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SoftwareView {
    /// The generation unmarked packets are classified with.
    pub active: Option<u64>,
    /// Generations whose marks software trusts (active included).
    pub resident: BTreeSet<u64>,
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The plan is live on the NIC (drop-only: the rules that could be added).
    Offloaded {
        /// Rules installed for the generation.
        installed: usize,
        /// Rules of the plan the device refused (drop-only mode skips them).
        refused: usize,
    },
    /// The NIC refused part of the plan: it decides nothing now, software runs the
    /// generation completely.
    SoftwareOnly {
        /// The refusal.
        error: FlowError,
        /// Index of the refused rule in the plan.
        rule: usize,
        /// Its role.
        role: Role,
    },
}

/// Counters folded from a retired generation's rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retired {
    /// Generation.
    pub generation: u64,
    /// Per plan rule index, its final COUNT (rules without counters absent).
    pub counts: Vec<(usize, FlowCount)>,
}

#[derive(Debug, Clone)]
struct LiveGen {
    generation: u64,
    group: Group,
    /// Created rules, in creation order, with their plan index.
    handles: Vec<(usize, FlowHandle, FlowRule)>,
}

/// Drives generation commits on one port.
#[derive(Debug, Clone, Default)]
pub struct Committer {
    sw: SoftwareView,
    live: Option<LiveGen>,
    retiring: Vec<LiveGen>,
    dispatcher: Option<(FlowHandle, Priority)>,
}

/// Root priorities the dispatcher alternates between.
const DISPATCH_PRIORITIES: [u32; 2] = [0, 1];

impl Committer {
    /// A committer for a port with nothing installed.
    pub fn new() -> Self {
        Committer::default()
    }

    /// Software's view.
    pub fn software(&self) -> &SoftwareView {
        &self.sw
    }

    /// The generation whose rules the NIC applies, if any.
    pub fn nic_generation(&self) -> Option<u64> {
        self.live.as_ref().map(|l| l.generation)
    }

    /// Commits `plan` (its generation) through `nic`, calling `observe` after each NIC
    /// or software step.
    pub fn commit<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        plan: &OffloadPlan,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> CommitOutcome {
        match plan.mode {
            OffloadMode::VersionedGroups => self.commit_groups(nic, plan, observe),
            // Flat marks commit as drops do: a mark names its generation, so the old
            // generation's marked rules differ from the new ones and leave before
            // software switches (break before make); then the new ones go in.
            OffloadMode::DropOnly | OffloadMode::FlatMarks => {
                self.commit_drop_only(nic, plan, observe)
            }
            OffloadMode::SoftwareOnly => {
                self.sw.resident.insert(plan.generation);
                observe(nic, &self.sw);
                self.remove_dispatcher(nic, observe);
                self.activate(plan.generation, observe, nic);
                if let Some(old) = self.live.take() {
                    self.retiring.push(old);
                }
                CommitOutcome::Offloaded {
                    installed: 0,
                    refused: 0,
                }
            }
        }
    }

    fn activate<B: FlowBackend>(
        &mut self,
        generation: u64,
        observe: &mut dyn FnMut(&B, &SoftwareView),
        nic: &B,
    ) {
        self.sw.resident.insert(generation);
        self.sw.active = Some(generation);
        observe(nic, &self.sw);
    }

    fn remove_dispatcher<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) {
        if let Some((h, _)) = self.dispatcher.take() {
            // A failure leaves nothing to do: the device refuses or is gone.
            let _ = nic.destroy(h);
            observe(nic, &self.sw);
        }
    }

    fn commit_groups<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        plan: &OffloadPlan,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> CommitOutcome {
        // Step 2: software loads N+1 beside N.
        self.sw.resident.insert(plan.generation);
        observe(nic, &self.sw);
        // A group neither live nor still holding a retiring generation.
        let busy: Vec<Group> = self
            .live
            .iter()
            .chain(&self.retiring)
            .map(|l| l.group)
            .collect();
        let group = (1u32..)
            .map(Group)
            .find(|g| !busy.contains(g))
            .unwrap_or(Group(1));
        // Step 3: build the new group, validating each rule first.
        let mut created: Vec<(usize, FlowHandle, FlowRule)> = Vec::new();
        for (i, pr) in plan.rules.iter().enumerate() {
            let a = *pr.flow.attr();
            let rule = pr.flow.with_attr(Attr { group, ..a });
            let res = nic.validate(&rule).and_then(|()| nic.create(&rule));
            match res {
                Ok(h) => {
                    created.push((i, h, rule));
                    observe(nic, &self.sw);
                }
                Err(error) => {
                    self.abort(nic, created, plan.generation, observe);
                    return CommitOutcome::SoftwareOnly {
                        error,
                        rule: i,
                        role: pr.role.clone(),
                    };
                }
            }
        }
        // Step 4: flip the dispatcher, make-before-break.
        let prio = match self.dispatcher {
            Some((_, Priority(p))) if p == DISPATCH_PRIORITIES[0] => DISPATCH_PRIORITIES[1],
            _ => DISPATCH_PRIORITIES[0],
        };
        let dispatch = FlowRule::new(
            Attr::ingress(Group::ROOT, Priority(prio)),
            &[Item::Eth(None)],
            &[Action::Jump(group)],
        );
        let res = match dispatch {
            Ok(d) => nic.validate(&d).and_then(|()| nic.create(&d)),
            Err(_) => Err(FlowError::new(
                crate::error::FlowErrorKind::Invalid,
                "dispatcher rule",
            )),
        };
        let new_dispatch = match res {
            Ok(h) => h,
            Err(error) => {
                self.abort(nic, created, plan.generation, observe);
                return CommitOutcome::SoftwareOnly {
                    error,
                    rule: plan.rules.len(),
                    role: Role::CatchAll,
                };
            }
        };
        observe(nic, &self.sw);
        if let Some((old, _)) = self.dispatcher.replace((new_dispatch, Priority(prio))) {
            let _ = nic.destroy(old);
            observe(nic, &self.sw);
        }
        self.activate(plan.generation, observe, nic);
        let installed = created.len();
        if let Some(old) = self.live.replace(LiveGen {
            generation: plan.generation,
            group,
            handles: created,
        }) {
            self.retiring.push(old);
        }
        CommitOutcome::Offloaded {
            installed,
            refused: 0,
        }
    }

    /// Rolls back a partial build, takes the NIC out of the decision, and runs the
    /// generation in software.
    fn abort<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        created: Vec<(usize, FlowHandle, FlowRule)>,
        generation: u64,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) {
        for (_, h, _) in created.into_iter().rev() {
            let _ = nic.destroy(h);
            observe(nic, &self.sw);
        }
        self.remove_dispatcher(nic, observe);
        if let Some(old) = self.live.take() {
            self.retiring.push(old);
        }
        self.activate(generation, observe, nic);
    }

    fn commit_drop_only<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        plan: &OffloadPlan,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> CommitOutcome {
        let same = |a: &FlowRule, b: &FlowRule| {
            a.attr() == b.attr() && a.pattern() == b.pattern() && a.fate() == b.fate()
        };
        let wanted: Vec<&FlowRule> = plan.rules.iter().map(|r| &r.flow).collect();
        // 1. Remove hardware drops the new generation does not make.
        let mut keep: Vec<(usize, FlowHandle, FlowRule)> = Vec::new();
        if let Some(old) = self.live.take() {
            for (i, h, r) in old.handles.into_iter().rev() {
                if wanted.iter().any(|w| same(w, &r)) {
                    keep.push((i, h, r));
                } else {
                    let _ = nic.destroy(h);
                    observe(nic, &self.sw);
                }
            }
            keep.reverse();
        }
        // 2. Software switches.
        let old_gen = self.sw.active;
        self.activate(plan.generation, observe, nic);
        if let Some(g) = old_gen.filter(|g| *g != plan.generation) {
            self.sw.resident.remove(&g);
            observe(nic, &self.sw);
        }
        // 3. Add the new drops; refusals skip a rule (drops are independent).
        let mut refused = 0;
        let mut handles = Vec::new();
        for (i, pr) in plan.rules.iter().enumerate() {
            if let Some(pos) = keep.iter().position(|(_, _, r)| same(r, &pr.flow)) {
                let (_, h, r) = keep.remove(pos);
                handles.push((i, h, r));
                continue;
            }
            match nic.validate(&pr.flow).and_then(|()| nic.create(&pr.flow)) {
                Ok(h) => {
                    handles.push((i, h, pr.flow.clone()));
                    observe(nic, &self.sw);
                }
                Err(e) if e.kind.is_fatal() => {
                    for (_, h, _) in handles.drain(..).rev() {
                        let _ = nic.destroy(h);
                        observe(nic, &self.sw);
                    }
                    return CommitOutcome::SoftwareOnly {
                        error: e,
                        rule: i,
                        role: pr.role.clone(),
                    };
                }
                Err(_) => refused += 1,
            }
        }
        let installed = handles.len();
        self.live = Some(LiveGen {
            generation: plan.generation,
            group: Group::ROOT,
            handles,
        });
        CommitOutcome::Offloaded { installed, refused }
    }

    /// Retires generations no longer live (call once no packet can carry their marks):
    /// reads their final counters and destroys their rules in reverse creation order.
    pub fn retire<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> Vec<Retired> {
        let mut out = Vec::new();
        for old in std::mem::take(&mut self.retiring) {
            let mut counts = Vec::new();
            for (i, h, r) in old.handles.iter().rev() {
                if r.counts() {
                    if let Ok(c) = nic.query_count(*h, false) {
                        counts.push((*i, c));
                    }
                }
                let _ = nic.destroy(*h);
                observe(nic, &self.sw);
            }
            if self.sw.active != Some(old.generation) {
                self.sw.resident.remove(&old.generation);
                observe(nic, &self.sw);
            }
            out.push(Retired {
                generation: old.generation,
                counts,
            });
        }
        out
    }

    /// Counters of the live generation's rules, by plan index.
    pub fn live_counts<B: FlowBackend>(&self, nic: &mut B) -> Vec<(usize, FlowCount)> {
        self.live_counts_observed(nic, &mut |_, _| {})
    }

    /// [`Committer::live_counts`], calling `observe` after each query (a query is a
    /// call into the device: a thread that also receives packets can serve them
    /// in between). Only rules with a COUNT action are queried.
    pub fn live_counts_observed<B: FlowBackend>(
        &self,
        nic: &mut B,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> Vec<(usize, FlowCount)> {
        let mut out = Vec::new();
        if let Some(l) = &self.live {
            for (i, h, r) in &l.handles {
                if !r.counts() {
                    continue;
                }
                if let Ok(c) = nic.query_count(*h, false) {
                    out.push((*i, c));
                }
                observe(nic, &self.sw);
            }
        }
        out
    }
}
