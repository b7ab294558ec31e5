#!/bin/sh
# Runs every corral benchmark (issue #5) and collects the tables for docs/BENCHMARKS.md:
#
#   1. natively on this host (hybrid cgroups → corral's cgroup1 backend);
#   2. in the cgroup v2 test VM (`cargo xtask vm`, plain mode) → the cgroup2 backend;
#   3. in the systemd VM (`cargo xtask vm --systemd`) → launch-cli with systemd-run.
#
# Usage (root, from anywhere; the repository is found from this script's path):
#   bench/run-all.sh            # full counts: launch N=200, precision N=100
#   QUICK=1 bench/run-all.sh    # smoke test with small counts
# Knobs: RUNS, PRECISION_RUNS (native), VM_RUNS, VM_PRECISION_RUNS (in the VMs,
# where every process start costs 30-90 ms under TCG), VM_RUNEXEC_RUNS (runexec's
# measured starts in the systemd VM, ~5 s each under TCG; default 30), VM_TIMEOUT
# (seconds per VM), SKIP_NATIVE=1, SKIP_VM=1, SKIP_SYSTEMD=1.
# Output: target/bench/{native-cgroup1,vm-cgroup2,vm-systemd}/*.json|*.md and
# target/bench/tables.md (all tables, for pasting into docs/BENCHMARKS.md).
# Measure on a quiet machine: every figure is a ratio to a baseline of the same run,
# but p99s and the VM's absolute numbers suffer from other load.
set -eu
cd "$(dirname "$0")/.."

RUNS=${RUNS:-200}
PRECISION_RUNS=${PRECISION_RUNS:-100}
VM_RUNS=${VM_RUNS:-200}
VM_PRECISION_RUNS=${VM_PRECISION_RUNS:-100}
VM_RUNEXEC_RUNS=${VM_RUNEXEC_RUNS:-30}
VM_TIMEOUT=${VM_TIMEOUT:-7200}
ARGS=""
if [ "${QUICK:-0}" = 1 ]; then
    ARGS="--quick"
fi

bench/prepare-peers.sh
cargo build --release -p corral-cli -p corral-bench
cargo build -p xtask
B=target/release/corral-bench
X=target/debug/xtask

status=0
if [ "${SKIP_NATIVE:-0}" != 1 ]; then
    echo "== native (cgroup1) ==" >&2
    $B --out target/bench/native-cgroup1 --runs "$RUNS" --precision-runs "$PRECISION_RUNS" \
        $ARGS all || status=1
fi
if [ "${SKIP_VM:-0}" != 1 ]; then
    echo "== VM, plain (cgroup2) ==" >&2
    $X vm --timeout "$VM_TIMEOUT" -- $B --backend cgroup2 --out target/bench/vm-cgroup2 \
        --runs "$VM_RUNS" --precision-runs "$VM_PRECISION_RUNS" $ARGS all || status=1
fi
if [ "${SKIP_SYSTEMD:-0}" != 1 ]; then
    echo "== VM, systemd (cgroup2 + systemd-run) ==" >&2
    $X vm --systemd --timeout "$VM_TIMEOUT" -- $B --backend cgroup2 \
        --out target/bench/vm-systemd --runs "$VM_RUNS" --runexec-runs "$VM_RUNEXEC_RUNS" \
        $ARGS launch-cli || status=1
fi

{
    for d in native-cgroup1 vm-cgroup2 vm-systemd; do
        [ -d "target/bench/$d" ] || continue
        echo "### $d"
        echo
        for n in launch-lib launch-cli throughput precision footprint; do
            [ -f "target/bench/$d/$n.md" ] && cat "target/bench/$d/$n.md" && echo
        done
    done
} > target/bench/tables.md
echo "tables: target/bench/tables.md" >&2
exit $status
