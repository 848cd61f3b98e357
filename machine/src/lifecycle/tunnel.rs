//! The SSH tunnel (`ssh -N -L`, crate::ssh::podman_forward) that serves the guest's Podman socket
//! on the host. It opens only once the guest is Ready, so sshd listens and the host key is pinned;
//! gvproxy's own `-forward-sock` is not used: it waits a bounded time for sshd, then exits and
//! takes the VM's network with it when a slow first boot outlasts the wait.

use super::LifecycleError;
use crate::store::{FORWARD_LOG, FORWARD_PID, MachineDir, PODMAN_SOCKET};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;
use vmm::process::{self, Signal};

pub(super) fn start(m: &MachineDir, ssh_port: u16) -> Result<(), LifecycleError> {
    let log = fs::File::create(m.path(FORWARD_LOG))?;
    let ggml = m.spec().is_ok_and(|s| s.ggml);
    let child = crate::ssh::podman_forward(m, ssh_port, ggml)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0) // outlives this command, and a ^C to it
        .spawn()
        .map_err(|e| LifecycleError::Missing("ssh", "apt-get install openssh-client", e))?;
    crate::store::write_atomic(&m.path(FORWARD_PID), child.id().to_string().as_bytes())?;
    Ok(())
}

/// The tunnel's PID if it runs (a zombie or a reused PID does not count).
pub(super) fn pid(m: &MachineDir) -> Option<i32> {
    let marker = format!("{}:", m.socket(PODMAN_SOCKET).display());
    process::live_pid(&m.path(FORWARD_PID), &marker)
}

/// Ends the tunnel, if any, and forgets it.
pub(super) fn kill(m: &MachineDir) {
    if let Some(pid) = pid(m) {
        process::signal(pid, Signal::KILL);
        process::wait_exit(pid, Duration::from_secs(5));
    }
    let _ = fs::remove_file(m.path(FORWARD_PID));
}
