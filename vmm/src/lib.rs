//! carbon-vm's VMM drivers behind one narrow trait, [`Driver`]: qemu (Linux) and krunkit (macOS);
//! libkrun is a later implementation of the same trait. A driver answers what it can do
//! ([`Capabilities`], [`Limits`]); `machine` owns the one start/stop sequence around it
//! (gvproxy, the Ready wait, the stop policy, clean-up on every error path) and the one mapping
//! from a [`DriverKind`] to its implementation.

pub mod gvproxy;
pub mod http;
pub mod krunkit;
pub mod kvm;
pub mod platform;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod ready;

use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The VMMs carbon-vm can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Qemu,
    Krunkit,
    Libkrun,
}

impl DriverKind {
    pub const ALL: [DriverKind; 3] = [DriverKind::Qemu, DriverKind::Krunkit, DriverKind::Libkrun];

    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Qemu => "qemu",
            DriverKind::Krunkit => "krunkit",
            DriverKind::Libkrun => "libkrun",
        }
    }

    /// The driver a machine gets when `--driver` is not given.
    pub fn host_default() -> DriverKind {
        if cfg!(target_os = "macos") {
            DriverKind::Krunkit
        } else {
            DriverKind::Qemu
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown driver {0:?} (expected one of: qemu, krunkit, libkrun)")]
pub struct UnknownDriver(pub String);

impl std::str::FromStr for DriverKind {
    type Err = UnknownDriver;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DriverKind::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDriver(s.to_owned()))
    }
}

/// A guest's architecture (an image's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The architecture an image names in its manifest (`x86_64`, `aarch64`).
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// What a driver can do, whatever the machine: `machine` asks this instead of matching on
/// [`DriverKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The guest architectures it runs; a machine that names no image gets the first's.
    pub arches: &'static [Arch],
    /// Every machine has a Venus GPU, asked for or not (krunkit cannot turn it off).
    pub always_gpu: bool,
    /// The host maps guest memory in 16 KiB pages itself (Apple Silicon), so a GPU blob of
    /// another size fails its mapping, and with it Venus.
    pub maps_16k_pages: bool,
    /// The VMM's log records the GPU blobs a `gpu: true` guest creates (`venus::blobs`).
    pub traces_blobs: bool,
    /// Podman's libkrun machines run on it (`--podman-machine`).
    pub podman_machine: bool,
}

/// One machine as its VMM sees it: resources, and the host paths the VMM reads, writes or
/// listens on. `machine` builds it from the machine directory on every call.
#[derive(Debug, Clone)]
pub struct Vm {
    pub name: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub gpu: bool,
    pub disk: PathBuf,
    /// The image's kernel, initrd and command line, for drivers that boot the kernel directly
    /// (QEMU); EFI drivers boot the disk.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// gvproxy's VMM-side socket.
    pub net_socket: PathBuf,
    /// Where the host listens for the guest's Ready line ([`ready`]).
    pub ready_socket: PathBuf,
    /// The VMM's control socket (QMP, krunkit's REST API).
    pub control_socket: PathBuf,
    pub console_log: PathBuf,
    /// The VMM's own messages for the whole run (QEMU's `-D` log, krunkit's stdout and stderr)
    /// and, where the VMM traces them, the GPU blobs the guest creates, for the Mac's 16 KiB
    /// page check (`venus::blobs`; QEMU for `--gpu` machines).
    pub vmm_log: PathBuf,
    pub pidfile: PathBuf,
    /// SMBIOS type 11 OEM strings (systemd credentials).
    pub oem_strings: Vec<String>,
    /// Host folders shared over virtio-fs.
    pub shares: Vec<Share>,
}

/// A host directory shared with the guest over virtio-fs under `tag`.
#[derive(Debug, Clone)]
pub struct Share {
    pub dir: PathBuf,
    pub tag: String,
    /// Where a vhost-user daemon serves it, for VMMs without virtio-fs of their own (QEMU).
    pub socket: PathBuf,
    /// Directories inside `dir` the guest must not see or reach (carbon-vm's own state), where
    /// the VMM can hide them (QEMU's virtiofsd). They must exist.
    pub hidden: Vec<PathBuf>,
}

/// What a driver allows a machine on this host; `machine` refuses specs outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_cpus: u8,
    pub min_memory_mib: u32,
    pub max_memory_mib: u32,
    /// Whether host folders can be shared (virtio-fs) with this driver here.
    pub shares: bool,
}

impl Limits {
    /// As many vCPUs as the host has threads, as much memory as it has RAM: a VMM would take
    /// more and then crawl or be killed by the OOM killer. Drivers narrow it further.
    pub fn host() -> Limits {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ram_mib = platform::host_ram_bytes() >> 20;
        Limits {
            max_cpus: u8::try_from(cpus).unwrap_or(u8::MAX),
            min_memory_mib: MIN_MEMORY_MIB,
            // 0: unknown (macOS without sysctl), no host bound.
            max_memory_mib: match ram_mib {
                0 => u32::MAX,
                n => u32::try_from(n).unwrap_or(u32::MAX),
            },
            shares: true,
        }
    }
}

/// The smallest guest that boots carbon-vm's image and runs Podman.
pub const MIN_MEMORY_MIB: u32 = 1024;

/// How often a shut-down presses the power button again while the guest runs on: a guest that
/// has not yet started what handles the button misses a press (carbon-vm's image starts logind,
/// and udev's announcement of the button, just after Ready), as a person would press again.
const PRESS_AGAIN: Duration = Duration::from_secs(10);

/// The contract every VMM implements. Drivers keep no state between calls: everything is found
/// again from the [`Vm`]'s paths (pidfiles checked against the process's command line, control
/// sockets).
pub trait Driver {
    fn kind(&self) -> DriverKind;
    fn capabilities(&self) -> Capabilities;
    /// Refuses a host this driver cannot run any machine on (no krunkit), before anything is
    /// pulled or written.
    fn available(&self) -> Result<(), Error>;
    /// What runs guest code: `kvm`, `tcg`, `hvf`.
    fn accelerator(&self) -> &'static str;
    /// What a machine may ask of this driver on this host.
    fn limits(&self, gpu: bool) -> Limits;
    /// Refuses, before anything starts, a host that cannot run `vm` (e.g. no Venus for `--gpu`).
    fn check_host(&self, vm: &Vm) -> Result<(), Error>;
    /// How gvproxy must listen for this VMM to attach.
    fn network(&self, vm: &Vm) -> gvproxy::Listen;
    /// Starts the VMM; returns once it runs (the guest boots on).
    fn launch(&self, vm: &Vm) -> Result<(), Error>;
    /// Whether this machine's VMM runs.
    fn running(&self, vm: &Vm) -> Result<bool, Error>;
    /// Asks the guest to power down (ACPI's power button, krunkit's REST `Stop`), again every
    /// [`PRESS_AGAIN`], and waits up to `within` for the VMM to end: false if it still runs
    /// then. A VMM that is not running is down. What happens next is `machine`'s one stop
    /// policy, not the driver's.
    fn shut_down(&self, vm: &Vm, within: Duration) -> Result<bool, Error>;
    /// Kills the VMM; returns once it is gone.
    fn kill(&self, vm: &Vm) -> Result<(), Error>;
    /// Removes what a dead run leaves behind (pidfile, control socket).
    fn clean_stale(&self, vm: &Vm);
}

/// An implementation's own error, carried by [`Error`] without naming its type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong behind the contract, by class: callers act on the class (install a tool,
/// ask for less), never on which implementation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {0} (install it: {1})")]
    Missing(String, &'static str, #[source] io::Error),
    #[error("the {driver} driver is not available on this host")]
    Unavailable {
        driver: &'static str,
        /// How to get it.
        hint: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("{0} exited during start-up: {1}")]
    Exited(&'static str, String),
    #[error("this host cannot give the machine its Venus GPU")]
    Gpu(#[from] venus::probe::ProbeError),
    /// The machine asks for more than the driver gives on this host.
    #[error(transparent)]
    Resources(BoxError),
    #[error(
        "the guest stopped: QEMU says {0:?}; this host's KVM cannot run it (CARBON_VM_ACCEL=tcg \
         runs it without KVM)"
    )]
    KvmFailed(String),
    #[error(
        "QEMU paused the guest: a write to its disk ({}) found the host's filesystem full; free \
         space there, then start the machine again (`carbon-vm stop --force` first ends a guest \
         left paused)",
        .0.display()
    )]
    DiskFull(PathBuf),
    #[error("the VMM (pid {0}) is still running after SIGKILL")]
    Unkillable(i32),
    /// The VMM or its control protocol failed (QMP, krunkit's REST API): `what` says which.
    #[error("{what}")]
    Vmm {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("I/O error")]
    Io(#[from] io::Error),
}

impl Error {
    pub fn vmm(what: &'static str, source: impl Into<BoxError>) -> Error {
        Error::Vmm {
            what,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_refused() {
        for d in DriverKind::ALL {
            assert_eq!(d.name().parse::<DriverKind>().unwrap(), d);
        }
        assert!("vbox".parse::<DriverKind>().is_err());
    }
}
