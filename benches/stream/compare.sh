#!/usr/bin/env bash
# Memory bandwidth side by side: isobench-agent's `memory` workload against a C STREAM-equivalent
# loop (benches/stream/stream.c, gcc -O2): same 64 MiB arrays, same kernels, same timing rule
# (best of REPEATS), same CPU, alternating. See docs/accuracy.md, "Memory bandwidth against C
# STREAM".
#
# Usage: benches/stream/compare.sh     (ROUNDS=10 REPEATS=10 ARRAY_MIB=64 CPU=<last online CPU>;
#        AGENT=<path> compares that agent binary instead of building this tree's)
# Needs: gcc, python3; taskset (util-linux) to pin both to the same CPU (else they float).
# Bounds: 3 x ARRAY_MIB of memory per process, one process at a time; the C binary lives in a
#         temporary directory that is removed on exit.
#
# Each round runs the agent and the C program once each (the order flips every round, so drift
# in the machine's load does not favour one side); the table gives the medians over rounds and
# the median of the per-round ratios agent / C (the paired figure, less sensitive to load).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-10}
REPEATS=${REPEATS:-10}
ARRAY_MIB=${ARRAY_MIB:-64}
CPU=${CPU:-$(($(nproc) - 1))}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$ROUNDS$REPEATS$ARRAY_MIB" in *[!0-9]*) echo "ROUNDS, REPEATS, ARRAY_MIB: whole numbers" >&2; exit 2 ;; esac
[ "$ARRAY_MIB" -ge 16 ] && [ "$ARRAY_MIB" -le 1024 ] || { echo "ARRAY_MIB: 16..1024" >&2; exit 2; }
[ "$REPEATS" -ge 1 ] && [ "$REPEATS" -le 1000 ] || { echo "REPEATS: 1..1000" >&2; exit 2; }
for tool in gcc python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
done
PIN=()
if command -v taskset >/dev/null; then PIN=(taskset -c "$CPU"); fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/isobench-stream.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

gcc -O2 -DSTREAM_ARRAY_SIZE=$((ARRAY_MIB * 131072))L -o "$WORK/stream" benches/stream/stream.c
if [ -z "${AGENT:-}" ]; then
    echo "building the agent (release) ..." >&2
    cargo build --release --quiet --bin isobench-agent
    AGENT="$CARGO_TARGET_DIR/release/isobench-agent"
fi
[ -x "$AGENT" ] || { echo "AGENT=$AGENT is not an executable" >&2; exit 2; }
# The chase part of the workload is cut to almost nothing: only the bandwidth part is compared.
TASK="{\"workload\":{\"kind\":\"memory\",\"array_mib\":$ARRAY_MIB,\"repeats\":$REPEATS,\"chase_mib\":1,\"chase_accesses\":1000,\"time_budget_ms\":600000}}"

uptime >"$WORK/load-start"
for r in $(seq "$ROUNDS"); do
    echo "round $r/$ROUNDS ..." >&2
    agent() { ISOBENCH_TASK="$TASK" "${PIN[@]}" "$AGENT" | sed -n 's/^ISOBENCH-RESULT //p' >"$WORK/agent-$r.json"; }
    c() { "${PIN[@]}" "$WORK/stream" "$REPEATS" >"$WORK/c-$r.txt"; }
    if [ $((r % 2)) -eq 1 ]; then agent; c; else c; agent; fi
done
uptime >"$WORK/load-end"

python3 - "$WORK" "$ROUNDS" "$REPEATS" "$ARRAY_MIB" "${PIN[*]:-unpinned}" <<'EOF'
import json, statistics, sys
work, rounds, repeats, mib, pin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
agent = {"copy": [], "triad": []}
c = {"copy": [], "scale": [], "add": [], "triad": []}
for r in range(1, rounds + 1):
    m = {x["name"]: x["value"] for x in json.load(open(f"{work}/agent-{r}.json"))["metrics"]}
    if "copy_gb_per_s" not in m:
        sys.exit(f"round {r}: the agent reported no bandwidth: {m}")
    agent["copy"].append(m["copy_gb_per_s"])
    agent["triad"].append(m["triad_gb_per_s"])
    kv = dict(x.split("=") for x in open(f"{work}/c-{r}.txt").read().split())
    for k in c:
        c[k].append(float(kv[f"{k}_gb_per_s"]))
med = statistics.median
print(f"load: {open(work + '/load-start').read().strip()}  ->  {open(work + '/load-end').read().strip()}")
print(f"{rounds} alternations, best of {repeats} repetitions per process, {mib} MiB arrays, {pin}")
print()
print("| kernel | agent GB/s (median) | C gcc -O2 GB/s (median) | agent / C (median of per-round ratios) | agent per round | C per round |")
print("| --- | --- | --- | --- | --- | --- |")
for k in ("copy", "scale", "add", "triad"):
    cs = ", ".join(f"{x:.2f}" for x in c[k])
    if k in agent:
        ratios = [a / b for a, b in zip(agent[k], c[k])]
        as_ = ", ".join(f"{x:.2f}" for x in agent[k])
        print(f"| {k} | {med(agent[k]):.2f} | {med(c[k]):.2f} | {med(ratios):.3f} | {as_} | {cs} |")
    else:
        print(f"| {k} | (not measured by the agent) | {med(c[k]):.2f} | | | {cs} |")
EOF
