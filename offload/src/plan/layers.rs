//! Priority layers: a node sits one layer below the deepest earlier node of its
//! domain it overlaps. Nodes below the device's last usable layer are withdrawn, and
//! with them every decision that relied on them, until nothing changes.

use std::collections::BTreeMap;

use crate::atom::Atom;
use crate::caps::NicCaps;

use super::candidates::AtomsByEntry;
use super::select::Selection;
use super::{all_installed, KeepReason, Node};

/// Layers decisions and covers may use: groups mode keeps priority 0 for fragment
/// punts, 1 for source punts and exact flows, and the last one for the catch-all.
pub(super) fn max_layers(caps: &NicCaps, groups: bool) -> u32 {
    if groups {
        caps.max_priority.saturating_sub(2)
    } else {
        caps.max_priority.saturating_add(1)
    }
}

/// Which selected nodes stay, and their layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// Per node: still in the plan.
    pub alive: Vec<bool>,
    /// Per node: its layer (meaningful for live nodes).
    pub layer: Vec<u32>,
}

/// Layers the selection and withdraws what does not fit in `max_layers` (recording
/// [`KeepReason::PriorityLimit`] and uninstalling withdrawn atoms in `sel`).
pub(super) fn fit_priorities(sel: &mut Selection, atoms: &AtomsByEntry, max_layers: u32) -> Layout {
    let n = sel.nodes.len();
    let mut layout = Layout {
        alive: vec![true; n],
        layer: vec![0; n],
    };
    loop {
        compute_layers(&sel.nodes, &layout.alive, atoms, &mut layout.layer);
        let too_deep = withdraw_too_deep(sel, &mut layout, max_layers);
        let orphaned = withdraw_orphaned(sel, &mut layout.alive, atoms);
        if !(too_deep || orphaned) {
            return layout;
        }
    }
}

/// Takes node `i` out of the plan.
fn withdraw(sel: &mut Selection, alive: &mut [bool], i: usize) {
    alive[i] = false;
    if let Node::Decide {
        domain,
        entry,
        atom,
        ..
    } = sel.nodes[i]
    {
        sel.keep((domain, entry), KeepReason::PriorityLimit);
        if let Some(s) = sel.installed.get_mut(&(domain, entry)) {
            s.remove(&atom);
        }
    }
}

/// Withdraws live nodes at or past `max_layers`; true when any.
fn withdraw_too_deep(sel: &mut Selection, layout: &mut Layout, max_layers: u32) -> bool {
    let mut changed = false;
    for i in 0..sel.nodes.len() {
        if layout.alive[i] && layout.layer[i] >= max_layers {
            withdraw(sel, &mut layout.alive, i);
            changed = true;
        }
    }
    changed
}

/// Withdraws live decisions whose covers went, or whose relied-on entries lost an
/// overlapping atom; true when any.
fn withdraw_orphaned(sel: &mut Selection, alive: &mut [bool], atoms: &AtomsByEntry) -> bool {
    let mut changed = false;
    for i in 0..sel.nodes.len() {
        if alive[i] && !still_supported(sel, alive, atoms, i) {
            withdraw(sel, alive, i);
            changed = true;
        }
    }
    changed
}

/// Whether what decision `i` relies on is all still in place (true for covers).
fn still_supported(sel: &Selection, alive: &[bool], atoms: &AtomsByEntry, i: usize) -> bool {
    let Node::Decide { domain, .. } = sel.nodes[i] else {
        return true;
    };
    let (Some(r), Some(a)) = (sel.relies.get(&i), sel.nodes[i].atom(atoms)) else {
        return true;
    };
    r.covers.iter().all(|&c| alive[c])
        && r.entries.iter().all(|&j| {
            atoms
                .get(&(domain, j))
                .is_some_and(|jatoms| all_installed(jatoms, sel.installed.get(&(domain, j)), &a))
        })
}

/// Longest chain of overlapping earlier live nodes, per domain, in list order.
pub(super) fn compute_layers(
    nodes: &[Node],
    alive: &[bool],
    atoms: &AtomsByEntry,
    layer: &mut [u32],
) {
    let mut by_domain: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if alive[i] {
            by_domain.entry(n.domain()).or_default().push(i);
        }
    }
    for (_, mut ids) in by_domain {
        ids.sort_by_key(|&i| (nodes[i].key(), i));
        let node_atoms: Vec<Option<Atom>> = ids.iter().map(|&i| nodes[i].atom(atoms)).collect();
        for k in 0..ids.len() {
            let mut l = 0;
            for m in 0..k {
                if let (Some(a), Some(b)) = (&node_atoms[m], &node_atoms[k]) {
                    if a.overlaps(b) {
                        l = l.max(layer[ids[m]] + 1);
                    }
                }
            }
            layer[ids[k]] = l;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::select::Reliance;
    use super::*;
    use crate::testutils as fixture;
    use std::collections::{HashMap, HashSet};

    /// An allow atom (entry 0) and the overlapping end-of-tier drop's atom (entry 1).
    fn two_overlapping() -> (Selection, AtomsByEntry) {
        let (_, program) = fixture::program(vec![fixture::allow_tcp("172.16.0.0/24", 80)], vec![]);
        let caps = NicCaps::mlx5(64);
        let atoms: AtomsByEntry = (0..2)
            .map(|e| {
                let m = program.domains[0].entries[e].exact.clone().unwrap();
                ((0, e), crate::atom::expand(&m, &caps, 16).unwrap())
            })
            .collect();
        let sel = Selection {
            nodes: vec![
                Node::Decide {
                    domain: 0,
                    entry: 0,
                    atom: 0,
                    allow: true,
                },
                Node::Decide {
                    domain: 0,
                    entry: 1,
                    atom: 0,
                    allow: false,
                },
            ],
            installed: HashMap::from([((0, 0), HashSet::from([0])), ((0, 1), HashSet::from([0]))]),
            relies: HashMap::from([(
                1,
                Reliance {
                    covers: vec![],
                    entries: vec![0],
                },
            )]),
            ..Selection::default()
        };
        (sel, atoms)
    }

    #[test]
    fn test_overlapping_nodes_stack_in_list_order() {
        let (mut sel, atoms) = two_overlapping();
        let layout = fit_priorities(&mut sel, &atoms, 2);
        assert_eq!(layout.layer, vec![0, 1]);
        assert_eq!(layout.alive, vec![true, true]);
        assert!(sel.reasons.is_empty());
    }

    #[test]
    fn test_nodes_past_the_last_layer_are_withdrawn() {
        let (mut sel, atoms) = two_overlapping();
        let layout = fit_priorities(&mut sel, &atoms, 1);
        assert_eq!(layout.alive, vec![true, false]);
        assert_eq!(sel.reasons.get(&(0, 1)), Some(&KeepReason::PriorityLimit));
        assert!(sel.installed[&(0, 1)].is_empty());
    }

    #[test]
    fn test_decision_goes_with_the_entry_it_relies_on() {
        let (mut sel, atoms) = two_overlapping();
        let mut alive = vec![false, true];
        sel.installed.get_mut(&(0, 0)).unwrap().clear();
        assert!(withdraw_orphaned(&mut sel, &mut alive, &atoms));
        assert_eq!(alive, vec![false, false]);
        assert_eq!(sel.reasons.get(&(0, 1)), Some(&KeepReason::PriorityLimit));
    }

    #[test]
    fn test_groups_mode_reserves_three_priorities() {
        let caps = NicCaps::mlx5(64);
        assert_eq!(max_layers(&caps, true), caps.max_priority - 2);
        assert_eq!(max_layers(&caps, false), caps.max_priority + 1);
    }
}
