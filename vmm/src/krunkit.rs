//! The krunkit driver (macOS): krunkit's command line as a pure function of the machine's
//! configuration, the Venus memory sizing krunkit imposes, and the process lifecycle (start,
//! state, stop) over its REST API on a unix socket.
//!
//! krunkit cannot run on Linux, so this module is built from krunkit's documented contract
//! (docs/usage.md and src/ of github.com/libkrun/krunkit, 1.x) and exercised on Linux against
//! the stand-in in tests/krunkit-standin.

mod driver;
pub mod rest;
mod version;

pub use driver::{Krunkit, Runner, StartError, State, StopError, Stopped};
pub use version::{
    INSTALL_HINT, JSON_REST, ProbeError, Version, VersionError, parse_version, probe,
};

use crate::Share;
use std::path::PathBuf;

/// krunkit refuses more guest RAM than this (MiB).
pub const MAX_MEMORY_MIB: u32 = 61440;
/// The most RAM a `--gpu` machine may have: what keeps a Venus window of [`MIN_WINDOW_MIB`].
pub const GPU_MAX_MEMORY_MIB: u32 = {
    let by_window = WINDOW_BUDGET_MIB - MIN_WINDOW_MIB;
    if by_window < MAX_MEMORY_MIB as u64 {
        by_window as u32
    } else {
        MAX_MEMORY_MIB
    }
};

/// The guest's Ready channel: the guest connects to vsock port 1025 and writes one line.
///
/// Who listens: krunkit's `listen` mode (its default) is "guest to host" communication
/// (krunkit docs/usage.md, "vsock"). krunkit passes it to libkrun as
/// `krun_add_vsock_port2(.., listen = false)` (krunkit src/virtio/unix.rs: "libkrun's `listen`
/// parameter means 'guest expects connections from host' which is true when
/// VsockAction::Connect"); with `listen = false` libkrun connects to the unix socket when the
/// guest connects to the vsock port (libkrun.h). So the HOST program must already be listening
/// on the unix socket when the guest boots: Podman does the same (pkg/machine/apple:
/// `VirtioVsockNew(1025, readySocket, true)`, "the connection from guest to host", after
/// `net.Listen("unix", readySocket)`). krunkit never creates nor removes that socket file.
pub const READY_VSOCK_PORT: u32 = 1025;
/// Where the guest says `Key <host key>` before Ready (crate::ready), to the same socket: not on
/// READY_VSOCK_PORT, where Podman, when it starts the machine, takes any first line for Ready.
pub const KEY_VSOCK_PORT: u32 = 1026;

/// Venus shared-memory window arithmetic, in MiB: libkrun on macOS sizes the window as
/// `63488 MiB - RAM rounded up to a GiB` so that RAM + window stay inside the 64 GiB (36-bit)
/// guest physical address space with 2 GiB left for MMIO; it never exceeds host RAM.
const WINDOW_BUDGET_MIB: u64 = 63488;
/// The 36-bit guest physical address space of Apple Silicon's hypervisor, in MiB.
pub const GUEST_PHYS_MIB: u64 = 64 * 1024;
/// The smallest Venus window carbon-vm accepts: libkrun's own default window (8 GiB). Less
/// makes large Vulkan allocations fail in the guest.
pub const MIN_WINDOW_MIB: u64 = 8192;

/// Everything krunkit needs for one machine; paths are absolute.
#[derive(Debug, Clone)]
pub struct KrunkitConfig {
    pub cpus: u8,
    pub memory_mib: u32,
    /// The raw EFI-bootable root disk (krunkit boots its bundled EFI firmware from it).
    pub disk: PathBuf,
    /// gvproxy's `-listen-vfkit unixgram://` socket.
    pub net_socket: PathBuf,
    pub mac: String,
    /// The unix socket the host listens on for the guest's Ready line (vsock port 1025).
    pub ready_socket: PathBuf,
    pub console_log: PathBuf,
    /// Where krunkit serves its REST API: a unix socket, unless Podman must reach it too
    /// (Podman talks HTTP over TCP only; see [`rest::Endpoint`]).
    pub rest: rest::Endpoint,
    pub pidfile: PathBuf,
    pub shares: Vec<Share>,
    /// SMBIOS type 11 OEM strings (systemd credentials).
    pub oem_strings: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidConfig {
    #[error("krunkit accepts at most {MAX_MEMORY_MIB} MiB of memory, not {0}")]
    TooMuchMemory(u32),
    #[error("a machine needs at least one CPU")]
    NoCpus,
    #[error("krunkit cannot take {0:?}: device arguments may not contain ',' or '='")]
    BadPath(String),
}

impl KrunkitConfig {
    /// Checks krunkit's limits and what its device syntax can express.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(InvalidConfig::TooMuchMemory(self.memory_mib));
        }
        if self.cpus == 0 {
            return Err(InvalidConfig::NoCpus);
        }
        // krunkit splits device arguments on ',' then '=', with no escaping.
        let mut values: Vec<String> = [
            &self.disk,
            &self.net_socket,
            &self.ready_socket,
            &self.console_log,
        ]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
        values.push(self.mac.clone());
        for s in &self.shares {
            values.push(s.dir.display().to_string());
            values.push(s.tag.clone());
        }
        match values.into_iter().find(|v| v.contains([',', '='])) {
            Some(v) => Err(InvalidConfig::BadPath(v)),
            None => Ok(()),
        }
    }
}

pub fn command_line(c: &KrunkitConfig) -> Vec<String> {
    let p = |p: &PathBuf| p.display().to_string();
    let mut a: Vec<String> = vec![
        "--cpus".into(),
        c.cpus.to_string(),
        "--memory".into(),
        c.memory_mib.to_string(),
        "--pidfile".into(),
        p(&c.pidfile),
        "--restful-uri".into(),
        c.rest.uri(),
        // The first virtio-blk is the root disk krunkit's EFI firmware boots.
        "--device".into(),
        format!("virtio-blk,path={},format=raw", p(&c.disk)),
        "--device".into(),
        format!(
            "virtio-net,unixSocketPath={},mac={}",
            p(&c.net_socket),
            c.mac
        ),
        "--device".into(),
        format!(
            "virtio-vsock,port={READY_VSOCK_PORT},socketURL={},listen",
            p(&c.ready_socket)
        ),
        "--device".into(),
        format!(
            "virtio-vsock,port={KEY_VSOCK_PORT},socketURL={},listen",
            p(&c.ready_socket)
        ),
        "--device".into(),
        format!("virtio-serial,logFilePath={}", p(&c.console_log)),
        "--device".into(),
        "virtio-rng".into(),
    ];
    for s in &c.shares {
        a.push("--device".into());
        a.push(format!(
            "virtio-fs,sharedDir={},mountTag={}",
            p(&s.dir),
            s.tag
        ));
    }
    for s in &c.oem_strings {
        a.push("--oem-string".into());
        a.push(s.clone());
    }
    a
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "a GPU machine here may have at most {max_mib} MiB of memory: the rest of the guest's \
     64 GiB address space is the GPU's shared-memory window"
)]
pub struct NoRoomForGpu {
    pub max_mib: u32,
}

/// The RAM a `--gpu` machine may have: at most what keeps a Venus window of
/// [`MIN_WINDOW_MIB`], inside krunkit's own limit. Returns `requested` when it fits.
pub fn fit_memory(requested_mib: u32, host_ram_mib: u64) -> Result<u32, NoRoomForGpu> {
    let max_mib = GPU_MAX_MEMORY_MIB;
    let fits = requested_mib <= max_mib
        && venus::window::krunkit_window_mib(u64::from(requested_mib), host_ram_mib)
            >= MIN_WINDOW_MIB.min(host_ram_mib);
    if fits {
        Ok(requested_mib)
    } else {
        Err(NoRoomForGpu { max_mib })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KrunkitConfig {
        KrunkitConfig {
            cpus: 4,
            memory_mib: 4096,
            disk: "/m/dev/disk.raw".into(),
            net_socket: "/r/dev/net.sock".into(),
            mac: "5a:94:ef:e4:0c:ee".into(),
            ready_socket: "/r/dev/ready.sock".into(),
            console_log: "/m/dev/console.log".into(),
            rest: rest::Endpoint::Unix("/r/dev/rest.sock".into()),
            pidfile: "/m/dev/krunkit.pid".into(),
            shares: vec![],
            oem_strings: vec![
                "io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA k".into(),
                "io.systemd.credential:system.hostname=dev".into(),
            ],
        }
    }

    #[test]
    fn golden_default_machine() {
        let argv = command_line(&config());
        let want = [
            "--cpus",
            "4",
            "--memory",
            "4096",
            "--pidfile",
            "/m/dev/krunkit.pid",
            "--restful-uri",
            "unix:///r/dev/rest.sock",
            "--device",
            "virtio-blk,path=/m/dev/disk.raw,format=raw",
            "--device",
            "virtio-net,unixSocketPath=/r/dev/net.sock,mac=5a:94:ef:e4:0c:ee",
            "--device",
            "virtio-vsock,port=1025,socketURL=/r/dev/ready.sock,listen",
            "--device",
            "virtio-vsock,port=1026,socketURL=/r/dev/ready.sock,listen",
            "--device",
            "virtio-serial,logFilePath=/m/dev/console.log",
            "--device",
            "virtio-rng",
            "--oem-string",
            "io.systemd.credential:ssh.authorized_keys.root=ssh-ed25519 AAAA k",
            "--oem-string",
            "io.systemd.credential:system.hostname=dev",
        ];
        assert_eq!(argv, want);
    }

    #[test]
    fn golden_with_shares_and_no_credentials() {
        let mut c = config();
        c.cpus = 1;
        c.memory_mib = MAX_MEMORY_MIB;
        c.oem_strings.clear();
        c.shares = vec![
            Share {
                dir: "/Users/me".into(),
                tag: "home".into(),
                socket: "/r/dev/fs0.sock".into(),
                hidden: vec![],
            },
            Share {
                dir: "/Volumes/data".into(),
                tag: "data".into(),
                socket: "/r/dev/fs1.sock".into(),
                hidden: vec![],
            },
        ];
        let argv = command_line(&c);
        assert_eq!(
            argv[..4],
            ["--cpus", "1", "--memory", "61440"].map(String::from)
        );
        assert_eq!(
            argv[argv.len() - 4..],
            [
                "--device",
                "virtio-fs,sharedDir=/Users/me,mountTag=home",
                "--device",
                "virtio-fs,sharedDir=/Volumes/data,mountTag=data",
            ]
            .map(String::from)
        );
        assert!(!argv.contains(&"--oem-string".to_owned()));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_podman_visible_machine_serves_rest_on_loopback_tcp() {
        let mut c = config();
        c.rest = rest::Endpoint::Loopback(50124);
        let argv = command_line(&c);
        let i = argv.iter().position(|a| a == "--restful-uri").unwrap();
        assert_eq!(argv[i + 1], "tcp://127.0.0.1:50124");
    }

    #[test]
    fn root_disk_is_the_first_device() {
        let argv = command_line(&config());
        let first = argv.iter().position(|a| a == "--device").unwrap();
        assert!(argv[first + 1].starts_with("virtio-blk,"));
        assert_eq!(
            argv.iter().filter(|a| a.starts_with("virtio-blk")).count(),
            1
        );
    }

    #[test]
    fn limits_are_krunkits() {
        let mut c = config();
        c.memory_mib = MAX_MEMORY_MIB + 1;
        assert_eq!(c.validate(), Err(InvalidConfig::TooMuchMemory(61441)));
        c.memory_mib = 2048;
        c.cpus = 0;
        assert_eq!(c.validate(), Err(InvalidConfig::NoCpus));
    }

    #[test]
    fn device_separators_in_paths_are_refused() {
        // krunkit would split `path=/a,b` into `path=/a` and an unknown argument `b`.
        let mut c = config();
        c.disk = "/m/a,b/disk.raw".into();
        assert!(matches!(c.validate(), Err(InvalidConfig::BadPath(_))));
        let mut c = config();
        c.shares.push(Share {
            dir: "/x=y".into(),
            tag: "t".into(),
            socket: "/r/fs.sock".into(),
            hidden: vec![],
        });
        assert!(matches!(c.validate(), Err(InvalidConfig::BadPath(_))));
        // OEM strings are whole option values, not device arguments: commas are fine there.
        let mut c = config();
        c.oem_strings.push("io.systemd.credential:x=a,b".into());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn window_is_the_address_space_left_after_ram_rounded_up_to_a_gib() {
        let big_host = 128 * 1024;
        // RAM + window always fit in the 36-bit guest physical space.
        for ram in [512, 2048, 4097, 30000, 55296, MAX_MEMORY_MIB] {
            let w = venus::window::krunkit_window_mib(u64::from(ram), big_host);
            assert!(u64::from(ram) + w <= GUEST_PHYS_MIB, "{ram}");
        }
    }

    #[test]
    fn gpu_machines_keep_room_for_the_window() {
        let host = 128 * 1024;
        // 54 GiB leaves exactly the minimum 8 GiB window.
        assert_eq!(fit_memory(55296, host), Ok(55296));
        // One MiB more rounds up to 55 GiB and leaves only 7 GiB.
        assert_eq!(
            fit_memory(55297, host),
            Err(NoRoomForGpu { max_mib: 55296 })
        );
        // krunkit's own 60 GiB limit would leave 2 GiB: refused for a GPU machine.
        assert!(fit_memory(MAX_MEMORY_MIB, host).is_err());
        // A small host bounds the window, not the RAM: 8 GiB host, 4 GiB guest, 8 GiB window.
        assert_eq!(fit_memory(4096, 8192), Ok(4096));
        assert_eq!(venus::window::krunkit_window_mib(4096, 8192), 8192);
    }
}
