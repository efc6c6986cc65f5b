#!/usr/bin/env bash
# The seed's scenario on capo: builds capoctl and runs its walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo run --quiet --release --locked -p capo-agent --bin capoctl -- demo
