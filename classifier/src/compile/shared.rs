//! Programs shared between interfaces. Endpoints whose programs come from the same
//! spec (the same policies' and profiles' fragments in the same tiers, the same
//! internal rules: the replicas of one workload, which the same selectors pick) get
//! one program, laid out once, and a policy change patches it once for all of them.
//!
//! A spec is told by the identity of its policies' and profiles' fragments (the
//! builder's shared `Arc`s, replaced whenever their policy or profile changes, and
//! kept alive here so no new fragment takes an old one's address), the content of
//! its internal rules and of its tiers' end-of-tier rules, and its fallback. A
//! program is a pure function of its spec ([`super::layout::finish`]), so sharing
//! changes no verdict.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Weak};

use super::layout::finish;
use super::lower::{Fragment, ProgSpec, SegSpec};
use super::{Builder, FastMap};
use crate::program::Program;

/// The programs laid out from specs, by a hash of the spec's identity.
#[derive(Clone, Default)]
pub(super) struct SharedPrograms {
    by_key: FastMap<u64, Vec<Laid>>,
    /// Entries held, and held after the last sweep of dead ones.
    entries: usize,
    swept_to: usize,
    /// Entries a sweep found dead, freed a few at a time as programs are filed:
    /// freeing a sweep's worth of specs at once held one update for milliseconds.
    dead: Vec<Laid>,
    /// The last [`RETIRED_KEPT`] programs retired (workload interfaces removed or
    /// changed let go of them), newest last, kept alive so that an endpoint made
    /// again finds them.
    retired: VecDeque<Arc<Program>>,
    /// Programs that left `retired`, dropped by [`SharedPrograms::settle`] rather
    /// than during the update that pushed them out (or, in a builder no one
    /// settles, a ring's worth at a time by [`SharedPrograms::retire`]).
    leaving: Vec<Arc<Program>>,
    /// Programs a policy or profile change patched, filed by the next
    /// [`SharedPrograms::settle`] (after the update is published) or the next
    /// look-up, whichever comes first: filing reads the bucket's other programs
    /// and frees swept entries, cold memory an update need not wait for.
    pending: Vec<(Arc<ProgSpec>, Weak<Program>)>,
}

/// How many retired workload programs are kept alive: a workload interface has
/// two, so this is the last 32 interfaces' worth. With those waiting for the
/// settle, up to twice as many are held: on W-large, where a program is about
/// 40 KiB, about 5 MiB at most; with programs of 1,400 rules (about 300 KiB),
/// about 38 MiB.
pub(super) const RETIRED_KEPT: usize = 64;

/// A program and the spec it was laid out from. The program is weak: it lives as
/// long as an interface (or a published generation) holds it.
#[derive(Clone)]
struct Laid {
    spec: Arc<ProgSpec>,
    program: Weak<Program>,
}

/// Most programs waiting to be filed (each keeps its spec, and so its fragments,
/// alive): more than one edit's worth on W-large, where a policy is listed by up to
/// a few dozen interfaces.
const PENDING_MOST: usize = 1024;

/// Dead entries are swept when the entries reach twice those left by the last
/// sweep, plus this.
const SWEEP_SLACK: usize = 256;

/// Dead entries freed per program filed, besides one in [`SWEEP_SLACK`] of those
/// waiting (so that a large sweep is freed before the next).
const FREED_PER_FILING: usize = 2;

impl SharedPrograms {
    /// A live program laid out from a spec the same as `spec` (whose [`key`] is
    /// `at`), with that spec.
    fn find_at(&self, at: u64, spec: &ProgSpec) -> Option<(Arc<Program>, Arc<ProgSpec>)> {
        self.by_key
            .get(&at)?
            .iter()
            .find(|l| same(&l.spec, spec))
            .and_then(|l| Some((l.program.upgrade()?, Arc::clone(&l.spec))))
    }

    /// Files `program`, laid out from `spec`.
    #[cfg(test)]
    fn insert(&mut self, spec: &Arc<ProgSpec>, program: &Arc<Program>) {
        self.insert_at(key(spec), spec, program);
    }

    /// Files `program`, laid out from `spec`, before the next look-up (now, when
    /// [`PENDING_MOST`] wait already: a builder never settled files them as it goes).
    pub(super) fn file_later(&mut self, spec: &Arc<ProgSpec>, program: &Arc<Program>) {
        if self.pending.len() >= PENDING_MOST {
            self.file_pending();
        }
        self.pending
            .push((Arc::clone(spec), Arc::downgrade(program)));
    }

    /// Files the programs [`SharedPrograms::file_later`] was given that still live.
    fn file_pending(&mut self) {
        for (spec, program) in std::mem::take(&mut self.pending) {
            if let Some(program) = program.upgrade() {
                self.insert_at(key(&spec), &spec, &program);
            }
        }
    }

    /// [`Self::insert`] with the spec's [`key`] known.
    fn insert_at(&mut self, at: u64, spec: &Arc<ProgSpec>, program: &Arc<Program>) {
        let bucket = self.by_key.entry(at).or_default();
        let before = bucket.len();
        bucket.retain(|l| l.program.strong_count() > 0 && !same(&l.spec, spec));
        self.entries = self.entries - (before - bucket.len()) + 1;
        bucket.push(Laid {
            spec: Arc::clone(spec),
            program: Arc::downgrade(program),
        });
        let freed = FREED_PER_FILING + self.dead.len() / SWEEP_SLACK;
        self.dead.truncate(self.dead.len().saturating_sub(freed));
        if self.entries > 2 * self.swept_to + SWEEP_SLACK {
            let dead = &mut self.dead;
            self.by_key.retain(|_, bucket| {
                bucket.retain(|l| {
                    let live = l.program.strong_count() > 0;
                    if !live {
                        // Kept aside (a second reference): dropping this one frees
                        // nothing.
                        dead.push(l.clone());
                    }
                    live
                });
                !bucket.is_empty()
            });
            self.entries = self.by_key.values().map(Vec::len).sum();
            self.swept_to = self.entries;
        }
    }

    /// Keeps `program`, which an interface let go of, alive until
    /// [`RETIRED_KEPT`] more have been retired.
    pub(super) fn retire(&mut self, program: &Arc<Program>) {
        // Replicas going one by one retire their shared program each time: once is
        // enough.
        if self.retired.iter().any(|p| Arc::ptr_eq(p, program)) {
            return;
        }
        self.retired.push_back(Arc::clone(program));
        while self.retired.len() > RETIRED_KEPT {
            // A builder no one settles drops them here instead, a ring's worth at
            // a time, so they cannot pile up.
            if self.leaving.len() >= RETIRED_KEPT {
                self.leaving.clear();
            }
            self.leaving.extend(self.retired.pop_front());
        }
    }

    /// Drops the programs that left the retired ones (those no one else holds are
    /// freed here).
    pub(super) fn settle(&mut self) {
        self.leaving.clear();
        self.file_pending();
    }

    /// Programs kept retired.
    #[cfg(test)]
    pub(super) fn retired_count(&self) -> usize {
        self.retired.len()
    }

    /// Entries held (live or not yet swept).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.entries
    }

    /// Swept entries not freed yet.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.dead.len()
    }
}

impl Builder {
    /// The program of `spec`: one already laid out from the same spec, or laid out
    /// now and filed for the next interface with this spec.
    pub(super) fn shared_program(&mut self, mut spec: ProgSpec) -> (Arc<Program>, Arc<ProgSpec>) {
        self.shared.file_pending();
        let at = key(&spec);
        if let Some(found) = self.shared.find_at(at, &spec) {
            return found;
        }
        // Tallied first: the layout reads the port tables' bounds from the tally.
        spec.tally();
        let program = Arc::new(finish(&spec, self.min_words));
        let spec = Arc::new(spec);
        self.shared.insert_at(at, &spec, &program);
        (program, spec)
    }
}

/// Whether two fragments of a segment of kind `kind` are the same: the very same
/// policy or profile fragment, or internal rules alike.
fn same_fragment(kind: &SegSpec, a: &Arc<Fragment>, b: &Arc<Fragment>) -> bool {
    Arc::ptr_eq(a, b)
        || (matches!(kind, SegSpec::Plain)
            && a.rules == b.rules
            && a.deciders == b.deciders
            && a.rule_ids == b.rule_ids)
}

/// Whether programs laid out from `a` and from `b` are the same program.
fn same(a: &ProgSpec, b: &ProgSpec) -> bool {
    a.fallback == b.fallback
        && a.segments.len() == b.segments.len()
        && a.segments
            .iter()
            .zip(&b.segments)
            .all(|((fa, ka), (fb, kb))| {
                ka == kb
                    && fa.len() == fb.len()
                    && fa
                        .iter()
                        .zip(fb.iter())
                        .all(|(x, y)| same_fragment(ka, x, y))
            })
}

/// A hash that agrees with [`same`]: fragment addresses where `same` compares
/// them, rule counts where it compares content.
fn key(spec: &ProgSpec) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x5ca1_ab1e).build_hasher();
    for (fragments, kind) in &spec.segments {
        match kind {
            SegSpec::Plain => 0u8.hash(&mut h),
            SegSpec::Tier(end) => {
                1u8.hash(&mut h);
                end.as_ref().map(|(_, rule)| *rule).hash(&mut h);
            }
            SegSpec::Profile => 2u8.hash(&mut h),
        }
        fragments.len().hash(&mut h);
        for f in fragments.iter() {
            if matches!(kind, SegSpec::Plain) {
                f.rules.len().hash(&mut h);
            } else {
                (Arc::as_ptr(f) as usize).hash(&mut h);
            }
        }
    }
    spec.fallback.0.hash(&mut h);
    spec.fallback.2.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::Act;
    use capo_policy::eval::InternalPolicy;

    /// A spec of two plain segments of `a` and `b` allow-all rules.
    fn spec(a: usize, b: usize) -> ProgSpec {
        let builder = Builder::new();
        let mut s = ProgSpec::new();
        for n in [a, b] {
            let rules = (0..n)
                .map(|index| {
                    builder.internal_rule(Act::Allow, InternalPolicy::AllowFromHost, index, None)
                })
                .collect();
            s.segment(rules, SegSpec::Plain);
        }
        s
    }

    /// Retired programs stay alive until a ring's worth more were retired; those
    /// pushed out wait for the settle, but no more than a ring's worth of them.
    #[test]
    fn retired_programs_are_kept_for_a_while_and_never_pile_up() {
        let mut shared = SharedPrograms::default();
        let programs: Vec<Arc<Program>> = (1..=3 * RETIRED_KEPT)
            .map(|n| Arc::new(finish(&spec(n, 1), 1)))
            .collect();
        let weak: Vec<_> = programs.iter().map(Arc::downgrade).collect();
        // A program retired again (a replica's shared one) takes one place.
        for p in programs.iter().take(1).cycle().take(3) {
            shared.retire(p);
        }
        assert_eq!(shared.retired_count(), 1);
        for p in &programs {
            shared.retire(p);
            assert!(shared.leaving.len() <= RETIRED_KEPT);
        }
        drop(programs);
        let alive =
            |w: &[std::sync::Weak<Program>]| w.iter().filter(|w| w.strong_count() > 0).count();
        assert_eq!(
            alive(weak.get(2 * RETIRED_KEPT..).unwrap()),
            RETIRED_KEPT,
            "the newest kept"
        );
        assert_eq!(
            alive(&weak),
            2 * RETIRED_KEPT,
            "the oldest let go of unsettled"
        );
        shared.settle();
        assert_eq!(alive(&weak), RETIRED_KEPT, "the settle drops the rest");
    }

    /// A program filed later is filed by the settle (a dead one not at all), and
    /// found only from then on.
    #[test]
    fn programs_filed_later_are_filed_by_the_settle() {
        let mut shared = SharedPrograms::default();
        let live = Arc::new(finish(&spec(1, 1), 1));
        let dead = Arc::new(finish(&spec(2, 1), 1));
        shared.file_later(&Arc::new(spec(1, 1)), &live);
        shared.file_later(&Arc::new(spec(2, 1)), &dead);
        drop(dead);
        assert_eq!(shared.held(), 0);
        assert!(shared.find_at(key(&spec(1, 1)), &spec(1, 1)).is_none());
        shared.settle();
        assert_eq!(shared.held(), 1, "the live one only");
        let (found, _) = shared
            .find_at(key(&spec(1, 1)), &spec(1, 1))
            .expect("filed");
        assert!(Arc::ptr_eq(&found, &live));
    }

    /// A builder never settled files the programs waiting once too many wait.
    #[test]
    fn programs_filed_later_never_pile_up() {
        let mut shared = SharedPrograms::default();
        let mut programs = Vec::new();
        for n in 0..=PENDING_MOST {
            let (a, b) = (1 + n % 40, 1 + n / 40);
            let program = Arc::new(finish(&spec(a, b), 1));
            shared.file_later(&Arc::new(spec(a, b)), &program);
            programs.push(program);
        }
        assert_eq!(shared.held(), PENDING_MOST, "filed when the next came");
        assert_eq!(shared.pending.len(), 1);
    }

    /// Programs no interface holds any more are swept as others are filed, and
    /// freed a few at a time after: the entries stay within twice the live ones
    /// plus the slack, and a live one is still found. Internal rules alike make the
    /// same spec, whatever their fragments' addresses.
    #[test]
    fn dead_programs_are_swept() {
        let mut shared = SharedPrograms::default();
        let keep = Arc::new(finish(&spec(1, 1), 1));
        shared.insert(&Arc::new(spec(1, 1)), &keep);
        let (mut most, mut most_waiting) = (0, 0);
        for round in 1..20 * SWEEP_SLACK {
            let (a, b) = (1 + round % 80, 1 + round / 80);
            let program = Arc::new(finish(&spec(a, b), 1));
            shared.insert(&Arc::new(spec(a, b)), &program);
            assert!(
                shared.find_at(key(&spec(a, b)), &spec(a, b)).is_some(),
                "a live program is found"
            );
            drop(program);
            assert!(
                shared.find_at(key(&spec(a, b)), &spec(a, b)).is_none(),
                "a dead one is not"
            );
            most = most.max(shared.held());
            most_waiting = most_waiting.max(shared.waiting());
        }
        assert!(most > SWEEP_SLACK, "the sweep had work: {most}");
        assert!(most <= 2 * 2 + SWEEP_SLACK + 1, "{most}");
        // A sweep's dead entries are freed a few at a time, each before the next
        // sweep.
        assert!(most_waiting >= SWEEP_SLACK, "{most_waiting}");
        assert!(most_waiting <= SWEEP_SLACK + 3, "{most_waiting}");
        let (found, _) = shared
            .find_at(key(&spec(1, 1)), &spec(1, 1))
            .expect("the live one stays");
        assert!(Arc::ptr_eq(&found, &keep));
    }
}
