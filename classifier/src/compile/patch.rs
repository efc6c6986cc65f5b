//! Policy changes patched into programs: when a policy's rules keep their number (a
//! port edited, an action flipped, a set swapped for one the program already
//! names), each program listing it has those rules' bits rewritten in a copy of
//! its arena (see `layout::patch`), instead of being laid out again from all its
//! rules. A policy many endpoints list would otherwise cost a full layout per
//! endpoint and direction. Anything a patch cannot express falls back to the full
//! compile.

use std::sync::Arc;

use capo_policy::{CompactString, Direction, IdTable, PolicyKey, State};

use super::deps::owner_hash;
use super::layout::{finish, patch, Canonical, Swap};
use super::lower::{Fragment, ProgSpec};
use super::{Builder, FastMap, PolicyFilter};
use crate::generation::{Entry, Iface, IfaceKind};
use crate::program::Program;

/// What changed: a policy or a profile.
#[derive(Clone, Copy)]
pub(super) enum Owner<'a> {
    Policy(&'a PolicyKey),
    Profile(&'a str),
}

/// Programs patched in one update, by the address of the program they replace
/// (`None`: it cannot be patched, its interfaces are compiled).
type Patched = FastMap<usize, Option<(Arc<Program>, Arc<ProgSpec>)>>;

/// A changed policy's or profile's fragment before the change: the tier it was
/// listed in (policies), its direction, the fragment.
pub(super) type OldFragment = (Option<CompactString>, Direction, Arc<Fragment>);

impl Builder {
    /// Brings the interfaces using a policy or profile up to date after it changed:
    /// each patched where it can be, compiled again otherwise. `old`: its fragments
    /// before the change. True when the published list has the interfaces as they
    /// are now (every one patched, and put in its place).
    pub(super) fn update_users(
        &mut self,
        state: &State,
        ids: &IdTable,
        owner: Owner<'_>,
        old: &[OldFragment],
    ) -> bool {
        // Each old fragment with its replacement and the rules that differ, found
        // once for every program. A fragment that came out the same (the direction
        // the change left alone) stays the one programs hold, so they need nothing.
        let mut swaps: Vec<Swap> = Vec::new();
        let mut patchable = !old.is_empty();
        for (tier, dir, held) in old {
            let new = match (owner, tier) {
                (Owner::Policy(key), Some(tier)) => {
                    self.policy_fragment(state, ids, key, tier, *dir)
                }
                (Owner::Profile(name), _) => self.profile_fragment(state, ids, name, *dir),
                (Owner::Policy(_), None) => None,
            };
            let Some(new) = new else {
                patchable = false;
                continue;
            };
            if new.rules.len() != held.rules.len() {
                patchable = false;
                continue;
            }
            let changed: Vec<usize> = (held.rules.iter().zip(&new.rules))
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(j, _)| j)
                .collect();
            if changed.is_empty() && new.rule_ids == held.rule_ids {
                self.fragments
                    .keep(owner, tier.as_deref(), *dir, held.clone());
            } else {
                swaps.push(Swap {
                    start: 0,
                    old: held.clone(),
                    new,
                    changed: changed.into(),
                });
            }
        }
        // The published list is the compiled interfaces as an update starts.
        let hash = owner_hash(owner);
        let bits = PolicyFilter::bits(hash);
        let uses = |i: &Iface| i.owners.contains(&hash);
        // The interfaces themselves, with their positions in the list, not their
        // kinds: no names copied, none looked up.
        let affected: Vec<(usize, Arc<Iface>)> = self
            .listing
            .ifaces()
            .iter()
            .zip(self.listing.filters())
            .enumerate()
            .filter(|(_, (i, f))| f.may_hold(&bits) && uses(i))
            .map(|(at, (i, _))| (at, Arc::clone(i)))
            .collect();
        // Interfaces sharing a program share its patched copy, made once.
        let mut patched = Patched::default();
        let mut in_place: Vec<(usize, Arc<Iface>)> = Vec::new();
        let mut compiled = false;
        for (at, iface) in affected {
            let outcome = if patchable {
                self.patch_iface(ids, &iface, &swaps, old, &mut patched)
            } else {
                None
            };
            match outcome {
                Some(Some(new)) => in_place.push((at, new)),
                Some(None) => {}
                None => {
                    compiled = true;
                    self.compile_iface(state, ids, iface.kind.clone());
                }
            }
        }
        // Every interface patched (none compiled anew, so none came or went): the
        // patched ones replace their entries in the list, which needs no rebuild.
        !compiled && self.replace_listed(ids, in_place)
    }

    /// Patches a workload's programs with the policy's `swaps` (their `start`
    /// unset): the patched interface, now in the map (`Some(None)`: nothing needed
    /// patching), or `None` (nothing changed) when they need compiling again.
    fn patch_iface(
        &mut self,
        ids: &IdTable,
        iface: &Iface,
        swaps: &[Swap],
        old: &[OldFragment],
        done: &mut Patched,
    ) -> Option<Option<Arc<Iface>>> {
        if !matches!(iface.kind, IfaceKind::Workload(_)) {
            return None;
        }
        let mut entries = iface.entries.clone();
        let mut specs = iface.specs.clone();
        let mut patched = false;
        let mut holds_old = false;
        for d in 0..2 {
            let (Some(Some(spec)), Some(Entry::Single(program))) =
                (iface.specs.get(d), iface.entries.get(d))
            else {
                return None;
            };
            // Every program listing the policy holds its fragments from the map:
            // each compile since the policy's last change took them from there, and
            // that change brought every program listing it up to date (one compiled
            // while the policy was missing is compiled again, as `old` is empty).
            let mut here = Vec::new();
            for (fragment, start) in spec.fragments_at() {
                if let Some(s) = swaps.iter().find(|s| Arc::ptr_eq(&s.old, fragment)) {
                    here.push(Swap { start, ..s.clone() });
                }
                holds_old |= old.iter().any(|(_, _, f)| Arc::ptr_eq(f, fragment));
            }
            if here.is_empty() {
                continue;
            }
            // A shared program comes with its spec (`shared`): its patched copy,
            // made for another interface in this update, is this one's too. The old
            // program lives through the update, so its address names it.
            let at = Arc::as_ptr(program) as usize;
            let (program, next) = match done.get(&at) {
                Some(Some(found)) => found.clone(),
                Some(None) => return None,
                None => {
                    let mut next = ProgSpec::clone(spec);
                    let swapped = |f: &Arc<Fragment>| {
                        here.iter().find(|s| Arc::ptr_eq(&s.old, f)).map(|s| &s.new)
                    };
                    for (fragments, _) in &mut next.segments {
                        if fragments.iter().any(|f| swapped(f).is_some()) {
                            *fragments = fragments
                                .iter()
                                .map(|f| swapped(f).unwrap_or(f).clone())
                                .collect();
                        }
                    }
                    for s in &here {
                        next.retally(&s.old, &s.new);
                    }
                    let Some(laid) = patch(program, &next, &here) else {
                        done.insert(at, None);
                        return None;
                    };
                    let made = (Arc::new(laid), Arc::new(next));
                    self.shared.insert(&made.1, &made.0);
                    done.insert(at, Some(made.clone()));
                    made
                }
            };
            if let (Some(e), Some(s)) = (entries.get_mut(d), specs.get_mut(d)) {
                *e = Entry::Single(program);
                *s = Some(next);
            }
            patched = true;
        }
        // An interface using the changed policy or profile holds one of its old
        // fragments (the invariant above); one that does not is compiled, not left.
        if !holds_old {
            return None;
        }
        if patched {
            let iface = Iface {
                name: iface.name.clone(),
                kind: iface.kind.clone(),
                sw_if_index: ids.interface(&iface.name),
                entries,
                specs,
                owners: iface.owners.clone(),
                policy_filter: iface.policy_filter,
            };
            let held = self.ifaces.get_mut(&iface.kind)?;
            let iface = Arc::new(iface);
            *held = Arc::clone(&iface);
            self.patched += 1;
            return Some(Some(iface));
        }
        Some(None)
    }
}

impl Builder {
    /// Tests: every workload program against the program laid out afresh from its
    /// spec (what a patched program must equal, up to layout); the first
    /// difference found.
    #[doc(hidden)]
    pub fn check_programs_against_specs(&self) -> Result<(), String> {
        for (kind, iface) in &self.ifaces {
            for (entry, spec) in iface.entries.iter().zip(&iface.specs) {
                let (Entry::Single(program), Some(spec)) = (entry, spec) else {
                    continue;
                };
                // Laid out from the rules' own port bounds, not the tally (which
                // is checked against a recount below).
                let mut untallied = ProgSpec::clone(spec);
                untallied.tallied = false;
                let fresh = finish(&untallied, self.min_words);
                let (got, want) = (Canonical::of(program), Canonical::of(&fresh));
                if let Some(part) = got.differs_from(&want) {
                    return Err(format!("{kind:?}: {part}"));
                }
                let mut tallied = ProgSpec::clone(spec);
                tallied.tally();
                if (tallied.port_bounds != spec.port_bounds)
                    || (tallied.named_ports != spec.named_ports)
                    || (tallied.negated_ports != spec.negated_ports)
                    || (tallied.fragment_starts != spec.fragment_starts)
                {
                    return Err(format!("{kind:?}: tallies moved apart from a recount"));
                }
            }
        }
        Ok(())
    }
}
