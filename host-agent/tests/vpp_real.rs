//! capo inside a real VPP 26.06 (see `common/vpp_rig.rs`): the seed's netcat test over
//! IPv4 and IPv6, the views and counters read back through the agent, the three ways
//! of binding endpoints to VPP's interfaces, and the plugin's lifecycle (agent killed
//! and restarted with another policy, interfaces that appear late or are re-created,
//! VPP restarted, fail-static), with one VPP thread and with two workers.
//!
//! Skipped, with the reason, where there is no VPP (CAPO_VPP), no root or no netns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::vpp_rig::{
    ping, seed_manifests, seed_pods, send, wait_for, write_seed, Agent, Listener, Pod, Vpp,
};

const WAIT: Duration = Duration::from_secs(15);

/// The seed's interface block after the NetworkPolicy, for VPP's interface `name`.
fn seed_block(name: &str, sw_if_index: u32) -> String {
    common::SEED_TUN3_AFTER.replacen(
        "[tun3 sw_if_index=11 ",
        &format!("[{name} sw_if_index={sw_if_index} "),
        1,
    )
}

/// The block of interface `name` in a `show capo interfaces` output.
fn block(view: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in view.lines() {
        if line.starts_with('[') {
            inside = line.starts_with(&format!("[{name} "));
        }
        if inside {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// Software packets of rule `id` in `capoctl counters` output (`rule#ID … sw=N/…`).
fn capoctl_rule_packets(counters: &str, id: u32) -> u64 {
    counters
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("rule#{id} ")))
        .and_then(|l| l.split("sw=").nth(1))
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rule#{id} in:\n{counters}"))
}

/// Whether `from` can open a TCP connection to `to`'s `port` and deliver a line,
/// with a listener up on `to` (so a failure is the policy's).
fn netcat(from: &Pod, to: &Pod, port: u16, v6: bool, dir: &std::path::Path) -> bool {
    let out = dir.join(format!("recv-{}-{port}-{v6}", to.ns));
    let listener = Listener::start(to, port, v6, out);
    let dst = if v6 { &to.ip6 } else { &to.ip4 };
    let word = format!("hello-{port}-{}", if v6 { 6 } else { 4 });
    let connected = send(from, dst, port, &word);
    std::thread::sleep(Duration::from_millis(200));
    let got = listener.received().contains(&word);
    assert_eq!(
        connected,
        got,
        "nc said {connected} but the listener got {:?}",
        listener.received()
    );
    got
}

/// 5978 connects and delivers, 5979 does not (IPv4 and IPv6 when `v6`).
fn assert_seed_enforced(ts1: &Pod, ts2: &Pod, dir: &std::path::Path, v6: bool) {
    for v6 in [false, v6]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
    {
        assert!(
            netcat(ts1, ts2, 5978, v6, dir),
            "5978 (v6={v6}) must connect"
        );
        assert!(
            !netcat(ts1, ts2, 5979, v6, dir),
            "5979 (v6={v6}) must be dropped"
        );
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch(&format!("vpp-{name}-{}", common::vpp_rig::unique()))
}

fn seed_rig(name: &str, workers: u32) -> (std::path::PathBuf, Vpp, Pod, Pod) {
    let dir = scratch(name);
    let vpp = Vpp::start(&dir.join("vpp"), workers);
    let (ts1, ts2) = seed_pods();
    ts1.attach(&vpp);
    ts2.attach(&vpp);
    (dir, vpp, ts1, ts2)
}

/// capo's plugin asked the kernel for transparent huge pages on VPP's main heap (the
/// mapping it names carries the `hg` flag); only a kernel without them may leave it.
fn assert_main_heap_advised(vpp: &Vpp) {
    let log = vpp.log();
    let line = log
        .lines()
        .find(|l| l.starts_with("capo: ") && l.contains("main heap"))
        .unwrap_or_else(|| panic!("the plugin said nothing about the main heap: {log}"));
    let Some(at) = line
        .split(" at 0x")
        .nth(1)
        .filter(|_| line.contains("advised for transparent huge pages"))
    else {
        // The rig's heap is on 4 KiB pages (main-heap-page-size 4k): only a kernel
        // without transparent huge pages leaves it unadvised.
        assert!(
            !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists(),
            "the plugin left VPP's main heap unadvised: {line}"
        );
        eprintln!("skipped: this kernel has no transparent huge pages ({line})");
        return;
    };
    let start = at.split(')').next().unwrap();
    let address = usize::from_str_radix(start, 16).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", vpp.pid())).unwrap();
    let flags = capo_heap::vm_flags_at(&smaps, address)
        .unwrap_or_else(|| panic!("no mapping at 0x{start} in VPP's smaps"));
    assert!(
        flags.split_whitespace().any(|f| f == "hg"),
        "VPP's main heap at 0x{start}: {flags}"
    );
}

#[test]
fn seed_netcat_test_views_and_counters_on_vpp() {
    require_vpp!();
    let (dir, vpp, ts1, ts2) = seed_rig("seed", 0);
    // Name binding: the endpoint's interface name is VPP's own name of the interface.
    let manifests = seed_manifests(&dir, &ts2.vpp_if, 5978);
    let metrics = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("127.0.0.1:{port}")
    };
    let agent = Agent::start(&vpp, &manifests, &dir, &["--metrics", &metrics]);
    let idx = ts2.sw_if_index(&vpp);
    wait_for(WAIT, "the plugin to police ts2", || {
        vpp.ctl("show capo interfaces").contains(&ts2.vpp_if)
    });
    assert_seed_enforced(&ts1, &ts2, &dir, true);
    assert_main_heap_advised(&vpp);

    // The rig's af_packet interfaces have no flow offload: VPP's flow layer refuses
    // the canary flow, and capo says the interface runs fallback-only.
    let offload = vpp.ctl("show capo offload");
    let line = offload
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("{} (sw_if_index {idx},", ts2.vpp_if))
        })
        .unwrap_or_else(|| panic!("no line for {}: {offload}", ts2.vpp_if));
    assert!(
        line.contains("driver af-packet")
            && line.contains("fallback-only: the flow layer refused the canary (not supported)"),
        "{offload}"
    );

    // The seed's block, byte for byte, with VPP's name and index.
    let vppctl = vpp.ctl("show capo interfaces");
    assert_eq!(
        block(&vppctl, &ts2.vpp_if),
        seed_block(&ts2.vpp_if, idx),
        "{vppctl}"
    );
    // capoctl over the agent's API prints exactly what vppctl prints.
    for view in ["interfaces", "ipsets", "policies", "rules"] {
        let (rc, out, err) = agent.capoctl(&["show", "capo", view]);
        assert_eq!(rc, 0, "{err}");
        assert_eq!(
            out.trim_end(),
            vpp.ctl(&format!("show capo {view}")).trim_end(),
            "{view}"
        );
    }
    // Counters are VPP's: rule#18 allowed the 5978 connections, the tier's end
    // denied 5979, per interface too.
    let (rc, counters, err) = agent.capoctl(&["counters"]);
    assert_eq!(rc, 0, "{err}");
    let vpp_counters = vpp.ctl("show capo counters");
    let packets = |text: &str, rule: &str| -> u64 {
        text.lines()
            .find(|l| l.contains(&format!("[{rule};")))
            .and_then(|l| l.split("packets").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .unwrap_or_else(|| panic!("no {rule} in:\n{text}"))
    };
    assert!(packets(&vpp_counters, "rule#18") >= 2, "{vpp_counters}");
    assert!(packets(&vpp_counters, "rule#17") >= 2, "{vpp_counters}");
    assert_eq!(
        capoctl_rule_packets(&counters, 18),
        packets(&vpp_counters, "rule#18"),
        "{counters}"
    );
    assert_eq!(
        capoctl_rule_packets(&counters, 17),
        packets(&vpp_counters, "rule#17"),
        "{counters}"
    );
    let ingress = counters
        .lines()
        .find(|l| l.contains(&format!("[{} sw_if_index={idx}] ingress:", ts2.vpp_if)))
        .unwrap_or_else(|| panic!("{counters}"));
    let denied: u64 = ingress
        .split("denied=")
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{ingress}"));
    assert!(denied >= 2, "{ingress}");
    // Prometheus too: rule#18's packets are VPP's.
    let body = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let rule18 = body
        .lines()
        .find(|l| {
            l.starts_with("capo_rule_packets_total{")
                && l.contains("rule=\"18\"")
                && l.contains("decided_in=\"software\"")
        })
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        rule18
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<u64>().ok()),
        Some(packets(&vpp_counters, "rule#18")),
        "{rule18}"
    );
    // ts2's denied SYNs in bytes: at least 60 each (IPv4 and TCP headers with options).
    let denied_bytes = body
        .lines()
        .find(|l| {
            l.starts_with("capo_interface_bytes_total{")
                && l.contains(&format!("interface=\"{}\"", ts2.vpp_if))
                && l.contains("direction=\"ingress\"")
                && l.contains("verdict=\"deny\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        denied_bytes >= 60 * denied,
        "{denied_bytes} bytes for {denied} packets"
    );
    let errors = vpp.ctl("show errors");
    assert!(errors.contains("packets denied by policy"), "{errors}");

    // `show trace` names the capo node and the deciding rule.
    vpp.ctl("clear trace");
    vpp.ctl("trace add af-packet-input 20");
    assert!(!netcat(&ts1, &ts2, 5979, false, &dir));
    let trace = vpp.ctl("show trace");
    assert!(trace.contains("capo-ip4-out"), "{trace}");
    let decided = trace
        .lines()
        .find(|l| l.contains("capo:") && l.contains(" deny "))
        .unwrap_or_else(|| panic!("no capo deny line in:\n{trace}"));
    assert!(decided.contains("rule#17"), "{decided}");
    eprintln!("--- show errors ---\n{errors}\n--- show trace (5979) ---\n{trace}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `emulated NIC …: F flows, D packets dropped, M marked` for `iface` in `show capo
/// offload`: (F, M).
fn emulated(offload: &str, iface: &str) -> (u64, u64) {
    let mut lines = offload.lines();
    lines
        .by_ref()
        .find(|l| l.contains(&format!(" {iface} (sw_if_index")))
        .unwrap_or_else(|| panic!("no line for {iface}: {offload}"));
    let line = lines
        .next()
        .filter(|l| l.contains("emulated NIC"))
        .unwrap_or_else(|| panic!("{iface} is not emulated: {offload}"));
    let number_before = |word: &str| -> u64 {
        line.split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().rev().nth(1))
            .or_else(|| {
                line.split(',')
                    .find(|part| part.contains(word))
                    .and_then(|part| part.split_whitespace().nth_back(1))
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {word} in {line:?}"))
    };
    let flows = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no flows in {line:?}"));
    (flows, number_before("marked"))
}

/// `N` of `the driver takes flows: N of M share rules installed` on `iface`'s line of
/// `show capo offload`, with the share's generation (`NIC share: M rules planned on
/// generation G`).
fn installed(offload: &str, iface: &str) -> (u64, u64) {
    let generation = offload
        .split("planned on generation ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let rules = offload
        .lines()
        .find(|l| l.contains(&format!(" {iface} (sw_if_index")))
        .and_then(|l| l.split("the driver takes flows: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (rules, generation)
}

/// `NIC verdicts accepted` in `show capo counters`.
fn nic_accepted(vpp: &Vpp) -> u64 {
    let counters = vpp.ctl("show capo counters");
    counters
        .split("NIC verdicts accepted: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{counters}"))
}

/// Connections from ts1 to ts2's `port` (IPv4 and IPv6 in turn, each as the policy
/// says) until the plugin holds a share of generation `generation` with at least one
/// rule on the uplink: the agent plans from the flows the plugin samples.
fn traffic_until_shared(
    vpp: &Vpp,
    ts1: &Pod,
    ts2: &Pod,
    port: u16,
    allowed: bool,
    generation: u64,
    dir: &std::path::Path,
) {
    for i in 0..60 {
        let v6 = i % 2 == 1;
        assert_eq!(netcat(ts1, ts2, port, v6, dir), allowed, "{port} (v6={v6})");
        let (rules, g) = installed(&vpp.ctl("show capo offload"), &ts1.vpp_if);
        if rules > 0 && g == generation {
            return;
        }
    }
    panic!(
        "no share on the uplink after 60 connections: {}",
        vpp.ctl("show capo offload")
    );
}

/// The NIC share through VPP's flow layer (`--nic vpp-flow`), with real packets. The
/// rig's af_packet driver takes no flows, so ts1's interface (where ts1's traffic
/// enters: ts1 is on another node, so this is the uplink) runs under `capo test
/// flow-emulation`, which gives its driver VPP flow operations and applies the
/// flows to each received frame as a NIC would, stamping a MARK into the buffer's
/// flow_id. ts2's interface (af_packet, policed) stays fallback-only.
#[test]
fn nic_share_through_vpps_flow_layer_on_vpp() {
    require_vpp!();
    let (dir, vpp, ts1, ts2) = seed_rig("flow-layer", 0);
    let emulate = vpp.ctl(&format!("capo test flow-emulation {}", ts1.vpp_if));
    assert!(!emulate.contains("error"), "{emulate}");
    let manifests = seed_manifests(&dir, &ts2.vpp_if, 5978);
    let agent = Agent::start(
        &vpp,
        &manifests,
        &dir,
        &["--nic", "vpp-flow:64", "--vpp-uplink", &ts1.vpp_if],
    );
    wait_for(WAIT, "the plugin to police ts2", || {
        vpp.ctl("show capo interfaces").contains(&ts2.vpp_if)
    });
    // Nothing sampled yet: an empty share.
    wait_for(WAIT, "the first (empty) share", || {
        vpp.ctl("show capo offload")
            .contains("NIC share: 0 rules planned on generation 1")
    });
    // Traffic the seed allows (TCP 5978 from ts1), decided in software and sampled:
    // the agent plans the allow's MARK flows, on the uplink's (emulated) hardware.
    traffic_until_shared(&vpp, &ts1, &ts2, 5978, true, 1, &dir);
    let offload = vpp.ctl("show capo offload");
    let (rules, _) = installed(&offload, &ts1.vpp_if);
    let ts2_line = offload
        .lines()
        .find(|l| l.contains(&format!(" {} (sw_if_index", ts2.vpp_if)))
        .unwrap_or_else(|| panic!("no line for ts2: {offload}"));
    assert!(ts2_line.contains("fallback-only"), "{offload}");
    let (flows, marked_before) = emulated(&offload, &ts1.vpp_if);
    assert_eq!(flows, rules, "{offload}");
    let accepted_before = nic_accepted(&vpp);

    // Real packets: 5978 is allowed (by the NIC's mark where the family's flow is
    // installed), 5979 is denied in software.
    assert_seed_enforced(&ts1, &ts2, &dir, true);
    let offload = vpp.ctl("show capo offload");
    let (_, marked) = emulated(&offload, &ts1.vpp_if);
    assert!(marked >= marked_before + 2, "{offload}");
    let accepted = nic_accepted(&vpp);
    assert!(
        accepted >= accepted_before + 2,
        "{accepted} after {accepted_before}"
    );
    let counters = vpp.ctl("show capo counters");
    assert!(
        counters.contains("NIC marks from an unknown generation: 0"),
        "{counters}"
    );
    // capoctl offload says the same over the agent's API.
    let (rc, text, err) = agent.capoctl(&["offload"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        text.starts_with("nic vpp-flow:64 (offload available)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{} (sw_if_index {}, driver af-packet): {rules} rules installed, 0 refused",
            ts1.vpp_if,
            ts1.sw_if_index(&vpp)
        )),
        "{text}"
    );

    // A new policy: the old share leaves the NIC before the generation is pushed, and
    // the new generation's share is planned from what is sampled under it.
    write_seed(&manifests, &ts2.vpp_if, 5980);
    wait_for(WAIT, "generation 2", || {
        vpp.ctl("show capo generations")
            .contains("active generation: 2 ")
            || installed(&vpp.ctl("show capo offload"), &ts1.vpp_if).1 == 2
    });
    traffic_until_shared(&vpp, &ts1, &ts2, 5980, true, 2, &dir);
    let offload = vpp.ctl("show capo offload");
    let (flows, marked_before) = emulated(&offload, &ts1.vpp_if);
    assert_eq!(flows, installed(&offload, &ts1.vpp_if).0, "{offload}");
    let accepted_before = nic_accepted(&vpp);
    for v6 in [false, true] {
        assert!(
            netcat(&ts1, &ts2, 5980, v6, &dir),
            "5980 (v6={v6}) must connect"
        );
        assert!(
            !netcat(&ts1, &ts2, 5978, v6, &dir),
            "5978 (v6={v6}) must be dropped now"
        );
    }
    let (_, marked_after) = emulated(&vpp.ctl("show capo offload"), &ts1.vpp_if);
    assert!(marked_after >= marked_before + 2, "{offload}");
    assert!(nic_accepted(&vpp) >= accepted_before + 2);
    let counters = vpp.ctl("show capo counters");
    assert!(
        counters.contains("NIC marks from an unknown generation: 0"),
        "{counters}"
    );
    assert!(
        !agent.log().contains("refused the NIC share"),
        "{}",
        agent.log()
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explicit_and_calicovpp_bindings_on_vpp() {
    require_vpp!();
    let (dir, vpp, ts1, ts2) = seed_rig("bind", 0);
    // Explicit: the manifests keep the seed's `tun3`; the operator binds the workload
    // to VPP's interface.
    let manifests = seed_manifests(&dir, "tun3", 5978);
    let bind = format!("default/ts2={}", ts2.vpp_if);
    let agent = Agent::start(&vpp, &manifests, &dir, &["--bind", &bind]);
    wait_for(WAIT, "explicit binding", || {
        vpp.ctl("show capo generations").contains(&format!(
            "tun3 on {} sw_if_index={} (bound by explicit)",
            ts2.vpp_if,
            ts2.sw_if_index(&vpp)
        ))
    });
    assert_seed_enforced(&ts1, &ts2, &dir, false);
    eprintln!(
        "--- show capo generations ---\n{}",
        vpp.ctl("show capo generations")
    );
    drop(agent);

    // CalicoVPP: the endpoint is named `vpp-tun-<sw_if_index>` as CalicoVPP's CNI
    // server names it; VPP's interface keeps its own name.
    let idx = ts2.sw_if_index(&vpp);
    write_seed(&manifests, &format!("vpp-tun-{idx}"), 5978);
    let agent = Agent::start(&vpp, &manifests, &dir, &[]);
    wait_for(WAIT, "CalicoVPP binding", || {
        vpp.ctl("show capo generations").contains(&format!(
            "vpp-tun-{idx} on {} sw_if_index={idx} (bound by calicovpp)",
            ts2.vpp_if
        ))
    });
    assert_seed_enforced(&ts1, &ts2, &dir, false);
    let view = vpp.ctl("show capo interfaces");
    assert_eq!(
        block(&view, &ts2.vpp_if),
        seed_block(&ts2.vpp_if, idx),
        "{view}"
    );

    // The endpoint renamed while the agent runs: a delta, which binds the changed
    // endpoint by looking its names up in VPP (vnet's name hash, or the index),
    // not by listing VPP's interfaces. By VPP's name, then by CalicoVPP's again.
    // The delta itself must have bound it (not recorded unknown with it): a later
    // rebinding pass would bind it too, and hide a failed look-up; and it must have
    // bound it by look-up, not against the list of every interface, which a miss
    // falls back to.
    let delta_bound = |endpoint: &str, how: &str, deltas: u64| {
        wait_for(WAIT, how, || {
            let gens = vpp.ctl("show capo generations");
            let mut history = gens
                .lines()
                .skip_while(|l| !l.trim_start().starts_with("[generation"));
            let newest = history.next().unwrap_or_default();
            let with_it: Vec<&str> = history
                .take_while(|l| !l.trim_start().starts_with("[generation"))
                .collect();
            gens.contains(&format!(
                "{endpoint} on {} sw_if_index={idx} (bound by {how})",
                ts2.vpp_if
            )) && newest.contains("delta on")
                && newest.contains("applied")
                && !with_it.iter().any(|l| {
                    l.contains("unknown interfaces:") && l.split_whitespace().any(|w| w == endpoint)
                })
        });
        let gens = vpp.ctl("show capo generations");
        let counts: Vec<u64> = gens
            .lines()
            .find(|l| l.starts_with("deltas that changed endpoints:"))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(counts.get(1), Some(&0), "none bound from the list:\n{gens}");
        assert!(counts.first().is_some_and(|n| *n >= deltas), "{gens}");
        // A rename changes one workload whose names VPP has: its entry is found
        // and replaced without walking every endpoint.
        assert!(counts.get(2).is_some_and(|n| *n >= deltas), "{gens}");
        assert_seed_enforced(&ts1, &ts2, &dir, false);
    };
    write_seed(&manifests, &ts2.vpp_if, 5978);
    delta_bound(&ts2.vpp_if, "name", 1);
    write_seed(&manifests, &format!("vpp-tun-{idx}"), 5978);
    delta_bound(&format!("vpp-tun-{idx}"), "calicovpp", 2);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lifecycle_on_vpp() {
    require_vpp!();
    let dir = scratch("life");
    let mut vpp = Vpp::start(&dir.join("vpp"), 0);
    let (ts1, ts2) = seed_pods();
    ts1.attach(&vpp);
    // The agent pushes before ts2's interface exists: unknown, then policed as soon
    // as VPP has it.
    let manifests = seed_manifests(&dir, &ts2.vpp_if, 5978);
    let mut agent = Agent::start(&vpp, &manifests, &dir, &[]);
    wait_for(WAIT, "the first generation", || {
        vpp.ctl("show capo generations")
            .lines()
            .any(|l| l.contains("unknown interfaces:") && l.contains(&ts2.vpp_if))
    });
    ts2.attach(&vpp);
    wait_for(WAIT, "ts2 bound once it appears", || {
        block(&vpp.ctl("show capo interfaces"), &ts2.vpp_if)
            .contains(&format!("sw_if_index={} ", ts2.sw_if_index(&vpp)))
    });
    assert_seed_enforced(&ts1, &ts2, &dir, false);
    // capoctl shows VPP's index, and the generation as acknowledged.
    let (_, view, _) = agent.capoctl(&["show", "capo", "interfaces"]);
    assert!(
        view.contains(&format!(
            "[{} sw_if_index={} ",
            ts2.vpp_if,
            ts2.sw_if_index(&vpp)
        )),
        "{view}"
    );
    let (_, gens, _) = agent.capoctl(&["generations"]);
    assert!(
        gens.contains("applied (acknowledged by the VPP plugin)"),
        "{gens}"
    );

    // Deleted and created again (VPP clears its features): policed again.
    ts2.detach(&vpp);
    ts2.attach(&vpp);
    wait_for(WAIT, "features restored", || {
        vpp.ctl(&format!("show interface features {}", ts2.vpp_if))
            .contains("capo-ip4-out")
    });
    assert!(
        !netcat(&ts1, &ts2, 5979, false, &dir),
        "re-created interface must be policed"
    );
    assert!(netcat(&ts1, &ts2, 5978, false, &dir));

    // Agent killed and restarted with a changed policy (5979 instead of 5978): the new
    // policy is in force within seconds, although the new run numbers from 1.
    agent.kill9();
    wait_for(WAIT, "fail-static after the agent died", || {
        vpp.ctl("show capo generations").contains("fail-static")
    });
    assert!(
        !netcat(&ts1, &ts2, 5979, false, &dir),
        "the last generation keeps enforcing"
    );
    write_seed(&manifests, &ts2.vpp_if, 5979);
    agent.restart();
    wait_for(WAIT, "the restarted agent's policy", || {
        vpp.ctl("show capo rules").contains("dst==5979")
    });
    assert!(
        netcat(&ts1, &ts2, 5979, false, &dir),
        "new policy: 5979 allowed"
    );
    assert!(
        !netcat(&ts1, &ts2, 5978, false, &dir),
        "new policy: 5978 denied"
    );

    // VPP restarted: the agent reconnects and pushes its policy again.
    vpp.restart();
    ts1.attach(&vpp);
    ts2.attach(&vpp);
    wait_for(WAIT, "resync after VPP's restart", || {
        vpp.ctl("show capo rules").contains("dst==5979")
            && block(&vpp.ctl("show capo interfaces"), &ts2.vpp_if).contains("sw_if_index=")
    });
    assert!(netcat(&ts1, &ts2, 5979, false, &dir));
    assert!(!netcat(&ts1, &ts2, 5978, false, &dir));
    assert!(
        agent
            .log()
            .contains("the VPP plugin applied the generation"),
        "{}",
        agent.log()
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn worker_threads_same_results_counters_summed() {
    require_vpp!();
    // VPP pins each worker to a CPU of its own besides the main thread's: two
    // workers where the machine has three CPUs, else one (2-core CI machines).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = u32::try_from(cpus.saturating_sub(1).clamp(1, 2)).unwrap();
    eprintln!("{cpus} CPUs: VPP with {workers} worker thread(s)");
    let (dir, vpp, ts1, ts2) = seed_rig("workers", workers);
    let manifests = seed_manifests(&dir, &ts2.vpp_if, 5978);
    let agent = Agent::start(&vpp, &manifests, &dir, &[]);
    wait_for(WAIT, "the plugin to police ts2", || {
        vpp.ctl("show capo interfaces").contains(&ts2.vpp_if)
    });
    let threads = vpp.ctl("show threads");
    assert!(
        threads.contains(&format!("vpp_wk_{}", workers - 1)),
        "{threads}"
    );
    assert_seed_enforced(&ts1, &ts2, &dir, true);
    let (rc, counters, err) = agent.capoctl(&["counters"]);
    assert_eq!(rc, 0, "{err}");
    // Two 5978 connections (v4, v6) allowed by rule#18, two 5979 ones denied by the
    // tier's end, summed over the worker threads.
    assert!(capoctl_rule_packets(&counters, 18) >= 2, "{counters}");
    assert!(capoctl_rule_packets(&counters, 17) >= 2, "{counters}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pod on an L2 link (host-interface) with a deny-all ingress policy still resolves
/// over IPv6 from a fresh start (dynamic neighbours only): VPP's neighbour
/// solicitations to it and its advertisements pass capo before policy, while an
/// ICMPv6 echo to it is denied.
#[test]
fn ipv6_neighbour_discovery_passes_a_deny_all_policy() {
    require_vpp!();
    let (dir, vpp, ts1, ts2) = seed_rig("nd", 0);
    let manifests = seed_manifests(&dir, &ts2.vpp_if, 5978);
    // Deny all ingress to ts2: a NetworkPolicy without ingress rules.
    std::fs::write(
        manifests.join("networkpolicy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-all\n  \
         namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      role: receiver\n  \
         policyTypes:\n    - Ingress\n",
    )
    .unwrap();
    let agent = Agent::start(&vpp, &manifests, &dir, &[]);
    wait_for(WAIT, "the plugin to police ts2", || {
        vpp.ctl("show capo interfaces").contains(&ts2.vpp_if)
    });
    let rules = vpp.ctl("show capo rules");
    assert!(!rules.contains("dst==5978"), "deny-all in force:\n{rules}");
    assert!(
        !vpp.ctl("show ip neighbors").contains(&ts2.ip6),
        "fresh start: VPP must not know ts2 yet"
    );
    // An echo to ts2 makes VPP resolve it: the solicitation passes, the echo does not.
    assert!(
        !ping(&ts1, &ts2.ip6, 2),
        "ICMPv6 echo to ts2 must be denied"
    );
    wait_for(WAIT, "VPP to learn ts2's address", || {
        vpp.ctl("show ip neighbors").contains(&ts2.ip6)
    });
    let errors = vpp.ctl("show errors");
    assert!(
        errors
            .lines()
            .any(|l| l.contains("capo-ip6-out") && l.contains("denied by policy")),
        "{errors}"
    );
    // ts2 resolves VPP's address too, and its own echo (egress allowed) is answered.
    assert!(
        ping(&ts2, &ts2.gw6, 2),
        "ts2 must reach its gateway over IPv6"
    );
    let neigh = String::from_utf8_lossy(
        &ts2.exec(&["ip", "-6", "neigh", "show", &ts2.gw6])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        neigh.contains("lladdr") && !neigh.contains("FAILED"),
        "{neigh}"
    );
    // capoctl's trace names the decision.
    let (_, trace, _) = agent.capoctl(&[
        "trace",
        "--from",
        &ts1.ip6,
        "--to",
        &ts2.ip6,
        "--proto",
        "icmpv6",
        "--icmp-type",
        "135",
    ]);
    assert!(
        trace.contains("allowed before policy: neighbour discovery"),
        "{trace}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One frame of `msg` with an unknown field (number 100, varint 1) appended: what a
/// newer peer that added a field sends.
fn frame_with_unknown_field<M: prost::Message>(msg: &M) -> Vec<u8> {
    let mut body = msg.encode_to_vec();
    body.extend_from_slice(&[0xa0, 0x06, 0x01]);
    let mut out = (body.len() as u64).to_le_bytes().to_vec();
    out.extend(body);
    out
}

fn read_reply(
    stream: &mut std::os::unix::net::UnixStream,
) -> capo_proto::capo::dataplane::v1::FromPlugin {
    use std::io::Read;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; u64::from_le_bytes(header) as usize];
    stream.read_exact(&mut body).unwrap();
    prost::Message::decode(body.as_slice()).unwrap()
}

/// Version skew and removal, as a rolling update and an uninstall go: a newer agent
/// whose messages carry fields this plugin does not know is understood (protobuf
/// skips them) and its generation enforced; `capoctl vpp-release` hands every
/// interface back (no capo feature left, traffic flows as without capo); a new agent
/// takes over again.
#[test]
fn version_skew_release_and_takeover_on_vpp() {
    use capo_proto::capo::dataplane::v1::{from_plugin, to_plugin, Generation, Hello, ToPlugin};
    use std::io::Write;
    require_vpp!();
    let (dir, vpp, ts1, ts2) = seed_rig("skew", 0);
    let manifests = seed_manifests(&dir, &ts2.vpp_if, 5978);
    let mut agent = Agent::start(&vpp, &manifests, &dir, &[]);
    wait_for(WAIT, "the agent's generation", || {
        block(&vpp.ctl("show capo interfaces"), &ts2.vpp_if).contains("sw_if_index=")
    });
    assert_seed_enforced(&ts1, &ts2, &dir, false);
    // Rolling update: the old agent goes, the plugin keeps enforcing.
    agent.kill9();

    // The newer agent: its Hello and Generation carry a field this plugin lacks.
    let other = dir.join("other-port");
    std::fs::create_dir_all(&other).unwrap();
    write_seed(&other, &ts2.vpp_if, 5979);
    let frames = dir.join("skew.frames");
    let (rc, _, err) = common::capoctl(&[
        "--resources",
        other.to_str().unwrap(),
        "--node",
        "kind-worker2",
        "export-frames",
        frames.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    let updates: Vec<capo_proto::felix::v3_32::ToDataplane> =
        capo_felix::frame::FrameReader::new(std::fs::read(&frames).unwrap().as_slice())
            .map(|f| capo_felix::frame::decode_to_dataplane_v3_32(&f.unwrap()).unwrap())
            .collect();
    let mut s = std::os::unix::net::UnixStream::connect(&vpp.capo_socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    s.write_all(&frame_with_unknown_field(&ToPlugin {
        msg: Some(to_plugin::Msg::Hello(Hello {
            agent_version: "capo-agent 0.2.0".into(),
            epoch,
            ..Hello::default()
        })),
    }))
    .unwrap();
    match read_reply(&mut s).msg {
        Some(from_plugin::Msg::Hello(h)) => assert!(!h.plugin_version.is_empty()),
        other => panic!("expected HelloReply, got {other:?}"),
    }
    s.write_all(&frame_with_unknown_field(&ToPlugin {
        msg: Some(to_plugin::Msg::Generation(Generation {
            id: 1,
            full: true,
            base_id: 0,
            updates,
            more: false,
        })),
    }))
    .unwrap();
    match read_reply(&mut s).msg {
        Some(from_plugin::Msg::Applied(a)) => assert!(a.ok, "{a:?}"),
        other => panic!("expected Applied, got {other:?}"),
    }
    assert!(
        netcat(&ts1, &ts2, 5979, false, &dir),
        "the newer agent's policy: 5979 allowed"
    );
    assert!(
        !netcat(&ts1, &ts2, 5978, false, &dir),
        "the newer agent's policy: 5978 denied"
    );
    drop(s);

    // Uninstall: capo hands the interfaces back; nothing of capo stays on them.
    let (rc, out, err) = common::capoctl(&[
        "vpp-release",
        "--plugin-socket",
        vpp.capo_socket.to_str().unwrap(),
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("released ") && !out.contains("released 0 "),
        "{out}"
    );
    for pod in [&ts1, &ts2] {
        let features = vpp.ctl(&format!("show interface features {}", pod.vpp_if));
        assert!(!features.contains("capo-"), "{features}");
    }
    assert!(
        netcat(&ts1, &ts2, 5978, false, &dir),
        "released: 5978 flows"
    );
    assert!(
        netcat(&ts1, &ts2, 5979, false, &dir),
        "released: 5979 flows"
    );

    // A new agent takes over again.
    let agent = Agent::start(&vpp, &manifests, &dir, &[]);
    wait_for(WAIT, "the new agent's generation", || {
        vpp.ctl(&format!("show interface features {}", ts2.vpp_if))
            .contains("capo-ip4-out")
    });
    assert_seed_enforced(&ts1, &ts2, &dir, false);
    drop(agent);
    drop(vpp);
    let _ = std::fs::remove_dir_all(&dir);
}
