//! SSH into a running machine as root, with the machine's own key and its pinned host key.

use crate::lifecycle::{self, LifecycleError, State};
use crate::store::{KEY, KNOWN_HOSTS, MachineDir};
use std::process::Command;

/// `ssh ... root@127.0.0.1`; the caller appends the remote command.
pub fn command(m: &MachineDir) -> Result<Command, LifecycleError> {
    let run = match (lifecycle::state(m), m.run()) {
        (State::Running, Some(r)) => r,
        _ => return Err(LifecycleError::NotRunning(m.name.clone())),
    };
    let mut c = Command::new("ssh");
    c.arg("-i")
        .arg(m.path(KEY))
        .args(["-p", &run.ssh_port.to_string()])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            m.path(KNOWN_HOSTS).display()
        ))
        .arg("-o")
        .arg(format!("HostKeyAlias={}", lifecycle::host_alias(&m.name)))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("root@127.0.0.1");
    Ok(c)
}
