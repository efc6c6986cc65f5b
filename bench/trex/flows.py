"""TRex STL streams from a capo-bench traffic export (W-k8s, W-large).

`capo-bench traffic --workload w-k8s --export DIR` writes the offload benchmark's
traffic: `flows.csv` (every segment of every connection, window by window),
`felix.frames` (the cluster's policy) and `meta.json`. A profile built on this module
sends one window of it: one continuous stream per distinct packet header, at a rate
proportional to that header's packets in the window, so one second at 100% (the
default `pps`) sends the window's packets exactly once.

Direction 0 is the wire side (what the NIC receives: requests of connections remote
peers open, replies to connections local endpoints open, refused SYNs, DNS, ICMP);
direction 1 is what the local endpoints send.

Tunables (`-t key=value,...`):
  export=DIR   the export (default: bench/trex/exports/<workload> beside this file)
  window=N     which window (default 0)
  size=64|imix|N   frame bytes (default 64; imix is 64/594/1518 at 7:4:1)
  pps=R        packets per second at 100% (default: the window's packets, once a second)
  flows=N      only the N headers with the most packets (default 0: all)
  ipv6=0|1     only IPv4 (0) or only IPv6 (1) flows; default: both

The skew of conversation popularity is the export's (`capo-bench traffic --zipf S`):
it decides which flows exist, so it is chosen when the flows are generated.
"""

import argparse
import csv
import json
import pathlib
from collections import OrderedDict

import lbr_trex_client  # noqa: F401  (puts TRex's `trex` package on the path)
from trex.stl.api import (
    ICMP,
    IP,
    UDP,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    Raw,
    STLPktBuilder,
    STLStream,
    STLTXCont,
    TCP,
    Ether,
)

HERE = pathlib.Path(__file__).resolve().parent

# IMIX: 64, 594 and 1518 byte frames, 7:4:1 (the usual simple IMIX).
IMIX = [(64, 7), (594, 4), (1518, 1)]

# TRex rewrites the Ethernet addresses from its port configuration; these are for a
# pcap replay (VPP's packet generator sets its input interface to DST_MAC).
SRC_MAC = "02:00:00:00:00:01"
DST_MAC = "02:00:00:00:00:02"

TCP_PROTO, UDP_PROTO, ICMP_PROTO, ICMPV6_PROTO = 6, 17, 1, 58


def frame_sizes(size):
    """[(frame bytes, weight)] for `size`: a number of bytes, or `imix`."""
    if size == "imix":
        return IMIX
    n = int(size)
    if not 64 <= n <= 9000:
        raise ValueError(f"size {n}: frames are 64..9000 bytes")
    return [(n, 1)]


def header_key(row):
    """The headers a packet of `row` carries (what makes two packets the same)."""
    return (row["src"], row["dst"], int(row["proto"]), int(row["sport"]), int(row["dport"]),
            row["icmp_type"], row["icmp_code"], int(row["tcp_flags"]))


def read_export(directory):
    """(meta, rows) of an export; a clear error if it is not one."""
    d = pathlib.Path(directory)
    meta_path, flows_path = d / "meta.json", d / "flows.csv"
    if not flows_path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(
            f"{d}: no capo-bench export here (run `capo-bench traffic --workload ... "
            f"--export {d}`)")
    meta = json.loads(meta_path.read_text())
    with flows_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return meta, rows


def window_flows(rows, window, direction, ipv6=None):
    """{header: packets} of one window and side, in first-seen order."""
    want_wire = "1" if direction == 0 else "0"
    flows = OrderedDict()
    for r in rows:
        if int(r["window"]) != window or r["from_wire"] != want_wire:
            continue
        if ipv6 is not None and (":" in r["src"]) != bool(ipv6):
            continue
        k = header_key(r)
        flows[k] = flows.get(k, 0) + int(r["count"])
    return flows


def l4_layer(proto, sport, dport, icmp_type, icmp_code, flags):
    if proto == TCP_PROTO:
        return TCP(sport=sport, dport=dport, flags=flags)
    if proto == UDP_PROTO:
        return UDP(sport=sport, dport=dport)
    if proto == ICMP_PROTO:
        return ICMP(type=int(icmp_type), code=int(icmp_code))
    if proto == ICMPV6_PROTO and icmp_type in ("128", "129"):
        layer = ICMPv6EchoRequest if icmp_type == "128" else ICMPv6EchoReply
        return layer()
    return None


def packet(key, frame_bytes):
    """The frame of header `key`, padded to `frame_bytes` (FCS excluded, as TRex counts)."""
    src, dst, proto, sport, dport, icmp_type, icmp_code, flags = key
    v6 = ":" in src
    l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    l4 = l4_layer(proto, sport, dport, icmp_type, icmp_code, flags)
    if l4 is None:
        # Another protocol: its number, no header of its own.
        if v6:
            l3.nh = proto
        else:
            l3.proto = proto
        pkt = Ether(src=SRC_MAC, dst=DST_MAC) / l3
    else:
        pkt = Ether(src=SRC_MAC, dst=DST_MAC) / l3 / l4
    pad = max(0, frame_bytes - 4 - len(pkt))
    return pkt / Raw(b"x" * pad) if pad else pkt


class FlowsProfile:
    """A profile over one workload's export; subclasses name the workload."""

    WORKLOAD = "w-k8s"

    def parser(self):
        p = argparse.ArgumentParser(prog=self.WORKLOAD, description=__doc__.split("\n\n")[0])
        p.add_argument("--export", default=str(HERE / "exports" / self.WORKLOAD))
        p.add_argument("--window", type=int, default=0)
        p.add_argument("--size", default="64", help="frame bytes, or imix")
        p.add_argument("--pps", type=float, default=None,
                       help="packets per second at 100%% (default: the window once a second)")
        p.add_argument("--flows", type=int, default=0,
                       help="only the headers with the most packets (0: all)")
        p.add_argument("--ipv6", type=int, default=None, choices=[0, 1])
        return p

    def flows(self, tunables, direction):
        """{header: packets} the streams send in one cycle, and the parsed tunables."""
        args = self.parser().parse_args(tunables)
        meta, rows = read_export(args.export)
        if meta.get("workload") != self.WORKLOAD:
            raise ValueError(f"{args.export}: an export of {meta.get('workload')}, "
                             f"not {self.WORKLOAD}")
        if not 0 <= args.window < len(meta["windows"]):
            raise ValueError(f"window {args.window}: the export has "
                             f"{len(meta['windows'])} windows")
        if args.flows < 0:
            raise ValueError("flows: 0 (all) or more")
        flows = window_flows(rows, args.window, direction, args.ipv6)
        if args.flows:
            hottest = sorted(flows.items(), key=lambda kv: -kv[1])[: args.flows]
            keep = {k for k, _ in hottest}
            flows = OrderedDict((k, n) for k, n in flows.items() if k in keep)
        if not flows:
            raise ValueError(f"{args.export}: no flows in window {args.window} for "
                             f"direction {direction} with these tunables")
        return flows, args

    def get_streams(self, tunables=[], direction=0, port_id=0, **kwargs):  # noqa: B006
        flows, args = self.flows(tunables, direction)
        total = sum(flows.values())
        scale = 1.0 if args.pps is None else args.pps / total
        if scale <= 0:
            raise ValueError("pps: more than 0")
        # Sizes go round a cycle packet after packet (7 of 64 B, 4 of 594 B, 1 of 1518 B
        # for IMIX), so every flow keeps its packet count and the whole run has the mix.
        cycle = [b for b, w in frame_sizes(args.size) for _ in range(w)]
        streams, sent = [], 0
        for key, packets in flows.items():
            per_size = OrderedDict()
            for j in range(sent, sent + packets):
                b = cycle[j % len(cycle)]
                per_size[b] = per_size.get(b, 0) + 1
            sent += packets
            for frame_bytes, n in per_size.items():
                streams.append(STLStream(
                    packet=STLPktBuilder(pkt=packet(key, frame_bytes)),
                    mode=STLTXCont(pps=n * scale),
                ))
        return streams
