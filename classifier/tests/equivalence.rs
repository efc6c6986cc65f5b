//! Differential tests: the fast classifier against the reference evaluator
//! (`capo_policy::eval`), verdict and decider, for random states and packets; after
//! random incremental updates; with two generations resident; and with updates
//! racing classification on another thread.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use capo_classifier::{Builder, GenerationCell, IfaceKind, Scratch};
use capo_policy::{Direction, Update, Verdict};
use common::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_equals_reference(updates in scenario(), pkts in prop::collection::vec(packet(), 1..24)) {
        let (state, ids) = build_state(&updates);
        let g = Builder::new().build(&state, &ids);
        check(&state, &g, &pkts)?;
    }

    /// The same programs padded to 3 words (the stack paths wider than one word)
    /// and to 6 words (the scratch-buffer path of programs over 256 rules).
    #[test]
    fn wide_programs_equal_reference(
        updates in scenario(),
        pkts in prop::collection::vec(packet(), 1..16),
        words in prop_oneof![Just(3usize), Just(6usize)],
    ) {
        let (state, ids) = build_state(&updates);
        let g = Builder::with_min_words(words).build(&state, &ids);
        check(&state, &g, &pkts)?;
    }

    /// Objects added one update at a time are numbered, kind by kind, in the order
    /// the state holds them, as a fresh table's full sync numbers them (a full sync
    /// of the same table could not tell: it never renumbers). Across kinds the two
    /// may differ: the full sync numbers profiles before policies, the targeted
    /// syncs in arrival order.
    #[test]
    fn targeted_syncs_number_new_objects_in_state_order(updates in scenario()) {
        use capo_policy::ids::PolicyRef;
        let mut state = capo_policy::State::new();
        let mut ids = capo_policy::IdTable::default();
        let mut b = Builder::new();
        for u in updates {
            let _ = b.apply(&mut state, &mut ids, u);
        }
        let increasing = |what: &str, got: Vec<Option<u32>>| -> Result<(), TestCaseError> {
            prop_assert!(got.iter().all(Option::is_some), "{} unnumbered: {:?}", what, got);
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "{} out of order: {:?}", what, got);
            Ok(())
        };
        increasing("sets", state.ipsets().keys().map(|k| ids.ipset(k)).collect())?;
        let policies: Vec<PolicyRef> =
            state.policies().keys().map(|k| PolicyRef::Policy(k.clone())).collect();
        let profiles: Vec<PolicyRef> =
            state.profiles().keys().map(|k| PolicyRef::Profile(k.clone())).collect();
        for (what, refs) in [("policies", &policies), ("profiles", &profiles)] {
            increasing(what, refs.iter().map(|r| ids.policy(r)).collect())?;
            // Their rules, list after list (ingress, then egress, of each in turn).
            let rules: Vec<Option<u32>> = refs
                .iter()
                .flat_map(|r| Direction::BOTH.into_iter().map(move |d| (r, d)))
                .flat_map(|(r, d)| {
                    let n = match r {
                        PolicyRef::Policy(k) => state.policies().get(k).map(|p| p.rules(d).len()),
                        PolicyRef::Profile(k) => state.profiles().get(k).map(|p| p.rules(d).len()),
                        PolicyRef::Internal(_) => None,
                    };
                    (0..n.unwrap_or(0)).map(move |i| (r, d, i))
                })
                .map(|(r, d, i)| ids.rule(r, d, i))
                .collect();
            increasing(what, rules)?;
        }
        // Each interface name once, where the state first meets it.
        let mut names: Vec<&str> = Vec::new();
        for w in state.workloads().values() {
            if !names.contains(&w.name.as_str()) {
                names.push(&w.name);
            }
        }
        increasing("interfaces", names.iter().map(|n| ids.interface(n)).collect())?;
    }

    #[test]
    fn incremental_updates_equal_reference_and_old_generation_stays_valid(
        updates in scenario(),
        later in prop::collection::vec(prop_oneof![
            (0..NSETS).prop_flat_map(set_update),
            // Sets no rule names, added and removed (a removal of a named set is
            // refused).
            (NSETS..NSETS + 2).prop_flat_map(set_update),
            (0..NSETS + 2).prop_map(|i| Update::IpSetRemove(set_id(i))),
            (0..NSETS, prop::collection::vec(member(), 0..3), prop::collection::vec(member(), 0..3))
                .prop_map(|(i, added, removed)| Update::IpSetDelta { id: set_id(i), added, removed }),
            (0..NPOL, policy()).prop_map(|(i, p)| Update::PolicyUpdate(pkey(i), p.into())),
            (0..NPOL).prop_map(|i| Update::PolicyRemove(pkey(i))),
            profile().prop_map(|p| Update::ProfileUpdate("prof1".into(), p.into())),
            Just(Update::ProfileRemove("prof1".into())),
            workload(1),
            workload(2),
            Just(Update::WorkloadRemove(wkey(2))),
            hep(1),
            config(),
            host_metadata(),
        ], 1..6),
        pkts in prop::collection::vec(packet(), 1..16),
    ) {
        let mut state = capo_policy::State::new();
        let mut ids = capo_policy::IdTable::default();
        let mut b = Builder::new();
        for u in updates {
            let _ = b.apply(&mut state, &mut ids, u);
        }
        let mut g = b.build(&state, &ids);
        check(&state, &g, &pkts)?;
        for u in later {
            let before_state = state.clone();
            let before = g.clone();
            match b.apply(&mut state, &mut ids, u) {
                Ok(next) => {
                    prop_assert!(next.id() >= before.id());
                    g = next;
                }
                Err(_) => prop_assert_eq!(b.current().map(|c| c.id()), Some(g.id())),
            }
            // The ids the update's targeted sync gave are the full sync's.
            let mut full = ids.clone();
            full.sync(&state);
            prop_assert_eq!(&full, &ids);
            // Two generations resident: the new one matches the new state, the old
            // one still matches the old state.
            check(&state, &g, &pkts)?;
            same_rule_ids(&state, &ids, &g, &pkts)?;
            check(&before_state, &before, &pkts)?;
        }
    }
}

/// One edit of a policy rule that keeps the policy's rule count.
#[derive(Debug, Clone)]
enum Edit {
    /// New destination (or source) ports.
    Ports(bool, Vec<capo_policy::PortRange>),
    /// Another action.
    Action(capo_policy::Action),
    /// Other IP sets a side must match (from those the programs likely use).
    Sets(bool, Vec<capo_policy::IpSetId>),
    /// Another protocol.
    Protocol(Option<capo_policy::Protocol>),
    /// Rule `k`'s (of the same list) source sets, destination sets or protocol
    /// (0, 1, 2): atoms and protocols the program already has, so a patch applies.
    Borrow(usize, u8),
    /// Another rule altogether (sets, protocols, ICMP, nets...).
    Rule(Box<capo_policy::Rule>),
}

fn edit() -> impl Strategy<Value = Edit> {
    use capo_policy::Action;
    prop_oneof![
        3 => (any::<bool>(), prop::collection::vec(range(), 0..3)).prop_map(|(src, r)| Edit::Ports(src, r)),
        1 => prop_oneof![Just(Action::Allow), Just(Action::Deny), Just(Action::Log), Just(Action::Pass)]
            .prop_map(Edit::Action),
        2 => (any::<bool>(), prop::collection::vec((0..NSETS).prop_map(set_id), 0..2))
            .prop_map(|(src, sets)| Edit::Sets(src, sets)),
        1 => prop::option::of((0..PROTOS.len()).prop_map(|i| capo_policy::Protocol(PROTOS[i])))
            .prop_map(Edit::Protocol),
        3 => (0..4usize, 0..3u8).prop_map(|(k, what)| Edit::Borrow(k, what)),
        2 => rule().prop_map(|r| Edit::Rule(Box::new(r))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Policies and profiles edited rule by rule, their rule counts kept (what the
    /// compiler patches into programs in place where it can): after every edit the
    /// new generation matches the reference and a fresh build's rule ids, and the
    /// one before still matches the state before; dense, wide and sparse programs.
    #[test]
    fn policy_edits_patched_in_place_equal_reference(
        updates in scenario(),
        // Policies 0..NPOL, then profiles prof0 and prof1.
        edits in prop::collection::vec((0..NPOL + 2, any::<bool>(), 0..4usize, edit()), 1..8),
        pkts in prop::collection::vec(packet(), 1..16),
        words in prop_oneof![Just(1usize), Just(3usize), Just(6usize)],
    ) {
        let mut state = capo_policy::State::new();
        let mut ids = capo_policy::IdTable::default();
        let mut b = Builder::with_min_words(words);
        for u in updates {
            let _ = b.apply(&mut state, &mut ids, u);
        }
        let mut g = b.build(&state, &ids);
        for (i, inbound, j, edit) in edits {
            let profile = i.checked_sub(NPOL).map(|p| format!("prof{p}"));
            let (mut inbound_rules, mut outbound_rules, policy) = match &profile {
                Some(name) => {
                    let Some(p) = state.profiles().get(name) else { continue };
                    (p.inbound.clone(), p.outbound.clone(), None)
                }
                None => {
                    let Some(p) = state.policies().get(&pkey(i)) else { continue };
                    (p.inbound.clone(), p.outbound.clone(), Some(capo_policy::Policy::clone(p)))
                }
            };
            let rules = if inbound { &mut inbound_rules } else { &mut outbound_rules };
            let n = rules.len();
            let lender = match &edit {
                Edit::Borrow(k, _) => rules.get(k % n.max(1)).cloned(),
                _ => None,
            };
            let Some(rule) = rules.get_mut(j % n.max(1)) else {
                continue;
            };
            match edit {
                Edit::Ports(true, ports) => rule.src.ports = ports,
                Edit::Ports(false, ports) => rule.dst.ports = ports,
                Edit::Action(action) => rule.action = action,
                Edit::Sets(true, sets) => rule.src.ip_sets = sets,
                Edit::Sets(false, sets) => rule.dst.ip_sets = sets,
                Edit::Protocol(protocol) => rule.protocol = protocol,
                Edit::Borrow(_, what) => {
                    let Some(lender) = lender else { continue };
                    match what {
                        0 => rule.src.ip_sets = lender.src.ip_sets,
                        1 => rule.dst.ip_sets = lender.dst.ip_sets,
                        _ => rule.protocol = lender.protocol,
                    }
                }
                Edit::Rule(r) => *rule = *r,
            }
            let update = match (profile, policy) {
                (Some(name), _) => Update::ProfileUpdate(
                    name,
                    capo_policy::Profile { inbound: inbound_rules, outbound: outbound_rules }.into(),
                ),
                (None, Some(p)) => Update::PolicyUpdate(
                    pkey(i),
                    capo_policy::Policy { inbound: inbound_rules, outbound: outbound_rules, ..p }.into(),
                ),
                (None, None) => continue,
            };
            let before_state = state.clone();
            let before = g.clone();
            match b.apply(&mut state, &mut ids, update) {
                Ok(next) => g = next,
                Err(_) => prop_assert_eq!(b.current().map(|c| c.id()), Some(g.id())),
            }
            prop_assert_eq!(b.check_programs_against_specs(), Ok(()));
            check(&state, &g, &pkts)?;
            same_rule_ids(&state, &ids, &g, &pkts)?;
            check(&before_state, &before, &pkts)?;
        }
    }
}

/// A policy update recompiles programs but moves no interface: the interface maps
/// carry over; an index fixed since (`set_interface_index`) is found after the next
/// update that recompiles an interface.
#[test]
fn interface_maps_follow_policy_updates_and_new_indexes() {
    use capo_policy::*;
    let mut state = State::new();
    let mut ids = IdTable::default();
    let mut b = Builder::new();
    let policy = |port: u16| {
        let mut rule = Rule::any(Action::Allow);
        rule.dst.ports = vec![PortRange::single(port)];
        common::t1_policy(vec![rule])
    };
    let workload = common::t1_workload;
    for u in [
        Update::PolicyUpdate(common::pkey(0), policy(80).into()),
        Update::WorkloadUpdate(common::wkey(0), workload("tun0", "10.0.0.1/32").into()),
        Update::WorkloadUpdate(common::wkey(1), workload("tun1", "10.0.0.2/32").into()),
    ] {
        b.apply(&mut state, &mut ids, u).unwrap();
    }
    let g1 = b.current().unwrap().clone();
    let sw0 = ids.interface("tun0").unwrap();
    let sw1 = ids.interface("tun1").unwrap();
    let mut port_update = |ids: &mut IdTable, port: u16| {
        b.apply(
            &mut state,
            ids,
            Update::PolicyUpdate(common::pkey(0), policy(port).into()),
        )
        .unwrap()
    };
    let g2 = port_update(&mut ids, 81);
    for g in [&g1, &g2] {
        assert_eq!(g.interface_by_sw_if_index(sw0), g.interface("tun0"));
        assert_eq!(g.interface_by_sw_if_index(sw1), g.interface("tun1"));
        assert!(g.interface("tun0").is_some() && g.interface("tun0") != g.interface("tun1"));
    }
    // The dataplane fixes tun1's index; the next policy update finds it there.
    ids.set_interface_index("tun1", 77);
    let g3 = port_update(&mut ids, 82);
    assert_eq!(g3.interface_by_sw_if_index(77), g3.interface("tun1"));
    assert_eq!(g3.interface_by_sw_if_index(sw0), g3.interface("tun0"));
}

#[test]
fn member_add_changes_verdict_without_recompiling_programs() {
    use capo_policy::*;
    let mut state = State::new();
    let mut ids = IdTable::default();
    let mut b = Builder::new();
    let set = IpSetId::new("s:a").unwrap();
    let key = common::wkey(0);
    let mut rule = Rule::any(Action::Allow);
    rule.src.ip_sets.push(set.clone());
    let ups = vec![
        Update::IpSetReplace {
            id: set.clone(),
            kind: IpSetKind::Net,
            members: vec![],
        },
        Update::PolicyUpdate(common::pkey(0), common::t1_policy(vec![rule]).into()),
        Update::WorkloadUpdate(
            key.clone(),
            common::t1_workload("tun0", "10.0.0.1/32").into(),
        ),
    ];
    for u in ups {
        b.apply(&mut state, &mut ids, u).unwrap();
    }
    let g1 = b.current().unwrap().clone();
    let pkt = Packet {
        src: "10.0.0.9".parse().unwrap(),
        dst: "10.0.0.1".parse().unwrap(),
        protocol: Protocol::TCP,
        l4: L4::Ports { src: 1000, dst: 80 },
    };
    let iface = g1.interface("tun0").unwrap();
    let mut s = Scratch::default();
    assert_eq!(
        g1.classify(iface, Direction::Ingress, &pkt, &mut s)
            .unwrap()
            .verdict,
        Verdict::Deny
    );
    let g2 = b
        .apply(
            &mut state,
            &mut ids,
            Update::IpSetDelta {
                id: set,
                added: vec!["10.0.0.9".parse().unwrap()],
                removed: vec![],
            },
        )
        .unwrap();
    assert!(g2.id() > g1.id());
    let d = g2
        .classify(iface, Direction::Ingress, &pkt, &mut s)
        .unwrap();
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.rule_id,
        ids.rule(
            &capo_policy::ids::PolicyRef::Policy(common::pkey(0)),
            Direction::Ingress,
            0
        )
    );
    // The old generation is untouched.
    assert_eq!(
        g1.classify(iface, Direction::Ingress, &pkt, &mut s)
            .unwrap()
            .verdict,
        Verdict::Deny
    );
}

/// Updates race classification on another thread: every verdict the reader sees
/// is the verdict of one of the generations published (here: allow or deny, and the
/// decider agrees with the verdict of that generation).
#[test]
fn updates_racing_classification_see_one_generation_or_the_other() {
    use capo_policy::*;
    let mut state = State::new();
    let mut ids = IdTable::default();
    let mut b = Builder::new();
    let set = IpSetId::new("s:a").unwrap();
    let mut allow = Rule::any(Action::Allow);
    allow.src.ip_sets.push(set.clone());
    let ups = vec![
        Update::IpSetReplace {
            id: set.clone(),
            kind: IpSetKind::Net,
            members: vec![],
        },
        Update::PolicyUpdate(
            common::pkey(0),
            Policy {
                inbound: vec![allow],
                outbound: vec![],
                untracked: false,
                pre_dnat: false,
                tier: "t1".into(),
            }
            .into(),
        ),
        Update::WorkloadUpdate(
            common::wkey(0),
            WorkloadEndpoint {
                name: "tun0".into(),
                profile_ids: vec![],
                ipv4_nets: vec!["10.0.0.1/32".parse().unwrap()],
                ipv6_nets: vec![],
                tiers: vec![TierInfo {
                    name: "t1".into(),
                    ingress: vec![common::pkey(0)],
                    egress: vec![],
                    default_action: TierDefault::Deny,
                }],
            }
            .into(),
        ),
    ];
    for u in ups {
        b.apply(&mut state, &mut ids, u).unwrap();
    }
    let cell = Arc::new(GenerationCell::new(b.current().unwrap().clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let pkt = Packet {
        src: "10.0.0.9".parse().unwrap(),
        dst: "10.0.0.1".parse().unwrap(),
        protocol: Protocol::TCP,
        l4: L4::Ports { src: 1000, dst: 80 },
    };
    // The reader counts its classifications so the writer can wait for it: on a
    // loaded machine the reader thread may otherwise not run until the writer is done.
    let classified = Arc::new(AtomicU64::new(0));
    let reader = {
        let cell = cell.clone();
        let stop = stop.clone();
        let classified = classified.clone();
        std::thread::spawn(move || {
            let mut s = Scratch::default();
            let mut seen = [0u64; 2];
            while !stop.load(Ordering::Relaxed) {
                let g = cell.load();
                let iface = g
                    .interface_of(&IfaceKind::Workload(common::wkey(0)))
                    .unwrap();
                let d = g.classify(iface, Direction::Ingress, &pkt, &mut s).unwrap();
                // Odd generations (after an add) allow, even ones deny: check the
                // verdict against the generation actually read.
                match (d.verdict, d.decider()) {
                    (Verdict::Allow, eval::Decider::PolicyRule { .. }) => seen[0] += 1,
                    (Verdict::Deny, eval::Decider::EndOfTier { .. }) => seen[1] += 1,
                    other => panic!("mixed verdict {other:?}"),
                }
                classified.fetch_add(1, Ordering::Release);
            }
            seen
        })
    };
    // Two more classifications than counted now: at least one loaded the generation
    // published before this call.
    let wait_for_reader = || {
        let target = classified.load(Ordering::Acquire) + 2;
        while classified.load(Ordering::Acquire) < target {
            std::thread::yield_now();
        }
    };
    let member: Member = "10.0.0.9".parse().unwrap();
    let mut expected = Vec::new();
    for i in 0..2000 {
        let (added, removed) = if i % 2 == 0 {
            (vec![member], vec![])
        } else {
            (vec![], vec![member])
        };
        let g = b
            .apply(
                &mut state,
                &mut ids,
                Update::IpSetDelta {
                    id: set.clone(),
                    added,
                    removed,
                },
            )
            .unwrap();
        expected.push((
            g.id(),
            if i % 2 == 0 {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
        ));
        cell.publish(g);
        // Checkpoints every 101 updates alternate between an allowing and a denying
        // generation, so the reader is known to have classified under both.
        if i % 101 == 0 {
            wait_for_reader();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();
    assert!(seen[0] > 0 && seen[1] > 0, "reader saw {seen:?}");
    // Each published generation gives its own verdict.
    let mut s = Scratch::default();
    let g = cell.load();
    let iface = g.interface("tun0").unwrap();
    assert_eq!(
        g.classify(iface, Direction::Ingress, &pkt, &mut s)
            .unwrap()
            .verdict,
        expected.last().unwrap().1
    );
}

#[test]
fn unknown_interface_kind_has_no_program() {
    let (state, ids) = build_state(&[]);
    let g = Builder::new().build(&state, &ids);
    assert!(g.interface_of(&IfaceKind::Workload(wkey(9))).is_none());
    assert!(g.interface_of(&IfaceKind::Host).is_some());
    let mut s = Scratch::default();
    let host = g.interface_of(&IfaceKind::Host).unwrap();
    let pkt = capo_policy::Packet {
        src: ip(0),
        dst: ip(1),
        protocol: capo_policy::Protocol::UDP,
        l4: capo_policy::L4::Ports { src: 1, dst: 2 },
    };
    // No host endpoint: host traffic is not policed.
    assert_eq!(
        g.classify(host, Direction::Ingress, &pkt, &mut s)
            .unwrap()
            .verdict,
        Verdict::Allow
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Policies of 260 to 300 random rules per direction: every program holding a
    /// policy (staged ones are not enforced) has over 256 rules and takes the sparse layout, its candidates
    /// spread over many words.
    #[test]
    fn many_rule_programs_equal_reference(
        updates in scenario(),
        extra in prop::collection::vec(
            (prop::collection::vec(rule(), 260..300), prop::collection::vec(rule(), 260..300)),
            NPOL,
        ),
        pkts in prop::collection::vec(packet(), 1..16),
    ) {
        let mut extra = extra.into_iter();
        let updates: Vec<Update> = updates
            .into_iter()
            .map(|u| match u {
                Update::PolicyUpdate(key, mut p) => {
                    if let Some((inbound, outbound)) = extra.next() {
                        // The random rules first, then the policy's own.
                        let p = std::sync::Arc::make_mut(&mut p);
                        p.inbound.splice(0..0, inbound);
                        p.outbound.splice(0..0, outbound);
                    }
                    Update::PolicyUpdate(key, p)
                }
                u => u,
            })
            .collect();
        let (state, ids) = build_state(&updates);
        let g = Builder::new().build(&state, &ids);
        let sparse = g.memory().sparse_programs;
        let wide = state
            .workloads()
            .values()
            .flat_map(|w| &w.tiers)
            .flat_map(|t| t.ingress.iter().chain(&t.egress))
            .any(|key| !key.kind.starts_with("Staged"));
        prop_assert!(!wide || sparse > 0, "no program took the sparse layout");
        check(&state, &g, &pkts)?;
    }
}

/// A policy three endpoints list, edited in place: each edit that keeps its rule
/// count patches the three interfaces' programs (dense and sparse layouts), which
/// equal programs laid out afresh and give the new verdicts; an edit that adds a
/// rule compiles them again.
#[test]
fn port_edits_patch_every_endpoint_listing_the_policy() {
    use capo_policy::*;
    for words in [1, 6] {
        let mut state = State::new();
        let mut ids = IdTable::default();
        let mut b = Builder::with_min_words(words);
        let policy = |ports: &[u16]| {
            let rules = ports
                .iter()
                .map(|p| {
                    let mut rule = Rule::any(Action::Allow);
                    rule.protocol = Some(Protocol::TCP);
                    rule.dst.ports = vec![PortRange::single(*p)];
                    rule
                })
                .collect();
            common::t1_policy(rules)
        };
        b.apply(
            &mut state,
            &mut ids,
            Update::PolicyUpdate(common::pkey(0), policy(&[80, 443]).into()),
        )
        .unwrap();
        for i in 0..3 {
            let addr = format!("10.0.0.{}/32", i + 1);
            let wl = common::t1_workload(&format!("tun{i}"), &addr);
            b.apply(
                &mut state,
                &mut ids,
                Update::WorkloadUpdate(common::wkey(i), wl.into()),
            )
            .unwrap();
        }
        let verdict = |g: &capo_classifier::Generation, port: u16| {
            let packet = common::tcp("10.9.0.1", 40000, "10.0.0.2", port);
            common::ingress_verdict(g, "tun1", &packet)
        };
        let before = b.patched_interfaces();
        let g = b
            .apply(
                &mut state,
                &mut ids,
                Update::PolicyUpdate(common::pkey(0), policy(&[8080, 443]).into()),
            )
            .unwrap();
        assert_eq!(b.patched_interfaces(), before + 3, "{words} words");
        assert_eq!(b.check_programs_against_specs(), Ok(()));
        assert_eq!(verdict(&g, 8080), Verdict::Allow);
        assert_eq!(verdict(&g, 80), Verdict::Deny);
        let g = b
            .apply(
                &mut state,
                &mut ids,
                Update::PolicyUpdate(common::pkey(0), policy(&[22, 8080, 443]).into()),
            )
            .unwrap();
        assert_eq!(
            b.patched_interfaces(),
            before + 3,
            "a rule added: compiled again"
        );
        assert_eq!(b.check_programs_against_specs(), Ok(()));
        assert_eq!(verdict(&g, 22), Verdict::Allow);
    }
}

/// A rule without port criteria that gains a named-port criterion (its numeric
/// ranges staying none) is patched in place: a port interval's positive bitmap
/// holds the rules without a port criterion, so the patch must take the rule's bits
/// out of every interval, and packets to other ports no longer match it.
#[test]
fn a_rule_gaining_a_named_port_leaves_the_other_ports() {
    use capo_policy::*;
    let named = common::set_id(0);
    let tcp = |action: Action, named_ports: bool| {
        let mut rule = Rule::any(action);
        rule.protocol = Some(Protocol::TCP);
        if named_ports {
            rule.dst.named_port_sets = vec![named.clone()];
        }
        rule
    };
    // The second rule names the set, so the first can take it in place.
    let policy = |first_named: bool| {
        let rules = vec![tcp(Action::Allow, first_named), tcp(Action::Deny, true)];
        Update::PolicyUpdate(common::pkey(0), common::t1_policy(rules).into())
    };
    for words in [1, 6] {
        let (mut state, mut ids) = (State::new(), IdTable::default());
        let mut b = Builder::with_min_words(words);
        let set = common::tcp_port_set(&named, "10.0.0.1", 8080);
        let endpoint = common::tun0_endpoint();
        common::apply_all(
            &mut b,
            &mut state,
            &mut ids,
            vec![set, policy(false), endpoint],
        );
        let g = common::apply_patched(&mut b, &mut state, &mut ids, policy(true));
        let verdict = |port: u16| {
            let packet = common::tcp("10.9.0.1", 40000, "10.0.0.1", port);
            common::ingress_verdict(&g, "tun0", &packet)
        };
        assert_eq!(verdict(8080), Verdict::Allow, "{words} words");
        assert_eq!(verdict(80), Verdict::Deny, "{words} words");
    }
}

/// A program whose last destination criterion a patch takes away skips the
/// destination side like a program laid out without one (the patched program
/// keeps the atom's slot, its bitmap empty).
#[test]
fn a_patch_dropping_the_last_destination_criterion_skips_the_side() {
    use capo_policy::*;
    let policy = |dst_net: bool| {
        let mut first = Rule::any(Action::Allow);
        first.protocol = Some(Protocol::TCP);
        first.dst.ports = vec![PortRange::single(80)];
        if dst_net {
            first.dst.nets = vec!["10.0.0.1/32".parse().unwrap()];
        }
        let rules = vec![first, Rule::any(Action::Deny)];
        Update::PolicyUpdate(common::pkey(0), common::t1_policy(rules).into())
    };
    for words in [1, 6] {
        let (mut state, mut ids) = (State::new(), IdTable::default());
        let mut b = Builder::with_min_words(words);
        let endpoint = common::tun0_endpoint();
        common::apply_all(&mut b, &mut state, &mut ids, vec![policy(true), endpoint]);
        let g = common::apply_patched(&mut b, &mut state, &mut ids, policy(false));
        let packet = common::tcp("10.9.0.1", 40000, "10.0.0.1", 80);
        let verdict = common::ingress_verdict(&g, "tun0", &packet);
        assert_eq!(verdict, Verdict::Allow, "{words} words");
    }
}

/// A rule whose only source criterion is a negated named-port set: no rule has a
/// source port range, yet the source side is not skipped (the set's atoms must
/// still be looked up).
#[test]
fn a_negated_source_named_port_is_checked() {
    use capo_policy::*;
    let named = common::set_id(0);
    let rule = Rule {
        protocol: Some(Protocol::TCP),
        src: SideMatch {
            not_named_port_sets: vec![named.clone()],
            ..SideMatch::default()
        },
        ..Rule::any(Action::Allow)
    };
    for words in [1, 6] {
        let (mut state, mut ids) = (State::new(), IdTable::default());
        let mut b = Builder::with_min_words(words);
        let updates = vec![
            common::tcp_port_set(&named, "10.9.0.1", 40000),
            Update::PolicyUpdate(
                common::pkey(0),
                common::t1_policy(vec![rule.clone()]).into(),
            ),
            common::tun0_endpoint(),
        ];
        let g = common::apply_all(&mut b, &mut state, &mut ids, updates);
        let verdict = |sport: u16| {
            let packet = common::tcp("10.9.0.1", sport, "10.0.0.1", 80);
            common::ingress_verdict(&g, "tun0", &packet)
        };
        assert_eq!(verdict(40000), Verdict::Deny, "{words} words");
        assert_eq!(verdict(40001), Verdict::Allow, "{words} words");
    }
}

/// A patch taking away a program's only negated source named-port criterion: the
/// program then skips the source port side, as a fresh layout of the new rules
/// does, and the packet the criterion excluded is allowed.
#[test]
fn a_patch_dropping_the_last_source_named_port_skips_the_side() {
    use capo_policy::*;
    let named = common::set_id(0);
    let policy = |negated: bool| {
        let mut rule = Rule::any(Action::Allow);
        rule.protocol = Some(Protocol::TCP);
        rule.dst.ports = vec![PortRange::single(80)];
        if negated {
            rule.src.not_named_port_sets = vec![named.clone()];
        }
        Update::PolicyUpdate(common::pkey(0), common::t1_policy(vec![rule]).into())
    };
    for words in [1, 6] {
        let (mut state, mut ids) = (State::new(), IdTable::default());
        let mut b = Builder::with_min_words(words);
        let set = common::tcp_port_set(&named, "10.9.0.1", 40000);
        let endpoint = common::tun0_endpoint();
        let packet = common::tcp("10.9.0.1", 40000, "10.0.0.1", 80);
        let g = common::apply_all(
            &mut b,
            &mut state,
            &mut ids,
            vec![set, policy(true), endpoint],
        );
        assert_eq!(common::ingress_verdict(&g, "tun0", &packet), Verdict::Deny);
        let g = common::apply_patched(&mut b, &mut state, &mut ids, policy(false));
        let verdict = common::ingress_verdict(&g, "tun0", &packet);
        assert_eq!(verdict, Verdict::Allow, "{words} words");
    }
}

/// A profile three endpoints use, edited in place: its port edit patches the three
/// interfaces' programs, which equal programs laid out afresh and give the new
/// verdicts.
#[test]
fn profile_edits_patch_every_endpoint_using_the_profile() {
    use capo_policy::*;
    let mut state = State::new();
    let mut ids = IdTable::default();
    let mut b = Builder::new();
    let profile = |port: u16| {
        let mut rule = Rule::any(Action::Allow);
        rule.protocol = Some(Protocol::TCP);
        rule.dst.ports = vec![PortRange::single(port)];
        Profile {
            inbound: vec![rule],
            outbound: vec![Rule::any(Action::Allow)],
        }
    };
    b.apply(
        &mut state,
        &mut ids,
        Update::ProfileUpdate("kns".into(), profile(80).into()),
    )
    .unwrap();
    for i in 0..3 {
        let mut wl = common::t1_workload(&format!("tun{i}"), &format!("10.0.0.{}/32", i + 1));
        wl.tiers.clear();
        wl.profile_ids = vec!["kns".into()];
        b.apply(
            &mut state,
            &mut ids,
            Update::WorkloadUpdate(common::wkey(i), wl.into()),
        )
        .unwrap();
    }
    let before = b.patched_interfaces();
    let g = b
        .apply(
            &mut state,
            &mut ids,
            Update::ProfileUpdate("kns".into(), profile(8080).into()),
        )
        .unwrap();
    assert_eq!(b.patched_interfaces(), before + 3);
    assert_eq!(b.check_programs_against_specs(), Ok(()));
    let verdict = |port: u16| {
        let packet = common::tcp("10.9.0.1", 40000, "10.0.0.3", port);
        common::ingress_verdict(&g, "tun2", &packet)
    };
    assert_eq!(verdict(8080), Verdict::Allow);
    assert_eq!(verdict(80), Verdict::Deny);
}

/// Replicas (endpoints listing the same policies) classify with one program per
/// direction, laid out once: a policy edit patches it once and they keep sharing
/// it, a replica added or re-added later takes it, and an endpoint whose list
/// differs (even by a policy of the same shape) never shares it. Verdicts stay each
/// endpoint's own throughout.
#[test]
fn replicas_share_one_program_through_edits_and_churn() {
    use capo_policy::*;
    let mut state = State::new();
    let mut ids = IdTable::default();
    let mut b = Builder::new();
    let policy = |port: u16| {
        let mut rule = Rule::any(Action::Allow);
        rule.protocol = Some(Protocol::TCP);
        rule.dst.ports = vec![PortRange::single(port)];
        common::t1_policy(vec![rule])
    };
    let replica =
        |i: usize| common::t1_workload(&format!("tun{i}"), &format!("10.0.0.{}/32", i + 1));
    let listing_p1 = |i: usize| {
        let mut w = replica(i);
        w.tiers[0].ingress = vec![common::pkey(1)];
        w
    };
    let mut apply = |b: &mut Builder, u: Update| b.apply(&mut state, &mut ids, u).unwrap();
    apply(
        &mut b,
        Update::PolicyUpdate(common::pkey(0), policy(80).into()),
    );
    apply(
        &mut b,
        Update::PolicyUpdate(common::pkey(1), policy(81).into()),
    );
    for i in 0..3 {
        apply(
            &mut b,
            Update::WorkloadUpdate(common::wkey(i), replica(i).into()),
        );
    }
    let mut g = apply(
        &mut b,
        Update::WorkloadUpdate(common::wkey(3), listing_p1(3).into()),
    );

    let shared = |g: &capo_classifier::Generation, x: usize, y: usize| {
        let id = |i: usize| g.interface(&format!("tun{i}")).unwrap();
        g.shares_program(id(x), id(y), Direction::Ingress)
    };
    let verdict = |g: &capo_classifier::Generation, i: usize, port: u16| {
        let pkt = Packet {
            src: "10.9.0.1".parse().unwrap(),
            dst: format!("10.0.0.{}", i + 1).parse().unwrap(),
            protocol: Protocol::TCP,
            l4: L4::Ports {
                src: 40000,
                dst: port,
            },
        };
        let iface = g.interface(&format!("tun{i}")).unwrap();
        g.classify(iface, Direction::Ingress, &pkt, &mut Scratch::default())
            .unwrap()
            .verdict
    };
    assert!(shared(&g, 0, 1) && shared(&g, 0, 2));
    assert!(!shared(&g, 0, 3), "another policy of the same shape");
    for i in 0..3 {
        assert_eq!(
            (verdict(&g, i, 80), verdict(&g, i, 81)),
            (Verdict::Allow, Verdict::Deny)
        );
    }
    assert_eq!(
        (verdict(&g, 3, 80), verdict(&g, 3, 81)),
        (Verdict::Deny, Verdict::Allow)
    );

    // The replicas' policy edited: patched once, for all three.
    let patched = b.patched_interfaces();
    g = apply(
        &mut b,
        Update::PolicyUpdate(common::pkey(0), policy(8080).into()),
    );
    assert_eq!(b.patched_interfaces(), patched + 3);
    assert_eq!(b.check_programs_against_specs(), Ok(()));
    assert!(shared(&g, 0, 1) && shared(&g, 0, 2) && !shared(&g, 0, 3));
    for i in 0..3 {
        assert_eq!(
            (verdict(&g, i, 8080), verdict(&g, i, 80)),
            (Verdict::Allow, Verdict::Deny)
        );
    }
    assert_eq!(verdict(&g, 3, 81), Verdict::Allow);

    // A replica added after the edit, and one removed and added again, take the
    // patched program.
    g = apply(
        &mut b,
        Update::WorkloadUpdate(common::wkey(4), replica(4).into()),
    );
    assert!(shared(&g, 4, 0));
    apply(&mut b, Update::WorkloadRemove(common::wkey(1)));
    g = apply(
        &mut b,
        Update::WorkloadUpdate(common::wkey(1), replica(1).into()),
    );
    assert!(shared(&g, 1, 0));
    assert_eq!(verdict(&g, 4, 8080), Verdict::Allow);

    // A replica moved to the other policy shares the other endpoint's program.
    g = apply(
        &mut b,
        Update::WorkloadUpdate(common::wkey(2), listing_p1(2).into()),
    );
    assert!(shared(&g, 2, 3) && !shared(&g, 2, 0));
    assert_eq!(
        (verdict(&g, 2, 81), verdict(&g, 2, 8080)),
        (Verdict::Allow, Verdict::Deny)
    );
    assert_eq!(b.check_programs_against_specs(), Ok(()));
}

/// A policy's rules edited one at a time are held in its users' overlays, not
/// rewritten in their bitmaps: each edit one more overlaid rule, the verdicts those
/// of the new rules. An edit undone leaves the overlay; the edit that would take
/// it past eight rules lays the program out anew, with no overlay.
#[test]
fn edits_are_held_in_an_overlay_up_to_its_bound() {
    use capo_policy::*;
    let allow_port = |port: u16| Rule {
        protocol: Some(Protocol::TCP),
        dst: SideMatch {
            ports: vec![PortRange::single(port)],
            ..SideMatch::default()
        },
        ..Rule::any(Action::Allow)
    };
    let policy = |ports: &[u16]| {
        let mut rules: Vec<Rule> = ports.iter().map(|p| allow_port(*p)).collect();
        rules.push(Rule::any(Action::Deny));
        Update::PolicyUpdate(common::pkey(0), common::t1_policy(rules).into())
    };
    for words in [1, 6] {
        let (mut state, mut ids) = (State::new(), IdTable::default());
        let mut b = Builder::with_min_words(words);
        let mut ports: Vec<u16> = (1000..1012).collect();
        let endpoint = common::tun0_endpoint();
        common::apply_all(&mut b, &mut state, &mut ids, vec![policy(&ports), endpoint]);
        assert_eq!(b.overlaid_rules(), 0);
        let verdict = |g: &capo_classifier::Generation, port: u16| {
            let packet = common::tcp("10.9.0.1", 40000, "10.0.0.1", port);
            common::ingress_verdict(g, "tun0", &packet)
        };
        // Rule 0 edited, then back: the overlay holds it, then lets it go.
        ports[0] = 2000;
        let g = common::apply_patched(&mut b, &mut state, &mut ids, policy(&ports));
        assert_eq!(b.overlaid_rules(), 1, "{words} words");
        assert_eq!(verdict(&g, 2000), Verdict::Allow);
        assert_eq!(verdict(&g, 1000), Verdict::Deny);
        ports[0] = 1000;
        let g = common::apply_patched(&mut b, &mut state, &mut ids, policy(&ports));
        assert_eq!(b.overlaid_rules(), 0, "{words} words");
        assert_eq!(verdict(&g, 1000), Verdict::Allow);
        assert_eq!(verdict(&g, 2000), Verdict::Deny);
        // Eight rules edited: eight overlaid; the ninth lays the program out.
        for k in 0..9 {
            ports[k] = 3000 + k as u16;
            let g = common::apply_patched(&mut b, &mut state, &mut ids, policy(&ports));
            let overlaid = if k < 8 { k + 1 } else { 0 };
            assert_eq!(b.overlaid_rules(), overlaid, "edit {k}, {words} words");
            for (j, port) in ports.iter().enumerate() {
                assert_eq!(
                    verdict(&g, *port),
                    Verdict::Allow,
                    "rule {j} after edit {k}"
                );
            }
            assert_eq!(verdict(&g, 1000 + k as u16), Verdict::Deny, "edit {k}");
        }
    }
}

/// Overlaid rules with ICMP criteria and negated named ports, checked packet by
/// packet: each edit's verdicts are the new rule's, and the reference evaluator's.
#[test]
fn overlaid_icmp_and_negated_named_port_rules_decide_as_laid_out_ones() {
    use capo_policy::*;
    let named = common::set_id(0);
    let echo = |t: u8| {
        Some(IcmpMatch {
            icmp_type: t,
            code: None,
        })
    };
    let icmp_rule = |icmp: Option<IcmpMatch>, not_icmp: Option<IcmpMatch>| Rule {
        protocol: Some(Protocol::ICMP),
        icmp,
        not_icmp,
        ..Rule::any(Action::Allow)
    };
    let nnp_rule = |negated: bool| Rule {
        protocol: Some(Protocol::TCP),
        src: SideMatch {
            not_named_port_sets: if negated { vec![named.clone()] } else { vec![] },
            ports: if negated {
                vec![]
            } else {
                vec![PortRange::single(7)]
            },
            ..SideMatch::default()
        },
        ..Rule::any(Action::Allow)
    };
    let policy = |first: Rule, second: Rule| {
        let rules = vec![first, second, Rule::any(Action::Deny)];
        Update::PolicyUpdate(common::pkey(0), common::t1_policy(rules).into())
    };
    let ping = |t: u8| Packet {
        src: "10.9.0.1".parse().unwrap(),
        dst: "10.0.0.1".parse().unwrap(),
        protocol: Protocol::ICMP,
        l4: L4::Icmp {
            icmp_type: t,
            code: 0,
        },
    };
    let from = |sport: u16| common::tcp("10.9.0.1", sport, "10.0.0.1", 80);
    let packets = [ping(8), ping(0), ping(3), from(40000), from(40001), from(7)];
    let steps = [
        (
            icmp_rule(echo(0), None),
            nnp_rule(true),
            [false, true, false, false, true, true],
        ),
        (
            icmp_rule(None, echo(8)),
            nnp_rule(true),
            [false, true, true, false, true, true],
        ),
        (
            icmp_rule(echo(8), echo(8)),
            nnp_rule(false),
            [false, false, false, false, false, true],
        ),
    ];
    for words in [1, 6] {
        let (mut state, mut ids) = (State::new(), IdTable::default());
        let mut b = Builder::with_min_words(words);
        let set = common::tcp_port_set(&named, "10.9.0.1", 40000);
        let first = policy(icmp_rule(echo(8), None), nnp_rule(false));
        common::apply_all(
            &mut b,
            &mut state,
            &mut ids,
            vec![set, first, common::tun0_endpoint()],
        );
        for (step, (icmp, nnp, allowed)) in steps.iter().enumerate() {
            let update = policy(icmp.clone(), nnp.clone());
            let g = common::apply_patched(&mut b, &mut state, &mut ids, update);
            assert!(b.overlaid_rules() > 0, "step {step}: not overlaid");
            for (pkt, allowed) in packets.iter().zip(allowed) {
                let want = if *allowed {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
                let got = common::ingress_verdict(&g, "tun0", pkt);
                assert_eq!(got, want, "step {step}, {pkt:?}, {words} words");
            }
            // Every interface and direction, deciders too, one by one and batched.
            common::check(&state, &g, &packets).expect("the reference agrees");
        }
    }
}
