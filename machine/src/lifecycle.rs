//! start / stop / remove / state of a machine: ONE sequence for every driver (drivers.rs picks
//! the `vmm::Driver`). start: gvproxy (gvproxy.rs), the VMM, the guest's Ready line (its host key
//! pinned), the ggml device's server where the machine has it (ggml_server.rs), the SSH tunnel
//! that serves the guest's Podman API (tunnel.rs), the API's answer; on any error everything it
//! started is stopped again ([`Teardown`]).

mod control_ports;
mod drivers;
mod ggml_server;
mod gvproxy;
mod tunnel;

pub use drivers::{StartOptions, Unimplemented, driver, driver_of};
pub use ggml_server::{GgmlStatus, status as ggml_status};

use crate::store::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm::ready::{ReadyChannel, ReadyError};
use vmm::{Driver, Vm};

/// Under TCG a first boot takes minutes on a small host; KVM takes seconds.
pub const START_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a guest may take to power down before `stop` gives up and says to use --force, on
/// every driver: a stop without --force never kills (a guest writing its disk is not cut off).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `stop --force` and `rm --force` wait for a start they interrupted to let go.
const PREEMPT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum State {
    Running,
    Stopped,
    /// The VMM runs but something it needs does not.
    Broken(String),
}

/// Why a machine whose VMM runs is broken when its gvproxy does not.
const NO_NETWORK: &str = "gvproxy is not running: no network";
/// Why it is broken when its network runs but no start saw the guest Ready.
const NOT_READY: &str =
    "a start did not finish: the guest has not said Ready (`carbon-vm start` boots it again)";
/// Why it is broken when the SSH tunnel to its guest does not run.
const NO_TUNNEL: &str = "the SSH tunnel to the guest is not running: no Podman socket (nor ggml device) on the host (`carbon-vm start` repairs it; tunnel.log in the machine's dir says why it ended)";
/// Why it is broken when the ggml device's supervisor does not run.
const NO_GGML: &str = "the ggml device's server supervisor is not running (`carbon-vm start` repairs it; ggml.log in the machine's dir says why it ended)";

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    #[error(transparent)]
    Unimplemented(#[from] Unimplemented),
    #[error(transparent)]
    Invalid(#[from] crate::spec::InvalidSpec),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    #[error("cannot run {0} (install it: {1})")]
    Missing(&'static str, &'static str, #[source] std::io::Error),
    #[error("{0} exited during start-up: {1}")]
    Exited(&'static str, String),
    #[error("the guest did not signal Ready within {0:?}; console log tail:\n{1}")]
    NotReady(Duration, String),
    #[error("the guest said Ready without its SSH host key (is its image a carbon-vm guest?)")]
    NoHostKey,
    #[error("the start was interrupted by `carbon-vm stop --force`")]
    Interrupted,
    #[error("the Podman API did not answer on {0}; the tunnel's log:\n{1}")]
    NoPodman(String, String),
    #[error("gvproxy cannot listen on 127.0.0.1:{0} (the port is taken): {1}")]
    PortTaken(u16, String),
    #[error("the guest did not power down within {0:?} (`carbon-vm stop --force` kills its VMM)")]
    NoPowerdown(Duration),
    #[error("machine {0} is not running (`carbon-vm start {0}`)")]
    NotRunning(String),
    #[error("machine {0} is running (stop it first, or use --force)")]
    Running(String),
    #[error("machine {0} must be stopped to change it (`carbon-vm stop {0}`)")]
    MustStop(String),
    #[error(
        "the filesystem of {dir} has {free_mib} MiB free: too little to start the machine, whose disk, logs and sockets are written there"
    )]
    HostFull { dir: PathBuf, free_mib: u64 },
    #[error("cannot grow the root partition of {0}; the disk is unchanged")]
    GrowRoot(PathBuf, #[source] guest_image::grow::GrowError),
    #[error("--disk-size {got} GiB would shrink machine {name}'s {now} GiB disk; disks only grow")]
    Shrink { name: String, got: u32, now: u32 },
    #[error(
        "machine {0} is listed among Podman's machines, whose file fixes its resources: \
         remove it and create it again to change them"
    )]
    PodmanOwnsResources(String),
    #[error(transparent)]
    Clients(#[from] crate::clients::ClientsError),
    #[error(transparent)]
    PodmanMachine(#[from] crate::podman_machine::ExposeError),
    #[error(
        "no ggml RPC server for the ggml device ({0}): install ggml-rpc-server (Debian: llama.cpp-tools-extra) or name one in CARBON_VM_GGML_SERVER"
    )]
    NoGgmlServer(String),
    #[error("the ggml device's server supervisor did not come up; its log:\n{0}")]
    GgmlFailed(String),
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

impl exit_class::Classify for LifecycleError {
    fn class(&self) -> Option<exit_class::Class> {
        use exit_class::{Code, DOCTOR_HINT};
        use vmm::Error as V;
        Some(match self {
            LifecycleError::Vmm(V::Gpu(_)) => {
                Code::Host.hint("`carbon-vm doctor` shows what the host's Venus stack lacks")
            }
            // The error's text has the remedy (CARBON_VM_ACCEL=tcg; free space, stop --force, start).
            LifecycleError::Vmm(V::KvmFailed(_) | V::DiskFull(_)) => Code::Host.bare(),
            LifecycleError::Vmm(V::Missing(..)) | LifecycleError::Missing(..) => {
                Code::Host.hint(DOCTOR_HINT)
            }
            LifecycleError::HostFull { .. } => Code::Host.hint(
                "free space there (or put CARBON_VM_HOME on a larger filesystem), then start again",
            ),
            LifecycleError::NoGgmlServer(_) => {
                Code::Host.hint("`carbon-vm doctor` shows the ggml server it looks for")
            }
            LifecycleError::GgmlFailed(_) => Code::Failure.hint(
                "ggml.log in the machine's dir says more; on Linux the server needs unprivileged user namespaces",
            ),
            LifecycleError::Exited("gvproxy", _) => Code::Failure.hint(
                "gvproxy.log in the machine's dir (`carbon-vm inspect` shows it) says more; krunkit machines need a gvproxy that listens in vfkit mode (macOS builds do; on Linux, 0.8.9 and later; CARBON_VM_GVPROXY names another)",
            ),
            LifecycleError::NotReady(..)
            | LifecycleError::Exited(..)
            | LifecycleError::Vmm(V::Exited(..)) => Code::Failure.hint(
                "the machine's console.log (in the dir `carbon-vm inspect` shows) has the whole boot, and its vmm.log the VMM's own messages",
            ),
            LifecycleError::Vmm(V::Resources(_))
            | LifecycleError::Invalid(_)
            | LifecycleError::Shrink { .. }
            | LifecycleError::PodmanOwnsResources(_) => Code::Usage.bare(),
            LifecycleError::NoPodman(..) => Code::Failure.hint(
                "the guest booted but its Podman API did not answer, so the machine was stopped; its console.log and tunnel.log in its dir say more",
            ),
            LifecycleError::PortTaken(..) => Code::Failure
                .hint("the port is fixed in the Podman machine file; free it and start again"),
            LifecycleError::Store(s) => return s.class(),
            _ => Code::Failure.bare(),
        })
    }
}

/// The machine as its driver sees it.
fn vm(m: &MachineDir, spec: &Spec, o: &StartOptions) -> Result<Vm, LifecycleError> {
    Ok(Vm {
        name: spec.name.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        gpu: spec.gpu,
        disk: m.path(DISK),
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline: spec.cmdline.clone(),
        net_socket: m.socket(NET_SOCKET),
        ready_socket: m.socket(READY_SOCKET),
        control_socket: m.socket(CONTROL_SOCKET),
        console_log: m.path(CONSOLE_LOG),
        vmm_log: m.path(VMM_LOG),
        pidfile: m.path(VMM_PID),
        oem_strings: Vec::new(),
        shares: spec
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| vmm::Share {
                dir: v.host.clone(),
                tag: crate::volumes::tag(i),
                socket: m.socket(&format!("fs{i}.sock")),
                hidden: crate::volumes::hidden_in(&v.host, &o.state_dirs),
            })
            .collect(),
    })
}

pub fn state(m: &MachineDir, o: &StartOptions) -> State {
    let Ok(spec) = m.spec() else {
        return State::Broken("machine.json cannot be read".into());
    };
    let d = match driver(&spec, o) {
        Ok(d) => d,
        Err(e) => return State::Broken(e.to_string()),
    };
    match vm(m, &spec, o) {
        Ok(vm) => state_of(m, &spec, d.as_ref(), &vm),
        Err(e) => State::Broken(e.to_string()),
    }
}

fn state_of(m: &MachineDir, spec: &Spec, d: &dyn Driver, vm: &Vm) -> State {
    match d.running(vm) {
        Ok(false) => State::Stopped,
        Err(e) => State::Broken(format!("the VMM does not answer: {e}")),
        Ok(true) if gvproxy::live_pid(m, &d.network(vm)).is_none() => {
            State::Broken(NO_NETWORK.into())
        }
        Ok(true) if !m.path(KNOWN_HOSTS).is_file() => State::Broken(NOT_READY.into()),
        Ok(true) if tunnel::pid(m).is_none() => State::Broken(NO_TUNNEL.into()),
        Ok(true) if spec.ggml && ggml_server::pid(m).is_none() => State::Broken(NO_GGML.into()),
        Ok(true) => State::Running,
    }
}

/// Boots the machine (returns once the guest said Ready and the Podman API answers), then makes
/// it reachable by its name from Podman and docker (crate::clients; `rm` removes both).
pub fn start(
    m: &MachineDir,
    o: &StartOptions,
) -> Result<crate::clients::Registered, LifecycleError> {
    boot(m, o)?;
    Ok(crate::clients::register(m, &m.spec()?)?)
}

/// Less free space than this where the machine lives refuses a start: its logs, pidfiles and
/// the guest's first writes need some.
const MIN_FREE_TO_START: u64 = 64 << 20;

fn boot(m: &MachineDir, o: &StartOptions) -> Result<Run, LifecycleError> {
    let _lock = m.lock("start")?;
    let _ = fs::remove_file(m.path(STOP_REQUEST)); // from a stop --force that gave up
    let spec = m.spec()?;
    // Podman's one-machine rule and the REST port of an exposed machine; its start lock held.
    let _podman = crate::podman_machine::check_start(m, &spec)?;
    let d = driver(&spec, o)?;
    let vm = vm(m, &spec, o)?;
    // Up already: a start that got the guest's Ready pinned the host key (one interrupted before
    // did not, and that VM is restarted rather than trusted blindly); only the ggml device's
    // server and the tunnel may be due.
    if d.running(&vm)?
        && gvproxy::live_pid(m, &d.network(&vm)).is_some()
        && m.path(KNOWN_HOSTS).is_file()
        && let Some(run) = m.run()
    {
        if spec.ggml && ggml_server::pid(m).is_none() {
            ggml_server::start(m, o, vmm_pid(&vm)?)?;
        }
        let timeout = o.podman_timeout.unwrap_or(o.start_timeout);
        let alive = || still_starting(m, d.as_ref(), &vm);
        if tunnel::pid(m).is_none() {
            tunnel::open(m, run.ssh_port, spec.ggml, timeout, &alive)?;
        }
        wait_podman(m, timeout, &alive)?;
        return Ok(run);
    }
    teardown(m, d.as_ref(), &vm)?;
    // Before anything runs: a spec or a host that cannot work is refused, not half-started.
    crate::spec::validate(&spec, &d.limits(spec.gpu))?;
    crate::volumes::check_present(&spec.volumes, &o.state_dirs)?;
    if spec.ggml {
        ggml_server::check(o)?;
    }
    // What a share hides must be there to be covered: one made later would be the guest's.
    let mut private = fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(private.recursive(true), 0o700);
    for s in &vm.shares {
        s.hidden.iter().try_for_each(|h| private.create(h))?;
    }
    d.check_host(&vm)?;
    // On a full filesystem the guest pauses at its first write (vmm::Error::DiskFull), and
    // gvproxy fails before it can log why: said here, before anything starts.
    let free = crate::host::free_bytes(&m.dir)?;
    if free < MIN_FREE_TO_START {
        return Err(LifecycleError::HostFull {
            dir: m.dir.clone(),
            free_mib: free >> 20,
        });
    }
    // The runtime root first: a directory another user made there could hold our sockets.
    if let Some(root) = m.run_dir.parent() {
        mkdir_private(root)?;
    }
    mkdir_private(&m.run_dir)?;

    let started = Instant::now();
    let guard = Teardown {
        m,
        d: d.as_ref(),
        vm: &vm,
    };
    let run = Run {
        ssh_port: gvproxy::start(m, &o.gvproxy, &d.network(&vm), spec.podman_machine.as_ref())?,
        accel: d.accelerator().into(),
    };
    m.write_json(RUN, &run)?;
    let boot = Vm {
        oem_strings: credentials(m, &spec, &control_ports::known(m, run.ssh_port))?,
        ..vm.clone()
    };
    let ready = ReadyChannel::bind(&vm.ready_socket)?;
    // Pinned again from this boot's key (early, or at Ready): until then the machine is not up
    // (`state_of`).
    let _ = fs::remove_file(m.path(KNOWN_HOSTS));
    let _ = fs::remove_file(&vm.console_log);
    // One run per log (bounded: this run's and the last one's), so that what `start` and
    // `gpu check` point at, and the blob audit, are about this boot.
    let _ = fs::rename(&vm.vmm_log, m.path(VMM_LOG_PREVIOUS));
    d.launch(&boot)?;
    tracing::info!(machine = %spec.name, "vmm running");
    let pin = |key: &str| {
        write_atomic(
            &m.path(KNOWN_HOSTS),
            format!("{} {key}\n", crate::ssh::host_alias(&spec.name)).as_bytes(),
        )
    };
    // The guest's key comes first when sshd listens: pinned, the tunnel connects while the
    // guest's Podman starts (a failure here is the tunnel's again after Ready, then reported).
    let mut early_key = None;
    let host_key = ready
        .wait_with_key(
            o.start_timeout,
            || still_starting(m, d.as_ref(), &vm),
            |key| {
                if early_key.is_none() && pin(key).is_ok() {
                    early_key = Some(key.to_owned());
                    match tunnel::start(m, run.ssh_port, spec.ggml) {
                        Ok(()) => tracing::info!(machine = %spec.name, "early key: tunnel started"),
                        Err(e) => tracing::debug!(error = %e, "the tunnel did not start early"),
                    }
                }
            },
        )
        .map_err(|e| match e {
            ReadyError::Timeout(t) => LifecycleError::NotReady(t, console_tail(&vm.console_log)),
            ReadyError::NoHostKey => LifecycleError::NoHostKey,
            ReadyError::Stopped(e) => e,
            ReadyError::Io(e) => e.into(),
        })?;
    tracing::info!(machine = %spec.name, "guest ready");
    // Only spares the next boot a check: a start that cannot write it is no worse.
    if let Err(e) = write_atomic(&m.path(ROOT_GROWN), spec.disk_gib.to_string().as_bytes()) {
        tracing::debug!(error = %e, "root-grown not written");
    }
    if early_key.as_deref() != Some(host_key.as_str()) {
        // No early key (an older image), or another one at Ready: Ready's is the one.
        tunnel::kill(m);
        pin(&host_key)?;
    }
    // Ready promises sshd listening and the Podman API answering in the guest; a loaded TCG host
    // may still be slow to pass the first answer.
    let podman_timeout = o
        .podman_timeout
        .unwrap_or_else(|| o.start_timeout.saturating_sub(started.elapsed()));
    // The server before the tunnel, which serves its socket in the guest.
    if spec.ggml {
        ggml_server::start(m, o, vmm_pid(&vm)?)?;
    }
    let alive = || still_starting(m, d.as_ref(), &vm);
    tunnel::open(m, run.ssh_port, spec.ggml, podman_timeout, &alive)?;
    wait_podman(m, podman_timeout, &alive)?;
    tracing::info!(machine = %spec.name, "podman api answers");
    control_ports::share(m, o, run.ssh_port);
    guard.disarm();
    Ok(run)
}

/// The running VMM's PID, from its pidfile.
fn vmm_pid(vm: &Vm) -> Result<i32, LifecycleError> {
    fs::read_to_string(&vm.pidfile)?
        .trim()
        .parse()
        .map_err(|_| LifecycleError::Exited("the VMM", "its pidfile holds no PID".into()))
}

/// While a start waits (for Ready, the tunnel, the Podman API): the VMM still runs its guest
/// (not gone, not paused), gvproxy still runs, and nobody asked to stop.
fn still_starting(m: &MachineDir, d: &dyn Driver, vm: &Vm) -> Result<(), LifecycleError> {
    if m.path(STOP_REQUEST).exists() {
        return Err(LifecycleError::Interrupted);
    }
    if !d.running(vm)? {
        return Err(LifecycleError::Exited(
            d.kind().name(),
            console_tail(&vm.console_log),
        ));
    }
    if gvproxy::live_pid(m, &d.network(vm)).is_none() {
        return Err(LifecycleError::Exited(
            "gvproxy",
            tail(&m.path(GVPROXY_LOG), 2000),
        ));
    }
    Ok(())
}

/// Stops, on drop, everything a start began, unless the start finished.
struct Teardown<'a> {
    m: &'a MachineDir,
    d: &'a dyn Driver,
    vm: &'a Vm,
}

impl Teardown<'_> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if let Err(e) = teardown(self.m, self.d, self.vm) {
            tracing::warn!(error = %e, "could not stop what the failed start began");
        }
    }
}

/// Kills the VMM, gvproxy and the tunnel of this machine, whatever state they are in, and
/// forgets the run (its pinned key included: the next guest proves itself again).
fn teardown(m: &MachineDir, d: &dyn Driver, vm: &Vm) -> Result<(), LifecycleError> {
    d.kill(vm)?;
    end_run(m, d, vm);
    let _ = fs::remove_file(m.path(KNOWN_HOSTS));
    Ok(())
}

/// What outlives a VMM that ended without carbon-vm (Podman's `machine stop`, a crash): the
/// tunnel and gvproxy, killed; then the run is forgotten.
fn end_run(m: &MachineDir, d: &dyn Driver, vm: &Vm) {
    tunnel::kill(m);
    ggml_server::kill(m);
    gvproxy::kill(m, &d.network(vm));
    forget_run(m, d, vm);
}

/// Pidfiles, sockets and the runtime directory of a run that has ended.
fn forget_run(m: &MachineDir, d: &dyn Driver, vm: &Vm) {
    d.clean_stale(vm);
    let _ = fs::remove_file(m.path(GVPROXY_PID));
    let _ = fs::remove_dir_all(&m.run_dir);
}

/// Shuts the guest down (or kills its VMM with `force`), then gvproxy. `force` also interrupts a
/// start in progress.
pub fn stop(m: &MachineDir, o: &StartOptions, force: bool) -> Result<(), LifecycleError> {
    let _lock = lock_to_change(m, "stop", force)?;
    stop_locked(m, o, force)
}

fn stop_locked(m: &MachineDir, o: &StartOptions, force: bool) -> Result<(), LifecycleError> {
    let spec = m.spec()?;
    let d = driver(&spec, o)?;
    let vm = vm(m, &spec, o)?;
    if force {
        return teardown(m, d.as_ref(), &vm);
    }
    if !d.shut_down(&vm, STOP_TIMEOUT)? {
        return Err(LifecycleError::NoPowerdown(STOP_TIMEOUT));
    }
    tunnel::kill(m);
    ggml_server::kill(m);
    gvproxy::stop(m, &d.network(&vm));
    forget_run(m, d.as_ref(), &vm);
    Ok(())
}

/// The machine's lock; with `force`, a start that holds it is asked to give up (it stops what it
/// started) and waited for.
fn lock_to_change(m: &MachineDir, verb: &str, force: bool) -> Result<Lock, StoreError> {
    match m.lock(verb) {
        Err(StoreError::Busy(..)) if force => {
            write_atomic(&m.path(STOP_REQUEST), b"")?;
            let lock = m.lock_within(verb, PREEMPT_TIMEOUT);
            let _ = fs::remove_file(m.path(STOP_REQUEST));
            lock
        }
        other => other,
    }
}

/// Removes the machine directory (renamed away first, so it disappears whole), its Podman
/// connection and its Podman machine file. `force` stops a running machine first.
pub fn remove(
    store: &Store,
    m: &MachineDir,
    o: &StartOptions,
    force: bool,
) -> Result<(), LifecycleError> {
    let _lock = lock_to_change(m, "rm", force)?;
    if state(m, o) != State::Stopped {
        if !force {
            return Err(LifecycleError::Running(m.name.clone()));
        }
        stop_locked(m, o, true)?;
    }
    let spec = m.spec()?;
    // A machine whose driver has no implementation never ran: nothing to end, still removable.
    if let Ok(d) = driver(&spec, o) {
        end_run(m, d.as_ref(), &vm(m, &spec, o)?);
    }
    crate::clients::unregister(&m.name)?;
    if let Some(pm) = &spec.podman_machine {
        crate::podman_machine::remove(&pm.file, &m.path(DISK))?;
    }
    scratch::remove_aside(store.machines_dir()?, &m.name, &m.dir)?;
    Ok(())
}

/// What `set` changes; `None` keeps the current value.
#[derive(Debug, Default, Clone, Copy)]
pub struct Changes {
    pub cpus: Option<u8>,
    pub memory_mib: Option<u32>,
    pub disk_gib: Option<u32>,
}

/// Changes a stopped machine's resources, checked as `create` checks them. A disk only grows: its
/// file is lengthened (sparse, so free until the guest writes), its root partition grown to the
/// new end here, and the guest grows the filesystem on the next boot (systemd-growfs).
pub fn set(m: &MachineDir, o: &StartOptions, c: Changes) -> Result<Spec, LifecycleError> {
    let _lock = m.lock("set")?;
    if state(m, o) != State::Stopped {
        return Err(LifecycleError::MustStop(m.name.clone()));
    }
    let mut spec = m.spec()?;
    if spec.podman_machine.is_some() {
        return Err(LifecycleError::PodmanOwnsResources(m.name.clone()));
    }
    spec.cpus = c.cpus.unwrap_or(spec.cpus);
    spec.memory_mib = c.memory_mib.unwrap_or(spec.memory_mib);
    crate::spec::validate(&spec, &driver(&spec, o)?.limits(spec.gpu))?;
    let disk = m.path(DISK);
    let io = |e| StoreError::Io(disk.clone(), e);
    let f = fs::File::options().write(true).open(&disk).map_err(io)?;
    let old_len = f.metadata().map_err(io)?.len();
    if let Some(gib) = c.disk_gib {
        if gib < spec.disk_gib {
            return Err(LifecycleError::Shrink {
                name: m.name.clone(),
                got: gib,
                now: spec.disk_gib,
            });
        }
        crate::spec::validate_disk(gib, old_len)?;
        f.set_len(old_len.max(u64::from(gib) << 30)).map_err(io)?;
        f.sync_all().map_err(io)?;
        if let Err(e) = guest_image::grow::grow_root(&disk, &spec.root_partition) {
            // grow_root leaves the table as it was; the disk's length is put back too.
            let _ = f.set_len(old_len).and_then(|()| f.sync_all());
            return Err(LifecycleError::GrowRoot(disk, e));
        }
        spec.disk_gib = gib;
    }
    if let Err(e) = m.write_json(SPEC, &spec) {
        // The record keeps the old size: so does the disk again (no guest has seen the new one).
        let _ = f.set_len(old_len).and_then(|()| f.sync_all());
        return Err(e.into());
    }
    Ok(spec)
}

/// `ssh` into the running machine; the caller appends the remote command.
pub fn ssh(m: &MachineDir, o: &StartOptions) -> Result<std::process::Command, LifecycleError> {
    match (state(m, o), m.run()) {
        (State::Running, Some(run)) => Ok(crate::ssh::command(m, run.ssh_port)),
        _ => Err(LifecycleError::NotRunning(m.name.clone())),
    }
}

/// systemd credentials for the guest (SMBIOS OEM strings): root's SSH key, the hostname, and
/// carbon-vm's control ports (`control_ports::known`), the ggml device, whether the root may need
/// growing (ROOT_GROWN), the shared folders' mounts (systemd-fstab-generator reads `fstab.extra`).
fn credentials(
    m: &MachineDir,
    spec: &Spec,
    control_ports: &[u16],
) -> Result<Vec<String>, LifecycleError> {
    use base64::Engine;
    let pubkey = fs::read_to_string(m.path(&format!("{KEY}.pub")))?;
    let mut c = vec![
        format!(
            "io.systemd.credential:ssh.authorized_keys.root={}",
            pubkey.trim()
        ),
        format!("io.systemd.credential:system.hostname={}", spec.name),
        format!(
            "io.systemd.credential:carbon.control-ports={}",
            control_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ];
    if spec.ggml {
        c.push("io.systemd.credential:carbon.ggml=1".into());
    }
    if fs::read_to_string(m.path(ROOT_GROWN)).ok().as_deref() != Some(&spec.disk_gib.to_string()) {
        c.push("io.systemd.credential:carbon.grow-root=1".into());
    }
    if !spec.volumes.is_empty() {
        let fstab = crate::volumes::fstab_extra(&spec.volumes);
        c.push(format!(
            "io.systemd.credential.binary:fstab.extra={}",
            base64::engine::general_purpose::STANDARD.encode(fstab)
        ));
    }
    Ok(c)
}

/// Waits until the Podman API answers `GET /_ping` with `OK` on the machine's socket, through
/// the tunnel; `alive` fails the wait early.
fn wait_podman(
    m: &MachineDir,
    timeout: Duration,
    alive: &dyn Fn() -> Result<(), LifecycleError>,
) -> Result<(), LifecycleError> {
    let sock = m.socket(PODMAN_SOCKET);
    let ping = vmm::http::request("GET", "/_ping", None);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = vmm::http::unix(
            &sock,
            &ping,
            left.clamp(Duration::from_secs(1), Duration::from_secs(10)),
        );
        if let Ok(Some(r)) = &answer
            && r.status == 200
            && r.body == b"OK"
        {
            return Ok(());
        }
        alive()?;
        if Instant::now() > deadline {
            return Err(LifecycleError::NoPodman(
                sock.display().to_string(),
                tail(&m.path(FORWARD_LOG), 2000),
            ));
        }
        if tunnel::pid(m).is_none() {
            return Err(LifecycleError::Exited(
                "ssh (the tunnel to the guest)",
                tail(&m.path(FORWARD_LOG), 2000),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `child` serves `socket` (the file is there), at most `limit`: `Err(Some(status))`
/// when it exited first, `Err(None)` when the time ran out (it runs on; the caller ends it).
fn until_serving(
    child: &mut std::process::Child,
    socket: &Path,
    limit: Duration,
) -> std::io::Result<Result<(), Option<std::process::ExitStatus>>> {
    let deadline = Instant::now() + limit;
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            return Ok(Err(Some(status)));
        }
        if Instant::now() > deadline {
            return Ok(Err(None));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Ok(()))
}

fn console_tail(console: &Path) -> String {
    tail(console, 3000)
}

/// The last `bytes` of a log, cut at a character boundary; what the guest or a tool wrote there
/// is escaped line by line (a console carries colour codes and worse).
fn tail(path: &Path, bytes: usize) -> String {
    let s = fs::read(path).unwrap_or_default();
    let mut from = s.len().saturating_sub(bytes);
    // Skip UTF-8 continuation bytes so the cut falls between characters.
    while from < s.len() && (s[from] & 0xc0) == 0x80 {
        from += 1;
    }
    String::from_utf8_lossy(&s[from..])
        .lines()
        .map(guest_image::untrusted::escaped)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tails_start_at_a_character() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "aé€z").unwrap(); // 1 + 2 + 3 + 1 bytes
        assert_eq!(super::tail(&p, 3), "z"); // the cut falls inside '€'
        assert_eq!(super::tail(&p, 4), "€z");
        assert_eq!(super::tail(&p, 100), "aé€z");
        std::fs::write(&p, "one\n\x1b[31mred\n").unwrap();
        assert_eq!(super::tail(&p, 100), "one\n\\u{1b}[31mred");
    }
}
