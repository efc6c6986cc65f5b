"""What the TRex tests share: capo's binaries, a capo-agent process, and reading its
counters."""

import json
import os
import pathlib
import socket
import subprocess
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
TREX = HERE.parent
REPO = TREX.parents[1]


def capo_bin(name):
    """A binary from CAPO_BIN; skips (fails in CI) without it."""
    d = os.environ.get("CAPO_BIN")
    if not d:
        if os.environ.get("CI") == "true":
            pytest.fail("CAPO_BIN is not set (scripts/trex-check.sh sets it)")
        pytest.skip("CAPO_BIN is not set: no capo binaries to run")
    return str(pathlib.Path(d) / name)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(tmp, extra, source=None):
    """capo-agent with its API socket in `tmp`; policy from `source` (arguments),
    by default the seed's manifests on kind-worker2."""
    if source is None:
        source = ["--resources", str(REPO / "examples/seed"), "--node", "kind-worker2"]
    api = tmp / "agent.sock"
    log = open(tmp / "agent.log", "w")
    child = subprocess.Popen([capo_bin("capo-agent"), *source, "--api-socket", str(api), *extra],
                             stdout=subprocess.DEVNULL, stderr=log)
    return child, api


def agent_exited(child, tmp):
    """Fails (or skips, outside CI) when the agent exited: without DPDK support, or
    with the error its log gives."""
    if child.poll() is None:
        return
    log = (tmp / "agent.log").read_text()
    if "built without DPDK support" in log:
        if os.environ.get("CI") == "true":
            pytest.fail("CAPO_BIN's capo-agent was built without the dpdk feature")
        pytest.skip("capo-agent was built without the dpdk feature")
    pytest.fail(log)


def counters(api):
    """`capoctl counters --json`, or None while the agent is not answering."""
    out = subprocess.run([capo_bin("capoctl"), "--socket", str(api), "counters", "--json"],
                         capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def bytes_judged(c, select):
    """(allowed bytes, denied bytes) of the interfaces `select` picks."""
    rows = [i for i in c.get("interfaces", []) if select(i)]
    return sum(i["allowed_bytes"] for i in rows), sum(i["denied_bytes"] for i in rows)


def wait_for_packets(child, tmp, api, packets, select, limit=60):
    """Polls the agent's counters until the interfaces `select` picks have judged
    `packets` packets; returns (allowed, denied, counters)."""
    deadline = time.time() + limit
    while True:
        agent_exited(child, tmp)
        c = counters(api)
        if c is not None:
            rows = [i for i in c.get("interfaces", []) if select(i)]
            allowed = sum(i["allowed_packets"] for i in rows)
            denied = sum(i["denied_packets"] for i in rows)
            if allowed + denied >= packets:
                return allowed, denied, c
        assert time.time() < deadline, (tmp / "agent.log").read_text()
        time.sleep(0.2)


def reference_verdict(dport):
    """capoctl trace's verdict for ts1 -> ts2 on TCP `dport` under the seed's policy."""
    out = subprocess.run(
        [capo_bin("capoctl"), "--resources", str(REPO / "examples/seed"), "--node", "kind-worker2",
         "trace", "--from", "11.0.0.196", "--to", "11.0.0.67", "--proto", "tcp", "--dport", str(dport),
         "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)["verdict"]


def feed_felix(child, tmp, path, frames, limit=20):
    """Connects to the agent's Felix socket as Felix's driver would and writes the
    stream; the connection stays open (closing it is a Felix restart)."""
    deadline = time.time() + limit
    while True:
        agent_exited(child, tmp)
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            break
        except OSError:
            s.close()
            assert time.time() < deadline, f"no Felix socket at {path}"
            time.sleep(0.1)
    s.sendall(frames)
    return s


def w_seed_replay(tmp, rewrite=lambda frames: frames):
    """W-seed's direction 0 for one second (20 connections, 300 pps) written to
    `tmp/in.pcap` (after `rewrite`), with the reference's verdict of each frame by
    destination port: (pcap, frames, {port: verdict}, allowed, denied)."""
    import to_pcap
    from scapy.all import TCP, Ether

    frames = rewrite(to_pcap.packets(str(TREX / "w_seed.py"), 0, 1.0,
                                     {"connections": "20", "pps": "300"}))
    pcap = tmp / "in.pcap"
    to_pcap.write_pcap(pcap, frames)
    verdicts = {p: reference_verdict(p) for p in (5978, 5979)}
    allowed = sum(verdicts[Ether(f)[TCP].dport] == "allow" for _, f in frames)
    assert allowed and len(frames) - allowed, "both verdicts occur"
    return pcap, frames, verdicts, allowed, len(frames) - allowed
