//! The ggml device's supervisor (crate::ggml) as part of a machine's run: started once the guest
//! is Ready (before the tunnel that serves its socket in the guest), ended with the run.

use super::{LifecycleError, StartOptions};
use crate::store::{GGML_LOG, GGML_PID, GGML_SOCKET, GGML_STATE, MachineDir};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmm::process::{self, Signal};

/// The server's program is there to run (a path, or a name in PATH).
pub(super) fn check(o: &StartOptions) -> Result<(), LifecycleError> {
    let Some(program) = o.ggml_server.first() else {
        return Err(LifecycleError::NoGgmlServer("none found".into()));
    };
    if crate::host::which(program).is_some() {
        Ok(())
    } else {
        Err(LifecycleError::NoGgmlServer(format!(
            "{program} is not an executable"
        )))
    }
}

pub(super) fn start(m: &MachineDir, o: &StartOptions, vmm_pid: i32) -> Result<(), LifecycleError> {
    check(o)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(m.path(GGML_LOG))?;
    let child = Command::new(std::env::current_exe()?)
        .arg(crate::ggml::SERVE_COMMAND)
        .arg("--socket")
        .arg(m.socket(GGML_SOCKET))
        .arg("--state")
        .arg(m.socket(GGML_STATE))
        .args(["--vmm-pid", &vmm_pid.to_string(), "--"])
        .args(&o.ggml_server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0) // outlives this command, and a ^C to it
        .spawn()?;
    crate::store::write_atomic(&m.path(GGML_PID), child.id().to_string().as_bytes())?;
    // Serving once its socket is there (its state, a port included, is written by then); one
    // that cannot (no user namespaces) has said why in its log.
    let mut child = child;
    if super::until_serving(&mut child, &m.socket(GGML_SOCKET), READY_TIMEOUT)?.is_err() {
        kill(m);
        return Err(LifecycleError::GgmlFailed(super::tail(
            &m.path(GGML_LOG),
            2000,
        )));
    }
    Ok(())
}

/// How long the supervisor may take to serve its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The supervisor's PID if it runs.
pub(super) fn pid(m: &MachineDir) -> Option<i32> {
    process::live_pid(
        &m.path(GGML_PID),
        &m.socket(GGML_SOCKET).display().to_string(),
    )
}

/// Ends the supervisor (its process group), then its server (its own), if any, and forgets
/// them.
pub(super) fn kill(m: &MachineDir) {
    if let Some(pid) = pid(m) {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(p, Signal::KILL);
        }
        process::wait_exit(pid, Duration::from_secs(5));
        if let Some(server) = crate::ggml::read_state(&m.socket(GGML_STATE)).and_then(|s| s.pid) {
            crate::ggml::kill_server(server);
            process::wait_exit(server, Duration::from_secs(5));
        }
    }
    let _ = fs::remove_file(m.path(GGML_PID));
}

/// What `inspect` shows of the device's server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgmlStatus {
    /// The supervisor runs (it restarts the server when it dies).
    pub running: bool,
    /// The server's process, while one runs.
    pub server_pid: Option<i32>,
    /// Its RPC protocol version, as it announced it.
    pub rpc_version: Option<String>,
    /// How many times it was started in this run.
    pub starts: u32,
    pub log: std::path::PathBuf,
}

pub fn status(m: &MachineDir) -> GgmlStatus {
    let running = pid(m).is_some();
    let st = running
        .then(|| crate::ggml::read_state(&m.socket(GGML_STATE)))
        .flatten()
        .unwrap_or_default();
    GgmlStatus {
        running,
        server_pid: st.pid,
        rpc_version: st.version,
        starts: st.starts,
        log: m.path(GGML_LOG),
    }
}
