#!/usr/bin/env bash
# Benchmark: `carbon-vm image pull` of the default guest image (>= 1 GiB unpacked) from nginx on
# loopback, against the same bytes handled by
#   baseline: curl -o f && sha256sum f && tar -xf f
#   tar:      tar -xf f (already downloaded; no verification at all)
# and carbon-vm's peak RSS. Prints medians of ROUNDS runs and the ratios with their goals.
# Usage: benches/pull.sh [IMAGE.tar.zst]   (default: scripts/guest-image's cached build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
bin=target/release/carbon-vm
cargo build --locked --release --quiet
image=${1:-$(scripts/guest-image)}
sha=$(sha256sum "$image" | cut -d' ' -f1)

work=$(mktemp -d /var/tmp/carbon-bench.XXXXXX)
nginx_pid=""
cleanup() { [[ -n $nginx_pid ]] && kill "$nginx_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/www" "$work/nginx"
ln "$image" "$work/www/image.tar.zst" 2>/dev/null || cp "$image" "$work/www/image.tar.zst"
cat >"$work/nginx/nginx.conf" <<CONF
daemon off; master_process off; user root; worker_processes 1;
pid $work/nginx/pid; error_log $work/nginx/error.log;
events { worker_connections 64; }
http { access_log off; sendfile on; client_body_temp_path $work/nginx; proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$port; root $work/www; } }
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
nginx_pid=$!
url=http://127.0.0.1:$port/image.tar.zst
until curl -sfI "$url" >/dev/null; do kill -0 "$nginx_pid"; done

# Runs "$@" under GNU time; appends "seconds peak_kib" to the file named by $1.
timed() {
    local out=$1
    shift
    sync
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null
    cat "$work/t" >>"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for ((i = 0; i < rounds; i++)); do
    rm -rf "$work/home" "$work/x" "$work/f"
    timed "$work/pull" env CARBON_VM_HOME="$work/home" "$bin" --quiet image pull "$url" --sha256 "$sha"
    mkdir -p "$work/x"
    timed "$work/base" sh -c "curl -s -o '$work/f' '$url' && sha256sum '$work/f' && tar -xf '$work/f' -C '$work/x'"
    rm -rf "$work/x" && mkdir -p "$work/x"
    timed "$work/tar" tar -xf "$work/f" -C "$work/x"
done

unpacked=$(du -sb --apparent-size "$work/x" | cut -f1)
pull=$(cut -d' ' -f1 "$work/pull" | median)
base=$(cut -d' ' -f1 "$work/base" | median)
tar=$(cut -d' ' -f1 "$work/tar" | median)
rss=$(cut -d' ' -f2 "$work/pull" | sort -n | tail -1)
echo "image: $(du -h "$image" | cut -f1) compressed, $((unpacked / 1024 / 1024)) MiB unpacked; $rounds rounds, medians"
printf '%-44s %6.2f s\n' "carbon-vm image pull (verify + cache)" "$pull" \
    "baseline: curl && sha256sum && tar -xf" "$base" "tar -xf alone" "$tar"
awk -v p="$pull" -v b="$base" -v t="$tar" -v r="$rss" 'BEGIN {
    printf "ratio pull/baseline  %.2fx  (goal <= 0.60x)\n", p / b
    printf "ratio pull/tar       %.2fx  (goal <= 1.15x)\n", p / t
    printf "peak RSS of pull     %.1f MiB (goal < 64 MiB)\n", r / 1024 }'
