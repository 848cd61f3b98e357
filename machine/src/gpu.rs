//! The GPU of a machine: `gpu check` run in the guest.

use crate::lifecycle::StartOptions;
use crate::store::{MachineDir, Spec};
use std::process::Stdio;
use venus::check::{self, Report};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
    #[error("cannot run ssh (install openssh-client)")]
    Ssh(#[source] std::io::Error),
    #[error("the check could not run in the guest (ssh exited with {0}): {1}")]
    Guest(std::process::ExitStatus, String),
}

/// How much of the chain to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The VM only (what `start` checks).
    Vm,
    /// The VM and a container of `image` (what `gpu check` proves).
    Container,
}

/// Runs the check in the (running) machine; a machine without a GPU fails it without asking.
pub fn check(
    m: &MachineDir,
    o: &StartOptions,
    spec: &Spec,
    image: &str,
    scope: Scope,
) -> Result<Report, GpuError> {
    if !spec.gpu {
        return Ok(check::no_gpu());
    }
    let scope_arg = match scope {
        Scope::Vm => "vm",
        Scope::Container => "container",
    };
    let out = crate::lifecycle::ssh(m, o)?
        .arg(format!(
            "sh -s -- '{}' {scope_arg}",
            image.replace('\'', "")
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(check::GUEST_SCRIPT.as_bytes())?;
            child.wait_with_output()
        })
        .map_err(GpuError::Ssh)?;
    if !out.status.success() {
        return Err(GpuError::Guest(
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(check::diagnose(&String::from_utf8_lossy(&out.stdout)))
}
