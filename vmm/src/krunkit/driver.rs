//! krunkit's process lifecycle. Nothing is kept in memory between calls: the REST socket says
//! whether the VM runs, the pidfile names the process to signal when the REST API cannot stop
//! it, and every path comes from the [`KrunkitConfig`].

use super::rest::{self, Endpoint, RestError, StateChange, VmState};
use super::{InvalidConfig, KrunkitConfig, command_line};
use crate::{Capabilities, DriverKind, Limits, Vm};
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// How to run krunkit and how long to wait for it: its processes, not the driver contract
/// ([`Krunkit`] is that).
#[derive(Debug, Clone)]
pub struct Runner {
    /// The krunkit executable (a name looked up in PATH, or a path).
    pub binary: PathBuf,
    /// From spawning to the REST API answering `Running`.
    pub start_timeout: Duration,
    /// After `HardStop`, before SIGKILL; after SIGKILL, before giving up.
    pub kill_timeout: Duration,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            binary: "krunkit".into(),
            start_timeout: Duration::from_secs(30),
            kill_timeout: Duration::from_secs(10),
        }
    }
}

/// How a kill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing was running.
    Already,
    /// krunkit exited on REST `HardStop`.
    ByRequest,
    /// krunkit exited on SIGKILL.
    Killed,
}

/// What `state` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No krunkit serves this machine's REST socket.
    Stopped,
    /// krunkit runs and reports this state (e.g. [`rest::RUNNING`]).
    Vm(VmState),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("krunkit already runs this machine")]
    AlreadyRunning,
    #[error("cannot prepare {0}")]
    Prepare(PathBuf, #[source] io::Error),
    #[error("cannot run {0} (install it: {hint})", hint = super::version::INSTALL_HINT)]
    Spawn(PathBuf, #[source] io::Error),
    #[error("krunkit exited during start-up ({0}): {1}")]
    Exited(String, String),
    #[error("krunkit's REST API did not report the VM running within {0:?}")]
    NoApi(Duration),
    #[error("cannot wait for krunkit")]
    Wait(#[source] io::Error),
    #[error(transparent)]
    Rest(RestError),
}

impl From<StartError> for crate::Error {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Spawn(binary, e) => crate::Error::Missing(
                binary.display().to_string(),
                super::version::INSTALL_HINT,
                e,
            ),
            e => crate::Error::vmm("krunkit", e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Rest(RestError),
    #[error("krunkit runs but its pidfile {0} names no krunkit of this machine to signal")]
    NoPid(PathBuf),
    #[error("krunkit (pid {0}) is still running after SIGKILL")]
    Unkillable(i32),
}

impl Runner {
    /// Starts krunkit for `c`; returns once its REST API reports the VM running. krunkit's
    /// stdout and stderr (start-up errors included) are appended to `log`. The host must listen
    /// on `c.ready_socket` already (see READY_VSOCK_PORT).
    pub fn start(&self, c: &KrunkitConfig, log: &Path) -> Result<(), StartError> {
        c.validate()?;
        match rest::get_state(&c.rest) {
            Err(RestError::Gone) => {}
            Ok(_) => return Err(StartError::AlreadyRunning),
            Err(e) => return Err(StartError::Rest(e)),
        }
        remove_leftovers(c).map_err(|(p, e)| StartError::Prepare(p, e))?;
        let prepare = |e| StartError::Prepare(log.to_owned(), e);
        let out = fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(prepare)?;
        let err = out.try_clone().map_err(prepare)?;
        let log_start = out.metadata().map_err(prepare)?.len();
        let mut child = Command::new(&self.binary)
            .args(command_line(c))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0) // outlives this command, and a ^C to it
            .spawn()
            .map_err(|e| StartError::Spawn(self.binary.clone(), e))?;
        tracing::debug!(pid = child.id(), "krunkit spawned");

        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(StartError::Wait)? {
                let _ = remove_leftovers(c);
                return Err(StartError::Exited(
                    status.to_string(),
                    read_from(log, log_start),
                ));
            }
            match rest::get_state(&c.rest) {
                Ok(s) if s.state == rest::RUNNING => break,
                Ok(_) | Err(RestError::Gone) => {}
                Err(e) => tracing::debug!(error = %e, "krunkit REST not ready"),
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = remove_leftovers(c);
                return Err(StartError::NoApi(self.start_timeout));
            }
            std::thread::sleep(POLL);
        }
        reap_in_background(child);
        Ok(())
    }

    /// The machine's state, from krunkit's REST API alone.
    pub fn state(c: &KrunkitConfig) -> Result<State, RestError> {
        match rest::get_state(&c.rest) {
            Ok(s) => Ok(State::Vm(s)),
            Err(RestError::Gone) => Ok(State::Stopped),
            Err(e) => Err(e),
        }
    }

    /// Asks the guest to power down (REST `Stop`) and waits up to `within` for krunkit to exit:
    /// false if it still runs then.
    pub fn shut_down(&self, c: &KrunkitConfig, within: Duration) -> Result<bool, StopError> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match rest::change_state(&c.rest, StateChange::Stop) {
                Err(RestError::Gone) => break,
                Ok(_) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if wait_gone(&c.rest, left.min(crate::PRESS_AGAIN)) {
                        break;
                    }
                    if left <= crate::PRESS_AGAIN {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(StopError::Rest(e)),
            }
        }
        let _ = remove_leftovers(c);
        Ok(true)
    }

    /// Ends krunkit (REST `HardStop`, then SIGKILL) and removes the sockets and pidfile it
    /// leaves behind.
    pub fn kill(&self, c: &KrunkitConfig) -> Result<Stopped, StopError> {
        let outcome = self.kill_process(c)?;
        let _ = remove_leftovers(c);
        Ok(outcome)
    }

    fn kill_process(&self, c: &KrunkitConfig) -> Result<Stopped, StopError> {
        match rest::change_state(&c.rest, StateChange::HardStop) {
            Err(RestError::Gone) => return Ok(Stopped::Already),
            Ok(_) => {
                if wait_gone(&c.rest, self.kill_timeout) {
                    return Ok(Stopped::ByRequest);
                }
            }
            // krunkit runs but refused the request: a signal, then.
            Err(e) => tracing::warn!(error = %e, "krunkit refused HardStop"),
        }
        // Only the process whose command line serves this machine's REST endpoint is signalled:
        // a stale pidfile may name a PID reused by another program.
        let pid = crate::process::live_pid(&c.pidfile, &c.rest.uri())
            .ok_or_else(|| StopError::NoPid(c.pidfile.clone()))?;
        crate::process::signal(pid, crate::process::Signal::KILL);
        if wait_gone(&c.rest, self.kill_timeout) {
            Ok(Stopped::Killed)
        } else {
            Err(StopError::Unkillable(pid))
        }
    }
}

/// krunkit never removes its REST socket (nor its pidfile): a crashed run leaves them, and a
/// socket file in the way makes the next start fail. (The Ready socket is its listener's.)
fn remove_leftovers(c: &KrunkitConfig) -> Result<(), (PathBuf, io::Error)> {
    let rest_socket = match &c.rest {
        Endpoint::Unix(p) => Some(p),
        Endpoint::Loopback(_) => None,
    };
    for p in [rest_socket, Some(&c.pidfile)].into_iter().flatten() {
        match fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((p.clone(), e)),
            _ => {}
        }
    }
    Ok(())
}

/// Polls the REST endpoint until nobody serves it, at most `timeout`. True when gone.
fn wait_gone(at: &Endpoint, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(rest::get_state(at), Err(RestError::Gone)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// krunkit is our child while this process lives: reap it when it exits, so that a
/// long-lived caller keeps no zombie (a short-lived CLI just exits and leaves it to init).
fn reap_in_background(mut child: Child) {
    std::thread::spawn(move || child.wait());
}

fn read_from(log: &Path, offset: u64) -> String {
    let s = fs::read(log).unwrap_or_default();
    let from = usize::try_from(offset).unwrap_or(0).min(s.len());
    let tail = &s[from..];
    String::from_utf8_lossy(&tail[tail.len().saturating_sub(2000)..])
        .trim()
        .to_owned()
}

/// krunkit behind the driver contract: a machine's [`Vm`] as krunkit's configuration.
pub struct Krunkit {
    pub runner: Runner,
    /// krunkit's REST API on this loopback port instead of the machine's control socket, for
    /// Podman (which reaches krunkit over TCP only).
    pub rest_port: Option<u16>,
}

impl Krunkit {
    fn config(&self, vm: &Vm) -> KrunkitConfig {
        KrunkitConfig {
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            disk: vm.disk.clone(),
            net_socket: vm.net_socket.clone(),
            mac: crate::gvproxy::GUEST_MAC.into(),
            ready_socket: vm.ready_socket.clone(),
            console_log: vm.console_log.clone(),
            rest: match self.rest_port {
                Some(port) => Endpoint::Loopback(port),
                None => Endpoint::Unix(vm.control_socket.clone()),
            },
            pidfile: vm.pidfile.clone(),
            shares: vm.shares.clone(),
            oem_strings: vm.oem_strings.clone(),
        }
    }
}

impl crate::Driver for Krunkit {
    fn kind(&self) -> DriverKind {
        DriverKind::Krunkit
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            arches: &[crate::Arch::Aarch64],
            always_gpu: true,
            maps_16k_pages: true,
            traces_blobs: false,
            podman_machine: true,
        }
    }

    /// krunkit is available where `krunkit --version` names a krunkit.
    fn available(&self) -> Result<(), crate::Error> {
        super::probe(&self.runner.binary)
            .map(drop)
            .map_err(|e| crate::Error::Unavailable {
                driver: "krunkit",
                hint: "krunkit runs on macOS: brew tap slp/krun && brew install krunkit",
                source: e.into(),
            })
    }

    /// Hypervisor.framework, krunkit's only accelerator.
    fn accelerator(&self) -> &'static str {
        "hvf"
    }

    /// krunkit's own memory limit, the host's RAM, and room for the Venus window on `--gpu`
    /// machines ([`super::fit_memory`]).
    fn limits(&self, gpu: bool) -> Limits {
        let mut l = Limits::host();
        l.max_memory_mib = l.max_memory_mib.min(if gpu {
            super::GPU_MAX_MEMORY_MIB
        } else {
            super::MAX_MEMORY_MIB
        });
        l
    }

    fn check_host(&self, vm: &Vm) -> Result<(), crate::Error> {
        if vm.gpu {
            super::fit_memory(vm.memory_mib, crate::platform::host_ram_bytes() >> 20)
                .map_err(|e| crate::Error::Resources(e.into()))?;
        }
        Ok(())
    }

    fn network(&self, vm: &Vm) -> crate::gvproxy::Listen {
        crate::gvproxy::Listen::Vfkit(vm.net_socket.clone())
    }

    fn launch(&self, vm: &Vm) -> Result<(), crate::Error> {
        Ok(self.runner.start(&self.config(vm), &vm.vmm_log)?)
    }

    fn running(&self, vm: &Vm) -> Result<bool, crate::Error> {
        match Runner::state(&self.config(vm)) {
            Ok(s) => Ok(matches!(s, State::Vm(_))),
            Err(e) => Err(crate::Error::vmm("krunkit's REST API fails", e)),
        }
    }

    fn shut_down(&self, vm: &Vm, within: Duration) -> Result<bool, crate::Error> {
        self.runner
            .shut_down(&self.config(vm), within)
            .map_err(|e| crate::Error::vmm("cannot stop krunkit", e))
    }

    fn kill(&self, vm: &Vm) -> Result<(), crate::Error> {
        match self.runner.kill(&self.config(vm)) {
            Ok(outcome) => {
                tracing::info!(machine = %vm.name, ?outcome, "krunkit killed");
                Ok(())
            }
            Err(StopError::Unkillable(pid)) => Err(crate::Error::Unkillable(pid)),
            Err(e) => Err(crate::Error::vmm("cannot stop krunkit", e)),
        }
    }

    fn clean_stale(&self, vm: &Vm) {
        let c = self.config(vm);
        if matches!(Runner::state(&c), Ok(State::Stopped)) {
            let _ = remove_leftovers(&c);
        }
    }
}
