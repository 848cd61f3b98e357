//! The SSH tunnel (crate::ssh::tunnel) that serves the guest's Podman API on the host, and the ggml
//! device's socket in the guest for machines with that device. It starts at the guest's early
//! `Key` line (sshd listens, the host key is pinned) or, failing that, once the guest is Ready.

use super::{LifecycleError, tail};
use crate::store::{FORWARD_LOG, FORWARD_PID, MachineDir, PODMAN_SOCKET};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vmm::process::{self, Signal};

/// How often a tunnel whose connection broke before SSH began is opened again during a start.
const RETRIES: u32 = 5;

/// Opens the tunnel, unless one runs (begun at the guest's early key), and waits, at most
/// `timeout`, until its forwards are in place: the host's Podman socket listening, and with `ggml`
/// the guest's sshd serving the device's socket. `alive` fails the wait early (the VM gone or
/// paused, a stop requested).
pub(super) fn open(
    m: &MachineDir,
    ssh_port: u16,
    ggml: bool,
    timeout: Duration,
    alive: &dyn Fn() -> Result<(), LifecycleError>,
) -> Result<(), LifecycleError> {
    let deadline = Instant::now() + timeout;
    let mut retries = 0;
    if pid(m).is_none() {
        start(m, ssh_port, ggml)?;
    }
    loop {
        let log = tail(&m.path(FORWARD_LOG), 64 * 1024);
        if log.contains(crate::ssh::LOCAL_FORWARD_READY)
            && (!ggml || log.contains(crate::ssh::REMOTE_FORWARD_READY))
        {
            return Ok(());
        }
        alive()?;
        if pid(m).is_none() {
            let said = said(&log);
            if retries < RETRIES && connection_broke(&said) && Instant::now() < deadline {
                retries += 1;
                tracing::info!(retries, log = %said, "tunnel connection broke: again");
                std::thread::sleep(Duration::from_secs(1));
                start(m, ssh_port, ggml)?;
                continue;
            }
            return Err(LifecycleError::Exited(
                "ssh (the tunnel to the guest)",
                if said.is_empty() {
                    "it wrote nothing (ended by a signal?)".into()
                } else {
                    said
                },
            ));
        }
        if Instant::now() > deadline {
            kill(m);
            return Err(LifecycleError::Exited(
                "ssh (the tunnel to the guest)",
                format!(
                    "the forward was not in place within {timeout:?}: {}",
                    said(&log)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What ssh said in its log, without `-v`'s debug lines.
fn said(log: &str) -> String {
    log.lines()
        .filter(|l| !l.starts_with("debug"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether ssh's words say its TCP connection broke before SSH began (gvproxy resets the host
/// side when its dial of a starved TCG guest fails), not that SSH itself refused us.
fn connection_broke(said: &str) -> bool {
    // ssh names every failure of its own (auth, host key, config); one that exits without a
    // word was ended from outside, or lost its connection before it could say so.
    said.trim().is_empty()
        || [
            "kex_exchange_identification",
            "Connection reset by peer",
            "Connection closed by",
            "Connection refused",
        ]
        .iter()
        .any(|s| said.contains(s))
}

/// Starts the tunnel's ssh without waiting for it ([`open`] waits).
pub(super) fn start(m: &MachineDir, ssh_port: u16, ggml: bool) -> Result<(), LifecycleError> {
    let log = fs::File::create(m.path(FORWARD_LOG))?;
    let child = crate::ssh::tunnel(m, ssh_port, ggml)
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

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_broken_connection_opens_the_tunnel_again() {
        for log in [
            "debug1: Connecting to 127.0.0.1\nkex_exchange_identification: read: Connection reset by peer",
            "ssh: connect to host 127.0.0.1 port 41234: Connection refused",
            "debug1: Reading configuration data /dev/null\ndebug1: Connecting to 127.0.0.1",
        ] {
            assert!(super::connection_broke(&super::said(log)), "{log}");
        }
        for log in [
            "debug1: Authentications that can continue: publickey\nroot@127.0.0.1: Permission denied (publickey).",
            "Host key verification failed.",
        ] {
            assert!(!super::connection_broke(&super::said(log)), "{log}");
        }
    }
}
