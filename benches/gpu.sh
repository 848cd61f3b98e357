#!/usr/bin/env bash
# Benchmark: the project's Vulkan compute workload (carbon-vk-compute, a matrix product checked
# against the CPU) in a container of a --gpu machine through Venus, and directly on the host's own
# Vulkan device, in one run; prints both throughputs and their ratio (goal: Venus >= 0.9x host).
# Runs inside the trixie GPU host root (scripts/gpu-root), where the host device is lavapipe.
#   benches/gpu.sh [N] [ROUNDS]      matrix size (default 512), alternating rounds (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-512}
rounds=${2:-3}
cargo build --release --quiet --workspace
image=$(scripts/guest-image)
root=scripts/gpu-root
bin=$PWD/target/release/carbon-vm
work=$(mktemp -d /tmp/carbon-gpu-bench.XXXXXX) # /tmp is bound into the GPU root
export CARBON_VM_HOME=$work/home XDG_CONFIG_HOME=$work/xdg
trap '$root run "$bin" rm --force gbench >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

"$bin" -q image pull "$image" --sha256 "$(cat "$image.sha256")"
"$bin" -q create --gpu gbench --memory 2048 --disk-size 8
$root run "$bin" -q start gbench
mkdir "$work/ctx"
cp target/release/carbon-vk-compute "$work/ctx/"
printf 'FROM localhost/carbon-venus:latest\nCOPY carbon-vk-compute /usr/local/bin/\n' >"$work/ctx/Containerfile"
$root run podman -c gbench build -q -t localhost/carbon-vk-compute "$work/ctx" >/dev/null

args=(--n "$n" --reps 4 --rounds 3)
gflops() { sed -n 's/.*"gflops":\([0-9.e+-]*\).*/\1/p'; }
host=() venus=()
for ((i = 0; i < rounds; i++)); do
    host+=("$($root run target/release/carbon-vk-compute "${args[@]}" --driver DRIVER_ID_MESA_LLVMPIPE | gflops)")
    venus+=("$($root run podman -c gbench run --rm --device /dev/dri localhost/carbon-vk-compute \
        carbon-vk-compute "${args[@]}" --driver DRIVER_ID_MESA_VENUS | gflops)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
h=$(median "${host[@]}")
v=$(median "${venus[@]}")
echo "matrix ${n}x${n}, 4 dispatches per submission, best of 3 submissions, median of $rounds runs"
echo "host lavapipe, directly:          $h GFLOP/s   (runs: ${host[*]})"
echo "container through Venus:          $v GFLOP/s   (runs: ${venus[*]})"
awk -v v="$v" -v h="$h" 'BEGIN { r = v / h; printf "ratio Venus / host:               %.2fx (goal >= 0.9: %s)\n", r, (r >= 0.9 ? "met" : "NOT met") }'
