#!/usr/bin/env bash
# Accuracy side-by-side on the bare machine: isobench-agent's fs, net and memory numbers next to
# fio, iperf3, sockperf, mbw and sysbench run with the same parameters. See docs/accuracy.md.
#
# Usage: scripts/accuracy.sh            (ROUNDS=5 DATA_DIR=/tmp by default)
# Needs:  apt-get install -y fio iperf3 sockperf mbw sysbench   (python3 for the table)
# Bounds: every run is capped (fs: 256 MiB files; net: 3 s per tool, 127.0.0.1 only; memory:
#         3 x 64 MiB arrays); all files live in one directory that is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DATA_DIR=${DATA_DIR:-/tmp}
NET_SECONDS=${NET_SECONDS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/isobench-accuracy.XXXXXX")
WORK="$DATA_DIR/isobench-accuracy-$$"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in fio iperf3 sockperf mbw sysbench python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y $tool" >&2; exit 1; }
done
mkdir -p "$WORK"
uptime >"$OUT/load-start.txt"

echo "building the agent (release) ..." >&2
cargo build --release --quiet --bin isobench-agent
AGENT="$CARGO_TARGET_DIR/release/isobench-agent"

agent() { # agent TASK_JSON -> the RESULT line's JSON
    ISOBENCH_TASK="$1" "$AGENT" | sed -n 's/^ISOBENCH-RESULT //p'
}

# --- fs: same sizes as the agent's defaults ---------------------------------------------------
FIO=(fio --output-format=json --ioengine=psync --filename="$WORK/fio.dat")
for r in $(seq "$ROUNDS"); do
    echo "fs round $r ..." >&2
    agent "{\"workload\":{\"kind\":\"fs\",\"dir\":\"$WORK\",\"file_mib\":256,\"seq_block_kib\":1024,\"rand_ops\":20000,\"meta_files\":2000,\"fsync_ops\":200,\"direct\":true}}" \
        >"$OUT/agent-fs-$r.json"
    # --fallocate=none: the agent writes a fresh, growing file; fio would otherwise preallocate
    # it, and writing into preallocated (unwritten) extents costs several times more here.
    "${FIO[@]}" --name=seqwrite --rw=write --bs=1M --size=256M --direct=1 --end_fsync=1 --fallocate=none \
        >"$OUT/fio-seqwrite-$r.json"
    "${FIO[@]}" --name=seqread --rw=read --bs=1M --size=256M --direct=1 >"$OUT/fio-seqread-$r.json"
    "${FIO[@]}" --name=randread --rw=randread --bs=4k --size=256M --number_ios=20000 --direct=1 >"$OUT/fio-randread-$r.json"
    "${FIO[@]}" --name=randwrite --rw=randwrite --bs=4k --size=256M --number_ios=20000 --direct=1 --end_fsync=1 >"$OUT/fio-randwrite-$r.json"
    rm -f "$WORK/fio.dat"
    fio --output-format=json --ioengine=psync --filename="$WORK/fio-sync.dat" \
        --name=fsync --rw=write --bs=4k --size=800k --fsync=1 --fallocate=none >"$OUT/fio-fsync-$r.json"
    rm -f "$WORK/fio-sync.dat"
done

# --- net: loopback only, same duration ----------------------------------------------------------
IPERF_PORT=${IPERF_PORT:-5399}
SOCKPERF_PORT=${SOCKPERF_PORT:-11399}
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)
sockperf sr --tcp -i 127.0.0.1 -p "$SOCKPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1
echo "building the net accuracy runner (release test) ..." >&2
cargo test --release --quiet --test workloads --no-run 2>/dev/null
for r in $(seq "$ROUNDS"); do
    echo "net round $r ..." >&2
    # Request/response 100 B each way (sockperf's messages are symmetric), back to back, for
    # NET_SECONDS; stream 128 KiB writes (iperf3's default length) for NET_SECONDS.
    ISOBENCH_ACCURACY_NET="{\"stream_duration_ms\":$((NET_SECONDS * 1000)),\"stream_block_kib\":128,\"rr_transactions\":100000000,\"rr_request_bytes\":100,\"rr_response_bytes\":100,\"time_budget_ms\":$((NET_SECONDS * 1000))}" \
        cargo test --release --quiet --test workloads -- --ignored --exact accuracy_net_run --nocapture 2>/dev/null \
        | sed -n 's/^ISOBENCH-RESULT //p' >"$OUT/agent-net-$r.json"
    iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$NET_SECONDS" -J >"$OUT/iperf3-$r.json"
    sockperf pp --tcp -i 127.0.0.1 -p "$SOCKPERF_PORT" -m 100 -t "$NET_SECONDS" --mps=max --full-rtt \
        >"$OUT/sockperf-$r.txt" 2>&1
done

# --- memory: 64 MiB arrays, as the agent's default ----------------------------------------------
for r in $(seq "$ROUNDS"); do
    echo "memory round $r ..." >&2
    agent '{"workload":{"kind":"memory","array_mib":64,"repeats":5,"chase_mib":256,"chase_accesses":10000000}}' \
        >"$OUT/agent-memory-$r.json"
    mbw -q -n 5 -t0 64 >"$OUT/mbw-memcpy-$r.txt"
    mbw -q -n 5 -t1 64 >"$OUT/mbw-dumb-$r.txt"
    sysbench memory --threads=1 --memory-block-size=64M --memory-total-size=8G --memory-oper=read run \
        >"$OUT/sysbench-read-$r.txt"
    sysbench memory --threads=1 --memory-block-size=64M --memory-total-size=8G --memory-oper=write run \
        >"$OUT/sysbench-write-$r.txt"
done

uptime >"$OUT/load-end.txt"
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])

def load(name):
    return [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, rounds + 1)]

def text(name):
    return [open(f"{out}/{name}-{r}.txt").read() for r in range(1, rounds + 1)]

def metric(reports, name):
    return [next(m["value"] for m in rep["metrics"] if m["name"] == name) for rep in reports]

def fio(name, f):
    return [f(j["jobs"][0]) for j in load(f"fio-{name}")]

def mbw_mib_s(texts):  # "3  Method: MEMCPY  Elapsed: ...  MiB: 64.0  Copy: 9876.5 MiB/s"
    # Best of the runs (STREAM's convention, and the agent's), not mbw's AVG line.
    return [max(float(v) for v in re.findall(r"^\d+\s.*Copy:\s*([\d.]+) MiB/s", t, re.M))
            for t in texts]

def sysbench_mib_s(texts):  # "8192.00 MiB transferred (9876.54 MiB/sec)"
    return [float(re.search(r"\(([\d.]+) MiB/sec\)", t).group(1)) for t in texts]

def sockperf_pct(texts, p):  # "---> percentile 50.000 =   23.456" (usec, full RTT)
    return [float(re.search(rf"percentile {p}\s*=\s*([\d.]+)", t).group(1)) for t in texts]

fs, net, mem = load("agent-fs"), load("agent-net"), load("agent-memory")
gbs = lambda mib_s: mib_s * 1.048576 / 1000  # MiB/s -> GB/s
rows = [
    ("fs seq write 1 MiB, direct, end fsync", "MB/s", metric(fs, "seq_write_mb_per_s"),
     fio("seqwrite", lambda j: j["write"]["bw_bytes"] / 1e6), "fio rw=write"),
    ("fs seq read 1 MiB, direct", "MB/s", metric(fs, "seq_read_mb_per_s"),
     fio("seqread", lambda j: j["read"]["bw_bytes"] / 1e6), "fio rw=read"),
    ("fs random read 4 KiB, direct, QD1", "IOPS", metric(fs, "rand_read_iops"),
     fio("randread", lambda j: j["read"]["iops"]), "fio rw=randread"),
    ("fs random write 4 KiB, direct, QD1, end fsync", "IOPS", metric(fs, "rand_write_iops"),
     fio("randwrite", lambda j: j["write"]["iops"]), "fio rw=randwrite"),
    ("fs fsync after 4 KiB write, p50", "us", metric(fs, "fsync_p50_us"),
     fio("fsync", lambda j: j["sync"]["lat_ns"]["percentile"]["50.000000"] / 1e3), "fio fsync=1 (sync lat)"),
    ("fs fsync after 4 KiB write, p99", "us", metric(fs, "fsync_p99_us"),
     fio("fsync", lambda j: j["sync"]["lat_ns"]["percentile"]["99.000000"] / 1e3), "fio fsync=1 (sync lat)"),
    ("net TCP stream, 1 connection, 128 KiB writes", "Gbit/s", metric(net, "stream_gbit_per_s"),
     [j["end"]["sum_received"]["bits_per_second"] / 1e9 for j in load("iperf3")], "iperf3 receiver"),
    ("net TCP request/response 100 B, RTT p50", "us", metric(net, "rr_latency_p50_us"),
     sockperf_pct(text("sockperf"), "50.000"), "sockperf pp --full-rtt"),
    ("net TCP request/response 100 B, RTT p99", "us", metric(net, "rr_latency_p99_us"),
     sockperf_pct(text("sockperf"), "99.000"), "sockperf pp --full-rtt"),
    ("memory copy 64 MiB (STREAM counting: read+write)", "GB/s", metric(mem, "copy_gb_per_s"),
     [2 * gbs(v) for v in mbw_mib_s(text("mbw-memcpy"))], "mbw -t0 (memcpy) x2"),
    ("memory copy 64 MiB (STREAM counting: read+write)", "GB/s", metric(mem, "copy_gb_per_s"),
     [2 * gbs(v) for v in mbw_mib_s(text("mbw-dumb"))], "mbw -t1 (b[i]=a[i]) x2"),
]
fmt = lambda v: f"{v:.4g}"
print(f"| measurement | unit | isobench (median of {rounds}) | reference (median) | ratio | reference tool | isobench runs | reference runs |")
print("|---|---|---|---|---|---|---|---|")
for what, unit, ours, ref, tool in rows:
    a, b = statistics.median(ours), statistics.median(ref)
    ratio = a / b if b else float("nan")
    print(f"| {what} | {unit} | {fmt(a)} | {fmt(b)} | {ratio:.2f} | {tool} | "
          f"{', '.join(map(fmt, ours))} | {', '.join(map(fmt, ref))} |")
extra = {
    "fs meta_ops_per_s (no reference)": metric(fs, "meta_ops_per_s"),
    "fs direct_io": metric(fs, "direct_io"),
    "net rr_transactions_per_s": metric(net, "rr_transactions_per_s"),
    "memory triad_gb_per_s": metric(mem, "triad_gb_per_s"),
    "memory latency_ns (no reference)": metric(mem, "latency_ns"),
    "sysbench memory read, 1 thread, 64 MiB blocks, GB/s (read-only kernel)":
        [gbs(v) for v in sysbench_mib_s(text("sysbench-read"))],
    "sysbench memory write, 1 thread, 64 MiB blocks, GB/s (write-only kernel)":
        [gbs(v) for v in sysbench_mib_s(text("sysbench-write"))],
}
print()
for k, v in extra.items():
    print(f"- {k}: {', '.join(map(fmt, v))}")
print(f"- load at start: {open(f'{out}/load-start.txt').read().strip()}")
print(f"- load at end: {open(f'{out}/load-end.txt').read().strip()}")
print(f"\nraw outputs: {out}")
PY
