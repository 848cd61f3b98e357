#!/usr/bin/env bash
# Benchmark: a bind-mounted file workload. One machine shares a host folder (virtio-fs); a
# container untars a source-like tree (2000 files of 1-8 KiB in 100 directories, 8 MiB) and then
# reads it all back (`cat` of every file), (a) in the shared folder through `-v` and (b) on the
# guest's own disk (the container's overlay), rounds alternating. Timed inside the container, so
# container start-up is not counted. Prints the medians and the ratios shared / guest disk.
# Usage: benches/volumes.sh [IMAGE.tar.zst]   (ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet
bin=$PWD/target/release/carbon-vm
image=${1:-$(scripts/guest-image)}
rounds=${ROUNDS:-3}
work=$(mktemp -d /var/tmp/carbon-volumes-bench.XXXXXX)
export CARBON_VM_HOME=$work/home CONTAINERS_CONF=$work/containers.conf
touch "$CONTAINERS_CONF"
cleanup() {
    "$bin" rm --force bench >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/shared" "$work/tree"
for d in $(seq 1 100); do
    mkdir "$work/tree/d$d"
    for f in $(seq 1 20); do
        head -c $(((d * 20 + f) % 8 * 1024 + 1024)) /dev/urandom >"$work/tree/d$d/f$f.c"
    done
done
tar -C "$work" -cf "$work/shared/tree.tar" tree
"$bin" image pull "$image" --sha256 "$(sha256sum "$image" | cut -d' ' -f1)" >/dev/null
"$bin" create bench --memory 2048 --disk-size 8 --volume "$work/shared:/work" >/dev/null
"$bin" start bench >/dev/null

# Seconds to untar into DIR, then to read every file back.
workload='
    t0=$(date +%s.%N); mkdir -p "$1"; tar -C "$1" -xf /work/tree.tar; sync
    t1=$(date +%s.%N); find "$1" -type f -exec cat {} + >/dev/null
    t2=$(date +%s.%N); rm -rf "$1"
    awk "BEGIN { print $t1 - $t0, $t2 - $t1 }"'
run() {
    podman -c bench run --rm -v /work:/work localhost/carbon-venus:latest sh -c "$workload" sh "$1"
}
for i in $(seq 1 "$rounds"); do
    run /work/x >>"$work/shared.txt"
    run /tmp/x >>"$work/disk.txt"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "rounds: $rounds (2000 files, 8 MiB), CARBON_VM_ACCEL=${CARBON_VM_ACCEL:-auto}"
for col in 1 2; do
    what=$([[ $col == 1 ]] && echo untar || echo "read back")
    s=$(cut -d' ' -f$col "$work/shared.txt" | median)
    g=$(cut -d' ' -f$col "$work/disk.txt" | median)
    printf '%-10s shared folder %7.2f s   guest disk %7.2f s   ratio %.2f\n' "$what" "$s" "$g" \
        "$(echo "$s $g" | awk '{print $1 / $2}')"
done
