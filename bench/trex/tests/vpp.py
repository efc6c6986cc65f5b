"""VPP 26.06 with capo's plugin for the replay tests: packet-generator interfaces
only (no namespaces, no NIC), started from CAPO_VPP (scripts/vpp-setup.sh unpacks it
and builds the plugin). Without it the tests skip and say why, or fail when
CAPO_VPP_REQUIRED=1 (CI)."""

import os
import pathlib
import subprocess
import time

import pytest

PG0_MAC = "02:00:00:00:00:02"


def vpp_root():
    """CAPO_VPP's directory, or skip (fail under CAPO_VPP_REQUIRED=1) saying why."""
    why = None
    root = os.environ.get("CAPO_VPP")
    if not root:
        why = ("CAPO_VPP is not set: run `scripts/vpp-setup.sh DIR` (unpacks VPP 26.06 "
               "and builds the plugin against it) and set CAPO_VPP=DIR")
    else:
        for f in ("vpp/bin/vpp", "vpp/bin/vppctl", "capo/libcapo_vpp_plugin.so"):
            if not (pathlib.Path(root) / f).exists():
                why = f"{root}/{f} is missing: run `scripts/vpp-setup.sh {root}`"
    if why:
        if os.environ.get("CAPO_VPP_REQUIRED") == "1":
            pytest.fail(f"the VPP replay cannot run and CAPO_VPP_REQUIRED=1: {why}")
        pytest.skip(f"needs a real VPP: {why}")
    return pathlib.Path(root)


class Vpp:
    """One VPP process whose run directory is `run_dir` (unique per test)."""

    def __init__(self, run_dir):
        self.root = vpp_root()
        self.run = pathlib.Path(run_dir)
        self.run.mkdir(parents=True, exist_ok=True)
        self.capo_socket = self.run / "capo.sock"
        rt = str(self.run)
        plugins = self.root / "vpp/lib/x86_64-linux-gnu/vpp_plugins"
        conf = (
            f"unix {{ nodaemon cli-listen {rt}/cli.sock log {rt}/vpp.log runtime-dir {rt} "
            f"poll-sleep-usec 100 }}\n"
            f"api-segment {{ prefix capo{os.getpid()}{self.run.name[-6:]} }}\n"
            f"socksvr {{ socket-name {rt}/api.sock }}\n"
            f"statseg {{ socket-name {rt}/stats.sock page-size 4k size 32m }}\n"
            f"memory {{ main-heap-size 1G main-heap-page-size 4k }}\n"
            f"buffers {{ buffers-per-numa 16384 page-size 4k }}\n"
            f"plugins {{ path {plugins}:{self.root / 'capo'} plugin dpdk_plugin.so {{ disable }} }}\n"
            f"capo {{ socket {rt}/capo.sock }}\n")
        (self.run / "startup.conf").write_text(conf)
        self.out = open(self.run / "vpp.out", "w")
        self.child = subprocess.Popen([str(self.root / "vpp/bin/vpp"), "-c",
                                       str(self.run / "startup.conf")],
                                      stdout=self.out, stderr=subprocess.STDOUT)
        self.wait(30, "VPP's CLI", lambda: "vpp" in (self.try_ctl("show version") or ""))
        self.wait(10, "capo's control socket", self.capo_socket.exists)

    def wait(self, limit, what, ready):
        deadline = time.time() + limit
        while not ready():
            if self.child.poll() is not None:
                pytest.fail(f"VPP exited: {(self.run / 'vpp.out').read_text()}")
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def try_ctl(self, cmd):
        if not (self.run / "cli.sock").exists():
            return None
        out = subprocess.run([str(self.root / "vpp/bin/vppctl"), "-s", str(self.run / "cli.sock"),
                              *cmd.split()], capture_output=True, text=True)
        return out.stdout.replace("\r\n", "\n") if out.returncode == 0 else None

    def ctl(self, cmd):
        out = self.try_ctl(cmd)
        assert out is not None, f"vppctl {cmd} failed"
        return out

    def wire(self):
        """pg0, where the replayed frames arrive (its MAC is the profiles' DST_MAC)."""
        self.ctl("create packet-generator interface pg0")
        self.ctl(f"set interface mac address pg0 {PG0_MAC}")
        self.ctl("set interface ip address pg0 192.0.2.1/24")
        self.ctl("set interface state pg0 up")

    def endpoint(self, k, address):
        """pg<k>: an endpoint's interface, with a route to `address` through it."""
        name = f"pg{k}"
        self.ctl(f"create packet-generator interface {name}")
        self.ctl(f"set interface unnumbered {name} use pg0")
        self.ctl(f"set interface state {name} up")
        self.ctl(f"ip route add {address}/32 via {name}")
        self.ctl(f"set ip neighbor {name} {address} 02:00:00:00:aa:{k % 256:02x}")
        return name

    def replay(self, pcap, packets):
        """Sends the pcap's `packets` frames into pg0 once."""
        self.ctl(f"packet-generator new name wire limit {packets} node ethernet-input "
                 f"interface pg0 pcap {pcap}")
        self.ctl("packet-generator enable-stream wire")

    def stop(self):
        self.child.kill()
        self.child.wait()
        self.out.close()
