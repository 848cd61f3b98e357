//! The machine store. All file names are here (documented in docs/internals.md).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The machine's specification, written once by `create`.
pub const SPEC: &str = "machine.json";
/// What the current (or last) run chose: SSH port, accelerator. Rewritten by `start`.
pub const RUN: &str = "run.json";
pub const DISK: &str = "disk.raw";
/// The machine's SSH key (ed25519, private to the user) and its public half.
pub const KEY: &str = "id_ed25519";
/// The guest's host key, pinned from the Ready channel (never trusted on first use over SSH).
pub const KNOWN_HOSTS: &str = "known_hosts";
/// The disk size (GiB) the guest's root was last grown to: written at Ready, which promises the
/// root grown. A start whose disk differs (a new machine, `set --disk-size`) asks the guest to
/// grow it (the carbon.grow-root credential); the others spare it the check.
pub const ROOT_GROWN: &str = "root-grown";
pub const CONSOLE_LOG: &str = "console.log";
pub const GVPROXY_LOG: &str = "gvproxy.log";
/// The VMM's pidfile (QEMU's `-pidfile`, krunkit's `--pidfile`).
pub const VMM_PID: &str = "vmm.pid";
/// The VMM's own messages for this run (and virtiofsd's), with QEMU's trace of the GPU blobs
/// the guest created (`gpu check` reads it); the previous run's are kept in VMM_LOG_PREVIOUS.
pub const VMM_LOG: &str = "vmm.log";
pub const VMM_LOG_PREVIOUS: &str = "vmm.log.1";
pub const GVPROXY_PID: &str = "gvproxy.pid";
/// The SSH tunnel to the guest: it serves the guest's Podman API on PODMAN_SOCKET and, for
/// machines with the ggml device, that device's socket (GGML_SOCKET) in the guest; and its log.
pub const FORWARD_PID: &str = "tunnel.pid";
pub const FORWARD_LOG: &str = "tunnel.log";
/// Named in a Podman machine file as the EFI variable store (Podman requires one; krunkit
/// ignores it). Never created.
pub const EFI_VARS: &str = "efi-vars";
/// flock held by every command that changes the machine; it names its holder (verb and PID).
pub const LOCK: &str = "lock";
/// Written by `stop --force` (and `rm --force`) while a start holds the lock: the start gives up,
/// stops what it started and lets them proceed.
pub const STOP_REQUEST: &str = "stop-request";
/// Sockets, in the machine's runtime directory (kept short for the unix socket path limit).
/// The VMM's control socket: QEMU's QMP, krunkit's REST API (unless Podman must reach it: then
/// krunkit serves a loopback port).
pub const CONTROL_SOCKET: &str = "control.sock";
pub const NET_SOCKET: &str = "net.sock";
pub const READY_SOCKET: &str = "ready.sock";
/// The guest's Podman API, served by the SSH tunnel (FORWARD_PID).
pub const PODMAN_SOCKET: &str = "podman.sock";
/// The ggml device (`create --ggml`, crate::ggml): its supervisor's PID and log (the server's
/// output too), the relay's socket and the supervisor's word on its server, in the runtime
/// directory.
pub const GGML_PID: &str = "ggml.pid";
pub const GGML_LOG: &str = "ggml.log";
pub const GGML_SOCKET: &str = "ggml.sock";
pub const GGML_STATE: &str = "ggml.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub driver: vmm::DriverKind,
    /// The guest's architecture, the image's (machines made before this field ran the host's).
    #[serde(default = "host_arch")]
    pub arch: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub gpu: bool,
    pub image: guest_image::Sha256Digest,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The GPT name of the disk's root partition, which `create` and `set --disk-size` grow to
    /// the disk (the image's; every image before this field named it carbon-root).
    #[serde(default = "carbon_root")]
    pub root_partition: String,
    /// Whether `start` makes this machine Podman's default connection.
    pub podman_default: bool,
    /// Seconds since the epoch.
    pub created: u64,
    /// Set when the machine is exposed to Podman as a libkrun machine (`create --podman-machine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman_machine: Option<PodmanMachine>,
    /// Host folders shared into the guest (machines made before volumes existed have none).
    #[serde(default)]
    pub volumes: Vec<crate::volumes::Volume>,
    /// The ggml device: ggml's RPC server on the host for this machine's containers.
    #[serde(default)]
    pub ggml: bool,
}

fn carbon_root() -> String {
    "carbon-root".into()
}

fn host_arch() -> String {
    vmm::Arch::host().name().into()
}

/// What a machine exposed to Podman keeps fixed for its whole life, because Podman's machine
/// file names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodmanMachine {
    /// The machine file in Podman's store (`rm` removes it).
    pub file: PathBuf,
    pub ssh_port: u16,
    /// krunkit's REST API on 127.0.0.1: Podman talks to krunkit over HTTP on TCP only.
    pub rest_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub ssh_port: u16,
    pub accel: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no machine named {0:?}")]
    NotFound(String),
    #[error("{0:?} is not a valid machine name (1-32 of a-z, 0-9 and '-', starting with a letter)")]
    BadName(String),
    #[error("machine {0} is damaged: {1}")]
    Damaged(String, String),
    #[error("machine {0} is busy: {1} holds it")]
    Busy(String, String),
    #[error(
        "{0} is not private to this user ({1}); carbon-vm keeps sockets and keys there (remove it, or set CARBON_VM_HOME)"
    )]
    NotPrivate(PathBuf, String),
    #[error("I/O error at {0}")]
    Io(PathBuf, #[source] io::Error),
}

impl exit_class::Classify for StoreError {
    fn class(&self) -> Option<exit_class::Class> {
        use exit_class::Code;
        Some(match self {
            StoreError::NotFound(_) => Code::NotFound.hint("`carbon-vm list` lists machines"),
            StoreError::BadName(_) => Code::Usage.bare(),
            StoreError::Busy(..) => Code::Busy
                .hint("wait for it to finish; `carbon-vm stop --force NAME` interrupts a start"),
            StoreError::NotPrivate(..) => Code::Host.bare(),
            _ => Code::Failure.bare(),
        })
    }
}

pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub struct Store {
    pub machines: PathBuf,
    pub runtime: PathBuf,
}

pub struct MachineDir {
    pub name: String,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
}

/// Creates `p` (and missing parents) mode 0700, then checks that `p` is a directory of this
/// user's that nobody else can enter: another local user could otherwise pre-create it and
/// intercept the sockets in it.
pub(crate) fn mkdir_private(p: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| StoreError::Io(p.into(), e))?;
    verify_private(p)
}

fn verify_private(p: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::symlink_metadata(p).map_err(|e| StoreError::Io(p.into(), e))?;
    let refuse = |why: String| Err(StoreError::NotPrivate(p.into(), why));
    if md.file_type().is_symlink() {
        return refuse("a symbolic link".into());
    }
    if !md.is_dir() {
        return refuse("not a directory".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != me {
        return refuse(format!("owned by uid {}, not {me}", md.uid()));
    }
    if md.mode() & 0o077 != 0 {
        return refuse(format!("mode {:o}, not 700", md.mode() & 0o7777));
    }
    Ok(())
}

impl Store {
    pub fn machine(&self, name: &str) -> Result<MachineDir, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName(name.into()));
        }
        Ok(MachineDir {
            name: name.into(),
            dir: self.machines.join(name),
            run_dir: self.runtime.join(name),
        })
    }

    /// An existing machine.
    pub fn open(&self, name: &str) -> Result<MachineDir, StoreError> {
        let m = self.machine(name)?;
        if !m.dir.join(SPEC).is_file() {
            return Err(StoreError::NotFound(name.into()));
        }
        Ok(m)
    }

    /// The machines directory, created private if missing, swept of leftover scratch.
    pub(crate) fn machines_dir(&self) -> Result<&Path, StoreError> {
        mkdir_private(&self.machines)?;
        scratch::sweep(&self.machines, LOCK);
        Ok(&self.machines)
    }

    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.machines) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if valid_name(&n) && e.path().join(SPEC).is_file() {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }
}

impl MachineDir {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn socket(&self, file: &str) -> PathBuf {
        self.run_dir.join(file)
    }

    pub fn spec(&self) -> Result<Spec, StoreError> {
        self.read_json(SPEC)
    }

    pub fn run(&self) -> Option<Run> {
        self.read_json(RUN).ok()
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<T, StoreError> {
        let p = self.path(file);
        let bytes = fs::read(&p).map_err(|e| StoreError::Io(p.clone(), e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Damaged(self.name.clone(), format!("{file}: {e}")))
    }

    /// Writes a state file atomically: temp file, fsync, rename.
    pub fn write_json<T: Serialize>(&self, file: &str, value: &T) -> Result<(), StoreError> {
        write_atomic(
            &self.path(file),
            &serde_json::to_vec_pretty(value).expect("serializes"),
        )
    }

    /// Takes the machine's flock for `verb`, or says who holds it: of two commands that change
    /// one machine at once, exactly one proceeds.
    pub fn lock(&self, verb: &str) -> Result<Lock, StoreError> {
        self.lock_within(verb, Duration::ZERO)
    }

    /// Like [`MachineDir::lock`], waiting up to `patience` for the holder to let go.
    pub fn lock_within(&self, verb: &str, patience: Duration) -> Result<Lock, StoreError> {
        use rustix::fs::{FlockOperation, flock};
        let p = self.path(LOCK);
        let io = |e: io::Error| StoreError::Io(p.clone(), e);
        let mut f = fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .map_err(io)?;
        let deadline = Instant::now() + patience;
        loop {
            match flock(&f, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let holder = fs::read_to_string(&p).unwrap_or_default();
                    let holder = holder.trim();
                    return Err(StoreError::Busy(
                        self.name.clone(),
                        if holder.is_empty() {
                            "another carbon-vm command".into()
                        } else {
                            holder.into()
                        },
                    ));
                }
                Err(e) => return Err(io(e.into())),
            }
        }
        // The machine may have been removed while this command waited.
        if !self.path(SPEC).is_file() {
            return Err(StoreError::NotFound(self.name.clone()));
        }
        f.set_len(0).map_err(io)?;
        write!(f, "`carbon-vm {verb}` (pid {})", std::process::id()).map_err(io)?;
        Ok(Lock { _file: f })
    }
}

/// A held machine lock; dropping it lets go.
pub struct Lock {
    _file: fs::File,
}

/// Writes a state file atomically and durably (crate::atomic).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    crate::atomic::write(path, data, None, true).map_err(|e| StoreError::Io(path.into(), e))
}

/// Makes a rename or a removal in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(dir.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_enter_or_a_symlink_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let ok = t.path().join("ok/run");
        mkdir_private(&ok).unwrap();
        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = mkdir_private(&open).unwrap_err().to_string();
        assert!(e.contains("mode 777"), "{e}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        let e = mkdir_private(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let t = tempfile::tempdir().unwrap();
        let store = Store {
            machines: t.path().into(),
            runtime: t.path().join("run"),
        };
        let m = store.machine("dev").unwrap();
        fs::create_dir(&m.dir).unwrap();
        fs::write(m.path(SPEC), "{}").unwrap();
        let held = m.lock("start").unwrap();
        let e = m.lock("rm").err().unwrap().to_string();
        assert!(e.contains("busy") && e.contains("`carbon-vm start`"), "{e}");
        drop(held);
        // Patience: a child another test forks in this process shares the lock until it execs.
        m.lock_within("rm", Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn names() {
        for ok in ["dev", "a", "gpu-2", &"x".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Dev",
            "1dev",
            "-x",
            "a/b",
            "../x",
            "a b",
            &"x".repeat(33),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
