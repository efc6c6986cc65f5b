"""The W-k8s and W-large profiles over capo-bench's traffic export: they build their
streams with TRex's client library, their packets equal the export's, and those packets
replayed through capo-agent (embedded dataplane on a DPDK net_pcap port, policy from the
export's Felix stream) are judged as the reference evaluator judges them."""

import collections
import csv
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lbr_trex_client  # noqa: E402,F401
import to_pcap  # noqa: E402
from rig import TREX, feed_felix, start_agent, wait_for_packets  # noqa: E402
from scapy.all import ICMP, IP, TCP, UDP, Ether, rdpcap  # noqa: E402
from trex.stl.api import STLProfile  # noqa: E402

W_K8S = str(TREX / "w_k8s.py")
W_LARGE = str(TREX / "w_large.py")


def export_packets(d, window, from_wire):
    """{header: packets} of one window and side, read straight from flows.csv."""
    want = collections.Counter()
    with open(d / "flows.csv", newline="") as f:
        for r in csv.DictReader(f):
            if int(r["window"]) == window and r["from_wire"] == str(int(from_wire)):
                l4 = (int(r["sport"]), int(r["dport"])) if r["proto"] in ("6", "17") else \
                    (int(r["icmp_type"]), int(r["icmp_code"]))
                flags = int(r["tcp_flags"]) if r["proto"] == "6" else 0
                want[(r["src"], r["dst"], int(r["proto"]), l4, flags)] += int(r["count"])
    return want


def pcap_packets(path):
    got = collections.Counter()
    for p in rdpcap(str(path)):
        ip = p[IP]
        if TCP in p:
            l4, flags = (p[TCP].sport, p[TCP].dport), int(p[TCP].flags)
        elif UDP in p:
            l4, flags = (p[UDP].sport, p[UDP].dport), 0
        else:
            l4, flags = (p[ICMP].type, p[ICMP].code), 0
        got[(ip.src, ip.dst, ip.proto, l4, flags)] += 1
    return got


@pytest.mark.parametrize("direction", [0, 1])
@pytest.mark.parametrize("tunables", [{}, {"size": "imix"}, {"window": "2"}, {"flows": "25"}])
def test_w_k8s_builds_its_streams_with_the_trex_client(k8s, direction, tunables):
    profile = STLProfile.load(W_K8S, direction=direction, export=str(k8s), **tunables)
    streams = profile.get_streams()
    window = int(tunables.get("window", 0))
    flows = export_packets(k8s, window, direction == 0)
    headers = set()
    for s in streams:
        pkt = Ether(s.get_pkt())
        headers.add((pkt[IP].src, pkt[IP].dst, pkt[IP].proto))
        assert s.to_json()["mode"]["rate"]["value"] > 0
    assert headers <= {(k[0], k[1], k[2]) for k in flows}
    if "flows" in tunables:
        assert len(streams) <= 25
    elif tunables.get("size") != "imix":
        assert len(streams) == len(flows)


def test_w_large_builds_its_streams_from_its_own_export(large):
    streams = STLProfile.load(W_LARGE, export=str(large)).get_streams()
    assert len(streams) == len(export_packets(large, 0, True))


def test_profiles_refuse_what_is_not_their_export(k8s, tmp_path):
    with pytest.raises(Exception, match="no capo-bench export"):
        STLProfile.load(W_K8S, export=str(tmp_path)).get_streams()
    with pytest.raises(Exception, match="not w-large"):
        STLProfile.load(W_LARGE, export=str(k8s)).get_streams()
    with pytest.raises(Exception, match="window 7"):
        STLProfile.load(W_K8S, export=str(k8s), window="7").get_streams()
    with pytest.raises(Exception, match="no flows"):
        STLProfile.load(W_K8S, export=str(k8s), ipv6="1").get_streams()


@pytest.mark.parametrize("direction,window,size", [(0, 0, "64"), (1, 1, "64"), (0, 2, "imix")])
def test_pcap_equals_the_export(k8s, tmp_path, direction, window, size):
    """One second at 100% is the window's packets, each exactly as often as capo-bench
    generated it; IMIX keeps the counts and gives the 7:4:1 size mix."""
    frames = to_pcap.packets(W_K8S, direction, 1.0,
                             {"export": str(k8s), "window": str(window), "size": size})
    out = tmp_path / "w_k8s.pcap"
    to_pcap.write_pcap(out, frames)
    assert pcap_packets(out) == export_packets(k8s, window, direction == 0)
    sizes = collections.Counter(len(f) + 4 for _, f in frames)
    if size == "imix":
        n = len(frames)
        assert abs(sizes[64] / n - 7 / 12) < 0.01 and abs(sizes[1518] / n - 1 / 12) < 0.01, sizes
    else:
        assert set(sizes) == {64}


def test_w_k8s_replayed_through_capo_on_a_dpdk_pcap_port(k8s, tmp_path):
    """Window 0's wire packets on a DPDK net_pcap port of capo-agent's embedded
    dataplane, with the cluster's policy from the export's Felix stream: the packets
    capo allows and denies, summed over the endpoints' interfaces, equal the reference
    evaluator's counts in the export."""
    frames = to_pcap.packets(W_K8S, 0, 1.0, {"export": str(k8s)})
    pcap = tmp_path / "in.pcap"
    to_pcap.write_pcap(pcap, frames)
    window = json.loads((k8s / "meta.json").read_text())["windows"][0]
    assert len(frames) == window["wire_packets"]
    assert window["wire_allowed"] and window["wire_denied"]
    felix = tmp_path / "felix.sock"
    port = f"dpdk:net_pcap0,rx_pcap={pcap},tx_pcap={tmp_path / 'out.pcap'}"
    child, api = start_agent(tmp_path, ["--nic", port], source=["--felix-socket", str(felix)])
    conn = None
    try:
        conn = feed_felix(child, tmp_path, felix, (k8s / "felix.frames").read_bytes())
        allowed, denied, c = wait_for_packets(child, tmp_path, api, len(frames),
                                              lambda i: i["direction"] == "ingress", limit=120)
        assert (allowed, denied) == (window["wire_allowed"], window["wire_denied"]), c
        # What capo allowed left the port: the tx pcap holds exactly those packets.
        child.kill()
        child.wait()
        assert len(rdpcap(str(tmp_path / "out.pcap"))) == allowed
    finally:
        if conn is not None:
            conn.close()
        child.kill()
        child.wait()
