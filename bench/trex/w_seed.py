"""TRex STL profile: the seed's netcat test (W-seed).

ts1 (11.0.0.196) connects to ts2 (11.0.0.67) on TCP 5978, which the seed's
NetworkPolicy allows, and on 5979, which it refuses. Direction 0 is ts1 -> ts2: each
connection's SYN then data segments for 5978, and SYN retries for 5979; direction 1 is
ts2 -> ts1: the replies of the allowed connections (SYN-ACK, then ACKs). Source ports
vary per connection, so a run opens many connections, as repeated netcat tests would.

    start -f bench/trex/w_seed.py -t size=imix,ipv6=0,connections=1000
"""

import argparse

import lbr_trex_client  # noqa: F401  (puts TRex's `trex` package on the path)
from trex.stl.api import (
    IP,
    IPv6,
    STLFlowLatencyStats,  # noqa: F401  (for users who add latency streams)
    STLPktBuilder,
    STLScVmRaw,
    STLStream,
    STLTXCont,
    STLVmFixIpv4,
    STLVmFlowVar,
    STLVmWrFlowVar,
    TCP,
    Ether,
)

from flows import frame_sizes

TS1 = {"v4": "11.0.0.196", "v6": "fd20::58fd:b191:5c13:9cc3"}
TS2 = {"v4": "11.0.0.67", "v6": "fd20::1cc0:b1ac:ad47:e7c2"}
ALLOWED_PORT = 5978
REFUSED_PORT = 5979


def ip_layer(src, dst, v6):
    return IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)


def packet(src, dst, sport, dport, flags, frame_bytes, v6):
    """One frame of `frame_bytes` (FCS excluded, as TRex counts)."""
    pkt = Ether() / ip_layer(src, dst, v6) / TCP(sport=sport, dport=dport, flags=flags)
    pad = max(0, frame_bytes - 4 - len(pkt))
    return pkt / ("x" * pad)


def sport_vm(connections, v6, direction):
    """Varies the source (direction 0) or destination (replies) port per packet over
    `connections` ports: one connection per port."""
    offset = "TCP.sport" if direction == 0 else "TCP.dport"
    instructions = [
        STLVmFlowVar(name="port", min_value=20000, max_value=20000 + connections - 1,
                     size=2, op="inc"),
        STLVmWrFlowVar(fv_name="port", pkt_offset=offset),
    ]
    if not v6:
        instructions.append(STLVmFixIpv4(offset="IP"))
    return STLScVmRaw(instructions)


class WSeed:
    """The profile: `get_streams` as TRex calls it (tunables as argparse arguments)."""

    def parser(self):
        p = argparse.ArgumentParser(prog="w_seed", description=__doc__.split("\n\n")[0])
        p.add_argument("--size", default="64", help="frame bytes, or imix")
        p.add_argument("--ipv6", type=int, default=0, choices=[0, 1])
        p.add_argument("--connections", type=int, default=1000,
                       help="connections per port (distinct source ports)")
        p.add_argument("--pps", type=float, default=1000.0,
                       help="packets per second at 100%% (scale with -m)")
        p.add_argument("--refused-share", type=float, default=0.1,
                       help="share of direction 0's packets that are refused SYNs")
        return p

    def get_streams(self, tunables=[], direction=0, port_id=0, **kwargs):  # noqa: B006
        args = self.parser().parse_args(tunables)
        v6 = bool(args.ipv6)
        family = "v6" if v6 else "v4"
        if not 1 <= args.connections <= 60000:
            raise ValueError("connections: 1..60000")
        client, server = TS1[family], TS2[family]
        streams = []
        for frame_bytes, weight in frame_sizes(args.size):
            share = weight / sum(w for _, w in frame_sizes(args.size))
            if direction == 0:
                # Allowed: data segments (the SYN is one per connection: a small share).
                syn_share = 1.0 / 16
                allowed = (1 - args.refused_share) * share
                streams += [
                    self.stream(client, server, 20000, ALLOWED_PORT, "S", 64, v6,
                                args.pps * allowed * syn_share, args.connections, 0),
                    self.stream(client, server, 20000, ALLOWED_PORT, "PA", frame_bytes,
                                v6, args.pps * allowed * (1 - syn_share),
                                args.connections, 0),
                    # Refused: SYN retries only.
                    self.stream(client, server, 20000, REFUSED_PORT, "S", 64, v6,
                                args.pps * args.refused_share * share,
                                args.connections, 0),
                ]
            else:
                streams += [
                    self.stream(server, client, ALLOWED_PORT, 20000, "SA", 64, v6,
                                args.pps * share / 16, args.connections, 1),
                    self.stream(server, client, ALLOWED_PORT, 20000, "A", frame_bytes, v6,
                                args.pps * share * 15 / 16, args.connections, 1),
                ]
        return streams

    def stream(self, src, dst, sport, dport, flags, frame_bytes, v6, pps, connections,
               direction):
        base = packet(src, dst, sport, dport, flags, frame_bytes, v6)
        return STLStream(
            packet=STLPktBuilder(pkt=base, vm=sport_vm(connections, v6, direction)),
            mode=STLTXCont(pps=max(pps, 1.0)),
        )


def register():
    return WSeed()
