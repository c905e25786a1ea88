#!/usr/bin/env bash
# What the workers' seccomp filters cost per system call: the same
# write+read pairs on a pipe in a child without a filter and with each
# worker's filters (ipc/examples/seccomp_cost.rs). Multiply by the calls a
# message costs (docs/sandbox.md, "Cost") for the cost per message.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p tambo-ipc --example seccomp_cost -- "${CALLS:-2000000}"
