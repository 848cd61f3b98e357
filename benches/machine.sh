#!/usr/bin/env bash
# Benchmark: `carbon-vm create` with a warm image cache against a plain sparse copy of the same
# disk (`cp --reflink=never --sparse=always`: cp would otherwise reflink too), on the filesystem
# of /var/tmp and, where mkfs.xfs and root allow, on an XFS loop mount
# (reflink: the copy-on-write clone create uses where it can); then `carbon-vm start` split into
# carbon-vm's own overhead (before the VMM runs, and after the guest's Podman API answers), the
# guest's boot to Ready and the wait for the guest's Podman API. Uses the default image.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet
bin=$PWD/target/release/carbon-vm
image=${1:-$(scripts/guest-image)}
sha=$(sha256sum "$image" | cut -d' ' -f1)
work=$(mktemp -d /var/tmp/carbon-bench.XXXXXX)
export XDG_CONFIG_HOME=$work/xdg
cleanup() {
    CARBON_VM_HOME=$work/home "$bin" rm --force bench >/dev/null 2>&1 || true
    mountpoint -q "$work/xfs" && umount "$work/xfs"
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }

# create_vs_cp HOME LABEL: pulls the image into HOME, then times a sparse copy of its disk and
# `create` of a machine from it (sync after each, so writeback is counted).
create_vs_cp() {
    local home=$1 label=$2 disk t0 t1 t2 t3
    CARBON_VM_HOME=$home "$bin" -q image pull "$image" --sha256 "$sha"
    disk=$(CARBON_VM_HOME=$home "$bin" --json image ls | jq -r '.[0].disk')
    sync; t0=$(now); cp --reflink=never --sparse=always "$disk" "$home/copy.raw"; sync; t1=$(now)
    rm -f "$home/copy.raw"
    sync; t2=$(now); CARBON_VM_HOME=$home "$bin" -q create bench --disk-size 20; sync; t3=$(now)
    awk -v l="$label" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" \
        -v sz="$(du -h --apparent-size "$disk" | cut -f1)" -v al="$(du -h "$disk" | cut -f1)" 'BEGIN {
        printf "%s: image disk %s apparent, %s allocated\n", l, sz, al
        printf "  cp --sparse=always (no reflink)  %6.2f s\n", b - a
        printf "  carbon-vm create (warm cache)    %6.2f s   ratio %.2fx (goal <= 0.10x)\n", d - c, (d - c) / (b - a) }'
}

create_vs_cp "$work/home" "$(df --output=fstype /var/tmp | tail -1) (/var/tmp)"
if command -v mkfs.xfs >/dev/null && [[ $(id -u) -eq 0 ]]; then
    mkdir "$work/xfs"
    truncate -s 8G "$work/xfs.img"
    mkfs.xfs -q -m reflink=1 "$work/xfs.img"
    mount -o loop "$work/xfs.img" "$work/xfs"
    create_vs_cp "$work/xfs/home" "xfs with reflink (loop mount)"
    CARBON_VM_HOME=$work/xfs/home "$bin" rm bench
else
    echo "xfs with reflink: skipped (needs mkfs.xfs from xfsprogs, and root for the loop mount)"
fi

export CARBON_VM_HOME=$work/home
t4=$(now)
CARBON_VM_LOG=machine=info "$bin" -q start bench 2>"$work/start.log"
t5=$(now)
ts() { python3 -c "import sys,datetime; print(datetime.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00')).timestamp())" \
    "$(grep "$1" "$work/start.log" | head -1 | cut -d' ' -f1)"; }
vmm=$(ts "vmm running"); ready=$(ts "guest ready"); api=$(ts "podman api answers")
awk -v s="$t4" -v v="$vmm" -v r="$ready" -v p="$api" -v e="$t5" 'BEGIN {
    printf "start (accel %s):\n", ENVIRON["CARBON_VM_ACCEL"] ? ENVIRON["CARBON_VM_ACCEL"] : "auto"
    printf "  carbon-vm before the VMM runs    %6.2f s\n", v - s
    printf "  guest boot to Ready              %6.2f s\n", r - v
    printf "  guest Podman API first answer    %6.2f s\n", p - r
    printf "  carbon-vm after the API answers  %6.2f s\n", e - p
    printf "  carbon-vm own overhead           %6.2f s   (goal < 0.30 s)\n", (v - s) + (e - p)
    printf "  total                            %6.2f s\n", e - s }'
