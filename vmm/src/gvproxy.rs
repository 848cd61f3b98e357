//! gvproxy, the user-mode network every driver uses: DHCP and NAT for the guest, the SSH port
//! forward on 127.0.0.1, and its API on a unix socket (`-listen`), through which carbon-vm has
//! gvproxy serve a host unix socket that it connects to a guest TCP port ([`expose_unix`]): the
//! Podman API, open from before the VM boots and without SSH. gvproxy's own `-forward-sock` is
//! not used: it forwards over SSH, waits a bounded time for the guest's sshd and exits when a slow
//! boot outlasts it, taking the VM's network with it.

use crate::http;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The MAC address gvproxy's DHCP server hands 192.168.127.2 to.
pub const GUEST_MAC: &str = "5a:94:ef:e4:0c:ee";

#[derive(Debug, Clone)]
pub struct GvproxyConfig {
    /// How the VMM attaches: QEMU's stream socket or vfkit/krunkit's unixgram one.
    pub listen: Listen,
    /// Host port (on 127.0.0.1 only) forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// gvproxy's API, a unix socket in the machine's private runtime directory.
    pub api: PathBuf,
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
        "-listen".into(),
        format!("unix://{}", p(&c.api)),
        "-pid-file".into(),
        p(&c.pidfile),
        "-log-file".into(),
        p(&c.log),
    ]
}

/// Has gvproxy (its API at `api`) listen on the unix socket `local` and connect each client to
/// the guest's TCP `guest_port`. gvproxy removes a file at `local` and makes the socket with its
/// umask: `local` belongs in a private directory.
pub fn expose_unix(api: &Path, local: &Path, guest_port: u16) -> io::Result<()> {
    let body = serde_json::json!({
        "local": local,
        "remote": format!("tcp://{GUEST_IP}:{guest_port}"),
        "protocol": "unix",
    })
    .to_string();
    let req = http::request("POST", "/services/forwarder/expose", Some(&body));
    match http::unix(api, &req, Duration::from_secs(10))? {
        Some(r) if r.status == 200 => Ok(()),
        Some(r) => Err(io::Error::other(format!(
            "gvproxy refused to forward {} to the guest's port {guest_port}: HTTP {} {}",
            local.display(),
            r.status,
            r.text().trim()
        ))),
        None => Err(io::Error::other(
            "gvproxy's API answered something not HTTP",
        )),
    }
}

/// The address gvproxy's DHCP server leases to [`GUEST_MAC`].
pub const GUEST_IP: &str = "192.168.127.2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_listener_and_ssh_port_without_socket_forwards() {
        let argv = command_line(&GvproxyConfig {
            listen: Listen::Qemu("/r/net.sock".into()),
            ssh_port: 40022,
            api: "/r/gvproxy-api.sock".into(),
            pidfile: "/m/gvproxy.pid".into(),
            log: "/m/gvproxy.log".into(),
        });
        let s = argv.join(" ");
        assert!(s.contains("-listen-qemu unix:///r/net.sock"));
        assert!(s.contains("-ssh-port 40022"));
        assert!(s.contains("-listen unix:///r/gvproxy-api.sock"), "{s}");
        // A -forward-sock would make gvproxy exit when the guest's sshd comes up late.
        assert!(!s.contains("-forward"), "{s}");
    }

    #[test]
    fn vfkit_listener_for_krunkit() {
        let argv = command_line(&GvproxyConfig {
            listen: Listen::Vfkit("/r/net.sock".into()),
            ssh_port: 40022,
            api: "/r/gvproxy-api.sock".into(),
            pidfile: "/m/gvproxy.pid".into(),
            log: "/m/gvproxy.log".into(),
        });
        let s = argv.join(" ");
        assert!(s.contains("-listen-vfkit unixgram:///r/net.sock"), "{s}");
        assert!(!s.contains("-listen-qemu"));
    }
}
