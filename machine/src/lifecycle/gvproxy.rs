//! A machine's gvproxy: started before the VMM (which attaches to its socket at start-up), found
//! again by its pidfile and the listen URI on its command line, stopped after the VMM.

use super::{LifecycleError, tail};
use crate::process::{self, Signal};
use crate::store::{GVPROXY_LOG, GVPROXY_PID, MachineDir, NET_SOCKET};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmm::gvproxy::{GvproxyConfig, Listen};

/// Starts gvproxy and waits for its VMM-side socket.
pub(super) fn start(m: &MachineDir, listen: &Listen, ssh_port: u16) -> Result<(), LifecycleError> {
    let args = vmm::gvproxy::command_line(&GvproxyConfig {
        listen: listen.clone(),
        ssh_port,
        pidfile: m.path(GVPROXY_PID),
        log: m.path(GVPROXY_LOG),
    });
    let mut gv = Command::new("gvproxy")
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while !m.socket(NET_SOCKET).exists() {
        if let Some(status) = gv.try_wait()? {
            return Err(LifecycleError::Exited(
                "gvproxy",
                format!("{status}: {}", tail(&m.path(GVPROXY_LOG), 2000)),
            ));
        }
        if Instant::now() > deadline {
            return Err(LifecycleError::Exited(
                "gvproxy",
                "its socket never appeared".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
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
