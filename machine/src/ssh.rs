//! SSH into a machine as root, with the machine's own key and its pinned host key; and the SSH
//! tunnel that serves the ggml device's socket in the guest. Commands only: whether the
//! machine runs is the lifecycle's to say (`lifecycle::ssh`).

use crate::store::{GGML_SOCKET, KEY, KNOWN_HOSTS, MachineDir};
use std::process::Command;

/// The SSH host-key alias: the port changes per start, the pinned key does not.
pub fn host_alias(name: &str) -> String {
    format!("carbon-vm-{name}")
}

/// `ssh ... root@127.0.0.1` on `ssh_port`; the caller appends the remote command.
pub(crate) fn command(m: &MachineDir, ssh_port: u16) -> Command {
    let mut c = to_guest(m, ssh_port);
    c.arg(DESTINATION);
    c
}

const DESTINATION: &str = "root@127.0.0.1";

/// Where the guest reaches the ggml device's server (`-R`; the guest's sshd makes it 0666 in a
/// directory of root's: its containers' relays run as their users).
const GUEST_GGML_SOCKET: &str = "/run/carbon-vm/ggml.sock";

/// `ssh -N -R` that serves the ggml device's relay (the host's GGML_SOCKET) in the guest,
/// checking the pinned host key, and exits when the guest's SSH connection is lost. `-v`: its log
/// says when the forward is in place ([`FORWARD_READY`]).
pub fn ggml_forward(m: &MachineDir, ssh_port: u16) -> Command {
    let mut c = to_guest(m, ssh_port);
    c.args([
        "-N",
        "-v",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "ConnectTimeout=60",
        "-R",
    ])
    .arg(format!(
        "{GUEST_GGML_SOCKET}:{}",
        m.socket(GGML_SOCKET).display()
    ))
    .arg(DESTINATION);
    c
}

/// What [`ggml_forward`]'s log says once the guest's sshd accepted the forward.
pub const FORWARD_READY: &str = "remote forward success for: listen";

/// ssh with the machine's key and pinned host key, without the destination. No configuration
/// file is read (`-F /dev/null` skips the user's and the system's): a `Host *` block there could
/// proxy, multiplex or forward the user's agent into guest root.
fn to_guest(m: &MachineDir, ssh_port: u16) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null"])
        .arg("-i")
        .arg(m.path(KEY))
        .args(["-p", &ssh_port.to_string()])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            m.path(KNOWN_HOSTS).display()
        ))
        .arg("-o")
        .arg(format!("HostKeyAlias={}", host_alias(&m.name)))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ForwardAgent=no",
            "-o",
            "IdentityAgent=none",
        ]);
    c
}
