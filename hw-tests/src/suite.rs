//! The cases (feature `dpdk`).

use capo_offload::acl::{ipv4_5tuple_rule, AclBuilder, AclRule, Ipv4Key, IPV4_5TUPLE};
use capo_offload::commit::{CommitOutcome, Committer, RefreshOutcome};
use capo_offload::dpdk::eal::Eal;
use capo_offload::dpdk::ethdev::{Port, PortConfig};
use capo_offload::dpdk::flow::DpdkFlow;
use capo_offload::flow::{Action, Attr, FlowRule, Group, Item, Priority};
use capo_offload::plan::FlowSample;
use capo_offload::testutils::{self, Below as _, Rng};
use capo_offload::{
    lower, plan, FlowBackend, FlowErrorKind, HitCounters, NicCaps, OffloadMode, PlanConfig,
};
use capo_policy::{Action as RuleAction, IdTable, Packet, PortRange, Protocol, Rule, State, L4};
use rand::{Rng as _, SeedableRng as _};

use crate::{free_hugepages, is_root, Outcome, Report};

fn check(ok: bool, why: impl FnOnce() -> String) -> Outcome {
    if ok {
        Outcome::Pass
    } else {
        Outcome::Fail(why())
    }
}

/// Runs the suite: vdev ports, or the NIC named by `CAPO_HW_PCI`.
pub fn run(report: &mut Report) {
    match std::env::var("CAPO_HW_PCI") {
        Ok(pci) if !pci.is_empty() => run_pci(report, &pci),
        _ => run_vdev(report),
    }
}

/// A small policy state: the shared fixture's pod, `10.244.0.1`, admitting TCP 80 from
/// `10.1.0.0/16` and refusing TCP from `10.2.0.0/16`; default deny.
fn small_state() -> (State, IdTable) {
    let mut allow = Rule::any(RuleAction::Allow);
    allow.protocol = Some(Protocol::TCP);
    allow.src.nets.push(testutils::net("10.1.0.0/16"));
    allow.dst.ports = vec![PortRange::single(80)];
    let mut deny = Rule::any(RuleAction::Deny);
    deny.protocol = Some(Protocol::TCP);
    deny.src.nets.push(testutils::net("10.2.0.0/16"));
    testutils::one_workload(vec![allow, deny], vec![], None)
}

/// A plan of [`small_state`] as generation `generation`, with traffic on both rules.
fn small_plan(caps: &NicCaps, generation: u64) -> capo_offload::OffloadPlan {
    let (state, ids) = small_state();
    let program = lower(&state, &ids, generation);
    plan(
        &state,
        &program,
        caps,
        &small_hits(true),
        &PlanConfig::default(),
    )
}

/// A re-plan of `installed` (a plan of [`small_state`]) for a commit in place, with
/// traffic on the allow rule only; `None` where the device has no groups.
fn small_replan(
    caps: &NicCaps,
    installed: &capo_offload::OffloadPlan,
) -> Option<capo_offload::OffloadPlan> {
    let (state, ids) = small_state();
    let program = lower(&state, &ids, installed.generation);
    capo_offload::replan(
        &state,
        &program,
        caps,
        &small_hits(false),
        &PlanConfig::default(),
        installed,
    )
}

/// Hit counters of [`small_state`]'s allowed flow, and of its denied one when
/// `denied`.
fn small_hits(denied: bool) -> HitCounters {
    let sample = |src: [u8; 4], flags: u8, hits: u64| FlowSample {
        packet: Packet {
            src: std::net::IpAddr::from(src),
            dst: std::net::IpAddr::from([10, 244, 0, 1]),
            protocol: Protocol::TCP,
            l4: L4::Ports {
                src: 40000,
                dst: 80,
            },
        },
        tcp_flags: Some(flags),
        hits,
    };
    let mut flows = vec![sample([10, 1, 0, 7], 0x10, 1000)];
    if denied {
        flows.push(sample([10, 2, 0, 9], 0x02, 500));
    }
    HitCounters {
        flows,
        ..HitCounters::default()
    }
}

fn drop_rule() -> Option<FlowRule> {
    FlowRule::new(
        Attr::ingress(Group::ROOT, Priority(0)),
        &[Item::Eth(None), Item::Ipv4(None), Item::Tcp(None)],
        &[Action::Drop],
    )
    .ok()
}

fn run_vdev(report: &mut Report) {
    let args = Eal::test_args(
        &format!("capo-hw-{}", std::process::id()),
        &["net_null0", "net_ring0"],
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let eal = match Eal::init(&argv) {
        Ok(e) => {
            report.record("eal/init --no-huge --no-pci", Outcome::Pass);
            e
        }
        Err(e) => {
            report.record("eal/init --no-huge --no-pci", Outcome::Fail(e.to_string()));
            return;
        }
    };
    for name in ["net_null0", "net_ring0"] {
        port_cases(report, eal, name, Expect::NoFlowApi);
    }
    let tun = std::path::Path::new("/dev/net/tun").exists();
    if !is_root() || !tun {
        report.record(
            "net_tap0/*",
            Outcome::Skip(format!(
                "net_tap needs root and /dev/net/tun (root: {}, /dev/net/tun: {tun})",
                is_root()
            )),
        );
    } else {
        match eal.add_vdev("net_tap0", "iface=capotap0") {
            Ok(()) => port_cases(report, eal, "net_tap0", Expect::FromProbe),
            Err(e) => report.record(
                "net_tap0/*",
                Outcome::Skip(format!(
                    "cannot create net_tap0 here (no CAP_NET_ADMIN?): {e}"
                )),
            ),
        }
    }
    acl_cases(report, eal);
}

/// What a port's rte_flow support is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A PMD without rte_flow (net_null, net_ring): every call is ENOSYS.
    NoFlowApi,
    /// Whatever the probe finds (net_tap: rte_flow through the kernel's TC flower,
    /// which a kernel may lack); the checks then hold for what it found.
    FromProbe,
}

fn port_cases(report: &mut Report, eal: &'static Eal, name: &str, expect: Expect) {
    let expect_enosys = expect == Expect::NoFlowApi;
    let port = match Port::open(eal, name, &PortConfig::default()) {
        Ok(p) => {
            report.record(&format!("{name}/open configure+start"), Outcome::Pass);
            p
        }
        Err(e) => {
            report.record(
                &format!("{name}/open configure+start"),
                Outcome::Fail(e.to_string()),
            );
            return;
        }
    };
    if expect_enosys {
        report.record(
            &format!("{name}/template API not set up (rte_flow_configure refused)"),
            check(!port.flow_template_ready(), || {
                "rte_flow_configure succeeded on a PMD without rte_flow".into()
            }),
        );
    }
    let (mut flow, probe) = DpdkFlow::probe(&port);
    println!("     {name}: driver {}, probe {:?}", port.driver(), probe);
    // Software-only ports (no rte_flow, or a kernel without TC flower under net_tap)
    // must behave as such; a port that offloads must install what the plan says.
    let software_only = probe.caps.mode() == OffloadMode::SoftwareOnly;
    if expect == Expect::FromProbe && software_only {
        report.record(
            &format!("{name}/rules installed in the NIC"),
            Outcome::Skip(format!(
                "the probe found no usable rte_flow ({}): this kernel has no TC flower for net_tap; the software-only checks below ran",
                probe
                    .refusal
                    .as_ref()
                    .map_or_else(|| "no refusal recorded".to_string(), ToString::to_string)
            )),
        );
    }
    if expect_enosys {
        report.record(
            &format!("{name}/probe reports no offload"),
            check(software_only, || format!("probe gave {:?}", probe.caps)),
        );
    }
    if expect_enosys {
        report.record(
            &format!("{name}/validate maps ENOSYS"),
            match drop_rule().map(|r| flow.validate(&r)) {
                Some(Err(e)) if e.kind == FlowErrorKind::NoSys => Outcome::Pass,
                other => Outcome::Fail(format!("validate gave {other:?}")),
            },
        );
    }
    // The agent's path: plan with the probed capabilities, commit, stay software-only.
    let p = small_plan(&probe.caps, 1);
    let mut c = Committer::new();
    let out = c.commit(&mut flow, &p, &mut |_, _| {});
    let ok = if software_only {
        p.mode == OffloadMode::SoftwareOnly
            && out
                == CommitOutcome::Offloaded {
                    installed: 0,
                    refused: 0,
                }
            && c.software().active == Some(1)
    } else {
        // Offloading: every planned rule and the dispatcher are in the NIC.
        matches!(out, CommitOutcome::Offloaded { installed, .. } if installed == p.rules.len())
            && flow.installed() >= p.rules.len()
            && c.software().active == Some(1)
    };
    report.record(
        &format!(
            "{name}/commit with probed caps ({})",
            if software_only {
                "software-only"
            } else {
                "offloaded"
            }
        ),
        check(ok, || {
            format!(
                "plan mode {:?}, {} rules, outcome {out:?}, {} installed",
                p.mode,
                p.rules.len(),
                flow.installed()
            )
        }),
    );
    // A plan made for an mlx5 NIC, pushed at this port: refused, rolled back, software
    // runs the generation; nothing left installed.
    let forced = small_plan(&NicCaps::mlx5(64), 2);
    let out = c.commit(&mut flow, &forced, &mut |_, _| {});
    let ok = match &out {
        CommitOutcome::SoftwareOnly { error, .. } => {
            flow.installed() == 0
                && c.software().active == Some(2)
                && (!expect_enosys || error.kind == FlowErrorKind::NoSys)
        }
        // Only a port whose probe found rte_flow may take an mlx5 plan.
        CommitOutcome::Offloaded { .. } => !software_only && c.software().active == Some(2),
    };
    report.record(
        &format!("{name}/refused commit rolls back to software"),
        check(ok, || {
            format!("outcome {out:?}, {} rules left", flow.installed())
        }),
    );
    let _ = c.retire(&mut flow, &mut |_, _| {});
    // Rx/Tx through the shim: bursts, mbuf data, flow mark.
    let rx = port.rx_burst(0, 8);
    let marked = rx.iter().filter(|m| m.flow_mark().is_some()).count();
    let frame = [0u8; 64];
    let tx: Vec<_> = (0..4).filter_map(|_| port.alloc(&frame)).collect();
    let allocated = tx.len();
    let left = port.tx_burst(0, tx);
    report.record(
        &format!("{name}/rx/tx burst and mark metadata"),
        check(marked == 0 && allocated == 4, || {
            format!(
                "{marked} marked packets, {allocated} mbufs allocated, {} not sent",
                left.len()
            )
        }),
    );
    // The mbufs go back to the pool before the port (and its pool) goes.
    drop((rx, left));
    drop(flow);
    drop(port);
}

fn acl_cases(report: &mut Report, eal: &'static Eal) {
    let mut rng = Rng::seed_from_u64(7);
    let n = 300u32;
    let rules: Vec<AclRule<5>> = (0..n)
        .map(|i| {
            let src_len = [0u8, 8, 16, 24, 32][rng.below(5) as usize];
            let src = (rng.next_u64() as u32).to_be_bytes();
            let lo = rng.below(1024) as u16;
            ipv4_5tuple_rule(
                (n - i) as i32,
                i + 1,
                [None, Some(6), Some(17)][rng.below(3) as usize],
                (src, src_len),
                ([10, 0, 0, 0], 8),
                (0, u16::MAX),
                (lo, lo + rng.below(2000) as u16),
            )
        })
        .collect();
    let built = AclBuilder::<5>::new(eal, "hw-tests", IPV4_5TUPLE, n)
        .and_then(|mut b| b.add(&rules).map(|()| b))
        .and_then(|b| b.build(1));
    let acl = match built {
        Ok(a) => a,
        Err(e) => {
            report.record("rte_acl/build", Outcome::Fail(e.to_string()));
            return;
        }
    };
    report.record("rte_acl/create add build", Outcome::Pass);
    let keys: Vec<Ipv4Key> = (0..2000)
        .map(|k| {
            let r = &rules[rng.below(u64::from(n)) as usize];
            let src = if k % 2 == 0 {
                (r.fields[1].value as u32
                    | (rng.next_u64() as u32 >> r.fields[1].mask_range.min(31)))
                .to_be_bytes()
            } else {
                (rng.next_u64() as u32).to_be_bytes()
            };
            Ipv4Key::new(
                [6u8, 17, 1][rng.below(3) as usize],
                src,
                [10, rng.below(256) as u8, 0, 1],
                rng.below(65536) as u16,
                rng.below(3000) as u16,
            )
        })
        .collect();
    let inputs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let mut results = vec![0u32; inputs.len()];
    if let Err(e) = acl.classify(&inputs, &mut results, 1) {
        report.record("rte_acl/classify", Outcome::Fail(e.to_string()));
        return;
    }
    let linear = |key: &Ipv4Key| -> u32 {
        let b = key.as_bytes();
        let proto = b[0];
        let src = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let dst = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let sport = u16::from_be_bytes([b[12], b[13]]);
        let dport = u16::from_be_bytes([b[14], b[15]]);
        let pfx = |v: u32, want: u64, len: u64| {
            len == 0 || (v >> (32 - len)) == (want as u32 >> (32 - len))
        };
        rules
            .iter()
            .filter(|r| {
                let f = &r.fields;
                (f[0].mask_range == 0 || u64::from(proto) == f[0].value)
                    && pfx(src, f[1].value, f[1].mask_range)
                    && pfx(dst, f[2].value, f[2].mask_range)
                    && (f[3].value..=f[3].mask_range).contains(&u64::from(sport))
                    && (f[4].value..=f[4].mask_range).contains(&u64::from(dport))
            })
            .max_by_key(|r| r.priority)
            .map_or(0, |r| r.userdata)
    };
    let mismatches = keys
        .iter()
        .zip(&results)
        .filter(|(k, r)| linear(k) != **r)
        .count();
    let matched = results.iter().filter(|r| **r != 0).count();
    report.record(
        "rte_acl/classify equals a linear first-match reference",
        check(mismatches == 0 && matched > 0, || {
            format!(
                "{mismatches} of {} keys differ ({matched} matched)",
                keys.len()
            )
        }),
    );
}

fn run_pci(report: &mut Report, pci: &str) {
    if !is_root() {
        report.record(
            &format!("{pci}/*"),
            Outcome::Skip("a real NIC needs root".into()),
        );
        return;
    }
    if free_hugepages() == 0 {
        report.record(
            &format!("{pci}/*"),
            Outcome::Skip("no free hugepages (echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)".into()),
        );
        return;
    }
    let prefix = format!("--file-prefix=capo-hw-{}", std::process::id());
    let argv = [
        "capo-hw",
        "-a",
        pci,
        "--in-memory",
        "-l",
        "0",
        prefix.as_str(),
    ];
    let eal = match Eal::init(&argv) {
        Ok(e) => e,
        Err(e) => {
            report.record(&format!("{pci}/eal init"), Outcome::Fail(e.to_string()));
            return;
        }
    };
    let port = match Port::open(eal, pci, &PortConfig::default()) {
        Ok(p) => p,
        Err(e) => {
            report.record(&format!("{pci}/open"), Outcome::Fail(e.to_string()));
            return;
        }
    };
    report.record(&format!("{pci}/open configure+start"), Outcome::Pass);
    let (mut flow, probe) = DpdkFlow::probe(&port);
    println!(
        "     {pci}: driver {}, mark delivery {:?}, template API {}, probe {:?}",
        port.driver(),
        port.mark_delivery(),
        probe.template_api,
        probe
    );
    report.record(&format!("{pci}/probe"), Outcome::Pass);
    let mut c = Committer::new();
    for generation in 1..=3u64 {
        let p = small_plan(&probe.caps, generation);
        let out = c.commit(&mut flow, &p, &mut |_, _| {});
        println!(
            "     generation {generation}: mode {:?}, {} rules, outcome {out:?}",
            p.mode,
            p.rules.len()
        );
        let counts = c.live_counts(&mut flow);
        let retired = c.retire(&mut flow, &mut |_, _| {});
        report.record(
            &format!("{pci}/commit generation {generation}, COUNT queries, retire"),
            check(c.software().active == Some(generation), || {
                format!(
                    "software active {:?}; counts {counts:?}; retired {retired:?}",
                    c.software().active
                )
            }),
        );
    }
    // A re-plan of the live generation on new counters, committed in place (what
    // the agent does when new flows come and the policy is unchanged).
    let p = small_plan(&probe.caps, 4);
    let out = c.commit(&mut flow, &p, &mut |_, _| {});
    let _ = c.retire(&mut flow, &mut |_, _| {});
    let name = format!("{pci}/re-plan committed in place");
    match small_replan(&probe.caps, &p) {
        Some(next) if matches!(out, CommitOutcome::Offloaded { .. }) => {
            let out = c.refresh(&mut flow, &next, u32::MAX, &mut |_, _| {});
            let ok = matches!(out, RefreshOutcome::Refreshed { .. })
                && flow.installed() == next.rules.len() + 1
                && c.nic_generation() == Some(4);
            report.record(
                &name,
                check(ok, || {
                    format!(
                        "outcome {out:?}, {} rules installed for a plan of {}",
                        flow.installed(),
                        next.rules.len()
                    )
                }),
            );
        }
        _ if p.mode == OffloadMode::SoftwareOnly => report.record(
            &name,
            Outcome::Skip("the probe found no usable rte_flow: nothing to re-plan".into()),
        ),
        // The device has groups but refused the plan the re-plan would start from.
        _ if p.mode == OffloadMode::VersionedGroups => report.record(
            &name,
            Outcome::Fail(format!("the plan to re-plan was refused: {out:?}")),
        ),
        _ => report.record(
            &name,
            Outcome::Skip(format!(
                "no versioned groups (mode {:?}, commit {out:?}): such commits already change only the difference",
                p.mode
            )),
        ),
    }
    let _ = c.retire(&mut flow, &mut |_, _| {});
    drop(flow);
    report.record(
        &format!("{pci}/own rules destroyed on drop (no flush)"),
        Outcome::Pass,
    );
}
