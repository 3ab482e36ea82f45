#!/usr/bin/env bash
# Soak check (issue 9): a long container run must leave the host as it found it, and the
# harness must not grow. Takes a leak census (links, netns, nft tables, isobench mounts, cgroup
# directories, isobench processes), runs N container launches while sampling the harness's fd
# count and RSS once a second, takes the census again and diffs it.
# Usage: scripts/soak.sh [LAUNCHES] [TIERS]     (as root; default 1000 container)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
TIERS=${2:-container}
BIN=target/release/isobench
cargo build --release --bins -q
WORK=$(mktemp -d /tmp/isobench-soak.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

census() {
  {
    echo "## links";   ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
    echo "## netns";   ip netns list | sort
    echo "## nft";     nft list tables 2>/dev/null | sort
    echo "## mounts";  grep -E 'isobench|isb' /proc/self/mountinfo | awk '{print $5}' | sort || true
    echo "## cgroups"; find /sys/fs/cgroup -maxdepth 2 -name 'isobench*' 2>/dev/null | sort
    echo "## procs";   pgrep -a -f 'isobench-agent|qemu-system|runsc|lxc-start' | awk '{print $2}' | sort || true
    echo "## ip_forward"; cat /proc/sys/net/ipv4/ip_forward
  }
}

census >"$WORK/before"
ISOBENCH_STATE_DIR="$WORK/state" "$BIN" run scenarios/startup.toml --backends "$TIERS" \
  -n "$N" --out "$WORK/run" -q &
PID=$!
echo "t_s fds rss_kib" >"$WORK/samples"
t=0
while kill -0 "$PID" 2>/dev/null; do
  if [ -d "/proc/$PID/fd" ]; then
    fds=$(ls "/proc/$PID/fd" 2>/dev/null | wc -l)
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
    echo "$t $fds $rss" >>"$WORK/samples"
  fi
  sleep 1
  t=$((t + 1))
done
wait "$PID"
census >"$WORK/after"

python3 - "$WORK/samples" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:] if l.strip()]
rows = [(int(t), int(f), int(r)) for t, f, r in rows if r != "0"]
if len(rows) < 4:
    print("too few samples to judge growth"); sys.exit(0)
q = len(rows) // 4
first, last = rows[q:2 * q], rows[-q:]
mean = lambda xs: sum(xs) / len(xs)
f1, f2 = mean([f for _, f, _ in first]), mean([f for _, f, _ in last])
r1, r2 = mean([r for _, _, r in first]), mean([r for _, _, r in last])
print(f"samples {len(rows)}: fds {f1:.1f} -> {f2:.1f} (max {max(f for _, f, _ in rows)}), "
      f"RSS {r1/1024:.1f} -> {r2/1024:.1f} MiB (second quarter -> last quarter)")
PY
if diff -u "$WORK/before" "$WORK/after"; then
  echo "census unchanged after $N launches of $TIERS"
else
  echo "census CHANGED (see diff above)" >&2
  exit 1
fi
