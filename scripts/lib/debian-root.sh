# Cached Debian roots for the host side of carbon-vm's tests and tools (sourced by scripts/gpu-root
# and scripts/llama-root), running commands in them, and resolving package versions (also for
# scripts/macos-check's root and scripts/guest-image's key).
#
# A root is built with mmdebstrap under $CARBON_VM_CACHE (default /var/cache/carbon-vm) as
# NAME-KEY, KEY hashing everything it is made from (the package versions apt resolves among it);
# a newer root supersedes older ones of the same NAME. Building needs root; `root_run` enters a
# root as root or as a user (bubblewrap).

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
    local dir opts mirror
    root_apt "$arch" "$sources" "$prefs"
    (
        flock 9 # one update of the same lists at a time (scripts/test builds roots side by side)
        root_apt_update
        local out
        out=$(apt-get "${opts[@]}" install --simulate --no-install-recommends "$@" 2>&1) ||
            { printf '%s\n' "$out" >&2; echo "apt cannot resolve: $*" >&2; exit 1; }
        printf '%s\n' "$out" | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1 \2/p' | sort
    ) 9>"$dir/lock"
}

# root_apt ARCH SOURCES PREFS: sets `dir` (the lists' directory for these sources, under
# $cache/apt) and `opts` (apt-get's options to use only it), for root_resolve and root_source.
root_apt() {
    local arch=$1 sources=$2 prefs=$3
    mirror=${CARBON_VM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    sources=${sources//MIRROR/$mirror}
    dir=$cache/apt/$(printf '%s\n' "$arch" "$sources" "$prefs" | root_key)
    mkdir -p "$dir/lists/partial" "$dir/state" "$dir/cache"
    printf '%s\n' "$sources" >"$dir/sources.list"
    printf '%s\n' "$prefs" >"$dir/preferences"
    : >"$dir/status" # nothing installed: the whole closure is listed
    opts=(-o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::Etc::Preferences="$dir/preferences" -o Dir::Etc::PreferencesParts=/dev/null
          -o Dir::State="$dir/state" -o Dir::State::Lists="$dir/lists"
          -o Dir::State::status="$dir/status" -o Dir::Cache="$dir/cache"
          -o APT::Architecture="$arch" -o APT::Architectures::="$arch"
          -o Debug::NoLocking=1 -o Acquire::Check-Valid-Until=false)
}

# root_apt_update: refreshes the lists root_apt chose (the caller holds their lock).
root_apt_update() {
    apt-get "${opts[@]}" update -qq --error-on=any >&2 ||
        { echo "cannot read the Debian archive's package lists ($mirror): see above" >&2; exit 1; }
}

# root_source SOURCES DEST PACKAGE=VERSION...: downloads those Debian source packages into DEST
# from SOURCES (deb-src lines) and unpacks each into DEST/PACKAGE (Debian's patches applied). apt
# checks each file against the signed Sources list, dpkg-source each tarball against the .dsc.
root_source() {
    local sources=$1 dest=$2
    shift 2
    local dir opts mirror
    root_apt "$(dpkg --print-architecture)" "$sources" ""
    (
        flock 9
        root_apt_update
        cd "$dest"
        # _apt cannot write to a root-only destination; what it fetches is checked all the same.
        apt-get "${opts[@]}" -o APT::Sandbox::User=root source --download-only -qq "$@" >&2
    ) 9>"$dir/lock"
    local p v
    for p in "$@"; do
        v=${p#*=}
        # The .dsc's name has no epoch.
        # No keyring holds the uploaders' keys: apt's check of the .dsc against the signed Sources
        # is what vouches for it, so gpgv's "no public key" is noise.
        (cd "$dest" && dpkg-source -x ./"${p%%=*}_${v#*:}.dsc" "${p%%=*}" 2>&1 >/dev/null |
            grep -v -e '^gpgv:' -e 'cannot verify inline signature' >&2 || true)
        [[ -d $dest/${p%%=*} ]] || { echo "root_source: cannot unpack ${p%%=*}" >&2; return 1; }
    done
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

# root_in_use DIR: whether a process runs inside DIR: its root directory is DIR (chroot), or
# DIR is the root mount of its mount namespace (root_run's bwrap).
root_in_use() {
    local r
    for r in /proc/[0-9]*/root; do
        [[ $(readlink "$r" 2>/dev/null) == "$1" ]] && return 0
    done
    # mountinfo's 4th field is the mount's root within its filesystem: DIR, or its tail when the
    # cache is a filesystem of its own.
    awk -v d="$1" '$5 == "/" && length($4) > 1 && substr(d, length(d) - length($4) + 1) == $4 \
        { found = 1; exit } END { exit !found }' /proc/[0-9]*/mountinfo 2>/dev/null
}

# root_current NAME: the root of NAME that root_build last made, if it is still there.
root_current() {
    local current=$cache/$1.current
    [[ -L $current && -d $current/ ]] && echo "$cache/$(readlink "$current")"
}

# root_mount_points ROOT: makes, inside ROOT, the mount points root_run needs for the repository
# and the cache (a user cannot make them in a root's directories). Needs root.
root_mount_points() {
    mkdir -p "$1$repo" "$1$cache"
}

# root_run ROOT CMD...: runs CMD inside ROOT, in the current directory, as whoever calls it (root
# or a user: bubblewrap enters ROOT by pivot_root, in a user namespace for a user). /proc, /sys,
# /dev, /tmp, $HOME, $XDG_RUNTIME_DIR, the repository, the cache, the current directory and $CARBON_VM_HOME
# are bound at their own paths, so paths mean the same inside and out; where ROOT lacks such a
# path, the nearest of its parents ROOT has is bound from the host instead (/home for a user's
# home). As root, the host's /etc/containers too: the Podman connection carbon-vm registers as root
# goes to /etc/containers/containers.conf, which must be the file the host's own podman reads.
# Nothing stays mounted once the last process inside (a VM) exits.
root_run() {
    local root=$1
    shift
    local want=("$repo" "$cache" "$PWD" /tmp) d at binds=()
    for d in "${HOME:-}" "${XDG_RUNTIME_DIR:-}" "${CARBON_VM_HOME:-}"; do
        [[ -n $d && -d $d ]] && want+=("$d")
    done
    # Only into a root with a podman of its own: binding the nearest parent instead would put the
    # host's whole /etc over the root's.
    ((EUID == 0)) && [[ -d /etc/containers && -d $root/etc/containers ]] && want+=(/etc/containers)
    readarray -t want < <(printf '%s\n' "${want[@]}" | sort -u)
    for d in "${want[@]}"; do
        at=$d
        while [[ ! -e $root$at ]]; do
            at=$(dirname "$at")
        done
        if [[ $at == / ]]; then
            ((EUID == 0)) || {
                echo "root_run: $root has no mount point for $d (run scripts/gpu-root path as root)" >&2
                return 1
            }
            mkdir -p "$root$d"
            at=$d
        fi
        binds+=("$at")
    done
    # Parents first; a folder under one already bound is there already.
    local args=(--bind "$root" / --dev-bind /dev /dev --bind /proc /proc --bind /sys /sys) prev=""
    readarray -t binds < <(printf '%s\n' "${binds[@]}" | sort -u)
    for d in "${binds[@]}"; do
        [[ -n $prev && $d == "$prev"/* ]] && continue
        args+=(--bind "$d" "$d")
        prev=$d
    done
    # A user the root's passwd does not name (ssh-keygen and podman ask who they run as) is added
    # to the copy of its passwd and group the command sees.
    local ids=()
    if ! grep -q "^[^:]*:[^:]*:$(id -u):" "$root/etc/passwd"; then
        ids=(--ro-bind-data 8 /etc/passwd --ro-bind-data 9 /etc/group)
    fi
    # The root's own programs first, not those of a PATH made for the host (pyenv and the like).
    exec bwrap "${args[@]}" "${ids[@]}" --chdir "$PWD" \
        --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -- "$@" \
        8< <(cat "$root/etc/passwd" && getent passwd "$(id -u)") \
        9< <(cat "$root/etc/group" && getent group "$(id -g)")
}
