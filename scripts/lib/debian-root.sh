# Cached Debian roots for the host side of carbon-vm's tests and tools (sourced by scripts/gpu-root
# and scripts/llama-root), and running commands in them.
#
# A root is built with mmdebstrap under $CARBON_VM_CACHE (default /var/cache/carbon-vm) as
# NAME-KEY, KEY hashing everything it is made from; a newer root supersedes older ones of the same
# NAME. `root_run` enters it in a private mount namespace with /proc, /sys, /dev, /tmp, $HOME, the
# repository, the cache, the current directory and /etc/containers bound at their own paths, so
# paths (and Podman's connections) mean the same inside and out, and nothing stays mounted once
# the last process in it (a VM) exits. Needs root.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${CARBON_VM_CACHE:-/var/cache/carbon-vm}

# root_key: a key for what is on stdin (the root's inputs).
root_key() {
    sha256sum | cut -c1-16
}

# root_build ROOT SUITE PACKAGES [MMDEBSTRAP-ARGS...]: builds ROOT ($cache/NAME-KEY) unless it
# exists (it is renamed into place only once complete).
root_build() {
    local root=$1 suite=$2 packages=$3
    shift 3
    [[ -d $root ]] && return
    mkdir -p "$cache"
    local part=$root.part
    rm -rf "$part"
    echo "building the Debian $suite root $root (a few minutes)" >&2
    local mirror=${CARBON_VM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    mmdebstrap --quiet --variant=apt --include="$packages" "$@" "$suite" "$part" "$mirror" >&2
    mv "$part" "$root"
    local name=${root##*/}
    name=${name%-*}
    # Exactly NAME-KEY: another architecture's root (NAME-ARCH-KEY) is not superseded.
    find "$cache" -maxdepth 1 -regextype posix-extended -regex ".*/$name-[0-9a-f]{16}(\.part)?" \
        ! -name "${root##*/}" -exec rm -rf {} +
}

# root_run ROOT CMD...: runs CMD inside ROOT, in the current directory.
root_run() {
    local root=$1
    shift
    local binds=("$repo" "$cache" "$PWD")
    [[ -n ${HOME:-} && -d $HOME ]] && binds+=("$HOME")
    [[ -n ${CARBON_VM_HOME:-} && -d $CARBON_VM_HOME ]] && binds+=("$CARBON_VM_HOME")
    # The host's containers configuration: the Podman connection carbon-vm registers as root goes
    # to /etc/containers/containers.conf, which must be the file the host's own podman reads.
    [[ -d /etc/containers ]] && binds+=(/etc/containers)
    exec unshare --mount --propagation private -- bash -euo pipefail -c '
        root=$1; shift; n=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        mount --rbind /tmp "$root/tmp"
        for d in "${@:1:n}"; do
            mkdir -p "$root$d"
            mount --bind "$d" "$root$d"
        done
        shift "$n"
        # The root'"'"'s own programs first, not those of a PATH made for the host (pyenv and the like).
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            exec chroot "$root" /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$PWD" "$@"
    ' debian-root "$root" "${#binds[@]}" "${binds[@]}" "$@"
}
