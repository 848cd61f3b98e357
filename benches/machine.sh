#!/usr/bin/env bash
# Benchmark: `carbon-vm create` with a warm image cache against `cp --sparse=always` of the same
# disk, and `carbon-vm start` split into carbon-vm's own overhead (before the VMM runs, and after
# the guest said Ready) and the guest's boot. Uses the default image (scripts/guest-image).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/carbon-vm
image=${1:-$(scripts/guest-image)}
work=$(mktemp -d /var/tmp/carbon-bench.XXXXXX)
export CARBON_VM_HOME=$work/home XDG_CONFIG_HOME=$work/xdg
trap '"$bin" rm --force bench >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

"$bin" -q image pull "$image" --sha256 "$(sha256sum "$image" | cut -d' ' -f1)"
disk=$("$bin" --json image ls | sed -n 's/.*"disk": "\(.*\)".*/\1/p' | head -1)
echo "image disk: $(du -h --apparent-size "$disk" | cut -f1) apparent, $(du -h "$disk" | cut -f1) allocated"

now() { date +%s.%N; }
sync; t0=$(now); cp --sparse=always "$disk" "$work/copy.raw"; sync; t1=$(now)
rm -f "$work/copy.raw"
sync; t2=$(now); "$bin" -q create bench --disk-size 20; sync; t3=$(now)

t4=$(now)
CARBON_VM_LOG=machine=info "$bin" -q start bench 2>"$work/start.log"
t5=$(now)
ts() { python3 -c "import sys,datetime; print(datetime.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00')).timestamp())" \
    "$(grep "$1" "$work/start.log" | head -1 | cut -d' ' -f1)"; }
vmm=$(ts "vmm running"); ready=$(ts "guest ready")
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v s="$t4" -v v="$vmm" -v r="$ready" -v e="$t5" 'BEGIN {
    printf "cp --sparse=always of the disk   %6.2f s\n", b - a
    printf "carbon-vm create (warm cache)    %6.2f s   ratio %.2fx (goal <= 0.10x)\n", d - c, (d - c) / (b - a)
    printf "start: carbon-vm before the VMM  %6.2f s\n", v - s
    printf "start: guest boot to Ready       %6.2f s\n", r - v
    printf "start: carbon-vm after Ready     %6.2f s\n", e - r
    printf "start: carbon-vm own overhead    %6.2f s   (goal < 0.30 s)\n", (v - s) + (e - r)
    printf "start: total                     %6.2f s\n", e - s }'
