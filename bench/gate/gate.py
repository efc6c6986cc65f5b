#!/usr/bin/env python3
"""capo's benchmark gate: runs capo-bench, summarises its JSON rows, checks them
against the targets and the previous results, and writes the results section of
docs/benchmarks.md.

    bench/gate/gate.py run --bin target/release --vpp DIR [--runs 5] --out RESULTS.json
    bench/gate/gate.py check RESULTS.json [--previous OLD.json] [--tolerance 0.15]
                             [--require-targets]
    bench/gate/gate.py markdown RESULTS.json [--previous OLD.json] --doc docs/benchmarks.md

`check` exits 1 when a figure regressed beyond the tolerance against the previous
file (and, with --require-targets, when a target is missed); it prints every target
with its measured value either way. Timings are compared only with a previous file
from the same machine (CPU model, count and kernel); sizes, shares and counts always.
Figures are medians over the runs with their min and max; the file records the
machine, its load and the date.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

# The rules-per-program sweep's two ends (the target compares them).
SWEEP = (70, 1400)

# The offload benchmark the targets name: W-k8s on a simulated mlx5 with
# 4,096 entries, Zipf 1.1, traffic seed 1, re-plans as the agent makes them.
OFFLOAD = ["offload", "--workload", "w-k8s", "--nic", "mlx5", "--nic-capacity", "4096",
           "--zipf", "1.1", "--seed", "1", "--json"]

BEGIN = "<!-- gate:begin -->"
END = "<!-- gate:end -->"


# ---- collecting ---------------------------------------------------------------------

def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "load": list(os.getloadavg()),
    }


def json_lines(text):
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def capo_bench(binary, args):
    print("gate: capo-bench " + " ".join(args), file=sys.stderr, flush=True)
    out = subprocess.run([binary] + args, check=True, capture_output=True, text=True)
    return json_lines(out.stdout)


def run(opts):
    binary = os.path.join(opts.bin, "capo-bench")
    doc = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "runs": opts.runs,
        "rows": [],
    }
    for k in range(opts.runs):
        for workload in ("w-k8s", "w-large"):
            for r in capo_bench(binary, ["classify", "--workload", workload, "--fast-only", "--json"]):
                r["source"], r["run"] = "classify", k
                doc["rows"].append(r)
        for r in capo_bench(binary, ["classify", "--workload", "w-k8s", "--fast-only",
                                     "--rules-per-program", ",".join(map(str, SWEEP)), "--json"]):
            r["source"], r["run"] = "sweep", k
            doc["rows"].append(r)
    if opts.vpp:
        for r in capo_bench(binary, ["vpp", "--workload", "w-k8s", "--runs", str(opts.runs),
                                     "--vpp", opts.vpp, "--json"]):
            r["source"] = "vpp"
            doc["rows"].append(r)
    # p99s of a few hundred updates under load spread widely from run to run: the
    # median of the runs' p99s is the figure. Both paths: the builder's (embedded
    # dataplane) and the VPP plugin's control path.
    for k in range(opts.runs):
        for r in capo_bench(binary, ["updates", "--workload", "w-large", "--count",
                                     str(opts.update_count), "--path", "both", "--json"]):
            r["source"], r["run"] = "updates", k
            doc["rows"].append(r)
    # The traffic and plans are deterministic (the shares are the same every run);
    # the planning times are not.
    for k in range(opts.runs):
        for r in capo_bench(binary, OFFLOAD):
            r["source"], r["run"] = "offload", k
            doc["rows"].append(r)
    doc["machine"]["load_after"] = list(os.getloadavg())
    with open(opts.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print("gate: wrote " + opts.out, file=sys.stderr)


# ---- summarising --------------------------------------------------------------------

def spread(values):
    """(median, min, max) of the values, or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return (statistics.median(values), min(values), max(values))


def pick(rows, **want):
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def figures(doc):
    """Named figures: name -> (median, min, max, unit, lower_is_better); min and max
    are None for a figure measured once (or reported as a median only)."""
    rows = doc["rows"]
    out = {}

    def put(name, s, unit, lower=True):
        if s is not None:
            out[name] = (s[0], s[1], s[2], unit, lower)

    for w in ("w-k8s", "w-large"):
        cls = pick(rows, source="classify", workload=w)
        put(f"{w} fast ns/packet", spread(r["ns_per_packet"] for r in pick(cls, engine="fast")), "ns")
        for phase in ("first", "established"):
            put(f"{w} production {phase} ns/packet",
                spread(r["ns_per_packet"] for r in pick(cls, engine="production", phase=phase)), "ns")
            # The VPP node's own logic on the same packets (capo_vpp_plugin::classify_batch).
            put(f"{w} node {phase} ns/packet",
                spread(r["ns_per_packet"] for r in pick(cls, engine="node", phase=phase)), "ns")
    for n in SWEEP:
        # Each sweep row carries the rules per program it measured; it belongs to the
        # nearest requested size.
        near = [r for r in pick(rows, source="sweep", engine="production", phase="first")
                if min(SWEEP, key=lambda t: abs(t - r.get("rules_per_program", 0))) == n]
        put(f"w-k8s production first ns/packet at {n} rules per program",
            spread(r["ns_per_packet"] for r in near), "ns")
    vpp = pick(rows, source="vpp")
    for r in vpp:
        name = f"vpp {r['engine']} {r['phase']}"
        put(name + " clocks/packet", (r["clocks_per_packet"], r["clocks_min"], r["clocks_max"]), "clocks")
        if r["engine"] in ("capo", "capo-nic", "acl"):
            node = r["policy_node_clocks_per_packet"]
            put(name + " policy-node clocks/packet", (node, None, None), "clocks")
        if r.get("memory_bytes") is not None and r["phase"] == "first":
            m = r["memory_bytes"] / 2**20
            put(f"vpp {r['engine']} resident MiB", (m, None, None), "MiB")
        if r.get("capo_classify_clocks_per_packet") is not None:
            c = r["capo_classify_clocks_per_packet"]
            put("vpp capo classifier clocks/tuple", (c, None, None), "clocks")
    for kind in sorted({r["update"] for r in pick(rows, source="updates")}):
        for engine, label in (("fast", "update"), ("plugin", "plugin update")):
            picked = [r for r in pick(rows, source="updates", update=kind)
                      if r.get("engine", "fast") == engine]
            if not picked:
                continue
            p99 = [r.get("p99_us") for r in picked]
            s = spread(p99)
            if s is not None and len([v for v in p99 if v is not None]) == 1:
                s = (s[0], None, None)
            put(f"{picked[0]['workload']} {label} {kind} p99 µs", s, "µs")
    off = pick(rows, source="offload")
    if off:
        pre = f"{off[0]['workload']} offload {off[0]['nic']} "
        def values(key, scale):
            return (None if r.get(key) is None else r[key] * scale for r in off)
        for key, name, unit, lower in (
                ("held_out_fraction", "held-out NIC share", "%", False),
                ("oracle_fraction", "oracle NIC share", "%", False),
                ("held_out_vs_oracle", "held-out vs oracle", "%", False),
                ("deny_drop_fraction", "denied packets dropped in hardware", "%", False),
                ("planned_deny_drop_fraction", "denied packets dropped by the plans alone",
                 "%", False),
                ("flow_mismatches", "flows with a wrong verdict", "", True),
                ("replan_ms", "re-plan ms", "ms", True),
                ("entries_per_commit", "rules created per re-plan", "", True),
                ("commit_peak_entries", "most entries during a re-plan's commit", "", True)):
            put(pre + name, spread(values(key, 100 if unit == "%" else 1)), unit, lower)
        in_place = [r for r in off if r.get("replan_mode") == "incremental"
                    and r.get("replans_in_place") == r.get("windows", 0) - 1]
        put(pre + "re-plans committed in place",
            (100 * len(in_place) / len(off), None, None), "% of runs", False)
    return out


def targets(fig):
    """(target, measured text, met: True/False/None when not measured)."""
    def get(name):
        return fig.get(name, (None,))[0]

    res = []

    def at_most(label, value, limit, unit):
        if value is None:
            res.append((label, "not measured", None))
        else:
            res.append((label, f"{value:,.1f} {unit}", value <= limit))

    at_most("W-k8s first packet, production path, frame of 256: ≤ 50 ns",
            get("w-k8s production first ns/packet"), 50, "ns")
    at_most("W-large first packet, production path: ≤ 100 ns",
            get("w-large production first ns/packet"), 100, "ns")
    small = get(f"w-k8s production first ns/packet at {SWEEP[0]} rules per program")
    large = get(f"w-k8s production first ns/packet at {SWEEP[1]} rules per program")
    if small is None or large is None:
        res.append(("1,400 rules per program vs 70: ≤ 2×", "not measured", None))
    else:
        res.append(("1,400 rules per program vs 70: ≤ 2×",
                    f"{large / small:.1f}× ({large:,.0f} vs {small:,.0f} ns, production first)",
                    large / small <= 2))
    npol, node = get("vpp npol first clocks/packet"), get("vpp capo first policy-node clocks/packet")
    if npol is None or node is None:
        res.append(("capo node vs npol_match_func: ≥ 20× fewer cycles", "not measured", None))
    else:
        res.append(("capo node vs npol_match_func: ≥ 20× fewer cycles",
                    f"{npol / node:.1f}× (npol {npol:,.0f}, capo node {node:,.0f} clocks)", npol / node >= 20))
    for phase in ("first", "established"):
        acl = get(f"vpp acl {phase} policy-node clocks/packet")
        capo = get(f"vpp capo {phase} policy-node clocks/packet")
        if acl is None or capo is None:
            res.append((f"capo node vs ACL plugin, {phase}: ≤ 1×", "not measured", None))
        else:
            res.append((f"capo node vs ACL plugin, {phase}: ≤ 1×",
                        f"{capo / acl:.2f}× (capo {capo:,.0f}, ACL {acl:,.0f} clocks)", capo / acl <= 1))
    acl_m, capo_m = get("vpp acl resident MiB"), get("vpp capo resident MiB")
    if acl_m is None or capo_m is None:
        res.append(("capo memory vs ACL plugin: ≤ 1/10", "not measured", None))
    else:
        res.append(("capo memory vs ACL plugin: ≤ 1/10",
                    f"1/{acl_m / max(capo_m, 1e-9):.0f} ({capo_m:,.0f} vs {acl_m:,.0f} MiB)", capo_m * 10 <= acl_m))
    est, fwd = get("vpp capo established clocks/packet"), get("vpp forward established clocks/packet")
    if est is None or fwd is None:
        res.append(("established flows through capo ≤ 1.3× forwarding", "not measured", None))
    else:
        res.append(("established flows through capo ≤ 1.3× forwarding",
                    f"{est / fwd:.1f}× ({est:,.0f} vs {fwd:,.0f} clocks)", est / fwd <= 1.3))
    for prefix, label in (("w-large update ", "any single update on W-large: p99 ≤ 50 µs"),
                          ("w-large plugin update ",
                           "any single update on W-large, VPP plugin path: p99 ≤ 50 µs")):
        updates = {k: v for k, v in fig.items() if k.startswith(prefix)}
        if not updates:
            res.append((label, "not measured", None))
            continue
        worst = max(updates, key=lambda k: updates[k][0])
        res.append((label,
                    f"worst: {worst[len(prefix):-len(' p99 µs')]} {updates[worst][0]:,.1f} µs",
                    updates[worst][0] <= 50))
    off = sorted({k[:-len("held-out NIC share")] for k in fig if k.endswith(" held-out NIC share")})
    if not off:
        for label in ("offload: held-out NIC share ≥ 90% of the held-out oracle's",
                      "offload: ≥ 95% of denied packets dropped in hardware",
                      "offload: 0 flows with a wrong verdict",
                      "offload: re-plan ≤ 100 ms, committed in place"):
            res.append((label, "not measured", None))
        return res
    pre = off[0]
    ratio = get(pre + "held-out vs oracle")
    res.append(("offload: held-out NIC share ≥ 90% of the held-out oracle's",
                f"{ratio:.0f}% ({get(pre + 'held-out NIC share'):.1f}% / "
                f"{get(pre + 'oracle NIC share'):.1f}%)", ratio >= 90))
    drop = get(pre + "denied packets dropped in hardware")
    planned = get(pre + "denied packets dropped by the plans alone")
    how = "" if planned is None or planned == drop else \
        f" (learned drops included; the plans alone {planned:.1f}%)"
    res.append(("offload: ≥ 95% of denied packets dropped in hardware",
                f"{drop:.1f}%{how}", drop >= 95))
    wrong = get(pre + "flows with a wrong verdict")
    res.append(("offload: 0 flows with a wrong verdict", f"{wrong:,.0f}", wrong == 0))
    replan, in_place = get(pre + "re-plan ms"), get(pre + "re-plans committed in place")
    res.append(("offload: re-plan ≤ 100 ms, committed in place",
                f"{replan:,.1f} ms; every re-plan in place in {in_place:.0f}% of the runs "
                f"(the planning runs over the whole plan)",
                replan <= 100 and in_place == 100))
    return res


# Figures of the peers (VPP's ACL plugin, npol, plain forwarding): shown, compared
# with the targets, but a change in them is not a regression of capo's.
PEERS = ("vpp acl ", "vpp npol ", "vpp forward ")


# Units of figures that depend on the machine's speed.
TIMINGS = ("ns", "µs", "ms", "clocks")


def machine_of(doc):
    """What makes two results files' timings comparable: CPU model, CPU count and
    kernel (guests of one cloud report one CPU model)."""
    m = doc.get("machine", {})
    return (m.get("cpu"), m.get("cpus"), m.get("kernel"))


def regressions(fig, previous, tolerance, timings=True):
    """capo's figures worse than the previous file's by more than `tolerance` (a
    fraction); with `timings` false (another machine), only sizes, shares and
    counts."""
    out = []
    for name, (med, _, _, unit, lower) in fig.items():
        if name not in previous or name.startswith(PEERS):
            continue
        if not timings and unit in TIMINGS:
            continue
        old = previous[name][0]
        if old <= 0:
            continue
        change = (med - old) / old
        if (lower and change > tolerance) or (not lower and change < -tolerance):
            out.append((name, old, med, unit, change))
    return out


def load(path):
    with open(path) as f:
        return json.load(f)


def check(opts):
    doc = load(opts.results)
    fig = figures(doc)
    ok = True
    print("targets:")
    for label, measured, met in targets(fig):
        mark = {True: "met", False: "MISSED", None: "n/a"}[met]
        print(f"  [{mark:>6}] {label}: {measured}")
        if met is False and opts.require_targets:
            ok = False
    if opts.previous:
        old = load(opts.previous)
        prev = figures(old)
        same = machine_of(old) == machine_of(doc)
        bad = regressions(fig, prev, opts.tolerance, timings=same)
        if not same:
            cpu, cpus, kernel = machine_of(old)
            print(f"{opts.previous} ran on another machine ({cpu}, {cpus} CPUs, kernel "
                  f"{kernel}): timings are not compared, sizes and shares are")
        print(f"against {opts.previous} (tolerance {opts.tolerance:.0%}): "
              f"{len(bad)} regressions")
        for name, old, new, unit, change in bad:
            print(f"  REGRESSED {name}: {old:,.1f} -> {new:,.1f} {unit} ({change:+.0%})")
        ok = ok and not bad
    return 0 if ok else 1


# ---- docs ---------------------------------------------------------------------------

def render(doc, previous=None):
    fig = figures(doc)
    prev = figures(previous) if previous else {}
    m = doc["machine"]
    lines = [
        BEGIN,
        "",
        f"Generated by `bench/gate/gate.py markdown` from the results of {doc['date']}: "
        f"{m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}, load average "
        f"{m['load'][0]:.2f} before and {m.get('load_after', m['load'])[0]:.2f} after; "
        f"{doc['runs']} runs; medians with min–max.",
        "",
        "| target | measured | status |",
        "| --- | --- | --- |",
    ]
    for label, measured, met in targets(fig):
        lines.append(f"| {label} | {measured} | {dict([(True, 'met'), (False, '**missed**'), (None, 'not measured')])[met]} |")
    if previous:
        cpu, cpus, kernel = machine_of(previous)
        where = ("the same machine" if machine_of(previous) == machine_of(doc)
                 else f"another machine ({cpu}, {cpus} CPUs, kernel {kernel}; its "
                      "timings are not comparable with these)")
        lines += ["", f"The previous column is the results of {previous['date']}, "
                      f"from {where}."]
    lines += ["", "| figure | median | min–max | previous |", "| --- | ---: | ---: | ---: |"]
    for name in sorted(fig):
        med, lo, hi, unit, _ = fig[name]
        old = prev.get(name)
        span = "—" if lo is None else f"{lo:,.1f}–{hi:,.1f}"
        lines.append(f"| {name} | {med:,.1f} {unit} | {span} | "
                     f"{'—' if old is None else f'{old[0]:,.1f}'} |")
    lines += ["", END]
    return "\n".join(lines)


def markdown(opts):
    doc = load(opts.results)
    previous = load(opts.previous) if opts.previous else None
    with open(opts.doc) as f:
        text = f.read()
    section = render(doc, previous)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## Gate\n\n" + section + "\n"
    with open(opts.doc, "w") as f:
        f.write(text)
    print("gate: wrote " + opts.doc, file=sys.stderr)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", default="target/release")
    r.add_argument("--vpp", default=os.environ.get("CAPO_VPP"))
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--update-count", type=int, default=500)
    r.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("results")
    c.add_argument("--previous")
    c.add_argument("--tolerance", type=float, default=0.15)
    c.add_argument("--require-targets", action="store_true")
    d = sub.add_parser("markdown")
    d.add_argument("results")
    d.add_argument("--previous")
    d.add_argument("--doc", default="docs/benchmarks.md")
    opts = p.parse_args(argv)
    if opts.cmd == "run":
        if opts.runs < 5:
            print("gate: warning: fewer than 5 runs; the docs ask for medians of at least 5",
                  file=sys.stderr)
        run(opts)
        return 0
    if opts.cmd == "check":
        return check(opts)
    return markdown(opts)


if __name__ == "__main__":
    sys.exit(main())
