#!/usr/bin/env python3
"""Instructions per packet and per update, counted by valgrind's callgrind: the
figures the benchmark notes quote where the host is too busy for timings to mean
anything (instruction counts do not depend on the neighbours).

    bench/gate/instructions.py node --bin target/release/capo-bench [--workload w-k8s]
    bench/gate/instructions.py updates --bin target/release/capo-bench
                               [--workload w-large] [--kind endpoint]
                               [--path builder|plugin] [--count 12] [--period 2]

`node` runs `capo-bench classify --fast-only --quick` with one callgrind dump per call
of the VPP plugin's frame logic (`capo_vpp_plugin::batch::classify_batch`) and prints
the instructions per first and per established packet, from one pass over each
phase's frames. `updates` dumps once per applied update (the builder's
`Builder::apply`, or the plugin's control core taking a generation message) and
prints each update's instructions, with the median of each step of the kind's round
(`steps`: a change, then its undos). Both print one JSON row per figure. The counts
move by a few instructions between runs (the flow table's hash seed is random).
"""

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

FRAME_LOGIC = "*plugin::batch::classify_batch"
BUILDER_APPLY = "capo_classifier::compile::Builder::apply"
PLUGIN_MESSAGE = "capo_vpp_plugin::control::ControlCore<C>::on_message"


# ---- the arithmetic (tested without valgrind) -----------------------------------------

def smallest_period(seq, most=None):
    """The smallest p whose last two blocks of p items are equal, or None."""
    most = len(seq) // 2 if most is None else min(most, len(seq) // 2)
    for p in range(1, most + 1):
        if seq[-p:] == seq[-2 * p:-p]:
            return p
    return None


def node_phases(calls):
    """Splits the node logic's per-call counts into one pass of first packets and one
    of established packets.

    The benchmark runs a first pass and an established pass untimed, then repeats
    the first pass (each repeat starting from an empty flow table, so its calls
    count the same each time), then the established pass. The established pass is
    the period at the end; the first pass is the period of what precedes it.
    """
    est = smallest_period(calls)
    if est is None:
        raise ValueError("no repeating established pass at the end of the calls")
    rest = list(calls)
    while len(rest) > est and rest[-est:] == calls[-est:]:
        rest = rest[:-est]
    first = smallest_period(rest)
    if first is None:
        raise ValueError("no repeating first pass before the established passes")
    return rest[-first:], calls[-est:]


def step_medians(each, period):
    """Per step of a round of `period` messages (a change, then its undos), the
    median, least and most of that step's counts; `each` starts at a round.

    A kind's messages differ in kind (an endpoint's removal, then its re-adding):
    one median over all of them falls between the steps and says nothing.
    """
    if period < 1 or not each or len(each) % period:
        raise ValueError(f"{len(each)} counts are not whole rounds of {period}")
    return [{"median": statistics.median(each[j::period]), "min": min(each[j::period]),
             "max": max(each[j::period])} for j in range(period)]


def packets_of(log):
    """(allowed, packets) from the benchmark's node line."""
    m = re.search(r"\((\d+) of (\d+) allowed", log)
    if not m:
        raise ValueError("the benchmark printed no node line")
    return int(m.group(1)), int(m.group(2))


def summary_of(text):
    m = re.search(r"^summary:\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


# ---- running callgrind ----------------------------------------------------------------

def callgrind_command(cmd, function, out, env):
    """The valgrind command line and environment for `callgrind`.

    capo's programs execute themselves again at start to put their heap on huge
    pages (capo-heap). Valgrind does not follow that exec, so the counted process
    would end there, and valgrind's own allocator ignores glibc's tunable anyway:
    the programs run with `CAPO_HUGE_PAGES=off` here."""
    full = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            "--collect-atstart=no", f"--toggle-collect={function}",
            f"--dump-after={function}"] + cmd
    return full, dict(env, CAPO_HUGE_PAGES="off")


def callgrind(cmd, function, workdir):
    """Runs `cmd` under callgrind, collecting only inside `function` and dumping after
    each of its calls; returns the dumps' instruction totals in call order and the
    program's output."""
    out = os.path.join(workdir, "cg.out")
    full, env = callgrind_command(cmd, function, out, os.environ)
    run = subprocess.run(full, capture_output=True, text=True, check=False, env=env)
    if run.returncode != 0:
        sys.exit(f"instructions: {' '.join(cmd)} failed under valgrind:\n{run.stderr[-2000:]}")
    dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    totals = []
    for path in dumps:
        with open(path, encoding="utf-8", errors="replace") as f:
            totals.append(summary_of(f.read()))
    return totals, run.stdout + run.stderr


def node(args, workdir):
    cmd = [args.bin, "classify", "--workload", args.workload, "--fast-only", "--quick", "--json"]
    calls, log = callgrind(cmd, FRAME_LOGIC, workdir)
    allowed, packets = packets_of(log)
    first, est = node_phases(calls)
    return [
        {"workload": args.workload, "figure": "node first instructions/packet",
         "value": round(sum(first) / packets, 1), "calls": len(first), "packets": packets},
        {"workload": args.workload, "figure": "node established instructions/packet",
         "value": round(sum(est) / max(allowed, 1), 1), "calls": len(est), "packets": allowed},
    ]


def updates(args, workdir):
    cmd = [args.bin, "updates", "--workload", args.workload, "--count", str(args.count),
           "--kinds", args.kind, "--path", args.path]
    function = BUILDER_APPLY if args.path == "builder" else PLUGIN_MESSAGE
    calls, _ = callgrind(cmd, function, workdir)
    if len(calls) < args.count:
        sys.exit(f"instructions: {len(calls)} dumps for {args.count} updates")
    each = calls[-args.count:]
    return [{"workload": args.workload, "figure": f"{args.path} update {args.kind} instructions",
             "median": statistics.median(each), "min": min(each), "max": max(each),
             "steps": step_medians(each, args.period), "each": each}]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    n = sub.add_parser("node")
    n.add_argument("--bin", default="target/release/capo-bench")
    n.add_argument("--workload", default="w-k8s")
    u = sub.add_parser("updates")
    u.add_argument("--bin", default="target/release/capo-bench")
    u.add_argument("--workload", default="w-large")
    u.add_argument("--kind", default="endpoint")
    u.add_argument("--path", choices=["builder", "plugin"], default="builder")
    u.add_argument("--count", type=int, default=12)
    u.add_argument("--period", type=int, default=None,
                   help="messages in one round of the kind (a change and its undos): "
                        "4 for policy-add-remove, else 2")
    args = p.parse_args(argv)
    if args.mode == "updates":
        if args.period is None:
            args.period = 4 if args.kind == "policy-add-remove" else 2
        if args.count % args.period:
            p.error(f"--count {args.count} is not whole rounds of {args.period} messages")
    with tempfile.TemporaryDirectory(prefix="capo-instructions.") as workdir:
        rows = node(args, workdir) if args.mode == "node" else updates(args, workdir)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
