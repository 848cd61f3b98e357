//! Exposes a krunkit machine to Podman on macOS as a `libkrun` Podman machine: the file
//! `~/.config/containers/podman/machine/libkrun/NAME.json` that `podman machine list/inspect/
//! stop` read, written in the schema of the podman that will read it.
//!
//! Podman's source read (github.com/podman-container-tools/podman, formerly containers/podman):
//! every release tag from v5.2.0 to v5.8.3, and v6.0.0-rc1, the newest tag a snapshot holds,
//! whose pkg/machine and cmd/podman/machine are those of main e2a4453 (2026-06-11), the newest
//! main read. Podman 6.1 (released 2026-09) was not read: it is judged to be 6.0 where it
//! matters here, because every rule below stood unchanged from 5.4 through that main, and the
//! file's `Version` stays within a major. Where a later podman differs, what carbon-vm asks it
//! (`podman machine list --format json`) fails or disagrees visibly, and `start` refuses.
//!
//! The schema is Go's encoding/json of podman's `vmconfigs.MachineConfig` (pkg/machine/vmconfigs,
//! pkg/machine/define, pkg/machine/apple/vfkit/helper.go, and the vendored vfkit pkg/config). Its
//! `Version` is 1 throughout; what changes ([`Schema`]):
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
//!
//! What an exposed machine costs the user's own Podman machines, and what `start` keeps
//! ([`check_start`]):
//! - One machine at a time. `podman machine start` takes its start lock (`machine-start.lock` in
//!   its data dir, pkg/machine/lock), then refuses while any machine it lists runs
//!   (pkg/machine/shim/host.go `checkExclusiveActiveVM`): in 5.2 and 5.3 any of the same provider
//!   (libkrun), from 5.4 any of every provider (applehv too). So while an exposed machine runs,
//!   the user's own machines do not start, and carbon-vm keeps the rule from its side: `start`
//!   takes the same lock and refuses while Podman lists another machine running.
//! - Podman reads this file and queries its endpoint where it did not before: from 5.4 every
//!   `podman machine start` loads and state-queries every provider's files; in 6.0 `podman
//!   machine list` always lists every provider, and every name lookup (`inspect`, `stop`, `ssh`,
//!   `rm`, ...) loads every provider's files. The query (pkg/machine/apple/vfkit/helper.go, the
//!   same in every tag read) is `GET /vm/state` with Go's default client, which has no time
//!   limit: a refused connection reads as stopped; an answer that is not krunkit's JSON, or a
//!   closed connection, is an error that fails the whole list (or start); a listener that never
//!   answers hangs them; another krunkit's answer is taken for this machine's state (and `podman
//!   machine stop` would stop that VM). So the REST port must be krunkit's of this machine or
//!   refused: `start` refuses a port something else answers, and the port is closed again when
//!   the machine stops (krunkit's exit).

use crate::store::{DISK, EFI_VARS, KEY, MachineDir, PodmanMachine, SPEC, Spec, VMM_PID};
use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde_json::{Value, json};
use std::io;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The machine-config schema version every podman from 5.2 to 6.1 writes and reads.
pub const CONFIG_VERSION: u32 = 1;

/// The podman releases whose machine-file schema was read from their source.
pub const SUPPORTED: &str = "5.2 to 6.x";

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
    #[error(
        "Podman machine {other} ({provider}) is running, and Podman runs one machine at a time \
         (from podman 5.4 whatever the provider): it would not start {name} beside it, so \
         carbon-vm does not either; stop {other} first ({how})",
        how = stop_command(other, *carbon_vm)
    )]
    OtherRunning {
        name: String,
        other: String,
        provider: String,
        /// `other` is a machine carbon-vm exposed.
        carbon_vm: bool,
    },
    #[error(
        "another program answers on 127.0.0.1:{port}, the REST port of {name} in Podman's machine \
         file: Podman would take its answers for {name}'s state (and send it `podman machine \
         stop`), so {name} is not started there; stop that program (a krunkit that `podman \
         machine start {name}` launched stops with `podman machine stop {name}`) and start again"
    )]
    RestPortTaken { name: String, port: u16 },
    #[error("cannot check 127.0.0.1:{0}, the machine's REST port in Podman's machine file")]
    RestPortUnchecked(u16, #[source] io::Error),
    #[error(
        "`{0}` did not finish within {1:?}, so carbon-vm cannot tell whether another Podman \
         machine runs (Podman waits without a limit on a machine whose REST endpoint accepts and \
         never answers: `podman machine list` hangs the same way)"
    )]
    PodmanHung(&'static str, Duration),
    #[error(
        "`podman machine list` failed, so carbon-vm cannot tell whether another Podman machine \
         runs (`podman machine start` fails the same way): {0}"
    )]
    ListFailed(String),
    #[error(
        "Podman is starting a machine (it holds {0} for {1:?} now); start again once it is up \
         (Podman runs one machine at a time)"
    )]
    StartLocked(PathBuf, Duration),
}

impl exit_class::Classify for ExposeError {
    fn class(&self) -> Option<exit_class::Class> {
        use exit_class::Code;
        Some(match self {
            ExposeError::NoPodman(_) | ExposeError::Unparseable(_) | ExposeError::Unsupported(_) => {
                Code::Host.hint(
                    "without --podman-machine, `podman -c NAME` reaches the machine through the connection `start` registers",
                )
            }
            ExposeError::Exists(_) => Code::Failure
                .hint("choose another machine name; `podman machine ls` lists Podman's"),
            _ => Code::Failure.bare(),
        })
    }
}

fn stop_command(machine: &str, carbon_vm: bool) -> String {
    if carbon_vm {
        format!("`carbon-vm stop {machine}`")
    } else {
        format!("`podman machine stop {machine}`")
    }
}

/// `podman --version` of the podman on PATH.
pub fn podman_version() -> Result<String, ExposeError> {
    let out = std::process::Command::new("podman")
        .arg("--version")
        .output()
        .map_err(ExposeError::NoPodman)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The version `podman --version` printed (`podman version 5.2.1`): the text, major, minor.
fn version_of(output: &str) -> Result<(&str, u32, u32), ExposeError> {
    let unparseable = || ExposeError::Unparseable(output.trim().into());
    let v = output
        .trim()
        .strip_prefix("podman version ")
        .ok_or_else(unparseable)?;
    let mut parts = v.split(['.', '-', '+']);
    let mut num = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (num(), num()) {
        (Some(major), Some(minor)) => Ok((v, major, minor)),
        _ => Err(unparseable()),
    }
}

/// The schema of the podman whose `--version` printed `output` (`podman version 5.2.1`).
pub fn schema_of(output: &str) -> Result<Schema, ExposeError> {
    let (v, major, minor) = version_of(output)?;
    Schema::of(major, minor).ok_or_else(|| ExposeError::Unsupported(v.into()))
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
    let data = serde_json::to_vec_pretty(&config(m, schema)).expect("serializes");
    crate::atomic::write(&path, &data, None, false).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => ExposeError::Exists(path.clone()),
        _ => io(e),
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

/// How long `start` waits for each podman command it runs (`--version`, `machine list`).
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `start` waits for Podman's start lock: a `podman machine start` holds it until its
/// machine is up.
pub const START_LOCK_WAIT: Duration = Duration::from_secs(120);
/// How long a connection to the REST port may take before the port counts as taken (a listener
/// that does not accept hangs Podman's query as surely as one that does not answer).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);
/// `VMType` of the machines `podman machine list` lists from libkrun files.
pub const LIBKRUN: &str = "libkrun";

/// Which machines `podman machine start` refuses to start beside, by podman version
/// (pkg/machine/shim/host.go `checkExclusiveActiveVM`, called for every provider that
/// `RequireExclusiveActive`: applehv, libkrun, qemu, hyperv; not wsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusive {
    /// podman 5.2, 5.3: a running machine of the provider being started (libkrun).
    SameProvider,
    /// podman 5.4 to 5.8: one of any provider; `machine list` shows them all with
    /// `--all-providers` (otherwise only the default provider's).
    AnyProviderFlag,
    /// podman 6: one of any provider; `machine list` always shows them all (and has no
    /// `--all-providers` any more).
    AnyProvider,
}

impl Exclusive {
    /// The rule of podman `major.minor`; none before 5.2, which has no libkrun machines (so
    /// cannot see an exposed one, nor start one). A major after 6 is taken for 6.
    pub fn of(major: u32, minor: u32) -> Option<Exclusive> {
        match (major, minor) {
            (5, 2 | 3) => Some(Exclusive::SameProvider),
            (5, 4..) => Some(Exclusive::AnyProviderFlag),
            (6.., _) => Some(Exclusive::AnyProvider),
            _ => None,
        }
    }

    /// The `podman` arguments that list the machines this rule counts, and the
    /// `CONTAINERS_MACHINE_PROVIDER` they need.
    pub fn list_command(self) -> (&'static [&'static str], Option<&'static str>) {
        match self {
            Exclusive::SameProvider => (&["machine", "list", "--format", "json"], Some(LIBKRUN)),
            Exclusive::AnyProviderFlag => (
                &["machine", "list", "--all-providers", "--format", "json"],
                None,
            ),
            Exclusive::AnyProvider => (&["machine", "list", "--format", "json"], None),
        }
    }
}

/// A machine as `podman machine list --format json` shows it (cmd/podman/machine/list.go,
/// `entities.ListReporter`: these fields in every version read). `Running` is Podman's state
/// query answering "running".
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Listed {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Running", default)]
    pub running: bool,
    #[serde(rename = "VMType", default)]
    pub vm_type: String,
}

/// `podman machine list --format json`'s output.
pub fn parse_list(stdout: &[u8]) -> Result<Vec<Listed>, serde_json::Error> {
    Ok(serde_json::from_slice::<Option<Vec<Listed>>>(stdout)?.unwrap_or_default())
}

/// The running machine for which Podman would refuse to start `name`: any but `name`'s own
/// libkrun file (the machine itself is not "another").
pub fn blocker<'a>(listed: &'a [Listed], name: &str) -> Option<&'a Listed> {
    listed
        .iter()
        .find(|l| l.running && !(l.name == name && l.vm_type == LIBKRUN))
}

/// The machines `podman` lists that its `machine start` would count (see [`Exclusive`]), each
/// command bounded by `limit`. `None` where nothing can see or start a Podman machine: no
/// podman on PATH, or a podman before 5.2.
pub fn podman_machines(podman: &Path, limit: Duration) -> Result<Option<Vec<Listed>>, ExposeError> {
    let version = match crate::child::output_within(Command::new(podman).arg("--version"), limit) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!("podman is not installed: no Podman machine can run beside this one");
            return Ok(None);
        }
        Err(e) => return Err(ExposeError::NoPodman(e)),
        Ok(None) => return Err(ExposeError::PodmanHung("podman --version", limit)),
        Ok(Some(o)) => String::from_utf8_lossy(&o.stdout).into_owned(),
    };
    let (v, major, minor) = version_of(&version)?;
    let Some(rule) = Exclusive::of(major, minor) else {
        tracing::warn!(
            version = v,
            "this podman has no libkrun machines: it lists none"
        );
        return Ok(None);
    };
    let (args, provider) = rule.list_command();
    let mut c = Command::new(podman);
    c.args(args);
    if let Some(p) = provider {
        c.env("CONTAINERS_MACHINE_PROVIDER", p);
    }
    let o = match crate::child::output_within(&mut c, limit) {
        Err(e) => return Err(ExposeError::NoPodman(e)),
        Ok(None) => return Err(ExposeError::PodmanHung("podman machine list", limit)),
        Ok(Some(o)) => o,
    };
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(ExposeError::ListFailed(format!(
            "{}: {}",
            o.status,
            err.trim()
        )));
    }
    parse_list(&o.stdout)
        .map(Some)
        .map_err(|e| ExposeError::ListFailed(format!("its output is not a machine list: {e}")))
}

/// Whether something accepts connections on 127.0.0.1:`port` (Podman's query would reach it).
/// Nothing is sent to it.
pub fn rest_port_answered(port: u16) -> io::Result<bool> {
    match TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), PROBE_TIMEOUT) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(true),
        Err(e) => Err(e),
    }
}

/// Podman's start lock (pkg/machine/lock `GetMachineStartLock`): `containers/podman/machine/
/// machine-start.lock` under its data home (`$XDG_DATA_HOME`, else `$HOME/.local/share`, as
/// Podman's homedir.GetDataHome reads them), an fcntl write lock on the whole file
/// (containers/storage's lockfile).
pub fn start_lock_path() -> Option<PathBuf> {
    let nonempty = |v: &std::ffi::OsString| !v.is_empty();
    let data = match std::env::var_os("XDG_DATA_HOME").filter(nonempty) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(nonempty)?).join(".local/share"),
    };
    Some(data.join("containers/podman/machine/machine-start.lock"))
}

/// Takes Podman's start lock at `path`, waiting at most `wait` for a `podman machine start`
/// that holds it. Held while the file stays open.
pub fn take_start_lock(path: &Path, wait: Duration) -> Result<std::fs::File, ExposeError> {
    let io = |e| ExposeError::Io(path.to_owned(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let f = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false),
        0o644,
    )
    .open(path)
    .map_err(io)?;
    let deadline = Instant::now() + wait;
    loop {
        use rustix::fs::{FlockOperation, fcntl_lock};
        match fcntl_lock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(f),
            // Held by another process (POSIX allows either answer).
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => {}
            Err(e) => return Err(io(e.into())),
        }
        if Instant::now() >= deadline {
            return Err(ExposeError::StartLocked(path.to_owned(), wait));
        }
        std::thread::sleep(POLL);
    }
}

/// What `start` holds while it starts an exposed machine: Podman's start lock, so that no
/// `podman machine start` checks its rule halfway through (it waits, then finds this machine
/// running). Released when dropped.
#[derive(Debug)]
#[must_use = "Podman's start lock is held until this is dropped"]
pub struct StartGuard {
    _lock: Option<std::fs::File>,
}

/// Before `start` boots a machine exposed to Podman, keeps Podman's rules (see the module's
/// comment): takes Podman's start lock; refuses a REST port another program answers; refuses
/// while Podman lists another machine running (`podman machine list`, bounded by
/// [`PODMAN_TIMEOUT`]; without podman on PATH nothing can run a Podman machine, and the check
/// is skipped with a warning in the log). A machine whose own krunkit runs is `start`'s to
/// confirm or restart: nothing is checked. Machines not exposed are not Podman's business.
pub fn check_start(m: &MachineDir, spec: &Spec) -> Result<StartGuard, ExposeError> {
    let Some(p) = &spec.podman_machine else {
        return Ok(StartGuard { _lock: None });
    };
    let endpoint = vmm::krunkit::rest::Endpoint::Loopback(p.rest_port);
    if vmm::process::live_pid(&m.path(VMM_PID), &endpoint.uri()).is_some() {
        return Ok(StartGuard { _lock: None });
    }
    let lock = match start_lock_path() {
        Some(path) => Some(take_start_lock(&path, START_LOCK_WAIT)?),
        None => None,
    };
    match rest_port_answered(p.rest_port) {
        Ok(false) => {}
        Ok(true) => {
            return Err(ExposeError::RestPortTaken {
                name: spec.name.clone(),
                port: p.rest_port,
            });
        }
        Err(e) => return Err(ExposeError::RestPortUnchecked(p.rest_port, e)),
    }
    let listed = podman_machines(Path::new("podman"), PODMAN_TIMEOUT)?.unwrap_or_default();
    if let Some(b) = blocker(&listed, &spec.name) {
        let ours = b.vm_type == LIBKRUN
            && m.dir
                .parent()
                .is_some_and(|machines| machines.join(&b.name).join(SPEC).is_file());
        return Err(ExposeError::OtherRunning {
            name: spec.name.clone(),
            other: b.name.clone(),
            provider: b.vm_type.clone(),
            carbon_vm: ours,
        });
    }
    Ok(StartGuard { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Stdio;

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
            assert!(e.to_string().contains("5.2 to 6.x"), "{e}");
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

    /// `podman machine list --all-providers --format json` of podman 5.4.2 (Debian trixie) with
    /// one QEMU machine running, plus what a Mac's lists: libkrun and applehv machines.
    const LISTED: &str = r#"[
        {"Name": "mine", "Default": false, "Created": "2026-01-01T00:00:00Z", "Running": true,
         "Starting": false, "LastUp": "2026-01-01T00:00:00Z", "Stream": "default",
         "VMType": "qemu", "CPUs": 1, "Memory": "536870912", "DiskSize": "10737418240",
         "Port": 40022, "RemoteUsername": "core", "IdentityPath": "", "UserModeNetworking": true}
    ]"#;

    fn listed(name: &str, vm_type: &str, running: bool) -> Listed {
        Listed {
            name: name.into(),
            running,
            vm_type: vm_type.into(),
        }
    }

    #[test]
    fn podmans_rule_by_version() {
        let cases = [
            ((5, 2), Some(Exclusive::SameProvider)),
            ((5, 3), Some(Exclusive::SameProvider)),
            ((5, 4), Some(Exclusive::AnyProviderFlag)),
            ((5, 8), Some(Exclusive::AnyProviderFlag)),
            ((6, 0), Some(Exclusive::AnyProvider)),
            ((6, 1), Some(Exclusive::AnyProvider)),
            ((7, 0), Some(Exclusive::AnyProvider)),
            ((5, 1), None),
            ((4, 9), None),
        ];
        for ((major, minor), want) in cases {
            assert_eq!(Exclusive::of(major, minor), want, "{major}.{minor}");
        }
        // 5.2 and 5.3 count only libkrun machines: listed with that provider as the default.
        assert_eq!(
            Exclusive::SameProvider.list_command(),
            (
                &["machine", "list", "--format", "json"][..],
                Some("libkrun")
            )
        );
        // 5.4 to 5.8 list other providers' machines only when asked; 6.0 dropped the flag.
        assert!(
            Exclusive::AnyProviderFlag
                .list_command()
                .0
                .contains(&"--all-providers")
        );
        assert!(
            !Exclusive::AnyProvider
                .list_command()
                .0
                .contains(&"--all-providers")
        );
    }

    #[test]
    fn another_running_machine_of_any_provider_blocks_but_this_one_does_not() {
        let podman = parse_list(LISTED.as_bytes()).unwrap();
        assert_eq!(podman, [listed("mine", "qemu", true)]);
        assert_eq!(blocker(&podman, "dev"), Some(&podman[0]));
        assert_eq!(parse_list(b"[]\n").unwrap(), []);
        assert_eq!(parse_list(b"null").unwrap(), []);
        assert!(parse_list(b"Error: something").is_err());

        let mac = [
            listed("dev", LIBKRUN, true), // this machine: not "another"
            listed("old", "applehv", false),
            listed("gpu", LIBKRUN, false),
        ];
        assert_eq!(blocker(&mac, "dev"), None);
        for other in [listed("own", "applehv", true), listed("gpu", LIBKRUN, true)] {
            let mut l = mac.to_vec();
            l.push(other.clone());
            assert_eq!(blocker(&l, "dev"), Some(&other));
        }
        // A machine of this name in another provider's store is another machine.
        let twin = [listed("dev", "applehv", true)];
        assert_eq!(blocker(&twin, "dev"), Some(&twin[0]));

        let e = ExposeError::OtherRunning {
            name: "dev".into(),
            other: "own".into(),
            provider: "applehv".into(),
            carbon_vm: false,
        };
        assert!(
            e.to_string()
                .contains("Podman machine own (applehv) is running")
                && e.to_string().contains("`podman machine stop own`"),
            "{e}"
        );
        let e = ExposeError::OtherRunning {
            name: "dev".into(),
            other: "gpu".into(),
            provider: LIBKRUN.into(),
            carbon_vm: true,
        };
        assert!(e.to_string().contains("`carbon-vm stop gpu`"), "{e}");
    }

    /// A stub podman: `--version` prints `version`; `machine list` runs `list`, after logging
    /// its arguments and CONTAINERS_MACHINE_PROVIDER to `args.log`.
    fn stub_podman(dir: &Path, version: &str, list: &str) -> PathBuf {
        let path = dir.join("podman");
        let log = dir.join("args.log");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n\
                 if [ \"$1\" = --version ]; then echo 'podman version {version}'; exit 0; fi\n\
                 echo \"$* provider=$CONTAINERS_MACHINE_PROVIDER\" >>'{log}'\n{list}\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    }

    #[test]
    fn podman_is_asked_as_its_version_checks_and_never_waited_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("args.log");
        let limit = Duration::from_secs(10);
        let list = format!("cat <<'EOF'\n{LISTED}\nEOF");
        for (version, args) in [
            ("5.3.2", "machine list --format json provider=libkrun"),
            (
                "5.4.2",
                "machine list --all-providers --format json provider=",
            ),
            ("6.0.0", "machine list --format json provider="),
        ] {
            let _ = std::fs::remove_file(&log);
            let podman = stub_podman(dir.path(), version, &list);
            let got = podman_machines(&podman, limit).unwrap().unwrap();
            assert_eq!(got, [listed("mine", "qemu", true)], "{version}");
            assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), args);
        }

        // A podman before 5.2 has no libkrun machines; none at all is no Podman machine.
        let podman = stub_podman(dir.path(), "5.1.2", "exit 99");
        assert_eq!(podman_machines(&podman, limit).unwrap(), None);
        let missing = dir.path().join("nowhere/podman");
        assert_eq!(podman_machines(&missing, limit).unwrap(), None);

        // Podman's own failure (a machine whose state it cannot get) is named, not guessed at.
        let podman = stub_podman(
            dir.path(),
            "5.5.1",
            "echo 'Error: unknown machine state: ' >&2; exit 125",
        );
        let e = podman_machines(&podman, limit).unwrap_err();
        assert!(
            matches!(&e, ExposeError::ListFailed(m) if m.contains("unknown machine state")),
            "{e}"
        );
        let podman = stub_podman(dir.path(), "6.0.0", "echo 'NAME VM TYPE'");
        assert!(matches!(
            podman_machines(&podman, limit),
            Err(ExposeError::ListFailed(_))
        ));

        // A podman hung on a machine that never answers (and what it started) is killed at the
        // limit.
        let podman = stub_podman(dir.path(), "5.4.2", "sleep 600 & wait");
        let t = Instant::now();
        let e = podman_machines(&podman, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(e, ExposeError::PodmanHung("podman machine list", _)),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_rest_port_anyone_answers_is_seen_without_a_word_sent() {
        let squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = squatter.local_addr().unwrap().port();
        assert!(rest_port_answered(port).unwrap());
        let (mut conn, _) = squatter.accept().unwrap();
        let mut sent = Vec::new();
        conn.read_to_end(&mut sent).unwrap();
        assert!(sent.is_empty(), "{sent:?}");
        drop((conn, squatter));
        // Closed: what Podman reads as "stopped".
        assert!(!rest_port_answered(port).unwrap());
    }

    /// Set in the process that [`podmans_start_lock_is_waited_for_in_bounds`] starts to hold
    /// Podman's start lock (fcntl locks are per process).
    const HOLD_LOCK: &str = "CARBON_VM_TEST_HOLD_PODMAN_START_LOCK";

    #[test]
    fn podmans_start_lock_is_waited_for_in_bounds() {
        if let Some(path) = std::env::var_os(HOLD_LOCK) {
            // The holder, as `podman machine start` would be: locked until stdin closes.
            let _lock = take_start_lock(Path::new(&path), Duration::ZERO).unwrap();
            println!("locked");
            let _ = io::stdin().read_to_end(&mut Vec::new());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine/machine-start.lock");
        let mut holder = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "podman_machine::tests::podmans_start_lock_is_waited_for_in_bounds",
                "--nocapture",
            ])
            .env(HOLD_LOCK, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = io::BufReader::new(holder.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != "locked" {
            line.clear();
            let n = io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(n > 0, "the holder ended before it took the lock");
        }
        let t = Instant::now();
        let e = take_start_lock(&path, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(&e, ExposeError::StartLocked(p, _) if *p == path),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(holder.stdin.take());
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert!(holder.wait().unwrap().success(), "{rest}");
        take_start_lock(&path, Duration::from_secs(10)).unwrap();
    }
}
