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
//! - **A dispatcher the device will not destroy** may go on sending packets to its
//!   group, and what a group without a matching rule does with a packet is up to the
//!   driver. So that group is not built into again, its retirement keeps its
//!   catch-all (packets it takes go to software, which decides them with the active
//!   generation), and every commit (in place too) and retirement tries the destroy
//!   again; once it succeeds the group retires whole. A new dispatcher must outrank
//!   every stuck one and share no priority with any: where no root priority is left
//!   for it, the commit leaves the NIC out and software decides.
//!
//! The committer also keeps the software side's view ([`SoftwareView`]): which
//! generations are resident (their marks are trusted) and which is active. An observer
//! is called after every NIC operation, so tests can send packets at every
//! intermediate state.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::atom::Atom;
use crate::backend::{FlowBackend, FlowCount, FlowHandle};
use crate::caps::OffloadMode;
use crate::error::FlowError;
use crate::flow::{Action, Attr, FlowRule, Group, Item, Priority};
use crate::plan::{LearnedDrop, OffloadPlan, Role};
use capo_policy::Packet;

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

/// How a commit in place ([`Committer::refresh`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The live group holds the new plan.
    Refreshed {
        /// Rules created.
        inserted: usize,
        /// Rules left in place.
        kept: usize,
        /// Counts of the rules destroyed, by their index in the plan they came from.
        destroyed: Vec<(usize, Option<FlowCount>)>,
    },
    /// The rules would not fit (nothing changed), or the device refused a new rule:
    /// the rules created for the new plan are removed again, and the installed plan
    /// stays live, less the rules step 1 removed (nothing left relies on them).
    Refused {
        /// The refusal.
        error: FlowError,
        /// Index of the refused rule in the new plan.
        rule: usize,
        /// Its role.
        role: Role,
        /// Counts of the installed rules removed, by their index in its plan.
        destroyed: Vec<(usize, Option<FlowCount>)>,
        /// Entries the commit needed at its peak, and entries the table held when
        /// it refused (a smaller plan may fit: the difference).
        needed: usize,
        /// See `needed`.
        held: usize,
    },
    /// The device failed to destroy a rule, or failed fatally (gone, EIO). The refresh
    /// stops where it is, which is a safe state, and takes the NIC out of the
    /// decision: the dispatcher is removed (if the device refuses that too, it is
    /// stuck, as the module doc says, and the rules it leads to are safe as they
    /// are), software decides everything with the same generation, and what is left
    /// of the group is retired with [`Committer::retire`].
    Failed {
        /// The failure.
        error: FlowError,
        /// Whether the dispatcher was removed (else the rules left still decide).
        dispatcher_removed: bool,
        /// Counts of the installed rules removed before it, by their index in its
        /// plan.
        destroyed: Vec<(usize, Option<FlowCount>)>,
    },
    /// No group of the plan's generation is live (or the device has no groups):
    /// commit the plan as a new generation.
    NotLive,
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
    /// Per plan index, the plan indices of the rules it relies on
    /// ([`crate::plan::PlannedRule::relies_on`]).
    relies: Vec<Vec<usize>>,
    /// Per plan index, whether every decision relies on it (the fragment and source
    /// punts, the catch-all): a commit in place removes it only once its
    /// replacement is in.
    pinned: Vec<bool>,
}

impl LiveGen {
    /// The same generation without the rules marked `gone` (by handle position).
    fn without(self, gone: &[bool]) -> Self {
        let handles = self
            .handles
            .into_iter()
            .zip(gone)
            .filter(|(_, g)| !**g)
            .map(|(x, _)| x)
            .collect();
        LiveGen { handles, ..self }
    }

    fn of(plan: &OffloadPlan, group: Group, handles: Vec<(usize, FlowHandle, FlowRule)>) -> Self {
        LiveGen {
            generation: plan.generation,
            group,
            handles,
            relies: plan.rules.iter().map(|r| r.relies_on.clone()).collect(),
            pinned: plan
                .rules
                .iter()
                .map(|r| {
                    matches!(
                        r.role,
                        Role::FragmentPunt | Role::SourcePunt | Role::CatchAll
                    )
                })
                .collect(),
        }
    }
}

/// How [`Committer::learn_drop`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LearnOutcome {
    /// The drop is in the live generation's table; the oldest learned drops made
    /// room for it (`evicted`: their packets and final counts; more than one when
    /// the room shrank).
    Installed {
        /// The learned drops evicted, with their counts when they had a counter.
        evicted: Vec<(Packet, Option<FlowCount>)>,
    },
    /// The same drop is installed already.
    Known,
    /// Its generation is not the one the NIC applies and software classifies with,
    /// or the NIC decides nothing now (no dispatcher): nothing was installed.
    NotLive,
    /// No room is set aside for learned drops.
    NoRoom,
    /// The device refused it (table full, or a match it cannot take): nothing was
    /// installed; `evicted` as for [`LearnOutcome::Installed`] (learned drops that
    /// went to make room before the refusal).
    Refused {
        /// The refusal.
        error: FlowError,
        /// The learned drops evicted, with their counts when they had a counter.
        evicted: Vec<(Packet, Option<FlowCount>)>,
    },
}

/// One learned drop in the table.
#[derive(Debug, Clone)]
struct Learned {
    atom: Atom,
    packet: Packet,
    handle: FlowHandle,
    rule: FlowRule,
}

/// A dispatcher rule: group 0, `eth → JUMP group` at a root priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dispatcher {
    handle: FlowHandle,
    priority: Priority,
    group: Group,
}

/// Whether a rule is a catch-all: it takes every packet of its group to software.
fn is_catch_all(rule: &FlowRule) -> bool {
    rule.pattern() == [Item::Eth(None)]
        && !matches!(rule.fate(), Some(Action::Drop) | Some(Action::Jump(_)))
}

/// Drives generation commits on one port.
#[derive(Debug, Clone, Default)]
pub struct Committer {
    sw: SoftwareView,
    live: Option<LiveGen>,
    retiring: Vec<LiveGen>,
    dispatcher: Option<Dispatcher>,
    /// Dispatchers the device refused to destroy (it is still there): each may
    /// still send packets to its group, so that group keeps a catch-all and is not
    /// built into again, and no new dispatcher takes its priority, until a later
    /// try destroys it.
    stuck: Vec<Dispatcher>,
    /// Drops learned for the live generation ([`Committer::learn_drop`]), oldest
    /// first. A commit removes them first; a refresh keeps those that fit and that
    /// the new plan does not hold itself.
    learned: VecDeque<Learned>,
    /// What those removals counted, until [`Committer::take_forgotten`].
    forgotten: Vec<(Packet, Option<FlowCount>)>,
}

/// Reads a rule's final count (rules with a COUNT action) and destroys it.
fn final_count<B: FlowBackend>(
    nic: &mut B,
    h: FlowHandle,
    r: &FlowRule,
) -> Result<Option<FlowCount>, FlowError> {
    let count = if r.counts() {
        nic.query_count(h, false).ok()
    } else {
        None
    };
    nic.destroy(h)?;
    Ok(count)
}

/// How a commit ends that a stuck dispatcher left no working place for a new one.
fn no_dispatcher(plan: &OffloadPlan, why: &'static str) -> CommitOutcome {
    CommitOutcome::SoftwareOnly {
        error: FlowError::new(crate::error::FlowErrorKind::Busy, why),
        rule: plan.rules.len(),
        role: Role::CatchAll,
    }
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

    /// Whether rules of a generation no longer live (or left by a failed commit in
    /// place) wait for [`Committer::retire`].
    pub fn has_retiring(&self) -> bool {
        !self.retiring.is_empty()
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
        // Learned drops are the live plan's; the commit works on the plans alone.
        self.set_learned_aside(nic, false);
        self.retry_stuck(nic, observe);
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

    /// Takes the NIC out of the decision; false when the device kept the dispatcher
    /// (it is then stuck).
    fn remove_dispatcher<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> bool {
        match self.dispatcher.take() {
            Some(d) => {
                let gone = self.destroy_dispatcher(nic, d);
                observe(nic, &self.sw);
                gone
            }
            None => true,
        }
    }

    /// Destroys a dispatcher; one the device refuses joins the stuck ones (a device
    /// that is gone took it along). Whether it is gone.
    fn destroy_dispatcher<B: FlowBackend>(&mut self, nic: &mut B, d: Dispatcher) -> bool {
        match nic.destroy(d.handle) {
            Err(e) if e.kind != crate::error::FlowErrorKind::Io => {
                self.stuck.push(d);
                false
            }
            _ => true,
        }
    }

    /// Tries again to destroy the dispatchers the device refused before.
    fn retry_stuck<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) {
        for d in std::mem::take(&mut self.stuck) {
            if self.destroy_dispatcher(nic, d) {
                observe(nic, &self.sw);
            }
        }
    }

    /// Dispatchers the device refused to destroy, still installed.
    pub fn stuck_dispatchers(&self) -> usize {
        self.stuck.len()
    }

    fn commit_groups<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        plan: &OffloadPlan,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> CommitOutcome {
        // The new dispatcher's root priority, chosen first: one no other dispatcher
        // holds (two at one priority would both match every packet, which rte_flow
        // leaves undefined) and above every stuck one (below one, it would never see
        // a packet). With none, the NIC is left out before anything is built.
        let live = self.dispatcher.map(|d| d.priority.0);
        let prio = DISPATCH_PRIORITIES
            .into_iter()
            .find(|p| Some(*p) != live && self.stuck.iter().all(|d| *p < d.priority.0));
        let Some(prio) = prio else {
            self.abort(nic, Vec::new(), Group::ROOT, plan.generation, observe);
            return no_dispatcher(
                plan,
                "a dispatcher rule the device will not destroy holds the root priority a new one needs",
            );
        };
        // Step 2: software loads N+1 beside N.
        self.sw.resident.insert(plan.generation);
        observe(nic, &self.sw);
        // A group neither live, nor still holding a retiring generation, nor where a
        // stuck dispatcher leads.
        let busy: Vec<Group> = self
            .live
            .iter()
            .chain(&self.retiring)
            .map(|l| l.group)
            .chain(self.stuck.iter().map(|d| d.group))
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
                    self.abort(nic, created, group, plan.generation, observe);
                    return CommitOutcome::SoftwareOnly {
                        error,
                        rule: i,
                        role: pr.role.clone(),
                    };
                }
            }
        }
        // Step 4: flip the dispatcher, make-before-break, at the priority chosen above.
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
                self.abort(nic, created, group, plan.generation, observe);
                return CommitOutcome::SoftwareOnly {
                    error,
                    rule: plan.rules.len(),
                    role: Role::CatchAll,
                };
            }
        };
        observe(nic, &self.sw);
        let new_dispatcher = Dispatcher {
            handle: new_dispatch,
            priority: Priority(prio),
            group,
        };
        if let Some(old) = self.dispatcher.replace(new_dispatcher) {
            let gone = self.destroy_dispatcher(nic, old);
            observe(nic, &self.sw);
            if !gone && old.priority.0 < prio {
                // The old dispatcher stays and outranks the new one: packets still
                // go to the old group, which retires to its catch-all. The new one
                // and its group come out again, and software decides.
                self.abort(nic, created, group, plan.generation, observe);
                return no_dispatcher(
                    plan,
                    "the old dispatcher rule would not go and outranks the new one",
                );
            }
        }
        self.activate(plan.generation, observe, nic);
        let installed = created.len();
        if let Some(old) = self.live.replace(LiveGen::of(plan, group, created)) {
            self.retiring.push(old);
        }
        CommitOutcome::Offloaded {
            installed,
            refused: 0,
        }
    }

    /// Rolls back a partial build, takes the NIC out of the decision, and runs the
    /// generation in software.
    ///
    /// `created` are the new generation's rules, in `group`: one the device will
    /// not destroy keeps the group busy, retiring, until a retirement destroys it
    /// (all of them, where a stuck dispatcher leads to the group).
    fn abort<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        created: Vec<(usize, FlowHandle, FlowRule)>,
        group: Group,
        generation: u64,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) {
        self.remove_dispatcher(nic, observe);
        // A stuck dispatcher that leads to the new group keeps it whole (retiring,
        // its catch-all kept): emptied, the group would take packets it has no rule
        // for once an older dispatcher above goes.
        let left = if self.stuck.iter().any(|d| d.group == group) {
            created
        } else {
            let mut left = Vec::new();
            for (i, h, r) in created.into_iter().rev() {
                if let Err(e) = nic.destroy(h) {
                    if e.kind != crate::error::FlowErrorKind::Io {
                        left.push((i, h, r));
                    }
                }
                observe(nic, &self.sw);
            }
            left.reverse();
            left
        };
        if let Some(old) = self.live.take() {
            self.retiring.push(old);
        }
        if !left.is_empty() {
            self.retiring.push(LiveGen {
                generation,
                group,
                handles: left,
                relies: Vec::new(),
                pinned: Vec::new(),
            });
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
            let mut stuck = Vec::new();
            for (i, h, r) in old.handles.iter().rev() {
                if wanted.iter().any(|w| same(w, r)) {
                    keep.push((*i, *h, r.clone()));
                } else {
                    if let Err(e) = nic.destroy(*h) {
                        if e.kind != crate::error::FlowErrorKind::Io {
                            stuck.push((*i, *h, r.clone()));
                        }
                    }
                    observe(nic, &self.sw);
                }
            }
            keep.reverse();
            // What the device would not destroy is destroyed again on retirement.
            if !stuck.is_empty() {
                self.retiring.push(LiveGen {
                    handles: stuck,
                    ..old
                });
            }
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
            relies: Vec::new(),
            pinned: Vec::new(),
        });
        CommitOutcome::Offloaded { installed, refused }
    }

    /// Commits `plan`, a re-plan of the live generation (the same policy, new hit
    /// counters, renumbered by [`crate::plan::carry_over`]), into the live group: the
    /// rules both plans hold stay in place. In three steps, each rule's final count
    /// read before it goes:
    ///
    /// 1. the installed plan's other rules that no staying rule relies on (directly
    ///    or through others) are destroyed, lowest priority first, so the table
    ///    needs little more room than the larger plan (the punts and the catch-all
    ///    every decision relies on stay until step 3);
    /// 2. the new plan's other rules are created in its order (highest priority
    ///    first: a decision after what it relies on);
    /// 3. the installed plan's remaining rules (what staying decisions relied on
    ///    until the new plan's covers were in) are destroyed, lowest priority first.
    ///
    /// Every state in between is safe: both plans decide with the same generation's
    /// policy, and every installed decision has what it relies on in one of the two
    /// plans above it. So for any packet, the highest-priority rule it matches is a
    /// punt, an exact flow (decided as the policy decides it), or a decision none of
    /// whose protections matches it, which is a right decision. Software's view does
    /// not change. The commit is refused up front when its peak would not fit
    /// `capacity` entries (or the device's); a failed destroy or a fatal error takes
    /// the NIC out of the decision ([`RefreshOutcome::Failed`]).
    pub fn refresh<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        plan: &OffloadPlan,
        capacity: u32,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> RefreshOutcome {
        // A stuck dispatcher that goes now hands its packets to the live one.
        self.retry_stuck(nic, observe);
        // Learned drops may stay (the same policy decides), but one the new plan
        // holds as an exact flow goes first, so no two rules match at one priority
        // (removing a drop only leaves its packets to software).
        let planned: Vec<Vec<Item>> = plan
            .rules
            .iter()
            .filter(|r| matches!(r.role, Role::ExactFlow { .. }))
            .map(|r| r.flow.pattern().to_vec())
            .collect();
        let (dup, keep): (VecDeque<Learned>, VecDeque<Learned>) = std::mem::take(&mut self.learned)
            .into_iter()
            .partition(|l| planned.iter().any(|p| p[..] == *l.rule.pattern()));
        self.learned = dup;
        self.set_learned_aside(nic, false);
        self.learned.extend(keep);
        let out = self.refresh_plan(nic, plan, capacity, observe);
        if !matches!(out, RefreshOutcome::Refreshed { .. }) {
            self.set_learned_aside(nic, false);
        }
        out
    }

    /// [`Committer::refresh`] of the plan's rules; learned drops are kept while they
    /// fit beside the commit's peak.
    fn refresh_plan<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        plan: &OffloadPlan,
        capacity: u32,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> RefreshOutcome {
        let dispatcher = usize::from(self.dispatcher.is_some()) + self.stuck.len();
        let live_here = self.live.as_ref().is_some_and(|l| {
            l.generation == plan.generation && plan.mode == OffloadMode::VersionedGroups
        });
        let Some(live) = self.live.take().filter(|_| live_here) else {
            return RefreshOutcome::NotLive;
        };
        let group = live.group;
        let in_group = |pr: &crate::plan::PlannedRule| {
            let a = *pr.flow.attr();
            pr.flow.with_attr(Attr { group, ..a })
        };
        let n = live.handles.len();
        // Which installed rule each new one is, if any.
        let mut installed: HashMap<FlowRule, Vec<usize>> = HashMap::new();
        for (k, (_, _, r)) in live.handles.iter().enumerate().rev() {
            installed.entry(r.clone()).or_default().push(k);
        }
        let mut claims: Vec<Option<usize>> = Vec::with_capacity(plan.rules.len());
        let mut claimed = vec![false; n];
        for pr in &plan.rules {
            let k = installed.get_mut(&in_group(pr)).and_then(Vec::pop);
            if let Some(k) = k {
                claimed[k] = true;
            }
            claims.push(k);
        }
        let new_only = claims.iter().filter(|c| c.is_none()).count();
        // What staying rules rely on, directly or through others, and what every
        // decision relies on, stays until step 3.
        let by_index: HashMap<usize, usize> = live
            .handles
            .iter()
            .enumerate()
            .map(|(k, (i, _, _))| (*i, k))
            .collect();
        let mut needed: Vec<bool> = (0..n)
            .map(|k| claimed[k] || live.pinned.get(live.handles[k].0) == Some(&true))
            .collect();
        let mut stack: Vec<usize> = (0..n).filter(|&k| needed[k]).collect();
        while let Some(k) = stack.pop() {
            let i = live.handles[k].0;
            for dep in live.relies.get(i).into_iter().flatten() {
                if let Some(&d) = by_index.get(dep) {
                    if !needed[d] {
                        needed[d] = true;
                        stack.push(d);
                    }
                }
            }
        }
        let early: Vec<usize> = (0..n).filter(|&k| !needed[k]).collect();
        // Refuse up front what cannot fit at the peak, rather than create hundreds of
        // rules to remove them again.
        let room = nic.caps().capacity.min(capacity) as usize;
        let peak = n - early.len() + dispatcher + new_only;
        if peak + self.learned.len() > room {
            // Learned drops give way to the plan (the live generation is taken out
            // here: one that will not go stays a learned drop of its group).
            self.set_learned_aside(nic, true);
        }
        if new_only > 0 && peak + self.learned.len() > room {
            let first = claims.iter().position(Option::is_none).unwrap_or(0);
            self.live = Some(live);
            return RefreshOutcome::Refused {
                error: FlowError::new(
                    crate::error::FlowErrorKind::NoMem,
                    "the staying and the new rules do not fit the table together",
                ),
                rule: first,
                role: plan.rules[first].role.clone(),
                destroyed: Vec::new(),
                needed: peak,
                held: room,
            };
        }
        let mut destroyed = Vec::new();
        let mut gone = vec![false; n];
        // Step 1.
        for &k in early.iter().rev() {
            let (i, h, r) = &live.handles[k];
            match final_count(nic, *h, r) {
                // A learned drop handed over to the group is no plan rule.
                Ok(count) if *i != usize::MAX => destroyed.push((*i, count)),
                Ok(_) => {}
                Err(error) => {
                    let left = live.without(&gone);
                    return self.fail_safe(nic, left, Vec::new(), error, destroyed, observe);
                }
            }
            gone[k] = true;
            observe(nic, &self.sw);
        }
        // Step 2. `next` holds the new plan's rules, kept or created, in its order.
        let mut next: Vec<(usize, FlowHandle, FlowRule)> = Vec::with_capacity(plan.rules.len());
        let mut inserted = 0;
        let created = |next: Vec<(usize, FlowHandle, FlowRule)>| {
            next.into_iter()
                .filter(|(j, _, _)| claims[*j].is_none())
                .collect::<Vec<_>>()
        };
        for (i, (pr, claim)) in plan.rules.iter().zip(&claims).enumerate() {
            if let Some(k) = claim {
                let (_, h, r) = &live.handles[*k];
                next.push((i, *h, r.clone()));
                continue;
            }
            let rule = in_group(pr);
            match nic.validate(&rule).and_then(|()| nic.create(&rule)) {
                Ok(h) => {
                    next.push((i, h, rule));
                    inserted += 1;
                    observe(nic, &self.sw);
                }
                Err(error) if error.kind.is_fatal() => {
                    let left = live.without(&gone);
                    return self.fail_safe(nic, left, created(next), error, destroyed, observe);
                }
                Err(error) => {
                    let held = n - early.len() + dispatcher + inserted;
                    // Back to the installed plan's rules that are left: everything
                    // they rely on is among them.
                    let mut made = created(next);
                    while let Some((j, h, r)) = made.pop() {
                        if let Err(e) = nic.destroy(h) {
                            made.push((j, h, r));
                            let left = live.without(&gone);
                            return self.fail_safe(nic, left, made, e, destroyed, observe);
                        }
                        observe(nic, &self.sw);
                    }
                    self.live = Some(live.without(&gone));
                    return RefreshOutcome::Refused {
                        error,
                        rule: i,
                        role: pr.role.clone(),
                        destroyed,
                        needed: peak,
                        held,
                    };
                }
            }
        }
        // Step 3.
        for k in (0..n).rev() {
            if claimed[k] || gone[k] {
                continue;
            }
            let (i, h, r) = &live.handles[k];
            match final_count(nic, *h, r) {
                // A learned drop handed over to the group is no plan rule.
                Ok(count) if *i != usize::MAX => destroyed.push((*i, count)),
                Ok(_) => {}
                Err(error) => {
                    let left = live.without(&gone);
                    return self.fail_safe(nic, left, created(next), error, destroyed, observe);
                }
            }
            gone[k] = true;
            observe(nic, &self.sw);
        }
        self.live = Some(LiveGen::of(plan, group, next));
        RefreshOutcome::Refreshed {
            inserted,
            kept: plan.rules.len() - inserted,
            destroyed,
        }
    }

    /// Takes the NIC out of the decision after a refresh failed part-way (the state
    /// it stopped in is safe: the failed call changed nothing): the dispatcher goes
    /// if the device lets it, and the group's rules left (the installed plan's not
    /// yet destroyed, and those created, which count for no plan entry) are retired
    /// later.
    fn fail_safe<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        mut left: LiveGen,
        created: Vec<(usize, FlowHandle, FlowRule)>,
        error: FlowError,
        destroyed: Vec<(usize, Option<FlowCount>)>,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> RefreshOutcome {
        let dispatcher_removed = self.remove_dispatcher(nic, observe);
        left.handles
            .extend(created.into_iter().map(|(_, h, r)| (usize::MAX, h, r)));
        self.retiring.push(left);
        RefreshOutcome::Failed {
            error,
            dispatcher_removed,
            destroyed,
        }
    }

    /// Retires generations no longer live (call once no packet can carry their marks):
    /// reads their final counters and destroys their rules in reverse creation order.
    pub fn retire<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        observe: &mut dyn FnMut(&B, &SoftwareView),
    ) -> Vec<Retired> {
        self.retry_stuck(nic, observe);
        let mut out = Vec::new();
        for old in std::mem::take(&mut self.retiring) {
            let mut counts = Vec::new();
            let mut stuck = Vec::new();
            // Where a stuck dispatcher leads, the catch-all stays (with the rules the
            // device would not destroy), so no packet meets an empty group.
            let led_to = self.stuck.iter().any(|d| d.group == old.group);
            for (i, h, r) in old.handles.iter().rev() {
                if led_to && is_catch_all(r) {
                    // Counted for no plan rule when it goes: a later retirement maps
                    // plan indexes through a later plan.
                    stuck.push((usize::MAX, *h, r.clone()));
                    continue;
                }
                match final_count(nic, *h, r) {
                    Ok(count) => counts.extend(count.map(|c| (*i, c))),
                    // Counted when a later retirement destroys it.
                    Err(e) if e.kind != crate::error::FlowErrorKind::Io => {
                        stuck.push((*i, *h, r.clone()));
                    }
                    Err(_) => {}
                }
                observe(nic, &self.sw);
            }
            // A rule the device would not destroy, or a catch-all kept, keeps its group
            // busy (no later generation is built in it) until a retirement destroys
            // it.
            if !stuck.is_empty() {
                stuck.reverse();
                self.retiring.push(LiveGen {
                    handles: stuck,
                    ..old.clone()
                });
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

    /// Adds `drop` (learned from a packet software denied under its generation) to
    /// the live generation's table, above the plan's decisions (it decides its tuple
    /// as the whole policy does, so it needs no covers: [`crate::plan::DropLearner`]),
    /// with a COUNT action when `count`. At most `room` learned drops are kept: past
    /// that the oldest goes first. Only while the NIC applies that generation and
    /// software classifies with it.
    pub fn learn_drop<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        drop: &LearnedDrop,
        room: usize,
        count: bool,
    ) -> LearnOutcome {
        let Some(live) = self
            .live
            .as_ref()
            .filter(|l| l.generation == drop.generation && self.sw.active == Some(drop.generation))
        else {
            return LearnOutcome::NotLive;
        };
        // With groups, the live group is reached through the dispatcher only.
        let groups = live.group != Group::ROOT;
        if groups && self.dispatcher.is_none() {
            return LearnOutcome::NotLive;
        }
        if room == 0 {
            return LearnOutcome::NoRoom;
        }
        if self.learned.iter().any(|l| l.atom == drop.atom) {
            return LearnOutcome::Known;
        }
        // Under the fragment punt, beside the plan's exact flows (disjoint from them:
        // the packet met none of them), above every decision and cover.
        let prio = Priority(u32::from(groups));
        let mut actions: Vec<Action> = Vec::new();
        if count {
            actions.push(Action::Count(0));
        }
        actions.push(Action::Drop);
        let rule = match FlowRule::new(
            Attr::ingress(live.group, prio),
            &drop.atom.pattern(),
            &actions,
        ) {
            Ok(r) => r,
            Err(_) => {
                return LearnOutcome::Refused {
                    error: FlowError::new(
                        crate::error::FlowErrorKind::Invalid,
                        "learned drop rule",
                    ),
                    evicted: Vec::new(),
                }
            }
        };
        // Room first: the oldest go.
        let mut evicted = Vec::new();
        while self.learned.len() >= room {
            let Some(old) = self.learned.pop_front() else {
                break;
            };
            match final_count(nic, old.handle, &old.rule) {
                Ok(c) => evicted.push((old.packet, c)),
                Err(error) => {
                    self.learned.push_front(old);
                    return LearnOutcome::Refused { error, evicted };
                }
            }
        }
        match nic.validate(&rule).and_then(|()| nic.create(&rule)) {
            Ok(handle) => {
                self.learned.push_back(Learned {
                    atom: drop.atom,
                    packet: drop.packet,
                    handle,
                    rule,
                });
                LearnOutcome::Installed { evicted }
            }
            Err(error) => LearnOutcome::Refused { error, evicted },
        }
    }

    /// The packets and final counts of the learned drops the last commits and
    /// refreshes removed.
    pub fn take_forgotten(&mut self) -> Vec<(Packet, Option<FlowCount>)> {
        std::mem::take(&mut self.forgotten)
    }

    /// Counters of the learned drops that have one, by the packet each was learned
    /// from.
    pub fn learned_counts<B: FlowBackend>(&self, nic: &mut B) -> Vec<(Packet, FlowCount)> {
        self.learned
            .iter()
            .filter(|l| l.rule.counts())
            .filter_map(|l| Some((l.packet, nic.query_count(l.handle, false).ok()?)))
            .collect()
    }

    /// Learned drops in the table.
    pub fn learned_drops(&self) -> usize {
        self.learned.len()
    }

    /// Removes every learned drop, returning each one's packet and final count (those
    /// with a counter). One the device fails to destroy goes with the generation
    /// whose group holds it: it is destroyed again when that generation is retired
    /// (or, without groups, when the next commit removes the drops it does not
    /// make), and until then its group is not reused.
    pub fn forget_learned<B: FlowBackend>(
        &mut self,
        nic: &mut B,
    ) -> Vec<(Packet, Option<FlowCount>)> {
        self.forget_learned_keeping(nic, false)
    }

    /// Removes every learned drop, keeping their counts for
    /// [`Committer::take_forgotten`] (`keep` as for
    /// [`Committer::forget_learned_keeping`]).
    fn set_learned_aside<B: FlowBackend>(&mut self, nic: &mut B, keep: bool) {
        let forgotten = self.forget_learned_keeping(nic, keep);
        self.forgotten.extend(forgotten);
    }

    /// [`Committer::forget_learned`]; with `keep`, those the device fails to destroy
    /// stay listed as learned drops (a commit in place, whose live generation is
    /// taken out meanwhile, keeps them in its group that way).
    fn forget_learned_keeping<B: FlowBackend>(
        &mut self,
        nic: &mut B,
        keep: bool,
    ) -> Vec<(Packet, Option<FlowCount>)> {
        let mut out = Vec::new();
        let mut left = Vec::new();
        for l in std::mem::take(&mut self.learned) {
            match final_count(nic, l.handle, &l.rule) {
                Ok(c) => out.push((l.packet, c)),
                // A device that is gone took it along.
                Err(e) if e.kind == crate::error::FlowErrorKind::Io => out.push((l.packet, None)),
                Err(_) => {
                    out.push((l.packet, None));
                    left.push(l);
                }
            }
        }
        if keep {
            self.learned.extend(left);
        } else if !left.is_empty() {
            match self.live.as_mut().or_else(|| self.retiring.last_mut()) {
                // Not a plan rule: no plan index, and nothing relies on it.
                Some(g) => g
                    .handles
                    .extend(left.into_iter().map(|l| (usize::MAX, l.handle, l.rule))),
                None => self.learned.extend(left),
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{identity, plan, replan, FlowSample, HitCounters, PlanConfig};
    use crate::sim::SimNic;
    use crate::testutils as fixture;
    use crate::verdict::{combine, Fragment, Probe};
    use capo_policy::{Action as PolicyAction, Verdict};

    /// Hand-made plans with a chain: a staying decision relied on a decision that
    /// relied on a cover. Both stay until the new plan's cover is in (the cover
    /// only through the decision: the reliance is followed through), then go, the
    /// decision before its cover; every step leaves each installed decision with
    /// what it relies on.
    #[test]
    fn refresh_follows_reliance_through_and_removes_top_down() {
        use crate::flow::{Ipv4Fields, Item, Priority, Rss, Spec};
        use crate::plan::PlannedRule;
        let rule = |src: [u8; 4], prio: u32, fate: Action| {
            let net = Spec::masked(
                Ipv4Fields {
                    src,
                    ..Default::default()
                },
                Ipv4Fields {
                    src: [255, 255, 255, 0],
                    ..Default::default()
                },
            );
            FlowRule::new(
                Attr::ingress(Group(0), Priority(prio)),
                &[Item::Eth(None), Item::Ipv4(Some(net))],
                &[fate],
            )
            .unwrap()
        };
        let punt = || Action::Rss(Rss::default());
        let cover = |entry| Role::Cover { domain: 0, entry };
        let decide = |entry, allow| Role::Decide {
            domain: 0,
            entry,
            allow,
        };
        let pr = |role, flow, relies_on: Vec<usize>| PlannedRule {
            role,
            flow,
            relies_on,
        };
        let staying = rule([10, 0, 0, 0], 5, punt());
        let plan_of = |rules: Vec<PlannedRule>| OffloadPlan {
            generation: 1,
            mode: OffloadMode::VersionedGroups,
            rules,
            kept: Vec::new(),
            decided_atoms: 0,
            rules_offloaded: 0,
            exact_flows: 0,
            layers: 0,
        };
        let before = plan_of(vec![
            pr(cover(0), rule([10, 0, 1, 0], 2, punt()), vec![]),
            pr(
                decide(1, false),
                rule([10, 0, 2, 0], 3, Action::Drop),
                vec![0],
            ),
            pr(decide(2, true), staying.clone(), vec![1]),
        ]);
        let after = plan_of(vec![
            pr(cover(1), rule([10, 0, 3, 0], 2, punt()), vec![]),
            pr(decide(2, true), staying, vec![0]),
        ]);
        let mut nic = SimNic::new(crate::caps::NicCaps::mlx5(64));
        let mut c = Committer::new();
        c.commit(&mut nic, &before, &mut |_, _| {});
        let mut steps = Vec::new();
        let outcome = c.refresh(&mut nic, &after, u32::MAX, &mut |nic, _| {
            steps.push(fixture::decisions_protected(nic, &[&before, &after]));
        });
        assert!(steps.iter().all(Result::is_ok), "{steps:?}");
        let RefreshOutcome::Refreshed {
            inserted,
            kept,
            destroyed,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!((inserted, kept), (1, 1));
        // The decision (index 1) went before its cover (index 0), both after the
        // new cover was created.
        let order: Vec<usize> = destroyed.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, vec![1, 0]);
        assert_eq!(steps.len(), 3);
    }

    /// An allow that relied on an earlier deny's hardware entry, which the re-plan
    /// drops (the deny went cold) and replaces with a cover: the deny's entry must
    /// stay until the cover is in, and every step gives the policy's verdicts.
    #[test]
    fn refresh_keeps_what_staying_decisions_rely_on_until_their_new_covers_are_in() {
        let mut deny = fixture::allow_tcp("172.16.0.0/24", 80);
        deny.action = PolicyAction::Deny;
        let allow = fixture::allow_tcp("172.16.0.0/16", 80);
        let (state, program) = fixture::program(vec![deny, allow], vec![]);
        let caps = crate::caps::NicCaps::mlx5(64);
        let cfg = PlanConfig {
            exact_flows: false,
            ..PlanConfig::default()
        };
        let hits = |samples: Vec<FlowSample>| HitCounters {
            flows: samples,
            ..HitCounters::default()
        };
        let denied = fixture::tcp_sample([172, 16, 0, 9], 80, 100);
        let allowed = fixture::tcp_sample([172, 16, 5, 9], 80, 100);
        let before = plan(
            &state,
            &program,
            &caps,
            &hits(vec![denied.clone(), allowed.clone()]),
            &cfg,
        );
        let after = replan(&state, &program, &caps, &hits(vec![allowed]), &cfg, &before)
            .expect("same generation");
        let probes: Vec<Probe> = [[172, 16, 0, 9], [172, 16, 5, 9], [172, 16, 0, 200]]
            .into_iter()
            .flat_map(|src| {
                [crate::flow::TCP_SYN, crate::flow::TCP_ACK].map(|flags| Probe {
                    packet: fixture::tcp_sample(src, 80, 1).packet,
                    tcp_flags: flags,
                    fragment: Fragment::No,
                })
            })
            .collect();
        let refs: Vec<Verdict> = probes
            .iter()
            .map(|p| capo_policy::trace(&state, &p.reference_packet()).verdict)
            .collect();
        assert!(refs.contains(&Verdict::Deny) && refs.contains(&Verdict::Allow));
        let mut nic = SimNic::new(caps.clone());
        let mut c = Committer::new();
        c.commit(&mut nic, &before, &mut |_, _| {});
        let mut steps = 0;
        let outcome = c.refresh(&mut nic, &after, u32::MAX, &mut |nic, sw| {
            steps += 1;
            for (p, want) in probes.iter().zip(&refs) {
                let out = nic.peek(&p.headers());
                let got = combine(out, sw, caps.mark_bits, &mut |_| *want).0;
                assert_eq!(got, *want, "step {steps}: {p:?}");
            }
        });
        let RefreshOutcome::Refreshed {
            inserted,
            kept,
            destroyed,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert!(inserted > 0 && kept > 0 && !destroyed.is_empty());
        // The test is about a staying decision that relied on a removed one.
        let bits = caps.mark_bits;
        let in_after = |r: &crate::plan::PlannedRule| {
            after
                .rules
                .iter()
                .any(|n| identity(n, bits) == identity(r, bits))
        };
        let staying_decision_relied_on_a_removed_rule = before.rules.iter().any(|r| {
            matches!(r.role, Role::Decide { .. })
                && in_after(r)
                && r.relies_on.iter().any(|&d| !in_after(&before.rules[d]))
        });
        assert!(
            staying_decision_relied_on_a_removed_rule,
            "{before:#?}\n{after:#?}"
        );
    }

    /// A plan of `program` (default configuration) from `hits`.
    fn plan_of(
        state: &capo_policy::State,
        program: &crate::lower::OffloadProgram,
        nic: &SimNic,
        hits: &HitCounters,
    ) -> OffloadPlan {
        plan(state, program, nic.caps(), hits, &PlanConfig::default())
    }

    /// Whether a commit went to software on a refusal of `kind`.
    fn refused_with(out: &CommitOutcome, kind: crate::error::FlowErrorKind) -> bool {
        matches!(out, CommitOutcome::SoftwareOnly { error, .. } if error.kind == kind)
    }

    /// A plan of one workload where port 80 from 172.16.0.0/24 is allowed and the
    /// rest refused, committed on a simulated mlx5 of 64 entries.
    fn live_plan() -> (
        capo_policy::State,
        crate::lower::OffloadProgram,
        SimNic,
        Committer,
    ) {
        let (state, program) =
            fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let caps = crate::caps::NicCaps::mlx5(64);
        let p = plan(
            &state,
            &program,
            &caps,
            &HitCounters::default(),
            &PlanConfig::default(),
        );
        let mut nic = SimNic::new(caps);
        let mut c = Committer::new();
        c.commit(&mut nic, &p, &mut |_, _| {});
        (state, program, nic, c)
    }

    fn syn_from(src: [u8; 4], sport: u16) -> Probe {
        let mut packet = fixture::tcp_sample(src, 80, 1).packet;
        packet.l4 = capo_policy::L4::Ports {
            src: sport,
            dst: 80,
        };
        Probe {
            packet,
            tcp_flags: crate::flow::TCP_SYN,
            fragment: Fragment::No,
        }
    }

    fn learned(
        state: &capo_policy::State,
        program: &crate::lower::OffloadProgram,
        nic: &SimNic,
        src: [u8; 4],
    ) -> crate::plan::LearnedDrop {
        crate::plan::DropLearner::new()
            .drop_for(
                state,
                program,
                nic.caps(),
                &syn_from(src, 40_000).reference_packet(),
                Some(crate::flow::TCP_SYN),
                &crate::plan::StatelessDrops::Off,
            )
            .expect("a refused SYN is learned")
    }

    #[test]
    fn a_learned_drop_takes_the_conversation_until_the_next_commit() {
        let (state, program, mut nic, mut c) = live_plan();
        let refused = syn_from([172, 16, 1, 1], 40_000);
        let established = Probe {
            tcp_flags: crate::flow::TCP_ACK,
            ..refused
        };
        // Before: the plan leaves the refused conversation to software.
        assert!(!matches!(
            nic.peek(&refused.headers()),
            crate::sim::NicOutcome::Dropped
        ));
        let d = learned(&state, &program, &nic, [172, 16, 1, 1]);
        let before = nic.installed();
        assert_eq!(
            c.learn_drop(&mut nic, &d, 8, true),
            LearnOutcome::Installed {
                evicted: Vec::new()
            }
        );
        assert_eq!((nic.installed(), c.learned_drops()), (before + 1, 1));
        // The next connection of the conversation (another source port) meets it; a
        // packet of an established flow does not, nor does an allowed peer.
        for p in [refused, syn_from([172, 16, 1, 1], 51_000)] {
            assert_eq!(
                nic.receive(&p.headers(), 60),
                crate::sim::NicOutcome::Dropped,
                "{p:?}"
            );
        }
        assert!(!matches!(
            nic.peek(&established.headers()),
            crate::sim::NicOutcome::Dropped
        ));
        assert!(!matches!(
            nic.peek(&syn_from([172, 16, 0, 1], 40_000).headers()),
            crate::sim::NicOutcome::Dropped
        ));
        assert_eq!(nic.same_priority_conflicts(), 0);
        // Learned once.
        assert_eq!(c.learn_drop(&mut nic, &d, 8, true), LearnOutcome::Known);
        // Not for another generation's policy, nor without room.
        let other = crate::plan::LearnedDrop {
            generation: 7,
            ..d.clone()
        };
        assert_eq!(
            c.learn_drop(&mut nic, &other, 8, true),
            LearnOutcome::NotLive
        );
        let d2 = learned(&state, &program, &nic, [172, 16, 2, 2]);
        assert_eq!(c.learn_drop(&mut nic, &d2, 0, true), LearnOutcome::NoRoom);
        // A refresh keeps it (the same policy decides)...
        let p = plan_of(&state, &program, &nic, &HitCounters::default());
        let again = replan(
            &state,
            &program,
            nic.caps(),
            &HitCounters::default(),
            &PlanConfig::default(),
            &p,
        )
        .expect("same generation");
        assert!(matches!(
            c.refresh(&mut nic, &again, u32::MAX, &mut |_, _| {}),
            RefreshOutcome::Refreshed { .. }
        ));
        assert_eq!(c.learned_drops(), 1);
        assert!(c.take_forgotten().is_empty());
        assert_eq!(
            nic.peek(&refused.headers()),
            crate::sim::NicOutcome::Dropped
        );
        // ...unless the new plan holds the same drop itself: then the plan's rule
        // decides, and the learned one goes with its count.
        let counted = HitCounters {
            flows: vec![FlowSample {
                packet: refused.reference_packet(),
                tcp_flags: Some(crate::flow::TCP_SYN),
                hits: 10,
            }],
            ..HitCounters::default()
        };
        let with_it = replan(
            &state,
            &program,
            nic.caps(),
            &counted,
            &PlanConfig::default(),
            &p,
        )
        .expect("same generation");
        assert!(with_it
            .rules
            .iter()
            .any(|r| matches!(r.role, Role::ExactFlow { allow: false, .. })));
        assert!(matches!(
            c.refresh(&mut nic, &with_it, u32::MAX, &mut |_, _| {}),
            RefreshOutcome::Refreshed { .. }
        ));
        assert_eq!(c.learned_drops(), 0);
        let forgotten = c.take_forgotten();
        assert_eq!(forgotten.len(), 1);
        assert_eq!(forgotten[0].0, d.packet);
        assert_eq!(forgotten[0].1.map(|n| n.hits), Some(2));
        assert_eq!(
            nic.receive(&refused.headers(), 60),
            crate::sim::NicOutcome::Dropped
        );
        assert_eq!(nic.same_priority_conflicts(), 0);
        // A commit of a new generation removes every learned drop first.
        let d2 = learned(&state, &program, &nic, [172, 16, 2, 2]);
        assert!(matches!(
            c.learn_drop(&mut nic, &d2, 8, true),
            LearnOutcome::Installed { .. }
        ));
        let mut next = p.clone();
        next.generation = 2;
        c.commit(&mut nic, &next, &mut |_, _| {});
        assert_eq!(c.learned_drops(), 0);
        assert_eq!(c.take_forgotten().len(), 1);
        assert!(!matches!(
            nic.peek(&syn_from([172, 16, 2, 2], 1).headers()),
            crate::sim::NicOutcome::Dropped
        ));
    }

    #[test]
    fn learned_drops_past_their_room_evict_the_oldest() {
        let (state, program, mut nic, mut c) = live_plan();
        let first = learned(&state, &program, &nic, [172, 16, 1, 1]);
        let second = learned(&state, &program, &nic, [172, 16, 2, 2]);
        assert_eq!(
            c.learn_drop(&mut nic, &first, 1, false),
            LearnOutcome::Installed {
                evicted: Vec::new()
            }
        );
        let installed = nic.installed();
        // A room of 2 holds both; back at 1, the oldest goes.
        let third = learned(&state, &program, &nic, [172, 16, 4, 4]);
        assert!(matches!(
            c.learn_drop(&mut nic, &third, 2, false),
            LearnOutcome::Installed { evicted } if evicted.is_empty()
        ));
        assert_eq!(
            c.learn_drop(&mut nic, &second, 1, false),
            LearnOutcome::Installed {
                evicted: vec![(first.packet, None), (third.packet, None)]
            }
        );
        assert_eq!((nic.installed(), c.learned_drops()), (installed, 1));
        assert!(!matches!(
            nic.peek(&syn_from([172, 16, 1, 1], 1).headers()),
            crate::sim::NicOutcome::Dropped
        ));
        assert_eq!(
            nic.peek(&syn_from([172, 16, 2, 2], 1).headers()),
            crate::sim::NicOutcome::Dropped
        );
        // A full table refuses one, and nothing changes.
        let refusal = (3u8..=250).find_map(|k| {
            let d = learned(&state, &program, &nic, [172, 16, k, 1]);
            let before = (nic.installed(), c.learned_drops());
            match c.learn_drop(&mut nic, &d, 1_000, false) {
                LearnOutcome::Refused { error, evicted } if evicted.is_empty() => {
                    Some((error, before))
                }
                _ => None,
            }
        });
        let (error, before) = refusal.expect("a table of 64 fills up");
        assert_eq!(error.kind, crate::error::FlowErrorKind::NoMem);
        assert_eq!((nic.installed(), c.learned_drops()), before);
        assert_eq!(nic.installed(), 64);
    }

    /// A learned drop the device fails to destroy when a new generation goes in
    /// stays with the old generation's group: the new generation does not meet it,
    /// the group is not reused until it is retired, and the retirement destroys it.
    #[test]
    fn a_learned_drop_that_will_not_go_is_retired_with_its_generation() {
        let (state, program, mut nic, mut c) = live_plan();
        let d = learned(&state, &program, &nic, [172, 16, 1, 1]);
        assert!(matches!(
            c.learn_drop(&mut nic, &d, 8, false),
            LearnOutcome::Installed { .. }
        ));
        let refused = syn_from([172, 16, 1, 1], 1);
        assert_eq!(
            nic.peek(&refused.headers()),
            crate::sim::NicOutcome::Dropped
        );
        // The device refuses to destroy it (as a commit's first step would ask).
        nic.set_faults(crate::sim::Faults {
            destroy_fails_after: Some(0),
            ..Default::default()
        });
        assert_eq!(c.forget_learned(&mut nic), vec![(d.packet, None)]);
        assert_eq!(c.learned_drops(), 0);
        nic.set_faults(crate::sim::Faults::default());
        let p = plan_of(&state, &program, &nic, &HitCounters::default());
        let mut next = p.clone();
        next.generation = 2;
        assert!(matches!(
            c.commit(&mut nic, &next, &mut |_, _| {}),
            CommitOutcome::Offloaded { .. }
        ));
        assert!(c.take_forgotten().is_empty());
        assert!(c.has_retiring());
        // Generation 2 leaves the conversation to software.
        assert!(!matches!(
            nic.peek(&refused.headers()),
            crate::sim::NicOutcome::Dropped
        ));
        let group = |nic: &SimNic| {
            nic.rules()
                .filter(|(_, r)| {
                    r.fate() == Some(&Action::Drop) && r.attr().priority == Priority(1)
                })
                .map(|(_, r)| r.attr().group)
                .collect::<Vec<_>>()
        };
        assert_eq!(group(&nic).len(), 1, "the learned drop is still installed");
        c.retire(&mut nic, &mut |_, _| {});
        assert!(!c.has_retiring());
        assert!(group(&nic).is_empty());
    }

    /// A commit that fails part-way on a device that then refuses every destroy:
    /// the rules it created, and the dispatcher, stay. They are kept (retiring, and
    /// stuck): a later commit builds in another group, and a retirement once the
    /// device lets go leaves only that generation's rules and dispatcher.
    #[test]
    fn rules_an_aborted_commit_cannot_remove_keep_their_group_busy() {
        let (state, program, mut nic, mut c) = live_plan();
        let p = plan_of(&state, &program, &nic, &HitCounters::default());
        let first = c.live.as_ref().map(|l| l.group);
        let installed = nic.installed();
        nic.set_faults(crate::sim::Faults {
            enomem_after: Some(installed + 3),
            destroy_fails_after: Some(0),
            ..Default::default()
        });
        let mut second = p.clone();
        second.generation = 2;
        let out = c.commit(&mut nic, &second, &mut |_, _| {});
        assert!(
            refused_with(&out, crate::error::FlowErrorKind::NoMem),
            "{out:?}"
        );
        assert_eq!(nic.installed(), installed + 3, "nothing could be destroyed");
        assert_eq!(c.stuck_dispatchers(), 1);
        let orphans: Vec<Group> = nic
            .rules()
            .map(|(_, r)| r.attr().group)
            .filter(|g| *g != Group::ROOT && Some(*g) != first)
            .collect();
        assert_eq!(orphans.len(), 3);
        assert!(c.retiring.iter().any(|l| l.group == orphans[0]));
        nic.set_faults(crate::sim::Faults::default());
        let mut third = p.clone();
        third.generation = 3;
        assert!(matches!(
            c.commit(&mut nic, &third, &mut |_, _| {}),
            CommitOutcome::Offloaded { .. }
        ));
        let live = c.live.as_ref().map(|l| l.group);
        assert!(live.is_some() && live != Some(orphans[0]) && live != first);
        c.retire(&mut nic, &mut |_, _| {});
        assert!(!c.has_retiring());
        assert!(nic
            .rules()
            .all(|(_, r)| r.attr().group == Group::ROOT || Some(r.attr().group) == live));
        assert_eq!(nic.installed(), p.rules.len() + 1);
    }

    /// Both dispatchers stuck at a flip (the old one outranks the new): the new
    /// group stays whole, so when the old dispatcher goes first and the new one then
    /// leads packets there, they meet its rules, never an emptied group.
    #[test]
    fn a_group_a_stuck_new_dispatcher_leads_to_is_not_emptied() {
        let (state, program, mut nic, mut c) = live_plan();
        let p = plan_of(&state, &program, &nic, &HitCounters::default());
        nic.set_faults(crate::sim::Faults {
            dispatcher_destroys_refused: true,
            ..Default::default()
        });
        let mut second = p.clone();
        second.generation = 2;
        let out = c.commit(&mut nic, &second, &mut |_, _| {});
        assert!(
            refused_with(&out, crate::error::FlowErrorKind::Busy),
            "{out:?}"
        );
        assert_eq!(c.stuck_dispatchers(), 2);
        let probes = [
            syn_from([172, 16, 0, 1], 40_000),
            syn_from([10, 9, 9, 9], 40_001),
        ];
        let mut misses = Vec::new();
        let mut check = |nic: &SimNic, _: &SoftwareView| {
            for pr in &probes {
                misses.extend(nic.group_miss(&pr.headers()));
            }
        };
        c.retire(&mut nic, &mut check);
        nic.set_faults(crate::sim::Faults::default());
        c.retire(&mut nic, &mut check);
        c.retire(&mut nic, &mut check);
        assert!(misses.is_empty(), "{misses:?}");
        assert_eq!(c.stuck_dispatchers(), 0);
        assert!(!c.has_retiring());
        assert_eq!(nic.installed(), 0);
    }

    /// A rule the device will not destroy on retirement keeps its generation
    /// retiring: its group is not built into again, and a later retirement
    /// destroys it and reads its count once.
    #[test]
    fn a_rule_that_will_not_go_keeps_its_group_retiring() {
        let (state, program, mut nic, mut c) = live_plan();
        let p = plan_of(&state, &program, &nic, &HitCounters::default());
        let group_of = |c: &Committer| c.live.as_ref().map(|l| l.group);
        let first = group_of(&c);
        let mut next = p.clone();
        next.generation = 2;
        c.commit(&mut nic, &next, &mut |_, _| {});
        nic.set_faults(crate::sim::Faults {
            destroy_fails_after: Some(0),
            ..Default::default()
        });
        c.retire(&mut nic, &mut |_, _| {});
        assert!(c.has_retiring());
        nic.set_faults(crate::sim::Faults::default());
        let mut third = p.clone();
        third.generation = 3;
        // Generation 2 is live; 1's group still holds its rules: 3 takes another.
        let mut busy = c.retiring.iter().map(|l| l.group).collect::<Vec<_>>();
        busy.extend(group_of(&c));
        c.commit(&mut nic, &third, &mut |_, _| {});
        assert!(
            !busy.contains(&group_of(&c).unwrap()),
            "{busy:?} {:?}",
            group_of(&c)
        );
        assert!(busy.contains(&first.unwrap()));
        let before = nic.installed();
        c.retire(&mut nic, &mut |_, _| {});
        assert!(!c.has_retiring());
        assert!(nic.installed() < before);
    }
}
