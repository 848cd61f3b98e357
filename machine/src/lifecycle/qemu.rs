//! A machine on QEMU (Linux): gvproxy, then QEMU (`-daemonize`), the guest's Ready line on a
//! virtio-serial port, QMP for power-down. State comes from the pidfiles and command lines.

use super::{LifecycleError, NO_NETWORK, START_TIMEOUT, STOP_TIMEOUT, StartOptions, State};
use super::{after_ready, credentials, free_port, gvproxy, tail, tunnel};
use crate::process::{self, Signal};
use crate::store::*;
use std::fs;
use std::io::BufRead;
use std::io::BufReader;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmm::gvproxy::Listen;

fn net(m: &MachineDir) -> Listen {
    Listen::Qemu(m.socket(NET_SOCKET))
}

fn qemu_marker(m: &MachineDir) -> String {
    format!("file={},", m.path(DISK).display())
}

pub(super) fn state(m: &MachineDir) -> State {
    let qemu = process::live_pid(&m.path(QEMU_PID), &qemu_marker(m));
    let gv = gvproxy::live_pid(m, &net(m));
    match (qemu, gv) {
        (Some(_), Some(_)) => State::Running,
        (Some(_), None) => State::Broken(NO_NETWORK.into()),
        (None, _) => State::Stopped,
    }
}

/// Stops leftovers of a dead run: a gvproxy without its VM, pidfiles, sockets.
pub(super) fn clean_stale(m: &MachineDir) {
    gvproxy::kill(m, &net(m));
    tunnel::kill(m);
    for f in [QEMU_PID, GVPROXY_PID] {
        let _ = fs::remove_file(m.path(f));
    }
    let _ = fs::remove_dir_all(&m.run_dir);
}

/// SIGKILL to the machine's QEMU, if it runs, and waits for it to go.
fn kill(m: &MachineDir) {
    if let Some(pid) = process::live_pid(&m.path(QEMU_PID), &qemu_marker(m)) {
        process::signal(pid, Signal::KILL);
        process::wait_exit(pid, Duration::from_secs(10));
    }
}

pub(super) fn start(m: &MachineDir, spec: &Spec, o: &StartOptions) -> Result<Run, LifecycleError> {
    // A VM left by an interrupted start is not trusted: its guest's key was never pinned.
    kill(m);
    let _ = fs::remove_file(m.path(KNOWN_HOSTS));
    clean_stale(m);
    // Before anything runs: a host that cannot serve the GPU is refused, not half-started.
    let gpu = if spec.gpu {
        Some(crate::gpu::qemu_device()?)
    } else {
        None
    };
    mkdir_private(&m.run_dir)?;
    let run = Run {
        ssh_port: free_port()?,
        accel: match o.accel {
            vmm::qemu::Accel::Kvm => "kvm",
            vmm::qemu::Accel::Tcg => "tcg",
        }
        .into(),
    };
    m.write_json(RUN, &run)?;

    // gvproxy first: QEMU connects to its socket at start-up.
    gvproxy::start(m, &net(m), run.ssh_port)?;

    let ready = UnixListener::bind(m.socket(READY_SOCKET))?;
    let _ = fs::remove_file(m.path(CONSOLE_LOG));
    let cfg = vmm::qemu::QemuConfig {
        name: spec.name.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory_mib,
        accel: o.accel,
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline: spec.cmdline.clone(),
        disk: m.path(DISK),
        net_socket: m.socket(NET_SOCKET),
        mac: vmm::gvproxy::GUEST_MAC.into(),
        qmp_socket: m.socket(QMP_SOCKET),
        ready_socket: m.socket(READY_SOCKET),
        console_log: m.path(CONSOLE_LOG),
        pidfile: m.path(QEMU_PID),
        oem_strings: credentials(m, &spec.name)?,
        gpu,
    };
    // -daemonize: QEMU returns once the VM is set up and running in the background.
    let out = Command::new(venus::probe::QEMU)
        .args(vmm::qemu::command_line(&cfg))
        .envs(vmm::qemu::environment(&cfg))
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| {
            LifecycleError::Missing(venus::probe::QEMU, "apt-get install qemu-system-x86", e)
        })?;
    if !out.status.success() {
        clean_stale(m);
        return Err(LifecycleError::Exited(
            "qemu",
            String::from_utf8_lossy(&out.stderr).trim().into(),
        ));
    }
    tracing::info!(machine = %spec.name, "vmm running");
    let started = Instant::now();
    let host_key = wait_ready(m, &ready, START_TIMEOUT)?;
    let podman_timeout = o
        .podman_timeout
        .unwrap_or_else(|| START_TIMEOUT.saturating_sub(started.elapsed()));
    after_ready(m, &spec.name, &host_key, &run, podman_timeout)?;
    Ok(run)
}

/// Waits for QEMU to connect the Ready channel and the guest to write `Ready <host key>`.
fn wait_ready(
    m: &MachineDir,
    listener: &UnixListener,
    timeout: Duration,
) -> Result<String, LifecycleError> {
    let deadline = Instant::now() + timeout;
    let not_ready = || LifecycleError::NotReady(timeout, tail(&m.path(CONSOLE_LOG), 3000));
    let (conn, _) = listener.accept()?; // QEMU connects during its set-up, before -daemonize returns
    let mut reader = BufReader::new(conn);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(not_ready());
        }
        reader
            .get_ref()
            .set_read_timeout(Some(left.min(Duration::from_secs(5))))?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(not_ready()), // QEMU went away
            Ok(_) => {
                if let Some(key) = line.trim().strip_prefix("Ready ") {
                    return Ok(key.to_owned());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                match state(m) {
                    State::Stopped => {
                        return Err(LifecycleError::Exited(
                            "qemu",
                            tail(&m.path(CONSOLE_LOG), 3000),
                        ));
                    }
                    State::Broken(_) => {
                        return Err(LifecycleError::Exited(
                            "gvproxy",
                            tail(&m.path(GVPROXY_LOG), 2000),
                        ));
                    }
                    State::Running => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Powers the guest down through QMP (or kills QEMU with `force`), then gvproxy.
pub(super) fn stop(m: &MachineDir, force: bool) -> Result<(), LifecycleError> {
    if force {
        kill(m);
    } else if let Some(pid) = process::live_pid(&m.path(QEMU_PID), &qemu_marker(m)) {
        vmm::qmp::Qmp::connect(&m.socket(QMP_SOCKET))?.execute("system_powerdown")?;
        if !process::wait_exit(pid, STOP_TIMEOUT) {
            return Err(LifecycleError::NoPowerdown(STOP_TIMEOUT));
        }
    }
    gvproxy::stop(m, &net(m));
    clean_stale(m);
    Ok(())
}
