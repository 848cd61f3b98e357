//! The machine store. All file names are here (documented in docs/internals.md).

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The machine's specification, written once by `create`.
pub const SPEC: &str = "machine.json";
/// What the current (or last) run chose: SSH port, accelerator. Rewritten by `start`.
pub const RUN: &str = "run.json";
pub const DISK: &str = "disk.raw";
/// The machine's SSH key (ed25519, private to the user) and its public half.
pub const KEY: &str = "id_ed25519";
/// The guest's host key, pinned from the Ready channel (never trusted on first use over SSH).
pub const KNOWN_HOSTS: &str = "known_hosts";
pub const CONSOLE_LOG: &str = "console.log";
pub const GVPROXY_LOG: &str = "gvproxy.log";
pub const QEMU_PID: &str = "qemu.pid";
pub const GVPROXY_PID: &str = "gvproxy.pid";
/// The `ssh -L` process that forwards the guest's Podman socket to PODMAN_SOCKET, and its log.
pub const FORWARD_PID: &str = "podman-forward.pid";
pub const FORWARD_LOG: &str = "podman-forward.log";
/// krunkit machines: krunkit's pidfile and its own output (start-up errors).
pub const KRUNKIT_PID: &str = "krunkit.pid";
pub const KRUNKIT_LOG: &str = "krunkit.log";
/// Named in a Podman machine file as the EFI variable store (Podman requires one; krunkit
/// ignores it). Never created.
pub const EFI_VARS: &str = "efi-vars";
/// flock held by every command that changes the machine.
pub const LOCK: &str = "lock";
/// Sockets, in the machine's runtime directory (kept short for the unix socket path limit).
pub const QMP_SOCKET: &str = "qmp.sock";
pub const NET_SOCKET: &str = "net.sock";
pub const READY_SOCKET: &str = "ready.sock";
pub const PODMAN_SOCKET: &str = "podman.sock";
/// krunkit's REST API (krunkit machines not exposed to Podman).
pub const REST_SOCKET: &str = "rest.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub driver: vmm::DriverKind,
    pub cpus: u8,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub gpu: bool,
    pub image: guest_image::Sha256Digest,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// Whether `start` makes this machine Podman's default connection.
    pub podman_default: bool,
    /// Seconds since the epoch.
    pub created: u64,
    /// Set when the machine is exposed to Podman as a libkrun machine (`create --podman-machine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman_machine: Option<PodmanMachine>,
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
    #[error("I/O error at {0}")]
    Io(PathBuf, #[source] io::Error),
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

pub(crate) fn mkdir_private(p: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| StoreError::Io(p.into(), e))
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

    /// Takes the machine's flock (blocking).
    pub fn lock(&self) -> Result<fs::File, StoreError> {
        let p = self.path(LOCK);
        let f = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| StoreError::Io(p.clone(), e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| StoreError::Io(p, e.into()))?;
        Ok(f)
    }
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("state files live in a directory");
    let io = |e| StoreError::Io(path.into(), e);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(data).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
