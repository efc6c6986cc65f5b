"""TRex STL profile: W-k8s, the offload benchmark's traffic on its 250-endpoint cluster.

The flows come from capo-bench, so this run, VPP's packet generator and the in-process
benchmarks see the same packets (tunables: see flows.py):

    capo-bench traffic --workload w-k8s --export bench/trex/exports/w-k8s
    start -f bench/trex/w_k8s.py -t window=1,size=imix --port 0
"""

from flows import FlowsProfile


class WK8s(FlowsProfile):
    WORKLOAD = "w-k8s"


def register():
    return WK8s()
