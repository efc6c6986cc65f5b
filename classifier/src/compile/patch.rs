//! Policy changes taken by programs in place: when a policy's rules keep their
//! number (a port edited, an action flipped, a rule replaced), each program listing
//! it is published as a shallow copy holding the changed rules in an overlay
//! (`crate::overlay`), its bitmaps untouched. Past an overlay's bound a program
//! without one has those rules' bits rewritten in a copy of its arena (see
//! `layout::patch`), and one with one is laid out anew. A policy many endpoints
//! list would otherwise cost a full layout per endpoint and direction. Anything a
//! patch cannot express falls back to the full compile.

use std::sync::Arc;

use capo_policy::{CompactString, Direction, IdTable, PolicyKey, State};

use super::deps::owner_hash;
use super::layout::{finish, patch, Canonical, Swap};
use super::lower::{Fragment, ProgSpec};
use super::{Builder, FastMap, PolicyFilter};
use crate::generation::{Entry, Iface, IfaceKind};
use crate::overlay::{ExactRule, Overlaid, Overlay, MAX_OVERLAID};
use crate::program::{CRule, Program};

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
            // The rules that differ, each with its criteria after and before.
            let (changed, exact): (Vec<usize>, Vec<_>) = (held.rules.iter().zip(&new.rules))
                .enumerate()
                .filter(|(_, (was, now))| was != now)
                .map(|(j, (was, now))| (j, (Arc::new(now.exact()), Arc::new(was.exact()))))
                .unzip();
            if changed.is_empty() && new.rule_ids == held.rule_ids {
                self.fragments
                    .keep(owner, tier.as_deref(), *dir, held.clone());
            } else {
                swaps.push(Swap {
                    start: 0,
                    old: held.clone(),
                    new,
                    changed: changed.into(),
                    exact: exact.into(),
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
                    // Held in the program's overlay where it fits; past the bound, a
                    // program without one is patched, one with one laid out anew.
                    let laid = match overlaid(program, spec, &here) {
                        Some(p) => p,
                        None if program.overlay.is_some() => finish(&next, self.min_words),
                        None => {
                            let Some(p) = patch(program, &next, &here) else {
                                done.insert(at, None);
                                return None;
                            };
                            p
                        }
                    };
                    let made = (Arc::new(laid), Arc::new(next));
                    self.shared.file_later(&made.1, &made.0);
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

/// `program` with the rules `swaps` change held in its overlay instead of rewritten
/// in its bitmaps (see [`crate::overlay`]): a shallow copy, the arena and atoms
/// shared. `spec`: the program's spec before the swaps. `None` when the overlay
/// would hold more than [`MAX_OVERLAID`] rules.
fn overlaid(program: &Program, spec: &Arc<ProgSpec>, swaps: &[Swap]) -> Option<Program> {
    let held = program.overlay.as_deref();
    let mut entries: Vec<Overlaid> = held.map(|o| o.rules.to_vec()).unwrap_or_default();
    let laid_rules = held.map_or_else(|| program.rules.clone(), |o| o.laid_rules.clone());
    let mut rules = program.rules.to_vec();
    for swap in swaps {
        for (k, id) in swap.new.rule_ids.iter().enumerate() {
            let r = rules.get_mut(swap.start + k)?;
            *r = CRule::new(r.act, *id, r.verify);
        }
        for (j, (now, was)) in swap.changed.iter().zip(swap.exact.iter()) {
            let at = u32::try_from(swap.start + j).ok()?;
            let new = swap.new.rules.get(*j)?;
            let k = entries.partition_point(|e| e.at < at);
            match entries.get_mut(k) {
                Some(e) if e.at == at => e.now = now.clone(),
                _ => entries.insert(
                    k,
                    Overlaid {
                        at,
                        now: now.clone(),
                        laid: was.clone(),
                    },
                ),
            }
            // Checked exactly: never `verify`.
            let r = rules.get_mut(at as usize)?;
            *r = CRule::new(new.act, r.rule_id(), false);
        }
    }
    // A rule edited back to the criteria the arena has is the arena's again (the
    // arena's bits stand for criteria, not actions: the action stays).
    for e in entries.iter().filter(|e| e.is_laid_out()) {
        let (r, laid) = (
            rules.get_mut(e.at as usize)?,
            laid_rules.get(e.at as usize)?,
        );
        *r = CRule::new(r.act, r.rule_id(), laid.verify);
    }
    entries.retain(|e| !e.is_laid_out());
    if entries.len() > MAX_OVERLAID {
        return None;
    }
    let mut copy = program.clone();
    copy.rules = rules.into();
    copy.overlay = (!entries.is_empty()).then(|| {
        Arc::new(Overlay {
            rules: entries.into(),
            laid_rules,
            laid_spec: held.map_or_else(|| spec.clone(), |o| o.laid_spec.clone()),
        })
    });
    Some(copy)
}

/// An overlaid program against its specs: its arena and atoms are the layout of the
/// spec the overlay records, its rules the current spec's, the overlaid positions
/// exactly those whose criteria differ between the two specs, each with the current
/// spec's criteria.
fn check_overlay(
    program: &Program,
    overlay: &Overlay,
    spec: &ProgSpec,
    fresh_from: &dyn Fn(&ProgSpec) -> Program,
) -> Result<(), String> {
    let mut laid_out = program.clone();
    laid_out.rules = overlay.laid_rules.clone();
    laid_out.overlay = None;
    let want = Canonical::of(&fresh_from(&overlay.laid_spec));
    if let Some(part) = Canonical::of(&laid_out).differs_from(&want) {
        return Err(format!("the arena is not its spec's layout: {part}"));
    }
    let by_position = |spec: &ProgSpec| {
        let mut rules = Vec::new();
        for (fragment, start) in spec.fragments_at() {
            for (k, rule) in fragment.rules.iter().enumerate() {
                rules.push((start + k, rule.exact()));
            }
        }
        rules.sort_by_key(|(i, _)| *i);
        rules
    };
    let (now, laid) = (by_position(spec), by_position(&overlay.laid_spec));
    let differing: Vec<(u32, ExactRule)> = (now.iter().zip(&laid))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((i, a), _)| (*i as u32, a.clone()))
        .collect();
    let overlaid: Vec<(u32, ExactRule)> = (overlay.rules.iter())
        .map(|e| (e.at, ExactRule::clone(&e.now)))
        .collect();
    if now.len() != laid.len() || differing != overlaid {
        return Err(format!(
            "overlaid {:?}, the specs differ at {:?}",
            overlay.rules.iter().map(|e| e.at).collect::<Vec<_>>(),
            differing.iter().map(|(i, _)| i).collect::<Vec<_>>()
        ));
    }
    let fresh = fresh_from(spec);
    for (i, (got, want)) in program.rules.iter().zip(fresh.rules.iter()).enumerate() {
        let overlaid = overlay.rules.iter().any(|e| e.at as usize == i);
        let expected = if overlaid {
            CRule::new(want.act, want.rule_id(), false)
        } else {
            *want
        };
        if *got != expected {
            return Err(format!("rule {i}: {got:?} != {expected:?}"));
        }
    }
    if program.rules.len() != fresh.rules.len() {
        return Err("rule counts differ".into());
    }
    Ok(())
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
                let fresh_from = |spec: &ProgSpec| {
                    let mut untallied = spec.clone();
                    untallied.tallied = false;
                    finish(&untallied, self.min_words)
                };
                match &program.overlay {
                    None => {
                        let fresh = fresh_from(spec);
                        let (got, want) = (Canonical::of(program), Canonical::of(&fresh));
                        if let Some(part) = got.differs_from(&want) {
                            return Err(format!("{kind:?}: {part}"));
                        }
                    }
                    Some(overlay) => {
                        check_overlay(program, overlay, spec, &fresh_from)
                            .map_err(|e| format!("{kind:?}: overlay: {e}"))?;
                    }
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
