#!/usr/bin/env python3
"""NDR/PDR throughput of a DUT running capo, measured with TRex.

Binary search on TRex's transmit rate for the highest rate with no loss (NDR) and with
at most 0.5% loss (PDR), one trial per rate. During each trial capo's counters are read
over its gRPC API (the share decided by the NIC and by software, drops), so a result
says where the packets were decided at that rate. Results go to JSON, and with several
runs (a sweep over rules or flows) to a PNG plot of throughput against them.

    ndr.py --server TREX_HOST --profile bench/trex/w_seed.py [--tunables k=v,...]
           --capo unix:///var/run/capo/agent.sock --json out.json [--plot out.png]

The search itself (`search`) is independent of TRex and capo: it is given a function
that runs one trial at a rate, which is how it is tested against a simulated DUT.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from typing import Callable, List, Optional

# The two loss targets, as fractions of the packets sent.
NDR_LOSS = 0.0
PDR_LOSS = 0.005


@dataclasses.dataclass
class Trial:
    """One run at one rate."""

    rate_percent: float
    tx_packets: int
    rx_packets: int
    tx_pps: float
    dut: dict = dataclasses.field(default_factory=dict)

    @property
    def loss(self) -> float:
        if self.tx_packets == 0:
            return 1.0
        return max(0, self.tx_packets - self.rx_packets) / self.tx_packets


@dataclasses.dataclass
class SearchResult:
    """The highest passing trial for one loss target (None: none passed)."""

    loss_target: float
    best: Optional[Trial]
    trials: List[Trial]


def search(
    run_trial: Callable[[float], Trial],
    loss_target: float,
    low: float = 0.1,
    high: float = 100.0,
    precision: float = 0.5,
    max_trials: int = 30,
) -> SearchResult:
    """Binary search on the rate (percent of line rate) for the highest rate whose loss
    is at most `loss_target`. The top of the range is tried first (a DUT that keeps up
    at line rate needs one trial); the search stops when the passing and failing rates
    are within `precision` percentage points."""
    if not 0 < low <= high:
        raise ValueError(f"rates must satisfy 0 < low <= high (got {low}, {high})")
    if precision <= 0:
        raise ValueError("precision must be positive")
    trials: List[Trial] = []

    def passes(t: Trial) -> bool:
        return t.loss <= loss_target + 1e-12

    top = run_trial(high)
    trials.append(top)
    if passes(top):
        return SearchResult(loss_target, top, trials)
    bottom = run_trial(low)
    trials.append(bottom)
    if not passes(bottom):
        return SearchResult(loss_target, None, trials)
    best, failing = bottom, high
    while failing - best.rate_percent > precision and len(trials) < max_trials:
        rate = (best.rate_percent + failing) / 2
        t = run_trial(rate)
        trials.append(t)
        if passes(t):
            best = t
        else:
            failing = rate
    return SearchResult(loss_target, best, trials)


class CapoCounters:
    """capo's Counters service over gRPC (stubs generated from capo's proto at start)."""

    def __init__(self, target: str, proto_dir: pathlib.Path):
        import importlib
        import tempfile

        import grpc
        from grpc_tools import protoc

        out = pathlib.Path(tempfile.mkdtemp(prefix="capo-grpc-"))
        proto = "capo/agent/v1/agent.proto"
        rc = protoc.main(
            [
                "protoc",
                f"-I{proto_dir}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                str(proto_dir / proto),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto_dir / proto}")
        sys.path.insert(0, str(out))
        self.pb = importlib.import_module("capo.agent.v1.agent_pb2")
        grpc_mod = importlib.import_module("capo.agent.v1.agent_pb2_grpc")
        # On a unix socket grpc-core sends the percent-encoded path as :authority,
        # which capo's HTTP/2 server refuses: name a plain one.
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.default_authority", "localhost")]
        )
        self.stub = grpc_mod.CountersStub(self.channel)

    def totals(self) -> dict:
        reply = self.stub.Get(self.pb.CountersRequest(), timeout=5)
        t = reply.totals
        return {
            "generation": reply.generation,
            "packets": t.packets,
            "allowed": t.allowed,
            "denied": t.denied,
            "nic_decided": t.nic_decided,
            "software_decided": t.software_decided,
        }


def dut_delta(before: dict, after: dict) -> dict:
    """What capo counted during a trial, and the NIC's share of it."""
    d = {k: after[k] - before[k] for k in before if k != "generation"}
    decided = d.get("nic_decided", 0) + d.get("software_decided", 0)
    d["nic_share"] = d["nic_decided"] / decided if decided else 0.0
    d["generation"] = after.get("generation")
    return d


class TrexTrials:
    """Trials on a TRex server in stateless mode: the profile's streams on port 0,
    received on port 1 (through the DUT)."""

    def __init__(self, server, profile, tunables, duration, capo: Optional[CapoCounters]):
        import lbr_trex_client  # noqa: F401  (puts TRex's `trex` package on the path)
        from trex.stl.api import STLClient, STLProfile

        self.client = STLClient(server=server)
        self.profile = STLProfile.load(profile, **tunables)
        self.duration = duration
        self.capo = capo

    def connect(self):
        self.client.connect()
        self.client.reset(ports=[0, 1])
        self.client.add_streams(self.profile.get_streams(), ports=[0])

    def __call__(self, rate_percent: float) -> Trial:
        before = self.capo.totals() if self.capo else None
        self.client.clear_stats()
        self.client.start(ports=[0], mult=f"{rate_percent}%", duration=self.duration)
        self.client.wait_on_traffic(ports=[0])
        time.sleep(0.5)  # packets in flight reach port 1
        stats = self.client.get_stats()
        dut = dut_delta(before, self.capo.totals()) if self.capo else {}
        return Trial(
            rate_percent=rate_percent,
            tx_packets=stats[0]["opackets"],
            rx_packets=stats[1]["ipackets"],
            tx_pps=stats[0]["opackets"] / self.duration,
            dut=dut,
        )


def report(results: List[SearchResult], label: dict) -> dict:
    def one(r: SearchResult):
        return {
            "loss_target": r.loss_target,
            "rate_percent": r.best.rate_percent if r.best else None,
            "pps": r.best.tx_pps if r.best else None,
            "dut": r.best.dut if r.best else None,
            "trials": [dataclasses.asdict(t) | {"loss": t.loss} for t in r.trials],
        }

    return {"label": label, "ndr": one(results[0]), "pdr": one(results[1])}


def plot(runs: List[dict], x_key: str, out: pathlib.Path):
    """Throughput (NDR and PDR, Mpps) against `x_key` of each run's label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["label"][x_key])
    xs = [r["label"][x_key] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ["ndr", "pdr"]:
        ys = [(r[kind]["pps"] or 0) / 1e6 for r in runs]
        ax.plot(xs, ys, marker="o", label=kind.upper())
    ax.set_xlabel(x_key)
    ax.set_ylabel("throughput (Mpps)")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


def parse_tunables(s: str) -> dict:
    out = {}
    for kv in filter(None, (s or "").split(",")):
        k, _, v = kv.partition("=")
        if not _:
            raise SystemExit(f"--tunables: {kv!r} is not KEY=VALUE")
        out[k] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="TRex server address")
    ap.add_argument("--profile", required=True, type=pathlib.Path)
    ap.add_argument("--tunables", default="", help="k=v,... passed to the profile")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per trial")
    ap.add_argument("--precision", type=float, default=0.5, help="percentage points")
    ap.add_argument("--capo", help="capo's gRPC target, e.g. unix:///var/run/capo/agent.sock")
    ap.add_argument("--proto-dir", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parents[2] / "proto")
    ap.add_argument("--json", type=pathlib.Path, required=True,
                    help="results file; runs are appended, so a sweep builds up")
    ap.add_argument("--plot", type=pathlib.Path, help="PNG of throughput against --x")
    ap.add_argument("--x", default="rules", help="label key to plot against")
    ap.add_argument("--label", default="", help="k=v,... describing this run (rules=70)")
    args = ap.parse_args(argv)

    tunables = parse_tunables(args.tunables)
    capo = CapoCounters(args.capo, args.proto_dir) if args.capo else None
    trials = TrexTrials(args.server, str(args.profile), tunables, args.duration, capo)
    trials.connect()
    results = [search(trials, NDR_LOSS, precision=args.precision),
               search(trials, PDR_LOSS, precision=args.precision)]
    label = {k: (float(v) if v.replace(".", "", 1).isdigit() else v)
             for k, v in parse_tunables(args.label).items()}
    label["profile"] = args.profile.name
    runs = json.loads(args.json.read_text()) if args.json.exists() else []
    runs.append(report(results, label))
    args.json.write_text(json.dumps(runs, indent=2) + "\n")
    if args.plot:
        plot([r for r in runs if args.x in r["label"]], args.x, args.plot)
    for r in results:
        kind = "NDR" if r.loss_target == NDR_LOSS else "PDR"
        if r.best:
            print(f"{kind}: {r.best.rate_percent:.2f}% ({r.best.tx_pps / 1e6:.3f} Mpps), "
                  f"NIC share {r.best.dut.get('nic_share', 0):.3f}")
        else:
            print(f"{kind}: no rate passed")


if __name__ == "__main__":
    main()
