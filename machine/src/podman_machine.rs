//! Exposes a krunkit machine to Podman on macOS as a `libkrun` Podman machine: the file
//! `~/.config/containers/podman/machine/libkrun/NAME.json` that `podman machine list/inspect/
//! stop` read, written in the schema of the podman that will read it.
//!
//! The schema is Go's encoding/json of podman's `vmconfigs.MachineConfig`, read from Podman's
//! source at every release tag from v5.2.0 to v6.0 (pkg/machine/vmconfigs, pkg/machine/define,
//! pkg/machine/apple/vfkit/helper.go, and the vendored vfkit pkg/config). Its `Version` is 1
//! throughout; what changes ([`Schema`]):
//!
//! | podman | vfkit | what differs |
//! |---|---|---|
//! | 5.2, 5.3 | 0.5.1 | `memoryBytes` holds MiB (podman passes its MiB figure unconverted); bootloader keys `EFIVariableStorePath`, `CreateVariableStore` |
//! | 5.4, 5.5 | 0.6.0 | `memoryBytes` in bytes; lower-case bootloader keys; `Ansible` (null) |
//! | 5.6 to 5.8 | 0.6.1 | `Swap` (MiB, 0) |
//! | 6.0, 6.1 | 0.6.3 | `ImportNativeCA` (false) |
//!
//! Go's decoder ignores unknown keys and matches struct keys case-insensitively (not those of
//! vfkit's `VirtualMachine`, which has its own decoder), so a file of one generation loads in
//! the others; each is still written as its podman writes it (testdata/podman-machine/).
//!
//! What Podman requires of the file, and carbon-vm keeps to:
//! - `LastUp` never zero: a zero time means first boot, when `podman machine start` would serve
//!   Ignition on vsock 1024 and wait for it. Podman sets it only on stop.
//! - `LibKrunHypervisor.KRun.Endpoint` is `http://HOST:PORT`: Podman talks to krunkit with Go's
//!   default HTTP client, over TCP only. A `unix://` endpoint makes every state query fail, and
//!   `podman machine list` fails as a whole on the first machine whose state it cannot get; an
//!   `http://` endpoint nobody serves reads as "stopped", and `podman machine start` would then
//!   boot a second VM on the running machine's disk. So a machine exposed to Podman has krunkit
//!   serve its REST API on `127.0.0.1:PORT`, fixed at create, as Podman does for its own
//!   machines: Podman sees the true state, refuses to start a running machine, and stops it with
//!   `POST /vm/state {"state":"Stop"}`. The price is Podman's own: any local user can reach that
//!   port and stop the VM. Machines not exposed keep the unix socket.
//! - `KRun.LogLevel` is a logrus level name (a number makes the file unloadable); `VirtualMachine`
//!   and its bootloader are present (podman dereferences both at start).
//! - `GvProxy` is what podman itself stores (zeros: it builds gvproxy's command afresh at start).
//!
//! Podman derives the sockets it uses (ready, gvproxy, API) from its own runtime directory and
//! the machine name; they are not in this file.

use crate::store::{DISK, EFI_VARS, KEY, MachineDir, PodmanMachine, Spec};
use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde_json::{Value, json};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The machine-config schema version every podman from 5.2 to 6.1 writes and reads.
pub const CONFIG_VERSION: u32 = 1;

/// The podman releases whose machine-file schema was read from their source.
pub const SUPPORTED: &str = "5.2 to 6.1";

/// The generations of the machine file (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Schema {
    /// podman 5.2, 5.3 (vfkit 0.5.1).
    V5_2,
    /// podman 5.4, 5.5 (vfkit 0.6.0).
    V5_4,
    /// podman 5.6 to 5.8 (vfkit 0.6.1).
    V5_6,
    /// podman 6.0, 6.1 (vfkit 0.6.3).
    V6_0,
}

impl Schema {
    /// The schema of podman `major.minor`. A 6.x after 6.1 gets 6.1's: podman keeps the
    /// machine file's `Version` within a major, and fields a later minor adds are optional to
    /// its decoder. Earlier than 5.2 (no libkrun machines) and later majors are refused.
    pub fn of(major: u32, minor: u32) -> Option<Schema> {
        match (major, minor) {
            (5, 2 | 3) => Some(Schema::V5_2),
            (5, 4 | 5) => Some(Schema::V5_4),
            (5, 6..=8) => Some(Schema::V5_6),
            (6, _) => Some(Schema::V6_0),
            _ => None,
        }
    }
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
    /// Host folders shared into the guest: (host, guest, virtio-fs tag).
    pub mounts: Vec<(PathBuf, PathBuf, String)>,
    pub uid: i64,
    pub created: DateTime<FixedOffset>,
    /// When it last started; never the zero time (that would make Podman serve Ignition).
    pub last_up: DateTime<FixedOffset>,
}

/// Go's `time.Time` text: RFC 3339 with nanoseconds when there are any.
fn go_time(t: &DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The machine file as podman of `schema` writes it.
pub fn config(m: &Exposed, schema: Schema) -> Value {
    let path = |p: &Path| p.display().to_string();
    let (memory_field, store_key, create_key) = match schema {
        // vfkit 0.5.1 stores the number podman passes, which is MiB.
        Schema::V5_2 => (
            u64::from(m.memory_mib),
            "EFIVariableStorePath",
            "CreateVariableStore",
        ),
        _ => (
            u64::from(m.memory_mib) << 20,
            "efiVariableStorePath",
            "createVariableStore",
        ),
    };
    let mounts: Vec<Value> = m
        .mounts
        .iter()
        .map(|(host, guest, tag)| {
            json!({
                "OriginalInput": format!("{}:{}", path(host), path(guest)),
                "ReadOnly": false,
                "Source": path(host),
                "Tag": tag,
                "Target": path(guest),
                "Type": "virtiofs",
                "VSockNumber": null,
            })
        })
        .collect();
    let mut c = json!({
        "Created": go_time(&m.created),
        "GvProxy": {"Debug": false, "MTU": 0, "LogFile": "", "PidFile": "", "SSHPort": 0},
        "HostUser": {"Rootful": true, "UID": m.uid, "HostUserModified": false},
        "LastUp": go_time(&m.last_up),
        // Go writes a nil slice as null.
        "Mounts": if mounts.is_empty() { Value::Null } else { Value::Array(mounts) },
        "Name": m.name,
        "Resources": {
            "CPUs": m.cpus,
            "DiskSize": m.disk_gib,
            "Memory": m.memory_mib,
            "USBs": null,
        },
        "SSH": {
            "IdentityPath": path(&m.identity),
            "Port": m.ssh_port,
            "RemoteUsername": "root",
        },
        "Version": CONFIG_VERSION,
        "ImagePath": {"Path": path(&m.disk)},
        "LibKrunHypervisor": {
            "KRun": {
                "LogLevel": "panic",
                "Endpoint": format!("http://127.0.0.1:{}", m.rest_port),
                "BinaryPath": null,
                "VirtualMachine": {
                    "vcpus": m.cpus,
                    "memoryBytes": memory_field,
                    // krunkit ignores it (it always boots its own EFI firmware); podman needs one.
                    "bootloader": {
                        "kind": "efiBootloader",
                        store_key: path(&m.efi_variable_store),
                        create_key: true,
                    },
                },
                "Rosetta": false,
            },
        },
        "Starting": false,
        "Rosetta": false,
    });
    let o = c.as_object_mut().expect("an object");
    if schema >= Schema::V5_4 {
        o.insert("Ansible".into(), Value::Null);
    }
    if schema >= Schema::V5_6 {
        o.insert("Swap".into(), 0.into());
    }
    if schema >= Schema::V6_0 {
        o.insert("ImportNativeCA".into(), false.into());
    }
    c
}

#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    #[error("cannot run podman (--podman-machine needs podman {SUPPORTED})")]
    NoPodman(#[source] io::Error),
    #[error("`podman --version` printed {0:?}, not a podman version")]
    Unparseable(String),
    #[error(
        "podman {0} is not supported for --podman-machine (supported: podman {SUPPORTED}, \
         whose machine files carbon-vm knows)"
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

/// The schema of the podman whose `--version` printed `output` (`podman version 5.2.1`).
pub fn schema_of(output: &str) -> Result<Schema, ExposeError> {
    let v = output
        .trim()
        .strip_prefix("podman version ")
        .ok_or_else(|| ExposeError::Unparseable(output.trim().into()))?;
    let mut parts = v.split(['.', '-', '+']);
    let mut num = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (num(), num()) {
        (Some(major), Some(minor)) => {
            Schema::of(major, minor).ok_or_else(|| ExposeError::Unsupported(v.into()))
        }
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
    let schema = schema_of(podman_version)?;
    if m.last_up.timestamp() <= 0 {
        return Err(ExposeError::NeverStarted);
    }
    let path = dir.join(format!("{}.json", m.name));
    let io = |e| ExposeError::Io(path.clone(), e);
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(&serde_json::to_vec_pretty(&config(m, schema)).expect("serializes"))
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
        mounts: spec
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (v.host.clone(), v.guest.clone(), crate::volumes::tag(i)))
            .collect(),
        uid: rustix::process::getuid().as_raw().into(),
        created,
        last_up: created,
    };
    let dir = p.file.parent().expect("a file in Podman's store");
    write(dir, podman_version, &exposed)
}

/// Removes the machine file if it still describes the machine on `disk`: one Podman (or the
/// user) replaced is left alone. Podman rewrites the file on every start and stop, in its own
/// schema: only `ImagePath.Path` is read.
pub fn remove(file: &Path, disk: &Path) -> Result<(), ExposeError> {
    let io = |e| ExposeError::Io(file.to_owned(), e);
    let bytes = match std::fs::read(file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(io)?,
    };
    let ours = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["ImagePath"]["Path"].as_str().map(PathBuf::from))
        .is_some_and(|p| p == disk);
    if ours {
        std::fs::remove_file(file).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file of each podman generation, for the machine of [`exposed`].
    const GOLDEN: [(Schema, &str); 4] = [
        (
            Schema::V5_2,
            include_str!("../testdata/podman-machine/libkrun-5.2-5.3.json"),
        ),
        (
            Schema::V5_4,
            include_str!("../testdata/podman-machine/libkrun-5.4-5.5.json"),
        ),
        (
            Schema::V5_6,
            include_str!("../testdata/podman-machine/libkrun-5.6-5.8.json"),
        ),
        (
            Schema::V6_0,
            include_str!("../testdata/podman-machine/libkrun-6.0-6.1.json"),
        ),
    ];

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
            mounts: vec![(
                "/Users/me".into(),
                "/Users/me".into(),
                crate::volumes::tag(0),
            )],
            uid: 501,
            created: t("2025-11-21T10:00:00+01:00"),
            last_up: t("2025-11-21T10:05:00+01:00"),
        }
    }

    #[test]
    fn each_podman_generation_gets_its_own_schema() {
        for (schema, golden) in GOLDEN {
            let want: Value = serde_json::from_str(golden).unwrap();
            let got = config(&exposed(), schema);
            assert_eq!(
                got,
                want,
                "{schema:?}:\n{}",
                serde_json::to_string_pretty(&got).unwrap()
            );
        }
    }

    #[test]
    fn every_minor_from_5_2_to_6_1_is_mapped_and_later_majors_refused() {
        let cases = [
            ("5.2.0", Schema::V5_2),
            ("5.3.2", Schema::V5_2),
            ("5.4.0-rc1", Schema::V5_4),
            ("5.5.2", Schema::V5_4),
            ("5.6.2", Schema::V5_6),
            ("5.7.1", Schema::V5_6),
            ("5.8.6", Schema::V5_6),
            ("6.0.0", Schema::V6_0),
            ("6.1.2", Schema::V6_0),
            ("6.3.0", Schema::V6_0),
        ];
        for (v, want) in cases {
            assert_eq!(
                schema_of(&format!("podman version {v}\n")).unwrap(),
                want,
                "{v}"
            );
        }
        for refused in ["4.9.4", "5.1.2", "7.0.0"] {
            let e = schema_of(&format!("podman version {refused}")).unwrap_err();
            assert!(matches!(e, ExposeError::Unsupported(_)), "{refused}");
            assert!(e.to_string().contains("5.2 to 6.1"), "{e}");
        }
        assert!(matches!(
            schema_of("docker 27.0"),
            Err(ExposeError::Unparseable(_))
        ));
    }

    #[test]
    fn memory_is_mib_for_vfkit_0_5_and_bytes_after() {
        let mem = |s| {
            config(&exposed(), s)["LibKrunHypervisor"]["KRun"]["VirtualMachine"]["memoryBytes"]
                .as_u64()
                .unwrap()
        };
        assert_eq!(mem(Schema::V5_2), 8192);
        assert_eq!(mem(Schema::V5_4), 8192 << 20);
    }

    #[test]
    fn no_mounts_is_null_as_go_writes_a_nil_slice() {
        let mut m = exposed();
        m.mounts.clear();
        assert_eq!(config(&m, Schema::V6_0)["Mounts"], Value::Null);
    }

    #[test]
    fn writes_atomically_and_never_a_first_boot() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "podman version 5.5.1", &exposed()).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
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
    fn remove_takes_only_the_file_describing_our_disk_in_any_schema() {
        let dir = tempfile::tempdir().unwrap();
        let ours = write(dir.path(), "podman version 5.2.5", &exposed()).unwrap();
        remove(&ours, Path::new("/elsewhere/disk.raw")).unwrap();
        assert!(ours.exists());
        // As podman rewrites it on a stop: its own fields, LastUp moved on.
        let mut v: Value = serde_json::from_slice(&std::fs::read(&ours).unwrap()).unwrap();
        v["LastUp"] = "2025-11-22T08:00:00.123456789+01:00".into();
        v["Swap"] = 0.into();
        std::fs::write(&ours, serde_json::to_vec(&v).unwrap()).unwrap();
        remove(&ours, &exposed().disk).unwrap();
        assert!(!ours.exists());
        remove(&ours, &exposed().disk).unwrap(); // already gone: fine
    }
}
