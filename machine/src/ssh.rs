//! SSH into a machine as root, with the machine's own key and its pinned host key; and the SSH
//! tunnel that serves the guest's Podman API on the host (and the ggml device's socket in the
//! guest). Commands only: whether the
//! machine runs is the lifecycle's to say (`lifecycle::ssh`).

use crate::store::{GGML_SOCKET, KEY, KNOWN_HOSTS, MachineDir, PODMAN_SOCKET};
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

/// Where rootful Podman listens in the guest.
const GUEST_PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// Where the guest reaches the ggml device's server (`-R`; the guest's sshd makes it 0666 in a
/// directory of root's: its containers' relays run as their users).
const GUEST_GGML_SOCKET: &str = "/run/carbon-vm/ggml.sock";

/// `ssh -N -L` that serves the guest's Podman API on the machine's PODMAN_SOCKET (mode 0600),
/// checking the pinned host key, and exits when the guest's SSH connection is lost. With `ggml`,
/// `-R` also serves the ggml device's relay (the host's GGML_SOCKET) in the guest. SSH channels
/// carry a half-close, which Docker's attach needs. `-v`: its log says when each forward is in
/// place ([`LOCAL_FORWARD_READY`], [`REMOTE_FORWARD_READY`]).
pub fn tunnel(m: &MachineDir, ssh_port: u16, ggml: bool) -> Command {
    let mut c = to_guest(m, ssh_port);
    c.args([
        "-N",
        "-v",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "StreamLocalBindUnlink=yes",
        "-o",
        "StreamLocalBindMask=0177",
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "ConnectTimeout=60",
        "-L",
    ])
    .arg(format!(
        "{}:{GUEST_PODMAN_SOCKET}",
        m.socket(PODMAN_SOCKET).display()
    ));
    if ggml {
        c.arg("-R").arg(format!(
            "{GUEST_GGML_SOCKET}:{}",
            m.socket(GGML_SOCKET).display()
        ));
    }
    c.arg(DESTINATION);
    c
}

/// What [`tunnel`]'s log says once it listens on the host's Podman socket.
pub const LOCAL_FORWARD_READY: &str = "Local forwarding listening on path";
/// What [`tunnel`]'s log says once the guest's sshd accepted the ggml device's forward.
pub const REMOTE_FORWARD_READY: &str = "remote forward success for: listen";

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
