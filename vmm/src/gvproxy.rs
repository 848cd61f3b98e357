//! gvproxy, the user-mode network every driver uses: DHCP and NAT for the guest and the SSH port
//! forward on 127.0.0.1. The guest's Podman socket is not served by gvproxy: its `-forward-sock`
//! waits a bounded time for the guest's sshd and exits when a slow boot outlasts it, taking the
//! VM's network with it, and its API's unix-socket forward (`expose`, protocol `unix`) closes both
//! ways at the first end of either, so a Docker client's half-close (`docker run` without `-i`
//! shuts its writing side at once) loses the container's output. carbon-vm forwards that socket
//! over SSH itself once the guest is Ready.

use std::path::PathBuf;

/// The MAC address gvproxy's DHCP server hands 192.168.127.2 to.
pub const GUEST_MAC: &str = "5a:94:ef:e4:0c:ee";

#[derive(Debug, Clone)]
pub struct GvproxyConfig {
    /// How the VMM attaches: QEMU's stream socket or vfkit/krunkit's unixgram one.
    pub listen: Listen,
    /// Host port (on 127.0.0.1 only) forwarded to the guest's port 22.
    pub ssh_port: u16,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone)]
pub enum Listen {
    /// QEMU's `-netdev stream`: a unix stream socket.
    Qemu(PathBuf),
    /// vfkit's and krunkit's `virtio-net,unixSocketPath=`: a unix datagram socket.
    Vfkit(PathBuf),
}

impl Listen {
    fn flag(&self) -> &'static str {
        match self {
            Listen::Qemu(_) => "-listen-qemu",
            Listen::Vfkit(_) => "-listen-vfkit",
        }
    }

    /// The socket's URI as gvproxy takes it (and as its command line shows it).
    pub fn uri(&self) -> String {
        match self {
            Listen::Qemu(s) => format!("unix://{}", s.display()),
            Listen::Vfkit(s) => format!("unixgram://{}", s.display()),
        }
    }
}

pub fn command_line(c: &GvproxyConfig) -> Vec<String> {
    let p = |p: &PathBuf| p.display().to_string();
    vec![
        "-mtu".into(),
        "1500".into(),
        c.listen.flag().into(),
        c.listen.uri(),
        "-ssh-port".into(),
        c.ssh_port.to_string(),
        "-pid-file".into(),
        p(&c.pidfile),
        "-log-file".into(),
        p(&c.log),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_listener_and_ssh_port_without_socket_forwards() {
        let argv = command_line(&GvproxyConfig {
            listen: Listen::Qemu("/r/net.sock".into()),
            ssh_port: 40022,
            pidfile: "/m/gvproxy.pid".into(),
            log: "/m/gvproxy.log".into(),
        });
        let s = argv.join(" ");
        assert!(s.contains("-listen-qemu unix:///r/net.sock"));
        assert!(s.contains("-ssh-port 40022"));
        // A -forward-sock would make gvproxy exit when the guest's sshd comes up late.
        assert!(!s.contains("-forward"), "{s}");
    }

    #[test]
    fn vfkit_listener_for_krunkit() {
        let argv = command_line(&GvproxyConfig {
            listen: Listen::Vfkit("/r/net.sock".into()),
            ssh_port: 40022,
            pidfile: "/m/gvproxy.pid".into(),
            log: "/m/gvproxy.log".into(),
        });
        let s = argv.join(" ");
        assert!(s.contains("-listen-vfkit unixgram:///r/net.sock"), "{s}");
        assert!(!s.contains("-listen-qemu"));
    }
}
