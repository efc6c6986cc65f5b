"""TRex STL profile: W-large, the offload benchmark's traffic on the large cluster
(10,000 policies, 1,000,000 IP-set members).

The flows come from capo-bench, so this run, VPP's packet generator and the in-process
benchmarks see the same packets (tunables: see flows.py):

    capo-bench traffic --workload w-large --export bench/trex/exports/w-large
    start -f bench/trex/w_large.py -t flows=20000 --port 0
"""

from flows import FlowsProfile


class WLarge(FlowsProfile):
    WORKLOAD = "w-large"


def register():
    return WLarge()
