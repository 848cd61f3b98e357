# Cached Debian roots for the host side of carbon-vm's tests and tools (sourced by scripts/gpu-root
# and scripts/llama-root), running commands in them, and resolving package versions (also for
# scripts/macos-check's root and scripts/guest-image's key).
#
# A root is built with mmdebstrap under $CARBON_VM_CACHE (default /var/cache/carbon-vm) as
# NAME-KEY, KEY hashing everything it is made from (the package versions apt resolves among it);
# a newer root supersedes older ones of the same NAME. `root_run` enters it in a private mount namespace with /proc, /sys, /dev, /tmp, $HOME, the
# repository, the cache, the current directory and /etc/containers bound at their own paths, so
# paths (and Podman's connections) mean the same inside and out, and nothing stays mounted once
# the last process in it (a VM) exits. Needs root.

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${CARBON_VM_CACHE:-/var/cache/carbon-vm}

# root_key: a key for what is on stdin (the root's inputs).
root_key() {
    sha256sum | cut -c1-16
}

# root_resolve ARCH SOURCES PREFERENCES PACKAGE...: prints "NAME VERSION", sorted, for every
# package apt would install today for PACKAGE... (dependencies included) from SOURCES (lines of a
# sources.list; "MIRROR" stands for $CARBON_VM_DEBIAN_MIRROR or deb.debian.org) with PREFERENCES
# (an apt_preferences text, or empty). Roots are keyed by this, not by package names, so a warm
# machine and a cold one build from the same versions: when the archive moves, the key moves and
# the root is rebuilt. The package lists are kept under $cache/apt (one directory per set of
# sources) so that a refresh downloads only what changed. A Release file past its Valid-Until date
# is accepted (sid's is valid for a week; a mirror or snapshot a little older is still signed, and
# the signature is checked as always): what is built is named by the versions, not by the day.
root_resolve() {
    local arch=$1 sources=$2 prefs=$3
    shift 3
    local mirror=${CARBON_VM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    sources=${sources//MIRROR/$mirror}
    local dir
    dir=$cache/apt/$(printf '%s\n' "$arch" "$sources" "$prefs" | root_key)
    mkdir -p "$dir/lists/partial" "$dir/state" "$dir/cache"
    printf '%s\n' "$sources" >"$dir/sources.list"
    printf '%s\n' "$prefs" >"$dir/preferences"
    : >"$dir/status" # nothing installed: the whole closure is listed
    local opts=(-o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o Dir::Etc::Preferences="$dir/preferences" -o Dir::Etc::PreferencesParts=/dev/null
                -o Dir::State="$dir/state" -o Dir::State::Lists="$dir/lists"
                -o Dir::State::status="$dir/status" -o Dir::Cache="$dir/cache"
                -o APT::Architecture="$arch" -o APT::Architectures::="$arch"
                -o Debug::NoLocking=1 -o Acquire::Check-Valid-Until=false)
    (
        flock 9 # one update of the same lists at a time (scripts/test builds roots side by side)
        apt-get "${opts[@]}" update -qq --error-on=any >&2 ||
            { echo "cannot read the Debian archive's package lists ($mirror): see above" >&2; exit 1; }
        local out
        out=$(apt-get "${opts[@]}" install --simulate --no-install-recommends "$@" 2>&1) ||
            { printf '%s\n' "$out" >&2; echo "apt cannot resolve: $*" >&2; exit 1; }
        printf '%s\n' "$out" | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1 \2/p' | sort
    ) 9>"$dir/lock"
}

# root_pins VERSIONS PACKAGE...: "PACKAGE=VERSION,..." for the named packages, from a resolution
# (root_resolve's output), so that mmdebstrap installs exactly what the key was made from.
root_pins() {
    local versions=$1 p v pins=()
    shift
    for p in "$@"; do
        v=$(awk -v p="$p" '$1 == p { print $2 }' <<<"$versions")
        [[ -n $v ]] || { echo "root_pins: $p is not in the resolution" >&2; return 1; }
        pins+=("$p=$v")
    done
    (IFS=,; echo "${pins[*]}")
}

# root_build ROOT SUITE SOURCES PREFS VERSIONS INCLUDE [MMDEBSTRAP-ARGS...]: builds ROOT
# ($cache/NAME-KEY) unless it exists (it is renamed into place only once complete), from SOURCES
# with PREFS (as root_resolve takes them; PREFS stays in the root's apt configuration) installing
# INCLUDE (mmdebstrap's --include: root_pins of VERSIONS), and records VERSIONS (root_resolve's
# output, what KEY was made from) in ROOT/etc/carbon-vm/versions.
root_build() {
    local root=$1 suite=$2 sources=$3 prefs=$4 versions=$5 include=$6
    shift 6
    if [[ -d $root ]]; then
        root_mark_current "$root"
        return
    fi
    mkdir -p "$cache"
    local part=$root.part inputs=$root.inputs
    rm -rf "$part" "$inputs"
    mkdir -p "$inputs"
    printf '%s\n' "$prefs" >"$inputs/carbon-vm.pref"
    printf '%s\n' "$versions" >"$inputs/versions"
    echo "building the Debian $suite root $root (a few minutes)" >&2
    local mirror=${CARBON_VM_DEBIAN_MIRROR:-http://deb.debian.org/debian} lines
    readarray -t lines <<<"${sources//MIRROR/$mirror}"
    # Hooks of the extract variant are extract hooks (mmdebstrap runs no customize hook then).
    local last=--customize-hook
    [[ " $* " == *" --variant=extract "* ]] && last=--extract-hook
    mmdebstrap --quiet --variant=apt --include="$include" --aptopt='Acquire::Check-Valid-Until "false"' \
        --setup-hook='mkdir -p "$1/etc/apt/preferences.d" "$1/etc/carbon-vm"' \
        --setup-hook="copy-in $inputs/carbon-vm.pref /etc/apt/preferences.d" \
        "$last=copy-in $inputs/versions /etc/carbon-vm" \
        "$@" "$suite" "$part" "${lines[@]}" >&2
    rm -rf "$inputs"
    mv "$part" "$root"
    local name=${root##*/}
    name=${name%-*}
    # Exactly NAME-KEY: another architecture's root (NAME-ARCH-KEY) is not superseded, nor is one
    # a process still runs in (a machine's QEMU): a later build removes it.
    local old
    while read -r old; do
        root_in_use "$old" || rm -rf "$old"
    done < <(find "$cache" -maxdepth 1 -regextype posix-extended \
        -regex ".*/$name-[0-9a-f]{16}(\.part|\.inputs)?" ! -name "${root##*/}")
    root_mark_current "$root"
}

# root_mark_current ROOT: ROOT ($cache/NAME-KEY) is NAME's root until the next build (root_current).
root_mark_current() {
    local name=${1##*/}
    ln -sfn "${1##*/}" "$cache/${name%-*}.current"
}

# root_in_use DIR: whether a process runs inside DIR (its root directory is DIR).
root_in_use() {
    local r
    for r in /proc/[0-9]*/root; do
        [[ $(readlink "$r" 2>/dev/null) == "$1" ]] && return 0
    done
    return 1
}

# root_current NAME: the root of NAME that root_build last made, if it is still there.
root_current() {
    local current=$cache/$1.current
    [[ -L $current && -d $current/ ]] && echo "$cache/$(readlink "$current")"
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
