#!/usr/bin/env python3
"""Writes a TRex STL profile's packets to a pcap file, without a TRex server.

Each stream's base packet is expanded through its field-engine program (the
instructions capo's profiles use: `flow_var` with `inc`/`dec`/`random`, `write_flow_var`,
`fix_checksum_ipv4`), and streams are interleaved by their rates over `--seconds` of
traffic at 100%. The result is what TRex would put on the wire for that time, in
order, so the same packets can be replayed through capo (a DPDK `net_pcap` port, or
VPP's packet generator) and compared with capo-bench's export.

    to_pcap.py PROFILE OUT.pcap [--direction 0|1] [--seconds 1] [--tunables k=v,...]
"""

import argparse
import base64
import heapq
import random
import struct
import sys

import lbr_trex_client  # noqa: F401  (puts TRex's `trex` package on the path)
from trex.stl.api import STLProfile


class FieldEngine:
    """The instructions of one stream's `vm`, run packet after packet."""

    def __init__(self, vm, seed=0):
        self.instructions = vm.get("instructions", []) if vm else []
        self.vars = {}
        self.rng = random.Random(seed)
        for ins in self.instructions:
            if ins["type"] == "flow_var":
                self.vars[ins["name"]] = None
            elif ins["type"] not in ("write_flow_var", "fix_checksum_ipv4"):
                raise ValueError(f"field-engine instruction {ins['type']!r} is not supported")

    def step(self, ins):
        name, lo, hi = ins["name"], ins["min_value"], ins["max_value"]
        cur = self.vars[name]
        step = ins.get("step", 1)
        if ins["op"] == "inc":
            nxt = ins.get("init_value", lo) if cur is None else cur + step
            return lo if nxt > hi else nxt
        if ins["op"] == "dec":
            nxt = ins.get("init_value", hi) if cur is None else cur - step
            return hi if nxt < lo else nxt
        if ins["op"] == "random":
            return self.rng.randint(lo, hi)
        raise ValueError(f"flow_var op {ins['op']!r} is not supported")

    def apply(self, base: bytes) -> bytes:
        pkt = bytearray(base)
        sizes = {}
        for ins in self.instructions:
            t = ins["type"]
            if t == "flow_var":
                self.vars[ins["name"]] = self.step(ins)
                sizes[ins["name"]] = ins["size"]
            elif t == "write_flow_var":
                size = sizes[ins["name"]]
                value = (self.vars[ins["name"]] + ins.get("add_value", 0)) % (1 << (8 * size))
                off = ins["pkt_offset"]
                order = "big" if ins.get("is_big_endian", True) else "little"
                pkt[off:off + size] = value.to_bytes(size, order)
            elif t == "fix_checksum_ipv4":
                off = ins["pkt_offset"]
                ihl = (pkt[off] & 0x0F) * 4
                pkt[off + 10:off + 12] = b"\x00\x00"
                total = sum(struct.unpack(f"!{ihl // 2}H", bytes(pkt[off:off + ihl])))
                while total >> 16:
                    total = (total & 0xFFFF) + (total >> 16)
                pkt[off + 10:off + 12] = struct.pack("!H", ~total & 0xFFFF)
        return bytes(pkt)


def packets(profile_path, direction=0, seconds=1.0, tunables=None):
    """(time, frame) in wire order for `seconds` of the profile at 100%."""
    profile = STLProfile.load(profile_path, direction=direction, **(tunables or {}))
    heap = []
    engines = []
    for i, s in enumerate(profile.get_streams()):
        j = s.to_json()
        mode = j["mode"]
        if mode["type"] != "continuous" or mode["rate"]["type"] != "pps":
            raise ValueError(f"stream {i}: only continuous streams at a pps rate are written")
        pps = float(mode["rate"]["value"])
        base = base64.b64decode(j["packet"]["binary"])
        engines.append((FieldEngine(j.get("vm"), seed=i), base, pps))
        heapq.heappush(heap, (0.0, 0, i))
    out = []
    while heap:
        t, k, i = heapq.heappop(heap)
        if t >= seconds:
            continue
        fe, base, pps = engines[i]
        out.append((t, fe.apply(base)))
        # The k-th packet at k/pps, not a running sum: a stream of n pps sends exactly
        # n packets a second.
        heapq.heappush(heap, ((k + 1) / pps, k + 1, i))
    return out


def write_pcap(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, frame in frames:
            sec = int(t)
            usec = int(round((t - sec) * 1e6))
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile")
    ap.add_argument("out")
    ap.add_argument("--direction", type=int, default=0, choices=[0, 1])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--tunables", default="")
    args = ap.parse_args(argv)
    tunables = dict(kv.split("=", 1) for kv in args.tunables.split(",") if kv)
    frames = packets(args.profile, args.direction, args.seconds, tunables)
    write_pcap(args.out, frames)
    print(f"to_pcap: {len(frames)} packets to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
