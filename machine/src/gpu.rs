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
    /// The VM and a container of `image` (what `gpu check` proves), given /dev/dri by the
    /// guest's default.
    Container,
    /// The VM and a container of `image` given the CDI device `carbon-vm.dev/gpu=all` (carbon-vm's
    /// Venus driver for images without one).
    ContainerCdi,
}

/// A machine's GPU as its driver gives it.
#[derive(Debug, Clone, Copy)]
pub struct MachineGpu {
    /// Asked for, or given anyway (a krunkit machine has one, `--gpu` or not).
    pub present: bool,
    caps: vmm::Capabilities,
}

impl MachineGpu {
    pub fn of(spec: &Spec, o: &StartOptions) -> Result<MachineGpu, GpuError> {
        let caps = crate::lifecycle::driver(spec, o)
            .map_err(crate::lifecycle::LifecycleError::from)?
            .capabilities();
        Ok(MachineGpu {
            present: spec.gpu || caps.always_gpu,
            caps,
        })
    }

    /// The GPU blobs the guest created since the machine started, against a Mac host's 16 KiB
    /// pages; `None` without a GPU or where the VMM does not trace them.
    pub fn blob_audit(&self, m: &MachineDir) -> Option<venus::blobs::BlobAudit> {
        if !self.present || !self.caps.traces_blobs {
            return None;
        }
        std::fs::read_to_string(m.path(crate::store::VMM_LOG))
            .ok()
            .map(|log| venus::blobs::audit(&log))
    }

    /// Whether a working Venus keeps to a Mac's 16 KiB pages: on a host that maps them itself
    /// it does; elsewhere the blobs the VMM traced say.
    pub fn mac_pages_ok(&self, audit: Option<&venus::blobs::BlobAudit>) -> bool {
        self.caps.maps_16k_pages || audit.is_some_and(|b| b.mac_ok)
    }
}

/// Runs the check in the (running) machine; a machine without a GPU fails it without asking.
pub fn check(
    m: &MachineDir,
    o: &StartOptions,
    gpu: MachineGpu,
    image: &str,
    scope: Scope,
) -> Result<Report, GpuError> {
    if !gpu.present {
        return Ok(check::no_gpu());
    }
    let args: &[&str] = match scope {
        Scope::Vm => &[image, "vm"],
        Scope::Container => &[image, "container"],
        Scope::ContainerCdi => &[image, "container", "cdi"],
    };
    let out = in_guest(m, o, check::GUEST_SCRIPT, args)?;
    Ok(printable(check::diagnose(&out)))
}

/// The report with what the guest and the image said (device names, vulkaninfo's errors in the
/// failure's detail) escaped: an image's output must not drive the user's terminal.
fn printable(mut r: Report) -> Report {
    use guest_image::untrusted::escaped;
    for text in [
        &mut r.device,
        &mut r.host_device,
        &mut r.driver_info,
        &mut r.api_version,
    ]
    .into_iter()
    .flatten()
    {
        *text = escaped(text);
    }
    if let Some(m) = &mut r.missing {
        m.detail = escaped(&m.detail);
    }
    r
}

/// Runs llama.cpp on the machine's Venus device and on the CPU in a container of `image`
/// (`gpu check --workload llama`); call it once [`check`] passed.
pub fn check_llama(
    m: &MachineDir,
    o: &StartOptions,
    image: &str,
) -> Result<venus::llama::Report, GpuError> {
    let out = in_guest(m, o, &venus::llama::guest_script(), &[image])?;
    Ok(venus::llama::diagnose(&out))
}

/// Runs llama.cpp through the ggml device and on the CPU in a container of `image`
/// (`gpu check --workload llama-rpc`).
pub fn check_llama_rpc(
    m: &MachineDir,
    o: &StartOptions,
    image: &str,
) -> Result<venus::llama::rpc::Report, GpuError> {
    let out = in_guest(m, o, &venus::llama::rpc::guest_script(), &[image])?;
    let server = crate::lifecycle::ggml_status(m).rpc_version;
    Ok(venus::llama::rpc::diagnose(&out, server.as_deref()))
}

/// Runs `script` with `args` (each quoted for the guest's shell) in the running guest over SSH;
/// returns its output.
fn in_guest(
    m: &MachineDir,
    o: &StartOptions,
    script: &str,
    args: &[&str],
) -> Result<String, GpuError> {
    // Command-line arguments and image names hold no NUL, the one thing shlex cannot quote.
    let args = shlex::try_join(args.iter().copied()).expect("arguments without NUL");
    let out = crate::lifecycle::ssh(m, o)?
        .arg(format!("sh -s -- {args}"))
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
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .map_err(GpuError::Ssh)?;
    if !out.status.success() {
        return Err(GpuError::Guest(
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_image_prints_reaches_the_terminal_escaped() {
        // The real output of a working machine, but its container's vulkaninfo prints a terminal
        // escape and lists nothing.
        let good = include_str!("../../venus/tests/data/guest-check-venus.txt");
        let head = &good[..good.find("@@container\n").unwrap()];
        let out = format!(
            "{head}@@container\nERROR: \x1b]0;owned\x07\x1b[2J failed\n@@container-exit\n1\n"
        );
        let r = printable(check::diagnose(&out));
        let detail = r.missing.expect("the container lists nothing").detail;
        assert!(
            !detail.contains('\x1b') && !detail.contains('\x07'),
            "{detail:?}"
        );
        assert!(detail.contains(r"\u{1b}[2J failed"), "{detail}");
    }
}
