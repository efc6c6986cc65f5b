"""The gate's logic on synthetic capo-bench rows (stdlib unittest)."""

import copy
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import gate  # noqa: E402


def doc(production_first=400.0, npol=8000.0, node=1800.0, acl_first=5000.0,
        acl_est=250.0, capo_est_node=900.0, update_p99=600.0, sweep_large=1800.0,
        deny_drop=0.777, replan_mode="incremental", planned_deny_drop=None):
    rows = []
    for run, jitter in enumerate((0.9, 1.0, 1.1, 1.0, 1.0)):
        for w in ("w-k8s", "w-large"):
            rows.append({"source": "classify", "run": run, "workload": w, "engine": "fast",
                         "ns_per_packet": 100.0 * jitter})
            rows.append({"source": "classify", "run": run, "workload": w, "engine": "production",
                         "path": "production", "phase": "first",
                         "ns_per_packet": production_first * jitter})
            rows.append({"source": "classify", "run": run, "workload": w, "engine": "node",
                         "path": "production", "phase": "first",
                         "ns_per_packet": 2 * production_first * jitter})
        for rpp, ns in ((68.9, 500.0), (1387.0, sweep_large)):
            rows.append({"source": "sweep", "run": run, "workload": "w-k8s", "engine": "production",
                         "path": "production", "phase": "first", "rules_per_program": rpp,
                         "ns_per_packet": ns * jitter})
    def vpp(engine, phase, total, node_clocks, mem=None, classify=None):
        r = {"source": "vpp", "engine": engine, "phase": phase, "clocks_per_packet": total,
             "clocks_min": total * 0.9, "clocks_max": total * 1.1,
             "policy_node_clocks_per_packet": node_clocks, "memory_bytes": mem}
        if classify is not None:
            r["capo_classify_clocks_per_packet"] = classify
        return r
    rows += [
        vpp("forward", "first", 400, 0),
        vpp("forward", "established", 250, 0),
        vpp("acl", "first", acl_first + 400, acl_first, 1400 * 2**20),
        vpp("acl", "established", acl_est + 250, acl_est, 1400 * 2**20),
        vpp("capo", "first", node + 400, node, 50 * 2**20),
        vpp("capo", "established", capo_est_node + 250, capo_est_node, 50 * 2**20),
        vpp("npol", "first", npol, npol, 6 * 2**20, classify=300),
    ]
    for run, jitter in enumerate((0.5, 1.0, 3.0)):
        for kind, p99 in (("member-host", 40.0), ("member-cidr", update_p99), ("rejected", None)):
            rows.append({"source": "updates", "run": run, "workload": "w-large", "update": kind,
                         "engine": "fast", "p99_us": None if p99 is None else p99 * jitter})
            rows.append({"source": "updates", "run": run, "workload": "w-large", "update": kind,
                         "engine": "plugin",
                         "p99_us": None if p99 is None else 20 * p99 * jitter})
    for run, ms in enumerate((48.0, 52.0, 61.0)):
        rows.append({"source": "offload", "run": run, "workload": "w-k8s", "nic": "mlx5",
                     "held_out_fraction": 0.683, "oracle_fraction": 0.694,
                     "held_out_vs_oracle": 0.984, "deny_drop_fraction": deny_drop,
                     "flow_mismatches": 0, "replan_ms": ms, "replan_mode": replan_mode,
                     "replans_in_place": 3 if replan_mode == "incremental" else 0,
                     "windows": 4, "entries_per_commit": 1489.0, "commit_peak_entries": 4079,
                     "planned_deny_drop_fraction": planned_deny_drop})
    return {"date": "2026-12-03", "runs": 5, "rows": rows,
            "machine": {"cpu": "Test CPU", "cpus": 2, "kernel": "6.1", "load": [0.5, 0.5, 0.5],
                        "load_after": [0.7, 0.6, 0.5]}}


class Figures(unittest.TestCase):
    def test_medians_and_spread(self):
        fig = gate.figures(doc())
        med, lo, hi, unit, lower = fig["w-k8s production first ns/packet"]
        self.assertAlmostEqual(med, 400.0)
        self.assertAlmostEqual(lo, 360.0)
        self.assertAlmostEqual(hi, 440.0)
        self.assertEqual((unit, lower), ("ns", True))
        # The node logic's rows are their own figure, not the production path's.
        self.assertAlmostEqual(fig["w-k8s node first ns/packet"][0], 800.0)
        self.assertIn("vpp capo classifier clocks/tuple", fig)
        self.assertAlmostEqual(fig["w-k8s production first ns/packet at 70 rules per program"][0], 500.0)
        self.assertAlmostEqual(fig["w-k8s production first ns/packet at 1400 rules per program"][0], 1800.0)
        self.assertNotIn("w-large update rejected p99 µs", fig)
        # The median of the runs' p99s, with their spread; each path its own figure.
        self.assertEqual(fig["w-large update member-cidr p99 µs"][:3], (600.0, 300.0, 1800.0))
        self.assertEqual(fig["w-large plugin update member-cidr p99 µs"][:3],
                         (12000.0, 6000.0, 36000.0))

    def test_targets_met_and_missed(self):
        t = {label: met for label, _, met in gate.targets(gate.figures(doc()))}
        self.assertFalse(t["W-k8s first packet, production path, frame of 256: ≤ 50 ns"])
        self.assertFalse(t["capo node vs npol_match_func: ≥ 20× fewer cycles"])  # 8000/1800
        self.assertTrue(t["capo node vs ACL plugin, first: ≤ 1×"])
        self.assertFalse(t["capo node vs ACL plugin, established: ≤ 1×"])
        self.assertTrue(t["capo memory vs ACL plugin: ≤ 1/10"])
        self.assertFalse(t["1,400 rules per program vs 70: ≤ 2×"])  # 1800 / 500
        t = {label: met for label, _, met in gate.targets(gate.figures(doc(
            production_first=40.0, npol=40000.0, acl_est=1000.0, update_p99=30.0,
            sweep_large=900.0)))}
        self.assertTrue(t["1,400 rules per program vs 70: ≤ 2×"])
        self.assertTrue(t["W-k8s first packet, production path, frame of 256: ≤ 50 ns"])
        self.assertTrue(t["capo node vs npol_match_func: ≥ 20× fewer cycles"])
        self.assertTrue(t["capo node vs ACL plugin, established: ≤ 1×"])
        self.assertTrue(t["any single update on W-large: p99 ≤ 50 µs"])
        # 20 times the builder's: the plugin's path misses where the builder's meets.
        self.assertFalse(t["any single update on W-large, VPP plugin path: p99 ≤ 50 µs"])

    def test_offload_targets(self):
        fig = gate.figures(doc())
        self.assertEqual(fig["w-k8s offload mlx5 re-plan ms"][:3], (52.0, 48.0, 61.0))
        self.assertFalse(fig["w-k8s offload mlx5 held-out NIC share"][4], "higher is better")
        t = {label: met for label, _, met in gate.targets(fig)}
        self.assertTrue(t["offload: held-out NIC share ≥ 90% of the held-out oracle's"])
        self.assertFalse(t["offload: ≥ 95% of denied packets dropped in hardware"])
        self.assertTrue(t["offload: 0 flows with a wrong verdict"])
        self.assertTrue(t["offload: re-plan ≤ 100 ms, committed in place"])
        t = {label: met for label, _, met in gate.targets(gate.figures(
            doc(deny_drop=0.96, replan_mode="full")))}
        self.assertTrue(t["offload: ≥ 95% of denied packets dropped in hardware"])
        self.assertFalse(t["offload: re-plan ≤ 100 ms, committed in place"])
        # With learned drops the row says what the plans alone drop.
        text = {label: m for label, m, _ in gate.targets(gate.figures(
            doc(deny_drop=0.968, planned_deny_drop=0.852)))}
        self.assertEqual(text["offload: ≥ 95% of denied packets dropped in hardware"],
                         "96.8% (learned drops included; the plans alone 85.2%)")
        self.assertEqual(text["offload: 0 flows with a wrong verdict"], "0")
        # A share that falls is capo's regression.
        names = [r[0] for r in gate.regressions(gate.figures(doc(deny_drop=0.5)), fig, 0.15)]
        self.assertIn("w-k8s offload mlx5 denied packets dropped in hardware", names)

    def test_missing_sources_are_not_measured(self):
        d = doc()
        d["rows"] = [r for r in d["rows"] if r["source"] not in ("vpp", "offload")]
        t = {label: met for label, _, met in gate.targets(gate.figures(d))}
        self.assertIsNone(t["capo node vs npol_match_func: ≥ 20× fewer cycles"])
        self.assertIsNone(t["offload: 0 flows with a wrong verdict"])
        self.assertIsNone(t["established flows through capo ≤ 1.3× forwarding"])


class Regressions(unittest.TestCase):
    def test_only_changes_beyond_the_tolerance_count(self):
        old = gate.figures(doc())
        self.assertEqual(gate.regressions(gate.figures(doc()), old, 0.15), [])
        slower = gate.figures(doc(production_first=500.0))  # +25%
        names = [r[0] for r in gate.regressions(slower, old, 0.15)]
        self.assertIn("w-k8s production first ns/packet", names)
        # A peer's change is shown but is not capo's regression.
        slower_peer = gate.figures(doc(acl_first=9000.0))
        self.assertEqual(gate.regressions(slower_peer, old, 0.15), [])
        faster = gate.figures(doc(production_first=300.0))
        self.assertEqual([r for r in gate.regressions(faster, old, 0.15)
                          if r[0].startswith("w-k8s production")], [])

    def test_timings_are_compared_on_the_same_machine_only(self):
        old = gate.figures(doc())
        slower = gate.figures(doc(production_first=500.0, deny_drop=0.5))
        names = [r[0] for r in gate.regressions(slower, old, 0.15, timings=False)]
        self.assertNotIn("w-k8s production first ns/packet", names)
        self.assertIn("w-k8s offload mlx5 denied packets dropped in hardware", names)
        def machine(**fields):
            d = doc()
            d["machine"].update(fields)
            return d

        with tempfile.TemporaryDirectory() as d:
            new, other = os.path.join(d, "new.json"), os.path.join(d, "other.json")

            def check(results, previous):
                for path, content in ((new, results), (other, previous)):
                    with open(path, "w") as f:
                        json.dump(content, f)
                return gate.main(["check", new, "--previous", other])

            slower_here = doc(production_first=600.0)
            # Another CPU model, or the same model on another kernel (a guest
            # elsewhere), is another machine: timings are not compared there.
            self.assertEqual(check(slower_here, machine(cpu="Other CPU")), 0)
            self.assertEqual(check(slower_here, machine(kernel="6.2")), 0)
            self.assertEqual(check(doc(deny_drop=0.5), machine(cpu="Other CPU")), 1)
            self.assertEqual(check(slower_here, doc()), 1)

    def test_check_exit_codes(self):
        with tempfile.TemporaryDirectory() as d:
            new, old = os.path.join(d, "new.json"), os.path.join(d, "old.json")
            with open(old, "w") as f:
                json.dump(doc(), f)
            with open(new, "w") as f:
                json.dump(doc(production_first=600.0), f)
            self.assertEqual(gate.main(["check", old, "--previous", old]), 0)
            self.assertEqual(gate.main(["check", new, "--previous", old]), 1)
            self.assertEqual(gate.main(["check", old]), 0)
            self.assertEqual(gate.main(["check", old, "--require-targets"]), 1)


class Markdown(unittest.TestCase):
    def test_section_is_replaced_in_place(self):
        with tempfile.TemporaryDirectory() as d:
            results, md = os.path.join(d, "r.json"), os.path.join(d, "b.md")
            with open(results, "w") as f:
                json.dump(doc(), f)
            with open(md, "w") as f:
                f.write("# Bench\n\nintro\n\n" + gate.BEGIN + "\nold\n" + gate.END + "\n\nafter\n")
            gate.main(["markdown", results, "--doc", md])
            with open(md) as f:
                text = f.read()
            self.assertNotIn("\nold\n", text)
            self.assertTrue(text.startswith("# Bench\n\nintro\n\n" + gate.BEGIN))
            self.assertTrue(text.endswith(gate.END + "\n\nafter\n"))
            self.assertIn("Test CPU, 2 CPUs", text)
            self.assertIn("| w-k8s production first ns/packet | 400.0 ns | 360.0–440.0 | — |", text)
            once = text
            gate.main(["markdown", results, "--doc", md, "--previous", results])
            with open(md) as f:
                twice = f.read()
            self.assertEqual(twice.count(gate.BEGIN), 1)
            self.assertNotEqual(once, twice)  # the previous column is filled
            self.assertIn("from the same machine", twice)
            elsewhere = os.path.join(d, "elsewhere.json")
            other = doc()
            other["machine"]["cpu"] = "Other CPU"
            with open(elsewhere, "w") as f:
                json.dump(other, f)
            gate.main(["markdown", results, "--doc", md, "--previous", elsewhere])
            with open(md) as f:
                self.assertIn("another machine (Other CPU, 2 CPUs, kernel 6.1", f.read())


if __name__ == "__main__":
    unittest.main()
