//! `image build`: the recipe for the default guest. Two mmdebstrap runs from Debian trixie (the
//! guest root and a small Venus container image that ships inside it), the initrd (initrd.rs),
//! then `pack`.

mod initrd;
mod oci_archive;

use crate::digest::Sha256Digest;
use crate::interrupt;
use crate::pack::{CONTAINER_DIR, PackError, PackOptions, pack};
use crate::progress::Progress;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const SUITE: &str = "trixie";

const GUEST_PACKAGES: &str = include_str!("../../../configs/guest/packages.txt");
const CONTAINER_PACKAGES: &str = include_str!("../../../configs/guest/container-packages.txt");
/// carbon's guest files: (path in the guest, mode, contents).
const GUEST_FILES: &[(&str, u32, &str)] = &[
    (
        "etc/fstab",
        0o644,
        include_str!("../../../configs/guest/files/etc/fstab"),
    ),
    (
        "etc/systemd/system/systemd-growfs-root.service.d/carbon-when-grown.conf",
        0o644,
        include_str!(
            "../../../configs/guest/files/etc/systemd/system/systemd-growfs-root.service.d/carbon-when-grown.conf"
        ),
    ),
    (
        "etc/systemd/system/carbon-ssh-hostkeys.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-ssh-hostkeys.service"),
    ),
    (
        "etc/systemd/system/carbon-coldplug.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-coldplug.service"),
    ),
    (
        "etc/systemd/system/podman.socket.d/carbon-early.conf",
        0o644,
        include_str!(
            "../../../configs/guest/files/etc/systemd/system/podman.socket.d/carbon-early.conf"
        ),
    ),
    (
        "etc/systemd/system/podman.service.d/carbon-early.conf",
        0o644,
        include_str!(
            "../../../configs/guest/files/etc/systemd/system/podman.service.d/carbon-early.conf"
        ),
    ),
    (
        "etc/systemd/system/ssh.service.d/carbon-early.conf",
        0o644,
        include_str!(
            "../../../configs/guest/files/etc/systemd/system/ssh.service.d/carbon-early.conf"
        ),
    ),
    (
        "etc/systemd/system/carbon-podman-tmpfiles.service",
        0o644,
        include_str!(
            "../../../configs/guest/files/etc/systemd/system/carbon-podman-tmpfiles.service"
        ),
    ),
    (
        "etc/ssh/sshd_config.d/30-carbon-root-key.conf",
        0o644,
        include_str!("../../../configs/guest/files/etc/ssh/sshd_config.d/30-carbon-root-key.conf"),
    ),
    (
        "etc/ssh/sshd_config.d/10-carbon-hostkey.conf",
        0o644,
        include_str!("../../../configs/guest/files/etc/ssh/sshd_config.d/10-carbon-hostkey.conf"),
    ),
    (
        "etc/systemd/system/carbon-ready.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-ready.service"),
    ),
    (
        "usr/lib/carbon-vm/ready",
        0o755,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/ready"),
    ),
    (
        "etc/udev/rules.d/70-carbon-render.rules",
        0o644,
        include_str!("../../../configs/guest/files/etc/udev/rules.d/70-carbon-render.rules"),
    ),
    (
        "etc/systemd/system/carbon-gpu-devices.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-gpu-devices.service"),
    ),
    (
        "etc/modprobe.d/carbon-no-fbdev.conf",
        0o644,
        include_str!("../../../configs/guest/files/etc/modprobe.d/carbon-no-fbdev.conf"),
    ),
    (
        "usr/lib/carbon-vm/gpu-devices",
        0o755,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/gpu-devices"),
    ),
    (
        "etc/systemd/system/carbon-ggml-device.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-ggml-device.service"),
    ),
    (
        "usr/lib/carbon-vm/ggml-device",
        0o755,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/ggml-device"),
    ),
    (
        "usr/lib/carbon-vm/ggml-relay",
        0o755,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/ggml-relay"),
    ),
    (
        "etc/ssh/sshd_config.d/20-carbon-ggml.conf",
        0o644,
        include_str!("../../../configs/guest/files/etc/ssh/sshd_config.d/20-carbon-ggml.conf"),
    ),
    (
        "etc/containers/podman-machine",
        0o644,
        include_str!("../../../configs/guest/files/etc/containers/podman-machine"),
    ),
    (
        "etc/systemd/system/carbon-network.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-network.service"),
    ),
    (
        "usr/lib/carbon-vm/network",
        0o755,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/network"),
    ),
    (
        "etc/resolv.conf",
        0o644,
        include_str!("../../../configs/guest/files/etc/resolv.conf"),
    ),
    (
        "etc/hosts",
        0o644,
        include_str!("../../../configs/guest/files/etc/hosts"),
    ),
    (
        "etc/systemd/system/carbon-forwarder.socket",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-forwarder.socket"),
    ),
    (
        "etc/systemd/system/carbon-forwarder@.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-forwarder@.service"),
    ),
    (
        "usr/lib/carbon-vm/forwarder",
        0o755,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/forwarder"),
    ),
    (
        "usr/lib/sysusers.d/carbon-vm.conf",
        0o644,
        include_str!("../../../configs/guest/files/usr/lib/sysusers.d/carbon-vm.conf"),
    ),
    (
        "etc/systemd/system/carbon-walls.service",
        0o644,
        include_str!("../../../configs/guest/files/etc/systemd/system/carbon-walls.service"),
    ),
    (
        "usr/lib/carbon-vm/walls",
        0o755,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/walls"),
    ),
    (
        "usr/lib/carbon-vm/walls.nft",
        0o644,
        include_str!("../../../configs/guest/files/usr/lib/carbon-vm/walls.nft"),
    ),
];
const ENABLE_UNITS: &str = "carbon-walls.service carbon-network.service ssh.service \
    podman.socket carbon-forwarder.socket carbon-ssh-hostkeys.service \
    carbon-gpu-devices.service carbon-ggml-device.service carbon-ready.service \
    carbon-coldplug.service";
/// Units a machine never needs: periodic maintenance of a disk and package state that a machine
/// rebuilt from a new image replaces anyway (e2scrub, fstrim, apt and dpkg timers); Debian's
/// first-boot `ssh-keygen -A` (carbon-ssh-hostkeys makes the one key sshd uses; RSA alone takes
/// seconds under TCG); module loads for what a machine has not (device mapper, loop, configfs,
/// EFI pstore), loads on use (drm with virtio_gpu, fuse on opening /dev/fuse) or is not asked
/// for (modules-load.d is empty); what configures networkd from the kernel command line and udev
/// from credentials (neither is used: carbon-network.service); logins on the consoles (a
/// machine's root has no password: `carbon-vm ssh` is the way in); udev's coldplug before
/// sysinit.target (carbon-coldplug.service runs it after Ready); the kernel's debug and trace
/// filesystems, huge pages and a tmpfs of its own for /run/lock (tmpfiles makes the directory),
/// which nothing in a machine uses (each mount is a process at boot); the remount of what fstab
/// lists (the root is not listed: the initrd mounted it as it must be); the list of static device
/// nodes made from the running kernel's modules at each boot and the first of the two tmpfiles runs
/// over /dev (the recipe writes that list for the image's kernel into tmpfiles.d, and groups exist
/// before the first boot: one run makes the nodes with their owners, on the way to the host
/// folders' mounts, which come after local-fs-pre.target).
const MASK_UNITS: &str = "kmod-static-nodes.service systemd-tmpfiles-setup-dev-early.service \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer sshd-keygen.service modprobe@dm_mod.service modprobe@loop.service \
    modprobe@configfs.service modprobe@efi_pstore.service modprobe@drm.service \
    modprobe@fuse.service systemd-modules-load.service systemd-network-generator.service \
    systemd-udev-load-credentials.service serial-getty@ttyS0.service serial-getty@hvc0.service \
    systemd-udev-trigger.service sys-kernel-debug.mount sys-kernel-tracing.mount \
    dev-hugepages.mount run-lock.mount systemd-remount-fs.service";
/// Units that wait for Ready (an `After=carbon-ready.service` drop-in each): nothing Ready promises
/// needs them, and under TCG each is seconds of CPU that Ready's units would wait behind. udev and
/// its coldplug (carbon-coldplug.service): the initrd and carbon-gpu-devices load the drivers that
/// matter, devtmpfs makes the nodes, and the kernel's events wait in udev's socket. logind: an SSH
/// login starts it through D-Bus when it needs it. journald: what units and the kernel log waits
/// in its sockets and the kernel's buffer until it starts (carbon-ready.service fails after two
/// minutes without Podman's answer, and runs again, so that the journal does not wait for a Ready
/// that does not come). The journal's flush to disk, the boot's own tmpfiles run (Podman's
/// clean-up runs before, carbon-podman-tmpfiles.service) and the saved random seed.
const AFTER_READY_UNITS: &str = "systemd-udevd.service systemd-logind.service \
    systemd-journald.service systemd-journal-flush.service systemd-tmpfiles-setup.service \
    systemd-random-seed.service";
/// systemd's generators a machine has no use for, disabled (a link to /dev/null in
/// /etc/systemd/system-generators): each is a process of a fraction of a second under TCG
/// before the first unit starts. Kept: fstab's (host folders come as fstab.extra), Podman's
/// (quadlets) and the debug generator (`systemd.mask=` and the like on the kernel command line:
/// how a machine's boot is debugged, and how a test keeps a guest from saying Ready). Gone:
/// `systemd.run=` on the command line, gettys
/// on consoles (no password logins), GPT auto-mounts (the ESP is the firmware's), hibernation,
/// rc.local and SysV scripts, SSH over vsock (carbon-vm's SSH is over the network), offline
/// updates, TPM.
const DISABLED_GENERATORS: &str = "systemd-getty-generator \
    systemd-gpt-auto-generator systemd-hibernate-resume-generator systemd-rc-local-generator \
    systemd-run-generator systemd-ssh-generator systemd-system-update-generator \
    systemd-sysv-generator systemd-tpm2-generator";
/// Started at boot though nothing needs them there: netavark's DHCP proxy (its socket stays
/// enabled and starts it for a macvlan DHCP network) and a getty on a screen machines lack.
const DISABLE_UNITS: &str = "netavark-dhcp-proxy.service getty@tty1.service";
/// Made a no-op while the packages install (see `build`).
const UPDATE_INITRAMFS: &str = "/usr/sbin/update-initramfs";
/// Documentation and manuals are left out of both roots; licences stay.
const DPKG_EXCLUDES: [&str; 4] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
];

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("unsupported architecture {0:?} (the recipe builds x86_64 and aarch64)")]
    Arch(String),
    #[error("cannot run mmdebstrap (install it: apt-get install mmdebstrap)")]
    NoMmdebstrap(#[source] io::Error),
    #[error("mmdebstrap failed building the {0} ({1}); its log is above")]
    Mmdebstrap(&'static str, std::process::ExitStatus),
    #[error("{0} is missing: not a Venus bundle's tree (scripts/venus-bundle path prints one)")]
    VenusBundle(PathBuf),
    #[error("cannot write the Venus container image")]
    ContainerImage(#[source] io::Error),
    #[error("cannot make the initrd")]
    Initrd(#[from] initrd::InitrdError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("I/O error at {0}")]
    Io(PathBuf, #[source] io::Error),
    #[error("image build stopped")]
    Interrupted(#[from] crate::interrupt::Interrupted),
}

impl exit_class::Classify for RecipeError {
    fn class(&self) -> Option<exit_class::Class> {
        match self {
            RecipeError::NoMmdebstrap(_) => {
                Some(exit_class::Code::Host.hint(exit_class::DOCTOR_HINT))
            }
            _ => None,
        }
    }
}

pub struct RecipeOptions {
    pub arch: String,
    pub mirror: String,
    pub epoch: u64,
    pub zstd_level: i32,
    /// Signs the image's manifest.
    pub sign: Option<crate::sign::SigningKey>,
    /// The Venus bundle for containers (scripts/venus-bundle): its `ARCH/` tree goes to
    /// `venus::bundle::DIR` in the guest.
    pub venus_bundle: Option<PathBuf>,
}

fn debian_arch(arch: &str) -> Result<&'static str, RecipeError> {
    match arch {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        a => Err(RecipeError::Arch(a.to_owned())),
    }
}

fn package_list(text: &str, arch: &str) -> String {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|p| match (p, arch) {
            // 16 KiB pages: the kernel rounds every virtio-gpu blob to 16 KiB, as the Mac's
            // Hypervisor.framework requires of each mapping (docs/macos.md).
            ("linux-image-amd64", "arm64") => "linux-image-arm64-16k",
            (p, _) => p,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Builds the default guest into `output`; returns the artifact's sha256. A signal
/// ([`crate::interrupt`]) stops it with mmdebstrap gone, its mounts undone and the scratch
/// removed.
pub fn build(
    output: &Path,
    opts: &RecipeOptions,
    progress: &dyn Progress,
) -> Result<Sha256Digest, RecipeError> {
    build_steps(output, opts, progress).map_err(|e| match e {
        // pack's own reason is the same signal.
        RecipeError::Pack(PackError::Interrupted(i)) => i.into(),
        e => interrupt::or_interrupted(e),
    })
}

fn build_steps(
    output: &Path,
    opts: &RecipeOptions,
    progress: &dyn Progress,
) -> Result<Sha256Digest, RecipeError> {
    let deb_arch = debian_arch(&opts.arch)?;
    let out_dir = crate::pack::parent_dir(output);
    let work = Work(Some(
        tempfile::Builder::new()
            .prefix(".carbon-recipe-")
            .tempdir_in(out_dir)
            .map_err(|e| RecipeError::Io(out_dir.into(), e))?,
    ));
    let ioe = |p: &Path| {
        let p = p.to_owned();
        move |e| RecipeError::Io(p, e)
    };

    progress.begin("container image (mmdebstrap)", None);
    let container_tar = work.path().join("venus-rootfs.tar");
    // Extracted, not installed: no maintainer script runs (for another architecture's image
    // they would run emulated, for minutes), and what a Vulkan program needs is files alone
    // (the dynamic loader finds Debian's libraries without a cache). The accounts are
    // base-passwd's.
    let accounts = [
        "cp \"$1\"/usr/share/base-passwd/passwd.master \"$1\"/etc/passwd".to_owned(),
        "cp \"$1\"/usr/share/base-passwd/group.master \"$1\"/etc/group".to_owned(),
        // The build host's, copied by mmdebstrap; podman gives each container its own.
        "rm -f \"$1\"/etc/resolv.conf \"$1\"/etc/hostname".to_owned(),
    ];
    Root {
        what: "Venus container image",
        variant: "extract",
        packages: package_list(CONTAINER_PACKAGES, deb_arch),
        essential_hooks: &[],
        final_hooks: &accounts,
    }
    .build(opts, deb_arch, &container_tar)?;

    let overlay = work.path().join("overlay");
    for (path, mode, text) in GUEST_FILES {
        let dest = overlay.join(path);
        fs::create_dir_all(dest.parent().expect("has a parent")).map_err(ioe(&dest))?;
        fs::write(&dest, text).map_err(ioe(&dest))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(*mode)).map_err(ioe(&dest))?;
    }
    if let Some(bundle) = &opts.venus_bundle {
        copy_bundle(&bundle.join(&opts.arch), &overlay)?;
    }
    let containers = overlay.join(CONTAINER_DIR);
    fs::create_dir_all(&containers).map_err(ioe(&containers))?;
    oci_archive::write(
        &container_tar,
        &containers.join("venus.oci.tar"),
        "localhost/carbon-venus:latest",
        deb_arch,
        opts.epoch,
    )
    .map_err(RecipeError::ContainerImage)?;
    fs::remove_file(&container_tar).map_err(ioe(&container_tar))?;

    progress.begin("guest root (mmdebstrap)", None);
    let rootfs = work.path().join("rootfs");
    let hooks = [
        format!("sync-in {} /", overlay.display()),
        // carbon's users (usr/lib/sysusers.d/carbon-vm.conf) exist before the first boot: the
        // walls name them, and systemd-sysusers runs at boot only after an upgrade.
        "chroot \"$1\" systemd-sysusers".to_owned(),
        format!("chroot \"$1\" systemctl enable {ENABLE_UNITS}"),
        format!("chroot \"$1\" systemctl mask {MASK_UNITS}"),
        format!("chroot \"$1\" systemctl disable {DISABLE_UNITS}"),
        // Podman's tmpfiles.d without its boot-time rules (`!`), which carbon-podman-tmpfiles.service
        // applies before Podman starts: the boot's own run comes later, under a running Podman.
        "mkdir -p \"$1\"/etc/tmpfiles.d && sed '/^[^#[:space:]]*!/d' \"$1\"/usr/lib/tmpfiles.d/podman.conf \
         > \"$1\"/etc/tmpfiles.d/podman.conf"
            .to_owned(),
        format!(
            "mkdir -p \"$1\"/etc/systemd/system-generators && for g in {DISABLED_GENERATORS}; do \
             ln -sf /dev/null \"$1\"/etc/systemd/system-generators/$g; done"
        ),
        format!(
            "for u in {AFTER_READY_UNITS}; do mkdir -p \"$1\"/etc/systemd/system/$u.d && \
             printf '# carbon-vm: after Ready (guest-image recipe, AFTER_READY_UNITS)\\n[Unit]\\nAfter=carbon-ready.service\\n' \
             > \"$1\"/etc/systemd/system/$u.d/carbon-after-ready.conf; done"
        ),
        // The static device nodes of the image's kernel (kmod-static-nodes.service is masked): a
        // node for each module that a first open loads (modules.devname), with its directory.
        "awk '!/^#/ && NF == 3 { n = split($2, p, \"/\"); \
         if (n > 1 && !seen[p[1]]++) print \"d /dev/\" p[1] \" 0755 - - -\"; \
         print substr($3, 1, 1) \"! /dev/\" $2 \" 0600 - - - \" substr($3, 2) }' \
         \"$1\"/usr/lib/modules/*/modules.devname > \"$1\"/usr/lib/tmpfiles.d/carbon-static-nodes.conf"
            .to_owned(),
        // The NIC keeps its kernel name, eth0 (carbon-network.service configures it by name).
        "ln -sf /dev/null \"$1\"/etc/systemd/network/99-default.link".to_owned(),
        // The bundled container image goes into the guest's container storage now, by the guest's
        // own podman and storage configuration, so that no machine loads it on first boot. The
        // root is bound onto itself in a private mount namespace: podman unpacks layers after
        // making / a private mount, which needs / to be a mount point. Its /dev/shm is a fresh
        // tmpfs: the host's may hold a podman's lock segment (libpod_lock) of another size or
        // architecture, which this podman then fails to open.
        format!(
            "unshare -m sh -ec 'mount --rbind \"$1\" \"$1\"; mkdir -p \"$1/dev/shm\"; \
             mount -t tmpfs tmpfs \"$1/dev/shm\"; PODMAN_IGNORE_CGROUPSV1_WARNING=1 chroot \"$1\" podman --events-backend=none --cgroup-manager=cgroupfs load -q \
             -i /{CONTAINER_DIR}/venus.oci.tar' sh \"$1\""
        ),
        // initramfs-tools back as Debian ships it (the essential hook made it a no-op while the
        // packages installed: the recipe makes the initrd itself, below).
        format!("rm \"$1\"{UPDATE_INITRAMFS}"),
        format!("chroot \"$1\" dpkg-divert --quiet --local --rename --remove {UPDATE_INITRAMFS}"),
        // /etc and /var are up to date with /usr: no ldconfig, hwdb or catalog rebuild at boot
        // (ConditionNeedsUpdate); a package upgrade in the guest touches /usr and brings them back.
        "touch -r \"$1\"/usr \"$1\"/etc/.updated \"$1\"/var/.updated".to_owned(),
        // Host keys are made per machine on first boot; machine-id likewise. The hostname is
        // each machine's (its `system.hostname` credential), not the build host's that
        // mmdebstrap copied.
        "rm -f \"$1\"/etc/ssh/ssh_host_* \"$1\"/etc/hostname".to_owned(),
        "echo uninitialized > \"$1\"/etc/machine-id".to_owned(),
    ];
    // Before the packages that run it: update-initramfs does nothing (the linux-image and
    // initramfs-tools scripts call it; under emulation, for another architecture, it takes
    // minutes).
    let essential = [format!(
        "chroot \"$1\" dpkg-divert --quiet --local --rename --add {UPDATE_INITRAMFS} && \
         ln -s /bin/true \"$1\"{UPDATE_INITRAMFS}"
    )];
    Root {
        what: "guest root filesystem",
        variant: "apt",
        packages: package_list(GUEST_PACKAGES, deb_arch),
        essential_hooks: &essential,
        final_hooks: &hooks,
    }
    .build(opts, deb_arch, &rootfs)?;
    interrupt::check()?;
    progress.begin("initrd", None);
    let kernel_version = crate::pack::kernel_version(&rootfs)?;
    initrd::build(
        &rootfs,
        &kernel_version,
        &rootfs.join(format!("boot/initrd.img-{kernel_version}")),
    )?;

    let pack_opts = PackOptions {
        name: format!("carbon-guest-{SUITE}"),
        arch: opts.arch.clone(),
        epoch: opts.epoch,
        zstd_level: opts.zstd_level,
        sign: opts.sign.clone(),
        mesa_version: None,
        bootloader: None,
    };
    Ok(pack(&rootfs, output, &pack_opts, progress)?)
}

/// The recipe's scratch directory beside the output, removed when the build ends unless something
/// is still mounted under it: mmdebstrap mounts /proc, /sys and /dev in the roots it builds and
/// unmounts them as it ends, but if it was killed first a removal would walk into them. Then the
/// directory is left, and said so.
struct Work(Option<tempfile::TempDir>);

impl Work {
    fn path(&self) -> &Path {
        self.0.as_ref().expect("until dropped").path()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let dir = self.0.take().expect("dropped once");
        let mounted = mounts_under(dir.path());
        if !mounted.is_empty() {
            let dir = dir.keep();
            tracing::warn!(
                "{} is left as it is: {} still mounted under it (unmount, then remove it)",
                dir.display(),
                mounted.join(", ")
            );
        }
    }
}

/// The mount points at or under `dir`, as this process sees them.
fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

/// A mountinfo path field: space, tab, newline and backslash are written as octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Three octal digits of one byte (the first at most 3).
        let octal = b.get(i + 1..i + 4).filter(|d| {
            (b'0'..=b'3').contains(&d[0]) && d[1..].iter().all(|c| (b'0'..=b'7').contains(c))
        });
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Venus bundle `from` (one architecture's tree) into the overlay, at `venus::bundle::DIR`;
/// refused unless it holds the driver, its ICD and its description.
fn copy_bundle(from: &Path, overlay: &Path) -> Result<(), RecipeError> {
    for needed in [
        venus::bundle::VERSION_FILE,
        "lib/libvulkan_virtio.so",
        "icd.d/carbon-venus.json",
    ] {
        if !from.join(needed).is_file() {
            return Err(RecipeError::VenusBundle(from.join(needed)));
        }
    }
    let to = overlay.join(venus::bundle::DIR.trim_start_matches('/'));
    let status = interrupt::status(
        Command::new("cp")
            .args(["-R", "--no-preserve=ownership"])
            .arg(from)
            .arg(&to),
    )
    .map_err(|e| RecipeError::Io(to.clone(), e))?;
    if !status.success() {
        return Err(RecipeError::Io(
            to,
            io::Error::other(format!("cp exited with {status}")),
        ));
    }
    Ok(())
}

/// One mmdebstrap run.
struct Root<'a> {
    what: &'static str,
    /// mmdebstrap's `--variant`.
    variant: &'static str,
    /// Comma-separated.
    packages: String,
    /// Run once the essential packages are installed, before the others.
    essential_hooks: &'a [String],
    /// Run once every package is in place: installed (customize hooks), or extracted for the
    /// `extract` variant, where mmdebstrap runs no customize hook.
    final_hooks: &'a [String],
}

impl Root<'_> {
    fn build(
        &self,
        opts: &RecipeOptions,
        deb_arch: &str,
        target: &Path,
    ) -> Result<(), RecipeError> {
        let mut cmd = Command::new("mmdebstrap");
        cmd.arg(format!("--variant={}", self.variant))
            .arg("--quiet")
            .arg(format!("--architectures={deb_arch}"))
            .arg(format!("--include={}", self.packages))
            .env("SOURCE_DATE_EPOCH", opts.epoch.to_string())
            .stdin(Stdio::null());
        for x in DPKG_EXCLUDES {
            cmd.arg(format!("--dpkgopt={x}"));
        }
        for h in self.essential_hooks {
            cmd.arg(format!("--essential-hook={h}"));
        }
        let last = if self.variant == "extract" {
            "extract"
        } else {
            "customize"
        };
        for h in self.final_hooks {
            cmd.arg(format!("--{last}-hook={h}"));
        }
        cmd.arg(SUITE).arg(target).arg(&opts.mirror);
        let status = interrupt::status(&mut cmd).map_err(RecipeError::NoMmdebstrap)?;
        interrupt::check()?;
        if !status.success() {
            return Err(RecipeError::Mmdebstrap(self.what, status));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Every file of configs/guest/files goes into the guest, and nothing else does.
    #[test]
    fn guest_files_are_the_config_directory() {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/guest/files");
        let mut on_disk = Vec::new();
        walk(&base, &base, &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = super::GUEST_FILES
            .iter()
            .map(|(p, ..)| (*p).to_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, on_disk);
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            super::unescape_mountinfo(r"/var/tmp/my\040images/.carbon-recipe-x/rootfs/proc"),
            "/var/tmp/my images/.carbon-recipe-x/rootfs/proc"
        );
        assert_eq!(super::unescape_mountinfo(r"/a\134b\01\777"), r"/a\b\01\777");
    }

    #[test]
    fn package_lists_drop_comments_and_take_the_16k_kernel_for_arm64() {
        let text = "# a list\nlinux-image-amd64\nbusybox-static   # the initrd's\n\npodman\n";
        assert_eq!(
            super::package_list(text, "amd64"),
            "linux-image-amd64,busybox-static,podman"
        );
        assert_eq!(
            super::package_list(text, "arm64"),
            "linux-image-arm64-16k,busybox-static,podman"
        );
    }
}
