//! Exposes a krunkit machine to Podman 5 on macOS as a `libkrun` Podman machine: the file
//! `~/.config/containers/podman/machine/libkrun/NAME.json` that `podman machine list/inspect`
//! read.
//!
//! Schema (`Version: 1`, Go's encoding/json of podman's `vmconfigs.MachineConfig`;
//! pkg/machine/vmconfigs/config.go and config_darwin.go, pkg/machine/define/vmfile.go,
//! pkg/machine/apple/vfkit/helper.go, pkg/machine/libkrun/stubber.go, vfkit's pkg/config/json.go):
//!
//! | field | type | carbon-vm writes |
//! |---|---|---|
//! | `Created`, `LastUp` | RFC 3339 time | creation and last start; a zero `LastUp` (year 1) means first boot, when Podman would serve Ignition on vsock 1024: never zero here |
//! | `GvProxy` | `{Debug, MTU, LogFile, PidFile, SSHPort}` | gvproxy's settings |
//! | `HostUser` | `{Rootful: bool, UID: int, HostUserModified: bool}` | rootful (the guest's Podman socket is root's) |
//! | `Mounts` | array | none |
//! | `Name` | string | machine name |
//! | `Resources` | `{CPUs: uint, DiskSize: GiB, Memory: MiB, USBs: array}` | the spec |
//! | `SSH` | `{IdentityPath, Port, RemoteUsername}` | the machine's key, port, `root` |
//! | `Version` | uint | 1 |
//! | `ImagePath` | `{Path, symlink?}` | the machine's disk |
//! | `LibKrunHypervisor.KRun` | `{Endpoint, VirtualMachine: {vcpus, memoryBytes, bootloader: {kind: "efiBootloader", EFIVariableStorePath, CreateVariableStore}}}` | krunkit's REST endpoint (below) and the VM's size |
//! | `Starting` | bool | false |
//!
//! Fields podman adds in later 5.x releases (`Swap`, `Rosetta`, `Ansible`, `KRun.LogLevel`, ...)
//! are optional to Go's decoder; read from an existing file they are kept as they are.
//!
//! Podman derives the sockets it uses (ready, gvproxy, API) from its own runtime directory and
//! the machine name; they are not in this file.
//!
//! The endpoint. Podman talks to krunkit with Go's default HTTP client (pkg/machine/apple/vfkit
//! helper.go), which speaks `http://` over TCP only: a `unix://` endpoint makes every state
//! query fail with "unsupported protocol scheme", and `podman machine list` fails as a whole on
//! the first machine whose state it cannot get (pkg/machine/shim/host.go `List`). An endpoint
//! nobody serves would be read as "stopped" (connection refused), and `podman machine start`
//! would then boot a second VM on the running machine's disk. So a machine exposed to Podman
//! has krunkit serve its REST API on `127.0.0.1:PORT`, the port fixed at create and written
//! here as `http://127.0.0.1:PORT`, as Podman does for its own machines: Podman then sees the
//! true state, refuses to start a running machine, and can stop it. The price is Podman's own:
//! any local user can reach that port and stop the VM. Machines not exposed keep the unix
//! socket.

use crate::store::{
    DISK, EFI_VARS, GVPROXY_LOG, GVPROXY_PID, KEY, MachineDir, PodmanMachine, Spec,
};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The machine-config schema version podman 5 writes and reads.
pub const CONFIG_VERSION: u32 = 1;

/// Podman 5 minor versions whose machine-config schema was checked (libkrun machines exist
/// from 5.2 on).
pub const VERIFIED_MINORS: std::ops::RangeInclusive<u32> = 2..=6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MachineConfig {
    pub created: DateTime<FixedOffset>,
    pub gv_proxy: GvproxyCommand,
    pub host_user: HostUser,
    pub last_up: DateTime<FixedOffset>,
    pub mounts: Vec<serde_json::Value>,
    pub name: String,
    pub resources: Resources,
    #[serde(rename = "SSH")]
    pub ssh: Ssh,
    pub version: u32,
    pub image_path: VmFile,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lib_krun_hypervisor: Option<LibKrunConfig>,
    pub starting: bool,
    /// Fields of later podman releases, kept untouched.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GvproxyCommand {
    pub debug: bool,
    #[serde(rename = "MTU")]
    pub mtu: u32,
    pub log_file: String,
    pub pid_file: String,
    #[serde(rename = "SSHPort")]
    pub ssh_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostUser {
    #[serde(rename = "Rootful")]
    pub rootful: bool,
    #[serde(rename = "UID")]
    pub uid: i64,
    #[serde(rename = "HostUserModified")]
    pub modified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(rename = "CPUs")]
    pub cpus: u64,
    /// GiB.
    #[serde(rename = "DiskSize")]
    pub disk_size: u64,
    /// MiB.
    #[serde(rename = "Memory")]
    pub memory: u64,
    /// Go writes a nil slice as null.
    #[serde(rename = "USBs")]
    pub usbs: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ssh {
    pub identity_path: PathBuf,
    pub port: u16,
    pub remote_username: String,
}

/// podman's `define.VMFile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmFile {
    #[serde(rename = "Path")]
    pub path: PathBuf,
    #[serde(rename = "symlink", skip_serializing_if = "Option::is_none")]
    pub symlink: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibKrunConfig {
    #[serde(rename = "KRun")]
    pub krun: KrunHelper,
}

/// podman's `vfkit.Helper`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KrunHelper {
    pub endpoint: String,
    pub virtual_machine: VirtualMachine,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// vfkit's `config.VirtualMachine` (its own JSON names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    pub vcpus: u64,
    pub memory_bytes: u64,
    pub bootloader: Bootloader,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Bootloader {
    /// krunkit ignores it (it always boots its own EFI firmware); podman requires one.
    #[serde(rename = "efiBootloader")]
    Efi {
        #[serde(rename = "EFIVariableStorePath")]
        variable_store: PathBuf,
        #[serde(rename = "CreateVariableStore")]
        create: bool,
    },
}

/// A carbon-vm machine, as Podman is told about it.
#[derive(Debug, Clone)]
pub struct Exposed {
    pub name: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub disk: PathBuf,
    pub identity: PathBuf,
    pub ssh_port: u16,
    /// The 127.0.0.1 port krunkit serves its REST API on (see the module's comment).
    pub rest_port: u16,
    pub efi_variable_store: PathBuf,
    pub gvproxy_log: PathBuf,
    pub gvproxy_pidfile: PathBuf,
    pub uid: i64,
    pub created: DateTime<FixedOffset>,
    /// When it last started; never the zero time (that would make Podman serve Ignition).
    pub last_up: DateTime<FixedOffset>,
}

pub fn config(m: &Exposed) -> MachineConfig {
    MachineConfig {
        created: m.created,
        gv_proxy: GvproxyCommand {
            debug: false,
            mtu: 1500,
            log_file: m.gvproxy_log.display().to_string(),
            pid_file: m.gvproxy_pidfile.display().to_string(),
            ssh_port: m.ssh_port,
        },
        host_user: HostUser {
            rootful: true,
            uid: m.uid,
            modified: false,
        },
        last_up: m.last_up,
        mounts: vec![],
        name: m.name.clone(),
        resources: Resources {
            cpus: m.cpus.into(),
            disk_size: m.disk_gib.into(),
            memory: m.memory_mib.into(),
            usbs: None,
        },
        ssh: Ssh {
            identity_path: m.identity.clone(),
            port: m.ssh_port,
            remote_username: "root".into(),
        },
        version: CONFIG_VERSION,
        image_path: VmFile {
            path: m.disk.clone(),
            symlink: None,
        },
        lib_krun_hypervisor: Some(LibKrunConfig {
            krun: KrunHelper {
                endpoint: format!("http://127.0.0.1:{}", m.rest_port),
                virtual_machine: VirtualMachine {
                    vcpus: m.cpus.into(),
                    memory_bytes: u64::from(m.memory_mib) << 20,
                    bootloader: Bootloader::Efi {
                        variable_store: m.efi_variable_store.clone(),
                        create: true,
                    },
                    other: Default::default(),
                },
                other: Default::default(),
            },
        }),
        starting: false,
        other: Default::default(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    #[error("cannot run podman (--podman-machine needs podman 5.{lo} to 5.{hi})",
        lo = VERIFIED_MINORS.start(), hi = VERIFIED_MINORS.end())]
    NoPodman(#[source] io::Error),
    #[error("`podman --version` printed {0:?}, not a podman version")]
    Unparseable(String),
    #[error(
        "podman {0} is not supported for machine exposure (supported: 5.{lo} to 5.{hi})",
        lo = VERIFIED_MINORS.start(),
        hi = VERIFIED_MINORS.end()
    )]
    Unsupported(String),
    #[error("Podman already has a machine file {0}")]
    Exists(PathBuf),
    #[error("the machine's first start has not happened: LastUp may not be zero")]
    NeverStarted,
    #[error("cannot write or remove {0}")]
    Io(PathBuf, #[source] io::Error),
}

/// `podman --version` of the podman on PATH.
pub fn podman_version() -> Result<String, ExposeError> {
    let out = std::process::Command::new("podman")
        .arg("--version")
        .output()
        .map_err(ExposeError::NoPodman)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks `podman --version` output (`podman version 5.2.1`) against the verified versions.
pub fn check_podman_version(output: &str) -> Result<(), ExposeError> {
    let v = output
        .trim()
        .strip_prefix("podman version ")
        .ok_or_else(|| ExposeError::Unparseable(output.trim().into()))?;
    let mut parts = v.split(['.', '-', '+']);
    let mut num = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (num(), num()) {
        (Some(5), Some(minor)) if VERIFIED_MINORS.contains(&minor) => Ok(()),
        (Some(_), Some(_)) => Err(ExposeError::Unsupported(v.into())),
        _ => Err(ExposeError::Unparseable(output.trim().into())),
    }
}

/// Podman's libkrun machine store under a config home (`$XDG_CONFIG_HOME`, else
/// `$HOME/.config`, on Linux and macOS alike).
pub fn store_dir(config_home: &Path) -> PathBuf {
    config_home.join("containers/podman/machine/libkrun")
}

/// Writes `dir/NAME.json` atomically, for the podman whose `--version` output is given. An
/// existing file is Podman's (or another tool's) machine: it is never replaced.
pub fn write(dir: &Path, podman_version: &str, m: &Exposed) -> Result<PathBuf, ExposeError> {
    check_podman_version(podman_version)?;
    if m.last_up.timestamp() <= 0 {
        return Err(ExposeError::NeverStarted);
    }
    let path = dir.join(format!("{}.json", m.name));
    let io = |e| ExposeError::Io(path.clone(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&serde_json::to_vec_pretty(&config(m)).expect("serializes"))
        .map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist_noclobber(&path)
        .map_err(|e| match e.error.kind() {
            io::ErrorKind::AlreadyExists => ExposeError::Exists(path.clone()),
            _ => io(e.error),
        })?;
    Ok(path)
}

/// Writes the machine file of a machine created with `--podman-machine`. Podman never saw it
/// boot, but it has no Ignition to serve: `LastUp` is the creation time, never zero.
pub fn expose(
    m: &MachineDir,
    spec: &Spec,
    p: &PodmanMachine,
    podman_version: &str,
) -> Result<PathBuf, ExposeError> {
    let created = DateTime::from_timestamp(i64::try_from(spec.created).unwrap_or(0), 0)
        .unwrap_or_default()
        .fixed_offset();
    let exposed = Exposed {
        name: spec.name.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        disk_gib: spec.disk_gib,
        disk: m.path(DISK),
        identity: m.path(KEY),
        ssh_port: p.ssh_port,
        rest_port: p.rest_port,
        efi_variable_store: m.path(EFI_VARS),
        gvproxy_log: m.path(GVPROXY_LOG),
        gvproxy_pidfile: m.path(GVPROXY_PID),
        uid: rustix::process::getuid().as_raw().into(),
        created,
        last_up: created,
    };
    let dir = p.file.parent().expect("a file in Podman's store");
    write(dir, podman_version, &exposed)
}

/// Removes the machine file if it still describes the machine on `disk`: one Podman (or the
/// user) replaced is left alone.
pub fn remove(file: &Path, disk: &Path) -> Result<(), ExposeError> {
    let io = |e| ExposeError::Io(file.to_owned(), e);
    let bytes = match std::fs::read(file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(io)?,
    };
    match serde_json::from_slice::<MachineConfig>(&bytes) {
        Ok(c) if c.image_path.path == disk => std::fs::remove_file(file).map_err(io),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = include_str!("../testdata/podman-machine-libkrun.json");

    fn exposed() -> Exposed {
        let t = |s| DateTime::parse_from_rfc3339(s).unwrap();
        Exposed {
            name: "dev".into(),
            cpus: 4,
            memory_mib: 8192,
            disk_gib: 100,
            disk: "/Users/me/.local/share/carbon-vm/machines/dev/disk.raw".into(),
            identity: "/Users/me/.local/share/carbon-vm/machines/dev/id_ed25519".into(),
            ssh_port: 50123,
            rest_port: 50124,
            efi_variable_store: "/Users/me/.local/share/carbon-vm/machines/dev/efi-vars".into(),
            gvproxy_log: "/Users/me/.local/share/carbon-vm/machines/dev/gvproxy.log".into(),
            gvproxy_pidfile: "/Users/me/.local/share/carbon-vm/machines/dev/gvproxy.pid".into(),
            uid: 501,
            created: t("2025-11-21T10:00:00+01:00"),
            last_up: t("2025-11-21T10:05:00+01:00"),
        }
    }

    #[test]
    fn golden_schema_round_trips() {
        let want: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
        let got = serde_json::to_value(config(&exposed())).unwrap();
        assert_eq!(got, want, "{}", serde_json::to_string_pretty(&got).unwrap());
        // And podman's file reads back into the same value.
        let parsed: MachineConfig = serde_json::from_str(GOLDEN).unwrap();
        assert_eq!(parsed, config(&exposed()));
    }

    #[test]
    fn fields_of_later_podman_releases_survive() {
        let mut v: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
        v["Swap"] = 0.into();
        v["Rosetta"] = false.into();
        v["LibKrunHypervisor"]["KRun"]["LogLevel"] = "info".into();
        let parsed: MachineConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), v);
    }

    #[test]
    fn only_verified_podman_versions() {
        for ok in [
            "podman version 5.2.0",
            "podman version 5.6.2\n",
            "podman version 5.4.0-rc1",
        ] {
            assert!(check_podman_version(ok).is_ok(), "{ok}");
        }
        for refused in [
            "podman version 4.9.4",
            "podman version 5.1.2",
            "podman version 5.7.0",
            "podman version 6.0.0",
        ] {
            assert!(
                matches!(
                    check_podman_version(refused),
                    Err(ExposeError::Unsupported(_))
                ),
                "{refused}"
            );
        }
        assert!(matches!(
            check_podman_version("docker 27.0"),
            Err(ExposeError::Unparseable(_))
        ));
    }

    #[test]
    fn writes_atomically_and_never_a_first_boot() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "podman version 5.5.1", &exposed()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["LastUp"], "2025-11-21T10:05:00+01:00");
        assert_eq!(v["Version"], 1);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["dev.json"], "no temporary file left");

        let mut m = exposed();
        m.last_up = DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z").unwrap();
        assert!(matches!(
            write(dir.path(), "podman version 5.5.1", &m),
            Err(ExposeError::NeverStarted)
        ));
        assert!(write(dir.path(), "podman version 4.9.0", &exposed()).is_err());
    }

    #[test]
    fn an_existing_machine_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("dev.json");
        std::fs::write(&theirs, "podman's own").unwrap();
        assert!(matches!(
            write(dir.path(), "podman version 5.5.1", &exposed()),
            Err(ExposeError::Exists(p)) if p == theirs
        ));
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "podman's own");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Nor removed: it does not describe our disk.
        remove(&theirs, &exposed().disk).unwrap();
        assert!(theirs.exists());
    }

    #[test]
    fn remove_takes_only_the_file_describing_our_disk() {
        let dir = tempfile::tempdir().unwrap();
        let ours = write(dir.path(), "podman version 5.5.1", &exposed()).unwrap();
        remove(&ours, Path::new("/elsewhere/disk.raw")).unwrap();
        assert!(ours.exists());
        remove(&ours, &exposed().disk).unwrap();
        assert!(!ours.exists());
        remove(&ours, &exposed().disk).unwrap(); // already gone: fine
    }
}
