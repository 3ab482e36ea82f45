#!/usr/bin/env bash
# Cross-checks of the startup numbers (issue 2), on this machine, as root:
#  1. bare launch->exit against `hyperfine -N` timing the agent directly, both pinned to the
#     same CPU as isobench's budget (the last CPU);
#  2. container launch->exit against `runc run` of an OCI bundle holding the same agent.
# Usage: scripts/startup-crosscheck.sh [RUNS]   (needs hyperfine, runc, python3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
BIN=target/release
cargo build --release --bins -q
CPU=$(( $(nproc) - 1 ))
OUT=$(mktemp -d /tmp/isobench-crosscheck.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
TASK='{"workload":{"kind":"noop"}}'

median() { python3 -c "import json,sys; r=json.load(open('$1')); print(*(f\"{x['command']}: median {x['median']*1e3:.3f} ms\" for x in r['results']), sep='\n')"; }
isob() { python3 -c "
import json; r=json.load(open('$1/results.json'))
for s in r['summaries']:
    ci = f\"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]\" if s.get('ci_low') is not None else f\"({s.get('ci_missing')})\"
    if s['metric']=='launch_to_exit_ms': print(f\"isobench {s['tier']}: launch_to_exit median {s['median']:.3f} ms {ci}\")"; }

echo "== bare vs hyperfine -N (CPU $CPU), alternating, 3 rounds (bare alone, as hyperfine runs it)"
for i in 1 2 3; do
  $BIN/isobench run scenarios/startup.toml --backends bare -n "$RUNS" --out "$OUT/run$i" -q
  ISOBENCH_TASK=$TASK taskset -c "$CPU" hyperfine -N --warmup 5 -r "$RUNS" --export-json "$OUT/hf$i.json" "$BIN/isobench-agent" >/dev/null
  isob "$OUT/run$i"
  median "$OUT/hf$i.json"
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
iso = [next(s["median"] for s in json.load(open(f"{out}/run{i}/results.json"))["summaries"] if s["tier"] == "bare" and s["metric"] == "launch_to_exit_ms") for i in (1, 2, 3)]
hf = [json.load(open(f"{out}/hf{i}.json"))["results"][0]["median"] * 1e3 for i in (1, 2, 3)]
print(f"bare launch_to_exit / hyperfine: {statistics.median(iso):.3f} / {statistics.median(hf):.3f} ms = {statistics.median(iso) / statistics.median(hf):.2f}")
PY

echo "== container, interleaved with bare, vs runc run"
$BIN/isobench run scenarios/startup.toml --backends bare,container -n "$RUNS" --out "$OUT/mixed" -q
isob "$OUT/mixed"
B=$OUT/bundle
mkdir -p "$B/rootfs"
for d in bin proc sys dev tmp etc; do mkdir -p "$B/rootfs/$d"; done
cp "$BIN/isobench-agent" "$B/rootfs/bin/"
for lib in $(ldd "$BIN/isobench-agent" | grep -o '/[^ ]*'); do mkdir -p "$B/rootfs$(dirname "$lib")"; cp "$lib" "$B/rootfs$lib"; done
(cd "$B" && runc spec)
python3 - "$B/config.json" "$TASK" <<'PY'
import json, sys
p, task = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/isobench-agent"]
c["process"]["env"] = ["PATH=/bin", "ISOBENCH_TASK=" + task]
c["hostname"] = "isobench"
ns = c["linux"]["namespaces"]
if not any(n["type"] == "cgroup" for n in ns):
    ns.append({"type": "cgroup"})
json.dump(c, open(p, "w"), indent=1)
PY
taskset -c "$CPU" hyperfine -N --warmup 3 -r "$RUNS" --export-json "$OUT/runc.json" "runc run --bundle $B isobench-crosscheck" >/dev/null
median "$OUT/runc.json"
