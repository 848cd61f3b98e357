#!/usr/bin/env bash
# Benchmark: boot to Ready. On one host, in alternating rounds, boots
#   (a) a minimal baseline: the image's own kernel with a tiny initramfs whose /init loads the
#       virtio console driver and writes `Ready x` to the virtio-serial port carbon.ready;
#   (b) the default image's first boot (a fresh machine);
#   (c) its warm boot (the same machine started again);
# on both boot paths: direct kernel boot (QEMU, what `carbon-vm start` does: (b) and (c) are
# `carbon-vm create/start/stop`) and EFI (OVMF -> systemd-boot on the disk's EFI partition, the
# krunkit path; raw QEMU with the disk of a `carbon-vm create`d machine, credentials and user
# networking).
# Every boot is timed from the moment the VM runs (QEMU's -daemonize returned) to the Ready line.
# Prints the medians, the ratios (goals: first/warm <= 1.2, warm/minimal <= 2.0), `start` as a
# user sees it (goal: Ready -> Podman API < 1 s), and for first and warm boots the guest's
# `systemd-analyze blame` top 10 and the critical chain to Ready (carbon-ready.service).
# Usage: benches/boot.sh [IMAGE.tar.zst]   (ROUNDS=3 by default; needs busybox-static, ovmf)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet
bin=$PWD/target/release/carbon-vm
image=${1:-$(scripts/guest-image)}
rounds=${ROUNDS:-3}
sha=$(sha256sum "$image" | cut -d' ' -f1)
busybox=/bin/busybox
[[ -x $busybox ]] && $busybox --list | grep -x insmod >/dev/null || {
    echo "needs a static busybox with insmod (apt-get install busybox-static)" >&2
    exit 1
}
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
[[ -f $ovmf_code ]] || { echo "needs OVMF (apt-get install ovmf)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/carbon-boot-bench.XXXXXX)
export CARBON_VM_HOME=$work/home XDG_CONFIG_HOME=$work/xdg CARBON_VM_ACCEL=${CARBON_VM_ACCEL:-tcg}
cleanup() {
    "$bin" rm --force bench >/dev/null 2>&1 || true
    [[ -s $work/qemu.pid ]] && kill "$(cat "$work/qemu.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
qemu_common=(-machine q35 -accel tcg,thread=single -cpu max -smp 2 -m 2048M -nodefaults -display none
             -device virtio-rng-pci -device virtio-serial-pci
             -chardev "pipe,id=ready,path=$work/ready" -device virtserialport,chardev=ready,name=carbon.ready
             -chardev "file,id=console,path=$work/console.log" -serial chardev:console
             -pidfile "$work/qemu.pid" -daemonize)

"$bin" -q image pull "$image" --sha256 "$sha"
field() { "$bin" --json image ls | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['$1'])"; }
kernel=$(field kernel) disk=$(field disk) kver=$(field kernel_version)

# The baseline's initramfs: busybox, the guest kernel's virtio_pci and virtio_console modules (and
# what they depend on), decompressed, read out of the image's root filesystem with debugfs.
root_at=$(($(partx -g -o START -n 2 "$disk") * 512))
rootfs() { debugfs -R "$1" "$disk?offset=$root_at" 2>/dev/null; }
mods=/usr/lib/modules/$kver
mkdir -p "$work/initramfs"/{bin,dev,sys,mod}
cp "$busybox" "$work/initramfs/bin/busybox"
rootfs "cat $mods/modules.dep" >"$work/modules.dep"
order=()
add_module() { # modules.dep lists a module's dependencies nearest first: load them last-first
    local line dep deps i
    line=$(grep -E "(^|/)$1\.ko[^:]*:" "$work/modules.dep") || return 0 # built into the kernel
    read -ra deps <<<"${line#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_module "$(basename "${deps[i]%%.ko*}")"; done
    [[ " ${order[*]} " == *" ${line%%:*} "* ]] || order+=("${line%%:*}")
}
add_module virtio_pci
add_module virtio_console
: >"$work/initramfs/mod/order"
for m in "${order[@]}"; do
    name=$(basename "${m%%.ko*}")
    rootfs "dump $mods/$m $work/$name.ko.in"
    case $m in
    *.xz) xz -dc "$work/$name.ko.in" ;;
    *.zst) zstd -qdc "$work/$name.ko.in" ;;
    *) cat "$work/$name.ko.in" ;;
    esac >"$work/initramfs/mod/$name.ko"
    echo "$name" >>"$work/initramfs/mod/order"
done
cat >"$work/initramfs/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t sysfs sys /sys
while read -r m; do /bin/busybox insmod "/mod/$m.ko"; done </mod/order
# The port's name arrives from the device after the driver bound: wait for it to show.
until port=$(/bin/busybox grep -lx carbon.ready /sys/class/virtio-ports/*/name 2>/dev/null); do :; done
port=${port%/name}
echo "Ready x" >"/dev/${port##*/}"
exec /bin/busybox sleep 3600
EOF
chmod +x "$work/initramfs/init"
(cd "$work/initramfs" && find . | $busybox cpio -o -H newc 2>/dev/null) >"$work/minimal.cpio"

# The EFI baseline's disk: the image's disk with the minimal initramfs in place of the initrd on
# its EFI partition (the kernel runs /init from it and never mounts the root).
cp --sparse=always "$disk" "$work/minimal-efi.raw"
esp_at=$(($(partx -g -o START -n 1 "$disk") * 512))
MTOOLS_SKIP_CHECK=1 mcopy -o -i "$work/minimal-efi.raw@@$esp_at" "$work/minimal.cpio" ::/initrd.img

mkfifo "$work/ready.in" "$work/ready.out"
# boot LABEL QEMU-ARGS...: starts QEMU, waits for the Ready line, kills QEMU; appends the seconds
# from "VM running" to Ready to $work/LABEL.
boot() {
    local label=$1 t0 t1 line
    shift
    qemu-system-x86_64 "${qemu_common[@]}" "$@"
    t0=$(now)
    # One open of the pipe for every line: the guest's early `Key ...` comes before Ready.
    while read -r -t 600 line && [[ $line != Ready* ]]; do :; done <"$work/ready.out"
    t1=$(now)
    [[ $line == Ready* ]] || { echo "$label: no Ready (got '$line')" >&2; exit 1; }
    echo "$t1 - $t0" | bc -l >>"$work/$label"
}
# stop_qemu CMD...: runs CMD (which makes QEMU exit) and waits for the daemonized QEMU (not our
# child, so no `wait`) to be gone; QEMU removes its pidfile when it exits.
stop_qemu() {
    local pid
    pid=$(cat "$work/qemu.pid")
    "$@" || true
    tail --pid="$pid" -f /dev/null
}

# carbon-vm's own start, split by its log: VMM running -> guest ready -> Podman API answers.
ts() { python3 -c "import sys,datetime; print(datetime.datetime.fromisoformat(sys.argv[1].replace('Z','+00:00')).timestamp())" \
    "$(grep "$1" "$work/start.log" | head -1 | cut -d' ' -f1)"; }
cv_start() {
    local label=$1 s e v r p
    s=$(now)
    CARBON_VM_LOG=machine=info "$bin" -q start bench 2>"$work/start.log"
    e=$(now)
    v=$(ts "vmm running") r=$(ts "guest ready") p=$(ts "podman api answers")
    echo "$r - $v" | bc -l >>"$work/$label"
    echo "$p - $r" | bc -l >>"$work/$label-api"
    echo "$e - $s" | bc -l >>"$work/$label-start"
}
blame() { # blame LABEL SSH...: the boot's summary and blame top 10, once boot has finished
    { echo "--- $1"; "${@:2}" 'systemctl is-system-running --wait >/dev/null; systemd-analyze; systemd-analyze blame | head -n 10; systemd-analyze critical-chain --no-pager carbon-ready.service | tail -n +3'; } \
        >>"$work/blame" 2>&1 || true
}

# EFI: each VM its own variable store; the disk is the first boot option (not the NIC's PXE).
efi_args() { # NAME DISK [DRIVE-OPTIONS]: sets efi
    cp "$ovmf_vars" "$work/vars-$1.fd"
    efi=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code"
         -drive "if=pflash,format=raw,unit=1,file=$work/vars-$1.fd"
         -drive "file=$2,if=none,id=disk,format=raw${3:+,$3}" -device virtio-blk-pci,drive=disk,bootindex=0)
}

ssh-keygen -q -t ed25519 -N "" -f "$work/id" -C bench
pubkey=$(cat "$work/id.pub")
efi_ssh=(ssh -i "$work/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=error)
for ((i = 1; i <= rounds; i++)); do
    echo "round $i/$rounds" >&2
    # Direct kernel boot.
    boot direct-minimal -kernel "$kernel" -initrd "$work/minimal.cpio" -append "console=ttyS0"
    stop_qemu kill "$(cat "$work/qemu.pid")"
    "$bin" -q create bench --image "$sha" --cpus 2 --memory 2048 --disk-size 8
    cv_start direct-first
    ((i == 1)) && blame "direct first boot" "$bin" ssh bench --
    "$bin" -q stop bench
    cv_start direct-warm
    ((i == 1)) && blame "direct warm boot" "$bin" ssh bench --
    "$bin" -q rm --force bench

    # EFI.
    efi_args minimal "$work/minimal-efi.raw" snapshot=on
    boot efi-minimal "${efi[@]}"
    stop_qemu kill "$(cat "$work/qemu.pid")"
    # A machine's disk as `create` makes it (grown to 8 GiB, its root partition with it).
    "$bin" -q create bench --image "$sha" --disk-size 8
    mv "$CARBON_VM_HOME/machines/bench/disk.raw" "$work/machine.raw"
    "$bin" -q rm --force bench
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    efi_args machine "$work/machine.raw"
    machine=("${efi[@]}"
             # QEMU's user network laid out as gvproxy's, whose addresses the guest sets itself.
             -netdev "user,id=net,net=192.168.127.0/24,host=192.168.127.1,hostfwd=tcp:127.0.0.1:$port-192.168.127.2:22"
             -device virtio-net-pci,netdev=net,mac=5a:94:ef:e4:0c:ee,romfile=
             -smbios "type=11,value=io.systemd.credential:ssh.authorized_keys.root=$pubkey"
             -smbios "type=11,value=io.systemd.credential:system.hostname=bench")
    # As `carbon-vm start` asks a new machine's guest, and only it, to grow its root.
    grow=(-smbios "type=11,value=io.systemd.credential:carbon.grow-root=1")
    for label in efi-first efi-warm; do
        boot "$label" "${machine[@]}" ${grow[@]+"${grow[@]}"}
        grow=()
        ((i == 1)) && blame "EFI ${label#efi-} boot" "${efi_ssh[@]}" -p "$port" root@127.0.0.1
        stop_qemu "${efi_ssh[@]}" -p "$port" root@127.0.0.1 systemctl poweroff
    done
    rm -f "$work/machine.raw"
done

median() { sort -n "$work/$1" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "boot to Ready, medians of $rounds rounds (seconds from the VM running to the Ready line):"
for path in direct efi; do
    awk -v p="$path" -v a="$(median "$path-minimal")" -v b="$(median "$path-first")" -v c="$(median "$path-warm")" 'BEGIN {
        printf "%-6s  minimal %6.2f   first %6.2f   warm %6.2f   first/warm %.2f (goal <= 1.2)   warm/minimal %.2f (goal <= 2.0)\n",
            p, a, b, c, b / c, c / a }'
done
awk -v f="$(median direct-first-start)" -v fa="$(median direct-first-api)" \
    -v w="$(median direct-warm-start)" -v wa="$(median direct-warm-api)" 'BEGIN {
    printf "carbon-vm start (whole command):  first boot %6.2f s (Ready -> Podman API %.2f s)   warm %6.2f s (Ready -> Podman API %.2f s; goal < 1 s)\n",
        f, fa, w, wa }'
echo "all runs:"
for f in direct-minimal direct-first direct-warm efi-minimal efi-first efi-warm; do
    printf '  %-15s %s\n' "$f" "$(tr '\n' ' ' <"$work/$f")"
done
cat "$work/blame"
