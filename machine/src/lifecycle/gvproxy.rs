//! A machine's gvproxy: started before the VMM (which attaches to its socket at start-up), found
//! again by its pidfile and the listen URI on its command line, stopped after the VMM.

use super::{LifecycleError, tail};
use crate::store::{GVPROXY_LOG, GVPROXY_PID, MachineDir, NET_SOCKET, PodmanMachine};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmm::gvproxy::{GvproxyConfig, Listen};
use vmm::process::{self, Signal};

/// Fresh ports are tried this often when another process takes the chosen one first.
const PORT_TRIES: usize = 5;

/// Starts gvproxy with the SSH port forward on 127.0.0.1; returns that port: the
/// Podman machine's fixed one, else a free one; gvproxy binds it itself, so a port taken between
/// the choice and gvproxy's bind is retried with another.
pub(super) fn start(
    m: &MachineDir,
    gvproxy: &Path,
    listen: &Listen,
    podman_machine: Option<&PodmanMachine>,
) -> Result<u16, LifecycleError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let ssh_port = match podman_machine {
            Some(p) => p.ssh_port,
            None => free_port()?,
        };
        match spawn(m, gvproxy, listen, ssh_port) {
            Err(LifecycleError::PortTaken(..))
                if podman_machine.is_none() && tries < PORT_TRIES =>
            {
                tracing::debug!(ssh_port, "port taken before gvproxy bound it: another");
            }
            Err(e) => return Err(e),
            Ok(()) => return Ok(ssh_port),
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts gvproxy and waits for its VMM-side socket.
fn spawn(
    m: &MachineDir,
    gvproxy: &Path,
    listen: &Listen,
    ssh_port: u16,
) -> Result<(), LifecycleError> {
    let args = vmm::gvproxy::command_line(&GvproxyConfig {
        listen: listen.clone(),
        ssh_port,
        pidfile: m.path(GVPROXY_PID),
        log: m.path(GVPROXY_LOG),
    });
    let _ = std::fs::remove_file(m.path(GVPROXY_LOG));
    let mut gv = Command::new(gvproxy)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0) // outlives this command, and a ^C to it
        .spawn()
        .map_err(|e| {
            LifecycleError::Missing(
                "gvproxy",
                "scripts/install-deps installs Debian's gvproxy; on macOS `brew install krunkit` brings it",
                e,
            )
        })?;
    match super::until_serving(&mut gv, &m.socket(NET_SOCKET), Duration::from_secs(20))? {
        Ok(()) => Ok(()),
        Err(Some(status)) => {
            let log = tail(&m.path(GVPROXY_LOG), 2000);
            if log.contains("address already in use") {
                return Err(LifecycleError::PortTaken(ssh_port, log));
            }
            Err(LifecycleError::Exited(
                "gvproxy",
                format!("{status}: {log}"),
            ))
        }
        Err(None) => {
            let _ = gv.kill();
            let _ = gv.wait();
            Err(LifecycleError::Exited(
                "gvproxy",
                "its socket never appeared".into(),
            ))
        }
    }
}

pub(super) fn live_pid(m: &MachineDir, listen: &Listen) -> Option<i32> {
    process::live_pid(&m.path(GVPROXY_PID), &listen.uri())
}

/// SIGTERM, then SIGKILL if it lingers.
pub(super) fn stop(m: &MachineDir, listen: &Listen) {
    if let Some(pid) = live_pid(m, listen) {
        process::signal(pid, Signal::TERM);
        if !process::wait_exit(pid, Duration::from_secs(5)) {
            process::signal(pid, Signal::KILL);
        }
    }
}

/// A gvproxy left without its VM.
pub(super) fn kill(m: &MachineDir, listen: &Listen) {
    if let Some(pid) = live_pid(m, listen) {
        process::signal(pid, Signal::KILL);
        process::wait_exit(pid, Duration::from_secs(5));
    }
}
