"""The profiles' packets replayed through VPP's packet generator with capo's plugin
enforcing: frames enter on pg0, VPP routes each to its endpoint's interface (pg1...),
where capo's output node applies the endpoint's ingress policy. The packets capo
allows and denies equal the reference's counts: capoctl trace for W-seed, the export's
reference verdicts for W-k8s (policy from the export's Felix stream).

Needs CAPO_VPP (scripts/vpp-setup.sh) and CAPO_BIN; skips, saying why, without them.
"""

import csv
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import lbr_trex_client  # noqa: E402,F401
import to_pcap  # noqa: E402
from rig import TREX, bytes_judged, feed_felix, start_agent, w_seed_replay, wait_for_packets  # noqa: E402
from scapy.all import TCP, Ether  # noqa: E402
from vpp import PG0_MAC, Vpp, vpp_root  # noqa: E402

W_K8S = str(TREX / "w_k8s.py")
ETHERNET = 14


def to_pg0(frames):
    """The frames addressed to pg0 (TRex would write its port's next hop)."""
    mac = bytes.fromhex(PG0_MAC.replace(":", ""))
    return [(t, mac + f[6:]) for t, f in frames]


def wait_policed(vpp, names, limit=60):
    deadline = time.time() + limit
    while True:
        view = vpp.ctl("show capo interfaces")
        if all(f"[{n} sw_if_index=" in view for n in names):
            return
        assert time.time() < deadline, f"capo does not police {names}: {view}"
        time.sleep(0.2)


def tx_packets(vpp, interface):
    """What VPP transmitted on `interface` (0 if it sent nothing)."""
    for line in vpp.ctl(f"show interface {interface}").splitlines():
        words = line.split()
        if "tx" in words and "packets" in words:
            return int(words[words.index("packets") + 1])
    return 0


def test_w_seed_replayed_through_vpp_with_capo(tmp_path):
    vpp_root()
    pcap, frames, verdicts, want_allowed, want_denied = w_seed_replay(tmp_path, to_pg0)
    vpp = Vpp(tmp_path / "vpp")
    child = None
    try:
        vpp.wire()
        ts2 = vpp.endpoint(1, "11.0.0.67")
        # The seed's ts2 is `tun3`; here its interface is VPP's pg1.
        child, api = start_agent(tmp_path, [f"--dataplane=vpp:{vpp.capo_socket}",
                                            "--bind", f"tun3={ts2}"])
        wait_policed(vpp, [ts2])
        vpp.replay(pcap, len(frames))
        on_ts2 = lambda i: i["interface"] == ts2 and i["direction"] == "ingress"  # noqa: E731
        allowed, denied, c = wait_for_packets(child, tmp_path, api, len(frames), on_ts2)
        assert (allowed, denied) == (want_allowed, want_denied), c
        # Bytes as VPP's IP output arc holds the packets: from the IP header on.
        ip_bytes = [(len(f) - ETHERNET, verdicts[Ether(f)[TCP].dport]) for _, f in frames]
        allowed_bytes = sum(n for n, v in ip_bytes if v == "allow")
        denied_bytes = sum(n for n, v in ip_bytes if v != "allow")
        assert bytes_judged(c, on_ts2) == (allowed_bytes, denied_bytes), c
        assert tx_packets(vpp, ts2) == want_allowed
    finally:
        if child is not None:
            child.kill()
            child.wait()
        vpp.stop()


def test_w_k8s_replayed_through_vpp_with_capo(k8s, tmp_path):
    vpp_root()
    frames = to_pg0(to_pcap.packets(W_K8S, 0, 1.0, {"export": str(k8s)}))
    pcap = tmp_path / "in.pcap"
    to_pcap.write_pcap(pcap, frames)
    window = json.loads((k8s / "meta.json").read_text())["windows"][0]
    assert len(frames) == window["wire_packets"]
    # Each endpoint the window's packets go to gets an interface of its own.
    with open(k8s / "endpoints.csv", newline="") as f:
        by_address = {r["addresses"].split("/")[0]: r["interface"] for r in csv.DictReader(f)}
    destinations = sorted({Ether(f)["IP"].dst for _, f in frames})
    vpp = Vpp(tmp_path / "vpp")
    child = conn = None
    try:
        vpp.wire()
        binds, names = [], []
        for k, dst in enumerate(destinations, start=1):
            name = vpp.endpoint(k, dst)
            binds += ["--bind", f"{by_address[dst]}={name}"]
            names.append(name)
        felix = tmp_path / "felix.sock"
        child, api = start_agent(tmp_path, [f"--dataplane=vpp:{vpp.capo_socket}", *binds],
                                 source=["--felix-socket", str(felix)])
        conn = feed_felix(child, tmp_path, felix, (k8s / "felix.frames").read_bytes())
        wait_policed(vpp, names)
        vpp.replay(pcap, len(frames))
        allowed, denied, c = wait_for_packets(child, tmp_path, api, len(frames),
                                              lambda i: i["direction"] == "ingress", limit=120)
        assert (allowed, denied) == (window["wire_allowed"], window["wire_denied"]), c
        assert sum(tx_packets(vpp, n) for n in names) == allowed
    finally:
        if conn is not None:
            conn.close()
        if child is not None:
            child.kill()
            child.wait()
        vpp.stop()
