//! A machine on krunkit (macOS): gvproxy in vfkit mode, then krunkit through
//! `vmm::krunkit::Driver` (EFI boot from the machine's disk), the guest's Ready line over vsock,
//! the Podman API. State comes from krunkit's REST API and gvproxy's pidfile; stop goes through
//! the REST API.

use super::{LifecycleError, NO_NETWORK, START_TIMEOUT, STOP_TIMEOUT, StartOptions, State};
use super::{after_ready, credentials, free_port, gvproxy, tail, tunnel};
use crate::store::*;
use std::fs;
use std::time::Instant;
use vmm::gvproxy::Listen;
use vmm::krunkit::rest::Endpoint;
use vmm::krunkit::{Driver, KrunkitConfig, StartError, StopMode};

fn net(m: &MachineDir) -> Listen {
    Listen::Vfkit(m.socket(NET_SOCKET))
}

/// A unix socket only this user can reach, unless Podman must reach krunkit too.
fn rest(m: &MachineDir, spec: &Spec) -> Endpoint {
    match &spec.podman_machine {
        Some(p) => Endpoint::Loopback(p.rest_port),
        None => Endpoint::Unix(m.socket(REST_SOCKET)),
    }
}

fn config(m: &MachineDir, spec: &Spec, oem_strings: Vec<String>) -> KrunkitConfig {
    KrunkitConfig {
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        disk: m.path(DISK),
        net_socket: m.socket(NET_SOCKET),
        mac: vmm::gvproxy::GUEST_MAC.into(),
        ready_socket: m.socket(READY_SOCKET),
        console_log: m.path(CONSOLE_LOG),
        rest: rest(m, spec),
        pidfile: m.path(KRUNKIT_PID),
        shares: vec![],
        oem_strings,
    }
}

/// Stopping needs no binary: REST requests, then signals to the pidfile's process.
fn driver() -> Driver {
    Driver {
        stop_timeout: STOP_TIMEOUT,
        ..Driver::default()
    }
}

pub(super) fn state(m: &MachineDir, spec: &Spec) -> State {
    match Driver::state(&config(m, spec, vec![])) {
        Ok(vmm::krunkit::State::Stopped) => State::Stopped,
        Ok(vmm::krunkit::State::Vm(_)) => match gvproxy::live_pid(m, &net(m)) {
            Some(_) => State::Running,
            None => State::Broken(NO_NETWORK.into()),
        },
        Err(e) => State::Broken(format!("krunkit's REST API fails: {e}")),
    }
}

/// Stops leftovers of a dead run: a gvproxy without its VM, pidfiles, sockets (krunkit's own
/// leftovers are removed by `Driver::start` and `Driver::stop`).
pub(super) fn clean_stale(m: &MachineDir) {
    gvproxy::kill(m, &net(m));
    tunnel::kill(m);
    let _ = fs::remove_file(m.path(GVPROXY_PID));
    let _ = fs::remove_dir_all(&m.run_dir);
}

pub(super) fn start(m: &MachineDir, spec: &Spec, o: &StartOptions) -> Result<Run, LifecycleError> {
    // Before anything runs: a GPU machine keeps room for krunkit's Venus window.
    if spec.gpu {
        let host_ram_mib = crate::platform::host_ram_bytes() >> 20;
        vmm::krunkit::fit_memory(spec.memory_mib, host_ram_mib)?;
    }
    // A krunkit left by an interrupted start is not trusted: its guest's key was never pinned.
    driver().stop(&config(m, spec, vec![]), StopMode::Force)?;
    let _ = fs::remove_file(m.path(KNOWN_HOSTS));
    clean_stale(m);
    mkdir_private(&m.run_dir)?;
    let ssh_port = match &spec.podman_machine {
        Some(p) => p.ssh_port,
        None => free_port()?,
    };
    let run = Run {
        ssh_port,
        accel: "hvf".into(), // Hypervisor.framework, krunkit's only accelerator
    };
    m.write_json(RUN, &run)?;

    // gvproxy first: krunkit sends its vfkit handshake to gvproxy's socket at start-up.
    gvproxy::start(m, &net(m), run.ssh_port).inspect_err(|_| clean_stale(m))?;
    let _ = fs::remove_file(m.path(CONSOLE_LOG));
    let cfg = config(m, spec, credentials(m, &spec.name)?);
    let krunkit = Driver {
        binary: o.krunkit.clone(),
        ..driver()
    };
    let started = Instant::now();
    let running = krunkit
        .start(&cfg, &m.path(KRUNKIT_LOG))
        .inspect_err(|_| clean_stale(m))?;
    tracing::info!(machine = %spec.name, "vmm running");
    let host_key = running.wait_ready(START_TIMEOUT).map_err(|e| {
        // Nothing half-started stays: the VM without a pinned key would be restarted anyway.
        let _ = krunkit.stop(&cfg, StopMode::Force);
        clean_stale(m);
        ready_error(m, e)
    })?;
    let podman_timeout = o
        .podman_timeout
        .unwrap_or_else(|| START_TIMEOUT.saturating_sub(started.elapsed()));
    after_ready(m, &spec.name, &host_key, &run, podman_timeout)?;
    Ok(run)
}

/// The guest's console says why it never became Ready.
fn ready_error(m: &MachineDir, e: StartError) -> LifecycleError {
    match e {
        StartError::NotReady(t) => LifecycleError::NotReady(t, tail(&m.path(CONSOLE_LOG), 3000)),
        StartError::Died => LifecycleError::Exited("krunkit", tail(&m.path(CONSOLE_LOG), 3000)),
        other => other.into(),
    }
}

/// REST `Stop` (the guest shuts down), escalating to signals; `force`: REST `HardStop`. Then
/// gvproxy.
pub(super) fn stop(m: &MachineDir, spec: &Spec, force: bool) -> Result<(), LifecycleError> {
    let mode = if force {
        StopMode::Force
    } else {
        StopMode::Graceful
    };
    let outcome = driver().stop(&config(m, spec, vec![]), mode)?;
    tracing::info!(machine = %spec.name, ?outcome, "krunkit stopped");
    gvproxy::stop(m, &net(m));
    clean_stale(m);
    Ok(())
}
