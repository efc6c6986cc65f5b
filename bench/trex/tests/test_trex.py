"""capo's TRex tooling without a TRex server: the profiles load and build their streams
with TRex's own client library, their packets are written to pcap and replayed through
capo, and the NDR/PDR search is checked against a simulated DUT.

CAPO_BIN names the directory of capo's binaries (capo-agent built with the `dpdk`
feature for the replay); tests that need one skip, saying so, without it (CI sets it).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lbr_trex_client  # noqa: E402,F401
import ndr  # noqa: E402
import to_pcap  # noqa: E402
from scapy.all import IP, TCP, IPv6, Ether, rdpcap  # noqa: E402
from trex.stl.api import STLProfile  # noqa: E402
from rig import REPO, TREX, bytes_judged, capo_bin, free_port, start_agent, w_seed_replay, wait_for_packets  # noqa: E402

W_SEED = str(TREX / "w_seed.py")


@pytest.mark.parametrize("direction", [0, 1])
@pytest.mark.parametrize("tunables", [{}, {"size": "imix"}, {"ipv6": 1}, {"ipv6": 1, "size": "imix"}])
def test_w_seed_builds_its_streams_with_the_trex_client(direction, tunables):
    profile = STLProfile.load(W_SEED, direction=direction, **tunables)
    streams = profile.get_streams()
    assert streams
    for s in streams:
        pkt = Ether(s.get_pkt())
        ip = pkt[IPv6] if tunables.get("ipv6") else pkt[IP]
        assert ip.src in ("11.0.0.196", "11.0.0.67", "fd20::58fd:b191:5c13:9cc3", "fd20::1cc0:b1ac:ad47:e7c2")
        tcp = pkt[TCP]
        ports = {tcp.sport, tcp.dport}
        assert ports & {5978, 5979}, ports
        if direction == 1:
            assert tcp.sport == 5978, "replies come only from the allowed port"
    sizes = {len(s.get_pkt()) + 4 for s in streams}
    if tunables.get("size") == "imix":
        assert {594, 1518} <= sizes
    elif not tunables.get("ipv6"):
        assert sizes == {64}


def test_bad_tunables_are_refused():
    with pytest.raises(Exception):
        STLProfile.load(W_SEED, size="12")
    with pytest.raises(Exception):
        STLProfile.load(W_SEED, connections="0")


def test_pcap_holds_what_trex_would_send(tmp_path):
    frames = to_pcap.packets(W_SEED, 0, 1.0, {"connections": "50", "pps": "2000", "refused-share": "0.25"})
    out = tmp_path / "w_seed.pcap"
    to_pcap.write_pcap(out, frames)
    pkts = rdpcap(str(out))
    assert len(pkts) == len(frames) >= 1900
    sports = {p[TCP].sport for p in pkts}
    assert sports == set(range(20000, 20050)), "one connection per source port, all used"
    for p in pkts[:200]:
        # The field engine's checksum fix: scapy recomputes the same.
        got = p[IP].chksum
        del p[IP].chksum
        assert IP(bytes(p[IP])).chksum == got
    refused = sum(p[TCP].dport == 5979 for p in pkts) / len(pkts)
    assert 0.2 < refused < 0.3, refused
    times = [t for t, _ in frames]
    assert times == sorted(times)


def test_field_engine_wraps_and_rejects_what_it_cannot_run():
    fe = to_pcap.FieldEngine({"instructions": [
        {"type": "flow_var", "name": "p", "size": 2, "op": "inc", "init_value": 1, "min_value": 1, "max_value": 3, "step": 1},
        {"type": "write_flow_var", "name": "p", "pkt_offset": 0, "add_value": 0, "is_big_endian": True},
    ]})
    got = [int.from_bytes(fe.apply(b"\x00\x00")[:2], "big") for _ in range(5)]
    assert got == [1, 2, 3, 1, 2]
    with pytest.raises(ValueError):
        to_pcap.FieldEngine({"instructions": [{"type": "tuple_flow_var"}]})


class SimulatedDut:
    """A DUT that forwards up to `capacity` percent of line rate and drops the excess
    (plus `noise` loss at any rate)."""

    def __init__(self, capacity, noise=0.0, line_pps=10_000_000, seconds=10):
        self.capacity, self.noise, self.line, self.seconds = capacity, noise, line_pps, seconds
        self.rates = []

    def __call__(self, rate):
        self.rates.append(rate)
        tx = int(self.line * rate / 100 * self.seconds)
        delivered = min(rate, self.capacity) / rate
        rx = int(tx * delivered * (1 - self.noise))
        return ndr.Trial(rate, tx, rx, tx / self.seconds, {"nic_share": 0.5})


@pytest.mark.parametrize("capacity", [0.3, 7.5, 42.0, 99.9])
def test_ndr_is_found_within_precision(capacity):
    dut = SimulatedDut(capacity)
    r = ndr.search(dut, ndr.NDR_LOSS, precision=0.25)
    assert r.best is not None
    assert capacity - 0.25 <= r.best.rate_percent <= capacity
    assert len(dut.rates) <= 12


def test_pdr_tolerates_half_a_percent_and_is_at_least_ndr():
    dut = SimulatedDut(40.0, noise=0.003)
    ndr_r = ndr.search(dut, ndr.NDR_LOSS)
    pdr_r = ndr.search(dut, ndr.PDR_LOSS)
    assert ndr_r.best is None or ndr_r.best.rate_percent < 1  # noise: never loss-free
    assert pdr_r.best is not None and 39.0 <= pdr_r.best.rate_percent <= 40.0


def test_edges_line_rate_and_nothing_passes():
    assert len(ndr.search(SimulatedDut(100.0), ndr.NDR_LOSS).trials) == 1
    dead = ndr.search(SimulatedDut(0.01), ndr.NDR_LOSS)
    assert dead.best is None and len(dead.trials) == 2
    with pytest.raises(ValueError):
        ndr.search(SimulatedDut(1), 0, low=5, high=1)


def test_report_and_plot(tmp_path):
    runs = []
    for rules in [70, 700, 1400]:
        dut = SimulatedDut(100.0 / (rules / 70) ** 0.5)
        runs.append(ndr.report([ndr.search(dut, ndr.NDR_LOSS), ndr.search(dut, ndr.PDR_LOSS)],
                               {"rules": rules}))
    json.dumps(runs)  # serialisable as written to --json
    assert runs[0]["ndr"]["rate_percent"] > runs[2]["ndr"]["rate_percent"]
    out = tmp_path / "ndr.png"
    ndr.plot(runs, "rules", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trex_calls_reach_the_connection():
    """The runner drives TRex's client as a real run would, up to connecting: with no
    server listening, connect fails with TRex's own error."""
    from trex.common.trex_exceptions import TRexError
    from trex.stl.api import STLClient

    trials = ndr.TrexTrials("127.0.0.1", W_SEED, {}, 1.0, None)
    assert len(trials.profile.get_streams()) == 3
    trials.client = STLClient(server="127.0.0.1", sync_port=free_port(), async_port=free_port())
    with pytest.raises(TRexError):
        trials.connect()


def test_capo_counters_over_grpc(tmp_path):
    child, api = start_agent(tmp_path, [])
    try:
        deadline = time.time() + 20
        while not api.exists():
            assert time.time() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.1)
        counters = ndr.CapoCounters(f"unix://{api}", REPO / "proto")
        for _ in range(100):
            t = counters.totals()
            if t["generation"] >= 1:
                break
            time.sleep(0.1)
        assert t["generation"] >= 1
        assert set(t) >= {"nic_decided", "software_decided", "denied"}
        d = ndr.dut_delta(t, counters.totals())
        assert d["packets"] == 0 and d["nic_share"] == 0.0
    finally:
        child.kill()
        child.wait()


def test_w_seed_replayed_through_capo_on_a_dpdk_pcap_port(tmp_path):
    """The profile's packets (direction 0: ts1 -> ts2, arriving at ts2's interface) on
    a DPDK net_pcap port of capo-agent's embedded dataplane: the counts capo reports
    equal the reference evaluator's verdicts for the same packets."""
    pcap, frames, verdicts, want_allowed, want_denied = w_seed_replay(tmp_path)
    port = f"dpdk:net_pcap0,rx_pcap={pcap},tx_pcap={tmp_path / 'out.pcap'}"
    child, api = start_agent(tmp_path, ["--nic", port])
    try:
        tun3 = lambda i: i["interface"] == "tun3" and i["direction"] == "ingress"  # noqa: E731
        allowed, denied, c = wait_for_packets(child, tmp_path, api, len(frames), tun3)
        assert (allowed, denied) == (want_allowed, want_denied), c
        # Bytes as the port received them: whole frames.
        allowed_bytes = sum(len(f) for _, f in frames if verdicts[Ether(f)[TCP].dport] == "allow")
        total = sum(len(f) for _, f in frames)
        assert bytes_judged(c, tun3) == (allowed_bytes, total - allowed_bytes), c
    finally:
        child.kill()
        child.wait()
