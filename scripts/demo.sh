#!/usr/bin/env bash
# The seed's scenario on the agent's embedded defaults: the software dataplane with a
# simulated mlx5 NIC in front, policy from examples/seed, the netcat test's packets
# injected through the API, then the views, the counters and the offload split.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --quiet --release --locked -p capo-agent --bins
bin=target/release
run=$(mktemp -d)
sock="$run/agent.sock"
"$bin/capo-agent" --resources examples/seed --node kind-worker2 --ifindex tun3=11 \
    --nic sim:mlx5 --enable-inject --api-socket "$sock" 2>"$run/agent.log" &
agent=$!
trap 'kill $agent 2>/dev/null; wait $agent 2>/dev/null; rm -rf "$run"' EXIT
for _ in $(seq 100); do
    "$bin/capoctl" --socket "$sock" generations >/dev/null 2>&1 && break
    sleep 0.1
done
ctl() { echo "\$ capoctl $*"; "$bin/capoctl" --socket "$sock" "$@"; echo; }

echo "== capo-agent: seed scenario, embedded dataplane + simulated mlx5 NIC =="
echo
ctl show capo interfaces
ctl show capo ipsets
ctl show capo policies verbose
ctl show capo rules
echo "== the netcat test: ts1 -> ts2 =="
echo
for port in 5978 5979; do
    ctl trace --from 11.0.0.196 --to 11.0.0.67 --proto tcp --dport "$port"
done
# First packets: software decides, and the planner learns the hot flow.
ctl inject --interface tun3 --direction ingress --from 11.0.0.196 --to 11.0.0.67 --proto tcp --sport 40000 --dport 5978 --count 1
ctl inject --interface tun3 --direction ingress --from 11.0.0.196 --to 11.0.0.67 --proto tcp --sport 40001 --dport 5979 --count 1
# More connections: now the NIC decides them.
ctl inject --interface tun3 --direction ingress --from 11.0.0.196 --to 11.0.0.67 --proto tcp --sport 40002 --dport 5978 --count 20
ctl inject --interface tun3 --direction ingress --from 11.0.0.196 --to 11.0.0.67 --proto tcp --sport 40003 --dport 5979 --count 20
ctl trace --from 11.0.0.196 --to 11.0.0.67 --proto tcp --dport 5978
ctl counters
ctl offload
ctl generations
