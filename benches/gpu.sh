#!/usr/bin/env bash
# Benchmark: GPU work in a container of a --gpu machine through Venus against the same work
# directly on the host's own Vulkan device, in one run, rounds alternating; prints medians and
# ratios:
#   - the project's compute workload (carbon-vk-compute, a matrix product checked against the CPU;
#     goal: Venus >= 0.9x host), and the same container given the CDI device carbon-vm.dev/gpu=all
#     (carbon-vm's bundled Venus driver, docs/gpu.md) against the image's own Venus driver (goal:
#     >= 0.95x);
#   - llama.cpp's own benchmark (llama-bench of scripts/llama-root: prompt processing and
#     generation, tokens/s, same model, same threads; goal: prompt processing >= 0.85x host), the
#     model (scripts/llama-model.py: 8 layers, 512 wide, f32, random) and the root shared with the
#     machine as folders; three ways to the same device: directly on the host, through Venus, and
#     through the ggml device (`create --ggml`: ggml's RPC server on the host on that device;
#     goal: >= 0.90x host for prompt processing, >= 0.85x for generation).
# Runs inside the trixie GPU host root (scripts/gpu-root), where the host device is lavapipe.
#   benches/gpu.sh [N] [ROUNDS]      matrix size (default 512), alternating rounds (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-512}
rounds=${2:-3}
cargo build --locked --release --quiet --workspace
image=$(scripts/guest-image)
root=scripts/gpu-root
bin=$PWD/target/release/carbon-vm
work=$(mktemp -d /tmp/carbon-gpu-bench.XXXXXX) # /tmp is bound into the GPU root
export CARBON_VM_HOME=$work/home XDG_CONFIG_HOME=$work/xdg
trap '$root run "$bin" rm --force gbench >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

llama=$(scripts/llama-root path)
mkdir "$work/models"
scripts/llama-root run python3 /opt/carbon-llama/llama-model.py "$work/models/bench.gguf" \
    --embd 512 --layers 8 --ff 1536
"$bin" -q image pull "$image" --sha256 "$(cat "$image.sha256")"
# The ggml device's server computes on the host's Vulkan device, as llama.cpp does on the host.
export CARBON_VM_GGML_SERVER="$PWD/scripts/llama-root run env GGML_VK_VISIBLE_DEVICES=0 \
    /usr/libexec/$(uname -m)-linux-gnu/llama/bin/ggml-rpc-server -d Vulkan0"
"$bin" -q create --gpu --ggml gbench --memory 2048 --disk-size 8 \
    --volume "$llama:/opt/carbon-llama-root" --volume "$work/models:/models"
$root run "$bin" -q start gbench
mkdir "$work/ctx"
cp target/release/carbon-vk-compute "$work/ctx/"
printf 'FROM localhost/carbon-venus:latest\nCOPY carbon-vk-compute /usr/local/bin/\n' >"$work/ctx/Containerfile"
$root run podman -c gbench build -q -t localhost/carbon-vk-compute "$work/ctx" >/dev/null

args=(--n "$n" --reps 4 --rounds 3)
gflops() { sed -n 's/.*"gflops":\([0-9.e+-]*\).*/\1/p'; }
host=() venus=() bundle=()
for ((i = 0; i < rounds; i++)); do
    host+=("$($root run target/release/carbon-vk-compute "${args[@]}" --driver DRIVER_ID_MESA_LLVMPIPE | gflops)")
    venus+=("$($root run podman -c gbench run --rm --device /dev/dri localhost/carbon-vk-compute \
        carbon-vk-compute "${args[@]}" --driver DRIVER_ID_MESA_VENUS | gflops)")
    bundle+=("$($root run podman -c gbench run --rm --device carbon-vm.dev/gpu=all localhost/carbon-vk-compute \
        carbon-vk-compute "${args[@]}" --driver DRIVER_ID_MESA_VENUS | gflops)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
h=$(median "${host[@]}")
v=$(median "${venus[@]}")
echo "matrix ${n}x${n}, 4 dispatches per submission, best of 3 submissions, median of $rounds runs"
echo "host lavapipe, directly:          $h GFLOP/s   (runs: ${host[*]})"
echo "container through Venus:          $v GFLOP/s   (runs: ${venus[*]})"
awk -v v="$v" -v h="$h" 'BEGIN { r = v / h; printf "ratio Venus / host:               %.2fx (goal >= 0.9: %s)\n", r, (r >= 0.9 ? "met" : "NOT met") }'
b=$(median "${bundle[@]}")
echo "same, carbon-vm.dev/gpu=all:      $b GFLOP/s   (runs: ${bundle[*]})"
awk -v b="$b" -v v="$v" 'BEGIN { r = b / v; printf "ratio bundled / image'"'"'s Venus:   %.2fx (goal >= 0.95: %s)\n", r, (r >= 0.95 ? "met" : "NOT met") }'

# llama-bench: one prompt-processing and one generation test per run, 2 threads on both sides.
bench=(llama-bench -p 64 -n 16 -t 2 -r 2 -dev Vulkan0 -ngl 99 -o jsonl)
# avg_ts of the prompt (n_gen 0) and generation rows of llama-bench's JSON lines: "PP TG".
tokens_per_s() {
    sed -n 's/.*"n_gen": *\([0-9]*\).*"avg_ts": *\([0-9.e+-]*\).*/\1 \2/p' |
        awk '$1 == 0 { pp = $2 } $1 > 0 { tg = $2 } END { print pp, tg }'
}
# Through the ggml device: llama-bench's RPC device, the server llama-bench is pointed at.
rpc_bench=("${bench[@]/Vulkan0/RPC0}")
lhost=() lvenus=() lrpc=()
for ((i = 0; i < rounds; i++)); do
    lhost+=("$(GGML_VK_VISIBLE_DEVICES=0 scripts/llama-root run "${bench[@]}" -m "$work/models/bench.gguf" 2>/dev/null | tokens_per_s)")
    lvenus+=("$($root run podman -c gbench run --rm \
        -e VK_DRIVER_FILES=/usr/share/vulkan/icd.d/virtio_icd.json -e GGML_VK_VISIBLE_DEVICES=0 \
        -v /models:/models --rootfs /opt/carbon-llama-root:O "${bench[@]}" -m /models/bench.gguf \
        2>/dev/null | tokens_per_s)")
    # shellcheck disable=SC2016 # expanded in the container, where the device set it
    lrpc+=("$($root run podman -c gbench run --rm --device carbon-vm.dev/ggml=all \
        -v /models:/models --rootfs /opt/carbon-llama-root:O sh -c \
        'exec llama-bench --rpc "$CARBON_VM_GGML_RPC" "$@"' sh "${rpc_bench[@]:1}" -m /models/bench.gguf \
        2>/dev/null | tokens_per_s)")
done
col() { for r in "$@"; do echo "${r%% *}"; done; }
col2() { for r in "$@"; do echo "${r##* }"; done; }
hp=$(median $(col "${lhost[@]}")) vp=$(median $(col "${lvenus[@]}")) rp=$(median $(col "${lrpc[@]}"))
hg=$(median $(col2 "${lhost[@]}")) vg=$(median $(col2 "${lvenus[@]}")) rg=$(median $(col2 "${lrpc[@]}"))
echo "llama-bench, 8 layers x 512 f32 (27.7 M parameters), pp64 and tg16, 2 threads, median of $rounds runs"
echo "prompt processing: host $hp t/s, Venus $vp t/s, ggml device $rp t/s   (host: $(col "${lhost[@]}" | tr '\n' ' ')Venus: $(col "${lvenus[@]}" | tr '\n' ' ')ggml: $(col "${lrpc[@]}" | tr '\n' ' '))"
echo "generation:        host $hg t/s, Venus $vg t/s, ggml device $rg t/s   (host: $(col2 "${lhost[@]}" | tr '\n' ' ')Venus: $(col2 "${lvenus[@]}" | tr '\n' ' ')ggml: $(col2 "${lrpc[@]}" | tr '\n' ' '))"
awk -v v="$vp" -v h="$hp" 'BEGIN { r = v / h; printf "ratio Venus / host, prompt:       %.2fx (goal >= 0.85: %s)\n", r, (r >= 0.85 ? "met" : "NOT met") }'
awk -v v="$vg" -v h="$hg" 'BEGIN { printf "ratio Venus / host, generation:   %.2fx\n", v / h }'
awk -v v="$rp" -v h="$hp" 'BEGIN { r = v / h; printf "ratio ggml / host, prompt:        %.2fx (goal >= 0.90: %s)\n", r, (r >= 0.90 ? "met" : "NOT met") }'
awk -v v="$rg" -v h="$hg" 'BEGIN { r = v / h; printf "ratio ggml / host, generation:    %.2fx (goal >= 0.85: %s)\n", r, (r >= 0.85 ? "met" : "NOT met") }'
