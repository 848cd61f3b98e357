//! The GPU of a machine: the Venus device QEMU gets, and `gpu check` run in the guest.

use crate::store::{MachineDir, Spec};
use std::process::Stdio;
use venus::check::{self, Report};
use venus::probe;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
    #[error("cannot run ssh (install openssh-client)")]
    Ssh(#[source] std::io::Error),
    #[error("the check could not run in the guest (ssh exited with {0}): {1}")]
    Guest(std::process::ExitStatus, String),
}

/// The Venus device for a `--gpu` machine, from what this host's QEMU and display can do.
pub fn qemu_device() -> Result<vmm::qemu::Gpu, probe::ProbeError> {
    let qemu = probe::qemu(probe::QEMU)?;
    probe::render_server()?;
    let display = probe::choose_display(&qemu, &probe::render_nodes("/dev/dri".as_ref()))?;
    Ok(vmm::qemu::Gpu {
        hostmem_bytes: venus::window::qemu_hostmem_bytes(crate::platform::host_ram_bytes()),
        display,
    })
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
pub fn check(m: &MachineDir, spec: &Spec, image: &str, scope: Scope) -> Result<Report, GpuError> {
    if !spec.gpu {
        return Ok(check::no_gpu());
    }
    let scope_arg = match scope {
        Scope::Vm => "vm",
        Scope::Container => "container",
    };
    let out = crate::ssh::command(m)?
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
