//! The Podman connection: registered with the podman CLI itself (it owns its files: podman 5's
//! podman-connections.json, podman 4's containers.conf), only when a podman client is installed.

use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
#[error("`podman system connection {0}` failed: {1}")]
pub struct PodmanError(&'static str, String);

fn podman() -> Option<Command> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("podman"))
        .find(|p| p.is_file())
        .map(Command::new)
}

/// Registers (or re-points) connection `name` to the forwarded API socket. Returns false when no
/// podman client is installed.
pub fn add_connection(name: &str, socket: &Path, default: bool) -> Result<bool, PodmanError> {
    let Some(mut cmd) = podman() else {
        return Ok(false);
    };
    remove_connection(name)?;
    cmd.args(["system", "connection", "add"]);
    if default {
        cmd.arg("--default");
    }
    let out = cmd
        .arg(name)
        .arg(format!("unix://{}", socket.display()))
        .output()
        .map_err(|e| PodmanError("add", e.to_string()))?;
    if !out.status.success() {
        return Err(PodmanError(
            "add",
            String::from_utf8_lossy(&out.stderr).trim().into(),
        ));
    }
    Ok(true)
}

/// Removes connection `name` if it exists; other connections are left alone.
pub fn remove_connection(name: &str) -> Result<(), PodmanError> {
    let Some(mut cmd) = podman() else {
        return Ok(());
    };
    let out = cmd
        .args(["system", "connection", "remove", name])
        .output()
        .map_err(|e| PodmanError("remove", e.to_string()))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.contains("not found") || err.contains("does not exist") {
        Ok(())
    } else {
        Err(PodmanError("remove", err.trim().into()))
    }
}
