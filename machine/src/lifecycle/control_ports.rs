//! carbon-vm's control ports on the host's loopback, which a guest refuses to reach through
//! 192.168.127.254 (host.containers.internal, NATed to the host's 127.0.0.1 by gvproxy): each
//! running machine's SSH forward and each exposed machine's krunkit REST port. The guest's
//! walls (`carbon-walls.service`) keep them in the nft set `@control_ports`, filled at boot from
//! the `carbon.control-ports` credential ([`known`]) and, as machines start later, over SSH
//! ([`share`]).

use super::{StartOptions, State, state};
use crate::store::{MachineDir, Store};
use std::time::Duration;

/// How long one guest may take to take a port; it keeps its list if it does not.
const SHARE_TIMEOUT: Duration = Duration::from_secs(30);

/// The control ports known now: `ssh_port` (this run's SSH forward), this machine's own krunkit
/// REST port and ggml server port (where it has one on the host), and those of every other
/// machine of the store.
pub(super) fn known(m: &MachineDir, ssh_port: u16) -> Vec<u16> {
    let mut ports = vec![ssh_port];
    ports.extend(ggml_port(m));
    ports.extend(
        m.spec()
            .ok()
            .and_then(|s| s.podman_machine.map(|p| p.rest_port)),
    );
    for other in others(m) {
        ports.extend(other.run().map(|r| r.ssh_port));
        ports.extend(ggml_port(&other));
        ports.extend(
            other
                .spec()
                .ok()
                .and_then(|s| s.podman_machine.map(|p| p.rest_port)),
        );
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Once `m` runs: its guest takes the ports of machines that started while it booted, and every
/// other running machine's guest takes `m`'s SSH forward. Whichever of two machines started at
/// once finishes last sees the other's run (written before its boot), so neither misses the
/// other. A guest that does not answer keeps its list; that is logged, not fatal.
pub(super) fn share(m: &MachineDir, o: &StartOptions, ssh_port: u16) {
    add(m, ssh_port, &known(m, ssh_port));
    for other in others(m) {
        if let (State::Running, Some(run)) = (state(&other, o), other.run()) {
            add(&other, run.ssh_port, &[ssh_port]);
        }
    }
}

/// The host port of `m`'s ggml server, where it listens on the host's loopback (not on Linux).
fn ggml_port(m: &MachineDir) -> Option<u16> {
    crate::ggml::read_state(&m.socket(crate::store::GGML_STATE))?.host_port
}

/// The machines of `m`'s store but `m`.
fn others(m: &MachineDir) -> Vec<MachineDir> {
    let (Some(machines), Some(runtime)) = (m.dir.parent(), m.run_dir.parent()) else {
        return Vec::new();
    };
    let store = Store {
        machines: machines.to_owned(),
        runtime: runtime.to_owned(),
    };
    store
        .names()
        .unwrap_or_default()
        .into_iter()
        .filter(|name| *name != m.name)
        .filter_map(|name| store.machine(&name).ok())
        .collect()
}

/// Adds `ports` to the walls of `target`'s guest, reached on its SSH forward `ssh_port`.
fn add(target: &MachineDir, ssh_port: u16, ports: &[u16]) {
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut c = crate::ssh::command(target, ssh_port);
    c.arg(format!(
        "nft 'add element inet carbon_walls control_ports {{ {list} }}'"
    ));
    let failed = match crate::child::output_within(&mut c, SHARE_TIMEOUT) {
        Ok(Some(out)) if out.status.success() => return,
        Ok(Some(out)) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Ok(None) => format!("no answer within {SHARE_TIMEOUT:?}"),
        Err(e) => e.to_string(),
    };
    tracing::warn!(
        machine = %target.name,
        "its walls did not take the control ports {list}: {failed}"
    );
}
